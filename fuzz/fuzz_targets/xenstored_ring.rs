//! Fuzz target: `xenstored::fuzz::ring`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xenstored::fuzz::ring(data));
