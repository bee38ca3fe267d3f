//! Differential test against `xen/io/ring.h` itself: `tests/c/ring_harness.c`
//! applies the C macros to a shared page, this test applies our ring to
//! another, both following the same generated scripts; every step's result
//! and the final bytes of the page must be identical.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use abi::blkif::{BlkifRequest, BlkifResponse, BLKIF_MAX_SEGMENTS_PER_REQUEST};
use abi::ring::{ring_bytes, SRING_REQ_EVENT, SRING_REQ_PROD, SRING_RSP_EVENT, SRING_RSP_PROD};
use abi::{OwnedMem, Pod, RingIdx, VolatileSlice};
use ring::{BackRing, FrontRing, RingError};

type Front<'a> = FrontRing<VolatileSlice<'a>, BlkifRequest, BlkifResponse>;
type Back<'a> = BackRing<VolatileSlice<'a>, BlkifRequest, BlkifResponse>;

/// xorshift64*: a deterministic generator, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn request(id: u64) -> BlkifRequest {
    let mut r = BlkifRequest::zeroed();
    r.operation = (id % 3) as u8;
    r.nr_segments = (id % 12) as u8;
    r.handle = (id * 7) as u16;
    r.id = id;
    r.sector_number = id * 3 + 1;
    for (i, s) in r.seg.iter_mut().enumerate() {
        s.gref = (id + i as u64) as u32;
        s.first_sect = i as u8;
        s.last_sect = 7;
    }
    r
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        write!(s, "{b:02x}").unwrap();
    }
    s
}

/// Generates one script, running it on our ring as it goes; returns the
/// script and the output the C harness must print for it.
fn generate(rng: &mut Rng, script: &mut String, out: &mut String) {
    let order = [0, 0, 1, 2, 4][rng.below(5) as usize];
    let start = match rng.below(3) {
        0 => 0,
        1 => u32::MAX - rng.below(40) as u32,
        _ => rng.next() as u32,
    };
    let mem = OwnedMem::new(ring_bytes(order));
    let shared = mem.as_volatile();
    shared.fill(0, mem.len(), 0xa5).unwrap();
    let (mut front, mut back) = if start == 0 {
        (Front::init(shared).unwrap(), Back::init(shared).unwrap())
    } else {
        shared
            .store_u32(SRING_REQ_PROD, start, Ordering::Relaxed)
            .unwrap();
        shared
            .store_u32(SRING_RSP_PROD, start, Ordering::Relaxed)
            .unwrap();
        shared
            .store_u32(SRING_REQ_EVENT, start.wrapping_add(1), Ordering::Relaxed)
            .unwrap();
        shared
            .store_u32(SRING_RSP_EVENT, start.wrapping_add(1), Ordering::Relaxed)
            .unwrap();
        (
            Front::attach(shared, RingIdx(start)).unwrap(),
            Back::attach(shared, RingIdx(start)).unwrap(),
        )
    };
    writeln!(script, "reset {order} {start}").unwrap();
    writeln!(out, "size {}", front.size()).unwrap();
    let mut taken = std::collections::VecDeque::new();
    let mut next_id = rng.next() >> 20;
    let steps = 20 + rng.below(300);
    for _ in 0..steps {
        match rng.below(8) {
            0 | 1 => {
                // Bursts, so that small rings fill up.
                for _ in 0..1 + rng.below(12) {
                    writeln!(script, "req {next_id}").unwrap();
                    match front.put_request(&request(next_id)) {
                        Ok(()) => out.push_str("ok\n"),
                        Err(RingError::Full) => out.push_str("full\n"),
                        Err(e) => panic!("{e}"),
                    }
                    next_id += 1;
                }
            }
            2 => {
                script.push_str("pushreq\n");
                writeln!(out, "notify {}", u8::from(front.push_requests().unwrap())).unwrap();
            }
            3 => {
                for _ in 0..1 + rng.below(8) {
                    script.push_str("takereq\n");
                    match back.take_request().unwrap() {
                        None => out.push_str("none\n"),
                        Some(r) => {
                            let [op, nseg, handle, sector, id] = [
                                u64::from(r.operation),
                                u64::from(r.nr_segments),
                                u64::from(r.handle),
                                r.sector_number,
                                r.id,
                            ];
                            let last = r.seg[BLKIF_MAX_SEGMENTS_PER_REQUEST - 1].gref;
                            writeln!(
                                out,
                                "req {id} {sector} {op} {nseg} {handle} {} {last}",
                                r.seg[0].gref
                            )
                            .unwrap();
                            taken.push_back(id);
                        }
                    }
                }
            }
            4 => {
                for _ in 0..1 + rng.below(8) {
                    let Some(id) = taken.pop_front() else { break };
                    let status = [0i16, -1, -2][rng.below(3) as usize];
                    writeln!(script, "rsp {id} {}", status as u16).unwrap();
                    let mut rsp = BlkifResponse::zeroed();
                    rsp.id = id;
                    rsp.operation = (id % 3) as u8;
                    rsp.status = status;
                    back.put_response(&rsp).unwrap();
                    out.push_str("ok\n");
                }
            }
            5 => {
                script.push_str("pushrsp\n");
                writeln!(out, "notify {}", u8::from(back.push_responses().unwrap())).unwrap();
            }
            6 => {
                for _ in 0..1 + rng.below(8) {
                    script.push_str("takersp\n");
                    match front.take_response().unwrap() {
                        None => out.push_str("none\n"),
                        Some(r) => {
                            let (id, status) = (r.id, r.status);
                            writeln!(out, "rsp {id} {} {status}", r.operation).unwrap();
                        }
                    }
                }
            }
            _ => {
                if rng.below(2) == 0 {
                    script.push_str("finalreq\n");
                    let more = back.final_check_for_requests().unwrap();
                    writeln!(out, "more {}", u8::from(more)).unwrap();
                } else {
                    script.push_str("finalrsp\n");
                    let more = front.final_check_for_responses().unwrap();
                    writeln!(out, "more {}", u8::from(more)).unwrap();
                }
            }
        }
    }
    script.push_str("dump\n");
    writeln!(
        out,
        "pvt {} {} {} {}",
        front.req_prod_pvt().0,
        front.rsp_cons().0,
        back.rsp_prod_pvt().0,
        back.req_cons().0
    )
    .unwrap();
    writeln!(out, "mem {}", hex(&mem.to_vec())).unwrap();
}

fn build_harness() -> PathBuf {
    let header = Path::new("/usr/include/xen/io/ring.h");
    assert!(
        header.exists(),
        "{} is missing: install libxen-dev (the README's test command does)",
        header.display()
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/ring_harness.c");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let exe = dir.join("ring_harness");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-O2", "-std=gnu11", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

#[test]
fn rust_ring_leaves_the_same_state_as_the_c_macros() {
    let exe = build_harness();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut script, mut expected) = (String::new(), String::new());
    for _ in 0..300 {
        generate(&mut rng, &mut script, &mut expected);
    }
    let mut child = Command::new(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "harness: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    let (got, expected): (Vec<_>, Vec<_>) = (got.lines().collect(), expected.lines().collect());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(
            g == e,
            "line {i} differs:\n  C:    {}\n  Rust: {}",
            &g[..g.len().min(200)],
            &e[..e.len().min(200)]
        );
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "C and Rust printed as many lines"
    );
    assert!(expected.iter().filter(|l| l.starts_with("req ")).count() > 1000);
    assert!(expected.contains(&"full"), "some rings filled up");
}
