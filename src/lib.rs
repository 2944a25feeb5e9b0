//! voxgate: a SIP user-agent gateway that answers PBX trunk calls and bridges their audio to a
//! speech agent (an echo agent for commissioning, or an OpenAI Realtime session per call).
//!
//! Map of the crate (see `docs/architecture.md`):
//! - [`config`]: TOML + `VOXGATE__*` environment → validated [`config::Settings`].
//! - [`metrics`]: every Prometheus metric, registered in one place.
//! - [`sip`]: RFC 3261 sans-IO: message seam to rsip, TCP framing, transactions, dialogs, endpoint.
//! - [`media`]: sans-IO media: SDP offer/answer, RTP stream, jitter buffer, playout, RTCP, G.711.
//! - [`realtime`]: the OpenAI Realtime GA protocol, sans-IO (events, session rules).
//! - [`call`]: one call = dialog + media + agent, a sans-IO state machine; admission (source
//!   address, registration or digest), routing; agents; the speech-session interface and the
//!   bridge (barge-in, tools, playout accounting); the register-mode trunks' registrations.
//! - [`io`]: the only async code: sockets, timers, tasks, HTTP.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod call;
pub mod config;
pub mod io;
pub mod media;
pub mod metrics;
pub mod realtime;
pub mod sip;
#[cfg(test)]
pub(crate) mod testkit;
