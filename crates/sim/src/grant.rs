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

use std::sync::atomic::Ordering;

use abi::grant_table::{GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_TYPE_MASK, GTF_WRITING};
use abi::{DomId, GrantRef, Mfn, Pfn, VolatileSlice};
use platform::GntStatus;

use crate::layout::{self, slot, Control, ENTRIES_PER_FRAME};

const PAGE: u64 = abi::ring::XEN_PAGE_SIZE as u64;
const LOCK: u32 = 1 << 31;
const PIN_MASK: u32 = 0x7fff;
const WRITE_SHIFT: u32 = 15;
/// Xen gives up on an entry the granter keeps changing after this many tries.
const CAS_RETRIES: usize = 4;

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
            if flags & (GTF_READING | GTF_WRITING) != 0 {
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

/// A pinned grant: where its frame is, and where its entries are so that
/// [`Hypervisor::release`] need not look them up again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinned {
    /// The granted machine frame.
    pub mfn: Mfn,
    shared: usize,
    active: usize,
    writable: bool,
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

    /// `domid`'s P2M entry for `pfn`.
    pub fn p2m(&self, domid: DomId, pfn: Pfn) -> Option<Mfn> {
        self.slot_p2m(self.slot(domid, true)?, pfn)
    }

    fn slot_p2m(&self, s: usize, pfn: Pfn) -> Option<Mfn> {
        let pages = self
            .control
            .load_u64(s + slot::NR_PAGES, Ordering::Acquire)
            .ok()?;
        if pfn.0 >= pages {
            return None;
        }
        let mfn = self
            .control
            .load_u64(s + slot::P2M + pfn.0 as usize * 8, Ordering::Acquire)
            .ok()?;
        Some(Mfn(mfn))
    }

    fn entry(&self, s: usize, gref: GrantRef) -> Result<(usize, usize), GntStatus> {
        let frames = self
            .control
            .load_u32(s + slot::NR_GRANT_FRAMES, Ordering::Acquire)
            .map_err(|_| GntStatus::GENERAL_ERROR)? as usize;
        let g = gref.0 as usize;
        if g >= frames * ENTRIES_PER_FRAME {
            return Err(GntStatus::BAD_GNTREF);
        }
        let frame = self
            .control
            .load_u64(
                s + slot::GRANT_FRAMES + (g / ENTRIES_PER_FRAME) * 8,
                Ordering::Acquire,
            )
            .map_err(|_| GntStatus::GENERAL_ERROR)?;
        let shared = frame as usize * PAGE as usize + (g % ENTRIES_PER_FRAME) * 8;
        let active = s + slot::ACTIVE + g * slot::ACTIVE_ENTRY;
        Ok((shared, active))
    }

    fn lock(&self, active: usize) -> Result<u32, GntStatus> {
        let mut spins = 0u32;
        loop {
            let cur = self
                .control
                .load_u32(active, Ordering::Relaxed)
                .map_err(|_| GntStatus::GENERAL_ERROR)?;
            if cur & LOCK == 0 {
                if let Ok(Ok(_)) = self.control.compare_exchange_u32(active, cur, cur | LOCK) {
                    return Ok(cur);
                }
            }
            spins += 1;
            if spins % 64 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    fn unlock(&self, active: usize, pins: u32) {
        let _ = self
            .control
            .store_u32(active, pins & !LOCK, Ordering::Release);
    }

    /// Sets `bits` in the shared entry's flags after checking that it is a
    /// `permit_access` grant to `mapper` (and writable if `GTF_WRITING` is
    /// asked for), swapping flags and domid together. Returns the frame.
    fn set_status(&self, shared: usize, mapper: DomId, bits: u16) -> Result<u32, GntStatus> {
        let e = |_| GntStatus::GENERAL_ERROR;
        let mut combo = self
            .machine
            .load_u32(shared, Ordering::Acquire)
            .map_err(e)?;
        for _ in 0..CAS_RETRIES {
            let (flags, domid) = (combo as u16, (combo >> 16) as u16);
            if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS || domid != mapper.0 {
                return Err(GntStatus::GENERAL_ERROR);
            }
            if bits & GTF_WRITING != 0 && flags & GTF_READONLY != 0 {
                return Err(GntStatus::GENERAL_ERROR);
            }
            let new = combo | u32::from(bits);
            match self
                .machine
                .compare_exchange_u32(shared, combo, new)
                .map_err(e)?
            {
                Ok(_) => {
                    // The frame is read after the flags are ours, as Xen does.
                    return self
                        .machine
                        .load_u32(shared + 4, Ordering::Acquire)
                        .map_err(e);
                }
                Err(now) => combo = now,
            }
        }
        Err(GntStatus::GENERAL_ERROR)
    }

    fn clear_status(&self, shared: usize, bits: u16) {
        let mut flags = match self.machine.load_u16(shared, Ordering::Acquire) {
            Ok(f) => f,
            Err(_) => return,
        };
        // The granter cannot clear these bits itself (end_access refuses
        // while they are set), so this loop ends when no one else races.
        for _ in 0..1024 {
            match self
                .machine
                .compare_exchange_u16(shared, flags, flags & !bits)
            {
                Ok(Ok(_)) | Err(_) => return,
                Ok(Err(now)) => flags = now,
            }
        }
    }

    /// Pins `granter`'s grant `gref` for `mapper`, read-only or writable:
    /// `GNTTABOP_map_grant_ref` without the page-table part.
    pub fn pin(
        &self,
        granter: DomId,
        gref: GrantRef,
        mapper: DomId,
        writable: bool,
    ) -> Result<Pinned, GntStatus> {
        let s = self.slot(granter, false).ok_or(GntStatus::BAD_DOMAIN)?;
        let (shared, active) = self.entry(s, gref)?;
        let pins = self.lock(active)?;
        let result = self.pin_locked(s, shared, active, pins, mapper, writable);
        match result {
            Ok((new_pins, mfn)) => {
                self.unlock(active, new_pins);
                Ok(Pinned {
                    mfn,
                    shared,
                    active,
                    writable,
                })
            }
            Err(e) => {
                self.unlock(active, pins);
                Err(e)
            }
        }
    }

    fn pin_locked(
        &self,
        s: usize,
        shared: usize,
        active: usize,
        pins: u32,
        mapper: DomId,
        writable: bool,
    ) -> Result<(u32, Mfn), GntStatus> {
        let e = |_| GntStatus::GENERAL_ERROR;
        let readers = pins & PIN_MASK;
        let writers = (pins >> WRITE_SHIFT) & PIN_MASK;
        if readers == PIN_MASK {
            return Err(GntStatus::NO_SPACE);
        }
        let mfn = if readers == 0 {
            let bits = GTF_READING | if writable { GTF_WRITING } else { 0 };
            let frame = self.set_status(shared, mapper, bits)?;
            let Some(mfn) = self.slot_p2m(s, Pfn(u64::from(frame))) else {
                self.clear_status(shared, bits);
                return Err(GntStatus::BAD_PAGE);
            };
            self.control
                .store_u32(active + 4, u32::from(mapper.0), Ordering::Relaxed)
                .map_err(e)?;
            self.control
                .store_u64(active + 8, mfn.0, Ordering::Relaxed)
                .map_err(e)?;
            mfn
        } else {
            let holder = self
                .control
                .load_u32(active + 4, Ordering::Relaxed)
                .map_err(e)?;
            if holder != u32::from(mapper.0) {
                return Err(GntStatus::GENERAL_ERROR);
            }
            if writable && writers == 0 {
                self.set_status(shared, mapper, GTF_WRITING)?;
            }
            Mfn(self
                .control
                .load_u64(active + 8, Ordering::Relaxed)
                .map_err(e)?)
        };
        let new = (readers + 1) | ((writers + u32::from(writable)) << WRITE_SHIFT);
        Ok((new, mfn))
    }

    /// Drops one pin taken by [`pin`](Self::pin) with the same `writable`;
    /// clears the status bits when the last pin of their kind goes. Works on
    /// a dying domain too: its frames stay until every pin is gone.
    pub fn unpin(&self, granter: DomId, gref: GrantRef, writable: bool) {
        let Some(s) = self.slot(granter, true) else {
            return;
        };
        let Ok((shared, active)) = self.entry(s, gref) else {
            return;
        };
        self.unpin_at(shared, active, writable);
    }

    /// Drops the pin `p` (no lookup, unlike [`unpin`](Self::unpin)).
    pub fn release(&self, p: &Pinned) {
        self.unpin_at(p.shared, p.active, p.writable);
    }

    fn unpin_at(&self, shared: usize, active: usize, writable: bool) {
        let Ok(pins) = self.lock(active) else { return };
        let readers = pins & PIN_MASK;
        let writers = (pins >> WRITE_SHIFT) & PIN_MASK;
        if readers == 0 || (writable && writers == 0) {
            self.unlock(active, pins);
            return;
        }
        let (readers, writers) = (readers - 1, writers - u32::from(writable));
        let mut clear = 0;
        if writers == 0 && writable {
            clear |= GTF_WRITING;
        }
        if readers == 0 {
            clear |= GTF_READING | GTF_WRITING;
        }
        if clear != 0 {
            self.clear_status(shared, clear);
        }
        self.unlock(active, readers | (writers << WRITE_SHIFT));
    }
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
    fn refusals_follow_xen() {
        let f = Fixture::new();
        let (hv, t) = (f.hv(), f.table());
        t.grant(GrantRef(1), DomId(2), Pfn(0), true).unwrap();
        assert_eq!(
            hv.pin(DomId(1), GrantRef(1), DomId(2), true),
            Err(GntStatus::GENERAL_ERROR),
            "rw of ro"
        );
        assert_eq!(
            hv.pin(DomId(1), GrantRef(1), DomId(3), false),
            Err(GntStatus::GENERAL_ERROR),
            "wrong domain"
        );
        assert_eq!(
            hv.pin(DomId(1), GrantRef(999), DomId(2), false),
            Err(GntStatus::BAD_GNTREF)
        );
        assert_eq!(
            hv.pin(DomId(7), GrantRef(1), DomId(2), false),
            Err(GntStatus::BAD_DOMAIN)
        );
        t.grant(GrantRef(2), DomId(2), Pfn(8), false).unwrap();
        assert_eq!(
            hv.pin(DomId(1), GrantRef(2), DomId(2), false),
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
}
