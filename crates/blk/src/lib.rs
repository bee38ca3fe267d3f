//! The block device of `xen/io/blkif.h`, backend side.
//!
//! * [`request`]: a request slot, copied out of the ring, decoded for
//!   either ABI (`x86_64-abi`, `x86_32-abi`) and validated against the
//!   disk before any I/O: every field the frontend controls is checked.
//! * [`storage`]: the storage engines behind one trait: a raw file or
//!   block device, and ([`remote`]) a disk on an NBD server.
//! * [`serve`]: one request served: the data moved between the guest's
//!   granted pages and the disk through a [`serve::Mover`], and the
//!   response status.
//! * [`front`]: blkfront's data path, in the guest process.
//! * [`nbd`]: the NBD server that exports a guest's disk to host tools.
//! * [`reattach`]: a guest's disk that outlives its backend connections:
//!   a transfer in flight when the backend goes is made again on the next.
//!
//! The raw-file engine submits a batch through io_uring when `O_DIRECT`,
//! one `pread`/`pwrite` after another when buffered (faster here).

// Safe code only, but for one system call in `sys`.
#![deny(unsafe_code)]

pub mod front;
pub mod fuzz;
pub mod nbd;
pub mod reattach;
pub mod remote;
pub mod request;
pub mod serve;
pub mod storage;
mod sys;
