//! OpenAI Realtime (GA) events: the client events voxgate sends, built exactly in the GA shapes
//! (the server rejects unknown fields), and the server events it reads, parsed leniently
//! (unknown event types and extra fields are ignored; the service adds them regularly).
//!
//! Wire reference: `realtime/PROTOCOL.md` in the project's shared material; every client event
//! built here is validated against its JSON schema in the tests.

use std::borrow::Cow;

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{AgentSettings, TurnDetection};

/// `input_audio_buffer.append` for one frame of audio (hand-built: it goes out 50 times a
/// second per call, and base64 never needs JSON escaping).
pub fn append(audio: &[u8]) -> String {
    const HEAD: &str = r#"{"type":"input_audio_buffer.append","audio":""#;
    let mut text = String::with_capacity(HEAD.len() + audio.len().div_ceil(3) * 4 + 2);
    text.push_str(HEAD);
    base64::engine::general_purpose::STANDARD.encode_string(audio, &mut text);
    text.push_str("\"}");
    text
}

/// `session.update` configuring PCMU both ways plus the agent's profile; `tools` are the
/// function tools (built-ins included) as the API wants them.
pub fn session_update(agent: &AgentSettings, tools: &[Value], event_id: &str) -> String {
    let mut input = json!({ "format": { "type": "audio/pcmu" } });
    if let Some(model) = &agent.transcription_model {
        let mut transcription = json!({ "model": model });
        if let Some(language) = &agent.transcription_language {
            transcription["language"] = json!(language);
        }
        input["transcription"] = transcription;
    }
    if let Some(noise) = agent.noise_reduction {
        input["noise_reduction"] = json!({ "type": noise.as_str() });
    }
    input["turn_detection"] = turn_detection(&agent.turn_detection);
    let mut output = json!({ "format": { "type": "audio/pcmu" } });
    if let Some(voice) = &agent.voice {
        output["voice"] = json!(voice);
    }
    if let Some(speed) = agent.speed {
        output["speed"] = json!(speed);
    }
    let mut session = json!({
        "type": "realtime",
        "output_modalities": ["audio"],
        "audio": { "input": input, "output": output },
    });
    if let Some(instructions) = &agent.instructions {
        session["instructions"] = json!(instructions);
    }
    if !tools.is_empty() {
        session["tools"] = Value::Array(tools.to_vec());
        session["tool_choice"] = json!("auto");
    }
    if let Some(tokens) = agent.max_output_tokens {
        session["max_output_tokens"] = json!(tokens);
    }
    json!({ "type": "session.update", "event_id": event_id, "session": session }).to_string()
}

fn turn_detection(detection: &TurnDetection) -> Value {
    let mut value = match detection {
        TurnDetection::ServerVad {
            threshold,
            prefix_padding_ms,
            silence_duration_ms,
            idle_timeout_ms,
            ..
        } => {
            let mut value = json!({ "type": "server_vad" });
            if let Some(threshold) = threshold {
                value["threshold"] = json!(threshold);
            }
            if let Some(padding) = prefix_padding_ms {
                value["prefix_padding_ms"] = json!(padding);
            }
            if let Some(silence) = silence_duration_ms {
                value["silence_duration_ms"] = json!(silence);
            }
            if let Some(idle) = idle_timeout_ms {
                value["idle_timeout_ms"] = json!(idle);
            }
            value
        }
        TurnDetection::SemanticVad { eagerness, .. } => {
            let mut value = json!({ "type": "semantic_vad" });
            if let Some(eagerness) = eagerness {
                value["eagerness"] = json!(eagerness);
            }
            value
        }
    };
    let (TurnDetection::ServerVad {
        create_response,
        interrupt_response,
        ..
    }
    | TurnDetection::SemanticVad {
        create_response,
        interrupt_response,
        ..
    }) = detection;
    if let Some(create) = create_response {
        value["create_response"] = json!(create);
    }
    if let Some(interrupt) = interrupt_response {
        value["interrupt_response"] = json!(interrupt);
    }
    value
}

/// `session.update` switching both audio directions to `format` (`audio/pcma` for an A-law call).
pub fn audio_format_update(format: &str, event_id: &str) -> String {
    json!({
        "type": "session.update",
        "event_id": event_id,
        "session": {
            "type": "realtime",
            "audio": {
                "input": { "format": { "type": format } },
                "output": { "format": { "type": format } },
            },
        },
    })
    .to_string()
}

/// A function tool definition.
pub fn function_tool(name: &str, description: &str, parameters: &Value) -> Value {
    json!({
        "type": "function",
        "name": name,
        "description": description,
        "parameters": parameters,
    })
}

/// `conversation.item.truncate`: the caller heard `audio_end_ms` of assistant item `item_id`.
pub fn truncate(item_id: &str, audio_end_ms: u64, event_id: &str) -> String {
    json!({
        "type": "conversation.item.truncate",
        "event_id": event_id,
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms,
    })
    .to_string()
}

/// `conversation.item.create` with a `function_call_output`.
pub fn function_call_output(call_id: &str, output: &str, event_id: &str) -> String {
    json!({
        "type": "conversation.item.create",
        "event_id": event_id,
        "item": { "type": "function_call_output", "call_id": call_id, "output": output },
    })
    .to_string()
}

/// `conversation.item.create` with a user message of `text` (`input_text`).
pub fn user_text(text: &str, event_id: &str) -> String {
    json!({
        "type": "conversation.item.create",
        "event_id": event_id,
        "item": {
            "type": "message",
            "role": "user",
            "content": [{ "type": "input_text", "text": text }],
        },
    })
    .to_string()
}

/// `response.create`, optionally with instructions for this response only.
pub fn response_create(instructions: Option<&str>, event_id: &str) -> String {
    match instructions {
        Some(instructions) => json!({
            "type": "response.create",
            "event_id": event_id,
            "response": { "instructions": instructions },
        }),
        None => json!({ "type": "response.create", "event_id": event_id }),
    }
    .to_string()
}

/// `response.cancel` (only needed when the agent turned `interrupt_response` off).
pub fn response_cancel(event_id: &str) -> String {
    json!({ "type": "response.cancel", "event_id": event_id }).to_string()
}

/// The server events voxgate acts on; everything else is [`ServerEvent::Other`].
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum ServerEvent<'a> {
    /// First event of a session.
    #[serde(rename = "session.created")]
    SessionCreated {
        /// The effective configuration (defaults).
        session: Value,
    },
    /// Answer to `session.update`.
    #[serde(rename = "session.updated")]
    SessionUpdated {
        /// The full effective configuration.
        session: Value,
    },
    /// An error; most leave the session open.
    #[serde(rename = "error")]
    Error {
        /// What went wrong (see `lenient`).
        #[serde(default, deserialize_with = "lenient")]
        error: ErrorInfo,
    },
    /// The caller started speaking.
    #[serde(rename = "input_audio_buffer.speech_started")]
    SpeechStarted {},
    /// The caller stopped speaking.
    #[serde(rename = "input_audio_buffer.speech_stopped")]
    SpeechStopped {},
    /// A response started.
    #[serde(rename = "response.created")]
    ResponseCreated {
        /// The response (see `lenient`: the event counts even when this is malformed).
        #[serde(default, deserialize_with = "lenient")]
        response: ResponseInfo,
    },
    /// Model audio.
    #[serde(rename = "response.output_audio.delta")]
    AudioDelta {
        /// The assistant item it belongs to.
        item_id: String,
        /// Base64 audio.
        #[serde(borrow)]
        delta: Cow<'a, str>,
    },
    /// The end of an item's audio (also on cancel).
    #[serde(rename = "response.output_audio.done")]
    AudioDone {
        /// The assistant item.
        item_id: String,
    },
    /// What the model said, as text.
    #[serde(rename = "response.output_audio_transcript.done")]
    AudioTranscriptDone {
        /// The transcript.
        #[serde(default)]
        transcript: String,
    },
    /// A function call's arguments are complete.
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone {
        /// Correlates the output.
        call_id: String,
        /// The function (missing: answered as an unknown tool, so the model is not left
        /// waiting for an output).
        #[serde(default)]
        name: String,
        /// A JSON text.
        #[serde(default)]
        arguments: String,
    },
    /// A response finished.
    #[serde(rename = "response.done")]
    ResponseDone {
        /// The response, with usage (see `lenient`).
        #[serde(default, deserialize_with = "lenient")]
        response: ResponseInfo,
    },
    /// What the caller said, as text (asynchronous transcription).
    #[serde(rename = "conversation.item.input_audio_transcription.completed")]
    InputTranscriptCompleted {
        /// The transcript.
        #[serde(default)]
        transcript: String,
    },
    /// Transcription failed for a caller turn.
    #[serde(rename = "conversation.item.input_audio_transcription.failed")]
    InputTranscriptFailed {
        /// Why (see `lenient`).
        #[serde(default, deserialize_with = "lenient")]
        error: ErrorInfo,
    },
    /// Acknowledges a truncate.
    #[serde(rename = "conversation.item.truncated")]
    Truncated {
        /// The item.
        item_id: String,
        /// Where it was cut.
        audio_end_ms: u64,
    },
    /// Anything else.
    #[serde(other)]
    Other,
}

/// The `error` object.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorInfo {
    /// `invalid_request_error`, `server_error`, …
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Machine-readable code.
    #[serde(default)]
    pub code: Option<String>,
    /// Human-readable message.
    #[serde(default)]
    pub message: Option<String>,
    /// The client event that caused it.
    #[serde(default)]
    pub event_id: Option<String>,
}

/// The `response` object of `response.created` / `response.done`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResponseInfo {
    /// Its id.
    #[serde(default)]
    pub id: Option<String>,
    /// `in_progress`, `completed`, `cancelled`, `failed`, `incomplete`.
    #[serde(default)]
    pub status: Option<String>,
    /// Billing.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// `response.usage`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Usage {
    /// Input token details.
    #[serde(default)]
    pub input_token_details: Option<InputTokenDetails>,
    /// Output token details.
    #[serde(default)]
    pub output_token_details: Option<OutputTokenDetails>,
}

/// `usage.input_token_details`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InputTokenDetails {
    /// Text.
    #[serde(default)]
    pub text_tokens: u64,
    /// Audio.
    #[serde(default)]
    pub audio_tokens: u64,
    /// Images.
    #[serde(default)]
    pub image_tokens: u64,
    /// Served from cache (a subset of the above).
    #[serde(default)]
    pub cached_tokens: u64,
}

/// `usage.output_token_details`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OutputTokenDetails {
    /// Text.
    #[serde(default)]
    pub text_tokens: u64,
    /// Audio.
    #[serde(default)]
    pub audio_tokens: u64,
}

/// Reads a field that voxgate only takes details from, never fails on it: the event's type is
/// what changes the session's state (a `response.done` ends the response whatever its
/// `response` object holds), so a malformed or missing detail falls back to the default
/// instead of dropping the whole event and leaving the session out of step with the service.
fn lenient<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let value = Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

/// Parses one server frame; `None` when it is not a JSON event at all.
pub fn parse(text: &str) -> Option<ServerEvent<'_>> {
    serde_json::from_str(text).ok()
}

/// The `audio.{input,output}.format.type` of a session object.
pub fn audio_format<'v>(session: &'v Value, direction: &str) -> Option<&'v str> {
    session
        .get("audio")?
        .get(direction)?
        .get("format")?
        .get("type")?
        .as_str()
}

/// Decodes base64 audio; `None` when it is not valid base64.
pub fn decode_audio(delta: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(delta).ok()
}
