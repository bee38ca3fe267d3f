//! Requests as the backend sees them: decoded from a ring slot, then
//! validated against the disk (`Disk`), so that what reaches the storage is
//! in range and what reaches the grant table names only the pages the
//! request is about.

use abi::blkif::{self, x86_32, BlkifRequest, BlkifRequestDiscard, BlkifRequestSegment};
use abi::pod::Pod;

/// The request ABI the frontend named in its `protocol` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// `x86_64-abi` (and the native one of 64-bit frontends).
    X86_64,
    /// `x86_32-abi`: no padding before the 64-bit fields.
    X86_32,
}

impl Abi {
    /// The ABI a `protocol` value names (`None` for an unknown one).
    pub fn from_protocol(p: &str) -> Option<Abi> {
        match p {
            blkif::XEN_IO_PROTO_ABI_X86_64 => Some(Abi::X86_64),
            blkif::XEN_IO_PROTO_ABI_X86_32 => Some(Abi::X86_32),
            _ => None,
        }
    }

    /// Bytes of a request slot (the ring's entry size is that of the
    /// request union).
    pub fn slot_size(self) -> usize {
        match self {
            Abi::X86_64 => core::mem::size_of::<BlkifRequest>(),
            Abi::X86_32 => core::mem::size_of::<x86_32::BlkifRequest>(),
        }
    }
}

/// What the disk is, for validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Whether writes are refused.
    pub read_only: bool,
    /// Whether `feature-discard` is advertised.
    pub discard: bool,
    /// Whether `discard-secure` is advertised.
    pub secure_discard: bool,
}

/// One segment: a granted page and the sectors of it to move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The grant.
    pub gref: u32,
    /// First sector of the page (0..=7).
    pub first: u8,
    /// Last sector of the page (first..=7).
    pub last: u8,
}

impl Segment {
    /// Byte offset in the page.
    pub fn offset(&self) -> usize {
        usize::from(self.first) * 512
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        (usize::from(self.last) - usize::from(self.first) + 1) * 512
    }

    /// Whether it moves nothing (never, once validated).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a validated request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read from `sector` into the segments, in order.
    Read {
        /// First sector.
        sector: u64,
        /// The pages.
        segments: Vec<Segment>,
    },
    /// Write the segments to `sector`; `flush` after (a barrier, and FUA
    /// semantics for the data written).
    Write {
        /// First sector.
        sector: u64,
        /// The pages.
        segments: Vec<Segment>,
        /// `WRITE_BARRIER`: on stable storage before the answer.
        flush: bool,
    },
    /// `FLUSH_DISKCACHE`: everything acknowledged is on stable storage.
    Flush,
    /// Discard sectors (securely if `secure`).
    Discard {
        /// First sector.
        sector: u64,
        /// Sectors.
        count: u64,
        /// `BLKIF_DISCARD_SECURE`.
        secure: bool,
    },
}

/// A request, decoded and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The frontend's id, echoed in the response.
    pub id: u64,
    /// The operation byte, echoed in the response.
    pub operation: u8,
    /// What to do.
    pub op: Op,
}

/// Why a request is refused: the status its response carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `BLKIF_RSP_EOPNOTSUPP`: an operation we do not offer.
    #[error("operation {0} is not supported")]
    NotSupported(u8),
    /// `BLKIF_RSP_ERROR`: a malformed or out-of-range request.
    #[error("bad request: {0}")]
    Bad(&'static str),
}

impl Refused {
    /// The response status.
    pub fn status(self) -> i16 {
        match self {
            Refused::NotSupported(_) => blkif::BLKIF_RSP_EOPNOTSUPP,
            Refused::Bad(_) => blkif::BLKIF_RSP_ERROR,
        }
    }
}

/// The fields of a read/write request, whatever the ABI.
struct Rw {
    operation: u8,
    nr_segments: u8,
    id: u64,
    sector: u64,
    seg: [BlkifRequestSegment; blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

/// Decodes and validates the slot `bytes` (a copy of the ring's, never
/// the shared page itself). Returns the id and operation to answer with
/// even when the request is refused.
pub fn decode(abi: Abi, bytes: &[u8], disk: &Disk) -> (u64, u8, Result<Request, Refused>) {
    let (rw, discard) = match abi {
        Abi::X86_64 => {
            let Some(r) = BlkifRequest::read_from_prefix(bytes) else {
                return (0, 0, Err(Refused::Bad("short slot")));
            };
            let d = BlkifRequestDiscard::read_from_prefix(bytes);
            let rw = Rw {
                operation: r.operation,
                nr_segments: r.nr_segments,
                id: r.id,
                sector: r.sector_number,
                seg: r.seg,
            };
            (rw, d.map(|d| (d.flag, d.sector_number, d.nr_sectors)))
        }
        Abi::X86_32 => {
            let Some(r) = x86_32::BlkifRequest::read_from_prefix(bytes) else {
                return (0, 0, Err(Refused::Bad("short slot")));
            };
            let d = x86_32::BlkifRequestDiscard::read_from_prefix(bytes);
            let rw = Rw {
                operation: r.operation,
                nr_segments: r.nr_segments,
                id: r.id,
                sector: r.sector_number,
                seg: r.seg,
            };
            (rw, d.map(|d| (d.flag, d.sector_number, d.nr_sectors)))
        }
    };
    let (id, operation) = (rw.id, rw.operation);
    (id, operation, validate(&rw, discard, disk))
}

fn validate(rw: &Rw, discard: Option<(u8, u64, u64)>, disk: &Disk) -> Result<Request, Refused> {
    let op = match rw.operation {
        blkif::BLKIF_OP_READ | blkif::BLKIF_OP_WRITE | blkif::BLKIF_OP_WRITE_BARRIER => {
            let write = rw.operation != blkif::BLKIF_OP_READ;
            if write && disk.read_only {
                return Err(Refused::Bad("write to a read-only disk"));
            }
            let n = usize::from(rw.nr_segments);
            // A barrier may carry no data (it then only orders and flushes).
            if n == 0 && rw.operation != blkif::BLKIF_OP_WRITE_BARRIER {
                return Err(Refused::Bad("no segments"));
            }
            if n > blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST {
                return Err(Refused::Bad("too many segments"));
            }
            let mut segments = Vec::with_capacity(n);
            let mut sectors = 0u64;
            for s in &rw.seg[..n] {
                // A page holds 8 sectors: 0..=7, first before last.
                if s.last_sect > 7 || s.first_sect > s.last_sect {
                    return Err(Refused::Bad("bad segment sectors"));
                }
                sectors += u64::from(s.last_sect - s.first_sect) + 1;
                segments.push(Segment {
                    gref: s.gref,
                    first: s.first_sect,
                    last: s.last_sect,
                });
            }
            // A barrier without data only orders and flushes: no range.
            if n > 0 {
                in_range(rw.sector, sectors, disk)?;
            }
            if write {
                Op::Write {
                    sector: rw.sector,
                    segments,
                    flush: rw.operation == blkif::BLKIF_OP_WRITE_BARRIER,
                }
            } else {
                Op::Read {
                    sector: rw.sector,
                    segments,
                }
            }
        }
        blkif::BLKIF_OP_FLUSH_DISKCACHE => {
            // A write to the disk's cache, as Linux takes it: refused on a
            // read-only disk; its segments, if any, are not taken (Linux
            // writes them with a preflush: not built).
            if disk.read_only {
                return Err(Refused::Bad("flush of a read-only disk"));
            }
            if rw.nr_segments != 0 {
                return Err(Refused::NotSupported(rw.operation));
            }
            Op::Flush
        }
        blkif::BLKIF_OP_DISCARD => {
            let (flag, sector, count) = discard.ok_or(Refused::Bad("short slot"))?;
            if !disk.discard {
                return Err(Refused::NotSupported(rw.operation));
            }
            if disk.read_only {
                return Err(Refused::Bad("discard on a read-only disk"));
            }
            let secure = flag & blkif::BLKIF_DISCARD_SECURE != 0;
            if secure && !disk.secure_discard {
                return Err(Refused::NotSupported(rw.operation));
            }
            in_range(sector, count, disk)?;
            Op::Discard {
                sector,
                count,
                secure,
            }
        }
        // Indirect requests are not built yet; anything else is unknown.
        other => return Err(Refused::NotSupported(other)),
    };
    Ok(Request {
        id: rw.id,
        operation: rw.operation,
        op,
    })
}

/// `sector .. sector + count` lies on the disk (no overflow).
fn in_range(sector: u64, count: u64, disk: &Disk) -> Result<(), Refused> {
    match sector.checked_add(count) {
        Some(end) if end <= disk.sectors => Ok(()),
        _ => Err(Refused::Bad("sector out of range")),
    }
}
