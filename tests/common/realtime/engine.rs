//! One stand-in session as a sans-IO machine: client frames and timeouts in (each with `now`),
//! server events and connection commands out ([`Output`]), everything recorded in the shared
//! [`super::StandInState`]. The tokio side ([`super::connection`]) only moves frames.
//!
//! Server side (always on, like the real API): schema check of every client event (`error` +
//! violation), `session.update` merge, audio accounting, conversation items, truncate checks,
//! one active response at a time, cancel. Model side (scripted, [`super::script`]): replies to
//! `response.create`, and the steps (VAD events, scripted responses, errors, close, drop).
//!
//! A response streams as: `response.created` → `response.output_item.added` →
//! `conversation.item.added` → `response.content_part.added` → (`…output_audio_transcript.delta`,
//! `…output_audio.delta`)* paced by [`Pace`] → `…output_audio.done` →
//! `…output_audio_transcript.done` → `response.content_part.done` →
//! `response.output_item.done` → `conversation.item.done` → [function call item] →
//! `response.done` → `rate_limits.updated` (PROTOCOL.md §5.1, §5.3). A cancel (barge-in or
//! `response.cancel`) stops the deltas and sends the `.done` events with the item `incomplete`
//! and `response.done` `cancelled` (§5.2).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{json, Value};

use super::config::{bytes_per_ms, default_session};
use super::record::{ClientEventRecord, ResponseOrigin, ServerEventRecord, SessionEnd, Violation};
use super::schema::schema;
use super::script::{Behaviour, Reply, When};
use super::Shared;

mod client;
mod response;
mod steps;

/// Model when the URL names none.
const DEFAULT_MODEL: &str = "gpt-realtime";
const INVALID_REQUEST: &str = "invalid_request_error";

/// What the connection must do next.
#[derive(Debug)]
pub(super) enum Output {
    /// Send this JSON text frame.
    Send(String),
    /// Send a close frame, wait briefly for the client's, end.
    Close { code: u16, reason: String },
    /// End the TCP connection without a close frame (`reset`: RST instead of FIN).
    Drop { reset: bool },
}

enum ItemKind {
    User,
    Assistant { produced: usize, record: usize },
    FunctionCall,
    Other,
}

struct Item {
    id: String,
    kind: ItemKind,
    json: Value,
}

struct Speech {
    item_id: String,
    start_ms: u64,
}

struct ActiveResponse {
    id: String,
    record: usize,
    reply: Reply,
    request: Value,
    message: Option<Message>,
    next_at: Instant,
}

impl ActiveResponse {
    fn remaining(&self) -> usize {
        self.message
            .as_ref()
            .map_or(0, |m| self.reply.audio.len() - m.sent)
    }
}

/// The assistant message item of the active response.
struct Message {
    item_id: String,
    previous_item_id: Value,
    sent: usize,
    chunks_sent: usize,
    pieces: Vec<String>,
    pieces_sent: usize,
    transcript: String,
}

/// Counters at the moment the previous step ran; triggers count from here.
#[derive(Clone, Copy)]
struct StepBase {
    at: Instant,
    input_bytes: usize,
    client_events: usize,
    function_outputs: usize,
    responses_done: usize,
}

pub(super) struct Engine {
    shared: Arc<Shared>,
    index: usize,
    behaviour: Behaviour,
    out: VecDeque<Output>,
    session: Value,
    conversation_id: String,
    confirmed: bool,
    session_updates: usize,
    input_bytes: usize,
    uncommitted_bytes: usize,
    committed_user_ms: u64,
    items: Vec<Item>,
    speech: Option<Speech>,
    active: Option<ActiveResponse>,
    queued: VecDeque<(Reply, ResponseOrigin, Value)>,
    call_ids: HashSet<String>,
    answered_call_ids: HashSet<String>,
    tool_output_pending: bool,
    greeted: bool,
    audio_produced: bool,
    valid_event_types: Vec<String>,
    function_outputs: usize,
    responses_done: usize,
    step: usize,
    base: StepBase,
    ended: bool,
}

impl Engine {
    pub(super) fn new(
        shared: Arc<Shared>,
        index: usize,
        behaviour: Behaviour,
        model: Option<&str>,
        now: Instant,
    ) -> Engine {
        let id = new_id("sess_", 21);
        let expires_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 3600;
        let session = default_session(&id, model.unwrap_or(DEFAULT_MODEL), expires_at);
        shared.session(index, |record| {
            record.id = id.clone();
            record.config = session.clone();
        });
        Engine {
            shared,
            index,
            behaviour,
            out: VecDeque::new(),
            session,
            conversation_id: new_id("conv_", 21),
            confirmed: false,
            session_updates: 0,
            input_bytes: 0,
            uncommitted_bytes: 0,
            committed_user_ms: 0,
            items: Vec::new(),
            speech: None,
            active: None,
            queued: VecDeque::new(),
            call_ids: HashSet::new(),
            answered_call_ids: HashSet::new(),
            tool_output_pending: false,
            greeted: false,
            audio_produced: false,
            valid_event_types: Vec::new(),
            function_outputs: 0,
            responses_done: 0,
            step: 0,
            base: StepBase {
                at: now,
                input_bytes: 0,
                client_events: 0,
                function_outputs: 0,
                responses_done: 0,
            },
            ended: false,
        }
    }

    /// Opens the session: `session.created`, or for a beta-shaped handshake (PROTOCOL.md §0)
    /// `error` `beta_api_shape_disabled` and close 4000.
    pub(super) fn start(&mut self, now: Instant, beta: bool) {
        if beta {
            self.emit(
                now,
                error_event(
                    INVALID_REQUEST,
                    "beta_api_shape_disabled",
                    "The Realtime API beta shape (OpenAI-Beta: realtime=v1) has been shut down. \
                     Use the GA interface.",
                    None,
                    None,
                ),
            );
            self.close(4000, "beta_api_shape_disabled");
            return;
        }
        let session = self.session.clone();
        self.emit(now, json!({"type": "session.created", "session": session}));
        self.base.at = now;
        self.settle(now);
    }

    pub(super) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Engine::handle_timeout`] is next due: the next audio delta or a `Delay` step.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        let delta = self.active.as_ref().map(|a| a.next_at);
        let delay = match self.behaviour.steps.get(self.step).map(|s| &s.when) {
            Some(When::Delay(d)) => Some(self.base.at + *d),
            _ => None,
        };
        delta.into_iter().chain(delay).min()
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        self.settle(now);
    }

    /// A text frame from the client.
    pub(super) fn handle_text(&mut self, now: Instant, text: &str) {
        if self.ended {
            return;
        }
        let event: Value = match serde_json::from_str(text) {
            Ok(event) => event,
            Err(error) => {
                let raw = Value::String(text.to_owned());
                self.record_client_event(now, raw.clone(), false);
                self.violation(now, format!("text frame is not JSON: {error}"), Some(&raw));
                self.emit(
                    now,
                    error_event(
                        INVALID_REQUEST,
                        "invalid_json",
                        "We could not parse the JSON body of your event.",
                        None,
                        None,
                    ),
                );
                return;
            }
        };
        let rejection = schema().reject_client_event(&event);
        self.record_client_event(now, event.clone(), rejection.is_none());
        if let Some(rejection) = rejection {
            self.violation(
                now,
                format!(
                    "{} (error code {}); schema: {}",
                    rejection.message, rejection.code, rejection.detail
                ),
                Some(&event),
            );
            self.emit(
                now,
                error_event(
                    INVALID_REQUEST,
                    rejection.code,
                    &rejection.message,
                    rejection.param.as_deref(),
                    client_event_id(&event),
                ),
            );
            return;
        }
        let event_type = event["type"].as_str().unwrap_or_default().to_owned();
        match event_type.as_str() {
            "session.update" => self.on_session_update(now, &event),
            "input_audio_buffer.append" => self.on_append(now, &event),
            "input_audio_buffer.commit" => self.on_commit(now, &event),
            "input_audio_buffer.clear" => {
                self.uncommitted_bytes = 0;
                self.emit(now, json!({"type": "input_audio_buffer.cleared"}));
            }
            "conversation.item.create" => self.on_item_create(now, &event),
            "conversation.item.truncate" => self.on_truncate(now, &event),
            "conversation.item.delete" => self.on_item_delete(now, &event),
            "conversation.item.retrieve" => self.on_item_retrieve(now, &event),
            "response.create" => self.on_response_create(now, &event),
            "response.cancel" => self.on_response_cancel(now, &event),
            "output_audio_buffer.clear" => self.answer_error(
                now,
                &event,
                "invalid_value",
                "output_audio_buffer.clear is only supported for WebRTC and SIP connections."
                    .into(),
                None,
                true,
            ),
            _ => {}
        }
        self.valid_event_types.push(event_type);
        self.settle(now);
    }

    /// A binary frame from the client: the API speaks JSON text frames only.
    pub(super) fn handle_binary(&mut self, now: Instant, len: usize) {
        if self.ended {
            return;
        }
        let raw = Value::String(format!("<binary frame, {len} bytes>"));
        self.record_client_event(now, raw.clone(), false);
        self.violation(now, "binary WebSocket frame".into(), Some(&raw));
        self.emit(
            now,
            error_event(
                INVALID_REQUEST,
                "invalid_event",
                "Binary frames are not supported; send JSON events as text frames.",
                None,
                None,
            ),
        );
    }

    /// The client's close frame (also its answer to ours).
    pub(super) fn handle_client_close(&mut self, code: Option<u16>, reason: &str) {
        self.ended = true;
        self.shared
            .session(self.index, |record| match &mut record.end {
                Some(SessionEnd::ServerClosed { client_echoed, .. }) => *client_echoed = true,
                Some(_) => {}
                None => {
                    record.end = Some(SessionEnd::ClientClosed {
                        code,
                        reason: reason.to_owned(),
                    })
                }
            });
    }

    /// The connection ended or failed without a close frame from the client.
    pub(super) fn handle_vanished(&mut self, detail: &str) {
        self.ended = true;
        self.shared.session(self.index, |record| {
            if record.end.is_none() {
                record.end = Some(SessionEnd::Vanished {
                    detail: detail.to_owned(),
                });
            }
        });
    }

    // ---- helpers ---------------------------------------------------------------------------

    /// Stamps an `event_id`, checks the event against the schema (a failure is a stand-in
    /// fault), records it and queues it for sending.
    fn emit(&mut self, now: Instant, mut event: Value) {
        if let Some(object) = event.as_object_mut() {
            object.insert("event_id".into(), json!(new_id("event_", 21)));
        }
        let fault = schema().validate_server(&event).err();
        let text = event.to_string();
        self.shared.session(self.index, |record| {
            if let Some(fault) = fault {
                record.faults.push(format!("{}: {fault}", event["type"]));
            }
            record
                .server_events
                .push(ServerEventRecord { at: now, event });
        });
        self.out.push_back(Output::Send(text));
    }

    fn violation(&mut self, now: Instant, message: String, event: Option<&Value>) {
        self.shared.session(self.index, |record| {
            record.violations.push(Violation {
                at: now,
                message,
                event: event.cloned(),
            })
        });
    }

    /// Answers `event` with an `invalid_request_error`; `violation`: the gateway must never
    /// cause this one.
    fn answer_error(
        &mut self,
        now: Instant,
        event: &Value,
        code: &str,
        message: String,
        param: Option<&str>,
        violation: bool,
    ) {
        if violation {
            self.violation(now, format!("{code}: {message}"), Some(event));
        }
        let error = error_event(
            INVALID_REQUEST,
            code,
            &message,
            param,
            client_event_id(event),
        );
        self.emit(now, error);
    }

    fn record_client_event(&mut self, now: Instant, event: Value, valid: bool) {
        self.shared.session(self.index, |record| {
            record.client_events.push(ClientEventRecord {
                at: now,
                event,
                valid,
            })
        });
    }

    fn emit_item_added_and_done(&mut self, now: Instant, previous_item_id: &Value, item: &Value) {
        for event_type in ["conversation.item.added", "conversation.item.done"] {
            self.emit(
                now,
                json!({"type": event_type, "previous_item_id": previous_item_id, "item": item}),
            );
        }
    }

    fn item(&self, id: &str) -> Option<&Item> {
        self.items.iter().find(|item| item.id == id)
    }

    fn last_item_id(&self) -> Value {
        self.items.last().map_or(Value::Null, |item| json!(item.id))
    }

    fn input_bytes_per_ms(&self) -> usize {
        bytes_per_ms(self.session.pointer("/audio/input/format/type"))
    }

    fn output_bytes_per_ms(&self) -> usize {
        bytes_per_ms(self.session.pointer("/audio/output/format/type"))
    }

    /// Milliseconds of caller audio appended so far.
    fn input_ms(&self) -> u64 {
        (self.input_bytes / self.input_bytes_per_ms()) as u64
    }

    /// Server VAD cancels the active response on speech start unless told not to.
    fn interrupt_response(&self) -> bool {
        match self.session.pointer("/audio/input/turn_detection") {
            Some(Value::Object(vad)) => vad
                .get("interrupt_response")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            _ => false,
        }
    }
}

fn error_event(
    kind: &str,
    code: &str,
    message: &str,
    param: Option<&str>,
    client_event_id: Option<&str>,
) -> Value {
    json!({"type": "error", "error": {"type": kind, "code": code, "message": message,
                                      "param": param, "event_id": client_event_id}})
}

fn client_event_id(event: &Value) -> Option<&str> {
    event.get("event_id").and_then(Value::as_str)
}

/// `prefix` + `len` base-62 characters, unique in the process (the first 11 characters encode
/// a bijection of a counter), random-looking like the API's ids.
pub(super) fn new_id(prefix: &str, len: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut words = [splitmix64(n), splitmix64(n ^ 0x5bd1_e995_c0ff_ee00)];
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    for i in 0..len {
        let word = &mut words[usize::from(i >= 11)];
        id.push(char::from(ALPHABET[(*word % 62) as usize]));
        *word /= 62;
    }
    id
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
