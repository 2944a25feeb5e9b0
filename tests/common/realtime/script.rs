//! What the stand-in does in a session: the model's replies and a script of steps.
//!
//! The stand-in plays both the server (protocol rules, always on) and the model plus the server
//! VAD (scripted here). A [`Behaviour`] holds:
//! - the replies to the client's own `response.create`: the greeting (the first one), the
//!   follow-up after a `function_call_output`, and any other;
//! - [`Step`]s run strictly in order: each waits for its [`When`] (counted from the moment the
//!   previous step ran, or from `session.created` for the first) and then performs its
//!   [`Action`]s at once;
//! - whether `session.update` is confirmed, and how fast audio is streamed ([`Pace`]).
//!
//! ```ignore
//! let behaviour = Behaviour::new()
//!     .greeting(Reply::audio(tagged_audio(50, 1)).transcript("Hello, how can I help?"))
//!     .step(When::caller_audio_ms(600), [Action::SpeechStarted])
//!     .step(When::caller_audio_ms(400), [
//!         Action::speech_stopped_saying("Put me through to billing"),
//!         Action::Respond(Reply::audio(tagged_audio(25, 2))
//!             .function_call("transfer_to_agent", json!({"department": "billing"}))),
//!     ])
//!     .after_tool_output(Reply::audio(tagged_audio(20, 3)).transcript("Transferring you now."));
//! ```

use std::time::Duration;

use serde_json::Value;

use super::audio::{pcmu_ms, tagged_audio};

/// Tags of the default replies' audio (see [`Reply::default_for`]).
pub const DEFAULT_GREETING_TAG: u8 = 0xf0;
/// Tag of the default reply after a function call output.
pub const DEFAULT_AFTER_TOOL_TAG: u8 = 0xf1;
/// Tag of the default reply to any other `response.create` and to scripted default replies.
pub const DEFAULT_REPLY_TAG: u8 = 0xf2;

/// Audio delta sizes used in turn (bytes): not frame aligned, like the real server's.
pub const DEFAULT_CHUNK_SIZES: [usize; 8] = [1000, 4800, 1234, 3200, 1601, 2400, 4000, 1999];

/// Per-session behaviour of the stand-in. Cheap to clone; one per session.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub(super) refuse_handshake: Option<u16>,
    pub(super) confirm_session: bool,
    pub(super) greeting: Option<Reply>,
    pub(super) after_tool_output: Option<Reply>,
    pub(super) other_response: Option<Reply>,
    pub(super) steps: Vec<Step>,
    pub(super) pace: Pace,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            refuse_handshake: None,
            confirm_session: true,
            greeting: None,
            after_tool_output: None,
            other_response: None,
            steps: Vec::new(),
            pace: Pace::default(),
        }
    }
}

impl Behaviour {
    /// Confirms every `session.update`, answers every `response.create` with a default reply,
    /// streams audio at [`Pace::default`], no script.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answer the WebSocket upgrade with this HTTP status instead (e.g. 401 bad key, 429, 503).
    /// Not a violation: the session ends as `SessionEnd::Refused`.
    pub fn refuse_handshake(mut self, status: u16) -> Self {
        self.refuse_handshake = Some(status);
        self
    }

    /// Never answer `session.update` with `session.updated` (the gateway's connect timeout).
    pub fn without_session_confirmation(mut self) -> Self {
        self.confirm_session = false;
        self
    }

    /// The reply to the session's first `response.create` (the greeting).
    pub fn greeting(mut self, reply: Reply) -> Self {
        self.greeting = Some(reply);
        self
    }

    /// The reply to a `response.create` that follows a `function_call_output`.
    pub fn after_tool_output(mut self, reply: Reply) -> Self {
        self.after_tool_output = Some(reply);
        self
    }

    /// The reply to any other client `response.create`.
    pub fn other_response(mut self, reply: Reply) -> Self {
        self.other_response = Some(reply);
        self
    }

    /// How fast response audio is streamed.
    pub fn pace(mut self, pace: Pace) -> Self {
        self.pace = pace;
        self
    }

    /// Appends a step: when `when` holds, perform `actions` in order.
    pub fn step(mut self, when: When, actions: impl IntoIterator<Item = Action>) -> Self {
        self.steps.push(Step {
            when,
            actions: actions.into_iter().collect(),
        });
        self
    }
}

/// One script step.
#[derive(Debug, Clone)]
pub struct Step {
    /// What the step waits for, counted from when the previous step ran.
    pub when: When,
    /// Performed in order, at once.
    pub actions: Vec<Action>,
}

/// A step's trigger. Everything counts from the moment the previous step ran (the first step:
/// from `session.created`).
#[derive(Debug, Clone, PartialEq)]
pub enum When {
    /// `session.updated` has been sent (at any time, also before the previous step).
    SessionConfirmed,
    /// This much caller audio (in the session's input format) has been appended since.
    CallerAudio(Duration),
    /// A valid client event of this `type` has been received since.
    ClientEvent(String),
    /// A `conversation.item.create` carrying a `function_call_output` has been received since.
    FunctionCallOutput,
    /// A response has finished (`response.done`, any status) since.
    ResponseDone,
    /// This much wall-clock time has passed since.
    Delay(Duration),
}

impl When {
    /// [`When::CallerAudio`] in milliseconds.
    pub fn caller_audio_ms(ms: u64) -> When {
        When::CallerAudio(Duration::from_millis(ms))
    }

    /// [`When::Delay`] in milliseconds.
    pub fn delay_ms(ms: u64) -> When {
        When::Delay(Duration::from_millis(ms))
    }

    /// [`When::ClientEvent`].
    pub fn client_event(event_type: &str) -> When {
        When::ClientEvent(event_type.to_owned())
    }

    /// A `conversation.item.truncate` has been received since.
    pub fn truncate() -> When {
        When::client_event("conversation.item.truncate")
    }
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `input_audio_buffer.speech_started`. If a response is active and the session's
    /// `turn_detection.interrupt_response` is true (the default), the response is cancelled the
    /// way the server does it (barge-in: `.done` events, `response.done` cancelled /
    /// `turn_detected`).
    SpeechStarted,
    /// End of the caller's turn: `speech_stopped`, `committed`, user item `added`/`done`, and if
    /// a transcript is given and input transcription is configured,
    /// `conversation.item.input_audio_transcription.completed`. Sends `speech_started` first if
    /// no speech is in progress.
    SpeechStopped {
        /// What the caller said (only sent when `audio.input.transcription` is configured).
        transcript: Option<String>,
    },
    /// Start a response with this reply (server-initiated, like VAD's `create_response`). If one
    /// is active, it starts after that one is done.
    Respond(Reply),
    /// Send an `error` event.
    Error {
        /// `error.type`, e.g. `server_error`, `invalid_request_error`.
        kind: String,
        /// `error.code`.
        code: String,
        /// `error.message`.
        message: String,
    },
    /// Send a close frame with this code and reason, then end the session.
    Close {
        /// WebSocket close code (1000, 1011, 4000, …).
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// End the TCP connection (FIN) without a close frame.
    DropConnection,
    /// Reset the TCP connection (RST, `SO_LINGER` 0) without a close frame. Like a real reset,
    /// it may destroy events sent just before it that the client has not read yet.
    ResetConnection,
}

impl Action {
    /// [`Action::SpeechStopped`] without a transcript.
    pub fn speech_stopped() -> Action {
        Action::SpeechStopped { transcript: None }
    }

    /// [`Action::SpeechStopped`] with the caller's transcript.
    pub fn speech_stopped_saying(transcript: &str) -> Action {
        Action::SpeechStopped {
            transcript: Some(transcript.to_owned()),
        }
    }

    /// [`Action::Respond`].
    pub fn respond(reply: Reply) -> Action {
        Action::Respond(reply)
    }

    /// An `error` event with any type and code.
    pub fn error(kind: &str, code: &str, message: &str) -> Action {
        Action::Error {
            kind: kind.to_owned(),
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }

    /// `error` type `server_error`, code `server_error`.
    pub fn server_error(message: &str) -> Action {
        Action::error("server_error", "server_error", message)
    }

    /// The 60-minute cap: `error` code `session_expired`.
    pub fn session_expired() -> Action {
        Action::error(
            "invalid_request_error",
            "session_expired",
            "Your session hit the maximum duration of 60 minutes.",
        )
    }

    /// [`Action::Close`].
    pub fn close(code: u16, reason: &str) -> Action {
        Action::Close {
            code,
            reason: reason.to_owned(),
        }
    }
}

/// What the "model" says in one response: audio (streamed as `response.output_audio.delta`),
/// its transcript, and optionally a function call after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Raw bytes in the session's output format (tests use PCMU from [`tagged_audio`]).
    pub audio: Vec<u8>,
    /// The spoken text; split into transcript deltas interleaved with the audio.
    pub transcript: String,
    /// `(name, arguments as a JSON string)` of a function call item after the message.
    pub function_call: Option<(String, String)>,
    /// Delta sizes in bytes, used in turn.
    pub chunk_sizes: Vec<usize>,
}

impl Reply {
    /// A spoken reply with a default transcript (`Reply of N ms.`).
    pub fn audio(audio: Vec<u8>) -> Reply {
        let transcript = format!("Reply of {} ms.", pcmu_ms(audio.len()));
        Reply {
            audio,
            transcript,
            function_call: None,
            chunk_sizes: DEFAULT_CHUNK_SIZES.to_vec(),
        }
    }

    /// A response with only a function call (no message item).
    pub fn only_function_call(name: &str, arguments: Value) -> Reply {
        Reply {
            audio: Vec::new(),
            transcript: String::new(),
            function_call: None,
            chunk_sizes: DEFAULT_CHUNK_SIZES.to_vec(),
        }
        .function_call(name, arguments)
    }

    /// 25 frames (500 ms) of [`tagged_audio`] with `tag`.
    pub fn default_for(tag: u8) -> Reply {
        Reply::audio(tagged_audio(25, tag))
    }

    /// Sets the transcript.
    pub fn transcript(mut self, text: &str) -> Reply {
        self.transcript = text.to_owned();
        self
    }

    /// Adds a function call (output_index 1, or 0 without audio) with these arguments.
    pub fn function_call(mut self, name: &str, arguments: Value) -> Reply {
        self.function_call = Some((name.to_owned(), arguments.to_string()));
        self
    }

    /// Uses these delta sizes (bytes, in turn; zeros are ignored).
    pub fn chunk_sizes(mut self, sizes: &[usize]) -> Reply {
        let sizes: Vec<usize> = sizes.iter().copied().filter(|&s| s > 0).collect();
        assert!(!sizes.is_empty(), "chunk_sizes needs a non-zero size");
        self.chunk_sizes = sizes;
        self
    }
}

/// How fast response audio is streamed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Every delta at once (still one WebSocket message each).
    Unthrottled,
    /// `n` times faster than real time: a delta of `d` ms is followed by the next after `d / n`.
    Speedup(f64),
}

impl Default for Pace {
    /// Four times real time: a 3 s answer streams in 750 ms, so there is time to barge in.
    fn default() -> Self {
        Pace::Speedup(4.0)
    }
}
