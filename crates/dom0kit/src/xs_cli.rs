//! `dom0kit xenstore MODE ...`, and the same binary called as
//! `xenstore-read`, `xenstore-ls`, ...: the command line of Debian's
//! xenstore-utils, with its options, output format, messages and exit codes.
//! Tested against Debian's own tools on the same daemon.

use std::io::Write;
use std::process::ExitCode;

use xenstore::client::{Client, ClientError, Tx};
use xenstore::escape::{escape, unescape};
use xenstore::{Access, Perm, Perms, XsError};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Read,
    Write,
    Rm,
    Exists,
    List,
    Ls,
    Chmod,
    Watch,
    Control,
}

fn mode(name: &str) -> Option<Mode> {
    Some(match name {
        "read" => Mode::Read,
        "write" => Mode::Write,
        "rm" => Mode::Rm,
        "exists" => Mode::Exists,
        "list" => Mode::List,
        "ls" => Mode::Ls,
        "chmod" => Mode::Chmod,
        "watch" => Mode::Watch,
        "control" => Mode::Control,
        _ => return None,
    })
}

#[derive(Default)]
struct Flags {
    flat: bool,
    prefix: bool,
    tidy: bool,
    upto: bool,
    recurse: bool,
    raw: bool,
    watches: Option<i64>,
}

/// Exits like `errx(1, ...)`: the program name, the message, status 1.
fn fail(prog: &str, msg: &str) -> ExitCode {
    eprintln!("{prog}: {msg}");
    ExitCode::from(1)
}

/// `prog` is the short name for messages; usage names the program as it
/// was called (`argv0`), as xenstore-utils do.
struct Names<'a> {
    prog: &'a str,
    argv0: &'a str,
    with_mode: bool,
}

fn usage(n: &Names<'_>, m: Mode) -> ExitCode {
    let (name, args) = match m {
        Mode::Read => ("read ", "[-h] [-p] [-s] [-R] key [...]"),
        Mode::Write => ("write ", "[-h] [-s] [-R] key value [...]"),
        Mode::Rm => ("rm ", "[-h] [-s] [-t] key [...]"),
        Mode::Exists => ("exists ", "[-h] [-p] [-s] key [...]"),
        Mode::List => ("list ", "[-h] [-p] [-s] key [...]"),
        Mode::Ls => ("ls ", "[-h] [-f] [-p] [-s] [path]"),
        Mode::Chmod => ("chmod ", "[-h] [-u] [-r] [-s] key <mode [modes...]>"),
        Mode::Watch => ("watch ", "[-h] [-n NR] key"),
        Mode::Control => ("control ", "command [args...]"),
    };
    let mode = if n.with_mode { name } else { "" };
    fail(n.prog, &format!("Usage: {} {mode}{args}", n.argv0))
}

/// Parses options as GNU getopt does (anywhere, bundled, `--long`, `--`);
/// returns the operands.
fn parse(n: &Names<'_>, m: Mode, args: &[String]) -> Result<(Flags, Vec<String>), ExitCode> {
    let mut f = Flags::default();
    let mut operands = Vec::new();
    let mut it = args.iter();
    // Options of some mode; others are unknown to getopt (warned, ignored).
    let known = |c: char| "hfspturnR".contains(c);
    let allowed = |c: char| match c {
        'h' | 's' => true,
        'f' => m == Mode::Ls,
        'p' => matches!(m, Mode::Read | Mode::List | Mode::Ls),
        't' => m == Mode::Rm,
        'u' | 'r' => m == Mode::Chmod,
        'n' => m == Mode::Watch,
        'R' => matches!(m, Mode::Read | Mode::Write),
        _ => false,
    };
    while let Some(a) = it.next() {
        if a == "--" {
            operands.extend(it.by_ref().cloned());
            break;
        }
        let shorts: Vec<char> = if let Some(long) = a.strip_prefix("--") {
            let c = match long.split('=').next().unwrap_or("") {
                "help" => 'h',
                "flat" => 'f',
                "socket" => 's',
                "prefix" => 'p',
                "tidy" => 't',
                "upto" => 'u',
                "recurse" => 'r',
                "number" => 'n',
                "raw" => 'R',
                _ => {
                    eprintln!("{}: unrecognized option '{a}'", n.argv0);
                    continue;
                }
            };
            if c == 'n' {
                if let Some((_, v)) = long.split_once('=') {
                    f.watches = Some(v.parse().unwrap_or(0));
                    continue;
                }
            }
            vec![c]
        } else if a.len() > 1 && a.starts_with('-') && m != Mode::Control {
            a[1..].chars().collect()
        } else {
            operands.push(a.clone());
            continue;
        };
        let mut chars = shorts.iter();
        while let Some(&c) = chars.next() {
            if !known(c) {
                eprintln!("{}: invalid option -- '{c}'", n.argv0);
                continue;
            }
            if !allowed(c) || c == 'h' {
                return Err(usage(n, m));
            }
            match c {
                'f' => f.flat = true,
                'p' => f.prefix = true,
                't' => f.tidy = true,
                'u' => f.upto = true,
                'r' => f.recurse = true,
                'R' => f.raw = true,
                'n' => {
                    let rest: String = chars.by_ref().collect();
                    let v = if rest.is_empty() {
                        it.next().cloned()
                    } else {
                        Some(rest)
                    };
                    let Some(v) = v else {
                        eprintln!("{}: option requires an argument -- 'n'", n.argv0);
                        return Err(usage(n, m));
                    };
                    // atoi: leading digits, else 0.
                    let digits: String = v
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '-')
                        .collect();
                    f.watches = Some(digits.parse().unwrap_or(0));
                }
                _ => {} // -s: we only speak to the socket anyway.
            }
        }
    }
    Ok((f, operands))
}

/// Runs mode `name` (from `xenstore-NAME` or `dom0kit xenstore NAME`).
pub(crate) fn run(argv0: &str, name: &str, with_mode: bool, args: &[String]) -> ExitCode {
    let prog = argv0.rsplit('/').next().unwrap_or(argv0);
    let names = Names {
        prog,
        argv0,
        with_mode,
    };
    let Some(m) = mode(name) else {
        return fail(prog, &format!("unknown mode {name}\n"));
    };
    let (flags, ops) = match parse(&names, m, args) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let arity_ok = match m {
        Mode::Ls => true,
        Mode::Write => !ops.is_empty() && ops.len() % 2 == 0,
        _ => !ops.is_empty(),
    };
    if !arity_ok {
        return usage(&names, m);
    }
    let mut xs = match Client::open() {
        Ok(c) => c,
        Err(e) => return fail(prog, &format!("xs_open: {}", describe(&e))),
    };
    match m {
        Mode::Ls => ls(prog, &mut xs, &ops, &flags),
        Mode::Watch => watch(prog, &mut xs, &ops, &flags),
        Mode::Control => control(prog, &mut xs, &ops),
        _ => transactional(prog, &mut xs, m, &ops, &flags),
    }
}

/// The message `err(3)` would print for the failure: strerror's text.
fn describe(e: &ClientError) -> String {
    match e {
        ClientError::Xs(x) => {
            let s = std::io::Error::from_raw_os_error(x.errno()).to_string();
            match s.rfind(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
        ClientError::Io(io) => io.to_string(),
        ClientError::Protocol(p) => (*p).to_string(),
    }
}

/// Read, write, rm, exists, list and chmod run in a transaction (read and
/// write only for more than one key), retried on `EAGAIN`; output is
/// printed once the transaction ends.
fn transactional(prog: &str, xs: &mut Client, m: Mode, ops: &[String], f: &Flags) -> ExitCode {
    let use_tx = match m {
        Mode::Read => ops.len() > 1,
        Mode::Write => ops.len() > 2,
        _ => true,
    };
    loop {
        let tx = if use_tx {
            match xs.transaction_start() {
                Ok(t) => t,
                Err(_) => return fail(prog, "couldn't start transaction"),
            }
        } else {
            Tx::NONE
        };
        let mut out = Vec::new();
        let result = perform(prog, xs, tx, m, ops, f, &mut out);
        let failed = match result {
            Ok(failed) => failed,
            Err(code) => return code,
        };
        if use_tx {
            match xs.transaction_end(tx, !failed) {
                Ok(()) => {}
                Err(ClientError::Xs(XsError::Again)) if !failed => continue,
                Err(_) => return fail(prog, "couldn't end transaction"),
            }
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&out);
        let _ = stdout.flush();
        return if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        };
    }
}

/// One pass over the operands; `Ok(true)` if one failed (and was reported).
fn perform(
    prog: &str,
    xs: &mut Client,
    tx: Tx,
    m: Mode,
    ops: &[String],
    f: &Flags,
    out: &mut Vec<u8>,
) -> Result<bool, ExitCode> {
    let warn = |msg: String| eprintln!("{prog}: {msg}");
    match m {
        Mode::Read => {
            for key in ops {
                let Ok(v) = xs.read(tx, key) else {
                    warn(format!("couldn't read path {key}"));
                    return Ok(true);
                };
                if f.prefix {
                    out.extend_from_slice(format!("{key}: ").as_bytes());
                }
                if f.raw {
                    out.extend_from_slice(&v);
                } else {
                    out.extend_from_slice(escape(&v).as_bytes());
                    out.push(b'\n');
                }
            }
        }
        Mode::Write => {
            for pair in ops.chunks(2) {
                let value = if f.raw {
                    pair[1].as_bytes().to_vec()
                } else {
                    unescape(pair[1].as_bytes())
                };
                if xs.write(tx, &pair[0], &value).is_err() {
                    warn(format!("could not write path {}", pair[0]));
                    return Ok(true);
                }
            }
        }
        Mode::Rm => {
            for key in ops {
                let mut path = key.clone();
                loop {
                    if xs.rm(tx, &path).is_err() {
                        warn(format!("could not remove path {path}"));
                        return Ok(true);
                    }
                    if !f.tidy {
                        break;
                    }
                    // Tidy: go up while the parent has no value and no child.
                    let Some(i) = path.rfind('/') else { break };
                    path.truncate(i);
                    let empty_value = matches!(xs.read(tx, &path), Ok(v) if v.is_empty());
                    let childless = matches!(xs.directory(tx, &path), Ok(c) if c.is_empty());
                    if !(empty_value && childless) {
                        break;
                    }
                }
            }
        }
        Mode::Exists => {
            for key in ops {
                if xs.read(tx, key).is_err() {
                    return Ok(true);
                }
            }
        }
        Mode::List => {
            for key in ops {
                let Ok(children) = xs.directory(tx, key) else {
                    warn(format!("could not list path {key}"));
                    return Ok(true);
                };
                for c in children {
                    if f.prefix {
                        out.extend_from_slice(format!("{key}/").as_bytes());
                    }
                    out.extend_from_slice(format!("{c}\n").as_bytes());
                }
            }
        }
        Mode::Chmod => {
            let (path, modes) = (&ops[0], &ops[1..]);
            let mut entries = Vec::new();
            for s in modes {
                let access = match s.as_bytes().first() {
                    Some(b'n') => Access::None,
                    Some(b'r') => Access::Read,
                    Some(b'w') => Access::Write,
                    Some(b'b') => Access::Both,
                    other => {
                        let c = other.map_or(String::new(), |&c| (c as char).to_string());
                        return Err(fail(
                            prog,
                            &format!("Invalid permission specification: '{c}'"),
                        ));
                    }
                };
                // atoi of the rest, as xenstore-chmod reads it.
                let digits: String = s[1..].chars().take_while(char::is_ascii_digit).collect();
                let domid = digits.parse::<u32>().unwrap_or(0) as u16;
                entries.push(Perm { domid, access });
            }
            let Ok(perms) = Perms::new(entries) else {
                return Err(fail(prog, "no permissions given"));
            };
            chmod(prog, xs, tx, path, &perms, f.upto, f.recurse)?;
        }
        Mode::Ls | Mode::Watch | Mode::Control => {}
    }
    Ok(false)
}

fn chmod(
    prog: &str,
    xs: &mut Client,
    tx: Tx,
    path: &str,
    perms: &Perms,
    upto: bool,
    recurse: bool,
) -> Result<(), ExitCode> {
    if path.is_empty() {
        return Ok(());
    }
    if let Err(e) = xs.set_perms(tx, path, perms) {
        return Err(fail(
            prog,
            &format!(
                "Error occurred setting permissions on '{path}': {}",
                describe(&e)
            ),
        ));
    }
    if upto {
        match path.rfind('/') {
            Some(i) => chmod(prog, xs, tx, &path[..i], perms, true, false)?,
            None => {
                return Err(fail(
                    prog,
                    &format!("Unable to locate path separator '/' in '{path}'"),
                ))
            }
        }
    }
    if recurse {
        if let Ok(children) = xs.directory(tx, path) {
            for c in children {
                chmod(prog, xs, tx, &format!("{path}/{c}"), perms, false, true)?;
            }
        }
    }
    Ok(())
}

const TAG_LEN: usize = " = \"...\"".len();

fn ls(prog: &str, xs: &mut Client, ops: &[String], f: &Flags) -> ExitCode {
    let (max_width, desired) = if f.flat {
        (i32::MAX as usize / 2, 0)
    } else {
        (terminal_width().map_or(80, |w| w.saturating_sub(2)), 60)
    };
    let root = vec!["/".to_string()];
    let mut stdout = std::io::stdout().lock();
    for path in if ops.is_empty() { &root } else { ops } {
        let mut out = Vec::new();
        let r = ls_node(xs, path, 0, f, max_width, desired, &mut out);
        let _ = stdout.write_all(&out);
        if let Err(e) = r {
            let _ = stdout.flush();
            return fail(prog, &format!("xs_directory ({path}): {}", describe(&e)));
        }
    }
    let _ = stdout.flush();
    ExitCode::SUCCESS
}

fn ls_node(
    xs: &mut Client,
    path: &str,
    depth: usize,
    f: &Flags,
    max_width: usize,
    desired: usize,
    out: &mut Vec<u8>,
) -> Result<(), ClientError> {
    let children = match xs.directory(Tx::NONE, path) {
        Ok(c) => c,
        // A node that disappears while recursing is skipped silently.
        Err(ClientError::Xs(XsError::NoEnt | XsError::Acces)) if depth > 0 => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in children {
        let full = if path.ends_with('/') {
            format!("{path}{name}")
        } else {
            format!("{path}/{name}")
        };
        let mut line = String::new();
        if f.flat {
            line.push_str(&full);
        } else {
            line.push_str(&" ".repeat(depth));
            let room = max_width.saturating_sub(TAG_LEN + depth);
            line.push_str(prefix_of(&name, room));
        }
        // The width printf would count: bytes, and nothing for -f's path.
        let mut width = if f.flat { 0 } else { line.len() };
        match xs.read(Tx::NONE, &full) {
            Err(_) => line.push_str(":\n"),
            Ok(v) => {
                let shown = escape(&v);
                if max_width < width + v.len() + TAG_LEN {
                    let room = max_width.saturating_sub(TAG_LEN + width);
                    line.push_str(&format!(" = \"{}\\...\"", prefix_of(&shown, room)));
                } else {
                    let part = format!(" = \"{shown}\"");
                    width += part.len();
                    line.push_str(&part);
                    if f.prefix {
                        line.push(' ');
                        width += 1;
                        while width < desired.min(max_width) {
                            line.push(if width & 1 == 1 { '.' } else { ' ' });
                            width += 1;
                        }
                    }
                }
            }
        }
        if f.prefix {
            if let Ok(perms) = xs.get_perms(Tx::NONE, &full) {
                let list: Vec<String> = perms.entries().iter().map(ToString::to_string).collect();
                line.push_str(&format!("  ({})", list.join(",")));
            }
        }
        line.push('\n');
        out.extend_from_slice(line.as_bytes());
        ls_node(xs, &full, depth + 1, f, max_width, desired, out)?;
    }
    Ok(())
}

fn watch(prog: &str, xs: &mut Client, ops: &[String], f: &Flags) -> ExitCode {
    for w in ops {
        if xs.watch(w, w).is_err() {
            return fail(prog, &format!("Unable to add watch on {w}\n"));
        }
    }
    let max = f.watches.unwrap_or(-1);
    let mut count = 0i64;
    let mut stdout = std::io::stdout();
    while max < 0 || count < max {
        match xs.read_watch() {
            Ok(e) => {
                let _ = writeln!(stdout, "{}", e.path);
                let _ = stdout.flush();
            }
            Err(_) => return ExitCode::from(1),
        }
        count += 1;
    }
    ExitCode::SUCCESS
}

fn control(prog: &str, xs: &mut Client, ops: &[String]) -> ExitCode {
    let args: Vec<&[u8]> = ops.iter().map(|s| s.as_bytes()).collect();
    match xs.control(&args) {
        Ok(reply) => {
            let text = reply.strip_suffix(b"\0").unwrap_or(&reply);
            let mut stdout = std::io::stdout();
            let _ = stdout.write_all(text);
            let _ = stdout.write_all(b"\n");
            ExitCode::SUCCESS
        }
        Err(e) => fail(prog, &format!("control {}: {}", ops[0], describe(&e))),
    }
}

/// The first `n` bytes of `s` (fewer if that would cut a character).
fn prefix_of(s: &str, n: usize) -> &str {
    let mut n = n.min(s.len());
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// Columns of the terminal on stdout, if it is one.
#[allow(unsafe_code)]
fn terminal_width() -> Option<usize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through a valid pointer.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some(usize::from(ws.ws_col))
}
