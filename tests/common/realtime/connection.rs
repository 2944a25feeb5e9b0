//! The async shell around one [`Engine`]: the WebSocket handshake (with its checks) and the
//! loop that feeds frames and timeouts in and carries [`Output`]s out.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::engine::{Engine, Output};
use super::record::{Handshake, SessionEnd, SessionRecord, Violation};
use super::script::Behaviour;
use super::Shared;

/// The path the GA API serves (PROTOCOL.md §1.1).
pub const REALTIME_PATH: &str = "/v1/realtime";
/// How long a close handshake we started may take before the TCP connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Inbound frames up to 15 MiB of decoded audio (≈ 20 MiB base64) must fit (§1.3).
const MAX_MESSAGE: usize = 32 << 20;

/// What the handshake callback learnt.
struct Registered {
    index: usize,
    behaviour: Behaviour,
    model: Option<String>,
    beta: bool,
    at: Instant,
}

/// A connection the stand-in serves: TCP, or TLS over TCP.
pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// The TCP connection underneath (to reset it).
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Serves one connection until it ends.
pub(super) async fn serve<S: Transport>(stream: S, shared: Arc<Shared>) {
    let registered: Arc<Mutex<Option<Registered>>> = Arc::default();
    // The session is registered inside the callback, before the HTTP answer is written, so a
    // client never sees its upgrade (or refusal) before the record exists. The callback's error
    // type is tungstenite's (an HTTP response).
    #[allow(clippy::result_large_err)]
    let callback = {
        let (registered, shared) = (Arc::clone(&registered), Arc::clone(&shared));
        move |request: &Request, response: Response| {
            let handshake = handshake_of(request);
            let mut refusal = refusal(&handshake);
            let at = Instant::now();
            let (model, beta) = (handshake.model.clone(), handshake.openai_beta.is_some());
            let (index, behaviour) = shared.register(|index| {
                let mut record = SessionRecord::new(index, at, handshake);
                record.handshake.accepted = refusal.is_none();
                record.violations = handshake_problems(&record.handshake)
                    .into_iter()
                    .map(|message| Violation {
                        at,
                        message,
                        event: None,
                    })
                    .collect();
                if refusal.is_some() {
                    record.end = Some(SessionEnd::Refused);
                }
                record
            });
            if let (None, Some(status)) = (&refusal, behaviour.refuse_handshake) {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                let code = match status {
                    StatusCode::UNAUTHORIZED => Some("invalid_api_key"),
                    StatusCode::TOO_MANY_REQUESTS => Some("rate_limit_exceeded"),
                    _ => None,
                };
                refusal = Some((
                    status,
                    openai_error(
                        "Refused by the test's behaviour",
                        "invalid_request_error",
                        code,
                    ),
                ));
                shared.session(index, |record| {
                    record.handshake.accepted = false;
                    record.end = Some(SessionEnd::Refused);
                });
            }
            *registered.lock().unwrap_or_else(|p| p.into_inner()) = Some(Registered {
                index,
                behaviour,
                model,
                beta,
                at,
            });
            match refusal {
                None => Ok(response),
                Some((status, body)) => {
                    let mut error = ErrorResponse::new(Some(body));
                    *error.status_mut() = status;
                    Err(error)
                }
            }
        }
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let accepted =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await;
    let taken = registered.lock().unwrap_or_else(|p| p.into_inner()).take();
    // No HTTP request at all (a port probe, a reset): nothing to record.
    let Some(session) = taken else {
        return;
    };
    let ws = match accepted {
        Ok(ws) => ws,
        Err(error) => {
            shared.session(session.index, |record| {
                if record.end.is_none() {
                    record.handshake.accepted = false;
                    record.end = Some(SessionEnd::Vanished {
                        detail: format!("handshake failed: {error}"),
                    });
                }
            });
            return;
        }
    };
    let mut engine = Engine::new(
        shared,
        session.index,
        session.behaviour,
        session.model.as_deref(),
        session.at,
    );
    engine.start(Instant::now(), session.beta);
    drive(ws, engine).await;
}

async fn drive<S: Transport>(mut ws: WebSocketStream<S>, mut engine: Engine) {
    loop {
        while let Some(output) = engine.poll_output() {
            match output {
                Output::Send(text) => {
                    if let Err(error) = ws.send(Message::text(text)).await {
                        engine.handle_vanished(&format!("send failed: {error}"));
                        return;
                    }
                }
                Output::Close { code, reason } => {
                    let frame = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                    await_close_echo(&mut ws, &mut engine).await;
                    return;
                }
                Output::Drop { reset } => {
                    if reset {
                        let _ = ws.get_ref().tcp().set_zero_linger();
                    }
                    return;
                }
            }
        }
        let deadline = engine.poll_timeout();
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => engine.handle_text(Instant::now(), text.as_str()),
                Some(Ok(Message::Binary(bytes))) => engine.handle_binary(Instant::now(), bytes.len()),
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = match &frame {
                        Some(frame) => (Some(u16::from(frame.code)), frame.reason.to_string()),
                        None => (None, String::new()),
                    };
                    engine.handle_client_close(code, &reason);
                    // Completes the close handshake (tungstenite queued our reply).
                    let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
                    return;
                }
                // Pings are answered by tungstenite itself.
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    engine.handle_vanished(&error.to_string());
                    return;
                }
                None => {
                    engine.handle_vanished("end of stream");
                    return;
                }
            },
            () = sleep_until(deadline) => engine.handle_timeout(Instant::now()),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// After our close frame: read until the client's close frame (or give up after a grace
/// period), then drop the connection.
async fn await_close_echo<S: Transport>(ws: &mut WebSocketStream<S>, engine: &mut Engine) {
    let echo = async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(frame)) => return Some(frame),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    };
    if let Ok(Some(frame)) = tokio::time::timeout(CLOSE_GRACE, echo).await {
        let code = frame.as_ref().map(|f| u16::from(f.code));
        engine.handle_client_close(code, "");
    }
}

fn handshake_of(request: &Request) -> Handshake {
    let query = request.uri().query().unwrap_or_default().to_owned();
    let model = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "model")
        .map(|(_, value)| value.to_owned());
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let api_key = header("authorization")
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .map(|key| key.trim().to_owned())
        })
        .filter(|key| !key.is_empty());
    Handshake {
        path: request.uri().path().to_owned(),
        query,
        model,
        api_key,
        openai_beta: header("openai-beta"),
        headers: request
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
        accepted: false,
    }
}

/// The HTTP answer instead of the upgrade, as the API gives it.
fn refusal(handshake: &Handshake) -> Option<(StatusCode, String)> {
    if handshake.path != REALTIME_PATH {
        return Some((
            StatusCode::NOT_FOUND,
            openai_error("Not found", "invalid_request_error", None),
        ));
    }
    if handshake.api_key.is_none() {
        return Some((
            StatusCode::UNAUTHORIZED,
            openai_error(
                "Missing bearer authentication in header",
                "invalid_request_error",
                None,
            ),
        ));
    }
    None
}

/// An error body in the shape of OpenAI's HTTP API errors.
fn openai_error(message: &str, kind: &str, code: Option<&str>) -> String {
    serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    })
    .to_string()
}

/// Everything wrong with the opening request (each one a violation).
fn handshake_problems(handshake: &Handshake) -> Vec<String> {
    let mut problems = Vec::new();
    if handshake.path != REALTIME_PATH {
        problems.push(format!(
            "handshake: path {:?}, expected {REALTIME_PATH}",
            handshake.path
        ));
    }
    if handshake.api_key.is_none() {
        problems.push("handshake: no `Authorization: Bearer <key>` header".into());
    }
    match handshake.model.as_deref() {
        None | Some("") => problems.push(format!(
            "handshake: no `model` query parameter (query {:?})",
            handshake.query
        )),
        Some(_) => {}
    }
    if let Some(beta) = &handshake.openai_beta {
        problems.push(format!(
            "handshake: `OpenAI-Beta: {beta}` sent (the beta interface is shut down)"
        ));
    }
    problems
}
