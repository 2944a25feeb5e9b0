//! Session timers (RFC 4028): negotiate Session-Expires / Min-SE on INVITE and UPDATE, and keep
//! the session alive (refresh at half the interval when voxgate is the refresher) or end it when
//! the peer forgets to refresh.
//!
//! ```text
//!   negotiate(request) ──> Running ──refresh seen/sent (handle_refreshed)──> Running
//!                             │ voxgate refresher: deadline = interval/2 → Output::Refresh,
//!                             │   retried every interval/4 while no 2xx came back
//!                             └ peer refresher:    deadline = interval − min(32 s, interval/3)
//!                                                  → Output::Expired (send BYE, §10)
//! ```
//! Only a 2xx to a refresh extends the session (§10), so when voxgate refreshes and none of its
//! refreshes succeeds, the session also ends at interval − min(32 s, interval/3).
//! voxgate is always the UAS of its dialogs, so `refresher=uas` means voxgate refreshes. The
//! `refresher` parameter names the UAC or UAS of the *transaction* it travels in (§7.2: "if the
//! parameter contains the value 'uac', the UAC will perform them"), so in a refresh voxgate sends
//! itself, and in the 2xx to it, voxgate is the `uac`: [`Agreement::request_header_value`] and
//! [`answered`] translate.

use std::time::{Duration, Instant};

/// Who refreshes the session (RFC 4028 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// The caller (the UAC of the dialog).
    Uac,
    /// voxgate (the UAS).
    Uas,
}

impl Refresher {
    /// The `refresher` parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// What a request said about session timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimerRequest {
    /// `Session-Expires` delta-seconds, if present.
    pub session_expires: Option<u32>,
    /// Its `refresher` parameter, if present.
    pub refresher: Option<Refresher>,
    /// `Min-SE` delta-seconds, if present.
    pub min_se: Option<u32>,
    /// `Supported: timer` (or `Require: timer`) was present.
    pub supports_timer: bool,
}

impl TimerRequest {
    /// Reads the timer headers (values as found; names already expanded from compact forms).
    pub fn from_headers<'a>(
        session_expires: Option<&str>,
        min_se: Option<&str>,
        supported: impl IntoIterator<Item = &'a str>,
    ) -> TimerRequest {
        let (session_expires, refresher) = match session_expires {
            Some(value) => parse_session_expires(value),
            None => (None, None),
        };
        let min_se = min_se.and_then(leading_number);
        let supports_timer = supported
            .into_iter()
            .flat_map(|value| value.split(','))
            .any(|option| option.trim().eq_ignore_ascii_case("timer"));
        TimerRequest {
            session_expires,
            refresher,
            min_se,
            supports_timer,
        }
    }
}

/// The agreed session timer, to put in the 2xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The session interval.
    pub interval_secs: u32,
    /// Who refreshes.
    pub refresher: Refresher,
}

impl Agreement {
    /// The `Session-Expires` header value for the 2xx.
    pub fn header_value(&self) -> String {
        format!(
            "{};refresher={}",
            self.interval_secs,
            self.refresher.as_str()
        )
    }

    /// The `Session-Expires` header value for a refresh request voxgate sends, where voxgate
    /// is the UAC of the transaction: `uac` when voxgate refreshes, `uas` when the caller does.
    pub fn request_header_value(&self) -> String {
        let refresher = match self.refresher {
            Refresher::Uas => Refresher::Uac,
            Refresher::Uac => Refresher::Uas,
        };
        format!("{};refresher={}", self.interval_secs, refresher.as_str())
    }
}

/// The agreement after a 2xx to a refresh voxgate sent, whose session-timer headers are
/// `response` (RFC 4028 §7.2): its `refresher` decides who refreshes (`uac` is voxgate here),
/// its interval is taken when not below `min_se_secs`. Without Session-Expires the current
/// agreement stays: a peer that does not support timers answers without one, and voxgate keeps
/// refreshing it (the refreshes are what detect a dead peer).
pub fn answered(response: &TimerRequest, current: Agreement, min_se_secs: u32) -> Agreement {
    let Some(interval_secs) = response.session_expires else {
        return current;
    };
    let refresher = match response.refresher {
        Some(Refresher::Uac) => Refresher::Uas,
        Some(Refresher::Uas) => Refresher::Uac,
        None => current.refresher,
    };
    Agreement {
        interval_secs: if interval_secs >= min_se_secs {
            interval_secs
        } else {
            current.interval_secs
        },
        refresher,
    }
}

/// The request's interval is below voxgate's Min-SE: answer 422 with `Min-SE: {min_se}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Session-Expires {requested} is below Min-SE {min_se}")]
pub struct IntervalTooSmall {
    /// What the request asked for.
    pub requested: u32,
    /// voxgate's minimum, for the 422's Min-SE header.
    pub min_se: u32,
}

/// Decides the session timer for an INVITE or UPDATE voxgate answers (RFC 4028 §9).
///
/// `preferred_secs` is voxgate's own interval when the request has none; `min_se_secs` its floor.
pub fn negotiate(
    request: &TimerRequest,
    preferred_secs: u32,
    min_se_secs: u32,
) -> Result<Option<Agreement>, IntervalTooSmall> {
    let Some(requested) = request.session_expires else {
        // §9: without Session-Expires the UAS may add one only if the UAC supports timers, and
        // then lets the UAC refresh; without support there is no session timer at all.
        return Ok(request.supports_timer.then_some(Agreement {
            interval_secs: preferred_secs
                .max(request.min_se.unwrap_or(0))
                .max(min_se_secs),
            refresher: Refresher::Uac,
        }));
    };
    if requested < min_se_secs {
        return Err(IntervalTooSmall {
            requested,
            min_se: min_se_secs,
        });
    }
    // §9: keep the UAC's choice of refresher; if absent, the UAC refreshes when it supports
    // timers, otherwise voxgate must.
    let refresher = request.refresher.unwrap_or(if request.supports_timer {
        Refresher::Uac
    } else {
        Refresher::Uas
    });
    Ok(Some(Agreement {
        interval_secs: requested,
        refresher,
    }))
}

/// What the running timer asks the call to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionTimerOutput {
    /// voxgate is the refresher and half the interval has passed: send a refresh.
    Refresh,
    /// The peer should have refreshed and did not: end the call with BYE (§10).
    Expired,
}

/// The running session timer of one dialog.
#[derive(Debug, Clone)]
pub struct SessionTimer {
    agreement: Agreement,
    deadline: Option<Instant>,
    /// When to give up on the session: shortly before it expires without a refresh.
    give_up_at: Instant,
}

impl SessionTimer {
    /// Starts the timer when the 2xx carrying `agreement` is sent.
    pub fn start(now: Instant, agreement: Agreement) -> SessionTimer {
        let mut timer = SessionTimer {
            agreement,
            deadline: None,
            give_up_at: now,
        };
        timer.handle_refreshed(now, agreement);
        timer
    }

    /// The current agreement.
    pub fn agreement(&self) -> Agreement {
        self.agreement
    }

    /// A refresh succeeded (the peer's re-INVITE/UPDATE was answered 2xx, or ours was).
    pub fn handle_refreshed(&mut self, now: Instant, agreement: Agreement) {
        self.agreement = agreement;
        let interval = Duration::from_secs(agreement.interval_secs.into());
        // §10: the side that is not the refresher sends BYE shortly before the session
        // expires: at interval − min(32 s, interval/3).
        self.give_up_at = now + (interval - Duration::from_secs(32).min(interval / 3));
        self.deadline = Some(match agreement.refresher {
            Refresher::Uas => now + interval / 2,
            Refresher::Uac => self.give_up_at,
        });
    }

    /// Fires the timer if due.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<SessionTimerOutput> {
        let deadline = self.deadline?;
        if now < deadline {
            return None;
        }
        if now >= self.give_up_at {
            // The peer did not refresh, or none of our refreshes got a 2xx: only a 2xx extends
            // the session (§10), so it is over.
            self.deadline = None;
            return Some(SessionTimerOutput::Expired);
        }
        // voxgate refreshes: retry every quarter interval until a 2xx re-arms the timer through
        // handle_refreshed, or the session runs out.
        let interval = Duration::from_secs(self.agreement.interval_secs.into());
        self.deadline = Some((now + interval / 4).min(self.give_up_at));
        Some(SessionTimerOutput::Refresh)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

fn parse_session_expires(value: &str) -> (Option<u32>, Option<Refresher>) {
    let mut parts = value.split(';');
    let seconds = parts.next().and_then(leading_number);
    let refresher = parts.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match value.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(Refresher::Uac),
            "uas" => Some(Refresher::Uas),
            _ => None,
        }
    });
    (seconds, refresher)
}

fn leading_number(value: &str) -> Option<u32> {
    value.split(';').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::t0;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn asterisk_style_request_keeps_uac_as_refresher() {
        let request =
            TimerRequest::from_headers(Some("1800;refresher=uac"), Some("90"), ["timer, replaces"]);
        assert_eq!(request.session_expires, Some(1800));
        assert!(request.supports_timer);
        let agreement = negotiate(&request, 1800, 90).unwrap().unwrap();
        assert_eq!(agreement.header_value(), "1800;refresher=uac");
    }

    #[test]
    fn too_small_interval_is_refused_with_our_min_se() {
        let request = TimerRequest::from_headers(Some("60"), None, ["timer"]);
        assert_eq!(
            negotiate(&request, 1800, 90),
            Err(IntervalTooSmall {
                requested: 60,
                min_se: 90
            })
        );
    }

    #[test]
    fn no_session_expires_and_no_support_means_no_timer() {
        let request = TimerRequest::from_headers(None, None, ["replaces"]);
        assert_eq!(negotiate(&request, 1800, 90), Ok(None));
    }

    #[test]
    fn supported_timer_without_session_expires_gets_ours_with_uac_refreshing() {
        let request = TimerRequest::from_headers(None, Some("120"), ["timer"]);
        let agreement = negotiate(&request, 1800, 90).unwrap().unwrap();
        assert_eq!(
            agreement,
            Agreement {
                interval_secs: 1800,
                refresher: Refresher::Uac
            }
        );
    }

    #[test]
    fn session_expires_without_refresher_or_support_makes_voxgate_refresh() {
        let request = TimerRequest::from_headers(Some("600"), None, []);
        let agreement = negotiate(&request, 1800, 90).unwrap().unwrap();
        assert_eq!(agreement.refresher, Refresher::Uas);
    }

    #[test]
    fn refresher_in_voxgates_requests_and_their_answers_is_seen_from_the_transaction() {
        let voxgate_refreshes = Agreement {
            interval_secs: 1800,
            refresher: Refresher::Uas,
        };
        assert_eq!(voxgate_refreshes.header_value(), "1800;refresher=uas");
        assert_eq!(
            voxgate_refreshes.request_header_value(),
            "1800;refresher=uac"
        );
        let keep = TimerRequest::from_headers(Some("1800;refresher=uac"), None, ["timer"]);
        assert_eq!(answered(&keep, voxgate_refreshes, 90), voxgate_refreshes);
        let take_over = TimerRequest::from_headers(Some("1200;refresher=uas"), None, ["timer"]);
        assert_eq!(
            answered(&take_over, voxgate_refreshes, 90),
            Agreement {
                interval_secs: 1200,
                refresher: Refresher::Uac
            }
        );
        let silent = TimerRequest::from_headers(None, None, []);
        assert_eq!(answered(&silent, voxgate_refreshes, 90), voxgate_refreshes);
        let too_small = TimerRequest::from_headers(Some("30;refresher=uac"), None, []);
        assert_eq!(
            answered(&too_small, voxgate_refreshes, 90),
            voxgate_refreshes
        );
    }

    #[test]
    fn voxgate_refreshes_at_half_interval_and_again_if_unanswered() {
        let agreement = Agreement {
            interval_secs: 1800,
            refresher: Refresher::Uas,
        };
        let mut timer = SessionTimer::start(t0(), agreement);
        assert_eq!(timer.poll_timeout(), Some(t0() + secs(900)));
        assert_eq!(timer.handle_timeout(t0() + secs(899)), None);
        assert_eq!(
            timer.handle_timeout(t0() + secs(900)),
            Some(SessionTimerOutput::Refresh)
        );
        assert_eq!(timer.poll_timeout(), Some(t0() + secs(1350)));
        timer.handle_refreshed(t0() + secs(901), agreement);
        assert_eq!(timer.poll_timeout(), Some(t0() + secs(1801)));
    }

    #[test]
    fn voxgate_refresher_without_any_successful_refresh_gives_up_before_expiry() {
        let agreement = Agreement {
            interval_secs: 1800,
            refresher: Refresher::Uas,
        };
        let mut timer = SessionTimer::start(t0(), agreement);
        let mut fired = Vec::new();
        while let Some(at) = timer.poll_timeout() {
            fired.push((at - t0(), timer.handle_timeout(at)));
        }
        assert_eq!(
            fired,
            [
                (secs(900), Some(SessionTimerOutput::Refresh)),
                (secs(1350), Some(SessionTimerOutput::Refresh)),
                (secs(1768), Some(SessionTimerOutput::Expired)),
            ]
        );
        let short = Agreement {
            interval_secs: 90,
            refresher: Refresher::Uas,
        };
        let mut timer = SessionTimer::start(t0(), short);
        assert_eq!(
            timer.handle_timeout(t0() + secs(45)),
            Some(SessionTimerOutput::Refresh)
        );
        assert_eq!(timer.poll_timeout(), Some(t0() + secs(60)));
        assert_eq!(
            timer.handle_timeout(t0() + secs(60)),
            Some(SessionTimerOutput::Expired)
        );
    }

    #[test]
    fn peer_refreshes_keep_a_call_alive_past_thirty_minutes() {
        let agreement = Agreement {
            interval_secs: 1800,
            refresher: Refresher::Uac,
        };
        let mut timer = SessionTimer::start(t0(), agreement);
        // Asterisk refreshes about halfway: every 900 s, for two hours.
        for refresh in 1..=8u64 {
            let now = t0() + secs(900 * refresh);
            assert_eq!(
                timer.handle_timeout(now),
                None,
                "expired before refresh {refresh}"
            );
            timer.handle_refreshed(now, agreement);
        }
        assert!(timer.poll_timeout().unwrap() > t0() + secs(7200));
    }

    #[test]
    fn unrefreshed_session_expires_32s_before_the_interval() {
        let agreement = Agreement {
            interval_secs: 1800,
            refresher: Refresher::Uac,
        };
        let mut timer = SessionTimer::start(t0(), agreement);
        assert_eq!(timer.poll_timeout(), Some(t0() + secs(1768)));
        assert_eq!(
            timer.handle_timeout(t0() + secs(1768)),
            Some(SessionTimerOutput::Expired)
        );
        assert_eq!(timer.poll_timeout(), None);
        let short = Agreement {
            interval_secs: 90,
            refresher: Refresher::Uac,
        };
        assert_eq!(
            SessionTimer::start(t0(), short).poll_timeout(),
            Some(t0() + secs(60))
        );
    }
}
