//! `xen/io/pciif.h`: the PCI frontend/backend protocol. There is no ring: one
//! shared page holds `xen_pci_sharedinfo`, and the frontend sets
//! `_XEN_PCIF_active` to hand `op` to the backend.

crate::wire_struct! {
    /// One MSI-X vector: the entry number the frontend asks for and the
    /// vector (pirq) the backend gives it.
    #[c = "struct xen_msix_entry"]
    #[repr(C)]
    pub struct XenMsixEntry {
        /// The vector granted (out).
        pub vector: u16,
        /// The MSI-X table entry (in).
        pub entry: u16,
    }

    /// A PCI operation.
    #[c = "struct xen_pci_op"]
    #[repr(C)]
    pub struct XenPciOp {
        /// `XEN_PCI_OP_*`.
        pub cmd: u32,
        /// `XEN_PCI_ERR_*` (out).
        pub err: i32,
        /// PCI segment.
        pub domain: u32,
        /// Bus.
        pub bus: u32,
        /// Device and function.
        pub devfn: u32,
        /// Configuration-space offset.
        pub offset: i32,
        /// Access size: 1, 2 or 4.
        pub size: i32,
        /// Value read or to write.
        pub value: u32,
        /// Extra input (number of MSI-X entries, ...).
        pub info: u32,
        /// MSI-X entries.
        pub msix_entries: [XenMsixEntry; SH_INFO_MAX_VEC],
    }

    /// A PCIe AER operation, from backend to frontend.
    #[c = "struct xen_pcie_aer_op"]
    #[repr(C)]
    pub struct XenPcieAerOp {
        /// `XEN_PCI_OP_aer_*`.
        pub cmd: u32,
        /// Result, or the error state as input.
        pub err: i32,
        /// PCI segment.
        pub domain: u32,
        /// Bus.
        pub bus: u32,
        /// Device and function.
        pub devfn: u32,
    }

    /// The shared page.
    #[c = "struct xen_pci_sharedinfo"]
    #[repr(C)]
    pub struct XenPciSharedinfo {
        /// `XEN_PCIF_*` and `XEN_PCIB_*` bits.
        pub flags: u32,
        /// The frontend's operation.
        pub op: XenPciOp,
        /// The backend's AER operation.
        pub aer_op: XenPcieAerOp,
    }
}

/// Every wire structure of this module.
pub const LAYOUTS: &[crate::pod::TypeLayout] = {
    use crate::pod::CLayout;
    &[
        XenMsixEntry::LAYOUT,
        XenPciOp::LAYOUT,
        XenPcieAerOp::LAYOUT,
        XenPciSharedinfo::LAYOUT,
    ]
};

crate::xen_consts! {
    /// Bit number of `XEN_PCIF_active`.
    _XEN_PCIF_ACTIVE: u32 = 0, c "_XEN_PCIF_active";
    /// The frontend has an operation for the backend.
    XEN_PCIF_ACTIVE: u32 = 1 << 0, c "XEN_PCIF_active";
    /// Bit number of `XEN_PCIB_AERHANDLER`.
    _XEN_PCIB_AERHANDLER: u32 = 1;
    /// The frontend has an AER handler.
    XEN_PCIB_AERHANDLER: u32 = 1 << 1;
    /// Bit number of `XEN_PCIB_active`.
    _XEN_PCIB_ACTIVE: u32 = 2, c "_XEN_PCIB_active";
    /// The backend has an AER operation for the frontend.
    XEN_PCIB_ACTIVE: u32 = 1 << 2, c "XEN_PCIB_active";
    /// Read configuration space.
    XEN_PCI_OP_CONF_READ: u32 = 0, c "XEN_PCI_OP_conf_read";
    /// Write configuration space.
    XEN_PCI_OP_CONF_WRITE: u32 = 1, c "XEN_PCI_OP_conf_write";
    /// Enable MSI.
    XEN_PCI_OP_ENABLE_MSI: u32 = 2, c "XEN_PCI_OP_enable_msi";
    /// Disable MSI.
    XEN_PCI_OP_DISABLE_MSI: u32 = 3, c "XEN_PCI_OP_disable_msi";
    /// Enable MSI-X.
    XEN_PCI_OP_ENABLE_MSIX: u32 = 4, c "XEN_PCI_OP_enable_msix";
    /// Disable MSI-X.
    XEN_PCI_OP_DISABLE_MSIX: u32 = 5, c "XEN_PCI_OP_disable_msix";
    /// AER: an error was detected.
    XEN_PCI_OP_AER_DETECTED: u32 = 6, c "XEN_PCI_OP_aer_detected";
    /// AER: resume.
    XEN_PCI_OP_AER_RESUME: u32 = 7, c "XEN_PCI_OP_aer_resume";
    /// AER: MMIO enabled.
    XEN_PCI_OP_AER_MMIO: u32 = 8, c "XEN_PCI_OP_aer_mmio";
    /// AER: slot reset.
    XEN_PCI_OP_AER_SLOTRESET: u32 = 9, c "XEN_PCI_OP_aer_slotreset";
    /// Enable multi-vector MSI.
    XEN_PCI_OP_ENABLE_MULTI_MSI: u32 = 10, c "XEN_PCI_OP_enable_multi_msi";
    /// Success.
    XEN_PCI_ERR_SUCCESS: i32 = 0, c "XEN_PCI_ERR_success";
    /// No such device.
    XEN_PCI_ERR_DEV_NOT_FOUND: i32 = -1, c "XEN_PCI_ERR_dev_not_found";
    /// Bad configuration-space offset.
    XEN_PCI_ERR_INVALID_OFFSET: i32 = -2, c "XEN_PCI_ERR_invalid_offset";
    /// Access denied.
    XEN_PCI_ERR_ACCESS_DENIED: i32 = -3, c "XEN_PCI_ERR_access_denied";
    /// Not implemented.
    XEN_PCI_ERR_NOT_IMPLEMENTED: i32 = -4, c "XEN_PCI_ERR_not_implemented";
    /// The operation failed.
    XEN_PCI_ERR_OP_FAILED: i32 = -5, c "XEN_PCI_ERR_op_failed";
    /// MSI-X entries in one operation.
    SH_INFO_MAX_VEC: usize = 128;
}

/// The `magic` key's value in the PCI backend directory.
pub const XEN_PCI_MAGIC: &str = "7";
