//! Drivers and the loops that run them: a backend (in dom0) serves every
//! device of its kind that appears under `/local/domain/<be>/backend/<kind>`;
//! a frontend (in the guest) every one under `device/<kind>`. Both are
//! driven by xenstore watches: on each event the runner looks again at
//! each device it knows (the other end's `state`, `online`, whether the
//! directories are still there) and feeds the differences to the device's
//! [`machine`](crate::machine), then performs the actions.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use xenstore::client::{Client, ClientError, Tx};
use xenstore::XsError;

use crate::machine::{Action, Backend, Event, Frontend};
use crate::paths::{read_state, Device};
use crate::State;

/// Keeps `watched` (the watches this connection has with `token`) equal
/// to `wanted`: watches what is new, unwatches what is no longer wanted
/// (already gone if xenstored released its domain: not an error).
pub fn follow_watches<S: Read + Write>(
    xs: &mut Client<S>,
    watched: &mut std::collections::HashSet<String>,
    wanted: std::collections::HashSet<String>,
    token: &str,
) -> Result<(), ClientError> {
    for p in wanted.difference(watched) {
        xs.watch(p, token)?;
    }
    for p in watched.difference(&wanted) {
        let _ = xs.unwatch(p, token);
    }
    *watched = wanted;
    Ok(())
}

/// A driver failed to set a device up; the device goes to `Closing`.
pub type DriverResult = Result<(), String>;

/// What a backend driver does for one kind of device.
pub trait BackendDriver {
    /// Writes the backend's features into its directory (before
    /// `InitWait`).
    fn probe<S: Read + Write>(&mut self, xs: &mut Client<S>, dev: &Device) -> DriverResult;
    /// Reads the frontend's rings and event channels and starts serving.
    /// On failure it leaves nothing held.
    fn connect<S: Read + Write>(&mut self, xs: &mut Client<S>, dev: &Device) -> DriverResult;
    /// Stops serving and releases what `connect` took.
    fn disconnect(&mut self, dev: &Device);
    /// The device is gone (after `disconnect` if it was connected): drop
    /// anything `probe` kept for it.
    fn remove(&mut self, _dev: &Device) {}
}

/// What a frontend driver does for one kind of device.
pub trait FrontendDriver {
    /// Allocates and grants the rings and event channels and writes their
    /// keys into the frontend's directory.
    fn setup<S: Read + Write>(&mut self, xs: &mut Client<S>, dev: &Device) -> DriverResult;
    /// The backend is connected: start using the device.
    fn connect<S: Read + Write>(&mut self, xs: &mut Client<S>, dev: &Device) -> DriverResult;
    /// Releases what `setup` took (also after a `setup` that failed half
    /// way).
    fn disconnect(&mut self, dev: &Device);
    /// The device is gone (after `disconnect` if it was set up): drop
    /// what outlives a connection (a disk's export, say).
    fn remove(&mut self, _dev: &Device) {}
}

/// What a watch event is about.
enum Target<K> {
    /// One device.
    Device(K),
    /// Possibly any device.
    All,
    /// None of ours.
    Ignore,
}

struct BackendDevice {
    dev: Device,
    machine: Backend,
    peer: State,
    online: bool,
}

/// Serves the devices of one kind in backend domain `domid`.
pub struct BackendRunner<D> {
    kind: String,
    domid: u16,
    driver: D,
    devices: BTreeMap<(u16, u32), BackendDevice>,
}

fn directory<S: Read + Write>(xs: &mut Client<S>, path: &str) -> Result<Vec<String>, ClientError> {
    match xs.directory(Tx::NONE, path) {
        Ok(v) => Ok(v),
        Err(ClientError::Xs(XsError::NoEnt)) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Writes our state, as Linux's `xenbus_switch_state`: in a transaction
/// that first reads it, so that a directory the toolstack removed
/// meanwhile is never made again by the write.
fn set_state<S: Read + Write>(xs: &mut Client<S>, dir: &str, s: State) {
    let path = format!("{dir}/state");
    let _ = crate::paths::in_transaction(xs, |xs, t| {
        xs.read(t, &path)?;
        xs.write(t, &path, &s.value())
    });
}

impl<D: BackendDriver> BackendRunner<D> {
    /// A runner of `driver` for devices of `kind` in domain `domid`.
    pub fn new(kind: &str, domid: u16, driver: D) -> BackendRunner<D> {
        BackendRunner {
            kind: kind.to_string(),
            domid,
            driver,
            devices: BTreeMap::new(),
        }
    }

    /// The directory it watches.
    pub fn watch_path(&self) -> String {
        format!("/local/domain/{}/backend/{}", self.domid, self.kind)
    }

    /// Devices being served and their states.
    pub fn devices(&self) -> impl Iterator<Item = (&Device, State)> {
        self.devices.values().map(|d| (&d.dev, d.machine.state()))
    }

    /// The driver.
    pub fn driver(&mut self) -> &mut D {
        &mut self.driver
    }

    /// Looks at every device again.
    pub fn rescan<S: Read + Write>(&mut self, xs: &mut Client<S>) -> Result<(), ClientError> {
        let base = self.watch_path();
        let mut present = Vec::new();
        for fe in directory(xs, &base)? {
            let Ok(fe_id) = fe.parse::<u16>() else {
                continue;
            };
            for devid in directory(xs, &format!("{base}/{fe}"))? {
                if let Ok(devid) = devid.parse::<u32>() {
                    present.push((fe_id, devid));
                }
            }
        }
        for &key in &present {
            if !self.devices.contains_key(&key) {
                self.probe(xs, key);
            }
        }
        let keys: Vec<(u16, u32)> = self.devices.keys().copied().collect();
        for key in keys {
            self.check(xs, key, present.contains(&key));
        }
        Ok(())
    }

    /// A watch fired for `path`: looks at the device it is about (a
    /// backend's or a frontend's node of it), or at every device if it is
    /// about none. One device's change costs the same with 1 or 1000
    /// devices.
    pub fn on_event<S: Read + Write>(
        &mut self,
        xs: &mut Client<S>,
        path: &str,
    ) -> Result<(), ClientError> {
        let key = match self.device_of(path) {
            Target::Device(key) => key,
            Target::All => return self.rescan(xs),
            Target::Ignore => return Ok(()),
        };
        let dev = self.device(key);
        let present = xs.read(Tx::NONE, &dev.backend_dir()).is_ok();
        if !self.devices.contains_key(&key) {
            if present {
                self.probe(xs, key);
            }
            return Ok(());
        }
        self.check(xs, key, present);
        Ok(())
    }

    fn device(&self, (frontend, devid): (u16, u32)) -> Device {
        Device {
            kind: self.kind.clone(),
            devid,
            frontend,
            backend: self.domid,
        }
    }

    /// What a node is about: a device (`<watch path>/<fe>/<devid>/...`,
    /// or `/local/domain/<fe>/device/<kind>/<devid>/...`), every device
    /// (our own directory), or nothing. A frontend's node that names no
    /// device is ignored: a guest writing nonsense must not make us look
    /// at every guest's devices.
    fn device_of(&self, path: &str) -> Target<(u16, u32)> {
        let base = self.watch_path();
        if path == base {
            return Target::All;
        }
        if let Some(rest) = path.strip_prefix(&base).and_then(|r| r.strip_prefix('/')) {
            let mut it = rest.split('/');
            let fe = it.next().and_then(|f| f.parse().ok());
            let devid = it.next().and_then(|d| d.parse().ok());
            return match (fe, devid) {
                (Some(fe), Some(devid)) => Target::Device((fe, devid)),
                _ => Target::All,
            };
        }
        let frontend = || -> Option<(u16, u32)> {
            let rest = path.strip_prefix("/local/domain/")?;
            let mut it = rest.split('/');
            let fe = it.next()?.parse().ok()?;
            if it.next()? != "device" || it.next()? != self.kind {
                return None;
            }
            Some((fe, it.next()?.parse().ok()?))
        };
        frontend().map_or(Target::Ignore, Target::Device)
    }

    /// A device that appeared: probed if it is new.
    fn probe<S: Read + Write>(&mut self, xs: &mut Client<S>, key: (u16, u32)) {
        let dev = self.device(key);
        // A new device, as Linux's xenbus_probe_node; or one a backend
        // before us had taken (InitWait, Connected) and still online: we
        // started over, and probing it again asks the frontend to
        // reconnect. One in any other state is going away (Closing,
        // Closed, waiting for the toolstack to remove it) and is left.
        let be = dev.backend_dir();
        let machine = match read_state(xs, &format!("{be}/state")) {
            State::Initialising => Backend::new(),
            State::InitWait | State::Connected => {
                let online = xs
                    .read(Tx::NONE, &format!("{be}/online"))
                    .is_ok_and(|v| v == b"1");
                if !online {
                    return;
                }
                Backend::taking_over()
            }
            _ => return,
        };
        let mut d = BackendDevice {
            dev,
            machine,
            peer: State::Unknown,
            online: true,
        };
        let actions = match self.driver.probe(xs, &d.dev) {
            Ok(()) => d.machine.probe(),
            Err(_) => d.machine.failed(),
        };
        self.perform(xs, &mut d, actions);
        self.devices.insert(key, d);
    }

    /// Feeds a known device's changes to its machine.
    fn check<S: Read + Write>(&mut self, xs: &mut Client<S>, key: (u16, u32), present: bool) {
        let Some(mut d) = self.devices.remove(&key) else {
            return;
        };
        let be = d.dev.backend_dir();
        let mut events = Vec::new();
        if !present {
            events.push(Event::PeerGone);
        } else {
            let online = xs
                .read(Tx::NONE, &format!("{be}/online"))
                .map(|v| v == b"1")
                .unwrap_or(false);
            // The frontend's directory is where the backend's names it.
            let fe_dir = xs
                .read(Tx::NONE, &format!("{be}/frontend"))
                .ok()
                .and_then(|v| String::from_utf8(v).ok())
                .unwrap_or_else(|| d.dev.frontend_dir());
            let peer = read_state(xs, &format!("{fe_dir}/state"));
            if d.online && !online {
                d.online = false;
                events.push(Event::Remove);
            }
            if peer != d.peer {
                d.peer = peer;
                events.push(Event::Peer(peer));
            }
        }
        for ev in events {
            let actions = d.machine.on(ev);
            self.perform(xs, &mut d, actions);
        }
        if !d.machine.is_gone() {
            self.devices.insert(key, d);
        }
    }

    fn perform<S: Read + Write>(
        &mut self,
        xs: &mut Client<S>,
        d: &mut BackendDevice,
        actions: Vec<Action>,
    ) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::SetState(s) => set_state(xs, &d.dev.backend_dir(), s),
                Action::Connect | Action::Setup => {
                    if self.driver.connect(xs, &d.dev).is_err() {
                        // What followed the connect is replaced by the failure.
                        queue = d.machine.failed().into();
                    }
                }
                Action::Disconnect => self.driver.disconnect(&d.dev),
                Action::Unregister => self.driver.remove(&d.dev),
            }
        }
    }
}

struct FrontendDevice {
    dev: Device,
    machine: Frontend,
    peer: State,
}

/// Runs the frontends of one kind in the guest (`domid`), over the guest's
/// own xenstore connection.
pub struct FrontendRunner<D> {
    kind: String,
    domid: u16,
    driver: D,
    devices: BTreeMap<u32, FrontendDevice>,
}

impl<D: FrontendDriver> FrontendRunner<D> {
    /// A runner of `driver` for devices of `kind` of domain `domid`.
    pub fn new(kind: &str, domid: u16, driver: D) -> FrontendRunner<D> {
        FrontendRunner {
            kind: kind.to_string(),
            domid,
            driver,
            devices: BTreeMap::new(),
        }
    }

    /// The directory it watches.
    pub fn watch_path(&self) -> String {
        format!("/local/domain/{}/device/{}", self.domid, self.kind)
    }

    /// Devices and their states.
    pub fn devices(&self) -> impl Iterator<Item = (&Device, State)> {
        self.devices.values().map(|d| (&d.dev, d.machine.state()))
    }

    /// The driver.
    pub fn driver(&mut self) -> &mut D {
        &mut self.driver
    }

    /// Closes every device before the guest shuts down: each says
    /// Closing, its driver lets go of it, and it says Closed (the backend
    /// sees that and disconnects). Unlike Linux's `xenbus_dev_shutdown`
    /// it does not wait for the backends (the driver has flushed what
    /// must last): a guest that goes leaves what they hold mapped to the
    /// hypervisor.
    pub fn shutdown<S: Read + Write>(&mut self, xs: &mut Client<S>) {
        for (_, d) in std::mem::take(&mut self.devices) {
            let dir = d.dev.frontend_dir();
            set_state(xs, &dir, State::Closing);
            self.driver.disconnect(&d.dev);
            self.driver.remove(&d.dev);
            set_state(xs, &dir, State::Closed);
        }
    }

    /// Looks at every device again. The backend's state is read where the
    /// frontend's `backend` key says.
    pub fn rescan<S: Read + Write>(&mut self, xs: &mut Client<S>) -> Result<(), ClientError> {
        let base = self.watch_path();
        let mut present = Vec::new();
        for devid in directory(xs, &base)? {
            if let Ok(devid) = devid.parse::<u32>() {
                present.push(devid);
            }
        }
        for &devid in &present {
            if !self.devices.contains_key(&devid) {
                self.probe(xs, devid);
            }
        }
        let keys: Vec<u32> = self.devices.keys().copied().collect();
        for key in keys {
            self.check(xs, key, present.contains(&key));
        }
        Ok(())
    }

    /// A watch fired for `path`: looks at the device it is about (its
    /// frontend's node, or its backend's), or at every device.
    pub fn on_event<S: Read + Write>(
        &mut self,
        xs: &mut Client<S>,
        path: &str,
    ) -> Result<(), ClientError> {
        let devid = match self.device_of(path) {
            Target::Device(d) => d,
            Target::All => return self.rescan(xs),
            Target::Ignore => return Ok(()),
        };
        let present = xs
            .read(Tx::NONE, &format!("{}/{devid}", self.watch_path()))
            .is_ok();
        if !self.devices.contains_key(&devid) {
            if present {
                self.probe(xs, devid);
            }
            return Ok(());
        }
        self.check(xs, devid, present);
        Ok(())
    }

    /// `<watch path>/<devid>/...` or
    /// `/local/domain/<be>/backend/<kind>/<our domid>/<devid>/...` (a
    /// device), anything else under them (every device), or nothing.
    fn device_of(&self, path: &str) -> Target<u32> {
        let base = self.watch_path();
        if let Some(rest) = path.strip_prefix(&base).and_then(|r| r.strip_prefix('/')) {
            return rest
                .split('/')
                .next()
                .and_then(|d| d.parse().ok())
                .map_or(Target::All, Target::Device);
        }
        let backend = || -> Option<Option<u32>> {
            let rest = path.strip_prefix("/local/domain/")?;
            let mut it = rest.split('/');
            it.next()?.parse::<u16>().ok()?;
            if it.next()? != "backend" || it.next()? != self.kind {
                return None;
            }
            if it.next()?.parse::<u16>().ok()? != self.domid {
                return None;
            }
            Some(it.next().and_then(|d| d.parse().ok()))
        };
        match backend() {
            Some(Some(d)) => Target::Device(d),
            Some(None) => Target::All,
            None if path == base => Target::All,
            None => Target::Ignore,
        }
    }

    fn probe<S: Read + Write>(&mut self, xs: &mut Client<S>, devid: u32) {
        let dir = format!("{}/{devid}", self.watch_path());
        let Some(backend) = xs
            .read(Tx::NONE, &format!("{dir}/backend-id"))
            .ok()
            .and_then(|v| String::from_utf8(v).ok()?.parse::<u16>().ok())
        else {
            return;
        };
        let dev = Device {
            kind: self.kind.clone(),
            devid,
            frontend: self.domid,
            backend,
        };
        // Only a new device (see the backend's probe).
        if read_state(xs, &format!("{}/state", dev.frontend_dir())) != State::Initialising {
            return;
        }
        self.devices.insert(
            devid,
            FrontendDevice {
                dev,
                machine: Frontend::new(),
                peer: State::Unknown,
            },
        );
        self.check(xs, devid, true);
    }

    fn check<S: Read + Write>(&mut self, xs: &mut Client<S>, key: u32, present: bool) {
        let Some(mut d) = self.devices.remove(&key) else {
            return;
        };
        let mut events = Vec::new();
        if !present {
            events.push(Event::Remove);
        } else {
            let fe = d.dev.frontend_dir();
            let be_dir = xs
                .read(Tx::NONE, &format!("{fe}/backend"))
                .ok()
                .and_then(|v| String::from_utf8(v).ok())
                .unwrap_or_else(|| d.dev.backend_dir());
            let peer = read_state(xs, &format!("{be_dir}/state"));
            if peer != d.peer {
                d.peer = peer;
                // The backend's directory going away is the device going
                // away.
                events.push(if peer == State::Unknown {
                    Event::PeerGone
                } else {
                    Event::Peer(peer)
                });
            }
        }
        for ev in events {
            let actions = d.machine.on(ev);
            self.perform(xs, &mut d, actions);
        }
        if !d.machine.is_gone() {
            self.devices.insert(key, d);
        }
    }

    fn perform<S: Read + Write>(
        &mut self,
        xs: &mut Client<S>,
        d: &mut FrontendDevice,
        actions: Vec<Action>,
    ) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            let result = match a {
                Action::SetState(s) => {
                    set_state(xs, &d.dev.frontend_dir(), s);
                    Ok(())
                }
                Action::Setup => self.driver.setup(xs, &d.dev),
                Action::Connect => self.driver.connect(xs, &d.dev),
                Action::Disconnect => {
                    self.driver.disconnect(&d.dev);
                    Ok(())
                }
                Action::Unregister => {
                    self.driver.remove(&d.dev);
                    Ok(())
                }
            };
            if result.is_err() {
                queue = d.machine.failed().into();
            }
        }
    }
}
