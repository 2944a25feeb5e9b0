//! Call and switchboard behaviour against a fake PBX in virtual time (see [`crate::testkit`]):
//! call set-up and tear-down from either side, refusals, offer/answer in INVITE, ACK and
//! re-INVITE, glare, RFC 4028 session timers over hours, draining and OPTIONS.

use std::net::SocketAddr;
use std::time::Duration;

use crate::call::{CallKey, MediaCommand, MediaParams, Output};
use crate::metrics::CallResult;
use crate::sip::endpoint::{ConnectionId, Target};
use crate::sip::message::{Response, Transport};
use crate::testkit::{
    answer, direction_of, g729_offer, ms, offer, pbx_addr, sdp_version, secs, settings, summarise,
    Caller, Harness, FIRST_RTP_PORT, PBX_RTP_PORT,
};

/// 64·T1 with the test settings' T1 of 500 ms.
const SIXTY_FOUR_T1: Duration = Duration::from_secs(32);

fn harness() -> Harness {
    Harness::new(&settings())
}

fn call_key(outputs: &[Output]) -> CallKey {
    outputs
        .iter()
        .find_map(|output| match output {
            Output::AllocateMedia { call, .. } => Some(*call),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no AllocateMedia in {outputs:?}"))
}

fn configured(outputs: &[Output]) -> Vec<MediaParams> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Media {
                command: MediaCommand::Configure(params),
                ..
            } => Some(params.clone()),
            _ => None,
        })
        .collect()
}

fn ended(outputs: &[Output]) -> Vec<CallResult> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::CallEnded { result, .. } => Some(*result),
            _ => None,
        })
        .collect()
}

fn stopped(outputs: &[Output]) -> bool {
    outputs.iter().any(|output| {
        matches!(
            output,
            Output::Media {
                command: MediaCommand::Stop,
                ..
            }
        )
    })
}

fn statuses(responses: &[Response]) -> Vec<(u16, String)> {
    responses
        .iter()
        .map(|response| (response.status(), response.cseq().method.to_string()))
        .collect()
}

fn has_token(response: &Response, header: &str, token: &str) -> bool {
    response
        .header_tokens(header)
        .iter()
        .any(|item| item.eq_ignore_ascii_case(token))
}

/// Lets every transaction finish and checks that nothing is left behind.
fn assert_clean(h: &mut Harness) {
    h.advance(secs(70));
    assert_eq!(h.switchboard.active_calls(), 0, "calls left in the table");
    assert_eq!(
        h.switchboard.endpoint().transaction_counts(),
        (0, 0),
        "transactions left in the endpoint"
    );
}

// ---- basic call ----

#[test]
fn basic_call_is_answered_with_sdp_acked_and_ended_by_the_callers_bye() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], Some(&offer(1, "sendrecv"))));
    let sent = h.take();
    assert!(
        sent.iter().all(|s| s.target == Target::Addr(pbx_addr())),
        "responses go to the PBX's source address"
    );
    let responses: Vec<Response> = sent.iter().filter_map(|s| s.response().cloned()).collect();
    assert_eq!(
        statuses(&responses),
        [(100, "INVITE".into()), (200, "INVITE".into())],
        "{:?}",
        summarise(&sent)
    );
    let ok = &responses[1];
    assert!(responses[0].to_tag().is_none(), "100 Trying carries no tag");
    let tag = ok.to_tag().expect("200 carries voxgate's tag");
    assert!(!tag.is_empty());
    assert_eq!(ok.content_type(), Some("application/sdp"));
    let body = std::str::from_utf8(ok.body()).expect("SDP text");
    assert!(
        body.contains(&format!("m=audio {FIRST_RTP_PORT} RTP/AVP 0")),
        "{body}"
    );
    assert!(body.contains("c=IN IP4 192.0.2.1"), "{body}");
    assert_eq!(direction_of(ok.body()).as_deref(), Some("sendrecv"));
    assert_eq!(
        ok.contact_uri().as_deref(),
        Some("sip:voxgate@192.0.2.1:5060")
    );
    assert!(has_token(ok, "Allow", "UPDATE") && has_token(ok, "Allow", "BYE"));
    assert!(
        ok.header("Session-Expires").is_none(),
        "no session timer for a caller that does not support it"
    );

    let outputs = h.take_outputs();
    let key = call_key(&outputs);
    let media = configured(&outputs);
    assert_eq!(media.len(), 1, "{outputs:?}");
    assert_eq!(
        media[0].remote_rtp,
        Some(SocketAddr::new(pbx_addr().ip(), PBX_RTP_PORT))
    );
    assert!(media[0].send && media[0].receive);
    assert_eq!(media[0].payload_type, 0);
    assert_eq!(media[0].telephone_event, Some(101));

    caller.learn(ok);
    h.send(&caller.ack(None));
    // The ACK stops the 2xx retransmissions.
    h.advance(secs(10));
    assert!(h.take().is_empty(), "nothing is sent after the ACK");
    assert_eq!(h.switchboard.active_calls(), 1);

    h.send(&caller.request("BYE", &[], None));
    let bye_ok = h.final_response("BYE");
    assert_eq!(bye_ok.status(), 200);
    assert_eq!(bye_ok.to_tag(), Some(tag));
    let outputs = h.take_outputs();
    assert!(stopped(&outputs), "{outputs:?}");
    assert_eq!(ended(&outputs), [CallResult::Completed]);
    assert!(outputs.iter().all(|o| match o {
        Output::Media { call, .. } | Output::CallEnded { call, .. } => *call == key,
        _ => true,
    }));
    assert_clean(&mut h);
}

#[test]
fn unacked_200_is_retransmitted_and_the_call_is_hung_up_after_64_t1() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], Some(&offer(1, "sendrecv"))));
    let answered_at = h.now;
    let first = h.final_response("INVITE");
    caller.learn(&first);
    let (bye_at, bye) = h
        .next_request("BYE", secs(60))
        .expect("BYE after the missing ACK");
    assert_eq!(bye_at - answered_at, SIXTY_FOUR_T1, "RFC 3261 §13.3.1.4");
    let retransmitted = h
        .take_responses()
        .iter()
        .filter(|r| r.status() == 200 && r.cseq().method.to_string() == "INVITE")
        .count();
    // T1, 2·T1, 4·T1, then every T2 (4 s) until 32 s: 0.5 1.5 3.5 7.5 11.5 … 31.5.
    assert_eq!(retransmitted, 10, "2xx retransmissions before giving up");
    assert_eq!(bye.to_tag(), Some(caller.from_tag.as_str()));
    assert_eq!(bye.from_tag(), first.to_tag());
    assert_eq!(ended(&h.take_outputs()), [CallResult::Failed]);

    h.send(&answer(&bye, 200, &[], None));
    assert_clean(&mut h);
}

#[test]
fn ringing_agent_sends_180_with_its_tag_then_answers_after_ring_ms() {
    let mut settings = settings();
    settings.agents[0].ring_ms = 3_000;
    let mut h = Harness::new(&settings);
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], Some(&offer(1, "sendrecv"))));
    let provisional = h.take_responses();
    assert_eq!(
        statuses(&provisional),
        [(100, "INVITE".into()), (180, "INVITE".into())]
    );
    let ringing_tag = provisional[1].to_tag().map(str::to_owned);
    assert!(ringing_tag.is_some());
    let start = h.now;
    let (at, ok) = h
        .run_until(secs(10), |sent| {
            sent.response().filter(|r| r.status() == 200).cloned()
        })
        .expect("answered after ring_ms");
    assert_eq!(at - start, ms(3_000));
    assert_eq!(ok.to_tag().map(str::to_owned), ringing_tag, "same dialog");
}

// ---- cancel ----

#[test]
fn cancel_while_ringing_gets_200_and_the_invite_487() {
    let mut settings = settings();
    settings.agents[0].ring_ms = 5_000;
    let mut h = Harness::new(&settings);
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], Some(&offer(1, "sendrecv"))));
    h.take();
    h.advance(secs(1));
    h.send(&caller.cancel());
    let responses = h.take_responses();
    assert_eq!(
        statuses(&responses),
        [(200, "CANCEL".into()), (487, "INVITE".into())]
    );
    let terminated = &responses[1];
    assert_eq!(ended(&h.take_outputs()), [CallResult::Cancelled]);
    h.send(&caller.ack_failure(terminated));
    // The ring timer is gone with the call: no 200 ever follows.
    h.advance(secs(10));
    assert!(
        h.take_responses().iter().all(|r| r.status() != 200),
        "a cancelled call was answered"
    );
    assert_clean(&mut h);
}

#[test]
fn cancel_before_media_ports_are_bound_gets_487_and_late_ports_are_ignored() {
    let mut h = harness();
    h.auto_media = false;
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], Some(&offer(1, "sendrecv"))));
    let key = call_key(&h.take_outputs());
    h.take();
    h.send(&caller.cancel());
    let responses = h.take_responses();
    assert_eq!(
        statuses(&responses),
        [(200, "CANCEL".into()), (487, "INVITE".into())]
    );
    h.send(&caller.ack_failure(&responses[1]));
    h.allocate_media(key);
    assert!(
        h.take().is_empty(),
        "ports bound after the CANCEL change nothing"
    );
    assert_eq!(ended(&h.take_outputs()), [CallResult::Cancelled]);
    assert_clean(&mut h);
}

#[test]
fn no_media_ports_refuses_the_call_with_503() {
    let mut h = harness();
    h.auto_media = false;
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], Some(&offer(1, "sendrecv"))));
    let key = call_key(&h.take_outputs());
    h.media_failed(key, "port range exhausted");
    let refused = h.final_response("INVITE");
    assert_eq!(refused.status(), 503);
    assert_eq!(ended(&h.take_outputs()), [CallResult::Rejected]);
    h.send(&caller.ack_failure(&refused));
    assert_clean(&mut h);
}

// ---- voxgate hangs up ----

#[test]
fn hang_up_from_voxgate_sends_an_in_dialog_bye_and_forgets_the_call_when_answered() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    let ok = h.establish(&mut caller, &[]);
    let key = call_key(&h.take_outputs());
    h.advance(secs(5));
    h.media_ended(key, "no RTP");
    let sent = h.take();
    let bye = sent
        .iter()
        .find_map(|s| s.request().cloned())
        .expect("BYE sent");
    assert_eq!(bye.method().to_string(), "BYE");
    assert_eq!(sent[0].target, Target::Addr(pbx_addr()));
    assert_eq!(
        bye.request_uri(),
        "sip:pbx@192.0.2.10:5060",
        "remote target"
    );
    assert_eq!(bye.from_tag(), ok.to_tag());
    assert_eq!(bye.to_tag(), Some(caller.from_tag.as_str()));
    assert_eq!(bye.call_id(), caller.call_id);
    let outputs = h.take_outputs();
    assert!(stopped(&outputs));
    assert_eq!(ended(&outputs), [CallResult::Failed]);
    assert_eq!(
        h.switchboard.active_calls(),
        1,
        "waits for the BYE's answer"
    );
    // A BYE crossing ours is answered 481: the dialog is already gone on voxgate's side.
    h.send(&caller.request("BYE", &[], None));
    assert_eq!(h.final_response("BYE").status(), 481);
    h.send(&answer(&bye, 200, &[], None));
    assert_eq!(h.switchboard.active_calls(), 0);
    assert_clean(&mut h);
}

#[test]
fn a_call_over_tcp_keeps_its_connection_in_use_until_its_last_transaction_ends() {
    let mut h = harness();
    let connection = ConnectionId(7);
    h.flow.transport = Transport::Tcp;
    h.flow.connection = Some(connection);
    let elsewhere: SocketAddr = "192.0.2.99:5060".parse().expect("literal");
    assert!(!h.switchboard.uses_connection(connection, pbx_addr()));

    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    let key = call_key(&h.take_outputs());
    h.advance(secs(600));
    assert!(h.switchboard.uses_connection(connection, pbx_addr()));
    assert!(
        h.switchboard.uses_connection(ConnectionId(8), pbx_addr()),
        "a later connection from the same peer"
    );
    assert!(!h.switchboard.uses_connection(ConnectionId(8), elsewhere));

    // Hung up: the BYE's transaction still needs the connection for its answer.
    h.media_ended(key, "no RTP");
    let bye = h
        .take()
        .iter()
        .find_map(|s| s.request().cloned())
        .expect("BYE sent");
    assert!(h.switchboard.uses_connection(connection, pbx_addr()));
    h.send(&answer(&bye, 200, &[], None));
    assert_eq!(h.switchboard.active_calls(), 0);
    assert!(!h.switchboard.uses_connection(connection, pbx_addr()));
}

#[test]
fn unanswered_bye_is_given_up_after_timer_f() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    let key = call_key(&h.take_outputs());
    h.media_ended(key, "no RTP");
    let start = h.now;
    h.advance(SIXTY_FOUR_T1 - ms(1));
    assert_eq!(h.switchboard.active_calls(), 1);
    let byes = h
        .take_requests()
        .iter()
        .filter(|r| r.method().to_string() == "BYE")
        .count();
    assert!(byes > 5, "BYE retransmitted (Timer E), got {byes}");
    h.advance(ms(1));
    assert_eq!(h.now - start, SIXTY_FOUR_T1);
    assert_eq!(h.switchboard.active_calls(), 0, "forgotten at Timer F");
}

#[test]
fn a_bye_that_cannot_be_sent_forgets_the_call_at_once() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    let key = call_key(&h.take_outputs());
    h.media_ended(key, "no RTP");
    let bye = h
        .take()
        .into_iter()
        .find(|s| s.request().is_some_and(|r| r.method().to_string() == "BYE"))
        .expect("BYE sent");
    assert_eq!(h.switchboard.active_calls(), 1);
    // e.g. the caller's Contact names a host DNS does not know.
    h.send_failed(&bye);
    assert_eq!(h.switchboard.active_calls(), 0, "no Timer F to wait for");
    h.advance(SIXTY_FOUR_T1);
    assert!(h.take().is_empty(), "no retransmission of the failed BYE");
    assert_clean(&mut h);
}

// ---- admission ----

#[test]
fn invite_from_outside_allow_from_gets_403_and_no_call() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    let stranger: SocketAddr = "198.51.100.7:5060".parse().unwrap();
    h.send_from(stranger, &caller.invite(&[], Some(&offer(1, "sendrecv"))));
    let sent = h.take();
    assert!(sent.iter().all(|s| s.target == Target::Addr(stranger)));
    let forbidden = sent
        .iter()
        .filter_map(|s| s.response())
        .find(|r| r.status() >= 200)
        .expect("final response");
    assert_eq!(forbidden.status(), 403);
    assert!(
        forbidden.to_tag().is_some(),
        "§8.2.6.2: final response with a To tag"
    );
    assert!(h.take_outputs().is_empty(), "no media, no call");
    assert_eq!(h.switchboard.active_calls(), 0);
    // Sent once, with no transaction left: the source may be forged (it never ACKs), and
    // Timer G would send it the 403 ten times over 32 s.
    assert_eq!(h.switchboard.endpoint().transaction_counts(), (0, 0));
    h.advance(secs(40));
    assert!(h.take().is_empty(), "the 403 is not repeated");
    assert_eq!(h.switchboard.unknown_source_invites(), 1);
    // A scanner's next INVITEs: each answered once and counted.
    for _ in 0..5 {
        let mut scanner = Caller::new("100");
        h.send_from(stranger, &scanner.invite(&[], Some(&offer(1, "sendrecv"))));
    }
    let finals = h
        .take()
        .iter()
        .filter_map(|s| s.response().map(|r| r.status()))
        .filter(|status| *status >= 200)
        .collect::<Vec<_>>();
    assert_eq!(finals, [403; 5]);
    assert_eq!(h.switchboard.unknown_source_invites(), 6);
}

#[test]
fn full_switchboard_refuses_with_the_configured_status() {
    for status in [503, 486] {
        let mut settings = settings();
        settings.calls.max_concurrent = 1;
        settings.calls.at_capacity_status = status;
        let mut h = Harness::new(&settings);
        h.establish(&mut Caller::new("echo"), &[]);
        let mut second = Caller::new("echo");
        h.send(&second.invite(&[], Some(&offer(1, "sendrecv"))));
        let refused = h.final_response("INVITE");
        assert_eq!(refused.status(), status);
        h.send(&second.ack_failure(&refused));
        assert_eq!(h.switchboard.active_calls(), 1);
    }
}

#[test]
fn g729_only_offer_gets_488_and_the_ack_is_absorbed() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], Some(&g729_offer())));
    let refused = h.final_response("INVITE");
    assert_eq!(refused.status(), 488);
    assert_eq!(refused.reason(), "Not Acceptable Here");
    let outputs = h.take_outputs();
    assert_eq!(ended(&outputs), [CallResult::Rejected]);
    assert!(configured(&outputs).is_empty());
    h.send(&caller.ack_failure(&refused));
    h.advance(secs(5));
    assert!(h.take().is_empty(), "no 488 retransmission after the ACK");
    assert_clean(&mut h);
}

// ---- offer-less INVITE ----

#[test]
fn offerless_invite_gets_the_offer_in_200_and_the_answer_in_ack() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], None));
    let ok = h.final_response("INVITE");
    assert_eq!(ok.status(), 200);
    let body = std::str::from_utf8(ok.body()).unwrap();
    assert!(body.contains("RTP/AVP 0 8 101"), "{body}");
    assert!(
        configured(&h.take_outputs()).is_empty(),
        "no media before the answer"
    );
    caller.learn(&ok);
    h.send(&caller.ack(Some(&offer(1, "sendrecv"))));
    let media = configured(&h.take_outputs());
    assert_eq!(media.len(), 1);
    assert_eq!(
        media[0].remote_rtp,
        Some(SocketAddr::new(pbx_addr().ip(), PBX_RTP_PORT))
    );
    assert!(h.take().is_empty());
}

#[test]
fn offerless_invite_acked_without_an_answer_is_hung_up() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], None));
    let ok = h.final_response("INVITE");
    caller.learn(&ok);
    h.send(&caller.ack(None));
    let bye = h.take_requests();
    assert_eq!(bye.len(), 1);
    assert_eq!(bye[0].method().to_string(), "BYE");
    assert_eq!(ended(&h.take_outputs()), [CallResult::Failed]);
}

// ---- re-INVITE ----

#[test]
fn reinvite_hold_and_resume_answer_the_direction_and_bump_the_version_once_per_change() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    let ok = h.establish(&mut caller, &[]);
    let v1 = sdp_version(ok.body()).expect("o= version");
    h.take_outputs();

    // An unchanged re-offer (what a refresh looks like) gets the same answer, same version.
    h.send(&caller.reinvite(&[], Some(&offer(1, "sendrecv"))));
    let same = h.final_response("INVITE");
    assert_eq!(same.status(), 200);
    assert_eq!(same.body(), ok.body(), "unchanged answer is byte-identical");
    h.send(&caller.ack(None));
    h.take_outputs();

    h.send(&caller.reinvite(&[], Some(&offer(2, "sendonly"))));
    let held = h.final_response("INVITE");
    assert_eq!(held.status(), 200);
    assert_eq!(held.to_tag(), ok.to_tag());
    assert_eq!(direction_of(held.body()).as_deref(), Some("recvonly"));
    assert_eq!(sdp_version(held.body()), Some(v1 + 1));
    let media = configured(&h.take_outputs());
    assert_eq!(media.len(), 1);
    assert!(!media[0].send && media[0].receive, "{media:?}");
    h.send(&caller.ack(None));

    h.send(&caller.reinvite(&[], Some(&offer(3, "sendrecv"))));
    let resumed = h.final_response("INVITE");
    assert_eq!(direction_of(resumed.body()).as_deref(), Some("sendrecv"));
    assert_eq!(sdp_version(resumed.body()), Some(v1 + 2));
    let media = configured(&h.take_outputs());
    assert!(media[0].send && media[0].receive);
    h.send(&caller.ack(None));
    h.advance(secs(10));
    assert!(h.take().is_empty(), "every 200 was ACKed");
}

#[test]
fn reinvite_with_an_unacceptable_offer_gets_488_and_keeps_the_session() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    h.take_outputs();
    h.send(&caller.reinvite(&[], Some(&g729_offer())));
    let refused = h.final_response("INVITE");
    assert_eq!(refused.status(), 488);
    h.send(&caller.ack_failure(&refused));
    assert!(configured(&h.take_outputs()).is_empty());
    assert_eq!(h.switchboard.active_calls(), 1);
    // The session goes on: a later re-offer is answered.
    h.send(&caller.reinvite(&[], Some(&offer(2, "sendonly"))));
    assert_eq!(h.final_response("INVITE").status(), 200);
}

#[test]
fn offerless_reinvite_gets_an_offer_and_takes_the_answer_from_the_ack() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    let ok = h.establish(&mut caller, &[]);
    h.take_outputs();
    h.send(&caller.reinvite(&[], None));
    let reoffer = h.final_response("INVITE");
    assert_eq!(reoffer.status(), 200);
    assert_eq!(sdp_version(reoffer.body()), sdp_version(ok.body()));
    h.send(&caller.ack(Some(&offer(2, "sendonly"))));
    let media = configured(&h.take_outputs());
    assert_eq!(media.len(), 1);
    assert!(!media[0].send && media[0].receive);
}

#[test]
fn cseq_going_backwards_in_the_dialog_gets_500() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    caller.cseq -= 5;
    h.send(&caller.request("INFO", &[], None));
    assert_eq!(h.final_response("INFO").status(), 500);
}

#[test]
fn in_dialog_request_for_an_unknown_dialog_gets_481() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    caller.to_tag = Some("not-ours".into());
    h.send(&caller.request("BYE", &[], None));
    assert_eq!(h.final_response("BYE").status(), 481);
    let mut stray = Caller::new("echo");
    h.send(&stray.out_of_dialog("BYE"));
    assert_eq!(h.final_response("BYE").status(), 481);
}

// ---- OPTIONS ----

#[test]
fn options_outside_a_dialog_gets_200_with_allow_accept_and_supported() {
    let mut h = harness();
    let mut pbx = Caller::new("echo");
    h.send(&pbx.out_of_dialog("OPTIONS"));
    let ok = h.final_response("OPTIONS");
    assert_eq!(ok.status(), 200);
    for method in ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE"] {
        assert!(has_token(&ok, "Allow", method), "Allow lacks {method}");
    }
    assert!(has_token(&ok, "Accept", "application/sdp"));
    assert!(has_token(&ok, "Supported", "timer"));
    assert!(ok.to_tag().is_some());
    assert_eq!(h.switchboard.active_calls(), 0);
}

#[test]
fn requests_answered_at_once_are_answered_statelessly_with_the_same_tag_each_time() {
    // RFC 3261 §8.2.7: a stateless UAS keeps no transaction, and gives every retransmission of
    // a request the same To tag (a flood of OPTIONS or stray BYEs leaves nothing for 32 s).
    let mut h = harness();
    let stranger: SocketAddr = "198.51.100.7:5060".parse().unwrap();
    let mut pbx = Caller::new("echo");
    let options = pbx.out_of_dialog("OPTIONS");
    let stray_bye = pbx.out_of_dialog("BYE");
    let message = pbx.out_of_dialog("MESSAGE");
    pbx.to_tag = Some("gone".into());
    let in_dead_dialog = pbx.request("INFO", &[], None);
    let mut scanner = Caller::new("100");
    let invite = scanner.invite(&[], Some(&offer(1, "sendrecv")));
    let cases = [
        (&options, "OPTIONS", 200),
        (&stray_bye, "BYE", 481),
        (&message, "MESSAGE", 405),
        (&in_dead_dialog, "INFO", 481),
        (&invite, "INVITE", 403),
    ];
    let mut tags = Vec::new();
    for (request, method, status) in cases {
        h.send_from(stranger, request);
        let first = h.final_response(method);
        assert_eq!(first.status(), status, "{method}");
        assert_eq!(
            h.switchboard.endpoint().transaction_counts(),
            (0, 0),
            "{method}: no transaction kept"
        );
        let tag = first.to_tag().map(str::to_owned);
        if method == "INFO" {
            assert_eq!(tag.as_deref(), Some("gone"), "the request's own To tag");
        } else {
            assert!(tag.as_ref().is_some_and(|tag| tag.len() == 16), "{tag:?}");
            tags.push(tag.clone());
        }
        // The request again (its answer was lost): answered again, identically.
        h.send_from(stranger, request);
        let again = h.final_response(method);
        assert_eq!(again.status(), status);
        assert_eq!(again.to_tag().map(str::to_owned), tag, "{method}: same tag");
        assert_eq!(h.switchboard.endpoint().transaction_counts(), (0, 0));
    }
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), 4, "each request its own tag");
    h.advance(secs(40));
    assert!(h.take().is_empty(), "nothing repeated");
    // Another switchboard (another process) makes another tag for the same request: the tag
    // is keyed, not guessable from the request.
    h.send_from(stranger, &options);
    let ours = h.final_response("OPTIONS").to_tag().map(str::to_owned);
    let mut other = harness();
    other.send_from(stranger, &options);
    let theirs = other.final_response("OPTIONS").to_tag().map(str::to_owned);
    assert!(ours.is_some() && theirs.is_some());
    assert_ne!(ours, theirs);
}

#[test]
fn unknown_method_outside_a_dialog_gets_405_with_allow() {
    let mut h = harness();
    let mut pbx = Caller::new("echo");
    h.send(&pbx.out_of_dialog("MESSAGE"));
    let refused = h.final_response("MESSAGE");
    assert_eq!(refused.status(), 405);
    assert!(has_token(&refused, "Allow", "INVITE"));
}

// ---- draining ----

#[test]
fn draining_with_no_calls_is_drained_at_once() {
    let mut h = harness();
    let deadline = h.now + secs(30);
    h.begin_drain(deadline);
    assert_eq!(h.take_outputs(), [Output::Drained]);
    assert_eq!(h.switchboard.poll_timeout(), None);
}

// ---- RFC 4028 session timers ----

const TIMER_UAC: [(&str, &str); 3] = [
    ("Session-Expires", "1800;refresher=uac"),
    ("Min-SE", "90"),
    ("Supported", "timer"),
];

#[test]
fn session_expires_below_min_se_gets_422_with_our_min_se() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    let extra = [("Session-Expires", "60"), ("Supported", "timer")];
    h.send(&caller.invite(&extra, Some(&offer(1, "sendrecv"))));
    let refused = h.final_response("INVITE");
    assert_eq!(refused.status(), 422);
    assert_eq!(refused.header("Min-SE"), Some("90"));
    assert!(h.take_outputs().is_empty());
    h.send(&caller.ack_failure(&refused));

    // Inside a call: the re-INVITE is refused, the call goes on.
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &TIMER_UAC);
    h.send(&caller.reinvite(&extra, Some(&offer(1, "sendrecv"))));
    let refused = h.final_response("INVITE");
    assert_eq!(refused.status(), 422);
    assert_eq!(refused.header("Min-SE"), Some("90"));
    h.send(&caller.ack_failure(&refused));
    assert_eq!(h.switchboard.active_calls(), 1);
}

#[test]
fn caller_refreshing_by_reinvite_and_update_keeps_the_call_up_for_two_hours() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    let ok = h.establish(&mut caller, &TIMER_UAC);
    assert_eq!(ok.header("Session-Expires"), Some("1800;refresher=uac"));
    assert!(has_token(&ok, "Require", "timer"), "RFC 4028 §9");
    h.take_outputs();
    let start = h.now;
    let refresh = [
        ("Session-Expires", "1800;refresher=uac"),
        ("Supported", "timer"),
    ];
    for round in 1..=8u32 {
        // Asterisk refreshes about halfway through the interval.
        h.advance(secs(900));
        if round % 2 == 1 {
            h.send(&caller.reinvite(&refresh, Some(&offer(1, "sendrecv"))));
            let ok = h.final_response("INVITE");
            assert_eq!(ok.status(), 200, "refresh {round}");
            assert_eq!(ok.header("Session-Expires"), Some("1800;refresher=uac"));
            assert!(has_token(&ok, "Require", "timer"));
            h.send(&caller.ack(None));
        } else {
            h.send(&caller.request("UPDATE", &refresh, None));
            let ok = h.final_response("UPDATE");
            assert_eq!(ok.status(), 200, "refresh {round}");
            assert_eq!(ok.header("Session-Expires"), Some("1800;refresher=uac"));
            assert!(ok.body().is_empty(), "no offer, no answer");
        }
    }
    assert_eq!(h.now - start, secs(7_200));
    assert_eq!(h.switchboard.active_calls(), 1, "up after two hours");
    assert!(ended(&h.take_outputs()).is_empty());

    // The caller stops refreshing: BYE before the session expires (RFC 4028 §10),
    // at interval − min(32 s, interval/3).
    let last_refresh = h.now;
    let (at, bye) = h
        .next_request("BYE", secs(1_800))
        .expect("BYE when the session runs out");
    assert_eq!(at - last_refresh, secs(1_800 - 32));
    assert_eq!(bye.to_tag(), Some(caller.from_tag.as_str()));
    assert_eq!(ended(&h.take_outputs()), [CallResult::Failed]);
    h.send(&answer(&bye, 200, &[], None));
    assert_clean(&mut h);
}

#[test]
fn short_session_without_refresh_is_ended_a_third_of_the_interval_early() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    let extra = [
        ("Session-Expires", "90;refresher=uac"),
        ("Supported", "timer"),
    ];
    let ok = h.establish(&mut caller, &extra);
    assert_eq!(ok.header("Session-Expires"), Some("90;refresher=uac"));
    let start = h.now;
    let (at, _) = h.next_request("BYE", secs(90)).expect("BYE");
    assert_eq!(at - start, secs(60), "90 − min(32, 30)");
}

#[test]
fn session_timer_without_support_from_the_caller_has_voxgate_refresh_without_require() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    // Session-Expires without Supported: timer: voxgate must be the refresher (RFC 4028 §9).
    let ok = h.establish(
        &mut caller,
        &[
            ("Session-Expires", "600"),
            ("Allow", "INVITE, ACK, BYE, CANCEL"),
        ],
    );
    assert_eq!(ok.header("Session-Expires"), Some("600;refresher=uas"));
    assert!(
        ok.header("Require").is_none(),
        "no Require: timer to a UAC without it"
    );
    let start = h.now;
    let (at, refresh) = h.next_request("INVITE", secs(600)).expect("refresh");
    assert_eq!(at - start, secs(300));
    // In voxgate's own request voxgate is the UAC of the transaction: RFC 4028 names the
    // refresher relative to the transaction, so "uac" keeps voxgate refreshing.
    assert_eq!(refresh.header("Session-Expires"), Some("600;refresher=uac"));
}

/// Answers every refresh voxgate sends for `duration` with 200 keeping voxgate the refresher
/// (`refresher=uac`: in voxgate's request voxgate is the transaction's UAC); returns when each
/// refresh came.
fn answer_refreshes(h: &mut Harness, method: &str, duration: Duration) -> Vec<Duration> {
    let start = h.now;
    let end = start + duration;
    let mut times = Vec::new();
    while h.now < end {
        let Some((at, request)) = h.next_request(method, end - h.now) else {
            break;
        };
        times.push(at - start);
        assert_eq!(
            request.header("Session-Expires"),
            Some("1800;refresher=uac"),
            "refresh {}",
            times.len()
        );
        assert!(request
            .header_tokens("Supported")
            .iter()
            .any(|t| t == "timer"));
        assert_eq!(request.request_uri(), "sip:pbx@192.0.2.10:5060");
        if method == "INVITE" {
            assert_eq!(request.content_type(), Some("application/sdp"));
            let sdp = offer(1, "sendrecv");
            let ok = answer(
                &request,
                200,
                &[
                    ("Session-Expires", "1800;refresher=uac"),
                    ("Require", "timer"),
                ],
                Some(&sdp),
            );
            h.send(&ok);
            let acks: Vec<_> = h
                .take_requests()
                .into_iter()
                .filter(|r| r.method().to_string() == "ACK")
                .collect();
            assert_eq!(acks.len(), 1, "voxgate ACKs the refresh's 200");
            assert_eq!(acks[0].cseq().seq, request.cseq().seq);
        } else {
            assert!(request.body().is_empty(), "UPDATE refresh without an offer");
            let ok = answer(
                &request,
                200,
                &[
                    ("Session-Expires", "1800;refresher=uac"),
                    ("Require", "timer"),
                ],
                None,
            );
            h.send(&ok);
        }
    }
    times
}

#[test]
fn voxgate_refreshes_with_update_at_half_the_interval_when_the_caller_allows_update() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    let extra = [
        ("Session-Expires", "1800;refresher=uas"),
        ("Supported", "timer"),
        ("Allow", "INVITE, ACK, BYE, CANCEL, UPDATE"),
    ];
    let ok = h.establish(&mut caller, &extra);
    assert_eq!(ok.header("Session-Expires"), Some("1800;refresher=uas"));
    let times = answer_refreshes(&mut h, "UPDATE", secs(7_200));
    let expected: Vec<Duration> = (1..=8).map(|n| secs(900 * n)).collect();
    assert_eq!(times, expected);
    assert_eq!(
        h.switchboard.active_calls(),
        1,
        "longer than 30 minutes and still up"
    );
    assert!(h
        .take_requests()
        .iter()
        .all(|r| r.method().to_string() != "BYE"));
}

#[test]
fn voxgate_refreshes_with_reinvite_when_the_caller_does_not_allow_update() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    let extra = [
        ("Session-Expires", "1800;refresher=uas"),
        ("Supported", "timer"),
        ("Allow", "INVITE, ACK, BYE, CANCEL"),
    ];
    let ok = h.establish(&mut caller, &extra);
    let v1 = sdp_version(ok.body());
    let times = answer_refreshes(&mut h, "INVITE", secs(3_700));
    assert_eq!(times, [secs(900), secs(1_800), secs(2_700), secs(3_600)]);
    assert_eq!(h.switchboard.active_calls(), 1);
    // The refresh re-offers the same session: the version does not move.
    h.send(&caller.reinvite(&[], Some(&offer(1, "sendrecv"))));
    let again = h.final_response("INVITE");
    assert_eq!(sdp_version(again.body()), v1);
}

fn voxgate_refreshing(h: &mut Harness, allow_update: bool) -> Caller {
    let mut caller = Caller::new("echo");
    let allow = if allow_update {
        "INVITE, ACK, BYE, CANCEL, UPDATE"
    } else {
        "INVITE, ACK, BYE, CANCEL"
    };
    let extra = [
        ("Session-Expires", "1800;refresher=uas"),
        ("Supported", "timer"),
        ("Allow", allow),
    ];
    h.establish(&mut caller, &extra);
    h.take_outputs();
    caller
}

#[test]
fn refresh_answered_481_or_408_ends_the_call_with_bye() {
    for status in [481, 408] {
        let mut h = harness();
        let caller = voxgate_refreshing(&mut h, true);
        let (_, update) = h.next_request("UPDATE", secs(901)).expect("refresh");
        h.send(&answer(&update, status, &[], None));
        let requests = h.take_requests();
        assert_eq!(requests.len(), 1, "{status}: one BYE");
        let bye = &requests[0];
        assert_eq!(bye.method().to_string(), "BYE");
        assert_eq!(bye.to_tag(), Some(caller.from_tag.as_str()));
        assert!(bye.cseq().seq > update.cseq().seq, "CSeq goes up");
        assert_eq!(ended(&h.take_outputs()), [CallResult::Failed]);
        h.send(&answer(bye, 200, &[], None));
        assert_clean(&mut h);
    }
}

#[test]
fn unanswered_refresh_ends_the_call_with_bye_after_timer_f() {
    let mut h = harness();
    voxgate_refreshing(&mut h, true);
    let (sent_at, _) = h.next_request("UPDATE", secs(901)).expect("refresh");
    let (bye_at, _) = h.next_request("BYE", secs(60)).expect("BYE");
    assert_eq!(bye_at - sent_at, SIXTY_FOUR_T1);
    assert_eq!(ended(&h.take_outputs()), [CallResult::Failed]);
}

#[test]
fn reinvite_from_the_caller_while_our_refresh_reinvite_is_pending_gets_491() {
    let mut h = harness();
    let mut caller = voxgate_refreshing(&mut h, false);
    let (_, refresh) = h.next_request("INVITE", secs(901)).expect("refresh");
    h.send(&caller.reinvite(&[], Some(&offer(2, "sendonly"))));
    let glare = h.final_response("INVITE");
    assert_eq!(glare.status(), 491, "RFC 3261 §14.2");
    h.send(&caller.ack_failure(&glare));
    // Our refresh completes; afterwards the caller's retry is answered.
    let sdp = offer(1, "sendrecv");
    h.send(&answer(&refresh, 200, &[], Some(&sdp)));
    assert_eq!(h.take_requests().len(), 1, "ACK");
    h.send(&caller.reinvite(&[], Some(&offer(2, "sendonly"))));
    let ok = h.final_response("INVITE");
    assert_eq!(ok.status(), 200);
    assert_eq!(direction_of(ok.body()).as_deref(), Some("recvonly"));
}

// ---- early dialog ----

// ---- merged requests (RFC 3261 §8.2.2.2) ----

#[test]
fn draining_refuses_new_calls_and_options_then_hangs_up_at_the_deadline() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    h.take_outputs();
    let deadline = h.now + secs(30);
    h.begin_drain(deadline);
    assert!(
        h.take_outputs().is_empty(),
        "not drained while a call is up"
    );

    let mut late = Caller::new("echo");
    h.send(&late.invite(&[], Some(&offer(1, "sendrecv"))));
    let refused = h.final_response("INVITE");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.header("Retry-After"), Some("30"));
    h.send(&late.ack_failure(&refused));
    let mut prober = Caller::new("echo");
    h.send(&prober.out_of_dialog("OPTIONS"));
    assert_eq!(h.final_response("OPTIONS").status(), 503);

    let (at, bye) = h
        .next_request("BYE", secs(60))
        .expect("BYE at the deadline");
    assert_eq!(at, deadline);
    let outputs = h.take_outputs();
    assert_eq!(ended(&outputs), [CallResult::Completed]);
    assert!(
        !outputs.contains(&Output::Drained),
        "the BYE is not answered yet"
    );
    // While the BYE is outstanding the switchboard waits for it, without a past deadline.
    h.advance(secs(1));
    h.send(&answer(&bye, 200, &[], None));
    assert_eq!(h.take_outputs(), [Output::Drained]);
    assert_eq!(h.switchboard.active_calls(), 0);
}

#[test]
fn draining_reports_drained_as_soon_as_the_last_call_ends_by_the_callers_bye() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    h.establish(&mut caller, &[]);
    h.take_outputs();
    let deadline = h.now + secs(30);
    h.begin_drain(deadline);
    h.advance(secs(3));
    h.send(&caller.request("BYE", &[], None));
    assert_eq!(h.final_response("BYE").status(), 200);
    let outputs = h.take_outputs();
    assert_eq!(ended(&outputs), [CallResult::Completed]);
    assert_eq!(outputs.last(), Some(&Output::Drained), "{outputs:?}");
}

#[test]
fn unparseable_offer_gets_400_with_its_own_reason() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], Some("this is not SDP\r\n")));
    let refused = h.final_response("INVITE");
    assert_eq!(refused.status(), 400);
    assert_eq!(refused.reason(), "Bad Request");
}

#[test]
fn update_with_an_offer_while_our_refresh_reinvite_is_pending_gets_491() {
    let mut h = harness();
    let mut caller = voxgate_refreshing(&mut h, false);
    let (_, refresh) = h.next_request("INVITE", secs(901)).expect("refresh");
    let sdp = offer(2, "sendonly");
    h.send(&caller.request("UPDATE", &[], Some(("application/sdp", &sdp))));
    assert_eq!(h.final_response("UPDATE").status(), 491, "RFC 3311 §5.2");
    // A plain UPDATE (a refresh without an offer) is still fine.
    h.send(&caller.request("UPDATE", &[("Session-Expires", "1800")], None));
    assert_eq!(h.final_response("UPDATE").status(), 200);
    let answer_sdp = offer(1, "sendrecv");
    h.send(&answer(&refresh, 200, &[], Some(&answer_sdp)));
    assert_eq!(h.switchboard.active_calls(), 1);
}

#[test]
fn refused_refresh_reinvite_leaves_no_offer_pending() {
    let mut h = harness();
    let mut caller = voxgate_refreshing(&mut h, false);
    let (_, refresh) = h.next_request("INVITE", secs(901)).expect("refresh");
    h.send(&answer(&refresh, 500, &[], None));
    // The transaction ACKs the 500 itself (same branch).
    let acks = h.take_requests();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].method().to_string(), "ACK");
    // RFC 3261 §14.1: after a non-2xx to a re-INVITE the session is as before, so the caller's
    // own re-offer is answered, not refused as glare.
    h.send(&caller.reinvite(&[], Some(&offer(2, "sendonly"))));
    let ok = h.final_response("INVITE");
    assert_eq!(ok.status(), 200, "{ok:?}");
    assert_eq!(direction_of(ok.body()).as_deref(), Some("recvonly"));
}

#[test]
fn answer_to_our_refresh_reinvite_reconfigures_media_when_it_moves() {
    let mut h = harness();
    let _caller = voxgate_refreshing(&mut h, false);
    let (_, refresh) = h.next_request("INVITE", secs(901)).expect("refresh");
    let moved = offer(2, "sendrecv").replace("m=audio 30000", "m=audio 30100");
    h.send(&answer(&refresh, 200, &[], Some(&moved)));
    let media = configured(&h.take_outputs());
    assert_eq!(media.len(), 1, "the media task follows the new answer");
    assert_eq!(
        media[0].remote_rtp,
        Some(SocketAddr::new(pbx_addr().ip(), 30_100))
    );
}

#[test]
fn bye_in_the_early_dialog_is_answered_and_the_invite_gets_487() {
    let mut settings = settings();
    settings.agents[0].ring_ms = 5_000;
    let mut h = Harness::new(&settings);
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], Some(&offer(1, "sendrecv"))));
    let ringing = h
        .take_responses()
        .into_iter()
        .find(|r| r.status() == 180)
        .expect("180");
    caller.learn(&ringing);
    h.send(&caller.request("BYE", &[], None));
    let responses = h.take_responses();
    assert_eq!(
        statuses(&responses),
        [(200, "BYE".into()), (487, "INVITE".into())],
        "RFC 3261 §15.1.2: the pending INVITE is answered too"
    );
    h.send(&caller.ack_failure(&responses[1]));
    assert_eq!(ended(&h.take_outputs()), [CallResult::Cancelled]);
    assert_clean(&mut h);
}

#[test]
fn reinvite_before_the_invite_is_answered_gets_500_with_retry_after() {
    let mut settings = settings();
    settings.agents[0].ring_ms = 5_000;
    let mut h = Harness::new(&settings);
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], Some(&offer(1, "sendrecv"))));
    let ringing = h
        .take_responses()
        .into_iter()
        .find(|r| r.status() == 180)
        .expect("180");
    caller.learn(&ringing);
    let mut second = caller.clone();
    h.send(&second.reinvite(&[], Some(&offer(2, "sendonly"))));
    let refused = h
        .take_responses()
        .into_iter()
        .find(|r| r.status() >= 200)
        .expect("final response to the second INVITE");
    assert_eq!(refused.status(), 500, "RFC 3261 §14.2");
    assert!(refused.header("Retry-After").is_some());
    // The first INVITE is still answered, with the original offer.
    let (_, ok) = h
        .run_until(secs(10), |s| {
            s.response().filter(|r| r.status() == 200).cloned()
        })
        .expect("200");
    assert_eq!(ok.cseq().seq, caller.cseq);
    assert_eq!(direction_of(ok.body()).as_deref(), Some("sendrecv"));
}

#[test]
fn refresh_refused_otherwise_is_retried_and_the_session_ends_if_none_succeeds() {
    let mut h = harness();
    voxgate_refreshing(&mut h, true);
    let start = h.now;
    let (first, update) = h.next_request("UPDATE", secs(901)).expect("refresh");
    assert_eq!(first - start, secs(900));
    h.send(&answer(&update, 500, &[("Retry-After", "5")], None));
    assert!(ended(&h.take_outputs()).is_empty(), "500 is not fatal");
    let (retry, update) = h.next_request("UPDATE", secs(900)).expect("retry");
    assert_eq!(retry - start, secs(1_350), "retried at three quarters");
    h.send(&answer(&update, 500, &[], None));
    // Only a 2xx extends the session (RFC 4028 §10): no success by the end of the interval
    // means the session is over, not a refresh every quarter interval forever.
    let (bye_at, _) = h.next_request("BYE", secs(900)).expect("BYE");
    assert_eq!(
        bye_at - start,
        secs(1_800 - 32),
        "BYE shortly before the session expires"
    );
    assert_eq!(ended(&h.take_outputs()), [CallResult::Failed]);
}

#[test]
fn a_second_copy_of_the_invite_on_another_branch_gets_482_and_one_call_is_made() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    let sdp = offer(1, "sendrecv");
    h.send(&caller.invite(&[], Some(&sdp)));
    let copy = caller.invite_copy(&[], Some(&sdp));
    h.send(&copy);
    let responses = h.take_responses();
    let finals: Vec<u16> = responses
        .iter()
        .filter(|r| r.status() >= 200)
        .map(Response::status)
        .collect();
    assert_eq!(finals, [200, 482], "{:?}", statuses(&responses));
    let loop_detected = responses.iter().find(|r| r.status() == 482).unwrap();
    assert_eq!(loop_detected.reason(), "Loop Detected");
    assert_eq!(h.switchboard.active_calls(), 1);
    // The copy's retransmission is absorbed by its own transaction: 482 again, no new call.
    h.send(&copy);
    assert_eq!(statuses(&h.take_responses()), [(482, "INVITE".into())]);
    assert_eq!(h.switchboard.active_calls(), 1);
}

#[test]
fn unsupported_require_gets_420_with_unsupported_and_a_to_tag() {
    let mut h = harness();
    let mut caller = Caller::new("echo");
    let extra = [("Require", "100rel, timer")];
    h.send(&caller.invite(&extra, Some(&offer(1, "sendrecv"))));
    let refused = h.final_response("INVITE");
    assert_eq!(refused.status(), 420);
    assert_eq!(refused.header("Unsupported"), Some("100rel"));
    assert!(
        refused.to_tag().is_some(),
        "§8.2.6.2: final response with a To tag"
    );
    assert!(h.take_outputs().is_empty());
    h.send(&caller.ack_failure(&refused));
    assert_clean(&mut h);
}

#[test]
fn caller_taking_over_the_refresh_in_its_answer_stops_ours() {
    let mut h = harness();
    let mut caller = voxgate_refreshing(&mut h, true);
    let (_, update) = h.next_request("UPDATE", secs(901)).expect("refresh");
    // RFC 4028 §7.2: the refresher named in the 2xx decides; "uas" is the answering caller.
    h.send(&answer(
        &update,
        200,
        &[
            ("Session-Expires", "1200;refresher=uas"),
            ("Require", "timer"),
        ],
        None,
    ));
    let answered = h.now;
    // No refresh from voxgate any more; the caller refreshes in time and the call stays.
    assert!(h.next_request("UPDATE", secs(1_000)).is_none());
    h.send(&caller.request("UPDATE", &[("Session-Expires", "1200;refresher=uac")], None));
    assert_eq!(h.final_response("UPDATE").status(), 200);
    let refreshed = h.now;
    assert!(refreshed - answered < secs(1_200 - 32));
    // Then it stops: BYE at the new interval less min(32 s, interval/3).
    let (at, _) = h.next_request("BYE", secs(1_200)).expect("BYE");
    assert_eq!(at - refreshed, secs(1_200 - 32));
}

fn openai_settings() -> crate::config::Settings {
    let mut settings = settings();
    settings.agents[0].kind = crate::config::AgentKind::Openai;
    settings.realtime.connect_timeout_ms = 3_000;
    settings.realtime.api_key = Some(crate::config::Secret::new("sk-test"));
    settings
}

fn call_of(h: &mut Harness) -> CallKey {
    call_key(&h.take_outputs())
}

#[test]
fn speech_agent_call_rings_at_once_and_is_answered_when_the_session_is_ready() {
    let mut h = Harness::new(&openai_settings());
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], Some(&offer(1, "sendrecv"))));
    let call = call_of(&mut h);
    assert_eq!(
        statuses(&h.take_responses()),
        [(100, "INVITE".into()), (180, "INVITE".into())],
        "180 at once while the session comes up, no 200 yet"
    );
    h.advance(secs(1));
    assert!(h.take_responses().is_empty());
    h.agent_ready(call);
    let responses = h.take_responses();
    assert_eq!(statuses(&responses), [(200, "INVITE".into())]);
    assert_eq!(
        configured(&h.take_outputs()).len(),
        1,
        "media configured on answer"
    );
    // The agent ends the call: BYE.
    h.send(&caller.ack(None));
    h.agent_hangup(call, "the agent ended the call");
    let bye = h.take_requests();
    assert_eq!(bye.len(), 1);
    assert_eq!(bye[0].method().to_string(), "BYE");
    assert_eq!(ended(&h.take_outputs()), [CallResult::Completed]);
}

#[test]
fn speech_agent_failure_before_answer_is_a_503_with_a_reason() {
    let mut h = Harness::new(&openai_settings());
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], Some(&offer(1, "sendrecv"))));
    let call = call_of(&mut h);
    h.take();
    h.agent_failed(
        call,
        "cannot connect to wss://api.openai.com/v1/realtime: \"refused\"",
    );
    let responses = h.take_responses();
    assert_eq!(statuses(&responses), [(503, "INVITE".into())]);
    let reason = responses[0].header("Reason").expect("Reason header");
    assert_eq!(
        reason,
        "SIP;cause=503;text=\"cannot connect to wss://api.openai.com/v1/realtime: refused\""
    );
    assert_eq!(ended(&h.take_outputs()), [CallResult::Rejected]);
}

#[test]
fn speech_agent_that_never_reports_is_refused_after_the_connect_timeout() {
    let mut h = Harness::new(&openai_settings());
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], Some(&offer(1, "sendrecv"))));
    h.take();
    h.advance(ms(2_900));
    assert!(h.take_responses().is_empty());
    h.advance(ms(2_200));
    let responses = h.take_responses();
    // The 503 (retransmitted over UDP until the ACK) comes 2 s after the connect timeout.
    assert_eq!(statuses(&responses[..1]), [(503, "INVITE".into())]);
    assert!(responses.iter().all(|r| r.status() == 503));
    assert!(responses[0].header("Reason").is_some());
}

#[test]
fn speech_agent_failure_after_answer_hangs_up_as_failed() {
    let mut h = Harness::new(&openai_settings());
    let mut caller = Caller::new("echo");
    h.send(&caller.invite(&[], Some(&offer(1, "sendrecv"))));
    let call = call_of(&mut h);
    h.agent_ready(call);
    h.take();
    h.send(&caller.ack(None));
    h.agent_failed(call, "the Realtime connection broke");
    let requests = h.take_requests();
    assert_eq!(requests[0].method().to_string(), "BYE");
    assert_eq!(ended(&h.take_outputs()), [CallResult::Failed]);
}

#[test]
fn a_contact_that_cannot_be_a_request_uri_is_not_the_remote_target() {
    // Found by fuzzing: NUL bytes in the Contact's host went into the dialog's remote target,
    // and voxgate's BYE carried them in its request line (which no peer can parse). A Contact
    // with control characters is now refused with the INVITE (400); one that is well formed
    // but cannot be a Request-URI counts as absent: the PBX is reached where its INVITE came
    // from.
    let mut h = harness();
    let mut caller = Caller::new("echo");
    let invite = caller.invite(&[], Some(&offer(1, "sendrecv"))).replacen(
        "Contact: <sip:pbx@192.0.2.10:5060>",
        "Contact: <sip:pbx@192.0.2\u{0}\u{0}.10>",
        1,
    );
    h.send(&invite);
    assert_eq!(h.final_response("INVITE").status(), 400);
    for contact in [
        "<sip:pbx@192.0.2.10?Subject=x>",
        "<tel:+15551234567>",
        "<sip:pbx@>",
    ] {
        let mut h = harness();
        let mut caller = Caller::new("echo");
        let invite = caller.invite(&[], Some(&offer(1, "sendrecv"))).replacen(
            "Contact: <sip:pbx@192.0.2.10:5060>",
            &format!("Contact: {contact}"),
            1,
        );
        h.send(&invite);
        let ok = h.final_response("INVITE");
        assert_eq!(ok.status(), 200, "{contact:?}");
        caller.learn(&ok);
        h.send(&caller.ack(None));
        let key = call_key(&h.take_outputs());
        h.media_ended(key, "no RTP");
        let (_, bye) = h.next_request("BYE", secs(1)).expect("BYE sent");
        assert_eq!(bye.request_uri(), "sip:192.0.2.10:5060", "{contact:?}");
    }
}
