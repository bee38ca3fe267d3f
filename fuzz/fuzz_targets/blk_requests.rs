//! Fuzz target: `blk::fuzz::requests`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| blk::fuzz::requests(data));
