//! A simulated Xen host: `dom0kit up` starts a supervisor that runs `hv`,
//! `xenstored` and `backend` in a run directory and restarts xenstored or
//! the backend if they die (xenstored from its state file); `down` stops
//! the guests and then the host; `create`, `list`, `destroy`,
//! `block-attach`, `block-detach` act on its domains; `demo` does all of
//! it in a private directory.
//!
//! The run directory holds `hv.sock`, `xenstored.sock`,
//! `xenstored.state`, `supervisor.pid`, `ready`, the daemons' logs, and
//! `domains/<name>/` for each guest (its log, its kept configuration, and
//! `export/`, the guest's own, where it serves its disks).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use platform::{DomainControl, NewDomain};
use sim::SimDomain;
use toolstack::domain::{self as dom, Launch, RingInfo};
use xenbus::State;
use xenstore::client::{Client, ClientError, Tx};
use xenstore::XsError;

use crate::STOP;

/// The files of a run directory.
#[derive(Clone, Debug)]
pub(crate) struct RunDir(pub(crate) PathBuf);

impl RunDir {
    fn at(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// The hypervisor's socket.
    pub(crate) fn hv(&self) -> PathBuf {
        self.at("hv.sock")
    }
    /// xenstored's socket.
    pub(crate) fn xenstored(&self) -> PathBuf {
        self.at("xenstored.sock")
    }
    fn state(&self) -> PathBuf {
        self.at("xenstored.state")
    }
    fn pid(&self) -> PathBuf {
        self.at("supervisor.pid")
    }
    fn ready(&self) -> PathBuf {
        self.at("ready")
    }
    fn domain_dir(&self, name: &str) -> PathBuf {
        self.0.join("domains").join(name)
    }
    /// Where guest `name` serves its disks: a link to the directory of the
    /// domain that holds the name (`export.<domid>`, its own, and its
    /// uid's when confined), apart from what dom0 keeps of it.
    fn export_dir(&self, name: &str) -> PathBuf {
        self.domain_dir(name).join("export")
    }
    /// Domain `domid`'s own directory, of guest `name`.
    fn export_dir_of(&self, name: &str, domid: platform::DomId) -> PathBuf {
        self.domain_dir(name).join(format!("export.{}", domid.0))
    }
}

fn exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("the dom0kit binary: {e}"))
}

/// The supervisor's pid, if it is running.
fn supervisor(run: &RunDir) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(run.pid())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    #[allow(unsafe_code)]
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive.then_some(pid)
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not come up within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Options shared by the host commands.
pub(crate) struct HostArgs {
    /// The run directory.
    pub(crate) run: RunDir,
    /// Machine memory for `up`.
    pub(crate) machine_memory: String,
    /// The other arguments.
    pub(crate) rest: Vec<String>,
}

/// Reads `--run-dir` and `--machine-memory`; the rest is returned.
pub(crate) fn host_args(args: &[String]) -> Result<HostArgs, String> {
    let mut run = crate::default_run_dir();
    let mut machine_memory = "1G".to_string();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--run-dir" => run = crate::value(&mut it, a)?.into(),
            "--machine-memory" => machine_memory = crate::value(&mut it, a)?.clone(),
            _ => rest.push(a.clone()),
        }
    }
    Ok(HostArgs {
        run: RunDir(run),
        machine_memory,
        rest,
    })
}

/// `dom0kit up`: starts the supervisor and returns when the host is ready.
pub(crate) fn up(h: &HostArgs) -> Result<(), String> {
    if let Some(pid) = supervisor(&h.run) {
        return Err(format!(
            "up: a host runs in {} (pid {pid})",
            h.run.0.display()
        ));
    }
    crate::parse_size(&h.machine_memory)?;
    std::fs::create_dir_all(&h.run.0).map_err(|e| format!("up: {}: {e}", h.run.0.display()))?;
    if sim::confine::available() {
        // Root's alone, whatever the umask: guests run as other uids and
        // have no business with its sockets and logs (each is put in its
        // own directory and handed its hypervisor connection).
        std::fs::set_permissions(&h.run.0, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("up: {}: {e}", h.run.0.display()))?;
    }
    let _ = std::fs::remove_file(h.run.ready());
    let log = std::fs::File::create(h.run.at("supervisor.log")).map_err(|e| format!("up: {e}"))?;
    let mut child = Command::new(exe()?)
        .arg("__supervise")
        .arg("--run-dir")
        .arg(&h.run.0)
        .arg("--machine-memory")
        .arg(&h.machine_memory)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("up: {e}"))?;
    let ready = wait_for("the host", Duration::from_secs(20), || {
        h.run.ready().exists() || matches!(child.try_wait(), Ok(Some(_)))
    });
    if ready.is_err() || !h.run.ready().exists() {
        // The supervisor and every daemon it started (its process group).
        // SAFETY: signalling a process group we made.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-(child.id() as i32), libc::SIGKILL);
        }
        let _ = child.wait();
        let log = std::fs::read_to_string(h.run.at("supervisor.log")).unwrap_or_default();
        return Err(format!("up: the host did not start:\n{log}"));
    }
    println!(
        "dom0kit: host up in {} (hv, xenstored, backend)",
        h.run.0.display()
    );
    if !sim::confine::available() {
        eprintln!(
            "dom0kit: guests cannot be confined here (not root, or no uids for them): \
             they run as uid {}, like dom0, so a hostile one could act as dom0",
            sim::sys::euid()
        );
    }
    Ok(())
}

/// The daemons of a host, in start order.
struct Daemon {
    name: &'static str,
    args: Vec<std::ffi::OsString>,
    child: Option<Child>,
    restarts: u32,
}

impl Daemon {
    fn start(&mut self, run: &RunDir) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.at(&format!("{}.log", self.name)))
            .map_err(|e| format!("{}: {e}", self.name))?;
        let child = Command::new(exe()?)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child, which we have not reaped.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) | Some(Err(_)) => {
                self.child = None;
                true
            }
            _ => false,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A supervisor that fails half way leaves nothing running.
        self.stop();
    }
}

fn xenstored_up(run: &RunDir) -> bool {
    Client::connect(&run.xenstored())
        .and_then(|mut c| c.control(&[b"check"]))
        .is_ok()
}

/// `dom0kit __supervise`: the host's supervisor (started by `up`).
pub(crate) fn supervise(h: &HostArgs) -> Result<(), String> {
    let run = &h.run;
    crate::stop_on_sigterm();
    std::fs::write(run.pid(), std::process::id().to_string()).map_err(|e| e.to_string())?;
    let os = |s: &str| std::ffi::OsString::from(s);
    let path = |p: PathBuf| p.into_os_string();
    let mut hv = Daemon {
        name: "hv",
        args: vec![
            os("hv"),
            os("--run-dir"),
            path(run.0.clone()),
            os("--machine-memory"),
            os(&h.machine_memory),
        ],
        child: None,
        restarts: 0,
    };
    let _ = std::fs::remove_file(run.hv());
    hv.start(run)?;
    wait_for("hv", Duration::from_secs(10), || {
        SimDomain::attach_dom0(&run.hv()).is_ok()
    })?;
    let mut xenstored = Daemon {
        name: "xenstored",
        args: vec![
            os("xenstored"),
            os("--socket"),
            path(run.xenstored()),
            os("--hv"),
            path(run.hv()),
            os("--state"),
            path(run.state()),
        ],
        child: None,
        restarts: 0,
    };
    // A host starts with a fresh store; a restarted xenstored restores.
    let _ = std::fs::remove_file(run.state());
    xenstored.start(run)?;
    wait_for("xenstored", Duration::from_secs(10), || xenstored_up(run))?;
    let mut xs = Client::connect(&run.xenstored()).map_err(|e| e.to_string())?;
    // What xl's xenstore setup writes for dom0.
    for (k, v) in [("name", "Domain-0"), ("domid", "0")] {
        xs.write(Tx::NONE, &format!("/local/domain/0/{k}"), v.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let backend_ready = run.at("backend.ready");
    let _ = std::fs::remove_file(&backend_ready);
    let mut backend = Daemon {
        name: "backend",
        args: vec![
            os("backend"),
            os("--hv"),
            path(run.hv()),
            os("--socket"),
            path(run.xenstored()),
            os("--ready"),
            path(backend_ready.clone()),
        ],
        child: None,
        restarts: 0,
    };
    backend.start(run)?;
    wait_for("backend", Duration::from_secs(10), || {
        backend_ready.exists()
    })?;
    // Guests that die are cleaned up, as xl's domain death handling does.
    let reaper_run = run.clone();
    std::thread::spawn(move || reaper(&reaper_run));
    std::fs::write(run.ready(), b"").map_err(|e| e.to_string())?;
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if hv.exited() {
            eprintln!("supervisor: hv exited; the host is gone");
            break;
        }
        if xenstored.exited() {
            xenstored.restarts += 1;
            // Its state is written when it is stopped, not as it goes: one
            // that died has none to continue from (as with C xenstored, its
            // store is lost), and an older one would bring back the dead.
            eprintln!("supervisor: xenstored exited; restarting it with a fresh store");
            let _ = std::fs::remove_file(run.state());
            xenstored.start(run)?;
            wait_for("xenstored", Duration::from_secs(10), || xenstored_up(run))?;
            if let Ok(mut xs) = Client::connect(&run.xenstored()) {
                for (k, v) in [("name", "Domain-0"), ("domid", "0")] {
                    let _ = xs.write(Tx::NONE, &format!("/local/domain/0/{k}"), v.as_bytes());
                }
            }
        }
        if backend.exited() {
            backend.restarts += 1;
            eprintln!("supervisor: backend exited; restarting it");
            backend.start(run)?;
        }
    }
    backend.stop();
    xenstored.stop();
    hv.stop();
    let _ = std::fs::remove_file(run.ready());
    let _ = std::fs::remove_file(run.pid());
    Ok(())
}

/// Acts on guests whose domain died or shut down (on `@releaseDomain`),
/// as xl's per-domain process does, connecting again whenever xenstored
/// goes away.
fn reaper(run: &RunDir) {
    let Ok(hv) = SimDomain::attach_dom0(&run.hv()) else {
        return;
    };
    // Guests it restarted are its children: waited for as they go.
    let mut children = Vec::new();
    while !STOP.load(Ordering::Relaxed) {
        reap(run, &hv, &mut children);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn reap(run: &RunDir, hv: &SimDomain, children: &mut Vec<Child>) {
    let Ok(mut xs) = Client::connect(&run.xenstored()) else {
        return;
    };
    if xs.watch("@releaseDomain", "reaper").is_err() {
        return;
    }
    while xs.read_watch().is_ok() {
        children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        // The store first: a domain created between the two looks is
        // then in the hv's list, not taken for a dead one.
        let Ok(ids) = xs.directory(Tx::NONE, "/local/domain") else {
            continue;
        };
        let Ok(live) = hv.list_domains() else {
            continue;
        };
        for id in ids
            .iter()
            .filter_map(|i| i.parse::<u16>().ok())
            .filter(|&d| d != 0)
        {
            // A death it did not announce is a crash.
            let ended = match live.iter().find(|i| i.domid.0 == id && !i.dying) {
                None => Ended::Died,
                Some(i) => match i.shutdown {
                    Some(r) => Ended::Shutdown(r),
                    None => continue,
                },
            };
            // Its own connection may be gone; cleanup is what is left.
            let mut c = match Client::connect(&run.xenstored()) {
                Ok(c) => c,
                Err(_) => continue,
            };
            children.extend(after(run, hv, &mut c, id, ended));
        }
    }
}

/// How a guest's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// It shut itself down (`SCHEDOP_shutdown`), for this reason.
    Shutdown(platform::ShutdownReason),
    /// Its process died without being destroyed or shutting down: a
    /// crash.
    Died,
}

/// A guest's run ended without `destroy`. The action its configuration
/// (kept by `create`) names for the reason says what follows, as xl:
/// `on_poweroff` (default destroy), `on_reboot` (default restart),
/// `on_crash` for a crash or a death (default destroy), `on_watchdog`
/// (default destroy). `preserve` leaves the domain and its entries for
/// a look (`destroy` cleans up later); `restart`, `coredump-restart`
/// and `rename-restart` create it again (there is no core to dump; the
/// old one is gone, not renamed), a crashed one at most 3 times a
/// minute, as xl stops a guest that crashes at once, a rebooted one at
/// most 10 times; anything else
/// destroys it. A suspended guest is left as it is (nothing here saves
/// it); a soft reset is not built and destroys it.
fn after(run: &RunDir, hv: &SimDomain, xs: &mut Client, domid: u16, ended: Ended) -> Vec<Child> {
    use platform::ShutdownReason as R;
    use toolstack::config::OnEvent;
    if ended == Ended::Shutdown(R::Suspend) {
        return Vec::new();
    }
    // Its name and whether the toolstack is destroying it (then it is no
    // crash), in one look: a `destroy` that has removed the domain's
    // directory meanwhile has done the cleanup, and nothing follows.
    let home = format!("/local/domain/{domid}");
    let look = xenbus::paths::in_transaction(xs, |xs, t| {
        let name = match xs.read(t, &format!("{home}/name")) {
            Ok(v) => Some(String::from_utf8_lossy(&v).into_owned()),
            Err(ClientError::Xs(XsError::NoEnt)) => None,
            Err(e) => return Err(e),
        };
        let destroying = xs.read(t, &format!("{home}/destroying")).is_ok();
        let exists = xs.read(t, &home).is_ok();
        Ok((name, destroying, exists))
    });
    let Ok((name, destroying, true)) = look else {
        return Vec::new();
    };
    let kept = name.as_ref().and_then(|n| {
        ["config.cfg", "config.toml"].iter().find_map(|f| {
            let text = std::fs::read_to_string(run.domain_dir(n).join(f)).ok()?;
            toolstack::config::parse_file(f, &text).ok()
        })
    });
    let action = match (&kept, ended) {
        (Some(_), _) if destroying => OnEvent::Destroy,
        (Some(c), Ended::Shutdown(R::Poweroff)) => c.on_poweroff,
        (Some(c), Ended::Shutdown(R::Reboot)) => c.on_reboot,
        (Some(c), Ended::Shutdown(R::Watchdog)) => c.on_watchdog,
        (Some(c), Ended::Died | Ended::Shutdown(R::Crash)) => c.on_crash,
        _ => OnEvent::Destroy,
    };
    let crashed = matches!(ended, Ended::Died | Ended::Shutdown(R::Crash));
    if action == OnEvent::Preserve {
        return Vec::new();
    }
    let _ = dom::destroy(hv, xs, &domid.to_string(), Duration::from_millis(500));
    if let Some(n) = &name {
        remove_exports(run, n, domid);
    }
    let restart = matches!(
        action,
        OnEvent::Restart | OnEvent::CoredumpRestart | OnEvent::RenameRestart
    );
    let (Some(config), Some(name), true) = (kept, name, restart) else {
        return Vec::new();
    };
    let why = if crashed { "crashed" } else { "rebooted" };
    // As xl stops a guest that crashes at once; a guest that reboots at
    // once is stopped too, later, so that it cannot keep the reaper busy.
    let limit = if crashed { 3 } else { 10 };
    if !may_restart(run, &name, limit) {
        eprintln!("reaper: {name} {why} {limit} times within a minute; not starting it again");
        return Vec::new();
    }
    let mut spawner = Spawner::new(run, hv);
    match create_guest(hv, xs, &config, &mut spawner) {
        // As `create`: its devices connect, or it goes again.
        Ok(c) => match wait_connected(xs, &c, Duration::from_secs(10)) {
            Ok(()) => eprintln!("reaper: {name} {why}; started again as domain {}", c.domid),
            Err(e) => {
                let _ = dom::destroy(hv, xs, &c.domid.to_string(), Duration::from_secs(1));
                eprintln!("reaper: {name} {why}; started again, but {e}; destroyed");
            }
        },
        Err(e) => eprintln!("reaper: {name} {why}; starting it again failed: {e}"),
    }
    spawner.children
}

/// Whether a guest may be started again: not if it was `limit` times
/// within the last minute (the times are kept in its directory).
fn may_restart(run: &RunDir, name: &str, limit: usize) -> bool {
    let log = run.domain_dir(name).join("restarts");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut recent: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .filter(|&t| now.saturating_sub(t) < 60)
        .collect();
    if recent.len() >= limit {
        return false;
    }
    recent.push(now);
    let _ = std::fs::write(
        &log,
        recent.iter().map(|t| format!("{t}\n")).collect::<String>(),
    );
    true
}

/// Keeps a guest's configuration for what follows its shutdown or crash.
fn keep_config(run: &RunDir, config: &toolstack::config::DomainConfig, text: &str, toml: bool) {
    let dir = run.domain_dir(&config.name);
    let _ = std::fs::create_dir_all(&dir);
    let (keep, other) = if toml {
        ("config.toml", "config.cfg")
    } else {
        ("config.cfg", "config.toml")
    };
    let _ = std::fs::remove_file(dir.join(other));
    let _ = std::fs::write(dir.join(keep), text);
}

/// Starts guests as `dom0kit guest` processes.
pub(crate) struct Spawner {
    run: RunDir,
    /// The processes started (for the caller to reap, if it waits).
    pub(crate) children: Vec<Child>,
    /// The domains launched, by name.
    launched: Vec<(String, platform::DomId)>,
    /// The hypervisor, which tells the uid of a guest to confine.
    hv: SimDomain,
}

impl Spawner {
    /// Guests of the host in `run`, whose hypervisor `hv` is.
    pub(crate) fn new(run: &RunDir, hv: &SimDomain) -> Spawner {
        Spawner {
            run: run.clone(),
            children: Vec::new(),
            launched: Vec::new(),
            hv: hv.clone(),
        }
    }
}

impl Launch for Spawner {
    fn launch(&mut self, name: &str, domain: &NewDomain) -> Result<RingInfo, String> {
        let dir = self.run.domain_dir(name);
        // Its own, not the name's: two creates of one name may both launch
        // before one of them gets the name (see `create_guest`).
        let export = self.run.export_dir_of(name, domain.domid);
        let _ = std::fs::remove_dir_all(&export);
        std::fs::create_dir_all(&export).map_err(|e| e.to_string())?;
        self.launched.push((name.to_string(), domain.domid));
        // dom0's alone, above the guest's own directory: its kept
        // configuration and log are no business of any guest's.
        for d in [self.run.0.join("domains"), dir.clone()] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| e.to_string())?;
        }
        let log = open_guest_log(&dir, domain.domid.0).map_err(|e| format!("guest.log: {e}"))?;
        // `--hv` even when confined (the guest is handed its connection
        // then): it tells whose host a guest is, in `ps` too.
        let common = |c: &mut Command| {
            c.arg("guest")
                .arg("--hv")
                .arg(self.run.hv())
                .env("DOM0KIT_TOKEN", &domain.token)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log);
        };
        let mut child = if let Some(id) = self.hv.guest_id(domain.domid) {
            // Its own uid, in its own directory (which it may not be able
            // to reach by path: it is put there).
            std::os::unix::fs::chown(&export, Some(id), Some(id)).map_err(|e| e.to_string())?;
            std::fs::set_permissions(&export, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| e.to_string())?;
            let jail = sim::confine::Jail::new(id, &self.run.hv(), &exe()?, &export)
                .map_err(|e| format!("confining it: {e}"))?;
            // A session of its own, so a group of its own too.
            jail.spawn(|c| {
                common(c);
                c.arg("--export-dir").arg(".");
            })
        } else if sim::confine::available() {
            // We could confine it, the hypervisor (not root?) does not say
            // how: not as root, unconfined.
            return Err("the hypervisor gives no uid to confine the guest as".into());
        } else {
            let mut c = Command::new(exe()?);
            common(&mut c);
            c.arg("--export-dir").arg(&export).process_group(0).spawn()
        }
        .map_err(|e| e.to_string())?;
        let out = child.stdout.take().ok_or("no stdout")?;
        // One line, within a time limit: a guest that hangs is not waited for.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            // A line, not whatever the guest cares to write.
            let _ = BufReader::new(out.take(256)).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        let parsed = line
            .trim()
            .strip_prefix("xenstore ")
            .and_then(|r| r.split_once(' '))
            .and_then(|(g, p)| {
                Some(RingInfo {
                    gfn: g.parse().ok()?,
                    port: p.parse().ok()?,
                })
            });
        self.children.push(child);
        parsed.ok_or_else(|| {
            let log = std::fs::read_to_string(dir.join("guest.log")).unwrap_or_default();
            let ours = launch_log(&log, domain.domid.0);
            format!("it did not report its xenstore ring: {ours}")
        })
    }
}

/// A guest's log, `domains/<name>/guest.log`: appended to, each launch
/// under a header line of its own, so that two launches of one name at
/// once (see `create_guest`) keep each other's; moved to `guest.log.1`
/// when it has grown past 1 MiB.
fn open_guest_log(dir: &Path, domid: u16) -> std::io::Result<std::fs::File> {
    let path = dir.join("guest.log");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > 1 << 20) {
        std::fs::rename(&path, dir.join("guest.log.1"))?;
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    log.write_all(launch_header(domid).as_bytes())?;
    Ok(log)
}

/// How every launch's header in `guest.log` begins.
const LAUNCH_HEADER: &str = "== dom0kit: domain ";

fn launch_header(domid: u16) -> String {
    format!("{LAUNCH_HEADER}{domid} starts\n")
}

/// What the launch of domain `domid` wrote in `log` (its header's lines,
/// up to the next launch's header; others' lines in between included).
fn launch_log(log: &str, domid: u16) -> &str {
    let header = launch_header(domid);
    let Some(at) = log.rfind(&header) else {
        return "";
    };
    let ours = &log[at + header.len()..];
    match ours.find(LAUNCH_HEADER) {
        Some(end) => &ours[..end],
        None => ours,
    }
}

fn connect(run: &RunDir) -> Result<(SimDomain, Client), String> {
    if supervisor(run).is_none() {
        return Err(format!(
            "no host runs in {} (start one with dom0kit up)",
            run.0.display()
        ));
    }
    let hv = SimDomain::attach_dom0(&run.hv()).map_err(|e| format!("hv: {e}"))?;
    let xs = Client::connect(&run.xenstored()).map_err(|e| format!("xenstored: {e}"))?;
    Ok((hv, xs))
}

/// Waits until every device of `created` is `Connected` at both ends.
fn wait_connected<S: Read + Write>(
    xs: &mut Client<S>,
    created: &dom::Created,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    for d in &created.devices {
        loop {
            let (b, f) = (d.backend_state(xs), d.frontend_state(xs));
            if (b, f) == (State::Connected, State::Connected) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} {} did not connect: backend {b}, frontend {f}",
                    d.kind, d.devid
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

/// `dom0kit create FILE`.
pub(crate) fn create(h: &HostArgs) -> Result<(), String> {
    let [file] = &h.rest[..] else {
        return Err("usage: dom0kit create FILE".into());
    };
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let config = toolstack::config::parse_file(file, &text).map_err(|e| format!("{file}: {e}"))?;
    check_targets(&config)?;
    refuse_unbuilt(&config)?;
    let (hv, mut xs) = connect(&h.run)?;
    let mut spawner = Spawner::new(&h.run, &hv);
    let c =
        create_guest(&hv, &mut xs, &config, &mut spawner).map_err(|e| format!("create: {e}"))?;
    // Not before: a refused duplicate must not overwrite the running
    // guest's.
    keep_config(&h.run, &config, &text, file.ends_with(".toml"));
    if let Err(e) = wait_connected(&mut xs, &c, Duration::from_secs(10)) {
        // As xl does when a device's hotplug fails: the domain goes.
        let _ = dom::destroy(&hv, &mut xs, &c.domid.to_string(), Duration::from_secs(1));
        return Err(format!("create: {e}; domain {} destroyed", config.name));
    }
    println!("created domain {} (id {})", config.name, c.domid);
    Ok(())
}

/// Refuses devices that are parsed but not built yet, rather than create a
/// guest without them.
fn refuse_unbuilt(config: &toolstack::config::DomainConfig) -> Result<(), String> {
    if !config.vifs.is_empty() {
        return Err("vif: network devices are not built yet (netback is a later issue)".into());
    }
    if !config.pcis.is_empty() {
        return Err("pci: PCI passthrough is not built yet (pciback is a later issue)".into());
    }
    Ok(())
}

/// Refuses disks whose image is not there (before anything is created).
fn check_targets(config: &toolstack::config::DomainConfig) -> Result<(), String> {
    for (i, d) in config.disks.iter().enumerate() {
        if let Some(t) = &d.target {
            check_target(t).map_err(|e| format!("disk[{i}]: {e}"))?;
        }
    }
    Ok(())
}

/// A disk's target is an image that is there, or an NBD target that
/// parses (its server is reached when the backend connects).
fn check_target(t: &str) -> Result<(), String> {
    match blk::remote::Target::parse(t) {
        Some(r) => r.map(drop).map_err(|e| format!("target {t:?}: {e}")),
        None if Path::new(t).exists() => Ok(()),
        None => Err(format!("target {t:?} does not exist")),
    }
}

/// `dom0kit list`.
pub(crate) fn list(h: &HostArgs) -> Result<(), String> {
    let (hv, mut xs) = connect(&h.run)?;
    let rows = dom::list(&hv, &mut xs).map_err(|e| format!("list: {e}"))?;
    print!("{}", dom::format_list(&rows));
    Ok(())
}

/// `dom0kit destroy NAME|ID`.
pub(crate) fn destroy(h: &HostArgs) -> Result<(), String> {
    let [name] = &h.rest[..] else {
        return Err("usage: dom0kit destroy NAME|ID".into());
    };
    let (hv, mut xs) = connect(&h.run)?;
    // Its name, for its exports (NAME or ID may be given).
    let named = dom::find(&mut xs, name).ok().flatten().and_then(|id| {
        let n = xs
            .read(Tx::NONE, &format!("/local/domain/{id}/name"))
            .ok()?;
        Some((String::from_utf8(n).ok()?, id))
    });
    dom::destroy(&hv, &mut xs, name, Duration::from_secs(5))
        .map_err(|e| format!("destroy: {e}"))?;
    if let Some((n, id)) = named {
        remove_exports(&h.run, &n, id);
    }
    Ok(())
}

/// `dom0kit shutdown|reboot [-w] NAME|ID`, as xl: the guest is asked
/// (`control/shutdown`); with `-w`, it waits (without a limit, as xl)
/// until that domain has shut down or is gone. What follows is the
/// supervisor's, by the guest's `on_poweroff`/`on_reboot`.
pub(crate) fn shutdown(h: &HostArgs, how: dom::ShutdownRequest) -> Result<(), String> {
    let cmd = how_name(how);
    let (wait, name) = match &h.rest[..] {
        [w, name] if w == "-w" => (true, name),
        [name] if !name.starts_with('-') => (false, name),
        _ => return Err(format!("usage: dom0kit {cmd} [-w] NAME|ID")),
    };
    let (hv, mut xs) = connect(&h.run)?;
    let domid = dom::request_shutdown(&mut xs, name, how).map_err(|e| format!("{cmd}: {e}"))?;
    if !wait {
        return Ok(());
    }
    loop {
        let list = hv.list_domains().map_err(|e| format!("{cmd}: {e}"))?;
        if !list
            .iter()
            .any(|i| i.domid.0 == domid && !i.dying && i.shutdown.is_none())
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn how_name(how: dom::ShutdownRequest) -> &'static str {
    match how {
        dom::ShutdownRequest::Poweroff => "shutdown",
        dom::ShutdownRequest::Reboot => "reboot",
    }
}

/// Removes destroyed domain `domid`'s export directory (guest `name`'s)
/// and its NBD sockets (a guest removes each socket when its device goes,
/// but may be gone itself before it could), and the name's link if it is
/// to that directory: another domain may have the name by now.
fn remove_exports(run: &RunDir, name: &str, domid: u16) {
    let own = format!("export.{domid}");
    let link = run.export_dir(name);
    if std::fs::read_link(&link).is_ok_and(|t| t.as_os_str() == own.as_str()) {
        let _ = std::fs::remove_file(&link);
    }
    // Not followed, should the guest have left links in it.
    let _ = std::fs::remove_dir_all(run.domain_dir(name).join(own));
}

/// `dom::create`, and then, the name being this domain's, its export
/// directory published as `domains/<name>/export`.
fn create_guest(
    hv: &SimDomain,
    xs: &mut Client,
    config: &toolstack::config::DomainConfig,
    spawner: &mut Spawner,
) -> Result<dom::Created, dom::DomainError> {
    let before = spawner.launched.len();
    let c = match dom::create(hv, xs, config, spawner) {
        Ok(c) => c,
        Err(e) => {
            // What it launched is destroyed again (a lost race for the
            // name, say): so is the directory it made.
            for (name, domid) in spawner.launched.drain(before..) {
                remove_exports(&spawner.run, &name, domid.0);
            }
            return Err(e);
        }
    };
    let run = &spawner.run;
    let target = format!("export.{}", c.domid);
    let tmp = run.domain_dir(&config.name).join(format!("{target}.link"));
    let _ = std::fs::remove_file(&tmp);
    // A new link renamed over the old one: never a moment without one.
    let published = std::os::unix::fs::symlink(&target, &tmp)
        .and_then(|()| std::fs::rename(&tmp, run.export_dir(&config.name)));
    if let Err(e) = published {
        eprintln!(
            "{}: its export directory is not published: {e}",
            config.name
        );
    }
    Ok(c)
}

/// `dom0kit block-attach DOMAIN DISKSPEC`.
pub(crate) fn block_attach(h: &HostArgs) -> Result<(), String> {
    let [name, spec] = &h.rest[..] else {
        return Err("usage: dom0kit block-attach DOMAIN DISKSPEC".into());
    };
    let disk = toolstack::disk::parse(spec).map_err(|e| format!("block-attach: {spec}: {e}"))?;
    if let Some(t) = &disk.target {
        check_target(t).map_err(|e| format!("block-attach: {e}"))?;
    }
    let (_, mut xs) = connect(&h.run)?;
    let domid = dom::find(&mut xs, name)
        .map_err(|e| e.to_string())?
        .filter(|&d| d != 0)
        .ok_or_else(|| format!("block-attach: no domain {name:?}"))?;
    let dev = dom::attach_disk(&mut xs, domid, &disk).map_err(|e| format!("block-attach: {e}"))?;
    let created = dom::Created {
        domid,
        uuid: String::new(),
        devices: vec![dev.clone()],
    };
    if let Err(e) = wait_connected(&mut xs, &created, Duration::from_secs(10)) {
        let _ = dom::detach(&mut xs, &dev, Duration::from_secs(1));
        return Err(format!("block-attach: {e}; the disk was taken away again"));
    }
    Ok(())
}

/// `dom0kit block-detach DOMAIN VDEV`.
pub(crate) fn block_detach(h: &HostArgs) -> Result<(), String> {
    let [name, vdev] = &h.rest[..] else {
        return Err("usage: dom0kit block-detach DOMAIN VDEV".into());
    };
    let devid = toolstack::disk::vbd_devid(vdev)
        .or_else(|| vdev.parse().ok())
        .ok_or_else(|| format!("block-detach: {vdev:?} is not a vdev"))?;
    let (_, mut xs) = connect(&h.run)?;
    let domid = dom::find(&mut xs, name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("block-detach: no domain {name:?}"))?;
    let dev = dom::devices_of(&mut xs, domid)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|d| d.kind == "vbd" && d.devid == devid)
        .ok_or_else(|| format!("block-detach: {name} has no {vdev}"))?;
    dom::detach(&mut xs, &dev, Duration::from_secs(5)).map_err(|e| format!("block-detach: {e}"))?;
    Ok(())
}

/// `dom0kit down`: destroys the guests, then stops the host.
pub(crate) fn down(h: &HostArgs) -> Result<(), String> {
    let Some(pid) = supervisor(&h.run) else {
        return Err(format!("down: no host runs in {}", h.run.0.display()));
    };
    if let Ok((hv, mut xs)) = connect(&h.run) {
        for row in dom::list(&hv, &mut xs).unwrap_or_default() {
            if row.domid != 0 {
                let _ = dom::destroy(&hv, &mut xs, &row.domid.to_string(), Duration::from_secs(2));
            }
        }
    }
    // SAFETY: signalling the supervisor we started (its pid file).
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    wait_for("the host to stop", Duration::from_secs(15), || {
        supervisor(&h.run).is_none()
    })?;
    println!("dom0kit: host in {} is down", h.run.0.display());
    Ok(())
}

/// `dom0kit status`.
pub(crate) fn status(h: &HostArgs) -> Result<(), String> {
    match supervisor(&h.run) {
        None => {
            println!("no host runs in {}", h.run.0.display());
            Err(String::new())
        }
        Some(pid) => {
            println!("host in {} (supervisor pid {pid})", h.run.0.display());
            let hv = SimDomain::attach_dom0(&h.run.hv()).is_ok();
            let xs = xenstored_up(&h.run);
            let be = h.run.at("backend.ready").exists();
            for (name, ok) in [("hv", hv), ("xenstored", xs), ("backend", be)] {
                println!(
                    "  {name:<10} {}",
                    if ok { "running" } else { "not running" }
                );
            }
            if hv && xs {
                list(h)?;
            }
            Ok(())
        }
    }
}

/// The nodes below `path`, one per line with value and permissions.
fn tree<S: Read + Write>(
    xs: &mut Client<S>,
    path: &str,
    depth: usize,
    out: &mut String,
) -> Result<(), ClientError> {
    let value = xs.read(Tx::NONE, path)?;
    let perms = xs.get_perms(Tx::NONE, path)?;
    let perms: Vec<String> = perms
        .to_payload()
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let name = path.rsplit('/').next().unwrap_or(path);
    out.push_str(&format!(
        "{:indent$}{name} = {:?}  ({})\n",
        "",
        String::from_utf8_lossy(&value),
        perms.join(","),
        indent = depth * 2
    ));
    let children = match xs.directory(Tx::NONE, path) {
        Ok(c) => c,
        Err(ClientError::Xs(XsError::NoEnt)) => Vec::new(),
        Err(e) => return Err(e),
    };
    for c in children {
        tree(xs, &format!("{path}/{c}"), depth + 1, out)?;
    }
    Ok(())
}

/// A socket a guest serves in its export directory, held open without
/// following a link the guest may have put in its place, and named for
/// connecting through `/proc` (ours, so for a child of ours too): what
/// root connects to is the guest's socket, not a host daemon's.
struct GuestSocket {
    _held: std::fs::File,
    path: PathBuf,
}

impl GuestSocket {
    fn open(at: &Path) -> std::io::Result<GuestSocket> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
        let held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(at)?;
        // The guest's own socket: not a link, nor a hard link to someone
        // else's (which would be theirs, or have another name too).
        let it = held.metadata()?;
        let dir = std::fs::metadata(at.parent().unwrap_or(Path::new(".")))?;
        if !it.file_type().is_socket() || it.nlink() != 1 || it.uid() != dir.uid() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not the guest's own socket",
            ));
        }
        let path = format!("/proc/{}/fd/{}", std::process::id(), held.as_raw_fd()).into();
        Ok(GuestSocket { _held: held, path })
    }
}

/// The demo's I/O: through the guest's NBD export (blkfront, the ring,
/// blkback, the image file), 8 MiB written in 256 KiB requests, flushed,
/// read back and compared, and the image file checked too.
fn disk_io(socket: &Path, image: &Path) -> Result<(), String> {
    let e = |e: std::io::Error| format!("disk I/O through {}: {e}", socket.display());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let held = GuestSocket::open(socket).map_err(e)?;
    let mut nbd = blk::remote::NbdClient::connect(&held.path, "xvda").map_err(e)?;
    let total = 8usize << 20;
    let chunk = 256usize << 10;
    let data: Vec<u8> = (0..total)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1])
        .collect();
    let t = Instant::now();
    for (i, c) in data.chunks(chunk).enumerate() {
        nbd.write((i * chunk) as u64, c).map_err(e)?;
    }
    nbd.flush().map_err(e)?;
    let wrote = t.elapsed();
    let t = Instant::now();
    let mut back = vec![0u8; total];
    for (i, c) in back.chunks_mut(chunk).enumerate() {
        nbd.read((i * chunk) as u64, c).map_err(e)?;
    }
    let read = t.elapsed();
    let _ = nbd.disconnect();
    let on_disk = std::fs::read(image).map_err(|x| x.to_string())?;
    let verified = back == data && on_disk.get(..total) == Some(&data[..]);
    let mib_s = |d: Duration| (total as f64 / (1 << 20) as f64) / d.as_secs_f64();
    println!(
        "  through its NBD export ({}): wrote 8 MiB and flushed at {:.0} MiB/s, read it back at {:.0} MiB/s: {}",
        socket.display(),
        mib_s(wrote),
        mib_s(read),
        if verified { "verified, and in the image file" } else { "MISMATCH" }
    );
    if !verified {
        return Err("demo: the data read back is not what was written".into());
    }
    Ok(())
}

/// `dom0kit demo`: a host in a private directory, a guest with a disk,
/// what happened, and everything torn down.
pub(crate) fn demo(args: &[String]) -> Result<(), String> {
    let started = Instant::now();
    if !args.is_empty() {
        return Err("usage: dom0kit demo".into());
    }
    let dir = std::env::temp_dir().join(format!(
        "dom0kit-demo-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("demo: {e}"))?;
    let result = demo_in(&dir, started);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn demo_in(dir: &Path, started: Instant) -> Result<(), String> {
    let h = HostArgs {
        run: RunDir(dir.join("run")),
        machine_memory: "512M".into(),
        rest: Vec::new(),
    };
    println!(
        "== dom0kit demo: a simulated Xen host in {}",
        h.run.0.display()
    );
    up(&h)?;
    let result = demo_guest(&h, dir);
    let stopped = down(&h);
    result?;
    stopped?;
    println!("== done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn demo_guest(h: &HostArgs, dir: &Path) -> Result<(), String> {
    let disk = dir.join("disk.img");
    let f = std::fs::File::create(&disk).map_err(|e| e.to_string())?;
    f.set_len(16 << 20).map_err(|e| e.to_string())?;
    let cfg = dir.join("demo.cfg");
    let text = format!(
        "# dom0kit demo guest, in xl.cfg syntax\nname = \"demo\"\nmemory = 64\ndisk = [ '{},raw,xvda,rw' ]\n",
        disk.display()
    );
    std::fs::write(&cfg, &text).map_err(|e| e.to_string())?;
    println!("\n== config ({})\n{text}", cfg.display());
    let config = toolstack::config::parse_xl(&text).map_err(|e| e.to_string())?;
    let (hv, mut xs) = connect(&h.run)?;
    let mut spawner = Spawner::new(&h.run, &hv);
    let t = Instant::now();
    let c =
        create_guest(&hv, &mut xs, &config, &mut spawner).map_err(|e| format!("create: {e}"))?;
    let made = t.elapsed();
    wait_connected(&mut xs, &c, Duration::from_secs(10))?;
    let connected = t.elapsed();
    println!(
        "== created domain demo (id {}) in {:.1} ms; its disk Connected after {:.1} ms",
        c.domid,
        made.as_secs_f64() * 1e3,
        connected.as_secs_f64() * 1e3
    );
    println!("\n== dom0kit list");
    print!(
        "{}",
        dom::format_list(&dom::list(&hv, &mut xs).map_err(|e| e.to_string())?)
    );
    let mut out = String::new();
    for p in [
        format!("/local/domain/{}", c.domid),
        format!("/vm/{}", c.uuid),
    ] {
        tree(&mut xs, &p, 0, &mut out).map_err(|e| e.to_string())?;
    }
    println!("\n== xenstore: the guest's directories\n{out}");
    let mut out = String::new();
    for d in &c.devices {
        tree(&mut xs, &d.backend_dir(), 0, &mut out).map_err(|e| e.to_string())?;
    }
    println!("== xenstore: its disk's backend directory\n{out}");
    println!("== devices");
    for d in &c.devices {
        println!(
            "  {} {} (xvda): backend {}, frontend {}",
            d.kind,
            d.devid,
            d.backend_state(&mut xs),
            d.frontend_state(&mut xs)
        );
    }
    disk_io(&h.run.export_dir("demo").join("xvda.sock"), &disk)?;
    println!("\n== dom0kit destroy demo");
    dom::destroy(&hv, &mut xs, "demo", Duration::from_secs(5)).map_err(|e| e.to_string())?;
    for mut child in spawner.children.drain(..) {
        let _ = child.wait();
    }
    let left = xs
        .read(Tx::NONE, &format!("/local/domain/{}", c.domid))
        .is_ok();
    println!(
        "  domain {} gone; its xenstore directory {}",
        c.domid,
        if left {
            "is still there (a bug)"
        } else {
            "is gone"
        }
    );
    print!(
        "{}",
        dom::format_list(&dom::list(&hv, &mut xs).map_err(|e| e.to_string())?)
    );
    if left {
        return Err("demo: the guest's directory was left behind".into());
    }
    Ok(())
}

/// `dom0kit bench host`: creates guests one after another, each with a
/// disk, and times each from `create` until its disk is `Connected`, as
/// the number of running guests grows (LightVM keeps this flat).
pub(crate) fn bench(args: &[String]) -> Result<(), String> {
    let mut guests = 50usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--guests" => {
                guests = crate::value(&mut it, a)?
                    .parse()
                    .map_err(|_| "bench host: bad --guests")?
            }
            _ => return Err(format!("bench host: unknown option {a}")),
        }
    }
    let dir = std::env::temp_dir().join(format!("dom0kit-bench-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let h = HostArgs {
        run: RunDir(dir.join("run")),
        machine_memory: format!("{}M", 64 + guests * 20),
        rest: Vec::new(),
    };
    up(&h)?;
    let result = bench_in(&h, &dir, guests);
    let stopped = down(&h);
    let _ = std::fs::remove_dir_all(&dir);
    let times = result?;
    stopped?;
    println!("{:>8} {:>14}", "guest", "to Connected");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (i, t) in times.iter().enumerate() {
        let n = i + 1;
        if n == 1 || n == 2 || n % 10 == 0 || n == times.len() {
            println!("{n:>8} {:>11.2} ms", ms(*t));
        }
    }
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        let mut sorted = times.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2];
        println!(
            "median {:.2} ms; last/first {:.2}; last/median {:.2} (flat is 1)",
            ms(median),
            ms(*last) / ms(*first),
            ms(*last) / ms(median)
        );
    }
    Ok(())
}

fn bench_in(h: &HostArgs, dir: &Path, guests: usize) -> Result<Vec<Duration>, String> {
    let (hv, mut xs) = connect(&h.run)?;
    let mut spawner = Spawner::new(&h.run, &hv);
    let mut times = Vec::new();
    for i in 0..guests {
        let disk = dir.join(format!("g{i}.img"));
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(1 << 20))
            .map_err(|e| e.to_string())?;
        let text = format!(
            "name = \"g{i}\"\nmemory = 16\ndisk = [ '{},raw,xvda,rw' ]\n",
            disk.display()
        );
        let config = toolstack::config::parse_xl(&text).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let c = create_guest(&hv, &mut xs, &config, &mut spawner)
            .map_err(|e| format!("create: {e}"))?;
        wait_connected(&mut xs, &c, Duration::from_secs(20))?;
        times.push(t.elapsed());
    }
    for i in 0..guests {
        dom::destroy(&hv, &mut xs, &format!("g{i}"), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
    }
    for mut c in spawner.children.drain(..) {
        let _ = c.wait();
    }
    Ok(times)
}

/// The workloads of `bench blk` on one NBD export: (4 KiB random reads
/// per second, 4 KiB random writes per second, 1 MiB sequential write
/// MiB/s, 1 MiB sequential read MiB/s), one request at a time.
fn nbd_workloads(socket: &Path, name: &str, size: u64) -> Result<[f64; 4], String> {
    let e = |e: std::io::Error| format!("{}: {e}", socket.display());
    let mut c = blk::remote::NbdClient::connect(socket, name).map_err(e)?;
    let blocks = size / 4096;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % blocks) * 4096
    };
    let mut buf = vec![0u8; 4096];
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        c.read(next(), &mut buf).map_err(e)?;
    }
    let rr = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        buf[0] = i as u8;
        c.write(next(), &buf).map_err(e)?;
    }
    c.flush().map_err(e)?;
    let rw = n as f64 / t.elapsed().as_secs_f64();
    let big = vec![0x3cu8; 1 << 20];
    let mib = size >> 20;
    let t = Instant::now();
    for i in 0..mib {
        c.write(i << 20, &big).map_err(e)?;
    }
    c.flush().map_err(e)?;
    let sw = mib as f64 / t.elapsed().as_secs_f64();
    let mut back = vec![0u8; 1 << 20];
    let t = Instant::now();
    for i in 0..mib {
        c.read(i << 20, &mut back).map_err(e)?;
    }
    let sr = mib as f64 / t.elapsed().as_secs_f64();
    let _ = c.disconnect();
    Ok([rr, rw, sw, sr])
}

/// Where fio does its I/O.
enum FioTarget<'a> {
    /// An NBD export, through fio's nbd engine.
    Nbd(String),
    /// The file itself, through io_uring (`O_DIRECT` if the flag says).
    File(&'a Path, bool),
}

/// The fio workloads of issue 6: name, fio's `--rw`, block size, unit.
const FIO_WORKLOADS: [(&str, &str, &str, &str); 4] = [
    ("4 KiB random read, QD32", "randread", "4k", "IOPS"),
    ("4 KiB random write, QD32", "randwrite", "4k", "IOPS"),
    ("1 MiB sequential read, QD32", "read", "1M", "MiB/s"),
    ("1 MiB sequential write, QD32", "write", "1M", "MiB/s"),
];

/// Runs the fio workloads against `target` (an image of `size` bytes),
/// `secs` seconds each: IOPS for the 4 KiB ones, MiB/s for the others.
fn fio_workloads(
    target: &FioTarget<'_>,
    size: u64,
    secs: u32,
    dir: &Path,
) -> Result<[f64; 4], String> {
    let mut out = [0.0; 4];
    for (i, (_, rw, bs, _)) in FIO_WORKLOADS.iter().enumerate() {
        let mut c = Command::new("fio");
        c.current_dir(dir).args([
            "--name=bench",
            &format!("--rw={rw}"),
            &format!("--bs={bs}"),
            "--iodepth=32",
            &format!("--size={size}"),
            "--time_based",
            &format!("--runtime={secs}"),
            "--output-format=terse",
            "--terse-version=3",
        ]);
        match target {
            FioTarget::Nbd(uri) => c.args(["--ioengine=nbd", &format!("--uri={uri}")]),
            FioTarget::File(f, direct) => c
                .arg("--ioengine=io_uring")
                .arg(format!("--direct={}", u8::from(*direct)))
                .arg(format!("--filename={}", f.display())),
        };
        let o = c
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("fio: {e}"))?;
        let text = String::from_utf8_lossy(&o.stdout);
        // Terse v3: read bandwidth (KiB/s) and IOPS are fields 7 and 8,
        // write's 48 and 49.
        let line = text
            .lines()
            .find(|l| l.starts_with("3;"))
            .ok_or_else(|| format!("fio {rw} {bs}: no result ({})", text.trim()))?;
        let f: Vec<&str> = line.split(';').collect();
        let num = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let (bw_kib, iops) = (num(6) + num(47), num(7) + num(48));
        if f.get(4).is_some_and(|e| *e != "0") {
            return Err(format!("fio {rw} {bs}: error {}", f[4]));
        }
        out[i] = if *bs == "4k" { iops } else { bw_kib / 1024.0 };
    }
    Ok(out)
}

/// `dom0kit bench blk [--fio-seconds N]`: the same workloads on the same
/// image, through the full PV path (NBD export → blkfront → ring →
/// blkback → file) and through qemu-nbd serving the file (the NBD hop
/// alone): our client one request at a time, then fio at queue depth 32
/// (with fio's io_uring on the file itself for reference).
pub(crate) fn bench_blk(args: &[String]) -> Result<(), String> {
    let mut secs: u32 = 5;
    // --direct: every path past the page cache (the guest's disk
    // direct-io-safe, qemu-nbd --cache=none, fio --direct=1).
    let mut o_direct = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--fio-seconds" => {
                secs = crate::value(&mut it, a)?
                    .parse()
                    .map_err(|_| "--fio-seconds takes a number")?;
            }
            "--direct" => o_direct = true,
            _ => return Err("usage: dom0kit bench blk [--fio-seconds N] [--direct]".into()),
        }
    }
    // fio with its nbd engine (built with libnbd).
    let fio = Command::new("fio")
        .arg("--enghelp=nbd")
        .output()
        .is_ok_and(|o| o.status.success());
    let dir = std::env::temp_dir().join(format!("dom0kit-bench-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let image = dir.join("disk.img");
    let size: u64 = 128 << 20;
    // Data, not a hole: every path reads the same cached bytes.
    {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut f = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        for _ in 0..size >> 20 {
            std::io::Write::write_all(&mut f, &chunk).map_err(|e| e.to_string())?;
        }
    }
    let h = HostArgs {
        run: RunDir(dir.join("run")),
        machine_memory: "512M".into(),
        rest: Vec::new(),
    };
    up(&h)?;
    let pv = (|| {
        let (hv, mut xs) = connect(&h.run)?;
        let text = format!(
            "name = \"bench\"\nmemory = 32\ndisk = [ '{},raw,xvda,rw{}' ]\n",
            image.display(),
            if o_direct { ",direct-io-safe" } else { "" }
        );
        let config = toolstack::config::parse_xl(&text).map_err(|e| e.to_string())?;
        let mut spawner = Spawner::new(&h.run, &hv);
        let c = create_guest(&hv, &mut xs, &config, &mut spawner).map_err(|e| e.to_string())?;
        let sock = h.run.export_dir("bench").join("xvda.sock");
        // Whatever fails from here on, the guest is destroyed below.
        let r = wait_connected(&mut xs, &c, Duration::from_secs(10))
            .and_then(|()| wait_for("the export", Duration::from_secs(5), || sock.exists()))
            .and_then(|()| GuestSocket::open(&sock).map_err(|e| format!("{}: {e}", sock.display())))
            .and_then(|held| {
                let one = nbd_workloads(&held.path, "xvda", size)?;
                let uri = format!("nbd+unix:///xvda?socket={}", held.path.display());
                let deep = if fio {
                    Some(fio_workloads(&FioTarget::Nbd(uri), size, secs, &dir)?)
                } else {
                    None
                };
                Ok((one, deep))
            });
        let _ = dom::destroy(&hv, &mut xs, "bench", Duration::from_secs(5));
        for mut ch in spawner.children.drain(..) {
            let _ = ch.wait();
        }
        r
    })();
    let _ = down(&h);
    let (pv, pv_fio) = pv?;
    let sock = dir.join("qemu-nbd.sock");
    let mut q = Command::new("qemu-nbd")
        .args(["-f", "raw", "-x", "xvda", "--persistent"])
        .arg(if o_direct {
            "--cache=none"
        } else {
            "--cache=writeback"
        })
        .arg("-k")
        .arg(&sock)
        .arg(&image)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("qemu-nbd (qemu-utils): {e}"))?;
    let hop = wait_for("qemu-nbd", Duration::from_secs(5), || sock.exists()).and_then(|()| {
        let one = nbd_workloads(&sock, "xvda", size)?;
        let uri = format!("nbd+unix:///xvda?socket={}", sock.display());
        let deep = if fio {
            Some(fio_workloads(&FioTarget::Nbd(uri), size, secs, &dir)?)
        } else {
            None
        };
        Ok((one, deep))
    });
    let _ = q.kill();
    let _ = q.wait();
    let direct = if fio {
        Some(fio_workloads(
            &FioTarget::File(&image, o_direct),
            size,
            secs,
            &dir,
        ))
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&dir);
    let (hop, hop_fio) = hop?;
    let direct = direct.transpose()?;
    println!(
        "{:<44} {:>12} {:>14} {:>7}  goal",
        "benchmark (one NBD request at a time)", "PV path", "NBD hop alone", "ratio"
    );
    for (i, (name, unit, goal)) in [
        ("4 KiB random read", "IOPS", "≥ 0.8"),
        ("4 KiB random write", "IOPS", "≥ 0.8"),
        ("1 MiB sequential write", "MiB/s", "≥ 0.9"),
        ("1 MiB sequential read", "MiB/s", "≥ 0.9"),
    ]
    .iter()
    .enumerate()
    {
        println!(
            "{:<44} {:>12.0} {:>14.0} {:>7.2}  {goal} ({unit})",
            name,
            pv[i],
            hop[i],
            pv[i] / hop[i]
        );
    }
    match (pv_fio, hop_fio, direct) {
        (Some(pv), Some(hop), Some(direct)) => {
            println!(
                "\n{:<44} {:>12} {:>14} {:>14} {:>7}  goal",
                format!(
                    "fio, {secs} s each{}",
                    if o_direct { ", O_DIRECT" } else { "" }
                ),
                "PV path",
                "NBD hop alone",
                "io_uring file",
                "PV/hop"
            );
            for (i, (name, _, bs, unit)) in FIO_WORKLOADS.iter().enumerate() {
                let goal = if *bs == "4k" { 0.8 } else { 0.9 };
                let ratio = pv[i] / hop[i];
                let met = if ratio >= goal { "met" } else { "NOT MET" };
                println!(
                    "{:<44} {:>12.0} {:>14.0} {:>14.0} {:>7.2}  ≥ {goal} {met} ({unit})",
                    name, pv[i], hop[i], direct[i], ratio
                );
            }
        }
        _ => println!("\nfio with its nbd engine is not installed: its rows are left out"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{launch_log, open_guest_log, GuestSocket};
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;

    /// An empty directory of this test's own.
    fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dom0kit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn two_launches_of_one_name_keep_each_others_log() {
        let dir = fresh_dir("guest-log");
        let mut first = open_guest_log(&dir, 3).unwrap();
        first.write_all(b"three starts\n").unwrap();
        let mut second = open_guest_log(&dir, 4).unwrap();
        second.write_all(b"four fails\n").unwrap();
        first.write_all(b"three goes on\n").unwrap();
        let log = std::fs::read_to_string(dir.join("guest.log")).unwrap();
        assert!(log.contains("three starts") && log.contains("three goes on"));
        assert_eq!(launch_log(&log, 4), "four fails\nthree goes on\n");
        assert_eq!(launch_log(&log, 3), "three starts\n");
        assert_eq!(launch_log(&log, 5), "");
        // A log past 1 MiB starts again, the old one kept aside.
        first.write_all(&vec![b'x'; 1 << 20]).unwrap();
        drop(open_guest_log(&dir, 6).unwrap());
        assert!(std::fs::metadata(dir.join("guest.log.1")).unwrap().len() > 1 << 20);
        let log = std::fs::read_to_string(dir.join("guest.log")).unwrap();
        assert_eq!(log, "== dom0kit: domain 6 starts\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_guest_socket_is_reached_as_it_is_and_not_through_a_link() {
        let dir = fresh_dir("guest-socket");
        let listener = UnixListener::bind(dir.join("xvda.sock")).unwrap();
        // What a hostile guest would put in place of its export: a link or
        // a hard link to someone else's socket, or no socket at all.
        std::os::unix::fs::symlink(dir.join("xvda.sock"), dir.join("xvdb.sock")).unwrap();
        std::fs::write(dir.join("xvdc.sock"), b"").unwrap();
        std::fs::hard_link(dir.join("xvda.sock"), dir.join("xvdd.sock")).unwrap();
        for planted in ["xvdb.sock", "xvdc.sock", "xvdd.sock"] {
            let e = GuestSocket::open(&dir.join(planted)).map(drop).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{planted}");
        }

        std::fs::remove_file(dir.join("xvdd.sock")).unwrap();
        let held = GuestSocket::open(&dir.join("xvda.sock")).unwrap();
        // Named again meanwhile: the held one is still what we reach.
        std::fs::rename(dir.join("xvda.sock"), dir.join("moved.sock")).unwrap();
        let mut c = UnixStream::connect(&held.path).unwrap();
        c.write_all(b"x").unwrap();
        let mut byte = [0u8];
        listener.accept().unwrap().0.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
