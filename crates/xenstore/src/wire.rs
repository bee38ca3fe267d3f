//! Message framing: a 16-byte `xsd_sockmsg` header (type, req_id, tx_id,
//! len, little-endian on x86) followed by `len` bytes of payload, on a unix
//! socket or a domain's ring alike.

use abi::xs_wire::XENSTORE_PAYLOAD_MAX;

/// Bytes of a header.
pub const HEADER_LEN: usize = 16;

macro_rules! msg_types {
    ($($name:ident = $value:expr, $doc:literal;)*) => {
        /// A message type of `xs_wire.h` (`XS_*`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum MsgType {
            $(
                #[doc = $doc]
                $name,
            )*
            /// A value no message type has.
            Unknown(u32),
        }

        impl MsgType {
            /// The type for a wire value.
            pub fn from_u32(v: u32) -> MsgType {
                match v {
                    $(x if x == $value => MsgType::$name,)*
                    x => MsgType::Unknown(x),
                }
            }

            /// The wire value.
            pub fn to_u32(self) -> u32 {
                match self {
                    $(MsgType::$name => $value,)*
                    MsgType::Unknown(x) => x,
                }
            }
        }
    };
}

use abi::xs_wire as xs;

msg_types! {
    Control = xs::XS_CONTROL, "`XS_CONTROL` (formerly `XS_DEBUG`).";
    Directory = xs::XS_DIRECTORY, "`XS_DIRECTORY`.";
    Read = xs::XS_READ, "`XS_READ`.";
    GetPerms = xs::XS_GET_PERMS, "`XS_GET_PERMS`.";
    Watch = xs::XS_WATCH, "`XS_WATCH`.";
    Unwatch = xs::XS_UNWATCH, "`XS_UNWATCH`.";
    TransactionStart = xs::XS_TRANSACTION_START, "`XS_TRANSACTION_START`.";
    TransactionEnd = xs::XS_TRANSACTION_END, "`XS_TRANSACTION_END`.";
    Introduce = xs::XS_INTRODUCE, "`XS_INTRODUCE`.";
    Release = xs::XS_RELEASE, "`XS_RELEASE`.";
    GetDomainPath = xs::XS_GET_DOMAIN_PATH, "`XS_GET_DOMAIN_PATH`.";
    Write = xs::XS_WRITE, "`XS_WRITE`.";
    Mkdir = xs::XS_MKDIR, "`XS_MKDIR`.";
    Rm = xs::XS_RM, "`XS_RM`.";
    SetPerms = xs::XS_SET_PERMS, "`XS_SET_PERMS`.";
    WatchEvent = xs::XS_WATCH_EVENT, "`XS_WATCH_EVENT`.";
    Error = xs::XS_ERROR, "`XS_ERROR`.";
    IsDomainIntroduced = xs::XS_IS_DOMAIN_INTRODUCED, "`XS_IS_DOMAIN_INTRODUCED`.";
    Resume = xs::XS_RESUME, "`XS_RESUME`.";
    SetTarget = xs::XS_SET_TARGET, "`XS_SET_TARGET`.";
    ResetWatches = xs::XS_RESET_WATCHES, "`XS_RESET_WATCHES`.";
    DirectoryPart = xs::XS_DIRECTORY_PART, "`XS_DIRECTORY_PART`.";
    GetFeature = xs::XS_GET_FEATURE, "`XS_GET_FEATURE`.";
    SetFeature = xs::XS_SET_FEATURE, "`XS_SET_FEATURE`.";
    GetQuota = xs::XS_GET_QUOTA, "`XS_GET_QUOTA`.";
    SetQuota = xs::XS_SET_QUOTA, "`XS_SET_QUOTA`.";
}

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The message type.
    pub ty: MsgType,
    /// Chosen by the client, echoed in the reply.
    pub req_id: u32,
    /// Transaction, 0 for none.
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Decodes a header from its 16 bytes.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            ty: MsgType::from_u32(word(0)),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0; HEADER_LEN];
        for (i, w) in [self.ty.to_u32(), self.req_id, self.tx_id, self.len]
            .into_iter()
            .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        b
    }
}

/// A whole message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its type.
    pub ty: MsgType,
    /// Request id.
    pub req_id: u32,
    /// Transaction id.
    pub tx_id: u32,
    /// Its payload, at most `XENSTORE_PAYLOAD_MAX` bytes.
    pub payload: Vec<u8>,
}

/// A message too long to be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("payload of {0} bytes exceeds XENSTORE_PAYLOAD_MAX")]
pub struct TooLong(pub usize);

impl Message {
    /// A message.
    pub fn new(ty: MsgType, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Message {
        Message {
            ty,
            req_id,
            tx_id,
            payload,
        }
    }

    /// A message whose payload is `parts`, each followed by a nul.
    pub fn with_strings(ty: MsgType, req_id: u32, tx_id: u32, parts: &[&[u8]]) -> Message {
        let mut payload = Vec::new();
        for p in parts {
            payload.extend_from_slice(p);
            payload.push(0);
        }
        Message::new(ty, req_id, tx_id, payload)
    }

    /// The message with `value` appended to its payload (a `WRITE`'s value
    /// after its path).
    #[must_use]
    pub fn with_value(mut self, value: &[u8]) -> Message {
        self.payload.extend_from_slice(value);
        self
    }

    /// Header and payload, ready to send.
    pub fn encode(&self) -> Result<Vec<u8>, TooLong> {
        if self.payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(TooLong(self.payload.len()));
        }
        let h = Header {
            ty: self.ty,
            req_id: self.req_id,
            tx_id: self.tx_id,
            len: self.payload.len() as u32,
        };
        let mut v = Vec::with_capacity(HEADER_LEN + self.payload.len());
        v.extend_from_slice(&h.encode());
        v.extend_from_slice(&self.payload);
        Ok(v)
    }

    /// The payload as nul-terminated strings (`<foo>|*`); a last part
    /// without its nul is returned too.
    pub fn strings(&self) -> Vec<&[u8]> {
        split_strings(&self.payload)
    }
}

/// Splits `<a>|<b>|...` into its parts (a missing final nul is tolerated).
pub fn split_strings(payload: &[u8]) -> Vec<&[u8]> {
    let body = payload.strip_suffix(b"\0").unwrap_or(payload);
    if payload.is_empty() {
        return Vec::new();
    }
    body.split(|&b| b == 0).collect()
}

/// The peer broke the framing; the connection must be dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("message payload of {0} bytes exceeds XENSTORE_PAYLOAD_MAX")]
pub struct FramingError(pub u32);

/// Reassembles messages from a byte stream, however it is cut. Memory is
/// bounded: one header and one payload of at most `XENSTORE_PAYLOAD_MAX`.
#[derive(Default)]
pub struct Decoder {
    header: Vec<u8>,
    pending: Option<Header>,
    payload: Vec<u8>,
}

impl Decoder {
    /// A decoder at a message boundary.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Takes bytes from the front of `input` until one message is whole and
    /// returns it with the number of bytes taken; `Ok((None, n))` when all
    /// `n = input.len()` bytes were taken and more are needed.
    pub fn push(&mut self, input: &[u8]) -> Result<(Option<Message>, usize), FramingError> {
        let mut used = 0;
        if self.pending.is_none() {
            let want = HEADER_LEN - self.header.len();
            let take = want.min(input.len());
            self.header.extend_from_slice(&input[..take]);
            used += take;
            if self.header.len() < HEADER_LEN {
                return Ok((None, used));
            }
            let mut b = [0u8; HEADER_LEN];
            b.copy_from_slice(&self.header);
            self.header.clear();
            let h = Header::decode(&b);
            if h.len as usize > XENSTORE_PAYLOAD_MAX {
                return Err(FramingError(h.len));
            }
            self.payload.reserve_exact(h.len as usize);
            self.pending = Some(h);
        }
        let Some(h) = self.pending else {
            return Ok((None, used));
        };
        let want = h.len as usize - self.payload.len();
        let take = want.min(input.len() - used);
        self.payload.extend_from_slice(&input[used..used + take]);
        used += take;
        if self.payload.len() < h.len as usize {
            return Ok((None, used));
        }
        self.pending = None;
        let payload = std::mem::take(&mut self.payload);
        Ok((
            Some(Message {
                ty: h.ty,
                req_id: h.req_id,
                tx_id: h.tx_id,
                payload,
            }),
            used,
        ))
    }

    /// The bytes taken but not yet returned as a message: feeding them to
    /// a fresh decoder makes it this one (for a daemon's state file).
    pub fn buffered(&self) -> Vec<u8> {
        match self.pending {
            None => self.header.clone(),
            Some(h) => {
                let mut v = h.encode().to_vec();
                v.extend_from_slice(&self.payload);
                v
            }
        }
    }

    /// Every whole message in `input`, in order; the rest is kept.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<Vec<Message>, FramingError> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let (msg, used) = self.push(input)?;
            out.extend(msg);
            input = &input[used..];
        }
        Ok(out)
    }

    /// Whether it is between messages.
    pub fn at_boundary(&self) -> bool {
        self.pending.is_none() && self.header.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_maps_to_its_xs_wire_value() {
        for v in 0..27 {
            let t = MsgType::from_u32(v);
            assert_eq!(t.to_u32(), v);
            assert_eq!(
                matches!(t, MsgType::Unknown(_)),
                v == 20,
                "20 was XS_RESTRICT, removed"
            );
        }
        assert_eq!(MsgType::from_u32(0xffff), MsgType::Unknown(0xffff));
    }

    #[test]
    fn messages_cut_anywhere_reassemble() {
        let a = Message::with_strings(MsgType::Write, 7, 0, &[b"/a/b", b"v"]);
        let b = Message::with_strings(MsgType::Read, 8, 3, &[b"/a/b"]);
        let mut bytes = a.encode().unwrap();
        bytes.extend(b.encode().unwrap());
        for cut in 0..bytes.len() {
            let mut d = Decoder::new();
            let mut got = d.feed(&bytes[..cut]).unwrap();
            got.extend(d.feed(&bytes[cut..]).unwrap());
            assert_eq!(got, vec![a.clone(), b.clone()], "cut at {cut}");
            assert!(d.at_boundary());
        }
    }

    #[test]
    fn an_oversized_payload_is_a_framing_error_before_buffering() {
        let h = Header {
            ty: MsgType::Write,
            req_id: 0,
            tx_id: 0,
            len: 4097,
        };
        assert_eq!(Decoder::new().feed(&h.encode()), Err(FramingError(4097)));
        let m = Message::new(MsgType::Write, 0, 0, vec![0; 4097]);
        assert_eq!(m.encode(), Err(TooLong(4097)));
    }

    #[test]
    fn strings_split_on_nuls() {
        assert_eq!(split_strings(b"a\0bc\0"), vec![&b"a"[..], b"bc"]);
        assert_eq!(split_strings(b"a\0bc"), vec![&b"a"[..], b"bc"]);
        assert_eq!(split_strings(b""), Vec::<&[u8]>::new());
        assert_eq!(split_strings(b"\0"), vec![&b""[..]]);
    }
}
