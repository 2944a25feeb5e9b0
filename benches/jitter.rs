//! Criterion bench of the per-packet inbound path: `JitterBuffer::push` + `pop` for one 20 ms
//! PCMU packet, on a steady stream and with 5 % of packets swapped with their successor; and
//! one 20 ms tick of a caller sending 30 ms packets (cut into 20 ms frames).
// Criterion needs a real clock origin once; the buffer itself only sees virtual time.
#![allow(clippy::disallowed_methods, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use voxgate::media::jitter::{JitterBuffer, JitterConfig};
use voxgate::media::{MediaPacket, RtpTimestamp, SeqNo, Ssrc};

fn packet(n: u64, payload: &Bytes) -> MediaPacket {
    MediaPacket {
        ssrc: Ssrc(0x5eed),
        seq: SeqNo(n as u16),
        timestamp: RtpTimestamp((n as u32).wrapping_mul(payload.len() as u32)),
        marker: n == 0,
        payload_type: 0,
        payload: payload.clone(),
    }
}

/// Arrival order: every 20th packet swapped with the next one (5 % arrive reordered).
fn order(n: u64, reorder: bool) -> u64 {
    match (reorder, n % 20) {
        (true, 10) => n + 1,
        (true, 11) => n - 1,
        _ => n,
    }
}

fn bench(c: &mut Criterion) {
    let payload = Bytes::from(vec![0x55u8; 160]);
    for (name, reorder) in [("push_pop_steady", false), ("push_pop_reorder_5pct", true)] {
        c.bench_function(name, |b| {
            let mut jitter = JitterBuffer::new(JitterConfig::default());
            let start = Instant::now();
            let mut n = 0u64;
            b.iter(|| {
                let now = start + Duration::from_millis(20 * n);
                jitter.push(now, packet(order(n, reorder), &payload));
                black_box(jitter.pop(now));
                n += 1;
            });
        });
    }
}

/// One 20 ms tick with 30 ms packets: a packet pushed on two ticks of three, a pop every tick.
fn bench_reframed(c: &mut Criterion) {
    let payload = Bytes::from(vec![0x55u8; 240]);
    c.bench_function("tick_30ms_packets", |b| {
        let mut jitter = JitterBuffer::new(JitterConfig::default());
        let start = Instant::now();
        let (mut tick, mut sent) = (0u64, 0u64);
        b.iter(|| {
            let now = start + Duration::from_millis(20 * tick);
            while sent * 30 <= tick * 20 {
                jitter.push(now, packet(sent, &payload));
                sent += 1;
            }
            black_box(jitter.pop(now));
            tick += 1;
        });
    });
}

criterion_group!(benches, bench, bench_reframed);
criterion_main!(benches);
