//! Confining a guest's process, when whoever starts it is root.
//!
//! Each guest then runs as its own uid and gid ([`id_of`]: [`ID_BASE`] plus
//! its domid), with no supplementary groups and `PR_SET_NO_NEW_PRIVS`, in a
//! directory of its own. So it cannot signal or trace dom0's processes or
//! another guest's, cannot reach dom0's sockets (xenstored's is root's and
//! `0755`), and cannot attach to the hypervisor as dom0: the hv judges an
//! attach by who *sent* it (`SCM_CREDENTIALS`), and the guest's uid is
//! neither root nor the hv's.
//!
//! The guest needs a connection to the hypervisor all the same, whose
//! socket it may not be able to reach (a run directory of `0700`, a socket
//! of `0755`). [`Jail`] connects for it before it gives up root and hands
//! it the connection as descriptor 3, named by `$DOM0KIT_HV_FD`
//! ([`inherited_hv`] takes it). That the connection was made by root does
//! not make it dom0's: see above. The binary is executed through a
//! descriptor opened while still root, so its path need not be reachable
//! by the guest's uid either.
//!
//! What this does not confine: a guest's process still holds the machine
//! memfd (the sim's design maps each domain's memory from it), so one that
//! makes its own system calls can map any frame.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};

use abi::DomId;

use crate::sys;

/// A confined guest's uid and gid are this plus its domid: above the
/// ranges Debian and systemd hand out (systemd leaves 0x70000000–0x7ffdffff
/// unused), below 2^31.
pub const ID_BASE: u32 = 0x7000_0000;

/// The variable that names the descriptor of a guest's hv connection.
pub const HV_FD_VAR: &str = "DOM0KIT_HV_FD";

/// The descriptor a confined guest finds its hv connection on.
const HV_FD: RawFd = 3;

/// Our descriptors handed to the child sit at or above this, clear of the
/// ones the child's setup writes (0–2 and [`HV_FD`]).
const FIRST_FREE_FD: RawFd = 10;

/// The uid and gid `domid`'s process runs as when confined.
pub fn id_of(domid: DomId) -> u32 {
    ID_BASE + u32::from(domid.0)
}

/// Whether the processes we start can be confined (we are root).
pub fn available() -> bool {
    sys::euid() == 0
}

/// What a confined guest process is started with: its uid, its connection
/// to the hypervisor, its binary and its directory.
#[derive(Debug)]
pub struct Jail {
    id: u32,
    hv: OwnedFd,
    exe: OwnedFd,
    arg0: std::ffi::OsString,
    dir: CString,
}

impl Jail {
    /// Prepares `domid`'s process: connects to the hypervisor at
    /// `hv_socket` and opens `exe` now, while we can; the process will run
    /// in `dir`, which should be its own (it is not made so here).
    pub fn new(domid: DomId, hv_socket: &Path, exe: &Path, dir: &Path) -> io::Result<Jail> {
        let hv = sys::dup_at_least(&sys::connect_seqpacket(hv_socket)?, FIRST_FREE_FD)?;
        let exe_file = std::fs::File::open(exe)?;
        let exe_fd = sys::dup_at_least(&OwnedFd::from(exe_file), FIRST_FREE_FD)?;
        let dir = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(Jail {
            id: id_of(domid),
            hv,
            exe: exe_fd,
            arg0: exe.file_name().unwrap_or(exe.as_os_str()).to_owned(),
            dir,
        })
    }

    /// Starts the process: `configure` adds its arguments, environment and
    /// standard streams; it gets the hv connection and gives up root on
    /// the way.
    pub fn spawn(self, configure: impl FnOnce(&mut Command)) -> io::Result<Child> {
        // The child opens its binary through our descriptor, which it
        // inherits until the exec (an ELF binary needs nothing more).
        let mut cmd = Command::new(format!("/proc/self/fd/{}", self.exe.as_raw_fd()));
        cmd.arg0(&self.arg0);
        configure(&mut cmd);
        cmd.env(HV_FD_VAR, HV_FD.to_string());
        sys::exec_as_guest(
            &mut cmd,
            self.hv.as_raw_fd(),
            HV_FD,
            self.dir.clone(),
            self.id,
        );
        let child = cmd.spawn();
        // Our copies close here; the child has its own.
        drop(self);
        child
    }
}

/// The hv connection a launcher made for us ([`Jail`]), if it made one.
/// Taken once: the variable goes, and the descriptor is not inherited by
/// anything we start.
pub fn inherited_hv() -> Option<OwnedFd> {
    let fd: RawFd = std::env::var(HV_FD_VAR).ok()?.parse().ok()?;
    std::env::remove_var(HV_FD_VAR);
    sys::adopt_socket(fd)
}
