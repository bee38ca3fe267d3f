//! Runs the fuzz targets' bodies on stable: every file of their corpus in
//! `fuzz/corpus/TARGET/` (kept small with `cargo fuzz cmin`), and random
//! inputs besides. Fuzz for real with `cargo +nightly fuzz run TARGET`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use proptest::prelude::*;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        body(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "{} has no corpus", dir.display());
}

#[test]
fn ring_back_corpus_replays_cleanly() {
    replay("ring_back", ring::fuzz::back_ring);
}

#[test]
fn ring_front_corpus_replays_cleanly() {
    replay("ring_front", ring::fuzz::front_ring);
}

#[test]
fn byte_ring_corpus_replays_cleanly() {
    replay("byte_ring", ring::fuzz::byte_ring);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn fuzz_bodies_survive_random_input(data in prop::collection::vec(any::<u8>(), 0..20000)) {
        ring::fuzz::back_ring(&data);
        ring::fuzz::front_ring(&data);
        ring::fuzz::byte_ring(&data);
    }

    #[test]
    fn back_ring_survives_a_valid_page_with_random_moves(
        start in any::<u32>(),
        ahead in 0..80u32,
        moves in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        // A plausible page: order 0, req_prod `ahead` past `start`, then ops.
        let mut data = vec![0u8];
        let mut page = vec![0u8; 4096];
        page[0..4].copy_from_slice(&start.wrapping_add(ahead).to_le_bytes());
        page[8..12].copy_from_slice(&start.to_le_bytes());
        data.extend_from_slice(&page);
        data.extend_from_slice(&start.to_be_bytes());
        data.extend_from_slice(&moves);
        ring::fuzz::back_ring(&data);
    }
}
