//! The NBD storage engine against `qemu-nbd`: data both ways, flush and
//! zeroing, a server that restarts between requests, a read-only export,
//! and the server's own errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use blk::remote::{Address, NbdStorage, Target};
use blk::storage::Storage;

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("remote-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_nbd(image: &Path, sock: &Path, extra: &[&str]) -> Server {
    let _ = std::fs::remove_file(sock);
    let child = Command::new("qemu-nbd")
        .args(["-f", "raw", "-x", "disk", "--persistent", "--shared=4"])
        .args(extra)
        .arg(format!("--socket={}", sock.display()))
        .arg(image)
        .spawn()
        .expect("qemu-nbd (package qemu-utils) runs");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Server(child)
}

fn image(d: &Path, size: u64) -> PathBuf {
    let p = d.join("disk.img");
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn target(sock: &Path) -> Target {
    Target {
        address: Address::Unix(sock.into()),
        export: "disk".into(),
    }
}

#[test]
fn data_flush_and_zeroing_reach_the_image() {
    let d = dir("data");
    let img = image(&d, 1 << 20);
    let sock = d.join("s");
    let _server = qemu_nbd(&img, &sock, &[]);
    let s = NbdStorage::open(target(&sock), true).unwrap();
    assert_eq!(s.size(), 1 << 20);
    s.write_at(&[0xab; 8192], 4096).unwrap();
    s.flush().unwrap();
    let mut back = [0u8; 8192];
    s.read_at(&mut back, 4096).unwrap();
    assert!(back.iter().all(|&b| b == 0xab));
    s.discard(4096, 4096).unwrap();
    s.flush().unwrap();
    let data = std::fs::read(&img).unwrap();
    assert!(data[4096..8192].iter().all(|&b| b == 0));
    assert!(data[8192..12288].iter().all(|&b| b == 0xab));
}

#[test]
fn a_server_that_restarts_between_requests_is_reached_again() {
    let d = dir("restart");
    let img = image(&d, 1 << 20);
    let sock = d.join("s");
    let server = qemu_nbd(&img, &sock, &[]);
    let s = NbdStorage::open(target(&sock), true).unwrap();
    s.write_at(&[1; 4096], 0).unwrap();
    s.flush().unwrap();
    drop(server);
    let _server = qemu_nbd(&img, &sock, &[]);
    // The old connection is dead: the request is sent again on a new one.
    s.write_at(&[2; 4096], 4096).unwrap();
    let mut back = [0u8; 8192];
    s.read_at(&mut back, 0).unwrap();
    assert!(back[..4096].iter().all(|&b| b == 1));
    assert!(back[4096..].iter().all(|&b| b == 2));
}

#[test]
fn a_server_that_is_gone_is_an_error_not_a_hang() {
    let d = dir("gone");
    let img = image(&d, 1 << 20);
    let sock = d.join("s");
    let server = qemu_nbd(&img, &sock, &[]);
    let s = NbdStorage::open(target(&sock), true).unwrap();
    drop(server);
    let t = Instant::now();
    assert!(s.read_at(&mut [0u8; 512], 0).is_err());
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_read_only_export_is_refused_for_writing_and_errors_are_the_servers() {
    let d = dir("ro");
    let img = image(&d, 1 << 20);
    let sock = d.join("s");
    let _server = qemu_nbd(&img, &sock, &["--read-only"]);
    let e = NbdStorage::open(target(&sock), true).err().unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    let s = NbdStorage::open(target(&sock), false).unwrap();
    let mut buf = [0u8; 512];
    s.read_at(&mut buf, 0).unwrap();
    // The server refuses (EPERM); the connection stays and keeps working.
    assert!(s.write_at(&[1; 512], 0).is_err());
    s.read_at(&mut buf, 512).unwrap();
    // An unknown export is refused at negotiation, with the reason.
    let mut t = target(&sock);
    t.export = "nope".into();
    assert!(NbdStorage::open(t, false).is_err());
}
