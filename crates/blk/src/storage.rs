//! Storage engines behind one trait. So far a raw file (or block device)
//! with positioned reads and writes; io_uring and NBD come later.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What a disk's contents live on.
pub trait Storage: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Reads `buf.len()` bytes at `offset` (all of them, or an error).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Reads straight into `dst` (a guest's mapped pages, one slice after
    /// another) at `offset`, all of it or an error; `None` if this engine
    /// cannot, and the caller reads into its own buffer and copies.
    fn read_into(&self, _dst: &[abi::VolatileSlice<'_>], _offset: u64) -> Option<io::Result<()>> {
        None
    }
    /// Writes `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Everything written so far is on stable storage.
    fn flush(&self) -> io::Result<()>;
    /// Gives `len` bytes at `offset` back (zeroes them, at least).
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Several reads and writes that arrived together, each with its
    /// result: one after another unless the engine does better (a file:
    /// one io_uring submission).
    fn submit(&self, ios: &mut [StorageIo<'_>]) -> Vec<io::Result<()>> {
        ios.iter_mut()
            .map(|io| match io {
                StorageIo::Read { offset, buf } => self.read_at(buf, *offset),
                StorageIo::Write { offset, data } => self.write_at(data, *offset),
            })
            .collect()
    }
}

/// One read or write of a batch ([`Storage::submit`], and blkfront's).
pub enum StorageIo<'a> {
    /// Read into `buf` from `offset`.
    Read {
        /// Where on the disk.
        offset: u64,
        /// What it reads into.
        buf: &'a mut [u8],
    },
    /// Write `data` at `offset`.
    Write {
        /// Where on the disk.
        offset: u64,
        /// What it writes.
        data: &'a [u8],
    },
}

impl StorageIo<'_> {
    /// Where on the disk.
    pub fn offset(&self) -> u64 {
        match self {
            StorageIo::Read { offset, .. } | StorageIo::Write { offset, .. } => *offset,
        }
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        match self {
            StorageIo::Read { buf, .. } => buf.len(),
            StorageIo::Write { data, .. } => data.len(),
        }
    }

    /// Whether it moves nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A raw image file or block device.
pub struct FileStorage {
    file: File,
    size: u64,
    /// Opened `O_DIRECT`: I/O bypasses the page cache, on buffers aligned
    /// to 4096 (or, for large reads into a guest's pages, to a sector).
    direct: bool,
    /// Batches go through io_urings of ours (`O_DIRECT` files), one per
    /// batch in flight, kept for the next ones; `None` (buffered, or the
    /// kernel gave none): one `pread`/`pwrite` after another.
    rings: Option<std::sync::Mutex<Vec<crate::sys::Uring>>>,
    /// `O_DIRECT` reads may go straight into memory aligned to a sector
    /// only (a guest's segments), as found at open; off for good if one
    /// is refused.
    direct_into: std::sync::atomic::AtomicBool,
}

/// The smallest `O_DIRECT` read made straight into a guest's pages: one
/// `preadv` at a time, it is slower than a batch through io_uring for
/// small reads (4 KiB reads fell to a fraction when all went this way).
const DIRECT_INTO_MIN: usize = 64 << 10;

/// io_urings a file keeps between batches (one a queue's serving thread
/// at once, at most).
const KEPT_RINGS: usize = 8;

/// Entries of a file's io_uring (a ring's worth of requests).
const URING_ENTRIES: u32 = 64;

/// The alignment `O_DIRECT` buffers get (a page: enough for any logical
/// block size up to it).
pub(crate) const DIRECT_ALIGN: usize = 4096;

impl FileStorage {
    /// Opens `path` for reading, and writing if `writable`.
    pub fn open(path: &Path, writable: bool) -> io::Result<FileStorage> {
        Self::open_with(path, writable, false)
    }

    /// As [`open`](Self::open), and with `direct` bypassing the page cache
    /// (`O_DIRECT`, what xl's `direct-io-safe` lets a backend do); where
    /// the file system refuses it, buffered.
    pub fn open_with(path: &Path, writable: bool, direct: bool) -> io::Result<FileStorage> {
        use std::os::unix::fs::OpenOptionsExt;
        let open = |flags: i32| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(writable)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match direct {
            true => match open(libc::O_DIRECT) {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(0)?, false),
                Err(e) => return Err(e),
            },
            false => (open(0)?, false),
        };
        // A block device's metadata says 0: its end says its size.
        let size = {
            use std::io::Seek;
            let mut f = &file;
            f.seek(std::io::SeekFrom::End(0))?
        };
        // Our I/O is in 512-byte sectors: a file or device whose logical
        // block is larger (4Kn disks, 4K loop or dm-crypt sectors) refuses
        // 512-byte direct I/O; it is used buffered.
        let mut direct_into = false;
        if direct && size >= 1024 {
            let mut raw = Vec::new();
            let probe = aligned(&mut raw, 1024);
            if let Err(e) = file.read_exact_at(&mut probe[..512], 512) {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    return Self::open_with(path, writable, false);
                }
                return Err(e);
            }
            // And into memory aligned to a sector, not a page.
            direct_into = file.read_exact_at(&mut probe[512..], 512).is_ok();
        }
        // io_uring for O_DIRECT, where the kernel's I/O is asynchronous
        // anyway; buffered, through the page cache, one `pread`/`pwrite`
        // after another measured faster here (io_uring hands buffered I/O
        // to worker threads: 81-118k 4 KiB reads a second against
        // 148-166k).
        let rings = if direct {
            crate::sys::Uring::new(URING_ENTRIES)
                .ok()
                .map(|r| std::sync::Mutex::new(vec![r]))
        } else {
            None
        };
        Ok(FileStorage {
            file,
            size,
            direct,
            rings,
            direct_into: direct_into.into(),
        })
    }

    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Whether batches go through io_uring.
    pub fn has_uring(&self) -> bool {
        self.rings.is_some()
    }
}

/// A zeroed buffer of `len` bytes aligned for `O_DIRECT`, inside `raw`.
fn aligned(raw: &mut Vec<u8>, len: usize) -> &mut [u8] {
    raw.clear();
    aligned_window(raw, len)
}

/// `len` bytes of `raw` aligned for `O_DIRECT` (`raw` grown to hold them;
/// bytes it held already are not zeroed again).
pub(crate) fn aligned_window(raw: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if raw.len() < len + DIRECT_ALIGN {
        raw.resize(len + DIRECT_ALIGN, 0);
    }
    let off = raw.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
    &mut raw[off..off + len]
}

/// Whether `O_DIRECT` can use `buf` as it is: page-aligned, whole sectors.
fn direct_ready(buf: &[u8]) -> bool {
    buf.as_ptr() as usize % DIRECT_ALIGN == 0 && buf.len() % 512 == 0
}

impl Storage for FileStorage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if !self.direct || direct_ready(buf) {
            return self.file.read_exact_at(buf, offset);
        }
        let mut raw = Vec::new();
        let tmp = aligned(&mut raw, buf.len());
        self.file.read_exact_at(tmp, offset)?;
        buf.copy_from_slice(tmp);
        Ok(())
    }

    /// A buffered file; an `O_DIRECT` one for a read of at least
    /// [`DIRECT_INTO_MIN`] whose slices are whole sectors at sector
    /// boundaries (smaller ones go in the batch through io_uring, which
    /// keeps many at the disk at once).
    fn read_into(&self, dst: &[abi::VolatileSlice<'_>], offset: u64) -> Option<io::Result<()>> {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.direct {
            return Some(crate::sys::preadv_exact(&self.file, dst, offset));
        }
        let total: usize = dst.iter().map(abi::VolatileSlice::len).sum();
        let sectors = dst
            .iter()
            .all(|s| s.as_ptr() as usize % 512 == 0 && s.len() % 512 == 0);
        if total < DIRECT_INTO_MIN || !sectors || !self.direct_into.load(Relaxed) {
            return None;
        }
        match crate::sys::preadv_exact(&self.file, dst, offset) {
            // Memory the kernel will not read into directly (alignment,
            // or pages it cannot pin): through our buffers from now on.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EFAULT)) => {
                self.direct_into.store(false, Relaxed);
                None
            }
            r => Some(r),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.direct || direct_ready(buf) {
            return self.file.write_all_at(buf, offset);
        }
        let mut raw = Vec::new();
        let tmp = aligned(&mut raw, buf.len());
        tmp.copy_from_slice(buf);
        self.file.write_all_at(tmp, offset)
    }

    /// With `O_DIRECT` too: the data is past the page cache, but maybe in
    /// the device's cache, which `fdatasync` flushes.
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn submit(&self, ios: &mut [StorageIo<'_>]) -> Vec<io::Result<()>> {
        use crate::sys::RawIo;
        // A ring of our own for this batch: batches of other queues go on
        // at the same time.
        let ring = self.rings.as_ref().and_then(|rings| {
            let kept = rings.lock().ok()?.pop();
            kept.or_else(|| crate::sys::Uring::new(URING_ENTRIES).ok())
        });
        let Some(mut ring) = ring else {
            return ios
                .iter_mut()
                .map(|io| match io {
                    StorageIo::Read { offset, buf } => self.read_at(buf, *offset),
                    StorageIo::Write { offset, data } => self.write_at(data, *offset),
                })
                .collect();
        };
        // O_DIRECT (the only files with a ring): buffers that are not
        // aligned go through aligned bounce buffers.
        let mut bounce: Vec<Vec<u8>> = ios.iter().map(|_| Vec::new()).collect();
        let mut raw: Vec<RawIo<'_>> = Vec::with_capacity(ios.len());
        for (io, b) in ios.iter_mut().zip(bounce.iter_mut()) {
            match io {
                StorageIo::Read { offset, buf } => {
                    if direct_ready(buf) {
                        raw.push(RawIo::Read(buf, *offset));
                    } else {
                        raw.push(RawIo::Read(aligned(b, buf.len()), *offset));
                    }
                }
                StorageIo::Write { offset, data } if direct_ready(data) => {
                    raw.push(RawIo::Write(data, *offset));
                }
                StorageIo::Write { offset, data } => {
                    let t = aligned(b, data.len());
                    t.copy_from_slice(data);
                    raw.push(RawIo::Write(t, *offset));
                }
            }
        }
        let results = ring.run(&self.file, &mut raw);
        drop(raw);
        if let Some(Ok(mut rings)) = self.rings.as_ref().map(|r| r.lock()) {
            if rings.len() < KEPT_RINGS {
                rings.push(ring);
            }
        }
        for ((io, b), r) in ios.iter_mut().zip(bounce.iter_mut()).zip(&results) {
            if let (StorageIo::Read { buf, .. }, Ok(()), false) = (io, r, b.is_empty()) {
                let n = buf.len();
                let off = b.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
                buf.copy_from_slice(&b[off..off + n]);
            }
        }
        results
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match crate::sys::punch_hole(&self.file, offset, len) {
            Ok(()) => Ok(()),
            // A file system (or device) without holes: zeroes, a
            // megabyte at a time, through `write_at` (aligned if O_DIRECT).
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                let zeros = vec![0u8; (len.min(1 << 20)) as usize];
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(zeros.len() as u64) as usize;
                    self.write_at(&zeros[..n], offset + done)?;
                    done += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// A disk in memory, for tests and fuzzing.
pub struct MemStorage {
    data: std::sync::Mutex<Vec<u8>>,
    /// Flushes so far.
    pub flushes: std::sync::atomic::AtomicU64,
}

impl MemStorage {
    /// `size` zero bytes.
    pub fn new(size: usize) -> MemStorage {
        MemStorage {
            data: std::sync::Mutex::new(vec![0; size]),
            flushes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.lock().map(|d| d.clone()).unwrap_or_default()
    }

    fn range(&self, len: usize, offset: u64) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?;
        if end as u64 > self.size() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(start..end)
    }
}

impl Storage for MemStorage {
    fn size(&self) -> u64 {
        self.data.lock().map_or(0, |d| d.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let r = self.range(buf.len(), offset)?;
        let d = self.data.lock().map_err(|_| io::ErrorKind::Other)?;
        buf.copy_from_slice(&d[r]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let r = self.range(buf.len(), offset)?;
        let mut d = self.data.lock().map_err(|_| io::ErrorKind::Other)?;
        d[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        let r = self.range(len, offset)?;
        let mut d = self.data.lock().map_err(|_| io::ErrorKind::Other)?;
        d[r].fill(0);
        Ok(())
    }
}
