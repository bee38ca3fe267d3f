//! Daemons for the xenstore tests: Debian's C xenstored (through
//! `../shared/peers/xenstored-peer`) and ours (`dom0kit xenstored`).

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Peer {
    pub socket: PathBuf,
    pub pid: i32,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

pub fn start_c_xenstored(name: &str) -> Peer {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/peers/xenstored-peer");
    assert!(
        script.exists(),
        "{} is missing: the peers live in shared/ beside the checkout",
        script.display()
    );
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("xs-peer-{name}"));
    let _ = std::fs::remove_dir_all(&work);
    let out = Command::new("bash")
        .arg(&script)
        .arg("c")
        .arg(&work)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xenstored-peer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let mut words = line.split_whitespace();
    let socket = PathBuf::from(words.next().unwrap());
    let pid = words.next().unwrap().parse().unwrap();
    Peer { socket, pid }
}

/// The stdout of `child`, which must exit within `secs` seconds.
pub fn finish_within(mut child: Child, secs: u64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {secs} s; printed {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

/// Our daemon, started as `dom0kit xenstored`.
pub struct Ours {
    pub child: Child,
    pub socket: PathBuf,
}

impl Drop for Ours {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_our_xenstored(name: &str) -> Ours {
    start_our_xenstored_with(name, &[])
}

/// Ours with extra arguments (`--state FILE`, `--restore`); the run
/// directory is kept between starts of the same name.
pub fn start_our_xenstored_with(name: &str, extra: &[&std::ffi::OsStr]) -> Ours {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("xs-ours-{name}"));
    if extra.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let socket = dir.join("socket");
    let _ = std::fs::remove_file(&socket);
    let child = Command::new(env!("CARGO_BIN_EXE_dom0kit"))
        .args(["xenstored", "--socket"])
        .arg(&socket)
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Owned by the guard from here on, which kills and reaps it.
    let ours = Ours { child, socket };
    for _ in 0..200 {
        if std::os::unix::net::UnixStream::connect(&ours.socket).is_ok() {
            return ours;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("dom0kit xenstored did not start");
}
