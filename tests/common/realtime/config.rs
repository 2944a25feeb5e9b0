//! The session object: server defaults (what `session.created` shows) and how a
//! `session.update` merges into it (PROTOCOL.md §2.1: only fields present change).
//!
//! Merge rule: `audio`, `audio.input` and `audio.output` merge key by key; `turn_detection`
//! merges when its `type` stays the same and is replaced (with the new type's defaults filled
//! in) otherwise; every other field (formats, tools, transcription, …) is replaced whole, so a
//! format object never keeps a stale `rate`.

use serde_json::{json, Map, Value};

/// `instructions` of a fresh session (the real server shows its default persona prompt).
pub const DEFAULT_INSTRUCTIONS: &str = "<stand-in default instructions>";

/// The session a connection starts with, like `examples/normal-turn.jsonl`: PCM 24 kHz both
/// ways, server VAD, voice `marin`, no tools.
pub fn default_session(id: &str, model: &str, expires_at: u64) -> Value {
    json!({
        "type": "realtime",
        "object": "realtime.session",
        "id": id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": null,
        "truncation": "auto",
        "prompt": null,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": null,
                "noise_reduction": null,
                "turn_detection": vad_defaults("server_vad"),
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "marin",
                "speed": 1.0,
            },
        },
        "include": null,
    })
}

/// Applies a `session.update`'s `session` object to the effective session.
pub fn merge_session(session: &mut Value, update: &Value) {
    let (Some(session), Some(update)) = (session.as_object_mut(), update.as_object()) else {
        return;
    };
    for (key, value) in update {
        if key == "audio" {
            let audio = session.entry("audio").or_insert_with(|| json!({}));
            merge_audio(audio, value);
        } else {
            session.insert(key.clone(), value.clone());
        }
    }
}

fn merge_audio(audio: &mut Value, update: &Value) {
    let (Some(audio), Some(update)) = (audio.as_object_mut(), update.as_object()) else {
        return;
    };
    for (direction, fields) in update {
        let Some(fields) = fields.as_object() else {
            continue;
        };
        let target = audio
            .entry(direction.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(target) = target.as_object_mut() else {
            continue;
        };
        for (key, value) in fields {
            if key == "turn_detection" {
                let current = target.entry(key.clone()).or_insert(Value::Null);
                *current = merged_turn_detection(current, value);
            } else {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

fn merged_turn_detection(current: &Value, update: &Value) -> Value {
    let Some(fields) = update.as_object() else {
        return Value::Null;
    };
    let same_type = current.get("type").is_some() && current.get("type") == fields.get("type");
    let mut merged = if same_type {
        current.clone()
    } else {
        vad_defaults(
            fields
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        )
    };
    if let Some(merged) = merged.as_object_mut() {
        for (key, value) in fields {
            merged.insert(key.clone(), value.clone());
        }
    }
    merged
}

/// Server-reported defaults per VAD type (`silence_duration_ms` 200 as in live
/// `session.created` examples, PROTOCOL.md §11).
fn vad_defaults(vad_type: &str) -> Value {
    match vad_type {
        "semantic_vad" => json!({"type": "semantic_vad", "eagerness": "auto",
                                 "create_response": true, "interrupt_response": true}),
        _ => json!({"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                    "silence_duration_ms": 200, "idle_timeout_ms": null,
                    "create_response": true, "interrupt_response": true}),
    }
}

/// Audio bytes per millisecond of a format `type` (G.711: 8; PCM 24 kHz 16-bit: 48).
pub fn bytes_per_ms(format_type: Option<&Value>) -> usize {
    match format_type.and_then(Value::as_str) {
        Some("audio/pcm") => 48,
        _ => 8,
    }
}
