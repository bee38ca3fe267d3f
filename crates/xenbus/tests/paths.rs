//! What a toolstack writes for a device, on our xenstored.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use xenbus::features;
use xenbus::paths::Device;
use xenbus::State;
use xenstore::client::{Client, Tx};

fn daemon() -> (std::path::PathBuf, Arc<AtomicBool>) {
    let socket = std::env::temp_dir().join(format!("dom0kit-xenbus-{}/socket", std::process::id()));
    let mut d = xenstored::Daemon::bind(&socket).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || d.run(|| s.load(Ordering::Relaxed)).unwrap());
    (socket, stop)
}

#[test]
fn a_device_is_added_as_xl_adds_it_and_its_keys_are_read_back() {
    let (socket, stop) = daemon();
    let mut xs = Client::connect(&socket).unwrap();
    let dev = Device {
        kind: "vbd".into(),
        devid: 51712,
        frontend: 3,
        backend: 0,
    };
    assert_eq!(dev.frontend_dir(), "/local/domain/3/device/vbd/51712");
    assert_eq!(dev.backend_dir(), "/local/domain/0/backend/vbd/3/51712");
    assert_eq!(
        Device::from_backend_dir(&dev.backend_dir()),
        Some(dev.clone())
    );
    assert_eq!(
        Device::from_backend_dir("/local/domain/0/backend/vbd/3"),
        None
    );
    dev.add(
        &mut xs,
        &[("mode", "w".into())],
        &[("virtual-device", "51712".into())],
    )
    .unwrap();
    let fe = dev.frontend_dir();
    let be = dev.backend_dir();
    let read = |xs: &mut Client, p: &str| String::from_utf8(xs.read(Tx::NONE, p).unwrap()).unwrap();
    assert_eq!(read(&mut xs, &format!("{fe}/backend")), be);
    assert_eq!(read(&mut xs, &format!("{fe}/backend-id")), "0");
    assert_eq!(read(&mut xs, &format!("{be}/frontend")), fe);
    assert_eq!(read(&mut xs, &format!("{be}/frontend-id")), "3");
    assert_eq!(read(&mut xs, &format!("{be}/online")), "1");
    assert_eq!(read(&mut xs, &format!("{be}/mode")), "w");
    assert_eq!(dev.backend_state(&mut xs), State::Initialising);
    assert_eq!(dev.frontend_state(&mut xs), State::Initialising);
    // xl's permissions: each end owns its directory, the other may read.
    let p = xs.get_perms(Tx::NONE, &fe).unwrap();
    assert_eq!(p.to_payload(), b"n3\0r0\0");
    let p = xs.get_perms(Tx::NONE, &format!("{be}/state")).unwrap();
    assert_eq!(p.to_payload(), b"n0\0r3\0");
    // A frontend's rings, one queue of order 1, as blkfront writes them.
    for (k, v) in [
        ("ring-page-order", "1"),
        ("ring-ref0", "8"),
        ("ring-ref1", "9"),
        ("event-channel", "5"),
    ] {
        xs.write(Tx::NONE, &format!("{fe}/{k}"), v.as_bytes())
            .unwrap();
    }
    xs.write(Tx::NONE, &format!("{be}/feature-flush-cache"), b"1")
        .unwrap();
    assert!(features::feature(&mut xs, &be, "flush-cache").unwrap());
    assert!(!features::feature(&mut xs, &be, "discard").unwrap());
    let rings = features::queue_rings(&mut xs, &fe, 4, 1).unwrap();
    assert_eq!(rings.len(), 1);
    assert_eq!(rings[0].ring_refs, [8, 9]);
    assert_eq!(rings[0].event_channel, 5);
    // More than the backend offered is refused.
    assert!(features::queue_rings(&mut xs, &fe, 0, 1).is_err());
    dev.request_removal(&mut xs).unwrap();
    assert_eq!(dev.backend_state(&mut xs), State::Closing);
    dev.remove(&mut xs).unwrap();
    assert_eq!(dev.backend_state(&mut xs), State::Unknown);
    stop.store(true, Ordering::Relaxed);
}
