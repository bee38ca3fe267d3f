//! A loom model of a front end and a back end on two threads, each sleeping
//! on an event channel after `RING_FINAL_CHECK_FOR_*` and waking only when
//! the other's push says "notify". Loom explores the interleavings and the
//! weak-memory behaviours the orderings allow; a lost notification shows up
//! as a deadlock. A second model removes the full fence (`xen_mb`) and must
//! be caught, so the first one is known to have teeth.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;

use abi::mem::BadAccess;
use loom::sync::atomic::AtomicU32;
use loom::sync::{Condvar, Mutex};
use ring::{BackRing, FrontRing, RingMem};
use std::sync::Arc;

/// Shared memory as loom atomics, one per 32-bit word.
struct LoomMem {
    words: Vec<AtomicU32>,
    with_fence: bool,
}

impl LoomMem {
    fn new(len: usize, with_fence: bool) -> LoomMem {
        LoomMem {
            words: (0..len / 4).map(|_| AtomicU32::new(0)).collect(),
            with_fence,
        }
    }

    fn word(&self, offset: usize) -> Result<&AtomicU32, BadAccess> {
        let bad = BadAccess { offset, len: 4 };
        if offset % 4 != 0 {
            return Err(bad);
        }
        self.words.get(offset / 4).ok_or(bad)
    }
}

impl RingMem for LoomMem {
    fn len(&self) -> usize {
        self.words.len() * 4
    }

    fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, BadAccess> {
        Ok(self.word(offset)?.load(order))
    }

    fn store_u32(&self, offset: usize, value: u32, order: Ordering) -> Result<(), BadAccess> {
        self.word(offset)?.store(value, order);
        Ok(())
    }

    // Slots are only read and written whole words at a time in this model
    // (u32 requests and responses), with relaxed accesses: only the index
    // protocol may order them.
    fn read_into(&self, offset: usize, buf: &mut [u8]) -> Result<(), BadAccess> {
        for (i, chunk) in buf.chunks_mut(4).enumerate() {
            let v = self
                .word(offset + 4 * i)?
                .load(Ordering::Relaxed)
                .to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }

    fn write_from(&self, offset: usize, buf: &[u8]) -> Result<(), BadAccess> {
        for (i, chunk) in buf.chunks(4).enumerate() {
            let mut v = [0; 4];
            v[..chunk.len()].copy_from_slice(chunk);
            self.word(offset + 4 * i)?
                .store(u32::from_le_bytes(v), Ordering::Relaxed);
        }
        Ok(())
    }

    fn fence(&self) {
        if self.with_fence {
            loom::sync::atomic::fence(Ordering::SeqCst);
        }
    }
}

/// An event channel: a pending bit and a wait for it.
#[derive(Default)]
struct Event {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl Event {
    fn notify(&self) {
        *self.pending.lock().unwrap() = true;
        self.cv.notify_one();
    }

    fn wait(&self) {
        let mut p = self.pending.lock().unwrap();
        while !*p {
            p = self.cv.wait(p).unwrap();
        }
        *p = false;
    }
}

const REQUESTS: u32 = 2;

fn model(with_fence: bool) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(move || {
        // Header plus four u32 slots.
        let mem = Arc::new(LoomMem::new(64 + 16, with_fence));
        let to_back = Arc::new(Event::default());
        let to_front = Arc::new(Event::default());
        let mut front = FrontRing::<_, u32, u32>::init(mem.clone()).unwrap();
        let mut back = BackRing::<_, u32, u32>::init(mem.clone()).unwrap();

        let (tb, tf) = (to_back.clone(), to_front.clone());
        let backend = loom::thread::spawn(move || {
            let mut served = 0;
            while served < REQUESTS {
                while let Some(req) = back.take_request().unwrap() {
                    back.put_response(&(req + 100)).unwrap();
                    if back.push_responses().unwrap() {
                        tf.notify();
                    }
                    served += 1;
                }
                if served < REQUESTS && !back.final_check_for_requests().unwrap() {
                    tb.wait();
                }
            }
        });

        for i in 0..REQUESTS {
            front.put_request(&i).unwrap();
            if front.push_requests().unwrap() {
                to_back.notify();
            }
        }
        let mut got = Vec::new();
        while got.len() < REQUESTS as usize {
            while let Some(rsp) = front.take_response().unwrap() {
                got.push(rsp);
            }
            if got.len() < REQUESTS as usize && !front.final_check_for_responses().unwrap() {
                to_front.wait();
            }
        }
        assert_eq!(got, (0..REQUESTS).map(|i| i + 100).collect::<Vec<_>>());
        backend.join().unwrap();
    });
}

#[test]
fn no_notification_is_lost_between_front_and_back() {
    model(true);
}

#[test]
#[should_panic(expected = "deadlock")]
fn without_the_full_fence_a_notification_is_lost() {
    model(false);
}
