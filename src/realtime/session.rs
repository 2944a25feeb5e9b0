//! One OpenAI Realtime session, sans-IO: the GA protocol rules a telephony bridge must keep.
//!
//! ```text
//!  AwaitingCreated ─session.created─> AwaitingUpdated ─session.updated (pcmu both ways)─> Ready
//!        │                                  │ formats refused → Failed(rejected)            │
//!        └──────────────── error / session_expired / close ─────────────> Failed ◄──────────┘
//! ```
//! Rules kept here (PROTOCOL.md §0, §3, §5):
//! - `session.update` right after `session.created`; Ready only on a `session.updated` that
//!   confirms `audio/pcmu` in and out (no transcoding anywhere).
//! - Caller audio is appended only once Ready (before that it would hit the wrong format).
//! - Never a `response.create` while a response is active: greetings, prompts and the follow-up
//!   after tool outputs wait for `response.done`; tool outputs of one response go out together,
//!   then exactly one `response.create` once every call of that response has its output.
//! - Truncation is clamped to the audio the server produced for the item; a zero-length truncate
//!   or one covering the whole item is never sent.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::events::{self, ServerEvent};
use crate::call::speech::{FailReason, Role, SpeechEvent, SpeechSession, TokenUsage};
use crate::config::AgentSettings;

/// The built-in tool that ends the call after the current utterance.
pub const END_CALL_TOOL: &str = "end_call";

/// Audio bytes per millisecond of G.711 (8 kHz, one byte per sample).
const BYTES_PER_MS: u64 = 8;

/// Assistant items remembered for truncation (older ones can no longer be playing).
const ITEMS_REMEMBERED: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingCreated,
    AwaitingUpdated,
    Ready,
    Failed,
}

/// What waits for the active response to finish.
#[derive(Debug, Default)]
struct Pending {
    /// Tool outputs to send, in order.
    outputs: Vec<(String, String)>,
    /// A `response.create` is wanted once outputs are out (and tool calls are all answered).
    respond: bool,
    /// Instructions for prompts asked for while busy.
    prompts: VecDeque<String>,
}

/// One Realtime session's protocol state.
pub struct RealtimeSession {
    phase: Phase,
    session_update: String,
    /// The audio format both directions use (`audio/pcmu` unless the call negotiated PCMA).
    format: &'static str,
    interrupt_response: bool,
    response_active: bool,
    /// Tool calls of the current response still waiting for an output.
    outstanding_calls: usize,
    pending: Pending,
    /// Audio received per assistant item, in bytes (for clamping truncation).
    items: VecDeque<(String, u64)>,
    outbox: VecDeque<String>,
    events: VecDeque<SpeechEvent>,
    next_event_id: u64,
    /// The event id of the `response.create` voxgate sent last (an error naming it means no
    /// response is coming).
    last_create: Option<String>,
}

/// The `transfer_call` function: the destinations as an enum, each described for the model.
fn transfer_tool(agent: &AgentSettings) -> Value {
    let names: Vec<&str> = agent.transfers.iter().map(|d| d.name.as_str()).collect();
    let listing: Vec<String> = agent
        .transfers
        .iter()
        .map(|d| format!("\"{}\": {}", d.name, d.description))
        .collect();
    events::function_tool(
        crate::call::transfer::TRANSFER_TOOL,
        &format!(
            "Hand the caller to a person. First tell the caller in one short sentence that you \
             are transferring them; the transfer starts when you finish speaking. If it fails \
             you get the reason back: apologise and offer to help or take a message. \
             Destinations: {}.",
            listing.join("; ")
        ),
        &serde_json::json!({
            "type": "object",
            "properties": {
                "destination": {
                    "type": "string",
                    "enum": names,
                    "description": "Who to transfer the caller to.",
                },
                "reason": {
                    "type": "string",
                    "description": "Why the caller needs a person, in a few words.",
                },
                "summary": {
                    "type": "string",
                    "description": "What the person taking over should know: the caller's \
                                    name and request, in one or two sentences.",
                },
            },
            "required": ["destination", "reason"],
        }),
    )
}

impl RealtimeSession {
    /// A session for `agent`, with its HTTP `tools` plus the built-ins it enables.
    pub fn new(agent: &AgentSettings) -> RealtimeSession {
        let mut tools: Vec<Value> = agent
            .tools
            .iter()
            .map(|tool| events::function_tool(&tool.name, &tool.description, &tool.parameters))
            .collect();
        if !agent.transfers.is_empty() {
            tools.push(transfer_tool(agent));
        }
        if agent.end_call_tool {
            tools.push(events::function_tool(
                END_CALL_TOOL,
                "End the phone call. Say goodbye first; the call ends when you finish speaking.",
                &serde_json::json!({"type": "object", "properties": {}}),
            ));
        }
        RealtimeSession {
            phase: Phase::AwaitingCreated,
            session_update: events::session_update(agent, &tools, "voxgate-session-1"),
            format: "audio/pcmu",
            interrupt_response: agent.turn_detection.interrupts_response(),
            response_active: false,
            outstanding_calls: 0,
            pending: Pending::default(),
            items: VecDeque::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            next_event_id: 1,
            last_create: None,
        }
    }

    /// True once `session.updated` confirmed the configuration.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// True while the server generates a response.
    pub fn response_active(&self) -> bool {
        self.response_active
    }

    fn event_id(&mut self, kind: &str) -> String {
        self.next_event_id += 1;
        format!("voxgate-{kind}-{}", self.next_event_id)
    }

    fn fail(&mut self, reason: FailReason, detail: String) {
        if self.phase == Phase::Failed {
            return;
        }
        self.phase = Phase::Failed;
        self.events
            .push_back(SpeechEvent::Failed { reason, detail });
    }

    fn handle_event(&mut self, event: ServerEvent<'_>) {
        match event {
            ServerEvent::SessionCreated { .. } => {
                if self.phase == Phase::AwaitingCreated {
                    self.phase = Phase::AwaitingUpdated;
                    self.outbox.push_back(self.session_update.clone());
                }
            }
            ServerEvent::SessionUpdated { session } => self.handle_session_updated(&session),
            ServerEvent::Error { error } => {
                let code = error.code.clone().unwrap_or_else(|| "unknown".to_owned());
                let message = error.message.clone().unwrap_or_default();
                match code.as_str() {
                    "session_expired" => self.fail(FailReason::Expired, message),
                    "beta_api_shape_disabled" => self.fail(FailReason::Rejected, message),
                    _ if self.phase == Phase::AwaitingUpdated
                        && error.event_id.as_deref() == Some("voxgate-session-1") =>
                    {
                        self.fail(
                            FailReason::Rejected,
                            format!("session.update refused: {code}: {message}"),
                        )
                    }
                    _ => {
                        if error.event_id.is_some() && error.event_id == self.last_create {
                            // The response.create was refused: no response is running.
                            self.response_active = false;
                        }
                        self.events.push_back(SpeechEvent::Error { code, message });
                    }
                }
            }
            ServerEvent::SpeechStarted {} => self.events.push_back(SpeechEvent::SpeechStarted),
            ServerEvent::SpeechStopped {} => self.events.push_back(SpeechEvent::SpeechStopped),
            ServerEvent::ResponseCreated { .. } => {
                self.response_active = true;
                self.outstanding_calls = 0;
                self.events.push_back(SpeechEvent::ResponseStarted);
            }
            ServerEvent::AudioDelta { item_id, delta } => {
                let Some(audio) = events::decode_audio(&delta) else {
                    self.events.push_back(SpeechEvent::Error {
                        code: "bad_audio".to_owned(),
                        message: "audio delta is not valid base64".to_owned(),
                    });
                    return;
                };
                self.count_item_audio(&item_id, audio.len() as u64);
                self.events.push_back(SpeechEvent::Audio {
                    item: item_id,
                    audio: Bytes::from(audio),
                });
            }
            ServerEvent::AudioDone { item_id } => {
                self.events
                    .push_back(SpeechEvent::AudioDone { item: item_id });
            }
            ServerEvent::AudioTranscriptDone { transcript } => {
                if !transcript.is_empty() {
                    self.events.push_back(SpeechEvent::Transcript {
                        role: Role::Agent,
                        text: transcript,
                    });
                }
            }
            ServerEvent::InputTranscriptCompleted { transcript } => {
                if !transcript.is_empty() {
                    self.events.push_back(SpeechEvent::Transcript {
                        role: Role::Caller,
                        text: transcript,
                    });
                }
            }
            ServerEvent::InputTranscriptFailed { error } => {
                self.events.push_back(SpeechEvent::Error {
                    code: error
                        .code
                        .unwrap_or_else(|| "transcription_failed".to_owned()),
                    message: error.message.unwrap_or_default(),
                });
            }
            ServerEvent::FunctionCallArgumentsDone {
                call_id,
                name,
                arguments,
            } => {
                self.outstanding_calls += 1;
                self.events.push_back(SpeechEvent::ToolCall {
                    call_id,
                    name,
                    arguments,
                });
            }
            ServerEvent::ResponseDone { response } => {
                self.response_active = false;
                if let Some(usage) = response.usage {
                    let input = usage.input_token_details.unwrap_or_default();
                    let output = usage.output_token_details.unwrap_or_default();
                    self.events.push_back(SpeechEvent::Usage(TokenUsage {
                        input_text: input.text_tokens,
                        input_audio: input.audio_tokens,
                        input_image: input.image_tokens,
                        input_cached: input.cached_tokens,
                        output_text: output.text_tokens,
                        output_audio: output.audio_tokens,
                    }));
                }
                self.events.push_back(SpeechEvent::ResponseDone {
                    status: response.status.unwrap_or_else(|| "unknown".to_owned()),
                });
                self.flush_pending();
            }
            ServerEvent::Truncated { .. } | ServerEvent::Other => {}
        }
    }

    fn handle_session_updated(&mut self, session: &Value) {
        if self.phase != Phase::AwaitingUpdated {
            return;
        }
        let input = events::audio_format(session, "input");
        let output = events::audio_format(session, "output");
        if input != Some("audio/pcmu") || output != Some("audio/pcmu") {
            self.fail(
                FailReason::Rejected,
                format!(
                    "session confirmed with audio formats {} in / {} out instead of audio/pcmu",
                    input.unwrap_or("?"),
                    output.unwrap_or("?")
                ),
            );
            return;
        }
        self.phase = Phase::Ready;
        self.events.push_back(SpeechEvent::Ready);
        if self.format != "audio/pcmu" {
            let format = self.format;
            self.format = "audio/pcmu";
            self.switch_format(format);
        }
    }

    fn switch_format(&mut self, format: &'static str) {
        if format == self.format {
            return;
        }
        self.format = format;
        if self.phase != Phase::Ready {
            return; // applied when the session is confirmed
        }
        let id = self.event_id("format");
        self.outbox
            .push_back(events::audio_format_update(format, &id));
    }

    fn count_item_audio(&mut self, item: &str, bytes: u64) {
        if let Some((_, received)) = self.items.iter_mut().find(|(id, _)| id == item) {
            *received += bytes;
            return;
        }
        if self.items.len() == ITEMS_REMEMBERED {
            self.items.pop_front();
        }
        self.items.push_back((item.to_owned(), bytes));
    }

    /// Sends what waited for the active response to end: tool outputs (then one
    /// `response.create` once no call is unanswered), else one queued prompt.
    fn flush_pending(&mut self) {
        if self.response_active || self.phase != Phase::Ready {
            return;
        }
        for (call_id, output) in std::mem::take(&mut self.pending.outputs) {
            let id = self.event_id("output");
            self.outbox
                .push_back(events::function_call_output(&call_id, &output, &id));
        }
        if self.pending.respond && self.outstanding_calls == 0 {
            self.pending.respond = false;
            let id = self.event_id("response");
            self.outbox.push_back(events::response_create(None, &id));
            self.response_active = true;
            self.last_create = Some(id);
            return;
        }
        if self.outstanding_calls == 0 {
            if let Some(instructions) = self.pending.prompts.pop_front() {
                let id = self.event_id("prompt");
                self.outbox
                    .push_back(events::response_create(Some(&instructions), &id));
                self.response_active = true;
                self.last_create = Some(id);
            }
        }
    }
}

impl SpeechSession for RealtimeSession {
    fn handle_message(&mut self, text: &str) {
        match events::parse(text) {
            Some(event) => self.handle_event(event),
            None => tracing::debug!(
                frame = %text.chars().take(200).collect::<String>(),
                "unreadable Realtime event ignored"
            ),
        }
    }

    fn send_audio(&mut self, audio: &[u8]) {
        if self.phase == Phase::Ready && !audio.is_empty() {
            self.outbox.push_back(events::append(audio));
        }
    }

    fn truncate(&mut self, item: &str, heard: Duration) {
        if self.phase != Phase::Ready {
            return;
        }
        let Some(received) = self
            .items
            .iter()
            .find(|(id, _)| id == item)
            .map(|(_, bytes)| bytes / BYTES_PER_MS)
        else {
            return;
        };
        let heard_ms = (heard.as_millis() as u64).min(received);
        // Nothing heard: nothing to cut (0 is refused by peers). Everything heard: the
        // conversation is already right.
        if heard_ms == 0 || heard_ms >= received {
            return;
        }
        let id = self.event_id("truncate");
        self.outbox.push_back(events::truncate(item, heard_ms, &id));
    }

    fn interrupt(&mut self) {
        if self.response_active && !self.interrupt_response && self.phase == Phase::Ready {
            let id = self.event_id("cancel");
            self.outbox.push_back(events::response_cancel(&id));
        }
    }

    fn tool_output(&mut self, call_id: &str, output: &str, respond: bool) {
        self.outstanding_calls = self.outstanding_calls.saturating_sub(1);
        self.pending
            .outputs
            .push((call_id.to_owned(), output.to_owned()));
        self.pending.respond |= respond;
        self.flush_pending();
    }

    fn set_audio_format(&mut self, law: crate::media::G711) {
        let format = match law {
            crate::media::G711::Pcmu => "audio/pcmu",
            crate::media::G711::Pcma => "audio/pcma",
        };
        if self.phase == Phase::Ready {
            self.switch_format(format);
        } else {
            self.format = format;
        }
    }

    fn prompt(&mut self, instructions: &str) {
        self.pending.prompts.push_back(instructions.to_owned());
        self.flush_pending();
    }

    fn responding(&self) -> bool {
        self.response_active
    }

    fn poll_transmit(&mut self) -> Option<String> {
        self.outbox.pop_front()
    }

    fn poll_event(&mut self) -> Option<SpeechEvent> {
        self.events.pop_front()
    }
}

impl std::fmt::Debug for RealtimeSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeSession")
            .field("phase", &self.phase)
            .field("response_active", &self.response_active)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;

/// Helper for tests elsewhere: the map of item ids to received milliseconds.
#[cfg(test)]
impl RealtimeSession {
    pub(crate) fn received_ms(&self) -> std::collections::HashMap<String, u64> {
        self.items
            .iter()
            .map(|(id, bytes)| (id.clone(), bytes / BYTES_PER_MS))
            .collect()
    }
}
