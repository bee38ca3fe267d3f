//! Guests as separate processes against dom0 in this one: grants, copies,
//! event channels, death and reclamation, across real process boundaries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::fd::AsRawFd;

use abi::{DomId, GrantRef, Pfn, Port};
use common::{eventually, Host};
use platform::{
    CopyPtr, DomainConfig, DomainControl, EventChannels, GntStatus, GrantCopy, GrantMapper,
    GrantMapping, GrantSpec, OwnMemory,
};

fn wait_event(fd: &std::os::fd::OwnedFd) -> bool {
    sim::sys::wait_readable(fd.as_raw_fd(), 2000).unwrap()
}

#[test]
fn dom0_maps_a_guest_grant_writes_and_the_guest_reads_it_back() {
    let host = Host::new();
    let mut g = host.guest(64);
    let pfn: u64 = g.cmd("alloc 1").parse().unwrap();
    g.cmd(&format!("write {pfn} 0 6775657374"));
    let gref: u32 = g.cmd(&format!("grant 0 {pfn} rw")).parse().unwrap();

    let spec = GrantSpec {
        domid: DomId(g.domid),
        gref: GrantRef(gref),
        writable: true,
    };
    let map = host.dom0.map_grants(&[spec]).unwrap();
    let mut buf = [0u8; 5];
    map.memory().read_bytes(0, &mut buf).unwrap();
    assert_eq!(&buf, b"guest");
    map.memory().write_bytes(100, b"from dom0").unwrap();

    assert_eq!(g.cmd(&format!("read {pfn} 100 9")), "66726f6d20646f6d30");
    assert_eq!(
        g.cmd(&format!("end {gref}")),
        "inuse",
        "mapped grants cannot be ended"
    );
    drop(map);
    assert_eq!(g.cmd(&format!("end {gref}")), "");
}

#[test]
fn a_two_frame_table_hands_out_every_ref_but_the_reserved_and_maps_past_its_first_frame() {
    let host = Host::new();
    let mut g = host.guest_with(16, 2);
    let domid = DomId(g.domid);
    g.cmd("write 3 0 6869");
    let end = 2 * sim::SimDomain::ENTRIES_PER_FRAME as u32;
    let mut refs = Vec::new();
    let refused = loop {
        let a = g.try_cmd("grant 0 3 ro");
        match a.strip_prefix("ok ") {
            Some(r) if refs.len() < end as usize => refs.push(r.parse::<u32>().unwrap()),
            _ => break a,
        }
    };
    assert!(refused.starts_with("err"), "a full table: {refused}");
    refs.sort_unstable();
    let reserved = abi::grant_table::GNTTAB_NR_RESERVED_ENTRIES;
    assert_eq!(
        refs,
        (reserved..end).collect::<Vec<_>>(),
        "every ref once, none of the reserved"
    );
    let spec = |gref| GrantSpec {
        domid,
        gref: GrantRef(gref),
        writable: false,
    };
    // A ref of the second frame maps as one of the first does.
    for gref in [reserved, end / 2 - 1, end / 2, end - 1] {
        let map = host.dom0.map_grants(&[spec(gref)]).unwrap();
        let mut buf = [0u8; 2];
        map.memory().read_bytes(0, &mut buf).unwrap();
        assert_eq!(&buf, b"hi", "ref {gref}");
    }
    for gref in [0, reserved - 1, end] {
        assert!(host.dom0.map_grants(&[spec(gref)]).is_err(), "ref {gref}");
    }
}

#[test]
fn a_grant_table_has_between_one_and_xens_default_maximum_of_frames() {
    let host = Host::new();
    let max = abi::grant_table::DEFAULT_MAX_GRANT_FRAMES;
    for (frames, ok) in [(0, false), (1, true), (max, true), (max + 1, false)] {
        let made = host.dom0.create_domain(&DomainConfig {
            pages: 16,
            grant_frames: frames,
        });
        assert_eq!(made.is_ok(), ok, "{frames} frames");
        if let Ok(d) = made {
            host.dom0.destroy_domain(d.domid).unwrap();
        }
    }
}

#[test]
fn read_only_grants_refuse_writable_maps() {
    let host = Host::new();
    let mut g = host.guest(16);
    let gref: u32 = g.cmd("grant 0 3 ro").parse().unwrap();
    let rw = GrantSpec {
        domid: DomId(g.domid),
        gref: GrantRef(gref),
        writable: true,
    };
    let err = host.dom0.map_grants(&[rw]).err().unwrap();
    assert!(
        matches!(err, platform::Error::Grant(GntStatus::GENERAL_ERROR)),
        "{err}"
    );
    let ro = GrantSpec {
        writable: false,
        ..rw
    };
    assert!(host.dom0.map_grants(&[ro]).is_ok());
}

#[test]
fn a_batch_map_that_fails_part_way_keeps_nothing_it_took() {
    let host = Host::new();
    let mut g = host.guest(16);
    let good: u32 = g.cmd("grant 0 3 rw").parse().unwrap();
    let spec = |gref| GrantSpec {
        domid: DomId(g.domid),
        gref: GrantRef(gref),
        writable: true,
    };
    assert!(host.dom0.map_grants(&[spec(good), spec(good + 1)]).is_err());
    assert_eq!(
        g.cmd(&format!("end {good}")),
        "",
        "the first grant was let go when the second failed"
    );
    // Nor is the domain held: killed, it goes at once.
    g.kill();
    eventually("the domain to go", || {
        host.dom0
            .list_domains()
            .unwrap()
            .iter()
            .all(|d| d.domid.0 != g.domid)
    });
}

/// Runs a batch of copies: each one's status.
fn copy_statuses(dom0: &sim::SimDomain, ops: &mut [GrantCopy]) -> Vec<GntStatus> {
    dom0.copy_grants(ops).unwrap();
    ops.iter().map(|o| o.status).collect()
}

#[test]
fn grant_copy_works_in_both_directions_with_per_op_status() {
    let host = Host::new();
    let mut g = host.guest(32);
    g.cmd("write 2 10 aabbccdd");
    let src: u32 = g.cmd("grant 0 2 ro").parse().unwrap();
    let dst: u32 = g.cmd("grant 0 5 rw").parse().unwrap();
    let local = host.dom0.alloc_pages(1).unwrap();
    let dom = DomId(g.domid);
    let mut ops = [
        GrantCopy {
            source: CopyPtr::Grant {
                domid: dom,
                gref: GrantRef(src),
                offset: 10,
            },
            dest: CopyPtr::Local {
                pfn: local,
                offset: 0,
            },
            len: 4,
            status: GntStatus::GENERAL_ERROR,
        },
        GrantCopy {
            source: CopyPtr::Local {
                pfn: local,
                offset: 0,
            },
            dest: CopyPtr::Grant {
                domid: dom,
                gref: GrantRef(dst),
                offset: 4000,
            },
            len: 4,
            status: GntStatus::GENERAL_ERROR,
        },
        GrantCopy {
            source: CopyPtr::Local {
                pfn: local,
                offset: 0,
            },
            dest: CopyPtr::Grant {
                domid: dom,
                gref: GrantRef(src),
                offset: 0,
            },
            len: 4,
            status: GntStatus::OKAY,
        },
        GrantCopy {
            source: CopyPtr::Local {
                pfn: local,
                offset: 4095,
            },
            dest: CopyPtr::Grant {
                domid: dom,
                gref: GrantRef(dst),
                offset: 0,
            },
            len: 2,
            status: GntStatus::OKAY,
        },
    ];
    assert_eq!(
        copy_statuses(&host.dom0, &mut ops),
        [
            GntStatus::OKAY,
            GntStatus::OKAY,
            GntStatus::GENERAL_ERROR,
            GntStatus::BAD_COPY_ARG
        ],
        "write to a read-only grant and a copy across a page fail alone"
    );
    assert_eq!(g.cmd("read 5 4000 4"), "aabbccdd");
    assert_eq!(
        g.cmd(&format!("end {src}")),
        "",
        "copies leave no pin behind"
    );
}

#[test]
fn a_copy_goes_between_two_grants_and_between_two_pages_of_ours() {
    let host = Host::new();
    let (mut a, mut b) = (host.guest(16), host.guest(16));
    a.cmd("write 2 0 a1a2a3");
    let from: u32 = a.cmd("grant 0 2 ro").parse().unwrap();
    let to: u32 = b.cmd("grant 0 4 rw").parse().unwrap();
    let local = host.dom0.alloc_pages(2).unwrap();
    let mine = host.dom0.pages(local, 2).unwrap();
    mine.write_bytes(7, b"ours").unwrap();
    let grant = |g: &common::Guest, gref, offset| CopyPtr::Grant {
        domid: DomId(g.domid),
        gref: GrantRef(gref),
        offset,
    };
    let page = |pfn: Pfn, offset| CopyPtr::Local { pfn, offset };
    let op = |source, dest, len| GrantCopy {
        source,
        dest,
        len,
        status: GntStatus::GENERAL_ERROR,
    };
    let mut ops = [
        op(grant(&a, from, 0), grant(&b, to, 100), 3),
        op(page(local, 7), page(Pfn(local.0 + 1), 0), 4),
        // Into a read-only grant: refused, and nothing else held.
        GrantCopy {
            status: GntStatus::OKAY,
            ..op(grant(&b, to, 0), grant(&a, from, 0), 1)
        },
        // Across the end of a page, on either side and either path.
        GrantCopy {
            status: GntStatus::OKAY,
            ..op(grant(&a, from, 0), grant(&b, to, 4095), 2)
        },
        GrantCopy {
            status: GntStatus::OKAY,
            ..op(grant(&a, from, 4094), page(local, 0), 3)
        },
    ];
    assert_eq!(
        copy_statuses(&host.dom0, &mut ops),
        [
            GntStatus::OKAY,
            GntStatus::OKAY,
            GntStatus::GENERAL_ERROR,
            GntStatus::BAD_COPY_ARG,
            GntStatus::BAD_COPY_ARG
        ]
    );
    assert_eq!(b.cmd("read 4 100 3"), "a1a2a3");
    let mut buf = [0u8; 4];
    mine.read_bytes(4096, &mut buf).unwrap();
    assert_eq!(&buf, b"ours");
    assert_eq!(
        a.cmd(&format!("end {from}")),
        "",
        "no pin left on the source"
    );
    assert_eq!(b.cmd(&format!("end {to}")), "", "nor on the destination");
}

#[test]
fn a_copy_batch_with_several_granters_holds_each_for_the_batch_only() {
    let host = Host::new();
    let local = host.dom0.alloc_pages(1).unwrap();
    let (_, free_before) = host.dom0.physinfo().unwrap();
    let mut a = host.guest(16);
    let mut b = host.guest(16);
    a.cmd("write 3 0 0a0a");
    b.cmd("write 4 0 0b0b");
    let from_a: u32 = a.cmd("grant 0 3 ro").parse().unwrap();
    let from_b: u32 = b.cmd("grant 0 4 ro").parse().unwrap();
    // Held across the batch: the batch's own holds must not take it away.
    let kept = host
        .dom0
        .map_grants(&[GrantSpec {
            domid: DomId(a.domid),
            gref: GrantRef(from_a),
            writable: false,
        }])
        .unwrap();
    let read = |domid: u16, gref: u32, to: u16| GrantCopy {
        source: CopyPtr::Grant {
            domid: DomId(domid),
            gref: GrantRef(gref),
            offset: 0,
        },
        dest: CopyPtr::Local {
            pfn: local,
            offset: to,
        },
        len: 2,
        status: GntStatus::GENERAL_ERROR,
    };
    // The first granter, one that does not exist, a second, the first
    // again.
    let mut ops = [
        read(a.domid, from_a, 0),
        read(999, 0, 2),
        read(b.domid, from_b, 4),
        read(a.domid, from_a, 6),
    ];
    assert_eq!(
        copy_statuses(&host.dom0, &mut ops),
        [
            GntStatus::OKAY,
            GntStatus::BAD_DOMAIN,
            GntStatus::OKAY,
            GntStatus::OKAY
        ]
    );
    let mut got = [0u8; 8];
    host.dom0
        .pages(local, 1)
        .unwrap()
        .read_bytes(0, &mut got)
        .unwrap();
    assert_eq!(got, [0x0a, 0x0a, 0, 0, 0x0b, 0x0b, 0x0a, 0x0a]);
    // Nothing of the batch holds either domain once it is done: `b` goes
    // when its process does; `a` stays a zombie while we map its page,
    // and no longer (a batch that let go of more than it held would have
    // let it go at once).
    a.kill();
    b.kill();
    let listed = |domid: u16| {
        let doms = host.dom0.list_domains().unwrap();
        doms.iter().find(|d| d.domid.0 == domid).map(|d| d.dying)
    };
    eventually("b to go", || listed(b.domid).is_none());
    assert_eq!(listed(a.domid), Some(true), "a, mapped, is a zombie");
    assert!(host.dom0.physinfo().unwrap().1 < free_before);
    let mut byte = [0u8];
    kept.memory().read_bytes(0, &mut byte).unwrap();
    assert_eq!(byte, [0x0a]);
    drop(kept);
    eventually("both domains' frames to return", || {
        host.dom0.physinfo().unwrap().1 == free_before
    });
}

#[test]
fn event_channels_ping_pong_across_processes() {
    let host = Host::new();
    let mut g = host.guest(16);
    let gport: u32 = g.cmd("unbound 0").parse().unwrap();
    let port = host
        .dom0
        .bind_interdomain(DomId(g.domid), Port(gport))
        .unwrap();
    let fd = host.dom0.pollable(port).unwrap();
    assert_eq!(g.cmd(&format!("wait {gport} 0")), "timeout");
    host.dom0.ack(port).unwrap(); // Xen marks a newly bound port pending.
    for _ in 0..100 {
        host.dom0.notify(port).unwrap();
        assert_eq!(g.cmd(&format!("wait {gport} 2000")), "event");
        g.cmd(&format!("notify {gport}"));
        assert!(wait_event(&fd));
        assert!(host.dom0.ack(port).unwrap());
    }
}

#[test]
fn a_port_offered_to_one_domain_cannot_be_bound_by_another() {
    let host = Host::new();
    let (mut a, mut b, mut c) = (host.guest(16), host.guest(16), host.guest(16));
    let port: u32 = a.cmd(&format!("unbound {}", b.domid)).parse().unwrap();
    let refused = c.try_cmd(&format!("bind {} {port}", a.domid));
    assert!(refused.starts_with("err"), "{refused}");
    assert!(
        host.dom0
            .bind_interdomain(DomId(a.domid), Port(port))
            .is_err(),
        "nor dom0"
    );
    assert!(b
        .cmd(&format!("bind {} {port}", a.domid))
        .parse::<u32>()
        .is_ok());
}

#[test]
fn closing_one_end_unbinds_and_notifies_the_other_which_can_be_bound_again() {
    let host = Host::new();
    let mut g = host.guest(16);
    let port = host.dom0.alloc_unbound(DomId(g.domid)).unwrap();
    let fd = host.dom0.pollable(port).unwrap();
    let gport: u32 = g.cmd(&format!("bind 0 {}", port.0)).parse().unwrap();
    g.cmd(&format!("notify {gport}"));
    assert!(wait_event(&fd));
    host.dom0.ack(port).unwrap();

    g.cmd(&format!("close {gport}"));
    assert!(wait_event(&fd), "the close is an event");
    host.dom0.ack(port).unwrap();
    host.dom0.notify(port).unwrap(); // Dropped: nobody is bound.

    let gport2: u32 = g.cmd(&format!("bind 0 {}", port.0)).parse().unwrap();
    assert_eq!(
        g.cmd(&format!("wait {gport2} 0")),
        "event",
        "new binding starts pending"
    );
    host.dom0.notify(port).unwrap();
    assert_eq!(
        g.cmd(&format!("wait {gport2} 2000")),
        "event",
        "notify reaches the new binding"
    );
}

#[test]
fn a_guest_that_jams_its_event_object_blocks_neither_dom0_nor_the_hv() {
    let host = Host::new();
    let mut g = host.guest(16);
    let gport: u32 = g.cmd("unbound 0").parse().unwrap();
    let port = host
        .dom0
        .bind_interdomain(DomId(g.domid), Port(gport))
        .unwrap();
    g.cmd(&format!("jam {gport}"));
    // More notifies than any event object holds, then the hv's own signal
    // to the guest's port (dom0 closing its end): none may block.
    let dom0 = host.dom0.clone();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let notified = (0..10_000).all(|_| dom0.notify(port).is_ok());
        let closed = dom0.close(port).is_ok();
        let served = dom0.list_domains().is_ok();
        let _ = done.send(notified && closed && served);
    });
    assert_eq!(
        finished.recv_timeout(std::time::Duration::from_secs(10)),
        Ok(true),
        "dom0 and the hv went on"
    );
    // The guest got its events all the same.
    assert_eq!(g.cmd(&format!("wait {gport} 0")), "event");
}

#[test]
fn a_killed_guest_raises_dom_exc_and_its_frames_return_only_after_dom0_unmaps_all() {
    let host = Host::new();
    let virq = host.dom0.bind_virq(abi::xen::VIRQ_DOM_EXC).unwrap();
    let virq_fd = host.dom0.pollable(virq).unwrap();
    let (_, free_before) = host.dom0.physinfo().unwrap();
    let mut g = host.guest(128);
    let gref: u32 = g.cmd("grant 0 7 rw").parse().unwrap();
    let spec = GrantSpec {
        domid: DomId(g.domid),
        gref: GrantRef(gref),
        writable: true,
    };
    let map = host.dom0.map_grants(&[spec]).unwrap();
    map.memory().write_bytes(0, b"still mine").unwrap();
    // A foreign mapping holds the domain too, with no pin.
    g.cmd("write 9 0 0badf00d");
    let foreign =
        platform::ForeignMemory::map_foreign(&host.dom0, DomId(g.domid), &[Pfn(9)]).unwrap();

    g.kill();
    assert!(wait_event(&virq_fd), "VIRQ_DOM_EXC fired");
    let doms = host.dom0.list_domains().unwrap();
    let d = doms
        .iter()
        .find(|d| d.domid.0 == g.domid)
        .expect("zombie listed");
    assert!(d.dying);
    let (_, free_zombie) = host.dom0.physinfo().unwrap();
    assert!(
        free_zombie < free_before,
        "a mapped zombie keeps its frames"
    );
    let mut buf = [0u8; 10];
    map.memory().read_bytes(0, &mut buf).unwrap();
    assert_eq!(&buf, b"still mine", "the mapping stays valid");
    assert!(
        host.dom0.map_grants(&[spec]).is_err(),
        "no new mappings of a dying domain"
    );

    drop(map);
    foreign.memory().read_bytes(0, &mut buf[..4]).unwrap();
    assert_eq!(
        buf[..4],
        [0x0b, 0xad, 0xf0, 0x0d],
        "the foreign mapping too"
    );
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        host.dom0.physinfo().unwrap().1 < free_before,
        "the foreign mapping still keeps the zombie's frames"
    );
    drop(foreign);
    eventually("frames to return", || {
        host.dom0.physinfo().unwrap().1 == free_before
    });
    assert!(host
        .dom0
        .list_domains()
        .unwrap()
        .iter()
        .all(|d| d.domid.0 != g.domid));
}

/// A second dom0 process (a probe, as a backend would be) that has mapped
/// `g`'s grants `maps` (ref, `rw` or `ro`) and keeps them mapped.
fn dom0_process_mapping(host: &Host, g: &common::Guest, maps: &[(u32, &str)]) -> common::Guest {
    let mut p = common::Guest::spawn();
    p.cmd(&format!("attach-dom0 {}", host.hv.socket().display()));
    for (r, how) in maps {
        p.cmd(&format!("map {} {r} {how}", g.domid));
    }
    p
}

/// `g`'s grant `gref` mapped read-only by dom0 here.
fn map_read_only(host: &Host, g: &common::Guest, gref: u32) -> sim::client::SimMapping {
    let spec = GrantSpec {
        domid: DomId(g.domid),
        gref: GrantRef(gref),
        writable: false,
    };
    host.dom0.map_grants(&[spec]).unwrap()
}

#[test]
fn a_dom0_process_that_dies_lets_go_of_the_grants_it_mapped() {
    let host = Host::new();
    let mut g = host.guest(16);
    let gref: u32 = g.cmd("grant 0 3 rw").parse().unwrap();
    let kept: u32 = g.cmd("grant 0 4 ro").parse().unwrap();
    // A second dom0 process (a backend) maps both grants, the first twice.
    let mut backend = dom0_process_mapping(&host, &g, &[(gref, "rw"), (gref, "ro"), (kept, "ro")]);
    // dom0 here maps one of them too, and keeps it.
    let ours = map_read_only(&host, &g, kept);
    assert_eq!(g.cmd(&format!("end {gref}")), "inuse");
    backend.kill();
    eventually("the dead backend's pins to go", || {
        g.cmd(&format!("end {gref}")).is_empty()
    });
    assert_eq!(
        g.cmd(&format!("end {kept}")),
        "inuse",
        "a live process's pin of the same grant stays"
    );
    drop(ours);
    assert_eq!(g.cmd(&format!("end {kept}")), "");
}

#[test]
fn a_dom0_process_that_hangs_up_loses_its_pins_once_not_twice() {
    let host = Host::new();
    let mut g = host.guest(16);
    let shared: u32 = g.cmd("grant 0 3 ro").parse().unwrap();
    let sentinel: u32 = g.cmd("grant 0 4 ro").parse().unwrap();
    let mut backend = dom0_process_mapping(&host, &g, &[(shared, "ro"), (sentinel, "ro")]);
    let ours = map_read_only(&host, &g, shared);
    // The backend hangs up alive; the hv drops its pins (the sentinel's
    // going shows it has), then the backend unmaps: no pin is dropped twice.
    backend.cmd("hangup");
    eventually("the hv to drop the hung-up backend's pins", || {
        g.cmd(&format!("end {sentinel}")).is_empty()
    });
    backend.cmd("unmap");
    assert_eq!(
        g.cmd(&format!("end {shared}")),
        "inuse",
        "dom0's own pin of the shared grant stays"
    );
    drop(ours);
    assert_eq!(g.cmd(&format!("end {shared}")), "");
}

#[test]
fn a_guest_that_shuts_down_stays_with_its_memory_until_destroyed() {
    let host = Host::new();
    let virq = host.dom0.bind_virq(abi::xen::VIRQ_DOM_EXC).unwrap();
    let virq_fd = host.dom0.pollable(virq).unwrap();
    let (_, free_before) = host.dom0.physinfo().unwrap();
    assert!(
        platform::Schedule::shutdown(&host.dom0, platform::ShutdownReason::Reboot).is_err(),
        "dom0 does not shut down through the sim"
    );
    let mut g = host.guest(64);
    g.cmd("shutdown 1");
    assert!(wait_event(&virq_fd), "VIRQ_DOM_EXC fired");
    // It runs no more: its calls are refused, a second shutdown too.
    assert!(!g.try_cmd("alloc 1").starts_with("ok"));
    assert!(!g.try_cmd("shutdown 0").starts_with("ok"));
    let _ = host.dom0.ack(virq);
    let domid = g.domid;
    let me = |host: &Host| {
        host.dom0
            .list_domains()
            .unwrap()
            .into_iter()
            .find(|d| d.domid.0 == domid)
    };
    let d = me(&host).unwrap();
    assert_eq!(d.shutdown, Some(platform::ShutdownReason::Reboot));
    assert!(!d.dying);
    // Its process ending is no death: it stays, its frames kept.
    g.kill();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let d = me(&host).unwrap();
    assert!(!d.dying && d.shutdown.is_some());
    assert!(host.dom0.physinfo().unwrap().1 < free_before);
    host.dom0.destroy_domain(DomId(domid)).unwrap();
    eventually("frames to return", || {
        host.dom0.physinfo().unwrap().1 == free_before
    });
    assert!(me(&host).is_none());
}

#[test]
fn destroy_kills_the_guest_process() {
    let host = Host::new();
    let mut g = host.guest(16);
    host.dom0.destroy_domain(DomId(g.domid)).unwrap();
    let status = g.child.wait().unwrap();
    assert!(!status.success());
    eventually("domain to go", || {
        host.dom0
            .list_domains()
            .unwrap()
            .iter()
            .all(|d| d.domid.0 != g.domid)
    });
}

/// The state letter of process `pid` (`/proc/<pid>/stat`'s third field).
fn process_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    after_name.trim_start().chars().next().unwrap()
}

#[test]
fn pause_stops_the_guest_process_until_unpause() {
    let host = Host::new();
    let mut g = host.guest(16);
    let (domid, pid) = (DomId(g.domid), g.child.id());
    let paused = |host: &Host| {
        host.dom0
            .list_domains()
            .unwrap()
            .iter()
            .find(|d| d.domid == domid)
            .map(|d| d.paused)
    };
    assert_eq!(paused(&host), Some(false));
    host.dom0.pause_domain(domid, true).unwrap();
    assert_eq!(paused(&host), Some(true));
    eventually("the guest to stop", || process_state(pid) == 'T');
    host.dom0.pause_domain(domid, false).unwrap();
    assert_eq!(paused(&host), Some(false));
    assert!(g.cmd("p2m 0").parse::<u64>().is_ok(), "it answers again");
    assert_ne!(process_state(pid), 'T');
    // Not dom0, nor a domain that is not there.
    assert!(host.dom0.pause_domain(DomId(0), true).is_err());
    assert!(host.dom0.pause_domain(DomId(999), true).is_err());
    host.dom0.destroy_domain(domid).unwrap();
    assert!(
        host.dom0.pause_domain(domid, true).is_err(),
        "nor a dead one"
    );
}

#[test]
fn tokens_are_one_time_and_guests_cannot_do_dom0_work() {
    let host = Host::new();
    let d = host
        .dom0
        .create_domain(&DomainConfig {
            pages: 16,
            grant_frames: 1,
        })
        .unwrap();
    let socket = host.hv.socket();
    let guest = sim::SimDomain::attach_guest(socket, &d.token).unwrap();
    assert_eq!(guest.domid(), d.domid);
    assert!(
        sim::SimDomain::attach_guest(socket, &d.token).is_err(),
        "token used twice"
    );
    assert!(
        sim::SimDomain::attach_guest(socket, &"00".repeat(32)).is_err(),
        "made-up token"
    );
    let err = guest
        .create_domain(&DomainConfig {
            pages: 16,
            grant_frames: 1,
        })
        .unwrap_err();
    assert!(matches!(err, platform::Error::PermissionDenied), "{err}");
    assert!(guest.bind_virq(abi::xen::VIRQ_DOM_EXC).is_err());
    let spec = GrantSpec {
        domid: DomId(0),
        gref: GrantRef(8),
        writable: false,
    };
    assert!(
        guest.map_grants(&[spec]).is_err(),
        "guests have no mapping privilege here"
    );
}

#[test]
fn a_malformed_message_closes_only_that_connection() {
    let host = Host::new();
    let raw = sim::sys::connect_seqpacket(host.hv.socket()).unwrap();
    sim::sys::send_msg(raw.as_raw_fd(), &[0xde, 0xad, 0xbe], &[]).unwrap();
    let mut buf = [0u8; 64];
    let n = sim::sys::recv_msg(raw.as_raw_fd(), &mut buf, &mut Vec::new()).unwrap();
    assert_eq!(n, 0, "the hypervisor hung up on the bad connection");
    // One message longer than any request (`MAX_MESSAGE`), short enough
    // for the socket to take whole: refused, not read in part.
    let mut g = host.guest(16);
    let big = vec![0u8; sim::sys::MAX_MESSAGE + 4096];
    let raw2 = sim::sys::connect_seqpacket(host.hv.socket()).unwrap();
    sim::sys::send_msg(raw2.as_raw_fd(), &big, &[]).unwrap();
    let n = sim::sys::recv_msg(raw2.as_raw_fd(), &mut buf, &mut Vec::new()).unwrap();
    assert_eq!(n, 0, "the hypervisor hung up on the oversized message");
    assert!(
        host.dom0.list_domains().is_ok(),
        "everyone else is still served"
    );
    assert!(g.cmd("alloc 1").parse::<u64>().is_ok(), "guests too");
}

#[test]
fn memory_exchange_gives_machine_contiguous_frames_below_the_limit() {
    let host = Host::new();
    let mut g = host.guest(64);
    let mfns: Vec<u64> = (0..8)
        .map(|p| g.cmd(&format!("p2m {p}")).parse().unwrap())
        .collect();
    assert!(
        mfns.windows(2).any(|w| w[1] != w[0] + 1),
        "shuffled frames are not contiguous"
    );
    // Below 16 MiB: a quarter of the test machine's 64 MiB.
    let first: u64 = g.cmd("exchange 0 8 24").parse().unwrap();
    for p in 0..8u64 {
        assert_eq!(
            g.cmd(&format!("p2m {p}")).parse::<u64>().unwrap(),
            first + p
        );
    }
    assert!(first + 8 <= (1 << 24) / 4096);
    // Below 8 KiB there are two frames, not eight; below 4 KiB none.
    let before = g.cmd("p2m 8");
    for bits in [13, 11] {
        let refused = g.try_cmd(&format!("exchange 8 8 {bits}"));
        assert!(refused.starts_with("err"), "{bits} bits: {refused}");
    }
    assert_eq!(
        g.cmd("p2m 8"),
        before,
        "a refused exchange keeps the frames"
    );
    g.cmd("write 3 0 0102");
    assert_eq!(
        g.cmd("read 3 0 2"),
        "0102",
        "the pages work on their new frames"
    );
    let _ = Pfn(0);
}

#[test]
fn own_memory_goes_from_pfn_to_address_and_back() {
    let host = Host::new();
    let pages = host.dom0.pages(Pfn(3), 2).unwrap();
    let at = |off, len| pages.subslice(off, len).unwrap();
    assert_eq!(host.dom0.pfn_of(&pages).unwrap(), (Pfn(3), 0));
    assert_eq!(host.dom0.pfn_of(&at(100, 8)).unwrap(), (Pfn(3), 100));
    assert_eq!(host.dom0.pfn_of(&at(4096 + 5, 1)).unwrap(), (Pfn(4), 5));
    let last = host.dom0.nr_pages() - 1;
    let end = host.dom0.pages(Pfn(last), 1).unwrap();
    assert_eq!(host.dom0.pfn_of(&end).unwrap(), (Pfn(last), 0));
    let elsewhere = abi::OwnedMem::new(4096);
    assert!(host.dom0.pfn_of(&elsewhere.as_volatile()).is_err());
    // Nothing at all is no page, even where a page would be.
    assert!(host.dom0.pfn_of(&at(8, 0)).is_err());
    assert!(host.dom0.pfn_of(&end.subslice(4096, 0).unwrap()).is_err());
}

#[test]
fn foreign_mapping_sees_the_guests_memory() {
    let host = Host::new();
    let mut g = host.guest(16);
    g.cmd("write 9 8 feedface");
    let map = platform::ForeignMemory::map_foreign(&host.dom0, DomId(g.domid), &[Pfn(9)]).unwrap();
    let mut buf = [0u8; 4];
    map.memory().read_bytes(8, &mut buf).unwrap();
    assert_eq!(buf, [0xfe, 0xed, 0xfa, 0xce]);
}

#[test]
fn exchanges_cannot_retire_more_frames_than_the_domain_has() {
    let host = Host::new();
    let mut g = host.guest(16);
    g.cmd("exchange 0 16 30");
    let answer = g.try_cmd("exchange 0 1 30");
    assert!(answer.starts_with("err"), "{answer}");
}

#[test]
fn idle_connections_are_capped_oldest_first_and_guests_still_attach() {
    let host = Host::new();
    let idle: Vec<_> = (0..100)
        .map(|_| sim::sys::connect_seqpacket(host.hv.socket()).unwrap())
        .collect();
    for c in &idle {
        sim::sys::set_nonblocking(c.as_raw_fd()).unwrap();
    }
    let mut refused = vec![false; idle.len()];
    let mut hung_up = 0;
    eventually("the hypervisor to refuse the excess", || {
        for (c, r) in idle.iter().zip(refused.iter_mut()) {
            let mut buf = [0u8; 16];
            if !*r
                && matches!(
                    sim::sys::recv_msg(c.as_raw_fd(), &mut buf, &mut Vec::new()),
                    Ok(0)
                )
            {
                *r = true;
                hung_up += 1;
            }
        }
        hung_up >= 30
    });
    assert!(
        hung_up >= 30,
        "only {hung_up} of 100 idle connections were refused"
    );
    assert!(host.dom0.list_domains().is_ok());
    let mut g = host.guest(16);
    assert_eq!(g.cmd("alloc 1"), "0", "a guest still attaches");
}

#[test]
fn a_guest_that_hangs_up_keeps_its_frames_until_its_process_exits() {
    let host = Host::new();
    let (_, free_before) = host.dom0.physinfo().unwrap();
    let mut g = host.guest(64);
    g.cmd("write 3 0 aa");
    g.cmd("hangup");
    eventually("the domain to die", || {
        host.dom0
            .list_domains()
            .unwrap()
            .iter()
            .any(|d| d.domid.0 == g.domid && d.dying)
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (_, free_zombie) = host.dom0.physinfo().unwrap();
    assert!(
        free_zombie < free_before,
        "the process still maps its memory"
    );
    assert_eq!(g.cmd("read 3 0 1"), "aa", "and still uses it");
    g.kill();
    eventually("frames to return", || {
        host.dom0.physinfo().unwrap().1 == free_before
    });
}

/// A domain's memory is zeroed as its frames return to the pool: the next
/// domain to get them sees none of it (and creating one writes nothing).
#[test]
fn a_new_domain_never_sees_an_old_ones_memory() {
    use platform::ForeignMemory;
    let host = Host::with(|c| c.machine_pages = 3072);
    let free_before = host.dom0.physinfo().unwrap().1;
    // All but 20 of the free frames (4 go to its grant table): the second
    // guest gets nearly all of the first one's.
    let pages = free_before - 4 - 20;
    let pfns: Vec<abi::Pfn> = (0..pages).map(Pfn).collect();
    let mut g = host.guest(pages);
    {
        let map = host.dom0.map_foreign(DomId(g.domid), &pfns).unwrap();
        map.memory().fill(0, pages as usize * 4096, 0xa5).unwrap();
    }
    g.kill();
    eventually("frames to return", || {
        host.dom0.physinfo().unwrap().1 == free_before
    });
    let g2 = host.guest(pages);
    let map = host.dom0.map_foreign(DomId(g2.domid), &pfns).unwrap();
    let mut page = vec![0u8; 4096];
    for p in 0..pages as usize {
        map.memory().read_bytes(p * 4096, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 0), "page {p} of the new domain");
    }
}

#[test]
fn a_confined_guest_runs_as_its_own_uid_and_cannot_become_dom0() {
    if !sim::confine::available() {
        eprintln!("skipped: confining a guest needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let host = Host::new();
    let d = host
        .dom0
        .create_domain(&DomainConfig {
            pages: 16,
            grant_frames: 4,
        })
        .unwrap();
    let id = host.dom0.guest_id(d.domid).expect("the hv confines guests");
    let dir = host.dir.join("guest");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(id), Some(id)).unwrap();
    // Whatever the umask: the guest must be able to reach the socket for
    // the check below that reaching it is still no way to be dom0.
    std::fs::set_permissions(&host.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The guest could reach the socket itself: it is still not dom0.
    std::fs::set_permissions(host.hv.socket(), std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(host.hv.socket().parent(), dir.parent());
    let probe = std::path::Path::new(env!("CARGO_BIN_EXE_dom0kit-sim-probe"));
    let jail = sim::confine::Jail::new(id, host.hv.socket(), probe, &dir).unwrap();
    let child = jail
        .spawn(|c| {
            c.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped());
        })
        .unwrap();
    let mut g = common::Guest::from_child(child);
    assert_eq!(g.cmd("ids"), format!("{id} {id} 0"), "uid, gid, no groups");
    assert_eq!(g.cmd("tty"), "refused 6", "no controlling terminal (ENXIO)");
    assert_eq!(
        g.cmd("fds"),
        "socket",
        "nothing inherited but the hv connection"
    );
    assert_eq!(
        g.cmd("env"),
        "PATH",
        "nothing of the launcher's environment"
    );
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        g.cmd("netns"),
        ours.display().to_string(),
        "a network of its own"
    );
    assert_eq!(
        g.cmd("inherited-dom0"),
        "refused 13",
        "a connection root made for the guest is not dom0's"
    );
    assert_eq!(
        g.cmd("dom0 ../hv.sock"),
        "refused 13",
        "nor is one the guest makes"
    );
    // It reached the socket from its own directory up: by the path dom0
    // uses, it finds nothing, as `/tmp` and `/run` are its own and empty.
    if ["/tmp", "/run"]
        .iter()
        .any(|p| host.hv.socket().starts_with(p))
    {
        let lost = g.try_cmd(&format!("dom0 {}", host.hv.socket().display()));
        assert!(lost.starts_with("err connect"), "{lost}");
    }
    // Its `/proc` shows its own processes, not dom0's.
    let own: u32 = g.cmd("survivor").parse().unwrap();
    assert_eq!(g.cmd(&format!("sees {own}")), "yes");
    assert_eq!(g.cmd(&format!("sees {}", std::process::id())), "no");
    assert_eq!(g.cmd("sees 1"), "no", "nor init");
    // Where an unconfined process may make a user namespace, the guest
    // may not.
    if host.guest(16).cmd("userns") == "made" {
        let userns = g.cmd("userns");
        assert!(
            userns.starts_with("refused") && userns.contains("Operation not permitted"),
            "no user namespace of its own: {userns}"
        );
    } else {
        eprintln!("user namespaces are refused here to everyone: not checked");
    }
    for shared in ["/tmp", "/run", "/dev/shm", "/var/tmp", "/dev/mqueue"] {
        use std::os::unix::fs::MetadataExt;
        let Ok(ours) = std::fs::metadata(shared) else {
            continue;
        };
        assert_ne!(
            g.cmd(&format!("dev {shared}")),
            ours.dev().to_string(),
            "{shared} is the guest's own"
        );
        if shared != "/dev/mqueue" {
            assert_eq!(g.cmd(&format!("entries {shared}")), "0", "{shared}");
        }
    }
    assert_eq!(
        g.cmd(&format!("signal {}", std::process::id())),
        "refused 1",
        "the guest cannot signal dom0's processes"
    );
    // Another domain's token is no use to it.
    let other = host
        .dom0
        .create_domain(&DomainConfig {
            pages: 16,
            grant_frames: 4,
        })
        .unwrap();
    let stolen = g.try_cmd(&format!("attach ../hv.sock {}", other.token));
    assert_eq!(stolen, "err permission denied");
    // Over the connection it was handed, it is its own domain.
    assert_eq!(
        g.cmd(&format!("inherited-attach {}", d.token)),
        d.domid.to_string()
    );
    g.domid = d.domid.0;
    g.cmd("write 3 0 6a61696c");
    let gref: u32 = g.cmd("grant 0 3 ro").parse().unwrap();
    let spec = GrantSpec {
        domid: d.domid,
        gref: GrantRef(gref),
        writable: false,
    };
    let map = host.dom0.map_grants(&[spec]).unwrap();
    let mut buf = [0u8; 4];
    map.memory().read_bytes(0, &mut buf).unwrap();
    assert_eq!(&buf, b"jail");
    drop(map);
    // Nothing of its uid outlives the domain: not even a process it
    // started in a group of its own.
    let survivor: i32 = g.cmd("survivor").parse().unwrap();
    host.dom0.destroy_domain(d.domid).unwrap();
    eventually("the guest's processes to be killed", || {
        std::fs::read_to_string(format!("/proc/{survivor}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    });
}
