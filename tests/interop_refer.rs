//! Transfers by REFER (RFC 3515), with SIPp as the PBX and the local Realtime stand-in as the
//! model calling `transfer_call`: accepted and tracked by NOTIFY to success (voxgate leaves
//! with BYE), refused (403/501/603) and failed by NOTIFY (486) with the typed failure back to
//! the model while the call goes on, challenged with 407 and sent again with the trunk's
//! credentials, and the caller hanging up while the transfer is pending.
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::realtime::{frame_index, tagged_audio, Behaviour, RealtimeStandIn, Reply};
use common::rtp::{RtpPacket, RtpSink};
use common::sipp::{SippOutcome, TracedMessage};
use common::{Gateway, GatewayConfig, Sipp};

const WAIT: Duration = Duration::from_secs(15);
const TRANSFERS: &str = "voxgate_transfers_total";

/// The assistant with two destinations: `sales` (an extension on the trunk's domain) and
/// `support` (a URI), both by REFER.
fn gateway(standin_url: &str, trunk_extra: &str, env: Vec<(String, String)>) -> Gateway {
    let extra = format!(
        "[[agents]]\nname = \"assistant\"\nkind = \"openai\"\nmodel = \"gpt-realtime\"\n\
         voice = \"marin\"\ninstructions = \"You are a test agent.\"\n\
         greeting = \"Greet the caller.\"\n\
         [[agents.transfers]]\nname = \"sales\"\nextension = \"2001\"\n\
         description = \"The sales team\"\n\
         [[agents.transfers]]\nname = \"support\"\nuri = \"sip:support@helpdesk.example.com\"\n\
         description = \"Technical support\"\n\n\
         [realtime]\nurl = \"{standin_url}\"\nconnect_timeout_ms = 3000\n\n\
         [transfer]\ntimeout_secs = 10\n"
    );
    let mut all_env = vec![("OPENAI_API_KEY".to_owned(), "sk-test-key".to_owned())];
    all_env.extend(env);
    Gateway::start_with(GatewayConfig {
        extra,
        route_agent: "assistant".into(),
        trunk_extra: format!("domain = \"pbx.example.com\"\n{trunk_extra}"),
        env: all_env,
        ..GatewayConfig::default()
    })
}

/// The model's hand-off sentence (tag 1, 25 frames) and its `transfer_call`; after a failed
/// transfer it apologises (tag 3).
fn transferring_model(destination: &str) -> Behaviour {
    Behaviour::new()
        .greeting(
            Reply::audio(tagged_audio(25, 1))
                .transcript("Let me put you through.")
                .function_call(
                    "transfer_call",
                    serde_json::json!({
                        "destination": destination,
                        "reason": "wants a person",
                        "summary": "Ann asks\r\nfor a quote",
                    }),
                ),
        )
        .after_tool_output(Reply::audio(tagged_audio(20, 3)).transcript("Sorry, no one is free."))
}

fn frames_tagged(packets: &[RtpPacket], tag: u8) -> usize {
    packets
        .iter()
        .filter(|p| frame_index(&p.payload).is_some_and(|(t, _)| t == tag))
        .count()
}

fn refers(outcome: &SippOutcome) -> Vec<TracedMessage> {
    outcome
        .received()
        .into_iter()
        .filter(|m| m.first_line().starts_with("REFER "))
        .collect()
}

fn metric(gateway: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    gateway.metrics().get(name, labels).unwrap_or(0.0)
}

/// (1) REFER accepted, NOTIFY 100 then 200 (terminated): voxgate BYEs, the Realtime session is
/// closed, the transfer counted as a success and the call as transferred.
#[test]
fn accepted_refer_tracked_to_success_ends_voxgates_leg() {
    if common::sipp::skip_without_root("accepted_refer_tracked_to_success_ends_voxgates_leg") {
        return;
    }
    let standin = RealtimeStandIn::start(transferring_model("sales"));
    let gateway = gateway(&standin.url(), "", Vec::new());
    let sipp = Sipp::new("uac_refer_success.xml", gateway.sip_addr()).with_audio(500);
    let sink = RtpSink::bind(sipp.echo_addr());
    let outcome = sipp.run();
    let received = sink.finish();
    outcome.assert_success(); // NOTIFYs answered 200, and voxgate's BYE came
    assert_eq!(
        frames_tagged(&received, 1),
        25,
        "the hand-off sentence played in full"
    );
    let refers = refers(&outcome);
    let [refer] = refers.as_slice() else {
        panic!("expected one REFER\n{}", outcome.report());
    };
    assert_eq!(
        refer.header("Refer-To").as_deref(),
        Some("<sip:2001@pbx.example.com>")
    );
    let referred_by = refer.header("Referred-By").expect("Referred-By");
    assert!(
        referred_by.starts_with("<sip:") && !referred_by.contains("tag="),
        "{referred_by}"
    );
    assert_eq!(
        refer.header("X-Voxgate-Summary").as_deref(),
        Some("Ann asks for a quote"),
        "the summary, made safe for one header line"
    );
    assert!(refer.header("Contact").is_some());
    assert!(outcome
        .received()
        .iter()
        .any(|m| m.first_line().starts_with("BYE ")));
    assert_eq!(
        gateway.wait_metric(
            TRANSFERS,
            &[
                ("destination", "sales"),
                ("method", "refer"),
                ("result", "success")
            ],
            WAIT,
            |v| v >= 1.0
        ),
        1.0
    );
    assert_eq!(
        metric(
            &gateway,
            "voxgate_calls_total",
            &[("result", "transferred")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &gateway,
            "voxgate_tool_calls_total",
            &[("tool", "transfer_call"), ("result", "ok")]
        ),
        1.0
    );
    assert!(
        gateway
            .metrics()
            .get(
                "voxgate_transfer_duration_seconds_count",
                &[("method", "refer")]
            )
            .unwrap_or(0.0)
            >= 1.0
    );
    standin.wait_for_session(0, WAIT, "voxgate to close the session", |s| s.is_ended());
    let session = standin.session(0);
    assert!(
        session.function_outputs.is_empty(),
        "no failure was reported to the model"
    );
    standin.assert_no_violations();
}

/// (2) REFER refused with 403, 501 and 603: the model gets the typed failure as the tool's
/// output, apologises (its audio reaches the caller), and the call goes on until the caller
/// hangs up.
#[test]
fn refused_refer_returns_a_typed_failure_and_the_call_goes_on() {
    if common::sipp::skip_without_root("refused_refer_returns_a_typed_failure_and_the_call_goes_on")
    {
        return;
    }
    let standin = RealtimeStandIn::start(transferring_model("support"));
    let gateway = gateway(&standin.url(), "", Vec::new());
    for (index, (status, reason)) in [
        (403, "Forbidden"),
        (501, "Not Implemented"),
        (603, "Declined"),
    ]
    .into_iter()
    .enumerate()
    {
        // SIPp checks a response's status when it loads the scenario, before keywords.
        let template =
            std::fs::read_to_string(common::sipp::scenario_path("uac_refer_refused.xml"))
                .expect("scenario");
        let dir = tempfile::tempdir().expect("temp dir");
        let scenario = dir.path().join(format!("uac_refer_refused_{status}.xml"));
        std::fs::write(
            &scenario,
            template.replace("[refer_status]", &format!("{status} {reason}")),
        )
        .expect("write scenario");
        let sipp = Sipp::new(&scenario.display().to_string(), gateway.sip_addr())
            .with_audio(400)
            .pause_ms(2500);
        let sink = RtpSink::bind(sipp.echo_addr());
        let outcome = sipp.run();
        let received = sink.finish();
        outcome.assert_success();
        let refer = refers(&outcome).into_iter().next().expect("REFER");
        assert_eq!(
            refer.header("Refer-To").as_deref(),
            Some("<sip:support@helpdesk.example.com>")
        );
        let session = standin.wait_for_session(index, WAIT, "the transfer's failure", |s| {
            !s.function_outputs.is_empty()
        });
        let output = &session.function_outputs[0];
        assert!(output.known_call);
        let value: serde_json::Value = serde_json::from_str(&output.output).expect("JSON output");
        assert_eq!(value["status"], "failed", "{value}");
        assert_eq!(value["sip_status"], status, "{value}");
        assert_eq!(value["reason"], reason, "{value}");
        assert!(
            frames_tagged(&received, 3) > 0,
            "the model's apology after {status} reached the caller"
        );
        assert!(
            !outcome
                .received()
                .iter()
                .any(|m| m.first_line().starts_with("BYE ")),
            "voxgate did not hang up after {status}"
        );
    }
    assert_eq!(
        gateway.wait_metric(
            TRANSFERS,
            &[
                ("destination", "support"),
                ("method", "refer"),
                ("result", "failed")
            ],
            WAIT,
            |v| v >= 3.0
        ),
        3.0
    );
    standin.assert_no_violations();
}

/// (5) The PBX accepts, then reports by NOTIFY that the agent is busy (486) while the caller
/// is still on voxgate's leg: the model hears why, and the call goes on.
#[test]
fn busy_destination_reported_by_notify_goes_back_to_the_model() {
    if common::sipp::skip_without_root("busy_destination_reported_by_notify_goes_back_to_the_model")
    {
        return;
    }
    let standin = RealtimeStandIn::start(transferring_model("sales"));
    let gateway = gateway(&standin.url(), "", Vec::new());
    let sipp = Sipp::new("uac_refer_notify_failure.xml", gateway.sip_addr())
        .with_audio(400)
        .arg("-key")
        .arg("final_status")
        .arg("486 Busy Here")
        .pause_ms(2500);
    let sink = RtpSink::bind(sipp.echo_addr());
    let outcome = sipp.run();
    let received = sink.finish();
    outcome.assert_success();
    let session = standin.wait_for_session(0, WAIT, "the transfer's failure", |s| {
        !s.function_outputs.is_empty()
    });
    let value: serde_json::Value =
        serde_json::from_str(&session.function_outputs[0].output).expect("JSON output");
    assert_eq!(value["status"], "failed", "{value}");
    assert_eq!(value["sip_status"], 486, "{value}");
    assert_eq!(value["reason"], "Busy Here", "{value}");
    assert!(
        frames_tagged(&received, 3) > 0,
        "the apology reached the caller"
    );
    assert_eq!(
        gateway.wait_metric(
            TRANSFERS,
            &[
                ("destination", "sales"),
                ("method", "refer"),
                ("result", "failed")
            ],
            WAIT,
            |v| v >= 1.0
        ),
        1.0
    );
    standin.assert_no_violations();
}

/// (4) The PBX challenges the REFER with 407: voxgate sends it again (CSeq + 1) with
/// Proxy-Authorization from the trunk's credentials, and the transfer goes through.
#[test]
fn challenged_refer_is_sent_again_with_the_trunks_credentials() {
    if common::sipp::skip_without_root("challenged_refer_is_sent_again_with_the_trunks_credentials")
    {
        return;
    }
    let standin = RealtimeStandIn::start(transferring_model("sales"));
    let gateway = gateway(
        &standin.url(),
        "outbound_username = \"voxgate\"\noutbound_password_env = \"VOXGATE_TRUNK_PASSWORD\"\n",
        vec![("VOXGATE_TRUNK_PASSWORD".into(), "refer-secret".into())],
    );
    let sipp = Sipp::new("uac_refer_challenged.xml", gateway.sip_addr()).with_audio(500);
    let outcome = sipp.run();
    outcome.assert_success();
    let refers = refers(&outcome);
    let [first, again] = refers.as_slice() else {
        panic!("expected two REFERs\n{}", outcome.report());
    };
    assert!(first.header("Proxy-Authorization").is_none());
    let cseq = |m: &TracedMessage| -> u32 {
        m.header("CSeq")
            .and_then(|c| c.split_whitespace().next()?.parse().ok())
            .expect("CSeq")
    };
    assert_eq!(cseq(again), cseq(first) + 1);
    assert_eq!(again.header("Refer-To"), first.header("Refer-To"));
    assert!(again
        .header("Proxy-Authorization")
        .is_some_and(|v| v.contains("realm=\"sipp.test\"")));
    assert!(
        !gateway.log().contains("refer-secret"),
        "the password never reaches the log"
    );
    assert_eq!(
        gateway.wait_metric(
            TRANSFERS,
            &[
                ("destination", "sales"),
                ("method", "refer"),
                ("result", "success")
            ],
            WAIT,
            |v| v >= 1.0
        ),
        1.0
    );
    standin.assert_no_violations();
}

/// (6) The caller hangs up while the transfer is pending (202 and 100 Trying, no final
/// NOTIFY): the transfer counts as abandoned, the session is closed, no call is left.
#[test]
fn caller_hanging_up_during_a_transfer_cleans_everything_up() {
    if common::sipp::skip_without_root("caller_hanging_up_during_a_transfer_cleans_everything_up") {
        return;
    }
    let standin = RealtimeStandIn::start(transferring_model("sales"));
    let gateway = gateway(&standin.url(), "", Vec::new());
    let sipp = Sipp::new("uac_refer_hangup.xml", gateway.sip_addr()).with_audio(400);
    let outcome = sipp.run();
    outcome.assert_success();
    assert_eq!(
        gateway.wait_metric(
            TRANSFERS,
            &[
                ("destination", "sales"),
                ("method", "refer"),
                ("result", "abandoned")
            ],
            WAIT,
            |v| v >= 1.0
        ),
        1.0
    );
    assert_eq!(
        gateway.wait_metric("voxgate_calls_active", &[], WAIT, |v| v == 0.0),
        0.0
    );
    assert_eq!(
        gateway.wait_metric("voxgate_realtime_sessions_active", &[], WAIT, |v| v == 0.0),
        0.0
    );
    standin.wait_for_session(0, WAIT, "voxgate to close the session", |s| s.is_ended());
    assert_eq!(
        metric(&gateway, "voxgate_calls_total", &[("result", "completed")]),
        1.0
    );
    standin.assert_no_violations();
}
