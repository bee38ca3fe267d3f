//! The NBD storage engine: a disk that lives on an NBD server (`qemu-nbd`
//! serving qcow2 or any QEMU format, `nbdkit`, or a storage server on
//! another machine), over a unix socket or TCP.
//!
//! * [`Target`]: where the disk is, as xl users write it in `target=`: the
//!   NBD URIs of `nbd/doc/uri.md` (`nbd://HOST[:PORT]/EXPORT`,
//!   `nbd+unix:///EXPORT?socket=PATH`) and QEMU's older
//!   `nbd:unix:PATH[:exportname=NAME]` and `nbd:HOST:PORT[:exportname=NAME]`.
//! * [`NbdClient`]: fixed newstyle, `NBD_OPT_GO`, simple replies, one
//!   request at a time.
//! * [`NbdStorage`]: a [`Storage`] over a client. A connection that breaks
//!   is made again once per request (reads and writes are idempotent); an
//!   error the server replies with is the request's error.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::nbd::{
    u16_of, u32_of, u64_of, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_WRITE, CMD_WRITE_ZEROES,
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO_EXPORT, MAX_OPTION, NBDMAGIC, OPT_GO,
    REP_ACK, REP_INFO, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, TFLAG_READ_ONLY, TFLAG_SEND_FLUSH,
    TFLAG_SEND_WRITE_ZEROES,
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
        if let Some(rest) = s.strip_prefix("nbd+unix://") {
            return Some(unix_uri(rest));
        }
        if let Some(rest) = s.strip_prefix("nbd://") {
            return Some(tcp_uri(rest));
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
    // nbd+unix:///EXPORT?socket=PATH: no authority.
    let rest = rest
        .strip_prefix('/')
        .ok_or("nbd+unix:// takes no host: nbd+unix:///EXPORT?socket=PATH")?;
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
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("nbd://: unclosed [ in the host")?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("nbd://: no host".into());
    }
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
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or("nbd:HOST:PORT or nbd:unix:PATH")?;
    if host.is_empty() {
        return Err("nbd:HOST:PORT: no host".into());
    }
    let port = port
        .parse()
        .map_err(|_| format!("nbd:HOST:PORT: bad port {port:?}"))?;
    Ok(Target {
        address: Address::Tcp(host.to_string(), port),
        export,
    })
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
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

pub(crate) trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

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
            Address::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                s.set_write_timeout(Some(TIMEOUT))?;
                Box::new(s)
            }
            Address::Tcp(h, port) => {
                let s = TcpStream::connect((h.as_str(), *port))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                s.set_write_timeout(Some(TIMEOUT))?;
                Box::new(s)
            }
        };
        Self::negotiate(s, &target.export)
    }

    /// Negotiates export `name` over `s`, whatever the stream (the fuzz
    /// target's is scripted).
    pub(crate) fn negotiate(mut s: Box<dyn Conn>, name: &str) -> io::Result<NbdClient> {
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello)?;
        if u64_of(&hello) != NBDMAGIC || u64_of(&hello[8..]) != IHAVEOPT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a fixed-newstyle NBD server",
            ));
        }
        s.write_all(&u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut opt = IHAVEOPT.to_be_bytes().to_vec();
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&(data.len() as u32).to_be_bytes());
        opt.extend_from_slice(&data);
        s.write_all(&opt)?;
        let mut export = None;
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h)?;
            let (ty, len) = (u32_of(&h[12..]), u32_of(&h[16..]));
            if len > MAX_OPTION {
                return Err(io::ErrorKind::InvalidData.into());
            }
            let mut d = vec![0u8; len as usize];
            s.read_exact(&mut d)?;
            match ty {
                REP_INFO if d.len() >= 12 && u16_of(&d) == INFO_EXPORT => {
                    export = Some((u64_of(&d[2..]), u16_of(&d[10..])));
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
        let (size, flags) = export.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "the server sent no export info")
        })?;
        Ok(NbdClient {
            s,
            size,
            flags,
            handle: 0,
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
        self.s.write_all(&h)?;
        let mut r = [0u8; 16];
        self.s.read_exact(&mut r)?;
        if u32_of(&r) != SIMPLE_REPLY_MAGIC || u64_of(&r[8..]) != self.handle {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad NBD reply header",
            ));
        }
        let err = u32_of(&r[4..]);
        if err != 0 {
            // The server's answer, not the connection's: no retry.
            return Err(io::Error::other(ServerError(err)));
        }
        self.s.read_exact(out)
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
        self.s.write_all(&h)
    }
}

/// An error the server replied with (an `errno` value of the protocol).
#[derive(Debug)]
pub struct ServerError(pub u32);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the NBD server replied with error {}", self.0)
    }
}

impl std::error::Error for ServerError {}

fn is_server_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<ServerError>())
}

/// A disk on an NBD server.
pub struct NbdStorage {
    target: Target,
    client: Mutex<Option<NbdClient>>,
    size: u64,
    flags: u16,
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
            client: Mutex::new(Some(c)),
        })
    }

    /// The export's transmission flags.
    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// Runs `f` on the connection, made again once if it broke (to an
    /// export of the same size).
    fn with<T>(&self, mut f: impl FnMut(&mut NbdClient) -> io::Result<T>) -> io::Result<T> {
        let mut guard = self
            .client
            .lock()
            .map_err(|_| io::Error::other("NBD connection poisoned"))?;
        let mut retried = false;
        loop {
            let mut c = match guard.take() {
                Some(c) => c,
                None => self.reopen()?,
            };
            match f(&mut c) {
                Ok(v) => {
                    *guard = Some(c);
                    return Ok(v);
                }
                Err(e) if is_server_error(&e) => {
                    *guard = Some(c);
                    return Err(e);
                }
                // The stream may be mid-reply: it is dropped, not reused.
                Err(e) if retried => return Err(e),
                Err(_) => retried = true,
            }
        }
    }

    fn reopen(&self) -> io::Result<NbdClient> {
        let c = NbdClient::open(&self.target)?;
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
        self.with(|c| c.read(offset, buf))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|c| c.write(offset, buf))
    }

    fn flush(&self) -> io::Result<()> {
        // A server without a write cache says so by not offering FLUSH.
        if self.flags & TFLAG_SEND_FLUSH == 0 {
            return Ok(());
        }
        self.with(NbdClient::flush)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut done = 0;
        let zeros = vec![0u8; ZERO_CHUNK];
        while done < len {
            let n = (len - done).min(ZERO_CHUNK as u64);
            let at = offset + done;
            if self.flags & TFLAG_SEND_WRITE_ZEROES != 0 {
                self.with(|c| c.write_zeroes(at, n as u32))?;
            } else {
                self.with(|c| c.write(at, &zeros[..n as usize]))?;
            }
            done += n;
        }
        Ok(())
    }
}

impl Drop for NbdStorage {
    fn drop(&mut self) {
        if let Ok(mut g) = self.client.lock() {
            if let Some(c) = g.take() {
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
        ] {
            let r = Target::parse(bad);
            assert!(matches!(r, Some(Err(_))), "{bad}: {r:?}");
        }
    }
}
