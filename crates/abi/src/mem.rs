//! Volatile, bounds-checked access to memory another domain can write.
//!
//! Shared memory is never a `&[u8]`: the peer may change it at any moment, so
//! a Rust reference into it would be undefined behaviour and an invitation to
//! double fetches. [`VolatileSlice`] is the one way in: objects are copied in
//! and out with volatile accesses, ring indices are read and written with
//! atomics, and every offset is checked. This follows rust-vmm `vm-memory`'s
//! `VolatileSlice`, cut down to what Xen's protocols need.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

use crate::pod::Pod;

/// An access outside a [`VolatileSlice`], or a misaligned atomic access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadAccess {
    /// Offset of the access.
    pub offset: usize,
    /// Length of the access.
    pub len: usize,
}

impl core::fmt::Display for BadAccess {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "access of {} bytes at offset {} is out of bounds or misaligned",
            self.len, self.offset
        )
    }
}

impl std::error::Error for BadAccess {}

/// A window on shared memory, valid for `'a`, that may change under our feet.
#[derive(Clone, Copy, Debug)]
pub struct VolatileSlice<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _memory: PhantomData<&'a [core::cell::UnsafeCell<u8>]>,
}

// SAFETY: a `VolatileSlice` only performs volatile and atomic accesses, which
// are sound to perform concurrently from any thread (the peer does anyway).
unsafe impl Send for VolatileSlice<'_> {}
// SAFETY: as above.
unsafe impl Sync for VolatileSlice<'_> {}

impl<'a> VolatileSlice<'a> {
    /// Wraps `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr+len` must be mapped, readable and writable for `'a`, and no
    /// Rust reference may be formed to it while the slice exists.
    pub unsafe fn new(ptr: NonNull<u8>, len: usize) -> Self {
        VolatileSlice {
            ptr,
            len,
            _memory: PhantomData,
        }
    }

    /// A slice of no bytes.
    pub fn empty() -> VolatileSlice<'static> {
        VolatileSlice {
            ptr: NonNull::dangling(),
            len: 0,
            _memory: PhantomData,
        }
    }

    /// Its length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The part `offset..offset + len`.
    #[inline]
    pub fn subslice(&self, offset: usize, len: usize) -> Result<VolatileSlice<'a>, BadAccess> {
        let start = self.check(offset, len, 1)?;
        Ok(VolatileSlice {
            ptr: start,
            len,
            _memory: PhantomData,
        })
    }

    /// Where `part` starts in us, if all of it lies in us (the reverse of
    /// [`subslice`](Self::subslice)); addresses compared, nothing read.
    pub fn offset_of(&self, part: &VolatileSlice<'_>) -> Option<usize> {
        let offset = (part.ptr.as_ptr() as usize).checked_sub(self.ptr.as_ptr() as usize)?;
        (offset.checked_add(part.len)? <= self.len).then_some(offset)
    }

    /// Bounds and alignment (`align`, a power of two) of an access.
    #[inline]
    fn check(&self, offset: usize, len: usize, align: usize) -> Result<NonNull<u8>, BadAccess> {
        let bad = BadAccess { offset, len };
        let end = offset.checked_add(len).ok_or(bad)?;
        if end > self.len {
            return Err(bad);
        }
        // SAFETY: `offset <= len` of a live mapping, so the result stays
        // inside (or one past the end of) the same allocation.
        let p = unsafe { self.ptr.add(offset) };
        // A mask, not `%`: this runs on every ring index and grant entry
        // access, and a division would dominate it.
        if p.as_ptr() as usize & (align - 1) != 0 {
            return Err(bad);
        }
        Ok(p)
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`, reading each once.
    #[inline]
    pub fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), BadAccess> {
        let src = self.check(offset, buf.len(), 1)?;
        copy_volatile(src.as_ptr(), buf.as_mut_ptr(), buf.len(), Dir::FromShared);
        Ok(())
    }

    /// Copies `buf` to `offset`.
    #[inline]
    pub fn write_bytes(&self, offset: usize, buf: &[u8]) -> Result<(), BadAccess> {
        let dst = self.check(offset, buf.len(), 1)?;
        copy_volatile(
            buf.as_ptr().cast_mut(),
            dst.as_ptr(),
            buf.len(),
            Dir::ToShared,
        );
        Ok(())
    }

    /// Sets `len` bytes at `offset` to `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), BadAccess> {
        let dst = self.check(offset, len, 1)?;
        let base = dst.as_ptr();
        // Bytes up to an 8-byte boundary, then 8 at a time, then the rest.
        let head = base.align_offset(8).min(len);
        let words = (len - head) / 8;
        let word = u64::from_ne_bytes([byte; 8]);
        for i in 0..head {
            // SAFETY: `check` proved `dst..dst+len` is inside the mapping.
            unsafe { base.add(i).write_volatile(byte) };
        }
        for w in 0..words {
            // SAFETY: inside the mapping as above, and 8-aligned: `head`
            // brought the pointer to a boundary.
            unsafe { base.add(head + w * 8).cast::<u64>().write_volatile(word) };
        }
        for i in head + words * 8..len {
            // SAFETY: inside the mapping as above.
            unsafe { base.add(i).write_volatile(byte) };
        }
        Ok(())
    }

    /// Copies a `T` out of `offset`: the one read of those bytes.
    #[inline]
    pub fn read_obj<T: Pod>(&self, offset: usize) -> Result<T, BadAccess> {
        let mut v = T::zeroed();
        self.read_bytes(offset, v.as_bytes_mut())?;
        Ok(v)
    }

    /// Copies `v` to `offset`.
    #[inline]
    pub fn write_obj<T: Pod>(&self, offset: usize, v: &T) -> Result<(), BadAccess> {
        self.write_bytes(offset, v.as_bytes())
    }

    /// The aligned shared word at `offset` as an atomic, for protocols that
    /// run several operations on one word (grant flags, pin counts). Sound
    /// where a plain reference is not: every access through it is atomic.
    #[inline]
    pub fn atomic_u32(&self, offset: usize) -> Result<&'a AtomicU32, BadAccess> {
        let p = self.check(offset, 4, 4)?;
        // SAFETY: `check` proved the 4 bytes are in the mapping and aligned,
        // and the mapping lives for `'a`. The peer may access the same bytes
        // with other sizes or plain stores, which Rust's model does not
        // cover; like Xen's C, we rely on x86 giving aligned accesses of
        // every size their hardware atomicity.
        Ok(unsafe { AtomicU32::from_ptr(p.as_ptr().cast::<u32>()) })
    }

    /// The aligned shared `u16` at `offset` as an atomic (see
    /// [`atomic_u32`](Self::atomic_u32)).
    #[inline]
    pub fn atomic_u16(&self, offset: usize) -> Result<&'a AtomicU16, BadAccess> {
        let p = self.check(offset, 2, 2)?;
        // SAFETY: as for `atomic_u32`, for 2 aligned bytes.
        Ok(unsafe { AtomicU16::from_ptr(p.as_ptr().cast::<u16>()) })
    }

    /// Atomically loads the aligned `u32` at `offset`.
    #[inline]
    pub fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, BadAccess> {
        Ok(self.atomic_u32(offset)?.load(order))
    }

    /// Atomically stores the aligned `u32` at `offset`.
    #[inline]
    pub fn store_u32(&self, offset: usize, v: u32, order: Ordering) -> Result<(), BadAccess> {
        self.atomic_u32(offset)?.store(v, order);
        Ok(())
    }

    /// The aligned shared `u64` at `offset` as an atomic (see
    /// [`atomic_u32`](Self::atomic_u32)).
    #[inline]
    pub fn atomic_u64(&self, offset: usize) -> Result<&'a AtomicU64, BadAccess> {
        let p = self.check(offset, 8, 8)?;
        // SAFETY: as for `atomic_u32`, for 8 aligned bytes.
        Ok(unsafe { AtomicU64::from_ptr(p.as_ptr().cast::<u64>()) })
    }

    /// Atomically loads the aligned `u64` at `offset`.
    #[inline]
    pub fn load_u64(&self, offset: usize, order: Ordering) -> Result<u64, BadAccess> {
        Ok(self.atomic_u64(offset)?.load(order))
    }

    /// Atomically stores the aligned `u64` at `offset`.
    #[inline]
    pub fn store_u64(&self, offset: usize, v: u64, order: Ordering) -> Result<(), BadAccess> {
        self.atomic_u64(offset)?.store(v, order);
        Ok(())
    }

    /// Atomically loads the aligned `u16` at `offset`.
    #[inline]
    pub fn load_u16(&self, offset: usize, order: Ordering) -> Result<u16, BadAccess> {
        Ok(self.atomic_u16(offset)?.load(order))
    }

    /// Atomically stores the aligned `u16` at `offset`.
    #[inline]
    pub fn store_u16(&self, offset: usize, v: u16, order: Ordering) -> Result<(), BadAccess> {
        self.atomic_u16(offset)?.store(v, order);
        Ok(())
    }

    /// Compare-and-swap of the aligned `u32` at `offset` (a grant entry's
    /// `flags` and `domid` together, as Xen swaps them); returns the value
    /// found.
    #[inline]
    pub fn compare_exchange_u32(
        &self,
        offset: usize,
        current: u32,
        new: u32,
    ) -> Result<Result<u32, u32>, BadAccess> {
        Ok(self.atomic_u32(offset)?.compare_exchange(
            current,
            new,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ))
    }

    /// Copies all of `src` to `offset` of `self` in bulk (plain `memcpy`).
    ///
    /// For payload only (disk blocks, packets, copied grants): the bytes are
    /// moved, never interpreted, so a peer changing them mid-copy can only
    /// tear the data it owns, as DMA would. Control structures go through
    /// [`read_obj`](Self::read_obj) instead.
    #[inline]
    pub fn copy_from(&self, offset: usize, src: &VolatileSlice<'_>) -> Result<(), BadAccess> {
        let dst = self.check(offset, src.len, 1)?;
        // SAFETY: `check` proved the destination range is inside our
        // mapping, `src` covers `src.len` bytes of its own mapping; the two
        // may overlap (same frame mapped twice), so `copy` (memmove) is used.
        unsafe { core::ptr::copy(src.ptr.as_ptr(), dst.as_ptr(), src.len) };
        Ok(())
    }

    /// The address of the first byte, for the system calls that map and
    /// unmap memory; never dereferenced as a reference.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Compare-and-swap of the aligned `u16` at `offset` (a grant entry's
    /// `flags`); returns the value found.
    #[inline]
    pub fn compare_exchange_u16(
        &self,
        offset: usize,
        current: u16,
        new: u16,
    ) -> Result<Result<u16, u16>, BadAccess> {
        Ok(self.atomic_u16(offset)?.compare_exchange(
            current,
            new,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ))
    }
}

#[derive(Clone, Copy)]
enum Dir {
    FromShared,
    ToShared,
}

/// Copies `len` bytes with volatile accesses on the shared side, eight bytes
/// at a time where both sides allow it.
#[inline]
fn copy_volatile(src: *mut u8, dst: *mut u8, len: usize, dir: Dir) {
    let mut i = 0;
    let aligned = (src as usize) % 8 == (dst as usize) % 8;
    if aligned {
        while i < len && (src as usize + i) % 8 != 0 {
            copy_one::<u8>(src, dst, i, dir);
            i += 1;
        }
        while i + 8 <= len {
            copy_one::<u64>(src, dst, i, dir);
            i += 8;
        }
    }
    while i < len {
        copy_one::<u8>(src, dst, i, dir);
        i += 1;
    }
}

#[inline(always)]
fn copy_one<T: Copy>(src: *mut u8, dst: *mut u8, i: usize, dir: Dir) {
    // SAFETY: the callers checked that `src..src+len` and `dst..dst+len` are
    // valid, and `copy_volatile` only passes offsets `i` with
    // `i + size_of::<T>() <= len`, aligned for `T` when `T` is wider than a
    // byte. Shared memory is touched only by volatile accesses.
    unsafe {
        let s = src.add(i).cast::<T>();
        let d = dst.add(i).cast::<T>();
        match dir {
            Dir::FromShared => d.write(s.read_volatile()),
            Dir::ToShared => d.write_volatile(s.read()),
        }
    }
}

/// Page-aligned, zeroed memory we own, seen through a [`VolatileSlice`]:
/// what tests, fuzz targets and single-process loopbacks use as "shared"
/// memory.
pub struct OwnedMem {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: the memory is only reached through `VolatileSlice`, which is sound
// to use from any thread.
unsafe impl Send for OwnedMem {}
// SAFETY: as above.
unsafe impl Sync for OwnedMem {}

impl OwnedMem {
    /// Allocates `len` zeroed bytes aligned to 4 KiB. `len` of 0 is rounded
    /// up to one byte.
    pub fn new(len: usize) -> OwnedMem {
        let layout = match std::alloc::Layout::from_size_align(len.max(1), 4096) {
            Ok(l) => l,
            Err(_) => std::alloc::handle_alloc_error(std::alloc::Layout::new::<u8>()),
        };
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        OwnedMem { ptr, layout }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Whether it has no bytes (never: it has at least one).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The whole memory as a volatile slice.
    pub fn as_volatile(&self) -> VolatileSlice<'_> {
        // SAFETY: we own the allocation for as long as the slice borrows us,
        // and never hand out a reference to its bytes.
        unsafe { VolatileSlice::new(self.ptr, self.layout.size()) }
    }

    /// A snapshot of its bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len()];
        // The range is exactly the whole memory, so this cannot fail.
        let _ = self.as_volatile().read_bytes(0, &mut v);
        v
    }
}

impl Drop for OwnedMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

impl core::fmt::Debug for OwnedMem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OwnedMem")
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subslice_is_found_where_it_was_taken_and_nowhere_else() {
        let m = OwnedMem::new(8192);
        let s = m.as_volatile();
        let part = s.subslice(4100, 10).unwrap();
        assert_eq!(s.offset_of(&part), Some(4100));
        assert_eq!(s.offset_of(&s.subslice(8192, 0).unwrap()), Some(8192));
        let head = s.subslice(0, 4096).unwrap();
        assert_eq!(head.offset_of(&part), None, "past its end");
        assert_eq!(part.offset_of(&head), None, "before its start");
        let other = OwnedMem::new(4096);
        assert_eq!(s.offset_of(&other.as_volatile()), None);
    }

    #[test]
    fn out_of_bounds_access_is_refused() {
        let m = OwnedMem::new(4096);
        let s = m.as_volatile();
        assert!(s.read_obj::<u64>(4090).is_err());
        assert!(s.write_bytes(4096, &[1]).is_err());
        assert!(s.subslice(usize::MAX, 2).is_err());
        assert!(
            s.load_u32(2, Ordering::Relaxed).is_err(),
            "misaligned atomic"
        );
    }

    #[test]
    fn fill_writes_exactly_its_range_at_any_alignment() {
        let m = OwnedMem::new(256);
        let s = m.as_volatile();
        for (off, len) in [(0, 0), (0, 256), (1, 7), (3, 30), (7, 9), (8, 16), (5, 200)] {
            s.fill(0, 256, 0xaa).unwrap();
            s.fill(off, len, 0x11).unwrap();
            let v = m.to_vec();
            for (i, b) in v.iter().enumerate() {
                let inside = i >= off && i < off + len;
                assert_eq!(
                    *b,
                    if inside { 0x11 } else { 0xaa },
                    "fill({off}, {len}) at {i}"
                );
            }
        }
        assert!(s.fill(250, 7, 0).is_err());
    }

    #[test]
    fn objects_round_trip_at_any_offset() {
        let m = OwnedMem::new(4096);
        let s = m.as_volatile();
        for off in 0..17 {
            s.write_obj(off, &0x0102_0304_0506_0708u64).unwrap();
            assert_eq!(s.read_obj::<u64>(off).unwrap(), 0x0102_0304_0506_0708);
        }
        let mut big = [0u8; 100];
        s.write_bytes(3, &[7; 100]).unwrap();
        s.read_bytes(3, &mut big).unwrap();
        assert_eq!(big, [7; 100]);
    }

    #[test]
    fn compare_exchange_reports_the_value_found() {
        let m = OwnedMem::new(8);
        let s = m.as_volatile();
        s.store_u16(2, 5, Ordering::Relaxed).unwrap();
        assert_eq!(s.compare_exchange_u16(2, 4, 9).unwrap(), Err(5));
        assert_eq!(s.compare_exchange_u16(2, 5, 9).unwrap(), Ok(5));
        assert_eq!(s.load_u16(2, Ordering::Relaxed).unwrap(), 9);
    }
}
