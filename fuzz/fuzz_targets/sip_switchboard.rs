//! libFuzzer entry for `harness/sip_switchboard.rs` (what it does and checks is documented there).
#![no_main]

#[allow(dead_code)]
#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::sip_switchboard::run(data));
