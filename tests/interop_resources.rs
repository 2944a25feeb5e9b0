//! A gateway gives back what its calls took. SIPp makes calls of every kind through the real
//! voxgate binary, one kind after the other: echo calls over UDP with audio, echo calls over
//! TCP (a connection each), cancelled calls, and speech-agent calls to the Realtime stand-in
//! that end normally, that are handed to a person over a bridged transfer (a SIPp UAS answers),
//! whose session drops mid-call, whose upgrade is refused, whose session is never confirmed,
//! and whose service has gone away. Afterwards the process's open descriptors
//! (`process_open_fds`, as a dashboard sees them) are back to what they were after its first
//! call (what a process opens once, for good), and every "active" gauge is back to 0. A call
//! that kept a socket, WebSocket, timer or transcript open would show here as one descriptor
//! per call.
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::realtime::{tagged_audio, Action, Behaviour, RealtimeStandIn, Reply, When};
use common::rtp::RtpSink;
use common::{Gateway, GatewayConfig, Sipp, Transport};

const WAIT: Duration = Duration::from_secs(20);

/// Speech-agent sessions by the order they connect: each batch of calls below runs alone, so
/// its sessions take the next indices.
const NORMAL: usize = 6;
const BRIDGED: usize = 2;
const DROPPED: usize = 4;
const REFUSED: usize = 3;
const UNCONFIRMED: usize = 3;

fn behaviour(session: usize) -> Behaviour {
    if session < NORMAL {
        Behaviour::new().greeting(Reply::audio(tagged_audio(25, 1)))
    } else if session < NORMAL + BRIDGED {
        Behaviour::new().greeting(Reply::audio(tagged_audio(25, 1)).function_call(
            "transfer_call",
            serde_json::json!({"destination": "desk", "reason": "wants a person"}),
        ))
    } else if session < NORMAL + BRIDGED + DROPPED {
        Behaviour::new().step(When::caller_audio_ms(400), [Action::DropConnection])
    } else if session < NORMAL + BRIDGED + DROPPED + REFUSED {
        Behaviour::new().refuse_handshake(401)
    } else {
        Behaviour::new().without_session_confirmation()
    }
}

/// The gateway's open descriptors, read by scraping (the scrape's own connection is open while
/// it is counted, the same in every scrape).
fn open_fds(gateway: &Gateway) -> f64 {
    gateway
        .metrics()
        .get("process_open_fds", &[])
        .unwrap_or(-1.0)
}

/// Runs `sipp` with its echo port bound (the calls' RTP has somewhere to go); it must succeed.
fn run(sipp: Sipp) {
    let sink = RtpSink::bind(sipp.echo_addr());
    let outcome = sipp.run();
    drop(sink);
    outcome.assert_success();
}

#[test]
fn calls_of_every_kind_give_back_their_descriptors_and_gauges() {
    if common::sipp::skip_without_root("calls_of_every_kind_give_back_their_descriptors_and_gauges")
    {
        return;
    }
    let standin = RealtimeStandIn::start_with(behaviour);
    // The person the bridged calls are handed to: answers, plays audio, takes voxgate's BYE.
    let desk = Sipp::new("uas_agent.xml", "127.0.0.1:9".parse().expect("address"))
        .with_audio_from(5_000, 100)
        .calls(BRIDGED as u32, BRIDGED as u32, 10)
        .deadline(Duration::from_secs(60));
    let desk_uri = format!("sip:desk@127.0.0.1:{}", desk.sip_port());
    let gateway = Gateway::start_with(GatewayConfig {
        // The echo agent rings a little, so the cancelled calls have time to cancel.
        agent_extra: "ring_ms = 300".into(),
        routes: "[[routes]]\nuser = \"assistant\"\nagent = \"assistant\"\n".into(),
        extra: format!(
            "[[agents]]\nname = \"assistant\"\nkind = \"openai\"\nmodel = \"gpt-realtime\"\n\
             greeting = \"Say hello.\"\n\
             [[agents.transfers]]\nname = \"desk\"\nuri = \"{desk_uri}\"\n\
             description = \"A person\"\nmethod = \"bridge\"\n\n\
             [realtime]\nurl = \"{}\"\nconnect_timeout_ms = 2000\n",
            standin.url()
        ),
        env: vec![("OPENAI_API_KEY".into(), "sk-test-key".into())],
        rtp_ports: 80,
        ..GatewayConfig::default()
    });
    let sip = gateway.sip_addr();
    // One call first: the process opens a few things once, at its first call, for good (the
    // socket that keeps the kernel's receive timestamps switched on, `io/timestamped_udp.rs`).
    run(Sipp::new("uac_basic.xml", sip).pause_ms(200));
    gateway.wait_metric("voxgate_calls_active", &[], WAIT, |v| v == 0.0);
    let before = open_fds(&gateway);
    let open_before = descriptors(&gateway);
    assert!(before > 0.0, "process_open_fds exported: {before}");

    // Echo over UDP, with audio both ways.
    run(Sipp::new("uac_echo.xml", sip)
        .with_audio(50)
        .calls(10, 10, 10)
        .pause_ms(1_200));
    // Echo over TCP, a connection per call.
    run(Sipp::new("uac_basic.xml", sip)
        .transport(Transport::TcpPerCall)
        .calls(10, 10, 10)
        .pause_ms(500));
    // Cancelled while ringing.
    run(Sipp::new("uac_cancel.xml", sip).calls(5, 5, 5));
    // The speech agent: greeted, then the caller hangs up.
    run(Sipp::new("uac_basic.xml", sip)
        .dialling("assistant")
        .calls(NORMAL as u32, NORMAL as u32, 10)
        .pause_ms(1_000));
    // Handed to a person: the caller is bridged to the desk, then hangs up.
    let desk_sink = RtpSink::bind(desk.echo_addr());
    let desk_run = desk.spawn();
    run(Sipp::new("uac_echo.xml", sip)
        .dialling("assistant")
        .with_audio(150)
        .calls(BRIDGED as u32, BRIDGED as u32, 10)
        .pause_ms(4_000));
    desk_run.wait().assert_success();
    drop(desk_sink);
    // The session drops mid-call: voxgate apologises (none configured here) and hangs up.
    run(Sipp::new("uac_talk_until_bye.xml", sip)
        .dialling("assistant")
        .with_audio(500)
        .calls(DROPPED as u32, DROPPED as u32, 10));
    // The upgrade refused, then the session never confirmed: 503 each.
    run(Sipp::new("uac_unavailable.xml", sip)
        .dialling("assistant")
        .calls(REFUSED as u32, REFUSED as u32, 10));
    run(Sipp::new("uac_unavailable.xml", sip)
        .dialling("assistant")
        .calls(UNCONFIRMED as u32, UNCONFIRMED as u32, 10));
    // The service gone: the connection refused, 503.
    let standin_sessions: Vec<String> = (0..standin.session_count())
        .map(|index| common::realtime::summary(&standin.session(index)))
        .collect();
    drop(standin);
    run(Sipp::new("uac_unavailable.xml", sip)
        .dialling("assistant")
        .calls(3, 3, 10));

    let metrics = gateway.metrics();
    let calls = |result: &str| {
        metrics
            .get("voxgate_calls_total", &[("result", result)])
            .unwrap_or(0.0)
    };
    assert_eq!(
        calls("completed"),
        (1 + 10 + 10 + NORMAL + BRIDGED) as f64,
        "{}",
        metrics.text
    );
    assert_eq!(calls("cancelled"), 5.0);
    assert_eq!(calls("failed"), DROPPED as f64);
    assert_eq!(calls("rejected"), (REFUSED + UNCONFIRMED + 3) as f64);
    // A refused upgrade is a failure to connect, as the service being gone is.
    for (reason, count) in [
        ("dropped", DROPPED),
        ("connect", REFUSED + 3),
        ("timeout", UNCONFIRMED),
    ] {
        let failures = metrics
            .get(
                "voxgate_realtime_session_failures_total",
                &[("reason", reason)],
            )
            .unwrap_or(0.0);
        assert_eq!(
            failures,
            count as f64,
            "session failures counted as {reason}: {:?}\nstand-in sessions: {:?}",
            metrics.samples("voxgate_realtime_session_failures_total"),
            standin_sessions
        );
    }

    assert_eq!(
        metrics
            .get(
                "voxgate_transfers_total",
                &[
                    ("destination", "desk"),
                    ("method", "bridge"),
                    ("result", "success")
                ]
            )
            .unwrap_or(0.0),
        BRIDGED as f64,
        "both bridged transfers succeeded"
    );
    for (gauge, labels) in [
        ("voxgate_calls_active", &[][..]),
        ("voxgate_realtime_sessions_active", &[]),
        ("voxgate_bridged_calls_active", &[]),
        ("voxgate_sip_tcp_connections", &[("direction", "inbound")]),
        ("voxgate_sip_tcp_connections", &[("direction", "outbound")]),
    ] {
        let value = gateway.wait_metric(gauge, labels, WAIT, |v| v == 0.0);
        assert_eq!(value, 0.0, "{gauge}{labels:?} back to 0");
    }
    // The descriptors follow once the last call's sockets are closed: wait for it, bounded.
    let deadline = Instant::now() + WAIT;
    let mut after = open_fds(&gateway);
    while after != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = open_fds(&gateway);
    }
    assert_eq!(
        after,
        before,
        "open descriptors after {} calls;\nbefore: {open_before:?}\nafter: {:?}",
        10 + 10 + 5 + NORMAL + BRIDGED + DROPPED + REFUSED + UNCONFIRMED + 3,
        descriptors(&gateway)
    );
}

/// What the gateway's descriptors are (sockets by inode), for the failure message.
fn descriptors(gateway: &Gateway) -> Vec<String> {
    let mut listing: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", gateway.pid()))
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    let entry = entry.ok()?;
                    let target = std::fs::read_link(entry.path()).ok()?;
                    let target = target.display().to_string();
                    let socket = target
                        .strip_prefix("socket:[")
                        .and_then(|inode| inode.strip_suffix(']'))
                        .and_then(|inode| socket_of(gateway.pid(), inode));
                    Some(format!(
                        "{}={}",
                        entry.file_name().to_string_lossy(),
                        socket.unwrap_or(target)
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    listing.sort_by_key(|line| {
        line.split('=')
            .next()
            .and_then(|fd| fd.parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    });
    listing
}

/// `tcp 127.0.0.1:5060 -> 0.0.0.0:0 (state 0A)` for a socket inode of `pid`, from
/// `/proc/<pid>/net/*` (addresses in the kernel's hexadecimal, IPv4 decoded).
fn socket_of(pid: u32, inode: &str) -> Option<String> {
    for table in ["tcp", "udp", "tcp6", "udp6", "unix"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if table == "unix" {
                if fields.get(6) == Some(&inode) {
                    return Some(format!("unix {}", fields.get(7).unwrap_or(&"")));
                }
                continue;
            }
            if fields.get(9) == Some(&inode) {
                let address = |hex: &str| {
                    let (ip, port) = hex.split_once(':')?;
                    let port = u16::from_str_radix(port, 16).ok()?;
                    if ip.len() != 8 {
                        return Some(format!("[{ip}]:{port}"));
                    }
                    let ip = u32::from_str_radix(ip, 16).ok()?;
                    Some(format!(
                        "{}:{port}",
                        std::net::Ipv4Addr::from(ip.swap_bytes())
                    ))
                };
                return Some(format!(
                    "{table} {} -> {} (state {})",
                    address(fields.get(1)?)?,
                    address(fields.get(2)?)?,
                    fields.get(3)?
                ));
            }
        }
    }
    None
}
