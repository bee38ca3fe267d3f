//! A guest process for tests and benchmarks: attaches as a domain and runs
//! guest-side hypercalls one line at a time (stdin commands, stdout
//! answers), so that multi-process scenarios can be scripted by dom0.
//!
//! Commands: `attach SOCKET TOKEN`, `grant DOMID PFN rw|ro`, `end GREF`,
//! `alloc N`, `write PFN OFF HEX`, `read PFN OFF LEN`, `p2m PFN`,
//! `exchange PFN COUNT BITS`, `unbound DOMID`, `bind DOMID PORT`,
//! `notify PORT`, `wait PORT MS`, `close PORT`, `echo PORT N`,
//! `rawecho FD_IN FD_OUT N`, `hangup` (close the hv socket, keep the
//! mappings), `exit`; as dom0, `attach-dom0 SOCKET`, `map DOMID GREF
//! rw|ro` (mapped until `unmap` or our exit) and `unmap`. Answers start
//! with `ok`, or `err`.
//!
//! Started confined ([`crate::confine::Jail`]): `ids` (our uid, gid and
//! supplementary groups), `inherited-dom0` (ask to attach as dom0 over
//! the hv connection we were handed: `ok refused ERRNO` or `ok attached`),
//! `inherited-attach TOKEN` (attach as our guest over it), `dom0 SOCKET`
//! (connect and ask to be dom0), `signal PID` (signal 0), `tty` (open
//! `/dev/tty`), `fds` (what we hold besides the standard streams),
//! `env` (our variables' names), `netns`, `entries DIR` (how many names
//! `DIR` holds, as we see it: `ok N` or `ok refused ERRNO`), `dev PATH`
//! (the device of the filesystem `PATH` is on), `sees PID` (whether
//! `/proc/PID` shows: `ok yes` or `ok no`), `userns`
//! (make a user namespace: `ok made` or `ok refused WHY`), `survivor`
//! (start a process meant to outlive us). A hostile
//! guest: `jam PORT` (make the port's event object blocking and try to
//! fill it).

use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;

use abi::{DomId, GrantRef, Pfn, Port};
use platform::{EventChannels, GrantTable, OwnMemory};

use crate::client::{encode_hex, SimDomain};
use crate::proto::{Reply, Request};
use crate::sys;

fn num<T: std::str::FromStr>(w: Option<&str>) -> Result<T, String> {
    w.ok_or("missing argument")?
        .parse()
        .map_err(|_| "bad number".to_string())
}

fn hex(s: Option<&str>) -> Result<Vec<u8>, String> {
    let s = s.ok_or("missing argument")?;
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| "bad hex".to_string())
}

fn wait(fd: i32, ms: i32) -> Result<bool, String> {
    if sys::wait_readable(fd, ms).map_err(|e| e.to_string())? {
        sys::event_clear(fd).map_err(|e| e.to_string())?;
        Ok(true)
    } else {
        Ok(false)
    }
}

/// Asks to attach as dom0 over `sock`: `refused ERRNO` or `attached`.
fn ask_dom0(sock: &OwnedFd) -> Result<String, String> {
    sys::send_msg(sock.as_raw_fd(), &Request::AttachDom0.encode(), &[])
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; sys::MAX_MESSAGE];
    let n =
        sys::recv_msg(sock.as_raw_fd(), &mut buf, &mut Vec::new()).map_err(|e| e.to_string())?;
    match Reply::decode(&buf[..n]) {
        Ok(Reply::Error { errno }) => Ok(format!("refused {errno}")),
        Ok(Reply::Attached { .. }) => Ok("attached".into()),
        _ => Err("unexpected reply".into()),
    }
}

/// The commands of a confined probe, or `None` if `cmd` is not one.
fn confined_command(
    inherited: &mut Option<OwnedFd>,
    dom: &mut Option<SimDomain>,
    cmd: &str,
    mut w: std::str::SplitWhitespace<'_>,
) -> Option<Result<String, String>> {
    let answer = match cmd {
        "ids" => {
            let (uid, gid, groups) = sys::ids();
            Ok(format!("ok {uid} {gid} {groups}"))
        }
        "tty" => Ok(match std::fs::File::open("/dev/tty") {
            Ok(_) => "ok opened".into(),
            Err(e) => format!("ok refused {}", e.raw_os_error().unwrap_or(0)),
        }),
        // What we hold besides the standard streams, and our environment.
        "fds" => (|| {
            let me = format!("/proc/{}/fd", std::process::id());
            let mut held: Vec<String> = std::fs::read_dir("/proc/self/fd")
                .map_err(|e| e.to_string())?
                .flatten()
                .filter(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) > Some(2))
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.display().to_string())
                .filter(|l| *l != me)
                .map(|l| l.split(':').next().unwrap_or("").to_string())
                .collect();
            held.sort();
            Ok(format!("ok {}", held.join(" ")))
        })(),
        "env" => {
            let mut names: Vec<String> = std::env::vars_os()
                .map(|(k, _)| k.to_string_lossy().into_owned())
                .collect();
            names.sort();
            Ok(format!("ok {}", names.join(" ")))
        }
        // A process to outlive us, in a group of its own: its pid.
        "survivor" => std::process::Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .map(|c| format!("ok {}", c.id()))
            .map_err(|e| e.to_string()),
        "sees" => (|| {
            let pid: u32 = num(w.next())?;
            let seen = Path::new(&format!("/proc/{pid}")).exists();
            Ok(format!("ok {}", if seen { "yes" } else { "no" }))
        })(),
        "dev" => (|| {
            use std::os::unix::fs::MetadataExt;
            let path = w.next().ok_or("missing path")?;
            let m = std::fs::metadata(path).map_err(|e| e.to_string())?;
            Ok(format!("ok {}", m.dev()))
        })(),
        "entries" => (|| {
            let dir = w.next().ok_or("missing directory")?;
            Ok(match std::fs::read_dir(dir) {
                Ok(d) => format!("ok {}", d.count()),
                Err(e) => format!("ok refused {}", e.raw_os_error().unwrap_or(0)),
            })
        })(),
        // A user namespace of our own, through util-linux's `unshare`
        // (started as any program is: so that works too).
        "userns" => std::process::Command::new("unshare")
            .args(["--user", "true"])
            .output()
            .map(|o| {
                if o.status.success() {
                    "ok made".to_string()
                } else {
                    let why = String::from_utf8_lossy(&o.stderr);
                    format!("ok refused {}", why.trim().replace('\n', " "))
                }
            })
            .map_err(|e| e.to_string()),
        "netns" => std::fs::read_link("/proc/self/ns/net")
            .map(|l| format!("ok {}", l.display()))
            .map_err(|e| e.to_string()),
        "inherited-dom0" => inherited
            .as_ref()
            .ok_or_else(|| "no inherited connection".to_string())
            .and_then(ask_dom0)
            .map(|a| format!("ok {a}")),
        "inherited-attach" => (|| {
            let sock = inherited.take().ok_or("no inherited connection")?;
            let token = w.next().ok_or("missing token")?;
            let d = SimDomain::attach_guest_on(sock, token).map_err(|e| e.to_string())?;
            let id = d.domid();
            *dom = Some(d);
            Ok(format!("ok {id}"))
        })(),
        "dom0" => (|| {
            let socket = w.next().ok_or("missing socket")?;
            let sock =
                sys::connect_seqpacket(Path::new(socket)).map_err(|e| format!("connect: {e}"))?;
            Ok(format!("ok {}", ask_dom0(&sock)?))
        })(),
        "signal" => {
            let pid: i32 = match num(w.next()) {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            Ok(match sys::kill(pid, 0) {
                Ok(()) => "ok delivered".into(),
                Err(e) => format!("ok refused {}", e.raw_os_error().unwrap_or(0)),
            })
        }
        _ => return None,
    };
    Some(answer)
}

/// What `map` mapped, until `unmap`.
static MAPPINGS: std::sync::Mutex<Vec<crate::client::SimMapping>> =
    std::sync::Mutex::new(Vec::new());

fn command(
    inherited: &mut Option<OwnedFd>,
    dom: &mut Option<SimDomain>,
    line: &str,
) -> Result<String, String> {
    let mut w = line.split_whitespace();
    let cmd = w.next().unwrap_or("");
    if let Some(answer) = confined_command(inherited, dom, cmd, w.clone()) {
        return answer;
    }
    if cmd == "attach" {
        let socket = w.next().ok_or("missing socket")?;
        let token = w.next().ok_or("missing token")?;
        let d = SimDomain::attach_guest(Path::new(socket), token).map_err(|e| e.to_string())?;
        let id = d.domid();
        *dom = Some(d);
        return Ok(format!("ok {id}"));
    }
    if cmd == "attach-dom0" {
        let socket = w.next().ok_or("missing socket")?;
        let d = SimDomain::attach_dom0(Path::new(socket)).map_err(|e| e.to_string())?;
        *dom = Some(d);
        return Ok("ok 0".into());
    }
    if cmd == "rawecho" {
        let (fin, fout, n): (i32, i32, u64) = (num(w.next())?, num(w.next())?, num(w.next())?);
        for _ in 0..n {
            wait(fin, -1)?;
            sys::eventfd_signal(fout).map_err(|e| e.to_string())?;
        }
        return Ok("ok".into());
    }
    let d = dom.as_ref().ok_or("not attached")?;
    let e = |e: platform::Error| e.to_string();
    match cmd {
        // As dom0: maps a grant, kept mapped until `unmap` or our exit.
        "map" => {
            let (granter, gref): (u16, u32) = (num(w.next())?, num(w.next())?);
            let spec = platform::GrantSpec {
                domid: DomId(granter),
                gref: GrantRef(gref),
                writable: w.next() == Some("rw"),
            };
            let m = platform::GrantMapper::map_grants(d, &[spec]).map_err(e)?;
            MAPPINGS.lock().map_err(|_| "poisoned")?.push(m);
            Ok("ok".into())
        }
        "unmap" => {
            MAPPINGS.lock().map_err(|_| "poisoned")?.clear();
            Ok("ok".into())
        }
        "grant" => {
            let (to, pfn): (u16, u64) = (num(w.next())?, num(w.next())?);
            let ro = w.next() == Some("ro");
            Ok(format!(
                "ok {}",
                d.grant_access(DomId(to), Pfn(pfn), ro).map_err(e)?
            ))
        }
        "end" => match d.end_access(GrantRef(num(w.next())?)) {
            Ok(()) => Ok("ok".into()),
            Err(platform::Error::GrantInUse(_)) => Ok("ok inuse".into()),
            Err(x) => Err(x.to_string()),
        },
        "alloc" => Ok(format!("ok {}", d.alloc_pages(num(w.next())?).map_err(e)?)),
        "write" => {
            let (pfn, off): (u64, usize) = (num(w.next())?, num(w.next())?);
            let data = hex(w.next())?;
            d.pages(Pfn(pfn), 1)
                .map_err(e)?
                .write_bytes(off, &data)
                .map_err(|x| x.to_string())?;
            Ok("ok".into())
        }
        "read" => {
            let (pfn, off, len): (u64, usize, usize) =
                (num(w.next())?, num(w.next())?, num(w.next())?);
            let mut buf = vec![0; len];
            d.pages(Pfn(pfn), 1)
                .map_err(e)?
                .read_bytes(off, &mut buf)
                .map_err(|x| x.to_string())?;
            Ok(format!("ok {}", encode_hex(&buf)))
        }
        "p2m" => Ok(format!(
            "ok {}",
            d.pfn_to_mfn(Pfn(num(w.next())?)).map_err(e)?
        )),
        "exchange" => {
            let (pfn, count, bits): (u64, u64, u32) =
                (num(w.next())?, num(w.next())?, num(w.next())?);
            Ok(format!(
                "ok {}",
                d.exchange_contiguous(Pfn(pfn), count, bits).map_err(e)?
            ))
        }
        "unbound" => Ok(format!(
            "ok {}",
            d.alloc_unbound(DomId(num(w.next())?)).map_err(e)?
        )),
        "bind" => {
            let (dom, port): (u16, u32) = (num(w.next())?, num(w.next())?);
            Ok(format!(
                "ok {}",
                d.bind_interdomain(DomId(dom), Port(port)).map_err(e)?
            ))
        }
        "notify" => d
            .notify(Port(num(w.next())?))
            .map(|()| "ok".into())
            .map_err(e),
        "hangup" => d.hang_up_hv().map(|()| "ok".into()).map_err(e),
        "jam" => {
            // What a hostile guest can do to the event object it polls:
            // make it blocking and, were it an eventfd, fill it.
            let fd = d.pollable(Port(num(w.next())?)).map_err(e)?;
            sys::set_blocking(fd.as_raw_fd()).map_err(|x| x.to_string())?;
            let filled = sys::write_u64(fd.as_raw_fd(), u64::MAX - 1);
            Ok(format!("ok {filled}"))
        }
        "shutdown" => {
            let r = platform::ShutdownReason::from_code(num(w.next())?).ok_or("no such reason")?;
            platform::Schedule::shutdown(d, r)
                .map(|()| "ok".into())
                .map_err(e)
        }
        "close" => d
            .close(Port(num(w.next())?))
            .map(|()| "ok".into())
            .map_err(e),
        "wait" => {
            let (port, ms): (u32, i32) = (num(w.next())?, num(w.next())?);
            let fd = d.pollable(Port(port)).map_err(e)?;
            use std::os::fd::AsRawFd;
            Ok(if wait(fd.as_raw_fd(), ms)? {
                "ok event"
            } else {
                "ok timeout"
            }
            .into())
        }
        "echo" => {
            let (port, n): (u32, u64) = (num(w.next())?, num(w.next())?);
            let fd = d.pollable(Port(port)).map_err(e)?;
            use std::os::fd::AsRawFd;
            for _ in 0..n {
                wait(fd.as_raw_fd(), -1)?;
                d.notify(Port(port)).map_err(e)?;
            }
            Ok("ok".into())
        }
        _ => Err(format!("unknown command {cmd:?}")),
    }
}

/// Runs the probe on stdin and stdout until `exit` or end of input.
pub fn main() -> std::process::ExitCode {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut dom = None;
    let mut inherited = crate::confine::inherited_hv();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "exit" {
            break;
        }
        let answer =
            command(&mut inherited, &mut dom, &line).unwrap_or_else(|e| format!("err {e}"));
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    std::process::ExitCode::SUCCESS
}
