//! What the stand-in saw and did, per session: the inspection API tests assert on.
//!
//! All of it lives in one [`StandInState`] behind a mutex; the server updates it as events
//! happen and tests read snapshots (`RealtimeStandIn::state`) or wait on it
//! (`RealtimeStandIn::wait_until`). Times are `Instant`s taken when the stand-in received or
//! emitted the event.

use std::time::Instant;

use serde_json::Value;

/// Everything the stand-in recorded.
#[derive(Debug, Clone, Default)]
pub struct StandInState {
    /// One per WebSocket handshake attempt (accepted or not), in order of arrival.
    pub sessions: Vec<SessionRecord>,
}

impl StandInState {
    /// Session `index`, if it exists yet.
    pub fn session(&self, index: usize) -> Option<&SessionRecord> {
        self.sessions.get(index)
    }

    /// Every violation and stand-in fault of every session, as readable lines.
    pub fn problems(&self) -> Vec<String> {
        self.sessions
            .iter()
            .flat_map(|session| {
                let violations = session.violations.iter().map(move |v| {
                    format!(
                        "session {} ({}): {}{}",
                        session.index,
                        session.id,
                        v.message,
                        v.event
                            .as_ref()
                            .map(|e| format!("\n    event: {}", abbreviate(e)))
                            .unwrap_or_default()
                    )
                });
                let faults = session.faults.iter().map(move |f| {
                    format!(
                        "session {} ({}): STAND-IN FAULT: {f}",
                        session.index, session.id
                    )
                });
                violations.chain(faults)
            })
            .collect()
    }
}

/// The opening HTTP request of a session.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    /// Request path (`/v1/realtime`).
    pub path: String,
    /// Raw query string (without `?`).
    pub query: String,
    /// The `model` query parameter.
    pub model: Option<String>,
    /// The key from `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// The `OpenAI-Beta` header, if sent (it must not be).
    pub openai_beta: Option<String>,
    /// All request headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Whether the WebSocket upgrade was accepted.
    pub accepted: bool,
}

impl Handshake {
    /// The value of a request header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One session (one WebSocket connection).
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// Position in [`StandInState::sessions`].
    pub index: usize,
    /// The `sess_…` id sent in `session.created`.
    pub id: String,
    /// When the handshake completed.
    pub connected_at: Instant,
    /// The opening request.
    pub handshake: Handshake,
    /// The effective session object (as sent in the last `session.created`/`session.updated`,
    /// or the merged config if the behaviour does not confirm).
    pub config: Value,
    /// How many `session.update`s were applied.
    pub session_updates: usize,
    /// Whether `session.updated` has been sent.
    pub confirmed: bool,
    /// Every client text frame in order (invalid ones too).
    pub client_events: Vec<ClientEventRecord>,
    /// Every server event sent, in order.
    pub server_events: Vec<ServerEventRecord>,
    /// The decoded caller audio of all `input_audio_buffer.append`s, concatenated.
    pub input_audio: Vec<u8>,
    /// One per `input_audio_buffer.append`.
    pub appends: Vec<AppendRecord>,
    /// One per assistant message item the stand-in produced.
    pub assistant_items: Vec<AssistantItemRecord>,
    /// One per response, in order of `response.created`.
    pub responses: Vec<ResponseRecord>,
    /// Function calls the stand-in made.
    pub function_calls: Vec<FunctionCallRecord>,
    /// `function_call_output` items the client created.
    pub function_outputs: Vec<FunctionOutputRecord>,
    /// Other items the client created (`message`, `function_call`), as sent.
    pub created_items: Vec<Value>,
    /// Every `conversation.item.truncate` that passed the schema.
    pub truncates: Vec<TruncateRecord>,
    /// Things the client must never do (see `RealtimeStandIn::assert_no_violations`).
    pub violations: Vec<Violation>,
    /// Server events of the stand-in itself that failed the schema (a bug in the stand-in).
    pub faults: Vec<String>,
    /// How many script steps have run.
    pub steps_done: usize,
    /// How the session ended, once it has.
    pub end: Option<SessionEnd>,
}

impl SessionRecord {
    pub(super) fn new(index: usize, connected_at: Instant, handshake: Handshake) -> Self {
        SessionRecord {
            index,
            id: String::new(),
            connected_at,
            handshake,
            config: Value::Null,
            session_updates: 0,
            confirmed: false,
            client_events: Vec::new(),
            server_events: Vec::new(),
            input_audio: Vec::new(),
            appends: Vec::new(),
            assistant_items: Vec::new(),
            responses: Vec::new(),
            function_calls: Vec::new(),
            function_outputs: Vec::new(),
            created_items: Vec::new(),
            truncates: Vec::new(),
            violations: Vec::new(),
            faults: Vec::new(),
            steps_done: 0,
            end: None,
        }
    }

    /// `audio.input.format.type` of the effective config (`audio/pcmu` once configured).
    pub fn input_format(&self) -> Option<&str> {
        self.config.pointer("/audio/input/format/type")?.as_str()
    }

    /// `audio.output.format.type` of the effective config.
    pub fn output_format(&self) -> Option<&str> {
        self.config.pointer("/audio/output/format/type")?.as_str()
    }

    /// `audio.output.voice` (a name; custom voices give `None`).
    pub fn voice(&self) -> Option<&str> {
        self.config.pointer("/audio/output/voice")?.as_str()
    }

    /// `instructions`.
    pub fn instructions(&self) -> Option<&str> {
        self.config.get("instructions")?.as_str()
    }

    /// Names of the configured tools.
    pub fn tool_names(&self) -> Vec<&str> {
        self.config
            .get("tools")
            .and_then(Value::as_array)
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|t| t.get("name").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Client events of one type, in order.
    pub fn client_events_of<'a>(
        &'a self,
        event_type: &'a str,
    ) -> impl Iterator<Item = &'a ClientEventRecord> + 'a {
        self.client_events
            .iter()
            .filter(move |e| e.event_type() == Some(event_type))
    }

    /// Server events of one type, in order.
    pub fn server_events_of<'a>(
        &'a self,
        event_type: &'a str,
    ) -> impl Iterator<Item = &'a ServerEventRecord> + 'a {
        self.server_events
            .iter()
            .filter(move |e| e.event_type() == Some(event_type))
    }

    /// The `type`s of all server events sent, in order.
    pub fn server_event_types(&self) -> Vec<&str> {
        self.server_events
            .iter()
            .filter_map(ServerEventRecord::event_type)
            .collect()
    }

    /// Milliseconds of caller audio received, assuming PCMU (8 bytes per ms).
    pub fn input_ms(&self) -> u64 {
        (self.input_audio.len() / 8) as u64
    }

    /// The assistant item with this id.
    pub fn assistant_item(&self, item_id: &str) -> Option<&AssistantItemRecord> {
        self.assistant_items.iter().find(|i| i.item_id == item_id)
    }

    /// Responses that have finished (`response.done` sent).
    pub fn finished_responses(&self) -> impl Iterator<Item = &ResponseRecord> {
        self.responses.iter().filter(|r| r.done_at.is_some())
    }

    /// The client sent a close frame before the connection ended.
    pub fn client_closed(&self) -> bool {
        matches!(self.end, Some(SessionEnd::ClientClosed { .. }))
    }

    /// The connection ended (or failed) without any close frame from the client.
    pub fn vanished(&self) -> bool {
        matches!(self.end, Some(SessionEnd::Vanished { .. }))
    }

    /// The session is over, whoever ended it.
    pub fn is_ended(&self) -> bool {
        self.end.is_some()
    }
}

/// A client text frame as received.
#[derive(Debug, Clone)]
pub struct ClientEventRecord {
    /// When it arrived.
    pub at: Instant,
    /// The parsed JSON (a JSON string holding the raw text if it was not JSON).
    pub event: Value,
    /// Whether it passed `#/$defs/ClientEvent`.
    pub valid: bool,
}

impl ClientEventRecord {
    /// Its `type`.
    pub fn event_type(&self) -> Option<&str> {
        self.event.get("type")?.as_str()
    }
}

/// A server event as sent.
#[derive(Debug, Clone)]
pub struct ServerEventRecord {
    /// When it was handed to the WebSocket.
    pub at: Instant,
    /// The event.
    pub event: Value,
}

impl ServerEventRecord {
    /// Its `type`.
    pub fn event_type(&self) -> Option<&str> {
        self.event.get("type")?.as_str()
    }
}

/// One `input_audio_buffer.append`.
#[derive(Debug, Clone, Copy)]
pub struct AppendRecord {
    /// When it arrived.
    pub at: Instant,
    /// Offset of its audio in [`SessionRecord::input_audio`].
    pub offset: usize,
    /// Decoded bytes.
    pub bytes: usize,
}

/// An assistant message item and the audio produced for it.
#[derive(Debug, Clone)]
pub struct AssistantItemRecord {
    /// `item_…` id.
    pub item_id: String,
    /// The response that produced it.
    pub response_id: String,
    /// Audio bytes sent in deltas, concatenated.
    pub audio: Vec<u8>,
    /// One per `response.output_audio.delta`.
    pub deltas: Vec<DeltaRecord>,
    /// Transcript sent so far.
    pub transcript: String,
    /// `in_progress`, `completed` or `incomplete`.
    pub status: String,
    /// `audio_end_ms` of an accepted truncate.
    pub truncated_at_ms: Option<u64>,
}

/// One `response.output_audio.delta`.
#[derive(Debug, Clone, Copy)]
pub struct DeltaRecord {
    /// When it was sent.
    pub at: Instant,
    /// Offset of its audio in [`AssistantItemRecord::audio`].
    pub offset: usize,
    /// Decoded bytes.
    pub bytes: usize,
}

/// Why a response was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseOrigin {
    /// The session's first client `response.create`.
    Greeting,
    /// A client `response.create` after a `function_call_output`.
    AfterToolOutput,
    /// Any other client `response.create`.
    ClientRequest,
    /// An [`super::Action::Respond`] of the script (the "server VAD").
    Script,
}

/// One response.
#[derive(Debug, Clone)]
pub struct ResponseRecord {
    /// `resp_…` id.
    pub id: String,
    /// Why it was created.
    pub origin: ResponseOrigin,
    /// The `response` parameters of the client's `response.create` (`Null` if none/scripted).
    pub request: Value,
    /// `in_progress`, then `completed` or `cancelled`.
    pub status: String,
    /// `status_details.reason` (`turn_detected`, `client_cancelled`).
    pub reason: Option<String>,
    /// Its message item, if it had audio.
    pub item_id: Option<String>,
    /// Its function call's `call_id`, if it made one.
    pub call_id: Option<String>,
    /// `response.created` sent.
    pub created_at: Instant,
    /// `response.done` sent.
    pub done_at: Option<Instant>,
}

/// A function call the stand-in made.
#[derive(Debug, Clone)]
pub struct FunctionCallRecord {
    /// `call_…` id.
    pub call_id: String,
    /// The function call item's id.
    pub item_id: String,
    /// Function name.
    pub name: String,
    /// Arguments (JSON string).
    pub arguments: String,
}

/// A `function_call_output` the client created.
#[derive(Debug, Clone)]
pub struct FunctionOutputRecord {
    /// When it arrived.
    pub at: Instant,
    /// Its `call_id`.
    pub call_id: String,
    /// Its `output` text.
    pub output: String,
    /// Whether the `call_id` belonged to a function call of this session.
    pub known_call: bool,
}

/// A `conversation.item.truncate`.
#[derive(Debug, Clone)]
pub struct TruncateRecord {
    /// When it arrived.
    pub at: Instant,
    /// The item it names.
    pub item_id: String,
    /// `content_index`.
    pub content_index: u64,
    /// `audio_end_ms`.
    pub audio_end_ms: u64,
    /// Audio the stand-in had produced for the item (ms) when the truncate arrived.
    pub produced_ms: u64,
    /// Answered with `conversation.item.truncated` (false: answered with `error`).
    pub accepted: bool,
}

/// Something the client did that it must never do.
#[derive(Debug, Clone)]
pub struct Violation {
    /// When it was noticed.
    pub at: Instant,
    /// What was wrong.
    pub message: String,
    /// The client event concerned, if any.
    pub event: Option<Value>,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEnd {
    /// The client sent a close frame.
    ClientClosed {
        /// Its close code.
        code: Option<u16>,
        /// Its reason.
        reason: String,
    },
    /// The connection ended or failed without a close frame from the client.
    Vanished {
        /// What the WebSocket layer reported.
        detail: String,
    },
    /// The stand-in sent a close frame ([`super::Action::Close`], OpenAI-Beta).
    ServerClosed {
        /// The code sent.
        code: u16,
        /// The client answered with its own close frame.
        client_echoed: bool,
    },
    /// The stand-in dropped the connection ([`super::Action::DropConnection`] / `Reset…`).
    ServerDropped {
        /// RST rather than FIN.
        reset: bool,
    },
    /// The handshake was refused (wrong path, missing key).
    Refused,
}

fn abbreviate(event: &Value) -> String {
    let text = event.to_string();
    if text.len() <= 400 {
        return text;
    }
    let cut = (0..=400)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}… ({} chars)", &text[..cut], text.len())
}
