//! A call's bridge to its OpenAI Realtime session fed what the service sends, mixed with the
//! call's own ticks, keys, holds and tool results.
//!
//! The input is lines: a line starting with `{` is one WebSocket text frame from the service;
//! otherwise its first letter is an op: `t` + n (n ptime ticks with the caller's audio), `s` +
//! n (n ticks with no frame from the jitter buffer), `d` + key (DTMF), `h` / `H` (hold /
//! resume), `o` + call id (an HTTP tool's result), `f` + call id (a transfer failed), `x` (the
//! WebSocket closed).
//!
//! Checked besides "never panics", on what voxgate sends the service (the issue's rules):
//! - every event is a JSON object with a `type`;
//! - no `conversation.item.truncate` of zero length, or past the audio the service produced
//!   for that item (8 µ-law bytes per ms);
//! - no `response.create` while a response is active (from voxgate's own `response.create` or
//!   the service's `response.created`, until `response.done` or an error naming that create).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use voxgate::call::bridge::{Bridge, BridgeConfig};
use voxgate::call::speech::FailReason;
use voxgate::call::transfer::TransferRequest;
use voxgate::config::{AgentKind, AgentSettings, ToolSettings};
use voxgate::media::G711;
use voxgate::realtime::events::decode_audio;
use voxgate::realtime::RealtimeSession;

use super::{t0, trace};

fn agent() -> AgentSettings {
    AgentSettings {
        name: "assistant".into(),
        kind: AgentKind::Openai,
        model: "gpt-realtime".into(),
        instructions: Some("Be brief.".into()),
        voice: Some("marin".into()),
        end_call_tool: true,
        ..AgentSettings::default()
    }
}

fn config() -> BridgeConfig {
    BridgeConfig {
        codec: G711::Pcmu,
        ptime: Duration::from_millis(20),
        tools: vec![ToolSettings {
            name: "lookup_order".into(),
            description: "Look up an order.".into(),
            url: "http://127.0.0.1:9/orders".into(),
            timeout_ms: 1_000,
            parameters: serde_json::json!({
                "type": "object",
                "properties": {"order": {"type": "string"}},
            }),
        }],
        session_limit: Duration::from_secs(120),
        goodbye_margin: Duration::from_secs(10),
        greeting: Some("Greet the caller.".into()),
        apology: Some(vec![0xff; 800].into()),
        transfers: vec!["sales".into()],
        dtmf_rules: vec![('0', "sales".into())],
        dtmf_to_model: true,
        last_words_grace: Duration::from_millis(500),
    }
}

#[derive(Default)]
struct Service {
    /// A response is running, as the protocol sees it.
    active: bool,
    /// The event id of voxgate's last `response.create`.
    last_create: Option<String>,
    /// µ-law bytes the service produced per item.
    produced: HashMap<String, u64>,
    /// A frame had duplicate keys: whether a response runs is no longer known.
    unknowable: bool,
}

/// Whether the top-level object of `text` names a key twice.
fn has_duplicate_keys(text: &str) -> bool {
    struct Keys(bool);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Keys, A::Error> {
                    let mut seen = std::collections::HashSet::new();
                    let mut duplicate = false;
                    while let Some(key) = map.next_key::<String>()? {
                        duplicate |= !seen.insert(key);
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                    Ok(Keys(duplicate))
                }
            }
            deserializer.deserialize_map(Visitor)
        }
    }
    serde_json::from_str::<Keys>(text).is_ok_and(|keys| keys.0)
}

impl Service {
    fn heard(&mut self, text: &str) {
        if has_duplicate_keys(text) {
            // RFC 8259 leaves duplicate names to the reader ("type" twice may mean either):
            // what the session made of this frame is unknowable here, so stop judging.
            self.unknowable = true;
        }
        if trace() {
            eprintln!("← {}", text.chars().take(160).collect::<String>());
        }
        let Ok(event) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let field = |name: &str| event.get(name).and_then(Value::as_str);
        match field("type") {
            Some("response.created") => self.active = true,
            Some("response.done") => self.active = false,
            Some("error") => {
                let refused = event
                    .pointer("/error/event_id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| Some(id) == self.last_create.as_deref());
                if refused {
                    self.active = false;
                }
            }
            Some("response.output_audio.delta") => {
                if let (Some(item), Some(audio)) =
                    (field("item_id"), field("delta").and_then(decode_audio))
                {
                    *self.produced.entry(item.to_owned()).or_default() += audio.len() as u64;
                }
            }
            _ => {}
        }
    }

    fn sent(&mut self, text: &str) {
        if trace() {
            eprintln!("→ {}", text.chars().take(160).collect::<String>());
        }
        let event: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("voxgate sent text that is not JSON ({e}): {text}"));
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("voxgate sent an event without a type: {text}"));
        match kind {
            "response.create" => {
                assert!(
                    !self.active || self.unknowable,
                    "voxgate sent response.create while a response is active: {text}"
                );
                self.active = true;
                self.last_create = event
                    .get("event_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            "conversation.item.truncate" => {
                let end = event
                    .get("audio_end_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or_else(|| panic!("truncate without a whole audio_end_ms: {text}"));
                assert!(end > 0, "voxgate sent a zero-length truncate: {text}");
                let item = event.get("item_id").and_then(Value::as_str).unwrap_or("");
                let produced = self.produced.get(item).copied().unwrap_or(0) / 8;
                assert!(
                    end <= produced,
                    "truncate at {end} ms of an item the service produced {produced} ms of: {text}"
                );
            }
            _ => {}
        }
    }
}

/// One input.
pub fn run(data: &[u8]) {
    let mut bridge = Bridge::new(RealtimeSession::new(&agent()), config());
    let mut service = Service::default();
    let mut now = t0();
    let caller = [0x55u8; 160];
    let text = String::from_utf8_lossy(data);
    let drain = |bridge: &mut Bridge<RealtimeSession>, service: &mut Service| {
        while let Some(sent) = bridge.poll_transmit() {
            service.sent(&sent);
        }
        while bridge.poll_output().is_some() {}
    };
    for line in text.lines().take(256) {
        let mut chars = line.chars();
        let op = chars.next();
        let arg = chars.as_str().trim();
        let count = || arg.parse::<u32>().unwrap_or(1).min(3_000);
        match op {
            Some('{') => {
                service.heard(line);
                bridge.handle_message(now, line);
            }
            Some('t') | Some('s') => {
                for _ in 0..count() {
                    now += Duration::from_millis(20);
                    let frame = bridge.tick(now, (op == Some('t')).then_some(&caller[..]));
                    assert_eq!(frame.payload.len(), 160, "a 20 ms frame is 160 bytes");
                    drain(&mut bridge, &mut service);
                }
            }
            Some('d') => bridge.handle_dtmf(now, arg.chars().next().unwrap_or('5')),
            Some('h') => bridge.set_held(true),
            Some('H') => bridge.set_held(false),
            Some('o') => bridge.tool_finished(now, arg, r#"{"status":"shipped"}"#),
            Some('f') => bridge.transfer_failed(
                now,
                TransferRequest {
                    tool_call_id: (!arg.is_empty()).then(|| arg.to_owned()),
                    destination: "sales".into(),
                    reason: "fuzz".into(),
                    summary: None,
                },
                "busy",
            ),
            Some('x') => bridge.handle_closed(FailReason::Dropped, "fuzz: closed".into()),
            _ => {}
        }
        drain(&mut bridge, &mut service);
    }
    for _ in 0..200 {
        now += Duration::from_millis(20);
        bridge.tick(now, Some(&caller));
        drain(&mut bridge, &mut service);
    }
}
