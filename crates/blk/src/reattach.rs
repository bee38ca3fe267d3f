//! A guest's disk that outlives the connections to its backend, as a
//! Linux block device outlives blkfront's reconnections (`blkif_recover`):
//! when the backend restarts, or closes and comes back, the disk's users
//! wait, and a transfer that was in flight is made again on the next
//! connection. Nothing acknowledged is lost: a transfer is acknowledged
//! only once the backend answered all of it.
//!
//! The export (`blk::nbd`) keeps serving the same [`Reattachable`]; the
//! xenbus frontend [`detach`](Reattachable::detach)es the old `BlkFront`
//! at disconnect, [`attach`](Reattachable::attach)es the new one at
//! connect, and [`remove`](Reattachable::remove)s the disk when the device
//! goes.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::front::{BlkFront, FrontError};

/// How long a request waits for a connection before it fails.
pub const WAIT: Duration = Duration::from_secs(60);

struct State<P> {
    front: Option<BlkFront<P>>,
    removed: bool,
}

/// A disk of fixed size and mode, served by whichever `BlkFront` is
/// attached.
pub struct Reattachable<P> {
    state: Mutex<State<P>>,
    changed: Condvar,
    /// The attached frontend's abort flag, reachable while a transfer
    /// holds `state`.
    abort: Mutex<Arc<std::sync::atomic::AtomicBool>>,
    sectors: u64,
    read_only: bool,
    discard: bool,
    wait: Duration,
}

impl<P> Reattachable<P>
where
    P: platform::OwnMemory + platform::GrantTable + platform::EventChannels,
{
    /// A disk served by `front` for now; requests wait at most `wait` for a
    /// connection.
    pub fn new(front: BlkFront<P>, read_only: bool, wait: Duration) -> Self {
        Reattachable {
            sectors: front.sectors(),
            discard: front.can_discard(),
            abort: Mutex::new(front.aborter()),
            state: Mutex::new(State {
                front: Some(front),
                removed: false,
            }),
            changed: Condvar::new(),
            read_only,
            wait,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<P>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Takes the frontend out (for the caller to release): a transfer in
    /// flight on it stops and waits for the next one.
    pub fn detach(&self) -> Option<BlkFront<P>> {
        if let Ok(a) = self.abort.lock() {
            a.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let front = self.lock().front.take();
        self.changed.notify_all();
        front
    }

    /// Serves the disk by `front` from now on; a frontend for a disk of
    /// another size, mode or discard support, or for a removed disk, is
    /// handed back.
    pub fn attach(&self, front: BlkFront<P>, read_only: bool) -> Result<(), Box<BlkFront<P>>> {
        let mut s = self.lock();
        let same = front.sectors() == self.sectors
            && read_only == self.read_only
            && front.can_discard() == self.discard;
        if s.removed || !same {
            return Err(Box::new(front));
        }
        if let Ok(mut a) = self.abort.lock() {
            *a = front.aborter();
        }
        let old = s.front.replace(front);
        drop(s);
        self.changed.notify_all();
        // Never: attach follows detach. An old frontend is stopped.
        if let Some(f) = &old {
            f.aborter()
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        drop(old);
        Ok(())
    }

    /// No connection will come again: waiting requests fail, and the
    /// frontend (if any) is handed back to be released.
    pub fn remove(&self) -> Option<BlkFront<P>> {
        let front = self.detach();
        self.lock().removed = true;
        self.changed.notify_all();
        front
    }

    /// Runs `f` on the attached frontend, again on the next one if the
    /// connection is replaced meanwhile, for at most `wait` without one.
    fn run<T>(
        &self,
        mut f: impl FnMut(&mut BlkFront<P>) -> Result<T, FrontError>,
    ) -> io::Result<T> {
        let deadline = Instant::now() + self.wait;
        let mut s = self.lock();
        loop {
            if s.removed {
                return Err(io::Error::other("the device is gone"));
            }
            if let Some(front) = s.front.as_mut().filter(|f| !f.is_aborted()) {
                match f(front) {
                    Err(FrontError::Aborted) => {}
                    r => return r.map_err(io::Error::other),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no connection to the backend",
                ));
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Reads at `offset` (512-byte aligned).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.run(|f| f.read(offset, buf))
    }

    /// Writes at `offset` (512-byte aligned).
    pub fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.run(|f| f.write(offset, buf))
    }

    /// Everything acknowledged is on stable storage.
    pub fn flush(&self) -> io::Result<()> {
        self.run(BlkFront::flush)
    }

    /// Several reads and writes in one exchange with the backend (all of
    /// them again on the next connection if this one goes meanwhile).
    pub fn batch(&self, ios: &mut [crate::front::Io<'_>]) -> Vec<io::Result<()>> {
        match self.run(|f| f.batch(ios)) {
            Ok(rs) => rs
                .into_iter()
                .map(|r| r.map_err(io::Error::other))
                .collect(),
            Err(e) => ios
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect(),
        }
    }

    /// Gives a range back (512-byte aligned), if the backend discards.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.run(|f| f.discard(offset, len))
    }
}

impl<P> crate::nbd::BlockDevice for Arc<Reattachable<P>>
where
    P: platform::OwnMemory + platform::GrantTable + platform::EventChannels + Send,
{
    fn size(&self) -> u64 {
        self.sectors.saturating_mul(512)
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.write(offset, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Reattachable::flush(self)
    }
    fn can_discard(&self) -> bool {
        self.discard
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        Reattachable::discard(self, offset, len)
    }
    fn batch(&mut self, ios: &mut [crate::front::Io<'_>]) -> Vec<io::Result<()>> {
        Reattachable::batch(self, ios)
    }
}
