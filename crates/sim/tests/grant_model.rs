//! The grant-table state machine against a model: grant, map ro/rw, copy
//! (the grant claimed for the duration), unmap, end access and domain death, on one
//! machine shared by three domains, including every refusal.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use abi::grant_table::{GTF_READING, GTF_WRITING};
use abi::{DomId, GrantRef, Mfn, OwnedMem, Pfn};
use platform::GntStatus;
use proptest::prelude::*;
use sim::grant::{GrantTableView, Hypervisor};
use sim::layout::{self, slot, Control};

const DOMS: u16 = 2;
const PAGES: u64 = 4;
const REFS: u32 = 3;

/// Machine memory: domain d owns frames 16*d .. 16*d+PAGES as pfns 0..PAGES,
/// and grant frame 16*d + 8. Domain ids 1..=DOMS.
struct Machine {
    control: OwnedMem,
    machine: OwnedMem,
    geometry: Control,
}

fn mfn_of(dom: u16, pfn: u64) -> Mfn {
    Mfn(16 * u64::from(dom) + pfn)
}

impl Machine {
    fn new() -> Machine {
        let geometry = Control {
            machine_pages: 16 * (u64::from(DOMS) + 1),
            max_slots: 4,
        };
        let control = OwnedMem::new(geometry.len());
        let machine = OwnedMem::new(geometry.machine_pages as usize * 4096);
        let c = control.as_volatile();
        for d in 1..=DOMS {
            let s = geometry.slot(u32::from(d));
            c.store_u16(geometry.slot_of(d), d + 1, Ordering::Relaxed)
                .unwrap();
            c.store_u32(s + slot::DOMID, u32::from(d), Ordering::Relaxed)
                .unwrap();
            c.store_u64(s + slot::NR_PAGES, PAGES, Ordering::Relaxed)
                .unwrap();
            c.store_u32(s + slot::NR_GRANT_FRAMES, 1, Ordering::Relaxed)
                .unwrap();
            c.store_u64(s + slot::GRANT_FRAMES, mfn_of(d, 8).0, Ordering::Relaxed)
                .unwrap();
            for p in 0..PAGES {
                c.store_u64(
                    s + slot::P2M + p as usize * 8,
                    mfn_of(d, p).0,
                    Ordering::Relaxed,
                )
                .unwrap();
            }
            c.store_u32(s + slot::STATE, layout::STATE_ALIVE, Ordering::Relaxed)
                .unwrap();
        }
        Machine {
            control,
            machine,
            geometry,
        }
    }

    fn hv(&self) -> Hypervisor<'_> {
        Hypervisor::new(
            self.control.as_volatile(),
            self.machine.as_volatile(),
            self.geometry,
        )
    }

    fn table(&self, dom: u16) -> GrantTableView<'_> {
        let off = mfn_of(dom, 8).0 as usize * 4096;
        // Only REFS entries are used; the view covers the whole frame.
        GrantTableView::new(self.machine.as_volatile().subslice(off, 4096).unwrap())
    }

    fn kill(&self, dom: u16) {
        let s = self.geometry.slot(u32::from(dom));
        self.control
            .as_volatile()
            .store_u32(s + slot::STATE, layout::STATE_DYING, Ordering::Release)
            .unwrap();
    }
}

#[derive(Clone, Debug)]
enum Op {
    Grant {
        granter: u16,
        gref: u32,
        to: u16,
        pfn: u64,
        ro: bool,
    },
    Map {
        granter: u16,
        gref: u32,
        mapper: u16,
        rw: bool,
    },
    Unmap {
        which: usize,
    },
    Copy {
        granter: u16,
        gref: u32,
        mapper: u16,
        write: bool,
    },
    End {
        granter: u16,
        gref: u32,
    },
    Kill {
        dom: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let dom = 1..=DOMS;
    // Some refs beyond the table, some pfns beyond the P2M.
    let gref = prop_oneof![9 => 0..REFS, 1 => Just(600u32)];
    let pfn = prop_oneof![9 => 0..PAGES, 1 => Just(PAGES + 3)];
    prop_oneof![
        2 => (dom.clone(), gref.clone(), dom.clone(), pfn, any::<bool>())
            .prop_map(|(granter, gref, to, pfn, ro)| Op::Grant { granter, gref, to, pfn, ro }),
        4 => (dom.clone(), gref.clone(), dom.clone(), any::<bool>())
            .prop_map(|(granter, gref, mapper, rw)| Op::Map { granter, gref, mapper, rw }),
        3 => any::<usize>().prop_map(|which| Op::Unmap { which }),
        1 => (dom.clone(), gref.clone(), dom.clone(), any::<bool>())
            .prop_map(|(granter, gref, mapper, write)| Op::Copy { granter, gref, mapper, write }),
        2 => (dom.clone(), gref).prop_map(|(granter, gref)| Op::End { granter, gref }),
        1 => (dom).prop_map(|dom| Op::Kill { dom }),
    ]
}

/// The model: what each domain granted, the live mappings, who is dead.
#[derive(Default)]
struct Model {
    grants: HashMap<(u16, u32), (u16, u64, bool)>,
    maps: Vec<(u16, u32, u16, bool)>,
    dead: Vec<u16>,
}

impl Model {
    fn pins(&self, granter: u16, gref: u32) -> (usize, usize) {
        let m = self.maps.iter().filter(|m| m.0 == granter && m.1 == gref);
        let all: Vec<_> = m.collect();
        (all.len(), all.iter().filter(|m| m.3).count())
    }

    /// What a pin of (granter, gref) by mapper, rw, must return.
    fn expect_pin(&self, granter: u16, gref: u32, mapper: u16, rw: bool) -> Result<Mfn, GntStatus> {
        if self.dead.contains(&granter) {
            return Err(GntStatus::BAD_DOMAIN);
        }
        if gref >= 512 {
            return Err(GntStatus::BAD_GNTREF);
        }
        let Some(&(to, pfn, ro)) = self.grants.get(&(granter, gref)) else {
            return Err(GntStatus::GENERAL_ERROR);
        };
        if to != mapper || (rw && ro) {
            return Err(GntStatus::GENERAL_ERROR);
        }
        if pfn >= PAGES {
            return Err(GntStatus::BAD_PAGE);
        }
        Ok(mfn_of(granter, pfn))
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let m = Machine::new();
    let hv = m.hv();
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Grant {
                granter,
                gref,
                to,
                pfn,
                ro,
            } => {
                let (pins, _) = model.pins(granter, gref);
                // A granter only reuses an entry it has ended (Linux does the
                // same); overwriting a live one is the granter's own problem.
                if gref >= REFS || pins > 0 || model.grants.contains_key(&(granter, gref)) {
                    continue;
                }
                m.table(granter)
                    .grant(GrantRef(gref), DomId(to), Pfn(pfn), ro)
                    .unwrap();
                model.grants.insert((granter, gref), (to, pfn, ro));
            }
            Op::Map {
                granter,
                gref,
                mapper,
                rw,
            } => {
                let got = hv
                    .pin(DomId(granter), GrantRef(gref), DomId(mapper), rw)
                    .map(|p| p.mfn);
                prop_assert_eq!(got, model.expect_pin(granter, gref, mapper, rw));
                if got.is_ok() {
                    model.maps.push((granter, gref, mapper, rw));
                }
            }
            Op::Unmap { which } => {
                if model.maps.is_empty() {
                    continue;
                }
                let (granter, gref, _, rw) = model.maps.remove(which % model.maps.len());
                hv.unpin(DomId(granter), GrantRef(gref), rw);
            }
            Op::Copy {
                granter,
                gref,
                mapper,
                write,
            } => {
                // A copy claims the grant for its duration, as the client's
                // `copy_grants` does, and leaves no trace.
                let got = match hv.granter(DomId(granter), false) {
                    None => Err(GntStatus::BAD_DOMAIN),
                    Some(g) => hv.with_grant(&g, GrantRef(gref), DomId(mapper), write, |mfn| {
                        let page = m
                            .machine
                            .as_volatile()
                            .subslice(mfn.0 as usize * 4096, 4096)
                            .unwrap();
                        if write {
                            page.write_bytes(0, &[0xab; 16]).unwrap();
                        }
                        let flags = m.table(granter).flags(GrantRef(gref)).unwrap();
                        let ended = m.table(granter).end_access(GrantRef(gref)).unwrap();
                        (mfn, flags, ended)
                    }),
                };
                prop_assert_eq!(
                    got.map(|(mfn, _, _)| mfn),
                    model.expect_pin(granter, gref, mapper, write)
                );
                if let Ok((_, flags, ended)) = got {
                    prop_assert!(flags & GTF_READING != 0, "reading while copied");
                    prop_assert_eq!(
                        flags & GTF_WRITING != 0,
                        write || model.pins(granter, gref).1 > 0
                    );
                    prop_assert!(!ended, "end_access fails while a copy holds the grant");
                }
            }
            Op::End { granter, gref } => {
                if gref >= REFS {
                    continue;
                }
                let (pins, _) = model.pins(granter, gref);
                let ended = m.table(granter).end_access(GrantRef(gref)).unwrap();
                prop_assert_eq!(
                    ended,
                    pins == 0,
                    "end_access succeeds exactly when unmapped"
                );
                if ended {
                    model.grants.remove(&(granter, gref));
                }
            }
            Op::Kill { dom } => {
                m.kill(dom);
                if !model.dead.contains(&dom) {
                    model.dead.push(dom);
                }
            }
        }
        // The shared flags always show exactly the live pins.
        for d in 1..=DOMS {
            for r in 0..REFS {
                let flags = m.table(d).flags(GrantRef(r)).unwrap();
                let (pins, writers) = model.pins(d, r);
                prop_assert_eq!(
                    flags & GTF_READING != 0,
                    pins > 0,
                    "reading bit of d{} ref {}",
                    d,
                    r
                );
                prop_assert_eq!(
                    flags & GTF_WRITING != 0,
                    writers > 0,
                    "writing bit of d{} ref {}",
                    d,
                    r
                );
            }
        }
    }
    // Unmapping everything lets every grant end.
    for (granter, gref, _, rw) in std::mem::take(&mut model.maps) {
        hv.unpin(DomId(granter), GrantRef(gref), rw);
    }
    for (granter, gref) in model.grants.keys() {
        prop_assert!(m.table(*granter).end_access(GrantRef(*gref)).unwrap());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn grant_table_behaves_like_its_model(ops in prop::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
