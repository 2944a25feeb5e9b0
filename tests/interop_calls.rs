//! Calls from SIPp (the PBX) to the real voxgate binary over loopback: echo audio, hang-up from
//! either side, CANCEL, admission, codec refusal, INVITE retransmission, hold/resume, late offer,
//! IPv6, the RTP inactivity timeout (and that holding exempts from it). Scenario files:
//! `tests/sipp/*.xml`; harness: `tests/common/`.
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::rtp::{verify_echo, RtpSink};
use common::sip::{self, Response};
use common::{Gateway, GatewayConfig, Sipp};

const CALLS_ACTIVE: &str = "voxgate_calls_active";
const CALLS_TOTAL: &str = "voxgate_calls_total";
const SETTLE: Duration = Duration::from_secs(10);

fn local_socket() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local = socket.local_addr().expect("local addr");
    (socket, local)
}

/// (1) PCMU call, ~3 s of RTP played and echoed back, BYE from the caller.
#[test]
fn echo_call_returns_the_callers_audio_and_is_counted() {
    if common::sipp::skip_without_root("echo_call_returns_the_callers_audio_and_is_counted") {
        return;
    }
    let gateway = Gateway::start("");
    let before = gateway.metrics().sum(CALLS_TOTAL);
    let packets = 150; // 3 s at 20 ms
    let sipp = Sipp::new("uac_echo.xml", gateway.sip_addr())
        .with_audio(packets)
        .pause_ms(3_600);
    let sink = RtpSink::bind(sipp.echo_addr());
    let outcome = sipp.run();
    let echoed = sink.finish();
    outcome.assert_success();
    let streams = verify_echo(&echoed, 1, packets, 0.9, 0.0)
        .unwrap_or_else(|e| panic!("echo check failed: {e}\n{}", outcome.report()));
    eprintln!("echo: {streams:?}");
    assert!(
        echoed
            .iter()
            .all(|p| p.from.ip() == gateway.sip_addr().ip()),
        "RTP from an unexpected address"
    );

    let active = gateway.wait_metric(CALLS_ACTIVE, &[], SETTLE, |v| v == 0.0);
    assert_eq!(active, 0.0, "calls_active after BYE");
    let total = gateway.wait_metric(CALLS_TOTAL, &[], SETTLE, |v| v >= before + 1.0);
    assert_eq!(total, before + 1.0, "calls_total counts the call once");
    let metrics = gateway.metrics();
    let rtp_in = metrics
        .get("voxgate_rtp_packets_total", &[("direction", "in")])
        .unwrap_or(0.0);
    let rtp_out = metrics
        .get("voxgate_rtp_packets_total", &[("direction", "out")])
        .unwrap_or(0.0);
    assert!(rtp_in >= packets as f64 * 0.9, "rtp in {rtp_in}");
    assert!(
        rtp_out >= echoed.len() as f64 * 0.9,
        "rtp out {rtp_out}, sink got {}",
        echoed.len()
    );
}

/// (2) SIGTERM with a call up: new INVITEs get 503, voxgate hangs the call up after
/// drain_timeout_secs and exits 0.
#[test]
fn sigterm_drains_refuses_new_calls_and_hangs_up_active_ones() {
    let drain = 2;
    let mut gateway = Gateway::start_with(GatewayConfig {
        drain_timeout_secs: drain,
        ..GatewayConfig::default()
    });
    let run = Sipp::new("uac_bye_from_gateway.xml", gateway.sip_addr()).spawn();
    let active = gateway.wait_metric(CALLS_ACTIVE, &[], SETTLE, |v| v >= 1.0);
    assert_eq!(active, 1.0, "the SIPp call never became active");

    gateway.terminate();
    let target = gateway.sip_addr();
    let (socket, local) = local_socket();
    // SIGTERM is handled asynchronously: an INVITE that still got 200 raced the signal, so it is
    // hung up and the INVITE repeated until the drain answer shows (bounded).
    let mut refusal = None;
    for _ in 0..20 {
        let invite = sip::request("INVITE", target, local, &sip::pcmu_offer(local.ip(), 4_000));
        let responses = sip::exchange(
            &socket,
            invite.text.as_bytes(),
            target,
            Duration::from_secs(3),
        );
        let Some(last) = responses.into_iter().rfind(Response::is_final) else {
            panic!("no final response to an INVITE during drain");
        };
        if (200..300).contains(&last.status) {
            sip::hang_up(&socket, &invite, &last, target, Duration::from_secs(3));
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        socket
            .send_to(
                sip::ack_for_failure(&invite, &last, target, local).as_bytes(),
                target,
            )
            .expect("ACK");
        refusal = Some(last);
        break;
    }
    let refusal = refusal.expect("INVITEs during drain were always accepted");
    assert_eq!(refusal.status, 503, "INVITE during drain: {}", refusal.text);

    let outcome = run.wait();
    outcome.assert_success();
    let status = gateway
        .wait_exit(Duration::from_secs(drain + 5))
        .expect("voxgate still running after drain");
    assert!(status.success(), "voxgate exit status {status}");
    let bye = outcome
        .received()
        .into_iter()
        .find(|m| m.first_line().starts_with("BYE "));
    assert!(bye.is_some(), "no BYE from voxgate\n{}", outcome.report());
}

/// (3) CANCEL while ringing: 200 to the CANCEL, 487 to the INVITE. Needs the echo agent option
/// `ring_ms` (180 first, answer after ring_ms).
#[test]
fn cancel_while_ringing_gets_487_and_200() {
    let gateway = Gateway::start_with(GatewayConfig {
        agent_extra: "ring_ms = 1000".into(),
        ..GatewayConfig::default()
    });
    let before = gateway.metrics().sum(CALLS_TOTAL);
    let outcome = Sipp::new("uac_cancel.xml", gateway.sip_addr()).run();
    outcome.assert_success();
    let finals: Vec<(u16, String)> = outcome
        .received()
        .iter()
        .filter_map(|m| {
            m.status()
                .filter(|s| *s >= 200)
                .map(|s| (s, m.cseq_method().unwrap_or_default()))
        })
        .collect();
    assert_eq!(
        finals,
        [(200, "CANCEL".to_owned()), (487, "INVITE".to_owned())],
        "{}",
        outcome.report()
    );
    assert_eq!(
        gateway.wait_metric(CALLS_ACTIVE, &[], SETTLE, |v| v == 0.0),
        0.0
    );
    assert!(gateway.metrics().sum(CALLS_TOTAL) <= before + 1.0);
}

/// (4) An INVITE from a source outside the trunk's allow_from gets 403.
#[test]
fn invite_from_outside_allow_from_gets_403() {
    let gateway = Gateway::start_with(GatewayConfig {
        allow_from: vec!["127.0.0.2/32".into()],
        ..GatewayConfig::default()
    });
    let outcome = Sipp::new("uac_forbidden.xml", gateway.sip_addr()).run();
    outcome.assert_success();
    assert_eq!(gateway.metrics().sum(CALLS_ACTIVE), 0.0);
    // No 200 was ever sent for the refused call.
    assert!(
        outcome.received().iter().all(|m| m.status() != Some(200)),
        "{}",
        outcome.report()
    );
}

/// (5) An offer with only G.729 gets 488; the ACK is absorbed.
#[test]
fn g729_only_offer_gets_488() {
    let gateway = Gateway::start("");
    let outcome = Sipp::new("uac_g729.xml", gateway.sip_addr()).run();
    outcome.assert_success();
    let finals: Vec<u16> = outcome
        .received()
        .iter()
        .filter_map(|m| m.status())
        .filter(|s| *s >= 200)
        .collect();
    assert_eq!(
        finals,
        [488],
        "exactly one 488 (no retransmission after the ACK)\n{}",
        outcome.report()
    );
    assert_eq!(gateway.metrics().sum(CALLS_ACTIVE), 0.0);
}

/// (6) The same INVITE twice over UDP: one dialog; its 200 is retransmitted (T1, then 2·T1)
/// until the ACK, then no more. Raw UDP from the test (SIPp cannot send two requests
/// back-to-back without possibly taking a response in between, which it treats as unexpected).
#[test]
fn retransmitted_invite_makes_one_dialog_and_200_repeats_until_ack() {
    let t1 = 200u64;
    let gateway = Gateway::start_with(GatewayConfig {
        t1_ms: Some(t1),
        ..GatewayConfig::default()
    });
    let before = gateway.metrics().sum(CALLS_TOTAL);
    let target = gateway.sip_addr();
    let (socket, local) = local_socket();
    let invite = sip::request(
        "INVITE",
        target,
        local,
        &sip::pcmu_offer(local.ip(), local.port() + 2),
    );
    socket
        .send_to(invite.text.as_bytes(), target)
        .expect("send");
    socket
        .send_to(invite.text.as_bytes(), target)
        .expect("send again");

    let start = Instant::now();
    let mut oks: Vec<(Duration, Response)> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while oks.len() < 3 && start.elapsed() < Duration::from_secs(5) {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if let Some(response) = Response::parse(&buf[..n]) {
                assert!(response.status < 300, "unexpected {}", response.text);
                // RFC 3261 §17.2.1: if the duplicate INVITE lands after the 200 went out, the
                // 200 is re-sent at once in answer to it. That copy is not a Timer-driven
                // retransmission, so one arriving within T1/4 of the previous 200 is skipped.
                let echo_of_duplicate = oks
                    .last()
                    .is_some_and(|(at, _)| start.elapsed() - *at < Duration::from_millis(t1 / 4));
                if response.status == 200 && !echo_of_duplicate {
                    oks.push((start.elapsed(), response));
                }
            }
        }
    }
    assert_eq!(
        oks.len(),
        3,
        "expected the 200 and two retransmissions before ACK"
    );
    let tags: Vec<Option<String>> = oks
        .iter()
        .map(|(_, r)| r.header("To").and_then(|t| sip::tag_of(&t)))
        .collect();
    assert!(
        tags[0].is_some() && tags.iter().all(|t| *t == tags[0]),
        "To tags differ: {tags:?}"
    );
    let gap1 = (oks[1].0 - oks[0].0).as_millis() as u64;
    let gap2 = (oks[2].0 - oks[1].0).as_millis() as u64;
    assert!(
        (t1 / 2..=t1 * 2).contains(&gap1),
        "first retransmission after {gap1} ms, T1 = {t1}"
    );
    assert!(
        (t1..=t1 * 4).contains(&gap2) && gap2 > gap1,
        "second retransmission after {gap2} ms (2·T1 expected)"
    );
    assert_eq!(gateway.metrics().sum(CALLS_ACTIVE), 1.0, "one dialog");

    socket
        .send_to(
            sip::in_dialog("ACK", 1, &invite, &oks[0].1, local).as_bytes(),
            target,
        )
        .expect("ACK");
    let late = sip::wait_for(&socket, Duration::from_millis(3 * t1 + 200), |r| {
        r.status == 200
    });
    assert!(late.is_none(), "200 retransmitted after the ACK");
    let bye = sip::in_dialog("BYE", 2, &invite, &oks[0].1, local);
    socket.send_to(bye.as_bytes(), target).expect("BYE");
    let ok = sip::wait_for(&socket, Duration::from_secs(3), |r| {
        r.header("CSeq").is_some_and(|c| c.contains("BYE"))
    });
    assert_eq!(ok.map(|r| r.status), Some(200), "BYE answered");
    assert_eq!(
        gateway.wait_metric(CALLS_ACTIVE, &[], SETTLE, |v| v == 0.0),
        0.0
    );
    assert_eq!(
        gateway.wait_metric(CALLS_TOTAL, &[], SETTLE, |v| v > before),
        before + 1.0,
        "one call counted"
    );
}

/// (9) Hold (a=sendonly → a=recvonly) and resume (sendrecv), o= version +1 per change.
#[test]
fn hold_and_resume_reinvites_answer_with_matching_direction() {
    let gateway = Gateway::start("");
    let outcome = Sipp::new("uac_hold.xml", gateway.sip_addr()).run();
    outcome.assert_success();
    let answers: Vec<String> = outcome
        .received()
        .into_iter()
        .filter(|m| m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE"))
        .map(|m| m.body().to_owned())
        .collect();
    let mut distinct = answers.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "three distinct SDP answers\n{}",
        outcome.report()
    );
    let version = |sdp: &str| -> u64 {
        let o = sdp
            .lines()
            .find(|l| l.starts_with("o="))
            .unwrap_or_else(|| panic!("no o= in {sdp}"));
        o.split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad o= {o}"))
    };
    let direction = |sdp: &str| -> String {
        let found: Vec<&str> = sdp
            .lines()
            .map(str::trim)
            .filter(|l| ["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"].contains(l))
            .collect();
        found.join(",")
    };
    assert_eq!(direction(&distinct[0]), "a=sendrecv");
    assert_eq!(direction(&distinct[1]), "a=recvonly");
    assert_eq!(direction(&distinct[2]), "a=sendrecv");
    let (v1, v2, v3) = (
        version(&distinct[0]),
        version(&distinct[1]),
        version(&distinct[2]),
    );
    assert_eq!(
        (v2, v3),
        (v1 + 1, v1 + 2),
        "o= version must go up by one per change"
    );
    assert_eq!(
        gateway.wait_metric(CALLS_ACTIVE, &[], SETTLE, |v| v == 0.0),
        0.0
    );
}

/// (11) INVITE without SDP: the 200 carries the offer, the ACK the answer.
#[test]
fn offerless_invite_gets_an_offer_in_the_200() {
    let gateway = Gateway::start("");
    let outcome = Sipp::new("uac_late_offer.xml", gateway.sip_addr()).run();
    outcome.assert_success();
    let ok = outcome
        .received()
        .into_iter()
        .find(|m| m.status() == Some(200) && m.cseq_method().as_deref() == Some("INVITE"))
        .expect("200 to INVITE");
    assert!(
        ok.header("Content-Type")
            .is_some_and(|c| c.starts_with("application/sdp")),
        "{}",
        ok.text
    );
    assert!(
        ok.body().contains("a=rtpmap:0 PCMU/8000") || ok.body().contains("RTP/AVP 0"),
        "{}",
        ok.text
    );
    assert_eq!(
        gateway.wait_metric(CALLS_ACTIVE, &[], SETTLE, |v| v == 0.0),
        0.0
    );
}

/// IPv6: OPTIONS and a call over [::1] when the machine has ::1.
#[test]
fn ipv6_loopback_options_and_call() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("SKIP ipv6_loopback_options_and_call: ::1 is not available on this machine");
        return;
    }
    let gateway = Gateway::start_with(GatewayConfig {
        ipv6: true,
        ..GatewayConfig::default()
    });
    let v6 = gateway.sip_addr_v6().expect("v6 listen");
    let options = sip::options(v6, Duration::from_secs(3)).expect("OPTIONS over ::1 answered");
    assert_eq!(options.status, 200);
    let outcome = Sipp::new("uac_basic.xml", v6).pause_ms(500).run();
    outcome.assert_success();
    assert_eq!(
        gateway.wait_metric(CALLS_ACTIVE, &[], SETTLE, |v| v == 0.0),
        0.0
    );
}

/// RTP timeout: an answered call whose caller never sends RTP gets a BYE from voxgate after
/// `rtp.timeout_secs`, and counts as a failed call.
#[test]
fn silent_call_is_hung_up_after_the_rtp_timeout() {
    let gateway = Gateway::start_with(GatewayConfig {
        rtp_extra: "timeout_secs = 2".into(),
        ..GatewayConfig::default()
    });
    let outcome = Sipp::new("uac_silent.xml", gateway.sip_addr()).run();
    outcome.assert_success();
    let bye = outcome
        .received()
        .into_iter()
        .find(|m| m.first_line().starts_with("BYE "));
    assert!(bye.is_some(), "no BYE from voxgate\n{}", outcome.report());
    let failed = [("result", "failed")];
    assert_eq!(
        gateway.wait_metric(CALLS_TOTAL, &failed, SETTLE, |v| v >= 1.0),
        1.0,
        "the timed-out call counts as failed"
    );
    let metrics = gateway.metrics();
    assert_eq!(
        metrics.sum(CALLS_TOTAL),
        1.0,
        "and only that:\n{}",
        metrics.text
    );
    let log = gateway.log();
    assert!(
        log.contains("no RTP from the caller for 2 s"),
        "reason not logged:\n{log}"
    );
}

/// RTP timeout while held: a caller that holds the call (a=sendonly) and sends nothing for
/// longer than `rtp.timeout_secs` is not hung up (`rtp.hold_timeout_secs` is 0); it hangs up
/// itself and the call counts as completed.
#[test]
fn held_call_is_not_hung_up_for_silence() {
    let gateway = Gateway::start_with(GatewayConfig {
        rtp_extra: "timeout_secs = 1".into(),
        ..GatewayConfig::default()
    });
    let outcome = Sipp::new("uac_hold_silent.xml", gateway.sip_addr()).run();
    outcome.assert_success();
    let bye = outcome
        .received()
        .into_iter()
        .find(|m| m.first_line().starts_with("BYE "));
    assert!(
        bye.is_none(),
        "voxgate hung up a held call\n{}",
        outcome.report()
    );
    let completed = [("result", "completed")];
    assert_eq!(
        gateway.wait_metric(CALLS_TOTAL, &completed, SETTLE, |v| v >= 1.0),
        1.0
    );
    assert_eq!(
        gateway
            .metrics()
            .get(CALLS_TOTAL, &[("result", "failed")])
            .unwrap_or(0.0),
        0.0
    );
}
