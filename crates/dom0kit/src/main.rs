//! `dom0kit`: one binary, many subcommands.

#![deny(unsafe_code)]

mod backend;
mod bench_xs;
mod guest;
mod host;
mod xs_cli;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use sim::frames::Policy;
use sim::HvConfig;

const USAGE: &str = "usage: dom0kit <command> [options]

commands:
  demo                 bring up a simulated Xen host in a private directory, create a guest
                       with a disk, show its domain, xenstore tree and devices, write and
                       verify 8 MiB through its disk, tear it down
  up [--run-dir DIR] [--machine-memory SIZE]
                       start a simulated host (hv, xenstored, backend under a supervisor)
  down | status [--run-dir DIR]
                       stop the host (its guests first) | show what runs
  create FILE          create a guest from an xl.cfg (or .toml) file; its disks are NBD
                       exports on DIR/domains/NAME/VDEV.sock. A disk's target is a raw
                       file or device, an image of format=qcow|qcow2|vhd|qed (served
                       through qemu-nbd), or an NBD server: nbd+unix:///EXPORT?socket=PATH,
                       nbd://HOST[:PORT]/EXPORT, nbd:unix:PATH, nbd:HOST:PORT
  list                 list domains, as xl list
  destroy NAME|ID      close a guest's devices and destroy it
  shutdown [-w] NAME|ID | reboot [-w] NAME|ID
                       ask a guest to power off | reboot (control/shutdown), as xl; -w
                       waits until it has shut down. Then its on_poweroff (default
                       destroy) or on_reboot (default restart) is carried out
  block-attach DOMAIN DISKSPEC | block-detach DOMAIN VDEV
                       hotplug a disk (xl-disk-configuration(5) syntax)
                       (these take --run-dir DIR too; default as for hv)
  guest --hv HV_SOCKET [--export-dir DIR] | backend --hv HV_SOCKET --socket XS_SOCKET
                       the processes a host runs (started by create and up)
  hv [options]         run the simulated hypervisor in the foreground
      --run-dir DIR          where hv.sock goes ($DOM0KIT_RUN_DIR, $XDG_RUNTIME_DIR/dom0kit or /run/dom0kit)
      --machine-memory SIZE  machine memory (default 1G; K, M, G suffixes)
      --dom0-memory SIZE     dom0's own memory (default 64M)
      --max-domains N        domains at once, zombies included (default 256)
      --frames POLICY        contiguous, interleaved or shuffled (default shuffled)
  xenstored [--socket PATH] [--hv HV_SOCKET] [--quota NAME=N ...] [--timeout watch-event=SECS] [--busy-poll USEC]
            [--state FILE [--restore]]
                       run our xenstore daemon in the foreground (socket: --socket,
                       $XENSTORED_PATH, $XENSTORED_RUNDIR/socket or /var/run/xenstored/socket);
                       with --hv it attaches to the simulated hypervisor as dom0 and
                       serves domains introduced to it on their ring pages;
                       --quota sets a domain quota (nodes, watches, transactions,
                       transaction-nodes, node-permissions, path-max, node-size,
                       outstanding, memory; 0: off); a watch event keeps the request that
                       caused it outstanding for at most --timeout (default 20 s; 0: no limit);
                       after work it looks for more for up to --busy-poll before sleeping,
                       adapting as cpuidle-haltpoll does (default 200 us; 0: never);
                       on SIGTERM the state goes to FILE, --restore continues from it
  xenstore MODE ...     xenstore-utils: read, write, rm, exists, list, ls, chmod, watch,
                       control (also as xenstore-MODE through a link to this binary)
  bench xenstore --socket NAME=PATH [--socket NAME=PATH ...] [--quick]
                       the same workloads on each xenstored, as ratios to the first
  bench host [--guests N]
                       time to create a guest until its disk is Connected, from the
                       first guest to the Nth running (default 50)
  bench blk [--fio-seconds N] [--direct]
                       the same I/O on one image through the PV path (NBD export, blkfront,
                       blkback) and through qemu-nbd alone, as ratios: one request at a
                       time, then fio at queue depth 32 (and fio's io_uring on the file);
                       --direct: all of them past the page cache (O_DIRECT)
  bench sim [--rounds N | --quick]
                       measure the simulated hypervisor against its physical limits
  version              print the version";

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    let prog = argv0.rsplit('/').next().unwrap_or("dom0kit").to_string();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Called as xenstore-read, xenstore-ls, ... (a link to this binary).
    if let Some(mode) = prog.strip_prefix("xenstore-") {
        return xs_cli::run(&argv0, mode, false, &args);
    }
    let result = match args.first().map(String::as_str) {
        Some("xenstore") => {
            let Some(mode) = args.get(1) else {
                return xs_cli::run(&argv0, "", true, &[]);
            };
            return xs_cli::run(&argv0, mode, true, &args[2..]);
        }
        Some("version") | Some("--version") => {
            println!("dom0kit {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some("demo") => host::demo(&args[1..]),
        Some(
            cmd @ ("up" | "down" | "status" | "create" | "list" | "destroy" | "shutdown" | "reboot"
            | "block-attach" | "block-detach" | "__supervise"),
        ) => host::host_args(&args[1..]).and_then(|h| match cmd {
            "up" => host::up(&h),
            "down" => host::down(&h),
            "status" => host::status(&h),
            "create" => host::create(&h),
            "list" => host::list(&h),
            "destroy" => host::destroy(&h),
            "shutdown" => host::shutdown(&h, toolstack::domain::ShutdownRequest::Poweroff),
            "reboot" => host::shutdown(&h, toolstack::domain::ShutdownRequest::Reboot),
            "block-attach" => host::block_attach(&h),
            "block-detach" => host::block_detach(&h),
            _ => host::supervise(&h),
        }),
        Some("guest") => guest::main(&args[1..]),
        Some("backend") => backend::main(&args[1..]),
        Some("hv") => hv(&args[1..]),
        Some("xenstored") => xenstored(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("__sim-probe") => return sim::probe::main(),
        Some("help") | Some("--help") | Some("-h") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// The default run directory, as the design gives it.
fn default_run_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DOM0KIT_RUN_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("dom0kit");
    }
    PathBuf::from("/run/dom0kit")
}

/// Parses `512M`, `1G`, `4096K` or plain bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size {s:?}"))
}

fn value<'a>(it: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<&'a String, String> {
    it.next().ok_or_else(|| format!("{flag} needs a value"))
}

fn hv(args: &[String]) -> Result<(), String> {
    let mut config = HvConfig {
        run_dir: default_run_dir(),
        machine_pages: (1 << 30) / 4096,
        dom0_pages: (64 << 20) / 4096,
        max_domains: 256,
        policy: Policy::Shuffled,
        seed: std::process::id().into(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--run-dir" => config.run_dir = value(&mut it, a)?.into(),
            "--machine-memory" => config.machine_pages = parse_size(value(&mut it, a)?)? / 4096,
            "--dom0-memory" => config.dom0_pages = parse_size(value(&mut it, a)?)? / 4096,
            "--max-domains" => {
                config.max_domains = value(&mut it, a)?
                    .parse()
                    .map_err(|_| "bad --max-domains")?
            }
            "--frames" => config.policy = value(&mut it, a)?.parse()?,
            _ => return Err(format!("hv: unknown option {a}\n\n{USAGE}")),
        }
    }
    let socket = config.socket();
    let hv = sim::Hypervisor::new(config).map_err(|e| format!("hv: {e}"))?;
    println!("hv: serving on {}", socket.display());
    hv.run().map_err(|e| format!("hv: {e}"))
}

fn xenstored(args: &[String]) -> Result<(), String> {
    let mut socket = xenstore::client::default_socket();
    let mut state: Option<PathBuf> = None;
    let mut restore = false;
    let mut hv: Option<PathBuf> = None;
    let mut quota_flags: Vec<(&str, usize)> = Vec::new();
    let mut watch_event_timeout: Option<u64> = None;
    let mut busy_poll = xenstored::busy_poll::DEFAULT_MAX;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--socket" => socket = value(&mut it, a)?.into(),
            "--hv" => hv = Some(value(&mut it, a)?.into()),
            "--quota" => {
                let q = value(&mut it, a)?;
                let parsed = q
                    .split_once('=')
                    .and_then(|(name, n)| Some((name, n.parse::<usize>().ok()?)));
                match parsed {
                    Some((name, n)) if xenstored::store::Quotas::DEFAULT.get(name).is_some() => {
                        quota_flags.push((name, n));
                    }
                    _ => {
                        return Err(format!(
                            "xenstored: --quota {q}: expected NAME=NUMBER with NAME one of {}",
                            xenstored::store::Quotas::NAMES.join(", ")
                        ))
                    }
                }
            }
            "--timeout" => {
                let t = value(&mut it, a)?;
                match t.strip_prefix("watch-event=").map(str::parse::<u64>) {
                    Some(Ok(secs)) => watch_event_timeout = Some(secs),
                    _ => {
                        return Err(format!(
                            "xenstored: --timeout {t}: expected watch-event=SECONDS"
                        ))
                    }
                }
            }
            "--busy-poll" => {
                let us = value(&mut it, a)?;
                let us: u64 = us
                    .parse()
                    .map_err(|_| format!("xenstored: --busy-poll {us}: expected microseconds"))?;
                busy_poll = std::time::Duration::from_micros(us);
            }
            "--state" => state = Some(value(&mut it, a)?.into()),
            "--restore" => restore = true,
            _ => return Err(format!("xenstored: unknown option {a}\n\n{USAGE}")),
        }
    }
    let hv: Option<Box<dyn xenstored::domain::Hypervisor>> = match hv {
        Some(hv) => {
            let dom0 = sim::SimDomain::attach_dom0(&hv)
                .map_err(|e| format!("xenstored: hv {}: {e}", hv.display()))?;
            let hv = xenstored::domain::PlatformHv::new(dom0)
                .map_err(|e| format!("xenstored: VIRQ_DOM_EXC: {e}"))?;
            Some(Box::new(hv))
        }
        None => None,
    };
    let mut core = match (&state, restore) {
        (Some(path), true) => {
            xenstored::Core::restore(path, hv).map_err(|e| format!("xenstored: {e}"))?
        }
        (None, true) => return Err("xenstored: --restore needs --state FILE".into()),
        _ => match hv {
            Some(hv) => xenstored::Core::new().with_hypervisor(hv),
            None => xenstored::Core::new(),
        },
    };
    // Given quotas win over restored ones.
    for (name, n) in quota_flags {
        core.quotas_mut().set(name, n);
    }
    if let Some(secs) = watch_event_timeout {
        core.set_watch_event_timeout(std::time::Duration::from_secs(secs));
    }
    let mut d =
        xenstored::Daemon::bind_with(&socket, core).map_err(|e| format!("xenstored: {e}"))?;
    d.set_busy_poll(busy_poll);
    stop_on_sigterm();
    println!("xenstored: serving on {}", socket.display());
    d.run(|| STOP.load(std::sync::atomic::Ordering::Relaxed))
        .map_err(|e| format!("xenstored: {e}"))?;
    if let Some(path) = state {
        d.core()
            .save(&path)
            .map_err(|e| format!("xenstored: {e}"))?;
        println!("xenstored: state saved to {}", path.display());
    }
    Ok(())
}

/// Set by SIGTERM and SIGINT: the daemon saves its state and exits.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[allow(unsafe_code)]
fn stop_on_sigterm() {
    let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe; installing it has no other effect.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
}

fn bench_xenstore(args: &[String]) -> Result<(), String> {
    let mut sockets = Vec::new();
    let mut quick = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--socket" => {
                let v = value(&mut it, a)?;
                let (name, path) = v.split_once('=').unwrap_or((v.as_str(), v.as_str()));
                sockets.push((name.to_string(), PathBuf::from(path)));
            }
            "--quick" => quick = true,
            _ => return Err(format!("bench xenstore: unknown option {a}")),
        }
    }
    if sockets.is_empty() {
        return Err("bench xenstore: name at least one --socket NAME=PATH".into());
    }
    let rows = bench_xs::run(&sockets, quick)?;
    let names: Vec<&str> = sockets.iter().map(|(n, _)| n.as_str()).collect();
    println!(
        "{:<44} {}",
        "benchmark",
        names.iter().map(|n| format!("{n:>14}")).collect::<String>()
    );
    for r in &rows {
        let vals: String = r.values.iter().map(|v| format!("{v:>14.1}")).collect();
        let base = r.values[0];
        let ratios: Vec<String> = r
            .values
            .iter()
            .zip(&names)
            .skip(1)
            .map(|(v, n)| format!("{n}/{}: {:.2}", names[0], v / base))
            .collect();
        println!("{:<44} {vals}  {}  ({})", r.name, ratios.join("  "), r.unit);
    }
    println!("\ndaemon CPU time per operation (us; lower is better)");
    for r in &rows {
        let vals: String = r.cpu_us.iter().map(|v| format!("{v:>14.2}")).collect();
        let ratios: Vec<String> = r
            .cpu_us
            .iter()
            .zip(&names)
            .skip(1)
            .map(|(v, n)| format!("{n}/{}: {:.2}", names[0], v / r.cpu_us[0]))
            .collect();
        println!("{:<44} {vals}  {}", r.name, ratios.join("  "));
    }
    Ok(())
}

fn bench(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("sim") => {}
        Some("xenstore") => return bench_xenstore(&args[1..]),
        Some("host") => return host::bench(&args[1..]),
        Some("blk") => return host::bench_blk(&args[1..]),
        _ => {
            return Err(format!(
                "bench: which? (sim, xenstore, host, blk)\n\n{USAGE}"
            ))
        }
    }
    let mut rounds = 1;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => rounds = value(&mut it, a)?.parse().map_err(|_| "bad --rounds")?,
            "--quick" => rounds = 0,
            _ => return Err(format!("bench sim: unknown option {a}")),
        }
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let probe = [me.into_os_string(), OsString::from("__sim-probe")];
    let rows = sim::bench::run(&probe, rounds)?;
    println!(
        "{:<38} {:>12} {:>12}  {:<26} {:>7}  goal",
        "benchmark", "ours", "limit", "limit is", "ratio"
    );
    for r in &rows {
        let limit = r.limit.map_or("-".to_string(), |l| format!("{l:.3}"));
        let ratio = r.ratio().map_or("-".to_string(), |x| format!("{x:.2}"));
        let goal = r.goal.map_or("recorded".to_string(), |g| {
            let met = r.ratio().is_some_and(|x| x >= g);
            format!(">= {g} {}", if met { "met" } else { "NOT MET" })
        });
        println!(
            "{:<38} {:>12.3} {:>12}  {:<26} {:>7}  {goal}    ({})",
            r.name, r.ours, limit, r.limit_name, ratio, r.unit
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }
}
