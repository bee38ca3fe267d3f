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
//! the device goes. A transfer takes a queue of its own, the next free one
//! in turn, so transfers go on side by side, one a queue (a flush covers
//! what every queue acknowledged before it: the backend's flush is of the
//! whole disk); a queue whose ring broke leaves the turn, and a request
//! unanswered in time stops them all.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::front::{BlkFront, FrontError};

/// How long a request waits for a connection before it fails.
pub const WAIT: Duration = Duration::from_secs(60);

struct State<P> {
    /// The queues no transfer has now; none while there is no connection.
    idle: Vec<BlkFront<P>>,
    /// Queues transfers have now (they come back to `idle` or `failed`).
    busy: usize,
    /// Queues of this connection that failed (a request unanswered, a
    /// broken ring): out of the turn, kept to be handed back.
    failed: Vec<BlkFront<P>>,
    /// A request went unanswered: every queue of this connection is out of
    /// the turn, those a transfer has too when they come back.
    stopped: bool,
    removed: bool,
}

/// A disk of fixed size and mode, served by whichever `BlkFront`s (one a
/// queue) are attached.
pub struct Reattachable<P> {
    state: Mutex<State<P>>,
    changed: Condvar,
    /// The attached frontends' abort flags, reachable while transfers
    /// have their frontends.
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
                idle: fronts,
                busy: 0,
                failed: Vec::new(),
                stopped: false,
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

    /// Which of `queues` free ones the next transfer takes: each in turn.
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

    /// Stops the transfers in flight (within 100 ms: they then wait for
    /// the next frontends) and takes every frontend back.
    fn take_all(&self) -> MutexGuard<'_, State<P>> {
        if let Ok(a) = self.abort.lock() {
            for f in a.iter() {
                f.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let mut s = self.lock();
        while s.busy > 0 {
            s = self
                .changed
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        s
    }

    /// Takes the frontends out (for the caller to release): a transfer in
    /// flight on them stops and waits for the next ones.
    pub fn detach(&self) -> Vec<BlkFront<P>> {
        let fronts = {
            let mut s = self.take_all();
            let mut all = std::mem::take(&mut s.idle);
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
        let same = !fronts.is_empty()
            && fronts
                .iter()
                .all(|f| f.sectors() == self.sectors && f.can_discard() == self.discard)
            && read_only == self.read_only;
        if self.lock().removed || !same {
            return Err(fronts);
        }
        // Never anything to stop: attach follows detach.
        let mut s = self.take_all();
        if s.removed {
            return Err(fronts);
        }
        if let Ok(mut a) = self.abort.lock() {
            *a = fronts.iter().map(BlkFront::aborter).collect();
        }
        // Anything left (attach without detach) is handed back at the next
        // detach, to be released as a failed queue is.
        let old = std::mem::replace(&mut s.idle, fronts);
        s.failed.extend(old);
        s.stopped = false;
        drop(s);
        self.changed.notify_all();
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

    /// Runs `f` on a free queue of the attached frontends, again on the
    /// next ones if the connection is replaced meanwhile, for at most
    /// `wait` without one.
    fn run<T>(
        &self,
        mut f: impl FnMut(&mut BlkFront<P>) -> Result<T, FrontError>,
    ) -> io::Result<T> {
        let mut deadline = Instant::now() + self.wait;
        let mut s = self.lock();
        loop {
            if s.removed {
                return Err(io::Error::other("the device is gone"));
            }
            // Every queue failed: nothing more goes to this backend until
            // the device reconnects (unless it is being detached now: then
            // the next connection).
            let detaching = s.failed.iter().all(BlkFront::is_aborted);
            if s.idle.is_empty() && s.busy == 0 && !s.failed.is_empty() && !detaching {
                return Err(io::Error::other("every queue to the backend failed"));
            }
            let free = (!s.idle.is_empty()).then(|| self.next(s.idle.len()));
            if let Some(k) = free.filter(|&k| !s.idle[k].is_aborted()) {
                let mut front = s.idle.swap_remove(k);
                s.busy += 1;
                drop(s);
                // Should `f` panic, the queue is lost but no longer busy
                // (a detach waiting for it goes on).
                let out = Busy(self);
                let r = f(&mut front);
                std::mem::forget(out);
                s = self.lock();
                s.busy -= 1;
                match &r {
                    // A queue whose ring broke leaves the turn: its
                    // serving thread stopped, so none of its I/O can land
                    // later; the others go on.
                    Err(FrontError::Broken(_)) => s.failed.push(front),
                    // An unanswered request may still be carried out, after
                    // writes the other queues finish: every queue stops, as
                    // with one.
                    Err(FrontError::Timeout) => {
                        s.stopped = true;
                        let idle = std::mem::take(&mut s.idle);
                        s.failed.extend(idle);
                        s.failed.push(front);
                    }
                    _ if s.stopped => s.failed.push(front),
                    _ => s.idle.push(front),
                }
                self.changed.notify_all();
                match r {
                    // The connection is being replaced: again on the next,
                    // waited for as long as any.
                    Err(FrontError::Aborted) => {
                        deadline = Instant::now() + self.wait;
                        continue;
                    }
                    r => return r.map_err(io::Error::other),
                }
            }
            // Queues busy with other transfers: the connection is there,
            // and waiting for one of them is not waiting for a connection.
            if s.busy > 0 {
                deadline = Instant::now() + self.wait;
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

    /// Everything acknowledged, on any queue, is on stable storage (the
    /// backend's flush is of the whole disk, and what it acknowledged is
    /// written).
    pub fn flush(&self) -> io::Result<()> {
        self.run(|f| f.flush())
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

/// A queue out with a transfer; dropped only if the transfer panics.
struct Busy<'a, P>(&'a Reattachable<P>);

impl<P> Drop for Busy<'_, P> {
    fn drop(&mut self) {
        let mut s = self
            .0
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.busy -= 1;
        drop(s);
        self.0.changed.notify_all();
    }
}

impl<P> crate::nbd::BlockDevice for Reattachable<P>
where
    P: platform::OwnMemory + platform::GrantTable + platform::EventChannels + Send + Sync,
{
    fn size(&self) -> u64 {
        self.sectors.saturating_mul(512)
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.write(offset, buf)
    }
    fn flush(&self) -> io::Result<()> {
        Reattachable::flush(self)
    }
    fn can_discard(&self) -> bool {
        self.discard
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        Reattachable::discard(self, offset, len)
    }
    fn batch(&self, ios: &mut [crate::front::Io<'_>]) -> Vec<io::Result<()>> {
        Reattachable::batch(self, ios)
    }
}
