//! The server's answer to each valid client event (PROTOCOL.md §3): `session.update` merge,
//! audio accounting, conversation items, truncate checks, `response.create` / `.cancel`.
//! Client mistakes are answered with `error` like the real server and, where the gateway must
//! never make them, recorded as violations.

use std::time::Instant;

use base64::Engine as _;
use serde_json::{json, Value};

use super::super::config::merge_session;
use super::super::record::{AppendRecord, FunctionOutputRecord, ResponseOrigin, TruncateRecord};
use super::super::script::{
    Reply, DEFAULT_AFTER_TOOL_TAG, DEFAULT_GREETING_TAG, DEFAULT_REPLY_TAG,
};
use super::{new_id, Engine, Item, ItemKind, BASE64};

impl Engine {
    pub(super) fn on_session_update(&mut self, now: Instant, event: &Value) {
        let update = &event["session"];
        if let Some(model) = update.get("model") {
            if *model != self.session["model"] {
                let message = "The model of a session cannot be changed.".into();
                let param = Some("session.model");
                return self.answer_error(now, event, "invalid_value", message, param, true);
            }
        }
        if let Some(voice) = update.pointer("/audio/output/voice") {
            if self.audio_produced && Some(voice) != self.session.pointer("/audio/output/voice") {
                let message =
                    "Cannot update a conversation's voice if assistant audio is present.".into();
                let param = Some("session.audio.output.voice");
                return self.answer_error(now, event, "cannot_update_voice", message, param, true);
            }
        }
        merge_session(&mut self.session, update);
        self.session_updates += 1;
        let confirm = self.behaviour.confirm_session;
        let (config, updates) = (self.session.clone(), self.session_updates);
        self.shared.session(self.index, |record| {
            record.config = config;
            record.session_updates = updates;
            record.confirmed |= confirm;
        });
        if confirm {
            self.confirmed = true;
            let session = self.session.clone();
            self.emit(now, json!({"type": "session.updated", "session": session}));
        }
    }

    pub(super) fn on_append(&mut self, now: Instant, event: &Value) {
        let audio = match BASE64.decode(event["audio"].as_str().unwrap_or_default()) {
            Ok(audio) => audio,
            Err(error) => {
                let message = format!("Invalid base64 audio: {error}.");
                return self.answer_error(
                    now,
                    event,
                    "invalid_value",
                    message,
                    Some("audio"),
                    true,
                );
            }
        };
        if self.session_updates == 0 {
            self.violation(
                now,
                "input_audio_buffer.append before any session.update: the server takes it as \
                 24 kHz PCM"
                    .into(),
                None,
            );
        }
        self.input_bytes += audio.len();
        self.uncommitted_bytes += audio.len();
        self.shared.session(self.index, |record| {
            record.appends.push(AppendRecord {
                at: now,
                offset: record.input_audio.len(),
                bytes: audio.len(),
            });
            record.input_audio.extend_from_slice(&audio);
        });
    }

    pub(super) fn on_commit(&mut self, now: Instant, event: &Value) {
        let buffered_ms = (self.uncommitted_bytes / self.input_bytes_per_ms()) as u64;
        if buffered_ms < 100 {
            let message = format!(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms \
                 of audio, but buffer only has {buffered_ms}ms of audio."
            );
            let code = "input_audio_buffer_commit_empty";
            return self.answer_error(now, event, code, message, None, false);
        }
        self.committed_user_ms += buffered_ms;
        self.commit_user_item(now, new_id("item_", 21), buffered_ms, None);
    }

    pub(super) fn on_item_create(&mut self, now: Instant, event: &Value) {
        let item = &event["item"];
        let previous = event.get("previous_item_id").and_then(Value::as_str);
        if let Some(previous) = previous {
            if previous != "root" && self.item(previous).is_none() {
                let message = format!("Previous item with id '{previous}' not found.");
                let param = Some("previous_item_id");
                return self.answer_error(now, event, "invalid_value", message, param, true);
            }
        }
        let id = match item.get("id").and_then(Value::as_str) {
            Some(id) if self.item(id).is_some() => {
                let message = format!("Item with id '{id}' already exists.");
                return self.answer_error(
                    now,
                    event,
                    "invalid_value",
                    message,
                    Some("item.id"),
                    true,
                );
            }
            Some(id) => id.to_owned(),
            None => new_id("item_", 21),
        };
        let kind = match item["type"].as_str() {
            Some("function_call_output") => {
                let call_id = item["call_id"].as_str().unwrap_or_default().to_owned();
                let known = self.call_ids.contains(&call_id);
                let output = item["output"].as_str().unwrap_or_default().to_owned();
                self.shared.session(self.index, |record| {
                    record.function_outputs.push(FunctionOutputRecord {
                        at: now,
                        call_id: call_id.clone(),
                        output,
                        known_call: known,
                    })
                });
                if !known {
                    let message = format!(
                        "No tool call found for function call output with call_id {call_id}."
                    );
                    let param = Some("item.call_id");
                    return self.answer_error(now, event, "invalid_value", message, param, true);
                }
                if !self.answered_call_ids.insert(call_id.clone()) {
                    let message = format!("second function_call_output for call_id {call_id}");
                    self.violation(now, message, Some(event));
                }
                self.function_outputs += 1;
                self.tool_output_pending = true;
                ItemKind::Other
            }
            Some("function_call") => {
                if let Some(call_id) = item["call_id"].as_str() {
                    self.call_ids.insert(call_id.to_owned());
                }
                ItemKind::FunctionCall
            }
            _ => ItemKind::Other,
        };
        if item["type"] != "function_call_output" {
            let created = item.clone();
            self.shared
                .session(self.index, |record| record.created_items.push(created));
        }
        let mut stored = item.clone();
        stored["id"] = json!(id);
        stored["object"] = json!("realtime.item");
        if stored.get("status").is_none() {
            stored["status"] = json!("completed");
        }
        let previous_item_id = match previous {
            Some("root") => Value::Null,
            Some(previous) => json!(previous),
            None => self.last_item_id(),
        };
        self.emit_item_added_and_done(now, &previous_item_id, &stored);
        self.items.push(Item {
            id,
            kind,
            json: stored,
        });
    }

    pub(super) fn on_truncate(&mut self, now: Instant, event: &Value) {
        let item_id = event["item_id"].as_str().unwrap_or_default().to_owned();
        let content_index = event["content_index"].as_u64().unwrap_or_default();
        let audio_end_ms = event["audio_end_ms"].as_u64().unwrap_or_default();
        let bytes_per_ms = self.output_bytes_per_ms();
        let target = self.item(&item_id).map(|item| match item.kind {
            ItemKind::Assistant { produced, record } => Some((produced, record)),
            _ => None,
        });
        let produced = match target {
            Some(Some((produced, _))) => produced,
            _ => 0,
        };
        let produced_ms = (produced / bytes_per_ms) as u64;
        let problem = match target {
            None => Some((
                "item_id",
                format!("Item with item_id '{item_id}' not found."),
            )),
            Some(None) => Some((
                "item_id",
                format!("Only assistant messages can be truncated; '{item_id}' is not one."),
            )),
            Some(Some(_)) if content_index != 0 => Some((
                "content_index",
                format!("Content index {content_index} is out of range: the item has one part."),
            )),
            Some(Some(_)) if audio_end_ms as usize * bytes_per_ms > produced => Some((
                "audio_end_ms",
                format!(
                    "Audio content of {produced_ms}ms is already shorter than {audio_end_ms}ms."
                ),
            )),
            Some(Some(_)) => None,
        };
        let accepted = problem.is_none();
        self.shared.session(self.index, |record| {
            record.truncates.push(TruncateRecord {
                at: now,
                item_id: item_id.clone(),
                content_index,
                audio_end_ms,
                produced_ms,
                accepted,
            });
            if let (true, Some(Some((_, index)))) = (accepted, target) {
                if let Some(item) = record.assistant_items.get_mut(index) {
                    item.truncated_at_ms = Some(audio_end_ms);
                }
            }
        });
        if let Some((param, message)) = problem {
            return self.answer_error(now, event, "invalid_value", message, Some(param), true);
        }
        if audio_end_ms == 0 {
            let message = "zero-length truncate (audio_end_ms 0): skip it when nothing was played";
            self.violation(now, message.into(), Some(event));
        }
        self.emit(
            now,
            json!({"type": "conversation.item.truncated", "item_id": item_id,
                   "content_index": 0, "audio_end_ms": audio_end_ms}),
        );
    }

    pub(super) fn on_item_delete(&mut self, now: Instant, event: &Value) {
        let item_id = event["item_id"].as_str().unwrap_or_default().to_owned();
        match self.items.iter().position(|item| item.id == item_id) {
            Some(position) => {
                self.items.remove(position);
                self.emit(
                    now,
                    json!({"type": "conversation.item.deleted", "item_id": item_id}),
                );
            }
            None => {
                let message = format!("Item with item_id '{item_id}' not found.");
                self.answer_error(now, event, "invalid_value", message, Some("item_id"), true);
            }
        }
    }

    pub(super) fn on_item_retrieve(&mut self, now: Instant, event: &Value) {
        let item_id = event["item_id"].as_str().unwrap_or_default();
        match self.item(item_id).map(|item| item.json.clone()) {
            Some(item) => self.emit(
                now,
                json!({"type": "conversation.item.retrieved", "item": item}),
            ),
            None => {
                let message = format!("Item with item_id '{item_id}' not found.");
                self.answer_error(now, event, "invalid_value", message, Some("item_id"), true);
            }
        }
    }

    pub(super) fn on_response_create(&mut self, now: Instant, event: &Value) {
        if let Some(active) = &self.active {
            let message = format!(
                "Conversation already has an active response in progress: {}. Wait until the \
                 response is finished before creating a new one.",
                active.id
            );
            let code = "conversation_already_has_active_response";
            return self.answer_error(now, event, code, message, None, true);
        }
        let behaviour = &self.behaviour;
        let (reply, origin) = if self.tool_output_pending {
            let reply = behaviour.after_tool_output.clone();
            let reply = reply.unwrap_or_else(|| Reply::default_for(DEFAULT_AFTER_TOOL_TAG));
            (reply, ResponseOrigin::AfterToolOutput)
        } else if !self.greeted {
            let reply = behaviour.greeting.clone();
            let reply = reply.unwrap_or_else(|| Reply::default_for(DEFAULT_GREETING_TAG));
            (reply, ResponseOrigin::Greeting)
        } else {
            let reply = behaviour.other_response.clone();
            let reply = reply.unwrap_or_else(|| Reply::default_for(DEFAULT_REPLY_TAG));
            (reply, ResponseOrigin::ClientRequest)
        };
        self.greeted = true;
        let request = event.get("response").cloned().unwrap_or(Value::Null);
        self.start_response(now, reply, origin, request);
    }

    pub(super) fn on_response_cancel(&mut self, now: Instant, event: &Value) {
        let requested = event.get("response_id").and_then(Value::as_str);
        match &self.active {
            Some(active) if requested.is_none_or(|id| id == active.id) => {
                self.cancel_response(now, "client_cancelled")
            }
            // PROTOCOL.md §3.7: harmless, so not a violation (a cancel may race response.done).
            _ => {
                let message = "Cancellation failed: no active response found.".into();
                self.answer_error(
                    now,
                    event,
                    "response_cancel_not_active",
                    message,
                    None,
                    false,
                )
            }
        }
    }
}
