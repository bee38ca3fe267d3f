//! Property tests: both ring kinds against a simple queue model, from any
//! starting index (wrap-around at `u32::MAX` included) and every ring order.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use abi::ring::{ring_bytes, SRING_REQ_EVENT, SRING_REQ_PROD, SRING_RSP_EVENT, SRING_RSP_PROD};
use abi::{OwnedMem, RingIdx, VolatileSlice};
use proptest::prelude::*;
use ring::{BackRing, ByteConsumer, ByteProducer, ByteRingLayout, FrontRing, RingError};

#[derive(Clone, Debug)]
enum Op {
    Put(u8),
    PushRequests,
    Take(u8),
    Respond(u8),
    PushResponses,
    TakeResponses(u8),
    FinalCheckRequests,
    FinalCheckResponses,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1..40u8).prop_map(Op::Put),
        Just(Op::PushRequests),
        (1..40u8).prop_map(Op::Take),
        (1..40u8).prop_map(Op::Respond),
        Just(Op::PushResponses),
        (1..40u8).prop_map(Op::TakeResponses),
        Just(Op::FinalCheckRequests),
        Just(Op::FinalCheckResponses),
    ]
}

fn start_index() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), (0..64u32).prop_map(|d| u32::MAX - d), any::<u32>()]
}

/// The model: a queue per stage a request goes through, and the two event
/// thresholds the ends have asked for.
#[derive(Default)]
struct Model {
    put: VecDeque<u64>,
    pushed: VecDeque<u64>,
    taken: VecDeque<u64>,
    answered: VecDeque<u32>,
    answers_pushed: VecDeque<u32>,
    req_prod: u32,
    rsp_prod: u32,
    req_event: u32,
    rsp_event: u32,
    back_asleep: bool,
    front_asleep: bool,
    next: u64,
}

impl Model {
    fn outstanding(&self) -> usize {
        self.put.len()
            + self.pushed.len()
            + self.taken.len()
            + self.answered.len()
            + self.answers_pushed.len()
    }
}

fn answer(req: u64) -> u32 {
    (req as u32) ^ 0x5a5a_0000
}

/// Writes a shared header as if both ends had exchanged everything up to
/// `start`, the way a ring looks after `start` requests.
fn header_at(mem: VolatileSlice<'_>, start: u32) {
    mem.store_u32(SRING_REQ_PROD, start, Ordering::Relaxed)
        .unwrap();
    mem.store_u32(SRING_RSP_PROD, start, Ordering::Relaxed)
        .unwrap();
    mem.store_u32(SRING_REQ_EVENT, start.wrapping_add(1), Ordering::Relaxed)
        .unwrap();
    mem.store_u32(SRING_RSP_EVENT, start.wrapping_add(1), Ordering::Relaxed)
        .unwrap();
}

fn notify_expected(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

fn run(bytes: usize, start: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let mem = OwnedMem::new(bytes);
    header_at(mem.as_volatile(), start);
    let mut front = FrontRing::<_, u64, u32>::attach(mem.as_volatile(), RingIdx(start)).unwrap();
    let mut back = BackRing::<_, u64, u32>::attach(mem.as_volatile(), RingIdx(start)).unwrap();
    let size = front.size() as usize;
    prop_assert_eq!(size, abi::ring::ring_size(bytes, 8) as usize);
    let mut m = Model {
        req_prod: start,
        rsp_prod: start,
        req_event: start.wrapping_add(1),
        rsp_event: start.wrapping_add(1),
        ..Model::default()
    };

    for op in ops {
        match *op {
            Op::Put(n) => {
                for _ in 0..n {
                    let r = front.put_request(&m.next);
                    if m.outstanding() == size {
                        prop_assert_eq!(r, Err(RingError::Full));
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        m.put.push_back(m.next);
                        m.next += 1;
                    }
                }
            }
            Op::PushRequests => {
                let old = m.req_prod;
                m.req_prod = old.wrapping_add(m.put.len() as u32);
                let notify = front.push_requests().unwrap();
                prop_assert_eq!(notify, notify_expected(old, m.req_prod, m.req_event));
                if m.back_asleep && !m.put.is_empty() {
                    prop_assert!(notify, "a sleeping back end was not woken");
                    m.back_asleep = false;
                }
                m.pushed.extend(m.put.drain(..));
            }
            Op::Take(n) => {
                for _ in 0..n {
                    let got = back.take_request().unwrap();
                    prop_assert_eq!(got, m.pushed.pop_front());
                    if let Some(v) = got {
                        m.taken.push_back(v);
                    }
                }
            }
            Op::Respond(n) => {
                for _ in 0..n {
                    match m.taken.pop_front() {
                        Some(v) => {
                            back.put_response(&answer(v)).unwrap();
                            m.answered.push_back(answer(v));
                        }
                        None => {
                            prop_assert_eq!(
                                back.put_response(&0),
                                Err(RingError::NoRequestInFlight)
                            );
                        }
                    }
                }
            }
            Op::PushResponses => {
                let old = m.rsp_prod;
                m.rsp_prod = old.wrapping_add(m.answered.len() as u32);
                let notify = back.push_responses().unwrap();
                prop_assert_eq!(notify, notify_expected(old, m.rsp_prod, m.rsp_event));
                if m.front_asleep && !m.answered.is_empty() {
                    prop_assert!(notify, "a sleeping front end was not woken");
                    m.front_asleep = false;
                }
                m.answers_pushed.extend(m.answered.drain(..));
            }
            Op::TakeResponses(n) => {
                for _ in 0..n {
                    let got = front.take_response().unwrap();
                    prop_assert_eq!(got, m.answers_pushed.pop_front());
                }
            }
            Op::FinalCheckRequests => {
                let more = back.final_check_for_requests().unwrap();
                prop_assert_eq!(more, !m.pushed.is_empty());
                if !more {
                    m.req_event = back.req_cons().0.wrapping_add(1);
                    m.back_asleep = true;
                }
            }
            Op::FinalCheckResponses => {
                let more = front.final_check_for_responses().unwrap();
                prop_assert_eq!(more, !m.answers_pushed.is_empty());
                if !more {
                    m.rsp_event = front.rsp_cons().0.wrapping_add(1);
                    m.front_asleep = true;
                }
            }
        }
        prop_assert_eq!(front.free_requests() as usize, size - m.outstanding());
        prop_assert_eq!(back.in_flight() as usize, m.taken.len());
        let shared = mem.as_volatile();
        prop_assert_eq!(
            shared.load_u32(SRING_REQ_PROD, Ordering::Relaxed).unwrap(),
            m.req_prod
        );
        prop_assert_eq!(
            shared.load_u32(SRING_RSP_PROD, Ordering::Relaxed).unwrap(),
            m.rsp_prod
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn request_ring_behaves_like_its_queue_model(
        order in 0..=abi::ring::XENBUS_MAX_RING_ORDER,
        start in start_index(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        run(ring_bytes(order), start, &ops)?;
    }

    #[test]
    fn small_request_ring_wraps_its_slots_many_times(
        start in start_index(),
        ops in prop::collection::vec(op(), 100..400),
    ) {
        // 64 + 4 * 8 bytes: a ring of four slots, so every few operations
        // reuse a slot and the ring fills and drains often.
        run(96, start, &ops)?;
    }
}

#[test]
fn blkif_rings_of_every_order_have_the_c_size_and_fill_completely() {
    use abi::blkif::{BlkifRequest, BlkifResponse};
    for order in 0..=abi::ring::XENBUS_MAX_RING_ORDER {
        let mem = OwnedMem::new(ring_bytes(order));
        let mut front =
            FrontRing::<_, BlkifRequest, BlkifResponse>::init(mem.as_volatile()).unwrap();
        let mut back = BackRing::<_, BlkifRequest, BlkifResponse>::init(mem.as_volatile()).unwrap();
        assert_eq!(front.size(), 32 << order, "order {order}");
        let mut req: BlkifRequest = abi::Pod::zeroed();
        for id in 0..u64::from(front.size()) {
            req.id = id;
            front.put_request(&req).unwrap();
        }
        assert_eq!(front.put_request(&req), Err(RingError::Full));
        front.push_requests().unwrap();
        for id in 0..u64::from(back.size()) {
            assert_eq!(back.take_request().unwrap().unwrap().id, id);
        }
        assert_eq!(back.take_request().unwrap(), None);
    }
}

// --- byte rings ---

#[derive(Clone, Debug)]
enum ByteOp {
    Write(Vec<u8>),
    Peek(u16),
    Read(u16),
}

fn byte_op() -> impl Strategy<Value = ByteOp> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1500).prop_map(ByteOp::Write),
        (0..1500u16).prop_map(ByteOp::Peek),
        (0..1500u16).prop_map(ByteOp::Read),
    ]
}

fn layout() -> impl Strategy<Value = ByteRingLayout> {
    prop_oneof![
        Just(ByteRingLayout::XENSTORE_REQ),
        Just(ByteRingLayout::XENSTORE_RSP),
        Just(ByteRingLayout::CONSOLE_IN),
        Just(ByteRingLayout::CONSOLE_OUT),
    ]
}

proptest! {
    #[test]
    fn byte_rings_behave_like_a_byte_queue(
        ring in layout(),
        start in start_index(),
        ops in prop::collection::vec(byte_op(), 1..60),
    ) {
        let page = OwnedMem::new(4096);
        page.as_volatile().store_u32(ring.cons, start, Ordering::Relaxed).unwrap();
        page.as_volatile().store_u32(ring.prod, start, Ordering::Relaxed).unwrap();
        let w = ByteProducer::new(page.as_volatile(), ring).unwrap();
        let r = ByteConsumer::new(page.as_volatile(), ring).unwrap();
        let mut model: VecDeque<u8> = VecDeque::new();
        for op in ops {
            match op {
                ByteOp::Write(data) => {
                    let fits = data.len().min(ring.size as usize - model.len());
                    prop_assert_eq!(w.write(&data).unwrap(), fits);
                    model.extend(&data[..fits]);
                }
                ByteOp::Peek(n) | ByteOp::Read(n) => {
                    let mut buf = vec![0; n as usize];
                    let consume = matches!(op, ByteOp::Read(_));
                    let got = if consume { r.read(&mut buf) } else { r.peek(&mut buf) }.unwrap();
                    let want = (n as usize).min(model.len());
                    prop_assert_eq!(got, want);
                    let expected: Vec<u8> = model.iter().take(want).copied().collect();
                    prop_assert_eq!(&buf[..got], &expected[..]);
                    if consume {
                        model.drain(..want);
                    }
                }
            }
            prop_assert_eq!(r.available().unwrap() as usize, model.len());
            prop_assert_eq!(w.space().unwrap() as usize, ring.size as usize - model.len());
        }
    }
}
