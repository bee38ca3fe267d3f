//! An NBD server (the fixed-newstyle protocol of `nbd/doc/proto.md`) for
//! a guest's disk, so that host tools (qemu-img, qemu-io, nbdinfo,
//! nbdcopy, fio's nbd engine) reach it: `NBD_OPT_GO`, `INFO`,
//! `EXPORT_NAME`, `LIST`, `ABORT`; `READ`, `WRITE` (with `FUA`), `FLUSH`,
//! `WRITE_ZEROES`, `TRIM` (if the disk discards), `DISC`; simple replies
//! (structured replies are declined, as the protocol allows). Several
//! connections at once, each on a thread of its own (and its
//! [`IN_FLIGHT`] workers), one device behind them; the
//! plain reads and writes of a connection that have already arrived (up
//! to 32 and 1 MiB) are served as one batch, and up to [`IN_FLIGHT`]
//! batches of a connection at once (replies in the order they finish, as
//! the protocol allows; anything else waits for them and goes alone).
//!
//! Everything a client sends is bounded before it is buffered: an option
//! of at most 64 KiB, a request of at most 32 MiB (the block size we
//! advertise).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

pub use crate::front::Io;
use std::sync::{Arc, Condvar, Mutex};

/// What the export serves, to several connections and batches at once.
pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Reads at a 512-byte aligned offset.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes at a 512-byte aligned offset.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Everything written is on stable storage.
    fn flush(&self) -> io::Result<()>;
    /// Whether [`discard`](Self::discard) works (`NBD_FLAG_SEND_TRIM`).
    fn can_discard(&self) -> bool {
        false
    }
    /// Gives the range back (`NBD_CMD_TRIM`: its contents become
    /// unspecified).
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Several reads and writes (each checked against the disk already),
    /// each with its result: one by one unless the device does better.
    fn batch(&self, ios: &mut [Io<'_>]) -> Vec<io::Result<()>> {
        ios.iter_mut()
            .map(|io| match io {
                Io::Read { offset, buf } => self.read_at(*offset, buf),
                Io::Write { offset, data } => self.write_at(*offset, data),
            })
            .collect()
    }
}

pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub(crate) const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub(crate) const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub(crate) const FLAG_NO_ZEROES: u16 = 2;
const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
pub(crate) const OPT_GO: u32 = 7;
pub(crate) const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
pub(crate) const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const REP_ERR_INVALID: u32 = (1 << 31) | 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
pub(crate) const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;
pub(crate) const TFLAG_HAS_FLAGS: u16 = 1;
pub(crate) const TFLAG_READ_ONLY: u16 = 2;
pub(crate) const TFLAG_SEND_FLUSH: u16 = 4;
const TFLAG_SEND_FUA: u16 = 8;
const TFLAG_SEND_TRIM: u16 = 32;
pub(crate) const TFLAG_SEND_WRITE_ZEROES: u16 = 64;
pub(crate) const TFLAG_CAN_MULTI_CONN: u16 = 256;
pub(crate) const CMD_READ: u16 = 0;
pub(crate) const CMD_WRITE: u16 = 1;
pub(crate) const CMD_DISC: u16 = 2;
pub(crate) const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
pub(crate) const CMD_WRITE_ZEROES: u16 = 6;
const CMD_FLAG_FUA: u16 = 1;
const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// The largest request we take (the block size's maximum we advertise).
pub const MAX_REQUEST: u32 = 32 << 20;
/// The largest option we read.
pub(crate) const MAX_OPTION: u32 = 64 << 10;

/// A shared device.
pub type Shared = Arc<dyn BlockDevice>;

/// A client's connection: requests are read from it while replies are
/// written from other threads, through [`Conn::writer`].
pub trait Conn: Read + Write {
    /// Where replies go.
    type Writer: Write + Send;
    /// The writing end (a socket's clone).
    fn writer(&self) -> io::Result<Self::Writer>;
}

impl Conn for UnixStream {
    type Writer = UnixStream;
    fn writer(&self) -> io::Result<UnixStream> {
        self.try_clone()
    }
}

/// Batches of one connection served at once, each by a worker thread of
/// the connection's: as many as our blkfront's queues (2), so that the
/// backend reads or writes one while the export moves another's data. A
/// connection holds at most this many batches' buffers (a batch is up to
/// 1 MiB, or one request of up to [`MAX_REQUEST`]).
pub const IN_FLIGHT: usize = 2;

/// Connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 16;

/// Serves `listener`, a thread per connection (at most
/// [`MAX_CONNECTIONS`] at once), until `gone` says the export is over.
pub fn serve(
    listener: UnixListener,
    name: String,
    dev: Shared,
    gone: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let active = Arc::new(AtomicUsize::new(0));
    let _ = listener.set_nonblocking(true);
    while !gone.load(Ordering::Relaxed) {
        if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            // Nothing waiting, or out of descriptors: not a busy loop.
            Err(_) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
        };
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        // A client that stops talking for a minute is dropped.
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(60)));
        let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(60)));
        let (name, dev, active) = (name.clone(), dev.clone(), active.clone());
        /// Counts a connection as served until its thread ends, panic or not.
        struct Active(Arc<AtomicUsize>);
        impl Drop for Active {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        active.fetch_add(1, Ordering::Relaxed);
        let counted = Active(active);
        let spawned = std::thread::Builder::new().spawn(move || {
            let _counted = counted;
            let _ = session(stream, &name, &dev);
        });
        // No thread: the connection closes (and is counted off) here.
        drop(spawned);
    }
}

pub(crate) fn u16_of(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
pub(crate) fn u32_of(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
pub(crate) fn u64_of(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn option_reply(s: &mut impl Write, opt: u32, ty: u32, data: &[u8]) -> io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&ty.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b)
}

fn transmission_flags(d: &Shared) -> (u64, u16) {
    let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_CAN_MULTI_CONN;
    if d.read_only() {
        f |= TFLAG_READ_ONLY;
    } else {
        f |= TFLAG_SEND_WRITE_ZEROES;
        if d.can_discard() {
            f |= TFLAG_SEND_TRIM;
        }
    }
    (d.size(), f)
}

/// One client: the handshake, then requests until it disconnects.
pub fn session<S: Conn>(mut s: S, name: &str, dev: &Shared) -> io::Result<()> {
    s.write_all(&NBDMAGIC.to_be_bytes())?;
    s.write_all(&IHAVEOPT.to_be_bytes())?;
    s.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
    let mut cflags = [0u8; 4];
    s.read_exact(&mut cflags)?;
    let cflags = u32_of(&cflags);
    // Flags we do not know: the protocol says to drop the client.
    if cflags & !u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) != 0 {
        return Err(io::ErrorKind::InvalidData.into());
    }
    let no_zeroes = cflags & u32::from(FLAG_NO_ZEROES) != 0;
    loop {
        let mut h = [0u8; 16];
        s.read_exact(&mut h)?;
        if u64_of(&h) != IHAVEOPT {
            return Err(io::ErrorKind::InvalidData.into());
        }
        let (opt, len) = (u32_of(&h[8..]), u32_of(&h[12..]));
        if len > MAX_OPTION {
            return Err(io::ErrorKind::InvalidData.into());
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        let (size, flags) = transmission_flags(dev);
        match opt {
            OPT_EXPORT_NAME => {
                // No error reply is possible here: any name is ours.
                s.write_all(&size.to_be_bytes())?;
                s.write_all(&flags.to_be_bytes())?;
                if !no_zeroes {
                    s.write_all(&[0u8; 124])?;
                }
                return transmission(s, dev);
            }
            OPT_ABORT => {
                let _ = option_reply(&mut s, opt, REP_ACK, &[]);
                return Ok(());
            }
            OPT_LIST if !data.is_empty() => option_reply(&mut s, opt, REP_ERR_INVALID, &[])?,
            OPT_LIST => {
                let mut d = (name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(name.as_bytes());
                option_reply(&mut s, opt, REP_SERVER, &d)?;
                option_reply(&mut s, opt, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                // name length, name, number of info requests, requests.
                let ok = data.len() >= 6 && {
                    let n = u32_of(&data) as usize;
                    data.len() >= 4 + n + 2
                        && data.len() == 4 + n + 2 + 2 * usize::from(u16_of(&data[4 + n..]))
                };
                if !ok {
                    option_reply(&mut s, opt, REP_ERR_INVALID, &[])?;
                    continue;
                }
                // The default export ("") is ours too.
                let asked = &data[4..4 + u32_of(&data) as usize];
                if !asked.is_empty() && asked != name.as_bytes() {
                    option_reply(&mut s, opt, REP_ERR_UNKNOWN, &[])?;
                    continue;
                }
                let mut export = INFO_EXPORT.to_be_bytes().to_vec();
                export.extend_from_slice(&size.to_be_bytes());
                export.extend_from_slice(&flags.to_be_bytes());
                option_reply(&mut s, opt, REP_INFO, &export)?;
                let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                for v in [512u32, 4096, MAX_REQUEST] {
                    bs.extend_from_slice(&v.to_be_bytes());
                }
                option_reply(&mut s, opt, REP_INFO, &bs)?;
                option_reply(&mut s, opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    return transmission(s, dev);
                }
            }
            // Structured replies, meta contexts, TLS...: declined.
            _ => option_reply(&mut s, opt, REP_ERR_UNSUP, &[])?,
        }
    }
}

/// A simple reply (into a buffered writer: the data is not copied again
/// when it is large).
fn reply(s: &mut impl Write, error: u32, handle: u64, data: &[u8]) -> io::Result<()> {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..].copy_from_slice(&handle.to_be_bytes());
    s.write_all(&h)?;
    s.write_all(data)
}

/// A request as it came, its payload read.
struct Request {
    flags: u16,
    ty: u16,
    handle: u64,
    offset: u64,
    len: u32,
    payload: Vec<u8>,
}

/// Requests served together when they have all arrived already, at most
/// this many and this many bytes (larger ones gain nothing: blkfront
/// sends a megabyte in one exchange anyway).
const MAX_BATCH: usize = 32;
const MAX_BATCH_BYTES: u64 = 1 << 20;

/// Whether a request may share a batch: a plain read or write (a FUA
/// write is answered after a flush of its own).
fn batchable(flags: u16, ty: u16) -> bool {
    (ty == CMD_READ || ty == CMD_WRITE) && flags & CMD_FLAG_FUA == 0
}

/// Whether `buf` (what is buffered from the client) starts with a whole
/// batchable request, payload included: it can be taken without waiting.
fn next_ready(buf: &[u8], room: u64) -> bool {
    if buf.len() < 28 || u32_of(buf) != REQUEST_MAGIC {
        return false;
    }
    let (flags, ty, len) = (u16_of(&buf[4..]), u16_of(&buf[6..]), u32_of(&buf[24..]));
    batchable(flags, ty)
        && u64::from(len) <= room
        && (ty != CMD_WRITE || buf.len() >= 28 + len as usize)
}

/// Takes a buffer of `len` bytes from `pool` (zeroing only bytes it
/// never held) or makes one.
fn pooled(pool: &Mutex<Vec<Vec<u8>>>, len: usize) -> Vec<u8> {
    let kept = pool
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop();
    let mut b = kept.unwrap_or_default();
    b.resize(b.len().max(len), 0);
    b.truncate(len);
    b
}

/// Buffers a connection keeps for its next requests: at most
/// [`MAX_BATCH`] of them, none over 1 MiB, [`POOL_BYTES`] in all.
fn keep(pool: &Mutex<Vec<Vec<u8>>>, bufs: impl Iterator<Item = Vec<u8>>) {
    let mut pool = pool
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut total: usize = pool.iter().map(Vec::capacity).sum();
    for b in bufs {
        let c = b.capacity();
        if c == 0 || c > 1 << 20 || pool.len() >= MAX_BATCH || total + c > POOL_BYTES {
            continue;
        }
        total += c;
        pool.push(b);
    }
}

/// Bytes of buffers one connection keeps between requests.
const POOL_BYTES: usize = 4 << 20;

/// The next request; `None` if it was oversized and already answered.
fn read_request<S: Read, W: Write>(
    r: &mut BufReader<S>,
    out: &Mutex<W>,
    pool: &Mutex<Vec<Vec<u8>>>,
) -> io::Result<Option<Request>> {
    let mut h = [0u8; 28];
    r.read_exact(&mut h)?;
    if u32_of(&h) != REQUEST_MAGIC {
        return Err(io::ErrorKind::InvalidData.into());
    }
    let (flags, ty, handle) = (u16_of(&h[4..]), u16_of(&h[6..]), u64_of(&h[8..]));
    let (offset, len) = (u64_of(&h[16..]), u32_of(&h[24..]));
    if len > MAX_REQUEST {
        // The stream cannot be followed past an oversized write; any
        // other request gets EINVAL.
        if ty == CMD_WRITE {
            return Err(io::ErrorKind::InvalidData.into());
        }
        send_replies(out, &[(EINVAL, handle, Vec::new())])?;
        return Ok(None);
    }
    let mut payload = Vec::new();
    if ty == CMD_WRITE {
        payload = pooled(pool, len as usize);
        r.read_exact(&mut payload)?;
    }
    Ok(Some(Request {
        flags,
        ty,
        handle,
        offset,
        len,
        payload,
    }))
}

fn errno(e: &io::Error) -> u32 {
    if e.kind() == io::ErrorKind::InvalidInput {
        EINVAL
    } else {
        EIO
    }
}

/// A connection's batches handed to its workers.
struct Flight {
    state: Mutex<FlightState>,
    changed: Condvar,
}

#[derive(Default)]
struct FlightState {
    /// Handed over, not taken by a worker yet.
    waiting: std::collections::VecDeque<Vec<Request>>,
    /// Handed over and not answered yet (waiting ones included).
    in_flight: usize,
    /// A reply could not be written: the connection is over.
    failed: bool,
    /// No more batches come: workers end.
    closed: bool,
}

impl Flight {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlightState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until fewer than `n` batches are in flight; false if a reply
    /// could not be written (the connection is over).
    fn wait_below(&self, n: usize) -> bool {
        let mut st = self.lock();
        while st.in_flight >= n && !st.failed {
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        !st.failed
    }

    /// Batches in flight now.
    fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Hands `batch` to a worker.
    fn push(&self, batch: Vec<Request>) {
        let mut st = self.lock();
        st.in_flight += 1;
        st.waiting.push_back(batch);
        drop(st);
        self.changed.notify_all();
    }

    /// The next batch for a worker; `None` once closed.
    fn next(&self) -> Option<Vec<Request>> {
        let mut st = self.lock();
        loop {
            if let Some(b) = st.waiting.pop_front() {
                return Some(b);
            }
            if st.closed {
                return None;
            }
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn done(&self, written: bool) {
        let mut st = self.lock();
        st.in_flight -= 1;
        st.failed |= !written;
        drop(st);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }
}

/// Closes the flight when the reading side ends, panic or not, so that
/// the workers end too.
struct Closing<'a>(&'a Flight);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Writes a batch's replies together.
fn send_replies<W: Write>(out: &Mutex<W>, replies: &[Reply]) -> io::Result<()> {
    let mut w = out
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut b = io::BufWriter::with_capacity(64 << 10, &mut *w);
    for (err, handle, data) in replies {
        reply(&mut b, *err, *handle, data)?;
    }
    b.flush()
}

/// A batch a worker has: [`Flight::done`] when it is dropped, at the end
/// or in a panic (unwritten, unless its replies were written).
struct Serving<'a> {
    flight: &'a Flight,
    written: bool,
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.flight.done(self.written);
    }
}

/// Whether `e` is a socket's read timeout.
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn transmission<S: Conn>(s: S, dev: &Shared) -> io::Result<()> {
    let out = Mutex::new(s.writer()?);
    // Buffered, so that requests that have already arrived are seen and
    // served together (a client with many in flight gets them answered in
    // one exchange with the backend).
    let mut r = BufReader::with_capacity(256 << 10, s);
    // Read buffers of earlier replies, used again unzeroed (a read fills
    // its buffer whole, or fails and sends none of it).
    let pool: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let flight = Flight {
        state: Mutex::new(FlightState::default()),
        changed: Condvar::new(),
    };
    std::thread::scope(|scope| {
        let _closing = Closing(&flight);
        let worker = || {
            while let Some(batch) = flight.next() {
                let mut serving = Serving {
                    flight: &flight,
                    written: false,
                };
                let replies = serve_batch(&**dev, &batch, &pool);
                serving.written = send_replies(&out, &replies).is_ok();
                let used = replies.into_iter().map(|(_, _, data)| data);
                let payloads = batch.into_iter().map(|q| q.payload);
                keep(&pool, used.chain(payloads));
            }
        };
        // As many workers as the system gives, up to IN_FLIGHT: batches
        // in flight are never more than workers to take them.
        let workers = (0..IN_FLIGHT)
            .map_while(|_| std::thread::Builder::new().spawn_scoped(scope, worker).ok())
            .count();
        if workers == 0 {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let result = (|| loop {
            // At most `workers` batches: the next one is read only when a
            // worker is free for it (a connection holds at most that many
            // batches' buffers).
            if !flight.wait_below(workers) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            // A client waiting for replies sends nothing: its silence is
            // timed only when nothing of it is in flight.
            if r.buffer().is_empty() {
                match r.fill_buf() {
                    Ok(_) => {}
                    Err(e) if timed_out(&e) && flight.in_flight() > 0 => continue,
                    Err(e) => return Err(e),
                }
            }
            let Some(first) = read_request(&mut r, &out, &pool)? else {
                continue;
            };
            if first.ty == CMD_DISC {
                flight.wait_below(1);
                return Ok(());
            }
            let mut bytes = u64::from(first.len);
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH
                && batchable(batch[0].flags, batch[0].ty)
                && next_ready(r.buffer(), MAX_BATCH_BYTES.saturating_sub(bytes))
            {
                if let Some(q) = read_request(&mut r, &out, &pool)? {
                    bytes += u64::from(q.len);
                    batch.push(q);
                }
            }
            if batchable(batch[0].flags, batch[0].ty) {
                flight.push(batch);
            } else {
                // A flush, FUA write, trim or zeroing: after what is in
                // flight, alone.
                if !flight.wait_below(1) {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                let replies = [serve_one(&**dev, &batch[0])];
                send_replies(&out, &replies)?;
                let used = replies.into_iter().map(|(_, _, data)| data);
                let payloads = batch.into_iter().map(|q| q.payload);
                keep(&pool, used.chain(payloads));
            }
        })();
        // The workers end (`_closing`) and the scope waits for them.
        result
    })
}

/// Reads and writes, checked one by one, done as one batch; the replies
/// in `out`, in order.
/// A reply: error, handle, data.
type Reply = (u32, u64, Vec<u8>);

fn serve_batch(d: &dyn BlockDevice, batch: &[Request], pool: &Mutex<Vec<Vec<u8>>>) -> Vec<Reply> {
    let (size, ro) = (d.size(), d.read_only());
    let mut errs: Vec<u32> = batch
        .iter()
        .map(|q| {
            let in_range = q
                .offset
                .checked_add(u64::from(q.len))
                .is_some_and(|end| end <= size);
            let aligned = q.offset % 512 == 0 && q.len % 512 == 0;
            match q.ty {
                CMD_READ if !in_range || !aligned => EINVAL,
                CMD_WRITE if ro => EPERM,
                CMD_WRITE if !in_range => ENOSPC,
                CMD_WRITE if !aligned => EINVAL,
                _ => 0,
            }
        })
        .collect();
    let mut bufs: Vec<Vec<u8>> = batch
        .iter()
        .zip(&errs)
        .map(|(q, &e)| {
            if q.ty == CMD_READ && e == 0 {
                pooled(pool, q.len as usize)
            } else {
                Vec::new()
            }
        })
        .collect();
    let mut which = Vec::new();
    let mut ios: Vec<Io<'_>> = Vec::new();
    for (k, (q, buf)) in batch.iter().zip(bufs.iter_mut()).enumerate() {
        if errs[k] != 0 {
            continue;
        }
        which.push(k);
        ios.push(if q.ty == CMD_READ {
            Io::Read {
                offset: q.offset,
                buf: buf.as_mut_slice(),
            }
        } else {
            Io::Write {
                offset: q.offset,
                data: &q.payload,
            }
        });
    }
    let results = d.batch(&mut ios);
    drop(ios);
    // One result per request; one missing is a failure, not a success.
    let mut results = results.into_iter();
    for k in which {
        match results.next() {
            Some(Ok(())) => {}
            Some(Err(e)) => errs[k] = errno(&e),
            None => errs[k] = EIO,
        }
    }
    batch
        .iter()
        .zip(bufs)
        .enumerate()
        .map(|(k, (q, buf))| {
            let data = if q.ty == CMD_READ && errs[k] == 0 {
                buf
            } else {
                Vec::new()
            };
            (errs[k], q.handle, data)
        })
        .collect()
}

/// Any other request (or a FUA write), alone.
fn serve_one(d: &dyn BlockDevice, q: &Request) -> Reply {
    let (offset, len, flags, ty) = (q.offset, q.len, q.flags, q.ty);
    let in_range = offset
        .checked_add(u64::from(len))
        .is_some_and(|end| end <= d.size());
    let aligned = offset % 512 == 0 && len % 512 == 0;
    let fail = |e: io::Error| errno(&e);
    match ty {
        CMD_READ => {
            let mut buf = vec![0u8; len as usize];
            let err = if !in_range || !aligned {
                EINVAL
            } else {
                d.read_at(offset, &mut buf).map_or_else(fail, |()| 0)
            };
            (err, q.handle, if err == 0 { buf } else { Vec::new() })
        }
        CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM => {
            let err = if d.read_only() {
                EPERM
            } else if ty == CMD_TRIM && !d.can_discard() {
                EINVAL
            } else if !in_range {
                ENOSPC
            } else if !aligned {
                EINVAL
            } else {
                let r = match ty {
                    CMD_TRIM => d.discard(offset, u64::from(len)),
                    CMD_WRITE_ZEROES => d.write_at(offset, &vec![0u8; len as usize]),
                    _ => d.write_at(offset, &q.payload),
                };
                let r = r.and_then(|()| {
                    if flags & CMD_FLAG_FUA != 0 {
                        d.flush()
                    } else {
                        Ok(())
                    }
                });
                r.map_or_else(fail, |()| 0)
            };
            (err, q.handle, Vec::new())
        }
        CMD_FLUSH => {
            let err = d.flush().map_or_else(fail, |()| 0);
            (err, q.handle, Vec::new())
        }
        _ => (EINVAL, q.handle, Vec::new()),
    }
}

impl BlockDevice for crate::storage::MemStorage {
    fn size(&self) -> u64 {
        crate::storage::Storage::size(self)
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        crate::storage::Storage::read_at(self, buf, offset)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        crate::storage::Storage::write_at(self, buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        crate::storage::Storage::flush(self)
    }
    fn can_discard(&self) -> bool {
        true
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        crate::storage::Storage::discard(self, offset, len)
    }
}

/// Serves `path` (a fresh unix socket) on a thread, until the returned
/// flag is set (the listener then closes).
pub fn export(
    path: &std::path::Path,
    name: &str,
    dev: Shared,
) -> io::Result<Arc<std::sync::atomic::AtomicBool>> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    let name = name.to_string();
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let g = gone.clone();
    std::thread::spawn(move || serve(listener, name, dev, g));
    Ok(gone)
}

/// A client's stream, for tests.
pub fn connect(path: &std::path::Path) -> io::Result<UnixStream> {
    UnixStream::connect(path)
}
