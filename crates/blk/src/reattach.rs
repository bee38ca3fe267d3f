//! A guest's disk that outlives the connections to its backend, as a
//! Linux block device outlives blkfront's reconnections (`blkif_recover`):
//! when the backend restarts, or closes and comes back, the disk's users
//! wait, and a transfer that was in flight is made again on the next
//! connection. Nothing acknowledged is lost: a transfer is acknowledged
//! only once the backend answered all of it.
//!
//! The export (`blk::nbd`) keeps serving the same [`Reattachable`]; the
//! xenbus frontend [`detach`](Reattachable::detach)es the old `BlkFront`s
//! (one a queue) at disconnect, [`attach`](Reattachable::attach)es the new
//! ones at connect, and [`remove`](Reattachable::remove)s the disk when
//! the device goes. Transfers take the queues in turn, one at a time (so a
//! flush on one covers what the others acknowledged); a queue whose ring
//! broke leaves the turn, and a request unanswered in time stops them all.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::front::{BlkFront, FrontError};

/// How long a request waits for a connection before it fails.
pub const WAIT: Duration = Duration::from_secs(60);

struct State<P> {
    /// One a queue; none while there is no connection.
    fronts: Vec<BlkFront<P>>,
    /// Queues of this connection that failed (a request unanswered, a
    /// broken ring): out of the turn, kept to be handed back.
    failed: Vec<BlkFront<P>>,
    removed: bool,
}

/// A disk of fixed size and mode, served by whichever `BlkFront`s (one a
/// queue) are attached.
pub struct Reattachable<P> {
    state: Mutex<State<P>>,
    changed: Condvar,
    /// The attached frontends' abort flags, reachable while a transfer
    /// holds `state`.
    abort: Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>,
    sectors: u64,
    read_only: bool,
    discard: bool,
    wait: Duration,
    /// Transfers so far, to take the queues in turn.
    turn: std::sync::atomic::AtomicUsize,
}

impl<P> Reattachable<P>
where
    P: platform::OwnMemory + platform::GrantTable + platform::EventChannels + Send,
{
    /// A disk served by `fronts` (one a queue, at least one) for now;
    /// requests wait at most `wait` for a connection.
    pub fn new(fronts: Vec<BlkFront<P>>, read_only: bool, wait: Duration) -> Self {
        let (sectors, discard) = fronts
            .first()
            .map_or((0, false), |f| (f.sectors(), f.can_discard()));
        Reattachable {
            sectors,
            discard,
            abort: Mutex::new(fronts.iter().map(BlkFront::aborter).collect()),
            state: Mutex::new(State {
                fronts,
                failed: Vec::new(),
                removed: false,
            }),
            changed: Condvar::new(),
            read_only,
            wait,
            turn: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<P>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The queue the next transfer goes on: each in turn. (A transfer
    /// waits for its answers, so queues do not overlap here; spreading a
    /// batch over them on threads of its own was slower on 2 cores.)
    fn next(&self, queues: usize) -> usize {
        self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % queues.max(1)
    }

    /// Size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Takes the frontends out (for the caller to release): a transfer in
    /// flight on them stops and waits for the next ones.
    pub fn detach(&self) -> Vec<BlkFront<P>> {
        if let Ok(a) = self.abort.lock() {
            for f in a.iter() {
                f.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let fronts = {
            let mut s = self.lock();
            let mut all = std::mem::take(&mut s.fronts);
            all.append(&mut s.failed);
            all
        };
        self.changed.notify_all();
        fronts
    }

    /// Serves the disk by `fronts` from now on; frontends for a disk of
    /// another size, mode or discard support, or for a removed disk, are
    /// handed back.
    pub fn attach(
        &self,
        fronts: Vec<BlkFront<P>>,
        read_only: bool,
    ) -> Result<(), Vec<BlkFront<P>>> {
        let mut s = self.lock();
        let same = !fronts.is_empty()
            && fronts
                .iter()
                .all(|f| f.sectors() == self.sectors && f.can_discard() == self.discard)
            && read_only == self.read_only;
        if s.removed || !same {
            return Err(fronts);
        }
        if let Ok(mut a) = self.abort.lock() {
            *a = fronts.iter().map(BlkFront::aborter).collect();
        }
        let old = std::mem::replace(&mut s.fronts, fronts);
        drop(s);
        self.changed.notify_all();
        // Never: attach follows detach. Old frontends are stopped.
        for f in &old {
            f.aborter()
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        drop(old);
        Ok(())
    }

    /// No connection will come again: waiting requests fail, and the
    /// frontends (if any) are handed back to be released.
    pub fn remove(&self) -> Vec<BlkFront<P>> {
        let fronts = self.detach();
        self.lock().removed = true;
        self.changed.notify_all();
        fronts
    }

    /// Runs `f` on the attached frontends, again on the next ones if the
    /// connection is replaced meanwhile, for at most `wait` without one.
    fn run<T>(
        &self,
        mut f: impl FnMut(&mut [BlkFront<P>]) -> Result<T, FrontError>,
    ) -> io::Result<T> {
        let deadline = Instant::now() + self.wait;
        let mut s = self.lock();
        loop {
            if s.removed {
                return Err(io::Error::other("the device is gone"));
            }
            // Every queue failed: nothing more goes to this backend until
            // the device reconnects.
            if s.fronts.is_empty() && !s.failed.is_empty() {
                return Err(io::Error::other("every queue to the backend failed"));
            }
            if !s.fronts.is_empty() && !s.fronts.iter().any(BlkFront::is_aborted) {
                let r = f(&mut s.fronts);
                match r {
                    // A queue whose ring broke leaves the turn: its
                    // serving thread stopped, so none of its I/O can land
                    // later; the others go on.
                    Err(FrontError::Broken(_)) => {
                        let (bad, good): (Vec<_>, Vec<_>) = std::mem::take(&mut s.fronts)
                            .into_iter()
                            .partition(BlkFront::is_failed);
                        s.fronts = good;
                        s.failed.extend(bad);
                    }
                    // An unanswered request may still be carried out, after
                    // writes the other queues finish: every queue stops, as
                    // with one.
                    Err(FrontError::Timeout) => {
                        let all = std::mem::take(&mut s.fronts);
                        s.failed.extend(all);
                    }
                    _ => {}
                }
                match r {
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
        self.run(|f| f[self.next(f.len())].read(offset, buf))
    }

    /// Writes at `offset` (512-byte aligned).
    pub fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.run(|f| f[self.next(f.len())].write(offset, buf))
    }

    /// Everything acknowledged, on any queue, is on stable storage (the
    /// backend's flush is of the whole disk, and what it acknowledged is
    /// written).
    pub fn flush(&self) -> io::Result<()> {
        self.run(|f| f[self.next(f.len())].flush())
    }

    /// Several reads and writes in one exchange with the backend (all of
    /// them again on the next connection if this one goes meanwhile).
    pub fn batch(&self, ios: &mut [crate::front::Io<'_>]) -> Vec<io::Result<()>> {
        match self.run(|f| f[self.next(f.len())].batch(ios)) {
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
        self.run(|f| f[self.next(f.len())].discard(offset, len))
    }
}

impl<P> crate::nbd::BlockDevice for Arc<Reattachable<P>>
where
    P: platform::OwnMemory + platform::GrantTable + platform::EventChannels + Send + Sync,
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
