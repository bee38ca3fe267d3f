//! A blocking xenstore client over the daemon's unix socket, as
//! libxenstore's `xs_open(XS_OPEN_SOCKETONLY)` finds it: `$XENSTORED_PATH`,
//! else `$XENSTORED_RUNDIR/socket`, else `/var/run/xenstored/socket`; or
//! over any other byte stream, such as a domain's ring page
//! ([`crate::ring::RingStream`]).
//!
//! Replies are matched to requests by `req_id`; watch events that arrive
//! meanwhile are queued (at most [`MAX_QUEUED_EVENTS`]) for
//! [`Client::read_watch`].

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use crate::wire::{split_strings, Decoder, Message, MsgType};
use crate::{Perms, XsError};

/// Watch events kept while waiting for a reply; more are dropped, as a
/// client that never reads its events has no use for them.
pub const MAX_QUEUED_EVENTS: usize = 4096;

/// What a client request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon answered with an error.
    #[error("xenstore: {0}")]
    Xs(#[from] XsError),
    /// The connection failed.
    #[error("xenstore connection")]
    Io(#[from] std::io::Error),
    /// The daemon broke the protocol.
    #[error("xenstore protocol: {0}")]
    Protocol(&'static str),
}

/// A client result.
pub type Result<T> = std::result::Result<T, ClientError>;

/// A transaction id (`Tx::NONE` outside a transaction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tx(pub u32);

impl Tx {
    /// No transaction.
    pub const NONE: Tx = Tx(0);
}

/// A watch event: the path that changed and the watch's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The path (relative if the watch was).
    pub path: String,
    /// The watch's token.
    pub token: String,
}

/// The socket a client connects to by default.
pub fn default_socket() -> PathBuf {
    if let Some(p) = std::env::var_os("XENSTORED_PATH") {
        return p.into();
    }
    let rundir =
        std::env::var_os("XENSTORED_RUNDIR").unwrap_or_else(|| "/var/run/xenstored".into());
    PathBuf::from(rundir).join("socket")
}

/// A connection to xenstored over the byte stream `S`.
pub struct Client<S = UnixStream> {
    stream: S,
    decoder: Decoder,
    /// Messages read but not yet looked at.
    pending: VecDeque<Message>,
    next_req: u32,
    events: VecDeque<WatchEvent>,
}

fn nul_terminated(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

fn text(b: &[u8]) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| ClientError::Protocol("reply is not text"))
}

impl Client<UnixStream> {
    /// Connects to the socket at `path`.
    pub fn connect(path: &std::path::Path) -> Result<Client> {
        Ok(Client::over(UnixStream::connect(path)?))
    }

    /// Connects to [`default_socket`].
    pub fn open() -> Result<Client> {
        Client::connect(&default_socket())
    }
}

impl<S: Read + Write> Client<S> {
    /// A client speaking over `stream` (a domain's ring, for one).
    pub fn over(stream: S) -> Client<S> {
        Client {
            stream,
            decoder: Decoder::new(),
            pending: VecDeque::new(),
            next_req: 1,
            events: VecDeque::new(),
        }
    }

    /// The stream underneath.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// The stream underneath, to change its settings.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The next whole message from the daemon, in order.
    fn next_message(&mut self) -> Result<Message> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Ok(m);
            }
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(ClientError::Protocol("daemon closed the connection"));
            }
            let msgs = self
                .decoder
                .feed(&buf[..n])
                .map_err(|_| ClientError::Protocol("framing"))?;
            self.pending.extend(msgs);
        }
    }

    fn queue_event(&mut self, m: &Message) {
        let parts = split_strings(&m.payload);
        if let (Some(p), Some(t)) = (parts.first(), parts.get(1)) {
            if self.events.len() < MAX_QUEUED_EVENTS {
                let (path, token) = (String::from_utf8_lossy(p), String::from_utf8_lossy(t));
                self.events.push_back(WatchEvent {
                    path: path.into(),
                    token: token.into(),
                });
            }
        }
    }

    /// Sends one request and waits for its reply's payload.
    pub fn request(&mut self, ty: MsgType, tx: Tx, payload: Vec<u8>) -> Result<Vec<u8>> {
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        let msg = Message::new(ty, req_id, tx.0, payload);
        let bytes = msg.encode().map_err(|_| ClientError::Xs(XsError::TooBig))?;
        self.stream.write_all(&bytes)?;
        loop {
            let m = self.next_message()?;
            if m.ty == MsgType::WatchEvent {
                self.queue_event(&m);
                continue;
            }
            if m.req_id != req_id {
                continue;
            }
            if m.ty == MsgType::Error {
                return Err(XsError::from_payload(&m.payload)
                    .unwrap_or(XsError::Io)
                    .into());
            }
            if m.ty != ty {
                return Err(ClientError::Protocol("reply of another type"));
            }
            return Ok(m.payload);
        }
    }

    /// `XS_READ`.
    pub fn read(&mut self, tx: Tx, path: &str) -> Result<Vec<u8>> {
        self.request(MsgType::Read, tx, nul_terminated(&[path.as_bytes()]))
    }

    /// `XS_WRITE`.
    pub fn write(&mut self, tx: Tx, path: &str, value: &[u8]) -> Result<()> {
        let mut p = nul_terminated(&[path.as_bytes()]);
        p.extend_from_slice(value);
        self.request(MsgType::Write, tx, p).map(drop)
    }

    /// `XS_MKDIR`.
    pub fn mkdir(&mut self, tx: Tx, path: &str) -> Result<()> {
        self.request(MsgType::Mkdir, tx, nul_terminated(&[path.as_bytes()]))
            .map(drop)
    }

    /// `XS_RM`.
    pub fn rm(&mut self, tx: Tx, path: &str) -> Result<()> {
        self.request(MsgType::Rm, tx, nul_terminated(&[path.as_bytes()]))
            .map(drop)
    }

    /// `XS_DIRECTORY`: the children's names. A list too long for one reply
    /// (`E2BIG`) is read in parts with `XS_DIRECTORY_PART`, starting over
    /// if the node changes meanwhile, as libxenstore does.
    pub fn directory(&mut self, tx: Tx, path: &str) -> Result<Vec<String>> {
        match self.request(MsgType::Directory, tx, nul_terminated(&[path.as_bytes()])) {
            Ok(r) => split_strings(&r).into_iter().map(text).collect(),
            Err(ClientError::Xs(XsError::TooBig)) => self.directory_in_parts(tx, path),
            Err(e) => Err(e),
        }
    }

    fn directory_in_parts(&mut self, tx: Tx, path: &str) -> Result<Vec<String>> {
        // Bounded: a node that keeps changing is read at most this often.
        'again: for _ in 0..16 {
            let mut names = Vec::new();
            let mut offset = 0usize;
            let mut gen: Option<Vec<u8>> = None;
            loop {
                let payload = nul_terminated(&[path.as_bytes(), offset.to_string().as_bytes()]);
                let r = self.request(MsgType::DirectoryPart, tx, payload)?;
                let (g, list) = match r.iter().position(|&b| b == 0) {
                    Some(i) => (r[..i].to_vec(), &r[i + 1..]),
                    None => return Err(ClientError::Protocol("bad DIRECTORY_PART reply")),
                };
                if gen.as_ref().is_some_and(|old| *old != g) {
                    continue 'again;
                }
                gen = Some(g);
                // The list ends with an empty name (two nuls in a row).
                let done = list.is_empty() || list.ends_with(b"\0\0") || list == b"\0";
                let body = list.strip_suffix(b"\0").unwrap_or(list);
                let body = if done {
                    body.strip_suffix(b"\0").unwrap_or(body)
                } else {
                    body
                };
                if !body.is_empty() {
                    for n in body.split(|&b| b == 0) {
                        offset += n.len() + 1;
                        names.push(text(n)?);
                    }
                }
                if done {
                    return Ok(names);
                }
            }
        }
        Err(XsError::Again.into())
    }

    /// `XS_GET_PERMS`.
    pub fn get_perms(&mut self, tx: Tx, path: &str) -> Result<Perms> {
        let r = self.request(MsgType::GetPerms, tx, nul_terminated(&[path.as_bytes()]))?;
        Perms::parse(split_strings(&r)).map_err(|_| ClientError::Protocol("bad permissions"))
    }

    /// `XS_SET_PERMS`.
    pub fn set_perms(&mut self, tx: Tx, path: &str, perms: &Perms) -> Result<()> {
        let mut p = nul_terminated(&[path.as_bytes()]);
        p.extend(perms.to_payload());
        self.request(MsgType::SetPerms, tx, p).map(drop)
    }

    /// `XS_WATCH`; the daemon fires it once straight away.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<()> {
        let p = nul_terminated(&[path.as_bytes(), token.as_bytes()]);
        self.request(MsgType::Watch, Tx::NONE, p).map(drop)
    }

    /// `XS_UNWATCH`.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<()> {
        let p = nul_terminated(&[path.as_bytes(), token.as_bytes()]);
        self.request(MsgType::Unwatch, Tx::NONE, p).map(drop)
    }

    /// A watch event that has already arrived, if any (without waiting).
    pub fn pending_event(&mut self) -> Option<WatchEvent> {
        self.events.pop_front()
    }

    /// The next watch event, waiting for one.
    pub fn read_watch(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            let m = self.next_message()?;
            if m.ty == MsgType::WatchEvent {
                self.queue_event(&m);
            }
        }
    }

    /// `XS_TRANSACTION_START`.
    pub fn transaction_start(&mut self) -> Result<Tx> {
        let r = self.request(MsgType::TransactionStart, Tx::NONE, vec![0])?;
        let s = text(r.strip_suffix(b"\0").unwrap_or(&r))?;
        s.parse()
            .map(Tx)
            .map_err(|_| ClientError::Protocol("bad transaction id"))
    }

    /// `XS_TRANSACTION_END`: commit (`Err(Xs(Again))` on a conflict) or abort.
    pub fn transaction_end(&mut self, tx: Tx, commit: bool) -> Result<()> {
        let p = nul_terminated(&[if commit { b"T" } else { b"F" }]);
        self.request(MsgType::TransactionEnd, tx, p).map(drop)
    }

    /// `XS_GET_DOMAIN_PATH`.
    pub fn get_domain_path(&mut self, domid: u16) -> Result<String> {
        let r = self.request(
            MsgType::GetDomainPath,
            Tx::NONE,
            nul_terminated(&[domid.to_string().as_bytes()]),
        )?;
        text(r.strip_suffix(b"\0").unwrap_or(&r))
    }

    /// `XS_CONTROL` with its arguments; the reply's payload.
    pub fn control(&mut self, args: &[&[u8]]) -> Result<Vec<u8>> {
        self.request(MsgType::Control, Tx::NONE, nul_terminated(args))
    }
}
