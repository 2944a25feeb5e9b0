//! What arrives on a call's RTP and RTCP ports, in arrival order with input-chosen gaps: RTP
//! through the symmetric latch into the jitter buffer (popped every ptime), telephone-events
//! into the DTMF receiver, RTCP into the RTCP session, and the playout queue fed with the
//! payloads.
//!
//! The input is a list of records `[op, len, len bytes]`:
//! - `op % 4 == 0`: a raw RTP datagram (`len` bytes);
//! - `op % 4 == 1`: a well-formed RTP packet built from 8 bytes: sequence step, timestamp step
//!   (i16 each), marker, payload type (0 or 101), payload length, source (one of two);
//! - `op % 4 == 2`: a raw RTCP datagram;
//! - `op % 4 == 3`: `len` ms pass (ticks fire every 20 ms).
//!
//! Checked besides "never panics": every frame played is one ptime (never empty, never the
//! caller's packet size).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use voxgate::media::dtmf::DtmfReceiver;
use voxgate::media::jitter::{JitterBuffer, JitterConfig, Playout};
use voxgate::media::playout::PlayoutQueue;
use voxgate::media::rtcp::{NtpTime, RtcpSession};
use voxgate::media::rtp::{parse_rtp, telephone_event, OutboundStream, SymmetricLatch};
use voxgate::media::{Ssrc, G711};

use super::t0;

struct Leg {
    now: Instant,
    next_tick: Instant,
    latch: SymmetricLatch,
    jitter: JitterBuffer,
    dtmf: DtmfReceiver,
    rtcp: RtcpSession,
    outbound: OutboundStream,
    playout: PlayoutQueue,
    seq: u16,
    timestamp: u32,
}

impl Leg {
    fn rtp(&mut self, datagram: &[u8], from: SocketAddr) {
        let Ok(packet) = parse_rtp(datagram) else {
            return;
        };
        if !self.latch.handle_packet(from, &packet) {
            return;
        }
        if packet.payload_type == 101 {
            let _ = telephone_event(&packet.payload);
            let _ = self
                .dtmf
                .handle_packet(self.now, packet.timestamp.0, &packet.payload);
            return;
        }
        self.playout.push(&packet.payload);
        self.jitter.push(self.now, packet);
    }

    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while self.next_tick <= until {
            self.now = self.next_tick;
            self.next_tick += Duration::from_millis(20);
            match self.jitter.pop(self.now) {
                // Whatever the caller's packet sizes, a frame is one ptime (160 samples).
                Playout::Frame(frame) | Playout::Concealed(frame) => {
                    assert_eq!(frame.len(), 160, "a frame played is not one ptime");
                }
                Playout::Buffering | Playout::Empty => {}
            }
            if self.dtmf.poll_timeout().is_some_and(|due| due <= self.now) {
                let _ = self.dtmf.handle_timeout(self.now);
            }
            let frame = self.playout.pop();
            let _ = self.outbound.packetize(&frame.payload, frame.marker, 160);
            let _ = self.jitter.take_reception_report();
            let _ = self.jitter.stats();
        }
        self.now = until;
    }
}

/// One input.
pub fn run(data: &[u8]) {
    let caller: SocketAddr = "192.0.2.10:30000".parse().expect("literal");
    let stranger: SocketAddr = "198.51.100.7:30000".parse().expect("literal");
    let mut leg = Leg {
        now: t0(),
        next_tick: t0(),
        latch: SymmetricLatch::new(Some(caller), &[0, 101]),
        jitter: JitterBuffer::new(JitterConfig::default()),
        dtmf: DtmfReceiver::new(),
        rtcp: RtcpSession::new(Ssrc(7), "voxgate-fuzz"),
        outbound: OutboundStream::new(Ssrc(7), 0, 8_000),
        playout: PlayoutQueue::new(G711::Pcmu, Duration::from_millis(20)),
        seq: 1,
        timestamp: 160,
    };
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        match op % 4 {
            0 => leg.rtp(body, caller),
            1 => {
                let byte = |i: usize| body.get(i).copied().unwrap_or(0);
                let seq_step = i16::from_be_bytes([byte(0), byte(1)]);
                let ts_step = i16::from_be_bytes([byte(2), byte(3)]);
                leg.seq = leg.seq.wrapping_add_signed(seq_step);
                leg.timestamp = leg.timestamp.wrapping_add_signed(ts_step.into());
                let payload_type = if byte(5) & 1 == 1 { 101 } else { 0 };
                let mut packet = vec![0x80, payload_type | (byte(4) & 0x80)];
                packet.extend_from_slice(&leg.seq.to_be_bytes());
                packet.extend_from_slice(&leg.timestamp.to_be_bytes());
                packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
                let payload_len = usize::from(byte(6)) * 2;
                packet
                    .extend((0..payload_len).map(|i| body.get(8 + i % 8).copied().unwrap_or(0xff)));
                let from = if byte(7) & 1 == 1 { stranger } else { caller };
                leg.rtp(&packet, from);
            }
            2 => {
                let ntp = NtpTime::from_system_time(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
                );
                let _ = leg.rtcp.handle_packet(leg.now, ntp, body);
            }
            _ => leg.advance(Duration::from_millis(len as u64)),
        }
    }
    leg.advance(Duration::from_secs(2));
}
