//! Bridged transfers (B2BUA): voxgate calls the transfer destination itself (the agent leg, a
//! UAC dialog of its own), plays ringback to the caller while it rings, and on answer relays
//! RTP between the two legs.
//!
//! ```text
//!  start_bridge ─AllocateAgentMedia─> AwaitingMedia ─ports─> Calling (INVITE, ringback)
//!  AwaitingMedia ─ports, next hop a name─> Locating (LocateAgentLeg, ringback) ─targets─> Calling
//!  Calling ─1xx─> Calling (ringing) ─2xx─> ACK, Confirmed (Connect: speech closed, relay)
//!  Calling ─401/407─> INVITE again (CSeq + 1, same Call-ID and From tag, credentials)
//!  Calling ─503, or 8·T1 without any response; a target left─> INVITE to the next target
//!  Calling ─300..699─> Terminated: Failed{status}    Calling ─Timer B─> Failed{408}
//!  Calling ─transfer timeout / caller gone─> Cancelling: CANCEL (once a 1xx came), TimedOut
//!  Cancelling ─487 (any final)─> Terminated         Cancelling ─2xx─> ACK, BYE: Ending
//!  Confirmed ─BYE from the agent─> Terminated; the caller gets BYE (call Completed)
//!  Confirmed ─caller's BYE / voxgate hangs up─> Ending (BYE) ─answered / Timer F─> Terminated
//! ```
//! RFC 3261 §8.1 / §13.2 for the INVITE: Request-URI and To are the destination, From is the
//! caller's identity with voxgate's own tag (caller-ID passthrough), a new Call-ID, voxgate's
//! Contact, an SDP offer of the caller's codec only (the legs are relayed untranscoded) plus
//! telephone-event. It goes through the trunk's outbound proxy when there is one (a loose
//! Route), else to the destination's host. The agent leg's dialog (§12.1.2) is registered with
//! the switchboard like the caller's, so the agent's in-dialog requests reach the [`Call`].
//!
//! RFC 3263 for that next hop: an IP address is used as it is; a name is located by `io/`
//! (SRV when the URI has no port, then A/AAAA), and the INVITE goes to the first target. A
//! `503`, or no response at all within 8·T1 (the silent server's INVITE is abandoned: no CANCEL
//! without a response, §9.1), moves it to the next target with a new INVITE (§4.3), as long as
//! the transfer's time lasts; the lookup counts toward that time. Every retransmission, and the
//! CANCEL, go to the target of their INVITE.
//!
//! The media side (`io/agent_media.rs`) takes [`AgentLegCommand`]s: ringback while the agent
//! rings, the relay once it answers, the ports' release when the bridge fails.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::transfer::BridgeResult;
use super::{sdp_body, Call, Ctx, MediaCommand, MediaParams, Output, RequestFailure, SentAuth};
use crate::media::sdp::{LocalMedia, Negotiator};
use crate::media::G711;
use crate::metrics::CallResult;
use crate::sip::auth::DigestClient;
use crate::sip::dialog::{Dialog, DialogId, OutgoingRequest, UacSetup};
use crate::sip::endpoint::{
    uri_host_and_port, uri_host_port, ClientTxId, ConnectionId, Flow, ServerTxId, ALLOW,
};
use crate::sip::locate::Target;
use crate::sip::message::{self, Request, Response, Transport};

/// What the media task does with the agent leg.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentLegCommand {
    /// The destination is being called: the caller hears ringback instead of the assistant.
    Ringback,
    /// The destination answered with these media (again after a re-INVITE from it): close the
    /// speech session (a normal end) and relay RTP between the caller and the agent leg.
    Connect(MediaParams),
    /// The bridge failed: stop the ringback and release the agent leg's ports; the caller is
    /// back with the assistant.
    Release,
}

/// Where the agent leg is.
#[derive(Debug, Clone)]
enum LegState {
    /// An RTP/RTCP port pair was asked of `io/`.
    AwaitingMedia,
    /// The next hop is a name: `io/` was asked for its targets (RFC 3263).
    Locating {
        /// The transfer timeout (it covers the lookup too).
        deadline: Instant,
    },
    /// INVITE sent, no final response yet.
    Calling {
        tx: ClientTxId,
        sent: SentAuth,
        /// A provisional response arrived (a CANCEL may be sent, §9.1).
        ringing: bool,
        /// The transfer timeout: CANCEL then.
        deadline: Instant,
        /// While nothing at all came back and another target is left: when to give this
        /// target up ([`SILENT_SERVER_T1`] · T1 after the INVITE).
        failover_at: Option<Instant>,
    },
    /// The INVITE is being cancelled; its final response (normally 487) is awaited.
    Cancelling {
        tx: ClientTxId,
        /// The CANCEL went out (it waits for a provisional response when none came yet).
        cancel_sent: bool,
        /// Give up on the INVITE then (64·T1, RFC 3261 §9.1's Timer C stand-in).
        deadline: Instant,
    },
    /// Answered and ACKed: the legs are joined.
    Confirmed,
    /// BYE sent; its answer is awaited.
    Ending { bye: ClientTxId, sent: SentAuth },
    /// Over.
    Terminated,
}

/// The agent leg of a bridged transfer: voxgate's UAC side of a call to the destination.
#[derive(Debug)]
pub struct AgentLeg {
    state: LegState,
    /// Toward the destination (or the outbound proxy): transport, the local address and the
    /// current target.
    flow: Flow,
    /// The caller's leg's flow (a TCP connection to the same peer is reused).
    caller_flow: Flow,
    /// The next hop's host (the outbound proxy's, else the destination's) and its port when the
    /// URI names one.
    next_hop: (String, Option<u16>),
    /// Where the INVITE may go, in order (RFC 3263); empty until located.
    targets: Vec<Target>,
    /// The target `flow` points at.
    target: usize,
    request_uri: String,
    /// The trunk's outbound proxy as a loose Route.
    route: Option<String>,
    /// voxgate's From (the caller's identity with voxgate's tag).
    from: String,
    local_tag: String,
    to: String,
    call_id: String,
    local_contact: String,
    /// Headers the transfer asked for (summary, announce).
    headers: Vec<(&'static str, String)>,
    /// The INVITE's CSeq (the next one after a challenge).
    cseq: u32,
    codec: G711,
    ptime: Duration,
    negotiator: Option<Negotiator>,
    digest: Option<DigestClient>,
    dialog: Option<Dialog>,
    /// The ACK of the 2xx, sent again when the 2xx is (its ACK was lost).
    ack: Option<OutgoingRequest>,
    /// The agent's re-INVITE whose 2xx awaits its ACK.
    awaiting_ack: Option<ServerTxId>,
    /// The dialog to register with the switchboard (once, at answer).
    new_dialog: Option<DialogId>,
}

impl AgentLeg {
    /// Whether the leg is over (nothing of it is left in flight).
    pub fn is_terminated(&self) -> bool {
        matches!(self.state, LegState::Terminated)
    }

    /// Whether the leg (unless over) reaches its destination over TCP connection `id` or to
    /// `peer`.
    pub fn uses_connection(&self, id: ConnectionId, peer: SocketAddr) -> bool {
        !self.is_terminated() && self.flow.rides(id, peer)
    }

    /// Whether the legs are joined.
    pub fn is_confirmed(&self) -> bool {
        matches!(self.state, LegState::Confirmed)
    }

    /// The agent leg's Call-ID (its in-dialog requests and ACKs carry it).
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// When [`Call::handle_timeout`] must run for this leg.
    fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            LegState::Calling {
                deadline,
                failover_at,
                ..
            } => Some(failover_at.map_or(deadline, |at| at.min(deadline))),
            LegState::Locating { deadline } | LegState::Cancelling { deadline, .. } => {
                Some(deadline)
            }
            _ => None,
        }
    }

    /// Lays out the INVITE (out of dialog: §8.1.1) with the next CSeq.
    fn invite(&mut self) -> OutgoingRequest {
        self.cseq = self.cseq.wrapping_add(1) & 0x7fff_ffff;
        let mut headers: Vec<(&'static str, String)> = Vec::new();
        if let Some(route) = &self.route {
            headers.push(("Route", route.clone()));
        }
        headers.push(("From", self.from.clone()));
        headers.push(("To", self.to.clone()));
        headers.push(("Call-ID", self.call_id.clone()));
        headers.push(("CSeq", format!("{} INVITE", self.cseq)));
        headers.push(("Contact", format!("<{}>", self.local_contact)));
        headers.push(("Max-Forwards", "70".to_owned()));
        headers.push(("Allow", ALLOW.to_owned()));
        headers.extend(self.headers.iter().cloned());
        OutgoingRequest {
            method: "INVITE".to_owned(),
            request_uri: self.request_uri.clone(),
            headers,
            cseq: self.cseq,
        }
    }

    /// Sends the INVITE (first, or again after a challenge) with the credentials held.
    fn send_invite(&mut self, ctx: &mut Ctx<'_>, retries: u8) -> (ClientTxId, SentAuth) {
        let mut request = self.invite();
        let sdp = match self.negotiator.as_mut() {
            Some(negotiator) => negotiator.create_offer(),
            None => Bytes::new(),
        };
        let auth = match self.digest.as_mut() {
            Some(client) => client.authorize("INVITE", &request.request_uri, &sdp),
            None => Vec::new(),
        };
        request
            .headers
            .extend(auth.iter().map(|h| (h.name, h.value.clone())));
        let tx = ctx.endpoint.send_request_to_flow(
            ctx.now,
            &self.flow,
            &request,
            Some(("application/sdp", sdp)),
        );
        let sent = SentAuth {
            headers: auth,
            retries,
        };
        (tx, sent)
    }

    /// Points the leg's flow at target `index` (a TCP connection the caller's leg has to the
    /// same peer is reused).
    fn point_at(&mut self, index: usize) {
        let Some(target) = self.targets.get(index) else {
            return;
        };
        self.target = index;
        self.flow.remote = target.address;
        self.flow.connection = (self.flow.remote == self.caller_flow.remote
            && self.flow.transport == self.caller_flow.transport)
            .then_some(self.caller_flow.connection)
            .flatten();
    }

    /// Sends the first INVITE to the first target: → Calling, until `deadline`.
    fn start_calling(&mut self, ctx: &mut Ctx<'_>, deadline: Instant) -> ClientTxId {
        self.point_at(0);
        if let Some(target) = self.targets.first() {
            tracing::debug!(target = %target.address, origin = %target.origin, "sending the INVITE");
        }
        self.call_target(ctx, deadline)
    }

    /// Sends a new INVITE (no credentials yet: the server may be another) to the current
    /// target: → Calling.
    fn call_target(&mut self, ctx: &mut Ctx<'_>, deadline: Instant) -> ClientTxId {
        if let Some(digest) = self.digest.as_mut() {
            digest.reset();
        }
        let (tx, sent) = self.send_invite(ctx, 0);
        let failover_at = (self.target + 1 < self.targets.len())
            .then(|| ctx.now + ctx.endpoint.config().timers.t1 * SILENT_SERVER_T1);
        self.state = LegState::Calling {
            tx,
            sent,
            ringing: false,
            deadline,
            failover_at,
        };
        tx
    }

    /// RFC 3263 §4.3: the INVITE's server is unavailable (`why`: a 503, or nothing at all).
    /// While the transfer's time lasts and a target is left, sends a new INVITE (CSeq + 1, the
    /// same Call-ID and From tag, a new branch) to the next one and returns its transaction.
    fn fail_over(&mut self, ctx: &mut Ctx<'_>, why: &str) -> Option<ClientTxId> {
        let LegState::Calling { deadline, .. } = self.state else {
            return None;
        };
        let next = self.targets.get(self.target + 1)?;
        if ctx.now >= deadline {
            return None;
        }
        let failed = self.flow.remote;
        tracing::warn!(
            server = %failed,
            next = %next.address,
            origin = %next.origin,
            "transfer destination's server {failed} {why}; trying the next one"
        );
        self.point_at(self.target + 1);
        Some(self.call_target(ctx, deadline))
    }

    /// Builds the UAC dialog from the 2xx and ACKs it (§13.2.2.4), with the INVITE's
    /// credentials.
    fn confirm(&mut self, ctx: &mut Ctx<'_>, response: &Response, sent: &SentAuth) {
        if self.dialog.is_none() {
            let dialog = Dialog::new_uac(UacSetup {
                call_id: self.call_id.clone(),
                from: self.from.clone(),
                local_tag: self.local_tag.clone(),
                to: response.to().to_owned(),
                remote_tag: response.to_tag().unwrap_or_default().to_owned(),
                local_seq: self.cseq,
                // Without a Contact the request goes where the INVITE went.
                remote_target: response
                    .contact_uri()
                    .unwrap_or_else(|| self.request_uri.clone()),
                record_route: response.record_route(),
                local_contact: self.local_contact.clone(),
            });
            self.new_dialog = Some(dialog.id().clone());
            self.dialog = Some(dialog);
        }
        let Some(dialog) = self.dialog.as_ref() else {
            return;
        };
        let mut ack = dialog.ack_for(self.cseq);
        ack.headers
            .extend(sent.headers.iter().map(|h| (h.name, h.value.clone())));
        ctx.endpoint.send_ack(&self.flow, &ack);
        self.ack = Some(ack);
    }

    /// Sends BYE in the agent leg's dialog: → Ending.
    fn send_bye(&mut self, ctx: &mut Ctx<'_>, retries: u8) {
        let Some(dialog) = self.dialog.as_mut() else {
            self.state = LegState::Terminated;
            return;
        };
        let mut bye = dialog.next_request("BYE");
        dialog.terminate();
        let auth = match self.digest.as_mut() {
            Some(client) => client.authorize("BYE", &bye.request_uri, &[]),
            None => Vec::new(),
        };
        bye.headers
            .extend(auth.iter().map(|h| (h.name, h.value.clone())));
        let bye_tx = ctx.endpoint.send_request(ctx.now, &self.flow, &bye, None);
        self.state = LegState::Ending {
            bye: bye_tx,
            sent: SentAuth {
                headers: auth,
                retries,
            },
        };
    }

    /// Stops the leg from voxgate's side: CANCEL while it rings, BYE once answered. Returns the
    /// client transaction started (CANCEL or BYE), if any.
    fn stop(&mut self, ctx: &mut Ctx<'_>) -> Option<ClientTxId> {
        match std::mem::replace(&mut self.state, LegState::Terminated) {
            LegState::AwaitingMedia | LegState::Locating { .. } | LegState::Terminated => None,
            LegState::Calling { tx, ringing, .. } => {
                // §9.1: a CANCEL only after a provisional response; until then it waits.
                let cancel = if ringing {
                    ctx.endpoint.send_cancel(ctx.now, tx)
                } else {
                    None
                };
                self.state = LegState::Cancelling {
                    tx,
                    cancel_sent: cancel.is_some(),
                    deadline: ctx.now + ctx.endpoint.config().timers.t1 * 64,
                };
                cancel
            }
            LegState::Confirmed => {
                self.send_bye(ctx, 0);
                leg_bye(self)
            }
            state @ (LegState::Cancelling { .. } | LegState::Ending { .. }) => {
                self.state = state;
                None
            }
        }
    }
}

impl Call {
    /// Starts calling `target` (a SIP URI) for a bridged transfer, with `headers` added to the
    /// INVITE; the outcome goes to [`Call::bridge_result`].
    pub(super) fn start_bridge(
        &mut self,
        ctx: &mut Ctx<'_>,
        target: &str,
        headers: Vec<(&'static str, String)>,
    ) {
        let _entered = self.span.clone().entered();
        if self
            .agent_leg
            .as_ref()
            .is_some_and(|leg| !leg.is_terminated())
        {
            tracing::warn!(target, "a bridged transfer is already under way");
            self.bridge_result(ctx, BridgeResult::failed(491, "Request Pending"));
            return;
        }
        let Some(codec) = self.negotiated_codec().filter(|_| self.is_answered()) else {
            self.bridge_result(ctx, BridgeResult::failed(480, "Call Not Answered"));
            return;
        };
        if uri_host_port(target).is_none() {
            tracing::warn!(target, "transfer destination is not a SIP URI");
            self.bridge_result(ctx, BridgeResult::failed(404, "Bad Destination"));
            return;
        }
        // The next hop: the outbound proxy, else the destination. An IP literal is its only
        // target; a name is located once the ports are bound (RFC 3263). The local address is
        // the one facing the PBX (the destination is normally the PBX's or beside it).
        let next_hop_uri = self.outbound_proxy.as_deref().unwrap_or(target);
        let next_hop = uri_host_and_port(next_hop_uri)
            .or_else(|| uri_host_and_port(target))
            .unwrap_or_default();
        let targets = match next_hop.0.parse::<IpAddr>() {
            Ok(ip) => vec![Target {
                address: SocketAddr::new(ip, next_hop.1.unwrap_or(5060)),
                origin: next_hop.0.clone(),
            }],
            Err(_) => Vec::new(),
        };
        let transport = if next_hop_uri.to_ascii_lowercase().contains(";transport=tcp") {
            Transport::Tcp
        } else {
            self.flow.transport
        };
        let flow = Flow {
            transport,
            remote: self.flow.remote,
            local: self.flow.local,
            connection: None,
        };
        let local_tag = message::new_tag();
        let transport_param = match transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
        };
        let advertised = ctx.endpoint.advertised(&flow);
        let ptime = self
            .negotiator
            .as_ref()
            .and_then(|n| n.negotiated())
            .map_or(ctx.config.ptime, |n| n.ptime);
        tracing::info!(target, "calling the transfer destination (bridge)");
        self.agent_leg = Some(AgentLeg {
            state: LegState::AwaitingMedia,
            flow,
            caller_flow: self.flow,
            next_hop,
            targets,
            target: 0,
            request_uri: target.to_owned(),
            route: self
                .outbound_proxy
                .as_deref()
                .map(crate::sip::registration::loose_route),
            from: format!("{};tag={local_tag}", without_tag(self.dialog.remote_uri())),
            local_tag,
            to: format!("<{target}>"),
            call_id: message::new_call_id(&advertised),
            local_contact: format!("sip:voxgate@{advertised}{transport_param}"),
            headers,
            cseq: rand::random::<u32>() & 0x0fff_ffff,
            codec,
            ptime,
            negotiator: None,
            digest: self.digest.clone().map(|mut client| {
                // The destination may be another server: no credentials before it asks.
                client.reset();
                client
            }),
            dialog: None,
            ack: None,
            awaiting_ack: None,
            new_dialog: None,
        });
        ctx.outputs.push_back(Output::AllocateAgentMedia {
            call: self.key,
            local_ip: self.flow.local.ip(),
        });
    }

    /// `io/` bound (or failed to bind) the agent leg's RTP/RTCP ports: send the INVITE and
    /// start the ringback.
    pub fn handle_agent_media_allocated(
        &mut self,
        ctx: &mut Ctx<'_>,
        local_rtp: Result<SocketAddr, String>,
    ) {
        let _entered = self.span.clone().entered();
        let Some(leg) = self.agent_leg.as_mut() else {
            return;
        };
        if !matches!(leg.state, LegState::AwaitingMedia) {
            return;
        }
        let local_rtp = match local_rtp {
            Ok(address) => address,
            Err(reason) => {
                tracing::error!(%reason, "no RTP port for the transfer destination");
                self.fail_bridge(ctx, BridgeResult::failed(503, "Service Unavailable"));
                return;
            }
        };
        let sdp_ip = ctx.config.public_ip.unwrap_or(local_rtp.ip());
        let mut local = LocalMedia::new(sdp_ip, local_rtp.port());
        local.ptime = leg.ptime;
        local.offer_codecs = vec![leg.codec];
        leg.negotiator = Some(Negotiator::new(local));
        if leg.targets.is_empty() {
            leg.state = LegState::Locating {
                deadline: ctx.now + ctx.config.transfer.timeout(),
            };
            ctx.outputs.push_back(Output::LocateAgentLeg {
                call: self.key,
                host: leg.next_hop.0.clone(),
                port: leg.next_hop.1,
                transport: leg.flow.transport,
            });
        } else {
            let tx = leg.start_calling(ctx, ctx.now + ctx.config.transfer.timeout());
            self.started_requests.push(tx);
        }
        ctx.outputs.push_back(Output::Media {
            call: self.key,
            command: MediaCommand::AgentLeg(AgentLegCommand::Ringback),
        });
    }

    /// `io/` located the agent leg's next hop (RFC 3263): the INVITE goes to the first target
    /// of the local address's family; with none, the bridge fails (503).
    pub fn handle_agent_leg_located(
        &mut self,
        ctx: &mut Ctx<'_>,
        located: Result<Vec<Target>, String>,
    ) {
        let _entered = self.span.clone().entered();
        let Some(leg) = self.agent_leg.as_mut() else {
            return;
        };
        let LegState::Locating { deadline } = leg.state else {
            return;
        };
        let host = leg.next_hop.0.clone();
        let ipv4 = leg.flow.local.is_ipv4();
        let located = located.and_then(|targets| {
            let usable: Vec<Target> = targets
                .into_iter()
                .filter(|target| target.address.is_ipv4() == ipv4)
                .collect();
            if usable.is_empty() {
                Err(format!(
                    "no address of the family of voxgate's address {}",
                    leg.flow.local.ip()
                ))
            } else {
                Ok(usable)
            }
        });
        match located {
            Ok(targets) => {
                tracing::info!(
                    %host,
                    servers = ?targets
                        .iter()
                        .map(|t| format!("{} ({})", t.address, t.origin))
                        .collect::<Vec<_>>(),
                    "transfer destination located"
                );
                leg.targets = targets;
                let tx = leg.start_calling(ctx, deadline);
                self.started_requests.push(tx);
            }
            Err(why) => {
                tracing::warn!(%host, "cannot locate the transfer destination: {why}");
                self.fail_bridge(ctx, BridgeResult::failed(503, "Service Unavailable"));
            }
        }
    }

    /// Dialogs this call opened since the last call (the agent leg's, once answered), for the
    /// switchboard's dialog table.
    pub fn take_new_dialogs(&mut self) -> Vec<DialogId> {
        self.agent_leg
            .as_mut()
            .and_then(|leg| leg.new_dialog.take())
            .into_iter()
            .collect()
    }

    /// Whether `call_id` is the agent leg's (an in-dialog request or ACK from the agent).
    pub(super) fn is_agent_leg(&self, call_id: &str) -> bool {
        self.agent_leg
            .as_ref()
            .is_some_and(|leg| leg.call_id == call_id)
    }

    fn negotiated_codec(&self) -> Option<G711> {
        Some(self.negotiator.as_ref()?.negotiated()?.codec)
    }

    /// The bridge failed with nothing left in flight: the leg is over, its ports are released
    /// (the ringback stops) and the transfer learns `result`.
    fn fail_bridge(&mut self, ctx: &mut Ctx<'_>, result: BridgeResult) {
        if let Some(leg) = self.agent_leg.as_mut() {
            leg.state = LegState::Terminated;
        }
        self.release_agent_media(ctx);
        self.bridge_result(ctx, result);
    }

    fn release_agent_media(&mut self, ctx: &mut Ctx<'_>) {
        ctx.outputs.push_back(Output::Media {
            call: self.key,
            command: MediaCommand::AgentLeg(AgentLegCommand::Release),
        });
    }

    /// The agent leg's client transactions' responses; false when `tx` is not the agent leg's.
    pub(super) fn handle_agent_leg_response(
        &mut self,
        ctx: &mut Ctx<'_>,
        tx: ClientTxId,
        response: &Response,
    ) -> bool {
        let Some(leg) = self.agent_leg.as_mut() else {
            return false;
        };
        let status = response.status();
        match leg.state.clone() {
            LegState::Calling {
                tx: invite,
                sent,
                ringing,
                deadline,
                ..
            } if invite == tx => match status {
                100..=199 => {
                    if !ringing && status > 100 {
                        tracing::info!(status, "transfer destination ringing");
                    }
                    leg.state = LegState::Calling {
                        tx,
                        sent,
                        ringing: ringing || status > 100,
                        deadline,
                        failover_at: None,
                    };
                }
                200..=299 => {
                    leg.confirm(ctx, response, &sent);
                    let answer = leg
                        .negotiator
                        .as_mut()
                        .map(|negotiator| negotiator.handle_answer(sdp_body(response)));
                    match answer {
                        Some(Ok(negotiated)) if negotiated.codec == leg.codec => {
                            leg.state = LegState::Confirmed;
                            tracing::info!(
                                remote_rtp = ?negotiated.remote_rtp,
                                "transfer destination answered; joining the legs"
                            );
                            let params = MediaParams::from_negotiated(&negotiated);
                            ctx.outputs.push_back(Output::Media {
                                call: self.key,
                                command: MediaCommand::AgentLeg(AgentLegCommand::Connect(params)),
                            });
                            self.bridge_result(ctx, BridgeResult::Answered);
                        }
                        _ => {
                            tracing::warn!("transfer destination's SDP answer is unusable; BYE");
                            leg.send_bye(ctx, 0);
                            self.started_requests.extend(leg_bye(leg));
                            self.release_agent_media(ctx);
                            self.bridge_result(
                                ctx,
                                BridgeResult::failed(488, "Not Acceptable Here"),
                            );
                        }
                    }
                }
                _ => {
                    if let Some(retries) =
                        super::challenge_answer(leg.digest.as_mut(), "INVITE", response, &sent)
                    {
                        let (tx, sent) = leg.send_invite(ctx, retries);
                        leg.state = LegState::Calling {
                            tx,
                            sent,
                            ringing,
                            deadline,
                            failover_at: None,
                        };
                        self.started_requests.push(tx);
                        return true;
                    }
                    if status == 503 {
                        if let Some(tx) = leg.fail_over(ctx, "is unavailable (503)") {
                            self.started_requests.push(tx);
                            return true;
                        }
                    }
                    let reason = response.reason().to_owned();
                    tracing::info!(status, %reason, "transfer destination refused the call");
                    self.fail_bridge(ctx, BridgeResult::Failed { status, reason });
                }
            },
            LegState::Cancelling {
                tx: invite,
                cancel_sent,
                deadline,
            } if invite == tx => match status {
                100..=199 => {
                    if !cancel_sent {
                        let cancel = ctx.endpoint.send_cancel(ctx.now, tx);
                        self.started_requests.extend(cancel);
                        leg.state = LegState::Cancelling {
                            tx,
                            cancel_sent: cancel.is_some(),
                            deadline,
                        };
                    }
                }
                200..=299 => {
                    // §9.1: the answer crossed the CANCEL; the call is up, so end it.
                    tracing::info!("transfer destination answered after CANCEL; BYE");
                    leg.confirm(ctx, response, &SentAuth::default());
                    leg.send_bye(ctx, 0);
                    self.started_requests.extend(leg_bye(leg));
                }
                _ => {
                    tracing::debug!(status, "cancelled INVITE to the transfer destination ended");
                    leg.state = LegState::Terminated;
                }
            },
            LegState::Ending { bye, sent } if bye == tx && status >= 200 => {
                if let Some(retries) =
                    super::challenge_answer(leg.digest.as_mut(), "BYE", response, &sent)
                {
                    if let Some(dialog) = leg.dialog.as_mut() {
                        // The dialog is terminated, but its BYE may still be sent again.
                        let mut bye = dialog.next_request("BYE");
                        let auth = match leg.digest.as_mut() {
                            Some(client) => client.authorize("BYE", &bye.request_uri, &[]),
                            None => Vec::new(),
                        };
                        bye.headers
                            .extend(auth.iter().map(|h| (h.name, h.value.clone())));
                        let tx = ctx.endpoint.send_request(ctx.now, &leg.flow, &bye, None);
                        leg.state = LegState::Ending {
                            bye: tx,
                            sent: SentAuth {
                                headers: auth,
                                retries,
                            },
                        };
                        self.started_requests.push(tx);
                        return true;
                    }
                }
                tracing::debug!(status, "transfer destination's BYE answered");
                leg.state = LegState::Terminated;
            }
            _ if leg.call_id != response.call_id() => return false,
            _ => {
                let is_invite = response.cseq().method.to_string() == "INVITE";
                if is_invite && (200..300).contains(&status) {
                    // The 2xx again: our ACK was lost (§13.2.2.4).
                    if let Some(ack) = leg.ack.as_ref() {
                        ctx.endpoint.send_ack(&leg.flow, ack);
                        return true;
                    }
                }
                // A CANCEL's own response, or a late one: nothing to do.
            }
        }
        true
    }

    /// A request of the agent leg got no answer (Timer B / F); false when not the leg's.
    pub(super) fn handle_agent_leg_request_failure(
        &mut self,
        ctx: &mut Ctx<'_>,
        tx: ClientTxId,
        failure: RequestFailure,
    ) -> bool {
        let Some(leg) = self.agent_leg.as_mut() else {
            return false;
        };
        match (leg.state.clone(), failure) {
            (LegState::Calling { tx: invite, .. }, RequestFailure::TimedOut) if invite == tx => {
                tracing::warn!("transfer destination did not answer the INVITE (Timer B)");
                self.fail_bridge(ctx, BridgeResult::failed(408, "Request Timeout"));
                true
            }
            (LegState::Calling { tx: invite, .. }, RequestFailure::Transport) if invite == tx => {
                // RFC 3261 §8.1.3.1: as a 503 from that server, so the next one is tried
                // (RFC 3263 §4.3).
                if let Some(next) = leg.fail_over(ctx, "could not be reached") {
                    self.started_requests.push(next);
                    return true;
                }
                tracing::warn!(
                    server = %leg.flow.remote,
                    "the transfer destination's server could not be reached"
                );
                self.fail_bridge(ctx, BridgeResult::failed(503, "Service Unavailable"));
                true
            }
            (LegState::Cancelling { tx: invite, .. }, _) if invite == tx => {
                leg.state = LegState::Terminated;
                true
            }
            (LegState::Ending { bye, .. }, _) if bye == tx => {
                tracing::warn!("transfer destination's BYE {}", failure.words());
                leg.state = LegState::Terminated;
                true
            }
            _ => false,
        }
    }

    /// When the agent leg's timers need [`Call::handle_timeout`].
    pub(super) fn agent_leg_timeout(&self) -> Option<Instant> {
        self.agent_leg.as_ref()?.poll_timeout()
    }

    /// The transfer timeout (the destination rang too long: CANCEL) and the CANCEL's give-up.
    pub(super) fn handle_agent_leg_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let Some(leg) = self.agent_leg.as_mut() else {
            return;
        };
        match leg.state {
            LegState::Calling { deadline, .. } if ctx.now >= deadline => {
                tracing::info!(
                    timeout_secs = ctx.config.transfer.timeout().as_secs(),
                    "transfer destination did not answer in time; cancelling"
                );
                let cancel = leg.stop(ctx);
                self.started_requests.extend(cancel);
                self.release_agent_media(ctx);
                self.bridge_result(ctx, BridgeResult::TimedOut);
            }
            LegState::Calling {
                tx,
                failover_at: Some(at),
                ..
            } if ctx.now >= at => {
                // Not even a 100 Trying (RFC 3261 §17.2.1: within 200 ms of the INVITE): the
                // server is down or unreachable. No CANCEL without a response (§9.1).
                let seconds = (ctx.endpoint.config().timers.t1 * SILENT_SERVER_T1).as_secs_f64();
                let why = format!("did not answer the INVITE within {seconds} s");
                match leg.fail_over(ctx, &why) {
                    Some(next) => {
                        ctx.endpoint.abandon_client(tx);
                        self.started_requests.push(next);
                    }
                    None => {
                        if let LegState::Calling { failover_at, .. } = &mut leg.state {
                            *failover_at = None;
                        }
                    }
                }
            }
            LegState::Locating { deadline } if ctx.now >= deadline => {
                tracing::warn!(
                    host = %leg.next_hop.0,
                    "the transfer destination could not be located in time"
                );
                self.fail_bridge(ctx, BridgeResult::TimedOut);
            }
            LegState::Cancelling { deadline, .. } if ctx.now >= deadline => {
                tracing::warn!("cancelled INVITE to the transfer destination never ended");
                leg.state = LegState::Terminated;
            }
            _ => {}
        }
    }

    /// The caller's leg ends (either side hung up, or voxgate did): CANCEL or BYE the agent.
    pub(super) fn end_agent_leg(&mut self, ctx: &mut Ctx<'_>) {
        let Some(leg) = self.agent_leg.as_mut() else {
            return;
        };
        let ringing = matches!(
            leg.state,
            LegState::Calling { .. } | LegState::AwaitingMedia | LegState::Locating { .. }
        );
        if ringing {
            tracing::info!("caller gone while the transfer destination rings; cancelling");
        }
        let started = leg.stop(ctx);
        self.started_requests.extend(started);
    }

    /// An in-dialog request from the agent (BYE, re-INVITE/UPDATE refresh, OPTIONS, INFO).
    pub(super) fn handle_agent_leg_request(
        &mut self,
        ctx: &mut Ctx<'_>,
        tx: ServerTxId,
        request: &Request,
    ) {
        let Some(leg) = self.agent_leg.as_mut() else {
            return;
        };
        let method = request.method().to_string();
        let contact = request.contact_uri();
        let checked = match leg.dialog.as_mut() {
            Some(dialog) => dialog
                .handle_request(&method, request.cseq().seq, contact.as_deref())
                .map_err(|error| error.status()),
            None => Err(481),
        };
        let (local_tag, contact) = (leg.local_tag.clone(), format!("<{}>", leg.local_contact));
        let respond = |ctx: &mut Ctx<'_>, status: u16, headers: &[(&str, &str)], sdp| {
            let mut builder = message::response(request, status)
                .to_tag(&local_tag)
                .header("Server", &ctx.config.user_agent);
            for (name, value) in headers {
                builder = builder.header(name, *value);
            }
            if let Some(sdp) = sdp {
                builder = builder.body("application/sdp", sdp);
            }
            ctx.endpoint.respond(ctx.now, tx, status, builder.build());
        };
        if let Err(status) = checked {
            respond(ctx, status, &[], None);
            return;
        }
        match method.as_str() {
            "BYE" => {
                respond(ctx, 200, &[], None);
                if leg.is_confirmed() {
                    tracing::info!("transfer destination hung up; ending the call");
                    leg.state = LegState::Terminated;
                    if let Some(dialog) = leg.dialog.as_mut() {
                        dialog.terminate();
                    }
                    self.hang_up(
                        ctx,
                        "the transfer destination hung up",
                        CallResult::Completed,
                    );
                } else {
                    leg.state = LegState::Terminated;
                }
            }
            "INVITE" | "UPDATE" => {
                let Some(negotiator) = leg.negotiator.as_mut() else {
                    respond(ctx, 500, &[], None);
                    return;
                };
                let answer = if request.body().is_empty() {
                    // A session refresh: the current session again (an offer-less re-INVITE
                    // gets it as an offer; its answer in the ACK changes nothing here).
                    (method == "INVITE").then(|| negotiator.create_offer())
                } else {
                    match negotiator.handle_offer(sdp_body(request)) {
                        Ok((answer, negotiated)) => {
                            let params = MediaParams::from_negotiated(&negotiated);
                            ctx.outputs.push_back(Output::Media {
                                call: self.key,
                                command: MediaCommand::AgentLeg(AgentLegCommand::Connect(params)),
                            });
                            Some(answer)
                        }
                        Err(error) => {
                            respond(ctx, error.status(), &[], None);
                            return;
                        }
                    }
                };
                let headers = [("Contact", contact.as_str()), ("Allow", ALLOW)];
                respond(ctx, 200, &headers, answer);
                if method == "INVITE" {
                    leg.awaiting_ack = Some(tx);
                }
            }
            "OPTIONS" | "INFO" => respond(ctx, 200, &[("Allow", ALLOW)], None),
            _ => respond(ctx, 405, &[("Allow", ALLOW)], None),
        }
    }

    /// An ACK in the agent leg's dialog (for the 2xx to its re-INVITE).
    pub(super) fn handle_agent_leg_ack(&mut self, ctx: &mut Ctx<'_>, ack: &Request) {
        let Some(leg) = self.agent_leg.as_mut() else {
            return;
        };
        if let Some(invite) = leg.awaiting_ack.take() {
            ctx.endpoint.handle_2xx_ack(ctx.now, invite);
        }
        if let Some(negotiator) = leg.negotiator.as_mut() {
            if negotiator.is_offer_pending() {
                if ack.body().is_empty() {
                    negotiator.withdraw_offer();
                } else if let Ok(negotiated) = negotiator.handle_answer(sdp_body(ack)) {
                    let params = MediaParams::from_negotiated(&negotiated);
                    ctx.outputs.push_back(Output::Media {
                        call: self.key,
                        command: MediaCommand::AgentLeg(AgentLegCommand::Connect(params)),
                    });
                }
            }
        }
    }
}

/// A server that sends nothing back, not even 100 Trying, for this many T1 after the INVITE (4 s
/// at the default T1: the INVITE went out four times over UDP) is given up for the next target.
const SILENT_SERVER_T1: u32 = 8;

/// The BYE the leg just sent, if it did.
fn leg_bye(leg: &AgentLeg) -> Option<ClientTxId> {
    match leg.state {
        LegState::Ending { bye, .. } => Some(bye),
        _ => None,
    }
}

/// A From/To header value without its `tag` parameter.
fn without_tag(header: &str) -> String {
    let (addr, params) = match header.rfind('>') {
        Some(end) => header.split_at(end + 1),
        None => match header.find(';') {
            Some(start) => header.split_at(start),
            None => (header, ""),
        },
    };
    let kept: String = params
        .split(';')
        .map(str::trim)
        .filter(|param| !param.is_empty() && !param.to_ascii_lowercase().starts_with("tag="))
        .map(|param| format!(";{param}"))
        .collect();
    format!("{}{kept}", addr.trim())
}

#[cfg(test)]
mod tests;
