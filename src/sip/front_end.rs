//! Our lexical front-end for SIP messages (RFC 3261 §7, §7.3.1, §7.3.3, §18.3, §18.2.1).
//!
//! rsip 0.4's own parser cannot fold lines, take compact names or whitespace before `:`, and it
//! ignores Content-Length, so every received message goes through [`split`] first:
//!
//! ```text
//! bytes ─► skip leading CRLFs ─► size check ─► find CRLFCRLF ─► start line + header lines
//!       ─► unfold (SP/HT continuation) ─► "name WS : value" ─► expand compact names
//!       ─► Content-Length: exactly that many body octets (UDP: trailing octets ignored,
//!          missing = rest of the datagram; TCP: missing = error)
//! ```
//!
//! In: raw bytes, the transport they came over and a size limit. Out: a [`RawMessage`] (start
//! line, `(canonical name, value)` pairs in order, body) or a [`FrontEndError`]. [`fallback`]
//! is the tolerant twin used after any failure: it pulls Via/From/To/Call-ID/CSeq out of
//! whatever arrived so that a 400/501 can still be sent.

use thiserror::Error;

use super::message::Transport;

/// What the front-end refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrontEndError {
    /// Nothing but whitespace arrived.
    #[error("empty message")]
    Empty,
    /// The message (or its header section) is over the configured limit.
    #[error("message of {size} octets exceeds the limit of {limit}")]
    TooLarge {
        /// Octets seen (or declared by Content-Length).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// No empty line ends the header section.
    #[error("header section is not terminated by an empty line")]
    UnterminatedHeaders,
    /// The start line or a header is not UTF-8.
    #[error("header section is not valid UTF-8")]
    InvalidUtf8,
    /// A header line has no `:` or an invalid name, or a continuation line has nothing to fold into.
    #[error("malformed header line {line}")]
    MalformedHeaderLine {
        /// 1-based line number within the message.
        line: usize,
    },
    /// Content-Length is negative, not a number or overflows.
    #[error("invalid Content-Length {value:?}")]
    InvalidContentLength {
        /// The value as received.
        value: String,
    },
    /// Several Content-Length headers disagree.
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    /// Content-Length promises more octets than arrived.
    #[error("Content-Length {declared} exceeds the {available} octets received")]
    ContentLengthExceedsBody {
        /// Content-Length value.
        declared: usize,
        /// Octets after the header section.
        available: usize,
    },
    /// A message on a stream transport without Content-Length (RFC 3261 §18.3: MUST).
    #[error("missing Content-Length on a stream transport")]
    MissingContentLength,
}

/// One header line after unfolding: canonical name (compact forms expanded) and trimmed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    /// Canonical spelling for known headers (`Call-ID`, `CSeq`), as received otherwise.
    pub name: String,
    /// Value with folding replaced by single spaces, surrounding whitespace trimmed.
    pub value: String,
}

/// A message split by the front-end, before any semantic validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage<'a> {
    /// The request line or status line.
    pub start_line: &'a str,
    /// Header fields in order.
    pub headers: Vec<HeaderField>,
    /// Exactly Content-Length octets (or the rest of the datagram without one on UDP).
    pub body: &'a [u8],
}

/// Compact forms (RFC 3261 §7.3.3 and the RFCs that registered the other letters).
const COMPACT_FORMS: &[(char, &str)] = &[
    ('a', "Accept-Contact"),      // RFC 3841
    ('b', "Referred-By"),         // RFC 3892
    ('c', "Content-Type"),        // RFC 3261
    ('d', "Request-Disposition"), // RFC 3841
    ('e', "Content-Encoding"),    // RFC 3261
    ('f', "From"),                // RFC 3261
    ('i', "Call-ID"),             // RFC 3261
    ('j', "Reject-Contact"),      // RFC 3841
    ('k', "Supported"),           // RFC 3261
    ('l', "Content-Length"),      // RFC 3261
    ('m', "Contact"),             // RFC 3261
    ('n', "Identity-Info"),       // RFC 4474
    ('o', "Event"),               // RFC 6665
    ('r', "Refer-To"),            // RFC 3515
    ('s', "Subject"),             // RFC 3261
    ('t', "To"),                  // RFC 3261
    ('u', "Allow-Events"),        // RFC 6665
    ('v', "Via"),                 // RFC 3261
    ('x', "Session-Expires"),     // RFC 4028
    ('y', "Identity"),            // RFC 8224
];

/// Canonical spellings of the headers voxgate reads or writes.
const CANONICAL_NAMES: &[&str] = &[
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Authorization",
    "CSeq",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Language",
    "Date",
    "Expires",
    "Max-Forwards",
    "Min-Expires",
    "Min-SE",
    "P-Asserted-Identity",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "RSeq",
    "Reason",
    "Record-Route",
    "Replaces",
    "Require",
    "Retry-After",
    "Route",
    "Server",
    "Timestamp",
    "Unsupported",
    "User-Agent",
    "WWW-Authenticate",
    "Warning",
];

/// The canonical name for a header name as received: compact forms expanded, known names in
/// their usual spelling, unknown names unchanged.
pub fn canonical_header_name(name: &str) -> &str {
    let mut chars = name.chars();
    if let (Some(letter), None) = (chars.next(), chars.next()) {
        let letter = letter.to_ascii_lowercase();
        if let Some((_, full)) = COMPACT_FORMS.iter().find(|(c, _)| *c == letter) {
            return full;
        }
    }
    COMPACT_FORMS
        .iter()
        .map(|(_, full)| full)
        .chain(CANONICAL_NAMES.iter())
        .find(|known| known.eq_ignore_ascii_case(name))
        .copied()
        .unwrap_or(name)
}

/// Split `bytes` into start line, unfolded headers and body (see the module doc).
pub fn split(
    bytes: &[u8],
    transport: Transport,
    max_bytes: usize,
) -> Result<RawMessage<'_>, FrontEndError> {
    // RFC 3261 §7.5: ignore CRLFs before the start line (keep-alives, sloppy senders).
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .ok_or(FrontEndError::Empty)?;
    let bytes = &bytes[start..];
    if bytes.len() > max_bytes {
        return Err(FrontEndError::TooLarge {
            size: bytes.len(),
            limit: max_bytes,
        });
    }
    let header_end = find(bytes, b"\r\n\r\n").ok_or(if bytes.len() > max_bytes {
        FrontEndError::TooLarge {
            size: bytes.len(),
            limit: max_bytes,
        }
    } else {
        FrontEndError::UnterminatedHeaders
    })?;
    if header_end + 4 > max_bytes {
        return Err(FrontEndError::TooLarge {
            size: header_end + 4,
            limit: max_bytes,
        });
    }
    let head = std::str::from_utf8(&bytes[..header_end]).map_err(|_| FrontEndError::InvalidUtf8)?;
    let rest = &bytes[header_end + 4..];
    let mut lines = head.split("\r\n");
    let start_line = lines.next().unwrap_or_default();
    let headers = unfold(lines)?;

    let body = match content_length(&headers)? {
        Some(declared) => {
            if header_end + 4 + declared > max_bytes {
                return Err(FrontEndError::TooLarge {
                    size: header_end + 4 + declared,
                    limit: max_bytes,
                });
            }
            // RFC 3261 §18.3: octets past Content-Length in a datagram are discarded.
            rest.get(..declared)
                .ok_or(FrontEndError::ContentLengthExceedsBody {
                    declared,
                    available: rest.len(),
                })?
        }
        None if transport == Transport::Udp => rest,
        None => return Err(FrontEndError::MissingContentLength),
    };
    Ok(RawMessage {
        start_line,
        headers,
        body,
    })
}

/// Header lines (after the start line) → fields; continuation lines fold into the previous one.
fn unfold<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Vec<HeaderField>, FrontEndError> {
    let mut headers: Vec<HeaderField> = Vec::new();
    for (index, line) in lines.enumerate() {
        let line_number = index + 2;
        let malformed = FrontEndError::MalformedHeaderLine { line: line_number };
        // RFC 3261 §25.1: no header holds a control character but HTAB, except as a quoted-pair
        // in a quoted string; voxgate echoes headers into its responses and dialogs, so a NUL,
        // a bare CR or a VT here would reach its own messages (found by fuzzing).
        if super::validate::has_bare_control(line) {
            return Err(malformed);
        }
        // RFC 3261 §7.3.1: a line starting with SP/HT continues the previous header; the
        // folding is equivalent to a single SP.
        if line.starts_with([' ', '\t']) {
            let previous = headers.last_mut().ok_or(malformed)?;
            let continuation = line.trim_matches([' ', '\t']);
            if !continuation.is_empty() {
                if !previous.value.is_empty() {
                    previous.value.push(' ');
                }
                previous.value.push_str(continuation);
            }
            continue;
        }
        let (name, value) = line.split_once(':').ok_or(malformed.clone())?;
        // RFC 3261 §7.3.1: whitespace is allowed between the name and the colon.
        let name = name.trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.bytes().all(super::via::is_token_byte) {
            return Err(malformed);
        }
        headers.push(HeaderField {
            name: canonical_header_name(name).to_string(),
            value: value.trim_matches([' ', '\t']).to_string(),
        });
    }
    Ok(headers)
}

/// The single Content-Length value, if any (RFC 3261 §20.14: `1*DIGIT`).
fn content_length(headers: &[HeaderField]) -> Result<Option<usize>, FrontEndError> {
    let mut found: Option<usize> = None;
    for field in headers.iter().filter(|f| f.name == "Content-Length") {
        let value = parse_content_length(&field.value).ok_or_else(|| {
            FrontEndError::InvalidContentLength {
                value: field.value.clone(),
            }
        })?;
        match found {
            Some(previous) if previous != value => {
                return Err(FrontEndError::ConflictingContentLength)
            }
            _ => found = Some(value),
        }
    }
    Ok(found)
}

/// `1*DIGIT` that fits a usize; anything else (sign, letters, overflow) is None.
pub fn parse_content_length(value: &str) -> Option<usize> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// First index of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// What a tolerant scan of a broken message recovered (see [`fallback`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The request method, None for a response or a start line that is not shaped like a
    /// request line (a method token and at least two more words).
    pub method: Option<String>,
    /// Whether the start line looks like a status line.
    pub is_response: bool,
    /// All fields found, unfolded, names canonical.
    pub headers: Vec<HeaderField>,
}

/// Tolerant scan of up to `max_bytes` octets: lossy UTF-8, header section up to the first empty
/// line or the end, malformed lines skipped. Never fails.
pub fn fallback(bytes: &[u8], max_bytes: usize) -> Recovered {
    let bytes = bytes.get(..max_bytes).unwrap_or(bytes);
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(bytes.len());
    let bytes = &bytes[start..];
    let head = &bytes[..find(bytes, b"\r\n\r\n").unwrap_or(bytes.len())];
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|line| line.trim_end_matches('\r'));
    let start_line = lines.next().unwrap_or_default();
    let is_response = start_line.starts_with("SIP/");
    // Only a start line shaped like a request line (`Method SP Request-URI SP SIP-Version`,
    // however malformed the parts) names a method: anything else is not a request, and
    // answering it would let spoofed garbage turn voxgate into a reflector.
    let mut words = start_line.split_whitespace();
    let method = (!is_response)
        .then(|| words.next().unwrap_or_default())
        .filter(|m| !m.is_empty() && m.bytes().all(super::via::is_token_byte))
        .filter(|_| words.count() >= 2)
        .map(str::to_string);
    let mut headers: Vec<HeaderField> = Vec::new();
    let mut last_valid = false;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            if let (true, Some(previous)) = (last_valid, headers.last_mut()) {
                previous.value.push(' ');
                previous.value.push_str(line.trim());
            }
            continue;
        }
        last_valid = false;
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(super::via::is_token_byte) {
            continue;
        }
        last_valid = true;
        headers.push(HeaderField {
            name: canonical_header_name(name).to_string(),
            value: value.trim().to_string(),
        });
    }
    Recovered {
        method,
        is_response,
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<'a>(raw: &'a RawMessage<'_>) -> Vec<(&'a str, &'a str)> {
        raw.headers
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_str()))
            .collect()
    }

    #[test]
    fn unfolds_continuations_and_drops_space_before_colon() {
        let bytes = b"OPTIONS sip:a@b SIP/2.0\r\nTO :\r\n sip:x@y ;\r\n\ttag = 1\r\nVia  : SIP/2.0/UDP h\r\n\r\n";
        let raw = split(bytes, Transport::Udp, 65_535).unwrap();
        assert_eq!(raw.start_line, "OPTIONS sip:a@b SIP/2.0");
        assert_eq!(
            names(&raw),
            vec![("To", "sip:x@y ; tag = 1"), ("Via", "SIP/2.0/UDP h")]
        );
        assert!(raw.body.is_empty());
    }

    #[test]
    fn control_characters_are_refused_in_any_header_but_htab_and_quoted_pairs() {
        for line in [
            "Subject: a\u{0}b",
            "User-Agent: x\u{b}y",
            "X-Custom:\u{c}v",
            "Subject: a\rb",
            "Subject: \"a\u{7}\"",
        ] {
            let bytes = format!("OPTIONS sip:a@b SIP/2.0\r\n{line}\r\n\r\n");
            assert!(
                split(bytes.as_bytes(), Transport::Udp, 65_535).is_err(),
                "{line:?}"
            );
        }
        for line in ["Subject: a\tb", "To: \"BEL:\\\u{7}\" <sip:b@c>"] {
            let bytes = format!("OPTIONS sip:a@b SIP/2.0\r\n{line}\r\n\r\n");
            assert!(
                split(bytes.as_bytes(), Transport::Udp, 65_535).is_ok(),
                "{line:?}"
            );
        }
    }

    #[test]
    fn expands_compact_names() {
        for (compact, full) in [
            ("i", "Call-ID"),
            ("m", "Contact"),
            ("e", "Content-Encoding"),
            ("l", "Content-Length"),
            ("c", "Content-Type"),
            ("f", "From"),
            ("s", "Subject"),
            ("k", "Supported"),
            ("t", "To"),
            ("v", "Via"),
            ("o", "Event"),
            ("r", "Refer-To"),
            ("b", "Referred-By"),
            ("u", "Allow-Events"),
            ("x", "Session-Expires"),
            ("a", "Accept-Contact"),
            ("I", "Call-ID"),
            ("cseq", "CSeq"),
            ("MaX-fOrWaRdS", "Max-Forwards"),
            ("X-Custom", "X-Custom"),
        ] {
            assert_eq!(canonical_header_name(compact), full);
        }
    }

    #[test]
    fn takes_exactly_content_length_octets() {
        let bytes = b"MESSAGE sip:a@b SIP/2.0\r\nl: 5\r\n\r\nhello, trailing junk";
        let raw = split(bytes, Transport::Udp, 65_535).unwrap();
        assert_eq!(raw.body, b"hello");
        let raw = split(bytes, Transport::Tcp, 65_535).unwrap();
        assert_eq!(raw.body, b"hello");
    }

    #[test]
    fn udp_without_content_length_takes_rest_of_datagram_tcp_refuses() {
        let bytes = b"MESSAGE sip:a@b SIP/2.0\r\nTo: x\r\n\r\nbody\r\n";
        assert_eq!(
            split(bytes, Transport::Udp, 65_535).unwrap().body,
            b"body\r\n"
        );
        assert_eq!(
            split(bytes, Transport::Tcp, 65_535),
            Err(FrontEndError::MissingContentLength)
        );
    }

    #[test]
    fn rejects_bad_content_lengths() {
        let cases: [(&[u8], FrontEndError); 5] = [
            (
                b"A sip:a SIP/2.0\r\nContent-Length: -999\r\n\r\n",
                FrontEndError::InvalidContentLength {
                    value: "-999".into(),
                },
            ),
            (
                b"A sip:a SIP/2.0\r\nl: 1x\r\n\r\n",
                FrontEndError::InvalidContentLength { value: "1x".into() },
            ),
            (
                b"A sip:a SIP/2.0\r\nl: 99999999999999999999999\r\n\r\n",
                FrontEndError::InvalidContentLength {
                    value: "99999999999999999999999".into(),
                },
            ),
            (
                b"A sip:a SIP/2.0\r\nl: 13\r\nContent-Length: 5\r\n\r\nabcde",
                FrontEndError::ConflictingContentLength,
            ),
            (
                b"A sip:a SIP/2.0\r\nl: 9999\r\n\r\nabcde",
                FrontEndError::ContentLengthExceedsBody {
                    declared: 9999,
                    available: 5,
                },
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(split(bytes, Transport::Udp, 65_535), Err(expected));
        }
        let same_twice = b"A sip:a SIP/2.0\r\nl: 2\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(
            split(same_twice, Transport::Udp, 65_535).unwrap().body,
            b"ab"
        );
    }

    #[test]
    fn enforces_size_limit_and_terminated_headers() {
        let bytes = b"A sip:a SIP/2.0\r\nl: 0\r\n\r\n";
        assert!(matches!(
            split(bytes, Transport::Udp, 10),
            Err(FrontEndError::TooLarge { limit: 10, .. })
        ));
        let declared = b"A sip:a SIP/2.0\r\nl: 100000\r\n\r\n";
        assert!(matches!(
            split(declared, Transport::Tcp, 1000),
            Err(FrontEndError::TooLarge { .. })
        ));
        assert_eq!(
            split(b"A sip:a SIP/2.0\r\nl: 0\r\n", Transport::Udp, 100),
            Err(FrontEndError::UnterminatedHeaders)
        );
        assert_eq!(
            split(b"\r\n\r\n", Transport::Udp, 100),
            Err(FrontEndError::Empty)
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        assert_eq!(
            split(
                b"A sip:a SIP/2.0\r\n continued\r\n\r\n",
                Transport::Udp,
                100
            ),
            Err(FrontEndError::MalformedHeaderLine { line: 2 })
        );
        assert_eq!(
            split(b"A sip:a SIP/2.0\r\nno colon\r\n\r\n", Transport::Udp, 100),
            Err(FrontEndError::MalformedHeaderLine { line: 2 })
        );
        assert_eq!(
            split(b"A sip:a SIP/2.0\r\nX: \xff\r\n\r\n", Transport::Udp, 100),
            Err(FrontEndError::InvalidUtf8)
        );
    }

    #[test]
    fn fallback_recovers_headers_from_broken_messages() {
        let recovered = fallback(
            b"FOO sip:a SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\ngarbage\r\ni: abc\r\nCSeq: 1\r\n FOO\r\nl: -1\r\n",
            65_535,
        );
        assert_eq!(recovered.method.as_deref(), Some("FOO"));
        assert!(!recovered.is_response);
        let fields: Vec<_> = recovered
            .headers
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_str()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"),
                ("Call-ID", "abc"),
                ("CSeq", "1 FOO"),
                ("Content-Length", "-1"),
            ]
        );
        assert!(fallback(b"SIP/2.0 200 OK\r\n\r\n", 100).is_response);
    }
}
