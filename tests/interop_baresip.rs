//! A real softphone calls voxgate: baresip (libre's SIP and RTP stack, Debian's
//! `baresip-core`) dials over loopback and speaks 3 s from a WAV file; what it heard is compared
//! with what was said to it, 20 ms frame by frame. With the echo agent it hangs up when it has
//! finished and hears its own voice; with an OpenAI agent (the Realtime stand-in) its voice
//! reaches the service, it hears the agent's greeting, and the agent's `end_call` hangs it up.
//! SIPp plays the PBX everywhere else; this is a second, independent implementation of the
//! caller's side (its own SDP, RTP timing, RTCP and jitter buffer, and its handling of a BYE
//! from voxgate).
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::baresip::Baresip;
use common::realtime::{Behaviour, RealtimeStandIn, Reply};
use common::{Gateway, GatewayConfig};
use voxgate::media::g711::linear_to_ulaw;

const SETTLE: Duration = Duration::from_secs(10);
/// Samples in 20 ms at 8 kHz.
const FRAME: usize = 160;

/// 3 s in which no two 20 ms frames are alike: a sweep from 300 to 3,000 Hz whose loudness
/// rises and falls.
fn voice() -> Vec<i16> {
    sweep(3, 300.0, 900.0)
}

/// `seconds` of a sweep from `from` Hz, rising `rise` Hz per second, whose loudness rises and
/// falls: no two 20 ms frames alike.
fn sweep(seconds: usize, from: f64, rise: f64) -> Vec<i16> {
    let rate = 8_000.0;
    let samples = seconds * 8_000;
    let mut phase = 0.0f64;
    (0..samples)
        .map(|i| {
            let t = i as f64 / rate;
            let frequency = from + rise * t;
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
    wire_level(linear_to_ulaw(sample))
}

/// The level of a PCMU byte as sent on the wire.
fn wire_level(byte: u8) -> i32 {
    let code = !byte;
    let magnitude = i32::from(code & 0x7f);
    if code & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Waits for `caller` to quit; asserts voxgate answered its call and counted it completed.
/// Its log.
fn completed_call(gateway: &Gateway, caller: &mut Baresip) -> String {
    caller.wait(Duration::from_secs(20));
    let log = caller.log();
    assert!(log.contains("Call established"), "not answered:\n{log}");
    let completed = gateway.wait_metric(
        "voxgate_calls_total",
        &[("result", "completed")],
        SETTLE,
        |v| v == 1.0,
    );
    assert_eq!(completed, 1.0, "one completed call:\n{}", gateway.log());
    log
}

/// The μ-law levels of baresip's recording ending in `suffix`.
fn recorded_levels(caller: &Baresip, suffix: &str) -> Vec<i32> {
    common::baresip::read_wav(&caller.recording(suffix))
        .into_iter()
        .map(level)
        .collect()
}

/// Where the frames of one recording turned up in another.
struct Found {
    /// Frames looked for.
    frames: usize,
    /// Frames never found, before the last one found (see `tail`).
    missing: Vec<usize>,
    /// Frames never found after the last one found.
    tail: usize,
    /// Where each found frame was, in samples after its place in what was said (negative:
    /// the recording of what was heard started after what was said).
    delays: Vec<i64>,
}

impl Found {
    fn assert_tail_at_most(&self, frames: usize, what: &str) {
        assert!(
            self.tail <= frames,
            "{what}: the last {} of {} frames were never heard (delays {:?}..{:?} samples)",
            self.tail,
            self.frames,
            self.delays.iter().min(),
            self.delays.iter().max()
        );
    }

    fn report(&self, what: &str) {
        eprintln!(
            "{what}: found {} of {} frames, delay {:?}..{:?} samples",
            self.delays.len(),
            self.frames,
            self.delays.iter().min(),
            self.delays.iter().max()
        );
    }
}

/// Looks for each 20 ms frame of `said` (μ-law levels) whole in `heard`, in order, each up to
/// 1 s after the previous one found, its levels at most `slack` apart.
fn find_frames(said: &[i32], heard: &[i32], slack: i32) -> Found {
    let frames = said.len() / FRAME;
    let mut from = 0;
    let mut missing = Vec::new();
    let mut delays = Vec::new();
    for k in 0..frames {
        let frame = &said[k * FRAME..(k + 1) * FRAME];
        let end = (from.max(k * FRAME) + 8_000).min(heard.len().saturating_sub(FRAME));
        let alike = |at: usize| {
            heard[at..at + FRAME]
                .iter()
                .zip(frame)
                .all(|(heard, said)| (heard - said).abs() <= slack)
        };
        match (from..=end).find(|&at| alike(at)) {
            Some(at) => {
                delays.push(at as i64 - (k * FRAME) as i64);
                from = at + FRAME;
            }
            None => missing.push(k),
        }
    }
    let mut tail = 0;
    while missing.last() == Some(&(frames - tail - 1)) {
        missing.pop();
        tail += 1;
    }
    Found {
        frames,
        missing,
        tail,
        delays,
    }
}

#[test]
fn a_softphone_hears_its_own_voice_back_frame_for_frame() {
    let gateway = Gateway::start("");
    let caller = Baresip::call(gateway.sip_addr(), &voice());
    hears_its_own_voice_back(&gateway, caller);
}

#[test]
fn a_softphone_over_sip_tcp_hears_its_own_voice_back_frame_for_frame() {
    let gateway = Gateway::start("");
    let caller = Baresip::call_over(gateway.sip_addr(), &voice(), true);
    let connections = gateway.wait_metric(
        "voxgate_sip_tcp_connections",
        &[("direction", "inbound")],
        SETTLE,
        |v| v == 1.0,
    );
    assert_eq!(
        connections,
        1.0,
        "baresip's TCP connection:\n{}",
        caller.log()
    );
    hears_its_own_voice_back(&gateway, caller);
}

/// `caller` has dialled the echo agent of `gateway`: it is answered, hangs up when it has
/// spoken, and hears what it said.
fn hears_its_own_voice_back(gateway: &Gateway, mut caller: Baresip) {
    let log = completed_call(gateway, &mut caller);
    assert!(
        log.contains("terminated"),
        "the call did not end with the caller's BYE:\n{log}"
    );

    // What baresip sent (before its PCMU encoder) and heard (after its decoder). voxgate's echo
    // returns the caller's PCMU bytes untouched, so each frame heard is the frame said, through
    // one G.711 round trip, some 40–100 ms later (voxgate's jitter buffer, then baresip's).
    // Compared as μ-law levels: what was heard are exact levels.
    let said: Vec<i32> = recorded_levels(&caller, "-enc.wav");
    let heard: Vec<i32> = recorded_levels(&caller, "-dec.wav");
    let frames = said.len() / FRAME;
    assert!(frames >= 140, "baresip said only {frames} frames:\n{log}");
    // Each frame heard some 40–100 ms after it was said (voxgate's jitter buffer, then
    // baresip's). The caller hangs up as its file ends: the last frames are still in voxgate's
    // jitter buffer (40 ms) or on their way back, so they are never heard (up to 10 frames
    // here). Mid-call, a frame may be missing only where voxgate reports a concealment (a
    // packet that came too late).
    let heard_back = find_frames(&said, &heard, 1);
    heard_back.assert_tail_at_most(10, "the echo");
    let missing = &heard_back.missing;
    let concealed = gateway.wait_concealed_frames(SETTLE);
    assert!(
        missing.len() <= concealed,
        "frames said but never heard, mid-call: {missing:?} ({concealed} concealed by voxgate; \
         delays {:?})",
        heard_back.delays
    );
    heard_back.report("echo");
}

#[test]
fn a_softphone_talks_with_a_realtime_agent_that_ends_the_call() {
    // The agent greets the caller (1.6 s of a falling sweep, in PCMU as the service sends it)
    // and ends the call after its greeting, while the caller is still talking.
    let greeting: Vec<u8> = sweep(2, 2_800.0, -800.0)[..80 * FRAME]
        .iter()
        .map(|&sample| linear_to_ulaw(sample))
        .collect();
    let standin = RealtimeStandIn::start(
        Behaviour::new().greeting(
            Reply::audio(greeting.clone())
                .transcript("Hello, goodbye.")
                .function_call("end_call", serde_json::json!({})),
        ),
    );
    let gateway = Gateway::start_with(GatewayConfig {
        extra: format!(
            "[[agents]]\nname = \"assistant\"\nkind = \"openai\"\nmodel = \"gpt-realtime\"\n\
             voice = \"marin\"\ninstructions = \"You are a test agent.\"\n\
             greeting = \"Greet the caller.\"\n\n\
             [realtime]\nurl = \"{}\"\nconnect_timeout_ms = 3000\n",
            standin.url()
        ),
        route_agent: "assistant".into(),
        env: vec![("OPENAI_API_KEY".into(), "sk-test-key".into())],
        ..GatewayConfig::default()
    });
    let mut caller = Baresip::call(gateway.sip_addr(), &voice());
    let log = completed_call(&gateway, &mut caller);
    assert!(
        gateway.log().contains("the agent ended the call"),
        "voxgate did not hang up for the agent:\n{}",
        gateway.log()
    );
    // voxgate's BYE out and baresip's 200 in (responses count under their CSeq method); had
    // baresip hung up first, its BYE and voxgate's 200 would make two of each.
    let metrics = gateway.metrics();
    let bye = |direction| {
        metrics
            .get(
                "voxgate_sip_messages_total",
                &[("method", "BYE"), ("direction", direction)],
            )
            .unwrap_or(0.0)
    };
    assert_eq!(
        (bye("out"), bye("in")),
        (1.0, 1.0),
        "voxgate's BYE and its 200:\n{log}"
    );
    standin.assert_no_violations();

    // Down: every frame of the greeting, in order, exactly (baresip's PCMU decoder turns each
    // byte into one value, whose level is the byte's), the last ones too: voxgate waits
    // `realtime.last_words_grace_ms` after the last frame before its BYE, so baresip has played
    // what its jitter buffer held (without the grace, its last 4 frames were lost).
    let said: Vec<i32> = greeting.iter().map(|&byte| wire_level(byte)).collect();
    let heard: Vec<i32> = recorded_levels(&caller, "-dec.wav");
    let greeted = find_frames(&said, &heard, 0);
    greeted.report("greeting");
    greeted.assert_tail_at_most(0, "the greeting");
    assert!(
        greeted.missing.is_empty(),
        "greeting frames missing mid-way: {:?} (delays {:?})",
        greeted.missing,
        greeted.delays
    );

    // Up: what the caller said reached the service, frame by frame and in order (one level of
    // slack, as in the echo test), up to the voxgate's BYE.
    let session = standin.session(0);
    let said: Vec<i32> = recorded_levels(&caller, "-enc.wav");
    let appended: Vec<i32> = session.input_audio.iter().map(|&b| wire_level(b)).collect();
    assert!(
        said.len() / FRAME >= 60,
        "baresip said only {} frames before the BYE:\n{log}",
        said.len() / FRAME
    );
    let uploaded = find_frames(&said, &appended, 1);
    uploaded.report("caller's voice");
    uploaded.assert_tail_at_most(10, "the caller's voice");
    let concealed = gateway.wait_concealed_frames(SETTLE);
    assert!(
        uploaded.missing.len() <= concealed,
        "caller frames never appended, mid-call: {:?} ({concealed} concealed by voxgate)",
        uploaded.missing
    );
}
