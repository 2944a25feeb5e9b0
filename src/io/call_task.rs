//! A call's media task: its RTP/RTCP sockets, the jitter buffer, the agent and the paced sender.
//!
//! Started by the core when a call is admitted (ports first, so the SDP can name them) on one of
//! the media threads ([`super::media_runtime`]), then configured by [`MediaCommand`]s as
//! offer/answer completes or changes (hold, resume); commands are taken at the next tick.
//!
//! The task wakes once per ptime tick, on a grid shared by every call so one wake-up of the
//! thread serves all their ticks (and for its speech leg's WebSocket). The RTP and RTCP sockets
//! are not in the reactor: the tick drains them with non-blocking `recvmmsg` (RTCP every
//! `RTCP_READ_EVERY`), and each packet's arrival time, which the jitter buffer measures jitter
//! and RTCP the round trip from, is the kernel's (`SO_TIMESTAMPNS`,
//! [`super::timestamped_udp`]). A tick then pops the jitter buffer, gives
//! the frame to the agent, sends the next playout frame (silence when there is nothing to say,
//! to keep NAT pinholes and the far jitter buffer steady), and checks RTCP, metric samples and
//! the RTP inactivity timeout (reported to the core as [`CoreInput::MediaEnded`]).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tracing::Instrument;

use super::agent_media::{AgentLegSockets, AgentMedia};
use super::speech_leg::{CallInfo, LegEvent, SpeechLeg};
use super::tick_grid::GridTicker;
use super::timestamped_udp::{
    enable_timestamps, recv_batch, Buffers, Datagram, BATCH, DATAGRAM_MAX,
};
use super::CoreInput;
use crate::call::agent::EchoAgent;
use crate::call::{CallKey, MediaCommand, MediaParams};
use crate::config::{AgentKind, AgentSettings, RealtimeSettings};
use crate::media::dtmf::DtmfReceiver;
use crate::media::inactivity::InactivityTimer;
use crate::media::jitter::{JitterBuffer, JitterConfig, Playout};
use crate::media::playout::PlayoutQueue;
use crate::media::rtcp::{NtpTime, ReceptionFigures, RtcpSession, RtcpTimer, SenderFigures};
use crate::media::rtp::{parse_rtp, OutboundStream, SymmetricLatch};
use crate::media::{Ssrc, G711};
use crate::metrics::{CallResult, Metrics};

/// What the core knows when it starts a call's media.
pub struct MediaSetup {
    /// The call.
    pub call: CallKey,
    /// For the log span.
    pub call_id: String,
    /// For the log span.
    pub trunk: String,
    /// Where to bind the RTP/RTCP pair.
    pub bind_ip: IpAddr,
    /// Who answers.
    pub agent: AgentSettings,
    /// Jitter-buffer bounds.
    pub jitter_min: Duration,
    /// Jitter-buffer bounds.
    pub jitter_max: Duration,
    /// RTCP report interval.
    pub rtcp_interval: Duration,
    /// Hang up after this long without RTP from the caller (zero: never).
    pub rtp_timeout: Duration,
    /// The same while the caller holds the call (zero: never).
    pub rtp_hold_timeout: Duration,
    /// The INVITE's From header.
    pub from: String,
    /// The INVITE's To header.
    pub to: String,
    /// How speech agents reach their service.
    pub realtime: RealtimeSettings,
}

/// The core's handle on a running media task. Commands take effect at the task's next ptime
/// tick (within 10–60 ms).
pub struct MediaHandle {
    /// The bound RTP address (RTCP is the next port).
    pub local_rtp: SocketAddr,
    commands: mpsc::Sender<MediaCommand>,
    /// Raised after each command and when the handle is dropped (see [`CommandFlag`]).
    pending: CommandFlag,
    agent_leg: mpsc::Sender<AgentLegSockets>,
}

impl MediaHandle {
    /// Sends a command without waiting (the channel is deep enough for signalling rates).
    pub fn command(&self, command: MediaCommand) {
        if self.commands.try_send(command).is_err() {
            tracing::warn!("media task not accepting commands");
        }
        self.pending.raise();
    }

    /// Hands a bridged transfer's agent-leg ports to the task (before any command about them).
    pub fn attach_agent_leg(&self, sockets: AgentLegSockets) -> Result<(), &'static str> {
        self.agent_leg
            .try_send(sockets)
            .map_err(|_| "media task not accepting the agent leg")
    }
}

impl Drop for MediaHandle {
    fn drop(&mut self) {
        // The task finds the channel closed at its next tick and stops.
        self.pending.raise();
    }
}

/// Whether the core may have queued something for a media task since its last look: each tick
/// checks this one flag instead of the command channel, whose state lies in cache lines of its
/// own (at 200 calls, what a tick touches in memory is most of its user-space cost). Raised
/// after a command is queued, so a tick that finds it lowered has nothing to take, and one that
/// lowers it drains the channel.
#[derive(Clone, Default)]
struct CommandFlag(Arc<AtomicBool>);

impl CommandFlag {
    fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether it was raised; lowers it.
    fn take(&self) -> bool {
        self.0.load(Ordering::Relaxed) && self.0.swap(false, Ordering::Acquire)
    }
}

/// Even RTP ports from the configured range, handed out round-robin.
pub struct PortPool {
    min: u16,
    max: u16,
    cursor: u16,
}

impl PortPool {
    /// The pool for `[min, max]` (RTP on even ports, RTCP on the next odd one).
    pub fn new(min: u16, max: u16) -> PortPool {
        let min = min + (min % 2);
        PortPool {
            min,
            max,
            cursor: min,
        }
    }

    /// Binds an RTP/RTCP pair on `ip`, trying each even port once.
    pub(super) fn bind_pair(
        &mut self,
        ip: IpAddr,
    ) -> std::io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
        let pairs = ((self.max.saturating_sub(self.min)) / 2 + 1).max(1);
        for _ in 0..pairs {
            let port = self.cursor;
            self.cursor = if port.saturating_add(2) > self.max.saturating_sub(1) {
                self.min
            } else {
                port + 2
            };
            let Ok(rtp) = std::net::UdpSocket::bind(SocketAddr::new(ip, port)) else {
                continue;
            };
            let Ok(rtcp) = std::net::UdpSocket::bind(SocketAddr::new(ip, port + 1)) else {
                continue;
            };
            return Ok((rtp, rtcp));
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no free RTP port pair in rtp.port_min..port_max",
        ))
    }
}

/// Binds the call's ports and starts its media task on `runtime` (a media thread's).
pub fn spawn(
    setup: MediaSetup,
    pool: &mut PortPool,
    runtime: &Handle,
    metrics: Metrics,
    core_tx: mpsc::Sender<CoreInput>,
) -> std::io::Result<MediaHandle> {
    let (rtp, rtcp) = pool.bind_pair(setup.bind_ip)?;
    // RTP and RTCP are read at the tick only, never awaited: non-blocking, outside the reactor,
    // and stamped with their arrival time by the kernel (RTCP's round trip is measured from it).
    rtp.set_nonblocking(true)?;
    enable_timestamps(&rtp)?;
    rtcp.set_nonblocking(true)?;
    enable_timestamps(&rtcp)?;
    let local_rtp = rtp.local_addr()?;
    let (commands, commands_rx) = mpsc::channel(32);
    let pending = CommandFlag::default();
    let (agent_leg, agent_leg_rx) = mpsc::channel(2);
    let agent_media = AgentMedia::new(
        agent_leg_rx,
        setup.jitter_min,
        setup.jitter_max,
        metrics.clone(),
    );
    let span = tracing::info_span!("call", call_id = %setup.call_id, trunk = %setup.trunk);
    let speech = (setup.agent.kind == AgentKind::Openai).then(|| {
        let _entered = span.enter();
        SpeechLeg::start(
            CallInfo {
                key: setup.call,
                call_id: setup.call_id.clone(),
                from: setup.from.clone(),
                to: setup.to.clone(),
            },
            &setup.agent,
            &setup.realtime,
            metrics.clone(),
            core_tx.clone(),
        )
    });
    let mut task = MediaTask::new(setup, rtp, rtcp, metrics, core_tx);
    task.speech = speech;
    task.agent_leg = Some(agent_media);
    runtime.spawn(task.run(commands_rx, pending.clone()).instrument(span));
    Ok(MediaHandle {
        local_rtp,
        commands,
        pending,
        agent_leg,
    })
}

struct MediaTask {
    call: CallKey,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    agent: AgentSettings,
    jitter_min: Duration,
    jitter_max: Duration,
    metrics: Metrics,
    params: Option<MediaParams>,
    jitter: JitterBuffer,
    playout: PlayoutQueue,
    outbound: OutboundStream,
    latch: SymmetricLatch,
    echo: EchoAgent,
    /// The speech agent's leg (kind = "openai"): its WebSocket is polled by this same task.
    speech: Option<SpeechLeg>,
    /// A bridged transfer's agent leg: ringback, then the relay (io/agent_media.rs).
    agent_leg: Option<AgentMedia>,
    reported_lost: u64,
    packets_in: u64,
    packets_out: u64,
    rtcp_session: RtcpSession,
    rtcp_timer: RtcpTimer,
    /// The negotiated packetisation time (20 ms until configured).
    ptime: Duration,
    /// The outbound packet, rebuilt in place every tick.
    send_buffer: Vec<u8>,
    /// Ptime ticks since the task started (metric samples every [`SAMPLE_EVERY`]).
    ticks: u64,
    /// Packets sent when the last report went out (SR only if we sent since).
    sent_at_last_report: u64,
    /// Hangs the call up when the caller stops sending.
    inactivity: InactivityTimer,
    /// Where to report that this call's media ended on its own.
    core_tx: mpsc::Sender<CoreInput>,
    /// A report the core's queue had no room for yet (retried every tick).
    unsent_end: Option<String>,
    /// When the caller's last RTP packet arrived.
    last_rtp_at: Option<Instant>,
    /// RFC 4733 digit detection on the caller's telephone-events.
    dtmf: DtmfReceiver,
    /// What the core was last told about the caller's RTP (see [`CoreInput::CallerMedia`]).
    caller_flowing: bool,
    /// Counter handles resolved once: a label lookup per packet would hash and lock.
    rtp_in: prometheus::IntCounter,
    rtp_out: prometheus::IntCounter,
    /// `packets_in` and `packets_out` as far as they were added to `rtp_in` and `rtp_out`: the
    /// counters are shared by every media thread, so a call adds to them once per
    /// [`SAMPLE_EVERY`] (and when it ends), not per packet, which would move their cache line
    /// between cores twice per call and tick.
    counted: (u64, u64),
}

impl MediaTask {
    fn new(
        setup: MediaSetup,
        rtp: UdpSocket,
        rtcp: UdpSocket,
        metrics: Metrics,
        core_tx: mpsc::Sender<CoreInput>,
    ) -> MediaTask {
        let ptime = Duration::from_millis(20);
        let ssrc = Ssrc(rand::random());
        let cname = format!("voxgate-{}", setup.call.0);
        MediaTask {
            rtcp_session: RtcpSession::new(ssrc, &cname),
            rtcp_timer: RtcpTimer::new(Instant::now(), setup.rtcp_interval),
            sent_at_last_report: 0,
            inactivity: InactivityTimer::new(setup.rtp_timeout, setup.rtp_hold_timeout),
            core_tx,
            unsent_end: None,
            last_rtp_at: None,
            dtmf: DtmfReceiver::new(),
            caller_flowing: true,
            ticks: 0,
            ptime,
            send_buffer: Vec::with_capacity(1_500),
            call: setup.call,
            rtp,
            rtcp,
            jitter: JitterBuffer::new(jitter_config(
                setup.jitter_min,
                setup.jitter_max,
                ptime,
                G711::Pcmu,
            )),
            playout: PlayoutQueue::new(G711::Pcmu, ptime),
            outbound: OutboundStream::new(ssrc, 0, 8_000),
            latch: SymmetricLatch::new(None, &[0]),
            echo: EchoAgent::new(
                Duration::from_millis(setup.agent.echo_delay_ms.into()),
                ptime,
            ),
            speech: None,
            agent_leg: None,
            agent: setup.agent,
            jitter_min: setup.jitter_min,
            jitter_max: setup.jitter_max,
            rtp_in: metrics.rtp_packets_total.with_label_values(&["in"]),
            rtp_out: metrics.rtp_packets_total.with_label_values(&["out"]),
            metrics,
            params: None,
            reported_lost: 0,
            packets_in: 0,
            packets_out: 0,
            counted: (0, 0),
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<MediaCommand>, pending: CommandFlag) {
        let mut ptime = self.ptime;
        let mut ticker = GridTicker::new(ptime);
        'media: loop {
            // Commands (signalling rate), RTP, RTCP and metric samples are all taken at the
            // ptime tick: between ticks the task sleeps (its speech leg's WebSocket aside),
            // however many packets arrive.
            tokio::select! {
                biased;
                _ = ticker.tick() => {
                    // Commands first: a caller that starts sending as soon as it has our answer
                    // finds the Configure that came with it applied to its first packets.
                    if pending.take() && !self.take_commands(&mut commands) {
                        break 'media;
                    }
                    if self.ptime != ptime {
                        ptime = self.ptime;
                        ticker = GridTicker::new(ptime);
                    }
                    // Everything queued since the last tick, at its own arrival time, before
                    // the jitter buffer is popped.
                    self.drain_rtp();
                    self.tick().await;
                }
                event = next_speech_event(&mut self.speech) => {
                    if let Some(leg) = self.speech.as_mut() {
                        leg.handle(event).await;
                    }
                }
            }
        }
        if let Some(leg) = self.speech.as_mut() {
            leg.close("call ended").await;
        }
        self.sample_metrics();
        let stats = self.jitter.stats();
        tracing::debug!(
            packets_in = self.packets_in,
            packets_out = self.packets_out,
            concealed_frames = stats.concealed_frames,
            late = stats.late,
            lost = stats.lost,
            "media stopped"
        );
    }

    /// Applies the queued commands; false when the task must stop (Stop, or the core is gone).
    fn take_commands(&mut self, commands: &mut mpsc::Receiver<MediaCommand>) -> bool {
        loop {
            match commands.try_recv() {
                Ok(MediaCommand::Configure(params)) => self.configure(params),
                Ok(MediaCommand::Stop) | Err(TryRecvError::Disconnected) => return false,
                Ok(MediaCommand::Dtmf(digit)) => self.caller_pressed(Instant::now(), digit, "info"),
                Ok(MediaCommand::TransferFailed { request, output }) => {
                    if let Some(leg) = self.speech.as_mut() {
                        leg.transfer_failed(request, &output);
                    }
                }
                Ok(MediaCommand::AgentLeg(command)) => {
                    if let Some(leg) = self.agent_leg.as_mut() {
                        leg.handle_command(command, self.params.as_ref());
                    }
                }
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn configure(&mut self, params: MediaParams) {
        let codec_changed = self
            .params
            .as_ref()
            .is_none_or(|old| old.codec != params.codec || old.ptime != params.ptime);
        if codec_changed {
            self.jitter = JitterBuffer::new(jitter_config(
                self.jitter_min,
                self.jitter_max,
                params.ptime,
                params.codec,
            ));
            self.playout = PlayoutQueue::new(params.codec, params.ptime);
            self.echo = EchoAgent::new(
                Duration::from_millis(self.agent.echo_delay_ms.into()),
                params.ptime,
            );
        }
        self.outbound.set_payload_type(params.payload_type);
        let mut accepted = vec![params.payload_type];
        accepted.extend(params.telephone_event);
        let signalled_changed = self
            .params
            .as_ref()
            .is_none_or(|old| old.remote_rtp != params.remote_rtp);
        if signalled_changed {
            self.latch = SymmetricLatch::new(params.remote_rtp, &accepted);
        }
        if !params.ptime.is_zero() {
            self.ptime = params.ptime;
        }
        if let Some(leg) = self.speech.as_mut() {
            // The session's audio format and frame size follow the call's; the greeting starts
            // (its frames are written at this tick).
            leg.set_media(params.codec, self.ptime);
        }
        self.inactivity
            .handle_configured(Instant::now(), params.is_on_hold());
        tracing::debug!(?params, "media configured");
        self.params = Some(params);
    }

    /// Reads every RTP packet queued on the socket (at most [`MAX_DRAIN`]), [`BATCH`] per system
    /// call, into the media thread's scratch buffers.
    fn drain_rtp(&mut self) {
        drain(
            self,
            |task| &task.rtp,
            "RTP",
            |task, packet, datagram| {
                if let Some(from) = datagram.from {
                    task.handle_rtp(packet, from, datagram.arrival);
                }
            },
        );
    }

    /// The same for RTCP (a report every few seconds, read every [`RTCP_READ_EVERY`]); the
    /// kernel's arrival times make the wait harmless to the round trips measured.
    fn drain_rtcp(&mut self) {
        drain(
            self,
            |task| &task.rtcp,
            "RTCP",
            |task, packet, datagram| {
                let Some(from) = datagram.from else { return };
                let ntp = NtpTime::from_system_time(datagram.wall);
                match task
                    .rtcp_session
                    .handle_packet(datagram.arrival, ntp, packet)
                {
                    Ok(summary) => {
                        if let Some(round_trip) = summary.round_trip {
                            tracing::trace!(%from, round_trip_ms = round_trip.as_millis() as u64, "RTCP report");
                        }
                    }
                    Err(error) => tracing::debug!(%from, %error, "unreadable RTCP dropped"),
                }
            },
        );
    }

    /// RFC 3550 §6.4: an SR when we sent since the last report, else an RR, to the caller's RTCP
    /// address (a=rtcp, else RTP port + 1 of where its RTP really comes from).
    fn send_rtcp(&mut self, now: Instant) {
        if !self.rtcp_timer.handle_timeout(now) {
            return;
        }
        let Some(params) = self.params.as_ref() else {
            return;
        };
        let target = self
            .latch
            .remote()
            .map(|rtp| SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1)))
            .filter(|_| self.latch.is_latched())
            .or(params.remote_rtcp);
        let Some(target) = target else { return };
        let sender = (self.packets_out > self.sent_at_last_report)
            .then(|| SenderFigures::from_stream(&self.outbound));
        self.sent_at_last_report = self.packets_out;
        let reception = self
            .jitter
            .take_reception_report()
            .map(|report| ReceptionFigures {
                remote_ssrc: report.ssrc,
                fraction_lost: report.fraction_lost,
                cumulative_lost: report.cumulative_lost,
                extended_highest_seq: report.extended_highest_seq,
                jitter: report.jitter,
            });
        let ntp = NtpTime::from_system_time(SystemTime::now());
        let report = self.rtcp_session.build_report(now, ntp, sender, reception);
        if let Err(error) = self.rtcp.send_to(&report, target) {
            tracing::debug!(%target, %error, "RTCP send failed");
        }
    }

    /// An RTP packet that arrived at `now` (the kernel's time, read at the tick).
    fn handle_rtp(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) {
        let Some(params) = self.params.as_ref() else {
            return;
        };
        let Ok(packet) = parse_rtp(datagram) else {
            return;
        };
        if !self.latch.handle_packet(from, &packet) {
            return;
        }
        self.packets_in += 1;
        self.inactivity.handle_packet(now);
        self.last_rtp_at = Some(now);
        if Some(packet.payload_type) == params.telephone_event {
            let digits = self
                .dtmf
                .handle_packet(now, packet.timestamp.0, &packet.payload);
            for digit in digits {
                self.caller_pressed(now, digit, "rfc4733");
            }
            return;
        }
        if !params.receive {
            return;
        }
        self.jitter.push(now, packet);
    }

    async fn tick(&mut self) {
        let ptime = self.ptime;
        let now = Instant::now();
        self.ticks += 1;
        if self.ticks % ticks_per(SAMPLE_EVERY, ptime) == 0 {
            self.sample_metrics();
        }
        if self.ticks % ticks_per(RTCP_READ_EVERY, ptime) == 0 {
            self.drain_rtcp();
        }
        if self.rtcp_timer.poll_timeout().is_some_and(|due| due <= now) {
            self.send_rtcp(now);
        }
        if self.inactivity.poll_timeout().is_some_and(|due| due <= now) {
            if let Some(silence) = self.inactivity.handle_timeout(now) {
                let why = silence.reason();
                tracing::warn!(reason = %why, "RTP timeout; hanging up");
                self.unsent_end = Some(why);
            }
        }
        if let Some(why) = self.unsent_end.take() {
            self.report_ended(why);
        }
        self.check_caller_flowing(now);
        if self.dtmf.poll_timeout().is_some_and(|due| due <= now) {
            if let Some(digit) = self.dtmf.handle_timeout(now) {
                self.caller_pressed(now, digit, "rfc4733");
            }
        }
        let Some(params) = self.params.as_ref() else {
            return;
        };
        let heard = match self.jitter.pop(now) {
            Playout::Frame(frame) | Playout::Concealed(frame) => Some(frame),
            Playout::Buffering | Playout::Empty => None,
        };
        let (send, remote) = (params.send, self.latch.remote());
        // A bridged transfer: ringback, then the agent's audio (the speech session closed).
        let bridged = match self.agent_leg.as_mut() {
            Some(leg) => leg.tick(now, heard.as_deref(), ptime),
            None => None,
        };
        if self
            .agent_leg
            .as_mut()
            .is_some_and(AgentMedia::take_close_speech)
        {
            if let Some(mut leg) = self.speech.take() {
                leg.close("transferred to a person").await;
            }
        }
        let frame = match (bridged, self.agent.kind, self.speech.as_mut()) {
            (Some(frame), _, _) => frame,
            // Held (nothing may be sent to the caller): the agent's audio waits for the caller.
            (None, AgentKind::Openai, Some(leg)) => {
                let held = !send || remote.is_none();
                leg.tick(now, heard.as_deref(), held).await
            }
            _ => {
                if let Some(frame) = self.echo.handle_frame(heard) {
                    self.playout.push_frame(frame);
                }
                self.playout.pop()
            }
        };
        let samples = (ptime.as_micros() * 8 / 1_000) as u32;
        let (true, Some(remote)) = (send, remote) else {
            // Nothing may be sent (held) or there is nowhere to: the media clock runs on (RFC
            // 3550 §5.1) and the first packet afterwards starts a new talkspurt (marker).
            self.outbound.skip(samples);
            return;
        };
        self.outbound
            .packetize_into(&frame.payload, frame.marker, samples, &mut self.send_buffer);
        match self.rtp.send_to(&self.send_buffer, remote) {
            Ok(_) => {
                self.packets_out += 1;
            }
            Err(error) => tracing::debug!(%remote, %error, "RTP send failed"),
        }
    }

    /// A key the caller pressed (`source`: `rfc4733` or `info`): counted, logged, and given to
    /// the speech agent (its DTMF rules or the model); the echo agent only counts it.
    fn caller_pressed(&mut self, now: Instant, digit: char, source: &'static str) {
        self.metrics
            .dtmf_digits_total
            .with_label_values(&[source])
            .inc();
        tracing::info!(%digit, source, "caller pressed a key");
        if let Some(leg) = self.speech.as_mut() {
            leg.caller_pressed(now, digit);
        }
    }

    /// Tells the core (speech agents only: it decides transfers by it) when the caller's RTP
    /// stops for [`CALLER_SILENT_AFTER`] or starts again.
    fn check_caller_flowing(&mut self, now: Instant) {
        let Some(last) = self.last_rtp_at else { return };
        if self.agent.kind != AgentKind::Openai {
            return;
        }
        let flowing = now.saturating_duration_since(last) < CALLER_SILENT_AFTER;
        if flowing == self.caller_flowing {
            return;
        }
        let input = CoreInput::CallerMedia {
            call: self.call,
            flowing,
        };
        if self.core_tx.try_send(input).is_ok() {
            self.caller_flowing = flowing;
            tracing::debug!(
                flowing,
                "caller's RTP {}",
                if flowing { "resumed" } else { "stopped" }
            );
        }
    }

    /// Tells the core this call's media has ended (it sends the BYE and then `Stop`).
    fn report_ended(&mut self, why: String) {
        let input = CoreInput::MediaEnded {
            call: self.call,
            why,
            result: CallResult::Failed,
        };
        match self.core_tx.try_send(input) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(CoreInput::MediaEnded { why, .. })) => {
                self.unsent_end = Some(why);
            }
            Err(error) => tracing::debug!(%error, "core gone; media end not reported"),
        }
    }

    /// Adds this call's packets since the last time to the shared counters, and samples its
    /// jitter-buffer figures into the histograms.
    fn sample_metrics(&mut self) {
        self.rtp_in.inc_by(self.packets_in - self.counted.0);
        self.rtp_out.inc_by(self.packets_out - self.counted.1);
        self.counted = (self.packets_in, self.packets_out);
        if self.params.is_none() || self.packets_in == 0 {
            return;
        }
        let stats = self.jitter.stats();
        let lost = stats.lost;
        if lost > self.reported_lost {
            self.metrics
                .rtp_packets_lost_total
                .inc_by(lost - self.reported_lost);
            self.reported_lost = lost;
        }
        self.metrics
            .jitter_buffer_delay_seconds
            .observe(self.jitter.current_delay().as_secs_f64());
        self.metrics
            .rtp_interarrival_jitter_seconds
            .observe(stats.interarrival_jitter_duration.as_secs_f64());
        let _ = self.call;
    }
}

/// The next event of the call's speech leg; never ready for echo calls.
async fn next_speech_event(leg: &mut Option<SpeechLeg>) -> LegEvent {
    match leg.as_mut() {
        Some(leg) => leg.next_event().await,
        None => std::future::pending().await,
    }
}

/// The most datagrams one tick reads from a socket: far above a call's rate (one packet per
/// ptime), so only a flood leaves some queued for the next tick (the kernel drops what its
/// receive buffer cannot hold), and a flood cannot keep the media thread from other calls.
const MAX_DRAIN: usize = 64;

thread_local! {
    /// Receive buffers of the media thread's calls (one call drains at a time, never across an
    /// await): no per-call copy of them.
    static SCRATCH: std::cell::RefCell<(Box<Buffers>, Vec<Datagram>)> =
        std::cell::RefCell::new((Box::new([[0; DATAGRAM_MAX]; BATCH]), Vec::with_capacity(BATCH)));
}

/// How often each call reads its RTCP socket: reports come every few seconds, and a tick that
/// reads finds it empty nearly always (a system call for nothing).
const RTCP_READ_EVERY: Duration = Duration::from_millis(200);

/// How often each call samples its jitter-buffer figures into the histograms.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The caller's RTP counts as stopped after this long without a packet (a PBX that took the
/// caller elsewhere after a REFER stops sending on voxgate's leg at once).
const CALLER_SILENT_AFTER: Duration = Duration::from_secs(1);

/// Whole ptime ticks in `period` (at least 1).
fn ticks_per(period: Duration, ptime: Duration) -> u64 {
    (period.as_micros() / ptime.as_micros().max(1)).max(1) as u64
}

/// Reads every datagram queued on `task`'s `socket` (at most [`MAX_DRAIN`]), [`BATCH`] per
/// system call, into the media thread's scratch buffers, handing each to `handle` with its
/// arrival.
fn drain<T>(
    task: &mut T,
    socket: fn(&T) -> &UdpSocket,
    what: &str,
    mut handle: impl FnMut(&mut T, &[u8], &Datagram),
) {
    SCRATCH.with_borrow_mut(|(buffers, received)| {
        for _ in 0..MAX_DRAIN.div_ceil(BATCH) {
            match recv_batch(socket(task), buffers, received) {
                Ok(count) => {
                    for (datagram, buffer) in received.iter().zip(buffers.iter()) {
                        handle(
                            task,
                            buffer.get(..datagram.length).unwrap_or_default(),
                            datagram,
                        );
                    }
                    if count < BATCH {
                        return;
                    }
                }
                // A pending error (an ICMP error for an earlier send): the queue behind it is
                // still to read.
                Err(error) => tracing::trace!(%error, "{what} receive error"),
            }
        }
    });
}

fn jitter_config(min: Duration, max: Duration, ptime: Duration, codec: G711) -> JitterConfig {
    JitterConfig {
        min_delay: min,
        max_delay: max,
        ptime,
        codec,
        clock_rate: 8_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_flag_is_taken_once_per_raise_and_the_handle_raises_it_on_drop() {
        let flag = CommandFlag::default();
        assert!(!flag.take(), "nothing queued yet");
        flag.raise();
        flag.raise();
        assert!(flag.take());
        assert!(
            !flag.take(),
            "two commands before a tick: one drain takes both"
        );

        let (commands, mut commands_rx) = mpsc::channel(4);
        let (agent_leg, _agent_leg_rx) = mpsc::channel(1);
        let handle = MediaHandle {
            local_rtp: SocketAddr::from(([127, 0, 0, 1], 40_000)),
            commands,
            pending: flag.clone(),
            agent_leg,
        };
        handle.command(MediaCommand::Stop);
        assert!(flag.take());
        assert!(matches!(commands_rx.try_recv(), Ok(MediaCommand::Stop)));
        drop(handle);
        assert!(
            flag.take(),
            "a dropped handle wakes the task to find the channel closed"
        );
        assert!(matches!(
            commands_rx.try_recv(),
            Err(TryRecvError::Disconnected)
        ));
    }
}
