//! The one interface between a call and a speech-to-speech backend (today OpenAI Realtime).
//!
//! A backend is a sans-IO [`SpeechSession`]: `io/` carries its text frames over whatever
//! transport it needs and feeds the replies back; the call's [`Bridge`](super::bridge::Bridge)
//! sends it the caller's audio and reacts to the backend-neutral [`SpeechEvent`]s. Adding another
//! backend means another `SpeechSession`, without touching SIP or media code.

use std::time::Duration;

use bytes::Bytes;

/// Who said something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The person on the phone.
    Caller,
    /// The model.
    Agent,
}

impl Role {
    /// `caller` / `agent`, for logs and transcript files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Caller => "caller",
            Role::Agent => "agent",
        }
    }
}

/// Tokens a response used, split like the Realtime `usage` block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Input text tokens.
    pub input_text: u64,
    /// Input audio tokens.
    pub input_audio: u64,
    /// Input image tokens.
    pub input_image: u64,
    /// Of the input, served from the prompt cache.
    pub input_cached: u64,
    /// Output text tokens.
    pub output_text: u64,
    /// Output audio tokens.
    pub output_audio: u64,
}

/// Why a session cannot go on; also the `reason` label of
/// `voxgate_realtime_session_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The connection could not be opened (refused, DNS, TLS, HTTP error on upgrade).
    Connect,
    /// No confirmed session within the connect timeout.
    Timeout,
    /// The service refused the session configuration (e.g. no `audio/pcmu`).
    Rejected,
    /// The connection closed or broke during the call.
    Dropped,
    /// The service's session lifetime ran out before voxgate ended the call.
    Expired,
    /// The service reported an error that ends the session.
    ServerError,
}

impl FailReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Connect => "connect",
            FailReason::Timeout => "timeout",
            FailReason::Rejected => "rejected",
            FailReason::Dropped => "dropped",
            FailReason::Expired => "expired",
            FailReason::ServerError => "server_error",
        }
    }
}

/// What a speech session reports, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum SpeechEvent {
    /// The session is configured; the call may be answered.
    Ready,
    /// Audio of the agent's utterance `item` (any length; not frame aligned).
    Audio {
        /// The utterance it belongs to.
        item: String,
        /// Encoded audio in the call's codec.
        audio: Bytes,
    },
    /// All audio of `item` has been delivered.
    AudioDone {
        /// The utterance.
        item: String,
    },
    /// The backend heard the caller start speaking (barge-in point).
    SpeechStarted,
    /// The caller stopped speaking; an answer is on its way.
    SpeechStopped,
    /// A response is being generated (audio may follow).
    ResponseStarted,
    /// The response finished (completed, cancelled, failed or incomplete).
    ResponseDone {
        /// The backend's status word.
        status: String,
    },
    /// The model calls a function.
    ToolCall {
        /// Correlates the result.
        call_id: String,
        /// The function.
        name: String,
        /// Its arguments, a JSON text.
        arguments: String,
    },
    /// A transcript line.
    Transcript {
        /// Who spoke.
        role: Role,
        /// What was said.
        text: String,
    },
    /// Tokens one response used.
    Usage(TokenUsage),
    /// A recoverable error the backend reported.
    Error {
        /// Its code (`unknown` when none).
        code: String,
        /// Its message.
        message: String,
    },
    /// The session cannot go on.
    Failed {
        /// Why, as a category.
        reason: FailReason,
        /// Why, in an admin's words.
        detail: String,
    },
}

/// A speech backend session, sans-IO: text frames in and out, audio and events in between.
pub trait SpeechSession: Send {
    /// A text frame from the backend.
    fn handle_message(&mut self, text: &str);
    /// One frame of the caller's audio (the call's codec), sent continuously.
    fn send_audio(&mut self, audio: &[u8]);
    /// The caller heard only `heard` of the agent's utterance `item` (barge-in).
    fn truncate(&mut self, item: &str, heard: Duration);
    /// The caller barged in: stop generating if the backend does not do so by itself.
    fn interrupt(&mut self);
    /// The result of a tool call; `respond` asks the model to go on speaking afterwards.
    fn tool_output(&mut self, call_id: &str, output: &str, respond: bool);
    /// The call's codec: audio in both directions is this G.711 law (no transcoding).
    fn set_audio_format(&mut self, law: crate::media::G711);
    /// Ask the model to say something now (queued until any active response is done).
    fn prompt(&mut self, instructions: &str);
    /// Something the caller did that the model should hear of as the caller's turn (e.g. "The
    /// caller pressed 5."), answered by one response once none is active.
    fn caller_text(&mut self, text: &str);
    /// True while the backend generates a response (or one was asked for and not refused).
    fn responding(&self) -> bool;
    /// The next text frame to send to the backend.
    fn poll_transmit(&mut self) -> Option<String>;
    /// The next event for the call.
    fn poll_event(&mut self) -> Option<SpeechEvent>;
}
