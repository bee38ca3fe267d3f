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
    // Each row's numbers, in order: ours, then the limit and the ratio
    // where there is a limit (the ratio is the faster over the slower).
    let numbers = |row: &str| -> Vec<f64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("{row} missing from:\n{text}"));
        line[row.len()..]
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect()
    };
    for (row, lower_is_better) in [
        ("event-channel round trip", true),
        ("grant copy, 32 x 4 KiB batches", false),
    ] {
        let n = numbers(row);
        let [ours, limit, ratio, ..] = n[..] else {
            panic!("{row}: {n:?}");
        };
        assert!(ours > 0.0 && limit > 0.0, "{row}: {n:?}");
        let expected = if lower_is_better {
            limit / ours
        } else {
            ours / limit
        };
        // The ratio printed to 2 places, its operands to 3.
        assert!((ratio - expected).abs() < 0.01, "{row}: {n:?}");
    }
    for row in ["grant copy of 0 bytes, per op", "grant map + unmap"] {
        assert!(numbers(row).first().is_some_and(|&v| v > 0.0), "{row}");
    }
    assert!(text.contains("raw eventfd round trip") && text.contains("memcpy of the same bytes"));
}
