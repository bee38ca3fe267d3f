//! Grant tables v1, as Xen runs them, over machine memory and the control
//! area: what a hypervisor does on `GNTTABOP_map_grant_ref`, `unmap` and
//! `copy`, done in place by privileged (dom0) processes.
//!
//! The granter writes `domid` and `frame`, then `flags` behind a barrier.
//! The mapper, under the entry's lock in the active table (Xen's
//! `active_grant_entry`), checks the type and the domain and sets
//! `GTF_reading`/`GTF_writing` with one compare-and-swap of `flags` and
//! `domid` together, retrying a bounded number of times if the granter keeps
//! changing them. Pins are counted per entry, so the bits are cleared only
//! when the last mapping goes; the granter's `end_access` fails while they
//! are set.
//!
//! A copy between one grant and a page of ours, the usual `GNTTABOP_copy`,
//! takes no lock when the grant is not mapped: it *claims* the entry by
//! setting `GTF_reading` (and `GTF_writing` for a write) with one
//! compare-and-swap that expects neither status bit set, copies, and clears
//! them. Whoever set the bits of an
//! unpinned entry owns them, so a pin (or a second copy) that finds them
//! set with no pins counted waits, boundedly, for the claim to end instead
//! of adopting bits someone else will clear. Xen would adopt bits its guest
//! set itself; here a granter that sets its own status bits only makes its
//! own grants fail to map.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use abi::grant_table::{GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_TYPE_MASK, GTF_WRITING};
use abi::{DomId, GrantRef, Mfn, Pfn, VolatileSlice};
use platform::GntStatus;

use crate::layout::{self, slot, Control, ENTRIES_PER_FRAME};

const PAGE: u64 = abi::ring::XEN_PAGE_SIZE as u64;
const LOCK: u32 = 1 << 31;
const PIN_MASK: u32 = 0x7fff;
const WRITE_SHIFT: u32 = 15;
/// The shared flags' status bits, set while an entry is in use.
const STATUS: u16 = GTF_READING | GTF_WRITING;
/// Xen gives up on an entry the granter keeps changing after this many tries.
const CAS_RETRIES: usize = 4;
/// How long a pin waits for a copy's claim on an unpinned entry to end:
/// spins, then yields up to `CLAIM_WAITS` tries in all (~0.1 ms).
const CLAIM_SPINS: u32 = 64;
const CLAIM_WAITS: u32 = CLAIM_SPINS + 256;

/// The granter's side: its own grant-table frames, mapped as one range.
pub struct GrantTableView<'a> {
    table: VolatileSlice<'a>,
}

impl<'a> GrantTableView<'a> {
    /// The table in `table` (its frames in order).
    pub fn new(table: VolatileSlice<'a>) -> Self {
        GrantTableView { table }
    }

    /// Entries in the table.
    pub fn entries(&self) -> u32 {
        (self.table.len() / 8) as u32
    }

    /// Grants `to` access to `frame`: domid and frame first, flags last.
    pub fn grant(
        &self,
        gref: GrantRef,
        to: DomId,
        frame: Pfn,
        readonly: bool,
    ) -> Result<(), GntStatus> {
        let off = self.offset(gref)?;
        let frame = u32::try_from(frame.0).map_err(|_| GntStatus::BAD_PAGE)?;
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        let e = |_| GntStatus::GENERAL_ERROR;
        self.table
            .store_u16(off + 2, to.0, Ordering::Relaxed)
            .map_err(e)?;
        self.table
            .store_u32(off + 4, frame, Ordering::Relaxed)
            .map_err(e)?;
        // wmb(): the grantee must see domid and frame before the flags.
        self.table
            .store_u16(off, flags, Ordering::Release)
            .map_err(e)?;
        Ok(())
    }

    /// Ends a grant unless the grantee still uses it (as Linux's
    /// `gnttab_end_foreign_access_ref`): `Ok(false)` while in use.
    pub fn end_access(&self, gref: GrantRef) -> Result<bool, GntStatus> {
        let off = self.offset(gref)?;
        let e = |_| GntStatus::GENERAL_ERROR;
        let mut flags = self.table.load_u16(off, Ordering::Acquire).map_err(e)?;
        loop {
            if flags & STATUS != 0 {
                return Ok(false);
            }
            match self.table.compare_exchange_u16(off, flags, 0).map_err(e)? {
                Ok(_) => return Ok(true),
                Err(now) => flags = now,
            }
        }
    }

    /// The entry's flags, for tests and debugging.
    pub fn flags(&self, gref: GrantRef) -> Result<u16, GntStatus> {
        let off = self.offset(gref)?;
        self.table
            .load_u16(off, Ordering::Acquire)
            .map_err(|_| GntStatus::GENERAL_ERROR)
    }

    fn offset(&self, gref: GrantRef) -> Result<usize, GntStatus> {
        if gref.0 >= self.entries() {
            return Err(GntStatus::BAD_GNTREF);
        }
        Ok(gref.0 as usize * 8)
    }
}

/// The hypervisor's side, for mappers: the control area and all of machine
/// memory.
pub struct Hypervisor<'a> {
    control: VolatileSlice<'a>,
    machine: VolatileSlice<'a>,
    geometry: Control,
}

/// A granting domain as a mapper sees it: its slot in the control area,
/// looked up once for a batch of operations.
#[derive(Clone, Copy, Debug)]
pub struct Granter {
    slot: usize,
    entries: u32,
    pages: u64,
    /// The first grant frame, which holds the references a batch mostly
    /// uses (0..512).
    frame0: u64,
}

/// A pinned grant: where its frame is, and the words to release it by.
#[derive(Clone, Copy, Debug)]
pub struct Pinned<'a> {
    /// The granted machine frame.
    pub mfn: Mfn,
    combo: &'a AtomicU32,
    active: &'a AtomicU32,
    writable: bool,
}

/// One grant entry's words, looked up once.
/// A copy's claim on an unmapped grant (`Hypervisor::claim_for_copy`):
/// its status bits are set until it is dropped, a panic included.
#[must_use]
struct Claim<'a> {
    combo: &'a AtomicU32,
    bits: u16,
    /// The grant's frame.
    mfn: Mfn,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        clear_status(self.combo, self.bits);
    }
}

struct Entry<'a> {
    combo: &'a AtomicU32,
    frame: &'a AtomicU32,
    /// The active entry's offset in the control area (its first word is
    /// the entry's lock: [`lock_of`](Hypervisor::lock_of)).
    active: usize,
}

fn bad<T>(_: T) -> GntStatus {
    GntStatus::GENERAL_ERROR
}

impl<'a> Hypervisor<'a> {
    /// The view over a control area of `geometry` and machine memory.
    pub fn new(control: VolatileSlice<'a>, machine: VolatileSlice<'a>, geometry: Control) -> Self {
        Hypervisor {
            control,
            machine,
            geometry,
        }
    }

    /// All of machine memory.
    pub fn machine(&self) -> VolatileSlice<'a> {
        self.machine
    }

    /// The offset of `domid`'s slot if the domain is alive (or, with
    /// `dying_ok`, a zombie).
    pub fn slot(&self, domid: DomId, dying_ok: bool) -> Option<usize> {
        let idx = self
            .control
            .load_u16(self.geometry.slot_of(domid.0), Ordering::Acquire)
            .ok()?;
        let i = u32::from(idx).checked_sub(1)?;
        if i >= self.geometry.max_slots {
            return None;
        }
        let s = self.geometry.slot(i);
        let state = self
            .control
            .load_u32(s + slot::STATE, Ordering::Acquire)
            .ok()?;
        let owner = self
            .control
            .load_u32(s + slot::DOMID, Ordering::Acquire)
            .ok()?;
        let ok = state == layout::STATE_ALIVE || (dying_ok && state == layout::STATE_DYING);
        (ok && owner == u32::from(domid.0)).then_some(s)
    }

    /// `domid` as a granter, if it is alive (or, with `dying_ok`, a zombie).
    pub fn granter(&self, domid: DomId, dying_ok: bool) -> Option<Granter> {
        let s = self.slot(domid, dying_ok)?;
        let frames = self
            .control
            .load_u32(s + slot::NR_GRANT_FRAMES, Ordering::Acquire)
            .ok()?;
        let frames = frames.min(layout::MAX_GRANT_FRAMES as u32);
        let pages = self
            .control
            .load_u64(s + slot::NR_PAGES, Ordering::Acquire)
            .ok()?;
        let frame0 = self
            .control
            .load_u64(s + slot::GRANT_FRAMES, Ordering::Acquire)
            .ok()?;
        Some(Granter {
            slot: s,
            entries: frames * ENTRIES_PER_FRAME as u32,
            pages,
            frame0,
        })
    }

    /// `domid`'s P2M entry for `pfn`.
    pub fn p2m(&self, domid: DomId, pfn: Pfn) -> Option<Mfn> {
        self.granter_p2m(&self.granter(domid, true)?, pfn)
    }

    fn granter_p2m(&self, g: &Granter, pfn: Pfn) -> Option<Mfn> {
        if pfn.0 >= g.pages {
            return None;
        }
        let mfn = self
            .control
            .load_u64(g.slot + slot::P2M + pfn.0 as usize * 8, Ordering::Acquire);
        mfn.ok().map(Mfn)
    }

    /// The words of `gref`: the shared entry (flags and domid as one word,
    /// and the frame) and where its active entry is.
    #[inline]
    fn entry(&self, g: &Granter, gref: GrantRef) -> Result<Entry<'a>, GntStatus> {
        if gref.0 >= g.entries {
            return Err(GntStatus::BAD_GNTREF);
        }
        let i = gref.0 as usize;
        let frame = match i / ENTRIES_PER_FRAME {
            0 => g.frame0,
            f => self
                .control
                .load_u64(g.slot + slot::GRANT_FRAMES + f * 8, Ordering::Acquire)
                .map_err(bad)?,
        };
        let shared = (frame as usize)
            .checked_mul(PAGE as usize)
            .and_then(|b| b.checked_add((i % ENTRIES_PER_FRAME) * 8))
            .ok_or(GntStatus::GENERAL_ERROR)?;
        let active = g.slot + slot::ACTIVE + i * slot::ACTIVE_ENTRY;
        Ok(Entry {
            combo: self.machine.atomic_u32(shared).map_err(bad)?,
            frame: self.machine.atomic_u32(shared + 4).map_err(bad)?,
            active,
        })
    }

    /// The lock word of `e`'s active entry (looked up apart: a copy's claim
    /// of an unpinned grant needs none).
    #[inline]
    fn lock_of(&self, e: &Entry<'a>) -> Result<&'a AtomicU32, GntStatus> {
        self.control.atomic_u32(e.active).map_err(bad)
    }

    /// The active entry's record of its pins: the mapper and the frame.
    #[inline]
    fn pinned_to(&self, e: &Entry<'a>) -> Result<(&'a AtomicU32, &'a AtomicU64), GntStatus> {
        Ok((
            self.control.atomic_u32(e.active + 4).map_err(bad)?,
            self.control.atomic_u64(e.active + 8).map_err(bad)?,
        ))
    }

    /// The frame of an entry whose status `bits` we just set (read after
    /// them, as Xen does); on a frame outside the granter's memory the bits
    /// are cleared again.
    #[inline]
    fn claimed_frame(&self, g: &Granter, e: &Entry<'a>, bits: u16) -> Result<Mfn, GntStatus> {
        let frame = e.frame.load(Ordering::Acquire);
        self.granter_p2m(g, Pfn(u64::from(frame))).ok_or_else(|| {
            clear_status(e.combo, bits);
            GntStatus::BAD_PAGE
        })
    }

    /// With `e`'s lock held and `pins` its count: the checks and status bits
    /// of one more use of the grant by `mapper`, shared by a pin and a copy.
    /// Returns the frame and the bits this use set (none if earlier pins
    /// had set them already).
    #[inline]
    fn take(
        &self,
        g: &Granter,
        e: &Entry<'a>,
        pins: u32,
        mapper: DomId,
        writable: bool,
    ) -> Result<(Mfn, u16), GntStatus> {
        let (readers, writers) = pin_counts(pins);
        if readers == PIN_MASK {
            return Err(GntStatus::NO_SPACE);
        }
        if readers == 0 {
            let bits = status_bits(writable);
            if !claim(e.combo, mapper, bits, true)? {
                return Err(GntStatus::GENERAL_ERROR);
            }
            return self.claimed_frame(g, e, bits).map(|mfn| (mfn, bits));
        }
        let (mapper_word, mfn_word) = self.pinned_to(e)?;
        if mapper_word.load(Ordering::Relaxed) != u32::from(mapper.0) {
            return Err(GntStatus::GENERAL_ERROR);
        }
        let bits = if writable && writers == 0 {
            set_status(e.combo, mapper, GTF_WRITING)?;
            GTF_WRITING
        } else {
            0
        };
        Ok((Mfn(mfn_word.load(Ordering::Relaxed)), bits))
    }

    /// Pins `granter`'s grant `gref` for `mapper`, read-only or writable:
    /// `GNTTABOP_map_grant_ref` without the page-table part.
    pub fn pin(
        &self,
        granter: DomId,
        gref: GrantRef,
        mapper: DomId,
        writable: bool,
    ) -> Result<Pinned<'a>, GntStatus> {
        let g = self.granter(granter, false).ok_or(GntStatus::BAD_DOMAIN)?;
        self.pin_in(&g, gref, mapper, writable)
    }

    /// [`pin`](Self::pin) with the granter already looked up (alive at
    /// the lookup: a batch that began before the granter's death finishes,
    /// its frames kept by the caller's hold).
    pub fn pin_in(
        &self,
        g: &Granter,
        gref: GrantRef,
        mapper: DomId,
        writable: bool,
    ) -> Result<Pinned<'a>, GntStatus> {
        let e = self.entry(g, gref)?;
        let lock = self.lock_of(&e)?;
        let pins = lock_entry(lock);
        let taken = self
            .take(g, &e, pins, mapper, writable)
            .and_then(|(mfn, bits)| {
                if pins & PIN_MASK != 0 {
                    return Ok(mfn);
                }
                // The first pin records who holds the entry and its frame.
                let recorded = self.pinned_to(&e).map(|(mapper_word, mfn_word)| {
                    mapper_word.store(u32::from(mapper.0), Ordering::Relaxed);
                    mfn_word.store(mfn.0, Ordering::Relaxed);
                    mfn
                });
                if recorded.is_err() {
                    clear_status(e.combo, bits);
                }
                recorded
            });
        let new = match taken {
            Ok(_) => {
                let (readers, writers) = pin_counts(pins);
                (readers + 1) | ((writers + u32::from(writable)) << WRITE_SHIFT)
            }
            Err(_) => pins,
        };
        lock.store(new, Ordering::Release);
        taken.map(|mfn| Pinned {
            mfn,
            combo: e.combo,
            active: lock,
            writable,
        })
    }

    /// Claims `granter`'s grant `gref` for one copy by `mapper`, without
    /// the entry's lock: the grant's frame is the copy's until the claim
    /// is dropped (the granter's `end_access` fails meanwhile). `None` if
    /// the grant is mapped or claimed already: then
    /// [`with_grant`](Self::with_grant) takes it under the lock, or waits
    /// for the claim. (Claiming a batch's grants all at once, then copying,
    /// then dropping the claims was measured slower: 30 ns a copy against
    /// 17.) Always inlined: as a call, its result went through memory and
    /// a copy cost 24 ns.
    #[inline(always)]
    fn claim_for_copy(
        &self,
        g: &Granter,
        gref: GrantRef,
        mapper: DomId,
        writable: bool,
    ) -> Result<Option<Claim<'a>>, GntStatus> {
        let e = self.entry(g, gref)?;
        let bits = status_bits(writable);
        if !claim(e.combo, mapper, bits, false)? {
            return Ok(None);
        }
        let mfn = self.claimed_frame(g, &e, bits)?;
        Ok(Some(Claim {
            combo: e.combo,
            bits,
            mfn,
        }))
    }

    /// Runs `f` on the frame of `granter`'s grant `gref` with the status
    /// bits set as for a pin (so the granter's `end_access` fails
    /// meanwhile): what a single `GNTTABOP_copy` needs. An unmapped grant is
    /// claimed without the entry's lock, in two atomic operations where a
    /// pin and its release take four; a mapped one (or one another copy
    /// holds) is used under the lock. `f` must not take another entry's
    /// lock (a copy between two grants pins them instead).
    #[inline]
    pub fn with_grant<R>(
        &self,
        g: &Granter,
        gref: GrantRef,
        mapper: DomId,
        writable: bool,
        f: impl FnOnce(Mfn) -> R,
    ) -> Result<R, GntStatus> {
        if let Some(c) = self.claim_for_copy(g, gref, mapper, writable)? {
            return Ok(f(c.mfn));
        }
        let e = self.entry(g, gref)?;
        let lock = self.lock_of(&e)?;
        let pins = lock_entry(lock);
        let result = self.take(g, &e, pins, mapper, writable).map(|(mfn, bits)| {
            let r = f(mfn);
            if bits != 0 {
                clear_status(e.combo, bits);
            }
            r
        });
        lock.store(pins, Ordering::Release);
        result
    }

    /// Drops one pin taken by [`pin`](Self::pin) with the same `writable`;
    /// clears the status bits when the last pin of their kind goes. Works on
    /// a dying domain too: its frames stay until every pin is gone.
    pub fn unpin(&self, granter: DomId, gref: GrantRef, writable: bool) {
        let Some(g) = self.granter(granter, true) else {
            return;
        };
        let Ok(e) = self.entry(&g, gref) else {
            return;
        };
        let Ok(lock) = self.lock_of(&e) else {
            return;
        };
        unpin_words(e.combo, lock, writable);
    }

    /// [`unpin`](Self::unpin), for the hypervisor, which must not wait on
    /// an entry's lock (a process descheduled in it, or dead in it, holds
    /// it): `false` if the lock was not free within a few tries, to be
    /// tried again; `true` once done, or if there is nothing to unpin (no
    /// such granter or entry).
    pub fn try_unpin(&self, granter: DomId, gref: GrantRef, writable: bool) -> bool {
        let Some(g) = self.granter(granter, true) else {
            return true;
        };
        let Ok(e) = self.entry(&g, gref) else {
            return true;
        };
        let Ok(lock) = self.lock_of(&e) else {
            return true;
        };
        match try_lock_entry(lock, 64) {
            Some(pins) => {
                unpin_locked(e.combo, lock, pins, writable);
                true
            }
            None => false,
        }
    }

    /// Drops the pin `p` (no lookup, unlike [`unpin`](Self::unpin)).
    pub fn release(&self, p: &Pinned<'_>) {
        unpin_words(p.combo, p.active, p.writable);
    }
}

/// The read and write pins counted in an active entry's lock word.
#[inline]
fn pin_counts(pins: u32) -> (u32, u32) {
    (pins & PIN_MASK, (pins >> WRITE_SHIFT) & PIN_MASK)
}

#[inline]
fn lock_entry(lock: &AtomicU32) -> u32 {
    loop {
        if let Some(pins) = try_lock_entry(lock, u32::MAX) {
            return pins;
        }
    }
}

/// Tries for an entry's lock at most ~`tries` times (yielding every 64);
/// the pin counts it held if taken.
#[inline]
fn try_lock_entry(lock: &AtomicU32, tries: u32) -> Option<u32> {
    for spins in 1..=tries {
        let cur = lock.load(Ordering::Relaxed);
        if cur & LOCK == 0
            && lock
                .compare_exchange_weak(cur, cur | LOCK, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return Some(cur);
        }
        if spins % 64 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    None
}

/// Whether the shared entry `cur` is a `permit_access` grant to `mapper`,
/// and writable if `bits` include `GTF_WRITING`.
#[inline]
fn check(cur: u32, mapper: DomId, bits: u16) -> Result<(), GntStatus> {
    let (flags, domid) = (cur as u16, (cur >> 16) as u16);
    if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS || domid != mapper.0 {
        return Err(GntStatus::GENERAL_ERROR);
    }
    if bits & GTF_WRITING != 0 && flags & GTF_READONLY != 0 {
        return Err(GntStatus::GENERAL_ERROR);
    }
    Ok(())
}

/// The status bits a use of a grant sets.
#[inline]
fn status_bits(writable: bool) -> u16 {
    GTF_READING | if writable { GTF_WRITING } else { 0 }
}

/// Sets `bits` in the shared flags of a pinned entry after [`check`]ing
/// it, swapping flags and domid together.
#[inline]
fn set_status(combo: &AtomicU32, mapper: DomId, bits: u16) -> Result<(), GntStatus> {
    let mut cur = combo.load(Ordering::Acquire);
    for _ in 0..CAS_RETRIES {
        check(cur, mapper, bits)?;
        match combo.compare_exchange(
            cur,
            cur | u32::from(bits),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Ok(()),
            Err(now) => cur = now,
        }
    }
    Err(GntStatus::GENERAL_ERROR)
}

/// Claims an entry with no pins: sets `bits` (`GTF_READING`, and
/// `GTF_WRITING` for a write) with one compare-and-swap that expects
/// neither status bit set, after [`check`]ing it. `Ok(false)` if someone
/// holds the bits: at once without `wait`; with it, after waiting for them
/// a bounded time (a copy's claim lasts one `memcpy`; a granter that set
/// its own bits is not waited for longer).
#[inline]
fn claim(combo: &AtomicU32, mapper: DomId, bits: u16, wait: bool) -> Result<bool, GntStatus> {
    let mut cur = combo.load(Ordering::Acquire);
    let (mut changes, mut waits) = (0, 0);
    loop {
        check(cur, mapper, bits)?;
        if cur as u16 & STATUS != 0 {
            if !wait || waits == CLAIM_WAITS {
                return Ok(false);
            }
            waits += 1;
            if waits < CLAIM_SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            cur = combo.load(Ordering::Acquire);
            continue;
        }
        match combo.compare_exchange(
            cur,
            cur | u32::from(bits),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Ok(true),
            // Another claim won: waited for above, not counted against the
            // granter's changes.
            Err(now) if now as u16 & STATUS != 0 => cur = now,
            Err(_) if changes + 1 == CAS_RETRIES => return Err(GntStatus::GENERAL_ERROR),
            Err(now) => {
                changes += 1;
                cur = now;
            }
        }
    }
}

/// Clears `bits` of the shared flags: one atomic operation, so a granter
/// that keeps rewriting its entry cannot keep us looping.
fn clear_status(combo: &AtomicU32, bits: u16) {
    combo.fetch_and(!u32::from(bits), Ordering::AcqRel);
}

fn unpin_words(combo: &AtomicU32, lock: &AtomicU32, writable: bool) {
    unpin_locked(combo, lock, lock_entry(lock), writable);
}

/// [`unpin_words`] with the lock taken, `pins` the counts it held.
fn unpin_locked(combo: &AtomicU32, lock: &AtomicU32, pins: u32, writable: bool) {
    let (readers, writers) = pin_counts(pins);
    if readers == 0 || (writable && writers == 0) {
        lock.store(pins, Ordering::Release);
        return;
    }
    let (readers, writers) = (readers - 1, writers - u32::from(writable));
    let mut clear = 0;
    if writers == 0 && writable {
        clear |= GTF_WRITING;
    }
    if readers == 0 {
        clear |= STATUS;
    }
    if clear != 0 {
        clear_status(combo, clear);
    }
    lock.store(readers | (writers << WRITE_SHIFT), Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::OwnedMem;

    /// One machine of 64 frames: domain 1 (granter) owns frames 8..16 as
    /// pfns 0..8 and grant frame 20; domain 2 maps.
    struct Fixture {
        control: OwnedMem,
        machine: OwnedMem,
        geometry: Control,
    }

    impl Fixture {
        fn new() -> Fixture {
            let geometry = Control {
                machine_pages: 64,
                max_slots: 2,
            };
            let control = OwnedMem::new(geometry.len());
            let machine = OwnedMem::new(64 * 4096);
            let c = control.as_volatile();
            let s = geometry.slot(0);
            c.store_u16(geometry.slot_of(1), 1, Ordering::Relaxed)
                .unwrap();
            c.store_u32(s + slot::STATE, layout::STATE_ALIVE, Ordering::Relaxed)
                .unwrap();
            c.store_u32(s + slot::DOMID, 1, Ordering::Relaxed).unwrap();
            c.store_u64(s + slot::NR_PAGES, 8, Ordering::Relaxed)
                .unwrap();
            c.store_u32(s + slot::NR_GRANT_FRAMES, 1, Ordering::Relaxed)
                .unwrap();
            c.store_u64(s + slot::GRANT_FRAMES, 20, Ordering::Relaxed)
                .unwrap();
            for pfn in 0..8 {
                c.store_u64(s + slot::P2M + pfn * 8, 8 + pfn as u64, Ordering::Relaxed)
                    .unwrap();
            }
            Fixture {
                control,
                machine,
                geometry,
            }
        }
        fn hv(&self) -> Hypervisor<'_> {
            Hypervisor::new(
                self.control.as_volatile(),
                self.machine.as_volatile(),
                self.geometry,
            )
        }
        fn table(&self) -> GrantTableView<'_> {
            GrantTableView::new(
                self.machine
                    .as_volatile()
                    .subslice(20 * 4096, 4096)
                    .unwrap(),
            )
        }
    }

    #[test]
    fn a_pinned_grant_cannot_be_ended_until_unpinned() {
        let f = Fixture::new();
        f.table()
            .grant(GrantRef(3), DomId(2), Pfn(5), false)
            .unwrap();
        let p = f.hv().pin(DomId(1), GrantRef(3), DomId(2), true).unwrap();
        assert_eq!(p.mfn, Mfn(13));
        assert_eq!(f.table().end_access(GrantRef(3)), Ok(false));
        f.hv().unpin(DomId(1), GrantRef(3), true);
        assert_eq!(f.table().end_access(GrantRef(3)), Ok(true));
    }

    #[test]
    fn the_hypervisor_unpins_for_the_dead_but_never_waits_on_a_held_lock() {
        let f = Fixture::new();
        f.table()
            .grant(GrantRef(3), DomId(2), Pfn(5), false)
            .unwrap();
        f.hv().pin(DomId(1), GrantRef(3), DomId(2), true).unwrap();
        // A pinner that died inside the entry's lock.
        let lock = f
            .control
            .as_volatile()
            .atomic_u32(f.geometry.slot(0) + slot::ACTIVE + 3 * slot::ACTIVE_ENTRY)
            .unwrap();
        let pins = lock.fetch_or(LOCK, Ordering::AcqRel);
        assert!(!f.hv().try_unpin(DomId(1), GrantRef(3), true), "try later");
        assert_eq!(f.table().end_access(GrantRef(3)), Ok(false), "still pinned");
        lock.store(pins, Ordering::Release);
        assert!(f.hv().try_unpin(DomId(1), GrantRef(3), true));
        assert_eq!(f.table().end_access(GrantRef(3)), Ok(true));
        assert!(
            f.hv().try_unpin(DomId(7), GrantRef(3), true),
            "no such granter: nothing to do"
        );
    }

    #[test]
    fn refusals_follow_xen() {
        let f = Fixture::new();
        let (hv, t) = (f.hv(), f.table());
        t.grant(GrantRef(1), DomId(2), Pfn(0), true).unwrap();
        assert_eq!(
            hv.pin(DomId(1), GrantRef(1), DomId(2), true).map(|p| p.mfn),
            Err(GntStatus::GENERAL_ERROR),
            "rw of ro"
        );
        assert_eq!(
            hv.pin(DomId(1), GrantRef(1), DomId(3), false)
                .map(|p| p.mfn),
            Err(GntStatus::GENERAL_ERROR),
            "wrong domain"
        );
        assert_eq!(
            hv.pin(DomId(1), GrantRef(999), DomId(2), false)
                .map(|p| p.mfn),
            Err(GntStatus::BAD_GNTREF)
        );
        assert_eq!(
            hv.pin(DomId(7), GrantRef(1), DomId(2), false)
                .map(|p| p.mfn),
            Err(GntStatus::BAD_DOMAIN)
        );
        t.grant(GrantRef(2), DomId(2), Pfn(8), false).unwrap();
        assert_eq!(
            hv.pin(DomId(1), GrantRef(2), DomId(2), false)
                .map(|p| p.mfn),
            Err(GntStatus::BAD_PAGE),
            "pfn beyond P2M"
        );
        assert_eq!(
            t.flags(GrantRef(2)).unwrap() & (GTF_READING | GTF_WRITING),
            0,
            "failed pin left no bits"
        );
    }

    #[test]
    fn two_pins_need_two_unpins() {
        let f = Fixture::new();
        f.table()
            .grant(GrantRef(4), DomId(2), Pfn(1), false)
            .unwrap();
        f.hv().pin(DomId(1), GrantRef(4), DomId(2), false).unwrap();
        f.hv().pin(DomId(1), GrantRef(4), DomId(2), true).unwrap();
        f.hv().unpin(DomId(1), GrantRef(4), true);
        assert_eq!(
            f.table().flags(GrantRef(4)).unwrap() & (GTF_READING | GTF_WRITING),
            GTF_READING
        );
        f.hv().unpin(DomId(1), GrantRef(4), false);
        assert_eq!(f.table().end_access(GrantRef(4)), Ok(true));
    }

    fn status(f: &Fixture, gref: u32) -> u16 {
        f.table().flags(GrantRef(gref)).unwrap() & (GTF_READING | GTF_WRITING)
    }

    #[test]
    fn a_copy_that_panics_lets_go_of_its_grant() {
        let f = Fixture::new();
        let (hv, t) = (f.hv(), f.table());
        let g = hv.granter(DomId(1), false).unwrap();
        t.grant(GrantRef(5), DomId(2), Pfn(2), false).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            hv.with_grant(&g, GrantRef(5), DomId(2), true, |_| panic!("in the copy"))
        }));
        assert!(r.is_err());
        assert_eq!(status(&f, 5), 0, "the claim's bits went with the panic");
        assert_eq!(t.end_access(GrantRef(5)), Ok(true));
    }

    #[test]
    fn a_copy_holds_its_grant_for_the_copy_only() {
        let f = Fixture::new();
        let (hv, t) = (f.hv(), f.table());
        let g = hv.granter(DomId(1), false).unwrap();
        t.grant(GrantRef(5), DomId(2), Pfn(2), false).unwrap();
        // Unmapped: claimed for the copy, nothing left after.
        let seen = hv.with_grant(&g, GrantRef(5), DomId(2), true, |mfn| {
            (mfn, status(&f, 5), t.end_access(GrantRef(5)))
        });
        assert_eq!(seen, Ok((Mfn(10), GTF_READING | GTF_WRITING, Ok(false))));
        assert_eq!(status(&f, 5), 0);
        // Mapped read-only: a writing copy adds GTF_writing for its duration
        // and leaves the pin's GTF_reading.
        let p = hv.pin(DomId(1), GrantRef(5), DomId(2), false).unwrap();
        let seen = hv.with_grant(&g, GrantRef(5), DomId(2), true, |_| status(&f, 5));
        assert_eq!(seen, Ok(GTF_READING | GTF_WRITING));
        assert_eq!(status(&f, 5), GTF_READING);
        hv.release(&p);
        assert_eq!(t.end_access(GrantRef(5)), Ok(true));
        // Refusals as for a pin.
        t.grant(GrantRef(6), DomId(2), Pfn(3), true).unwrap();
        assert_eq!(
            hv.with_grant(&g, GrantRef(6), DomId(2), true, |_| ()),
            Err(GntStatus::GENERAL_ERROR),
            "write to ro"
        );
        assert_eq!(
            hv.with_grant(&g, GrantRef(6), DomId(3), false, |_| ()),
            Err(GntStatus::GENERAL_ERROR),
            "wrong domain"
        );
        assert_eq!(status(&f, 6), 0);
    }

    #[test]
    fn a_granter_that_sets_its_own_status_bits_only_fails_its_own_grant() {
        let f = Fixture::new();
        let (hv, t) = (f.hv(), f.table());
        let g = hv.granter(DomId(1), false).unwrap();
        t.grant(GrantRef(7), DomId(2), Pfn(4), false).unwrap();
        let combo = f
            .machine
            .as_volatile()
            .atomic_u32(20 * 4096 + 7 * 8)
            .unwrap();
        combo.fetch_or(u32::from(GTF_READING), Ordering::SeqCst);
        assert_eq!(
            hv.pin(DomId(1), GrantRef(7), DomId(2), false)
                .map(|p| p.mfn),
            Err(GntStatus::GENERAL_ERROR)
        );
        assert_eq!(
            hv.with_grant(&g, GrantRef(7), DomId(2), false, |_| ()),
            Err(GntStatus::GENERAL_ERROR)
        );
        // Its other grants are unaffected.
        t.grant(GrantRef(8), DomId(2), Pfn(5), false).unwrap();
        assert_eq!(
            hv.with_grant(&g, GrantRef(8), DomId(2), true, |m| m),
            Ok(Mfn(13))
        );
        assert_eq!(
            hv.pin(DomId(1), GrantRef(8), DomId(2), false)
                .map(|p| p.mfn),
            Ok(Mfn(13))
        );
        combo.fetch_and(!u32::from(GTF_READING), Ordering::SeqCst);
        assert_eq!(
            hv.with_grant(&g, GrantRef(7), DomId(2), false, |m| m),
            Ok(Mfn(12))
        );
    }

    /// Copies (claimed without the lock), pins and a granter that keeps
    /// ending and renewing the grant, at once: whenever the granter's
    /// `end_access` succeeds no copy or pin is using the frame, and a pin
    /// always sees its bits kept.
    #[test]
    fn copies_pins_and_end_access_race_safely() {
        use std::sync::atomic::AtomicBool;
        let f = Fixture::new();
        f.table()
            .grant(GrantRef(9), DomId(2), Pfn(6), false)
            .unwrap();
        let inside = AtomicU32::new(0);
        let stop = AtomicBool::new(false);
        // Failures are recorded, not asserted, inside the scope: a panic
        // there would leave the other threads looping.
        let (broken, ended_in_use) = (AtomicBool::new(false), AtomicBool::new(false));
        let (done, ended) = (AtomicU32::new(0), AtomicU32::new(0));
        let user = |pin: bool| {
            let hv = f.hv();
            let g = hv.granter(DomId(1), false).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let work = || {
                    inside.fetch_add(1, Ordering::SeqCst);
                    if status(&f, 9) & GTF_READING == 0 {
                        broken.store(true, Ordering::SeqCst);
                    }
                    inside.fetch_sub(1, Ordering::SeqCst);
                };
                if pin {
                    if let Ok(p) = hv.pin(DomId(1), GrantRef(9), DomId(2), true) {
                        work();
                        hv.release(&p);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                } else if hv
                    .with_grant(&g, GrantRef(9), DomId(2), true, |_| work())
                    .is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        std::thread::scope(|s| {
            let user = &user;
            s.spawn(move || user(false));
            s.spawn(move || user(false));
            s.spawn(move || user(true));
            let t = f.table();
            let start = std::time::Instant::now();
            while (ended.load(Ordering::Relaxed) < 500 || done.load(Ordering::Relaxed) < 5_000)
                && start.elapsed() < std::time::Duration::from_secs(20)
            {
                if t.end_access(GrantRef(9)) == Ok(true) {
                    if inside.load(Ordering::SeqCst) != 0 {
                        ended_in_use.store(true, Ordering::SeqCst);
                    }
                    ended.fetch_add(1, Ordering::Relaxed);
                    t.grant(GrantRef(9), DomId(2), Pfn(6), false).unwrap();
                }
                std::hint::spin_loop();
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(!broken.into_inner(), "used without status bits");
        assert!(!ended_in_use.into_inner(), "ended while in use");
        let (done, ended) = (done.into_inner(), ended.into_inner());
        assert!(done >= 5_000 && ended >= 500, "{done} uses, {ended} ends");
        assert_eq!(status(&f, 9), 0);
    }
}
