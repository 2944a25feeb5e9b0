//! Calls from SIPp (the PBX) through the real voxgate binary to a local OpenAI Realtime stand-in
//! (`tests/common/realtime`, which validates every client event against the GA schema): audio up
//! byte-exact, audio down paced and complete, a hold mid-greeting, barge-in, end_call, an HTTP
//! tool, an unreachable or silent service (503), a dropped session (BYE), and usage tokens in
//! /metrics.
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pcap;
use common::realtime::{
    frame_index, tagged_audio, Action, Behaviour, RealtimeStandIn, Reply, When,
};
use common::rtp::{RtpPacket, RtpSink};
use common::sip;
use common::{Gateway, GatewayConfig, Sipp};

const WAIT: Duration = Duration::from_secs(15);

/// voxgate with one OpenAI agent (`assistant`, the default route) pointed at `standin_url`.
fn gateway(standin_url: &str, agent_extra: &str, realtime_extra: &str) -> Gateway {
    let extra = format!(
        "[[agents]]\nname = \"assistant\"\nkind = \"openai\"\nmodel = \"gpt-realtime\"\n\
         voice = \"marin\"\ninstructions = \"You are a test agent.\"\n{agent_extra}\n\n\
         [realtime]\nurl = \"{standin_url}\"\nconnect_timeout_ms = 3000\n{realtime_extra}\n"
    );
    Gateway::start_with(GatewayConfig {
        extra,
        route_agent: "assistant".into(),
        env: vec![("OPENAI_API_KEY".into(), "sk-test-key".into())],
        ..GatewayConfig::default()
    })
}

/// Frames of the stand-in's tagged audio with `tag` the caller received, in arrival order.
fn agent_frames(packets: &[RtpPacket], tag: u8) -> Vec<(usize, &RtpPacket)> {
    packets
        .iter()
        .filter_map(|p| match frame_index(&p.payload) {
            Some((t, index)) if t == tag => Some((index, p)),
            _ => None,
        })
        .collect()
}

/// A SIPp call (`sipp`, given voxgate's SIP address) to an agent that greets with `frames`
/// frames of tagged audio (tag 1); the RTP the caller received, once SIPp succeeded.
fn greeted_call(
    frames: usize,
    sipp: impl FnOnce(SocketAddr) -> Sipp,
) -> (RealtimeStandIn, Gateway, Vec<RtpPacket>) {
    let standin =
        RealtimeStandIn::start(Behaviour::new().greeting(Reply::audio(tagged_audio(frames, 1))));
    let gateway = gateway(&standin.url(), "greeting = \"Say hello.\"", "");
    let sipp = sipp(gateway.sip_addr());
    let sink = RtpSink::bind(sipp.echo_addr());
    let outcome = sipp.run();
    let received = sink.finish();
    outcome.assert_success();
    (standin, gateway, received)
}

/// Frames 0..`frames` of an utterance arrived, each once, in order.
fn assert_complete(utterance: &[(usize, &RtpPacket)], frames: usize, what: &str) {
    let indices: Vec<usize> = utterance.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, (0..frames).collect::<Vec<_>>(), "{what}");
}

fn metric(gateway: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    gateway.metrics().get(name, labels).unwrap_or(0.0)
}

/// (1) Caller audio reaches the service byte-exact and in order, one 20 ms append per frame;
/// plus the handshake and session configuration (GA, PCMU both ways, no beta header).
#[test]
fn caller_audio_reaches_the_service_byte_exact_in_order() {
    if common::sipp::skip_without_root("caller_audio_reaches_the_service_byte_exact_in_order") {
        return;
    }
    let standin = RealtimeStandIn::start(Behaviour::new());
    let gateway = gateway(&standin.url(), "", "");
    let packets = 150;
    talk(Sipp::new("uac_echo.xml", gateway.sip_addr()).with_audio(packets));
    let session = standin.wait_for_session(0, WAIT, "the call's session to end", |s| s.is_ended());
    let handshake = &session.handshake;
    assert_eq!(handshake.model.as_deref(), Some("gpt-realtime"));
    assert_eq!(handshake.api_key.as_deref(), Some("sk-test-key"));
    assert!(handshake.openai_beta.is_none(), "no OpenAI-Beta header");
    assert_eq!(session.input_format(), Some("audio/pcmu"));
    assert_eq!(session.output_format(), Some("audio/pcmu"));
    assert_eq!(session.voice(), Some("marin"));
    assert!(session.tool_names().contains(&"end_call"));
    assert!(
        session.client_closed(),
        "voxgate closed the session after BYE"
    );
    assert_caller_audio_arrived(&session, packets);
    standin.assert_no_violations();
}

/// A SIPp call that plays its audio, stays 3.6 s and hangs up (its echo port bound, so the
/// agent's RTP has somewhere to go); it must succeed.
fn talk(sipp: Sipp) {
    let sipp = sipp.pause_ms(3_600);
    let sink = RtpSink::bind(sipp.echo_addr());
    let outcome = sipp.run();
    drop(sink);
    outcome.assert_success();
}

/// One 20 ms frame per append; the caller's `frames` numbered frames, in order, each exactly
/// once; silence around them, and after the last one the jitter buffer's fade-out
/// (concealment, at most 60 ms: it cannot know the stream ended). On loopback nothing is lost,
/// so nothing else may appear mid-stream.
fn assert_caller_audio_arrived(session: &common::realtime::SessionRecord, frames: usize) {
    assert!(
        session.appends.iter().all(|a| a.bytes == pcap::PAYLOAD_LEN),
        "every append is one 20 ms frame"
    );
    let packets = frames;
    let mut next = 0usize;
    let mut after_last = 0usize;
    for frame in session.input_audio.chunks(pcap::PAYLOAD_LEN) {
        if let Some(index) = pcap::index_of(frame) {
            assert_eq!(
                index, next,
                "caller frame {index} out of order (expected {next})"
            );
            next += 1;
        } else if !frame.iter().all(|&b| b == 0xff) {
            assert_eq!(
                next, packets,
                "frame {next}: an appended frame is neither the caller's audio nor silence"
            );
            after_last += 1;
        }
    }
    assert!(
        after_last <= 3,
        "{after_last} concealed frames after the stream ended"
    );
    assert_eq!(next, packets, "every caller frame arrived at the service");
}

/// (1) with a caller that ignores `a=ptime:20` and sends 30 ms packets, then one that sends
/// 10 ms packets: the jitter buffer follows the packet size and the service still gets one 20 ms
/// frame per append, byte-exact and in order.
#[test]
fn caller_audio_in_packets_of_another_size_reaches_the_service_in_20_ms_frames() {
    if common::sipp::skip_without_root("caller_audio_in_packets_of_another_size") {
        return;
    }
    let standin = RealtimeStandIn::start(Behaviour::new());
    let gateway = gateway(&standin.url(), "", "");
    let frames = 150;
    for (call, packet_len) in [240, 80].into_iter().enumerate() {
        talk(Sipp::new("uac_echo.xml", gateway.sip_addr()).with_audio_cut(frames, packet_len));
        let session =
            standin.wait_for_session(call, WAIT, "the call's session to end", |s| s.is_ended());
        assert_caller_audio_arrived(&session, frames);
    }
    standin.assert_no_violations();
}

/// (2) The greeting's audio reaches the caller complete, in order, as a paced 20 ms stream with
/// one marker; (8) the response's usage tokens appear in /metrics.
#[test]
fn agent_audio_reaches_the_caller_paced_and_complete_and_tokens_are_counted() {
    if common::sipp::skip_without_root("agent_audio_reaches_the_caller_paced_and_complete") {
        return;
    }
    let frames = 100; // 2 s
    let (standin, gateway, received) = greeted_call(frames, |sip| {
        Sipp::new("uac_echo.xml", sip)
            .with_audio(200)
            .pause_ms(4_000)
    });
    let greeting = agent_frames(&received, 1);
    assert_complete(&greeting, frames, "complete and in order");
    // One stream: consecutive sequence numbers and timestamps 160 apart, no gap mid-utterance.
    for pair in greeting.windows(2) {
        let (a, b) = (pair[0].1, pair[1].1);
        assert_eq!(
            b.seq,
            a.seq.wrapping_add(1),
            "sequence gap inside the utterance"
        );
        assert_eq!(b.timestamp, a.timestamp.wrapping_add(160), "timestamp gap");
        assert!(!b.marker, "marker only at the start of the utterance");
    }
    assert!(greeting[0].1.marker, "marker at the start of the utterance");
    // Paced, not burst: the stand-in sent it in a few fast chunks, the caller got it over
    // about two seconds (a burst would arrive within milliseconds).
    let span = greeting[frames - 1].1.at.duration_since(greeting[0].1.at);
    assert!(
        span >= Duration::from_millis(1_500),
        "burst: 2 s of audio in {span:?}"
    );
    let session = standin.session(0);
    let greeting_request = session
        .client_events_of("response.create")
        .next()
        .expect("voxgate asked for the greeting");
    assert_eq!(
        greeting_request.event["response"]["instructions"],
        "Say hello."
    );
    let tokens = gateway.wait_metric(
        "voxgate_realtime_tokens_total",
        &[("direction", "output"), ("modality", "audio")],
        WAIT,
        |v| v > 0.0,
    );
    assert!(tokens > 0.0, "usage tokens in /metrics");
    standin.assert_no_violations();
}

/// Hold: a caller that holds the call mid-greeting (re-INVITE a=sendonly) gets no RTP until it
/// resumes, and then the rest of the greeting: nothing the agent said is lost in the hold (nor
/// counted as heard). The first packet after the hold starts a talkspurt (marker) and its RTP
/// timestamp has run on with the clock (RFC 3550 §5.1), the sequence number has not.
#[test]
fn a_held_call_gets_the_rest_of_the_greeting_when_resumed() {
    let frames = 100; // 2 s of greeting; the hold comes 0.6 s in and lasts 1 s
    let (standin, _gateway, received) =
        greeted_call(frames, |sip| Sipp::new("uac_hold_realtime.xml", sip));
    let greeting = agent_frames(&received, 1);
    assert_complete(
        &greeting,
        frames,
        "the greeting, complete and in order across the hold",
    );
    // The hold: the one long silence of the stream, inside the greeting.
    let (at, gap) = greeting
        .windows(2)
        .enumerate()
        .map(|(i, pair)| (i + 1, pair[1].1.at.duration_since(pair[0].1.at)))
        .max_by_key(|(_, gap)| *gap)
        .expect("frames");
    assert!(
        gap >= Duration::from_millis(700),
        "no pause in the greeting ({gap:?}): the held caller got RTP"
    );
    let held_at = greeting[at - 1].1.at;
    let resumed_at = greeting[at].1.at;
    assert!(
        received
            .iter()
            .all(|p| p.at <= held_at || p.at >= resumed_at),
        "RTP went to the caller while it held the call"
    );
    for (i, pair) in greeting.windows(2).enumerate() {
        let (a, b) = (pair[0].1, pair[1].1);
        assert_eq!(b.seq, a.seq.wrapping_add(1), "sequence gap at frame {i}");
        if i + 1 == at {
            assert!(
                b.marker,
                "the first frame after the hold starts a talkspurt"
            );
            let ticks = i64::from(b.timestamp.wrapping_sub(a.timestamp) / 160);
            let elapsed = (gap.as_millis() / 20) as i64;
            assert!(
                (ticks - elapsed).abs() <= 5,
                "RTP timestamp ran {ticks} ticks over a hold of {elapsed}"
            );
        } else {
            assert_eq!(b.timestamp, a.timestamp.wrapping_add(160), "timestamp gap");
            assert!(!b.marker, "marker only where a talkspurt starts");
        }
    }
    standin.assert_no_violations();
}

/// (3) Barge-in: queued audio stops within a frame of `speech_started`, and `audio_end_ms` of
/// the truncate is within 40 ms of what the caller really received.
#[test]
fn barge_in_stops_playout_and_truncates_to_what_was_heard() {
    if common::sipp::skip_without_root("barge_in_stops_playout_and_truncates_to_what_was_heard") {
        return;
    }
    let frames = 250; // 5 s of greeting, interrupted after about a second
    let standin = RealtimeStandIn::start(
        Behaviour::new()
            .greeting(Reply::audio(tagged_audio(frames, 1)))
            .step(When::caller_audio_ms(1_200), [Action::SpeechStarted]),
    );
    let gateway = gateway(&standin.url(), "greeting = \"Talk for a while.\"", "");
    let sipp = Sipp::new("uac_echo.xml", gateway.sip_addr())
        .with_audio(200)
        .pause_ms(4_000);
    let sink = RtpSink::bind(sipp.echo_addr());
    let outcome = sipp.run();
    let received = sink.finish();
    outcome.assert_success();
    let session = standin.session(0);
    let heard = agent_frames(&received, 1);
    assert!(
        !heard.is_empty() && heard.len() < frames,
        "{} frames heard",
        heard.len()
    );
    let truncate = session.truncates.first().expect("a truncate was sent");
    assert!(truncate.accepted, "truncate accepted: {truncate:?}");
    let item = &session.assistant_items[0];
    assert_eq!(truncate.item_id, item.item_id);
    let heard_ms = heard.len() as i64 * 20;
    let difference = (truncate.audio_end_ms as i64 - heard_ms).abs();
    assert!(
        difference <= 40,
        "audio_end_ms {} vs {heard_ms} ms received by the caller",
        truncate.audio_end_ms
    );
    // Stops within a frame: nothing of the greeting arrives later than a frame (plus
    // scheduling slack) after the stand-in announced the caller's speech.
    let started = session
        .server_events
        .iter()
        .find(|e| e.event_type() == Some("input_audio_buffer.speech_started"))
        .expect("speech_started sent")
        .at;
    let late = heard
        .iter()
        .filter(|(_, p)| p.at > started + Duration::from_millis(60))
        .count();
    assert_eq!(late, 0, "{late} frames played after the barge-in");
    assert_eq!(metric(&gateway, "voxgate_barge_ins_total", &[]), 1.0);
    standin.assert_no_violations();
}

/// (4) `end_call`: the goodbye plays to the end, then voxgate sends BYE.
#[test]
fn end_call_hangs_up_after_the_goodbye() {
    if common::sipp::skip_without_root("end_call_hangs_up_after_the_goodbye") {
        return;
    }
    let frames = 50;
    let standin = RealtimeStandIn::start(
        Behaviour::new().greeting(
            Reply::audio(tagged_audio(frames, 1))
                .transcript("Thanks for calling, goodbye!")
                .function_call("end_call", serde_json::json!({})),
        ),
    );
    let transcripts = tempfile::tempdir().expect("transcripts dir");
    let gateway = gateway(
        &standin.url(),
        "greeting = \"Say goodbye and hang up.\"",
        &format!(
            "transcripts_dir = {:?}",
            transcripts.path().display().to_string()
        ),
    );
    let sipp = Sipp::new("uac_talk_until_bye.xml", gateway.sip_addr()).with_audio(500);
    let sink = RtpSink::bind(sipp.echo_addr());
    let outcome = sipp.run();
    let received = sink.finish();
    outcome.assert_success(); // the scenario ends only with voxgate's BYE
    let goodbye: Vec<usize> = agent_frames(&received, 1).iter().map(|(i, _)| *i).collect();
    assert_eq!(
        goodbye,
        (0..frames).collect::<Vec<_>>(),
        "the whole goodbye played"
    );
    let bye = outcome
        .received()
        .into_iter()
        .find(|m| m.first_line().starts_with("BYE"))
        .expect("BYE from voxgate");
    drop(bye);
    assert_eq!(
        gateway.wait_metric(
            "voxgate_tool_calls_total",
            &[("tool", "end_call"), ("result", "ok")],
            WAIT,
            |v| v >= 1.0
        ),
        1.0
    );
    standin.wait_for_session(0, WAIT, "voxgate to close the session", |s| s.is_ended());
    standin.assert_no_violations();
    // The call's JSON-lines transcript: start, what the agent said, the tool call, the end.
    let files: Vec<_> = std::fs::read_dir(transcripts.path())
        .expect("transcripts dir")
        .flatten()
        .collect();
    assert_eq!(files.len(), 1, "one transcript file per call");
    let text = std::fs::read_to_string(files[0].path()).expect("transcript");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(events.first(), Some(&"call_started"), "{events:?}");
    assert_eq!(events.last(), Some(&"call_ended"), "{events:?}");
    assert!(lines.iter().any(|l| l["event"] == "transcript"
        && l["role"] == "agent"
        && l["text"] == "Thanks for calling, goodbye!"));
    assert!(lines
        .iter()
        .any(|l| l["event"] == "tool_call" && l["tool"] == "end_call"));
    assert!(lines
        .iter()
        .all(|l| l["call_id"].as_str().is_some_and(|id| !id.is_empty()) && l["at_ms"].is_u64()));
}

/// A one-shot HTTP server for a tool: records the request body, answers `body`.
fn http_tool(body: &'static str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    http_tool_on(body, None)
}

/// A connection the tool server answers on: TCP, or TLS over TCP.
trait Connection: Read + Write {}
impl<T: Read + Write> Connection for T {}

/// [`http_tool`], over TLS with `tls` (`https://`).
fn http_tool_on(
    body: &'static str,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(4) {
            let stream: Box<dyn Connection> = match &tls {
                None => Box::new(stream),
                Some(config) => {
                    let Ok(server) = rustls::ServerConnection::new(Arc::clone(config)) else {
                        continue;
                    };
                    Box::new(rustls::StreamOwned::new(server, stream))
                }
            };
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut request = vec![0u8; length];
            let _ = reader.read_exact(&mut request);
            seen.lock()
                .expect("lock")
                .push(String::from_utf8_lossy(&request).into_owned());
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.flush();
        }
    });
    (addr, requests)
}

/// (5) An HTTP tool round trip: arguments and call metadata POSTed, the JSON answer given to
/// the model as the function output, then one `response.create`.
#[test]
fn http_tool_round_trip() {
    if common::sipp::skip_without_root("http_tool_round_trip") {
        return;
    }
    let (tool, requests) = http_tool(r#"{"status":"shipped","eta":"tomorrow"}"#);
    let standin = RealtimeStandIn::start(
        Behaviour::new()
            .step(
                When::caller_audio_ms(400),
                [
                    Action::speech_stopped(),
                    Action::respond(Reply::only_function_call(
                        "lookup_order",
                        serde_json::json!({"order": "42"}),
                    )),
                ],
            )
            .after_tool_output(Reply::audio(tagged_audio(25, 3))),
    );
    let tool_toml = format!(
        "[[agents.tools]]\nname = \"lookup_order\"\ndescription = \"Order status\"\n\
         url = \"http://{tool}/orders\"\ntimeout_ms = 3000\n\
         parameters = {{ type = \"object\", properties = {{ order = {{ type = \"string\" }} }} }}\n"
    );
    let gateway = gateway(&standin.url(), &tool_toml, "");
    let sipp = Sipp::new("uac_echo.xml", gateway.sip_addr())
        .with_audio(150)
        .pause_ms(3_600);
    let sink = RtpSink::bind(sipp.echo_addr());
    let outcome = sipp.run();
    let received = sink.finish();
    outcome.assert_success();
    let session = standin.wait_for_session(0, WAIT, "the tool's answer", |s| {
        !s.function_outputs.is_empty()
    });
    let output = &session.function_outputs[0];
    assert!(output.known_call);
    let value: serde_json::Value = serde_json::from_str(&output.output).expect("JSON output");
    assert_eq!(value["status"], "shipped");
    let posted = requests.lock().expect("lock").clone();
    assert_eq!(posted.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&posted[0]).expect("JSON request");
    assert_eq!(body["arguments"]["order"], "42");
    assert_eq!(body["tool"], "lookup_order");
    assert!(body["call"]["call_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    assert!(body["call"]["from"]
        .as_str()
        .is_some_and(|f| f.contains("sipp")));
    // The follow-up answer was asked for once and reached the caller.
    assert_eq!(session.client_events_of("response.create").count(), 1);
    assert!(
        !agent_frames(&received, 3).is_empty(),
        "the follow-up answer was played"
    );
    assert_eq!(
        metric(
            &gateway,
            "voxgate_tool_calls_total",
            &[("tool", "lookup_order"), ("result", "ok")]
        ),
        1.0
    );
    standin.assert_no_violations();
}

/// A raw INVITE; returns every response until the final one.
fn invite(gateway: &Gateway) -> Vec<sip::Response> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local = socket.local_addr().expect("addr");
    let offer = sip::pcmu_offer(local.ip(), local.port() + 2);
    let request = sip::request("INVITE", gateway.sip_addr(), local, &offer);
    sip::exchange(&socket, request.text.as_bytes(), gateway.sip_addr(), WAIT)
}

/// (6) The service unreachable, or never confirming the session: 180 at once, then 503 with a
/// Reason header so the PBX can fail over; the failure is counted by reason.
#[test]
fn unreachable_or_silent_service_gets_503_with_a_reason() {
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("ws://{}/v1/realtime", closed.local_addr().expect("addr"));
    drop(closed);
    let gateway_down = gateway(&dead_url, "", "");
    let responses = invite(&gateway_down);
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&180),
        "rings while connecting: {statuses:?}"
    );
    let last = responses.last().expect("a final response");
    assert_eq!(last.status, 503, "{statuses:?}");
    let reason = last.header("Reason").expect("Reason header");
    assert!(reason.starts_with("SIP;cause=503;text=\""), "{reason}");
    assert_eq!(
        metric(
            &gateway_down,
            "voxgate_realtime_session_failures_total",
            &[("reason", "connect")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &gateway_down,
            "voxgate_calls_total",
            &[("result", "rejected")]
        ),
        1.0
    );

    // A refused upgrade (a wrong key): the status and the error's code, never the key.
    let refusing = RealtimeStandIn::start(Behaviour::new().refuse_handshake(401));
    let gateway_refused = gateway(&refusing.url(), "", "");
    let last = invite(&gateway_refused).pop().expect("a final response");
    assert_eq!(last.status, 503);
    let reason = last.header("Reason").expect("Reason header");
    assert!(
        reason.contains("HTTP 401 Unauthorized (invalid_api_key)"),
        "{reason}"
    );
    let log = gateway_refused.log();
    assert!(log.contains("(invalid_api_key)"), "{log}");
    assert!(!log.contains("sk-test-key"), "the key stays out of the log");
    assert_eq!(
        metric(
            &gateway_refused,
            "voxgate_realtime_session_failures_total",
            &[("reason", "connect")]
        ),
        1.0
    );

    let silent = RealtimeStandIn::start(Behaviour::new().without_session_confirmation());
    let gateway_silent = gateway(&silent.url(), "", "");
    let started = Instant::now();
    let responses = invite(&gateway_silent);
    let last = responses.last().expect("a final response");
    assert_eq!(last.status, 503);
    assert!(
        started.elapsed() >= Duration::from_millis(2_500),
        "waited for the timeout"
    );
    assert_eq!(
        metric(
            &gateway_silent,
            "voxgate_realtime_session_failures_total",
            &[("reason", "timeout")]
        ),
        1.0
    );
    silent.assert_no_violations();
}

/// The production path, `wss://` (rustls with ring), against the stand-in serving TLS with a
/// certificate of a private CA (`tests/tls`). Without `realtime.ca_file` the certificate is
/// refused: 503 with a Reason that says so, no session. With it, the call is answered, the
/// caller's audio reaches the service over TLS, byte-exact and in order, and an HTTP tool is
/// called over `https://` with a certificate of the same CA.
#[test]
fn wss_service_is_trusted_through_ca_file_and_refused_without_it() {
    let (tool, requests) = http_tool_on(
        r#"{"status":"shipped"}"#,
        Some(common::realtime::test_server_tls()),
    );
    let standin = RealtimeStandIn::start_tls(Behaviour::new().step(
        When::caller_audio_ms(400),
        [Action::respond(Reply::only_function_call(
            "lookup_order",
            serde_json::json!({"order": "42"}),
        ))],
    ));
    assert!(standin.url().starts_with("wss://127.0.0.1:"));

    let untrusted = gateway(&standin.url(), "", "");
    let responses = invite(&untrusted);
    let last = responses.last().expect("a final response");
    assert_eq!(last.status, 503);
    let reason = last.header("Reason").expect("Reason header");
    assert!(
        reason.to_lowercase().contains("certificate"),
        "the Reason says why: {reason}"
    );
    assert_eq!(
        metric(
            &untrusted,
            "voxgate_realtime_session_failures_total",
            &[("reason", "connect")]
        ),
        1.0
    );
    assert_eq!(
        standin.session_count(),
        0,
        "no session over an untrusted certificate"
    );
    drop(untrusted);

    let ca = common::realtime::test_ca_file();
    let tool_toml = format!(
        "[[agents.tools]]\nname = \"lookup_order\"\ndescription = \"Order status\"\n\
         url = \"https://{tool}/orders\"\ntimeout_ms = 3000\n\
         parameters = {{ type = \"object\", properties = {{ order = {{ type = \"string\" }} }} }}\n"
    );
    let ca_toml = format!("ca_file = {:?}", ca.display().to_string());
    let trusted = gateway(&standin.url(), &tool_toml, &ca_toml);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local = socket.local_addr().expect("addr");
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind RTP");
    let offer = sip::pcmu_offer(local.ip(), rtp.local_addr().expect("addr").port());
    let request = sip::request("INVITE", trusted.sip_addr(), local, &offer);
    let responses = sip::exchange(&socket, request.text.as_bytes(), trusted.sip_addr(), WAIT);
    let ok = responses.last().expect("a final response");
    assert_eq!(ok.status, 200, "answered once the session is up over TLS");
    let voxgate_rtp = sip::sdp_rtp_addr(ok.body());
    let frames = 50;
    // Paced on an absolute schedule. A frame this thread sent more than one ptime behind it
    // (a busy CI machine) may miss its playout and be concealed; no other frame may be missing.
    let start = Instant::now();
    let mut sent_late = Vec::new();
    for i in 0..frames {
        let due = start + Duration::from_millis(20 * i as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let packet = common::rtp::rtp_packet(
            i as u16,
            (i * pcap::PAYLOAD_LEN) as u32,
            0x7e57,
            &pcap::payload_for(i),
        );
        rtp.send_to(&packet, voxgate_rtp).expect("send RTP");
        if Instant::now().saturating_duration_since(due) > Duration::from_millis(20) {
            sent_late.push(i);
        }
    }
    let session = standin.wait_for_session(0, WAIT, "the caller's audio", |s| {
        s.input_audio
            .chunks(pcap::PAYLOAD_LEN)
            .any(|frame| pcap::index_of(frame) == Some(frames - 1))
    });
    let heard: Vec<usize> = session
        .input_audio
        .chunks(pcap::PAYLOAD_LEN)
        .filter_map(pcap::index_of)
        .collect();
    assert!(
        heard.windows(2).all(|pair| pair[0] < pair[1]),
        "byte-exact, in order, no duplicates: {heard:?}"
    );
    let missing: Vec<usize> = (0..frames).filter(|i| !heard.contains(i)).collect();
    assert!(
        missing.iter().all(|i| sent_late.contains(i)),
        "frames missing {missing:?}, but only {sent_late:?} were sent late"
    );
    assert_eq!(session.input_format(), Some("audio/pcmu"));
    let session = standin.wait_for_session(0, WAIT, "the tool's answer", |s| {
        !s.function_outputs.is_empty()
    });
    let output: serde_json::Value =
        serde_json::from_str(&session.function_outputs[0].output).expect("JSON output");
    assert_eq!(output["status"], "shipped", "the tool answered over https");
    assert_eq!(requests.lock().expect("lock").len(), 1);
    let bye = sip::hang_up(&socket, &request, ok, trusted.sip_addr(), WAIT);
    assert_eq!(bye.map(|r| r.status), Some(200));
    standin.wait_for_session(0, WAIT, "the session to end", |s| s.is_ended());
    standin.assert_no_violations();
}

/// (7) The service drops the connection mid-call: voxgate logs why, counts it and sends BYE.
#[test]
fn dropped_session_ends_the_call_with_bye_and_is_counted() {
    if common::sipp::skip_without_root("dropped_session_ends_the_call_with_bye_and_is_counted") {
        return;
    }
    let standin = RealtimeStandIn::start(
        Behaviour::new()
            .step(
                When::caller_audio_ms(300),
                [Action::server_error("transient fault")],
            )
            .step(When::caller_audio_ms(400), [Action::DropConnection]),
    );
    // The admin's apology recording, played before the BYE.
    let dir = tempfile::tempdir().expect("dir");
    let apology = dir.path().join("apology.ul");
    std::fs::write(&apology, tagged_audio(25, 4)).expect("write apology");
    let gateway = gateway(
        &standin.url(),
        "",
        &format!("apology_file = {:?}", apology.display().to_string()),
    );
    let sipp = Sipp::new("uac_talk_until_bye.xml", gateway.sip_addr()).with_audio(500);
    let sink = RtpSink::bind(sipp.echo_addr());
    let outcome = sipp.run();
    let received = sink.finish();
    outcome.assert_success(); // ends only with voxgate's BYE
    let apology: Vec<usize> = agent_frames(&received, 4).iter().map(|(i, _)| *i).collect();
    assert_eq!(
        apology,
        (0..25).collect::<Vec<_>>(),
        "the apology played in full"
    );
    assert_eq!(
        gateway.wait_metric(
            "voxgate_realtime_session_failures_total",
            &[("reason", "dropped")],
            WAIT,
            |v| v >= 1.0
        ),
        1.0
    );
    assert_eq!(
        gateway.wait_metric("voxgate_calls_total", &[("result", "failed")], WAIT, |v| v
            >= 1.0),
        1.0
    );
    assert!(
        gateway.log().contains("Realtime session failed"),
        "the log says why"
    );
    // The error event before the drop was counted and did not end the call by itself.
    assert_eq!(
        metric(
            &gateway,
            "voxgate_realtime_errors_total",
            &[("code", "server_error")]
        ),
        1.0
    );
    let session = standin.session(0);
    let error_at = session
        .server_events
        .iter()
        .find(|e| e.event_type() == Some("error"))
        .expect("error sent")
        .at;
    let appends_after_error = session.appends.iter().filter(|a| a.at > error_at).count();
    assert!(
        appends_after_error >= 10,
        "audio kept flowing after the error"
    );
    assert_eq!(
        metric(&gateway, "voxgate_realtime_sessions_active", &[]),
        0.0
    );
    standin.assert_no_violations();
}

/// The session's lifetime limit (shortened to 10 s here): shortly before it the model is asked
/// to say goodbye, the goodbye plays, then voxgate hangs up and counts it.
#[test]
fn session_time_limit_ends_the_call_with_a_goodbye() {
    if common::sipp::skip_without_root("session_time_limit_ends_the_call_with_a_goodbye") {
        return;
    }
    let standin = RealtimeStandIn::start(
        // The agent has no greeting, so the goodbye is the first response voxgate asks for.
        Behaviour::new().greeting(Reply::audio(tagged_audio(25, 2)).transcript("Goodbye!")),
    );
    let gateway = gateway(&standin.url(), "", "session_limit_secs = 10");
    let sipp = Sipp::new("uac_talk_until_bye.xml", gateway.sip_addr()).with_audio(1_000);
    let sink = RtpSink::bind(sipp.echo_addr());
    let outcome = sipp.run();
    let received = sink.finish();
    outcome.assert_success(); // ends only with voxgate's BYE
    let goodbye: Vec<usize> = agent_frames(&received, 2).iter().map(|(i, _)| *i).collect();
    assert_eq!(
        goodbye,
        (0..25).collect::<Vec<_>>(),
        "the goodbye played in full"
    );
    let session = standin.session(0);
    let prompt = session
        .client_events_of("response.create")
        .next()
        .expect("voxgate asked for the goodbye");
    assert!(prompt.event["response"]["instructions"]
        .as_str()
        .is_some_and(|text| text.contains("time limit")));
    assert_eq!(
        gateway.wait_metric("voxgate_realtime_session_limit_total", &[], WAIT, |v| v
            >= 1.0),
        1.0
    );
    assert_eq!(
        metric(&gateway, "voxgate_calls_total", &[("result", "completed")]),
        1.0
    );
    standin.assert_no_violations();
}
