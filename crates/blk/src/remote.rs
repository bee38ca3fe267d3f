//! The NBD storage engine: a disk that lives on an NBD server (`qemu-nbd`
//! serving qcow2 or any QEMU format, `nbdkit`, or a storage server on
//! another machine), over a unix socket or TCP.
//!
//! * [`Target`]: where the disk is, as xl users write it in `target=`: the
//!   NBD URIs of `nbd/doc/uri.md` (`nbd://HOST[:PORT]/EXPORT`,
//!   `nbd+unix:///EXPORT?socket=PATH`) and QEMU's older
//!   `nbd:unix:PATH[:exportname=NAME]` and `nbd:HOST:PORT[:exportname=NAME]`.
//! * [`NbdClient`]: fixed newstyle, `NBD_OPT_GO`, simple replies, one
//!   request at a time. A handshake and a request each have one deadline
//!   (30 s, all of it: a server that trickles bytes cannot stretch it), a
//!   TCP connection 10 s, and a server at most 64 option replies.
//! * [`NbdStorage`]: a [`Storage`] over a client. A connection that
//!   breaks (closed or reset) is made again once per request (reads and
//!   writes are idempotent); a request that timed out is not sent again
//!   (the server may still act on it); an error the server replies with is
//!   the request's error, and after a failed READ the connection is not
//!   used again. Writes acknowledged on a lost connection and not flushed
//!   fail the next flush, unless the server promises
//!   `NBD_FLAG_CAN_MULTI_CONN`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::nbd::{
    u16_of, u32_of, u64_of, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_WRITE, CMD_WRITE_ZEROES,
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO_EXPORT, MAX_OPTION, NBDMAGIC, OPT_GO,
    REPLY_MAGIC, REP_ACK, REP_INFO, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, TFLAG_CAN_MULTI_CONN,
    TFLAG_HAS_FLAGS, TFLAG_READ_ONLY, TFLAG_SEND_FLUSH, TFLAG_SEND_WRITE_ZEROES,
};
use crate::storage::Storage;

/// The port of `nbd://` without one (IANA's).
pub const DEFAULT_PORT: u16 = 10809;

/// How long a server may take to answer one request before the disk
/// reports an error.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where an NBD server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A unix socket.
    Unix(PathBuf),
    /// `host:port` over TCP.
    Tcp(String, u16),
}

/// An export on a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The server.
    pub address: Address,
    /// The export's name (`""`: the server's default).
    pub export: String,
}

impl Target {
    /// `None` if `s` is not an NBD target at all (a file name, say);
    /// otherwise the target or what is wrong with it.
    pub fn parse(s: &str) -> Option<Result<Target, String>> {
        // A URI's fragment means nothing to us.
        let uri = |s: &'_ str| s.split_once('#').map_or(s, |(u, _)| u).to_string();
        if let Some(rest) = s.strip_prefix("nbd+unix://") {
            return Some(unix_uri(&uri(rest)));
        }
        if let Some(rest) = s.strip_prefix("nbd://") {
            return Some(tcp_uri(&uri(rest)));
        }
        if s.starts_with("nbds://") || s.starts_with("nbds+unix://") {
            return Some(Err("NBD over TLS (nbds) is not supported".into()));
        }
        if s.starts_with("nbd+") {
            return Some(Err(
                "only the nbd:// and nbd+unix:// transports are supported".into(),
            ));
        }
        s.strip_prefix("nbd:").map(legacy)
    }
}

fn unix_uri(rest: &str) -> Result<Target, String> {
    // nbd+unix:///EXPORT?socket=PATH: no authority (and the path may be
    // left out).
    let rest = match rest.strip_prefix('/') {
        Some(r) => r,
        None if rest.starts_with('?') => rest,
        None => return Err("nbd+unix:// takes no host: nbd+unix:///EXPORT?socket=PATH".into()),
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let socket = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("socket="))
        .ok_or("nbd+unix:// needs ?socket=PATH")?;
    let socket = percent_decode(socket)?;
    if socket.is_empty() {
        return Err("nbd+unix://: the socket path is empty".into());
    }
    Ok(Target {
        address: Address::Unix(socket.into()),
        export: percent_decode(path)?,
    })
}

fn tcp_uri(rest: &str) -> Result<Target, String> {
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    // Userinfo is allowed, and means nothing without TLS.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = host_port(authority).map_err(|e| format!("nbd://: {e}"))?;
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => p.parse().map_err(|_| format!("nbd://: bad port {p:?}"))?,
    };
    Ok(Target {
        address: Address::Tcp(host, port),
        export: percent_decode(path)?,
    })
}

/// QEMU's `nbd:unix:PATH[:exportname=NAME]` and
/// `nbd:HOST:PORT[:exportname=NAME]`.
fn legacy(rest: &str) -> Result<Target, String> {
    let (rest, export) = match rest.split_once(":exportname=") {
        Some((r, e)) => (r, e.to_string()),
        None => (rest, String::new()),
    };
    if let Some(path) = rest.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("nbd:unix: needs a socket path".into());
        }
        return Ok(Target {
            address: Address::Unix(path.into()),
            export,
        });
    }
    let (host, port) = host_port(rest).map_err(|e| format!("nbd:HOST:PORT: {e}"))?;
    let port = port.ok_or("nbd:HOST:PORT or nbd:unix:PATH")?;
    let port = port
        .parse()
        .map_err(|_| format!("nbd:HOST:PORT: bad port {port:?}"))?;
    Ok(Target {
        address: Address::Tcp(host, port),
        export,
    })
}

/// `HOST[:PORT]` or `[V6]:PORT`: the host without brackets, and the port
/// if there is one.
fn host_port(a: &str) -> Result<(String, Option<&str>), String> {
    let (host, port) = if let Some(v6) = a.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after ]")?),
        };
        (h, port)
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok((host.to_string(), port))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad %-escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// A stream to a server whose reads and writes can be bounded in time.
pub(crate) trait Conn: Read + Write + Send {
    /// Bounds each later read and write to `t`.
    fn set_timeout(&self, _t: Duration) -> io::Result<()> {
        Ok(())
    }
}

impl Conn for UnixStream {
    fn set_timeout(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl Conn for TcpStream {
    fn set_timeout(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

/// Reads all of `buf` before `deadline` (a server that trickles bytes
/// cannot stretch a request past it).
fn read_by(s: &mut dyn Conn, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        s.set_timeout(left(deadline)?)?;
        match s.read(&mut buf[done..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out(e)),
        }
    }
    Ok(())
}

/// Writes all of `buf` before `deadline`.
fn write_by(s: &mut dyn Conn, buf: &[u8], deadline: Instant) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        s.set_timeout(left(deadline)?)?;
        match s.write(&buf[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out(e)),
        }
    }
    Ok(())
}

fn left(deadline: Instant) -> io::Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    Ok(d)
}

/// A socket timeout is reported as `WouldBlock`: it is a timeout.
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::ErrorKind::TimedOut.into()
    } else {
        e
    }
}

/// Option replies a server may send to our one `NBD_OPT_GO`.
const MAX_REPLIES: usize = 64;

/// How long a TCP connection may take to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A minimal NBD client (fixed newstyle, `NBD_OPT_GO`, simple replies):
/// the NBD storage engine's, and what the demo and the tests use to reach
/// an export without QEMU.
pub struct NbdClient {
    s: Box<dyn Conn>,
    /// The export's size in bytes.
    pub size: u64,
    /// The export's transmission flags (`NBD_FLAG_*`).
    pub flags: u16,
    handle: u64,
    /// How long one request may take, all of it.
    pub timeout: Duration,
}

impl NbdClient {
    /// Connects to export `name` on the unix socket `path`.
    pub fn connect(path: &Path, name: &str) -> io::Result<NbdClient> {
        Self::open(&Target {
            address: Address::Unix(path.into()),
            export: name.into(),
        })
    }

    /// Connects to `target` and negotiates its export.
    pub fn open(target: &Target) -> io::Result<NbdClient> {
        let s: Box<dyn Conn> = match &target.address {
            Address::Unix(p) => Box::new(UnixStream::connect(p)?),
            Address::Tcp(h, port) => {
                use std::net::ToSocketAddrs;
                let mut last = io::Error::from(io::ErrorKind::NotFound);
                let mut stream = None;
                for a in (h.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            stream = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = stream.ok_or(last)?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
        };
        Self::negotiate(s, &target.export)
    }

    /// Negotiates export `name` over `s`, whatever the stream (the fuzz
    /// target's is scripted).
    pub(crate) fn negotiate(mut s: Box<dyn Conn>, name: &str) -> io::Result<NbdClient> {
        let deadline = Instant::now() + TIMEOUT;
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        let mut hello = [0u8; 18];
        read_by(&mut *s, &mut hello, deadline)?;
        let server_flags = u16_of(&hello[16..]);
        if u64_of(&hello) != NBDMAGIC
            || u64_of(&hello[8..]) != IHAVEOPT
            || server_flags & FLAG_FIXED_NEWSTYLE == 0
        {
            return Err(bad("not a fixed-newstyle NBD server"));
        }
        // NO_ZEROES only if offered (the protocol says MUST NOT otherwise).
        let ours = FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES);
        write_by(&mut *s, &u32::from(ours).to_be_bytes(), deadline)?;
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut opt = IHAVEOPT.to_be_bytes().to_vec();
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&(data.len() as u32).to_be_bytes());
        opt.extend_from_slice(&data);
        write_by(&mut *s, &opt, deadline)?;
        let mut export = None;
        let mut replies = 0;
        loop {
            replies += 1;
            if replies > MAX_REPLIES {
                return Err(bad("too many option replies"));
            }
            let mut h = [0u8; 20];
            read_by(&mut *s, &mut h, deadline)?;
            let (ty, len) = (u32_of(&h[12..]), u32_of(&h[16..]));
            if u64_of(&h) != REPLY_MAGIC || u32_of(&h[8..]) != OPT_GO {
                return Err(bad("bad option reply"));
            }
            if len > MAX_OPTION {
                return Err(bad("oversized option reply"));
            }
            let mut d = vec![0u8; len as usize];
            read_by(&mut *s, &mut d, deadline)?;
            match ty {
                REP_INFO if d.len() >= 12 && u16_of(&d) == INFO_EXPORT => {
                    let flags = u16_of(&d[10..]);
                    // Flags without HAS_FLAGS mean nothing.
                    let flags = if flags & TFLAG_HAS_FLAGS != 0 {
                        flags
                    } else {
                        0
                    };
                    export = Some((u64_of(&d[2..]), flags));
                }
                REP_INFO => {}
                REP_ACK => break,
                _ => {
                    return Err(io::Error::other(format!(
                        "the server refused export {name:?}: {}",
                        String::from_utf8_lossy(&d)
                    )))
                }
            }
        }
        let (size, flags) = export.ok_or_else(|| bad("the server sent no export info"))?;
        Ok(NbdClient {
            s,
            size,
            flags,
            handle: 0,
            timeout: TIMEOUT,
        })
    }

    /// Whether the server refuses writes.
    pub fn read_only(&self) -> bool {
        self.flags & TFLAG_READ_ONLY != 0
    }

    fn request(
        &mut self,
        ty: u16,
        offset: u64,
        len: u32,
        data: &[u8],
        out: &mut [u8],
    ) -> io::Result<()> {
        self.handle += 1;
        let mut h = Vec::with_capacity(28 + data.len());
        h.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        h.extend_from_slice(&0u16.to_be_bytes());
        h.extend_from_slice(&ty.to_be_bytes());
        h.extend_from_slice(&self.handle.to_be_bytes());
        h.extend_from_slice(&offset.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(data);
        let deadline = Instant::now() + self.timeout;
        write_by(&mut *self.s, &h, deadline)?;
        let mut r = [0u8; 16];
        read_by(&mut *self.s, &mut r, deadline)?;
        if u32_of(&r) != SIMPLE_REPLY_MAGIC || u64_of(&r[8..]) != self.handle {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad NBD reply header",
            ));
        }
        let err = u32_of(&r[4..]);
        if err != 0 {
            // The server's answer, not the connection's. After a failed
            // READ the protocol lets the server send the length anyway:
            // the stream cannot be trusted past it.
            return Err(io::Error::other(ServerError {
                errno: err,
                stream_ok: ty != CMD_READ,
            }));
        }
        read_by(&mut *self.s, out, deadline)
    }

    /// Reads at `offset`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.request(CMD_READ, offset, buf.len() as u32, &[], buf)
    }

    /// Writes at `offset`.
    pub fn write(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.request(CMD_WRITE, offset, buf.len() as u32, buf, &mut [])
    }

    /// `NBD_CMD_FLUSH`.
    pub fn flush(&mut self) -> io::Result<()> {
        self.request(CMD_FLUSH, 0, 0, &[], &mut [])
    }

    /// `NBD_CMD_WRITE_ZEROES` (the server may punch a hole).
    pub fn write_zeroes(&mut self, offset: u64, len: u32) -> io::Result<()> {
        self.request(CMD_WRITE_ZEROES, offset, len, &[], &mut [])
    }

    /// `NBD_CMD_DISC`.
    pub fn disconnect(mut self) -> io::Result<()> {
        self.handle += 1;
        let mut h = REQUEST_MAGIC.to_be_bytes().to_vec();
        h.extend_from_slice(&0u16.to_be_bytes());
        h.extend_from_slice(&CMD_DISC.to_be_bytes());
        h.extend_from_slice(&self.handle.to_be_bytes());
        h.extend_from_slice(&[0u8; 12]);
        write_by(&mut *self.s, &h, Instant::now() + TIMEOUT)
    }
}

/// An error the server replied with (an `errno` value of the protocol).
#[derive(Debug)]
pub struct ServerError {
    /// The error.
    pub errno: u32,
    /// Whether the connection can go on being used.
    pub stream_ok: bool,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the NBD server replied with error {}", self.errno)
    }
}

impl std::error::Error for ServerError {}

/// What became of a request that failed.
enum Failure {
    /// The server answered with an error; the stream may go on or not.
    Server { stream_ok: bool },
    /// The connection broke (closed or reset): a retry on a new one is
    /// safe, the old one can apply nothing more.
    Broken,
    /// No answer in time, or nonsense: the server may still act on the
    /// request, so nothing is sent again.
    Other,
}

fn failure(e: &io::Error) -> Failure {
    if let Some(se) = e.get_ref().and_then(|i| i.downcast_ref::<ServerError>()) {
        return Failure::Server {
            stream_ok: se.stream_ok,
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::NotConnected
        | io::ErrorKind::WriteZero => Failure::Broken,
        _ => Failure::Other,
    }
}

/// A disk on an NBD server.
pub struct NbdStorage {
    target: Target,
    conn: Mutex<Connection>,
    size: u64,
    flags: u16,
    timeout: Duration,
}

/// The connection, and what its loss may have cost.
struct Connection {
    client: Option<NbdClient>,
    /// Writes acknowledged since the last flush.
    dirty: bool,
    /// A connection with acknowledged, unflushed writes was lost, and the
    /// server does not promise that a flush on another covers them
    /// (`NBD_FLAG_CAN_MULTI_CONN`): the next flush fails.
    lost_writes: bool,
}

/// What a request does to the disk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
}

/// Writes of zeroes where the server has no `WRITE_ZEROES`, at most this
/// much at a time.
const ZERO_CHUNK: usize = 64 << 10;

impl NbdStorage {
    /// Connects to `target`; a `writable` disk on a read-only export is
    /// refused.
    pub fn open(target: Target, writable: bool) -> io::Result<NbdStorage> {
        let c = NbdClient::open(&target)?;
        if writable && c.read_only() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the NBD export is read-only",
            ));
        }
        Ok(NbdStorage {
            target,
            size: c.size,
            flags: c.flags,
            timeout: c.timeout,
            conn: Mutex::new(Connection {
                client: Some(c),
                dirty: false,
                lost_writes: false,
            }),
        })
    }

    /// The export's transmission flags.
    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// Bounds each request, all of it, to `t` (30 s unless set).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
        if let Ok(mut c) = self.conn.lock() {
            if let Some(c) = c.client.as_mut() {
                c.timeout = t;
            }
        }
    }

    /// Runs `f` (a request of `kind`) on the connection, made again once
    /// if it broke (to an export of the same size).
    fn with<T>(
        &self,
        kind: Kind,
        mut f: impl FnMut(&mut NbdClient) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| io::Error::other("NBD connection poisoned"))?;
        if kind == Kind::Flush && conn.lost_writes {
            conn.lost_writes = false;
            conn.dirty = false;
            return Err(io::Error::other(
                "writes acknowledged on a lost NBD connection may not be on stable storage",
            ));
        }
        let mut retried = false;
        loop {
            let mut c = match conn.client.take() {
                Some(c) => c,
                None => {
                    let c = self.reopen()?;
                    if conn.dirty && self.flags & TFLAG_CAN_MULTI_CONN == 0 {
                        conn.lost_writes = true;
                    }
                    c
                }
            };
            let r = f(&mut c);
            let e = match r {
                Ok(v) => {
                    conn.client = Some(c);
                    match kind {
                        Kind::Write => conn.dirty = true,
                        Kind::Flush => conn.dirty = false,
                        Kind::Read => {}
                    }
                    return Ok(v);
                }
                Err(e) => e,
            };
            match failure(&e) {
                Failure::Server { stream_ok } => {
                    if stream_ok {
                        conn.client = Some(c);
                    }
                    return Err(e);
                }
                // Dropped, not reused: it may be mid-reply.
                Failure::Broken if !retried => retried = true,
                Failure::Broken | Failure::Other => return Err(e),
            }
        }
    }

    fn reopen(&self) -> io::Result<NbdClient> {
        let mut c = NbdClient::open(&self.target)?;
        c.timeout = self.timeout;
        if c.size != self.size {
            return Err(io::Error::other("the NBD export changed size"));
        }
        Ok(c)
    }
}

impl Storage for NbdStorage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(Kind::Read, |c| c.read(offset, buf))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(Kind::Write, |c| c.write(offset, buf))
    }

    fn flush(&self) -> io::Result<()> {
        // A server without a write cache says so by not offering FLUSH.
        if self.flags & TFLAG_SEND_FLUSH == 0 {
            return Ok(());
        }
        self.with(Kind::Flush, NbdClient::flush)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut done = 0;
        let zeros = vec![0u8; ZERO_CHUNK];
        while done < len {
            let n = (len - done).min(ZERO_CHUNK as u64);
            let at = offset + done;
            if self.flags & TFLAG_SEND_WRITE_ZEROES != 0 {
                self.with(Kind::Write, |c| c.write_zeroes(at, n as u32))?;
            } else {
                self.with(Kind::Write, |c| c.write(at, &zeros[..n as usize]))?;
            }
            done += n;
        }
        Ok(())
    }
}

impl Drop for NbdStorage {
    fn drop(&mut self) {
        if let Ok(mut g) = self.conn.lock() {
            if let Some(c) = g.client.take() {
                let _ = c.disconnect();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(p: &str, e: &str) -> Target {
        Target {
            address: Address::Unix(p.into()),
            export: e.into(),
        }
    }

    fn tcp(h: &str, port: u16, e: &str) -> Target {
        Target {
            address: Address::Tcp(h.into(), port),
            export: e.into(),
        }
    }

    #[test]
    fn targets_parse_as_qemu_and_the_nbd_uri_spec_write_them() {
        let ok = |s: &str| Target::parse(s).unwrap().unwrap();
        assert_eq!(
            ok("nbd+unix:///?socket=/run/d.sock"),
            unix("/run/d.sock", "")
        );
        assert_eq!(
            ok("nbd+unix:///disk%201?socket=/run/a%3Ab.sock"),
            unix("/run/a:b.sock", "disk 1")
        );
        assert_eq!(
            ok("nbd://example.org/exp"),
            tcp("example.org", 10809, "exp")
        );
        assert_eq!(ok("nbd://10.0.0.2:2000"), tcp("10.0.0.2", 2000, ""));
        assert_eq!(ok("nbd://[::1]:2000/e"), tcp("::1", 2000, "e"));
        assert_eq!(ok("nbd:unix:/tmp/s"), unix("/tmp/s", ""));
        assert_eq!(ok("nbd:unix:/tmp/s:exportname=x"), unix("/tmp/s", "x"));
        assert_eq!(ok("nbd:localhost:10810"), tcp("localhost", 10810, ""));
        assert_eq!(
            ok("nbd:localhost:10810:exportname=d"),
            tcp("localhost", 10810, "d")
        );
        assert_eq!(ok("nbd:[::1]:10809"), tcp("::1", 10809, ""));
        assert_eq!(ok("nbd://user@h:7/e"), tcp("h", 7, "e"));
        assert_eq!(ok("nbd://h/e#frag"), tcp("h", 10809, "e"));
        assert_eq!(ok("nbd+unix://?socket=/s"), unix("/s", ""));
        assert_eq!(ok("nbd://[::1]/e"), tcp("::1", 10809, "e"));
    }

    #[test]
    fn files_are_not_targets_and_bad_targets_say_why() {
        assert!(Target::parse("/srv/disk.img").is_none());
        assert!(Target::parse("nbd.img").is_none());
        for bad in [
            "nbd+unix:///exp",
            "nbd+unix://host/?socket=/s",
            "nbd+unix:///?socket=",
            "nbd://",
            "nbd://h:port",
            "nbd://[::1",
            "nbds://h/e",
            "nbd+tcp://h/e",
            "nbd:unix:",
            "nbd:host",
            "nbd::1",
            "nbd:h:99999",
            "nbd://h/%zz",
            "nbd://h/%+1",
            "nbd://[::1]x/e",
            "nbd:[::1",
        ] {
            let r = Target::parse(bad);
            assert!(matches!(r, Some(Err(_))), "{bad}: {r:?}");
        }
    }
}
