//! Criterion benches of the Realtime bridge's per-frame paths (issue #3): what one call costs
//! voxgate per 20 ms frame up (`input_audio_buffer.append` built by the session inside
//! `Bridge::tick`) and per `response.output_audio.delta` down (JSON parse, base64 decode,
//! re-packetising into the playout queue), without sockets or the scheduler.
//!
//! Deltas are 4,800 bytes of PCMU (600 ms, the size the Realtime service typically sends);
//! caller frames are 160 bytes (20 ms).
// Criterion needs a real clock origin once; the bridge itself only sees that fixed instant.
#![allow(clippy::disallowed_methods, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use voxgate::call::speech::SpeechSession;
use voxgate::media::playout::PlayoutQueue;
use voxgate::media::G711;
use voxgate::realtime::{events, RealtimeSession};

mod common;
use common::{agent, delta, ready_bridge, session_created, session_updated, DELTA_BYTES};

/// 20 ms frames in one delta.
const FRAMES_PER_DELTA: usize = DELTA_BYTES / 160;

fn bench_events(c: &mut Criterion) {
    let frame = [0x55u8; 160];
    c.bench_function("events_append_160", |b| {
        b.iter(|| black_box(events::append(black_box(&frame))));
    });
    let text = delta("item_CZ0pN1");
    c.bench_function("session_handle_delta_4800", |b| {
        let mut session = RealtimeSession::new(&agent());
        session.handle_message(&session_created());
        session.handle_message(&session_updated());
        while session.poll_transmit().is_some() {}
        while session.poll_event().is_some() {}
        b.iter(|| {
            session.handle_message(black_box(&text));
            while let Some(event) = session.poll_event() {
                black_box(event);
            }
        });
    });
}

fn bench_bridge(c: &mut Criterion) {
    // The bridge never reads the clock: one fixed instant keeps the session-limit goodbye
    // (an hour away) from ever firing however many iterations criterion runs.
    let now = Instant::now();
    let heard = [0x55u8; 160];
    c.bench_function("bridge_tick_agent_quiet", |b| {
        let mut bridge = ready_bridge(now);
        b.iter(|| {
            let frame = bridge.tick(now, Some(black_box(&heard)));
            while let Some(text) = bridge.poll_transmit() {
                black_box(text);
            }
            black_box(frame)
        });
    });
    let text = delta("item_CZ0pN1");
    c.bench_function("bridge_delta_4800_then_30_ticks", |b| {
        let mut bridge = ready_bridge(now);
        b.iter(|| {
            bridge.handle_message(now, black_box(&text));
            for _ in 0..FRAMES_PER_DELTA {
                let frame = bridge.tick(now, Some(black_box(&heard)));
                while let Some(text) = bridge.poll_transmit() {
                    black_box(text);
                }
                black_box(frame);
            }
            while let Some(output) = bridge.poll_output() {
                black_box(output);
            }
        });
    });
}

fn bench_playout(c: &mut Criterion) {
    let audio: Vec<u8> = (0..DELTA_BYTES).map(|i| (i % 251) as u8).collect();
    c.bench_function("playout_push_4800_pop_30", |b| {
        let mut queue = PlayoutQueue::new(G711::Pcmu, Duration::from_millis(20));
        b.iter(|| {
            queue.push_tagged(black_box(&audio), 1);
            for _ in 0..FRAMES_PER_DELTA {
                black_box(queue.pop());
            }
        });
    });
    c.bench_function("playout_push_160_pop_1", |b| {
        let mut queue = PlayoutQueue::new(G711::Pcmu, Duration::from_millis(20));
        b.iter(|| {
            queue.push_tagged(black_box(&audio[..160]), 1);
            black_box(queue.pop())
        });
    });
}

criterion_group!(benches, bench_events, bench_bridge, bench_playout);
criterion_main!(benches);
