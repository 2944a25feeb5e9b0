//! Transaction timers (RFC 3261 §17, table 4; RFC 6026 §8.4 and §8.7 for Timers L and M).
//!
//! Every timer a transaction machine can arm is one variant of [`Timer`]; a [`TimerTable`] holds at
//! most one deadline per timer in a fixed array (quinn's `TimerTable`). Machines arm and clear
//! timers as they change state; their `poll_timeout` is [`TimerTable::next_deadline`], and their
//! `handle_timeout(now)` walks [`TimerTable::expired`].
//!
//! ```text
//! timer           armed in                      duration (unreliable / reliable)   fires
//! A               INVITE client Calling         T1, doubling, no cap / not armed   resend INVITE
//! B               INVITE client Calling         64·T1                              TimedOut
//! D               INVITE client Completed       max(32 s, 64·T1) / 0               Terminated
//! E               non-INVITE client Trying      T1 doubling to T2 (T2 once 1xx)    resend request
//! F               non-INVITE client Trying      64·T1                              TimedOut
//! G               INVITE server Completed       T1 doubling to T2 / not armed      resend final
//! H               INVITE server Completed       64·T1                              TimedOut
//! I               INVITE server Confirmed       T4 / 0                             Terminated
//! J               non-INVITE server Completed   64·T1 / 0                          Terminated
//! K               non-INVITE client Completed   T4 / 0                             Terminated
//! L               INVITE server Accepted        64·T1                              Terminated
//! M               INVITE client Accepted        64·T1                              Terminated
//! Retransmit2xx   INVITE server Accepted        T1 doubling to T2 / not armed      resend 2xx
//! ```

use std::time::{Duration, Instant};

use super::Timers;

/// Number of [`Timer`] variants: the size of a [`TimerTable`].
const TIMER_COUNT: usize = 13;

/// One RFC 3261 / RFC 6026 transaction timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// INVITE client: request retransmission interval (unreliable transports only).
    A,
    /// INVITE client: transaction timeout while Calling.
    B,
    /// INVITE client: wait time for response retransmissions in Completed.
    D,
    /// Non-INVITE client: request retransmission interval (unreliable transports only).
    E,
    /// Non-INVITE client: transaction timeout while Trying or Proceeding.
    F,
    /// INVITE server: non-2xx final response retransmission interval (unreliable only).
    G,
    /// INVITE server: wait time for the ACK to a non-2xx final response.
    H,
    /// INVITE server: wait time for ACK retransmissions in Confirmed.
    I,
    /// Non-INVITE server: wait time for request retransmissions in Completed.
    J,
    /// Non-INVITE client: wait time for response retransmissions in Completed.
    K,
    /// INVITE server (RFC 6026): how long Accepted lasts after a 2xx was sent.
    L,
    /// INVITE client (RFC 6026): how long Accepted lasts after a 2xx was received.
    M,
    /// INVITE server, Accepted: the UAS core's 2xx retransmission interval (RFC 3261 §13.3.1.4),
    /// which voxgate folds into the server transaction.
    Retransmit2xx,
}

impl Timer {
    /// Every timer, in table order.
    pub const ALL: [Timer; TIMER_COUNT] = [
        Timer::A,
        Timer::B,
        Timer::D,
        Timer::E,
        Timer::F,
        Timer::G,
        Timer::H,
        Timer::I,
        Timer::J,
        Timer::K,
        Timer::L,
        Timer::M,
        Timer::Retransmit2xx,
    ];

    /// Whether this timer only resends a message (A, E, G, 2xx) rather than ending a state.
    pub fn is_retransmit(self) -> bool {
        matches!(self, Timer::A | Timer::E | Timer::G | Timer::Retransmit2xx)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// At most one deadline per [`Timer`]; `None` means the timer is not armed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimerTable {
    deadlines: [Option<Instant>; TIMER_COUNT],
}

impl TimerTable {
    /// An empty table: no timer armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms `timer` to fire at `at`, replacing any earlier deadline it had.
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer.index()] = Some(at);
    }

    /// Arms `timer` to fire `after` from `now`.
    ///
    /// A duration so large that the deadline cannot be represented leaves the timer disarmed,
    /// which is what such a deadline means in practice (it never fires), instead of panicking.
    pub fn set_after(&mut self, timer: Timer, now: Instant, after: Duration) {
        self.deadlines[timer.index()] = now.checked_add(after);
    }

    /// Disarms `timer`; a no-op when it is not armed.
    pub fn clear(&mut self, timer: Timer) {
        self.deadlines[timer.index()] = None;
    }

    /// Disarms every timer (on entering Terminated).
    pub fn clear_all(&mut self) {
        self.deadlines = [None; TIMER_COUNT];
    }

    /// The deadline of `timer`, if armed.
    pub fn deadline(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer.index()]
    }

    /// Whether `timer` is armed and its deadline is at or before `now`.
    pub fn is_due(&self, timer: Timer, now: Instant) -> bool {
        self.deadline(timer).is_some_and(|at| at <= now)
    }

    /// The earliest armed deadline: what a machine's `poll_timeout` returns.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// The timers due at `now`, earliest deadline first.
    ///
    /// At equal deadlines a timer that ends a state (B, D, F, H, …) comes before one that only
    /// retransmits (A, E, G, 2xx), so a transaction that times out at the same instant as a
    /// retransmission is due does not send that last, useless copy. The list is a snapshot: a
    /// machine handling it should re-check [`TimerTable::is_due`] before acting on each entry, as
    /// an earlier entry may have ended the transaction or re-armed a timer.
    pub fn expired(&self, now: Instant) -> Vec<Timer> {
        let mut due: Vec<(Instant, bool, Timer)> = Timer::ALL
            .iter()
            .filter_map(|&timer| {
                self.deadline(timer)
                    .filter(|&at| at <= now)
                    .map(|at| (at, timer.is_retransmit(), timer))
            })
            .collect();
        due.sort_unstable();
        due.into_iter().map(|(_, _, timer)| timer).collect()
    }
}

/// 64·T1: Timers B, F, H, L, M and J (unreliable). Saturates instead of overflowing.
pub(crate) fn sixty_four_t1(timers: &Timers) -> Duration {
    timers.t1.saturating_mul(64)
}

/// The next retransmission interval: doubled, capped at T2 when `cap` is given (Timers E and G and
/// 2xx retransmission; Timer A has no cap, RFC 3261 §17.1.1.2).
pub(crate) fn doubled(interval: Duration, cap: Option<Duration>) -> Duration {
    let next = interval.saturating_mul(2);
    match cap {
        Some(cap) => next.min(cap),
        None => next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{ms, t0};

    #[test]
    fn empty_table_has_no_deadline_and_nothing_expires() {
        let table = TimerTable::new();
        assert_eq!(table.next_deadline(), None);
        assert!(table.expired(t0() + ms(1_000_000)).is_empty());
    }

    #[test]
    fn next_deadline_is_the_earliest_armed_timer() {
        let mut table = TimerTable::new();
        table.set(Timer::F, t0() + ms(32_000));
        table.set(Timer::E, t0() + ms(500));
        table.set(Timer::K, t0() + ms(5_000));
        assert_eq!(table.next_deadline(), Some(t0() + ms(500)));
        table.clear(Timer::E);
        assert_eq!(table.next_deadline(), Some(t0() + ms(5_000)));
    }

    #[test]
    fn set_replaces_the_previous_deadline() {
        let mut table = TimerTable::new();
        table.set(Timer::A, t0() + ms(500));
        table.set(Timer::A, t0() + ms(1_500));
        assert_eq!(table.deadline(Timer::A), Some(t0() + ms(1_500)));
        assert_eq!(table.next_deadline(), Some(t0() + ms(1_500)));
    }

    #[test]
    fn clear_and_clear_all_disarm() {
        let mut table = TimerTable::new();
        table.set(Timer::G, t0());
        table.set(Timer::H, t0());
        table.clear(Timer::G);
        assert_eq!(table.deadline(Timer::G), None);
        assert_eq!(table.deadline(Timer::H), Some(t0()));
        table.clear_all();
        assert_eq!(table.next_deadline(), None);
    }

    #[test]
    fn expired_lists_only_due_timers_earliest_first() {
        let mut table = TimerTable::new();
        table.set(Timer::M, t0() + ms(300));
        table.set(Timer::A, t0() + ms(100));
        table.set(Timer::D, t0() + ms(200));
        table.set(Timer::B, t0() + ms(400));
        assert_eq!(
            table.expired(t0() + ms(300)),
            [Timer::A, Timer::D, Timer::M]
        );
        assert_eq!(table.expired(t0() + ms(99)), []);
    }

    #[test]
    fn expired_puts_ending_timer_before_retransmit_at_same_instant() {
        let mut table = TimerTable::new();
        let at = t0() + ms(4_000);
        table.set(Timer::E, at);
        table.set(Timer::F, at);
        table.set(Timer::Retransmit2xx, at);
        table.set(Timer::L, at);
        assert_eq!(
            table.expired(at),
            [Timer::F, Timer::L, Timer::E, Timer::Retransmit2xx]
        );
    }

    #[test]
    fn is_due_requires_an_armed_deadline_not_after_now() {
        let mut table = TimerTable::new();
        assert!(!table.is_due(Timer::J, t0()));
        table.set(Timer::J, t0() + ms(10));
        assert!(!table.is_due(Timer::J, t0() + ms(9)));
        assert!(table.is_due(Timer::J, t0() + ms(10)));
    }

    #[test]
    fn set_after_that_overflows_leaves_timer_disarmed() {
        let mut table = TimerTable::new();
        table.set_after(Timer::B, t0(), Duration::MAX);
        assert_eq!(table.deadline(Timer::B), None);
        table.set_after(Timer::B, t0(), ms(32_000));
        assert_eq!(table.deadline(Timer::B), Some(t0() + ms(32_000)));
    }

    #[test]
    fn doubling_caps_at_t2_only_when_asked() {
        assert_eq!(doubled(ms(500), Some(ms(4_000))), ms(1_000));
        assert_eq!(doubled(ms(2_000), Some(ms(4_000))), ms(4_000));
        assert_eq!(doubled(ms(4_000), Some(ms(4_000))), ms(4_000));
        assert_eq!(doubled(ms(16_000), None), ms(32_000));
        assert_eq!(doubled(Duration::MAX, None), Duration::MAX);
    }

    #[test]
    fn sixty_four_t1_follows_t1() {
        assert_eq!(sixty_four_t1(&Timers::default()), ms(32_000));
        let custom = Timers {
            t1: ms(200),
            ..Timers::default()
        };
        assert_eq!(sixty_four_t1(&custom), ms(12_800));
    }
}
