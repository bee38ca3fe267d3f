//! blkfront's data path, in the guest: requests into the shared ring, the
//! data in pages granted to the backend, up to 8 requests in flight for
//! one transfer (one caller at a time per device).
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

/// Segments per request (a direct request).
const SEGS: usize = blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST;
/// Requests in flight at once (a 1 MiB transfer is 24 requests: 3 batches).
const BATCH: usize = 8;
/// Data pages: one request's worth per request in flight.
const PAGES: usize = SEGS * BATCH;

/// A connected device's frontend end.
pub struct BlkFront<P> {
    dom: P,
    ring_pfn: Pfn,
    port: Port,
    /// Pages for the data, granted to the backend for the device's life.
    data: Pfn,
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
}

impl<P: OwnMemory + GrantTable + EventChannels> BlkFront<P> {
    /// Takes over the ring in `ring_pfn` (initialised, granted) and `port`
    /// for a disk of `sectors`; grants its data pages to `backend`.
    pub fn new(
        dom: P,
        ring_pfn: Pfn,
        port: Port,
        backend: DomId,
        sectors: u64,
    ) -> Result<Self, FrontError> {
        let b = |e: platform::Error| FrontError::Broken(e.to_string());
        // The ring starts empty (SHARED_RING_INIT: both event indices 1).
        {
            let page = dom.pages(ring_pfn, 1).map_err(b)?;
            FrontRing::<_, Slot64, BlkifResponse>::init(page)
                .map_err(|e| FrontError::Broken(e.to_string()))?;
        }
        let data = dom.alloc_pages(PAGES as u64).map_err(b)?;
        let mut grants = Vec::with_capacity(PAGES);
        for i in 0..PAGES as u64 {
            match dom.grant_access(backend, Pfn(data.0 + i), false) {
                Ok(g) => grants.push(g),
                Err(e) => {
                    for g in grants {
                        let _ = dom.end_access(g);
                    }
                    let _ = dom.free_pages(data, PAGES as u64);
                    return Err(b(e));
                }
            }
        }
        Ok(BlkFront {
            dom,
            ring_pfn,
            port,
            data,
            grants,
            sectors,
            next_id: 1,
            next_idx: 0,
            timeout: Duration::from_secs(30),
            failed: false,
            abort: Arc::new(AtomicBool::new(false)),
            discard: false,
        })
    }

    /// A flag that, once set, makes a transfer waiting for the backend
    /// return [`FrontError::Aborted`] (within 100 ms) and this frontend
    /// send nothing more: for replacing the connection while a transfer is
    /// in flight.
    pub fn aborter(&self) -> Arc<AtomicBool> {
        self.abort.clone()
    }

    /// Whether [`aborter`](Self::aborter)'s flag is set.
    pub fn is_aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
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
        // The data area mirrors the buffer: request k's pages are
        // `k * SEGS ..`, holding bytes `k * SEGS * 4096 ..` of it.
        let mut reqs = Vec::new();
        let chunks = len.div_ceil(SEGS * 4096).max(1);
        for k in 0..chunks {
            let start = k * SEGS * 4096;
            let clen = (len - start.min(len)).min(SEGS * 4096);
            let pages = clen.div_ceil(4096);
            let mut req = BlkifRequest::zeroed();
            req.operation = op;
            req.id = self.next_id;
            self.next_id += 1;
            req.sector_number = sector + (start / 512) as u64;
            req.nr_segments = pages as u8;
            for p in 0..pages {
                let bytes = (clen - p * 4096).min(4096);
                req.seg[p] = BlkifRequestSegment {
                    gref: self.grants[k * SEGS + p].0,
                    first_sect: 0,
                    last_sect: (bytes / 512 - 1) as u8,
                    _pad0: [0; 2],
                };
            }
            reqs.push(req);
        }
        if let Some(d) = data {
            let mem = self
                .dom
                .pages(self.data, PAGES as u64)
                .map_err(|e| broken(&e))?;
            mem.write_bytes(0, d).map_err(|e| broken(&e))?;
        }
        self.exchange(&reqs)?;
        if let Some(o) = out {
            let mem = self
                .dom
                .pages(self.data, PAGES as u64)
                .map_err(|e| broken(&e))?;
            mem.read_bytes(0, o).map_err(|e| broken(&e))?;
        }
        Ok(())
    }

    /// Sends `reqs` (at most a ring's worth) and waits for all their
    /// responses, failed or not, before the data pages are used again.
    fn exchange(&mut self, reqs: &[BlkifRequest]) -> Result<(), FrontError> {
        let broken = |e: &dyn std::fmt::Display| FrontError::Broken(e.to_string());
        let dom = &self.dom;
        // Between batches everything is exchanged up to `next_idx`.
        let page = dom.pages(self.ring_pfn, 1).map_err(|e| broken(&e))?;
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
        let mut status = blkif::BLKIF_RSP_OKAY;
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
                    if r.status != blkif::BLKIF_RSP_OKAY && status == blkif::BLKIF_RSP_OKAY {
                        status = r.status;
                    }
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
        if status != blkif::BLKIF_RSP_OKAY {
            return Err(FrontError::Status(status));
        }
        Ok(())
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
        self.exchange(&[req])
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
        for (i, chunk) in buf.chunks_mut(PAGES * 4096).enumerate() {
            let at = offset + (i * PAGES * 4096) as u64;
            let len = chunk.len();
            self.one(blkif::BLKIF_OP_READ, at / 512, len, None, Some(chunk))?;
        }
        Ok(())
    }

    /// Writes `buf` at `offset` (both 512-byte aligned).
    pub fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), FrontError> {
        self.check(offset, buf.len())?;
        for (i, chunk) in buf.chunks(PAGES * 4096).enumerate() {
            let at = offset + (i * PAGES * 4096) as u64;
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

    /// Gives `len` bytes at `offset` back (`BLKIF_OP_DISCARD`, both
    /// 512-byte aligned); their contents become unspecified.
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), FrontError> {
        if !self.discard {
            return Err(FrontError::Status(blkif::BLKIF_RSP_EOPNOTSUPP));
        }
        let len = usize::try_from(len).map_err(|_| FrontError::Range)?;
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.one(blkif::BLKIF_OP_DISCARD, offset / 512, len, None, None)
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
        if !self.grants.is_empty() {
            return Some(self);
        }
        let _ = self.dom.free_pages(self.data, PAGES as u64);
        None
    }
}
