//! The UAC side: answering 401/407 challenges, then reusing the nonce (RFC 3261 §22.2–§22.3,
//! RFC 7616 §3.4, RFC 8760).
//!
//! ```text
//! no session ──challenge──▶ session(realm: nonce, nc=0) ──authorize──▶ nc+1 on every request
//!   session ──challenge stale=true──────────────────────────▶ new nonce, nc=0   (Retry)
//!   session ──challenge, request carried no credentials──────▶ new nonce, nc=0   (Retry)
//!   session ──challenge, request answered a reused nonce (nc>1)▶ new nonce, nc=0 (Retry once)
//!   session ──challenge, request answered a fresh nonce (nc=1)─▶ dropped         (Refused)
//! ```
//! One client serves one peer (a trunk's registrar, or one dialog): it keeps a session per
//! challenging realm and adds a header for each to every request (preemptive authentication).
//! A non-stale challenge to credentials computed for a fresh nonce means the password was
//! refused (RFC 7616 §3.3, `stale`); the caller must then stop rather than loop. A non-stale
//! challenge to a preemptively reused nonce is retried once, because servers that forgot their
//! nonces (a restart) do not always say `stale=true`. Without a qop (RFC 2069) there is no
//! nonce count to tell the two apart, so such a challenge is taken as a refusal.

use super::digest::{hex, DigestInput};
use super::header::{collect_challenges, Challenge, Credentials};
use super::{AuthHeader, ChallengeOrigin, NonceCount, ParseError, Qop};
use crate::config::Secret;

/// The most realms one client answers at once (a hostile response may offer many).
const MAX_SESSIONS: usize = 4;

/// Who we are to a registrar or peer.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The user name (the From/To user).
    pub username: String,
    /// The authentication user name, when it differs from `username`.
    pub auth_username: Option<String>,
    /// The password; only exposed to compute a response.
    pub password: Secret,
    /// When set, only challenges for this realm are answered.
    pub realm: Option<String>,
}

impl ClientCredentials {
    /// Credentials with no separate auth user name and no realm restriction.
    pub fn new(username: impl Into<String>, password: Secret) -> Self {
        ClientCredentials {
            username: username.into(),
            auth_username: None,
            password,
            realm: None,
        }
    }

    fn digest_username(&self) -> &str {
        self.auth_username.as_deref().unwrap_or(&self.username)
    }
}

/// What to do after a 401/407, from [`DigestClient::handle_challenge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeOutcome {
    /// Send the request again (new CSeq) with the headers [`DigestClient::authorize`] now gives.
    /// `stale` is true when every answered challenge said `stale=true`.
    Retry {
        /// The server asked for a new nonce only: the credentials were accepted.
        stale: bool,
    },
    /// The credentials were refused (a challenge again, not stale): give up on this request;
    /// the session for that realm is forgotten.
    Refused {
        /// Who refused.
        origin: ChallengeOrigin,
        /// The realm that refused.
        realm: String,
    },
    /// No challenge we can answer: none was Digest, or the algorithm or qop is unsupported.
    Unanswerable(ParseError),
    /// The challenges are for a realm other than the configured one.
    RealmMismatch {
        /// The (first) realm offered.
        offered: String,
    },
}

/// The digest state for one peer: answers challenges and authorizes later requests.
#[derive(Debug, Clone)]
pub struct DigestClient {
    credentials: ClientCredentials,
    sessions: Vec<Session>,
}

/// One realm's current nonce.
#[derive(Debug, Clone)]
struct Session {
    origin: ChallengeOrigin,
    challenge: Challenge,
    /// The last nonce count used (0: none yet).
    nc: u32,
    /// For `-sess`: the cnonce the session key was made with, reused for the nonce's lifetime.
    session_cnonce: Option<String>,
}

impl DigestClient {
    /// A client with no nonce yet: [`authorize`](Self::authorize) adds nothing until a
    /// challenge has been handled.
    pub fn new(credentials: ClientCredentials) -> Self {
        DigestClient {
            credentials,
            sessions: Vec::new(),
        }
    }

    /// Takes the challenges of a 401 (`origin` [`ChallengeOrigin::Www`], the
    /// `WWW-Authenticate` values) or a 407 (`Proxy`, the `Proxy-Authenticate` values) and says
    /// whether to retry. `sent` are the `Authorization` (or `Proxy-Authorization`) values of the
    /// request that was challenged, empty if it had none; they tell a refused password from a
    /// nonce the server no longer knows. The strongest supported challenge per realm is kept.
    pub fn handle_challenge<I, S, J, T>(
        &mut self,
        origin: ChallengeOrigin,
        challenges: I,
        sent: J,
    ) -> ChallengeOutcome
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
        J: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let (offered, first_error) = collect_challenges(challenges);
        let Some(first) = offered.first() else {
            return ChallengeOutcome::Unanswerable(first_error.unwrap_or(ParseError::Empty));
        };
        let offered_realm = first.realm.clone();
        let mut chosen: Vec<Challenge> = Vec::new();
        for challenge in offered {
            if self
                .credentials
                .realm
                .as_ref()
                .is_some_and(|realm| *realm != challenge.realm)
            {
                continue;
            }
            if let Some(best) = chosen.iter_mut().find(|c| c.realm == challenge.realm) {
                if challenge.algorithm.strength() > best.algorithm.strength() {
                    *best = challenge;
                }
            } else if chosen.len() < MAX_SESSIONS {
                chosen.push(challenge);
            }
        }
        if chosen.is_empty() {
            return ChallengeOutcome::RealmMismatch {
                offered: offered_realm,
            };
        }
        let sent: Vec<Credentials> = sent
            .into_iter()
            .filter_map(|value| Credentials::parse(value.as_ref()).ok())
            .collect();

        let mut all_stale = true;
        let mut refused = None;
        for challenge in chosen {
            let answered = sent.iter().find(|c| c.realm == challenge.realm);
            let reused_nonce = answered.and_then(|c| c.nc).is_some_and(|nc| nc.0 > 1);
            all_stale &= challenge.stale;
            let position = self
                .sessions
                .iter()
                .position(|s| s.origin == origin && s.challenge.realm == challenge.realm);
            if answered.is_some() && !challenge.stale && !reused_nonce {
                // RFC 7616 §3.3: not stale means the user name or password is wrong.
                if let Some(position) = position {
                    self.sessions.remove(position);
                }
                refused.get_or_insert(challenge.realm);
                continue;
            }
            let session = Session {
                origin,
                challenge,
                nc: 0,
                session_cnonce: None,
            };
            match position {
                Some(position) => {
                    if let Some(slot) = self.sessions.get_mut(position) {
                        *slot = session;
                    }
                }
                None if self.sessions.len() < MAX_SESSIONS => self.sessions.push(session),
                None => {}
            }
        }
        match refused {
            Some(realm) => ChallengeOutcome::Refused { origin, realm },
            None => ChallengeOutcome::Retry { stale: all_stale },
        }
    }

    /// The headers to add to a request (one per realm with a nonce; none before the first
    /// challenge), each with the nonce count advanced. `uri` is the Request-URI as sent, `body`
    /// the message body (hashed only for qop=auth-int).
    pub fn authorize(&mut self, method: &str, uri: &str, body: &[u8]) -> Vec<AuthHeader> {
        let mut headers = Vec::with_capacity(self.sessions.len());
        for index in 0..self.sessions.len() {
            let cnonce = fresh_cnonce();
            if let Some(header) = self.authorize_session(index, method, uri, body, cnonce) {
                headers.push(header);
            }
        }
        // A nonce whose count ran out cannot be reused: wait for the next challenge.
        self.sessions.retain(|session| session.nc != u32::MAX);
        headers
    }

    /// Whether [`authorize`](Self::authorize) would add any header (a nonce is held).
    pub fn has_nonce(&self) -> bool {
        !self.sessions.is_empty()
    }

    /// Forgets every nonce (e.g. after a refusal, before starting over).
    pub fn reset(&mut self) {
        self.sessions.clear();
    }

    /// One session's header, with the given cnonce (a parameter so tests can fix it).
    fn authorize_session(
        &mut self,
        index: usize,
        method: &str,
        uri: &str,
        body: &[u8],
        cnonce: String,
    ) -> Option<AuthHeader> {
        let session = self.sessions.get_mut(index)?;
        session.nc = session.nc.checked_add(1)?;
        let challenge = &session.challenge;
        // qop=auth when offered: a proxy may legitimately rewrite a SIP body, which would break
        // auth-int. auth-int only when it is all that is offered.
        let qop = if challenge.qop.contains(&Qop::Auth) {
            Some(Qop::Auth)
        } else {
            challenge.qop.first().copied()
        };
        let cnonce = if challenge.algorithm.is_session() {
            // RFC 2617 §3.2.2.2: A1 is computed once per nonce with the first cnonce; sending
            // that cnonce again keeps servers that recompute A1 per request in step with us.
            session.session_cnonce.get_or_insert(cnonce).clone()
        } else {
            cnonce
        };
        let uses_cnonce = qop.is_some() || challenge.algorithm.is_session();
        let nc = qop.map(|_| NonceCount(session.nc));
        let username = self.credentials.digest_username();
        let response = DigestInput {
            algorithm: challenge.algorithm,
            username,
            realm: &challenge.realm,
            password: self.credentials.password.expose(),
            nonce: &challenge.nonce,
            cnonce: uses_cnonce.then_some(cnonce.as_str()),
            nc,
            qop,
            method,
            uri,
            body,
        }
        .response();
        let credentials = Credentials {
            username: username.to_string(),
            realm: challenge.realm.clone(),
            nonce: challenge.nonce.clone(),
            uri: uri.to_string(),
            response,
            algorithm: challenge.algorithm,
            cnonce: uses_cnonce.then_some(cnonce),
            opaque: challenge.opaque.clone(),
            qop,
            nc,
        };
        Some(AuthHeader {
            name: session.origin.credentials_header(),
            value: credentials.to_string(),
        })
    }
}

/// A random client nonce: 128 bits as hex.
fn fresh_cnonce() -> String {
    hex(&rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth::Algorithm;

    const RFC2617_CHALLENGE: &str = r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;

    fn mufasa() -> DigestClient {
        DigestClient::new(ClientCredentials::new(
            "Mufasa",
            Secret::new("Circle Of Life"),
        ))
    }

    fn challenged(challenge: &str) -> DigestClient {
        let mut client = mufasa();
        let outcome = client.handle_challenge(ChallengeOrigin::Www, [challenge], [""; 0]);
        assert_eq!(outcome, ChallengeOutcome::Retry { stale: false });
        client
    }

    fn credentials(header: &AuthHeader) -> Credentials {
        Credentials::parse(&header.value).unwrap()
    }

    #[test]
    fn answers_the_rfc2617_example() {
        let mut client = challenged(RFC2617_CHALLENGE);
        let header = client
            .authorize_session(0, "GET", "/dir/index.html", b"", "0a4f113b".into())
            .unwrap();
        assert_eq!(header.name, "Authorization");
        assert_eq!(
            header.value,
            r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, cnonce="0a4f113b", opaque="5ccc069c403ebaf9f0171e9517f40e41", qop=auth, nc=00000001"#
        );
    }

    #[test]
    fn nothing_is_added_before_a_challenge() {
        let mut client = mufasa();
        assert!(!client.has_nonce());
        assert!(client
            .authorize("REGISTER", "sip:example.com", b"")
            .is_empty());
    }

    #[test]
    fn nonce_count_advances_per_request_with_fresh_cnonces() {
        let mut client = challenged(RFC2617_CHALLENGE);
        let mut cnonces = Vec::new();
        for expected in 1..=11u32 {
            let headers = client.authorize("REGISTER", "sip:example.com", b"");
            let [header] = headers.as_slice() else {
                panic!("one header expected, got {headers:?}")
            };
            let sent = credentials(header);
            assert_eq!(sent.nc, Some(NonceCount(expected)));
            assert!(header.value.contains(&format!("nc={expected:08x}")));
            assert_eq!(
                sent.opaque.as_deref(),
                Some("5ccc069c403ebaf9f0171e9517f40e41")
            );
            assert_eq!(sent.qop, Some(Qop::Auth));
            assert_eq!(sent.algorithm, Algorithm::Md5);
            let cnonce = sent.cnonce.unwrap();
            assert_eq!(cnonce.len(), 32);
            cnonces.push(cnonce);
        }
        assert!(client.authorize("REGISTER", "sip:example.com", b"")[0]
            .value
            .contains("nc=0000000c"));
        cnonces.sort();
        cnonces.dedup();
        assert_eq!(cnonces.len(), 11);
    }

    #[test]
    fn sess_keeps_its_first_cnonce() {
        let mut client =
            challenged(r#"Digest realm="r", nonce="n", algorithm=SHA-256-sess, qop="auth""#);
        let first = credentials(&client.authorize("INVITE", "sip:a@b", b"")[0]);
        let second = credentials(&client.authorize("INVITE", "sip:a@b", b"")[0]);
        assert_eq!(first.algorithm, Algorithm::Sha256Sess);
        assert_eq!(first.cnonce, second.cnonce);
        assert_eq!(second.nc, Some(NonceCount(2)));
    }

    #[test]
    fn auth_int_only_hashes_the_body_and_rfc2069_sends_no_nc() {
        let mut client = challenged(r#"Digest realm="r", nonce="n", qop="auth-int""#);
        let sent = credentials(&client.authorize("INVITE", "sip:a@b", b"v=0\r\n")[0]);
        assert_eq!(sent.qop, Some(Qop::AuthInt));
        let expected = DigestInput {
            algorithm: Algorithm::Md5,
            username: "Mufasa",
            realm: "r",
            password: "Circle Of Life",
            nonce: "n",
            cnonce: sent.cnonce.as_deref(),
            nc: sent.nc,
            qop: sent.qop,
            method: "INVITE",
            uri: "sip:a@b",
            body: b"v=0\r\n",
        };
        assert_eq!(sent.response, expected.response());

        let mut legacy = challenged(r#"Digest realm="r", nonce="n""#);
        let header = &legacy.authorize("INVITE", "sip:a@b", b"")[0];
        let sent = credentials(header);
        assert_eq!(
            (sent.qop, sent.nc, sent.cnonce.as_deref()),
            (None, None, None)
        );
        assert!(!header.value.contains("nc="));
    }

    #[test]
    fn proxy_challenge_gives_proxy_authorization_and_auth_username_is_used() {
        let mut client = DigestClient::new(ClientCredentials {
            auth_username: Some("auth-1001".into()),
            realm: Some("proxy.example.com".into()),
            ..ClientCredentials::new("1001", Secret::new("pw"))
        });
        let outcome = client.handle_challenge(
            ChallengeOrigin::Proxy,
            [r#"Digest realm="proxy.example.com", nonce="p", qop="auth""#],
            [""; 0],
        );
        assert_eq!(outcome, ChallengeOutcome::Retry { stale: false });
        let header = &client.authorize("BYE", "sip:pbx.example.com", b"")[0];
        assert_eq!(header.name, "Proxy-Authorization");
        assert_eq!(credentials(header).username, "auth-1001");

        assert_eq!(
            client.handle_challenge(
                ChallengeOrigin::Www,
                [r#"Digest realm="elsewhere", nonce="p""#],
                [""; 0]
            ),
            ChallengeOutcome::RealmMismatch {
                offered: "elsewhere".into()
            }
        );
    }

    #[test]
    fn picks_sha256_over_md5() {
        let mut client = mufasa();
        let outcome = client.handle_challenge(
            ChallengeOrigin::Www,
            [
                r#"Digest realm="r", nonce="md5", algorithm=MD5, qop="auth""#,
                r#"Digest realm="r", nonce="sha", algorithm=SHA-256, qop="auth""#,
            ],
            [""; 0],
        );
        assert_eq!(outcome, ChallengeOutcome::Retry { stale: false });
        let headers = client.authorize("REGISTER", "sip:r", b"");
        assert_eq!(headers.len(), 1);
        let sent = credentials(&headers[0]);
        assert_eq!(
            (sent.algorithm, sent.nonce.as_str()),
            (Algorithm::Sha256, "sha")
        );
    }

    #[test]
    fn unsupported_challenges_are_unanswerable() {
        let mut client = mufasa();
        assert_eq!(
            client.handle_challenge(
                ChallengeOrigin::Www,
                [r#"Digest realm="r", nonce="n", algorithm=SHA-512-256"#],
                [""; 0]
            ),
            ChallengeOutcome::Unanswerable(ParseError::UnsupportedAlgorithm("SHA-512-256".into()))
        );
        assert_eq!(
            client.handle_challenge(ChallengeOrigin::Www, [""; 0], [""; 0]),
            ChallengeOutcome::Unanswerable(ParseError::Empty)
        );
        assert!(!client.has_nonce());
    }

    #[test]
    fn second_challenge_to_fresh_credentials_is_refused() {
        let mut client = challenged(RFC2617_CHALLENGE);
        let sent = client.authorize("REGISTER", "sip:r", b"");
        let values: Vec<&str> = sent.iter().map(|h| h.value.as_str()).collect();
        let again = RFC2617_CHALLENGE.replace("dcd98b", "aaaaaa");
        assert_eq!(
            client.handle_challenge(ChallengeOrigin::Www, [again.as_str()], &values),
            ChallengeOutcome::Refused {
                origin: ChallengeOrigin::Www,
                realm: "testrealm@host.com".into()
            }
        );
        assert!(!client.has_nonce());
        // The same for the RFC 2069 form, which has no nonce count.
        let mut legacy = challenged(r#"Digest realm="r", nonce="n""#);
        let sent = legacy.authorize("REGISTER", "sip:r", b"");
        assert!(matches!(
            legacy.handle_challenge(
                ChallengeOrigin::Www,
                [r#"Digest realm="r", nonce="m""#],
                [sent[0].value.as_str()]
            ),
            ChallengeOutcome::Refused { .. }
        ));
    }

    #[test]
    fn stale_challenge_is_retried_with_the_new_nonce() {
        let mut client = challenged(RFC2617_CHALLENGE);
        let sent = client.authorize("REGISTER", "sip:r", b"");
        let stale = r#"Digest realm="testrealm@host.com", nonce="fresh", qop="auth", stale=TRUE"#;
        assert_eq!(
            client.handle_challenge(ChallengeOrigin::Www, [stale], [sent[0].value.as_str()]),
            ChallengeOutcome::Retry { stale: true }
        );
        let retry = credentials(&client.authorize("REGISTER", "sip:r", b"")[0]);
        assert_eq!(retry.nonce, "fresh");
        assert_eq!(retry.nc, Some(NonceCount(1)));
        assert_eq!(retry.opaque, None);
    }

    #[test]
    fn reused_nonce_refused_without_stale_is_retried_once() {
        let mut client = challenged(RFC2617_CHALLENGE);
        client.authorize("REGISTER", "sip:r", b""); // nc=1, accepted
        let refresh = client.authorize("REGISTER", "sip:r", b""); // nc=2, server forgot
        let restarted = r#"Digest realm="testrealm@host.com", nonce="after-restart", qop="auth""#;
        assert_eq!(
            client.handle_challenge(
                ChallengeOrigin::Www,
                [restarted],
                [refresh[0].value.as_str()]
            ),
            ChallengeOutcome::Retry { stale: false }
        );
        let retry = client.authorize("REGISTER", "sip:r", b"");
        assert_eq!(credentials(&retry[0]).nc, Some(NonceCount(1)));
        assert!(matches!(
            client.handle_challenge(ChallengeOrigin::Www, [restarted], [retry[0].value.as_str()]),
            ChallengeOutcome::Refused { .. }
        ));
    }

    #[test]
    fn challenge_to_a_request_without_credentials_is_a_retry_even_with_a_session() {
        // Two requests in flight before the first challenge: the second challenge is not a
        // refusal, since its request carried no credentials.
        let mut client = challenged(RFC2617_CHALLENGE);
        assert_eq!(
            client.handle_challenge(ChallengeOrigin::Www, [RFC2617_CHALLENGE], [""; 0]),
            ChallengeOutcome::Retry { stale: false }
        );
        // Credentials for another realm do not count either.
        let other = r#"Digest username="u", realm="other", nonce="n", uri="sip:r", response="x""#;
        assert_eq!(
            client.handle_challenge(ChallengeOrigin::Www, [RFC2617_CHALLENGE], [other]),
            ChallengeOutcome::Retry { stale: false }
        );
    }

    #[test]
    fn www_and_proxy_realms_are_answered_together() {
        let mut client = challenged(RFC2617_CHALLENGE);
        client.handle_challenge(
            ChallengeOrigin::Proxy,
            [r#"Digest realm="proxy", nonce="p", qop="auth""#],
            [""; 0],
        );
        let names: Vec<&str> = client
            .authorize("INVITE", "sip:a@b", b"")
            .iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(names, ["Authorization", "Proxy-Authorization"]);
        client.reset();
        assert!(!client.has_nonce());
    }

    #[test]
    fn hostile_responses_cannot_grow_the_sessions() {
        let mut client = mufasa();
        let many: Vec<String> = (0..50)
            .map(|i| format!(r#"Digest realm="r{i}", nonce="n""#))
            .collect();
        client.handle_challenge(ChallengeOrigin::Www, &many, [""; 0]);
        client.handle_challenge(ChallengeOrigin::Proxy, &many, [""; 0]);
        assert_eq!(
            client.authorize("INVITE", "sip:a@b", b"").len(),
            MAX_SESSIONS
        );
    }

    #[test]
    fn exhausted_nonce_count_drops_the_session() {
        let mut client = challenged(RFC2617_CHALLENGE);
        if let Some(session) = client.sessions.first_mut() {
            session.nc = u32::MAX - 1;
        }
        let last = client.authorize("INVITE", "sip:a@b", b"");
        assert_eq!(credentials(&last[0]).nc, Some(NonceCount(u32::MAX)));
        assert!(!client.has_nonce());
    }
}
