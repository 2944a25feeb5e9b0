//! The switchboard: voxgate's SIP transaction user. It owns the [`Endpoint`] and the table of
//! [`Call`]s, admits or refuses new INVITEs (trunk, capacity, drain, session timer), answers
//! out-of-dialog OPTIONS, and hands in-dialog traffic to the call it belongs to.
//!
//! Admission: a source in a trunk's `allow_from` gets that trunk; any other source is refused
//! with 403, unless some trunk has digest users ([`InboundAuth`]): then the INVITE is challenged
//! (401) and its retry admitted on the trunk its user belongs to, or refused (403, 400). The ACK
//! of a 401/403 is absorbed by the INVITE server transaction. Only new INVITEs are checked:
//! OPTIONS keepalives are answered from anywhere (dispatchers rely on them), CANCEL cannot be
//! challenged (RFC 3261 §22.1), and in-dialog requests belong to a dialog an admitted INVITE
//! created.
//!
//! Sans-IO like everything it owns: `handle_*(now, …)` in, [`Switchboard::poll_output`] and
//! [`Switchboard::poll_transmit`] out, [`Switchboard::poll_timeout`] for the next wake-up.
//!
//! Registrations (register-mode trunks) live in [`Registrations`]; their REGISTER and OPTIONS
//! transactions are routed there, and a new INVITE to a registered Contact (or from a
//! registrar) is taken over that trunk even when `allow_from` does not list its source.
//!
//! Draining (SIGTERM): new INVITEs get 503, OPTIONS 503 (so dispatchers stop sending), every
//! registration is removed (REGISTER Expires: 0, waited for at most
//! [`UNREGISTER_TIMEOUT`](crate::call::registrations::UNREGISTER_TIMEOUT)), active calls go on
//! until the drain deadline, then get BYE; when none is left, [`Output::Drained`].

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use crate::call::inbound_auth::{AuthResult, Checked, InboundAuth, InboundAuthStats};
use crate::call::registrations::{NextHop, RegistrationStatus, Registrations};
use crate::call::route::{RouteError, Router};
use crate::call::unknown_sources::{Report, UnknownSources};
use crate::call::{Call, CallConfig, CallKey, Ctx, NewCall, Output};
use crate::config::Settings;
use crate::metrics::CallResult;
use crate::sip::auth::ClientCredentials;
use crate::sip::dialog::{Dialog, DialogId, UasSetup};
use crate::sip::endpoint::{
    ClientTxId, ConnectionId, Endpoint, EndpointConfig, Event, Flow, ServerTxId, Transmit, ALLOW,
    SUPPORTED,
};
use crate::sip::message::{self, Request};
use crate::sip::session_timer;

/// The SIP transaction user: admission, routing and the call table.
pub struct Switchboard {
    endpoint: Endpoint,
    config: CallConfig,
    router: Router,
    /// Digest authentication for INVITEs from sources no trunk allows (trunks with users).
    inbound_auth: Option<InboundAuth>,
    /// Per trunk, the credentials calls answer challenges to their own requests with.
    credentials: HashMap<String, ClientCredentials>,
    /// Per trunk, the domain transfer extensions are joined to.
    transfer_domains: HashMap<String, String>,
    /// Per trunk, its outbound proxy (bridged transfers' INVITEs go through it).
    outbound_proxies: HashMap<String, String>,
    max_concurrent: usize,
    at_capacity_status: u16,
    calls: HashMap<CallKey, Call>,
    dialogs: HashMap<DialogId, CallKey>,
    invites: HashMap<ServerTxId, CallKey>,
    requests: HashMap<ClientTxId, CallKey>,
    registrations: Registrations,
    outputs: VecDeque<Output>,
    next_key: u64,
    drain_deadline: Option<Instant>,
    /// The calls left at the drain deadline were hung up; the deadline is no longer a timer.
    drain_hung_up: bool,
    drained_reported: bool,
    /// INVITEs refused for their source: counted, and logged sparingly.
    unknown_sources: UnknownSources,
    /// The key of the To tags of stateless responses ([`Request::stateless_tag`]).
    tag_key: RandomState,
}

impl Switchboard {
    /// Builds the switchboard from validated settings.
    pub fn new(settings: &Settings) -> Switchboard {
        let endpoint = Endpoint::new(EndpointConfig {
            timers: settings.timers(),
            max_message_bytes: settings.sip.max_message_bytes,
            user_agent: settings.sip.user_agent.clone(),
            public_address: settings.sip.public_address.clone(),
        });
        let config = CallConfig {
            user_agent: settings.sip.user_agent.clone(),
            session_expires_secs: settings.sip.session_expires_secs,
            min_se_secs: settings.sip.min_se_secs,
            public_ip: settings
                .sip
                .public_address
                .as_deref()
                .and_then(|host| host.parse().ok()),
            ptime: std::time::Duration::from_millis(settings.rtp.ptime_ms.into()),
            agent_connect_timeout: std::time::Duration::from_millis(
                settings.realtime.connect_timeout_ms,
            ),
            transfer: settings.transfer.clone(),
        };
        Switchboard {
            endpoint,
            config,
            router: Router::new(settings),
            inbound_auth: InboundAuth::new(settings),
            credentials: settings
                .trunks
                .iter()
                .filter_map(|trunk| Some((trunk.name.clone(), trunk.credentials()?)))
                .collect(),
            transfer_domains: settings
                .trunks
                .iter()
                .filter_map(|trunk| Some((trunk.name.clone(), trunk.transfer_domain()?)))
                .collect(),
            outbound_proxies: settings
                .trunks
                .iter()
                .filter_map(|trunk| Some((trunk.name.clone(), trunk.outbound_proxy.clone()?)))
                .collect(),
            max_concurrent: settings.calls.max_concurrent,
            at_capacity_status: settings.calls.at_capacity_status,
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            invites: HashMap::new(),
            requests: HashMap::new(),
            registrations: Registrations::new(settings),
            outputs: VecDeque::new(),
            next_key: 1,
            drain_deadline: None,
            drain_hung_up: false,
            drained_reported: false,
            unknown_sources: UnknownSources::default(),
            tag_key: RandomState::new(),
        }
    }

    /// Whether anything still needs TCP connection `id` to `peer`: a call (its dialog or a
    /// bridged transfer's leg), a registration, or a transaction under way. One that nothing
    /// uses may be closed when idle.
    pub fn uses_connection(&self, id: ConnectionId, peer: SocketAddr) -> bool {
        self.endpoint.uses_connection(id, peer)
            || self.registrations.uses_connection(id, peer)
            || self
                .calls
                .values()
                .any(|call| call.uses_connection(id, peer))
    }

    /// Calls in the table (ringing, up or hanging up).
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// The endpoint, for its statistics.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Inbound digest decisions so far (`None` when no trunk has users).
    pub fn inbound_auth_stats(&self) -> Option<&InboundAuthStats> {
        self.inbound_auth.as_ref().map(InboundAuth::stats)
    }

    /// The hosts `io/` must locate for the register-mode trunks (then call
    /// [`Switchboard::handle_next_hops`]).
    pub fn next_hops(&self) -> Vec<NextHop> {
        self.registrations.next_hops()
    }

    /// `io/` resolved a register-mode trunk's next hop to one server: `flow` reaches it.
    /// Starts registering.
    pub fn handle_next_hop(&mut self, now: Instant, trunk: &str, flow: Flow) {
        self.registrations
            .handle_next_hop(now, &mut self.endpoint, trunk, flow);
    }

    /// `io/` located a register-mode trunk's servers (RFC 3263), in the order to try them, each
    /// with how it was found; again when DNS changed. See [`Registrations::handle_next_hops`].
    pub fn handle_next_hops(&mut self, now: Instant, trunk: &str, targets: Vec<(Flow, String)>) {
        self.registrations
            .handle_next_hops(now, &mut self.endpoint, trunk, targets);
    }

    /// TCP connection `id` to `peer` closed: the client transactions over it fail (their users
    /// fail over or give up at once), then registrations over it refresh.
    pub fn handle_connection_closed(&mut self, now: Instant, id: ConnectionId, peer: SocketAddr) {
        self.endpoint.handle_connection_lost(now, id, peer);
        self.dispatch_events(now);
        self.registrations
            .handle_connection_closed(now, &mut self.endpoint, id, peer);
    }

    /// Every register-mode trunk's registration state, for metrics.
    pub fn registrations(&self) -> impl Iterator<Item = RegistrationStatus<'_>> {
        self.registrations.statuses()
    }

    /// `io/` could not send a message of client transaction `tx` (see
    /// [`Endpoint::handle_transport_error`]).
    pub fn handle_send_failed(&mut self, now: Instant, tx: ClientTxId) {
        self.endpoint.handle_transport_error(now, tx);
        self.dispatch_events(now);
    }

    /// One SIP message arrived on `flow`.
    pub fn handle_inbound(&mut self, now: Instant, bytes: &[u8], flow: Flow) {
        self.endpoint.handle_inbound(now, bytes, flow);
        self.dispatch_events(now);
    }

    /// `io/` bound (or failed to bind) the media ports for `call`.
    pub fn handle_media_allocated(
        &mut self,
        now: Instant,
        call: CallKey,
        local_rtp: Result<SocketAddr, String>,
    ) {
        self.with_call(now, call, |call, ctx| {
            call.handle_media_allocated(ctx, local_rtp)
        });
        self.dispatch_events(now);
    }

    /// `io/` bound (or failed to bind) the ports of `call`'s agent leg (bridged transfer).
    pub fn handle_agent_media_allocated(
        &mut self,
        now: Instant,
        call: CallKey,
        local_rtp: Result<SocketAddr, String>,
    ) {
        self.with_call(now, call, |call, ctx| {
            call.handle_agent_media_allocated(ctx, local_rtp)
        });
        self.dispatch_events(now);
    }

    /// `io/` located (or failed to locate) the next hop of `call`'s bridged transfer.
    pub fn handle_agent_leg_located(
        &mut self,
        now: Instant,
        call: CallKey,
        located: Result<Vec<crate::sip::locate::Target>, String>,
    ) {
        self.with_call(now, call, |call, ctx| {
            call.handle_agent_leg_located(ctx, located)
        });
        self.dispatch_events(now);
    }

    /// The media task of `call` ended it on its own (e.g. no RTP for too long): BYE, counted as
    /// `result`.
    pub fn handle_media_ended(
        &mut self,
        now: Instant,
        call: CallKey,
        why: &str,
        result: CallResult,
    ) {
        self.with_call(now, call, |call, ctx| {
            call.handle_media_ended(ctx, why, result)
        });
        self.dispatch_events(now);
    }

    /// The speech session of `call` is ready.
    pub fn handle_agent_ready(&mut self, now: Instant, call: CallKey) {
        self.with_call(now, call, |call, ctx| call.handle_agent_ready(ctx));
        self.dispatch_events(now);
    }

    /// The speech session of `call` failed (503 before answer, BYE after).
    pub fn handle_agent_failed(&mut self, now: Instant, call: CallKey, why: &str) {
        self.with_call(now, call, |call, ctx| call.handle_agent_failed(ctx, why));
        self.dispatch_events(now);
    }

    /// The agent of `call` ended it.
    pub fn handle_agent_hangup(&mut self, now: Instant, call: CallKey, why: &str) {
        self.with_call(now, call, |call, ctx| call.handle_agent_hangup(ctx, why));
        self.dispatch_events(now);
    }

    /// The agent of `call` asks to hand the caller to a person.
    pub fn handle_transfer_request(
        &mut self,
        now: Instant,
        call: CallKey,
        request: super::transfer::TransferRequest,
    ) {
        self.with_call(now, call, |call, ctx| {
            call.handle_transfer_request(ctx, request)
        });
        self.dispatch_events(now);
    }

    /// The media task of `call` saw the caller's RTP start or stop.
    pub fn handle_caller_media(&mut self, now: Instant, call: CallKey, flowing: bool) {
        self.with_call(now, call, |call, ctx| {
            call.handle_caller_media(ctx, flowing)
        });
        self.dispatch_events(now);
    }

    /// Starts draining: refuse new calls, BYE the rest at `deadline`.
    pub fn begin_drain(&mut self, now: Instant, deadline: Instant) {
        tracing::info!(
            active_calls = self.calls.len(),
            "draining: refusing new calls, waiting for active calls to finish"
        );
        self.drain_deadline = Some(deadline);
        self.registrations.unregister_all(now, &mut self.endpoint);
        self.check_drained(now);
    }

    /// Fires every due timer (transactions and calls).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.endpoint.handle_timeout(now);
        self.dispatch_events(now);
        self.registrations.handle_timeout(now, &mut self.endpoint);
        let due: Vec<CallKey> = self
            .calls
            .iter()
            .filter(|(_, call)| call.poll_timeout().is_some_and(|at| at <= now))
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            self.with_call(now, key, |call, ctx| call.handle_timeout(ctx));
        }
        if !self.drain_hung_up && self.drain_deadline.is_some_and(|deadline| deadline <= now) {
            // Once: afterwards every call is ending (BYE out) and new ones are refused, so the
            // deadline must stop being reported by poll_timeout or io/ would wake in a loop.
            self.drain_hung_up = true;
            let keys: Vec<CallKey> = self.calls.keys().copied().collect();
            for key in keys {
                self.with_call(now, key, |call, ctx| {
                    call.hang_up(ctx, "voxgate is shutting down", CallResult::Completed)
                });
            }
        }
        self.dispatch_events(now);
        self.check_drained(now);
    }

    /// The earliest timer of the endpoint, any call, any registration, or the drain deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.calls.values().filter_map(Call::poll_timeout);
        let drain = self
            .drain_deadline
            .filter(|_| !self.drain_hung_up && !self.calls.is_empty());
        self.endpoint
            .poll_timeout()
            .into_iter()
            .chain(calls)
            .chain(self.registrations.poll_timeout())
            .chain(drain)
            .min()
    }

    /// The next message for the wire.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.endpoint.poll_transmit()
    }

    /// The next command for `io/`.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn dispatch_events(&mut self, now: Instant) {
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::Request { tx, request, flow } => self.handle_request(now, tx, request, flow),
                Event::Ack { request, .. } => {
                    if let Some(key) = self.dialog_of(&request) {
                        // The caller's leg's ACK (an agent leg's is the call's to match).
                        let invite = self
                            .calls
                            .get(&key)
                            .filter(|call| call.dialog().id().call_id == request.call_id())
                            .and_then(Call::awaiting_ack);
                        if let Some(invite) = invite {
                            self.endpoint.handle_2xx_ack(now, invite);
                        }
                        self.with_call(now, key, |call, ctx| call.handle_ack(ctx, &request));
                    }
                }
                Event::Cancelled { invite } => {
                    if let Some(key) = self.invites.get(&invite).copied() {
                        self.with_call(now, key, |call, ctx| call.handle_cancel(ctx));
                    }
                }
                Event::AckTimedOut { invite } => {
                    if let Some(key) = self.invites.get(&invite).copied() {
                        self.with_call(now, key, |call, ctx| call.handle_ack_timeout(ctx));
                    }
                }
                Event::Response { tx, response } => {
                    if let Some(key) = self.requests.remove(&tx) {
                        // An INVITE's 2xx comes again while its ACK is lost (RFC 6026): the
                        // call ACKs it again, so the transaction stays the call's.
                        let status = response.status();
                        let invite_2xx = (200..300).contains(&status)
                            && response.cseq().method.to_string() == "INVITE";
                        let keep = status < 200 || invite_2xx;
                        self.with_call(now, key, |call, ctx| {
                            call.handle_response(ctx, tx, &response)
                        });
                        if keep {
                            self.requests.insert(tx, key);
                        }
                    } else {
                        self.registrations
                            .handle_response(now, &mut self.endpoint, tx, &response);
                    }
                }
                Event::RequestTimedOut { tx } => {
                    if let Some(key) = self.requests.remove(&tx) {
                        self.with_call(now, key, |call, ctx| call.handle_request_timeout(ctx, tx));
                    } else {
                        self.registrations
                            .handle_request_timeout(now, &mut self.endpoint, tx);
                    }
                }
                Event::TransportFailed { tx } => {
                    if let Some(key) = self.requests.remove(&tx) {
                        self.with_call(now, key, |call, ctx| {
                            call.handle_transport_failure(ctx, tx)
                        });
                    } else {
                        self.registrations
                            .handle_transport_failure(now, &mut self.endpoint, tx);
                    }
                }
            }
        }
        // The last call may have just ended (BYE either way, CANCEL): report the drain now,
        // not at the next transaction timer, which can be 64·T1 away.
        self.check_drained(now);
    }

    /// A request outside any call's transactions. Everything but a new INVITE is answered at
    /// once with a response that depends only on the request, so it is answered statelessly
    /// ([`Switchboard::reply_stateless`]): a flood of OPTIONS (`sipvicious svmap`) or of stray
    /// BYEs leaves no transaction waiting 32 s for retransmissions.
    fn handle_request(&mut self, now: Instant, tx: ServerTxId, request: Box<Request>, flow: Flow) {
        let method = request.method().to_string();
        if request.to_tag().is_some() {
            match self.dialog_of(&request) {
                Some(key) => {
                    if method == "INVITE" {
                        self.invites.insert(tx, key);
                    }
                    self.with_call(now, key, |call, ctx| call.handle_request(ctx, tx, &request))
                }
                None => self.reply_stateless(
                    now,
                    tx,
                    &request,
                    481,
                    "Call/Transaction Does Not Exist",
                    &[],
                ),
            }
            return;
        }
        match method.as_str() {
            "INVITE" => self.handle_new_invite(now, tx, request, flow),
            "OPTIONS" => {
                // A keepalive from PBXs and dispatchers: 503 while draining takes voxgate out of
                // their rotation before it goes away.
                let status = if self.drain_deadline.is_some() {
                    503
                } else {
                    200
                };
                let headers = [
                    ("Allow", ALLOW),
                    ("Accept", "application/sdp"),
                    ("Supported", SUPPORTED),
                ];
                self.reply_stateless(now, tx, &request, status, "", &headers);
            }
            "BYE" | "INFO" | "UPDATE" | "PRACK" | "NOTIFY" => self.reply_stateless(
                now,
                tx,
                &request,
                481,
                "Call/Transaction Does Not Exist",
                &[],
            ),
            _ => self.reply_stateless(
                now,
                tx,
                &request,
                405,
                "Method Not Allowed",
                &[("Allow", ALLOW)],
            ),
        }
    }

    fn handle_new_invite(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        request: Box<Request>,
        flow: Flow,
    ) {
        let call_id = request.call_id().to_owned();
        let span = tracing::info_span!("call", call_id = %call_id);
        let _entered = span.enter();
        if self.drain_deadline.is_some() {
            tracing::info!(peer = %flow.remote, "refused new call: voxgate is shutting down");
            let headers = [("Retry-After", "30")];
            self.reply(
                now,
                tx,
                &request,
                503,
                "Service Unavailable (shutting down)",
                &headers,
            );
            return;
        }
        // The registered Contact first (it names one trunk even when several share a PBX),
        // then allow_from in configuration order, then a registrar's address, then digest.
        let source = flow.remote.ip();
        let known = self
            .registrations
            .trunk_by_contact(request.request_uri())
            .or_else(|| self.router.trunk_for(source))
            .or_else(|| self.registrations.trunk_by_source(source))
            .map(str::to_owned);
        let trunk = match known {
            Some(trunk) => trunk,
            None if self.inbound_auth.is_some() => {
                match self.authenticate(now, tx, &request, flow) {
                    Some(trunk) => trunk,
                    None => return,
                }
            }
            None => {
                self.refuse_unknown_source(now, tx, &request, flow);
                return;
            }
        };
        let routed = match self.router.route_on(
            &trunk,
            request.request_uri_user().as_deref(),
            request.to_user().as_deref(),
        ) {
            Ok(routed) => routed,
            Err(error) => {
                tracing::warn!(peer = %flow.remote, %error, "refused new call");
                let status = error.status();
                let reason = if status == 403 {
                    "Forbidden"
                } else {
                    "Not Found"
                };
                self.reply(now, tx, &request, status, reason, &[]);
                return;
            }
        };
        if self.calls.len() >= self.max_concurrent {
            tracing::warn!(
                limit = self.max_concurrent,
                "refused new call: at calls.max_concurrent"
            );
            let status = self.at_capacity_status;
            let reason = if status == 486 {
                "Busy Here"
            } else {
                "Service Unavailable"
            };
            self.reply(now, tx, &request, status, reason, &[]);
            return;
        }
        let timer_request = crate::call::timer_request_of(&request);
        if let Err(too_small) = session_timer::negotiate(
            &timer_request,
            self.config.session_expires_secs,
            self.config.min_se_secs,
        ) {
            tracing::info!(
                requested = too_small.requested,
                "refused Session-Expires below Min-SE"
            );
            let min_se = too_small.min_se.to_string();
            self.reply(
                now,
                tx,
                &request,
                422,
                "Session Interval Too Small",
                &[("Min-SE", &min_se)],
            );
            return;
        }
        // RFC 3261 §12.2.2 / RFC 4475 §3.4.1: an RFC 2543 peer sends no From tag; the dialog
        // is then identified by an empty remote tag.
        let remote_tag = request.from_tag().unwrap_or_default().to_owned();
        let key = CallKey(self.next_key);
        self.next_key += 1;
        let local_tag = message::new_tag();
        let contact_host = self.endpoint.advertised(&flow);
        let dialog = Dialog::new_uas(
            UasSetup {
                call_id: call_id.clone(),
                from: request.header("From").unwrap_or_default().to_owned(),
                remote_tag,
                to: request.header("To").unwrap_or_default().to_owned(),
                local_tag,
                remote_seq: request.cseq().seq,
                // Without a Contact there is no remote target: reach back to where the INVITE
                // came from rather than resolving names from its headers.
                remote_target: request.contact_uri().unwrap_or_else(|| {
                    format!(
                        "sip:{}",
                        crate::sip::endpoint::host_port_literal(flow.remote)
                    )
                }),
                record_route: request.record_route(),
                local_contact: format!(
                    "sip:voxgate@{contact_host}{}",
                    match flow.transport {
                        crate::sip::message::Transport::Udp => "",
                        crate::sip::message::Transport::Tcp => ";transport=tcp",
                    }
                ),
            },
            rand::random::<u32>() & 0x0fff_ffff,
        );
        self.dialogs.insert(dialog.id().clone(), key);
        self.invites.insert(tx, key);
        let new = NewCall {
            key,
            invite: request,
            invite_tx: tx,
            flow,
            dialog,
            agent: routed.agent,
            trunk: routed.trunk,
            timer_request,
            credentials: self.credentials.get(&trunk).cloned(),
            transfer_domain: self.transfer_domains.get(&trunk).cloned(),
            outbound_proxy: self.outbound_proxies.get(&trunk).cloned(),
        };
        let mut ctx = Ctx {
            now,
            endpoint: &mut self.endpoint,
            outputs: &mut self.outputs,
            config: &self.config,
        };
        let call = Call::start(&mut ctx, new);
        self.calls.insert(key, call);
    }

    /// Digest check of an INVITE from a source no trunk allows: the trunk its caller
    /// authenticated on, or `None` after answering it 401 (challenge), 403 or 400.
    fn authenticate(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        request: &Request,
        flow: Flow,
    ) -> Option<String> {
        let auth = self.inbound_auth.as_mut()?;
        let values: Vec<&str> = request.headers_named("Authorization").collect();
        let checked = auth.check(now, "INVITE", &values);
        log_inbound_auth(flow, &checked);
        let Some((status, reason)) = checked.result.response() else {
            return checked.trunk;
        };
        let headers: Vec<(&str, &str)> = checked
            .headers
            .iter()
            .map(|header| (header.name, header.value.as_str()))
            .collect();
        // Stateless, like the 403 to an unknown source: the challenge or refusal is not repeated
        // on Timer G to a source that never ACKs (it may be forged), and a password-guessing
        // flood holds no transactions. A real client ACKs (the ACK is dropped) and sends the
        // INVITE again with credentials, or again without when the 401 was lost.
        self.reply_stateless(now, tx, request, status, reason, &headers);
        None
    }

    fn dialog_of(&self, request: &Request) -> Option<CallKey> {
        let id = DialogId {
            call_id: request.call_id().to_owned(),
            local_tag: request.to_tag()?.to_owned(),
            remote_tag: request.from_tag().unwrap_or_default().to_owned(),
        };
        self.dialogs.get(&id).copied()
    }

    /// Runs `f` on a call with a context, then records client transactions it started and
    /// forgets the call if it ended.
    fn with_call(&mut self, now: Instant, key: CallKey, f: impl FnOnce(&mut Call, &mut Ctx<'_>)) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let mut ctx = Ctx {
            now,
            endpoint: &mut self.endpoint,
            outputs: &mut self.outputs,
            config: &self.config,
        };
        f(call, &mut ctx);
        for tx in call.take_started_requests() {
            self.requests.insert(tx, key);
        }
        for dialog in call.take_new_dialogs() {
            self.dialogs.insert(dialog, key);
        }
        if call.is_ended() {
            let invite = call.invite_tx();
            self.calls.remove(&key);
            self.dialogs.retain(|_, owner| *owner != key);
            self.invites.remove(&invite);
            self.invites.retain(|_, owner| *owner != key);
            self.requests.retain(|_, owner| *owner != key);
        }
    }

    fn reply(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        request: &Request,
        status: u16,
        reason: &str,
        headers: &[(&str, &str)],
    ) {
        let tag = message::new_tag();
        let bytes = self.response_bytes(request, status, reason, headers, &tag);
        self.endpoint.respond(now, tx, status, bytes);
    }

    /// Answers `request` with final response `status` as a stateless UAS (RFC 3261 §8.2.7):
    /// sent once ([`Endpoint::respond_once`]), no transaction kept, and a To tag derived from
    /// the request ([`Request::stateless_tag`]), so a retransmission of the request is simply
    /// answered again, identically.
    fn reply_stateless(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        request: &Request,
        status: u16,
        reason: &str,
        headers: &[(&str, &str)],
    ) {
        let tag = request.stateless_tag(&self.tag_key);
        let bytes = self.response_bytes(request, status, reason, headers, &tag);
        self.endpoint.respond_once(now, tx, status, bytes);
    }

    /// An INVITE from a source no trunk admits: 403, counted, and logged sparingly
    /// ([`UnknownSources`]). Answered statelessly ([`Switchboard::reply_stateless`]): a forged
    /// source is not sent the 403 ten times, and a flood leaves no state behind.
    fn refuse_unknown_source(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        request: &Request,
        flow: Flow,
    ) {
        let source = flow.remote.ip();
        let error = RouteError::UnknownSource { source_ip: source };
        match self.unknown_sources.refused(now, source) {
            Report::First => tracing::warn!(
                peer = %flow.remote,
                %error,
                "refused new call (403); further refusals of this source are logged at most \
                 once a minute, all are counted in voxgate_unknown_source_invites_total"
            ),
            Report::Again { more, over } => tracing::warn!(
                peer = %flow.remote,
                %error,
                "refused new call (403), and {more} more from this source in the last {} s",
                over.as_secs()
            ),
            Report::Quiet => tracing::debug!(peer = %flow.remote, %error, "refused new call (403)"),
        }
        self.reply_stateless(now, tx, request, 403, "Forbidden", &[]);
    }

    fn response_bytes(
        &self,
        request: &Request,
        status: u16,
        reason: &str,
        headers: &[(&str, &str)],
        tag: &str,
    ) -> Bytes {
        let mut builder =
            message::response(request, status).header("Server", &self.config.user_agent);
        if !reason.is_empty() {
            builder = builder.reason(reason);
        }
        if status >= 200 && request.to_tag().is_none() {
            // §8.2.6.2: a final response outside a dialog carries a To-tag.
            builder = builder.to_tag(tag);
        }
        for (name, value) in headers {
            builder = builder.header(name, *value);
        }
        builder.build()
    }

    /// INVITEs refused since start-up because no trunk allows their source.
    pub fn unknown_source_invites(&self) -> u64 {
        self.unknown_sources.total()
    }

    fn check_drained(&mut self, _now: Instant) {
        if self.drain_deadline.is_some()
            && self.calls.is_empty()
            && self.registrations.is_finished()
            && !self.drained_reported
        {
            self.drained_reported = true;
            self.outputs.push_back(Output::Drained);
        }
    }
}

/// One log line per digest decision, in an admin's words (the INVITE's source, the user, the
/// trunk); never a password or a digest.
fn log_inbound_auth(flow: Flow, checked: &Checked) {
    let source = flow.remote.ip();
    let user = checked.username.as_deref().unwrap_or_default();
    let trunk = checked.trunk.as_deref().unwrap_or_default();
    let on_trunk = checked
        .trunk
        .as_deref()
        .map(|trunk| format!(" (trunk {trunk})"))
        .unwrap_or_default();
    match checked.result {
        AuthResult::Ok => tracing::info!(
            peer = %flow.remote,
            "INVITE from {source} authenticated as user {user:?} (trunk {trunk})"
        ),
        AuthResult::Challenged => tracing::debug!(
            peer = %flow.remote,
            "INVITE from {source} challenged (401): no credentials yet"
        ),
        AuthResult::Stale => tracing::info!(
            peer = %flow.remote,
            "INVITE from {source} challenged again (401, stale=true): the nonce of user \
             {user:?} expired or is not ours{on_trunk}"
        ),
        AuthResult::Replayed => tracing::warn!(
            peer = %flow.remote,
            "INVITE from {source} challenged again (401, stale=true): replayed credentials \
             (nonce count already used) for user {user:?}{on_trunk}"
        ),
        AuthResult::WrongPassword => tracing::warn!(
            peer = %flow.remote,
            "INVITE from {source} refused: wrong password for user {user:?}{on_trunk}"
        ),
        AuthResult::UnknownUser => tracing::warn!(
            peer = %flow.remote,
            "INVITE from {source} refused: no user {user:?}{on_trunk}"
        ),
        AuthResult::Unsupported => tracing::warn!(
            peer = %flow.remote,
            "INVITE from {source} refused: digest algorithm or qop not offered{on_trunk}"
        ),
        AuthResult::Malformed => tracing::warn!(
            peer = %flow.remote,
            "INVITE from {source} refused (400): malformed Authorization header{on_trunk}"
        ),
    }
}
