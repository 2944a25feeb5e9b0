//! Inbound adaptive jitter buffer, sans-IO, in pjmedia `jbuf` style: packets in any order with
//! `push(now, packet)`, one [`Playout`] out per ptime tick with `pop(now)`.
//!
//! RFC 3550 pieces: A.1 sequence validation (extended sequence numbers across the 16-bit wrap,
//! `MAX_DROPOUT`/`MAX_MISORDER`, restart after two sequential packets past a large jump), A.3
//! loss (`expected`, cumulative and per-interval fraction), A.8 interarrival jitter
//! `J += (|D| - J) / 16` in timestamp units (32-bit timestamp wrap safe).
//!
//! ```text
//!          push              span >= target, or waited target            buffer empty and
//!  Idle ─────────► Buffering ──────────────────────────────► Playing ── concealment faded ─► Idle
//! (Empty)         (Buffering)                          (Frame | Concealed)
//! ```
//!
//! Playout walks an internal frame index: each source's extended sequence number plus an offset
//! chosen so that a new SSRC (Asterisk's native bridge passes another leg's SSRC, sequence and
//! timestamps through, and changes them again after a transfer) or an A.1 restart continues right
//! after the last frame received: no gap, no phantom loss. One packet is one slot; the caller
//! pushes only audio of the negotiated codec (telephone-event goes elsewhere).
//!
//! Packets need not last one ptime. Senders that ignore `a=ptime` (10 or 30 ms packets against
//! a 20 ms answer) or a leg bridged in after a transfer with another packet size are followed:
//! the slot duration becomes the stream's packet duration once three packets in a row agree (the
//! first packet sets it at once), and `pop` cuts exactly one ptime of audio from the packets
//! played in order, carrying the remainder to the next tick. Concealment then stands in for one
//! packet's duration, so a loss never shifts the audio after it.
//!
//! Each `pop` in `Playing`:
//! - a present frame is played (`Frame`); a missing one whose successors have arrived is
//!   concealed (`Concealed`) and skipped; arriving later it is counted `late` and dropped;
//! - when nothing is buffered (late packets, DTX pause) concealment is inserted without consuming
//!   a slot; the next real frame then plays without skipping, so a delay spike grows the delay
//!   instead of losing audio; once the concealment has faded to silence the buffer goes `Idle`
//!   and the next packet (a talkspurt start) re-anchors playout at the target delay;
//! - delay adapts to `target = clamp(ptime + max(peak |D|, 3·J), min, max)`: the peak follows a
//!   jitter spike at once and decays with a ~10 s time constant. Buffered 2 frames above target for
//!   60 ms (quiet or missing frame next) or 500 ms, a frame is dropped; below target for 200 ms,
//!   one concealment frame is inserted. Streaks, not single ticks, so a bunched arrival or the
//!   end of a talkspurt does not trigger either. This also absorbs a far clock ±1 % off.
//!
//! Concealment is repeat-and-fade in the linear domain: the last good frame is played back
//! mirrored (reversed, forward, reversed …, so every join is continuous), at full gain for 10 ms,
//! fading linearly to silence at 60 ms. The first real frame after concealment or a dropped frame
//! is cross-faded over 5 ms from the concealment's continuation, so no step reaches the caller.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::media::g711::Codec;
use crate::media::{MediaPacket, Ssrc, G711};

/// RFC 3550 A.1: a forward jump below this many packets is loss, not a restart.
const MAX_DROPOUT: u16 = 3_000;
/// RFC 3550 A.1: a backward step up to this many packets is reordering, not a restart.
const MAX_MISORDER: u16 = 100;
const SEQ_MOD: i64 = 1 << 16;
/// Remembered frame indices for duplicate detection.
const SEEN_SLOTS: usize = 1_024;
/// Peak-jitter decay per packet: a time constant of 512 packets (~10 s at 20 ms).
const PEAK_DECAY: f64 = 1.0 - 1.0 / 512.0;
/// Packets of another size than the current slot, in a row, before the slots follow them.
const SIZE_CHANGE_AFTER: u8 = 3;
/// Packet durations the slots follow, in samples at 8 kHz (5–120 ms); others are played but
/// leave the slots as they are.
const FOLLOWED_PACKET_SAMPLES: std::ops::RangeInclusive<usize> = 40..=960;
/// Consecutive ticks above target before a non-quiet frame is dropped (500 ms at 20 ms).
const SHRINK_AFTER_TICKS: u32 = 25;
/// Consecutive ticks above target before a quiet (or missing) frame is dropped.
const QUIET_SHRINK_AFTER_TICKS: u32 = 3;
/// Consecutive ticks below target before a frame is inserted (an underrun grows the delay at
/// once by itself; this only follows a risen target or a slow far clock).
const GROW_AFTER_TICKS: u32 = 10;
/// A frame whose peak stays below this (about -30 dBFS) may be dropped at once when shrinking.
const QUIET_PEAK: u16 = 1_000;
/// A transit change larger than this many seconds is a timestamp discontinuity, not jitter.
const TIMESTAMP_JUMP_SECS: i64 = 3;

/// Jitter buffer settings; `io/` builds them from the negotiated SDP (ptime, codec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitterConfig {
    /// The delay never adapts below this.
    pub min_delay: Duration,
    /// The buffered span never exceeds this; older frames are dropped first.
    pub max_delay: Duration,
    /// Duration of the audio each `pop` returns (the negotiated ptime), and the packet duration
    /// expected until the stream shows another.
    pub ptime: Duration,
    /// The codec of the payloads, for concealment.
    pub codec: G711,
    /// RTP clock rate in Hz (8000 for G.711).
    pub clock_rate: u32,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(40),
            max_delay: Duration::from_millis(200),
            ptime: Duration::from_millis(20),
            codec: G711::Pcmu,
            clock_rate: 8_000,
        }
    }
}

/// What to play this ptime tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// A received frame, in order (its first 5 ms cross-faded after concealment).
    Frame(Bytes),
    /// Synthesised audio standing in for a lost, late or not-yet-arrived frame; fades to
    /// silence after 60 ms. Play it like a frame.
    Concealed(Bytes),
    /// Packets arrived; holding them until the target delay is reached. Play silence.
    Buffering,
    /// Nothing to play: no packets yet, or the far end paused. Play silence.
    Empty,
}

/// Counters for metrics and RTCP, updated by `push` and `pop`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JitterStats {
    /// Every packet pushed.
    pub received: u64,
    /// Packets whose frame was already received (each extra copy counted once).
    pub duplicates: u64,
    /// Packets that arrived after their playout slot had passed (dropped).
    pub late: u64,
    /// Packets that never arrived, RFC 3550 A.3 cumulative (`expected - received`, unique
    /// packets), summed over every SSRC and sequence restart.
    pub lost: u64,
    /// Packets expected per RFC 3550 A.3, summed over every SSRC and sequence restart.
    pub expected: u64,
    /// `Playout::Concealed` frames returned.
    pub concealed_frames: u64,
    /// Of those, frames inserted without consuming a sequence slot (delay grew).
    pub inserted_frames: u64,
    /// Received frames dropped unplayed to bring the delay down (drift, max delay).
    pub discarded_frames: u64,
    /// Packets that arrived after a higher sequence number and were put back in order.
    pub reordered: u64,
    /// Times the sender's SSRC changed.
    pub ssrc_changes: u64,
    /// RFC 3550 A.1 restarts: the same SSRC jumped its sequence and two sequential packets
    /// confirmed it.
    pub restarts: u64,
    /// Packets discarded by the A.1 large-jump check and never confirmed.
    pub stray: u64,
    /// RFC 3550 A.8 interarrival jitter of the current SSRC, in timestamp units.
    pub interarrival_jitter: u32,
    /// The same jitter as a duration.
    pub interarrival_jitter_duration: Duration,
    /// RFC 3550 A.3 extended highest sequence number of the current SSRC.
    pub extended_highest_seq: u32,
    /// Fraction lost (RFC 3550 §6.4.1, 1/256 units) in the interval ending at the last
    /// [`JitterBuffer::take_reception_report`].
    pub fraction_lost: u8,
    /// The SSRC currently received.
    pub ssrc: Option<Ssrc>,
}

/// One RTCP reception report block's figures for the current SSRC (RFC 3550 §6.4.1, A.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceptionReport {
    /// The SSRC reported on.
    pub ssrc: Ssrc,
    /// Lost in the interval since the previous report, in 1/256 units.
    pub fraction_lost: u8,
    /// Cumulative lost, clamped to the 24-bit signed field.
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub extended_highest_seq: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Buffering { since: Instant },
    Playing,
}

/// RFC 3550 A.1/A.3/A.8 per-source state.
#[derive(Debug, Clone)]
struct Source {
    ssrc: Ssrc,
    max_seq: u16,
    cycles: i64,
    base_seq: i64,
    bad_seq: Option<u16>,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Frame index = extended sequence number + offset.
    offset: i64,
    /// Index of this source's first packet; anything below belongs to the previous one.
    start_index: i64,
    transit: Option<u32>,
    jitter: f64,
}

enum SeqCheck {
    Valid(i64),
    Jump,
    Restart,
}

impl Source {
    fn new(ssrc: Ssrc, seq: u16, first_index: i64) -> Self {
        Self {
            ssrc,
            max_seq: seq,
            cycles: 0,
            base_seq: i64::from(seq),
            bad_seq: None,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            offset: first_index - i64::from(seq),
            start_index: first_index,
            transit: None,
            jitter: 0.0,
        }
    }

    /// RFC 3550 A.1 `update_seq`, without the initial probation: in a SIP dialog a new SSRC is
    /// legitimate (bridges, transfers) and symmetric RTP already filters strangers.
    fn check(&mut self, seq: u16) -> SeqCheck {
        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += SEQ_MOD;
            }
            self.max_seq = seq;
            SeqCheck::Valid(self.cycles + i64::from(seq))
        } else if udelta <= u16::MAX - MAX_MISORDER + 1 {
            if self.bad_seq == Some(seq) {
                SeqCheck::Restart
            } else {
                self.bad_seq = Some(seq.wrapping_add(1));
                SeqCheck::Jump
            }
        } else {
            let behind = i64::from(self.max_seq.wrapping_sub(seq));
            SeqCheck::Valid(self.cycles + i64::from(self.max_seq) - behind)
        }
    }

    fn extended_max(&self) -> i64 {
        self.cycles + i64::from(self.max_seq)
    }

    fn expected(&self) -> u64 {
        (self.extended_max() - self.base_seq + 1).max(0) as u64
    }

    fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }
}

#[derive(Debug, Clone)]
struct Slot {
    index: i64,
    payload: Bytes,
}

/// Repeat-and-fade packet loss concealment in the linear domain.
#[derive(Debug)]
struct Concealer {
    codec: Codec,
    last_payload: Option<Bytes>,
    last_pcm: Vec<i16>,
    decoded: bool,
    /// Samples synthesised since the last real frame.
    concealed_samples: usize,
    /// The next real frame follows a discontinuity and must be cross-faded.
    splice: bool,
    hold_samples: usize,
    fade_end_samples: usize,
    crossfade_samples: usize,
}

impl Concealer {
    fn new(codec: Codec, clock_rate: u32) -> Self {
        let per_ms = (clock_rate / 1_000).max(1) as usize;
        Self {
            codec,
            last_payload: None,
            last_pcm: Vec::new(),
            decoded: false,
            concealed_samples: 0,
            splice: false,
            hold_samples: 10 * per_ms,
            fade_end_samples: 60 * per_ms,
            crossfade_samples: 5 * per_ms,
        }
    }

    fn is_faded(&self) -> bool {
        self.concealed_samples >= self.fade_end_samples
    }

    fn ensure_decoded(&mut self) {
        if !self.decoded {
            self.last_pcm = match &self.last_payload {
                Some(payload) => self.codec.decode(payload),
                None => Vec::new(),
            };
            self.decoded = true;
        }
    }

    /// Sample `n` of the faded, mirrored repetition of the last good frame.
    fn continuation(&self, n: usize) -> f64 {
        let len = self.last_pcm.len();
        if len == 0 || n >= self.fade_end_samples {
            return 0.0;
        }
        let at = n % (2 * len);
        let sample = if at < len {
            self.last_pcm[len - 1 - at]
        } else {
            self.last_pcm[at - len]
        };
        let gain = if n < self.hold_samples {
            1.0
        } else {
            (self.fade_end_samples - n) as f64 / (self.fade_end_samples - self.hold_samples) as f64
        };
        f64::from(sample) * gain
    }

    fn conceal(&mut self, samples: usize) -> Bytes {
        if self.is_faded() {
            self.splice = true;
            return self.codec.silence(samples);
        }
        self.ensure_decoded();
        let pcm: Vec<i16> = (0..samples)
            .map(|i| self.continuation(self.concealed_samples + i).round() as i16)
            .collect();
        self.concealed_samples += samples;
        self.splice = true;
        self.codec.encode(&pcm)
    }

    /// A received frame was skipped: the next real frame joins a different waveform.
    fn discontinuity(&mut self) {
        self.splice = true;
    }

    fn play(&mut self, payload: Bytes) -> Bytes {
        let out = if self.splice && self.last_payload.is_some() {
            self.ensure_decoded();
            let mut pcm = self.codec.decode(&payload);
            let fade = self.crossfade_samples.min(pcm.len());
            for (i, sample) in pcm.iter_mut().take(fade).enumerate() {
                let weight = (i + 1) as f64 / (fade + 1) as f64;
                let old = self.continuation(self.concealed_samples + i);
                *sample = (weight * f64::from(*sample) + (1.0 - weight) * old).round() as i16;
            }
            self.codec.encode(&pcm)
        } else {
            payload
        };
        self.last_payload = Some(out.clone());
        self.decoded = false;
        self.concealed_samples = 0;
        self.splice = false;
        out
    }
}

/// The inbound jitter buffer: reorder, dedupe, drop late, conceal, adapt; RFC 3550 statistics.
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    /// Samples each `pop` returns (one ptime).
    out_samples: usize,
    /// The stream's packet duration: one slot.
    packet_samples: usize,
    packet_time: Duration,
    /// A packet size seen in a row (size, count) that the slots do not follow yet.
    size_streak: (usize, u8),
    /// Audio taken from slots but not yet returned, when packets do not last one ptime.
    carry: Vec<u8>,
    /// The carried audio includes received (not concealed) audio.
    carry_received: bool,
    max_frames: i64,
    state: State,
    slots: Vec<Option<Slot>>,
    buffered: usize,
    /// Next index to play (the lowest buffered index while not playing).
    cursor: i64,
    /// Lowest index still accepted; below it a packet is late.
    floor: i64,
    newest: i64,
    /// Highest index ever accepted (the next source starts after it).
    highest_index: Option<i64>,
    source: Option<Source>,
    previous: Option<(Source, Instant)>,
    held: Option<MediaPacket>,
    seen: Vec<i64>,
    reference: Option<Instant>,
    peak_jitter: f64,
    target: Duration,
    /// The target in samples (rounded up): audio ahead below it is low.
    low_below: i64,
    /// Two packets above the target in whole packets: audio ahead from here on is high.
    high_from: i64,
    lost_before: u64,
    expected_before: u64,
    concealer: Concealer,
    /// Concealment frames inserted while empty that a later missing slot may absorb.
    underrun_credit: u32,
    /// Consecutive ticks with the buffer below / above target.
    low_ticks: u32,
    high_ticks: u32,
    last_played: Option<i64>,
    stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer for one inbound RTP stream (any number of SSRCs in sequence).
    pub fn new(config: JitterConfig) -> Self {
        let ptime_ns = config.ptime.as_nanos().max(1);
        let out_samples =
            ((ptime_ns * u128::from(config.clock_rate) / 1_000_000_000) as usize).max(1);
        let max_frames = (config.max_delay.as_nanos() / ptime_ns).max(1) as i64;
        let ring = (max_frames as usize + 2).next_power_of_two();
        let target = config.min_delay.max(config.ptime).min(config.max_delay);
        let concealer = Concealer::new(Codec::new(config.codec), config.clock_rate);
        let mut jitter = Self {
            out_samples,
            packet_samples: out_samples,
            packet_time: config.ptime,
            size_streak: (0, 0),
            carry: Vec::new(),
            carry_received: false,
            max_frames,
            state: State::Idle,
            slots: vec![None; ring],
            buffered: 0,
            cursor: 0,
            floor: i64::MIN,
            newest: 0,
            highest_index: None,
            source: None,
            previous: None,
            held: None,
            seen: vec![i64::MIN; SEEN_SLOTS],
            reference: None,
            peak_jitter: 0.0,
            target,
            low_below: 0,
            high_from: 0,
            lost_before: 0,
            expected_before: 0,
            concealer,
            underrun_credit: 0,
            low_ticks: 0,
            high_ticks: 0,
            last_played: None,
            stats: JitterStats::default(),
            config,
        };
        jitter.update_thresholds();
        jitter
    }

    /// Takes one received packet, in any order, at its arrival time `now`.
    pub fn push(&mut self, now: Instant, packet: MediaPacket) {
        self.stats.received += 1;
        if self.reference.is_none() {
            self.reference = Some(now);
        }
        if let Some(previous) = self.route_previous(now, &packet) {
            if let Some(index) = previous {
                self.accept(now, index, packet, false);
            }
            return;
        }
        let Some(source) = self.source.as_mut() else {
            self.start_source(packet.ssrc, packet.seq.0, None);
            return self.push_current(now, packet);
        };
        if source.ssrc != packet.ssrc {
            self.stats.ssrc_changes += 1;
            self.start_source(packet.ssrc, packet.seq.0, Some(now));
        }
        self.push_current(now, packet);
    }

    /// Returns what to play for this ptime tick (one ptime of audio); call exactly once per
    /// ptime.
    pub fn pop(&mut self, now: Instant) -> Playout {
        if self.carry.is_empty() {
            let playout = self.pop_slot(now);
            match playout {
                Playout::Frame(audio) if audio.len() != self.out_samples => {
                    self.carry_in(&audio, true);
                }
                Playout::Concealed(audio) if audio.len() != self.out_samples => {
                    self.carry_in(&audio, false);
                }
                whole => return whole,
            }
        }
        self.pop_reframed(now)
    }

    fn carry_in(&mut self, audio: &[u8], received: bool) {
        self.carry.extend_from_slice(audio);
        self.carry_received = received;
    }

    /// [`Self::pop`] when packets do not last one ptime: one ptime cut from the carried audio and
    /// the slots played after it in order (as many as it takes), the rest carried to the next
    /// tick. When the stream stops mid-ptime, concealment completes the last one.
    fn pop_reframed(&mut self, now: Instant) -> Playout {
        let mut received = self.carry_received;
        while self.carry.len() < self.out_samples {
            let (audio, real) = match self.pop_slot(now) {
                Playout::Frame(audio) => (audio, true),
                Playout::Concealed(audio) => (audio, false),
                idle @ (Playout::Buffering | Playout::Empty) => {
                    if self.carry.is_empty() {
                        return idle;
                    }
                    let missing = self.out_samples - self.carry.len();
                    (self.concealer.conceal(missing), false)
                }
            };
            self.carry_in(&audio, real);
            received |= real;
        }
        let frame = Bytes::copy_from_slice(&self.carry[..self.out_samples]);
        self.carry.drain(..self.out_samples);
        if self.carry.is_empty() {
            self.carry_received = false;
        }
        if received {
            Playout::Frame(frame)
        } else {
            Playout::Concealed(frame)
        }
    }

    /// One slot's playout: one packet, or concealment for one packet's duration.
    #[inline]
    fn pop_slot(&mut self, now: Instant) -> Playout {
        match self.state {
            State::Idle => Playout::Empty,
            State::Buffering { since } => {
                if self.span() as u128 * self.packet_time.as_nanos() >= self.target.as_nanos()
                    || now >= since + self.target
                {
                    self.state = State::Playing;
                    self.floor = self.cursor;
                    self.low_ticks = 0;
                    self.high_ticks = 0;
                    self.play_tick()
                } else {
                    Playout::Buffering
                }
            }
            State::Playing => self.play_tick(),
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> &JitterStats {
        &self.stats
    }

    /// The delay the buffer currently aims for, between `min_delay` and `max_delay`.
    pub fn target_delay(&self) -> Duration {
        self.target
    }

    /// Audio buffered now: from the next frame to play to the newest received, holes included,
    /// plus any audio cut from a packet and not yet returned.
    pub fn current_delay(&self) -> Duration {
        let carried = self.carry.len() as u64 * 1_000_000_000 / u64::from(self.clock_rate());
        self.packet_time * self.span() as u32 + Duration::from_nanos(carried)
    }

    /// The duration of the packets the slots hold now (the negotiated ptime until the stream
    /// shows another).
    pub fn packet_time(&self) -> Duration {
        self.packet_time
    }

    fn clock_rate(&self) -> u32 {
        self.config.clock_rate.max(1)
    }

    /// The RFC 3550 A.3 figures for an RTCP reception report block, closing the interval:
    /// the next report's fraction lost counts from here. `None` before any packet.
    pub fn take_reception_report(&mut self) -> Option<ReceptionReport> {
        let source = self.source.as_mut()?;
        let expected = source.expected();
        let expected_interval = expected.saturating_sub(source.expected_prior);
        source.expected_prior = expected;
        let received_interval = source.received.saturating_sub(source.received_prior);
        source.received_prior = source.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        self.stats.fraction_lost = fraction_lost;
        let cumulative = expected as i64 - source.received as i64;
        Some(ReceptionReport {
            ssrc: source.ssrc,
            fraction_lost,
            cumulative_lost: cumulative.clamp(-(1 << 23), (1 << 23) - 1) as i32,
            extended_highest_seq: source.extended_max() as u32,
            jitter: source.jitter as u32,
        })
    }

    /// A packet of the SSRC we just switched away from, arriving within `max_delay` of the
    /// switch: a straggler, played in its old place if still in time. `None`: not one.
    fn route_previous(&mut self, now: Instant, packet: &MediaPacket) -> Option<Option<i64>> {
        let (previous, switched_at) = self.previous.as_mut()?;
        if previous.ssrc != packet.ssrc
            || now.saturating_duration_since(*switched_at) > self.config.max_delay
        {
            return None;
        }
        let next_start = self.source.as_ref().map_or(i64::MAX, |s| s.start_index);
        match previous.check(packet.seq.0) {
            SeqCheck::Valid(extended) if extended + previous.offset < next_start => {
                Some(Some(extended + previous.offset))
            }
            _ => {
                self.stats.late += 1;
                Some(None)
            }
        }
    }

    fn push_current(&mut self, now: Instant, packet: MediaPacket) {
        let Some(source) = self.source.as_mut() else {
            return;
        };
        match source.check(packet.seq.0) {
            SeqCheck::Valid(extended) => {
                let index = extended + source.offset;
                self.accept(now, index, packet, true);
            }
            SeqCheck::Jump => {
                // RFC 3550 A.1: hold the packet; it starts the new sequence if the next follows.
                self.stats.stray += 1;
                self.held = Some(packet);
            }
            SeqCheck::Restart => {
                self.stats.restarts += 1;
                let held = self.held.take();
                let first = held.as_ref().map_or(packet.seq.0, |h| h.seq.0);
                self.start_source(packet.ssrc, first, None);
                if let Some(held) = held {
                    self.stats.stray = self.stats.stray.saturating_sub(1);
                    self.push_current(now, held);
                }
                self.push_current(now, packet);
            }
        }
    }

    /// Starts a new source whose first packet takes the index after the highest so far.
    /// `switched_at`: an SSRC change at that time (the old source may still send stragglers);
    /// `None`: a first source or an A.1 restart of the same SSRC.
    fn start_source(&mut self, ssrc: Ssrc, seq: u16, switched_at: Option<Instant>) {
        let first_index = self.highest_index.map_or(0, |h| h + 1);
        // An unconfirmed jump belongs to the old sequence; it stays counted as stray.
        self.held = None;
        let mut source = Source::new(ssrc, seq, first_index);
        if let Some(old) = self.source.take() {
            if switched_at.is_none() {
                // An A.1 restart keeps the source's jitter estimate, only the transit restarts.
                source.jitter = old.jitter;
            }
            self.lost_before += old.lost();
            self.expected_before += old.expected();
            self.previous = switched_at.map(|at| (old, at));
        }
        self.source = Some(source);
        self.stats.ssrc = Some(ssrc);
    }

    fn accept(&mut self, now: Instant, index: i64, packet: MediaPacket, current: bool) {
        let seen = &mut self.seen[index.rem_euclid(SEEN_SLOTS as i64) as usize];
        if *seen == index {
            self.stats.duplicates += 1;
            return;
        }
        *seen = index;
        if current {
            if let Some(source) = self.source.as_mut() {
                source.received += 1;
            }
            self.update_jitter(now, &packet);
            self.update_loss_stats();
            self.follow_packet_size(packet.payload.len());
        } else if let Some((previous, _)) = self.previous.as_mut() {
            previous.received += 1;
        }
        self.insert(now, index, packet.payload);
    }

    /// The slots follow the stream's packet duration: at once for the first packet, else once
    /// [`SIZE_CHANGE_AFTER`] packets in a row agree on a new one (so one short packet at the end
    /// of a talkspurt changes nothing).
    fn follow_packet_size(&mut self, samples: usize) {
        if samples == self.packet_samples || !FOLLOWED_PACKET_SAMPLES.contains(&samples) {
            self.size_streak = (0, 0);
            return;
        }
        let first = self.stats.received == 1;
        let (size, count) = self.size_streak;
        self.size_streak = if size == samples {
            (size, count.saturating_add(1))
        } else {
            (samples, 1)
        };
        if first || self.size_streak.1 >= SIZE_CHANGE_AFTER {
            self.set_packet_samples(samples);
        }
    }

    fn set_packet_samples(&mut self, samples: usize) {
        self.size_streak = (0, 0);
        self.packet_samples = samples;
        let nanos = samples as u64 * 1_000_000_000 / u64::from(self.clock_rate());
        self.packet_time = Duration::from_nanos(nanos);
        self.max_frames =
            (self.config.max_delay.as_nanos() / u128::from(nanos.max(1))).max(1) as i64;
        let ring = (self.max_frames as usize + 2).next_power_of_two();
        if ring > self.slots.len() {
            let mut slots = vec![None; ring];
            for slot in self.slots.drain(..).flatten() {
                let at = slot.index.rem_euclid(ring as i64) as usize;
                slots[at] = Some(slot);
            }
            self.slots = slots;
        }
        self.set_target(self.target.max(self.packet_time));
        self.update_thresholds();
    }

    fn insert(&mut self, now: Instant, index: i64, payload: Bytes) {
        // A packet without audio (found by fuzzing: it was played as an empty frame, and an
        // empty frame reached the agent) counts as received, but its slot stays a gap to
        // conceal.
        if payload.is_empty() {
            return;
        }
        if index < self.floor || (self.buffered > 0 && self.newest - index >= self.max_frames) {
            self.stats.late += 1;
            return;
        }
        if self.highest_index.is_some_and(|h| index < h) {
            self.stats.reordered += 1;
        }
        self.highest_index = Some(self.highest_index.map_or(index, |h| h.max(index)));
        match self.state {
            State::Idle => {
                self.state = State::Buffering { since: now };
                self.cursor = index;
            }
            State::Buffering { .. } if index < self.cursor || self.buffered == 0 => {
                self.cursor = index;
            }
            _ => {}
        }
        let lowest_allowed = index - self.max_frames + 1;
        let advanced = self.cursor < lowest_allowed;
        if advanced {
            self.drop_before(lowest_allowed);
        }
        let ring = self.slots.len() as i64;
        self.slots[index.rem_euclid(ring) as usize] = Some(Slot { index, payload });
        self.buffered += 1;
        self.newest = if self.buffered == 1 {
            index
        } else {
            self.newest.max(index)
        };
        if advanced {
            // The span hit max_delay (a jump or an outage): the holes before the next packet
            // are not worth concealing. Ends at the latest at `index`, just stored.
            while self.slot(self.cursor).is_none() && self.cursor < index {
                self.cursor += 1;
            }
            if self.state == State::Playing {
                self.floor = self.cursor;
            }
        }
    }

    /// Keeps the buffered span within `max_delay`: frames before `bound` go, oldest first.
    fn drop_before(&mut self, bound: i64) {
        let ring = self.slots.len() as i64;
        let from = self.cursor.max(bound - ring);
        for index in from..bound {
            let slot = &mut self.slots[index.rem_euclid(ring) as usize];
            if slot.take_if(|s| s.index == index).is_some() {
                self.buffered -= 1;
                self.stats.discarded_frames += 1;
            }
        }
        self.cursor = bound;
        if self.state == State::Playing {
            self.floor = bound;
            self.underrun_credit = 0;
            self.concealer.discontinuity();
        }
    }

    fn slot(&self, index: i64) -> Option<&Slot> {
        let ring = self.slots.len() as i64;
        self.slots[index.rem_euclid(ring) as usize]
            .as_ref()
            .filter(|s| s.index == index)
    }

    fn take_slot(&mut self, index: i64) -> Option<Slot> {
        let ring = self.slots.len() as i64;
        let slot = self.slots[index.rem_euclid(ring) as usize].take_if(|s| s.index == index);
        if slot.is_some() {
            self.buffered -= 1;
        }
        slot
    }

    fn span(&self) -> i64 {
        if self.buffered == 0 {
            0
        } else {
            self.newest - self.cursor + 1
        }
    }

    /// The target delay, within `min_delay`..=`max_delay`, and the thresholds `play_tick`
    /// compares the audio ahead with.
    fn set_target(&mut self, wanted: Duration) {
        let target = wanted.max(self.config.min_delay).min(self.config.max_delay);
        if target != self.target {
            self.target = target;
            self.update_thresholds();
        }
    }

    /// `low_below` and `high_from` for the current target and packet size.
    fn update_thresholds(&mut self) {
        // Within max_delay: far from overflowing 64 bits.
        let nanos = u64::try_from(self.target.as_nanos()).unwrap_or(u64::MAX / 8_000);
        self.low_below = (nanos * u64::from(self.clock_rate())).div_ceil(1_000_000_000) as i64;
        let packet = u64::try_from(self.packet_time.as_nanos()).unwrap_or(u64::MAX);
        let packets = nanos.div_ceil(packet.max(1)) as i64;
        self.high_from = (packets + 2) * self.packet_samples as i64;
    }

    fn advance(&mut self) {
        self.cursor += 1;
        self.floor = self.cursor;
    }

    fn play_tick(&mut self) -> Playout {
        if self.buffered == 0 {
            if self.concealer.is_faded() {
                // The far end paused (DTX) or went away: the next packet re-anchors playout.
                self.state = State::Idle;
                self.underrun_credit = 0;
                return Playout::Empty;
            }
            self.underrun_credit += 1;
            self.stats.inserted_frames += 1;
            return self.conceal();
        }
        // Concealment already played while empty stands in for the frames now known missing.
        while self.underrun_credit > 0 && self.slot(self.cursor).is_none() {
            self.underrun_credit -= 1;
            self.stats.inserted_frames = self.stats.inserted_frames.saturating_sub(1);
            self.advance();
        }
        // Audio ahead of the listener, in samples: the slots from the cursor on, and what is
        // carried from a packet cut across ticks (played first).
        let packet = self.packet_samples as i64;
        let ahead = self.span() * packet + self.carry.len() as i64;
        self.low_ticks = if ahead < self.low_below {
            self.low_ticks + 1
        } else {
            0
        };
        self.high_ticks = if ahead >= self.high_from {
            self.high_ticks + 1
        } else {
            0
        };
        if self.may_shrink() {
            self.high_ticks = 0;
            if self.take_slot(self.cursor).is_some() {
                self.stats.discarded_frames += 1;
                self.concealer.discontinuity();
            }
            self.advance();
            if self.buffered == 0 {
                return self.conceal();
            }
        } else if self.low_ticks >= GROW_AFTER_TICKS {
            self.low_ticks = 0;
            self.stats.inserted_frames += 1;
            return self.conceal();
        }
        let index = self.cursor;
        self.advance();
        match self.take_slot(index) {
            Some(slot) => {
                self.underrun_credit = 0;
                self.last_played = Some(index);
                Playout::Frame(self.concealer.play(slot.payload))
            }
            None => self.conceal(),
        }
    }

    fn may_shrink(&self) -> bool {
        if self.high_ticks >= SHRINK_AFTER_TICKS {
            return true;
        }
        if self.high_ticks < QUIET_SHRINK_AFTER_TICKS {
            return false;
        }
        match self.slot(self.cursor) {
            // A missing frame costs nothing to skip.
            None => true,
            Some(slot) => {
                let codec = Codec::new(self.config.codec);
                let peak = slot
                    .payload
                    .iter()
                    .map(|&c| codec.decode_sample(c).unsigned_abs())
                    .max()
                    .unwrap_or(0);
                peak < QUIET_PEAK
            }
        }
    }

    fn conceal(&mut self) -> Playout {
        self.stats.concealed_frames += 1;
        Playout::Concealed(self.concealer.conceal(self.packet_samples))
    }

    /// RFC 3550 A.8 interarrival jitter, plus the peak that drives the target delay.
    fn update_jitter(&mut self, now: Instant, packet: &MediaPacket) {
        let Some(source) = self.source.as_mut() else {
            return;
        };
        let reference = self.reference.unwrap_or(now);
        let elapsed = now.saturating_duration_since(reference).as_nanos();
        let rate = u128::from(self.config.clock_rate);
        // Arrival in timestamp units; both clocks wrap modulo 2^32 (A.8 uses unsigned math).
        let arrival = (elapsed * rate / 1_000_000_000) as u64 as u32;
        let transit = arrival.wrapping_sub(packet.timestamp.0);
        let Some(previous) = source.transit.replace(transit) else {
            return;
        };
        let d = i64::from(transit.wrapping_sub(previous) as i32).abs();
        if d > TIMESTAMP_JUMP_SECS * i64::from(self.config.clock_rate) {
            // The sender's timestamps jumped (seen on Asterisk re-INVITE and transfer):
            // a new transit reference, not a jitter sample.
            return;
        }
        source.jitter += (d as f64 - source.jitter) / 16.0;
        self.peak_jitter = (self.peak_jitter * PEAK_DECAY).max(d as f64);
        let rate = f64::from(self.config.clock_rate.max(1));
        self.stats.interarrival_jitter = source.jitter as u32;
        self.stats.interarrival_jitter_duration = Duration::from_secs_f64(source.jitter / rate);
        let wanted = self.packet_time
            + Duration::from_secs_f64(self.peak_jitter.max(3.0 * source.jitter) / rate);
        self.set_target(wanted);
    }

    fn update_loss_stats(&mut self) {
        if let Some(source) = &self.source {
            self.stats.lost = self.lost_before + source.lost();
            self.stats.expected = self.expected_before + source.expected();
            self.stats.extended_highest_seq = source.extended_max() as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::media::g711::{ToneGenerator, FRAME_SAMPLES};
    use crate::media::{RtpTimestamp, SeqNo};
    use crate::testkit::{ms, t0};

    const SSRC: Ssrc = Ssrc(0x1234_5678);

    fn config() -> JitterConfig {
        JitterConfig::default()
    }

    /// A sender: consecutive packets of a 440 Hz tone, 20 ms apart in timestamp.
    struct Sender {
        ssrc: Ssrc,
        seq: u16,
        timestamp: u32,
        tone: ToneGenerator,
        marker: bool,
    }

    impl Sender {
        fn new(ssrc: Ssrc, seq: u16, timestamp: u32) -> Self {
            Self {
                ssrc,
                seq,
                timestamp,
                tone: ToneGenerator::new(Codec::new(G711::Pcmu), 440.0, 8_000),
                marker: true,
            }
        }

        fn next(&mut self) -> MediaPacket {
            let packet = MediaPacket {
                ssrc: self.ssrc,
                seq: SeqNo(self.seq),
                timestamp: RtpTimestamp(self.timestamp),
                marker: std::mem::take(&mut self.marker),
                payload_type: 0,
                payload: self.tone.next_frame(),
            };
            self.seq = self.seq.wrapping_add(1);
            self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
            packet
        }
    }

    #[test]
    fn a_packet_without_payload_is_concealed_not_played_empty() {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = Sender::new(SSRC, 1, 160);
        let mut now = t0();
        let mut played = Vec::new();
        for i in 0..40 {
            let mut packet = sender.next();
            if i % 5 == 3 {
                packet.payload = Bytes::new();
            }
            jitter.push(now, packet);
            played.push(jitter.pop(now));
            now += ms(20);
        }
        for playout in &played {
            if let Playout::Frame(frame) | Playout::Concealed(frame) = playout {
                assert_eq!(frame.len(), 160, "{played:?}");
            }
        }
        assert!(played.iter().any(|p| matches!(p, Playout::Concealed(_))));
        assert_eq!(jitter.stats().received, 40, "still counted as received");
    }

    /// Script runner: `P` next packet arrives · `D` last packet again · `L` next packet lost ·
    /// `H` next packet held back · `A` held packets arrive · `G` one ptime tick (pop).
    /// Output letters: `F` frame, `C` concealed, `B` buffering, `E` empty.
    struct Scenario {
        jitter: JitterBuffer,
        sender: Sender,
        now: Instant,
        last: Option<MediaPacket>,
        held: Vec<MediaPacket>,
        played: String,
        outputs: Vec<Playout>,
        frames: Vec<i64>,
    }

    impl Scenario {
        fn new(config: JitterConfig) -> Self {
            Self {
                jitter: JitterBuffer::new(config),
                sender: Sender::new(SSRC, 1_000, 50_000),
                now: t0(),
                last: None,
                held: Vec::new(),
                played: String::new(),
                outputs: Vec::new(),
                frames: Vec::new(),
            }
        }

        fn run(mut self, script: &str) -> Self {
            for step in script.chars() {
                match step {
                    'P' => {
                        let packet = self.sender.next();
                        self.last = Some(packet.clone());
                        self.jitter.push(self.now, packet);
                    }
                    'D' => {
                        let packet = self.last.clone().expect("script: D after a packet");
                        self.jitter.push(self.now, packet);
                    }
                    'L' => drop(self.sender.next()),
                    'H' => self.held.push(self.sender.next()),
                    'A' => {
                        for packet in std::mem::take(&mut self.held) {
                            self.last = Some(packet.clone());
                            self.jitter.push(self.now, packet);
                        }
                    }
                    'G' => {
                        let playout = self.jitter.pop(self.now);
                        let letter = match &playout {
                            Playout::Frame(_) => {
                                self.frames.extend(self.jitter.last_played);
                                'F'
                            }
                            Playout::Concealed(_) => 'C',
                            Playout::Buffering => 'B',
                            Playout::Empty => 'E',
                        };
                        self.played.push(letter);
                        self.outputs.push(playout);
                        self.now += ms(20);
                    }
                    ' ' => {}
                    other => panic!("script: unknown step {other}"),
                }
            }
            self
        }

        fn missing_and_duplicates(&self) -> (u64, u64) {
            (self.jitter.stats().lost, self.jitter.stats().duplicates)
        }
    }

    fn scenario(script: &str) -> Scenario {
        Scenario::new(config()).run(script)
    }

    fn decode(playout: &Playout) -> Vec<i16> {
        match playout {
            Playout::Frame(p) | Playout::Concealed(p) => Codec::new(G711::Pcmu).decode(p),
            Playout::Buffering | Playout::Empty => vec![0; FRAME_SAMPLES],
        }
    }

    fn peak(pcm: &[i16]) -> u16 {
        pcm.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0)
    }

    fn max_step(pcm: &[i16]) -> i32 {
        pcm.windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max()
            .unwrap_or(0)
    }

    /// One packet per tick arriving `delay_ms(i)` after its nominal time; returns the outputs.
    fn stream(
        jitter: &mut JitterBuffer,
        sender: &mut Sender,
        packets: usize,
        mut lost: impl FnMut(usize) -> bool,
    ) -> Vec<Playout> {
        let mut out = Vec::new();
        let start = t0();
        for i in 0..packets {
            let now = start + ms(20) * i as u32;
            let packet = sender.next();
            if !lost(i) {
                jitter.push(now, packet);
            }
            out.push(jitter.pop(now));
        }
        out
    }

    #[test]
    fn style_guide_scenario_counts_one_missing_one_duplicate() {
        let run = scenario("PPG PDG LPG GG");
        assert_eq!(run.missing_and_duplicates(), (1, 1));
        assert_eq!(run.played, "FFFCF");
    }

    #[test]
    fn empty_until_first_packet_then_buffers_to_target() {
        let run = scenario("G G P G P G G");
        assert_eq!(run.played, "EEBFF");
    }

    #[test]
    fn reorders_out_of_order_packets() {
        let run = scenario("P HPA HPPA G G G G G");
        assert_eq!(&run.played[..5], "FFFFF");
        assert_eq!(run.frames, [0, 1, 2, 3, 4]);
        assert_eq!(run.jitter.stats().reordered, 2);
        assert_eq!(run.missing_and_duplicates(), (0, 0));
    }

    #[test]
    fn drops_duplicates_counted_once() {
        let run = scenario("PD PDD G G G");
        assert_eq!(run.played, "FFC");
        assert_eq!(run.frames, [0, 1]);
        assert_eq!(run.jitter.stats().duplicates, 3);
        assert_eq!(run.jitter.stats().received, 5);
        assert_eq!(run.jitter.stats().lost, 0);
    }

    #[test]
    fn drops_packets_arriving_after_their_slot() {
        let run = scenario("P HPP G G G A G");
        assert_eq!(run.played, "FCFF");
        assert_eq!(run.frames, [0, 2, 3]);
        assert_eq!(run.jitter.stats().late, 1);
        assert_eq!(
            run.jitter.stats().lost,
            0,
            "a late packet was received (RFC 3550 A.3)"
        );
    }

    #[test]
    fn single_loss_is_concealed_and_counted() {
        let run = scenario("PPG PG LPG PG G");
        assert_eq!(run.played, "FFFCF");
        assert_eq!(run.jitter.stats().concealed_frames, 1);
        assert_eq!(run.jitter.stats().inserted_frames, 0);
        assert_eq!(run.missing_and_duplicates(), (1, 0));
    }

    #[test]
    fn late_tail_packet_is_absorbed_by_underrun_concealment() {
        // The buffer ran dry for one tick, then two packets arrive: the gap is not replayed.
        let run = scenario("PPG PG G G LPG");
        assert_eq!(run.played, "FFFCF");
        assert_eq!(run.frames, [0, 1, 2, 4]);
        assert_eq!(run.jitter.stats().inserted_frames, 0);
        assert_eq!(run.missing_and_duplicates(), (1, 0));
    }

    #[test]
    fn computes_interarrival_jitter_per_rfc3550_a8() {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = Sender::new(SSRC, 0, 0);
        // Transit 0, 0, 40, 0, 0 → |D| = 0, 40, 40, 0 → J = 0, 2.5, 4.84375, 4.541015625.
        for arrival_ms in [0, 20, 45, 60, 80] {
            jitter.push(t0() + ms(arrival_ms), sender.next());
        }
        let stats = jitter.stats();
        assert_eq!(stats.interarrival_jitter, 4);
        let expected = 4.541_015_625 / 8_000.0;
        let got = stats.interarrival_jitter_duration.as_secs_f64();
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
        assert_eq!(jitter.take_reception_report().map(|r| r.jitter), Some(4));
    }

    #[test]
    fn target_grows_at_once_on_a_spike_and_shrinks_slowly() {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = Sender::new(SSRC, 0, 0);
        let mut now = t0();
        for _ in 0..100 {
            jitter.push(now, sender.next());
            jitter.pop(now);
            now += ms(20);
        }
        assert_eq!(
            jitter.target_delay(),
            ms(40),
            "calm stream sits at min_delay"
        );
        // One packet 100 ms late.
        let delayed = sender.next();
        for step in 0..5 {
            if step == 0 {
                now += ms(0);
            }
            jitter.pop(now);
            now += ms(20);
        }
        jitter.push(now, delayed);
        assert!(
            jitter.target_delay() >= ms(120),
            "{:?}",
            jitter.target_delay()
        );
        let spike_target = jitter.target_delay();
        let mut sender_now = now;
        for _ in 0..50 {
            sender_now += ms(20);
            jitter.push(sender_now, sender.next());
            jitter.pop(sender_now);
        }
        let after_1s = jitter.target_delay();
        assert!(
            after_1s < spike_target && after_1s > ms(100),
            "{after_1s:?}"
        );
        for _ in 0..3_000 {
            sender_now += ms(20);
            jitter.push(sender_now, sender.next());
            jitter.pop(sender_now);
        }
        assert_eq!(
            jitter.target_delay(),
            ms(40),
            "back to min after a calm minute"
        );
        assert!(
            jitter.current_delay() <= ms(80),
            "{:?}",
            jitter.current_delay()
        );
    }

    #[test]
    fn target_never_leaves_min_max() {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = Sender::new(SSRC, 0, 0);
        jitter.push(t0(), sender.next());
        jitter.push(t0() + ms(2_000), sender.next());
        assert_eq!(jitter.target_delay(), ms(200));
        let mut early = JitterBuffer::new(config());
        early.push(t0(), sender.next());
        assert_eq!(early.target_delay(), ms(40));
    }

    #[test]
    fn never_buffers_more_than_max_delay() {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = Sender::new(SSRC, 0, 0);
        for _ in 0..50 {
            jitter.push(t0(), sender.next());
            assert!(jitter.current_delay() <= ms(200));
        }
        assert_eq!(jitter.stats().discarded_frames, 40);
    }

    #[test]
    fn conceals_single_and_burst_loss_without_clicks() {
        // A buffer deep enough that the frames after the burst are already waiting.
        let mut jitter = JitterBuffer::new(JitterConfig {
            min_delay: ms(160),
            ..config()
        });
        let mut sender = Sender::new(SSRC, 0, 0);
        let lost = |i: usize| i == 30 || (60..66).contains(&i);
        let out = stream(&mut jitter, &mut sender, 100, lost);
        let pcm: Vec<i16> = out.iter().flat_map(decode).collect();
        // A 440 Hz tone at 8000 steps at most 2π·440/8000·8000 ≈ 2765 per sample.
        let first_audio = out.iter().position(|p| matches!(p, Playout::Frame(_)));
        let from = first_audio.unwrap_or(0) * FRAME_SAMPLES + FRAME_SAMPLES;
        assert!(
            max_step(&pcm[from..]) <= 3_300,
            "step {}",
            max_step(&pcm[from..])
        );
        assert_eq!(jitter.stats().lost, 7);
        assert_eq!(jitter.stats().concealed_frames, 7);
        let concealed: Vec<u16> = out
            .iter()
            .filter(|p| matches!(p, Playout::Concealed(_)))
            .map(|p| peak(&decode(p)))
            .collect();
        assert!(
            concealed[0] > 6_000,
            "single loss keeps the voice: {concealed:?}"
        );
        let burst = &concealed[1..];
        assert!(burst.windows(2).all(|w| w[1] <= w[0]), "fades: {burst:?}");
        assert!(
            burst[3..].iter().all(|&p| p == 0),
            "silent after 60 ms: {burst:?}"
        );
    }

    #[test]
    fn concealment_energy_never_exceeds_last_good_frame() {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = Sender::new(SSRC, 0, 0);
        let out = stream(&mut jitter, &mut sender, 40, |i| (20..24).contains(&i));
        let energy = |p: &Playout| decode(p).iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
        let last_good = out
            .iter()
            .take_while(|p| !matches!(p, Playout::Concealed(_)))
            .last()
            .map(energy)
            .unwrap_or(0.0);
        for p in out.iter().filter(|p| matches!(p, Playout::Concealed(_))) {
            assert!(energy(p) <= last_good * 1.01);
        }
    }

    #[test]
    fn survives_sequence_wrap() {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = Sender::new(SSRC, 65_530, 1_000);
        let out = stream(&mut jitter, &mut sender, 20, |_| false);
        assert!(out[2..19].iter().all(|p| matches!(p, Playout::Frame(_))));
        assert_eq!(jitter.stats().lost, 0);
        assert_eq!(jitter.stats().extended_highest_seq, 65_536 + 13);
        assert_eq!(jitter.stats().expected, 20);
    }

    #[test]
    fn survives_timestamp_wrap() {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = Sender::new(SSRC, 7, u32::MAX - 5 * 160 + 17);
        let out = stream(&mut jitter, &mut sender, 20, |_| false);
        assert!(out[2..19].iter().all(|p| matches!(p, Playout::Frame(_))));
        assert_eq!(jitter.stats().interarrival_jitter, 0);
        assert_eq!(jitter.target_delay(), ms(40));
    }

    #[test]
    fn resyncs_at_once_on_ssrc_change() {
        let mut jitter = JitterBuffer::new(config());
        let mut now = t0();
        let mut outputs = Vec::new();
        let legs = [
            Sender::new(Ssrc(1), 100, 5_000),
            Sender::new(Ssrc(2), 40_000, 3_000_000_000),
            Sender::new(Ssrc(3), 9, 77),
        ];
        for mut leg in legs {
            for _ in 0..50 {
                jitter.push(now, leg.next());
                outputs.push(jitter.pop(now));
                now += ms(20);
            }
        }
        let concealed = outputs
            .iter()
            .filter(|p| matches!(p, Playout::Concealed(_)))
            .count();
        assert_eq!(concealed, 0);
        assert_eq!(jitter.stats().ssrc_changes, 2);
        assert_eq!(jitter.stats().lost, 0);
        assert_eq!(jitter.stats().expected, 150);
        assert_eq!(jitter.stats().ssrc, Some(Ssrc(3)));
        assert_eq!(jitter.target_delay(), ms(40));
    }

    #[test]
    fn plays_straggler_of_previous_ssrc_in_its_place() {
        let mut jitter = JitterBuffer::new(config());
        let mut a = Sender::new(Ssrc(1), 10, 0);
        let mut b = Sender::new(Ssrc(2), 500, 0);
        let now = t0();
        jitter.push(now, a.next());
        let straggler = a.next();
        jitter.push(now, b.next());
        jitter.push(now, straggler);
        jitter.push(now, b.next());
        let mut frames = Vec::new();
        for _ in 0..4 {
            if let Playout::Frame(_) = jitter.pop(now) {
                frames.extend(jitter.last_played);
            }
        }
        assert_eq!(frames, [0, 1, 2]);
        assert_eq!(
            jitter.stats().late,
            1,
            "A's slot was taken by B's first packet"
        );
    }

    #[test]
    fn restarts_after_large_sequence_jump_of_same_ssrc() {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = Sender::new(SSRC, 100, 0);
        let out = stream(&mut jitter, &mut sender, 120, |_| false);
        let _ = out;
        sender.seq = sender.seq.wrapping_add(20_000);
        sender.timestamp = sender.timestamp.wrapping_add(123_456_789);
        let mut now = t0() + ms(20) * 120;
        let mut outputs = Vec::new();
        for _ in 0..50 {
            jitter.push(now, sender.next());
            outputs.push(jitter.pop(now));
            now += ms(20);
        }
        let concealed = outputs
            .iter()
            .filter(|p| matches!(p, Playout::Concealed(_)))
            .count();
        assert!(concealed <= 1, "{concealed} concealed frames");
        assert_eq!(jitter.stats().restarts, 1);
        assert_eq!(jitter.stats().stray, 0);
        assert_eq!(jitter.stats().lost, 0);
        assert_eq!(
            jitter.target_delay(),
            ms(40),
            "the timestamp jump is not jitter"
        );
    }

    #[test]
    fn discards_a_single_stray_jump() {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = Sender::new(SSRC, 100, 0);
        let mut now = t0();
        for i in 0..40 {
            let mut packet = sender.next();
            if i == 20 {
                packet.seq = SeqNo(packet.seq.0.wrapping_add(30_000));
            }
            jitter.push(now, packet);
            jitter.pop(now);
            now += ms(20);
        }
        assert_eq!(jitter.stats().stray, 1);
        assert_eq!(jitter.stats().restarts, 0);
        assert_eq!(jitter.stats().lost, 1);
    }

    #[test]
    fn moderate_jump_counts_loss_and_resumes_quickly() {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = Sender::new(SSRC, 100, 0);
        stream(&mut jitter, &mut sender, 50, |_| false);
        sender.seq = sender.seq.wrapping_add(500);
        sender.timestamp = sender.timestamp.wrapping_add(500 * 160);
        let mut now = t0() + ms(20) * 50;
        let mut outputs = Vec::new();
        for _ in 0..20 {
            jitter.push(now, sender.next());
            outputs.push(jitter.pop(now));
            now += ms(20);
        }
        let first_frame = outputs.iter().position(|p| matches!(p, Playout::Frame(_)));
        assert!(first_frame.is_some_and(|i| i <= 3), "{first_frame:?}");
        assert_eq!(jitter.stats().lost, 500);
    }

    /// Runs `seconds` of a sender whose clock runs `ppm_fast` parts per million fast (negative:
    /// slow) against our 20 ms tick; returns (min, max) delay seen after the first second.
    fn drift(seconds: u64, ppm_fast: i64) -> (JitterBuffer, Duration, Duration) {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = Sender::new(SSRC, 0, 0);
        let interval_ns = 20_000_000 * 1_000_000 / (1_000_000 + ppm_fast);
        let ticks = seconds * 50;
        let (mut lowest, mut highest) = (Duration::MAX, Duration::ZERO);
        let mut next_packet_ns: i64 = 0;
        for tick in 0..ticks as i64 {
            let tick_ns = tick * 20_000_000 + 10_000_000;
            while next_packet_ns <= tick_ns {
                jitter.push(
                    t0() + Duration::from_nanos(next_packet_ns as u64),
                    sender.next(),
                );
                next_packet_ns += interval_ns;
                if tick > 50 {
                    highest = highest.max(jitter.current_delay());
                }
            }
            if tick > 50 {
                lowest = lowest.min(jitter.current_delay());
            }
            let _ = jitter.pop(t0() + Duration::from_nanos(tick_ns as u64));
        }
        (jitter, lowest, highest)
    }

    #[test]
    fn fast_far_clock_drops_about_one_percent() {
        let (jitter, lowest, highest) = drift(600, 10_000);
        let stats = jitter.stats();
        assert!(
            lowest >= ms(40) && highest <= ms(200),
            "{lowest:?}..{highest:?}"
        );
        assert!((250..=350).contains(&stats.discarded_frames), "{stats:?}");
        assert_eq!(stats.concealed_frames, 0, "{stats:?}");
    }

    #[test]
    fn slow_far_clock_inserts_about_one_percent() {
        let (jitter, lowest, highest) = drift(600, -10_000);
        let stats = jitter.stats();
        // The level sits one frame under target for the 200 ms streak before each insertion.
        assert!(
            lowest >= ms(40) - ms(20) && highest <= ms(200),
            "{lowest:?}..{highest:?}"
        );
        assert!((250..=350).contains(&stats.inserted_frames), "{stats:?}");
        assert_eq!(stats.discarded_frames, 0, "{stats:?}");
        assert_eq!(stats.concealed_frames, stats.inserted_frames);
    }

    #[test]
    fn reanchors_at_talkspurt_start_after_pause() {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = Sender::new(SSRC, 0, 0);
        let mut outputs = String::new();
        let mut now = t0();
        for tick in 0..150 {
            // Talk 1 s, DTX pause 1 s (sequence continues, timestamp jumps), talk again.
            if !(50..100).contains(&tick) {
                if tick == 100 {
                    sender.timestamp = sender.timestamp.wrapping_add(50 * 160);
                    sender.marker = true;
                }
                jitter.push(now, sender.next());
            }
            outputs.push(match jitter.pop(now) {
                Playout::Frame(_) => 'F',
                Playout::Concealed(_) => 'C',
                Playout::Buffering => 'B',
                Playout::Empty => 'E',
            });
            now += ms(20);
        }
        assert_eq!(&outputs[50..55], "FCCCE", "last frame, fade out, then idle");
        assert!(outputs[55..100].chars().all(|c| c == 'E'));
        assert_eq!(
            &outputs[100..103],
            "BFF",
            "re-anchored at target, no loss counted"
        );
        assert_eq!(jitter.stats().lost, 0);
        assert_eq!(jitter.stats().interarrival_jitter, 0);
    }

    #[test]
    fn fraction_lost_per_report_interval() {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = Sender::new(SSRC, 0, 0);
        stream(&mut jitter, &mut sender, 100, |i| i % 10 == 5);
        let report = jitter.take_reception_report().expect("a source");
        assert_eq!(report.fraction_lost, 25, "10 of 100 → 25/256");
        assert_eq!(report.cumulative_lost, 10);
        assert_eq!(report.extended_highest_seq, 99);
        assert_eq!(jitter.stats().fraction_lost, 25);
        stream(&mut jitter, &mut sender, 50, |_| false);
        let report = jitter.take_reception_report().expect("a source");
        assert_eq!(report.fraction_lost, 0);
        assert_eq!(report.cumulative_lost, 10);
    }

    #[test]
    fn scenario_burst_loss_then_recovery() {
        let run = scenario("PPG PG LG LG LG PG PG PG");
        assert_eq!(
            run.played,
            "FFFCCCFF"
                .get(..8)
                .map(|_| run.played.as_str())
                .unwrap_or("")
        );
        assert_eq!(run.jitter.stats().lost, 3);
    }

    #[test]
    fn scenario_duplicate_of_played_frame_is_duplicate_not_late() {
        let run = scenario("PPG D G PG");
        assert_eq!(run.jitter.stats().duplicates, 1);
        assert_eq!(run.jitter.stats().late, 0);
    }

    #[test]
    fn scenario_pcma_burst_fades_to_alaw_silence() {
        let config = JitterConfig {
            codec: G711::Pcma,
            min_delay: ms(160),
            ..config()
        };
        let run = Scenario::new(config).run("PP LLLLL PP G G G G G G G G G");
        assert_eq!(run.played, "FFCCCCCFF");
        let silent =
            |p: &Playout| matches!(p, Playout::Concealed(b) if b.iter().all(|&c| c == 0xD5));
        assert!(!silent(&run.outputs[2]) && !silent(&run.outputs[4]));
        assert!(
            silent(&run.outputs[5]) && silent(&run.outputs[6]),
            "silence after 60 ms"
        );
        assert_eq!(run.missing_and_duplicates(), (5, 0));
    }

    /// A sender of `samples`-sample packets cut from one continuous, never-silent byte stream
    /// (byte `k` of the call is [`stream_byte`]`(k)`), so reframed audio can be compared exactly.
    struct SizedSender {
        ssrc: Ssrc,
        seq: u16,
        timestamp: u32,
        offset: usize,
        samples: usize,
    }

    fn stream_byte(k: usize) -> u8 {
        0x10 + ((k * 7 + k / 160) % 0x60) as u8
    }

    impl SizedSender {
        fn new(ssrc: Ssrc, samples: usize) -> Self {
            Self {
                ssrc,
                seq: 7,
                timestamp: 90_000,
                offset: 0,
                samples,
            }
        }

        fn next(&mut self) -> MediaPacket {
            let payload: Vec<u8> = (self.offset..self.offset + self.samples)
                .map(stream_byte)
                .collect();
            let packet = MediaPacket {
                ssrc: self.ssrc,
                seq: SeqNo(self.seq),
                timestamp: RtpTimestamp(self.timestamp),
                marker: self.offset == 0,
                payload_type: 0,
                payload: Bytes::from(payload),
            };
            self.seq = self.seq.wrapping_add(1);
            self.timestamp = self.timestamp.wrapping_add(self.samples as u32);
            self.offset += self.samples;
            packet
        }
    }

    /// `packets` packets of `packet_ms` sent at their nominal times plus `delay_ms(i)` (none
    /// lost where `lost(i)`), popped every `ptime_ms` for as long as the stream lasts and 200 ms
    /// more; the outputs in order.
    fn sized_stream(
        cfg: JitterConfig,
        packet_ms: u64,
        packets: usize,
        delay_ms: impl Fn(usize) -> u64,
        lost: impl Fn(usize) -> bool,
    ) -> (JitterBuffer, Vec<Playout>) {
        let ptime_ms = cfg.ptime.as_millis() as u64;
        let mut jitter = JitterBuffer::new(cfg);
        let mut sender = SizedSender::new(SSRC, (packet_ms * 8) as usize);
        let mut arrivals: Vec<(u64, MediaPacket)> = (0..packets)
            .map(|i| (i as u64 * packet_ms + delay_ms(i), sender.next()))
            .enumerate()
            .filter(|(i, _)| !lost(*i))
            .map(|(_, arrival)| arrival)
            .collect();
        arrivals.sort_by_key(|(at, _)| *at);
        let mut arrivals = arrivals.into_iter().peekable();
        let end = packets as u64 * packet_ms + 200;
        let mut out = Vec::new();
        for tick in 0..end.div_ceil(ptime_ms) {
            let at = tick * ptime_ms;
            while let Some((arrived, packet)) = arrivals.next_if(|(t, _)| *t <= at) {
                jitter.push(t0() + Duration::from_millis(arrived), packet);
            }
            out.push(jitter.pop(t0() + Duration::from_millis(at)));
        }
        (jitter, out)
    }

    /// Equal audio, or where it first differs (not two whole streams in the failure message).
    fn assert_same(played: &[u8], sent: &[u8], what: &str) {
        if let Some(at) = played.iter().zip(sent).position(|(a, b)| a != b) {
            panic!(
                "{what}: differs at byte {at} (packet of 240: {}, frame of 160: {}): {:?} vs {:?}",
                at / 240,
                at / 160,
                &played[at..(at + 8).min(played.len())],
                &sent[at..(at + 8).min(sent.len())]
            );
        }
        assert_eq!(played.len(), sent.len(), "{what}: length");
    }

    /// The audio of the outputs from the first played one on (silence while buffering left out).
    fn audio_from_first_frame(out: &[Playout], out_samples: usize) -> Vec<u8> {
        let mut audio = Vec::new();
        for playout in out.iter().skip_while(|p| !matches!(p, Playout::Frame(_))) {
            match playout {
                Playout::Frame(a) | Playout::Concealed(a) => {
                    assert_eq!(a.len(), out_samples, "every pop returns one ptime");
                    audio.extend_from_slice(a);
                }
                Playout::Buffering | Playout::Empty => audio.extend(vec![0xff; out_samples]),
            }
        }
        audio
    }

    #[test]
    fn packets_of_another_duration_than_ptime_are_played_exactly_one_ptime_per_tick() {
        for (ptime_ms, packet_ms) in [(20, 10), (20, 30), (20, 40), (20, 60), (30, 20), (20, 5)] {
            let what = format!("ptime {ptime_ms} ms, packets of {packet_ms} ms");
            let packets = (3_000 / packet_ms) as usize;
            let (jitter, out) =
                sized_stream(with_ptime(ptime_ms), packet_ms, packets, |_| 0, |_| false);
            let out_samples = (ptime_ms * 8) as usize;
            let audio = audio_from_first_frame(&out, out_samples);
            let sent: Vec<u8> = (0..packets * (packet_ms * 8) as usize)
                .map(stream_byte)
                .collect();
            assert!(audio.len() >= sent.len(), "{what}: everything played");
            assert_same(&audio[..sent.len()], &sent, &what);
            let stats = jitter.stats();
            assert_eq!(
                (stats.concealed_frames, stats.discarded_frames, stats.late),
                // After the stream ends: the fade-out, one packet's duration at a time.
                (stats.concealed_frames.min(60 / packet_ms + 1), 0, 0),
                "{what}: nothing dropped, concealed only after the end"
            );
            assert_eq!(
                jitter.packet_time(),
                Duration::from_millis(packet_ms),
                "{what}"
            );
        }
    }

    #[test]
    fn jittered_30_ms_packets_reach_a_20_ms_tick_complete() {
        // A delay of at least ptime plus the jitter from the start: the buffer has no reason to
        // grow, so every byte must come out exactly once, in order.
        let cfg = JitterConfig {
            min_delay: ms(80),
            ..config()
        };
        let delays = [0, 12, 3, 25, 8, 0, 17, 30, 5, 11];
        let (jitter, out) = sized_stream(cfg, 30, 200, |i| delays[i % delays.len()], |_| false);
        let audio = audio_from_first_frame(&out, 160);
        let sent: Vec<u8> = (0..200 * 240).map(stream_byte).collect();
        let start = audio
            .windows(240)
            .position(|w| w == &sent[..240])
            .expect("the first packet was played");
        assert_same(
            &audio[start..start + sent.len()],
            &sent,
            "nothing lost, nothing added",
        );
        assert_eq!(jitter.stats().late, 0);
        assert_eq!(jitter.stats().discarded_frames, 0);
    }

    #[test]
    fn a_lost_30_ms_packet_is_concealed_for_30_ms_and_the_audio_after_it_keeps_its_place() {
        let (jitter, out) = sized_stream(config(), 30, 100, |_| 0, |i| i == 40);
        let audio = audio_from_first_frame(&out, 160);
        let sent: Vec<u8> = (0..100 * 240).map(stream_byte).collect();
        assert_same(&audio[..40 * 240], &sent[..40 * 240], "before the loss");
        assert_ne!(
            audio[40 * 240..41 * 240],
            sent[40 * 240..41 * 240],
            "concealed"
        );
        // The first 5 ms after concealment are cross-faded; from there on, the audio as sent.
        assert_same(
            &audio[41 * 240 + 40..100 * 240],
            &sent[41 * 240 + 40..],
            "after the loss, in its place",
        );
        let stats = jitter.stats();
        assert_eq!((stats.lost, stats.late, stats.discarded_frames), (1, 0, 0));
    }

    fn with_ptime(ptime_ms: u64) -> JitterConfig {
        JitterConfig {
            ptime: ms(ptime_ms),
            ..config()
        }
    }

    #[test]
    fn a_new_source_with_another_packet_size_is_followed_after_three_packets() {
        let mut jitter = JitterBuffer::new(config());
        let mut first = SizedSender::new(SSRC, 160);
        let mut second = SizedSender::new(Ssrc(0xabcd), 240);
        // Audio of its own: the pattern repeats every 15,360 bytes; the first leg sends 8,000.
        second.offset = 10_000;
        let mut now = t0();
        let mut out = Vec::new();
        // 1 s of 20 ms packets, then the other leg's 30 ms packets for 1.2 s, ticking at 20 ms.
        for tick in 0..200u32 {
            if tick < 50 {
                jitter.push(now, first.next());
            } else if (tick - 50) % 3 != 2 && tick < 110 {
                jitter.push(now, second.next());
            }
            out.push(jitter.pop(now));
            now += ms(20);
        }
        assert_eq!(jitter.packet_time(), ms(30));
        let audio = audio_from_first_frame(&out, 160);
        let expected: Vec<u8> = (10_000..10_000 + 40 * 240).map(stream_byte).collect();
        let start = audio
            .windows(240)
            .position(|w| w == &expected[..240])
            .expect("the second leg was played");
        // The first frame after the switch is cross-faded (5 ms); the rest as sent.
        assert_same(
            &audio[start + 40..start + expected.len()],
            &expected[40..],
            "the second leg",
        );
        assert_eq!(jitter.stats().discarded_frames, 0);
        assert_eq!(jitter.stats().late, 0);
    }

    #[test]
    fn one_short_packet_does_not_change_the_slots() {
        let mut jitter = JitterBuffer::new(config());
        let mut sender = SizedSender::new(SSRC, 160);
        for i in 0..20u32 {
            sender.samples = if i == 10 { 80 } else { 160 };
            jitter.push(t0() + ms(20) * i, sender.next());
        }
        assert_eq!(jitter.packet_time(), ms(20));
        let mut sender = SizedSender::new(Ssrc(1), 80);
        let mut jitter = JitterBuffer::new(config());
        jitter.push(t0(), sender.next());
        assert_eq!(
            jitter.packet_time(),
            ms(10),
            "the first packet sets it at once"
        );
    }

    proptest! {
        #[test]
        fn any_packet_sizes_give_one_ptime_per_pop(
            ptime_ms in prop::sample::select(vec![10u64, 20, 30, 40]),
            packets in prop::collection::vec(
                (prop::sample::select(vec![1usize, 40, 80, 160, 240, 320, 480, 1_000]),
                 0u64..60, 0u8..12),
                1..120),
        ) {
            let cfg = JitterConfig { ptime: Duration::from_millis(ptime_ms), ..config() };
            let mut jitter = JitterBuffer::new(cfg.clone());
            let mut sender = SizedSender::new(SSRC, 160);
            let mut arrivals = Vec::new();
            let mut at = 0;
            for (samples, delay, fate) in &packets {
                sender.samples = *samples;
                let packet = sender.next();
                at += *samples as u64 / 8;
                if *fate == 0 {
                    continue;
                }
                if *fate == 1 {
                    arrivals.push((at + delay + 7, packet.clone()));
                }
                arrivals.push((at + delay, packet));
            }
            arrivals.sort_by_key(|(t, _)| *t);
            let mut arrivals = arrivals.into_iter().peekable();
            let out_samples = (ptime_ms * 8) as usize;
            for tick in 0..(at + 400) / ptime_ms {
                let now = t0() + Duration::from_millis(tick * ptime_ms);
                while let Some((t, packet)) = arrivals.next_if(|(t, _)| *t <= tick * ptime_ms) {
                    jitter.push(t0() + Duration::from_millis(t), packet);
                }
                if let Playout::Frame(a) | Playout::Concealed(a) = jitter.pop(now) {
                    prop_assert_eq!(a.len(), out_samples);
                }
                prop_assert!(jitter.target_delay() <= cfg.max_delay);
                prop_assert!(jitter.target_delay() >= cfg.min_delay);
                let bound = cfg.max_delay + jitter.packet_time() + Duration::from_millis(125 + ptime_ms);
                prop_assert!(jitter.current_delay() <= bound, "{:?}", jitter.current_delay());
            }
        }
    }

    proptest! {
        #[test]
        fn never_panics_never_reorders_never_overfills(
            start_seq in any::<u16>(),
            start_ts in any::<u32>(),
            packets in prop::collection::vec((0u32..8, any::<bool>(), 0u8..10), 1..150),
        ) {
            let cfg = config();
            let mut jitter = JitterBuffer::new(cfg.clone());
            let mut sender = Sender::new(SSRC, start_seq, start_ts);
            // (arrival tick, packet)
            let mut arrivals: Vec<(u32, MediaPacket)> = Vec::new();
            for (i, (delay, duplicate, fate)) in packets.iter().enumerate() {
                let packet = sender.next();
                if *fate == 0 {
                    continue;
                }
                let tick = i as u32 + delay;
                if *duplicate {
                    arrivals.push((tick + u32::from(fate % 3), packet.clone()));
                }
                arrivals.push((tick, packet));
            }
            arrivals.sort_by_key(|(tick, _)| *tick);
            let mut arrivals = arrivals.into_iter().peekable();
            let mut last_index = None;
            let limit = cfg.max_delay + cfg.ptime;
            for tick in 0..packets.len() as u32 + 20 {
                let now = t0() + ms(20) * tick;
                while let Some((_, packet)) = arrivals.next_if(|(t, _)| *t <= tick) {
                    jitter.push(now, packet);
                    prop_assert!(jitter.current_delay() <= limit);
                }
                if let Playout::Frame(_) = jitter.pop(now) {
                    prop_assert!(jitter.last_played > last_index);
                    last_index = jitter.last_played;
                }
                prop_assert!(jitter.current_delay() <= limit);
                prop_assert!(jitter.target_delay() <= cfg.max_delay);
                prop_assert!(jitter.target_delay() >= cfg.min_delay);
            }
        }
    }
}
