//! The system calls std lacks: punching a hole in a file, reading
//! straight into shared memory (`preadv`), and io_uring for batches of
//! reads and writes. Every `unsafe` block of the crate is here.

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

/// Fills `dst`, one slice after another, from `file` at `offset`: all of
/// it or an error (`UnexpectedEof` past the end), `preadv` again after a
/// short read. The slices are shared memory (a guest's mapped pages):
/// the kernel writes into them; nothing here reads them.
pub(crate) fn preadv_exact(
    file: &File,
    dst: &[abi::VolatileSlice<'_>],
    offset: u64,
) -> io::Result<()> {
    // Where the read stands: slice `i`, `skip` bytes into it.
    let (mut i, mut skip, mut at) = (0usize, 0usize, offset);
    loop {
        // Past what is filled (and past empty slices): nothing left is
        // done.
        while i < dst.len() && dst[i].len() == skip {
            i += 1;
            skip = 0;
        }
        if i == dst.len() {
            return Ok(());
        }
        let iov: Vec<libc::iovec> = dst[i..]
            .iter()
            .take(libc::UIO_MAXIOV as usize)
            .enumerate()
            .map(|(k, s)| {
                let from = if k == 0 { skip } else { 0 };
                libc::iovec {
                    // In bounds: `from` < the slice's length.
                    iov_base: s.as_ptr().wrapping_add(from).cast(),
                    iov_len: s.len() - from,
                }
            })
            .collect();
        let off = libc::off_t::try_from(at).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: every iovec lies inside one of `dst`'s slices, which
        // borrow live mappings for the call's duration; the kernel writes
        // at most `iov_len` bytes into each.
        let n = unsafe { libc::preadv(file.as_raw_fd(), iov.as_ptr(), iov.len() as i32, off) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut n = n as usize;
        at += n as u64;
        while n > 0 && i < dst.len() {
            let step = n.min(dst[i].len() - skip);
            n -= step;
            skip += step;
            if skip == dst[i].len() {
                i += 1;
                skip = 0;
            }
        }
    }
}

/// One read or write of a [`Uring::run`] batch.
pub(crate) enum RawIo<'a> {
    /// Read into the buffer from the offset.
    Read(&'a mut [u8], u64),
    /// Write the buffer at the offset.
    Write(&'a [u8], u64),
}

impl RawIo<'_> {
    fn len(&self) -> usize {
        match self {
            RawIo::Read(b, _) => b.len(),
            RawIo::Write(b, _) => b.len(),
        }
    }
}

/// An io_uring of our own: a batch of reads and writes on one file goes
/// to the kernel in one `io_uring_enter`.
pub(crate) struct Uring {
    ring: io_uring::IoUring,
    entries: usize,
}

impl Uring {
    /// A ring of `entries` (a power of two), if the kernel lets us have one.
    pub(crate) fn new(entries: u32) -> io::Result<Uring> {
        Ok(Uring {
            ring: io_uring::IoUring::new(entries)?,
            entries: entries as usize,
        })
    }

    /// Runs `ios` on `file`, as many at once as the ring holds; each one's
    /// result (a short transfer is finished by plain `pread`/`pwrite`).
    pub(crate) fn run(&mut self, file: &File, ios: &mut [RawIo<'_>]) -> Vec<io::Result<()>> {
        use io_uring::{opcode, types};
        let fd = types::Fd(file.as_raw_fd());
        let mut results: Vec<io::Result<usize>> = (0..ios.len()).map(|_| Ok(0)).collect();
        for (base, chunk) in ios.chunks_mut(self.entries).enumerate() {
            let base = base * self.entries;
            let mut pushed = 0;
            for (i, io) in chunk.iter_mut().enumerate() {
                let len = u32::try_from(io.len()).unwrap_or(u32::MAX);
                let e = match io {
                    RawIo::Read(b, off) => opcode::Read::new(fd, b.as_mut_ptr(), len)
                        .offset(*off)
                        .build(),
                    RawIo::Write(b, off) => {
                        opcode::Write::new(fd, b.as_ptr(), len).offset(*off).build()
                    }
                };
                let e = e.user_data((base + i) as u64);
                // SAFETY: the buffer and the descriptor stay alive and
                // unmoved until this function has taken every completion
                // of the chunk (below): the kernel is done with them before
                // their borrows end.
                if unsafe { self.ring.submission().push(&e) }.is_err() {
                    results[base + i] = Err(io::Error::other("io_uring queue full"));
                    continue;
                }
                pushed += 1;
            }
            let mut done = 0;
            let mut failures = 0;
            while done < pushed {
                if let Err(e) = self.ring.submit_and_wait(pushed - done) {
                    if e.kind() != io::ErrorKind::Interrupted {
                        failures += 1;
                        // The kernel may still use the buffers: they must
                        // not be handed back before it is done. A ring
                        // that keeps failing leaves no safe way on.
                        if failures > 100 {
                            std::process::abort();
                        }
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    continue;
                }
                for cqe in self.ring.completion() {
                    let k = cqe.user_data() as usize;
                    let r = cqe.result();
                    if let Some(slot) = results.get_mut(k) {
                        *slot = if r < 0 {
                            Err(io::Error::from_raw_os_error(-r))
                        } else {
                            Ok(r as usize)
                        };
                    }
                    done += 1;
                }
            }
        }
        // Short transfers finished the plain way.
        ios.iter_mut()
            .zip(results)
            .map(|(io, r)| {
                use std::os::unix::fs::FileExt;
                let n = r?;
                match io {
                    RawIo::Read(b, off) if n < b.len() => {
                        file.read_exact_at(&mut b[n..], *off + n as u64)
                    }
                    RawIo::Write(b, off) if n < b.len() => {
                        file.write_all_at(&b[n..], *off + n as u64)
                    }
                    _ => Ok(()),
                }
            })
            .collect()
    }
}
