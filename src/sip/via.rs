//! The Via header field, parsed by us (RFC 3261 §20.42, §18.2.1, RFC 3581 rport).
//!
//! rsip 0.4 keeps only the first of several comma-separated Via values, so every Via value of a
//! message goes through [`parse_via_list`] instead. In: one (already unfolded) header value, which
//! may hold several comma-separated `via-parm`s. Out: one [`Via`] per value, in order, or a
//! [`ViaError`] saying what was malformed (the message then gets a 400).
//!
//! ```text
//! via-parm      = sent-protocol LWS sent-by *( SEMI via-params )
//! sent-protocol = "SIP" SLASH "2.0" SLASH transport      (LWS allowed around SLASH)
//! sent-by       = host [ COLON port ]                    (IPv6 host in brackets)
//! ```

use std::net::{IpAddr, Ipv6Addr};

use thiserror::Error;

/// The magic cookie that starts every RFC 3261 branch (§8.1.1.7).
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// What went wrong in a Via value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ViaError {
    /// An empty value between commas, or an empty header.
    #[error("empty Via value")]
    Empty,
    /// `sent-protocol` is not `SIP/2.0/<transport>`.
    #[error("bad sent-protocol in Via: {0:?}")]
    SentProtocol(String),
    /// `sent-by` host or port is malformed.
    #[error("bad sent-by in Via: {0:?}")]
    SentBy(String),
    /// A parameter is empty or has a malformed name/value (e.g. `;;` or `rport=x`).
    #[error("bad Via parameter: {0:?}")]
    Param(String),
}

/// The `rport` parameter (RFC 3581): absent, present without value (a request for it), or
/// filled in with the source port by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rport {
    /// No `rport` parameter.
    #[default]
    Absent,
    /// `;rport` without a value: the client asks for symmetric response routing.
    Requested,
    /// `;rport=<port>`, as stamped by the server on receipt.
    Value(u16),
}

/// One Via value (one hop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport token, upper-cased (`UDP`, `TCP`, `TLS`, `SCTP`, `WS`, or an unknown one).
    pub transport: String,
    /// sent-by host: a domain name, IPv4 address or IPv6 address (without brackets).
    pub host: String,
    /// sent-by port, if present.
    pub port: Option<u16>,
    /// The `branch` parameter (transaction id), if present.
    pub branch: Option<String>,
    /// The `received` parameter, if present.
    pub received: Option<String>,
    /// The `rport` parameter.
    pub rport: Rport,
    /// All other parameters (`maddr`, `ttl`, extensions), in order; name as received.
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    /// A fresh Via for a request voxgate sends: `SIP/2.0/<transport> <host>[:port];branch=..;rport`.
    pub fn new(transport: &str, host: &str, port: Option<u16>, branch: &str) -> Self {
        Via {
            transport: transport.to_ascii_uppercase(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            branch: Some(branch.to_string()),
            received: None,
            rport: Rport::Requested,
            params: Vec::new(),
        }
    }

    /// `host[:port]`, with an IPv6 host in brackets (the form used in headers and URIs).
    pub fn sent_by(&self) -> String {
        let host = bracket_host(&self.host);
        match self.port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        }
    }

    /// The value to print after `Via: `. Parameter order: branch, others, received, rport.
    pub fn to_header_value(&self) -> String {
        let mut out = format!("SIP/2.0/{} {}", self.transport, self.sent_by());
        if let Some(branch) = &self.branch {
            out.push_str(";branch=");
            out.push_str(branch);
        }
        for (name, value) in &self.params {
            out.push(';');
            out.push_str(name);
            if let Some(value) = value {
                out.push('=');
                out.push_str(value);
            }
        }
        if let Some(received) = &self.received {
            out.push_str(";received=");
            out.push_str(received);
        }
        match self.rport {
            Rport::Absent => {}
            Rport::Requested => out.push_str(";rport"),
            Rport::Value(port) => out.push_str(&format!(";rport={port}")),
        }
        out
    }

    /// Whether the branch starts with the RFC 3261 magic cookie `z9hG4bK` (§17.2.3: only then
    /// is the branch alone a transaction id; otherwise RFC 2543 matching applies).
    pub fn has_magic_cookie(&self) -> bool {
        self.branch
            .as_deref()
            .is_some_and(|branch| branch.starts_with(MAGIC_COOKIE))
    }

    /// The value of another parameter (`maddr`, `ttl`, …), case-insensitive name.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// Stamp `received`/`rport` as a server transport must on receipt (RFC 3261 §18.2.1,
    /// RFC 3581 §4): `received` when the sent-by host differs from the packet's source address
    /// (or whenever rport was requested), `rport=<source port>` when rport was requested.
    pub fn stamp_source(&mut self, source_ip: IpAddr, source_port: u16) {
        let host_matches = self
            .host
            .parse::<IpAddr>()
            .is_ok_and(|host| host == source_ip);
        let rport_requested = self.rport != Rport::Absent;
        if !host_matches || rport_requested {
            self.received = Some(source_ip.to_string());
        }
        if rport_requested {
            self.rport = Rport::Value(source_port);
        }
    }
}

/// `[addr]` for an IPv6 literal, the host unchanged otherwise.
pub(crate) fn bracket_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Parse one Via header value, which may hold several comma-separated values.
pub fn parse_via_list(value: &str) -> Result<Vec<Via>, ViaError> {
    split_top_level(value, b',')
        .into_iter()
        .map(parse_via)
        .collect()
}

/// Parse a single `via-parm`.
pub fn parse_via(value: &str) -> Result<Via, ViaError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ViaError::Empty);
    }
    let protocol_error = || ViaError::SentProtocol(value.to_string());
    let (name, rest) = value.split_once('/').ok_or_else(protocol_error)?;
    let (version, rest) = rest.split_once('/').ok_or_else(protocol_error)?;
    if !name.trim().eq_ignore_ascii_case("SIP") || version.trim() != "2.0" {
        return Err(protocol_error());
    }
    let rest = rest.trim_start();
    let transport_len = rest.bytes().take_while(|b| is_token_byte(*b)).count();
    let (transport, rest) = rest.split_at(transport_len);
    // RFC 3261 §20.42: sent-protocol LWS sent-by — whitespace is mandatory before sent-by.
    if transport.is_empty() || !rest.starts_with([' ', '\t']) {
        return Err(protocol_error());
    }
    let mut parts = split_top_level(rest, b';').into_iter();
    let sent_by = parts.next().unwrap_or_default().trim();
    let (host, port) = parse_host_port(sent_by).ok_or_else(|| ViaError::SentBy(sent_by.into()))?;
    let mut via = Via {
        transport: transport.to_ascii_uppercase(),
        host,
        port,
        branch: None,
        received: None,
        rport: Rport::Absent,
        params: Vec::new(),
    };
    for param in parts {
        let param_error = || ViaError::Param(param.trim().to_string());
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim())),
            None => (param.trim(), None),
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(param_error());
        }
        if value.is_some_and(|v| v.is_empty() || v.contains([' ', '\t'])) {
            return Err(param_error());
        }
        if name.eq_ignore_ascii_case("branch") {
            via.branch = Some(value.ok_or_else(param_error)?.to_string());
        } else if name.eq_ignore_ascii_case("received") {
            via.received = Some(value.ok_or_else(param_error)?.to_string());
        } else if name.eq_ignore_ascii_case("rport") {
            via.rport = match value {
                None => Rport::Requested,
                Some(port) => Rport::Value(parse_port(port).ok_or_else(param_error)?),
            };
        } else {
            via.params
                .push((name.to_string(), value.map(str::to_string)));
        }
    }
    Ok(via)
}

/// `host[:port]` → (host without IPv6 brackets, port). None when malformed.
pub(crate) fn parse_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(inner) = text.strip_prefix('[') {
        let (address, after) = inner.split_once(']')?;
        address.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (address, port)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        Some(port) => Some(parse_port(port)?),
        None => None,
    };
    let valid_host = !host.is_empty()
        && (host.contains(':')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
    valid_host.then(|| (host.to_string(), port))
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// RFC 3261 §25.1 `token` characters.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Split on `separator` outside double quotes (with `\` escapes) and angle brackets.
pub(crate) fn split_top_level(text: &str, separator: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut in_quotes, mut escaped, mut angle_depth) = (0, false, false, 0u32);
    for (i, b) in text.bytes().enumerate() {
        if in_quotes {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_quotes = true,
            b'<' => angle_depth += 1,
            b'>' => angle_depth = angle_depth.saturating_sub(1),
            _ if b == separator && angle_depth == 0 => {
                // `separator` is ASCII, so `i` and `i + 1` are char boundaries.
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_simple_via_with_branch_and_port() {
        let via = parse_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776").unwrap();
        assert_eq!(via.transport, "UDP");
        assert_eq!(via.host, "192.0.2.1");
        assert_eq!(via.port, Some(5060));
        assert_eq!(via.branch.as_deref(), Some("z9hG4bK776"));
        assert!(via.has_magic_cookie());
        assert_eq!(via.sent_by(), "192.0.2.1:5060");
    }

    #[test]
    fn keeps_every_comma_separated_value() {
        let vias = parse_via_list(
            "SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8  , \
             SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239",
        )
        .unwrap();
        assert_eq!(vias.len(), 2);
        assert_eq!(vias[0].transport, "TCP");
        assert_eq!(vias[0].host, "spindle.example.com");
        assert_eq!(vias[0].branch.as_deref(), Some("z9hG4bK9ikj8"));
        assert_eq!(vias[1].host, "192.168.255.111");
        assert_eq!(vias[1].branch.as_deref(), Some("z9hG4bK30239"));
    }

    #[test]
    fn parses_ipv6_sent_by_received_and_rport_forms() {
        let via =
            parse_via("SIP/2.0/TCP [2001:db8::9:1]:5070;branch=z9hG4bKa;rport;received=10.0.0.1")
                .unwrap();
        assert_eq!(via.host, "2001:db8::9:1");
        assert_eq!(via.port, Some(5070));
        assert_eq!(via.sent_by(), "[2001:db8::9:1]:5070");
        assert_eq!(via.rport, Rport::Requested);
        assert_eq!(via.received.as_deref(), Some("10.0.0.1"));
        let via = parse_via("SIP/2.0/UDP [2001:db8::1];rport=5099;maddr=x.example;ttl=5").unwrap();
        assert_eq!(via.port, None);
        assert_eq!(via.rport, Rport::Value(5099));
        assert_eq!(via.param("MADDR"), Some(Some("x.example")));
        assert_eq!(via.param("ttl"), Some(Some("5")));
        assert_eq!(via.branch, None);
        assert!(!via.has_magic_cookie());
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "SIP/2.0/UDP 192.0.2.15;;,;,,",
            "SIP/2.0/UDP",
            "SIP/7.0/UDP host",
            "HTTP/2.0/UDP host",
            "SIP/2.0/UDP host:99999",
            "SIP/2.0/UDP host:",
            "SIP/2.0/UDP [::1",
            "SIP/2.0/UDP [nothex]:5060",
            "SIP/2.0/UDP host;rport=abc",
            "SIP/2.0/UDP host;branch",
            "SIP/2.0/UDPhost",
            "SIP/2.0/UDP ho st",
        ] {
            assert!(parse_via_list(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn prints_what_it_parses() {
        let text = "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKx;maddr=m.example;received=192.0.2.9;rport=7000";
        let via = parse_via(text).unwrap();
        assert_eq!(via.to_header_value(), text);
        assert_eq!(parse_via(&via.to_header_value()).unwrap(), via);
    }

    #[test]
    fn stamps_received_and_rport_on_receipt() {
        let mut via = parse_via("SIP/2.0/UDP pbx.example.com;branch=z9hG4bK1;rport").unwrap();
        via.stamp_source("192.0.2.7".parse().unwrap(), 40000);
        assert_eq!(via.received.as_deref(), Some("192.0.2.7"));
        assert_eq!(via.rport, Rport::Value(40000));
        let mut via = parse_via("SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK1").unwrap();
        via.stamp_source("192.0.2.7".parse().unwrap(), 5060);
        assert_eq!(via.received, None);
        assert_eq!(via.rport, Rport::Absent);
    }

    #[test]
    fn split_ignores_separators_in_quotes_and_brackets() {
        assert_eq!(
            split_top_level(r#""a,\"b" <sip:x;y,z>, c"#, b','),
            vec![r#""a,\"b" <sip:x;y,z>"#, " c"]
        );
    }
}
