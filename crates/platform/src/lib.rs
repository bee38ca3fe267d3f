//! The paravirt layer: one code path, several platforms.
//!
//! blkback, netback, xenstored, pciback and the frontends are written against
//! these traits and never ask which hypervisor is underneath: the simulated
//! one (`sim`), or real Xen over `/dev/xen` (later). The traits follow Xen's
//! own interfaces: `XENMEM_*` for a domain's own memory, `GNTTABOP_*` for the
//! grant table (both sides), `privcmd` for foreign mappings, `EVTCHNOP_*` for
//! event channels and `XEN_DOMCTL_*` for domain control.
//!
//! Shared memory is reached only through [`VolatileSlice`]: a mapping hands
//! out a slice that borrows it, and unmapping happens when it is dropped.

#![forbid(unsafe_code)]

mod error;

use std::os::fd::OwnedFd;

pub use abi::{DomId, GrantRef, Mfn, Pfn, Port, VolatileSlice};
pub use error::{Error, GntStatus, Result};

/// Bytes in a page.
pub const PAGE_SIZE: usize = abi::ring::XEN_PAGE_SIZE;

/// The domain's own memory (`XENMEM_*`).
pub trait OwnMemory {
    /// The domain this process is.
    fn domid(&self) -> DomId;

    /// Pages of pseudo-physical memory.
    fn nr_pages(&self) -> u64;

    /// `count` pages of our memory starting at `pfn`, as one virtual range.
    fn pages(&self, pfn: Pfn, count: u64) -> Result<VolatileSlice<'_>>;

    /// Where `mem`, a part of [`pages`](Self::pages), starts: its page
    /// and the offset in it (Linux's `virt_to_pfn`); `Invalid` if it is not
    /// all our memory, or empty.
    fn pfn_of(&self, mem: &VolatileSlice<'_>) -> Result<(Pfn, usize)>;

    /// Pseudo-physical to machine (the P2M).
    fn pfn_to_mfn(&self, pfn: Pfn) -> Result<Mfn>;

    /// Allocates `count` free pages, contiguous in pseudo-physical space
    /// (not necessarily in machine space); returns the first.
    fn alloc_pages(&self, count: u64) -> Result<Pfn>;

    /// Gives back pages from [`alloc_pages`](Self::alloc_pages).
    fn free_pages(&self, pfn: Pfn, count: u64) -> Result<()>;

    /// `XENMEM_exchange`: replaces the frames behind `count` pages at `pfn`
    /// by machine-contiguous frames all below `2^address_bits`; returns the
    /// first new frame. The pages' contents are not kept. This is what
    /// Xen-SWIOTLB needs for a DMA bounce buffer.
    fn exchange_contiguous(&self, pfn: Pfn, count: u64, address_bits: u32) -> Result<Mfn>;
}

/// The granting side of the grant table (`grant_table.h` v1).
pub trait GrantTable {
    /// Grants `to` access to our page `pfn`; the entry is complete before
    /// its flags say so (write barrier), as Xen requires.
    fn grant_access(&self, to: DomId, pfn: Pfn, readonly: bool) -> Result<GrantRef>;

    /// Ends the grant. Fails with [`Error::GrantInUse`] while the grantee
    /// has the page mapped or is copying it (`GTF_reading`/`GTF_writing`).
    fn end_access(&self, gref: GrantRef) -> Result<()>;
}

/// One grant to map: whose, which, and whether writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantSpec {
    /// The granting domain.
    pub domid: DomId,
    /// Its grant reference.
    pub gref: GrantRef,
    /// Map writable (fails on a read-only grant).
    pub writable: bool,
}

/// One side of a grant copy: a grant of another domain, or a page of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyPtr {
    /// Another domain's grant.
    Grant {
        /// The granting domain.
        domid: DomId,
        /// The grant.
        gref: GrantRef,
        /// Byte offset in the page.
        offset: u16,
    },
    /// One of our own pages.
    Local {
        /// The page.
        pfn: Pfn,
        /// Byte offset in the page.
        offset: u16,
    },
}

/// One operation of a batched grant copy (`GNTTABOP_copy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantCopy {
    /// Where from.
    pub source: CopyPtr,
    /// Where to.
    pub dest: CopyPtr,
    /// Bytes; neither side may cross its page.
    pub len: u16,
    /// Set by the copy: `GNTST_okay` or the reason it failed.
    pub status: GntStatus,
}

/// Grants of other domains mapped into our address space. Unmapped when
/// dropped.
pub trait GrantMapping {
    /// The mapped pages, in the order they were asked for.
    fn memory(&self) -> VolatileSlice<'_>;
}

/// The using side of the grant table.
pub trait GrantMapper {
    /// A live mapping.
    type Mapping: GrantMapping;

    /// Maps a batch of grants as one virtual range, all or nothing.
    fn map_grants(&self, grants: &[GrantSpec]) -> Result<Self::Mapping>;

    /// Runs a batch of copies; each gets its own status, and a failed one
    /// does not stop the others.
    fn copy_grants(&self, ops: &mut [GrantCopy]) -> Result<()>;
}

/// Mapping another domain's memory by frame (privileged: `privcmd`).
pub trait ForeignMemory {
    /// A live mapping.
    type Mapping: GrantMapping;

    /// Maps `pfns` of `domid`'s pseudo-physical memory as one range.
    fn map_foreign(&self, domid: DomId, pfns: &[Pfn]) -> Result<Self::Mapping>;
}

/// Event channels (`EVTCHNOP_*`), 2-level semantics.
pub trait EventChannels {
    /// A new port that `remote` may bind to.
    fn alloc_unbound(&self, remote: DomId) -> Result<Port>;

    /// Binds a new local port to `remote`'s unbound `remote_port`.
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port>;

    /// Binds a new local port to virtual IRQ `virq` (`VIRQ_*`).
    fn bind_virq(&self, virq: u32) -> Result<Port>;

    /// Signals the other end of `port`.
    fn notify(&self, port: Port) -> Result<()>;

    /// Closes `port`; the other end is notified and becomes unbound.
    fn close(&self, port: Port) -> Result<()>;

    /// A descriptor (our own duplicate) that polls readable while `port`
    /// has an event pending, for epoll loops; [`ack`](Self::ack) clears it.
    fn pollable(&self, port: Port) -> Result<OwnedFd>;

    /// Clears `port`'s pending event; returns whether one was pending.
    fn ack(&self, port: Port) -> Result<bool>;

    /// Blocks until `port` has an event pending or `timeout_ms` passes
    /// (negative: no limit), as a blocking `read` of `/dev/xen/evtchn`
    /// does; clears the event and returns whether one came.
    fn wait(&self, port: Port, timeout_ms: i32) -> Result<bool>;
}

/// What a domain is to be created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// Memory in pages.
    pub pages: u64,
    /// Grant-table frames (Xen's default maximum is 64).
    pub grant_frames: u32,
}

/// A domain that has been created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDomain {
    /// Its id.
    pub domid: DomId,
    /// What its process presents to attach as it (sim: a one-time token).
    pub token: String,
}

/// A domain's state as `XEN_DOMCTL_getdomaininfo` tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainInfo {
    /// Its id.
    pub domid: DomId,
    /// Memory in pages.
    pub pages: u64,
    /// Whether its vCPUs (sim: its process) are paused.
    pub paused: bool,
    /// Whether it has died (its resources may still be held: a zombie).
    pub dying: bool,
    /// Whether anything runs as it yet.
    pub attached: bool,
    /// Why it shut down, once it has (`XEN_DOMINF_shutdown` and its
    /// reason): it stays, stopped, until it is destroyed.
    pub shutdown: Option<ShutdownReason>,
}

/// Why a domain shut down (`SHUTDOWN_*` of `xen/sched.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// It powered off.
    Poweroff,
    /// It wants to be started again.
    Reboot,
    /// It suspended, to be saved.
    Suspend,
    /// It crashed.
    Crash,
    /// Its watchdog fired.
    Watchdog,
    /// It asks for a soft reset.
    SoftReset,
}

impl ShutdownReason {
    /// Xen's number for it.
    pub fn code(self) -> u8 {
        use abi::xen::*;
        match self {
            ShutdownReason::Poweroff => SHUTDOWN_POWEROFF,
            ShutdownReason::Reboot => SHUTDOWN_REBOOT,
            ShutdownReason::Suspend => SHUTDOWN_SUSPEND,
            ShutdownReason::Crash => SHUTDOWN_CRASH,
            ShutdownReason::Watchdog => SHUTDOWN_WATCHDOG,
            ShutdownReason::SoftReset => SHUTDOWN_SOFT_RESET,
        }
    }

    /// The reason Xen numbers `code`, if any.
    pub fn from_code(code: u8) -> Option<ShutdownReason> {
        [
            ShutdownReason::Poweroff,
            ShutdownReason::Reboot,
            ShutdownReason::Suspend,
            ShutdownReason::Crash,
            ShutdownReason::Watchdog,
            ShutdownReason::SoftReset,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }
}

/// What a domain asks of the scheduler about itself (`SCHEDOP_*`).
pub trait Schedule {
    /// Shuts this domain down (`SCHEDOP_shutdown`): it stops running (no
    /// later call of it does anything), and dom0 is told (`VIRQ_DOM_EXC`)
    /// and decides what follows.
    fn shutdown(&self, reason: ShutdownReason) -> Result<()>;
}

/// Domain control (privileged: `XEN_DOMCTL_*`). Deaths are announced on
/// `VIRQ_DOM_EXC`; [`list_domains`](Self::list_domains) tells which.
pub trait DomainControl {
    /// Creates a domain.
    fn create_domain(&self, config: &DomainConfig) -> Result<NewDomain>;

    /// Destroys a domain; its memory returns only when nothing maps it.
    fn destroy_domain(&self, domid: DomId) -> Result<()>;

    /// Pauses or unpauses a domain.
    fn pause_domain(&self, domid: DomId, paused: bool) -> Result<()>;

    /// Every domain, dying ones included.
    fn list_domains(&self) -> Result<Vec<DomainInfo>>;
}
