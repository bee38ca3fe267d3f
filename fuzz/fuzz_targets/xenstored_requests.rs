//! Fuzz target: `xenstored::fuzz::requests`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xenstored::fuzz::requests(data));
