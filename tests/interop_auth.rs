//! Digest authentication with the real voxgate binary over loopback, both ways:
//!
//! - inbound: the trunk's `allow_from` leaves out 127.0.0.1, so SIPp (and the test's own raw
//!   SIP) are callers voxgate challenges with 401; the right password gets the call answered,
//!   a wrong one 403, a replayed Authorization (same nonce and nonce count) 401 stale=true;
//! - outbound: voxgate hangs up on SIGTERM (drain) and SIPp challenges its BYE with 407 (the
//!   test checks the Proxy-Authorization digest from SIPp's trace, computed with the crate's own
//!   `voxgate::sip::auth`) or 401 (SIPp's `verifyauth` checks the Authorization).
//!
//! Scenario files: `tests/sipp/uac_auth*.xml`, `tests/sipp/uac_bye_challenged_*.xml`.
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::sip::{self, Response};
use common::sipp::TracedMessage;
use common::{Gateway, GatewayConfig, Sipp};
use voxgate::config::Secret;
use voxgate::sip::auth::{
    Challenge, ChallengeOrigin, ChallengeOutcome, ClientCredentials, Credentials, DigestClient,
    DigestInput,
};

const AUTH_TOTAL: &str = "voxgate_inbound_auth_total";
const CALLS_ACTIVE: &str = "voxgate_calls_active";
const SETTLE: Duration = Duration::from_secs(10);
const PBX1_PASSWORD: &str = "pbx1-Secret!";
const BYE_PASSWORD: &str = "voxgate-bye-secret";

/// voxgate with trunk `pbx` allowing only 127.0.0.2 and user `pbx1` (password from the
/// environment), so callers on 127.0.0.1 must authenticate.
fn gateway_with_users() -> Gateway {
    Gateway::start_with(GatewayConfig {
        allow_from: vec!["127.0.0.2/32".into()],
        trunk_extra: "[[trunks.users]]\nusername = \"pbx1\"\npassword_env = \"PBX1_PASSWORD\"\n"
            .into(),
        env: vec![("PBX1_PASSWORD".into(), PBX1_PASSWORD.into())],
        ..GatewayConfig::default()
    })
}

/// `voxgate_inbound_auth_total{trunk="pbx",result}` once it reaches `expected` (or after
/// [`SETTLE`]): the core task exports counts right after it sends the responses.
fn auth_count(gateway: &Gateway, result: &str, expected: f64) -> f64 {
    let labels = [("trunk", "pbx"), ("result", result)];
    gateway.wait_metric(AUTH_TOTAL, &labels, SETTLE, |v| v >= expected)
}

fn statuses(outcome: &common::sipp::SippOutcome) -> Vec<(u16, String)> {
    outcome
        .received()
        .iter()
        .filter_map(|m| {
            m.status()
                .filter(|s| *s >= 200)
                .map(|s| (s, m.cseq_method().unwrap_or_default()))
        })
        .collect()
}

/// (1) SIPp answers the 401 with `[authentication]` and the right password: the call is
/// answered, the metric counts a challenge and an admission.
#[test]
fn right_password_after_a_401_gets_the_call_answered() {
    let gateway = gateway_with_users();
    let outcome = Sipp::new("uac_auth.xml", gateway.sip_addr())
        .arg("-au")
        .arg("pbx1")
        .arg("-ap")
        .arg(PBX1_PASSWORD)
        .pause_ms(500)
        .run();
    outcome.assert_success();
    assert_eq!(
        statuses(&outcome),
        [
            (401, "INVITE".to_owned()),
            (200, "INVITE".to_owned()),
            (200, "BYE".to_owned())
        ],
        "{}",
        outcome.report()
    );
    let unauthorized = outcome
        .received()
        .into_iter()
        .find(|m| m.status() == Some(401))
        .expect("a 401");
    let challenge = Challenge::parse(&unauthorized.header("WWW-Authenticate").expect("challenge"))
        .expect("a Digest challenge");
    assert_eq!(challenge.realm, "voxgate");
    assert_eq!(challenge.algorithm.as_str(), "MD5");
    assert_eq!(
        gateway.wait_metric(CALLS_ACTIVE, &[], SETTLE, |v| v == 0.0),
        0.0
    );
    assert_eq!(auth_count(&gateway, "challenged", 1.0), 1.0);
    assert_eq!(auth_count(&gateway, "ok", 1.0), 1.0);
    assert!(
        gateway
            .log()
            .contains("INVITE from 127.0.0.1 authenticated as user \"pbx1\" (trunk pbx)"),
        "{}",
        gateway.log()
    );
}

/// (2) The same with a wrong password: 403, no call, an admin-readable log line.
#[test]
fn wrong_password_gets_403() {
    let gateway = gateway_with_users();
    let outcome = Sipp::new("uac_auth_refused.xml", gateway.sip_addr())
        .arg("-au")
        .arg("pbx1")
        .arg("-ap")
        .arg("not-the-password")
        .run();
    outcome.assert_success();
    assert!(
        outcome.received().iter().all(|m| m.status() != Some(200)),
        "{}",
        outcome.report()
    );
    assert_eq!(auth_count(&gateway, "wrong_password", 1.0), 1.0);
    let log = gateway.log();
    assert!(
        log.contains("INVITE from 127.0.0.1 refused: wrong password for user \"pbx1\" (trunk pbx)"),
        "{log}"
    );
    assert!(!log.contains("not-the-password") && !log.contains(PBX1_PASSWORD));
}

/// The test's own caller on 127.0.0.1.
struct RawCaller {
    socket: UdpSocket,
    local: SocketAddr,
    target: SocketAddr,
}

impl RawCaller {
    fn new(target: SocketAddr) -> RawCaller {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let local = socket.local_addr().expect("local addr");
        RawCaller {
            socket,
            local,
            target,
        }
    }

    fn invite(&self) -> sip::Request {
        sip::request(
            "INVITE",
            self.target,
            self.local,
            &sip::pcmu_offer(self.local.ip(), 4_000),
        )
    }

    /// Sends `text` and returns the final response (ACKing it when it is a failure).
    fn send(&self, invite: &sip::Request, text: &str) -> Response {
        let responses = sip::exchange(
            &self.socket,
            text.as_bytes(),
            self.target,
            Duration::from_secs(5),
        );
        let last = responses
            .into_iter()
            .rfind(Response::is_final)
            .expect("a final response");
        if last.status >= 300 {
            let cseq = last
                .header("CSeq")
                .and_then(|c| c.split_whitespace().next().map(str::to_owned))
                .unwrap_or_else(|| "1".into());
            let ack = sip::ack_for_failure(invite, &last, self.target, self.local)
                .replace("CSeq: 1 ACK", &format!("CSeq: {cseq} ACK"))
                .replace(&invite.branch, &branch_of(text));
            self.socket
                .send_to(ack.as_bytes(), self.target)
                .expect("send ACK");
        }
        last
    }
}

fn branch_of(text: &str) -> String {
    let via = sip::header_in(text, "Via").unwrap_or_default();
    via.split(';')
        .find_map(|p| p.trim().strip_prefix("branch=").map(str::to_owned))
        .unwrap_or_default()
}

/// `invite` again as request number `cseq` on a new branch, with an Authorization header.
fn with_authorization(invite: &sip::Request, cseq: u32, authorization: &str) -> String {
    let branch = format!("z9hG4bK{}", sip::unique("auth"));
    invite.text.replace(&invite.branch, &branch).replace(
        "CSeq: 1 INVITE\r\n",
        &format!("CSeq: {cseq} INVITE\r\nAuthorization: {authorization}\r\n"),
    )
}

/// (3) A replayed Authorization (same nonce and nonce count, on a new call) gets 401 with
/// stale=true and no call; the metric counts it as `replayed`.
#[test]
fn replayed_authorization_gets_401_stale() {
    let gateway = gateway_with_users();
    let caller = RawCaller::new(gateway.sip_addr());
    let invite = caller.invite();
    let unauthorized = caller.send(&invite, &invite.text);
    assert_eq!(unauthorized.status, 401, "{}", unauthorized.text);
    let challenges = sip::headers_in(&unauthorized.text, "WWW-Authenticate");
    let mut client = DigestClient::new(ClientCredentials::new("pbx1", Secret::new(PBX1_PASSWORD)));
    assert_eq!(
        client.handle_challenge(ChallengeOrigin::Www, &challenges, [""; 0]),
        ChallengeOutcome::Retry { stale: false }
    );
    let uri = format!("sip:echo@{}", gateway.sip_addr());
    let authorization = client.authorize("INVITE", &uri, b"").remove(0).value;
    let authorized = with_authorization(&invite, 2, &authorization);
    let ok = caller.send(&invite, &authorized);
    assert_eq!(ok.status, 200, "{}", ok.text);
    let local = caller.local;
    let ack = sip::in_dialog("ACK", 2, &invite, &ok, local);
    caller
        .socket
        .send_to(ack.as_bytes(), caller.target)
        .expect("ACK");
    let bye = sip::in_dialog("BYE", 3, &invite, &ok, local);
    caller
        .socket
        .send_to(bye.as_bytes(), caller.target)
        .expect("BYE");
    let bye_ok = sip::wait_for(&caller.socket, Duration::from_secs(5), |r| {
        r.is_final() && r.header("CSeq").is_some_and(|c| c.contains("BYE"))
    });
    assert_eq!(bye_ok.map(|r| r.status), Some(200));

    // Someone who captured that INVITE sends its Authorization again, on a new call.
    let replay = caller.invite();
    let stale = caller.send(&replay, &with_authorization(&replay, 2, &authorization));
    assert_eq!(stale.status, 401, "{}", stale.text);
    let challenge = Challenge::parse(&stale.header("WWW-Authenticate").expect("challenge"))
        .expect("a Digest challenge");
    assert!(challenge.stale, "stale=true: {}", stale.text);
    assert_eq!(auth_count(&gateway, "replayed", 1.0), 1.0);
    assert_eq!(auth_count(&gateway, "ok", 1.0), 1.0);
    assert_eq!(
        gateway.wait_metric(CALLS_ACTIVE, &[], SETTLE, |v| v == 0.0),
        0.0
    );
    assert!(
        gateway.log().contains("replayed credentials"),
        "{}",
        gateway.log()
    );
}

/// voxgate with outbound credentials on trunk `pbx` (loopback allowed: SIPp calls in freely).
fn gateway_with_outbound_credentials(password: &str) -> Gateway {
    Gateway::start_with(GatewayConfig {
        drain_timeout_secs: 1,
        trunk_extra: "outbound_username = \"voxgate\"\n\
                      outbound_password_env = \"VOXGATE_TRUNK_PASSWORD\"\n"
            .into(),
        env: vec![("VOXGATE_TRUNK_PASSWORD".into(), password.into())],
        ..GatewayConfig::default()
    })
}

/// Runs `scenario` (a call that waits for voxgate's BYE), SIGTERMs voxgate once the call is up
/// and waits for both to finish; returns SIPp's outcome and voxgate's exit success.
fn drain_with(gateway: &mut Gateway, scenario: &str) -> (common::sipp::SippOutcome, bool) {
    let run = Sipp::new(scenario, gateway.sip_addr()).spawn();
    let active = gateway.wait_metric(CALLS_ACTIVE, &[], SETTLE, |v| v >= 1.0);
    assert_eq!(active, 1.0, "the SIPp call never became active");
    gateway.terminate();
    let outcome = run.wait();
    let status = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("voxgate still running after the drain");
    (outcome, status.success())
}

fn byes(outcome: &common::sipp::SippOutcome) -> Vec<TracedMessage> {
    outcome
        .received()
        .into_iter()
        .filter(|m| m.first_line().starts_with("BYE "))
        .collect()
}

/// (4) voxgate's BYE challenged with 407 is sent again (same Call-ID, CSeq + 1, new branch)
/// with a Proxy-Authorization whose digest is right for the trunk's password.
#[test]
fn bye_challenged_with_407_is_answered_with_proxy_authorization() {
    let mut gateway = gateway_with_outbound_credentials(BYE_PASSWORD);
    let (outcome, exited_ok) = drain_with(&mut gateway, "uac_bye_challenged_407.xml");
    outcome.assert_success();
    assert!(exited_ok, "voxgate did not exit 0:\n{}", gateway.log());
    let byes = byes(&outcome);
    let [first, again] = byes.as_slice() else {
        panic!("expected two BYEs\n{}", outcome.report());
    };
    assert!(first.header("Proxy-Authorization").is_none());
    assert_eq!(first.header("Call-ID"), again.header("Call-ID"));
    let cseq = |m: &TracedMessage| -> u32 {
        m.header("CSeq")
            .and_then(|c| c.split_whitespace().next()?.parse().ok())
            .expect("CSeq")
    };
    assert_eq!(cseq(again), cseq(first) + 1, "CSeq + 1");
    assert_ne!(
        branch_of(&first.text),
        branch_of(&again.text),
        "a new transaction"
    );
    let credentials =
        Credentials::parse(&again.header("Proxy-Authorization").expect("credentials"))
            .expect("Digest credentials");
    let request_uri = again
        .first_line()
        .split_whitespace()
        .nth(1)
        .expect("Request-URI")
        .to_owned();
    assert_eq!(credentials.username, "voxgate");
    assert_eq!(credentials.realm, "sipp.test");
    assert_eq!(credentials.nonce, "5c1b7e9a0d3f4e2a8b6c");
    assert_eq!(credentials.opaque.as_deref(), Some("0a1b2c3d"));
    assert_eq!(credentials.uri, request_uri);
    let expected = DigestInput {
        algorithm: credentials.algorithm,
        username: "voxgate",
        realm: "sipp.test",
        password: BYE_PASSWORD,
        nonce: &credentials.nonce,
        cnonce: credentials.cnonce.as_deref(),
        nc: credentials.nc,
        qop: credentials.qop,
        method: "BYE",
        uri: &credentials.uri,
        body: b"",
    }
    .response();
    assert_eq!(
        credentials.response, expected,
        "the digest of the trunk's password"
    );
    assert!(!gateway.log().contains(BYE_PASSWORD));
}

/// (5) The same with 401, checked by SIPp's own `verifyauth`; a wrong trunk password makes that
/// check (and so the scenario) fail.
#[test]
fn bye_challenged_with_401_passes_sipps_verifyauth_only_with_the_right_password() {
    let mut gateway = gateway_with_outbound_credentials(BYE_PASSWORD);
    let (outcome, exited_ok) = drain_with(&mut gateway, "uac_bye_challenged_401.xml");
    outcome.assert_success();
    assert!(exited_ok, "voxgate did not exit 0:\n{}", gateway.log());
    assert_eq!(byes(&outcome).len(), 2, "{}", outcome.report());

    let mut wrong = gateway_with_outbound_credentials("not-the-bye-secret");
    let (outcome, exited_ok) = drain_with(&mut wrong, "uac_bye_challenged_401.xml");
    assert_ne!(
        outcome.code(),
        Some(0),
        "verifyauth accepted a wrong password\n{}",
        outcome.report()
    );
    let refused = outcome
        .traced()
        .iter()
        .any(|m| m.sent && m.status() == Some(403));
    assert!(
        refused,
        "SIPp's verifyauth branch refused the BYE\n{}",
        outcome.report()
    );
    assert!(exited_ok, "voxgate forgets a call whose BYE got 403");
}
