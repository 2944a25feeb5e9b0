//! Configuration: a TOML file layered with `VOXGATE__SECTION__KEY` environment overrides, parsed
//! once into typed [`Settings`] and validated at start-up.
//!
//! The types below are the contract the rest of the crate codes against; [`Settings::load`]
//! reports any problem as a [`ConfigError`] naming the file, the key and the reason.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// Everything voxgate reads from its configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// SIP transport and protocol settings.
    pub sip: SipSettings,
    /// RTP port range and jitter buffer bounds.
    #[serde(default)]
    pub rtp: RtpSettings,
    /// Call admission and shutdown.
    #[serde(default)]
    pub calls: CallSettings,
    /// The Prometheus `/metrics` and `/healthz` endpoint.
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// Trunks: who may send calls.
    #[serde(default)]
    pub trunks: Vec<TrunkSettings>,
    /// Agent profiles calls can be routed to.
    #[serde(default)]
    pub agents: Vec<AgentSettings>,
    /// Routes from a dialled user to an agent, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteSettings>,
}

/// `[sip]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipSettings {
    /// Addresses to listen on, UDP and TCP each (a string, a comma-separated string or a list).
    #[serde(deserialize_with = "socket_addrs")]
    pub listen: Vec<SocketAddr>,
    /// Host or IP advertised in Contact, Via and SDP instead of the bound address (behind NAT).
    #[serde(default)]
    pub public_address: Option<String>,
    /// `User-Agent` / `Server` header value.
    #[serde(default = "default_user_agent")]
    pub user_agent: String,
    /// RFC 3261 T1 (RTT estimate), milliseconds.
    #[serde(default = "default_t1_ms")]
    pub t1_ms: u64,
    /// RFC 3261 T2 (maximum retransmit interval for non-INVITE), milliseconds.
    #[serde(default = "default_t2_ms")]
    pub t2_ms: u64,
    /// RFC 3261 T4 (maximum time a message stays in the network), milliseconds.
    #[serde(default = "default_t4_ms")]
    pub t4_ms: u64,
    /// Largest SIP message accepted on any transport, bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// RFC 4028 session interval voxgate asks for / accepts, seconds.
    #[serde(default = "default_session_expires_secs")]
    pub session_expires_secs: u32,
    /// RFC 4028 smallest session interval voxgate accepts (422 below it), seconds (≥ 90).
    #[serde(default = "default_min_se_secs")]
    pub min_se_secs: u32,
}

/// `[rtp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtpSettings {
    /// IP to bind RTP sockets on; default: the IP of the first `sip.listen` address.
    pub bind_address: Option<IpAddr>,
    /// Lowest RTP port (even); RTCP uses RTP + 1.
    pub port_min: u16,
    /// Highest RTP port.
    pub port_max: u16,
    /// Smallest jitter-buffer target delay, milliseconds.
    pub jitter_min_ms: u32,
    /// Largest jitter-buffer target delay, milliseconds.
    pub jitter_max_ms: u32,
    /// Packetisation time voxgate sends with unless the offer's `a=ptime` says otherwise.
    pub ptime_ms: u32,
    /// Seconds between RTCP reports (RFC 3550 §6.2 suggests 5).
    pub rtcp_interval_secs: u32,
}

/// `[calls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallSettings {
    /// Concurrent calls admitted; more get `at_capacity_status`.
    pub max_concurrent: usize,
    /// 486 (Busy Here) or 503 (Service Unavailable) when full.
    pub at_capacity_status: u16,
    /// On SIGTERM, how long active calls may go on before voxgate hangs them up.
    pub drain_timeout_secs: u64,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Address of the HTTP endpoint serving `/metrics` and `/healthz`; none disables it.
    pub listen: Option<SocketAddr>,
}

/// One `[[trunks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkSettings {
    /// Name used in logs and metrics.
    pub name: String,
    /// Source networks allowed to send INVITEs over this trunk.
    #[serde(default)]
    pub allow_from: Vec<IpNet>,
}

/// What kind of agent answers a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// Plays the caller's own audio back (commissioning, like Asterisk's `Echo()`).
    Echo,
}

/// One `[[agents]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// Name routes refer to.
    pub name: String,
    /// Which agent implementation.
    pub kind: AgentKind,
    /// Echo: extra delay before the caller hears themselves, milliseconds.
    #[serde(default)]
    pub echo_delay_ms: u32,
}

/// Which part of the INVITE a route matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteField {
    /// The Request-URI user part (default).
    #[default]
    RequestUri,
    /// The To header's URI user part.
    To,
}

/// One `[[routes]]` entry. A route without `user` is a default route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// The user to match exactly, or a prefix ending in `*`; absent: matches every call.
    #[serde(default)]
    pub user: Option<String>,
    /// Where the user is taken from.
    #[serde(default)]
    pub field: RouteField,
    /// Only calls arriving over this trunk (by name).
    #[serde(default)]
    pub trunk: Option<String>,
    /// The agent that answers.
    pub agent: String,
}

/// A configuration problem found at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or did not fit the types.
    #[error("{file}: {reason}")]
    Load {
        /// The configuration file.
        file: PathBuf,
        /// What the config/serde layer said (it names the key).
        reason: String,
    },
    /// A value is well-typed but not usable.
    #[error("{file}: {key}: {reason}")]
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// The dotted key, e.g. `rtp.port_min` or `routes[2].agent`.
        key: String,
        /// Why it is refused.
        reason: String,
    },
}

impl Settings {
    /// Reads `file`, layers `VOXGATE__SECTION__KEY` variables over it and validates the result.
    pub fn load(file: &Path) -> Result<Settings, ConfigError> {
        let _ = file;
        unimplemented!("config loader")
    }

    /// The SIP timer values.
    pub fn timers(&self) -> crate::sip::transaction::Timers {
        crate::sip::transaction::Timers {
            t1: Duration::from_millis(self.sip.t1_ms),
            t2: Duration::from_millis(self.sip.t2_ms),
            t4: Duration::from_millis(self.sip.t4_ms),
        }
    }
}

fn default_user_agent() -> String {
    format!("voxgate/{}", env!("CARGO_PKG_VERSION"))
}
fn default_t1_ms() -> u64 {
    500
}
fn default_t2_ms() -> u64 {
    4_000
}
fn default_t4_ms() -> u64 {
    5_000
}
fn default_max_message_bytes() -> usize {
    65_535
}
fn default_session_expires_secs() -> u32 {
    1_800
}
fn default_min_se_secs() -> u32 {
    90
}

impl Default for RtpSettings {
    fn default() -> Self {
        RtpSettings {
            bind_address: None,
            port_min: 10_000,
            port_max: 20_000,
            jitter_min_ms: 40,
            jitter_max_ms: 200,
            ptime_ms: 20,
            rtcp_interval_secs: 5,
        }
    }
}

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            max_concurrent: 500,
            at_capacity_status: 503,
            drain_timeout_secs: 30,
        }
    }
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings { listen: None }
    }
}

fn socket_addrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(|p| p.trim().to_owned())
            .collect::<Vec<_>>(),
        OneOrMany::Many(v) => v,
    };
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
        })
        .collect()
}
