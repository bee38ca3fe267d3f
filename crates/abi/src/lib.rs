//! Xen's wire ABI: the `#[repr(C)]` layouts and constants of every structure
//! dom0kit exchanges with a peer, for the x86_64 ABI (and blkif's x86_32 one).
//!
//! The C headers are the specification: Xen's public headers as shipped by
//! Debian's `libxen-dev` (`xen/io/*.h`, `xen/grant_table.h`, `xen/xen.h`,
//! `xen/event_channel.h`) and Linux's `/dev/xen` uapi headers
//! (`xen/{gntdev,gntalloc,evtchn,privcmd}.h`). Every struct is defined with
//! [`wire_struct!`], which proves it has no hidden padding, and every constant
//! with [`xen_consts!`]; `tests/layout.rs` compiles a C program against the
//! system headers and checks each size, offset and value.
//!
//! Guest memory is reached through [`mem::VolatileSlice`] only.

pub mod pod;

pub mod blkif;
pub mod console;
pub mod grant_table;
pub mod ids;
pub mod linux;
pub mod mem;
pub mod netif;
pub mod pciif;
pub mod ring;
pub mod xen;
pub mod xs_wire;

pub use ids::{DomId, GrantRef, Mfn, Pfn, Port, RingIdx};
pub use mem::{OwnedMem, VolatileSlice};
pub use pod::{CLayout, Pod};

/// Every wire structure of this crate, for the layout test.
pub fn all_layouts() -> Vec<pod::TypeLayout> {
    let mut v = Vec::new();
    for list in [
        ring::LAYOUTS,
        blkif::LAYOUTS,
        netif::LAYOUTS,
        pciif::LAYOUTS,
        xs_wire::LAYOUTS,
        console::LAYOUTS,
        grant_table::LAYOUTS,
        linux::LAYOUTS,
    ] {
        v.extend_from_slice(list);
    }
    v
}

/// Every header constant of this crate, for the layout test.
pub fn all_constants() -> Vec<pod::CConst> {
    let mut v = Vec::new();
    for list in [
        ring::CONSTANTS,
        blkif::CONSTANTS,
        netif::CONSTANTS,
        pciif::CONSTANTS,
        xs_wire::CONSTANTS,
        console::CONSTANTS,
        grant_table::CONSTANTS,
        xen::CONSTANTS,
        linux::CONSTANTS,
    ] {
        v.extend_from_slice(list);
    }
    v
}
