//! Fuzz target: `blk::fuzz::ring`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| blk::fuzz::ring(data));
