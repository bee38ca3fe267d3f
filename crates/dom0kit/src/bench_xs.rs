//! `dom0kit bench xenstore --socket NAME=PATH ...`: the same workloads
//! against each daemon in one run, as ratios to the first one named.
//!
//! * pipelined mixed ops: one connection keeps 64 requests in flight,
//!   alternating writes and reads of 256 keys;
//! * transactions: start, write, commit, one after another, from one client
//!   (bound by the round trips' wake-ups) and from 16 clients at once;
//! * watch fan-out: 1000 connections watch one node; one write, until all
//!   1000 events have arrived;
//! * directory of 10,000 children, listed whole with `DIRECTORY_PART`, by
//!   one client and by 16 at once.
//!
//! Beside each rate, the daemon's own CPU time per operation over the same
//! stretch (the CPU clock of the process behind the socket, found by
//! `SO_PEERCRED`), so that what a rate costs shows too.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use xenstore::client::{Client, ClientError, Tx};
use xenstore::wire::{split_strings, Decoder, Message, MsgType};
use xenstore::XsError;

/// One row: what, and a number per daemon.
pub(crate) struct Row {
    pub(crate) name: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) values: Vec<f64>,
    /// The daemon's CPU time per operation (µs), NaN if unknown.
    pub(crate) cpu_us: Vec<f64>,
}

/// The pid of the process that listens on `path`.
fn daemon_pid(path: &std::path::Path) -> Option<i32> {
    let s = UnixStream::connect(path).ok()?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for the kernel to fill.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid)
}

/// CPU time of process `pid` so far (all its threads, gone ones
/// included), in seconds.
fn cpu_seconds(pid: i32) -> Option<f64> {
    let mut clock: libc::clockid_t = 0;
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock` and `t` are valid for the kernel to fill.
    #[allow(unsafe_code)]
    let ok = unsafe {
        libc::clock_getcpuclockid(pid, &mut clock) == 0 && libc::clock_gettime(clock, &mut t) == 0
    };
    ok.then(|| t.tv_sec as f64 + t.tv_nsec as f64 / 1e9)
}

/// A rate, and the daemon's CPU time per operation meanwhile (µs; NaN if
/// unknown).
struct Measured {
    rate: f64,
    cpu_us: f64,
}

/// A measured stretch of a workload: wall time, and the daemon's CPU time.
struct Span {
    wall: Instant,
    pid: Option<i32>,
    cpu: Option<f64>,
}

impl Span {
    fn start(pid: Option<i32>) -> Span {
        Span {
            wall: Instant::now(),
            pid,
            cpu: pid.and_then(cpu_seconds),
        }
    }

    /// `ops` operations were done since the start.
    fn end(self, ops: u32) -> Measured {
        let secs = self.wall.elapsed().as_secs_f64();
        let used = match (self.cpu, self.pid.and_then(cpu_seconds)) {
            (Some(a), Some(b)) => b - a,
            _ => f64::NAN,
        };
        Measured {
            rate: f64::from(ops) / secs,
            cpu_us: used * 1e6 / f64::from(ops),
        }
    }
}

fn io<T>(r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn xs<T>(r: xenstore::client::Result<T>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn send(s: &mut UnixStream, m: &Message) -> Result<(), String> {
    let bytes = m.encode().map_err(|e| e.to_string())?;
    io(s.write_all(&bytes))
}

fn pipelined(path: &std::path::Path, pid: Option<i32>, ops: u32) -> Result<Measured, String> {
    let mut s = io(UnixStream::connect(path))?;
    let mut d = Decoder::new();
    let request = |i: u32| {
        let key = format!("/bench/pipe/k{}", i % 256);
        if i % 2 == 0 {
            Message::with_strings(MsgType::Write, i, 0, &[key.as_bytes()])
                .with_value(format!("value {i}").as_bytes())
        } else {
            Message::with_strings(MsgType::Read, i, 0, &[key.as_bytes()])
        }
    };
    // Write every key first so that reads find them.
    for k in 0..256u32 {
        let key = format!("/bench/pipe/k{k}");
        send(
            &mut s,
            &Message::with_strings(MsgType::Write, k, 0, &[key.as_bytes()]).with_value(b"v"),
        )?;
    }
    let mut done = 0;
    let mut buf = vec![0u8; 65536];
    while done < 256 {
        let n = io(s.read(&mut buf))?;
        if n == 0 {
            return Err("daemon hung up".into());
        }
        done += d.feed(&buf[..n]).map_err(|e| e.to_string())?.len();
    }
    let t = Span::start(pid);
    let mut sent = 0;
    while sent < 64.min(ops) {
        send(&mut s, &request(sent))?;
        sent += 1;
    }
    let mut got = 0;
    while got < ops {
        let n = io(s.read(&mut buf))?;
        if n == 0 {
            return Err("daemon hung up".into());
        }
        for m in d.feed(&buf[..n]).map_err(|e| e.to_string())? {
            if m.ty == MsgType::Error {
                return Err(format!(
                    "error reply {}",
                    String::from_utf8_lossy(&m.payload)
                ));
            }
            got += 1;
            if sent < ops {
                send(&mut s, &request(sent))?;
                sent += 1;
            }
        }
    }
    Ok(t.end(ops))
}

/// `n` transactions per client, `clients` clients at once, each on its own
/// keys (so none conflicts); transactions per second in all.
fn transactions(
    path: &std::path::Path,
    pid: Option<i32>,
    n: u32,
    clients: u32,
) -> Result<Measured, String> {
    let t = Span::start(pid);
    let workers: Vec<_> = (0..clients)
        .map(|w| {
            let path = path.to_path_buf();
            std::thread::spawn(move || -> Result<(), String> {
                let mut c = xs(Client::connect(&path))?;
                let mut done = 0;
                while done < n {
                    let tx = xs(c.transaction_start())?;
                    xs(c.write(tx, &format!("/bench/tx/w{w}/k{}", done % 64), b"v"))?;
                    match c.transaction_end(tx, true) {
                        Ok(()) => done += 1,
                        // Clients retry a conflict, as xenstore-utils do
                        // (the first writes create siblings under one parent).
                        Err(ClientError::Xs(XsError::Again)) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| "a client thread panicked".to_string())??;
    }
    Ok(t.end(n * clients))
}

fn fan_out(
    path: &std::path::Path,
    pid: Option<i32>,
    watchers: usize,
    rounds: u32,
) -> Result<Measured, String> {
    let mut w = xs(Client::connect(path))?;
    xs(w.write(Tx::NONE, "/bench/fan", b"0"))?;
    let mut conns = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let mut s = io(UnixStream::connect(path))?;
        send(
            &mut s,
            &Message::with_strings(
                MsgType::Watch,
                1,
                0,
                &[b"/bench/fan", format!("t{i}").as_bytes()],
            ),
        )?;
        conns.push(s);
    }
    // Each watcher: the reply and the first event.
    let mut decoders: Vec<Decoder> = (0..watchers).map(|_| Decoder::new()).collect();
    let mut pending: Vec<usize> = vec![2; watchers];
    drain(&mut conns, &mut decoders, &mut pending)?;
    let t = Span::start(pid);
    for r in 0..rounds {
        xs(w.write(Tx::NONE, "/bench/fan", r.to_string().as_bytes()))?;
        pending.iter_mut().for_each(|p| *p = 1);
        drain(&mut conns, &mut decoders, &mut pending)?;
    }
    Ok(t.end(rounds))
}

/// Reads until every connection has had its `pending` messages.
fn drain(
    conns: &mut [UnixStream],
    decoders: &mut [Decoder],
    pending: &mut [usize],
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 4096];
    while pending.iter().any(|&p| p > 0) {
        if Instant::now() > deadline {
            return Err("watch events did not all arrive".into());
        }
        let mut fds: Vec<libc::pollfd> = conns
            .iter()
            .zip(pending.iter())
            .filter(|(_, &p)| p > 0)
            .map(|(c, _)| libc::pollfd {
                fd: c.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfds.
        #[allow(unsafe_code)]
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if r < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let ready: HashMap<i32, bool> = fds.iter().map(|f| (f.fd, f.revents != 0)).collect();
        for (i, c) in conns.iter_mut().enumerate() {
            if pending[i] == 0 || !ready.get(&c.as_raw_fd()).copied().unwrap_or(false) {
                continue;
            }
            let n = io(c.read(&mut buf))?;
            if n == 0 {
                return Err("daemon hung up on a watcher".into());
            }
            let got = decoders[i]
                .feed(&buf[..n])
                .map_err(|e| e.to_string())?
                .len();
            pending[i] = pending[i].saturating_sub(got);
        }
    }
    Ok(())
}

/// Lists the children (made by [`setup_children`]) `rounds` times from
/// each of `clients` clients at once.
fn directory(
    path: &std::path::Path,
    pid: Option<i32>,
    children: u32,
    rounds: u32,
    clients: u32,
) -> Result<Measured, String> {
    let t = Span::start(pid);
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let path = path.to_path_buf();
            std::thread::spawn(move || list_children(&path, children, rounds))
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| "a client thread panicked".to_string())??;
    }
    Ok(t.end(rounds * clients))
}

/// Creates `/bench/dir/child-NNNNN`, pipelined (again: it is idempotent).
fn setup_children(path: &std::path::Path, children: u32) -> Result<(), String> {
    let mut s = io(UnixStream::connect(path))?;
    let mut d = Decoder::new();
    let mut buf = vec![0u8; 65536];
    // Create the children, pipelined.
    let mut sent = 0;
    let mut got = 0;
    while got < children {
        while sent < children && sent - got < 64 {
            let key = format!("/bench/dir/child-{sent:05}");
            send(
                &mut s,
                &Message::with_strings(MsgType::Write, sent, 0, &[key.as_bytes()]).with_value(b""),
            )?;
            sent += 1;
        }
        let n = io(s.read(&mut buf))?;
        if n == 0 {
            return Err("daemon hung up".into());
        }
        got += d.feed(&buf[..n]).map_err(|e| e.to_string())?.len() as u32;
    }
    Ok(())
}

fn list_children(path: &std::path::Path, children: u32, rounds: u32) -> Result<(), String> {
    let mut c = xs(Client::connect(path))?;
    for _ in 0..rounds {
        let mut names = 0usize;
        let mut offset = 0usize;
        loop {
            let reply = match c.request(
                MsgType::DirectoryPart,
                Tx::NONE,
                [&b"/bench/dir\0"[..], offset.to_string().as_bytes(), b"\0"].concat(),
            ) {
                Ok(r) => r,
                // No DIRECTORY_PART (oxenstored): one DIRECTORY, if the
                // daemon sends replies that large.
                Err(xenstore::client::ClientError::Xs(xenstore::XsError::NoSys)) if offset == 0 => {
                    let all = xs(c.directory(Tx::NONE, "/bench/dir"))?;
                    names = all.len();
                    break;
                }
                Err(e) => return Err(e.to_string()),
            };
            let parts = split_strings(&reply);
            let list: Vec<&[u8]> = parts
                .iter()
                .skip(1)
                .copied()
                .take_while(|p| !p.is_empty())
                .collect();
            if list.is_empty() {
                break;
            }
            names += list.len();
            offset += list.iter().map(|p| p.len() + 1).sum::<usize>();
        }
        if names != children as usize {
            return Err(format!("listed {names} of {children} children"));
        }
    }
    Ok(())
}

/// Runs every workload against each `(name, socket)`.
pub(crate) fn run(
    sockets: &[(String, std::path::PathBuf)],
    quick: bool,
) -> Result<Vec<Row>, String> {
    let (ops, txs, fan_rounds, dir_rounds) = if quick {
        (2_000, 200, 5, 2)
    } else {
        (200_000, 5_000, 50, 20)
    };
    let mut rows = vec![
        Row {
            name: "pipelined mixed read/write, 64 in flight",
            unit: "ops/s",
            values: Vec::new(),
            cpu_us: Vec::new(),
        },
        Row {
            name: "transactions (start, write, commit), 1 client",
            unit: "tx/s",
            values: Vec::new(),
            cpu_us: Vec::new(),
        },
        Row {
            name: "transactions, 16 clients at once",
            unit: "tx/s",
            values: Vec::new(),
            cpu_us: Vec::new(),
        },
        Row {
            name: "watch fan-out: one write, 1000 watchers",
            unit: "writes/s",
            values: Vec::new(),
            cpu_us: Vec::new(),
        },
        Row {
            name: "DIRECTORY_PART of 10,000 children, 1 client",
            unit: "listings/s",
            values: Vec::new(),
            cpu_us: Vec::new(),
        },
        Row {
            name: "DIRECTORY_PART of 10,000 children, 16 clients",
            unit: "listings/s",
            values: Vec::new(),
            cpu_us: Vec::new(),
        },
    ];
    let mut notes = Vec::new();
    for (name, path) in sockets {
        let pid = daemon_pid(path);
        let mut record = |row: usize, r: Result<Measured, String>| match r {
            Ok(m) => {
                rows[row].values.push(m.rate);
                rows[row].cpu_us.push(m.cpu_us);
            }
            Err(e) => {
                notes.push(format!("{name}, {}: {e}", rows[row].name));
                rows[row].values.push(f64::NAN);
                rows[row].cpu_us.push(f64::NAN);
            }
        };
        record(0, pipelined(path, pid, ops));
        record(1, transactions(path, pid, txs, 1));
        record(2, transactions(path, pid, txs / 4, 16));
        record(3, fan_out(path, pid, 1000, fan_rounds));
        // Made outside the measured stretch; a failure shows in the
        // listing.
        let made = setup_children(path, 10_000);
        record(
            4,
            made.clone()
                .and_then(|()| directory(path, pid, 10_000, dir_rounds, 1)),
        );
        record(
            5,
            made.and_then(|()| directory(path, pid, 10_000, dir_rounds / 2 + 1, 16)),
        );
    }
    for n in &notes {
        eprintln!("not measured: {n}");
    }
    Ok(rows)
}
