//! Our xenstore daemon: the tree ([`store`]), transactions that conflict
//! only on what they touched ([`tx`]), watches, and the unix-socket
//! transport ([`server`]). Specification: `docs/misc/xenstore.txt` and
//! `xen/io/xs_wire.h`; behaviour matched against Debian's C xenstored.
//!
//! Not built yet: domain connections over ring pages (INTRODUCE, RELEASE,
//! `@introduceDomain`/`@releaseDomain`), SET_TARGET, the per-domain
//! node-count quota and GET/SET_QUOTA, features, and watch depth. Built:
//! the path-length, node-size, permission-entry, transaction and watch
//! quotas for unprivileged callers.

pub mod fuzz;
pub mod server;
pub mod state;
pub mod store;
pub mod tx;

pub use server::{Core, Daemon};
