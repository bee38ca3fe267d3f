//! Replays the `xenstored_requests` fuzz corpus and random input on stable.
//! Fuzz for real with `cargo +nightly fuzz run xenstored_requests`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;

#[test]
fn xenstored_requests_corpus_replays_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus/xenstored_requests");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        xenstored::fuzz::requests(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "{} has no corpus", dir.display());
}

proptest! {
    #[test]
    fn xenstored_survives_random_pieces(data in prop::collection::vec(any::<u8>(), 0..3000)) {
        xenstored::fuzz::requests(&data);
    }
}
