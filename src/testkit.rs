//! Test helpers shared by unit tests: a fixed origin of virtual time, duration shorthands, and a
//! two-peer harness that plays a PBX against a [`Switchboard`] in virtual time.
//!
//! ```text
//!   Caller (raw SIP text) ──Harness::send──▶ Switchboard::handle_inbound(now, bytes, flow)
//!   Harness::take*() ◀── message::parse ◀── poll_transmit()   (what voxgate put on the wire)
//!   Harness::take_outputs() ◀── poll_output()   (AllocateMedia answered with a port unless
//!                                                `auto_media` is off)
//!   Harness::advance / run_until: jump `now` to each poll_timeout() and handle_timeout(now)
//! ```
//! The [`Caller`] builds what a PBX sends (INVITE, ACK, CANCEL, re-INVITE, UPDATE, BYE, and
//! responses to voxgate's own requests) with its own Via branches, tags and CSeq numbers, so the
//! tests exercise voxgate's parser and transaction matching exactly as the wire would.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::call::switchboard::Switchboard;
use crate::call::{CallKey, Output};
use crate::config::{
    AgentKind, AgentSettings, CallSettings, RouteField, RouteSettings, Settings, SipSettings,
    TrunkSettings,
};
use crate::sip::endpoint::{ClientTxId, Flow, Target};
use crate::sip::message::{self, Message, Request, Response, Transport};

/// A fixed instant to start virtual clocks from (the same for the whole test process).
pub fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// Milliseconds as a [`Duration`].
pub fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// Seconds as a [`Duration`].
pub fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// The PBX's SIP address (inside the trunk's `allow_from`).
pub const PBX: &str = "192.0.2.10:5060";
/// voxgate's SIP address as the PBX reaches it.
pub const VOXGATE: &str = "192.0.2.1:5060";
/// Where the PBX receives RTP (named in its offers).
pub const PBX_RTP_PORT: u16 = 30_000;
/// The first RTP port the harness hands out when voxgate asks for media.
pub const FIRST_RTP_PORT: u16 = 40_000;

/// The PBX's address as a [`SocketAddr`].
pub fn pbx_addr() -> SocketAddr {
    PBX.parse().expect("literal address")
}

/// voxgate's address as a [`SocketAddr`].
pub fn voxgate_addr() -> SocketAddr {
    VOXGATE.parse().expect("literal address")
}

/// Settings for a switchboard under test: one trunk `pbx` allowing 192.0.2.0/24, one echo agent
/// answering at once, one catch-all route, T1 = 500 ms, session timers 1800 s / Min-SE 90 s.
pub fn settings() -> Settings {
    Settings {
        sip: SipSettings {
            listen: vec![voxgate_addr()],
            public_address: None,
            user_agent: "voxgate-test".into(),
            t1_ms: 500,
            t2_ms: 4_000,
            t4_ms: 5_000,
            max_message_bytes: 65_535,
            session_expires_secs: 1_800,
            min_se_secs: 90,
            tcp_max_connections: 1_024,
            tcp_first_message_secs: 32,
            tcp_idle_secs: 120,
        },
        rtp: Default::default(),
        calls: CallSettings {
            max_concurrent: 10,
            at_capacity_status: 503,
            drain_timeout_secs: 30,
        },
        metrics: Default::default(),
        trunks: vec![TrunkSettings {
            name: "pbx".into(),
            allow_from: vec!["192.0.2.0/24".parse().expect("literal network")],
            ..TrunkSettings::default()
        }],
        agents: vec![AgentSettings {
            name: "echo".into(),
            kind: AgentKind::Echo,
            echo_delay_ms: 0,
            ring_ms: 0,
            ..AgentSettings::default()
        }],
        routes: vec![RouteSettings {
            user: None,
            field: RouteField::RequestUri,
            trunk: None,
            agent: "echo".into(),
        }],
        realtime: Default::default(),
        transfer: Default::default(),
        dns: Default::default(),
    }
}

/// One message voxgate put on the wire, parsed back with the crate's own parser.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Virtual time it was sent at.
    pub at: Instant,
    /// Where it went.
    pub target: Target,
    /// The client transaction it belongs to (for [`Harness::send_failed`]).
    pub client: Option<ClientTxId>,
    /// The message.
    pub message: Message,
}

impl Sent {
    /// The response, if it is one.
    pub fn response(&self) -> Option<&Response> {
        match &self.message {
            Message::Response(response) => Some(response),
            Message::Request(_) => None,
        }
    }

    /// The request, if it is one.
    pub fn request(&self) -> Option<&Request> {
        match &self.message {
            Message::Request(request) => Some(request),
            Message::Response(_) => None,
        }
    }
}

/// The CSeq method of a message, as text.
pub fn cseq_method(message: &Message) -> String {
    match message {
        Message::Request(request) => request.cseq().method.to_string(),
        Message::Response(response) => response.cseq().method.to_string(),
    }
}

/// A [`Switchboard`] driven in virtual time by raw SIP text from one PBX.
pub struct Harness {
    /// The switchboard under test.
    pub switchboard: Switchboard,
    /// The virtual clock.
    pub now: Instant,
    /// How the PBX's messages arrive (UDP from [`PBX`] to [`VOXGATE`]).
    pub flow: Flow,
    /// Answer `AllocateMedia` at once with the next free port (on by default).
    pub auto_media: bool,
    wire: Vec<Sent>,
    outputs: Vec<Output>,
    next_rtp_port: u16,
}

impl Harness {
    /// A switchboard built from `settings`, at [`t0`].
    pub fn new(settings: &Settings) -> Harness {
        Harness {
            switchboard: Switchboard::new(settings),
            now: t0(),
            flow: Flow {
                transport: Transport::Udp,
                remote: pbx_addr(),
                local: voxgate_addr(),
                connection: None,
            },
            auto_media: true,
            wire: Vec::new(),
            outputs: Vec::new(),
            next_rtp_port: FIRST_RTP_PORT,
        }
    }

    /// Delivers `text` as a datagram from the PBX.
    pub fn send(&mut self, text: &str) {
        let flow = self.flow;
        self.send_on(flow, text);
    }

    /// Delivers `text` as a datagram from `remote` (e.g. a source outside the trunk).
    pub fn send_from(&mut self, remote: SocketAddr, text: &str) {
        let flow = Flow {
            remote,
            ..self.flow
        };
        self.send_on(flow, text);
    }

    fn send_on(&mut self, flow: Flow, text: &str) {
        self.switchboard
            .handle_inbound(self.now, text.as_bytes(), flow);
        self.pump();
    }

    /// Reports the media ports of `call` as bound (what `io/` does after `AllocateMedia`).
    pub fn allocate_media(&mut self, call: CallKey) -> SocketAddr {
        let local = SocketAddr::new(self.flow.local.ip(), self.next_rtp_port);
        self.next_rtp_port += 2;
        self.switchboard
            .handle_media_allocated(self.now, call, Ok(local));
        self.pump();
        local
    }

    /// Reports that binding media ports for `call` failed.
    pub fn media_failed(&mut self, call: CallKey, reason: &str) {
        self.switchboard
            .handle_media_allocated(self.now, call, Err(reason.to_owned()));
        self.pump();
    }

    /// Reports that the media task of `call` ended on its own (e.g. no RTP).
    pub fn media_ended(&mut self, call: CallKey, why: &str) {
        self.switchboard.handle_media_ended(
            self.now,
            call,
            why,
            crate::metrics::CallResult::Failed,
        );
        self.pump();
    }

    /// Reports the speech agent of `call` ready (what the media task does on `session.updated`).
    pub fn agent_ready(&mut self, call: CallKey) {
        self.switchboard.handle_agent_ready(self.now, call);
        self.pump();
    }

    /// Reports the speech agent of `call` failed.
    pub fn agent_failed(&mut self, call: CallKey, why: &str) {
        self.switchboard.handle_agent_failed(self.now, call, why);
        self.pump();
    }

    /// Reports the speech agent of `call` ended the call.
    pub fn agent_hangup(&mut self, call: CallKey, why: &str) {
        self.switchboard.handle_agent_hangup(self.now, call, why);
        self.pump();
    }

    /// The agent of `call` asks for a transfer (what the media task does for `transfer_call`).
    pub fn transfer(&mut self, call: CallKey, request: crate::call::transfer::TransferRequest) {
        self.switchboard
            .handle_transfer_request(self.now, call, request);
        self.pump();
    }

    /// The media task of `call` reports the caller's RTP stopped or resumed.
    pub fn caller_media(&mut self, call: CallKey, flowing: bool) {
        self.switchboard
            .handle_caller_media(self.now, call, flowing);
        self.pump();
    }

    /// Reports `trunk`'s registrar (or outbound proxy) resolved to `remote` over `transport`
    /// (what `io/` does at start-up); the registration starts.
    pub fn next_hop(&mut self, trunk: &str, remote: SocketAddr, transport: Transport) {
        let flow = Flow {
            transport,
            remote,
            ..self.flow
        };
        self.switchboard.handle_next_hop(self.now, trunk, flow);
        self.pump();
    }

    /// Reports `trunk`'s registrar located (RFC 3263) at `servers`, in the order to try them
    /// (what `io/` does at start-up, and again when DNS changes).
    pub fn next_hops(&mut self, trunk: &str, servers: &[SocketAddr], transport: Transport) {
        let targets = servers
            .iter()
            .map(|remote| {
                let flow = Flow {
                    transport,
                    remote: *remote,
                    ..self.flow
                };
                (flow, format!("server {remote}"))
            })
            .collect();
        self.switchboard.handle_next_hops(self.now, trunk, targets);
        self.pump();
    }

    /// `io/` located the next hop of `call`'s bridged transfer at `servers` (in that order), or
    /// could not (`Err`).
    pub fn agent_leg_located(&mut self, call: CallKey, servers: Result<&[SocketAddr], &str>) {
        let located = servers
            .map(|servers| {
                servers
                    .iter()
                    .map(|address| crate::sip::locate::Target {
                        address: *address,
                        origin: format!("server {address}"),
                    })
                    .collect()
            })
            .map_err(str::to_owned);
        self.switchboard
            .handle_agent_leg_located(self.now, call, located);
        self.pump();
    }

    /// Reports that `sent` could not be put on the wire (TCP connection refused, name not
    /// located), as `io/` does for a client transaction's message.
    pub fn send_failed(&mut self, sent: &Sent) {
        let tx = sent.client.expect("a client transaction's message");
        self.switchboard.handle_send_failed(self.now, tx);
        self.pump();
    }

    /// Reports TCP connection `id` to `peer` closed.
    pub fn connection_closed(&mut self, id: crate::sip::endpoint::ConnectionId, peer: SocketAddr) {
        self.switchboard
            .handle_connection_closed(self.now, id, peer);
        self.pump();
    }

    /// Starts draining with active calls hung up at `deadline`.
    pub fn begin_drain(&mut self, deadline: Instant) {
        self.switchboard.begin_drain(self.now, deadline);
        self.pump();
    }

    /// Collects everything the switchboard produced; answers `AllocateMedia` when `auto_media`.
    fn pump(&mut self) {
        loop {
            let mut allocate = Vec::new();
            let mut allocate_agent = Vec::new();
            while let Some(transmit) = self.switchboard.poll_transmit() {
                let message = message::parse(&transmit.bytes, Transport::Udp, 65_535)
                    .unwrap_or_else(|rejected| {
                        panic!(
                            "voxgate sent a message its own parser refuses ({:?}):\n{}",
                            rejected.error,
                            String::from_utf8_lossy(&transmit.bytes)
                        )
                    });
                self.wire.push(Sent {
                    at: self.now,
                    target: transmit.target,
                    client: transmit.client,
                    message,
                });
            }
            while let Some(output) = self.switchboard.poll_output() {
                match &output {
                    Output::AllocateMedia { call, .. } if self.auto_media => allocate.push(*call),
                    Output::AllocateAgentMedia { call, .. } if self.auto_media => {
                        allocate_agent.push(*call)
                    }
                    _ => {}
                }
                self.outputs.push(output);
            }
            if allocate.is_empty() && allocate_agent.is_empty() {
                return;
            }
            for call in allocate_agent {
                let local = SocketAddr::new(self.flow.local.ip(), self.next_rtp_port);
                self.next_rtp_port += 2;
                self.switchboard
                    .handle_agent_media_allocated(self.now, call, Ok(local));
            }
            for call in allocate {
                let local = SocketAddr::new(self.flow.local.ip(), self.next_rtp_port);
                self.next_rtp_port += 2;
                self.switchboard
                    .handle_media_allocated(self.now, call, Ok(local));
            }
        }
    }

    /// Fires every timer due up to `now + by`, in order, and leaves the clock there.
    pub fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        self.run_to(until, |_| false);
    }

    /// Advances time (firing timers) until voxgate sends a message `pick` accepts, at most
    /// `limit` from now; returns it (and removes it from the wire) or `None` when `limit` passed.
    /// Messages already on the wire are looked at first.
    pub fn run_until<T>(
        &mut self,
        limit: Duration,
        mut pick: impl FnMut(&Sent) -> Option<T>,
    ) -> Option<(Instant, T)> {
        let until = self.now + limit;
        let mut found = None;
        self.run_to(until, |wire| {
            let position = wire.iter().position(|sent| pick(sent).is_some());
            if let Some(index) = position {
                let sent = wire.remove(index);
                found = pick(&sent).map(|value| (sent.at, value));
            }
            found.is_some()
        });
        found
    }

    /// Steps to each timer up to `until`, checking `done` after each step.
    fn run_to(&mut self, until: Instant, mut done: impl FnMut(&mut Vec<Sent>) -> bool) {
        if done(&mut self.wire) {
            return;
        }
        let mut stuck = 0u32;
        while let Some(deadline) = self.switchboard.poll_timeout() {
            if deadline > until {
                break;
            }
            if deadline <= self.now {
                // A machine that keeps reporting a past deadline would make io/ spin.
                stuck += 1;
                assert!(
                    stuck < 1_000,
                    "poll_timeout stays at {:?} before now ({:?} after t0) after handle_timeout",
                    deadline.saturating_duration_since(t0()),
                    self.now.saturating_duration_since(t0())
                );
            } else {
                stuck = 0;
                self.now = deadline;
            }
            self.switchboard.handle_timeout(self.now);
            self.pump();
            if done(&mut self.wire) {
                return;
            }
        }
        self.now = self.now.max(until);
    }

    /// Everything voxgate sent since the last take.
    pub fn take(&mut self) -> Vec<Sent> {
        std::mem::take(&mut self.wire)
    }

    /// The responses voxgate sent since the last take (requests are dropped).
    pub fn take_responses(&mut self) -> Vec<Response> {
        self.take()
            .into_iter()
            .filter_map(|sent| match sent.message {
                Message::Response(response) => Some(response),
                Message::Request(_) => None,
            })
            .collect()
    }

    /// The requests voxgate sent since the last take (responses are dropped).
    pub fn take_requests(&mut self) -> Vec<Request> {
        self.take()
            .into_iter()
            .filter_map(|sent| match sent.message {
                Message::Request(request) => Some(request),
                Message::Response(_) => None,
            })
            .collect()
    }

    /// The final response to `method` in what voxgate sent (earlier messages are dropped);
    /// panics if there is none.
    pub fn final_response(&mut self, method: &str) -> Response {
        let sent = self.take();
        let summary = summarise(&sent);
        sent.into_iter()
            .filter_map(|sent| match sent.message {
                Message::Response(response) => Some(response),
                Message::Request(_) => None,
            })
            .find(|response| {
                response.status() >= 200 && response.cseq().method.to_string() == method
            })
            .unwrap_or_else(|| panic!("no final response to {method}; voxgate sent: {summary:?}"))
    }

    /// The next request voxgate sends with `method` within `limit` of virtual time.
    pub fn next_request(&mut self, method: &str, limit: Duration) -> Option<(Instant, Request)> {
        self.run_until(limit, |sent| {
            sent.request()
                .filter(|request| request.method().to_string() == method)
                .cloned()
        })
    }

    /// The commands voxgate gave `io/` since the last take.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// Sets up an answered, ACKed call for `caller` whose INVITE carries `extra` headers and a
    /// PCMU offer; returns voxgate's 200.
    pub fn establish(&mut self, caller: &mut Caller, extra: &[(&str, &str)]) -> Response {
        let invite = caller.invite(extra, Some(&offer(1, "sendrecv")));
        self.send(&invite);
        let ok = self.final_response("INVITE");
        assert_eq!(ok.status(), 200, "call not answered: {ok:?}");
        caller.learn(&ok);
        let ack = caller.ack(None);
        self.send(&ack);
        ok
    }
}

/// First lines of what was sent, for failure messages.
pub fn summarise(sent: &[Sent]) -> Vec<String> {
    sent.iter()
        .map(|sent| match &sent.message {
            Message::Request(request) => {
                format!("{} ({})", request.method(), request.cseq().seq)
            }
            Message::Response(response) => {
                format!("{} {}", response.status(), response.cseq().method)
            }
        })
        .collect()
}

static UNIQUE: AtomicU32 = AtomicU32::new(1);

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", UNIQUE.fetch_add(1, Ordering::Relaxed))
}

/// The PBX's side of one call: what it sends, with its own branches, tag and CSeq numbers.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Call-ID.
    pub call_id: String,
    /// The PBX's From tag.
    pub from_tag: String,
    /// voxgate's To tag, once learned from a response.
    pub to_tag: Option<String>,
    /// The dialled user.
    pub user: String,
    /// The PBX's last CSeq number.
    pub cseq: u32,
    invite_cseq: u32,
    invite_branch: String,
    /// Request-URI of in-dialog requests (voxgate's Contact once learned).
    target: String,
}

impl Caller {
    /// A new call to `user`.
    pub fn new(user: &str) -> Caller {
        Caller {
            call_id: format!("{}@pbx.test", unique("call")),
            from_tag: unique("pbxtag"),
            to_tag: None,
            user: user.to_owned(),
            cseq: 100,
            invite_cseq: 0,
            invite_branch: String::new(),
            target: format!("sip:{user}@{VOXGATE}"),
        }
    }

    /// The initial INVITE (no To tag), with `extra` headers and an optional SDP offer.
    pub fn invite(&mut self, extra: &[(&str, &str)], sdp: Option<&str>) -> String {
        self.cseq += 1;
        self.invite_cseq = self.cseq;
        self.invite_branch = branch();
        let uri = format!("sip:{}@{VOXGATE}", self.user);
        let to = format!("<sip:{}@{VOXGATE}>", self.user);
        let body = sdp.map(|sdp| ("application/sdp", sdp));
        self.build(
            "INVITE",
            &uri,
            &self.invite_branch.clone(),
            &to,
            self.cseq,
            extra,
            body,
        )
    }

    /// The initial INVITE again with the same CSeq but a new branch: a copy that took another
    /// path (RFC 3261 §8.2.2.2 merged request).
    pub fn invite_copy(&self, extra: &[(&str, &str)], sdp: Option<&str>) -> String {
        let uri = format!("sip:{}@{VOXGATE}", self.user);
        let to = format!("<sip:{}@{VOXGATE}>", self.user);
        let body = sdp.map(|sdp| ("application/sdp", sdp));
        self.build(
            "INVITE",
            &uri,
            &branch(),
            &to,
            self.invite_cseq,
            extra,
            body,
        )
    }

    /// A re-INVITE inside the dialog.
    pub fn reinvite(&mut self, extra: &[(&str, &str)], sdp: Option<&str>) -> String {
        self.cseq += 1;
        self.invite_cseq = self.cseq;
        self.invite_branch = branch();
        let body = sdp.map(|sdp| ("application/sdp", sdp));
        self.build(
            "INVITE",
            &self.target.clone(),
            &self.invite_branch.clone(),
            &self.to(),
            self.cseq,
            extra,
            body,
        )
    }

    /// The ACK for a 2xx to the last (re-)INVITE (§13.2.2.4: new branch, the INVITE's CSeq).
    pub fn ack(&self, sdp: Option<&str>) -> String {
        let body = sdp.map(|sdp| ("application/sdp", sdp));
        self.build(
            "ACK",
            &self.target,
            &branch(),
            &self.to(),
            self.invite_cseq,
            &[],
            body,
        )
    }

    /// The ACK for a non-2xx final response to the last INVITE (§17.1.1.3: same branch, the
    /// response's To).
    pub fn ack_failure(&self, response: &Response) -> String {
        let uri = format!("sip:{}@{VOXGATE}", self.user);
        self.build(
            "ACK",
            &uri,
            &self.invite_branch,
            response.to(),
            self.invite_cseq,
            &[],
            None,
        )
    }

    /// CANCEL for the initial INVITE (§9.1: same branch, Request-URI, To and CSeq number).
    pub fn cancel(&self) -> String {
        let uri = format!("sip:{}@{VOXGATE}", self.user);
        let to = format!("<sip:{}@{VOXGATE}>", self.user);
        self.build(
            "CANCEL",
            &uri,
            &self.invite_branch,
            &to,
            self.invite_cseq,
            &[],
            None,
        )
    }

    /// An in-dialog request (BYE, UPDATE, INFO, OPTIONS) with the next CSeq.
    pub fn request(
        &mut self,
        method: &str,
        extra: &[(&str, &str)],
        body: Option<(&str, &str)>,
    ) -> String {
        self.cseq += 1;
        self.build(
            method,
            &self.target.clone(),
            &branch(),
            &self.to(),
            self.cseq,
            extra,
            body,
        )
    }

    /// An out-of-dialog request (OPTIONS, or BYE/INFO for an unknown dialog).
    pub fn out_of_dialog(&mut self, method: &str) -> String {
        self.cseq += 1;
        let uri = format!("sip:{}@{VOXGATE}", self.user);
        let to = format!("<sip:{}@{VOXGATE}>", self.user);
        self.build(method, &uri, &branch(), &to, self.cseq, &[], None)
    }

    /// Learns voxgate's tag and Contact from a response that created the dialog.
    pub fn learn(&mut self, response: &Response) {
        if let Some(tag) = response.to_tag() {
            self.to_tag = Some(tag.to_owned());
        }
        if let Some(contact) = response.contact_uri() {
            self.target = contact;
        }
    }

    fn to(&self) -> String {
        match &self.to_tag {
            Some(tag) => format!("<sip:{}@{VOXGATE}>;tag={tag}", self.user),
            None => format!("<sip:{}@{VOXGATE}>", self.user),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        method: &str,
        uri: &str,
        branch: &str,
        to: &str,
        cseq: u32,
        extra: &[(&str, &str)],
        body: Option<(&str, &str)>,
    ) -> String {
        let mut text = format!(
            "{method} {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {PBX};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:pbx@{PBX}>;tag={from_tag}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:pbx@{PBX}>\r\n",
            from_tag = self.from_tag,
            call_id = self.call_id,
        );
        for (name, value) in extra {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        let (content_type, body) = body.unwrap_or(("", ""));
        if !body.is_empty() {
            text.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        text
    }
}

/// The PBX's response to a request voxgate sent (§8.2.6.2: Via, From, To, Call-ID and CSeq
/// copied), with `extra` headers and an optional SDP body.
pub fn answer(request: &Request, status: u16, extra: &[(&str, &str)], sdp: Option<&str>) -> String {
    let mut text = format!("SIP/2.0 {status} {}\r\n", message::default_reason(status));
    for via in request.headers_named("Via") {
        text.push_str(&format!("Via: {via}\r\n"));
    }
    text.push_str(&format!(
        "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\nContact: <sip:pbx@{PBX}>\r\n",
        request.from(),
        request.to(),
        request.call_id(),
        request.cseq().seq,
        request.cseq().method,
    ));
    for (name, value) in extra {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = sdp.unwrap_or("");
    if !body.is_empty() {
        text.push_str("Content-Type: application/sdp\r\n");
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    text
}

fn branch() -> String {
    format!("{}{}", message::MAGIC_COOKIE, unique("pbx"))
}

/// A PCMU offer (or answer) from the PBX at [`PBX_RTP_PORT`], `o=` version `version`, with
/// `a={direction}`.
pub fn offer(version: u32, direction: &str) -> String {
    format!(
        "v=0\r\no=pbx 4242 {version} IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
         m=audio {PBX_RTP_PORT} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na={direction}\r\n"
    )
}

/// An offer listing only G.729.
pub fn g729_offer() -> String {
    format!(
        "v=0\r\no=pbx 4242 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
         m=audio {PBX_RTP_PORT} RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\na=sendrecv\r\n"
    )
}

/// The `a=` direction attribute of an SDP body.
pub fn direction_of(sdp: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(sdp).ok()?;
    text.lines()
        .map(str::trim)
        .find(|line| ["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"].contains(line))
        .map(|line| line.trim_start_matches("a=").to_owned())
}

/// The `o=` version of an SDP body.
pub fn sdp_version(sdp: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(sdp).ok()?;
    text.lines()
        .find(|line| line.starts_with("o="))?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}
