//! `xen/io/ring.h`: the shared request/response ring page and its size rule.
//!
//! A shared ring is a 64-byte header (`req_prod`, `req_event`, `rsp_prod`,
//! `rsp_event`, a private area, padding) followed by a power-of-two number of
//! slots, each a union of one request and one response. `DEFINE_RING_TYPES`
//! generates that layout per protocol; here it is described once by offsets,
//! and the protocol itself lives in the `ring` crate.

use core::mem::{align_of, size_of};

crate::xen_consts! {
    /// Offset of `req_prod`.
    SRING_REQ_PROD: usize = 0, c "offsetof(struct blkif_sring, req_prod)";
    /// Offset of `req_event`.
    SRING_REQ_EVENT: usize = 4, c "offsetof(struct blkif_sring, req_event)";
    /// Offset of `rsp_prod`.
    SRING_RSP_PROD: usize = 8, c "offsetof(struct blkif_sring, rsp_prod)";
    /// Offset of `rsp_event`.
    SRING_RSP_EVENT: usize = 12, c "offsetof(struct blkif_sring, rsp_event)";
    /// Offset of the private area (`pvt`, 4 bytes; netif's `smartpoll_active`).
    SRING_PVT: usize = 16, c "offsetof(struct blkif_sring, pvt)";
    /// Size of the header: offset of the first slot.
    SRING_HEADER_SIZE: usize = 64, c "offsetof(struct netif_tx_sring, ring)";
    /// Size of a ring page.
    XEN_PAGE_SIZE: usize = 4096, c "(1 << XEN_PAGE_SHIFT)";
}

/// Largest ring order a backend may offer (`max-ring-page-order`): 16 pages,
/// Linux's `XENBUS_MAX_RING_GRANT_ORDER` (not in Xen's headers).
pub const XENBUS_MAX_RING_ORDER: u32 = 4;

/// Every wire structure of this module (the header is described by offsets).
pub const LAYOUTS: &[crate::pod::TypeLayout] = &[];

/// The size of one slot of a ring carrying `Req` and `Rsp`: the size of
/// their C union.
pub const fn entry_size<Req, Rsp>() -> usize {
    let size = if size_of::<Req>() > size_of::<Rsp>() {
        size_of::<Req>()
    } else {
        size_of::<Rsp>()
    };
    let align = if align_of::<Req>() > align_of::<Rsp>() {
        align_of::<Req>()
    } else {
        align_of::<Rsp>()
    };
    size.div_ceil(align) * align
}

/// The number of slots of a ring of `ring_bytes` bytes with slots of
/// `entry_size` bytes: `__CONST_RING_SIZE`, the slots that fit after the
/// header rounded down to a power of two. Zero if none fit.
pub const fn ring_size(ring_bytes: usize, entry_size: usize) -> u32 {
    if entry_size == 0 || ring_bytes <= SRING_HEADER_SIZE {
        return 0;
    }
    let n = (ring_bytes - SRING_HEADER_SIZE) / entry_size;
    let n = if n > u32::MAX as usize {
        u32::MAX
    } else {
        n as u32
    };
    if n == 0 {
        0
    } else {
        1 << (31 - n.leading_zeros())
    }
}

/// Bytes of a ring of `1 << order` pages.
pub const fn ring_bytes(order: u32) -> usize {
    XEN_PAGE_SIZE << order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_size_rounds_down_to_a_power_of_two() {
        // blkif: 112-byte slots, 32 per page (Linux's BLK_RING_SIZE).
        assert_eq!(ring_size(4096, 112), 32);
        // netif tx: 12-byte slots, 256 per page.
        assert_eq!(ring_size(4096, 12), 256);
        assert_eq!(ring_size(64, 12), 0);
        assert_eq!(ring_size(4096, 0), 0);
        assert_eq!(ring_size(ring_bytes(4), 112), 512);
    }

    #[test]
    fn entry_size_is_the_union_size() {
        assert_eq!(entry_size::<[u8; 5], u32>(), 8);
        assert_eq!(entry_size::<u64, u8>(), 8);
    }
}
