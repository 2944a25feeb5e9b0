//! `[realtime]` and the OpenAI Realtime part of `[[agents]]` (kind = "openai").
//!
//! The API key is never in the file: it comes from the environment variable named by
//! `realtime.api_key_env` (default `OPENAI_API_KEY`) or from `realtime.api_key_file`, resolved
//! once at start-up by [`Settings::resolve_secrets`](super::Settings::resolve_secrets). An
//! OpenAI agent without a key answers with its `fallback` agent (the shipped config falls back
//! to the echo agent), or start-up fails naming the agent.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Problem, Secret};

/// The GA Realtime endpoint.
pub const DEFAULT_REALTIME_URL: &str = "wss://api.openai.com/v1/realtime";

/// Names a tool may not take: voxgate's built-in tools.
pub const RESERVED_TOOL_NAMES: [&str; 2] = ["end_call", "transfer_call"];

/// `[realtime]`: how voxgate reaches the Realtime service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RealtimeSettings {
    /// WebSocket URL without the `model` query (tests point it at a local stand-in).
    pub url: String,
    /// Environment variable holding the API key.
    pub api_key_env: String,
    /// File holding the API key (first line); wins over `api_key_env` when set.
    pub api_key_file: Option<PathBuf>,
    /// How long a call may wait for its session (WebSocket + `session.updated`) before it is
    /// refused with 503, milliseconds.
    pub connect_timeout_ms: u64,
    /// Directory for one JSON-lines transcript file per call; none: transcripts go to the log only.
    pub transcripts_dir: Option<PathBuf>,
    /// The service's session lifetime, seconds (OpenAI: 3600); the agent says goodbye shortly
    /// before it and the call ends.
    pub session_limit_secs: u64,
    /// After the agent's last words (`end_call`, the goodbye at the session limit, the apology,
    /// a transfer's hand-off sentence), voxgate sends silence this long before the BYE or the
    /// transfer, so the caller's phone or PBX plays the words out of its jitter buffer instead
    /// of dropping them with the call, milliseconds.
    pub last_words_grace_ms: u64,
    /// A short recording (raw G.711 µ-law, 8 kHz mono, e.g. `sox in.wav -r 8000 -c 1 -e u-law
    /// apology.ul`) played to the caller when the session drops mid-call, before the BYE.
    pub apology_file: Option<PathBuf>,
    /// The key, once resolved (never read from the file itself).
    #[serde(skip)]
    pub api_key: Option<Secret>,
    /// The apology recording, once read.
    #[serde(skip)]
    pub apology: Option<bytes::Bytes>,
    /// A PEM file of CA certificates trusted for `wss://` and for HTTP tools' `https://`, besides
    /// the public roots: a private gateway in front of the service, or a TLS-inspecting proxy.
    pub ca_file: Option<PathBuf>,
    /// The certificates of `ca_file`, once read.
    #[serde(skip)]
    pub ca_certs: Vec<rustls_pki_types::CertificateDer<'static>>,
}

/// Reads the CA certificates of `realtime.ca_file`: every `CERTIFICATE` block of a PEM file
/// (other blocks are skipped); an error when there is none or one is malformed.
pub fn read_ca_file(
    path: &std::path::Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM file of certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots.add(cert.clone()).map_err(|e| {
            format!(
                "certificate {} of {} cannot be a trust anchor: {e}",
                i + 1,
                path.display()
            )
        })?;
    }
    Ok(certs)
}

/// Longest apology recording accepted: 30 s of 8 kHz G.711.
pub const APOLOGY_MAX_BYTES: usize = 30 * 8_000;

impl Default for RealtimeSettings {
    fn default() -> Self {
        RealtimeSettings {
            url: DEFAULT_REALTIME_URL.to_owned(),
            api_key_env: "OPENAI_API_KEY".to_owned(),
            api_key_file: None,
            connect_timeout_ms: 5_000,
            transcripts_dir: None,
            session_limit_secs: 3_600,
            last_words_grace_ms: 500,
            apology_file: None,
            api_key: None,
            apology: None,
            ca_file: None,
            ca_certs: Vec::new(),
        }
    }
}

impl RealtimeSettings {
    pub(super) fn validate(&self) -> Result<(), Problem> {
        if !(self.url.starts_with("wss://") || self.url.starts_with("ws://")) {
            return Err(Problem::new(
                "realtime.url",
                format!("{:?} is not a ws:// or wss:// URL", self.url),
            ));
        }
        if self.url.contains('?') {
            return Err(Problem::new(
                "realtime.url",
                "leave out the query: voxgate adds ?model= from the agent",
            ));
        }
        if self.api_key_env.trim().is_empty() {
            return Err(Problem::new("realtime.api_key_env", "empty"));
        }
        if !(100..=60_000).contains(&self.connect_timeout_ms) {
            return Err(Problem::new(
                "realtime.connect_timeout_ms",
                format!(
                    "{} is outside 100..=60000 (a PBX gives up on a ringing call long before a minute)",
                    self.connect_timeout_ms
                ),
            ));
        }
        if !(10..=86_400).contains(&self.session_limit_secs) {
            return Err(Problem::new(
                "realtime.session_limit_secs",
                format!("{} is outside 10..=86400", self.session_limit_secs),
            ));
        }
        if self.last_words_grace_ms > 5_000 {
            return Err(Problem::new(
                "realtime.last_words_grace_ms",
                format!(
                    "{} is above 5000 (the caller would wait in silence for the hang-up)",
                    self.last_words_grace_ms
                ),
            ));
        }
        if let Some(dir) = &self.transcripts_dir {
            if !dir.is_dir() {
                return Err(Problem::new(
                    "realtime.transcripts_dir",
                    format!("{} is not a directory", dir.display()),
                ));
            }
        }
        Ok(())
    }
}

/// Voice activity detection, `[agents.turn_detection]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TurnDetection {
    /// Energy-based VAD.
    ServerVad {
        /// 0.0–1.0; higher needs louder speech (noisy lines).
        #[serde(default)]
        threshold: Option<f64>,
        /// Audio kept before detected speech, ms.
        #[serde(default)]
        prefix_padding_ms: Option<u32>,
        /// Silence that ends the caller's turn, ms.
        #[serde(default)]
        silence_duration_ms: Option<u32>,
        /// Re-prompt after this much silence, ms (5000–30000).
        #[serde(default)]
        idle_timeout_ms: Option<u32>,
        /// The model answers by itself at the end of a turn (default true).
        #[serde(default)]
        create_response: Option<bool>,
        /// The caller's speech cancels the model's answer (default true).
        #[serde(default)]
        interrupt_response: Option<bool>,
    },
    /// The model estimates the end of the caller's turn from what was said.
    SemanticVad {
        /// `low`, `medium`, `high` or `auto`.
        #[serde(default)]
        eagerness: Option<String>,
        /// As for server_vad.
        #[serde(default)]
        create_response: Option<bool>,
        /// As for server_vad.
        #[serde(default)]
        interrupt_response: Option<bool>,
    },
}

impl Default for TurnDetection {
    fn default() -> Self {
        TurnDetection::ServerVad {
            threshold: None,
            prefix_padding_ms: None,
            silence_duration_ms: None,
            idle_timeout_ms: None,
            create_response: None,
            interrupt_response: None,
        }
    }
}

impl TurnDetection {
    /// False when the agent turned `interrupt_response` off (voxgate then cancels itself).
    pub fn interrupts_response(&self) -> bool {
        match self {
            TurnDetection::ServerVad {
                interrupt_response, ..
            }
            | TurnDetection::SemanticVad {
                interrupt_response, ..
            } => interrupt_response.unwrap_or(true),
        }
    }

    fn validate(&self, key: &str) -> Result<(), Problem> {
        match self {
            TurnDetection::ServerVad {
                threshold,
                idle_timeout_ms,
                ..
            } => {
                if let Some(threshold) = threshold {
                    if !(0.0..=1.0).contains(threshold) {
                        return Err(Problem::new(
                            format!("{key}.threshold"),
                            format!("{threshold} is outside 0.0..=1.0"),
                        ));
                    }
                }
                if let Some(idle) = idle_timeout_ms {
                    if !(5_000..=30_000).contains(idle) {
                        return Err(Problem::new(
                            format!("{key}.idle_timeout_ms"),
                            format!("{idle} is outside 5000..=30000"),
                        ));
                    }
                }
            }
            TurnDetection::SemanticVad { eagerness, .. } => {
                if let Some(eagerness) = eagerness {
                    if !["low", "medium", "high", "auto"].contains(&eagerness.as_str()) {
                        return Err(Problem::new(
                            format!("{key}.eagerness"),
                            format!("{eagerness:?} is not one of low, medium, high, auto"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Input noise reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseReduction {
    /// Handsets and headsets.
    NearField,
    /// Speakerphones and room microphones.
    FarField,
}

impl NoiseReduction {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            NoiseReduction::NearField => "near_field",
            NoiseReduction::FarField => "far_field",
        }
    }
}

/// One `[[agents.tools]]` entry: a function the model may call, answered by an HTTP POST.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSettings {
    /// Function name the model sees (`^[A-Za-z0-9_-]{1,64}$`).
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// JSON Schema of the arguments (an object schema); default: no arguments.
    #[serde(default = "empty_parameters")]
    pub parameters: serde_json::Value,
    /// Where voxgate POSTs `{"arguments": …, "call": {"call_id", "from", "to"}}`.
    pub url: String,
    /// How long the HTTP call may take, milliseconds.
    #[serde(default = "default_tool_timeout_ms")]
    pub timeout_ms: u64,
}

fn empty_parameters() -> serde_json::Value {
    serde_json::json!({"type": "object", "properties": {}})
}

fn default_tool_timeout_ms() -> u64 {
    5_000
}

/// The Realtime API's rule for function names (`^[A-Za-z0-9_-]{1,64}$`), also used for
/// transfer destinations (they become an enum the model picks from, and a metric label).
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ToolSettings {
    fn validate(&self, key: &str) -> Result<(), Problem> {
        if !valid_name(&self.name) {
            return Err(Problem::new(
                format!("{key}.name"),
                format!(
                    "{:?}: use 1-64 letters, digits, '_' or '-' (the API's rule)",
                    self.name
                ),
            ));
        }
        if RESERVED_TOOL_NAMES.contains(&self.name.as_str()) {
            return Err(Problem::new(
                format!("{key}.name"),
                format!("{:?} is a built-in tool", self.name),
            ));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(Problem::new(
                format!("{key}.url"),
                format!("{:?} is not an http:// or https:// URL", self.url),
            ));
        }
        let object_schema = self
            .parameters
            .get("type")
            .and_then(serde_json::Value::as_str)
            == Some("object");
        if !object_schema {
            return Err(Problem::new(
                format!("{key}.parameters"),
                "must be a JSON Schema with type = \"object\"",
            ));
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            return Err(Problem::new(
                format!("{key}.timeout_ms"),
                format!("{} is outside 100..=60000", self.timeout_ms),
            ));
        }
        Ok(())
    }
}

pub(super) fn validate_agent(
    agent: &super::AgentSettings,
    index: usize,
    agents: &[&str],
) -> Result<(), Problem> {
    let key = format!("agents[{index}]");
    if agent.temperature.is_some() {
        return Err(Problem::new(
            format!("{key}.temperature"),
            "the GA Realtime API has no temperature (it was removed with the beta); remove the key",
        ));
    }
    if agent.model.trim().is_empty() {
        return Err(Problem::new(format!("{key}.model"), "empty"));
    }
    if let Some(tokens) = agent.max_output_tokens {
        if !(1..=4_096).contains(&tokens) {
            return Err(Problem::new(
                format!("{key}.max_output_tokens"),
                format!("{tokens} is outside 1..=4096"),
            ));
        }
    }
    if let Some(speed) = agent.speed {
        if !(0.25..=1.5).contains(&speed) {
            return Err(Problem::new(
                format!("{key}.speed"),
                format!("{speed} is outside 0.25..=1.5"),
            ));
        }
    }
    agent
        .turn_detection
        .validate(&format!("{key}.turn_detection"))?;
    let mut names = std::collections::HashSet::new();
    for (i, tool) in agent.tools.iter().enumerate() {
        let tool_key = format!("{key}.tools[{i}]");
        tool.validate(&tool_key)?;
        if !names.insert(tool.name.as_str()) {
            return Err(Problem::new(
                format!("{tool_key}.name"),
                format!("{:?} is used twice", tool.name),
            ));
        }
    }
    if let Some(fallback) = &agent.fallback {
        if fallback == &agent.name || !agents.contains(&fallback.as_str()) {
            return Err(Problem::new(
                format!("{key}.fallback"),
                format!("{fallback:?} is not another agent's name"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{AgentKind, ConfigError, Settings};

    const BASE: &str = r#"
[sip]
listen = "127.0.0.1:5060"

[[trunks]]
name = "pbx"
allow_from = ["127.0.0.0/8"]

[[agents]]
name = "echo"
kind = "echo"

[[routes]]
agent = "assistant"
"#;

    fn load(agent: &str, extra: &str, key: Option<&str>) -> Result<Settings, (String, String)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("voxgate.toml");
        std::fs::write(&path, format!("{BASE}\n{agent}\n{extra}")).expect("write");
        let result = Settings::load_from(&path, Vec::new()).and_then(|mut settings| {
            settings.resolve_secrets(&path, |name| {
                (name == "OPENAI_API_KEY")
                    .then(|| key.map(str::to_owned))
                    .flatten()
            })?;
            Ok(settings)
        });
        result.map_err(|error| match error {
            ConfigError::Invalid { key, reason, .. } => (key, reason),
            ConfigError::Load { reason, .. } => ("<load>".into(), reason),
        })
    }

    const ASSISTANT: &str = r#"
[[agents]]
name = "assistant"
kind = "openai"
fallback = "echo"
model = "gpt-realtime"
voice = "marin"
instructions = "Be brief."
greeting = "Greet the caller."
[agents.turn_detection]
type = "semantic_vad"
eagerness = "high"
[[agents.tools]]
name = "lookup_order"
description = "Find an order"
url = "http://127.0.0.1:8080/orders"
parameters = { type = "object", properties = { order = { type = "string" } } }
"#;

    #[test]
    fn an_openai_agent_with_a_key_answers_itself() {
        let settings = load(ASSISTANT, "", Some("sk-test")).expect("valid");
        let agent = settings.effective_agent("assistant").expect("agent");
        assert_eq!(agent.kind, AgentKind::Openai);
        assert_eq!(agent.tools[0].name, "lookup_order");
        assert_eq!(
            agent.tools[0].parameters["properties"]["order"]["type"],
            "string"
        );
        assert_eq!(
            settings.realtime.api_key.as_ref().map(|k| k.expose()),
            Some("sk-test")
        );
        assert_eq!(settings.realtime.url, super::DEFAULT_REALTIME_URL);
        assert!(
            !format!("{settings:?}").contains("sk-test"),
            "the key never shows"
        );
    }

    #[test]
    fn without_a_key_the_fallback_answers() {
        let settings = load(ASSISTANT, "", None).expect("valid");
        let agent = settings.effective_agent("assistant").expect("agent");
        assert_eq!(agent.name, "echo");
    }

    #[test]
    fn without_a_key_or_fallback_start_up_fails_naming_the_variable() {
        let agent = ASSISTANT.replace("fallback = \"echo\"\n", "");
        let (key, reason) = load(&agent, "", None).expect_err("no key");
        assert_eq!(key, "agents[1]");
        assert!(reason.contains("OPENAI_API_KEY"), "{reason}");
    }

    #[test]
    fn the_key_can_come_from_a_file() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("key");
        std::fs::write(&file, "sk-from-file\n").expect("write");
        let extra = format!(
            "[realtime]\napi_key_file = {:?}\n",
            file.display().to_string()
        );
        let settings = load(ASSISTANT, &extra, None).expect("valid");
        assert_eq!(
            settings.realtime.api_key.as_ref().map(|k| k.expose()),
            Some("sk-from-file")
        );
        let extra = "[realtime]\napi_key_file = \"/nonexistent/key\"\n";
        let (key, _) = load(ASSISTANT, extra, None).expect_err("unreadable");
        assert_eq!(key, "realtime.api_key_file");
    }

    #[test]
    fn ca_file_certificates_are_read_at_start_up_and_bad_files_refused() {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls/ca.pem");
        let extra = format!("[realtime]\nca_file = {ca:?}\n");
        let settings = load(ASSISTANT, &extra, Some("sk-test")).expect("valid");
        assert_eq!(settings.realtime.ca_certs.len(), 1);

        let dir = tempfile::tempdir().expect("dir");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "just text\n").expect("write");
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        for (path, reason_part) in [
            (dir.path().join("missing.pem"), "cannot read"),
            (not_pem, "no PEM certificate"),
            (broken, "not a PEM file"),
            (garbage, "cannot be a trust anchor"),
        ] {
            let extra = format!("[realtime]\nca_file = {:?}\n", path.display().to_string());
            let (key, reason) = load(ASSISTANT, &extra, Some("sk-test")).expect_err("refused");
            assert_eq!(key, "realtime.ca_file");
            assert!(reason.contains(reason_part), "{path:?}: {reason}");
        }
    }

    #[test]
    fn realtime_files_are_checked_even_without_an_openai_agent() {
        // Echo agents only: a wrong path still stops start-up, rather than when an OpenAI agent
        // is added later.
        const ECHO_ONLY: &str = "[[agents]]\nname = \"assistant\"\nkind = \"echo\"\n";
        let missing = "/nonexistent/voxgate/ca.pem";
        let (key, reason) = load(
            ECHO_ONLY,
            &format!("[realtime]\nca_file = {missing:?}\n"),
            None,
        )
        .expect_err("refused");
        assert_eq!(key, "realtime.ca_file");
        assert!(reason.contains("cannot read"), "{reason}");
        let (key, _) = load(
            ECHO_ONLY,
            "[realtime]\napology_file = \"/nonexistent/voxgate/sorry.ulaw\"\n",
            None,
        )
        .expect_err("refused");
        assert_eq!(key, "realtime.apology_file");
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls/ca.pem");
        let settings =
            load(ECHO_ONLY, &format!("[realtime]\nca_file = {ca:?}\n"), None).expect("valid");
        assert_eq!(settings.realtime.ca_certs.len(), 1);
    }

    #[test]
    fn refused_settings_name_their_key() {
        let cases = [
            (
                ASSISTANT.replace("voice = \"marin\"", "temperature = 0.8"),
                "",
                "agents[1].temperature",
            ),
            (
                ASSISTANT.replace("eagerness = \"high\"", "eagerness = \"eager\""),
                "",
                "agents[1].turn_detection.eagerness",
            ),
            (
                ASSISTANT.replace("lookup_order", "end_call"),
                "",
                "agents[1].tools[0].name",
            ),
            (
                ASSISTANT.replace("http://127.0.0.1:8080/orders", "ftp://x"),
                "",
                "agents[1].tools[0].url",
            ),
            (
                ASSISTANT.replace("fallback = \"echo\"", "fallback = \"nobody\""),
                "",
                "agents[1].fallback",
            ),
            (
                ASSISTANT.to_owned(),
                "[realtime]\nurl = \"https://api.openai.com\"\n",
                "realtime.url",
            ),
            (
                ASSISTANT.to_owned(),
                "[realtime]\nconnect_timeout_ms = 0\n",
                "realtime.connect_timeout_ms",
            ),
            (
                ASSISTANT.to_owned(),
                "[realtime]\nlast_words_grace_ms = 60000\n",
                "realtime.last_words_grace_ms",
            ),
        ];
        for (agent, extra, expected) in cases {
            let (key, reason) = load(&agent, extra, Some("k")).expect_err(expected);
            assert_eq!(key, expected, "{reason}");
        }
    }
}
