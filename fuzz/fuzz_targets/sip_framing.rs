//! libFuzzer entry for `harness/sip_framing.rs` (what it does and checks is documented there).
#![no_main]

#[allow(dead_code)]
#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::sip_framing::run(data));
