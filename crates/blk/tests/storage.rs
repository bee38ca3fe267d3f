//! The raw-file engine: batches, through io_uring when `O_DIRECT` (more at
//! once than the ring holds), one by one when buffered, the same results.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use blk::storage::{FileStorage, Storage, StorageIo};

fn image(name: &str, size: u64) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("storage");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

fn batch_round_trip(direct: bool) {
    let p = image(if direct { "direct.img" } else { "buffered.img" }, 4 << 20);
    let s = FileStorage::open_with(&p, true, direct).unwrap();
    // io_uring for O_DIRECT (this kernel gives it); buffered one by one.
    assert_eq!(s.has_uring(), direct);
    assert_eq!(s.is_direct(), direct);
    // 100 writes of 4 KiB and 512 bytes: more than the ring's 64 entries.
    let data: Vec<Vec<u8>> = (0..100u32)
        .map(|k| vec![k as u8 + 1; if k % 2 == 0 { 4096 } else { 512 }])
        .collect();
    let at = |k: usize| (k as u64) * 8192 + if k % 3 == 0 { 512 } else { 0 };
    let mut ios: Vec<StorageIo<'_>> = data
        .iter()
        .enumerate()
        .map(|(k, d)| StorageIo::Write {
            offset: at(k),
            data: d,
        })
        .collect();
    assert!(s.submit(&mut ios).iter().all(Result::is_ok));
    let mut back: Vec<Vec<u8>> = data.iter().map(|d| vec![0u8; d.len()]).collect();
    let mut ios: Vec<StorageIo<'_>> = back
        .iter_mut()
        .enumerate()
        .map(|(k, b)| StorageIo::Read {
            offset: at(k),
            buf: b,
        })
        .collect();
    assert!(s.submit(&mut ios).iter().all(Result::is_ok));
    assert_eq!(back, data);
    // One past the end fails alone.
    let mut buf = [0u8; 4096];
    let mut big = [0u8; 512];
    let mut ios = [
        StorageIo::Read {
            offset: 4 << 20,
            buf: &mut buf,
        },
        StorageIo::Read {
            offset: 0,
            buf: &mut big,
        },
    ];
    let rs = s.submit(&mut ios);
    assert!(rs[0].is_err() && rs[1].is_ok(), "{rs:?}");
    s.flush().unwrap();
    let file = std::fs::read(&p).unwrap();
    for (k, d) in data.iter().enumerate() {
        let o = at(k) as usize;
        assert_eq!(&file[o..o + d.len()], &d[..]);
    }
}

#[test]
fn a_buffered_batch_reads_back() {
    batch_round_trip(false);
}

#[test]
fn the_same_with_o_direct_through_io_uring() {
    batch_round_trip(true);
}

#[test]
fn a_buffered_file_reads_straight_into_shared_memory_slices() {
    let p = image("into.img", 64 << 10);
    let bytes: Vec<u8> = (0..64u32 << 10).map(|i| (i % 253) as u8).collect();
    std::fs::write(&p, &bytes).unwrap();
    let s = FileStorage::open(&p, true).unwrap();
    let mem = abi::OwnedMem::new(3 * 4096);
    let v = mem.as_volatile();
    // Three slices, one empty, crossing pages: read one after another.
    let dst = [
        v.subslice(100, 300).unwrap(),
        v.subslice(400, 0).unwrap(),
        v.subslice(4096, 8000).unwrap(),
    ];
    s.read_into(&dst, 10).unwrap().unwrap();
    let got = mem.to_vec();
    assert_eq!(&got[100..400], &bytes[10..310]);
    assert_eq!(&got[4096..4096 + 8000], &bytes[310..8310]);
    assert!(got[..100].iter().chain(&got[400..4096]).all(|&b| b == 0));
    // Past the end: an error, not a short read.
    let e = s.read_into(&dst, (64 << 10) - 1000).unwrap().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    // O_DIRECT reads go through aligned buffers instead.
    let d = FileStorage::open_with(&p, true, true).unwrap();
    assert!(d.is_direct());
    assert!(d.read_into(&dst, 0).is_none());
}

/// A page-aligned window of `len` bytes in `raw`.
fn page_aligned(raw: &mut Vec<u8>, len: usize) -> &mut [u8] {
    raw.resize(len + 4096, 0);
    let off = raw.as_ptr().align_offset(4096);
    &mut raw[off..off + len]
}

#[test]
fn o_direct_batches_of_aligned_and_unaligned_buffers_run_side_by_side() {
    let p = image("direct-side.img", 8 << 20);
    let s = std::sync::Arc::new(FileStorage::open_with(&p, true, true).unwrap());
    assert!(s.has_uring());
    // Two threads, each its own batches of aligned and unaligned buffers
    // on its own half of the disk, at once.
    let workers: Vec<_> = (0..2u8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for round in 0..20u8 {
                    let base = u64::from(t) * (4 << 20);
                    let fill = |k: usize| t * 100 + round + k as u8;
                    let mut raws: Vec<Vec<u8>> = vec![Vec::new(); 8];
                    let mut unaligned: Vec<Vec<u8>> = Vec::new();
                    let mut datas: Vec<&[u8]> = Vec::new();
                    for (k, raw) in raws.iter_mut().enumerate() {
                        let w = page_aligned(raw, 64 << 10);
                        w.fill(fill(k));
                    }
                    for k in 0..8 {
                        // Every other one off the page boundary by 512.
                        let mut v = vec![0u8; (64 << 10) + 512];
                        v[512..].fill(fill(k + 8));
                        unaligned.push(v);
                    }
                    for (k, raw) in raws.iter_mut().enumerate() {
                        let off = raw.as_ptr().align_offset(4096);
                        datas.push(&raw[off..off + (64 << 10)]);
                        datas.push(&unaligned[k][512..]);
                    }
                    let mut ios: Vec<StorageIo<'_>> = datas
                        .iter()
                        .enumerate()
                        .map(|(k, d)| StorageIo::Write {
                            offset: base + (k as u64) * (64 << 10),
                            data: d,
                        })
                        .collect();
                    assert!(s.submit(&mut ios).iter().all(Result::is_ok));
                    // Read back into aligned buffers.
                    let mut back: Vec<Vec<u8>> = vec![Vec::new(); 16];
                    let mut ios: Vec<StorageIo<'_>> = back
                        .iter_mut()
                        .enumerate()
                        .map(|(k, raw)| StorageIo::Read {
                            offset: base + (k as u64) * (64 << 10),
                            buf: page_aligned(raw, 64 << 10),
                        })
                        .collect();
                    assert!(s.submit(&mut ios).iter().all(Result::is_ok));
                    drop(ios);
                    for (k, raw) in back.iter_mut().enumerate() {
                        let want = if k % 2 == 0 {
                            fill(k / 2)
                        } else {
                            fill(k / 2 + 8)
                        };
                        let got = page_aligned(raw, 64 << 10);
                        assert!(
                            got.iter().all(|&b| b == want),
                            "thread {t} round {round} io {k}"
                        );
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn o_direct_reads_large_requests_straight_into_shared_memory_and_small_ones_not() {
    let p = image("direct-into.img", 1 << 20);
    let bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&p, &bytes).unwrap();
    let d = FileStorage::open_with(&p, true, true).unwrap();
    assert!(d.is_direct());
    let mem = abi::OwnedMem::new(32 * 4096);
    let v = mem.as_volatile();
    // 64 KiB in sectors at sector boundaries, as a guest's segments are.
    let dst: Vec<_> = (0..16)
        .map(|k| v.subslice(k * 8192 + 512, 4096).unwrap())
        .collect();
    d.read_into(&dst, 4096).unwrap().unwrap();
    let got = mem.to_vec();
    for k in 0..16 {
        let at = k * 8192 + 512;
        assert_eq!(
            &got[at..at + 4096],
            &bytes[4096 + k * 4096..4096 + (k + 1) * 4096]
        );
    }
    // Less than 64 KiB, or a slice off a sector boundary: the caller's
    // buffer and the io_uring batch instead.
    assert!(d.read_into(&dst[..15], 0).is_none());
    let mut odd = dst.clone();
    odd[3] = v.subslice(3 * 8192 + 100, 4096).unwrap();
    assert!(d.read_into(&odd, 0).is_none());
}
