//! The daemon over its unix socket: one thread, `poll` over the listener
//! and the connections, requests answered in order, watch events queued to
//! the watchers. Socket clients are dom0 (privileged), as in C xenstored.
//!
//! Each connection's output is bounded (`MAX_OUTPUT`): a client that does
//! not read its replies and events is dropped, and the daemon's memory with
//! it. A client that breaks the framing is dropped at once.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path as FsPath, PathBuf};

use xenstore::path::domain_path;
use xenstore::wire::{split_strings, Decoder, Message, MsgType};
use xenstore::{Path, Perms, XsError};

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
/// Transactions one connection may have open (C xenstored's default).
pub const MAX_TRANSACTIONS: usize = 10;
/// Watches one connection may have (C xenstored's default is 128).
pub const MAX_WATCHES: usize = 128;

struct Watch {
    token: String,
    path: Path,
    /// The base to strip for a relative watch.
    relative_to: Option<String>,
}

struct Conn {
    caller: Caller,
    decoder: Decoder,
    out: Vec<u8>,
    watches: Vec<Watch>,
    txs: HashMap<u32, Transaction>,
    dead: bool,
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
}

/// xenstored on its unix socket.
pub struct Daemon {
    core: Core,
    listener: UnixListener,
    streams: HashMap<u64, UnixStream>,
    socket: PathBuf,
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
        })
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
        let mut fds = vec![libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
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
        if fds[0].revents != 0 {
            self.accept();
        }
        for (i, id) in ids.iter().enumerate() {
            let rev = fds[i + 1].revents;
            if rev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                self.read_from(*id);
            }
            // Replies and events to this or any connection.
            self.flush(*id);
        }
        for id in ids {
            if self.core.is_dead(id) {
                self.core.disconnect(id);
                self.streams.remove(&id);
            }
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
        }
    }

    /// A daemon continuing from a state file.
    pub fn restore(path: &FsPath) -> Result<Core, crate::state::StateError> {
        let (tree, special_perms) = crate::state::load(path)?;
        Ok(Core {
            tree,
            special_perms,
            ..Core::new()
        })
    }

    /// Writes the state file.
    pub fn save(&self, path: &FsPath) -> Result<(), crate::state::StateError> {
        crate::state::save(path, &self.tree, &self.special_perms)
    }

    /// A new connection of `caller`; its id.
    pub fn connect(&mut self, caller: Caller) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                caller,
                decoder: Decoder::new(),
                out: Vec::new(),
                watches: Vec::new(),
                txs: HashMap::new(),
                dead: false,
            },
        );
        id
    }

    /// Forgets a connection: its watches and open transactions go with it.
    pub fn disconnect(&mut self, id: u64) {
        self.conns.remove(&id);
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
        if c.dead {
            return;
        }
        let msgs = match c.decoder.feed(bytes) {
            Ok(m) => m,
            Err(_) => {
                c.dead = true;
                return;
            }
        };
        for m in msgs {
            if self.is_dead(id) {
                return;
            }
            self.handle(id, &m);
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
            c.out.extend(bytes);
        } else {
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
        let path_arg = |i: usize, special: bool| -> Result<Path, XsError> {
            let p = Path::parse(parts.get(i).ok_or(XsError::Inval)?, caller.domid, special)?;
            // C xenstored's path-length quota; dom0 is not limited.
            if !caller.privileged && !p.within_domain_quota() {
                return Err(XsError::Inval);
            }
            Ok(p)
        };
        let tx = m.tx_id;
        // C xenstored's permissions quota comes before anything but the
        // transaction is looked at, for the special nodes too.
        if m.ty == MsgType::SetPerms
            && !caller.privileged
            && parts.len().saturating_sub(1) > store::NODE_PERMS_QUOTA
        {
            let open = |c: &Conn| c.txs.contains_key(&tx);
            if tx != 0 && !self.conns.get(&id).is_some_and(open) {
                return Err(XsError::NoEnt);
            }
            return Err(XsError::NoSpc);
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
                    if let Some(node) = self.tree.node_ref(p.as_str()) {
                        if !caller.access(&node.perms).can_read() {
                            return Err(XsError::Acces);
                        }
                        return listing(m.ty, &node.children, node.cgen, parts.get(1))
                            .map(Outcome::reply);
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
                let given = parts.first().ok_or(XsError::Inval)?;
                let token = parts.get(1).ok_or(XsError::Inval)?;
                let path = Path::parse(given, caller.domid, true)?;
                let given = String::from_utf8_lossy(given).into_owned();
                let token = String::from_utf8_lossy(token).into_owned();
                let relative_to = (!given.starts_with('/') && !given.starts_with('@'))
                    .then(|| domain_path(caller.domid));
                let c = self.conns.get_mut(&id).ok_or(XsError::Inval)?;
                if c.watches.iter().any(|w| w.path == path && w.token == token) {
                    return Err(XsError::Exist);
                }
                if c.watches.len() >= MAX_WATCHES {
                    return Err(XsError::NoSpc);
                }
                let event = Message::with_strings(
                    MsgType::WatchEvent,
                    0,
                    0,
                    &[given.as_bytes(), token.as_bytes()],
                );
                c.watches.push(Watch {
                    token,
                    path,
                    relative_to,
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
                if c.txs.len() >= MAX_TRANSACTIONS {
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
                Ok(Outcome::reply(with_nul(&domain_path(d))))
            }
            MsgType::IsDomainIntroduced => {
                let d = parse_domid(parts.first())?;
                Ok(Outcome::reply(with_nul(if d == 0 { "T" } else { "F" })))
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
            // Domain connections (INTRODUCE and the rest) and GET/SET_QUOTA
            // are not built yet; unknown types are refused the same way.
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
                    ch.path.is_child_of(&w.path)
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
                events.push((
                    id,
                    Message::with_strings(
                        MsgType::WatchEvent,
                        0,
                        0,
                        &[shown.as_bytes(), w.token.as_bytes()],
                    ),
                ));
            }
        }
        for (id, e) in events {
            self.send(id, e);
        }
    }
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

/// A domid argument, read as C xenstored reads it (`atoi`: leading digits,
/// anything else is 0; "parsing errors ... generally go undetected").
fn parse_domid(arg: Option<&&[u8]>) -> Result<u16, XsError> {
    let arg = arg.ok_or(XsError::Inval)?;
    let digits: Vec<u8> = arg.iter().copied().take_while(u8::is_ascii_digit).collect();
    let n: u64 = std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(n as u16)
}

/// The reply to `XS_DIRECTORY` (every name, or `E2BIG` past the payload
/// limit) or `XS_DIRECTORY_PART`: the generation, then the names from byte
/// `offset` of the whole nul-separated list, as many pieces as fit; an
/// empty name ends the list.
fn listing(
    ty: MsgType,
    names: &[String],
    cgen: u64,
    offset: Option<&&[u8]>,
) -> Result<Vec<u8>, XsError> {
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
        return Ok(out);
    }
    let off: usize = std::str::from_utf8(offset.ok_or(XsError::Inval)?)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(XsError::Inval)?;
    let mut out = with_nul(&cgen.to_string());
    let room = abi::xs_wire::XENSTORE_PAYLOAD_MAX - out.len() - 1;
    let mut used = 0;
    let mut pos = 0;
    let mut complete = true;
    for n in names {
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
    }
    Ok(out)
}
