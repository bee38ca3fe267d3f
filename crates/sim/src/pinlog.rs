//! The grant pins a dom0 process holds, written where the hypervisor can
//! read them once the process is gone.
//!
//! A pin is taken in place, in the control area ([`crate::grant`]), so the
//! hypervisor does not see it; a process that dies holding one would leave
//! the grant `GTF_reading` for good, where Xen's gntdev lets go of a dead
//! process's mappings. So every dom0 connection gets a log from the hv at
//! attach: a memfd of [`SLOTS`] words, one a pin. The process writes a
//! slot after it pins and clears it before it unpins; when the connection
//! closes, the hv unpins what is still written. Dying between the two steps
//! leaks that pin, as before, and never unpins one that was not taken.

use std::sync::Mutex;

use abi::{DomId, GrantRef};

use crate::sys::Mapping;

/// Pins a dom0 process may hold at once (mapped grant pages: 256 MiB).
pub const SLOTS: usize = 65536;

/// Bytes of a log.
pub const LEN: usize = SLOTS * 8;

/// The word of a pin of `gref` of `granter`, never 0 (a free slot).
fn word(granter: DomId, gref: GrantRef, writable: bool) -> u64 {
    1 << 63 | u64::from(writable) << 62 | u64::from(granter.0) << 32 | u64::from(gref.0)
}

/// The pin a slot's word records, if any.
fn pin_of(word: u64) -> Option<(DomId, GrantRef, bool)> {
    (word >> 63 == 1).then_some((
        DomId((word >> 32) as u16),
        GrantRef(word as u32),
        word & 1 << 62 != 0,
    ))
}

/// A process's side of its log: the slots it writes.
pub struct PinLog {
    map: Mapping,
    /// Slots never used yet start at `next`; `freed` were used and given
    /// back (reused first, so the log stays short).
    slots: Mutex<(Vec<u32>, u32)>,
}

impl PinLog {
    /// The log mapped from the hv's memfd.
    pub fn new(map: Mapping) -> PinLog {
        PinLog {
            map,
            slots: Mutex::new((Vec::new(), 0)),
        }
    }

    /// Writes a pin we hold; returns its slot, or `None` if the log is
    /// full.
    pub fn record(&self, granter: DomId, gref: GrantRef, writable: bool) -> Option<u32> {
        let slot = {
            let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match s.0.pop() {
                Some(free) => free,
                None if (s.1 as usize) < SLOTS => {
                    s.1 += 1;
                    s.1 - 1
                }
                None => return None,
            }
        };
        let w = word(granter, gref, writable);
        let stored =
            self.map
                .slice()
                .store_u64(slot as usize * 8, w, std::sync::atomic::Ordering::Release);
        stored.ok().map(|()| slot)
    }

    /// Clears slot `slot` (a pin we are about to drop).
    pub fn forget(&self, slot: u32) {
        let cleared =
            self.map
                .slice()
                .store_u64(slot as usize * 8, 0, std::sync::atomic::Ordering::Release);
        if cleared.is_ok() {
            let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            s.0.push(slot);
        }
    }
}

/// The pins still written in a log whose process is gone.
pub fn recorded(log: &Mapping) -> Vec<(DomId, GrantRef, bool)> {
    let s = log.slice();
    (0..SLOTS)
        .filter_map(|i| s.load_u64(i * 8, std::sync::atomic::Ordering::Acquire).ok())
        .filter_map(pin_of)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_names_its_pin_and_zero_none() {
        for (d, r, w) in [(1, 8, true), (0x7ff0, u32::MAX, false), (0, 0, false)] {
            let got = pin_of(word(DomId(d), GrantRef(r), w));
            assert_eq!(got, Some((DomId(d), GrantRef(r), w)));
        }
        assert_eq!(pin_of(0), None);
    }
}
