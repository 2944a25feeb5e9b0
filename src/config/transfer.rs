//! Hand-offs to people: `[transfer]` (global) and, per agent, `[[agents.transfers]]` (named
//! destinations the model may transfer to) and `[[agents.dtmf_rules]]` (keys that act without
//! the model).
//!
//! ```toml
//! [transfer]
//! timeout_secs = 30          # REFER → 202, and a bridged agent's ringing, at most this long
//!
//! [[agents.transfers]]
//! name = "sales"
//! extension = "2001"         # or uri = "sip:sales@pbx.example.com"
//! description = "The sales team: prices, orders, quotes"
//! method = "refer_then_bridge"   # refer (default) | bridge | refer_then_bridge
//! announce = "A caller transferred by the voice assistant"   # warm transfer (bridge)
//!
//! [[agents.dtmf_rules]]
//! digit = "0"
//! transfer = "sales"
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::realtime::valid_name;
use super::Problem;

/// `[transfer]`: settings every transfer shares.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferSettings {
    /// How long a REFER may wait for its 202 (and the NOTIFYs after it for a final status),
    /// and how long a bridged agent may ring, seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Ask the peer not to send NOTIFYs (RFC 4488 `Refer-Sub: false`) when it says it
    /// supports `norefersub`. Off by default: the NOTIFYs are how voxgate learns the outcome.
    #[serde(default)]
    pub norefersub: bool,
    /// Put the model's summary of the call in an `X-Voxgate-Summary` header on the REFER
    /// (and the bridged INVITE).
    #[serde(default = "default_true")]
    pub summary_header: bool,
}

fn default_timeout_secs() -> u64 {
    30
}

fn default_true() -> bool {
    true
}

impl Default for TransferSettings {
    fn default() -> Self {
        TransferSettings {
            timeout_secs: default_timeout_secs(),
            norefersub: false,
            summary_header: true,
        }
    }
}

impl TransferSettings {
    /// The timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    pub(super) fn validate(&self) -> Result<(), Problem> {
        if !(1..=600).contains(&self.timeout_secs) {
            return Err(Problem::new(
                "transfer.timeout_secs",
                format!("{} is outside 1..=600", self.timeout_secs),
            ));
        }
        Ok(())
    }
}

/// How a destination is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum TransferMethod {
    /// Blind transfer by REFER (RFC 3515): the PBX connects the caller; voxgate leaves.
    #[default]
    Refer,
    /// voxgate calls the destination itself and relays audio between the two legs (B2BUA).
    Bridge,
    /// REFER first; when the PBX refuses or the transfer fails while the caller is still on
    /// voxgate's leg, bridge.
    ReferThenBridge,
}

impl TryFrom<String> for TransferMethod {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "refer" => Ok(TransferMethod::Refer),
            "bridge" => Ok(TransferMethod::Bridge),
            "refer_then_bridge" => Ok(TransferMethod::ReferThenBridge),
            other => Err(format!(
                "{other:?} is not \"refer\", \"bridge\" or \"refer_then_bridge\""
            )),
        }
    }
}

impl TransferMethod {
    /// The metric label and config word.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferMethod::Refer => "refer",
            TransferMethod::Bridge => "bridge",
            TransferMethod::ReferThenBridge => "refer_then_bridge",
        }
    }
}

/// One `[[agents.transfers]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferDestination {
    /// The name the model picks (`^[A-Za-z0-9_-]{1,64}$`), also the metric label.
    pub name: String,
    /// A SIP URI (`sip:2001@pbx.example.com`), or …
    #[serde(default)]
    pub uri: Option<String>,
    /// … an extension, joined to the trunk's domain at transfer time.
    #[serde(default)]
    pub extension: Option<String>,
    /// What the destination is for, as the model sees it.
    pub description: String,
    /// How the caller is handed over.
    #[serde(default)]
    pub method: TransferMethod,
    /// Warm transfer (bridge): what the agent is told before the legs are joined (sent with
    /// the model's summary in an `X-Voxgate-Announce` header on the agent's INVITE).
    #[serde(default)]
    pub announce: Option<String>,
}

impl TransferDestination {
    /// The destination's SIP URI: `uri`, or `sip:{extension}@{domain}`.
    pub fn target_uri(&self, domain: &str) -> String {
        match (&self.uri, &self.extension) {
            (Some(uri), _) => uri.clone(),
            (None, Some(extension)) => format!("sip:{extension}@{domain}"),
            (None, None) => format!("sip:{domain}"),
        }
    }
}

/// One `[[agents.dtmf_rules]]` entry: a key the caller presses that acts without the model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtmfRule {
    /// One of `0`–`9`, `*`, `#`, `A`–`D`.
    pub digit: String,
    /// Transfer to this destination (a name from `[[agents.transfers]]`).
    pub transfer: String,
}

impl DtmfRule {
    /// The rule's digit as a character.
    pub fn digit_char(&self) -> Option<char> {
        let mut chars = self.digit.chars();
        let digit = chars.next()?;
        chars.next().is_none().then_some(digit)
    }
}

/// Checks an agent's transfers and DTMF rules.
pub(super) fn validate_agent(agent: &super::AgentSettings, index: usize) -> Result<(), Problem> {
    let key = format!("agents[{index}]");
    let mut names = std::collections::HashSet::new();
    for (i, destination) in agent.transfers.iter().enumerate() {
        let dkey = format!("{key}.transfers[{i}]");
        if !valid_name(&destination.name) {
            return Err(Problem::new(
                format!("{dkey}.name"),
                format!(
                    "{:?}: use 1–64 letters, digits, '_' or '-'",
                    destination.name
                ),
            ));
        }
        if !names.insert(destination.name.as_str()) {
            return Err(Problem::new(
                format!("{dkey}.name"),
                format!("{:?} is listed twice", destination.name),
            ));
        }
        match (&destination.uri, &destination.extension) {
            (Some(_), Some(_)) => {
                return Err(Problem::new(
                    dkey,
                    "set either `uri` or `extension`, not both",
                ))
            }
            (None, None) => {
                return Err(Problem::new(
                    dkey,
                    "no target: set `uri` (e.g. \"sip:2001@pbx.example.com\") or `extension`",
                ))
            }
            (Some(uri), None) => {
                let lower = uri.to_ascii_lowercase();
                if !(lower.starts_with("sip:") || lower.starts_with("sips:"))
                    || uri.len() < 5
                    || uri
                        .chars()
                        .any(|c| c.is_whitespace() || c == '<' || c == '>')
                {
                    return Err(Problem::new(
                        format!("{dkey}.uri"),
                        format!("{uri:?} is not a SIP URI such as \"sip:2001@pbx.example.com\""),
                    ));
                }
            }
            (None, Some(extension)) => {
                if extension.is_empty()
                    || !extension
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"*#+-_.".contains(&b))
                {
                    return Err(Problem::new(
                        format!("{dkey}.extension"),
                        format!(
                            "{extension:?}: use digits, letters, '*', '#', '+', '-', '_' or '.'"
                        ),
                    ));
                }
            }
        }
        if destination.description.trim().is_empty() {
            return Err(Problem::new(
                format!("{dkey}.description"),
                "empty: the model chooses destinations by their description",
            ));
        }
        if let Some(announce) = &destination.announce {
            if announce.chars().any(|c| c.is_control()) || announce.len() > 500 {
                return Err(Problem::new(
                    format!("{dkey}.announce"),
                    "one line of at most 500 characters",
                ));
            }
        }
    }
    for (i, rule) in agent.dtmf_rules.iter().enumerate() {
        let rkey = format!("{key}.dtmf_rules[{i}]");
        let valid = rule
            .digit_char()
            .is_some_and(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'));
        if !valid {
            return Err(Problem::new(
                format!("{rkey}.digit"),
                format!("{:?} is not one of 0-9, *, #, A-D", rule.digit),
            ));
        }
        if !names.contains(rule.transfer.as_str()) {
            return Err(Problem::new(
                format!("{rkey}.transfer"),
                format!(
                    "no destination named {:?} in {key}.transfers",
                    rule.transfer
                ),
            ));
        }
        if agent.dtmf_rules[..i]
            .iter()
            .any(|earlier| earlier.digit == rule.digit)
        {
            return Err(Problem::new(
                format!("{rkey}.digit"),
                format!("{:?} has two rules", rule.digit),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{ConfigError, Settings};
    use super::TransferMethod;

    const BASE: &str = r#"
[sip]
listen = "127.0.0.1:5060"

[[trunks]]
name = "pbx"
allow_from = ["127.0.0.0/8"]
domain = "pbx.example.com"

[[routes]]
agent = "assistant"

[[agents]]
name = "assistant"
kind = "openai"
"#;

    fn load(extra: &str) -> Result<Settings, (String, String)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("voxgate.toml");
        std::fs::write(&path, format!("{BASE}\n{extra}")).expect("write");
        Settings::load_from(&path, Vec::new()).map_err(|error| match error {
            ConfigError::Invalid { key, reason, .. } => (key, reason),
            ConfigError::Load { reason, .. } => ("<load>".into(), reason),
        })
    }

    const SALES: &str = r#"
[[agents.transfers]]
name = "sales"
extension = "2001"
description = "Prices and orders"
method = "refer_then_bridge"
announce = "Caller from the assistant"

[[agents.transfers]]
name = "operator"
uri = "sip:operator@pbx.example.com"
description = "Anything else"

[[agents.dtmf_rules]]
digit = "0"
transfer = "operator"
"#;

    #[test]
    fn destinations_rules_and_the_global_timeout_load() {
        let settings = load(&format!("[transfer]\ntimeout_secs = 20\n{SALES}")).expect("valid");
        assert_eq!(settings.transfer.timeout_secs, 20);
        let agent = &settings.agents[0];
        assert_eq!(agent.transfers.len(), 2);
        assert_eq!(agent.transfers[0].method, TransferMethod::ReferThenBridge);
        assert_eq!(
            agent.transfers[1].method,
            TransferMethod::Refer,
            "the default"
        );
        assert_eq!(
            agent.transfers[0].target_uri("pbx.example.com"),
            "sip:2001@pbx.example.com"
        );
        assert_eq!(
            agent.transfers[1].target_uri("ignored"),
            "sip:operator@pbx.example.com"
        );
        assert_eq!(agent.dtmf_rules[0].digit_char(), Some('0'));
        assert!(agent.dtmf_to_model);
        assert_eq!(
            settings.trunks[0].transfer_domain().as_deref(),
            Some("pbx.example.com")
        );
    }

    #[test]
    fn mistakes_name_the_key() {
        let cases = [
            ("[transfer]\ntimeout_secs = 0\n", "transfer.timeout_secs"),
            (
                "[[agents.transfers]]\nname = \"a b\"\nextension = \"1\"\ndescription = \"x\"\n",
                "agents[0].transfers[0].name",
            ),
            (
                "[[agents.transfers]]\nname = \"a\"\ndescription = \"x\"\n",
                "agents[0].transfers[0]",
            ),
            (
                "[[agents.transfers]]\nname = \"a\"\nuri = \"sip:a@b\"\nextension = \"1\"\ndescription = \"x\"\n",
                "agents[0].transfers[0]",
            ),
            (
                "[[agents.transfers]]\nname = \"a\"\nuri = \"tel:+1555\"\ndescription = \"x\"\n",
                "agents[0].transfers[0].uri",
            ),
            (
                "[[agents.transfers]]\nname = \"a\"\nextension = \"1 2\"\ndescription = \"x\"\n",
                "agents[0].transfers[0].extension",
            ),
            (
                "[[agents.transfers]]\nname = \"a\"\nextension = \"1\"\ndescription = \" \"\n",
                "agents[0].transfers[0].description",
            ),
            (
                "[[agents.transfers]]\nname = \"a\"\nextension = \"1\"\ndescription = \"x\"\n\
                 [[agents.transfers]]\nname = \"a\"\nextension = \"2\"\ndescription = \"y\"\n",
                "agents[0].transfers[1].name",
            ),
            (
                "[[agents.transfers]]\nname = \"a\"\nextension = \"1\"\ndescription = \"x\"\n\
                 [[agents.dtmf_rules]]\ndigit = \"12\"\ntransfer = \"a\"\n",
                "agents[0].dtmf_rules[0].digit",
            ),
            (
                "[[agents.dtmf_rules]]\ndigit = \"5\"\ntransfer = \"nobody\"\n",
                "agents[0].dtmf_rules[0].transfer",
            ),
        ];
        for (extra, key) in cases {
            match load(extra) {
                Err((got, reason)) => assert_eq!(got, key, "{extra}: {reason}"),
                Ok(_) => panic!("accepted: {extra}"),
            }
        }
        let (key, reason) = load(
            "[[agents.transfers]]\nname = \"a\"\nextension = \"1\"\ndescription = \"x\"\nmethod = \"teleport\"\n",
        )
        .expect_err("bad method");
        assert!(
            key.contains("method") && reason.contains("refer_then_bridge"),
            "{key}: {reason}"
        );
    }
}
