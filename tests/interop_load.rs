//! (10) 50 concurrent calls through the real voxgate binary, over UDP (one media thread) and
//! over TCP (one connection per call, two media threads), each playing 2 s of PCMU that must come
//! back echoed (root) — or signalling only when not root.
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
    // The TCP run also spreads the calls over two media threads (`rtp.media_threads`).
    let media_threads = if transport == Transport::Udp { 1 } else { 2 };
    let gateway = Gateway::start_with(GatewayConfig {
        rtp_ports: 2 * CALLS as u16 + 40,
        rtp_extra: format!("media_threads = {media_threads}"),
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
/// `VOXGATE_PCAP_PACKETS`) and, with `VOXGATE_ULAW_OUT`, the same audio as raw PCMU for SIPp's
/// `rtp_stream`, so the load script needs no other tool to make audio.
#[test]
#[ignore = "helper for scripts/load.sh"]
fn write_load_pcap() {
    let out = std::env::var("VOXGATE_PCAP_OUT").expect("VOXGATE_PCAP_OUT");
    let packets = std::env::var("VOXGATE_PCAP_PACKETS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1_500);
    common::pcap::write_pcmu_pcap(std::path::Path::new(&out), packets);
    if let Ok(raw) = std::env::var("VOXGATE_ULAW_OUT") {
        common::pcap::write_pcmu_raw(std::path::Path::new(&raw), packets);
    }
}

/// Not a test: the RTP sink `scripts/load.sh` runs on the echo port (`VOXGATE_SINK_ADDR`), like
/// the interop tests' [`RtpSink`], so voxgate's echo lands on a bound socket (not an ICMP port
/// unreachable per packet) and can be checked. Counts per SSRC, streaming (no packets kept):
/// payloads that are exactly one of the pcap's, in order; silence; anything else. Stops once no
/// packet came for 3 s after the first one, or after `VOXGATE_SINK_MAX_SECS`; writes one summary
/// line to `VOXGATE_SINK_OUT`.
#[test]
#[ignore = "helper for scripts/load.sh"]
fn load_rtp_sink() {
    use std::collections::HashMap;
    use std::time::Instant;

    #[derive(Default)]
    struct Stream {
        matched: u64,
        silence: u64,
        other: u64,
        out_of_order: u64,
        last_index: Option<usize>,
    }

    let addr: std::net::SocketAddr = std::env::var("VOXGATE_SINK_ADDR")
        .expect("VOXGATE_SINK_ADDR")
        .parse()
        .expect("VOXGATE_SINK_ADDR is ip:port");
    let out = std::env::var("VOXGATE_SINK_OUT").expect("VOXGATE_SINK_OUT");
    let max = Duration::from_secs(
        std::env::var("VOXGATE_SINK_MAX_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    );
    let socket = std::net::UdpSocket::bind(addr).expect("bind the sink");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    std::fs::write(&out, "listening\n").expect("write VOXGATE_SINK_OUT");
    let started = Instant::now();
    let mut last_packet: Option<Instant> = None;
    let mut streams: HashMap<u32, Stream> = HashMap::new();
    let mut buffer = [0u8; 2048];
    while started.elapsed() < max
        && last_packet.is_none_or(|at| at.elapsed() < Duration::from_secs(3))
    {
        let Ok((length, from)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        last_packet = Some(Instant::now());
        let Some(packet) = common::rtp::RtpPacket::parse(&buffer[..length], from) else {
            continue;
        };
        let stream = streams.entry(packet.ssrc).or_default();
        if packet.payload.iter().all(|&b| b == 0xff || b == 0x7f) {
            stream.silence += 1;
        } else if let Some(index) = common::pcap::index_of(&packet.payload) {
            if stream.last_index.is_some_and(|last| index <= last) {
                stream.out_of_order += 1;
            }
            stream.last_index = Some(index);
            stream.matched += 1;
        } else {
            stream.other += 1;
        }
    }
    // Datagrams the kernel dropped on the sink's socket (buffer full: the sink, not voxgate).
    let port = format!(":{:04X}", addr.port());
    let kernel_drops = std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .find(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|l| l.ends_with(&port))
        })
        .and_then(|line| line.split_whitespace().last()?.parse::<u64>().ok())
        .unwrap_or(0);
    let sum = |f: fn(&Stream) -> u64| streams.values().map(f).sum::<u64>();
    let summary = format!(
        "streams={} matched={} silence={} other={} out_of_order={} min_matched={} \
         sink_drops={kernel_drops}\n",
        streams.len(),
        sum(|s| s.matched),
        sum(|s| s.silence),
        sum(|s| s.other),
        sum(|s| s.out_of_order),
        streams.values().map(|s| s.matched).min().unwrap_or(0),
    );
    std::fs::write(&out, summary).expect("write VOXGATE_SINK_OUT");
}
