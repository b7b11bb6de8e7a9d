#![no_main]
//! Checks `quiver_protocol::invariants::path` on every input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_protocol::invariants::path(data));
