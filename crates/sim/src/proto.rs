//! The hypervisor's control protocol: the sim's hypercalls, one seqpacket
//! datagram per request and one per reply, little-endian, descriptors
//! passed alongside with `SCM_RIGHTS`.
//!
//! The decoder is fed by any process that can reach the socket, so it
//! checks every length and never trusts a count (fuzz target `hv_proto`).

use abi::{DomId, GrantRef, Mfn, Pfn, Port};

/// Length of an attach token.
pub const TOKEN_LEN: usize = 32;
/// Most domains one `DomainList` reply carries.
pub const MAX_LIST: usize = 1024;

/// A request to the hypervisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Attach as dom0 (checked by `SO_PEERCRED`).
    AttachDom0,
    /// Attach as the domain the token was issued for.
    AttachGuest {
        /// The one-time token.
        token: [u8; TOKEN_LEN],
    },
    /// Allocate pages of our own memory.
    AllocPages {
        /// How many, contiguous in pseudo-physical space.
        count: u64,
    },
    /// Free pages of our own memory.
    FreePages {
        /// The first.
        pfn: Pfn,
        /// How many.
        count: u64,
    },
    /// Hand us a block of free grant references (fewer than asked, if
    /// fewer are left; `ENOSPC` if none are, `EINVAL` for none).
    AllocGrantRefs {
        /// How many at most.
        count: u32,
    },
    /// `XENMEM_exchange` for machine-contiguous frames.
    Exchange {
        /// The first page.
        pfn: Pfn,
        /// How many pages.
        count: u64,
        /// Every new frame lies below `2^address_bits`.
        address_bits: u32,
    },
    /// `EVTCHNOP_alloc_unbound`.
    EvtchnAllocUnbound {
        /// Who may bind it.
        remote: DomId,
    },
    /// `EVTCHNOP_bind_interdomain`.
    EvtchnBindInterdomain {
        /// The other domain.
        remote: DomId,
        /// Its unbound port.
        remote_port: Port,
    },
    /// `EVTCHNOP_bind_virq`.
    EvtchnBindVirq {
        /// `VIRQ_*`.
        virq: u32,
    },
    /// `EVTCHNOP_close`.
    EvtchnClose {
        /// Our port.
        port: Port,
    },
    /// The descriptor that signals the other end of our port.
    EvtchnPeer {
        /// Our port.
        port: Port,
    },
    /// Create a domain (dom0 only).
    DomainCreate {
        /// Memory in pages.
        pages: u64,
        /// Grant-table frames.
        grant_frames: u32,
    },
    /// Destroy a domain (dom0 only).
    DomainDestroy {
        /// Which.
        domid: DomId,
    },
    /// Pause or unpause a domain (dom0 only).
    DomainPause {
        /// Which.
        domid: DomId,
        /// Pause (true) or unpause.
        paused: bool,
    },
    /// List domains (dom0 only).
    DomainList,
    /// Machine memory totals (`XEN_SYSCTL_physinfo`; dom0 only).
    Physinfo,
    /// We are about to map a domain's memory: keep its frames until we
    /// release it, even if it dies (dom0 only).
    Hold {
        /// Which.
        domid: DomId,
    },
    /// We no longer map anything of a domain.
    Release {
        /// Which.
        domid: DomId,
    },
    /// `SCHEDOP_shutdown` of the calling domain (a guest only).
    Shutdown {
        /// `SHUTDOWN_*`.
        reason: u8,
    },
}

/// One domain of a `DomainList` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedDomain {
    /// Its id.
    pub domid: DomId,
    /// Memory in pages.
    pub pages: u64,
    /// Bit 0: paused, bit 1: dying, bit 2: attached, bit 3: shut down.
    pub flags: u8,
    /// `SHUTDOWN_*`, when bit 3 of `flags` is set.
    pub reason: u8,
}

/// A reply from the hypervisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The request failed with `errno`.
    Error {
        /// A positive Linux errno.
        errno: i32,
    },
    /// Done, nothing to say.
    Ok,
    /// Attached; descriptors: machine memfd, domain-info memfd, and for
    /// dom0 the control memfd and its pin log ([`crate::pinlog`]).
    Attached {
        /// Who we are.
        domid: DomId,
        /// Our memory in pages.
        pages: u64,
        /// Frames of machine memory.
        machine_pages: u64,
        /// Slots of the control area (dom0).
        max_slots: u32,
        /// The first uid of the host's confined guests (a guest's is this
        /// plus its domid), 0 if they are not confined (`confine`).
        guest_ids: u32,
        /// Our grant-table frames.
        grant_frames: Vec<Mfn>,
    },
    /// A page number.
    Pfn(Pfn),
    /// A frame number.
    Mfn(Mfn),
    /// A block of grant references.
    GrantRefs {
        /// The first.
        first: GrantRef,
        /// How many.
        count: u32,
    },
    /// A port; descriptors: the read end of its event pipe, and for a
    /// bound interdomain port a write end of the peer's.
    Port(Port),
    /// The peer of a port; descriptor: a write end of the peer's event
    /// pipe, if bound.
    Peer {
        /// Whether the port is bound (a descriptor follows).
        bound: bool,
        /// The port's binding generation when answered.
        generation: u32,
    },
    /// A new domain.
    Created {
        /// Its id.
        domid: DomId,
        /// The token its process attaches with.
        token: [u8; TOKEN_LEN],
    },
    /// Domains.
    List(Vec<ListedDomain>),
    /// Machine memory totals, in frames.
    Physinfo {
        /// Frames in all.
        total: u64,
        /// Frames owned by no domain.
        free: u64,
    },
}

/// A message that does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ends early.
    #[error("message truncated")]
    Truncated,
    /// Unknown message type.
    #[error("unknown message type {0}")]
    UnknownType(u16),
    /// Bytes are left over.
    #[error("trailing bytes")]
    Trailing,
    /// A count exceeds what a message may carry.
    #[error("count out of range")]
    TooMany,
}

struct Enc(Vec<u8>);

impl Enc {
    fn new(tag: u16) -> Enc {
        Enc(tag.to_le_bytes().to_vec())
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
}

struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        Ok(self.u8()? != 0)
    }
    fn done<T>(self, v: T) -> Result<T, DecodeError> {
        if self.0.is_empty() {
            Ok(v)
        } else {
            Err(DecodeError::Trailing)
        }
    }
}

impl Request {
    /// Encodes the request as one datagram.
    pub fn encode(&self) -> Vec<u8> {
        use Request::*;
        match self {
            AttachDom0 => Enc::new(1),
            AttachGuest { token } => Enc::new(2).bytes(token),
            AllocPages { count } => Enc::new(3).u64(*count),
            FreePages { pfn, count } => Enc::new(4).u64(pfn.0).u64(*count),
            AllocGrantRefs { count } => Enc::new(5).u32(*count),
            Exchange {
                pfn,
                count,
                address_bits,
            } => Enc::new(6).u64(pfn.0).u64(*count).u32(*address_bits),
            EvtchnAllocUnbound { remote } => Enc::new(7).u16(remote.0),
            EvtchnBindInterdomain {
                remote,
                remote_port,
            } => Enc::new(8).u16(remote.0).u32(remote_port.0),
            EvtchnBindVirq { virq } => Enc::new(9).u32(*virq),
            EvtchnClose { port } => Enc::new(10).u32(port.0),
            EvtchnPeer { port } => Enc::new(11).u32(port.0),
            DomainCreate {
                pages,
                grant_frames,
            } => Enc::new(12).u64(*pages).u32(*grant_frames),
            DomainDestroy { domid } => Enc::new(13).u16(domid.0),
            DomainPause { domid, paused } => Enc::new(14).u16(domid.0).u8(u8::from(*paused)),
            DomainList => Enc::new(15),
            Hold { domid } => Enc::new(16).u16(domid.0),
            Release { domid } => Enc::new(17).u16(domid.0),
            Physinfo => Enc::new(18),
            Shutdown { reason } => Enc::new(19).u8(*reason),
        }
        .0
    }

    /// Decodes one datagram.
    pub fn decode(buf: &[u8]) -> Result<Request, DecodeError> {
        use Request::*;
        let mut d = Dec(buf);
        let req = match d.u16()? {
            1 => AttachDom0,
            2 => AttachGuest { token: d.array()? },
            3 => AllocPages { count: d.u64()? },
            4 => FreePages {
                pfn: Pfn(d.u64()?),
                count: d.u64()?,
            },
            5 => AllocGrantRefs { count: d.u32()? },
            6 => Exchange {
                pfn: Pfn(d.u64()?),
                count: d.u64()?,
                address_bits: d.u32()?,
            },
            7 => EvtchnAllocUnbound {
                remote: DomId(d.u16()?),
            },
            8 => EvtchnBindInterdomain {
                remote: DomId(d.u16()?),
                remote_port: Port(d.u32()?),
            },
            9 => EvtchnBindVirq { virq: d.u32()? },
            10 => EvtchnClose {
                port: Port(d.u32()?),
            },
            11 => EvtchnPeer {
                port: Port(d.u32()?),
            },
            12 => DomainCreate {
                pages: d.u64()?,
                grant_frames: d.u32()?,
            },
            13 => DomainDestroy {
                domid: DomId(d.u16()?),
            },
            14 => DomainPause {
                domid: DomId(d.u16()?),
                paused: d.bool()?,
            },
            15 => DomainList,
            16 => Hold {
                domid: DomId(d.u16()?),
            },
            17 => Release {
                domid: DomId(d.u16()?),
            },
            18 => Physinfo,
            19 => Shutdown { reason: d.u8()? },
            t => return Err(DecodeError::UnknownType(t)),
        };
        d.done(req)
    }
}

impl Reply {
    /// Encodes the reply as one datagram.
    pub fn encode(&self) -> Vec<u8> {
        use Reply::*;
        match self {
            Error { errno } => Enc::new(1).u32(*errno as u32),
            Ok => Enc::new(2),
            Attached {
                domid,
                pages,
                machine_pages,
                max_slots,
                guest_ids,
                grant_frames,
            } => {
                let mut e = Enc::new(3)
                    .u16(domid.0)
                    .u64(*pages)
                    .u64(*machine_pages)
                    .u32(*max_slots)
                    .u32(*guest_ids)
                    .u32(grant_frames.len() as u32);
                for f in grant_frames {
                    e = e.u64(f.0);
                }
                e
            }
            Pfn(p) => Enc::new(4).u64(p.0),
            Mfn(m) => Enc::new(5).u64(m.0),
            GrantRefs { first, count } => Enc::new(6).u32(first.0).u32(*count),
            Port(p) => Enc::new(7).u32(p.0),
            Peer { bound, generation } => Enc::new(8).u8(u8::from(*bound)).u32(*generation),
            Created { domid, token } => Enc::new(9).u16(domid.0).bytes(token),
            List(doms) => {
                let mut e = Enc::new(10).u32(doms.len() as u32);
                for d in doms {
                    e = e.u16(d.domid.0).u64(d.pages).u8(d.flags).u8(d.reason);
                }
                e
            }
            Physinfo { total, free } => Enc::new(11).u64(*total).u64(*free),
        }
        .0
    }

    /// Decodes one datagram.
    pub fn decode(buf: &[u8]) -> Result<Reply, DecodeError> {
        use Reply::*;
        let mut d = Dec(buf);
        let rep = match d.u16()? {
            1 => Error {
                errno: d.u32()? as i32,
            },
            2 => Ok,
            3 => {
                let domid = DomId(d.u16()?);
                let pages = d.u64()?;
                let machine_pages = d.u64()?;
                let max_slots = d.u32()?;
                let guest_ids = d.u32()?;
                let n = d.u32()? as usize;
                if n > abi::grant_table::DEFAULT_MAX_GRANT_FRAMES as usize {
                    return Err(DecodeError::TooMany);
                }
                let mut grant_frames = Vec::with_capacity(n);
                for _ in 0..n {
                    grant_frames.push(abi::Mfn(d.u64()?));
                }
                Attached {
                    domid,
                    pages,
                    machine_pages,
                    max_slots,
                    guest_ids,
                    grant_frames,
                }
            }
            4 => Pfn(abi::Pfn(d.u64()?)),
            5 => Mfn(abi::Mfn(d.u64()?)),
            6 => GrantRefs {
                first: GrantRef(d.u32()?),
                count: d.u32()?,
            },
            7 => Port(abi::Port(d.u32()?)),
            8 => Peer {
                bound: d.bool()?,
                generation: d.u32()?,
            },
            9 => Created {
                domid: DomId(d.u16()?),
                token: d.array()?,
            },
            10 => {
                let n = d.u32()? as usize;
                if n > MAX_LIST {
                    return Err(DecodeError::TooMany);
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(ListedDomain {
                        domid: DomId(d.u16()?),
                        pages: d.u64()?,
                        flags: d.u8()?,
                        reason: d.u8()?,
                    });
                }
                List(v)
            }
            11 => Physinfo {
                total: d.u64()?,
                free: d.u64()?,
            },
            t => return Err(DecodeError::UnknownType(t)),
        };
        d.done(rep)
    }
}

/// One encoded example of every message, as seeds for the fuzz corpus.
pub fn examples() -> Vec<Vec<u8>> {
    use abi::Mfn;
    let reqs = [
        Request::AttachDom0,
        Request::AttachGuest {
            token: [7; TOKEN_LEN],
        },
        Request::AllocPages { count: 3 },
        Request::FreePages {
            pfn: Pfn(9),
            count: 1,
        },
        Request::AllocGrantRefs { count: 64 },
        Request::Exchange {
            pfn: Pfn(1),
            count: 16,
            address_bits: 32,
        },
        Request::EvtchnAllocUnbound { remote: DomId(3) },
        Request::EvtchnBindInterdomain {
            remote: DomId(3),
            remote_port: Port(5),
        },
        Request::EvtchnBindVirq { virq: 3 },
        Request::EvtchnClose { port: Port(2) },
        Request::EvtchnPeer { port: Port(2) },
        Request::DomainCreate {
            pages: 256,
            grant_frames: 4,
        },
        Request::DomainDestroy { domid: DomId(1) },
        Request::DomainPause {
            domid: DomId(1),
            paused: true,
        },
        Request::DomainList,
        Request::Hold { domid: DomId(1) },
        Request::Release { domid: DomId(1) },
        Request::Physinfo,
        Request::Shutdown { reason: 3 },
    ];
    let reps = [
        Reply::Error { errno: 22 },
        Reply::Ok,
        Reply::Attached {
            domid: DomId(2),
            pages: 10,
            machine_pages: 100,
            max_slots: 4,
            guest_ids: 0x7000_8000,
            grant_frames: vec![Mfn(5), Mfn(6)],
        },
        Reply::Pfn(Pfn(4)),
        Reply::Mfn(Mfn(4)),
        Reply::GrantRefs {
            first: GrantRef(8),
            count: 8,
        },
        Reply::Port(Port(1)),
        Reply::Peer {
            bound: true,
            generation: 3,
        },
        Reply::Created {
            domid: DomId(1),
            token: [1; TOKEN_LEN],
        },
        Reply::List(vec![ListedDomain {
            domid: DomId(0),
            pages: 1,
            flags: 4 | 8,
            reason: 1,
        }]),
        Reply::Physinfo { total: 9, free: 3 },
    ];
    reqs.iter()
        .map(Request::encode)
        .chain(reps.iter().map(Reply::encode))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_round_trips_as_what_it_is() {
        let ex = examples();
        assert_eq!(ex.len(), 30);
        let (reqs, reps) = ex.split_at(19);
        for e in reqs {
            let r = Request::decode(e).unwrap();
            assert_eq!(&r.encode(), e);
        }
        for e in reps {
            let r = Reply::decode(e).unwrap();
            assert_eq!(&r.encode(), e);
        }
    }

    #[test]
    fn truncated_and_padded_messages_are_refused() {
        let enc = Request::EvtchnBindInterdomain {
            remote: DomId(3),
            remote_port: Port(5),
        }
        .encode();
        assert_eq!(
            Request::decode(&enc[..enc.len() - 1]),
            Err(DecodeError::Truncated)
        );
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(Request::decode(&long), Err(DecodeError::Trailing));
        assert_eq!(
            Request::decode(&[0xff, 0xff]),
            Err(DecodeError::UnknownType(0xffff))
        );
    }

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        let mut b = vec![10, 0];
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Reply::decode(&b), Err(DecodeError::TooMany));
    }
}
