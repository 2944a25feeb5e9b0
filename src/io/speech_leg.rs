//! The I/O side of one call's speech agent: the Realtime WebSocket, HTTP tools, transcript
//! file and metrics around the sans-IO [`Bridge`]. Lives inside the call's media task, so the
//! caller's audio and the agent's audio are handled by the same task without hand-offs.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::realtime_ws::{self, RealtimeSocket};
use super::CoreInput;
use crate::call::bridge::{Bridge, BridgeConfig, BridgeOutput};
use crate::call::speech::FailReason;
use crate::call::CallKey;
use crate::config::{AgentSettings, RealtimeSettings, ToolSettings};
use crate::media::playout::PlayoutFrame;
use crate::media::G711;
use crate::metrics::{Metrics, ToolResult};
use crate::realtime::RealtimeSession;

type Connecting = Pin<Box<dyn Future<Output = Result<Box<RealtimeSocket>, String>> + Send>>;

/// Who the call is, for tools and transcripts.
#[derive(Debug, Clone)]
pub struct CallInfo {
    /// The process-local key.
    pub key: CallKey,
    /// SIP Call-ID.
    pub call_id: String,
    /// The INVITE's From header.
    pub from: String,
    /// The INVITE's To header.
    pub to: String,
}

/// Something happened on the leg.
pub enum LegEvent {
    /// The WebSocket connect finished.
    Connected(Result<Box<RealtimeSocket>, String>),
    /// A frame (or the end) from the WebSocket.
    Frame(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    /// An HTTP tool finished: (call_id, output).
    ToolDone(String, String),
    /// The session did not come up in time.
    ConnectTimeout,
}

/// One call's speech agent.
pub struct SpeechLeg {
    info: CallInfo,
    bridge: Bridge<RealtimeSession>,
    connecting: Option<Connecting>,
    socket: Option<Box<RealtimeSocket>>,
    /// Whether polling `socket` may find something (see [`ReadSignal`]).
    readable: Arc<ReadSignal>,
    started: Instant,
    deadline: Instant,
    ready: bool,
    finished: bool,
    tools_tx: mpsc::Sender<(String, String)>,
    tools_rx: mpsc::Receiver<(String, String)>,
    /// HTTP tools running (`tools_rx` is only polled while one is).
    tools_running: usize,
    transcript: Option<std::fs::File>,
    metrics: Metrics,
    core_tx: mpsc::Sender<CoreInput>,
}

impl SpeechLeg {
    /// Starts connecting at once (the call rings meanwhile).
    pub fn start(
        info: CallInfo,
        agent: &AgentSettings,
        realtime: &RealtimeSettings,
        metrics: Metrics,
        core_tx: mpsc::Sender<CoreInput>,
    ) -> SpeechLeg {
        let started = Instant::now();
        let connecting: Option<Connecting> = match realtime.api_key.clone() {
            Some(key) => {
                let url = realtime.url.clone();
                let model = agent.model.clone();
                Some(Box::pin(async move {
                    realtime_ws::connect(&url, &model, &key).await.map(Box::new)
                }))
            }
            None => None,
        };
        let limit = Duration::from_secs(realtime.session_limit_secs);
        let bridge = Bridge::new(
            RealtimeSession::new(agent),
            BridgeConfig {
                codec: G711::Pcmu,
                ptime: Duration::from_millis(20),
                tools: agent.tools.clone(),
                session_limit: limit,
                goodbye_margin: (limit / 4).min(Duration::from_secs(30)),
                greeting: agent.greeting.clone(),
                apology: realtime.apology.clone(),
                transfers: agent.transfers.iter().map(|d| d.name.clone()).collect(),
                dtmf_rules: agent
                    .dtmf_rules
                    .iter()
                    .filter_map(|rule| Some((rule.digit_char()?, rule.transfer.clone())))
                    .collect(),
                dtmf_to_model: agent.dtmf_to_model,
                last_words_grace: Duration::from_millis(realtime.last_words_grace_ms),
            },
        );
        let transcript = realtime
            .transcripts_dir
            .as_deref()
            .and_then(|dir| open_transcript(dir, &info.call_id));
        let (tools_tx, tools_rx) = mpsc::channel(16);
        let mut leg = SpeechLeg {
            info,
            bridge,
            connecting,
            socket: None,
            readable: Arc::new(ReadSignal::default()),
            started,
            deadline: started + Duration::from_millis(realtime.connect_timeout_ms),
            ready: false,
            finished: false,
            tools_tx,
            tools_rx,
            tools_running: 0,
            transcript,
            metrics,
            core_tx,
        };
        if leg.connecting.is_none() {
            leg.bridge
                .handle_closed(FailReason::Connect, "no API key".to_owned());
        }
        leg.write_transcript(serde_json::json!({
            "event": "call_started", "from": leg.info.from, "to": leg.info.to,
            "agent": agent.name, "model": agent.model,
        }));
        leg
    }

    /// Waits for the next thing to happen on the leg (cancel-safe).
    ///
    /// The media task calls this on every wake-up (each tick and each RTP packet), so it only
    /// touches what may have something: the socket when its read signal says so, the tool
    /// results while a tool runs, the connect deadline while connecting.
    pub async fn next_event(&mut self) -> LegEvent {
        let SpeechLeg {
            connecting,
            socket,
            readable,
            tools_rx,
            tools_running,
            ready,
            finished,
            deadline,
            ..
        } = self;
        let waiting = !*ready && !*finished;
        let deadline = *deadline;
        tokio::select! {
            result = async { match connecting.as_mut() {
                Some(future) => future.await,
                None => std::future::pending().await,
            } } => {
                *connecting = None;
                LegEvent::Connected(result)
            }
            frame = async { match socket.as_mut() {
                Some(socket) => std::future::poll_fn(|cx| readable.poll_next(socket, cx)).await,
                None => std::future::pending().await,
            } } => LegEvent::Frame(frame),
            Some((call_id, output)) = tools_rx.recv(), if *tools_running > 0 => {
                *tools_running -= 1;
                LegEvent::ToolDone(call_id, output)
            }
            _ = async { tokio::time::sleep_until(deadline.into()).await }, if waiting => {
                LegEvent::ConnectTimeout
            }
        }
    }

    /// Acts on an event from [`SpeechLeg::next_event`].
    pub async fn handle(&mut self, event: LegEvent) {
        let now = Instant::now();
        match event {
            LegEvent::Connected(Ok(socket)) => {
                tracing::debug!("Realtime WebSocket open; waiting for session.created");
                self.socket = Some(socket);
                self.readable.woken.store(true, Ordering::Release);
            }
            LegEvent::Connected(Err(error)) => {
                self.bridge.handle_closed(FailReason::Connect, error)
            }
            LegEvent::Frame(Some(Ok(Message::Text(text)))) => {
                self.bridge.handle_message(now, text.as_str());
            }
            LegEvent::Frame(Some(Ok(Message::Close(frame)))) => {
                let why = match frame {
                    Some(frame) => format!(
                        "the Realtime service closed the session (code {}: {})",
                        u16::from(frame.code),
                        frame.reason
                    ),
                    None => "the Realtime service closed the session".to_owned(),
                };
                self.socket = None;
                self.bridge.handle_closed(FailReason::Dropped, why);
            }
            LegEvent::Frame(Some(Ok(_))) => {} // ping/pong (answered by the library), binary
            LegEvent::Frame(Some(Err(error))) => {
                self.socket = None;
                self.bridge.handle_closed(
                    FailReason::Dropped,
                    format!("the Realtime connection broke: {error}"),
                );
            }
            LegEvent::Frame(None) => {
                self.socket = None;
                self.bridge.handle_closed(
                    FailReason::Dropped,
                    "the Realtime connection closed without a close frame".to_owned(),
                );
            }
            LegEvent::ToolDone(call_id, output) => {
                self.write_transcript(serde_json::json!({
                    "event": "tool_result", "call_id": call_id, "output": output,
                }));
                self.bridge.tool_finished(now, &call_id, &output);
            }
            LegEvent::ConnectTimeout => {
                if !self.ready {
                    self.connecting = None;
                    self.socket = None;
                    self.bridge.handle_closed(
                        FailReason::Timeout,
                        format!(
                            "no Realtime session within {} ms",
                            self.deadline
                                .saturating_duration_since(self.started)
                                .as_millis()
                        ),
                    );
                }
            }
        }
        self.process(now).await;
    }

    /// The negotiated codec and packetisation time (starts the greeting; what it sends goes
    /// out at the next tick).
    pub fn set_media(&mut self, codec: G711, ptime: Duration) {
        self.bridge.set_media(codec, ptime);
    }

    /// The caller pressed a key.
    /// (What the bridge makes of it goes out at the next tick.)
    pub fn caller_pressed(&mut self, now: Instant, digit: char) {
        self.bridge.handle_dtmf(now, digit);
    }

    /// A transfer failed and the caller stays: the model hears how.
    pub fn transfer_failed(
        &mut self,
        request: crate::call::transfer::TransferRequest,
        output: &str,
    ) {
        self.bridge.transfer_failed(Instant::now(), request, output);
    }

    /// One ptime tick with the caller's frame; returns the frame to send. `held`: nothing may be
    /// sent to the caller this tick (see [`crate::call::bridge::Bridge::set_held`]).
    pub async fn tick(&mut self, now: Instant, heard: Option<&[u8]>, held: bool) -> PlayoutFrame {
        self.bridge.set_held(held);
        let frame = self.bridge.tick(now, heard);
        if !frame.is_silence && frame.marker {
            tracing::trace!("agent utterance starts");
        }
        self.process(now).await;
        frame
    }

    /// The call ended: close the session politely (bounded).
    pub async fn close(&mut self, outcome: &str) {
        if let Some(mut socket) = self.socket.take() {
            let _ = tokio::time::timeout(Duration::from_millis(500), (*socket).close(None)).await;
        }
        if self.ready && !self.finished {
            self.metrics.realtime.sessions_active.dec();
        }
        self.finished = true;
        self.write_transcript(serde_json::json!({ "event": "call_ended", "outcome": outcome }));
    }

    async fn process(&mut self, now: Instant) {
        while let Some(output) = self.bridge.poll_output() {
            self.handle_output(now, output);
        }
        let Some(socket) = self.socket.as_mut() else {
            // Nothing can be sent; drop what the session queued.
            while self.bridge.poll_transmit().is_some() {}
            return;
        };
        let mut wrote = false;
        let mut failed = None;
        while let Some(text) = self.bridge.poll_transmit() {
            if let Err(error) = socket.feed(Message::text(text)).await {
                failed = Some(error);
                break;
            }
            wrote = true;
        }
        if wrote && failed.is_none() {
            if let Err(error) = socket.flush().await {
                failed = Some(error);
            }
        }
        if let Some(error) = failed {
            self.socket = None;
            self.bridge.handle_closed(
                FailReason::Dropped,
                format!("writing to the Realtime connection failed: {error}"),
            );
            while let Some(output) = self.bridge.poll_output() {
                self.handle_output(now, output);
            }
        }
    }

    fn handle_output(&mut self, now: Instant, output: BridgeOutput) {
        let realtime = self.metrics.realtime.clone();
        match output {
            BridgeOutput::Answer => {
                self.ready = true;
                realtime.sessions_active.inc();
                let took = now.saturating_duration_since(self.started);
                realtime.connect_seconds.observe(took.as_secs_f64());
                tracing::info!(
                    connect_ms = took.as_millis() as u64,
                    "Realtime session ready; answering"
                );
                self.to_core(CoreInput::AgentReady {
                    call: self.info.key,
                });
            }
            BridgeOutput::Failed { reason, detail } => {
                realtime
                    .session_failures_total
                    .with_label_values(&[reason.as_str()])
                    .inc();
                if self.ready && !self.finished {
                    realtime.sessions_active.dec();
                }
                self.finished = true;
                self.connecting = None;
                self.socket = None;
                tracing::warn!(
                    reason = reason.as_str(),
                    "Realtime session failed: {detail}"
                );
                self.write_transcript(serde_json::json!({
                    "event": "session_failed", "reason": reason.as_str(), "detail": detail,
                }));
                self.to_core(CoreInput::AgentFailed {
                    call: self.info.key,
                    why: detail,
                });
            }
            BridgeOutput::Hangup { why } => {
                if why == crate::call::bridge::TIME_LIMIT_HANGUP {
                    realtime.session_limit_total.inc();
                }
                tracing::info!("{why}: hanging up");
                self.to_core(CoreInput::AgentHangup {
                    call: self.info.key,
                    why,
                });
            }
            BridgeOutput::RunTool {
                call_id,
                arguments,
                tool,
            } => {
                self.write_transcript(serde_json::json!({
                    "event": "tool_call", "tool": tool.name, "call_id": call_id,
                    "arguments": arguments,
                }));
                let info = self.info.clone();
                let results = self.tools_tx.clone();
                self.tools_running += 1;
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    let (result, output) = run_http_tool(&tool, &arguments, &info).await;
                    metrics.realtime.count_tool(&tool.name, result);
                    let _ = results.send((call_id, output)).await;
                });
            }
            BridgeOutput::ToolCalled { name, result } => {
                self.write_transcript(serde_json::json!({
                    "event": "tool_call", "tool": name, "result": result.as_str(),
                }));
                realtime.count_tool(&name, result);
            }
            BridgeOutput::Transcript { role, text } => {
                tracing::info!(role = role.as_str(), "{}: {text}", role.as_str());
                self.write_transcript(serde_json::json!({
                    "event": "transcript", "role": role.as_str(), "text": text,
                }));
            }
            BridgeOutput::BargeIn { .. } => realtime.barge_ins_total.inc(),
            BridgeOutput::ResponseLatency(latency) => {
                realtime
                    .response_latency_seconds
                    .observe(latency.as_secs_f64());
            }
            BridgeOutput::Usage(usage) => {
                let tokens = &realtime.tokens_total;
                for (direction, modality, count) in [
                    ("input", "text", usage.input_text),
                    ("input", "audio", usage.input_audio),
                    ("input", "image", usage.input_image),
                    ("output", "text", usage.output_text),
                    ("output", "audio", usage.output_audio),
                ] {
                    if count > 0 {
                        tokens
                            .with_label_values(&[direction, modality])
                            .inc_by(count);
                    }
                }
            }
            BridgeOutput::Transfer(request) => {
                self.write_transcript(serde_json::json!({
                    "event": "transfer", "destination": request.destination,
                    "reason": request.reason, "summary": request.summary,
                }));
                self.to_core(CoreInput::TransferRequested {
                    call: self.info.key,
                    request,
                });
            }
            BridgeOutput::SessionError { code, message } => {
                realtime.count_error(&code);
                tracing::warn!(%code, "Realtime error: {message}");
            }
        }
    }

    fn to_core(&self, input: CoreInput) {
        if self.core_tx.try_send(input).is_err() {
            tracing::error!("core queue full: a call event was lost");
        }
    }

    fn write_transcript(&mut self, mut line: serde_json::Value) {
        let Some(file) = self.transcript.as_mut() else {
            return;
        };
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        line["call_id"] = serde_json::json!(self.info.call_id);
        line["at_ms"] = serde_json::json!(at.as_millis() as u64);
        let mut text = line.to_string();
        text.push('\n');
        if let Err(error) = file.write_all(text.as_bytes()) {
            tracing::warn!(%error, "cannot write the transcript; stopping transcripts for this call");
            self.transcript = None;
        }
    }
}

/// Whether the WebSocket may have something to read.
///
/// tungstenite zero-fills its read buffer (8 KiB, `realtime_ws::READ_BUFFER_BYTES`) before every
/// read attempt, and a read attempt is what polling the stream does, found data or not. The
/// media task polls the leg on every wake-up, twice per 20 ms per call, while the service sends
/// a few events a second. So the stream is polled with this signal as its waker: after a poll
/// that found nothing (`Pending`: every layer, TLS included, is drained and the waker is
/// registered), it is not polled again until that waker fires (data, EOF, an error, or a wake
/// the stream asks for itself). After a frame it is polled again at once: more may be buffered.
#[derive(Debug)]
struct ReadSignal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Default for ReadSignal {
    fn default() -> Self {
        ReadSignal {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl Wake for ReadSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl ReadSignal {
    /// Polls `socket` for its next frame if it may have one, else registers `cx` and waits.
    fn poll_next(
        self: &Arc<Self>,
        socket: &mut RealtimeSocket,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, tokio_tungstenite::tungstenite::Error>>> {
        // Registered before the check, so a wake between the two is never lost.
        self.task.register(cx.waker());
        if !self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(Arc::clone(self));
        let polled = socket.poll_next_unpin(&mut Context::from_waker(&waker));
        if polled.is_ready() {
            self.woken.store(true, Ordering::Release);
        }
        polled
    }
}

fn open_transcript(dir: &Path, call_id: &str) -> Option<std::fs::File> {
    let name: String = call_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    let path = dir.join(format!("{name}.jsonl"));
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(file) => Some(file),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot open the transcript file");
            None
        }
    }
}

/// POSTs the arguments and call metadata; returns (metric result, output for the model).
async fn run_http_tool(
    tool: &ToolSettings,
    arguments: &str,
    info: &CallInfo,
) -> (ToolResult, String) {
    let arguments: serde_json::Value = serde_json::from_str(arguments)
        .unwrap_or_else(|_| serde_json::Value::String(arguments.to_owned()));
    let body = serde_json::json!({
        "tool": tool.name,
        "arguments": arguments,
        "call": { "call_id": info.call_id, "from": info.from, "to": info.to },
    });
    let timeout = Duration::from_millis(tool.timeout_ms);
    let request = realtime_ws::http_client()
        .post(&tool.url)
        .timeout(timeout)
        .json(&body)
        .send();
    let error = |text: String| serde_json::json!({ "status": "error", "error": text }).to_string();
    let response = match request.await {
        Ok(response) => response,
        Err(e) if e.is_timeout() => {
            tracing::warn!(tool = %tool.name, "tool timed out after {} ms", tool.timeout_ms);
            return (
                ToolResult::Timeout,
                error(format!(
                    "the tool did not answer within {} ms",
                    tool.timeout_ms
                )),
            );
        }
        Err(e) => {
            tracing::warn!(tool = %tool.name, error = %e, "tool request failed");
            return (
                ToolResult::Error,
                error("the tool could not be reached".to_owned()),
            );
        }
    };
    let status = response.status();
    let text = match response.text().await {
        Ok(text) => text,
        Err(_) => {
            return (
                ToolResult::Error,
                error("the tool's answer could not be read".to_owned()),
            )
        }
    };
    if !status.is_success() {
        tracing::warn!(tool = %tool.name, status = status.as_u16(), "tool answered with an error");
        return (
            ToolResult::HttpError,
            error(format!("the tool answered HTTP {}", status.as_u16())),
        );
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value) => (ToolResult::Ok, value.to_string()),
        Err(_) => (
            ToolResult::Ok,
            serde_json::json!({ "result": text }).to_string(),
        ),
    }
}
