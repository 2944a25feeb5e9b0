//! The scripted side: steps run in order when their trigger holds ([`When`]), and the server-VAD
//! turn events they produce (`speech_started` with barge-in cancel, `speech_stopped` →
//! `committed` → user item → optional transcription), errors, close and drop.

use std::time::Instant;

use serde_json::{json, Value};

use super::super::record::{ResponseOrigin, SessionEnd};
use super::super::script::{Action, When};
use super::{error_event, new_id, Engine, Item, ItemKind, Output, Speech, StepBase};

impl Engine {
    /// Streams due audio and runs due steps until nothing more is due at `now`.
    pub(super) fn settle(&mut self, now: Instant) {
        loop {
            self.advance_response(now);
            if !self.run_steps(now) {
                break;
            }
        }
    }

    pub(super) fn run_steps(&mut self, now: Instant) -> bool {
        let mut ran = false;
        while !self.ended {
            let Some(step) = self.behaviour.steps.get(self.step) else {
                break;
            };
            if !self.is_due(&step.when, now) {
                break;
            }
            let actions = step.actions.clone();
            self.step += 1;
            self.base = StepBase {
                at: now,
                input_bytes: self.input_bytes,
                client_events: self.valid_event_types.len(),
                function_outputs: self.function_outputs,
                responses_done: self.responses_done,
            };
            let steps_done = self.step;
            self.shared
                .session(self.index, |record| record.steps_done = steps_done);
            for action in actions {
                if self.ended {
                    break;
                }
                self.perform(now, action);
            }
            ran = true;
        }
        ran
    }

    pub(super) fn is_due(&self, when: &When, now: Instant) -> bool {
        let base = &self.base;
        match when {
            When::SessionConfirmed => self.confirmed,
            When::CallerAudio(duration) => {
                let needed = duration.as_millis() as usize * self.input_bytes_per_ms();
                self.input_bytes - base.input_bytes >= needed
            }
            When::ClientEvent(event_type) => self.valid_event_types[base.client_events..]
                .iter()
                .any(|t| t == event_type),
            When::FunctionCallOutput => self.function_outputs > base.function_outputs,
            When::ResponseDone => self.responses_done > base.responses_done,
            When::Delay(delay) => now >= base.at + *delay,
        }
    }

    pub(super) fn perform(&mut self, now: Instant, action: Action) {
        match action {
            Action::SpeechStarted => self.speech_started(now),
            Action::SpeechStopped { transcript } => self.speech_stopped(now, transcript),
            Action::Respond(reply) => {
                self.start_response(now, reply, ResponseOrigin::Script, Value::Null)
            }
            Action::Error {
                kind,
                code,
                message,
            } => self.emit(now, error_event(&kind, &code, &message, None, None)),
            Action::Close { code, reason } => self.close(code, &reason),
            Action::DropConnection => self.drop_connection(false),
            Action::ResetConnection => self.drop_connection(true),
        }
    }

    pub(super) fn speech_started(&mut self, now: Instant) {
        if self.speech.is_some() {
            return;
        }
        let item_id = new_id("item_", 21);
        let start_ms = self.input_ms();
        self.emit(
            now,
            json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": start_ms,
                   "item_id": item_id}),
        );
        self.speech = Some(Speech { item_id, start_ms });
        if self.active.is_some() && self.interrupt_response() {
            self.cancel_response(now, "turn_detected");
        }
    }

    pub(super) fn speech_stopped(&mut self, now: Instant, transcript: Option<String>) {
        if self.speech.is_none() {
            self.speech_started(now);
        }
        let Some(speech) = self.speech.take() else {
            return;
        };
        let end_ms = self.input_ms();
        self.emit(
            now,
            json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms,
                   "item_id": speech.item_id}),
        );
        let turn_ms = end_ms.saturating_sub(speech.start_ms);
        self.committed_user_ms += turn_ms;
        self.commit_user_item(now, speech.item_id, turn_ms, transcript);
    }

    /// `committed` + the user item (`turn_ms` of audio); the transcription result if one is
    /// configured.
    pub(super) fn commit_user_item(
        &mut self,
        now: Instant,
        item_id: String,
        turn_ms: u64,
        transcript: Option<String>,
    ) {
        let previous_item_id = self.last_item_id();
        self.emit(
            now,
            json!({"type": "input_audio_buffer.committed", "previous_item_id": previous_item_id,
                   "item_id": item_id}),
        );
        let item = json!({"id": item_id, "object": "realtime.item", "type": "message",
                          "status": "completed", "role": "user",
                          "content": [{"type": "input_audio", "transcript": null}]});
        self.emit_item_added_and_done(now, &previous_item_id, &item);
        self.items.push(Item {
            id: item_id.clone(),
            kind: ItemKind::User,
            json: item,
        });
        self.uncommitted_bytes = 0;
        let transcribing = self
            .session
            .pointer("/audio/input/transcription")
            .is_some_and(Value::is_object);
        if let (Some(transcript), true) = (transcript, transcribing) {
            let audio_tokens = turn_ms / 100;
            let text_tokens = transcript.split_whitespace().count() as u64;
            self.emit(
                now,
                json!({"type": "conversation.item.input_audio_transcription.completed",
                       "item_id": item_id, "content_index": 0, "transcript": transcript,
                       "usage": {"type": "tokens", "input_tokens": audio_tokens,
                                 "output_tokens": text_tokens,
                                 "total_tokens": audio_tokens + text_tokens,
                                 "input_token_details": {"text_tokens": 0,
                                                         "audio_tokens": audio_tokens}}}),
            );
        }
    }

    pub(super) fn close(&mut self, code: u16, reason: &str) {
        self.ended = true;
        self.out.push_back(Output::Close {
            code,
            reason: reason.to_owned(),
        });
        self.shared.session(self.index, |record| {
            record.end.get_or_insert(SessionEnd::ServerClosed {
                code,
                client_echoed: false,
            });
        });
    }

    pub(super) fn drop_connection(&mut self, reset: bool) {
        self.ended = true;
        self.out.push_back(Output::Drop { reset });
        self.shared.session(self.index, |record| {
            record
                .end
                .get_or_insert(SessionEnd::ServerDropped { reset });
        });
    }
}
