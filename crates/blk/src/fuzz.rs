//! Body of the `blk_requests` fuzz target, callable from tests: arbitrary
//! slots (either ABI, indirect ones reading their pages from the same
//! bytes) against a small disk. Nothing may panic, every slot
//! gets a response echoing its id, and no I/O reaches outside the disk.

use crate::request::{Abi, Disk};
use crate::serve::{serve_slot, BadGrant, Counters, Mover};
use crate::storage::{MemStorage, Storage};

/// The guest's pages: every one holds the fuzzer's bytes over and over
/// (so that an indirect page lists segments the fuzzer chose).
struct Pages {
    fill: Vec<u8>,
}

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
        if self.fill.is_empty() {
            buf.fill(0xa5);
        } else {
            for (b, f) in buf.iter_mut().zip(self.fill.iter().cycle()) {
                *b = *f;
            }
        }
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
        max_indirect_segments: if flags & 16 != 0 { 256 } else { 0 },
    };
    let abi = if flags & 8 != 0 {
        Abi::X86_32
    } else {
        Abi::X86_64
    };
    let mut c = Counters::default();
    let mut pages = Pages {
        fill: data.get(1..).unwrap_or(&[]).to_vec(),
    };
    for slot in data.get(1..).unwrap_or(&[]).chunks(abi.slot_size()) {
        let rsp = serve_slot(abi, slot, &disk, &storage, &mut pages, &mut c);
        assert!((-2..=0).contains(&rsp.status), "a status blkif.h defines");
        // The id is echoed (at byte 8 of an x86_64 slot, 4 of an x86_32
        // one: no padding before it there).
        if slot.len() == abi.slot_size() {
            let at = if abi == Abi::X86_32 { 4 } else { 8 };
            let mut id = [0u8; 8];
            id.copy_from_slice(&slot[at..at + 8]);
            assert_eq!(
                rsp.id,
                u64::from_le_bytes(id),
                "the response names its request"
            );
        }
    }
    // Validation let nothing through that the disk refuses: every I/O that
    // reached the storage was in range.
    assert_eq!(
        c.io_errors, 0,
        "validation let an out-of-range request through"
    );
}

/// An NBD client's whole byte stream, fed to the server: the answers go
/// nowhere.
struct Scripted<'a> {
    input: &'a [u8],
}

impl std::io::Read for Scripted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl std::io::Write for Scripted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl crate::nbd::Conn for Scripted<'_> {
    type Writer = std::io::Sink;
    fn writer(&self) -> std::io::Result<std::io::Sink> {
        Ok(std::io::sink())
    }
}

/// Body of the `nbd_server` fuzz target: arbitrary bytes from a client,
/// against an export of a 1 MiB disk. Nothing may panic or hang (the
/// stream ends), and what is written stays inside the disk.
pub fn nbd(data: &[u8]) {
    let disk: crate::nbd::Shared = std::sync::Arc::new(MemStorage::new(1 << 20));
    let _ = crate::nbd::session(Scripted { input: data }, "xvda", &disk);
}

/// A server's whole byte stream, owned; what the client sends goes nowhere.
struct ServerBytes {
    input: std::io::Cursor<Vec<u8>>,
}

impl std::io::Read for ServerBytes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl crate::remote::Conn for ServerBytes {}

impl std::io::Write for ServerBytes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Body of the `nbd_client` fuzz target: arbitrary bytes from an NBD
/// server to the storage engine's client, through negotiation and a read,
/// a write, a flush and a zeroing. Nothing may panic or hang, and nothing
/// the server says sizes a buffer beyond the protocol's bounds.
pub fn nbd_client(data: &[u8]) {
    let s = ServerBytes {
        input: std::io::Cursor::new(data.to_vec()),
    };
    let Ok(mut c) = crate::remote::NbdClient::negotiate(Box::new(s), "") else {
        return;
    };
    let mut buf = [0u8; 4096];
    let _ = c.read(0, &mut buf);
    let _ = c.write(4096, &buf[..512]);
    let _ = c.flush();
    let _ = c.write_zeroes(0, 8192);
    let _ = c.read(512, &mut buf[..512]);
}

/// Body of the `blk_ring` fuzz target: blkback's whole loop over a real
/// shared ring whose page is the fuzzer's bytes, the fuzzer scribbling
/// over indices and slots between turns (either ABI, one to four pages).
/// Nothing may panic or touch memory outside the ring; impossible indices
/// stop the device (a [`ring::RingError::PeerBroken`]) and nothing else;
/// and no I/O reaches outside the disk.
pub fn ring(data: &[u8]) {
    use crate::serve::{serve_ring, Abi32, Abi64};
    use ring::{BackRing, RingError};
    let (Some(&flags), Some(rest)) = (data.first(), data.get(1..)) else {
        return;
    };
    let pages = 1usize << (flags & 3).min(2);
    let mem = abi::OwnedMem::new(4096 * pages);
    let n = rest.len().min(mem.len());
    let _ = mem.as_volatile().write_bytes(0, &rest[..n]);
    let mut input = &rest[n..];
    let storage = MemStorage::new(64 << 10);
    let disk = Disk {
        sectors: storage.size() / 512,
        read_only: flags & 4 != 0,
        discard: flags & 8 != 0,
        secure_discard: false,
        max_indirect_segments: if flags & 16 != 0 { 256 } else { 0 },
    };
    let mut pages_mover = Pages {
        fill: rest.to_vec(),
    };
    let mut c = Counters::default();
    let x86_32 = flags & 32 != 0;
    // The backend attaches at 0, as after INIT; the fuzzer then plays the
    // frontend by scribbling.
    let mut b64 = None;
    let mut b32 = None;
    if x86_32 {
        b32 = BackRing::<
            _,
            <Abi32 as crate::serve::RingAbi>::Slot,
            <Abi32 as crate::serve::RingAbi>::Response,
        >::attach(mem.as_volatile(), abi::RingIdx(0))
        .ok();
    } else {
        b64 = BackRing::<
            _,
            <Abi64 as crate::serve::RingAbi>::Slot,
            <Abi64 as crate::serve::RingAbi>::Response,
        >::attach(mem.as_volatile(), abi::RingIdx(0))
        .ok();
    }
    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        if op & 1 == 0 {
            // Scribble: a u32 anywhere (aligned).
            if input.len() < 8 {
                break;
            }
            let off = u32::from_le_bytes([input[0], input[1], input[2], input[3]]) as usize;
            let v = u32::from_le_bytes([input[4], input[5], input[6], input[7]]);
            input = &input[8..];
            let _ = mem.as_volatile().store_u32(
                (off % mem.len()) & !3,
                v,
                std::sync::atomic::Ordering::Relaxed,
            );
            continue;
        }
        let budget = usize::from(op >> 1).max(1);
        let r = match (&mut b64, &mut b32) {
            (Some(b), _) => {
                serve_ring::<_, Abi64>(b, &disk, &storage, &mut pages_mover, &mut c, budget)
            }
            (_, Some(b)) => {
                serve_ring::<_, Abi32>(b, &disk, &storage, &mut pages_mover, &mut c, budget)
            }
            _ => return,
        };
        match r {
            Ok((served, _)) => assert!(served <= budget, "served past its budget"),
            Err(RingError::PeerBroken { .. }) => break,
            Err(e) => unreachable!("the ring went wrong otherwise: {e:?}"),
        }
    }
    assert_eq!(
        c.io_errors, 0,
        "validation let an out-of-range request through"
    );
}
