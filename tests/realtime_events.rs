//! Every client event voxgate can build validates against the GA schema
//! (`../shared/realtime/events.schema.json`, `#/$defs/ClientEvent`), for every agent setting
//! that shapes `session.update`. The interop tests validate what really goes over the wire; this
//! covers the shapes a test call does not reach (cancel, semantic VAD, transcription, tools).
#![allow(clippy::disallowed_methods)]

mod common;

use common::realtime::schema;
use serde_json::Value;
use voxgate::config::{AgentKind, AgentSettings, NoiseReduction, ToolSettings, TurnDetection};
use voxgate::realtime::events;

fn valid(text: &str) {
    let event: Value = serde_json::from_str(text).expect("JSON");
    if let Err(error) = schema().validate_client(&event) {
        panic!("invalid client event: {error}\n{text}");
    }
}

fn agent() -> AgentSettings {
    AgentSettings {
        name: "assistant".into(),
        kind: AgentKind::Openai,
        model: "gpt-realtime".into(),
        ..AgentSettings::default()
    }
}

#[test]
fn session_updates_validate_for_every_agent_shape() {
    let tool = events::function_tool(
        "lookup_order",
        "Order status",
        &serde_json::json!({"type": "object", "properties": {"order": {"type": "string"}}}),
    );
    let mut full = agent();
    full.instructions = Some("Be brief.".into());
    full.voice = Some("cedar".into());
    full.speed = Some(1.2);
    full.max_output_tokens = Some(1024);
    full.transcription_model = Some("gpt-4o-mini-transcribe".into());
    full.transcription_language = Some("en".into());
    full.noise_reduction = Some(NoiseReduction::FarField);
    full.turn_detection = TurnDetection::ServerVad {
        threshold: Some(0.6),
        prefix_padding_ms: Some(300),
        silence_duration_ms: Some(500),
        idle_timeout_ms: Some(8_000),
        create_response: Some(true),
        interrupt_response: Some(false),
    };
    full.tools = vec![ToolSettings {
        name: "lookup_order".into(),
        description: "Order status".into(),
        parameters: serde_json::json!({"type": "object"}),
        url: "http://127.0.0.1/".into(),
        timeout_ms: 1_000,
    }];
    let mut semantic = agent();
    semantic.turn_detection = TurnDetection::SemanticVad {
        eagerness: Some("high".into()),
        create_response: None,
        interrupt_response: Some(true),
    };
    for agent in [agent(), full, semantic] {
        valid(&events::session_update(
            &agent,
            std::slice::from_ref(&tool),
            "cfg-1",
        ));
        valid(&events::session_update(&agent, &[], "cfg-2"));
    }
    // The session's own update with every built-in tool, transfer_call included.
    let mut transferring = agent();
    transferring.end_call_tool = true;
    transferring
        .transfers
        .push(voxgate::config::transfer::TransferDestination {
            name: "sales".into(),
            uri: Some("sip:sales@pbx.example.com".into()),
            extension: None,
            description: "Sales".into(),
            method: Default::default(),
            announce: None,
        });
    let mut session = voxgate::realtime::RealtimeSession::new(&transferring);
    use voxgate::call::speech::SpeechSession;
    session.handle_message(r#"{"type":"session.created","event_id":"e1","session":{}}"#);
    let update = session.poll_transmit().expect("session.update");
    assert!(update.contains("transfer_call"));
    valid(&update);
}

#[test]
fn audio_truncate_tool_output_and_response_events_validate() {
    valid(&events::append(&[0xff; 160]));
    valid(&events::append(&[0x00, 0x7f, 0x80]));
    valid(&events::truncate("item_abc", 1180, "t-1"));
    valid(&events::function_call_output(
        "call_1",
        "{\"status\":\"ok\"}",
        "o-1",
    ));
    valid(&events::response_create(None, "r-1"));
    valid(&events::response_create(Some("Say goodbye."), "r-2"));
    valid(&events::response_cancel("c-1"));
    valid(&events::audio_format_update("audio/pcma", "f-1"));
    valid(&events::user_text("The caller pressed 5.", "x-1"));
}
