//! libFuzzer entry for `harness/media_packets.rs` (what it does and checks is documented there).
#![no_main]

#[allow(dead_code)]
#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::media_packets::run(data));
