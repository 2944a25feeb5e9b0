//! libFuzzer entry for `harness/sdp_offer.rs` (what it does and checks is documented there).
#![no_main]

#[allow(dead_code)]
#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::sdp_offer::run(data));
