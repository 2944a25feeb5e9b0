//! Every Prometheus metric voxgate exports, registered in one place.
//!
//! Machines count into plain stats structs; `io/` copies those figures here. Labels are bounded
//! (methods, directions, results): never a Call-ID or an address.

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::call::transfer::{TransferOutcome, TRANSFER_TOOL};
use crate::config::transfer::TransferMethod;
use crate::config::{AgentKind, AgentSettings};
use crate::realtime::session::END_CALL_TOOL;
use crate::sip::registration::AttemptResult;

mod process;

pub use process::ProcessCollector;

/// How a tool call went, as the `result` label of `voxgate_tool_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolResult {
    /// The tool ran (an HTTP tool answered 2xx; `end_call` and `transfer_call` were accepted).
    Ok,
    /// The agent has no tool by that name (counted as `tool="other"`).
    Unknown,
    /// `transfer_call` refused at once: no such destination, or a transfer already under way.
    Refused,
    /// The HTTP tool answered with a status other than 2xx.
    HttpError,
    /// The HTTP tool did not answer within its timeout.
    Timeout,
    /// The HTTP tool could not be reached, or its answer could not be read.
    Error,
}

impl ToolResult {
    /// What an HTTP tool's call can end as.
    pub const HTTP: [ToolResult; 4] = [
        ToolResult::Ok,
        ToolResult::HttpError,
        ToolResult::Timeout,
        ToolResult::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolResult::Ok => "ok",
            ToolResult::Unknown => "unknown",
            ToolResult::Refused => "refused",
            ToolResult::HttpError => "http_error",
            ToolResult::Timeout => "timeout",
            ToolResult::Error => "error",
        }
    }
}

/// How a call ended, as the `result` label of `voxgate_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// Answered and ended normally by either side.
    Completed,
    /// Refused before answer (403, 486, 488, 503 …).
    Rejected,
    /// The caller cancelled before answer.
    Cancelled,
    /// Answered, then ended by a fault (no ACK, session expired, media timeout).
    Failed,
    /// Answered, then handed to a person by REFER (voxgate left the call).
    Transferred,
}

impl CallResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CallResult::Completed => "completed",
            CallResult::Rejected => "rejected",
            CallResult::Cancelled => "cancelled",
            CallResult::Failed => "failed",
            CallResult::Transferred => "transferred",
        }
    }
}

/// One metric family as the exposition shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// Its name (`voxgate_calls_total`).
    pub name: String,
    /// `counter`, `gauge` or `histogram`, as in the exposition's `# TYPE` line.
    pub kind: &'static str,
    /// Its label names, in the order the code gives them.
    pub labels: Vec<String>,
    /// The `# HELP` text.
    pub help: String,
}

/// The registry and handles to every metric.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Calls currently up or being set up.
    pub calls_active: IntGauge,
    /// Calls ended, by result.
    pub calls_total: IntCounterVec,
    /// SIP requests and responses, by method (CSeq method for responses) and direction.
    pub sip_messages_total: IntCounterVec,
    /// Datagrams or stream messages that could not be parsed.
    pub sip_parse_errors_total: IntCounter,
    /// SIP TCP connections open now, by direction (`inbound`: a peer opened it; `outbound`:
    /// voxgate did).
    pub sip_tcp_connections: IntGaugeVec,
    /// TCP connections from peers closed as they were accepted: `sip.tcp_max_connections` was
    /// reached.
    pub sip_tcp_connections_refused_total: IntCounter,
    /// SIP transactions held now, by role (`server`: a peer's request, `client`: voxgate's).
    pub sip_transactions: IntGaugeVec,
    /// RTP packets, by direction (`in`, `out`).
    pub rtp_packets_total: IntCounterVec,
    /// RTP packets the far end sent that never arrived (RFC 3550 cumulative loss).
    pub rtp_packets_lost_total: IntCounter,
    /// Jitter-buffer delay sampled once per second per call.
    pub jitter_buffer_delay_seconds: Histogram,
    /// RFC 3550 interarrival jitter sampled once per second per call.
    pub rtp_interarrival_jitter_seconds: Histogram,
    /// Calls bridged to a transfer destination (B2BUA) right now.
    pub bridged_calls_active: IntGauge,
    /// The speech-agent (OpenAI Realtime) metrics.
    pub realtime: RealtimeMetrics,
    /// Digest decisions on INVITEs from sources outside `allow_from`, by trunk and result.
    pub inbound_auth_total: IntCounterVec,
    /// The register-mode trunks' registrations.
    pub registration: RegistrationMetrics,
    /// Hand-offs to people.
    pub transfer: TransferMetrics,
    /// Keys callers pressed, by how they were signalled (`rfc4733`, `info`).
    pub dtmf_digits_total: IntCounterVec,
    /// INVITEs refused (403) because no trunk allows their source.
    pub unknown_source_invites_total: IntCounter,
    /// 1, labelled with the running version (`voxgate_build_info{version}`).
    pub build_info: IntGaugeVec,
    /// The process's CPU, memory, descriptors, threads and start time (`process_*`).
    pub process: ProcessCollector,
}

/// Metrics of transfers to people, labelled by destination name (bounded: the configured
/// destinations), method (`refer`, `bridge`) and result.
#[derive(Clone)]
pub struct TransferMetrics {
    /// Transfer attempts by how they ended (a `refer_then_bridge` transfer whose REFER fails
    /// counts the REFER's failure and then the bridge's outcome).
    pub transfers_total: IntCounterVec,
    /// From the transfer's start (the hand-off sentence played) to its outcome.
    pub duration_seconds: HistogramVec,
}

impl TransferMetrics {
    fn new() -> TransferMetrics {
        TransferMetrics {
            transfers_total: IntCounterVec::new(
                Opts::new(
                    "voxgate_transfers_total",
                    "Transfer attempts by destination, method (refer, bridge) and result",
                ),
                &["destination", "method", "result"],
            )
            .expect("valid metric definition"),
            duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "voxgate_transfer_duration_seconds",
                    "From the transfer's start to its outcome, by method",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
                ]),
                &["method"],
            )
            .expect("valid metric definition"),
        }
    }

    /// Exports at 0 every series a destination reached by `method` can be counted in.
    pub fn prime(&self, destination: &str, method: TransferMethod) {
        let attempts: &[&str] = match method {
            TransferMethod::Refer => &["refer"],
            TransferMethod::Bridge => &["bridge"],
            TransferMethod::ReferThenBridge => &["refer", "bridge"],
        };
        for method in attempts {
            for result in TransferOutcome::results_of(method) {
                self.transfers_total
                    .with_label_values(&[destination, method, result]);
            }
            self.duration_seconds.with_label_values(&[method]);
        }
    }

    /// Records one attempt's outcome.
    pub fn record(
        &self,
        destination: &str,
        method: &str,
        result: &str,
        duration: std::time::Duration,
    ) {
        self.transfers_total
            .with_label_values(&[destination, method, result])
            .inc();
        self.duration_seconds
            .with_label_values(&[method])
            .observe(duration.as_secs_f64());
    }
}

/// Metrics of voxgate's registrations with PBXs and providers, labelled by trunk name (bounded:
/// the trunks of the configuration).
#[derive(Clone)]
pub struct RegistrationMetrics {
    /// 1 while the registrar holds the binding, else 0.
    pub up: IntGaugeVec,
    /// REGISTER transactions by how they ended (`AttemptResult` labels).
    pub attempts_total: IntCounterVec,
    /// The expiry the registrar granted, 0 while down.
    pub expires_seconds: IntGaugeVec,
}

impl RegistrationMetrics {
    fn new() -> RegistrationMetrics {
        RegistrationMetrics {
            up: IntGaugeVec::new(
                Opts::new(
                    "voxgate_registration_up",
                    "1 while the trunk's registrar holds voxgate's binding, else 0",
                ),
                &["trunk"],
            )
            .expect("valid metric definition"),
            attempts_total: IntCounterVec::new(
                Opts::new(
                    "voxgate_registration_attempts_total",
                    "REGISTER transactions by trunk and result",
                ),
                &["trunk", "result"],
            )
            .expect("valid metric definition"),
            expires_seconds: IntGaugeVec::new(
                Opts::new(
                    "voxgate_registration_expires_seconds",
                    "Registration expiry granted by the trunk's registrar, 0 while down",
                ),
                &["trunk"],
            )
            .expect("valid metric definition"),
        }
    }

    /// Exports zero-valued series for a register-mode trunk, so it shows before its first try.
    pub fn prime(&self, trunk: &str) {
        self.up.with_label_values(&[trunk]).set(0);
        self.expires_seconds.with_label_values(&[trunk]).set(0);
        for result in AttemptResult::ALL {
            self.attempts_total
                .with_label_values(&[trunk, result.label()]);
        }
    }

    /// Sets a trunk's state: up or down, and the expiry granted (while up).
    pub fn set_state(&self, trunk: &str, up: bool, expires: Option<std::time::Duration>) {
        self.up.with_label_values(&[trunk]).set(i64::from(up));
        let secs = expires
            .filter(|_| up)
            .map_or(0, |expires| expires.as_secs());
        self.expires_seconds
            .with_label_values(&[trunk])
            .set(i64::try_from(secs).unwrap_or(i64::MAX));
    }

    /// Counts `count` more attempts of a trunk that ended with `result`.
    pub fn count_attempts(&self, trunk: &str, result: AttemptResult, count: u64) {
        self.attempts_total
            .with_label_values(&[trunk, result.label()])
            .inc_by(count);
    }
}

/// Metrics of the speech sessions calls are bridged to.
#[derive(Clone)]
pub struct RealtimeMetrics {
    /// Sessions open now.
    pub sessions_active: IntGauge,
    /// Sessions that failed, by reason (connect, timeout, rejected, dropped, expired, server_error).
    pub session_failures_total: IntCounterVec,
    /// From starting the WebSocket to the confirmed session (`session.updated`).
    pub connect_seconds: Histogram,
    /// From the end of the caller's turn (`speech_stopped`) to the first RTP packet of the answer.
    pub response_latency_seconds: Histogram,
    /// Times a caller interrupted the agent.
    pub barge_ins_total: IntCounter,
    /// Tool calls by tool and result.
    pub tool_calls_total: IntCounterVec,
    /// Tokens from each `response.done` usage, by direction and modality.
    pub tokens_total: IntCounterVec,
    /// Error events from the service, by code.
    pub errors_total: IntCounterVec,
    /// Calls ended politely because the session reached its lifetime limit.
    pub session_limit_total: IntCounter,
}

impl RealtimeMetrics {
    fn new() -> RealtimeMetrics {
        let latency_buckets = vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0];
        let metrics = RealtimeMetrics {
            sessions_active: IntGauge::new(
                "voxgate_realtime_sessions_active",
                "Realtime sessions open now",
            )
            .expect("valid metric definition"),
            session_failures_total: IntCounterVec::new(
                Opts::new(
                    "voxgate_realtime_session_failures_total",
                    "Realtime sessions that failed, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric definition"),
            connect_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "voxgate_realtime_connect_seconds",
                    "Time from opening the Realtime WebSocket to the confirmed session",
                )
                .buckets(vec![0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0]),
            )
            .expect("valid metric definition"),
            response_latency_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "voxgate_response_latency_seconds",
                    "Time from the end of the caller's turn to the first RTP packet of the answer",
                )
                .buckets(latency_buckets),
            )
            .expect("valid metric definition"),
            barge_ins_total: IntCounter::new(
                "voxgate_barge_ins_total",
                "Times a caller interrupted the agent",
            )
            .expect("valid metric definition"),
            tool_calls_total: IntCounterVec::new(
                Opts::new("voxgate_tool_calls_total", "Tool calls by tool and result"),
                &["tool", "result"],
            )
            .expect("valid metric definition"),
            tokens_total: IntCounterVec::new(
                Opts::new(
                    "voxgate_realtime_tokens_total",
                    "Realtime tokens used, by direction and modality (from response.done usage)",
                ),
                &["direction", "modality"],
            )
            .expect("valid metric definition"),
            errors_total: IntCounterVec::new(
                Opts::new(
                    "voxgate_realtime_errors_total",
                    "Error events from the Realtime service, by code",
                ),
                &["code"],
            )
            .expect("valid metric definition"),
            session_limit_total: IntCounter::new(
                "voxgate_realtime_session_limit_total",
                "Calls ended with a goodbye because the Realtime session reached its lifetime limit",
            )
            .expect("valid metric definition"),
        };
        for reason in [
            "connect",
            "timeout",
            "rejected",
            "dropped",
            "expired",
            "server_error",
        ] {
            metrics.session_failures_total.with_label_values(&[reason]);
        }
        for direction in ["input", "output"] {
            for modality in ["text", "audio"] {
                metrics
                    .tokens_total
                    .with_label_values(&[direction, modality]);
            }
        }
        metrics
    }

    /// Counts a tool call. A tool the agent does not have (`result` `unknown`) is counted as
    /// `tool="other"`: its name comes from the service, and labels stay bounded (the name is in
    /// the call's log and transcript).
    pub fn count_tool(&self, tool: &str, result: ToolResult) {
        self.tool_series(tool, result).inc();
    }

    fn tool_series(&self, tool: &str, result: ToolResult) -> IntCounter {
        let tool = if result == ToolResult::Unknown {
            "other"
        } else {
            tool
        };
        self.tool_calls_total
            .with_label_values(&[tool, result.as_str()])
    }

    /// Counts an error event; codes outside `[a-z0-9_]{1,64}` are counted as `other`.
    pub fn count_error(&self, code: &str) {
        let bounded = !code.is_empty()
            && code.len() <= 64
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let code = if bounded { code } else { "other" };
        self.errors_total.with_label_values(&[code]).inc();
    }
}

const METHODS: [&str; 14] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "INFO",
    "UPDATE",
    "REGISTER",
    "REFER",
    "NOTIFY",
    "SUBSCRIBE",
    "MESSAGE",
    "PRACK",
    "PUBLISH",
];

/// Maps a method name to a bounded label value (`OTHER` for extension methods).
pub fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .copied()
        .unwrap_or("OTHER")
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let calls_active = IntGauge::new("voxgate_calls_active", "Calls currently up or ringing")
            .expect("valid metric definition");
        let bridged_calls_active = IntGauge::new(
            "voxgate_bridged_calls_active",
            "Calls bridged to a transfer destination (B2BUA) now",
        )
        .expect("valid metric definition");
        let calls_total = IntCounterVec::new(
            Opts::new("voxgate_calls_total", "Calls ended, by result"),
            &["result"],
        )
        .expect("valid metric definition");
        let sip_messages_total = IntCounterVec::new(
            Opts::new(
                "voxgate_sip_messages_total",
                "SIP messages by method and direction",
            ),
            &["method", "direction"],
        )
        .expect("valid metric definition");
        let sip_parse_errors_total = IntCounter::new(
            "voxgate_sip_parse_errors_total",
            "SIP messages that could not be parsed (dropped or answered 400)",
        )
        .expect("valid metric definition");
        let sip_tcp_connections = IntGaugeVec::new(
            Opts::new(
                "voxgate_sip_tcp_connections",
                "SIP TCP connections open now, by who opened them (inbound: a peer)",
            ),
            &["direction"],
        )
        .expect("valid metric definition");
        let sip_tcp_connections_refused_total = IntCounter::new(
            "voxgate_sip_tcp_connections_refused_total",
            "TCP connections from peers closed at once: sip.tcp_max_connections reached",
        )
        .expect("valid metric definition");
        let sip_transactions = IntGaugeVec::new(
            Opts::new(
                "voxgate_sip_transactions",
                "SIP transactions held now, by role (server: a peer's request; client: voxgate's)",
            ),
            &["role"],
        )
        .expect("valid metric definition");
        let rtp_packets_total = IntCounterVec::new(
            Opts::new("voxgate_rtp_packets_total", "RTP packets by direction"),
            &["direction"],
        )
        .expect("valid metric definition");
        let rtp_packets_lost_total = IntCounter::new(
            "voxgate_rtp_packets_lost_total",
            "RTP packets lost on the way to voxgate (RFC 3550)",
        )
        .expect("valid metric definition");
        let delay_buckets = vec![0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0];
        let jitter_buffer_delay_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "voxgate_jitter_buffer_delay_seconds",
                "Jitter-buffer playout delay, sampled per call every second",
            )
            .buckets(delay_buckets),
        )
        .expect("valid metric definition");
        let rtp_interarrival_jitter_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "voxgate_rtp_interarrival_jitter_seconds",
                "RFC 3550 interarrival jitter of received RTP, sampled per call every second",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32,
            ]),
        )
        .expect("valid metric definition");
        let inbound_auth_total = IntCounterVec::new(
            Opts::new(
                "voxgate_inbound_auth_total",
                "Digest authentication of INVITEs from sources outside allow_from, by trunk and \
                 result",
            ),
            &["trunk", "result"],
        )
        .expect("valid metric definition");
        let realtime = RealtimeMetrics::new();
        let registration = RegistrationMetrics::new();
        let transfer = TransferMetrics::new();
        let dtmf_digits_total = IntCounterVec::new(
            Opts::new(
                "voxgate_dtmf_digits_total",
                "Keys callers pressed, by signalling (rfc4733, info)",
            ),
            &["source"],
        )
        .expect("valid metric definition");
        let unknown_source_invites_total = IntCounter::new(
            "voxgate_unknown_source_invites_total",
            "INVITEs refused with 403 because no trunk allows their source",
        )
        .expect("valid metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "voxgate_build_info",
                "Always 1; the version label says which voxgate is running",
            ),
            &["version"],
        )
        .expect("valid metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let metrics = Metrics {
            transfer,
            dtmf_digits_total,
            unknown_source_invites_total,
            build_info,
            process: ProcessCollector::for_self(),
            inbound_auth_total,
            realtime,
            registration,
            registry,
            calls_active,
            bridged_calls_active,
            calls_total,
            sip_messages_total,
            sip_parse_errors_total,
            sip_tcp_connections,
            sip_tcp_connections_refused_total,
            sip_transactions,
            rtp_packets_total,
            rtp_packets_lost_total,
            jitter_buffer_delay_seconds,
            rtp_interarrival_jitter_seconds,
        };
        metrics.register_all();
        metrics.prime_labels();
        metrics
    }

    /// Every metric, in one list: what [`Metrics::new`] registers and [`Metrics::catalogue`]
    /// describes. A metric missing here is neither exported nor documented.
    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        let realtime = &self.realtime;
        let registration = &self.registration;
        vec![
            Box::new(self.calls_active.clone()),
            Box::new(self.calls_total.clone()),
            Box::new(self.sip_messages_total.clone()),
            Box::new(self.sip_parse_errors_total.clone()),
            Box::new(self.sip_tcp_connections.clone()),
            Box::new(self.sip_tcp_connections_refused_total.clone()),
            Box::new(self.sip_transactions.clone()),
            Box::new(self.rtp_packets_total.clone()),
            Box::new(self.rtp_packets_lost_total.clone()),
            Box::new(self.jitter_buffer_delay_seconds.clone()),
            Box::new(self.rtp_interarrival_jitter_seconds.clone()),
            Box::new(realtime.sessions_active.clone()),
            Box::new(realtime.session_failures_total.clone()),
            Box::new(realtime.connect_seconds.clone()),
            Box::new(realtime.response_latency_seconds.clone()),
            Box::new(realtime.barge_ins_total.clone()),
            Box::new(realtime.tool_calls_total.clone()),
            Box::new(realtime.tokens_total.clone()),
            Box::new(realtime.errors_total.clone()),
            Box::new(realtime.session_limit_total.clone()),
            Box::new(self.transfer.transfers_total.clone()),
            Box::new(self.bridged_calls_active.clone()),
            Box::new(self.transfer.duration_seconds.clone()),
            Box::new(self.dtmf_digits_total.clone()),
            Box::new(self.unknown_source_invites_total.clone()),
            Box::new(self.build_info.clone()),
            Box::new(self.process.clone()),
            Box::new(self.inbound_auth_total.clone()),
            Box::new(registration.up.clone()),
            Box::new(registration.attempts_total.clone()),
            Box::new(registration.expires_seconds.clone()),
        ]
    }

    fn register_all(&self) {
        for collector in self.collectors() {
            // Names are distinct constants in this file, so registration cannot collide.
            self.registry
                .register(collector)
                .expect("metric names are unique");
        }
    }

    /// Every metric family voxgate exports, with its type, label names and help, also those
    /// that have no series yet (a labelled counter before its first count): what the README's
    /// metrics table must list.
    pub fn catalogue(&self) -> Vec<Family> {
        self.collectors()
            .iter()
            .flat_map(|collector| {
                let descs = collector.desc();
                let families = collector.collect();
                descs
                    .into_iter()
                    .zip(families)
                    .map(|(desc, family)| Family {
                        name: desc.fq_name.clone(),
                        kind: match family.get_field_type() {
                            MetricType::COUNTER => "counter",
                            MetricType::GAUGE => "gauge",
                            MetricType::HISTOGRAM => "histogram",
                            MetricType::SUMMARY => "summary",
                            MetricType::UNTYPED => "untyped",
                        },
                        labels: desc.variable_labels.clone(),
                        help: desc.help.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Exports zero-valued series for the labels dashboards expect, so rates work from start-up.
    fn prime_labels(&self) {
        for result in [
            CallResult::Completed,
            CallResult::Rejected,
            CallResult::Cancelled,
            CallResult::Failed,
            CallResult::Transferred,
        ] {
            self.calls_total.with_label_values(&[result.as_str()]);
        }
        for direction in ["in", "out"] {
            self.rtp_packets_total.with_label_values(&[direction]);
        }
        for direction in ["inbound", "outbound"] {
            self.sip_tcp_connections.with_label_values(&[direction]);
        }
        for role in ["server", "client"] {
            self.sip_transactions.with_label_values(&[role]);
        }
        for source in ["rfc4733", "info"] {
            self.dtmf_digits_total.with_label_values(&[source]);
        }
    }

    /// Counts one SIP message.
    pub fn count_sip(&self, method: &str, inbound: bool) {
        let direction = if inbound { "in" } else { "out" };
        self.sip_messages_total
            .with_label_values(&[method_label(method), direction])
            .inc();
    }

    /// Exports a zero for every result of each trunk that challenges callers.
    pub fn prime_inbound_auth<'a>(&self, trunks: impl IntoIterator<Item = &'a str>) {
        for trunk in trunks {
            for result in crate::call::inbound_auth::AuthResult::ALL {
                self.inbound_auth_total
                    .with_label_values(&[trunk, result.as_str()]);
            }
        }
    }

    /// Exports at 0 the tool-call and transfer series a speech agent can be counted in, so
    /// `rate()` works from its first call: its built-in tools' results, each HTTP tool's
    /// results, unknown tools, and each transfer destination's outcomes for the methods it
    /// uses. Other agents have no tools.
    pub fn prime_agent(&self, agent: &AgentSettings) {
        if agent.kind != AgentKind::Openai {
            return;
        }
        let realtime = &self.realtime;
        realtime.tool_series("other", ToolResult::Unknown);
        if agent.end_call_tool {
            realtime.tool_series(END_CALL_TOOL, ToolResult::Ok);
        }
        if !agent.transfers.is_empty() {
            for result in [ToolResult::Ok, ToolResult::Refused] {
                realtime.tool_series(TRANSFER_TOOL, result);
            }
        }
        for tool in &agent.tools {
            for result in ToolResult::HTTP {
                realtime.tool_series(&tool.name, result);
            }
        }
        for destination in &agent.transfers {
            self.transfer.prime(&destination.name, destination.method);
        }
    }

    /// Counts an ended call.
    pub fn count_call(&self, result: CallResult) {
        self.calls_total.with_label_values(&[result.as_str()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "could not encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_required_metric_with_primed_labels() {
        let metrics = Metrics::new();
        metrics.count_sip("invite", true);
        metrics.count_sip("FOO", false);
        metrics.jitter_buffer_delay_seconds.observe(0.04);
        metrics.prime_inbound_auth(["pbx"]);
        let text = metrics.render();
        for name in [
            "voxgate_inbound_auth_total{result=\"wrong_password\",trunk=\"pbx\"} 0",
            "voxgate_calls_active",
            "voxgate_bridged_calls_active 0",
            "voxgate_calls_total{result=\"completed\"} 0",
            "voxgate_sip_messages_total{direction=\"in\",method=\"INVITE\"} 1",
            "voxgate_sip_messages_total{direction=\"out\",method=\"OTHER\"} 1",
            "voxgate_sip_parse_errors_total 0",
            "voxgate_rtp_packets_total{direction=\"out\"} 0",
            "voxgate_rtp_packets_lost_total 0",
            "voxgate_jitter_buffer_delay_seconds_bucket",
            "voxgate_rtp_interarrival_jitter_seconds_count 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    /// The README's metrics table, as (name, type, sorted label names) per row.
    fn readme_metrics() -> Vec<(String, String, Vec<String>)> {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Metrics\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("README.md has a Metrics section");
        section
            .lines()
            .filter_map(|line| {
                let mut cells = line.strip_prefix("| `")?.split(" | ");
                let series = cells.next()?.strip_suffix('`')?;
                let kind = cells.next()?.trim().to_owned();
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                let mut labels: Vec<String> = labels
                    .split(',')
                    .filter(|label| !label.is_empty())
                    .map(str::to_owned)
                    .collect();
                labels.sort();
                Some((name.to_owned(), kind, labels))
            })
            .collect()
    }

    #[test]
    fn the_readme_lists_every_metric_with_its_type_and_labels_and_nothing_else() {
        let mut exported: Vec<(String, String, Vec<String>)> = Metrics::new()
            .catalogue()
            .into_iter()
            .map(|family| {
                let mut labels = family.labels;
                labels.sort();
                (family.name, family.kind.to_owned(), labels)
            })
            .collect();
        let mut documented = readme_metrics();
        // One row per family: a family listed twice would pass the comparisons below.
        assert_eq!(
            documented.len(),
            exported.len(),
            "README metrics rows: {documented:?}"
        );
        exported.sort();
        documented.sort();
        let missing: Vec<_> = exported
            .iter()
            .filter(|family| !documented.contains(family))
            .collect();
        let stale: Vec<_> = documented
            .iter()
            .filter(|row| !exported.contains(row))
            .collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "exported but not in README.md (or with another type or labels): {missing:?}\n\
             in README.md but not exported so: {stale:?}"
        );
    }

    #[test]
    fn the_catalogue_describes_metrics_before_their_first_series() {
        let metrics = Metrics::new();
        let catalogue = metrics.catalogue();
        let errors = catalogue
            .iter()
            .find(|family| family.name == "voxgate_realtime_errors_total")
            .expect("the errors counter is catalogued");
        assert_eq!(errors.kind, "counter");
        assert_eq!(errors.labels, ["code"]);
        assert!(!errors.help.is_empty());
        assert!(
            !metrics.render().contains("voxgate_realtime_errors_total"),
            "no series before the first error event"
        );
        let mut names: Vec<_> = catalogue.iter().map(|family| &family.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), catalogue.len(), "one entry per family");
    }

    #[test]
    fn an_unknown_tool_is_counted_under_one_label_whatever_its_name() {
        let metrics = Metrics::new();
        metrics.realtime.count_tool("lookup_order", ToolResult::Ok);
        metrics
            .realtime
            .count_tool("made_up_1", ToolResult::Unknown);
        metrics
            .realtime
            .count_tool("made up 2 \u{1F600}", ToolResult::Unknown);
        let text = metrics.render();
        assert!(text.contains("voxgate_tool_calls_total{result=\"ok\",tool=\"lookup_order\"} 1"));
        assert!(text.contains("voxgate_tool_calls_total{result=\"unknown\",tool=\"other\"} 2"));
        assert!(!text.contains("made"), "{text}");
    }

    fn speech_agent(settings: serde_json::Value) -> AgentSettings {
        serde_json::from_value(settings).expect("valid agent settings")
    }

    #[test]
    fn a_speech_agents_tools_and_transfer_destinations_are_primed_with_their_possible_results() {
        let metrics = Metrics::new();
        metrics.prime_agent(&speech_agent(serde_json::json!({
            "name": "assistant", "kind": "openai",
            "tools": [{"name": "lookup_order", "description": "Finds an order",
                       "url": "http://127.0.0.1:1/orders"}],
            "transfers": [
                {"name": "sales", "extension": "2001", "description": "Sales"},
                {"name": "support", "extension": "2002", "description": "Support",
                 "method": "refer_then_bridge"},
                {"name": "billing", "extension": "2003", "description": "Billing",
                 "method": "bridge"},
            ],
        })));
        metrics.prime_agent(&speech_agent(serde_json::json!({
            "name": "quiet", "kind": "openai", "end_call_tool": false,
            "tools": [{"name": "weather", "description": "Weather",
                       "url": "http://127.0.0.1:1/weather"}],
        })));
        metrics.prime_agent(&speech_agent(
            serde_json::json!({"name": "parrot", "kind": "echo"}),
        ));
        let text = metrics.render();
        let series = |family: &str| -> Vec<String> {
            text.lines()
                .filter(|line| line.starts_with(&format!("{family}{{")))
                .map(str::to_owned)
                .collect()
        };
        let mut tools = series("voxgate_tool_calls_total");
        tools.sort();
        let tool = |tool: &str, result: &str| {
            format!("voxgate_tool_calls_total{{result=\"{result}\",tool=\"{tool}\"}} 0")
        };
        let mut expected = vec![
            tool("end_call", "ok"),
            tool("transfer_call", "ok"),
            tool("transfer_call", "refused"),
            tool("other", "unknown"),
        ];
        for name in ["lookup_order", "weather"] {
            for result in ["ok", "http_error", "timeout", "error"] {
                expected.push(tool(name, result));
            }
        }
        expected.sort();
        assert_eq!(tools, expected);

        let transfers = series("voxgate_transfers_total");
        let mut attempts: Vec<(&str, &str, &str)> = transfers
            .iter()
            .map(|line| {
                let label = |name: &str| {
                    let start = line.find(&format!("{name}=\"")).expect("label") + name.len() + 2;
                    let end = start + line[start..].find('"').expect("closing quote");
                    &line[start..end]
                };
                assert!(line.ends_with("} 0"), "{line}");
                (label("destination"), label("method"), label("result"))
            })
            .collect();
        attempts.sort();
        let mut expected = Vec::new();
        for (destination, method) in [
            ("sales", "refer"),
            ("support", "refer"),
            ("support", "bridge"),
            ("billing", "bridge"),
        ] {
            for result in TransferOutcome::results_of(method) {
                expected.push((destination, method, *result));
            }
        }
        expected.sort();
        assert_eq!(attempts, expected);
        for method in ["refer", "bridge"] {
            assert!(
                text.contains(&format!(
                    "voxgate_transfer_duration_seconds_count{{method=\"{method}\"}} 0"
                )),
                "{text}"
            );
        }

        // Counting afterwards adds to the primed series.
        metrics
            .realtime
            .count_tool("lookup_order", ToolResult::Timeout);
        metrics.transfer.record(
            "support",
            "bridge",
            "abandoned",
            std::time::Duration::from_secs(4),
        );
        let text = metrics.render();
        assert!(text.contains(&tool("lookup_order", "timeout").replace(" 0", " 1")));
        assert!(text.contains(
            "voxgate_transfers_total{destination=\"support\",method=\"bridge\",result=\"abandoned\"} 1"
        ));
    }

    #[test]
    fn registration_series_are_primed_per_trunk_and_expiry_is_zero_while_down() {
        let metrics = Metrics::new();
        metrics.registration.prime("carrier");
        metrics
            .registration
            .count_attempts("carrier", AttemptResult::Refused, 2);
        metrics
            .registration
            .set_state("carrier", true, Some(std::time::Duration::from_secs(300)));
        let text = metrics.render();
        for line in [
            "voxgate_registration_up{trunk=\"carrier\"} 1",
            "voxgate_registration_expires_seconds{trunk=\"carrier\"} 300",
            "voxgate_registration_attempts_total{result=\"ok\",trunk=\"carrier\"} 0",
            "voxgate_registration_attempts_total{result=\"refused\",trunk=\"carrier\"} 2",
            "voxgate_registration_attempts_total{result=\"timeout\",trunk=\"carrier\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        metrics
            .registration
            .set_state("carrier", false, Some(std::time::Duration::from_secs(300)));
        let text = metrics.render();
        assert!(text.contains("voxgate_registration_up{trunk=\"carrier\"} 0"));
        assert!(text.contains("voxgate_registration_expires_seconds{trunk=\"carrier\"} 0"));
    }
}
