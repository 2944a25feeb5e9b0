//! The one seam between voxgate and rsip 0.4: parsing, validation, typed accessors, builders.
//!
//! RFC 3261 §7 (message syntax), §8.2 (UAS checks), §18.3 (framing), §20 (header fields).
//!
//! ```text
//! bytes ─► front_end::split ─► start line (§7.1/§7.2) ─► mandatory + single-value headers
//!       ─► CSeq / Max-Forwards / Via / From / To / Contact checks ─► known method? ─► Message
//!                      │ any failure
//!                      └──────────────► Rejected { error (status + reason), fallback headers }
//! ```
//!
//! In: one datagram, or one framed stream message (see [`super::framing`]), plus the transport
//! and the size limit. Out: a [`Message`] whose [`Request`]/[`Response`] wraps the rsip value and
//! our own parsed core fields (every Via value, tags, CSeq, headers by canonical name, body), or
//! a [`Rejected`] carrying what [`response_for_rejected`] needs to answer 400/413/501/505.
//! Outgoing messages are printed as text by [`ResponseBuilder`] and [`RequestBuilder`] (CRLF,
//! correct Content-Length) and always parse back with [`parse`].
//!
//! Response routing (§18.2.2) belongs to the transport; it reads [`Request::top_via`] (sent-by,
//! `received`, `rport`) and stamps arrivals with [`Request::stamp_source`] (§18.2.1).

use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use thiserror::Error;

pub use super::builder::{
    default_reason, new_branch, new_call_id, new_tag, request, response, response_for_rejected,
    RequestBuilder, ResponseBuilder,
};
use super::front_end::{self, canonical_header_name, FrontEndError, HeaderField};
use super::validate::{
    check_name_addr, find_unquoted, parse_cseq, parse_max_forwards, parse_request_line,
    parse_status_line, single_value, validate_request_uri,
};
use super::via::{parse_host_port, parse_via_list, split_top_level};
pub use super::via::{Rport, Via, ViaError, MAGIC_COOKIE};

/// How the bytes arrived; decides the Content-Length rules (RFC 3261 §18.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A datagram: trailing octets after Content-Length are ignored, a missing Content-Length
    /// means the body is the rest of the datagram.
    Udp,
    /// A stream (TCP/TLS): Content-Length is mandatory.
    Tcp,
}

/// A parsed and validated SIP message.
#[derive(Debug, Clone)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

/// Why a message was refused; [`ParseError::status`] and [`ParseError::reason`] give the answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The lexical front-end refused the bytes (size, framing, folding, Content-Length).
    #[error(transparent)]
    FrontEnd(#[from] FrontEndError),
    /// The request line or status line is malformed.
    #[error("malformed start line: {detail}")]
    MalformedStartLine {
        /// What is wrong with it.
        detail: &'static str,
    },
    /// The SIP version is not 2.0 (RFC 3261 §8.2.2 → 505).
    #[error("unsupported SIP version {version:?}")]
    UnsupportedVersion {
        /// The version as received.
        version: String,
    },
    /// The Request-URI is malformed (angle brackets, headers, bad host).
    #[error("invalid Request-URI {uri:?}: {detail}")]
    InvalidRequestUri {
        /// The Request-URI as received.
        uri: String,
        /// What is wrong with it.
        detail: &'static str,
    },
    /// Mandatory headers are missing (RFC 3261 §8.1.1).
    #[error("missing mandatory headers: {names:?}")]
    MissingHeaders {
        /// Canonical names of the missing headers, in a fixed order.
        names: Vec<&'static str>,
    },
    /// A single-value header appears several times with different values.
    #[error("conflicting values of {name}")]
    DuplicateHeader {
        /// Canonical header name.
        name: &'static str,
    },
    /// A header value is malformed or an overlarge scalar.
    #[error("invalid {name}: {detail}")]
    InvalidHeader {
        /// Canonical header name.
        name: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The CSeq method differs from the request method (RFC 3261 §8.1.1.5).
    #[error("CSeq method {cseq_method:?} does not match request method {method:?}")]
    CSeqMethodMismatch {
        /// Method of the request line.
        method: String,
        /// Method in CSeq.
        cseq_method: String,
    },
    /// The status code is not three digits in 100..=699.
    #[error("invalid status code {code:?}")]
    InvalidStatusCode {
        /// The code as received.
        code: String,
    },
    /// A well-formed request with a method voxgate does not know (→ 501 with Allow).
    #[error("unknown method {method:?}")]
    UnknownMethod {
        /// The method as received.
        method: String,
    },
}

impl ParseError {
    /// The status code a UAS answers a request refused for this reason with.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::FrontEnd(FrontEndError::TooLarge { .. }) => 413,
            ParseError::UnsupportedVersion { .. } => 505,
            ParseError::UnknownMethod { .. } => 501,
            _ => 400,
        }
    }

    /// The reason phrase for that response, e.g. `Bad Request (Missing Call-ID)`.
    pub fn reason(&self) -> String {
        let detail = match self {
            ParseError::FrontEnd(FrontEndError::TooLarge { .. }) => {
                return "Request Entity Too Large".into()
            }
            ParseError::UnsupportedVersion { .. } => return "Version Not Supported".into(),
            ParseError::UnknownMethod { .. } => return "Not Implemented".into(),
            ParseError::FrontEnd(error) => match error {
                FrontEndError::Empty => "Empty message".to_string(),
                FrontEndError::UnterminatedHeaders => "Unterminated header section".into(),
                FrontEndError::InvalidUtf8 => "Invalid UTF-8".into(),
                FrontEndError::MalformedHeaderLine { .. } => "Malformed header line".into(),
                FrontEndError::InvalidContentLength { .. } => "Invalid Content-Length".into(),
                FrontEndError::ConflictingContentLength => "Conflicting Content-Length".into(),
                FrontEndError::ContentLengthExceedsBody { .. } => {
                    "Content-Length exceeds body".into()
                }
                FrontEndError::MissingContentLength => "Missing Content-Length".into(),
                FrontEndError::TooLarge { .. } => "Message too large".into(),
            },
            ParseError::MalformedStartLine { detail } => format!("Malformed start line: {detail}"),
            ParseError::InvalidRequestUri { detail, .. } => {
                format!("Invalid Request-URI: {detail}")
            }
            ParseError::MissingHeaders { names } => format!("Missing {}", names.join(", ")),
            ParseError::DuplicateHeader { name } => format!("Multiple {name} values"),
            ParseError::InvalidHeader { name, .. } => format!("Invalid {name}"),
            ParseError::CSeqMethodMismatch { .. } => "CSeq method mismatch".into(),
            ParseError::InvalidStatusCode { .. } => "Invalid status code".into(),
        };
        format!("Bad Request ({detail})")
    }
}

/// A refused message: the error, and for a request whatever was recognisable to answer it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{error}")]
pub struct Rejected {
    /// Why it was refused.
    pub error: ParseError,
    /// Some for what is recognisably a request (a start line shaped like a request line) with at
    /// least one Via that looks like one, so that [`response_for_rejected`] can answer; None
    /// for anything else, which is dropped.
    /// Boxed to keep `Result<Message, Rejected>` small.
    pub fallback: Option<Box<FallbackHeaders>>,
}

/// Raw header values recovered from a refused request (tolerant scan, first value of each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FallbackHeaders {
    /// Method token of the request line.
    pub method: Option<String>,
    /// Every Via header value as received, in order.
    pub vias: Vec<String>,
    /// From value.
    pub from: Option<String>,
    /// To value.
    pub to: Option<String>,
    /// Call-ID value.
    pub call_id: Option<String>,
    /// CSeq value.
    pub cseq: Option<String>,
}

/// CSeq (RFC 3261 §20.16): sequence number below 2^31 and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number.
    pub seq: u32,
    /// Method.
    pub method: rsip::Method,
}

/// Header fields and body common to requests and responses.
#[derive(Debug, Clone)]
struct Core {
    headers: Vec<HeaderField>,
    vias: Vec<Via>,
    call_id: String,
    cseq: CSeq,
    from: String,
    to: String,
    from_tag: Option<String>,
    to_tag: Option<String>,
    body: Bytes,
}

/// A validated SIP request: the rsip value plus our own parse of the core fields.
#[derive(Debug, Clone)]
pub struct Request {
    inner: rsip::Request,
    uri: String,
    max_forwards: Option<u32>,
    core: Core,
}

/// A validated SIP response: the rsip value plus our own parse of the core fields.
#[derive(Debug, Clone)]
pub struct Response {
    inner: rsip::Response,
    status: u16,
    reason: String,
    core: Core,
}

/// Parse and validate one message (see the module doc). `max_bytes` is
/// `Settings::max_message_bytes` (default 65,535).
pub fn parse(bytes: &[u8], transport: Transport, max_bytes: usize) -> Result<Message, Rejected> {
    parse_inner(bytes, transport, max_bytes).map_err(|error| {
        let recovered = front_end::fallback(bytes, max_bytes);
        let fallback = (!recovered.is_response).then(|| {
            let first = |name: &str| {
                recovered
                    .headers
                    .iter()
                    .find(|f| f.name == name)
                    .map(|f| f.value.clone())
            };
            FallbackHeaders {
                method: recovered.method.clone(),
                vias: recovered
                    .headers
                    .iter()
                    .filter(|f| f.name == "Via" && looks_like_via(&f.value))
                    .map(|f| f.value.clone())
                    .collect(),
                from: first("From"),
                to: first("To"),
                call_id: first("Call-ID"),
                cseq: first("CSeq"),
            }
        });
        Rejected {
            error,
            fallback: fallback
                .filter(|f| f.method.is_some() && !f.vias.is_empty())
                .map(Box::new),
        }
    })
}

/// Whether a Via value a broken message carried is worth answering to: it starts with a
/// `SIP/version/transport` protocol and a sent-by, however malformed its parameters.
fn looks_like_via(value: &str) -> bool {
    let mut words = value.split_whitespace();
    let protocol = words.next().unwrap_or_default().to_ascii_uppercase();
    protocol.starts_with("SIP/") && protocol.matches('/').count() == 2 && words.next().is_some()
}

fn parse_inner(
    bytes: &[u8],
    transport: Transport,
    max_bytes: usize,
) -> Result<Message, ParseError> {
    let raw = front_end::split(bytes, transport, max_bytes)?;
    if raw.start_line.starts_with("SIP/") {
        let (status, reason) = parse_status_line(raw.start_line)?;
        let core = parse_core(&raw.headers, raw.body, None)?;
        let inner = rsip::Response {
            status_code: status.into(),
            version: rsip::Version::V2,
            headers: rsip_headers(&core),
            body: raw.body.to_vec(),
        };
        return Ok(Message::Response(Response {
            inner,
            status,
            reason,
            core,
        }));
    }
    let (method_name, uri) = parse_request_line(raw.start_line)?;
    let max_forwards = parse_max_forwards(&raw.headers)?;
    let core = parse_core(&raw.headers, raw.body, Some(method_name))?;
    // RFC 3261 §8.2.1: an unknown method gets 501 — checked last so that a malformed request
    // with an unknown method still gets its 400 (RFC 4475 §3.1.2.18).
    let method = canonical_method(method_name).ok_or_else(|| ParseError::UnknownMethod {
        method: method_name.to_string(),
    })?;
    let inner = rsip::Request {
        method,
        uri: rsip_uri(uri),
        version: rsip::Version::V2,
        headers: rsip_headers(&core),
        body: raw.body.to_vec(),
    };
    Ok(Message::Request(Request {
        inner,
        uri: uri.to_string(),
        max_forwards,
        core,
    }))
}

/// Mandatory headers, single values, CSeq, Via, From/To/Contact syntax, Date.
fn parse_core(
    headers: &[HeaderField],
    body: &[u8],
    request_method: Option<&str>,
) -> Result<Core, ParseError> {
    let has = |name: &str| headers.iter().any(|f| f.name == name);
    let missing: Vec<&'static str> = ["To", "From", "Call-ID", "CSeq", "Via"]
        .into_iter()
        .filter(|name| !has(name))
        .collect();
    if !missing.is_empty() {
        return Err(ParseError::MissingHeaders { names: missing });
    }
    let single = |name| single_value(headers, name).map(Option::unwrap_or_default);
    let (to, from, call_id, cseq_text) = (
        single("To")?,
        single("From")?,
        single("Call-ID")?,
        single("CSeq")?,
    );
    // RFC 3261 §25.1: callid = word ["@" word]; words hold no white space (control characters
    // were refused for every header by the front end).
    if call_id.is_empty() || call_id.chars().any(char::is_whitespace) {
        return Err(ParseError::InvalidHeader {
            name: "Call-ID",
            detail: format!("{call_id:?}"),
        });
    }
    let (seq, cseq_method) = parse_cseq(cseq_text)?;
    if let Some(method) = request_method {
        if method != cseq_method {
            return Err(ParseError::CSeqMethodMismatch {
                method: method.into(),
                cseq_method: cseq_method.into(),
            });
        }
    }
    let cseq = CSeq {
        seq,
        // A request's CSeq method equals its method, which is checked for 501 by the caller.
        method: canonical_method(cseq_method).unwrap_or(rsip::Method::Options),
    };
    if request_method.is_none() && canonical_method(cseq_method).is_none() {
        return Err(ParseError::InvalidHeader {
            name: "CSeq",
            detail: format!("unknown method {cseq_method:?}"),
        });
    }
    let mut vias = Vec::new();
    for field in headers.iter().filter(|f| f.name == "Via") {
        vias.extend(
            parse_via_list(&field.value).map_err(|e| ParseError::InvalidHeader {
                name: "Via",
                detail: e.to_string(),
            })?,
        );
    }
    let from_tag = check_name_addr("From", from)?;
    let to_tag = check_name_addr("To", to)?;
    for field in headers.iter().filter(|f| f.name == "Contact") {
        if field.value != "*" {
            for contact in split_top_level(&field.value, b',') {
                check_name_addr("Contact", contact)?;
            }
        }
    }
    // RFC 3261 §20.30: each rec-route is a name-addr (`<URI>`); the route set is printed into
    // the Route headers of voxgate's in-dialog requests, so a broken one is refused here.
    for field in headers.iter().filter(|f| f.name == "Record-Route") {
        for route in split_top_level(&field.value, b',') {
            if find_unquoted(route, b'<').is_none() {
                return Err(ParseError::InvalidHeader {
                    name: "Record-Route",
                    detail: format!("not a name-addr: {route:?}"),
                });
            }
            check_name_addr("Record-Route", route)?;
        }
    }
    // RFC 3261 §20.17: SIP-date is always GMT (RFC 4475 §3.1.2.12).
    if let Some(date) = headers.iter().find(|f| f.name == "Date") {
        if !date.value.ends_with("GMT") {
            return Err(ParseError::InvalidHeader {
                name: "Date",
                detail: "time zone must be GMT".into(),
            });
        }
    }
    Ok(Core {
        headers: headers.to_vec(),
        vias,
        call_id: call_id.to_string(),
        cseq,
        from: from.to_string(),
        to: to.to_string(),
        from_tag,
        to_tag,
        body: Bytes::copy_from_slice(body),
    })
}

/// The rsip method for an exact (case-sensitive, RFC 3261 §7.1) method name.
pub fn canonical_method(name: &str) -> Option<rsip::Method> {
    rsip::Method::all()
        .into_iter()
        .find(|method| method.to_string() == name)
}

/// rsip headers for the core: one rsip Via per Via value (rsip would lose comma-separated ones).
fn rsip_headers(core: &Core) -> rsip::Headers {
    let mut headers = Vec::with_capacity(core.headers.len());
    let mut vias_done = false;
    for field in &core.headers {
        if field.name == "Via" {
            if !vias_done {
                vias_done = true;
                headers.extend(
                    core.vias.iter().map(|via| {
                        rsip::Header::Via(rsip::headers::Via::from(via.to_header_value()))
                    }),
                );
            }
            continue;
        }
        let tokenizer =
            rsip::headers::header::Tokenizer::from((field.name.as_bytes(), field.value.as_bytes()));
        let header: Result<rsip::Header, rsip::Error> = tokenizer.try_into();
        headers.push(
            header.unwrap_or_else(|_| rsip::Header::Other(field.name.clone(), field.value.clone())),
        );
    }
    headers.into()
}

/// rsip's URI when its parser takes it; otherwise our own best-effort decomposition (IPv6 hosts,
/// `;` in the user part and unknown schemes defeat rsip 0.4).
fn rsip_uri(uri: &str) -> rsip::Uri {
    let ours = our_uri(uri);
    match rsip::Uri::try_from(uri) {
        // rsip sometimes "succeeds" with a wrong split (user `a;b=c@[::1]` → host `a`): take
        // its richer typed params only when it agrees with us on user and host.
        Ok(parsed) if parsed.auth == ours.auth && parsed.host_with_port == ours.host_with_port => {
            parsed
        }
        _ => ours,
    }
}

fn our_uri(uri: &str) -> rsip::Uri {
    let (scheme, rest) = uri.split_once(':').unwrap_or(("sip", uri));
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "sip" => rsip::Scheme::Sip,
        "sips" => rsip::Scheme::Sips,
        other => rsip::Scheme::Other(other.to_string()),
    };
    if let rsip::Scheme::Other(_) = scheme {
        return rsip::Uri {
            scheme: Some(scheme),
            host_with_port: rsip::Host::Domain(rest.into()).into(),
            ..Default::default()
        };
    }
    let (userinfo, host_part) = match rest.rsplit_once('@') {
        Some((userinfo, host)) => (Some(userinfo), host),
        None => (None, rest),
    };
    let mut pieces = host_part.split(';');
    let hostport = pieces.next().unwrap_or_default();
    let (host, port) = parse_host_port(hostport).unwrap_or_default();
    let host = match host.parse() {
        Ok(ip) => rsip::Host::IpAddr(ip),
        Err(_) => rsip::Host::Domain(host.into()),
    };
    rsip::Uri {
        scheme: Some(scheme),
        auth: userinfo.map(|userinfo| {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            rsip::Auth::from((user, password))
        }),
        host_with_port: rsip::HostWithPort {
            host,
            port: port.map(rsip::Port::from),
        },
        params: pieces
            .map(|param| {
                let (name, value) = match param.split_once('=') {
                    Some((name, value)) => (name, Some(value)),
                    None => (param, None),
                };
                rsip::Param::Other(name.into(), value.map(Into::into))
            })
            .collect(),
        headers: Vec::new(),
    }
}

/// The URI inside a name-addr, or the addr-spec before header parameters.
pub fn uri_of(name_addr: &str) -> Option<String> {
    let value = name_addr.trim();
    let uri = match find_unquoted(value, b'<') {
        Some(open) => {
            let after = &value[open + 1..];
            &after[..after.find('>')?]
        }
        None => value.split(';').next().unwrap_or_default().trim(),
    };
    (!uri.is_empty()).then(|| uri.to_string())
}

/// Whether `uri` can be the Request-URI of a request voxgate sends (a dialog's remote
/// target): a sip/sips URI that passes the Request-URI checks, with no white space or control
/// characters anywhere. A Contact that fails this is treated as absent (the peer is then
/// reached where its message came from), never printed into a request line.
pub fn is_usable_target(uri: &str) -> bool {
    let (scheme, _) = uri.split_once(':').unwrap_or_default();
    (scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips"))
        && !uri.chars().any(|c| c.is_whitespace() || c.is_control())
        && validate_request_uri(uri).is_ok()
}

/// The user part of a sip/sips URI, percent-decoded (RFC 3261 §19.1.4 compares unescaped).
fn sip_user(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once(':')?;
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return None;
    }
    let (userinfo, _) = rest.rsplit_once('@')?;
    let user = userinfo.split(':').next().unwrap_or_default();
    Some(percent_decode(user))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        });
        match (bytes[i], hex) {
            (b'%', Some(value)) => {
                out.push(value);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Core {
    fn header(&self, name: &str) -> Option<&str> {
        let name = canonical_header_name(name);
        self.headers
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value.as_str())
    }

    fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        let name = canonical_header_name(name);
        self.headers
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value.as_str())
    }

    fn header_tokens(&self, name: &str) -> Vec<String> {
        self.headers_named(name)
            .flat_map(|value| split_top_level(value, b','))
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn write_headers(&self, out: &mut String) {
        let mut vias_done = false;
        for field in &self.headers {
            match field.name.as_str() {
                "Via" if !vias_done => {
                    vias_done = true;
                    for via in &self.vias {
                        let _ = write!(out, "Via: {}\r\n", via.to_header_value());
                    }
                }
                "Via" | "Content-Length" => {}
                _ => {
                    let _ = write!(out, "{}: {}\r\n", field.name, field.value);
                }
            }
        }
        let _ = write!(out, "Content-Length: {}\r\n\r\n", self.body.len());
    }
}

/// Accessors shared by [`Request`] and [`Response`].
macro_rules! core_accessors {
    () => {
        /// Every Via value in order (all header lines, comma-separated values split).
        pub fn vias(&self) -> &[Via] {
            &self.core.vias
        }

        /// The topmost Via (validation guarantees at least one).
        pub fn top_via(&self) -> &Via {
            // parse_core rejects messages without a Via header, and each Via header yields at
            // least one value or an error.
            self.core.vias.first().expect("validated message has a Via")
        }

        /// Call-ID value.
        pub fn call_id(&self) -> &str {
            &self.core.call_id
        }

        /// CSeq number and method.
        pub fn cseq(&self) -> CSeq {
            self.core.cseq.clone()
        }

        /// The raw From value.
        pub fn from(&self) -> &str {
            &self.core.from
        }

        /// The raw To value.
        pub fn to(&self) -> &str {
            &self.core.to
        }

        /// The `tag` parameter of From.
        pub fn from_tag(&self) -> Option<&str> {
            self.core.from_tag.as_deref()
        }

        /// The `tag` parameter of To.
        pub fn to_tag(&self) -> Option<&str> {
            self.core.to_tag.as_deref()
        }

        /// The user part of the To URI (sip/sips), percent-decoded.
        pub fn to_user(&self) -> Option<String> {
            uri_of(&self.core.to).and_then(|uri| sip_user(&uri))
        }

        /// First value of a header: case-insensitive, compact names accepted (`i` = Call-ID).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.core.header(name)
        }

        /// Every header line's value for `name`, in order (lines are not split at commas).
        pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
            self.core.headers_named(name)
        }

        /// The comma-separated items of a list header over all its lines (`Require`,
        /// `Supported`, `Allow`, `Record-Route`), trimmed; quotes and `<>` respected.
        pub fn header_tokens(&self, name: &str) -> Vec<String> {
            self.core.header_tokens(name)
        }

        /// The body: exactly Content-Length octets.
        pub fn body(&self) -> &[u8] {
            &self.core.body
        }

        /// The Content-Type value (the UAS answers 415 for types it does not take).
        pub fn content_type(&self) -> Option<&str> {
            self.core.header("Content-Type")
        }

        /// The URI of the first Contact (without `<>` and header parameters); None when there is
        /// none or it cannot be a remote target ([`is_usable_target`]).
        pub fn contact_uri(&self) -> Option<String> {
            let first = self.core.header_tokens("Contact").into_iter().next()?;
            uri_of(&first).filter(|uri| is_usable_target(uri))
        }

        /// Each Record-Route name-addr, in order (RFC 3261 §12.1: the route set).
        pub fn record_route(&self) -> Vec<String> {
            self.core.header_tokens("Record-Route")
        }
    };
}

impl Request {
    core_accessors!();

    /// The method (always one rsip knows; others are refused with 501).
    pub fn method(&self) -> &rsip::Method {
        &self.inner.method
    }

    /// The Request-URI as rsip models it (lossy for IPv6 and unknown schemes; see
    /// [`Request::request_uri`]).
    pub fn uri(&self) -> &rsip::Uri {
        &self.inner.uri
    }

    /// The Request-URI exactly as received.
    pub fn request_uri(&self) -> &str {
        &self.uri
    }

    /// The To tag a stateless UAS gives its response to this request (RFC 3261 §8.2.7): the
    /// same for every retransmission of the request, different for any other request, and
    /// unpredictable without `key` (a per-process random key; §19.3 asks for 32 random bits or
    /// more). A keyed hash of the request's To, From tag, Call-ID, Request-URI, top Via branch
    /// and sent-by, and CSeq, as §19.3 suggests: 16 hex digits.
    pub fn stateless_tag(&self, key: &impl std::hash::BuildHasher) -> String {
        let via = self.top_via();
        let cseq = self.cseq();
        let hash = key.hash_one((
            self.to(),
            self.from_tag(),
            self.call_id(),
            self.request_uri(),
            via.branch.as_deref(),
            via.sent_by(),
            cseq.seq,
            cseq.method.to_string(),
        ));
        format!("{hash:016x}")
    }

    /// The Request-URI scheme, lower-cased (`sip`, `sips`, `tel`, …): anything but sip/sips
    /// gets 416 Unsupported URI Scheme (RFC 3261 §8.2.2.1).
    pub fn uri_scheme(&self) -> String {
        self.uri
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase()
    }

    /// The user part of the Request-URI (sip/sips), percent-decoded.
    pub fn request_uri_user(&self) -> Option<String> {
        sip_user(&self.uri)
    }

    /// Max-Forwards, if present (0..=255).
    pub fn max_forwards(&self) -> Option<u32> {
        self.max_forwards
    }

    /// Option tags in Require (a UAS answers 420 with Unsupported for unknown ones, §8.2.2.3).
    pub fn require(&self) -> Vec<String> {
        self.header_tokens("Require")
    }

    /// Stamp the top Via with `received`/`rport` from the packet's source (RFC 3261 §18.2.1,
    /// RFC 3581); call once on receipt, before any response is built.
    pub fn stamp_source(&mut self, source: SocketAddr) {
        if let Some(top) = self.core.vias.first_mut() {
            top.stamp_source(source.ip(), source.port());
            let value = top.to_header_value();
            if let Some(rsip::Header::Via(via)) = self
                .inner
                .headers
                .iter_mut()
                .find(|h| matches!(h, rsip::Header::Via(_)))
            {
                *via = rsip::headers::Via::from(value);
            }
        }
    }

    /// The rsip value (headers as received, one Via per value).
    pub fn as_rsip(&self) -> &rsip::Request {
        &self.inner
    }

    /// Print as wire bytes (our Via values, corrected Content-Length).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = format!("{} {} SIP/2.0\r\n", self.inner.method, self.uri);
        self.core.write_headers(&mut out);
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.core.body);
        bytes.into()
    }
}

impl Response {
    core_accessors!();

    /// The status code (100..=699).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason phrase (may be empty).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The rsip value.
    pub fn as_rsip(&self) -> &rsip::Response {
        &self.inner
    }

    /// Print as wire bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = format!("SIP/2.0 {} {}\r\n", self.status, self.reason);
        self.core.write_headers(&mut out);
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.core.body);
        bytes.into()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::sip::builder::fnv1a;

    const INVITE: &str = "INVITE sip:+15551234@voxgate.example.com;user=phone SIP/2.0\r\n\
        Via: SIP/2.0/UDP pbx.example.com:5060;branch=z9hG4bKa1;rport, SIP/2.0/TCP [2001:db8::1];branch=z9hG4bKa0\r\n\
        v: SIP/2.0/UDP edge.example.com;branch=z9hG4bKzz;received=192.0.2.1\r\n\
        Max-Forwards: 70\r\n\
        f: \"Alice\" <sip:alice@pbx.example.com>;tag=from1\r\n\
        t: <sip:%2B15551234@voxgate.example.com>\r\n\
        i: call-1@pbx\r\n\
        CSeq: 101 INVITE\r\n\
        m: <sip:alice@192.0.2.10:5060>;expires=60\r\n\
        Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
        Record-Route: <sip:p3.example.com;lr>\r\n\
        Require: timer\r\n\
        c: application/sdp\r\n\
        l: 4\r\n\
        \r\n\
        v=0\r\n";

    fn request_of(text: &str) -> Request {
        match parse(text.as_bytes(), Transport::Udp, 65_535) {
            Ok(Message::Request(request)) => request,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn rejected(text: &str) -> Rejected {
        match parse(text.as_bytes(), Transport::Udp, 65_535) {
            Err(rejected) => rejected,
            Ok(message) => panic!("accepted {message:?}"),
        }
    }

    fn base(method: &str, cseq_method: &str, extra: &str) -> String {
        format!(
            "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n\
             From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c1\r\n\
             CSeq: 1 {cseq_method}\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn exposes_core_fields_of_a_request() {
        let request = request_of(INVITE);
        assert_eq!(request.method(), &rsip::Method::Invite);
        assert_eq!(request.request_uri_user().as_deref(), Some("+15551234"));
        assert_eq!(request.to_user().as_deref(), Some("+15551234"));
        assert_eq!(request.uri_scheme(), "sip");
        let hosts: Vec<_> = request.vias().iter().map(|v| v.host.as_str()).collect();
        assert_eq!(
            hosts,
            ["pbx.example.com", "2001:db8::1", "edge.example.com"]
        );
        assert_eq!(request.top_via().rport, Rport::Requested);
        assert_eq!(request.call_id(), "call-1@pbx");
        assert_eq!(request.header("Call-ID"), Some("call-1@pbx"));
        assert_eq!(request.header("i"), Some("call-1@pbx"));
        assert_eq!(request.from_tag(), Some("from1"));
        assert_eq!(request.to_tag(), None);
        assert_eq!(
            request.cseq(),
            CSeq {
                seq: 101,
                method: rsip::Method::Invite
            }
        );
        assert_eq!(request.max_forwards(), Some(70));
        assert_eq!(request.body(), b"v=0\r");
        assert_eq!(request.content_type(), Some("application/sdp"));
        assert_eq!(
            request.contact_uri().as_deref(),
            Some("sip:alice@192.0.2.10:5060")
        );
        assert_eq!(
            request.record_route(),
            [
                "<sip:p1.example.com;lr>",
                "<sip:p2.example.com;lr>",
                "<sip:p3.example.com;lr>"
            ]
        );
        assert_eq!(request.headers_named("via").count(), 2);
        assert_eq!(request.require(), ["timer"]);
        let rsip_vias = request
            .as_rsip()
            .headers
            .iter()
            .filter(|h| matches!(h, rsip::Header::Via(_)))
            .count();
        assert_eq!(rsip_vias, 3);
    }

    #[test]
    fn request_prints_and_parses_back() {
        let mut request = request_of(INVITE);
        request.stamp_source("192.0.2.50:7000".parse().unwrap());
        let again = request_of(std::str::from_utf8(&request.to_bytes()).unwrap());
        assert_eq!(again.vias(), request.vias());
        assert_eq!(again.top_via().received.as_deref(), Some("192.0.2.50"));
        assert_eq!(again.top_via().rport, Rport::Value(7000));
        assert_eq!(again.body(), request.body());
        assert_eq!(again.record_route(), request.record_route());
        assert_eq!(again.cseq(), request.cseq());
    }

    #[test]
    fn builds_responses_that_parse_back() {
        let mut request = request_of(INVITE);
        request.stamp_source("192.0.2.50:7000".parse().unwrap());
        let bytes = response(&request, 200)
            .to_tag("srv9")
            .header("Contact", "<sip:voxgate@192.0.2.99>")
            .header("Content-Length", "999")
            .body("application/sdp", Bytes::from_static(b"v=0\r\n"))
            .build();
        let Ok(Message::Response(ok)) = parse(&bytes, Transport::Tcp, 65_535) else {
            panic!("unparsable {:?}", String::from_utf8_lossy(&bytes));
        };
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.reason(), "OK");
        assert_eq!(ok.vias(), request.vias());
        assert_eq!(ok.to_tag(), Some("srv9"));
        assert_eq!(ok.from_tag(), Some("from1"));
        assert_eq!(ok.call_id(), "call-1@pbx");
        assert_eq!(ok.cseq(), request.cseq());
        assert_eq!(ok.record_route().len(), 3);
        assert_eq!(ok.body(), b"v=0\r\n");
        assert_eq!(ok.contact_uri().as_deref(), Some("sip:voxgate@192.0.2.99"));
        assert_eq!(ok.as_rsip().status_code.code(), 200);

        let trying = response(&request, 100).build();
        let Ok(Message::Response(trying)) = parse(&trying, Transport::Udp, 65_535) else {
            panic!("unparsable 100");
        };
        assert_eq!(trying.reason(), "Trying");
        assert!(trying.record_route().is_empty());
        assert_eq!(trying.to_tag(), None);
    }

    #[test]
    fn to_tag_is_not_added_twice() {
        let request = request_of(&base("BYE", "BYE", "").replace(
            "To: <sip:bob@example.com>",
            "To: <sip:bob@example.com>;tag=existing",
        ));
        let bytes = response(&request, 200).to_tag("new").build();
        let Ok(Message::Response(ok)) = parse(&bytes, Transport::Udp, 65_535) else {
            panic!()
        };
        assert_eq!(ok.to_tag(), Some("existing"));
        assert!(ok.record_route().is_empty());
    }

    #[test]
    fn builds_requests_that_parse_back() {
        let branch = new_branch();
        assert!(branch.starts_with(MAGIC_COOKIE) && branch.len() == 23);
        let bytes = request(rsip::Method::Bye, "sip:alice@192.0.2.10:5060")
            .header(
                "Via",
                Via::new("udp", "192.0.2.99", Some(5060), &branch).to_header_value(),
            )
            .header("Max-Forwards", "70")
            .header("From", format!("<sip:v@x>;tag={}", new_tag()))
            .header("To", "<sip:alice@x>;tag=abc")
            .header("Call-ID", new_call_id("192.0.2.99"))
            .header("CSeq", "2 BYE")
            .build();
        let request = request_of(std::str::from_utf8(&bytes).unwrap());
        assert_eq!(request.method(), &rsip::Method::Bye);
        assert_eq!(request.top_via().branch.as_deref(), Some(branch.as_str()));
        assert_eq!(request.top_via().transport, "UDP");
        assert_eq!(request.to_tag(), Some("abc"));
        assert!(request.call_id().ends_with("@192.0.2.99"));
        assert_eq!(request.header("Content-Length"), Some("0"));
        let with_body = request_of(
            std::str::from_utf8(
                &self::request("INFO", "sip:a@b")
                    .header("Via", "SIP/2.0/TCP h;branch=z9hG4bK2")
                    .header("From", "<sip:v@x>;tag=1")
                    .header("To", "<sip:a@b>")
                    .header("Call-ID", "x")
                    .header("CSeq", "3 INFO")
                    .body(
                        "application/dtmf-relay",
                        Bytes::from_static(b"Signal=1\r\n"),
                    )
                    .build(),
            )
            .unwrap(),
        );
        assert_eq!(with_body.body(), b"Signal=1\r\n");
        assert_eq!(with_body.content_type(), Some("application/dtmf-relay"));
    }

    #[test]
    fn rejects_malformed_request_lines() {
        for (line, status) in [
            ("INVITE  sip:a@b.com SIP/2.0", 400),
            ("INVITE sip:a@b.com SIP/2.0 ", 400),
            ("INVITE <sip:a@b.com> SIP/2.0", 400),
            ("INVITE sip:a@b.com; lr SIP/2.0", 400),
            ("INVITE sip:a@b.com?Route=x SIP/2.0", 400),
            ("INVITE b.com SIP/2.0", 400),
            ("INVITE sip:a@b.com SIP/7.0", 505),
            ("INVITE sip:a@b.com HTTP/1.1", 400),
        ] {
            let text = base("INVITE", "INVITE", "").replacen(
                "INVITE sip:bob@example.com SIP/2.0",
                line,
                1,
            );
            let error = rejected(&text);
            assert_eq!(error.error.status(), status, "{line}");
            assert!(error.fallback.is_some(), "{line}");
        }
    }

    #[test]
    fn from_and_to_need_a_uri_scheme_and_no_bare_control_characters() {
        // Found by fuzzing: an INVITE with these was answered, and voxgate's BYE then carried
        // them in its own From and To, which no parser (voxgate's included) accepts.
        for (from, to) in [
            (":0t", "<sip:bob@example.com>"),
            ("<sip:a@example.com>;tag=1", "i\r:>"),
            ("<:a@example.com>;tag=1", "<sip:bob@example.com>"),
            (
                "<sip:a@example.com>;tag=1",
                "\"Bob\u{7}\" <sip:bob@example.com>",
            ),
            ("<sip:a@example.com>;tag=1", "<sip:bob@exa\u{0}mple.com>"),
            ("<sip:a@example.com>;tag=1", "\u{b}<sip:bob@example.com>"),
            ("<sip:a@example.com>;tag=1\u{c}", "<sip:bob@example.com>"),
        ] {
            let text = base("OPTIONS", "OPTIONS", "")
                .replace("From: <sip:a@example.com>;tag=1", &format!("From: {from}"))
                .replace("To: <sip:bob@example.com>", &format!("To: {to}"));
            assert_eq!(rejected(&text).error.status(), 400, "{from:?} {to:?}");
        }
        // Escaped inside a quoted string, a control character is legal (RFC 4475 intmeth).
        let text = base("OPTIONS", "OPTIONS", "").replace(
            "To: <sip:bob@example.com>",
            "To: \"BEL:\\\u{7}\" <sip:bob@example.com>",
        );
        assert!(parse(text.as_bytes(), Transport::Udp, 65_535).is_ok());
    }

    #[test]
    fn record_route_entries_must_be_name_addrs() {
        for record_route in [
            "sip:p1.example.com;lr",
            "<sip:p1.example.com;lr>, garbage",
            "<sip:p1.exa\u{0}mple.com;lr>",
            "<p1.example.com>",
        ] {
            let text = base(
                "INVITE",
                "INVITE",
                &format!("Record-Route: {record_route}\r\n"),
            );
            assert_eq!(rejected(&text).error.status(), 400, "{record_route:?}");
        }
        let text = base(
            "INVITE",
            "INVITE",
            "Record-Route: <sip:p1.example.com;lr;ftag=a1>, \"edge\" <sip:10.0.0.1;lr>\r\n",
        );
        let Ok(Message::Request(request)) = parse(text.as_bytes(), Transport::Udp, 65_535) else {
            panic!("a valid Record-Route refused");
        };
        assert_eq!(request.record_route().len(), 2);
    }

    #[test]
    fn a_call_id_with_control_characters_is_refused() {
        for call_id in ["c\u{0}1", "c\u{1b}1", "c\u{7f}1"] {
            let text = base("OPTIONS", "OPTIONS", "")
                .replace("Call-ID: c1", &format!("Call-ID: {call_id}"));
            assert_eq!(rejected(&text).error.status(), 400, "{call_id:?}");
        }
    }

    #[test]
    fn reports_missing_headers_in_reason_phrase() {
        let text = base("OPTIONS", "OPTIONS", "").replace("Call-ID: c1\r\n", "");
        let error = rejected(&text);
        assert_eq!(error.error.status(), 400);
        assert_eq!(error.error.reason(), "Bad Request (Missing Call-ID)");
        let text = "INVITE sip:a@b.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: 1 INVITE\r\n\r\n";
        assert_eq!(
            rejected(text).error.reason(),
            "Bad Request (Missing To, From, Call-ID)"
        );
    }

    #[test]
    fn rejects_conflicting_single_value_headers_but_not_repeats() {
        for extra in [
            "Call-ID: other\r\n",
            "To: <sip:x@example.com>\r\n",
            "CSeq: 2 OPTIONS\r\n",
            "Max-Forwards: 1\r\nMax-Forwards: 2\r\n",
            "From: <sip:b@example.com>;tag=2\r\n",
        ] {
            let error = rejected(&base("OPTIONS", "OPTIONS", extra));
            assert!(
                matches!(error.error, ParseError::DuplicateHeader { .. }),
                "{extra}"
            );
        }
        request_of(&base("OPTIONS", "OPTIONS", "Call-ID: c1\r\n"));
    }

    #[test]
    fn rejects_overlarge_scalars() {
        let error =
            rejected(&base("OPTIONS", "OPTIONS", "").replace("CSeq: 1", "CSeq: 2147483648"));
        assert_eq!(error.error.reason(), "Bad Request (Invalid CSeq)");
        request_of(&base("OPTIONS", "OPTIONS", "").replace("CSeq: 1", "CSeq: 2147483647"));
        let error = rejected(&base("OPTIONS", "OPTIONS", "Max-Forwards: 256\r\n"));
        assert_eq!(error.error.reason(), "Bad Request (Invalid Max-Forwards)");
        assert_eq!(
            request_of(&base("OPTIONS", "OPTIONS", "Max-Forwards: 0\r\n")).max_forwards(),
            Some(0)
        );
        let text = "SIP/2.0 700 Weird\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n";
        let error = rejected(text);
        assert!(matches!(error.error, ParseError::InvalidStatusCode { .. }));
        assert!(error.fallback.is_none());
    }

    #[test]
    fn cseq_method_must_match() {
        let error = rejected(&base("OPTIONS", "INVITE", ""));
        assert_eq!(error.error.reason(), "Bad Request (CSeq method mismatch)");
        let error = rejected(&base("NEWMETHOD", "INVITE", ""));
        assert_eq!(error.error.status(), 400);
        for method in ["ACK", "CANCEL"] {
            assert!(rejected(&base(method, "INVITE", "")).error.status() == 400);
            request_of(&base(method, method, ""));
        }
    }

    #[test]
    fn unknown_method_yields_501_with_enough_to_answer() {
        let error = rejected(&base("PUBLISHX", "PUBLISHX", ""));
        assert_eq!(error.error.status(), 501);
        assert_eq!(error.error.reason(), "Not Implemented");
        let fallback = error.fallback.unwrap();
        assert_eq!(fallback.method.as_deref(), Some("PUBLISHX"));
        let bytes = response_for_rejected(
            &fallback,
            501,
            &error.error.reason(),
            &[("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS".to_string())],
        )
        .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let tag = format!(
            "{:016x}",
            fnv1a(
                format!(
                    "{:?}{:?}{:?}",
                    fallback.call_id, fallback.vias, fallback.cseq
                )
                .as_bytes()
            )
        );
        assert_eq!(
            text,
            format!(
                "SIP/2.0 501 Not Implemented\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n\
                 From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>;tag={tag}\r\n\
                 Call-ID: c1\r\nCSeq: 1 PUBLISHX\r\nAllow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n\
                 Content-Length: 0\r\n\r\n"
            )
        );
        // Deterministic tag: a retransmission gets the same answer.
        assert_eq!(
            response_for_rejected(&fallback, 501, "Not Implemented", &[]),
            response_for_rejected(&fallback, 501, "Not Implemented", &[])
        );
    }

    #[test]
    fn rejected_without_via_cannot_be_answered() {
        let error = rejected("INVITE sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n");
        assert!(error.fallback.is_none());
        assert_eq!(
            response_for_rejected(&FallbackHeaders::default(), 400, "Bad Request", &[]),
            None
        );
    }

    #[test]
    fn rejects_malformed_name_addrs() {
        for (header, value) in [
            ("To", "\"Mr. J. User <sip:j.user@example.com>"),
            ("To", "\"Watson, Thomas\" < sip:t.watson@example.org >"),
            ("To", "Watson, Thomas <sip:t.watson@example.org>"),
            (
                "Contact",
                "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            ),
            ("Contact", "\"Joe\" <sip:joe@example.org>;;;;"),
        ] {
            let text = if header == "To" {
                base("OPTIONS", "OPTIONS", "")
                    .replace("To: <sip:bob@example.com>", &format!("To: {value}"))
            } else {
                base("OPTIONS", "OPTIONS", &format!("{header}: {value}\r\n"))
            };
            let error = rejected(&text);
            assert_eq!(
                error.error.reason(),
                format!("Bad Request (Invalid {header})"),
                "{value}"
            );
        }
        for good in [
            "caller<sip:caller@example.com>;tag=323",
            "sip:vivekg@example.com ; tag = 1918181833n",
            "\"J Rosenberg \\\\\\\"\" <sip:jdrosen@example.com> ; tag = 98asjd8",
            "isbn:2983792873",
        ] {
            let text = base("OPTIONS", "OPTIONS", "")
                .replace("From: <sip:a@example.com>;tag=1", &format!("From: {good}"));
            request_of(&text);
        }
    }

    #[test]
    fn empty_quoted_param_value_is_rejected_not_a_panic() {
        let text = base("OPTIONS", "OPTIONS", "").replace(
            "From: <sip:a@example.com>;tag=1",
            "From: <sip:a@example.com>;x=\"",
        );
        assert_eq!(rejected(&text).error.reason(), "Bad Request (Invalid From)");
    }

    #[test]
    fn fallback_response_never_carries_bare_cr() {
        let fallback = FallbackHeaders {
            vias: vec!["SIP/2.0/UDP h;branch=z9hG4bK1\rInjected: yes".into()],
            to: Some("<sip:a@b>\r".into()),
            call_id: Some("x\ry".into()),
            ..Default::default()
        };
        let bytes = response_for_rejected(&fallback, 400, "Bad\r\nRequest", &[]).unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert_eq!(text.matches('\r').count(), text.matches("\r\n").count());
    }

    #[test]
    fn tags_are_parsed_with_whitespace() {
        let text = base("OPTIONS", "OPTIONS", "").replace(
            "From: <sip:a@example.com>;tag=1",
            "From: sip:a@example.com ; tag = 98asjd8",
        );
        assert_eq!(request_of(&text).from_tag(), Some("98asjd8"));
    }

    #[test]
    fn exposes_unknown_scheme_for_416() {
        let text = base("OPTIONS", "OPTIONS", "").replace(
            "sip:bob@example.com SIP",
            "nobodyKnowsThisScheme:totallyopaquecontent SIP",
        );
        let request = request_of(&text);
        assert_eq!(request.uri_scheme(), "nobodyknowsthisscheme");
        assert_eq!(
            request.request_uri(),
            "nobodyKnowsThisScheme:totallyopaquecontent"
        );
        assert_eq!(request.request_uri_user(), None);
    }

    #[test]
    fn takes_ipv6_and_semicolon_user_request_uris() {
        let text = base("OPTIONS", "OPTIONS", "").replace(
            "sip:bob@example.com SIP",
            "sip:user;par=u%40example.net@[2001:db8::10]:5070 SIP",
        );
        let request = request_of(&text);
        assert_eq!(
            request.request_uri_user().as_deref(),
            Some("user;par=u@example.net")
        );
        assert_eq!(
            request.uri().host_with_port.host,
            rsip::Host::IpAddr("2001:db8::10".parse().unwrap())
        );
        assert!(request
            .to_bytes()
            .starts_with(b"OPTIONS sip:user;par=u%40example.net@[2001:db8::10]:5070 SIP/2.0\r\n"));
    }

    #[test]
    fn oversized_message_is_413() {
        let text = base("OPTIONS", "OPTIONS", "");
        let error = parse(text.as_bytes(), Transport::Udp, 100).unwrap_err();
        assert_eq!(error.error.status(), 413);
        assert_eq!(error.error.reason(), "Request Entity Too Large");
    }

    #[test]
    fn invalid_date_is_rejected() {
        let error = rejected(&base(
            "OPTIONS",
            "OPTIONS",
            "Date: Fri, 01 Jan 2010 16:00:00 EST\r\n",
        ));
        assert_eq!(error.error.reason(), "Bad Request (Invalid Date)");
        request_of(&base(
            "OPTIONS",
            "OPTIONS",
            "Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n",
        ));
    }

    #[test]
    fn canonical_method_is_case_sensitive() {
        assert_eq!(canonical_method("PRACK"), Some(rsip::Method::PRack));
        assert_eq!(canonical_method("INVITE"), Some(rsip::Method::Invite));
        assert_eq!(canonical_method("invite"), None);
        assert_eq!(canonical_method("RE%47ISTER"), None);
    }

    /// The RFC 4475 torture directory, read in place (never copied into the repository).
    fn torture_dir() -> std::path::PathBuf {
        let beside = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/sip-torture/"
        ));
        if beside.is_dir() {
            beside.to_path_buf()
        } else {
            std::path::PathBuf::from("/work/shared/sip-torture/")
        }
    }

    fn torture(name: &str) -> Vec<u8> {
        std::fs::read(torture_dir().join(format!("{name}.dat"))).unwrap()
    }

    fn torture_parse(name: &str) -> Result<Message, Rejected> {
        // The RFC 4475 messages are datagrams (dblreq's trailing octets, inv2543 without
        // Content-Length).
        parse(&torture(name), Transport::Udp, 65_535)
    }

    const VALID: [&str; 13] = [
        "wsinv",
        "intmeth",
        "esc01",
        "escnull",
        "esc02",
        "lwsdisp",
        "longreq",
        "dblreq",
        "semiuri",
        "transports",
        "mpart01",
        "unreason",
        "noreason",
    ];

    /// Valid messages with an extension method: rsip::Method cannot represent them, so voxgate
    /// refuses them with 501 + Allow (RFC 3261 §8.2.1) — the right answer for a UAS that does
    /// not implement the method, and possible because the whole message was understood.
    const VALID_BUT_UNKNOWN_METHOD: [&str; 2] = ["intmeth", "esc02"];

    #[test]
    fn torture_valid_messages_parse() {
        for name in VALID {
            let result = torture_parse(name);
            if VALID_BUT_UNKNOWN_METHOD.contains(&name) {
                let rejected = result.unwrap_err();
                assert_eq!(rejected.error.status(), 501, "{name}: {:?}", rejected.error);
                let fallback = rejected.fallback.unwrap();
                assert!(
                    fallback.call_id.is_some() && fallback.cseq.is_some(),
                    "{name}"
                );
                assert!(response_for_rejected(&fallback, 501, "Not Implemented", &[]).is_some());
                continue;
            }
            if let Err(rejected) = &result {
                panic!("{name} refused: {:?}", rejected.error);
            }
        }
    }

    #[test]
    fn torture_valid_messages_keep_their_details() {
        let Ok(Message::Request(wsinv)) = torture_parse("wsinv") else {
            panic!()
        };
        assert_eq!(wsinv.vias().len(), 3);
        assert_eq!(wsinv.vias()[0].host, "192.0.2.2");
        assert_eq!(wsinv.vias()[2].branch.as_deref(), Some("z9hG4bK30239"));
        assert_eq!(wsinv.to_tag(), Some("1918181833n"));
        assert_eq!(wsinv.from_tag(), Some("98asjd8"));
        assert_eq!(wsinv.max_forwards(), Some(68));
        assert_eq!(wsinv.cseq().seq, 9);
        assert_eq!(wsinv.body().len(), 150);
        assert_eq!(wsinv.header("Subject"), Some(""));
        assert_eq!(
            wsinv.header("NewFangledHeader"),
            Some("newfangled value continued newfangled value")
        );
        let Ok(Message::Request(longreq)) = torture_parse("longreq") else {
            panic!()
        };
        assert_eq!(longreq.vias().len(), 34);
        let Ok(Message::Request(dblreq)) = torture_parse("dblreq") else {
            panic!()
        };
        assert_eq!(dblreq.method(), &rsip::Method::Register);
        assert!(dblreq.body().is_empty());
        let Ok(Message::Request(semiuri)) = torture_parse("semiuri") else {
            panic!()
        };
        assert_eq!(
            semiuri.request_uri_user().as_deref(),
            Some("user;par=u@example.net")
        );
        let Ok(Message::Request(transports)) = torture_parse("transports") else {
            panic!()
        };
        let kinds: Vec<_> = transports
            .vias()
            .iter()
            .map(|v| v.transport.as_str())
            .collect();
        assert_eq!(kinds, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
        let Ok(Message::Request(mpart)) = torture_parse("mpart01") else {
            panic!()
        };
        assert_eq!(mpart.body().len(), 553);
        let Ok(Message::Response(noreason)) = torture_parse("noreason") else {
            panic!()
        };
        assert_eq!((noreason.status(), noreason.reason()), (100, ""));
        let Ok(Message::Response(unreason)) = torture_parse("unreason") else {
            panic!()
        };
        assert!(unreason.reason().starts_with("= 2**3 * 5**2"));
        let Ok(Message::Request(esc01)) = torture_parse("esc01") else {
            panic!()
        };
        assert_eq!(
            esc01.request_uri_user().as_deref(),
            Some("sips:user@example.com")
        );
    }

    #[test]
    fn torture_invalid_messages_are_rejected_with_answerable_fallback() {
        for (name, status) in [
            ("badinv01", 400),
            ("clerr", 400),
            ("ncl", 400),
            ("scalar02", 400),
            ("quotbal", 400),
            ("ltgtruri", 400),
            ("lwsruri", 400),
            ("lwsstart", 400),
            ("trws", 400),
            ("escruri", 400),
            ("baddate", 400),
            ("regbadct", 400),
            ("badaspec", 400),
            // Also lacks the empty line ending its header section (see the torture README).
            ("baddn", 400),
            ("badvers", 505),
            ("mismatch01", 400),
            ("mismatch02", 400),
        ] {
            let rejected = torture_parse(name).unwrap_err();
            assert_eq!(
                rejected.error.status(),
                status,
                "{name}: {:?}",
                rejected.error
            );
            let fallback = rejected
                .fallback
                .unwrap_or_else(|| panic!("{name}: no fallback"));
            assert!(fallback.call_id.is_some(), "{name}");
            let answer = response_for_rejected(&fallback, status, &rejected.error.reason(), &[])
                .unwrap_or_else(|| panic!("{name}: unanswerable"));
            assert!(answer.starts_with(format!("SIP/2.0 {status} ").as_bytes()));
        }
        // Responses cannot be answered: they are dropped.
        for name in ["scalarlg", "bigcode"] {
            let rejected = torture_parse(name).unwrap_err();
            assert!(rejected.fallback.is_none(), "{name}");
        }
    }

    #[test]
    fn a_stateless_answer_echoes_no_control_characters() {
        let text = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK1\r\n\
                    From: <sip:x@y>;tag=\u{0}1\r\nCall-ID: c\u{1b}[2J\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let rejected = parse(text.as_bytes(), Transport::Udp, 65_535).unwrap_err();
        let answer = response_for_rejected(&rejected.fallback.unwrap(), 400, "Bad Request", &[])
            .expect("answerable");
        let head = std::str::from_utf8(&answer).unwrap();
        assert!(
            !head.replace("\r\n", "").chars().any(|c| c.is_control()),
            "{head:?}"
        );
        assert!(head.contains("Call-ID: c [2J\r\n"), "{head:?}");
    }

    #[test]
    fn only_recognisable_requests_with_a_real_via_are_answerable() {
        let answerable = |bytes: &[u8]| {
            let rejected = parse(bytes, Transport::Udp, 65_535).unwrap_err();
            rejected.fallback.is_some()
        };
        // Found by fuzzing: eight bytes of garbage drew a 400 to their source, ten times their
        // size (a reflector for spoofed datagrams).
        assert!(!answerable(b"0\r\nV:\xaa"));
        assert!(!answerable(b"0\r\nVia: SIP/2.0/UDP 192.0.2.9\r\n\r\n"));
        assert!(!answerable(
            b"OPTIONS\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK1\r\nCall-ID: x\r\n\r\n"
        ));
        // A Via that is not one: nowhere trustworthy to answer.
        assert!(!answerable(
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: garbage\r\nCall-ID: x\r\n\r\n"
        ));
        assert!(!answerable(
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP\r\nCall-ID: x\r\n\r\n"
        ));
        // Broken, but recognisably a request with a Via: answered (400 here, no CSeq).
        assert!(answerable(
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK1\r\n\r\n"
        ));
        assert!(answerable(
            b"OPTIONS  sip:a@b ;x SIP/2.0 \r\nv: sip/2.0/tcp h\r\n\r\n"
        ));
    }

    #[test]
    fn torture_application_messages_expose_what_the_uas_needs() {
        // §3.3.1 insuf: 400, answerable from Via + CSeq even without From/To/Call-ID.
        let rejected = torture_parse("insuf").unwrap_err();
        assert_eq!(
            rejected.error.reason(),
            "Bad Request (Missing To, From, Call-ID)"
        );
        assert!(
            response_for_rejected(&rejected.fallback.unwrap(), 400, "Bad Request", &[]).is_some()
        );
        // §3.3.8 multi01 and §3.3.9 mcl01: 400.
        for name in ["multi01", "mcl01"] {
            let rejected = torture_parse(name).unwrap_err();
            assert_eq!(rejected.error.status(), 400, "{name}");
            assert!(rejected.fallback.is_some(), "{name}");
        }
        // §3.3.2 unkscm / §3.3.3 novelsc: parsed; the scheme is exposed for a 416.
        for (name, scheme) in [
            ("unkscm", "nobodyknowsthisscheme"),
            ("novelsc", "soap.beep"),
        ] {
            let Ok(Message::Request(request)) = torture_parse(name) else {
                panic!("{name}")
            };
            assert_eq!(request.uri_scheme(), scheme);
        }
        // §3.3.5 bext01: Require exposed for a 420.
        let Ok(Message::Request(bext01)) = torture_parse("bext01") else {
            panic!()
        };
        assert_eq!(
            bext01.require(),
            ["nothingSupportsThis", "nothingSupportsThisEither"]
        );
        // §3.3.6 invut: Content-Type exposed for a 415.
        let Ok(Message::Request(invut)) = torture_parse("invut") else {
            panic!()
        };
        assert_eq!(invut.content_type(), Some("application/unknownformat"));
        // §3.3.11 zeromf: parsed, Max-Forwards 0 visible.
        let Ok(Message::Request(zeromf)) = torture_parse("zeromf") else {
            panic!()
        };
        assert_eq!(zeromf.max_forwards(), Some(0));
        // §3.2.1 badbranch: parsed; the branch is only the cookie.
        let Ok(Message::Request(badbranch)) = torture_parse("badbranch") else {
            panic!()
        };
        assert_eq!(badbranch.top_via().branch.as_deref(), Some("z9hG4bK"));
        // §3.4.1 inv2543: no Content-Length on UDP, no branch, no Max-Forwards.
        let Ok(Message::Request(inv2543)) = torture_parse("inv2543") else {
            panic!()
        };
        assert!(!inv2543.top_via().has_magic_cookie());
        assert_eq!(inv2543.max_forwards(), None);
        assert!(inv2543.body().starts_with(b"v=0"));
        for name in [
            "unksm2", "regaut01", "bcast", "cparam01", "cparam02", "regescrt", "sdp01",
        ] {
            assert!(torture_parse(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn torture_files_never_panic_on_any_transport() {
        let mut count = 0;
        for entry in std::fs::read_dir(torture_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "dat") {
                let bytes = std::fs::read(&path).unwrap();
                for transport in [Transport::Udp, Transport::Tcp] {
                    let _ = parse(&bytes, transport, 65_535);
                    let _ = parse(&bytes, transport, 300);
                }
                count += 1;
            }
        }
        assert_eq!(count, 49);
    }

    fn torture_corpus() -> Vec<Vec<u8>> {
        let mut files: Vec<_> = std::fs::read_dir(torture_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "dat"))
            .collect();
        files.sort();
        files.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&bytes, Transport::Udp, 65_535);
            let _ = parse(&bytes, Transport::Tcp, 65_535);
        }

        #[test]
        fn parse_never_panics_on_mutated_torture_messages(
            file in 0usize..49,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
        ) {
            let corpus = torture_corpus();
            let mut bytes = corpus[file % corpus.len()].clone();
            for (position, byte, kind) in edits {
                let at = position % (bytes.len() + 1);
                match kind {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ if at < bytes.len() => { bytes.remove(at); }
                    _ => {}
                }
            }
            if let Ok(message) = parse(&bytes, Transport::Udp, 65_535) {
                // Whatever we accept, we print in a form we accept again.
                let printed = match &message {
                    Message::Request(request) => request.to_bytes(),
                    Message::Response(response) => response.to_bytes(),
                };
                prop_assert!(parse(&printed, Transport::Tcp, 65_535).is_ok(),
                    "{:?}", String::from_utf8_lossy(&printed));
            } else if let Err(Rejected { error, fallback: Some(fallback) }) = parse(&bytes, Transport::Udp, 65_535) {
                let _ = response_for_rejected(&fallback, error.status(), &error.reason(), &[]);
            }
        }

        #[test]
        fn built_requests_round_trip(
            user in "[a-z0-9+]{1,12}",
            seq in 0u32..(1 << 31),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let branch = new_branch();
            let bytes = request("INFO", &format!("sip:{user}@192.0.2.1:5060"))
                .header("Via", format!("SIP/2.0/TCP 192.0.2.9;branch={branch}"))
                .header("From", "<sip:v@x>;tag=1")
                .header("To", format!("<sip:{user}@x>"))
                .header("Call-ID", "rt@x")
                .header("CSeq", format!("{seq} INFO"))
                .body("application/octet-stream", Bytes::from(body.clone()))
                .build();
            let Ok(Message::Request(parsed)) = parse(&bytes, Transport::Tcp, 65_535) else {
                return Err(TestCaseError::fail("did not parse"));
            };
            prop_assert_eq!(parsed.cseq().seq, seq);
            prop_assert_eq!(parsed.body(), &body[..]);
            prop_assert_eq!(parsed.request_uri_user(), Some(user));
            prop_assert_eq!(parsed.top_via().branch.as_deref(), Some(branch.as_str()));
            prop_assert_eq!(parsed.to_bytes(), bytes);
        }
    }
}
