//! Our xenstore daemon: the tree ([`store`]), transactions that conflict
//! only on what they touched ([`tx`]), watches, the unix-socket transport
//! ([`server`]) and domains on their ring pages ([`domain`]), polling a
//! while for the next request before sleeping ([`busy_poll`]).
//! Specification: `docs/misc/xenstore.txt` and `xen/io/xs_wire.h`;
//! behaviour matched against Debian's C xenstored.
//!
//! Built: C xenstored's quotas for unprivileged callers (path length, node
//! size, permission entries, nodes, transactions, watches, outstanding
//! requests, memory), GET/SET_QUOTA, and Xen 4.18's features
//! (GET/SET_FEATURE, watch depth, ring reconnection).

pub mod busy_poll;
pub mod domain;
pub mod fuzz;
pub mod server;
pub mod state;
pub mod store;
pub mod tx;

pub use server::{Core, Daemon};
