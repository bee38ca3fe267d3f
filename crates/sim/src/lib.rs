//! The simulated hypervisor: Xen's memory, grant-table and event-channel
//! semantics on a plain Linux host, faithful where a protocol can observe
//! them.
//!
//! * Machine memory is one memfd of 4 KiB frames; each domain has a P2M
//!   whose placement policy ([`frames::Policy`]) makes pseudo-physical
//!   contiguity differ from machine contiguity.
//! * Grant tables v1 live in frames the granter owns; mapping follows Xen's
//!   flag protocol ([`grant`]), done in place by privileged processes.
//! * Event channels are pipes handed out with `SCM_RIGHTS` (the owner has
//!   the read end, each peer a write end of its own); a notify is a write
//!   to the peer's pipe and costs no round trip.
//! * The hv daemon ([`hv`]) owns domains and ports and serves a seqpacket
//!   socket ([`proto`]); every process attaches as one domain
//!   ([`client::SimDomain`], which implements the `platform` traits).
//!
//! Limits of the simulation: guest processes hold the machine memfd, so
//! memory isolation between guests rests on their code mapping only their
//! own frames. Started by root, each guest runs as its own uid
//! ([`confine`]), so it cannot trace or signal dom0 or attach as dom0;
//! started by anyone else, guests share dom0's uid and could do all that.

pub mod bench;
pub mod client;
pub mod confine;
pub mod frames;
pub mod fuzz;
pub mod grant;
pub mod hv;
pub mod layout;
pub mod pinlog;
pub mod probe;
pub mod proto;
pub mod sys;

pub use client::SimDomain;
pub use hv::{HvConfig, HvHandle, Hypervisor};
