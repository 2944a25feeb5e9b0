//! Statistics and the latency figures of one probe call (the method is in the crate docs).

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::common::pcap;
use crate::common::realtime::{frame_index, SessionRecord};
use crate::common::rtp::RtpPacket;
use crate::{PTIME, PTIME_US};

/// Nearest-rank percentiles of a sample.
#[derive(Debug, Clone, Default)]
pub(crate) struct Summary {
    pub(crate) values: Vec<f64>,
}

impl Summary {
    pub(crate) fn new(mut values: Vec<f64>) -> Summary {
        values.sort_by(f64::total_cmp);
        Summary { values }
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    pub(crate) fn pct(&self, p: f64) -> f64 {
        if self.values.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.values.len() as f64).ceil() as usize;
        self.values[rank.clamp(1, self.values.len()) - 1]
    }

    pub(crate) fn max(&self) -> f64 {
        self.values.last().copied().unwrap_or(f64::NAN)
    }

    pub(crate) fn min(&self) -> f64 {
        self.values.first().copied().unwrap_or(f64::NAN)
    }

    pub(crate) fn mean(&self) -> f64 {
        self.values.iter().sum::<f64>() / self.values.len() as f64
    }

    /// `p50 / p99 / max` in milliseconds, from microseconds.
    pub(crate) fn ms(&self) -> String {
        format!(
            "{:.3} / {:.3} / {:.3} ms (n = {})",
            self.pct(50.0) / 1e3,
            self.pct(99.0) / 1e3,
            self.max() / 1e3,
            self.len()
        )
    }
}

pub(crate) fn micros(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        (later - earlier).as_secs_f64() * 1e6
    } else {
        -((earlier - later).as_secs_f64() * 1e6)
    }
}

/// The grid excess of outputs `(k, t_k)`: `t_k − (T_0 + k·20 ms)` with `T_0` the lower
/// envelope; returns (excess per output in µs, the grid origin).
pub(crate) fn grid_excess(outputs: &[(i64, Instant)]) -> (Vec<f64>, Instant) {
    let Some(&(_, base)) = outputs.first() else {
        return (Vec::new(), Instant::now());
    };
    let offsets: Vec<f64> = outputs
        .iter()
        .map(|&(k, at)| micros(at, base) - k as f64 * PTIME_US)
        .collect();
    let floor = offsets.iter().copied().fold(f64::INFINITY, f64::min);
    let origin = if floor >= 0.0 {
        base + Duration::from_secs_f64(floor / 1e6)
    } else {
        base - Duration::from_secs_f64(-floor / 1e6)
    };
    (offsets.iter().map(|o| o - floor).collect(), origin)
}

/// Tick k of a grid starting at `origin`.
pub(crate) fn grid_time(origin: Instant, k: i64) -> Instant {
    origin + Duration::from_secs_f64((k as f64 * PTIME_US) / 1e6)
}

/// Up and down figures of one probe.
#[derive(Debug, Default)]
pub(crate) struct ProbeFigures {
    /// Append k's excess over the call's append grid (µs).
    pub(crate) up_added: Vec<f64>,
    /// Caller packet sent → the grid tick that appended it (µs).
    pub(crate) up_hold: Vec<f64>,
    /// Caller packet sent → its append at the stand-in (µs), everything included.
    pub(crate) up_total: Vec<f64>,
    /// RTP packet k's excess over the call's RTP grid (µs).
    pub(crate) down_added: Vec<f64>,
    /// First frame of a reply: delta sent → the grid tick that sent it (µs).
    pub(crate) down_wait: Vec<f64>,
    /// First frame of a reply: delta sent → RTP received (µs), everything included.
    pub(crate) down_total: Vec<f64>,
    /// First frames that waited more than a tick + 1 ms.
    pub(crate) missed_ticks: usize,
    /// Gaps between consecutive RTP packets from voxgate (µs).
    pub(crate) rtp_gaps: Vec<f64>,
    /// Caller packets that reached the stand-in.
    pub(crate) packets_up: usize,
    /// Agent frames that reached the caller.
    pub(crate) frames_down: usize,
}

/// Analyses probe `session` (its stand-in record) with the packets it sent (`sent[i]`) and
/// received, over outputs at or after `from` and before `until`.
pub(crate) fn probe_figures(
    session: &SessionRecord,
    sent: &[Instant],
    received: &[RtpPacket],
    from: Instant,
    until: Instant,
) -> ProbeFigures {
    let mut figures = ProbeFigures::default();
    // Up: append n is tick n of the call's append grid.
    let appends: Vec<(i64, Instant, usize, usize)> = session
        .appends
        .iter()
        .enumerate()
        .map(|(n, a)| (n as i64, a.at, a.offset, a.bytes))
        .filter(|&(_, at, _, _)| at >= from && at < until)
        .collect();
    let grid: Vec<(i64, Instant)> = appends.iter().map(|&(n, at, _, _)| (n, at)).collect();
    let (excess, origin) = grid_excess(&grid);
    for (&(n, at, offset, bytes), &added) in appends.iter().zip(&excess) {
        figures.up_added.push(added);
        let Some(frame) = session.input_audio.get(offset..offset + bytes) else {
            continue;
        };
        let Some(index) = pcap::index_of(frame) else {
            continue;
        };
        let Some(&sent_at) = sent.get(index) else {
            continue;
        };
        figures.packets_up += 1;
        figures.up_total.push(micros(at, sent_at));
        figures.up_hold.push(micros(grid_time(origin, n), sent_at));
    }
    // Down: the RTP timestamp numbers voxgate's ticks (160 per 20 ms, also across loss).
    let packets: Vec<&RtpPacket> = received
        .iter()
        .filter(|p| p.at >= from && p.at < until)
        .collect();
    let Some(first) = packets.first() else {
        return figures;
    };
    let ts0 = first.timestamp;
    let grid: Vec<(i64, Instant)> = packets
        .iter()
        .map(|p| (i64::from(p.timestamp.wrapping_sub(ts0) / 160), p.at))
        .collect();
    let (excess, origin) = grid_excess(&grid);
    figures.down_added = excess;
    figures.rtp_gaps = packets
        .windows(2)
        .map(|pair| micros(pair[1].at, pair[0].at))
        .collect();
    // The stand-in's audio per tag: (tag) → (item audio, deltas).
    let mut items = BTreeMap::new();
    for item in &session.assistant_items {
        if let Some((tag, 0)) = item.audio.get(..160).and_then(frame_index) {
            items.insert(tag, item);
        }
    }
    for (packet, &(k, _)) in packets.iter().zip(&grid) {
        let Some((tag, index)) = frame_index(&packet.payload) else {
            continue;
        };
        figures.frames_down += 1;
        if index != 0 {
            continue;
        }
        let Some(delta) = items.get(&tag).and_then(|item| item.deltas.first()) else {
            continue;
        };
        let wait = micros(grid_time(origin, k), delta.at);
        figures.down_wait.push(wait);
        figures.down_total.push(micros(packet.at, delta.at));
        if wait > PTIME_US + 1_000.0 {
            figures.missed_ticks += 1;
        }
    }
    figures
}

/// Half the minimum UDP round trip over loopback between two threads of this process (µs),
/// and the median: the floor of one loopback hop on this machine.
pub(crate) fn loopback_hop() -> (f64, f64) {
    let echo = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let echo_addr = echo.local_addr().expect("addr");
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    echo.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let rounds = 500;
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        for _ in 0..rounds {
            let Ok((n, from)) = echo.recv_from(&mut buf) else {
                return;
            };
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let mut rtts = Vec::new();
    let mut buf = [0u8; 256];
    for _ in 0..rounds {
        let start = Instant::now();
        client.send_to(&[0u8; 172], echo_addr).expect("send");
        if client.recv_from(&mut buf).is_ok() {
            rtts.push(micros(Instant::now(), start) / 2.0);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = thread.join();
    let rtts = Summary::new(rtts);
    (rtts.min(), rtts.pct(50.0))
}

/// How late tokio's 20 ms intervals wake (µs after the instant they were due), 8 of them on a
/// 2-worker runtime like voxgate's media tasks but doing nothing else: the timer's share of the
/// added latency (its wheel has 1 ms slots and the park timeout is rounded up to 1 ms).
pub(crate) fn tokio_timer_lateness() -> Summary {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let lateness = runtime.block_on(async {
        let tasks: Vec<_> = (0..8u64)
            .map(|i| {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(i * 2_500)).await;
                    let mut interval = tokio::time::interval(PTIME);
                    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    let mut late = Vec::with_capacity(250);
                    for _ in 0..250 {
                        let due = interval.tick().await;
                        late.push(micros(Instant::now(), due.into_std()));
                    }
                    late
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap_or_default());
        }
        all
    });
    Summary::new(lateness)
}
