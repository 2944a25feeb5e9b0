//! Self-test of the Realtime stand-in (`common::realtime`): a tokio-tungstenite client plays the
//! gateway and checks that the stand-in speaks the GA protocol like the examples in
//! `shared/realtime/examples/` — every server event it receives must validate against
//! `#/$defs/ServerEvent` — and that it catches and records what a client must never do.
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

use common::pcap::payload_for;
use common::realtime::schema::schema_paths;
use common::realtime::{
    frame_index, schema, tagged_audio, tagged_frame, Action, Behaviour, Pace, RealtimeStandIn,
    Reply, ResponseOrigin, SessionEnd, When, FRAME_LEN,
};

const WAIT: Duration = Duration::from_secs(10);
const MODEL: &str = "gpt-realtime-2.1";
const KEY: &str = "sk-test-standin";

/// The gateway's side of one session, checking every server event against the schema.
struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    async fn connect(standin: &RealtimeStandIn) -> Client {
        Client::connect_with(
            standin,
            &format!("?model={MODEL}"),
            &[("authorization", "Bearer sk-test-standin")],
        )
        .await
        .expect("handshake")
    }

    async fn connect_with(
        standin: &RealtimeStandIn,
        query: &str,
        headers: &[(&'static str, &'static str)],
    ) -> Result<Client, WsError> {
        let mut request = format!("{}{query}", standin.url())
            .into_client_request()
            .expect("request");
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, HeaderValue::from_static(value));
        }
        let (ws, _) = connect_async(request).await?;
        Ok(Client { ws })
    }

    /// Connects and configures PCMU both ways like the gateway will; returns `session.updated`.
    async fn configured(standin: &RealtimeStandIn) -> (Client, Value) {
        let mut client = Client::connect(standin).await;
        assert_eq!(client.recv().await["type"], "session.created");
        client.send(telephony_update()).await;
        let updated = client.recv().await;
        assert_eq!(updated["type"], "session.updated", "{updated}");
        (client, updated)
    }

    async fn send(&mut self, event: Value) {
        self.ws
            .send(Message::text(event.to_string()))
            .await
            .expect("send");
    }

    /// Appends `audio` in 20 ms events.
    async fn append(&mut self, audio: &[u8]) {
        for frame in audio.chunks(FRAME_LEN) {
            self.send(json!({"type": "input_audio_buffer.append", "audio": BASE64.encode(frame)}))
                .await;
        }
    }

    async fn next_message(&mut self) -> Option<Result<Message, WsError>> {
        tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("nothing from the stand-in within the wait")
    }

    /// The next server event; panics unless it is a text frame that validates against
    /// `#/$defs/ServerEvent` and the root schema.
    async fn recv(&mut self) -> Value {
        loop {
            match self.next_message().await {
                Some(Ok(Message::Text(text))) => {
                    let event: Value = serde_json::from_str(text.as_str()).expect("JSON event");
                    if let Err(error) = schema().validate_server(&event) {
                        panic!("server event fails #/$defs/ServerEvent: {error}\n{event}");
                    }
                    if let Err(error) = schema().validate(&event) {
                        panic!("server event fails the root schema: {error}\n{event}");
                    }
                    return event;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a server event, got {other:?}"),
            }
        }
    }

    /// Events up to and including the first of `event_type`.
    async fn recv_until(&mut self, event_type: &str) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let event = self.recv().await;
            let done = event["type"] == event_type;
            events.push(event);
            if done {
                return events;
            }
        }
    }

    /// The close frame the stand-in sends, after any remaining events.
    async fn recv_close(&mut self) -> (u16, String) {
        loop {
            match self.next_message().await {
                Some(Ok(Message::Text(_))) => continue,
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

fn telephony_update() -> Value {
    json!({
        "type": "session.update",
        "event_id": "cfg-1",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": "You answer phone calls for Example Co.",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "cedar"}
            },
            "tools": [{
                "type": "function",
                "name": "transfer_to_agent",
                "description": "Transfer the caller to a human.",
                "parameters": {"type": "object",
                               "properties": {"department": {"type": "string"}},
                               "required": ["department"]}
            }],
            "tool_choice": "auto"
        }
    })
}

/// Caller audio as the echo tests send it (pcap payloads 0, 1, …).
fn caller_audio(frames: std::ops::Range<usize>) -> Vec<u8> {
    frames.flat_map(payload_for).collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

fn decoded_deltas(events: &[Value]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter(|e| e["type"] == "response.output_audio.delta")
        .map(|e| BASE64.decode(e["delta"].as_str().unwrap()).unwrap())
        .collect()
}

/// Collapses runs of audio/transcript deltas to one `*deltas*` entry.
fn shape(events: &[Value]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for t in types(events) {
        let t = match t {
            "response.output_audio.delta" | "response.output_audio_transcript.delta" => "*deltas*",
            other => other,
        };
        if out.last() != Some(&t) || t != "*deltas*" {
            out.push(t);
        }
    }
    out
}

fn violations_of(standin: &RealtimeStandIn, index: usize) -> Vec<String> {
    standin
        .session(index)
        .violations
        .iter()
        .map(|v| v.message.clone())
        .collect()
}

#[test]
fn example_sequences_validate_against_the_root_schema() {
    let schema_file = schema_paths()
        .into_iter()
        .find(|path| path.exists())
        .expect("schema present");
    let examples: PathBuf = schema_file.parent().unwrap().join("examples");
    let mut lines = 0;
    for name in [
        "normal-turn.jsonl",
        "barge-in.jsonl",
        "function-call-transfer.jsonl",
    ] {
        let text = std::fs::read_to_string(examples.join(name)).expect("example file");
        for (number, line) in text.lines().enumerate() {
            let event: Value = serde_json::from_str(line).expect("JSON line");
            if let Err(error) = schema().validate(&event) {
                panic!("{name}:{}: {error}", number + 1);
            }
            // The direction sub-schemas agree with the direction of the type.
            let client = schema().validate_client(&event).is_ok();
            let server = schema().validate_server(&event).is_ok();
            assert!(
                client != server,
                "{name}:{}: client {client} server {server}",
                number + 1
            );
            lines += 1;
        }
    }
    assert!(lines > 100, "only {lines} example lines");
    // The validator does reject: a beta event name and a beta session field.
    let beta_delta = json!({"type": "response.audio.delta", "event_id": "event_1",
                            "response_id": "r", "item_id": "i", "output_index": 0,
                            "content_index": 0, "delta": "AAAA"});
    assert!(schema().validate(&beta_delta).is_err());
    let beta_update = json!({"type": "session.update",
                             "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}});
    assert!(schema().validate(&beta_update).is_err());
    assert!(schema()
        .validate_definition("C_SessionUpdate", &beta_update)
        .unwrap_err()
        .contains("input_audio_format"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_turn_streams_the_reply_in_order_with_usage() {
    let answer = tagged_audio(100, 7); // 2 s
    let standin = RealtimeStandIn::start(
        Behaviour::new()
            .step(When::caller_audio_ms(200), [Action::SpeechStarted])
            .step(
                When::caller_audio_ms(300),
                [
                    Action::speech_stopped_saying("What are your opening hours?"),
                    Action::respond(
                        Reply::audio(answer.clone()).transcript("We're open from nine to five."),
                    ),
                ],
            ),
    );
    let mut client = Client::connect(&standin).await;
    let created = client.recv().await;
    assert_eq!(created["type"], "session.created");
    let session = &created["session"];
    assert!(session["id"].as_str().unwrap().starts_with("sess_"));
    assert_eq!(session["model"], MODEL);
    assert_eq!(
        session["audio"]["input"]["format"],
        json!({"type": "audio/pcm", "rate": 24000})
    );
    assert_eq!(session["audio"]["output"]["format"]["type"], "audio/pcm");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires_at = session["expires_at"].as_u64().unwrap();
    assert!(
        (now + 3500..=now + 3700).contains(&expires_at),
        "expires_at {expires_at}"
    );

    client.send(telephony_update()).await;
    let updated = client.recv().await;
    assert_eq!(updated["type"], "session.updated");
    let effective = &updated["session"];
    assert_eq!(
        effective["audio"]["input"]["format"],
        json!({"type": "audio/pcmu"})
    );
    assert_eq!(
        effective["audio"]["output"]["format"],
        json!({"type": "audio/pcmu"})
    );
    assert_eq!(effective["audio"]["output"]["voice"], "cedar");
    // Partial update: the VAD keeps the defaults not sent.
    let vad = &effective["audio"]["input"]["turn_detection"];
    assert_eq!(
        (
            vad["silence_duration_ms"].as_u64(),
            vad["interrupt_response"].as_bool()
        ),
        (Some(500), Some(true))
    );

    let sent = caller_audio(0..30);
    client.append(&sent).await;
    let events = client.recv_until("rate_limits.updated").await;
    assert_eq!(
        shape(&events),
        [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
            "conversation.item.input_audio_transcription.completed",
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added",
            "*deltas*",
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
            "rate_limits.updated",
        ]
    );
    let started = &events[0];
    assert_eq!(started["audio_start_ms"], 200);
    assert_eq!(events[1]["audio_end_ms"], 500);
    let user_item = started["item_id"].as_str().unwrap();
    assert_eq!(events[2]["item_id"], user_item);
    assert_eq!(events[3]["item"]["role"], "user");
    assert_eq!(events[5]["transcript"], "What are your opening hours?");

    // Audio: all of it, in variable chunks that are not all frame-aligned.
    let deltas = decoded_deltas(&events);
    assert_eq!(deltas.concat(), answer);
    let sizes: Vec<usize> = deltas.iter().map(Vec::len).collect();
    assert!(sizes.iter().any(|s| s % FRAME_LEN != 0), "{sizes:?}");
    assert!(sizes.windows(2).any(|w| w[0] != w[1]), "{sizes:?}");
    // Transcript deltas interleave with the audio and add up to the transcript.
    let transcript: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_audio_transcript.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(transcript, "We're open from nine to five.");
    let first_audio = types(&events)
        .iter()
        .position(|t| *t == "response.output_audio.delta")
        .unwrap();
    let last_words = types(&events)
        .iter()
        .rposition(|t| *t == "response.output_audio_transcript.delta")
        .unwrap();
    assert!(
        last_words > first_audio,
        "transcript deltas not interleaved"
    );

    let done = events
        .iter()
        .find(|e| e["type"] == "response.done")
        .unwrap();
    let response = &done["response"];
    assert_eq!(response["status"], "completed");
    assert_eq!(
        response["output"][0]["content"][0]["transcript"],
        "We're open from nine to five."
    );
    assert_eq!(response["audio"]["output"]["voice"], "cedar");
    let usage = &response["usage"];
    assert_eq!(usage["output_token_details"]["audio_tokens"], 40); // 2000 ms / 50
    assert_eq!(usage["input_token_details"]["audio_tokens"], 3); // 300 ms of speech / 100
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap())
    );

    let record = standin.session(0);
    assert_eq!(record.handshake.model.as_deref(), Some(MODEL));
    assert_eq!(record.handshake.api_key.as_deref(), Some(KEY));
    assert_eq!(record.input_format(), Some("audio/pcmu"));
    assert_eq!(record.output_format(), Some("audio/pcmu"));
    assert_eq!(record.voice(), Some("cedar"));
    assert_eq!(record.tool_names(), ["transfer_to_agent"]);
    assert_eq!(record.input_audio, sent);
    assert_eq!(record.appends.len(), 30);
    assert!(record.appends.iter().all(|a| a.bytes == FRAME_LEN));
    assert_eq!(record.responses.len(), 1);
    assert_eq!(record.responses[0].origin, ResponseOrigin::Script);
    let item = &record.assistant_items[0];
    assert_eq!(item.audio, answer);
    assert_eq!(item.deltas.len(), deltas.len());
    assert_eq!(item.status, "completed");
    // What the stand-in sent is what the client got.
    let server_types: Vec<&str> = record.server_event_types();
    assert_eq!(server_types[2..], types(&events)[..]);
    drop(client);
    standin.wait_for_session(0, WAIT, "the client to vanish", |s| s.vanished());
    standin.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_client_events_are_answered_with_error_and_recorded() {
    let standin = RealtimeStandIn::start(Behaviour::new());
    let mut client = Client::connect(&standin).await;
    client.recv().await;
    let cases = [
        (
            json!({"type": "session.update", "event_id": "cfg-temp",
                   "session": {"type": "realtime", "temperature": 0.8}}),
            "unknown_parameter",
            Some("session.temperature"),
        ),
        (
            json!({"type": "session.update", "event_id": "cfg-beta",
                   "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}}),
            "unknown_parameter",
            Some("session.input_audio_format"),
        ),
        (
            json!({"type": "session.update", "event_id": "cfg-tool",
                   "session": {"type": "realtime", "tools": [
                       {"type": "function", "name": "transfer_to_agent", "meta": 1}]}}),
            "unknown_parameter",
            Some("session.tools[0].meta"),
        ),
        (
            json!({"type": "session.update", "event_id": "cfg-format",
                   "session": {"type": "realtime",
                               "audio": {"input": {"format": {"type": "g711_ulaw"}}}}}),
            "invalid_value",
            Some("session.audio.input.format.type"),
        ),
        (
            json!({"type": "input_audio_buffer.flush", "event_id": "flush-1"}),
            "invalid_value",
            Some("type"),
        ),
        (
            json!({"type": "conversation.item.truncate", "event_id": "trunc-1",
                   "item_id": "item_x", "content_index": 0}),
            "missing_required_parameter",
            Some("audio_end_ms"),
        ),
        (json!({"audio": "AAAA"}), "invalid_event", Some("type")),
    ];
    for (event, code, param) in &cases {
        client.send(event.clone()).await;
        let error = client.recv().await;
        assert_eq!(error["type"], "error", "{event}");
        let body = &error["error"];
        assert_eq!(body["type"], "invalid_request_error");
        assert_eq!(body["code"], *code, "{event} → {error}");
        assert_eq!(body["param"].as_str(), *param, "{event} → {error}");
        assert_eq!(
            body["event_id"],
            event.get("event_id").cloned().unwrap_or(Value::Null)
        );
    }
    client.ws.send(Message::text("{not json")).await.unwrap();
    assert_eq!(client.recv().await["error"]["code"], "invalid_json");
    client
        .ws
        .send(Message::binary(vec![0xff; 160]))
        .await
        .unwrap();
    assert_eq!(client.recv().await["error"]["code"], "invalid_event");

    let record = standin.session(0);
    assert_eq!(
        record.violations.len(),
        cases.len() + 2,
        "{:?}",
        violations_of(&standin, 0)
    );
    assert!(record.violations[0].message.contains("session.temperature"));
    assert_eq!(
        record.violations[0].event.as_ref().unwrap()["event_id"],
        "cfg-temp"
    );
    // Rejected updates change nothing.
    assert_eq!(record.session_updates, 0);
    assert_eq!(record.input_format(), Some("audio/pcm"));
    assert_eq!(record.client_events.len(), cases.len() + 2);
    assert!(record.client_events.iter().all(|e| !e.valid));
    let panic = catch_unwind(AssertUnwindSafe(|| standin.assert_no_violations()))
        .expect_err("assert_no_violations must panic");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("session.temperature") && message.contains("binary"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_is_checked_and_beta_header_gets_close_4000() {
    let standin = RealtimeStandIn::start_with(|index| match index {
        3 => Behaviour::new().refuse_handshake(503),
        _ => Behaviour::new(),
    });
    // A wrong path and a missing key are refused at the HTTP level.
    let wrong_path =
        Client::connect_with(&standin, "/beta?model=x", &[("authorization", "Bearer k")]).await;
    assert!(
        matches!(wrong_path, Err(WsError::Http(ref r)) if r.status() == 404),
        "{:?}",
        wrong_path.err()
    );
    let no_key = Client::connect_with(&standin, "?model=x", &[]).await;
    assert!(
        matches!(no_key, Err(WsError::Http(ref r)) if r.status() == 401),
        "{:?}",
        no_key.err()
    );

    let mut beta = Client::connect_with(
        &standin,
        "?model=gpt-realtime",
        &[
            ("authorization", "Bearer k"),
            ("openai-beta", "realtime=v1"),
        ],
    )
    .await
    .expect("the beta handshake is accepted, then closed");
    let error = beta.recv().await;
    assert_eq!(error["error"]["code"], "beta_api_shape_disabled");
    assert_eq!(beta.recv_close().await.0, 4000);
    // Completes the close handshake from the client side.
    assert!(beta.next_message().await.is_none());

    let refused = standin.session(0);
    assert!(!refused.handshake.accepted);
    assert_eq!(refused.end, Some(SessionEnd::Refused));
    assert!(refused.violations[0].message.contains("path"));
    assert!(violations_of(&standin, 1)[0].contains("Authorization"));
    let beta_session = standin.wait_for_session(2, WAIT, "the close echo", |s| {
        matches!(
            s.end,
            Some(SessionEnd::ServerClosed {
                code: 4000,
                client_echoed: true
            })
        )
    });
    assert_eq!(
        beta_session.handshake.openai_beta.as_deref(),
        Some("realtime=v1")
    );
    assert!(beta_session.violations[0].message.contains("OpenAI-Beta"));
    assert!(beta_session
        .server_events_of("session.created")
        .next()
        .is_none());
    assert_eq!(standin.violations().len(), 3);

    // A scripted refusal is not the client's fault.
    let refused =
        Client::connect_with(&standin, "?model=x", &[("authorization", "Bearer k")]).await;
    let refused = match refused {
        Err(WsError::Http(response)) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {:?}", other.map(|_| ())),
    };
    assert_eq!(refused, 503);
    let scripted = standin.session(3);
    assert_eq!(
        (scripted.handshake.accepted, scripted.end),
        (false, Some(SessionEnd::Refused))
    );
    assert_eq!(standin.violations().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_transcript_is_sent_only_when_transcription_is_configured() {
    let standin = RealtimeStandIn::start(Behaviour::new().pace(Pace::Unthrottled).step(
        When::caller_audio_ms(40),
        [
            Action::speech_stopped_saying("Hello?"),
            Action::respond(Reply::audio(tagged_audio(2, 1))),
        ],
    ));
    for (index, transcription) in [json!(null), json!({"model": "whisper-1"})]
        .iter()
        .enumerate()
    {
        let (mut client, _) = Client::configured(&standin).await;
        let mut update = telephony_update();
        update["session"]["audio"]["input"]["transcription"] = transcription.clone();
        client.send(update).await;
        assert_eq!(client.recv().await["type"], "session.updated");
        client.append(&caller_audio(0..2)).await;
        let events = client.recv_until("response.done").await;
        let transcribed: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "conversation.item.input_audio_transcription.completed")
            .collect();
        assert_eq!(transcribed.len(), index, "transcription {transcription}");
        if let Some(event) = transcribed.first() {
            assert_eq!(event["transcript"], "Hello?");
            assert_eq!(event["item_id"], events[0]["item_id"]);
        }
    }
    standin.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_is_checked_against_the_audio_produced() {
    let standin = RealtimeStandIn::start(
        Behaviour::new()
            .pace(Pace::Unthrottled)
            .greeting(Reply::audio(tagged_audio(50, 1)).transcript("Hello, Example Co.")),
    );
    let (mut client, _) = Client::configured(&standin).await;
    client.send(json!({"type": "response.create"})).await;
    let events = client.recv_until("response.done").await;
    let item_id = events[1]["item"]["id"].as_str().unwrap().to_owned();
    let truncate = |ms: u64, id: &str| {
        json!({"type": "conversation.item.truncate", "event_id": format!("trunc-{ms}"),
               "item_id": id, "content_index": 0, "audio_end_ms": ms})
    };
    client.recv_until("rate_limits.updated").await;

    client.send(truncate(0, &item_id)).await;
    let zero = client.recv().await;
    assert_eq!(
        (zero["type"].as_str(), zero["audio_end_ms"].as_u64()),
        (Some("conversation.item.truncated"), Some(0))
    );
    client.send(truncate(1001, &item_id)).await;
    let beyond = client.recv().await;
    assert_eq!(beyond["error"]["code"], "invalid_value");
    assert_eq!(beyond["error"]["param"], "audio_end_ms");
    assert_eq!(beyond["error"]["event_id"], "trunc-1001");
    client.send(truncate(600, "item_unknown")).await;
    assert_eq!(client.recv().await["error"]["param"], "item_id");
    client.send(truncate(600, &item_id)).await;
    let fine = client.recv().await;
    assert_eq!(
        fine,
        json!({"type": "conversation.item.truncated", "event_id": fine["event_id"],
                            "item_id": item_id, "content_index": 0, "audio_end_ms": 600})
    );

    let record = standin.session(0);
    assert_eq!(record.responses[0].origin, ResponseOrigin::Greeting);
    let truncates: Vec<(u64, u64, bool)> = record
        .truncates
        .iter()
        .map(|t| (t.audio_end_ms, t.produced_ms, t.accepted))
        .collect();
    assert_eq!(
        truncates,
        [
            (0, 1000, true),
            (1001, 1000, false),
            (600, 0, false),
            (600, 1000, true)
        ]
    );
    assert_eq!(
        record.assistant_item(&item_id).unwrap().truncated_at_ms,
        Some(600)
    );
    let violations = violations_of(&standin, 0);
    assert_eq!(violations.len(), 3, "{violations:?}");
    assert!(violations[0].contains("zero-length"));
    assert!(violations[1].contains("shorter than 1001ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_create_while_active_is_a_violation_and_cancel_works() {
    let standin = RealtimeStandIn::start(
        Behaviour::new()
            .pace(Pace::Speedup(1.0))
            .greeting(Reply::audio(tagged_audio(250, 1))), // 5 s at real time
    );
    let (mut client, _) = Client::configured(&standin).await;
    client
        .send(json!({"type": "response.create", "event_id": "greet"}))
        .await;
    let created = client.recv().await;
    assert_eq!(created["type"], "response.created");
    client
        .send(json!({"type": "response.create", "event_id": "again"}))
        .await;
    let mut events = client.recv_until("error").await;
    let error = events.pop().unwrap();
    assert_eq!(
        error["error"]["code"],
        "conversation_already_has_active_response"
    );
    assert_eq!(error["error"]["event_id"], "again");
    client.send(json!({"type": "response.cancel"})).await;
    let events = client.recv_until("response.done").await;
    let done = events.last().unwrap();
    assert_eq!(done["response"]["status"], "cancelled");
    assert_eq!(
        done["response"]["status_details"]["reason"],
        "client_cancelled"
    );
    assert_eq!(done["response"]["output"][0]["status"], "incomplete");
    assert_eq!(client.recv().await["type"], "rate_limits.updated");
    // Nothing to cancel: an error, but a harmless one (not a violation).
    client.send(json!({"type": "response.cancel"})).await;
    assert_eq!(
        client.recv().await["error"]["code"],
        "response_cancel_not_active"
    );

    let record = standin.session(0);
    let response = &record.responses[0];
    assert_eq!(
        (response.status.as_str(), response.reason.as_deref()),
        ("cancelled", Some("client_cancelled"))
    );
    assert!(record.assistant_items[0].audio.len() < 250 * FRAME_LEN);
    let violations = violations_of(&standin, 0);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("conversation_already_has_active_response"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_cancels_the_response_like_the_server() {
    // Real-time pace. Session 0 is interrupted, so its greeting can be long (a wide margin for
    // the barge-in); session 1 plays its 3 s greeting to the end.
    let behaviour = |greeting_frames: usize| {
        Behaviour::new()
            .pace(Pace::Speedup(1.0))
            .greeting(
                Reply::audio(tagged_audio(greeting_frames, 1))
                    .transcript("Our premium plan includes unlimited calls."),
            )
            .step(When::caller_audio_ms(100), [Action::SpeechStarted])
            .step(
                When::caller_audio_ms(200),
                [
                    Action::speech_stopped(),
                    Action::respond(Reply::audio(tagged_audio(10, 2))),
                ],
            )
    };
    let standin =
        RealtimeStandIn::start_with(move |index| behaviour(if index == 0 { 500 } else { 150 }));

    // Session 0: interrupt_response true (default).
    let (mut client, _) = Client::configured(&standin).await;
    client.send(json!({"type": "response.create"})).await;
    let head = client.recv_until("response.output_audio.delta").await;
    let item_id = head[1]["item"]["id"].as_str().unwrap().to_owned();
    client.append(&caller_audio(0..5)).await;
    let before = client.recv_until("input_audio_buffer.speech_started").await;
    let received: usize = decoded_deltas(&head)
        .iter()
        .chain(&decoded_deltas(&before))
        .map(Vec::len)
        .sum();
    let played_ms = (received / 8 / 2).max(1) as u64;
    client
        .send(
            json!({"type": "conversation.item.truncate", "item_id": item_id,
                       "content_index": 0, "audio_end_ms": played_ms}),
        )
        .await;
    let cancelled = client.recv_until("conversation.item.truncated").await;
    assert_eq!(
        types(&cancelled),
        [
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
            "rate_limits.updated",
            "conversation.item.truncated",
        ]
    );
    assert_eq!(cancelled[3]["item"]["status"], "incomplete");
    let response = &cancelled[5]["response"];
    assert_eq!(
        (
            response["status"].as_str(),
            response["status_details"]["reason"].as_str()
        ),
        (Some("cancelled"), Some("turn_detected"))
    );
    assert!(response["usage"]["output_tokens"].as_u64().is_some());
    client.append(&caller_audio(5..15)).await;
    let answer = client.recv_until("response.done").await;
    assert_eq!(
        shape(&answer)[..6],
        [
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
            "response.created",
            "response.output_item.added",
        ]
    );
    // No transcript was scripted, so no transcription event, although transcription is on.
    assert!(!types(&answer).contains(&"conversation.item.input_audio_transcription.completed"));
    assert_eq!(answer[1]["previous_item_id"], item_id.as_str());
    assert_eq!(decoded_deltas(&answer).concat(), tagged_audio(10, 2));

    let record = standin.session(0);
    let reasons: Vec<_> = record
        .responses
        .iter()
        .map(|r| (r.origin, r.reason.clone()))
        .collect();
    assert_eq!(
        reasons,
        [
            (ResponseOrigin::Greeting, Some("turn_detected".to_owned())),
            (ResponseOrigin::Script, None)
        ]
    );
    let greeting = record.assistant_item(&item_id).unwrap();
    assert_eq!(greeting.status, "incomplete");
    assert_eq!(greeting.audio.len(), received);
    assert_eq!(greeting.truncated_at_ms, Some(played_ms));
    assert_eq!(record.steps_done, 2);

    // Session 1: interrupt_response false: speech_started does not stop the answer.
    let (mut client, _) = Client::configured(&standin).await;
    let mut update = telephony_update();
    update["session"]["audio"]["input"]["turn_detection"] =
        json!({"type": "server_vad", "interrupt_response": false});
    client.send(update).await;
    let updated = client.recv().await;
    assert_eq!(
        updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"],
        500
    );
    client.send(json!({"type": "response.create"})).await;
    client.recv_until("response.output_audio.delta").await;
    client.append(&caller_audio(0..5)).await;
    let events = client.recv_until("response.done").await;
    assert!(types(&events).contains(&"input_audio_buffer.speech_started"));
    assert_eq!(events.last().unwrap()["response"]["status"], "completed");
    assert_eq!(
        decoded_deltas(&events).len() + 1,
        standin.session(1).assistant_items[0].deltas.len()
    );
    standin.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_round_trip() {
    let arguments = json!({"department": "billing", "reason": "Caller disputes an invoice"});
    let standin = RealtimeStandIn::start(
        Behaviour::new()
            .pace(Pace::Unthrottled)
            .step(
                When::caller_audio_ms(100),
                [
                    Action::speech_stopped_saying("I'd like to talk to someone"),
                    Action::respond(
                        Reply::audio(tagged_audio(20, 4))
                            .transcript("Of course, let me connect you.")
                            .function_call("transfer_to_agent", arguments.clone()),
                    ),
                ],
            )
            .step(When::FunctionCallOutput, [])
            .after_tool_output(
                Reply::audio(tagged_audio(15, 5)).transcript("Transferring you now."),
            ),
    );
    let (mut client, _) = Client::configured(&standin).await;
    client.append(&caller_audio(0..5)).await;
    let events = client.recv_until("response.done").await;
    let call_added = events
        .iter()
        .find(|e| e["type"] == "response.output_item.added" && e["item"]["type"] == "function_call")
        .unwrap();
    assert_eq!(call_added["output_index"], 1);
    assert_eq!(call_added["item"]["arguments"], "");
    let streamed: String = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    let args_done = events
        .iter()
        .find(|e| e["type"] == "response.function_call_arguments.done")
        .unwrap();
    assert_eq!(streamed, args_done["arguments"].as_str().unwrap());
    assert_eq!(serde_json::from_str::<Value>(&streamed).unwrap(), arguments);
    assert_eq!(args_done["name"], "transfer_to_agent");
    let call_id = args_done["call_id"].as_str().unwrap().to_owned();
    assert!(call_id.starts_with("call_"));
    // The message item comes first and is done before the call starts.
    let message_done = types(&events)
        .iter()
        .position(|t| *t == "response.output_audio.done")
        .unwrap();
    let call_start = events
        .iter()
        .position(|e| std::ptr::eq(e, call_added))
        .unwrap();
    assert!(message_done < call_start);
    let output = &events.last().unwrap()["response"]["output"];
    assert_eq!(
        (output[0]["type"].as_str(), output[1]["type"].as_str()),
        (Some("message"), Some("function_call"))
    );
    client.recv_until("rate_limits.updated").await;

    let output_item = |call_id: &str| {
        json!({"type": "conversation.item.create", "event_id": format!("fco-{call_id}"),
               "item": {"type": "function_call_output", "call_id": call_id,
                        "output": "{\"status\":\"transfer_initiated\"}"}})
    };
    client.send(output_item("call_unknown")).await;
    let error = client.recv().await;
    assert_eq!(
        (
            error["error"]["param"].as_str(),
            error["error"]["event_id"].as_str()
        ),
        (Some("item.call_id"), Some("fco-call_unknown"))
    );
    client.send(output_item(&call_id)).await;
    let added = client.recv().await;
    assert_eq!(added["type"], "conversation.item.added");
    assert_eq!(added["item"]["call_id"], call_id.as_str());
    assert_eq!(added["previous_item_id"], call_added["item"]["id"]);
    assert_eq!(client.recv().await["type"], "conversation.item.done");
    client.send(json!({"type": "response.create",
                       "response": {"instructions": "Say you are transferring.", "tool_choice": "none"}}))
        .await;
    let follow_up = client.recv_until("response.done").await;
    assert_eq!(decoded_deltas(&follow_up).concat(), tagged_audio(15, 5));
    assert_eq!(
        follow_up.last().unwrap()["response"]["output"][0]["content"][0]["transcript"],
        "Transferring you now."
    );

    let record = standin.session(0);
    assert_eq!(record.function_calls.len(), 1);
    assert_eq!(record.function_calls[0].call_id, call_id);
    let outputs: Vec<(&str, bool)> = record
        .function_outputs
        .iter()
        .map(|o| (o.call_id.as_str(), o.known_call))
        .collect();
    assert_eq!(outputs, [("call_unknown", false), (call_id.as_str(), true)]);
    assert_eq!(
        record.function_outputs[1].output,
        "{\"status\":\"transfer_initiated\"}"
    );
    let follow = &record.responses[1];
    assert_eq!(follow.origin, ResponseOrigin::AfterToolOutput);
    assert_eq!(follow.request["tool_choice"], "none");
    assert_eq!(
        record.responses[0].call_id.as_deref(),
        Some(call_id.as_str())
    );
    assert_eq!(record.steps_done, 2);
    let violations = violations_of(&standin, 0);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("call_unknown"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_endings_are_scripted_and_recorded() {
    let standin = RealtimeStandIn::start_with(|index| match index {
        // Triggered by an append, which is not answered: nothing in flight when the RST goes.
        0 => Behaviour::new().step(When::caller_audio_ms(20), [Action::DropConnection]),
        1 => Behaviour::new().step(When::caller_audio_ms(20), [Action::ResetConnection]),
        2 => Behaviour::new().step(
            When::SessionConfirmed,
            [
                Action::server_error("boom"),
                Action::session_expired(),
                Action::close(1011, "bye"),
            ],
        ),
        _ => Behaviour::new(),
    });
    for index in 0..2 {
        let (mut client, _) = Client::configured(&standin).await;
        client.append(&caller_audio(0..1)).await;
        match client.next_message().await {
            None | Some(Err(WsError::Protocol(_) | WsError::Io(_) | WsError::ConnectionClosed)) => {
            }
            other => panic!("session {index}: expected the connection to vanish, got {other:?}"),
        }
        let ended = standin.wait_for_session(index, WAIT, "the drop", |s| s.is_ended());
        assert_eq!(
            ended.end,
            Some(SessionEnd::ServerDropped { reset: index == 1 })
        );
    }

    let (mut client, _) = Client::configured(&standin).await;
    let boom = client.recv().await;
    assert_eq!(
        (
            boom["error"]["type"].as_str(),
            boom["error"]["code"].as_str()
        ),
        (Some("server_error"), Some("server_error"))
    );
    assert_eq!(client.recv().await["error"]["code"], "session_expired");
    assert_eq!(client.recv_close().await, (1011, "bye".to_owned()));
    assert!(client.next_message().await.is_none());
    standin.wait_for_session(2, WAIT, "the close echo", |s| {
        s.end
            == Some(SessionEnd::ServerClosed {
                code: 1011,
                client_echoed: true,
            })
    });

    // Two sessions at once: separate records; one closes, one vanishes.
    let (mut closing, _) = Client::configured(&standin).await;
    let (mut vanishing, _) = Client::configured(&standin).await;
    closing.append(&tagged_audio(3, 9)).await;
    vanishing.append(&caller_audio(0..2)).await;
    closing
        .ws
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "call ended".into(),
        }))
        .await
        .unwrap();
    drop(vanishing);
    let closed = standin.wait_for_session(3, WAIT, "the client close", |s| s.is_ended());
    assert_eq!(
        closed.end,
        Some(SessionEnd::ClientClosed {
            code: Some(1000),
            reason: "call ended".into()
        })
    );
    assert!(closed.client_closed());
    assert_eq!(closed.input_audio, tagged_audio(3, 9));
    let vanished = standin.wait_for_session(4, WAIT, "the client to vanish", |s| s.is_ended());
    assert!(vanished.vanished(), "{:?}", vanished.end);
    assert_eq!(vanished.input_audio, caller_audio(0..2));
    standin.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_count_from_the_previous_step() {
    let standin = RealtimeStandIn::start(
        Behaviour::new()
            .pace(Pace::Unthrottled)
            .step(
                When::ResponseDone,
                [Action::respond(Reply::audio(tagged_audio(4, 6)))],
            )
            .step(When::truncate(), [Action::server_error("after truncate")])
            .step(When::delay_ms(20), [Action::server_error("after delay")]),
    );
    let (mut client, _) = Client::configured(&standin).await;
    client.send(json!({"type": "response.create"})).await;
    let first = client.recv_until("rate_limits.updated").await;
    assert_eq!(decoded_deltas(&first).concat(), tagged_audio(25, 0xf0)); // default greeting
    let second = client.recv_until("rate_limits.updated").await;
    assert_eq!(decoded_deltas(&second).concat(), tagged_audio(4, 6));
    let item_id = second[1]["item"]["id"].as_str().unwrap().to_owned();
    client
        .send(
            json!({"type": "conversation.item.truncate", "item_id": item_id,
                       "content_index": 0, "audio_end_ms": 40}),
        )
        .await;
    assert_eq!(client.recv().await["type"], "conversation.item.truncated");
    assert_eq!(client.recv().await["error"]["message"], "after truncate");
    assert_eq!(client.recv().await["error"]["message"], "after delay");
    let record = standin.session(0);
    let origins: Vec<ResponseOrigin> = record.responses.iter().map(|r| r.origin).collect();
    assert_eq!(origins, [ResponseOrigin::Greeting, ResponseOrigin::Script]);
    assert_eq!(record.steps_done, 3);
    standin.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_session_update_is_never_answered() {
    let standin = RealtimeStandIn::start(Behaviour::new().without_session_confirmation());
    let mut client = Client::connect(&standin).await;
    assert_eq!(client.recv().await["type"], "session.created");
    client.send(telephony_update()).await;
    // Events are answered in order, so the cancel's error proves no session.updated came.
    client.send(json!({"type": "response.cancel"})).await;
    assert_eq!(
        client.recv().await["error"]["code"],
        "response_cancel_not_active"
    );
    let record = standin.session(0);
    assert_eq!((record.session_updates, record.confirmed), (1, false));
    assert_eq!(record.input_format(), Some("audio/pcmu"));
    standin.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_before_session_update_is_a_violation() {
    let standin = RealtimeStandIn::start(Behaviour::new());
    let mut client = Client::connect(&standin).await;
    client.recv().await;
    client.append(&caller_audio(0..1)).await;
    standin.wait_for_session(0, WAIT, "the append", |s| !s.appends.is_empty());
    assert!(violations_of(&standin, 0)[0].contains("before any session.update"));
}

#[test]
fn tagged_audio_is_recognisable_and_distinct_from_caller_audio() {
    let audio = tagged_audio(300, 0x5a);
    assert_eq!(audio.len(), 300 * FRAME_LEN);
    assert!(
        audio.iter().all(|&b| b != 0xff && b != 0x7f),
        "never µ-law silence"
    );
    for (index, frame) in audio.chunks(FRAME_LEN).enumerate() {
        assert_eq!(frame_index(frame), Some((0x5a, index)));
    }
    for tag in [0, 1, 0x0f, 0x10, 0xf0, 0xff] {
        for index in [0, 1, 63, 64, 4095, 4096, (1 << 18) - 1] {
            assert_eq!(frame_index(&tagged_frame(index, tag)), Some((tag, index)));
        }
    }
    assert_ne!(tagged_frame(3, 1), tagged_frame(3, 2));
    assert_ne!(tagged_frame(3, 1), tagged_frame(4, 1));
    // Caller-side pcap payloads, silence, and partial or altered frames are not model audio.
    assert!((0..500).all(|i| frame_index(&payload_for(i)).is_none()));
    assert_eq!(frame_index(&[0xff; FRAME_LEN]), None);
    assert_eq!(frame_index(&audio[..FRAME_LEN - 1]), None);
    assert_eq!(frame_index(&audio[1..FRAME_LEN + 1]), None);
    let mut altered = tagged_frame(7, 1);
    altered[100] ^= 1;
    assert_eq!(frame_index(&altered), None);
}

#[test]
fn wait_until_gives_up_after_its_timeout() {
    let standin = RealtimeStandIn::start(Behaviour::new());
    assert!(
        !standin.wait_until(Duration::from_millis(30), |state| !state
            .sessions
            .is_empty())
    );
    assert!(standin.wait_until(Duration::from_millis(30), |state| state.sessions.is_empty()));
    assert_eq!(standin.session_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_can_set_chunk_sizes_or_be_only_a_function_call() {
    let standin = RealtimeStandIn::start(
        Behaviour::new()
            .pace(Pace::Unthrottled)
            .greeting(Reply::audio(tagged_audio(4, 1)).chunk_sizes(&[160, 333]))
            .other_response(Reply::only_function_call("end_call", json!({}))),
    );
    let (mut client, _) = Client::configured(&standin).await;
    client.send(json!({"type": "response.create"})).await;
    let greeting = client.recv_until("response.done").await;
    let sizes: Vec<usize> = decoded_deltas(&greeting).iter().map(Vec::len).collect();
    assert_eq!(sizes, [160, 333, 4 * FRAME_LEN - 493]); // the last one: what is left
    client.recv_until("rate_limits.updated").await;

    client.send(json!({"type": "response.create"})).await;
    let call = client.recv_until("response.done").await;
    assert_eq!(
        types(&call),
        [
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ]
    );
    assert_eq!(call[1]["output_index"], 0);
    assert_eq!(call[4]["arguments"], "{}");
    let done = &call[7]["response"];
    assert_eq!(done["output"].as_array().map(Vec::len), Some(1));
    assert_eq!(done["usage"]["output_token_details"]["audio_tokens"], 0);
    let record = standin.session(0);
    assert_eq!(record.responses[1].origin, ResponseOrigin::ClientRequest);
    assert_eq!(record.responses[1].item_id, None);
    assert_eq!(record.function_calls[0].name, "end_call");
    standin.assert_no_violations();
}
