//! RTP inactivity timeout, sans-IO: hang up a call whose caller has stopped sending RTP (a PBX
//! leg that died without a BYE, a lost NAT binding), like Asterisk's `rtptimeout` /
//! `rtpholdtimeout` and rtpengine's `timeout` / `silent-timeout`.
//!
//! ```text
//!              configured(sendrecv)         no RTP for `timeout`
//!  Unarmed ─────────────────────────► Watching ────────────────────► Expired (reported once)
//!              configured(on hold)       ▲  │ RTP: restart the clock
//!              → Watching with           └──┘
//!                `hold_timeout`          configured again (re-INVITE): restart the clock
//! ```
//!
//! In: [`handle_configured`](InactivityTimer::handle_configured) when the call's media is
//! (re)negotiated (the clock starts then: an answered call), [`handle_packet`] for every RTP
//! packet accepted from the caller, [`handle_timeout`] at or after [`poll_timeout`].
//! Out: one [`Silence`] when the caller has been silent too long. A zero duration disables the
//! timeout for that state.
//!
//! On hold means the media is not two-way: the caller holds the call (its SDP says `sendonly`,
//! RFC 6337 §5.3, or `inactive`) or only listens (`recvonly`: we are not expected to receive).
//! A caller that holds may play music on hold or may send nothing at all, so, as Asterisk does
//! with `rtpholdtimeout`, the hold timeout applies instead (by default: never).
//!
//! [`handle_packet`]: InactivityTimer::handle_packet
//! [`handle_timeout`]: InactivityTimer::handle_timeout
//! [`poll_timeout`]: InactivityTimer::poll_timeout

use std::time::{Duration, Instant};

/// The caller has sent no RTP for too long: end the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Silence {
    /// How long nothing was received (at least the timeout that applied).
    pub silent_for: Duration,
    /// Whether the call was on hold (the hold timeout applied).
    pub on_hold: bool,
}

impl Silence {
    /// The reason in an admin's words, for the log and the hang-up.
    pub fn reason(&self) -> String {
        let secs = self.silent_for.as_secs();
        if self.on_hold {
            format!("no RTP from the caller for {secs} s while on hold")
        } else {
            format!("no RTP from the caller for {secs} s")
        }
    }
}

/// Watches one call's inbound RTP for silence.
#[derive(Debug, Clone)]
pub struct InactivityTimer {
    timeout: Option<Duration>,
    hold_timeout: Option<Duration>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not answered (no negotiated media) yet.
    Unarmed,
    /// Counting from `since` (the last packet or the last (re)configuration).
    Watching { since: Instant, on_hold: bool },
    /// Reported; nothing more.
    Expired,
}

impl InactivityTimer {
    /// A timer allowing `timeout` of silence while receiving and `hold_timeout` while on hold;
    /// `Duration::ZERO` disables either.
    pub fn new(timeout: Duration, hold_timeout: Duration) -> Self {
        let enabled = |limit: Duration| (!limit.is_zero()).then_some(limit);
        Self {
            timeout: enabled(timeout),
            hold_timeout: enabled(hold_timeout),
            state: State::Unarmed,
        }
    }

    /// The media was (re)negotiated at `now`; `on_hold` when it is not two-way (see the module
    /// doc). Restarts the clock, so a re-INVITE that moves or resumes the media gives the caller
    /// a full period.
    pub fn handle_configured(&mut self, now: Instant, on_hold: bool) {
        if self.state != State::Expired {
            self.state = State::Watching {
                since: now,
                on_hold,
            };
        }
    }

    /// An RTP packet from the caller arrived at `now`.
    pub fn handle_packet(&mut self, now: Instant) {
        if let State::Watching { since, .. } = &mut self.state {
            *since = now;
        }
    }

    /// When the call times out if nothing arrives; `None` when it cannot time out now.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Watching { since, on_hold } => Some(since + self.limit(on_hold)?),
            State::Unarmed | State::Expired => None,
        }
    }

    /// Call at or after [`poll_timeout`](Self::poll_timeout); the [`Silence`] once when it has
    /// expired, `None` otherwise (early, disabled, or already reported).
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Silence> {
        let State::Watching { since, on_hold } = self.state else {
            return None;
        };
        let silent_for = now.saturating_duration_since(since);
        if silent_for < self.limit(on_hold)? {
            return None;
        }
        self.state = State::Expired;
        Some(Silence {
            silent_for,
            on_hold,
        })
    }

    fn limit(&self, on_hold: bool) -> Option<Duration> {
        if on_hold {
            self.hold_timeout
        } else {
            self.timeout
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{ms, t0};

    const TWO_WAY: bool = false;
    const HELD: bool = true;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Runs the timer to its deadline, if any, and returns what it reports there.
    fn expire(timer: &mut InactivityTimer) -> Option<(Duration, Silence)> {
        let due = timer.poll_timeout()?;
        assert_eq!(
            timer.handle_timeout(due - ms(1)),
            None,
            "not before its time"
        );
        timer
            .handle_timeout(due)
            .map(|silence| (due - t0(), silence))
    }

    #[test]
    fn silent_answered_call_expires_once_after_the_timeout() {
        let mut timer = InactivityTimer::new(secs(60), Duration::ZERO);
        timer.handle_configured(t0(), TWO_WAY);
        let (at, silence) = expire(&mut timer).expect("expires");
        assert_eq!(at, secs(60));
        assert_eq!(
            silence,
            Silence {
                silent_for: secs(60),
                on_hold: false
            }
        );
        assert_eq!(silence.reason(), "no RTP from the caller for 60 s");
        assert_eq!(timer.poll_timeout(), None);
        assert_eq!(
            timer.handle_timeout(t0() + secs(600)),
            None,
            "reported once"
        );
        timer.handle_configured(t0() + secs(601), TWO_WAY);
        assert_eq!(timer.poll_timeout(), None, "stays expired");
    }

    #[test]
    fn every_packet_restarts_the_clock() {
        let mut timer = InactivityTimer::new(secs(2), Duration::ZERO);
        timer.handle_configured(t0(), TWO_WAY);
        for n in 1..=100 {
            timer.handle_packet(t0() + ms(20 * n));
        }
        assert_eq!(timer.poll_timeout(), Some(t0() + ms(2_000) + secs(2)));
        assert_eq!(timer.handle_timeout(t0() + ms(3_999)), None);
        let silence = timer.handle_timeout(t0() + secs(5)).expect("expires");
        assert_eq!(silence.silent_for, secs(3), "measured from the last packet");
    }

    #[test]
    fn nothing_before_the_media_is_configured() {
        let mut timer = InactivityTimer::new(secs(1), secs(1));
        timer.handle_packet(t0());
        assert_eq!(timer.poll_timeout(), None);
        assert_eq!(timer.handle_timeout(t0() + secs(3_600)), None);
    }

    #[test]
    fn hold_never_times_out_by_default_and_resume_restarts_the_clock() {
        let mut timer = InactivityTimer::new(secs(60), Duration::ZERO);
        timer.handle_configured(t0(), TWO_WAY);
        timer.handle_configured(t0() + secs(59), HELD);
        assert_eq!(timer.poll_timeout(), None, "on hold: no deadline");
        assert_eq!(timer.handle_timeout(t0() + secs(7_200)), None);
        timer.handle_configured(t0() + secs(7_200), TWO_WAY);
        let (at, silence) = expire(&mut timer).expect("expires after resume");
        assert_eq!(at, secs(7_260));
        assert!(!silence.on_hold);
    }

    #[test]
    fn hold_timeout_applies_while_held() {
        let mut timer = InactivityTimer::new(secs(60), secs(3_600));
        timer.handle_configured(t0(), HELD);
        let (at, silence) = expire(&mut timer).expect("expires on hold");
        assert_eq!(at, secs(3_600));
        assert_eq!(
            silence.reason(),
            "no RTP from the caller for 3600 s while on hold"
        );
    }

    #[test]
    fn zero_disables_the_timeout() {
        let mut timer = InactivityTimer::new(Duration::ZERO, Duration::ZERO);
        timer.handle_configured(t0(), TWO_WAY);
        assert_eq!(timer.poll_timeout(), None);
        assert_eq!(timer.handle_timeout(t0() + secs(86_400)), None);
    }

    #[test]
    fn reconfiguring_gives_a_full_period() {
        let mut timer = InactivityTimer::new(secs(10), Duration::ZERO);
        timer.handle_configured(t0(), TWO_WAY);
        timer.handle_configured(t0() + secs(9), TWO_WAY);
        assert_eq!(timer.poll_timeout(), Some(t0() + secs(19)));
    }
}
