//! A simulated host through the `dom0kit` command: `up`, `create`, `list`,
//! `destroy`, hotplug, crashes, `down`, and `demo`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dom0kit");

struct Host {
    dir: PathBuf,
}

impl Host {
    fn up(name: &str) -> Host {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("host-{name}"));
        let _ = Command::new(BIN)
            .args(["down", "--run-dir"])
            .arg(dir.join("run"))
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let h = Host { dir };
        let out = h.run(&["up", "--machine-memory", "1G"]);
        assert!(
            out.status.success(),
            "up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A host whose guests share dom0's uid says so.
        let said = String::from_utf8_lossy(&out.stderr).contains("cannot be confined here");
        assert_eq!(said, !sim::confine::available(), "up: {out:?}");
        h
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.arg(args[0])
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(&args[1..]);
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A config file for guest `name` with one disk.
    fn config(&self, name: &str) -> PathBuf {
        self.config_with(name, 4 << 20, "")
    }

    /// A guest `name` with one raw disk of `size` bytes (`<name>.img`),
    /// its DISKSPEC ending in `extra` (`,direct-io-safe`, say).
    fn config_with(&self, name: &str, size: u64, extra: &str) -> PathBuf {
        let disk = self.dir.join(format!("{name}.img"));
        std::fs::File::create(&disk).unwrap().set_len(size).unwrap();
        let cfg = self.dir.join(format!("{name}.cfg"));
        std::fs::write(
            &cfg,
            format!(
                "name = \"{name}\"\nmemory = 16\ndisk = [ '{},raw,xvda,rw{extra}' ]\n",
                disk.display()
            ),
        )
        .unwrap();
        cfg
    }

    /// `dom0kit xenstore ARGS` on this host: its standard output.
    fn xenstore(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("xenstore")
            .args(args)
            .env("XENSTORED_PATH", self.run_dir().join("xenstored.sock"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    fn xenstore_ls(&self) -> String {
        self.xenstore(&["ls", "/"])
    }

    /// The NBD URL of guest `name`'s `xvda`, once its export is there.
    fn export(&self, name: &str) -> (PathBuf, String) {
        let sock = self
            .run_dir()
            .join(format!("domains/{name}/export/xvda.sock"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sock.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let url = format!("nbd+unix:///xvda?socket={}", sock.display());
        (sock, url)
    }

    /// Waits up to 5 s for the hv to have every frame back
    /// (`before_frames` free) and for no guest process to be left; asserts
    /// both.
    fn assert_all_back(&self, before_frames: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while (self.free_frames() != before_frames || !self.processes().is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(self.free_frames(), before_frames, "every frame came back");
        assert!(self.processes().is_empty(), "{:?}", self.processes());
    }

    fn free_frames(&self) -> u64 {
        let d = sim::SimDomain::attach_dom0(&self.run_dir().join("hv.sock")).unwrap();
        d.physinfo().unwrap().1
    }

    /// Event channels (ends of event pipes) the hv and the backend hold:
    /// each port is a write end in the hv, a read end in the process that
    /// bound it, and a write end in its peer's once it notified.
    fn eventfds(&self) -> usize {
        let me = self.run_dir().display().to_string();
        let mut n = 0;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let daemon = cmd.contains(" hv --run-dir ") || cmd.contains(" backend --hv ");
            if !(cmd.contains(&me) && daemon) {
                continue;
            }
            for fd in std::fs::read_dir(e.path().join("fd"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if std::fs::read_link(fd.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("pipe:"))
                {
                    n += 1;
                }
            }
        }
        n
    }

    /// Processes that run with this host's files (guests, daemons).
    fn processes(&self) -> Vec<String> {
        let me = self.run_dir().display().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(&me) && cmd.contains(" guest ") {
                    out.push(cmd);
                }
            }
        }
        out
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

/// The store once it is back to `want` (or what it is after 5 s): the
/// reaper works in the background.
fn settled_store(h: &Host, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = h.xenstore_ls();
        if s == want || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn create_list_destroy_round_trip() {
    let h = Host::up("round");
    let before_store = h.xenstore_ls();
    let before_frames = h.free_frames();
    let cfg = h.config("alpha");
    let out = h.ok(&["create", cfg.to_str().unwrap()]);
    assert!(out.contains("created domain alpha (id 1)"), "{out}");
    // Started by root, the guest runs as a uid of its own, its export
    // directory its own (`sim::confine`).
    if sim::confine::available() {
        let hv = sim::SimDomain::attach_dom0(&h.run_dir().join("hv.sock")).unwrap();
        let id = hv.guest_id(abi::DomId(1)).unwrap().to_string();
        let pid = pid_of_guest(&h.run_dir());
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        for key in ["Uid:", "Gid:"] {
            let ids: Vec<&str> = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap()
                .split_whitespace()
                .collect();
            assert_eq!(ids, [id.as_str(); 4], "{key} of the guest");
        }
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        let export = h.run_dir().join("domains/alpha/export");
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(export).unwrap());
        assert_eq!(owner.to_string(), id);
        // Nor can it reach dom0's sockets and logs, whatever the umask.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(h.run_dir()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700, "the run directory is root's");
    }
    // Still there a while later (its watchdog once took a refusal of the
    // hypervisor for the hypervisor being gone).
    std::thread::sleep(Duration::from_millis(1200));
    let list = h.ok(&["list"]);
    assert!(list.lines().next().unwrap().starts_with("Name"), "{list}");
    assert!(list.contains("Domain-0"), "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("alpha") && l.contains(" 1 ") && l.contains(" 16 ")),
        "{list}"
    );
    // A second guest of the same name is refused.
    let again = h.run(&["create", cfg.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    // Hotplug a second disk, then take it away.
    let extra = h.dir.join("extra.img");
    std::fs::File::create(&extra)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    h.ok(&[
        "block-attach",
        "alpha",
        &format!("{},raw,xvdb,rw", extra.display()),
    ]);
    let store = h.xenstore_ls();
    assert!(store.contains("51728 = \"\""), "{store}");
    h.ok(&["block-detach", "alpha", "xvdb"]);
    assert!(!h.xenstore_ls().contains("51728"), "xvdb left behind");
    h.ok(&["destroy", "alpha"]);
    let list = h.ok(&["list"]);
    assert!(!list.contains("alpha"), "{list}");
    assert_eq!(
        settled_store(&h, &before_store),
        before_store,
        "xenstore is as it was"
    );
    // The hv kills the guest and frees its memory as the process goes.
    h.assert_all_back(before_frames);
    let gone = h.run(&["destroy", "alpha"]);
    assert!(!gone.status.success());
}

#[test]
fn ten_guests_at_once_leave_nothing_behind() {
    let h = Host::up("ten");
    let before_store = h.xenstore_ls();
    let before_frames = h.free_frames();
    let before_eventfds = h.eventfds();
    let cfgs: Vec<PathBuf> = (0..10).map(|i| h.config(&format!("g{i}"))).collect();
    std::thread::scope(|s| {
        for c in &cfgs {
            s.spawn(|| h.ok(&["create", c.to_str().unwrap()]));
        }
    });
    let list = h.ok(&["list"]);
    assert_eq!(list.lines().count(), 12, "{list}");
    assert_eq!(h.processes().len(), 10);
    assert!(
        h.eventfds() >= before_eventfds + 20,
        "each guest's ports are counted"
    );
    std::thread::scope(|s| {
        for i in 0..10 {
            let h = &h;
            s.spawn(move || h.ok(&["destroy", &format!("g{i}")]));
        }
    });
    // A destroyed domain is listed as dying until the backend has let go
    // of its pages (as xl lists one): wait for the hv to reclaim them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.ok(&["list"]).lines().count() != 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(h.ok(&["list"]).lines().count(), 2, "{}", h.ok(&["list"]));
    assert_eq!(settled_store(&h, &before_store), before_store);
    h.assert_all_back(before_frames);
    assert_eq!(
        h.eventfds(),
        before_eventfds,
        "every event channel was closed"
    );
}

#[test]
fn a_guest_killed_with_sigkill_is_cleaned_up() {
    let h = Host::up("kill");
    let before_store = h.xenstore_ls();
    let cfg = h.config("victim");
    h.ok(&["create", cfg.to_str().unwrap()]);
    let procs = h.processes();
    assert_eq!(procs.len(), 1);
    let pid = pid_of_guest(&h.run_dir());
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    // The reaper sees @releaseDomain and removes what is left.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.ok(&["list"]).contains("victim") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!h.ok(&["list"]).contains("victim"));
    assert_eq!(settled_store(&h, &before_store), before_store);
}

fn pid_of_guest(run: &Path) -> i32 {
    pid_of(run, " guest ")
}

/// The process of this host (by its run directory) whose command line
/// holds `what`.
fn pid_of(run: &Path, what: &str) -> i32 {
    let me = run.display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&me) && cmd.contains(what) {
                return e.file_name().to_str().unwrap().parse().unwrap();
            }
        }
    }
    panic!("no process with {what:?}");
}

#[test]
fn a_bad_config_is_refused_and_creates_nothing() {
    let h = Host::up("bad");
    let before = h.xenstore_ls();
    for (text, want) in [
        ("memory = 16\n", "name: is missing"),
        (
            "name = \"x\"\ndisk = [ '/nonexistent/x.img' ]\n",
            "disk[0]: vdev is missing",
        ),
        (
            "name = \"x\"\ncolour = \"red\"\n",
            "line 2: colour: is not a known key",
        ),
        (
            "name = \"x\"\ndisk = [ '/nonexistent/x.img,,xvda' ]\n",
            "disk[0]: target \"/nonexistent/x.img\" does not exist",
        ),
    ] {
        let cfg = h.dir.join("bad.cfg");
        std::fs::write(&cfg, text).unwrap();
        let out = h.run(&["create", cfg.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{text:?}: {err}");
    }
    assert_eq!(h.xenstore_ls(), before);
    assert!(h.ok(&["list"]).lines().count() == 2);
}

#[test]
fn the_demo_runs_and_tells_what_happened() {
    let started = Instant::now();
    let out = Command::new(BIN).arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "host up in",
        "created domain demo (id 1)",
        "demo                                         1",
        "name = \"demo\"",
        "ring-page-order = \"2\"",
        "ring-ref3 = ",
        "max-ring-page-order = \"4\"",
        "feature-persistent = \"1\"",
        "multi-queue-max-queues = \"4\"",
        "multi-queue-num-queues = \"2\"",
        "queue-1 = ",
        "vbd 51712 (xvda): backend Connected, frontend Connected",
        "verified, and in the image file",
        "its xenstore directory is gone",
        "is down",
    ] {
        assert!(text.contains(want), "demo output lacks {want:?}:\n{text}");
    }
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn on_crash_restart_brings_a_crashed_guest_back_and_destroy_does_not() {
    let h = Host::up("restart");
    let cfg = h.config("phoenix");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("on_crash = \"restart\"\n");
    std::fs::write(&cfg, text).unwrap();
    h.ok(&["create", cfg.to_str().unwrap()]);
    let id = |h: &Host| {
        h.ok(&["list"])
            .lines()
            .find(|l| l.starts_with("phoenix"))
            .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
    };
    assert_eq!(id(&h).as_deref(), Some("1"));
    let pid = pid_of_guest(&h.run_dir());
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    // The reaper creates it again, as a new domain.
    let deadline = Instant::now() + Duration::from_secs(10);
    while id(&h).as_deref() != Some("2") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(id(&h).as_deref(), Some("2"), "{}", h.ok(&["list"]));
    // A destroy is no crash: it stays gone.
    h.ok(&["destroy", "phoenix"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(id(&h), None, "{}", h.ok(&["list"]));
}

/// Guest `name`'s row of `dom0kit list`: its id and state.
fn row(h: &Host, name: &str) -> Option<(String, String)> {
    h.ok(&["list"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].to_string(), f[4].to_string())
        })
}

/// Waits up to 10 s for `ok` of guest `name`'s row.
fn wait_row(h: &Host, name: &str, ok: impl Fn(&Option<(String, String)>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok(&row(h, name)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ok(&row(h, name)), "{}", h.ok(&["list"]));
}

#[test]
fn shutdown_and_reboot_do_what_on_poweroff_and_on_reboot_say() {
    let h = Host::up("shutdown");
    let before_store = h.xenstore_ls();
    let before_frames = h.free_frames();
    let cfg = h.config("calm");
    // on_poweroff's default, destroy: the guest closes its devices, shuts
    // down, and nothing of it is left.
    h.ok(&["create", cfg.to_str().unwrap()]);
    let store = h.xenstore_ls();
    assert!(store.contains("feature-poweroff = \"1\""), "{store}");
    h.ok(&["shutdown", "-w", "calm"]);
    wait_row(&h, "calm", Option::is_none);
    assert_eq!(settled_store(&h, &before_store), before_store);
    h.assert_all_back(before_frames);

    // on_reboot's default, restart: the same guest again, as a new
    // domain, its disk exported and working.
    h.ok(&["create", cfg.to_str().unwrap()]);
    let (first, _) = row(&h, "calm").unwrap();
    let (_, url) = h.export("calm");
    let (ok, text) = qemu_io("raw", &url, &["write -P 0x3e 0 64k", "flush"]);
    assert!(ok, "{text}");
    h.ok(&["reboot", "-w", "calm"]);
    wait_row(&h, "calm", |r| {
        r.as_ref().is_some_and(|(id, _)| *id != first)
    });
    let (_, url) = h.export("calm");
    let (ok, text) = qemu_io("raw", &url, &["read -P 0x3e 0 64k"]);
    assert!(ok, "{text}");
    assert_eq!(h.processes().len(), 1, "{:?}", h.processes());

    // preserve: it stays, shut down (xl's `s`), until destroyed.
    h.ok(&["destroy", "calm"]);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("on_poweroff = \"preserve\"\n");
    std::fs::write(&cfg, text).unwrap();
    h.ok(&["create", cfg.to_str().unwrap()]);
    h.ok(&["shutdown", "-w", "calm"]);
    wait_row(&h, "calm", |r| {
        r.as_ref().is_some_and(|(_, s)| s == "---s--")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(row(&h, "calm").unwrap().1, "---s--");
    h.ok(&["destroy", "calm"]);
    wait_row(&h, "calm", Option::is_none);
    assert_eq!(settled_store(&h, &before_store), before_store);
}

#[test]
fn devices_not_built_yet_are_refused_not_dropped() {
    let h = Host::up("vif");
    let cfg = h.dir.join("net.cfg");
    std::fs::write(&cfg, "name = \"net\"\nvif = [ 'bridge=xenbr0' ]\n").unwrap();
    let out = h.run(&["create", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vif: network devices are not built yet"));
    assert_eq!(h.ok(&["list"]).lines().count(), 2);
}

#[test]
fn a_guests_disk_is_an_nbd_export_that_qemu_io_verifies() {
    let h = Host::up("nbd");
    let cfg = h.config("disky");
    h.ok(&["create", cfg.to_str().unwrap()]);
    let (sock, url) = h.export("disky");
    let (ok, text) = qemu_io(
        "raw",
        &url,
        &["write -P 0x5c 8192 100k", "flush", "read -P 0x5c 8192 100k"],
    );
    assert!(ok, "{text}");
    // Through blkfront, the ring, blkback: in the image file.
    let image = std::fs::read(h.dir.join("disky.img")).unwrap();
    assert!(image[8192..8192 + 102400].iter().all(|&b| b == 0x5c));
    assert!(image[..8192].iter().all(|&b| b == 0));
    assert!(qemu_img_info(&url).contains("\"virtual-size\": 4194304"));
    h.ok(&["destroy", "disky"]);
    assert!(!sock.exists(), "the export goes with the device");
}

#[test]
fn nbdinfo_nbdcopy_and_fio_use_a_guests_disk() {
    let h = Host::up("nbdtools");
    let cfg = h.config("tools");
    h.ok(&["create", cfg.to_str().unwrap()]);
    let (_, url) = h.export("tools");
    nbd_tools(&h, &url);
    h.ok(&["destroy", "tools"]);
}

/// nbdinfo, nbdcopy in and out, and fio's nbd engine with crc32c
/// verification, against the 4 MiB export at `url`.
fn nbd_tools(h: &Host, url: &str) {
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd:?}: {text}");
        text
    };
    let info = run(Command::new("nbdinfo").arg(url));
    assert!(info.contains("export-size: 4194304"), "{info}");
    assert!(
        info.contains("can_flush: true") && info.contains("can_fua: true"),
        "{info}"
    );
    // nbdcopy a file in and out.
    let src = h.dir.join("src.raw");
    let data: Vec<u8> = (0..2 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    run(Command::new("nbdcopy").arg(&src).arg(url));
    let out = h.dir.join("out.raw");
    run(Command::new("nbdcopy").arg(url).arg(&out));
    assert_eq!(&std::fs::read(&out).unwrap()[..data.len()], &data[..]);
    // fio's nbd engine, random writes verified by crc32c.
    let fio = run(Command::new("fio").current_dir(&h.dir).args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={url}"),
        "--rw=randwrite",
        "--bs=4k",
        "--size=2M",
        "--iodepth=8",
        "--verify=crc32c",
        "--do_verify=1",
    ]));
    assert!(fio.contains("err= 0"), "{fio}");
}

#[test]
fn a_killed_backend_is_restarted_and_takes_its_devices_over() {
    let h = Host::up("backend-kill");
    let cfg = h.config("steady");
    h.ok(&["create", cfg.to_str().unwrap()]);
    let (_, url) = h.export("steady");
    let qemu_io = |cmds: &[&str]| qemu_io("raw", &url, cmds);
    let (ok, text) = qemu_io(&["write -P 0x42 0 64k", "flush"]);
    assert!(ok, "{text}");
    let ring_ref = |h: &Host| {
        let v = h.xenstore(&["read", "/local/domain/1/device/vbd/51712/queue-0/ring-ref0"]);
        v.trim().to_string()
    };
    let state = |h: &Host| {
        let v = h.xenstore(&["read", "/local/domain/0/backend/vbd/1/51712/state"]);
        v.trim().to_string()
    };
    let first_ring = ring_ref(&h);
    // SIGKILL the backend daemon; the supervisor starts another.
    let backend_pid = pid_of(&h.run_dir(), " backend --hv ").to_string();
    Command::new("kill")
        .args(["-KILL", &backend_pid])
        .status()
        .unwrap();
    // A request sent right away waits for the new connection: the new
    // backend probes the device again, the guest reconnects on a new ring
    // and sends it there; the export stays. What was flushed is there.
    let (ok, text) = qemu_io(&["read -P 0x42 0 64k"]);
    assert!(ok, "{text}");
    assert_ne!(
        ring_ref(&h),
        first_ring,
        "the guest did not publish a new ring"
    );
    assert_eq!(state(&h), "4");
    let (ok, text) = qemu_io(&[
        "write -P 0x43 64k 64k",
        "flush",
        "read -P 0x43 64k 64k",
        "read -P 0x42 0 64k",
    ]);
    assert!(ok, "{text}");
    let image = std::fs::read(h.dir.join("steady.img")).unwrap();
    assert!(image[65536..131072].iter().all(|&b| b == 0x43));
    h.ok(&["destroy", "steady"]);
}

#[test]
fn writes_in_flight_when_the_backend_is_killed_are_made_again_and_verify() {
    let h = Host::up("backend-crash");
    let cfg = h.config_with("busy", 32 << 20, "");
    let disk = h.dir.join("busy.img");
    h.ok(&["create", cfg.to_str().unwrap()]);
    let (_, url) = h.export("busy");
    // 24 MiB of sequential writes at 16 MiB/s, then every block read back
    // and checked: the backend dies in the middle of the writes.
    let fio = Command::new("fio")
        .current_dir(&h.dir)
        .args([
            "--name=crash",
            "--ioengine=nbd",
            &format!("--uri={url}"),
            "--rw=write",
            "--bs=64k",
            "--size=24M",
            "--iodepth=4",
            "--rate=16m",
            "--verify=crc32c",
            "--do_verify=1",
            "--fsync=16",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fio runs");
    std::thread::sleep(Duration::from_millis(500));
    let backend_pid = pid_of(&h.run_dir(), " backend --hv ");
    Command::new("kill")
        .args(["-KILL", &backend_pid.to_string()])
        .status()
        .unwrap();
    let out = fio.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("err= 0"), "{text}");
    // It was a restart, and the writes reached the image.
    assert_ne!(pid_of(&h.run_dir(), " backend --hv "), backend_pid);
    let image = std::fs::read(&disk).unwrap();
    assert!(image[(24 << 20) - 4096..24 << 20].iter().any(|&b| b != 0));
    h.ok(&["destroy", "busy"]);
}

/// Runs `qemu-io` with `cmds` on `image` (a file or an NBD URL): whether
/// every command succeeded, and what it printed.
fn qemu_io(format: &str, image: &str, cmds: &[&str]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", format]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c.arg(image).output().expect("qemu-io (qemu-utils) runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !text.contains("failed"), text)
}

/// `qemu-img info --output=json` of `image`.
fn qemu_img_info(image: &str) -> String {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", image])
        .output()
        .expect("qemu-img (qemu-utils) runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_nbd_processes(image: &Path) -> usize {
    let me = image.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("qemu-nbd") && c.contains(&me))
        .count()
}

#[test]
fn a_qcow2_image_is_served_through_qemu_nbd_behind_the_backend() {
    let h = Host::up("qcow2");
    let image = h.dir.join("disk.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("4M")
        .output()
        .expect("qemu-img (qemu-utils) runs");
    assert!(out.status.success(), "{out:?}");
    let cfg = h.dir.join("q.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"q\"\nmemory = 16\ndisk = [ 'format=qcow2, vdev=xvda, access=rw, target={}' ]\n",
            image.display()
        ),
    )
    .unwrap();
    h.ok(&["create", cfg.to_str().unwrap()]);
    let (_, url) = h.export("q");
    // The guest sees the virtual disk, not the qcow2 file.
    assert!(qemu_img_info(&url).contains("\"virtual-size\": 4194304"));
    // The tools of the raw test too (they write the disk's first 2 MiB).
    nbd_tools(&h, &url);
    let (ok, text) = qemu_io(
        "raw",
        &url,
        &["write -P 0x71 1M 200k", "flush", "read -P 0x71 1M 200k"],
    );
    assert!(ok, "{text}");
    assert_eq!(qemu_nbd_processes(&image), 1);
    // The backend dies: its helper goes with it (releasing the image's
    // lock), and the next backend's helper serves the disk.
    let backend_pid = pid_of(&h.run_dir(), " backend --hv ");
    Command::new("kill")
        .args(["-KILL", &backend_pid.to_string()])
        .status()
        .unwrap();
    let (ok, text) = qemu_io("raw", &url, &["read -P 0x71 1M 200k"]);
    assert!(ok, "{text}");
    assert_eq!(qemu_nbd_processes(&image), 1);
    h.ok(&["destroy", "q"]);
    // The helper goes with the device, and the data is in the image.
    assert_eq!(qemu_nbd_processes(&image), 0);
    let img = image.to_str().unwrap();
    let (ok, text) = qemu_io(
        "qcow2",
        img,
        // Past what the tools wrote (the first 2 MiB), nothing.
        &["read -P 0x71 1M 200k", "read -P 0 2M 2M"],
    );
    assert!(ok, "{text}");
    let check = Command::new("qemu-img")
        .args(["check", "-q", img])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
}

#[test]
fn a_disk_on_an_nbd_server_over_unix_and_tcp() {
    let h = Host::up("nbd-engine");
    let mut servers = Vec::new();
    let mut images = Vec::new();
    let mut targets = Vec::new();
    for (i, tcp) in [false, true].into_iter().enumerate() {
        let image = h.dir.join(format!("remote{i}.img"));
        std::fs::File::create(&image)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        let mut c = Command::new("qemu-nbd");
        c.args(["-f", "raw", "-x", "exp", "--persistent"]);
        let target = if tcp {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            c.args(["-b", "127.0.0.1", "-p", &port.to_string()]);
            format!("nbd://127.0.0.1:{port}/exp")
        } else {
            let sock = h.dir.join("remote.sock");
            c.arg(format!("--socket={}", sock.display()));
            format!("nbd+unix:///exp?socket={}", sock.display())
        };
        servers.push(c.arg(&image).spawn().expect("qemu-nbd runs"));
        images.push(image);
        targets.push(target);
    }
    // Both servers up before the guest's disks need them.
    let deadline = Instant::now() + Duration::from_secs(5);
    let up = |t: &str| {
        Command::new("qemu-img")
            .args(["info", t])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    while !(up(&targets[0]) && up(&targets[1])) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let cfg = h.dir.join("r.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"r\"\nmemory = 16\ndisk = [ 'vdev=xvda, target={}', 'vdev=xvdb, target={}' ]\n",
            targets[0], targets[1]
        ),
    )
    .unwrap();
    h.ok(&["create", cfg.to_str().unwrap()]);
    for (i, vdev) in ["xvda", "xvdb"].iter().enumerate() {
        let sock = h.run_dir().join(format!("domains/r/export/{vdev}.sock"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sock.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let url = format!("nbd+unix:///{vdev}?socket={}", sock.display());
        let pattern = format!("write -P 0x{:x} 4k 96k", 0x30 + i);
        let (ok, text) = qemu_io("raw", &url, &[&pattern, "flush"]);
        assert!(ok, "{vdev}: {text}");
    }
    h.ok(&["destroy", "r"]);
    for (i, image) in images.iter().enumerate() {
        let data = std::fs::read(image).unwrap();
        assert!(
            data[4096..4096 + 98304]
                .iter()
                .all(|&b| b == 0x30 + i as u8),
            "{}",
            image.display()
        );
        assert!(data[..4096].iter().all(|&b| b == 0));
    }
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    // A target that does not parse is refused at create, naming the disk.
    std::fs::write(
        &cfg,
        "name = \"bad\"\ndisk = [ 'vdev=xvda, target=nbd+unix:///exp' ]\n",
    )
    .unwrap();
    let out = h.run(&["create", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("disk[0]") && err.contains("socket="),
        "{err}"
    );
}

#[test]
fn a_discard_through_the_export_punches_a_hole_in_the_image() {
    use std::os::unix::fs::MetadataExt;
    let h = Host::up("discard");
    let cfg = h.config("trim");
    h.ok(&["create", cfg.to_str().unwrap()]);
    let be = "/local/domain/0/backend/vbd/1/51712";
    assert_eq!(
        h.xenstore(&["read", &format!("{be}/feature-discard")])
            .trim(),
        "1"
    );
    assert_eq!(
        h.xenstore(&["read", &format!("{be}/discard-secure")])
            .trim(),
        "0"
    );
    let (_, url) = h.export("trim");
    let info = Command::new("nbdinfo").arg(&url).output().unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("can_trim: true"));
    let image = h.dir.join("trim.img");
    let (ok, text) = qemu_io("raw", &url, &["write -P 0x66 0 2M", "flush"]);
    assert!(ok, "{text}");
    let full = std::fs::metadata(&image).unwrap().blocks();
    // qemu-io's discard is NBD_CMD_TRIM → BLKIF_OP_DISCARD → a hole.
    let (ok, text) = qemu_io(
        "raw",
        &url,
        &[
            "discard 64k 1M",
            "flush",
            "read -P 0 64k 1M",
            "read -P 0x66 0 64k",
            "read -P 0x66 1088k 960k",
        ],
    );
    assert!(ok, "{text}");
    let after = std::fs::metadata(&image).unwrap().blocks();
    assert!(
        after + 2000 <= full,
        "1 MiB given back: {full} -> {after} blocks"
    );
    h.ok(&["destroy", "trim"]);
    // no-discard: not offered.
    let cfg = h.dir.join("nd.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"nd\"\ndisk = [ '{},raw,xvda,rw,no-discard' ]\n",
            image.display()
        ),
    )
    .unwrap();
    h.ok(&["create", cfg.to_str().unwrap()]);
    let (_, url) = h.export("nd");
    let info = Command::new("nbdinfo").arg(&url).output().unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("can_trim: false"));
    h.ok(&["destroy", "nd"]);
}

#[test]
fn two_creates_of_one_name_at_once_make_one_guest() {
    let h = Host::up("same-name");
    let cfg = h.config("twin");
    for round in 0..3 {
        let create = || {
            Command::new(BIN)
                .args(["create", "--run-dir"])
                .arg(h.run_dir())
                .arg(&cfg)
                .output()
                .unwrap()
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(create);
            let b = s.spawn(create);
            (a.join().unwrap(), b.join().unwrap())
        });
        let made = [&a, &b].iter().filter(|o| o.status.success()).count();
        let lost = if a.status.success() { &b } else { &a };
        assert_eq!(made, 1, "round {round}: {a:?} {b:?}");
        assert!(
            String::from_utf8_lossy(&lost.stderr).contains("twin"),
            "{lost:?}"
        );
        let list = h.ok(&["list"]);
        assert_eq!(
            list.lines().filter(|l| l.starts_with("twin ")).count(),
            1,
            "{list}"
        );
        h.ok(&["destroy", "twin"]);
    }
}

#[test]
fn a_stale_name_claim_is_taken_over_and_destroy_clears_the_index() {
    let h = Host::up("names");
    let before = h.xenstore_ls();
    // What a toolstack that died mid-create would leave: the name claimed
    // for a domain that does not have it.
    h.xenstore(&["write", "/tool/dom0kit/names/ghost", "77"]);
    let cfg = h.config("ghost");
    let out = h.ok(&["create", cfg.to_str().unwrap()]);
    assert!(out.contains("created domain ghost"), "{out}");
    let id = h.xenstore(&["read", "/tool/dom0kit/names/ghost"]);
    assert_ne!(id.trim(), "77");
    // A second one of the name is refused by the claim.
    assert!(!h.run(&["create", cfg.to_str().unwrap()]).status.success());
    h.ok(&["destroy", "ghost"]);
    assert_eq!(
        settled_store(&h, &before),
        before,
        "the index goes with its last name"
    );
    // dom0's name is taken; a name with a dot is claimed (escaped: xenstore
    // paths have no dots).
    let dom0 = h.dir.join("dom0.cfg");
    std::fs::write(&dom0, "name = \"Domain-0\"\nmemory = 16\n").unwrap();
    let out = h.run(&["create", dom0.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    let cfg = h.config("web.1");
    h.ok(&["create", cfg.to_str().unwrap()]);
    assert!(!h.run(&["create", cfg.to_str().unwrap()]).status.success());
    assert!(h.ok(&["list"]).lines().any(|l| l.starts_with("web.1 ")));
    h.ok(&["destroy", "web.1"]);
    assert_eq!(settled_store(&h, &before), before);
}

/// The `flags:` of the descriptors process `pid` holds on `file`.
fn open_flags(pid: i32, file: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if std::fs::read_link(fd.path()).is_ok_and(|l| l == file) {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
                .unwrap();
            out.push(flags);
        }
    }
    out
}

#[test]
fn direct_io_safe_disks_bypass_the_page_cache() {
    const O_DIRECT: u32 = 0o40000;
    let h = Host::up("direct");
    let cfg = h.config_with("direct", 4 << 20, ",direct-io-safe");
    let image = h.dir.join("direct.img");
    h.ok(&["create", cfg.to_str().unwrap()]);
    assert_eq!(
        h.xenstore(&["read", "/local/domain/0/backend/vbd/1/51712/direct-io-safe"])
            .trim(),
        "1"
    );
    let (_, url) = h.export("direct");
    let (ok, text) = qemu_io(
        "raw",
        &url,
        &[
            "write -P 0x3d 4k 300k",
            "flush",
            "read -P 0x3d 4k 300k",
            "read -P 0 0 4k",
        ],
    );
    assert!(ok, "{text}");
    let backend = pid_of(&h.run_dir(), " backend --hv ");
    let flags = open_flags(backend, &image);
    assert!(
        !flags.is_empty() && flags.iter().all(|f| f & O_DIRECT != 0),
        "{flags:?}"
    );
    let data = std::fs::read(&image).unwrap();
    assert!(data[4096..4096 + 300 * 1024].iter().all(|&b| b == 0x3d));
    h.ok(&["destroy", "direct"]);
    // Without it: through the page cache.
    let cfg2 = h.config("cached");
    h.ok(&["create", cfg2.to_str().unwrap()]);
    let _ = h.export("cached");
    let flags = open_flags(
        pid_of(&h.run_dir(), " backend --hv "),
        &h.dir.join("cached.img"),
    );
    assert!(
        !flags.is_empty() && flags.iter().all(|f| f & O_DIRECT == 0),
        "{flags:?}"
    );
    h.ok(&["destroy", "cached"]);
}
