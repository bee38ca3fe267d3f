//! Linux's `/dev/xen` uapi: the ioctl structures and numbers of `gntdev`,
//! `gntalloc`, `evtchn` and `privcmd` (`/usr/include/xen/*.h` of
//! `linux-libc-dev`), for the real-Xen platform. Pointers are `u64`: this is
//! the x86_64 ABI.

crate::wire_struct! {
    /// A grant to map: `ioctl_gntdev_grant_ref`.
    #[c = "struct ioctl_gntdev_grant_ref"]
    #[repr(C)]
    pub struct IoctlGntdevGrantRef {
        /// The granting domain.
        pub domid: u32,
        /// The grant reference.
        pub ref_: u32,
    }

    /// The fixed head of `IOCTL_GNTDEV_MAP_GRANT_REF`'s argument; `count`
    /// [`IoctlGntdevGrantRef`]s follow it.
    #[c = "struct ioctl_gntdev_map_grant_ref"]
    #[repr(C)]
    pub struct IoctlGntdevMapGrantRef {
        /// Number of grants.
        pub count: u32,
        /// Padding.
        pub pad: u32,
        /// The mmap offset to use (out).
        pub index: u64,
        /// The first grant.
        pub refs: [IoctlGntdevGrantRef; 1],
    }

    /// `IOCTL_GNTDEV_UNMAP_GRANT_REF`'s argument.
    #[c = "struct ioctl_gntdev_unmap_grant_ref"]
    #[repr(C)]
    pub struct IoctlGntdevUnmapGrantRef {
        /// The mmap offset of the mapping.
        pub index: u64,
        /// Number of grants.
        pub count: u32,
        /// Padding.
        pub pad: u32,
    }

    /// `IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR`'s argument.
    #[c = "struct ioctl_gntdev_get_offset_for_vaddr"]
    #[repr(C)]
    pub struct IoctlGntdevGetOffsetForVaddr {
        /// The virtual address.
        pub vaddr: u64,
        /// The mmap offset (out).
        pub offset: u64,
        /// Number of grants (out).
        pub count: u32,
        /// Padding.
        pub pad: u32,
    }

    /// `IOCTL_GNTDEV_SET_MAX_GRANTS`'s argument.
    #[c = "struct ioctl_gntdev_set_max_grants"]
    #[repr(C)]
    pub struct IoctlGntdevSetMaxGrants {
        /// Largest number of grants mapped at once.
        pub count: u32,
    }

    /// `IOCTL_GNTDEV_SET_UNMAP_NOTIFY`'s argument.
    #[c = "struct ioctl_gntdev_unmap_notify"]
    #[repr(C)]
    pub struct IoctlGntdevUnmapNotify {
        /// mmap offset of a byte within the page.
        pub index: u64,
        /// `UNMAP_NOTIFY_*`.
        pub action: u32,
        /// Port to notify.
        pub event_channel_port: u32,
    }

    /// The foreign side of a grant copy segment; the local side is the
    /// same 8 bytes read as a user virtual address.
    #[c = "__typeof__(((struct gntdev_grant_copy_segment *)0)->source.foreign)"]
    #[repr(C)]
    pub struct GntdevCopyForeign {
        /// The grant reference.
        pub ref_: u32,
        /// Byte offset in the page.
        pub offset: u16,
        /// The granting domain.
        pub domid: u16,
    }

    /// One segment of `IOCTL_GNTDEV_GRANT_COPY`.
    #[c = "struct gntdev_grant_copy_segment"]
    #[repr(C)]
    pub struct GntdevGrantCopySegment {
        /// A virtual address, or a [`GntdevCopyForeign`] (by `flags`).
        pub source: u64,
        /// A virtual address, or a [`GntdevCopyForeign`] (by `flags`).
        pub dest: u64,
        /// Bytes to copy.
        pub len: u16,
        /// `GNTCOPY_*`.
        pub flags: u16,
        /// `GNTST_*` (out).
        pub status: i16,
        /// Padding.
        pub _pad0: [u8; 2],
    }

    /// `IOCTL_GNTDEV_GRANT_COPY`'s argument.
    #[c = "struct ioctl_gntdev_grant_copy"]
    #[repr(C)]
    pub struct IoctlGntdevGrantCopy {
        /// Number of segments.
        pub count: u32,
        /// Padding.
        pub _pad0: u32,
        /// Pointer to the segments.
        pub segments: u64,
    }

    /// The fixed head of `IOCTL_GNTALLOC_ALLOC_GREF`'s argument; `count`
    /// `u32` grant ids follow.
    #[c = "struct ioctl_gntalloc_alloc_gref"]
    #[repr(C)]
    pub struct IoctlGntallocAllocGref {
        /// The domain to grant to.
        pub domid: u16,
        /// `GNTALLOC_FLAG_*`.
        pub flags: u16,
        /// Number of pages.
        pub count: u32,
        /// The mmap offset (out).
        pub index: u64,
        /// The first grant reference (out).
        pub gref_ids: [u32; 1],
        /// Padding.
        pub _pad0: u32,
    }

    /// `IOCTL_GNTALLOC_DEALLOC_GREF`'s argument.
    #[c = "struct ioctl_gntalloc_dealloc_gref"]
    #[repr(C)]
    pub struct IoctlGntallocDeallocGref {
        /// The mmap offset of the grants.
        pub index: u64,
        /// Number of pages.
        pub count: u32,
        /// Padding.
        pub _pad0: u32,
    }

    /// `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY`'s argument.
    #[c = "struct ioctl_gntalloc_unmap_notify"]
    #[repr(C)]
    pub struct IoctlGntallocUnmapNotify {
        /// mmap offset of a byte within the page.
        pub index: u64,
        /// `UNMAP_NOTIFY_*`.
        pub action: u32,
        /// Port to notify.
        pub event_channel_port: u32,
    }

    /// `IOCTL_EVTCHN_BIND_VIRQ`'s argument.
    #[c = "struct ioctl_evtchn_bind_virq"]
    #[repr(C)]
    pub struct IoctlEvtchnBindVirq {
        /// `VIRQ_*`.
        pub virq: u32,
    }

    /// `IOCTL_EVTCHN_BIND_INTERDOMAIN`'s argument.
    #[c = "struct ioctl_evtchn_bind_interdomain"]
    #[repr(C)]
    pub struct IoctlEvtchnBindInterdomain {
        /// The other domain.
        pub remote_domain: u32,
        /// Its unbound port.
        pub remote_port: u32,
    }

    /// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`'s argument.
    #[c = "struct ioctl_evtchn_bind_unbound_port"]
    #[repr(C)]
    pub struct IoctlEvtchnBindUnboundPort {
        /// The domain that may bind it.
        pub remote_domain: u32,
    }

    /// `IOCTL_EVTCHN_UNBIND`'s argument.
    #[c = "struct ioctl_evtchn_unbind"]
    #[repr(C)]
    pub struct IoctlEvtchnUnbind {
        /// The local port.
        pub port: u32,
    }

    /// `IOCTL_EVTCHN_NOTIFY`'s argument.
    #[c = "struct ioctl_evtchn_notify"]
    #[repr(C)]
    pub struct IoctlEvtchnNotify {
        /// The local port.
        pub port: u32,
    }

    /// `IOCTL_EVTCHN_RESTRICT_DOMID`'s argument.
    #[c = "struct ioctl_evtchn_restrict_domid"]
    #[repr(C)]
    pub struct IoctlEvtchnRestrictDomid {
        /// The only domain this handle may talk to.
        pub domid: u16,
    }

    /// `IOCTL_PRIVCMD_HYPERCALL`'s argument.
    #[c = "struct privcmd_hypercall"]
    #[repr(C)]
    pub struct PrivcmdHypercall {
        /// Hypercall number.
        pub op: u64,
        /// Arguments.
        pub arg: [u64; 5],
    }

    /// An entry of `IOCTL_PRIVCMD_MMAP`.
    #[c = "struct privcmd_mmap_entry"]
    #[repr(C)]
    pub struct PrivcmdMmapEntry {
        /// Virtual address.
        pub va: u64,
        /// First frame (a GFN).
        pub mfn: u64,
        /// Number of pages.
        pub npages: u64,
    }

    /// `IOCTL_PRIVCMD_MMAP`'s argument.
    #[c = "struct privcmd_mmap"]
    #[repr(C)]
    pub struct PrivcmdMmap {
        /// Number of entries.
        pub num: i32,
        /// The target domain.
        pub dom: u16,
        /// Padding.
        pub _pad0: u16,
        /// Pointer to the entries.
        pub entry: u64,
    }

    /// `IOCTL_PRIVCMD_MMAPBATCH`'s argument.
    #[c = "struct privcmd_mmapbatch"]
    #[repr(C)]
    pub struct PrivcmdMmapbatch {
        /// Number of pages.
        pub num: i32,
        /// The target domain.
        pub dom: u16,
        /// Padding.
        pub _pad0: u16,
        /// Virtual address.
        pub addr: u64,
        /// Pointer to the frame array.
        pub arr: u64,
    }

    /// `IOCTL_PRIVCMD_MMAPBATCH_V2`'s argument.
    #[c = "struct privcmd_mmapbatch_v2"]
    #[repr(C)]
    pub struct PrivcmdMmapbatchV2 {
        /// Number of pages.
        pub num: u32,
        /// The target domain.
        pub dom: u16,
        /// Padding.
        pub _pad0: u16,
        /// Virtual address.
        pub addr: u64,
        /// Pointer to the frame array.
        pub arr: u64,
        /// Pointer to the per-page error array.
        pub err: u64,
    }

    /// A buffer of `IOCTL_PRIVCMD_DM_OP`.
    #[c = "struct privcmd_dm_op_buf"]
    #[repr(C)]
    pub struct PrivcmdDmOpBuf {
        /// User pointer.
        pub uptr: u64,
        /// Size in bytes.
        pub size: u64,
    }

    /// `IOCTL_PRIVCMD_DM_OP`'s argument.
    #[c = "struct privcmd_dm_op"]
    #[repr(C)]
    pub struct PrivcmdDmOp {
        /// The target domain.
        pub dom: u16,
        /// Number of buffers.
        pub num: u16,
        /// Padding.
        pub _pad0: u32,
        /// Pointer to the buffers.
        pub ubufs: u64,
    }

    /// `IOCTL_PRIVCMD_MMAP_RESOURCE`'s argument.
    #[c = "struct privcmd_mmap_resource"]
    #[repr(C)]
    pub struct PrivcmdMmapResource {
        /// The target domain.
        pub dom: u16,
        /// Padding.
        pub _pad0: u16,
        /// `XENMEM_resource_*`.
        pub type_: u32,
        /// Resource id.
        pub id: u32,
        /// First frame.
        pub idx: u32,
        /// Number of frames.
        pub num: u64,
        /// Virtual address.
        pub addr: u64,
    }
}

/// Every wire structure of this module.
pub const LAYOUTS: &[crate::pod::TypeLayout] = {
    use crate::pod::CLayout;
    &[
        IoctlGntdevGrantRef::LAYOUT,
        IoctlGntdevMapGrantRef::LAYOUT,
        IoctlGntdevUnmapGrantRef::LAYOUT,
        IoctlGntdevGetOffsetForVaddr::LAYOUT,
        IoctlGntdevSetMaxGrants::LAYOUT,
        IoctlGntdevUnmapNotify::LAYOUT,
        GntdevCopyForeign::LAYOUT,
        GntdevGrantCopySegment::LAYOUT,
        IoctlGntdevGrantCopy::LAYOUT,
        IoctlGntallocAllocGref::LAYOUT,
        IoctlGntallocDeallocGref::LAYOUT,
        IoctlGntallocUnmapNotify::LAYOUT,
        IoctlEvtchnBindVirq::LAYOUT,
        IoctlEvtchnBindInterdomain::LAYOUT,
        IoctlEvtchnBindUnboundPort::LAYOUT,
        IoctlEvtchnUnbind::LAYOUT,
        IoctlEvtchnNotify::LAYOUT,
        IoctlEvtchnRestrictDomid::LAYOUT,
        PrivcmdHypercall::LAYOUT,
        PrivcmdMmapEntry::LAYOUT,
        PrivcmdMmap::LAYOUT,
        PrivcmdMmapbatch::LAYOUT,
        PrivcmdMmapbatchV2::LAYOUT,
        PrivcmdDmOpBuf::LAYOUT,
        PrivcmdDmOp::LAYOUT,
        PrivcmdMmapResource::LAYOUT,
    ]
};

/// `_IOC(_IOC_NONE, ty, nr, size)`: the ioctls of `/dev/xen` carry no
/// direction bits.
const fn ioc_none(ty: u8, nr: u8, size: usize) -> u32 {
    ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

const fn sz<T>() -> usize {
    core::mem::size_of::<T>()
}

crate::xen_consts! {
    /// Map grants into the gntdev file.
    IOCTL_GNTDEV_MAP_GRANT_REF: u32 = ioc_none(b'G', 0, sz::<IoctlGntdevMapGrantRef>());
    /// Unmap grants.
    IOCTL_GNTDEV_UNMAP_GRANT_REF: u32 = ioc_none(b'G', 1, sz::<IoctlGntdevUnmapGrantRef>());
    /// Find the mmap offset of a mapped address.
    IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR: u32 =
        ioc_none(b'G', 2, sz::<IoctlGntdevGetOffsetForVaddr>());
    /// Limit the grants mapped at once.
    IOCTL_GNTDEV_SET_MAX_GRANTS: u32 = ioc_none(b'G', 3, sz::<IoctlGntdevSetMaxGrants>());
    /// Clear a byte or notify a port when a mapping goes away.
    IOCTL_GNTDEV_SET_UNMAP_NOTIFY: u32 = ioc_none(b'G', 7, sz::<IoctlGntdevUnmapNotify>());
    /// Batched grant copy.
    IOCTL_GNTDEV_GRANT_COPY: u32 = ioc_none(b'G', 8, sz::<IoctlGntdevGrantCopy>());
    /// Grant our pages to a domain.
    IOCTL_GNTALLOC_ALLOC_GREF: u32 = ioc_none(b'G', 5, sz::<IoctlGntallocAllocGref>());
    /// Stop granting them.
    IOCTL_GNTALLOC_DEALLOC_GREF: u32 = ioc_none(b'G', 6, sz::<IoctlGntallocDeallocGref>());
    /// Clear a byte or notify a port on unmap.
    IOCTL_GNTALLOC_SET_UNMAP_NOTIFY: u32 = ioc_none(b'G', 7, sz::<IoctlGntallocUnmapNotify>());
    /// The grants may be written.
    GNTALLOC_FLAG_WRITABLE: u16 = 1;
    /// Clear the byte at `index` on unmap.
    UNMAP_NOTIFY_CLEAR_BYTE: u32 = 1;
    /// Notify `event_channel_port` on unmap.
    UNMAP_NOTIFY_SEND_EVENT: u32 = 2;
    /// Bind a virtual IRQ.
    IOCTL_EVTCHN_BIND_VIRQ: u32 = ioc_none(b'E', 0, sz::<IoctlEvtchnBindVirq>());
    /// Bind to another domain's unbound port.
    IOCTL_EVTCHN_BIND_INTERDOMAIN: u32 = ioc_none(b'E', 1, sz::<IoctlEvtchnBindInterdomain>());
    /// Allocate an unbound port for a domain.
    IOCTL_EVTCHN_BIND_UNBOUND_PORT: u32 =
        ioc_none(b'E', 2, sz::<IoctlEvtchnBindUnboundPort>());
    /// Close a port.
    IOCTL_EVTCHN_UNBIND: u32 = ioc_none(b'E', 3, sz::<IoctlEvtchnUnbind>());
    /// Notify a port's peer.
    IOCTL_EVTCHN_NOTIFY: u32 = ioc_none(b'E', 4, sz::<IoctlEvtchnNotify>());
    /// Close every port of the handle.
    IOCTL_EVTCHN_RESET: u32 = ioc_none(b'E', 5, 0);
    /// Restrict the handle to one domain.
    IOCTL_EVTCHN_RESTRICT_DOMID: u32 = ioc_none(b'E', 6, sz::<IoctlEvtchnRestrictDomid>());
    /// Make a hypercall.
    IOCTL_PRIVCMD_HYPERCALL: u32 = ioc_none(b'P', 0, sz::<PrivcmdHypercall>());
    /// Map foreign frames.
    IOCTL_PRIVCMD_MMAP: u32 = ioc_none(b'P', 2, sz::<PrivcmdMmap>());
    /// Map foreign frames, batched.
    IOCTL_PRIVCMD_MMAPBATCH: u32 = ioc_none(b'P', 3, sz::<PrivcmdMmapbatch>());
    /// Map foreign frames, batched, with per-page errors.
    IOCTL_PRIVCMD_MMAPBATCH_V2: u32 = ioc_none(b'P', 4, sz::<PrivcmdMmapbatchV2>());
    /// Device-model operation.
    IOCTL_PRIVCMD_DM_OP: u32 = ioc_none(b'P', 5, sz::<PrivcmdDmOp>());
    /// Restrict the handle to one domain.
    IOCTL_PRIVCMD_RESTRICT: u32 = ioc_none(b'P', 6, 2);
    /// Map a resource of a domain (grant table, ioreq pages).
    IOCTL_PRIVCMD_MMAP_RESOURCE: u32 = ioc_none(b'P', 7, sz::<PrivcmdMmapResource>());
    /// `privcmd_mmapbatch` error bits on a frame.
    PRIVCMD_MMAPBATCH_MFN_ERROR: u32 = 0xf000_0000;
    /// The frame is paged out.
    PRIVCMD_MMAPBATCH_PAGED_ERROR: u32 = 0x8000_0000;
}
