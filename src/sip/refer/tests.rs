use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn t0() -> Instant {
    crate::testkit::t0()
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn notify<'a>(state: &'a str, body: &'a [u8]) -> NotifyInfo<'a> {
    NotifyInfo {
        event: Some("refer"),
        subscription_state: Some(state),
        content_type: Some("message/sipfrag;version=2.0"),
        body,
    }
}

#[test]
fn sipfrag_status_lines_are_parsed_tolerantly() {
    let ok = |body: &[u8]| parse_sipfrag(body).expect("valid");
    assert_eq!(
        ok(b"SIP/2.0 200 OK\r\n"),
        Sipfrag {
            status: 200,
            reason: "OK".into()
        }
    );
    assert_eq!(ok(b"\r\n\r\nSIP/2.0 100 Trying").status, 100);
    assert_eq!(
        ok(b"SIP/2.0 180 Ringing\nContact: <sip:a@b>\n").reason,
        "Ringing"
    );
    assert_eq!(ok(b"sip/2.0 603 Declined\r\n").status, 603);
    assert_eq!(ok(b"SIP/2.0 486").reason, "");
    assert_eq!(ok(b"SIP/2.0 503 Service \xff Unavailable").status, 503);
    assert_eq!(ok(b"SIP/2.0 486 Busy Here   \r\n").reason, "Busy Here");
    let long = format!("SIP/2.0 500 {}", "x".repeat(10_000));
    assert_eq!(ok(long.as_bytes()).reason.len(), 200);
}

#[test]
fn sipfrag_garbage_is_an_error_not_a_panic() {
    for body in [
        &b""[..],
        b"   \r\n",
        b"hello",
        b"SIP/3.0 200 OK",
        b"SIP/2.0 099 Low",
        b"SIP/2.0 700 High",
        b"SIP/2.0 20 Short",
        b"SIP/2.0 2000 Long",
        b"SIP/2.0 abc OK",
        b"INVITE sip:a@b SIP/2.0",
        b"SIP/2.0",
        b"\xff\xfe\x00",
    ] {
        assert!(
            parse_sipfrag(body).is_err(),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn subscription_state_values() {
    assert_eq!(
        parse_subscription_state("active;expires=60"),
        Some(SubscriptionState::Active { expires: Some(60) })
    );
    assert_eq!(
        parse_subscription_state(" Pending ; expires = 30"),
        Some(SubscriptionState::Pending { expires: Some(30) })
    );
    assert_eq!(
        parse_subscription_state("TERMINATED;reason=noresource"),
        Some(SubscriptionState::Terminated {
            reason: Some("noresource".into())
        })
    );
    assert_eq!(
        parse_subscription_state("terminated"),
        Some(SubscriptionState::Terminated { reason: None })
    );
    assert_eq!(parse_subscription_state("dormant"), None);
    assert_eq!(parse_subscription_state(""), None);
    assert!(is_refer_event("refer"));
    assert!(is_refer_event("Refer;id=93809824"));
    assert!(!is_refer_event("presence"));
    assert!(!is_refer_event("referral"));
}

#[test]
fn header_helpers_make_one_safe_line() {
    assert_eq!(refer_to_value("sip:2001@pbx"), "<sip:2001@pbx>");
    assert_eq!(refer_to_value("<sip:2001@pbx>"), "<sip:2001@pbx>");
    assert_eq!(
        header_text("Ann\r\nwants\t a  quote\0", 100),
        "Ann wants a quote"
    );
    assert_eq!(header_text("ééééé", 3), "ééé");
}

#[test]
fn the_asterisk_sequence_succeeds_once() {
    let now = t0();
    let mut refer = ReferClient::new(now, TIMEOUT, false);
    assert_eq!(
        refer.handle_response(now, 202, "Accepted", None),
        vec![ReferEvent::Accepted { subscription: true }]
    );
    let (status, events) =
        refer.handle_notify(now, &notify("active;expires=60", b"SIP/2.0 100 Trying\r\n"));
    assert_eq!(status, 200);
    assert_eq!(
        events,
        vec![ReferEvent::Progress {
            status: 100,
            reason: "Trying".into()
        }]
    );
    let (_, events) = refer.handle_notify(
        now,
        &notify("active;expires=60", b"SIP/2.0 180 Ringing\r\n"),
    );
    assert_eq!(events.len(), 1);
    let (_, again) = refer.handle_notify(
        now,
        &notify("active;expires=60", b"SIP/2.0 180 Ringing\r\n"),
    );
    assert!(again.is_empty(), "a duplicate 180 is one progress event");
    let (status, events) = refer.handle_notify(
        now,
        &notify("terminated;reason=noresource", b"SIP/2.0 200 OK\r\n"),
    );
    assert_eq!(status, 200);
    assert_eq!(events, vec![ReferEvent::Succeeded { status: 200 }]);
    assert!(refer.is_finished() && refer.poll_timeout().is_none());
    assert_eq!(refer.statuses_seen(), &[202, 100, 180, 180, 200]);
    // The subscription is over: a further NOTIFY is 481.
    let (status, events) = refer.handle_notify(now, &notify("terminated", b"SIP/2.0 200 OK\r\n"));
    assert_eq!((status, events.len()), (481, 0));
}

#[test]
fn a_final_sipfrag_without_terminated_finishes_and_later_notifies_get_200() {
    let now = t0();
    let mut refer = ReferClient::new(now, TIMEOUT, false);
    refer.handle_response(now, 202, "Accepted", None);
    let (_, events) = refer.handle_notify(now, &notify("active", b"SIP/2.0 200 OK"));
    assert_eq!(events, vec![ReferEvent::Succeeded { status: 200 }]);
    let (status, events) = refer.handle_notify(
        now,
        &notify("terminated;reason=noresource", b"SIP/2.0 200 OK"),
    );
    assert_eq!(status, 200);
    assert!(events.is_empty(), "the outcome is reported once");
}

#[test]
fn failures_by_response_by_sipfrag_and_by_termination() {
    let now = t0();
    let mut refer = ReferClient::new(now, TIMEOUT, false);
    assert_eq!(
        refer.handle_response(now, 603, "Declined", None),
        vec![ReferEvent::Failed(ReferFailure::Rejected {
            status: 603,
            reason: "Declined".into()
        })]
    );
    assert_eq!(
        ReferFailure::Rejected {
            status: 603,
            reason: "Declined".into()
        }
        .describe(),
        "REFER refused: 603 Declined"
    );

    let mut refer = ReferClient::new(now, TIMEOUT, false);
    refer.handle_response(now, 202, "Accepted", None);
    let (_, events) = refer.handle_notify(now, &notify("terminated", b"SIP/2.0 486 Busy Here"));
    assert_eq!(
        events,
        vec![ReferEvent::Failed(ReferFailure::Sipfrag {
            status: 486,
            reason: "Busy Here".into()
        })]
    );

    let mut refer = ReferClient::new(now, TIMEOUT, false);
    refer.handle_response(now, 202, "Accepted", None);
    let (_, events) = refer.handle_notify(now, &notify("terminated;reason=timeout", b""));
    assert_eq!(
        events,
        vec![ReferEvent::Failed(ReferFailure::TerminatedWithoutResult {
            reason: Some("timeout".into())
        })]
    );
}

#[test]
fn deadlines_before_and_after_the_202() {
    let now = t0();
    let mut refer = ReferClient::new(now, TIMEOUT, false);
    assert_eq!(refer.poll_timeout(), Some(now + TIMEOUT));
    assert!(refer
        .handle_timeout(now + Duration::from_secs(9))
        .is_empty());
    assert_eq!(
        refer.handle_timeout(now + TIMEOUT),
        vec![ReferEvent::Failed(ReferFailure::NoAccept)]
    );
    assert!(
        refer
            .handle_response(now + TIMEOUT, 202, "Accepted", None)
            .is_empty(),
        "too late"
    );

    let mut refer = ReferClient::new(now, TIMEOUT, false);
    let later = now + Duration::from_secs(5);
    refer.handle_response(later, 202, "Accepted", None);
    assert_eq!(
        refer.poll_timeout(),
        Some(later + TIMEOUT),
        "restarted at the 202"
    );
    assert_eq!(
        refer.handle_timeout(later + TIMEOUT),
        vec![ReferEvent::Failed(ReferFailure::NoFinalNotify)]
    );
    assert!(refer.is_accepted());

    let mut refer = ReferClient::new(now, TIMEOUT, false);
    assert_eq!(
        refer.handle_no_response(now),
        vec![ReferEvent::Failed(ReferFailure::NoResponse)]
    );
}

#[test]
fn refer_sub_false_means_done_at_the_202() {
    let now = t0();
    let mut refer = ReferClient::new(now, TIMEOUT, true);
    assert_eq!(
        refer.handle_response(now, 202, "Accepted", Some("false")),
        vec![
            ReferEvent::Accepted {
                subscription: false
            },
            ReferEvent::Succeeded { status: 202 }
        ]
    );
    assert!(refer.is_finished());
    // The peer ignored our Refer-Sub: false and will notify after all.
    let mut refer = ReferClient::new(now, TIMEOUT, true);
    assert_eq!(
        refer.handle_response(now, 202, "Accepted", Some("true")),
        vec![ReferEvent::Accepted { subscription: true }]
    );
    assert!(!refer.is_finished());
}

#[test]
fn a_notify_before_the_202_implies_acceptance() {
    let now = t0();
    let mut refer = ReferClient::new(now, TIMEOUT, false);
    let (status, events) = refer.handle_notify(now, &notify("active", b"SIP/2.0 100 Trying"));
    assert_eq!(status, 200);
    assert_eq!(
        events,
        vec![
            ReferEvent::Accepted { subscription: true },
            ReferEvent::Progress {
                status: 100,
                reason: "Trying".into()
            }
        ]
    );
    assert!(refer.handle_response(now, 202, "Accepted", None).is_empty());
    assert!(refer.is_accepted());
}

#[test]
fn wrong_event_wrong_type_and_bad_bodies() {
    let now = t0();
    let mut refer = ReferClient::new(now, TIMEOUT, false);
    refer.handle_response(now, 202, "Accepted", None);
    let presence = NotifyInfo {
        event: Some("presence"),
        ..notify("active", b"SIP/2.0 200 OK")
    };
    assert_eq!(refer.handle_notify(now, &presence).0, 489);
    let no_event = NotifyInfo {
        event: None,
        ..notify("active", b"SIP/2.0 200 OK")
    };
    assert_eq!(refer.handle_notify(now, &no_event).0, 489);
    let text = NotifyInfo {
        content_type: Some("text/plain"),
        ..notify("active", b"SIP/2.0 200 OK")
    };
    let (status, events) = refer.handle_notify(now, &text);
    assert_eq!(status, 200);
    assert!(matches!(events.as_slice(), [ReferEvent::BadNotify { .. }]));
    let (status, events) = refer.handle_notify(now, &notify("active", b"garbage"));
    assert_eq!(status, 200);
    assert!(matches!(events.as_slice(), [ReferEvent::BadNotify { .. }]));
    assert!(!refer.is_finished(), "bad NOTIFYs change nothing");
}

proptest! {
    #[test]
    fn nothing_on_the_wire_panics(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        state in "[a-zA-Z;= ]{0,40}",
        kind in "[a-z/;=. ]{0,30}",
        status in 0u16..1000,
    ) {
        let _ = parse_sipfrag(&body);
        let _ = parse_subscription_state(&state);
        let now = t0();
        let mut refer = ReferClient::new(now, TIMEOUT, false);
        let _ = refer.handle_response(now, status, "x", Some(&state));
        let info = NotifyInfo {
            event: Some("refer"),
            subscription_state: Some(&state),
            content_type: Some(&kind),
            body: &body,
        };
        let _ = refer.handle_notify(now, &info);
        let _ = refer.handle_timeout(now + TIMEOUT);
    }
}
