//! The byte rings of the xenstore page (`xen/io/xs_wire.h`,
//! `docs/misc/xenstore-ring.txt`) and the console page (`xen/io/console.h`).
//!
//! Both pages hold two rings of one layout: a power-of-two data area, a
//! consumer index and a producer index, free-running `u32`s masked on use.
//! Which end writes which ring is the only difference between the two
//! sides, so one [`ByteRingLayout`] per ring serves both, as in MirageOS's
//! `shared-memory-ring`. Both indices are in shared memory; each check reads
//! them once and rejects `prod - cons > size`, as C xenstored's
//! `check_indexes` does.

use core::sync::atomic::Ordering;

use abi::{console, xs_wire};

use crate::{RingError, RingMem};

/// Where one byte ring lives in its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRingLayout {
    /// Offset of the data area.
    pub data: usize,
    /// Size of the data area, a power of two.
    pub size: u32,
    /// Offset of the consumer index.
    pub cons: usize,
    /// Offset of the producer index.
    pub prod: usize,
}

impl ByteRingLayout {
    /// xenstore requests: the guest writes, the daemon reads.
    pub const XENSTORE_REQ: ByteRingLayout = ByteRingLayout {
        data: xs_wire::offsets::REQ,
        size: xs_wire::XENSTORE_RING_SIZE as u32,
        cons: xs_wire::offsets::REQ_CONS,
        prod: xs_wire::offsets::REQ_PROD,
    };
    /// xenstore replies and watch events: the daemon writes, the guest reads.
    pub const XENSTORE_RSP: ByteRingLayout = ByteRingLayout {
        data: xs_wire::offsets::RSP,
        size: xs_wire::XENSTORE_RING_SIZE as u32,
        cons: xs_wire::offsets::RSP_CONS,
        prod: xs_wire::offsets::RSP_PROD,
    };
    /// Console input: the backend writes, the guest reads.
    pub const CONSOLE_IN: ByteRingLayout = ByteRingLayout {
        data: console::offsets::IN,
        size: console::XENCONS_IN_SIZE as u32,
        cons: console::offsets::IN_CONS,
        prod: console::offsets::IN_PROD,
    };
    /// Console output: the guest writes, the backend reads.
    pub const CONSOLE_OUT: ByteRingLayout = ByteRingLayout {
        data: console::offsets::OUT,
        size: console::XENCONS_OUT_SIZE as u32,
        cons: console::offsets::OUT_CONS,
        prod: console::offsets::OUT_PROD,
    };

    fn check<M: RingMem>(&self, mem: &M) -> Result<(), RingError> {
        let end = [self.data + self.size as usize, self.cons + 4, self.prod + 4];
        if !self.size.is_power_of_two() || end.iter().any(|&e| e > mem.len()) {
            return Err(RingError::TooSmall { len: mem.len() });
        }
        Ok(())
    }

    /// Reads both indices once and checks them: `(cons, prod - cons)`.
    fn indexes<M: RingMem>(&self, mem: &M, what: &'static str) -> Result<(u32, u32), RingError> {
        let cons = mem.load_u32(self.cons, Ordering::Acquire)?;
        let prod = mem.load_u32(self.prod, Ordering::Acquire)?;
        let used = prod.wrapping_sub(cons);
        if used > self.size {
            return Err(RingError::PeerBroken {
                what,
                value: prod,
                own: cons,
                size: self.size,
            });
        }
        Ok((cons, used))
    }

    /// Copies `buf.len()` bytes starting at ring index `idx`, wrapping.
    fn copy(&self, mem: &impl RingMem, idx: u32, buf: &mut [u8]) -> Result<(), RingError> {
        let start = (idx & (self.size - 1)) as usize;
        let first = buf.len().min(self.size as usize - start);
        let (a, b) = buf.split_at_mut(first);
        mem.read_into(self.data + start, a)?;
        mem.read_into(self.data, b)?;
        Ok(())
    }

    fn store(&self, mem: &impl RingMem, idx: u32, buf: &[u8]) -> Result<(), RingError> {
        let start = (idx & (self.size - 1)) as usize;
        let first = buf.len().min(self.size as usize - start);
        let (a, b) = buf.split_at(first);
        mem.write_from(self.data + start, a)?;
        mem.write_from(self.data, b)?;
        Ok(())
    }
}

/// The writing end of a byte ring.
pub struct ByteProducer<M> {
    mem: M,
    ring: ByteRingLayout,
}

impl<M: RingMem> ByteProducer<M> {
    /// The writing end of `ring` in `mem`.
    pub fn new(mem: M, ring: ByteRingLayout) -> Result<Self, RingError> {
        ring.check(&mem)?;
        Ok(ByteProducer { mem, ring })
    }

    /// Bytes that can be written now.
    pub fn space(&self) -> Result<u32, RingError> {
        let (_, used) = self.ring.indexes(&self.mem, "producer index")?;
        Ok(self.ring.size - used)
    }

    /// Writes as much of `buf` as fits and publishes it; returns how much.
    /// The caller notifies the peer.
    pub fn write(&self, buf: &[u8]) -> Result<usize, RingError> {
        let (cons, used) = self.ring.indexes(&self.mem, "producer index")?;
        let prod = cons.wrapping_add(used);
        let n = buf.len().min((self.ring.size - used) as usize);
        self.ring.store(&self.mem, prod, &buf[..n])?;
        // xen_wmb(): the data is visible before the index.
        self.mem.store_u32(
            self.ring.prod,
            prod.wrapping_add(n as u32),
            Ordering::Release,
        )?;
        Ok(n)
    }
}

/// The reading end of a byte ring. Reading does not advance the ring until
/// the reader says so ([`consume`](ByteConsumer::consume)), so a message can
/// be looked at before it is known to be whole.
pub struct ByteConsumer<M> {
    mem: M,
    ring: ByteRingLayout,
}

impl<M: RingMem> ByteConsumer<M> {
    /// The reading end of `ring` in `mem`.
    pub fn new(mem: M, ring: ByteRingLayout) -> Result<Self, RingError> {
        ring.check(&mem)?;
        Ok(ByteConsumer { mem, ring })
    }

    /// Bytes waiting.
    pub fn available(&self) -> Result<u32, RingError> {
        Ok(self.ring.indexes(&self.mem, "producer index")?.1)
    }

    /// Copies up to `buf.len()` waiting bytes into `buf` without consuming
    /// them; returns how many.
    pub fn peek(&self, buf: &mut [u8]) -> Result<usize, RingError> {
        let (cons, used) = self.ring.indexes(&self.mem, "producer index")?;
        let n = buf.len().min(used as usize);
        // The acquire load of `prod` in `indexes` is the xen_rmb().
        self.ring.copy(&self.mem, cons, &mut buf[..n])?;
        Ok(n)
    }

    /// Frees `n` bytes that were waiting (and peeked).
    pub fn consume(&self, n: u32) -> Result<(), RingError> {
        let (cons, used) = self.ring.indexes(&self.mem, "producer index")?;
        if n > used {
            return Err(RingError::PeerBroken {
                what: "producer index",
                value: cons.wrapping_add(used),
                own: cons.wrapping_add(n),
                size: self.ring.size,
            });
        }
        // xen_mb() in C: our reads of the data finish before the slot is
        // given back; a release store orders them.
        self.mem
            .store_u32(self.ring.cons, cons.wrapping_add(n), Ordering::Release)?;
        Ok(())
    }

    /// [`peek`](Self::peek) then [`consume`](Self::consume).
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, RingError> {
        let n = self.peek(buf)?;
        self.consume(n as u32)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::OwnedMem;

    #[test]
    fn bytes_written_by_the_guest_reach_the_daemon() {
        let page = OwnedMem::new(4096);
        let guest = ByteProducer::new(page.as_volatile(), ByteRingLayout::XENSTORE_REQ).unwrap();
        let daemon = ByteConsumer::new(page.as_volatile(), ByteRingLayout::XENSTORE_REQ).unwrap();
        assert_eq!(guest.write(b"hello").unwrap(), 5);
        let mut buf = [0; 16];
        assert_eq!(daemon.peek(&mut buf).unwrap(), 5);
        assert_eq!(daemon.available().unwrap(), 5, "peek does not consume");
        assert_eq!(daemon.read(&mut buf[..3]).unwrap(), 3);
        assert_eq!(&buf[..3], b"hel");
        assert_eq!(daemon.available().unwrap(), 2);
    }

    #[test]
    fn a_full_ring_takes_only_what_fits() {
        let page = OwnedMem::new(4096);
        let out = ByteProducer::new(page.as_volatile(), ByteRingLayout::CONSOLE_OUT).unwrap();
        assert_eq!(out.write(&[1; 3000]).unwrap(), 2048);
        assert_eq!(out.write(&[1; 1]).unwrap(), 0);
    }

    #[test]
    fn indexes_further_apart_than_the_ring_are_reported() {
        let page = OwnedMem::new(4096);
        let r = ByteConsumer::new(page.as_volatile(), ByteRingLayout::XENSTORE_RSP).unwrap();
        page.as_volatile()
            .store_u32(xs_wire::offsets::RSP_PROD, 1025, Ordering::Relaxed)
            .unwrap();
        assert!(r.available().unwrap_err().is_peer_fault());
        let w = ByteProducer::new(page.as_volatile(), ByteRingLayout::XENSTORE_RSP).unwrap();
        assert!(w.write(b"x").unwrap_err().is_peer_fault());
    }

    #[test]
    fn consuming_more_than_waits_is_refused() {
        let page = OwnedMem::new(4096);
        let r = ByteConsumer::new(page.as_volatile(), ByteRingLayout::CONSOLE_IN).unwrap();
        assert!(r.consume(1).is_err());
    }

    #[test]
    fn a_page_too_small_is_refused() {
        let page = OwnedMem::new(2048);
        assert!(ByteConsumer::new(page.as_volatile(), ByteRingLayout::XENSTORE_REQ).is_err());
    }
}
