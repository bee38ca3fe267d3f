//! Domains' rings driven by hand: the core with pages in our own memory
//! (`xenstored::fuzz::LoopbackHv`), so that the test says which domain
//! signalled and reads each ring itself. What a timing-driven test on the
//! sim could not pin down: events between domains, output that overflows,
//! the special nodes' permissions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ring::{ByteConsumer, ByteProducer, ByteRingLayout};
use xenstore::wire::{split_strings, Decoder, Message, MsgType};
use xenstored::fuzz::{Loopback, LoopbackHv};
use xenstored::store::Caller;
use xenstored::Core;

struct Host {
    core: Core,
    lo: Loopback,
    dom0: u64,
    dom0_decoder: Decoder,
    next: u32,
}

impl Host {
    fn new() -> Host {
        let lo = Loopback::default();
        let mut core = Core::new().with_hypervisor(Box::new(LoopbackHv(lo.clone())));
        let dom0 = core.connect(Caller::DOM0);
        Host {
            core,
            lo,
            dom0,
            dom0_decoder: Decoder::new(),
            next: 1,
        }
    }

    /// A dom0 request; its reply (type, payload).
    fn dom0(&mut self, ty: MsgType, parts: &[&[u8]], value: Option<&[u8]>) -> (MsgType, Vec<u8>) {
        self.next += 1;
        let mut m = Message::with_strings(ty, self.next, 0, parts);
        if let Some(v) = value {
            m = m.with_value(v);
        }
        self.core.input(self.dom0, &m.encode().unwrap());
        let out = std::mem::take(self.core.output(self.dom0).unwrap());
        let msgs = self.dom0_decoder.feed(&out).unwrap();
        let r = msgs.into_iter().find(|m| m.req_id == self.next).unwrap();
        (r.ty, r.payload)
    }

    /// Introduces `domid` with a home it owns.
    fn domain(&mut self, domid: u16) -> Guest {
        let d = domid.to_string();
        let home = format!("/local/domain/{d}");
        self.dom0(MsgType::Write, &[home.as_bytes()], Some(b""));
        let owner = format!("n{d}");
        self.dom0(
            MsgType::SetPerms,
            &[home.as_bytes(), owner.as_bytes()],
            None,
        );
        let r = self.dom0(MsgType::Introduce, &[d.as_bytes(), b"1", b"1"], None);
        assert_eq!(r.0, MsgType::Introduce);
        Guest {
            domid,
            decoder: Decoder::new(),
            next: 1,
        }
    }

    fn conn(&self, g: &Guest) -> u64 {
        self.core.domain_conn(g.domid).unwrap()
    }
}

struct Guest {
    domid: u16,
    decoder: Decoder,
    next: u32,
}

impl Guest {
    /// Puts a request into the domain's ring (without signalling).
    fn send(&mut self, h: &Host, ty: MsgType, parts: &[&[u8]], value: Option<&[u8]>) {
        self.next += 1;
        let mut m = Message::with_strings(ty, self.next, 0, parts);
        if let Some(v) = value {
            m = m.with_value(v);
        }
        let bytes = m.encode().unwrap();
        let page = h.lo.page(self.domid).unwrap();
        let req = ByteProducer::new(page.as_volatile(), ByteRingLayout::XENSTORE_REQ).unwrap();
        assert_eq!(req.write(&bytes).unwrap(), bytes.len());
    }

    /// Everything waiting in the domain's response ring.
    fn receive(&mut self, h: &Host) -> Vec<Message> {
        let page = h.lo.page(self.domid).unwrap();
        let rsp = ByteConsumer::new(page.as_volatile(), ByteRingLayout::XENSTORE_RSP).unwrap();
        let mut buf = [0u8; 1024];
        let n = rsp.read(&mut buf).unwrap();
        self.decoder.feed(&buf[..n]).unwrap()
    }
}

fn events(msgs: &[Message]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.ty == MsgType::WatchEvent)
        .map(|m| String::from_utf8_lossy(split_strings(&m.payload)[0]).into_owned())
        .collect()
}

#[test]
fn an_event_for_a_domain_served_earlier_in_the_pass_is_delivered_in_it() {
    let mut h = Host::new();
    let (mut a, mut b) = (h.domain(5), h.domain(7));
    // b's data may be read by a.
    h.dom0(MsgType::SetPerms, &[b"/local/domain/7", b"n7", b"r5"], None);
    a.send(&h, MsgType::Watch, &[b"/local/domain/7/x", b"t"], None);
    let ca = h.conn(&a);
    h.core.service_domains(&[ca]);
    assert_eq!(events(&a.receive(&h)), ["/local/domain/7/x"]);
    // Only b signals; a (served first, by domid) gets b's event at once.
    b.send(&h, MsgType::Write, &[b"x"], Some(b"1"));
    let cb = h.conn(&b);
    h.core.service_domains(&[cb]);
    assert_eq!(b.receive(&h).len(), 1, "b's reply");
    assert_eq!(events(&a.receive(&h)), ["/local/domain/7/x"]);
}

#[test]
fn a_domain_that_does_not_read_loses_events_not_its_connection() {
    let mut h = Host::new();
    let mut a = h.domain(5);
    h.dom0(MsgType::Write, &[b"/w"], Some(b""));
    h.dom0(MsgType::SetPerms, &[b"/w", b"n0", b"r5"], None);
    // A long token makes each event about 1 KiB.
    let token = vec![b't'; 1000];
    a.send(&h, MsgType::Watch, &[b"/w", &token], None);
    let ca = h.conn(&a);
    h.core.service_domains(&[ca]);
    // 6000 events of 1 KiB are more than the 4 MiB a domain may have
    // waiting; it reads none of them.
    for _ in 0..6000 {
        h.dom0(MsgType::Write, &[b"/w"], Some(b"v"));
        h.core.service_domains(&[]);
    }
    assert!(h.core.dropped_events(5).unwrap() > 1000);
    h.core.reap();
    assert_eq!(h.core.domains(), [5]);
    // Still served: once it reads, its replies come.
    for _ in 0..20 {
        a.receive(&h);
        h.core.service_domains(&[]);
    }
    let page = h.lo.page(5).unwrap();
    let error = page
        .as_volatile()
        .load_u32(
            abi::xs_wire::offsets::ERROR,
            std::sync::atomic::Ordering::Acquire,
        )
        .unwrap();
    assert_eq!(error, 0);
}

/// Domain 5 and domain 7, which may read 5's `x` and watches it with a
/// token that makes each event about 1 KiB (one fills its response ring);
/// the watch's reply and first event are read.
fn writer_and_watcher(h: &mut Host) -> (Guest, Guest) {
    let (a, mut b) = (h.domain(5), h.domain(7));
    h.dom0(MsgType::SetPerms, &[b"/local/domain/5", b"n5", b"r7"], None);
    let token = vec![b't'; 900];
    b.send(h, MsgType::Watch, &[b"/local/domain/5/x", &token], None);
    let cb = h.conn(&b);
    h.core.service_domains(&[cb]);
    assert_eq!(b.receive(h).len(), 2, "the watch's reply and first event");
    (a, b)
}

/// Domain 5 writes what domain 7 watches and never reads: after its
/// `outstanding` quota (20) of requests whose events wait at 7, 5's next
/// request is held back, its ring no longer read, until 7 reads or the
/// events' time is up. dom0 is never held back.
#[test]
fn a_watcher_that_does_not_read_holds_the_writer_back_up_to_its_quota() {
    let mut h = Host::new();
    h.core
        .set_watch_event_timeout(std::time::Duration::from_millis(300));
    let (mut a, mut b) = writer_and_watcher(&mut h);
    let (ca, cb) = (h.conn(&a), h.conn(&b));
    // The first write's event fills 7's ring; every later one waits.
    let mut replies = 0;
    for _ in 0..30 {
        a.send(&h, MsgType::Write, &[b"x"], Some(b"1"));
        h.core.service_domains(&[ca]);
        replies += a.receive(&h).len();
    }
    assert_eq!(replies, 21, "the first and 20 more answered, then none");
    assert_eq!(h.core.outstanding(5), Some((20, 1)), "20 undone, 1 held");
    // Its ring is not read meanwhile: requests stay in it.
    let page = h.lo.page(5).unwrap();
    let cons = |off| {
        page.as_volatile()
            .load_u32(off, std::sync::atomic::Ordering::Acquire)
            .unwrap()
    };
    use abi::xs_wire::offsets::{REQ_CONS, REQ_PROD};
    assert!(
        cons(REQ_PROD) != cons(REQ_CONS),
        "5's requests wait in its ring"
    );
    // dom0 writes on; its events wait at 7 too, without holding it back.
    for _ in 0..30 {
        let (ty, _) = h.dom0(MsgType::Write, &[b"/local/domain/5/x"], Some(b"0"));
        assert_eq!(ty, MsgType::Write);
    }
    // 7 reads everything: 5 goes on (the writes held back are answered).
    for _ in 0..200 {
        let got = b.receive(&h).len();
        h.core.service_domains(&[cb]);
        replies += a.receive(&h).len();
        if got == 0 && h.core.outstanding(5) == Some((0, 0)) {
            break;
        }
    }
    assert_eq!(replies, 30);
    assert_eq!(h.core.outstanding(5), Some((0, 0)));
    // Events nobody reads let go after their time is up.
    for _ in 0..30 {
        a.send(&h, MsgType::Write, &[b"x"], Some(b"2"));
        h.core.service_domains(&[ca]);
        replies += a.receive(&h).len();
    }
    assert_eq!(replies, 51, "held back again");
    std::thread::sleep(std::time::Duration::from_millis(350));
    for _ in 0..10 {
        h.core.service_domains(&[]);
        replies += a.receive(&h).len();
    }
    assert_eq!(replies, 60, "answered once the events' time was up");
    // Their own events wait at 7 in turn.
    assert_eq!(h.core.outstanding(5), Some((9, 0)));
}

#[test]
fn a_watcher_introduced_again_holds_no_one_back() {
    let mut h = Host::new();
    let (mut a, _b) = writer_and_watcher(&mut h);
    let ca = h.conn(&a);
    for _ in 0..5 {
        a.send(&h, MsgType::Write, &[b"x"], Some(b"1"));
        h.core.service_domains(&[ca]);
        a.receive(&h);
    }
    assert_eq!(h.core.outstanding(5), Some((4, 0)), "4 events wait at 7");
    // 7 introduced again: a fresh connection, its old output gone.
    let r = h.dom0(MsgType::Introduce, &[b"7", b"1", b"1"], None);
    assert_eq!(r.0, MsgType::Introduce);
    h.core.service_domains(&[]);
    assert_eq!(h.core.outstanding(5), Some((0, 0)));
}

/// Sends one request and serves the domain; the replies it got.
fn ask(
    h: &mut Host,
    g: &mut Guest,
    ty: MsgType,
    parts: &[&[u8]],
    value: Option<&[u8]>,
) -> Vec<Message> {
    g.send(h, ty, parts, value);
    let id = h.conn(g);
    h.core.service_domains(&[id]);
    g.receive(h)
}

#[test]
fn the_memory_quota_refuses_what_would_pass_it_and_stops_reading_at_it() {
    let mut h = Host::new();
    let mut a = h.domain(5);
    let (ty, _) = h.dom0(MsgType::SetQuota, &[b"5", b"memory", b"2600"], None);
    assert_eq!(ty, MsgType::SetQuota);
    let big = vec![b'v'; 900];
    for name in [b"a".as_slice(), b"b"] {
        let r = ask(&mut h, &mut a, MsgType::Write, &[name], Some(&big));
        assert_eq!(r[0].ty, MsgType::Write);
    }
    // A third would take the domain past 2600 bytes: ENOMEM, nothing made.
    let r = ask(&mut h, &mut a, MsgType::Write, &[b"c"], Some(&big));
    assert_eq!(
        (r[0].ty, r[0].payload.as_slice()),
        (MsgType::Error, b"ENOMEM\0".as_slice())
    );
    let r = ask(&mut h, &mut a, MsgType::Read, &[b"c"], None);
    assert_eq!(r[0].ty, MsgType::Error);
    // What it gives back it may use again.
    let r = ask(&mut h, &mut a, MsgType::Rm, &[b"a"], None);
    assert_eq!(r[0].ty, MsgType::Rm);
    let r = ask(&mut h, &mut a, MsgType::Write, &[b"c"], Some(&big));
    assert_eq!(r[0].ty, MsgType::Write);

    // Replies it does not read count too: at the quota, its requests wait
    // in its ring until it reads them.
    let ca = h.conn(&a);
    for _ in 0..6 {
        a.send(&h, MsgType::Read, &[b"c"], None);
        h.core.service_domains(&[ca]);
    }
    let (_, held) = h.core.outstanding(5).unwrap();
    assert!(held > 0, "held back at the quota");
    let mut answered = 0;
    for _ in 0..100 {
        answered += a.receive(&h).len();
        h.core.service_domains(&[ca]);
        if answered == 6 {
            break;
        }
    }
    assert_eq!(answered, 6, "all answered once it read");
    // dom0 is not limited.
    let (ty, _) = h.dom0(MsgType::Write, &[b"/local/domain/5/d"], Some(&big));
    assert_eq!(ty, MsgType::Write);
    // Past its quota (a lower one, or what dom0 gave it), a domain that
    // reads its replies is still heard: it may give back, not add.
    h.dom0(MsgType::SetQuota, &[b"5", b"memory", b"1000"], None);
    let r = ask(&mut h, &mut a, MsgType::Write, &[b"e"], Some(b"1"));
    assert_eq!(r[0].payload, b"ENOMEM\0");
    // A write deep down costs every node it makes: refused whole.
    h.dom0(MsgType::SetQuota, &[b"5", b"memory", b"2600"], None);
    for name in [b"b".as_slice(), b"c"] {
        let r = ask(&mut h, &mut a, MsgType::Rm, &[name], None);
        assert_eq!(r[0].ty, MsgType::Rm);
    }
    let deep = b"p/".repeat(60);
    let r = ask(
        &mut h,
        &mut a,
        MsgType::Write,
        &[&deep[..deep.len() - 1]],
        Some(b"1"),
    );
    assert_eq!(r[0].payload, b"ENOMEM\0");
    let r = ask(&mut h, &mut a, MsgType::Read, &[b"p"], None);
    assert_eq!(r[0].ty, MsgType::Error, "nothing of it made");
    let r = ask(&mut h, &mut a, MsgType::Rm, &[b"d"], None);
    assert_eq!(r[0].ty, MsgType::Rm);
}

#[test]
fn special_node_events_go_only_to_domains_that_may_read_them() {
    let mut h = Host::new();
    let mut a = h.domain(5);
    h.domain(7);
    h.domain(8);
    a.send(&h, MsgType::Watch, &[b"@releaseDomain", b"r"], None);
    let ca = h.conn(&a);
    h.core.service_domains(&[ca]);
    // The first event comes whatever the permissions, as in C.
    let first = a.receive(&h);
    assert_eq!(events(&first), ["@releaseDomain"]);
    let r = h.dom0(MsgType::Release, &[b"7"], None);
    assert_eq!(r.0, MsgType::Release);
    h.core.service_domains(&[]);
    assert!(events(&a.receive(&h)).is_empty(), "n0: not for domain 5");
    h.dom0(MsgType::SetPerms, &[b"@releaseDomain", b"n0", b"r5"], None);
    h.lo.set_dead(8, true);
    h.core.check_domains();
    h.core.service_domains(&[]);
    assert_eq!(events(&a.receive(&h)), ["@releaseDomain"]);
    assert_eq!(h.core.domains(), [5]);
}

fn replies(msgs: &[Message]) -> Vec<(MsgType, Vec<u8>)> {
    msgs.iter()
        .filter(|m| m.ty != MsgType::WatchEvent)
        .map(|m| (m.ty, m.payload.clone()))
        .collect()
}

fn page_word(h: &Host, domid: u16, off: usize) -> u32 {
    let page = h.lo.page(domid).unwrap();
    page.as_volatile()
        .load_u32(off, std::sync::atomic::Ordering::Acquire)
        .unwrap()
}

#[test]
fn features_are_offered_and_set_before_introduction() {
    use abi::xs_wire::offsets;
    let mut h = Host::new();
    let mut a = h.domain(5);
    assert_eq!(page_word(&h, 5, offsets::SERVER_FEATURES), 7);
    a.send(&h, MsgType::GetFeature, &[], None);
    a.send(&h, MsgType::GetFeature, &[b"5"], None);
    let ca = h.conn(&a);
    h.core.service_domains(&[ca]);
    let r = replies(&a.receive(&h));
    assert_eq!(r[0], (MsgType::GetFeature, b"7\0".to_vec()));
    assert_eq!(r[1], (MsgType::Error, b"EACCES\0".to_vec()));
    // dom0 sets a domain's features before introducing it, not after.
    let set = |h: &mut Host, parts: &[&[u8]]| h.dom0(MsgType::SetFeature, parts, None);
    assert_eq!(set(&mut h, &[b"9", b"2"]).0, MsgType::SetFeature);
    assert_eq!(
        set(&mut h, &[b"9", b"8"]),
        (MsgType::Error, b"EINVAL\0".to_vec())
    );
    assert_eq!(
        set(&mut h, &[b"5", b"2"]),
        (MsgType::Error, b"EBUSY\0".to_vec())
    );
    h.lo.set_dead(11, true);
    assert_eq!(
        set(&mut h, &[b"11", b"2"]),
        (MsgType::Error, b"ENOENT\0".to_vec())
    );
    let get9 = h.dom0(MsgType::GetFeature, &[b"9"], None);
    assert_eq!(get9, (MsgType::GetFeature, b"2\0".to_vec()));
    let mut b = h.domain(9);
    assert_eq!(page_word(&h, 9, offsets::SERVER_FEATURES), 2);
    // Without the watch-depth feature a depth is refused, as C 4.17 does.
    b.send(&h, MsgType::Watch, &[b"data", b"t", b"1"], None);
    let cb = h.conn(&b);
    h.core.service_domains(&[cb]);
    assert_eq!(
        replies(&b.receive(&h)),
        [(MsgType::Error, b"EINVAL\0".to_vec())]
    );
}

#[test]
fn a_watch_depth_limits_the_levels_it_fires_for() {
    let mut h = Host::new();
    let mut a = h.domain(5);
    h.domain(7);
    h.domain(8);
    a.send(&h, MsgType::Watch, &[b"/local/domain/5", b"d1", b"1"], None);
    a.send(&h, MsgType::Watch, &[b"@releaseDomain", b"any", b"1"], None);
    a.send(&h, MsgType::Watch, &[b"@releaseDomain/8", b"eight"], None);
    let ca = h.conn(&a);
    h.core.service_domains(&[ca]);
    a.receive(&h);
    h.dom0(MsgType::Write, &[b"/local/domain/5/a"], Some(b""));
    h.dom0(MsgType::Write, &[b"/local/domain/5/a/b"], Some(b""));
    h.core.service_domains(&[]);
    assert_eq!(events(&a.receive(&h)), ["/local/domain/5/a"]);
    // Domain 5 may see the special node, with the domain it is about.
    h.dom0(MsgType::SetPerms, &[b"@releaseDomain", b"n0", b"r5"], None);
    h.dom0(MsgType::Release, &[b"7"], None);
    h.dom0(MsgType::Release, &[b"8"], None);
    h.core.service_domains(&[]);
    let mut got = events(&a.receive(&h));
    got.sort();
    assert_eq!(
        got,
        ["@releaseDomain/7", "@releaseDomain/8", "@releaseDomain/8"]
    );
}

#[test]
fn a_domain_reconnects_its_ring() {
    use abi::xs_wire::{offsets, XENSTORE_CONNECTED, XENSTORE_RECONNECT};
    use std::sync::atomic::Ordering;
    let mut h = Host::new();
    let mut a = h.domain(5);
    a.send(&h, MsgType::Watch, &[b"data", b"t"], None);
    let ca = h.conn(&a);
    h.core.service_domains(&[ca]);
    a.receive(&h);
    let page = h.lo.page(5).unwrap();
    let mem = page.as_volatile();
    mem.store_u32(offsets::CONNECTION, XENSTORE_RECONNECT, Ordering::Release)
        .unwrap();
    h.core.service_domains(&[ca]);
    assert_eq!(page_word(&h, 5, offsets::CONNECTION), XENSTORE_CONNECTED);
    for off in [offsets::REQ_PROD, offsets::RSP_PROD] {
        assert_eq!(page_word(&h, 5, off), 0);
    }
    // Its watch went with the old session.
    a.decoder = Decoder::new();
    h.dom0(MsgType::Write, &[b"/local/domain/5/data"], Some(b""));
    h.core.service_domains(&[]);
    assert!(a.receive(&h).is_empty());
}
