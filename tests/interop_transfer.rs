//! Bridged transfers (B2BUA) with SIPp as the PBX's caller, a second SIPp as the transfer
//! destination (a person's phone) and the local Realtime stand-in as the model calling
//! `transfer_call`: the destination answers and audio flows both ways through voxgate (checked
//! by payload, each leg with voxgate's own RTP stream) until the caller hangs up and voxgate
//! BYEs the destination; or the destination is busy (486) and the model hears the typed failure
//! while the call goes on; or the destination is a name whose first server (DNS SRV, RFC 3263)
//! answers 503 and the next one takes the call.
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::dns::{two_servers, DnsStub};
use common::pcap;
use common::realtime::{frame_index, tagged_audio, Behaviour, RealtimeStandIn, Reply};
use common::rtp::{RtpPacket, RtpSink};
use common::sipp::SippOutcome;
use common::{Gateway, GatewayConfig, Sipp};

const WAIT: Duration = Duration::from_secs(15);
const TRANSFERS: &str = "voxgate_transfers_total";
/// The destination's audio is numbered from here; the caller's from 0.
const AGENT_AUDIO: usize = 5_000;
/// The SSRC of every stream SIPp plays from a test pcap.
const PCAP_SSRC: u32 = 0x5eed_0001;

/// The assistant with one bridged destination, `agent`, at `agent_sip`.
fn gateway(standin_url: &str, agent_sip: SocketAddr) -> Gateway {
    gateway_with(standin_url, agent_sip, "bridge")
}

/// The assistant with one destination, `agent`, at `agent_sip`, reached by `method`.
fn gateway_with(standin_url: &str, agent_sip: SocketAddr, method: &str) -> Gateway {
    gateway_at(standin_url, &format!("sip:agent@{agent_sip}"), method, "")
}

/// The assistant with one destination, `agent`, at the SIP URI `uri`, reached by `method`;
/// `more` is added to the configuration.
fn gateway_at(standin_url: &str, uri: &str, method: &str, more: &str) -> Gateway {
    let extra = format!(
        "[[agents]]\nname = \"assistant\"\nkind = \"openai\"\nmodel = \"gpt-realtime\"\n\
         voice = \"marin\"\ninstructions = \"You are a test agent.\"\n\
         greeting = \"Greet the caller.\"\n\
         [[agents.transfers]]\nname = \"agent\"\nuri = \"{uri}\"\n\
         description = \"A person\"\nmethod = \"{method}\"\n\n\
         [realtime]\nurl = \"{standin_url}\"\nconnect_timeout_ms = 3000\n\n\
         [transfer]\ntimeout_secs = 10\n{more}"
    );
    Gateway::start_with(GatewayConfig {
        extra,
        route_agent: "assistant".into(),
        env: vec![("OPENAI_API_KEY".to_owned(), "sk-test-key".to_owned())],
        ..GatewayConfig::default()
    })
}

/// The model's hand-off sentence (tag 1, 25 frames) and its `transfer_call`; after a failed
/// transfer it apologises (tag 3).
fn transferring_model() -> Behaviour {
    Behaviour::new()
        .greeting(
            Reply::audio(tagged_audio(25, 1))
                .transcript("Let me put you through.")
                .function_call(
                    "transfer_call",
                    serde_json::json!({"destination": "agent", "reason": "wants a person"}),
                ),
        )
        .after_tool_output(Reply::audio(tagged_audio(20, 3)).transcript("Sorry, no one is free."))
}

/// The indices of the test-pcap payloads in `packets` within `range`, in arrival order.
fn pcap_indices(packets: &[RtpPacket], range: std::ops::Range<usize>) -> Vec<usize> {
    packets
        .iter()
        .filter_map(|p| pcap::index_of(&p.payload))
        .filter(|index| range.contains(index))
        .collect()
}

/// `voxgate_transfers_total` counts one transfer to `agent` by `method` with `result`.
#[track_caller]
fn assert_transfers(gateway: &Gateway, method: &str, result: &str) {
    let labels = [
        ("destination", "agent"),
        ("method", method),
        ("result", result),
    ];
    assert_eq!(
        gateway.wait_metric(TRANSFERS, &labels, WAIT, |v| v >= 1.0),
        1.0,
        "{method} {result}"
    );
}

/// The destination (a person's phone): a UAS that answers and plays the destination's audio.
/// SIPp never sends to the address it is given.
fn answering_agent() -> Sipp {
    Sipp::new("uas_agent.xml", "127.0.0.1:9".parse().unwrap())
        .with_audio_from(AGENT_AUDIO, 250)
        .deadline(Duration::from_secs(40))
}

/// What a bridged call left: both SIPp outcomes (successful) and the RTP each side received.
struct Bridged {
    outcome: SippOutcome,
    agent: SippOutcome,
    to_caller: Vec<RtpPacket>,
    to_agent: Vec<RtpPacket>,
}

/// Runs `caller` through voxgate while `agent` (the transfer destination) answers; asserts that
/// both scenarios succeeded.
fn run_bridged(caller: Sipp, agent: Sipp) -> Bridged {
    let agent_sink = RtpSink::bind(agent.echo_addr());
    let agent_run = agent.spawn();
    let caller_sink = RtpSink::bind(caller.echo_addr());
    let outcome = caller.run();
    let agent_outcome = agent_run.wait();
    let bridged = Bridged {
        outcome,
        agent: agent_outcome,
        to_caller: caller_sink.finish(),
        to_agent: agent_sink.finish(),
    };
    bridged.outcome.assert_success();
    bridged.agent.assert_success();
    bridged
}

/// The caller of most tests: 450 frames of the pcap, 8 s on the line.
fn echo_caller(gateway: &Gateway) -> Sipp {
    Sipp::new("uac_echo.xml", gateway.sip_addr())
        .with_audio(450)
        .pause_ms(8_000)
}

fn assert_increasing(indices: &[usize], what: &str) {
    assert!(
        indices.windows(2).all(|pair| pair[0] < pair[1]),
        "{what} out of order or duplicated: {indices:?}"
    );
}

/// The destination answers: the caller hears it and it hears the caller, byte for byte, each
/// over voxgate's own RTP stream; the caller's BYE ends both legs and the Realtime session was
/// closed as a normal end when the legs were joined.
#[test]
fn bridged_destination_answers_and_audio_flows_both_ways() {
    if common::sipp::skip_without_root("bridged_destination_answers_and_audio_flows_both_ways") {
        return;
    }
    let standin = RealtimeStandIn::start(transferring_model());
    let agent = answering_agent();
    let agent_sip: SocketAddr = format!("127.0.0.1:{}", agent.sip_port()).parse().unwrap();
    let gateway = gateway(&standin.url(), agent_sip);
    // The agent's scenario checks the INVITE (caller-ID, PCMU offer); voxgate BYEs it.
    let Bridged {
        agent: agent_outcome,
        to_caller,
        to_agent,
        ..
    } = run_bridged(echo_caller(&gateway), agent);

    let invite = agent_outcome
        .received()
        .into_iter()
        .find(|m| m.first_line().starts_with("INVITE "))
        .expect("voxgate's INVITE to the destination");
    let from = invite.header("From").expect("From");
    assert!(
        from.starts_with("sipp <sip:sipp@127.0.0.1:"),
        "caller-ID passthrough: {from}"
    );
    assert_eq!(
        invite.header("To").as_deref(),
        Some(format!("<sip:agent@{agent_sip}>").as_str())
    );

    let heard_by_caller = pcap_indices(&to_caller, AGENT_AUDIO..AGENT_AUDIO + 250);
    assert!(
        heard_by_caller.len() >= 200,
        "the caller heard {} of the destination's 250 frames",
        heard_by_caller.len()
    );
    assert_increasing(&heard_by_caller, "the destination's frames at the caller");
    let heard_by_agent = pcap_indices(&to_agent, 0..450);
    assert!(
        heard_by_agent.len() >= 200,
        "the destination heard {} of the caller's frames",
        heard_by_agent.len()
    );
    assert_increasing(&heard_by_agent, "the caller's frames at the destination");
    // Each leg is voxgate's own stream: one SSRC toward the caller (assistant, ringback and
    // relayed audio alike), another toward the destination, neither the pcap's.
    let caller_ssrcs: std::collections::BTreeSet<u32> = to_caller.iter().map(|p| p.ssrc).collect();
    let agent_ssrcs: std::collections::BTreeSet<u32> = to_agent.iter().map(|p| p.ssrc).collect();
    assert_eq!(caller_ssrcs.len(), 1, "{caller_ssrcs:?}");
    assert_eq!(agent_ssrcs.len(), 1, "{agent_ssrcs:?}");
    assert!(!caller_ssrcs.contains(&PCAP_SSRC) && !agent_ssrcs.contains(&PCAP_SSRC));
    assert_ne!(caller_ssrcs, agent_ssrcs);

    assert_transfers(&gateway, "bridge", "success");
    assert_eq!(
        gateway.wait_metric("voxgate_bridged_calls_active", &[], WAIT, |v| v == 0.0),
        0.0
    );
    assert_eq!(
        gateway.wait_metric("voxgate_calls_active", &[], WAIT, |v| v == 0.0),
        0.0
    );
    let session =
        standin.wait_for_session(0, WAIT, "voxgate to close the session", |s| s.is_ended());
    assert!(
        session.client_closed(),
        "closed by voxgate when the legs were joined"
    );
    assert!(
        session.function_outputs.is_empty(),
        "no failure was reported"
    );
    assert_eq!(
        gateway
            .metrics()
            .get("voxgate_realtime_session_failures_total", &[])
            .unwrap_or(0.0),
        0.0,
        "joining the legs is a normal end of the session"
    );
    standin.assert_no_violations();
}

/// Runs a caller through `gateway` while `agent` (a destination that does not answer 2xx)
/// runs; asserts that the model heard `{"status":"failed","sip_status":sip_status}` during the
/// call, that its apology reached the caller, that voxgate did not hang up, and that the
/// transfer counts as failed. Both SIPp scenarios must succeed.
fn assert_transfer_goes_back_to_the_model(
    standin: &RealtimeStandIn,
    gateway: &Gateway,
    agent: Sipp,
    sip_status: u16,
) {
    let agent_run = agent.spawn();
    let caller = Sipp::new("uac_echo.xml", gateway.sip_addr())
        .with_audio(250)
        .pause_ms(4_000);
    let caller_sink = RtpSink::bind(caller.echo_addr());
    let outcome = caller.run();
    let agent_outcome = agent_run.wait();
    let to_caller = caller_sink.finish();
    outcome.assert_success(); // the caller's own BYE ends the call
    agent_outcome.assert_success();
    let session = standin.wait_for_session(0, WAIT, "the transfer's failure", |s| {
        !s.function_outputs.is_empty()
    });
    let output: serde_json::Value =
        serde_json::from_str(&session.function_outputs[0].output).expect("JSON output");
    assert_eq!(output["status"], "failed", "{output}");
    assert_eq!(output["sip_status"], sip_status, "{output}");
    assert!(
        to_caller
            .iter()
            .any(|p| frame_index(&p.payload).is_some_and(|(tag, _)| tag == 3)),
        "the model's apology reached the caller"
    );
    assert!(
        !outcome
            .received()
            .iter()
            .any(|m| m.first_line().starts_with("BYE ")),
        "voxgate did not hang up"
    );
    assert_transfers(gateway, "bridge", "failed");
    standin.assert_no_violations();
}

/// The destination is busy: the model hears `{"status":"failed","sip_status":486,…}`, its
/// apology reaches the caller, and voxgate does not hang up.
#[test]
fn busy_destination_goes_back_to_the_model() {
    if common::sipp::skip_without_root("busy_destination_goes_back_to_the_model") {
        return;
    }
    let standin = RealtimeStandIn::start(transferring_model());
    // Its scenario succeeds once the 486 is ACKed.
    let agent = Sipp::new("uas_agent_busy.xml", "127.0.0.1:9".parse().unwrap())
        .deadline(Duration::from_secs(30));
    let agent_sip: SocketAddr = format!("127.0.0.1:{}", agent.sip_port()).parse().unwrap();
    let gateway = gateway(&standin.url(), agent_sip);
    assert_transfer_goes_back_to_the_model(&standin, &gateway, agent, 486);
    assert_eq!(
        gateway.wait_metric("voxgate_bridged_calls_active", &[], WAIT, |v| v == 0.0),
        0.0
    );
}

/// The destination, over TCP, rings and then goes away with its connection (its process
/// ends): voxgate fails the INVITE at once (RFC 3261 §17.1.4, as pjsip does), long before the
/// 30 s transfer timeout. The model hears a 503 failure and apologises; the caller stays.
#[test]
fn a_ringing_destination_whose_tcp_connection_closes_fails_the_transfer_at_once() {
    if common::sipp::skip_without_root("a_ringing_destination_whose_tcp_connection_closes") {
        return;
    }
    let standin = RealtimeStandIn::start(transferring_model());
    let agent = Sipp::new(
        "uas_agent_ring_then_vanish.xml",
        "127.0.0.1:9".parse().unwrap(),
    )
    .transport(common::sipp::Transport::TcpOne)
    .deadline(Duration::from_secs(30));
    let agent_sip = format!("sip:agent@127.0.0.1:{};transport=tcp", agent.sip_port());
    let gateway = gateway_at(&standin.url(), &agent_sip, "bridge", "");
    assert_transfer_goes_back_to_the_model(&standin, &gateway, agent, 503);
}

/// After a fail-over to the destination's next server: the transfer succeeded, audio flowed
/// both ways by payload (at least 200 of each side's frames), and the model heard nothing of
/// the server that failed.
fn assert_bridged_after_a_quiet_fail_over(
    gateway: &Gateway,
    standin: &RealtimeStandIn,
    to_caller: &[RtpPacket],
    to_agent: &[RtpPacket],
) {
    let heard_by_caller = pcap_indices(to_caller, AGENT_AUDIO..AGENT_AUDIO + 250);
    assert!(
        heard_by_caller.len() >= 200,
        "the caller heard {} of the destination's 250 frames",
        heard_by_caller.len()
    );
    assert!(
        pcap_indices(to_agent, 0..450).len() >= 200,
        "the destination heard the caller"
    );
    assert_transfers(gateway, "bridge", "success");
    let session = standin.wait_for_session(0, WAIT, "the session to close", |s| s.is_ended());
    assert!(
        session.function_outputs.is_empty(),
        "the model heard nothing of the failed server"
    );
}

/// The destination is a name (`sip:agent@agents.test`, no port): voxgate asks the DNS stub for
/// `_sip._udp.agents.test` (RFC 3263), INVITEs the preferred server, which answers 503, and at
/// once the next one, which answers; audio flows both ways through the second.
#[test]
fn bridged_destination_by_name_fails_over_from_a_503_to_the_next_server() {
    if common::sipp::skip_without_root("bridged_destination_by_name_fails_over_from_a_503") {
        return;
    }
    let standin = RealtimeStandIn::start(transferring_model());
    let unavailable = Sipp::new("uas_agent_unavailable.xml", "127.0.0.1:9".parse().unwrap())
        .deadline(Duration::from_secs(40));
    let agent = answering_agent();
    let dns = DnsStub::start(two_servers(
        "agents.test",
        "udp",
        [unavailable.sip_port(), agent.sip_port()],
    ));
    let gateway = gateway_at(
        &standin.url(),
        "sip:agent@agents.test",
        "bridge",
        &format!("\n[dns]\nservers = [\"{}\"]\n", dns.addr()),
    );
    let unavailable_run = unavailable.spawn();
    // The second server answers the INVITE; voxgate BYEs it.
    let Bridged {
        agent: agent_outcome,
        to_caller,
        to_agent,
        ..
    } = run_bridged(echo_caller(&gateway), agent);
    let unavailable_outcome = unavailable_run.wait();
    unavailable_outcome.assert_success(); // one INVITE, the 503 ACKed

    let first = unavailable_outcome
        .received()
        .into_iter()
        .find(|m| m.first_line().starts_with("INVITE "))
        .expect("the INVITE to the 503 server");
    let second = agent_outcome
        .received()
        .into_iter()
        .find(|m| m.first_line().starts_with("INVITE "))
        .expect("the INVITE to the next server");
    assert_eq!(
        first.first_line(),
        "INVITE sip:agent@agents.test SIP/2.0",
        "the Request-URI keeps the name"
    );
    assert_eq!(second.header("Call-ID"), first.header("Call-ID"));
    assert_ne!(second.header("CSeq"), first.header("CSeq"));
    assert!(
        dns.queries()
            .contains(&("_sip._udp.agents.test.".to_owned(), "SRV".to_owned())),
        "queries: {:?}",
        dns.queries()
    );
    assert_bridged_after_a_quiet_fail_over(&gateway, &standin, &to_caller, &to_agent);
    let log = gateway.log();
    assert!(
        log.contains("transfer destination located")
            && log.contains("is unavailable (503); trying the next one"),
        "log:\n{log}"
    );
    standin.assert_no_violations();
}

/// Over TCP (`;transport=tcp`), the destination's preferred server refuses the connection
/// (nothing listens on its port). voxgate takes that as a 503 from it (RFC 3261 §8.1.3.1) and
/// INVITEs the next server at once, over TCP, which answers; the model hears nothing of it.
#[test]
fn bridged_destination_over_tcp_fails_over_at_once_from_a_server_that_refuses_the_connection() {
    if common::sipp::skip_without_root("bridged_destination_over_tcp_fails_over_at_once") {
        return;
    }
    let standin = RealtimeStandIn::start(transferring_model());
    let agent = answering_agent().transport(common::sipp::Transport::TcpOne);
    let refusing = common::PortBlock::reserve(2).port(0);
    let dns = DnsStub::start(two_servers(
        "agents.test",
        "tcp",
        [refusing, agent.sip_port()],
    ));
    let gateway = gateway_at(
        &standin.url(),
        "sip:agent@agents.test;transport=tcp",
        "bridge",
        &format!("\n[dns]\nservers = [\"{}\"]\n", dns.addr()),
    );
    // The INVITE answered over TCP; voxgate BYEs it.
    let Bridged {
        to_caller,
        to_agent,
        ..
    } = run_bridged(echo_caller(&gateway), agent);

    assert!(
        dns.queries()
            .contains(&("_sip._tcp.agents.test.".to_owned(), "SRV".to_owned())),
        "queries: {:?}",
        dns.queries()
    );
    assert_bridged_after_a_quiet_fail_over(&gateway, &standin, &to_caller, &to_agent);
    let log = gateway.log();
    assert!(
        log.contains("could not open a SIP TCP connection")
            && log.contains("could not be reached; trying the next one")
            && !log.contains("did not answer the INVITE within"),
        "failed over on the refusal, not after 8·T1 of silence; log:\n{log}"
    );
    standin.assert_no_violations();
}

/// The caller's scenario refusing the REFER with `status` (SIPp checks a response's status
/// when it loads the scenario, so the test writes it in).
fn refusing_caller(dir: &std::path::Path, status: &str) -> String {
    let template = std::fs::read_to_string(common::sipp::scenario_path("uac_refer_refused.xml"))
        .expect("scenario");
    let path = dir.join("uac_refer_refused_fallback.xml");
    std::fs::write(&path, template.replace("[refer_status]", status)).expect("write scenario");
    path.display().to_string()
}

/// Runs a call whose REFER fails (`caller` scenario) with `refer_then_bridge`: voxgate falls
/// back to bridging the destination, and audio flows both ways by payload.
fn falls_back_to_the_bridge(
    caller: Sipp,
    agent: Sipp,
    gateway: &Gateway,
    standin: &RealtimeStandIn,
) {
    let Bridged {
        outcome,
        to_caller,
        to_agent,
        ..
    } = run_bridged(caller, agent);
    assert!(
        outcome
            .received()
            .iter()
            .any(|m| m.first_line().starts_with("REFER ")),
        "the REFER came first"
    );
    let heard_by_caller = pcap_indices(&to_caller, AGENT_AUDIO..AGENT_AUDIO + 250);
    assert!(
        heard_by_caller.len() >= 150,
        "the caller heard {} of the destination's frames",
        heard_by_caller.len()
    );
    assert_increasing(&heard_by_caller, "the destination's frames at the caller");
    let heard_by_agent = pcap_indices(&to_agent, 0..600);
    assert!(
        heard_by_agent.len() >= 150,
        "the destination heard {} of the caller's frames",
        heard_by_agent.len()
    );
    assert_increasing(&heard_by_agent, "the caller's frames at the destination");
    for (method, result) in [("refer", "failed"), ("bridge", "success")] {
        assert_transfers(gateway, method, result);
    }
    let session = standin.wait_for_session(0, WAIT, "the session to close", |s| s.is_ended());
    assert!(
        session.function_outputs.is_empty(),
        "the model was not told of a failure"
    );
    assert_eq!(
        gateway.wait_metric("voxgate_calls_active", &[], WAIT, |v| v == 0.0),
        0.0
    );
    standin.assert_no_violations();
}

/// (3) `refer_then_bridge`: the PBX refuses the REFER (501), so voxgate INVITEs the
/// destination itself and relays audio both ways.
#[test]
fn refused_refer_falls_back_to_a_bridged_call() {
    if common::sipp::skip_without_root("refused_refer_falls_back_to_a_bridged_call") {
        return;
    }
    let standin = RealtimeStandIn::start(transferring_model());
    let agent = answering_agent();
    let agent_sip: SocketAddr = format!("127.0.0.1:{}", agent.sip_port()).parse().unwrap();
    let gateway = gateway_with(&standin.url(), agent_sip, "refer_then_bridge");
    let dir = tempfile::tempdir().expect("temp dir");
    let caller = Sipp::new(
        &refusing_caller(dir.path(), "501 Not Implemented"),
        gateway.sip_addr(),
    )
    .with_audio(550)
    .pause_ms(8_000);
    falls_back_to_the_bridge(caller, agent, &gateway, &standin);
}

/// (5) `refer_then_bridge`: the PBX accepts the REFER but reports 486 Busy Here by NOTIFY
/// while the caller is still on voxgate's leg: voxgate bridges the destination itself.
#[test]
fn busy_notify_falls_back_to_a_bridged_call() {
    if common::sipp::skip_without_root("busy_notify_falls_back_to_a_bridged_call") {
        return;
    }
    let standin = RealtimeStandIn::start(transferring_model());
    let agent = answering_agent();
    let agent_sip: SocketAddr = format!("127.0.0.1:{}", agent.sip_port()).parse().unwrap();
    let gateway = gateway_with(&standin.url(), agent_sip, "refer_then_bridge");
    let caller = Sipp::new("uac_refer_notify_failure.xml", gateway.sip_addr())
        .with_audio(550)
        .arg("-key")
        .arg("final_status")
        .arg("486 Busy Here")
        .pause_ms(8_000);
    falls_back_to_the_bridge(caller, agent, &gateway, &standin);
}
