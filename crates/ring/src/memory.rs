//! The memory a ring lives in.

use core::sync::atomic::Ordering;

use abi::mem::{BadAccess, VolatileSlice};

/// Memory shared with the peer, as the ring protocols need it: atomic
/// 32-bit indices, byte copies of slots, and a full fence (`xen_mb`).
///
/// Implemented for [`VolatileSlice`] (real shared pages); tests implement it
/// over loom's atomics to model-check the protocol.
pub trait RingMem {
    /// Length in bytes.
    fn len(&self) -> usize;

    /// Whether it has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Atomically loads the aligned `u32` at `offset`.
    fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, BadAccess>;

    /// Atomically stores the aligned `u32` at `offset`.
    fn store_u32(&self, offset: usize, value: u32, order: Ordering) -> Result<(), BadAccess>;

    /// Copies bytes at `offset` into `buf`, reading each byte once.
    fn read_into(&self, offset: usize, buf: &mut [u8]) -> Result<(), BadAccess>;

    /// Copies `buf` to `offset`.
    fn write_from(&self, offset: usize, buf: &[u8]) -> Result<(), BadAccess>;

    /// A full barrier: `xen_mb()`.
    fn fence(&self) {
        core::sync::atomic::fence(Ordering::SeqCst);
    }
}

impl RingMem for VolatileSlice<'_> {
    fn len(&self) -> usize {
        VolatileSlice::len(self)
    }

    fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, BadAccess> {
        VolatileSlice::load_u32(self, offset, order)
    }

    fn store_u32(&self, offset: usize, value: u32, order: Ordering) -> Result<(), BadAccess> {
        VolatileSlice::store_u32(self, offset, value, order)
    }

    fn read_into(&self, offset: usize, buf: &mut [u8]) -> Result<(), BadAccess> {
        self.read_bytes(offset, buf)
    }

    fn write_from(&self, offset: usize, buf: &[u8]) -> Result<(), BadAccess> {
        self.write_bytes(offset, buf)
    }
}

/// Pointers to ring memory are ring memory.
macro_rules! forward_ring_mem {
    ($($ptr:ty),*) => {$(
        impl<M: RingMem + ?Sized> RingMem for $ptr {
            fn len(&self) -> usize {
                (**self).len()
            }

            fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, BadAccess> {
                (**self).load_u32(offset, order)
            }

            fn store_u32(&self, offset: usize, value: u32, order: Ordering) -> Result<(), BadAccess> {
                (**self).store_u32(offset, value, order)
            }

            fn read_into(&self, offset: usize, buf: &mut [u8]) -> Result<(), BadAccess> {
                (**self).read_into(offset, buf)
            }

            fn write_from(&self, offset: usize, buf: &[u8]) -> Result<(), BadAccess> {
                (**self).write_from(offset, buf)
            }

            fn fence(&self) {
                (**self).fence()
            }
        }
    )*};
}

forward_ring_mem!(&M, std::sync::Arc<M>, Box<M>);
