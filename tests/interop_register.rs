//! Registration interop (issue #4): the real voxgate binary registers a register-mode trunk
//! with Kamailio (digest auth, bindings in memory) and with SIPp registrar scenarios
//! (`tests/sipp/registrar_*.xml`) for what Kamailio cannot easily show: 423 with Min-Expires,
//! 403 then recovery, no answer (Timer F then backoff), and a changed `received` address.
//! The registrar may also be a domain whose servers DNS lists (RFC 3263, SRV records from a
//! local stub, `common::dns`): voxgate fails over from one server to the next.
//!
//! Calls through Kamailio are record-routed: voxgate's BYE (at shutdown) must follow the route
//! set back through it.
//!
//! In every test the static trunk allows no loopback source, so a call voxgate answers came
//! over the registration (to the registered Contact, or from the registrar).
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::dns::{two_servers, DnsStub, Record};
use common::kamailio::{Kamailio, KamailioConfig};
use common::sip;
use common::sipp::{SippOutcome, SippRun};
use common::{Gateway, GatewayConfig, PortBlock, Sipp};

const UP: &str = "voxgate_registration_up";
const ATTEMPTS: &str = "voxgate_registration_attempts_total";
const EXPIRES: &str = "voxgate_registration_expires_seconds";
const CALLS: &str = "voxgate_calls_total";
const TRUNK: (&str, &str) = ("trunk", "carrier");
const PASSWORD_ENV: &str = "VOXGATE_TEST_CARRIER_PASSWORD";
const PASSWORD: &str = "s3cret";

/// voxgate with the static trunk `pbx` (allowing 192.0.2.0/24 only) and the register-mode trunk
/// `carrier` registering as `voxgate` with `registrar`, plus `extra` trunk keys.
fn gateway(registrar: SocketAddr, extra: &str, t1_ms: Option<u64>) -> Gateway {
    gateway_with(registrar, extra, t1_ms, "")
}

/// [`gateway`] with lines for `[sip]`.
fn gateway_with(registrar: SocketAddr, extra: &str, t1_ms: Option<u64>, sip: &str) -> Gateway {
    Gateway::start_with(GatewayConfig {
        allow_from: vec!["192.0.2.0/24".into()],
        t1_ms,
        env: vec![(PASSWORD_ENV.into(), PASSWORD.into())],
        sip_extra: sip.into(),
        extra: format!(
            "[[trunks]]\nname = \"carrier\"\nmode = \"register\"\n\
             registrar = \"sip:{registrar}\"\nusername = \"voxgate\"\n\
             password_env = \"{PASSWORD_ENV}\"\n{extra}\n"
        ),
        ..GatewayConfig::default()
    })
}

fn attempts(gateway: &Gateway, result: &str) -> f64 {
    gateway
        .metrics()
        .get(ATTEMPTS, &[TRUNK, ("result", result)])
        .unwrap_or(0.0)
}

/// Waits until `gateway`'s registration metric `name` satisfies `check`; asserts it did.
#[track_caller]
fn assert_metric(
    gateway: &Gateway,
    name: &str,
    labels: &[(&str, &str)],
    check: impl Fn(f64) -> bool,
) {
    let value = gateway.wait_metric(name, labels, Duration::from_secs(10), &check);
    assert!(
        check(value),
        "{name}{labels:?} = {value}\nmetrics:\n{}\nlog:\n{}",
        gateway.metrics().text,
        gateway.log()
    );
}

/// Polls voxgate's log until it contains `text` (bounded).
fn wait_log(gateway: &Gateway, text: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if gateway.log().contains(text) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A SIPp registrar scenario, listening before voxgate starts; returns the run and its address.
fn registrar(scenario: &str) -> (SippRun, SocketAddr) {
    // The target is unused: a scenario that starts with <recv> makes SIPp a UAS.
    let sipp =
        Sipp::new(scenario, "127.0.0.1:9".parse().expect("addr")).deadline(Duration::from_secs(30));
    let address = SocketAddr::from(([127, 0, 0, 1], sipp.sip_port()));
    (sipp.spawn(), address)
}

/// When SIPp first received the REGISTER with CSeq `cseq`, seconds since midnight.
fn register_at(outcome: &SippOutcome, cseq: u32) -> f64 {
    outcome
        .received()
        .iter()
        .find(|m| {
            m.header("CSeq")
                .is_some_and(|c| c.trim() == format!("{cseq} REGISTER"))
        })
        .map(|m| m.at_secs)
        .unwrap_or_else(|| panic!("no REGISTER with CSeq {cseq}:\n{}", outcome.report()))
}

fn kamailio(max_expires: u32) -> Kamailio {
    kamailio_over(max_expires, false)
}

/// A Kamailio registrar for user `voxgate`, also listening on TCP when `tcp`.
fn kamailio_over(max_expires: u32, tcp: bool) -> Kamailio {
    Kamailio::start(KamailioConfig {
        port: PortBlock::reserve(2).port(0),
        realm: "voxgate.test".into(),
        user: "voxgate".into(),
        password: PASSWORD.into(),
        max_expires,
        tcp,
    })
}

/// Whether Kamailio holds voxgate's binding (AOR `voxgate`, voxgate's Contact).
fn holds_binding(bindings: &[(String, String)], gateway: &Gateway) -> bool {
    let contact = format!(
        "sip:voxgate@127.0.0.1:{};transport=udp",
        gateway.sip_addr().port()
    );
    bindings
        .iter()
        .any(|(aor, address)| aor == "voxgate" && *address == contact)
}

/// A SIPp call to the AOR through Kamailio: INVITE, 200, ACK, BYE, all via the proxy.
fn call_the_aor_through(kamailio: &Kamailio) {
    Sipp::new("uac_via_registrar.xml", kamailio.addr())
        .arg("-s")
        .arg("voxgate")
        .pause_ms(200)
        .run()
        .assert_success();
}

/// INVITE from 127.0.0.2 (no trunk's source) straight to voxgate, dialling `user`; the final
/// status. A 200 is ACKed and hung up.
fn direct_call(gateway: &Gateway, user: &str) -> u16 {
    let socket = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let local = socket.local_addr().expect("local");
    let target = gateway.sip_addr();
    let mut invite = sip::request("INVITE", target, local, &sip::pcmu_offer(local.ip(), 9));
    invite.text = invite.text.replace("sip:echo@", &format!("sip:{user}@"));
    let responses = sip::exchange(
        &socket,
        invite.text.as_bytes(),
        target,
        Duration::from_secs(5),
    );
    let last = responses.last().expect("a final response");
    if last.status == 200 {
        let bye = sip::hang_up(&socket, &invite, last, target, Duration::from_secs(5));
        assert_eq!(bye.map(|r| r.status), Some(200), "BYE answered");
    } else {
        let ack = sip::ack_for_failure(&invite, last, target, local);
        socket.send_to(ack.as_bytes(), target).expect("send ACK");
    }
    last.status
}

/// Kamailio grants 10 s, so voxgate refreshes every 5 s; a restarted Kamailio (empty usrloc,
/// new nonce secret) gets the binding back from the next refresh, after challenging it.
#[test]
fn registers_with_kamailio_takes_calls_for_the_aor_and_registers_again_after_a_restart() {
    let mut kamailio = kamailio(10);
    let mut gateway = gateway(kamailio.addr(), "", Some(100));
    let bindings = kamailio.wait_bindings(Duration::from_secs(10), |b| holds_binding(b, &gateway));
    assert!(
        holds_binding(&bindings, &gateway),
        "no binding in Kamailio: {bindings:?}\nlog:\n{}",
        gateway.log()
    );
    assert_metric(&gateway, UP, &[TRUNK], |v| v == 1.0);
    assert_metric(&gateway, EXPIRES, &[TRUNK], |v| v == 10.0);
    assert_metric(
        &gateway,
        ATTEMPTS,
        &[TRUNK, ("result", "auth_required")],
        |v| v >= 1.0,
    );
    assert!(
        gateway.log().contains("trunk=\"carrier\"")
            && gateway
                .log()
                .contains("accepted: 200 OK, registered for 10 s"),
        "log:\n{}",
        gateway.log()
    );

    call_the_aor_through(&kamailio);
    assert_metric(&gateway, CALLS, &[("result", "completed")], |v| v == 1.0);
    // Not through the registrar: a stranger dialling another user is refused, one dialling
    // the registered Contact is taken over the registration.
    assert_eq!(direct_call(&gateway, "echo"), 403);
    assert_eq!(direct_call(&gateway, "voxgate"), 200);
    assert_metric(&gateway, CALLS, &[("result", "completed")], |v| v == 2.0);

    let challenged = attempts(&gateway, "auth_required");
    let first = kamailio.pid();
    kamailio.stop();
    assert!(kamailio.bindings().is_none(), "Kamailio is down");
    kamailio.start_again();
    assert_ne!(kamailio.pid(), first, "a new Kamailio process");
    let bindings = kamailio.wait_bindings(Duration::from_secs(30), |b| holds_binding(b, &gateway));
    assert!(
        holds_binding(&bindings, &gateway),
        "voxgate did not register with the restarted Kamailio: {bindings:?}\nlog:\n{}",
        gateway.log()
    );
    // The new instance knows no nonce of the old one: voxgate answered a fresh challenge.
    assert_metric(
        &gateway,
        ATTEMPTS,
        &[TRUNK, ("result", "auth_required")],
        |v| v > challenged,
    );
    call_the_aor_through(&kamailio);
    assert_metric(&gateway, CALLS, &[("result", "completed")], |v| v == 3.0);

    // Shutdown hangs up a call that came through the proxy. Kamailio record-routed its
    // INVITE, so voxgate's BYE follows that route set: to Kamailio, which relays it to the
    // caller (the scenario checks it has Kamailio's Via above voxgate's).
    let through_proxy = Sipp::new("uac_via_registrar_bye_from_gateway.xml", kamailio.addr())
        .arg("-s")
        .arg("voxgate")
        .spawn();
    assert_metric(&gateway, "voxgate_calls_active", &[], |v| v == 1.0);
    // Then removes the binding before it exits.
    gateway.terminate();
    let status = gateway
        .wait_exit(Duration::from_secs(15))
        .expect("voxgate exits");
    assert!(status.success(), "exit status {status}");
    through_proxy.wait().assert_success();
    let relayed_bye = kamailio.log().lines().any(|line| {
        line.contains("BYE sip:sipp@")
            && line.ends_with(&format!("from 127.0.0.1:{}", gateway.sip_addr().port()))
    });
    assert!(
        relayed_bye,
        "Kamailio never saw voxgate's BYE:\n{}",
        kamailio.log()
    );
    let bindings = kamailio.bindings().expect("Kamailio is up");
    assert!(
        !holds_binding(&bindings, &gateway),
        "still bound after shutdown: {bindings:?}\nlog:\n{}",
        gateway.log()
    );
}

/// Kamailio grants an hour, so only the keepalive can notice it restarted: voxgate's OPTIONS go
/// unanswered while it is down (Timer F, 6.4 s with T1 = 100 ms), and voxgate registers again.
#[test]
fn the_keepalive_notices_a_restarted_kamailio_and_voxgate_registers_again() {
    let mut kamailio = kamailio(3_600);
    let gateway = gateway(kamailio.addr(), "keepalive_secs = 5\n", Some(100));
    let bindings = kamailio.wait_bindings(Duration::from_secs(10), |b| holds_binding(b, &gateway));
    assert!(
        holds_binding(&bindings, &gateway),
        "{bindings:?}\nlog:\n{}",
        gateway.log()
    );
    assert_metric(&gateway, EXPIRES, &[TRUNK], |v| v == 3_600.0);
    assert_metric(
        &gateway,
        "voxgate_sip_messages_total",
        &[("method", "OPTIONS"), ("direction", "out")],
        |v| v >= 1.0,
    );

    kamailio.stop();
    assert!(
        wait_log(
            &gateway,
            "no answer to the OPTIONS keepalive",
            Duration::from_secs(20)
        ),
        "the failed keepalive was not noticed; log:\n{}",
        gateway.log()
    );
    kamailio.start_again();
    let bindings = kamailio.wait_bindings(Duration::from_secs(30), |b| holds_binding(b, &gateway));
    assert!(
        holds_binding(&bindings, &gateway),
        "voxgate did not register again: {bindings:?}\nlog:\n{}",
        gateway.log()
    );
    assert_metric(&gateway, UP, &[TRUNK], |v| v == 1.0);
    call_the_aor_through(&kamailio);
}

/// Over TCP the registrar sees the connection's ephemeral port, so voxgate re-registers with
/// that Contact (as PJSIP's rewrite_contact does) and Kamailio sends the call down the same
/// connection. When Kamailio restarts, the closed connection makes voxgate register again over
/// a new one.
#[test]
fn registers_over_tcp_and_takes_calls_down_the_registration_connection() {
    let mut kamailio = kamailio_over(3_600, true);
    let gateway = gateway(kamailio.addr(), "transport = \"tcp\"\n", Some(100));
    let listen_port = format!(":{};", gateway.sip_addr().port());
    // The binding names the connection's port, not the listening one.
    let over_the_connection = |bindings: &[(String, String)]| {
        bindings.iter().any(|(aor, address)| {
            aor == "voxgate"
                && address.starts_with("sip:voxgate@127.0.0.1:")
                && address.ends_with(";transport=tcp")
                && !address.contains(&listen_port)
        })
    };
    let bindings = kamailio.wait_bindings(Duration::from_secs(10), over_the_connection);
    assert!(
        over_the_connection(&bindings),
        "{bindings:?}\nlog:\n{}",
        gateway.log()
    );
    assert!(
        gateway.log().contains("re-registering with it"),
        "log:\n{}",
        gateway.log()
    );
    assert_metric(&gateway, UP, &[TRUNK], |v| v == 1.0);
    call_the_aor_through(&kamailio);
    assert_metric(&gateway, CALLS, &[("result", "completed")], |v| v == 1.0);

    kamailio.stop();
    kamailio.start_again();
    assert!(
        wait_log(
            &gateway,
            "TCP connection to the registrar closed",
            Duration::from_secs(10)
        ),
        "log:\n{}",
        gateway.log()
    );
    let bindings = kamailio.wait_bindings(Duration::from_secs(30), over_the_connection);
    assert!(
        over_the_connection(&bindings),
        "voxgate did not register again: {bindings:?}\nlog:\n{}",
        gateway.log()
    );
    call_the_aor_through(&kamailio);
}

/// Two trunks registering over TCP with one Kamailio at start-up send their REGISTERs at the
/// same instant, before any connection is up: both go over one connection, not one each. The
/// connection stays open while it carries the registration, however long it is quiet
/// (`tcp_idle_secs = 1` here): Kamailio sends calls for the binding over it.
#[test]
fn trunks_registering_over_tcp_with_one_registrar_share_one_connection() {
    let kamailio = kamailio_over(3_600, true);
    // The second trunk's user is unknown to this Kamailio: it is challenged, then refused.
    let second = format!(
        "transport = \"tcp\"\n\n[[trunks]]\nname = \"second\"\nmode = \"register\"\n\
         registrar = \"sip:{}\"\nusername = \"stranger\"\n\
         password_env = \"{PASSWORD_ENV}\"\ntransport = \"tcp\"\n",
        kamailio.addr()
    );
    let gateway = gateway_with(kamailio.addr(), &second, Some(100), "tcp_idle_secs = 1");
    assert_metric(&gateway, UP, &[TRUNK], |v| v == 1.0);
    assert_metric(
        &gateway,
        ATTEMPTS,
        &[("trunk", "second"), ("result", "refused")],
        |v| v >= 1.0,
    );
    assert_metric(
        &gateway,
        "voxgate_sip_tcp_connections",
        &[("direction", "outbound")],
        |v| v == 1.0,
    );
    // Quiet for three idle periods: still the same connection.
    std::thread::sleep(Duration::from_secs(3));
    let log = gateway.log();
    assert!(!log.contains("closing idle SIP TCP connection"), "{log}");
    assert!(
        !log.contains("TCP connection to the registrar closed"),
        "{log}"
    );
    assert_metric(
        &gateway,
        "voxgate_sip_tcp_connections",
        &[("direction", "outbound")],
        |v| v == 1.0,
    );
    call_the_aor_through(&kamailio);
}

#[test]
fn a_423_is_retried_with_the_registrars_min_expires() {
    let (run, registrar) = registrar("registrar_423.xml");
    let gateway = gateway(registrar, "expires = 60\n", None);
    run.wait().assert_success();
    assert_metric(&gateway, UP, &[TRUNK], |v| v == 1.0);
    assert_metric(&gateway, EXPIRES, &[TRUNK], |v| v == 120.0);
    assert_metric(
        &gateway,
        ATTEMPTS,
        &[TRUNK, ("result", "interval_too_brief")],
        |v| v == 1.0,
    );
    assert_metric(&gateway, ATTEMPTS, &[TRUNK, ("result", "ok")], |v| v == 1.0);
    assert!(
        gateway
            .log()
            .contains("423 Interval Too Brief, retrying with expires 120 s"),
        "log:\n{}",
        gateway.log()
    );
}

#[test]
fn a_403_backs_off_then_registers() {
    let (run, registrar) = registrar("registrar_forbidden_then_ok.xml");
    let gateway = gateway(registrar, "", None);
    let outcome = run.wait();
    outcome.assert_success();
    let (first, retry) = (register_at(&outcome, 1), register_at(&outcome, 2));
    // The first backoff is 5 s ± 20 %: never a tight loop.
    assert!(retry - first >= 4.0, "retried after {} s", retry - first);
    assert_metric(&gateway, UP, &[TRUNK], |v| v == 1.0);
    assert_metric(&gateway, ATTEMPTS, &[TRUNK, ("result", "refused")], |v| {
        v == 1.0
    });
    assert_metric(&gateway, ATTEMPTS, &[TRUNK, ("result", "ok")], |v| v == 1.0);
    let refused = format!("REGISTER to {registrar} refused: 403 Forbidden; retrying in");
    let log = gateway.log();
    assert!(
        log.lines()
            .any(|line| line.contains(&refused) && line.contains("trunk=\"carrier\"")),
        "no log line {refused:?} with the trunk:\n{log}"
    );
}

#[test]
fn no_answer_times_out_then_backs_off_and_registers() {
    let (run, registrar) = registrar("registrar_no_answer.xml");
    // T1 = 50 ms: Timer F (64·T1) after 3.2 s.
    let gateway = gateway(registrar, "", Some(50));
    let outcome = run.wait();
    outcome.assert_success();
    let first_tries = outcome
        .received()
        .iter()
        .filter(|m| m.header("CSeq").is_some_and(|c| c.starts_with("1 ")))
        .count();
    assert!(first_tries > 1, "the first REGISTER was retransmitted");
    let (first, retry) = (register_at(&outcome, 1), register_at(&outcome, 2));
    // Timer F (3.2 s), then the first backoff (5 s ± 20 %).
    assert!(
        retry - first >= 3.2 + 4.0,
        "retried after {} s",
        retry - first
    );
    assert_metric(&gateway, ATTEMPTS, &[TRUNK, ("result", "timeout")], |v| {
        v == 1.0
    });
    assert_metric(&gateway, ATTEMPTS, &[TRUNK, ("result", "ok")], |v| v == 1.0);
    assert_metric(&gateway, UP, &[TRUNK], |v| v == 1.0);
    assert!(
        gateway
            .log()
            .contains("timed out (no response); retrying in"),
        "log:\n{}",
        gateway.log()
    );
}

#[test]
fn a_changed_received_address_re_registers_with_the_rewritten_contact() {
    let (run, registrar) = registrar("registrar_received.xml");
    let gateway = gateway(registrar, "", None);
    run.wait().assert_success();
    assert_metric(&gateway, ATTEMPTS, &[TRUNK, ("result", "ok")], |v| v == 2.0);
    assert_metric(&gateway, UP, &[TRUNK], |v| v == 1.0);
    assert!(
        gateway
            .log()
            .contains("new=sip:voxgate@203.0.113.7:40000;transport=udp"),
        "log:\n{}",
        gateway.log()
    );
}

/// voxgate with the register-mode trunk `carrier` registering with `registrar` (a URI), plus
/// `extra` trunk keys, and `[dns] servers` naming `dns`.
fn gateway_with_dns(registrar: &str, extra: &str, dns: &DnsStub) -> Gateway {
    Gateway::start_with(GatewayConfig {
        allow_from: vec!["192.0.2.0/24".into()],
        env: vec![(PASSWORD_ENV.into(), PASSWORD.into())],
        extra: format!(
            "[[trunks]]\nname = \"carrier\"\nmode = \"register\"\n\
             registrar = \"{registrar}\"\nusername = \"voxgate\"\n\
             password_env = \"{PASSWORD_ENV}\"\n{extra}\n[dns]\nservers = [\"{}\"]\n",
            dns.addr()
        ),
        ..GatewayConfig::default()
    })
}

/// Waits (at most `timeout`) until `kamailio` holds voxgate's binding; asserts it does.
#[track_caller]
fn assert_bound_at(kamailio: &Kamailio, gateway: &Gateway, dns: &DnsStub, timeout: Duration) {
    let bindings = kamailio.wait_bindings(timeout, |b| holds_binding(b, gateway));
    assert!(
        holds_binding(&bindings, gateway),
        "no binding in Kamailio at {}: {bindings:?}\nDNS queries: {:?}\nlog:\n{}",
        kamailio.addr(),
        dns.queries(),
        gateway.log()
    );
}

/// A registrar name with a port is only resolved to addresses (RFC 3263 §4.2: no SRV), by the
/// configured name servers.
#[test]
fn a_registrar_name_with_a_port_is_resolved_without_srv_by_the_configured_name_servers() {
    let kamailio = kamailio(3_600);
    let dns = DnsStub::start(vec![Record::a("pbx.test", Ipv4Addr::LOCALHOST)]);
    let gateway = gateway_with_dns(
        &format!("sip:pbx.test:{}", kamailio.addr().port()),
        "",
        &dns,
    );
    assert_bound_at(&kamailio, &gateway, &dns, Duration::from_secs(10));
    let queries = dns.queries();
    assert!(
        queries
            .iter()
            .all(|(name, kind)| name == "pbx.test." && kind != "SRV"),
        "address lookups only: {queries:?}"
    );
}

/// The registrar is a domain: voxgate asks the DNS stub for `_sip._udp.pbx.test`, gets two
/// servers (RFC 3263), tries the preferred one, which answers 503, and fails over at once to
/// the next, Kamailio, which authenticates and binds it; calls then come through Kamailio.
#[test]
fn locates_the_registrar_by_srv_and_fails_over_from_a_503_to_the_next_server() {
    let kamailio = kamailio(3_600);
    let (unavailable, unavailable_addr) = registrar("registrar_unavailable.xml");
    let dns = DnsStub::start(two_servers(
        "pbx.test",
        "udp",
        [unavailable_addr.port(), kamailio.addr().port()],
    ));
    let gateway = gateway_with_dns("sip:pbx.test", "", &dns);

    assert_bound_at(&kamailio, &gateway, &dns, Duration::from_secs(10));
    assert_metric(&gateway, UP, &[TRUNK], |v| v == 1.0);
    assert_metric(&gateway, ATTEMPTS, &[TRUNK, ("result", "error_5xx")], |v| {
        v == 1.0
    });
    assert!(
        dns.queries()
            .contains(&("_sip._udp.pbx.test.".to_owned(), "SRV".to_owned())),
        "queries: {:?}",
        dns.queries()
    );
    let outcome = unavailable.wait();
    outcome.assert_success();
    assert_eq!(
        outcome
            .received()
            .iter()
            .filter(|m| m.cseq_method().as_deref() == Some("REGISTER"))
            .count(),
        1,
        "the 503 server got one REGISTER: {}",
        outcome.report()
    );
    let log = gateway.log();
    assert!(
        log.contains("503 Service Unavailable; trying the next server")
            && log.contains("trying the registrar's next server: b.pbx.test (SRV priority 20)"),
        "log:\n{log}"
    );

    call_the_aor_through(&kamailio);
    assert_metric(&gateway, CALLS, &[("result", "completed")], |v| v == 1.0);
}

/// DNS changes under a running registration: the SRV record (TTL 0, so voxgate asks again
/// after 10 s) moves from one Kamailio to another, and voxgate registers with the new one.
#[test]
fn when_dns_moves_the_registrar_voxgate_registers_with_the_new_server() {
    let first = kamailio(3_600);
    let second = kamailio(3_600);
    let srv = |kamailio: &Kamailio, target: &str| {
        vec![
            Record::srv("_sip._udp.pbx.test", 10, 0, kamailio.addr().port(), target).with_ttl(0),
            Record::a(target, Ipv4Addr::LOCALHOST).with_ttl(0),
        ]
    };
    let dns = DnsStub::start(srv(&first, "a.pbx.test"));
    let gateway = gateway_with_dns("sip:pbx.test", "", &dns);
    assert_bound_at(&first, &gateway, &dns, Duration::from_secs(10));

    dns.set_records(srv(&second, "b.pbx.test"));
    assert_bound_at(&second, &gateway, &dns, Duration::from_secs(30));
    assert!(
        gateway
            .log()
            .contains("the registrar's servers changed in DNS"),
        "log:\n{}",
        gateway.log()
    );
    assert_metric(&gateway, UP, &[TRUNK], |v| v == 1.0);
    call_the_aor_through(&second);
    assert_metric(&gateway, CALLS, &[("result", "completed")], |v| v == 1.0);
}

/// Over TCP, the preferred server refuses the connection (nothing listens on its port): voxgate
/// treats that as a 503 from it (RFC 3261 §8.1.3.1) and registers with the next server, a
/// Kamailio over TCP, at once: not after Timer F (32 s), which is beyond the wait here.
#[test]
fn over_tcp_a_server_that_refuses_the_connection_is_failed_over_at_once() {
    let kamailio = kamailio_over(3_600, true);
    let refusing = PortBlock::reserve(2).port(0);
    let dns = DnsStub::start(two_servers(
        "pbx.test",
        "tcp",
        [refusing, kamailio.addr().port()],
    ));
    let gateway = gateway_with_dns("sip:pbx.test", "transport = \"tcp\"\n", &dns);
    let over_tcp = |bindings: &[(String, String)]| {
        bindings
            .iter()
            .any(|(aor, address)| aor == "voxgate" && address.ends_with(";transport=tcp"))
    };
    let bindings = kamailio.wait_bindings(Duration::from_secs(10), over_tcp);
    assert!(
        over_tcp(&bindings),
        "no binding at the second server within 10 s: {bindings:?}\nDNS queries: {:?}\nlog:\n{}",
        dns.queries(),
        gateway.log()
    );
    assert_metric(&gateway, UP, &[TRUNK], |v| v == 1.0);
    assert_metric(
        &gateway,
        ATTEMPTS,
        &[TRUNK, ("result", "transport_error")],
        |v| v == 1.0,
    );
    assert_eq!(attempts(&gateway, "timeout"), 0.0);
    let log = gateway.log();
    assert!(
        log.contains("could not open a SIP TCP connection")
            && log.contains("trying the registrar's next server: b.pbx.test (SRV priority 20)"),
        "log:\n{log}"
    );
    call_the_aor_through(&kamailio);
    assert_metric(&gateway, CALLS, &[("result", "completed")], |v| v == 1.0);
}
