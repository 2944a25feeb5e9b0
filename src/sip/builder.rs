//! Printing the messages voxgate sends (RFC 3261 §8.1.1 requests, §8.2.6 responses).
//!
//! Messages are printed as text — CRLF line ends, Content-Length always computed — and parse back
//! with [`super::message::parse`]. [`response`] copies what §8.2.6.2 requires from a parsed
//! [`Request`]; [`response_for_rejected`] answers a request that never parsed, from its
//! [`FallbackHeaders`]; [`request`] prints a request line and the headers given, in order.
//! Caller-supplied text is kept on one line so that no header can be injected.

use std::fmt::Write as _;

use bytes::Bytes;
use rand::Rng;

use super::front_end::canonical_header_name;
use super::message::{FallbackHeaders, Request};
use super::validate::check_name_addr;
use super::via::{Via, MAGIC_COOKIE};

/// Answer a refused request from its fallback headers (RFC 3261 §8.2.6: copy Via, From, To,
/// Call-ID, CSeq; add a To tag). None when no Via was recovered: there is nowhere to send it.
/// The transport sends it to the packet's source address. `extra_headers` e.g. `Allow` for 501.
pub fn response_for_rejected(
    fallback: &FallbackHeaders,
    status: u16,
    reason: &str,
    extra_headers: &[(&str, String)],
) -> Option<Bytes> {
    if fallback.vias.is_empty() {
        return None;
    }
    let mut out = format!("SIP/2.0 {status} {}\r\n", one_line(reason));
    for via in &fallback.vias {
        let _ = write!(out, "Via: {}\r\n", one_line(via));
    }
    if let Some(from) = &fallback.from {
        let _ = write!(out, "From: {}\r\n", one_line(from));
    }
    // A bare CR can survive the tolerant scan; never let it reach the wire.
    if let Some(to) = fallback.to.as_deref().map(one_line) {
        match check_name_addr("To", &to) {
            Ok(None) => {
                // §8.2.6.2: the To tag must not change across retransmissions of the same
                // request, and this answer is stateless, so derive it from the request.
                let seed = format!(
                    "{:?}{:?}{:?}",
                    fallback.call_id, fallback.vias, fallback.cseq
                );
                let _ = write!(out, "To: {to};tag={:016x}\r\n", fnv1a(seed.as_bytes()));
            }
            // Tagged already, or too malformed to add a parameter safely: echo it.
            Ok(Some(_)) | Err(_) => {
                let _ = write!(out, "To: {to}\r\n");
            }
        }
    }
    if let Some(call_id) = &fallback.call_id {
        let _ = write!(out, "Call-ID: {}\r\n", one_line(call_id));
    }
    if let Some(cseq) = &fallback.cseq {
        let _ = write!(out, "CSeq: {}\r\n", one_line(cseq));
    }
    for (name, value) in extra_headers {
        let _ = write!(out, "{}: {}\r\n", one_line(name), one_line(value));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Some(out.into())
}

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Keep caller-supplied text on one line (no header injection) and free of control characters
/// other than HTAB (RFC 3261 §25.1: a refused request's broken From or Call-ID is echoed in its
/// 400, and no peer's parser takes a NUL).
pub(super) fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

/// The RFC 3261 §21 reason phrase for a status code ("" for unknown codes).
pub fn default_reason(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => "",
    }
}

/// Builds a response to a parsed request (RFC 3261 §8.2.6.2). Start with [`response`].
#[derive(Debug, Clone)]
pub struct ResponseBuilder {
    status: u16,
    reason: Option<String>,
    vias: Vec<String>,
    from: String,
    to: String,
    to_tag: Option<String>,
    call_id: String,
    cseq: String,
    record_route: Vec<String>,
    headers: Vec<(String, String)>,
    body: Option<(String, Bytes)>,
}

/// A response to `request`: copies every Via (in order, with received/rport as stamped), From,
/// To, Call-ID and CSeq; for a dialog-creating response (101–299 to INVITE or SUBSCRIBE) also
/// Record-Route (RFC 3261 §12.1.1).
pub fn response(request: &Request, status: u16) -> ResponseBuilder {
    let method = request.method();
    let creates_dialog = matches!(method, rsip::Method::Invite | rsip::Method::Subscribe)
        && (101..=299).contains(&status);
    ResponseBuilder {
        status,
        reason: None,
        vias: request.vias().iter().map(Via::to_header_value).collect(),
        from: request.from().to_string(),
        to: request.to().to_string(),
        to_tag: None,
        call_id: request.call_id().to_string(),
        cseq: format!("{} {}", request.cseq().seq, method),
        record_route: if creates_dialog {
            request
                .headers_named("Record-Route")
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        },
        headers: Vec::new(),
        body: None,
    }
}

impl ResponseBuilder {
    /// Use this reason phrase instead of the default one for the status.
    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = Some(one_line(reason));
        self
    }

    /// Add `;tag=<tag>` to To unless the request's To already has a tag (in-dialog request).
    pub fn to_tag(mut self, tag: &str) -> Self {
        self.to_tag = Some(tag.to_string());
        self
    }

    /// Append a header (in call order). Content-Length is always computed; one given here is
    /// ignored.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Set the body and its Content-Type.
    pub fn body(mut self, content_type: &str, body: Bytes) -> Self {
        self.body = Some((content_type.to_string(), body));
        self
    }

    /// Print the response.
    pub fn build(self) -> Bytes {
        let reason = self
            .reason
            .unwrap_or_else(|| default_reason(self.status).to_string());
        let mut out = format!("SIP/2.0 {} {}\r\n", self.status, reason);
        for via in &self.vias {
            let _ = write!(out, "Via: {via}\r\n");
        }
        for route in &self.record_route {
            let _ = write!(out, "Record-Route: {route}\r\n");
        }
        let _ = write!(out, "From: {}\r\n", self.from);
        let has_tag = check_name_addr("To", &self.to).ok().flatten().is_some();
        match (&self.to_tag, has_tag) {
            (Some(tag), false) => {
                let _ = write!(out, "To: {};tag={tag}\r\n", self.to);
            }
            _ => {
                let _ = write!(out, "To: {}\r\n", self.to);
            }
        }
        let _ = write!(out, "Call-ID: {}\r\nCSeq: {}\r\n", self.call_id, self.cseq);
        finish(out, &self.headers, self.body)
    }
}

/// Headers, Content-Type/Content-Length, blank line, body.
pub(super) fn finish(
    mut out: String,
    headers: &[(String, String)],
    body: Option<(String, Bytes)>,
) -> Bytes {
    for (name, value) in headers {
        if canonical_header_name(name).eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        let _ = write!(out, "{}: {}\r\n", one_line(name), one_line(value));
    }
    let body = match body {
        Some((content_type, body)) => {
            let _ = write!(out, "Content-Type: {}\r\n", one_line(&content_type));
            body
        }
        None => Bytes::new(),
    };
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    bytes.into()
}

/// Builds a request voxgate sends (BYE, ACK, re-INVITE, UPDATE, OPTIONS …). Start with
/// [`request`]; the caller supplies Via, From, To, Call-ID, CSeq, Max-Forwards, Contact, Route.
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Option<(String, Bytes)>,
}

/// A request line `METHOD uri SIP/2.0`; `method` is an rsip::Method or a method name.
pub fn request(method: impl std::fmt::Display, uri: &str) -> RequestBuilder {
    RequestBuilder {
        method: one_line(&method.to_string()),
        uri: one_line(uri),
        headers: Vec::new(),
        body: None,
    }
}

impl RequestBuilder {
    /// Append a header (in call order). Content-Length is always computed.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Set the body and its Content-Type.
    pub fn body(mut self, content_type: &str, body: Bytes) -> Self {
        self.body = Some((content_type.to_string(), body));
        self
    }

    /// Print the request.
    pub fn build(self) -> Bytes {
        let out = format!("{} {} SIP/2.0\r\n", self.method, self.uri);
        finish(out, &self.headers, self.body)
    }
}

pub(super) fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A fresh RFC 3261 branch: `z9hG4bK` + 16 random alphanumerics (§8.1.1.7).
pub fn new_branch() -> String {
    format!("{MAGIC_COOKIE}{}", random_token(16))
}

/// A fresh From/To tag (32 random bits or more, §19.3): 12 random alphanumerics.
pub fn new_tag() -> String {
    random_token(12)
}

/// A fresh Call-ID `<random>@<host>` (§8.1.1.4).
pub fn new_call_id(host: &str) -> String {
    format!("{}@{}", random_token(20), host)
}
