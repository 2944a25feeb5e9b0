//! Digest authentication against a fake PBX in virtual time (see [`crate::testkit`]): callers
//! outside `allow_from` challenged, admitted, refused and replayed (inbound), and voxgate's own
//! BYE and session refreshes answering 401/407 with the trunk's credentials (outbound). The PBX
//! side challenges and verifies with the crate's own [`DigestVerifier`].

use std::net::SocketAddr;

use crate::call::inbound_auth::AuthResult;
use crate::call::{CallKey, Output};
use crate::config::{Secret, Settings, TrunkSettings, TrunkUser};
use crate::sip::auth::{
    Challenge, ChallengeOrigin, ChallengeOutcome, ClientCredentials, Credentials, DigestClient,
    DigestVerifier, NonceCount, Verdict, VerifierConfig,
};
use crate::sip::endpoint::Target;
use crate::sip::message::{Request, Response};
use crate::testkit::{answer, offer, secs, settings, t0, Caller, Harness, VOXGATE};

const STRANGER: &str = "198.51.100.7:5060";
const PASSWORD: &str = "s3cret pbx";

fn stranger() -> SocketAddr {
    STRANGER.parse().expect("literal address")
}

/// The test settings plus a trunk `remote` whose user `pbx1` may call from anywhere.
fn inbound_settings() -> Settings {
    let mut settings = settings();
    settings.trunks.push(TrunkSettings {
        name: "remote".into(),
        users: vec![TrunkUser {
            username: "pbx1".into(),
            password_env: Some("PBX1_PASSWORD".into()),
            password: Some(Secret::new(PASSWORD)),
            ..TrunkUser::default()
        }],
        ..TrunkSettings::default()
    });
    settings
}

/// The test settings with outbound credentials on trunk `pbx`.
fn outbound_settings() -> Settings {
    let mut settings = settings();
    if let Some(trunk) = settings.trunks.first_mut() {
        trunk.outbound_username = Some("voxgate".into());
        trunk.outbound_password_env = Some("VOXGATE_PASSWORD".into());
        trunk.outbound_password = Some(Secret::new(PASSWORD));
    }
    settings
}

fn final_from(h: &mut Harness, method: &str) -> (Response, Vec<Target>) {
    let sent = h.take();
    let targets = sent.iter().map(|s| s.target.clone()).collect();
    let response = sent
        .iter()
        .filter_map(|s| s.response())
        .find(|r| r.status() >= 200 && r.cseq().method.to_string() == method)
        .cloned()
        .unwrap_or_else(|| panic!("no final response to {method}"));
    (response, targets)
}

fn challenges(response: &Response) -> Vec<String> {
    response
        .headers_named("WWW-Authenticate")
        .map(str::to_owned)
        .collect()
}

fn trunk_of(outputs: &[Output]) -> Option<(CallKey, String)> {
    outputs.iter().find_map(|output| match output {
        Output::AllocateMedia { call, trunk, .. } => Some((*call, trunk.clone())),
        _ => None,
    })
}

/// An INVITE from the stranger answered 401, ACKed; returns the challenge values.
fn challenged(h: &mut Harness, caller: &mut Caller) -> Vec<String> {
    h.send_from(stranger(), &caller.invite(&[], Some(&offer(1, "sendrecv"))));
    let (unauthorized, targets) = final_from(h, "INVITE");
    assert_eq!(unauthorized.status(), 401, "{unauthorized:?}");
    assert!(targets.iter().all(|t| *t == Target::Addr(stranger())));
    assert!(unauthorized.to_tag().is_some(), "§8.2.6.2: a To tag");
    assert_stateless(h);
    h.send_from(stranger(), &caller.ack_failure(&unauthorized));
    challenges(&unauthorized)
}

/// The last answer was sent statelessly (RFC 3261 §8.2.7): no transaction kept, nothing
/// repeated while no ACK comes (the source may be forged).
fn assert_stateless(h: &mut Harness) {
    assert_eq!(
        h.switchboard.endpoint().transaction_counts(),
        (0, 0),
        "no transaction kept"
    );
    assert!(h.take().is_empty());
    h.advance(secs(40));
    assert!(h.take().is_empty(), "not repeated on Timer G");
}

fn pbx1(password: &str) -> DigestClient {
    DigestClient::new(ClientCredentials::new("pbx1", Secret::new(password)))
}

fn authorization(client: &mut DigestClient, caller: &Caller) -> String {
    let uri = format!("sip:{}@{VOXGATE}", caller.user);
    client.authorize("INVITE", &uri, b"").remove(0).value
}

fn auth_count(h: &Harness, trunk: &str, result: AuthResult) -> u64 {
    h.switchboard
        .inbound_auth_stats()
        .map_or(0, |stats| stats.get(trunk, result))
}

// ---- inbound ----

#[test]
fn stranger_is_challenged_then_admitted_on_the_trunk_of_its_user() {
    let mut h = Harness::new(&inbound_settings());
    let mut caller = Caller::new("echo");
    let offered = challenged(&mut h, &mut caller);
    assert_eq!(offered.len(), 1, "MD5 only by default: {offered:?}");
    let challenge = Challenge::parse(&offered[0]).expect("a Digest challenge");
    assert_eq!(challenge.realm, "voxgate");
    assert!(!challenge.stale);
    assert!(h.take_outputs().is_empty(), "no call before authentication");
    assert_eq!(h.switchboard.active_calls(), 0);

    let mut client = pbx1(PASSWORD);
    assert_eq!(
        client.handle_challenge(ChallengeOrigin::Www, &offered, [""; 0]),
        ChallengeOutcome::Retry { stale: false }
    );
    let value = authorization(&mut client, &caller);
    let invite = caller.invite(&[("Authorization", &value)], Some(&offer(1, "sendrecv")));
    h.send_from(stranger(), &invite);
    let (ok, _) = final_from(&mut h, "INVITE");
    assert_eq!(ok.status(), 200);
    let (_, trunk) = trunk_of(&h.take_outputs()).expect("a call");
    assert_eq!(trunk, "remote");
    assert_eq!(auth_count(&h, "remote", AuthResult::Challenged), 1);
    assert_eq!(auth_count(&h, "remote", AuthResult::Ok), 1);
    caller.learn(&ok);
    h.send_from(stranger(), &caller.ack(None));
    // In-dialog requests are not challenged again: the dialog came from an authorized INVITE.
    h.send_from(stranger(), &caller.request("BYE", &[], None));
    let (bye_ok, _) = final_from(&mut h, "BYE");
    assert_eq!(bye_ok.status(), 200);
    h.advance(secs(70));
    assert_eq!(h.switchboard.active_calls(), 0);
    assert_eq!(h.switchboard.endpoint().transaction_counts(), (0, 0));
}

#[test]
fn wrong_password_and_unknown_user_get_403_and_no_call() {
    for (user, password, result) in [
        ("pbx1", "guess", AuthResult::WrongPassword),
        ("mallory", PASSWORD, AuthResult::UnknownUser),
    ] {
        let mut h = Harness::new(&inbound_settings());
        let mut caller = Caller::new("echo");
        let offered = challenged(&mut h, &mut caller);
        let mut client = DigestClient::new(ClientCredentials::new(user, Secret::new(password)));
        client.handle_challenge(ChallengeOrigin::Www, &offered, [""; 0]);
        let value = authorization(&mut client, &caller);
        h.send_from(
            stranger(),
            &caller.invite(&[("Authorization", &value)], Some(&offer(1, "sendrecv"))),
        );
        let (forbidden, _) = final_from(&mut h, "INVITE");
        assert_eq!(forbidden.status(), 403, "{user}");
        assert_eq!(
            forbidden.reason(),
            "Forbidden",
            "no hint which part was wrong"
        );
        assert!(challenges(&forbidden).is_empty());
        assert_stateless(&mut h);
        h.send_from(stranger(), &caller.ack_failure(&forbidden));
        assert!(trunk_of(&h.take_outputs()).is_none());
        assert_eq!(auth_count(&h, "remote", result), 1, "{user}");
        h.advance(secs(70));
        assert_eq!(h.switchboard.endpoint().transaction_counts(), (0, 0));
    }
}

#[test]
fn replayed_authorization_gets_401_stale_and_the_real_client_recovers() {
    let mut h = Harness::new(&inbound_settings());
    let mut caller = Caller::new("echo");
    let offered = challenged(&mut h, &mut caller);
    let mut client = pbx1(PASSWORD);
    client.handle_challenge(ChallengeOrigin::Www, &offered, [""; 0]);
    let value = authorization(&mut client, &caller);
    h.send_from(
        stranger(),
        &caller.invite(&[("Authorization", &value)], Some(&offer(1, "sendrecv"))),
    );
    assert_eq!(final_from(&mut h, "INVITE").0.status(), 200);

    // A captured INVITE sent again: same nonce, same nonce count, new Call-ID.
    let mut replayer = Caller::new("echo");
    h.send_from(
        stranger(),
        &replayer.invite(&[("Authorization", &value)], Some(&offer(1, "sendrecv"))),
    );
    let (stale, _) = final_from(&mut h, "INVITE");
    assert_eq!(stale.status(), 401);
    let challenge = Challenge::parse(&challenges(&stale)[0]).expect("challenge");
    assert!(challenge.stale, "stale=true");
    h.send_from(stranger(), &replayer.ack_failure(&stale));
    assert_eq!(auth_count(&h, "remote", AuthResult::Replayed), 1);
    assert_eq!(h.switchboard.active_calls(), 1, "no second call");

    // The client that knows the password answers the stale challenge and gets in.
    let sent = [value.as_str()];
    assert_eq!(
        client.handle_challenge(ChallengeOrigin::Www, challenges(&stale), sent),
        ChallengeOutcome::Retry { stale: true }
    );
    let fresh = authorization(&mut client, &replayer);
    h.send_from(
        stranger(),
        &replayer.invite(&[("Authorization", &fresh)], Some(&offer(1, "sendrecv"))),
    );
    assert_eq!(final_from(&mut h, "INVITE").0.status(), 200);
}

#[test]
fn expired_nonce_gets_401_stale() {
    let mut h = Harness::new(&inbound_settings());
    let mut caller = Caller::new("echo");
    let offered = challenged(&mut h, &mut caller);
    let mut client = pbx1(PASSWORD);
    client.handle_challenge(ChallengeOrigin::Www, &offered, [""; 0]);
    h.advance(secs(301));
    let value = authorization(&mut client, &caller);
    h.send_from(
        stranger(),
        &caller.invite(&[("Authorization", &value)], Some(&offer(1, "sendrecv"))),
    );
    let (stale, _) = final_from(&mut h, "INVITE");
    assert_eq!(stale.status(), 401);
    assert!(Challenge::parse(&challenges(&stale)[0]).unwrap().stale);
    assert_eq!(auth_count(&h, "remote", AuthResult::Stale), 1);
}

#[test]
fn malformed_authorization_gets_400() {
    let mut h = Harness::new(&inbound_settings());
    let mut caller = Caller::new("echo");
    let broken = r#"Digest username="pbx1", realm="voxgate", nonce="n""#;
    h.send_from(
        stranger(),
        &caller.invite(&[("Authorization", broken)], Some(&offer(1, "sendrecv"))),
    );
    let (bad, _) = final_from(&mut h, "INVITE");
    assert_eq!(bad.status(), 400);
    assert!(bad.reason().contains("Authorization"), "{}", bad.reason());
    assert_eq!(auth_count(&h, "remote", AuthResult::Malformed), 1);
    assert_stateless(&mut h);
}

#[test]
fn callers_in_allow_from_are_not_challenged_and_options_never_are() {
    let mut h = Harness::new(&inbound_settings());
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    let (_, trunk) = trunk_of(&h.take_outputs()).expect("a call");
    assert_eq!(trunk, "pbx");
    // OPTIONS keepalives from anywhere get 200, as without digest authentication.
    let mut prober = Caller::new("echo");
    h.send_from(stranger(), &prober.out_of_dialog("OPTIONS"));
    let (options, _) = final_from(&mut h, "OPTIONS");
    assert_eq!(options.status(), 200);
    assert!(challenges(&options).is_empty());
    assert_eq!(
        h.switchboard.inbound_auth_stats().map(|s| s.iter().count()),
        Some(0),
        "nothing was checked"
    );
}

// ---- outbound ----

/// The PBX as a challenger of voxgate's requests: 407 (a proxy) or 401.
struct Challenger {
    verifier: DigestVerifier,
    origin: ChallengeOrigin,
}

impl Challenger {
    fn new(origin: ChallengeOrigin) -> Challenger {
        let config = VerifierConfig {
            origin,
            ..VerifierConfig::new("pbx.example")
        };
        Challenger {
            verifier: DigestVerifier::new(t0(), config),
            origin,
        }
    }

    fn challenge(&mut self, h: &Harness, request: &Request, stale: bool) -> String {
        let headers: Vec<(&str, String)> = self
            .verifier
            .challenge(h.now, stale)
            .into_iter()
            .map(|header| (header.name, header.value))
            .collect();
        let refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        answer(request, self.origin.status_code(), &refs, None)
    }

    /// The verdict on a request's credentials (voxgate's user `voxgate`).
    fn verify(&mut self, h: &Harness, request: &Request) -> Verdict {
        let values: Vec<&str> = request
            .headers_named(self.origin.credentials_header())
            .collect();
        let method = request.method().to_string();
        let password = Secret::new(PASSWORD);
        self.verifier.verify(h.now, &method, values, |user| {
            (user == "voxgate").then_some(&password)
        })
    }
}

fn hang_up(h: &mut Harness, key: CallKey) -> Request {
    h.media_ended(key, "no RTP");
    h.take_requests()
        .into_iter()
        .find(|r| r.method().to_string() == "BYE")
        .expect("BYE sent")
}

#[test]
fn bye_challenged_with_407_is_sent_again_with_proxy_authorization() {
    let mut h = Harness::new(&outbound_settings());
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    let (key, _) = trunk_of(&h.take_outputs()).expect("a call");
    let bye = hang_up(&mut h, key);
    assert!(bye.header("Proxy-Authorization").is_none(), "no nonce yet");
    let mut pbx = Challenger::new(ChallengeOrigin::Proxy);
    h.send(&pbx.challenge(&h, &bye, false));
    let again = h
        .take_requests()
        .into_iter()
        .find(|r| r.method().to_string() == "BYE")
        .expect("BYE sent again");
    assert_eq!(again.call_id(), bye.call_id());
    assert_eq!(
        (again.from_tag(), again.to_tag()),
        (bye.from_tag(), bye.to_tag())
    );
    assert_eq!(again.cseq().seq, bye.cseq().seq + 1, "CSeq + 1");
    assert_ne!(
        again.top_via().branch,
        bye.top_via().branch,
        "a new transaction"
    );
    let credentials =
        Credentials::parse(again.header("Proxy-Authorization").expect("credentials")).unwrap();
    assert_eq!(credentials.username, "voxgate");
    assert_eq!(credentials.uri, bye.request_uri());
    assert_eq!(credentials.nc, Some(NonceCount(1)));
    assert!(matches!(pbx.verify(&h, &again), Verdict::Authorized { .. }));
    h.send(&answer(&again, 200, &[], None));
    assert_eq!(h.switchboard.active_calls(), 0);
    h.advance(secs(70));
    assert_eq!(h.switchboard.endpoint().transaction_counts(), (0, 0));
}

#[test]
fn bye_refused_after_its_credentials_is_given_up() {
    let mut h = Harness::new(&outbound_settings());
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    let (key, _) = trunk_of(&h.take_outputs()).expect("a call");
    let bye = hang_up(&mut h, key);
    let mut pbx = Challenger::new(ChallengeOrigin::Www);
    h.send(&pbx.challenge(&h, &bye, false));
    let again = h.take_requests().remove(0);
    assert!(again.header("Authorization").is_some());
    // Challenged again without stale=true: the password was refused; no third BYE.
    h.send(&pbx.challenge(&h, &again, false));
    assert!(h.take_requests().is_empty(), "no loop");
    assert_eq!(h.switchboard.active_calls(), 0, "the call is over anyway");
}

#[test]
fn stale_challenges_are_answered_at_most_twice_per_request() {
    let mut h = Harness::new(&outbound_settings());
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    let (key, _) = trunk_of(&h.take_outputs()).expect("a call");
    let mut request = hang_up(&mut h, key);
    let mut pbx = Challenger::new(ChallengeOrigin::Proxy);
    let mut sent = 1;
    for stale in [false, true, true, true] {
        h.send(&pbx.challenge(&h, &request, stale));
        match h.take_requests().into_iter().next() {
            Some(next) => {
                sent += 1;
                request = next;
            }
            None => break,
        }
    }
    assert_eq!(sent, 3, "the BYE, then two answers");
    assert_eq!(h.switchboard.active_calls(), 0);
}

#[test]
fn bye_challenged_on_a_trunk_without_credentials_ends_the_call() {
    let mut h = Harness::new(&settings());
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    let (key, _) = trunk_of(&h.take_outputs()).expect("a call");
    let bye = hang_up(&mut h, key);
    let mut pbx = Challenger::new(ChallengeOrigin::Proxy);
    h.send(&pbx.challenge(&h, &bye, false));
    assert!(h.take_requests().is_empty());
    assert_eq!(h.switchboard.active_calls(), 0);
}

/// A call where voxgate refreshes the session (UPDATE when `allow_update`, else re-INVITE).
fn refreshing(h: &mut Harness, allow_update: bool) -> Caller {
    let mut caller = Caller::new("echo");
    let allow = if allow_update {
        "INVITE, ACK, BYE, CANCEL, UPDATE"
    } else {
        "INVITE, ACK, BYE, CANCEL"
    };
    let extra = [
        ("Session-Expires", "1800;refresher=uas"),
        ("Supported", "timer"),
        ("Allow", allow),
    ];
    h.establish(&mut caller, &extra);
    h.take_outputs();
    caller
}

#[test]
fn challenged_update_refresh_is_answered_and_later_requests_carry_credentials_ahead() {
    let mut h = Harness::new(&outbound_settings());
    refreshing(&mut h, true);
    let (_, update) = h.next_request("UPDATE", secs(901)).expect("refresh");
    let mut pbx = Challenger::new(ChallengeOrigin::Www);
    h.send(&pbx.challenge(&h, &update, false));
    let again = h.take_requests().remove(0);
    assert_eq!(again.method().to_string(), "UPDATE");
    assert_eq!(again.cseq().seq, update.cseq().seq + 1);
    assert!(matches!(pbx.verify(&h, &again), Verdict::Authorized { .. }));
    h.send(&answer(
        &again,
        200,
        &[("Session-Expires", "1800;refresher=uac")],
        None,
    ));
    assert_eq!(h.switchboard.active_calls(), 1, "the session was refreshed");
    // The next refresh answers the same nonce ahead of time, with the next nonce count; the
    // nonce has expired by then (900 s > 300 s), so the PBX says stale and voxgate answers anew.
    let (_, next) = h.next_request("UPDATE", secs(901)).expect("next refresh");
    let credentials = Credentials::parse(next.header("Authorization").expect("ahead")).unwrap();
    assert_eq!(credentials.nc, Some(NonceCount(2)));
    let Verdict::Challenge { stale: true, .. } = pbx.verify(&h, &next) else {
        panic!("the PBX's nonce should have expired")
    };
    h.send(&pbx.challenge(&h, &next, true));
    let fresh = h.take_requests().remove(0);
    let credentials = Credentials::parse(fresh.header("Authorization").expect("fresh")).unwrap();
    assert_eq!(credentials.nc, Some(NonceCount(1)));
    assert!(matches!(pbx.verify(&h, &fresh), Verdict::Authorized { .. }));
}

#[test]
fn challenged_reinvite_refresh_is_sent_again_with_an_offer_and_its_ack_has_the_credentials() {
    let mut h = Harness::new(&outbound_settings());
    refreshing(&mut h, false);
    let (_, reinvite) = h.next_request("INVITE", secs(901)).expect("refresh");
    let mut pbx = Challenger::new(ChallengeOrigin::Proxy);
    h.send(&pbx.challenge(&h, &reinvite, false));
    let sent = h.take_requests();
    let methods: Vec<String> = sent.iter().map(|r| r.method().to_string()).collect();
    assert_eq!(
        methods,
        ["ACK", "INVITE"],
        "the 407 ACKed, the re-INVITE sent again"
    );
    let again = &sent[1];
    assert!(!again.body().is_empty(), "an offer again");
    assert!(matches!(pbx.verify(&h, again), Verdict::Authorized { .. }));
    h.send(&answer(again, 200, &[], Some(&offer(2, "sendrecv"))));
    let ack = h
        .take_requests()
        .into_iter()
        .find(|r| r.method().to_string() == "ACK")
        .expect("ACK for the 200");
    assert_eq!(ack.cseq().seq, again.cseq().seq);
    assert_eq!(
        ack.header("Proxy-Authorization"),
        again.header("Proxy-Authorization"),
        "RFC 3261 §13.2.2.4: the INVITE's credentials"
    );
}
