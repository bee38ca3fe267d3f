//! The NBD export against QEMU's own client: qemu-io writes patterns and
//! verifies them, qemu-img reads the size, through our server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::Arc;

use blk::storage::MemStorage;

fn export(name: &str) -> (std::path::PathBuf, Arc<MemStorage>) {
    let dir = std::env::temp_dir().join(format!("dom0kit-nbd-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("xvda.sock");
    let disk = Arc::new(MemStorage::new(8 << 20));
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
    let bytes = disk.contents();
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

/// A disk whose reads and writes take 300 ms, and that logs what it did.
struct Slow {
    mem: MemStorage,
    log: std::sync::Mutex<Vec<&'static str>>,
}

impl blk::nbd::BlockDevice for Slow {
    fn size(&self) -> u64 {
        blk::storage::Storage::size(&self.mem)
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(300));
        blk::storage::Storage::read_at(&self.mem, buf, offset)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(300));
        blk::storage::Storage::write_at(&self.mem, buf, offset)?;
        self.log.lock().unwrap().push("written");
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        self.log.lock().unwrap().push("flushed");
        Ok(())
    }
}

/// An NBD client by hand: the handshake, then raw requests and replies.
fn raw_client(sock: &std::path::Path) -> std::os::unix::net::UnixStream {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    handshake(&mut s);
    s
}

/// Fixed newstyle, no zeroes, `NBD_OPT_EXPORT_NAME` of the default export.
fn handshake(s: &mut std::os::unix::net::UnixStream) {
    use std::io::{Read, Write};
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&opt).unwrap();
    let mut export = [0u8; 10];
    s.read_exact(&mut export).unwrap();
}

fn raw_request(ty: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&ty.to_be_bytes());
    r.extend_from_slice(&handle.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    r
}

/// The next reply's error and handle, its `data` bytes read after it.
fn raw_reply(s: &mut std::os::unix::net::UnixStream, data: usize) -> (u32, u64) {
    use std::io::Read;
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(&h[..4], &0x6744_6698u32.to_be_bytes());
    let mut d = vec![0u8; data];
    s.read_exact(&mut d).unwrap();
    let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
    (err, u64::from_be_bytes(h[8..].try_into().unwrap()))
}

#[test]
fn batches_of_one_connection_are_served_side_by_side_and_a_flush_waits_for_them() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let dir = std::env::temp_dir().join(format!("dom0kit-nbd-{}-slow", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("xvda.sock");
    let disk = Arc::new(Slow {
        mem: MemStorage::new(4 << 20),
        log: std::sync::Mutex::new(Vec::new()),
    });
    blk::nbd::export(&sock, "xvda", disk.clone()).unwrap();
    let mut s = raw_client(&sock);
    // Two 1 MiB reads: a batch each (a batch holds 1 MiB), served at once.
    let t = Instant::now();
    let mut two = raw_request(0, 1, 0, 1 << 20);
    two.extend(raw_request(0, 2, 1 << 20, 1 << 20));
    s.write_all(&two).unwrap();
    let mut handles = [raw_reply(&mut s, 1 << 20), raw_reply(&mut s, 1 << 20)];
    handles.sort();
    assert_eq!(handles, [(0, 1), (0, 2)]);
    assert!(
        t.elapsed() < Duration::from_millis(550),
        "two 300 ms reads took {:?}: one after the other",
        t.elapsed()
    );
    // A write, and a flush sent at once after it: the flush is done after
    // the write, and answered after it.
    let mut w = raw_request(1, 3, 8192, 4096);
    w.extend_from_slice(&[0x5a; 4096]);
    w.extend(raw_request(3, 4, 0, 0));
    s.write_all(&w).unwrap();
    assert_eq!(raw_reply(&mut s, 0), (0, 3));
    assert_eq!(raw_reply(&mut s, 0), (0, 4));
    assert_eq!(*disk.log.lock().unwrap(), ["written", "flushed"]);
    assert!(disk.mem.contents()[8192..12288].iter().all(|&b| b == 0x5a));
    s.write_all(&raw_request(2, 5, 0, 0)).unwrap();
}

/// A session of `disk` on its thread whose silence is timed out after
/// 100 ms, past the handshake.
fn session_timed_out_after_100ms(
    disk: blk::nbd::Shared,
) -> (
    std::os::unix::net::UnixStream,
    std::thread::JoinHandle<std::io::Result<()>>,
) {
    let (mut s, server) = std::os::unix::net::UnixStream::pair().unwrap();
    server
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let session = std::thread::spawn(move || blk::nbd::session(server, "xvda", &disk));
    handshake(&mut s);
    (s, session)
}

#[test]
fn a_client_waiting_for_its_replies_is_not_timed_out() {
    use std::io::Write;
    let disk: blk::nbd::Shared = Arc::new(Slow {
        mem: MemStorage::new(1 << 20),
        log: std::sync::Mutex::new(Vec::new()),
    });
    // Each read takes 300 ms.
    let (mut s, session) = session_timed_out_after_100ms(disk);
    for handle in 1..=2 {
        s.write_all(&raw_request(0, handle, 0, 4096)).unwrap();
        assert_eq!(raw_reply(&mut s, 4096), (0, handle));
    }
    s.write_all(&raw_request(2, 3, 0, 0)).unwrap();
    session.join().unwrap().unwrap();
    // Silent with nothing in flight: timed out.
    let disk: blk::nbd::Shared = Arc::new(MemStorage::new(1 << 20));
    let (_s, session) = session_timed_out_after_100ms(disk);
    assert!(session.join().unwrap().is_err());
}
