//! The REGISTER client against a registrar played by the test, through a real [`Endpoint`] (Via,
//! transactions, Timer F), in virtual time: challenges, refresh timing, 423, backoff, Retry-After,
//! Contact rewriting, lost bindings and unregistration.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::*;
use crate::sip::endpoint::{ClientTxId, Endpoint, EndpointConfig, Event as EndpointEvent, Flow};
use crate::sip::message::{Message, Request};
use crate::sip::transaction::Timers;
use crate::testkit::{self, ms, secs};

const REGISTRAR: &str = "192.0.2.10:5060";
const LOCAL: &str = "10.0.0.5:5060";
const PUBLIC: &str = "203.0.113.7:40000";
const CONTACT: &str = "sip:voxgate@10.0.0.5:5060;transport=udp";

/// Answers challenges like a digest client would, without hashing: the answer names the
/// nonce and a counter so tests can tell answers apart.
#[derive(Debug, Default)]
struct FakeAuth {
    answers: u32,
}

impl Authenticator for FakeAuth {
    fn answer(
        &mut self,
        challenge: &str,
        proxy: bool,
        method: &str,
        uri: &str,
    ) -> Option<(String, String)> {
        if challenge.contains("algorithm=UNKNOWN") {
            return None;
        }
        self.answers += 1;
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("none")
            .to_owned();
        let name = if proxy {
            "Proxy-Authorization"
        } else {
            "Authorization"
        };
        Some((
            name.to_owned(),
            format!(
                "Digest username=\"trunk\", nonce=\"{nonce}\", uri=\"{uri}\", \
                 response=\"{method}-{}\"",
                self.answers
            ),
        ))
    }

    fn refused(&self, challenge: &str) -> bool {
        !challenge.to_ascii_lowercase().contains("stale=true")
    }
}

fn config() -> RegistrationConfig {
    RegistrationConfig {
        trunk: "pbx".into(),
        registrar: format!("sip:{REGISTRAR}"),
        aor: "sip:voxgate@pbx.example.com".into(),
        outbound_proxy: None,
        transport: Transport::Udp,
        contact_user: "voxgate".into(),
        contact_address: LOCAL.into(),
        expires: secs(3_600),
        rewrite_contact: true,
        jitter_seed: 7,
    }
}

/// A registration talking through a real [`Endpoint`] (Via, transactions, Timer F) to a
/// registrar played by the test, in virtual time.
struct Rig {
    endpoint: Endpoint,
    registration: Registration<FakeAuth>,
    now: Instant,
    flow: Flow,
    /// The address the registrar sees our requests come from (stamped into the Via).
    seen_from: SocketAddr,
    /// First transmissions of each REGISTER (retransmissions left out), with their time.
    sent: Vec<(Instant, Request)>,
    events: Vec<Event>,
    /// The CSeq each REGISTER transaction carries (what `io/` would keep).
    transactions: HashMap<ClientTxId, u32>,
}

impl Rig {
    fn new(config: RegistrationConfig) -> Rig {
        let now = testkit::t0();
        let mut rig = Rig {
            endpoint: Endpoint::new(EndpointConfig {
                timers: Timers::default(),
                max_message_bytes: 65_535,
                user_agent: "voxgate-test".into(),
                public_address: None,
            }),
            registration: Registration::new(now, config, FakeAuth::default()),
            now,
            flow: Flow {
                transport: Transport::Udp,
                remote: REGISTRAR.parse().unwrap(),
                local: LOCAL.parse().unwrap(),
                connection: None,
            },
            seen_from: LOCAL.parse().unwrap(),
            sent: Vec::new(),
            events: Vec::new(),
            transactions: HashMap::new(),
        };
        rig.pump();
        rig
    }

    fn pump(&mut self) {
        loop {
            let mut busy = false;
            while let Some(request) = self.registration.poll_request() {
                busy = true;
                let tx = self
                    .endpoint
                    .send_request(self.now, &self.flow, &request, None);
                self.transactions.insert(tx, request.cseq);
            }
            while let Some(transmit) = self.endpoint.poll_transmit() {
                let Ok(Message::Request(request)) =
                    message::parse(&transmit.bytes, Transport::Udp, 65_535)
                else {
                    panic!("voxgate sent something unparseable");
                };
                let seq = request.cseq().seq;
                if self.sent.iter().all(|(_, old)| old.cseq().seq != seq) {
                    self.sent.push((self.now, request));
                }
            }
            while let Some(event) = self.endpoint.poll_event() {
                busy = true;
                match event {
                    EndpointEvent::Response { response, .. } => {
                        self.registration.handle_response(self.now, &response)
                    }
                    EndpointEvent::RequestTimedOut { tx } => {
                        let cseq = self.transactions[&tx];
                        self.registration.handle_request_timeout(self.now, cseq)
                    }
                    other => panic!("unexpected endpoint event {other:?}"),
                }
            }
            while let Some(event) = self.registration.poll_event() {
                self.events.push(event);
            }
            if !busy {
                return;
            }
        }
    }

    /// The last REGISTER sent.
    fn last(&self) -> &Request {
        &self.sent.last().expect("a REGISTER was sent").1
    }

    /// Answers the last REGISTER with `status` and `headers` (the registrar's side).
    fn reply(&mut self, status: u16, headers: &[(&str, String)]) {
        let request = self.last().clone();
        self.reply_to(&request, status, headers);
    }

    /// Answers `request` (stamped as received from `seen_from`), through the endpoint.
    fn reply_to(&mut self, request: &Request, status: u16, headers: &[(&str, String)]) {
        let mut request = request.clone();
        request.stamp_source(self.seen_from);
        let mut text = format!("SIP/2.0 {status} {}\r\n", message::default_reason(status));
        for via in request.vias() {
            text.push_str(&format!("Via: {}\r\n", via.to_header_value()));
        }
        text.push_str(&format!(
            "From: {}\r\nTo: {};tag=registrar\r\nCall-ID: {}\r\nCSeq: {} REGISTER\r\n",
            request.from(),
            request.to(),
            request.call_id(),
            request.cseq().seq
        ));
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        self.endpoint
            .handle_inbound(self.now, text.as_bytes(), self.flow);
        self.pump();
    }

    /// 200 listing every Contact the last REGISTER added, with `expires=granted`.
    fn ok(&mut self, granted: u32) {
        let contacts: Vec<(&str, String)> = self
            .last()
            .header_tokens("Contact")
            .into_iter()
            .filter(|contact| !contact.ends_with(";expires=0"))
            .map(|contact| {
                let uri = contact.split(">;").next().unwrap_or_default().to_owned();
                ("Contact", format!("{uri}>;expires={granted}"))
            })
            .collect();
        self.reply(200, &contacts);
    }

    fn challenge(&mut self, nonce: &str, stale: bool) {
        let stale = if stale { ", stale=true" } else { "" };
        let value =
            format!("Digest realm=\"pbx\", nonce=\"{nonce}\", qop=\"auth\", algorithm=MD5{stale}");
        self.reply(401, &[("WWW-Authenticate", value)]);
    }

    /// Runs timers (endpoint and registration) until a new REGISTER goes out, at most
    /// `limit` ahead; returns when it went out, after t0.
    fn next_register(&mut self, limit: Duration) -> Option<Duration> {
        let until = self.now + limit;
        let count = self.sent.len();
        for wakeups in 0.. {
            assert!(
                wakeups < 10_000,
                "timers do not settle (a past deadline kept?)"
            );
            if self.sent.len() != count {
                break;
            }
            let deadline = [
                self.endpoint.poll_timeout(),
                self.registration.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min()?;
            if deadline > until {
                self.now = until;
                return None;
            }
            assert!(deadline >= self.now, "deadline in the past");
            self.now = deadline;
            self.endpoint.handle_timeout(self.now);
            self.registration.handle_timeout(self.now);
            self.pump();
        }
        Some(self.sent.last()?.0 - testkit::t0())
    }

    /// Fires every timer up to `by` from now, answering nothing.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        let mut wakeups = 0;
        while let Some(deadline) = [
            self.endpoint.poll_timeout(),
            self.registration.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
        .filter(|deadline| *deadline <= until)
        {
            wakeups += 1;
            assert!(
                wakeups < 10_000,
                "timers do not settle (a past deadline kept?)"
            );
            self.now = deadline;
            self.endpoint.handle_timeout(self.now);
            self.registration.handle_timeout(self.now);
            self.pump();
        }
        self.now = until;
    }

    fn attempts(&self) -> Vec<AttemptResult> {
        self.events
            .iter()
            .filter_map(|event| match event {
                Event::Attempt(attempt) => Some(attempt.result),
                _ => None,
            })
            .collect()
    }

    fn last_attempt(&self) -> Attempt {
        self.events
            .iter()
            .rev()
            .find_map(|event| match event {
                Event::Attempt(attempt) => Some(attempt.clone()),
                _ => None,
            })
            .expect("an attempt was reported")
    }

    fn since_t0(&self) -> Duration {
        self.now - testkit::t0()
    }
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.header(name)
}

fn contacts(request: &Request) -> Vec<String> {
    request.header_tokens("Contact")
}

fn within_jitter(delay: Duration, nominal: Duration) -> bool {
    delay >= nominal.mul_f64(0.8) && delay <= nominal.mul_f64(1.2)
}

#[test]
fn first_register_answers_a_401_then_registers() {
    let mut rig = Rig::new(config());
    let first = rig.last().clone();
    assert_eq!(first.request_uri(), "sip:192.0.2.10:5060");
    assert_eq!(first.to(), "<sip:voxgate@pbx.example.com>");
    assert!(first
        .from()
        .starts_with("<sip:voxgate@pbx.example.com>;tag="));
    assert_eq!(first.cseq().seq, 1);
    assert_eq!(contacts(&first), [format!("<{CONTACT}>;expires=3600")]);
    assert_eq!(header(&first, "Expires"), Some("3600"));
    assert_eq!(header(&first, "Max-Forwards"), Some("70"));
    assert_eq!(header(&first, "Allow"), Some(ALLOW));
    assert_eq!(header(&first, "Supported"), Some(SUPPORTED));
    assert_eq!(header(&first, "User-Agent"), Some("voxgate-test"));
    assert_eq!(first.top_via().rport, Rport::Requested);
    assert!(header(&first, "Authorization").is_none());

    rig.challenge("n1", false);
    let second = rig.last().clone();
    assert_eq!(second.call_id(), first.call_id());
    assert_eq!(second.from(), first.from());
    assert_eq!(second.cseq().seq, 2);
    assert!(header(&second, "Authorization").is_some_and(|value| value.contains("\"n1\"")));
    assert!(!rig.registration.is_up());

    rig.ok(3_600);
    assert!(rig.registration.is_up());
    assert_eq!(rig.registration.granted_expires(), Some(secs(3_600)));
    assert_eq!(
        rig.attempts(),
        [AttemptResult::AuthRequired, AttemptResult::Ok]
    );
    assert!(rig.events.contains(&Event::Up {
        expires: secs(3_600)
    }));
    assert_eq!(rig.registration.stats().attempts(AttemptResult::Ok), 1);
    assert_eq!(
        rig.registration
            .stats()
            .attempts(AttemptResult::AuthRequired),
        1
    );
    assert_eq!(rig.sent.len(), 2, "no REGISTER beyond the challenge answer");
}

#[test]
fn refresh_follows_the_expiry_granted_not_the_one_asked() {
    let mut rig = Rig::new(config());
    rig.challenge("n1", false);
    // The registrar grants 120 s of the 3600 asked: refresh at 60 s (half of a short grant).
    rig.ok(120);
    assert_eq!(rig.registration.granted_expires(), Some(secs(120)));
    assert_eq!(rig.next_register(secs(3_600)), Some(secs(60)));
    let refresh = rig.last().clone();
    assert_eq!(refresh.cseq().seq, 3);
    assert_eq!(
        header(&refresh, "Expires"),
        Some("3600"),
        "still asks its own"
    );
    // The challenge is answered ahead of time (fresh answer for the same nonce).
    assert!(header(&refresh, "Authorization").is_some_and(|value| value.contains("\"n1\"")));
    assert_eq!(refresh.call_id(), rig.sent[0].1.call_id());
    // A long grant refreshes one minute ahead.
    rig.ok(3_600);
    assert_eq!(rig.next_register(secs(7_200)), Some(secs(60 + 3_540)));
    // Without a Contact parameter, the Expires header counts.
    rig.reply(200, &[("Expires", "300".into())]);
    assert_eq!(rig.registration.granted_expires(), Some(secs(300)));
    assert!(rig.registration.is_contact_listed());
    assert_eq!(rig.next_register(secs(7_200)), Some(secs(3_600 + 240)));
    // Up the whole time: every refresh landed before the binding lapsed.
    assert!(!rig
        .events
        .iter()
        .any(|event| matches!(event, Event::Down { .. })));
    assert_eq!(
        rig.events
            .iter()
            .filter(|event| matches!(event, Event::Up { .. }))
            .count(),
        1
    );
}

#[test]
fn refresh_never_comes_sooner_than_five_seconds() {
    assert_eq!(refresh_delay(secs(3_600)), secs(3_540));
    assert_eq!(refresh_delay(secs(120)), secs(60));
    assert_eq!(refresh_delay(secs(30)), secs(15));
    assert_eq!(refresh_delay(secs(4)), MIN_REFRESH);
    assert_eq!(refresh_delay(secs(1)), MIN_REFRESH);
}

#[test]
fn interval_too_brief_retries_with_min_expires() {
    let mut rig = Rig::new(RegistrationConfig {
        expires: secs(60),
        ..config()
    });
    rig.reply(423, &[("Min-Expires", "300".into())]);
    let retry = rig.last().clone();
    assert_eq!(retry.cseq().seq, 2);
    assert_eq!(header(&retry, "Expires"), Some("300"));
    assert_eq!(contacts(&retry), [format!("<{CONTACT}>;expires=300")]);
    assert_eq!(rig.since_t0(), Duration::ZERO, "retried at once");
    rig.ok(300);
    assert_eq!(
        rig.attempts(),
        [AttemptResult::IntervalTooBrief, AttemptResult::Ok]
    );
    // Refreshes keep asking for what the registrar accepts.
    assert_eq!(rig.next_register(secs(600)), Some(secs(240)));
    assert_eq!(header(rig.last(), "Expires"), Some("300"));
}

#[test]
fn a_second_interval_too_brief_backs_off_instead_of_looping() {
    let mut rig = Rig::new(RegistrationConfig {
        expires: secs(60),
        ..config()
    });
    rig.reply(423, &[("Min-Expires", "300".into())]);
    rig.reply(423, &[("Min-Expires", "600".into())]);
    assert_eq!(rig.sent.len(), 2);
    let attempt = rig.last_attempt();
    assert_eq!(attempt.result, AttemptResult::IntervalTooBrief);
    assert!(attempt
        .retry_in
        .is_some_and(|delay| within_jitter(delay, secs(5))));
    // A 423 without a usable Min-Expires also backs off.
    let mut rig = Rig::new(config());
    rig.reply(423, &[]);
    assert_eq!(rig.sent.len(), 1);
    assert!(rig.last_attempt().retry_in.is_some());
}

#[test]
fn forbidden_backs_off_exponentially_then_recovers() {
    let mut rig = Rig::new(config());
    let mut at = Duration::ZERO;
    for nominal in [5, 10, 20, 40] {
        rig.reply(403, &[]);
        let attempt = rig.last_attempt();
        assert_eq!(attempt.result, AttemptResult::Refused);
        assert_eq!(attempt.status, Some(403));
        assert!(
            attempt
                .description
                .starts_with("REGISTER to 192.0.2.10:5060 refused: 403 Forbidden; retrying in"),
            "{}",
            attempt.description
        );
        // Nothing goes out before the backoff ends.
        let next = rig.next_register(secs(3_600)).expect("a retry");
        assert!(
            within_jitter(next - at, secs(nominal)),
            "retry {nominal} s nominal came after {:?}",
            next - at
        );
        assert_eq!(Some(next - at), attempt.retry_in);
        at = next;
    }
    rig.ok(3_600);
    assert!(rig.registration.is_up());
    assert_eq!(rig.registration.stats().attempts(AttemptResult::Refused), 4);
    // A success resets the schedule: the next failure waits about 5 s again.
    rig.next_register(secs(3_600));
    rig.reply(403, &[]);
    assert!(rig
        .last_attempt()
        .retry_in
        .is_some_and(|delay| within_jitter(delay, secs(5))));
}

#[test]
fn backoff_is_capped_at_five_minutes_with_jitter() {
    let mut rig = Rig::new(config());
    let mut delays = Vec::new();
    for _ in 0..12 {
        rig.reply(500, &[]);
        delays.push(rig.last_attempt().retry_in.expect("a retry delay"));
        rig.next_register(secs(3_600)).expect("a retry");
    }
    assert!(delays.iter().all(|delay| *delay <= secs(360)));
    assert!(delays[7..]
        .iter()
        .all(|delay| within_jitter(*delay, secs(300))));
    // Jitter: not all capped delays are the same.
    assert!(delays[7..].windows(2).any(|pair| pair[0] != pair[1]));
    assert_eq!(
        rig.registration
            .stats()
            .attempts(AttemptResult::ServerError),
        12
    );
}

#[test]
fn no_response_times_out_then_backs_off() {
    let mut rig = Rig::new(config());
    // Timer F (64·T1 = 32 s) ends the transaction; the endpoint retransmitted meanwhile.
    let next = rig.next_register(secs(3_600)).expect("a retry");
    let attempt = rig.last_attempt();
    assert_eq!(attempt.result, AttemptResult::TimedOut);
    assert_eq!(attempt.status, None);
    assert!(attempt.description.contains("timed out"));
    assert!(within_jitter(next - secs(32), secs(5)), "{next:?}");
    // And again: 10 s after the second timeout.
    let again = rig.next_register(secs(3_600)).expect("a retry");
    assert!(
        within_jitter(again - next - secs(32), secs(10)),
        "{again:?}"
    );
    assert!(!rig.registration.is_up());
}

#[test]
fn stale_nonce_is_answered_again() {
    let mut rig = Rig::new(config());
    rig.challenge("n1", false);
    rig.challenge("n2", true);
    let third = rig.last().clone();
    assert_eq!(third.cseq().seq, 3);
    assert!(header(&third, "Authorization").is_some_and(|value| value.contains("\"n2\"")));
    rig.ok(3_600);
    assert!(rig.registration.is_up());
    assert_eq!(
        rig.attempts(),
        [
            AttemptResult::AuthRequired,
            AttemptResult::AuthRequired,
            AttemptResult::Ok
        ]
    );
}

#[test]
fn endless_stale_challenges_end_as_refused() {
    let mut rig = Rig::new(config());
    rig.challenge("n1", false);
    for round in 0..5 {
        rig.challenge(&format!("s{round}"), true);
    }
    // 1 + MAX_STALE answers, then the attempt is given up.
    assert_eq!(rig.sent.len(), 2 + usize::from(MAX_STALE));
    assert_eq!(rig.last_attempt().result, AttemptResult::Refused);
}

#[test]
fn second_challenge_without_stale_is_refused_and_backs_off() {
    let mut rig = Rig::new(config());
    rig.challenge("n1", false);
    rig.challenge("n2", false);
    assert_eq!(rig.sent.len(), 2, "no third REGISTER right away");
    let attempt = rig.last_attempt();
    assert_eq!(attempt.result, AttemptResult::Refused);
    assert!(
        attempt.description.contains("credentials refused"),
        "{}",
        attempt.description
    );
    let next = rig.next_register(secs(3_600)).expect("a retry");
    assert!(within_jitter(next, secs(5)));
    // The next attempt starts without credentials sent ahead.
    assert!(header(rig.last(), "Authorization").is_none());
    // The same again: backoff doubles, still no loop.
    rig.challenge("n3", false);
    rig.challenge("n4", false);
    let after = rig.next_register(secs(3_600)).expect("a retry");
    assert!(within_jitter(after - next, secs(10)));
    assert_eq!(rig.sent.len(), 5);
}

#[test]
fn unanswerable_challenge_is_refused() {
    let mut rig = Rig::new(config());
    rig.reply(
        401,
        &[(
            "WWW-Authenticate",
            "Digest realm=\"pbx\", nonce=\"x\", algorithm=UNKNOWN".into(),
        )],
    );
    assert_eq!(rig.sent.len(), 1);
    let attempt = rig.last_attempt();
    assert_eq!(attempt.result, AttemptResult::Refused);
    assert!(attempt.description.contains("cannot answer"));
}

#[test]
fn the_first_supported_of_several_challenges_is_answered() {
    let mut rig = Rig::new(config());
    rig.reply(
        401,
        &[
            (
                "WWW-Authenticate",
                "Digest realm=\"pbx\", nonce=\"sha\", algorithm=UNKNOWN".into(),
            ),
            (
                "WWW-Authenticate",
                "Digest realm=\"pbx\", nonce=\"md5\", algorithm=MD5".into(),
            ),
        ],
    );
    assert!(header(rig.last(), "Authorization").is_some_and(|value| value.contains("\"md5\"")));
}

#[test]
fn proxy_and_registrar_challenges_are_both_answered() {
    let mut rig = Rig::new(RegistrationConfig {
        outbound_proxy: Some("sip:192.0.2.20:5060".into()),
        ..config()
    });
    assert_eq!(
        header(rig.last(), "Route"),
        Some("<sip:192.0.2.20:5060;lr>")
    );
    rig.reply(
        407,
        &[(
            "Proxy-Authenticate",
            "Digest realm=\"proxy\", nonce=\"p1\"".into(),
        )],
    );
    assert!(header(rig.last(), "Proxy-Authorization").is_some());
    rig.challenge("r1", false);
    let third = rig.last().clone();
    assert!(header(&third, "Proxy-Authorization").is_some_and(|value| value.contains("\"p1\"")));
    assert!(header(&third, "Authorization").is_some_and(|value| value.contains("\"r1\"")));
    rig.ok(600);
    assert!(rig.registration.is_up());
}

#[test]
fn contact_is_rewritten_when_the_registrar_sees_another_address() {
    let mut rig = Rig::new(config());
    rig.seen_from = PUBLIC.parse().unwrap();
    rig.ok(3_600);
    let public = "sip:voxgate@203.0.113.7:40000;transport=udp";
    assert!(rig.events.contains(&Event::ContactRewritten {
        old: CONTACT.into(),
        new: public.into(),
    }));
    // At once: the new Contact, and the old binding removed in the same request.
    let rewrite = rig.last().clone();
    assert_eq!(rig.sent.len(), 2);
    assert_eq!(rewrite.cseq().seq, 2);
    assert_eq!(
        contacts(&rewrite),
        [
            format!("<{public}>;expires=3600"),
            format!("<{CONTACT}>;expires=0")
        ]
    );
    rig.ok(3_600);
    assert_eq!(rig.registration.contact(), public);
    // Same address seen again: no flapping, the next REGISTER is the refresh, new Contact only.
    assert_eq!(rig.next_register(secs(7_200)), Some(secs(3_540)));
    assert_eq!(contacts(rig.last()), [format!("<{public}>;expires=3600")]);
    rig.ok(3_600);
    assert_eq!(rig.next_register(secs(7_200)), Some(secs(2 * 3_540)));
    // The NAT mapping changes: rewritten again, once.
    rig.seen_from = "203.0.113.7:40001".parse().unwrap();
    rig.ok(3_600);
    assert_eq!(rig.sent.len(), 5);
    assert_eq!(
        contacts(rig.last()),
        [
            "<sip:voxgate@203.0.113.7:40001;transport=udp>;expires=3600".to_owned(),
            format!("<{public}>;expires=0")
        ]
    );
}

#[test]
fn a_nat_showing_a_new_address_every_time_does_not_make_a_loop() {
    let mut rig = Rig::new(config());
    rig.seen_from = PUBLIC.parse().unwrap();
    rig.ok(3_600);
    assert_eq!(rig.sent.len(), 2, "the first rewrite re-registers at once");
    rig.seen_from = "203.0.113.7:40001".parse().unwrap();
    rig.ok(3_600);
    // The second rewrite in a row waits for the refresh, which carries it.
    assert_eq!(rig.sent.len(), 2);
    let newest = "sip:voxgate@203.0.113.7:40001;transport=udp";
    assert_eq!(rig.registration.contact(), newest);
    assert_eq!(rig.next_register(secs(7_200)), Some(secs(3_540)));
    assert_eq!(
        contacts(rig.last()),
        [
            format!("<{newest}>;expires=3600"),
            "<sip:voxgate@203.0.113.7:40000;transport=udp>;expires=0".to_owned()
        ]
    );
    // Seen from the newest address now: settled.
    rig.ok(3_600);
    assert_eq!(rig.next_register(secs(7_200)), Some(secs(2 * 3_540)));
}

#[test]
fn no_rewrite_when_disabled_or_nothing_learned() {
    let mut rig = Rig::new(RegistrationConfig {
        rewrite_contact: false,
        ..config()
    });
    rig.seen_from = PUBLIC.parse().unwrap();
    rig.ok(3_600);
    assert_eq!(rig.sent.len(), 1);
    assert_eq!(rig.registration.contact(), CONTACT);
    // Seen from our own address: nothing to rewrite.
    let mut rig = Rig::new(config());
    rig.ok(3_600);
    assert_eq!(rig.sent.len(), 1);
}

#[test]
fn lost_registration_recovers_by_itself() {
    let mut rig = Rig::new(config());
    rig.ok(120);
    // The refresh at 60 s gets no answer (registrar down), nor does the retry.
    assert_eq!(rig.next_register(secs(600)), Some(secs(60)));
    let retry = rig.next_register(secs(600)).expect("a retry");
    assert!(rig.registration.is_up(), "binding still valid until 120 s");
    assert!(retry < secs(120));
    // The binding lapses at 120 s: down, reported once.
    rig.advance(secs(120) - rig.since_t0() + ms(1));
    assert!(!rig.registration.is_up());
    assert_eq!(
        rig.events
            .iter()
            .filter(|event| matches!(event, Event::Down { .. }))
            .count(),
        1
    );
    // The registrar is back (restarted, empty): the next retry registers again.
    rig.next_register(secs(600)).expect("a retry");
    rig.challenge("fresh", false);
    rig.ok(120);
    assert!(rig.registration.is_up());
    assert_eq!(
        rig.events
            .iter()
            .filter(|event| matches!(event, Event::Up { .. }))
            .count(),
        2
    );
}

#[test]
fn binding_lost_hint_refreshes_early_but_not_in_a_loop() {
    let mut rig = Rig::new(config());
    rig.ok(3_600);
    rig.advance(secs(100));
    rig.registration.handle_binding_lost(rig.now);
    assert_eq!(rig.next_register(secs(1)), Some(secs(100)));
    rig.ok(3_600);
    // Another hint right after: not sooner than 5 s after the last REGISTER.
    rig.registration.handle_binding_lost(rig.now);
    assert_eq!(rig.next_register(secs(60)), Some(secs(105)));
}

#[test]
fn a_2xx_without_our_contact_is_accepted_without_looping() {
    let mut rig = Rig::new(config());
    rig.reply(
        200,
        &[
            ("Contact", "<sip:other@198.51.100.9>;expires=50".into()),
            ("Expires", "600".into()),
        ],
    );
    assert!(rig.registration.is_up());
    assert!(!rig.registration.is_contact_listed());
    assert_eq!(rig.registration.granted_expires(), Some(secs(600)));
    assert!(rig.last_attempt().description.contains("not listed"));
    assert_eq!(rig.next_register(secs(3_600)), Some(secs(540)));
}

#[test]
fn a_grant_longer_than_asked_is_refreshed_as_asked() {
    let mut rig = Rig::new(RegistrationConfig {
        expires: secs(600),
        ..config()
    });
    rig.ok(4_000_000_000);
    assert_eq!(rig.registration.granted_expires(), Some(secs(600)));
    assert_eq!(rig.next_register(secs(3_600)), Some(secs(540)));
    // A Min-Expires beyond a day is not followed.
    rig.reply(423, &[("Min-Expires", "4000000000".into())]);
    assert_eq!(rig.last_attempt().result, AttemptResult::IntervalTooBrief);
    assert!(rig.last_attempt().retry_in.is_some());
}

#[test]
fn a_2xx_keeping_no_binding_counts_as_refused() {
    let mut rig = Rig::new(config());
    rig.ok(0);
    assert!(!rig.registration.is_up());
    assert_eq!(rig.last_attempt().result, AttemptResult::Refused);
    assert!(rig.last_attempt().retry_in.is_some());
}

#[test]
fn unregister_sends_expires_zero_and_finishes_on_the_final_response() {
    let mut rig = Rig::new(config());
    rig.challenge("n1", false);
    rig.ok(3_600);
    rig.advance(secs(10));
    rig.registration.unregister(rig.now);
    rig.pump();
    let bye = rig.last().clone();
    assert_eq!(bye.cseq().seq, 3);
    assert_eq!(header(&bye, "Expires"), Some("0"));
    assert_eq!(contacts(&bye), [format!("<{CONTACT}>;expires=0")]);
    assert!(
        header(&bye, "Authorization").is_some(),
        "credentials sent ahead"
    );
    assert!(!rig.registration.is_up());
    // The nonce expired meanwhile: answered, then done.
    rig.challenge("n2", true);
    assert_eq!(header(rig.last(), "Expires"), Some("0"));
    assert!(!rig.registration.is_finished());
    rig.reply(200, &[]);
    assert!(rig.registration.is_finished());
    assert_eq!(rig.events.last(), Some(&Event::Finished));
    assert_eq!(rig.registration.poll_timeout(), None);
    assert!(rig
        .last_attempt()
        .description
        .contains("Unregistering from"));
}

#[test]
fn unregister_finishes_on_timeout_or_failure() {
    let mut rig = Rig::new(config());
    rig.ok(3_600);
    rig.registration.unregister(rig.now);
    rig.pump();
    assert_eq!(
        rig.next_register(secs(600)),
        None,
        "no retry after a timeout"
    );
    assert!(rig.registration.is_finished());
    assert_eq!(rig.last_attempt().result, AttemptResult::TimedOut);
    assert_eq!(rig.last_attempt().retry_in, None);

    let mut rig = Rig::new(config());
    rig.ok(3_600);
    rig.registration.unregister(rig.now);
    rig.pump();
    rig.reply(503, &[("Retry-After", "30".into())]);
    assert!(rig.registration.is_finished());
    // A REGISTER in flight is superseded: its late response changes nothing.
    let mut rig = Rig::new(config());
    let first = rig.last().clone();
    rig.registration.unregister(rig.now);
    rig.pump();
    assert_eq!(rig.last().cseq().seq, 2);
    assert_eq!(header(rig.last(), "Expires"), Some("0"));
    let contact = format!("<{CONTACT}>;expires=3600");
    rig.reply_to(&first, 200, &[("Contact", contact)]);
    assert!(!rig.registration.is_up());
    assert!(!rig.registration.is_finished());
    assert!(rig.attempts().is_empty());
    rig.reply(200, &[]);
    assert!(rig.registration.is_finished());
}

#[test]
fn the_timeout_of_a_superseded_register_is_ignored() {
    let mut rig = Rig::new(config());
    rig.registration.unregister(rig.now);
    rig.pump();
    // Both transactions are unanswered; CSeq 1 failing must not end the unregistration,
    // CSeq 2 failing does.
    rig.registration.handle_request_timeout(rig.now, 1);
    assert!(!rig.registration.is_finished());
    rig.registration.handle_transport_error(rig.now, 1);
    assert!(!rig.registration.is_finished());
    rig.registration.handle_transport_error(rig.now, 2);
    assert!(rig.registration.is_finished());
    assert_eq!(
        rig.registration.last_result(),
        Some(AttemptResult::TransportError)
    );
}

#[test]
fn retry_after_on_503_wins_over_the_backoff() {
    let mut rig = Rig::new(config());
    rig.reply(503, &[("Retry-After", "120 (maintenance)".into())]);
    let attempt = rig.last_attempt();
    assert_eq!(attempt.result, AttemptResult::ServerError);
    assert_eq!(attempt.retry_in, Some(secs(120)));
    assert!(
        attempt
            .description
            .contains("503 Service Unavailable; retrying in 120 s"),
        "{}",
        attempt.description
    );
    assert_eq!(rig.next_register(secs(3_600)), Some(secs(120)));
    // Retry-After: 0 is floored at the first backoff step, never a tight loop.
    rig.reply(503, &[("Retry-After", "0".into())]);
    assert_eq!(rig.next_register(secs(3_600)), Some(secs(125)));
}

#[test]
fn stray_and_provisional_responses_are_ignored() {
    let mut rig = Rig::new(config());
    rig.reply(100, &[]);
    assert!(rig.events.is_empty());
    rig.challenge("n1", false);
    // A late answer to CSeq 1 (the endpoint no longer has its transaction; fed directly).
    let mut old = rig.sent[0].1.clone();
    old.stamp_source(rig.seen_from);
    let text = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 REGISTER\r\n\
         Content-Length: 0\r\n\r\n",
        old.top_via().to_header_value(),
        old.from(),
        old.to(),
        old.call_id()
    );
    let Ok(Message::Response(stale)) = message::parse(text.as_bytes(), Transport::Udp, 65_535)
    else {
        panic!("test response does not parse");
    };
    rig.registration.handle_response(rig.now, &stale);
    assert!(!rig.registration.is_up());
    assert_eq!(rig.attempts(), [AttemptResult::AuthRequired]);
}

#[test]
fn contact_matching_compares_user_host_and_port() {
    assert!(same_binding(
        "sip:voxgate@10.0.0.5:5060;transport=udp",
        "sip:voxgate@10.0.0.5:5060"
    ));
    assert!(same_binding(
        "sip:v@Host.Example:5060",
        "sip:v@host.example"
    ));
    assert!(!same_binding("sip:v@10.0.0.5:5060", "sip:w@10.0.0.5:5060"));
    assert!(!same_binding("sip:v@10.0.0.5:5060", "sip:v@10.0.0.5:5062"));
    assert_eq!(
        parse_binding("\"a<b\" <sip:v@h>;q=0.5;EXPIRES=77"),
        Some(("sip:v@h".into(), Some(77)))
    );
    assert_eq!(
        parse_binding("sip:v@h;expires=30"),
        Some(("sip:v@h".into(), Some(30)))
    );
    assert_eq!(parse_binding("<sip:v@h"), None);
    assert_eq!(
        loose_route("<sip:p.example.com;lr>"),
        "<sip:p.example.com;lr>"
    );
    assert_eq!(loose_route("sip:p.example.com"), "<sip:p.example.com;lr>");
    assert_eq!(
        hostport_of("sip:pbx.example.com:5080;transport=tcp"),
        "pbx.example.com:5080"
    );
    assert_eq!(leading_number("120 (x);duration=3"), Some(120));
    assert_eq!(leading_number("soon"), None);
}

#[test]
fn attempt_labels_are_distinct() {
    let mut labels: Vec<&str> = AttemptResult::ALL
        .iter()
        .map(|result| result.label())
        .collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), AttemptResult::ALL.len());
    assert_eq!(AttemptResult::of_failure(404).label(), "error_4xx");
    assert_eq!(AttemptResult::of_failure(403).label(), "refused");
    assert_eq!(AttemptResult::of_failure(604).label(), "error_6xx");
}
