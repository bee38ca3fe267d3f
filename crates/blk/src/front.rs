//! blkfront's data path, in the guest: requests into the shared ring, the
//! data in pages granted to the backend (264: 24 requests' worth, so that
//! a 1 MiB transfer is one exchange), and [`BlkFront::batch`] for several
//! small transfers in one exchange (one caller at a time per device).
//!
//! The ring page and its grant, and the event channel, are the xenbus
//! frontend's (`dom0kit guest`); this takes them over once the device is
//! `Connected`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi::blkif::{self, BlkifRequest, BlkifRequestSegment, BlkifResponse};
use abi::pod::Pod;
use platform::{DomId, EventChannels, GrantRef, GrantTable, OwnMemory, Pfn, Port};
use ring::FrontRing;

use crate::serve::Slot64;

/// What a request to the backend can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// The backend answered with an error status.
    #[error("the backend answered {0}")]
    Status(i16),
    /// The ring broke or the platform refused.
    #[error("{0}")]
    Broken(String),
    /// No answer in time.
    #[error("no answer from the backend")]
    Timeout,
    /// Not 512-byte aligned, or past the disk.
    #[error("unaligned or out of range")]
    Range,
    /// The connection is being replaced ([`BlkFront::aborter`]): the
    /// transfer did not finish and is to be made again on the next one.
    #[error("the connection to the backend is being replaced")]
    Aborted,
}

/// One read or write of a [`BlkFront::batch`] (512-byte aligned): the
/// storage engines' batch entry, the same shape.
pub type Io<'a> = crate::storage::StorageIo<'a>;

/// The first failure among a transfer's statuses.
fn first_error(statuses: &[i16]) -> Result<(), FrontError> {
    match statuses.iter().find(|&&s| s != blkif::BLKIF_RSP_OKAY) {
        Some(&s) => Err(FrontError::Status(s)),
        None => Ok(()),
    }
}

/// Segments per request (a direct request).
const SEGS: usize = blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST;
/// Requests in flight at once for one transfer (a 1 MiB transfer is 24
/// requests: one exchange).
const BATCH: usize = 24;
/// Data pages: one request's worth per request in flight.
const PAGES: usize = SEGS * BATCH;

/// A connected device's frontend end.
pub struct BlkFront<P> {
    dom: P,
    ring_pfn: Pfn,
    /// Pages of the ring (`2^ring-page-order`).
    ring_pages: u64,
    /// Its slots (`__RING_SIZE`).
    slots: usize,
    port: Port,
    /// Pages for the data, granted to the backend for the device's life.
    data: Pfn,
    /// How many ([`PAGES`], fewer in a small guest).
    pages: usize,
    grants: Vec<GrantRef>,
    sectors: u64,
    next_id: u64,
    /// The ring index of the next request.
    next_idx: u32,
    timeout: Duration,
    /// A request went unanswered (or the ring broke, or the connection
    /// was aborted): the data pages may still be the backend's, so nothing
    /// more is sent.
    failed: bool,
    /// Set from outside to stop waiting for the backend.
    abort: Arc<AtomicBool>,
    /// The backend offered `feature-discard`.
    discard: bool,
    /// Indirect requests, if the backend offered them.
    indirect: Option<Indirect>,
}

/// Pages holding the segments of indirect requests (one a request in
/// flight), granted read-only to the backend, and how many segments a
/// request may carry.
struct Indirect {
    pfn: Pfn,
    grants: Vec<GrantRef>,
    max_segments: usize,
}

/// The largest discard sent as one request (64 MiB).
const DISCARD_CHUNK: usize = 64 << 20;

/// Indirect pages: enough for every request of a full data area.
const INDIRECT_PAGES: usize = BATCH;

impl<P: OwnMemory + GrantTable + EventChannels> BlkFront<P> {
    /// Takes over the ring in the `ring_pages` pages from `ring_pfn`
    /// (granted) and `port` for a disk of `sectors`; grants its data pages
    /// to `backend`.
    pub fn new(
        dom: P,
        ring_pfn: Pfn,
        ring_pages: u64,
        port: Port,
        backend: DomId,
        sectors: u64,
    ) -> Result<Self, FrontError> {
        let b = |e: platform::Error| FrontError::Broken(e.to_string());
        // The ring starts empty (SHARED_RING_INIT: both event indices 1).
        let slots = {
            let page = dom.pages(ring_pfn, ring_pages).map_err(b)?;
            FrontRing::<_, Slot64, BlkifResponse>::init(page)
                .map_err(|e| FrontError::Broken(e.to_string()))?
                .size() as usize
        };
        // A small guest gets fewer pages (one request's at the least).
        let (data, pages) = [PAGES, SEGS * 8, SEGS]
            .iter()
            .find_map(|&n| dom.alloc_pages(n as u64).ok().map(|p| (p, n)))
            .ok_or_else(|| FrontError::Broken("no memory for the data pages".into()))?;
        let mut grants = Vec::with_capacity(pages);
        for i in 0..pages as u64 {
            match dom.grant_access(backend, Pfn(data.0 + i), false) {
                Ok(g) => grants.push(g),
                Err(e) => {
                    for g in grants {
                        let _ = dom.end_access(g);
                    }
                    let _ = dom.free_pages(data, pages as u64);
                    return Err(b(e));
                }
            }
        }
        Ok(BlkFront {
            dom,
            ring_pfn,
            ring_pages,
            slots,
            port,
            data,
            pages,
            grants,
            sectors,
            next_id: 1,
            next_idx: 0,
            timeout: Duration::from_secs(30),
            failed: false,
            abort: Arc::new(AtomicBool::new(false)),
            discard: false,
            indirect: None,
        })
    }

    /// A flag that, once set, makes a transfer waiting for the backend
    /// return [`FrontError::Aborted`] (within 100 ms) and this frontend
    /// send nothing more: for replacing the connection while a transfer is
    /// in flight.
    pub fn aborter(&self) -> Arc<AtomicBool> {
        self.abort.clone()
    }

    /// How long a request may go unanswered (30 s unless set).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// Whether [`aborter`](Self::aborter)'s flag is set.
    pub fn is_aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Whether it sends nothing more: a request went unanswered, the ring
    /// broke, or it was aborted.
    pub fn is_failed(&self) -> bool {
        self.failed || self.is_aborted()
    }

    /// The data pages, as one slice of our memory.
    fn data_area(&self) -> Result<abi::VolatileSlice<'_>, FrontError> {
        self.dom
            .pages(self.data, self.pages as u64)
            .map_err(|e| FrontError::Broken(e.to_string()))
    }

    /// Size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// One transfer of at most [`PAGES`] pages, as up to [`BATCH`] requests
    /// in flight; `data` in or out.
    fn one(
        &mut self,
        op: u8,
        sector: u64,
        len: usize,
        data: Option<&[u8]>,
        out: Option<&mut [u8]>,
    ) -> Result<(), FrontError> {
        if self.is_aborted() {
            self.failed = true;
            return Err(FrontError::Aborted);
        }
        if self.failed {
            return Err(FrontError::Broken(
                "an earlier request went unanswered".into(),
            ));
        }
        let r = if op == blkif::BLKIF_OP_DISCARD {
            self.discard_inner(sector, len as u64 / 512)
        } else {
            self.one_inner(op, sector, len, data, out)
        };
        if matches!(
            r,
            Err(FrontError::Timeout | FrontError::Broken(_) | FrontError::Aborted)
        ) {
            self.failed = true;
        }
        r
    }

    fn one_inner(
        &mut self,
        op: u8,
        sector: u64,
        len: usize,
        data: Option<&[u8]>,
        out: Option<&mut [u8]>,
    ) -> Result<(), FrontError> {
        let broken = |e: &dyn std::fmt::Display| FrontError::Broken(e.to_string());
        // The data area mirrors the buffer.
        let mut reqs = Vec::new();
        self.requests(op, sector, len, 0, &mut 0, &mut reqs)?;
        if let Some(d) = data {
            let mem = self.data_area()?;
            mem.write_bytes(0, d).map_err(|e| broken(&e))?;
        }
        first_error(&self.exchange(&reqs)?)?;
        if let Some(o) = out {
            let mem = self.data_area()?;
            mem.read_bytes(0, o).map_err(|e| broken(&e))?;
        }
        Ok(())
    }

    /// Sends `reqs` (at most a ring's worth) and waits for all their
    /// responses, failed or not, before the data pages are used again;
    /// their statuses, in the order of `reqs`.
    fn exchange(&mut self, reqs: &[BlkifRequest]) -> Result<Vec<i16>, FrontError> {
        let broken = |e: &dyn std::fmt::Display| FrontError::Broken(e.to_string());
        let dom = &self.dom;
        // Between batches everything is exchanged up to `next_idx`.
        let page = dom
            .pages(self.ring_pfn, self.ring_pages)
            .map_err(|e| broken(&e))?;
        let mut ring: FrontRing<_, Slot64, BlkifResponse> =
            FrontRing::attach(page, abi::RingIdx(self.next_idx)).map_err(|e| broken(&e))?;
        for r in reqs {
            ring.put_request(r).map_err(|e| broken(&e))?;
        }
        if ring.push_requests().map_err(|e| broken(&e))? {
            dom.notify(self.port).map_err(|e| broken(&e))?;
        }
        self.next_idx = self.next_idx.wrapping_add(reqs.len() as u32);
        let (first_id, last_id) = (reqs[0].id, reqs[reqs.len() - 1].id);
        let mut answered = 0;
        let mut statuses = vec![blkif::BLKIF_RSP_OKAY; reqs.len()];
        let mut seen = vec![false; reqs.len()];
        let deadline = Instant::now() + self.timeout;
        while answered < reqs.len() {
            let rsp = match ring.take_response().map_err(|e| broken(&e))? {
                Some(r) => Some(r),
                None if ring.final_check_for_responses().map_err(|e| broken(&e))? => {
                    ring.take_response().map_err(|e| broken(&e))?
                }
                None => None,
            };
            match rsp {
                Some(r) => {
                    if r.id < first_id || r.id > last_id {
                        return Err(FrontError::Broken(
                            "a response to no request of ours".into(),
                        ));
                    }
                    let k = (r.id - first_id) as usize;
                    if std::mem::replace(&mut seen[k], true) {
                        return Err(FrontError::Broken("two responses to one request".into()));
                    }
                    statuses[k] = r.status;
                    answered += 1;
                }
                None => {
                    if self.abort.load(Ordering::Relaxed) {
                        return Err(FrontError::Aborted);
                    }
                    if Instant::now() > deadline {
                        return Err(FrontError::Timeout);
                    }
                    let _ = dom.wait(self.port, 100);
                }
            }
        }
        Ok(statuses)
    }

    /// The requests of one transfer of `len` bytes at `sector`, its data
    /// in the data pages from `first_page` on: request k's pages are
    /// `first_page + k * SEGS ..`, holding bytes `k * SEGS * 4096 ..`.
    fn requests(
        &mut self,
        op: u8,
        sector: u64,
        len: usize,
        first_page: usize,
        ind_used: &mut usize,
        reqs: &mut Vec<BlkifRequest>,
    ) -> Result<(), FrontError> {
        let pages = len.div_ceil(4096);
        let (_, indirect) = self.plan(pages, *ind_used);
        // A page's sectors: all but the last page's are whole.
        let seg = |this: &Self, p: usize| {
            let bytes = (len - p * 4096).min(4096);
            BlkifRequestSegment {
                gref: this.grants[first_page + p].0,
                first_sect: 0,
                last_sect: (bytes / 512 - 1) as u8,
                _pad0: [0; 2],
            }
        };
        if indirect {
            let Some((pfn, grants, max)) = self
                .indirect
                .as_ref()
                .map(|i| (i.pfn, i.grants.clone(), i.max_segments))
            else {
                return Err(FrontError::Broken("no indirect pages".into()));
            };
            for (k, chunk) in (0..pages).collect::<Vec<_>>().chunks(max).enumerate() {
                // The segment list, in indirect page `ind_used`.
                let mut list = vec![0u8; chunk.len() * 8];
                for (i, &p) in chunk.iter().enumerate() {
                    list[i * 8..i * 8 + 8].copy_from_slice(seg(self, p).as_bytes());
                }
                let page = Pfn(pfn.0 + *ind_used as u64);
                self.dom
                    .pages(page, 1)
                    .and_then(|m| {
                        m.write_bytes(0, &list)
                            .map_err(|_| platform::Error::Invalid("page"))
                    })
                    .map_err(|e| FrontError::Broken(e.to_string()))?;
                let mut r = blkif::BlkifRequestIndirect::zeroed();
                r.operation = blkif::BLKIF_OP_INDIRECT;
                r.indirect_op = op;
                r.nr_segments = chunk.len() as u16;
                r.id = self.next_id;
                self.next_id += 1;
                r.sector_number = sector + (k * max * 8) as u64;
                r.indirect_grefs[0] = grants[*ind_used].0;
                *ind_used += 1;
                let mut req = BlkifRequest::zeroed();
                req.as_bytes_mut()[..r.as_bytes().len()].copy_from_slice(r.as_bytes());
                reqs.push(req);
            }
            return Ok(());
        }
        let chunks = pages.div_ceil(SEGS).max(1);
        for k in 0..chunks {
            let n = (pages - (k * SEGS).min(pages)).min(SEGS);
            let mut req = BlkifRequest::zeroed();
            req.operation = op;
            req.id = self.next_id;
            self.next_id += 1;
            req.sector_number = sector + (k * SEGS * 8) as u64;
            req.nr_segments = n as u8;
            for p in 0..n {
                req.seg[p] = seg(self, k * SEGS + p);
            }
            reqs.push(req);
        }
        Ok(())
    }

    /// Several reads and writes at once: as many as fit the data pages
    /// and the ring go out together, so that the backend serves them in
    /// one wakeup. Each gets its own result; the outer error is the
    /// connection's ([`FrontError::Broken`], `Timeout`, `Aborted`), after
    /// which nothing more is sent.
    pub fn batch(&mut self, ios: &mut [Io<'_>]) -> Result<Vec<Result<(), FrontError>>, FrontError> {
        if self.is_aborted() {
            self.failed = true;
            return Err(FrontError::Aborted);
        }
        if self.failed {
            return Err(FrontError::Broken(
                "an earlier request went unanswered".into(),
            ));
        }
        let r = self.batch_inner(ios);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn batch_inner(
        &mut self,
        ios: &mut [Io<'_>],
    ) -> Result<Vec<Result<(), FrontError>>, FrontError> {
        let broken = |e: &dyn std::fmt::Display| FrontError::Broken(e.to_string());
        let mut results: Vec<Result<(), FrontError>> = ios
            .iter()
            .map(|io| self.check(io.offset(), io.len()))
            .collect();
        let mut i = 0;
        while i < ios.len() {
            // Refused, empty, or too large to share the pages: alone.
            if results[i].is_err() || ios[i].is_empty() || ios[i].len() > self.pages * 4096 {
                if results[i].is_ok() && !ios[i].is_empty() {
                    let r = match &mut ios[i] {
                        Io::Read { offset, buf } => self.read(*offset, buf),
                        Io::Write { offset, data } => self.write(*offset, data),
                    };
                    results[i] = match r {
                        Err(
                            e @ (FrontError::Broken(_) | FrontError::Timeout | FrontError::Aborted),
                        ) => return Err(e),
                        r => r,
                    };
                }
                i += 1;
                continue;
            }
            // ios[i..j] together: their pages one after another.
            let (mut reqs, mut owner, mut first_page) = (Vec::new(), Vec::new(), Vec::new());
            let (mut pages, mut ind_used) = (0, 0);
            let mut j = i;
            while j < ios.len() {
                let len = ios[j].len();
                let n = len.div_ceil(4096);
                let (nreq, _) = self.plan(n, ind_used);
                let fits = results[j].is_ok()
                    && len > 0
                    && pages + n <= self.pages
                    && reqs.len() + nreq <= self.slots;
                if !fits {
                    break;
                }
                let op = match ios[j] {
                    Io::Read { .. } => blkif::BLKIF_OP_READ,
                    Io::Write { .. } => blkif::BLKIF_OP_WRITE,
                };
                let before = reqs.len();
                self.requests(
                    op,
                    ios[j].offset() / 512,
                    len,
                    pages,
                    &mut ind_used,
                    &mut reqs,
                )?;
                owner.extend(std::iter::repeat_n(j, reqs.len() - before));
                first_page.push(pages);
                pages += n;
                j += 1;
            }
            {
                let mem = self.data_area()?;
                for (k, io) in ios[i..j].iter().enumerate() {
                    if let Io::Write { data, .. } = io {
                        mem.write_bytes(first_page[k] * 4096, data)
                            .map_err(|e| broken(&e))?;
                    }
                }
            }
            let statuses = self.exchange(&reqs)?;
            for (k, &st) in statuses.iter().enumerate() {
                if st != blkif::BLKIF_RSP_OKAY && results[owner[k]].is_ok() {
                    results[owner[k]] = Err(FrontError::Status(st));
                }
            }
            let mem = self.data_area()?;
            for (k, io) in ios[i..j].iter_mut().enumerate() {
                if let (Io::Read { buf, .. }, Ok(())) = (io, &results[i + k]) {
                    mem.read_bytes(first_page[k] * 4096, buf)
                        .map_err(|e| broken(&e))?;
                }
            }
            i = j;
        }
        Ok(results)
    }

    fn discard_inner(&mut self, sector: u64, count: u64) -> Result<(), FrontError> {
        let d = blkif::BlkifRequestDiscard {
            operation: blkif::BLKIF_OP_DISCARD,
            flag: 0,
            handle: 0,
            _pad0: [0; 4],
            id: self.next_id,
            sector_number: sector,
            nr_sectors: count,
        };
        self.next_id += 1;
        // The same slot, in the discard layout.
        let mut req = BlkifRequest::zeroed();
        req.as_bytes_mut()[..d.as_bytes().len()].copy_from_slice(d.as_bytes());
        first_error(&self.exchange(&[req])?)
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), FrontError> {
        let end = offset.checked_add(len as u64).ok_or(FrontError::Range)?;
        let size = self.sectors.checked_mul(512).ok_or(FrontError::Range)?;
        if offset % 512 != 0 || len % 512 != 0 || end > size {
            return Err(FrontError::Range);
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` (both 512-byte aligned).
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FrontError> {
        self.check(offset, buf.len())?;
        let chunk_len = self.pages * 4096;
        for (i, chunk) in buf.chunks_mut(chunk_len).enumerate() {
            let at = offset + (i * chunk_len) as u64;
            let len = chunk.len();
            self.one(blkif::BLKIF_OP_READ, at / 512, len, None, Some(chunk))?;
        }
        Ok(())
    }

    /// Writes `buf` at `offset` (both 512-byte aligned).
    pub fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), FrontError> {
        self.check(offset, buf.len())?;
        let chunk_len = self.pages * 4096;
        for (i, chunk) in buf.chunks(chunk_len).enumerate() {
            let at = offset + (i * chunk_len) as u64;
            self.one(
                blkif::BLKIF_OP_WRITE,
                at / 512,
                chunk.len(),
                Some(chunk),
                None,
            )?;
        }
        Ok(())
    }

    /// Whether the backend offered `feature-discard` (as [`set_discard`]
    /// was told).
    ///
    /// [`set_discard`]: Self::set_discard
    pub fn can_discard(&self) -> bool {
        self.discard
    }

    /// The backend offers `feature-discard`.
    pub fn set_discard(&mut self, on: bool) {
        self.discard = on;
    }

    /// The backend offers `feature-max-indirect-segments` = `max`: a
    /// transfer of more than 11 pages goes as indirect requests of up to
    /// `max` (at most 256) segments, their lists in pages granted to
    /// `backend`.
    pub fn set_indirect(&mut self, backend: DomId, max: u16) -> Result<(), FrontError> {
        let max = usize::from(max).min(256);
        if max <= SEGS || self.indirect.is_some() {
            return Ok(());
        }
        let b = |e: platform::Error| FrontError::Broken(e.to_string());
        let pfn = self.dom.alloc_pages(INDIRECT_PAGES as u64).map_err(b)?;
        let mut grants = Vec::with_capacity(INDIRECT_PAGES);
        for i in 0..INDIRECT_PAGES as u64 {
            // Writable, as Linux's blkfront grants them: a backend using
            // persistent grants maps every grant writable.
            match self.dom.grant_access(backend, Pfn(pfn.0 + i), false) {
                Ok(g) => grants.push(g),
                Err(e) => {
                    for g in grants {
                        let _ = self.dom.end_access(g);
                    }
                    let _ = self.dom.free_pages(pfn, INDIRECT_PAGES as u64);
                    return Err(b(e));
                }
            }
        }
        self.indirect = Some(Indirect {
            pfn,
            grants,
            max_segments: max,
        });
        Ok(())
    }

    /// Requests a transfer of `pages` pages takes, with `ind_used`
    /// indirect pages taken already in this exchange: indirect ones if it
    /// needs more than one direct request and indirect pages are left.
    fn plan(&self, pages: usize, ind_used: usize) -> (usize, bool) {
        if let Some(ind) = &self.indirect {
            let n = pages.div_ceil(ind.max_segments);
            if pages > SEGS && ind_used + n <= INDIRECT_PAGES {
                return (n, true);
            }
        }
        (pages.div_ceil(SEGS).max(1), false)
    }

    /// Gives `len` bytes at `offset` back (`BLKIF_OP_DISCARD`, both
    /// 512-byte aligned); their contents become unspecified.
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), FrontError> {
        if !self.discard {
            return Err(FrontError::Status(blkif::BLKIF_RSP_EOPNOTSUPP));
        }
        let len = usize::try_from(len).map_err(|_| FrontError::Range)?;
        self.check(offset, len)?;
        // In pieces a backend finishes well within the timeout even where
        // it has to write zeroes.
        for (i, chunk) in (0..len).step_by(DISCARD_CHUNK).enumerate() {
            let n = (len - chunk).min(DISCARD_CHUNK);
            let at = offset + (i * DISCARD_CHUNK) as u64;
            self.one(blkif::BLKIF_OP_DISCARD, at / 512, n, None, None)?;
        }
        Ok(())
    }

    /// Everything written is on stable storage (`FLUSH_DISKCACHE`).
    pub fn flush(&mut self) -> Result<(), FrontError> {
        self.one(blkif::BLKIF_OP_FLUSH_DISKCACHE, 0, 0, None, None)
    }

    /// Ends the data grants and frees the pages. A grant the backend
    /// still has mapped cannot end: then nothing is freed and the
    /// frontend comes back, to be released again later.
    pub fn release(mut self) -> Option<Self> {
        let dom = &self.dom;
        self.grants.retain(|g| dom.end_access(*g).is_err());
        if let Some(ind) = &mut self.indirect {
            ind.grants.retain(|g| dom.end_access(*g).is_err());
        }
        if !self.grants.is_empty() || self.indirect.as_ref().is_some_and(|i| !i.grants.is_empty()) {
            return Some(self);
        }
        let _ = self.dom.free_pages(self.data, self.pages as u64);
        if let Some(ind) = &self.indirect {
            let _ = self.dom.free_pages(ind.pfn, INDIRECT_PAGES as u64);
        }
        None
    }
}
