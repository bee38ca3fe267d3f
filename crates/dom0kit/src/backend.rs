//! `dom0kit backend`: dom0's device backends. It attaches to the simulated
//! hypervisor as dom0, watches `/local/domain/0/backend/vbd`, and serves
//! every device that appears there through the xenbus handshake.
//!
//! The vbd backend so far: it opens the disk's storage (a raw file or
//! block device; an NBD target; another image format through a `qemu-nbd`
//! of its own), advertises the disk's size and the features it will
//! honour, maps the frontend's ring and binds its event channel
//! (`Connected`), serves each of its rings (one a queue) on a thread of
//! its own (READ, WRITE,
//! WRITE_BARRIER, FLUSH_DISKCACHE, DISCARD through `blk::serve`, data by
//! persistent grants or grant copy), and lets go when the frontend or the
//! toolstack closes the device. Discard is offered on writable disks (no
//! secure discard), and persistent grants are used when the frontend
//! offers them too. Rings of either request ABI (`protocol` x86_64-abi or
//! x86_32-abi) and of up to 16 pages are served, and indirect requests of
//! up to 256 segments, on up to 4 queues; the reads and writes that arrive
//! together go to the storage as one batch (io_uring for O_DIRECT disks).
//! Opening a disk happens on the watch loop: an NBD server that does not answer holds
//! every device's handshake for up to 40 s (a 10 s TCP connect, a 30 s
//! handshake); a qemu-nbd helper for up to 10 s.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use platform::{DomId, EventChannels, GrantMapper, GrantRef, GrantSpec, Port};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use blk::remote::{Address, NbdStorage, Target};
use blk::request::Disk;
use blk::serve::{serve_ring, Abi32, Abi64, Counters, GrantMover, RingAbi};
use blk::storage::{FileStorage, Storage};
use ring::BackRing;
use sim::client::SimMapping;
use sim::SimDomain;
use xenbus::driver::{follow_watches, BackendDriver, BackendRunner, DriverResult};
use xenbus::features;
use xenbus::paths::Device;
use xenstore::client::{Client, Tx};

/// A connected vbd: each of its queues' rings served by a thread of its
/// own until `stop`.
struct Connection {
    stop: Arc<AtomicBool>,
    /// A thread and a port a queue.
    queues: Vec<(std::thread::JoinHandle<()>, Port)>,
}

/// Queues a frontend may use (`multi-queue-max-queues`; Linux's blkback
/// offers one per CPU).
const MAX_QUEUES: u32 = 4;

/// What a ring's serving thread is given.
struct Job {
    dom: SimDomain,
    ring: SimMapping,
    port: Port,
    frontend: DomId,
    /// Shared by the device's queues.
    storage: Arc<dyn Storage>,
    disk: Disk,
    /// Both ends offered `feature-persistent`.
    persistent: bool,
    /// The mappings all devices' persistent grants share.
    budget: blk::serve::PersistentBudget,
    stop: Arc<AtomicBool>,
}

/// Serves one queue's ring: requests as they come (the frontend's
/// notifications wake it), responses pushed and notified as `ring.h` asks.
/// A broken ring stops it; the device then waits for the toolstack.
fn serve<A: RingAbi>(job: Job) {
    use platform::GrantMapping;
    let Job {
        dom,
        ring,
        port,
        frontend,
        storage,
        disk,
        persistent,
        budget,
        stop,
    } = job;
    let Ok(mut back) = BackRing::<_, A::Slot, A::Response>::init(ring.memory()) else {
        return;
    };
    // Persistent grants if the frontend keeps its grants (mapped once,
    // then plain copies); else grant copy into bounce pages of ours (no
    // mapping per request); by mapping if we have no pages to spare.
    let mut keeper;
    let mut copier;
    let mut mapper;
    let kept = persistent
        .then(|| blk::serve::PersistentMover::new(dom.clone(), frontend, budget).ok())
        .flatten();
    let mover: &mut dyn blk::serve::Mover = if let Some(p) = kept {
        keeper = p;
        &mut keeper
    } else if let Ok(c) = blk::serve::CopyMover::new(dom.clone(), frontend) {
        copier = c;
        &mut copier
    } else {
        mapper = GrantMover::new(dom.clone(), frontend);
        &mut mapper
    };
    let mut counters = Counters::default();
    while !stop.load(Ordering::Relaxed) {
        // A budget of a ring's worth: a stop is seen after at most 32
        // requests.
        match serve_ring::<_, A>(&mut back, &disk, &*storage, mover, &mut counters, 32) {
            Ok((n, notify)) => {
                if notify {
                    let _ = dom.notify(port);
                }
                if n == 0 && dom.wait(port, 50).is_err() {
                    break;
                }
            }
            Err(e) => {
                eprintln!(
                    "backend: vbd of domain {}: {e}; not served any more",
                    frontend.0
                );
                break;
            }
        }
    }
}

/// A disk image in a format other than raw, served to us by a `qemu-nbd`
/// of its own (as xl's qdisk backend has QEMU open it): the NBD engine in
/// front, the helper's life tied to the storage's.
struct QemuNbd {
    nbd: Option<NbdStorage>,
    child: Child,
    socket: PathBuf,
}

/// How long a `qemu-nbd` may take to come up (a predecessor of it may
/// still hold the image's lock for a moment after a backend restart).
const HELPER_START: Duration = Duration::from_secs(10);

impl QemuNbd {
    fn spawn(
        socket: PathBuf,
        image: &str,
        format: &str,
        writable: bool,
        direct: bool,
    ) -> Result<QemuNbd, String> {
        let deadline = Instant::now() + HELPER_START;
        let target = Target {
            address: Address::Unix(socket.clone()),
            export: String::new(),
        };
        loop {
            let _ = std::fs::remove_file(&socket);
            let mut c = Command::new("qemu-nbd");
            c.arg(format!("--format={format}"))
                .arg(format!("--socket={}", socket.display()))
                .args(["--export-name=", "--discard=unmap"])
                .arg(if direct {
                    "--cache=none"
                } else {
                    "--cache=writeback"
                })
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            if !writable {
                c.arg("--read-only");
            }
            // Persistent, so that a connection that breaks can be made
            // again; it ends with us (SIGTERM: it flushes and exits).
            c.arg("--persistent");
            die_with_us(&mut c);
            let mut child = c
                .arg(image)
                .spawn()
                .map_err(|e| format!("{image}: cannot start qemu-nbd (qemu-utils): {e}"))?;
            loop {
                if let Ok(Some(st)) = child.try_wait() {
                    if Instant::now() >= deadline {
                        return Err(format!("{image}: qemu-nbd --format={format} exited: {st}"));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
                if socket.exists() {
                    if let Ok(nbd) = NbdStorage::open(target.clone(), writable) {
                        return Ok(QemuNbd {
                            nbd: Some(nbd),
                            child,
                            socket,
                        });
                    }
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{image}: qemu-nbd did not come up"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn nbd(&self) -> io::Result<&NbdStorage> {
        self.nbd
            .as_ref()
            .ok_or_else(|| io::Error::other("qemu-nbd is gone"))
    }
}

impl Storage for QemuNbd {
    fn size(&self) -> u64 {
        self.nbd().map_or(0, Storage::size)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.nbd()?.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.nbd()?.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.nbd()?.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.nbd()?.discard(offset, len)
    }
}

/// Has `c`'s process sent SIGTERM when ours exits.
#[allow(unsafe_code)]
fn die_with_us(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec; it
    // makes one async-signal-safe system call and touches no memory of
    // the parent's.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        // Disconnected, then asked to stop (SIGTERM: it flushes the image
        // and exits); a helper that hangs is killed.
        drop(self.nbd.take());
        if let Ok(pid) = i32::try_from(self.child.id()) {
            #[allow(unsafe_code)]
            // SAFETY: a signal to our own child, which we have not reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Opens a disk as its backend directory describes it: `params` is a file,
/// a block device or an NBD target (`blk::remote::Target`); `format` is
/// raw (read by us), or another image format (through a `qemu-nbd`, its
/// socket `helper` in the run directory).
fn open_storage(
    params: &str,
    format: &str,
    writable: bool,
    direct: bool,
    helper: PathBuf,
) -> Result<Box<dyn Storage>, String> {
    let format = if format.is_empty() { "raw" } else { format };
    if let Some(t) = Target::parse(params) {
        let t = t.map_err(|e| format!("{params}: {e}"))?;
        if format != "raw" {
            return Err(format!(
                "{params}: format {format} over NBD: serve the image with qemu-nbd --format={format} instead"
            ));
        }
        let s = NbdStorage::open(t, writable).map_err(|e| format!("{params}: {e}"))?;
        return Ok(Box::new(s));
    }
    let qemu_format = match format {
        "raw" => {
            let s = FileStorage::open_with(Path::new(params), writable, direct)
                .map_err(|e| format!("{params}: {e}"))?;
            return Ok(Box::new(s));
        }
        "vhd" => "vpc",
        f @ ("qcow" | "qcow2" | "qed") => f,
        f => return Err(format!("{params}: unknown format {f:?}")),
    };
    Ok(Box::new(QemuNbd::spawn(
        helper,
        params,
        qemu_format,
        writable,
        direct,
    )?))
}

/// Segments an indirect request may carry (`feature-max-indirect-segments`,
/// Linux's blkback's `MAX_INDIRECT_SEGMENTS`).
const MAX_INDIRECT: u16 = 256;

/// The largest `ring-page-order` we take (`XENBUS_MAX_RING_GRANT_ORDER`).
const MAX_RING_ORDER: u32 = 4;

struct VbdBack {
    dom: SimDomain,
    /// Where helpers put their sockets.
    run: PathBuf,
    /// Disks opened by `probe`, for `connect` to take (one connection to
    /// a server, one qemu-nbd helper, not two).
    probed: BTreeMap<(u16, u32), Box<dyn Storage>>,
    /// Persistent grants mapped at once, over all devices (each is one of
    /// our memory maps: well under `vm.max_map_count`, 65530).
    budget: blk::serve::PersistentBudget,
    connected: BTreeMap<(u16, u32), Connection>,
}

fn read_text<S: Read + Write>(xs: &mut Client<S>, path: &str) -> Result<String, String> {
    let v = xs
        .read(Tx::NONE, path)
        .map_err(|e| format!("{path}: {e}"))?;
    String::from_utf8(v).map_err(|_| format!("{path}: not text"))
}

/// Whether the disk is offered for discard: writable, and not turned off
/// by the toolstack (`discard-enable`, from xl's `no-discard`).
fn discards<S: Read + Write>(xs: &mut Client<S>, dev: &Device, writable: bool) -> bool {
    let enable = read_text(xs, &format!("{}/discard-enable", dev.backend_dir()));
    writable && enable.map_or(true, |v| v != "0")
}

impl VbdBack {
    fn storage<S: Read + Write>(
        &self,
        xs: &mut Client<S>,
        dev: &Device,
        target: &str,
        writable: bool,
    ) -> Result<Box<dyn Storage>, String> {
        let format = read_text(xs, &format!("{}/format", dev.backend_dir())).unwrap_or_default();
        let helper = self
            .run
            .join(format!("qemu-nbd-{}-{}.sock", dev.frontend, dev.devid));
        // xl's `direct-io-safe`: O_DIRECT (raw files; qemu-nbd's
        // --cache=none for other formats).
        let direct =
            read_text(xs, &format!("{}/direct-io-safe", dev.backend_dir())).is_ok_and(|v| v == "1");
        open_storage(target, &format, writable, direct, helper)
    }
}

impl BackendDriver for VbdBack {
    fn probe<S: Read + Write>(&mut self, xs: &mut Client<S>, dev: &Device) -> DriverResult {
        let be = dev.backend_dir();
        let target = read_text(xs, &format!("{be}/params"))?;
        let writable = read_text(xs, &format!("{be}/mode"))? == "w";
        let cdrom = read_text(xs, &format!("{be}/device-type")).is_ok_and(|t| t == "cdrom");
        let bytes = if target.is_empty() && cdrom {
            // An empty drive.
            0
        } else {
            // The disk must be there and as writable as the guest was told
            // (its size from its end: a block device's metadata says 0).
            let storage = self.storage(xs, dev, &target, writable)?;
            let size = storage.size();
            self.probed.insert((dev.frontend, dev.devid), storage);
            size
        };
        // In a transaction that reads the state first: a device the
        // toolstack removed meanwhile is not made again by these writes.
        let mut keys = vec![
            ("sectors", (bytes / 512).to_string()),
            ("sector-size", "512".to_string()),
            ("physical-sector-size", "512".to_string()),
            // VDISK_CDROM 1, VDISK_REMOVABLE 2, VDISK_READONLY 4.
            (
                "info",
                (u8::from(cdrom) * 3 + if writable { 0 } else { 4 }).to_string(),
            ),
            ("feature-flush-cache", "1".to_string()),
            // WRITE_BARRIER: the write, then a flush, before the answer.
            ("feature-barrier", "1".to_string()),
            ("feature-persistent", "1".to_string()),
            ("feature-max-indirect-segments", MAX_INDIRECT.to_string()),
            ("multi-queue-max-queues", MAX_QUEUES.to_string()),
            // As Linux's blkback: rings of up to 16 pages.
            ("max-ring-page-order", MAX_RING_ORDER.to_string()),
            ("hotplug-status", "connected".to_string()),
        ];
        // Every engine discards (a file by punching a hole); no secure
        // erase. The frontend is told the granularity of a file system
        // block.
        if discards(xs, dev, writable) {
            keys.extend([
                ("feature-discard", "1".to_string()),
                ("discard-granularity", "4096".to_string()),
                ("discard-alignment", "0".to_string()),
                ("discard-secure", "0".to_string()),
            ]);
        }
        xenbus::paths::in_transaction(xs, |xs, t| {
            xs.read(t, &format!("{be}/state"))?;
            for (k, v) in &keys {
                xs.write(t, &format!("{be}/{k}"), v.as_bytes())?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn connect<S: Read + Write>(&mut self, xs: &mut Client<S>, dev: &Device) -> DriverResult {
        let rings = features::queue_rings(xs, &dev.frontend_dir(), MAX_RING_ORDER, MAX_QUEUES)
            .map_err(|e| e.to_string())?;
        // Linux's default when the key is missing is the frontend's native
        // ABI; ours is x86_64.
        let protocol = read_text(xs, &format!("{}/protocol", dev.frontend_dir()))
            .unwrap_or_else(|_| "x86_64-abi".into());
        let x86_32 = match protocol.as_str() {
            abi::blkif::XEN_IO_PROTO_ABI_X86_64 => false,
            abi::blkif::XEN_IO_PROTO_ABI_X86_32 => true,
            other => return Err(format!("protocol {other:?}: not x86_64-abi or x86_32-abi")),
        };
        let be = dev.backend_dir();
        let target = read_text(xs, &format!("{be}/params"))?;
        let writable = read_text(xs, &format!("{be}/mode"))? == "w";
        let storage = match self.probed.remove(&(dev.frontend, dev.devid)) {
            Some(s) => s,
            None => self.storage(xs, dev, &target, writable)?,
        };
        let disk = Disk {
            sectors: storage.size() / 512,
            read_only: !writable,
            discard: discards(xs, dev, writable),
            secure_discard: false,
            max_indirect_segments: MAX_INDIRECT,
        };
        // Both ends must offer it: the frontend promises to reuse its grants.
        let persistent = read_text(xs, &format!("{}/feature-persistent", dev.frontend_dir()))
            .is_ok_and(|v| v == "1");
        let fe = DomId(dev.frontend);
        let storage: Arc<dyn Storage> = Arc::from(storage);
        let stop = Arc::new(AtomicBool::new(false));
        let mut queues = Vec::new();
        // Each queue: its ring mapped, its port bound, a thread serving it.
        // A queue that fails undoes the ones before it.
        let undo = |this: &mut Self, queues: Vec<(std::thread::JoinHandle<()>, Port)>| {
            stop.store(true, Ordering::Relaxed);
            for (t, port) in queues {
                let _ = t.join();
                let _ = this.dom.close(port);
            }
        };
        for q in &rings {
            let specs: Vec<GrantSpec> = q
                .ring_refs
                .iter()
                .map(|&r| GrantSpec {
                    domid: fe,
                    gref: GrantRef(r),
                    writable: true,
                })
                .collect();
            let ring = match self.dom.map_grants(&specs) {
                Ok(r) => r,
                Err(e) => {
                    undo(self, queues);
                    return Err(e.to_string());
                }
            };
            let port = match self.dom.bind_interdomain(fe, Port(q.event_channel)) {
                Ok(p) => p,
                Err(e) => {
                    undo(self, queues);
                    return Err(e.to_string());
                }
            };
            let job = Job {
                dom: self.dom.clone(),
                ring,
                port,
                frontend: fe,
                storage: storage.clone(),
                disk,
                persistent,
                budget: self.budget.clone(),
                stop: stop.clone(),
            };
            let thread = std::thread::spawn(move || {
                if x86_32 {
                    serve::<Abi32>(job);
                } else {
                    serve::<Abi64>(job);
                }
            });
            queues.push((thread, port));
        }
        self.connected
            .insert((dev.frontend, dev.devid), Connection { stop, queues });
        Ok(())
    }

    fn remove(&mut self, dev: &Device) {
        self.probed.remove(&(dev.frontend, dev.devid));
    }

    fn disconnect(&mut self, dev: &Device) {
        if let Some(c) = self.connected.remove(&(dev.frontend, dev.devid)) {
            // The threads end within their waits, unmapping the rings as
            // they go; then the ports are closed.
            c.stop.store(true, Ordering::Relaxed);
            for (t, port) in c.queues {
                let _ = t.join();
                let _ = self.dom.close(port);
            }
        }
    }
}

/// Runs the backends until xenstore goes away.
pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let mut hv: Option<PathBuf> = None;
    let mut socket = xenstore::client::default_socket();
    let mut ready: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--hv" => hv = Some(crate::value(&mut it, a)?.into()),
            "--socket" => socket = crate::value(&mut it, a)?.into(),
            "--ready" => ready = Some(crate::value(&mut it, a)?.into()),
            _ => return Err(format!("backend: unknown option {a}")),
        }
    }
    let hv = hv.ok_or("backend: --hv HV_SOCKET is needed")?;
    let dom = SimDomain::attach_dom0(&hv).map_err(|e| format!("backend: attach: {e}"))?;
    let mut xs = Client::connect(&socket).map_err(|e| format!("backend: {e}"))?;
    let mut vbd = BackendRunner::new(
        "vbd",
        0,
        VbdBack {
            dom,
            run: hv.parent().map(Path::to_path_buf).unwrap_or_default(),
            probed: BTreeMap::new(),
            budget: blk::serve::PersistentBudget::new(16384),
            connected: BTreeMap::new(),
        },
    );
    let err = |e: &dyn std::fmt::Display| format!("backend: {e}");
    xs.watch(&vbd.watch_path(), "vbd").map_err(|e| err(&e))?;
    if let Some(r) = ready {
        std::fs::write(&r, b"").map_err(|e| format!("backend: {}: {e}", r.display()))?;
    }
    let mut watched: HashSet<String> = HashSet::new();
    loop {
        let ev = xs.read_watch().map_err(|e| err(&e))?;
        vbd.on_event(&mut xs, &ev.path).map_err(|e| err(&e))?;
        // Each frontend's device directory, once per guest.
        let wanted: HashSet<String> = vbd
            .devices()
            .map(|(d, _)| format!("/local/domain/{}/device/{}", d.frontend, d.kind))
            .collect();
        follow_watches(&mut xs, &mut watched, wanted, "frontend").map_err(|e| err(&e))?;
    }
}
