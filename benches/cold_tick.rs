//! Criterion bench of a bridged call's whole per-tick work in voxgate's own state machines, for
//! many calls, with the caches warm and cold (issue #3's CPU per call).
//!
//! One "tick" of a call here is what its media task does every 20 ms apart from the system
//! calls and the runtime: parse the caller's RTP packet, latch it, push it into the jitter
//! buffer and pop the frame due, tick the Realtime bridge (which builds the
//! `input_audio_buffer.append`), frame that append as a masked WebSocket text frame, and
//! packetise the frame for the caller. Every 60th tick of a call also takes a 4,800-byte
//! `response.output_audio.delta`, so the playout queue runs as in the load benchmark (half as
//! much audio down as up).
//!
//! An iteration is one pass over all `CALLS` calls, in a fixed shuffled order (calls are
//! allocated one after the other here, but in the service they are scattered through the heap).
//! Divide the time by `CALLS` for one call's tick.
//! - `warm`: passes run back to back, so what the calls touch stays cached.
//! - `cold`: before each pass (not timed) 64 MiB are written, which evicts the calls' state from
//!   every cache level, as 20 ms of other work and other tenants do on the benchmark VM (see
//!   BENCHMARKS.md, "What a tick's memory costs").
// Criterion needs a real clock origin once; the state machines only see virtual time.
#![allow(clippy::disallowed_methods, missing_docs)]

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use voxgate::call::bridge::Bridge;
use voxgate::media::jitter::{JitterBuffer, JitterConfig, Playout};
use voxgate::media::rtp::{parse_rtp, OutboundStream, SymmetricLatch};
use voxgate::media::Ssrc;
use voxgate::realtime::RealtimeSession;

mod common;
use common::{delta, ready_bridge};

/// Concurrent calls (the load target).
const CALLS: usize = 200;
/// A call takes a delta every this many ticks (1.2 s: 600 ms of audio down per 1.2 s up).
const DELTA_EVERY: u64 = 60;
/// Bytes written to evict the caches before a cold pass.
const EVICT_BYTES: usize = 64 << 20;

/// What a bridged call keeps between ticks, as the media task holds it.
struct Call {
    from: SocketAddr,
    ssrc: u32,
    latch: SymmetricLatch,
    jitter: JitterBuffer,
    bridge: Bridge<RealtimeSession>,
    outbound: OutboundStream,
    /// The outbound RTP packet, rebuilt in place.
    send_buffer: Vec<u8>,
    /// The WebSocket frames of this tick (the socket's write buffer).
    ws_out: Vec<u8>,
    /// Ticks taken.
    ticks: u64,
}

impl Call {
    fn new(index: usize, now: Instant) -> Call {
        let bridge = ready_bridge(now);
        let from = SocketAddr::from((Ipv4Addr::LOCALHOST, 20_000 + 2 * index as u16));
        Call {
            from,
            ssrc: 0x5eed_0000 + index as u32,
            latch: SymmetricLatch::new(Some(from), &[0]),
            jitter: JitterBuffer::new(JitterConfig::default()),
            bridge,
            outbound: OutboundStream::new(Ssrc(0x7000_0000 + index as u32), 0, 8_000),
            send_buffer: Vec::with_capacity(1_500),
            ws_out: Vec::with_capacity(512),
            // Staggered, so the calls take their deltas at different passes.
            ticks: index as u64,
        }
    }

    /// One 20 ms tick; `datagram` is the media thread's (warm) receive buffer.
    fn tick(&mut self, start: Instant, datagram: &mut [u8; 172], delta: &str) {
        let n = self.ticks;
        self.ticks += 1;
        let now = start + Duration::from_millis(20 * n);
        // The caller's packet n, as `recvmmsg` leaves it in the thread's buffer.
        datagram[0] = 0x80;
        datagram[1] = 0;
        datagram[2..4].copy_from_slice(&(n as u16).to_be_bytes());
        datagram[4..8].copy_from_slice(&((n as u32).wrapping_mul(160)).to_be_bytes());
        datagram[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        datagram[12..].fill(n as u8);
        if let Ok(packet) = parse_rtp(datagram) {
            if self.latch.handle_packet(self.from, &packet) {
                self.jitter.push(now, packet);
            }
        }
        let heard = match self.jitter.pop(now) {
            Playout::Frame(frame) | Playout::Concealed(frame) => Some(frame),
            Playout::Buffering | Playout::Empty => None,
        };
        if n % DELTA_EVERY == 0 {
            self.bridge.handle_message(now, delta);
        }
        let frame = self.bridge.tick(now, heard.as_deref());
        self.ws_out.clear();
        while let Some(text) = self.bridge.poll_transmit() {
            let header = FrameHeader {
                opcode: OpCode::Data(Data::Text),
                mask: Some((n as u32).to_ne_bytes()),
                ..FrameHeader::default()
            };
            let _ = Frame::from_payload(header, text.into()).format(&mut self.ws_out);
        }
        while let Some(output) = self.bridge.poll_output() {
            black_box(output);
        }
        self.outbound
            .packetize_into(&frame.payload, frame.marker, 160, &mut self.send_buffer);
        black_box((&self.send_buffer, &self.ws_out));
    }
}

/// A fixed shuffle of `0..n` (xorshift; no need for a good generator).
fn shuffled(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

fn bench(c: &mut Criterion) {
    let start = Instant::now();
    let delta = delta("item_CZ0pN1");
    let mut group = c.benchmark_group("bridged_call_tick");
    group.throughput(Throughput::Elements(CALLS as u64));
    for cold in [false, true] {
        let name = if cold {
            "cold_200_calls"
        } else {
            "warm_200_calls"
        };
        group.bench_function(name, |b| {
            let mut calls: Vec<Box<Call>> = (0..CALLS)
                .map(|index| Box::new(Call::new(index, start)))
                .collect();
            let order = shuffled(CALLS);
            let mut datagram = [0u8; 172];
            let mut evict = vec![0u8; EVICT_BYTES];
            // Fill the jitter buffers to their target delay first.
            for _ in 0..10 {
                for &index in &order {
                    calls[index].tick(start, &mut datagram, &delta);
                }
            }
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for pass in 0..iters {
                    if cold {
                        for line in evict.chunks_mut(64) {
                            line[0] = line[0].wrapping_add(pass as u8 | 1);
                        }
                        black_box(&evict);
                    }
                    let began = Instant::now();
                    for &index in &order {
                        calls[index].tick(start, &mut datagram, &delta);
                    }
                    spent += began.elapsed();
                }
                spent
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
