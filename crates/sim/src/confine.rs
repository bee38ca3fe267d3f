//! Confining a guest's process, when whoever starts it is root.
//!
//! Each guest then runs as its own uid and gid: its domid plus the first
//! of the block of uids its hypervisor claimed ([`IdBlock`]: one of
//! [`BLOCKS`] from [`ID_BASE`] on, so that hosts side by side never share
//! a uid), with no supplementary groups and `PR_SET_NO_NEW_PRIVS`, in
//! a session (no controlling terminal) and network and IPC namespaces of
//! its own, in a directory of its own, with nothing of its launcher's but
//! its standard streams and a cleared environment. So it cannot signal or
//! trace dom0's processes or another guest's, cannot reach the run
//! directory (the host makes it `0700`) or anything on the host's network,
//! abstract sockets included, cannot type into its launcher's terminal,
//! and cannot attach to the hypervisor as dom0: the hv judges an attach by
//! who *sent* it (`SCM_CREDENTIALS`), and the guest's uid is neither root
//! nor the hv's. Before a uid is used again, and when its domain dies,
//! every process left with it is killed ([`crate::sys::kill_uid`]).
//!
//! The guest needs a connection to the hypervisor all the same, whose
//! socket it cannot reach. [`Jail`] connects for it before it gives up
//! root and hands it the connection, named by `$DOM0KIT_HV_FD`
//! ([`inherited_hv`] takes it). That the connection was made by root does
//! not make it dom0's: see above. The binary is executed through a
//! descriptor opened while still root, so its path need not be reachable
//! by the guest's uid (the file itself must be executable by others).
//!
//! What this does not confine: a guest's process still holds the machine
//! memfd (the sim's design maps each domain's memory from it), so one that
//! makes its own system calls can map any frame: the sim's trust boundary
//! (ARCHITECTURE.md) is what a guest says, not its memory.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};

use abi::DomId;

use crate::sys;

/// The first uid of confined guests: above the ranges Debian and systemd
/// hand out (systemd leaves 0x70000000–0x7ffdffff unused), below 2^31.
pub const ID_BASE: u32 = 0x7000_0000;

/// Blocks of [`IDS`] uids from [`ID_BASE`] on, one a hypervisor.
pub const BLOCKS: u32 = 8188;

/// Where hypervisors claim their blocks: a file a block, locked (`flock`)
/// while its hypervisor runs.
const REGISTRY: &str = "/run/dom0kit-uids";

/// The variable that names the descriptor of a guest's hv connection.
pub const HV_FD_VAR: &str = "DOM0KIT_HV_FD";

/// Our descriptors handed to the child sit at or above this, clear of the
/// standard streams and of what `std` uses in the child.
const FIRST_FREE_FD: RawFd = 10;

/// Domids there can be (Xen's `DOMID_FIRST_RESERVED`): uids a block.
pub const IDS: u32 = abi::xen::DOMID_FIRST_RESERVED as u32;

/// Whether guests can be confined here: we are root, and the guests'
/// uids exist (a root in a container may have none of them).
pub fn available() -> bool {
    sys::euid() == 0
        && sys::uids_mapped(ID_BASE, BLOCKS * IDS)
        && sys::uids_mapped(ID_BASE | SHIELD, BLOCKS * IDS)
}

/// Whether `uid` is a confined guest's (of any host).
pub fn is_guest_id(uid: u32) -> bool {
    (ID_BASE..ID_BASE + BLOCKS * IDS).contains(&uid)
}

/// A hypervisor's block of guest uids, claimed for as long as it lives.
#[derive(Debug)]
pub struct IdBlock {
    first: u32,
    _claim: std::fs::File,
}

impl IdBlock {
    /// Claims a free block; `None` if guests cannot be confined here.
    pub fn claim() -> io::Result<Option<IdBlock>> {
        if !available() {
            return Ok(None);
        }
        let context = |e: io::Error| io::Error::new(e.kind(), format!("{REGISTRY}: {e}"));
        std::fs::create_dir_all(REGISTRY).map_err(context)?;
        std::fs::set_permissions(
            REGISTRY,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(context)?;
        for b in 0..BLOCKS {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(Path::new(REGISTRY).join(b.to_string()))
                .map_err(context)?;
            if sys::try_lock(&file)? {
                let block = IdBlock {
                    first: ID_BASE + b * IDS,
                    _claim: file,
                };
                // An hv that held the block and died left its guests.
                for uid in sys::uids_running(block.first..block.first + IDS) {
                    kill_guest_uid(uid)?;
                }
                return Ok(Some(block));
            }
        }
        Err(io::Error::other("every block of guest uids is taken"))
    }

    /// The first uid of the block.
    pub fn first(&self) -> u32 {
        self.first
    }

    /// The uid and gid `domid`'s process runs as.
    pub fn id_of(&self, domid: DomId) -> u32 {
        self.first + u32::from(domid.0)
    }

    /// Kills every process of domain `domid`'s uid.
    pub fn kill(&self, domid: DomId) -> io::Result<()> {
        if u32::from(domid.0) >= IDS {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        kill_guest_uid(self.id_of(domid))
    }
}

/// A guest uid with this bit set is its killer's shield: a uid nothing
/// runs as, and one a killer, for no two killers of different uids may
/// signal each other.
const SHIELD: u32 = 0x8000_0000;

/// Kills every process of guest uid `uid`, from behind its shield. A
/// killer killed by another of the same uid tries again.
fn kill_guest_uid(uid: u32) -> io::Result<()> {
    if !is_guest_id(uid) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let mut r = sys::kill_uid(uid, uid | SHIELD);
    for _ in 0..3 {
        if r.is_ok() {
            break;
        }
        r = sys::kill_uid(uid, uid | SHIELD);
    }
    r
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
    /// Prepares a process to run as uid and gid `id` (its domain's, which
    /// its hypervisor tells): connects to the hypervisor at `hv_socket`
    /// and opens `exe` now, while we can; the process will run in `dir`,
    /// which should be its own (it is not made so here).
    pub fn new(id: u32, hv_socket: &Path, exe: &Path, dir: &Path) -> io::Result<Jail> {
        let exe_fd = sys::dup_at_least(&OwnedFd::from(std::fs::File::open(exe)?), FIRST_FREE_FD)?;
        if !sys::executable_by_others(&exe_fd)? {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} may not be executed by other users, and a guest runs as one",
                    exe.display()
                ),
            ));
        }
        // Whatever an earlier domain of this id left running goes first.
        kill_guest_uid(id)?;
        let hv = sys::dup_at_least(&sys::connect_seqpacket(hv_socket)?, FIRST_FREE_FD)?;
        let dir = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(Jail {
            id,
            hv,
            exe: exe_fd,
            arg0: exe.file_name().unwrap_or(exe.as_os_str()).to_owned(),
            dir,
        })
    }

    /// Starts the process: `configure` adds its arguments, environment
    /// (which starts empty but for `PATH`) and standard streams; it gets
    /// the hv connection and gives up root on the way.
    pub fn spawn(self, configure: impl FnOnce(&mut Command)) -> io::Result<Child> {
        // The child opens its binary through our descriptor, which it
        // inherits until the exec (an ELF binary needs nothing more).
        let mut cmd = Command::new(format!("/proc/self/fd/{}", self.exe.as_raw_fd()));
        cmd.arg0(&self.arg0)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin");
        configure(&mut cmd);
        cmd.env(HV_FD_VAR, self.hv.as_raw_fd().to_string());
        sys::exec_as_guest(&mut cmd, self.hv.as_raw_fd(), self.dir.clone(), self.id);
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
