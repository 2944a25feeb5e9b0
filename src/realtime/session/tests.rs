use serde_json::{json, Value};

use super::*;
use crate::config::{AgentKind, AgentSettings, TurnDetection};

fn agent() -> AgentSettings {
    AgentSettings {
        name: "assistant".into(),
        kind: AgentKind::Openai,
        model: "gpt-realtime".into(),
        instructions: Some("Be brief.".into()),
        voice: Some("marin".into()),
        end_call_tool: true,
        ..AgentSettings::default()
    }
}

fn sent(session: &mut RealtimeSession) -> Vec<Value> {
    std::iter::from_fn(|| session.poll_transmit())
        .map(|text| serde_json::from_str(&text).expect("client events are JSON"))
        .collect()
}

fn events(session: &mut RealtimeSession) -> Vec<SpeechEvent> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

fn feed(session: &mut RealtimeSession, event: Value) {
    session.handle_message(&event.to_string());
}

fn pcmu_session() -> Value {
    json!({"type": "realtime", "audio": {
        "input": {"format": {"type": "audio/pcmu"}},
        "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}}})
}

fn ready(agent: &AgentSettings) -> RealtimeSession {
    let mut session = RealtimeSession::new(agent);
    feed(
        &mut session,
        json!({"type": "session.created", "event_id": "e1", "session": {}}),
    );
    feed(
        &mut session,
        json!({"type": "session.updated", "event_id": "e2", "session": pcmu_session()}),
    );
    assert!(session.is_ready());
    sent(&mut session);
    events(&mut session);
    session
}

fn delta(item: &str, bytes: usize) -> Value {
    use base64::Engine;
    let audio = base64::engine::general_purpose::STANDARD.encode(vec![0x55u8; bytes]);
    json!({"type": "response.output_audio.delta", "event_id": "e", "response_id": "resp_1",
           "item_id": item, "output_index": 0, "content_index": 0, "delta": audio})
}

#[test]
fn configures_pcmu_after_session_created_and_is_ready_on_confirmation() {
    let mut session = RealtimeSession::new(&agent());
    assert!(
        sent(&mut session).is_empty(),
        "nothing before session.created"
    );
    session.send_audio(&[0xff; 160]);
    assert!(
        sent(&mut session).is_empty(),
        "no audio before the formats are agreed"
    );
    feed(
        &mut session,
        json!({"type": "session.created", "event_id": "e1", "session": {}}),
    );
    let update = sent(&mut session);
    assert_eq!(update.len(), 1);
    let config = &update[0]["session"];
    assert_eq!(update[0]["type"], "session.update");
    assert_eq!(config["type"], "realtime");
    assert_eq!(config["audio"]["input"]["format"]["type"], "audio/pcmu");
    assert_eq!(config["audio"]["output"]["format"]["type"], "audio/pcmu");
    assert_eq!(config["audio"]["output"]["voice"], "marin");
    assert_eq!(config["instructions"], "Be brief.");
    assert_eq!(config["tools"][0]["name"], END_CALL_TOOL);
    assert!(config.get("temperature").is_none());
    assert!(events(&mut session).is_empty());
    feed(
        &mut session,
        json!({"type": "session.updated", "event_id": "e2", "session": pcmu_session()}),
    );
    assert_eq!(events(&mut session), vec![SpeechEvent::Ready]);
    session.send_audio(&[0xff; 160]);
    let append = sent(&mut session);
    assert_eq!(append[0]["type"], "input_audio_buffer.append");
    assert_eq!(append[0]["audio"].as_str().map(str::len), Some(216));
}

#[test]
fn refuses_a_session_confirmed_without_pcmu() {
    let mut session = RealtimeSession::new(&agent());
    feed(
        &mut session,
        json!({"type": "session.created", "session": {}}),
    );
    feed(
        &mut session,
        json!({"type": "session.updated", "session": {"audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}},
            "output": {"format": {"type": "audio/pcmu"}}}}}),
    );
    let events = events(&mut session);
    assert!(matches!(
        events.as_slice(),
        [SpeechEvent::Failed {
            reason: FailReason::Rejected,
            ..
        }]
    ));
    assert!(!session.is_ready());
}

#[test]
fn an_error_about_the_session_update_rejects_the_session() {
    let mut session = RealtimeSession::new(&agent());
    feed(
        &mut session,
        json!({"type": "session.created", "session": {}}),
    );
    feed(
        &mut session,
        json!({"type": "error", "event_id": "e3", "error": {"type": "invalid_request_error",
            "code": "unknown_parameter", "message": "Unknown parameter", "param": "session.x",
            "event_id": "voxgate-session-1"}}),
    );
    assert!(matches!(
        events(&mut session).as_slice(),
        [SpeechEvent::Failed {
            reason: FailReason::Rejected,
            ..
        }]
    ));
}

#[test]
fn an_alaw_call_switches_both_formats_to_pcma() {
    let mut session = ready(&agent());
    session.set_audio_format(crate::media::G711::Pcma);
    let out = sent(&mut session);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["type"], "session.update");
    assert_eq!(
        out[0]["session"]["audio"]["input"]["format"]["type"],
        "audio/pcma"
    );
    assert_eq!(
        out[0]["session"]["audio"]["output"]["format"]["type"],
        "audio/pcma"
    );
    session.set_audio_format(crate::media::G711::Pcma);
    assert!(sent(&mut session).is_empty(), "only on a change");
}

#[test]
fn truncation_is_clamped_and_never_zero_or_whole() {
    let mut session = ready(&agent());
    feed(&mut session, delta("item_a", 800)); // 100 ms
    feed(&mut session, delta("item_a", 800)); // 200 ms in all
    session.truncate("item_a", Duration::from_millis(120));
    let out = sent(&mut session);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["type"], "conversation.item.truncate");
    assert_eq!(out[0]["item_id"], "item_a");
    assert_eq!(out[0]["content_index"], 0);
    assert_eq!(out[0]["audio_end_ms"], 120);
    session.truncate("item_a", Duration::ZERO);
    session.truncate("item_a", Duration::from_millis(200));
    session.truncate("item_a", Duration::from_millis(900));
    session.truncate("item_unknown", Duration::from_millis(50));
    assert!(sent(&mut session).is_empty());
    assert_eq!(session.received_ms().get("item_a"), Some(&200));
}

#[test]
fn audio_deltas_become_audio_events_with_their_item() {
    let mut session = ready(&agent());
    feed(&mut session, delta("item_a", 1000));
    feed(
        &mut session,
        json!({"type": "response.output_audio.done", "item_id": "item_a", "response_id": "r",
               "output_index": 0, "content_index": 0}),
    );
    let events = events(&mut session);
    assert!(
        matches!(&events[0], SpeechEvent::Audio { item, audio } if item == "item_a" && audio.len() == 1000)
    );
    assert_eq!(
        events[1],
        SpeechEvent::AudioDone {
            item: "item_a".into()
        }
    );
}

#[test]
fn tool_outputs_wait_for_response_done_then_one_response_create() {
    let mut session = ready(&agent());
    feed(
        &mut session,
        json!({"type": "response.created", "response": {"id": "r1", "status": "in_progress"}}),
    );
    for call in ["c1", "c2"] {
        feed(
            &mut session,
            json!({"type": "response.function_call_arguments.done", "item_id": "f",
                   "call_id": call, "name": "lookup", "arguments": "{}", "output_index": 1,
                   "response_id": "r1"}),
        );
    }
    let calls: Vec<_> = events(&mut session)
        .into_iter()
        .filter(|e| matches!(e, SpeechEvent::ToolCall { .. }))
        .collect();
    assert_eq!(calls.len(), 2);
    session.tool_output("c1", "{\"a\":1}", true);
    assert!(
        sent(&mut session).is_empty(),
        "nothing while the response is active"
    );
    feed(
        &mut session,
        json!({"type": "response.done", "response": {"id": "r1", "status": "completed"}}),
    );
    let out = sent(&mut session);
    assert_eq!(
        out.len(),
        1,
        "c1's output, but no response.create while c2 is unanswered"
    );
    assert_eq!(out[0]["item"]["type"], "function_call_output");
    assert_eq!(out[0]["item"]["call_id"], "c1");
    session.tool_output("c2", "{\"b\":2}", true);
    let out = sent(&mut session);
    let types: Vec<_> = out
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types, ["conversation.item.create", "response.create"]);
    assert!(session.response_active());
    // A prompt now waits for that response to finish.
    session.prompt("Say goodbye.");
    assert!(sent(&mut session).is_empty());
    feed(
        &mut session,
        json!({"type": "response.created", "response": {"id": "r2"}}),
    );
    feed(
        &mut session,
        json!({"type": "response.done", "response": {"id": "r2", "status": "completed"}}),
    );
    let out = sent(&mut session);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["response"]["instructions"], "Say goodbye.");
}

#[test]
fn a_refused_response_create_does_not_leave_a_response_active() {
    let mut session = ready(&agent());
    session.prompt("Hello.");
    let out = sent(&mut session);
    let id = out[0]["event_id"].as_str().expect("event_id").to_owned();
    assert!(session.response_active());
    feed(
        &mut session,
        json!({"type": "error", "error": {"type": "invalid_request_error",
               "code": "conversation_already_has_active_response", "message": "busy",
               "event_id": id}}),
    );
    assert!(!session.response_active());
    assert!(matches!(
        events(&mut session).as_slice(),
        [SpeechEvent::Error { code, .. }] if code == "conversation_already_has_active_response"
    ));
}

#[test]
fn session_expired_fails_the_session() {
    let mut session = ready(&agent());
    feed(
        &mut session,
        json!({"type": "error", "error": {"type": "invalid_request_error",
               "code": "session_expired", "message": "Your session hit the maximum duration of 60 minutes."}}),
    );
    assert!(matches!(
        events(&mut session).as_slice(),
        [SpeechEvent::Failed {
            reason: FailReason::Expired,
            ..
        }]
    ));
}

#[test]
fn usage_transcripts_and_vad_events_are_reported() {
    let mut session = ready(&agent());
    feed(
        &mut session,
        json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": 100, "item_id": "u"}),
    );
    feed(
        &mut session,
        json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900, "item_id": "u"}),
    );
    feed(
        &mut session,
        json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": "u",
               "content_index": 0, "transcript": "What are your hours?"}),
    );
    feed(
        &mut session,
        json!({"type": "response.output_audio_transcript.done", "item_id": "a",
               "transcript": "Nine to five."}),
    );
    feed(
        &mut session,
        json!({"type": "response.done", "response": {"id": "r", "status": "completed",
            "usage": {"total_tokens": 60, "input_tokens": 40, "output_tokens": 20,
              "input_token_details": {"text_tokens": 30, "audio_tokens": 10, "image_tokens": 0,
                                      "cached_tokens": 16},
              "output_token_details": {"text_tokens": 5, "audio_tokens": 15}}}}),
    );
    feed(
        &mut session,
        json!({"type": "rate_limits.updated", "rate_limits": []}),
    );
    session.handle_message("not json at all");
    assert_eq!(
        events(&mut session),
        vec![
            SpeechEvent::SpeechStarted,
            SpeechEvent::SpeechStopped,
            SpeechEvent::Transcript {
                role: Role::Caller,
                text: "What are your hours?".into()
            },
            SpeechEvent::Transcript {
                role: Role::Agent,
                text: "Nine to five.".into()
            },
            SpeechEvent::Usage(TokenUsage {
                input_text: 30,
                input_audio: 10,
                input_image: 0,
                input_cached: 16,
                output_text: 5,
                output_audio: 15
            }),
            SpeechEvent::ResponseDone {
                status: "completed".into()
            },
        ]
    );
}

#[test]
fn interrupt_cancels_only_when_the_server_does_not() {
    let mut session = ready(&agent());
    feed(
        &mut session,
        json!({"type": "response.created", "response": {"id": "r"}}),
    );
    session.interrupt();
    assert!(
        sent(&mut session).is_empty(),
        "interrupt_response: the server cancels"
    );

    let mut manual = agent();
    manual.turn_detection = TurnDetection::ServerVad {
        threshold: None,
        prefix_padding_ms: None,
        silence_duration_ms: None,
        idle_timeout_ms: None,
        create_response: Some(true),
        interrupt_response: Some(false),
    };
    let mut session = ready(&manual);
    session.interrupt();
    assert!(sent(&mut session).is_empty(), "nothing to cancel");
    feed(
        &mut session,
        json!({"type": "response.created", "response": {"id": "r"}}),
    );
    session.interrupt();
    let out = sent(&mut session);
    assert_eq!(out[0]["type"], "response.cancel");
}

#[test]
fn transfer_destinations_become_the_transfer_call_tool_with_an_enum() {
    use crate::config::transfer::{TransferDestination, TransferMethod};
    let mut agent = agent();
    for (name, description) in [("sales", "Prices and orders"), ("support", "Broken things")] {
        agent.transfers.push(TransferDestination {
            name: name.into(),
            uri: None,
            extension: Some("2001".into()),
            description: description.into(),
            method: TransferMethod::Refer,
            announce: None,
        });
    }
    let mut session = RealtimeSession::new(&agent);
    feed(
        &mut session,
        json!({"type": "session.created", "event_id": "e1", "session": {}}),
    );
    let update = sent(&mut session);
    let tools = update[0]["session"]["tools"].as_array().expect("tools");
    let transfer = tools
        .iter()
        .find(|tool| tool["name"] == "transfer_call")
        .expect("transfer_call declared");
    assert_eq!(
        transfer["parameters"]["properties"]["destination"]["enum"],
        json!(["sales", "support"])
    );
    assert_eq!(
        transfer["parameters"]["required"],
        json!(["destination", "reason"])
    );
    let description = transfer["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("\"sales\": Prices and orders"),
        "{description}"
    );
    assert!(tools.iter().any(|tool| tool["name"] == END_CALL_TOOL));
    // Without destinations there is no transfer tool.
    let mut plain = RealtimeSession::new(&self::agent());
    feed(
        &mut plain,
        json!({"type": "session.created", "event_id": "e1", "session": {}}),
    );
    let update = sent(&mut plain);
    let tools = update[0]["session"]["tools"].as_array().expect("tools");
    assert!(!tools.iter().any(|tool| tool["name"] == "transfer_call"));
}

#[test]
fn caller_keys_become_a_user_text_item_then_one_response_never_during_another() {
    let mut session = RealtimeSession::new(&agent());
    feed(
        &mut session,
        json!({"type": "session.created", "event_id": "e1", "session": {}}),
    );
    feed(
        &mut session,
        json!({"type": "session.updated", "event_id": "e2", "session": pcmu_session()}),
    );
    sent(&mut session);
    feed(
        &mut session,
        json!({"type": "response.created", "event_id": "e3", "response": {"id": "r1", "status": "in_progress"}}),
    );
    session.caller_text("The caller pressed 5.");
    session.caller_text("The caller pressed 6.");
    assert!(
        sent(&mut session).is_empty(),
        "waits for the active response"
    );
    feed(
        &mut session,
        json!({"type": "response.done", "event_id": "e4", "response": {"id": "r1", "status": "completed", "output": []}}),
    );
    let out = sent(&mut session);
    let kinds: Vec<&str> = out.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "conversation.item.create",
            "conversation.item.create",
            "response.create"
        ]
    );
    assert_eq!(out[0]["item"]["role"], "user");
    assert_eq!(out[0]["item"]["content"][0]["type"], "input_text");
    assert_eq!(
        out[0]["item"]["content"][0]["text"],
        "The caller pressed 5."
    );
    assert_eq!(
        out[1]["item"]["content"][0]["text"],
        "The caller pressed 6."
    );
}

#[test]
fn a_response_event_with_a_malformed_body_still_moves_the_session() {
    // Found by fuzzing: a `response.created` whose `response` object was missing was dropped
    // whole, so the session thought no response was running and sent `response.create` into
    // an active one (the service refuses that, and peers are known to break the call).
    let mut session = ready(&agent());
    feed(
        &mut session,
        json!({"type": "response.created", "event_id": "e3"}),
    );
    session.caller_text("The caller pressed 5.");
    assert!(
        sent(&mut session).is_empty(),
        "a response is running: the text waits"
    );
    // A `response.done` whose `response` is not even an object still ends it.
    feed(
        &mut session,
        json!({"type": "response.done", "event_id": "e4", "response": "garbled"}),
    );
    let kinds: Vec<String> = sent(&mut session)
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(kinds, vec!["conversation.item.create", "response.create"]);
    // Usage with a malformed detail: the response still ends; the tokens are not guessed.
    feed(
        &mut session,
        json!({"type": "response.created", "response": {"id": "r2"}}),
    );
    feed(
        &mut session,
        json!({"type": "response.done", "response": {"id": "r2", "usage": {"input_token_details": {"text_tokens": "many"}}}}),
    );
    assert!(!session.response_active());
}

#[test]
fn a_function_call_without_a_name_is_still_a_call_the_model_waits_on() {
    let mut session = ready(&agent());
    feed(
        &mut session,
        json!({"type": "response.created", "response": {"id": "r1"}}),
    );
    feed(
        &mut session,
        json!({"type": "response.function_call_arguments.done", "call_id": "call_1"}),
    );
    let calls: Vec<(String, String)> = events(&mut session)
        .into_iter()
        .filter_map(|event| match event {
            SpeechEvent::ToolCall { call_id, name, .. } => Some((call_id, name)),
            _ => None,
        })
        .collect();
    assert_eq!(calls, vec![("call_1".to_owned(), String::new())]);
}
