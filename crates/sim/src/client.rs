//! A process's side of the simulated hypervisor: it attaches as one domain
//! and implements the `platform` traits for it.
//!
//! Hypercalls that change the hypervisor's books (ports, domains, pages)
//! are requests on the socket. What Xen does on the fast path is done in
//! place: a notify writes the peer's event pipe; granting writes our own grant
//! table; mapping and copying grants (dom0 only) pin entries in the control
//! area and map frames of the machine memfd ([`crate::grant`]).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use abi::{DomId, GrantRef, Mfn, Pfn, Port, VolatileSlice};
use platform::{
    CopyPtr, DomainConfig, DomainControl, DomainInfo, Error, EventChannels, ForeignMemory,
    GntStatus, GrantCopy, GrantMapper, GrantMapping, GrantSpec, GrantTable, NewDomain, OwnMemory,
    Result,
};

use crate::grant::{GrantTableView, Granter, Hypervisor, Pinned};
use crate::layout::{info, Control, ENTRIES_PER_FRAME, NR_PORTS};
use crate::pinlog::{self, PinLog};
use crate::proto::{Reply, Request, TOKEN_LEN};
use crate::sys::{self, Mapping};

const PAGE: usize = platform::PAGE_SIZE;
/// Grant references fetched from the hypervisor at a time.
const GREF_BLOCK: u32 = 64;

struct PortFds {
    recv: OwnedFd,
    /// Our write end of the peer's event pipe and the binding generation
    /// it belongs to.
    send: Option<(u32, OwnedFd)>,
}

struct Inner {
    sock: Mutex<OwnedFd>,
    domid: DomId,
    pages: u64,
    /// The first uid of the host's confined guests (0: not confined).
    guest_ids: u32,
    machine_fd: OwnedFd,
    /// All of machine memory (dom0 only).
    machine: Option<Mapping>,
    /// The control area (dom0 only).
    control: Option<(Mapping, Control)>,
    /// Where our grant pins are written for the hv (dom0 only).
    pins: Option<PinLog>,
    info: Mapping,
    ram: Mapping,
    gnttab: Mapping,
    ports: Mutex<HashMap<u32, PortFds>>,
    free_grefs: Mutex<Vec<u32>>,
    holds: Mutex<BTreeMap<u16, usize>>,
}

/// A process attached to the simulated hypervisor as one domain.
#[derive(Clone)]
pub struct SimDomain {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere leaves the data consistent for our uses.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn errno(e: i32) -> Error {
    match e {
        1 | 13 => Error::PermissionDenied,
        12 | 28 => Error::Exhausted("hypervisor resources"),
        22 => Error::Invalid("rejected by the hypervisor"),
        _ => Error::Io(std::io::Error::from_raw_os_error(e)),
    }
}

impl SimDomain {
    /// Attaches as dom0 (the hypervisor checks our uid).
    pub fn attach_dom0(socket: &Path) -> Result<SimDomain> {
        Self::attach(sys::connect_seqpacket(socket)?, Request::AttachDom0)
    }

    /// Attaches as the guest whose token (hex, from domain creation) this is.
    pub fn attach_guest(socket: &Path, token: &str) -> Result<SimDomain> {
        Self::attach_guest_on(sys::connect_seqpacket(socket)?, token)
    }

    /// Attaches as the guest of `token` over `sock`, a connection to the
    /// hypervisor made for us (by a launcher that could reach its socket,
    /// see [`crate::confine`]).
    pub fn attach_guest_on(sock: OwnedFd, token: &str) -> Result<SimDomain> {
        let bytes = decode_hex(token).ok_or(Error::Invalid("token"))?;
        let token: [u8; TOKEN_LEN] = bytes.try_into().map_err(|_| Error::Invalid("token"))?;
        Self::attach(sock, Request::AttachGuest { token })
    }

    fn attach(sock: OwnedFd, req: Request) -> Result<SimDomain> {
        let (reply, mut fds) = match call_on(&sock, &req)? {
            (Reply::Error { errno: e }, _) => return Err(errno(e)),
            r => r,
        };
        let Reply::Attached {
            domid,
            pages,
            machine_pages,
            max_slots,
            guest_ids,
            grant_frames,
        } = reply
        else {
            return Err(Error::Protocol("unexpected reply to attach"));
        };
        let dom0 = matches!(req, Request::AttachDom0);
        if fds.len() != if dom0 { 4 } else { 2 } {
            return Err(Error::Protocol("attach carried the wrong descriptors"));
        }
        let pins = match if dom0 { fds.pop() } else { None } {
            Some(fd) => Some(PinLog::new(Mapping::shared(&fd, pinlog::LEN, true)?)),
            None => None,
        };
        let control_fd = if dom0 { fds.pop() } else { None };
        let info_fd = fds.pop().ok_or(Error::Protocol("no info memfd"))?;
        let machine_fd = fds.pop().ok_or(Error::Protocol("no machine memfd"))?;
        let info = Mapping::shared(&info_fd, info::len(pages), false)?;
        let geometry = Control {
            machine_pages,
            max_slots,
        };
        let (machine, control) = match control_fd {
            Some(fd) => (
                Some(Mapping::shared(
                    &machine_fd,
                    machine_pages as usize * PAGE,
                    true,
                )?),
                Some((Mapping::shared(&fd, geometry.len(), true)?, geometry)),
            ),
            None => (None, None),
        };
        // Our RAM as one range, mapped run by run of machine-contiguous frames.
        let ram = Mapping::reserve(pages as usize * PAGE)?;
        let p2m: Vec<u64> = (0..pages as usize)
            .map(|p| info.slice().load_u64(info::P2M + p * 8, Ordering::Acquire))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::Protocol("short info page"))?;
        map_runs(&ram, &machine_fd, 0, &p2m)?;
        let gnttab = Mapping::reserve(grant_frames.len() * PAGE)?;
        let g: Vec<u64> = grant_frames.iter().map(|m| m.0).collect();
        map_runs(&gnttab, &machine_fd, 0, &g)?;
        Ok(SimDomain {
            inner: Arc::new(Inner {
                sock: Mutex::new(sock),
                domid,
                pages,
                guest_ids,
                machine_fd,
                machine,
                control,
                pins,
                info,
                ram,
                gnttab,
                ports: Mutex::new(HashMap::new()),
                free_grefs: Mutex::new(Vec::new()),
                holds: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// The uid and gid `domid`'s process must run as, if the host confines
    /// its guests (`crate::confine`).
    pub fn guest_id(&self, domid: DomId) -> Option<u32> {
        (self.inner.guest_ids != 0).then(|| self.inner.guest_ids + u32::from(domid.0))
    }

    fn call(&self, req: &Request) -> Result<(Reply, Vec<OwnedFd>)> {
        let sock = lock(&self.inner.sock);
        match call_on(&sock, req)? {
            (Reply::Error { errno: e }, _) => Err(errno(e)),
            r => Ok(r),
        }
    }

    fn hv(&self) -> Result<Hypervisor<'_>> {
        match (&self.inner.control, &self.inner.machine) {
            (Some((c, g)), Some(m)) => Ok(Hypervisor::new(c.slice(), m.slice(), *g)),
            _ => Err(Error::PermissionDenied),
        }
    }

    fn table(&self) -> GrantTableView<'_> {
        GrantTableView::new(self.inner.gnttab.slice())
    }

    /// Hangs up on the hypervisor while keeping every mapping: what a
    /// misbehaving guest process could do. For tests.
    #[doc(hidden)]
    pub fn hang_up_hv(&self) -> Result<()> {
        Ok(sys::shutdown(lock(&self.inner.sock).as_raw_fd())?)
    }

    /// Machine memory totals: (frames in all, frames owned by no domain).
    pub fn physinfo(&self) -> Result<(u64, u64)> {
        match self.call(&Request::Physinfo)?.0 {
            Reply::Physinfo { total, free } => Ok((total, free)),
            _ => Err(Error::Protocol("unexpected reply")),
        }
    }

    /// The state of a grant entry of ours (`GTF_*`), as the grantee left it.
    pub fn grant_flags(&self, gref: GrantRef) -> Result<u16> {
        self.table().flags(gref).map_err(Error::Grant)
    }

    /// Takes a hold on `domid` (its frames stay while we map any of them).
    fn hold(&self, domid: DomId) -> Result<()> {
        let mut holds = lock(&self.inner.holds);
        let n = holds.entry(domid.0).or_insert(0);
        if *n == 0 {
            if let Err(e) = self.call(&Request::Hold { domid }) {
                holds.remove(&domid.0);
                return Err(match e {
                    Error::Io(_) => Error::NoSuchDomain(domid),
                    e => e,
                });
            }
        }
        *n += 1;
        Ok(())
    }

    fn release(&self, domid: DomId) {
        let mut holds = lock(&self.inner.holds);
        let Some(n) = holds.get_mut(&domid.0) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            holds.remove(&domid.0);
            let _ = self.call(&Request::Release { domid });
        }
    }

    fn port_call(&self, req: Request) -> Result<Port> {
        let (reply, mut fds) = self.call(&req)?;
        let Reply::Port(port) = reply else {
            return Err(Error::Protocol("unexpected reply"));
        };
        let send = if fds.len() == 2 { fds.pop() } else { None };
        let recv = fds
            .pop()
            .ok_or(Error::Protocol("port without descriptor"))?;
        let generation = self.generation(port);
        let send = send.map(|fd| (generation, fd));
        lock(&self.inner.ports).insert(port.0, PortFds { recv, send });
        Ok(port)
    }

    fn generation(&self, port: Port) -> u32 {
        if port.0 as usize >= NR_PORTS {
            return 0;
        }
        self.inner
            .info
            .slice()
            .load_u32(info::PORT_GEN + port.0 as usize * 4, Ordering::Acquire)
            .unwrap_or(0)
    }

    fn map_pages(&self, mfns: &[(u64, bool)]) -> Result<Mapping> {
        let map = Mapping::reserve(mfns.len() * PAGE)?;
        for (i, &(mfn, writable)) in mfns.iter().enumerate() {
            map.map_fixed(
                i * PAGE,
                &self.inner.machine_fd,
                mfn * PAGE as u64,
                PAGE,
                writable,
            )?;
        }
        Ok(map)
    }

    /// The frame and offset behind one side of a copy, pinned if a grant.
    fn resolve<'h>(
        &self,
        hv: &Hypervisor<'h>,
        granters: &mut BatchGranters<'_>,
        ptr: CopyPtr,
        writable: bool,
    ) -> std::result::Result<(Mfn, u16, Option<Pinned<'h>>), GntStatus> {
        match ptr {
            CopyPtr::Grant {
                domid,
                gref,
                offset,
            } => {
                let g = granters.get(hv, domid)?;
                let p = hv.pin_in(&g, gref, self.inner.domid, writable)?;
                Ok((p.mfn, offset, Some(p)))
            }
            CopyPtr::Local { pfn, offset } => {
                let mfn = self.pfn_to_mfn(pfn).map_err(|_| GntStatus::BAD_PAGE)?;
                Ok((mfn, offset, None))
            }
        }
    }

    fn copy_one(
        &self,
        hv: &Hypervisor<'_>,
        granters: &mut BatchGranters<'_>,
        op: &GrantCopy,
    ) -> GntStatus {
        let len = usize::from(op.len);
        // Both sides within their pages.
        let fit = |a: u16, b: u16| usize::from(a.max(b)) + len <= PAGE;
        let local = |pfn: Pfn, offset: u16| {
            let mfn = self.pfn_to_mfn(pfn).map_err(|_| GntStatus::BAD_PAGE)?;
            Ok(mfn.0 as usize * PAGE + usize::from(offset))
        };
        let at = |mfn: Mfn, offset: u16| mfn.0 as usize * PAGE + usize::from(offset);
        let copy = |src: usize, dst: usize| machine_copy(hv, src, dst, len);
        let me = self.inner.domid;
        // One grant and one page of ours (the usual copy): the grant held
        // for the copy only, no pin.
        let status = match (op.source, op.dest) {
            (
                CopyPtr::Grant {
                    domid,
                    gref,
                    offset,
                },
                CopyPtr::Local { pfn, offset: to },
            ) if fit(offset, to) => local(pfn, to).and_then(|dst| {
                let g = granters.get(hv, domid)?;
                hv.with_grant(&g, gref, me, false, |mfn| copy(at(mfn, offset), dst))
            }),
            (
                CopyPtr::Local { pfn, offset: from },
                CopyPtr::Grant {
                    domid,
                    gref,
                    offset,
                },
            ) if fit(from, offset) => local(pfn, from).and_then(|src| {
                let g = granters.get(hv, domid)?;
                hv.with_grant(&g, gref, me, true, |mfn| copy(src, at(mfn, offset)))
            }),
            (source, dest) if fit(offset_in_page(source), offset_in_page(dest)) => {
                self.copy_pinned(hv, granters, op)
            }
            _ => Err(GntStatus::BAD_COPY_ARG),
        };
        status.unwrap_or_else(|s| s)
    }

    /// A copy between two grants (or two pages of ours): each grant pinned
    /// for it, so that no two entry locks are held at once.
    fn copy_pinned(
        &self,
        hv: &Hypervisor<'_>,
        granters: &mut BatchGranters<'_>,
        op: &GrantCopy,
    ) -> std::result::Result<GntStatus, GntStatus> {
        let (src, soff, spin) = self.resolve(hv, granters, op.source, false)?;
        let (dst, doff, dpin) = match self.resolve(hv, granters, op.dest, true) {
            Ok(v) => v,
            Err(s) => {
                spin.iter().for_each(|p| hv.release(p));
                return Err(s);
            }
        };
        let status = machine_copy(
            hv,
            src.0 as usize * PAGE + usize::from(soff),
            dst.0 as usize * PAGE + usize::from(doff),
            usize::from(op.len),
        );
        dpin.iter().chain(&spin).for_each(|p| hv.release(p));
        Ok(status)
    }
}

/// The granters of one copy batch, each held (its frames stay ours even if
/// it dies meanwhile) and looked up once, at its first copy. One we could
/// not hold, or that is not alive, is looked up as none, so its copies fail
/// with `GNTST_bad_domain` and touch no memory. Dropping it releases the
/// holds. The first granter is kept in place (a batch mostly copies with
/// one frontend), the others in a list made only when there are others.
struct BatchGranters<'d> {
    owner: &'d SimDomain,
    first: Option<(DomId, Option<Granter>)>,
    others: Vec<(DomId, Option<Granter>)>,
}

impl<'d> BatchGranters<'d> {
    fn new(owner: &'d SimDomain) -> Self {
        BatchGranters {
            owner,
            first: None,
            others: Vec::new(),
        }
    }

    #[inline]
    fn get(
        &mut self,
        hv: &Hypervisor<'_>,
        domid: DomId,
    ) -> std::result::Result<Granter, GntStatus> {
        let found = match self.first {
            Some((d, g)) if d == domid => g,
            _ => match self.others.iter().find(|(d, _)| *d == domid) {
                Some((_, g)) => *g,
                None => self.look_up(hv, domid),
            },
        };
        found.ok_or(GntStatus::BAD_DOMAIN)
    }

    #[cold]
    fn look_up(&mut self, hv: &Hypervisor<'_>, domid: DomId) -> Option<Granter> {
        let g = self.owner.hold(domid).ok().and_then(|()| {
            let g = hv.granter(domid, false);
            if g.is_none() {
                self.owner.release(domid);
            }
            g
        });
        if self.first.is_none() {
            self.first = Some((domid, g));
        } else {
            self.others.push((domid, g));
        }
        g
    }
}

impl Drop for BatchGranters<'_> {
    fn drop(&mut self) {
        let all = self.first.iter().chain(&self.others);
        for (d, _) in all.filter(|(_, g)| g.is_some()) {
            self.owner.release(*d);
        }
    }
}

/// The offset in its page of one side of a copy.
fn offset_in_page(p: CopyPtr) -> u16 {
    match p {
        CopyPtr::Grant { offset, .. } | CopyPtr::Local { offset, .. } => offset,
    }
}

/// Copies `len` bytes of machine memory from `src` to `dst` (byte
/// addresses).
fn machine_copy(hv: &Hypervisor<'_>, src: usize, dst: usize, len: usize) -> GntStatus {
    let m = hv.machine();
    match m.subslice(src, len) {
        Ok(s) if m.copy_from(dst, &s).is_ok() => GntStatus::OKAY,
        _ => GntStatus::BAD_PAGE,
    }
}

fn call_on(sock: &OwnedFd, req: &Request) -> Result<(Reply, Vec<OwnedFd>)> {
    sys::send_msg(sock.as_raw_fd(), &req.encode(), &[])?;
    let mut buf = vec![0u8; sys::MAX_MESSAGE];
    let mut fds = Vec::new();
    let n = sys::recv_msg(sock.as_raw_fd(), &mut buf, &mut fds)?;
    if n == 0 {
        return Err(Error::Protocol("hypervisor closed the connection"));
    }
    let reply = Reply::decode(&buf[..n]).map_err(|_| Error::Protocol("undecodable reply"))?;
    Ok((reply, fds))
}

/// Maps `frames` (machine frame numbers) over `map` from page `first` on,
/// one `mmap` per run of consecutive frames.
fn map_runs(map: &Mapping, fd: &OwnedFd, first: usize, frames: &[u64]) -> Result<()> {
    let mut i = 0;
    while i < frames.len() {
        let mut j = i + 1;
        while j < frames.len() && frames[j] == frames[j - 1] + 1 {
            j += 1;
        }
        map.map_fixed(
            (first + i) * PAGE,
            fd,
            frames[i] * PAGE as u64,
            (j - i) * PAGE,
            true,
        )?;
        i = j;
    }
    Ok(())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A token as text.
pub fn encode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl OwnMemory for SimDomain {
    fn domid(&self) -> DomId {
        self.inner.domid
    }

    fn nr_pages(&self) -> u64 {
        self.inner.pages
    }

    fn pages(&self, pfn: Pfn, count: u64) -> Result<VolatileSlice<'_>> {
        let off = usize::try_from(pfn.0).map_err(|_| Error::Invalid("pfn"))?;
        let len = usize::try_from(count).map_err(|_| Error::Invalid("count"))?;
        let (off, len) = (off.checked_mul(PAGE), len.checked_mul(PAGE));
        let (Some(off), Some(len)) = (off, len) else {
            return Err(Error::Invalid("pfn"));
        };
        self.inner
            .ram
            .slice()
            .subslice(off, len)
            .map_err(|_| Error::Invalid("pfn"))
    }

    fn pfn_of(&self, mem: &VolatileSlice<'_>) -> Result<(Pfn, usize)> {
        // An empty slice may sit where another mapping ends or begins.
        let off = (!mem.is_empty())
            .then(|| self.inner.ram.slice().offset_of(mem))
            .flatten()
            .ok_or(Error::Invalid("not our memory"))?;
        Ok((Pfn((off / PAGE) as u64), off % PAGE))
    }

    fn pfn_to_mfn(&self, pfn: Pfn) -> Result<Mfn> {
        if pfn.0 >= self.inner.pages {
            return Err(Error::Invalid("pfn"));
        }
        let m = self
            .inner
            .info
            .slice()
            .load_u64(info::P2M + pfn.0 as usize * 8, Ordering::Acquire);
        m.map(Mfn).map_err(|_| Error::Invalid("pfn"))
    }

    fn alloc_pages(&self, count: u64) -> Result<Pfn> {
        match self.call(&Request::AllocPages { count })?.0 {
            Reply::Pfn(p) => Ok(p),
            _ => Err(Error::Protocol("unexpected reply")),
        }
    }

    fn free_pages(&self, pfn: Pfn, count: u64) -> Result<()> {
        self.call(&Request::FreePages { pfn, count }).map(drop)
    }

    fn exchange_contiguous(&self, pfn: Pfn, count: u64, address_bits: u32) -> Result<Mfn> {
        let Reply::Mfn(first) = self
            .call(&Request::Exchange {
                pfn,
                count,
                address_bits,
            })?
            .0
        else {
            return Err(Error::Protocol("unexpected reply"));
        };
        // Our pages now stand on the new frames.
        self.inner.ram.map_fixed(
            pfn.0 as usize * PAGE,
            &self.inner.machine_fd,
            first.0 * PAGE as u64,
            count as usize * PAGE,
            true,
        )?;
        Ok(first)
    }
}

impl GrantTable for SimDomain {
    fn grant_access(&self, to: DomId, pfn: Pfn, readonly: bool) -> Result<GrantRef> {
        if pfn.0 >= self.inner.pages {
            return Err(Error::Invalid("pfn"));
        }
        let gref = {
            let mut free = lock(&self.inner.free_grefs);
            if free.is_empty() {
                let Reply::GrantRefs { first, count } =
                    self.call(&Request::AllocGrantRefs { count: GREF_BLOCK })?.0
                else {
                    return Err(Error::Protocol("unexpected reply"));
                };
                free.extend((first.0..first.0 + count).rev());
            }
            free.pop().ok_or(Error::Exhausted("grant references"))?
        };
        if let Err(s) = self.table().grant(GrantRef(gref), to, pfn, readonly) {
            lock(&self.inner.free_grefs).push(gref);
            return Err(Error::Grant(s));
        }
        Ok(GrantRef(gref))
    }

    fn end_access(&self, gref: GrantRef) -> Result<()> {
        match self.table().end_access(gref) {
            Ok(true) => {
                lock(&self.inner.free_grefs).push(gref.0);
                Ok(())
            }
            Ok(false) => Err(Error::GrantInUse(gref)),
            Err(s) => Err(Error::Grant(s)),
        }
    }
}

/// Grants (or foreign pages) mapped into this process.
pub struct SimMapping {
    map: Option<Mapping>,
    /// Each pin and its slot in our [`PinLog`].
    pins: Vec<(GrantSpec, u32)>,
    held: Vec<DomId>,
    owner: SimDomain,
}

impl GrantMapping for SimMapping {
    fn memory(&self) -> VolatileSlice<'_> {
        match &self.map {
            Some(m) => m.slice(),
            // Never: `map` is only taken in `drop`.
            None => VolatileSlice::empty(),
        }
    }
}

impl Drop for SimMapping {
    fn drop(&mut self) {
        // Unmap first: the granter may reuse a page once it is unpinned.
        drop(self.map.take());
        if let Ok(hv) = self.owner.hv() {
            let log = self.owner.inner.pins.as_ref();
            for (g, slot) in &self.pins {
                // Unless the hv took it when our connection closed.
                if log.is_none_or(|l| l.take_back(*slot, g.domid, g.gref, g.writable)) {
                    hv.unpin(g.domid, g.gref, g.writable);
                }
            }
        }
        for &d in &self.held {
            self.owner.release(d);
        }
    }
}

impl GrantMapper for SimDomain {
    type Mapping = SimMapping;

    fn map_grants(&self, grants: &[GrantSpec]) -> Result<SimMapping> {
        let hv = self.hv()?;
        let mut mapping = SimMapping {
            map: None,
            pins: Vec::new(),
            held: Vec::new(),
            owner: self.clone(),
        };
        let mut frames = Vec::with_capacity(grants.len());
        for g in grants {
            if !mapping.held.contains(&g.domid) {
                self.hold(g.domid)
                    .map_err(|_| Error::Grant(GntStatus::BAD_DOMAIN))?;
                mapping.held.push(g.domid);
            }
            // On failure, dropping `mapping` unpins what was pinned.
            let p = hv
                .pin(g.domid, g.gref, self.inner.domid, g.writable)
                .map_err(Error::Grant)?;
            // Written down for the hv, which drops it if we die holding it.
            let logged = self
                .inner
                .pins
                .as_ref()
                .and_then(|log| log.record(g.domid, g.gref, g.writable));
            let Some(slot) = logged else {
                hv.unpin(g.domid, g.gref, g.writable);
                return Err(Error::Exhausted("pins of this process"));
            };
            mapping.pins.push((*g, slot));
            frames.push((p.mfn.0, g.writable));
        }
        mapping.map = Some(self.map_pages(&frames)?);
        Ok(mapping)
    }

    fn copy_grants(&self, ops: &mut [GrantCopy]) -> Result<()> {
        let hv = self.hv()?;
        let mut granters = BatchGranters::new(self);
        for op in ops.iter_mut() {
            op.status = self.copy_one(&hv, &mut granters, op);
        }
        Ok(())
    }
}

impl ForeignMemory for SimDomain {
    type Mapping = SimMapping;

    fn map_foreign(&self, domid: DomId, pfns: &[Pfn]) -> Result<SimMapping> {
        let hv = self.hv()?;
        self.hold(domid)?;
        let mut mapping = SimMapping {
            map: None,
            pins: Vec::new(),
            held: vec![domid],
            owner: self.clone(),
        };
        let mut frames = Vec::with_capacity(pfns.len());
        for &pfn in pfns {
            let mfn = hv.p2m(domid, pfn).ok_or(Error::Invalid("pfn"))?;
            frames.push((mfn.0, true));
        }
        mapping.map = Some(self.map_pages(&frames)?);
        Ok(mapping)
    }
}

impl EventChannels for SimDomain {
    fn alloc_unbound(&self, remote: DomId) -> Result<Port> {
        self.port_call(Request::EvtchnAllocUnbound { remote })
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port> {
        self.port_call(Request::EvtchnBindInterdomain {
            remote,
            remote_port,
        })
    }

    fn bind_virq(&self, virq: u32) -> Result<Port> {
        self.port_call(Request::EvtchnBindVirq { virq })
    }

    fn notify(&self, port: Port) -> Result<()> {
        let generation = self.generation(port);
        {
            let ports = lock(&self.inner.ports);
            let p = ports.get(&port.0).ok_or(Error::BadPort(port))?;
            if let Some((g, fd)) = &p.send {
                if *g == generation {
                    sys::event_signal(fd.as_raw_fd())?;
                    return Ok(());
                }
            }
        }
        // The binding changed (or was never learnt): ask who is there now.
        let (reply, mut fds) = self.call(&Request::EvtchnPeer { port })?;
        let Reply::Peer { bound, generation } = reply else {
            return Err(Error::Protocol("unexpected reply"));
        };
        let mut ports = lock(&self.inner.ports);
        let p = ports.get_mut(&port.0).ok_or(Error::BadPort(port))?;
        p.send = match (bound, fds.pop()) {
            (true, Some(fd)) => {
                sys::event_signal(fd.as_raw_fd())?;
                Some((generation, fd))
            }
            // Unbound: the event is dropped, as Xen drops it.
            _ => None,
        };
        Ok(())
    }

    fn close(&self, port: Port) -> Result<()> {
        self.call(&Request::EvtchnClose { port })?;
        lock(&self.inner.ports).remove(&port.0);
        Ok(())
    }

    fn pollable(&self, port: Port) -> Result<OwnedFd> {
        let ports = lock(&self.inner.ports);
        let p = ports.get(&port.0).ok_or(Error::BadPort(port))?;
        Ok(p.recv.try_clone()?)
    }

    fn ack(&self, port: Port) -> Result<bool> {
        let ports = lock(&self.inner.ports);
        let p = ports.get(&port.0).ok_or(Error::BadPort(port))?;
        Ok(sys::event_clear(p.recv.as_raw_fd())?)
    }

    fn wait(&self, port: Port, timeout_ms: i32) -> Result<bool> {
        // Our own descriptor: the port may be closed meanwhile, and the
        // lock must not be held while we block.
        let fd = self.pollable(port)?;
        if !sys::wait_readable(fd.as_raw_fd(), timeout_ms)? {
            return Ok(false);
        }
        Ok(sys::event_clear(fd.as_raw_fd())?)
    }
}

impl DomainControl for SimDomain {
    fn create_domain(&self, config: &DomainConfig) -> Result<NewDomain> {
        let req = Request::DomainCreate {
            pages: config.pages,
            grant_frames: config.grant_frames,
        };
        match self.call(&req)?.0 {
            Reply::Created { domid, token } => Ok(NewDomain {
                domid,
                token: encode_hex(&token),
            }),
            _ => Err(Error::Protocol("unexpected reply")),
        }
    }

    fn destroy_domain(&self, domid: DomId) -> Result<()> {
        self.call(&Request::DomainDestroy { domid }).map(drop)
    }

    fn pause_domain(&self, domid: DomId, paused: bool) -> Result<()> {
        self.call(&Request::DomainPause { domid, paused }).map(drop)
    }

    fn list_domains(&self) -> Result<Vec<DomainInfo>> {
        let Reply::List(list) = self.call(&Request::DomainList)?.0 else {
            return Err(Error::Protocol("unexpected reply"));
        };
        Ok(list
            .into_iter()
            .map(|d| DomainInfo {
                domid: d.domid,
                pages: d.pages,
                paused: d.flags & 1 != 0,
                dying: d.flags & 2 != 0,
                attached: d.flags & 4 != 0,
                shutdown: (d.flags & 8 != 0)
                    .then(|| platform::ShutdownReason::from_code(d.reason))
                    .flatten(),
            })
            .collect())
    }
}

impl platform::Schedule for SimDomain {
    fn shutdown(&self, reason: platform::ShutdownReason) -> Result<()> {
        self.call(&Request::Shutdown {
            reason: reason.code(),
        })
        .map(drop)
    }
}

impl SimDomain {
    /// Grant entries of our table.
    pub fn grant_entries(&self) -> u32 {
        (self.inner.gnttab.len() / 8) as u32
    }

    /// Entries per grant frame (for tests that fill a table).
    pub const ENTRIES_PER_FRAME: usize = ENTRIES_PER_FRAME;
}
