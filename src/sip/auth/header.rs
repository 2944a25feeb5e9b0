//! Challenge and credentials header values, parsed and printed by us (RFC 3261 §25.1
//! `challenge` / `credentials`, RFC 7616 §3.3–§3.4; rsip's digest types are not used).
//!
//! ```text
//! value     = item *( "," item )         several challenges may share one header value
//! item      = scheme LWS param *( "," param )
//! param     = token SWS "=" SWS ( quoted-string / bare-value )
//! ```
//! A token after a comma that is not followed by `=` starts the next item. Names and the
//! `algorithm`, `qop` and `stale` values are case-insensitive; quoted strings take `\` escapes.
//! Unquoted values are accepted wherever RFC 3261 wants quotes (peers differ), and unknown
//! parameters are ignored. Any input gives a value or a [`ParseError`], never a panic.

use std::fmt;

use super::{Algorithm, NonceCount, ParseError, Qop};

/// A `Digest` challenge from a `WWW-Authenticate` or `Proxy-Authenticate` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The protection space; credentials are kept per realm.
    pub realm: String,
    /// The server nonce.
    pub nonce: String,
    /// Returned unchanged in the credentials.
    pub opaque: Option<String>,
    /// The algorithm (`MD5` when absent).
    pub algorithm: Algorithm,
    /// The offered qops we support, in offered order; empty when the directive is absent (the
    /// RFC 2069 form).
    pub qop: Vec<Qop>,
    /// `stale=true`: the previous nonce was refused as stale, the credentials were right.
    pub stale: bool,
    /// The `domain` URI list, as received.
    pub domain: Option<String>,
}

impl Challenge {
    /// Parses one header value and returns its strongest supported Digest challenge (see
    /// [`select_challenge`]).
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        select_challenge([value])
    }

    fn from_item(item: &Item<'_>) -> Result<Self, ParseError> {
        item.check_digest()?;
        let realm = item.required("realm")?;
        let nonce = item.required("nonce")?;
        let algorithm = item.algorithm()?;
        let qop = match item.param("qop")? {
            None => Vec::new(),
            Some(list) => {
                let offered: Vec<Qop> = list
                    .split(',')
                    .filter_map(|token| Qop::from_token(token.trim()))
                    .collect();
                if offered.is_empty() {
                    return Err(ParseError::UnsupportedQop(list.to_string()));
                }
                offered
            }
        };
        Ok(Challenge {
            realm: realm.to_string(),
            nonce: nonce.to_string(),
            opaque: item.param("opaque")?.map(str::to_string),
            algorithm,
            qop,
            stale: item
                .param("stale")?
                .is_some_and(|stale| stale.eq_ignore_ascii_case("true")),
            domain: item.param("domain")?.map(str::to_string),
        })
    }
}

impl fmt::Display for Challenge {
    /// The header value: `Digest realm="…", nonce="…", opaque="…", algorithm=…, qop="…"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest realm={}", Quoted(&self.realm))?;
        if let Some(domain) = &self.domain {
            write!(f, ", domain={}", Quoted(domain))?;
        }
        write!(f, ", nonce={}", Quoted(&self.nonce))?;
        if let Some(opaque) = &self.opaque {
            write!(f, ", opaque={}", Quoted(opaque))?;
        }
        write!(f, ", algorithm={}", self.algorithm)?;
        if !self.qop.is_empty() {
            let list: Vec<&str> = self.qop.iter().map(|qop| qop.as_str()).collect();
            write!(f, ", qop=\"{}\"", list.join(","))?;
        }
        if self.stale {
            f.write_str(", stale=true")?;
        }
        Ok(())
    }
}

/// `Digest` credentials from an `Authorization` or `Proxy-Authorization` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication user name.
    pub username: String,
    /// The realm the credentials are for.
    pub realm: String,
    /// The server nonce being answered.
    pub nonce: String,
    /// The `uri` (digest-uri): the Request-URI as the client sent it.
    pub uri: String,
    /// The request digest (hex).
    pub response: String,
    /// The algorithm (`MD5` when absent).
    pub algorithm: Algorithm,
    /// The client nonce (present with a qop).
    pub cnonce: Option<String>,
    /// The challenge's opaque, echoed.
    pub opaque: Option<String>,
    /// The chosen qop, or `None` for the RFC 2069 form.
    pub qop: Option<Qop>,
    /// The nonce count (present with a qop).
    pub nc: Option<NonceCount>,
}

impl Credentials {
    /// Parses one header value; with several items in it, the first `Digest` one counts.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let items = parse_items(value)?;
        let mut first_error = None;
        for item in &items {
            match Credentials::from_item(item) {
                Ok(credentials) => return Ok(credentials),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.unwrap_or(ParseError::Empty))
    }

    fn from_item(item: &Item<'_>) -> Result<Self, ParseError> {
        item.check_digest()?;
        let qop = match item.param("qop")? {
            None => None,
            Some(token) => Some(
                Qop::from_token(token.trim())
                    .ok_or_else(|| ParseError::UnsupportedQop(token.to_string()))?,
            ),
        };
        let nc = match item.param("nc")? {
            None => None,
            Some(text) => Some(
                NonceCount::parse(text).ok_or_else(|| ParseError::BadNonceCount(text.into()))?,
            ),
        };
        let cnonce = item.param("cnonce")?.map(str::to_string);
        if qop.is_some() {
            // RFC 7616 §3.4: with a qop, cnonce and nc MUST be sent.
            if cnonce.is_none() {
                return Err(ParseError::MissingParam("cnonce"));
            }
            if nc.is_none() {
                return Err(ParseError::MissingParam("nc"));
            }
        }
        Ok(Credentials {
            username: item.required("username")?.to_string(),
            realm: item.required("realm")?.to_string(),
            nonce: item.required("nonce")?.to_string(),
            uri: item.required("uri")?.to_string(),
            response: item.required("response")?.to_string(),
            algorithm: item.algorithm()?,
            cnonce,
            opaque: item.param("opaque")?.map(str::to_string),
            qop,
            nc,
        })
    }
}

impl fmt::Display for Credentials {
    /// The header value: `Digest username="…", realm="…", nonce="…", uri="…", response="…", …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Digest username={}, realm={}, nonce={}, uri={}, response={}, algorithm={}",
            Quoted(&self.username),
            Quoted(&self.realm),
            Quoted(&self.nonce),
            Quoted(&self.uri),
            Quoted(&self.response),
            self.algorithm,
        )?;
        if let Some(cnonce) = &self.cnonce {
            write!(f, ", cnonce={}", Quoted(cnonce))?;
        }
        if let Some(opaque) = &self.opaque {
            write!(f, ", opaque={}", Quoted(opaque))?;
        }
        // RFC 3261 §25.1 and RFC 2617 §3.2.2: message-qop and nc are unquoted tokens.
        if let Some(qop) = self.qop {
            write!(f, ", qop={qop}")?;
        }
        if let Some(nc) = self.nc {
            write!(f, ", nc={nc}")?;
        }
        Ok(())
    }
}

/// Every challenge in one header value, in order: `Err(NotDigest)` for other schemes, the
/// reason for Digest challenges we cannot answer, and a single `Err` if the value does not
/// parse at all.
pub fn parse_challenges(value: &str) -> Vec<Result<Challenge, ParseError>> {
    match parse_items(value) {
        Ok(items) => items.iter().map(Challenge::from_item).collect(),
        Err(error) => vec![Err(error)],
    }
}

/// The challenge to answer among all `WWW-Authenticate` (or all `Proxy-Authenticate`) values of
/// a response: the strongest supported algorithm (SHA-256 over MD5), the first one on a tie.
/// Without any usable one, the first reason found (e.g. `UnsupportedAlgorithm("SHA-512-256")`).
pub fn select_challenge<I, S>(values: I) -> Result<Challenge, ParseError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let (challenges, first_error) = collect_challenges(values);
    let mut best: Option<Challenge> = None;
    for challenge in challenges {
        if best
            .as_ref()
            .is_none_or(|best| challenge.algorithm.strength() > best.algorithm.strength())
        {
            best = Some(challenge);
        }
    }
    best.ok_or(first_error.unwrap_or(ParseError::Empty))
}

/// All usable challenges of several header values, and the first error met.
pub(super) fn collect_challenges<I, S>(values: I) -> (Vec<Challenge>, Option<ParseError>)
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut challenges = Vec::new();
    let mut first_error = None;
    for value in values {
        for result in parse_challenges(value.as_ref()) {
            match result {
                Ok(challenge) => challenges.push(challenge),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
    }
    (challenges, first_error)
}

/// A value printed as a quoted-string: `"` and `\` escaped; CR, LF and other controls (which
/// no quoted-string may carry) left out so no value can break the header.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            match c {
                '"' | '\\' => write!(f, "\\{c}")?,
                '\t' => f.write_str("\t")?,
                c if c.is_control() => {}
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

/// One `scheme param, …` item before interpretation; values are unescaped.
#[derive(Debug)]
struct Item<'a> {
    scheme: &'a str,
    params: Vec<(&'a str, String)>,
}

impl Item<'_> {
    fn check_digest(&self) -> Result<(), ParseError> {
        if !self.scheme.eq_ignore_ascii_case("Digest") {
            return Err(ParseError::NotDigest {
                scheme: self.scheme.to_string(),
            });
        }
        Ok(())
    }

    /// The value of a parameter (case-insensitive name); a repeated one is an error.
    fn param(&self, name: &str) -> Result<Option<&str>, ParseError> {
        let mut found = self
            .params
            .iter()
            .filter(|(param, _)| param.eq_ignore_ascii_case(name));
        let first = found.next();
        if let Some((param, _)) = found.next() {
            return Err(ParseError::DuplicateParam {
                name: param.to_string(),
            });
        }
        Ok(first.map(|(_, value)| value.as_str()))
    }

    fn required(&self, name: &'static str) -> Result<&str, ParseError> {
        self.param(name)?.ok_or(ParseError::MissingParam(name))
    }

    fn algorithm(&self) -> Result<Algorithm, ParseError> {
        match self.param("algorithm")? {
            None => Ok(Algorithm::Md5),
            Some(token) => Algorithm::from_token(token.trim())
                .ok_or_else(|| ParseError::UnsupportedAlgorithm(token.to_string())),
        }
    }
}

/// Splits a header value into items (see the module grammar).
fn parse_items(value: &str) -> Result<Vec<Item<'_>>, ParseError> {
    let mut scanner = Scanner {
        text: value,
        pos: 0,
    };
    let mut items: Vec<Item<'_>> = Vec::new();
    loop {
        scanner.skip_separators();
        if scanner.at_end() {
            break;
        }
        let start = scanner.pos;
        let token = scanner.token();
        if token.is_empty() {
            return Err(scanner.error());
        }
        scanner.skip_whitespace();
        if scanner.peek() == Some(b'=') {
            // A parameter of the current item.
            let value = scanner.value()?;
            let item = items.last_mut().ok_or(ParseError::Syntax { at: start })?;
            item.params.push((token, value));
        } else {
            // A new scheme; its first parameter follows without a comma.
            let mut item = Item {
                scheme: token,
                params: Vec::new(),
            };
            if !scanner.at_end() && scanner.peek() != Some(b',') {
                let name = scanner.token();
                scanner.skip_whitespace();
                if name.is_empty() || scanner.peek() != Some(b'=') {
                    return Err(scanner.error());
                }
                item.params.push((name, scanner.value()?));
            }
            items.push(item);
        }
        scanner.skip_whitespace();
        if !scanner.at_end() && scanner.peek() != Some(b',') {
            return Err(scanner.error());
        }
    }
    if items.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(items)
}

/// A cursor over the value. Every delimiter is ASCII, so slicing at delimiter positions always
/// lands on a char boundary (non-ASCII bytes are never delimiters).
struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn error(&self) -> ParseError {
        ParseError::Syntax { at: self.pos }
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    /// Whitespace and empty list elements (`a, , b` is allowed by the list rule).
    fn skip_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n' | b',')) {
            self.pos += 1;
        }
    }

    /// An RFC 3261 token (possibly empty).
    fn token(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(is_token_byte) {
            self.pos += 1;
        }
        self.text.get(start..self.pos).unwrap_or("")
    }

    /// At `=`: the value after it, quoted or bare.
    fn value(&mut self) -> Result<String, ParseError> {
        self.pos += 1; // the '='
        self.skip_whitespace();
        if self.peek() == Some(b'"') {
            return self.quoted();
        }
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| !matches!(b, b',' | b' ' | b'\t' | b'\r' | b'\n' | b'"'))
        {
            self.pos += 1;
        }
        Ok(self.text.get(start..self.pos).unwrap_or("").to_string())
    }

    /// At `"`: the unescaped content of a quoted-string (RFC 3261 §25.1 quoted-pair).
    fn quoted(&mut self) -> Result<String, ParseError> {
        self.pos += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.error()),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b'\r' | b'\n') | None => return Err(self.error()),
                        Some(byte) => out.push(byte),
                    }
                    self.pos += 1;
                }
                Some(b'\r' | b'\n') => return Err(self.error()),
                Some(byte) => {
                    out.push(byte);
                    self.pos += 1;
                }
            }
        }
        // Only ASCII bytes were dropped (backslashes), so the rest is still UTF-8.
        String::from_utf8(out).map_err(|_| self.error())
    }
}

/// RFC 3261 §25.1 `token` characters.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_a_full_challenge() {
        let challenge = Challenge::parse(
            "Digest realm=\"asterisk\", nonce=\"1700000000/abc\", opaque=\"5ccc069c\", \
             algorithm=SHA-256, qop=\"auth,auth-int\", stale=TRUE, \
             domain=\"sip:pbx.example.com sip:example.com\"",
        )
        .unwrap();
        assert_eq!(
            challenge,
            Challenge {
                realm: "asterisk".into(),
                nonce: "1700000000/abc".into(),
                opaque: Some("5ccc069c".into()),
                algorithm: Algorithm::Sha256,
                qop: vec![Qop::Auth, Qop::AuthInt],
                stale: true,
                domain: Some("sip:pbx.example.com sip:example.com".into()),
            }
        );
    }

    #[test]
    fn names_and_algorithm_are_case_insensitive_and_values_may_be_bare() {
        let challenge = Challenge::parse(
            "digest REALM = sip.example.com ,NONCE=abc/def==, Algorithm=md5-SESS, QOP=Auth, \
             stale=false",
        )
        .unwrap();
        assert_eq!(challenge.realm, "sip.example.com");
        assert_eq!(challenge.nonce, "abc/def==");
        assert_eq!(challenge.algorithm, Algorithm::Md5Sess);
        assert_eq!(challenge.qop, vec![Qop::Auth]);
        assert!(!challenge.stale);
        assert_eq!(challenge.opaque, None);
    }

    #[test]
    fn quoted_strings_keep_commas_and_unescape_quotes() {
        let challenge =
            Challenge::parse(r#"Digest realm="a, b=\"c\" \\ d", nonce="n,1", opaque="""#).unwrap();
        assert_eq!(challenge.realm, r#"a, b="c" \ d"#);
        assert_eq!(challenge.nonce, "n,1");
        assert_eq!(challenge.opaque.as_deref(), Some(""));
        // Printed back with the escapes, and parsed back to the same value.
        assert_eq!(Challenge::parse(&challenge.to_string()).unwrap(), challenge);
    }

    #[test]
    fn absent_algorithm_and_qop_mean_md5_rfc2069() {
        let challenge = Challenge::parse(r#"Digest realm="r", nonce="n""#).unwrap();
        assert_eq!(challenge.algorithm, Algorithm::Md5);
        assert!(challenge.qop.is_empty());
        assert!(!challenge.stale);
    }

    #[test]
    fn missing_or_repeated_fields_are_errors() {
        assert_eq!(
            Challenge::parse(r#"Digest nonce="n""#),
            Err(ParseError::MissingParam("realm"))
        );
        assert_eq!(
            Challenge::parse(r#"Digest realm="r""#),
            Err(ParseError::MissingParam("nonce"))
        );
        assert_eq!(
            Challenge::parse("Digest"),
            Err(ParseError::MissingParam("realm"))
        );
        assert_eq!(
            Challenge::parse(r#"Digest realm="r", nonce="a", NONCE="b""#),
            Err(ParseError::DuplicateParam {
                name: "NONCE".into()
            })
        );
    }

    #[test]
    fn unknown_algorithm_or_qop_is_not_supported() {
        assert_eq!(
            Challenge::parse(r#"Digest realm="r", nonce="n", algorithm=SHA-512-256"#),
            Err(ParseError::UnsupportedAlgorithm("SHA-512-256".into()))
        );
        assert_eq!(
            Challenge::parse(r#"Digest realm="r", nonce="n", algorithm=AKAv1-MD5"#),
            Err(ParseError::UnsupportedAlgorithm("AKAv1-MD5".into()))
        );
        assert_eq!(
            Challenge::parse(r#"Digest realm="r", nonce="n", qop="auth-conf""#),
            Err(ParseError::UnsupportedQop("auth-conf".into()))
        );
        // An unknown qop next to a known one is just skipped.
        let challenge =
            Challenge::parse(r#"Digest realm="r", nonce="n", qop="auth-conf, auth-int""#).unwrap();
        assert_eq!(challenge.qop, vec![Qop::AuthInt]);
    }

    #[test]
    fn other_schemes_and_garbage_are_errors() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="r""#),
            Err(ParseError::NotDigest {
                scheme: "Basic".into()
            })
        );
        assert_eq!(Challenge::parse(""), Err(ParseError::Empty));
        assert_eq!(Challenge::parse(" , ,"), Err(ParseError::Empty));
        assert!(matches!(
            Challenge::parse(r#"Digest realm="unterminated"#),
            Err(ParseError::Syntax { .. })
        ));
        assert!(matches!(
            Challenge::parse(r#"Digest realm="r" nonce="n""#),
            Err(ParseError::Syntax { .. })
        ));
        assert!(matches!(
            Challenge::parse(r#"realm="r", Digest nonce="n""#),
            Err(ParseError::Syntax { .. })
        ));
        assert!(matches!(
            Challenge::parse("Digest realm=\"r\nx\", nonce=\"n\""),
            Err(ParseError::Syntax { .. })
        ));
    }

    #[test]
    fn several_challenges_pick_the_strongest() {
        // A server may offer SHA-256 and MD5 (RFC 8760); here MD5 comes first.
        let both = r#"Digest realm="r", nonce="n1", algorithm=MD5, qop="auth", Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth""#;
        let parsed = parse_challenges(both);
        assert_eq!(parsed.len(), 2);
        let chosen = Challenge::parse(both).unwrap();
        assert_eq!(
            (chosen.algorithm, chosen.nonce.as_str()),
            (Algorithm::Sha256, "n2")
        );

        // Across header values too, skipping what we cannot answer.
        let chosen = select_challenge([
            r#"Digest realm="r", nonce="a", algorithm=SHA-512-256"#,
            r#"Basic realm="r""#,
            r#"Digest realm="r", nonce="b", algorithm=MD5"#,
            r#"Digest realm="r", nonce="c", algorithm=MD5-sess"#,
        ])
        .unwrap();
        assert_eq!(chosen.nonce, "b");
        assert_eq!(
            select_challenge([r#"Digest realm="r", nonce="a", algorithm=SHA-512-256"#]),
            Err(ParseError::UnsupportedAlgorithm("SHA-512-256".into()))
        );
        assert_eq!(select_challenge([""; 0]), Err(ParseError::Empty));
    }

    #[test]
    fn parses_and_prints_credentials() {
        let value = r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let credentials = Credentials::parse(value).unwrap();
        assert_eq!(credentials.username, "Mufasa");
        assert_eq!(credentials.uri, "/dir/index.html");
        assert_eq!(credentials.qop, Some(Qop::Auth));
        assert_eq!(credentials.nc, Some(NonceCount(1)));
        assert_eq!(credentials.cnonce.as_deref(), Some("0a4f113b"));
        assert_eq!(credentials.algorithm, Algorithm::Md5);
        assert_eq!(
            credentials.to_string(),
            r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, cnonce="0a4f113b", opaque="5ccc069c403ebaf9f0171e9517f40e41", qop=auth, nc=00000001"#
        );
        assert_eq!(
            Credentials::parse(&credentials.to_string()),
            Ok(credentials)
        );
    }

    #[test]
    fn credentials_need_their_fields() {
        let base = r#"Digest username="u", realm="r", nonce="n", uri="sip:a@b", response="x""#;
        assert!(Credentials::parse(base).is_ok());
        assert_eq!(
            Credentials::parse(&format!("{base}, qop=auth, nc=00000001")),
            Err(ParseError::MissingParam("cnonce"))
        );
        assert_eq!(
            Credentials::parse(&format!(r#"{base}, qop=auth, cnonce="c""#)),
            Err(ParseError::MissingParam("nc"))
        );
        assert_eq!(
            Credentials::parse(&format!(r#"{base}, qop=auth, cnonce="c", nc=1"#)),
            Err(ParseError::BadNonceCount("1".into()))
        );
        assert_eq!(
            Credentials::parse(r#"Digest username="u", realm="r", nonce="n", uri="sip:a@b""#),
            Err(ParseError::MissingParam("response"))
        );
    }

    #[test]
    fn nonce_count_formatting_and_parsing() {
        for (value, text) in [
            (1, "00000001"),
            (10, "0000000a"),
            (256, "00000100"),
            (u32::MAX, "ffffffff"),
        ] {
            assert_eq!(NonceCount(value).to_string(), text);
            assert_eq!(NonceCount::parse(text), Some(NonceCount(value)));
        }
        assert_eq!(NonceCount::parse("0000000A"), Some(NonceCount(10)));
        for bad in ["", "1", "000000001", "0000000g", "+0000001", "-0000001"] {
            assert_eq!(NonceCount::parse(bad), None, "{bad:?}");
        }
    }

    fn value_text() -> impl Strategy<Value = String> {
        // Printable text with the characters that need care: quotes, backslashes, commas, `=`.
        proptest::string::string_regex(r#"[ -~äß€]{0,24}"#).unwrap()
    }

    proptest! {
        #[test]
        fn arbitrary_values_never_panic(value in ".{0,200}") {
            let _ = parse_challenges(&value);
            let _ = Credentials::parse(&value);
        }

        #[test]
        fn digest_shaped_garbage_never_panics(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("Digest ".to_string()),
                    Just("realm=".to_string()),
                    Just("nonce=".to_string()),
                    Just("qop=".to_string()),
                    Just("\"".to_string()),
                    Just("\\".to_string()),
                    Just(",".to_string()),
                    Just(" ".to_string()),
                    Just("=".to_string()),
                    "[a-zA-Z0-9/+äé]{0,4}",
                ],
                0..24,
            )
        ) {
            let value = parts.concat();
            let _ = parse_challenges(&value);
            let _ = Credentials::parse(&value);
        }

        #[test]
        fn challenges_print_and_parse_back(
            realm in value_text(),
            nonce in value_text(),
            opaque in proptest::option::of(value_text()),
            domain in proptest::option::of(value_text()),
            algorithm in prop_oneof![
                Just(Algorithm::Md5), Just(Algorithm::Md5Sess),
                Just(Algorithm::Sha256), Just(Algorithm::Sha256Sess),
            ],
            qop in prop_oneof![
                Just(vec![]), Just(vec![Qop::Auth]), Just(vec![Qop::Auth, Qop::AuthInt]),
            ],
            stale in any::<bool>(),
        ) {
            let challenge = Challenge { realm, nonce, opaque, algorithm, qop, stale, domain };
            prop_assert_eq!(Challenge::parse(&challenge.to_string()), Ok(challenge));
        }

        #[test]
        fn credentials_print_and_parse_back(
            username in value_text(),
            realm in value_text(),
            nonce in value_text(),
            uri in value_text(),
            cnonce in value_text(),
            opaque in proptest::option::of(value_text()),
            nc in any::<u32>(),
            with_qop in any::<bool>(),
        ) {
            let credentials = Credentials {
                username, realm, nonce, uri,
                response: "0123abcd".into(),
                algorithm: Algorithm::Sha256,
                cnonce: with_qop.then_some(cnonce),
                opaque,
                qop: with_qop.then_some(Qop::Auth),
                nc: with_qop.then_some(NonceCount(nc)),
            };
            prop_assert_eq!(Credentials::parse(&credentials.to_string()), Ok(credentials));
        }
    }
}
