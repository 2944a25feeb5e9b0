//! The agent leg's media inside a call's media task (bridged transfer, B2BUA).
//!
//! ```text
//!   AllocateAgentMedia: the core binds an RTP/RTCP pair ([`bind`]) and hands it to the media
//!   task ([`super::call_task::MediaHandle::attach_agent_leg`]); then AgentLegCommands:
//!   Idle ─Ringback─> Ringback (425 Hz, 1 s on / 4 s off to the caller; the assistant is muted)
//!        ─Connect─> Relay ─Release─> Idle (ports closed; the caller is back with the assistant)
//!   Relay, per caller ptime tick:
//!     caller's jitter-buffered frame ─> agent leg (voxgate's own SSRC, sequence, timestamps)
//!     agent leg RTP ─> symmetric latch ─> its own jitter buffer ─> the caller's next frame
//! ```
//! Both legs carry the caller's G.711 law (the agent leg offered only that codec): payloads are
//! relayed as they are, never transcoded. Each leg keeps its own RTP stream (SSRC, sequence,
//! timestamps): a jitter buffer on each side absorbs the other's timing. The agent leg's RTP
//! is latched like the caller's (symmetric RTP, RFC 4961); its RTCP port is bound but reports
//! are neither sent nor read. The ringback is ETSI ES 201 970's European tone (see
//! [`ToneGenerator::ringback_425`]).
//!
//! `voxgate_bridged_calls_active` counts relays: +1 at Connect, −1 at Release or when the
//! media task ends (drop).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::call_task::PortPool;
use crate::call::agent_leg::AgentLegCommand;
use crate::call::MediaParams;
use crate::media::g711::{Codec, ToneGenerator};
use crate::media::jitter::{JitterBuffer, JitterConfig, Playout};
use crate::media::playout::{PlayoutFrame, PlayoutQueue};
use crate::media::rtp::{parse_rtp, OutboundStream, SymmetricLatch};
use crate::media::{Ssrc, G711};
use crate::metrics::Metrics;

/// The most datagrams one tick reads from the agent leg's RTP socket.
const MAX_DRAIN: usize = 64;

/// The agent leg's bound RTP/RTCP pair (released when dropped).
#[derive(Debug)]
pub struct AgentLegSockets {
    rtp: UdpSocket,
    /// Bound so the pair stays voxgate's; RTCP on the agent leg is not used.
    _rtcp: UdpSocket,
}

impl AgentLegSockets {
    /// The bound RTP address (RTCP is the next port).
    pub fn local_rtp(&self) -> std::io::Result<SocketAddr> {
        self.rtp.local_addr()
    }
}

/// Binds an RTP/RTCP pair for an agent leg from the configured port range.
pub fn bind(pool: &mut PortPool, ip: IpAddr) -> std::io::Result<AgentLegSockets> {
    let (rtp, rtcp) = pool.bind_pair(ip)?;
    rtp.set_nonblocking(true)?;
    rtcp.set_nonblocking(true)?;
    Ok(AgentLegSockets { rtp, _rtcp: rtcp })
}

/// What the caller hears instead of the assistant.
enum Mode {
    Idle,
    Ringback(ToneGenerator),
    Relay(Box<Relay>),
}

/// RTP between the caller and the agent leg.
struct Relay {
    params: MediaParams,
    latch: SymmetricLatch,
    jitter: JitterBuffer,
    outbound: OutboundStream,
    /// The agent's audio re-cut to the caller's ptime.
    to_caller: PlayoutQueue,
    /// The caller leg's codec (silence when the caller's side has no frame).
    codec: Codec,
    send_buffer: Vec<u8>,
    receive_buffer: Vec<u8>,
    first_sent: bool,
}

/// A call's agent-leg media: ringback, then the relay.
pub struct AgentMedia {
    attached: mpsc::Receiver<AgentLegSockets>,
    sockets: Option<AgentLegSockets>,
    mode: Mode,
    /// The speech session must be closed (the legs were joined); taken by the media task.
    close_speech: bool,
    jitter_min: Duration,
    jitter_max: Duration,
    metrics: Metrics,
}

impl AgentMedia {
    /// Idle, taking sockets from `attached`.
    pub fn new(
        attached: mpsc::Receiver<AgentLegSockets>,
        jitter_min: Duration,
        jitter_max: Duration,
        metrics: Metrics,
    ) -> AgentMedia {
        AgentMedia {
            attached,
            sockets: None,
            mode: Mode::Idle,
            close_speech: false,
            jitter_min,
            jitter_max,
            metrics,
        }
    }

    /// Applies a command of the core; `caller` is the caller leg's media (its codec and ptime
    /// are the agent leg's too).
    pub fn handle_command(&mut self, command: AgentLegCommand, caller: Option<&MediaParams>) {
        // The core hands the sockets over before the call can ask anything of them.
        while let Ok(sockets) = self.attached.try_recv() {
            self.sockets = Some(sockets);
        }
        let law = caller.map_or(G711::Pcmu, |params| params.codec);
        let ptime = caller
            .map(|params| params.ptime)
            .filter(|ptime| !ptime.is_zero())
            .unwrap_or(Duration::from_millis(20));
        match command {
            AgentLegCommand::Ringback => {
                if !matches!(self.mode, Mode::Relay(_)) {
                    let samples = samples_per(ptime);
                    let tone = ToneGenerator::ringback_425(Codec::new(law))
                        .with_samples_per_frame(samples);
                    self.mode = Mode::Ringback(tone);
                    tracing::debug!("ringback to the caller");
                }
            }
            AgentLegCommand::Connect(params) => {
                let mut accepted = vec![params.payload_type];
                accepted.extend(params.telephone_event);
                if let Mode::Relay(relay) = &mut self.mode {
                    if relay.params.remote_rtp != params.remote_rtp {
                        relay.latch = SymmetricLatch::new(params.remote_rtp, &accepted);
                    }
                    relay.outbound.set_payload_type(params.payload_type);
                    relay.params = params;
                    return;
                }
                let jitter = JitterBuffer::new(JitterConfig {
                    min_delay: self.jitter_min,
                    max_delay: self.jitter_max,
                    ptime: if params.ptime.is_zero() {
                        ptime
                    } else {
                        params.ptime
                    },
                    codec: params.codec,
                    clock_rate: 8_000,
                });
                let mut outbound = OutboundStream::new(Ssrc(rand::random()), 0, 8_000);
                outbound.set_payload_type(params.payload_type);
                tracing::info!(remote_rtp = ?params.remote_rtp, "relaying RTP between caller and agent");
                self.mode = Mode::Relay(Box::new(Relay {
                    latch: SymmetricLatch::new(params.remote_rtp, &accepted),
                    jitter,
                    outbound,
                    to_caller: PlayoutQueue::new(law, ptime),
                    codec: Codec::new(law),
                    send_buffer: Vec::with_capacity(1_500),
                    receive_buffer: vec![0; 2_048],
                    first_sent: false,
                    params,
                }));
                self.metrics.bridged_calls_active.inc();
                self.close_speech = true;
            }
            AgentLegCommand::Release => {
                self.end_relay();
                self.mode = Mode::Idle;
                self.sockets = None;
                tracing::debug!("agent leg released");
            }
        }
    }

    /// Whether the speech session must be closed now (once, when the legs are joined).
    pub fn take_close_speech(&mut self) -> bool {
        std::mem::take(&mut self.close_speech)
    }

    /// One caller ptime tick: the frame the caller hears instead of the assistant's (ringback,
    /// or the agent's audio), sending the caller's `heard` frame to the agent; `None` while the
    /// agent leg is idle.
    pub fn tick(
        &mut self,
        now: Instant,
        heard: Option<&[u8]>,
        ptime: Duration,
    ) -> Option<PlayoutFrame> {
        match &mut self.mode {
            Mode::Idle => None,
            Mode::Ringback(tone) => Some(PlayoutFrame {
                payload: tone.next_frame(),
                marker: false,
                is_silence: false,
                tag: 0,
                audio: ptime,
            }),
            Mode::Relay(relay) => {
                let socket = self.sockets.as_ref().map(|sockets| &sockets.rtp);
                Some(relay.tick(now, socket, heard, ptime))
            }
        }
    }

    fn end_relay(&mut self) {
        if matches!(self.mode, Mode::Relay(_)) {
            self.metrics.bridged_calls_active.dec();
            self.mode = Mode::Idle;
        }
    }
}

impl Drop for AgentMedia {
    fn drop(&mut self) {
        self.end_relay();
    }
}

impl Relay {
    fn tick(
        &mut self,
        now: Instant,
        socket: Option<&UdpSocket>,
        heard: Option<&[u8]>,
        ptime: Duration,
    ) -> PlayoutFrame {
        let samples = samples_per(ptime);
        if let Some(socket) = socket {
            self.drain(socket, now);
            // The caller's audio, or silence for a gap: a steady stream keeps the agent's
            // jitter buffer and any NAT binding on its side going.
            let silence;
            let payload = match heard {
                Some(frame) => frame,
                None => {
                    silence = self.codec.silence(samples);
                    &silence[..]
                }
            };
            if let (true, Some(remote)) = (self.params.send, self.latch.remote()) {
                let marker = !self.first_sent;
                self.outbound.packetize_into(
                    payload,
                    marker,
                    samples as u32,
                    &mut self.send_buffer,
                );
                match socket.send_to(&self.send_buffer, remote) {
                    Ok(_) => self.first_sent = true,
                    Err(error) => tracing::debug!(%remote, %error, "agent leg RTP send failed"),
                }
            }
        }
        match self.jitter.pop(now) {
            Playout::Frame(frame) | Playout::Concealed(frame) => self.to_caller.push_frame(frame),
            Playout::Buffering | Playout::Empty => {}
        }
        self.to_caller.pop()
    }

    /// Reads what the agent sent since the last tick.
    fn drain(&mut self, socket: &UdpSocket, now: Instant) {
        for _ in 0..MAX_DRAIN {
            let (length, from) = match socket.recv_from(&mut self.receive_buffer) {
                Ok(received) => received,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    tracing::trace!(%error, "agent leg RTP receive error");
                    continue;
                }
            };
            let datagram = self.receive_buffer.get(..length).unwrap_or_default();
            let Ok(packet) = parse_rtp(datagram) else {
                continue;
            };
            if !self.latch.handle_packet(from, &packet) {
                continue;
            }
            if Some(packet.payload_type) == self.params.telephone_event || !self.params.receive {
                continue;
            }
            self.jitter.push(now, packet);
        }
    }
}

/// G.711 samples in one `ptime` (8 kHz).
fn samples_per(ptime: Duration) -> usize {
    (ptime.as_micros() * 8 / 1_000) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::rtp::parse_rtp;

    fn params(remote_rtp: Option<SocketAddr>) -> MediaParams {
        MediaParams {
            remote_rtp,
            remote_rtcp: None,
            codec: G711::Pcmu,
            payload_type: 0,
            telephone_event: Some(101),
            ptime: Duration::from_millis(20),
            send: true,
            receive: true,
        }
    }

    fn rtp(seq: u16, payload: u8) -> Vec<u8> {
        let mut packet = vec![0x80, 0x00];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        packet.extend_from_slice(&0x0a0a_0a0au32.to_be_bytes());
        packet.extend(std::iter::repeat_n(payload, 160));
        packet
    }

    #[test]
    fn ringback_then_relay_both_ways_each_leg_its_own_stream_then_release() {
        let metrics = Metrics::new();
        let (attach, attached) = mpsc::channel(2);
        let ptime = Duration::from_millis(20);
        let mut media =
            AgentMedia::new(attached, ptime, Duration::from_millis(200), metrics.clone());
        let rtp_socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rtp_socket.set_nonblocking(true).expect("non-blocking");
        let local = rtp_socket.local_addr().expect("address");
        let sockets = AgentLegSockets {
            rtp: rtp_socket,
            _rtcp: UdpSocket::bind("127.0.0.1:0").expect("bind"),
        };
        attach.try_send(sockets).expect("attach");
        let caller = params(Some("127.0.0.1:9".parse().unwrap()));
        let mut now = Instant::now();
        assert!(
            media.tick(now, None, ptime).is_none(),
            "idle: the assistant plays"
        );

        media.handle_command(AgentLegCommand::Ringback, Some(&caller));
        let ring = media
            .tick(now, Some(&[0x42; 160]), ptime)
            .expect("ringback");
        assert_eq!(ring.payload.len(), 160);
        assert!(
            ring.payload.iter().any(|&code| code != 0xFF),
            "a tone, not silence"
        );

        let agent = UdpSocket::bind("127.0.0.1:0").expect("bind");
        agent
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let connect = AgentLegCommand::Connect(params(Some(agent.local_addr().unwrap())));
        media.handle_command(connect, Some(&caller));
        assert_eq!(metrics.bridged_calls_active.get(), 1);
        assert!(media.take_close_speech() && !media.take_close_speech());

        // The caller's frame goes to the agent on voxgate's own stream.
        media.tick(now, Some(&[0x42; 160]), ptime);
        let mut buffer = [0u8; 2_048];
        let (length, from) = agent.recv_from(&mut buffer).expect("RTP at the agent");
        assert_eq!(from, local);
        let packet = parse_rtp(&buffer[..length]).expect("RTP");
        assert_eq!(&packet.payload[..], &[0x42; 160][..]);
        assert!(packet.marker);
        assert_ne!(packet.ssrc, Ssrc(0x0a0a_0a0a));

        // The agent's audio reaches the caller once its jitter buffer has filled.
        for seq in 0..5 {
            agent.send_to(&rtp(seq, 0x33), local).expect("send");
        }
        // Loopback delivery is not instant: tick (virtual ptimes) until the audio comes out,
        // for at most two seconds of wall clock.
        let give_up = Instant::now() + Duration::from_secs(2);
        let mut heard = false;
        while !heard && Instant::now() < give_up {
            now += ptime;
            let frame = media.tick(now, None, ptime).expect("relay");
            heard = frame.payload.iter().all(|&code| code == 0x33);
            std::thread::yield_now();
        }
        assert!(heard, "the agent's frames reached the caller");

        media.handle_command(AgentLegCommand::Release, Some(&caller));
        assert_eq!(metrics.bridged_calls_active.get(), 0);
        assert!(
            media.tick(now, None, ptime).is_none(),
            "back to the assistant"
        );
    }

    #[test]
    fn dropping_a_relaying_task_ends_the_bridge_in_the_gauge() {
        let metrics = Metrics::new();
        let (_attach, attached) = mpsc::channel(2);
        let ptime = Duration::from_millis(20);
        let mut media = AgentMedia::new(attached, ptime, ptime * 10, metrics.clone());
        let connect = AgentLegCommand::Connect(params(Some("127.0.0.1:9".parse().unwrap())));
        media.handle_command(connect, None);
        assert_eq!(metrics.bridged_calls_active.get(), 1);
        drop(media);
        assert_eq!(metrics.bridged_calls_active.get(), 0);
    }
}
