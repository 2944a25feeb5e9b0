//! The [`Authenticator`] registrations use: RFC 8760 digest through [`DigestClient`].
//!
//! How the two modules' rules meet:
//! - The registration hands over one raw challenge at a time (the first one it can get an
//!   answer for, in the order the registrar listed them: RFC 8760 §2.4's "topmost supported").
//!   [`DigestClient`] alone would prefer the strongest of several; here the registrar's order
//!   wins, which RFC 8760 recommends and registrars order by preference anyway.
//! - A challenge seen for the first time (a new nonce, a `stale=true` one) starts a new nonce
//!   session: `nc=00000001`. The challenge answered last, handed over again (credentials sent
//!   ahead on a refresh or unregister), reuses the nonce: `nc` counts up, as RFC 7616 §3.4
//!   requires of a reused nonce. 401 and 407 sessions are kept apart (one client each), so
//!   answering one never advances the other's count.
//! - Refusal is the registration's decision (a second challenge of a kind within one attempt,
//!   without `stale=true`); [`DigestAuthenticator::refused`] only reads `stale`. The client's
//!   own refusal rule (a non-stale challenge to credentials for a fresh nonce) is not used:
//!   it is handed no "sent" credentials, so it always answers, and the registration stops the
//!   loop instead.

use super::Authenticator;
use crate::sip::auth::ChallengeOutcome;
use crate::sip::auth::{parse_challenges, ChallengeOrigin, ClientCredentials, DigestClient};

/// Answers a registrar's (401) or proxy's (407) digest challenges with one trunk's credentials.
#[derive(Debug, Clone)]
pub struct DigestAuthenticator {
    /// Index 0: 401 / `Authorization`; 1: 407 / `Proxy-Authorization`.
    clients: [DigestClient; 2],
    /// The raw challenge each client answered last.
    answered: [Option<String>; 2],
}

impl DigestAuthenticator {
    /// An authenticator with no nonce yet.
    pub fn new(credentials: ClientCredentials) -> DigestAuthenticator {
        DigestAuthenticator {
            clients: [
                DigestClient::new(credentials.clone()),
                DigestClient::new(credentials),
            ],
            answered: [None, None],
        }
    }
}

impl Authenticator for DigestAuthenticator {
    fn answer(
        &mut self,
        challenge: &str,
        proxy: bool,
        method: &str,
        uri: &str,
    ) -> Option<(String, String)> {
        let kind = usize::from(proxy);
        let origin = if proxy {
            ChallengeOrigin::Proxy
        } else {
            ChallengeOrigin::Www
        };
        let client = &mut self.clients[kind];
        let reuse = self.answered[kind].as_deref() == Some(challenge) && client.has_nonce();
        if !reuse {
            let no_credentials: [&str; 0] = [];
            match client.handle_challenge(origin, [challenge], no_credentials) {
                ChallengeOutcome::Retry { .. } => {}
                ChallengeOutcome::Refused { .. }
                | ChallengeOutcome::Unanswerable(_)
                | ChallengeOutcome::RealmMismatch { .. } => return None,
            }
            self.answered[kind] = Some(challenge.to_owned());
        }
        // A REGISTER has no body: qop=auth-int hashes the empty body.
        client
            .authorize(method, uri, b"")
            .into_iter()
            .find(|header| header.name == origin.credentials_header())
            .map(|header| (header.name.to_owned(), header.value))
    }

    fn refused(&self, challenge: &str) -> bool {
        !parse_challenges(challenge)
            .into_iter()
            .flatten()
            .any(|challenge| challenge.stale)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::{AttemptResult, Event, Registration, RegistrationConfig};
    use super::*;
    use crate::config::Secret;
    use crate::sip::auth::{Credentials, DigestVerifier, NonceCount, Verdict, VerifierConfig};
    use crate::sip::dialog::OutgoingRequest;
    use crate::sip::message::{self, Message, Response, Transport};
    use crate::testkit::{self, secs};

    const REGISTRAR: &str = "sip:192.0.2.10";

    fn config() -> RegistrationConfig {
        RegistrationConfig {
            trunk: "pbx".into(),
            registrar: REGISTRAR.into(),
            aor: "sip:1001@192.0.2.10".into(),
            outbound_proxy: None,
            transport: Transport::Udp,
            contact_user: "1001".into(),
            contact_address: "10.0.0.5:5060".into(),
            expires: secs(600),
            rewrite_contact: false,
            jitter_seed: 1,
        }
    }

    fn credentials(password: &str) -> ClientCredentials {
        ClientCredentials::new("1001", Secret::new(password))
    }

    /// A registrar made of a [`DigestVerifier`]: challenges, authorizes, or refuses.
    struct Registrar {
        origin: ChallengeOrigin,
        verifier: DigestVerifier,
        password: Secret,
        /// Answer a wrong password with a new challenge (Asterisk) instead of 403.
        rechallenge_wrong_password: bool,
        verdicts: Vec<Verdict>,
    }

    impl Registrar {
        fn new(now: Instant, config: VerifierConfig) -> Registrar {
            Registrar {
                origin: config.origin,
                verifier: DigestVerifier::new(now, config),
                password: Secret::new("right"),
                rechallenge_wrong_password: false,
                verdicts: Vec::new(),
            }
        }

        /// The response to `request`, as text.
        fn handle(&mut self, now: Instant, request: &OutgoingRequest) -> Response {
            let name = match self.origin {
                ChallengeOrigin::Www => "Authorization",
                ChallengeOrigin::Proxy => "Proxy-Authorization",
            };
            let sent: Vec<&str> = request
                .headers
                .iter()
                .filter(|(header, _)| *header == name)
                .map(|(_, value)| value.as_str())
                .collect();
            let password = self.password.clone();
            let mut verdict = self.verifier.verify(now, "REGISTER", sent, |user| {
                (user == "1001").then_some(&password)
            });
            if self.rechallenge_wrong_password && matches!(verdict, Verdict::Forbidden(_)) {
                verdict = Verdict::Challenge {
                    stale: false,
                    headers: self.verifier.challenge(now, false),
                };
            }
            self.verdicts.push(verdict.clone());
            match verdict {
                Verdict::Authorized { .. } => {
                    let contact = header(request, "Contact").replace("expires=600", "expires=300");
                    respond(request, 200, &[("Contact", contact)])
                }
                Verdict::Challenge { headers, .. } => {
                    let status = self.origin.status_code();
                    let headers: Vec<(&str, String)> = headers
                        .into_iter()
                        .map(|header| (header.name, header.value))
                        .collect();
                    respond(request, status, &headers)
                }
                Verdict::Forbidden(_) => respond(request, 403, &[]),
            }
        }
    }

    fn header(request: &OutgoingRequest, name: &str) -> String {
        request
            .headers
            .iter()
            .find(|(header, _)| *header == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    }

    fn respond(request: &OutgoingRequest, status: u16, headers: &[(&str, String)]) -> Response {
        let mut text = format!(
            "SIP/2.0 {status} {}\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKtest\r\n",
            message::default_reason(status)
        );
        for name in ["From", "Call-ID", "CSeq"] {
            text.push_str(&format!("{name}: {}\r\n", header(request, name)));
        }
        text.push_str(&format!("To: {};tag=registrar\r\n", header(request, "To")));
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        match message::parse(text.as_bytes(), Transport::Udp, 65_535) {
            Ok(Message::Response(response)) => response,
            other => panic!("test response does not parse: {other:?}\n{text}"),
        }
    }

    /// Runs the registration against `registrar` until no REGISTER is left to answer; returns
    /// the requests sent.
    fn exchange(
        now: Instant,
        registration: &mut Registration<DigestAuthenticator>,
        registrar: &mut Registrar,
    ) -> Vec<OutgoingRequest> {
        let mut sent = Vec::new();
        while let Some(request) = registration.poll_request() {
            assert!(sent.len() < 10, "a REGISTER loop: {sent:?}");
            let response = registrar.handle(now, &request);
            sent.push(request);
            registration.handle_response(now, &response);
        }
        sent
    }

    fn attempts(registration: &mut Registration<DigestAuthenticator>) -> Vec<AttemptResult> {
        std::iter::from_fn(|| registration.poll_event())
            .filter_map(|event| match event {
                Event::Attempt(attempt) => Some(attempt.result),
                _ => None,
            })
            .collect()
    }

    fn credentials_in(request: &OutgoingRequest, name: &str) -> Credentials {
        Credentials::parse(&header(request, name)).expect("credentials in the request")
    }

    #[test]
    fn registers_against_a_digest_verifier_and_counts_nc_up_when_reusing_the_nonce() {
        let t0 = testkit::t0();
        let mut registrar = Registrar::new(t0, VerifierConfig::new("pbx"));
        let mut registration =
            Registration::new(t0, config(), DigestAuthenticator::new(credentials("right")));
        let sent = exchange(t0, &mut registration, &mut registrar);
        assert_eq!(sent.len(), 2, "REGISTER, then REGISTER with Authorization");
        assert!(registration.is_up());
        assert_eq!(
            attempts(&mut registration),
            [AttemptResult::AuthRequired, AttemptResult::Ok]
        );
        let first = credentials_in(&sent[1], "Authorization");
        // The verifier offers SHA-256 first: the topmost supported challenge is answered.
        assert_eq!(first.algorithm.as_str(), "SHA-256");
        assert_eq!(first.nc, Some(NonceCount(1)));
        assert_eq!(first.uri, REGISTRAR);

        // The refresh and the unregistration answer ahead of time with the same nonce.
        let refresh_at = registration.poll_timeout().expect("refresh scheduled");
        registration.handle_timeout(refresh_at);
        let refresh = exchange(refresh_at, &mut registration, &mut registrar);
        assert_eq!(refresh.len(), 1, "no round trip for a known nonce");
        let second = credentials_in(&refresh[0], "Authorization");
        assert_eq!(
            (second.nonce.as_str(), second.nc),
            (first.nonce.as_str(), Some(NonceCount(2)))
        );
        assert_eq!(attempts(&mut registration), [AttemptResult::Ok]);

        registration.unregister(refresh_at + secs(1));
        let unregister = exchange(refresh_at + secs(1), &mut registration, &mut registrar);
        assert_eq!(
            credentials_in(&unregister[0], "Authorization").nc,
            Some(NonceCount(3))
        );
        assert!(registration.is_finished());
    }

    #[test]
    fn an_expired_nonce_is_answered_again_with_the_new_one() {
        let t0 = testkit::t0();
        let mut verifier = VerifierConfig::new("pbx");
        verifier.nonce_lifetime = Duration::from_secs(60);
        let mut registrar = Registrar::new(t0, verifier);
        let mut registration =
            Registration::new(t0, config(), DigestAuthenticator::new(credentials("right")));
        let first = exchange(t0, &mut registration, &mut registrar);
        let refresh_at = registration.poll_timeout().expect("refresh scheduled");
        assert!(
            refresh_at - t0 > secs(60),
            "the nonce has expired by the refresh"
        );
        registration.handle_timeout(refresh_at);
        let _ = attempts(&mut registration);
        let refresh = exchange(refresh_at, &mut registration, &mut registrar);
        assert_eq!(refresh.len(), 2, "stale credentials, then the new nonce");
        assert!(matches!(
            registrar.verdicts[2],
            Verdict::Challenge { stale: true, .. }
        ));
        let renewed = credentials_in(&refresh[1], "Authorization");
        assert_ne!(
            renewed.nonce,
            credentials_in(&first[1], "Authorization").nonce
        );
        assert_eq!(renewed.nc, Some(NonceCount(1)));
        assert_eq!(
            attempts(&mut registration),
            [AttemptResult::AuthRequired, AttemptResult::Ok]
        );
        assert!(registration.is_up());
    }

    #[test]
    fn a_wrong_password_is_refused_once_whether_by_403_or_by_a_new_challenge() {
        for rechallenge in [false, true] {
            let t0 = testkit::t0();
            let mut registrar = Registrar::new(t0, VerifierConfig::new("pbx"));
            registrar.rechallenge_wrong_password = rechallenge;
            let mut registration =
                Registration::new(t0, config(), DigestAuthenticator::new(credentials("wrong")));
            let sent = exchange(t0, &mut registration, &mut registrar);
            assert_eq!(
                sent.len(),
                2,
                "no third try within the attempt (rechallenge {rechallenge})"
            );
            assert_eq!(
                attempts(&mut registration),
                [AttemptResult::AuthRequired, AttemptResult::Refused]
            );
            assert!(!registration.is_up());
            let retry = registration.poll_timeout().expect("backoff scheduled") - t0;
            assert!(retry >= secs(4), "backs off, no tight loop: {retry:?}");
        }
    }

    #[test]
    fn a_proxy_challenge_gets_proxy_authorization_and_a_foreign_realm_none() {
        let t0 = testkit::t0();
        let mut proxy = VerifierConfig::new("proxy.example.com");
        proxy.origin = ChallengeOrigin::Proxy;
        let mut registrar = Registrar::new(t0, proxy);
        let mut registration =
            Registration::new(t0, config(), DigestAuthenticator::new(credentials("right")));
        let sent = exchange(t0, &mut registration, &mut registrar);
        assert_eq!(
            credentials_in(&sent[1], "Proxy-Authorization").realm,
            "proxy.example.com"
        );
        assert!(registration.is_up());

        let mut restricted = credentials("right");
        restricted.realm = Some("pbx.example.com".into());
        let mut registrar = Registrar::new(t0, VerifierConfig::new("elsewhere"));
        let mut registration =
            Registration::new(t0, config(), DigestAuthenticator::new(restricted));
        let sent = exchange(t0, &mut registration, &mut registrar);
        assert_eq!(
            sent.len(),
            1,
            "a challenge for another realm is not answered"
        );
        assert_eq!(attempts(&mut registration), [AttemptResult::Refused]);
    }

    #[test]
    fn refused_reads_stale_from_the_challenge() {
        let authenticator = DigestAuthenticator::new(credentials("pw"));
        assert!(authenticator.refused(r#"Digest realm="r", nonce="n""#));
        assert!(!authenticator.refused(r#"Digest realm="r", nonce="n", stale=TRUE"#));
        assert!(authenticator.refused("not a challenge"));
    }
}
