//! The agent leg against a fake PBX and a fake agent in virtual time (see [`crate::testkit`]):
//! the INVITE's shape, answer and join, refusal, challenge, timeout with CANCEL, and either
//! side hanging up.

use std::net::SocketAddr;

use super::*;
use crate::call::transfer::TransferRequest;
use crate::call::CallKey;
use crate::config::transfer::{TransferDestination, TransferMethod};
use crate::config::{Secret, Settings};
use crate::sip::endpoint::Target;
use crate::sip::message::Request;
use crate::testkit::{answer, secs, settings, Caller, Harness, Sent};

const AGENT: &str = "192.0.2.50:5080";
const AGENT_SDP: &str = "v=0\r\no=agent 1 1 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\n\
     t=0 0\r\nm=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
     a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n";

fn agent_addr() -> SocketAddr {
    AGENT.parse().expect("literal address")
}

fn bridge_settings() -> Settings {
    let mut settings = settings();
    settings.transfer.timeout_secs = 20;
    if let Some(agent) = settings.agents.first_mut() {
        agent.transfers.push(TransferDestination {
            name: "agent".into(),
            uri: Some(format!("sip:agent@{AGENT}")),
            extension: None,
            description: "a person".into(),
            method: TransferMethod::Bridge,
            announce: None,
        });
    }
    settings
}

fn request() -> TransferRequest {
    TransferRequest {
        tool_call_id: Some("call_1".into()),
        destination: "agent".into(),
        reason: "wants a person".into(),
        summary: None,
    }
}

/// An established call whose agent asked for the transfer; returns the INVITE to the agent.
fn bridged_invite(h: &mut Harness, caller: &mut Caller) -> (CallKey, Request) {
    h.establish(caller, &[]);
    let key = call_key(&h.take_outputs());
    h.take();
    h.transfer(key, request());
    let invite = agent_request(h, "INVITE");
    (key, invite)
}

fn call_key(outputs: &[Output]) -> CallKey {
    outputs
        .iter()
        .find_map(|output| match output {
            Output::AllocateMedia { call, .. } => Some(*call),
            _ => None,
        })
        .expect("a call")
}

fn agent_request(h: &mut Harness, method: &str) -> Request {
    h.take_requests()
        .into_iter()
        .find(|r| r.method().to_string() == method)
        .unwrap_or_else(|| panic!("no {method} sent"))
}

/// The agent's response to `request`, with its tag and Contact.
fn from_agent(request: &Request, status: u16, sdp: Option<&str>) -> String {
    let text = answer(request, status, &[], sdp);
    let to = request.to();
    let tagged = if status > 100 {
        format!("{to};tag=agent1")
    } else {
        to.to_owned()
    };
    text.replacen(&format!("To: {to}\r\n"), &format!("To: {tagged}\r\n"), 1)
        .replacen(
            "Contact: <sip:pbx@192.0.2.10:5060>",
            &format!("Contact: <sip:agent@{AGENT}>"),
            1,
        )
}

fn leg_commands(outputs: &[Output]) -> Vec<AgentLegCommand> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Media {
                command: MediaCommand::AgentLeg(command),
                ..
            } => Some(command.clone()),
            _ => None,
        })
        .collect()
}

fn transfer_failures(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Media {
                command: MediaCommand::TransferFailed { output, .. },
                ..
            } => Some(output.clone()),
            _ => None,
        })
        .collect()
}

/// An in-dialog request from the agent in the agent leg's dialog.
fn agent_in_dialog(ok: &Request, method: &str, cseq: u32) -> String {
    // The agent's view: From is its To (with its tag), To is voxgate's From.
    format!(
        "{method} sip:voxgate@192.0.2.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {AGENT};branch=z9hG4bKagent{method}{cseq}\r\n\
         From: {};tag=agent1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        ok.to(),
        ok.from(),
        ok.call_id()
    )
}

fn assert_clean(h: &mut Harness) {
    h.advance(secs(70));
    assert_eq!(h.switchboard.active_calls(), 0, "calls left in the table");
    assert_eq!(
        h.switchboard.endpoint().transaction_counts(),
        (0, 0),
        "transactions left in the endpoint"
    );
}

#[test]
fn without_tag_keeps_the_identity_and_other_parameters() {
    assert_eq!(
        without_tag("\"Alice\" <sip:alice@pbx;user=phone>;tag=a1;x=y"),
        "\"Alice\" <sip:alice@pbx;user=phone>;x=y"
    );
    assert_eq!(without_tag("sip:bob@pbx;tag=9"), "sip:bob@pbx");
    assert_eq!(without_tag("<sip:carol@pbx>"), "<sip:carol@pbx>");
}

#[test]
fn invite_to_the_destination_carries_the_callers_identity_and_a_pcmu_offer() {
    let mut h = Harness::new(&bridge_settings());
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    let key = call_key(&h.take_outputs());
    let caller_call_id = h.take_requests().first().map(|r| r.call_id().to_owned());
    h.transfer(key, request());
    let sent = h.take();
    let invite = sent
        .iter()
        .find(|s| {
            s.request()
                .is_some_and(|r| r.method().to_string() == "INVITE")
        })
        .expect("INVITE to the agent");
    assert_eq!(
        invite.target,
        crate::sip::endpoint::Target::Addr(agent_addr())
    );
    let invite = invite.request().expect("a request");
    assert_eq!(invite.request_uri(), format!("sip:agent@{AGENT}"));
    assert_eq!(invite.to(), format!("<sip:agent@{AGENT}>"));
    assert!(invite.to_tag().is_none());
    // B2BUA caller-ID passthrough: the caller's From URI, voxgate's own tag.
    assert!(
        invite.from().starts_with("<sip:pbx@192.0.2.10:5060>;tag="),
        "{}",
        invite.from()
    );
    assert!(invite
        .from_tag()
        .is_some_and(|tag| !tag.is_empty() && tag != caller.from_tag));
    assert_ne!(Some(invite.call_id().to_owned()), caller_call_id);
    assert_eq!(
        invite.contact_uri().as_deref(),
        Some("sip:voxgate@192.0.2.1:5060")
    );
    let sdp = std::str::from_utf8(invite.body()).expect("SDP");
    assert!(sdp.contains("RTP/AVP 0 101\r\n"), "PCMU only: {sdp}");
    assert!(leg_commands(&h.take_outputs()).contains(&AgentLegCommand::Ringback));
}

#[test]
fn answered_destination_is_acked_joined_and_its_bye_ends_the_call() {
    let mut h = Harness::new(&bridge_settings());
    let mut caller = Caller::new("echo");
    let (_, invite) = bridged_invite(&mut h, &mut caller);
    h.send_from(agent_addr(), &from_agent(&invite, 180, None));
    h.send_from(agent_addr(), &from_agent(&invite, 200, Some(AGENT_SDP)));
    let ack = agent_request(&mut h, "ACK");
    assert_eq!(
        ack.request_uri(),
        format!("sip:agent@{AGENT}"),
        "the 2xx's Contact"
    );
    assert_eq!(ack.to_tag(), Some("agent1"));
    assert_eq!(ack.cseq().seq, invite.cseq().seq);
    let commands = leg_commands(&h.take_outputs());
    let Some(AgentLegCommand::Connect(params)) = commands.last() else {
        panic!("no Connect in {commands:?}");
    };
    assert_eq!(params.remote_rtp, Some("192.0.2.50:30000".parse().unwrap()));

    // A session refresh from the agent is answered with the same session.
    let ok = Request::clone(&invite);
    h.send_from(agent_addr(), &agent_in_dialog(&ok, "OPTIONS", 1));
    let responses = h.take_responses();
    assert_eq!(responses.first().map(|r| r.status()), Some(200));

    h.send_from(agent_addr(), &agent_in_dialog(&ok, "BYE", 2));
    let sent = h.take();
    let bye_ok = sent
        .iter()
        .filter_map(|s| s.response())
        .find(|r| r.cseq().method.to_string() == "BYE")
        .expect("200 to the agent's BYE");
    assert_eq!(bye_ok.status(), 200);
    let caller_bye = sent
        .iter()
        .filter_map(|s| s.request())
        .find(|r| r.method().to_string() == "BYE")
        .expect("BYE to the caller");
    assert_eq!(caller_bye.call_id(), caller.call_id);
    h.send(&answer(caller_bye, 200, &[], None));
    assert_clean(&mut h);
}

#[test]
fn callers_bye_while_bridged_byes_the_destination() {
    let mut h = Harness::new(&bridge_settings());
    let mut caller = Caller::new("echo");
    let (_, invite) = bridged_invite(&mut h, &mut caller);
    h.send_from(agent_addr(), &from_agent(&invite, 200, Some(AGENT_SDP)));
    h.take();
    h.send(&caller.request("BYE", &[], None));
    let bye = agent_request(&mut h, "BYE");
    assert_eq!(bye.call_id(), invite.call_id());
    assert_eq!(bye.to_tag(), Some("agent1"));
    assert_eq!(bye.request_uri(), format!("sip:agent@{AGENT}"));
    assert_eq!(
        h.switchboard.active_calls(),
        1,
        "kept until the agent answers the BYE"
    );
    h.send_from(agent_addr(), &answer(&bye, 200, &[], None));
    assert_clean(&mut h);
}

#[test]
fn busy_destination_is_a_typed_failure_and_the_call_goes_on() {
    let mut h = Harness::new(&bridge_settings());
    let mut caller = Caller::new("echo");
    let (_, invite) = bridged_invite(&mut h, &mut caller);
    h.take_outputs();
    h.send_from(agent_addr(), &from_agent(&invite, 486, None));
    let outputs = h.take_outputs();
    assert!(leg_commands(&outputs).contains(&AgentLegCommand::Release));
    let failures = transfer_failures(&outputs);
    assert_eq!(failures.len(), 1, "{outputs:?}");
    let output: serde_json::Value = serde_json::from_str(&failures[0]).expect("JSON");
    assert_eq!(output["status"], "failed");
    assert_eq!(output["sip_status"], 486);
    let ack = agent_request(&mut h, "ACK");
    assert_eq!(ack.call_id(), invite.call_id(), "the 486 is ACKed");
    assert_eq!(h.switchboard.active_calls(), 1, "the caller stays");
    h.send(&caller.request("BYE", &[], None));
    assert_clean(&mut h);
}

#[test]
fn challenged_invite_is_sent_again_with_the_trunks_credentials() {
    let mut settings = bridge_settings();
    if let Some(trunk) = settings.trunks.first_mut() {
        trunk.outbound_username = Some("voxgate".into());
        trunk.outbound_password_env = Some("VOXGATE_PASSWORD".into());
        trunk.outbound_password = Some(Secret::new("pw"));
    }
    let mut h = Harness::new(&settings);
    let mut caller = Caller::new("echo");
    let (_, invite) = bridged_invite(&mut h, &mut caller);
    assert!(invite.header("Proxy-Authorization").is_none());
    let challenge = from_agent(&invite, 407, None).replacen(
        "Content-Length",
        "Proxy-Authenticate: Digest realm=\"pbx\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"\r\n\
         Content-Length",
        1,
    );
    h.send_from(agent_addr(), &challenge);
    let sent = h.take_requests();
    assert!(
        sent.iter().any(|r| r.method().to_string() == "ACK"),
        "407 ACKed"
    );
    let again = sent
        .iter()
        .find(|r| r.method().to_string() == "INVITE")
        .expect("INVITE again");
    assert_eq!(again.call_id(), invite.call_id());
    assert_eq!(again.from_tag(), invite.from_tag());
    assert_eq!(again.cseq().seq, invite.cseq().seq + 1);
    let credentials = again.header("Proxy-Authorization").expect("credentials");
    assert!(
        credentials.contains("username=\"voxgate\""),
        "{credentials}"
    );
    assert!(credentials.contains("realm=\"pbx\""), "{credentials}");
}

#[test]
fn unanswered_destination_is_cancelled_at_the_transfer_timeout() {
    let mut h = Harness::new(&bridge_settings());
    let mut caller = Caller::new("echo");
    let (_, invite) = bridged_invite(&mut h, &mut caller);
    let asked = h.now;
    h.send_from(agent_addr(), &from_agent(&invite, 180, None));
    h.take_outputs();
    let (at, cancel) = h.next_request("CANCEL", secs(60)).expect("CANCEL");
    assert_eq!(at - asked, secs(20), "transfer.timeout_secs");
    assert_eq!(cancel.top_via().branch, invite.top_via().branch, "§9.1");
    assert_eq!(cancel.cseq().seq, invite.cseq().seq);
    assert_eq!(cancel.request_uri(), invite.request_uri());
    let outputs = h.take_outputs();
    assert!(leg_commands(&outputs).contains(&AgentLegCommand::Release));
    let failures = transfer_failures(&outputs);
    assert!(
        failures.first().is_some_and(|f| f.contains("in time")),
        "{failures:?}"
    );
    h.send_from(agent_addr(), &answer(&cancel, 200, &[], None));
    h.send_from(agent_addr(), &from_agent(&invite, 487, None));
    h.send(&caller.request("BYE", &[], None));
    assert_clean(&mut h);
}

#[test]
fn callers_hang_up_while_the_destination_rings_cancels_it_and_leaks_nothing() {
    let mut h = Harness::new(&bridge_settings());
    let mut caller = Caller::new("echo");
    let (_, invite) = bridged_invite(&mut h, &mut caller);
    h.send_from(agent_addr(), &from_agent(&invite, 180, None));
    h.send(&caller.request("BYE", &[], None));
    let cancel = agent_request(&mut h, "CANCEL");
    assert_eq!(cancel.top_via().branch, invite.top_via().branch);
    h.send_from(agent_addr(), &answer(&cancel, 200, &[], None));
    h.send_from(agent_addr(), &from_agent(&invite, 487, None));
    assert_eq!(h.switchboard.active_calls(), 0);
    assert_clean(&mut h);
}

#[test]
fn answer_crossing_the_cancel_is_acked_then_byed() {
    let mut h = Harness::new(&bridge_settings());
    let mut caller = Caller::new("echo");
    let (_, invite) = bridged_invite(&mut h, &mut caller);
    h.send_from(agent_addr(), &from_agent(&invite, 180, None));
    h.send(&caller.request("BYE", &[], None));
    let cancel = agent_request(&mut h, "CANCEL");
    h.send_from(agent_addr(), &answer(&cancel, 200, &[], None));
    h.send_from(agent_addr(), &from_agent(&invite, 200, Some(AGENT_SDP)));
    let sent = h.take_requests();
    assert!(sent.iter().any(|r| r.method().to_string() == "ACK"));
    let bye = sent
        .iter()
        .find(|r| r.method().to_string() == "BYE")
        .expect("BYE after the crossing 2xx");
    h.send_from(agent_addr(), &answer(bye, 200, &[], None));
    assert_clean(&mut h);
}

#[test]
fn destination_silent_until_timer_b_is_a_408_failure() {
    let mut settings = bridge_settings();
    settings.transfer.timeout_secs = 600;
    let mut h = Harness::new(&settings);
    let mut caller = Caller::new("echo");
    bridged_invite(&mut h, &mut caller);
    h.take_outputs();
    h.advance(secs(33));
    let failures = transfer_failures(&h.take_outputs());
    assert!(
        failures.first().is_some_and(|f| f.contains("408")),
        "{failures:?}"
    );
    h.send(&caller.request("BYE", &[], None));
    assert_clean(&mut h);
}

#[test]
fn cancel_waits_for_a_provisional_response_when_the_caller_leaves_early() {
    let mut h = Harness::new(&bridge_settings());
    let mut caller = Caller::new("echo");
    let (_, invite) = bridged_invite(&mut h, &mut caller);
    h.send(&caller.request("BYE", &[], None));
    assert!(
        !h.take_requests()
            .iter()
            .any(|r| r.method().to_string() == "CANCEL"),
        "§9.1: no CANCEL before a provisional response"
    );
    assert_eq!(
        h.switchboard.active_calls(),
        1,
        "the INVITE is still pending"
    );
    h.send_from(agent_addr(), &from_agent(&invite, 180, None));
    let cancel = agent_request(&mut h, "CANCEL");
    h.send_from(agent_addr(), &answer(&cancel, 200, &[], None));
    h.send_from(agent_addr(), &from_agent(&invite, 487, None));
    assert_clean(&mut h);
}

#[test]
fn draining_byes_both_legs_of_a_bridged_call() {
    let mut h = Harness::new(&bridge_settings());
    let mut caller = Caller::new("echo");
    let (_, invite) = bridged_invite(&mut h, &mut caller);
    h.send_from(agent_addr(), &from_agent(&invite, 200, Some(AGENT_SDP)));
    h.take();
    let deadline = h.now + secs(1);
    h.begin_drain(deadline);
    h.advance(secs(1));
    let byes: Vec<Request> = h
        .take_requests()
        .into_iter()
        .filter(|r| r.method().to_string() == "BYE")
        .collect();
    assert_eq!(byes.len(), 2, "{byes:?}");
    assert!(byes.iter().any(|b| b.call_id() == caller.call_id));
    assert!(byes.iter().any(|b| b.call_id() == invite.call_id()));
    for bye in &byes {
        let from = if bye.call_id() == invite.call_id() {
            agent_addr()
        } else {
            crate::testkit::pbx_addr()
        };
        h.send_from(from, &answer(bye, 200, &[], None));
    }
    assert_clean(&mut h);
}

#[test]
fn warm_transfer_tells_the_destination_the_announcement_and_summary_in_headers() {
    let mut settings = bridge_settings();
    if let Some(agent) = settings.agents.first_mut() {
        agent.transfers[0].announce = Some("Caller from the assistant".into());
    }
    let mut h = Harness::new(&settings);
    let mut caller = Caller::new("assistant");
    h.establish(&mut caller, &[]);
    let key = call_key(&h.take_outputs());
    h.take();
    let mut warm = request();
    warm.summary = Some("Ann\nwants a refund".into());
    h.transfer(key, warm);
    let invite = agent_request(&mut h, "INVITE");
    assert_eq!(
        invite.header("X-Voxgate-Announce"),
        Some("Caller from the assistant: Ann wants a refund")
    );
    assert_eq!(
        invite.header("X-Voxgate-Summary"),
        Some("Ann wants a refund")
    );
}

/// The destination by name; its servers, as `io/` would locate them (RFC 3263).
const NAMED: &str = "sip:agent@agents.example.com";

fn servers() -> [SocketAddr; 2] {
    [
        "192.0.2.51:5060".parse().expect("literal"),
        "192.0.2.52:5070".parse().expect("literal"),
    ]
}

fn named_settings(timeout_secs: u64) -> Settings {
    let mut settings = bridge_settings();
    settings.transfer.timeout_secs = timeout_secs;
    if let Some(destination) = settings
        .agents
        .first_mut()
        .and_then(|agent| agent.transfers.first_mut())
    {
        destination.uri = Some(NAMED.to_owned());
    }
    settings
}

/// An established call whose agent asked for the named destination; returns its key once the
/// lookup was asked for (nothing sent to the destination yet).
fn located_transfer(h: &mut Harness, caller: &mut Caller) -> CallKey {
    h.establish(caller, &[]);
    let key = call_key(&h.take_outputs());
    h.take();
    h.transfer(key, request());
    let outputs = h.take_outputs();
    let lookup = outputs
        .iter()
        .find_map(|output| match output {
            Output::LocateAgentLeg {
                host,
                port,
                transport,
                ..
            } => Some((host.clone(), *port, *transport)),
            _ => None,
        })
        .expect("the next hop is looked up");
    assert_eq!(
        lookup,
        ("agents.example.com".to_owned(), None, Transport::Udp),
        "no port in the URI: SRV first (RFC 3263 §4.2)"
    );
    assert!(
        leg_commands(&outputs).contains(&AgentLegCommand::Ringback),
        "the caller hears ringback while DNS answers"
    );
    assert!(
        !h.take_requests()
            .iter()
            .any(|r| r.method().to_string() == "INVITE"),
        "no INVITE before the lookup"
    );
    key
}

/// The caller hangs up a bridged call: the destination gets BYE and answers; nothing is left.
fn hang_up_bridged(h: &mut Harness, caller: &mut Caller) {
    h.send(&caller.request("BYE", &[], None));
    let bye = agent_request(h, "BYE");
    h.send_from(agent_addr(), &answer(&bye, 200, &[], None));
    assert_clean(h);
}

/// The INVITEs sent so far, with where each went.
fn invites_sent(h: &mut Harness) -> Vec<(SocketAddr, Request)> {
    h.take()
        .into_iter()
        .filter_map(|sent| {
            let request = sent.request()?.clone();
            match (sent.target, request.method().to_string().as_str()) {
                (Target::Addr(to), "INVITE") => Some((to, request)),
                _ => None,
            }
        })
        .collect()
}

fn success_count(outputs: &[Output]) -> usize {
    outputs
        .iter()
        .filter(|output| {
            matches!(
                output,
                Output::TransferFinished {
                    result: "success",
                    ..
                }
            )
        })
        .count()
}

#[test]
fn named_destination_is_located_and_a_503_moves_the_invite_to_the_next_server() {
    let mut h = Harness::new(&named_settings(20));
    let mut caller = Caller::new("echo");
    let key = located_transfer(&mut h, &mut caller);
    let [first, second] = servers();
    h.agent_leg_located(key, Ok(&servers()));
    let sent = invites_sent(&mut h);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (to, invite) = &sent[0];
    assert_eq!(*to, first, "the most preferred server first");
    assert_eq!(
        invite.request_uri(),
        NAMED,
        "the Request-URI keeps the name"
    );

    h.send_from(first, &from_agent(invite, 503, None));
    let sent = h.take();
    assert!(
        sent.iter().any(
            |s| s.request().is_some_and(|r| r.method().to_string() == "ACK")
                && s.target == Target::Addr(first)
        ),
        "the 503 is ACKed where it came from"
    );
    let again: Vec<(SocketAddr, Request)> = sent
        .iter()
        .filter_map(|s| match (&s.target, s.request()) {
            (Target::Addr(to), Some(r)) if r.method().to_string() == "INVITE" => {
                Some((*to, r.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(again.len(), 1, "one INVITE to the next server: {again:?}");
    let (to, retry) = &again[0];
    assert_eq!(*to, second);
    assert_eq!(retry.call_id(), invite.call_id(), "RFC 3263 §4.3");
    assert_eq!(retry.from_tag(), invite.from_tag());
    assert_eq!(retry.cseq().seq, invite.cseq().seq + 1);
    assert_ne!(retry.top_via().branch, invite.top_via().branch);
    assert!(
        transfer_failures(&h.take_outputs()).is_empty(),
        "the model hears nothing of the 503"
    );

    h.send_from(second, &from_agent(retry, 180, None));
    h.send_from(second, &from_agent(retry, 200, Some(AGENT_SDP)));
    let ack = agent_request(&mut h, "ACK");
    assert_eq!(ack.cseq().seq, retry.cseq().seq);
    let outputs = h.take_outputs();
    assert_eq!(success_count(&outputs), 1, "{outputs:?}");
    assert!(leg_commands(&outputs)
        .iter()
        .any(|c| matches!(c, AgentLegCommand::Connect(_))));
    hang_up_bridged(&mut h, &mut caller);
}

#[test]
fn a_server_that_sends_nothing_is_given_up_after_4_s_without_a_cancel() {
    let mut h = Harness::new(&named_settings(20));
    let mut caller = Caller::new("echo");
    let key = located_transfer(&mut h, &mut caller);
    let [first, second] = servers();
    let asked = h.now;
    h.agent_leg_located(key, Ok(&servers()));
    let (at, retry) = h
        .run_until(secs(10), |sent| {
            let request = sent.request()?;
            (request.method().to_string() == "INVITE" && sent.target == Target::Addr(second))
                .then(|| request.clone())
        })
        .expect("an INVITE to the second server");
    assert_eq!(at - asked, secs(4), "8·T1 of silence");
    let earlier = h.take();
    let to_first: Vec<&Sent> = earlier
        .iter()
        .filter(|s| s.target == Target::Addr(first))
        .collect();
    assert_eq!(
        to_first.len(),
        4,
        "the INVITE and its retransmissions at 0.5, 1.5 and 3.5 s"
    );
    assert!(
        to_first.iter().all(|s| s
            .request()
            .is_some_and(|r| r.method().to_string() == "INVITE")),
        "no CANCEL without a response (RFC 3261 §9.1)"
    );
    h.advance(secs(5));
    assert!(
        h.take().iter().all(|s| s.target != Target::Addr(first)),
        "the first server's INVITE is abandoned: no more retransmissions"
    );
    // A late answer from the server given up matches nothing.
    let first_invite = earlier
        .iter()
        .find_map(|s| s.request().filter(|_| s.target == Target::Addr(first)))
        .expect("the first INVITE")
        .clone();
    h.send_from(first, &from_agent(&first_invite, 180, None));
    assert!(h.take().is_empty());

    h.send_from(second, &from_agent(&retry, 200, Some(AGENT_SDP)));
    assert_eq!(success_count(&h.take_outputs()), 1);
    hang_up_bridged(&mut h, &mut caller);
}

#[test]
fn the_last_server_is_not_given_up_early_and_its_silence_is_a_408() {
    let mut h = Harness::new(&named_settings(600));
    let mut caller = Caller::new("echo");
    let key = located_transfer(&mut h, &mut caller);
    let [_, second] = servers();
    h.agent_leg_located(key, Ok(&[second]));
    assert_eq!(invites_sent(&mut h).len(), 1);
    h.take_outputs();
    h.advance(secs(31));
    assert!(transfer_failures(&h.take_outputs()).is_empty());
    h.advance(secs(2));
    let failures = transfer_failures(&h.take_outputs());
    assert!(
        failures.first().is_some_and(|f| f.contains("408")),
        "Timer B: {failures:?}"
    );
    h.send(&caller.request("BYE", &[], None));
    assert_clean(&mut h);
}

#[test]
fn a_destination_dns_cannot_find_is_a_503_failure_and_the_call_goes_on() {
    let mut h = Harness::new(&named_settings(20));
    let mut caller = Caller::new("echo");
    let key = located_transfer(&mut h, &mut caller);
    h.agent_leg_located(key, Err("agents.example.com: no address"));
    let outputs = h.take_outputs();
    assert!(leg_commands(&outputs).contains(&AgentLegCommand::Release));
    let failures = transfer_failures(&outputs);
    let output: serde_json::Value =
        serde_json::from_str(failures.first().expect("a failure")).expect("JSON");
    assert_eq!(output["sip_status"], 503, "{output}");
    assert!(invites_sent(&mut h).is_empty());
    assert_eq!(h.switchboard.active_calls(), 1, "the caller stays");
    h.send(&caller.request("BYE", &[], None));
    assert_clean(&mut h);
}

#[test]
fn a_lookup_that_outlasts_the_transfer_timeout_ends_the_attempt() {
    let mut h = Harness::new(&named_settings(20));
    let mut caller = Caller::new("echo");
    let key = located_transfer(&mut h, &mut caller);
    h.advance(secs(21));
    let outputs = h.take_outputs();
    assert!(leg_commands(&outputs).contains(&AgentLegCommand::Release));
    assert!(
        transfer_failures(&outputs)
            .first()
            .is_some_and(|f| f.contains("in time")),
        "{outputs:?}"
    );
    // The answer that comes too late changes nothing.
    h.agent_leg_located(key, Ok(&servers()));
    assert!(invites_sent(&mut h).is_empty());
    h.send(&caller.request("BYE", &[], None));
    assert_clean(&mut h);
}

#[test]
fn an_outbound_proxy_by_name_is_located_instead_of_the_destination() {
    let mut settings = bridge_settings();
    if let Some(trunk) = settings.trunks.first_mut() {
        trunk.outbound_proxy = Some("sip:proxy.example.com:5070;transport=tcp".into());
    }
    let mut h = Harness::new(&settings);
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    let key = call_key(&h.take_outputs());
    h.take();
    h.transfer(key, request());
    let lookup = h
        .take_outputs()
        .into_iter()
        .find_map(|output| match output {
            Output::LocateAgentLeg {
                host,
                port,
                transport,
                ..
            } => Some((host, port, transport)),
            _ => None,
        });
    assert_eq!(
        lookup,
        Some(("proxy.example.com".to_owned(), Some(5070), Transport::Tcp)),
        "a port in the URI: A/AAAA only; the proxy's transport"
    );
    let proxy: SocketAddr = "192.0.2.60:5070".parse().expect("literal");
    h.agent_leg_located(key, Ok(&[proxy]));
    let sent = invites_sent(&mut h);
    let (to, invite) = sent.first().expect("INVITE");
    assert_eq!(*to, proxy);
    assert_eq!(invite.request_uri(), format!("sip:agent@{AGENT}"));
    assert!(invite
        .header("Route")
        .is_some_and(|route| route.contains("proxy.example.com")));
    // The TCP connection to the proxy is in use: not closed when idle.
    assert!(h
        .switchboard
        .uses_connection(crate::sip::endpoint::ConnectionId(99), proxy));
}

#[test]
fn the_lookup_counts_toward_the_transfer_timeout() {
    let mut h = Harness::new(&named_settings(20));
    let mut caller = Caller::new("echo");
    let asked = h.now;
    let key = located_transfer(&mut h, &mut caller);
    h.advance(secs(15));
    let [first, _] = servers();
    h.agent_leg_located(key, Ok(&[first]));
    let (_, invite) = invites_sent(&mut h).pop().expect("INVITE");
    h.send_from(first, &from_agent(&invite, 180, None));
    let (at, _) = h.next_request("CANCEL", secs(60)).expect("CANCEL");
    assert_eq!(at - asked, secs(20), "15 s of DNS and 5 s of ringing");
}

/// The INVITE to `to` among `sent`, as sent.
fn invite_to(sent: &[Sent], to: SocketAddr) -> Sent {
    sent.iter()
        .find(|s| {
            s.target == Target::Addr(to)
                && s.request()
                    .is_some_and(|r| r.method().to_string() == "INVITE")
        })
        .cloned()
        .unwrap_or_else(|| panic!("an INVITE to {to}: {sent:?}"))
}

#[test]
fn a_server_that_cannot_be_reached_moves_the_invite_to_the_next_at_once() {
    let mut h = Harness::new(&named_settings(20));
    let mut caller = Caller::new("echo");
    let key = located_transfer(&mut h, &mut caller);
    let [first, second] = servers();
    h.agent_leg_located(key, Ok(&servers()));
    let refused = invite_to(&h.take(), first);
    let asked = h.now;
    // e.g. its TCP connection was refused: RFC 3261 §8.1.3.1, as a 503 from it.
    h.send_failed(&refused);
    let sent = h.take();
    let retry = invite_to(&sent, second);
    assert_eq!(retry.at, asked, "at once, not after 8·T1 or Timer B");
    assert!(
        sent.iter().all(|s| s.target != Target::Addr(first)),
        "nothing more to the server that could not be reached (no ACK, no CANCEL): {sent:?}"
    );
    let (invite, retry) = (
        refused.request().expect("a request"),
        retry.request().expect("a request").clone(),
    );
    assert_eq!(retry.call_id(), invite.call_id(), "RFC 3263 §4.3");
    assert_eq!(retry.cseq().seq, invite.cseq().seq + 1);
    assert!(transfer_failures(&h.take_outputs()).is_empty());
    h.advance(secs(5));
    assert!(
        h.take().iter().all(|s| s.target != Target::Addr(first)),
        "the failed INVITE is not retransmitted"
    );

    h.send_from(second, &from_agent(&retry, 200, Some(AGENT_SDP)));
    assert_eq!(success_count(&h.take_outputs()), 1);
    hang_up_bridged(&mut h, &mut caller);
}

#[test]
fn the_last_server_unreachable_is_a_503_failure_and_the_call_goes_on() {
    let mut h = Harness::new(&named_settings(20));
    let mut caller = Caller::new("echo");
    let key = located_transfer(&mut h, &mut caller);
    let [_, second] = servers();
    h.agent_leg_located(key, Ok(&[second]));
    let refused = invite_to(&h.take(), second);
    h.take_outputs();
    h.send_failed(&refused);
    let outputs = h.take_outputs();
    assert!(leg_commands(&outputs).contains(&AgentLegCommand::Release));
    let failures = transfer_failures(&outputs);
    let output: serde_json::Value =
        serde_json::from_str(failures.first().expect("a failure at once")).expect("JSON");
    assert_eq!(output["sip_status"], 503, "{output}");
    assert_eq!(h.switchboard.active_calls(), 1, "the caller stays");
    h.send(&caller.request("BYE", &[], None));
    assert_clean(&mut h);
}

#[test]
fn a_tcp_connection_lost_while_the_destination_rings_fails_the_transfer_at_once() {
    let mut settings = bridge_settings();
    if let Some(destination) = settings
        .agents
        .first_mut()
        .and_then(|agent| agent.transfers.first_mut())
    {
        destination.uri = Some(format!("sip:agent@{AGENT};transport=tcp"));
    }
    let mut h = Harness::new(&settings);
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    let key = call_key(&h.take_outputs());
    h.take();
    h.transfer(key, request());
    let agent: SocketAddr = AGENT.parse().expect("literal");
    let (to, invite) = invites_sent(&mut h).pop().expect("INVITE");
    assert_eq!(to, agent);
    h.send_from(agent, &from_agent(&invite, 180, None));
    h.take_outputs();
    let lost = h.now + secs(2);
    h.advance(secs(2));

    // Its server vanished with the connection: a 503 failure now, not at the transfer timeout.
    h.connection_closed(crate::sip::endpoint::ConnectionId(9), agent);
    let outputs = h.take_outputs();
    assert!(leg_commands(&outputs).contains(&AgentLegCommand::Release));
    let failures = transfer_failures(&outputs);
    let output: serde_json::Value =
        serde_json::from_str(failures.first().expect("a failure at once")).expect("JSON");
    assert_eq!(output["sip_status"], 503, "{output}");
    assert_eq!(h.now, lost);
    assert_eq!(h.switchboard.active_calls(), 1, "the caller stays");
    h.send(&caller.request("BYE", &[], None));
    assert_clean(&mut h);
}
