//! A backend runner and a frontend runner on our xenstored bring a device
//! to Connected, survive a frontend that starts over, and part when the
//! toolstack removes the device.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use xenbus::driver::{BackendDriver, BackendRunner, DriverResult, FrontendDriver, FrontendRunner};
use xenbus::paths::Device;
use xenbus::State;
use xenstore::client::{Client, Tx};

#[derive(Default)]
struct Fake {
    held: u32,
    fail_next: bool,
}

impl BackendDriver for Fake {
    fn probe<S: Read + Write>(&mut self, xs: &mut Client<S>, dev: &Device) -> DriverResult {
        xs.write(
            Tx::NONE,
            &format!("{}/feature-flush-cache", dev.backend_dir()),
            b"1",
        )
        .map_err(|e| e.to_string())
    }
    fn connect<S: Read + Write>(&mut self, xs: &mut Client<S>, dev: &Device) -> DriverResult {
        let rings = xenbus::features::queue_rings(xs, &dev.frontend_dir(), 0, 1)
            .map_err(|e| e.to_string())?;
        assert_eq!(rings[0].ring_refs, [8]);
        self.held += 1;
        Ok(())
    }
    fn disconnect(&mut self, _dev: &Device) {
        self.held -= 1;
    }
}

impl FrontendDriver for Fake {
    fn setup<S: Read + Write>(&mut self, xs: &mut Client<S>, dev: &Device) -> DriverResult {
        if std::mem::take(&mut self.fail_next) {
            return Err("no memory".into());
        }
        let fe = dev.frontend_dir();
        xs.write(Tx::NONE, &format!("{fe}/ring-ref"), b"8")
            .map_err(|e| e.to_string())?;
        xs.write(Tx::NONE, &format!("{fe}/event-channel"), b"3")
            .map_err(|e| e.to_string())?;
        self.held += 1;
        Ok(())
    }
    fn connect<S: Read + Write>(&mut self, _xs: &mut Client<S>, _dev: &Device) -> DriverResult {
        Ok(())
    }
    fn disconnect(&mut self, _dev: &Device) {
        self.held = self.held.saturating_sub(1);
    }
}

/// Our xenstored on a thread, and a connection to it; set the flag to
/// stop it.
fn daemon(tag: &str) -> (Client, Arc<AtomicBool>) {
    let socket = std::env::temp_dir().join(format!(
        "dom0kit-xenbus-{tag}-{}/socket",
        std::process::id()
    ));
    let mut d = xenstored::Daemon::bind(&socket).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || d.run(|| s.load(Ordering::Relaxed)).unwrap());
    (Client::connect(&socket).unwrap(), stop)
}

fn settle(xs: &mut Client, b: &mut BackendRunner<Fake>, f: &mut FrontendRunner<Fake>) {
    // Watch events are what make the runners look; here each looks in
    // turn until nothing changes.
    for _ in 0..20 {
        b.rescan(xs).unwrap();
        f.rescan(xs).unwrap();
    }
}

#[test]
fn runners_connect_reconnect_and_part() {
    let (mut xs, stop) = daemon("run");
    let dev = Device {
        kind: "vbd".into(),
        devid: 51712,
        frontend: 3,
        backend: 0,
    };
    dev.add(&mut xs, &[], &[]).unwrap();
    let mut b = BackendRunner::new("vbd", 0, Fake::default());
    let mut f = FrontendRunner::new("vbd", 3, Fake::default());
    settle(&mut xs, &mut b, &mut f);
    assert_eq!(dev.backend_state(&mut xs), State::Connected);
    assert_eq!(dev.frontend_state(&mut xs), State::Connected);
    assert_eq!((b.driver().held, f.driver().held), (1, 1));
    // The backend closes (as after a failure) and comes back: the frontend
    // closes, starts over, and they connect again.
    xs.write(
        Tx::NONE,
        &format!("{}/state", dev.frontend_dir()),
        &State::Closing.value(),
    )
    .unwrap();
    settle(&mut xs, &mut b, &mut f);
    assert_eq!(dev.backend_state(&mut xs), State::Closed);
    xs.write(
        Tx::NONE,
        &format!("{}/state", dev.frontend_dir()),
        &State::Initialising.value(),
    )
    .unwrap();
    f = FrontendRunner::new("vbd", 3, Fake::default());
    settle(&mut xs, &mut b, &mut f);
    assert_eq!(dev.backend_state(&mut xs), State::Connected);
    assert_eq!(dev.frontend_state(&mut xs), State::Connected);
    assert_eq!(b.driver().held, 1);
    // Removal: both ends close, the backend forgets the device.
    dev.request_removal(&mut xs).unwrap();
    settle(&mut xs, &mut b, &mut f);
    assert_eq!(dev.backend_state(&mut xs), State::Closed);
    assert_eq!(dev.frontend_state(&mut xs), State::Closed);
    assert_eq!((b.driver().held, f.driver().held), (0, 0));
    assert_eq!(b.devices().count(), 0);
    dev.remove(&mut xs).unwrap();
    settle(&mut xs, &mut b, &mut f);
    assert_eq!(f.devices().count(), 0);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_failed_setup_closes_the_device() {
    let (mut xs, stop) = daemon("fail");
    let dev = Device {
        kind: "vbd".into(),
        devid: 51712,
        frontend: 4,
        backend: 0,
    };
    dev.add(&mut xs, &[], &[]).unwrap();
    let mut b = BackendRunner::new("vbd", 0, Fake::default());
    let mut f = FrontendRunner::new(
        "vbd",
        4,
        Fake {
            held: 0,
            fail_next: true,
        },
    );
    settle(&mut xs, &mut b, &mut f);
    // Closing, then both close, as Linux's xenbus_dev_fatal leads to.
    assert_eq!(dev.frontend_state(&mut xs), State::Closed);
    assert_eq!(dev.backend_state(&mut xs), State::Closed);
    assert_eq!(f.driver().held, 0);
    assert_eq!(b.driver().held, 0);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn runners_look_only_at_the_device_an_event_is_about() {
    let (mut xs, stop) = daemon("ev");
    let dev = Device {
        kind: "vbd".into(),
        devid: 51712,
        frontend: 5,
        backend: 0,
    };
    dev.add(&mut xs, &[], &[]).unwrap();
    let mut b = BackendRunner::new("vbd", 0, Fake::default());
    let mut f = FrontendRunner::new("vbd", 5, Fake::default());
    // A node that names no device (a guest can write those): nothing.
    b.on_event(&mut xs, "/local/domain/5/device/vbd/junk/state")
        .unwrap();
    assert_eq!(b.devices().count(), 0);
    // The events a watch would give, about this device's nodes.
    let (fe_state, be_state) = (
        format!("{}/state", dev.frontend_dir()),
        format!("{}/state", dev.backend_dir()),
    );
    for _ in 0..10 {
        b.on_event(&mut xs, &be_state).unwrap();
        f.on_event(&mut xs, &fe_state).unwrap();
        b.on_event(&mut xs, &fe_state).unwrap();
        f.on_event(&mut xs, &be_state).unwrap();
    }
    assert_eq!(dev.backend_state(&mut xs), State::Connected);
    assert_eq!(dev.frontend_state(&mut xs), State::Connected);
    // Removal, followed through the same paths.
    dev.request_removal(&mut xs).unwrap();
    for _ in 0..10 {
        b.on_event(&mut xs, &format!("{}/online", dev.backend_dir()))
            .unwrap();
        f.on_event(&mut xs, &be_state).unwrap();
        b.on_event(&mut xs, &fe_state).unwrap();
    }
    assert_eq!(dev.backend_state(&mut xs), State::Closed);
    assert_eq!(b.devices().count(), 0);
    assert_eq!((b.driver().held, f.driver().held), (0, 0));
    stop.store(true, Ordering::Relaxed);
}
