//! A domain's end of its xenstore ring page (`docs/misc/xenstore-ring.txt`):
//! the byte stream a domU's xenbus driver speaks over, so that guest code
//! uses [`Client`](crate::Client) exactly as it would over the socket.
//!
//! The page is one of the domain's own; the toolstack tells xenstored its
//! frame and an unbound event channel with `XS_INTRODUCE`. Requests go into
//! the `req` ring, replies and watch events come out of the `rsp` ring, and
//! every move of either ring is followed by a notify, as both ends of
//! Xen's xenstore protocol do (the ring has no event index).

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use abi::xs_wire::{offsets, XENSTORE_CONNECTED, XENSTORE_ERROR_NONE, XENSTORE_RECONNECT};
use platform::{EventChannels, OwnMemory, Pfn, Port, VolatileSlice};
use ring::{ByteConsumer, ByteProducer, ByteRingLayout};

/// The guest's end of its xenstore ring: a blocking `Read + Write`.
pub struct RingStream<P> {
    dom: P,
    pfn: Pfn,
    port: Port,
    timeout: Option<Duration>,
}

fn broken(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, format!("xenstore ring: {what}"))
}

impl<P: OwnMemory + EventChannels> RingStream<P> {
    /// The ring in our page `pfn`, signalled on our port `port` (bound to
    /// xenstored's end by its `XS_INTRODUCE`), set up before the domain is
    /// introduced: the page is cleared and its `connection` word says
    /// `XENSTORE_RECONNECT`, so that nothing is written into the ring until
    /// xenstored, introducing the domain, says `XENSTORE_CONNECTED` (as a
    /// dom0less guest waits, `xenstore-ring.txt`); it resets the indexes
    /// at that moment, which would lose anything written before.
    pub fn new(dom: P, pfn: Pfn, port: Port) -> io::Result<RingStream<P>> {
        let s = RingStream::attach(dom, pfn, port)?;
        let page = s.page()?;
        page.fill(0, platform::PAGE_SIZE, 0).map_err(broken)?;
        page.store_u32(offsets::CONNECTION, XENSTORE_RECONNECT, Ordering::Release)
            .map_err(broken)?;
        Ok(s)
    }

    /// The ring in page `pfn` as it is (set up by [`new`](Self::new)
    /// before the domain was introduced): for taking it over later.
    pub fn attach(dom: P, pfn: Pfn, port: Port) -> io::Result<RingStream<P>> {
        let s = RingStream {
            dom,
            pfn,
            port,
            timeout: None,
        };
        s.page()?;
        Ok(s)
    }

    /// Gives up a read or write that waits longer than `timeout` (`None`:
    /// waits for ever, as a domU's xenbus does).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The domain underneath.
    pub fn domain(&self) -> &P {
        &self.dom
    }

    /// Our event-channel port.
    pub fn port(&self) -> Port {
        self.port
    }

    fn page(&self) -> io::Result<VolatileSlice<'_>> {
        self.dom
            .pages(self.pfn, 1)
            .map_err(|e| io::Error::other(format!("xenstore page: {e}")))
    }

    /// Runs `step` until it moves bytes, waiting on the port in between.
    fn until_moved(
        &self,
        mut step: impl FnMut(VolatileSlice<'_>) -> Result<usize, ring::RingError>,
    ) -> io::Result<usize> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        loop {
            let page = self.page()?;
            // xenstored marks a ring it has given up on (a broken index or
            // message) in the `error` word, and stops serving it.
            let err = page
                .load_u32(offsets::ERROR, Ordering::Acquire)
                .map_err(broken)?;
            if err != XENSTORE_ERROR_NONE {
                return Err(broken(format!("xenstored reports error {err}")));
            }
            // Not introduced yet (or reconnecting): the rings are not ours.
            let connected = page
                .load_u32(offsets::CONNECTION, Ordering::Acquire)
                .map_err(broken)?
                == XENSTORE_CONNECTED;
            if connected {
                let n = step(page).map_err(broken)?;
                if n > 0 {
                    self.dom.notify(self.port).map_err(broken)?;
                    return Ok(n);
                }
            }
            let wait_ms = match deadline {
                None => 1000,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    left.as_millis().clamp(1, 1000) as i32
                }
            };
            self.dom.wait(self.port, wait_ms).map_err(broken)?;
        }
    }
}

impl<P: OwnMemory + EventChannels> io::Read for RingStream<P> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.until_moved(|page| ByteConsumer::new(page, ByteRingLayout::XENSTORE_RSP)?.read(buf))
    }
}

impl<P: OwnMemory + EventChannels> io::Write for RingStream<P> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.until_moved(|page| ByteProducer::new(page, ByteRingLayout::XENSTORE_REQ)?.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
