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
