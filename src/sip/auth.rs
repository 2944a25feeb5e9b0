//! SIP digest authentication, both ways, sans-IO (RFC 3261 §22 with RFC 2617, RFC 7616 and
//! RFC 8760: MD5, SHA-256 and their `-sess` variants; qop=auth, qop=auth-int on the client, and
//! the RFC 2069 form without qop).
//!
//! ```text
//!  UAC: DigestClient                                     UAS: DigestVerifier
//!  REGISTER / INVITE / BYE ─────────────────────────────▶ verify(now, method, [], lookup)
//!      ◀──── 401 WWW-Authenticate | 407 Proxy-Authenticate ── Verdict::Challenge { stale: false }
//!  handle_challenge(origin, challenges, sent=[]) → Retry
//!  authorize(method, uri, body) → Authorization (nc=00000001, fresh cnonce)
//!  same request + Authorization ───────────────────────▶ verify(…) → Authorized { username }
//!  later request: authorize() → same nonce, nc=00000002 (preemptive)
//!      ◀──── 401 stale=true (nonce expired) ──────────── Challenge { stale: true }
//!  handle_challenge(…, sent=[that Authorization]) → Retry { stale: true }
//!      ◀──── 401 without stale after answering a fresh nonce ─ (wrong password: 403 from us)
//!  handle_challenge(…) → Refused: stop, do not loop
//! ```
//!
//! Nothing here knows about transactions or rsip: header values go in and out as plain strings,
//! bodies as bytes, time as `now: Instant`, so the registration machine, in-dialog requests and
//! the inbound INVITE check all share it.
//!
//! Public API:
//! - Wire types: [`Algorithm`] (`MD5`, `MD5-sess`, `SHA-256`, `SHA-256-sess`), [`Qop`],
//!   [`NonceCount`] (`00000001`), [`ChallengeOrigin`] (401/`WWW-Authenticate`/`Authorization` or
//!   407/`Proxy-Authenticate`/`Proxy-Authorization`), [`AuthHeader`] (a name and a value to add).
//! - [`Challenge`] and [`Credentials`]: one header value each, parsed by us
//!   ([`Challenge::parse`], [`parse_challenges`], [`select_challenge`], [`Credentials::parse`]) and
//!   printed by `Display`. Parse failures are a [`ParseError`], never a panic.
//! - [`DigestInput::response`]: the `response=` computation itself, exposed for tests and tools.
//! - [`DigestClient`]: `handle_challenge(origin, challenges, sent) -> ChallengeOutcome` and
//!   `authorize(method, uri, body) -> Vec<AuthHeader>`; remembers nonces for preemptive use.
//! - [`DigestVerifier`]: `challenge(now, stale)` and
//!   `verify(now, method, credentials, lookup) -> Verdict` (`Authorized`, `Challenge { stale }`,
//!   `Forbidden(reason)`), with stateless HMAC nonces, expiry and nonce-count replay checks.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use voxgate::config::Secret;
//! use voxgate::sip::auth::{
//!     ChallengeOrigin, ChallengeOutcome, ClientCredentials, DigestClient, DigestVerifier,
//!     Verdict, VerifierConfig,
//! };
//!
//! let now = Instant::now();
//! let mut verifier = DigestVerifier::new(now, VerifierConfig::new("voxgate"));
//! let mut client = DigestClient::new(ClientCredentials::new("alice", Secret::new("s3cret")));
//!
//! // The first INVITE carries no credentials: the verifier's 401 challenges it.
//! let no_credentials: [&str; 0] = [];
//! let Verdict::Challenge { headers, .. } =
//!     verifier.verify(now, "INVITE", no_credentials, |_| None::<Secret>)
//! else {
//!     unreachable!()
//! };
//! let values: Vec<&str> = headers.iter().map(|h| h.value.as_str()).collect();
//! let outcome = client.handle_challenge(ChallengeOrigin::Www, &values, no_credentials);
//! assert_eq!(outcome, ChallengeOutcome::Retry { stale: false });
//!
//! // The retried INVITE carries an Authorization header, which the verifier accepts.
//! let added = client.authorize("INVITE", "sip:bot@192.0.2.1", b"");
//! assert_eq!(added[0].name, "Authorization");
//! let password = Secret::new("s3cret");
//! let verdict = verifier.verify(now, "INVITE", [&added[0].value], |user| {
//!     (user == "alice").then_some(&password)
//! });
//! assert_eq!(verdict, Verdict::Authorized { username: "alice".into() });
//! ```

use std::fmt;

use thiserror::Error;

mod client;
mod digest;
mod header;
mod verifier;

pub use client::{ChallengeOutcome, ClientCredentials, DigestClient};
pub use digest::DigestInput;
pub use header::{parse_challenges, select_challenge, Challenge, Credentials};
pub use verifier::{DigestVerifier, ForbiddenReason, Verdict, VerifierConfig, VerifierStats};

/// A digest algorithm (RFC 7616 §3.3; RFC 8760 for SIP). Absent means [`Algorithm::Md5`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// `MD5` (RFC 2617), the default when no `algorithm` is given.
    #[default]
    Md5,
    /// `MD5-sess`: A1 also covers the nonce and the first cnonce.
    Md5Sess,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
}

impl Algorithm {
    /// The algorithm named by an `algorithm=` token (case-insensitive), or `None` if unsupported
    /// (e.g. `SHA-512-256`, `AKAv1-MD5`).
    pub fn from_token(token: &str) -> Option<Self> {
        [
            Algorithm::Md5,
            Algorithm::Md5Sess,
            Algorithm::Sha256,
            Algorithm::Sha256Sess,
        ]
        .into_iter()
        .find(|algorithm| algorithm.as_str().eq_ignore_ascii_case(token))
    }

    /// The token as RFC 7616 spells it (`MD5`, `MD5-sess`, `SHA-256`, `SHA-256-sess`).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    /// Whether this is a `-sess` variant (A1 = H(H(user:realm:password):nonce:cnonce)).
    pub fn is_session(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// Preference when a response offers several challenges: higher is stronger (SHA-256 over
    /// MD5); a `-sess` variant ranks with its hash.
    pub fn strength(self) -> u8 {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => 1,
            Algorithm::Sha256 | Algorithm::Sha256Sess => 2,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A quality of protection (RFC 7616 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qop {
    /// `auth`: the method and URI are covered.
    Auth,
    /// `auth-int`: the body is covered too.
    AuthInt,
}

impl Qop {
    /// The qop named by a token (case-insensitive), or `None` if unknown.
    pub fn from_token(token: &str) -> Option<Self> {
        if token.eq_ignore_ascii_case("auth") {
            Some(Qop::Auth)
        } else if token.eq_ignore_ascii_case("auth-int") {
            Some(Qop::AuthInt)
        } else {
            None
        }
    }

    /// The token (`auth`, `auth-int`).
    pub fn as_str(self) -> &'static str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
        }
    }
}

impl fmt::Display for Qop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The nonce count `nc` (RFC 7616 §3.4): how many requests the client has sent with one nonce,
/// printed as exactly 8 lower-case hex digits (`00000001`, `0000000a`, `00000100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NonceCount(pub u32);

impl NonceCount {
    /// Parses `nc-value = 8LHEX`; upper-case digits are accepted too. Anything else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(text, 16).ok().map(NonceCount)
    }
}

impl fmt::Display for NonceCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// Who challenged: the UAS/registrar (401, `WWW-Authenticate` → `Authorization`) or a proxy
/// (407, `Proxy-Authenticate` → `Proxy-Authorization`), RFC 3261 §22.2 and §22.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeOrigin {
    /// 401 Unauthorized from a UAS or registrar.
    Www,
    /// 407 Proxy Authentication Required from a proxy.
    Proxy,
}

impl ChallengeOrigin {
    /// The origin a challenge status code stands for (401 or 407), `None` for any other code.
    pub fn from_status(code: u16) -> Option<Self> {
        match code {
            401 => Some(ChallengeOrigin::Www),
            407 => Some(ChallengeOrigin::Proxy),
            _ => None,
        }
    }

    /// The status code that carries this origin's challenge (401 or 407).
    pub fn status_code(self) -> u16 {
        match self {
            ChallengeOrigin::Www => 401,
            ChallengeOrigin::Proxy => 407,
        }
    }

    /// The header a challenge comes in (`WWW-Authenticate` or `Proxy-Authenticate`).
    pub fn challenge_header(self) -> &'static str {
        match self {
            ChallengeOrigin::Www => "WWW-Authenticate",
            ChallengeOrigin::Proxy => "Proxy-Authenticate",
        }
    }

    /// The header the answer goes in (`Authorization` or `Proxy-Authorization`).
    pub fn credentials_header(self) -> &'static str {
        match self {
            ChallengeOrigin::Www => "Authorization",
            ChallengeOrigin::Proxy => "Proxy-Authorization",
        }
    }
}

/// One header to add to a message: a name (e.g. `Authorization`) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    /// The header name, as RFC 3261 spells it.
    pub name: &'static str,
    /// The header value (`Digest …`).
    pub value: String,
}

/// What was wrong with a challenge or credentials header value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The value is empty (or only commas and whitespace).
    #[error("empty authentication header")]
    Empty,
    /// The value does not follow the `scheme param=value, …` grammar.
    #[error("malformed authentication header at octet {at}")]
    Syntax {
        /// Octet offset in the value where parsing stopped.
        at: usize,
    },
    /// The scheme is not `Digest` (e.g. `Basic`, `Bearer`).
    #[error("authentication scheme {scheme:?} is not Digest")]
    NotDigest {
        /// The scheme as received.
        scheme: String,
    },
    /// A required parameter is missing.
    #[error("missing {0} parameter")]
    MissingParam(&'static str),
    /// A parameter appears twice (RFC 3261 §7.3.1: a parameter name at most once).
    #[error("duplicate {name} parameter")]
    DuplicateParam {
        /// The parameter name as received.
        name: String,
    },
    /// The `algorithm` is not one we implement.
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// No offered `qop` (or the chosen one) is one we implement.
    #[error("unsupported qop {0:?}")]
    UnsupportedQop(String),
    /// `nc` is not 8 hex digits.
    #[error("malformed nonce count {0:?}")]
    BadNonceCount(String),
}
