//! The command line, as a user runs it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

fn dom0kit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dom0kit"))
}

#[test]
fn host_commands_without_a_host_say_so() {
    let dir = std::env::temp_dir().join(format!("dom0kit-cli-nohost-{}", std::process::id()));
    for cmd in ["list", "down", "destroy"] {
        let out = dom0kit()
            .args([cmd, "--run-dir"])
            .arg(&dir)
            .args(if cmd == "destroy" {
                &["x"][..]
            } else {
                &[][..]
            })
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no host runs in"),
            "{cmd}"
        );
    }
}

#[test]
fn hv_serves_its_socket_in_the_run_dir() {
    let dir = std::env::temp_dir().join(format!("dom0kit-cli-hv-{}", std::process::id()));
    let mut child = dom0kit()
        .args(["hv", "--run-dir"])
        .arg(&dir)
        .args(["--machine-memory", "64M", "--dom0-memory", "4M"])
        .spawn()
        .unwrap();
    let socket = dir.join("hv.sock");
    let mut attached = None;
    for _ in 0..200 {
        if let Ok(d) = sim::SimDomain::attach_dom0(&socket) {
            attached = Some(d);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let dom0 = attached.expect("dom0 attached to dom0kit hv");
    let (total, free) = dom0.physinfo().unwrap();
    assert_eq!(total, 16384);
    assert_eq!(
        free,
        16384 - 1024 - 64,
        "dom0's memory and grant frames are taken"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bench_sim_prints_every_row_with_its_ratio() {
    let out = dom0kit()
        .args(["bench", "sim", "--quick"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "event-channel round trip",
        "grant copy",
        "grant map + unmap",
    ] {
        assert!(text.contains(row), "{row} missing from:\n{text}");
    }
    assert!(text.contains("raw eventfd round trip") && text.contains("memcpy of the same bytes"));
}
