//! The NBD export against QEMU's own client: qemu-io writes patterns and
//! verifies them, qemu-img reads the size, through our server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::{Arc, Mutex};

use blk::storage::MemStorage;

fn export(name: &str) -> (std::path::PathBuf, Arc<Mutex<MemStorage>>) {
    let dir = std::env::temp_dir().join(format!("dom0kit-nbd-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("xvda.sock");
    let disk = Arc::new(Mutex::new(MemStorage::new(8 << 20)));
    blk::nbd::export(&sock, "xvda", disk.clone()).unwrap();
    (sock, disk)
}

fn qemu_io(sock: &std::path::Path, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(format!("nbd+unix:///xvda?socket={}", sock.display()));
    let out = c.output().expect("qemu-io (package qemu-utils) runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

#[test]
fn qemu_io_writes_and_verifies_patterns() {
    let (sock, disk) = export("io");
    let out = qemu_io(
        &sock,
        &[
            "write -P 0xab 4096 64k",
            "write -P 0xcd -f 1m 512",
            "write -P 0xee 2m 8k",
            "write -z 2m 8k",
            "write -P 0x99 3m 64k",
            "discard 3m 32k",
            "flush",
            "read -P 0xab 4096 64k",
            "read -P 0xcd 1m 512",
            "read -P 0 2m 8k",
            "read -P 0x99 3178496 32k",
        ],
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(!out.to_lowercase().contains("error"), "{out}");
    let bytes = disk.lock().unwrap().contents();
    assert!(bytes[4096..4096 + 65536].iter().all(|&b| b == 0xab));
    assert!(bytes[1 << 20..(1 << 20) + 512].iter().all(|&b| b == 0xcd));
    // A trim reached the disk (MemStorage zeroes what it discards).
    assert!(bytes[3 << 20..(3 << 20) + 32768].iter().all(|&b| b == 0));
    // A pattern that is not there is caught: the test can fail.
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", "-c", "read -P 0x77 4096 4k"])
        .arg(format!("nbd+unix:///xvda?socket={}", sock.display()));
    let out = c.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Pattern verification failed"), "{text}");
}

#[test]
fn qemu_img_sees_the_size() {
    let (sock, _disk) = export("img");
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(format!("nbd+unix:///xvda?socket={}", sock.display()))
        .output()
        .expect("qemu-img runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"virtual-size\": 8388608"), "{text}");
}
