//! The fuzz harnesses, shared by the libFuzzer targets (`fuzz/fuzz_targets/`) and by the
//! crate's replay test (`tests/fuzz_replay.rs`), which runs every seed and every saved
//! regression input on the stable toolchain in CI. Each `run` panics on what it checks.
// A virtual clock needs one real origin.
#![allow(clippy::disallowed_methods)]

pub mod media_packets;
pub mod realtime_bridge;
pub mod sdp_offer;
pub mod sip_framing;
pub mod sip_switchboard;
