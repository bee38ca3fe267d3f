//! The hv daemon (`dom0kit hv`): owns machine memory, domains and event
//! channels, and answers the sim's hypercalls on a seqpacket socket.
//!
//! One thread, one epoll loop. Every connection is exactly one domain: dom0
//! by the uid that sent its attach (`SCM_CREDENTIALS`: our uid, or root),
//! a guest by the one-time token the toolstack got when it created the
//! domain; the attach's sender is that guest's process. A malformed, oversized or
//! unanswerable message closes that connection only. A guest connection
//! that closes is its domain's death: its ports close (peers see them
//! unbound and get an event), `VIRQ_DOM_EXC` fires, and its frames return
//! to the pool when no dom0 process holds the domain any more (zombies).
//! A guest that shut down (`SCHEDOP_shutdown`) is not dead when its
//! process goes: as on Xen, it stays, memory and all, until dom0 destroys
//! it. It runs no more: every later call of its connection is `ESRCH`
//! (its process, which the hv does not stop, exits after the call).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use abi::{DomId, Mfn, Pfn, Port};

use crate::confine;
use crate::frames::{Frames, Policy};
use crate::grant;
use crate::layout::{self, info, slot, Control, NR_PORTS};
use crate::proto::{ListedDomain, Reply, Request, TOKEN_LEN};
use crate::sys::{self, Epoll, Mapping};

/// How a simulated host is set up.
#[derive(Clone, Debug)]
pub struct HvConfig {
    /// Where the socket (`hv.sock`) goes.
    pub run_dir: PathBuf,
    /// Frames of machine memory.
    pub machine_pages: u64,
    /// Pages of dom0's own memory.
    pub dom0_pages: u64,
    /// Domains that may exist at once, dom0 and zombies included.
    pub max_domains: u32,
    /// Frame placement.
    pub policy: Policy,
    /// Seed of the shuffled policy.
    pub seed: u64,
}

impl HvConfig {
    /// A small host for tests: 64 MiB, shuffled frames, in `run_dir`.
    pub fn small(run_dir: impl Into<PathBuf>) -> HvConfig {
        HvConfig {
            run_dir: run_dir.into(),
            machine_pages: 16384,
            dom0_pages: 1024,
            max_domains: 64,
            policy: Policy::Shuffled,
            seed: 0x5eed,
        }
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("hv.sock")
    }
}

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EAGAIN: i32 = 11;
const ENOMEM: i32 = 12;
const EACCES: i32 = 13;
const EEXIST: i32 = 17;
const EINVAL: i32 = 22;
const ENOSPC: i32 = 28;
const EPERM: i32 = 1;

#[derive(Debug)]
enum Binding {
    Unbound { remote: DomId },
    Interdomain { remote: DomId, remote_port: Port },
    Virq(u32),
}

struct PortState {
    binding: Binding,
    /// Our write end of the port's event pipe (its owner has the read
    /// end, and each peer a write end of its own, `sys::event_writer`).
    write: OwnedFd,
    /// Our copy of the read end, never read: while the port lives, a
    /// write to it never finds the pipe without a reader (`EPIPE`, and
    /// `SIGPIPE` where it is not ignored), whatever its owner closes.
    _read: OwnedFd,
    /// The dom0 connection that owns the port (dom0 has many processes).
    owner: Option<u64>,
}

struct Domain {
    domid: DomId,
    slot: u32,
    p2m: Vec<Mfn>,
    grant_frames: Vec<Mfn>,
    /// Frames given up by memory exchange; freed with the domain, since a
    /// backend may still map them.
    retired: Vec<Mfn>,
    info_fd: OwnedFd,
    info: Mapping,
    token: Option<[u8; TOKEN_LEN]>,
    conn: Option<u64>,
    /// The guest's process, while it lives: its frames are not reused
    /// before it has exited, whatever became of its connection.
    process: Option<OwnedFd>,
    dying: bool,
    /// `SHUTDOWN_*`, once it shut down: it then stays (its memory
    /// kept) until dom0 destroys it, even after its process is gone.
    shutdown: Option<u8>,
    paused: bool,
    ports: BTreeMap<u32, PortState>,
    holders: HashMap<u64, u32>,
    used_pfns: Vec<bool>,
    next_gref: u32,
}

impl Domain {
    fn bump_generation(&self, port: u32) {
        let off = info::PORT_GEN + port as usize * 4;
        let s = self.info.slice();
        if let Ok(g) = s.load_u32(off, Ordering::Relaxed) {
            let _ = s.store_u32(off, g.wrapping_add(1), Ordering::Release);
        }
    }

    fn free_port(&self) -> Option<u32> {
        (1..NR_PORTS as u32).find(|p| !self.ports.contains_key(p))
    }
}

struct Conn {
    fd: OwnedFd,
    domid: Option<DomId>,
    dom0: bool,
    /// A dom0 process's log of its grant pins ([`crate::pinlog`]): the
    /// memfd, read to find them, and our mapping of it, to take them.
    pins: Option<(std::fs::File, Mapping)>,
}

/// The simulated hypervisor.
pub struct Hypervisor {
    config: HvConfig,
    geometry: Control,
    machine_fd: OwnedFd,
    machine: Mapping,
    control_fd: OwnedFd,
    control: Mapping,
    frames: Frames,
    domains: BTreeMap<u16, Domain>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    next_domid: u16,
    free_slots: Vec<u32>,
    listener: OwnedFd,
    epoll: Epoll,
    stop: OwnedFd,
    /// The uids of the guests of this host, when they are confined.
    guest_ids: Option<confine::IdBlock>,
    /// Descriptors made for the reply being sent (a peer's own write end
    /// of an event pipe), closed once it is.
    outgoing: Vec<OwnedFd>,
    /// Pins of closed dom0 connections whose entries were locked when we
    /// came to drop them.
    stuck_pins: Vec<(DomId, abi::GrantRef, bool)>,
}

/// Connections that have not attached yet, at most.
const MAX_UNATTACHED: usize = 64;
/// Requests of one connection answered before looking at the others.
const REQUESTS_PER_WAKEUP: usize = 32;
/// Event-channel ports a guest may have (dom0 may use them all).
const GUEST_PORTS: usize = 1024;

/// Epoll tokens with this bit are a guest process's pidfd (low 16 bits: its
/// domid).
const PROCESS: u64 = 1 << 63;

const LISTENER: u64 = 0;
const STOP: u64 = 1;

/// A hypervisor running on its own thread; stopped when dropped.
pub struct HvHandle {
    stop: OwnedFd,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
    socket: PathBuf,
}

impl HvHandle {
    /// The socket to attach to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops the hypervisor and waits for its thread.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        sys::eventfd_signal(self.stop.as_raw_fd())?;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("hypervisor thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for HvHandle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl Hypervisor {
    /// Sets up machine memory, dom0 and the socket.
    pub fn new(config: HvConfig) -> io::Result<Hypervisor> {
        if config.max_domains == 0 || config.dom0_pages >= config.machine_pages {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad hypervisor configuration",
            ));
        }
        let geometry = Control {
            machine_pages: config.machine_pages,
            max_slots: config.max_domains,
        };
        let machine_fd = sys::memfd("dom0kit-machine", config.machine_pages * 4096)?;
        let control_fd = sys::memfd("dom0kit-control", geometry.len() as u64)?;
        // A process that holds them must not be able to truncate them under
        // everyone's mappings (SIGBUS).
        sys::seal_size(&machine_fd)?;
        sys::seal_size(&control_fd)?;
        // Every port is a descriptor here: use all the kernel allows us.
        sys::raise_fd_limit();
        let control = Mapping::shared(&control_fd, geometry.len(), true)?;
        let machine = Mapping::shared(&machine_fd, config.machine_pages as usize * 4096, true)?;
        std::fs::create_dir_all(&config.run_dir)?;
        let path = config.socket();
        let _ = std::fs::remove_file(&path);
        let listener = sys::listen_seqpacket(&path)?;
        sys::set_nonblocking(listener.as_raw_fd())?;
        let epoll = Epoll::new()?;
        let stop = sys::eventfd()?;
        epoll.add(listener.as_raw_fd(), LISTENER)?;
        epoll.add(stop.as_raw_fd(), STOP)?;
        let mut hv = Hypervisor {
            frames: Frames::new(config.machine_pages, config.policy, config.seed),
            free_slots: (0..config.max_domains).rev().collect(),
            config,
            geometry,
            machine_fd,
            machine,
            control_fd,
            control,
            domains: BTreeMap::new(),
            conns: HashMap::new(),
            next_conn: 2,
            next_domid: 1,
            listener,
            epoll,
            stop,
            outgoing: Vec::new(),
            stuck_pins: Vec::new(),
            guest_ids: confine::IdBlock::claim()?,
        };
        let pages = hv.config.dom0_pages;
        hv.create_domain(DomId(0), pages, layout::MAX_GRANT_FRAMES as u32)
            .map_err(|e| io::Error::other(format!("cannot create dom0 (errno {e})")))?;
        Ok(hv)
    }

    /// Runs the hypervisor on a thread of its own.
    pub fn spawn(config: HvConfig) -> io::Result<HvHandle> {
        let socket = config.socket();
        let hv = Hypervisor::new(config)?;
        let stop = hv.stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("hv".into())
            .spawn(move || hv.run())?;
        Ok(HvHandle {
            stop,
            thread: Some(thread),
            socket,
        })
    }

    /// Serves until stopped.
    pub fn run(mut self) -> io::Result<()> {
        let mut ready = Vec::new();
        loop {
            ready.clear();
            // Pins behind a locked entry are tried again every 10 ms.
            let timeout = if self.stuck_pins.is_empty() { -1 } else { 10 };
            self.epoll.wait(&mut ready, timeout)?;
            if !self.stuck_pins.is_empty() {
                self.retry_stuck_pins();
            }
            for &token in &ready {
                match token {
                    LISTENER => self.accept(),
                    STOP => {
                        let _ = std::fs::remove_file(self.config.socket());
                        // No confined guest outlives its hypervisor.
                        if let Some(b) = &self.guest_ids {
                            for &d in self.domains.keys().filter(|&&d| d != 0) {
                                let _ = b.kill(DomId(d));
                            }
                        }
                        return Ok(());
                    }
                    t if t & PROCESS != 0 => self.process_exited((t & 0xffff) as u16),
                    c => self.serve(c),
                }
            }
        }
    }

    /// Takes new connections. Failures (out of descriptors, a peer gone
    /// already) lose that connection, never the hypervisor; connections
    /// that have not attached yet are capped, the oldest going first.
    fn accept(&mut self) {
        loop {
            let fd = match sys::accept(self.listener.as_raw_fd()) {
                Ok(Some(fd)) => fd,
                Ok(None) | Err(_) => return,
            };
            // For the attach: who sent it, as a pidfd (see `attach_guest`).
            sys::pass_pidfd(fd.as_raw_fd(), true);
            // At the cap, the oldest connection that has not attached goes:
            // a real client attaches right after connecting, so only idle
            // ones are old.
            let unattached: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| c.domid.is_none())
                .map(|(&id, _)| id)
                .collect();
            if unattached.len() >= MAX_UNATTACHED {
                if let Some(&oldest) = unattached.iter().min() {
                    self.close(oldest);
                }
            }
            if sys::set_nonblocking(fd.as_raw_fd()).is_err() {
                continue;
            }
            let id = self.next_conn;
            self.next_conn += 1;
            if self.epoll.add(fd.as_raw_fd(), id).is_err() {
                continue;
            }
            self.conns.insert(
                id,
                Conn {
                    fd,
                    domid: None,
                    dom0: false,
                    pins: None,
                },
            );
        }
    }

    /// Answers up to `REQUESTS_PER_WAKEUP` waiting requests of connection
    /// `c` (epoll is level-triggered: the rest wake us again, after the
    /// others had their turn); closes it on EOF or anything malformed.
    fn serve(&mut self, c: u64) {
        let mut buf = vec![0u8; sys::MAX_MESSAGE];
        for _ in 0..REQUESTS_PER_WAKEUP {
            let Some(conn) = self.conns.get(&c) else {
                return;
            };
            let mut fds = Vec::new();
            let (n, sender) = match sys::recv_msg_from(conn.fd.as_raw_fd(), &mut buf, &mut fds) {
                Ok((0, _)) => return self.close(c),
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.close(c),
            };
            drop(fds); // Clients have no business sending descriptors.
            let Ok(req) = Request::decode(&buf[..n]) else {
                return self.close(c);
            };
            let (reply, out_fds) = match self.handle(c, req, sender) {
                Ok(r) => r,
                Err(errno) => (Reply::Error { errno }, Vec::new()),
            };
            // Closed once the reply is sent, or is not.
            let _made = std::mem::take(&mut self.outgoing);
            let Some(conn) = self.conns.get(&c) else {
                return;
            };
            let sent = sys::send_msg(conn.fd.as_raw_fd(), &reply.encode(), &out_fds);
            if sent.is_err() {
                return self.close(c);
            }
        }
    }

    fn close(&mut self, c: u64) {
        let Some(conn) = self.conns.remove(&c) else {
            return;
        };
        self.epoll.remove(conn.fd.as_raw_fd());
        if conn.dom0 {
            // A dom0 process: its pins, its ports and its holds go with it.
            if let Some((file, map)) = &conn.pins {
                self.unpin_logged(file, map);
            }
            let ports: Vec<u32> = self.domains.get(&0).map_or(Vec::new(), |d| {
                d.ports
                    .iter()
                    .filter(|(_, p)| p.owner == Some(c))
                    .map(|(&n, _)| n)
                    .collect()
            });
            for p in ports {
                self.close_port(DomId(0), p);
            }
            let held: Vec<u16> = self
                .domains
                .iter()
                .filter(|(_, d)| d.holders.contains_key(&c))
                .map(|(&id, _)| id)
                .collect();
            for id in held {
                if let Some(d) = self.domains.get_mut(&id) {
                    d.holders.remove(&c);
                }
                self.maybe_reap(id);
            }
        } else if let Some(domid) = conn.domid {
            if self.is_shut_down(domid.0) {
                if let Some(d) = self.domains.get_mut(&domid.0) {
                    d.conn = None;
                }
            } else {
                self.kill_domain(domid.0);
            }
        }
    }

    /// Answers `req` of connection `c`, sent by `sender` (who attaches is
    /// judged by who sent the attach, not by who connected).
    fn handle(
        &mut self,
        c: u64,
        req: Request,
        sender: Option<sys::Sender>,
    ) -> Result<(Reply, Vec<RawFd>), i32> {
        let conn = self.conns.get(&c).ok_or(EINVAL)?;
        let (me, dom0) = match (conn.domid, &req) {
            (None, Request::AttachDom0) => return self.attach_dom0(c, sender),
            (None, Request::AttachGuest { token }) => return self.attach_guest(c, *token, sender),
            (None, _) | (Some(_), Request::AttachDom0 | Request::AttachGuest { .. }) => {
                return Err(EPERM)
            }
            (Some(d), _) => (d, conn.dom0),
        };
        // A domain that shut down runs no more (on Xen its vCPUs stop):
        // the process may linger, its calls do nothing.
        if !dom0 && self.is_shut_down(me.0) {
            return Err(ESRCH);
        }
        let owner = dom0.then_some(c);
        let ok = |r| Ok((r, Vec::new()));
        match req {
            Request::AttachDom0 | Request::AttachGuest { .. } => Err(EPERM),
            Request::AllocPages { count } => ok(Reply::Pfn(self.alloc_pages(me, count)?)),
            Request::FreePages { pfn, count } => {
                let d = self.domains.get_mut(&me.0).ok_or(ESRCH)?;
                let end = pfn.0.checked_add(count).ok_or(EINVAL)?;
                let range = d
                    .used_pfns
                    .get_mut(pfn.0 as usize..end as usize)
                    .ok_or(EINVAL)?;
                range.iter_mut().for_each(|u| *u = false);
                ok(Reply::Ok)
            }
            Request::AllocGrantRefs { count } => {
                let d = self.domains.get_mut(&me.0).ok_or(ESRCH)?;
                let total = (d.grant_frames.len() * layout::ENTRIES_PER_FRAME) as u32;
                if count == 0 {
                    return Err(EINVAL);
                }
                // What is left of the table, if less than was asked for.
                let count = count.min(total - d.next_gref.min(total));
                if count == 0 {
                    return Err(ENOSPC);
                }
                let first = d.next_gref;
                d.next_gref += count;
                ok(Reply::GrantRefs {
                    first: abi::GrantRef(first),
                    count,
                })
            }
            Request::Exchange {
                pfn,
                count,
                address_bits,
            } => ok(Reply::Mfn(self.exchange(me, pfn, count, address_bits)?)),
            Request::EvtchnAllocUnbound { remote } => self.alloc_unbound(me, owner, remote),
            Request::EvtchnBindInterdomain {
                remote,
                remote_port,
            } => self.bind_interdomain(me, owner, remote, remote_port),
            Request::EvtchnBindVirq { virq } => self.bind_virq(me, owner, virq),
            Request::EvtchnClose { port } => {
                self.check_port_owner(me, owner, port)?;
                self.close_port(me, port.0);
                ok(Reply::Ok)
            }
            Request::EvtchnPeer { port } => self.peer(me, owner, port),
            Request::DomainCreate {
                pages,
                grant_frames,
            } => {
                require(dom0)?;
                if pages == 0
                    || grant_frames == 0
                    || grant_frames as usize > layout::MAX_GRANT_FRAMES
                {
                    return Err(EINVAL);
                }
                let domid = self.next_free_domid().ok_or(ENOSPC)?;
                let token = self.create_domain(domid, pages, grant_frames)?;
                ok(Reply::Created { domid, token })
            }
            Request::DomainDestroy { domid } => {
                require(dom0)?;
                if domid.0 == 0 {
                    return Err(EPERM);
                }
                let d = self.domains.get(&domid.0).ok_or(ESRCH)?;
                if let Some(p) = d.process.as_ref().filter(|_| !d.dying) {
                    let _ = sys::pidfd_signal(p, libc::SIGKILL);
                }
                self.kill_domain(domid.0);
                ok(Reply::Ok)
            }
            Request::DomainPause { domid, paused } => {
                require(dom0)?;
                let d = self.live_mut(domid)?;
                if domid.0 == 0 {
                    return Err(EPERM);
                }
                if let Some(p) = &d.process {
                    sys::pidfd_signal(p, if paused { libc::SIGSTOP } else { libc::SIGCONT })
                        .map_err(|_| ESRCH)?;
                }
                d.paused = paused;
                ok(Reply::Ok)
            }
            Request::DomainList => {
                require(dom0)?;
                let list = self
                    .domains
                    .values()
                    .take(crate::proto::MAX_LIST)
                    .map(|d| ListedDomain {
                        domid: d.domid,
                        pages: d.p2m.len() as u64,
                        flags: u8::from(d.paused)
                            | u8::from(d.dying) << 1
                            | u8::from(d.conn.is_some() || d.domid.0 == 0) << 2
                            | u8::from(d.shutdown.is_some()) << 3,
                        reason: d.shutdown.unwrap_or(0),
                    })
                    .collect();
                ok(Reply::List(list))
            }
            Request::Physinfo => {
                require(dom0)?;
                ok(Reply::Physinfo {
                    total: self.frames.total(),
                    free: self.frames.free_count(),
                })
            }
            Request::Hold { domid } => {
                require(dom0)?;
                let d = self.live_mut(domid)?;
                *d.holders.entry(c).or_insert(0) += 1;
                ok(Reply::Ok)
            }
            Request::Shutdown { reason } => {
                if me.0 == 0 {
                    return Err(EPERM);
                }
                if platform::ShutdownReason::from_code(reason).is_none() {
                    return Err(EINVAL);
                }
                self.live_mut(me)?.shutdown = Some(reason);
                self.dom_exc();
                ok(Reply::Ok)
            }
            Request::Release { domid } => {
                require(dom0)?;
                let d = self.domains.get_mut(&domid.0).ok_or(ESRCH)?;
                match d.holders.get_mut(&c) {
                    Some(n) if *n > 1 => *n -= 1,
                    Some(_) => {
                        d.holders.remove(&c);
                    }
                    None => return Err(EINVAL),
                }
                self.maybe_reap(domid.0);
                ok(Reply::Ok)
            }
        }
    }

    /// A domain that is alive (not dying), or `ESRCH`.
    fn live(&self, domid: DomId) -> Result<&Domain, i32> {
        self.domains.get(&domid.0).filter(|d| !d.dying).ok_or(ESRCH)
    }

    /// As [`live`](Self::live), to change it.
    fn live_mut(&mut self, domid: DomId) -> Result<&mut Domain, i32> {
        self.domains
            .get_mut(&domid.0)
            .filter(|d| !d.dying)
            .ok_or(ESRCH)
    }

    fn attached_reply(&self, domid: DomId) -> Result<Reply, i32> {
        let d = self.domains.get(&domid.0).ok_or(ESRCH)?;
        Ok(Reply::Attached {
            domid,
            pages: d.p2m.len() as u64,
            machine_pages: self.config.machine_pages,
            max_slots: self.config.max_domains,
            guest_ids: self.guest_ids.as_ref().map_or(0, confine::IdBlock::first),
            grant_frames: d.grant_frames.clone(),
        })
    }

    fn attach_dom0(
        &mut self,
        c: u64,
        sender: Option<sys::Sender>,
    ) -> Result<(Reply, Vec<RawFd>), i32> {
        let conn = self.conns.get_mut(&c).ok_or(EINVAL)?;
        let uid = sender.ok_or(EACCES)?.uid;
        if uid != sys::euid() && uid != 0 {
            return Err(EACCES);
        }
        let log = sys::memfd("dom0kit-pins", crate::pinlog::LEN as u64).map_err(|_| ENOMEM)?;
        sys::seal_size(&log).map_err(|_| ENOMEM)?;
        let map = Mapping::shared(&log, crate::pinlog::LEN, true).map_err(|_| ENOMEM)?;
        let file = std::fs::File::from(log.try_clone().map_err(|_| ENOMEM)?);
        conn.domid = Some(DomId(0));
        conn.dom0 = true;
        conn.pins = Some((file, map));
        // Attached: no pidfd with every request from now on.
        sys::pass_pidfd(conn.fd.as_raw_fd(), false);
        let reply = self.attached_reply(DomId(0))?;
        let d = self.domains.get(&0).ok_or(ESRCH)?;
        let fds = vec![
            self.machine_fd.as_raw_fd(),
            d.info_fd.as_raw_fd(),
            self.control_fd.as_raw_fd(),
            log.as_raw_fd(),
        ];
        // Closed once the reply is sent: the process and our mapping keep it.
        self.outgoing.push(log);
        Ok((reply, fds))
    }

    fn attach_guest(
        &mut self,
        c: u64,
        token: [u8; TOKEN_LEN],
        sender: Option<sys::Sender>,
    ) -> Result<(Reply, Vec<RawFd>), i32> {
        let Some(sender) = sender.filter(|s| s.pid > 0) else {
            return Err(EACCES);
        };
        // The process is this domain from now on; its exit is noticed
        // through the pidfd, and signals go to it, never to a reused pid.
        // The kernel's pidfd of the sender is that process for certain; one
        // opened by its pid (an older kernel) is whoever has the pid now,
        // which is the sender unless it exited and the pid came round again
        // in between. Without one the domain's frames could be reused while
        // it still maps them: no attach.
        let pidfd = match sender.process {
            sys::SenderProcess::Open(fd) => fd,
            sys::SenderProcess::Gone => return Err(EAGAIN),
            sys::SenderProcess::Untold => sys::pidfd_open(sender.pid).map_err(|_| EAGAIN)?,
        };
        let d = self
            .domains
            .values_mut()
            .find(|d| !d.dying && d.token == Some(token))
            .ok_or(EACCES)?;
        // A confined guest is its own domain's, whatever token it got hold
        // of (`confine`).
        let own = self.guest_ids.as_ref().map(|b| b.id_of(d.domid));
        if confine::is_guest_id(sender.uid) && Some(sender.uid) != own {
            return Err(EACCES);
        }
        d.token = None;
        d.conn = Some(c);
        let _ = self
            .epoll
            .add(pidfd.as_raw_fd(), PROCESS | u64::from(d.domid.0));
        d.process = Some(pidfd);
        let domid = d.domid;
        if let Some(conn) = self.conns.get_mut(&c) {
            conn.domid = Some(domid);
            sys::pass_pidfd(conn.fd.as_raw_fd(), false);
        }
        let reply = self.attached_reply(domid)?;
        let d = self.domains.get(&domid.0).ok_or(ESRCH)?;
        Ok((
            reply,
            vec![self.machine_fd.as_raw_fd(), d.info_fd.as_raw_fd()],
        ))
    }

    fn next_free_domid(&mut self) -> Option<DomId> {
        for _ in 0..abi::xen::DOMID_FIRST_RESERVED {
            let id = self.next_domid;
            self.next_domid = if id + 1 >= abi::xen::DOMID_FIRST_RESERVED {
                1
            } else {
                id + 1
            };
            if !self.domains.contains_key(&id) {
                return Some(DomId(id));
            }
        }
        None
    }

    /// Allocates frames, a slot and the info memfd, and publishes the
    /// domain in the control area. Returns its attach token.
    fn create_domain(
        &mut self,
        domid: DomId,
        pages: u64,
        grant_frames: u32,
    ) -> Result<[u8; TOKEN_LEN], i32> {
        if pages > self.frames.total() {
            return Err(ENOMEM);
        }
        let slot_idx = self.free_slots.pop().ok_or(ENOSPC)?;
        let Some(p2m) = self.frames.alloc(pages) else {
            self.free_slots.push(slot_idx);
            return Err(ENOMEM);
        };
        let Some(gframes) = self
            .frames
            .alloc_contiguous_below(u64::from(grant_frames), u64::MAX)
        else {
            self.frames.free(&p2m);
            self.free_slots.push(slot_idx);
            return Err(ENOMEM);
        };
        let grant_frames: Vec<Mfn> = (0..u64::from(grant_frames))
            .map(|i| Mfn(gframes.0 + i))
            .collect();
        let undo = |hv: &mut Hypervisor, p2m: &[Mfn], g: &[Mfn]| {
            hv.frames.free(p2m);
            hv.frames.free(g);
            hv.free_slots.push(slot_idx);
            ENOMEM
        };
        let made = (|| -> io::Result<(OwnedFd, Mapping)> {
            let len = info::len(pages);
            let fd = sys::memfd(&format!("dom0kit-info-d{}", domid.0), len as u64)?;
            let map = Mapping::shared(&fd, len, true)?;
            sys::seal_future_write(&fd)?;
            Ok((fd, map))
        })();
        let Ok((info_fd, info_map)) = made else {
            return Err(undo(self, &p2m, &grant_frames));
        };
        // The frames are zero: never used, or zeroed when their last
        // domain was reaped (a new domain never sees an old one's memory).
        let info_s = info_map.slice();
        for (pfn, m) in p2m.iter().enumerate() {
            let _ = info_s.store_u64(info::P2M + pfn * 8, m.0, Ordering::Relaxed);
        }
        let c = self.control.slice();
        let s = self.geometry.slot(slot_idx);
        let _ = c.fill(s, slot::P2M, 0);
        let _ = c.store_u32(s + slot::DOMID, u32::from(domid.0), Ordering::Relaxed);
        let _ = c.store_u64(s + slot::NR_PAGES, pages, Ordering::Relaxed);
        let _ = c.store_u32(
            s + slot::NR_GRANT_FRAMES,
            grant_frames.len() as u32,
            Ordering::Relaxed,
        );
        for (i, m) in grant_frames.iter().enumerate() {
            let _ = c.store_u64(s + slot::GRANT_FRAMES + i * 8, m.0, Ordering::Relaxed);
        }
        for (pfn, m) in p2m.iter().enumerate() {
            let _ = c.store_u64(s + slot::P2M + pfn * 8, m.0, Ordering::Relaxed);
        }
        let mut token = [0u8; TOKEN_LEN];
        if sys::random_bytes(&mut token).is_err() {
            return Err(undo(self, &p2m, &grant_frames));
        }
        let _ = c.store_u32(s + slot::STATE, layout::STATE_ALIVE, Ordering::Release);
        let _ = c.store_u16(
            self.geometry.slot_of(domid.0),
            slot_idx as u16 + 1,
            Ordering::Release,
        );
        let used_pfns = vec![false; pages as usize];
        self.domains.insert(
            domid.0,
            Domain {
                domid,
                slot: slot_idx,
                p2m,
                grant_frames,
                retired: Vec::new(),
                info_fd,
                info: info_map,
                token: (domid.0 != 0).then_some(token),
                conn: None,
                process: None,
                dying: false,
                shutdown: None,
                paused: false,
                ports: BTreeMap::new(),
                holders: HashMap::new(),
                used_pfns,
                next_gref: abi::grant_table::GNTTAB_NR_RESERVED_ENTRIES,
            },
        );
        Ok(token)
    }

    fn alloc_pages(&mut self, me: DomId, count: u64) -> Result<Pfn, i32> {
        let d = self.live_mut(me)?;
        let count = usize::try_from(count).map_err(|_| EINVAL)?;
        if count == 0 {
            return Err(EINVAL);
        }
        let mut run = 0;
        for i in 0..d.used_pfns.len() {
            run = if d.used_pfns[i] { 0 } else { run + 1 };
            if run == count {
                let first = i + 1 - count;
                d.used_pfns[first..=i].iter_mut().for_each(|u| *u = true);
                return Ok(Pfn(first as u64));
            }
        }
        Err(ENOMEM)
    }

    fn exchange(&mut self, me: DomId, pfn: Pfn, count: u64, bits: u32) -> Result<Mfn, i32> {
        let limit = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) / 4096
        };
        let d = self.live(me)?;
        let end = pfn
            .0
            .checked_add(count)
            .filter(|&e| e <= d.p2m.len() as u64)
            .ok_or(EINVAL)?;
        if count == 0 || bits < 12 {
            return Err(EINVAL);
        }
        // Retired frames are held until the domain goes; a domain may not
        // retire more than its own size, or exchanges would drain the host.
        if d.retired.len() as u64 + count > d.p2m.len() as u64 {
            return Err(ENOMEM);
        }
        let first = self
            .frames
            .alloc_contiguous_below(count, limit)
            .ok_or(ENOMEM)?;
        // The new frames may have been another domain's: scrub them.
        let _ = self
            .machine
            .slice()
            .fill(first.0 as usize * 4096, count as usize * 4096, 0);
        let geometry = self.geometry;
        let c = self.control.slice();
        let d = self.domains.get_mut(&me.0).ok_or(ESRCH)?;
        let s = geometry.slot(d.slot);
        for (k, p) in (pfn.0..end).enumerate() {
            let new = Mfn(first.0 + k as u64);
            let old = std::mem::replace(&mut d.p2m[p as usize], new);
            d.retired.push(old);
            let _ = d
                .info
                .slice()
                .store_u64(info::P2M + p as usize * 8, new.0, Ordering::Release);
            let _ = c.store_u64(s + slot::P2M + p as usize * 8, new.0, Ordering::Release);
        }
        Ok(first)
    }

    fn new_port(
        &mut self,
        me: DomId,
        owner: Option<u64>,
        binding: Binding,
    ) -> Result<(u32, RawFd), i32> {
        let d = self.live_mut(me)?;
        if me.0 != 0 && d.ports.len() >= GUEST_PORTS {
            return Err(ENOSPC);
        }
        let port = d.free_port().ok_or(ENOSPC)?;
        let (read, write) = sys::event_pipe().map_err(|_| ENOMEM)?;
        let raw = read.as_raw_fd();
        d.ports.insert(
            port,
            PortState {
                binding,
                write,
                _read: read,
                owner,
            },
        );
        d.bump_generation(port);
        Ok((port, raw))
    }

    fn alloc_unbound(
        &mut self,
        me: DomId,
        owner: Option<u64>,
        remote: DomId,
    ) -> Result<(Reply, Vec<RawFd>), i32> {
        let remote = if remote.0 == abi::xen::DOMID_SELF {
            me
        } else {
            remote
        };
        if !self.domains.contains_key(&remote.0) {
            return Err(ESRCH);
        }
        let (port, fd) = self.new_port(me, owner, Binding::Unbound { remote })?;
        Ok((Reply::Port(Port(port)), vec![fd]))
    }

    fn bind_interdomain(
        &mut self,
        me: DomId,
        owner: Option<u64>,
        remote: DomId,
        remote_port: Port,
    ) -> Result<(Reply, Vec<RawFd>), i32> {
        let remote = if remote.0 == abi::xen::DOMID_SELF {
            me
        } else {
            remote
        };
        let r = self.live(remote)?;
        // The peer's write end first: nothing is changed if it cannot be had.
        let peer_fd = match r.ports.get(&remote_port.0) {
            Some(PortState {
                binding: Binding::Unbound { remote: allowed },
                write,
                ..
            }) if *allowed == me => sys::event_writer(write).map_err(|_| ENOMEM)?,
            Some(_) => return Err(EINVAL),
            None => return Err(ENOENT),
        };
        let (port, fd) = self.new_port(
            me,
            owner,
            Binding::Interdomain {
                remote,
                remote_port,
            },
        )?;
        let r = self.domains.get_mut(&remote.0).ok_or(ESRCH)?;
        let Some(rp) = r.ports.get_mut(&remote_port.0) else {
            return Err(ENOENT);
        };
        rp.binding = Binding::Interdomain {
            remote: me,
            remote_port: Port(port),
        };
        r.bump_generation(remote_port.0);
        // Events sent to the unbound port were dropped; as Xen does, make
        // the new port pending so that its owner looks.
        if let Some(p) = self.domains.get(&me.0).and_then(|d| d.ports.get(&port)) {
            let _ = sys::event_signal(p.write.as_raw_fd());
        }
        let peer_raw = peer_fd.as_raw_fd();
        self.outgoing.push(peer_fd);
        Ok((Reply::Port(Port(port)), vec![fd, peer_raw]))
    }

    fn bind_virq(
        &mut self,
        me: DomId,
        owner: Option<u64>,
        virq: u32,
    ) -> Result<(Reply, Vec<RawFd>), i32> {
        if virq >= abi::xen::NR_VIRQS {
            return Err(EINVAL);
        }
        let d = self.domains.get(&me.0).ok_or(ESRCH)?;
        if virq == abi::xen::VIRQ_DOM_EXC && me.0 != 0 {
            return Err(EPERM);
        }
        // Xen allows one binding per vCPU; dom0 here is several processes,
        // so each may bind once.
        let dup = d
            .ports
            .values()
            .any(|p| matches!(p.binding, Binding::Virq(v) if v == virq) && p.owner == owner);
        if dup {
            return Err(EEXIST);
        }
        let (port, fd) = self.new_port(me, owner, Binding::Virq(virq))?;
        Ok((Reply::Port(Port(port)), vec![fd]))
    }

    fn check_port_owner(&self, me: DomId, owner: Option<u64>, port: Port) -> Result<(), i32> {
        let d = self.domains.get(&me.0).ok_or(ESRCH)?;
        match d.ports.get(&port.0) {
            Some(p) if p.owner == owner => Ok(()),
            Some(_) => Err(EACCES),
            None => Err(ENOENT),
        }
    }

    fn peer(
        &mut self,
        me: DomId,
        owner: Option<u64>,
        port: Port,
    ) -> Result<(Reply, Vec<RawFd>), i32> {
        self.check_port_owner(me, owner, port)?;
        let d = self.domains.get(&me.0).ok_or(ESRCH)?;
        let generation = d
            .info
            .slice()
            .load_u32(info::PORT_GEN + port.0 as usize * 4, Ordering::Acquire)
            .unwrap_or(0);
        let p = d.ports.get(&port.0).ok_or(ENOENT)?;
        if let Binding::Interdomain {
            remote,
            remote_port,
        } = p.binding
        {
            if let Some(rp) = self
                .domains
                .get(&remote.0)
                .and_then(|r| r.ports.get(&remote_port.0))
            {
                let w = sys::event_writer(&rp.write).map_err(|_| ENOMEM)?;
                let fd = w.as_raw_fd();
                self.outgoing.push(w);
                return Ok((
                    Reply::Peer {
                        bound: true,
                        generation,
                    },
                    vec![fd],
                ));
            }
        }
        Ok((
            Reply::Peer {
                bound: false,
                generation,
            },
            Vec::new(),
        ))
    }

    /// `EVTCHNOP_close`: the other end of an interdomain channel becomes
    /// unbound (bindable again by us) and gets an event.
    fn close_port(&mut self, me: DomId, port: u32) {
        let Some(d) = self.domains.get_mut(&me.0) else {
            return;
        };
        let Some(p) = d.ports.remove(&port) else {
            return;
        };
        d.bump_generation(port);
        if let Binding::Interdomain {
            remote,
            remote_port,
        } = p.binding
        {
            if let Some(r) = self.domains.get_mut(&remote.0) {
                if let Some(rp) = r.ports.get_mut(&remote_port.0) {
                    rp.binding = Binding::Unbound { remote: me };
                    let _ = sys::event_signal(rp.write.as_raw_fd());
                    r.bump_generation(remote_port.0);
                }
            }
        }
    }

    /// Drops the pins a closed dom0 connection left in its log. One whose
    /// entry is locked (by a process descheduled in it, or one that died in
    /// it) is tried again later: the hv never waits on a lock for long.
    fn unpin_logged(&mut self, file: &std::fs::File, map: &Mapping) {
        let taken = crate::pinlog::take_all(file, map);
        self.stuck_pins.extend(taken);
        self.retry_stuck_pins();
    }

    /// Tries the pins [`unpin_logged`](Self::unpin_logged) could not drop
    /// yet; keeps those still locked.
    fn retry_stuck_pins(&mut self) {
        let grants =
            grant::Hypervisor::new(self.control.slice(), self.machine.slice(), self.geometry);
        self.stuck_pins
            .retain(|&(granter, gref, writable)| !grants.try_unpin(granter, gref, writable));
    }

    /// A domain's death: ports closed, `VIRQ_DOM_EXC`, then its memory once
    /// nothing holds it.
    fn kill_domain(&mut self, domid: u16) {
        let geometry = self.geometry;
        let Some(d) = self.domains.get_mut(&domid) else {
            return;
        };
        if d.dying || domid == 0 {
            return;
        }
        d.dying = true;
        d.token = None;
        // Hang up on the domain's connection: nothing may act as a dead
        // domain, least of all after its id is reused.
        if let Some(c) = d.conn.take() {
            if let Some(conn) = self.conns.remove(&c) {
                self.epoll.remove(conn.fd.as_raw_fd());
            }
        }
        let Some(d) = self.domains.get_mut(&domid) else {
            return;
        };
        let _ = self.control.slice().store_u32(
            geometry.slot(d.slot) + slot::STATE,
            layout::STATE_DYING,
            Ordering::Release,
        );
        let ports: Vec<u32> = d.ports.keys().copied().collect();
        for p in ports {
            self.close_port(DomId(domid), p);
        }
        // Whatever its process left behind, if it ran confined: nothing
        // of its uid outlives the domain (its next user is another).
        if let Some(b) = &self.guest_ids {
            let _ = b.kill(DomId(domid));
        }
        self.dom_exc();
        self.maybe_reap(domid);
    }

    /// Signals `VIRQ_DOM_EXC` to dom0: a domain died or shut down.
    fn dom_exc(&self) {
        if let Some(dom0) = self.domains.get(&0) {
            for p in dom0.ports.values() {
                if matches!(p.binding, Binding::Virq(abi::xen::VIRQ_DOM_EXC)) {
                    let _ = sys::event_signal(p.write.as_raw_fd());
                }
            }
        }
    }

    /// Whether `domid` shut down: then its process or connection going
    /// is no death (it waits for dom0 to destroy it, as on Xen).
    fn is_shut_down(&self, domid: u16) -> bool {
        self.domains
            .get(&domid)
            .is_some_and(|d| d.shutdown.is_some())
    }

    /// A guest's process exited: its domain dies (if its connection had
    /// not already said so) and its frames may now go.
    fn process_exited(&mut self, domid: u16) {
        if let Some(d) = self.domains.get_mut(&domid) {
            if let Some(p) = d.process.take() {
                self.epoll.remove(p.as_raw_fd());
            }
        }
        if !self.is_shut_down(domid) {
            self.kill_domain(domid);
        }
        self.maybe_reap(domid);
    }

    fn maybe_reap(&mut self, domid: u16) {
        let reap = self
            .domains
            .get(&domid)
            .is_some_and(|d| d.dying && d.holders.is_empty() && d.process.is_none());
        if !reap {
            return;
        }
        let Some(d) = self.domains.remove(&domid) else {
            return;
        };
        // Its entries go with it: a pin still to be dropped there must not
        // be taken for one of the next domain of its id.
        self.stuck_pins
            .retain(|&(granter, _, _)| granter.0 != domid);
        let c = self.control.slice();
        let s = self.geometry.slot(d.slot);
        let _ = c.store_u16(self.geometry.slot_of(domid), 0, Ordering::Release);
        let _ = c.store_u32(s + slot::STATE, layout::STATE_FREE, Ordering::Release);
        // Zeroed as they return to the pool (nothing maps them any more),
        // so that creating a domain need not.
        for m in d.p2m.iter().chain(&d.grant_frames).chain(&d.retired) {
            let _ = self.machine.slice().fill(m.0 as usize * 4096, 4096, 0);
        }
        self.frames.free(&d.p2m);
        self.frames.free(&d.grant_frames);
        self.frames.free(&d.retired);
        self.free_slots.push(d.slot);
    }
}

fn require(dom0: bool) -> Result<(), i32> {
    if dom0 {
        Ok(())
    } else {
        Err(EPERM)
    }
}
