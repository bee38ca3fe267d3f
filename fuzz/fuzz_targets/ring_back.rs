//! Fuzz target: `ring::fuzz::back_ring`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ring::fuzz::back_ring(data));
