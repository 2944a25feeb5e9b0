//! The only async code: sockets, timers, tasks and HTTP around the sans-IO machines.
//!
//! [`run`] binds the SIP transports and the metrics endpoint, then drives the
//! [`Switchboard`](crate::call::switchboard::Switchboard) from one task (the "core"): every
//! input (a SIP message, a media task's report, a timer, SIGTERM) goes in, every output (a
//! message to send, a media command) comes out, and the loop sleeps until `poll_timeout`.
//! Each call's media runs in its own task ([`call_task`]) on one of the per-core media threads
//! ([`media_runtime`]).
#![allow(clippy::disallowed_methods)]

pub mod call_task;
pub mod media_runtime;
pub mod metrics_http;
pub mod sip_transport;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::call::switchboard::Switchboard;
use crate::call::{CallKey, MediaCommand, Output};
use crate::config::Settings;
use crate::metrics::{CallResult, Metrics};
use crate::sip::endpoint::{ConnectionId, Flow};

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
        /// Where to write messages for it.
        writer: mpsc::Sender<Bytes>,
    },
    /// A TCP connection closed.
    ConnectionClosed {
        /// Its number.
        id: ConnectionId,
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
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let (core_tx, core_rx) = mpsc::channel::<CoreInput>(8_192);
    let transports = Transports::bind(
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
    let media_runtimes =
        MediaRuntimes::start(settings.rtp.media_threads).context("starting the media threads")?;
    let core = Core {
        switchboard: Switchboard::new(&settings),
        media_runtimes,
        transports,
        metrics,
        media: HashMap::new(),
        ports: PortPool::new(settings.rtp.port_min, settings.rtp.port_max),
        core_tx,
        settings: settings.clone(),
        last_parse_errors: 0,
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
    settings: Settings,
    last_parse_errors: u64,
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
            CoreInput::ConnectionOpened { id, peer, writer } => {
                self.transports.connection_opened(id, peer, writer)
            }
            CoreInput::ConnectionClosed { id } => self.transports.connection_closed(id),
            CoreInput::MediaEnded { call, why, result } => {
                self.switchboard.handle_media_ended(now, call, &why, result)
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
            while let Some(output) = self.switchboard.poll_output() {
                progressed = true;
                match output {
                    Output::AllocateMedia {
                        call,
                        call_id,
                        trunk,
                        local_ip,
                        agent,
                    } => {
                        let bind_ip = self.settings.rtp.bind_address.unwrap_or(local_ip);
                        let result = call_task::spawn(
                            call_task::MediaSetup {
                                call,
                                call_id,
                                trunk,
                                bind_ip,
                                agent,
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
        let parse_errors = self.switchboard.endpoint().stats().parse_errors;
        self.metrics
            .sip_parse_errors_total
            .inc_by(parse_errors - self.last_parse_errors);
        self.last_parse_errors = parse_errors;
        drained
    }
}
