//! Self-test of the interop harness against SIPp itself as the stand-in UAS (`sipp -sn uas
//! -rtp_echo`): proves the scenarios, the pcap, the echo sink and the checks work, independent
//! of voxgate.
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::pcap::{index_of, payload_for};
use common::rtp::{verify_echo, RtpSink};
use common::{PortBlock, Sipp};

/// `sipp -sn uas -rtp_echo`, killed on drop.
struct StandIn {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl StandIn {
    fn start() -> StandIn {
        StandIn::start_with(&["-sn", "uas"])
    }

    fn start_with(scenario: &[&str]) -> StandIn {
        let ports = PortBlock::reserve(8);
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new("sipp")
            .args(scenario)
            .args([
                "-rtp_echo",
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-nostdin",
            ])
            .args([
                "-p",
                &ports.port(0).to_string(),
                "-cp",
                &ports.port(1).to_string(),
            ])
            .args(["-mp", &ports.port(2).to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sipp uas");
        let addr = format!("127.0.0.1:{}", ports.port(0))
            .parse()
            .expect("addr");
        // The stand-in binds before answering anything; a short wait for its socket is the
        // only readiness signal SIPp offers (it does not answer OPTIONS by default).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::UdpSocket::bind(addr).is_ok() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        StandIn {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn payload_pattern_identifies_each_packet_and_is_never_silence() {
    for i in [0, 1, 95, 96, 149, 1499, 9215] {
        let payload = payload_for(i);
        assert_eq!(index_of(&payload), Some(i));
        assert!(payload.iter().all(|&b| b != 0xff && b != 0x7f));
    }
    assert_ne!(payload_for(3), payload_for(4));
    assert_eq!(index_of(&[0xff; 160]), None);
}

#[test]
fn echo_scenario_against_sipp_standin_returns_every_packet_in_order() {
    if common::sipp::skip_without_root("echo_scenario_against_sipp_standin") {
        return;
    }
    let uas = StandIn::start();
    let sipp = Sipp::new("uac_echo.xml", uas.addr)
        .with_audio(100)
        .pause_ms(2_500);
    let sink = RtpSink::bind(sipp.echo_addr());
    let outcome = sipp.run();
    let packets = sink.finish();
    outcome.assert_success();
    let streams = verify_echo(&packets, 1, 100, 0.9, 0.0)
        .unwrap_or_else(|e| panic!("{e}\n{}", outcome.report()));
    // SIPp's echo is byte-for-byte, so the stand-in must return all 100.
    assert_eq!(streams[0].matched, 100);
    let received = outcome.received();
    assert!(
        received
            .iter()
            .any(|m| m.status() == Some(200) && m.cseq_method().as_deref() == Some("BYE")),
        "{}",
        outcome.report()
    );
}

#[test]
fn signalling_scenarios_run_against_a_sipp_standin_uas() {
    let standin = common::sipp::scenario_path("standin_uas.xml")
        .display()
        .to_string();
    for scenario in ["uac_basic.xml", "uac_hold.xml", "uac_late_offer.xml"] {
        let uas = StandIn::start_with(&["-sf", &standin, "-m", "1"]);
        let outcome = Sipp::new(scenario, uas.addr).pause_ms(200).run();
        assert_eq!(outcome.code(), Some(0), "{scenario}:\n{}", outcome.report());
    }
}

/// SIPp's trace stamps carry the date: a call that runs across midnight (or a month's or a
/// year's end) keeps its times in order.
#[test]
fn trace_times_run_on_across_midnight() {
    use common::sipp::parse_clock;
    let before = parse_clock("2026-11-21 23:59:44.689008");
    let after = parse_clock("2026-11-22 00:00:29.690847");
    assert!(
        (after - before - 45.001839).abs() < 1e-6,
        "{}",
        after - before
    );
    let old_year = parse_clock("2024-12-31 23:59:59.500000");
    let new_year = parse_clock("2025-01-01 00:00:00.250000");
    assert!((new_year - old_year - 0.75).abs() < 1e-6);
    // Leap day, and the epoch itself.
    assert_eq!(
        parse_clock("2024-03-01 00:00:00") - parse_clock("2024-02-28 00:00:00"),
        2.0 * 86_400.0
    );
    assert_eq!(parse_clock("1970-01-02 00:00:01"), 86_401.0);
}
