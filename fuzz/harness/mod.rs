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

use std::sync::OnceLock;
use std::time::Instant;

/// The origin of every harness's virtual clock (one per process).
fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// `FUZZ_TRACE=1`: the harnesses print what voxgate sends (and `realtime_bridge` what it
/// hears), for writing seeds and reading crashes.
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}
