//! Keys the caller presses, with SIPp as the PBX and the local Realtime stand-in as the model:
//! RFC 4733 telephone-events played from Debian sip-tester's pcap and SIP INFO
//! (`application/dtmf-relay`) reach the model as "The caller pressed …" exactly once each, and
//! a per-agent DTMF rule transfers by REFER without the model.
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::realtime::{tagged_audio, Behaviour, RealtimeStandIn, Reply};
use common::{Gateway, GatewayConfig, Sipp};

const WAIT: Duration = Duration::from_secs(15);
/// One RFC 4733 event for key 1 (payload type 101, three end packets).
const DTMF_PCAP: &str = "/usr/share/sip-tester/dtmf_2833_1.pcap";

fn gateway(standin_url: &str, agent_extra: &str) -> Gateway {
    let extra = format!(
        "[[agents]]\nname = \"assistant\"\nkind = \"openai\"\nmodel = \"gpt-realtime\"\n\
         voice = \"marin\"\ninstructions = \"You are a test agent.\"\n\
         greeting = \"Greet the caller.\"\n\
         [[agents.transfers]]\nname = \"operator\"\nextension = \"100\"\n\
         description = \"The operator\"\n{agent_extra}\n\n\
         [realtime]\nurl = \"{standin_url}\"\nconnect_timeout_ms = 3000\n"
    );
    Gateway::start_with(GatewayConfig {
        extra,
        route_agent: "assistant".into(),
        trunk_extra: "domain = \"pbx.example.com\"\n".into(),
        env: vec![("OPENAI_API_KEY".into(), "sk-test-key".into())],
        ..GatewayConfig::default()
    })
}

fn skip(test: &str) -> bool {
    if !Path::new(DTMF_PCAP).exists() {
        eprintln!("skipping {test}: {DTMF_PCAP} missing (apt-get install sip-tester)");
        return true;
    }
    common::sipp::skip_without_root(test)
}

/// (7a, 7b) Key 1 by RFC 4733 and key 5 by INFO reach the model as user text, once each; both
/// are counted by source.
#[test]
fn rfc4733_and_info_digits_reach_the_model_once_each() {
    if skip("rfc4733_and_info_digits_reach_the_model_once_each") {
        return;
    }
    let standin =
        RealtimeStandIn::start(Behaviour::new().greeting(Reply::audio(tagged_audio(10, 1))));
    let gateway = gateway(&standin.url(), "");
    let outcome = Sipp::new("uac_dtmf.xml", gateway.sip_addr())
        .with_audio(50)
        .with_file("dtmf.pcap", Path::new(DTMF_PCAP))
        .run();
    outcome.assert_success();
    let session = standin.wait_for_session(0, WAIT, "both keys", |s| {
        s.client_events_of("conversation.item.create")
            .filter(|e| e.event["item"]["type"] == "message")
            .count()
            >= 2
    });
    let texts: Vec<String> = session
        .client_events_of("conversation.item.create")
        .filter(|e| e.event["item"]["role"] == "user")
        .filter_map(|e| {
            e.event["item"]["content"][0]["text"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        texts,
        vec!["The caller pressed 1.", "The caller pressed 5."],
        "each key once, in order"
    );
    assert_eq!(
        gateway.wait_metric(
            "voxgate_dtmf_digits_total",
            &[("source", "info")],
            WAIT,
            |v| v >= 1.0
        ),
        1.0
    );
    assert_eq!(
        gateway
            .metrics()
            .get("voxgate_dtmf_digits_total", &[("source", "rfc4733")]),
        Some(1.0),
        "three end packets, one digit"
    );
    standin.assert_no_violations();
}

/// (7c) A DTMF rule (`1` → operator) transfers by REFER without asking the model.
#[test]
fn a_dtmf_rule_transfers_without_the_model() {
    if skip("a_dtmf_rule_transfers_without_the_model") {
        return;
    }
    let standin =
        RealtimeStandIn::start(Behaviour::new().greeting(Reply::audio(tagged_audio(10, 1))));
    let gateway = gateway(
        &standin.url(),
        "[[agents.dtmf_rules]]\ndigit = \"1\"\ntransfer = \"operator\"\n",
    );
    let outcome = Sipp::new("uac_dtmf_rule.xml", gateway.sip_addr())
        .with_audio(50)
        .with_file("dtmf.pcap", Path::new(DTMF_PCAP))
        .run();
    outcome.assert_success(); // REFER answered, NOTIFYs answered, voxgate's BYE
    let refer = outcome
        .received()
        .into_iter()
        .find(|m| m.first_line().starts_with("REFER "))
        .expect("REFER");
    assert_eq!(
        refer.header("Refer-To").as_deref(),
        Some("<sip:100@pbx.example.com>")
    );
    assert_eq!(
        gateway.wait_metric(
            "voxgate_transfers_total",
            &[
                ("destination", "operator"),
                ("method", "refer"),
                ("result", "success")
            ],
            WAIT,
            |v| v >= 1.0
        ),
        1.0
    );
    let session = standin.wait_for_session(0, WAIT, "the session to close", |s| s.is_ended());
    assert_eq!(
        session
            .client_events_of("conversation.item.create")
            .filter(|e| e.event["item"]["type"] == "message")
            .count(),
        0,
        "the model was not told of the rule's key"
    );
    standin.assert_no_violations();
}
