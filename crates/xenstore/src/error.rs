//! The errors xenstore replies with, sent by name in an `XS_ERROR` reply.

/// A xenstore error: one of `xsd_errors` of `xs_wire.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum XsError {
    /// Invalid argument.
    #[error("EINVAL")]
    Inval,
    /// Permission denied.
    #[error("EACCES")]
    Acces,
    /// The node exists.
    #[error("EEXIST")]
    Exist,
    /// Is a directory.
    #[error("EISDIR")]
    IsDir,
    /// No such node.
    #[error("ENOENT")]
    NoEnt,
    /// Out of memory (or over a memory quota).
    #[error("ENOMEM")]
    NoMem,
    /// No space (over a quota).
    #[error("ENOSPC")]
    NoSpc,
    /// I/O error.
    #[error("EIO")]
    Io,
    /// Directory not empty.
    #[error("ENOTEMPTY")]
    NotEmpty,
    /// Not implemented.
    #[error("ENOSYS")]
    NoSys,
    /// Read-only.
    #[error("EROFS")]
    RoFs,
    /// Busy.
    #[error("EBUSY")]
    Busy,
    /// Try again: the transaction conflicted.
    #[error("EAGAIN")]
    Again,
    /// Already connected.
    #[error("EISCONN")]
    IsConn,
    /// Too big (over a quota).
    #[error("E2BIG")]
    TooBig,
    /// Not permitted.
    #[error("EPERM")]
    Perm,
}

const ALL: [XsError; 16] = [
    XsError::Inval,
    XsError::Acces,
    XsError::Exist,
    XsError::IsDir,
    XsError::NoEnt,
    XsError::NoMem,
    XsError::NoSpc,
    XsError::Io,
    XsError::NotEmpty,
    XsError::NoSys,
    XsError::RoFs,
    XsError::Busy,
    XsError::Again,
    XsError::IsConn,
    XsError::TooBig,
    XsError::Perm,
];

impl XsError {
    /// The name sent on the wire (`EINVAL`, ...).
    pub fn name(self) -> &'static str {
        abi::xs_wire::XSD_ERRORS[self as usize].1
    }

    /// The Linux errno.
    pub fn errno(self) -> i32 {
        abi::xs_wire::XSD_ERRORS[self as usize].0
    }

    /// The error an `XS_ERROR` payload names (`EINVAL\0`), if known.
    pub fn from_payload(payload: &[u8]) -> Option<XsError> {
        let name = payload.strip_suffix(b"\0").unwrap_or(payload);
        ALL.into_iter().find(|e| e.name().as_bytes() == name)
    }

    /// The error for a Linux errno, if xenstore has one.
    pub fn from_errno(errno: i32) -> Option<XsError> {
        ALL.into_iter().find(|e| e.errno() == errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_errnos_follow_the_xsd_errors_table() {
        for (i, e) in ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
            assert_eq!(e.to_string(), e.name());
            assert_eq!(
                XsError::from_payload(format!("{}\0", e.name()).as_bytes()),
                Some(*e)
            );
            assert_eq!(XsError::from_errno(e.errno()), Some(*e));
        }
        assert_eq!(XsError::Again.errno(), 11);
        assert_eq!(XsError::from_payload(b"EWHAT\0"), None);
    }
}
