//! The SIP endpoint: demultiplexes received messages into transactions, answers what needs no
//! transaction user (unparseable requests, unknown methods, stray CANCELs), routes responses per
//! RFC 3261 §18.2.2 / RFC 3581, and sends requests through client transactions.
//!
//! ```text
//!  handle_inbound ──parse──> request ──match §17.2.3──> server transaction (absorb retransmit)
//!                    │                 ├─ merged copy (§8.2.2.2) ──> 482 Loop Detected
//!                    │                 └─ new ──> Event::Request / Event::Ack / Event::Cancelled
//!                    └─────> response ──match §17.1.3──> client transaction ──> Event::Response
//!  respond / send_request / send_ack ──> transactions ──> poll_transmit()
//! ```
//! Sans-IO: inputs carry `now`; outputs are drained with [`Endpoint::poll_event`] and
//! [`Endpoint::poll_transmit`]; [`Endpoint::poll_timeout`] says when to call
//! [`Endpoint::handle_timeout`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;

use crate::sip::dialog::OutgoingRequest;
use crate::sip::message::{self, Message, Request, Response, Rport, Transport};
use crate::sip::transaction::invite_client::InviteClient;
use crate::sip::transaction::invite_server::{InviteServer, InviteServerState};
use crate::sip::transaction::key::TransactionKey;
use crate::sip::transaction::non_invite_client::NonInviteClient;
use crate::sip::transaction::non_invite_server::NonInviteServer;
use crate::sip::transaction::{ClientOutput, ServerOutput, Timers};

/// The methods voxgate implements, for `Allow` headers.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, NOTIFY";

/// Option tags voxgate supports (RFC 4028 session timers).
pub const SUPPORTED: &str = "timer";

/// A status, reason phrase and optional extra header for a request refused before the TU.
type Refusal = (u16, &'static str, Option<(&'static str, String)>);

/// A TCP connection, as numbered by `io/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u64);

/// How a message arrived, and so how to reach its sender again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// UDP or TCP.
    pub transport: Transport,
    /// The peer's address (the datagram's source, or the connection's peer).
    pub remote: SocketAddr,
    /// voxgate's local address facing the peer (used in Via, Contact and SDP).
    pub local: SocketAddr,
    /// The connection for TCP.
    pub connection: Option<ConnectionId>,
}

impl Flow {
    /// Whether this flow goes over TCP connection `id`, or over TCP to `peer` (a flow may name
    /// no connection yet, or one that closed and was replaced by another to the same peer).
    pub fn rides(&self, id: ConnectionId, peer: SocketAddr) -> bool {
        self.transport == Transport::Tcp && (self.connection == Some(id) || self.remote == peer)
    }
}

/// Where to send a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A resolved address.
    Addr(SocketAddr),
    /// A host name for `io/` to locate (RFC 3263: SRV when the URI names no port, then
    /// A/AAAA) and the port the URI names.
    Host(String, Option<u16>),
}

/// A message for `io/` to put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// UDP or TCP.
    pub transport: Transport,
    /// The destination.
    pub target: Target,
    /// Reuse this TCP connection when it is still open.
    pub connection: Option<ConnectionId>,
    /// The serialised message.
    pub bytes: Bytes,
    /// The client transaction whose request (or ACK) this is: `io/` reports a failure to send
    /// it with [`Endpoint::handle_transport_error`]. `None` for responses and 2xx ACKs.
    pub client: Option<ClientTxId>,
}

/// A server transaction, as handed to the transaction user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerTxId(pub u64);

/// A client transaction started by [`Endpoint::send_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientTxId(pub u64);

/// What the endpoint tells the transaction user.
#[derive(Debug)]
pub enum Event {
    /// A new request; answer it with [`Endpoint::respond`] on `tx`.
    Request {
        /// The server transaction to respond on.
        tx: ServerTxId,
        /// The request, its top Via already stamped with `received`/`rport`.
        request: Box<Request>,
        /// How it arrived.
        flow: Flow,
    },
    /// An ACK outside any server transaction: the ACK for a 2xx (§13.3.1.4).
    Ack {
        /// The ACK.
        request: Box<Request>,
        /// How it arrived.
        flow: Flow,
    },
    /// A CANCEL matched a pending INVITE; the endpoint already answered the CANCEL 200.
    Cancelled {
        /// The INVITE's server transaction: answer it 487.
        invite: ServerTxId,
    },
    /// The INVITE server transaction saw no ACK for its final response (Timer H / Timer L).
    AckTimedOut {
        /// The INVITE's server transaction.
        invite: ServerTxId,
    },
    /// A response to a request voxgate sent.
    Response {
        /// The client transaction.
        tx: ClientTxId,
        /// The response.
        response: Box<Response>,
    },
    /// A request voxgate sent got no final response in time (Timer B / Timer F).
    RequestTimedOut {
        /// The client transaction.
        tx: ClientTxId,
    },
    /// A request voxgate sent could not be sent (RFC 3261 §8.1.3.1: as a 503 from the server;
    /// e.g. its TCP connection was refused, or its host name has no server): it failed before
    /// any final response.
    TransportFailed {
        /// The client transaction.
        tx: ClientTxId,
    },
}

/// Counters for `io/` to export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Messages that could not be parsed (dropped, or answered 400 when possible).
    pub parse_errors: u64,
}

/// Fixed settings of the endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// RFC 3261 timer base values.
    pub timers: Timers,
    /// Largest message accepted.
    pub max_message_bytes: usize,
    /// Value of `Server` and `User-Agent`.
    pub user_agent: String,
    /// Host advertised instead of the local address (NAT), if configured.
    pub public_address: Option<String>,
}

enum ServerMachine {
    Invite(InviteServer),
    NonInvite(NonInviteServer),
}

struct ServerEntry {
    id: ServerTxId,
    machine: ServerMachine,
    reply: Flow,
    reply_target: Target,
    /// Set when this transaction is the one `merge_index` points to.
    merge_key: Option<MergeKey>,
    /// Its entry in [`Endpoint::deadlines`].
    armed: Option<Instant>,
}

/// What makes two requests without a To tag "the same request" (RFC 3261 §8.2.2.2): From tag,
/// Call-ID and CSeq (number and method). A copy on another branch took another path (forking
/// proxy, loop) and is answered 482 Loop Detected.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MergeKey {
    from_tag: String,
    call_id: String,
    cseq: u32,
    method: String,
}

enum ClientMachine {
    Invite(InviteClient<Response>),
    NonInvite(NonInviteClient<Response>),
}

struct ClientEntry {
    id: ClientTxId,
    machine: ClientMachine,
    flow: Flow,
    target: Target,
    request_uri: String,
    routes: Vec<String>,
    /// An INVITE's branch and headers, for its CANCEL (§9.1); `None` for other methods.
    invite: Option<(String, Vec<(&'static str, String)>)>,
    /// Its entry in [`Endpoint::deadlines`].
    armed: Option<Instant>,
}

/// A transaction in [`Endpoint::deadlines`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timed {
    Server(ServerTxId),
    Client(ClientTxId),
}

/// The SIP endpoint: transaction tables and message routing.
pub struct Endpoint {
    config: EndpointConfig,
    servers: HashMap<TransactionKey, ServerEntry>,
    server_keys: HashMap<ServerTxId, TransactionKey>,
    /// Server transactions of requests without a To tag, for merged-request detection.
    merge_index: HashMap<MergeKey, TransactionKey>,
    clients: HashMap<TransactionKey, ClientEntry>,
    /// Client transactions by id, as `server_keys` for servers (timers, transport errors).
    client_keys: HashMap<ClientTxId, TransactionKey>,
    /// Every transaction's next timer, earliest first: finding the next wake-up and the due
    /// transactions costs O(log n), not a scan of the tables (a flood of requests leaves tens of
    /// thousands of transactions in their 32 s wait for retransmissions).
    deadlines: BTreeSet<(Instant, Timed)>,
    next_id: u64,
    events: VecDeque<Event>,
    transmits: VecDeque<Transmit>,
    stats: EndpointStats,
}

impl Endpoint {
    /// A new endpoint with empty tables.
    pub fn new(config: EndpointConfig) -> Endpoint {
        Endpoint {
            config,
            servers: HashMap::new(),
            server_keys: HashMap::new(),
            merge_index: HashMap::new(),
            clients: HashMap::new(),
            client_keys: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_id: 1,
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            stats: EndpointStats::default(),
        }
    }

    /// The endpoint's settings.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Counters since start.
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// Transactions in the tables (server, client), for tests and leak checks.
    pub fn transaction_counts(&self) -> (usize, usize) {
        (self.servers.len(), self.clients.len())
    }

    /// Takes one message (a UDP datagram or one framed TCP message) that arrived on `flow`.
    pub fn handle_inbound(&mut self, now: Instant, bytes: &[u8], flow: Flow) {
        match message::parse(bytes, flow.transport, self.config.max_message_bytes) {
            Ok(Message::Request(request)) => self.handle_request(now, request, flow),
            Ok(Message::Response(response)) => self.handle_response(now, response),
            Err(rejected) => {
                self.stats.parse_errors += 1;
                let Some(fallback) = rejected.fallback.as_ref() else {
                    tracing::debug!(from = %flow.remote, error = %rejected.error, "dropped unparseable SIP message");
                    return;
                };
                // Never answer a response or an ACK (§17.2.1: ACK gets no response).
                let method = fallback.method.as_deref().unwrap_or("");
                if method.is_empty() || method.eq_ignore_ascii_case("ACK") {
                    return;
                }
                let status = rejected.error.status();
                let reason = rejected.error.reason();
                tracing::info!(from = %flow.remote, %status, %reason, "refused malformed SIP request");
                let mut extra = vec![("Server", self.config.user_agent.clone())];
                if status == 405 || status == 501 {
                    extra.push(("Allow", ALLOW.to_owned()));
                }
                let extra_refs: Vec<(&str, String)> = extra
                    .iter()
                    .map(|(name, value)| (*name, value.clone()))
                    .collect();
                if let Some(bytes) =
                    message::response_for_rejected(fallback, status, &reason, &extra_refs)
                {
                    // Stateless answer to the source (the message could not be parsed far enough
                    // to trust its Via's sent-by).
                    self.transmits.push_back(Transmit {
                        transport: flow.transport,
                        target: Target::Addr(flow.remote),
                        connection: flow.connection,
                        bytes,
                        client: None,
                    });
                }
            }
        }
    }

    fn handle_request(&mut self, now: Instant, mut request: Request, flow: Flow) {
        let method = request.method().to_string();
        // RFC 3261 §18.2.1 / RFC 3581: record where the request really came from.
        request.stamp_source(flow.remote);
        let top = request.top_via().clone();
        let key =
            TransactionKey::server(top.branch.as_deref().unwrap_or(""), &top.sent_by(), &method);
        if method == "ACK" {
            if let Some(entry) = self.servers.get_mut(&key) {
                if let ServerMachine::Invite(machine) = &mut entry.machine {
                    let for_2xx = machine.handle_ack(now);
                    self.drain_server(&key);
                    if !for_2xx {
                        // §17.2.1: the ACK for a non-2xx final belongs to the transaction.
                        return;
                    }
                }
            }
            // §13.3.1.4: the ACK for a 2xx is a new transaction; the dialog layer matches it
            // and calls `handle_2xx_ack` to stop the 2xx retransmissions.
            self.events.push_back(Event::Ack {
                request: Box::new(request),
                flow,
            });
            return;
        }
        if let Some(entry) = self.servers.get_mut(&key) {
            // §17.2.1 / §17.2.2: a retransmission is absorbed; the last response goes out again.
            match &mut entry.machine {
                ServerMachine::Invite(machine) => machine.handle_retransmission(now),
                ServerMachine::NonInvite(machine) => machine.handle_retransmission(now),
            }
            self.drain_server(&key);
            return;
        }
        // §8.2.2.2: a request without a To tag whose From tag, Call-ID and CSeq are those of a
        // transaction in progress, on another branch, is a merged copy of it.
        let merge_key = request.to_tag().is_none().then(|| MergeKey {
            from_tag: request.from_tag().unwrap_or_default().to_owned(),
            call_id: request.call_id().to_owned(),
            cseq: request.cseq().seq,
            method: method.clone(),
        });
        let merged = merge_key
            .as_ref()
            .and_then(|merge| self.merge_index.get(merge))
            .is_some_and(|original| *original != key);
        let merge_key = merge_key.filter(|_| !merged);
        let reliable = flow.transport == Transport::Tcp;
        let id = ServerTxId(self.take_id());
        let machine = if method == "INVITE" {
            ServerMachine::Invite(InviteServer::new(now, &self.config.timers, reliable))
        } else {
            ServerMachine::NonInvite(NonInviteServer::new(now, &self.config.timers, reliable))
        };
        let reply_target = response_target(request.top_via(), &flow);
        self.servers.insert(
            key.clone(),
            ServerEntry {
                id,
                machine,
                reply: flow,
                reply_target,
                merge_key: merge_key.clone(),
                armed: None,
            },
        );
        self.server_keys.insert(id, key.clone());
        self.rearm_server(&key);
        if let Some(merge) = merge_key {
            self.merge_index.insert(merge, key.clone());
        }
        if merged {
            tracing::info!(
                from = %flow.remote,
                call_id = request.call_id(),
                "merged request (same From tag, Call-ID and CSeq on another branch): 482"
            );
            // A final response outside a dialog carries a To tag (§8.2.6.2); the copy's own
            // transaction absorbs its retransmissions and ACK.
            let bytes = message::response(&request, 482)
                .to_tag(&message::new_tag())
                .header("Server", &self.config.user_agent)
                .build();
            self.respond(now, id, 482, bytes);
            return;
        }
        if method == "INVITE" {
            // §17.2.1: a 100 Trying right away stops the caller's INVITE retransmissions.
            let trying = message::response(&request, 100)
                .header("Server", &self.config.user_agent)
                .build();
            self.respond(now, id, 100, trying);
        }
        if method == "CANCEL" {
            self.handle_cancel(now, id, &request, &key);
            return;
        }
        if let Some(status) = self.precheck(&request) {
            // §8.2.6.2: a final response carries a To tag (kept if the request had one).
            let mut builder = message::response(&request, status.0)
                .reason(status.1)
                .to_tag(&message::new_tag())
                .header("Server", &self.config.user_agent);
            if let Some((name, value)) = status.2 {
                builder = builder.header(name, &value);
            }
            let bytes = builder.build();
            self.respond(now, id, status.0, bytes);
            return;
        }
        self.events.push_back(Event::Request {
            tx: id,
            request: Box::new(request),
            flow,
        });
    }

    /// Checks every request must pass before the transaction user sees it: the URI scheme
    /// (416, §8.2.2.1) and Require option tags (420, §8.2.2.3).
    fn precheck(&self, request: &Request) -> Option<Refusal> {
        let scheme = request.uri_scheme();
        if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
            return Some((416, "Unsupported URI Scheme", None));
        }
        let unsupported: Vec<String> = request
            .headers_named("Require")
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|tag| !tag.is_empty() && !tag.eq_ignore_ascii_case(SUPPORTED))
            .map(str::to_owned)
            .collect();
        if !unsupported.is_empty() {
            return Some((
                420,
                "Bad Extension",
                Some(("Unsupported", unsupported.join(", "))),
            ));
        }
        None
    }

    fn handle_cancel(
        &mut self,
        now: Instant,
        id: ServerTxId,
        request: &Request,
        key: &TransactionKey,
    ) {
        let invite_key = key.cancelled_invite();
        let invite = self
            .servers
            .get(&invite_key)
            .and_then(|entry| match &entry.machine {
                ServerMachine::Invite(machine)
                    if machine.state() == InviteServerState::Proceeding =>
                {
                    Some(entry.id)
                }
                _ => None,
            });
        // §9.2: 200 to a CANCEL that matched a pending INVITE, 481 otherwise.
        let status = if invite.is_some() { 200 } else { 481 };
        let bytes = message::response(request, status)
            .header("Server", &self.config.user_agent)
            .build();
        self.respond(now, id, status, bytes);
        if let Some(invite) = invite {
            self.events.push_back(Event::Cancelled { invite });
        }
    }

    fn handle_response(&mut self, now: Instant, response: Response) {
        let method = response.cseq().method.to_string();
        let Some(branch) = response.vias().first().and_then(|via| via.branch.clone()) else {
            return;
        };
        let key = TransactionKey::client(&branch, &method);
        let Some(entry) = self.clients.get_mut(&key) else {
            // §18.1.2: a response matching no transaction is discarded (stray 2xx retransmits
            // for an ACKed re-INVITE land here too).
            tracing::debug!(%branch, status = response.status(), "discarded response matching no transaction");
            return;
        };
        let status = response.status();
        match &mut entry.machine {
            ClientMachine::Invite(machine) => {
                let (uri, routes) = (&entry.request_uri, &entry.routes);
                machine.handle_response(now, status, response, |response| {
                    ack_for_non_2xx(uri, routes, response)
                });
            }
            ClientMachine::NonInvite(machine) => machine.handle_response(now, status, response),
        }
        self.drain_client(&key);
    }

    /// Sends a response on server transaction `tx` (retransmissions are the transaction's job).
    pub fn respond(&mut self, now: Instant, tx: ServerTxId, status: u16, bytes: Bytes) {
        let Some(key) = self.server_keys.get(&tx).cloned() else {
            tracing::debug!(?tx, status, "response for a finished transaction dropped");
            return;
        };
        if let Some(entry) = self.servers.get_mut(&key) {
            match &mut entry.machine {
                ServerMachine::Invite(machine) if status < 200 => {
                    machine.send_provisional(now, bytes)
                }
                ServerMachine::Invite(machine) => machine.send_final(now, status, bytes),
                ServerMachine::NonInvite(machine) => machine.send_response(now, status, bytes),
            }
        }
        self.drain_server(&key);
    }

    /// Sends final response `bytes` on server transaction `tx` and ends the transaction at
    /// once, as a stateless UAS would (RFC 3261 §8.2.7): the response is not retransmitted
    /// (no Timer G), and a retransmission of the request is a new request, answered afresh.
    /// For refusing requests no trunk asked for: a forged source gets one response per request
    /// sent in its name, not the ten an INVITE transaction retransmits over 32 s, and a flood of
    /// them leaves no transaction state behind. A provisional `status` is sent as [`respond`]
    /// sends it.
    ///
    /// [`respond`]: Endpoint::respond
    pub fn respond_once(&mut self, now: Instant, tx: ServerTxId, status: u16, bytes: Bytes) {
        self.respond(now, tx, status, bytes);
        if status < 200 {
            return;
        }
        if let Some(key) = self.server_keys.get(&tx).cloned() {
            self.forget_server(&key);
        }
    }

    /// The ACK for the 2xx sent on INVITE transaction `invite` arrived (matched by dialog):
    /// stop retransmitting the 2xx (RFC 6026 Accepted state).
    pub fn handle_2xx_ack(&mut self, now: Instant, invite: ServerTxId) {
        let Some(key) = self.server_keys.get(&invite).cloned() else {
            return;
        };
        if let Some(ServerEntry {
            machine: ServerMachine::Invite(machine),
            ..
        }) = self.servers.get_mut(&key)
        {
            machine.handle_ack(now);
        }
        self.drain_server(&key);
    }

    /// Sends an in-dialog or out-of-dialog request on a new client transaction toward `flow`'s
    /// peer (or the request's own target), adding Via and User-Agent.
    pub fn send_request(
        &mut self,
        now: Instant,
        flow: &Flow,
        request: &OutgoingRequest,
        body: Option<(&str, Bytes)>,
    ) -> ClientTxId {
        let target = request_target(request, flow);
        self.start_client(now, flow, target, request, body, message::new_branch())
    }

    /// Sends a CANCEL for the INVITE of client transaction `invite` (RFC 3261 §9.1): the same
    /// Request-URI, Route, From, To, Call-ID and top Via branch, CSeq number with method
    /// CANCEL, on a new non-INVITE client transaction. `None` when the INVITE transaction is
    /// gone. Send it only after a provisional response (§9.1); the INVITE still ends with its
    /// own final response (normally 487).
    pub fn send_cancel(&mut self, now: Instant, invite: ClientTxId) -> Option<ClientTxId> {
        let entry = self.clients.values().find(|entry| entry.id == invite)?;
        let (branch, headers) = entry.invite.clone()?;
        let (flow, target, request_uri) =
            (entry.flow, entry.target.clone(), entry.request_uri.clone());
        let headers = headers
            .into_iter()
            .filter(|(name, _)| {
                matches!(
                    *name,
                    "Route" | "From" | "To" | "Call-ID" | "CSeq" | "Max-Forwards"
                )
            })
            .map(|(name, value)| match name {
                "CSeq" => {
                    let seq = value.split_whitespace().next().unwrap_or("1").to_owned();
                    (name, format!("{seq} CANCEL"))
                }
                _ => (name, value),
            })
            .collect();
        let cancel = OutgoingRequest {
            method: "CANCEL".to_owned(),
            request_uri,
            headers,
            cseq: 0,
        };
        Some(self.start_client(now, &flow, target, &cancel, None, branch))
    }

    /// [`Endpoint::send_request`] to `flow.remote`, whatever the first Route or the
    /// Request-URI name: for requests whose next hop `io/` located once (RFC 3263: a
    /// registration's REGISTERs and keepalives, a bridged transfer's INVITE), so a host name is
    /// not looked up again for every retransmission, the CANCEL goes where the INVITE went, and
    /// a TCP flow reuses its connection to that address.
    pub fn send_request_to_flow(
        &mut self,
        now: Instant,
        flow: &Flow,
        request: &OutgoingRequest,
        body: Option<(&str, Bytes)>,
    ) -> ClientTxId {
        self.start_client(
            now,
            flow,
            Target::Addr(flow.remote),
            request,
            body,
            message::new_branch(),
        )
    }

    fn start_client(
        &mut self,
        now: Instant,
        flow: &Flow,
        target: Target,
        request: &OutgoingRequest,
        body: Option<(&str, Bytes)>,
        branch: String,
    ) -> ClientTxId {
        let bytes = self.build_request(flow, request, &branch, body);
        let reliable = flow.transport == Transport::Tcp;
        let id = ClientTxId(self.take_id());
        let machine = if request.method == "INVITE" {
            ClientMachine::Invite(InviteClient::start(
                now,
                bytes,
                &self.config.timers,
                reliable,
            ))
        } else {
            ClientMachine::NonInvite(NonInviteClient::start(
                now,
                bytes,
                &self.config.timers,
                reliable,
            ))
        };
        let key = TransactionKey::client(&branch, &request.method);
        let routes = request
            .headers
            .iter()
            .filter(|(name, _)| *name == "Route")
            .map(|(_, value)| value.clone())
            .collect();
        let entry = ClientEntry {
            id,
            machine,
            flow: *flow,
            target,
            request_uri: request.request_uri.clone(),
            routes,
            invite: (request.method == "INVITE").then(|| (branch.clone(), request.headers.clone())),
            armed: None,
        };
        self.clients.insert(key.clone(), entry);
        self.client_keys.insert(id, key.clone());
        self.drain_client(&key);
        id
    }

    /// Sends the ACK for a 2xx to a re-INVITE voxgate sent (§13.2.2.4: not a transaction).
    pub fn send_ack(&mut self, flow: &Flow, request: &OutgoingRequest) {
        let branch = message::new_branch();
        let target = request_target(request, flow);
        let bytes = self.build_request(flow, request, &branch, None);
        self.transmits.push_back(Transmit {
            transport: flow.transport,
            target,
            connection: flow.connection,
            bytes,
            client: None,
        });
    }

    fn build_request(
        &self,
        flow: &Flow,
        request: &OutgoingRequest,
        branch: &str,
        body: Option<(&str, Bytes)>,
    ) -> Bytes {
        let transport = match flow.transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        };
        let via = format!(
            "SIP/2.0/{transport} {};branch={branch};rport",
            self.advertised(flow)
        );
        let mut builder =
            message::request(&request.method, &request.request_uri).header("Via", &via);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        builder = builder.header("User-Agent", &self.config.user_agent);
        if let Some((content_type, body)) = body {
            builder = builder.body(content_type, body);
        }
        builder.build()
    }

    /// Whether a transaction still under way uses TCP connection `id` (or any to `peer`): its
    /// response or request may still have to cross it.
    pub fn uses_connection(&self, id: ConnectionId, peer: SocketAddr) -> bool {
        self.servers
            .values()
            .any(|entry| entry.reply.rides(id, peer))
            || self
                .clients
                .values()
                .any(|entry| entry.flow.rides(id, peer))
    }

    /// The host:port voxgate advertises toward a flow's peer (Via, Contact).
    pub fn advertised(&self, flow: &Flow) -> String {
        let host = match &self.config.public_address {
            Some(host) => host.clone(),
            None => host_literal(flow.local.ip()),
        };
        format!("{host}:{}", flow.local.port())
    }

    /// Forgets client transaction `tx` without a word on the wire: its retransmissions stop,
    /// and a response that still comes for it is stray (dropped). For an INVITE whose server
    /// never answered at all, so no CANCEL may be sent (RFC 3261 §9.1), when the request goes
    /// to another server instead (RFC 3263 §4.3). False when it is gone already.
    pub fn abandon_client(&mut self, tx: ClientTxId) -> bool {
        match self.client_keys.get(&tx).cloned() {
            Some(key) => {
                self.forget_client(&key);
                true
            }
            None => false,
        }
    }

    /// `io/` could not send a message of client transaction `tx` (RFC 3261 §17.1.4: its TCP
    /// connection was refused or is backed up, its host name has no server, the network is
    /// unreachable). Before a final response the transaction ends with
    /// [`Event::TransportFailed`] (§8.1.3.1: as a 503), so the transaction user can try
    /// another server at once instead of waiting for Timer B or F. Once a final response has
    /// been delivered (a lost ACK for a non-2xx), the transaction only ends. Ignored when `tx`
    /// is gone.
    pub fn handle_transport_error(&mut self, now: Instant, tx: ClientTxId) {
        let Some(key) = self.client_keys.get(&tx).cloned() else {
            return;
        };
        let Some(entry) = self.clients.get_mut(&key) else {
            return;
        };
        match &mut entry.machine {
            ClientMachine::Invite(machine) => machine.handle_transport_error(now),
            ClientMachine::NonInvite(machine) => machine.handle_transport_error(now),
        }
        self.drain_client(&key);
    }

    /// TCP connection `id` to `peer` closed: every client transaction over it fails as on a
    /// transport error (RFC 3261 §17.1.4; pjsip and sofia-sip do the same), so a request whose
    /// server vanished is retried elsewhere or given up now rather than at Timer B or F. One
    /// that already has its final response just ends. Server transactions are left alone: a
    /// response still goes out on a new connection (§18.2.2).
    pub fn handle_connection_lost(&mut self, now: Instant, id: ConnectionId, peer: SocketAddr) {
        let mut over_it: Vec<ClientTxId> = self
            .clients
            .values()
            .filter(|entry| entry.flow.rides(id, peer))
            .map(|entry| entry.id)
            .collect();
        over_it.sort();
        for tx in over_it {
            self.handle_transport_error(now, tx);
        }
    }

    /// Feeds expired timers to every transaction and drops terminated ones.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Each drain below moves its transaction's entry to the machine's next deadline.
        let due: Vec<Timed> = self
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, timed)| *timed)
            .collect();
        for timed in due {
            match timed {
                Timed::Server(id) => {
                    let Some(key) = self.server_keys.get(&id).cloned() else {
                        continue;
                    };
                    if let Some(entry) = self.servers.get_mut(&key) {
                        match &mut entry.machine {
                            ServerMachine::Invite(machine) => machine.handle_timeout(now),
                            ServerMachine::NonInvite(machine) => machine.handle_timeout(now),
                        }
                    }
                    self.drain_server(&key);
                }
                Timed::Client(id) => {
                    let Some(key) = self.client_keys.get(&id).cloned() else {
                        continue;
                    };
                    if let Some(entry) = self.clients.get_mut(&key) {
                        match &mut entry.machine {
                            ClientMachine::Invite(machine) => machine.handle_timeout(now),
                            ClientMachine::NonInvite(machine) => machine.handle_timeout(now),
                        }
                    }
                    self.drain_client(&key);
                }
            }
        }
    }

    /// When [`handle_timeout`](Endpoint::handle_timeout) has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        #[cfg(debug_assertions)]
        self.check_deadlines();
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Debug builds (every test) check that the index holds each transaction's deadline, and
    /// only those.
    #[cfg(debug_assertions)]
    fn check_deadlines(&self) {
        let servers = self.servers.values().filter_map(|entry| {
            assert_eq!(
                entry.armed,
                server_deadline(&entry.machine),
                "{:?}",
                entry.id
            );
            entry.armed.map(|at| (at, Timed::Server(entry.id)))
        });
        let clients = self.clients.values().filter_map(|entry| {
            assert_eq!(
                entry.armed,
                client_deadline(&entry.machine),
                "{:?}",
                entry.id
            );
            entry.armed.map(|at| (at, Timed::Client(entry.id)))
        });
        let expected: BTreeSet<(Instant, Timed)> = servers.chain(clients).collect();
        assert_eq!(
            self.deadlines, expected,
            "transaction deadline index out of step"
        );
    }

    /// The next event for the transaction user.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next message to put on the wire.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn drain_server(&mut self, key: &TransactionKey) {
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        let mut terminated = false;
        loop {
            let output = match &mut entry.machine {
                ServerMachine::Invite(machine) => machine.poll_output(),
                ServerMachine::NonInvite(machine) => machine.poll_output(),
            };
            match output {
                Some(ServerOutput::Transmit(bytes)) => self.transmits.push_back(Transmit {
                    transport: entry.reply.transport,
                    target: entry.reply_target.clone(),
                    connection: entry.reply.connection,
                    bytes,
                    client: None,
                }),
                Some(ServerOutput::TimedOut | ServerOutput::TransportFailed) => {
                    if matches!(entry.machine, ServerMachine::Invite(_)) {
                        self.events
                            .push_back(Event::AckTimedOut { invite: entry.id });
                    }
                }
                Some(ServerOutput::Terminated) => terminated = true,
                None => break,
            }
        }
        if terminated {
            self.forget_server(key);
        } else {
            self.rearm_server(key);
        }
    }

    /// Files server transaction `key` under its machine's next deadline.
    fn rearm_server(&mut self, key: &TransactionKey) {
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        let next = server_deadline(&entry.machine);
        rearm(
            &mut self.deadlines,
            &mut entry.armed,
            next,
            Timed::Server(entry.id),
        );
    }

    /// Drops a server transaction and its indexes.
    fn forget_server(&mut self, key: &TransactionKey) {
        if let Some(mut entry) = self.servers.remove(key) {
            self.server_keys.remove(&entry.id);
            rearm(
                &mut self.deadlines,
                &mut entry.armed,
                None,
                Timed::Server(entry.id),
            );
            if let Some(merge) = entry.merge_key {
                self.merge_index.remove(&merge);
            }
        }
    }

    fn drain_client(&mut self, key: &TransactionKey) {
        let Some(entry) = self.clients.get_mut(key) else {
            return;
        };
        let mut terminated = false;
        loop {
            let output = match &mut entry.machine {
                ClientMachine::Invite(machine) => machine.poll_output(),
                ClientMachine::NonInvite(machine) => machine.poll_output(),
            };
            match output {
                Some(ClientOutput::Transmit(bytes)) => self.transmits.push_back(Transmit {
                    transport: entry.flow.transport,
                    target: entry.target.clone(),
                    connection: entry.flow.connection,
                    bytes,
                    client: Some(entry.id),
                }),
                Some(ClientOutput::Response(response)) => self.events.push_back(Event::Response {
                    tx: entry.id,
                    response: Box::new(response),
                }),
                Some(ClientOutput::TimedOut) => self
                    .events
                    .push_back(Event::RequestTimedOut { tx: entry.id }),
                Some(ClientOutput::TransportFailed) => self
                    .events
                    .push_back(Event::TransportFailed { tx: entry.id }),
                Some(ClientOutput::Terminated) => terminated = true,
                None => break,
            }
        }
        if terminated {
            self.forget_client(key);
        } else {
            self.rearm_client(key);
        }
    }

    /// Files client transaction `key` under its machine's next deadline.
    fn rearm_client(&mut self, key: &TransactionKey) {
        let Some(entry) = self.clients.get_mut(key) else {
            return;
        };
        let next = client_deadline(&entry.machine);
        rearm(
            &mut self.deadlines,
            &mut entry.armed,
            next,
            Timed::Client(entry.id),
        );
    }

    /// Drops a client transaction and its indexes.
    fn forget_client(&mut self, key: &TransactionKey) {
        if let Some(mut entry) = self.clients.remove(key) {
            self.client_keys.remove(&entry.id);
            rearm(
                &mut self.deadlines,
                &mut entry.armed,
                None,
                Timed::Client(entry.id),
            );
        }
    }
}

/// Moves a transaction's entry in `deadlines` from `*armed` to `next`.
fn rearm(
    deadlines: &mut BTreeSet<(Instant, Timed)>,
    armed: &mut Option<Instant>,
    next: Option<Instant>,
    timed: Timed,
) {
    if *armed == next {
        return;
    }
    if let Some(at) = armed.take() {
        deadlines.remove(&(at, timed));
    }
    if let Some(at) = next {
        deadlines.insert((at, timed));
    }
    *armed = next;
}

fn server_deadline(machine: &ServerMachine) -> Option<Instant> {
    match machine {
        ServerMachine::Invite(machine) => machine.poll_timeout(),
        ServerMachine::NonInvite(machine) => machine.poll_timeout(),
    }
}

fn client_deadline(machine: &ClientMachine) -> Option<Instant> {
    match machine {
        ClientMachine::Invite(machine) => machine.poll_timeout(),
        ClientMachine::NonInvite(machine) => machine.poll_timeout(),
    }
}

/// The ACK for a non-2xx final response (§17.1.1.3): the INVITE's Request-URI and Route set, the
/// response's Via (ours, same branch), From, To (with the tag), Call-ID and CSeq number.
fn ack_for_non_2xx(request_uri: &str, routes: &[String], response: &Response) -> Bytes {
    let mut builder = message::request("ACK", request_uri);
    if let Some(via) = response.vias().first() {
        builder = builder.header("Via", via.to_header_value());
    }
    for route in routes {
        builder = builder.header("Route", route);
    }
    builder
        .header("From", response.from())
        .header("To", response.to())
        .header("Call-ID", response.call_id())
        .header("CSeq", format!("{} ACK", response.cseq().seq))
        .header("Max-Forwards", "70")
        .build()
}

/// RFC 3261 §18.2.2 with RFC 3581: where responses to a request go.
fn response_target(top_via: &message::Via, flow: &Flow) -> Target {
    if flow.transport == Transport::Tcp {
        // Reliable transports answer on the connection the request came in on.
        return Target::Addr(flow.remote);
    }
    let port = match top_via.rport {
        // RFC 3581 §4: rport present → the source port.
        Rport::Requested | Rport::Value(_) => flow.remote.port(),
        Rport::Absent => top_via.port.unwrap_or(5060),
    };
    // `received` is the source IP whenever sent-by differs from it, so the source IP is always right.
    Target::Addr(SocketAddr::new(flow.remote.ip(), port))
}

/// Where a request voxgate sends goes: the first Route (loose routing), else the Request-URI.
fn request_target(request: &OutgoingRequest, flow: &Flow) -> Target {
    let uri = request
        .headers
        .iter()
        .find(|(name, _)| *name == "Route")
        .map(|(_, value)| value.as_str())
        .unwrap_or(&request.request_uri);
    match uri_host_and_port(uri) {
        Some((host, port)) => match host.parse::<IpAddr>() {
            Ok(ip) => Target::Addr(SocketAddr::new(ip, port.unwrap_or(5060))),
            Err(_) => Target::Host(host, port),
        },
        None => Target::Addr(flow.remote),
    }
}

/// The host and port of a SIP URI (in a name-addr or bare), IPv6 brackets removed.
pub fn uri_host_port(value: &str) -> Option<(String, u16)> {
    let (host, port) = uri_host_and_port(value)?;
    Some((host, port.unwrap_or(5060)))
}

/// The port a SIP URI names explicitly, if any (RFC 3263 §4.2: without one, servers are
/// located with SRV).
pub fn uri_explicit_port(value: &str) -> Option<u16> {
    uri_host_and_port(value)?.1
}

/// The host of a SIP URI and its port when it names one.
pub fn uri_host_and_port(value: &str) -> Option<(String, Option<u16>)> {
    let uri = match (value.find('<'), value.find('>')) {
        (Some(start), Some(end)) if start < end => &value[start + 1..end],
        _ => value.trim(),
    };
    let rest = uri
        .strip_prefix("sips:")
        .or_else(|| uri.strip_prefix("sip:"))?;
    let rest = rest.split([';', '?']).next()?;
    let hostport = rest
        .rsplit_once('@')
        .map(|(_, hostport)| hostport)
        .unwrap_or(rest);
    if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((host.to_owned(), port));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) => (host, Some(port.parse().ok()?)),
        None => (hostport, None),
    };
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port))
}

/// A socket address as it appears in a SIP URI (`host:port`, IPv6 in brackets).
pub fn host_port_literal(address: SocketAddr) -> String {
    format!("{}:{}", host_literal(address.ip()), address.port())
}

/// An IP as it appears in a SIP URI or Via (IPv6 in brackets).
pub fn host_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("[{v6}]"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, ms, offer, pbx_addr, secs, voxgate_addr, Caller};

    fn endpoint() -> Endpoint {
        Endpoint::new(EndpointConfig {
            timers: Timers::default(),
            max_message_bytes: 65_535,
            user_agent: "voxgate-test".into(),
            public_address: None,
        })
    }

    fn udp() -> Flow {
        Flow {
            transport: Transport::Udp,
            remote: pbx_addr(),
            local: voxgate_addr(),
            connection: None,
        }
    }

    /// The (status, CSeq method) of every response sent so far.
    fn sent(endpoint: &mut Endpoint) -> Vec<(u16, String)> {
        std::iter::from_fn(|| endpoint.poll_transmit())
            .filter_map(
                |transmit| match message::parse(&transmit.bytes, Transport::Udp, 65_535) {
                    Ok(Message::Response(response)) => {
                        Some((response.status(), response.cseq().method.to_string()))
                    }
                    _ => None,
                },
            )
            .collect()
    }

    fn parse_request(text: &str) -> Request {
        match message::parse(text.as_bytes(), Transport::Udp, 65_535) {
            Ok(Message::Request(request)) => request,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn requests(endpoint: &mut Endpoint) -> Vec<(ServerTxId, String)> {
        std::iter::from_fn(|| endpoint.poll_event())
            .filter_map(|event| match event {
                Event::Request { tx, request, .. } => Some((tx, request.method().to_string())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn merged_invite_on_another_branch_gets_482_and_never_reaches_the_tu() {
        let now = testkit::t0();
        let mut endpoint = endpoint();
        let mut caller = Caller::new("echo");
        let sdp = offer(1, "sendrecv");
        let invite = caller.invite(&[], Some(&sdp));
        endpoint.handle_inbound(now, invite.as_bytes(), udp());
        let copy = caller.invite_copy(&[], Some(&sdp));
        endpoint.handle_inbound(now, copy.as_bytes(), udp());
        let tus = requests(&mut endpoint);
        assert_eq!(tus.len(), 1, "only the first copy reaches the TU");
        assert_eq!(
            sent(&mut endpoint),
            [(100, "INVITE".into()), (482, "INVITE".into())]
        );
        // Retransmissions of either copy are absorbed by their own transactions.
        endpoint.handle_inbound(now, copy.as_bytes(), udp());
        assert_eq!(sent(&mut endpoint), [(482, "INVITE".into())]);
        assert!(requests(&mut endpoint).is_empty());
        // The original goes on: the TU answers it on its own transaction.
        let original = parse_request(&invite);
        let busy = message::response(&original, 486).to_tag("x").build();
        endpoint.respond(now, tus[0].0, 486, busy);
        assert_eq!(sent(&mut endpoint), [(486, "INVITE".into())]);
    }

    #[test]
    fn a_response_sent_once_is_never_repeated_and_leaves_no_transaction() {
        let t0 = testkit::t0();
        let mut endpoint = endpoint();
        let mut caller = Caller::new("echo");
        let invite = caller.invite(&[], Some(&offer(1, "sendrecv")));
        endpoint.handle_inbound(t0, invite.as_bytes(), udp());
        let tus = requests(&mut endpoint);
        let forbidden = message::response(&parse_request(&invite), 403)
            .to_tag("x")
            .build();
        endpoint.respond_once(t0, tus[0].0, 403, forbidden.clone());
        assert_eq!(
            sent(&mut endpoint),
            [(100, "INVITE".into()), (403, "INVITE".into())]
        );
        assert_eq!(endpoint.transaction_counts(), (0, 0));
        // No ACK comes (a forged source): Timer G would repeat the 403 ten times in 32 s.
        let mut now = t0;
        for _ in 0..40 {
            now += secs(1);
            endpoint.handle_timeout(now);
        }
        assert!(sent(&mut endpoint).is_empty(), "the 403 went out once");
        assert_eq!(endpoint.poll_timeout(), None, "no timer left");
        // The request retransmitted (the 403 was lost): a new request, answered afresh; its
        // late ACK matches nothing and is dropped.
        endpoint.handle_inbound(now, invite.as_bytes(), udp());
        let again = requests(&mut endpoint);
        assert_eq!(again.len(), 1);
        assert_eq!(sent(&mut endpoint), [(100, "INVITE".into())]);
        let Ok(Message::Response(forbidden)) = message::parse(&forbidden, Transport::Udp, 65_535)
        else {
            panic!("the 403 parses");
        };
        let ack = caller.ack_failure(&forbidden);
        endpoint.handle_inbound(now, ack.as_bytes(), udp());
        assert!(sent(&mut endpoint).is_empty());
    }

    #[test]
    fn merged_options_gets_482_but_requests_with_a_to_tag_or_another_cseq_do_not() {
        let now = testkit::t0();
        let mut endpoint = endpoint();
        let mut caller = Caller::new("echo");
        let options = caller.out_of_dialog("OPTIONS");
        endpoint.handle_inbound(now, options.as_bytes(), udp());
        assert_eq!(requests(&mut endpoint).len(), 1);
        let copy = options.replace(";branch=z9hG4bK", ";branch=z9hG4bKcopy");
        endpoint.handle_inbound(now, copy.as_bytes(), udp());
        assert_eq!(sent(&mut endpoint), [(482, "OPTIONS".into())]);
        assert!(requests(&mut endpoint).is_empty());
        // The next CSeq is a new request.
        endpoint.handle_inbound(now, caller.out_of_dialog("OPTIONS").as_bytes(), udp());
        assert_eq!(requests(&mut endpoint).len(), 1);
        // In a dialog (To tag) the dialog layer judges CSeq, not the merge check.
        caller.to_tag = Some("ours".into());
        let bye = caller.request("BYE", &[], None);
        endpoint.handle_inbound(now, bye.as_bytes(), udp());
        let again = bye.replace(";branch=z9hG4bK", ";branch=z9hG4bKother");
        endpoint.handle_inbound(now, again.as_bytes(), udp());
        assert_eq!(requests(&mut endpoint).len(), 2);
    }

    #[test]
    fn a_copy_after_the_original_transaction_ended_is_a_new_request() {
        let now = testkit::t0();
        let mut endpoint = endpoint();
        let mut caller = Caller::new("echo");
        let options = caller.out_of_dialog("OPTIONS");
        endpoint.handle_inbound(now, options.as_bytes(), udp());
        let (tx, _) = requests(&mut endpoint)[0].clone();
        let request = parse_request(&options);
        endpoint.respond(now, tx, 200, message::response(&request, 200).build());
        // Timer J (64·T1 on UDP) ends the transaction.
        endpoint.handle_timeout(now + secs(32));
        assert_eq!(endpoint.transaction_counts(), (0, 0));
        let copy = options.replace(";branch=z9hG4bK", ";branch=z9hG4bKlate");
        endpoint.handle_inbound(now + secs(33), copy.as_bytes(), udp());
        assert_eq!(
            requests(&mut endpoint).len(),
            1,
            "no transaction left to merge with"
        );
    }

    #[test]
    fn thousands_of_transactions_wake_the_endpoint_at_each_ones_own_deadline() {
        // poll_timeout and handle_timeout use the deadline index; debug builds check it against
        // every transaction's machine on each poll_timeout (`check_deadlines`).
        let t0 = testkit::t0();
        let mut endpoint = endpoint();
        let mut caller = Caller::new("echo");
        // 2,000 OPTIONS, one per millisecond, each answered at once: each transaction's
        // Timer J (32 s on UDP) ends it 32 s after its own answer.
        for n in 0..2_000u64 {
            let now = t0 + ms(n);
            let options = caller.out_of_dialog("OPTIONS");
            endpoint.handle_inbound(now, options.as_bytes(), udp());
            for (tx, _) in requests(&mut endpoint) {
                let ok = message::response(&parse_request(&options), 200);
                endpoint.respond(now, tx, 200, ok.build());
            }
        }
        // And a client transaction whose Timer E repeats the request from 500 ms.
        let client = endpoint.send_request(t0, &udp(), &options_request(), None);
        sent(&mut endpoint);
        endpoint.poll_transmit();
        assert_eq!(endpoint.transaction_counts(), (2_000, 1));
        assert_eq!(endpoint.poll_timeout(), Some(t0 + ms(500)));
        endpoint.handle_timeout(t0 + ms(500));
        assert!(
            endpoint.poll_transmit().is_some(),
            "Timer E repeats the OPTIONS"
        );
        assert_eq!(endpoint.poll_timeout(), Some(t0 + ms(1_500)));
        // Half the server transactions end at their Timer J, none early.
        let half = t0 + secs(32) + ms(999);
        endpoint.handle_timeout(half);
        let (servers, _) = endpoint.transaction_counts();
        assert_eq!(servers, 1_000);
        // The client transaction gives up at Timer F (32 s) and says so.
        assert!(client_events(&mut endpoint)
            .iter()
            .any(|(tx, what)| *tx == client && what == "timed out"));
        assert_eq!(endpoint.poll_timeout(), Some(t0 + secs(32) + ms(1_000)));
        endpoint.handle_timeout(t0 + secs(40));
        assert_eq!(endpoint.transaction_counts(), (0, 0));
        assert_eq!(endpoint.poll_timeout(), None);
    }

    #[test]
    fn uri_host_port_handles_name_addr_params_and_ipv6() {
        assert_eq!(
            uri_host_port("sip:alice@192.0.2.1:5070"),
            Some(("192.0.2.1".into(), 5070))
        );
        assert_eq!(
            uri_host_port("<sip:p1.example.com;lr>"),
            Some(("p1.example.com".into(), 5060))
        );
        assert_eq!(
            uri_host_port("\"A\" <sip:a@[2001:db8::1]:5080;transport=tcp>"),
            Some(("2001:db8::1".into(), 5080))
        );
        assert_eq!(uri_host_port("tel:+15551234"), None);
        assert_eq!(uri_host_port("sip:host:notaport"), None);
    }

    #[test]
    fn a_request_to_a_name_keeps_whether_its_uri_named_a_port() {
        let request = |uri: &str, route: Option<&str>| OutgoingRequest {
            method: "BYE".into(),
            request_uri: uri.into(),
            headers: route.map(|r| ("Route", r.to_owned())).into_iter().collect(),
            cseq: 2,
        };
        // RFC 3263 §4.2: no port, SRV first (io/ decides); a port, A/AAAA at that port.
        assert_eq!(
            request_target(&request("sip:bob@pbx.example.com", None), &udp()),
            Target::Host("pbx.example.com".into(), None)
        );
        assert_eq!(
            request_target(&request("sip:bob@pbx.example.com:5080", None), &udp()),
            Target::Host("pbx.example.com".into(), Some(5080))
        );
        assert_eq!(
            request_target(
                &request("sip:bob@192.0.2.9", Some("<sip:edge.example.com;lr>")),
                &udp()
            ),
            Target::Host("edge.example.com".into(), None),
            "the first Route"
        );
        assert_eq!(
            request_target(&request("sip:bob@192.0.2.9", None), &udp()),
            Target::Addr("192.0.2.9:5060".parse().expect("literal"))
        );
    }

    fn options_request() -> OutgoingRequest {
        OutgoingRequest {
            method: "OPTIONS".into(),
            request_uri: format!("sip:{}", pbx_addr()),
            headers: vec![
                ("From", "<sip:voxgate@example.com>;tag=a".into()),
                ("To", format!("<sip:{}>", pbx_addr())),
                ("Call-ID", "transport-error@test".into()),
                ("CSeq", "1 OPTIONS".into()),
            ],
            cseq: 1,
        }
    }

    /// Every client transaction event so far, as (tx, "timed out" / "transport" / status).
    fn client_events(endpoint: &mut Endpoint) -> Vec<(ClientTxId, String)> {
        std::iter::from_fn(|| endpoint.poll_event())
            .filter_map(|event| match event {
                Event::Response { tx, response } => Some((tx, response.status().to_string())),
                Event::RequestTimedOut { tx } => Some((tx, "timed out".into())),
                Event::TransportFailed { tx } => Some((tx, "transport".into())),
                _ => None,
            })
            .collect()
    }

    /// Sends an INVITE on a new client transaction; returns it as it went out.
    fn send_invite(endpoint: &mut Endpoint, now: Instant) -> (ClientTxId, Request) {
        let mut invite = options_request();
        invite.method = "INVITE".into();
        invite.headers[3] = ("CSeq", "1 INVITE".into());
        let tx = endpoint.send_request(now, &udp(), &invite, None);
        let sent = endpoint.poll_transmit().expect("the INVITE goes out");
        assert_eq!(sent.client, Some(tx), "io/ can tell whose message it is");
        let request = match message::parse(&sent.bytes, Transport::Udp, 65_535) {
            Ok(Message::Request(request)) => request,
            other => panic!("not a request: {other:?}"),
        };
        (tx, request)
    }

    #[test]
    fn a_transport_error_before_any_answer_fails_the_request_at_once() {
        let now = testkit::t0();
        let mut endpoint = endpoint();
        let tx = endpoint.send_request(now, &udp(), &options_request(), None);
        let first = endpoint.poll_transmit().expect("the OPTIONS goes out");
        assert_eq!(first.client, Some(tx), "io/ can tell whose message it is");
        endpoint.handle_transport_error(now + secs(1), tx);
        assert_eq!(client_events(&mut endpoint), [(tx, "transport".into())]);
        assert_eq!(
            endpoint.transaction_counts(),
            (0, 0),
            "no Timer F to wait for"
        );
        // No retransmission follows, and a later error for it is ignored.
        endpoint.handle_timeout(now + secs(40));
        endpoint.handle_transport_error(now + secs(41), tx);
        assert!(endpoint.poll_transmit().is_none());
        assert!(client_events(&mut endpoint).is_empty());
    }

    #[test]
    fn a_transport_error_after_a_provisional_answer_still_fails_the_invite() {
        let now = testkit::t0();
        let mut endpoint = endpoint();
        let (tx, request) = send_invite(&mut endpoint, now);
        let ringing = message::response(&request, 180).to_tag("b").build();
        endpoint.handle_inbound(now, &ringing, udp());
        assert_eq!(client_events(&mut endpoint), [(tx, "180".into())]);
        endpoint.handle_transport_error(now + secs(1), tx);
        assert_eq!(client_events(&mut endpoint), [(tx, "transport".into())]);
        assert_eq!(endpoint.transaction_counts(), (0, 0));
    }

    #[test]
    fn a_lost_tcp_connection_fails_the_client_transactions_over_it_and_no_others() {
        let now = testkit::t0();
        let mut endpoint = endpoint();
        let tcp = |connection: u64, remote: SocketAddr| Flow {
            transport: Transport::Tcp,
            remote,
            local: voxgate_addr(),
            connection: Some(ConnectionId(connection)),
        };
        let elsewhere: SocketAddr = "192.0.2.77:5060".parse().expect("literal");
        let mut request = |flow: Flow, cseq: u32| {
            let mut options = options_request();
            options.headers[3] = ("CSeq", format!("{cseq} OPTIONS"));
            let tx = endpoint.send_request(now, &flow, &options, None);
            while endpoint.poll_transmit().is_some() {}
            tx
        };
        let over_it = request(tcp(1, pbx_addr()), 1);
        let to_its_peer = request(
            Flow {
                connection: None,
                ..tcp(1, pbx_addr())
            },
            2,
        );
        let other_connection = request(tcp(2, elsewhere), 3);
        let over_udp = request(
            Flow {
                remote: elsewhere,
                ..udp()
            },
            4,
        );

        endpoint.handle_connection_lost(now + secs(1), ConnectionId(1), pbx_addr());
        assert_eq!(
            client_events(&mut endpoint),
            [
                (over_it, "transport".into()),
                (to_its_peer, "transport".into())
            ]
        );
        // The other two go on until they are answered, or until Timer F.
        assert_eq!(endpoint.transaction_counts(), (0, 2));
        endpoint.handle_timeout(now + secs(40));
        let mut timed_out = client_events(&mut endpoint);
        timed_out.sort();
        assert_eq!(
            timed_out,
            [
                (other_connection, "timed out".into()),
                (over_udp, "timed out".into())
            ]
        );
    }

    #[test]
    fn a_transport_error_after_the_final_answer_only_ends_the_transaction() {
        let now = testkit::t0();
        let mut endpoint = endpoint();
        let (tx, request) = send_invite(&mut endpoint, now);
        let busy = message::response(&request, 486).to_tag("b").build();
        endpoint.handle_inbound(now, &busy, udp());
        assert_eq!(client_events(&mut endpoint), [(tx, "486".into())]);
        let ack = endpoint.poll_transmit().expect("the ACK for the 486");
        assert_eq!(ack.client, Some(tx));
        // The ACK could not be sent: the TU already has its answer and hears nothing more.
        endpoint.handle_transport_error(now, tx);
        assert!(client_events(&mut endpoint).is_empty());
        assert_eq!(endpoint.transaction_counts(), (0, 0));
    }

    #[test]
    fn host_literal_brackets_v6_and_unmaps_v4() {
        assert_eq!(host_literal("::1".parse().unwrap()), "[::1]");
        assert_eq!(host_literal("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1");
    }
}
