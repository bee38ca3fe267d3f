//! `xen/io/console.h`: the PV console's shared page, two byte rings.

use core::mem::offset_of;

crate::wire_struct! {
    /// The console page: `in` carries bytes to the guest, `out` from it.
    #[c = "struct xencons_interface"]
    #[repr(C)]
    pub struct XenconsInterface {
        /// Bytes to the guest (written by the backend).
        pub in_: [u8; XENCONS_IN_SIZE],
        /// Bytes from the guest (written by the guest).
        pub out: [u8; XENCONS_OUT_SIZE],
        /// Guest's consumer index of `in`.
        pub in_cons: u32,
        /// Backend's producer index of `in`.
        pub in_prod: u32,
        /// Backend's consumer index of `out`.
        pub out_cons: u32,
        /// Guest's producer index of `out`.
        pub out_prod: u32,
    }
}

/// Every wire structure of this module.
pub const LAYOUTS: &[crate::pod::TypeLayout] = {
    use crate::pod::CLayout;
    &[XenconsInterface::LAYOUT]
};

crate::xen_consts! {
    /// Size of the `in` ring.
    XENCONS_IN_SIZE: usize = 1024, c "sizeof(((struct xencons_interface *)0)->in)";
    /// Size of the `out` ring.
    XENCONS_OUT_SIZE: usize = 2048, c "sizeof(((struct xencons_interface *)0)->out)";
}

/// Offsets of the console rings, for the byte-ring code.
pub mod offsets {
    use super::*;
    /// `in`.
    pub const IN: usize = offset_of!(XenconsInterface, in_);
    /// `out`.
    pub const OUT: usize = offset_of!(XenconsInterface, out);
    /// `in_cons`.
    pub const IN_CONS: usize = offset_of!(XenconsInterface, in_cons);
    /// `in_prod`.
    pub const IN_PROD: usize = offset_of!(XenconsInterface, in_prod);
    /// `out_cons`.
    pub const OUT_CONS: usize = offset_of!(XenconsInterface, out_cons);
    /// `out_prod`.
    pub const OUT_PROD: usize = offset_of!(XenconsInterface, out_prod);
}
