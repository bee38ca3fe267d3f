//! Bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`), here so that
//! ordinary tests can replay the corpus on stable Rust.
//!
//! Each body plays our end of a ring against a peer that is nothing but the
//! fuzzer's bytes: the shared memory starts as those bytes and the peer
//! scribbles over any index or slot between our operations. The body checks
//! the properties we promise against a hostile peer: no panic, no memory
//! access out of bounds (reported as [`RingError::Memory`], which must never
//! happen), never more requests in flight than the ring holds, and a
//! [`RingError::PeerBroken`] exactly when the peer's indices are impossible.

use core::sync::atomic::Ordering;

use abi::blkif::{BlkifRequest, BlkifResponse};
use abi::ring::SRING_REQ_PROD;
use abi::OwnedMem;

use crate::{BackRing, ByteConsumer, ByteProducer, ByteRingLayout, FrontRing, RingError};

/// A little reader of fuzzer bytes.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..4 {
            v = (v << 8) | u32::from(self.byte()?);
        }
        Some(v)
    }
}

/// Fills `mem` with up to its length of `input`'s bytes.
fn seed(mem: &OwnedMem, input: &mut Input<'_>) {
    let n = input.0.len().min(mem.len());
    let (head, rest) = input.0.split_at(n);
    let _ = mem.as_volatile().write_bytes(0, head);
    input.0 = rest;
}

/// A peer move: write a `u32` anywhere (aligned) in the memory.
fn scribble(mem: &OwnedMem, input: &mut Input<'_>) {
    let (Some(off), Some(v)) = (input.u32(), input.u32()) else {
        return;
    };
    let off = (off as usize % mem.len()) & !3;
    let _ = mem.as_volatile().store_u32(off, v, Ordering::Relaxed);
}

fn expect_no_memory_error<T>(r: &Result<T, RingError>) {
    assert!(
        !matches!(r, Err(RingError::Memory(_))),
        "ring touched memory out of bounds"
    );
}

/// The back end consumes requests from adversarial shared memory.
pub fn back_ring(data: &[u8]) {
    let mut input = Input(data);
    let order = input.byte().unwrap_or(0) % 3;
    let mem = OwnedMem::new(4096 << order);
    seed(&mem, &mut input);
    let start = input.u32().unwrap_or(0);
    let Ok(mut back) =
        BackRing::<_, BlkifRequest, BlkifResponse>::attach(mem.as_volatile(), abi::RingIdx(start))
    else {
        return;
    };
    let size = back.size();
    // Bounded: each step eats at least one byte.
    while let Some(op) = input.byte() {
        let raw_prod = mem
            .as_volatile()
            .load_u32(SRING_REQ_PROD, Ordering::Relaxed)
            .unwrap_or(0);
        let produced = raw_prod.wrapping_sub(back.rsp_prod_pvt().0);
        let impossible = produced > size || produced < back.in_flight();
        match op % 6 {
            0 => {
                // Served from the validated batch when one is left, so it
                // reports a broken peer only when it rereads the index.
                let r = back.take_request();
                expect_no_memory_error(&r);
                if matches!(r, Err(RingError::PeerBroken { .. })) {
                    assert!(impossible, "a possible index was called broken");
                }
            }
            1 => {
                let r = back.put_response(&BlkifResponse {
                    id: 1,
                    operation: 0,
                    _pad0: 0,
                    status: 0,
                    _pad1: [0; 4],
                });
                expect_no_memory_error(&r);
            }
            2 => expect_no_memory_error(&back.push_responses()),
            3 => {
                let r = back.final_check_for_requests();
                expect_no_memory_error(&r);
                assert_eq!(matches!(r, Err(RingError::PeerBroken { .. })), impossible);
            }
            4 => {
                let r = back.unconsumed_requests();
                expect_no_memory_error(&r);
                assert_eq!(matches!(r, Err(RingError::PeerBroken { .. })), impossible);
                if let Ok(n) = r {
                    assert_eq!(n, produced - back.in_flight());
                }
            }
            _ => scribble(&mem, &mut input),
        }
        assert!(
            back.in_flight() <= size,
            "more requests in flight than slots"
        );
    }
}

/// The front end consumes responses from adversarial shared memory.
pub fn front_ring(data: &[u8]) {
    let mut input = Input(data);
    let order = input.byte().unwrap_or(0) % 3;
    let mem = OwnedMem::new(4096 << order);
    seed(&mem, &mut input);
    let start = input.u32().unwrap_or(0);
    let Ok(mut front) =
        FrontRing::<_, BlkifRequest, BlkifResponse>::attach(mem.as_volatile(), abi::RingIdx(start))
    else {
        return;
    };
    let mut taken = 0u32;
    let mut put = 0u32;
    while let Some(op) = input.byte() {
        match op % 5 {
            0 => {
                let r = front.take_response();
                expect_no_memory_error(&r);
                if let Ok(Some(_)) = r {
                    taken += 1;
                }
            }
            1 => {
                let r = front.put_request(&abi::Pod::zeroed());
                expect_no_memory_error(&r);
                if r.is_ok() {
                    put += 1;
                }
            }
            2 => expect_no_memory_error(&front.push_requests()),
            3 => expect_no_memory_error(&front.final_check_for_responses()),
            _ => scribble(&mem, &mut input),
        }
        assert!(
            taken <= put,
            "a response was taken for a request never made"
        );
        assert!(front.free_requests() <= front.size());
    }
}

/// Both ends of a byte ring against adversarial indices and data.
pub fn byte_ring(data: &[u8]) {
    let mut input = Input(data);
    let layout = match input.byte().unwrap_or(0) % 4 {
        0 => ByteRingLayout::XENSTORE_REQ,
        1 => ByteRingLayout::XENSTORE_RSP,
        2 => ByteRingLayout::CONSOLE_IN,
        _ => ByteRingLayout::CONSOLE_OUT,
    };
    let mem = OwnedMem::new(4096);
    seed(&mem, &mut input);
    let (Ok(w), Ok(r)) = (
        ByteProducer::new(mem.as_volatile(), layout),
        ByteConsumer::new(mem.as_volatile(), layout),
    ) else {
        return;
    };
    let mut buf = [0u8; 4096];
    while let Some(op) = input.byte() {
        let len = usize::from(input.byte().unwrap_or(0)) * 17;
        match op % 4 {
            0 => {
                let res = w.write(&buf[..len.min(buf.len())]);
                expect_no_memory_error(&res);
                if let Ok(n) = res {
                    assert!(n <= layout.size as usize);
                }
            }
            1 => {
                let res = r.peek(&mut buf[..len.min(4096)]);
                expect_no_memory_error(&res);
                if let Ok(n) = res {
                    assert!(n <= layout.size as usize);
                }
            }
            2 => expect_no_memory_error(&r.read(&mut buf[..len.min(4096)])),
            _ => scribble(&mem, &mut input),
        }
    }
}
