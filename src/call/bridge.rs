//! The call bridge, sans-IO: a caller's RTP audio on one side, a [`SpeechSession`] on the other.
//!
//! Once per ptime the media task calls [`Bridge::tick`] with the jitter buffer's frame: the
//! bridge appends it to the session (silence when the buffer had nothing, so the session's
//! timeline stays the call's timeline: no gaps, no duplicates) and returns the frame to send.
//! Agent audio arrives in pieces of any size and is re-packetized by a [`PlayoutQueue`], tagged
//! per utterance so the bridge counts what the caller really heard of each one (frames popped
//! for RTP, not bytes received).
//!
//! Barge-in: when the session reports the caller speaking while agent audio is queued or
//! playing, everything queued is dropped at once, the rest of that utterance's audio is
//! ignored, and the session is told how much of it was heard (it clamps and never sends a
//! zero-length truncate). `end_call` lets the current utterance finish, then hangs up. HTTP
//! tools are run by `io/` ([`BridgeOutput::RunTool`]) and their result comes back through
//! [`Bridge::tool_finished`]. Near the session's lifetime limit the model is asked to say
//! goodbye, then the call ends.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::speech::{FailReason, Role, SpeechEvent, SpeechSession, TokenUsage};
use super::transfer::{TransferRequest, TRANSFER_TOOL};
use crate::config::ToolSettings;
use crate::media::g711::Codec;
use crate::media::playout::{PlayoutFrame, PlayoutQueue};
use crate::media::G711;
use crate::metrics::ToolResult;
use crate::realtime::END_CALL_TOOL;

/// Why the call ends after the time-limit goodbye (also how `io/` recognises that hang-up).
pub const TIME_LIMIT_HANGUP: &str = "the Realtime session reached its time limit";

/// How long `end_call` (or the time-limit goodbye) may wait for the last words to play.
pub const HANGUP_WAIT_MAX: Duration = Duration::from_secs(20);

/// The instructions for the goodbye before the session's lifetime runs out.
pub const TIME_LIMIT_GOODBYE: &str = "The call has reached its time limit. Tell the caller in \
     one short sentence that you have to end the call now, and say goodbye.";

/// Settings of one bridge.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The call's codec (the session speaks the same law: no transcoding).
    pub codec: G711,
    /// Packetisation time.
    pub ptime: Duration,
    /// The HTTP tools the model may call.
    pub tools: Vec<ToolSettings>,
    /// The session's lifetime (60 minutes for OpenAI Realtime).
    pub session_limit: Duration,
    /// How long before the limit the goodbye starts.
    pub goodbye_margin: Duration,
    /// Instructions for the model's first words once the call's media is up; none: the model
    /// waits for the caller.
    pub greeting: Option<String>,
    /// µ-law recording played to the caller when the session fails after answer, before the
    /// call ends.
    pub apology: Option<Bytes>,
    /// The names of the transfer destinations `transfer_call` accepts.
    pub transfers: Vec<String>,
    /// Keys that transfer without the model: (digit, destination).
    pub dtmf_rules: Vec<(char, String)>,
    /// Tell the model which keys the caller pressed.
    pub dtmf_to_model: bool,
    /// How long after the agent's last words went out the call is ended or handed over, so
    /// the far end plays them out of its jitter buffer instead of dropping them with the call.
    pub last_words_grace: Duration,
}

/// What the bridge asks `io/` to do or to record.
#[derive(Debug, Clone, PartialEq)]
pub enum BridgeOutput {
    /// The session is ready: answer the call.
    Answer,
    /// End the call (after answer: BYE).
    Hangup {
        /// In an admin's words.
        why: String,
    },
    /// The session failed: refuse the call (503) before answer, else BYE; counted by reason.
    Failed {
        /// Category.
        reason: FailReason,
        /// In an admin's words.
        detail: String,
    },
    /// Run an HTTP tool and report with [`Bridge::tool_finished`].
    RunTool {
        /// Correlates the result.
        call_id: String,
        /// Its arguments, a JSON text.
        arguments: String,
        /// The tool.
        tool: ToolSettings,
    },
    /// A built-in or unknown tool was called (HTTP tools report their own outcome).
    ToolCalled {
        /// The tool.
        name: String,
        /// How it went.
        result: ToolResult,
    },
    /// A transcript line.
    Transcript {
        /// Who.
        role: Role,
        /// What.
        text: String,
    },
    /// The caller interrupted the agent.
    BargeIn {
        /// How much of the interrupted utterance the caller heard.
        heard: Duration,
        /// Queued audio dropped.
        dropped: Duration,
    },
    /// From the end of the caller's turn to the first frame of the answer on the wire.
    ResponseLatency(Duration),
    /// Tokens one response used.
    Usage(TokenUsage),
    /// Hand the caller to a person (the model's `transfer_call` after its hand-off sentence
    /// played, or a DTMF rule); the outcome comes back by [`Bridge::transfer_failed`] or the
    /// call ends.
    Transfer(super::transfer::TransferRequest),
    /// A recoverable error reported by the session.
    SessionError {
        /// Its code.
        code: String,
        /// Its message.
        message: String,
    },
}

#[derive(Debug)]
struct Utterance {
    id: String,
    tag: u64,
    played: Duration,
    /// All its audio arrived.
    done: bool,
    /// Cut by barge-in: later audio for it is dropped.
    interrupted: bool,
}

/// Utterances remembered (older ones have long finished playing).
const UTTERANCES_REMEMBERED: usize = 16;

#[derive(Debug)]
struct PendingHangup {
    why: String,
    since: Instant,
}

/// One call's bridge to its speech session.
pub struct Bridge<S: SpeechSession> {
    session: S,
    config: BridgeConfig,
    ready: bool,
    failed: bool,
    playout: PlayoutQueue,
    silence: Bytes,
    utterances: VecDeque<Utterance>,
    next_tag: u64,
    /// The tag of the last real frame sent.
    playing: Option<u64>,
    /// When the last real frame was sent.
    last_words_at: Option<Instant>,
    caller_turn_ended_at: Option<Instant>,
    hangup: Option<PendingHangup>,
    /// `transfer_call` waiting for the hand-off sentence to finish playing.
    pending_transfer: Option<(TransferRequest, Instant)>,
    /// A transfer was handed to the call and has not failed back (the call ends on success).
    transferring: bool,
    goodbye_at: Option<Instant>,
    /// The session failed after answer and the apology is playing: report when it has.
    apologizing: Option<(FailReason, String, Option<Instant>)>,
    /// The caller holds the call ([`Bridge::set_held`]).
    held: bool,
    outputs: VecDeque<BridgeOutput>,
}

impl<S: SpeechSession> Bridge<S> {
    /// A bridge over `session` (which has not connected yet).
    pub fn new(session: S, config: BridgeConfig) -> Bridge<S> {
        let codec = Codec::new(config.codec);
        let samples = (config.ptime.as_micros() * 8 / 1_000) as usize;
        Bridge {
            session,
            playout: PlayoutQueue::new(config.codec, config.ptime),
            silence: codec.silence(samples.max(1)),
            config,
            ready: false,
            failed: false,
            utterances: VecDeque::new(),
            next_tag: 1,
            playing: None,
            last_words_at: None,
            caller_turn_ended_at: None,
            hangup: None,
            pending_transfer: None,
            transferring: false,
            goodbye_at: None,
            apologizing: None,
            held: false,
            outputs: VecDeque::new(),
        }
    }

    /// Whether the caller holds the call (their SDP says `sendonly` or `inactive`, or names no
    /// address): no RTP may go to them. While held, the agent's audio waits in its queue instead
    /// of being played to nobody and counted as heard (a barge-in's truncate counts only what
    /// was really sent), and the session hears silence: what comes from a holding caller is
    /// hold music, not the caller talking to it.
    pub fn set_held(&mut self, held: bool) {
        if held != self.held {
            tracing::debug!(held, "caller hold state changed");
        }
        self.held = held;
    }

    /// The session (for tests and inspection).
    pub fn session(&self) -> &S {
        &self.session
    }

    /// True once the session confirmed its configuration.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Agent audio queued for the caller.
    pub fn queued(&self) -> Duration {
        self.playout.queued()
    }

    /// The call's negotiated media: the session speaks `codec` (PCMU or PCMA, never
    /// transcoded) in frames of `ptime`. The greeting starts here, once the caller can hear it.
    pub fn set_media(&mut self, codec: G711, ptime: Duration) {
        if codec != self.config.codec {
            self.config.codec = codec;
            self.session.set_audio_format(codec);
            self.rebuild_playout(ptime);
        } else if ptime != self.config.ptime && !ptime.is_zero() {
            self.rebuild_playout(ptime);
        }
        if let Some(greeting) = self.config.greeting.take() {
            self.session.prompt(&greeting);
        }
    }

    fn rebuild_playout(&mut self, ptime: Duration) {
        self.config.ptime = ptime;
        let samples = (ptime.as_micros() * 8 / 1_000) as usize;
        self.silence = Codec::new(self.config.codec).silence(samples.max(1));
        let mut playout = PlayoutQueue::new(self.config.codec, ptime);
        // (A codec change happens at answer, before any agent audio of that law exists.)
        // Audio already queued (a greeting) is kept, re-cut into the new frame size.
        while !self.playout.is_empty() {
            let frame = self.playout.pop();
            let real = (frame.audio.as_micros() * 8 / 1_000) as usize;
            playout.push_tagged(&frame.payload[..real.min(frame.payload.len())], frame.tag);
        }
        self.playout = playout;
    }

    /// A frame of text from the backend.
    pub fn handle_message(&mut self, now: Instant, text: &str) {
        self.session.handle_message(text);
        self.drain_events(now);
    }

    /// The connection to the backend failed or closed.
    pub fn handle_closed(&mut self, reason: FailReason, detail: String) {
        self.fail(reason, detail);
    }

    /// An HTTP tool finished; `output` is what the model gets (JSON text).
    pub fn tool_finished(&mut self, now: Instant, call_id: &str, output: &str) {
        if self.failed {
            return;
        }
        self.session.tool_output(call_id, output, true);
        self.drain_events(now);
    }

    /// The caller pressed `digit` (RFC 4733 or SIP INFO): a DTMF rule transfers at once,
    /// without the model; otherwise the model is told ("The caller pressed 5.").
    pub fn handle_dtmf(&mut self, now: Instant, digit: char) {
        if self.failed || !self.ready {
            return;
        }
        let rule = self
            .config
            .dtmf_rules
            .iter()
            .find(|(key, _)| *key == digit)
            .map(|(_, destination)| destination.clone());
        if let Some(destination) = rule {
            if self.transferring || self.pending_transfer.is_some() {
                tracing::info!(%digit, "key pressed during a transfer: ignored");
                return;
            }
            tracing::info!(%digit, %destination, "DTMF rule: transferring without the model");
            // The model stops talking: the caller asked to leave.
            self.playout.flush();
            self.transferring = true;
            self.outputs
                .push_back(BridgeOutput::Transfer(TransferRequest {
                    tool_call_id: None,
                    destination,
                    reason: format!("the caller pressed {digit}"),
                    summary: None,
                }));
            return;
        }
        if self.config.dtmf_to_model {
            self.session
                .caller_text(&format!("The caller pressed {digit}."));
            self.drain_events(now);
        }
    }

    /// A transfer failed and the caller stays with the agent: the model gets the typed failure
    /// as the tool's output (a DTMF rule's transfer: as a prompt to tell the caller).
    pub fn transfer_failed(
        &mut self,
        now: Instant,
        request: super::transfer::TransferRequest,
        output: &str,
    ) {
        self.transferring = false;
        if self.failed {
            return;
        }
        match &request.tool_call_id {
            Some(call_id) => self.session.tool_output(call_id, output, true),
            None => self.session.prompt(&format!(
                "The caller asked by keypad to be transferred to {}, but the transfer failed \
                 ({output}). Apologise briefly and offer to help or take a message.",
                request.destination
            )),
        }
        self.drain_events(now);
    }

    /// One ptime tick: `heard` is the caller's frame from the jitter buffer (`None` when it had
    /// none); returns the frame to send to the caller.
    pub fn tick(&mut self, now: Instant, heard: Option<&[u8]>) -> PlayoutFrame {
        if self.ready && !self.failed {
            let heard = heard.filter(|_| !self.held);
            self.session.send_audio(heard.unwrap_or(&self.silence));
        }
        // Before popping: a hangup waits at least one tick after the last frame went out.
        self.check_time(now);
        let frame = if self.held {
            self.playout.pause()
        } else {
            self.playout.pop()
        };
        if !frame.is_silence {
            if let Some(utterance) = self.utterances.iter_mut().find(|u| u.tag == frame.tag) {
                utterance.played += frame.audio;
            }
            self.playing = Some(frame.tag);
            self.last_words_at = Some(now);
            if frame.marker {
                if let Some(ended) = self.caller_turn_ended_at.take() {
                    self.outputs.push_back(BridgeOutput::ResponseLatency(
                        now.saturating_duration_since(ended),
                    ));
                }
            }
        }
        frame
    }

    fn check_time(&mut self, now: Instant) {
        if let Some((_, _, since)) = &mut self.apologizing {
            let since = *since.get_or_insert(now);
            if (self.playout.is_empty() && self.words_heard(now))
                || now.saturating_duration_since(since) >= HANGUP_WAIT_MAX
            {
                if let Some((reason, detail, _)) = self.apologizing.take() {
                    self.outputs
                        .push_back(BridgeOutput::Failed { reason, detail });
                }
            }
            return;
        }
        if self.failed {
            return;
        }
        if self.goodbye_at.is_some_and(|at| now >= at) {
            self.goodbye_at = None;
            tracing::info!(
                limit_secs = self.config.session_limit.as_secs(),
                "the Realtime session nears its lifetime limit: saying goodbye, then hanging up"
            );
            self.session.prompt(TIME_LIMIT_GOODBYE);
            self.hangup.get_or_insert(PendingHangup {
                why: TIME_LIMIT_HANGUP.to_owned(),
                since: now,
            });
        }
        if let Some((_, since)) = &self.pending_transfer {
            let finished = self.finished_speaking(now);
            if finished || now.saturating_duration_since(*since) >= HANGUP_WAIT_MAX {
                if let Some((request, _)) = self.pending_transfer.take() {
                    tracing::info!(
                        destination = %request.destination,
                        "hand-off sentence played: transferring"
                    );
                    self.transferring = true;
                    self.outputs.push_back(BridgeOutput::Transfer(request));
                }
            }
        }
        let Some(hangup) = &self.hangup else { return };
        let finished = self.finished_speaking(now);
        if finished || now.saturating_duration_since(hangup.since) >= HANGUP_WAIT_MAX {
            let why = hangup.why.clone();
            self.hangup = None;
            self.failed = true; // nothing more goes to the session
            self.outputs.push_back(BridgeOutput::Hangup { why });
        }
    }

    /// Nothing left to play or still coming, and the last words have had their grace.
    fn finished_speaking(&self, now: Instant) -> bool {
        self.playout.is_empty() && !self.session.responding() && self.words_heard(now)
    }

    /// The last real frame went out `last_words_grace` ago or more (or none ever did).
    fn words_heard(&self, now: Instant) -> bool {
        self.last_words_at
            .is_none_or(|at| now.saturating_duration_since(at) >= self.config.last_words_grace)
    }

    /// The next text frame for the backend.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.session.poll_transmit()
    }

    /// The next thing for `io/` to do or record.
    pub fn poll_output(&mut self) -> Option<BridgeOutput> {
        self.outputs.pop_front()
    }

    fn fail(&mut self, reason: FailReason, detail: String) {
        if self.failed {
            return;
        }
        self.failed = true;
        let apology = self.config.apology.clone().filter(|_| self.ready);
        let Some(apology) = apology else {
            self.outputs
                .push_back(BridgeOutput::Failed { reason, detail });
            return;
        };
        // Answered: tell the caller before hanging up (the recording is µ-law; an A-law call
        // gets it converted — a prompt, not the call's audio path).
        tracing::info!("playing the apology before hanging up");
        self.playout.flush();
        let audio: Vec<u8> = match self.config.codec {
            G711::Pcmu => apology.to_vec(),
            G711::Pcma => apology
                .iter()
                .map(|&code| {
                    crate::media::g711::linear_to_alaw(crate::media::g711::ulaw_to_linear(code))
                })
                .collect(),
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        self.playout.push_tagged(&audio, tag);
        self.playout.finish_utterance();
        self.apologizing = Some((reason, detail, None));
    }

    fn drain_events(&mut self, now: Instant) {
        while let Some(event) = self.session.poll_event() {
            if self.failed {
                continue;
            }
            self.handle_event(now, event);
        }
    }

    fn handle_event(&mut self, now: Instant, event: SpeechEvent) {
        match event {
            SpeechEvent::Ready => {
                if !self.ready {
                    self.ready = true;
                    let limit = self
                        .config
                        .session_limit
                        .saturating_sub(self.config.goodbye_margin);
                    self.goodbye_at = Some(now + limit);
                    self.outputs.push_back(BridgeOutput::Answer);
                }
            }
            SpeechEvent::Audio { item, audio } => self.queue_audio(item, &audio),
            SpeechEvent::AudioDone { item } => {
                if let Some(utterance) = self.utterances.iter_mut().find(|u| u.id == item) {
                    utterance.done = true;
                    if !utterance.interrupted {
                        self.playout.finish_utterance();
                    }
                }
            }
            SpeechEvent::SpeechStarted => self.barge_in(),
            SpeechEvent::SpeechStopped => self.caller_turn_ended_at = Some(now),
            SpeechEvent::ResponseStarted | SpeechEvent::ResponseDone { .. } => {}
            SpeechEvent::ToolCall {
                call_id,
                name,
                arguments,
            } => self.dispatch_tool(now, call_id, name, arguments),
            SpeechEvent::Transcript { role, text } => {
                self.outputs
                    .push_back(BridgeOutput::Transcript { role, text });
            }
            SpeechEvent::Usage(usage) => self.outputs.push_back(BridgeOutput::Usage(usage)),
            SpeechEvent::Error { code, message } => {
                self.outputs
                    .push_back(BridgeOutput::SessionError { code, message });
            }
            SpeechEvent::Failed { reason, detail } => self.fail(reason, detail),
        }
    }

    fn queue_audio(&mut self, item: String, audio: &[u8]) {
        let tag = match self.utterances.iter().find(|u| u.id == item) {
            Some(utterance) if utterance.interrupted => return,
            Some(utterance) => utterance.tag,
            None => {
                let tag = self.next_tag;
                self.next_tag += 1;
                if self.utterances.len() == UTTERANCES_REMEMBERED {
                    self.utterances.pop_front();
                }
                self.utterances.push_back(Utterance {
                    id: item,
                    tag,
                    played: Duration::ZERO,
                    done: false,
                    interrupted: false,
                });
                tag
            }
        };
        self.playout.push_tagged(audio, tag);
    }

    fn barge_in(&mut self) {
        let queued = !self.playout.is_empty();
        let receiving = self.utterances.iter().any(|u| !u.done && !u.interrupted);
        if !queued && !receiving {
            return; // the agent is silent: an ordinary caller turn
        }
        let dropped = self.playout.flush();
        let mut heard = Duration::ZERO;
        for utterance in self.utterances.iter_mut().filter(|u| !u.interrupted) {
            if Some(utterance.tag) == self.playing {
                heard = utterance.played;
                // The session clamps to what it produced and skips 0 or the whole item.
                self.session.truncate(&utterance.id, utterance.played);
            }
            // Audio still on its way for any of them is no longer wanted.
            utterance.interrupted = true;
        }
        self.session.interrupt();
        tracing::info!(
            heard_ms = heard.as_millis() as u64,
            dropped_ms = dropped.as_millis() as u64,
            "caller interrupted the agent: playout flushed"
        );
        self.outputs
            .push_back(BridgeOutput::BargeIn { heard, dropped });
    }

    fn dispatch_tool(&mut self, now: Instant, call_id: String, name: String, arguments: String) {
        if name == END_CALL_TOOL {
            tracing::info!("the agent ends the call (end_call) after its last words");
            self.outputs.push_back(BridgeOutput::ToolCalled {
                name,
                result: ToolResult::Ok,
            });
            self.hangup.get_or_insert(PendingHangup {
                why: "the agent ended the call".to_owned(),
                since: now,
            });
            return;
        }
        if name == TRANSFER_TOOL {
            self.dispatch_transfer(now, call_id, &arguments);
            return;
        }
        match self.config.tools.iter().find(|tool| tool.name == name) {
            Some(tool) => {
                tracing::info!(tool = %name, %call_id, "the agent calls a tool");
                self.outputs.push_back(BridgeOutput::RunTool {
                    call_id,
                    arguments,
                    tool: tool.clone(),
                });
            }
            None => {
                tracing::warn!(tool = %name, "the agent called an unknown tool");
                let output = serde_json::json!({
                    "status": "error",
                    "error": format!("there is no tool named {name}"),
                })
                .to_string();
                self.outputs.push_back(BridgeOutput::ToolCalled {
                    name,
                    result: ToolResult::Unknown,
                });
                self.session.tool_output(&call_id, &output, true);
            }
        }
    }

    /// `transfer_call`: checked at once (a bad destination is answered straight away), then
    /// held until the hand-off sentence has played.
    fn dispatch_transfer(&mut self, now: Instant, call_id: String, arguments: &str) {
        let args: serde_json::Value = serde_json::from_str(arguments).unwrap_or_default();
        let text = |key: &str| {
            args.get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let destination = text("destination").unwrap_or_default();
        let refusal = if self.transferring || self.pending_transfer.is_some() {
            Some("a transfer is already in progress".to_owned())
        } else if !self.config.transfers.contains(&destination) {
            Some(format!(
                "there is no transfer destination named {destination:?}; choose one of: {}",
                self.config.transfers.join(", ")
            ))
        } else {
            None
        };
        if let Some(error) = refusal {
            tracing::warn!(%destination, "transfer_call refused: {error}");
            self.outputs.push_back(BridgeOutput::ToolCalled {
                name: TRANSFER_TOOL.to_owned(),
                result: ToolResult::Refused,
            });
            let output = serde_json::json!({"status": "error", "error": error}).to_string();
            self.session.tool_output(&call_id, &output, true);
            return;
        }
        let request = TransferRequest {
            tool_call_id: Some(call_id),
            reason: text("reason").unwrap_or_default(),
            summary: text("summary").filter(|s| !s.trim().is_empty()),
            destination,
        };
        tracing::info!(
            destination = %request.destination,
            reason = %request.reason,
            "the agent transfers the call after its hand-off sentence"
        );
        self.outputs.push_back(BridgeOutput::ToolCalled {
            name: TRANSFER_TOOL.to_owned(),
            result: ToolResult::Ok,
        });
        self.pending_transfer = Some((request, now));
    }
}

#[cfg(test)]
mod tests;
