//! Fuzz target: `sim::fuzz::hv_proto`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sim::fuzz::hv_proto(data));
