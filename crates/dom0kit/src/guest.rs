//! `dom0kit guest`: the process that runs as a domU. It attaches to the
//! simulated hypervisor as its domain (the one-time token comes in
//! `$DOM0KIT_TOKEN`, not on the command line), sets up its xenstore ring
//! page and an unbound port for dom0, tells the toolstack where they are
//! on its standard output (`xenstore <gfn> <port>`, the start info of a
//! real domU), and then speaks xenstore over the ring like a domU does,
//! running its frontends.
//!
//! Frontends so far: vbd. It grants a ring and allocates an event channel
//! for each queue (two, and rings of four pages, when the backend offers
//! them), and once `Connected` serves the disk through blkfront
//! (`blk::front`, one a queue) as an NBD export on
//! `<export dir>/<vdev>.sock`, which outlives reconnections to the
//! backend (`blk::reattach`).

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use platform::{DomId, EventChannels, GrantRef, GrantTable, OwnMemory, Pfn, Port};
use sim::SimDomain;
use xenbus::driver::{follow_watches, DriverResult, FrontendDriver, FrontendRunner};
use xenbus::paths::Device;
use xenstore::client::{Client, ClientError, Tx};
use xenstore::ring::RingStream;
use xenstore::XsError;

/// One vbd frontend's ring: its pages (`2^order` from `pfn`), their
/// grants, its port.
struct VbdRing {
    pfn: Pfn,
    grefs: Vec<GrantRef>,
    port: Port,
}

/// The ring order blkfront asks for when the backend offers it (4 pages,
/// 128 requests).
const RING_ORDER: u32 = 2;

/// Queues blkfront asks for when the backend offers them (one a core
/// here). Transfers do not overlap yet (the export serves one at a time),
/// so the second queue costs its pages and grants (264 + 24 a queue, and
/// as many of the backend's persistent mappings) without speeding
/// anything up; it is there so that every disk runs the multi-queue
/// protocol.
const QUEUES: u32 = 2;

/// Queue directories a backend might have been told of (ours offers 4).
const MAX_QUEUES_SEEN: u32 = 16;

/// A connected device's export: it serves the disk across reconnections
/// to the backend (`blk::reattach`) until the device goes.
struct Export {
    socket: PathBuf,
    disk: Arc<blk::reattach::Reattachable<SimDomain>>,
    gone: Arc<std::sync::atomic::AtomicBool>,
}

/// The vbd frontend: grants a `blkif` ring to the backend (of
/// [`RING_ORDER`] if the backend offers it) and allocates its event
/// channel; once connected, serves the disk as an NBD
/// export on `<export dir>/<vdev>.sock`.
struct VbdFront {
    dom: SimDomain,
    /// Each device's rings, one a queue.
    rings: BTreeMap<u32, Vec<VbdRing>>,
    /// Grants the backend still had mapped when we let go: ended later.
    lingering: Vec<(Pfn, GrantRef)>,
    export_dir: Option<PathBuf>,
    exports: BTreeMap<u32, Export>,
    /// Frontends whose data grants the backend still had mapped.
    lingering_fronts: Vec<blk::front::BlkFront<SimDomain>>,
}

impl VbdFront {
    fn end_lingering(&mut self) {
        // Frontends whose grants the backend still mapped (it lets go of
        // persistent grants after we do): again.
        let before = std::mem::take(&mut self.lingering_fronts);
        self.lingering_fronts = before.into_iter().filter_map(|f| f.release()).collect();
        let dom = &self.dom;
        self.lingering
            .retain(|&(pfn, gref)| match dom.end_access(gref) {
                Ok(()) => {
                    let _ = dom.free_pages(pfn, 1);
                    false
                }
                Err(_) => true,
            });
    }
}

impl VbdFront {
    /// One queue's ring of `2^order` pages, granted to `backend`, and its
    /// unbound port.
    fn ring(&mut self, backend: DomId, order: u32) -> Result<VbdRing, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let pages = 1u64 << order;
        let pfn = self.dom.alloc_pages(pages).map_err(|x| e(&x))?;
        // An empty ring: every index zero.
        let mem = self.dom.pages(pfn, pages).map_err(|x| e(&x))?;
        mem.fill(0, mem.len(), 0).map_err(|x| e(&x))?;
        let mut grefs = Vec::new();
        let undo = |dom: &SimDomain, grefs: &[GrantRef]| {
            for g in grefs {
                let _ = dom.end_access(*g);
            }
            let _ = dom.free_pages(pfn, pages);
        };
        for i in 0..pages {
            match self.dom.grant_access(backend, Pfn(pfn.0 + i), false) {
                Ok(g) => grefs.push(g),
                Err(x) => {
                    undo(&self.dom, &grefs);
                    return Err(e(&x));
                }
            }
        }
        let port = match self.dom.alloc_unbound(backend) {
            Ok(p) => p,
            Err(x) => {
                undo(&self.dom, &grefs);
                return Err(e(&x));
            }
        };
        Ok(VbdRing { pfn, grefs, port })
    }

    /// Releases a blkfront, or keeps it for later if the backend still
    /// maps its pages.
    fn keep_if_mapped(&mut self, f: blk::front::BlkFront<SimDomain>) {
        if let Some(left) = f.release() {
            self.lingering_fronts.push(left);
        }
    }

    /// Lets rings go: ports closed, pages ended (later if still mapped).
    fn drop_rings(&mut self, rings: Vec<VbdRing>) {
        for r in rings {
            let _ = self.dom.close(r.port);
            for (i, g) in r.grefs.iter().enumerate() {
                self.lingering.push((Pfn(r.pfn.0 + i as u64), *g));
            }
        }
        self.end_lingering();
    }

    /// Whether pages wait for a backend to let go of them.
    fn lingers(&self) -> bool {
        !self.lingering.is_empty() || !self.lingering_fronts.is_empty()
    }
}

impl FrontendDriver for VbdFront {
    fn setup<S: Read + Write>(&mut self, xs: &mut Client<S>, dev: &Device) -> DriverResult {
        self.end_lingering();
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let backend = DomId(dev.backend);
        // As Linux's blkfront: the largest order and the most queues both
        // ends allow.
        let offer = |xs: &mut Client<S>, key: &str| -> u32 {
            xs.read(Tx::NONE, &format!("{}/{key}", dev.backend_dir()))
                .ok()
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let order = offer(xs, "max-ring-page-order").min(RING_ORDER);
        let queues = offer(xs, "multi-queue-max-queues").clamp(1, QUEUES);
        let mut rings = Vec::new();
        for _ in 0..queues {
            match self.ring(backend, order) {
                Ok(r) => rings.push(r),
                Err(x) => {
                    self.drop_rings(rings);
                    return Err(x);
                }
            }
        }
        let fe = dev.frontend_dir();
        // One queue's keys, in `dir` (the frontend's, or `queue-N` under
        // it with several queues).
        let mut keys: Vec<(String, String)> = Vec::new();
        for (q, r) in rings.iter().enumerate() {
            let dir = if queues == 1 {
                String::new()
            } else {
                format!("queue-{q}/")
            };
            if order == 0 {
                keys.push((format!("{dir}ring-ref"), r.grefs[0].0.to_string()));
            } else {
                for (i, g) in r.grefs.iter().enumerate() {
                    keys.push((format!("{dir}ring-ref{i}"), g.0.to_string()));
                }
            }
            keys.push((format!("{dir}event-channel"), r.port.0.to_string()));
        }
        if order > 0 {
            keys.push(("ring-page-order".into(), order.to_string()));
        }
        if queues > 1 {
            keys.push(("multi-queue-num-queues".into(), queues.to_string()));
        }
        keys.extend([
            ("protocol".into(), "x86_64-abi".to_string()),
            // blkfront's data pages are granted once for the device's life.
            ("feature-persistent".into(), "1".to_string()),
        ]);
        self.rings.insert(dev.devid, rings);
        // In one transaction, as Linux's blkfront: first every key of a
        // ring layout an earlier connection may have left (another order,
        // another number of queues), then ours.
        let mut stale: Vec<String> = ["ring-ref", "event-channel", "ring-page-order"]
            .iter()
            .map(|k| k.to_string())
            .chain(["multi-queue-num-queues".to_string()])
            .chain((0..16).map(|i| format!("ring-ref{i}")))
            .collect();
        stale.extend((0..MAX_QUEUES_SEEN).map(|q| format!("queue-{q}")));
        xenbus::paths::in_transaction(xs, |xs, t| {
            for k in &stale {
                match xs.rm(t, &format!("{fe}/{k}")) {
                    Ok(()) | Err(ClientError::Xs(XsError::NoEnt)) => {}
                    Err(e) => return Err(e),
                }
            }
            for (k, v) in &keys {
                xs.write(t, &format!("{fe}/{k}"), v.as_bytes())?;
            }
            Ok(())
        })
        .map_err(|x| e(&x))?;
        Ok(())
    }

    fn connect<S: Read + Write>(&mut self, xs: &mut Client<S>, dev: &Device) -> DriverResult {
        let Some(dir) = self.export_dir.clone() else {
            return Ok(());
        };
        let rings: Vec<(Pfn, u64, Port)> = self
            .rings
            .get(&dev.devid)
            .ok_or("no ring")?
            .iter()
            .map(|r| (r.pfn, r.grefs.len() as u64, r.port))
            .collect();
        let be = dev.backend_dir();
        let key = |xs: &mut Client<S>, k: &str| {
            xs.read(Tx::NONE, &format!("{be}/{k}"))
                .ok()
                .and_then(|v| String::from_utf8(v).ok())
        };
        let sectors: u64 = key(xs, "sectors")
            .and_then(|s| s.parse().ok())
            .ok_or("the backend gave no size")?;
        let info: u32 = key(xs, "info").and_then(|s| s.parse().ok()).unwrap_or(0);
        let vdev = key(xs, "dev").unwrap_or_else(|| dev.devid.to_string());
        // The name becomes a file name: only a plain one.
        if vdev.is_empty() || !vdev.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("vdev {vdev:?} is not a plain name"));
        }
        let read_only = info & abi::blkif::VDISK_READONLY != 0;
        let discard = !read_only && key(xs, "feature-discard").is_some_and(|v| v == "1");
        let indirect: Option<u16> =
            key(xs, "feature-max-indirect-segments").and_then(|v| v.parse().ok());
        // A blkfront a queue.
        let mut fronts = Vec::new();
        for &(pfn, pages, port) in &rings {
            let made = blk::front::BlkFront::new(
                self.dom.clone(),
                pfn,
                pages,
                port,
                DomId(dev.backend),
                sectors,
            );
            let mut front = match made {
                Ok(f) => f,
                Err(e) => {
                    for f in fronts {
                        self.keep_if_mapped(f);
                    }
                    return Err(e.to_string());
                }
            };
            front.set_discard(discard);
            // Indirect requests when offered, as Linux's blkfront; without
            // them if we cannot spare the pages.
            if let Some(max) = indirect {
                if let Err(e) = front.set_indirect(DomId(dev.backend), max) {
                    eprintln!("vbd {}: no indirect requests: {e}", dev.devid);
                }
            }
            fronts.push(front);
        }
        // Connected again (the backend restarted, or closed and came
        // back): the export goes on, with what was in flight made again.
        let fronts = match self.exports.get(&dev.devid) {
            Some(e) => match e.disk.attach(fronts, read_only) {
                Ok(()) => return Ok(()),
                // A disk of another size or mode: a new export.
                Err(fronts) => {
                    self.remove(dev);
                    fronts
                }
            },
            None => fronts,
        };
        let disk = Arc::new(blk::reattach::Reattachable::new(
            fronts,
            read_only,
            blk::reattach::WAIT,
        ));
        let socket = dir.join(format!("{vdev}.sock"));
        let shared: blk::nbd::Shared = disk.clone();
        match blk::nbd::export(&socket, &vdev, shared) {
            Ok(gone) => {
                self.exports
                    .insert(dev.devid, Export { socket, disk, gone });
                Ok(())
            }
            Err(e) => {
                for f in disk.remove() {
                    self.keep_if_mapped(f);
                }
                Err(format!("{}: {e}", socket.display()))
            }
        }
    }

    fn disconnect(&mut self, dev: &Device) {
        // The export stays, its requests waiting for the next connection;
        // the frontend goes (a transfer in flight on it stops).
        let detached = self
            .exports
            .get(&dev.devid)
            .map(|e| e.disk.detach())
            .unwrap_or_default();
        for f in detached {
            self.keep_if_mapped(f);
        }
        if let Some(rings) = self.rings.remove(&dev.devid) {
            self.drop_rings(rings);
        }
        self.end_lingering();
    }

    fn remove(&mut self, dev: &Device) {
        if let Some(e) = self.exports.remove(&dev.devid) {
            e.gone.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = std::fs::remove_file(&e.socket);
            for f in e.disk.remove() {
                self.keep_if_mapped(f);
            }
        }
        self.end_lingering();
    }
}

/// What `control/shutdown` asks for, taken (the node emptied, as Linux
/// does in a transaction, so that the request is answered once). An
/// empty node, or a request we do not serve (`suspend`, `crash`,
/// `sysrq`), is left alone.
fn shutdown_requested<S: Read + Write>(
    xs: &mut Client<S>,
    node: &str,
) -> Option<platform::ShutdownReason> {
    xenbus::paths::in_transaction(xs, |xs, t| {
        let reason = match xs.read(t, node).as_deref() {
            Ok(b"poweroff" | b"halt") => Some(platform::ShutdownReason::Poweroff),
            Ok(b"reboot") => Some(platform::ShutdownReason::Reboot),
            _ => None,
        };
        if reason.is_some() {
            xs.write(t, node, b"")?;
        }
        Ok(reason)
    })
    .ok()
    .flatten()
}

/// An orderly shutdown: every disk's acknowledged writes go to stable
/// storage (Linux syncs before it powers off), every device closes, and
/// the domain shuts down with `reason` (`SCHEDOP_shutdown`); the process
/// then exits. What follows is the toolstack's (`on_poweroff`,
/// `on_reboot`).
fn shut_down<S: Read + Write>(
    dom: &SimDomain,
    xs: &mut Client<S>,
    vbd: &mut FrontendRunner<VbdFront>,
    reason: platform::ShutdownReason,
) -> Result<(), platform::Error> {
    for e in vbd.driver().exports.values() {
        if let Err(x) = e.disk.flush() {
            eprintln!(
                "guest {}: flushing {}: {x}",
                dom.domid().0,
                e.socket.display()
            );
        }
    }
    vbd.shutdown(xs);
    platform::Schedule::shutdown(dom, reason)
}

/// Runs the guest; returns when its xenstore connection ends.
pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let mut hv: Option<PathBuf> = None;
    let mut export_dir: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--hv" => hv = Some(crate::value(&mut it, a)?.into()),
            "--export-dir" => export_dir = Some(crate::value(&mut it, a)?.into()),
            _ => return Err(format!("guest: unknown option {a}")),
        }
    }
    let token = std::env::var("DOM0KIT_TOKEN").map_err(|_| "guest: $DOM0KIT_TOKEN is not set")?;
    // Not inherited by anything we start.
    std::env::remove_var("DOM0KIT_TOKEN");
    // Confined, we are handed our connection (we may not reach the socket).
    let dom = match sim::confine::inherited_hv() {
        Some(sock) => SimDomain::attach_guest_on(sock, &token),
        None => SimDomain::attach_guest(&hv.ok_or("guest: --hv HV_SOCKET is needed")?, &token),
    }
    .map_err(|e| format!("guest: attach: {e}"))?;
    let domid = dom.domid().0;
    let err = |e: &dyn std::fmt::Display| format!("guest {domid}: {e}");
    // A domain outlives neither its hypervisor nor its domain (destroy
    // kills the process; a hypervisor that goes away cannot): look now
    // and then.
    let watchdog = dom.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        // A guest may not ask this (permission denied): only a closed or
        // broken connection means the hypervisor is gone.
        if let Err(e @ (platform::Error::Protocol(_) | platform::Error::Io(_))) =
            watchdog.physinfo()
        {
            eprintln!("guest {domid}: the hypervisor is gone ({e})");
            std::process::exit(3);
        }
    });
    let pfn = dom.alloc_pages(1).map_err(|e| err(&e))?;
    let port = dom.alloc_unbound(DomId(0)).map_err(|e| err(&e))?;
    let stream = RingStream::new(dom.clone(), pfn, port).map_err(|e| err(&e))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "xenstore {} {}", pfn.0, port.0).map_err(|e| err(&e))?;
        out.flush().map_err(|e| err(&e))?;
    }
    let mut xs = Client::over(stream);
    let mut vbd = FrontendRunner::new(
        "vbd",
        domid,
        VbdFront {
            dom: dom.clone(),
            rings: BTreeMap::new(),
            lingering: Vec::new(),
            export_dir,
            exports: BTreeMap::new(),
            lingering_fronts: Vec::new(),
        },
    );
    // The first request waits until dom0 has introduced us.
    xs.watch(&vbd.watch_path(), "vbd").map_err(|e| err(&e))?;
    // As Linux's `xen/manage.c`: the requests we answer, and the node the
    // toolstack writes them to.
    let control = format!("/local/domain/{domid}/control");
    for f in ["feature-poweroff", "feature-reboot"] {
        xs.write(Tx::NONE, &format!("{control}/{f}"), b"1")
            .map_err(|e| err(&e))?;
    }
    let shutdown_node = format!("{control}/shutdown");
    xs.watch(&shutdown_node, "shutdown").map_err(|e| err(&e))?;
    let mut watched: HashSet<String> = HashSet::new();
    loop {
        let ev = xs.read_watch().map_err(|e| err(&e))?;
        if ev.token == "shutdown" {
            if let Some(reason) = shutdown_requested(&mut xs, &shutdown_node) {
                return shut_down(&dom, &mut xs, &mut vbd, reason).map_err(|e| err(&e));
            }
            continue;
        }
        vbd.on_event(&mut xs, &ev.path).map_err(|e| err(&e))?;
        // Pages a backend still mapped: whenever something happens, again.
        vbd.driver().end_lingering();
        // The backends' directories for us too, once per backend domain
        // (not per device: a guest has few watches to spend), and while
        // pages linger the ones we had (their backend's changes tell us
        // when it lets go).
        let mut wanted: HashSet<String> = vbd
            .devices()
            .map(|(d, _)| format!("/local/domain/{}/backend/{}/{domid}", d.backend, d.kind))
            .collect();
        if vbd.driver().lingers() {
            wanted.extend(watched.iter().cloned());
        }
        follow_watches(&mut xs, &mut watched, wanted, "backend").map_err(|e| err(&e))?;
    }
}
