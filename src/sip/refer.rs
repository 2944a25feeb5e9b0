//! One REFER's life, seen from the REFERer (RFC 3515), as a sans-IO machine; plus the sipfrag
//! (RFC 3420) and `Subscription-State` (RFC 6665) parsers it needs.
//!
//! ```text
//!  sent ─2xx─> Accepted ─NOTIFY 1xx─> (progress) ─NOTIFY final sipfrag─> Finished
//!  sent ─≥300─> Finished(Rejected)        sent ─Timer F─> Finished(NoResponse)
//!  sent ─deadline─> Finished(NoAccept)    Accepted ─deadline─> Finished(NoFinalNotify)
//!  2xx with `Refer-Sub: false` (RFC 4488) ─> Finished(Succeeded): no NOTIFY will come
//!  NOTIFY `Subscription-State: terminated` without a final sipfrag ─> TerminatedWithoutResult
//! ```
//! A NOTIFY may overtake the 202 on UDP; it implies acceptance. Once the outcome is known,
//! NOTIFYs of the still-active subscription are answered 200; after `terminated`, 481.

use std::time::{Duration, Instant};

/// The longest reason phrase kept from the wire.
const REASON_MAX: usize = 200;

/// A sipfrag status line: `SIP/2.0 200 OK` (RFC 3515 §2.4.5), headers after it ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sipfrag {
    /// The status code (100–699).
    pub status: u16,
    /// The reason phrase (may be empty).
    pub reason: String,
}

/// Why a sipfrag body is not a status line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipfragError {
    /// Nothing but whitespace.
    #[error("empty sipfrag body")]
    Empty,
    /// The first line is not `SIP/2.0 <code> <reason>`.
    #[error("sipfrag is not a SIP/2.0 status line: {0:?}")]
    NotStatusLine(String),
    /// The code is not 100–699.
    #[error("sipfrag status {0} is not 100-699")]
    BadStatus(String),
}

/// Keeps at most `max` characters, cut on a character boundary.
fn bounded(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Parses the first line of a `message/sipfrag` body. Tolerates leading blank lines, LF-only
/// line ends, a missing final line end, an empty reason and non-UTF-8 bytes (replaced).
pub fn parse_sipfrag(body: &[u8]) -> Result<Sipfrag, SipfragError> {
    let text = String::from_utf8_lossy(body);
    let line = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .ok_or(SipfragError::Empty)?;
    let mut parts = line.splitn(3, [' ', '\t']);
    let version = parts.next().unwrap_or_default();
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(SipfragError::NotStatusLine(bounded(line, 80)));
    }
    let code = parts.next().unwrap_or_default().trim();
    let status = match code.parse::<u16>() {
        Ok(status) if (100..=699).contains(&status) && code.len() == 3 => status,
        _ => return Err(SipfragError::BadStatus(bounded(code, 20))),
    };
    let reason = bounded(parts.next().unwrap_or_default().trim(), REASON_MAX);
    Ok(Sipfrag { status, reason })
}

/// A `Subscription-State` header (RFC 6665 §8.2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionState {
    /// `active`.
    Active {
        /// Its `expires` parameter.
        expires: Option<u32>,
    },
    /// `pending`.
    Pending {
        /// Its `expires` parameter.
        expires: Option<u32>,
    },
    /// `terminated`.
    Terminated {
        /// Its `reason` parameter.
        reason: Option<String>,
    },
}

/// Parses a `Subscription-State` value; `None` for an unknown state.
pub fn parse_subscription_state(value: &str) -> Option<SubscriptionState> {
    let mut parts = value.split(';');
    let state = parts.next()?.trim().to_ascii_lowercase();
    let mut expires = None;
    let mut reason = None;
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let value = value.trim().trim_matches('"');
        match name.trim().to_ascii_lowercase().as_str() {
            "expires" => expires = value.parse().ok(),
            "reason" if !value.is_empty() => reason = Some(bounded(value, 40)),
            _ => {}
        }
    }
    match state.as_str() {
        "active" => Some(SubscriptionState::Active { expires }),
        "pending" => Some(SubscriptionState::Pending { expires }),
        "terminated" => Some(SubscriptionState::Terminated { reason }),
        _ => None,
    }
}

/// Whether an `Event` header names the `refer` package (`refer`, `refer;id=93809824`).
pub fn is_refer_event(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|package| package.trim().eq_ignore_ascii_case("refer"))
}

/// A `Refer-To` value for `uri`: the URI in angle brackets (RFC 3515 §2.1).
pub fn refer_to_value(uri: &str) -> String {
    let uri = uri.trim().trim_start_matches('<').trim_end_matches('>');
    format!("<{uri}>")
}

/// Makes arbitrary text safe as one header value: control characters (CR, LF …) become
/// spaces, runs of whitespace collapse, at most `max` characters.
pub fn header_text(value: &str, max: usize) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let collapsed = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    bounded(&collapsed, max)
}

/// What a NOTIFY carried, in header-value form.
#[derive(Debug, Clone, Copy)]
pub struct NotifyInfo<'a> {
    /// `Event`.
    pub event: Option<&'a str>,
    /// `Subscription-State`.
    pub subscription_state: Option<&'a str>,
    /// `Content-Type`.
    pub content_type: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
}

/// What happened to the REFER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferEvent {
    /// 2xx to the REFER (or a NOTIFY before it); `subscription` false after `Refer-Sub: false`.
    Accepted {
        /// NOTIFYs will follow.
        subscription: bool,
    },
    /// A provisional sipfrag (100 Trying, 180 Ringing, 183 …).
    Progress {
        /// The status.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// A final 2xx sipfrag, or a 2xx to a REFER without subscription.
    Succeeded {
        /// The status.
        status: u16,
    },
    /// The transfer failed.
    Failed(ReferFailure),
    /// A NOTIFY whose content was ignored (for the log).
    BadNotify {
        /// Why.
        why: String,
    },
}

/// How a REFER failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferFailure {
    /// The REFER was answered ≥300.
    Rejected {
        /// The status.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// No response at all (Timer F, transport error).
    NoResponse,
    /// No final response by the deadline.
    NoAccept,
    /// A final sipfrag ≥300 (486 Busy Here, 603 Declined …).
    Sipfrag {
        /// The status.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// The subscription ended without a final sipfrag.
    TerminatedWithoutResult {
        /// The `reason` parameter of `Subscription-State`.
        reason: Option<String>,
    },
    /// Accepted, but no final sipfrag by the deadline.
    NoFinalNotify,
}

impl ReferFailure {
    /// The SIP status behind the failure, when there is one.
    pub fn sip_status(&self) -> Option<u16> {
        match self {
            ReferFailure::Rejected { status, .. } | ReferFailure::Sipfrag { status, .. } => {
                Some(*status)
            }
            ReferFailure::NoResponse | ReferFailure::NoAccept => Some(408),
            _ => None,
        }
    }

    /// In an admin's words.
    pub fn describe(&self) -> String {
        match self {
            ReferFailure::Rejected { status, reason } => {
                format!("REFER refused: {status} {reason}")
            }
            ReferFailure::NoResponse => "REFER got no response".to_owned(),
            ReferFailure::NoAccept => "REFER not accepted in time".to_owned(),
            ReferFailure::Sipfrag { status, reason } => {
                format!("transfer failed: {status} {reason}")
            }
            ReferFailure::TerminatedWithoutResult { reason } => format!(
                "the PBX ended the transfer's subscription ({}) without saying how it went",
                reason.as_deref().unwrap_or("no reason given")
            ),
            ReferFailure::NoFinalNotify => {
                "REFER accepted, but no final NOTIFY came in time".to_owned()
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the REFER's final response.
    Sent,
    /// Accepted; waiting for a final sipfrag.
    Accepted,
    /// The outcome is known; the subscription may still be active.
    Finished,
}

/// One REFER, from sending to its outcome.
#[derive(Debug, Clone)]
pub struct ReferClient {
    phase: Phase,
    timeout: Duration,
    deadline: Option<Instant>,
    norefersub: bool,
    /// The notifier said `terminated` (or there never was a subscription).
    subscription_over: bool,
    statuses: Vec<u16>,
    last_progress: Option<u16>,
    accepted: bool,
}

/// How many statuses are remembered for the log.
const STATUSES_MAX: usize = 16;

impl ReferClient {
    /// A REFER sent at `now`; `timeout` bounds the wait for its 2xx and then for the final
    /// NOTIFY; `norefersub`: it carried `Refer-Sub: false`.
    pub fn new(now: Instant, timeout: Duration, norefersub: bool) -> ReferClient {
        ReferClient {
            phase: Phase::Sent,
            timeout,
            deadline: Some(now + timeout),
            norefersub,
            subscription_over: false,
            statuses: Vec::new(),
            last_progress: None,
            accepted: false,
        }
    }

    fn saw(&mut self, status: u16) {
        if self.statuses.len() < STATUSES_MAX {
            self.statuses.push(status);
        }
    }

    fn finish(&mut self, event: ReferEvent, events: &mut Vec<ReferEvent>) {
        self.phase = Phase::Finished;
        self.deadline = None;
        events.push(event);
    }

    fn accept(&mut self, now: Instant, subscription: bool, events: &mut Vec<ReferEvent>) {
        self.phase = Phase::Accepted;
        self.accepted = true;
        self.deadline = Some(now + self.timeout);
        events.push(ReferEvent::Accepted { subscription });
    }

    /// A final response to the REFER (401/407 are the caller's business; 1xx ignored).
    pub fn handle_response(
        &mut self,
        now: Instant,
        status: u16,
        reason: &str,
        refer_sub: Option<&str>,
    ) -> Vec<ReferEvent> {
        let mut events = Vec::new();
        if status < 200 || self.phase != Phase::Sent {
            return events;
        }
        self.saw(status);
        if status >= 300 {
            self.subscription_over = true;
            self.finish(
                ReferEvent::Failed(ReferFailure::Rejected {
                    status,
                    reason: bounded(reason, REASON_MAX),
                }),
                &mut events,
            );
            return events;
        }
        // RFC 4488 §4: the answer's `Refer-Sub: false` says no subscription was created (only
        // meaningful when we asked for it; a stray one is believed all the same).
        let no_subscription =
            refer_sub.is_some_and(|value| value.trim().eq_ignore_ascii_case("false"));
        if no_subscription || (self.norefersub && refer_sub.is_none()) {
            self.subscription_over = no_subscription;
            self.accept(now, !no_subscription, &mut events);
            if no_subscription {
                self.finish(ReferEvent::Succeeded { status }, &mut events);
                return events;
            }
        } else {
            self.accept(now, true, &mut events);
        }
        events
    }

    /// The REFER's transaction timed out or its transport failed.
    pub fn handle_no_response(&mut self, _now: Instant) -> Vec<ReferEvent> {
        let mut events = Vec::new();
        if self.phase == Phase::Sent {
            self.subscription_over = true;
            self.finish(ReferEvent::Failed(ReferFailure::NoResponse), &mut events);
        }
        events
    }

    /// An in-dialog NOTIFY: the status to answer it with, and what it meant.
    pub fn handle_notify(
        &mut self,
        now: Instant,
        notify: &NotifyInfo<'_>,
    ) -> (u16, Vec<ReferEvent>) {
        let mut events = Vec::new();
        if !notify.event.is_some_and(is_refer_event) {
            return (489, events);
        }
        if self.subscription_over {
            return (481, events);
        }
        let state = notify.subscription_state.and_then(parse_subscription_state);
        if self.phase == Phase::Sent {
            // The NOTIFY overtook the 202 (RFC 3515 §2.4.4 allows either order on the wire).
            self.accept(now, true, &mut events);
        }
        let is_sipfrag = notify.content_type.is_some_and(|value| {
            value
                .split(';')
                .next()
                .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("message/sipfrag"))
        });
        let frag = if notify.body.iter().all(u8::is_ascii_whitespace) {
            None
        } else if !is_sipfrag {
            events.push(ReferEvent::BadNotify {
                why: format!(
                    "body of type {:?}, not message/sipfrag",
                    notify
                        .content_type
                        .map(|v| bounded(v, 60))
                        .unwrap_or_default()
                ),
            });
            None
        } else {
            match parse_sipfrag(notify.body) {
                Ok(frag) => Some(frag),
                Err(error) => {
                    events.push(ReferEvent::BadNotify {
                        why: error.to_string(),
                    });
                    None
                }
            }
        };
        if let Some(frag) = frag {
            self.saw(frag.status);
            if self.phase != Phase::Finished {
                match frag.status {
                    100..=199 => {
                        if self.last_progress != Some(frag.status) {
                            self.last_progress = Some(frag.status);
                            events.push(ReferEvent::Progress {
                                status: frag.status,
                                reason: frag.reason,
                            });
                        }
                    }
                    200..=299 => self.finish(
                        ReferEvent::Succeeded {
                            status: frag.status,
                        },
                        &mut events,
                    ),
                    _ => self.finish(
                        ReferEvent::Failed(ReferFailure::Sipfrag {
                            status: frag.status,
                            reason: frag.reason,
                        }),
                        &mut events,
                    ),
                }
            }
        }
        if let Some(SubscriptionState::Terminated { reason }) = state {
            self.subscription_over = true;
            if self.phase != Phase::Finished {
                self.finish(
                    ReferEvent::Failed(ReferFailure::TerminatedWithoutResult { reason }),
                    &mut events,
                );
            }
        }
        (200, events)
    }

    /// Fires the deadline.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<ReferEvent> {
        let mut events = Vec::new();
        if self.deadline.is_none_or(|at| now < at) {
            return events;
        }
        let failure = match self.phase {
            Phase::Sent => ReferFailure::NoAccept,
            Phase::Accepted => ReferFailure::NoFinalNotify,
            Phase::Finished => return events,
        };
        self.finish(ReferEvent::Failed(failure), &mut events);
        events
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// The outcome is known.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// The REFER was accepted (2xx, or a NOTIFY came).
    pub fn is_accepted(&self) -> bool {
        self.accepted
    }

    /// Every status seen (the REFER's response, then the sipfrags), for logs.
    pub fn statuses_seen(&self) -> &[u16] {
        &self.statuses
    }
}

#[cfg(test)]
mod tests;
