//! Our xenstore daemon: the tree ([`store`]), transactions that conflict
//! only on what they touched ([`tx`]), watches, the unix-socket transport
//! ([`server`]) and domains on their ring pages ([`domain`]).
//! Specification: `docs/misc/xenstore.txt` and `xen/io/xs_wire.h`;
//! behaviour matched against Debian's C xenstored.
//!
//! Not built yet: the `outstanding` and `memory` quotas. Built: the path-length,
//! node-size, permission-entry, node-count, transaction and watch quotas
//! for unprivileged callers, GET/SET_QUOTA, and Xen 4.18's features
//! (GET/SET_FEATURE, watch depth, ring reconnection).

pub mod domain;
pub mod fuzz;
pub mod server;
pub mod state;
pub mod store;
pub mod tx;

pub use server::{Core, Daemon};
