//! Hand-offs to people, sans-IO: what the caller's side asks for (the model's `transfer_call`
//! tool, or a DTMF rule) and how a transfer ended.
//!
//! The [`Bridge`](super::bridge::Bridge) turns a `transfer_call` (after the hand-off sentence
//! has played) or a DTMF rule into a [`TransferRequest`]; `io/` carries it to the core, where
//! the [`Call`](super::Call) runs it: REFER (RFC 3515) with NOTIFY tracking, or a bridged
//! call to the destination (B2BUA), or REFER falling back to the bridge. A failure goes back
//! to the model as a typed tool output ([`TransferOutcome::tool_output`]).

use serde_json::json;

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
}

impl TransferOutcome {
    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            TransferOutcome::Succeeded => "success",
            TransferOutcome::Failed { .. } => "failed",
            TransferOutcome::TimedOut => "timeout",
            TransferOutcome::Abandoned => "abandoned",
        }
    }

    /// The tool output the model gets for this outcome (JSON text), e.g.
    /// `{"status":"failed","sip_status":603,"reason":"Declined"}`.
    pub fn tool_output(&self, destination: &str) -> String {
        match self {
            TransferOutcome::Succeeded => {
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

impl super::Call {
    /// The agent asks to hand the caller to a person.
    pub fn handle_transfer_request(&mut self, ctx: &mut super::Ctx<'_>, request: TransferRequest) {
        let _entered = self.span.clone().entered();
        let Some(destination) = self
            .agent
            .transfers
            .iter()
            .find(|d| d.name == request.destination)
            .cloned()
        else {
            tracing::warn!(destination = %request.destination, "transfer to an unknown destination");
            let output = TransferOutcome::Failed {
                sip_status: 404,
                reason: "Unknown destination".to_owned(),
            }
            .tool_output(&request.destination);
            self.transfer_failed(ctx, request, output);
            return;
        };
        // TODO(#5, lead): REFER with NOTIFY tracking and the refer_then_bridge fallback.
        let target = destination.target_uri(&self.transfer_domain());
        self.transfer = Some(request);
        self.start_bridge(ctx, &target, Vec::new());
    }

    /// The bridged call to the destination went `result`.
    pub(super) fn bridge_result(&mut self, ctx: &mut super::Ctx<'_>, result: BridgeResult) {
        let Some(request) = self.transfer.take() else {
            return;
        };
        let outcome = match result {
            BridgeResult::Answered => {
                tracing::info!(destination = %request.destination, "transfer bridged");
                self.transfer = Some(request);
                return;
            }
            BridgeResult::Failed { status, reason } => TransferOutcome::Failed {
                sip_status: status,
                reason,
            },
            BridgeResult::TimedOut => TransferOutcome::TimedOut,
        };
        let output = outcome.tool_output(&request.destination);
        self.transfer_failed(ctx, request, output);
    }

    /// The caller stays with the agent; the model hears why the transfer failed.
    fn transfer_failed(
        &mut self,
        ctx: &mut super::Ctx<'_>,
        request: TransferRequest,
        output: String,
    ) {
        ctx.outputs.push_back(super::Output::Media {
            call: self.key,
            command: super::MediaCommand::TransferFailed { request, output },
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
