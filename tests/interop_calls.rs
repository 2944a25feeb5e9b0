//! Calls from SIPp (the PBX) to the real voxgate binary over loopback: echo audio, hang-up from
//! either side, CANCEL, admission, codec refusal, INVITE retransmission, hold/resume, late offer,
//! IPv6, RTCP both ways (the test as the caller's media), RFC 4028 session timers with either side
//! refreshing, the RTP inactivity timeout (and that holding exempts from it), a BYE to a Contact
//! by name located through the configured DNS. Scenario files: `tests/sipp/*.xml`; harness:
//! `tests/common/`.
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dns::{DnsStub, Record};
use common::pcap::{index_of, payload_for};
use common::rtp::{
    receiver_report, report_blocks, rtcp_sender_ssrc, rtp_packet, sdes_cnames, sender_report,
    split_rtcp, verify_echo, RtpPacket, RtpSink, RTCP_RR, RTCP_SDES, RTCP_SR,
};
use common::sip::{self, Response};
use common::sipp::TracedMessage;
use common::{Gateway, GatewayConfig, PortBlock, Sipp};

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
    // SIPp's pcap playback on a loaded 2-core CI machine now and then sends a packet later than
    // the jitter buffer's 40 ms: voxgate then conceals in its place (its job; the concealment
    // itself is unit-tested in media/jitter.rs). Every frame that is not the caller's must be
    // one of the concealments voxgate reports for the call (2 % always allowed, never over
    // 10 %); everything else must come back byte-exact and in order.
    let concealed = gateway.wait_concealed_frames(SETTLE);
    let allowed = concealed.clamp(packets * 2 / 100, packets / 10);
    // verify_echo floors ratio × packets: half a frame more gives exactly `allowed`.
    let ratio = (allowed as f64 + 0.5) / packets as f64;
    let streams = verify_echo(&echoed, 1, packets, 0.9, ratio).unwrap_or_else(|e| {
        panic!(
            "echo check failed ({concealed} frames concealed by voxgate): {e}\n{}",
            outcome.report()
        )
    });
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
    // Each call adds its packets to the counters every second and when its media stops.
    let rtp = "voxgate_rtp_packets_total";
    let rtp_in = gateway.wait_metric(rtp, &[("direction", "in")], SETTLE, |v| {
        v >= packets as f64 * 0.9
    });
    let rtp_out = gateway.wait_metric(rtp, &[("direction", "out")], SETTLE, |v| {
        v >= echoed.len() as f64 * 0.9
    });
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

/// The caller's Contact names a host (`caller.test`) that only the configured name server
/// knows: voxgate's BYE (at the end of a drain) goes where that server says, not to the address
/// the INVITE came from (RFC 3261 §12.2.1.1: the remote target; RFC 3263: located by DNS).
#[test]
fn bye_to_a_contact_by_name_goes_where_the_configured_dns_says() {
    let dns = DnsStub::start(vec![Record::a("caller.test", Ipv4Addr::LOCALHOST)]);
    let gateway = Gateway::start_with(GatewayConfig {
        drain_timeout_secs: 1,
        extra: format!("[dns]\nservers = [\"{}\"]\n", dns.addr()),
        ..GatewayConfig::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let template = std::fs::read_to_string(common::sipp::scenario_path("uac_bye_from_gateway.xml"))
        .expect("scenario");
    let scenario = dir.path().join("uac_bye_to_name.xml");
    std::fs::write(
        &scenario,
        template.replacen(
            "Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>",
            "Contact: <sip:sipp@caller.test:[local_port];transport=[transport]>",
            1,
        ),
    )
    .expect("write scenario");
    let run = Sipp::new(&scenario.display().to_string(), gateway.sip_addr()).spawn();
    let active = gateway.wait_metric(CALLS_ACTIVE, &[], SETTLE, |v| v >= 1.0);
    assert_eq!(active, 1.0, "the SIPp call never became active");
    gateway.terminate();
    let outcome = run.wait();
    outcome.assert_success();
    let bye = outcome
        .received()
        .into_iter()
        .find(|m| m.first_line().starts_with("BYE "))
        .expect("voxgate's BYE");
    assert!(
        bye.first_line().starts_with("BYE sip:sipp@caller.test:"),
        "{}",
        bye.first_line()
    );
    assert!(
        dns.queries()
            .iter()
            .any(|(name, kind)| name == "caller.test." && (kind == "A" || kind == "AAAA")),
        "queries: {:?}",
        dns.queries()
    );
    assert!(
        !dns.queries().iter().any(|(_, kind)| kind == "SRV"),
        "a port in the URI: no SRV (RFC 3263 §4.2)"
    );
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

/// A scanner, or a forged source, INVITEs from outside every trunk's allow_from and never
/// ACKs: each INVITE gets its 403 once (SIPp with -nr fails on a repeated one), the refusals
/// are counted, and the log names the source once, not once per INVITE. Its OPTIONS get their
/// 200s, and neither leaves a transaction behind (RFC 3261 §8.2.7).
#[test]
fn a_scanner_gets_each_answer_once_one_log_line_and_no_transaction() {
    let gateway = Gateway::start_with(GatewayConfig {
        allow_from: vec!["127.0.0.2/32".into()],
        ..GatewayConfig::default()
    });
    let scans = 20;
    Sipp::new("uac_forbidden_no_ack.xml", gateway.sip_addr())
        .no_retransmissions()
        .calls(scans, scans, 50)
        .run()
        .assert_success();
    assert_eq!(
        gateway.wait_metric(
            "voxgate_unknown_source_invites_total",
            &[],
            Duration::from_secs(5),
            |v| v >= f64::from(scans)
        ),
        f64::from(scans)
    );
    let log = gateway.log();
    // The test gateways log at debug level, where every refusal has its line.
    let warnings = log
        .lines()
        .filter(|line| line.contains(" WARN ") && line.contains("refused new call (403)"))
        .count();
    assert_eq!(warnings, 1, "one warning for {scans} refusals:\n{log}");
    assert!(
        log.contains("source 127.0.0.1 is not allowed by any trunk"),
        "{log}"
    );
    let sent = gateway.metrics();
    let out = sent
        .get(
            "voxgate_sip_messages_total",
            &[("method", "INVITE"), ("direction", "out")],
        )
        .unwrap_or(0.0);
    assert_eq!(
        out,
        f64::from(2 * scans),
        "a 100 and a 403 per INVITE, nothing more"
    );
    // Its OPTIONS probes (`sipvicious svmap`) are answered statelessly too. (The harness's
    // readiness check sent OPTIONS of its own.)
    let options_out = || {
        gateway
            .metrics()
            .get(
                "voxgate_sip_messages_total",
                &[("method", "OPTIONS"), ("direction", "out")],
            )
            .unwrap_or(0.0)
    };
    let before = options_out();
    Sipp::new("uac_options.xml", gateway.sip_addr())
        .no_retransmissions()
        .calls(scans, scans, 50)
        .run()
        .assert_success();
    assert_eq!(
        options_out() - before,
        f64::from(scans),
        "a 200 per OPTIONS"
    );
    assert_eq!(
        gateway
            .metrics()
            .get("voxgate_sip_transactions", &[("role", "server")]),
        Some(0.0),
        "no transaction held for a refused INVITE or an OPTIONS"
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

/// The caller's media played by the test from an RTP socket it owns: one thread sends PCMU
/// every 20 ms (payloads from [`pcap::payload_for`]), another records what voxgate sends back.
struct CallerMedia {
    stop: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<(Instant, RtpPacket)>>>,
    sent: Arc<AtomicU32>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const CALLER_SSRC: u32 = 0x5eed_0002;

impl CallerMedia {
    fn start(socket: UdpSocket, to: SocketAddr) -> CallerMedia {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU32::new(0));
        let sender = socket.try_clone().expect("clone RTP socket");
        let (stop_send, sent_count) = (stop.clone(), sent.clone());
        let send = std::thread::spawn(move || {
            let start = Instant::now();
            for i in 0usize.. {
                if stop_send.load(Ordering::SeqCst) || i >= 9_000 {
                    return;
                }
                let packet = rtp_packet(i as u16, (i * 160) as u32, CALLER_SSRC, &payload_for(i));
                let _ = sender.send_to(&packet, to);
                sent_count.fetch_add(1, Ordering::SeqCst);
                // Pacing the audio clock, not waiting for a condition.
                let next = start + Duration::from_millis(20 * (i as u64 + 1));
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let (stop_read, log) = (stop.clone(), received.clone());
        let read = std::thread::spawn(move || {
            let mut buffer = [0u8; 2048];
            while !stop_read.load(Ordering::SeqCst) {
                if let Ok((n, from)) = socket.recv_from(&mut buffer) {
                    if let Some(packet) = RtpPacket::parse(&buffer[..n], from) {
                        log.lock().expect("lock").push((Instant::now(), packet));
                    }
                }
            }
        });
        CallerMedia {
            stop,
            received,
            sent,
            threads: vec![send, read],
        }
    }

    /// Packets voxgate sent that arrived after `since`.
    fn received_since(&self, since: Instant) -> Vec<RtpPacket> {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, packet)| packet.clone())
            .collect()
    }

    /// Waits up to `timeout` until `check` holds on the packets received since `since`.
    fn wait(
        &self,
        since: Instant,
        timeout: Duration,
        check: impl Fn(&[RtpPacket]) -> bool,
    ) -> Vec<RtpPacket> {
        let deadline = Instant::now() + timeout;
        loop {
            let packets = self.received_since(since);
            if check(&packets) || Instant::now() >= deadline {
                return packets;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CallerMedia {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Reads RTCP datagrams on `socket` until one from `from` satisfies `want`, up to `timeout`.
fn next_rtcp(
    socket: &UdpSocket,
    from: SocketAddr,
    timeout: Duration,
    want: impl Fn(&[(u8, &[u8])]) -> bool,
) -> Option<Vec<(u8, Vec<u8>)>> {
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; 2048];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let Ok((n, source)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        assert_eq!(source, from, "RTCP from voxgate's RTP port + 1");
        let packets = split_rtcp(&buffer[..n])
            .unwrap_or_else(|| panic!("not a compound RTCP packet: {:02x?}", &buffer[..n]));
        if want(&packets) {
            return Some(
                packets
                    .into_iter()
                    .map(|(kind, bytes)| (kind, bytes.to_vec()))
                    .collect(),
            );
        }
    }
    None
}

/// (12) RTCP (RFC 3550) between the caller and voxgate, the caller played by the test from an
/// RTP/RTCP socket pair it owns: voxgate's compound reports reach the caller's RTP port + 1 from
/// voxgate's RTP port + 1, start with SR or RR, carry an SDES CNAME and the SSRC of voxgate's
/// RTP. An RR and an SR from the caller are read without disturbing the call: the SR comes back
/// as LSR in voxgate's next report block about the caller, and the echo goes on.
#[test]
fn rtcp_reports_flow_both_ways_without_disturbing_the_call() {
    let mut gateway = Gateway::start_with(GatewayConfig {
        rtp_extra: "rtcp_interval_secs = 1".into(),
        ..GatewayConfig::default()
    });
    let target = gateway.sip_addr();
    let (sip_socket, local) = local_socket();
    let media = PortBlock::reserve(2);
    let rtp = UdpSocket::bind(("127.0.0.1", media.port(0))).expect("bind caller RTP");
    let rtcp = UdpSocket::bind(("127.0.0.1", media.port(1))).expect("bind caller RTCP");
    let invite = sip::request(
        "INVITE",
        target,
        local,
        &sip::pcmu_offer(local.ip(), media.port(0)),
    );
    let ok = sip::exchange(
        &sip_socket,
        invite.text.as_bytes(),
        target,
        Duration::from_secs(5),
    )
    .into_iter()
    .rfind(Response::is_final)
    .expect("final response to the INVITE");
    assert_eq!(ok.status, 200, "{}", ok.text);
    sip_socket
        .send_to(
            sip::in_dialog("ACK", 1, &invite, &ok, local).as_bytes(),
            target,
        )
        .expect("ACK");
    let voxgate_rtp = sip::sdp_rtp_addr(ok.body());
    let voxgate_rtcp = SocketAddr::new(voxgate_rtp.ip(), voxgate_rtp.port() + 1);

    let start = Instant::now();
    let caller = CallerMedia::start(rtp, voxgate_rtp);
    let first = caller.wait(start, Duration::from_secs(5), |p| !p.is_empty());
    let voxgate_ssrc = first.first().expect("RTP from voxgate").ssrc;

    let report = next_rtcp(&rtcp, voxgate_rtcp, Duration::from_secs(10), |_| true)
        .expect("an RTCP report from voxgate within 10 s (interval 1 s)");
    let kinds: Vec<u8> = report.iter().map(|(kind, _)| *kind).collect();
    assert!(
        matches!(kinds.first(), Some(&RTCP_SR | &RTCP_RR)),
        "compound starts with SR or RR: {kinds:?}"
    );
    assert_eq!(rtcp_sender_ssrc(&report[0].1), Some(voxgate_ssrc));
    let cnames: Vec<(u32, String)> = report
        .iter()
        .filter(|(kind, _)| *kind == RTCP_SDES)
        .flat_map(|(_, bytes)| sdes_cnames(bytes))
        .collect();
    assert!(
        cnames
            .iter()
            .any(|(ssrc, cname)| *ssrc == voxgate_ssrc && !cname.is_empty()),
        "SDES CNAME for voxgate's SSRC {voxgate_ssrc:#x}: {cnames:?} in {kinds:?}"
    );

    // The caller's own reports: an RR, then an SR whose NTP time voxgate must echo as LSR.
    let highest = first.last().map_or(0, |p| u32::from(p.seq));
    rtcp.send_to(
        &receiver_report(CALLER_SSRC, (voxgate_ssrc, highest)),
        voxgate_rtcp,
    )
    .expect("send RR");
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    let ntp = ((since_epoch.as_secs() + 2_208_988_800) << 32)
        | ((u64::from(since_epoch.subsec_nanos()) << 32) / 1_000_000_000);
    let sent_at = Instant::now();
    let packets = caller.sent.load(Ordering::SeqCst);
    rtcp.send_to(
        &sender_report(CALLER_SSRC, ntp, (voxgate_ssrc, highest), packets),
        voxgate_rtcp,
    )
    .expect("send SR");
    let lsr = (ntp >> 16) as u32;
    let answered = next_rtcp(&rtcp, voxgate_rtcp, Duration::from_secs(10), |packets| {
        packets
            .iter()
            .filter(|(kind, _)| *kind == RTCP_SR || *kind == RTCP_RR)
            .flat_map(|(kind, bytes)| report_blocks(*kind, bytes))
            .any(|block| block.ssrc == CALLER_SSRC && block.last_sr == lsr)
    });
    assert!(
        answered.is_some(),
        "no report from voxgate about the caller's SSRC with LSR {lsr:#x}"
    );

    let echoed = caller.wait(sent_at, Duration::from_secs(5), |packets| {
        packets
            .iter()
            .filter(|p| p.ssrc == voxgate_ssrc && index_of(&p.payload).is_some())
            .count()
            >= 25
    });
    let echoed = echoed
        .iter()
        .filter(|p| p.ssrc == voxgate_ssrc && index_of(&p.payload).is_some())
        .count();
    assert!(
        echoed >= 25,
        "echo after the caller's RTCP: {echoed} packets of ours came back"
    );
    drop(caller);
    let bye = sip::hang_up(&sip_socket, &invite, &ok, target, Duration::from_secs(3));
    assert_eq!(bye.map(|r| r.status), Some(200), "BYE answered");
    gateway.assert_running();
}

/// RFC 4028 over the wire needs real time: voxgate refuses intervals below Min-SE 90 s (the
/// RFC 4028 §4 floor, also its configuration floor), so these calls last 45–70 s each.
const SESSION_TIMER_DEADLINE: Duration = Duration::from_secs(110);

/// The first message in `messages` whose start line begins with `start`.
fn first_starting<'a>(messages: &'a [TracedMessage], start: &str) -> Option<&'a TracedMessage> {
    messages.iter().find(|m| m.first_line().starts_with(start))
}

/// The 200s voxgate sent to the caller's INVITEs and UPDATEs, one per CSeq (retransmissions
/// dropped), as (CSeq, Session-Expires).
fn timer_answers(received: &[TracedMessage]) -> Vec<(String, Option<String>)> {
    let mut answers: Vec<(String, Option<String>)> = Vec::new();
    for message in received {
        let method = message.cseq_method().unwrap_or_default();
        if message.status() != Some(200) || !(method == "INVITE" || method == "UPDATE") {
            continue;
        }
        let cseq = message.header("CSeq").unwrap_or_default();
        if answers.iter().all(|(seen, _)| *seen != cseq) {
            answers.push((cseq, message.header("Session-Expires")));
        }
    }
    answers
}

/// voxgate for calls that carry no RTP for over a minute (the session-timer scenarios are
/// signalling only): the RTP inactivity timeout (60 s by default) is switched off.
fn signalling_only_gateway() -> Gateway {
    Gateway::start_with(GatewayConfig {
        rtp_extra: "timeout_secs = 0".into(),
        ..GatewayConfig::default()
    })
}

/// (13) RFC 4028 with the caller (SIPp) as the refresher: Session-Expires 90;refresher=uac and
/// Min-SE 90; it refreshes by re-INVITE at 6 s and by UPDATE at 63 s, and hangs up at 69 s.
/// Every 200 of voxgate carries Session-Expires 90;refresher=uac, and voxgate never sends BYE:
/// without the re-INVITE's refresh it would at 60 s, without the UPDATE's at 66 s.
#[test]
fn session_timer_refreshed_by_the_caller_keeps_the_call_up_past_the_interval() {
    let gateway = signalling_only_gateway();
    let outcome = Sipp::new("uac_session_timer.xml", gateway.sip_addr())
        .deadline(SESSION_TIMER_DEADLINE)
        .run();
    outcome.assert_success();
    let received = outcome.received();
    let answers = timer_answers(&received);
    let cseqs: Vec<&str> = answers.iter().map(|(cseq, _)| cseq.as_str()).collect();
    assert_eq!(
        cseqs,
        ["1 INVITE", "2 INVITE", "3 UPDATE"],
        "{}",
        outcome.report()
    );
    for (cseq, session_expires) in &answers {
        assert_eq!(
            session_expires.as_deref(),
            Some("90;refresher=uac"),
            "200 to {cseq}"
        );
    }
    assert!(
        first_starting(&received, "BYE ").is_none(),
        "voxgate hung up a refreshed call\n{}",
        outcome.report()
    );
    let traced = outcome.traced();
    let answered = traced
        .iter()
        .find(|m| !m.sent && m.status() == Some(200))
        .expect("200 to the INVITE")
        .at_secs;
    let bye = traced
        .iter()
        .find(|m| m.sent && m.first_line().starts_with("BYE "))
        .expect("SIPp's BYE")
        .at_secs;
    assert!(
        bye - answered > 66.0,
        "the call must outlive the unrefreshed expiry for the test to mean anything \
         (BYE {:.1} s after the 200)",
        bye - answered
    );
    assert_eq!(
        gateway.wait_metric(CALLS_ACTIVE, &[], SETTLE, |v| v == 0.0),
        0.0
    );
}

/// (14) RFC 4028 with the caller as the refresher that never refreshes: voxgate ends the call
/// with BYE before the session expires (§10: at 90 − min(32, 30) = 60 s after its 200).
#[test]
fn session_timer_without_refresh_ends_with_bye_before_expiry() {
    let gateway = signalling_only_gateway();
    let before = gateway
        .metrics()
        .get(CALLS_TOTAL, &[("result", "failed")])
        .unwrap_or(0.0);
    let outcome = Sipp::new("uac_session_timer_expiry.xml", gateway.sip_addr())
        .deadline(SESSION_TIMER_DEADLINE)
        .run();
    outcome.assert_success();
    let received = outcome.received();
    let answered = received
        .iter()
        .find(|m| m.status() == Some(200))
        .expect("200 to the INVITE");
    assert_eq!(
        answered.header("Session-Expires").as_deref(),
        Some("90;refresher=uac")
    );
    let bye = first_starting(&received, "BYE ").expect("BYE from voxgate");
    let after = bye.at_secs - answered.at_secs;
    assert!(
        (45.0..90.0).contains(&after),
        "BYE {after:.1} s after the 200: must come before the 90 s session expires, \
         and not before the caller could have refreshed"
    );
    let failed = gateway.wait_metric(CALLS_TOTAL, &[("result", "failed")], SETTLE, |v| v > before);
    assert_eq!(failed, before + 1.0, "an expired session counts as failed");
}

/// What voxgate's refresh request looked like and when it came, for (15) and (16).
fn voxgate_refresh(outcome: &common::sipp::SippOutcome, method: &str) -> (f64, TracedMessage) {
    let received = outcome.received();
    let answered = received
        .iter()
        .find(|m| m.status() == Some(200))
        .unwrap_or_else(|| panic!("200 to the INVITE\n{}", outcome.report()));
    assert_eq!(
        answered.header("Session-Expires").as_deref(),
        Some("90;refresher=uas"),
        "voxgate accepts being the refresher"
    );
    let refresh = first_starting(&received, &format!("{method} "))
        .unwrap_or_else(|| panic!("no {method} from voxgate\n{}", outcome.report()))
        .clone();
    assert_eq!(
        refresh.header("Session-Expires").as_deref(),
        Some("90;refresher=uac"),
        "in its own request voxgate is the transaction's UAC (RFC 4028 §7.2)"
    );
    (refresh.at_secs - answered.at_secs, refresh)
}

/// (15) RFC 4028 with voxgate as the refresher (Session-Expires 90;refresher=uas) and a caller
/// that allows UPDATE: voxgate refreshes with a body-less UPDATE at half the interval, SIPp
/// answers 200, then hangs up.
#[test]
fn session_timer_with_voxgate_refreshing_sends_update_at_half_the_interval() {
    let gateway = signalling_only_gateway();
    let outcome = Sipp::new("uac_session_timer_uas.xml", gateway.sip_addr())
        .deadline(SESSION_TIMER_DEADLINE)
        .run();
    outcome.assert_success();
    let (after, update) = voxgate_refresh(&outcome, "UPDATE");
    assert!(
        (40.0..60.0).contains(&after),
        "UPDATE {after:.1} s after the 200 (half of 90 s expected)"
    );
    assert!(update.body().is_empty(), "refresh without an offer");
    assert!(
        first_starting(&outcome.received(), "BYE ").is_none(),
        "{}",
        outcome.report()
    );
}

/// (16) As (15) with a caller whose Allow lacks UPDATE: voxgate refreshes with a re-INVITE
/// carrying its unchanged offer; SIPp answers 200 with SDP and voxgate ACKs it.
#[test]
fn session_timer_with_voxgate_refreshing_sends_reinvite_without_update_support() {
    let gateway = signalling_only_gateway();
    let outcome = Sipp::new("uac_session_timer_uas_reinvite.xml", gateway.sip_addr())
        .deadline(SESSION_TIMER_DEADLINE)
        .run();
    outcome.assert_success();
    let (after, reinvite) = voxgate_refresh(&outcome, "INVITE");
    assert!(
        (40.0..60.0).contains(&after),
        "re-INVITE {after:.1} s after the 200 (half of 90 s expected)"
    );
    let received = outcome.received();
    let first_answer = received
        .iter()
        .find(|m| m.status() == Some(200))
        .expect("200")
        .body()
        .to_owned();
    assert_eq!(
        reinvite.body(),
        first_answer,
        "the refresh re-offers the session unchanged (same o= version)"
    );
    assert!(
        first_starting(&received, "ACK ").is_some(),
        "ACK for the refresh's 200"
    );
    assert!(
        first_starting(&received, "BYE ").is_none(),
        "{}",
        outcome.report()
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
