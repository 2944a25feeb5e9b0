use std::collections::VecDeque;

use super::*;
use crate::call::transfer::{TransferRequest, TRANSFER_TOOL};
use crate::testkit;

/// A scripted speech session: events are pushed by the test, calls are recorded.
#[derive(Default)]
struct Fake {
    events: VecDeque<SpeechEvent>,
    audio: Vec<Vec<u8>>,
    truncates: Vec<(String, Duration)>,
    interrupts: usize,
    outputs: Vec<(String, String, bool)>,
    prompts: Vec<String>,
    texts: Vec<String>,
    responding: bool,
    formats: Vec<G711>,
}

impl SpeechSession for Fake {
    fn handle_message(&mut self, _text: &str) {}
    fn send_audio(&mut self, audio: &[u8]) {
        self.audio.push(audio.to_vec());
    }
    fn truncate(&mut self, item: &str, heard: Duration) {
        self.truncates.push((item.to_owned(), heard));
    }
    fn interrupt(&mut self) {
        self.interrupts += 1;
    }
    fn tool_output(&mut self, call_id: &str, output: &str, respond: bool) {
        self.outputs
            .push((call_id.to_owned(), output.to_owned(), respond));
    }
    fn prompt(&mut self, instructions: &str) {
        self.prompts.push(instructions.to_owned());
        self.responding = true;
    }
    fn caller_text(&mut self, text: &str) {
        self.texts.push(text.to_owned());
    }
    fn responding(&self) -> bool {
        self.responding
    }
    fn set_audio_format(&mut self, law: G711) {
        self.formats.push(law);
    }
    fn poll_transmit(&mut self) -> Option<String> {
        None
    }
    fn poll_event(&mut self) -> Option<SpeechEvent> {
        self.events.pop_front()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config() -> BridgeConfig {
    BridgeConfig {
        codec: G711::Pcmu,
        ptime: ms(20),
        tools: vec![ToolSettings {
            name: "lookup".into(),
            description: "Look something up".into(),
            parameters: serde_json::json!({"type": "object"}),
            url: "http://127.0.0.1:9/lookup".into(),
            timeout_ms: 1_000,
        }],
        session_limit: Duration::from_secs(3_600),
        goodbye_margin: Duration::from_secs(30),
        greeting: Some("Greet the caller.".into()),
        transfers: vec!["sales".into()],
        dtmf_rules: vec![('0', "sales".into())],
        dtmf_to_model: true,
        last_words_grace: ms(60),
        apology: None,
    }
}

struct Harness {
    bridge: Bridge<Fake>,
    now: Instant,
}

impl Harness {
    fn ready() -> Harness {
        let mut harness = Harness {
            bridge: Bridge::new(Fake::default(), config()),
            now: testkit::t0(),
        };
        harness.event(SpeechEvent::Ready);
        assert_eq!(harness.outputs(), vec![BridgeOutput::Answer]);
        harness
    }

    fn event(&mut self, event: SpeechEvent) {
        match event {
            SpeechEvent::ResponseStarted => self.bridge.session.responding = true,
            SpeechEvent::ResponseDone { .. } => self.bridge.session.responding = false,
            _ => {}
        }
        self.bridge.session.events.push_back(event);
        self.bridge.handle_message(self.now, "{}");
    }

    fn audio(&mut self, item: &str, bytes: usize, value: u8) {
        self.event(SpeechEvent::Audio {
            item: item.into(),
            audio: Bytes::from(vec![value; bytes]),
        });
    }

    fn tick(&mut self) -> PlayoutFrame {
        self.now += ms(20);
        self.bridge.tick(self.now, Some(&[0x42; 160]))
    }

    fn outputs(&mut self) -> Vec<BridgeOutput> {
        std::iter::from_fn(|| self.bridge.poll_output()).collect()
    }

    /// The ticks after the last real frame within `last_words_grace` (60 ms: the third tick
    /// after that frame is the first past it): silence goes out, and the call is neither
    /// ended nor handed over yet.
    fn sit_out_the_grace(&mut self) {
        let ticks = config().last_words_grace.as_millis() / 20 - 1;
        for _ in 0..ticks {
            assert!(self.tick().is_silence, "the agent has nothing more to say");
            assert!(
                self.outputs().is_empty(),
                "not within the grace after the last words"
            );
        }
    }
}

#[test]
fn appends_one_frame_per_tick_once_ready_and_silence_when_nothing_was_heard() {
    let mut bridge = Bridge::new(Fake::default(), config());
    let t0 = testkit::t0();
    bridge.tick(t0, Some(&[1; 160]));
    assert!(
        bridge.session().audio.is_empty(),
        "nothing before the session is ready"
    );
    bridge.session.events.push_back(SpeechEvent::Ready);
    bridge.handle_message(t0, "{}");
    bridge.tick(t0 + ms(20), Some(&[1; 160]));
    bridge.tick(t0 + ms(40), None);
    bridge.tick(t0 + ms(60), Some(&[2; 160]));
    let audio = &bridge.session().audio;
    assert_eq!(
        audio.len(),
        3,
        "one append per tick: no gaps, no duplicates"
    );
    assert_eq!(audio[0], vec![1; 160]);
    assert_eq!(audio[1], vec![0xff; 160], "µ-law silence fills a gap");
    assert_eq!(audio[2], vec![2; 160]);
}

#[test]
fn unaligned_deltas_are_repacketized_with_a_marker_per_utterance() {
    let mut h = Harness::ready();
    h.audio("a", 250, 0x11);
    h.audio("a", 230, 0x11); // 480 bytes = 3 frames
    h.event(SpeechEvent::AudioDone { item: "a".into() });
    h.audio("b", 100, 0x22); // 100 bytes, padded at its end
    h.event(SpeechEvent::AudioDone { item: "b".into() });
    let frames: Vec<PlayoutFrame> = (0..6).map(|_| h.tick()).collect();
    let markers: Vec<bool> = frames.iter().map(|f| f.marker).collect();
    assert_eq!(markers, [true, false, false, true, false, false]);
    assert!(frames[..3]
        .iter()
        .all(|f| f.payload.len() == 160 && f.payload[0] == 0x11));
    assert_eq!(&frames[3].payload[..100], &[0x22; 100][..]);
    assert!(frames[3].payload[100..].iter().all(|&b| b == 0xff));
    assert!(frames[4].is_silence && frames[5].is_silence);
}

#[test]
fn barge_in_flushes_at_once_and_truncates_to_what_was_played() {
    let mut h = Harness::ready();
    h.event(SpeechEvent::ResponseStarted);
    h.audio("a", 160 * 50, 0x11); // one second queued
    for _ in 0..7 {
        h.tick();
    }
    h.event(SpeechEvent::SpeechStarted);
    assert_eq!(h.bridge.session().truncates, vec![("a".into(), ms(140))]);
    assert_eq!(
        h.outputs(),
        vec![BridgeOutput::BargeIn {
            heard: ms(140),
            dropped: ms(860)
        }]
    );
    assert!(h.tick().is_silence, "the next frame is already silence");
    // Deltas still in flight for the interrupted item are dropped.
    h.audio("a", 1_600, 0x11);
    assert!(h.tick().is_silence);
    assert_eq!(h.bridge.queued(), Duration::ZERO);
    // The next answer plays normally, with a marker.
    h.audio("b", 320, 0x22);
    let frame = h.tick();
    assert!(frame.marker && frame.payload[0] == 0x22);
}

#[test]
fn while_the_caller_holds_the_call_the_answer_waits_and_the_session_hears_silence() {
    let mut h = Harness::ready();
    h.event(SpeechEvent::ResponseStarted);
    h.audio("a", 160 * 50, 0x11); // one second queued
    for _ in 0..3 {
        assert!(!h.tick().is_silence);
    }
    h.bridge.set_held(true);
    let appended = h.bridge.session().audio.len();
    for _ in 0..10 {
        let frame = h.tick();
        assert!(frame.is_silence && frame.payload.iter().all(|&b| b == 0xff));
    }
    assert_eq!(h.bridge.queued(), ms(940), "nothing played while held");
    let held: Vec<Vec<u8>> = h.bridge.session().audio[appended..].to_vec();
    assert_eq!(held.len(), 10, "one append per tick while held");
    assert!(
        held.iter().all(|a| a.iter().all(|&b| b == 0xff)),
        "the holding caller's audio (hold music) is not sent up"
    );
    // Resumed: the answer goes on where it stopped, as a new talkspurt.
    h.bridge.set_held(false);
    let frame = h.tick();
    assert!(frame.marker && frame.payload[0] == 0x11);
    assert_eq!(h.bridge.session().audio.last(), Some(&vec![0x42; 160]));
    // A barge-in counts only what was really played: 4 frames, not 14.
    h.event(SpeechEvent::SpeechStarted);
    assert_eq!(h.bridge.session().truncates, vec![("a".into(), ms(80))]);
}

#[test]
fn speech_while_the_agent_is_silent_is_not_a_barge_in() {
    let mut h = Harness::ready();
    h.audio("a", 320, 0x11);
    h.event(SpeechEvent::AudioDone { item: "a".into() });
    h.tick();
    h.tick();
    h.tick();
    h.event(SpeechEvent::SpeechStarted);
    assert!(h.bridge.session().truncates.is_empty());
    assert_eq!(h.bridge.session().interrupts, 0);
    assert!(h.outputs().is_empty());
}

#[test]
fn barge_in_before_any_frame_of_the_answer_played_cuts_without_a_truncate_length() {
    let mut h = Harness::ready();
    h.event(SpeechEvent::ResponseStarted);
    h.audio("a", 1_600, 0x11);
    h.event(SpeechEvent::SpeechStarted);
    // Nothing of "a" was sent: no truncate call with a length (the session would skip 0 anyway).
    assert!(h.bridge.session().truncates.is_empty());
    assert!(h.tick().is_silence);
}

#[test]
fn response_latency_runs_from_speech_stopped_to_the_first_answer_frame() {
    let mut h = Harness::ready();
    h.event(SpeechEvent::SpeechStopped);
    h.tick();
    h.tick();
    h.audio("a", 160, 0x11);
    h.tick();
    assert_eq!(h.outputs(), vec![BridgeOutput::ResponseLatency(ms(60))]);
}

#[test]
fn end_call_hangs_up_after_the_goodbye_has_played() {
    let mut h = Harness::ready();
    h.event(SpeechEvent::ResponseStarted);
    h.audio("bye", 160 * 3, 0x11);
    h.event(SpeechEvent::ToolCall {
        call_id: "c1".into(),
        name: END_CALL_TOOL.into(),
        arguments: "{}".into(),
    });
    h.event(SpeechEvent::ResponseDone {
        status: "completed".into(),
    });
    assert_eq!(
        h.outputs(),
        vec![BridgeOutput::ToolCalled {
            name: END_CALL_TOOL.into(),
            result: ToolResult::Ok
        }]
    );
    for _ in 0..3 {
        assert!(!h.tick().is_silence);
        assert!(h.outputs().is_empty(), "not before the last frame is sent");
    }
    h.sit_out_the_grace();
    h.tick();
    assert_eq!(
        h.outputs(),
        vec![BridgeOutput::Hangup {
            why: "the agent ended the call".into()
        }]
    );
    h.tick();
    assert!(h.outputs().is_empty(), "hangs up once");
}

#[test]
fn http_tools_are_dispatched_and_unknown_tools_answered_with_an_error() {
    let mut h = Harness::ready();
    h.event(SpeechEvent::ToolCall {
        call_id: "c1".into(),
        name: "lookup".into(),
        arguments: "{\"q\":1}".into(),
    });
    match h.outputs().as_slice() {
        [BridgeOutput::RunTool {
            call_id,
            arguments,
            tool,
        }] => {
            assert_eq!((call_id.as_str(), arguments.as_str()), ("c1", "{\"q\":1}"));
            assert_eq!(tool.name, "lookup");
        }
        other => panic!("expected RunTool, got {other:?}"),
    }
    h.bridge.tool_finished(h.now, "c1", "{\"answer\":42}");
    assert_eq!(
        h.bridge.session().outputs,
        vec![("c1".into(), "{\"answer\":42}".into(), true)]
    );
    h.event(SpeechEvent::ToolCall {
        call_id: "c2".into(),
        name: "launch_rockets".into(),
        arguments: "{}".into(),
    });
    let (call, output, respond) = h.bridge.session().outputs[1].clone();
    assert_eq!(call, "c2");
    assert!(output.contains("no tool named launch_rockets") && respond);
}

#[test]
fn near_the_session_limit_the_agent_says_goodbye_then_the_call_ends() {
    let mut h = Harness::ready();
    h.now += Duration::from_secs(3_600 - 31);
    h.tick();
    assert!(h.bridge.session().prompts.is_empty());
    h.now += Duration::from_secs(1);
    h.tick();
    assert_eq!(
        h.bridge.session().prompts,
        vec![TIME_LIMIT_GOODBYE.to_owned()]
    );
    h.event(SpeechEvent::ResponseStarted);
    h.audio("bye", 320, 0x11);
    h.event(SpeechEvent::ResponseDone {
        status: "completed".into(),
    });
    h.tick();
    h.tick();
    assert!(h.outputs().is_empty());
    h.sit_out_the_grace();
    h.tick();
    assert_eq!(
        h.outputs(),
        vec![BridgeOutput::Hangup {
            why: "the Realtime session reached its time limit".into()
        }]
    );
}

#[test]
fn a_hangup_does_not_wait_forever_for_a_response_that_never_ends() {
    let mut h = Harness::ready();
    h.event(SpeechEvent::ResponseStarted);
    h.event(SpeechEvent::ToolCall {
        call_id: "c1".into(),
        name: END_CALL_TOOL.into(),
        arguments: "{}".into(),
    });
    h.outputs();
    h.now += HANGUP_WAIT_MAX;
    h.tick();
    assert!(matches!(
        h.outputs().as_slice(),
        [BridgeOutput::Hangup { .. }]
    ));
}

#[test]
fn a_failed_session_is_reported_once_and_gets_no_more_audio() {
    let mut h = Harness::ready();
    h.event(SpeechEvent::Failed {
        reason: FailReason::Expired,
        detail: "60 minutes".into(),
    });
    h.bridge.handle_closed(FailReason::Dropped, "closed".into());
    assert_eq!(
        h.outputs(),
        vec![BridgeOutput::Failed {
            reason: FailReason::Expired,
            detail: "60 minutes".into()
        }]
    );
    let before = h.bridge.session().audio.len();
    h.tick();
    assert_eq!(h.bridge.session().audio.len(), before);
}

#[test]
fn the_greeting_starts_with_the_media_and_pcma_calls_switch_the_session_to_pcma() {
    let mut h = Harness::ready();
    assert!(
        h.bridge.session().prompts.is_empty(),
        "no greeting before the media is up"
    );
    h.bridge.set_media(G711::Pcma, ms(20));
    assert_eq!(h.bridge.session().formats, vec![G711::Pcma]);
    assert_eq!(
        h.bridge.session().prompts,
        vec!["Greet the caller.".to_owned()]
    );
    // A-law silence fills the caller's gaps now, and the greeting is asked for once.
    h.tick();
    let silence = h.bridge.session().audio.last().cloned();
    h.bridge.set_media(G711::Pcma, ms(20));
    assert_eq!(h.bridge.session().prompts.len(), 1);
    assert_eq!(h.bridge.session().formats.len(), 1);
    h.now += ms(20);
    h.bridge.tick(h.now, None);
    assert_eq!(h.bridge.session().audio.last(), Some(&vec![0xd5; 160]));
    assert_eq!(silence, Some(vec![0x42; 160]));
}

#[test]
fn a_session_failing_after_answer_plays_the_apology_then_reports_the_failure() {
    let mut h = Harness::ready();
    h.bridge.config.apology = Some(Bytes::from(vec![0x33; 400])); // 50 ms
    h.audio("a", 1_600, 0x11);
    h.tick();
    h.bridge
        .handle_closed(FailReason::Dropped, "connection reset".into());
    assert!(h.outputs().is_empty(), "not before the apology has played");
    let frames: Vec<PlayoutFrame> = (0..3).map(|_| h.tick()).collect();
    assert!(
        frames.iter().all(|f| f.payload[0] == 0x33),
        "the agent's audio was dropped"
    );
    assert!(frames[0].marker);
    assert_eq!(frames[2].audio, ms(10), "the last frame is padded");
    assert!(h.outputs().is_empty());
    h.sit_out_the_grace();
    h.tick();
    assert_eq!(
        h.outputs(),
        vec![BridgeOutput::Failed {
            reason: FailReason::Dropped,
            detail: "connection reset".into()
        }]
    );
}

#[test]
fn a_session_failing_before_answer_reports_at_once_without_an_apology() {
    let mut bridge = Bridge::new(Fake::default(), config());
    bridge.config.apology = Some(Bytes::from(vec![0x33; 400]));
    bridge.handle_closed(FailReason::Connect, "refused".into());
    assert!(matches!(
        bridge.poll_output(),
        Some(BridgeOutput::Failed { .. })
    ));
}

#[test]
fn transfer_call_waits_for_the_hand_off_sentence_then_asks_the_call_to_transfer() {
    let mut h = Harness::ready();
    h.event(SpeechEvent::ResponseStarted);
    h.audio("handoff", 160 * 2, 0x22);
    h.event(SpeechEvent::ToolCall {
        call_id: "t1".into(),
        name: TRANSFER_TOOL.into(),
        arguments: r#"{"destination":"sales","reason":"wants a quote","summary":"Ann, 3 seats"}"#
            .into(),
    });
    h.event(SpeechEvent::ResponseDone {
        status: "completed".into(),
    });
    assert_eq!(
        h.outputs(),
        vec![BridgeOutput::ToolCalled {
            name: TRANSFER_TOOL.into(),
            result: ToolResult::Ok
        }]
    );
    for _ in 0..2 {
        assert!(!h.tick().is_silence);
        assert!(h.outputs().is_empty(), "not before the sentence has played");
    }
    h.sit_out_the_grace();
    h.tick();
    assert_eq!(
        h.outputs(),
        vec![BridgeOutput::Transfer(TransferRequest {
            tool_call_id: Some("t1".into()),
            destination: "sales".into(),
            reason: "wants a quote".into(),
            summary: Some("Ann, 3 seats".into()),
        })]
    );
    assert!(
        h.bridge.session().outputs.is_empty(),
        "the output waits for the outcome"
    );

    // A second transfer while this one runs is refused at once.
    h.event(SpeechEvent::ToolCall {
        call_id: "t2".into(),
        name: TRANSFER_TOOL.into(),
        arguments: r#"{"destination":"sales","reason":"again"}"#.into(),
    });
    let (call, output, _) = h.bridge.session().outputs[0].clone();
    assert_eq!(call, "t2");
    assert!(output.contains("already in progress"), "{output}");

    // The failure comes back as the first call's output.
    let request = TransferRequest {
        tool_call_id: Some("t1".into()),
        destination: "sales".into(),
        reason: "wants a quote".into(),
        summary: None,
    };
    let failure = r#"{"status":"failed","sip_status":603,"reason":"Declined"}"#;
    h.bridge.transfer_failed(h.now, request, failure);
    assert_eq!(
        h.bridge.session().outputs[1],
        ("t1".to_owned(), failure.to_owned(), true)
    );
}

#[test]
fn transfer_call_to_an_unknown_destination_is_answered_at_once() {
    let mut h = Harness::ready();
    h.outputs();
    h.event(SpeechEvent::ToolCall {
        call_id: "t1".into(),
        name: TRANSFER_TOOL.into(),
        arguments: r#"{"destination":"ceo","reason":"angry"}"#.into(),
    });
    let (call, output, respond) = h.bridge.session().outputs[0].clone();
    assert_eq!(call, "t1");
    assert!(
        output.contains("no transfer destination named") && output.contains("ceo"),
        "{output}"
    );
    assert!(output.contains("sales") && respond);
    h.tick();
    assert!(!h
        .outputs()
        .iter()
        .any(|o| matches!(o, BridgeOutput::Transfer(_))));
    // Malformed arguments are treated alike.
    h.event(SpeechEvent::ToolCall {
        call_id: "t2".into(),
        name: TRANSFER_TOOL.into(),
        arguments: "not json".into(),
    });
    assert_eq!(h.bridge.session().outputs.len(), 2);
}

#[test]
fn a_transfer_asked_for_by_keypad_that_fails_is_told_to_the_model_as_a_prompt() {
    let mut h = Harness::ready();
    let request = TransferRequest {
        tool_call_id: None,
        destination: "sales".into(),
        reason: "the caller pressed 0".into(),
        summary: None,
    };
    h.bridge
        .transfer_failed(h.now, request, r#"{"status":"failed","sip_status":486}"#);
    let prompts = &h.bridge.session().prompts;
    assert!(
        prompts
            .iter()
            .any(|p| p.contains("sales") && p.contains("486")),
        "{prompts:?}"
    );
}

#[test]
fn keys_go_to_the_model_and_a_dtmf_rule_transfers_without_it() {
    let mut h = Harness::ready();
    h.outputs();
    h.bridge.handle_dtmf(h.now, '5');
    assert_eq!(
        h.bridge.session().texts,
        vec!["The caller pressed 5.".to_owned()]
    );
    assert!(h.outputs().is_empty());
    // '0' is a rule: the agent is cut off and the call transfers, the model is not asked.
    h.audio("talking", 160 * 5, 0x33);
    h.bridge.handle_dtmf(h.now, '0');
    assert_eq!(
        h.bridge.queued(),
        Duration::ZERO,
        "the agent's audio is dropped"
    );
    assert_eq!(
        h.outputs(),
        vec![BridgeOutput::Transfer(TransferRequest {
            tool_call_id: None,
            destination: "sales".into(),
            reason: "the caller pressed 0".into(),
            summary: None,
        })]
    );
    assert_eq!(
        h.bridge.session().texts.len(),
        1,
        "the rule's key is not told"
    );
    // Pressing it again while the transfer runs does nothing.
    h.bridge.handle_dtmf(h.now, '0');
    assert!(h.outputs().is_empty());
}
