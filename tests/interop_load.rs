//! (10) 50 concurrent calls through the real voxgate binary, over UDP and over TCP (one
//! connection per call), each playing 2 s of PCMU that must come back echoed (root) — or
//! signalling only when not root.
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::rtp::{verify_echo, RtpSink};
use common::{Gateway, GatewayConfig, Sipp, Transport};

const CALLS: u32 = 50;
const PACKETS: usize = 100;

/// The UDP and TCP runs would otherwise share CI's two cores with each other; each
/// measures one gateway under its own load.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn concurrent_calls(transport: Transport) {
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let gateway = Gateway::start_with(GatewayConfig {
        rtp_ports: 2 * CALLS as u16 + 40,
        ..GatewayConfig::default()
    });
    let audio = common::sipp::is_root();
    let sipp = if audio {
        Sipp::new("uac_echo.xml", gateway.sip_addr()).with_audio(PACKETS)
    } else {
        eprintln!("no root: SIPp cannot play RTP (raw sockets); running signalling only");
        Sipp::new("uac_basic.xml", gateway.sip_addr())
    };
    let sipp = sipp
        .transport(transport)
        .calls(CALLS, CALLS, CALLS)
        .pause_ms(2_600)
        .deadline(Duration::from_secs(60));
    let sink = RtpSink::bind(sipp.echo_addr());
    let outcome = sipp.run();
    let echoed = sink.finish();
    outcome.assert_success();
    if audio {
        let streams = verify_echo(&echoed, CALLS as usize, PACKETS, 0.9, 0.05)
            .unwrap_or_else(|e| panic!("echo check failed: {e}"));
        assert_eq!(streams.len(), CALLS as usize);
    }
    assert_eq!(
        gateway.wait_metric("voxgate_calls_active", &[], Duration::from_secs(10), |v| v
            == 0.0),
        0.0
    );
    assert!(gateway.metrics().sum("voxgate_calls_total") >= f64::from(CALLS));
}

#[test]
fn fifty_concurrent_calls_over_udp() {
    concurrent_calls(Transport::Udp);
}

#[test]
fn fifty_concurrent_calls_over_tcp() {
    concurrent_calls(Transport::TcpPerCall);
}

/// Not a test: writes the PCMU pcap `scripts/load.sh` plays (`VOXGATE_PCAP_OUT`,
/// `VOXGATE_PCAP_PACKETS`), so the load script needs no other tool to make audio.
#[test]
#[ignore = "helper for scripts/load.sh"]
fn write_load_pcap() {
    let out = std::env::var("VOXGATE_PCAP_OUT").expect("VOXGATE_PCAP_OUT");
    let packets = std::env::var("VOXGATE_PCAP_PACKETS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1_500);
    common::pcap::write_pcmu_pcap(std::path::Path::new(&out), packets);
}
