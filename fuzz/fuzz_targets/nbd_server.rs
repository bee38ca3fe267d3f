//! Fuzz target: `blk::fuzz::nbd`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| blk::fuzz::nbd(data));
