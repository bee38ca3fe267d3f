//! Serving requests: each request copied out of the ring and validated
//! ([`crate::request`]) before anything happens, then its data moved
//! between the guest's granted pages and the disk, then its response.

use abi::blkif::{self, BlkifResponse};
use abi::pod::Pod;
use ring::{BackRing, RingError, RingMem};

use crate::request::{decode, Abi, Disk, Op, Refused, Request, Segment};
use crate::storage::Storage;

/// A grant the guest did not give, or gave read-only for a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad grant")]
pub struct BadGrant;

/// Moves bytes between the guest's granted pages and ours: the grant
/// table's side of the backend (grant copy or map, on the platform).
pub trait Mover {
    /// Fills `buf` from the segments (the guest's data, for a write), in
    /// order: each segment's `len()` bytes at its `offset()` in its page.
    fn read_guest(&mut self, segments: &[Segment], buf: &mut [u8]) -> Result<(), BadGrant>;
    /// Writes `buf` into the segments (for a read), in order.
    fn write_guest(&mut self, segments: &[Segment], buf: &[u8]) -> Result<(), BadGrant>;
    /// A read of the segments from `storage` at `offset` straight into
    /// the guest's pages, when both can (pages already mapped writable,
    /// an engine with [`Storage::read_into`]); `None` otherwise, and the
    /// read goes through a buffer and [`write_guest`](Self::write_guest).
    fn read_from(
        &mut self,
        _segments: &[Segment],
        _storage: &dyn Storage,
        _offset: u64,
    ) -> Option<std::io::Result<()>> {
        None
    }
}

/// Counters of what was refused or failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests answered `BLKIF_RSP_OKAY`.
    pub ok: u64,
    /// Refused as malformed or out of range.
    pub bad: u64,
    /// Refused as not supported.
    pub unsupported: u64,
    /// Failed at the grant table (a bad grant).
    pub grant_errors: u64,
    /// Failed at the storage.
    pub io_errors: u64,
}

/// Serves one validated request; the response status.
pub fn execute(
    req: &Request,
    storage: &dyn Storage,
    mover: &mut dyn Mover,
    c: &mut Counters,
) -> i16 {
    let result = match &req.op {
        // A barrier without data (its sector unchecked, as Linux leaves
        // it): only the flush.
        Op::Write { segments, .. } if segments.is_empty() => storage.flush().map_err(|_| false),
        // Reads and writes as a group of one.
        Op::Read { .. } | Op::Write { .. } => {
            return execute_group(&[req], storage, mover, c)[0];
        }
        Op::Flush => storage.flush().map_err(|_| false),
        // Never here: `serve_slot` fetches its segments first.
        Op::Indirect { .. } => {
            c.bad += 1;
            return blkif::BLKIF_RSP_ERROR;
        }
        Op::Discard { sector, count, .. } => storage
            .discard(sector * 512, count * 512)
            .map_err(|_| false),
    };
    match result {
        Ok(()) => {
            c.ok += 1;
            blkif::BLKIF_RSP_OKAY
        }
        Err(grant) => {
            if grant {
                c.grant_errors += 1;
            } else {
                c.io_errors += 1;
            }
            blkif::BLKIF_RSP_ERROR
        }
    }
}

enum Fetch {
    Grant,
    Refused(Refused),
}

/// Copies an indirect request's pages in and makes it a read or write.
fn fetch_indirect(op: &Op, disk: &Disk, mover: &mut dyn Mover) -> Result<Op, Fetch> {
    let Op::Indirect { pages, .. } = op else {
        return Err(Fetch::Refused(Refused::Bad("not indirect")));
    };
    let whole: Vec<Segment> = pages
        .iter()
        .map(|&gref| Segment {
            gref,
            first: 0,
            last: 7,
        })
        .collect();
    let mut buf = vec![0u8; whole.len() * 4096];
    mover
        .read_guest(&whole, &mut buf)
        .map_err(|_| Fetch::Grant)?;
    crate::request::indirect_segments(op, &buf, disk).map_err(Fetch::Refused)
}

/// Decodes, validates and serves one slot; its response.
pub fn serve_slot(
    abi: Abi,
    slot: &[u8],
    disk: &Disk,
    storage: &dyn Storage,
    mover: &mut dyn Mover,
    c: &mut Counters,
) -> BlkifResponse {
    let (id, operation, req) = resolve(abi, slot, disk, mover, c);
    let status = match req {
        Ok(r) => execute(&r, storage, mover, c),
        Err(status) => status,
    };
    response(id, operation, status)
}

fn response(id: u64, operation: u8, status: i16) -> BlkifResponse {
    BlkifResponse {
        id,
        operation,
        status,
        ..BlkifResponse::zeroed()
    }
}

/// A slot decoded, checked, and (an indirect one) its segments fetched;
/// or the status of its refusal, counted.
fn resolve(
    abi: Abi,
    slot: &[u8],
    disk: &Disk,
    mover: &mut dyn Mover,
    c: &mut Counters,
) -> (u64, u8, Result<Request, i16>) {
    let (id, operation, req) = decode(abi, slot, disk);
    // An indirect request's segments: its pages copied in, then checked.
    let req = match req {
        Ok(r) if matches!(r.op, Op::Indirect { .. }) => match fetch_indirect(&r.op, disk, mover) {
            Ok(op) => Ok(Request { op, ..r }),
            Err(Fetch::Grant) => {
                c.grant_errors += 1;
                return (id, operation, Err(blkif::BLKIF_RSP_ERROR));
            }
            Err(Fetch::Refused(e)) => Err(e),
        },
        r => r,
    };
    let req = req.map_err(|e| {
        match e {
            Refused::NotSupported(_) => c.unsupported += 1,
            Refused::Bad(_) => c.bad += 1,
        }
        e.status()
    });
    (id, operation, req)
}

/// Reads and writes that arrived together (plain ones; a barrier's write
/// only alone: it is flushed after), their storage I/O submitted as one
/// batch ([`Storage::submit`]: one `io_uring_enter` for a file); their
/// statuses, in order.
fn execute_group(
    group: &[&Request],
    storage: &dyn Storage,
    mover: &mut dyn Mover,
    c: &mut Counters,
) -> Vec<i16> {
    use crate::storage::StorageIo;
    let bytes = |segs: &[Segment]| segs.iter().map(Segment::len).sum::<usize>();
    let mut status = vec![blkif::BLKIF_RSP_OKAY; group.len()];
    // This thread's buffers from the last group, not zeroed again: a
    // read's is filled whole by the storage (or the read fails and it is
    // never shown), a write's whole by the guest's data. Each is used
    // through a page-aligned window, so that an `O_DIRECT` file reads and
    // writes it as it is.
    let mut bufs = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    bufs.resize_with(group.len().max(bufs.len()), Vec::new);
    let window = crate::storage::aligned_window;
    for (k, r) in group.iter().enumerate() {
        let (segments, write) = match &r.op {
            Op::Read { segments, .. } => (segments, false),
            Op::Write { segments, .. } => (segments, true),
            _ => {
                c.bad += 1;
                status[k] = blkif::BLKIF_RSP_ERROR;
                bufs[k].clear();
                continue;
            }
        };
        let n = bytes(segments);
        if write && mover.read_guest(segments, window(&mut bufs[k], n)).is_err() {
            c.grant_errors += 1;
            status[k] = blkif::BLKIF_RSP_ERROR;
        }
    }
    // A group of reads only (order among reads does not matter) goes
    // straight into the guest's pages where it can: one copy less.
    let mut direct = vec![false; group.len()];
    if group.iter().all(|r| matches!(r.op, Op::Read { .. })) {
        for (k, r) in group.iter().enumerate() {
            let Op::Read { sector, segments } = &r.op else {
                continue;
            };
            if let Some(res) = mover.read_from(segments, storage, sector * 512) {
                direct[k] = true;
                if res.is_ok() {
                    c.ok += 1;
                } else {
                    c.io_errors += 1;
                    status[k] = blkif::BLKIF_RSP_ERROR;
                }
            }
        }
    }
    let mut which = Vec::new();
    let mut ios: Vec<StorageIo<'_>> = Vec::new();
    for (k, (r, buf)) in group.iter().zip(bufs.iter_mut()).enumerate() {
        if status[k] != blkif::BLKIF_RSP_OKAY || direct[k] {
            continue;
        }
        match &r.op {
            Op::Read { sector, segments } => ios.push(StorageIo::Read {
                offset: sector * 512,
                buf: window(buf, bytes(segments)),
            }),
            Op::Write {
                sector, segments, ..
            } => ios.push(StorageIo::Write {
                offset: sector * 512,
                data: window(buf, bytes(segments)),
            }),
            _ => continue,
        }
        which.push(k);
    }
    let results = storage.submit(&mut ios);
    drop(ios);
    let mut results = results.into_iter();
    for k in which {
        // A barrier's write is on stable storage before its answer.
        let barrier = matches!(group[k].op, Op::Write { flush: true, .. });
        let ok = matches!(results.next(), Some(Ok(())));
        if !ok || (barrier && storage.flush().is_err()) {
            c.io_errors += 1;
            status[k] = blkif::BLKIF_RSP_ERROR;
        }
    }
    for (k, r) in group.iter().enumerate() {
        if status[k] != blkif::BLKIF_RSP_OKAY || direct[k] {
            continue;
        }
        if let Op::Read { segments, .. } = &r.op {
            if mover
                .write_guest(segments, window(&mut bufs[k], bytes(segments)))
                .is_err()
            {
                c.grant_errors += 1;
                status[k] = blkif::BLKIF_RSP_ERROR;
                continue;
            }
        }
        c.ok += 1;
    }
    // Kept for the next group, at most SCRATCH_BYTES of them (an idle
    // queue does not pin a burst's worth).
    let mut kept = 0;
    bufs.retain(|b| {
        kept += b.capacity();
        kept <= SCRATCH_BYTES
    });
    SCRATCH.with(|s| *s.borrow_mut() = bufs);
    status
}

/// Bytes of buffers a serving thread keeps between groups.
const SCRATCH_BYTES: usize = 4 << 20;

thread_local! {
    /// A serving thread's buffers for [`execute_group`].
    static SCRATCH: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether a request can go in a group: a plain read or write.
fn groupable(r: &Request) -> bool {
    matches!(r.op, Op::Read { .. } | Op::Write { flush: false, .. })
        && !matches!(&r.op, Op::Write { segments, .. } if segments.is_empty())
}

/// The x86_64 request slot: the union's size is `blkif_request`'s.
pub type Slot64 = abi::blkif::BlkifRequest;

/// A request ABI a ring can carry (the frontend's `protocol` key): its
/// slot and response layouts.
pub trait RingAbi {
    /// A request slot (the size of the request union).
    type Slot: abi::pod::Pod;
    /// A response.
    type Response: abi::pod::Pod;
    /// Which one, for decoding.
    const ABI: Abi;
    /// `r` in this ABI's layout.
    fn response(r: &BlkifResponse) -> Self::Response;
}

/// `x86_64-abi`.
pub struct Abi64;

/// `x86_32-abi`: 4-byte alignment, no padding before the 64-bit fields.
pub struct Abi32;

impl RingAbi for Abi64 {
    type Slot = Slot64;
    type Response = BlkifResponse;
    const ABI: Abi = Abi::X86_64;
    fn response(r: &BlkifResponse) -> BlkifResponse {
        *r
    }
}

impl RingAbi for Abi32 {
    type Slot = abi::blkif::x86_32::BlkifRequest;
    type Response = abi::blkif::x86_32::BlkifResponse;
    const ABI: Abi = Abi::X86_32;
    fn response(r: &BlkifResponse) -> Self::Response {
        abi::blkif::x86_32::BlkifResponse {
            id: r.id,
            operation: r.operation,
            _pad0: 0,
            status: r.status,
        }
    }
}

/// Serves every request waiting in a ring of ABI `A` (at most `budget`);
/// returns how many, and whether the frontend must be notified. A broken
/// ring (an index the frontend moved where it cannot be) is an error: the
/// caller disconnects that device only.
pub fn serve_ring<M: RingMem, A: RingAbi>(
    ring: &mut BackRing<M, A::Slot, A::Response>,
    disk: &Disk,
    storage: &dyn Storage,
    mover: &mut dyn Mover,
    c: &mut Counters,
    budget: usize,
) -> Result<(usize, bool), RingError> {
    let mut served = 0;
    let mut notify = false;
    loop {
        // What has arrived (within the budget), decoded and checked.
        let mut taken = Vec::new();
        while served + taken.len() < budget {
            // A copy of the slot: the frontend may change the shared one.
            let Some(slot) = ring.take_request()? else {
                break;
            };
            taken.push(resolve(A::ABI, slot.as_bytes(), disk, mover, c));
        }
        served += taken.len();
        // In order; plain reads and writes in a row go to the storage as
        // one batch; anything else (a flush, a barrier, a discard) waits
        // for what came before it and goes alone.
        let mut statuses: Vec<Option<i16>> = vec![None; taken.len()];
        let mut i = 0;
        while i < taken.len() {
            match &taken[i].2 {
                Err(status) => {
                    statuses[i] = Some(*status);
                    i += 1;
                }
                Ok(r) if groupable(r) => {
                    let mut j = i;
                    let mut group = Vec::new();
                    while let Some((_, _, Ok(r))) = taken.get(j) {
                        if !groupable(r) {
                            break;
                        }
                        group.push(r);
                        j += 1;
                    }
                    for (k, st) in execute_group(&group, storage, mover, c)
                        .into_iter()
                        .enumerate()
                    {
                        statuses[i + k] = Some(st);
                    }
                    i = j;
                }
                Ok(r) => {
                    statuses[i] = Some(execute(r, storage, mover, c));
                    i += 1;
                }
            }
        }
        for ((id, operation, _), st) in taken.iter().zip(statuses) {
            let st = st.unwrap_or(blkif::BLKIF_RSP_ERROR);
            ring.put_response(&A::response(&response(*id, *operation, st)))?;
        }
        notify |= ring.push_responses()?;
        if served >= budget || !ring.final_check_for_requests()? {
            return Ok((served, notify));
        }
    }
}

/// [`Mover`] over the platform's grant mapping: each request's segments
/// are mapped as one batch (read-only when only read), copied, unmapped.
pub struct GrantMover<G> {
    mapper: G,
    domid: platform::DomId,
}

impl<G: platform::GrantMapper> GrantMover<G> {
    /// Moves data of domain `domid`'s grants through `mapper`.
    pub fn new(mapper: G, domid: platform::DomId) -> GrantMover<G> {
        GrantMover { mapper, domid }
    }

    fn map(&self, segments: &[Segment], writable: bool) -> Result<G::Mapping, BadGrant> {
        let specs: Vec<platform::GrantSpec> = segments
            .iter()
            .map(|s| platform::GrantSpec {
                domid: self.domid,
                gref: platform::GrantRef(s.gref),
                writable,
            })
            .collect();
        self.mapper.map_grants(&specs).map_err(|_| BadGrant)
    }
}

impl<G: platform::GrantMapper> Mover for GrantMover<G> {
    fn read_guest(&mut self, segments: &[Segment], buf: &mut [u8]) -> Result<(), BadGrant> {
        use platform::GrantMapping;
        let m = self.map(segments, false)?;
        let mem = m.memory();
        let mut at = 0;
        for (i, s) in segments.iter().enumerate() {
            let off = i * platform::PAGE_SIZE + s.offset();
            mem.read_bytes(off, &mut buf[at..at + s.len()])
                .map_err(|_| BadGrant)?;
            at += s.len();
        }
        Ok(())
    }

    fn write_guest(&mut self, segments: &[Segment], buf: &[u8]) -> Result<(), BadGrant> {
        use platform::GrantMapping;
        let m = self.map(segments, true)?;
        let mem = m.memory();
        let mut at = 0;
        for (i, s) in segments.iter().enumerate() {
            let off = i * platform::PAGE_SIZE + s.offset();
            mem.write_bytes(off, &buf[at..at + s.len()])
                .map_err(|_| BadGrant)?;
            at += s.len();
        }
        Ok(())
    }
}

/// [`Mover`] by grant copy (`GNTTABOP_copy`): a request's segments are
/// copied in one batch to or from bounce pages of our own, with no
/// mapping; what Linux's blkback gets from persistent grants, without
/// the frontend's cooperation.
pub struct CopyMover<P: platform::OwnMemory> {
    dom: P,
    domid: platform::DomId,
    bounce: platform::Pfn,
}

impl<P: platform::GrantMapper + platform::OwnMemory> CopyMover<P> {
    /// Copies data of domain `domid`'s grants, through pages of `dom`'s.
    pub fn new(dom: P, domid: platform::DomId) -> platform::Result<CopyMover<P>> {
        let bounce = dom.alloc_pages(blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST as u64)?;
        Ok(CopyMover { dom, domid, bounce })
    }

    fn copy(&self, segments: &[Segment], to_guest: bool) -> Result<(), BadGrant> {
        use platform::{CopyPtr, GntStatus, GrantCopy};
        let mut ops: Vec<GrantCopy> = segments
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let guest = CopyPtr::Grant {
                    domid: self.domid,
                    gref: platform::GrantRef(s.gref),
                    offset: s.offset() as u16,
                };
                let ours = CopyPtr::Local {
                    pfn: platform::Pfn(self.bounce.0 + i as u64),
                    offset: s.offset() as u16,
                };
                let (source, dest) = if to_guest {
                    (ours, guest)
                } else {
                    (guest, ours)
                };
                GrantCopy {
                    source,
                    dest,
                    len: s.len() as u16,
                    status: GntStatus::GENERAL_ERROR,
                }
            })
            .collect();
        self.dom.copy_grants(&mut ops).map_err(|_| BadGrant)?;
        if ops.iter().all(|o| o.status == GntStatus::OKAY) {
            Ok(())
        } else {
            Err(BadGrant)
        }
    }
}

impl<P: platform::GrantMapper + platform::OwnMemory> Mover for CopyMover<P> {
    fn read_guest(&mut self, segments: &[Segment], buf: &mut [u8]) -> Result<(), BadGrant> {
        let mut at = 0;
        // A bounce page a segment, 11 at a time (an indirect request has
        // up to 256).
        for chunk in segments.chunks(blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST) {
            self.copy(chunk, false)?;
            let mem = self
                .dom
                .pages(self.bounce, blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST as u64)
                .map_err(|_| BadGrant)?;
            for (i, s) in chunk.iter().enumerate() {
                mem.read_bytes(i * 4096 + s.offset(), &mut buf[at..at + s.len()])
                    .map_err(|_| BadGrant)?;
                at += s.len();
            }
        }
        Ok(())
    }

    fn write_guest(&mut self, segments: &[Segment], buf: &[u8]) -> Result<(), BadGrant> {
        let mut at = 0;
        for chunk in segments.chunks(blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST) {
            let mem = self
                .dom
                .pages(self.bounce, blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST as u64)
                .map_err(|_| BadGrant)?;
            for (i, s) in chunk.iter().enumerate() {
                mem.write_bytes(i * 4096 + s.offset(), &buf[at..at + s.len()])
                    .map_err(|_| BadGrant)?;
                at += s.len();
            }
            self.copy(chunk, true)?;
        }
        Ok(())
    }
}

impl<P: platform::OwnMemory> Drop for CopyMover<P> {
    fn drop(&mut self) {
        let _ = self
            .dom
            .free_pages(self.bounce, blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST as u64);
    }
}

/// Persistent grants a backend keeps mapped at most (Linux's blkback
/// default, `max_persistent_grants`).
pub const MAX_PERSISTENT_GRANTS: usize = 1056;

/// Persistent grants all the devices sharing it may keep mapped at once:
/// each mapping is one of the backend process's memory maps, so that
/// many frontends together cannot use up its `vm.max_map_count`.
#[derive(Clone, Debug)]
pub struct PersistentBudget(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl PersistentBudget {
    /// `total` mappings in all.
    pub fn new(total: usize) -> PersistentBudget {
        PersistentBudget(std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(
            total,
        )))
    }

    /// Mappings left.
    pub fn left(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::AcqRel);
    }
}

/// [`Mover`] over persistent grants (`feature-persistent`, offered by
/// both ends): each grant the frontend uses is mapped once, on first use,
/// and kept (read-only if it is a read-only grant), so that data moves by
/// one plain copy after that. A grant past [`MAX_PERSISTENT_GRANTS`], or
/// one that cannot be mapped, goes through `fallback`, grant copy. The mappings go
/// when the mover does: a frontend cannot end access to a page we map,
/// so every page we touch is still granted to us.
pub struct PersistentMover<P: platform::GrantMapper + platform::OwnMemory> {
    dom: P,
    domid: platform::DomId,
    /// Each grant's mapping, and whether it is writable (a read-only
    /// grant, an indirect page say, is mapped read-only).
    maps: std::collections::HashMap<u32, (P::Mapping, bool)>,
    fallback: CopyMover<P>,
    budget: PersistentBudget,
}

impl<P: platform::GrantMapper + platform::OwnMemory + Clone> PersistentMover<P> {
    /// Persistent grants of domain `domid`, mapped by `dom`, within
    /// `budget`.
    pub fn new(
        dom: P,
        domid: platform::DomId,
        budget: PersistentBudget,
    ) -> platform::Result<PersistentMover<P>> {
        let fallback = CopyMover::new(dom.clone(), domid)?;
        Ok(PersistentMover {
            dom,
            domid,
            maps: std::collections::HashMap::new(),
            fallback,
            budget,
        })
    }

    /// Grants mapped so far.
    pub fn mapped(&self) -> usize {
        self.maps.len()
    }

    /// Whether every segment's grant is mapped (mapping what is not yet,
    /// while there is room).
    fn all_mapped(&mut self, segments: &[Segment]) -> bool {
        for s in segments {
            if self.maps.contains_key(&s.gref) {
                continue;
            }
            if self.maps.len() >= MAX_PERSISTENT_GRANTS || !self.budget.take() {
                return false;
            }
            let spec = |writable| platform::GrantSpec {
                domid: self.domid,
                gref: platform::GrantRef(s.gref),
                writable,
            };
            let m = match self.dom.map_grants(&[spec(true)]) {
                Ok(m) => (m, true),
                Err(_) => match self.dom.map_grants(&[spec(false)]) {
                    Ok(m) => (m, false),
                    Err(_) => {
                        self.budget.give(1);
                        return false;
                    }
                },
            };
            self.maps.insert(s.gref, m);
        }
        true
    }
}

impl<P: platform::GrantMapper + platform::OwnMemory + Clone> Mover for PersistentMover<P> {
    fn read_from(
        &mut self,
        segments: &[Segment],
        storage: &dyn Storage,
        offset: u64,
    ) -> Option<std::io::Result<()>> {
        use platform::GrantMapping;
        if !self.all_mapped(segments) {
            return None;
        }
        let mut dst = Vec::with_capacity(segments.len());
        for s in segments {
            match self.maps.get(&s.gref) {
                Some((m, true)) => dst.push(m.memory().subslice(s.offset(), s.len()).ok()?),
                // Not writable: `write_guest` refuses it.
                _ => return None,
            }
        }
        storage.read_into(&dst, offset)
    }

    fn read_guest(&mut self, segments: &[Segment], buf: &mut [u8]) -> Result<(), BadGrant> {
        use platform::GrantMapping;
        if !self.all_mapped(segments) {
            return self.fallback.read_guest(segments, buf);
        }
        let mut at = 0;
        for s in segments {
            let (m, _) = self.maps.get(&s.gref).ok_or(BadGrant)?;
            m.memory()
                .read_bytes(s.offset(), &mut buf[at..at + s.len()])
                .map_err(|_| BadGrant)?;
            at += s.len();
        }
        Ok(())
    }

    fn write_guest(&mut self, segments: &[Segment], buf: &[u8]) -> Result<(), BadGrant> {
        use platform::GrantMapping;
        if !self.all_mapped(segments) {
            return self.fallback.write_guest(segments, buf);
        }
        // Nothing written unless every page may be.
        if segments
            .iter()
            .any(|s| !self.maps.get(&s.gref).is_some_and(|(_, w)| *w))
        {
            return Err(BadGrant);
        }
        let mut at = 0;
        for s in segments {
            let (m, _) = self.maps.get(&s.gref).ok_or(BadGrant)?;
            m.memory()
                .write_bytes(s.offset(), &buf[at..at + s.len()])
                .map_err(|_| BadGrant)?;
            at += s.len();
        }
        Ok(())
    }
}

impl<P: platform::GrantMapper + platform::OwnMemory> Drop for PersistentMover<P> {
    fn drop(&mut self) {
        let n = self.maps.len();
        self.maps.clear();
        self.budget.give(n);
    }
}
