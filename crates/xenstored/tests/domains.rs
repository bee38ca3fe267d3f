//! Domains on their ring pages, on the simulated hypervisor: a guest
//! (attached to the sim as its own domain) speaks xenstore over a page of
//! its memory once dom0 introduces it, and is released by `XS_RELEASE` or
//! by its death (`VIRQ_DOM_EXC`). The guest runs in this process on its
//! own hv connection, which is all the sim needs to tell it from dom0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use platform::{DomainConfig, DomainControl, EventChannels, OwnMemory};
use sim::{HvConfig, HvHandle, SimDomain};
use xenstore::client::{Client, ClientError, Tx};
use xenstore::ring::RingStream;
use xenstore::wire::MsgType;
use xenstore::{Perms, XsError};

mod common;
use common::thread_cpu;

static N: AtomicU32 = AtomicU32::new(0);

struct Host {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<xenstored::Daemon>>,
    socket: PathBuf,
    dom0: SimDomain,
    // Dropped last: the daemon holds mappings through it.
    _hv: HvHandle,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// xenstored's own dom0 connection to the sim, as `dom0kit xenstored --hv`.
fn platform(hv: &HvHandle) -> Box<dyn xenstored::domain::Hypervisor> {
    let dom0 = SimDomain::attach_dom0(hv.socket()).unwrap();
    Box::new(xenstored::domain::PlatformHv::new(dom0).unwrap())
}

fn serve(
    core: xenstored::Core,
    socket: &std::path::Path,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<xenstored::Daemon>) {
    let mut d = xenstored::Daemon::bind_with(socket, core).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        d.run(|| s.load(Ordering::Relaxed)).unwrap();
        d
    });
    (stop, thread)
}

/// A fresh sim, dom0 on it, a daemon's core attached to it, and the
/// socket the daemon is to serve.
fn parts() -> (HvHandle, SimDomain, xenstored::Core, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "dom0kit-xsd-dom-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let hv = sim::Hypervisor::spawn(HvConfig::small(&dir)).unwrap();
    let dom0 = SimDomain::attach_dom0(hv.socket()).unwrap();
    let core = xenstored::Core::new().with_hypervisor(platform(&hv));
    (hv, dom0, core, dir.join("xenstored.sock"))
}

fn host() -> Host {
    let (hv, dom0, core, socket) = parts();
    let (stop, thread) = serve(core, &socket);
    Host {
        stop,
        thread: Some(thread),
        socket,
        dom0,
        _hv: hv,
    }
}

impl Host {
    /// Stops the daemon and saves its state.
    fn stop_daemon(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let d = self.thread.take().unwrap().join().unwrap();
        d.core().save(&self.socket.with_extension("state")).unwrap();
    }

    /// Starts a daemon from the saved state.
    fn start_daemon(&mut self) {
        let state = self.socket.with_extension("state");
        let core = xenstored::Core::restore(&state, Some(platform(&self._hv))).unwrap();
        let (stop, thread) = serve(core, &self.socket);
        self.stop = stop;
        self.thread = Some(thread);
    }
}

/// A guest domain, attached, with a ring page and an unbound port for dom0.
struct Guest {
    domid: u16,
    dom: SimDomain,
    pfn: u64,
    port: u32,
}

fn guest(h: &Host) -> Guest {
    guest_of(&h.dom0, &h._hv)
}

fn guest_of(dom0: &SimDomain, hv: &HvHandle) -> Guest {
    let new = dom0
        .create_domain(&DomainConfig {
            pages: 64,
            grant_frames: 1,
        })
        .unwrap();
    let dom = SimDomain::attach_guest(hv.socket(), &new.token).unwrap();
    let pfn = dom.alloc_pages(1).unwrap();
    let port = dom.alloc_unbound(abi::DomId(0)).unwrap();
    // The page is set up before the domain is introduced.
    RingStream::new(dom.clone(), pfn, port).unwrap();
    Guest {
        domid: new.domid.0,
        dom,
        pfn: pfn.0,
        port: port.0,
    }
}

fn ring_client(g: &Guest) -> Client<RingStream<SimDomain>> {
    let mut s = RingStream::attach(g.dom.clone(), abi::Pfn(g.pfn), abi::Port(g.port)).unwrap();
    s.set_timeout(Some(Duration::from_secs(5)));
    Client::over(s)
}

fn args(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

fn introduce(c: &mut Client, g: &Guest) -> Result<Vec<u8>, ClientError> {
    let (d, f, p) = (g.domid.to_string(), g.pfn.to_string(), g.port.to_string());
    c.request(MsgType::Introduce, Tx::NONE, args(&[&d, &f, &p]))
}

fn introduced(c: &mut Client, domid: u16) -> bool {
    let r = c
        .request(
            MsgType::IsDomainIntroduced,
            Tx::NONE,
            args(&[&domid.to_string()]),
        )
        .unwrap();
    r == b"T\0"
}

fn xs_err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> XsError {
    match r {
        Err(ClientError::Xs(e)) => e,
        other => panic!("expected an xenstore error, got {other:?}"),
    }
}

/// The home of `g` as xl makes it: dom0 owns it, the guest may read it,
/// and `data` below it is the guest's.
fn make_home(c: &mut Client, g: &Guest) -> String {
    let home = format!("/local/domain/{}", g.domid);
    c.mkdir(Tx::NONE, &home).unwrap();
    let perms = Perms::parse([b"n0".as_slice(), format!("r{}", g.domid).as_bytes()]).unwrap();
    c.set_perms(Tx::NONE, &home, &perms).unwrap();
    c.mkdir(Tx::NONE, &format!("{home}/data")).unwrap();
    let perms = Perms::parse([format!("n{}", g.domid).as_bytes()]).unwrap();
    c.set_perms(Tx::NONE, &format!("{home}/data"), &perms)
        .unwrap();
    home
}

/// Two guests, with homes, introduced; and a dom0 client.
fn two_domains(h: &Host) -> (Client, Guest, Guest) {
    let (g1, g2) = (guest(h), guest(h));
    let mut c = Client::connect(&h.socket).unwrap();
    for g in [&g1, &g2] {
        make_home(&mut c, g);
        introduce(&mut c, g).unwrap();
    }
    (c, g1, g2)
}

#[test]
fn an_introduced_domain_speaks_xenstore_on_its_ring() {
    let h = host();
    let g = guest(&h);
    let mut c = Client::connect(&h.socket).unwrap();
    let home = make_home(&mut c, &g);
    c.watch("@introduceDomain", "intro").unwrap();
    assert_eq!(c.read_watch().unwrap().path, "@introduceDomain");
    assert!(!introduced(&mut c, g.domid));
    assert_eq!(introduce(&mut c, &g).unwrap(), b"OK\0");
    assert_eq!(c.read_watch().unwrap().path, "@introduceDomain");
    assert!(introduced(&mut c, g.domid));

    let mut x = ring_client(&g);
    // Relative paths are below the guest's home; its own nodes are its.
    x.write(Tx::NONE, "data/name", b"guest").unwrap();
    assert_eq!(
        c.read(Tx::NONE, &format!("{home}/data/name")).unwrap(),
        b"guest"
    );
    assert_eq!(x.get_perms(Tx::NONE, "data/name").unwrap().owner(), g.domid);
    // dom0's nodes are not the guest's, nor are dom0's requests.
    assert_eq!(xs_err(x.read(Tx::NONE, "/tool/xenstored")), XsError::Acces);
    assert_eq!(xs_err(x.write(Tx::NONE, "/x", b"1")), XsError::Acces);
    assert_eq!(xs_err(x.control(&[b"check"])), XsError::Acces);
    let intro = args(&[&g.domid.to_string(), "1", "1"]);
    assert_eq!(
        xs_err(x.request(MsgType::Introduce, Tx::NONE, intro)),
        XsError::Acces
    );
    assert_eq!(
        xs_err(x.request(MsgType::IsDomainIntroduced, Tx::NONE, args(&["0"]))),
        XsError::Acces
    );
    // Watches, relative and absolute, and transactions.
    x.watch("data/name", "n").unwrap();
    assert_eq!(x.read_watch().unwrap().path, "data/name");
    c.write(Tx::NONE, &format!("{home}/data/name"), b"renamed")
        .unwrap();
    let e = x.read_watch().unwrap();
    assert_eq!((e.path.as_str(), e.token.as_str()), ("data/name", "n"));
    let t = x.transaction_start().unwrap();
    x.write(t, "data/d/a", b"1").unwrap();
    x.write(t, "data/d/b", b"2").unwrap();
    x.transaction_end(t, true).unwrap();
    assert_eq!(
        c.directory(Tx::NONE, &format!("{home}/data/d")).unwrap(),
        ["a", "b"]
    );
    // More than one ring's worth of requests and replies in flight.
    let too_big = vec![b'v'; 3000];
    assert_eq!(
        xs_err(x.write(Tx::NONE, "data/big", &too_big)),
        XsError::NoSpc
    );
    let big = vec![b'v'; 2000];
    for i in 0..20 {
        x.write(Tx::NONE, &format!("data/big/{i}"), &big).unwrap();
        assert_eq!(x.read(Tx::NONE, &format!("data/big/{i}")).unwrap(), big);
    }
}

#[test]
fn release_removes_the_domain_and_what_it_owns() {
    let h = host();
    let g = guest(&h);
    let mut c = Client::connect(&h.socket).unwrap();
    let home = make_home(&mut c, &g);
    introduce(&mut c, &g).unwrap();
    let mut x = ring_client(&g);
    x.write(Tx::NONE, "data/vbd/51712/state", b"1").unwrap();
    c.write(Tx::NONE, &format!("{home}/memory"), b"262144")
        .unwrap();
    c.watch("@releaseDomain", "rel").unwrap();
    assert_eq!(c.read_watch().unwrap().path, "@releaseDomain");

    assert_eq!(
        xs_err(c.request(MsgType::Release, Tx::NONE, args(&["0"]))),
        XsError::Inval
    );
    assert_eq!(
        xs_err(c.request(MsgType::Release, Tx::NONE, args(&["77"]))),
        XsError::NoEnt
    );
    let d = g.domid.to_string();
    assert_eq!(
        c.request(MsgType::Resume, Tx::NONE, args(&[&d])).unwrap(),
        b"OK\0"
    );
    assert_eq!(
        c.request(MsgType::Release, Tx::NONE, args(&[&d])).unwrap(),
        b"OK\0"
    );
    assert_eq!(c.read_watch().unwrap().path, "@releaseDomain");
    assert!(!introduced(&mut c, g.domid));
    // As C xenstored 4.17: the nodes the domain owned went with it; dom0's
    // stay.
    assert_eq!(
        xs_err(c.read(Tx::NONE, &format!("{home}/data"))),
        XsError::NoEnt
    );
    assert_eq!(
        c.read(Tx::NONE, &format!("{home}/memory")).unwrap(),
        b"262144"
    );
    assert_eq!(
        xs_err(c.request(MsgType::Release, Tx::NONE, args(&[&d]))),
        XsError::NoEnt
    );
    // The ring is no longer served.
    x.stream_mut().set_timeout(Some(Duration::from_millis(300)));
    assert!(matches!(
        x.read(Tx::NONE, "data/name"),
        Err(ClientError::Io(_))
    ));
}

#[test]
fn a_dead_domain_is_released() {
    let h = host();
    let (mut c, g1, g2) = two_domains(&h);
    c.watch("@releaseDomain", "rel").unwrap();
    assert_eq!(c.read_watch().unwrap().path, "@releaseDomain");
    let mut x2 = ring_client(&g2);
    x2.write(Tx::NONE, "data/alive", b"1").unwrap();
    // g1's process is gone as far as the sim can tell.
    g1.dom.hang_up_hv().unwrap();
    assert_eq!(c.read_watch().unwrap().path, "@releaseDomain");
    assert!(!introduced(&mut c, g1.domid));
    assert!(introduced(&mut c, g2.domid));
    assert_eq!(x2.read(Tx::NONE, "data/alive").unwrap(), b"1");
}

#[test]
fn a_domain_that_shuts_down_is_announced_once_and_keeps_its_ring() {
    let h = host();
    let (mut c, g1, g2) = two_domains(&h);
    c.watch("@releaseDomain", "rel").unwrap();
    assert_eq!(c.read_watch().unwrap().path, "@releaseDomain");
    let mut x1 = ring_client(&g1);
    x1.write(Tx::NONE, "data/before", b"1").unwrap();
    platform::Schedule::shutdown(&g1.dom, platform::ShutdownReason::Poweroff).unwrap();
    // It runs no more: a second shutdown is refused.
    assert!(platform::Schedule::shutdown(&g1.dom, platform::ShutdownReason::Crash).is_err());
    assert_eq!(c.read_watch().unwrap().path, "@releaseDomain");
    let info = h.dom0.list_domains().unwrap();
    let me = info.iter().find(|i| i.domid.0 == g1.domid).unwrap();
    assert_eq!(me.shutdown, Some(platform::ShutdownReason::Poweroff));
    assert!(!me.dying);
    // As C xenstored: still introduced, its ring still served, until it
    // dies.
    assert!(introduced(&mut c, g1.domid));
    assert_eq!(x1.read(Tx::NONE, "data/before").unwrap(), b"1");
    c.stream_mut()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(c.read_watch().is_err(), "announced once");
    c.stream_mut().set_read_timeout(None).unwrap();
    // Another domain's shutdown is announced; the first is not again.
    platform::Schedule::shutdown(&g2.dom, platform::ShutdownReason::Reboot).unwrap();
    assert_eq!(c.read_watch().unwrap().path, "@releaseDomain");
    c.stream_mut()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(c.read_watch().is_err(), "one event for one shutdown");
    c.stream_mut().set_read_timeout(None).unwrap();
    // Its hv connection going is no death now: it waits for dom0 to
    // destroy it (which would kill its process, this test's).
    g1.dom.hang_up_hv().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(introduced(&mut c, g1.domid));
    let info = h.dom0.list_domains().unwrap();
    assert!(info.iter().any(|i| i.domid.0 == g1.domid && !i.dying));
}

#[test]
fn a_domain_that_shut_down_before_it_was_introduced_is_announced_then() {
    let h = host();
    let g = guest(&h);
    let mut c = Client::connect(&h.socket).unwrap();
    make_home(&mut c, &g);
    c.watch("@releaseDomain", "rel").unwrap();
    assert_eq!(c.read_watch().unwrap().path, "@releaseDomain");
    platform::Schedule::shutdown(&g.dom, platform::ShutdownReason::Poweroff).unwrap();
    // Not introduced: nothing to announce yet.
    c.stream_mut()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(c.read_watch().is_err());
    c.stream_mut().set_read_timeout(None).unwrap();
    introduce(&mut c, &g).unwrap();
    assert_eq!(c.read_watch().unwrap().path, "@releaseDomain");
    assert!(introduced(&mut c, g.domid));
}

#[test]
fn a_broken_ring_closes_that_domain_only() {
    let h = host();
    let (mut c, g1, g2) = two_domains(&h);
    let mut x1 = ring_client(&g1);
    let mut x2 = ring_client(&g2);
    x1.write(Tx::NONE, "data/ok", b"1").unwrap();
    // A request header claiming more than XENSTORE_PAYLOAD_MAX.
    let mut hdr = Vec::new();
    for w in [abi::xs_wire::XS_READ, 1, 0, 5000] {
        hdr.extend_from_slice(&w.to_le_bytes());
    }
    let page = g1.dom.pages(abi::Pfn(g1.pfn), 1).unwrap();
    let req = ring::ByteProducer::new(page, ring::ByteRingLayout::XENSTORE_REQ).unwrap();
    assert_eq!(req.write(&hdr).unwrap(), hdr.len());
    g1.dom.notify(abi::Port(g1.port)).unwrap();
    // The daemon gives up on the ring and says so in its error word.
    let err = x1.read(Tx::NONE, "data/ok").unwrap_err();
    assert!(format!("{:?}", err).contains("error 3"), "{err:?}");
    let page = g1.dom.pages(abi::Pfn(g1.pfn), 1).unwrap();
    let word = page
        .load_u32(abi::xs_wire::offsets::ERROR, Ordering::Acquire)
        .unwrap();
    assert_eq!(word, abi::xs_wire::XENSTORE_ERROR_PROTO);
    // Still introduced until released (C xenstored's ignored connection).
    assert!(introduced(&mut c, g1.domid));

    // A producer index past the ring's size on the other domain.
    let page = g2.dom.pages(abi::Pfn(g2.pfn), 1).unwrap();
    x2.write(Tx::NONE, "data/ok", b"1").unwrap();
    page.store_u32(abi::xs_wire::offsets::REQ_PROD, 5000, Ordering::Release)
        .unwrap();
    g2.dom.notify(abi::Port(g2.port)).unwrap();
    // (Our own client sees the bad index too, before sending anything.)
    assert!(x2.read(Tx::NONE, "data/ok").is_err());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let error = || {
        page.load_u32(abi::xs_wire::offsets::ERROR, Ordering::Acquire)
            .unwrap()
    };
    while error() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(error(), abi::xs_wire::XENSTORE_ERROR_RINGIDX);
    // dom0 is served throughout.
    c.write(Tx::NONE, "/still", b"here").unwrap();
    assert_eq!(c.read(Tx::NONE, "/still").unwrap(), b"here");
    let d = g1.domid.to_string();
    c.request(MsgType::Release, Tx::NONE, args(&[&d])).unwrap();
}

#[test]
fn set_target_gives_one_domain_the_rights_of_another() {
    let h = host();
    let (dm, g) = (guest(&h), guest(&h));
    let mut c = Client::connect(&h.socket).unwrap();
    let home = make_home(&mut c, &g);
    make_home(&mut c, &dm);
    introduce(&mut c, &dm).unwrap();
    introduce(&mut c, &g).unwrap();
    c.write(Tx::NONE, &format!("{home}/private"), b"s").unwrap();
    let perms = Perms::parse([format!("n{}", g.domid).as_bytes()]).unwrap();
    c.set_perms(Tx::NONE, &format!("{home}/private"), &perms)
        .unwrap();
    let mut x = ring_client(&dm);
    let path = format!("{home}/private");
    assert_eq!(xs_err(x.read(Tx::NONE, &path)), XsError::Acces);
    let (a, b) = (dm.domid.to_string(), g.domid.to_string());
    assert_eq!(
        xs_err(c.request(MsgType::SetTarget, Tx::NONE, args(&[&a, "99"]))),
        XsError::NoEnt
    );
    c.request(MsgType::SetTarget, Tx::NONE, args(&[&a, &b]))
        .unwrap();
    assert_eq!(x.read(Tx::NONE, &path).unwrap(), b"s");
}

#[test]
fn quotas_are_set_per_domain_and_for_new_domains() {
    let h = host();
    let (mut c, g1, g2) = two_domains(&h);
    let (d1, d2) = (g1.domid.to_string(), g2.domid.to_string());
    let set = |c: &mut Client, parts: &[&str]| c.request(MsgType::SetQuota, Tx::NONE, args(parts));
    let get = |c: &mut Client, parts: &[&str]| c.request(MsgType::GetQuota, Tx::NONE, args(parts));
    set(&mut c, &[&d1, "watches", "2"]).unwrap();
    assert_eq!(get(&mut c, &[&d1, "watches"]).unwrap(), b"2\0");
    assert_eq!(get(&mut c, &[&d2, "watches"]).unwrap(), b"128\0");
    // As C: more than the quota is refused, so three fit.
    let mut x1 = ring_client(&g1);
    for t in ["a", "b", "c"] {
        x1.watch("data", t).unwrap();
    }
    assert_eq!(xs_err(x1.watch("data", "d")), XsError::TooBig);
    let mut x2 = ring_client(&g2);
    for t in ["a", "b", "c", "d"] {
        x2.watch("data", t).unwrap();
    }
    // The global value is what domains introduced later get.
    set(&mut c, &["node-size", "100"]).unwrap();
    let g3 = guest(&h);
    make_home(&mut c, &g3);
    introduce(&mut c, &g3).unwrap();
    let d3 = g3.domid.to_string();
    assert_eq!(get(&mut c, &[&d3, "node-size"]).unwrap(), b"100\0");
    assert_eq!(get(&mut c, &[&d1, "node-size"]).unwrap(), b"2048\0");
    let mut x3 = ring_client(&g3);
    assert_eq!(
        xs_err(x3.write(Tx::NONE, "data/v", &[b'v'; 100])),
        XsError::NoSpc
    );
    x1.write(Tx::NONE, "data/v", &[b'v'; 100]).unwrap();
}

#[test]
fn introducing_a_domain_again_gives_it_a_fresh_connection() {
    let h = host();
    let g = guest(&h);
    let mut c = Client::connect(&h.socket).unwrap();
    let home = make_home(&mut c, &g);
    introduce(&mut c, &g).unwrap();
    c.watch("@introduceDomain", "i").unwrap();
    assert_eq!(c.read_watch().unwrap().path, "@introduceDomain");
    let mut x = ring_client(&g);
    x.write(Tx::NONE, "data/a", b"1").unwrap();
    x.watch("data/a", "w").unwrap();
    assert_eq!(x.read_watch().unwrap().path, "data/a");
    // The same page and port, as a guest that reconnects asks for (C
    // unbinds the old port before binding it again).
    assert_eq!(introduce(&mut c, &g).unwrap(), b"OK\0");
    assert!(introduced(&mut c, g.domid));
    // Nothing fired, and the domain's watches went with its old
    // connection (C's domain_conn_reset); its nodes stay.
    c.write(Tx::NONE, "/ping", b"").unwrap();
    assert!(c.pending_event().is_none());
    let mut y = ring_client(&g);
    assert_eq!(y.read(Tx::NONE, "data/a").unwrap(), b"1");
    c.write(Tx::NONE, &format!("{home}/data/a"), b"2").unwrap();
    assert_eq!(y.read(Tx::NONE, "data/a").unwrap(), b"2");
    assert!(y.pending_event().is_none());
}

#[test]
fn a_restarted_daemon_keeps_its_domains() {
    let mut h = host();
    let g = guest(&h);
    let mut c = Client::connect(&h.socket).unwrap();
    let home = make_home(&mut c, &g);
    introduce(&mut c, &g).unwrap();
    let d = g.domid.to_string();
    c.request(MsgType::SetQuota, Tx::NONE, args(&[&d, "watches", "7"]))
        .unwrap();
    let mut x = ring_client(&g);
    x.write(Tx::NONE, "data/a", b"1").unwrap();
    x.watch("data/a", "w").unwrap();
    assert_eq!(x.read_watch().unwrap().path, "data/a");
    drop(c);
    h.stop_daemon();
    h.start_daemon();
    // The same ring goes on: its requests, its watch (relative still), its
    // quota; dom0 sees it introduced.
    assert_eq!(x.read(Tx::NONE, "data/a").unwrap(), b"1");
    let mut c = Client::connect(&h.socket).unwrap();
    assert!(introduced(&mut c, g.domid));
    c.write(Tx::NONE, &format!("{home}/data/a"), b"2").unwrap();
    let e = x.read_watch().unwrap();
    assert_eq!((e.path.as_str(), e.token.as_str()), ("data/a", "w"));
    let q = c
        .request(MsgType::GetQuota, Tx::NONE, args(&[&d, "watches"]))
        .unwrap();
    assert_eq!(q, b"7\0");
    // A domain that died while no daemon ran is released at restart.
    drop(x);
    h.stop_daemon();
    g.dom.hang_up_hv().unwrap();
    h.start_daemon();
    let mut c = Client::connect(&h.socket).unwrap();
    assert!(!introduced(&mut c, g.domid));
    assert_eq!(
        xs_err(c.read(Tx::NONE, &format!("{home}/data"))),
        XsError::NoEnt
    );
}

#[test]
fn a_guest_that_keeps_signalling_does_not_keep_the_daemon_polling() {
    use std::time::Instant;
    let (hv, dom0, core, socket) = parts();
    // Served in this thread: its CPU is the daemon's.
    let mut d = xenstored::Daemon::bind_with(&socket, core).unwrap();
    d.set_busy_poll(Duration::from_millis(10));
    let g = guest_of(&dom0, &hv);
    // dom0 introduces the guest, then writes 2 ms apart: the window
    // opens past 2 ms.
    let toolstack = std::thread::spawn({
        let (socket, domid, pfn, port) = (socket.clone(), g.domid, g.pfn, g.port);
        move || {
            let mut c = Client::connect(&socket).unwrap();
            let (d, f, p) = (domid.to_string(), pfn.to_string(), port.to_string());
            c.request(MsgType::Introduce, Tx::NONE, args(&[&d, &f, &p]))
                .unwrap();
            for i in 0..40 {
                std::thread::sleep(Duration::from_millis(2));
                c.write(Tx::NONE, "/busy", format!("{i}").as_bytes())
                    .unwrap();
            }
            c
        }
    });
    while !toolstack.is_finished() {
        d.turn(10).unwrap();
    }
    let _dom0_client = toolstack.join().unwrap();
    assert!(d.busy_poll().window() > Duration::from_millis(2));
    // The guest signals every half millisecond, far inside the window.
    let stop = Arc::new(AtomicBool::new(false));
    let signaller = std::thread::spawn({
        let (dom, port, stop) = (g.dom.clone(), abi::Port(g.port), stop.clone());
        move || {
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) {
                dom.notify(port).unwrap();
                sent += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            sent
        }
    });
    let (cpu, t) = (thread_cpu(), Instant::now());
    while t.elapsed() < Duration::from_millis(400) {
        d.turn(10).unwrap();
    }
    let spent = thread_cpu() - cpu;
    stop.store(true, Ordering::Relaxed);
    let sent = signaller.join().unwrap();
    assert!(sent > 100, "the guest signalled {sent} times");
    // Each signal is served, but none keeps the daemon polling: a daemon
    // that polled after each would have spent the whole 400 ms.
    assert!(
        spent < Duration::from_millis(150),
        "the daemon spent {spent:?}"
    );
}
