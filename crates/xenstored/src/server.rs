//! The daemon over its unix socket and the domains' ring pages: one
//! thread, `poll` over the listener, the connections, the domains' event
//! channels and `VIRQ_DOM_EXC`; requests answered in order, watch events
//! queued to the watchers. Socket clients are dom0 (privileged), as in C
//! xenstored; a domain introduced with `XS_INTRODUCE` is itself.
//!
//! Each connection's output is bounded (`MAX_OUTPUT`): a client that does
//! not read its replies and events is dropped, and the daemon's memory with
//! it. A client that breaks the framing is dropped at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use xenstore::path::domain_path;
use xenstore::wire::{split_strings, Decoder, Message, MsgType};
use xenstore::{Path, Perms, XsError};

use abi::xs_wire::{self, offsets};
use ring::{ByteConsumer, ByteProducer, ByteRingLayout};

use crate::busy_poll::{self, BusyPoll};
use crate::domain::{DomainRing, Hypervisor};
use crate::store::{self, Caller, Change, Tree};
use crate::tx::{Op, Transaction};

/// Bytes of replies and events an unprivileged connection may have waiting.
pub const MAX_OUTPUT: usize = 4 << 20;
/// The same for a privileged one.
pub const MAX_OUTPUT_PRIVILEGED: usize = 64 << 20;
/// A connection with this much output waiting is not read from until it
/// drains: a client that pipelines requests without reading its replies
/// slows down instead of being dropped.
pub const READ_PAUSE: usize = 64 << 10;
/// How long a watch event may keep the request that caused it
/// outstanding (C xenstored's `--timeout watch-event`, 20 s): a watcher
/// that does not read holds its writer back no longer than this.
pub const WATCH_EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Ring round trips one domain gets per turn before the others are served.
const RING_ROUNDS: usize = 64;
/// `DOMID_SELF`: `IS_DOMAIN_INTRODUCED` of it is always true.
const DOMID_SELF: u16 = 0x7ff0;
/// Domain ids from here on are reserved (`DOMID_FIRST_RESERVED`).
const DOMID_FIRST_RESERVED: u16 = 0x7ff0;

struct Watch {
    token: String,
    path: Path,
    /// The base to strip for a relative watch.
    relative_to: Option<String>,
    /// Levels below `path` it fires for (`None`: all), Xen 4.18's
    /// `XENSTORE_SERVER_FEATURE_WATCHDEPTH`.
    depth: Option<usize>,
}

/// `XENSTORE_SERVER_FEATURE_WATCHDEPTH` (`xs_wire.h` of Xen 4.18+).
pub const FEATURE_WATCHDEPTH: u32 = 4;
/// The server features we offer (`server_features` of each ring page and
/// `XS_GET_FEATURE`): ring reconnection, the error word, watch depth.
pub const FEATURES: u32 = xs_wire::XENSTORE_SERVER_FEATURE_RECONNECTION
    | xs_wire::XENSTORE_SERVER_FEATURE_ERROR
    | FEATURE_WATCHDEPTH;

struct Conn {
    caller: Caller,
    decoder: Decoder,
    out: Vec<u8>,
    watches: Vec<Watch>,
    txs: HashMap<u32, Transaction>,
    dead: bool,
    /// A domain's ring page and port (none for a socket client).
    ring: Option<Box<dyn DomainRing>>,
    /// The page (frame) and port the domain was introduced with.
    link: (u64, u32),
    /// A domain connection that broke its ring or the framing: kept (the
    /// domain stays introduced until it is released or dies, as in C
    /// xenstored's `ignore_connection`) but no longer served.
    ignored: bool,
    /// What to tell the domain in the page's `error` word when it is.
    fail: u32,
    /// Watch events dropped because its output was full.
    dropped_events: u64,
    /// The server features it has (a domain's are set before it is
    /// introduced, by `XS_SET_FEATURE`).
    features: u32,
    /// Where its last `DIRECTORY_PART` ended.
    cursor: Option<Cursor>,
    /// Bytes ever queued to `out` (those sent are this less `out.len()`).
    queued: u64,
    /// Messages in `out` that keep a domain's request outstanding, in
    /// the order they were queued.
    markers: VecDeque<Marker>,
    /// This domain's outstanding requests: their serial, and how many of
    /// their messages wait to be delivered.
    open: HashMap<u64, u32>,
    /// Requests read but not yet handled: the domain had its
    /// `outstanding` quota of them undone (C's `domain_can_read`).
    held: VecDeque<Message>,
}

/// Takes `c`'s markers of messages sent, adding the requests they kept
/// outstanding to `released`.
fn sent_markers(c: &mut Conn, released: &mut Vec<(u64, u64)>) {
    let sent = c.queued.saturating_sub(c.out.len() as u64);
    while c.markers.front().is_some_and(|m| m.end <= sent) {
        if let Some(o) = c.markers.pop_front().and_then(|m| m.origin) {
            released.push(o);
        }
    }
}

/// A message in a connection's output that keeps request `serial` of
/// connection `origin` outstanding until it is sent.
struct Marker {
    /// Where it ends, counted as [`Conn::queued`].
    end: u64,
    /// The request's connection and serial; none once let go of.
    origin: Option<(u64, u64)>,
    /// A watch event lets go after [`WATCH_EVENT_TIMEOUT`].
    expires: Option<Instant>,
}

impl Conn {
    fn new(caller: Caller, ring: Option<Box<dyn DomainRing>>) -> Conn {
        Conn {
            caller,
            decoder: Decoder::new(),
            out: Vec::new(),
            watches: Vec::new(),
            txs: HashMap::new(),
            dead: false,
            ring,
            link: (0, 0),
            ignored: false,
            fail: xs_wire::XENSTORE_ERROR_PROTO,
            dropped_events: 0,
            features: FEATURES,
            queued: 0,
            markers: VecDeque::new(),
            open: HashMap::new(),
            held: VecDeque::new(),
            cursor: None,
        }
    }
}

/// The daemon without its transport: the tree and the connections, fed
/// bytes and drained of bytes. The socket server ([`Daemon`]) and the fuzz
/// target drive it the same way.
pub struct Core {
    tree: Tree,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    next_tx: u32,
    /// Permissions of `@introduceDomain` and `@releaseDomain`.
    special_perms: HashMap<String, Perms>,
    /// Maps domains' pages and tells their deaths (none: socket only).
    hv: Option<Box<dyn Hypervisor>>,
    /// The quotas a newly introduced domain gets.
    quotas: store::Quotas,
    /// Features set for domains not introduced yet.
    pending_features: HashMap<u16, u32>,
    /// Introduced domains and their connections.
    domains: BTreeMap<u16, u64>,
    /// Introduced domains whose shutdown `@releaseDomain` announced.
    shut_down: BTreeSet<u16>,
    /// A domain was cut short by [`RING_ROUNDS`]: serve again at once.
    busy: bool,
    /// Domain connections to serve as if they had signalled.
    kick: Vec<u64>,
    /// The domain request being handled (connection, serial): what it
    /// queues keeps it outstanding.
    current: Option<(u64, u64)>,
    next_serial: u64,
    /// `None`: watch events keep their requests outstanding until sent.
    watch_event_timeout: Option<Duration>,
}

/// xenstored on its unix socket.
pub struct Daemon {
    core: Core,
    listener: UnixListener,
    streams: HashMap<u64, UnixStream>,
    socket: PathBuf,
    busy_poll: BusyPoll,
    /// When the last work for dom0 (the socket) was done: polling follows
    /// only that, so that no guest keeps the daemon polling.
    idle_since: Instant,
}

fn ok() -> Vec<u8> {
    b"OK\0".to_vec()
}

fn with_nul(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

impl Daemon {
    /// Listens on `socket` (replacing a stale one) with a fresh tree.
    pub fn bind(socket: &FsPath) -> io::Result<Daemon> {
        Daemon::bind_with(socket, Core::new())
    }

    /// Listens on `socket` and serves `core` (a restored state).
    pub fn bind_with(socket: &FsPath, core: Core) -> io::Result<Daemon> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        listener.set_nonblocking(true)?;
        Ok(Daemon {
            core,
            listener,
            streams: HashMap::new(),
            socket: socket.to_path_buf(),
            busy_poll: BusyPoll::default(),
            idle_since: Instant::now(),
        })
    }

    /// Looks for work for at most `max` (at most [`busy_poll::LIMIT`])
    /// after dom0's last before sleeping ([`crate::busy_poll`]; zero:
    /// never).
    pub fn set_busy_poll(&mut self, max: Duration) {
        self.busy_poll = BusyPoll::new(max.min(busy_poll::LIMIT));
    }

    /// The busy-poll window as it stands.
    pub fn busy_poll(&self) -> BusyPoll {
        self.busy_poll
    }

    /// The socket path.
    pub fn socket(&self) -> &FsPath {
        &self.socket
    }

    /// The daemon's state, for saving.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Serves until `stop` returns true (checked at least every 100 ms).
    pub fn run(&mut self, stop: impl Fn() -> bool) -> io::Result<()> {
        while !stop() {
            self.turn(100)?;
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` for work and does it.
    pub fn turn(&mut self, timeout_ms: i32) -> io::Result<()> {
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        let rings = self.core.ring_fds();
        let mut fds = vec![libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        fds.push(libc::pollfd {
            fd: self.core.death_fd().unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        });
        for &(_, fd) in &rings {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let first_stream = fds.len();
        for id in &ids {
            let waiting = self.core.output(*id).map_or(0, |o| o.len());
            let mut events = if waiting < READ_PAUSE {
                libc::POLLIN
            } else {
                0
            };
            if waiting > 0 {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: self.streams[id].as_raw_fd(),
                events,
                revents: 0,
            });
        }
        let polling = self.idle_since.elapsed() < self.busy_poll.window();
        let timeout_ms = if self.core.busy || polling {
            0
        } else {
            timeout_ms
        };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
        #[allow(unsafe_code)]
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        let by_dom0 = fds[0].revents != 0 || fds[first_stream..].iter().any(|f| f.revents != 0);
        if r == 0 && !self.core.busy && polling {
            // Let whatever else runs on this CPU go first.
            // SAFETY: no arguments, no memory.
            #[allow(unsafe_code)]
            unsafe {
                libc::sched_yield()
            };
            return Ok(());
        }
        if by_dom0 {
            self.busy_poll.idle_ended(self.idle_since.elapsed());
        }
        if fds[0].revents != 0 {
            self.accept();
        }
        if fds[1].revents != 0 {
            self.core.check_domains();
        }
        for (i, id) in ids.iter().enumerate() {
            let rev = fds[first_stream + i].revents;
            if rev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                self.read_from(*id);
            }
        }
        let ready: Vec<u64> = rings
            .iter()
            .enumerate()
            .filter(|(i, _)| fds[2 + i].revents != 0)
            .map(|(_, &(id, _))| id)
            .collect();
        self.core.service_domains(&ready);
        // Replies and events to every socket connection.
        for id in &ids {
            self.flush(*id);
        }
        // What they sent may let a held-back domain go on (next turn, at
        // once).
        self.core.settle();
        for id in self.core.reap() {
            self.streams.remove(&id);
        }
        if by_dom0 {
            self.idle_since = Instant::now();
        }
        Ok(())
    }

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            // Socket clients are dom0, as in C xenstored.
            let id = self.core.connect(Caller::DOM0);
            self.streams.insert(id, stream);
        }
    }

    fn read_from(&mut self, id: u64) {
        let mut buf = [0u8; 16384];
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        match stream.read(&mut buf) {
            Ok(0) => self.core.hang_up(id),
            Ok(n) => self.core.input(id, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.core.hang_up(id),
        }
    }

    fn flush(&mut self, id: u64) {
        let (Some(stream), Some(out)) = (self.streams.get_mut(&id), self.core.output(id)) else {
            return;
        };
        while !out.is_empty() {
            match stream.write(out) {
                Ok(0) => break,
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        if !out.is_empty() {
            self.core.hang_up(id);
        }
    }
}

impl Default for Core {
    fn default() -> Self {
        Core::new()
    }
}

impl Core {
    /// A fresh tree and no connections.
    pub fn new() -> Core {
        Core {
            tree: Tree::new(),
            conns: HashMap::new(),
            next_conn: 1,
            next_tx: 1,
            special_perms: HashMap::new(),
            hv: None,
            quotas: store::Quotas::DEFAULT,
            pending_features: HashMap::new(),
            domains: BTreeMap::new(),
            shut_down: BTreeSet::new(),
            busy: false,
            kick: Vec::new(),
            current: None,
            next_serial: 0,
            watch_event_timeout: Some(WATCH_EVENT_TIMEOUT),
        }
    }

    /// How long a watch event may keep its request outstanding
    /// ([`WATCH_EVENT_TIMEOUT`] unless changed); zero: without limit, as
    /// C's `--timeout watch-event=0`.
    pub fn set_watch_event_timeout(&mut self, t: Duration) {
        self.watch_event_timeout = (!t.is_zero()).then_some(t);
    }

    /// Requests of domain `domid` outstanding, and requests read but held
    /// back by its `outstanding` quota.
    pub fn outstanding(&self, domid: u16) -> Option<(usize, usize)> {
        let c = self.conns.get(self.domains.get(&domid)?)?;
        Some((c.open.len(), c.held.len()))
    }

    /// Lets go of what was sent since the last look: every connection's
    /// messages out of its `out` (and watch events past their time) no
    /// longer keep their requests outstanding; a domain held back that
    /// may go on is served again.
    pub fn settle(&mut self) {
        let now = Instant::now();
        let mut released = Vec::new();
        for c in self.conns.values_mut() {
            sent_markers(c, &mut released);
            // Expiries grow along a connection's queue: the first one to
            // come ends the look. Markers let go of are dropped (the
            // others' `end`s stay in order).
            let before = released.len();
            for m in c.markers.iter_mut() {
                match m.expires {
                    Some(t) if t > now => break,
                    Some(_) => released.extend(m.origin.take()),
                    None => {}
                }
            }
            if released.len() > before {
                c.markers.retain(|m| m.origin.is_some());
            }
        }
        self.release_all(released);
    }

    /// [`settle`](Self::settle) of one connection's sent messages.
    pub fn settle_conn(&mut self, id: u64) {
        let mut released = Vec::new();
        if let Some(c) = self.conns.get_mut(&id) {
            sent_markers(c, &mut released);
        }
        self.release_all(released);
    }

    /// The bytes domain connection `id` holds, as the memory quota counts
    /// them: the nodes its domain owns, its watches, its transactions and
    /// the replies and events waiting for it. (Requests held back are not
    /// counted: they are what waits for room, at most a ring's worth.)
    fn memory_of(&self, id: u64) -> usize {
        let Some(c) = self.conns.get(&id) else {
            return 0;
        };
        self.tree.owned_bytes(c.caller.domid)
            + c.watches
                .iter()
                .map(|w| w.path.as_str().len() + w.token.len())
                .sum::<usize>()
            + c.txs.values().map(Transaction::footprint).sum::<usize>()
            + c.out.len()
    }

    /// At most what request `m` adds to what its caller holds: its
    /// payload, and for a `WRITE` or `MKDIR` the absolute path of the node
    /// and of every ancestor it makes (each a node of its own).
    fn cost(&self, m: &Message, parts: &[&[u8]], domid: u16) -> usize {
        let mut cost = m.payload.len();
        if matches!(m.ty, MsgType::Write | MsgType::Mkdir) {
            let Some(Ok(mut at)) = parts.first().map(|p| Path::parse(p, domid, false)) else {
                return cost;
            };
            while self.tree.node_ref(at.as_str()).is_none() {
                cost += at.as_str().len() + 4;
                match at.parent() {
                    Some(p) => at = p,
                    None => break,
                }
            }
        }
        cost
    }

    /// Whether domain connection `id` may have its next request handled:
    /// its `outstanding` quota is not reached, nor its `memory` quota
    /// while replies wait for it (C's `domain_can_read`). A domain at its
    /// memory quota with nothing waiting is read, so that it can give
    /// back what it holds (what would add more is `ENOMEM`).
    fn may_read(&self, id: u64) -> bool {
        self.conns.get(&id).is_some_and(|c| {
            c.open.len() < c.caller.quota.outstanding
                && (c.out.is_empty() || self.memory_of(id) < c.caller.quota.memory)
        })
    }

    /// One message of request `serial` of `origin` was delivered.
    fn release(&mut self, origin: u64, serial: u64) {
        let Some(c) = self.conns.get_mut(&origin) else {
            return;
        };
        if let Some(n) = c.open.get_mut(&serial) {
            *n -= 1;
            if *n == 0 {
                c.open.remove(&serial);
            }
        }
        // `service_domains` serves it (it looks at every held domain);
        // soon, not after the next wait.
        if !c.held.is_empty() && self.may_read(origin) {
            self.busy = true;
        }
    }

    /// Forgets a connection; what waited in its output no longer keeps
    /// anyone's requests outstanding.
    fn remove_conn(&mut self, id: u64) -> Option<Conn> {
        let c = self.conns.remove(&id)?;
        self.release_markers(&c);
        Some(c)
    }

    /// What waited in a connection that is gone or replaced keeps no one
    /// outstanding.
    fn release_markers(&mut self, c: &Conn) {
        self.release_all(c.markers.iter().filter_map(|m| m.origin).collect());
    }

    /// [`release`](Self::release) of each (connection, serial).
    fn release_all(&mut self, released: Vec<(u64, u64)>) {
        for (origin, serial) in released {
            self.release(origin, serial);
        }
    }

    /// The quotas domains introduced from now on get (C's defaults unless
    /// changed here or by `XS_SET_QUOTA`).
    pub fn quotas_mut(&mut self) -> &mut store::Quotas {
        &mut self.quotas
    }

    /// `XS_GET_QUOTA [[domid|]name|]`, as `docs/misc/xenstore.txt`: no
    /// argument lists the quotas' names; a name gives the global value
    /// (what new domains get), a domid and a name that domain's.
    fn get_quota(&self, parts: &[&[u8]]) -> Result<Vec<u8>, XsError> {
        let text = match parts {
            [] => store::Quotas::NAMES.join(" "),
            [name] => self
                .quotas
                .get(quota_name(name)?)
                .ok_or(XsError::Inval)?
                .to_string(),
            [domid, name] => {
                let q = self.domain_quotas(domid)?;
                q.get(quota_name(name)?).ok_or(XsError::Inval)?.to_string()
            }
            _ => return Err(XsError::Inval),
        };
        Ok(with_nul(&text))
    }

    /// `XS_SET_QUOTA [domid|]name|value|`: 0 (which would turn the check
    /// off) is refused, as Xen's C xenstored refuses it.
    fn set_quota(&mut self, parts: &[&[u8]]) -> Result<(), XsError> {
        let (domid, name, value) = match parts {
            [name, value] => (None, quota_name(name)?, value),
            [domid, name, value] => (Some(*domid), quota_name(name)?, value),
            _ => return Err(XsError::Inval),
        };
        let value = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&v| v > 0)
            .ok_or(XsError::Inval)?;
        let quotas = match domid {
            None => &mut self.quotas,
            Some(d) => {
                let d = parse_strict_domid(d)?;
                let id = self.domains.get(&d).copied().ok_or(XsError::NoEnt)?;
                &mut self.conns.get_mut(&id).ok_or(XsError::NoEnt)?.caller.quota
            }
        };
        if !quotas.set(name, value) {
            return Err(XsError::Inval);
        }
        Ok(())
    }

    /// An introduced domain's quotas (`ENOENT` if it is not introduced).
    fn domain_quotas(&self, domid: &[u8]) -> Result<store::Quotas, XsError> {
        let d = parse_strict_domid(domid)?;
        let id = self.domains.get(&d).ok_or(XsError::NoEnt)?;
        self.conns
            .get(id)
            .map(|c| c.caller.quota)
            .ok_or(XsError::NoEnt)
    }

    /// Serves domains too: `hv` maps their pages at `XS_INTRODUCE` and
    /// tells their deaths.
    pub fn with_hypervisor(mut self, hv: Box<dyn Hypervisor>) -> Core {
        self.hv = Some(hv);
        self
    }

    /// A daemon continuing from a state file. Its domains are connected
    /// again through `hv` (their pages mapped, their ports bound anew: the
    /// old daemon's ends closed with it), without resetting their rings;
    /// a domain that cannot be is released (it died meanwhile). Without a
    /// hypervisor the domains are forgotten (their nodes stay).
    pub fn restore(
        path: &FsPath,
        hv: Option<Box<dyn Hypervisor>>,
    ) -> Result<Core, crate::state::StateError> {
        let (tree, state) = crate::state::load(path)?;
        let mut core = Core {
            tree,
            special_perms: state.special,
            quotas: state.quotas,
            pending_features: state.pending_features.into_iter().collect(),
            hv,
            ..Core::new()
        };
        for d in state.domains {
            core.restore_domain(d);
        }
        // Deaths while no daemon ran: no VIRQ_DOM_EXC will tell them.
        core.check_domains();
        Ok(core)
    }

    fn restore_domain(&mut self, d: crate::state::DomainState) {
        let Some(hv) = self.hv.as_mut() else {
            return;
        };
        let id = self.next_conn;
        self.next_conn += 1;
        self.domains.insert(d.domid, id);
        let Ok(ring) = hv.connect(d.domid, d.gfn, d.port) else {
            self.release_domain(d.domid);
            return;
        };
        let caller = Caller {
            target: d.target,
            quota: d.quota,
            ..Caller::domain(d.domid)
        };
        let mut conn = Conn::new(caller, Some(ring));
        conn.features = d.features;
        conn.link = (d.gfn, d.port);
        conn.out = d.output;
        conn.queued = conn.out.len() as u64;
        for w in d.watches {
            // Only what this daemon would have accepted.
            let Ok(path) = Path::parse(w.path.as_bytes(), d.domid, true) else {
                continue;
            };
            conn.watches.push(Watch {
                token: w.token,
                path,
                relative_to: w.relative.then(|| domain_path(d.domid)),
                depth: w.depth.and_then(|x| usize::try_from(x).ok()),
            });
        }
        self.conns.insert(id, conn);
        // A half-read request continues; the domain may have written more
        // (and signalled the old daemon) meanwhile: it is served at once.
        self.input(id, &d.input);
        self.kick.push(id);
    }

    /// Writes the state file.
    pub fn save(&self, path: &FsPath) -> Result<(), crate::state::StateError> {
        use crate::state::{DomainState, State, WatchState};
        let mut domains = Vec::new();
        for (&domid, id) in &self.domains {
            let Some(c) = self
                .conns
                .get(id)
                .filter(|c| c.ring.is_some() && !c.ignored)
            else {
                continue;
            };
            let watches = c
                .watches
                .iter()
                .map(|w| WatchState {
                    path: w.path.as_str().to_string(),
                    token: w.token.clone(),
                    relative: w.relative_to.is_some(),
                    depth: w.depth.map(|d| d as u64),
                })
                .collect();
            domains.push(DomainState {
                domid,
                gfn: c.link.0,
                port: c.link.1,
                features: c.features,
                quota: c.caller.quota,
                target: c.caller.target,
                watches,
                // Requests held back by the quota come first.
                input: c
                    .held
                    .iter()
                    .filter_map(|m| m.encode().ok())
                    .flatten()
                    .chain(c.decoder.buffered())
                    .collect(),
                output: c.out.clone(),
            });
        }
        let mut pending_features: Vec<(u16, u32)> = self
            .pending_features
            .iter()
            .map(|(&d, &f)| (d, f))
            .collect();
        pending_features.sort_unstable();
        let state = State {
            special: self.special_perms.clone(),
            quotas: self.quotas,
            pending_features,
            domains,
        };
        crate::state::save(path, &self.tree, &state)
    }

    /// A new connection of `caller`; its id.
    pub fn connect(&mut self, caller: Caller) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(id, Conn::new(caller, None));
        id
    }

    /// Forgets a socket connection: its watches and open transactions go
    /// with it. (A domain's goes when the domain is released.)
    pub fn disconnect(&mut self, id: u64) {
        if self.conns.get(&id).is_some_and(|c| c.ring.is_none()) {
            self.remove_conn(id);
        }
    }

    /// Handles connections that must go: socket ones are forgotten (their
    /// ids are returned, for their streams to be closed), a domain's is
    /// ignored from now on, its page's `error` word saying why.
    pub fn reap(&mut self) -> Vec<u64> {
        let dead: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.dead)
            .map(|(&id, _)| id)
            .collect();
        let mut gone = Vec::new();
        for id in dead {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            match &c.ring {
                None => {
                    self.remove_conn(id);
                    gone.push(id);
                }
                Some(ring) => {
                    let _ = ring
                        .memory()
                        .store_u32(offsets::ERROR, c.fail, Ordering::Release);
                    ring.notify();
                    c.dead = false;
                    c.ignored = true;
                    c.watches.clear();
                    c.txs.clear();
                    c.out = Vec::new();
                    c.held.clear();
                    c.decoder = Decoder::new();
                }
            }
        }
        gone
    }

    /// Introduced domains.
    pub fn domains(&self) -> Vec<u16> {
        self.domains.keys().copied().collect()
    }

    /// The connection of an introduced domain.
    pub fn domain_conn(&self, domid: u16) -> Option<u64> {
        self.domains.get(&domid).copied()
    }

    fn death_fd(&self) -> Option<std::os::fd::RawFd> {
        self.hv.as_ref().and_then(|h| h.death_fd())
    }

    /// The event-channel descriptors of the domains being served.
    fn ring_fds(&self) -> Vec<(u64, std::os::fd::RawFd)> {
        self.domains
            .values()
            .filter_map(|id| {
                let c = self.conns.get(id)?;
                let ring = c.ring.as_ref()?;
                (!c.ignored).then(|| (*id, ring.fd()))
            })
            .collect()
    }

    /// `VIRQ_DOM_EXC` fired: releases every introduced domain that died.
    pub fn check_domains(&mut self) {
        let known = self.domains();
        let Some(hv) = self.hv.as_mut() else {
            return;
        };
        let ex = hv.exceptions(&known);
        for d in ex.dead {
            self.release_domain(d);
        }
        // As C xenstored: a domain that shut down is announced once, and
        // keeps its connection until it dies.
        for d in ex.shut_down {
            if self.shut_down.insert(d) {
                self.fire_special("@releaseDomain", d);
            }
        }
    }

    /// Moves bytes between the daemon and the domains' rings: `ready`
    /// domains signalled us (their requests are read), and every domain
    /// with output waiting gets as much as its ring takes.
    pub fn service_domains(&mut self, ready: &[u64]) {
        self.busy = false;
        self.settle();
        let mut ready = ready.to_vec();
        ready.append(&mut self.kick);
        // Held back by the memory quota, which their own replies going,
        // dom0 removing their nodes or a new quota may have ended.
        for &id in self.domains.values() {
            if self.conns.get(&id).is_some_and(|c| !c.held.is_empty())
                && !ready.contains(&id)
                && self.may_read(id)
            {
                ready.push(id);
            }
        }
        let ready = &ready[..];
        for id in ready {
            if let Some(r) = self.conns.get(id).and_then(|c| c.ring.as_ref()) {
                r.ack();
            }
        }
        let ids: Vec<u64> = self.domains.values().copied().collect();
        // A domain's requests may queue events for a domain served before
        // it in this pass: passes repeat while anything moves.
        for pass in 0.. {
            if pass == RING_ROUNDS {
                self.busy = true;
                return;
            }
            let mut moved = false;
            for &id in &ids {
                let signalled = pass == 0 && ready.contains(&id);
                let has_output = self.conns.get(&id).is_some_and(|c| !c.out.is_empty());
                if signalled || has_output {
                    moved |= self.service_ring(id);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Watch events dropped for a domain whose output was full.
    pub fn dropped_events(&self, domid: u16) -> Option<u64> {
        let id = self.domains.get(&domid)?;
        self.conns.get(id).map(|c| c.dropped_events)
    }

    /// Serves one domain's ring until nothing moves (or [`RING_ROUNDS`]);
    /// whether anything did.
    fn service_ring(&mut self, id: u64) -> bool {
        let mut moved = false;
        let mut buf = [0u8; xs_wire::XENSTORE_RING_SIZE];
        for round in 0.. {
            if round == RING_ROUNDS {
                self.busy = true;
                break;
            }
            let Some(c) = self.conns.get_mut(&id) else {
                return moved;
            };
            let (Some(ring), false, false) = (&c.ring, c.ignored, c.dead) else {
                break;
            };
            let mem = ring.memory();
            // The ring reconnection feature: the domain asks for a fresh
            // start (xenstore-ring.txt) and waits for the word to go back.
            if round == 0
                && c.features & xs_wire::XENSTORE_SERVER_FEATURE_RECONNECTION != 0
                && mem.load_u32(offsets::CONNECTION, Ordering::Acquire)
                    == Ok(xs_wire::XENSTORE_RECONNECT)
            {
                c.watches.clear();
                c.txs.clear();
                c.out = Vec::new();
                c.held.clear();
                c.open.clear();
                c.decoder = Decoder::new();
                for off in [
                    offsets::REQ_CONS,
                    offsets::REQ_PROD,
                    offsets::RSP_CONS,
                    offsets::RSP_PROD,
                ] {
                    let _ = mem.store_u32(off, 0, Ordering::Release);
                }
                let _ = mem.store_u32(
                    offsets::CONNECTION,
                    xs_wire::XENSTORE_CONNECTED,
                    Ordering::Release,
                );
                moved = true;
                break;
            }
            let mut progressed = false;
            // Replies first: they make room for the domain's next requests
            // (and what they let go of may let it go on).
            if !c.out.is_empty() {
                match ByteProducer::new(mem, ByteRingLayout::XENSTORE_RSP)
                    .and_then(|p| p.write(&c.out))
                {
                    Ok(n) => {
                        c.out.drain(..n);
                        progressed |= n > 0;
                    }
                    Err(_) => {
                        c.fail = xs_wire::XENSTORE_ERROR_RINGIDX;
                        c.dead = true;
                        break;
                    }
                }
            }
            if progressed {
                self.settle_conn(id);
            }
            // Held requests first; while any are, the ring is not read
            // (the domain's `outstanding` quota).
            let held = self.conns.get(&id).map_or(0, |c| c.held.len());
            if held > 0 {
                self.run_held(id);
                let left = self.conns.get(&id).map_or(0, |c| c.held.len());
                progressed |= left < held;
                if left > 0 {
                    moved |= progressed;
                    if progressed {
                        // What they queued goes out next round.
                        continue;
                    }
                    break;
                }
            }
            let Some(c) = self.conns.get_mut(&id) else {
                return moved;
            };
            let Some(ring) = &c.ring else {
                break;
            };
            let mem = ring.memory();
            // Requests are read however much output waits (as C does): a
            // domain blocked writing a request may be about to read its
            // replies. Its replies are bounded by MAX_OUTPUT, its events
            // are dropped past it (`send`).
            let got = match ByteConsumer::new(mem, ByteRingLayout::XENSTORE_REQ)
                .and_then(|r| r.read(&mut buf))
            {
                Ok(n) => n,
                Err(_) => {
                    c.fail = xs_wire::XENSTORE_ERROR_RINGIDX;
                    c.dead = true;
                    break;
                }
            };
            if got > 0 {
                progressed = true;
                self.input(id, &buf[..got]);
            }
            moved |= progressed;
            if !progressed {
                break;
            }
        }
        if moved {
            if let Some(r) = self.conns.get(&id).and_then(|c| c.ring.as_ref()) {
                r.notify();
            }
        }
        moved
    }

    /// Forgets domain `domid`'s connection (on `XS_RELEASE` or its death),
    /// as C xenstored's `destroy_domain`: the nodes it owns are removed,
    /// it leaves the special nodes' permissions, and `@releaseDomain`
    /// fires.
    fn release_domain(&mut self, domid: u16) {
        self.shut_down.remove(&domid);
        let Some(id) = self.domains.remove(&domid) else {
            return;
        };
        // Unmaps the page and closes the port.
        self.remove_conn(id);
        // A later domain with the same id is not anyone's target.
        for c in self.conns.values_mut() {
            if c.caller.target == Some(domid) {
                c.caller.target = None;
            }
        }
        for p in self.tree.owned_by(domid) {
            if let Ok(changes) = store::rm(&mut self.tree, &Caller::DOM0, &p) {
                for ch in &changes {
                    self.fire(ch);
                }
            }
        }
        for perms in self.special_perms.values_mut() {
            *perms = perms.without(domid);
        }
        self.fire_special("@releaseDomain", domid);
    }

    /// `XS_INTRODUCE` of `domid` with its page `gfn` and port `port`.
    fn introduce(&mut self, domid: u16, gfn: u64, port: u32) -> Result<(), XsError> {
        if domid == 0 || domid >= DOMID_FIRST_RESERVED {
            return Err(XsError::Inval);
        }
        let hv = self.hv.as_mut().ok_or(XsError::NoSys)?;
        // Introduced again: the old ring goes first (unmapped, our port
        // closed), so that the domain's port can be bound again, as C
        // unbinds before it rebinds.
        if let Some(c) = self
            .domains
            .get(&domid)
            .and_then(|id| self.conns.get_mut(id))
        {
            c.ring = None;
            c.ignored = true;
        }
        let ring = hv.connect(domid, gfn, port)?;
        let old = self
            .domains
            .get(&domid)
            .and_then(|id| self.conns.get(id))
            .map(|c| (c.caller, c.features));
        let features = match old {
            Some((_, f)) => f,
            None => self.pending_features.remove(&domid).unwrap_or(FEATURES),
        };
        // As C's domain_conn_reset: the ring starts empty, and a domain
        // waiting for xenstored to come back is told it has. Features are
        // offered before any data moves.
        let mem = ring.memory();
        for (off, v) in [
            (offsets::SERVER_FEATURES, features),
            (offsets::REQ_CONS, 0),
            (offsets::REQ_PROD, 0),
            (offsets::RSP_CONS, 0),
            (offsets::RSP_PROD, 0),
        ] {
            mem.store_u32(off, v, Ordering::Release)
                .map_err(|_| XsError::Inval)?;
        }
        if mem.load_u32(offsets::CONNECTION, Ordering::Acquire) == Ok(xs_wire::XENSTORE_RECONNECT) {
            let _ = mem.store_u32(
                offsets::CONNECTION,
                xs_wire::XENSTORE_CONNECTED,
                Ordering::Release,
            );
            ring.notify();
        }
        let caller = Caller {
            quota: self.quotas,
            ..Caller::domain(domid)
        };
        let mut conn = Conn::new(old.map_or(caller, |(c, _)| c), Some(ring));
        conn.features = features;
        conn.link = (gfn, port);
        match self.domains.get(&domid) {
            // Introduced again (C uses this to recreate the event channel):
            // a fresh connection on the new ring that keeps its target,
            // quotas and features, nothing fired.
            Some(&id) => {
                if let Some(old) = self.conns.insert(id, conn) {
                    self.release_markers(&old);
                }
            }
            None => {
                let id = self.next_conn;
                self.next_conn += 1;
                self.conns.insert(id, conn);
                self.domains.insert(domid, id);
                self.fire_special("@introduceDomain", domid);
                // One that shut down before it was introduced is
                // announced now: its VIRQ_DOM_EXC came before we knew it.
                if self.hv.as_mut().is_some_and(|hv| hv.is_shut_down(domid))
                    && self.shut_down.insert(domid)
                {
                    self.fire_special("@releaseDomain", domid);
                }
            }
        }
        Ok(())
    }

    /// `XS_GET_FEATURE [domid|]`: the caller's features, or (dom0 only) a
    /// domain's, introduced or not (`ENOENT` if it does not exist).
    fn get_feature(&mut self, id: u64, caller: &Caller, parts: &[&[u8]]) -> Result<u32, XsError> {
        match parts {
            [] => Ok(self.conns.get(&id).map_or(FEATURES, |c| c.features)),
            [domid] => {
                if !caller.privileged {
                    return Err(XsError::Acces);
                }
                let d = parse_strict_domid(domid)?;
                if let Some(c) = self.domains.get(&d).and_then(|id| self.conns.get(id)) {
                    return Ok(c.features);
                }
                self.known_domain(d)?;
                Ok(self.pending_features.get(&d).copied().unwrap_or(FEATURES))
            }
            _ => Err(XsError::Inval),
        }
    }

    /// `XS_SET_FEATURE domid|value|`: before the domain is introduced
    /// (`EBUSY` after), only bits we offer (`EINVAL` otherwise).
    fn set_feature(&mut self, parts: &[&[u8]]) -> Result<(), XsError> {
        let [domid, value] = parts else {
            return Err(XsError::Inval);
        };
        let d = parse_strict_domid(domid)?;
        let value = parse_number(value);
        self.known_domain(d)?;
        if d == 0 || self.domains.contains_key(&d) {
            return Err(XsError::Busy);
        }
        let value = u32::try_from(value)
            .ok()
            .filter(|v| v & !FEATURES == 0)
            .ok_or(XsError::Inval)?;
        self.pending_features.insert(d, value);
        Ok(())
    }

    /// `ENOENT` unless `domid` is dom0, introduced, or a domain the
    /// hypervisor has.
    fn known_domain(&mut self, domid: u16) -> Result<(), XsError> {
        let known = domid == 0
            || self.domains.contains_key(&domid)
            || self.hv.as_mut().is_some_and(|hv| hv.exists(domid));
        if known {
            Ok(())
        } else {
            Err(XsError::NoEnt)
        }
    }

    /// An introduced domain and its connection (`ENOENT` if it is not
    /// introduced). Domain 0 is `EINVAL` where C's `onearg_domain` reads
    /// the argument, and otherwise introduced (C's `dom0_init`), without a
    /// ring connection of ours.
    fn introduced(
        &self,
        arg: Option<&&[u8]>,
        zero_ok: bool,
    ) -> Result<(u16, Option<u64>), XsError> {
        let d = parse_domid(arg)?;
        if d == 0 {
            return if zero_ok {
                Ok((0, None))
            } else {
                Err(XsError::Inval)
            };
        }
        let d = u16::try_from(d).map_err(|_| XsError::NoEnt)?;
        let id = self.domains.get(&d).copied().ok_or(XsError::NoEnt)?;
        Ok((d, Some(id)))
    }

    /// Queues a special watch's event (`@introduceDomain`,
    /// `@releaseDomain`, about `domid`) to every watcher of it that may
    /// read it. As Xen 4.18's `fire_special_watches`: a watch without depth
    /// on the name itself gets `name`; one on `name/<domid>`, or on the
    /// name with a depth of 1 or more, gets `name/<domid>`.
    fn fire_special(&mut self, name: &str, domid: u16) {
        let perms = self
            .special_perms
            .get(name)
            .cloned()
            .unwrap_or_else(|| Perms::owned_by(0));
        let with_domid = format!("{name}/{domid}");
        let mut events = Vec::new();
        for (&id, c) in &self.conns {
            if c.ignored || !c.caller.access(&perms).can_read() {
                continue;
            }
            for w in &c.watches {
                let p = w.path.as_str();
                if p == name && w.depth.is_none() {
                    events.push((id, watch_event(name, &w.token)));
                } else if p == with_domid || (p == name && w.depth.is_some_and(|d| d > 0)) {
                    events.push((id, watch_event(&with_domid, &w.token)));
                }
            }
        }
        for (id, e) in events {
            self.send(id, e);
        }
    }

    /// Marks a connection to be dropped.
    pub fn hang_up(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.dead = true;
        }
    }

    /// Whether the connection must be dropped (it broke the framing, let
    /// its output grow past `MAX_OUTPUT`, or hung up).
    pub fn is_dead(&self, id: u64) -> bool {
        self.conns.get(&id).is_none_or(|c| c.dead)
    }

    /// Bytes a connection sent: every whole request in them is answered.
    pub fn input(&mut self, id: u64, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.dead || c.ignored {
            return;
        }
        let msgs = match c.decoder.feed(bytes) {
            Ok(m) => m,
            Err(_) => {
                c.dead = true;
                return;
            }
        };
        // A domain's requests wait their turn under its `outstanding`
        // quota (C's `domain_can_read`); dom0's are never held back.
        if c.ring.is_some() && !c.caller.privileged {
            c.held.extend(msgs);
            self.run_held(id);
            return;
        }
        for m in msgs {
            if self.is_dead(id) {
                return;
            }
            self.handle(id, &m);
        }
    }

    /// Handles a domain's held requests while its `outstanding` quota
    /// allows. What each queues keeps it outstanding until it is sent.
    fn run_held(&mut self, id: u64) {
        loop {
            let Some(c) = self.conns.get(&id) else {
                return;
            };
            if c.dead || c.ignored || c.held.is_empty() || !self.may_read(id) {
                return;
            }
            let Some(m) = self.conns.get_mut(&id).and_then(|c| c.held.pop_front()) else {
                return;
            };
            let serial = self.next_serial;
            self.next_serial += 1;
            self.current = Some((id, serial));
            self.handle(id, &m);
            self.current = None;
        }
    }

    /// The bytes waiting to be sent to a connection (drain what was sent).
    pub fn output(&mut self, id: u64) -> Option<&mut Vec<u8>> {
        self.conns.get_mut(&id).map(|c| &mut c.out)
    }

    fn send(&mut self, id: u64, m: Message) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.ignored {
            return;
        }
        // A reply too long for the protocol is an E2BIG error instead.
        let bytes = match m.encode() {
            Ok(b) => b,
            Err(_) => match Message::new(
                MsgType::Error,
                m.req_id,
                m.tx_id,
                with_nul(XsError::TooBig.name()),
            )
            .encode()
            {
                Ok(b) => b,
                Err(_) => return,
            },
        };
        // Privileged clients (dom0's tools and backends) may fall behind
        // further before they are dropped than domains may.
        let limit = if c.caller.privileged {
            MAX_OUTPUT_PRIVILEGED
        } else {
            MAX_OUTPUT
        };
        if c.out.len() + bytes.len() <= limit {
            c.queued += bytes.len() as u64;
            c.out.extend(bytes);
            if let Some((origin, serial)) = self.current {
                let expires = self
                    .watch_event_timeout
                    .filter(|_| m.ty == MsgType::WatchEvent && origin != id)
                    .and_then(|t| Instant::now().checked_add(t));
                c.markers.push_back(Marker {
                    end: c.queued,
                    origin: Some((origin, serial)),
                    expires,
                });
                if let Some(o) = self.conns.get_mut(&origin) {
                    *o.open.entry(serial).or_insert(0) += 1;
                }
            }
        } else if c.ring.is_some() && m.ty == MsgType::WatchEvent {
            // Another domain's writes must not cost this one its
            // connection: past the bound its events are dropped (C drops
            // them past the domain's memory quota).
            c.dropped_events += 1;
        } else {
            // Replies past the bound: the client is not reading them.
            c.fail = xs_wire::XENSTORE_ERROR_COMM;
            c.dead = true;
        }
    }

    /// One request. As C xenstored does, the watch events a change causes
    /// are queued before the reply, and a new watch's first event after it.
    fn handle(&mut self, id: u64, m: &Message) {
        match self.dispatch(id, m) {
            Ok(Outcome {
                payload,
                changes,
                after,
            }) => {
                for ch in &changes {
                    self.fire(ch);
                }
                self.send(id, Message::new(m.ty, m.req_id, m.tx_id, payload));
                if let Some(a) = after {
                    self.send(id, a);
                }
            }
            Err(e) => self.send(
                id,
                Message::new(MsgType::Error, m.req_id, m.tx_id, with_nul(e.name())),
            ),
        }
    }

    fn dispatch(&mut self, id: u64, m: &Message) -> Result<Outcome, XsError> {
        let caller = self.conns.get(&id).ok_or(XsError::Inval)?.caller;
        let parts = split_strings(&m.payload);
        // C xenstored's XS_FLAG_PRIV types, refused to domains first.
        if !caller.privileged
            && matches!(
                m.ty,
                MsgType::Control
                    | MsgType::Introduce
                    | MsgType::Release
                    | MsgType::IsDomainIntroduced
                    | MsgType::Resume
                    | MsgType::SetTarget
                    | MsgType::GetQuota
                    | MsgType::SetQuota
                    | MsgType::SetFeature
            )
        {
            return Err(XsError::Acces);
        }
        let path_arg = |i: usize, special: bool| -> Result<Path, XsError> {
            let p = Path::parse(parts.get(i).ok_or(XsError::Inval)?, caller.domid, special)?;
            // C xenstored's path-length quota; dom0 is not limited.
            if !caller.privileged && p.quota_len() > caller.quota.path_max {
                return Err(XsError::Inval);
            }
            Ok(p)
        };
        let tx = m.tx_id;
        // C xenstored's permissions quota comes before anything but the
        // transaction is looked at, for the special nodes too.
        if m.ty == MsgType::SetPerms
            && !caller.privileged
            && parts.len().saturating_sub(1) > caller.quota.node_permissions
        {
            let open = |c: &Conn| c.txs.contains_key(&tx);
            if tx != 0 && !self.conns.get(&id).is_some_and(open) {
                return Err(XsError::NoEnt);
            }
            return Err(XsError::NoSpc);
        }
        // The memory quota: a request that adds to what the domain holds
        // may not take it past it (nor add anything once it is there).
        if !caller.privileged
            && matches!(
                m.ty,
                MsgType::Write
                    | MsgType::Mkdir
                    | MsgType::SetPerms
                    | MsgType::Watch
                    | MsgType::TransactionStart
            )
        {
            let held = self.memory_of(id);
            if held >= caller.quota.memory
                || held + self.cost(m, &parts, caller.domid) > caller.quota.memory
            {
                return Err(XsError::NoMem);
            }
        }
        match m.ty {
            MsgType::Read => {
                let p = path_arg(0, false)?;
                Ok(Outcome::reply(self.in_tx(id, tx, |t, tree| match t {
                    Some(t) => t.read(tree, &caller, &p),
                    None => store::read(tree, &caller, &p),
                })?))
            }
            MsgType::Directory | MsgType::DirectoryPart => {
                let p = path_arg(0, false)?;
                // Outside a transaction, list straight from the tree: no
                // copy of a node that may have thousands of children.
                if tx == 0 {
                    let hint = self.conns.get(&id).and_then(|c| c.cursor.clone());
                    if let Some(node) = self.tree.node_ref(p.as_str()) {
                        if !caller.access(&node.perms).can_read() {
                            return Err(XsError::Acces);
                        }
                        let start = hint
                            .filter(|h| h.path == p.as_str() && h.cgen == node.cgen)
                            .map_or((0, 0), |h| (h.pos, h.index));
                        let (out, (pos, index)) =
                            listing_from(m.ty, &node.children, node.cgen, parts.get(1), start)?;
                        let cursor = (m.ty == MsgType::DirectoryPart).then(|| Cursor {
                            path: p.as_str().to_string(),
                            cgen: node.cgen,
                            pos,
                            index,
                        });
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.cursor = cursor;
                        }
                        return Ok(Outcome::reply(out));
                    }
                }
                let (names, cgen) = self.in_tx(id, tx, |t, tree| match t {
                    Some(t) => t.directory(tree, &caller, &p),
                    None => store::directory(tree, &caller, &p),
                })?;
                listing(m.ty, &names, cgen, parts.get(1)).map(Outcome::reply)
            }
            MsgType::GetPerms => {
                let p = path_arg(0, false)?;
                let perms = self.in_tx(id, tx, |t, tree| match t {
                    Some(t) => t.get_perms(tree, &caller, &p),
                    None => store::get_perms(tree, &caller, &p),
                })?;
                Ok(Outcome::reply(perms.to_payload()))
            }
            MsgType::SetPerms if parts.first().is_some_and(|p| p.starts_with(b"@")) => {
                // The special watch nodes have permissions of their own.
                let p = path_arg(0, true)?;
                if !matches!(p.as_str(), "@introduceDomain" | "@releaseDomain") {
                    return Err(XsError::Inval);
                }
                let perms = Perms::parse(parts.iter().skip(1).copied())?;
                // As for a node: only their owner (dom0 by default) may.
                let current = self
                    .special_perms
                    .get(p.as_str())
                    .cloned()
                    .unwrap_or_else(|| Perms::owned_by(0));
                let owner = current.owner();
                let owns =
                    caller.privileged || owner == caller.domid || Some(owner) == caller.target;
                if !owns || !caller.access(&current).can_write() {
                    return Err(XsError::Acces);
                }
                self.special_perms.insert(p.as_str().to_string(), perms);
                Ok(Outcome::reply(ok()))
            }
            MsgType::Write | MsgType::Mkdir | MsgType::Rm | MsgType::SetPerms => {
                let p = path_arg(0, false)?;
                let op = match m.ty {
                    MsgType::Write => {
                        let at = m
                            .payload
                            .iter()
                            .position(|&b| b == 0)
                            .ok_or(XsError::Inval)?;
                        Op::Write(p, m.payload[at + 1..].to_vec())
                    }
                    MsgType::Mkdir => Op::Mkdir(p),
                    MsgType::Rm => Op::Rm(p),
                    _ => Op::SetPerms(p, Perms::parse(parts.iter().skip(1).copied())?),
                };
                if tx != 0 {
                    let tree = &self.tree;
                    let c = self.conns.get_mut(&id).ok_or(XsError::Inval)?;
                    let t = c.txs.get_mut(&tx).ok_or(XsError::NoEnt)?;
                    if t.full(&caller) {
                        return Err(XsError::NoSpc);
                    }
                    t.modify(tree, &caller, op)?;
                    return Ok(Outcome::reply(ok()));
                }
                let changes = match op {
                    Op::Write(p, v) => store::write(&mut self.tree, &caller, &p, &v)?,
                    Op::Mkdir(p) => store::mkdir(&mut self.tree, &caller, &p)?,
                    Op::Rm(p) => store::rm(&mut self.tree, &caller, &p)?,
                    Op::SetPerms(p, perms) => store::set_perms(&mut self.tree, &caller, &p, perms)?,
                };
                Ok(Outcome {
                    payload: ok(),
                    changes,
                    after: None,
                })
            }
            MsgType::Watch => {
                let features = self.conns.get(&id).map_or(0, |c| c.features);
                // `path|token|` (C 4.17), or `path|token|depth|` with the
                // watch-depth feature (Xen 4.18+).
                let depth = match parts.len() {
                    2 => None,
                    3 if features & FEATURE_WATCHDEPTH != 0 => {
                        let d = parts[2];
                        if d.first() == Some(&b'-') {
                            return Err(XsError::Inval);
                        }
                        Some(parse_number(d) as usize)
                    }
                    _ => return Err(XsError::Inval),
                };
                let given = parts[0];
                let token = parts[1];
                let path = Path::parse(given, caller.domid, true)?;
                let given = String::from_utf8_lossy(given).into_owned();
                let token = String::from_utf8_lossy(token).into_owned();
                let relative_to = (!given.starts_with('/') && !given.starts_with('@'))
                    .then(|| domain_path(caller.domid));
                let c = self.conns.get_mut(&id).ok_or(XsError::Inval)?;
                if c.watches.iter().any(|w| w.path == path && w.token == token) {
                    return Err(XsError::Exist);
                }
                // As C 4.17: a domain with more watches than its quota
                // gets E2BIG (so it may have one more); dom0 is not limited.
                if !caller.privileged && c.watches.len() > caller.quota.watches {
                    return Err(XsError::TooBig);
                }
                let event = watch_event(&given, &token);
                c.watches.push(Watch {
                    token,
                    path,
                    relative_to,
                    depth,
                });
                Ok(Outcome {
                    payload: ok(),
                    changes: Vec::new(),
                    after: Some(event),
                })
            }
            MsgType::Unwatch => {
                // Matched by resolved path and token, as C xenstored does.
                let path = path_arg(0, true)?;
                let token =
                    String::from_utf8_lossy(parts.get(1).ok_or(XsError::Inval)?).into_owned();
                let c = self.conns.get_mut(&id).ok_or(XsError::Inval)?;
                let before = c.watches.len();
                c.watches.retain(|w| !(w.path == path && w.token == token));
                if c.watches.len() == before {
                    return Err(XsError::NoEnt);
                }
                Ok(Outcome::reply(ok()))
            }
            MsgType::TransactionStart => {
                if tx != 0 {
                    return Err(XsError::Busy);
                }
                let c = self.conns.get_mut(&id).ok_or(XsError::Inval)?;
                // As C 4.17: ENOSPC once a domain has more open than its
                // quota (so it may have one more); dom0 is not limited.
                if !caller.privileged && c.txs.len() > caller.quota.transactions {
                    return Err(XsError::NoSpc);
                }
                let mut t = self.next_tx;
                while t == 0 || c.txs.contains_key(&t) {
                    t = t.wrapping_add(1);
                }
                self.next_tx = t.wrapping_add(1);
                c.txs.insert(t, Transaction::new());
                Ok(Outcome::reply(with_nul(&t.to_string())))
            }
            MsgType::TransactionEnd => {
                let commit = match parts.first().map(|s| &s[..]) {
                    Some(b"T") => true,
                    Some(b"F") => false,
                    _ => return Err(XsError::Inval),
                };
                let c = self.conns.get_mut(&id).ok_or(XsError::Inval)?;
                let t = c.txs.remove(&tx).ok_or(XsError::NoEnt)?;
                if !commit {
                    return Ok(Outcome::reply(ok()));
                }
                let changes = t.commit(&mut self.tree, &caller)?;
                Ok(Outcome {
                    payload: ok(),
                    changes,
                    after: None,
                })
            }
            MsgType::GetDomainPath => {
                let d = parse_domid(parts.first())?;
                Ok(Outcome::reply(with_nul(&format!("/local/domain/{d}"))))
            }
            MsgType::IsDomainIntroduced => {
                let d = parse_domid(parts.first())?;
                let yes = d == 0
                    || d == u32::from(DOMID_SELF)
                    || u16::try_from(d).is_ok_and(|d| self.domains.contains_key(&d));
                Ok(Outcome::reply(with_nul(if yes { "T" } else { "F" })))
            }
            MsgType::Introduce => {
                if parts.len() < 3 {
                    return Err(XsError::Inval);
                }
                // No such domain past the 16 bits of a domid.
                let domid =
                    u16::try_from(parse_domid(parts.first())?).map_err(|_| XsError::Inval)?;
                let gfn = parse_number(parts[1]);
                let port = parse_number(parts[2]);
                // C: "Sanity check args": a port of 0 (or garbage) is refused.
                let port = u32::try_from(port).map_err(|_| XsError::Inval)?;
                if port == 0 {
                    return Err(XsError::Inval);
                }
                self.introduce(domid, gfn, port)?;
                Ok(Outcome::reply(ok()))
            }
            MsgType::Release => {
                let (d, _) = self.introduced(parts.first(), false)?;
                self.release_domain(d);
                Ok(Outcome::reply(ok()))
            }
            MsgType::Resume => {
                // As C: the domain's shutdown is forgotten (a resumed
                // domain that shuts down again is announced again).
                let (d, _) = self.introduced(parts.first(), false)?;
                self.shut_down.remove(&d);
                Ok(Outcome::reply(ok()))
            }
            MsgType::SetTarget => {
                if parts.len() < 2 {
                    return Err(XsError::Inval);
                }
                let (_, conn) = self.introduced(parts.first(), true)?;
                let (target, _) = self.introduced(parts.get(1), true)?;
                // dom0's own connections need no target: they may do all.
                if let Some(c) = conn.and_then(|id| self.conns.get_mut(&id)) {
                    c.caller.target = Some(target);
                }
                Ok(Outcome::reply(ok()))
            }
            MsgType::ResetWatches => {
                let c = self.conns.get_mut(&id).ok_or(XsError::Inval)?;
                c.watches.clear();
                c.txs.clear();
                Ok(Outcome::reply(ok()))
            }
            MsgType::Control => match parts.first().map(|s| &s[..]) {
                Some(b"check") => Ok(Outcome::reply(ok())),
                Some(b"help") => Ok(Outcome::reply(with_nul("check\nhelp\n"))),
                _ => Err(XsError::Inval),
            },
            MsgType::GetQuota => self.get_quota(&parts).map(Outcome::reply),
            MsgType::SetQuota => {
                self.set_quota(&parts)?;
                Ok(Outcome::reply(ok()))
            }
            MsgType::GetFeature => {
                let f = self.get_feature(id, &caller, &parts)?;
                Ok(Outcome::reply(with_nul(&f.to_string())))
            }
            MsgType::SetFeature => {
                self.set_feature(&parts)?;
                Ok(Outcome::reply(ok()))
            }
            // Unknown types.
            _ => Err(XsError::NoSys),
        }
    }

    /// Runs `f` on connection `id`'s transaction `tx` (or on the tree).
    fn in_tx<T>(
        &mut self,
        id: u64,
        tx: u32,
        f: impl FnOnce(Option<&mut Transaction>, &mut Tree) -> Result<T, XsError>,
    ) -> Result<T, XsError> {
        if tx == 0 {
            return f(None, &mut self.tree);
        }
        let c = self.conns.get_mut(&id).ok_or(XsError::Inval)?;
        let caller = c.caller;
        let t = c.txs.get_mut(&tx).ok_or(XsError::NoEnt)?;
        if t.full(&caller) {
            return Err(XsError::NoSpc);
        }
        f(Some(t), &mut self.tree)
    }

    /// Queues the watch events of one change to every watcher it concerns.
    fn fire(&mut self, ch: &Change) {
        let mut events = Vec::new();
        for (&id, c) in &self.conns {
            if !c.caller.access(&ch.perms).can_read() {
                continue;
            }
            for w in &c.watches {
                if w.path.is_special() {
                    continue;
                }
                // As C xenstored's fire_watches: an exact change reaches the
                // watches on its path, any other the watches at or above it.
                let hit = if ch.exact {
                    w.path == ch.path
                } else {
                    ch.path
                        .depth_below(&w.path)
                        .is_some_and(|d| w.depth.is_none_or(|max| d <= max))
                };
                if !hit {
                    continue;
                }
                let p = ch.path.as_str();
                let shown = match &w.relative_to {
                    Some(base) => p
                        .strip_prefix(base.as_str())
                        .and_then(|r| r.strip_prefix('/'))
                        .unwrap_or(p),
                    None => p,
                };
                events.push((id, watch_event(shown, &w.token)));
            }
        }
        for (id, e) in events {
            self.send(id, e);
        }
    }
}

/// A `WATCH_EVENT` of `path` for the watch with `token`.
fn watch_event(path: &str, token: &str) -> Message {
    Message::with_strings(
        MsgType::WatchEvent,
        0,
        0,
        &[path.as_bytes(), token.as_bytes()],
    )
}

/// What a request produced: the reply's payload, the changes to fire
/// watches for, and a message to send after the reply.
struct Outcome {
    payload: Vec<u8>,
    changes: Vec<Change>,
    after: Option<Message>,
}

impl Outcome {
    fn reply(payload: Vec<u8>) -> Outcome {
        Outcome {
            payload,
            changes: Vec::new(),
            after: None,
        }
    }
}

/// A domid argument, read as C xenstored reads it (`atoi` into an
/// `unsigned int`: leading digits, anything else is 0; "parsing errors ...
/// generally go undetected").
fn parse_domid(arg: Option<&&[u8]>) -> Result<u32, XsError> {
    Ok(parse_number(arg.ok_or(XsError::Inval)?) as u32)
}

/// A quota name argument.
fn quota_name(arg: &[u8]) -> Result<&str, XsError> {
    std::str::from_utf8(arg).map_err(|_| XsError::Inval)
}

/// A domid given as a whole decimal number (`EINVAL` otherwise), as
/// newer xenstoreds' `parse_domid` reads one.
fn parse_strict_domid(arg: &[u8]) -> Result<u16, XsError> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(XsError::Inval)
}

/// Leading decimal digits as a number (0 if there are none or too many).
fn parse_number(arg: &[u8]) -> u64 {
    let digits = arg.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&arg[..digits])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The reply to `XS_DIRECTORY` (every name, or `E2BIG` past the payload
/// limit) or `XS_DIRECTORY_PART`: the generation, then the names from byte
/// `offset` of the whole nul-separated list, as many pieces as fit; an
/// empty name ends the list.
/// Where a connection's last `DIRECTORY_PART` of a node ended: the next
/// part of the same listing starts there instead of walking every name
/// before it again (a 10,000-child listing is ~30 parts).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cursor {
    path: String,
    cgen: u64,
    /// Byte offset at which name `index` starts.
    pos: usize,
    index: usize,
}

/// [`listing_from`] with no cursor.
fn listing(
    ty: MsgType,
    names: &[String],
    cgen: u64,
    offset: Option<&&[u8]>,
) -> Result<Vec<u8>, XsError> {
    listing_from(ty, names, cgen, offset, (0, 0)).map(|(out, _)| out)
}

/// The reply, and where the part ended: `(pos, index)` of the first name
/// not sent whole. `start` is a known `(pos, index)` at or before the
/// offset asked for.
fn listing_from(
    ty: MsgType,
    names: &[String],
    cgen: u64,
    offset: Option<&&[u8]>,
    start: (usize, usize),
) -> Result<(Vec<u8>, (usize, usize)), XsError> {
    if ty == MsgType::Directory {
        let total: usize = names.iter().map(|n| n.len() + 1).sum();
        if total > abi::xs_wire::XENSTORE_PAYLOAD_MAX {
            return Err(XsError::TooBig);
        }
        let mut out = Vec::with_capacity(total);
        for n in names {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        return Ok((out, (total, names.len())));
    }
    let off: usize = std::str::from_utf8(offset.ok_or(XsError::Inval)?)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(XsError::Inval)?;
    let mut out = with_nul(&cgen.to_string());
    let room = abi::xs_wire::XENSTORE_PAYLOAD_MAX - out.len() - 1;
    let mut used = 0;
    let (mut pos, first) = if start.0 <= off && start.1 <= names.len() {
        start
    } else {
        (0, 0)
    };
    let mut complete = true;
    let mut ended = (pos, names.len());
    for (i, n) in names.iter().enumerate().skip(first) {
        let (start, end) = (pos, pos + n.len() + 1);
        pos = end;
        if end <= off {
            continue;
        }
        // The piece from `off` on (a whole name, or the rest of one that
        // `off` cuts, as C xenstored's byte offset does).
        let skip = off.saturating_sub(start);
        let piece_len = n.len() + 1 - skip;
        if used + piece_len > room {
            complete = false;
            ended = (start, i);
            break;
        }
        out.extend_from_slice(&n.as_bytes()[skip.min(n.len())..]);
        out.push(0);
        used += piece_len;
    }
    // The empty name that ends the list comes only with its last part:
    // libxenstore stops reading at it.
    if complete {
        out.push(0);
        ended = (pos, names.len());
    }
    Ok((out, ended))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing read part by part with the cursor is the listing read
    /// from scratch each time, byte for byte, for every part.
    #[test]
    fn a_cursor_changes_nothing_but_the_work() {
        let names: Vec<String> = (0..3000)
            .map(|i| format!("n{}{}", i, "x".repeat(i % 37)))
            .collect();
        let mut off = 0usize;
        let mut hint = (0, 0);
        let mut parts = 0;
        loop {
            let o = off.to_string();
            let arg: &[u8] = o.as_bytes();
            let plain = listing(MsgType::DirectoryPart, &names, 7, Some(&arg)).unwrap();
            let (fast, next) =
                listing_from(MsgType::DirectoryPart, &names, 7, Some(&arg), hint).unwrap();
            assert_eq!(plain, fast, "part at offset {off}");
            parts += 1;
            let body = &plain[2..];
            if body.ends_with(b"\0\0") || body == b"\0" {
                break;
            }
            off += body.len();
            hint = next;
            assert_eq!(hint.0, off, "the cursor is where the next part starts");
        }
        assert!(parts > 10);
        // A hint past the offset asked for is not used.
        let arg: &[u8] = b"5";
        let plain = listing(MsgType::DirectoryPart, &names, 7, Some(&arg)).unwrap();
        let (fast, _) = listing_from(MsgType::DirectoryPart, &names, 7, Some(&arg), hint).unwrap();
        assert_eq!(plain, fast);
    }
}
