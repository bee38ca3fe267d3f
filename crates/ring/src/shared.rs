//! The request/response ring of `xen/io/ring.h`.
//!
//! The shared page holds two producer indices (`req_prod`, `rsp_prod`), two
//! event thresholds (`req_event`, `rsp_event`) and the slots. Each direction
//! is the same protocol with the roles swapped, so it is written once
//! ([`Lane`]) and used by both ends: the front end produces requests and
//! consumes responses, the back end the reverse. Each end also keeps its
//! private indices (`req_prod_pvt`/`rsp_cons`, `rsp_prod_pvt`/`req_cons`),
//! which the peer never sees and cannot change.

use core::marker::PhantomData;
use core::mem::size_of;
use core::sync::atomic::Ordering;

use abi::pod::Pod;
use abi::ring::{
    entry_size, ring_size, SRING_HEADER_SIZE, SRING_PVT, SRING_REQ_EVENT, SRING_REQ_PROD,
    SRING_RSP_EVENT, SRING_RSP_PROD,
};
use abi::RingIdx;

use crate::{RingError, RingMem};

/// One direction of the ring: where its producer index and its event
/// threshold live.
#[derive(Clone, Copy)]
struct Lane {
    prod: usize,
    event: usize,
    name: &'static str,
}

const REQUESTS: Lane = Lane {
    prod: SRING_REQ_PROD,
    event: SRING_REQ_EVENT,
    name: "req_prod",
};
const RESPONSES: Lane = Lane {
    prod: SRING_RSP_PROD,
    event: SRING_RSP_EVENT,
    name: "rsp_prod",
};

/// The shared part: the memory and the slot geometry.
struct Sring<M> {
    mem: M,
    size: u32,
    entry: usize,
}

impl<M: RingMem> Sring<M> {
    fn new<Req: Pod, Rsp: Pod>(mem: M) -> Result<Self, RingError> {
        let entry = entry_size::<Req, Rsp>();
        let size = ring_size(mem.len(), entry);
        if size == 0 {
            return Err(RingError::TooSmall { len: mem.len() });
        }
        Ok(Sring { mem, size, entry })
    }

    /// `SHARED_RING_INIT`: indices zero, events one, private area and
    /// padding zeroed. Slots are left as they are.
    fn init(&self) -> Result<(), RingError> {
        self.mem
            .write_from(SRING_PVT, &[0; SRING_HEADER_SIZE - SRING_PVT])?;
        self.mem.store_u32(SRING_REQ_EVENT, 1, Ordering::Relaxed)?;
        self.mem.store_u32(SRING_RSP_EVENT, 1, Ordering::Relaxed)?;
        self.mem.store_u32(SRING_RSP_PROD, 0, Ordering::Relaxed)?;
        self.mem.store_u32(SRING_REQ_PROD, 0, Ordering::Release)?;
        Ok(())
    }

    fn slot(&self, idx: RingIdx) -> usize {
        SRING_HEADER_SIZE + (idx.0 & (self.size - 1)) as usize * self.entry
    }

    /// `RING_COPY_REQUEST`/`RING_COPY_RESPONSE`: the one read of a slot.
    fn read_slot<T: Pod>(&self, idx: RingIdx) -> Result<T, RingError> {
        let mut v = T::zeroed();
        self.mem.read_into(self.slot(idx), v.as_bytes_mut())?;
        Ok(v)
    }

    fn write_slot<T: Pod>(&self, idx: RingIdx, v: &T) -> Result<(), RingError> {
        debug_assert!(size_of::<T>() <= self.entry);
        self.mem.write_from(self.slot(idx), v.as_bytes())?;
        Ok(())
    }

    /// The peer's producer index of `lane` (`xen_rmb` after it: acquire).
    fn peer_prod(&self, lane: Lane) -> Result<RingIdx, RingError> {
        Ok(RingIdx(self.mem.load_u32(lane.prod, Ordering::Acquire)?))
    }

    /// `RING_PUSH_*_AND_CHECK_NOTIFY`: publish `new` as the producer index
    /// of `lane` and say whether the consumer asked to be woken for any of
    /// the entries between the old index and `new`.
    fn push(&self, lane: Lane, new: RingIdx) -> Result<bool, RingError> {
        let old = RingIdx(self.mem.load_u32(lane.prod, Ordering::Relaxed)?);
        // xen_wmb(): the entries are visible before the index.
        self.mem.store_u32(lane.prod, new.0, Ordering::Release)?;
        // xen_mb(): the index is visible before we look at the threshold.
        self.mem.fence();
        let event = RingIdx(self.mem.load_u32(lane.event, Ordering::Relaxed)?);
        Ok(new.distance_from(event) < new.distance_from(old))
    }

    /// The write half of `RING_FINAL_CHECK_FOR_*`: ask to be woken when the
    /// entry at `cons` arrives, then fence so the caller's recheck of the
    /// producer index cannot be ordered before the request.
    fn arm_event(&self, lane: Lane, cons: RingIdx) -> Result<(), RingError> {
        self.mem
            .store_u32(lane.event, cons.plus(1).0, Ordering::Relaxed)?;
        self.mem.fence();
        Ok(())
    }

    fn broken(&self, lane: Lane, value: RingIdx, own: RingIdx) -> RingError {
        RingError::PeerBroken {
            what: lane.name,
            value: value.0,
            own: own.0,
            size: self.size,
        }
    }
}

/// The front end of a ring: produces `Req`, consumes `Rsp`.
pub struct FrontRing<M, Req, Rsp> {
    sring: Sring<M>,
    req_prod_pvt: RingIdx,
    rsp_cons: RingIdx,
    /// The last `rsp_prod` read and validated.
    rsp_prod_seen: RingIdx,
    _types: PhantomData<fn(Req) -> Rsp>,
}

impl<M: RingMem, Req: Pod, Rsp: Pod> FrontRing<M, Req, Rsp> {
    /// `XEN_FRONT_RING_INIT`: initialises the shared header and attaches at
    /// index 0. The memory's whole length is the ring.
    pub fn init(mem: M) -> Result<Self, RingError> {
        let sring = Sring::new::<Req, Rsp>(mem)?;
        sring.init()?;
        Ok(Self::with(sring, RingIdx(0)))
    }

    /// `FRONT_RING_ATTACH`: attaches to an already initialised ring whose
    /// requests and responses have all been exchanged up to `start`.
    pub fn attach(mem: M, start: RingIdx) -> Result<Self, RingError> {
        Ok(Self::with(Sring::new::<Req, Rsp>(mem)?, start))
    }

    fn with(sring: Sring<M>, start: RingIdx) -> Self {
        FrontRing {
            sring,
            req_prod_pvt: start,
            rsp_cons: start,
            rsp_prod_seen: start,
            _types: PhantomData,
        }
    }

    /// Entries in the ring (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.sring.size
    }

    /// The memory the ring lives in.
    pub fn memory(&self) -> &M {
        &self.sring.mem
    }

    /// Our private producer index (`req_prod_pvt`).
    pub fn req_prod_pvt(&self) -> RingIdx {
        self.req_prod_pvt
    }

    /// Our consumer index of responses (`rsp_cons`).
    pub fn rsp_cons(&self) -> RingIdx {
        self.rsp_cons
    }

    /// Slots free for requests (`RING_FREE_REQUESTS`).
    pub fn free_requests(&self) -> u32 {
        self.size() - self.req_prod_pvt.distance_from(self.rsp_cons)
    }

    /// Whether no slot is free (`RING_FULL`).
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Writes `req` into the next free slot, not yet visible to the back end.
    pub fn put_request(&mut self, req: &Req) -> Result<(), RingError> {
        if self.is_full() {
            return Err(RingError::Full);
        }
        self.sring.write_slot(self.req_prod_pvt, req)?;
        self.req_prod_pvt = self.req_prod_pvt.plus(1);
        Ok(())
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: makes the requests put so far
    /// visible; returns whether the back end must be notified.
    pub fn push_requests(&mut self) -> Result<bool, RingError> {
        self.sring.push(REQUESTS, self.req_prod_pvt)
    }

    /// Responses waiting (`RING_HAS_UNCONSUMED_RESPONSES`), after checking
    /// that the back end did not answer requests we never made.
    pub fn unconsumed_responses(&mut self) -> Result<u32, RingError> {
        let prod = self.sring.peer_prod(RESPONSES)?;
        // A response exists only for a request put before it:
        // rsp_cons <= rsp_prod <= req_prod_pvt (stricter than
        // RING_RESPONSE_PROD_OVERFLOW, which only bounds it by the size).
        let waiting = prod.distance_from(self.rsp_cons);
        if waiting > self.req_prod_pvt.distance_from(self.rsp_cons) {
            return Err(self.sring.broken(RESPONSES, prod, self.rsp_cons));
        }
        self.rsp_prod_seen = prod;
        Ok(waiting)
    }

    /// Copies out the next response, if there is one, and frees its slot.
    pub fn take_response(&mut self) -> Result<Option<Rsp>, RingError> {
        if self.rsp_cons == self.rsp_prod_seen && self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let rsp = self.sring.read_slot(self.rsp_cons)?;
        self.rsp_cons = self.rsp_cons.plus(1);
        Ok(Some(rsp))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: whether responses are waiting; if
    /// none are, asks to be notified of the next one first, so that no
    /// response can arrive unnoticed between this check and sleeping.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        self.sring.arm_event(RESPONSES, self.rsp_cons)?;
        Ok(self.unconsumed_responses()? > 0)
    }
}

/// The back end of a ring: consumes `Req`, produces `Rsp`.
pub struct BackRing<M, Req, Rsp> {
    sring: Sring<M>,
    rsp_prod_pvt: RingIdx,
    req_cons: RingIdx,
    /// The last `req_prod` read and validated.
    req_prod_seen: RingIdx,
    _types: PhantomData<fn(Req) -> Rsp>,
}

impl<M: RingMem, Req: Pod, Rsp: Pod> BackRing<M, Req, Rsp> {
    /// `BACK_RING_INIT`: attaches at index 0 to a ring the front end has
    /// initialised.
    pub fn init(mem: M) -> Result<Self, RingError> {
        Self::attach(mem, RingIdx(0))
    }

    /// `BACK_RING_ATTACH`: attaches to a ring whose requests and responses
    /// have all been exchanged up to `start` (a backend reconnecting).
    pub fn attach(mem: M, start: RingIdx) -> Result<Self, RingError> {
        Ok(BackRing {
            sring: Sring::new::<Req, Rsp>(mem)?,
            rsp_prod_pvt: start,
            req_cons: start,
            req_prod_seen: start,
            _types: PhantomData,
        })
    }

    /// Entries in the ring (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.sring.size
    }

    /// The memory the ring lives in.
    pub fn memory(&self) -> &M {
        &self.sring.mem
    }

    /// Our consumer index of requests (`req_cons`).
    pub fn req_cons(&self) -> RingIdx {
        self.req_cons
    }

    /// Our private producer index of responses (`rsp_prod_pvt`).
    pub fn rsp_prod_pvt(&self) -> RingIdx {
        self.rsp_prod_pvt
    }

    /// Requests consumed and not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.req_cons.distance_from(self.rsp_prod_pvt)
    }

    /// Requests waiting (`RING_HAS_UNCONSUMED_REQUESTS`), after checking
    /// `RING_REQUEST_PROD_OVERFLOW` and that `req_prod` did not go back.
    pub fn unconsumed_requests(&mut self) -> Result<u32, RingError> {
        let prod = self.sring.peer_prod(REQUESTS)?;
        // Relative to the oldest slot still ours, the front end may have
        // produced at most `size` requests, and never fewer than we took.
        let produced = prod.distance_from(self.rsp_prod_pvt);
        let taken = self.in_flight();
        if produced > self.size() || produced < taken {
            return Err(self.sring.broken(REQUESTS, prod, self.rsp_prod_pvt));
        }
        self.req_prod_seen = prod;
        Ok(produced - taken)
    }

    /// Copies out the next request, if there is one. The slot stays ours
    /// until the response is put.
    pub fn take_request(&mut self) -> Result<Option<Req>, RingError> {
        if self.req_cons == self.req_prod_seen && self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        let req = self.sring.read_slot(self.req_cons)?;
        self.req_cons = self.req_cons.plus(1);
        Ok(Some(req))
    }

    /// Writes `rsp` into the slot of the oldest unanswered request, not yet
    /// visible to the front end.
    pub fn put_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        if self.in_flight() == 0 {
            return Err(RingError::NoRequestInFlight);
        }
        self.sring.write_slot(self.rsp_prod_pvt, rsp)?;
        self.rsp_prod_pvt = self.rsp_prod_pvt.plus(1);
        Ok(())
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: makes the responses put so
    /// far visible; returns whether the front end must be notified.
    pub fn push_responses(&mut self) -> Result<bool, RingError> {
        self.sring.push(RESPONSES, self.rsp_prod_pvt)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: whether requests are waiting; if
    /// none are, asks to be notified of the next one first.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        self.sring.arm_event(REQUESTS, self.req_cons)?;
        Ok(self.unconsumed_requests()? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::OwnedMem;

    type Front<'a> = FrontRing<abi::VolatileSlice<'a>, u64, u32>;
    type Back<'a> = BackRing<abi::VolatileSlice<'a>, u64, u32>;

    #[test]
    fn a_request_goes_round_trip() {
        let mem = OwnedMem::new(4096);
        let mut front = Front::init(mem.as_volatile()).unwrap();
        let mut back = Back::init(mem.as_volatile()).unwrap();
        assert_eq!(front.size(), 256);
        front.put_request(&7).unwrap();
        assert!(front.push_requests().unwrap(), "req_event starts at 1");
        assert_eq!(back.take_request().unwrap(), Some(7));
        assert_eq!(back.take_request().unwrap(), None);
        back.put_response(&8).unwrap();
        assert!(back.push_responses().unwrap());
        assert_eq!(front.take_response().unwrap(), Some(8));
        assert_eq!(front.free_requests(), 256);
    }

    #[test]
    fn full_ring_refuses_requests() {
        let mem = OwnedMem::new(64 + 4 * 8);
        let mut front = Front::init(mem.as_volatile()).unwrap();
        assert_eq!(front.size(), 4);
        for i in 0..4 {
            front.put_request(&i).unwrap();
        }
        assert_eq!(front.put_request(&9), Err(RingError::Full));
    }

    #[test]
    fn producer_index_beyond_the_ring_is_reported() {
        let mem = OwnedMem::new(4096);
        let mut back = Back::init(mem.as_volatile()).unwrap();
        mem.as_volatile()
            .store_u32(SRING_REQ_PROD, 257, Ordering::Relaxed)
            .unwrap();
        let err = back.take_request().unwrap_err();
        assert!(err.is_peer_fault(), "{err}");
    }

    #[test]
    fn responses_to_requests_never_made_are_reported() {
        let mem = OwnedMem::new(4096);
        let mut front = Front::init(mem.as_volatile()).unwrap();
        front.put_request(&1).unwrap();
        front.push_requests().unwrap();
        mem.as_volatile()
            .store_u32(SRING_RSP_PROD, 2, Ordering::Relaxed)
            .unwrap();
        assert!(front.take_response().unwrap_err().is_peer_fault());
    }

    #[test]
    fn answering_without_a_request_is_refused() {
        let mem = OwnedMem::new(4096);
        let mut back = Back::init(mem.as_volatile()).unwrap();
        assert_eq!(back.put_response(&1), Err(RingError::NoRequestInFlight));
    }

    #[test]
    fn memory_smaller_than_one_slot_is_refused() {
        let mem = OwnedMem::new(64);
        assert!(matches!(
            Front::init(mem.as_volatile()),
            Err(RingError::TooSmall { len: 64 })
        ));
    }
}
