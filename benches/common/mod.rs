//! What the Realtime benches share: an agent, a bridge configuration, the service's events and
//! a bridge whose session is confirmed.
// Each bench uses its own part of this module.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;
use voxgate::call::bridge::{Bridge, BridgeConfig};
use voxgate::config::{AgentKind, AgentSettings};
use voxgate::media::G711;
use voxgate::realtime::RealtimeSession;

/// Bytes of one delta: 600 ms of PCMU (the size the Realtime service typically sends).
pub const DELTA_BYTES: usize = 4_800;

pub fn agent() -> AgentSettings {
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

pub fn session_created() -> String {
    json!({"type": "session.created", "event_id": "event_1", "session": {}}).to_string()
}

pub fn session_updated() -> String {
    json!({"type": "session.updated", "event_id": "event_2", "session": {
        "type": "realtime",
        "audio": {
            "input": {"format": {"type": "audio/pcmu"}},
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
        },
    }})
    .to_string()
}

/// A `response.output_audio.delta` of [`DELTA_BYTES`] as the service sends it (every field of
/// the GA event).
pub fn delta(item: &str) -> String {
    let audio: Vec<u8> = (0..DELTA_BYTES).map(|i| (i % 251) as u8).collect();
    json!({
        "type": "response.output_audio.delta",
        "event_id": "event_CZ0pNhnDmTe8DeVOPqSBA",
        "response_id": "resp_CZ0pMcbQ4SQm7DbsMYV2V",
        "item_id": item,
        "output_index": 0,
        "content_index": 0,
        "delta": base64::engine::general_purpose::STANDARD.encode(audio),
    })
    .to_string()
}

pub fn config() -> BridgeConfig {
    BridgeConfig {
        codec: G711::Pcmu,
        ptime: Duration::from_millis(20),
        tools: Vec::new(),
        session_limit: Duration::from_secs(3_600),
        goodbye_margin: Duration::from_secs(30),
        greeting: None,
        apology: None,
        transfers: Vec::new(),
        dtmf_rules: Vec::new(),
        dtmf_to_model: true,
        last_words_grace: Duration::from_millis(500),
    }
}

/// A bridge whose session is confirmed (appends flow), everything it queued drained.
pub fn ready_bridge(now: Instant) -> Bridge<RealtimeSession> {
    let mut bridge = Bridge::new(RealtimeSession::new(&agent()), config());
    bridge.handle_message(now, &session_created());
    bridge.handle_message(now, &session_updated());
    assert!(bridge.is_ready(), "the bench bridge must be ready");
    while bridge.poll_transmit().is_some() {}
    while bridge.poll_output().is_some() {}
    bridge
}
