//! Where the hypervisor keeps what dom0 processes read in place: the
//! control area (one memfd, mapped by dom0 only) and each domain's info
//! page (one memfd per domain, read-only to it).
//!
//! Control area: a header, a domid → slot table, then one slot per domain:
//! its state, grant-table frames, active grant entries (Xen's pin counts,
//! which only dom0 processes change) and P2M. Domain info: the binding
//! generation of each event-channel port, then the domain's own P2M.

/// `state` of a free slot.
pub const STATE_FREE: u32 = 0;
/// `state` of a live domain.
pub const STATE_ALIVE: u32 = 1;
/// `state` of a dying domain (a zombie while anything maps it).
pub const STATE_DYING: u32 = 2;

/// Grant-table frames a domain may have at most.
pub const MAX_GRANT_FRAMES: usize = abi::grant_table::DEFAULT_MAX_GRANT_FRAMES as usize;
/// Grant entries per frame.
pub const ENTRIES_PER_FRAME: usize = abi::grant_table::GRANT_ENTRIES_PER_FRAME as usize;
/// Event-channel ports per domain (2-level ABI).
pub const NR_PORTS: usize = abi::xen::EVTCHN_2L_NR_CHANNELS as usize;

const PAGE: usize = abi::ring::XEN_PAGE_SIZE;
const SLOT_OF: usize = PAGE;
const SLOTS: usize = SLOT_OF + 0x8000 * 2;

/// Offsets in one slot.
pub mod slot {
    /// `u32`: `STATE_*`.
    pub const STATE: usize = 0;
    /// `u32`: the domid.
    pub const DOMID: usize = 4;
    /// `u64`: pages of memory (P2M entries).
    pub const NR_PAGES: usize = 8;
    /// `u32`: grant-table frames.
    pub const NR_GRANT_FRAMES: usize = 16;
    /// `[u64; MAX_GRANT_FRAMES]`: their machine frames.
    pub const GRANT_FRAMES: usize = 24;
    /// `[ActiveEntry; MAX_GRANT_FRAMES * ENTRIES_PER_FRAME]`.
    pub const ACTIVE: usize = super::PAGE;
    /// Bytes of one active entry: `u32` lock and pins, `u32` mapper, `u64` frame.
    pub const ACTIVE_ENTRY: usize = 16;
    /// `[u64; NR_PAGES]`: the P2M.
    pub const P2M: usize =
        ACTIVE + ACTIVE_ENTRY * super::MAX_GRANT_FRAMES * super::ENTRIES_PER_FRAME;
}

/// The geometry of a control area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    /// Frames of machine memory (bounds every P2M).
    pub machine_pages: u64,
    /// Domain slots.
    pub max_slots: u32,
}

impl Control {
    /// Bytes of one slot.
    pub fn slot_size(&self) -> usize {
        (slot::P2M + self.machine_pages as usize * 8).div_ceil(PAGE) * PAGE
    }

    /// Bytes of the whole area.
    pub fn len(&self) -> usize {
        SLOTS + self.max_slots as usize * self.slot_size()
    }

    /// Whether it has no slots.
    pub fn is_empty(&self) -> bool {
        self.max_slots == 0
    }

    /// Offset of the `u16` that holds `domid`'s slot plus one (0: none).
    pub fn slot_of(&self, domid: u16) -> usize {
        SLOT_OF + usize::from(domid & 0x7fff) * 2
    }

    /// Offset of slot `i`.
    pub fn slot(&self, i: u32) -> usize {
        SLOTS + i as usize * self.slot_size()
    }
}

/// Offsets in a domain's info memfd.
pub mod info {
    /// `[u32; NR_PORTS]`: binding generation of each port.
    pub const PORT_GEN: usize = 0;
    /// `[u64; nr_pages]`: the domain's P2M.
    pub const P2M: usize = super::NR_PORTS * 4;

    /// Bytes of the info memfd of a domain of `pages` pages.
    pub fn len(pages: u64) -> usize {
        (P2M + pages as usize * 8).div_ceil(super::PAGE) * super::PAGE
    }
}
