//! Hand-offs to people, sans-IO: what the caller's side asks for (the model's `transfer_call`
//! tool, or a DTMF rule) and how a transfer ended.
//!
//! The [`Bridge`](super::bridge::Bridge) turns a `transfer_call` (after the hand-off sentence
//! has played) or a DTMF rule into a [`TransferRequest`]; `io/` carries it to the core, where
//! the [`Call`] runs it: REFER (RFC 3515) with NOTIFY tracking, or a bridged
//! call to the destination (B2BUA), or REFER falling back to the bridge. A failure goes back
//! to the model as a typed tool output ([`TransferOutcome::tool_output`]).

use std::time::Instant;

use serde_json::json;

use super::{Call, CallResult, Ctx, HasBody, MediaCommand, Output, SentAuth, State};
use crate::config::transfer::{TransferDestination, TransferMethod};
use crate::sip::endpoint::{ClientTxId, ServerTxId};
use crate::sip::message::{self, Request, Response};
use crate::sip::refer::{self, NotifyInfo, ReferClient, ReferEvent, ReferFailure};

/// The tool the model calls to hand the caller to a person.
pub const TRANSFER_TOOL: &str = "transfer_call";

/// A transfer asked for by the model or by a DTMF rule.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferRequest {
    /// The tool call owed an output (none: a DTMF rule asked; nothing to answer).
    pub tool_call_id: Option<String>,
    /// The destination's name (from the agent's `transfers`).
    pub destination: String,
    /// Why, in the model's words (for logs).
    pub reason: String,
    /// What the person taking over should know (REFER / INVITE header).
    pub summary: Option<String>,
}

/// How a transfer ended (also the `result` label of `voxgate_transfers_total`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    /// The caller is with the destination (final 2xx sipfrag, 202 without subscription, or
    /// the bridged agent answered).
    Succeeded,
    /// The peer refused or the destination failed, with the SIP status seen.
    Failed {
        /// The SIP status (REFER response, sipfrag or the agent leg's final response).
        sip_status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// Nothing came back in time.
    TimedOut,
    /// The caller hung up before the transfer finished.
    Abandoned,
    /// The PBX took the caller (202, then the caller's audio stopped on voxgate's leg) but
    /// never said how the transfer ended.
    HandedOver,
}

impl TransferOutcome {
    /// Every outcome label a REFER attempt can be counted with.
    pub const REFER_RESULTS: [&'static str; 5] =
        ["success", "failed", "timeout", "abandoned", "handed_over"];
    /// Every outcome label a bridged attempt can be counted with (voxgate keeps the caller
    /// throughout, so it is never handed over).
    pub const BRIDGE_RESULTS: [&'static str; 4] = ["success", "failed", "timeout", "abandoned"];

    /// The outcome labels an attempt by `method` (`refer`, `bridge`) can be counted with.
    pub fn results_of(method: &str) -> &'static [&'static str] {
        if method == "refer" {
            &TransferOutcome::REFER_RESULTS
        } else {
            &TransferOutcome::BRIDGE_RESULTS
        }
    }

    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            TransferOutcome::Succeeded => "success",
            TransferOutcome::Failed { .. } => "failed",
            TransferOutcome::TimedOut => "timeout",
            TransferOutcome::Abandoned => "abandoned",
            TransferOutcome::HandedOver => "handed_over",
        }
    }

    /// The tool output the model gets for this outcome (JSON text), e.g.
    /// `{"status":"failed","sip_status":603,"reason":"Declined"}`.
    pub fn tool_output(&self, destination: &str) -> String {
        match self {
            TransferOutcome::Succeeded | TransferOutcome::HandedOver => {
                json!({"status": "transferred", "destination": destination})
            }
            TransferOutcome::Failed { sip_status, reason } => json!({
                "status": "failed", "sip_status": sip_status, "reason": reason,
                "destination": destination,
            }),
            TransferOutcome::TimedOut => json!({
                "status": "failed", "reason": "no answer from the transfer destination in time",
                "destination": destination,
            }),
            TransferOutcome::Abandoned => {
                json!({"status": "abandoned", "destination": destination})
            }
        }
        .to_string()
    }
}

/// How the bridged call to a transfer destination went (B2BUA, [`super::agent_leg`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeResult {
    /// The destination answered and the two legs are joined (the speech session is closed).
    Answered,
    /// The destination refused (busy, declined, not found …) or could not be reached.
    Failed {
        /// The final SIP status (408 when nothing answered at all).
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// The destination rang for longer than the transfer timeout (voxgate CANCELled).
    TimedOut,
}

impl BridgeResult {
    /// A failure with `status` and its `reason` phrase.
    pub fn failed(status: u16, reason: &str) -> BridgeResult {
        BridgeResult::Failed {
            status,
            reason: reason.to_owned(),
        }
    }
}

/// The transfer under way on a call.
pub(super) struct ActiveTransfer {
    request: TransferRequest,
    destination: TransferDestination,
    /// The destination's SIP URI.
    target: String,
    /// When this attempt (REFER or bridge) started.
    started: Instant,
    stage: Stage,
}

enum Stage {
    /// REFER sent (`tx`: its current transaction, a new one after each 401/407).
    Referring {
        client: ReferClient,
        tx: ClientTxId,
        /// The REFER's own headers, for sending it again with credentials.
        headers: Vec<(&'static str, String)>,
        /// The PBX accepted it (202) and the caller's audio stopped since: the caller is gone.
        handed_over: bool,
    },
    /// Calling the destination ourselves (B2BUA, [`super::agent_leg`]).
    Bridging,
    /// The destination answered; the legs are joined.
    Bridged,
}

impl ActiveTransfer {
    fn method_label(&self) -> &'static str {
        match self.stage {
            Stage::Referring { .. } => "refer",
            Stage::Bridging | Stage::Bridged => "bridge",
        }
    }
}

impl Call {
    /// The agent asks to hand the caller to a person.
    pub fn handle_transfer_request(&mut self, ctx: &mut Ctx<'_>, request: TransferRequest) {
        let _entered = self.span.clone().entered();
        let refusal = if self.state != State::Confirmed {
            Some((481, "the call is not established".to_owned()))
        } else if self.transfer.is_some() {
            Some((491, "a transfer is already in progress".to_owned()))
        } else {
            None
        };
        let destination = self
            .agent
            .transfers
            .iter()
            .find(|d| d.name == request.destination)
            .cloned();
        let (Some(destination), None) = (destination, &refusal) else {
            let (status, reason) =
                refusal.unwrap_or((404, "no such transfer destination".to_owned()));
            tracing::warn!(destination = %request.destination, status, "transfer refused: {reason}");
            let output = TransferOutcome::Failed {
                sip_status: status,
                reason,
            }
            .tool_output(&request.destination);
            self.transfer_failed(ctx, request, output);
            return;
        };
        let target = destination.target_uri(&self.transfer_domain());
        tracing::info!(
            destination = %destination.name,
            method = destination.method.as_str(),
            %target,
            reason = %request.reason,
            "transferring the caller"
        );
        let method = destination.method;
        self.transfer = Some(ActiveTransfer {
            request,
            destination,
            target,
            started: ctx.now,
            stage: Stage::Bridging,
        });
        match method {
            TransferMethod::Refer | TransferMethod::ReferThenBridge => self.send_refer(ctx, 0),
            TransferMethod::Bridge => self.bridge_transfer(ctx),
        }
    }

    /// Sends (or, `retries` > 0, sends again with credentials) the REFER.
    fn send_refer(&mut self, ctx: &mut Ctx<'_>, retries: u8) {
        let Some(transfer) = self.transfer.as_ref() else {
            return;
        };
        let headers = match &transfer.stage {
            Stage::Referring { headers, .. } => headers.clone(),
            _ => {
                let mut headers = vec![
                    ("Refer-To", refer::refer_to_value(&transfer.target)),
                    (
                        "Referred-By",
                        format!(
                            "<{}>",
                            message::uri_of(self.dialog.local_uri()).unwrap_or_default()
                        ),
                    ),
                ];
                if ctx.config.transfer.norefersub && self.peer_supports_norefersub {
                    headers.push(("Refer-Sub", "false".to_owned()));
                    headers.push(("Supported", "norefersub".to_owned()));
                }
                if ctx.config.transfer.summary_header {
                    if let Some(summary) = &transfer.request.summary {
                        headers.push(("X-Voxgate-Summary", refer::header_text(summary, 300)));
                    }
                }
                headers
            }
        };
        let norefersub = headers.iter().any(|(name, _)| *name == "Refer-Sub");
        let mut refer = self.dialog.next_request("REFER");
        refer.headers.extend(headers.iter().cloned());
        let tx = self.send_in_dialog(ctx, refer, None, retries);
        let timeout = ctx.config.transfer.timeout();
        if let Some(transfer) = self.transfer.as_mut() {
            match &mut transfer.stage {
                Stage::Referring { tx: current, .. } => *current = tx,
                stage => {
                    *stage = Stage::Referring {
                        client: ReferClient::new(ctx.now, timeout, norefersub),
                        tx,
                        headers,
                        handed_over: false,
                    };
                    transfer.started = ctx.now;
                }
            }
        }
        tracing::debug!(retries, "REFER sent");
    }

    fn refer_tx(&self) -> Option<ClientTxId> {
        match self.transfer.as_ref()?.stage {
            Stage::Referring { tx, .. } => Some(tx),
            _ => None,
        }
    }

    /// A final response to a REFER; false when `tx` is not this call's REFER.
    pub(super) fn handle_refer_response(
        &mut self,
        ctx: &mut Ctx<'_>,
        tx: ClientTxId,
        response: &Response,
        sent: &SentAuth,
    ) -> bool {
        if self.refer_tx() != Some(tx) {
            return false;
        }
        if let Some(retries) = self.answer_challenge("REFER", response, sent) {
            self.send_refer(ctx, retries);
            return true;
        }
        let status = response.status();
        let reason = response.reason().to_owned();
        let refer_sub = response.header("Refer-Sub").map(str::to_owned);
        let events = match self.transfer.as_mut().map(|t| &mut t.stage) {
            Some(Stage::Referring { client, .. }) => {
                client.handle_response(ctx.now, status, &reason, refer_sub.as_deref())
            }
            _ => Vec::new(),
        };
        self.refer_events(ctx, events);
        true
    }

    /// The REFER's transaction got no answer (Timer F); false when `tx` is not the REFER.
    pub(super) fn handle_refer_timeout(&mut self, ctx: &mut Ctx<'_>, tx: ClientTxId) -> bool {
        if self.refer_tx() != Some(tx) {
            return false;
        }
        let events = match self.transfer.as_mut().map(|t| &mut t.stage) {
            Some(Stage::Referring { client, .. }) => client.handle_no_response(ctx.now),
            _ => Vec::new(),
        };
        self.refer_events(ctx, events);
        true
    }

    /// A NOTIFY in the call's dialog: the REFER's implicit subscription (RFC 3515 §2.4.4).
    pub(super) fn handle_notify(&mut self, ctx: &mut Ctx<'_>, tx: ServerTxId, request: &Request) {
        let notify = NotifyInfo {
            event: request.header("Event").or_else(|| request.header("o")),
            subscription_state: request.header("Subscription-State"),
            content_type: request.content_type_value(),
            body: request.body(),
        };
        let (status, events) = match self.transfer.as_mut().map(|t| &mut t.stage) {
            Some(Stage::Referring { client, .. }) => client.handle_notify(ctx.now, &notify),
            // No subscription of ours in this dialog (RFC 6665 §4.1.3).
            _ => (481, Vec::new()),
        };
        let reason = match status {
            481 => Some("Subscription Does Not Exist"),
            _ => None,
        };
        self.reply(ctx, tx, request, status, reason, &[], None);
        self.refer_events(ctx, events);
    }

    /// Timers of the transfer (the REFER's deadlines).
    pub(super) fn transfer_poll_timeout(&self) -> Option<Instant> {
        match &self.transfer.as_ref()?.stage {
            Stage::Referring { client, .. } => client.poll_timeout(),
            _ => None,
        }
    }

    pub(super) fn transfer_handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let events = match self.transfer.as_mut().map(|t| &mut t.stage) {
            Some(Stage::Referring { client, .. })
                if client.poll_timeout().is_some_and(|at| ctx.now >= at) =>
            {
                client.handle_timeout(ctx.now)
            }
            _ => return,
        };
        self.refer_events(ctx, events);
    }

    fn refer_events(&mut self, ctx: &mut Ctx<'_>, events: Vec<ReferEvent>) {
        for event in events {
            let Some(transfer) = self.transfer.as_mut() else {
                return;
            };
            let destination = transfer.destination.name.clone();
            match event {
                ReferEvent::Accepted { subscription } => {
                    tracing::info!(
                        %destination,
                        subscription,
                        "REFER accepted by the PBX (202); waiting for the transfer's outcome"
                    );
                    if !self.caller_media_flowing {
                        self.caller_handed_over();
                    }
                }
                ReferEvent::Progress { status, reason } => {
                    tracing::info!(%destination, status, "transfer progress: {status} {reason}");
                }
                ReferEvent::Succeeded { status } => {
                    tracing::info!(
                        %destination,
                        status,
                        statuses = ?self.refer_statuses(),
                        "transfer succeeded: the caller is with {destination}; leaving the call"
                    );
                    self.finish_transfer(ctx, TransferOutcome::Succeeded);
                    self.hang_up(ctx, "transferred", CallResult::Transferred);
                }
                ReferEvent::Failed(failure) => self.refer_failed(ctx, failure),
                ReferEvent::BadNotify { why } => {
                    tracing::warn!(%destination, "NOTIFY for the transfer ignored: {why}");
                }
            }
        }
    }

    fn refer_statuses(&self) -> Vec<u16> {
        match &self.transfer.as_ref().map(|t| &t.stage) {
            Some(Stage::Referring { client, .. }) => client.statuses_seen().to_vec(),
            _ => Vec::new(),
        }
    }

    fn refer_failed(&mut self, ctx: &mut Ctx<'_>, failure: ReferFailure) {
        let Some(transfer) = self.transfer.as_ref() else {
            return;
        };
        let destination = transfer.destination.name.clone();
        let handed_over = matches!(
            transfer.stage,
            Stage::Referring {
                handed_over: true,
                ..
            }
        );
        let statuses = self.refer_statuses();
        let outcome = match &failure {
            ReferFailure::NoAccept | ReferFailure::NoFinalNotify | ReferFailure::NoResponse => {
                TransferOutcome::TimedOut
            }
            other => TransferOutcome::Failed {
                sip_status: other.sip_status().unwrap_or(500),
                reason: match other {
                    ReferFailure::Rejected { reason, .. }
                    | ReferFailure::Sipfrag { reason, .. } => reason.clone(),
                    other => other.describe(),
                },
            },
        };
        if handed_over {
            // The PBX has the caller: whatever it does now, voxgate's leg is over (Asterisk
            // would BYE about a minute after the REFER otherwise).
            tracing::warn!(
                %destination,
                ?statuses,
                "{}; the PBX had already taken the caller, leaving the call",
                failure.describe()
            );
            let outcome = match outcome {
                TransferOutcome::TimedOut => TransferOutcome::HandedOver,
                other => other,
            };
            self.finish_transfer(ctx, outcome);
            self.hang_up(ctx, "transfer finished by the PBX", CallResult::Transferred);
            return;
        }
        tracing::warn!(%destination, ?statuses, "{}", failure.describe());
        let fallback = transfer.destination.method == TransferMethod::ReferThenBridge;
        self.record_attempt(ctx, &outcome);
        if fallback {
            tracing::info!(%destination, "falling back to a bridged transfer");
            if let Some(transfer) = self.transfer.as_mut() {
                transfer.started = ctx.now;
                transfer.stage = Stage::Bridging;
            }
            self.bridge_transfer(ctx);
            return;
        }
        self.fail_back_to_agent(ctx, outcome);
    }

    /// Starts the bridged call to the destination.
    fn bridge_transfer(&mut self, ctx: &mut Ctx<'_>) {
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        transfer.stage = Stage::Bridging;
        let target = transfer.target.clone();
        let mut headers = Vec::new();
        if ctx.config.transfer.summary_header {
            if let Some(summary) = &transfer.request.summary {
                headers.push(("X-Voxgate-Summary", refer::header_text(summary, 300)));
            }
        }
        if let Some(announce) = &transfer.destination.announce {
            let text = match &transfer.request.summary {
                Some(summary) => format!("{announce}: {summary}"),
                None => announce.clone(),
            };
            headers.push(("X-Voxgate-Announce", refer::header_text(&text, 500)));
        }
        self.start_bridge(ctx, &target, headers);
    }

    /// The bridged call to the destination went `result`.
    pub(super) fn bridge_result(&mut self, ctx: &mut Ctx<'_>, result: BridgeResult) {
        let _entered = self.span.clone().entered();
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        let destination = transfer.destination.name.clone();
        let outcome = match result {
            BridgeResult::Answered => {
                tracing::info!(%destination, "the destination answered: caller and agent are bridged");
                self.record_attempt(ctx, &TransferOutcome::Succeeded);
                if let Some(transfer) = self.transfer.as_mut() {
                    transfer.stage = Stage::Bridged;
                }
                return;
            }
            BridgeResult::Failed { status, reason } => {
                tracing::warn!(%destination, status, "bridged transfer failed: {status} {reason}");
                TransferOutcome::Failed {
                    sip_status: status,
                    reason,
                }
            }
            BridgeResult::TimedOut => {
                tracing::warn!(%destination, "bridged transfer: no answer in time");
                TransferOutcome::TimedOut
            }
        };
        self.record_attempt(ctx, &outcome);
        self.fail_back_to_agent(ctx, outcome);
    }

    /// The caller stays with the assistant, which hears how the transfer failed.
    fn fail_back_to_agent(&mut self, ctx: &mut Ctx<'_>, outcome: TransferOutcome) {
        let Some(transfer) = self.transfer.take() else {
            return;
        };
        let output = outcome.tool_output(&transfer.destination.name);
        self.transfer_failed(ctx, transfer.request, output);
    }

    /// Counts the current attempt's outcome.
    fn record_attempt(&mut self, ctx: &mut Ctx<'_>, outcome: &TransferOutcome) {
        let Some(transfer) = self.transfer.as_ref() else {
            return;
        };
        let method = transfer.method_label();
        // The metrics export these series at 0 from start-up (`TransferMetrics::prime`).
        debug_assert!(
            TransferOutcome::results_of(method).contains(&outcome.as_str()),
            "{method} attempts are never {}",
            outcome.as_str()
        );
        ctx.outputs.push_back(Output::TransferFinished {
            destination: transfer.destination.name.clone(),
            method,
            result: outcome.as_str(),
            duration: ctx.now.saturating_duration_since(transfer.started),
        });
    }

    /// Counts the outcome and forgets the transfer.
    fn finish_transfer(&mut self, ctx: &mut Ctx<'_>, outcome: TransferOutcome) {
        self.record_attempt(ctx, &outcome);
        self.transfer = None;
    }

    /// The call ends while a transfer is under way (the caller hung up, drain, timeout).
    pub(super) fn abandon_transfer(&mut self, ctx: &mut Ctx<'_>) {
        let Some(transfer) = self.transfer.as_ref() else {
            return;
        };
        let outcome = match transfer.stage {
            // The bridged call ran its course: already counted as a success.
            Stage::Bridged => {
                self.transfer = None;
                return;
            }
            Stage::Referring {
                handed_over: true, ..
            } => TransferOutcome::HandedOver,
            _ => TransferOutcome::Abandoned,
        };
        tracing::info!(
            destination = %transfer.destination.name,
            outcome = outcome.as_str(),
            "call ended during the transfer"
        );
        self.finish_transfer(ctx, outcome);
    }

    /// The caller's audio stopped after the PBX accepted the REFER: the PBX has the caller.
    fn caller_handed_over(&mut self) {
        if let Some(ActiveTransfer {
            stage:
                Stage::Referring {
                    client,
                    handed_over,
                    ..
                },
            destination,
            ..
        }) = self.transfer.as_mut()
        {
            if client.is_accepted() && !*handed_over {
                *handed_over = true;
                tracing::info!(
                    destination = %destination.name,
                    "the caller's audio stopped after the 202: the PBX has taken the caller"
                );
            }
        }
    }

    /// Whether the caller's RTP arrives on this leg (reported by the media task on change).
    pub fn handle_caller_media(&mut self, _ctx: &mut Ctx<'_>, flowing: bool) {
        let _entered = self.span.clone().entered();
        self.caller_media_flowing = flowing;
        if !flowing {
            self.caller_handed_over();
        }
    }

    /// The caller stays with the agent; the model hears why the transfer failed.
    fn transfer_failed(&mut self, ctx: &mut Ctx<'_>, request: TransferRequest, output: String) {
        ctx.outputs.push_back(Output::Media {
            call: self.key,
            command: MediaCommand::TransferFailed { request, output },
        });
    }

    /// The domain an extension is joined to: the trunk's, else the PBX's address from the
    /// dialog's remote target.
    fn transfer_domain(&self) -> String {
        if let Some(domain) = &self.transfer_domain {
            return domain.clone();
        }
        crate::sip::endpoint::uri_host_port(self.dialog.remote_target())
            .map(|(host, port)| {
                if port == 5060 {
                    host
                } else {
                    format!("{host}:{port}")
                }
            })
            .unwrap_or_else(|| self.flow.remote.to_string())
    }
}
