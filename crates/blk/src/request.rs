//! Requests as the backend sees them: decoded from a ring slot, then
//! validated against the disk (`Disk`), so that what reaches the storage is
//! in range and what reaches the grant table names only the pages the
//! request is about.

use abi::blkif::{
    self, x86_32, BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment,
};
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
    /// `feature-max-indirect-segments` advertised (0: no indirect
    /// requests).
    pub max_indirect_segments: u16,
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
    /// An indirect read or write whose segments are still in the
    /// frontend's indirect pages: [`indirect_segments`] makes it a `Read`
    /// or `Write` once the pages are copied in.
    Indirect {
        /// Write (else read).
        write: bool,
        /// First sector.
        sector: u64,
        /// Segments, across the pages.
        nr_segments: u16,
        /// The pages' grants (as many as the segments need).
        pages: Vec<u32>,
    },
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
    let (rw, discard, indirect) = match abi {
        Abi::X86_64 => {
            let Some(r) = BlkifRequest::read_from_prefix(bytes) else {
                return (0, 0, Err(Refused::Bad("short slot")));
            };
            let d = BlkifRequestDiscard::read_from_prefix(bytes);
            let i = BlkifRequestIndirect::read_from_prefix(bytes).map(|i| Ind {
                op: i.indirect_op,
                nr_segments: i.nr_segments,
                sector: i.sector_number,
                grefs: i.indirect_grefs,
            });
            let rw = Rw {
                operation: r.operation,
                nr_segments: r.nr_segments,
                id: r.id,
                sector: r.sector_number,
                seg: r.seg,
            };
            (rw, d.map(|d| (d.flag, d.sector_number, d.nr_sectors)), i)
        }
        Abi::X86_32 => {
            let Some(r) = x86_32::BlkifRequest::read_from_prefix(bytes) else {
                return (0, 0, Err(Refused::Bad("short slot")));
            };
            let d = x86_32::BlkifRequestDiscard::read_from_prefix(bytes);
            let i = x86_32::BlkifRequestIndirect::read_from_prefix(bytes).map(|i| Ind {
                op: i.indirect_op,
                nr_segments: i.nr_segments,
                sector: i.sector_number,
                grefs: i.indirect_grefs,
            });
            let rw = Rw {
                operation: r.operation,
                nr_segments: r.nr_segments,
                id: r.id,
                sector: r.sector_number,
                seg: r.seg,
            };
            (rw, d.map(|d| (d.flag, d.sector_number, d.nr_sectors)), i)
        }
    };
    // An indirect request's response names its inner operation, as
    // Linux's blkback answers and its blkfront checks.
    let operation = match (&indirect, rw.operation) {
        (Some(i), blkif::BLKIF_OP_INDIRECT) => i.op,
        (_, op) => op,
    };
    let id = rw.id;
    (id, operation, validate(&rw, discard, indirect, disk))
}

/// The fields of an indirect request, whatever the ABI.
struct Ind {
    op: u8,
    nr_segments: u16,
    sector: u64,
    grefs: [u32; blkif::BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
}

/// One segment checked: a page holds 8 sectors, 0..=7, first before last.
fn segment(s: &BlkifRequestSegment) -> Result<Segment, Refused> {
    if s.last_sect > 7 || s.first_sect > s.last_sect {
        return Err(Refused::Bad("bad segment sectors"));
    }
    Ok(Segment {
        gref: s.gref,
        first: s.first_sect,
        last: s.last_sect,
    })
}

/// Makes an [`Op::Indirect`] the read or write it is, from `pages` (a copy
/// of its indirect pages, one after another), checking every segment as a
/// direct request's and the whole range.
pub fn indirect_segments(op: &Op, pages: &[u8], disk: &Disk) -> Result<Op, Refused> {
    let Op::Indirect {
        write,
        sector,
        nr_segments,
        ..
    } = op
    else {
        return Err(Refused::Bad("not an indirect request"));
    };
    let n = usize::from(*nr_segments);
    let size = core::mem::size_of::<BlkifRequestSegment>();
    if pages.len() < n * size {
        return Err(Refused::Bad("short indirect pages"));
    }
    let mut segments = Vec::with_capacity(n);
    let mut sectors = 0u64;
    for raw in pages.chunks_exact(size).take(n) {
        let s = BlkifRequestSegment::read_from_prefix(raw).ok_or(Refused::Bad("short segment"))?;
        let s = segment(&s)?;
        sectors += u64::from(s.last - s.first) + 1;
        segments.push(s);
    }
    in_range(*sector, sectors, disk)?;
    Ok(if *write {
        Op::Write {
            sector: *sector,
            segments,
            flush: false,
        }
    } else {
        Op::Read {
            sector: *sector,
            segments,
        }
    })
}

fn validate(
    rw: &Rw,
    discard: Option<(u8, u64, u64)>,
    indirect: Option<Ind>,
    disk: &Disk,
) -> Result<Request, Refused> {
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
                let s = segment(s)?;
                sectors += u64::from(s.last - s.first) + 1;
                segments.push(s);
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
        blkif::BLKIF_OP_INDIRECT => {
            let i = indirect.ok_or(Refused::Bad("short slot"))?;
            if disk.max_indirect_segments == 0 {
                return Err(Refused::NotSupported(rw.operation));
            }
            let write = match i.op {
                blkif::BLKIF_OP_READ => false,
                blkif::BLKIF_OP_WRITE => true,
                _ => return Err(Refused::Bad("indirect operation not read or write")),
            };
            if write && disk.read_only {
                return Err(Refused::Bad("write to a read-only disk"));
            }
            if i.nr_segments == 0 || i.nr_segments > disk.max_indirect_segments {
                return Err(Refused::Bad("indirect segment count"));
            }
            let n = usize::from(i.nr_segments).div_ceil(blkif::SEGS_PER_INDIRECT_FRAME);
            if n > blkif::BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST {
                return Err(Refused::Bad("too many indirect pages"));
            }
            Op::Indirect {
                write,
                sector: i.sector,
                nr_segments: i.nr_segments,
                pages: i.grefs[..n].to_vec(),
            }
        }
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
