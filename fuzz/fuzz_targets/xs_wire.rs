//! Fuzz target: `xenstore::fuzz::xs_wire`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xenstore::fuzz::xs_wire(data));
