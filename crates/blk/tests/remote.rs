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

/// A server that negotiates (one export of 1 MiB) and then does what
/// `then` says with the connection.
fn fake_server(sock: &Path, then: fn(std::os::unix::net::UnixStream)) {
    use std::io::{Read, Write};
    let _ = std::fs::remove_file(sock);
    let l = std::os::unix::net::UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            let mut hello = 0x4e42_444d_4147_4943u64.to_be_bytes().to_vec();
            hello.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
            hello.extend_from_slice(&3u16.to_be_bytes());
            s.write_all(&hello).unwrap();
            let mut buf = [0u8; 4 + 16];
            s.read_exact(&mut buf).unwrap();
            let len = u32::from_be_bytes(buf[16..20].try_into().unwrap());
            let mut opt = vec![0u8; len as usize];
            s.read_exact(&mut opt).unwrap();
            let rep = |ty: u32, data: &[u8]| {
                let mut r = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
                r.extend_from_slice(&7u32.to_be_bytes());
                r.extend_from_slice(&ty.to_be_bytes());
                r.extend_from_slice(&(data.len() as u32).to_be_bytes());
                r.extend_from_slice(data);
                r
            };
            let mut info = 0u16.to_be_bytes().to_vec();
            info.extend_from_slice(&(1u64 << 20).to_be_bytes());
            info.extend_from_slice(&(1u16 | 4).to_be_bytes());
            s.write_all(&rep(3, &info)).unwrap();
            s.write_all(&rep(1, &[])).unwrap();
            std::thread::spawn(move || then(s));
        }
    });
}

#[test]
fn a_server_that_trickles_its_reply_times_out_and_is_not_sent_the_request_again() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    static REQUESTS: AtomicUsize = AtomicUsize::new(0);
    let d = dir("trickle");
    let sock = d.join("s");
    fake_server(&sock, |mut s| {
        let mut req = [0u8; 28];
        while s.read_exact(&mut req).is_ok() {
            REQUESTS.fetch_add(1, Ordering::Relaxed);
            // One byte of the reply header every 100 ms, for ever.
            for b in 0x6744_6698u32.to_be_bytes().iter().cycle() {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    let mut s = NbdStorage::open(target(&sock), false).unwrap();
    s.set_timeout(Duration::from_millis(700));
    let t = Instant::now();
    let e = s.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // A request that timed out may still be acted on: it is not sent again.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(REQUESTS.load(Ordering::Relaxed), 1);
}

#[test]
fn unflushed_writes_on_a_lost_connection_fail_the_next_flush() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
    let d = dir("lost");
    let sock = d.join("s");
    // Every request is answered; the first connection closes after its
    // first write. The server does not offer CAN_MULTI_CONN.
    fake_server(&sock, |mut s| {
        let first = CONNECTIONS.fetch_add(1, Ordering::Relaxed) == 0;
        let mut req = [0u8; 28];
        while s.read_exact(&mut req).is_ok() {
            let ty = u16::from_be_bytes([req[6], req[7]]);
            let len = u32::from_be_bytes(req[24..28].try_into().unwrap());
            if ty == 1 {
                let mut data = vec![0u8; len as usize];
                s.read_exact(&mut data).unwrap();
            }
            let mut r = 0x6744_6698u32.to_be_bytes().to_vec();
            r.extend_from_slice(&0u32.to_be_bytes());
            r.extend_from_slice(&req[8..16]);
            if ty == 0 {
                r.extend_from_slice(&vec![0u8; len as usize]);
            }
            s.write_all(&r).unwrap();
            if first && ty == 1 {
                return;
            }
        }
    });
    let s = NbdStorage::open(target(&sock), true).unwrap();
    s.write_at(&[1; 512], 0).unwrap();
    // Sent again on a new connection: fine, but the first write was only
    // in the lost connection's cache.
    s.write_at(&[2; 512], 512).unwrap();
    assert!(
        s.flush().is_err(),
        "the lost write is not known to be stable"
    );
    s.flush().unwrap();
    assert_eq!(CONNECTIONS.load(Ordering::Relaxed), 2);
}
