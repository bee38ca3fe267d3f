//! Errors of platform operations.

/// A grant-table status, `GNTST_*` of `grant_table.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GntStatus(pub i16);

impl GntStatus {
    /// `GNTST_okay`.
    pub const OKAY: GntStatus = GntStatus(abi::grant_table::GNTST_OKAY);
    /// `GNTST_general_error`.
    pub const GENERAL_ERROR: GntStatus = GntStatus(abi::grant_table::GNTST_GENERAL_ERROR);
    /// `GNTST_bad_domain`.
    pub const BAD_DOMAIN: GntStatus = GntStatus(abi::grant_table::GNTST_BAD_DOMAIN);
    /// `GNTST_bad_gntref`.
    pub const BAD_GNTREF: GntStatus = GntStatus(abi::grant_table::GNTST_BAD_GNTREF);
    /// `GNTST_permission_denied`.
    pub const PERMISSION_DENIED: GntStatus = GntStatus(abi::grant_table::GNTST_PERMISSION_DENIED);
    /// `GNTST_bad_page`.
    pub const BAD_PAGE: GntStatus = GntStatus(abi::grant_table::GNTST_BAD_PAGE);
    /// `GNTST_bad_copy_arg`.
    pub const BAD_COPY_ARG: GntStatus = GntStatus(abi::grant_table::GNTST_BAD_COPY_ARG);
    /// `GNTST_no_space`.
    pub const NO_SPACE: GntStatus = GntStatus(abi::grant_table::GNTST_NO_SPACE);

    /// Whether the operation succeeded.
    pub fn is_ok(self) -> bool {
        self == GntStatus::OKAY
    }

    /// Xen's name for the status.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "okay",
            -1 => "general error",
            -2 => "bad domain",
            -3 => "bad grant reference",
            -4 => "bad handle",
            -5 => "bad virtual address",
            -6 => "bad device address",
            -7 => "no device space",
            -8 => "permission denied",
            -9 => "bad page",
            -10 => "copy crosses a page",
            -11 => "address too big",
            -12 => "try again",
            -13 => "no space",
            _ => "unknown status",
        }
    }
}

impl std::fmt::Display for GntStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// What a platform operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A grant operation was refused.
    #[error("grant operation failed: {0}")]
    Grant(GntStatus),
    /// The grant is still mapped or being copied by the grantee.
    #[error("grant {0} is still in use by the grantee")]
    GrantInUse(abi::GrantRef),
    /// No such domain, or it is dying.
    #[error("no such domain {0}")]
    NoSuchDomain(abi::DomId),
    /// No such port, or it is not ours.
    #[error("bad event-channel port {0}")]
    BadPort(abi::Port),
    /// The caller lacks the privilege.
    #[error("permission denied")]
    PermissionDenied,
    /// Out of some resource (frames, ports, grant references).
    #[error("out of {0}")]
    Exhausted(&'static str),
    /// An argument was out of range.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// The hypervisor broke its protocol or went away.
    #[error("hypervisor protocol: {0}")]
    Protocol(&'static str),
    /// A system call failed.
    #[error("system call failed")]
    Io(#[from] std::io::Error),
}

/// A platform result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
