//! The daemon through its socket, with our client: transactions,
//! watches, and clients that misbehave.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use xenstore::client::{Client, ClientError, Tx};
use xenstore::wire::{Decoder, Header, Message, MsgType};
use xenstore::XsError;

mod common;
use common::thread_cpu;

struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    socket: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

static N: AtomicU32 = AtomicU32::new(0);

fn daemon() -> Running {
    let socket = std::env::temp_dir().join(format!(
        "dom0kit-xsd-{}-{}/socket",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut d = xenstored::Daemon::bind(&socket).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || d.run(|| s.load(Ordering::Relaxed)).unwrap());
    Running {
        stop,
        thread: Some(thread),
        socket,
    }
}

fn client(d: &Running) -> Client {
    Client::connect(&d.socket).unwrap()
}

#[test]
fn a_transaction_conflicts_when_what_it_read_changed() {
    let d = daemon();
    let (mut a, mut b) = (client(&d), client(&d));
    a.write(Tx::NONE, "/x", b"1").unwrap();
    let t = a.transaction_start().unwrap();
    assert_eq!(a.read(t, "/x").unwrap(), b"1");
    b.write(Tx::NONE, "/x", b"2").unwrap();
    a.write(t, "/y", b"from tx").unwrap();
    assert!(matches!(
        a.transaction_end(t, true),
        Err(ClientError::Xs(XsError::Again))
    ));
    assert!(
        matches!(a.read(Tx::NONE, "/y"), Err(ClientError::Xs(XsError::NoEnt))),
        "nothing applied"
    );
}

#[test]
fn transactions_on_disjoint_subtrees_of_local_domain_both_commit() {
    let d = daemon();
    let (mut a, mut b) = (client(&d), client(&d));
    a.write(Tx::NONE, "/local/domain/1/name", b"one").unwrap();
    a.write(Tx::NONE, "/local/domain/2/name", b"two").unwrap();
    let ta = a.transaction_start().unwrap();
    let tb = b.transaction_start().unwrap();
    a.write(ta, "/local/domain/1/device/vbd/51712/state", b"1")
        .unwrap();
    b.write(tb, "/local/domain/2/device/vif/0/state", b"1")
        .unwrap();
    a.transaction_end(ta, true).unwrap();
    b.transaction_end(tb, true).unwrap();
    assert_eq!(
        a.read(Tx::NONE, "/local/domain/2/device/vif/0/state")
            .unwrap(),
        b"1"
    );
}

#[test]
fn creating_siblings_under_one_parent_conflicts_as_in_c_xenstored() {
    // The children list is part of the parent node: C xenstored makes the
    // second of two such transactions retry, and so do we.
    let d = daemon();
    let (mut a, mut b) = (client(&d), client(&d));
    a.mkdir(Tx::NONE, "/local/domain").unwrap();
    let ta = a.transaction_start().unwrap();
    let tb = b.transaction_start().unwrap();
    a.write(ta, "/local/domain/3/x", b"a").unwrap();
    b.write(tb, "/local/domain/4/x", b"b").unwrap();
    a.transaction_end(ta, true).unwrap();
    assert!(matches!(
        b.transaction_end(tb, true),
        Err(ClientError::Xs(XsError::Again))
    ));
}

#[test]
fn a_transaction_sees_its_own_writes_and_nobody_else_does_until_commit() {
    let d = daemon();
    let (mut a, mut b) = (client(&d), client(&d));
    let t = a.transaction_start().unwrap();
    a.write(t, "/p/q", b"v").unwrap();
    assert_eq!(a.read(t, "/p/q").unwrap(), b"v");
    assert_eq!(a.directory(t, "/p").unwrap(), ["q"]);
    assert!(b.read(Tx::NONE, "/p/q").is_err());
    b.watch("/p", "tok").unwrap();
    assert_eq!(b.read_watch().unwrap().path, "/p", "the first event");
    a.transaction_end(t, true).unwrap();
    assert_eq!(b.read(Tx::NONE, "/p/q").unwrap(), b"v");
    assert_eq!(b.read_watch().unwrap().path, "/p/q", "fired at commit");
}

#[test]
fn an_aborted_or_abandoned_transaction_leaves_nothing() {
    let d = daemon();
    let mut a = client(&d);
    let t = a.transaction_start().unwrap();
    a.write(t, "/gone", b"1").unwrap();
    a.transaction_end(t, false).unwrap();
    let t = a.transaction_start().unwrap();
    a.write(t, "/gone2", b"1").unwrap();
    drop(a);
    let mut b = client(&d);
    assert!(b.read(Tx::NONE, "/gone").is_err());
    assert!(b.read(Tx::NONE, "/gone2").is_err());
    assert!(matches!(
        b.transaction_end(Tx(12345), true),
        Err(ClientError::Xs(XsError::NoEnt))
    ));
}

fn raw_request(s: &mut UnixStream, ty: u32, payload: &[u8]) -> Message {
    let h = Header {
        ty: MsgType::from_u32(ty),
        req_id: 7,
        tx_id: 0,
        len: payload.len() as u32,
    };
    s.write_all(&h.encode()).unwrap();
    s.write_all(payload).unwrap();
    let mut d = Decoder::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed");
        if let Some(m) = d.feed(&buf[..n]).unwrap().into_iter().next() {
            return m;
        }
    }
}

#[test]
fn unknown_and_unbuilt_message_types_get_enosys() {
    let d = daemon();
    let mut s = UnixStream::connect(&d.socket).unwrap();
    // 8 is INTRODUCE, which needs a hypervisor to map the domain's page.
    for (ty, payload) in [
        (20, &b""[..]),
        (27, b""),
        (0xffff, b""),
        (8, b"5\x001\x002\x00"),
    ] {
        let m = raw_request(&mut s, ty, payload);
        assert_eq!(m.ty, MsgType::Error, "type {ty}");
        assert_eq!(m.payload, b"ENOSYS\0");
        assert_eq!(m.req_id, 7);
    }
}

#[test]
fn an_oversized_message_drops_only_that_client() {
    let d = daemon();
    let mut bad = UnixStream::connect(&d.socket).unwrap();
    let h = Header {
        ty: MsgType::Write,
        req_id: 1,
        tx_id: 0,
        len: 5000,
    };
    bad.write_all(&h.encode()).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(bad.read(&mut buf).unwrap(), 0, "hung up");
    let mut good = client(&d);
    good.write(Tx::NONE, "/still", b"here").unwrap();
    assert_eq!(good.read(Tx::NONE, "/still").unwrap(), b"here");
}

#[test]
fn removing_a_parent_fires_watches_below_it_with_their_own_path() {
    let d = daemon();
    let mut a = client(&d);
    a.write(Tx::NONE, "/r/s/t", b"1").unwrap();
    a.watch("/r/s/t", "deep").unwrap();
    assert_eq!(a.read_watch().unwrap().path, "/r/s/t");
    a.rm(Tx::NONE, "/r").unwrap();
    let e = a.read_watch().unwrap();
    assert_eq!((e.path.as_str(), e.token.as_str()), ("/r/s/t", "deep"));
}

#[test]
fn relative_watches_get_relative_events() {
    let d = daemon();
    let mut a = client(&d);
    a.watch("device", "rel").unwrap();
    assert_eq!(a.read_watch().unwrap().path, "device");
    a.write(Tx::NONE, "/local/domain/0/device/vbd", b"x")
        .unwrap();
    assert_eq!(a.read_watch().unwrap().path, "device/vbd");
}

#[test]
fn the_daemon_polls_between_a_clients_requests_and_sleeps_when_idle() {
    use std::time::{Duration, Instant};
    let socket =
        std::env::temp_dir().join(format!("dom0kit-xsd-{}-busy/socket", std::process::id()));
    let mut d = xenstored::Daemon::bind(&socket).unwrap();
    d.set_busy_poll(Duration::from_millis(10));
    // Requests 2 ms apart: the window grows past the gap.
    let done = Arc::new(AtomicU32::new(0));
    let client = std::thread::spawn({
        let (socket, done) = (socket.clone(), done.clone());
        move || {
            let mut c = Client::connect(&socket).unwrap();
            for i in 0..100 {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
                c.write(Tx::NONE, "/busy", format!("{i}").as_bytes())
                    .unwrap();
                done.store(i + 1, Ordering::Relaxed);
            }
        }
    });
    // The daemon served here: its CPU is this thread's.
    let mut looked = false;
    while !client.is_finished() {
        d.turn(10).unwrap();
        if !looked && done.load(Ordering::Relaxed) >= 50 {
            looked = true;
            assert!(
                d.busy_poll().window() > Duration::from_millis(2),
                "requests 2 ms apart opened the window past 2 ms: {:?}",
                d.busy_poll()
            );
        }
    }
    // Right after dom0's last request the daemon polls: a turn with
    // nothing to do returns at once instead of sleeping its second.
    let t = Instant::now();
    d.turn(1000).unwrap();
    assert!(t.elapsed() < Duration::from_millis(500), "it slept");
    client.join().unwrap();
    let (cpu, t) = (thread_cpu(), Instant::now());
    while t.elapsed() < Duration::from_millis(400) {
        d.turn(10).unwrap();
    }
    let spent = thread_cpu() - cpu;
    // One window of polling at most, then sleep: well under the 400 ms a
    // daemon that never slept would spend.
    assert!(
        spent < Duration::from_millis(60),
        "idle daemon spent {spent:?}"
    );
}
