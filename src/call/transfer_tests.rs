//! Transfers by REFER against a fake PBX in virtual time (see [`crate::testkit`]): the REFER's
//! headers, 202 and NOTIFY tracking to success (BYE), refusals and failure sipfrags back to the
//! model, the caller handed over (media stopped) before a failure, timeouts, 407, the caller
//! hanging up, and the policy for `refer_then_bridge`.

use crate::call::transfer::TransferRequest;
use crate::call::{CallKey, MediaCommand, Output};
use crate::config::transfer::{TransferDestination, TransferMethod};
use crate::config::{Secret, Settings};
use crate::metrics::CallResult;
use crate::sip::message::Request;
use crate::testkit::{answer, secs, settings, Caller, Harness};

fn destination(name: &str, method: TransferMethod) -> TransferDestination {
    TransferDestination {
        name: name.into(),
        uri: None,
        extension: Some("2001".into()),
        description: "People".into(),
        method,
        announce: None,
    }
}

fn transfer_settings() -> Settings {
    let mut settings = settings();
    settings.trunks[0].domain = Some("pbx.example.com".into());
    settings.transfer.timeout_secs = 10;
    let agent = &mut settings.agents[0];
    agent.transfers = vec![
        destination("sales", TransferMethod::Refer),
        destination("fallback", TransferMethod::ReferThenBridge),
    ];
    settings
}

fn request(destination: &str) -> TransferRequest {
    TransferRequest {
        tool_call_id: Some("call-1".into()),
        destination: destination.into(),
        reason: "wants a person".into(),
        summary: Some("Ann\r\nwants a quote".into()),
    }
}

/// An established call; returns the harness, the caller and the call's key.
fn established(settings: &Settings) -> (Harness, Caller, CallKey) {
    let mut h = Harness::new(settings);
    let mut caller = Caller::new("assistant");
    h.establish(&mut caller, &[]);
    let key = h
        .take_outputs()
        .iter()
        .find_map(|output| match output {
            Output::AllocateMedia { call, .. } => Some(*call),
            _ => None,
        })
        .expect("AllocateMedia");
    h.take();
    (h, caller, key)
}

fn sent_refer(h: &mut Harness) -> Request {
    h.next_request("REFER", secs(1))
        .map(|(_, refer)| refer)
        .expect("voxgate sent a REFER")
}

fn notify(caller: &mut Caller, state: &str, frag: &str) -> String {
    caller.request(
        "NOTIFY",
        &[("Event", "refer"), ("Subscription-State", state)],
        Some(("message/sipfrag;version=2.0", frag)),
    )
}

fn status_of(h: &mut Harness, method: &str) -> u16 {
    h.final_response(method).status()
}

fn transfer_results(outputs: &[Output]) -> Vec<(&'static str, &'static str)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::TransferFinished { method, result, .. } => Some((*method, *result)),
            _ => None,
        })
        .collect()
}

fn failure_output(outputs: &[Output]) -> Option<serde_json::Value> {
    outputs.iter().find_map(|output| match output {
        Output::Media {
            command: MediaCommand::TransferFailed { output, .. },
            ..
        } => serde_json::from_str(output).ok(),
        _ => None,
    })
}

fn ended_as(outputs: &[Output]) -> Option<CallResult> {
    outputs.iter().find_map(|output| match output {
        Output::CallEnded { result, .. } => Some(*result),
        _ => None,
    })
}

#[test]
fn refer_carries_refer_to_referred_by_contact_and_the_summary() {
    let (mut h, _caller, key) = established(&transfer_settings());
    h.transfer(key, request("sales"));
    let refer = sent_refer(&mut h);
    assert_eq!(refer.header("Refer-To"), Some("<sip:2001@pbx.example.com>"));
    let referred_by = refer.header("Referred-By").expect("Referred-By");
    assert!(referred_by.starts_with("<sip:assistant@") && !referred_by.contains("tag"));
    assert!(
        refer
            .header("Contact")
            .is_some_and(|c| c.starts_with("<sip:voxgate@")),
        "REFER needs a Contact URI: {:?}",
        refer.header("Contact")
    );
    assert_eq!(
        refer.header("X-Voxgate-Summary"),
        Some("Ann wants a quote"),
        "one safe header line"
    );
    assert!(refer.header("Refer-Sub").is_none(), "NOTIFYs are wanted");
}

#[test]
fn accepted_refer_tracked_by_notify_ends_with_bye_and_counts_a_success() {
    let (mut h, mut caller, key) = established(&transfer_settings());
    h.transfer(key, request("sales"));
    let refer = sent_refer(&mut h);
    h.send(&answer(&refer, 202, &[], None));
    // Asterisk: 100 and 180 within a millisecond, then 200 with terminated.
    let n = notify(&mut caller, "active;expires=60", "SIP/2.0 100 Trying\r\n");
    h.send(&n);
    assert_eq!(status_of(&mut h, "NOTIFY"), 200);
    let n = notify(&mut caller, "active;expires=60", "SIP/2.0 180 Ringing\r\n");
    h.send(&n);
    assert_eq!(status_of(&mut h, "NOTIFY"), 200);
    assert!(
        h.next_request("BYE", secs(0)).is_none(),
        "not before the outcome"
    );
    let n = notify(
        &mut caller,
        "terminated;reason=noresource",
        "SIP/2.0 200 OK\r\n",
    );
    h.send(&n);
    assert_eq!(status_of(&mut h, "NOTIFY"), 200);
    assert!(h.next_request("BYE", secs(1)).is_some(), "voxgate leaves");
    let outputs = h.take_outputs();
    assert_eq!(transfer_results(&outputs), vec![("refer", "success")]);
    assert_eq!(ended_as(&outputs), Some(CallResult::Transferred));
    assert!(failure_output(&outputs).is_none());
}

#[test]
fn refused_refer_goes_back_to_the_model_with_the_status_and_the_call_stays() {
    for (status, reason) in [
        (403, "Forbidden"),
        (405, "Method Not Allowed"),
        (603, "Decline"),
    ] {
        let (mut h, _caller, key) = established(&transfer_settings());
        h.transfer(key, request("sales"));
        let refer = sent_refer(&mut h);
        h.send(&answer(&refer, status, &[], None));
        let outputs = h.take_outputs();
        let output = failure_output(&outputs).expect("the model hears of it");
        assert_eq!(output["status"], "failed");
        assert_eq!(output["sip_status"], status);
        assert_eq!(output["reason"], reason, "the reason phrase as sent");
        assert_eq!(transfer_results(&outputs), vec![("refer", "failed")]);
        assert!(ended_as(&outputs).is_none());
        assert!(h.next_request("BYE", secs(5)).is_none(), "the call goes on");
    }
}

#[test]
fn failure_sipfrag_while_the_caller_is_still_here_goes_back_to_the_model() {
    let (mut h, mut caller, key) = established(&transfer_settings());
    h.transfer(key, request("sales"));
    let refer = sent_refer(&mut h);
    h.send(&answer(&refer, 202, &[], None));
    let n = notify(
        &mut caller,
        "terminated;reason=noresource",
        "SIP/2.0 486 Busy Here\r\n",
    );
    h.send(&n);
    assert_eq!(status_of(&mut h, "NOTIFY"), 200);
    let outputs = h.take_outputs();
    let output = failure_output(&outputs).expect("the model hears of it");
    assert_eq!(output["sip_status"], 486);
    assert_eq!(output["reason"], "Busy Here");
    assert!(h.next_request("BYE", secs(5)).is_none(), "the call goes on");
}

#[test]
fn failure_after_the_pbx_took_the_caller_still_ends_voxgates_leg() {
    let (mut h, mut caller, key) = established(&transfer_settings());
    h.transfer(key, request("sales"));
    let refer = sent_refer(&mut h);
    h.send(&answer(&refer, 202, &[], None));
    h.caller_media(key, false); // Asterisk moved the caller away
    let n = notify(
        &mut caller,
        "terminated;reason=noresource",
        "SIP/2.0 486 Busy Here\r\n",
    );
    h.send(&n);
    assert!(
        h.next_request("BYE", secs(1)).is_some(),
        "always BYE after a final NOTIFY"
    );
    let outputs = h.take_outputs();
    assert!(
        failure_output(&outputs).is_none(),
        "the model is not asked to go on"
    );
    assert_eq!(transfer_results(&outputs), vec![("refer", "failed")]);
    assert_eq!(ended_as(&outputs), Some(CallResult::Transferred));
}

#[test]
fn handed_over_without_a_final_notify_ends_at_the_timeout() {
    let (mut h, _caller, key) = established(&transfer_settings());
    h.transfer(key, request("sales"));
    let refer = sent_refer(&mut h);
    h.send(&answer(&refer, 202, &[], None));
    h.caller_media(key, false);
    let (at, _) = h
        .next_request("BYE", secs(11))
        .expect("BYE at the transfer timeout");
    assert!(at >= crate::testkit::t0() + secs(10));
    let outputs = h.take_outputs();
    assert_eq!(transfer_results(&outputs), vec![("refer", "handed_over")]);
}

#[test]
fn no_202_within_the_timeout_is_a_typed_failure() {
    let (mut h, _caller, key) = established(&transfer_settings());
    h.transfer(key, request("sales"));
    let _refer = sent_refer(&mut h);
    h.advance(secs(11));
    let outputs = h.take_outputs();
    let output = failure_output(&outputs).expect("the model hears of it");
    assert_eq!(output["status"], "failed");
    assert_eq!(transfer_results(&outputs), vec![("refer", "timeout")]);
    assert!(ended_as(&outputs).is_none());
}

#[test]
fn notify_without_a_subscription_is_481_and_a_bad_event_489() {
    let (mut h, mut caller, key) = established(&transfer_settings());
    let n = notify(&mut caller, "active", "SIP/2.0 100 Trying\r\n");
    h.send(&n);
    assert_eq!(status_of(&mut h, "NOTIFY"), 481);
    h.transfer(key, request("sales"));
    let refer = sent_refer(&mut h);
    h.send(&answer(&refer, 202, &[], None));
    let n = caller.request(
        "NOTIFY",
        &[("Event", "presence"), ("Subscription-State", "active")],
        Some(("message/sipfrag", "SIP/2.0 100 Trying\r\n")),
    );
    h.send(&n);
    assert_eq!(status_of(&mut h, "NOTIFY"), 489);
}

#[test]
fn the_caller_hanging_up_during_the_transfer_counts_it_abandoned() {
    let (mut h, mut caller, key) = established(&transfer_settings());
    h.transfer(key, request("sales"));
    let refer = sent_refer(&mut h);
    h.send(&answer(&refer, 202, &[], None));
    let bye = caller.request("BYE", &[], None);
    h.send(&bye);
    assert_eq!(status_of(&mut h, "BYE"), 200);
    let outputs = h.take_outputs();
    assert_eq!(transfer_results(&outputs), vec![("refer", "abandoned")]);
    assert_eq!(ended_as(&outputs), Some(CallResult::Completed));
    // A late NOTIFY for the ended dialog is refused, nothing else happens.
    h.advance(secs(30));
    assert!(h.take_outputs().is_empty());
    assert_eq!(h.switchboard.active_calls(), 0);
}

#[test]
fn refer_challenged_with_407_is_sent_again_with_credentials() {
    let mut settings = transfer_settings();
    settings.trunks[0].outbound_username = Some("voxgate".into());
    settings.trunks[0].outbound_password_env = Some("VOXGATE_PASSWORD".into());
    settings.trunks[0].outbound_password = Some(Secret::new("pw"));
    let (mut h, _caller, key) = established(&settings);
    h.transfer(key, request("sales"));
    let refer = sent_refer(&mut h);
    let challenge = "Digest realm=\"pbx\", nonce=\"abc123\", algorithm=MD5, qop=\"auth\"";
    h.send(&answer(
        &refer,
        407,
        &[("Proxy-Authenticate", challenge)],
        None,
    ));
    let again = sent_refer(&mut h);
    assert_eq!(again.cseq().seq, refer.cseq().seq + 1);
    assert_eq!(again.header("Refer-To"), refer.header("Refer-To"));
    assert!(again
        .header("Proxy-Authorization")
        .is_some_and(|v| v.contains("username=\"voxgate\"")));
    h.send(&answer(&again, 202, &[("Refer-Sub", "false")], None));
    // 202 with Refer-Sub: false: no NOTIFYs will come; the transfer is done.
    assert!(h.next_request("BYE", secs(1)).is_some());
    assert_eq!(
        transfer_results(&h.take_outputs()),
        vec![("refer", "success")]
    );
}

#[test]
fn a_transfer_before_the_call_is_up_or_to_an_unknown_destination_is_refused() {
    let (mut h, _caller, key) = established(&transfer_settings());
    h.transfer(key, request("nobody"));
    let output = failure_output(&h.take_outputs()).expect("refused");
    assert_eq!(output["sip_status"], 404);
    assert!(h.next_request("REFER", secs(1)).is_none());
}

#[test]
fn refer_then_bridge_falls_back_to_the_bridge_when_the_refer_is_refused() {
    let (mut h, _caller, key) = established(&transfer_settings());
    h.transfer(key, request("fallback"));
    let refer = sent_refer(&mut h);
    h.send(&answer(&refer, 501, &[], None));
    let outputs = h.take_outputs();
    let results = transfer_results(&outputs);
    assert_eq!(results.first(), Some(&("refer", "failed")));
    assert!(
        failure_output(&outputs).is_none() || results.iter().any(|(method, _)| *method == "bridge"),
        "the model hears of a failure only after the bridge was tried: {results:?}"
    );
}

#[test]
fn info_dtmf_reaches_the_media_task_and_other_info_is_just_answered() {
    let (mut h, mut caller, key) = established(&transfer_settings());
    for (kind, body, digit) in [
        (
            "application/dtmf-relay",
            "Signal=5\r\nDuration=160\r\n",
            Some('5'),
        ),
        ("application/dtmf", "#", Some('#')),
        ("application/media_control+xml", "<media_control/>", None),
        ("application/dtmf-relay", "Duration=160\r\n", None),
    ] {
        let info = caller.request("INFO", &[], Some((kind, body)));
        h.send(&info);
        assert_eq!(status_of(&mut h, "INFO"), 200, "{kind}");
        let digits: Vec<char> = h
            .take_outputs()
            .iter()
            .filter_map(|output| match output {
                Output::Media {
                    call,
                    command: MediaCommand::Dtmf(digit),
                } if *call == key => Some(*digit),
                _ => None,
            })
            .collect();
        assert_eq!(
            digits,
            digit.into_iter().collect::<Vec<_>>(),
            "{kind}: {body}"
        );
    }
}

#[test]
fn norefersub_is_asked_for_only_when_configured_and_the_peer_supports_it() {
    let mut settings = transfer_settings();
    settings.transfer.norefersub = true;
    // The caller's INVITE does not say it supports norefersub: NOTIFYs are wanted.
    let (mut h, _caller, key) = established(&settings);
    h.transfer(key, request("sales"));
    assert!(sent_refer(&mut h).header("Refer-Sub").is_none());
    // It does: Refer-Sub: false (RFC 4488), and the 202 ends the transfer.
    let mut h = Harness::new(&settings);
    let mut caller = Caller::new("assistant");
    h.establish(&mut caller, &[("Supported", "timer, norefersub")]);
    let key = h
        .take_outputs()
        .iter()
        .find_map(|output| match output {
            Output::AllocateMedia { call, .. } => Some(*call),
            _ => None,
        })
        .expect("AllocateMedia");
    h.take();
    h.transfer(key, request("sales"));
    let refer = sent_refer(&mut h);
    assert_eq!(refer.header("Refer-Sub"), Some("false"));
    assert!(refer
        .headers_named("Supported")
        .any(|v| v.contains("norefersub")));
    h.send(&answer(&refer, 202, &[("Refer-Sub", "false")], None));
    assert!(h.next_request("BYE", secs(1)).is_some());
    assert_eq!(
        transfer_results(&h.take_outputs()),
        vec![("refer", "success")]
    );
}
