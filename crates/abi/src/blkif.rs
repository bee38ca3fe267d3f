//! `xen/io/blkif.h`: the block device protocol's requests, responses and
//! constants, for the x86_64 ABI and (in [`x86_32`]) the x86_32 one that
//! 32-bit frontends use (`protocol = "x86_32-abi"`).

crate::wire_struct! {
    /// One segment of a request: a granted page and the sectors in it.
    #[c = "struct blkif_request_segment"]
    #[repr(C)]
    pub struct BlkifRequestSegment {
        /// Grant of the I/O buffer page.
        pub gref: u32,
        /// First sector of the page to transfer (inclusive).
        pub first_sect: u8,
        /// Last sector of the page to transfer (inclusive).
        pub last_sect: u8,
        /// Padding.
        pub _pad0: [u8; 2],
    }

    /// A read, write, barrier or flush request.
    #[c = "struct blkif_request"]
    #[repr(C)]
    pub struct BlkifRequest {
        /// `BLKIF_OP_*`.
        pub operation: u8,
        /// Number of segments used.
        pub nr_segments: u8,
        /// Virtual device handle.
        pub handle: u16,
        /// Padding.
        pub _pad0: [u8; 4],
        /// The frontend's value, echoed in the response.
        pub id: u64,
        /// First sector on the disk (512-byte units).
        pub sector_number: u64,
        /// The segments.
        pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
    }

    /// A discard request.
    #[c = "struct blkif_request_discard"]
    #[repr(C)]
    pub struct BlkifRequestDiscard {
        /// `BLKIF_OP_DISCARD`.
        pub operation: u8,
        /// `BLKIF_DISCARD_SECURE` or zero.
        pub flag: u8,
        /// Virtual device handle.
        pub handle: u16,
        /// Padding.
        pub _pad0: [u8; 4],
        /// The frontend's value, echoed in the response.
        pub id: u64,
        /// First sector to discard.
        pub sector_number: u64,
        /// Number of sectors to discard.
        pub nr_sectors: u64,
    }

    /// An indirect request: its segments live in granted pages.
    #[c = "struct blkif_request_indirect"]
    #[repr(C)]
    pub struct BlkifRequestIndirect {
        /// `BLKIF_OP_INDIRECT`.
        pub operation: u8,
        /// `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
        pub indirect_op: u8,
        /// Number of segments, across all indirect pages.
        pub nr_segments: u16,
        /// Padding.
        pub _pad0: [u8; 4],
        /// The frontend's value, echoed in the response.
        pub id: u64,
        /// First sector on the disk.
        pub sector_number: u64,
        /// Virtual device handle.
        pub handle: u16,
        /// Padding.
        pub _pad1: [u8; 2],
        /// Grants of the pages holding the segments.
        pub indirect_grefs: [u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
        /// Padding.
        pub _pad2: [u8; 4],
    }

    /// The answer to a request.
    #[c = "struct blkif_response"]
    #[repr(C)]
    pub struct BlkifResponse {
        /// The request's `id`.
        pub id: u64,
        /// The request's `operation`.
        pub operation: u8,
        /// Padding.
        pub _pad0: u8,
        /// `BLKIF_RSP_*`.
        pub status: i16,
        /// Padding.
        pub _pad1: [u8; 4],
    }
}

/// The x86_32 ABI: the same structures without the padding that 64-bit
/// alignment of `uint64_t` adds (4-byte alignment, as i386's C ABI gives).
pub mod x86_32 {
    use super::{
        BlkifRequestSegment, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST,
    };

    crate::wire_struct! {
        /// A read, write, barrier or flush request (x86_32).
        #[c = "struct blkif_request"]
        #[repr(C, packed(4))]
        pub struct BlkifRequest {
            /// `BLKIF_OP_*`.
            pub operation: u8,
            /// Number of segments used.
            pub nr_segments: u8,
            /// Virtual device handle.
            pub handle: u16,
            /// The frontend's value, echoed in the response.
            pub id: u64,
            /// First sector on the disk.
            pub sector_number: u64,
            /// The segments.
            pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
        }

        /// A discard request (x86_32).
        #[c = "struct blkif_request_discard"]
        #[repr(C, packed(4))]
        pub struct BlkifRequestDiscard {
            /// `BLKIF_OP_DISCARD`.
            pub operation: u8,
            /// `BLKIF_DISCARD_SECURE` or zero.
            pub flag: u8,
            /// Virtual device handle.
            pub handle: u16,
            /// The frontend's value, echoed in the response.
            pub id: u64,
            /// First sector to discard.
            pub sector_number: u64,
            /// Number of sectors to discard.
            pub nr_sectors: u64,
        }

        /// An indirect request (x86_32).
        #[c = "struct blkif_request_indirect"]
        #[repr(C, packed(4))]
        pub struct BlkifRequestIndirect {
            /// `BLKIF_OP_INDIRECT`.
            pub operation: u8,
            /// `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
            pub indirect_op: u8,
            /// Number of segments, across all indirect pages.
            pub nr_segments: u16,
            /// The frontend's value, echoed in the response.
            pub id: u64,
            /// First sector on the disk.
            pub sector_number: u64,
            /// Virtual device handle.
            pub handle: u16,
            /// Padding.
            pub _pad0: [u8; 2],
            /// Grants of the pages holding the segments.
            pub indirect_grefs: [u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
            /// Makes the request 64 bytes long.
            pub pad: u64,
        }

        /// The answer to a request (x86_32).
        #[c = "struct blkif_response"]
        #[repr(C, packed(4))]
        pub struct BlkifResponse {
            /// The request's `id`.
            pub id: u64,
            /// The request's `operation`.
            pub operation: u8,
            /// Padding.
            pub _pad0: u8,
            /// `BLKIF_RSP_*`.
            pub status: i16,
        }
    }

    /// Every x86_32 wire structure, checked against the headers built `-m32`.
    pub const LAYOUTS: &[crate::pod::TypeLayout] = {
        use crate::pod::CLayout;
        &[
            BlkifRequestSegment::LAYOUT,
            BlkifRequest::LAYOUT,
            BlkifRequestDiscard::LAYOUT,
            BlkifRequestIndirect::LAYOUT,
            BlkifResponse::LAYOUT,
        ]
    };
}

/// Every x86_64 wire structure of this module.
pub const LAYOUTS: &[crate::pod::TypeLayout] = {
    use crate::pod::CLayout;
    &[
        BlkifRequestSegment::LAYOUT,
        BlkifRequest::LAYOUT,
        BlkifRequestDiscard::LAYOUT,
        BlkifRequestIndirect::LAYOUT,
        BlkifResponse::LAYOUT,
    ]
};

crate::xen_consts! {
    /// Read from the disk into the segments.
    BLKIF_OP_READ: u8 = 0;
    /// Write the segments to the disk.
    BLKIF_OP_WRITE: u8 = 1;
    /// Write, ordered after all earlier requests (`feature-barrier`).
    BLKIF_OP_WRITE_BARRIER: u8 = 2;
    /// Flush the disk's write cache (`feature-flush-cache`).
    BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
    /// Reserved (was blktap's).
    BLKIF_OP_RESERVED_1: u8 = 4;
    /// Discard sectors (`feature-discard`).
    BLKIF_OP_DISCARD: u8 = 5;
    /// A request whose segments are in indirect pages.
    BLKIF_OP_INDIRECT: u8 = 6;
    /// Segments that fit in a direct request.
    BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
    /// Indirect pages an indirect request may name.
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
    /// Secure discard (`discard-secure`).
    BLKIF_DISCARD_SECURE: u8 = 1;
    /// The operation is not supported.
    BLKIF_RSP_EOPNOTSUPP: i16 = -2;
    /// The request failed.
    BLKIF_RSP_ERROR: i16 = -1;
    /// The request succeeded.
    BLKIF_RSP_OKAY: i16 = 0;
    /// `info` bit: the disk is a CD-ROM.
    VDISK_CDROM: u32 = 1;
    /// `info` bit: the medium is removable.
    VDISK_REMOVABLE: u32 = 2;
    /// `info` bit: the disk is read-only.
    VDISK_READONLY: u32 = 4;
}

/// Segments that fit in one indirect page (Linux's
/// `XEN_PAGES_PER_INDIRECT_FRAME`): 4096 / 8.
pub const SEGS_PER_INDIRECT_FRAME: usize =
    crate::ring::XEN_PAGE_SIZE / core::mem::size_of::<BlkifRequestSegment>();

/// The value of the `protocol` key naming the x86_64 request ABI.
pub const XEN_IO_PROTO_ABI_X86_64: &str = "x86_64-abi";
/// The value of the `protocol` key naming the x86_32 request ABI.
pub const XEN_IO_PROTO_ABI_X86_32: &str = "x86_32-abi";
