//! SIP dialogs (RFC 3261 §12): identity, CSeq order, route set and remote target.
//!
//! ```text
//!   INVITE received ──1xx with To-tag──> Early ──2xx sent──> Confirmed ──BYE──> Terminated
//!                   └──────────────2xx sent──────────────────┘
//! ```
//! A dialog is plain data. voxgate is the UAS of the dialogs calls arrive on, built by
//! [`Dialog::new_uas`] from the INVITE (§12.1.1) and its own tag, and the UAC of the dialogs it
//! opens itself (a bridged transfer's agent leg), built by [`Dialog::new_uac`] from its INVITE and
//! the 2xx (§12.1.2). In-dialog requests
//! go through [`Dialog::handle_request`] (CSeq order, target refresh); requests voxgate sends are
//! laid out by [`Dialog::next_request`] (§12.2.1.1), to which the transport layer adds its Via.

/// The identity of a dialog (§12): Call-ID plus both tags, seen from voxgate's side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// The Call-ID header value.
    pub call_id: String,
    /// voxgate's tag (the To-tag of an incoming INVITE's responses).
    pub local_tag: String,
    /// The peer's tag (the From-tag of the incoming INVITE).
    pub remote_tag: String,
}

/// Where a dialog is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// A provisional response with a To-tag was sent; no 2xx yet.
    Early,
    /// The 2xx was sent.
    Confirmed,
    /// BYE sent or received, or the INVITE failed.
    Terminated,
}

/// What the INVITE that creates a UAS dialog said, in header-value form.
#[derive(Debug, Clone)]
pub struct UasSetup {
    /// Call-ID.
    pub call_id: String,
    /// The INVITE's From header value (the remote URI with its tag).
    pub from: String,
    /// The From tag.
    pub remote_tag: String,
    /// The INVITE's To header value, without a tag.
    pub to: String,
    /// voxgate's new tag.
    pub local_tag: String,
    /// The INVITE's CSeq number.
    pub remote_seq: u32,
    /// The INVITE's Contact URI (remote target).
    pub remote_target: String,
    /// The INVITE's Record-Route values, in order (the UAS keeps them in order, §12.1.1).
    pub record_route: Vec<String>,
    /// voxgate's own Contact URI for this dialog.
    pub local_contact: String,
}

/// What the INVITE voxgate sent and the 2xx that answered it said, for a UAC dialog (§12.1.2).
#[derive(Debug, Clone)]
pub struct UacSetup {
    /// Call-ID.
    pub call_id: String,
    /// The INVITE's From header value (voxgate's URI with its tag).
    pub from: String,
    /// voxgate's tag (the From tag).
    pub local_tag: String,
    /// The 2xx's To header value (the remote URI with the peer's tag).
    pub to: String,
    /// The peer's tag (the 2xx's To tag; empty when it sent none).
    pub remote_tag: String,
    /// The INVITE's CSeq number (voxgate's next request takes the one after it).
    pub local_seq: u32,
    /// The 2xx's Contact URI (remote target).
    pub remote_target: String,
    /// The 2xx's Record-Route values, in the order received (reversed into the route set).
    pub record_route: Vec<String>,
    /// voxgate's own Contact URI for this dialog.
    pub local_contact: String,
}

/// Why an in-dialog request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// The request's CSeq is not above the last one seen (§12.2.2: answer 500).
    #[error("CSeq {got} is not above {last}")]
    CSeqOutOfOrder {
        /// The CSeq received.
        got: u32,
        /// The highest CSeq seen before.
        last: u32,
    },
    /// The dialog has ended (answer 481).
    #[error("dialog terminated")]
    Terminated,
}

impl DialogError {
    /// The SIP status to answer the refused request with.
    pub fn status(&self) -> u16 {
        match self {
            DialogError::CSeqOutOfOrder { .. } => 500,
            DialogError::Terminated => 481,
        }
    }
}

/// A request to send inside a dialog, before the transport adds its Via.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRequest {
    /// The method name.
    pub method: String,
    /// The Request-URI (the remote target, §12.2.1.1 loose routing).
    pub request_uri: String,
    /// Headers in order: Route…, From, To, Call-ID, CSeq, Contact (target refreshes), Max-Forwards.
    pub headers: Vec<(&'static str, String)>,
    /// The CSeq number used.
    pub cseq: u32,
}

/// One dialog.
#[derive(Debug, Clone)]
pub struct Dialog {
    id: DialogId,
    state: DialogState,
    local_uri: String,
    remote_uri: String,
    local_seq: u32,
    /// The highest CSeq the peer used (none yet in a UAC dialog, §12.1.2).
    remote_seq: Option<u32>,
    remote_target: String,
    route_set: Vec<String>,
    local_contact: String,
}

impl Dialog {
    /// Builds the UAS side of a dialog from an INVITE (§12.1.1), in the Early state.
    /// `initial_local_seq` is the CSeq voxgate starts its own requests from (random, < 2^31).
    pub fn new_uas(setup: UasSetup, initial_local_seq: u32) -> Dialog {
        let local_uri = format!("{};tag={}", setup.to, setup.local_tag);
        Dialog {
            id: DialogId {
                call_id: setup.call_id,
                local_tag: setup.local_tag,
                remote_tag: setup.remote_tag,
            },
            state: DialogState::Early,
            local_uri,
            remote_uri: setup.from,
            local_seq: initial_local_seq,
            remote_seq: Some(setup.remote_seq),
            remote_target: setup.remote_target,
            route_set: setup.record_route,
            local_contact: setup.local_contact,
        }
    }

    /// Builds the UAC side of a dialog from the INVITE voxgate sent and its 2xx (§12.1.2), in
    /// the Confirmed state: the route set is the 2xx's Record-Route reversed, the remote target
    /// its Contact, and the remote CSeq is unset until the peer sends a request.
    pub fn new_uac(setup: UacSetup) -> Dialog {
        let mut route_set = setup.record_route;
        route_set.reverse();
        Dialog {
            id: DialogId {
                call_id: setup.call_id,
                local_tag: setup.local_tag,
                remote_tag: setup.remote_tag,
            },
            state: DialogState::Confirmed,
            local_uri: setup.from,
            remote_uri: setup.to,
            local_seq: setup.local_seq,
            remote_seq: None,
            remote_target: setup.remote_target,
            route_set,
            local_contact: setup.local_contact,
        }
    }

    /// The dialog's identity.
    pub fn id(&self) -> &DialogId {
        &self.id
    }

    /// The current state.
    pub fn state(&self) -> DialogState {
        self.state
    }

    /// The remote target requests are sent to.
    pub fn remote_target(&self) -> &str {
        &self.remote_target
    }

    /// voxgate's Contact URI for this dialog (with `sip.public_address` applied).
    pub fn local_contact(&self) -> &str {
        &self.local_contact
    }

    /// The route set (Route headers of requests voxgate sends).
    pub fn route_set(&self) -> &[String] {
        &self.route_set
    }

    /// The To header value voxgate puts in its responses (with its tag).
    pub fn local_uri(&self) -> &str {
        &self.local_uri
    }

    /// The peer's From (UAS) or To (UAC) header value, with its tag.
    pub fn remote_uri(&self) -> &str {
        &self.remote_uri
    }

    /// Marks the dialog confirmed (the 2xx to the INVITE was sent).
    pub fn confirm(&mut self) {
        if self.state == DialogState::Early {
            self.state = DialogState::Confirmed;
        }
    }

    /// Marks the dialog terminated (BYE sent or received, or the INVITE failed).
    pub fn terminate(&mut self) {
        self.state = DialogState::Terminated;
    }

    /// Checks an in-dialog request (§12.2.2) and applies a target refresh.
    ///
    /// ACK and CANCEL carry the INVITE's CSeq and are not ordered; every other request must carry a
    /// CSeq above the last one. A re-INVITE or UPDATE with a Contact replaces the remote target.
    pub fn handle_request(
        &mut self,
        method: &str,
        cseq: u32,
        contact: Option<&str>,
    ) -> Result<(), DialogError> {
        if self.state == DialogState::Terminated && !method.eq_ignore_ascii_case("ACK") {
            return Err(DialogError::Terminated);
        }
        if method.eq_ignore_ascii_case("ACK") || method.eq_ignore_ascii_case("CANCEL") {
            return Ok(());
        }
        if let Some(last) = self.remote_seq.filter(|last| cseq <= *last) {
            return Err(DialogError::CSeqOutOfOrder { got: cseq, last });
        }
        self.remote_seq = Some(cseq);
        let is_target_refresh =
            method.eq_ignore_ascii_case("INVITE") || method.eq_ignore_ascii_case("UPDATE");
        if let (true, Some(contact)) = (is_target_refresh, contact) {
            self.remote_target = contact.to_owned();
        }
        Ok(())
    }

    /// Lays out a new request inside the dialog (§12.2.1.1), taking the next local CSeq.
    ///
    /// The Request-URI is the remote target and the route set becomes Route headers (loose
    /// routing, RFC 3261 §16.12.1.1; strict routers predate RFC 3261 and are not supported).
    pub fn next_request(&mut self, method: &str) -> OutgoingRequest {
        self.local_seq = self.local_seq.wrapping_add(1) & 0x7fff_ffff;
        self.request_with_cseq(method, self.local_seq, method)
    }

    /// Lays out the ACK for a 2xx to an INVITE voxgate sent with CSeq `invite_cseq` (§13.2.2.4).
    pub fn ack_for(&self, invite_cseq: u32) -> OutgoingRequest {
        self.request_with_cseq("ACK", invite_cseq, "ACK")
    }

    fn request_with_cseq(&self, method: &str, cseq: u32, cseq_method: &str) -> OutgoingRequest {
        let mut headers: Vec<(&'static str, String)> = self
            .route_set
            .iter()
            .map(|route| ("Route", route.clone()))
            .collect();
        headers.push(("From", self.local_uri.clone()));
        headers.push(("To", self.remote_uri.clone()));
        headers.push(("Call-ID", self.id.call_id.clone()));
        headers.push(("CSeq", format!("{cseq} {cseq_method}")));
        // Target refreshes (RFC 3261 §12.2.1.1, RFC 3311) and REFER, whose implicit
        // subscription's NOTIFYs come to the Contact (RFC 3515 §2.4.1, RFC 6665 §4.1.1).
        if ["INVITE", "UPDATE", "REFER"]
            .iter()
            .any(|m| method.eq_ignore_ascii_case(m))
        {
            headers.push(("Contact", format!("<{}>", self.local_contact)));
        }
        headers.push(("Max-Forwards", "70".to_owned()));
        OutgoingRequest {
            method: method.to_owned(),
            request_uri: self.remote_target.clone(),
            headers,
            cseq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialog() -> Dialog {
        Dialog::new_uas(
            UasSetup {
                call_id: "abc@pbx".into(),
                from: "\"Alice\" <sip:alice@pbx.example.com>;tag=a1".into(),
                remote_tag: "a1".into(),
                to: "<sip:echo@voxgate.example.com>".into(),
                local_tag: "v1".into(),
                remote_seq: 102,
                remote_target: "sip:alice@192.0.2.10:5060".into(),
                record_route: vec![
                    "<sip:p1.example.com;lr>".into(),
                    "<sip:p2.example.com;lr>".into(),
                ],
                local_contact: "sip:voxgate@198.51.100.1:5060".into(),
            },
            1000,
        )
    }

    #[test]
    fn bye_goes_to_remote_target_through_route_set_in_order() {
        let mut dialog = dialog();
        dialog.confirm();
        let bye = dialog.next_request("BYE");
        assert_eq!(bye.request_uri, "sip:alice@192.0.2.10:5060");
        assert_eq!(
            bye.headers[0],
            ("Route", "<sip:p1.example.com;lr>".to_owned())
        );
        assert_eq!(
            bye.headers[1],
            ("Route", "<sip:p2.example.com;lr>".to_owned())
        );
        assert!(bye
            .headers
            .contains(&("From", "<sip:echo@voxgate.example.com>;tag=v1".into())));
        assert!(bye
            .headers
            .contains(&("To", "\"Alice\" <sip:alice@pbx.example.com>;tag=a1".into())));
        assert!(bye.headers.contains(&("CSeq", "1001 BYE".into())));
        assert!(!bye.headers.iter().any(|(name, _)| *name == "Contact"));
    }

    #[test]
    fn local_cseq_increases_per_request_and_ack_reuses_invite_cseq() {
        let mut dialog = dialog();
        let reinvite = dialog.next_request("INVITE");
        let update = dialog.next_request("UPDATE");
        assert_eq!((reinvite.cseq, update.cseq), (1001, 1002));
        assert!(reinvite.headers.iter().any(|(name, _)| *name == "Contact"));
        let ack = dialog.ack_for(reinvite.cseq);
        assert!(ack.headers.contains(&("CSeq", "1001 ACK".into())));
    }

    #[test]
    fn rejects_in_dialog_request_with_old_cseq_with_500() {
        let mut dialog = dialog();
        assert_eq!(dialog.handle_request("INFO", 103, None), Ok(()));
        let error = dialog.handle_request("INFO", 103, None).unwrap_err();
        assert_eq!(
            error,
            DialogError::CSeqOutOfOrder {
                got: 103,
                last: 103
            }
        );
        assert_eq!(error.status(), 500);
        assert_eq!(dialog.handle_request("ACK", 102, None), Ok(()));
    }

    #[test]
    fn reinvite_contact_refreshes_remote_target_but_info_does_not() {
        let mut dialog = dialog();
        dialog
            .handle_request("INFO", 103, Some("sip:x@192.0.2.99"))
            .unwrap();
        assert_eq!(dialog.remote_target(), "sip:alice@192.0.2.10:5060");
        dialog
            .handle_request("INVITE", 104, Some("sip:alice@192.0.2.20:5070"))
            .unwrap();
        assert_eq!(dialog.remote_target(), "sip:alice@192.0.2.20:5070");
    }

    #[test]
    fn terminated_dialog_answers_481() {
        let mut dialog = dialog();
        dialog.confirm();
        dialog.terminate();
        assert_eq!(
            dialog.handle_request("BYE", 200, None),
            Err(DialogError::Terminated)
        );
        assert_eq!(DialogError::Terminated.status(), 481);
    }

    #[test]
    fn local_cseq_stays_below_2_pow_31() {
        let mut dialog = Dialog::new_uas(self::dialog_setup(), 0x7fff_ffff);
        assert_eq!(dialog.next_request("BYE").cseq, 0);
    }

    #[test]
    fn uac_dialog_reverses_record_route_and_targets_the_2xx_contact() {
        let mut dialog = Dialog::new_uac(UacSetup {
            call_id: "leg@voxgate".into(),
            from: "\"Alice\" <sip:alice@pbx.example.com>;tag=v9".into(),
            local_tag: "v9".into(),
            to: "<sip:agent@pbx.example.com>;tag=g1".into(),
            remote_tag: "g1".into(),
            local_seq: 7,
            remote_target: "sip:agent@192.0.2.50:5070".into(),
            record_route: vec![
                "<sip:p2.example.com;lr>".into(),
                "<sip:p1.example.com;lr>".into(),
            ],
            local_contact: "sip:voxgate@198.51.100.1:5060".into(),
        });
        assert_eq!(dialog.state(), DialogState::Confirmed);
        assert_eq!(
            (
                dialog.id().local_tag.as_str(),
                dialog.id().remote_tag.as_str()
            ),
            ("v9", "g1")
        );
        let bye = dialog.next_request("BYE");
        assert_eq!(bye.request_uri, "sip:agent@192.0.2.50:5070");
        assert_eq!(bye.headers[0], ("Route", "<sip:p1.example.com;lr>".into()));
        assert_eq!(bye.headers[1], ("Route", "<sip:p2.example.com;lr>".into()));
        assert!(bye.headers.contains(&(
            "From",
            "\"Alice\" <sip:alice@pbx.example.com>;tag=v9".into()
        )));
        assert!(bye
            .headers
            .contains(&("To", "<sip:agent@pbx.example.com>;tag=g1".into())));
        assert_eq!(bye.cseq, 8);
        // §12.1.2: the remote CSeq is empty, so the peer's first request is in order whatever
        // its number; later ones must go up.
        assert_eq!(dialog.handle_request("BYE", 1, None), Ok(()));
        assert!(dialog.handle_request("INFO", 1, None).is_err());
    }

    fn dialog_setup() -> UasSetup {
        UasSetup {
            call_id: "c".into(),
            from: "<sip:a@b>;tag=1".into(),
            remote_tag: "1".into(),
            to: "<sip:c@d>".into(),
            local_tag: "2".into(),
            remote_seq: 1,
            remote_target: "sip:a@b".into(),
            record_route: vec![],
            local_contact: "sip:v@e".into(),
        }
    }
}
