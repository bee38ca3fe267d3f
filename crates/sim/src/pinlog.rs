//! The grant pins a dom0 process holds, written where the hypervisor can
//! read them once the process is gone.
//!
//! A pin is taken in place, in the control area ([`crate::grant`]), so the
//! hypervisor does not see it; a process that dies holding one would leave
//! the grant `GTF_reading` for good, where Xen's gntdev lets go of a dead
//! process's mappings. So every dom0 connection gets a log from the hv at
//! attach: a memfd of [`SLOTS`] words, one a pin. The process writes a
//! slot after it pins; when the connection closes, the hv takes every word
//! still written (swapping in 0) and drops those pins. Whoever takes a word
//! drops its pin, exactly once: the process takes its word back
//! (compare-and-swap to 0) before it unpins, and unpins only if it got it.
//! Dying between pinning and writing leaks that pin. A process must not
//! fork and go on pinning in the child: both would hand out the same slots.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use abi::{DomId, GrantRef};

use crate::sys::Mapping;

/// Pins one dom0 connection may hold at once (mapped grant pages: 256 MiB).
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
    /// Slots given back (reused first, so the log stays short), and the
    /// first slot never used.
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
        let stored = self
            .map
            .slice()
            .store_u64(slot as usize * 8, w, Ordering::Release);
        stored.ok().map(|()| slot)
    }

    /// Takes back the pin of `gref` of `granter` recorded in `slot`:
    /// `true` if it is still ours to drop, `false` if the hv took it (and
    /// dropped it) when our connection closed.
    pub fn take_back(&self, slot: u32, granter: DomId, gref: GrantRef, writable: bool) -> bool {
        let ours = self
            .map
            .slice()
            .atomic_u64(slot as usize * 8)
            .map(|w| {
                w.compare_exchange(
                    word(granter, gref, writable),
                    0,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            })
            .unwrap_or(false);
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        s.0.push(slot);
        ours
    }
}

/// Takes every pin still written in the log of a connection that closed:
/// `file` is read to find them (a slot never written reads as zero and is
/// not allocated by the read), `map` takes each (swapped for 0).
pub fn take_all(file: &std::fs::File, map: &Mapping) -> Vec<(DomId, GrantRef, bool)> {
    use std::os::unix::fs::FileExt;
    let mut pins = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    for at in (0..LEN).step_by(chunk.len()) {
        if file.read_exact_at(&mut chunk, at as u64).is_err() {
            break;
        }
        for (i, w) in chunk.chunks_exact(8).enumerate() {
            if w.iter().all(|&b| b == 0) {
                continue;
            }
            let taken = map
                .slice()
                .atomic_u64(at + i * 8)
                .map(|w| w.swap(0, Ordering::AcqRel));
            pins.extend(taken.ok().and_then(pin_of));
        }
    }
    pins
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

    #[test]
    fn each_pin_is_taken_once_by_the_process_or_by_the_hv() {
        let fd = crate::sys::memfd("pins", LEN as u64).unwrap();
        let file = std::fs::File::from(fd.try_clone().unwrap());
        let log = PinLog::new(Mapping::shared(&fd, LEN, true).unwrap());
        let hv = Mapping::shared(&fd, LEN, true).unwrap();
        let (a, b) = ((DomId(3), GrantRef(9)), (DomId(4), GrantRef(10)));
        let sa = log.record(a.0, a.1, true).unwrap();
        let sb = log.record(b.0, b.1, false).unwrap();
        assert!(
            log.take_back(sa, a.0, a.1, true),
            "ours until the hv takes it"
        );
        assert_eq!(take_all(&file, &hv), [(b.0, b.1, false)]);
        assert!(!log.take_back(sb, b.0, b.1, false), "the hv took it");
        assert!(take_all(&file, &hv).is_empty(), "nothing twice");
        // A slot given back is handed out again.
        assert_eq!(log.record(a.0, a.1, false), Some(sb));
    }
}
