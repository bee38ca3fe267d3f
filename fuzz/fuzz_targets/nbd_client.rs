//! Fuzz target: `blk::fuzz::nbd_client`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| blk::fuzz::nbd_client(data));
