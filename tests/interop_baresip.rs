//! A real softphone calls voxgate: baresip (libre's SIP and RTP stack, Debian's
//! `baresip-core`) dials the echo agent over loopback, speaks 3 s from a WAV file, hangs up when
//! it has finished, and what it heard is compared with what it said, 20 ms frame by frame.
//! SIPp plays the PBX everywhere else; this is a second, independent implementation of the
//! caller's side (its own SDP, RTP timing, RTCP and jitter buffer).
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::baresip::Baresip;
use common::Gateway;
use voxgate::media::g711::linear_to_ulaw;

const SETTLE: Duration = Duration::from_secs(10);
/// Samples in 20 ms at 8 kHz.
const FRAME: usize = 160;

/// 3 s in which no two 20 ms frames are alike: a sweep from 300 to 3,000 Hz whose loudness
/// rises and falls.
fn voice() -> Vec<i16> {
    let rate = 8_000.0;
    let samples = 3 * 8_000;
    let mut phase = 0.0f64;
    (0..samples)
        .map(|i| {
            let t = i as f64 / rate;
            let frequency = 300.0 + 900.0 * t;
            phase += 2.0 * std::f64::consts::PI * frequency / rate;
            let loudness = 6_000.0 + 4_000.0 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
            (loudness * phase.sin()) as i16
        })
        .collect()
}

/// A sample's G.711 μ-law level, signed (−127..=127). Encoders may round a sample that falls
/// between two levels either way (libre's and voxgate's do, now and then), so frames are
/// compared level by level with one level of slack: a frame from elsewhere in the sweep is
/// dozens of levels off.
fn level(sample: i16) -> i32 {
    let code = !linear_to_ulaw(sample);
    let magnitude = i32::from(code & 0x7f);
    if code & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

#[test]
fn a_softphone_hears_its_own_voice_back_frame_for_frame() {
    let gateway = Gateway::start("");
    let mut caller = Baresip::call(gateway.sip_addr(), &voice());
    caller.wait(Duration::from_secs(20));
    let log = caller.log();
    assert!(log.contains("Call established"), "not answered:\n{log}");
    assert!(
        log.contains("terminated"),
        "the call did not end with the caller's BYE:\n{log}"
    );
    let completed = gateway.wait_metric(
        "voxgate_calls_total",
        &[("result", "completed")],
        SETTLE,
        |v| v == 1.0,
    );
    assert_eq!(completed, 1.0, "one completed call:\n{}", gateway.log());

    // What baresip sent (before its PCMU encoder) and heard (after its decoder). voxgate's echo
    // returns the caller's PCMU bytes untouched, so each frame heard is the frame said, through
    // one G.711 round trip, some 40–100 ms later (voxgate's jitter buffer, then baresip's).
    // Compared as μ-law levels: what was heard are exact levels.
    let said: Vec<i32> = common::baresip::read_wav(&caller.recording("-enc.wav"))
        .into_iter()
        .map(level)
        .collect();
    let heard: Vec<i32> = common::baresip::read_wav(&caller.recording("-dec.wav"))
        .into_iter()
        .map(level)
        .collect();
    let frames = said.len() / FRAME;
    assert!(frames >= 140, "baresip said only {frames} frames:\n{log}");
    // Each frame said, looked for whole in what was heard, in order, up to 1 s later.
    let mut from = 0;
    let mut missing = Vec::new();
    let mut delays = Vec::new();
    for k in 0..frames {
        let frame = &said[k * FRAME..(k + 1) * FRAME];
        let start = (k * FRAME).max(from);
        let end = (k * FRAME + 8_000).min(heard.len().saturating_sub(FRAME));
        let alike = |at: usize| {
            heard[at..at + FRAME]
                .iter()
                .zip(frame)
                .all(|(heard, said)| (heard - said).abs() <= 1)
        };
        match (start..=end).find(|&at| alike(at)) {
            Some(at) => {
                delays.push(at - k * FRAME);
                from = at + FRAME;
            }
            None => missing.push(k),
        }
    }
    // The caller hangs up as its file ends: the last frames are still in voxgate's jitter
    // buffer (40 ms) or on their way back, so they are never heard (up to 10 frames here).
    // Mid-call, a frame may be missing only where voxgate reports a concealment (a packet
    // that came too late).
    let mut tail = frames;
    while tail > 0 && missing.last() == Some(&(tail - 1)) {
        missing.pop();
        tail -= 1;
    }
    assert!(
        frames - tail <= 10,
        "the last {} frames said were never heard (delays {delays:?})",
        frames - tail
    );
    let concealed = gateway.wait_concealed_frames(SETTLE);
    assert!(
        missing.len() <= concealed,
        "frames said but never heard, mid-call: {missing:?} ({concealed} concealed by voxgate; \
         delays {delays:?})"
    );
    let (least, most) = (delays.iter().min(), delays.iter().max());
    eprintln!(
        "heard {} of {frames} frames, delay {least:?}..{most:?} samples",
        delays.len()
    );
}
