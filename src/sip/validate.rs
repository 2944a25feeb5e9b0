//! Syntax checks a UAS needs before trusting a message (RFC 3261 §7.1, §7.2, §8.1.1, §8.2.2,
//! §20, §25.1; the invalid cases of RFC 4475 §3.1.2).
//!
//! Pure functions over the front-end's output (see [`super::front_end`]): the start line, a few
//! scalar headers and the `name-addr` grammar of From/To/Contact. Each returns the parsed value
//! or the [`ParseError`] that becomes the 400/505 reason phrase; [`super::message`] calls them in
//! the order request line → mandatory headers → scalars → Via → name-addrs → method.

use super::front_end::HeaderField;
use super::message::ParseError;
use super::via::{is_token_byte, parse_host_port, split_top_level};

/// `Method SP Request-URI SP SIP-Version` with exactly single spaces (RFC 3261 §7.1).
pub(super) fn parse_request_line(line: &str) -> Result<(&str, &str), ParseError> {
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, uri, version] = parts[..] else {
        return Err(ParseError::MalformedStartLine {
            detail: "Request-Line must be METHOD SP Request-URI SP SIP/2.0",
        });
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(ParseError::MalformedStartLine {
            detail: "invalid method token",
        });
    }
    check_version(version)?;
    validate_request_uri(uri)?;
    Ok((method, uri))
}

/// `SIP-Version SP Status-Code SP Reason-Phrase` (RFC 3261 §7.2); the phrase may be empty.
pub(super) fn parse_status_line(line: &str) -> Result<(u16, String), ParseError> {
    let (version, rest) = line.split_once(' ').ok_or(ParseError::MalformedStartLine {
        detail: "Status-Line must be SIP/2.0 SP code SP reason",
    })?;
    check_version(version)?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let status = (code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
        .then(|| code.parse::<u16>().ok())
        .flatten()
        .filter(|status| (100..=699).contains(status))
        .ok_or_else(|| ParseError::InvalidStatusCode { code: code.into() })?;
    Ok((status, reason.to_string()))
}

pub(super) fn check_version(version: &str) -> Result<(), ParseError> {
    if version.eq_ignore_ascii_case("SIP/2.0") {
        return Ok(());
    }
    let is_version = version
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
        && version[4..]
            .split_once('.')
            .is_some_and(|(major, minor)| is_digits(major) && is_digits(minor));
    if is_version {
        Err(ParseError::UnsupportedVersion {
            version: version.into(),
        })
    } else {
        Err(ParseError::MalformedStartLine {
            detail: "invalid SIP-Version",
        })
    }
}

pub(super) fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// Absolute URI with a scheme; for sip/sips a valid hostport and no headers (RFC 4475 §3.1.2.7,
/// §3.1.2.11). Unknown schemes pass: the UAS answers them 416 (§8.2.2.1).
pub(super) fn validate_request_uri(uri: &str) -> Result<(), ParseError> {
    let invalid = |detail| ParseError::InvalidRequestUri {
        uri: uri.into(),
        detail,
    };
    if uri.starts_with('<') || uri.ends_with('>') {
        return Err(invalid("enclosed in angle brackets"));
    }
    let (scheme, rest) = uri.split_once(':').ok_or(invalid("no scheme"))?;
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok || rest.is_empty() {
        return Err(invalid("invalid scheme"));
    }
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        // `@` cannot appear unescaped in uri-parameters or headers, so the last one ends userinfo.
        let host_part = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        if host_part.contains('?') {
            return Err(invalid("headers are not allowed in a Request-URI"));
        }
        let hostport = host_part.split(';').next().unwrap_or_default();
        if parse_host_port(hostport).is_none() {
            return Err(invalid("invalid host"));
        }
    }
    Ok(())
}

/// Max-Forwards (RFC 3261 §20.22): optional for us, at most 255, one value.
pub(super) fn parse_max_forwards(headers: &[HeaderField]) -> Result<Option<u32>, ParseError> {
    let Some(value) = single_value(headers, "Max-Forwards")? else {
        return Ok(None);
    };
    let invalid = |detail: &str| ParseError::InvalidHeader {
        name: "Max-Forwards",
        detail: format!("{detail}: {value:?}"),
    };
    if !is_digits(value) {
        return Err(invalid("not a number"));
    }
    match value.parse::<u32>() {
        Ok(hops) if hops <= 255 => Ok(Some(hops)),
        _ => Err(invalid("above 255")),
    }
}

/// The value of a single-value header; Err when it appears with different values.
pub(super) fn single_value<'a>(
    headers: &'a [HeaderField],
    name: &'static str,
) -> Result<Option<&'a str>, ParseError> {
    let mut values = headers
        .iter()
        .filter(|f| f.name == name)
        .map(|f| f.value.as_str());
    let first = values.next();
    if values.any(|other| Some(other) != first) {
        return Err(ParseError::DuplicateHeader { name });
    }
    Ok(first)
}

/// `1*DIGIT LWS Method`, number below 2^31 (RFC 3261 §8.1.1.5).
pub(super) fn parse_cseq(value: &str) -> Result<(u32, &str), ParseError> {
    let invalid = |detail: &str| ParseError::InvalidHeader {
        name: "CSeq",
        detail: format!("{detail}: {value:?}"),
    };
    let mut parts = value.split_whitespace();
    let (Some(number), Some(method), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid("expected number and method"));
    };
    if !is_digits(number) || !method.bytes().all(is_token_byte) {
        return Err(invalid("malformed"));
    }
    match number.parse::<u32>() {
        Ok(seq) if seq < 1 << 31 => Ok((seq, method)),
        _ => Err(invalid("sequence number of 2^31 or more")),
    }
}

/// Check `name-addr / addr-spec` followed by `*(SEMI generic-param)` (RFC 3261 §20.10, §25.1)
/// and return the `tag` parameter.
pub(super) fn check_name_addr(
    name: &'static str,
    value: &str,
) -> Result<Option<String>, ParseError> {
    let invalid = |detail: &str| ParseError::InvalidHeader {
        name,
        detail: format!("{detail}: {value:?}"),
    };
    // (Control characters were refused for every header by the front end.)
    let value = value.trim();
    let params = if let Some(open) = find_unquoted(value, b'<') {
        let display = value[..open].trim();
        if let Some(quoted) = display.strip_prefix('"') {
            let end = quoted_end(quoted).ok_or_else(|| invalid("unterminated quoted string"))?;
            if !quoted[end + 1..].trim().is_empty() {
                return Err(invalid("text after quoted display name"));
            }
        } else if !display
            .bytes()
            .all(|b| is_token_byte(b) || b == b' ' || b == b'\t')
        {
            return Err(invalid("display name must be tokens or a quoted string"));
        }
        let after = &value[open + 1..];
        let close = after.find('>').ok_or_else(|| invalid("missing '>'"))?;
        let addr_spec = &after[..close];
        // RFC 3261 §25.1: LAQUOT/RAQUOT take whitespace outside the brackets only.
        if !has_scheme(addr_spec) || addr_spec.contains([' ', '\t']) {
            return Err(invalid("malformed URI in angle brackets"));
        }
        let params = &after[close + 1..];
        if !params.trim_start().is_empty() && !params.trim_start().starts_with(';') {
            return Err(invalid("text after '>'"));
        }
        params
    } else {
        if value.starts_with('"') {
            return Err(invalid("quoted display name without <URI>"));
        }
        // RFC 3261 §20.10: without <>, `;` starts header parameters and `?`/`,` are forbidden.
        let end = value.find(';').unwrap_or(value.len());
        let addr_spec = value[..end].trim();
        if !has_scheme(addr_spec) || addr_spec.contains([' ', '\t', '?', ',']) {
            return Err(invalid("malformed URI"));
        }
        &value[end..]
    };
    let mut tag = None;
    let mut pieces = split_top_level(params, b';').into_iter();
    pieces.next();
    for param in pieces {
        let (param_name, param_value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (param.trim(), None),
        };
        if param_name.is_empty() || !param_name.bytes().all(is_token_byte) {
            return Err(invalid("malformed parameter"));
        }
        if let Some(param_value) = param_value {
            let well_formed = match param_value.strip_prefix('"') {
                Some(quoted) => quoted_end(quoted).is_some_and(|end| end + 1 == quoted.len()),
                None => !param_value.is_empty() && !param_value.contains([' ', '\t', '"']),
            };
            if !well_formed {
                return Err(invalid("malformed parameter value"));
            }
            if param_name.eq_ignore_ascii_case("tag") {
                tag = Some(param_value.to_string());
            }
        }
    }
    Ok(tag)
}

/// A control character other than HTAB that is not a quoted-pair (`\` + any octet but CR and
/// LF) inside a quoted string.
pub(super) fn has_bare_control(value: &str) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            if c == '\r' || c == '\n' {
                return true;
            }
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '\t' => {}
            c if c.is_control() => return true,
            _ => {}
        }
    }
    false
}

/// An absolute URI's start: `scheme ":"` with a scheme of ALPHA *(ALPHA / DIGIT / "+" / "-" /
/// ".") (RFC 3261 §25.1), and something after it.
fn has_scheme(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
}

/// Byte index of the closing quote of a quoted string whose opening quote was already consumed.
pub(super) fn quoted_end(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, b) in text.bytes().enumerate() {
        match (escaped, b) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Index of `needle` outside quoted strings.
pub(super) fn find_unquoted(text: &str, needle: u8) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, b) in text.bytes().enumerate() {
        if in_quotes {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_quotes = false,
                _ => {}
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == needle {
            return Some(i);
        }
    }
    None
}
