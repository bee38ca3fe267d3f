//! Creating, listing and destroying domains, as xl does it in xenstore:
//! `/local/domain/<id>` with `name`, `domid`, `vm`, `memory/target`,
//! `/vm/<uuid>`, the device directories, `XS_INTRODUCE`; and on the way
//! out the devices closed first (frontends see `Closing`), then
//! `XS_RELEASE`, the domain destroyed, its directories removed.
//!
//! The platform creates the domain ([`DomainControl`]); the caller starts
//! the guest's process (a [`Launch`]), which reports where its xenstore
//! ring is, the way a domU finds it in its start info.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use platform::{DomId, DomainConfig as HvDomainConfig, DomainControl, NewDomain};
use xenbus::paths::{in_transaction, Device};
use xenbus::State;
use xenstore::client::{Client, ClientError, Tx};
use xenstore::wire::MsgType;
use xenstore::{Access, Perm, Perms, XsError};

use crate::config::DomainConfig;

/// Something went wrong creating or destroying a domain.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The platform refused.
    #[error("hypervisor: {0}")]
    Platform(#[from] platform::Error),
    /// xenstore refused.
    #[error(transparent)]
    Xenstore(#[from] ClientError),
    /// The guest's process did not start or report.
    #[error("guest process: {0}")]
    Guest(String),
    /// No such domain.
    #[error("no domain {0:?}")]
    NotFound(String),
    /// A domain of that name exists.
    #[error("a domain named {0:?} exists")]
    Exists(String),
}

/// Where a started guest's xenstore ring is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingInfo {
    /// The page (a frame of the guest's memory).
    pub gfn: u64,
    /// The guest's unbound event-channel port for dom0.
    pub port: u32,
}

/// Starts the process that runs as a new domain and returns where its
/// xenstore ring is.
pub trait Launch {
    /// Starts the guest `name` for `domain`.
    fn launch(&mut self, name: &str, domain: &NewDomain) -> Result<RingInfo, String>;
}

/// A domain that was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    /// Its id.
    pub domid: u16,
    /// Its UUID (`/vm/<uuid>`).
    pub uuid: String,
    /// Its devices.
    pub devices: Vec<Device>,
}

/// A line of `list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its name.
    pub name: String,
    /// Its id.
    pub domid: u16,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// xl's state letters (`r`unning, `b`locked, `p`aused, `s`hutdown,
    /// `c`rashed, `d`ying).
    pub state: String,
}

fn perms(entries: &[(u16, Access)]) -> Result<Perms, XsError> {
    Perms::new(
        entries
            .iter()
            .map(|&(domid, access)| Perm { domid, access })
            .collect(),
    )
}

fn pseudo_uuid(domid: u16) -> String {
    // Linux's random version-4 UUID; failing that, one from the clock.
    if let Ok(u) = std::fs::read_to_string("/proc/sys/kernel/random/uuid") {
        if u.trim().len() == 36 {
            return u.trim().to_string();
        }
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = t ^ (u128::from(domid) << 100) ^ (u128::from(std::process::id()) << 64);
    let h = format!("{n:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The toolstack's index of names (dom0's): `<NAMES>/<name>` is the id
/// of the domain that claimed the name.
const NAMES: &str = "/tool/dom0kit/names";

/// The index node of domain name `name` (a `.`, which xenstore paths do
/// not allow, as `@2e`: names have no `@`).
fn name_node(name: &str) -> String {
    format!("{NAMES}/{}", name.replace('.', "@2e"))
}

/// Whether another domain than `me` has `name`: dom0's, or the one the
/// index names, if that domain still has it (an entry whose domain does
/// not is stale: a toolstack died mid-way).
fn name_taken<S: Read + Write>(
    xs: &mut Client<S>,
    t: Tx,
    name: &str,
    me: Option<u16>,
) -> Result<bool, ClientError> {
    let has = |xs: &mut Client<S>, id: &str| -> Result<bool, ClientError> {
        match xs.read(t, &format!("/local/domain/{id}/name")) {
            Ok(n) => Ok(n == name.as_bytes()),
            Err(ClientError::Xs(XsError::NoEnt)) => Ok(false),
            Err(e) => Err(e),
        }
    };
    if has(xs, "0")? {
        return Ok(true);
    }
    match xs.read(t, &name_node(name)) {
        Ok(id) => {
            let id = String::from_utf8_lossy(&id).into_owned();
            if me.is_some_and(|m| m.to_string() == id) {
                return Ok(false);
            }
            has(xs, &id)
        }
        Err(ClientError::Xs(XsError::NoEnt)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The domain called `name`, if any (by `/local/domain/*/name`).
pub fn find<S: Read + Write>(
    xs: &mut Client<S>,
    name_or_id: &str,
) -> Result<Option<u16>, ClientError> {
    let ids = match xs.directory(Tx::NONE, "/local/domain") {
        Ok(v) => v,
        Err(ClientError::Xs(XsError::NoEnt)) => return Ok(None),
        Err(e) => return Err(e),
    };
    for id in ids {
        let Ok(domid) = id.parse::<u16>() else {
            continue;
        };
        if id == name_or_id {
            return Ok(Some(domid));
        }
        if let Ok(n) = xs.read(Tx::NONE, &format!("/local/domain/{id}/name")) {
            if n == name_or_id.as_bytes() {
                return Ok(Some(domid));
            }
        }
    }
    Ok(None)
}

/// Keys of a device directory.
type Keys = Vec<(&'static str, String)>;

/// The backend keys and frontend keys xl writes for a disk.
fn vbd_keys(d: &crate::disk::Disk) -> (Keys, Keys) {
    let devtype = if d.cdrom { "cdrom" } else { "disk" };
    let back = vec![
        ("params", d.target.clone().unwrap_or_default()),
        (
            "type",
            d.backend_type.clone().unwrap_or_else(|| "phy".into()),
        ),
        ("format", d.format.name().to_string()),
        ("mode", if d.writable { "w" } else { "r" }.to_string()),
        ("device-type", devtype.to_string()),
        ("dev", d.vdev.clone()),
        ("removable", u8::from(d.cdrom).to_string()),
        ("bootable", "1".to_string()),
        ("discard-enable", u8::from(d.discard).to_string()),
    ];
    let mut back = back;
    if d.direct_io_safe {
        // As libxl: the backend may bypass the page cache (O_DIRECT).
        back.push(("direct-io-safe", "1".to_string()));
    }
    let front = vec![
        ("virtual-device", d.devid.to_string()),
        ("device-type", devtype.to_string()),
        ("trusted", u8::from(d.trusted).to_string()),
    ];
    (back, front)
}

/// Creates domain `config` on `hv`, starts it with `launch`, writes what
/// xl writes, introduces it to xenstored and adds its devices. On a
/// failure after the domain exists, it is destroyed again: nothing is
/// left behind.
pub fn create<S: Read + Write>(
    hv: &impl DomainControl,
    xs: &mut Client<S>,
    config: &DomainConfig,
    launch: &mut impl Launch,
) -> Result<Created, DomainError> {
    // A cheap look first (one claim, one name), so that a duplicate
    // starts nothing; the transaction that claims the name decides.
    if name_taken(xs, Tx::NONE, &config.name, None)? {
        return Err(DomainError::Exists(config.name.clone()));
    }
    let new = hv.create_domain(&HvDomainConfig {
        pages: config.memory_mib * 256,
        grant_frames: 32,
    })?;
    let domid = new.domid.0;
    match build(xs, config, &new, launch) {
        Ok(c) => Ok(c),
        Err(e) => {
            let _ = destroy_id(hv, xs, domid, Duration::from_millis(100));
            Err(e)
        }
    }
}

fn build<S: Read + Write>(
    xs: &mut Client<S>,
    config: &DomainConfig,
    new: &NewDomain,
    launch: &mut impl Launch,
) -> Result<Created, DomainError> {
    let domid = new.domid.0;
    let ring = launch
        .launch(&config.name, new)
        .map_err(DomainError::Guest)?;
    let uuid = config.uuid.clone().unwrap_or_else(|| pseudo_uuid(domid));
    let home = format!("/local/domain/{domid}");
    let vm = format!("/vm/{uuid}");
    let ro = perms(&[(0, Access::None), (domid, Access::Read)]).map_err(ClientError::from)?;
    let rw = perms(&[(domid, Access::None)]).map_err(ClientError::from)?;
    let kib = (config.memory_mib * 1024).to_string();
    let mut taken = false;
    in_transaction(xs, |xs, t| {
        // The name is claimed in this transaction, in the toolstack's
        // index (one node a name, not a look at every domain's): another
        // create that claims it first changes the node this one read, so
        // this one retries and sees it. An entry whose domain no longer
        // has that name (a toolstack that died mid-way) is stale.
        taken = name_taken(xs, t, &config.name, Some(domid))?;
        if taken {
            return Ok(());
        }
        xs.write(t, &name_node(&config.name), domid.to_string().as_bytes())?;
        for (dir, p) in [(home.as_str(), &ro), (vm.as_str(), &ro)] {
            xs.rm(t, dir).or_else(ignore_noent)?;
            xs.mkdir(t, dir)?;
            xs.set_perms(t, dir, p)?;
        }
        // As libxl: `device` and `control` are dom0's and readable by the
        // guest (its devices' own directories are its), the rest the
        // guest's.
        for (sub, p) in [
            ("device", &ro),
            ("control", &ro),
            ("control/shutdown", &rw),
            ("control/feature-poweroff", &rw),
            ("control/feature-reboot", &rw),
            ("control/feature-suspend", &rw),
            ("control/sysrq", &rw),
            ("data", &rw),
            ("drivers", &rw),
            ("feature", &rw),
            ("attr", &rw),
            ("error", &rw),
        ] {
            let path = format!("{home}/{sub}");
            xs.mkdir(t, &path)?;
            xs.set_perms(t, &path, p)?;
        }
        for (k, v) in [
            ("name", config.name.as_str()),
            ("domid", &domid.to_string()),
            ("vm", vm.as_str()),
            ("memory/target", kib.as_str()),
            ("memory/static-max", kib.as_str()),
            ("cpu/0/availability", "online"),
        ] {
            xs.write(t, &format!("{home}/{k}"), v.as_bytes())?;
        }
        for (k, v) in [
            ("name", config.name.as_str()),
            ("uuid", uuid.as_str()),
            ("start_time", "0"),
        ] {
            xs.write(t, &format!("{vm}/{k}"), v.as_bytes())?;
        }
        Ok(())
    })?;
    if taken {
        return Err(DomainError::Exists(config.name.clone()));
    }
    let args = format!("{domid}\0{}\0{}\0", ring.gfn, ring.port);
    xs.request(MsgType::Introduce, Tx::NONE, args.into_bytes())?;
    let mut devices = Vec::new();
    for d in &config.disks {
        devices.push(attach_disk(xs, domid, d)?);
    }
    Ok(Created {
        domid,
        uuid,
        devices,
    })
}

/// Adds disk `d` to domain `domid` (served by dom0), as `xl block-attach`
/// does; `EEXIST` if it has a disk with that vdev.
pub fn attach_disk<S: Read + Write>(
    xs: &mut Client<S>,
    domid: u16,
    d: &crate::disk::Disk,
) -> Result<Device, ClientError> {
    let dev = Device {
        kind: "vbd".into(),
        devid: d.devid,
        frontend: domid,
        backend: 0,
    };
    let (back, front) = vbd_keys(d);
    dev.add(xs, &back, &front)?;
    Ok(dev)
}

fn ignore_noent(e: ClientError) -> Result<(), ClientError> {
    match e {
        ClientError::Xs(XsError::NoEnt) => Ok(()),
        e => Err(e),
    }
}

/// Every device whose frontend is domain `domid` (by the backends of
/// dom0).
pub fn devices_of<S: Read + Write>(
    xs: &mut Client<S>,
    domid: u16,
) -> Result<Vec<Device>, ClientError> {
    let mut out = Vec::new();
    let base = "/local/domain/0/backend";
    let kinds = xs.directory(Tx::NONE, base).or_else(|e| match e {
        ClientError::Xs(XsError::NoEnt) => Ok(Vec::new()),
        e => Err(e),
    })?;
    for kind in kinds {
        let ids = match xs.directory(Tx::NONE, &format!("{base}/{kind}/{domid}")) {
            Ok(v) => v,
            Err(ClientError::Xs(XsError::NoEnt)) => continue,
            Err(e) => return Err(e),
        };
        for id in ids {
            if let Ok(devid) = id.parse() {
                out.push(Device {
                    kind: kind.clone(),
                    devid,
                    frontend: domid,
                    backend: 0,
                });
            }
        }
    }
    Ok(out)
}

/// Detaches a device as `xl block-detach` does: asks the backend to let
/// go (the frontend sees `Closing`), waits up to `wait` for the backend to
/// be `Closed`, then removes both directories.
pub fn detach<S: Read + Write>(
    xs: &mut Client<S>,
    dev: &Device,
    wait: Duration,
) -> Result<bool, ClientError> {
    // A frontend that is gone (its guest died: xenstored removed what the
    // guest owned) will not answer, and a backend that already finished
    // the device will not write Closed again: nothing to wait for.
    // Nor will a backend that has not taken the device yet (still
    // Initialising): it probes only devices in that state.
    let frontend_there = xs.read(Tx::NONE, &dev.frontend_dir()).is_ok();
    let backend = dev.backend_state(xs);
    if !frontend_there
        || matches!(
            backend,
            State::Closed | State::Unknown | State::Initialising
        )
    {
        dev.remove(xs)?;
        return Ok(true);
    }
    dev.request_removal(xs)?;
    let deadline = Instant::now() + wait;
    let closed = loop {
        match dev.backend_state(xs) {
            State::Closed | State::Unknown => break true,
            _ if Instant::now() >= deadline => break false,
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    dev.remove(xs)?;
    Ok(closed)
}

/// How a guest is asked to shut down (`control/shutdown`, which the
/// guest watches and answers by clearing it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownRequest {
    /// `xl shutdown`: power off.
    Poweroff,
    /// `xl reboot`.
    Reboot,
}

impl ShutdownRequest {
    /// The value written to `control/shutdown`.
    pub fn value(self) -> &'static str {
        match self {
            ShutdownRequest::Poweroff => "poweroff",
            ShutdownRequest::Reboot => "reboot",
        }
    }
}

/// The id of guest `name_or_id` (never dom0's), or `NotFound`.
fn guest_id<S: Read + Write>(xs: &mut Client<S>, name_or_id: &str) -> Result<u16, DomainError> {
    find(xs, name_or_id)?
        .filter(|&d| d != 0)
        .ok_or_else(|| DomainError::NotFound(name_or_id.to_string()))
}

/// Asks domain `name_or_id` to shut down, as `xl shutdown`/`xl reboot`
/// do: `control/shutdown` gets the request; the guest acts on it and
/// shuts itself down (or ignores it: nothing forces it). Returns its id.
pub fn request_shutdown<S: Read + Write>(
    xs: &mut Client<S>,
    name_or_id: &str,
    how: ShutdownRequest,
) -> Result<u16, DomainError> {
    let domid = guest_id(xs, name_or_id)?;
    xs.write(
        Tx::NONE,
        &format!("/local/domain/{domid}/control/shutdown"),
        how.value().as_bytes(),
    )?;
    Ok(domid)
}

/// Destroys domain `name_or_id`: its devices are closed (each given up to
/// `wait`), it is released from xenstored, destroyed, and its directories
/// removed.
pub fn destroy<S: Read + Write>(
    hv: &impl DomainControl,
    xs: &mut Client<S>,
    name_or_id: &str,
    wait: Duration,
) -> Result<u16, DomainError> {
    let domid = guest_id(xs, name_or_id)?;
    destroy_id(hv, xs, domid, wait)?;
    Ok(domid)
}

/// Every step is tried whatever the ones before did (a guest may make its
/// own directories hard to remove: it must not make itself hard to
/// destroy); the first error is returned at the end.
fn destroy_id<S: Read + Write>(
    hv: &impl DomainControl,
    xs: &mut Client<S>,
    domid: u16,
    wait: Duration,
) -> Result<(), DomainError> {
    let mut first: Option<DomainError> = None;
    let mut note = |r: Result<(), DomainError>| {
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    };
    // Said before the domain dies, so that its death is not taken for a
    // crash (`on_crash`). Under the dom0-owned home: the guest cannot
    // write it.
    if xs.read(Tx::NONE, &format!("/local/domain/{domid}")).is_ok() {
        let _ = xs.write(Tx::NONE, &format!("/local/domain/{domid}/destroying"), b"1");
    }
    match devices_of(xs, domid) {
        Ok(devs) => {
            for dev in devs {
                note(detach(xs, &dev, wait).map(drop).map_err(Into::into));
            }
        }
        Err(e) => note(Err(e.into())),
    }
    let vm = xs
        .read(Tx::NONE, &format!("/local/domain/{domid}/vm"))
        .ok()
        .and_then(|v| String::from_utf8(v).ok());
    let name = xs
        .read(Tx::NONE, &format!("/local/domain/{domid}/name"))
        .ok()
        .and_then(|v| String::from_utf8(v).ok());
    // Not introduced (it failed early, or died and was released): fine.
    let _ = xs.request(
        MsgType::Release,
        Tx::NONE,
        format!("{domid}\0").into_bytes(),
    );
    if let Err(e) = hv.destroy_domain(DomId(domid)) {
        // Dead already (it crashed, or a destroy raced ours): clean up.
        let alive = hv
            .list_domains()
            .map(|l| l.iter().any(|i| i.domid == DomId(domid) && !i.dying))
            .unwrap_or(true);
        if alive {
            note(Err(e.into()));
        }
    }
    note(
        xs.rm(Tx::NONE, &format!("/local/domain/{domid}"))
            .or_else(ignore_noent)
            .map_err(Into::into),
    );
    if let Some(vm) = vm.filter(|v| v.starts_with("/vm/")) {
        note(
            xs.rm(Tx::NONE, &vm)
                .or_else(ignore_noent)
                .map_err(Into::into),
        );
    }
    // Its name, if the index gives it to this domain.
    if let Some(name) = &name {
        let claim = name_node(name);
        note(
            in_transaction(xs, |xs, t| match xs.read(t, &claim) {
                Ok(id) if id == domid.to_string().as_bytes() => xs.rm(t, &claim),
                Ok(_) => Ok(()),
                Err(e) => ignore_noent(e),
            })
            .map_err(Into::into),
        );
    }
    // `/vm` and the name index themselves once their last domain is gone;
    // in a transaction, so that a domain being created meanwhile keeps its
    // entry.
    for dir in [NAMES, "/tool/dom0kit", "/vm"] {
        note(
            in_transaction(xs, |xs, t| match xs.directory(t, dir) {
                Ok(c) if c.is_empty() => xs.rm(t, dir),
                Ok(_) => Ok(()),
                Err(e) => ignore_noent(e),
            })
            .map_err(Into::into),
        );
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The domains, dom0 first, as `xl list` shows them.
pub fn list<S: Read + Write>(
    hv: &impl DomainControl,
    xs: &mut Client<S>,
) -> Result<Vec<Listed>, DomainError> {
    let infos = hv.list_domains()?;
    let mut out = Vec::new();
    for i in infos {
        let d = i.domid.0;
        let name = xs
            .read(Tx::NONE, &format!("/local/domain/{d}/name"))
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_else(|| {
                if d == 0 {
                    "Domain-0".into()
                } else {
                    format!("(domain {d})")
                }
            });
        // xl's letters: r b p s c d (one a column; a crash is `s` and `c`).
        let mut state = *b"------";
        if i.dying {
            state[5] = b'd';
        } else if let Some(r) = i.shutdown {
            state[3] = b's';
            if r == platform::ShutdownReason::Crash {
                state[4] = b'c';
            }
        } else if i.paused {
            state[2] = b'p';
        } else if i.attached {
            state[1] = b'b';
        } else {
            state[0] = b'r';
        }
        let state = String::from_utf8_lossy(&state).into_owned();
        out.push(Listed {
            name,
            domid: d,
            memory_mib: i.pages / 256,
            vcpus: 1,
            state,
        });
    }
    out.sort_by_key(|l| l.domid);
    Ok(out)
}

/// `xl list`'s table.
pub fn format_list(rows: &[Listed]) -> String {
    let mut s = format!(
        "{:<40} {:>5} {:>5} {:>5} {:>9} {:>9}\n",
        "Name", "ID", "Mem", "VCPUs", "State", "Time(s)"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<40} {:>5} {:>5} {:>5} {:>9} {:>9.1}\n",
            r.name, r.domid, r.memory_mib, r.vcpus, r.state, 0.0
        ));
    }
    s
}
