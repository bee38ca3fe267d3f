//! Errors of the ring protocols.

use abi::mem::BadAccess;

/// What went wrong on a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The shared memory cannot hold the ring's layout.
    #[error("shared memory of {len} bytes is too small for this ring")]
    TooSmall {
        /// Length of the memory offered.
        len: usize,
    },
    /// The front end has no free slot for another request.
    #[error("ring is full")]
    Full,
    /// The back end tried to answer more requests than it has consumed.
    #[error("no consumed request is waiting for a response")]
    NoRequestInFlight,
    /// The peer left the shared indices in a state no correct peer can
    /// produce; the connection should be dropped.
    #[error("peer broke the ring: {what} is {value} (own index {own}, ring size {size})")]
    PeerBroken {
        /// Which index is wrong.
        what: &'static str,
        /// The value the peer left there.
        value: u32,
        /// Our index it was checked against.
        own: u32,
        /// Entries in the ring.
        size: u32,
    },
    /// A memory access failed (a bug: offsets are checked at attach).
    #[error("shared memory access failed")]
    Memory(#[source] BadAccess),
}

impl RingError {
    /// Whether the peer is at fault and the connection should be dropped.
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, RingError::PeerBroken { .. })
    }
}

impl From<BadAccess> for RingError {
    fn from(e: BadAccess) -> RingError {
        RingError::Memory(e)
    }
}
