//! Bodies of the `xenstored_requests` and `xenstored_ring` fuzz targets,
//! here so that ordinary tests replay their corpora on stable.
//!
//! * [`requests`]: arbitrary bytes from two clients (a privileged one and
//!   an unprivileged domain) fed to the daemon in pieces the fuzzer
//!   chooses.
//! * [`ring`]: a domain introduced on a ring page in our own memory, which
//!   the fuzzer writes requests into, corrupts the indexes of, drains, and
//!   kills, while dom0 sends arbitrary requests on the socket.
//!
//! Nothing may panic, every reply must be well framed, and what is queued
//! for a client stays bounded.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use abi::xs_wire::offsets;
use abi::{OwnedMem, VolatileSlice};
use ring::{ByteConsumer, ByteProducer, ByteRingLayout};
use xenstore::wire::{Decoder, Message, MsgType};
use xenstore::XsError;

use crate::domain::{DomainRing, Hypervisor};
use crate::server::{Core, MAX_OUTPUT, MAX_OUTPUT_PRIVILEGED};
use crate::store::Caller;

/// Feeds `data` to a daemon: each piece is `[who, len, bytes...]`.
pub fn requests(data: &[u8]) {
    let mut core = Core::new();
    let dom0 = core.connect(Caller::DOM0);
    let guest = core.connect(Caller::domain(5));
    let mut decoders = [Decoder::new(), Decoder::new()];
    let mut rest = data;
    // Bounded: each piece consumes at least two bytes.
    while let [who, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (piece, next) = tail.split_at(n);
        let (id, d) = if who % 2 == 0 {
            (dom0, &mut decoders[0])
        } else {
            (guest, &mut decoders[1])
        };
        core.input(id, piece);
        if let Some(out) = core.output(id) {
            assert!(
                out.len() <= MAX_OUTPUT_PRIVILEGED,
                "output grew past its bound"
            );
            let bytes = std::mem::take(out);
            assert!(
                d.feed(&bytes).is_ok(),
                "the daemon sent a malformed message"
            );
        }
        rest = next;
    }
}

/// What a [`LoopbackHv`] shares with the test driving it: each domain's
/// ring page (in our own memory) and which domains are dead.
#[derive(Clone, Default)]
pub struct Loopback {
    pages: Arc<Mutex<HashMap<u16, Arc<OwnedMem>>>>,
    dead: Arc<Mutex<Vec<u16>>>,
}

impl Loopback {
    /// The ring page `domid` was last introduced with.
    pub fn page(&self, domid: u16) -> Option<Arc<OwnedMem>> {
        self.pages.lock().ok()?.get(&domid).cloned()
    }

    /// Marks `domid` dead (or alive again) for `Core::check_domains`.
    pub fn set_dead(&self, domid: u16, dead: bool) {
        if let Ok(mut d) = self.dead.lock() {
            d.retain(|&x| x != domid);
            if dead {
                d.push(domid);
            }
        }
    }
}

/// A hypervisor whose domains' ring pages are in our own memory, for
/// tests and fuzzing: every `XS_INTRODUCE` (except of frame 0, which
/// stands for one the domain does not have) gets a fresh zeroed page.
/// Its rings have no descriptor: the driver says which are ready.
pub struct LoopbackHv(pub Loopback);

struct LoopbackRing(Arc<OwnedMem>);

impl DomainRing for LoopbackRing {
    fn memory(&self) -> VolatileSlice<'_> {
        self.0.as_volatile()
    }
    fn notify(&self) {}
    fn fd(&self) -> RawFd {
        -1
    }
    fn ack(&self) {}
}

impl Hypervisor for LoopbackHv {
    fn connect(
        &mut self,
        domid: u16,
        gfn: u64,
        _port: u32,
    ) -> Result<Box<dyn DomainRing>, XsError> {
        if gfn == 0 {
            return Err(XsError::Inval);
        }
        let page = Arc::new(OwnedMem::new(platform::PAGE_SIZE));
        let mut pages = self.0.pages.lock().map_err(|_| XsError::Io)?;
        pages.insert(domid, page.clone());
        Ok(Box::new(LoopbackRing(page)))
    }
    fn death_fd(&self) -> Option<RawFd> {
        None
    }
    /// Its domains die; none shuts down.
    fn exceptions(&mut self, domids: &[u16]) -> crate::domain::Exceptions {
        let dead = self.0.dead.lock().map(|d| d.clone()).unwrap_or_default();
        crate::domain::Exceptions {
            dead: domids
                .iter()
                .copied()
                .filter(|d| dead.contains(d))
                .collect(),
            shut_down: Vec::new(),
        }
    }
    fn exists(&mut self, domid: u16) -> bool {
        self.0.dead.lock().is_ok_and(|d| !d.contains(&domid))
    }
    /// Its domains never shut down.
    fn is_shut_down(&mut self, _domid: u16) -> bool {
        false
    }
}

/// Feeds `data` to a daemon serving domain 5 on a ring: each piece is
/// `[op, len, bytes...]`.
pub fn ring(data: &[u8]) {
    let lo = Loopback::default();
    let hv = LoopbackHv(lo.clone());
    let mut core = Core::new().with_hypervisor(Box::new(hv));
    let dom0 = core.connect(Caller::DOM0);
    let introduce = Message::with_strings(MsgType::Introduce, 1, 0, &[b"5", b"1", b"1"]);
    let Ok(bytes) = introduce.encode() else {
        return;
    };
    core.input(dom0, &bytes);
    let mut dom0_decoder = Decoder::new();
    let mut guest_decoder = Decoder::new();
    // Once the guest moves its indexes by hand, what it reads is garbage.
    let mut corrupted = false;
    let mut last_page: Option<Arc<OwnedMem>> = None;
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (piece, next) = tail.split_at(n);
        rest = next;
        let page = lo.page(5);
        // A new page: the domain was introduced again (if dom0's request
        // was not swallowed by garbage before it), and its stream starts
        // over.
        let same = match (&page, &last_page) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            guest_decoder = Decoder::new();
            corrupted = false;
            last_page = page.clone();
        }
        let conn = core.domain_conn(5);
        match op % 6 {
            0 => core.input(dom0, piece),
            1 => {
                if let Some(page) = &page {
                    if let Ok(p) =
                        ByteProducer::new(page.as_volatile(), ByteRingLayout::XENSTORE_REQ)
                    {
                        let _ = p.write(piece);
                    }
                }
            }
            2 => {
                // An index or control word, overwritten.
                if let (Some(page), [which, a, b, c, d, ..]) = (&page, piece) {
                    let at = [
                        offsets::REQ_CONS,
                        offsets::REQ_PROD,
                        offsets::RSP_CONS,
                        offsets::RSP_PROD,
                        offsets::CONNECTION,
                        offsets::ERROR,
                    ][usize::from(*which) % 6];
                    let v = u32::from_le_bytes([*a, *b, *c, *d]);
                    let _ = page.as_volatile().store_u32(at, v, Ordering::Release);
                    corrupted = true;
                }
            }
            3 => {
                if let Some(page) = &page {
                    if let Ok(c) =
                        ByteConsumer::new(page.as_volatile(), ByteRingLayout::XENSTORE_RSP)
                    {
                        let mut buf = [0u8; 1024];
                        if let Ok(n) = c.read(&mut buf) {
                            let ok = guest_decoder.feed(&buf[..n]).is_ok();
                            assert!(ok || corrupted, "the daemon sent a malformed message");
                        }
                    }
                }
            }
            4 => {
                lo.set_dead(5, true);
                core.check_domains();
            }
            _ => {
                // Introduced again (a new ring), or after its death.
                lo.set_dead(5, false);
                core.input(dom0, &bytes);
            }
        }
        // The high bit: the domain did not signal (only its output moves).
        let ready: Vec<u64> = conn.into_iter().filter(|_| op & 0x80 == 0).collect();
        core.service_domains(&ready);
        core.reap();
        if let Some(out) = core.output(dom0) {
            assert!(
                out.len() <= MAX_OUTPUT_PRIVILEGED,
                "output grew past its bound"
            );
            let out = std::mem::take(out);
            assert!(
                dom0_decoder.feed(&out).is_ok(),
                "the daemon sent a malformed message"
            );
        }
        if let Some(id) = core.domain_conn(5) {
            if let Some(out) = core.output(id) {
                assert!(out.len() <= MAX_OUTPUT, "output grew past its bound");
            }
        }
    }
}
