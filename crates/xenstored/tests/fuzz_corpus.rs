//! Replays the `xenstored_requests` and `xenstored_ring` fuzz corpora and
//! random input on stable. Fuzz for real with
//! `cargo +nightly fuzz run xenstored_requests` (or `xenstored_ring`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        body(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "{} has no corpus", dir.display());
}

#[test]
fn xenstored_requests_corpus_replays_cleanly() {
    replay("xenstored_requests", xenstored::fuzz::requests);
}

#[test]
fn xenstored_ring_corpus_replays_cleanly() {
    replay("xenstored_ring", xenstored::fuzz::ring);
}

proptest! {
    #[test]
    fn xenstored_survives_random_pieces(data in prop::collection::vec(any::<u8>(), 0..3000)) {
        xenstored::fuzz::requests(&data);
    }

    #[test]
    fn xenstored_survives_a_random_ring(data in prop::collection::vec(any::<u8>(), 0..3000)) {
        xenstored::fuzz::ring(&data);
    }
}
