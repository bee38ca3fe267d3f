//! The one system call std lacks: punching a hole in a file. Every
//! `unsafe` block of the crate is here.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Deallocates `len` bytes at `offset` of `file` (which then read as
/// zeroes), keeping its size: `fallocate(FALLOC_FL_PUNCH_HOLE)`. On a
/// block device the kernel discards or zeroes the range.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let off = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    let len = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: a plain system call on a descriptor `file` owns for the
    // call's duration; no memory of ours is passed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
