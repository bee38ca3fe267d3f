//! Our xenstore daemon: the tree ([`store`]), transactions that conflict
//! only on what they touched ([`tx`]), watches, and the unix-socket
//! transport ([`server`]). Specification: `docs/misc/xenstore.txt` and
//! `xen/io/xs_wire.h`; behaviour matched against Debian's C xenstored.
//!
//! Not built yet: domain connections over ring pages (INTRODUCE, RELEASE,
//! `@introduceDomain`/`@releaseDomain`), SET_TARGET, quotas and
//! GET/SET_QUOTA, features, and watch depth.

pub mod fuzz;
pub mod server;
pub mod state;
pub mod store;
pub mod tx;

pub use server::{Core, Daemon};
