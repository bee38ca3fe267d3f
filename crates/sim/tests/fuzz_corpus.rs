//! Replays the `hv_proto` fuzz corpus (`fuzz/corpus/hv_proto/`) and random
//! datagrams on stable. Fuzz for real with `cargo +nightly fuzz run hv_proto`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use proptest::prelude::*;

#[test]
fn hv_proto_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/hv_proto");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        sim::fuzz::hv_proto(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "{} has no corpus", dir.display());
}

proptest! {
    #[test]
    fn hv_proto_survives_random_datagrams(data in prop::collection::vec(any::<u8>(), 0..300)) {
        sim::fuzz::hv_proto(&data);
    }

    #[test]
    fn hv_proto_survives_random_bodies_after_a_valid_type(
        tag in 0u16..20,
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut data = tag.to_le_bytes().to_vec();
        data.extend(body);
        sim::fuzz::hv_proto(&data);
    }
}
