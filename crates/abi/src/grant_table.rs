//! `xen/grant_table.h`: version-1 grant entries, their flags, the reserved
//! references, `GNTTABOP_copy` and the status codes.

crate::wire_struct! {
    /// A version-1 grant entry, in the granting domain's grant table.
    #[c = "struct grant_entry_v1"]
    #[repr(C)]
    pub struct GrantEntryV1 {
        /// `GTF_*`: type and status; written last by the granter, updated by
        /// the mapper with compare-and-swap.
        pub flags: u16,
        /// The domain allowed to map or access the frame.
        pub domid: u16,
        /// The frame (a GFN) granted.
        pub frame: u32,
    }

    /// One side of a grant copy: a grant of `domid`, or a local frame.
    #[c = "struct gnttab_copy_ptr"]
    #[repr(C)]
    pub struct GnttabCopyPtr {
        /// Grant reference, or GFN when the side is local (`xen_pfn_t`).
        pub u: u64,
        /// The domain.
        pub domid: u16,
        /// Byte offset in the page.
        pub offset: u16,
        /// Padding.
        pub _pad0: [u8; 4],
    }

    /// `GNTTABOP_copy`: copy bytes between granted or local pages.
    #[c = "struct gnttab_copy"]
    #[repr(C)]
    pub struct GnttabCopy {
        /// Where from.
        pub source: GnttabCopyPtr,
        /// Where to.
        pub dest: GnttabCopyPtr,
        /// Bytes to copy; neither side may cross a page.
        pub len: u16,
        /// `GNTCOPY_*`.
        pub flags: u16,
        /// `GNTST_*` (out).
        pub status: i16,
        /// Padding.
        pub _pad0: [u8; 2],
    }
}

/// Every wire structure of this module.
pub const LAYOUTS: &[crate::pod::TypeLayout] = {
    use crate::pod::CLayout;
    &[
        GrantEntryV1::LAYOUT,
        GnttabCopyPtr::LAYOUT,
        GnttabCopy::LAYOUT,
    ]
};

crate::xen_consts! {
    /// References 0..8 are reserved for the toolstack.
    GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
    /// The console page's reference.
    GNTTAB_RESERVED_CONSOLE: u32 = 0;
    /// The xenstore page's reference.
    GNTTAB_RESERVED_XENSTORE: u32 = 1;
    /// The entry grants nothing.
    GTF_INVALID: u16 = 0, c "GTF_invalid";
    /// The entry grants access to `frame`.
    GTF_PERMIT_ACCESS: u16 = 1, c "GTF_permit_access";
    /// The entry accepts a page transfer.
    GTF_ACCEPT_TRANSFER: u16 = 2, c "GTF_accept_transfer";
    /// The entry is transitive (v2 only).
    GTF_TRANSITIVE: u16 = 3, c "GTF_transitive";
    /// Mask of the type bits.
    GTF_TYPE_MASK: u16 = 3, c "GTF_type_mask";
    /// Access is read-only.
    GTF_READONLY: u16 = 1 << 2, c "GTF_readonly";
    /// The grantee has the frame mapped or is copying from it.
    GTF_READING: u16 = 1 << 3, c "GTF_reading";
    /// The grantee has the frame mapped writable or is copying to it.
    GTF_WRITING: u16 = 1 << 4, c "GTF_writing";
    /// Cache attribute: write-through.
    GTF_PWT: u16 = 1 << 5;
    /// Cache attribute: cache disable.
    GTF_PCD: u16 = 1 << 6;
    /// Cache attribute: PAT.
    GTF_PAT: u16 = 1 << 7;
    /// Sub-page grant (v2 only).
    GTF_SUB_PAGE: u16 = 1 << 8, c "GTF_sub_page";
    /// Map for device access.
    GNTMAP_DEVICE_MAP: u32 = 1 << 0, c "GNTMAP_device_map";
    /// Map for host (CPU) access.
    GNTMAP_HOST_MAP: u32 = 1 << 1, c "GNTMAP_host_map";
    /// Map read-only.
    GNTMAP_READONLY: u32 = 1 << 2, c "GNTMAP_readonly";
    /// Map for user-space access.
    GNTMAP_APPLICATION_MAP: u32 = 1 << 3, c "GNTMAP_application_map";
    /// The address is a PTE.
    GNTMAP_CONTAINS_PTE: u32 = 1 << 4, c "GNTMAP_contains_pte";
    /// The copy's source is a grant.
    GNTCOPY_SOURCE_GREF: u16 = 1 << 0, c "GNTCOPY_source_gref";
    /// The copy's destination is a grant.
    GNTCOPY_DEST_GREF: u16 = 1 << 1, c "GNTCOPY_dest_gref";
    /// `GNTTABOP_map_grant_ref`.
    GNTTABOP_MAP_GRANT_REF: u32 = 0, c "GNTTABOP_map_grant_ref";
    /// `GNTTABOP_unmap_grant_ref`.
    GNTTABOP_UNMAP_GRANT_REF: u32 = 1, c "GNTTABOP_unmap_grant_ref";
    /// `GNTTABOP_copy`.
    GNTTABOP_COPY: u32 = 5, c "GNTTABOP_copy";
    /// `GNTTABOP_query_size`.
    GNTTABOP_QUERY_SIZE: u32 = 6, c "GNTTABOP_query_size";
    /// Success.
    GNTST_OKAY: i16 = 0, c "GNTST_okay";
    /// Undefined error.
    GNTST_GENERAL_ERROR: i16 = -1, c "GNTST_general_error";
    /// Unknown domain.
    GNTST_BAD_DOMAIN: i16 = -2, c "GNTST_bad_domain";
    /// Unknown or inappropriate grant reference.
    GNTST_BAD_GNTREF: i16 = -3, c "GNTST_bad_gntref";
    /// Unknown or inappropriate handle.
    GNTST_BAD_HANDLE: i16 = -4, c "GNTST_bad_handle";
    /// Inappropriate virtual address to map.
    GNTST_BAD_VIRT_ADDR: i16 = -5, c "GNTST_bad_virt_addr";
    /// Inappropriate device address to unmap.
    GNTST_BAD_DEV_ADDR: i16 = -6, c "GNTST_bad_dev_addr";
    /// No space in the I/O MMU.
    GNTST_NO_DEVICE_SPACE: i16 = -7, c "GNTST_no_device_space";
    /// Not enough privilege.
    GNTST_PERMISSION_DENIED: i16 = -8, c "GNTST_permission_denied";
    /// The page is invalid for the operation.
    GNTST_BAD_PAGE: i16 = -9, c "GNTST_bad_page";
    /// The copy crosses a page boundary.
    GNTST_BAD_COPY_ARG: i16 = -10, c "GNTST_bad_copy_arg";
    /// Transfer address too large.
    GNTST_ADDRESS_TOO_BIG: i16 = -11, c "GNTST_address_too_big";
    /// Not done; try again.
    GNTST_EAGAIN: i16 = -12, c "GNTST_eagain";
    /// Out of space (handles and the like).
    GNTST_NO_SPACE: i16 = -13, c "GNTST_no_space";
}

/// Xen's default maximum of grant-table frames per domain.
pub const DEFAULT_MAX_GRANT_FRAMES: u32 = 64;
/// Version-1 entries in one grant-table frame.
pub const GRANT_ENTRIES_PER_FRAME: u32 =
    (crate::ring::XEN_PAGE_SIZE / core::mem::size_of::<GrantEntryV1>()) as u32;
