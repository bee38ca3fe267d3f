//! Xen's shared-ring protocols, for both ends of a connection.
//!
//! * [`FrontRing`] and [`BackRing`]: the request/response rings of
//!   `xen/io/ring.h` (blkif, netif, the netif control ring, ...), for any
//!   request and response types and rings of one to sixteen pages. One
//!   implementation of the protocol serves both ends; the two types only
//!   hold each end's private indices.
//! * [`ByteProducer`] and [`ByteConsumer`]: the byte rings of the xenstore
//!   page (`xs_wire.h`, 1 KiB each way) and the console page (`console.h`,
//!   1 KiB in, 2 KiB out).
//!
//! The peer is assumed hostile. Indices are read once per check, their
//! distance is validated against the ring size before anything is read
//! (`RING_REQUEST_PROD_OVERFLOW` and stricter), slots are copied out before
//! use, and a peer that breaks the ring gets [`RingError::PeerBroken`],
//! never a panic or an out-of-bounds access. Barriers follow the C macros:
//! `xen_wmb` is a release store of the producer index, `xen_rmb` an acquire
//! load of it, and `xen_mb` a sequentially consistent fence.
//!
//! Memory is reached through [`RingMem`], so the same code runs on shared
//! pages ([`abi::VolatileSlice`]) and on loom's model memory in tests.

#![forbid(unsafe_code)]

mod bytes;
mod error;
pub mod fuzz;
mod memory;
mod shared;

pub use bytes::{ByteConsumer, ByteProducer, ByteRingLayout};
pub use error::RingError;
pub use memory::RingMem;
pub use shared::{BackRing, FrontRing};
