//! `xen/io/xs_wire.h`: the xenstore wire protocol: the message header, the
//! message types, the error names, and the shared ring page of a domain's
//! connection.

use core::mem::offset_of;

crate::wire_struct! {
    /// The header in front of every xenstore message.
    #[c = "struct xsd_sockmsg"]
    #[repr(C)]
    pub struct XsdSockmsg {
        /// `XS_*`.
        pub type_: u32,
        /// Chosen by the client, echoed in the reply.
        pub req_id: u32,
        /// Transaction id, 0 outside a transaction.
        pub tx_id: u32,
        /// Length of the payload that follows.
        pub len: u32,
    }

    /// A domain's xenstore page: two 1 KiB byte rings and their indices.
    #[c = "struct xenstore_domain_interface"]
    #[repr(C)]
    pub struct XenstoreDomainInterface {
        /// Requests to the daemon.
        pub req: [u8; XENSTORE_RING_SIZE],
        /// Replies and watch events.
        pub rsp: [u8; XENSTORE_RING_SIZE],
        /// Daemon's consumer index of `req`.
        pub req_cons: u32,
        /// Guest's producer index of `req`.
        pub req_prod: u32,
        /// Guest's consumer index of `rsp`.
        pub rsp_cons: u32,
        /// Daemon's producer index of `rsp`.
        pub rsp_prod: u32,
        /// `XENSTORE_SERVER_FEATURE_*` the daemon offers.
        pub server_features: u32,
        /// `XENSTORE_CONNECTED` or `XENSTORE_RECONNECT`.
        pub connection: u32,
        /// `XENSTORE_ERROR_*`.
        pub error: u32,
    }
}

/// Every wire structure of this module.
pub const LAYOUTS: &[crate::pod::TypeLayout] = {
    use crate::pod::CLayout;
    &[XsdSockmsg::LAYOUT, XenstoreDomainInterface::LAYOUT]
};

crate::xen_consts! {
    /// Debug and control commands.
    XS_CONTROL: u32 = 0;
    /// List a node's children.
    XS_DIRECTORY: u32 = 1;
    /// Read a node.
    XS_READ: u32 = 2;
    /// Read a node's permissions.
    XS_GET_PERMS: u32 = 3;
    /// Register a watch.
    XS_WATCH: u32 = 4;
    /// Remove a watch.
    XS_UNWATCH: u32 = 5;
    /// Start a transaction.
    XS_TRANSACTION_START: u32 = 6;
    /// Commit or abort a transaction.
    XS_TRANSACTION_END: u32 = 7;
    /// Introduce a domain's ring to the daemon.
    XS_INTRODUCE: u32 = 8;
    /// Forget a domain.
    XS_RELEASE: u32 = 9;
    /// A domain's home path.
    XS_GET_DOMAIN_PATH: u32 = 10;
    /// Write a node.
    XS_WRITE: u32 = 11;
    /// Create a node.
    XS_MKDIR: u32 = 12;
    /// Remove a node and its children.
    XS_RM: u32 = 13;
    /// Set a node's permissions.
    XS_SET_PERMS: u32 = 14;
    /// A watch fired (daemon to client).
    XS_WATCH_EVENT: u32 = 15;
    /// An error reply.
    XS_ERROR: u32 = 16;
    /// Whether a domain is introduced.
    XS_IS_DOMAIN_INTRODUCED: u32 = 17;
    /// Clear a domain's shutdown flag.
    XS_RESUME: u32 = 18;
    /// Give a domain privileges over another (a device model's).
    XS_SET_TARGET: u32 = 19;
    /// Remove all of a connection's watches.
    XS_RESET_WATCHES: u32 = 21;
    /// List children, one part at a time.
    XS_DIRECTORY_PART: u32 = 22;
    /// Not a message type, ever.
    XS_INVALID: u32 = 0xffff;
    /// Payload limit of one message.
    XENSTORE_PAYLOAD_MAX: usize = 4096;
    /// Limit of an absolute path.
    XENSTORE_ABS_PATH_MAX: usize = 3072;
    /// Limit of a relative path.
    XENSTORE_REL_PATH_MAX: usize = 2048;
    /// Size of each byte ring of the domain page.
    XENSTORE_RING_SIZE: usize = 1024;
    /// The daemon supports reconnection (`connection`).
    XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
    /// The daemon reports errors (`error`).
    XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
    /// Steady state.
    XENSTORE_CONNECTED: u32 = 0;
    /// Reconnection in progress.
    XENSTORE_RECONNECT: u32 = 1;
    /// No error.
    XENSTORE_ERROR_NONE: u32 = 0;
    /// Communication problem.
    XENSTORE_ERROR_COMM: u32 = 1;
    /// Invalid ring index.
    XENSTORE_ERROR_RINGIDX: u32 = 2;
    /// Protocol violation (payload too long).
    XENSTORE_ERROR_PROTO: u32 = 3;
    /// Index of the path in a watch event's payload.
    XS_WATCH_PATH: u32 = 0;
    /// Index of the token in a watch event's payload.
    XS_WATCH_TOKEN: u32 = 1;
}

/// Get a feature bit (Xen 4.18's `xs_wire.h`; absent from 4.17's, so not
/// checked by the layout test).
pub const XS_GET_FEATURE: u32 = 23;
/// Set a feature bit (Xen 4.18+).
pub const XS_SET_FEATURE: u32 = 24;
/// Get a quota (Xen 4.18+).
pub const XS_GET_QUOTA: u32 = 25;
/// Set a quota (Xen 4.18+).
pub const XS_SET_QUOTA: u32 = 26;
/// Number of message types we know (`XS_TYPE_COUNT` of Xen 4.18+).
pub const XS_TYPE_COUNT: u32 = 27;

/// `XS_WRITE` flags of the old protocol.
pub const XS_WRITE_NONE: &str = "NONE";
/// Create the node.
pub const XS_WRITE_CREATE: &str = "CREATE";
/// Create the node; fail if it exists.
pub const XS_WRITE_CREATE_EXCL: &str = "CREATE|EXCL";

/// The errors xenstore replies with, in `xsd_errors` order: the Linux errno
/// and the name sent on the wire in an `XS_ERROR` reply.
pub const XSD_ERRORS: &[(i32, &str)] = &[
    (22, "EINVAL"),
    (13, "EACCES"),
    (17, "EEXIST"),
    (21, "EISDIR"),
    (2, "ENOENT"),
    (12, "ENOMEM"),
    (28, "ENOSPC"),
    (5, "EIO"),
    (39, "ENOTEMPTY"),
    (38, "ENOSYS"),
    (30, "EROFS"),
    (16, "EBUSY"),
    (11, "EAGAIN"),
    (106, "EISCONN"),
    (7, "E2BIG"),
    (1, "EPERM"),
];

/// Offsets in the domain page, for the byte-ring code.
pub mod offsets {
    use super::*;
    /// `req`.
    pub const REQ: usize = offset_of!(XenstoreDomainInterface, req);
    /// `rsp`.
    pub const RSP: usize = offset_of!(XenstoreDomainInterface, rsp);
    /// `req_cons`.
    pub const REQ_CONS: usize = offset_of!(XenstoreDomainInterface, req_cons);
    /// `req_prod`.
    pub const REQ_PROD: usize = offset_of!(XenstoreDomainInterface, req_prod);
    /// `rsp_cons`.
    pub const RSP_CONS: usize = offset_of!(XenstoreDomainInterface, rsp_cons);
    /// `rsp_prod`.
    pub const RSP_PROD: usize = offset_of!(XenstoreDomainInterface, rsp_prod);
    /// `server_features`.
    pub const SERVER_FEATURES: usize = offset_of!(XenstoreDomainInterface, server_features);
    /// `connection`.
    pub const CONNECTION: usize = offset_of!(XenstoreDomainInterface, connection);
    /// `error`.
    pub const ERROR: usize = offset_of!(XenstoreDomainInterface, error);
}
