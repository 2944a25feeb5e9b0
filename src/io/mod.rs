//! The only async code: sockets, timers, tasks and HTTP around the sans-IO machines.
//!
//! [`run`] binds the SIP transports and the metrics endpoint, then drives the
//! [`Switchboard`] from one task (the "core"): every
//! input (a SIP message, a media task's report, a timer, SIGTERM) goes in, every output (a
//! message to send, a media command) comes out, and the loop sleeps until `poll_timeout`.
//! Each call's media runs in its own task ([`call_task`]) on one of the per-core media threads
//! ([`media_runtime`]).
#![allow(clippy::disallowed_methods)]

pub mod agent_media;
pub mod call_task;
pub mod locate;
pub mod media_runtime;
pub mod metrics_http;
pub mod open_files;
pub mod realtime_ws;
pub mod sip_transport;
pub mod speech_leg;
pub mod tick_grid;
pub mod timestamped_udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::call::inbound_auth::InboundAuthStats;
use crate::call::registrations::NextHop;
use crate::call::switchboard::Switchboard;
use crate::call::{CallKey, MediaCommand, Output};
use crate::config::Settings;
use crate::metrics::{CallResult, Metrics};
use crate::sip::endpoint::{ConnectionId, Flow};
use crate::sip::registration::AttemptResult;

use call_task::{MediaHandle, PortPool};
use media_runtime::MediaRuntimes;
use sip_transport::Transports;

/// What reaches the core task.
#[derive(Debug)]
pub enum CoreInput {
    /// One SIP message (a datagram or a framed TCP message).
    Sip {
        /// The bytes.
        bytes: Bytes,
        /// How it arrived.
        flow: Flow,
    },
    /// A TCP connection opened (accepted or dialled); its writer.
    ConnectionOpened {
        /// Its number.
        id: ConnectionId,
        /// The peer.
        peer: std::net::SocketAddr,
        /// Where to queue messages for it.
        writer: sip_transport::ConnectionWriter,
        /// Closes it.
        closer: CancellationToken,
    },
    /// Nothing has arrived on a TCP connection since `quiet_since`, for `sip.tcp_idle_secs`
    /// or more: the core closes it unless it sent something since, or something still uses it.
    ConnectionIdle {
        /// Its number.
        id: ConnectionId,
        /// When it last received anything (a message or a keep-alive ping).
        quiet_since: Instant,
    },
    /// A message to a host name, now addressed to the server located for it: sent like any
    /// located message (not counted again in the metrics).
    SipLocated {
        /// The message.
        transmit: crate::sip::endpoint::Transmit,
    },
    /// A TCP connection closed, or one voxgate was opening could not be opened.
    ConnectionClosed {
        /// Its number.
        id: ConnectionId,
    },
    /// A message of a client transaction could not be sent (TCP connection refused, host name
    /// not located, send error).
    SendFailed {
        /// The client transaction.
        tx: crate::sip::endpoint::ClientTxId,
    },
    /// The speech agent of a call is ready: answer.
    AgentReady {
        /// The call.
        call: CallKey,
    },
    /// The speech agent of a call failed: 503 before answer, BYE after.
    AgentFailed {
        /// The call.
        call: CallKey,
        /// Why, in an admin's words.
        why: String,
    },
    /// The speech agent ended the call (BYE).
    AgentHangup {
        /// The call.
        call: CallKey,
        /// Why, in an admin's words.
        why: String,
    },
    /// The call's agent asks to hand the caller to a person.
    TransferRequested {
        /// The call.
        call: CallKey,
        /// What is asked for.
        request: crate::call::transfer::TransferRequest,
    },
    /// Whether the caller's RTP is arriving (reported on change: a PBX that has taken the
    /// caller elsewhere after a REFER stops sending on this leg).
    CallerMedia {
        /// The call.
        call: CallKey,
        /// RTP arrived within the last second.
        flowing: bool,
    },
    /// A register-mode trunk's registrar (or outbound proxy) servers located (RFC 3263), first
    /// or again after a change in DNS.
    NextHopResolved {
        /// The trunk.
        trunk: String,
        /// The servers REGISTERs go to, in the order to try them.
        targets: Vec<crate::sip::locate::Target>,
        /// The trunk's transport.
        transport: crate::sip::message::Transport,
    },
    /// The next hop of a call's bridged transfer located (RFC 3263), or why it could not be.
    AgentLegLocated {
        /// The call.
        call: CallKey,
        /// The targets in the order to try them, or why there are none.
        located: Result<Vec<crate::sip::locate::Target>, String>,
    },
    /// A call's media task ended the call on its own (no RTP for too long, later an agent
    /// hanging up): the core hangs up with a BYE.
    MediaEnded {
        /// The call.
        call: CallKey,
        /// Why, in an admin's words.
        why: String,
        /// How the call counts in `voxgate_calls_total` (a timeout is `Failed`).
        result: CallResult,
    },
}

/// Runs the gateway until SIGTERM/SIGINT and the drain that follows.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    open_files::raise_for(&settings);
    realtime_ws::trust(&settings.realtime.ca_certs);
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let (core_tx, core_rx) = mpsc::channel::<CoreInput>(8_192);
    let mut transports = Transports::bind(
        &settings,
        core_tx.clone(),
        metrics.clone(),
        shutdown.clone(),
    )
    .await
    .context("binding SIP transports")?;
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(listen) = settings.metrics.listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the metrics endpoint on {listen}"))?;
        tracing::info!(%listen, "serving /metrics and /healthz");
        tokio::spawn(metrics_http::serve(
            listener,
            metrics.clone(),
            draining.clone(),
            shutdown.clone(),
        ));
    }
    for address in transports.local_addresses() {
        tracing::info!(%address, "listening for SIP on UDP and TCP");
    }
    let switchboard = Switchboard::new(&settings);
    metrics.prime_inbound_auth(
        settings
            .trunks
            .iter()
            .filter(|t| t.has_users())
            .map(|t| t.name.as_str()),
    );
    for agent in &settings.agents {
        metrics.prime_agent(agent);
    }
    let families = (
        transports.local_addresses().iter().any(SocketAddr::is_ipv4),
        transports.local_addresses().iter().any(SocketAddr::is_ipv6),
    );
    let next_hops = switchboard.next_hops();
    for hop in &next_hops {
        metrics.registration.prime(&hop.trunk);
    }
    let locator = locate::Locator::new(&settings.dns, families);
    transports.locate_with(Arc::new(locate::HostCache::new(locator.clone())));
    if !next_hops.is_empty() {
        for hop in next_hops {
            tokio::spawn(resolve_next_hop(
                hop,
                locator.clone(),
                core_tx.clone(),
                shutdown.clone(),
            ));
        }
    }
    let media_runtimes = MediaRuntimes::start(settings.rtp.media_threads, settings.rtp.tick_phases)
        .context("starting the media threads")?;
    let core = Core {
        registration_counts: Vec::new(),
        last_inbound_auth: InboundAuthStats::default(),
        switchboard,
        media_runtimes,
        transports,
        metrics,
        media: HashMap::new(),
        ports: PortPool::new(settings.rtp.port_min, settings.rtp.port_max),
        core_tx,
        locator,
        settings: settings.clone(),
        last_parse_errors: 0,
        last_transactions: (0, 0),
    };
    let result = core.run(core_rx, draining).await;
    shutdown.cancel();
    result
}

struct Core {
    switchboard: Switchboard,
    transports: Transports,
    metrics: Metrics,
    media: HashMap<CallKey, MediaHandle>,
    media_runtimes: MediaRuntimes,
    ports: PortPool,
    core_tx: mpsc::Sender<CoreInput>,
    /// Locates bridged transfers' next hops (the registrations' have tasks of their own).
    locator: locate::Locator,
    settings: Settings,
    last_parse_errors: u64,
    /// (server, client) transactions last exported.
    last_transactions: (usize, usize),
    /// The inbound digest counts already exported.
    last_inbound_auth: InboundAuthStats,
    /// Attempt counts already exported, per register-mode trunk (in status order) and result.
    registration_counts: Vec<[u64; AttemptResult::ALL.len()]>,
}

impl Core {
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<CoreInput>,
        draining: Arc<std::sync::atomic::AtomicBool>,
    ) -> anyhow::Result<()> {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("installing the SIGINT handler")?;
        let mut drain_started = false;
        loop {
            let deadline = self.switchboard.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                input = inputs.recv() => {
                    let Some(input) = input else { break };
                    self.handle_input(input);
                    // Take whatever else is queued before draining outputs: fewer wake-ups.
                    while let Ok(input) = inputs.try_recv() {
                        self.handle_input(input);
                    }
                }
                _ = sleep => self.switchboard.handle_timeout(Instant::now()),
                _ = sigterm.recv(), if !drain_started => {
                    drain_started = true;
                    self.begin_drain(&draining);
                }
                _ = sigint.recv(), if !drain_started => {
                    drain_started = true;
                    self.begin_drain(&draining);
                }
            }
            if self.flush_outputs() {
                tracing::info!("all calls finished; exiting");
                return Ok(());
            }
        }
        Ok(())
    }

    fn begin_drain(&mut self, draining: &std::sync::atomic::AtomicBool) {
        draining.store(true, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        let timeout = Duration::from_secs(self.settings.calls.drain_timeout_secs);
        tracing::info!(drain_timeout_secs = timeout.as_secs(), "shutdown requested");
        self.switchboard.begin_drain(now, now + timeout);
    }

    fn handle_input(&mut self, input: CoreInput) {
        let now = Instant::now();
        match input {
            CoreInput::Sip { bytes, flow } => {
                if let Some(method) = sip_transport::method_of(&bytes) {
                    self.metrics.count_sip(&method, true);
                }
                self.switchboard.handle_inbound(now, &bytes, flow);
            }
            CoreInput::ConnectionOpened {
                id,
                peer,
                writer,
                closer,
            } => self.transports.connection_opened(id, peer, writer, closer),
            CoreInput::ConnectionIdle { id, quiet_since } => {
                if let Some(peer) = self.transports.idle_peer(id, quiet_since, now) {
                    if !self.switchboard.uses_connection(id, peer) {
                        tracing::info!(
                            %peer,
                            idle_secs = self.settings.sip.tcp_idle_secs,
                            "closing idle SIP TCP connection: no call, registration or transaction uses it"
                        );
                        self.transports.close(id);
                    }
                }
            }
            CoreInput::SipLocated { transmit } => self.transports.send(transmit),
            CoreInput::ConnectionClosed { id } => {
                if let Some(peer) = self.transports.connection_closed(id) {
                    self.switchboard.handle_connection_closed(now, id, peer);
                }
            }
            CoreInput::SendFailed { tx } => self.switchboard.handle_send_failed(now, tx),
            CoreInput::NextHopResolved {
                trunk,
                targets,
                transport,
            } => {
                let mut flows = Vec::with_capacity(targets.len());
                for target in targets {
                    match self.transports.local_toward(target.address) {
                        Some(local) => flows.push((
                            Flow {
                                transport,
                                remote: target.address,
                                local,
                                connection: None,
                            },
                            target.origin,
                        )),
                        None => tracing::error!(
                            %trunk,
                            remote = %target.address,
                            "cannot register there: voxgate listens on no address of its family"
                        ),
                    }
                }
                self.switchboard.handle_next_hops(now, &trunk, flows);
            }
            CoreInput::AgentLegLocated { call, located } => self
                .switchboard
                .handle_agent_leg_located(now, call, located),
            CoreInput::MediaEnded { call, why, result } => {
                self.switchboard.handle_media_ended(now, call, &why, result)
            }
            CoreInput::AgentReady { call } => self.switchboard.handle_agent_ready(now, call),
            CoreInput::AgentFailed { call, why } => {
                self.switchboard.handle_agent_failed(now, call, &why)
            }
            CoreInput::AgentHangup { call, why } => {
                self.switchboard.handle_agent_hangup(now, call, &why)
            }
            CoreInput::TransferRequested { call, request } => {
                self.switchboard.handle_transfer_request(now, call, request)
            }
            CoreInput::CallerMedia { call, flowing } => {
                self.switchboard.handle_caller_media(now, call, flowing)
            }
        }
    }

    /// Applies every pending output; true when draining has finished.
    fn flush_outputs(&mut self) -> bool {
        let mut drained = false;
        loop {
            let mut progressed = false;
            while let Some(transmit) = self.switchboard.poll_transmit() {
                progressed = true;
                if let Some(method) = sip_transport::method_of(&transmit.bytes) {
                    self.metrics.count_sip(&method, false);
                }
                self.transports.send(transmit);
            }
            let failures = self.transports.take_failures();
            if !failures.is_empty() {
                progressed = true;
                let now = Instant::now();
                for tx in failures {
                    self.switchboard.handle_send_failed(now, tx);
                }
            }
            while let Some(output) = self.switchboard.poll_output() {
                progressed = true;
                match output {
                    Output::AllocateMedia {
                        call,
                        call_id,
                        trunk,
                        local_ip,
                        agent,
                        from,
                        to,
                    } => {
                        let bind_ip = self.settings.rtp.bind_address.unwrap_or(local_ip);
                        let result = call_task::spawn(
                            call_task::MediaSetup {
                                call,
                                call_id,
                                trunk,
                                bind_ip,
                                agent: *agent,
                                from,
                                to,
                                realtime: self.settings.realtime.clone(),
                                jitter_min: Duration::from_millis(
                                    self.settings.rtp.jitter_min_ms.into(),
                                ),
                                jitter_max: Duration::from_millis(
                                    self.settings.rtp.jitter_max_ms.into(),
                                ),
                                rtcp_interval: Duration::from_secs(
                                    self.settings.rtp.rtcp_interval_secs.into(),
                                ),
                                rtp_timeout: Duration::from_secs(
                                    self.settings.rtp.timeout_secs.into(),
                                ),
                                rtp_hold_timeout: Duration::from_secs(
                                    self.settings.rtp.hold_timeout_secs.into(),
                                ),
                            },
                            &mut self.ports,
                            self.media_runtimes.pick(),
                            self.metrics.clone(),
                            self.core_tx.clone(),
                        );
                        let local = match result {
                            Ok(handle) => {
                                let local = handle.local_rtp;
                                self.media.insert(call, handle);
                                Ok(local)
                            }
                            Err(error) => Err(error.to_string()),
                        };
                        self.switchboard
                            .handle_media_allocated(Instant::now(), call, local);
                    }
                    Output::AllocateAgentMedia { call, local_ip } => {
                        let bind_ip = self.settings.rtp.bind_address.unwrap_or(local_ip);
                        let result = match self.media.get(&call) {
                            Some(handle) => agent_media::bind(&mut self.ports, bind_ip)
                                .map_err(|error| error.to_string())
                                .and_then(|sockets| {
                                    let local = sockets.local_rtp().map_err(|e| e.to_string())?;
                                    handle.attach_agent_leg(sockets)?;
                                    Ok(local)
                                }),
                            None => Err("the call's media task has ended".to_owned()),
                        };
                        self.switchboard
                            .handle_agent_media_allocated(Instant::now(), call, result);
                    }
                    Output::LocateAgentLeg {
                        call,
                        host,
                        port,
                        transport,
                    } => {
                        tokio::spawn(locate_agent_leg(
                            call,
                            (host, port, transport),
                            self.locator.clone(),
                            self.core_tx.clone(),
                        ));
                    }
                    Output::Media { call, command } => {
                        let stop = command == MediaCommand::Stop;
                        if let Some(handle) = self.media.get(&call) {
                            handle.command(command);
                        }
                        if stop {
                            self.media.remove(&call);
                        }
                    }
                    Output::CallEnded { call, result } => {
                        self.metrics.count_call(result);
                        if let Some(handle) = self.media.remove(&call) {
                            handle.command(MediaCommand::Stop);
                        }
                    }
                    Output::TransferFinished {
                        destination,
                        method,
                        result,
                        duration,
                    } => self
                        .metrics
                        .transfer
                        .record(&destination, method, result, duration),
                    Output::Drained => drained = true,
                }
            }
            if !progressed {
                break;
            }
        }
        self.metrics
            .calls_active
            .set(self.switchboard.active_calls() as i64);
        let counts = self.switchboard.endpoint().transaction_counts();
        if counts != self.last_transactions {
            let transactions = &self.metrics.sip_transactions;
            for (role, count) in [("server", counts.0), ("client", counts.1)] {
                transactions.with_label_values(&[role]).set(count as i64);
            }
            self.last_transactions = counts;
        }
        let parse_errors = self.switchboard.endpoint().stats().parse_errors;
        self.metrics
            .sip_parse_errors_total
            .inc_by(parse_errors - self.last_parse_errors);
        self.last_parse_errors = parse_errors;
        let unknown = self.switchboard.unknown_source_invites();
        let counted = self.metrics.unknown_source_invites_total.get();
        if unknown > counted {
            self.metrics
                .unknown_source_invites_total
                .inc_by(unknown - counted);
        }
        if let Some(stats) = self.switchboard.inbound_auth_stats() {
            if *stats != self.last_inbound_auth {
                for (trunk, result, count) in stats.iter() {
                    let before = self.last_inbound_auth.get(trunk, result);
                    self.metrics
                        .inbound_auth_total
                        .with_label_values(&[trunk, result.as_str()])
                        .inc_by(count.saturating_sub(before));
                }
                self.last_inbound_auth = stats.clone();
            }
        }
        self.export_registrations();
        drained
    }

    /// Copies the registrations' state and new attempt counts into the metrics.
    fn export_registrations(&mut self) {
        for (index, status) in self.switchboard.registrations().enumerate() {
            let metrics = &self.metrics.registration;
            metrics.set_state(status.trunk, status.up, status.expires);
            if self.registration_counts.len() <= index {
                self.registration_counts
                    .resize(index + 1, [0; AttemptResult::ALL.len()]);
            }
            let Some(stats) = status.stats else { continue };
            for (slot, result) in AttemptResult::ALL.iter().enumerate() {
                let total = stats.attempts(*result);
                let exported = &mut self.registration_counts[index][slot];
                if total > *exported {
                    metrics.count_attempts(status.trunk, *result, total - *exported);
                    *exported = total;
                }
            }
        }
    }
}

/// How long locating a next hop may take in all (the resolver's own timeout is per query).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Locates the next hop of `call`'s bridged transfer (RFC 3263) and hands the targets, or why
/// there are none, to the core. Bounded, so the transfer never waits on DNS for ever.
async fn locate_agent_leg(
    call: CallKey,
    (host, port, transport): (String, Option<u16>, crate::sip::message::Transport),
    locator: locate::Locator,
    core_tx: mpsc::Sender<CoreInput>,
) {
    let lookup = locator.locate(&host, port, transport);
    let located = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
        Ok(Ok(located)) => Ok(located.targets),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(format!("no answer within {} s", LOOKUP_TIMEOUT.as_secs())),
    };
    let _ = core_tx
        .send(CoreInput::AgentLegLocated { call, located })
        .await;
}

/// Locates a register-mode trunk's registrar (or outbound proxy) servers (RFC 3263) and hands
/// them to the core; retries every 5 s doubling to 60 s while DNS has no answer (the
/// registration waits, calls are unaffected). Then asks again when the answer's TTL runs out
/// (10 s to 1 h: [`locate::MIN_REFRESH`], [`locate::MAX_REFRESH`]), and hands over the new list
/// when it changed; a failed refresh keeps the list the core has.
async fn resolve_next_hop(
    hop: NextHop,
    locator: locate::Locator,
    core_tx: mpsc::Sender<CoreInput>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_secs(5);
    let mut known: Option<Vec<SocketAddr>> = None;
    loop {
        let lookup = tokio::time::timeout(
            LOOKUP_TIMEOUT,
            locator.locate(&hop.host, hop.port, hop.transport),
        );
        let result = tokio::select! {
            result = lookup => result,
            _ = shutdown.cancelled() => return,
        };
        let result = result
            .unwrap_or_else(|_| Err(format!("no answer within {} s", LOOKUP_TIMEOUT.as_secs())));
        let wait = match result {
            Ok(located) => {
                // As a set: SRV's weighted order may differ from one answer to the next.
                let mut addresses: Vec<SocketAddr> =
                    located.targets.iter().map(|t| t.address).collect();
                addresses.sort_unstable();
                if known.as_ref() != Some(&addresses) {
                    tracing::info!(
                        trunk = %hop.trunk,
                        host = %hop.host,
                        servers = ?located
                            .targets
                            .iter()
                            .map(|t| format!("{} ({})", t.address, t.origin))
                            .collect::<Vec<_>>(),
                        "registrar located"
                    );
                    let input = CoreInput::NextHopResolved {
                        trunk: hop.trunk.clone(),
                        targets: located.targets,
                        transport: hop.transport,
                    };
                    if core_tx.send(input).await.is_err() {
                        return;
                    }
                    known = Some(addresses);
                }
                delay = Duration::from_secs(5);
                match located.refresh_in {
                    Some(refresh) => refresh,
                    None => return,
                }
            }
            Err(failure) if known.is_some() => {
                tracing::warn!(
                    trunk = %hop.trunk,
                    host = %hop.host,
                    "cannot refresh the registrar's servers ({failure}): keeping the ones known"
                );
                locate::MIN_REFRESH
            }
            Err(failure) => {
                tracing::warn!(
                    trunk = %hop.trunk,
                    host = %hop.host,
                    retry_in_secs = delay.as_secs(),
                    "cannot resolve the registrar: {failure}"
                );
                let wait = delay;
                delay = (delay * 2).min(Duration::from_secs(60));
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
