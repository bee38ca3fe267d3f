//! The system calls the simulated hypervisor is made of: memfds, shared
//! mappings, eventfds, and unix seqpacket sockets that carry descriptors.
//! Every `unsafe` block of the crate is here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use abi::VolatileSlice;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A new memfd of `len` bytes (zero-filled, sparse).
pub fn memfd(name: &str, len: u64) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `name` is a valid C string; the flags are valid.
    let fd = cvt(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: `fd` was just returned to us and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: plain syscall on a descriptor we own.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    Ok(fd)
}

/// Forbids new writable mappings of a memfd (`F_SEAL_FUTURE_WRITE`): those
/// who get it afterwards can only read it, while our own mapping still
/// writes.
pub fn seal_future_write(fd: &OwnedFd) -> io::Result<()> {
    const F_SEAL_FUTURE_WRITE: libc::c_int = 0x0010;
    // SAFETY: plain fcntl on a descriptor we own.
    cvt(unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            F_SEAL_FUTURE_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    })?;
    Ok(())
}

/// Fixes a memfd's size for good (`F_SEAL_SHRINK | F_SEAL_GROW`).
pub fn seal_size(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain fcntl on a descriptor we own.
    cvt(unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    })?;
    Ok(())
}

/// Raises our soft limit of open descriptors to the hard limit.
pub fn raise_fd_limit() {
    // SAFETY: `lim` is written by getrlimit before being read.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer; setrlimit reads a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The size of a file.
pub fn file_len(fd: &OwnedFd) -> io::Result<u64> {
    // SAFETY: `st` is written by fstat before being read.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st.st_size as u64)
}

/// A virtual address range we mapped; unmapped when dropped.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the range is only reached through `VolatileSlice`s.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Reserves `len` bytes of address space, inaccessible until pieces are
    /// mapped over it with [`map_fixed`](Self::map_fixed).
    pub fn reserve(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous PROT_NONE mapping at an address of the
        // kernel's choosing touches no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(io::ErrorKind::Other)?;
        Ok(Mapping {
            ptr,
            len: len.max(1),
        })
    }

    /// Maps all of `fd` shared (`len` bytes from offset 0).
    pub fn shared(fd: &OwnedFd, len: usize, writable: bool) -> io::Result<Mapping> {
        let m = Mapping::reserve(len)?;
        m.map_fixed(0, fd, 0, len, writable)?;
        Ok(m)
    }

    /// Maps `len` bytes of `fd` at `file_offset` over our bytes at
    /// `offset`, replacing what was there.
    pub fn map_fixed(
        &self,
        offset: usize,
        fd: &OwnedFd,
        file_offset: u64,
        len: usize,
        writable: bool,
    ) -> io::Result<()> {
        let end = offset.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?;
        if end > self.len {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let off = libc::off_t::try_from(file_offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: the target range is inside our own reservation (checked
        // above), so MAP_FIXED replaces only pages this `Mapping` owns.
        let p = unsafe {
            libc::mmap(
                self.ptr.as_ptr().add(offset).cast(),
                len,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The whole range.
    pub fn slice(&self) -> VolatileSlice<'_> {
        // SAFETY: the range is mapped for as long as `self` lives and no
        // reference into it is ever formed.
        unsafe { VolatileSlice::new(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this range and nothing borrows it any
        // more (slices borrow `self`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A new non-blocking eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: a fresh descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd (an event-channel notification).
pub fn eventfd_signal(fd: RawFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64.
    let r = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    if r == 8 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // A full counter still means "pending".
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(())
    } else {
        Err(e)
    }
}

/// Bytes an event pipe holds (one page): a port nobody reads costs no more.
const EVENT_PIPE_SIZE: libc::c_int = 4096;

/// A port's event object: a pipe, both ends non-blocking. Its owner
/// polls and drains the read end; whoever may signal it gets a write end
/// of its own ([`event_writer`]). Unlike an eventfd, whose one file
/// description every holder shares (so that any of them can make it
/// blocking, fill it and leave the next writer stuck, or read the owner's
/// events away), no holder can change another's end or read from a
/// write end.
pub fn event_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: a valid out-array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: fresh descriptors, owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: plain fcntl. Failing leaves the default size: not worth failing for.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, EVENT_PIPE_SIZE) };
    Ok((r, w))
}

/// A write end of the event pipe whose write end `w` is, with a file
/// description of its own (non-blocking whatever other holders do).
pub fn event_writer(w: &OwnedFd) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", w.as_raw_fd()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid C string; plain open.
    let fd = cvt(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Signals an event pipe (an event-channel notification). A full pipe is
/// an event pending already, a pipe nobody reads any more a port gone:
/// neither is an error, as Xen drops events to closed ports. The latter
/// raises `SIGPIPE` too: a program using the sim must ignore it, as Rust
/// programs do.
pub fn event_signal(w: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: writes one byte from a live buffer.
        if unsafe { libc::write(w, [1u8].as_ptr().cast(), 1) } == 1 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN | libc::EPIPE) => return Ok(()),
            _ => return Err(e),
        }
    }
}

/// Clears an event pipe's read end (or an eventfd); whether anything was
/// pending. One read: it takes all an event pipe holds (should the pipe
/// be larger, what is left only makes the port look pending again), and
/// never a second, which would block on a descriptor its owner made
/// blocking.
pub fn event_clear(r: RawFd) -> io::Result<bool> {
    let mut buf = [0u8; EVENT_PIPE_SIZE as usize];
    loop {
        // SAFETY: reads into a live buffer of its length.
        let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Waits until `fd` is readable or `timeout_ms` passes (-1: forever).
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r >= 0 {
            return Ok(r > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Largest message on the hypervisor socket, and most descriptors in one.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most descriptors passed with one message.
pub const MAX_FDS: usize = 4;

/// Sends one datagram with `fds` attached.
pub fn send_msg(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let mut cmsg_buf = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let fd_bytes = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer (64 bytes) holds one cmsg of up to
        // MAX_FDS descriptors; CMSG_FIRSTHDR points inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let r = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Who sent a datagram, as the kernel saw it when it was sent
/// (`SCM_CREDENTIALS`): not who connected the socket, which may have been
/// someone else (a launcher, before it gave up its uid).
#[derive(Debug)]
pub struct Sender {
    /// Its process (0 if it is outside our pid namespace).
    pub pid: i32,
    /// Its real uid.
    pub uid: u32,
    /// Its process as a pidfd, where the kernel tells it.
    pub process: SenderProcess,
}

/// What the kernel said of a datagram's sending process (`SCM_PIDFD`,
/// Linux 6.5 on, on a socket set to [`pass_pidfd`]): unlike its pid, a
/// pidfd is that process's for good, even if it has exited since and its
/// pid is someone else's.
#[derive(Debug)]
pub enum SenderProcess {
    /// A pidfd of the process that sent it.
    Open(OwnedFd),
    /// The kernel could not make one: the process has gone.
    Gone,
    /// Nothing said (an older kernel, or not asked for).
    Untold,
}

/// `SO_PASSPIDFD` and `SCM_PIDFD` (Linux 6.5; not in our `libc` yet). The
/// first is the generic number, which sparc does not use (nor alpha or
/// parisc, which Rust does not build for): there we do not ask.
const SO_PASSPIDFD: Option<libc::c_int> =
    if cfg!(any(target_arch = "sparc", target_arch = "sparc64")) {
        None
    } else {
        Some(76)
    };
const SCM_PIDFD: libc::c_int = 0x04;

/// Has the kernel attach a pidfd of each datagram's sender to what `sock`
/// receives ([`SenderProcess`]), or stop. A kernel without it ignores
/// this.
pub fn pass_pidfd(sock: RawFd, on: bool) {
    let Some(option) = SO_PASSPIDFD else {
        return;
    };
    let on = libc::c_int::from(on);
    // SAFETY: a valid pointer to an int of the size given; a failure
    // (an older kernel) changes nothing.
    unsafe {
        libc::setsockopt(
            sock,
            libc::SOL_SOCKET,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Receives one datagram into `buf`, with any descriptors attached. Returns
/// 0 bytes at end of stream. A truncated datagram is an error.
pub fn recv_msg(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    recv_msg_from(sock, buf, fds).map(|(n, _)| n)
}

/// As [`recv_msg`], with the sender's credentials when the socket passes
/// them (`SO_PASSCRED`, see [`listen_seqpacket`]).
pub fn recv_msg_from(
    sock: RawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<(usize, Option<Sender>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for as many descriptors as a sender may attach (`SCM_MAX_FD`,
    // 253: fewer, and the kernel would install some it could not tell us
    // of), one set of credentials and a pidfd.
    let mut cmsg_buf = [0u64; 144];
    // SAFETY: an all-zero msghdr is valid; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf);
    let n = loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let r = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut sender = None;
    let mut process = SenderProcess::Untold;
    // Take ownership of every descriptor first, so none leaks on error.
    // SAFETY: the kernel filled `msg_control` with well-formed cmsgs within
    // `msg_controllen`; the CMSG_* macros walk them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let payload = (*c).cmsg_len - libc::CMSG_LEN(0) as usize;
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..payload / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            } else if (*c).cmsg_level == libc::SOL_SOCKET
                && (*c).cmsg_type == libc::SCM_CREDENTIALS
                && payload >= std::mem::size_of::<libc::ucred>()
            {
                let cred = libc::CMSG_DATA(c).cast::<libc::ucred>().read_unaligned();
                sender = Some((cred.pid, cred.uid));
            } else if (*c).cmsg_level == libc::SOL_SOCKET
                && (*c).cmsg_type == SCM_PIDFD
                && payload >= std::mem::size_of::<RawFd>()
            {
                // A negative number is the kernel's error making it.
                let fd = libc::CMSG_DATA(c).cast::<RawFd>().read_unaligned();
                process = if fd >= 0 {
                    SenderProcess::Open(OwnedFd::from_raw_fd(fd))
                } else {
                    SenderProcess::Gone
                };
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message truncated",
        ));
    }
    Ok((n, sender.map(|(pid, uid)| Sender { pid, uid, process })))
}

/// Our effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// A pidfd for process `pid`: readable once the process has exited.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Sends `sig` to the process behind a pidfd (never to a reused pid).
pub fn pidfd_signal(pidfd: &OwnedFd, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall; a null siginfo is allowed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Random bytes from the kernel.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes within `buf[done..]`.
        let r = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            done += r as usize;
        }
    }
    Ok(())
}

/// A listening unix seqpacket socket at `path`. Its connections pass
/// each datagram's sender (`SO_PASSCRED`, inherited at accept; a datagram
/// sent before the accept carries its sender too), for
/// [`recv_msg_from`].
pub fn listen_seqpacket(path: &std::path::Path) -> io::Result<OwnedFd> {
    let fd = socket()?;
    let on: libc::c_int = 1;
    // SAFETY: a valid pointer to an int of the size given.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    let (addr, len) = sockaddr(path)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    // SAFETY: plain syscall.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
    Ok(fd)
}

/// A connection to the seqpacket socket at `path`.
pub fn connect_seqpacket(path: &std::path::Path) -> io::Result<OwnedFd> {
    let fd = socket()?;
    let (addr, len) = sockaddr(path)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    Ok(fd)
}

/// Accepts a connection (non-blocking listener: `None` when none waits).
pub fn accept(listener: RawFd) -> io::Result<Option<OwnedFd>> {
    // SAFETY: null address pointers are allowed.
    let r = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: a fresh descriptor, owned by nobody else.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(r) }))
}

/// Lets a descriptor survive `exec` (for a benchmark's child).
pub fn set_inheritable(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: plain fcntl.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) })?;
    Ok(())
}

/// A copy of `fd` numbered `min` or above, closed on exec.
pub fn dup_at_least(fd: &OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain fcntl.
    let r = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: a fresh descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Takes `fd`, inherited from whoever started us, if it is a socket; it is
/// closed on exec from now on.
pub fn adopt_socket(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: fstat writes `st` and only reads the descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    if fd < 0 || unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    // SAFETY: plain fcntl.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: an inherited descriptor nothing else in this process owns:
    // it was named to us (`$DOM0KIT_HV_FD`), once.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `cmd`'s child [`become_guest`] between its fork and its exec.
pub fn exec_as_guest(cmd: &mut std::process::Command, hv: RawFd, dir: std::ffi::CString, id: u32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure makes only async-signal-safe system calls on
    // values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || become_guest(hv, &dir, id));
    }
}

/// Kills every process of uid `id` (real or saved: what a process whose
/// effective uid is `id` may signal), from a child whose effective uid is
/// `id` and whose real and saved uid are `shield`, a uid nothing runs as:
/// so the processes it hunts can neither signal nor trace it. A few
/// sweeps, so that what forks meanwhile goes too; a child that takes more
/// than a second is killed. Best effort: the processes killed may linger
/// as zombies until their parents reap them.
pub fn kill_uid(id: u32, shield: u32) -> io::Result<()> {
    // SAFETY: the child makes only async-signal-safe system calls and
    // leaves by `_exit`; the parent waits for it.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // The raw call: this thread alone, no library bookkeeping;
            // checked, lest a narrower call cut the uid to someone else's.
            if libc::syscall(libc::SYS_setresuid, shield, id, shield) != 0 || libc::geteuid() != id
            {
                libc::_exit(1);
            }
            // `kill(-1)` spares the caller.
            for _ in 0..8 {
                libc::kill(-1, libc::SIGKILL);
            }
            libc::_exit(0);
        }
        let mut status = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            let r = libc::waitpid(pid, &mut status, libc::WNOHANG);
            if r == pid {
                break;
            }
            if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return Err(io::Error::last_os_error());
            }
            if std::time::Instant::now() > deadline {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else {
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        }
    }
}

/// The distinct real uids of the processes we can see, in `range`.
pub fn uids_running(range: std::ops::Range<u32>) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok());
        if let Some(u) = uid.filter(|u| range.contains(u) && !found.contains(u)) {
            found.push(u);
        }
    }
    found
}

/// Takes an exclusive lock on `file` if nobody holds one (`flock`); it is
/// held until the file is closed.
pub fn try_lock(file: &std::fs::File) -> io::Result<bool> {
    // SAFETY: plain flock on a descriptor we hold.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Whether uids `first..first + count` exist in our user namespace (a
/// root without them, in a container, cannot become them).
pub fn uids_mapped(first: u32, count: u32) -> bool {
    let Ok(map) = std::fs::read_to_string("/proc/self/uid_map") else {
        return false;
    };
    map.lines().any(|l| {
        let v: Vec<u64> = l
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        matches!(v[..], [inside, _, n] if inside <= u64::from(first)
            && u64::from(first) + u64::from(count) <= inside + n)
    })
}

/// Whether the file of `fd` may be executed by anyone (the other-execute
/// bit).
pub fn executable_by_others(fd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: fstat writes `st`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st.st_mode & libc::S_IXOTH != 0)
}

/// Our real uid and gid, and how many supplementary groups we have.
pub fn ids() -> (u32, u32, i32) {
    // SAFETY: plain system calls; a null list asks for the count.
    unsafe {
        (
            libc::getuid(),
            libc::getgid(),
            libc::getgroups(0, std::ptr::null_mut()),
        )
    }
}

/// Clears `O_NONBLOCK` on `fd`'s file description (what a hostile
/// holder of a shared descriptor could do to the others).
pub fn set_blocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: plain fcntl.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    Ok(())
}

/// Writes `v` to `fd` as 8 bytes (an eventfd's counter, say); the bytes
/// written, or none.
pub fn write_u64(fd: RawFd, v: u64) -> usize {
    // SAFETY: writes 8 bytes from a live u64.
    let r = unsafe { libc::write(fd, (&v as *const u64).cast(), 8) };
    r.max(0) as usize
}

/// What a confined guest finds mounted over the places users share
/// (filesystem, where, options): small scratch spaces of its own; an empty
/// `/run` it cannot write (root's, `0755`), so none of the host daemons'
/// sockets there; the POSIX message queues of its own IPC namespace, not
/// the host's; and a `/proc` that shows it only its own uid's processes
/// (`hidepid=invisible`, Linux 5.8 on), not dom0's nor their command
/// lines.
const GUEST_MOUNTS: [(&std::ffi::CStr, &std::ffi::CStr, &std::ffi::CStr); 6] = [
    (c"tmpfs", c"/tmp", c"mode=1777,size=4m,nr_inodes=1024"),
    (c"tmpfs", c"/var/tmp", c"mode=1777,size=4m,nr_inodes=1024"),
    (c"tmpfs", c"/dev/shm", c"mode=1777,size=4m,nr_inodes=1024"),
    (c"tmpfs", c"/run", c"mode=755,size=64k,nr_inodes=16"),
    (c"mqueue", c"/dev/mqueue", c""),
    (c"proc", c"/proc", c"hidepid=invisible"),
];

/// The architecture the filter below was written for (`AUDIT_ARCH_*`).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

const fn bpf(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// A confined guest's seccomp filter: no user namespaces of its own
/// (`unshare` or `clone` with `CLONE_NEWUSER` fail with `EPERM`). `clone3`
/// (whose flags are in memory a filter cannot read) fails with `ENOSYS`,
/// on which the C library falls back to `clone`; so does any call of
/// another ABI (x32, or i386's through `int 0x80`). Everything else is
/// allowed.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
static GUEST_FILTER: [libc::sock_filter; 12] = {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    const NR: u32 = 0; // offsets in `struct seccomp_data`
    const ARCH: u32 = 4;
    const ARG0_LOW: u32 = 16;
    const LOAD: u32 = BPF_LD | BPF_W | BPF_ABS;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    [
        bpf(LOAD, ARCH, 0, 0),
        bpf(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 0, 7), // else → 9
        bpf(LOAD, NR, 0, 0),
        bpf(BPF_JMP | BPF_JGE | BPF_K, 0x4000_0000, 5, 0), // x32 → 9
        bpf(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_clone3 as u32, 4, 0), // → 9
        bpf(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_unshare as u32, 1, 0), // → 7
        bpf(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_clone as u32, 0, 3), // → 7, else 10
        bpf(LOAD, ARG0_LOW, 0, 0),
        bpf(BPF_JMP | BPF_JSET | BPF_K, libc::CLONE_NEWUSER as u32, 2, 1), // → 11, 10
        bpf(BPF_RET | BPF_K, ENOSYS, 0, 0),
        bpf(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW, 0, 0),
        bpf(BPF_RET | BPF_K, EPERM, 0, 0),
    ]
};

/// Installs [`GUEST_FILTER`] (after `PR_SET_NO_NEW_PRIVS`); on an
/// architecture it was not written for, none.
fn filter_guest_calls() -> io::Result<()> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let prog = libc::sock_fprog {
            len: GUEST_FILTER.len() as u16,
            filter: GUEST_FILTER.as_ptr().cast_mut(),
        };
        // SAFETY: the kernel copies the program, which it only reads.
        cvt(unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            )
        })?;
    }
    Ok(())
}

/// `e`, unless it says there was nothing there (`ENOENT`).
fn absent_ok(e: io::Error) -> io::Result<()> {
    if e.raw_os_error() == Some(libc::ENOENT) {
        Ok(())
    } else {
        Err(e)
    }
}

/// In a child between fork and exec: a session of its own (no
/// controlling terminal) and network, IPC and mount namespaces of its
/// own (the last with [`GUEST_MOUNTS`]); nothing inherited across the
/// exec but the standard streams and `hv`; `dir` entered; uid and gid
/// `id`, no supplementary groups, no way to gain privileges again, and
/// no user namespaces ([`GUEST_FILTER`]). Only async-signal-safe system
/// calls; the first failure is returned.
fn become_guest(hv: RawFd, dir: &std::ffi::CStr, id: u32) -> io::Result<()> {
    // SAFETY: plain system calls on descriptors and a C string we own.
    unsafe {
        cvt(libc::setsid())?;
        cvt(libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWIPC))?;
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let flags = cvt(libc::fcntl(hv, libc::F_GETFD))?;
        cvt(libc::fcntl(hv, libc::F_SETFD, flags & !libc::FD_CLOEXEC))?;
        cvt(libc::chdir(dir.as_ptr()))?;
        // Its own view of the filesystem ([`GUEST_MOUNTS`]), entered after
        // the chdir (its directory stays its own whatever is mounted over
        // the path to it).
        cvt(libc::unshare(libc::CLONE_NEWNS))?;
        cvt(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ))?;
        for (fs, at, options) in GUEST_MOUNTS {
            let r = libc::mount(
                fs.as_ptr(),
                at.as_ptr(),
                fs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                options.as_ptr().cast(),
            );
            // A host without the place has nothing there to hide.
            if r != 0 {
                absent_ok(io::Error::last_os_error())?;
            }
        }
        cvt(libc::setgroups(0, std::ptr::null()))?;
        cvt(libc::setresgid(id, id, id))?;
        cvt(libc::setresuid(id, id, id))?;
        cvt(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    filter_guest_calls()
}

/// Shuts a socket down both ways (the peer sees end of stream).
pub fn shutdown(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::shutdown(fd, libc::SHUT_RDWR) })?;
    Ok(())
}

/// Makes a descriptor non-blocking.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: plain fcntl.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(path: &std::path::Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// epoll, for the hypervisor's event loop.
pub struct Epoll(OwnedFd);

impl Epoll {
    /// A new epoll instance.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a fresh descriptor, owned by nobody else.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for input, reporting `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid event for the call.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: RawFd) {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Waits for events; returns the tokens of ready descriptors.
    pub fn wait(&self, out: &mut Vec<u64>, timeout_ms: i32) -> io::Result<()> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
        // SAFETY: `evs` has room for 64 events.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), 64, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        out.extend(evs[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid_of(pidfd: &OwnedFd) -> Option<u32> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()));
        info.ok()?
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))?
            .trim()
            .parse()
            .ok()
    }

    #[test]
    fn a_datagram_names_its_sending_process_by_pidfd_when_asked() {
        let dir = std::env::temp_dir().join(format!("dom0kit-sys-pidfd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = listen_seqpacket(&path).unwrap();
        let client = connect_seqpacket(&path).unwrap();
        let conn = loop {
            if let Some(c) = accept(listener.as_raw_fd()).unwrap() {
                break c;
            }
        };
        let mut buf = [0u8; 8];
        let mut fds = Vec::new();
        // Sent before we ask, as an attach often is (before the accept).
        send_msg(client.as_raw_fd(), b"one", &[]).unwrap();
        pass_pidfd(conn.as_raw_fd(), true);
        let (n, sender) = recv_msg_from(conn.as_raw_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"one");
        let sender = sender.expect("credentials");
        assert_eq!(sender.pid as u32, std::process::id());
        match sender.process {
            SenderProcess::Open(pidfd) => assert_eq!(pid_of(&pidfd), Some(std::process::id())),
            SenderProcess::Untold => eprintln!("this kernel has no SCM_PIDFD (Linux 6.5)"),
            SenderProcess::Gone => panic!("we are still here"),
        }
        pass_pidfd(conn.as_raw_fd(), false);
        send_msg(client.as_raw_fd(), b"two", &[]).unwrap();
        let (_, sender) = recv_msg_from(conn.as_raw_fd(), &mut buf, &mut fds).unwrap();
        assert!(matches!(sender.unwrap().process, SenderProcess::Untold));
        assert!(fds.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
