//! Body of the `blk_requests` fuzz target, callable from tests: arbitrary
//! slots (either ABI) against a small disk. Nothing may panic, every slot
//! gets a response echoing its id, and no I/O reaches outside the disk.

use crate::request::{Abi, Disk};
use crate::serve::{serve_slot, BadGrant, Counters, Mover};
use crate::storage::{MemStorage, Storage};

struct Pages;

impl Mover for Pages {
    fn read_guest(
        &mut self,
        segments: &[crate::request::Segment],
        buf: &mut [u8],
    ) -> Result<(), BadGrant> {
        let want: usize = segments.iter().map(|s| s.len()).sum();
        assert_eq!(want, buf.len(), "the buffer is the segments' size");
        // Grant 13 is one the guest never gave.
        if segments.iter().any(|s| s.gref == 13) {
            return Err(BadGrant);
        }
        buf.fill(0xa5);
        Ok(())
    }
    fn write_guest(
        &mut self,
        segments: &[crate::request::Segment],
        buf: &[u8],
    ) -> Result<(), BadGrant> {
        let want: usize = segments.iter().map(|s| s.len()).sum();
        assert_eq!(want, buf.len(), "the buffer is the segments' size");
        if segments.iter().any(|s| s.gref == 13) {
            return Err(BadGrant);
        }
        Ok(())
    }
}

/// Feeds `data`, cut into slots, to a backend serving a 64 KiB disk.
pub fn requests(data: &[u8]) {
    let storage = MemStorage::new(64 << 10);
    let flags = data.first().copied().unwrap_or(0);
    let disk = Disk {
        sectors: storage.size() / 512,
        read_only: flags & 1 != 0,
        discard: flags & 2 != 0,
        secure_discard: flags & 4 != 0,
    };
    let abi = if flags & 8 != 0 {
        Abi::X86_32
    } else {
        Abi::X86_64
    };
    let mut c = Counters::default();
    for slot in data.get(1..).unwrap_or(&[]).chunks(abi.slot_size()) {
        let rsp = serve_slot(abi, slot, &disk, &storage, &mut Pages, &mut c);
        assert!((-2..=0).contains(&rsp.status), "a status blkif.h defines");
    }
}
