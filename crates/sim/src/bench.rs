//! `dom0kit bench sim`: the simulated hypervisor's fast paths, each measured
//! against its physical limit in the same run.
//!
//! * Event-channel round trip, dom0 ↔ a guest process, against a raw
//!   eventfd round trip between the same two processes (goal ≥ 0.9).
//! * Batched 4 KiB grant copies (`GNTTABOP_copy`, 32 per batch) against
//!   `memcpy` of the same bytes (goal ≥ 0.8).
//! * Grant map + unmap of 32-page batches, recorded.
//!
//! As a backend does, dom0 keeps one of the guest's grants mapped the
//! whole time (its ring, in a real device), so the per-batch hold on the
//! guest is a counter, not a hypercall.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use abi::{DomId, GrantRef, Pfn, Port};
use platform::{
    CopyPtr, DomainConfig, DomainControl, EventChannels, ForeignMemory, GntStatus, GrantCopy,
    GrantMapper, GrantMapping, GrantSpec, OwnMemory,
};

use crate::frames::Policy;
use crate::sys;
use crate::{HvConfig, Hypervisor, SimDomain};

/// One measured row.
#[derive(Clone, Debug)]
pub struct Row {
    /// What was measured.
    pub name: &'static str,
    /// Our number.
    pub ours: f64,
    /// The limit's number, if the row has one.
    pub limit: Option<f64>,
    /// Unit of both numbers.
    pub unit: &'static str,
    /// What the limit is.
    pub limit_name: &'static str,
    /// `ours / limit` (or `limit / ours` for times) must reach this.
    pub goal: Option<f64>,
    /// Whether smaller is better (times).
    pub lower_is_better: bool,
}

impl Row {
    /// Ours relative to the limit, 1.0 meaning as good as the limit.
    pub fn ratio(&self) -> Option<f64> {
        let limit = self.limit?;
        Some(if self.lower_is_better {
            limit / self.ours
        } else {
            self.ours / limit
        })
    }
}

struct Probe {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Probe {
    fn send(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| e.to_string())
    }

    fn answer(&mut self) -> Result<String, String> {
        let mut a = String::new();
        self.stdout.read_line(&mut a).map_err(|e| e.to_string())?;
        let a = a.trim_end();
        a.strip_prefix("ok")
            .map(|s| s.trim().to_string())
            .ok_or_else(|| format!("probe: {a}"))
    }

    fn cmd(&mut self, line: &str) -> Result<String, String> {
        self.send(line)?;
        self.answer()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Runs every benchmark; `probe` is the command line of a guest probe
/// (`dom0kit __sim-probe`), `rounds` scales the run time (0: a smoke run of
/// a few iterations, whose numbers mean little).
pub fn run(probe: &[OsString], rounds: u32) -> Result<Vec<Row>, String> {
    let (round_trips, copies) = if rounds == 0 {
        (200, 20)
    } else {
        (20_000 * rounds, 20_000 * rounds)
    };
    let dir = std::env::temp_dir().join(format!("dom0kit-bench-sim-{}", std::process::id()));
    let config = HvConfig {
        run_dir: dir.clone(),
        machine_pages: 65536,
        dom0_pages: 4096,
        max_domains: 8,
        policy: Policy::Shuffled,
        seed: 1,
    };
    let hv = Hypervisor::spawn(config).map_err(err)?;
    let dom0 = SimDomain::attach_dom0(hv.socket()).map_err(err)?;
    let d = dom0
        .create_domain(&DomainConfig {
            pages: 1024,
            grant_frames: 4,
        })
        .map_err(err)?;

    // The raw eventfds, inherited by the probe.
    let to_guest = sys::eventfd().map_err(err)?;
    let to_dom0 = sys::eventfd().map_err(err)?;
    sys::set_inheritable(to_guest.as_raw_fd()).map_err(err)?;
    sys::set_inheritable(to_dom0.as_raw_fd()).map_err(err)?;
    let (prog, args) = probe.split_first().ok_or("no probe command")?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the probe: {e}"))?;
    let stdin = child.stdin.take().ok_or("probe stdin")?;
    let stdout = BufReader::new(child.stdout.take().ok_or("probe stdout")?);
    let mut g = Probe {
        child,
        stdin,
        stdout,
    };
    g.cmd(&format!("attach {} {}", hv.socket().display(), d.token))?;

    let mut rows = Vec::new();
    rows.push(evtchn_round_trip(
        &dom0,
        &mut g,
        d.domid,
        &to_guest,
        &to_dom0,
        round_trips,
    )?);
    rows.extend(grants(&dom0, &mut g, d.domid, copies)?);
    drop(g);
    drop(hv);
    let _ = std::fs::remove_dir_all(dir);
    Ok(rows)
}

fn evtchn_round_trip(
    dom0: &SimDomain,
    g: &mut Probe,
    domid: DomId,
    to_guest: &std::os::fd::OwnedFd,
    to_dom0: &std::os::fd::OwnedFd,
    n: u32,
) -> Result<Row, String> {
    let gport: u32 = g.cmd("unbound 0")?.parse().map_err(err)?;
    let port = dom0.bind_interdomain(domid, Port(gport)).map_err(err)?;
    dom0.ack(port).map_err(err)?;
    let fd = dom0.pollable(port).map_err(err)?;
    let wait = |fd: i32| -> Result<(), String> {
        sys::wait_readable(fd, 5000)
            .map_err(err)?
            .then_some(())
            .ok_or("event lost")?;
        sys::event_clear(fd).map_err(err)?;
        Ok(())
    };
    // Interleave the two in 200 chunks and add up each side, so that both
    // see the same scheduling weather: on this VM a wake-up costs tens of
    // microseconds and varies from second to second.
    const CHUNKS: u32 = 200;
    let per = (n / CHUNKS).max(1);
    let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..CHUNKS {
        g.send(&format!("echo {gport} {per}"))?;
        let t = Instant::now();
        for _ in 0..per {
            dom0.notify(port).map_err(err)?;
            wait(fd.as_raw_fd())?;
        }
        ours += t.elapsed();
        g.answer()?;

        g.send(&format!(
            "rawecho {} {} {per}",
            to_guest.as_raw_fd(),
            to_dom0.as_raw_fd()
        ))?;
        let t = Instant::now();
        for _ in 0..per {
            sys::eventfd_signal(to_guest.as_raw_fd()).map_err(err)?;
            wait(to_dom0.as_raw_fd())?;
        }
        raw += t.elapsed();
        g.answer()?;
    }
    let n = per * CHUNKS;
    let us = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n);
    Ok(Row {
        name: "event-channel round trip",
        ours: us(ours),
        limit: Some(us(raw)),
        unit: "µs",
        limit_name: "raw eventfd round trip",
        goal: Some(0.9),
        lower_is_better: true,
    })
}

fn grants(dom0: &SimDomain, g: &mut Probe, domid: DomId, rounds: u32) -> Result<Vec<Row>, String> {
    const BATCH: usize = 32;
    const PAGE: usize = 4096;
    let base: u64 = g.cmd(&format!("alloc {BATCH}"))?.parse().map_err(err)?;
    let mut grefs = Vec::new();
    for i in 0..BATCH as u64 {
        grefs.push(GrantRef(
            g.cmd(&format!("grant 0 {} rw", base + i))?
                .parse()
                .map_err(err)?,
        ));
    }
    let ring = GrantSpec {
        domid,
        gref: grefs[0],
        writable: true,
    };
    let _ring = dom0.map_grants(&[ring]).map_err(err)?;

    let local = dom0.alloc_pages(BATCH as u64).map_err(err)?;
    let mut ops: Vec<GrantCopy> = grefs
        .iter()
        .enumerate()
        .map(|(i, &gref)| GrantCopy {
            source: CopyPtr::Local {
                pfn: Pfn(local.0 + i as u64),
                offset: 0,
            },
            dest: CopyPtr::Grant {
                domid,
                gref,
                offset: 0,
            },
            len: PAGE as u16,
            status: GntStatus::GENERAL_ERROR,
        })
        .collect();
    let src = dom0.pages(local, BATCH as u64).map_err(err)?;
    // The baseline copies the same bytes between the same frames: ours and
    // the guest's behind the grants, mapped as foreign memory (which takes
    // no grant), so that where the frames happen to lie weighs on both
    // sides alike.
    let pfns: Vec<Pfn> = (0..BATCH as u64).map(|i| Pfn(base + i)).collect();
    let foreign = dom0.map_foreign(domid, &pfns).map_err(err)?;
    let dst = foreign.memory();
    src.fill(0, src.len(), 0x5a).map_err(err)?;

    // The same batches copying nothing: what a copy costs besides the bytes.
    let mut empty = ops.clone();
    empty.iter_mut().for_each(|o| o.len = 0);

    // Short passes, alternating, the best of each kept: on this VM noise
    // comes and goes in bursts shorter than a long pass. In all, the time
    // of five passes of `rounds` batches.
    const PASSES: u32 = 25;
    let per = (rounds.saturating_mul(5) / PASSES).max(1);
    let mut best_copy = Duration::MAX;
    let mut best_memcpy = Duration::MAX;
    let mut best_empty = Duration::MAX;
    for _ in 0..PASSES {
        let t = Instant::now();
        for _ in 0..per {
            dom0.copy_grants(&mut ops).map_err(err)?;
        }
        best_copy = best_copy.min(t.elapsed());
        if let Some(bad) = ops.iter().find(|o| !o.status.is_ok()) {
            return Err(format!("grant copy failed: {}", bad.status));
        }
        let t = Instant::now();
        for _ in 0..per {
            for i in 0..BATCH {
                let s = src.subslice(i * PAGE, PAGE).map_err(err)?;
                dst.copy_from(i * PAGE, &s).map_err(err)?;
            }
        }
        best_memcpy = best_memcpy.min(t.elapsed());
        let t = Instant::now();
        for _ in 0..per {
            dom0.copy_grants(&mut empty).map_err(err)?;
        }
        best_empty = best_empty.min(t.elapsed());
    }
    let gbs = |d: Duration| (per as usize * BATCH * PAGE) as f64 / d.as_secs_f64() / 1e9;

    let specs: Vec<GrantSpec> = grefs
        .iter()
        .map(|&gref| GrantSpec {
            domid,
            gref,
            writable: true,
        })
        .collect();
    let map_rounds = rounds / 4 + 1;
    let t = Instant::now();
    for _ in 0..map_rounds {
        drop(dom0.map_grants(&specs).map_err(err)?);
    }
    let per_s = f64::from(map_rounds) / t.elapsed().as_secs_f64();
    Ok(vec![
        Row {
            name: "grant copy, 32 x 4 KiB batches",
            ours: gbs(best_copy),
            limit: Some(gbs(best_memcpy)),
            unit: "GB/s",
            limit_name: "memcpy of the same bytes",
            goal: Some(0.8),
            lower_is_better: false,
        },
        Row {
            name: "grant copy of 0 bytes, per op",
            ours: best_empty.as_secs_f64() * 1e9 / f64::from(per) / BATCH as f64,
            limit: None,
            unit: "ns",
            limit_name: "",
            goal: None,
            lower_is_better: true,
        },
        Row {
            name: "grant map + unmap, 32-page batches",
            ours: per_s,
            limit: None,
            unit: "batches/s",
            limit_name: "",
            goal: None,
            lower_is_better: false,
        },
    ])
}
