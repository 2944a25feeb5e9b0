//! Registrations through the switchboard in virtual time: a register-mode trunk next to the
//! static trunk `pbx`, a registrar played by the test, calls arriving over the registration,
//! keepalives, and unregistration at drain.

use std::net::SocketAddr;
use std::time::Duration;

use crate::call::registrations::UNREGISTER_TIMEOUT;
use crate::call::Output;
use crate::config::{Secret, Settings, TrunkMode, TrunkSettings, TrunkTransport};
use crate::sip::auth::Credentials;
use crate::sip::endpoint::Target;
use crate::sip::message::{self, Request, Transport};
use crate::sip::registration::AttemptResult;
use crate::testkit::{self, offer, secs, Caller, Harness};

const REGISTRAR: &str = "198.51.100.20:5060";
/// Outside every trunk's `allow_from` and not the registrar.
const STRANGER: &str = "203.0.113.9:5060";

fn registrar() -> SocketAddr {
    REGISTRAR.parse().expect("literal address")
}

fn stranger() -> SocketAddr {
    STRANGER.parse().expect("literal address")
}

/// testkit's settings plus the register-mode trunk `carrier` (user `bot`, password `pw`).
fn settings(keepalive_secs: Option<u32>) -> Settings {
    let mut settings = testkit::settings();
    settings.trunks.push(TrunkSettings {
        name: "carrier".into(),
        mode: TrunkMode::Register,
        registrar: Some(format!("sip:{REGISTRAR}")),
        username: Some("bot".into()),
        password_env: Some("CARRIER_PASSWORD".into()),
        keepalive_secs,
        password: Some(Secret::new("pw")),
        ..TrunkSettings::default()
    });
    settings
}

/// The register-mode trunk's status.
fn carrier_status(harness: &Harness) -> crate::call::registrations::RegistrationStatus<'_> {
    harness
        .switchboard
        .registrations()
        .next()
        .expect("a status")
}

/// The next REGISTER voxgate sends within `limit`.
fn next_register(harness: &mut Harness, limit: Duration) -> Option<Request> {
    harness
        .next_request("REGISTER", limit)
        .map(|(_, request)| request)
}

/// The next keepalive OPTIONS after the one with CSeq `after` (its retransmissions skipped).
fn next_keepalive(harness: &mut Harness, after: u32, limit: Duration) -> Request {
    harness
        .run_until(limit, |sent| {
            sent.request()
                .filter(|r| r.method().to_string() == "OPTIONS" && r.cseq().seq > after)
                .cloned()
        })
        .map(|(_, request)| request)
        .expect("a new keepalive")
}

/// The registrar's response to `request`: Via, From, To (tagged), Call-ID, CSeq, `extra`.
fn registrar_response(request: &Request, status: u16, extra: &[(&str, String)]) -> String {
    let mut text = format!("SIP/2.0 {status} {}\r\n", message::default_reason(status));
    for via in request.headers_named("Via") {
        text.push_str(&format!("Via: {via}\r\n"));
    }
    text.push_str(&format!(
        "From: {}\r\nTo: {};tag=registrar\r\nCall-ID: {}\r\nCSeq: {} {}\r\n",
        request.from(),
        request.to(),
        request.call_id(),
        request.cseq().seq,
        request.cseq().method
    ));
    for (name, value) in extra {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    text
}

/// 200 binding every Contact the REGISTER adds for `granted` seconds.
fn ok(request: &Request, granted: u32) -> String {
    let contacts: Vec<(&str, String)> = request
        .header_tokens("Contact")
        .into_iter()
        .filter(|contact| !contact.ends_with("expires=0"))
        .map(|contact| {
            let uri = contact.split(">;").next().unwrap_or_default().to_owned();
            ("Contact", format!("{uri}>;expires={granted}"))
        })
        .collect();
    registrar_response(request, 200, &contacts)
}

const CHALLENGE: &str = r#"Digest realm="carrier", nonce="n0nce", qop="auth", algorithm=MD5"#;

/// Starts the registration and answers it (401, then 200 for `granted` seconds).
fn registered(harness: &mut Harness, granted: u32) {
    harness.next_hop("carrier", registrar(), Transport::Udp);
    let first = next_register(harness, secs(1)).expect("REGISTER sent");
    harness.send_from(
        registrar(),
        &registrar_response(&first, 401, &[("WWW-Authenticate", CHALLENGE.into())]),
    );
    let answered = next_register(harness, secs(1)).expect("REGISTER with credentials");
    harness.send_from(registrar(), &ok(&answered, granted));
    let status = harness
        .switchboard
        .registrations()
        .next()
        .map(|status| status.up);
    assert_eq!(status, Some(true), "registered");
}

#[test]
fn registers_once_the_next_hop_is_known_and_answers_the_challenge() {
    let mut harness = Harness::new(&settings(None));
    harness.advance(secs(10));
    assert!(
        harness.take_requests().is_empty(),
        "nothing goes out before io/ resolved the registrar"
    );
    let status = carrier_status(&harness);
    assert_eq!(
        (status.trunk, status.up, status.stats.is_none()),
        ("carrier", false, true)
    );

    harness.next_hop("carrier", registrar(), Transport::Udp);
    let sent = harness.take();
    let register = sent
        .iter()
        .find(|sent| {
            sent.request()
                .is_some_and(|r| r.method().to_string() == "REGISTER")
        })
        .expect("REGISTER sent at once");
    assert_eq!(register.target, Target::Addr(registrar()));
    let first = register.request().expect("a request").clone();
    assert_eq!(first.request_uri(), format!("sip:{REGISTRAR}"));
    assert_eq!(first.to(), format!("<sip:bot@198.51.100.20>"));
    assert_eq!(
        first.header("Contact"),
        Some("<sip:bot@192.0.2.1:5060;transport=udp>;expires=3600")
    );
    harness.send_from(
        registrar(),
        &registrar_response(&first, 401, &[("WWW-Authenticate", CHALLENGE.into())]),
    );
    let answered = next_register(&mut harness, secs(1)).expect("REGISTER with credentials");
    let credentials = Credentials::parse(answered.header("Authorization").expect("Authorization"))
        .expect("parses");
    assert_eq!(
        (credentials.username.as_str(), credentials.uri.as_str()),
        ("bot", "sip:198.51.100.20:5060")
    );
    harness.send_from(registrar(), &ok(&answered, 300));
    let status = carrier_status(&harness);
    assert!(status.up);
    assert_eq!(status.expires, Some(secs(300)));
    let stats = status.stats.expect("stats");
    assert_eq!(
        (
            stats.attempts(AttemptResult::AuthRequired),
            stats.attempts(AttemptResult::Ok)
        ),
        (1, 1)
    );

    // The refresh goes out a minute before the grant ends, with credentials sent ahead.
    let (at, refresh) = harness
        .next_request("REGISTER", secs(400))
        .expect("refreshed");
    assert_eq!(at - testkit::t0(), secs(10 + 240));
    assert!(refresh
        .header("Authorization")
        .is_some_and(|a| a.contains("nc=00000002")));
}

#[test]
fn calls_to_the_registered_contact_or_from_the_registrar_come_over_the_trunk() {
    let mut harness = Harness::new(&settings(None));
    registered(&mut harness, 3_600);
    let trunk_of_call = |harness: &mut Harness| -> Option<String> {
        harness
            .take_outputs()
            .into_iter()
            .find_map(|output| match output {
                Output::AllocateMedia { trunk, .. } => Some(trunk),
                _ => None,
            })
    };

    // To the registered Contact, from an address no trunk allows.
    let mut caller = Caller::new("bot");
    harness.send_from(stranger(), &caller.invite(&[], Some(&offer(1, "sendrecv"))));
    assert_eq!(harness.final_response("INVITE").status(), 200);
    assert_eq!(trunk_of_call(&mut harness).as_deref(), Some("carrier"));

    // From the registrar, to any user.
    let mut caller = Caller::new("reception");
    harness.send_from(
        registrar(),
        &caller.invite(&[], Some(&offer(1, "sendrecv"))),
    );
    assert_eq!(harness.final_response("INVITE").status(), 200);
    assert_eq!(trunk_of_call(&mut harness).as_deref(), Some("carrier"));

    // From the static trunk's PBX: that trunk.
    let mut caller = Caller::new("echo");
    harness.send(&caller.invite(&[], Some(&offer(1, "sendrecv"))));
    assert_eq!(harness.final_response("INVITE").status(), 200);
    assert_eq!(trunk_of_call(&mut harness).as_deref(), Some("pbx"));

    // Neither: refused as before.
    let mut caller = Caller::new("reception");
    harness.send_from(stranger(), &caller.invite(&[], Some(&offer(1, "sendrecv"))));
    assert_eq!(harness.final_response("INVITE").status(), 403);
}

#[test]
fn an_unanswered_keepalive_registers_again_and_an_answered_one_does_not() {
    let mut harness = Harness::new(&settings(Some(30)));
    registered(&mut harness, 3_600);
    let registered_at = harness.now;

    // Any final response keeps the registration as it is.
    let (at, options) = harness
        .next_request("OPTIONS", secs(31))
        .expect("keepalive sent");
    assert_eq!(at - registered_at, secs(30));
    assert_eq!(options.request_uri(), format!("sip:{REGISTRAR}"));
    harness.send_from(registrar(), &registrar_response(&options, 404, &[]));
    let (at, second) = harness
        .next_request("OPTIONS", secs(31))
        .expect("next keepalive");
    assert_eq!(at - registered_at, secs(60));
    assert_ne!(second.cseq().seq, options.cseq().seq);
    assert!(harness
        .take_requests()
        .iter()
        .all(|r| r.method().to_string() != "REGISTER"));

    // No answer within Timer F (64·T1 = 32 s): register again at once.
    let register = harness
        .next_request("REGISTER", secs(33))
        .map(|(at, request)| (at - registered_at, request));
    let (after, register) = register.expect("re-registered after the keepalive failed");
    assert_eq!(after, secs(60 + 32));
    assert_eq!(register.header("Expires"), Some("3600"));
    harness.send_from(registrar(), &ok(&register, 3_600));

    // A registrar that goes on ignoring OPTIONS costs no REGISTER per keepalive ...
    let unanswered = next_keepalive(&mut harness, second.cseq().seq, secs(31));
    assert!(
        harness.next_request("REGISTER", secs(40)).is_none(),
        "a REGISTER per failed keepalive"
    );
    // ... and when it answers again, voxgate refreshes once (it may have restarted).
    let answered = next_keepalive(&mut harness, unanswered.cseq().seq, secs(31));
    harness.send_from(registrar(), &registrar_response(&answered, 200, &[]));
    assert!(
        next_register(&mut harness, secs(1)).is_some(),
        "refreshed on recovery"
    );
}

#[test]
fn drain_unregisters_and_waits_for_the_answer() {
    let mut harness = Harness::new(&settings(Some(30)));
    registered(&mut harness, 3_600);
    let (_, options) = harness
        .next_request("OPTIONS", secs(31))
        .expect("keepalive sent");
    let deadline = harness.now + secs(30);
    harness.begin_drain(deadline);
    // The keepalive in flight is answered during the drain: it schedules no other.
    harness.send_from(registrar(), &registrar_response(&options, 200, &[]));
    let unregister = next_register(&mut harness, secs(1)).expect("REGISTER Expires: 0");
    assert_eq!(unregister.header("Expires"), Some("0"));
    assert!(
        unregister.header("Authorization").is_some(),
        "credentials sent ahead"
    );
    assert!(
        !harness
            .take_outputs()
            .iter()
            .any(|o| matches!(o, Output::Drained)),
        "not drained before the registrar answered"
    );
    harness.send_from(registrar(), &registrar_response(&unregister, 200, &[]));
    assert!(harness
        .take_outputs()
        .iter()
        .any(|o| matches!(o, Output::Drained)));
    harness.advance(secs(120));
    assert!(
        harness.take_requests().is_empty(),
        "no keepalive or refresh after unregistering"
    );
}

#[test]
fn drain_gives_up_on_an_unanswered_unregistration() {
    let mut harness = Harness::new(&settings(None));
    registered(&mut harness, 3_600);
    let start = harness.now;
    harness.begin_drain(start + secs(30));
    harness.advance(UNREGISTER_TIMEOUT - Duration::from_millis(1));
    assert!(!harness
        .take_outputs()
        .iter()
        .any(|o| matches!(o, Output::Drained)));
    harness.advance(Duration::from_millis(1));
    assert!(harness
        .take_outputs()
        .iter()
        .any(|o| matches!(o, Output::Drained)));
}

#[test]
fn a_trunk_never_resolved_does_not_hold_up_the_drain() {
    let mut harness = Harness::new(&settings(None));
    harness.begin_drain(harness.now + secs(30));
    assert!(harness
        .take_outputs()
        .iter()
        .any(|o| matches!(o, Output::Drained)));
    assert!(harness.take_requests().is_empty());
}

#[test]
fn a_closed_tcp_connection_to_the_registrar_refreshes_the_registration() {
    let mut settings = settings(None);
    settings.trunks[1].transport = Some(TrunkTransport::Tcp);
    let mut harness = Harness::new(&settings);
    let hops = harness.switchboard.next_hops();
    assert_eq!(
        (hops[0].host.as_str(), hops[0].port, hops[0].transport),
        ("198.51.100.20", Some(5060), Transport::Tcp)
    );
    harness.next_hop("carrier", registrar(), Transport::Tcp);
    let first = next_register(&mut harness, secs(1)).expect("REGISTER");
    assert!(first
        .header("Contact")
        .is_some_and(|c| c.contains("transport=tcp")));
    harness.send_from(registrar(), &ok(&first, 3_600));
    harness.advance(secs(10));
    // The registrar sends calls over that connection: it is in use, idle or not.
    let connection = crate::sip::endpoint::ConnectionId(3);
    assert!(harness.switchboard.uses_connection(connection, registrar()));
    assert!(!harness.switchboard.uses_connection(connection, stranger()));
    harness.connection_closed(crate::sip::endpoint::ConnectionId(4), stranger());
    assert!(
        next_register(&mut harness, secs(1)).is_none(),
        "another peer's connection"
    );
    harness.connection_closed(connection, registrar());
    let refresh = next_register(&mut harness, secs(1)).expect("refreshed at once");

    // The new connection closes too while that REGISTER waits for its answer: the REGISTER
    // fails (a transport error, not Timer F), and the one retry follows the backoff.
    let closed = harness.now;
    harness.connection_closed(crate::sip::endpoint::ConnectionId(5), registrar());
    let (at, retry) = harness
        .next_request("REGISTER", secs(10))
        .expect("retried before Timer F");
    assert!(
        (secs(4)..=secs(6)).contains(&(at - closed)),
        "after the first backoff (5 s ± 20 %), once: {:?}",
        at - closed
    );
    assert_eq!(retry.cseq().seq, refresh.cseq().seq + 1);
    assert!(
        next_register(&mut harness, secs(5)).is_none(),
        "no second retry"
    );
}

/// Three servers of one registrar, as SRV would list them (RFC 3263).
fn servers() -> [SocketAddr; 3] {
    [
        "198.51.100.21:5060".parse().expect("literal address"),
        "198.51.100.22:5070".parse().expect("literal address"),
        "198.51.100.23:5060".parse().expect("literal address"),
    ]
}

/// The next REGISTER with a CSeq above `after` (retransmissions skipped) within `limit`: when
/// it went, where, and the request.
fn next_new_register(
    harness: &mut Harness,
    after: u32,
    limit: Duration,
) -> Option<(std::time::Instant, SocketAddr, Request)> {
    harness
        .run_until(limit, |sent| {
            let request = sent
                .request()
                .filter(|r| r.method().to_string() == "REGISTER" && r.cseq().seq > after)?;
            match sent.target {
                Target::Addr(address) => Some((address, request.clone())),
                _ => None,
            }
        })
        .map(|(at, (address, request))| (at, address, request))
}

#[test]
fn a_silent_server_then_a_503_fail_over_at_once_and_the_registration_stays_where_it_succeeded() {
    let [a, b, c] = servers();
    let mut harness = Harness::new(&settings(None));
    let start = harness.now;
    harness.next_hops("carrier", &[a, b, c], Transport::Udp);
    let (_, to, first) = next_new_register(&mut harness, 0, secs(1)).expect("REGISTER");
    assert_eq!(to, a, "the first server first");

    // a never answers: Timer F (64·T1 = 32 s), then b at once, same Call-ID, next CSeq.
    let (at, to, second) =
        next_new_register(&mut harness, first.cseq().seq, secs(40)).expect("fail-over");
    assert_eq!(to, b);
    assert_eq!(at - start, secs(32), "at Timer F, not after a backoff");
    assert_eq!(
        second.call_id(),
        first.call_id(),
        "one registration, one Call-ID"
    );

    // b is overloaded: 503 (even with Retry-After) moves on to c at once.
    harness.send_from(
        b,
        &registrar_response(&second, 503, &[("Retry-After", "120".into())]),
    );
    let (at2, to, third) =
        next_new_register(&mut harness, second.cseq().seq, secs(1)).expect("fail-over");
    assert_eq!((to, at2), (c, at));
    harness.send_from(
        c,
        &registrar_response(&third, 401, &[("WWW-Authenticate", CHALLENGE.into())]),
    );
    let (_, to, answered) =
        next_new_register(&mut harness, third.cseq().seq, secs(1)).expect("credentials");
    assert_eq!(to, c, "the challenge is answered where it came from");
    harness.send_from(c, &ok(&answered, 600));
    let status = carrier_status(&harness);
    assert!(status.up);
    let stats = status.stats.expect("attempts");
    assert_eq!(
        (
            stats.attempts(AttemptResult::TimedOut),
            stats.attempts(AttemptResult::ServerError),
            stats.attempts(AttemptResult::Ok)
        ),
        (1, 1, 1)
    );

    // The refresh (600 − 60 s later) goes to c, where the binding is.
    let (_, to, _) =
        next_new_register(&mut harness, answered.cseq().seq, secs(600)).expect("refresh");
    assert_eq!(to, c);
    // A call from any of the registrar's servers comes over the registration.
    let mut caller = Caller::new("reception");
    harness.send_from(b, &caller.invite(&[], Some(&offer(1, "sendrecv"))));
    assert_eq!(harness.final_response("INVITE").status(), 200);
    let trunk = harness
        .take_outputs()
        .into_iter()
        .find_map(|output| match output {
            Output::AllocateMedia { trunk, .. } => Some(trunk),
            _ => None,
        });
    assert_eq!(trunk.as_deref(), Some("carrier"));
}

#[test]
fn when_every_server_failed_it_backs_off_then_starts_again_from_the_first() {
    let [a, b, _] = servers();
    let mut harness = Harness::new(&settings(None));
    harness.next_hops("carrier", &[a, b], Transport::Udp);
    let (_, to, first) = next_new_register(&mut harness, 0, secs(1)).expect("REGISTER");
    assert_eq!(to, a);
    harness.send_from(a, &registrar_response(&first, 503, &[]));
    let (failed_at, to, second) =
        next_new_register(&mut harness, first.cseq().seq, secs(1)).expect("fail-over");
    assert_eq!(to, b);
    harness.send_from(b, &registrar_response(&second, 503, &[]));
    // Both refused: the first backoff (5 s ± 20 %), then the most preferred server again.
    let (at, to, _) = next_new_register(&mut harness, second.cseq().seq, secs(10)).expect("retry");
    assert_eq!(to, a);
    let waited = at - failed_at;
    assert!(
        (secs(4)..=secs(6)).contains(&waited),
        "backed off {waited:?}"
    );
}

#[test]
fn a_server_that_cannot_be_reached_over_tcp_fails_over_at_once() {
    let [a, b, _] = servers();
    let mut harness = Harness::new(&settings(None));
    harness.next_hops("carrier", &[a, b], Transport::Tcp);
    let sent = harness
        .run_until(secs(1), |sent| {
            sent.request()
                .filter(|r| r.method().to_string() == "REGISTER")
                .map(|_| sent.clone())
        })
        .map(|(_, sent)| sent)
        .expect("REGISTER");
    assert_eq!(sent.target, Target::Addr(a));
    let first = sent.request().expect("a request").clone();
    let refused_at = harness.now;
    // The connection to a was refused: no Timer F (32 s) to wait for.
    harness.send_failed(&sent);
    let (at, to, second) =
        next_new_register(&mut harness, first.cseq().seq, secs(1)).expect("fail-over");
    assert_eq!((to, at), (b, refused_at));
    assert_eq!(second.call_id(), first.call_id());
    harness.send_from(b, &ok(&second, 600));
    let status = carrier_status(&harness);
    assert!(status.up);
    let stats = status.stats.expect("attempts");
    assert_eq!(
        (
            stats.attempts(AttemptResult::TransportError),
            stats.attempts(AttemptResult::Ok)
        ),
        (1, 1)
    );
}

#[test]
fn a_refusal_is_the_registrars_answer_and_does_not_fail_over() {
    let [a, b, _] = servers();
    let mut harness = Harness::new(&settings(None));
    harness.next_hops("carrier", &[a, b], Transport::Udp);
    let (_, _, first) = next_new_register(&mut harness, 0, secs(1)).expect("REGISTER");
    harness.send_from(a, &registrar_response(&first, 403, &[]));
    assert!(
        next_new_register(&mut harness, first.cseq().seq, secs(3)).is_none(),
        "a 403 backs off"
    );
    let (_, to, _) = next_new_register(&mut harness, first.cseq().seq, secs(10)).expect("retry");
    assert_eq!(to, a, "the same server, after the backoff");
}

#[test]
fn a_dns_change_that_drops_the_current_server_re_registers_with_the_new_first_one() {
    let [a, b, c] = servers();
    let mut harness = Harness::new(&settings(None));
    harness.next_hops("carrier", &[a, b], Transport::Udp);
    let (_, _, first) = next_new_register(&mut harness, 0, secs(1)).expect("REGISTER");
    harness.send_from(a, &ok(&first, 3_600));
    harness.advance(secs(30));

    // The same servers in another order, or a new one added: nothing to do now.
    harness.next_hops("carrier", &[b, a, c], Transport::Udp);
    assert!(
        next_new_register(&mut harness, first.cseq().seq, secs(60)).is_none(),
        "the current server is still listed"
    );
    // a is gone from DNS: register with the new first server now.
    harness.next_hops("carrier", &[c, b], Transport::Udp);
    let (_, to, moved) =
        next_new_register(&mut harness, first.cseq().seq, secs(1)).expect("re-register");
    assert_eq!(to, c);
    harness.send_from(c, &ok(&moved, 3_600));
    // c silent at the refresh: fails over to b, the next in the new list.
    let (_, to, refresh) =
        next_new_register(&mut harness, moved.cseq().seq, secs(3_600)).expect("refresh");
    assert_eq!(to, c);
    let (_, to, _) =
        next_new_register(&mut harness, refresh.cseq().seq, secs(40)).expect("fail-over");
    assert_eq!(to, b);
}
