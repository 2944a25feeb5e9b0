//! Playing a [`Reply`] as one response (PROTOCOL.md §5.1, §5.3), pacing its audio deltas, and
//! ending it: completed (message `.done` events, then the function call item), or cancelled
//! (`turn_detected` / `client_cancelled`: the `.done` events with the item `incomplete`, no
//! function call). Both end in `response.done` with `usage` and `rate_limits.updated`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::super::record::{
    AssistantItemRecord, DeltaRecord, FunctionCallRecord, ResponseOrigin, ResponseRecord,
};
use super::super::script::{Pace, Reply};
use super::{new_id, ActiveResponse, Engine, Item, ItemKind, Message, BASE64};

impl Engine {
    /// Starts a response now, or after the active one if there is one.
    pub(super) fn start_response(
        &mut self,
        now: Instant,
        reply: Reply,
        origin: ResponseOrigin,
        request: Value,
    ) {
        if self.active.is_some() {
            self.queued.push_back((reply, origin, request));
            return;
        }
        if origin != ResponseOrigin::Script {
            self.tool_output_pending = false;
        }
        let id = new_id("resp_", 21);
        let created = self.response_json(&id, &request, "in_progress", Value::Null, vec![]);
        let record = self
            .shared
            .session(self.index, |record| {
                record.responses.push(ResponseRecord {
                    id: id.clone(),
                    origin,
                    request: request.clone(),
                    status: "in_progress".into(),
                    reason: None,
                    item_id: None,
                    call_id: None,
                    created_at: now,
                    done_at: None,
                });
                record.responses.len() - 1
            })
            .unwrap_or_default();
        self.emit(
            now,
            json!({"type": "response.created", "response": created}),
        );
        let message = if reply.audio.is_empty() && reply.transcript.is_empty() {
            None
        } else {
            Some(self.open_message(now, &id, record, &reply.transcript))
        };
        self.active = Some(ActiveResponse {
            id,
            record,
            reply,
            request,
            message,
            next_at: now,
        });
    }

    /// The assistant message item: `output_item.added`, `conversation.item.added`,
    /// `content_part.added`.
    fn open_message(
        &mut self,
        now: Instant,
        response_id: &str,
        record: usize,
        transcript: &str,
    ) -> Message {
        let item_id = new_id("item_", 21);
        let previous_item_id = self.last_item_id();
        let item = assistant_item(&item_id, "in_progress", None);
        self.emit(
            now,
            json!({"type": "response.output_item.added", "response_id": response_id,
                   "output_index": 0, "item": item}),
        );
        self.emit(
            now,
            json!({"type": "conversation.item.added", "previous_item_id": previous_item_id,
                   "item": item}),
        );
        self.emit(
            now,
            json!({"type": "response.content_part.added", "response_id": response_id,
                   "item_id": item_id, "output_index": 0, "content_index": 0,
                   "part": {"type": "audio", "transcript": ""}}),
        );
        let assistant_record = self
            .shared
            .session(self.index, |session| {
                if let Some(response) = session.responses.get_mut(record) {
                    response.item_id = Some(item_id.clone());
                }
                session.assistant_items.push(AssistantItemRecord {
                    item_id: item_id.clone(),
                    response_id: response_id.to_owned(),
                    audio: Vec::new(),
                    deltas: Vec::new(),
                    transcript: String::new(),
                    status: "in_progress".into(),
                    truncated_at_ms: None,
                });
                session.assistant_items.len() - 1
            })
            .unwrap_or_default();
        self.items.push(Item {
            id: item_id.clone(),
            kind: ItemKind::Assistant {
                produced: 0,
                record: assistant_record,
            },
            json: item,
        });
        Message {
            item_id,
            previous_item_id,
            sent: 0,
            chunks_sent: 0,
            pieces: transcript.split_inclusive(' ').map(str::to_owned).collect(),
            pieces_sent: 0,
            transcript: String::new(),
        }
    }

    /// Sends every delta that is due and ends the response after its last one.
    pub(super) fn advance_response(&mut self, now: Instant) {
        while !self.ended {
            let Some(active) = &self.active else {
                return;
            };
            if active.next_at > now {
                return;
            }
            if active.remaining() > 0 {
                self.send_delta(now);
            }
            if self.active.as_ref().is_some_and(|a| a.remaining() == 0) {
                self.complete_response(now);
            }
        }
    }

    /// One `response.output_audio.delta`, preceded by the transcript words that go with it.
    fn send_delta(&mut self, now: Instant) {
        let bytes_per_ms = self.output_bytes_per_ms();
        let pace = self.behaviour.pace;
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(message) = active.message.as_mut() else {
            return;
        };
        let audio = &active.reply.audio;
        let sizes = &active.reply.chunk_sizes;
        let size = sizes[message.chunks_sent % sizes.len()].min(audio.len() - message.sent);
        let range = message.sent..message.sent + size;
        let words_due = (message.pieces.len() * range.end).div_ceil(audio.len());
        let words =
            message.pieces[message.pieces_sent..words_due.max(message.pieces_sent)].concat();
        message.pieces_sent = words_due.max(message.pieces_sent);
        message.transcript.push_str(&words);
        message.sent = range.end;
        message.chunks_sent += 1;
        let chunk = audio[range.clone()].to_vec();
        if let Pace::Speedup(factor) = pace {
            let ms = size as f64 / bytes_per_ms as f64;
            active.next_at += Duration::from_secs_f64(ms / 1000.0 / factor.max(0.001));
        }
        let (response_id, item_id) = (active.id.clone(), message.item_id.clone());
        if !words.is_empty() {
            self.emit(
                now,
                json!({"type": "response.output_audio_transcript.delta",
                       "response_id": response_id, "item_id": item_id, "output_index": 0,
                       "content_index": 0, "delta": words}),
            );
        }
        self.emit(
            now,
            json!({"type": "response.output_audio.delta", "response_id": response_id,
                   "item_id": item_id, "output_index": 0, "content_index": 0,
                   "delta": BASE64.encode(&chunk)}),
        );
        self.audio_produced = true;
        let mut assistant_record = None;
        if let Some(item) = self.items.iter_mut().find(|item| item.id == item_id) {
            if let ItemKind::Assistant { produced, record } = &mut item.kind {
                *produced = range.end;
                assistant_record = Some(*record);
            }
        }
        self.shared.session(self.index, |session| {
            let Some(item) = assistant_record.and_then(|i| session.assistant_items.get_mut(i))
            else {
                return;
            };
            item.deltas.push(DeltaRecord {
                at: now,
                offset: range.start,
                bytes: chunk.len(),
            });
            item.audio.extend_from_slice(&chunk);
            item.transcript.push_str(&words);
        });
    }

    /// All audio sent: finish the message, make the function call, `response.done`.
    fn complete_response(&mut self, now: Instant) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mut output = Vec::new();
        if let Some(message) = active.message.as_mut() {
            // Transcript words not yet sent (a reply with text but no audio).
            let rest = message.pieces[message.pieces_sent..].concat();
            if !rest.is_empty() {
                message.pieces_sent = message.pieces.len();
                message.transcript.push_str(&rest);
                self.emit(
                    now,
                    json!({"type": "response.output_audio_transcript.delta",
                           "response_id": active.id, "item_id": message.item_id,
                           "output_index": 0, "content_index": 0, "delta": rest}),
                );
            }
        }
        if let Some(message) = &active.message {
            output.push(self.finish_message(now, &active.id, message, "completed"));
        }
        if let Some((name, arguments)) = active.reply.function_call.clone() {
            let output_index = output.len();
            output.push(self.function_call(now, &active, output_index, &name, &arguments));
        }
        self.finish_response(now, active, "completed", Value::Null, output);
    }

    /// Stops the active response (barge-in or `response.cancel`).
    pub(super) fn cancel_response(&mut self, now: Instant, reason: &str) {
        let Some(active) = self.active.take() else {
            return;
        };
        let mut output = Vec::new();
        if let Some(message) = &active.message {
            output.push(self.finish_message(now, &active.id, message, "incomplete"));
        }
        let details = json!({"type": "cancelled", "reason": reason});
        self.finish_response(now, active, "cancelled", details, output);
    }

    /// The message's `.done` events; returns the final item.
    fn finish_message(
        &mut self,
        now: Instant,
        response_id: &str,
        message: &Message,
        status: &str,
    ) -> Value {
        let ids = json!({"response_id": response_id, "item_id": message.item_id,
                         "output_index": 0, "content_index": 0});
        let with = |event_type: &str, extra: Value| {
            let mut event = ids.clone();
            event["type"] = json!(event_type);
            if let (Some(event), Some(extra)) = (event.as_object_mut(), extra.as_object()) {
                event.extend(extra.clone());
            }
            event
        };
        let transcript = message.transcript.as_str();
        self.emit(now, with("response.output_audio.done", json!({})));
        self.emit(
            now,
            with(
                "response.output_audio_transcript.done",
                json!({"transcript": transcript}),
            ),
        );
        self.emit(
            now,
            with(
                "response.content_part.done",
                json!({"part": {"type": "audio", "transcript": transcript}}),
            ),
        );
        let item = assistant_item(&message.item_id, status, Some(transcript));
        self.emit(
            now,
            json!({"type": "response.output_item.done", "response_id": response_id,
                   "output_index": 0, "item": item}),
        );
        self.emit(
            now,
            json!({"type": "conversation.item.done",
                   "previous_item_id": message.previous_item_id, "item": item}),
        );
        let mut assistant_record = None;
        if let Some(stored) = self.items.iter_mut().find(|i| i.id == message.item_id) {
            stored.json = item.clone();
            if let ItemKind::Assistant { record, .. } = stored.kind {
                assistant_record = Some(record);
            }
        }
        self.shared.session(self.index, |session| {
            if let Some(record) = assistant_record.and_then(|i| session.assistant_items.get_mut(i))
            {
                record.status = status.to_owned();
            }
        });
        item
    }

    /// The function call item with streamed arguments (PROTOCOL.md §5.3); returns it.
    fn function_call(
        &mut self,
        now: Instant,
        active: &ActiveResponse,
        output_index: usize,
        name: &str,
        arguments: &str,
    ) -> Value {
        let item_id = new_id("item_", 21);
        let call_id = new_id("call_", 16);
        let previous_item_id = self.last_item_id();
        let mut item = json!({"id": item_id, "object": "realtime.item", "type": "function_call",
                              "status": "in_progress", "name": name, "call_id": call_id,
                              "arguments": ""});
        let ids = json!({"response_id": active.id, "output_index": output_index});
        self.emit(
            now,
            json!({"type": "response.output_item.added", "response_id": ids["response_id"],
                   "output_index": output_index, "item": item}),
        );
        self.emit(
            now,
            json!({"type": "conversation.item.added", "previous_item_id": previous_item_id,
                   "item": item}),
        );
        for piece in split_in_three(arguments) {
            self.emit(
                now,
                json!({"type": "response.function_call_arguments.delta",
                       "response_id": active.id, "item_id": item_id,
                       "output_index": output_index, "call_id": call_id, "delta": piece}),
            );
        }
        self.emit(
            now,
            json!({"type": "response.function_call_arguments.done", "response_id": active.id,
                   "item_id": item_id, "output_index": output_index, "call_id": call_id,
                   "name": name, "arguments": arguments}),
        );
        item["status"] = json!("completed");
        item["arguments"] = json!(arguments);
        self.emit(
            now,
            json!({"type": "response.output_item.done", "response_id": active.id,
                   "output_index": output_index, "item": item}),
        );
        self.emit(
            now,
            json!({"type": "conversation.item.done", "previous_item_id": previous_item_id,
                   "item": item}),
        );
        self.items.push(Item {
            id: item_id.clone(),
            kind: ItemKind::FunctionCall,
            json: item.clone(),
        });
        self.call_ids.insert(call_id.clone());
        let record = active.record;
        self.shared.session(self.index, |session| {
            session.function_calls.push(FunctionCallRecord {
                call_id: call_id.clone(),
                item_id,
                name: name.to_owned(),
                arguments: arguments.to_owned(),
            });
            if let Some(response) = session.responses.get_mut(record) {
                response.call_id = Some(call_id);
            }
        });
        item
    }

    /// `response.done` with usage, `rate_limits.updated`; starts a queued response.
    fn finish_response(
        &mut self,
        now: Instant,
        active: ActiveResponse,
        status: &str,
        details: Value,
        output: Vec<Value>,
    ) {
        let mut response = self.response_json(&active.id, &active.request, status, details, output);
        let usage = self.usage(&active);
        let total = usage["total_tokens"].as_u64().unwrap_or_default();
        response["usage"] = usage;
        self.emit(now, json!({"type": "response.done", "response": response}));
        self.emit(
            now,
            json!({"type": "rate_limits.updated", "rate_limits": [
                {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                {"name": "tokens", "limit": 800_000,
                 "remaining": 800_000u64.saturating_sub(total), "reset_seconds": 0.4}]}),
        );
        let reason = response
            .pointer("/status_details/reason")
            .and_then(Value::as_str);
        let reason = reason.map(str::to_owned);
        self.shared.session(self.index, |session| {
            if let Some(record) = session.responses.get_mut(active.record) {
                record.status = status.to_owned();
                record.reason = reason;
                record.done_at = Some(now);
            }
        });
        self.responses_done += 1;
        if let Some((reply, origin, request)) = self.queued.pop_front() {
            self.start_response(now, reply, origin, request);
        }
    }

    /// The `realtime.response` object; per-response overrides from `response.create` apply.
    fn response_json(
        &self,
        id: &str,
        request: &Value,
        status: &str,
        details: Value,
        output: Vec<Value>,
    ) -> Value {
        let session = &self.session;
        let pick = |key: &str| request.get(key).unwrap_or(&session[key]).clone();
        let format = request
            .pointer("/audio/output/format")
            .or_else(|| session.pointer("/audio/output/format"));
        let voice = request
            .pointer("/audio/output/voice")
            .or_else(|| session.pointer("/audio/output/voice"));
        let conversation_id = match request.get("conversation").and_then(Value::as_str) {
            Some("none") => Value::Null,
            _ => json!(self.conversation_id),
        };
        json!({"object": "realtime.response", "id": id, "status": status,
               "status_details": details, "output": output,
               "conversation_id": conversation_id,
               "output_modalities": pick("output_modalities"),
               "max_output_tokens": pick("max_output_tokens"),
               "audio": {"output": {"format": format, "voice": voice}},
               "usage": null, "metadata": request.get("metadata").cloned().unwrap_or(Value::Null)})
    }

    /// Token counts derived like examples/README.md: ≈ 1 token per 100 ms of caller audio (the
    /// whole conversation is the input), ≈ 1 per 50 ms of model audio, text ≈ 4 chars a token.
    fn usage(&self, active: &ActiveResponse) -> Value {
        let produced = active.message.as_ref().map_or(0, |m| m.sent);
        let output_audio = (produced / self.output_bytes_per_ms() / 50) as u64;
        let transcript = active.message.as_ref().map_or(0, |m| m.pieces_sent) as u64;
        let arguments = match (&active.reply.function_call, active.remaining()) {
            (Some((_, arguments)), 0) => arguments.len() as u64 / 4,
            _ => 0,
        };
        let output_text = transcript + arguments;
        let input_audio = self.committed_user_ms / 100;
        let instructions = self.session["instructions"].as_str().map_or(0, str::len);
        let tools = self.session["tools"].to_string().len();
        let input_text = ((instructions + tools) / 4 + 4 * self.items.len()) as u64;
        let input = input_text + input_audio;
        let output = output_text + output_audio;
        json!({"total_tokens": input + output, "input_tokens": input, "output_tokens": output,
               "input_token_details": {"text_tokens": input_text, "audio_tokens": input_audio,
                                       "image_tokens": 0, "cached_tokens": 0,
                                       "cached_tokens_details": {"text_tokens": 0,
                                                                 "audio_tokens": 0,
                                                                 "image_tokens": 0}},
               "output_token_details": {"text_tokens": output_text,
                                        "audio_tokens": output_audio}})
    }
}

fn assistant_item(id: &str, status: &str, transcript: Option<&str>) -> Value {
    let content = match transcript {
        Some(transcript) => json!([{"type": "output_audio", "transcript": transcript}]),
        None => json!([]),
    };
    json!({"id": id, "object": "realtime.item", "type": "message", "status": status,
           "role": "assistant", "content": content})
}

/// Function arguments streamed in (up to) three deltas, split on character boundaries.
fn split_in_three(text: &str) -> Vec<&str> {
    let chars: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    if chars.len() < 3 {
        return vec![text];
    }
    let (a, b) = (chars[chars.len() / 3], chars[2 * chars.len() / 3]);
    vec![&text[..a], &text[a..b], &text[b..]]
}
