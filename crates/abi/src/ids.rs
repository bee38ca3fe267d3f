//! Newtypes for the identifiers that cross a boundary, so that a domain id
//! can never be passed where a grant reference or a port was meant.

use crate::pod::Pod;

macro_rules! id_newtype {
    ($($(#[doc = $doc:literal])* $name:ident($t:ty);)*) => {$(
        $(#[doc = $doc])*
        #[repr(transparent)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $t);

        // SAFETY: `repr(transparent)` over a primitive integer.
        unsafe impl Pod for $name {}

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

id_newtype! {
    /// A domain id (`domid_t`).
    DomId(u16);
    /// A grant reference (`grant_ref_t`).
    GrantRef(u32);
    /// An event-channel port (`evtchn_port_t`).
    Port(u32);
    /// A pseudo-physical frame number: a page of a domain's own view.
    Pfn(u64);
    /// A machine frame number: a page of the host's memory.
    Mfn(u64);
}

/// A free-running ring index (`RING_IDX`): it wraps at `u32::MAX` and only
/// differences between indices mean anything.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RingIdx(pub u32);

// SAFETY: `repr(transparent)` over `u32`.
unsafe impl Pod for RingIdx {}

impl RingIdx {
    /// `self + n`, wrapping.
    #[must_use]
    pub fn plus(self, n: u32) -> RingIdx {
        RingIdx(self.0.wrapping_add(n))
    }

    /// How far `self` is ahead of `earlier`, wrapping (`self - earlier`).
    pub fn distance_from(self, earlier: RingIdx) -> u32 {
        self.0.wrapping_sub(earlier.0)
    }
}

impl DomId {
    /// The control domain.
    pub const DOM0: DomId = DomId(0);

    /// Whether this is a real domain rather than one of Xen's reserved ids
    /// (`DOMID_FIRST_RESERVED` and above).
    pub fn is_real(self) -> bool {
        self.0 < crate::xen::DOMID_FIRST_RESERVED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_index_distance_wraps() {
        let a = RingIdx(u32::MAX - 1);
        let b = a.plus(3);
        assert_eq!(b, RingIdx(1));
        assert_eq!(b.distance_from(a), 3);
    }

    #[test]
    fn reserved_domids_are_not_real() {
        assert!(DomId(0x7FEF).is_real());
        assert!(!DomId(0x7FF0).is_real());
        assert!(!DomId(0x7FF4).is_real());
    }
}
