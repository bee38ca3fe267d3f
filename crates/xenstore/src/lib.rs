//! The xenstore protocol of `xen/io/xs_wire.h` and `docs/misc/xenstore.txt`:
//! message framing on a byte stream ([`wire`]), paths ([`path`]),
//! permissions ([`perms`]) and the errors sent by name ([`XsError`]).
//!
//! Everything here parses bytes a client or a domain controls: lengths are
//! checked before anything is buffered, and no input makes it panic (fuzz
//! target `xs_wire`).

#![forbid(unsafe_code)]

pub mod client;
mod error;
pub mod escape;
pub mod fuzz;
pub mod path;
pub mod perms;
pub mod ring;
pub mod wire;

pub use client::{Client, ClientError, Tx, WatchEvent};
pub use error::XsError;
pub use path::Path;
pub use perms::{Access, Perm, Perms};
pub use wire::{Decoder, Header, Message, MsgType};
