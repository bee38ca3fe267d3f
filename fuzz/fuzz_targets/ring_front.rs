//! Fuzz target: `ring::fuzz::front_ring`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ring::fuzz::front_ring(data));
