//! voxgate's registrations with PBXs and providers (issue #4): one [`Registration`] per
//! register-mode trunk, its OPTIONS keepalive toward the registrar, and which trunk a new
//! INVITE arrived over by registration. Owned by the switchboard, which owns the [`Endpoint`]
//! these requests go through; sans-IO like both.
//!
//! ```text
//!  new(settings) ── next_hops() ──▶ io/ locates each registrar's (or outbound proxy's) servers
//!                                    (RFC 3263: SRV, else A/AAAA; `sip::locate`)
//!  handle_next_hops(trunk, targets) ──▶ Registration::new ── REGISTER ──▶ Endpoint::send_request_to_flow
//!      to the current target; a timeout, transport error or 503 ──▶ Event::FailOver ──▶ the next
//!      target at once; every target failed ──▶ backoff, then the first target again.
//!      Called again when DNS changes: the list is replaced, the current server kept if listed
//!  Endpoint events: Response / RequestTimedOut / TransportFailed on a REGISTER or OPTIONS
//!      transaction ──▶ handle_response / handle_request_timeout / handle_transport_failure
//!      ──▶ that trunk's Registration / keepalive
//!  handle_timeout: refresh, retry, binding expiry, keepalive due, unregistration deadline
//!  keepalive: OPTIONS every keepalive_secs; the first one unanswered (Timer F) ──▶
//!             handle_binding_lost, and again when the registrar answers after failing
//!  unregister_all (drain) ──▶ REGISTER Expires: 0 per trunk ──▶ finished (or the deadline)
//! ```
//!
//! A new INVITE arrived over a registration when its Request-URI is the Contact voxgate
//! registered (user, host and port; PBXs and registrars send calls to the registered Contact),
//! or when it comes from the registrar's (or outbound proxy's) address; see
//! [`Registrations::trunk_by_contact`] and [`Registrations::trunk_by_source`].
//!
//! Every attempt, up/down change and Contact rewrite is logged here with the trunk and the
//! registrar (the machine's descriptions say the status and reason); `io/` exports
//! [`Registrations::statuses`] as metrics.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::config::{RegisterSettings, Settings, TrunkTransport};
use crate::sip::auth::ClientCredentials;
use crate::sip::dialog::OutgoingRequest;
use crate::sip::endpoint::{uri_host_port, ClientTxId, ConnectionId, Endpoint, Flow};
use crate::sip::message::{self, Response, Transport};
use crate::sip::registration::{
    AttemptResult, DigestAuthenticator, Event, Registration, RegistrationConfig, RegistrationStats,
};

/// How long shutdown waits for the registrars to confirm the unregistrations (each needs a
/// round trip, two with a challenge) before voxgate exits anyway.
pub const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// A host `io/` must locate before a trunk can register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// The trunk's name (give it back to [`Registrations::handle_next_hops`]).
    pub trunk: String,
    /// The outbound proxy's host, else the registrar's (a name or an IP literal).
    pub host: String,
    /// Its port, when the URI gives one (else SRV, then 5060: [`crate::sip::locate::plan`]).
    pub port: Option<u16>,
    /// The transport REGISTERs use.
    pub transport: Transport,
}

/// One trunk's registration state, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct RegistrationStatus<'a> {
    /// The trunk's name.
    pub trunk: &'a str,
    /// Whether the registrar holds the binding (`voxgate_registration_up`).
    pub up: bool,
    /// The expiry granted, while up (`voxgate_registration_expires_seconds`).
    pub expires: Option<Duration>,
    /// Attempt counters (`voxgate_registration_attempts_total`); none before the first REGISTER.
    pub stats: Option<&'a RegistrationStats>,
}

/// What a client transaction started here is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A REGISTER with this CSeq.
    Register { cseq: u32 },
    /// A keepalive OPTIONS.
    Keepalive,
}

/// The registrations of every register-mode trunk.
#[derive(Debug)]
pub struct Registrations {
    trunks: Vec<TrunkRegistration>,
    /// Our client transactions: which trunk and what for.
    transactions: HashMap<ClientTxId, (usize, Purpose)>,
    /// Set at shutdown: unregistrations still running at this instant are abandoned.
    unregister_deadline: Option<Instant>,
    /// The deadline passed with unregistrations unanswered.
    gave_up: bool,
}

#[derive(Debug)]
struct TrunkRegistration {
    name: String,
    settings: RegisterSettings,
    /// The servers to fail over along (RFC 3263), each a flow (how REGISTERs reach it) and
    /// how it was found, for logs; empty until `io/` located them.
    targets: Vec<(Flow, String)>,
    /// The index in `targets` of the server in use ([`TrunkRegistration::flow`]; the machine
    /// counts the fail-overs left in a round: [`Registration::set_alternatives`]).
    current: usize,
    machine: Option<Registration<DigestAuthenticator>>,
    keepalive: Option<Keepalive>,
    /// The Contact address voxgate advertised when it started (before any rewrite).
    advertised: Option<String>,
    /// Where INVITEs over this registration may come from: the next hop, and the registrar and
    /// proxy when given as IP literals.
    sources: Vec<IpAddr>,
}

/// The OPTIONS keepalive toward one registrar.
#[derive(Debug)]
struct Keepalive {
    interval: Duration,
    /// When the next OPTIONS goes out (none while one is in flight or after shutdown).
    next_at: Option<Instant>,
    /// The last OPTIONS got no answer.
    failing: bool,
    /// Shutdown began: no more OPTIONS, even when one in flight is answered.
    stopped: bool,
    call_id: String,
    from_tag: String,
    cseq: u32,
}

impl Registrations {
    /// One entry per register-mode trunk; nothing is sent before [`Registrations::handle_next_hops`].
    pub fn new(settings: &Settings) -> Registrations {
        let mut trunks = Vec::new();
        for trunk in settings.trunks.iter().filter(|trunk| trunk.is_register()) {
            let Some(register) = trunk.registration() else {
                // Settings::load resolves every password; only hand-built settings get here.
                tracing::error!(
                    trunk = %trunk.name,
                    "register-mode trunk without a resolved password: not registering"
                );
                continue;
            };
            let mut sources = Vec::new();
            for uri in std::iter::once(&register.registrar).chain(&register.outbound_proxy) {
                if let Some(ip) = uri_host_port(uri).and_then(|(host, _)| host.parse().ok()) {
                    sources.push(canonical(ip));
                }
            }
            trunks.push(TrunkRegistration {
                name: trunk.name.clone(),
                settings: register,
                targets: Vec::new(),
                current: 0,
                machine: None,
                keepalive: None,
                advertised: None,
                sources,
            });
        }
        Registrations {
            trunks,
            transactions: HashMap::new(),
            unregister_deadline: None,
            gave_up: false,
        }
    }

    /// The hosts to resolve, one per register-mode trunk.
    pub fn next_hops(&self) -> Vec<NextHop> {
        self.trunks
            .iter()
            .map(|trunk| NextHop {
                trunk: trunk.name.clone(),
                host: trunk.settings.next_hop.0.clone(),
                port: trunk.settings.next_hop.1,
                transport: transport_of(trunk.settings.transport),
            })
            .collect()
    }

    /// `io/` located `trunk`'s servers: `targets`, in the order to try them, each a flow (its
    /// address and the local address facing it) and how it was found (for logs). The first
    /// time, starts registering with the first (first REGISTER out now) and schedules the
    /// keepalive. Later (DNS changed), replaces the list: the current server stays in use if it
    /// is still listed, else the next REGISTER goes to the new first one, and goes out now.
    /// Targets whose Contact address would differ from the first's (another family or
    /// interface) are left out: the Contact is fixed when registering starts. Ignored for an
    /// unknown trunk, an empty list, or after shutdown began.
    pub fn handle_next_hops(
        &mut self,
        now: Instant,
        endpoint: &mut Endpoint,
        trunk: &str,
        mut targets: Vec<(Flow, String)>,
    ) {
        if self.unregister_deadline.is_some() {
            return;
        }
        let Some(index) = self.trunks.iter().position(|t| t.name == trunk) else {
            return;
        };
        let Some((first, _)) = targets.first() else {
            return;
        };
        let entry = &mut self.trunks[index];
        let contact_address = entry
            .advertised
            .clone()
            .unwrap_or_else(|| endpoint.advertised(first));
        targets.retain(|(flow, origin)| {
            let same = endpoint.advertised(flow) == contact_address;
            if !same {
                tracing::debug!(
                    trunk = %entry.name,
                    target = %flow.remote,
                    %origin,
                    "server left out: voxgate's address toward it differs from the Contact"
                );
            }
            same
        });
        if targets.is_empty() {
            tracing::warn!(
                trunk = %entry.name,
                registrar = %entry.settings.registrar,
                "DNS lists no server reachable from voxgate's registered address: keeping the \
                 previous ones"
            );
            return;
        }
        for (flow, _) in &targets {
            let ip = canonical(flow.remote.ip());
            if !entry.sources.contains(&ip) {
                entry.sources.push(ip);
            }
        }
        if entry.machine.is_some() {
            entry.replace_targets(now, targets);
            self.pump(now, endpoint);
            return;
        }
        let flow = targets[0].0;
        entry.targets = targets;
        entry.current = 0;
        let settings = &entry.settings;
        let config = RegistrationConfig {
            trunk: entry.name.clone(),
            registrar: settings.registrar.clone(),
            aor: settings.aor.clone(),
            outbound_proxy: settings.outbound_proxy.clone(),
            transport: transport_of(settings.transport),
            contact_user: settings.contact_user.clone(),
            contact_address: contact_address.clone(),
            expires: settings.expires,
            rewrite_contact: true,
            jitter_seed: rand::random(),
        };
        let credentials = ClientCredentials {
            username: settings.username.clone(),
            auth_username: settings.auth_username.clone(),
            password: settings.password.clone(),
            realm: settings.realm.clone(),
        };
        tracing::info!(
            trunk = %entry.name,
            registrar = %settings.registrar,
            next_hop = %flow.remote,
            servers = entry.targets.len(),
            aor = %settings.aor,
            "registering"
        );
        entry.machine = Some(Registration::new(
            now,
            config,
            DigestAuthenticator::new(credentials),
        ));
        entry.keepalive = settings.keepalive.map(|interval| Keepalive {
            interval,
            next_at: Some(now + interval),
            failing: false,
            stopped: false,
            call_id: message::new_call_id(&contact_address),
            from_tag: message::new_tag(),
            cseq: 0,
        });
        entry.advertised = Some(contact_address);
        entry.new_round();
        self.pump(now, endpoint);
    }

    /// [`Registrations::handle_next_hops`] with one server (an IP literal, or tests).
    pub fn handle_next_hop(
        &mut self,
        now: Instant,
        endpoint: &mut Endpoint,
        trunk: &str,
        flow: Flow,
    ) {
        let origin = flow.remote.to_string();
        self.handle_next_hops(now, endpoint, trunk, vec![(flow, origin)]);
    }

    /// A response on client transaction `tx`; false when the transaction is not ours.
    pub fn handle_response(
        &mut self,
        now: Instant,
        endpoint: &mut Endpoint,
        tx: ClientTxId,
        response: &Response,
    ) -> bool {
        let Some(&(index, purpose)) = self.transactions.get(&tx) else {
            return false;
        };
        if response.status() >= 200 {
            self.transactions.remove(&tx);
        }
        let Some(trunk) = self.trunks.get_mut(index) else {
            return true;
        };
        match purpose {
            Purpose::Register { .. } => {
                if let Some(machine) = &mut trunk.machine {
                    machine.handle_response(now, response);
                }
            }
            Purpose::Keepalive if response.status() >= 200 => trunk.keepalive_answered(now),
            Purpose::Keepalive => {}
        }
        self.pump(now, endpoint);
        true
    }

    /// Client transaction `tx` got no final response (Timer F); false when it is not ours.
    pub fn handle_request_timeout(
        &mut self,
        now: Instant,
        endpoint: &mut Endpoint,
        tx: ClientTxId,
    ) -> bool {
        self.handle_failure(now, endpoint, tx, false)
    }

    /// Client transaction `tx` could not be sent (a REGISTER goes to the registrar's next
    /// server at once); false when it is not ours.
    pub fn handle_transport_failure(
        &mut self,
        now: Instant,
        endpoint: &mut Endpoint,
        tx: ClientTxId,
    ) -> bool {
        self.handle_failure(now, endpoint, tx, true)
    }

    /// A REGISTER or keepalive without a final response: timed out, or `unsent`. A keepalive
    /// counts as unanswered either way.
    fn handle_failure(
        &mut self,
        now: Instant,
        endpoint: &mut Endpoint,
        tx: ClientTxId,
        unsent: bool,
    ) -> bool {
        let Some((index, purpose)) = self.transactions.remove(&tx) else {
            return false;
        };
        if let Some(trunk) = self.trunks.get_mut(index) {
            match (purpose, &mut trunk.machine) {
                (Purpose::Register { cseq }, Some(machine)) if unsent => {
                    machine.handle_transport_error(now, cseq)
                }
                (Purpose::Register { cseq }, Some(machine)) => {
                    machine.handle_request_timeout(now, cseq)
                }
                (Purpose::Register { .. }, None) => {}
                (Purpose::Keepalive, _) => trunk.keepalive_timed_out(now),
            }
        }
        self.pump(now, endpoint);
        true
    }

    /// Whether a register-mode trunk's registrar (the server in use) is reached over TCP
    /// connection `id` or to `peer`: the registrar sends calls for the binding over it.
    pub fn uses_connection(&self, id: ConnectionId, peer: SocketAddr) -> bool {
        self.trunks
            .iter()
            .any(|trunk| trunk.flow().is_some_and(|flow| flow.rides(id, peer)))
    }

    /// TCP connection `id` to `peer` closed: a registration over it may be gone with it
    /// (registrars tie TCP bindings to their connection), so those refresh now.
    pub fn handle_connection_closed(
        &mut self,
        now: Instant,
        endpoint: &mut Endpoint,
        id: ConnectionId,
        peer: SocketAddr,
    ) {
        for trunk in &mut self.trunks {
            let over_it = trunk.flow().is_some_and(|flow| flow.rides(id, peer));
            if let (true, Some(machine)) = (over_it, &mut trunk.machine) {
                tracing::info!(
                    trunk = %trunk.name,
                    registrar = %trunk.settings.registrar,
                    "TCP connection to the registrar closed: refreshing the registration"
                );
                machine.handle_binding_lost(now);
            }
        }
        self.pump(now, endpoint);
    }

    /// Fires what is due at `now`: refreshes, retries, expiries, keepalives, and the end of the
    /// wait for unregistrations.
    pub fn handle_timeout(&mut self, now: Instant, endpoint: &mut Endpoint) {
        for trunk in &mut self.trunks {
            if let Some(machine) = &mut trunk.machine {
                if machine.poll_timeout().is_some_and(|at| at <= now) {
                    machine.handle_timeout(now);
                }
            }
        }
        for index in 0..self.trunks.len() {
            let due = self.trunks[index]
                .keepalive
                .as_ref()
                .and_then(|keepalive| keepalive.next_at)
                .is_some_and(|at| at <= now);
            if due {
                self.send_keepalive(now, endpoint, index);
            }
        }
        if let Some(deadline) = self.unregister_deadline {
            if deadline <= now && !self.gave_up && !self.all_finished() {
                self.gave_up = true;
                for trunk in self.trunks.iter().filter(|t| !t.is_finished()) {
                    tracing::warn!(
                        trunk = %trunk.name,
                        registrar = %trunk.settings.registrar,
                        "no answer to the unregistration within {} s: exiting anyway (the \
                         binding expires on its own)",
                        UNREGISTER_TIMEOUT.as_secs()
                    );
                }
            }
        }
        self.pump(now, endpoint);
    }

    /// The earliest timer of any registration or keepalive, or the unregistration deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let machines = self
            .trunks
            .iter()
            .filter_map(|trunk| trunk.machine.as_ref()?.poll_timeout());
        let keepalives = self
            .trunks
            .iter()
            .filter_map(|trunk| trunk.keepalive.as_ref()?.next_at);
        let deadline = self
            .unregister_deadline
            .filter(|_| !self.gave_up && !self.all_finished());
        machines.chain(keepalives).chain(deadline).min()
    }

    /// Shutdown: every registration sends REGISTER with Expires: 0 (trunks never started
    /// finish at once); keepalives stop. [`Registrations::is_finished`] turns true when all
    /// have ended, or [`UNREGISTER_TIMEOUT`] after `now`.
    pub fn unregister_all(&mut self, now: Instant, endpoint: &mut Endpoint) {
        if self.unregister_deadline.is_some() {
            return;
        }
        self.unregister_deadline = Some(now + UNREGISTER_TIMEOUT);
        for trunk in &mut self.trunks {
            if let Some(keepalive) = &mut trunk.keepalive {
                keepalive.next_at = None;
                keepalive.stopped = true;
            }
            if let Some(machine) = &mut trunk.machine {
                machine.unregister(now);
            }
        }
        self.pump(now, endpoint);
    }

    /// Whether shutdown may proceed: every unregistration ended, or the deadline passed.
    pub fn is_finished(&self) -> bool {
        self.gave_up || self.all_finished()
    }

    /// The register-mode trunk whose registered Contact `request_uri` is (user, host and port;
    /// the Contact as first advertised counts too, for calls routed before a rewrite).
    pub fn trunk_by_contact(&self, request_uri: &str) -> Option<&str> {
        let user = uri_user(request_uri)?;
        let (host, port) = uri_host_port(request_uri)?;
        self.trunks
            .iter()
            .find(|trunk| {
                let Some(machine) = &trunk.machine else {
                    return false;
                };
                let advertised = trunk.advertised.as_deref().map(|a| format!("sip:{a}"));
                trunk.settings.contact_user == user
                    && [Some(machine.contact()), advertised.as_deref()]
                        .into_iter()
                        .flatten()
                        .any(|contact| same_host_port(contact, &host, port))
            })
            .map(|trunk| trunk.name.as_str())
    }

    /// The first register-mode trunk whose registrar or outbound proxy has address `source`.
    pub fn trunk_by_source(&self, source: IpAddr) -> Option<&str> {
        let source = canonical(source);
        self.trunks
            .iter()
            .find(|trunk| trunk.sources.contains(&source))
            .map(|trunk| trunk.name.as_str())
    }

    /// Every register-mode trunk's state, in configuration order.
    pub fn statuses(&self) -> impl Iterator<Item = RegistrationStatus<'_>> {
        self.trunks.iter().map(|trunk| RegistrationStatus {
            trunk: &trunk.name,
            up: trunk.machine.as_ref().is_some_and(Registration::is_up),
            expires: trunk
                .machine
                .as_ref()
                .and_then(Registration::granted_expires),
            stats: trunk.machine.as_ref().map(Registration::stats),
        })
    }

    fn all_finished(&self) -> bool {
        self.trunks.iter().all(TrunkRegistration::is_finished)
    }

    fn send_keepalive(&mut self, now: Instant, endpoint: &mut Endpoint, index: usize) {
        let trunk = &mut self.trunks[index];
        let (Some(flow), Some(keepalive)) = (trunk.flow(), &mut trunk.keepalive) else {
            return;
        };
        keepalive.next_at = None;
        keepalive.cseq = keepalive.cseq.wrapping_add(1) & 0x7fff_ffff;
        let settings = &trunk.settings;
        let mut headers: Vec<(&'static str, String)> = Vec::new();
        if let Some(proxy) = &settings.outbound_proxy {
            headers.push(("Route", loose_route(proxy)));
        }
        headers.push((
            "From",
            format!("<{}>;tag={}", settings.aor, keepalive.from_tag),
        ));
        headers.push(("To", format!("<{}>", settings.registrar)));
        headers.push(("Call-ID", keepalive.call_id.clone()));
        headers.push(("CSeq", format!("{} OPTIONS", keepalive.cseq)));
        headers.push(("Max-Forwards", "70".to_owned()));
        let request = OutgoingRequest {
            method: "OPTIONS".to_owned(),
            request_uri: settings.registrar.clone(),
            headers,
            cseq: keepalive.cseq,
        };
        let tx = endpoint.send_request_to_flow(now, &flow, &request, None);
        self.transactions.insert(tx, (index, Purpose::Keepalive));
    }

    /// Sends every queued REGISTER and logs every event.
    fn pump(&mut self, now: Instant, endpoint: &mut Endpoint) {
        for (index, trunk) in self.trunks.iter_mut().enumerate() {
            let Some(machine) = &mut trunk.machine else {
                continue;
            };
            let mut events = Vec::new();
            while let Some(event) = machine.poll_event() {
                log_event(&trunk.name, &trunk.settings.registrar, &event);
                events.push(event);
            }
            for event in &events {
                trunk.follow(event);
            }
            let (Some(flow), Some(machine)) = (trunk.flow(), &mut trunk.machine) else {
                continue;
            };
            while let Some(request) = machine.poll_request() {
                let tx = endpoint.send_request_to_flow(now, &flow, &request, None);
                self.transactions
                    .insert(tx, (index, Purpose::Register { cseq: request.cseq }));
            }
        }
    }
}

impl TrunkRegistration {
    /// Moves along the targets as the registration's `event` says: the next one on a
    /// fail-over; the first again when a round of fail-overs ended in a backoff (the most
    /// preferred server may be back by the retry); a success ends the round where it is.
    fn follow(&mut self, event: &Event) {
        let count = self.targets.len().max(1);
        match event {
            Event::FailOver => {
                let failed = self.flow().map(|flow| flow.remote);
                self.current = (self.current + 1) % count;
                if let Some((flow, origin)) = self.targets.get(self.current) {
                    tracing::warn!(
                        trunk = %self.name,
                        registrar = %self.settings.registrar,
                        failed = ?failed,
                        next = %flow.remote,
                        "trying the registrar's next server: {origin}"
                    );
                }
            }
            Event::Attempt(attempt) if attempt.result == AttemptResult::Ok => {
                self.new_round();
            }
            Event::Attempt(attempt) if attempt.retry_in.is_some_and(|d| !d.is_zero()) => {
                if attempt.result.fails_over(attempt.status) {
                    self.current = 0;
                }
                self.new_round();
            }
            _ => {}
        }
    }

    /// The server in use: how REGISTERs and keepalives reach it.
    fn flow(&self) -> Option<Flow> {
        self.targets.get(self.current).map(|(flow, _)| *flow)
    }

    /// Every other server may be failed over to again.
    fn new_round(&mut self) {
        let alternatives = self.targets.len().saturating_sub(1);
        if let Some(machine) = &mut self.machine {
            machine.set_alternatives(alternatives);
        }
    }

    /// DNS changed: `targets` replaces the list. The same servers in another order change
    /// nothing (SRV's weighted order differs from one answer to the next). Otherwise the
    /// current server stays if still listed; else the next REGISTER goes to the new first one,
    /// now.
    fn replace_targets(&mut self, now: Instant, targets: Vec<(Flow, String)>) {
        let addresses = |targets: &[(Flow, String)]| {
            let mut addresses: Vec<SocketAddr> =
                targets.iter().map(|(flow, _)| flow.remote).collect();
            addresses.sort_unstable();
            addresses
        };
        if addresses(&targets) == addresses(&self.targets) {
            return;
        }
        tracing::info!(
            trunk = %self.name,
            registrar = %self.settings.registrar,
            servers = ?targets.iter().map(|(flow, _)| flow.remote).collect::<Vec<_>>(),
            "the registrar's servers changed in DNS"
        );
        let current = self.flow().map(|flow| flow.remote);
        let kept = targets
            .iter()
            .position(|(flow, _)| Some(flow.remote) == current);
        self.targets = targets;
        self.current = kept.unwrap_or(0);
        if kept.is_none() {
            if let Some(machine) = &mut self.machine {
                machine.handle_binding_lost(now);
            }
        }
        self.new_round();
    }

    fn is_finished(&self) -> bool {
        self.machine.as_ref().is_none_or(Registration::is_finished)
    }

    fn keepalive_answered(&mut self, now: Instant) {
        let Some(keepalive) = &mut self.keepalive else {
            return;
        };
        if keepalive.failing {
            keepalive.failing = false;
            tracing::info!(
                trunk = %self.name,
                registrar = %self.settings.registrar,
                "registrar answers keepalives again: refreshing the registration (it may have \
                 restarted)"
            );
            if let Some(machine) = &mut self.machine {
                machine.handle_binding_lost(now);
            }
        }
        keepalive.schedule(now);
    }

    fn keepalive_timed_out(&mut self, now: Instant) {
        let Some(keepalive) = &mut self.keepalive else {
            return;
        };
        // Once per outage: a registrar that never answers OPTIONS must not cost a REGISTER per
        // keepalive; the recovery (an answer again) refreshes once more.
        if !keepalive.failing {
            keepalive.failing = true;
            tracing::warn!(
                trunk = %self.name,
                registrar = %self.settings.registrar,
                "no answer to the OPTIONS keepalive: registering again"
            );
            if let Some(machine) = &mut self.machine {
                machine.handle_binding_lost(now);
            }
        }
        keepalive.schedule(now);
    }
}

impl Keepalive {
    fn schedule(&mut self, now: Instant) {
        self.next_at = (!self.stopped).then(|| now + self.interval);
    }
}

/// Logs one registration event: trunk, registrar, status and the machine's description
/// (e.g. `REGISTER to pbx.example.com refused: 403 Forbidden; retrying in 5 s`).
fn log_event(trunk: &str, registrar: &str, event: &Event) {
    match event {
        Event::Attempt(attempt) => {
            let status = attempt
                .status
                .map_or_else(|| "none".to_owned(), |status| status.to_string());
            let result = attempt.result.label();
            let description = &attempt.description;
            match attempt.result {
                AttemptResult::Ok => {
                    tracing::info!(trunk, registrar, %status, result, "{description}")
                }
                AttemptResult::AuthRequired => {
                    tracing::debug!(trunk, registrar, %status, result, "{description}")
                }
                // Retried at once with Min-Expires: not a failure yet.
                AttemptResult::IntervalTooBrief if attempt.retry_in.is_none() => {
                    tracing::info!(trunk, registrar, %status, result, "{description}")
                }
                _ => tracing::warn!(trunk, registrar, %status, result, "{description}"),
            }
        }
        Event::Up { expires } => tracing::info!(
            trunk,
            registrar,
            expires_secs = expires.as_secs(),
            "registration up"
        ),
        Event::Down { description } => {
            tracing::warn!(trunk, registrar, "registration down: {description}")
        }
        Event::ContactRewritten { old, new } => tracing::info!(
            trunk,
            registrar,
            %old,
            %new,
            "the registrar sees another address than the Contact: re-registering with it"
        ),
        Event::FailOver => {}
        Event::Finished => tracing::debug!(trunk, registrar, "registration finished"),
    }
}

fn transport_of(transport: TrunkTransport) -> Transport {
    match transport {
        TrunkTransport::Udp => Transport::Udp,
        TrunkTransport::Tcp => Transport::Tcp,
    }
}

/// A proxy URI as a loose-routing Route value.
fn loose_route(proxy: &str) -> String {
    let has_lr = proxy
        .split(';')
        .skip(1)
        .any(|param| param.trim().eq_ignore_ascii_case("lr"));
    if has_lr {
        format!("<{proxy}>")
    } else {
        format!("<{proxy};lr>")
    }
}

/// The user part of a SIP URI (`sip:bot@host` → `bot`), if any.
fn uri_user(uri: &str) -> Option<&str> {
    let uri = uri.trim().trim_start_matches('<');
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let rest = rest.split([';', '?', '>']).next()?;
    rest.rsplit_once('@').map(|(user, _)| user)
}

/// Whether `uri`'s host and port are `host` and `port` (IP addresses compared as addresses).
fn same_host_port(uri: &str, host: &str, port: u16) -> bool {
    let Some((uri_host, uri_port)) = uri_host_port(uri) else {
        return false;
    };
    let same_host = match (uri_host.parse::<IpAddr>(), host.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => canonical(a) == canonical(b),
        _ => uri_host.eq_ignore_ascii_case(host),
    };
    same_host && uri_port == port
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests;
