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
