//! Differential test: generated sequences of requests (reads, writes,
//! directories, permissions, transactions on two connections, watches,
//! invalid paths and types) go to our daemon and to Debian's C xenstored;
//! every reply (payload or error name) and every watch event must be the
//! same. Transaction ids are compared by their order of appearance.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{start_c_xenstored, start_our_xenstored};
use xenstore::client::{Client, ClientError, Tx, WatchEvent};
use xenstore::wire::MsgType;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[(self.next() % v.len() as u64) as usize]
    }
}

const PATHS: &[&str] = &[
    "/d",
    "/d/a",
    "/d/a/b",
    "/d/c",
    "/d/c/e",
    "/d/c/e/f",
    "/local/domain/0/x",
    "rel/y",
    "rel",
    "/",
    "/d//bad",
    "/d/bad char",
    "/d/trail/",
    "@releaseDomain",
    "/d/a/b/c/d/e",
];
const VALUES: &[&[u8]] = &[b"", b"1", b"two words", b"nul\0inside", b"\xff\x01"];
const PERMS: &[&[&[u8]]] = &[&[b"n0"], &[b"r0"], &[b"b0", b"r0"], &[b"w0"], &[b"x1"], &[]];

/// One side: two client connections and a watcher.
struct Side {
    conns: [Client; 2],
    watcher: Client,
    /// Open transactions per connection, oldest first.
    txs: [Vec<Tx>; 2],
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Reply(Vec<u8>),
    Error(String),
    TxStarted(usize),
}

fn nul(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

impl Side {
    fn new(socket: &Path) -> Side {
        let c = || Client::connect(socket).unwrap();
        let mut watcher = c();
        for w in ["/d", "/d/c/e", "rel", "/local/domain"] {
            watcher.watch(w, &format!("tok-{w}")).unwrap();
        }
        Side {
            conns: [c(), c()],
            watcher,
            txs: [Vec::new(), Vec::new()],
        }
    }

    fn events(&mut self) -> Vec<WatchEvent> {
        // A request makes the events queued before its reply arrive first.
        self.watcher.get_domain_path(0).unwrap();
        let mut v = Vec::new();
        while let Some(e) = self.watcher.pending_event() {
            v.push(e);
        }
        v
    }
}

/// A generated request, the same for both sides.
#[derive(Clone, Debug)]
struct Step {
    conn: usize,
    ty: MsgType,
    /// Which of the connection's open transactions (if any) to use.
    tx: Option<usize>,
    payload: Vec<u8>,
}

fn generate(rng: &mut Rng, open: &[usize; 2], transactions: bool) -> Step {
    let conn = (rng.next() % 2) as usize;
    let tx = (open[conn] > 0 && rng.next() % 3 == 0).then(|| (rng.next() as usize) % open[conn]);
    let path = rng.pick(PATHS).as_bytes();
    let (ty, payload) = match rng.next() % 16 {
        0..=2 => (MsgType::Write, {
            let mut p = nul(&[path]);
            p.extend_from_slice(rng.pick(VALUES));
            p
        }),
        3..=4 => (MsgType::Read, nul(&[path])),
        5 => (MsgType::Mkdir, nul(&[path])),
        6 => (MsgType::Rm, nul(&[path])),
        7 => (MsgType::Directory, nul(&[path])),
        8 => (MsgType::GetPerms, nul(&[path])),
        9 => (MsgType::SetPerms, {
            let mut p = nul(&[path]);
            p.extend(nul(rng.pick(PERMS)));
            p
        }),
        10..=11 if transactions => (MsgType::TransactionStart, vec![0]),
        10..=11 => (MsgType::Read, nul(&[path])),
        12..=13 if open[conn] > 0 => {
            let which = (rng.next() as usize) % open[conn];
            let commit: &[u8] = if rng.next() % 4 == 0 { b"F" } else { b"T" };
            return Step {
                conn,
                ty: MsgType::TransactionEnd,
                tx: Some(which),
                payload: nul(&[commit]),
            };
        }
        14 => (
            MsgType::GetDomainPath,
            nul(&[rng.pick(&[&b"0"[..], b"7", b"x"])]),
        ),
        _ => (MsgType::Unknown(rng.pick(&[20u32, 99, 30])), Vec::new()),
    };
    let tx = if ty == MsgType::TransactionStart {
        None
    } else {
        tx
    };
    Step {
        conn,
        ty,
        tx,
        payload,
    }
}

fn apply(side: &mut Side, s: &Step) -> Outcome {
    let tx = s.tx.map_or(Tx::NONE, |i| side.txs[s.conn][i]);
    let r = side.conns[s.conn].request(s.ty, tx, s.payload.clone());
    match (s.ty, r) {
        (MsgType::TransactionStart, Ok(p)) => {
            let id: u32 = String::from_utf8_lossy(p.strip_suffix(b"\0").unwrap_or(&p))
                .parse()
                .unwrap();
            side.txs[s.conn].push(Tx(id));
            Outcome::TxStarted(side.txs[s.conn].len() - 1)
        }
        (ty, r) => {
            if ty == MsgType::TransactionEnd {
                if let Some(i) = s.tx {
                    side.txs[s.conn].remove(i);
                }
            }
            match r {
                Ok(p) => Outcome::Reply(p),
                Err(ClientError::Xs(e)) => Outcome::Error(e.name().to_string()),
                Err(e) => Outcome::Error(format!("client: {e}")),
            }
        }
    }
}

#[test]
fn generated_requests_get_the_same_replies_and_events_from_both_daemons() {
    compare("diff", false);
}

/// With up to eight transactions open on each connection, interleaved.
#[test]
fn generated_requests_with_transactions_get_the_same_replies_from_both_daemons() {
    compare("diff-tx", true);
}

fn compare(name: &str, transactions: bool) {
    let peer = start_c_xenstored(name);
    let ours = start_our_xenstored(name);
    let mut differences = Vec::new();
    let mut steps_run = 0;
    let seeds = std::env::var("DOM0KIT_DIFF_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24u64);
    for seed in 1..=seeds {
        // Each sequence starts from a clean /d and /local/domain/0.
        for s in [&peer.socket, &ours.socket] {
            let mut c = Client::connect(s).unwrap();
            for p in ["/d", "/local/domain/0/x", "/local/domain/0/rel"] {
                let _ = c.rm(Tx::NONE, p);
            }
        }
        let mut c_side = Side::new(&peer.socket);
        let mut o_side = Side::new(&ours.socket);
        assert_eq!(c_side.events(), o_side.events(), "initial watch events");
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut log = Vec::new();
        for _ in 0..120 {
            let open = [c_side.txs[0].len(), c_side.txs[1].len()];
            let step = generate(&mut rng, &open, transactions);
            // At most 8 open per connection: a sequence is about what they
            // do, not how many there are (neither daemon limits dom0's).
            if step.ty == MsgType::TransactionStart && open[step.conn] >= 8 {
                continue;
            }
            let c = apply(&mut c_side, &step);
            let o = apply(&mut o_side, &step);
            let (ce, oe) = (c_side.events(), o_side.events());
            steps_run += 1;
            log.push(format!(
                "conn {} {:?} tx={:?} {:?} -> {:?}",
                step.conn,
                step.ty,
                step.tx,
                String::from_utf8_lossy(&step.payload),
                c
            ));
            if c != o || ce != oe {
                differences.push(format!(
                    "seed {seed}, after:\n    {}\n  C:    {c:?} {ce:?}\n  ours: {o:?} {oe:?}",
                    log.join("\n    ")
                ));
                break;
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} sequences differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
    assert!(steps_run > 1000, "only {steps_run} steps ran");
}
