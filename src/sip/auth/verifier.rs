//! The UAS side: challenging requests and verifying their credentials (RFC 3261 §22.4,
//! RFC 7616 §3.3, RFC 8760).
//!
//! ```text
//! verify(now, method, credentials, lookup):
//!   no Digest credentials for our realm ─────────────────────────▶ Challenge { stale: false }
//!   malformed, algorithm not offered, qop not auth ──────────────▶ Forbidden(reason)
//!   unknown user / response does not match ──────────────────────▶ Forbidden(reason)
//!   response matches, but nonce not ours, expired, or nc not
//!     above the highest seen for it (replay) ────────────────────▶ Challenge { stale: true }
//!   otherwise ───────────────────────────────────────────────────▶ Authorized { username }
//! ```
//! Nonces need no table to be checked: `nonce = hex(issued_ms ‖ random ‖ HMAC-SHA-256(secret,
//! issued_ms ‖ random ‖ realm)[..16])` with a per-verifier random secret, `issued_ms` counted
//! from the verifier's creation. A bounded table keeps the highest nc per nonce in use; when it
//! is full the oldest entry goes, and nonces issued up to that one are refused as stale from
//! then on, so eviction never re-opens a replay.
//!
//! A valid response with a bad nonce gets `stale=true` (RFC 7616 §3.3): the client knows the
//! password, so it may retry; an attacker replaying a captured request cannot answer the new
//! nonce. The digest-uri is not compared with the Request-URI: a proxy on the path may have
//! rewritten the latter (to our registered Contact), and the method, uri, nonce and nc are all
//! covered by the response anyway. `opaque` is sent but not needed back (the nonce is
//! self-checking). Without a qop (RFC 2069) a nonce is good for one request only.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::digest::{constant_time_eq, hex, hmac_sha256, DigestInput};
use super::header::{Challenge, Credentials};
use super::{Algorithm, AuthHeader, ChallengeOrigin, NonceCount, Qop};
use crate::config::Secret;

/// Octets of HMAC kept in a nonce.
const MAC_LEN: usize = 16;
/// Hex length of a nonce: 8 octets of time, 8 of randomness, the MAC.
const NONCE_HEX_LEN: usize = 2 * (8 + 8 + MAC_LEN);

/// How a [`DigestVerifier`] challenges.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The realm put in challenges; credentials for other realms are ignored.
    pub realm: String,
    /// 401 (`WWW-Authenticate`, a UAS) or 407 (`Proxy-Authenticate`).
    pub origin: ChallengeOrigin,
    /// Algorithms offered, one challenge each, in order of preference (RFC 8760: SHA-256
    /// first, MD5 for older clients); only these are accepted.
    pub algorithms: Vec<Algorithm>,
    /// How long a nonce stays good after it is issued.
    pub nonce_lifetime: Duration,
    /// The most nonces whose nonce count is remembered.
    pub max_nonces: usize,
}

impl VerifierConfig {
    /// A 401 challenger for `realm`: SHA-256 and MD5, nonces good for 5 minutes, 4096 tracked.
    pub fn new(realm: impl Into<String>) -> Self {
        VerifierConfig {
            realm: realm.into(),
            origin: ChallengeOrigin::Www,
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            nonce_lifetime: Duration::from_secs(300),
            max_nonces: 4096,
        }
    }
}

/// The decision on a request, from [`DigestVerifier::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The credentials are good: go on with the request.
    Authorized {
        /// The authenticated user name.
        username: String,
    },
    /// Answer with [`ChallengeOrigin::status_code`] (401/407) carrying `headers`.
    Challenge {
        /// The nonce was stale, the credentials right (`stale=true` is in the headers).
        stale: bool,
        /// The challenge headers to add, one per offered algorithm.
        headers: Vec<AuthHeader>,
    },
    /// Answer 403: the credentials are wrong or unusable.
    Forbidden(ForbiddenReason),
}

/// Why credentials were refused. For logs: tell the peer no more than "403 Forbidden".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForbiddenReason {
    /// Digest credentials that do not parse (missing fields, bad nc …).
    Malformed,
    /// An algorithm we did not offer.
    UnsupportedAlgorithm,
    /// A qop we did not offer (auth-int).
    UnsupportedQop,
    /// No such user.
    UnknownUser,
    /// The response does not match: wrong password (or user name, realm, method, uri).
    WrongPassword,
}

/// What a verifier has decided so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifierStats {
    /// Requests authorized.
    pub authorized: u64,
    /// Challenges without `stale` (no credentials yet).
    pub challenged: u64,
    /// Stale challenges (expired or unknown nonce with a valid response), replays included.
    pub stale: u64,
    /// Of the stale challenges: a nonce count not above one already seen.
    pub replays: u64,
    /// Requests refused with 403.
    pub forbidden: u64,
}

/// Issues challenges and checks credentials for one realm.
#[derive(Debug)]
pub struct DigestVerifier {
    config: VerifierConfig,
    epoch: Instant,
    secret: [u8; 32],
    opaque: String,
    /// (issued_ms, nonce) → highest nonce count seen.
    seen: BTreeMap<(u64, String), u32>,
    /// Nonces issued at or before this instant (ms) may have been evicted from `seen`.
    evicted_through: Option<u64>,
    stats: VerifierStats,
}

impl DigestVerifier {
    /// A verifier with a fresh random secret; `now` is the origin of its nonce clock.
    pub fn new(now: Instant, config: VerifierConfig) -> Self {
        Self::with_secret(now, config, rand::random())
    }

    fn with_secret(now: Instant, config: VerifierConfig, secret: [u8; 32]) -> Self {
        DigestVerifier {
            config,
            epoch: now,
            secret,
            opaque: hex(&rand::random::<[u8; 8]>()),
            seen: BTreeMap::new(),
            evicted_through: None,
            stats: VerifierStats::default(),
        }
    }

    /// The challenge headers for a 401/407 with a new nonce, one per configured algorithm.
    pub fn challenge(&mut self, now: Instant, stale: bool) -> Vec<AuthHeader> {
        if stale {
            self.stats.stale += 1;
        } else {
            self.stats.challenged += 1;
        }
        let nonce = self.new_nonce(now);
        self.config
            .algorithms
            .iter()
            .map(|&algorithm| AuthHeader {
                name: self.config.origin.challenge_header(),
                value: Challenge {
                    realm: self.config.realm.clone(),
                    nonce: nonce.clone(),
                    opaque: Some(self.opaque.clone()),
                    algorithm,
                    qop: vec![Qop::Auth],
                    stale,
                    domain: None,
                }
                .to_string(),
            })
            .collect()
    }

    /// Checks a request: `credentials` are its `Authorization` values (`Proxy-Authorization`
    /// for a 407 verifier), `lookup` gives a user's password. See the module table for the
    /// outcomes; a `Challenge` carries fresh headers.
    pub fn verify<I, S, L, P>(
        &mut self,
        now: Instant,
        method: &str,
        credentials: I,
        lookup: L,
    ) -> Verdict
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
        L: FnOnce(&str) -> Option<P>,
        P: Borrow<Secret>,
    {
        let now_ms = self.elapsed_ms(now);
        self.forget_expired(now_ms);
        let mut malformed = false;
        let mut ours = None;
        for value in credentials {
            match Credentials::parse(value.as_ref()) {
                Ok(parsed) if parsed.realm == self.config.realm => {
                    ours = Some(parsed);
                    break;
                }
                Ok(_) => {}
                // Credentials for another scheme or realm are none of our business; broken
                // ones that might have been ours are refused below.
                Err(super::ParseError::NotDigest { .. }) => {}
                Err(_) => malformed = true,
            }
        }
        let Some(credentials) = ours else {
            if malformed {
                return self.forbid(ForbiddenReason::Malformed);
            }
            return Verdict::Challenge {
                stale: false,
                headers: self.challenge(now, false),
            };
        };
        if !self.config.algorithms.contains(&credentials.algorithm) {
            return self.forbid(ForbiddenReason::UnsupportedAlgorithm);
        }
        if credentials.qop == Some(Qop::AuthInt) {
            return self.forbid(ForbiddenReason::UnsupportedQop);
        }
        let Some(password) = lookup(&credentials.username) else {
            return self.forbid(ForbiddenReason::UnknownUser);
        };
        let expected = DigestInput {
            algorithm: credentials.algorithm,
            username: &credentials.username,
            realm: &credentials.realm,
            password: password.borrow().expose(),
            nonce: &credentials.nonce,
            cnonce: credentials.cnonce.as_deref(),
            nc: credentials.nc,
            qop: credentials.qop,
            method,
            uri: &credentials.uri,
            body: b"",
        }
        .response();
        let received = credentials.response.to_ascii_lowercase();
        if !constant_time_eq(expected.as_bytes(), received.as_bytes()) {
            return self.forbid(ForbiddenReason::WrongPassword);
        }
        // The client knows the password; now the nonce must be ours, fresh and not replayed.
        let fresh = self
            .nonce_issued_ms(&credentials.nonce, now_ms)
            .filter(|&issued| now_ms - issued <= duration_ms(self.config.nonce_lifetime));
        let Some(issued) = fresh else {
            return self.stale(now);
        };
        if !self.record_use(issued, &credentials.nonce, credentials.nc) {
            self.stats.replays += 1;
            return self.stale(now);
        }
        self.stats.authorized += 1;
        Verdict::Authorized {
            username: credentials.username,
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> &VerifierStats {
        &self.stats
    }

    /// The configuration in use.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    fn forbid(&mut self, reason: ForbiddenReason) -> Verdict {
        self.stats.forbidden += 1;
        Verdict::Forbidden(reason)
    }

    fn stale(&mut self, now: Instant) -> Verdict {
        Verdict::Challenge {
            stale: true,
            headers: self.challenge(now, true),
        }
    }

    fn elapsed_ms(&self, now: Instant) -> u64 {
        duration_ms(now.saturating_duration_since(self.epoch))
    }

    fn mac(&self, issued_ms: u64, random: u64) -> [u8; 32] {
        let mut message = Vec::with_capacity(16 + self.config.realm.len());
        message.extend_from_slice(&issued_ms.to_be_bytes());
        message.extend_from_slice(&random.to_be_bytes());
        message.extend_from_slice(self.config.realm.as_bytes());
        hmac_sha256(&self.secret, &message)
    }

    fn new_nonce(&self, now: Instant) -> String {
        let issued_ms = self.elapsed_ms(now);
        let random: u64 = rand::random();
        let mac = self.mac(issued_ms, random);
        let mac = mac.get(..MAC_LEN).unwrap_or(&mac);
        format!("{issued_ms:016x}{random:016x}{}", hex(mac))
    }

    /// When a nonce of ours was issued, or `None` if it is not ours (or from the future).
    fn nonce_issued_ms(&self, nonce: &str, now_ms: u64) -> Option<u64> {
        if nonce.len() != NONCE_HEX_LEN {
            return None;
        }
        let issued_ms = u64::from_str_radix(nonce.get(..16)?, 16).ok()?;
        let random = u64::from_str_radix(nonce.get(16..32)?, 16).ok()?;
        let mac = self.mac(issued_ms, random);
        let expected = hex(mac.get(..MAC_LEN)?);
        let received = nonce.get(32..)?.to_ascii_lowercase();
        (constant_time_eq(expected.as_bytes(), received.as_bytes()) && issued_ms <= now_ms)
            .then_some(issued_ms)
    }

    /// Notes a use of a fresh nonce; false if it is a replay (nc not above the highest seen,
    /// a second use without qop, or a nonce whose record may have been evicted).
    fn record_use(&mut self, issued_ms: u64, nonce: &str, nc: Option<NonceCount>) -> bool {
        // Without a qop there is no count: the nonce is spent by its first use.
        let count = nc.map_or(u32::MAX, |nc| nc.0);
        if count == 0 {
            return false;
        }
        let key = (issued_ms, nonce.to_string());
        if let Some(highest) = self.seen.get_mut(&key) {
            if nc.is_none() || count <= *highest {
                return false;
            }
            *highest = count;
            return true;
        }
        if self
            .evicted_through
            .is_some_and(|evicted| issued_ms <= evicted)
        {
            return false;
        }
        while self.seen.len() >= self.config.max_nonces.max(1) {
            let Some(((oldest, _), _)) = self.seen.pop_first() else {
                break;
            };
            self.evicted_through = Some(self.evicted_through.map_or(oldest, |e| e.max(oldest)));
            if issued_ms <= oldest {
                // This nonce is no newer than the one just evicted: refuse it the same way.
                return false;
            }
        }
        self.seen.insert(key, count);
        true
    }

    /// Drops records of nonces that have expired (they are refused by age anyway).
    fn forget_expired(&mut self, now_ms: u64) {
        let lifetime = duration_ms(self.config.nonce_lifetime);
        while let Some(((issued, _), _)) = self.seen.first_key_value() {
            if now_ms.saturating_sub(*issued) <= lifetime {
                break;
            }
            self.seen.pop_first();
        }
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth::{ChallengeOutcome, ClientCredentials, DigestClient};
    use crate::testkit::{secs, t0};

    const URI: &str = "sip:voxgate@192.0.2.1";

    fn alice_password() -> Secret {
        Secret::new("correct horse")
    }

    fn lookup(user: &str) -> Option<Secret> {
        (user == "alice").then(alice_password)
    }

    fn values(headers: &[AuthHeader]) -> Vec<&str> {
        headers.iter().map(|h| h.value.as_str()).collect()
    }

    fn challenge_headers(verdict: Verdict) -> Vec<AuthHeader> {
        match verdict {
            Verdict::Challenge { headers, .. } => headers,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// A verifier offering one algorithm, and a client that has answered its first challenge.
    fn pair(algorithm: Algorithm, password: &str) -> (DigestVerifier, DigestClient) {
        let mut verifier = DigestVerifier::new(
            t0(),
            VerifierConfig {
                algorithms: vec![algorithm],
                ..VerifierConfig::new("voxgate")
            },
        );
        let mut client = DigestClient::new(ClientCredentials::new("alice", Secret::new(password)));
        let headers = challenge_headers(verifier.verify(t0(), "INVITE", [""; 0], lookup));
        assert_eq!(
            client.handle_challenge(ChallengeOrigin::Www, values(&headers), [""; 0]),
            ChallengeOutcome::Retry { stale: false }
        );
        (verifier, client)
    }

    fn send(verifier: &mut DigestVerifier, now: Instant, header: &AuthHeader) -> Verdict {
        verifier.verify(now, "INVITE", [header.value.as_str()], lookup)
    }

    #[test]
    fn round_trip_for_each_algorithm() {
        for algorithm in [
            Algorithm::Md5,
            Algorithm::Sha256,
            Algorithm::Md5Sess,
            Algorithm::Sha256Sess,
        ] {
            let (mut verifier, mut client) = pair(algorithm, "correct horse");
            for request in 1..=3u32 {
                let header = client.authorize("INVITE", URI, b"v=0\r\n").remove(0);
                assert!(header.value.contains(&format!("algorithm={algorithm}")));
                assert_eq!(
                    send(&mut verifier, t0() + secs(u64::from(request)), &header),
                    Verdict::Authorized {
                        username: "alice".into()
                    },
                    "{algorithm} request {request}"
                );
            }
            assert_eq!(verifier.stats().authorized, 3);
        }
    }

    #[test]
    fn challenge_offers_each_algorithm_with_one_nonce() {
        let mut verifier = DigestVerifier::new(t0(), VerifierConfig::new("voxgate"));
        let headers = verifier.challenge(t0(), false);
        assert_eq!(headers.len(), 2);
        let sha = Challenge::parse(&headers[0].value).unwrap();
        let md5 = Challenge::parse(&headers[1].value).unwrap();
        assert_eq!(headers[0].name, "WWW-Authenticate");
        assert_eq!(
            (sha.algorithm, md5.algorithm),
            (Algorithm::Sha256, Algorithm::Md5)
        );
        assert_eq!(sha.nonce, md5.nonce);
        assert_eq!(sha.nonce.len(), NONCE_HEX_LEN);
        assert_eq!(sha.qop, vec![Qop::Auth]);
        assert!(sha.opaque.is_some() && !sha.stale);
        assert_ne!(
            verifier.challenge(t0(), false),
            headers,
            "nonces are fresh each time"
        );

        let mut proxy = DigestVerifier::new(
            t0(),
            VerifierConfig {
                origin: ChallengeOrigin::Proxy,
                ..VerifierConfig::new("voxgate")
            },
        );
        assert_eq!(proxy.challenge(t0(), true)[0].name, "Proxy-Authenticate");
    }

    #[test]
    fn wrong_password_is_forbidden() {
        let (mut verifier, mut client) = pair(Algorithm::Sha256, "battery staple");
        let header = client.authorize("INVITE", URI, b"").remove(0);
        assert_eq!(
            send(&mut verifier, t0(), &header),
            Verdict::Forbidden(ForbiddenReason::WrongPassword)
        );
        assert_eq!(verifier.stats().forbidden, 1);
    }

    #[test]
    fn unknown_user_and_other_method_are_forbidden() {
        let (mut verifier, mut client) = pair(Algorithm::Md5, "correct horse");
        let header = client.authorize("INVITE", URI, b"").remove(0);
        assert_eq!(
            verifier.verify(t0(), "INVITE", [header.value.as_str()], |_| None::<Secret>),
            Verdict::Forbidden(ForbiddenReason::UnknownUser)
        );
        // Credentials computed for INVITE do not authorize a BYE.
        assert_eq!(
            verifier.verify(t0(), "BYE", [header.value.as_str()], lookup),
            Verdict::Forbidden(ForbiddenReason::WrongPassword)
        );
    }

    #[test]
    fn replayed_nonce_count_gets_a_stale_challenge() {
        let (mut verifier, mut client) = pair(Algorithm::Md5, "correct horse");
        let first = client.authorize("INVITE", URI, b"").remove(0);
        let second = client.authorize("INVITE", URI, b"").remove(0);
        assert!(matches!(
            send(&mut verifier, t0(), &second),
            Verdict::Authorized { .. }
        ));
        // The same request again, and an older count after a newer one: both refused.
        for replay in [&second, &first] {
            let verdict = send(&mut verifier, t0() + secs(1), replay);
            let headers = challenge_headers(verdict.clone());
            assert!(matches!(verdict, Verdict::Challenge { stale: true, .. }));
            assert!(Challenge::parse(&headers[0].value).unwrap().stale);
        }
        assert_eq!(verifier.stats().replays, 2);
        let third = client.authorize("INVITE", URI, b"").remove(0);
        assert!(matches!(
            send(&mut verifier, t0() + secs(2), &third),
            Verdict::Authorized { .. }
        ));
    }

    #[test]
    fn expired_nonce_gets_a_stale_challenge_the_client_retries() {
        let (mut verifier, mut client) = pair(Algorithm::Sha256, "correct horse");
        let header = client.authorize("INVITE", URI, b"").remove(0);
        assert!(matches!(
            send(&mut verifier, t0() + secs(300), &header),
            Verdict::Authorized { .. }
        ));
        let late = t0() + secs(301);
        let header = client.authorize("INVITE", URI, b"").remove(0);
        let verdict = send(&mut verifier, late, &header);
        assert!(matches!(verdict, Verdict::Challenge { stale: true, .. }));
        let headers = challenge_headers(verdict);
        assert_eq!(
            client.handle_challenge(
                ChallengeOrigin::Www,
                values(&headers),
                [header.value.as_str()]
            ),
            ChallengeOutcome::Retry { stale: true }
        );
        let retry = client.authorize("INVITE", URI, b"").remove(0);
        assert!(matches!(
            send(&mut verifier, late, &retry),
            Verdict::Authorized { .. }
        ));
    }

    #[test]
    fn forged_or_foreign_nonce_gets_a_stale_challenge() {
        let (mut verifier, _) = pair(Algorithm::Md5, "correct horse");
        let other = DigestVerifier::new(t0(), VerifierConfig::new("voxgate"));
        for nonce in [
            other.new_nonce(t0()),
            "0".repeat(NONCE_HEX_LEN),
            "short".to_string(),
            "é".repeat(NONCE_HEX_LEN / 2),
        ] {
            let mut client = DigestClient::new(ClientCredentials::new("alice", alice_password()));
            let challenge = format!(r#"Digest realm="voxgate", nonce="{nonce}", qop="auth""#);
            client.handle_challenge(ChallengeOrigin::Www, [challenge], [""; 0]);
            let header = client.authorize("INVITE", URI, b"").remove(0);
            assert!(
                matches!(
                    send(&mut verifier, t0(), &header),
                    Verdict::Challenge { stale: true, .. }
                ),
                "{nonce}"
            );
        }
    }

    #[test]
    fn nonce_from_the_future_is_refused() {
        let secret = [7; 32];
        let mut verifier = DigestVerifier::with_secret(t0(), VerifierConfig::new("r"), secret);
        let later = DigestVerifier::with_secret(t0(), VerifierConfig::new("r"), secret);
        let nonce = later.new_nonce(t0() + secs(10));
        assert_eq!(verifier.nonce_issued_ms(&nonce, 10_000), Some(10_000));
        assert_eq!(verifier.nonce_issued_ms(&nonce, 9_999), None);
        assert!(verifier.record_use(10_000, &nonce, Some(NonceCount(1))));
    }

    #[test]
    fn missing_other_realm_and_broken_credentials() {
        let (mut verifier, _) = pair(Algorithm::Md5, "correct horse");
        let other_realm =
            r#"Digest username="alice", realm="elsewhere", nonce="n", uri="sip:a", response="x""#;
        assert!(matches!(
            verifier.verify(t0(), "INVITE", [other_realm, "Basic YWxpY2U6eA=="], lookup),
            Verdict::Challenge { stale: false, .. }
        ));
        let broken = r#"Digest username="alice", realm="voxgate", nonce="n", uri="sip:a", response="x", qop=auth"#;
        assert_eq!(
            verifier.verify(t0(), "INVITE", [broken], lookup),
            Verdict::Forbidden(ForbiddenReason::Malformed)
        );
        let unterminated = r#"Digest username="alice"#;
        assert_eq!(
            verifier.verify(t0(), "INVITE", [unterminated], lookup),
            Verdict::Forbidden(ForbiddenReason::Malformed)
        );
    }

    #[test]
    fn algorithm_not_offered_and_auth_int_are_forbidden() {
        let (mut verifier, _) = pair(Algorithm::Sha256, "correct horse");
        let nonce = verifier.new_nonce(t0());
        let mut client = DigestClient::new(ClientCredentials::new("alice", alice_password()));
        client.handle_challenge(
            ChallengeOrigin::Www,
            [format!(
                r#"Digest realm="voxgate", nonce="{nonce}", algorithm=MD5, qop="auth""#
            )],
            [""; 0],
        );
        let md5 = client.authorize("INVITE", URI, b"").remove(0);
        assert_eq!(
            send(&mut verifier, t0(), &md5),
            Verdict::Forbidden(ForbiddenReason::UnsupportedAlgorithm)
        );
        client.reset();
        client.handle_challenge(
            ChallengeOrigin::Www,
            [format!(
                r#"Digest realm="voxgate", nonce="{nonce}", algorithm=SHA-256, qop="auth-int""#
            )],
            [""; 0],
        );
        let auth_int = client.authorize("INVITE", URI, b"").remove(0);
        assert_eq!(
            send(&mut verifier, t0(), &auth_int),
            Verdict::Forbidden(ForbiddenReason::UnsupportedQop)
        );
    }

    #[test]
    fn rfc2069_credentials_are_good_once() {
        let (mut verifier, _) = pair(Algorithm::Md5, "correct horse");
        let nonce = verifier.new_nonce(t0());
        let mut client = DigestClient::new(ClientCredentials::new("alice", alice_password()));
        client.handle_challenge(
            ChallengeOrigin::Www,
            [format!(r#"Digest realm="voxgate", nonce="{nonce}""#)],
            [""; 0],
        );
        let first = client.authorize("INVITE", URI, b"").remove(0);
        assert!(matches!(
            send(&mut verifier, t0(), &first),
            Verdict::Authorized { .. }
        ));
        let again = client.authorize("INVITE", URI, b"").remove(0);
        assert!(matches!(
            send(&mut verifier, t0(), &again),
            Verdict::Challenge { stale: true, .. }
        ));
    }

    #[test]
    fn nonce_table_is_bounded_and_eviction_does_not_reopen_replays() {
        let mut verifier = DigestVerifier::new(
            t0(),
            VerifierConfig {
                algorithms: vec![Algorithm::Md5],
                max_nonces: 3,
                ..VerifierConfig::new("voxgate")
            },
        );
        let mut clients = Vec::new();
        let mut first_headers = Vec::new();
        for i in 0..5u64 {
            let now = t0() + secs(i);
            let headers = verifier.challenge(now, false);
            let mut client = DigestClient::new(ClientCredentials::new("alice", alice_password()));
            client.handle_challenge(ChallengeOrigin::Www, values(&headers), [""; 0]);
            let header = client.authorize("INVITE", URI, b"").remove(0);
            assert!(matches!(
                send(&mut verifier, now, &header),
                Verdict::Authorized { .. }
            ));
            assert!(verifier.seen.len() <= 3);
            first_headers.push(header);
            clients.push(client);
        }
        // The oldest nonces were evicted: their next use is refused as stale, not accepted.
        let evicted = clients[0].authorize("INVITE", URI, b"").remove(0);
        assert!(matches!(
            send(&mut verifier, t0() + secs(5), &evicted),
            Verdict::Challenge { stale: true, .. }
        ));
        // A replay of the evicted nonce's first request is refused too.
        assert!(matches!(
            send(&mut verifier, t0() + secs(5), &first_headers[0]),
            Verdict::Challenge { stale: true, .. }
        ));
        // The newest ones still work.
        let recent = clients[4].authorize("INVITE", URI, b"").remove(0);
        assert!(matches!(
            send(&mut verifier, t0() + secs(5), &recent),
            Verdict::Authorized { .. }
        ));
    }

    #[test]
    fn expired_records_are_forgotten() {
        let (mut verifier, mut client) = pair(Algorithm::Md5, "correct horse");
        let header = client.authorize("INVITE", URI, b"").remove(0);
        assert!(matches!(
            send(&mut verifier, t0(), &header),
            Verdict::Authorized { .. }
        ));
        assert_eq!(verifier.seen.len(), 1);
        verifier.verify(t0() + secs(301), "INVITE", [""; 0], lookup);
        assert!(verifier.seen.is_empty());
        assert_eq!(verifier.evicted_through, None);
    }

    #[test]
    fn response_case_does_not_matter() {
        let (mut verifier, mut client) = pair(Algorithm::Md5, "correct horse");
        let header = client.authorize("INVITE", URI, b"").remove(0);
        let mut credentials = Credentials::parse(&header.value).unwrap();
        credentials.response = credentials.response.to_ascii_uppercase();
        let upper = credentials.to_string();
        assert!(matches!(
            verifier.verify(t0(), "INVITE", [upper], lookup),
            Verdict::Authorized { .. }
        ));
    }
}
