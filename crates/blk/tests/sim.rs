//! The request loop on the simulated hypervisor: a guest grants its ring
//! and its data pages, dom0 maps the ring and moves the data through real
//! grant mappings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use abi::blkif::{self, BlkifRequest, BlkifRequestSegment, BlkifResponse};
use abi::pod::Pod;
use blk::request::Disk;
use blk::serve::{serve_ring, Counters, GrantMover, Slot64};
use blk::storage::MemStorage;
use platform::{
    DomId, DomainConfig, DomainControl, GrantMapper, GrantMapping, GrantSpec, GrantTable, OwnMemory,
};
use ring::{BackRing, FrontRing};
use sim::{HvConfig, SimDomain};
use std::sync::atomic::{AtomicU32, Ordering};

fn request(op: u8, id: u64, sector: u64, segs: &[(u32, u8, u8)]) -> BlkifRequest {
    let mut r = BlkifRequest::zeroed();
    r.operation = op;
    r.id = id;
    r.sector_number = sector;
    r.nr_segments = segs.len() as u8;
    for (i, &(gref, first, last)) in segs.iter().enumerate() {
        r.seg[i] = BlkifRequestSegment {
            gref,
            first_sect: first,
            last_sect: last,
            _pad0: [0; 2],
        };
    }
    r
}

/// A hypervisor, dom0, and a guest of `pages` attached in this process.
fn host(tag: &str, pages: u64) -> (sim::HvHandle, SimDomain, platform::NewDomain, SimDomain) {
    let dir = std::env::temp_dir().join(format!("dom0kit-blk-{tag}-{}", std::process::id()));
    let hv = sim::Hypervisor::spawn(HvConfig::small(&dir)).unwrap();
    let dom0 = SimDomain::attach_dom0(hv.socket()).unwrap();
    let new = dom0
        .create_domain(&DomainConfig {
            pages,
            grant_frames: 4,
        })
        .unwrap();
    let guest = SimDomain::attach_guest(hv.socket(), &new.token).unwrap();
    (hv, dom0, new, guest)
}

#[test]
fn a_guests_writes_and_reads_go_through_its_grants() {
    through_grants(|dom0, domid| Box::new(GrantMover::new(dom0, domid)));
}

#[test]
fn the_same_by_grant_copy() {
    through_grants(|dom0, domid| Box::new(blk::serve::CopyMover::new(dom0, domid).unwrap()));
}

#[test]
fn the_same_by_persistent_grants() {
    use blk::serve::{PersistentBudget, PersistentMover};
    let budget = PersistentBudget::new(64);
    through_grants(|dom0, domid| {
        Box::new(PersistentMover::new(dom0, domid, budget.clone()).unwrap())
    });
    // What the mover mapped is given back when it goes.
    assert_eq!(budget.left(), 64);
    // With nothing left to map, all by grant copy, the same.
    through_grants(|dom0, domid| {
        Box::new(PersistentMover::new(dom0, domid, PersistentBudget::new(0)).unwrap())
    });
}

/// A 1 MiB writable disk.
const DISK: Disk = Disk {
    sectors: 2048,
    read_only: false,
    discard: false,
    secure_discard: false,
    max_indirect_segments: 256,
};

/// A guest's ring page granted to dom0 and mapped by it, and data pages
/// granted after it (read-only where `ro` says).
struct Pages<M> {
    ring_pfn: platform::Pfn,
    ring_map: M,
    data: platform::Pfn,
    grefs: Vec<u32>,
}

fn pages(
    dom0: &SimDomain,
    new: &platform::NewDomain,
    guest: &SimDomain,
    ro: &[bool],
) -> Pages<<SimDomain as GrantMapper>::Mapping> {
    let ring_pfn = guest.alloc_pages(1).unwrap();
    let data = guest.alloc_pages(ro.len() as u64).unwrap();
    let ring_ref = guest.grant_access(DomId(0), ring_pfn, false).unwrap();
    let grefs = ro
        .iter()
        .enumerate()
        .map(|(i, &ro)| {
            guest
                .grant_access(DomId(0), platform::Pfn(data.0 + i as u64), ro)
                .unwrap()
                .0
        })
        .collect();
    let ring_map = dom0
        .map_grants(&[GrantSpec {
            domid: new.domid,
            gref: ring_ref,
            writable: true,
        }])
        .unwrap();
    Pages {
        ring_pfn,
        ring_map,
        data,
        grefs,
    }
}

fn through_grants(mover: impl Fn(SimDomain, DomId) -> Box<dyn blk::serve::Mover>) {
    let (hv, dom0, new, guest) = host("sim", 64);
    let p = pages(&dom0, &new, &guest, &[true, false, true]);
    let (w, r, ro) = (p.grefs[0], p.grefs[1], p.grefs[2]);
    let data = p.data;
    guest.pages(data, 1).unwrap().fill(0, 4096, 0x5a).unwrap();
    let mut front: FrontRing<_, Slot64, BlkifResponse> =
        FrontRing::init(guest.pages(p.ring_pfn, 1).unwrap()).unwrap();
    let mut back: BackRing<_, Slot64, BlkifResponse> = BackRing::init(p.ring_map.memory()).unwrap();
    let storage = MemStorage::new(1 << 20);
    let disk = DISK;
    let mut mover = mover(dom0.clone(), new.domid);
    let mut c = Counters::default();
    for req in [
        request(blkif::BLKIF_OP_WRITE, 1, 100, &[(w, 0, 7)]),
        request(blkif::BLKIF_OP_READ, 2, 100, &[(r, 0, 7)]),
        // A read into a page granted read-only: the backend cannot write it.
        request(blkif::BLKIF_OP_READ, 3, 100, &[(ro, 0, 7)]),
        // A grant never given.
        request(blkif::BLKIF_OP_READ, 4, 100, &[(400, 0, 7)]),
    ] {
        front.put_request(&req).unwrap();
    }
    front.push_requests().unwrap();
    let (n, _) =
        serve_ring::<_, blk::serve::Abi64>(&mut back, &disk, &storage, &mut *mover, &mut c, 64)
            .unwrap();
    assert_eq!(n, 4);
    let mut statuses = Vec::new();
    while let Some(rsp) = front.take_response().unwrap() {
        statuses.push((rsp.id, rsp.status));
    }
    assert_eq!(statuses, [(1, 0), (2, 0), (3, -1), (4, -1)]);
    let mut back_in = vec![0u8; 4096];
    guest
        .pages(platform::Pfn(data.0 + 1), 1)
        .unwrap()
        .read_bytes(0, &mut back_in)
        .unwrap();
    assert!(back_in.iter().all(|&b| b == 0x5a));
    assert_eq!(c.grant_errors, 2);
    // Nothing stays mapped: the guest can end every data grant.
    drop(mover);
    for gref in [w, r, ro] {
        guest.end_access(platform::GrantRef(gref)).unwrap();
    }
    drop(hv);
}

/// One connection of a guest's blkfront to a backend loop in dom0 over
/// `storage` (a disk of 2048 sectors): a ring, a port, and, if `serve`,
/// a thread serving it until `stop`.
struct Connection {
    front: blk::front::BlkFront<SimDomain>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    server: Option<std::thread::JoinHandle<Counters>>,
}

fn connect(
    dom0: &SimDomain,
    guest: &SimDomain,
    gid: DomId,
    storage: &std::sync::Arc<MemStorage>,
    serve: bool,
    ring_pages: u64,
) -> Connection {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let ring_pfn = guest.alloc_pages(ring_pages).unwrap();
    let ring_refs: Vec<_> = (0..ring_pages)
        .map(|i| {
            guest
                .grant_access(DomId(0), platform::Pfn(ring_pfn.0 + i), false)
                .unwrap()
        })
        .collect();
    let gport = platform::EventChannels::alloc_unbound(guest, DomId(0)).unwrap();
    let front =
        blk::front::BlkFront::new(guest.clone(), ring_pfn, ring_pages, gport, DomId(0), 2048)
            .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    if !serve {
        return Connection {
            front,
            stop,
            server: None,
        };
    }
    // dom0: map the ring, bind the port, serve on a thread.
    let specs: Vec<GrantSpec> = ring_refs
        .iter()
        .map(|&gref| GrantSpec {
            domid: gid,
            gref,
            writable: true,
        })
        .collect();
    let ring_map = dom0.map_grants(&specs).unwrap();
    let bport = platform::EventChannels::bind_interdomain(dom0, gid, gport).unwrap();
    let (d0, st, sp) = (dom0.clone(), storage.clone(), stop.clone());
    let server = std::thread::spawn(move || {
        let mut back: BackRing<_, Slot64, BlkifResponse> =
            BackRing::init(ring_map.memory()).unwrap();
        let disk = Disk {
            sectors: 2048,
            read_only: false,
            discard: true,
            secure_discard: false,
            max_indirect_segments: 256,
        };
        let mut mover = GrantMover::new(d0.clone(), gid);
        let mut c = Counters::default();
        while !sp.load(Ordering::Relaxed) {
            let (n, notify) =
                serve_ring::<_, blk::serve::Abi64>(&mut back, &disk, &*st, &mut mover, &mut c, 64)
                    .unwrap();
            if notify {
                platform::EventChannels::notify(&d0, bport).unwrap();
            }
            if n == 0 {
                let _ = platform::EventChannels::wait(&d0, bport, 20);
            }
        }
        c
    });
    Connection {
        front,
        stop,
        server: Some(server),
    }
}

impl Connection {
    fn stop(self) -> Counters {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.server.map(|s| s.join().unwrap()).unwrap_or_default()
    }
}

#[test]
fn blkfront_and_the_backend_loop_move_data_both_ways() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    let (hv, dom0, new, guest) = host("front", 512);
    let storage = Arc::new(MemStorage::new(1 << 20));
    let Connection {
        mut front,
        stop,
        server,
    } = connect(&dom0, &guest, new.domid, &storage, true, 4);
    // 100 KiB (more than one request's 44 KiB) at an odd sector.
    let data: Vec<u8> = (0..100 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    front.write(512 * 3, &data).unwrap();
    front.flush().unwrap();
    let mut back_in = vec![0u8; data.len()];
    front.read(512 * 3, &mut back_in).unwrap();
    assert_eq!(back_in, data);
    assert_eq!(
        &storage.contents()[512 * 3..512 * 3 + data.len()],
        &data[..]
    );
    assert_eq!(storage.flushes.load(Ordering::Relaxed), 1);
    // From here on, transfers of more than 11 pages go as indirect
    // requests (the backend loop offers 256 segments).
    front.set_indirect(DomId(0), 256).unwrap();
    let big: Vec<u8> = (0..(1usize << 19)).map(|i| (i * 13 % 247) as u8).collect();
    front.write(64 << 10, &big).unwrap();
    let mut back_big = vec![0u8; big.len()];
    front.read(64 << 10, &mut back_big).unwrap();
    assert!(back_big == big, "512 KiB by indirect requests");
    // A batch: writes and reads in one exchange, each with its result;
    // one past the end fails alone, one too large for the pages goes alone.
    {
        use blk::front::Io;
        let a = vec![0x11u8; 4096];
        let b = vec![0x22u8; 8192];
        let big = vec![0x33u8; 400 * 1024];
        let (mut ra, mut rb) = (vec![0u8; 4096], vec![0u8; 8192]);
        let mut ios = [
            Io::Write {
                offset: 0,
                data: &a,
            },
            Io::Write {
                offset: 64 << 10,
                data: &b,
            },
            Io::Write {
                offset: 2048 * 512,
                data: &a,
            },
            Io::Write {
                offset: 128 << 10,
                data: &big,
            },
        ];
        let rs = front.batch(&mut ios).unwrap();
        assert!(rs[0].is_ok() && rs[1].is_ok() && rs[3].is_ok(), "{rs:?}");
        assert!(matches!(rs[2], Err(blk::front::FrontError::Range)));
        let mut ios = [
            Io::Read {
                offset: 0,
                buf: &mut ra,
            },
            Io::Read {
                offset: 64 << 10,
                buf: &mut rb,
            },
        ];
        assert!(front.batch(&mut ios).unwrap().iter().all(Result::is_ok));
        assert_eq!((&ra, &rb), (&a, &b));
        // 40 requests at once: more than a one-page ring holds, not more
        // than this four-page one (128 slots).
        let mut bufs = vec![vec![0u8; 4096]; 40];
        let mut ios: Vec<Io<'_>> = bufs
            .iter_mut()
            .enumerate()
            .map(|(k, buf)| Io::Read {
                offset: (k as u64 % 2) * (64 << 10),
                buf,
            })
            .collect();
        assert!(front.batch(&mut ios).unwrap().iter().all(Result::is_ok));
        drop(ios);
        assert!(bufs.iter().step_by(2).all(|x| x == &a));
        assert!(bufs.iter().skip(1).step_by(2).all(|x| x[..] == b[..4096]));
        let c = storage.contents();
        assert!(c[128 << 10..(128 << 10) + big.len()]
            .iter()
            .all(|&x| x == 0x33));
    }
    // A discard only once the backend offers it, then it is done.
    assert!(front.discard(512 * 3, 4096).is_err());
    front.set_discard(true);
    front.discard(512 * 3, 4096).unwrap();
    assert!(storage.contents()[512 * 3..512 * 3 + 4096]
        .iter()
        .all(|&b| b == 0));
    assert!(front.discard(2040 * 512, 8192).is_err(), "past the end");
    // Out of range and unaligned never reach the ring.
    assert!(front.read(2048 * 512, &mut [0u8; 512]).is_err());
    assert!(front.write(100, &[0u8; 512]).is_err());
    stop.store(true, Ordering::Relaxed);
    let c = server.unwrap().join().unwrap();
    assert_eq!(c.bad + c.grant_errors + c.io_errors, 0);
    assert!(c.ok >= 6);
    front.release();
    drop(hv);
}

#[test]
fn a_write_in_flight_when_the_connection_is_replaced_is_made_again_on_the_next() {
    use blk::reattach::Reattachable;
    use std::sync::Arc;
    use std::time::Duration;
    let (hv, dom0, new, guest) = host("reattach", 1200);
    let storage = Arc::new(MemStorage::new(1 << 20));
    // A backend that never answers: the write waits on it.
    let dead = connect(&dom0, &guest, new.domid, &storage, false, 1);
    let disk = Arc::new(Reattachable::new(
        vec![dead.front],
        false,
        Duration::from_secs(10),
    ));
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i % 253) as u8).collect();
    let (d, w) = (disk.clone(), data.clone());
    let writer = std::thread::spawn(move || d.write(4096, &w));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!writer.is_finished(), "no backend has answered it");
    // The connection goes: the transfer stops, and waits.
    let old = disk.detach().pop().unwrap();
    assert!(old.is_aborted());
    std::thread::sleep(Duration::from_millis(200));
    assert!(!writer.is_finished(), "it waits for the next connection");
    // A disk of another size is not this one.
    let other = blk::front::BlkFront::new(
        guest.clone(),
        guest.alloc_pages(1).unwrap(),
        1,
        platform::EventChannels::alloc_unbound(&guest, DomId(0)).unwrap(),
        DomId(0),
        4096,
    )
    .unwrap();
    let other = disk.attach(vec![other], false).err().unwrap();
    assert!(other.into_iter().all(|f| f.release().is_none()));
    assert!(old.release().is_none(), "nothing of it is mapped");
    // The next connection, of two queues, serves it.
    let queues = [
        connect(&dom0, &guest, new.domid, &storage, true, 1),
        connect(&dom0, &guest, new.domid, &storage, true, 1),
    ];
    let mut fronts = Vec::new();
    let mut servers = Vec::new();
    for q in queues {
        fronts.push(q.front);
        servers.push((q.stop, q.server));
    }
    disk.attach(fronts, false).map_err(|_| "attach").unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(&storage.contents()[4096..4096 + data.len()], &data[..]);
    // Batches take the queues in turn.
    {
        use blk::front::Io;
        let bufs: Vec<Vec<u8>> = (0..8u8).map(|k| vec![0x40 + k; 8192]).collect();
        let mut ios: Vec<Io<'_>> = bufs
            .iter()
            .enumerate()
            .map(|(k, b)| Io::Write {
                offset: 256 * 1024 + k as u64 * 8192,
                data: b,
            })
            .collect();
        for _ in 0..2 {
            let rs = blk::nbd::BlockDevice::batch(&*disk, &mut ios);
            assert!(rs.iter().all(Result::is_ok), "{rs:?}");
        }
        let c = storage.contents();
        for k in 0..8usize {
            let at = 256 * 1024 + k * 8192;
            assert!(c[at..at + 8192].iter().all(|&b| b == 0x40 + k as u8));
        }
    }
    disk.flush().unwrap();
    // Removed: what waits fails instead.
    let fronts = disk.remove();
    assert_eq!(fronts.len(), 2);
    assert!(disk.read(0, &mut [0u8; 512]).is_err());
    for (front, (stop, server)) in fronts.into_iter().zip(servers) {
        let c = Connection {
            front,
            stop,
            server,
        }
        .stop();
        assert_eq!(c.bad + c.grant_errors + c.io_errors, 0);
        assert!(c.ok > 0, "both queues served requests");
    }
    drop(hv);
}

#[test]
fn a_request_unanswered_in_time_stops_every_queue() {
    use blk::reattach::Reattachable;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let (hv, dom0, new, guest) = host("timeout", 1200);
    let storage = Arc::new(MemStorage::new(1 << 20));
    // Queue 0's backend never answers; queue 1's does.
    let mut dead = connect(&dom0, &guest, new.domid, &storage, false, 1).front;
    dead.set_timeout(Duration::from_millis(200));
    let live = connect(&dom0, &guest, new.domid, &storage, true, 1);
    let disk = Reattachable::new(vec![dead, live.front], false, Duration::from_secs(10));
    assert!(
        disk.write(0, &[1u8; 4096]).is_err(),
        "unanswered on queue 0"
    );
    // Queue 1 takes no more either: queue 0's write could land after it.
    let t = Instant::now();
    assert!(disk.write(4096, &[2u8; 4096]).is_err());
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "failed at once, not after the wait"
    );
    assert!(storage.contents()[4096..8192].iter().all(|&b| b == 0));
    let mut fronts = disk.detach();
    assert_eq!(fronts.len(), 2, "both handed back");
    let c = Connection {
        front: fronts.pop().unwrap(),
        stop: live.stop,
        server: live.server,
    }
    .stop();
    assert_eq!(c.bad + c.grant_errors + c.io_errors, 0);
    drop(hv);
}

/// Reads of a buffered file go straight into the guest's persistently
/// mapped pages (`preadv`), segment offsets within pages kept; a page
/// granted read-only is still refused.
#[test]
fn reads_go_straight_into_persistently_mapped_pages() {
    use blk::serve::{PersistentBudget, PersistentMover};
    use blk::storage::FileStorage;
    let (_hv, dom0, new, guest) = host("direct", 64);
    let path = std::env::temp_dir().join(format!("dom0kit-blk-direct-{}.img", std::process::id()));
    let image: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &image).unwrap();
    let storage = Counting {
        inner: FileStorage::open(&path, true).unwrap(),
        into: AtomicU32::new(0),
        at: AtomicU32::new(0),
    };
    let p = pages(&dom0, &new, &guest, &[false, false, true]);
    let (a, b, ro) = (p.grefs[0], p.grefs[1], p.grefs[2]);
    let data = p.data;
    let mut front: FrontRing<_, Slot64, BlkifResponse> =
        FrontRing::init(guest.pages(p.ring_pfn, 1).unwrap()).unwrap();
    let mut back: BackRing<_, Slot64, BlkifResponse> = BackRing::init(p.ring_map.memory()).unwrap();
    let disk = DISK;
    let mut mover =
        PersistentMover::new(dom0.clone(), new.domid, PersistentBudget::new(64)).unwrap();
    let mut c = Counters::default();
    // Sectors 1..=7 of page a then 0..=2 of page b: 10 sectors from 300.
    for req in [
        request(blkif::BLKIF_OP_READ, 1, 300, &[(a, 1, 7), (b, 0, 2)]),
        request(blkif::BLKIF_OP_READ, 2, 8, &[(ro, 0, 7)]),
    ] {
        front.put_request(&req).unwrap();
    }
    front.push_requests().unwrap();
    serve_ring::<_, blk::serve::Abi64>(&mut back, &disk, &storage, &mut mover, &mut c, 64).unwrap();
    let mut statuses = Vec::new();
    while let Some(rsp) = front.take_response().unwrap() {
        statuses.push((rsp.id, rsp.status));
    }
    assert_eq!(statuses, [(1, 0), (2, -1)]);
    let page = |i: u64| {
        let mut v = vec![0u8; 4096];
        guest
            .pages(platform::Pfn(data.0 + i), 1)
            .unwrap()
            .read_bytes(0, &mut v)
            .unwrap();
        v
    };
    let (pa, pb) = (page(0), page(1));
    let from = 300 * 512;
    assert!(
        pa[..512].iter().all(|&x| x == 0),
        "sector 0 of page a untouched"
    );
    assert_eq!(&pa[512..], &image[from..from + 7 * 512]);
    assert_eq!(&pb[..3 * 512], &image[from + 7 * 512..from + 10 * 512]);
    assert!(pb[3 * 512..].iter().all(|&x| x == 0));
    assert!(
        page(2).iter().all(|&x| x == 0),
        "the read-only page is not written"
    );
    assert_eq!((c.ok, c.grant_errors), (1, 1));
    // The first straight in; the second through a buffer (then refused).
    assert_eq!(storage.into.load(Ordering::Relaxed), 1);
    assert_eq!(storage.at.load(Ordering::Relaxed), 1);
    let _ = std::fs::remove_file(&path);
}

/// A file, counting how its reads were made.
struct Counting {
    inner: blk::storage::FileStorage,
    into: AtomicU32,
    at: AtomicU32,
}

impl blk::storage::Storage for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.at.fetch_add(1, Ordering::Relaxed);
        self.inner.read_at(buf, offset)
    }
    fn read_into(
        &self,
        dst: &[abi::VolatileSlice<'_>],
        offset: u64,
    ) -> Option<std::io::Result<()>> {
        self.into.fetch_add(1, Ordering::Relaxed);
        self.inner.read_into(dst, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.discard(offset, len)
    }
}

#[test]
fn a_transfer_waiting_on_one_queue_does_not_hold_up_the_others() {
    use blk::reattach::Reattachable;
    use std::sync::Arc;
    use std::time::Duration;
    let (hv, dom0, new, guest) = host("side-by-side", 1200);
    let storage = Arc::new(MemStorage::new(1 << 20));
    // Queue 0's backend never answers; queue 1's does.
    let dead = connect(&dom0, &guest, new.domid, &storage, false, 1);
    let live = connect(&dom0, &guest, new.domid, &storage, true, 1);
    let disk = Arc::new(Reattachable::new(
        vec![dead.front, live.front],
        false,
        Duration::from_secs(10),
    ));
    // The first transfer takes the first queue, and waits there.
    let d = disk.clone();
    let stuck = std::thread::spawn(move || d.write(0, &[7u8; 4096]));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!stuck.is_finished());
    // Meanwhile the others go on the second.
    for k in 1..=4u8 {
        disk.write(u64::from(k) * 4096, &[k; 4096]).unwrap();
    }
    let c = storage.contents();
    for k in 1..=4usize {
        assert!(c[k * 4096..(k + 1) * 4096].iter().all(|&b| b == k as u8));
    }
    assert!(c[..4096].iter().all(|&b| b == 0), "queue 0 never answered");
    assert!(!stuck.is_finished());
    // The connection goes: the waiting transfer hands its queue back, and
    // is made on the next connection.
    let fronts = disk.detach();
    assert_eq!(fronts.len(), 2, "both queues handed back");
    let next = connect(&dom0, &guest, new.domid, &storage, true, 1);
    disk.attach(vec![next.front], false)
        .map_err(|_| "attach")
        .unwrap();
    stuck.join().unwrap().unwrap();
    assert!(storage.contents()[..4096].iter().all(|&b| b == 7));
    for s in [live.stop, next.stop] {
        s.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    for t in [live.server, next.server].into_iter().flatten() {
        t.join().unwrap();
    }
    drop((fronts, hv));
}
