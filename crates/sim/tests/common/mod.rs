//! A simulated host for tests: the hypervisor on a thread of the test
//! process, this process attached as dom0, guests as probe processes.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use platform::{DomainConfig, DomainControl};
use sim::{HvConfig, HvHandle, Hypervisor, SimDomain};

pub struct Host {
    pub hv: HvHandle,
    pub dom0: SimDomain,
    pub dir: PathBuf,
}

static N: AtomicU32 = AtomicU32::new(0);

pub fn run_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dom0kit-sim-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Host {
    pub fn new() -> Host {
        Host::with(|_| {})
    }

    pub fn with(f: impl FnOnce(&mut HvConfig)) -> Host {
        let dir = run_dir();
        let mut config = HvConfig::small(&dir);
        f(&mut config);
        let hv = Hypervisor::spawn(config).unwrap();
        let dom0 = SimDomain::attach_dom0(hv.socket()).unwrap();
        Host { hv, dom0, dir }
    }

    /// Creates a domain of `pages` pages and starts a probe attached as it.
    pub fn guest(&self, pages: u64) -> Guest {
        self.guest_with(pages, 4)
    }

    /// [`guest`](Self::guest), its grant table `grant_frames` frames.
    pub fn guest_with(&self, pages: u64, grant_frames: u32) -> Guest {
        let d = self
            .dom0
            .create_domain(&DomainConfig {
                pages,
                grant_frames,
            })
            .unwrap();
        let mut g = Guest::spawn();
        let answer = g.cmd(&format!(
            "attach {} {}",
            self.hv.socket().display(),
            d.token
        ));
        assert_eq!(answer, d.domid.to_string());
        g.domid = d.domid.0;
        g
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Guest {
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub domid: u16,
}

impl Guest {
    pub fn spawn() -> Guest {
        Self::spawn_with(|_| {})
    }

    pub fn spawn_with(f: impl FnOnce(&mut Command)) -> Guest {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dom0kit-sim-probe"));
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        f(&mut cmd);
        Self::from_child(cmd.spawn().unwrap())
    }

    /// A probe started elsewhere, with piped standard input and output.
    pub fn from_child(mut child: Child) -> Guest {
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Guest {
            child,
            stdin,
            stdout,
            domid: 0,
        }
    }

    /// Sends a command; returns the answer, which must be `ok`.
    pub fn cmd(&mut self, line: &str) -> String {
        let a = self.try_cmd(line);
        a.strip_prefix("ok")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| panic!("{line}: {a}"))
    }

    /// Sends a command; returns the whole answer.
    pub fn try_cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut a = String::new();
        self.stdout.read_line(&mut a).unwrap();
        a.trim_end().to_string()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `f` holds, up to two seconds.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}
