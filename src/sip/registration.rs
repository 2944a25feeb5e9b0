//! The per-trunk REGISTER client (RFC 3261 §10.2), with NAT Contact rewriting (RFC 3581, as
//! PJSIP's `rewrite_contact`), sans-IO. Digest answers come from an [`Authenticator`].
//!
//! ```text
//!  new ──REGISTER──> Registering ──2xx──> Registered ──refresh_at──> Registering
//!                      │ 401/407: answer (CSeq+1), stay; again with stale=true: answer again
//!                      │ 423: expires = Min-Expires (CSeq+1), stay; once per attempt
//!                      │ 2xx whose top Via received/rport differ from the Contact: rewrite
//!                      │   the Contact, REGISTER new (old Contact expires=0 in the same request)
//!                      └ 3xx–6xx, refused credentials, Timer F ──> Backoff ──retry_at──> Registering
//!  unregister ──REGISTER Expires: 0──> Unregistering ──final / challenge refused / timeout──> Finished
//!  the binding's expiry passing without a successful refresh ──> up = false (Event::Down), any state
//! ```
//!
//! In: [`Registration::new`] (queues the first REGISTER), [`Registration::handle_response`] and
//! [`Registration::handle_request_timeout`] for the REGISTER transactions, the timer via
//! [`Registration::handle_timeout`], [`Registration::handle_binding_lost`] when something says
//! the registrar forgot us, [`Registration::unregister`] at shutdown. Out:
//! [`Registration::poll_request`] (an [`OutgoingRequest`] for [`Endpoint::send_request`], which
//! adds Via with `rport` and User-Agent and sends to the first Route — the outbound proxy — else
//! the registrar URI), [`Registration::poll_event`] (attempt results and up/down for logs and
//! metrics), [`Registration::poll_timeout`].
//!
//! Timing decisions:
//! - Refresh at `granted − min(granted/2, 60 s)`, never sooner than 5 s after the 200: one
//!   minute ahead lets a refresh lost entirely over UDP (Timer F, 32 s) be followed by a first
//!   retry (5 s) before the binding lapses, where PJSIP's 5 s ahead cannot; refreshing at half of
//!   a long grant (3600 s) would double the REGISTER rate for nothing. Short grants refresh at half.
//! - Failures back off 5 s, 10 s, 20 s … capped at 300 s, each ±20 % jitter; a Retry-After in the
//!   failure wins (floored at 5 s, capped at 1 h). A 200 resets the schedule.
//! - A challenge is answered as often as it says `stale=true`, at most [`MAX_STALE`] times per
//!   attempt; a challenge of the same kind (401 or 407) after answering one, without
//!   `stale=true`, means the credentials were refused. The challenges of the last successful
//!   registration are answered ahead of time on the next refresh (as PJSIP does), which saves a
//!   round trip; the first challenge of an attempt is never taken as a refusal, so an expired
//!   nonce answered ahead of time is harmless. Any failure forgets them.
//!
//! [`Endpoint::send_request`]: super::endpoint::Endpoint::send_request

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::dialog::OutgoingRequest;
use super::endpoint::{host_literal, uri_host_port, ALLOW, SUPPORTED};
use super::message::{self, Response, Rport, Transport, Via};
use super::validate::find_unquoted;

/// Refresh no later than this before the granted expiry (halved for short grants).
pub const REFRESH_AHEAD_MAX: Duration = Duration::from_secs(60);
/// The shortest delay between a 200 and the refresh, whatever the registrar grants.
pub const MIN_REFRESH: Duration = Duration::from_secs(5);
/// The first retry delay after a failure; doubles per consecutive failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// The longest retry delay before jitter.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// The longest Retry-After honoured.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3_600);
/// The longest expiry a 423's Min-Expires may raise the request to.
pub const MAX_EXPIRES: Duration = Duration::from_secs(86_400);
/// How many `stale=true` challenges one attempt answers before giving up as refused.
pub const MAX_STALE: u8 = 2;

/// Answers digest challenges ([`DigestAuthenticator`]: `sip/auth.rs`, RFC 8760).
pub trait Authenticator {
    /// The header (name, value) answering `challenge` — the raw `WWW-Authenticate` value, or the
    /// `Proxy-Authenticate` value when `proxy` (a 407) — for `method` and `uri`; `None` when the
    /// challenge cannot be answered (unsupported algorithm, unknown realm). May be called again
    /// with a challenge answered before (credentials sent ahead on refreshes): count `nc` up.
    fn answer(
        &mut self,
        challenge: &str,
        proxy: bool,
        method: &str,
        uri: &str,
    ) -> Option<(String, String)>;

    /// Whether `challenge`, received after credentials were sent, says they were refused (it
    /// lacks `stale=true`).
    fn refused(&self, challenge: &str) -> bool;
}

/// Fixed settings of one trunk's registration.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// The trunk's name (for logs).
    pub trunk: String,
    /// The registrar URI: the Request-URI, e.g. `sip:pbx.example.com` or `sip:192.0.2.10:5080`.
    pub registrar: String,
    /// The address-of-record put in To and From, `sip:user@domain`.
    pub aor: String,
    /// An outbound proxy URI (sent as a loose Route, so it is the next hop), if any.
    pub outbound_proxy: Option<String>,
    /// The transport the trunk uses (`;transport=` of the Contact).
    pub transport: Transport,
    /// The user part of voxgate's Contact.
    pub contact_user: String,
    /// The `host:port` voxgate advertises toward the registrar ([`Endpoint::advertised`]).
    ///
    /// [`Endpoint::advertised`]: super::endpoint::Endpoint::advertised
    pub contact_address: String,
    /// The expiry asked for.
    pub expires: Duration,
    /// Re-register with the address the registrar saw (`received`/`rport`) when it differs.
    pub rewrite_contact: bool,
    /// Seed of the backoff jitter (random in production, fixed in tests).
    pub jitter_seed: u64,
}

/// How one REGISTER ended: a bounded set, for `voxgate_registration_attempts_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttemptResult {
    /// 2xx: registered (or unregistered).
    Ok,
    /// 401/407 that was answered.
    AuthRequired,
    /// 403, credentials refused (a second challenge without `stale=true`), a challenge that
    /// cannot be answered, or a 2xx that kept no binding.
    Refused,
    /// 423, whether retried with Min-Expires or not.
    IntervalTooBrief,
    /// Another 3xx.
    Redirected,
    /// Another 4xx.
    ClientError,
    /// 5xx.
    ServerError,
    /// 6xx.
    GlobalError,
    /// No final response (Timer F).
    TimedOut,
    /// The transport could not send the request.
    TransportError,
}

impl AttemptResult {
    /// Every result, in label order.
    pub const ALL: [AttemptResult; 10] = [
        AttemptResult::Ok,
        AttemptResult::AuthRequired,
        AttemptResult::Refused,
        AttemptResult::IntervalTooBrief,
        AttemptResult::Redirected,
        AttemptResult::ClientError,
        AttemptResult::ServerError,
        AttemptResult::GlobalError,
        AttemptResult::TimedOut,
        AttemptResult::TransportError,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            AttemptResult::Ok => "ok",
            AttemptResult::AuthRequired => "auth_required",
            AttemptResult::Refused => "refused",
            AttemptResult::IntervalTooBrief => "interval_too_brief",
            AttemptResult::Redirected => "error_3xx",
            AttemptResult::ClientError => "error_4xx",
            AttemptResult::ServerError => "error_5xx",
            AttemptResult::GlobalError => "error_6xx",
            AttemptResult::TimedOut => "timeout",
            AttemptResult::TransportError => "transport_error",
        }
    }

    /// Whether a failure with this result (and status) is the server's, so that the next
    /// server of the registrar's, if any, is tried at once (RFC 3263 §4.3: a timeout, a
    /// transport error or a 503).
    pub fn fails_over(self, status: Option<u16>) -> bool {
        matches!(
            self,
            AttemptResult::TimedOut | AttemptResult::TransportError
        ) || status == Some(503)
    }

    fn of_failure(status: u16) -> AttemptResult {
        match status {
            403 => AttemptResult::Refused,
            423 => AttemptResult::IntervalTooBrief,
            300..=399 => AttemptResult::Redirected,
            500..=599 => AttemptResult::ServerError,
            600..=699 => AttemptResult::GlobalError,
            _ => AttemptResult::ClientError,
        }
    }

    fn index(self) -> usize {
        AttemptResult::ALL
            .iter()
            .position(|result| *result == self)
            .unwrap_or(0)
    }
}

/// One REGISTER's outcome, ready to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The result label.
    pub result: AttemptResult,
    /// The status received (None on timeout or transport error).
    pub status: Option<u16>,
    /// When the next REGISTER goes out after a failure.
    pub retry_in: Option<Duration>,
    /// E.g. `REGISTER to pbx.example.com refused: 403 Forbidden; retrying in 5 s`.
    pub description: String,
}

/// What the registration tells `io/` (to log and count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A REGISTER got its final response, or none.
    Attempt(Attempt),
    /// The binding came up (it was down): registered for `expires`.
    Up {
        /// The expiry granted.
        expires: Duration,
    },
    /// The binding's expiry passed without a successful refresh.
    Down {
        /// Ready to log.
        description: String,
    },
    /// The registrar saw another address than the Contact: re-registering with `new`.
    ContactRewritten {
        /// The Contact URI before.
        old: String,
        /// The Contact URI from now on.
        new: String,
    },
    /// The REGISTER failed in a way that says "this server" (no answer, a transport error, or
    /// 503: RFC 3263 §4.3) and [`Registration::set_alternatives`] allowed another: the next
    /// REGISTER goes out at once, and must go to the next server.
    FailOver,
    /// The unregistration ended (any final response or timeout); nothing more will happen.
    Finished,
}

/// Counters for `io/` to export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrationStats {
    attempts: [u64; AttemptResult::ALL.len()],
}

impl RegistrationStats {
    /// REGISTER attempts that ended with `result`.
    pub fn attempts(&self, result: AttemptResult) -> u64 {
        self.attempts[result.index()]
    }
}

/// Where the machine is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// A REGISTER adding the Contact is in flight.
    Registering(Pending),
    /// Registered; the refresh goes out at `refresh_at`.
    Registered { refresh_at: Instant },
    /// The last attempt failed; the next one goes out at `retry_at`.
    Backoff { retry_at: Instant },
    /// The REGISTER with Expires: 0 is in flight.
    Unregistering(Pending),
    /// Unregistered; nothing more to do.
    Finished,
}

/// The REGISTER in flight and what this attempt has been through.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    /// The CSeq of the request in flight; responses with another one are stale.
    cseq: u32,
    /// A challenge of this kind (index 0: 401, 1: 407) was answered in this attempt.
    answered: [bool; 2],
    /// `stale=true` challenges answered in this attempt.
    stale: u8,
    /// A 423 was already retried in this attempt.
    retried_interval: bool,
}

impl Pending {
    fn new(cseq: u32) -> Pending {
        Pending {
            cseq,
            answered: [false; 2],
            stale: 0,
            retried_interval: false,
        }
    }
}

/// What the registrar holds for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Binding {
    granted: Duration,
    expires_at: Instant,
}

/// One trunk's registration.
#[derive(Debug)]
pub struct Registration<A> {
    config: RegistrationConfig,
    authenticator: A,
    /// The registrar's host[:port], for descriptions.
    registrar_name: String,
    route: Option<String>,
    call_id: String,
    from_tag: String,
    cseq: u32,
    /// The expiry asked for (raised by a 423).
    expires: Duration,
    /// voxgate's Contact URI.
    contact: String,
    /// A Contact replaced by a rewrite, removed (expires=0) until a 2xx confirms.
    retiring: Option<String>,
    state: State,
    binding: Option<Binding>,
    /// The latest challenge of each kind (401, 407), answered ahead on the next REGISTER.
    challenges: [Option<String>; 2],
    failures: u32,
    /// Further servers this attempt may fail over to ([`Registration::set_alternatives`]).
    alternatives: usize,
    last_sent: Option<Instant>,
    /// Whether the last 2xx listed our Contact.
    contact_listed: bool,
    /// The last 2xx already rewrote the Contact (so this one waits for the refresh).
    rewrote_last: bool,
    last_result: Option<AttemptResult>,
    rng: u64,
    requests: VecDeque<OutgoingRequest>,
    events: VecDeque<Event>,
    stats: RegistrationStats,
}

impl<A: Authenticator> Registration<A> {
    /// Starts registering: queues the first REGISTER (new Call-ID, From tag, CSeq 1).
    pub fn new(now: Instant, config: RegistrationConfig, authenticator: A) -> Registration<A> {
        let host = config
            .contact_address
            .rsplit_once(':')
            .map_or(config.contact_address.as_str(), |(host, _)| host)
            .to_owned();
        let contact = contact_uri(&config, &config.contact_address);
        let mut registration = Registration {
            registrar_name: hostport_of(&config.registrar),
            route: config.outbound_proxy.as_deref().map(loose_route),
            call_id: message::new_call_id(&host),
            from_tag: message::new_tag(),
            cseq: 0,
            expires: config.expires,
            contact,
            retiring: None,
            state: State::Finished,
            binding: None,
            challenges: [None, None],
            failures: 0,
            alternatives: 0,
            last_sent: None,
            contact_listed: true,
            rewrote_last: false,
            last_result: None,
            rng: config.jitter_seed,
            requests: VecDeque::new(),
            events: VecDeque::new(),
            stats: RegistrationStats::default(),
            config,
            authenticator,
        };
        registration.begin(now);
        registration
    }

    /// Whether the registrar holds our binding (the last REGISTER succeeded and its expiry has
    /// not passed), for `voxgate_registration_up`.
    pub fn is_up(&self) -> bool {
        self.binding.is_some()
    }

    /// The expiry the registrar granted, while up (`voxgate_registration_expires_seconds`).
    pub fn granted_expires(&self) -> Option<Duration> {
        self.binding.map(|binding| binding.granted)
    }

    /// voxgate's Contact URI as registered (rewritten after NAT discovery).
    pub fn contact(&self) -> &str {
        &self.contact
    }

    /// The result of the last REGISTER.
    pub fn last_result(&self) -> Option<AttemptResult> {
        self.last_result
    }

    /// Whether the last 2xx listed our Contact (false: the registrar or an ALG rewrote it).
    pub fn is_contact_listed(&self) -> bool {
        self.contact_listed
    }

    /// Whether the unregistration has ended.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// The trunk's settings.
    pub fn config(&self) -> &RegistrationConfig {
        &self.config
    }

    /// Counters since start.
    pub fn stats(&self) -> &RegistrationStats {
        &self.stats
    }

    /// The next REGISTER to send: pass it to `Endpoint::send_request` on the trunk's flow and
    /// route that transaction's response (and its timeout, with the request's CSeq) back here.
    pub fn poll_request(&mut self) -> Option<OutgoingRequest> {
        self.requests.pop_front()
    }

    /// The next event to log or count.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Registration::handle_timeout`] must next be called: the refresh or retry, or the
    /// binding's expiry; `None` once finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state = match &self.state {
            State::Registered { refresh_at } => Some(*refresh_at),
            State::Backoff { retry_at } => Some(*retry_at),
            State::Registering(_) | State::Unregistering(_) | State::Finished => None,
        };
        let expiry = self.binding.map(|binding| binding.expires_at);
        state.into_iter().chain(expiry).min()
    }

    /// Fires what is due at `now`: the binding's expiry (up → down), then the refresh or retry.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(binding) = self.binding {
            if binding.expires_at <= now {
                self.binding = None;
                self.events.push_back(Event::Down {
                    description: format!(
                        "registration at {} expired without a successful refresh",
                        self.registrar_name
                    ),
                });
            }
        }
        match self.state {
            State::Registered { refresh_at: at } | State::Backoff { retry_at: at } if at <= now => {
                self.begin(now)
            }
            _ => {}
        }
    }

    /// A response to the REGISTER transaction (any status). Responses to an earlier REGISTER
    /// (another CSeq or Call-ID) and provisional responses are ignored.
    pub fn handle_response(&mut self, now: Instant, response: &Response) {
        let cseq = response.cseq();
        let Some(pending) = self.pending() else {
            return;
        };
        if cseq.seq != pending.cseq
            || cseq.method != rsip::Method::Register
            || response.call_id() != self.call_id
        {
            return;
        }
        let status = response.status();
        match status {
            100..=199 => {}
            200..=299 if self.is_unregistering() => {
                self.record(
                    AttemptResult::Ok,
                    Some(status),
                    None,
                    self.unregistered_text(),
                );
                self.finish();
            }
            200..=299 => self.handle_success(now, response),
            401 | 407 => self.handle_challenge(now, response, status == 407),
            423 => self.handle_interval_too_brief(now, response),
            _ => {
                let retry_after = response
                    .header("Retry-After")
                    .and_then(leading_number)
                    .map(|secs| Duration::from_secs(secs.into()));
                let text = format!(
                    "{} {}: {status} {}",
                    self.verb(),
                    self.failure_word(status),
                    reason_of(response)
                );
                self.fail(
                    now,
                    AttemptResult::of_failure(status),
                    Some(status),
                    text,
                    retry_after,
                );
            }
        }
    }

    /// The REGISTER with CSeq `cseq` ([`OutgoingRequest::cseq`]) got no final response (Timer
    /// F; the endpoint's `Event::RequestTimedOut`). Ignored for a superseded REGISTER.
    pub fn handle_request_timeout(&mut self, now: Instant, cseq: u32) {
        if self.pending().is_some_and(|pending| pending.cseq == cseq) {
            let text = format!("{} timed out (no response)", self.verb());
            self.fail(now, AttemptResult::TimedOut, None, text, None);
        }
    }

    /// The transport could not send the REGISTER with CSeq `cseq` (e.g. TCP connection
    /// refused). Ignored for a superseded REGISTER.
    pub fn handle_transport_error(&mut self, now: Instant, cseq: u32) {
        if self.pending().is_some_and(|pending| pending.cseq == cseq) {
            let text = format!("{} could not be sent (transport error)", self.verb());
            self.fail(now, AttemptResult::TransportError, None, text, None);
        }
    }

    /// How many more servers a failing REGISTER may fail over to before backing off: the
    /// owner's count of the RFC 3263 targets not yet tried in this round (0, the default, when
    /// the registrar has one address). A failure that fails over ([`AttemptResult::fails_over`])
    /// while this is above zero uses one, emits [`Event::FailOver`] and retries at once,
    /// without counting toward the backoff.
    pub fn set_alternatives(&mut self, alternatives: usize) {
        self.alternatives = alternatives;
    }

    /// Something says the registrar no longer holds the binding (a keepalive failed then
    /// recovered, the TCP connection was reset, the registrar restarted): refresh now, but not
    /// sooner than [`MIN_REFRESH`] after the last REGISTER. Ignored unless registered (an
    /// attempt in flight or a backoff already takes care of it).
    pub fn handle_binding_lost(&mut self, now: Instant) {
        if let State::Registered { refresh_at } = &mut self.state {
            let earliest = self.last_sent.map_or(now, |sent| sent + MIN_REFRESH);
            *refresh_at = (*refresh_at).min(now.max(earliest));
        }
    }

    /// Shutdown: sends REGISTER with Expires: 0 for our Contact (answering a challenge), then
    /// [`Event::Finished`] on any final response or timeout. Finishes at once when nothing was
    /// ever sent; a REGISTER in flight is superseded (its response is ignored).
    pub fn unregister(&mut self, now: Instant) {
        if matches!(self.state, State::Unregistering(_) | State::Finished) {
            return;
        }
        self.binding = None;
        if self.last_sent.is_none() {
            self.finish();
            return;
        }
        self.state = State::Unregistering(Pending::new(0));
        self.send(now, None);
    }

    fn begin(&mut self, now: Instant) {
        self.state = State::Registering(Pending::new(0));
        self.send(now, None);
    }

    /// Sends the next REGISTER of the current attempt; `fresh` answers the challenge just
    /// received (the other kind, if remembered, is answered again).
    fn send(&mut self, now: Instant, fresh: Option<(bool, (String, String))>) {
        self.cseq = self.cseq.wrapping_add(1) & 0x7fff_ffff;
        let cseq = self.cseq;
        let expires_secs = if self.is_unregistering() {
            0
        } else {
            self.expires.as_secs()
        };
        let mut headers: Vec<(&'static str, String)> = Vec::new();
        if let Some(route) = &self.route {
            headers.push(("Route", route.clone()));
        }
        headers.push((
            "From",
            format!("<{}>;tag={}", self.config.aor, self.from_tag),
        ));
        headers.push(("To", format!("<{}>", self.config.aor)));
        headers.push(("Call-ID", self.call_id.clone()));
        headers.push(("CSeq", format!("{cseq} REGISTER")));
        headers.push((
            "Contact",
            format!("<{}>;expires={expires_secs}", self.contact),
        ));
        if let Some(old) = &self.retiring {
            // RFC 3261 §10.2.2: expires=0 on one Contact removes that binding only.
            headers.push(("Contact", format!("<{old}>;expires=0")));
        }
        headers.push(("Expires", expires_secs.to_string()));
        headers.push(("Max-Forwards", "70".to_owned()));
        headers.push(("Allow", ALLOW.to_owned()));
        headers.push(("Supported", SUPPORTED.to_owned()));
        for proxy in [false, true] {
            let answer = match &fresh {
                Some((kind, answer)) if *kind == proxy => Some(answer.clone()),
                _ => self.challenges[usize::from(proxy)]
                    .clone()
                    .and_then(|challenge| {
                        self.authenticator.answer(
                            &challenge,
                            proxy,
                            "REGISTER",
                            &self.config.registrar,
                        )
                    }),
            };
            if let Some((name, value)) = answer {
                headers.push((credentials_header(&name, proxy), value));
            }
        }
        match &mut self.state {
            State::Registering(pending) | State::Unregistering(pending) => pending.cseq = cseq,
            _ => {}
        }
        self.last_sent = Some(now);
        self.requests.push_back(OutgoingRequest {
            method: "REGISTER".to_owned(),
            request_uri: self.config.registrar.clone(),
            headers,
            cseq,
        });
    }

    fn handle_success(&mut self, now: Instant, response: &Response) {
        let (granted, listed) = granted_expiry(response, &self.contact, self.expires);
        // More than asked is the registrar's business; refreshing by what was asked is safe, and
        // keeps a wire value from pushing deadlines out by years.
        let granted = granted.min(self.expires);
        if granted.is_zero() {
            let text = format!(
                "{} refused: {} {} kept no binding (expires 0)",
                self.verb(),
                response.status(),
                reason_of(response)
            );
            self.fail(
                now,
                AttemptResult::Refused,
                Some(response.status()),
                text,
                None,
            );
            return;
        }
        let was_up = self.is_up();
        self.failures = 0;
        self.retiring = None;
        self.contact_listed = listed;
        self.binding = Some(Binding {
            granted,
            expires_at: now + granted,
        });
        let note = if listed {
            ""
        } else {
            " (our Contact not listed in the response; the registrar or an ALG rewrote it)"
        };
        let text = format!(
            "{} accepted: {} {}, registered for {} s{note}",
            self.verb(),
            response.status(),
            reason_of(response),
            granted.as_secs()
        );
        self.record(AttemptResult::Ok, Some(response.status()), None, text);
        if !was_up {
            self.events.push_back(Event::Up { expires: granted });
        }
        let rewrite = self.rewritten_contact(response.top_via());
        let rewrote_last = std::mem::replace(&mut self.rewrote_last, rewrite.is_some());
        if let Some(new) = rewrite {
            let old = std::mem::replace(&mut self.contact, new.clone());
            self.events.push_back(Event::ContactRewritten {
                old: old.clone(),
                new,
            });
            self.retiring = Some(old);
            // A NAT that shows another address on every response must not make a REGISTER
            // loop: the second rewrite in a row waits for the refresh.
            if !rewrote_last {
                self.begin(now);
                return;
            }
        }
        self.state = State::Registered {
            refresh_at: now + refresh_delay(granted),
        };
    }

    fn handle_challenge(&mut self, now: Instant, response: &Response, proxy: bool) {
        let status = response.status();
        let kind = usize::from(proxy);
        let name = if proxy {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        let offered: Vec<String> = response.headers_named(name).map(str::to_owned).collect();
        let Some(pending) = self.pending().cloned() else {
            return;
        };
        let mut pending = pending;
        if pending.answered[kind] {
            let refused = offered
                .iter()
                .all(|challenge| self.authenticator.refused(challenge));
            if refused || pending.stale >= MAX_STALE {
                let why = if refused {
                    "credentials refused"
                } else {
                    "too many stale-nonce challenges"
                };
                let text = format!(
                    "{} refused: {why} ({status} {} again after answering one)",
                    self.verb(),
                    reason_of(response)
                );
                self.fail(now, AttemptResult::Refused, Some(status), text, None);
                return;
            }
            pending.stale += 1;
        }
        let registrar = self.config.registrar.clone();
        let answer = offered.iter().find_map(|challenge| {
            self.authenticator
                .answer(challenge, proxy, "REGISTER", &registrar)
                .map(|answer| (challenge.clone(), answer))
        });
        let Some((challenge, answer)) = answer else {
            let text = format!(
                "{} refused: cannot answer the {status} {} challenge (unsupported algorithm \
                 or realm)",
                self.verb(),
                reason_of(response)
            );
            self.fail(now, AttemptResult::Refused, Some(status), text, None);
            return;
        };
        pending.answered[kind] = true;
        self.set_pending(pending);
        self.challenges[kind] = Some(challenge);
        let text = format!(
            "{} challenged: {status} {}, answering",
            self.verb(),
            reason_of(response)
        );
        self.record(AttemptResult::AuthRequired, Some(status), None, text);
        self.send(now, Some((proxy, answer)));
    }

    fn handle_interval_too_brief(&mut self, now: Instant, response: &Response) {
        let min_expires = response
            .header("Min-Expires")
            .and_then(leading_number)
            .map(|secs| Duration::from_secs(secs.into()));
        let retried = self
            .pending()
            .is_some_and(|pending| pending.retried_interval);
        match min_expires {
            // RFC 3261 §10.2.8: retry with an expiry not below Min-Expires; once per attempt,
            // and only when it raises the expiry (anything else would repeat the 423).
            Some(min)
                if !retried
                    && min > self.expires
                    && min <= MAX_EXPIRES
                    && !self.is_unregistering() =>
            {
                self.expires = min;
                let text = format!(
                    "{}: 423 {}, retrying with expires {} s",
                    self.verb(),
                    reason_of(response),
                    min.as_secs()
                );
                self.record(AttemptResult::IntervalTooBrief, Some(423), None, text);
                if let State::Registering(pending) = &mut self.state {
                    pending.retried_interval = true;
                }
                self.send(now, None);
            }
            _ => {
                let text = format!(
                    "{} failed: 423 {} (Min-Expires {})",
                    self.verb(),
                    reason_of(response),
                    response.header("Min-Expires").unwrap_or("missing")
                );
                self.fail(now, AttemptResult::IntervalTooBrief, Some(423), text, None);
            }
        }
    }

    /// Ends the attempt: unregistering finishes; registering backs off.
    fn fail(
        &mut self,
        now: Instant,
        result: AttemptResult,
        status: Option<u16>,
        text: String,
        retry_after: Option<Duration>,
    ) {
        // Credentials sent ahead may be what the registrar dislikes: start the next attempt clean.
        self.challenges = [None, None];
        if self.is_unregistering() {
            self.record(result, status, None, text);
            self.finish();
            return;
        }
        if self.alternatives > 0 && result.fails_over(status) {
            self.alternatives -= 1;
            self.record(
                result,
                status,
                Some(Duration::ZERO),
                format!("{text}; trying the next server"),
            );
            self.events.push_back(Event::FailOver);
            self.state = State::Backoff { retry_at: now };
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let delay = match retry_after {
            Some(after) => after.clamp(BACKOFF_BASE, RETRY_AFTER_MAX),
            None => self.backoff(),
        };
        let text = format!("{text}; retrying in {} s", delay.as_secs());
        self.record(result, status, Some(delay), text);
        self.state = State::Backoff {
            retry_at: now + delay,
        };
    }

    fn finish(&mut self) {
        self.state = State::Finished;
        self.binding = None;
        self.events.push_back(Event::Finished);
    }

    fn record(
        &mut self,
        result: AttemptResult,
        status: Option<u16>,
        retry_in: Option<Duration>,
        description: String,
    ) {
        self.stats.attempts[result.index()] += 1;
        self.last_result = Some(result);
        self.events.push_back(Event::Attempt(Attempt {
            result,
            status,
            retry_in,
            description,
        }));
    }

    /// 5 s · 2^(failures−1), capped at 300 s, ±20 %.
    fn backoff(&mut self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        let delay = BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_CAP);
        delay.mul_f64(0.8 + 0.4 * self.next_unit())
    }

    /// A uniform number in [0, 1) (splitmix64).
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The Contact to register instead, when the 2xx's top Via says the registrar saw another
    /// address (RFC 3581 `received`/`rport`) and rewriting is on.
    fn rewritten_contact(&self, via: &Via) -> Option<String> {
        if !self.config.rewrite_contact {
            return None;
        }
        let (ip, port) = seen_address(via)?;
        let (host, current_port) = uri_host_port(&self.contact)?;
        let same_host = match host.parse::<IpAddr>() {
            Ok(current) => current == ip,
            Err(_) => false,
        };
        if same_host && current_port == port {
            return None;
        }
        let address = format!("{}:{port}", host_literal(ip));
        Some(contact_uri(&self.config, &address))
    }

    fn pending(&self) -> Option<&Pending> {
        match &self.state {
            State::Registering(pending) | State::Unregistering(pending) => Some(pending),
            _ => None,
        }
    }

    fn set_pending(&mut self, new: Pending) {
        if let State::Registering(pending) | State::Unregistering(pending) = &mut self.state {
            *pending = new;
        }
    }

    fn is_unregistering(&self) -> bool {
        matches!(self.state, State::Unregistering(_))
    }

    /// `REGISTER to pbx.example.com` or `Unregistering from pbx.example.com`, for descriptions.
    fn verb(&self) -> String {
        if self.is_unregistering() {
            format!("Unregistering from {}", self.registrar_name)
        } else {
            format!("REGISTER to {}", self.registrar_name)
        }
    }

    fn failure_word(&self, status: u16) -> &'static str {
        if status == 403 {
            "refused"
        } else {
            "failed"
        }
    }

    fn unregistered_text(&self) -> String {
        format!("{} done", self.verb())
    }
}

/// `sip:user@host:port;transport=udp`.
fn contact_uri(config: &RegistrationConfig, address: &str) -> String {
    let transport = match config.transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    };
    format!(
        "sip:{}@{address};transport={transport}",
        config.contact_user
    )
}

/// The outbound proxy as a loose-routing Route value (strict routing is not supported).
pub(crate) fn loose_route(proxy: &str) -> String {
    let uri = proxy.trim().trim_start_matches('<').trim_end_matches('>');
    let has_lr = uri
        .split(';')
        .skip(1)
        .any(|param| param.trim().eq_ignore_ascii_case("lr"));
    if has_lr {
        format!("<{uri}>")
    } else {
        format!("<{uri};lr>")
    }
}

/// The host[:port] of a URI: `sip:pbx.example.com:5080;transport=tcp` → `pbx.example.com:5080`.
fn hostport_of(uri: &str) -> String {
    let rest = uri.split_once(':').map_or(uri, |(_, rest)| rest);
    let rest = rest.split([';', '?']).next().unwrap_or(rest);
    rest.rsplit_once('@')
        .map_or(rest, |(_, hostport)| hostport)
        .to_owned()
}

/// `Authorization` or `Proxy-Authorization` as a static name (the authenticator's name when it
/// is one of them, else the one the challenge kind implies).
fn credentials_header(name: &str, proxy: bool) -> &'static str {
    if name.eq_ignore_ascii_case("Proxy-Authorization") {
        "Proxy-Authorization"
    } else if name.eq_ignore_ascii_case("Authorization") {
        "Authorization"
    } else if proxy {
        "Proxy-Authorization"
    } else {
        "Authorization"
    }
}

/// The reason phrase, cut to a log-friendly length.
fn reason_of(response: &Response) -> String {
    let reason = response.reason();
    if reason.is_empty() {
        message::default_reason(response.status()).to_owned()
    } else {
        reason.chars().take(80).collect()
    }
}

/// The leading decimal number of a header value (`120 (maintenance);duration=60` → 120).
fn leading_number(value: &str) -> Option<u32> {
    let value = value.trim();
    let end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    value[..end].parse().ok()
}

/// How long the 2xx says our binding lasts, and whether it listed our Contact: our Contact's
/// `expires` parameter, else the Expires header, else what was asked (RFC 3261 §10.2.4).
fn granted_expiry(response: &Response, contact: &str, requested: Duration) -> (Duration, bool) {
    let header = response
        .header("Expires")
        .and_then(leading_number)
        .map(|secs| Duration::from_secs(secs.into()));
    let bindings: Vec<(String, Option<u32>)> = response
        .header_tokens("Contact")
        .iter()
        .filter_map(|value| parse_binding(value))
        .collect();
    match bindings.iter().find(|(uri, _)| same_binding(uri, contact)) {
        Some((_, Some(secs))) => (Duration::from_secs((*secs).into()), true),
        Some((_, None)) => (header.unwrap_or(requested), true),
        None => (header.unwrap_or(requested), bindings.is_empty()),
    }
}

/// The URI and `expires` parameter of one Contact value (name-addr or bare URI).
fn parse_binding(value: &str) -> Option<(String, Option<u32>)> {
    let value = value.trim();
    let (uri, params) = match find_unquoted(value, b'<') {
        Some(open) => {
            let after = value.get(open + 1..)?;
            let close = after.find('>')?;
            (after.get(..close)?, after.get(close + 1..)?)
        }
        // RFC 3261 §20.10: without <>, every parameter is a header parameter.
        None => value.split_once(';').unwrap_or((value, "")),
    };
    let expires = params.split(';').find_map(|param| {
        let (name, number) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("expires")
            .then(|| leading_number(number))
            .flatten()
    });
    Some((uri.trim().to_owned(), expires))
}

/// Whether two SIP URIs name the same binding: same user, host (IP addresses compared as
/// addresses, names case-insensitively) and port; URI parameters are not compared.
fn same_binding(a: &str, b: &str) -> bool {
    let user = |uri: &str| -> Option<String> {
        let rest = uri.split_once(':')?.1;
        rest.rsplit_once('@').map(|(user, _)| user.to_owned())
    };
    let (Some((host_a, port_a)), Some((host_b, port_b))) = (uri_host_port(a), uri_host_port(b))
    else {
        return false;
    };
    let same_host = match (host_a.parse::<IpAddr>(), host_b.parse::<IpAddr>()) {
        (Ok(ip_a), Ok(ip_b)) => ip_a == ip_b,
        _ => host_a.eq_ignore_ascii_case(&host_b),
    };
    user(a).is_some() && user(a) == user(b) && same_host && port_a == port_b
}

/// The address the registrar saw our request come from: the top Via's `received` (else sent-by
/// host) and `rport` (else sent-by port). None when it filled in neither, or `received` is not
/// an IP address.
fn seen_address(via: &Via) -> Option<(IpAddr, u16)> {
    let rport = match via.rport {
        Rport::Value(port) => Some(port),
        Rport::Absent | Rport::Requested => None,
    };
    if via.received.is_none() && rport.is_none() {
        return None;
    }
    let host = via.received.as_deref().unwrap_or(&via.host);
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some((ip, rport.or(via.port).unwrap_or(5060)))
}

/// How long after a 2xx granting `granted` to refresh (see the module doc).
fn refresh_delay(granted: Duration) -> Duration {
    let ahead = (granted / 2).min(REFRESH_AHEAD_MAX);
    granted.saturating_sub(ahead).max(MIN_REFRESH)
}

mod digest;

pub use digest::DigestAuthenticator;

#[cfg(test)]
mod tests;
