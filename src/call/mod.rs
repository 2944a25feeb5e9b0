//! One call: a dialog, its media and its agent, as a sans-IO state machine.
//!
//! ```text
//!  INVITE ─admit─> AwaitingMedia ─ports─> Ringing ─ring_ms─> Answered ─ACK─> Confirmed
//!     │                 │                   │ CANCEL → 487       │ no ACK (64·T1) → BYE
//!     └ 403/404/415/422/486/488/503 (refused before a Call exists, see switchboard)
//!  Confirmed ─BYE in─> Ended(Completed)        Confirmed ─hang_up─> Ending ─BYE answered─> Ended
//!  Confirmed ─re-INVITE/UPDATE─> offer/answer, session refresh (RFC 4028), hold/resume
//!  voxgate's BYE / refresh ─401/407─> the same request again (next CSeq, new transaction) with
//!      the trunk's credentials (RFC 3261 §22.2), at most twice; refused → as any failure
//! ```
//! The [`switchboard`] owns the calls, the [`registrations`] and the SIP [`Endpoint`]; every
//! input reaches a call through a [`Ctx`] that lets it answer on the endpoint and queue media
//! commands.

pub mod agent;
pub mod agent_leg;
#[cfg(test)]
mod auth_tests;
pub mod bridge;
pub mod inbound_auth;
pub mod registrations;
pub mod route;
pub mod speech;
pub mod switchboard;
#[cfg(test)]
mod tests;
pub mod transfer;
#[cfg(test)]
mod transfer_tests;
pub mod unknown_sources;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::{AgentKind, AgentSettings};
use crate::media::sdp::{Direction, LocalMedia, Negotiated, Negotiator};
use crate::media::G711;
use crate::metrics::CallResult;
use crate::sip::auth::{
    AuthHeader, ChallengeOrigin, ChallengeOutcome, ClientCredentials, DigestClient,
};
use crate::sip::dialog::{Dialog, DialogError, OutgoingRequest};
use crate::sip::endpoint::{
    ClientTxId, ConnectionId, Endpoint, Flow, ServerTxId, ALLOW, SUPPORTED,
};
use crate::sip::message::{self, Request, Response};
use crate::sip::session_timer::{
    self, Agreement, Refresher, SessionTimer, SessionTimerOutput, TimerRequest,
};

/// Extra time the call gives the media task to report a speech session's failure itself.
const AGENT_REPORT_GRACE: Duration = Duration::from_secs(2);

/// How many times one in-dialog request is sent again with credentials after 401/407: a first
/// answer, and one more for a `stale=true` challenge; a server that keeps challenging after that
/// is not looped with.
const MAX_AUTH_RETRIES: u8 = 2;

/// A Reason header's text: no quotes or backslashes, one line, bounded.
fn reason_text(why: &str) -> String {
    why.chars()
        .filter(|c| !matches!(c, '"' | '\\') && !c.is_control())
        .take(120)
        .collect()
}

/// A call's number inside one voxgate process (never shown to peers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(pub u64);

/// What the media task of a call must do.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaCommand {
    /// Send and receive with these parameters (first time, or after a re-negotiation).
    Configure(MediaParams),
    /// Stop sending and receiving and release the ports.
    Stop,
    /// A key the caller pressed, signalled by SIP INFO (RFC 4733 digits are detected in the
    /// media task itself).
    Dtmf(char),
    /// A transfer the bridge asked for failed and the caller stays with the agent: give the
    /// model this tool output (or, for a DTMF rule's transfer, tell it).
    TransferFailed {
        /// The request that failed.
        request: transfer::TransferRequest,
        /// The typed failure, JSON text ([`transfer::TransferOutcome::tool_output`]).
        output: String,
    },
    /// The agent leg of a bridged transfer: ringback, join, release.
    AgentLeg(agent_leg::AgentLegCommand),
}

/// Negotiated media, as the media task needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaParams {
    /// Where the SDP says to send RTP (symmetric RTP may latch elsewhere); `None` on hold.
    pub remote_rtp: Option<SocketAddr>,
    /// Where to send RTCP.
    pub remote_rtcp: Option<SocketAddr>,
    /// The codec.
    pub codec: G711,
    /// Its payload type.
    pub payload_type: u8,
    /// RFC 4733 telephone-event payload type, when negotiated.
    pub telephone_event: Option<u8>,
    /// Packetisation time.
    pub ptime: Duration,
    /// voxgate may send (not on hold from the caller's side).
    pub send: bool,
    /// voxgate should expect media.
    pub receive: bool,
}

impl MediaParams {
    /// Whether the media is not two-way: the caller holds the call (`sendonly` / `inactive`,
    /// RFC 6337 §5.3) or only listens. RTP need not come then (the hold timeout applies).
    pub fn is_on_hold(&self) -> bool {
        !(self.send && self.receive)
    }

    fn from_negotiated(negotiated: &Negotiated) -> MediaParams {
        MediaParams {
            remote_rtp: negotiated.remote_rtp,
            remote_rtcp: negotiated.remote_rtcp,
            codec: negotiated.codec,
            payload_type: negotiated.payload_type,
            telephone_event: negotiated.telephone_event,
            ptime: negotiated.ptime,
            send: negotiated.direction.is_sending(),
            receive: negotiated.direction.is_receiving(),
        }
    }
}

/// What calls ask `io/` to do (drained from the switchboard).
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Bind an RTP/RTCP port pair on `local_ip` and start the call's media task with `agent`;
    /// then report back with `Switchboard::handle_media_allocated`.
    AllocateMedia {
        /// The call.
        call: CallKey,
        /// The Call-ID, for the media task's log span.
        call_id: String,
        /// The trunk's name, for the log span.
        trunk: String,
        /// Where to bind.
        local_ip: IpAddr,
        /// Who answers.
        agent: Box<AgentSettings>,
        /// The INVITE's From header (for agents' tools and transcripts).
        from: String,
        /// The INVITE's To header.
        to: String,
    },
    /// Bind an RTP/RTCP port pair on `local_ip` for the agent leg of `call`'s bridged transfer
    /// and hand it to the call's media task; then report back with
    /// `Switchboard::handle_agent_media_allocated`.
    AllocateAgentMedia {
        /// The call.
        call: CallKey,
        /// Where to bind.
        local_ip: IpAddr,
    },
    /// Locate the next hop of `call`'s bridged transfer (RFC 3263: SRV when `port` is `None`,
    /// then A/AAAA); then report back with `Switchboard::handle_agent_leg_located`.
    LocateAgentLeg {
        /// The call.
        call: CallKey,
        /// The outbound proxy's host, else the destination's (a name).
        host: String,
        /// Its port, when the URI names one.
        port: Option<u16>,
        /// The transport of the INVITE.
        transport: crate::sip::message::Transport,
    },
    /// A command for a call's media task.
    Media {
        /// The call.
        call: CallKey,
        /// The command.
        command: MediaCommand,
    },
    /// A call ended (for metrics and the media task's end).
    CallEnded {
        /// The call.
        call: CallKey,
        /// How it ended.
        result: CallResult,
    },
    /// A transfer attempt ended (for `voxgate_transfers_total`).
    TransferFinished {
        /// The destination's name.
        destination: String,
        /// `refer` or `bridge`.
        method: &'static str,
        /// `success`, `failed`, `timeout`, `abandoned`, `handed_over`.
        result: &'static str,
        /// From the transfer's start to this outcome.
        duration: Duration,
    },
    /// Draining finished: no calls are left.
    Drained,
}

/// The call-level settings every call shares.
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// `Server` header value.
    pub user_agent: String,
    /// RFC 4028 interval voxgate prefers.
    pub session_expires_secs: u32,
    /// RFC 4028 floor.
    pub min_se_secs: u32,
    /// IP advertised in SDP instead of the local one (NAT).
    pub public_ip: Option<IpAddr>,
    /// Packetisation time voxgate offers.
    pub ptime: Duration,
    /// How long a speech agent's session may take to come up (the media task enforces it; the
    /// call refuses with 503 a little later if the media task never reports).
    pub agent_connect_timeout: Duration,
    /// `[transfer]`.
    pub transfer: crate::config::transfer::TransferSettings,
}

/// What a call may touch while it handles an input.
pub struct Ctx<'a> {
    /// The current time.
    pub now: Instant,
    /// The SIP endpoint to respond and send on.
    pub endpoint: &'a mut Endpoint,
    /// Where media commands and ends go.
    pub outputs: &'a mut VecDeque<Output>,
    /// Shared settings.
    pub config: &'a CallConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingMedia,
    /// 180 sent; the agent's speech session is being set up (answer on ready, 503 on failure
    /// or at `deadline`).
    AwaitingAgent {
        deadline: Instant,
        answer_at: Instant,
    },
    Ringing {
        answer_at: Instant,
    },
    Answered,
    Confirmed,
    Ending {
        bye: ClientTxId,
    },
    Ended,
}

/// A pending re-INVITE or UPDATE voxgate sent to refresh the session.
#[derive(Debug, Clone, Copy)]
struct Refresh {
    tx: ClientTxId,
    cseq: u32,
    is_invite: bool,
}

/// One call.
pub struct Call {
    key: CallKey,
    span: tracing::Span,
    state: State,
    invite: Option<Box<Request>>,
    invite_tx: ServerTxId,
    flow: Flow,
    dialog: Dialog,
    negotiator: Option<Negotiator>,
    offer_in_invite: bool,
    agent: AgentSettings,
    timer_request: TimerRequest,
    agreement: Option<Agreement>,
    session_timer: Option<SessionTimer>,
    peer_allows_update: bool,
    refresh: Option<Refresh>,
    /// re-INVITE received whose answer comes in the ACK (offer-less re-INVITE).
    awaiting_ack_answer: bool,
    answered_at: Option<Instant>,
    /// Client transactions started since the switchboard last asked.
    started_requests: Vec<ClientTxId>,
    /// Answers 401/407 to this call's own requests with the trunk's credentials (none: the
    /// trunk has no outbound credentials, and a challenge ends the request).
    digest: Option<DigestClient>,
    /// The credentials each in-flight request of this call carried, and how many times it has
    /// been sent again after a challenge.
    sent_auth: HashMap<ClientTxId, SentAuth>,
    /// The INVITE server transaction whose 2xx still waits for its ACK.
    awaiting_ack: Option<ServerTxId>,
    /// The caller's RTP arrives (as the media task last reported).
    caller_media_flowing: bool,
    /// The transfer under way.
    transfer: Option<transfer::ActiveTransfer>,
    /// The caller's INVITE said `Supported: norefersub` (RFC 4488).
    peer_supports_norefersub: bool,
    /// The domain transfer extensions are joined to (the trunk's `domain` or registrar host).
    transfer_domain: Option<String>,
    /// The trunk's outbound proxy (a bridged transfer's INVITE goes through it).
    outbound_proxy: Option<String>,
    /// The bridged transfer's call to the destination.
    agent_leg: Option<agent_leg::AgentLeg>,
}

/// The pieces a switchboard has checked before it creates a call.
pub struct NewCall {
    /// The call's key.
    pub key: CallKey,
    /// The INVITE.
    pub invite: Box<Request>,
    /// Its server transaction.
    pub invite_tx: ServerTxId,
    /// How it arrived.
    pub flow: Flow,
    /// The dialog (Early; voxgate's tag chosen).
    pub dialog: Dialog,
    /// The agent that answers.
    pub agent: AgentSettings,
    /// The trunk's name.
    pub trunk: String,
    /// The session-timer headers of the INVITE (already checked against Min-SE).
    pub timer_request: TimerRequest,
    /// The trunk's credentials for challenges to voxgate's in-dialog requests.
    pub credentials: Option<ClientCredentials>,
    /// The domain transfer extensions are joined to ([`TrunkSettings::transfer_domain`]).
    ///
    /// [`TrunkSettings::transfer_domain`]: crate::config::TrunkSettings::transfer_domain
    pub transfer_domain: Option<String>,
    /// The trunk's outbound proxy URI, if any.
    pub outbound_proxy: Option<String>,
}

/// The credentials a request was sent with, for telling a refused password from a stale nonce
/// when it is challenged (and for the ACK of a re-INVITE, RFC 3261 §13.2.2.4).
#[derive(Debug, Clone, Default)]
struct SentAuth {
    headers: Vec<AuthHeader>,
    /// Times the request was already sent again after a challenge.
    retries: u8,
}

/// How a request the call sent failed before any final response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFailure {
    /// No final response (Timer B / F).
    TimedOut,
    /// The transport could not send it.
    Transport,
}

impl RequestFailure {
    /// For the log: "BYE got no answer".
    fn words(self) -> &'static str {
        match self {
            RequestFailure::TimedOut => "got no answer",
            RequestFailure::Transport => "could not be sent",
        }
    }
}

impl Call {
    /// Creates the call and asks `io/` for media ports.
    pub fn start(ctx: &mut Ctx<'_>, new: NewCall) -> Call {
        let call_id = new.dialog.id().call_id.clone();
        let span =
            tracing::info_span!(parent: None, "call", call_id = %call_id, trunk = %new.trunk);
        let offer_in_invite = !new.invite.body().is_empty();
        let peer_allows_update = allows_update(&new.invite);
        let peer_supports_norefersub = new
            .invite
            .headers_named("Supported")
            .chain(new.invite.headers_named("k"))
            .flat_map(|value| value.split(','))
            .any(|tag| tag.trim().eq_ignore_ascii_case("norefersub"));
        let local_ip = new.flow.local.ip();
        span.in_scope(|| {
            tracing::info!(
                from = new.invite.header("From").unwrap_or(""),
                to = new.invite.header("To").unwrap_or(""),
                agent = %new.agent.name,
                peer = %new.flow.remote,
                "incoming call"
            )
        });
        ctx.outputs.push_back(Output::AllocateMedia {
            call: new.key,
            call_id,
            trunk: new.trunk,
            local_ip,
            agent: Box::new(new.agent.clone()),
            from: new.invite.header("From").unwrap_or("").to_owned(),
            to: new.invite.header("To").unwrap_or("").to_owned(),
        });
        Call {
            key: new.key,
            span,
            state: State::AwaitingMedia,
            invite: Some(new.invite),
            invite_tx: new.invite_tx,
            flow: new.flow,
            dialog: new.dialog,
            negotiator: None,
            offer_in_invite,
            agent: new.agent,
            timer_request: new.timer_request,
            agreement: None,
            session_timer: None,
            peer_allows_update,
            refresh: None,
            awaiting_ack_answer: false,
            answered_at: None,
            started_requests: Vec::new(),
            digest: new.credentials.map(DigestClient::new),
            sent_auth: HashMap::new(),
            awaiting_ack: None,
            caller_media_flowing: true,
            transfer: None,
            peer_supports_norefersub,
            transfer_domain: new.transfer_domain,
            outbound_proxy: new.outbound_proxy,
            agent_leg: None,
        }
    }

    /// Client transactions this call started since the last call (the switchboard maps their
    /// responses back to the call).
    pub fn take_started_requests(&mut self) -> Vec<ClientTxId> {
        std::mem::take(&mut self.started_requests)
    }

    /// The call's key.
    pub fn key(&self) -> CallKey {
        self.key
    }

    /// The dialog.
    pub fn dialog(&self) -> &Dialog {
        &self.dialog
    }

    /// The INVITE's server transaction.
    pub fn invite_tx(&self) -> ServerTxId {
        self.invite_tx
    }

    /// The (re-)INVITE transaction whose 2xx is still being retransmitted until an ACK.
    pub fn awaiting_ack(&self) -> Option<ServerTxId> {
        self.awaiting_ack
    }

    /// Whether the call (its dialog with the caller, or a bridged transfer's leg) reaches its
    /// peer over TCP connection `id` or to `peer`.
    pub fn uses_connection(&self, id: ConnectionId, peer: SocketAddr) -> bool {
        (self.state != State::Ended && self.flow.rides(id, peer))
            || self
                .agent_leg
                .as_ref()
                .is_some_and(|leg| leg.uses_connection(id, peer))
    }

    /// The call has ended and can be forgotten.
    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
            && self
                .agent_leg
                .as_ref()
                .is_none_or(agent_leg::AgentLeg::is_terminated)
    }

    /// The call has been answered (2xx sent).
    pub fn is_answered(&self) -> bool {
        matches!(
            self.state,
            State::Answered | State::Confirmed | State::Ending { .. }
        )
    }

    /// The INVITE has no final response yet (media being bound, or ringing).
    fn is_invite_pending(&self) -> bool {
        matches!(self.state, State::AwaitingMedia | State::Ringing { .. })
    }

    /// `io/` bound the media ports (or failed to): build the SDP and ring or answer.
    pub fn handle_media_allocated(
        &mut self,
        ctx: &mut Ctx<'_>,
        local_rtp: Result<SocketAddr, String>,
    ) {
        let _entered = self.span.clone().entered();
        if self.state != State::AwaitingMedia {
            return;
        }
        let local_rtp = match local_rtp {
            Ok(address) => address,
            Err(reason) => {
                tracing::error!(%reason, "no RTP port available; refusing the call with 503");
                self.refuse(ctx, 503, "Service Unavailable", None, CallResult::Rejected);
                return;
            }
        };
        let sdp_ip = ctx.config.public_ip.unwrap_or(local_rtp.ip());
        let mut local = LocalMedia::new(sdp_ip, local_rtp.port());
        local.ptime = ctx.config.ptime;
        let negotiator = Negotiator::new(local);
        self.negotiator = Some(negotiator);
        if self.offer_in_invite {
            let Some(invite) = self.invite.as_ref() else {
                return;
            };
            if let Some(status) = unsupported_body(invite) {
                self.refuse(
                    ctx,
                    status,
                    "Unsupported Media Type",
                    Some(("Accept", "application/sdp")),
                    CallResult::Rejected,
                );
                return;
            }
        }
        let answer_at = ctx.now + Duration::from_millis(self.agent.ring_ms.into());
        if self.agent.kind == AgentKind::Openai {
            // Ring at once while the speech session comes up; answer when it is confirmed.
            let ringing = self.invite_response(180, None);
            ctx.endpoint.respond(ctx.now, self.invite_tx, 180, ringing);
            self.state = State::AwaitingAgent {
                deadline: ctx.now + ctx.config.agent_connect_timeout + AGENT_REPORT_GRACE,
                answer_at,
            };
        } else if self.agent.ring_ms > 0 {
            let ringing = self.invite_response(180, None);
            ctx.endpoint.respond(ctx.now, self.invite_tx, 180, ringing);
            self.state = State::Ringing { answer_at };
        } else {
            self.answer(ctx);
        }
    }

    fn answer(&mut self, ctx: &mut Ctx<'_>) {
        let Some(negotiator) = self.negotiator.as_mut() else {
            return;
        };
        let Some(invite) = self.invite.as_ref() else {
            return;
        };
        let sdp = if self.offer_in_invite {
            match negotiator.handle_offer(sdp_body(invite.as_ref())) {
                Ok((answer, negotiated)) => {
                    tracing::info!(
                        codec = ?negotiated.codec,
                        remote_rtp = ?negotiated.remote_rtp,
                        ptime_ms = negotiated.ptime.as_millis() as u64,
                        "media negotiated"
                    );
                    ctx.outputs.push_back(Output::Media {
                        call: self.key,
                        command: MediaCommand::Configure(MediaParams::from_negotiated(&negotiated)),
                    });
                    answer
                }
                Err(error) => {
                    tracing::info!(%error, "offer refused");
                    let status = error.status();
                    let reason = message::default_reason(status);
                    self.refuse(ctx, status, reason, None, CallResult::Rejected);
                    return;
                }
            }
        } else {
            // RFC 3264 §4 / RFC 3261 §13.2.1: no offer in the INVITE → offer in the 2xx, answer
            // in the ACK.
            negotiator.create_offer()
        };
        // The switchboard already refused intervals below Min-SE with 422.
        let agreement = session_timer::negotiate(
            &self.timer_request,
            ctx.config.session_expires_secs,
            ctx.config.min_se_secs,
        )
        .unwrap_or_default();
        self.agreement = agreement;
        let ok = self.invite_response(200, Some(sdp));
        ctx.endpoint.respond(ctx.now, self.invite_tx, 200, ok);
        self.awaiting_ack = Some(self.invite_tx);
        self.dialog.confirm();
        self.state = State::Answered;
        self.answered_at = Some(ctx.now);
        if let Some(agreement) = agreement {
            self.session_timer = Some(SessionTimer::start(ctx.now, agreement));
        }
        tracing::info!(agent = %self.agent.name, "call answered");
    }

    /// Builds a response to the INVITE with voxgate's tag, Contact, Allow and Supported.
    fn invite_response(&self, status: u16, sdp: Option<Bytes>) -> Bytes {
        let Some(invite) = self.invite.as_ref() else {
            return Bytes::new();
        };
        let mut builder = message::response(invite, status)
            .to_tag(&self.dialog.id().local_tag)
            .header("Contact", self.contact())
            .header("Allow", ALLOW)
            .header("Supported", SUPPORTED);
        if let (200, Some(agreement)) = (status, self.agreement) {
            builder = builder.header("Session-Expires", agreement.header_value());
            if self.timer_request.supports_timer {
                // RFC 4028 §9: Require: timer only when the UAC supports it.
                builder = builder.header("Require", "timer");
            }
        }
        if let Some(sdp) = sdp {
            builder = builder.body("application/sdp", sdp);
        }
        builder.build()
    }

    /// voxgate's Contact: the dialog's local contact (already built with `public_address`).
    fn contact(&self) -> String {
        format!("<{}>", self.dialog.local_contact())
    }

    /// Refuses the INVITE with a final error response and ends the call.
    fn refuse(
        &mut self,
        ctx: &mut Ctx<'_>,
        status: u16,
        reason: &str,
        header: Option<(&str, &str)>,
        result: CallResult,
    ) {
        if let Some(invite) = self.invite.as_ref() {
            let mut builder = message::response(invite, status)
                .reason(reason)
                .to_tag(&self.dialog.id().local_tag)
                .header("Server", &ctx.config.user_agent);
            if let Some((name, value)) = header {
                builder = builder.header(name, value);
            }
            ctx.endpoint
                .respond(ctx.now, self.invite_tx, status, builder.build());
        }
        self.end(ctx, result);
    }

    /// The agent's speech session is ready: answer (after `ring_ms`, if that is later).
    pub fn handle_agent_ready(&mut self, ctx: &mut Ctx<'_>) {
        let _entered = self.span.clone().entered();
        if let State::AwaitingAgent { answer_at, .. } = self.state {
            if ctx.now >= answer_at {
                self.answer(ctx);
            } else {
                self.state = State::Ringing { answer_at };
            }
        }
    }

    /// The agent's speech session could not be set up: 503 with a Reason (RFC 3326) so the PBX
    /// can fail over; after answer, hang up.
    pub fn handle_agent_failed(&mut self, ctx: &mut Ctx<'_>, why: &str) {
        let _entered = self.span.clone().entered();
        match self.state {
            State::AwaitingMedia | State::AwaitingAgent { .. } | State::Ringing { .. } => {
                tracing::warn!(why, "speech agent unavailable; refusing the call with 503");
                let reason = format!("SIP;cause=503;text=\"{}\"", reason_text(why));
                self.refuse(
                    ctx,
                    503,
                    "Service Unavailable",
                    Some(("Reason", &reason)),
                    CallResult::Rejected,
                );
            }
            _ => self.hang_up(ctx, why, CallResult::Failed),
        }
    }

    /// The agent ended the call (e.g. its `end_call` tool, or its time limit): BYE.
    pub fn handle_agent_hangup(&mut self, ctx: &mut Ctx<'_>, why: &str) {
        self.hang_up(ctx, why, CallResult::Completed);
    }

    /// A CANCEL matched this call's INVITE (the endpoint already answered the CANCEL 200).
    pub fn handle_cancel(&mut self, ctx: &mut Ctx<'_>) {
        let _entered = self.span.clone().entered();
        if matches!(
            self.state,
            State::AwaitingMedia | State::AwaitingAgent { .. } | State::Ringing { .. }
        ) {
            tracing::info!("caller cancelled before answer");
            self.refuse(ctx, 487, "Request Terminated", None, CallResult::Cancelled);
        }
    }

    /// The ACK for voxgate's 2xx arrived (a new transaction, matched by dialog).
    pub fn handle_ack(&mut self, ctx: &mut Ctx<'_>, ack: &Request) {
        let _entered = self.span.clone().entered();
        if self.is_agent_leg(ack.call_id()) {
            self.handle_agent_leg_ack(ctx, ack);
            return;
        }
        let carries_answer =
            (self.state == State::Answered && !self.offer_in_invite) || self.awaiting_ack_answer;
        self.awaiting_ack = None;
        if self.state == State::Answered {
            self.state = State::Confirmed;
            self.invite = None;
            tracing::debug!("ACK received; call confirmed");
        }
        if carries_answer {
            self.awaiting_ack_answer = false;
            let Some(negotiator) = self.negotiator.as_mut() else {
                return;
            };
            match negotiator.handle_answer(sdp_body(ack)) {
                Ok(negotiated) => ctx.outputs.push_back(Output::Media {
                    call: self.key,
                    command: MediaCommand::Configure(MediaParams::from_negotiated(&negotiated)),
                }),
                Err(error) => {
                    // RFC 3261 §13.2.2.4 / RFC 3264: no usable answer in the ACK — end the call.
                    tracing::warn!(%error, "ACK carried no usable SDP answer; hanging up");
                    self.hang_up(ctx, "no SDP answer in ACK", CallResult::Failed);
                }
            }
        }
    }

    /// The INVITE server transaction saw no ACK: RFC 3261 §13.3.1.4 says end the dialog with BYE.
    pub fn handle_ack_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let _entered = self.span.clone().entered();
        if self.awaiting_ack.take().is_some() {
            tracing::warn!("no ACK for our 200 OK; hanging up");
            self.hang_up(ctx, "no ACK", CallResult::Failed);
        }
    }

    /// An in-dialog request (re-INVITE, UPDATE, BYE, INFO, OPTIONS …).
    pub fn handle_request(&mut self, ctx: &mut Ctx<'_>, tx: ServerTxId, request: &Request) {
        let _entered = self.span.clone().entered();
        if self.is_agent_leg(request.call_id()) {
            self.handle_agent_leg_request(ctx, tx, request);
            return;
        }
        let method = request.method().to_string();
        let contact = request.contact_uri();
        if let Err(error) =
            self.dialog
                .handle_request(&method, request.cseq().seq, contact.as_deref())
        {
            let status = error.status();
            let reason = match error {
                DialogError::CSeqOutOfOrder { .. } => "Server Internal Error (CSeq out of order)",
                DialogError::Terminated => "Call/Transaction Does Not Exist",
            };
            self.reply(ctx, tx, request, status, Some(reason), &[], None);
            return;
        }
        match method.as_str() {
            "BYE" => {
                self.reply(ctx, tx, request, 200, None, &[], None);
                if self.is_invite_pending() {
                    // RFC 3261 §15.1.2: a BYE in the early dialog still leaves the INVITE to
                    // be answered; 487 is the recommended response.
                    tracing::info!("caller hung up before answer");
                    self.refuse(ctx, 487, "Request Terminated", None, CallResult::Cancelled);
                } else {
                    tracing::info!("caller hung up");
                    self.end(ctx, CallResult::Completed);
                }
            }
            "INVITE" | "UPDATE" => self.handle_offer_request(ctx, tx, request, &method),
            "NOTIFY" => self.handle_notify(ctx, tx, request),
            "INFO" => {
                // RFC 6086: INFO for DTMF (`application/dtmf-relay`, `application/dtmf`); other
                // packages are answered 200 and ignored, as PBXs expect.
                let digit = request
                    .content_type_value()
                    .and_then(|kind| crate::media::dtmf::info_digit(kind, request.body()));
                self.reply(ctx, tx, request, 200, None, &[], None);
                if let Some(digit) = digit {
                    tracing::info!(%digit, "caller pressed a key (SIP INFO)");
                    ctx.outputs.push_back(Output::Media {
                        call: self.key,
                        command: MediaCommand::Dtmf(digit),
                    });
                }
            }
            "OPTIONS" => {
                let allow = [("Allow", ALLOW), ("Supported", SUPPORTED)];
                self.reply(ctx, tx, request, 200, None, &allow, None);
            }
            _ => {
                self.reply(ctx, tx, request, 405, None, &[("Allow", ALLOW)], None);
            }
        }
    }

    /// A re-INVITE or UPDATE: maybe an offer (hold, resume, codec change), maybe only a session
    /// refresh (RFC 4028).
    fn handle_offer_request(
        &mut self,
        ctx: &mut Ctx<'_>,
        tx: ServerTxId,
        request: &Request,
        method: &str,
    ) {
        if self.is_invite_pending() && (method == "INVITE" || !request.body().is_empty()) {
            // RFC 3261 §14.2: a re-INVITE before the INVITE is answered gets 500 with a
            // Retry-After of 0–10 s; RFC 3311 §5.2 the same for an UPDATE offer while the
            // INVITE's offer awaits our answer (voxgate answers in the 200, never earlier).
            let retry_after = (rand::random::<u32>() % 11).to_string();
            let headers = [("Retry-After", retry_after.as_str())];
            self.reply(ctx, tx, request, 500, None, &headers, None);
            return;
        }
        if self.refresh.is_some() && method == "INVITE" || self.awaiting_ack_answer {
            // RFC 3261 §14.2: an offer while ours is pending → 491 Request Pending.
            self.reply(ctx, tx, request, 491, None, &[], None);
            return;
        }
        let timer_request = timer_request_of(request);
        let agreement = match session_timer::negotiate(
            &timer_request,
            ctx.config.session_expires_secs,
            ctx.config.min_se_secs,
        ) {
            Ok(agreement) => agreement,
            Err(too_small) => {
                let min_se = too_small.min_se.to_string();
                self.reply(ctx, tx, request, 422, None, &[("Min-SE", &min_se)], None);
                return;
            }
        };
        let Some(negotiator) = self.negotiator.as_mut() else {
            self.reply(ctx, tx, request, 500, None, &[], None);
            return;
        };
        let body = if !request.body().is_empty() {
            if let Some(status) = unsupported_body(request) {
                self.reply(
                    ctx,
                    tx,
                    request,
                    status,
                    None,
                    &[("Accept", "application/sdp")],
                    None,
                );
                return;
            }
            match negotiator.handle_offer(sdp_body(request)) {
                Ok((answer, negotiated)) => {
                    tracing::info!(
                        direction = ?negotiated.direction,
                        remote_rtp = ?negotiated.remote_rtp,
                        "media re-negotiated by {method}"
                    );
                    ctx.outputs.push_back(Output::Media {
                        call: self.key,
                        command: MediaCommand::Configure(MediaParams::from_negotiated(&negotiated)),
                    });
                    Some(answer)
                }
                Err(error) => {
                    // RFC 3261 §14.2: a refused re-offer leaves the session as it was. Glare
                    // (our offer outstanding) is 491 (RFC 3311 §5.2 for UPDATE), bad SDP 400.
                    let status = error.status();
                    tracing::info!(%error, status, "re-offer refused");
                    self.reply(ctx, tx, request, status, None, &[], None);
                    return;
                }
            }
        } else if method == "INVITE" {
            // An offer-less re-INVITE: offer in the 200, answer in the ACK.
            self.awaiting_ack_answer = true;
            Some(negotiator.create_offer())
        } else {
            None
        };
        self.agreement = agreement;
        let mut headers: Vec<(&str, String)> = vec![
            ("Contact", self.contact()),
            ("Allow", ALLOW.to_owned()),
            ("Supported", SUPPORTED.to_owned()),
        ];
        if let Some(agreement) = agreement {
            headers.push(("Session-Expires", agreement.header_value()));
            if timer_request.supports_timer {
                headers.push(("Require", "timer".to_owned()));
            }
            match self.session_timer.as_mut() {
                Some(timer) => timer.handle_refreshed(ctx.now, agreement),
                None => self.session_timer = Some(SessionTimer::start(ctx.now, agreement)),
            }
        } else {
            self.session_timer = None;
        }
        let header_refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        self.reply(ctx, tx, request, 200, None, &header_refs, body);
        if method == "INVITE" {
            self.awaiting_ack = Some(tx);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn reply(
        &self,
        ctx: &mut Ctx<'_>,
        tx: ServerTxId,
        request: &Request,
        status: u16,
        reason: Option<&str>,
        headers: &[(&str, &str)],
        sdp: Option<Bytes>,
    ) {
        let mut builder = message::response(request, status)
            .to_tag(&self.dialog.id().local_tag)
            .header("Server", &ctx.config.user_agent);
        if let Some(reason) = reason {
            builder = builder.reason(reason);
        }
        for (name, value) in headers {
            builder = builder.header(name, *value);
        }
        if let Some(sdp) = sdp {
            builder = builder.body("application/sdp", sdp);
        }
        ctx.endpoint.respond(ctx.now, tx, status, builder.build());
    }

    /// A response to a request this call sent (BYE, session refresh). A 401/407 is answered
    /// with the trunk's credentials: the request goes again (next CSeq, new transaction) with
    /// `Authorization`/`Proxy-Authorization`, at most twice; a challenge
    /// that cannot or may not be answered counts as the request's failure.
    pub fn handle_response(&mut self, ctx: &mut Ctx<'_>, tx: ClientTxId, response: &Response) {
        let _entered = self.span.clone().entered();
        if self.handle_agent_leg_response(ctx, tx, response) {
            return;
        }
        let status = response.status();
        if status < 200 {
            return;
        }
        let sent = self.sent_auth.remove(&tx).unwrap_or_default();
        if let State::Ending { bye } = self.state {
            if bye == tx {
                if let Some(retries) = self.answer_challenge("BYE", response, &sent) {
                    let bye = self.dialog.next_request("BYE");
                    let tx = self.send_in_dialog(ctx, bye, None, retries);
                    self.state = State::Ending { bye: tx };
                    return;
                }
                tracing::debug!(status, "BYE answered");
                self.finish();
                return;
            }
        }
        if self.handle_refer_response(ctx, tx, response, &sent) {
            return;
        }
        let Some(refresh) = self.refresh else { return };
        if refresh.tx != tx {
            return;
        }
        self.refresh = None;
        if refresh.is_invite && !(200..300).contains(&status) {
            // RFC 3261 §14.1: a refused re-INVITE leaves the session as it was; our offer is
            // void (the transaction ACKed the failure itself).
            if let Some(negotiator) = self.negotiator.as_mut() {
                negotiator.withdraw_offer();
            }
        }
        let method = if refresh.is_invite {
            "INVITE"
        } else {
            "UPDATE"
        };
        if let Some(retries) = self.answer_challenge(method, response, &sent) {
            self.send_refresh_attempt(ctx, retries);
            return;
        }
        if refresh.is_invite && (200..300).contains(&status) {
            let mut ack = self.dialog.ack_for(refresh.cseq);
            // RFC 3261 §13.2.2.4: the ACK carries the INVITE's credentials.
            ack.headers
                .extend(sent.headers.iter().map(|h| (h.name, h.value.clone())));
            ctx.endpoint.send_ack(&self.flow, &ack);
            if let Some(negotiator) = self.negotiator.as_mut() {
                match negotiator.handle_answer(sdp_body(response)) {
                    // The answer may move the peer's media (another port, hold); the media
                    // task ignores a Configure that changes nothing.
                    Ok(negotiated) => ctx.outputs.push_back(Output::Media {
                        call: self.key,
                        command: MediaCommand::Configure(MediaParams::from_negotiated(&negotiated)),
                    }),
                    Err(error) => {
                        tracing::warn!(%error, "refresh answer unusable; keeping the previous media")
                    }
                }
            }
        }
        match status {
            200..=299 => {
                if let (Some(timer), Some(agreement)) =
                    (self.session_timer.as_mut(), self.agreement)
                {
                    let response_timer = timer_request_of_response(response);
                    let agreement =
                        session_timer::answered(&response_timer, agreement, ctx.config.min_se_secs);
                    self.agreement = Some(agreement);
                    timer.handle_refreshed(ctx.now, agreement);
                    tracing::debug!(
                        refresher = agreement.refresher.as_str(),
                        "session refreshed"
                    );
                }
            }
            // RFC 4028 §10: 408/481 to a refresh means the session is gone.
            408 | 481 => {
                tracing::warn!(status, "session refresh failed; the dialog is gone");
                self.hang_up(ctx, "session refresh failed", CallResult::Failed);
            }
            _ => tracing::warn!(status, "session refresh refused; will retry before expiry"),
        }
    }

    /// Whether to send `method` again after `response` (a final response to it), and with what
    /// retry count: only for a 401/407 the trunk's digest client can answer, within
    /// [`MAX_AUTH_RETRIES`]. Logs why a challenge is not answered.
    fn answer_challenge(
        &mut self,
        method: &str,
        response: &Response,
        sent: &SentAuth,
    ) -> Option<u8> {
        challenge_answer(self.digest.as_mut(), method, response, sent)
    }

    /// Sends an in-dialog request on a new client transaction, with the credentials the
    /// trunk's digest client holds for the peer (none before a first challenge).
    fn send_in_dialog(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut request: OutgoingRequest,
        body: Option<(&str, Bytes)>,
        retries: u8,
    ) -> ClientTxId {
        let headers = match self.digest.as_mut() {
            Some(client) => {
                let body_bytes = body.as_ref().map_or(&[][..], |(_, bytes)| bytes.as_ref());
                client.authorize(&request.method, &request.request_uri, body_bytes)
            }
            None => Vec::new(),
        };
        request
            .headers
            .extend(headers.iter().map(|h| (h.name, h.value.clone())));
        let tx = ctx
            .endpoint
            .send_request(ctx.now, &self.flow, &request, body);
        self.started_requests.push(tx);
        self.sent_auth.insert(tx, SentAuth { headers, retries });
        tx
    }

    /// A request this call sent got no answer (Timer B / F).
    pub fn handle_request_timeout(&mut self, ctx: &mut Ctx<'_>, tx: ClientTxId) {
        self.handle_request_failure(ctx, tx, RequestFailure::TimedOut);
    }

    /// A request this call sent could not be sent (RFC 3261 §8.1.3.1: its TCP connection was
    /// refused, its host name has no server): it ends as a timeout would, except that a bridged
    /// transfer's INVITE goes to the destination's next server at once (RFC 3263 §4.3).
    pub fn handle_transport_failure(&mut self, ctx: &mut Ctx<'_>, tx: ClientTxId) {
        self.handle_request_failure(ctx, tx, RequestFailure::Transport);
    }

    fn handle_request_failure(
        &mut self,
        ctx: &mut Ctx<'_>,
        tx: ClientTxId,
        failure: RequestFailure,
    ) {
        let _entered = self.span.clone().entered();
        if self.handle_agent_leg_request_failure(ctx, tx, failure) {
            return;
        }
        self.sent_auth.remove(&tx);
        if let State::Ending { bye } = self.state {
            if bye == tx {
                tracing::warn!("BYE {}; forgetting the call", failure.words());
                self.finish();
                return;
            }
        }
        if self.handle_refer_timeout(ctx, tx) {
            return;
        }
        if self.refresh.is_some_and(|refresh| refresh.tx == tx) {
            self.refresh = None;
            tracing::warn!("session refresh {}; hanging up", failure.words());
            let why = match failure {
                RequestFailure::TimedOut => "session refresh timed out",
                RequestFailure::Transport => "session refresh could not be sent",
            };
            self.hang_up(ctx, why, CallResult::Failed);
        }
    }

    /// Ends the call from voxgate's side: BYE when answered, 480/503 before.
    pub fn hang_up(&mut self, ctx: &mut Ctx<'_>, why: &str, result: CallResult) {
        let _entered = self.span.clone().entered();
        self.end_agent_leg(ctx);
        match self.state {
            State::AwaitingMedia | State::AwaitingAgent { .. } | State::Ringing { .. } => {
                tracing::info!(why, "refusing the call before answer");
                self.refuse(ctx, 503, "Service Unavailable", None, result);
            }
            State::Answered | State::Confirmed => {
                tracing::info!(why, "hanging up");
                self.abandon_transfer(ctx);
                let bye = self.dialog.next_request("BYE");
                let tx = self.send_in_dialog(ctx, bye, None, 0);
                self.dialog.terminate();
                self.state = State::Ending { bye: tx };
                ctx.outputs.push_back(Output::Media {
                    call: self.key,
                    command: MediaCommand::Stop,
                });
                ctx.outputs.push_back(Output::CallEnded {
                    call: self.key,
                    result,
                });
            }
            State::Ending { .. } | State::Ended => {}
        }
    }

    /// Ends the call now (BYE received, refused, cancelled).
    fn end(&mut self, ctx: &mut Ctx<'_>, result: CallResult) {
        if matches!(self.state, State::Ending { .. } | State::Ended) {
            return;
        }
        self.abandon_transfer(ctx);
        self.end_agent_leg(ctx);
        self.dialog.terminate();
        let duration = self
            .answered_at
            .map(|at| ctx.now.saturating_duration_since(at));
        tracing::info!(
            result = result.as_str(),
            duration_secs = duration.map(|d| d.as_secs()),
            "call ended"
        );
        ctx.outputs.push_back(Output::Media {
            call: self.key,
            command: MediaCommand::Stop,
        });
        ctx.outputs.push_back(Output::CallEnded {
            call: self.key,
            result,
        });
        self.finish();
    }

    fn finish(&mut self) {
        self.state = State::Ended;
        self.invite = None;
        self.session_timer = None;
    }

    /// The media task or agent ended the call: `Failed` for a fault such as the RTP timeout,
    /// `Completed` for an agent that hangs up when the conversation is over.
    pub fn handle_media_ended(&mut self, ctx: &mut Ctx<'_>, why: &str, result: CallResult) {
        self.hang_up(ctx, why, result);
    }

    /// Fires the ring and session timers.
    pub fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let _entered = self.span.clone().entered();
        if self.agent_leg_timeout().is_some_and(|at| ctx.now >= at) {
            self.handle_agent_leg_timeout(ctx);
        }
        if let State::Ringing { answer_at } = self.state {
            if ctx.now >= answer_at {
                self.answer(ctx);
            }
        }
        if let State::AwaitingAgent { deadline, .. } = self.state {
            if ctx.now >= deadline {
                self.handle_agent_failed(ctx, "speech session not ready in time");
                return;
            }
        }
        self.transfer_handle_timeout(ctx);
        let Some(timer) = self.session_timer.as_mut() else {
            return;
        };
        let refresher = timer.agreement().refresher;
        match timer.handle_timeout(ctx.now) {
            Some(SessionTimerOutput::Refresh) => self.send_refresh(ctx),
            Some(SessionTimerOutput::Expired) => {
                match refresher {
                    Refresher::Uas => tracing::warn!(
                        "session expired: none of voxgate's refreshes succeeded (RFC 4028)"
                    ),
                    Refresher::Uac => tracing::warn!(
                        "session expired: the caller's side stopped refreshing (RFC 4028)"
                    ),
                }
                self.hang_up(ctx, "session expired", CallResult::Failed);
            }
            None => {}
        }
    }

    fn send_refresh(&mut self, ctx: &mut Ctx<'_>) {
        self.send_refresh_attempt(ctx, 0);
    }

    /// Sends a session refresh; `retries` counts earlier sends of it answered with 401/407.
    fn send_refresh_attempt(&mut self, ctx: &mut Ctx<'_>, retries: u8) {
        if self.state != State::Confirmed || self.refresh.is_some() {
            return;
        }
        let Some(agreement) = self.agreement else {
            return;
        };
        // RFC 4028 §7.4: UPDATE without a body is the cheapest refresh when the peer allows it.
        let method = if self.peer_allows_update {
            "UPDATE"
        } else {
            "INVITE"
        };
        let mut request = self.dialog.next_request(method);
        request
            .headers
            .push(("Session-Expires", agreement.request_header_value()));
        request.headers.push(("Supported", SUPPORTED.to_owned()));
        let body = if method == "INVITE" {
            self.negotiator
                .as_mut()
                .map(|negotiator| ("application/sdp", negotiator.create_offer()))
        } else {
            None
        };
        let cseq = request.cseq;
        let tx = self.send_in_dialog(ctx, request, body, retries);
        tracing::debug!(method, "refreshing the session");
        self.refresh = Some(Refresh {
            tx,
            cseq,
            is_invite: method == "INVITE",
        });
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ring = match self.state {
            State::Ringing { answer_at } => Some(answer_at),
            State::AwaitingAgent { deadline, .. } => Some(deadline),
            _ => None,
        };
        let session = self
            .session_timer
            .as_ref()
            .and_then(SessionTimer::poll_timeout);
        ring.into_iter()
            .chain(session)
            .chain(self.transfer_poll_timeout())
            .chain(self.agent_leg_timeout())
            .min()
    }

    /// The call's media direction after negotiation (for tests and logs).
    pub fn direction(&self) -> Option<Direction> {
        self.negotiator
            .as_ref()?
            .negotiated()
            .map(|negotiated| negotiated.direction)
    }
}

/// Whether to send `method` again after `response` (a final response to it) with the
/// credentials `client` holds, and with what retry count: only for a 401/407 it can answer,
/// within [`MAX_AUTH_RETRIES`]. Logs why a challenge is not answered.
fn challenge_answer(
    client: Option<&mut DigestClient>,
    method: &str,
    response: &Response,
    sent: &SentAuth,
) -> Option<u8> {
    let status = response.status();
    let origin = ChallengeOrigin::from_status(status)?;
    let Some(client) = client else {
        tracing::warn!(
            status,
            "{method} challenged ({status}) but the trunk has no outbound credentials \
             (outbound_username, outbound_password_env): not answered"
        );
        return None;
    };
    if sent.retries >= MAX_AUTH_RETRIES {
        tracing::warn!(
            status,
            "{method} challenged ({status}) again after {} answers: giving up",
            sent.retries
        );
        return None;
    }
    let challenges: Vec<&str> = response.headers_named(origin.challenge_header()).collect();
    let answered = sent
        .headers
        .iter()
        .filter(|header| header.name == origin.credentials_header())
        .map(|header| header.value.as_str());
    match client.handle_challenge(origin, challenges, answered) {
        ChallengeOutcome::Retry { stale } => {
            tracing::debug!(
                status,
                stale,
                "{method} challenged; sending it again with credentials"
            );
            Some(sent.retries + 1)
        }
        ChallengeOutcome::Refused { realm, .. } => {
            tracing::warn!(
                status,
                "{method} refused: the peer did not accept the trunk's credentials for \
                 realm {realm:?} ({status} again)"
            );
            None
        }
        ChallengeOutcome::Unanswerable(error) => {
            tracing::warn!(status, %error, "{method} challenged ({status}) in a way voxgate cannot answer");
            None
        }
        ChallengeOutcome::RealmMismatch { offered } => {
            tracing::warn!(
                status,
                "{method} challenged ({status}) for realm {offered:?}, which the trunk's \
                 credentials are not for"
            );
            None
        }
    }
}

/// The session-timer headers of a request.
pub fn timer_request_of(request: &Request) -> TimerRequest {
    let supported: Vec<&str> = request
        .headers_named("Supported")
        .chain(request.headers_named("Require"))
        .collect();
    TimerRequest::from_headers(
        request.header("Session-Expires"),
        request.header("Min-SE"),
        supported,
    )
}

/// The session-timer headers of a response (to a refresh voxgate sent).
fn timer_request_of_response(response: &Response) -> TimerRequest {
    let supported: Vec<&str> = response
        .headers_named("Supported")
        .chain(response.headers_named("Require"))
        .collect();
    TimerRequest::from_headers(
        response.header("Session-Expires"),
        response.header("Min-SE"),
        supported,
    )
}

fn allows_update(request: &Request) -> bool {
    request
        .headers_named("Allow")
        .flat_map(|value| value.split(','))
        .any(|method| method.trim().eq_ignore_ascii_case("UPDATE"))
}

/// 415 when a body is present that is neither SDP nor multipart carrying SDP.
fn unsupported_body(request: &Request) -> Option<u16> {
    let content_type = request
        .content_type()
        .unwrap_or("application/sdp")
        .to_ascii_lowercase();
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    match media_type.as_str() {
        "application/sdp" => None,
        "multipart/mixed" | "multipart/alternative" | "multipart/related"
            if find_sdp_part(request.body(), &content_type).is_some() =>
        {
            None
        }
        _ => Some(415),
    }
}

/// The SDP in a request or response body (the SDP part of a multipart body, RFC 5621).
fn sdp_body<M: HasBody>(message: &M) -> &[u8] {
    let body = message.body_bytes();
    let content_type = message
        .content_type_value()
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/") {
        return find_sdp_part(body, &content_type).unwrap_or(body);
    }
    body
}

/// Messages with a body and a Content-Type.
pub trait HasBody {
    /// The body.
    fn body_bytes(&self) -> &[u8];
    /// The Content-Type value.
    fn content_type_value(&self) -> Option<&str>;
}

impl HasBody for Request {
    fn body_bytes(&self) -> &[u8] {
        self.body()
    }
    fn content_type_value(&self) -> Option<&str> {
        self.content_type()
    }
}

impl HasBody for Response {
    fn body_bytes(&self) -> &[u8] {
        self.body()
    }
    fn content_type_value(&self) -> Option<&str> {
        self.content_type()
    }
}

fn find_sdp_part<'a>(body: &'a [u8], content_type: &str) -> Option<&'a [u8]> {
    let boundary = content_type
        .split(';')
        .filter_map(|param| param.trim().strip_prefix("boundary="))
        .next()?
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let text = std::str::from_utf8(body).ok()?;
    for part in text.split(delimiter.as_str()).skip(1) {
        let (headers, content) = part.split_once("\r\n\r\n")?;
        if headers.to_ascii_lowercase().contains("application/sdp") {
            let start = content.as_ptr() as usize - text.as_ptr() as usize;
            let end = start + content.trim_end_matches("\r\n").len();
            return body.get(start..end);
        }
    }
    None
}
