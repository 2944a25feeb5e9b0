//! Black-box interop harness: the real `voxgate` binary over loopback, driven by SIPp (the PBX
//! side) and by raw SIP from the test itself.
//!
//! - [`ports`]: unique port blocks per test (parallel-safe).
//! - [`gateway`]: start voxgate from a generated config, wait until it answers OPTIONS, scrape
//!   metrics, SIGTERM, wait for exit; killed on drop.
//! - [`sipp`]: run a `tests/sipp/*.xml` scenario with a hard deadline; exit 0 = every call
//!   succeeded; message trace parsed for assertions SIPp cannot make.
//! - [`pcap`] + [`rtp`]: a generated PCMU pcap whose payloads carry their packet index, and a
//!   UDP sink receiving what voxgate echoes — see [`rtp`] for why this is reliable.
//! - [`sip`]: raw SIP requests and response parsing. [`metrics`]: Prometheus text.
//! - [`kamailio`]: Kamailio as a digest-authenticating registrar and proxy, bindings read with
//!   `kamcmd ul.dump`.
//! - [`dns`]: an authoritative DNS stub on loopback (UDP and TCP): A, AAAA and SRV
//!   records a test sets and may replace mid-test, NXDOMAIN and NODATA, every query logged.
//! - [`baresip`]: a softphone calling voxgate, its voice from a WAV file, both directions of
//!   the call's audio recorded.
//! - [`prometheus`]: a Prometheus server scraping voxgate on loopback, queried over its HTTP
//!   API; `promtool check metrics`.
//! - [`realtime`]: a local OpenAI Realtime (GA) stand-in: scripted model, protocol checks,
//!   recorded sessions.
//!
//! Every process a test starts is owned by a value whose `Drop` kills it, so a failing
//! assertion never leaves voxgate or SIPp running.
#![allow(dead_code, unused_imports)]

pub mod baresip;
pub mod dns;
pub mod gateway;
pub mod kamailio;
pub mod metrics;
pub mod pcap;
pub mod ports;
pub mod prometheus;
pub mod realtime;
pub mod rtp;
pub mod sip;
pub mod sipp;

pub use gateway::{Gateway, GatewayConfig};
pub use ports::PortBlock;
pub use sipp::{Sipp, Transport};
