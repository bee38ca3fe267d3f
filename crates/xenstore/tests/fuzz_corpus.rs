//! Replays the `xs_wire` fuzz corpus (`fuzz/corpus/xs_wire/`) and random
//! streams on stable. Fuzz for real with `cargo +nightly fuzz run xs_wire`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;

#[test]
fn xs_wire_corpus_replays_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/xs_wire");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        xenstore::fuzz::xs_wire(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "{} has no corpus", dir.display());
}

proptest! {
    #[test]
    fn xs_wire_survives_random_streams(data in prop::collection::vec(any::<u8>(), 0..2000)) {
        xenstore::fuzz::xs_wire(&data);
    }

    #[test]
    fn xs_wire_survives_plausible_headers(
        cut in any::<u8>(),
        ty in 0u32..30,
        len in 0u32..64,
        body in prop::collection::vec(prop_oneof![Just(0u8), Just(b'/'), Just(b'a'), Just(b'r'), any::<u8>()], 0..80),
    ) {
        let mut data = vec![cut];
        for w in [ty, 1, 0, len] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend(body);
        xenstore::fuzz::xs_wire(&data);
    }
}
