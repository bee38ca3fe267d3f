//! Fuzz target: `ring::fuzz::byte_ring`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ring::fuzz::byte_ring(data));
