//! The backend's request loop over a real shared ring (in our own memory),
//! with the guest's pages in a table: every request answered with its id,
//! every refusal with the status Linux's blkback gives, data round trips.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use abi::blkif::{self, BlkifRequest, BlkifRequestSegment, BlkifResponse};
use abi::pod::Pod;
use abi::OwnedMem;
use blk::request::{decode, Abi, Disk, Segment};
use blk::serve::{serve_ring, BadGrant, Counters, Mover, Slot64};
use blk::storage::MemStorage;
use proptest::prelude::*;
use ring::{BackRing, FrontRing};

/// The guest's granted pages.
#[derive(Default)]
struct Guest {
    pages: HashMap<u32, Vec<u8>>,
}

impl Mover for Guest {
    fn read_guest(&mut self, segments: &[Segment], buf: &mut [u8]) -> Result<(), BadGrant> {
        let mut at = 0;
        for s in segments {
            let page = self.pages.get(&s.gref).ok_or(BadGrant)?;
            buf[at..at + s.len()].copy_from_slice(&page[s.offset()..s.offset() + s.len()]);
            at += s.len();
        }
        Ok(())
    }
    fn write_guest(&mut self, segments: &[Segment], buf: &[u8]) -> Result<(), BadGrant> {
        let mut at = 0;
        for s in segments {
            let page = self.pages.get_mut(&s.gref).ok_or(BadGrant)?;
            page[s.offset()..s.offset() + s.len()].copy_from_slice(&buf[at..at + s.len()]);
            at += s.len();
        }
        Ok(())
    }
}

fn request(op: u8, id: u64, sector: u64, segs: &[(u32, u8, u8)]) -> BlkifRequest {
    let mut r = BlkifRequest::zeroed();
    r.operation = op;
    r.id = id;
    r.sector_number = sector;
    r.nr_segments = segs.len() as u8;
    for (i, &(gref, first, last)) in segs
        .iter()
        .enumerate()
        .take(blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST)
    {
        r.seg[i] = BlkifRequestSegment {
            gref,
            first_sect: first,
            last_sect: last,
            _pad0: [0; 2],
        };
    }
    r
}

struct Rig {
    front: FrontRing<abi::VolatileSlice<'static>, Slot64, BlkifResponse>,
    back: BackRing<abi::VolatileSlice<'static>, Slot64, BlkifResponse>,
    guest: Guest,
    storage: MemStorage,
    disk: Disk,
    c: Counters,
}

fn rig(sectors: u64) -> Rig {
    // Leaked: the rings borrow it for the test's life.
    let mem: &'static OwnedMem = Box::leak(Box::new(OwnedMem::new(4096)));
    let front = FrontRing::init(mem.as_volatile()).unwrap();
    let back = BackRing::init(mem.as_volatile()).unwrap();
    Rig {
        front,
        back,
        guest: Guest::default(),
        storage: MemStorage::new((sectors * 512) as usize),
        disk: Disk {
            sectors,
            read_only: false,
            discard: true,
            secure_discard: false,
            max_indirect_segments: 256,
        },
        c: Counters::default(),
    }
}

impl Rig {
    /// Sends requests, serves them, returns the responses in order.
    fn run(&mut self, reqs: &[BlkifRequest]) -> Vec<BlkifResponse> {
        for r in reqs {
            self.front.put_request(r).unwrap();
        }
        self.front.push_requests().unwrap();
        let (n, _) = serve_ring::<_, blk::serve::Abi64>(
            &mut self.back,
            &self.disk,
            &self.storage,
            &mut self.guest,
            &mut self.c,
            1000,
        )
        .unwrap();
        assert_eq!(n, reqs.len());
        let mut out = Vec::new();
        while let Some(r) = self.front.take_response().unwrap() {
            out.push(r);
        }
        out
    }
}

#[test]
fn data_written_through_the_ring_reads_back() {
    let mut r = rig(64);
    for (g, b) in [(1u32, 0x11u8), (2, 0x22), (3, 0x33)] {
        r.guest.pages.insert(g, vec![b; 4096]);
    }
    r.guest.pages.insert(9, vec![0; 4096]);
    r.guest.pages.insert(10, vec![0; 4096]);
    // Sectors 8..: page 1 whole, page 2's sectors 2..=3, page 3's 0..=0.
    let w = request(
        blkif::BLKIF_OP_WRITE,
        7,
        8,
        &[(1, 0, 7), (2, 2, 3), (3, 0, 0)],
    );
    let rsp = r.run(&[w]);
    assert_eq!((rsp[0].id, rsp[0].operation, rsp[0].status), (7, 1, 0));
    let disk = r.storage.contents();
    assert!(disk[8 * 512..16 * 512].iter().all(|&b| b == 0x11));
    assert!(disk[16 * 512..18 * 512].iter().all(|&b| b == 0x22));
    assert!(disk[18 * 512..19 * 512].iter().all(|&b| b == 0x33));
    assert!(disk[19 * 512..].iter().all(|&b| b == 0));
    // Read the 11 sectors back into two pages.
    let rd = request(blkif::BLKIF_OP_READ, 8, 8, &[(9, 0, 7), (10, 5, 7)]);
    let rsp = r.run(&[rd]);
    assert_eq!(rsp[0].status, 0);
    assert!(r.guest.pages[&9].iter().all(|&b| b == 0x11));
    assert!(r.guest.pages[&10][5 * 512..7 * 512]
        .iter()
        .all(|&b| b == 0x22));
    assert!(r.guest.pages[&10][7 * 512..].iter().all(|&b| b == 0x33));
    assert!(
        r.guest.pages[&10][..5 * 512].iter().all(|&b| b == 0),
        "outside the segment: untouched"
    );
}

#[test]
fn bad_requests_get_blkbacks_statuses_and_are_counted() {
    let mut r = rig(16);
    r.guest.pages.insert(1, vec![1; 4096]);
    let mut too_many = request(blkif::BLKIF_OP_WRITE, 3, 0, &[(1, 0, 0); 11]);
    too_many.nr_segments = 12;
    let mut indirect = request(blkif::BLKIF_OP_INDIRECT, 8, 0, &[]);
    indirect.nr_segments = 1;
    let reqs = [
        request(blkif::BLKIF_OP_READ, 1, 15, &[(1, 0, 1)]), // past the end
        request(blkif::BLKIF_OP_READ, 2, 0, &[(1, 3, 2)]),  // first > last
        too_many,
        request(blkif::BLKIF_OP_READ, 4, 0, &[(1, 0, 8)]), // sector 8 of a page
        request(blkif::BLKIF_OP_READ, 5, 0, &[]),          // no segments
        request(blkif::BLKIF_OP_READ, 6, 0, &[(99, 0, 0)]), // a grant never given
        request(9, 7, 0, &[]),                             // unknown operation
        indirect,                                          // an indirect request of no segments
        request(blkif::BLKIF_OP_READ, 9, u64::MAX, &[(1, 0, 0)]), // overflow
        request(blkif::BLKIF_OP_FLUSH_DISKCACHE, 10, 0, &[]),
        request(blkif::BLKIF_OP_WRITE_BARRIER, 11, 0, &[]),
    ];
    let rsp = r.run(&reqs);
    let got: Vec<(u64, i16)> = rsp.iter().map(|x| (x.id, x.status)).collect();
    assert_eq!(
        got,
        [
            (1, -1),
            (2, -1),
            (3, -1),
            (4, -1),
            (5, -1),
            (6, -1),
            (7, -2),
            (8, -1),
            (9, -1),
            (10, 0),
            (11, 0)
        ]
    );
    assert_eq!(r.c.bad, 7);
    assert_eq!(r.c.grant_errors, 1);
    assert_eq!(r.c.unsupported, 1);
    assert_eq!(
        r.storage.flushes.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // A read-only disk refuses writes and discards.
    r.disk.read_only = true;
    let mut discard = request(blkif::BLKIF_OP_DISCARD, 13, 0, &[]);
    discard.seg[0] = BlkifRequestSegment::zeroed();
    let rsp = r.run(&[request(blkif::BLKIF_OP_WRITE, 12, 0, &[(1, 0, 0)]), discard]);
    assert_eq!((rsp[0].status, rsp[1].status), (-1, -1));
}

#[test]
fn the_x86_32_abi_decodes_to_the_same_requests() {
    let disk = Disk {
        sectors: 100,
        read_only: false,
        discard: false,
        secure_discard: false,
        max_indirect_segments: 256,
    };
    let mut r32 = abi::blkif::x86_32::BlkifRequest::zeroed();
    r32.operation = blkif::BLKIF_OP_WRITE;
    r32.nr_segments = 2;
    r32.id = 0x1122_3344_5566_7788;
    r32.sector_number = 42;
    r32.seg[0] = BlkifRequestSegment {
        gref: 5,
        first_sect: 1,
        last_sect: 6,
        _pad0: [0; 2],
    };
    r32.seg[1] = BlkifRequestSegment {
        gref: 6,
        first_sect: 0,
        last_sect: 7,
        _pad0: [0; 2],
    };
    let r64 = request(
        blkif::BLKIF_OP_WRITE,
        0x1122_3344_5566_7788,
        42,
        &[(5, 1, 6), (6, 0, 7)],
    );
    let a = decode(Abi::X86_32, r32.as_bytes(), &disk);
    let b = decode(Abi::X86_64, r64.as_bytes(), &disk);
    assert_eq!(a, b);
    assert!(a.2.is_ok());
    assert!(Abi::X86_32.slot_size() < Abi::X86_64.slot_size());
}

proptest! {
    /// Writes of random extents, through the ring, leave the disk as a
    /// model of it says; reads give back what the model holds.
    #[test]
    fn the_disk_follows_a_model(ops in prop::collection::vec((0u64..70, 1usize..4, any::<u8>(), any::<bool>()), 1..30)) {
        let mut r = rig(64);
        let mut model = vec![0u8; 64 * 512];
        for (i, (sector, pages, byte, read)) in ops.into_iter().enumerate() {
            let segs: Vec<(u32, u8, u8)> = (0..pages).map(|p| (100 + p as u32, 0, 0)).collect();
            let n = pages as u64;
            for p in 0..pages {
                r.guest.pages.insert(100 + p as u32, vec![byte.wrapping_add(p as u8); 4096]);
            }
            let op = if read { blkif::BLKIF_OP_READ } else { blkif::BLKIF_OP_WRITE };
            let rsp = r.run(&[request(op, i as u64, sector, &segs)]);
            let fits = sector + n <= 64;
            prop_assert_eq!(rsp[0].status, if fits { 0 } else { -1 });
            if !fits {
                continue;
            }
            let at = (sector * 512) as usize;
            if read {
                for p in 0..pages {
                    prop_assert_eq!(&r.guest.pages[&(100 + p as u32)][..512], &model[at + p * 512..at + (p + 1) * 512]);
                }
            } else {
                for p in 0..pages {
                    model[at + p * 512..at + (p + 1) * 512].fill(byte.wrapping_add(p as u8));
                }
            }
        }
        prop_assert_eq!(r.storage.contents(), model);
    }

    #[test]
    fn any_slot_is_answered(data in prop::collection::vec(any::<u8>(), 0..2000)) {
        blk::fuzz::requests(&data);
    }
}

#[test]
fn the_fuzz_corpus_replays_cleanly() {
    replay("blk_requests", blk::fuzz::requests);
}

/// Feeds every input of `fuzz/corpus/<target>` to `body`.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        body(&std::fs::read(e.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "{target}: an empty corpus");
}

#[test]
fn the_nbd_fuzz_corpus_replays_cleanly() {
    replay("nbd_server", blk::fuzz::nbd);
}

#[test]
fn the_ring_fuzz_corpus_replays_cleanly() {
    replay("blk_ring", blk::fuzz::ring);
}

#[test]
fn the_nbd_client_fuzz_corpus_replays_cleanly() {
    replay("nbd_client", blk::fuzz::nbd_client);
}

proptest! {
    #[test]
    fn any_ring_and_scribbles_are_survived(data in prop::collection::vec(any::<u8>(), 0..5000)) {
        blk::fuzz::ring(&data);
    }

    #[test]
    fn any_nbd_server_stream_is_survived(data in prop::collection::vec(any::<u8>(), 0..3000)) {
        blk::fuzz::nbd_client(&data);
    }

    #[test]
    fn any_nbd_stream_is_survived(data in prop::collection::vec(any::<u8>(), 0..3000)) {
        blk::fuzz::nbd(&data);
    }
}

#[test]
fn an_x86_32_ring_is_served_in_its_own_layout() {
    use abi::blkif::x86_32;
    let mem: &'static OwnedMem = Box::leak(Box::new(OwnedMem::new(4096)));
    let mut front: FrontRing<_, x86_32::BlkifRequest, x86_32::BlkifResponse> =
        FrontRing::init(mem.as_volatile()).unwrap();
    let mut back: BackRing<_, x86_32::BlkifRequest, x86_32::BlkifResponse> =
        BackRing::init(mem.as_volatile()).unwrap();
    // 108-byte requests: 32 of them in a page, as for x86_64.
    assert_eq!(front.size(), 32);
    let mut guest = Guest::default();
    guest.pages.insert(7, vec![0x5a; 4096]);
    guest.pages.insert(8, vec![0; 4096]);
    let storage = MemStorage::new(64 << 10);
    let disk = Disk {
        sectors: 128,
        read_only: false,
        discard: false,
        secure_discard: false,
        max_indirect_segments: 256,
    };
    let seg = |gref| BlkifRequestSegment {
        gref,
        first_sect: 0,
        last_sect: 7,
        _pad0: [0; 2],
    };
    let mut w = x86_32::BlkifRequest::zeroed();
    w.operation = blkif::BLKIF_OP_WRITE;
    w.nr_segments = 1;
    w.id = 0x1122_3344_5566_7788;
    w.sector_number = 8;
    w.seg[0] = seg(7);
    let mut r = w;
    r.operation = blkif::BLKIF_OP_READ;
    r.id = 2;
    r.seg[0] = seg(8);
    let mut bad = w;
    bad.id = 3;
    bad.sector_number = 128;
    for q in [w, r, bad] {
        front.put_request(&q).unwrap();
    }
    front.push_requests().unwrap();
    let mut c = Counters::default();
    let (n, _) =
        serve_ring::<_, blk::serve::Abi32>(&mut back, &disk, &storage, &mut guest, &mut c, 8)
            .unwrap();
    assert_eq!(n, 3);
    let rsps: Vec<_> = std::iter::from_fn(|| front.take_response().unwrap()).collect();
    let got: Vec<(u64, u8, i16)> = rsps.iter().map(|r| (r.id, r.operation, r.status)).collect();
    assert_eq!(
        got,
        vec![
            (
                0x1122_3344_5566_7788,
                blkif::BLKIF_OP_WRITE,
                blkif::BLKIF_RSP_OKAY
            ),
            (2, blkif::BLKIF_OP_READ, blkif::BLKIF_RSP_OKAY),
            (3, blkif::BLKIF_OP_WRITE, blkif::BLKIF_RSP_ERROR),
        ]
    );
    assert!(guest.pages[&8].iter().all(|&b| b == 0x5a));
    assert!(storage.contents()[4096..8192].iter().all(|&b| b == 0x5a));
}

/// An indirect request (`operation` INDIRECT, `op` inside) as a slot.
fn indirect(op: u8, id: u64, sector: u64, nr_segments: u16, pages: &[u32]) -> BlkifRequest {
    let mut i = blkif::BlkifRequestIndirect::zeroed();
    i.operation = blkif::BLKIF_OP_INDIRECT;
    i.indirect_op = op;
    i.nr_segments = nr_segments;
    i.id = id;
    i.sector_number = sector;
    i.indirect_grefs[..pages.len()].copy_from_slice(pages);
    let mut r = BlkifRequest::zeroed();
    r.as_bytes_mut()[..i.as_bytes().len()].copy_from_slice(i.as_bytes());
    r
}

/// An indirect page listing `segs` (gref, first, last).
fn indirect_page(segs: &[(u32, u8, u8)]) -> Vec<u8> {
    let mut page = vec![0u8; 4096];
    for (k, &(gref, first, last)) in segs.iter().enumerate() {
        let s = BlkifRequestSegment {
            gref,
            first_sect: first,
            last_sect: last,
            _pad0: [0; 2],
        };
        page[k * 8..k * 8 + 8].copy_from_slice(s.as_bytes());
    }
    page
}

#[test]
fn indirect_requests_carry_more_segments_than_a_slot() {
    let mut r = rig(1024);
    // 20 pages of data (more than a direct request's 11), listed in
    // indirect page 500; 20 empty pages to read into, listed in 501.
    for g in 1..=20u32 {
        r.guest.pages.insert(g, vec![g as u8; 4096]);
        r.guest.pages.insert(100 + g, vec![0; 4096]);
    }
    let out: Vec<_> = (1..=20u32).map(|g| (g, 0, 7)).collect();
    let back: Vec<_> = (1..=20u32).map(|g| (100 + g, 0, 7)).collect();
    r.guest.pages.insert(500, indirect_page(&out));
    r.guest.pages.insert(501, indirect_page(&back));
    let rsps = r.run(&[
        indirect(blkif::BLKIF_OP_WRITE, 1, 16, 20, &[500]),
        indirect(blkif::BLKIF_OP_READ, 2, 16, 20, &[501]),
    ]);
    assert!(
        rsps.iter().all(|x| x.status == blkif::BLKIF_RSP_OKAY),
        "{rsps:?}"
    );
    // Each response names the inner operation, as Linux's blkback does.
    assert_eq!(rsps[0].operation, blkif::BLKIF_OP_WRITE);
    assert_eq!(rsps[1].operation, blkif::BLKIF_OP_READ);
    let disk = r.storage.contents();
    for g in 1..=20usize {
        let at = 16 * 512 + (g - 1) * 4096;
        assert!(disk[at..at + 4096].iter().all(|&b| b == g as u8));
        assert_eq!(r.guest.pages[&(100 + g as u32)], vec![g as u8; 4096]);
    }
    // 256 segments across one page is the most; more, or none, is refused,
    // as is an inner operation that is not a read or write, a bad segment
    // in the page, an indirect page never granted, and a range past the
    // end.
    let many: Vec<_> = (0..256).map(|_| (1u32, 0, 0)).collect();
    r.guest.pages.insert(502, indirect_page(&many));
    let mut bad_seg = out.clone();
    bad_seg[3] = (4, 6, 2);
    r.guest.pages.insert(503, indirect_page(&bad_seg));
    let rsps = r.run(&[
        indirect(blkif::BLKIF_OP_READ, 10, 0, 256, &[502]),
        indirect(blkif::BLKIF_OP_READ, 11, 0, 257, &[502, 502]),
        indirect(blkif::BLKIF_OP_READ, 12, 0, 0, &[502]),
        indirect(blkif::BLKIF_OP_FLUSH_DISKCACHE, 13, 0, 4, &[500]),
        indirect(blkif::BLKIF_OP_WRITE, 14, 0, 20, &[503]),
        indirect(blkif::BLKIF_OP_READ, 15, 0, 4, &[999]),
        indirect(blkif::BLKIF_OP_READ, 16, 1020, 20, &[501]),
    ]);
    let got: Vec<(u64, i16)> = rsps.iter().map(|x| (x.id, x.status)).collect();
    let (ok, err) = (blkif::BLKIF_RSP_OKAY, blkif::BLKIF_RSP_ERROR);
    assert_eq!(
        got,
        vec![
            (10, ok),
            (11, err),
            (12, err),
            (13, err),
            (14, err),
            (15, err),
            (16, err)
        ]
    );
    // A disk that does not offer them says so.
    r.disk.max_indirect_segments = 0;
    let rsps = r.run(&[indirect(blkif::BLKIF_OP_READ, 20, 0, 4, &[501])]);
    assert_eq!(rsps[0].status, blkif::BLKIF_RSP_EOPNOTSUPP);
}
