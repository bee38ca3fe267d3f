//! The daemon's core with unprivileged (domain) connections, driven by
//! bytes: permissions, quotas and limits that only domains meet.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use xenstore::wire::{Decoder, Message, MsgType};
use xenstored::store::Caller;
use xenstored::Core;

struct Conn {
    id: u64,
    decoder: Decoder,
    next: u32,
}

fn conn(core: &mut Core, caller: Caller) -> Conn {
    Conn {
        id: core.connect(caller),
        decoder: Decoder::new(),
        next: 1,
    }
}

/// Sends one request; returns the reply as (type, payload), skipping events.
fn ask(
    core: &mut Core,
    c: &mut Conn,
    ty: MsgType,
    tx: u32,
    parts: &[&[u8]],
    value: Option<&[u8]>,
) -> (MsgType, Vec<u8>) {
    c.next += 1;
    let mut m = Message::with_strings(ty, c.next, tx, parts);
    if let Some(v) = value {
        m = m.with_value(v);
    }
    core.input(c.id, &m.encode().unwrap());
    let out = std::mem::take(core.output(c.id).unwrap());
    let msgs = c.decoder.feed(&out).unwrap();
    let r = msgs
        .into_iter()
        .find(|m| m.req_id == c.next)
        .expect("a reply");
    (r.ty, r.payload)
}

fn err(name: &str) -> (MsgType, Vec<u8>) {
    (MsgType::Error, format!("{name}\0").into_bytes())
}

fn ok() -> (MsgType, Vec<u8>) {
    (MsgType::Write, b"OK\0".to_vec())
}

const DOM5: Caller = Caller::domain(5);
const DOM7: Caller = Caller::domain(7);

#[test]
fn only_the_owner_changes_permissions() {
    let mut core = Core::new();
    let mut d0 = conn(&mut core, Caller::DOM0);
    let (mut d5, mut d7) = (conn(&mut core, DOM5), conn(&mut core, DOM7));
    assert_eq!(
        ask(
            &mut core,
            &mut d0,
            MsgType::Write,
            0,
            &[b"/shared"],
            Some(b"x")
        ),
        ok()
    );
    let r = ask(
        &mut core,
        &mut d0,
        MsgType::SetPerms,
        0,
        &[b"/shared", b"n5", b"b7"],
        None,
    );
    assert_eq!(r.0, MsgType::SetPerms);
    // Domain 7 may write the node but not hand it to a third domain.
    assert_eq!(
        ask(
            &mut core,
            &mut d7,
            MsgType::Write,
            0,
            &[b"/shared"],
            Some(b"y")
        ),
        ok()
    );
    let r = ask(
        &mut core,
        &mut d7,
        MsgType::SetPerms,
        0,
        &[b"/shared", b"n5", b"b7", b"r9"],
        None,
    );
    assert_eq!(r, err("EACCES"));
    // The owner may.
    let r = ask(
        &mut core,
        &mut d5,
        MsgType::SetPerms,
        0,
        &[b"/shared", b"n5", b"r7"],
        None,
    );
    assert_eq!(r.0, MsgType::SetPerms);
    let r = ask(
        &mut core,
        &mut d5,
        MsgType::SetPerms,
        0,
        &[b"@releaseDomain", b"r5"],
        None,
    );
    assert_eq!(r, err("EACCES"), "the special nodes belong to dom0");
}

#[test]
fn domains_meet_the_path_length_quota_and_dom0_does_not() {
    let mut core = Core::new();
    let mut d0 = conn(&mut core, Caller::DOM0);
    let mut d5 = conn(&mut core, DOM5);
    let long = format!("/local/domain/5/{}", "a".repeat(2049));
    let r = ask(
        &mut core,
        &mut d5,
        MsgType::Write,
        0,
        &[long.as_bytes()],
        Some(b"v"),
    );
    assert_eq!(r, err("EINVAL"));
    let r = ask(
        &mut core,
        &mut d0,
        MsgType::Write,
        0,
        &[long.as_bytes()],
        Some(b"v"),
    );
    assert_eq!(r, ok());
}

#[test]
fn a_domains_transaction_is_bounded() {
    let mut core = Core::new();
    domain_home(&mut core);
    let mut d5 = conn(&mut core, DOM5);
    let tx = start_transaction(&mut core, &mut d5);
    let mut refused = None;
    for i in 0..5000 {
        // Spread over directories, so that no node meets the size quota.
        let key = format!("d{}/k{}", i / 64, i % 64);
        let r = ask(
            &mut core,
            &mut d5,
            MsgType::Write,
            tx,
            &[key.as_bytes()],
            Some(b"v"),
        );
        if r != ok() {
            refused = Some((i, r));
            break;
        }
    }
    let (at, r) = refused.expect("the transaction was cut off");
    assert_eq!(r, err("ENOSPC"));
    // The transaction's 1024 nodes (each key, each new directory, the
    // home), not a node's size, cut it off.
    assert!((1000..=1024).contains(&at), "cut off after {at} writes");
}

#[test]
fn unwatch_matches_the_resolved_path() {
    let mut core = Core::new();
    let mut d0 = conn(&mut core, Caller::DOM0);
    assert_eq!(
        ask(&mut core, &mut d0, MsgType::Watch, 0, &[b"foo", b"t"], None).0,
        MsgType::Watch
    );
    let r = ask(
        &mut core,
        &mut d0,
        MsgType::Unwatch,
        0,
        &[b"/local/domain/0/foo", b"t"],
        None,
    );
    assert_eq!(r.0, MsgType::Unwatch);
    let r = ask(&mut core, &mut d0, MsgType::Watch, 0, &[b"/x", b"t"], None);
    assert_eq!(r.0, MsgType::Watch);
    let r = ask(&mut core, &mut d0, MsgType::Watch, 0, &[b"/x", b"t"], None);
    assert_eq!(r, err("EEXIST"), "the same watch twice");
}

#[test]
fn directory_part_ends_the_list_only_in_its_last_part() {
    let mut core = Core::new();
    let mut d0 = conn(&mut core, Caller::DOM0);
    for i in 0..2000 {
        let key = format!("/big/child-{i:05}");
        ask(
            &mut core,
            &mut d0,
            MsgType::Write,
            0,
            &[key.as_bytes()],
            Some(b""),
        );
    }
    let r = ask(&mut core, &mut d0, MsgType::Directory, 0, &[b"/big"], None);
    assert_eq!(r, err("E2BIG"));
    let (mut offset, mut names, mut parts) = (0usize, 0usize, 0);
    loop {
        let (ty, p) = ask(
            &mut core,
            &mut d0,
            MsgType::DirectoryPart,
            0,
            &[b"/big", offset.to_string().as_bytes()],
            None,
        );
        assert_eq!(ty, MsgType::DirectoryPart);
        parts += 1;
        let last = p.ends_with(b"\0\0");
        let body = &p[p.iter().position(|&b| b == 0).unwrap() + 1..];
        for n in body.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            names += 1;
            offset += n.len() + 1;
        }
        if last {
            break;
        }
        assert!(parts < 100);
    }
    assert_eq!(names, 2000);
    assert!(parts > 1, "the listing took several parts");
}

/// Starts a transaction on `c`; returns its id.
fn start_transaction(core: &mut Core, c: &mut Conn) -> u32 {
    let (ty, id) = ask(core, c, MsgType::TransactionStart, 0, &[b""], None);
    assert_eq!(ty, MsgType::TransactionStart);
    String::from_utf8_lossy(id.strip_suffix(b"\0").unwrap())
        .parse()
        .unwrap()
}

/// dom0 makes `/local/domain/5` and gives it to dom5.
fn domain_home(core: &mut Core) -> Conn {
    let mut d0 = conn(core, Caller::DOM0);
    let home: &[u8] = b"/local/domain/5";
    assert_eq!(
        ask(core, &mut d0, MsgType::Write, 0, &[home], Some(b"")),
        ok()
    );
    let r = ask(core, &mut d0, MsgType::SetPerms, 0, &[home, b"n5"], None);
    assert_eq!(r, (MsgType::SetPerms, b"OK\0".to_vec()));
    d0
}

#[test]
fn a_domains_nodes_meet_the_node_size_quota_and_dom0s_do_not() {
    let mut core = Core::new();
    let mut d0 = domain_home(&mut core);
    let mut d5 = conn(&mut core, DOM5);
    let write = |core: &mut Core, c: &mut Conn, path: &str, v: &[u8]| {
        ask(core, c, MsgType::Write, 0, &[path.as_bytes()], Some(v))
    };
    // 24 bytes of header and 8 for the one permission entry: a node must
    // stay below 2048 bytes, so 2015 bytes of value fit and 2016 do not.
    let x = "/local/domain/5/x";
    assert_eq!(write(&mut core, &mut d5, x, &[b'v'; 2015]), ok());
    assert_eq!(write(&mut core, &mut d5, x, &[b'v'; 2016]), err("ENOSPC"));
    assert_eq!(write(&mut core, &mut d0, x, &[b'v'; 4000]), ok());
    // Creating is all or nothing: a refused leaf leaves no parents behind.
    let deep = "/local/domain/5/a/b/c";
    assert_eq!(
        write(&mut core, &mut d5, deep, &[b'v'; 3000]),
        err("ENOSPC")
    );
    let r = ask(
        &mut core,
        &mut d5,
        MsgType::Read,
        0,
        &[b"/local/domain/5/a"],
        None,
    );
    assert_eq!(r, err("ENOENT"));
    // The children's names count: a directory fills up.
    let mut refused = None;
    for i in 0..1000 {
        let r = write(
            &mut core,
            &mut d5,
            &format!("/local/domain/5/d/{i:08}"),
            b"",
        );
        if r != ok() {
            refused = Some((i, r));
            break;
        }
    }
    let (at, r) = refused.expect("the directory filled up");
    assert_eq!(r, err("ENOSPC"));
    // (2047 - 32) / 9 names of 8 bytes and their NULs.
    assert_eq!(at, 223);
    // dom0 may fill it past the quota; dom5 then adds no child to it, but
    // still writes the values below it and removes children from it.
    let d = "/local/domain/5/d";
    assert_eq!(
        write(&mut core, &mut d0, &format!("{d}/z0000000"), b""),
        ok()
    );
    assert_eq!(
        write(&mut core, &mut d0, &format!("{d}/z0000001"), b""),
        ok()
    );
    assert_eq!(
        write(&mut core, &mut d5, &format!("{d}/y"), b""),
        err("ENOSPC")
    );
    assert_eq!(
        write(&mut core, &mut d5, &format!("{d}/00000001"), b"1"),
        ok()
    );
    let rm = |core: &mut Core, c: &mut Conn, path: &str| {
        ask(core, c, MsgType::Rm, 0, &[path.as_bytes()], None)
    };
    let r = rm(&mut core, &mut d5, &format!("{d}/00000000"));
    assert_eq!(r, (MsgType::Rm, b"OK\0".to_vec()));
    // 224 children again (2048 bytes): still full; one fewer has room.
    assert_eq!(
        write(&mut core, &mut d5, &format!("{d}/y"), b""),
        err("ENOSPC")
    );
    let r = rm(&mut core, &mut d5, &format!("{d}/00000002"));
    assert_eq!(r, (MsgType::Rm, b"OK\0".to_vec()));
    assert_eq!(write(&mut core, &mut d5, &format!("{d}/y"), b""), ok());
    // The quota holds inside a transaction as well.
    let tx = start_transaction(&mut core, &mut d5);
    let r = ask(
        &mut core,
        &mut d5,
        MsgType::Write,
        tx,
        &[x.as_bytes()],
        Some(&[b'v'; 2016]),
    );
    assert_eq!(r, err("ENOSPC"));
}

#[test]
fn a_domain_sets_at_most_five_permission_entries() {
    let mut core = Core::new();
    let mut d0 = domain_home(&mut core);
    let mut d5 = conn(&mut core, DOM5);
    let home: &[u8] = b"/local/domain/5";
    let five: [&[u8]; 6] = [home, b"n5", b"r1", b"r2", b"r3", b"r4"];
    let r = ask(&mut core, &mut d5, MsgType::SetPerms, 0, &five, None);
    assert_eq!(r, (MsgType::SetPerms, b"OK\0".to_vec()));
    let six: [&[u8]; 7] = [home, b"n5", b"r1", b"r2", b"r3", b"r4", b"r6"];
    let r = ask(&mut core, &mut d5, MsgType::SetPerms, 0, &six, None);
    assert_eq!(r, err("ENOSPC"));
    // For the special nodes too, before their own permissions are looked at.
    let special: [&[u8]; 7] = [b"@releaseDomain", b"n5", b"r1", b"r2", b"r3", b"r4", b"r6"];
    let r = ask(&mut core, &mut d5, MsgType::SetPerms, 0, &special, None);
    assert_eq!(r, err("ENOSPC"));
    // A transaction that does not exist is looked up first, as in C.
    let r = ask(&mut core, &mut d5, MsgType::SetPerms, 99, &six, None);
    assert_eq!(r, err("ENOENT"));
    let r = ask(&mut core, &mut d0, MsgType::SetPerms, 0, &six, None);
    assert_eq!(r, (MsgType::SetPerms, b"OK\0".to_vec()));
}

#[test]
fn a_domain_owns_at_most_1000_nodes() {
    let mut core = Core::new();
    let mut d0 = domain_home(&mut core);
    let mut d5 = conn(&mut core, DOM5);
    let write = |core: &mut Core, c: &mut Conn, tx: u32, path: &str| {
        ask(core, c, MsgType::Write, tx, &[path.as_bytes()], Some(b"v"))
    };
    // Ten directories of up to 100 leaves (one directory of 1000 would
    // meet the node-size quota first). The home counts as one.
    let mut made = 0;
    'fill: for i in 0..10 {
        for j in 0..100 {
            let r = write(&mut core, &mut d5, 0, &format!("/local/domain/5/d{i}/{j}"));
            if r != ok() {
                assert_eq!(r, err("ENOSPC"));
                break 'fill;
            }
            made += 1;
        }
    }
    // 1 home + 10 directories + 989 leaves = 1000.
    assert_eq!(made, 989);
    let rm = |core: &mut Core, c: &mut Conn, path: &str| {
        ask(core, c, MsgType::Rm, 0, &[path.as_bytes()], None)
    };
    assert_eq!(
        rm(&mut core, &mut d5, "/local/domain/5/d9/88").0,
        MsgType::Rm
    );
    // At 999: one more node fits, two (a directory and its leaf) do not,
    // and the refused write leaves nothing behind.
    assert_eq!(
        write(&mut core, &mut d5, 0, "/local/domain/5/e/0"),
        err("ENOSPC")
    );
    let r = ask(
        &mut core,
        &mut d5,
        MsgType::Read,
        0,
        &[b"/local/domain/5/e"],
        None,
    );
    assert_eq!(r, err("ENOENT"));
    assert_eq!(write(&mut core, &mut d5, 0, "/local/domain/5/d9/88"), ok());
    // In a transaction the nodes are counted at commit, as C's `>=`: at
    // 999, a transaction that makes one fails.
    assert_eq!(
        rm(&mut core, &mut d5, "/local/domain/5/d9/88").0,
        MsgType::Rm
    );
    let t = start_transaction(&mut core, &mut d5);
    assert_eq!(write(&mut core, &mut d5, t, "/local/domain/5/d9/88"), ok());
    let end = ask(
        &mut core,
        &mut d5,
        MsgType::TransactionEnd,
        t,
        &[b"T"],
        None,
    );
    assert_eq!(end, err("ENOSPC"));
    // Writing existing nodes in one is fine.
    let t = start_transaction(&mut core, &mut d5);
    assert_eq!(write(&mut core, &mut d5, t, "/local/domain/5/d0/0"), ok());
    let end = ask(
        &mut core,
        &mut d5,
        MsgType::TransactionEnd,
        t,
        &[b"T"],
        None,
    );
    assert_eq!(end, (MsgType::TransactionEnd, b"OK\0".to_vec()));
    // dom0 is not limited, even below the domain's nodes (which the
    // domain then owns).
    assert_eq!(write(&mut core, &mut d0, 0, "/local/domain/5/d9/88"), ok());
    assert_eq!(write(&mut core, &mut d0, 0, "/local/domain/5/d9/89"), ok());
    assert_eq!(
        write(&mut core, &mut d5, 0, "/local/domain/5/d9/90"),
        err("ENOSPC")
    );
    // Another domain is not affected.
    let mut d7 = conn(&mut core, DOM7);
    let home7: &[u8] = b"/local/domain/7";
    ask(&mut core, &mut d0, MsgType::Write, 0, &[home7], Some(b""));
    ask(
        &mut core,
        &mut d0,
        MsgType::SetPerms,
        0,
        &[home7, b"n7"],
        None,
    );
    assert_eq!(write(&mut core, &mut d7, 0, "/local/domain/7/x"), ok());
}

#[test]
fn watch_and_transaction_quotas_are_c_4_17s_and_spare_dom0() {
    let mut core = Core::new();
    let mut d0 = conn(&mut core, Caller::DOM0);
    let mut d5 = conn(&mut core, DOM5);
    let watch = |core: &mut Core, c: &mut Conn, i: usize| {
        let token = format!("t{i}");
        ask(core, c, MsgType::Watch, 0, &[b"/w", token.as_bytes()], None)
    };
    // C checks "more than the quota" before adding: 129 watches fit.
    for i in 0..129 {
        assert_eq!(watch(&mut core, &mut d5, i).0, MsgType::Watch, "watch {i}");
    }
    assert_eq!(watch(&mut core, &mut d5, 129), err("E2BIG"));
    for i in 0..300 {
        assert_eq!(watch(&mut core, &mut d0, i).0, MsgType::Watch);
    }
    // The same for transactions: 11 open, the 12th refused.
    for _ in 0..11 {
        start_transaction(&mut core, &mut d5);
    }
    let r = ask(
        &mut core,
        &mut d5,
        MsgType::TransactionStart,
        0,
        &[b""],
        None,
    );
    assert_eq!(r, err("ENOSPC"));
    for _ in 0..50 {
        start_transaction(&mut core, &mut d0);
    }
}

#[test]
fn get_and_set_quota_are_dom0s() {
    let mut core = Core::new();
    let mut d0 = conn(&mut core, Caller::DOM0);
    let mut d5 = conn(&mut core, DOM5);
    let quota = |core: &mut Core, c: &mut Conn, ty: MsgType, parts: &[&[u8]]| {
        ask(core, c, ty, 0, parts, None)
    };
    let names = quota(&mut core, &mut d0, MsgType::GetQuota, &[]);
    assert_eq!(
        names,
        (
            MsgType::GetQuota,
            b"nodes watches transactions transaction-nodes node-permissions path-max node-size outstanding memory\0"
                .to_vec()
        )
    );
    let get =
        |core: &mut Core, c: &mut Conn, name: &[u8]| quota(core, c, MsgType::GetQuota, &[name]);
    assert_eq!(
        get(&mut core, &mut d0, b"nodes"),
        (MsgType::GetQuota, b"1000\0".to_vec())
    );
    assert_eq!(
        get(&mut core, &mut d0, b"node-size"),
        (MsgType::GetQuota, b"2048\0".to_vec())
    );
    assert_eq!(
        get(&mut core, &mut d0, b"outstanding"),
        (MsgType::GetQuota, b"20\0".to_vec())
    );
    assert_eq!(
        get(&mut core, &mut d0, b"memory"),
        (MsgType::GetQuota, b"2621440\0".to_vec())
    );
    assert_eq!(get(&mut core, &mut d0, b"bytes"), err("EINVAL"));
    let set =
        |core: &mut Core, c: &mut Conn, parts: &[&[u8]]| quota(core, c, MsgType::SetQuota, parts);
    assert_eq!(
        set(&mut core, &mut d0, &[b"nodes", b"20"]),
        (MsgType::SetQuota, b"OK\0".to_vec())
    );
    assert_eq!(
        get(&mut core, &mut d0, b"nodes"),
        (MsgType::GetQuota, b"20\0".to_vec())
    );
    assert_eq!(set(&mut core, &mut d0, &[b"nodes", b"0"]), err("EINVAL"));
    assert_eq!(set(&mut core, &mut d0, &[b"nodes", b"x"]), err("EINVAL"));
    assert_eq!(set(&mut core, &mut d0, &[b"bogus", b"3"]), err("EINVAL"));
    // A domain that is not introduced has no quotas of its own.
    assert_eq!(
        set(&mut core, &mut d0, &[b"9", b"nodes", b"3"]),
        err("ENOENT")
    );
    assert_eq!(
        quota(&mut core, &mut d0, MsgType::GetQuota, &[b"9", b"nodes"]),
        err("ENOENT")
    );
    assert_eq!(
        quota(&mut core, &mut d0, MsgType::GetQuota, &[b"x", b"nodes"]),
        err("EINVAL")
    );
    // Domains may not look.
    assert_eq!(get(&mut core, &mut d5, b"nodes"), err("EACCES"));
    assert_eq!(set(&mut core, &mut d5, &[b"nodes", b"5000"]), err("EACCES"));
}
