//! Configuration: a TOML file layered with `VOXGATE__SECTION__KEY` environment overrides, parsed
//! once into typed [`Settings`] and validated at start-up.
//!
//! The types below are the contract the rest of the crate codes against; [`Settings::load`]
//! reports any problem as a [`ConfigError`] naming the file, the key and the reason.
//!
//! Layering: the file first, then every environment variable named `VOXGATE__SECTION__KEY`
//! (double underscores; `VOXGATE__CALLS__MAX_CONCURRENT=10` sets `calls.max_concurrent`). A value
//! is parsed only by the field it lands in: numbers into integer fields, text kept verbatim
//! (`"007"` stays `"007"`); `VOXGATE__SIP__LISTEN` takes a comma-separated list. An empty
//! variable counts as unset. Arrays of tables (`[[trunks]]`, `[[agents]]`, `[[routes]]`) come
//! from the file only.
//!
//! In: a file path and the environment. Out: [`Settings`] that passed every check below, or the
//! first [`ConfigError`] found. Checks: RFC 3261 timers (T1 > 0, T2 ≥ T1, T4 > 0), RFC 4028
//! session timers (Min-SE ≥ 90 s, Session-Expires ≥ Min-SE), an even RTP base port with at least
//! one RTP/RTCP pair and one pair per admitted call, jitter bounds, a G.711 ptime, 486/503 at
//! capacity, unique non-empty trunk and agent names, register-mode trunks (`config/trunk.rs`),
//! routes naming known agents and trunks, at least one route and none hidden behind a catch-all.
//!
//! Keys in errors are dotted paths with zero-based indices: `routes[0]` is the first
//! `[[routes]]` entry.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

mod digest;
mod dns;
mod realtime;
pub mod transfer;
mod trunk;

pub use trunk::{
    RegisterSettings, TrunkMode, TrunkTransport, DEFAULT_EXPIRES_SECS, EXPIRES_RANGE_SECS,
    KEEPALIVE_RANGE_SECS,
};

pub use digest::{
    TrunkUser, DEFAULT_AUTH_ALGORITHMS, DEFAULT_AUTH_REALM, DEFAULT_NONCE_LIFETIME_SECS,
    NONCE_LIFETIME_RANGE_SECS,
};
pub use dns::{DnsSettings, DEFAULT_DNS_TIMEOUT_MS, DNS_TIMEOUT_RANGE_MS};
pub use realtime::{
    NoiseReduction, RealtimeSettings, ToolSettings, TurnDetection, DEFAULT_REALTIME_URL,
    RESERVED_TOOL_NAMES,
};

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
    /// How OpenAI Realtime agents reach the service.
    #[serde(default)]
    pub realtime: RealtimeSettings,
    /// Hand-offs to people (REFER / bridge).
    #[serde(default)]
    pub transfer: transfer::TransferSettings,
    /// Name servers for locating registrars (RFC 3263).
    #[serde(default)]
    pub dns: DnsSettings,
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
    /// Most TCP connections peers may have open to voxgate at once; a connection beyond it is
    /// closed as soon as it is accepted (Kamailio `tcp_max_connections`). Connections voxgate
    /// opens itself do not count.
    #[serde(default = "default_tcp_max_connections")]
    pub tcp_max_connections: usize,
    /// A TCP connection a peer opens must deliver its first SIP message within this many
    /// seconds, or it is closed (a connection that never speaks only holds a file descriptor).
    #[serde(default = "default_tcp_first_message_secs")]
    pub tcp_first_message_secs: u32,
    /// A TCP connection (either side's) that has carried nothing for this many seconds is
    /// closed, unless a call, a registration or a transaction still uses it (Kamailio's
    /// `tcp_connection_lifetime`, pjsip's idle transports).
    #[serde(default = "default_tcp_idle_secs")]
    pub tcp_idle_secs: u32,
}

/// `[rtp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtpSettings {
    /// IP to bind RTP sockets on; default: the local IP the call's INVITE arrived on.
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
    /// An answered call that expects media and receives no RTP for this long is hung up
    /// (Asterisk `rtptimeout`, rtpengine `timeout`); 0: never.
    pub timeout_secs: u32,
    /// The same while the call is on hold (the caller's SDP says `sendonly` or `inactive`, or it
    /// only listens); 0: never.
    pub hold_timeout_secs: u32,
    /// Threads running the calls' media (each takes a share of the calls).
    pub media_threads: usize,
    /// Phases of the ptime a media thread spreads its calls' ticks over (1 to
    /// [`TICK_PHASES_LIMIT`]): more phases, less waiting behind other calls' work (latency),
    /// but a wake-up of the thread per phase (CPU).
    pub tick_phases: u32,
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
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Address of the HTTP endpoint serving `/metrics` and `/healthz`; none disables it.
    pub listen: Option<SocketAddr>,
}

/// One `[[trunks]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkSettings {
    /// Name used in logs and metrics.
    pub name: String,
    /// Source networks allowed to send INVITEs over this trunk.
    #[serde(default)]
    pub allow_from: Vec<IpNet>,

    // Digest authentication (config/digest.rs): inbound users, outbound credentials.
    /// Callers that may authenticate when their source is in no trunk's `allow_from`.
    #[serde(default)]
    pub users: Vec<TrunkUser>,
    /// The realm of this trunk's 401 challenges (default `voxgate`; one realm per trunk).
    #[serde(default)]
    pub auth_realm: Option<String>,
    /// The algorithms offered, one challenge each, in order (default `["MD5"]`).
    #[serde(default, deserialize_with = "digest::algorithms")]
    pub auth_algorithms: Option<Vec<crate::sip::auth::Algorithm>>,
    /// How long a nonce stays good, seconds (default 300).
    #[serde(default)]
    pub auth_nonce_lifetime_secs: Option<u64>,
    /// The user name voxgate answers 401/407 challenges to its in-dialog requests with.
    #[serde(default)]
    pub outbound_username: Option<String>,
    /// Environment variable holding the outbound password.
    #[serde(default)]
    pub outbound_password_env: Option<String>,
    /// File holding the outbound password (first line).
    #[serde(default)]
    pub outbound_password_file: Option<PathBuf>,
    /// The outbound password, once resolved (never read from the file itself).
    #[serde(skip)]
    pub outbound_password: Option<Secret>,
    // Registration (issue #4): the keys of `mode = "register"`, validated and explained in
    // config/trunk.rs; a static trunk refuses them. The credentials also serve digest
    // challenges to requests voxgate sends over the trunk.
    /// `static` (default: calls from `allow_from`) or `register` (voxgate registers).
    #[serde(default)]
    pub mode: TrunkMode,
    /// Register: the registrar URI, e.g. `sip:pbx.example.com` (no user part).
    #[serde(default)]
    pub registrar: Option<String>,
    /// Register: an outbound proxy URI REGISTERs (and keepalives) go through.
    #[serde(default)]
    pub outbound_proxy: Option<String>,
    /// Register: `udp` (default, or the registrar's `;transport=`) or `tcp`.
    #[serde(default)]
    pub transport: Option<TrunkTransport>,
    /// Register: the user voxgate registers as (AOR user).
    #[serde(default)]
    pub username: Option<String>,
    /// Register: the digest user name when it differs from `username`.
    #[serde(default)]
    pub auth_username: Option<String>,
    /// Register: answer only challenges for this realm.
    #[serde(default)]
    pub realm: Option<String>,
    /// Register: the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Register: a file whose first line is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Register: the expiry asked for, seconds (default 3600).
    #[serde(default)]
    pub expires: Option<u32>,
    /// Register: the user part of voxgate's Contact (default `username`).
    #[serde(default)]
    pub contact_user: Option<String>,
    /// Register: send OPTIONS to the registrar this often, seconds; none: no keepalive.
    #[serde(default)]
    pub keepalive_secs: Option<u32>,
    /// Register: the AOR's domain (default the registrar's host).
    #[serde(default)]
    pub domain: Option<String>,
    /// Register: the password, once resolved at start-up (never read from the file itself).
    #[serde(skip)]
    pub password: Option<Secret>,
}

/// What kind of agent answers a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// Plays the caller's own audio back (commissioning, like Asterisk's `Echo()`).
    #[default]
    Echo,
    /// An OpenAI Realtime speech-to-speech session per call.
    Openai,
}

/// One `[[agents]]` entry. Keys below "OpenAI" apply to kind = "openai" only.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// Name routes refer to.
    pub name: String,
    /// Which agent implementation.
    pub kind: AgentKind,
    /// Echo: extra delay before the caller hears themselves, milliseconds.
    #[serde(default)]
    pub echo_delay_ms: u32,
    /// Ring for this long (180 Ringing) before answering, milliseconds; 0 answers at once.
    #[serde(default)]
    pub ring_ms: u32,
    /// OpenAI: the agent that answers instead when no API key is available at start-up.
    #[serde(default)]
    pub fallback: Option<String>,
    /// OpenAI: the Realtime model (`?model=`).
    #[serde(default = "default_model")]
    pub model: String,
    /// OpenAI: the system prompt.
    #[serde(default)]
    pub instructions: Option<String>,
    /// OpenAI: the voice (`marin`, `cedar`, `alloy`, …).
    #[serde(default)]
    pub voice: Option<String>,
    /// OpenAI: speaking speed, 0.25–1.5.
    #[serde(default)]
    pub speed: Option<f64>,
    /// OpenAI: when set, the model speaks first on answer, following these instructions.
    #[serde(default)]
    pub greeting: Option<String>,
    /// OpenAI: output token cap per response, 1–4096.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Refused with an explanation: the GA API has no temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// OpenAI: transcribe the caller with this model (e.g. `gpt-4o-mini-transcribe`).
    #[serde(default)]
    pub transcription_model: Option<String>,
    /// OpenAI: ISO-639-1 language hint for the transcription.
    #[serde(default)]
    pub transcription_language: Option<String>,
    /// OpenAI: input noise reduction.
    #[serde(default)]
    pub noise_reduction: Option<NoiseReduction>,
    /// OpenAI: voice activity detection (default server_vad with the API's defaults).
    #[serde(default)]
    pub turn_detection: TurnDetection,
    /// OpenAI: HTTP tools the model may call.
    #[serde(default)]
    pub tools: Vec<ToolSettings>,
    /// OpenAI: offer the built-in `end_call` tool (default true).
    #[serde(default = "default_true")]
    pub end_call_tool: bool,
    /// OpenAI: people the model may hand the caller to (the `transfer_call` tool).
    #[serde(default)]
    pub transfers: Vec<transfer::TransferDestination>,
    /// OpenAI: keys that transfer without asking the model.
    #[serde(default)]
    pub dtmf_rules: Vec<transfer::DtmfRule>,
    /// OpenAI: tell the model which keys the caller pressed (default true).
    #[serde(default = "default_true")]
    pub dtmf_to_model: bool,
}

fn default_model() -> String {
    "gpt-realtime".to_owned()
}

fn default_true() -> bool {
    true
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
    /// The file could not be read or is not valid TOML (no single key to blame).
    #[error("{file}: {reason}")]
    Load {
        /// The configuration file.
        file: PathBuf,
        /// What went wrong, with the line for TOML syntax errors.
        reason: String,
    },
    /// A key is missing, unknown, of the wrong type or not usable (also for environment values,
    /// whose variable the reason then names).
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

/// Prefix of the environment variables that override the file (`VOXGATE__SIP__LISTEN`).
pub const ENV_PREFIX: &str = "VOXGATE";

/// Separator between the prefix, the section and the key in override variable names.
pub const ENV_SEPARATOR: &str = "__";

/// Packetisation times voxgate sends G.711 with (RFC 3551 §4.5: multiples of the 10 ms frame;
/// these are the ones PBXs offer in `a=ptime`).
pub const PTIME_CHOICES_MS: [u32; 5] = [10, 20, 30, 40, 60];

/// Largest jitter-buffer target, milliseconds: beyond this a conversation breaks down anyway.
pub const JITTER_MAX_LIMIT_MS: u32 = 1_000;

/// Largest `rtp.timeout_secs` / `rtp.hold_timeout_secs`: a day; more is a unit mistake.
pub const MEDIA_TIMEOUT_LIMIT_SECS: u32 = 86_400;

/// Most phases `rtp.tick_phases` may ask for (2 ms apart at ptime 20).
pub const TICK_PHASES_LIMIT: u32 = 10;

/// Most media threads `rtp.media_threads` may ask for.
pub const MEDIA_THREADS_LIMIT: usize = 64;

/// RFC 4028 §4: a Min-SE below 90 seconds is not allowed.
pub const MIN_SE_FLOOR_SECS: u32 = 90;

/// Smallest `sip.max_message_bytes`: a plain INVITE with SDP from a PBX often exceeds the
/// 1300 bytes RFC 3261 §18.1.1 names, so anything below an Ethernet MTU would refuse real calls.
pub const MAX_MESSAGE_FLOOR_BYTES: usize = 1_500;

/// Largest echo agent delay, milliseconds (the delayed audio is held in memory per call).
pub const ECHO_DELAY_LIMIT_MS: u32 = 10_000;

impl Settings {
    /// Reads `file`, layers `VOXGATE__SECTION__KEY` variables over it and validates the result.
    ///
    /// Call once at start-up; the error names the file, the key and the reason, ready to print.
    pub fn load(file: &Path) -> Result<Settings, ConfigError> {
        let mut env = Vec::new();
        for (key, value) in std::env::vars_os() {
            // Variables that are not ours may hold anything; only ours must be readable.
            let Some(key) = key
                .to_str()
                .filter(|k| is_override_name(k))
                .map(str::to_owned)
            else {
                continue;
            };
            let value = value.into_string().map_err(|_| ConfigError::Load {
                file: file.to_owned(),
                reason: format!("environment variable {key} is not valid UTF-8"),
            })?;
            env.push((key, value));
        }
        let mut settings = Self::load_from(file, env)?;
        settings.resolve_secrets(file, |name| std::env::var(name).ok())?;
        Ok(settings)
    }

    /// Reads the secrets: trunk passwords (`[[trunks.users]]`, `outbound_password_*`, and each
    /// register-mode trunk's `password_env` / `password_file`; variables looked up with
    /// `lookup`), then the Realtime API key (from `realtime.api_key_file`, else the variable named
    /// by `realtime.api_key_env`) when an OpenAI agent exists; checks that every OpenAI agent can
    /// answer: with the key, or through its `fallback`.
    pub fn resolve_secrets(
        &mut self,
        file: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        self.resolve_trunk_secrets(file, &lookup)?;
        let error = |key: String, reason: String| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            reason,
        };
        for (i, trunk) in self.trunks.iter_mut().enumerate() {
            trunk::resolve_password(trunk, i, &lookup)
                .map_err(|problem| error(problem.key, problem.reason))?;
        }
        // Read (and checked) even when no agent uses the Realtime service yet, so a wrong path
        // is reported at start-up, not when an OpenAI agent is added.
        if let Some(path) = &self.realtime.ca_file {
            self.realtime.ca_certs = realtime::read_ca_file(path)
                .map_err(|reason| error("realtime.ca_file".into(), reason))?;
        }
        if let Some(path) = &self.realtime.apology_file {
            let audio = std::fs::read(path).map_err(|e| {
                error(
                    "realtime.apology_file".into(),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if audio.is_empty() || audio.len() > realtime::APOLOGY_MAX_BYTES {
                return Err(error(
                    "realtime.apology_file".into(),
                    format!(
                        "{} holds {} bytes: give 1 to {} bytes of raw 8 kHz µ-law (at most 30 s)",
                        path.display(),
                        audio.len(),
                        realtime::APOLOGY_MAX_BYTES
                    ),
                ));
            }
            self.realtime.apology = Some(bytes::Bytes::from(audio));
        }
        if !self.agents.iter().any(|a| a.kind == AgentKind::Openai) {
            return Ok(());
        }
        let key = match &self.realtime.api_key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    error(
                        "realtime.api_key_file".into(),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let key = text.lines().next().unwrap_or("").trim().to_owned();
                if key.is_empty() {
                    return Err(error(
                        "realtime.api_key_file".into(),
                        format!("{} is empty", path.display()),
                    ));
                }
                Some(key)
            }
            None => lookup(&self.realtime.api_key_env)
                .map(|key| key.trim().to_owned())
                .filter(|key| !key.is_empty()),
        };
        self.realtime.api_key = key.map(Secret::from);
        if self.realtime.api_key.is_some() {
            return Ok(());
        }
        for (i, agent) in self.agents.iter().enumerate() {
            if agent.kind != AgentKind::Openai {
                continue;
            }
            let fallback = agent
                .fallback
                .as_deref()
                .and_then(|name| self.agents.iter().find(|a| a.name == name));
            match fallback {
                Some(fallback) if fallback.kind != AgentKind::Openai => {}
                Some(_) => {
                    return Err(error(
                        format!("agents[{i}].fallback"),
                        "no OpenAI API key, and the fallback is an OpenAI agent too".into(),
                    ))
                }
                None => {
                    return Err(error(
                        format!("agents[{i}]"),
                        format!(
                            "OpenAI agent {:?} has no API key: set {} or realtime.api_key_file, \
                             or give the agent a `fallback`",
                            agent.name, self.realtime.api_key_env
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The agent that really answers for `name`: an OpenAI agent without an API key answers
    /// with its fallback.
    pub fn effective_agent(&self, name: &str) -> Option<&AgentSettings> {
        let agent = self.agents.iter().find(|agent| agent.name == name)?;
        if agent.kind == AgentKind::Openai && self.realtime.api_key.is_none() {
            let fallback = agent.fallback.as_deref()?;
            return self.agents.iter().find(|a| a.name == fallback);
        }
        Some(agent)
    }

    /// [`Settings::load`] with the environment given as data instead of read from the process.
    ///
    /// Only `VOXGATE__*` names in `env` are used (case-insensitive); others are ignored.
    pub fn load_from<I>(file: &Path, env: I) -> Result<Settings, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Load {
            file: file.to_owned(),
            reason: format!("cannot read the configuration file: {e}"),
        })?;
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(key, _)| is_override_name(key))
            .collect();
        let overrides: HashMap<String, String> = env
            .keys()
            .map(|name| (override_key(name), name.clone()))
            .collect();
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            // Both separators explicitly (shared/DEPENDENCIES.md): without `separator` the crate
            // never turns `SIP__LISTEN` into `sip.listen`, without either the prefix is
            // `VOXGATE_`; both fail silently.
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            // Values stay strings here; serde converts them when a field wants a number. With
            // `try_parsing(true)` the crate would pre-parse every value, turning a password or
            // User-Agent like "007" or "1.0" into the numbers 7 and 1 and printing them back as
            // "7" and "1".
            .try_parsing(false)
            .ignore_empty(true)
            .source(Some(env));
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .add_source(environment)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| from_config_error(file, &overrides, e))?;
        settings
            .validate()
            .map_err(|problem| invalid(file, &overrides, problem.key, problem.reason))?;
        Ok(settings)
    }

    /// Checks the cross-field rules serde cannot express; the first problem found is returned.
    fn validate(&self) -> Result<(), Problem> {
        self.sip.validate()?;
        self.rtp.validate()?;
        self.calls.validate(&self.rtp)?;
        self.validate_metrics()?;
        self.dns.validate()?;
        self.transfer.validate()?;
        let trunks = unique_names("trunks", self.trunks.iter().map(|t| t.name.as_str()))?;
        let mut realms = Vec::new();
        for (i, trunk) in self.trunks.iter().enumerate() {
            trunk.validate_digest(i, &mut realms)?;
        }
        for (i, trunk) in self.trunks.iter().enumerate() {
            trunk::validate_trunk(trunk, i)?;
        }
        trunk::validate_contact_users(&self.trunks)?;
        let agents = unique_names("agents", self.agents.iter().map(|a| a.name.as_str()))?;
        for (i, agent) in self.agents.iter().enumerate() {
            agent.validate(i)?;
            if agent.kind == AgentKind::Openai {
                realtime::validate_agent(agent, i, &agents)?;
            }
            transfer::validate_agent(agent, i)?;
        }
        if self.agents.iter().any(|a| a.kind == AgentKind::Openai) {
            self.realtime.validate()?;
        }
        self.validate_routes(&trunks, &agents)
    }

    fn validate_metrics(&self) -> Result<(), Problem> {
        let Some(metrics) = self.metrics.listen else {
            return Ok(());
        };
        // SIP listens on TCP as well as UDP, so the HTTP endpoint cannot share its address.
        if let Some(sip) = self.sip.listen.iter().find(|sip| overlaps(**sip, metrics)) {
            return Err(Problem::new(
                "metrics.listen",
                format!("{metrics} collides with sip.listen {sip} (SIP uses TCP there too)"),
            ));
        }
        Ok(())
    }

    fn validate_routes(&self, trunks: &[&str], agents: &[&str]) -> Result<(), Problem> {
        if self.routes.is_empty() {
            return Err(Problem::new(
                "routes",
                "no route matches calls: add a [[routes]] entry without `user`",
            ));
        }
        let mut catch_all: Option<usize> = None;
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(first) = catch_all {
                return Err(Problem::new(
                    format!("routes[{i}]"),
                    format!("never used: routes[{first}] before it matches every call"),
                ));
            }
            if let Some(user) = &route.user {
                if user.is_empty() {
                    return Err(Problem::new(
                        format!("routes[{i}].user"),
                        "empty: omit `user` for a default route",
                    ));
                }
                if user.find('*').is_some_and(|at| at + 1 != user.len()) {
                    return Err(Problem::new(
                        format!("routes[{i}].user"),
                        format!("{user:?}: `*` is only allowed at the end (a prefix match)"),
                    ));
                }
            }
            if !agents.contains(&route.agent.as_str()) {
                return Err(Problem::new(
                    format!("routes[{i}].agent"),
                    format!(
                        "no agent named {:?} ({})",
                        route.agent,
                        known("agents", agents)
                    ),
                ));
            }
            if let Some(trunk) = &route.trunk {
                if !trunks.contains(&trunk.as_str()) {
                    return Err(Problem::new(
                        format!("routes[{i}].trunk"),
                        format!("no trunk named {trunk:?} ({})", known("trunks", trunks)),
                    ));
                }
            }
            if route.is_catch_all() {
                catch_all = Some(i);
            }
        }
        Ok(())
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

impl SipSettings {
    fn validate(&self) -> Result<(), Problem> {
        if self.listen.is_empty() {
            return Err(Problem::new(
                "sip.listen",
                "no address to listen on: set e.g. \"0.0.0.0:5060\"",
            ));
        }
        let mut seen = HashSet::new();
        if let Some(dup) = self.listen.iter().find(|addr| !seen.insert(**addr)) {
            return Err(Problem::new("sip.listen", format!("{dup} is listed twice")));
        }
        if let Some(public) = &self.public_address {
            if public.trim().is_empty() || public.chars().any(|c| c.is_whitespace()) {
                return Err(Problem::new(
                    "sip.public_address",
                    format!(
                        "{public:?} is not a host or IP: omit the key to advertise the bound one"
                    ),
                ));
            }
        }
        if self.user_agent.trim().is_empty() || self.user_agent.chars().any(char::is_control) {
            // RFC 3261 §25.1: server-val is at least one token; a CR/LF would split the header.
            return Err(Problem::new(
                "sip.user_agent",
                "must be non-empty text without control characters",
            ));
        }
        if self.t1_ms == 0 {
            return Err(Problem::new(
                "sip.t1_ms",
                "must be greater than 0 (RFC 3261 §17.1.1.1)",
            ));
        }
        if self.t2_ms < self.t1_ms {
            return Err(Problem::new(
                "sip.t2_ms",
                format!(
                    "{} is less than sip.t1_ms {} (RFC 3261 §17.1.2.2)",
                    self.t2_ms, self.t1_ms
                ),
            ));
        }
        if self.t4_ms == 0 {
            return Err(Problem::new(
                "sip.t4_ms",
                "must be greater than 0 (RFC 3261 §17.1.2.2)",
            ));
        }
        if self.max_message_bytes < MAX_MESSAGE_FLOOR_BYTES {
            return Err(Problem::new(
                "sip.max_message_bytes",
                format!(
                    "{} is below {MAX_MESSAGE_FLOOR_BYTES}: ordinary INVITEs would be refused",
                    self.max_message_bytes
                ),
            ));
        }
        if self.min_se_secs < MIN_SE_FLOOR_SECS {
            return Err(Problem::new(
                "sip.min_se_secs",
                format!(
                    "{} is below {MIN_SE_FLOOR_SECS} (RFC 4028 §4 floor)",
                    self.min_se_secs
                ),
            ));
        }
        if self.session_expires_secs < self.min_se_secs {
            return Err(Problem::new(
                "sip.session_expires_secs",
                format!(
                    "{} is less than sip.min_se_secs {} (RFC 4028 §4)",
                    self.session_expires_secs, self.min_se_secs
                ),
            ));
        }
        if self.tcp_max_connections == 0 {
            return Err(Problem::new(
                "sip.tcp_max_connections",
                "must be at least 1: with 0 no peer could reach voxgate over TCP",
            ));
        }
        if self.tcp_first_message_secs == 0 {
            return Err(Problem::new(
                "sip.tcp_first_message_secs",
                "must be at least 1: with 0 every accepted connection would be closed at once",
            ));
        }
        if self.tcp_idle_secs == 0 {
            return Err(Problem::new(
                "sip.tcp_idle_secs",
                "must be at least 1: with 0 every connection no call uses would be closed at once",
            ));
        }
        Ok(())
    }
}

impl RtpSettings {
    /// How many RTP/RTCP port pairs (even RTP port, RTCP on the next) fit the range.
    pub fn port_pairs(&self) -> usize {
        if self.port_min >= self.port_max {
            return 0;
        }
        (usize::from(self.port_max) - usize::from(self.port_min)).div_ceil(2)
    }

    fn validate(&self) -> Result<(), Problem> {
        if self.port_min == 0 {
            return Err(Problem::new("rtp.port_min", "must be greater than 0"));
        }
        if self.port_min % 2 != 0 {
            return Err(Problem::new(
                "rtp.port_min",
                format!(
                    "{} is odd: RTP uses even ports, RTCP the next one (RFC 3550 §11)",
                    self.port_min
                ),
            ));
        }
        if self.port_min >= self.port_max {
            return Err(Problem::new(
                "rtp.port_min",
                format!(
                    "{} is not below rtp.port_max {}: the range must hold an RTP/RTCP pair",
                    self.port_min, self.port_max
                ),
            ));
        }
        if self.jitter_max_ms > JITTER_MAX_LIMIT_MS {
            return Err(Problem::new(
                "rtp.jitter_max_ms",
                format!("{} is above {JITTER_MAX_LIMIT_MS}", self.jitter_max_ms),
            ));
        }
        if self.jitter_min_ms > self.jitter_max_ms {
            return Err(Problem::new(
                "rtp.jitter_min_ms",
                format!(
                    "{} is greater than rtp.jitter_max_ms {}",
                    self.jitter_min_ms, self.jitter_max_ms
                ),
            ));
        }
        if !PTIME_CHOICES_MS.contains(&self.ptime_ms) {
            return Err(Problem::new(
                "rtp.ptime_ms",
                format!(
                    "{} is not one of 10, 20, 30, 40, 60 (G.711 packetisation)",
                    self.ptime_ms
                ),
            ));
        }
        if self.rtcp_interval_secs == 0 {
            return Err(Problem::new(
                "rtp.rtcp_interval_secs",
                "must be greater than 0 (RFC 3550 §6.2 suggests 5)",
            ));
        }
        for (key, secs) in [
            ("rtp.timeout_secs", self.timeout_secs),
            ("rtp.hold_timeout_secs", self.hold_timeout_secs),
        ] {
            if secs > MEDIA_TIMEOUT_LIMIT_SECS {
                return Err(Problem::new(
                    key,
                    format!(
                        "{secs} is above {MEDIA_TIMEOUT_LIMIT_SECS} (one day; seconds, not \
                         milliseconds; 0 disables)"
                    ),
                ));
            }
        }
        if !(1..=TICK_PHASES_LIMIT).contains(&self.tick_phases) {
            return Err(Problem::new(
                "rtp.tick_phases",
                format!(
                    "{} is not between 1 and {TICK_PHASES_LIMIT}",
                    self.tick_phases
                ),
            ));
        }
        if !(1..=MEDIA_THREADS_LIMIT).contains(&self.media_threads) {
            return Err(Problem::new(
                "rtp.media_threads",
                format!(
                    "{} is not between 1 and {MEDIA_THREADS_LIMIT}",
                    self.media_threads
                ),
            ));
        }
        Ok(())
    }
}

impl CallSettings {
    fn validate(&self, rtp: &RtpSettings) -> Result<(), Problem> {
        if self.max_concurrent == 0 {
            return Err(Problem::new("calls.max_concurrent", "must be at least 1"));
        }
        if !matches!(self.at_capacity_status, 486 | 503) {
            return Err(Problem::new(
                "calls.at_capacity_status",
                format!(
                    "{} is not 486 (Busy Here) or 503 (Service Unavailable)",
                    self.at_capacity_status
                ),
            ));
        }
        let pairs = rtp.port_pairs();
        if self.max_concurrent > pairs {
            return Err(Problem::new(
                "calls.max_concurrent",
                format!(
                    "{} calls need more RTP/RTCP port pairs than rtp.port_min..rtp.port_max \
                     ({}..{}) holds ({pairs})",
                    self.max_concurrent, rtp.port_min, rtp.port_max
                ),
            ));
        }
        Ok(())
    }
}

impl AgentSettings {
    fn validate(&self, index: usize) -> Result<(), Problem> {
        if self.echo_delay_ms > ECHO_DELAY_LIMIT_MS {
            return Err(Problem::new(
                format!("agents[{index}].echo_delay_ms"),
                format!("{} is above {ECHO_DELAY_LIMIT_MS}", self.echo_delay_ms),
            ));
        }
        Ok(())
    }
}

impl RouteSettings {
    /// True when this route matches every call: no `user` (or just `*`) and no `trunk`.
    pub fn is_catch_all(&self) -> bool {
        self.trunk.is_none() && self.user.as_deref().is_none_or(|user| user == "*")
    }
}

/// A password or API key: kept out of logs (`Debug` and `Display` print `***`).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send or hash it; never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One validation failure before the file name is attached.
struct Problem {
    key: String,
    reason: String,
}

impl Problem {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Checks a section's names are non-empty and distinct; returns them in file order.
fn unique_names<'a>(
    section: &str,
    names: impl Iterator<Item = &'a str>,
) -> Result<Vec<&'a str>, Problem> {
    let mut seen: Vec<&str> = Vec::new();
    for (i, name) in names.enumerate() {
        if name.trim().is_empty() {
            return Err(Problem::new(format!("{section}[{i}].name"), "empty"));
        }
        if let Some(first) = seen.iter().position(|n| *n == name) {
            return Err(Problem::new(
                format!("{section}[{i}].name"),
                format!("duplicate: {section}[{first}] is already named {name:?}"),
            ));
        }
        seen.push(name);
    }
    Ok(seen)
}

fn known(section: &str, names: &[&str]) -> String {
    if names.is_empty() {
        format!("no {section} are configured")
    } else {
        format!("{section}: {}", names.join(", "))
    }
}

/// True when two listeners would fight over the same TCP port.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

/// `VOXGATE__…`, in any case (the config crate lowercases names before matching).
fn is_override_name(name: &str) -> bool {
    let prefix_len = ENV_PREFIX.len() + ENV_SEPARATOR.len();
    name.get(..prefix_len)
        .is_some_and(|head| head.eq_ignore_ascii_case(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
}

/// The dotted key a `VOXGATE__…` variable sets, as the config crate derives it.
fn override_key(name: &str) -> String {
    let prefix_len = ENV_PREFIX.len() + ENV_SEPARATOR.len();
    name.get(prefix_len..)
        .unwrap_or_default()
        .to_lowercase()
        .replace(ENV_SEPARATOR, ".")
}

/// Turns the config crate's error into ours, lifting out the key it carries.
///
/// `overrides` maps dotted keys set from the environment to the variable that set them, so an
/// error about such a key names the variable as well as the file.
fn from_config_error(
    file: &Path,
    overrides: &HashMap<String, String>,
    error: config::ConfigError,
) -> ConfigError {
    let invalid = |key: Option<String>, reason: String| {
        let key = key.map(|k| dotted(&k)).filter(|k| !k.is_empty());
        invalid(
            file,
            overrides,
            key.unwrap_or_else(|| "(top level)".to_owned()),
            reason,
        )
    };
    match error {
        config::ConfigError::NotFound(key) => {
            invalid(Some(key), "missing: this key is required".to_owned())
        }
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => invalid(key, format!("expected {expected}, found {unexpected}")),
        config::ConfigError::At { error, key, .. } => {
            let (field, reason) = describe_without_key(*error);
            let key = match (key, field) {
                (Some(key), Some(field)) if !key.is_empty() => Some(format!("{key}.{field}")),
                (key, field) => field.or(key),
            };
            invalid(key, reason)
        }
        config::ConfigError::Message(message) => match unknown_field(&message) {
            Some((field, reason)) => invalid(Some(field), reason),
            None => ConfigError::Load {
                file: file.to_owned(),
                reason: message,
            },
        },
        config::ConfigError::FileParse { cause, .. } => ConfigError::Load {
            file: file.to_owned(),
            reason: format!("not valid TOML: {}", cause.to_string().trim_end()),
        },
        other => ConfigError::Load {
            file: file.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// A [`ConfigError::Invalid`], naming the environment variable when one set `key`.
fn invalid(
    file: &Path,
    overrides: &HashMap<String, String>,
    key: String,
    reason: String,
) -> ConfigError {
    let reason = match overrides.get(&key) {
        Some(variable) => format!("{reason} (from environment variable {variable})"),
        None => reason,
    };
    ConfigError::Invalid {
        file: file.to_owned(),
        key,
        reason,
    }
}

/// The reason inside an `At` error, without the key and origin the outer error already gives;
/// for an unknown field also the field's name, which the key does not include.
fn describe_without_key(error: config::ConfigError) -> (Option<String>, String) {
    match error {
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => (None, format!("expected {expected}, found {unexpected}")),
        config::ConfigError::At { error, .. } => describe_without_key(*error),
        config::ConfigError::Message(message) => match unknown_field(&message) {
            Some((field, reason)) => (Some(field), reason),
            None => (None, message),
        },
        other => (None, other.to_string()),
    }
}

/// serde's "unknown field `x`, expected one of …" as the field and a reason naming the choices.
fn unknown_field(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let choices = rest.trim_start_matches(", ");
    Some((field.to_owned(), format!("unknown key ({choices})")))
}

/// The config crate joins `a[0]` and `b` as `a[0]b`; ours reads `a[0].b`.
fn dotted(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut previous = None;
    for c in key.chars() {
        if previous == Some(']') && (c.is_alphanumeric() || c == '_') {
            out.push('.');
        }
        out.push(c);
        previous = Some(c);
    }
    out
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
fn default_tcp_max_connections() -> usize {
    1_024
}
fn default_tcp_first_message_secs() -> u32 {
    32
}
fn default_tcp_idle_secs() -> u32 {
    120
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
            timeout_secs: 60,
            hold_timeout_secs: 0,
            media_threads: 1,
            tick_phases: TICK_PHASES_LIMIT,
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

/// A list of strings, or one comma-separated string (what an environment override gives),
/// each item trimmed.
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(|p| p.trim().to_owned()).collect(),
        OneOrMany::Many(v) => v.iter().map(|p| p.trim().to_owned()).collect(),
    })
}

fn socket_addrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    string_list(d)?
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/voxgate.toml");

    /// A loadable file: `[sip]` with `sip_extra`, then `rest`, then an echo agent and a default
    /// route (last, so routes in `rest` stay reachable).
    fn file(sip_extra: &str, rest: &str) -> String {
        format!(
            "[sip]\nlisten = \"127.0.0.1:5060\"\n{sip_extra}\n{rest}\n\
             [[agents]]\nname = \"echo\"\nkind = \"echo\"\n\n[[routes]]\nagent = \"echo\"\n"
        )
    }

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("voxgate.toml");
        std::fs::write(&path, text).expect("write config");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        match Settings::load_from(&path, env) {
            // The file name is part of every error: check it here once for all tests.
            Err(ConfigError::Invalid { file, key, reason }) => {
                assert_eq!(file, path);
                Err(ConfigError::Invalid { file, key, reason })
            }
            Err(ConfigError::Load { file, reason }) => {
                assert_eq!(file, path);
                Err(ConfigError::Load { file, reason })
            }
            ok => ok,
        }
    }

    /// The key and reason of a refused file; fails the test if it loads or fails otherwise.
    fn rejected(text: &str, env: &[(&str, &str)]) -> (String, String) {
        match load_text(text, env) {
            Err(ConfigError::Invalid { key, reason, .. }) => (key, reason),
            Err(other) => panic!("expected an Invalid error, got {other}"),
            Ok(settings) => panic!("expected an error, loaded {settings:?}"),
        }
    }

    #[track_caller]
    fn assert_rejected(text: &str, env: &[(&str, &str)], key: &str, reason_part: &str) {
        let (got_key, reason) = rejected(text, env);
        assert_eq!(got_key, key, "reason was: {reason}");
        assert!(
            reason.contains(reason_part),
            "{reason:?} lacks {reason_part:?}"
        );
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn loads_full_valid_file() {
        let text = r#"
            [sip]
            listen = ["0.0.0.0:5060", "[::]:5062"]
            public_address = "sip.example.net"
            user_agent = "edge-1"
            t1_ms = 250
            t2_ms = 2000
            t4_ms = 3000
            max_message_bytes = 8192
            session_expires_secs = 600
            min_se_secs = 120
            tcp_max_connections = 64
            tcp_first_message_secs = 5
            tcp_idle_secs = 300

            [rtp]
            bind_address = "10.0.0.5"
            port_min = 30000
            port_max = 30999
            jitter_min_ms = 20
            jitter_max_ms = 300
            ptime_ms = 30
            rtcp_interval_secs = 10
            timeout_secs = 30
            hold_timeout_secs = 3600
            media_threads = 2

            [calls]
            max_concurrent = 100
            at_capacity_status = 486
            drain_timeout_secs = 60

            [metrics]
            listen = "127.0.0.1:9100"

            [[trunks]]
            name = "pbx"
            allow_from = ["192.168.1.0/24", "::1/128"]

            [[trunks]]
            name = "carrier"

            [[agents]]
            name = "echo"
            kind = "echo"
            echo_delay_ms = 500

            [[agents]]
            name = "slow-echo"
            kind = "echo"

            [[routes]]
            user = "600*"
            field = "to"
            trunk = "pbx"
            agent = "slow-echo"

            [[routes]]
            agent = "echo"
        "#;
        let settings = load_text(text, &[]).expect("valid file");
        assert_eq!(
            settings.sip.listen,
            [addr("0.0.0.0:5060"), addr("[::]:5062")]
        );
        assert_eq!(
            settings.sip.public_address.as_deref(),
            Some("sip.example.net")
        );
        assert_eq!(settings.sip.user_agent, "edge-1");
        assert_eq!(
            settings.timers(),
            crate::sip::transaction::Timers {
                t1: Duration::from_millis(250),
                t2: Duration::from_millis(2_000),
                t4: Duration::from_millis(3_000),
            }
        );
        assert_eq!(settings.sip.max_message_bytes, 8192);
        assert_eq!(
            (settings.sip.session_expires_secs, settings.sip.min_se_secs),
            (600, 120)
        );
        assert_eq!(
            (
                settings.sip.tcp_max_connections,
                settings.sip.tcp_first_message_secs,
                settings.sip.tcp_idle_secs
            ),
            (64, 5, 300)
        );
        assert_eq!(
            settings.rtp.bind_address,
            Some("10.0.0.5".parse().expect("ip"))
        );
        assert_eq!(
            (settings.rtp.port_min, settings.rtp.port_max),
            (30_000, 30_999)
        );
        assert_eq!(settings.rtp.port_pairs(), 500);
        assert_eq!(
            (settings.rtp.jitter_min_ms, settings.rtp.jitter_max_ms),
            (20, 300)
        );
        assert_eq!(
            (settings.rtp.ptime_ms, settings.rtp.rtcp_interval_secs),
            (30, 10)
        );
        assert_eq!(
            (
                settings.rtp.timeout_secs,
                settings.rtp.hold_timeout_secs,
                settings.rtp.media_threads
            ),
            (30, 3_600, 2)
        );
        assert_eq!(settings.calls.max_concurrent, 100);
        assert_eq!(settings.calls.at_capacity_status, 486);
        assert_eq!(settings.calls.drain_timeout_secs, 60);
        assert_eq!(settings.metrics.listen, Some(addr("127.0.0.1:9100")));
        assert_eq!(settings.trunks.len(), 2);
        assert_eq!(settings.trunks[0].name, "pbx");
        assert_eq!(
            settings.trunks[0].allow_from,
            [
                "192.168.1.0/24".parse::<IpNet>().expect("net"),
                "::1/128".parse().expect("net")
            ]
        );
        assert!(settings.trunks[1].allow_from.is_empty());
        assert_eq!(settings.agents[0].kind, AgentKind::Echo);
        assert_eq!(settings.agents[0].echo_delay_ms, 500);
        assert_eq!(settings.agents[1].echo_delay_ms, 0);
        let route = &settings.routes[0];
        assert_eq!(route.user.as_deref(), Some("600*"));
        assert_eq!(route.field, RouteField::To);
        assert_eq!(route.trunk.as_deref(), Some("pbx"));
        assert_eq!(route.agent, "slow-echo");
        assert!(!route.is_catch_all());
        assert!(settings.routes[1].is_catch_all());
        assert_eq!(settings.routes[1].field, RouteField::RequestUri);
    }

    #[test]
    fn minimal_file_takes_documented_defaults() {
        let settings = load_text(&file("", ""), &[]).expect("valid file");
        assert_eq!(settings.sip.listen, [addr("127.0.0.1:5060")]);
        assert_eq!(settings.sip.public_address, None);
        assert_eq!(
            settings.sip.user_agent,
            format!("voxgate/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            settings.timers(),
            crate::sip::transaction::Timers::default()
        );
        assert_eq!(settings.sip.max_message_bytes, 65_535);
        assert_eq!(
            (settings.sip.session_expires_secs, settings.sip.min_se_secs),
            (1_800, 90)
        );
        assert_eq!(
            (
                settings.sip.tcp_max_connections,
                settings.sip.tcp_first_message_secs,
                settings.sip.tcp_idle_secs
            ),
            (1_024, 32, 120)
        );
        assert_eq!(
            (settings.rtp.port_min, settings.rtp.port_max),
            (10_000, 20_000)
        );
        assert_eq!(
            (settings.rtp.jitter_min_ms, settings.rtp.jitter_max_ms),
            (40, 200)
        );
        assert_eq!(
            (settings.rtp.ptime_ms, settings.rtp.rtcp_interval_secs),
            (20, 5)
        );
        assert_eq!(
            (
                settings.rtp.timeout_secs,
                settings.rtp.hold_timeout_secs,
                settings.rtp.media_threads
            ),
            (60, 0, 1)
        );
        assert_eq!(settings.rtp.bind_address, None);
        assert_eq!(settings.calls.max_concurrent, 500);
        assert_eq!(settings.calls.at_capacity_status, 503);
        assert_eq!(settings.calls.drain_timeout_secs, 30);
        assert_eq!(settings.metrics.listen, None);
        assert!(settings.trunks.is_empty());
    }

    #[test]
    fn shipped_example_file_loads() {
        let settings = Settings::load_from(Path::new(SHIPPED), Vec::new()).expect("shipped file");
        assert_eq!(settings.sip.listen, [addr("0.0.0.0:5060")]);
        assert_eq!(settings.sip.public_address, None);
        assert_eq!(
            (settings.rtp.port_min, settings.rtp.port_max),
            (10_000, 20_000)
        );
        assert_eq!(settings.metrics.listen, Some(addr("127.0.0.1:9464")));
        assert_eq!(settings.trunks.len(), 1);
        assert_eq!(settings.trunks[0].name, "pbx");
        assert_eq!(
            settings.trunks[0].allow_from,
            [
                "127.0.0.0/8".parse::<IpNet>().expect("net"),
                "::1/128".parse().expect("net")
            ]
        );
        assert_eq!(settings.agents.len(), 2);
        assert_eq!(settings.agents[0].name, "echo");
        assert_eq!(settings.agents[0].kind, AgentKind::Echo);
        assert_eq!(settings.agents[0].echo_delay_ms, 0);
        assert_eq!(settings.agents[1].name, "assistant");
        assert_eq!(settings.agents[1].kind, AgentKind::Openai);
        assert_eq!(settings.agents[1].fallback.as_deref(), Some("echo"));
        assert_eq!(settings.routes.len(), 2);
        assert_eq!(settings.routes[0].user.as_deref(), Some("echo"));
        assert_eq!(settings.routes[0].agent, "echo");
        assert!(settings.routes[1].is_catch_all());
        assert_eq!(settings.routes[1].agent, "assistant");
        // The example states every default: loading it equals loading the bare minimum.
        let minimal = load_text(&file("", ""), &[]).expect("valid file");
        assert_eq!(settings.timers(), minimal.timers());
        assert_eq!(settings.sip.user_agent, minimal.sip.user_agent);
        assert_eq!(
            settings.sip.max_message_bytes,
            minimal.sip.max_message_bytes
        );
        assert_eq!(
            settings.sip.session_expires_secs,
            minimal.sip.session_expires_secs
        );
        assert_eq!(settings.sip.min_se_secs, minimal.sip.min_se_secs);
        assert_eq!(settings.rtp.jitter_min_ms, minimal.rtp.jitter_min_ms);
        assert_eq!(settings.rtp.jitter_max_ms, minimal.rtp.jitter_max_ms);
        assert_eq!(settings.rtp.ptime_ms, minimal.rtp.ptime_ms);
        assert_eq!(
            settings.rtp.rtcp_interval_secs,
            minimal.rtp.rtcp_interval_secs
        );
        assert_eq!(settings.calls.max_concurrent, minimal.calls.max_concurrent);
        assert_eq!(
            settings.calls.at_capacity_status,
            minimal.calls.at_capacity_status
        );
        assert_eq!(
            settings.calls.drain_timeout_secs,
            minimal.calls.drain_timeout_secs
        );
    }

    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("absent.toml");
        match Settings::load_from(&path, Vec::new()) {
            Err(error @ ConfigError::Load { .. }) => {
                let text = error.to_string();
                assert!(text.starts_with(&format!("{}: ", path.display())), "{text}");
                assert!(text.contains("cannot read"), "{text}");
            }
            other => panic!("expected a Load error, got {other:?}"),
        }
    }

    #[test]
    fn invalid_toml_is_a_load_error_with_the_line() {
        match load_text(&file("", "[calls\n"), &[]) {
            Err(ConfigError::Load { reason, .. }) => {
                assert!(reason.contains("not valid TOML"), "{reason}");
                assert!(reason.contains("line"), "{reason}");
            }
            other => panic!("expected a Load error, got {other:?}"),
        }
    }

    #[test]
    fn error_display_names_file_key_and_reason() {
        let error = load_text(&file("", "[calls]\nmax_concurrent = 0"), &[]).expect_err("refused");
        let ConfigError::Invalid { file, .. } = &error else {
            panic!("{error:?}")
        };
        assert_eq!(
            error.to_string(),
            format!(
                "{}: calls.max_concurrent: must be at least 1",
                file.display()
            )
        );
    }

    #[test]
    fn refuses_missing_sip_section_and_listen() {
        assert_rejected("", &[], "sip", "missing");
        assert_rejected(
            &file("", "").replace("listen = \"127.0.0.1:5060\"", ""),
            &[],
            "sip.listen",
            "missing",
        );
        let empty_list = file("", "").replace("\"127.0.0.1:5060\"", "[]");
        assert_rejected(&empty_list, &[], "sip.listen", "no address to listen on");
        let empty_string = file("", "").replace("\"127.0.0.1:5060\"", "\"\"");
        assert_rejected(&empty_string, &[], "sip.listen", "no address to listen on");
    }

    #[test]
    fn refuses_bad_or_repeated_listen_address() {
        let bad = file("", "").replace("127.0.0.1:5060", "127.0.0.1");
        assert_rejected(&bad, &[], "sip.listen", "`127.0.0.1`");
        let twice =
            file("", "").replace("\"127.0.0.1:5060\"", "\"127.0.0.1:5060, 127.0.0.1:5060\"");
        assert_rejected(&twice, &[], "sip.listen", "listed twice");
    }

    #[test]
    fn refuses_unknown_keys_by_name() {
        assert_rejected(
            &file("listen_port = 5060", ""),
            &[],
            "sip.listen_port",
            "unknown key",
        );
        assert_rejected(
            &file("", "[rtp]\nport_minimum = 10000"),
            &[],
            "rtp.port_minimum",
            "unknown key",
        );
        assert_rejected(&file("", "[sips]\nlisten = 1"), &[], "sips", "unknown key");
        let trunk = "[[trunks]]\nname = \"pbx\"\nallow = [\"10.0.0.0/8\"]";
        assert_rejected(&file("", trunk), &[], "trunks[0].allow", "unknown key");
    }

    #[test]
    fn type_errors_name_the_key() {
        assert_rejected(
            &file("", "[rtp]\nport_min = 70000"),
            &[],
            "rtp.port_min",
            "70000",
        );
        assert_rejected(
            &file("", "[rtp]\nport_min = \"low\""),
            &[],
            "rtp.port_min",
            "\"low\"",
        );
        let trunk = "[[trunks]]\nname = \"pbx\"\nallow_from = [\"10.0.0/8\"]";
        assert_rejected(
            &file("", trunk),
            &[],
            "trunks[0].allow_from[0]",
            "invalid IP address",
        );
        let agent = "[[agents]]\nname = \"a\"\nkind = \"parrot\"";
        assert_rejected(&file("", agent), &[], "agents[0].kind", "parrot");
    }

    #[test]
    fn refuses_bad_sip_timers() {
        assert_rejected(&file("t1_ms = 0", ""), &[], "sip.t1_ms", "greater than 0");
        assert_rejected(
            &file("t1_ms = 500\nt2_ms = 400", ""),
            &[],
            "sip.t2_ms",
            "less than sip.t1_ms",
        );
        assert_rejected(&file("t4_ms = 0", ""), &[], "sip.t4_ms", "greater than 0");
    }

    #[test]
    fn refuses_session_timer_below_rfc_4028_floor() {
        assert_rejected(
            &file("min_se_secs = 89", ""),
            &[],
            "sip.min_se_secs",
            "RFC 4028",
        );
        let below = "min_se_secs = 300\nsession_expires_secs = 200";
        assert_rejected(
            &file(below, ""),
            &[],
            "sip.session_expires_secs",
            "less than sip.min_se_secs",
        );
        let equal = "min_se_secs = 90\nsession_expires_secs = 90";
        assert!(load_text(&file(equal, ""), &[]).is_ok());
    }

    #[test]
    fn refuses_tcp_limits_of_zero() {
        assert_rejected(
            &file("tcp_max_connections = 0", ""),
            &[],
            "sip.tcp_max_connections",
            "at least 1",
        );
        assert_rejected(
            &file("tcp_first_message_secs = 0", ""),
            &[],
            "sip.tcp_first_message_secs",
            "at least 1",
        );
        assert_rejected(
            &file("tcp_idle_secs = 0", ""),
            &[],
            "sip.tcp_idle_secs",
            "at least 1",
        );
    }

    #[test]
    fn refuses_unusable_sip_text_values() {
        assert_rejected(
            &file("max_message_bytes = 1000", ""),
            &[],
            "sip.max_message_bytes",
            "below 1500",
        );
        assert_rejected(
            &file("public_address = \"\"", ""),
            &[],
            "sip.public_address",
            "omit the key",
        );
        assert_rejected(
            &file("public_address = \"a b\"", ""),
            &[],
            "sip.public_address",
            "not a host",
        );
        let injected = "user_agent = \"voxgate\\r\\nX-Evil: 1\"";
        assert_rejected(
            &file(injected, ""),
            &[],
            "sip.user_agent",
            "control characters",
        );
        assert_rejected(
            &file("user_agent = \" \"", ""),
            &[],
            "sip.user_agent",
            "non-empty",
        );
    }

    #[test]
    fn refuses_bad_rtp_port_range() {
        let rtp = |lines: &str| file("", &format!("[rtp]\n{lines}\n[calls]\nmax_concurrent = 1"));
        assert_rejected(&rtp("port_min = 10001"), &[], "rtp.port_min", "odd");
        assert_rejected(&rtp("port_min = 0"), &[], "rtp.port_min", "greater than 0");
        assert_rejected(
            &rtp("port_min = 20000\nport_max = 20000"),
            &[],
            "rtp.port_min",
            "not below rtp.port_max",
        );
        assert_rejected(
            &rtp("port_min = 30000\nport_max = 20000"),
            &[],
            "rtp.port_min",
            "not below rtp.port_max",
        );
        // One RTP/RTCP pair is the smallest usable range, and low ports are allowed.
        let settings = load_text(&rtp("port_min = 1000\nport_max = 1001"), &[]).expect("one pair");
        assert_eq!(settings.rtp.port_pairs(), 1);
    }

    #[test]
    fn refuses_bad_jitter_bounds_ptime_and_rtcp_interval() {
        let rtp = |lines: &str| file("", &format!("[rtp]\n{lines}"));
        assert_rejected(
            &rtp("jitter_min_ms = 300\njitter_max_ms = 200"),
            &[],
            "rtp.jitter_min_ms",
            "greater than rtp.jitter_max_ms",
        );
        assert_rejected(
            &rtp("jitter_max_ms = 1001"),
            &[],
            "rtp.jitter_max_ms",
            "above 1000",
        );
        assert!(load_text(&rtp("jitter_min_ms = 0\njitter_max_ms = 1000"), &[]).is_ok());
        assert_rejected(
            &rtp("ptime_ms = 25"),
            &[],
            "rtp.ptime_ms",
            "not one of 10, 20, 30, 40, 60",
        );
        for ptime in PTIME_CHOICES_MS {
            assert!(
                load_text(&rtp(&format!("ptime_ms = {ptime}")), &[]).is_ok(),
                "{ptime}"
            );
        }
        assert_rejected(
            &rtp("rtcp_interval_secs = 0"),
            &[],
            "rtp.rtcp_interval_secs",
            "greater than 0",
        );
    }

    #[test]
    fn refuses_bad_media_timeouts_and_thread_counts() {
        let rtp = |lines: &str| file("", &format!("[rtp]\n{lines}"));
        assert_rejected(
            &rtp("timeout_secs = 100000"),
            &[],
            "rtp.timeout_secs",
            "above 86400",
        );
        assert_rejected(
            &rtp("hold_timeout_secs = 86401"),
            &[],
            "rtp.hold_timeout_secs",
            "above 86400",
        );
        assert_rejected(&rtp("timeout_secs = -1"), &[], "rtp.timeout_secs", "");
        let off = load_text(&rtp("timeout_secs = 0\nhold_timeout_secs = 86400"), &[])
            .expect("0 disables, a day is allowed");
        assert_eq!(
            (off.rtp.timeout_secs, off.rtp.hold_timeout_secs),
            (0, 86_400)
        );
        assert_rejected(
            &rtp("media_threads = 0"),
            &[],
            "rtp.media_threads",
            "not between 1 and 64",
        );
        assert_rejected(
            &rtp("media_threads = 65"),
            &[],
            "rtp.media_threads",
            "not between 1 and 64",
        );
        assert_rejected(
            &rtp("tick_phases = 0"),
            &[],
            "rtp.tick_phases",
            "not between 1 and 10",
        );
        assert_rejected(
            &rtp("tick_phases = 11"),
            &[],
            "rtp.tick_phases",
            "not between 1 and 10",
        );
        let one = load_text(&rtp("tick_phases = 1"), &[]).expect("1 phase is allowed");
        assert_eq!(one.rtp.tick_phases, 1);
    }

    #[test]
    fn refuses_bad_call_admission() {
        assert_rejected(
            &file("", "[calls]\nmax_concurrent = 0"),
            &[],
            "calls.max_concurrent",
            "at least 1",
        );
        assert_rejected(
            &file("", "[calls]\nat_capacity_status = 480"),
            &[],
            "calls.at_capacity_status",
            "not 486",
        );
        let crowded = "[rtp]\nport_min = 10000\nport_max = 10009\n[calls]\nmax_concurrent = 6";
        assert_rejected(&file("", crowded), &[], "calls.max_concurrent", "(5)");
        let fits = "[rtp]\nport_min = 10000\nport_max = 10009\n[calls]\nmax_concurrent = 5";
        assert!(load_text(&file("", fits), &[]).is_ok());
    }

    #[test]
    fn refuses_metrics_on_the_sip_address() {
        let clash = file("", "[metrics]\nlisten = \"127.0.0.1:5060\"");
        assert_rejected(
            &clash,
            &[],
            "metrics.listen",
            "collides with sip.listen 127.0.0.1:5060",
        );
        let wildcard = file("", "[metrics]\nlisten = \"0.0.0.0:5060\"");
        assert_rejected(&wildcard, &[], "metrics.listen", "collides");
        let other_family = file("", "[metrics]\nlisten = \"[::1]:5060\"");
        assert!(load_text(&other_family, &[]).is_ok());
    }

    #[test]
    fn refuses_empty_and_duplicate_names() {
        let trunks = "[[trunks]]\nname = \"pbx\"\n[[trunks]]\nname = \"pbx\"";
        assert_rejected(
            &file("", trunks),
            &[],
            "trunks[1].name",
            "duplicate: trunks[0] is already named \"pbx\"",
        );
        assert_rejected(
            &file("", "[[trunks]]\nname = \"\""),
            &[],
            "trunks[0].name",
            "empty",
        );
        assert_rejected(
            &file("", "[[trunks]]\nname = \"  \""),
            &[],
            "trunks[0].name",
            "empty",
        );
        // The helper appends an agent named "echo" after this one.
        let agents = "[[agents]]\nname = \"echo\"\nkind = \"echo\"";
        assert_rejected(
            &file("", agents),
            &[],
            "agents[1].name",
            "duplicate: agents[0]",
        );
        assert_rejected(
            &file("", "[[agents]]\nname = \"\"\nkind = \"echo\""),
            &[],
            "agents[0].name",
            "empty",
        );
    }

    #[test]
    fn refuses_excessive_echo_delay() {
        let agent = "[[agents]]\nname = \"late\"\nkind = \"echo\"\necho_delay_ms = 10001";
        assert_rejected(
            &file("", agent),
            &[],
            "agents[0].echo_delay_ms",
            "above 10000",
        );
    }

    #[test]
    fn refuses_routes_to_unknown_agent_or_trunk() {
        let route = "[[routes]]\nuser = \"100\"\nagent = \"x\"";
        assert_rejected(
            &file("", route),
            &[],
            "routes[0].agent",
            "no agent named \"x\" (agents: echo)",
        );
        let route = "[[routes]]\nuser = \"100\"\ntrunk = \"carrier\"\nagent = \"echo\"";
        assert_rejected(
            &file("", route),
            &[],
            "routes[0].trunk",
            "no trunk named \"carrier\" (no trunks are configured)",
        );
        let with_trunk = format!("[[trunks]]\nname = \"pbx\"\n{route}");
        assert_rejected(
            &file("", &with_trunk),
            &[],
            "routes[0].trunk",
            "(trunks: pbx)",
        );
    }

    #[test]
    fn refuses_configuration_without_routes() {
        let text =
            "[sip]\nlisten = \"127.0.0.1:5060\"\n[[agents]]\nname = \"echo\"\nkind = \"echo\"\n";
        assert_rejected(text, &[], "routes", "add a [[routes]] entry without `user`");
    }

    #[test]
    fn refuses_route_after_a_catch_all() {
        // The helper's default route comes last; this one goes first and catches everything.
        let catch_all = "[[routes]]\nuser = \"*\"\nagent = \"echo\"";
        assert_rejected(
            &file("", catch_all),
            &[],
            "routes[1]",
            "never used: routes[0]",
        );
        // A default route for one trunk still lets later routes see the other trunks' calls.
        let per_trunk = "[[trunks]]\nname = \"pbx\"\n[[routes]]\ntrunk = \"pbx\"\nagent = \"echo\"";
        assert!(load_text(&file("", per_trunk), &[]).is_ok());
    }

    #[test]
    fn refuses_malformed_route_user() {
        assert_rejected(
            &file("", "[[routes]]\nuser = \"\"\nagent = \"echo\""),
            &[],
            "routes[0].user",
            "omit `user`",
        );
        assert_rejected(
            &file("", "[[routes]]\nuser = \"1*2\"\nagent = \"echo\""),
            &[],
            "routes[0].user",
            "only allowed at the end",
        );
        assert!(load_text(
            &file("", "[[routes]]\nuser = \"1*\"\nagent = \"echo\""),
            &[]
        )
        .is_ok());
    }

    #[test]
    fn dns_servers_take_addresses_with_or_without_a_port_from_the_file_or_the_environment() {
        let settings = load_text(&file("", ""), &[]).expect("no [dns]");
        assert!(settings.dns.servers.is_empty(), "the system's by default");
        assert_eq!(settings.dns.timeout(), Duration::from_secs(2));
        let settings = load_text(
            &file(
                "",
                "[dns]\nservers = [\"192.0.2.53\", \"[2001:db8::53]:5353\"]\ntimeout_ms = 500",
            ),
            &[],
        )
        .expect("valid");
        assert_eq!(
            settings.dns.servers,
            [addr("192.0.2.53:53"), addr("[2001:db8::53]:5353")]
        );
        assert_eq!(settings.dns.timeout(), Duration::from_millis(500));
        let env = [("VOXGATE__DNS__SERVERS", "127.0.0.1:5353, 2001:db8::1")];
        let settings = load_text(&file("", ""), &env).expect("overridden");
        assert_eq!(
            settings.dns.servers,
            [addr("127.0.0.1:5353"), addr("[2001:db8::1]:53")]
        );
    }

    #[test]
    fn bad_dns_settings_are_refused_with_their_key() {
        let (key, reason) = rejected(&file("", "[dns]\nservers = [\"ns1.example.com\"]"), &[]);
        assert!(key.contains("dns.servers"), "key {key}: {reason}");
        assert!(reason.contains("not an IP address"), "{reason}");
        assert_rejected(
            &file("", "[dns]\ntimeout_ms = 50"),
            &[],
            "dns.timeout_ms",
            "outside 100..=30000 ms",
        );
        assert_rejected(
            &file("", "[dns]\nservers = \"127.0.0.1:0\""),
            &[],
            "dns.servers",
            "port 0",
        );
    }

    #[test]
    fn environment_overrides_listen_list_and_integers() {
        let env = [
            ("VOXGATE__SIP__LISTEN", "127.0.0.1:5070, [::1]:5070"),
            ("VOXGATE__METRICS__LISTEN", "127.0.0.1:9099"),
            ("VOXGATE__CALLS__MAX_CONCURRENT", "10"),
            ("VOXGATE__CALLS__AT_CAPACITY_STATUS", "486"),
            ("VOXGATE__RTP__PORT_MIN", "40000"),
            ("VOXGATE__RTP__PORT_MAX", "40100"),
            ("VOXGATE__SIP__T1_MS", "250"),
            ("VOXGATE__SIP__USER_AGENT", "lab"),
        ];
        let settings = load_text(&file("t1_ms = 400", "[calls]\nmax_concurrent = 3"), &env)
            .expect("overridden");
        assert_eq!(
            settings.sip.listen,
            [addr("127.0.0.1:5070"), addr("[::1]:5070")]
        );
        assert_eq!(settings.metrics.listen, Some(addr("127.0.0.1:9099")));
        assert_eq!(settings.calls.max_concurrent, 10);
        assert_eq!(settings.calls.at_capacity_status, 486);
        assert_eq!(
            (settings.rtp.port_min, settings.rtp.port_max),
            (40_000, 40_100)
        );
        assert_eq!(settings.sip.t1_ms, 250);
        assert_eq!(settings.sip.user_agent, "lab");
    }

    #[test]
    fn environment_keeps_text_values_verbatim() {
        for text in ["007", "1.0", "1e3", "TRUE"] {
            let env = [
                ("VOXGATE__SIP__USER_AGENT", text),
                ("VOXGATE__SIP__PUBLIC_ADDRESS", text),
            ];
            let settings = load_text(&file("", ""), &env).expect("loaded");
            assert_eq!(settings.sip.user_agent, text);
            assert_eq!(settings.sip.public_address.as_deref(), Some(text));
        }
    }

    #[test]
    fn environment_names_are_case_insensitive_and_others_ignored() {
        let env = [
            ("voxgate__calls__max_concurrent", "7"),
            ("VOXGATE_CONFIG", "/elsewhere.toml"),
            ("VOXGATE_SIP__LISTEN", "10.9.9.9:1"),
            ("PATH", "/usr/bin"),
            ("VOXGATE__METRICS__LISTEN", ""),
        ];
        let settings = load_text(&file("", ""), &env).expect("loaded");
        assert_eq!(settings.calls.max_concurrent, 7);
        assert_eq!(settings.sip.listen, [addr("127.0.0.1:5060")]);
        assert_eq!(settings.metrics.listen, None);
    }

    #[test]
    fn environment_can_supply_a_section_the_file_lacks() {
        let text = "[[agents]]\nname = \"echo\"\nkind = \"echo\"\n[[routes]]\nagent = \"echo\"\n";
        let settings =
            load_text(text, &[("VOXGATE__SIP__LISTEN", "127.0.0.1:5080")]).expect("loaded");
        assert_eq!(settings.sip.listen, [addr("127.0.0.1:5080")]);
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let (key, reason) = rejected(&file("", ""), &[("VOXGATE__CALLS__MAX_CONCURRENT", "ten")]);
        assert_eq!(key, "calls.max_concurrent");
        assert!(reason.contains("\"ten\""), "{reason}");
        assert!(
            reason.contains("from environment variable VOXGATE__CALLS__MAX_CONCURRENT"),
            "{reason}"
        );
        let (key, reason) = rejected(&file("", ""), &[("VOXGATE__RTP__PORT_MIN", "10001")]);
        assert_eq!(key, "rtp.port_min");
        assert!(
            reason.contains("odd") && reason.contains("VOXGATE__RTP__PORT_MIN"),
            "{reason}"
        );
        assert_rejected(
            &file("", ""),
            &[("VOXGATE__SIP__LISTN", "1")],
            "sip.listn",
            "unknown key",
        );
        assert_rejected(
            &file("", ""),
            &[("VOXGATE__SIP__LISTEN", "localhost")],
            "sip.listen",
            "`localhost`",
        );
    }

    #[test]
    fn odd_environment_names_are_errors_not_panics() {
        for name in [
            "VOXGATE__",
            "VOXGATE____",
            "VOXGATE__[0]",
            "VOXGATE__SIP",
            "VOXGATE__AGENTS[5]__NAME",
        ] {
            assert!(load_text(&file("", ""), &[(name, "1")]).is_err(), "{name}");
        }
    }

    #[test]
    fn secret_is_masked_in_debug_and_display() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(Secret::from("s3cret".to_owned()).expose(), "s3cret");
    }

    #[test]
    fn secret_deserializes_from_a_string() {
        #[derive(Debug, Deserialize)]
        struct WithSecret {
            password: Secret,
        }
        let parsed: WithSecret = config::Config::builder()
            .add_source(config::File::from_str(
                "password = \"pa55\"",
                config::FileFormat::Toml,
            ))
            .build()
            .and_then(config::Config::try_deserialize)
            .expect("parsed");
        assert_eq!(parsed.password.expose(), "pa55");
        assert_eq!(format!("{parsed:?}"), "WithSecret { password: *** }");
    }
}
