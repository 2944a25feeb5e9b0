//! INVITE client transaction (RFC 3261 §17.1.1, figure 5, with RFC 6026's Accepted state).
//!
//! ```text
//!            start: Transmit(INVITE), Timer B = 64·T1, Timer A = T1 (unreliable)
//!   Calling --1xx: Response--> Proceeding                         (A and B stop)
//!   Calling|Proceeding --2xx: Response--> Accepted                (Timer M = 64·T1)
//!   Calling|Proceeding --300-699: Transmit(ACK), Response--> Completed
//!                                                  (Timer D = max(32 s, 64·T1); 0 reliable)
//!   Calling --Timer B: TimedOut--> Terminated
//!   Accepted --2xx: Response--> Accepted --Timer M--> Terminated
//!   Completed --300-699: Transmit(same ACK)--> Completed --Timer D--> Terminated
//!   Timer A (Calling): Transmit(INVITE), interval doubles without cap
//! ```
//!
//! In: `start`, `handle_response(now, status, R, build_ack)`, `handle_timeout`,
//! `handle_transport_error`. Out: [`ClientOutput`] via `poll_output`, next wake-up via
//! `poll_timeout`. The ACK for a non-2xx belongs to this transaction (same branch, hop-by-hop): it
//! is built once by the caller's `build_ack` and resent on every retransmitted final. The ACK for a
//! 2xx is the TU's (a new transaction, RFC 3261 §13.2.2.4), so every 2xx — including
//! retransmissions and forked answers, RFC 6026 §8.4 — goes to the TU while Accepted. In
//! Proceeding nothing bounds the wait for a final response: the TU does, with CANCEL (§9.1).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timer::{doubled, sixty_four_t1};
use super::{unless_reliable, ClientOutput, StatusClass, Timer, TimerTable, Timers};

/// Timer D's floor for unreliable transports (RFC 3261 §17.1.1.2: "at least 32 seconds").
const TIMER_D_MIN: Duration = Duration::from_secs(32);

/// The states of figure 5 plus RFC 6026's Accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteClientState {
    /// INVITE sent, no response yet.
    Calling,
    /// A provisional response arrived; no more retransmissions.
    Proceeding,
    /// A 2xx arrived (RFC 6026); further 2xx still go to the TU until Timer M.
    Accepted,
    /// A 300–699 arrived and was ACKed; re-ACKing its retransmissions until Timer D.
    Completed,
    /// Done; the owner removes the transaction.
    Terminated,
}

/// An INVITE client transaction.
///
/// `R` is the owner's parsed response type, passed through to the TU in
/// [`ClientOutput::Response`].
#[derive(Debug)]
pub struct InviteClient<R> {
    state: InviteClientState,
    request: Bytes,
    timers: Timers,
    reliable: bool,
    /// Current Timer A interval.
    interval: Duration,
    /// The ACK for the non-2xx final, once built (Completed only).
    ack: Option<Bytes>,
    table: TimerTable,
    out: VecDeque<ClientOutput<R>>,
}

impl<R> InviteClient<R> {
    /// Starts the transaction in Calling: queues the first transmission of the INVITE and arms
    /// Timer B (64·T1) and, over an unreliable transport, Timer A (T1).
    pub fn start(now: Instant, request: Bytes, timers: &Timers, reliable: bool) -> Self {
        let mut table = TimerTable::new();
        table.set_after(Timer::B, now, sixty_four_t1(timers));
        // RFC 3261 §17.1.1.2: Timer A only for unreliable transports.
        if !reliable {
            table.set_after(Timer::A, now, timers.t1);
        }
        InviteClient {
            state: InviteClientState::Calling,
            out: VecDeque::from([ClientOutput::Transmit(request.clone())]),
            request,
            timers: *timers,
            reliable,
            interval: timers.t1,
            ack: None,
            table,
        }
    }

    /// Feeds a response the endpoint matched to this transaction (by [`super::TransactionKey`]).
    ///
    /// `build_ack` is called at most once, for the first 300–699 response, to build the ACK this
    /// transaction sends (RFC 3261 §17.1.1.3: same Request-URI, Call-ID, From, top Via and CSeq
    /// number as the INVITE, To from the response, method ACK). Retransmitted finals are re-ACKed
    /// with the same bytes and not passed to the TU. Statuses outside 100–699, responses the
    /// current state does not expect, and anything after Terminated are dropped.
    pub fn handle_response(
        &mut self,
        now: Instant,
        status: u16,
        response: R,
        build_ack: impl FnOnce(&R) -> Bytes,
    ) {
        let Some(class) = StatusClass::of(status) else {
            return;
        };
        match (self.state, class) {
            (
                InviteClientState::Calling | InviteClientState::Proceeding,
                StatusClass::Provisional,
            ) => {
                // RFC 3261 §17.1.1.2: no retransmissions in Proceeding, and Timer B is Calling's.
                self.table.clear(Timer::A);
                self.table.clear(Timer::B);
                self.state = InviteClientState::Proceeding;
                self.out.push_back(ClientOutput::Response(response));
            }
            (InviteClientState::Calling | InviteClientState::Proceeding, StatusClass::Success) => {
                // RFC 6026 §8.4: Accepted, Timer M = 64·T1 on any transport.
                self.table.clear(Timer::A);
                self.table.clear(Timer::B);
                self.state = InviteClientState::Accepted;
                self.table
                    .set_after(Timer::M, now, sixty_four_t1(&self.timers));
                self.out.push_back(ClientOutput::Response(response));
            }
            (InviteClientState::Calling | InviteClientState::Proceeding, StatusClass::Failure) => {
                let ack = build_ack(&response);
                self.out.push_back(ClientOutput::Transmit(ack.clone()));
                self.out.push_back(ClientOutput::Response(response));
                self.complete(now, ack);
            }
            // RFC 6026 §8.4: every 2xx in Accepted (retransmission or another fork) goes to the TU.
            (InviteClientState::Accepted, StatusClass::Success) => {
                self.out.push_back(ClientOutput::Response(response));
            }
            // RFC 3261 §17.1.1.2: a retransmitted final in Completed is re-ACKed, not passed up.
            (InviteClientState::Completed, StatusClass::Failure) => {
                if let Some(ack) = &self.ack {
                    self.out.push_back(ClientOutput::Transmit(ack.clone()));
                }
            }
            _ => {}
        }
    }

    /// Fires every timer due at `now`: Timer A retransmits, Timer B times out, D and M end.
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in self.table.expired(now) {
            // An earlier timer in this batch may have terminated the transaction.
            if !self.table.is_due(timer, now) {
                continue;
            }
            self.table.clear(timer);
            match timer {
                Timer::A => {
                    // RFC 3261 §17.1.1.2: Timer A doubles with no T2 cap; Timer B bounds it.
                    self.interval = doubled(self.interval, None);
                    self.out
                        .push_back(ClientOutput::Transmit(self.request.clone()));
                    self.table.set_after(Timer::A, now, self.interval);
                }
                Timer::B => {
                    self.out.push_back(ClientOutput::TimedOut);
                    self.terminate();
                }
                Timer::D | Timer::M => self.terminate(),
                _ => {}
            }
        }
    }

    /// The transport could not send the INVITE or ACK (RFC 3261 §17.1.4): terminate, telling
    /// the TU when it has no final response yet (a lost ACK for a non-2xx, or a 2xx's
    /// retransmission window, is only the end of the transaction).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        match self.state {
            InviteClientState::Calling | InviteClientState::Proceeding => {
                self.out.push_back(ClientOutput::TransportFailed);
                self.terminate();
            }
            InviteClientState::Accepted | InviteClientState::Completed => self.terminate(),
            InviteClientState::Terminated => {}
        }
    }

    /// The next thing to do: transmit, tell the TU, or remove the transaction.
    pub fn poll_output(&mut self) -> Option<ClientOutput<R>> {
        self.out.pop_front()
    }

    /// When [`InviteClient::handle_timeout`] must next be called; `None` in Proceeding (only a
    /// response or the TU moves it on) and once Terminated.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.table.next_deadline()
    }

    /// The current state.
    pub fn state(&self) -> InviteClientState {
        self.state
    }

    /// Whether the transaction has ended.
    pub fn is_terminated(&self) -> bool {
        self.state == InviteClientState::Terminated
    }

    fn complete(&mut self, now: Instant, ack: Bytes) {
        self.table.clear(Timer::A);
        self.table.clear(Timer::B);
        // RFC 3261 §17.1.1.2: Timer D ≥ 32 s unreliable, 0 reliable. It must outlast the server's
        // Timer H (64·T1) of final retransmissions, hence the max with 64·T1 for a large T1.
        let wait = unless_reliable(self.reliable, TIMER_D_MIN.max(sixty_four_t1(&self.timers)));
        if wait.is_zero() {
            self.terminate();
        } else {
            self.state = InviteClientState::Completed;
            self.ack = Some(ack);
            self.table.set_after(Timer::D, now, wait);
        }
    }

    fn terminate(&mut self) {
        self.state = InviteClientState::Terminated;
        self.ack = None;
        self.table.clear_all();
        self.out.push_back(ClientOutput::Terminated);
    }
}

#[cfg(test)]
impl<R> super::testing::Machine for InviteClient<R> {
    type Output = ClientOutput<R>;
    fn poll_output(&mut self) -> Option<Self::Output> {
        InviteClient::poll_output(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        InviteClient::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        InviteClient::handle_timeout(self, now)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::super::testing::{drive, drive_to_end};
    use super::*;
    use crate::testkit::{self, ms};

    type Output = ClientOutput<&'static str>;

    fn invite() -> Bytes {
        Bytes::from_static(b"INVITE sip:agent@voxgate SIP/2.0\r\n\r\n")
    }

    fn ack() -> Bytes {
        Bytes::from_static(b"ACK sip:agent@voxgate SIP/2.0\r\n\r\n")
    }

    fn no_ack(_: &&'static str) -> Bytes {
        panic!("no ACK expected for this response")
    }

    fn start(reliable: bool, timers: &Timers) -> InviteClient<&'static str> {
        InviteClient::start(testkit::t0(), invite(), timers, reliable)
    }

    fn transmit_times(outputs: &[(Duration, Output)]) -> Vec<Duration> {
        outputs
            .iter()
            .filter(|(_, out)| matches!(out, ClientOutput::Transmit(_)))
            .map(|(at, _)| *at)
            .collect()
    }

    fn custom() -> Timers {
        Timers {
            t1: ms(200),
            t2: ms(1_000),
            t4: ms(2_000),
        }
    }

    #[test]
    fn timer_a_doubles_without_cap_until_timer_b_times_out() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        let (outputs, end) = drive_to_end(&mut transaction, t0, t0);
        assert_eq!(
            transmit_times(&outputs),
            [0, 500, 1_500, 3_500, 7_500, 15_500, 31_500].map(ms)
        );
        assert_eq!(
            outputs[outputs.len() - 2..],
            [
                (ms(32_000), ClientOutput::TimedOut),
                (ms(32_000), ClientOutput::Terminated)
            ]
        );
        assert_eq!(end - t0, ms(32_000));
        assert!(transaction.is_terminated());
    }

    #[test]
    fn custom_t1_scales_timers_a_and_b() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &custom());
        let (outputs, end) = drive_to_end(&mut transaction, t0, t0);
        // T2 (1 s) does not cap Timer A.
        assert_eq!(
            transmit_times(&outputs),
            [0, 200, 600, 1_400, 3_000, 6_200, 12_600].map(ms)
        );
        assert_eq!(end - t0, ms(12_800));
        assert!(outputs.contains(&(ms(12_800), ClientOutput::TimedOut)));
    }

    #[test]
    fn reliable_transport_sends_once_and_times_out_with_timer_b() {
        let t0 = testkit::t0();
        let mut transaction = start(true, &Timers::default());
        let (outputs, _) = drive_to_end(&mut transaction, t0, t0);
        assert_eq!(
            outputs,
            [
                (ms(0), ClientOutput::Transmit(invite())),
                (ms(32_000), ClientOutput::TimedOut),
                (ms(32_000), ClientOutput::Terminated),
            ]
        );
    }

    #[test]
    fn provisional_stops_retransmissions_and_timer_b() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        let (_, now) = drive(&mut transaction, t0, t0, t0 + ms(600));
        transaction.handle_response(now, 100, "100 Trying", no_ack);
        transaction.handle_response(now + ms(100), 180, "180 Ringing", no_ack);
        assert_eq!(transaction.state(), InviteClientState::Proceeding);
        assert_eq!(
            transaction.poll_output(),
            Some(ClientOutput::Response("100 Trying"))
        );
        assert_eq!(
            transaction.poll_output(),
            Some(ClientOutput::Response("180 Ringing"))
        );
        assert_eq!(transaction.poll_output(), None);
        assert_eq!(transaction.poll_timeout(), None);
    }

    #[test]
    fn non_2xx_final_is_acked_once_and_passed_to_tu() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        transaction.poll_output();
        let built = Cell::new(0);
        let build = |response: &&'static str| {
            built.set(built.get() + 1);
            assert_eq!(*response, "486 Busy Here");
            ack()
        };
        transaction.handle_response(t0 + ms(100), 486, "486 Busy Here", build);
        assert_eq!(
            transaction.poll_output(),
            Some(ClientOutput::Transmit(ack()))
        );
        assert_eq!(
            transaction.poll_output(),
            Some(ClientOutput::Response("486 Busy Here"))
        );
        assert_eq!(transaction.poll_output(), None);
        assert_eq!(transaction.state(), InviteClientState::Completed);
        assert_eq!(built.get(), 1);
    }

    #[test]
    fn retransmitted_final_is_reacked_with_same_bytes_not_passed_up() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        transaction.poll_output();
        let built = Cell::new(0);
        let build = |_: &&'static str| {
            built.set(built.get() + 1);
            ack()
        };
        transaction.handle_response(t0 + ms(100), 503, "503", build);
        transaction.handle_response(t0 + ms(600), 503, "503 again", build);
        transaction.handle_response(t0 + ms(1_600), 503, "503 again", build);
        transaction.handle_response(t0 + ms(1_700), 200, "stray 200", no_ack);
        let outputs: Vec<_> = std::iter::from_fn(|| transaction.poll_output()).collect();
        assert_eq!(
            outputs,
            [
                ClientOutput::Transmit(ack()),
                ClientOutput::Response("503"),
                ClientOutput::Transmit(ack()),
                ClientOutput::Transmit(ack()),
            ]
        );
        assert_eq!(built.get(), 1);
    }

    #[test]
    fn timer_d_is_32_seconds_after_non_2xx_then_terminates() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        let (_, now) = drive(&mut transaction, t0, t0, t0 + ms(1_000));
        transaction.handle_response(now, 404, "404", |_| ack());
        let (outputs, end) = drive_to_end(&mut transaction, t0, now);
        // Only the ACK goes out: the Timer A due at 1 500 ms was cleared by the final.
        assert_eq!(transmit_times(&outputs), [ms(500)]);
        assert_eq!(end - now, ms(32_000));
        assert_eq!(
            outputs.last(),
            Some(&(ms(32_500), ClientOutput::Terminated))
        );
    }

    #[test]
    fn timer_d_is_at_least_32_seconds_and_covers_64_t1() {
        let t0 = testkit::t0();
        let mut small = start(false, &custom());
        small.handle_response(t0, 480, "480", |_| ack());
        assert_eq!(small.poll_timeout(), Some(t0 + ms(32_000)));
        let large_t1 = Timers {
            t1: ms(1_000),
            ..Timers::default()
        };
        let mut large = start(false, &large_t1);
        large.handle_response(t0, 480, "480", |_| ack());
        assert_eq!(large.poll_timeout(), Some(t0 + ms(64_000)));
    }

    #[test]
    fn reliable_non_2xx_acks_and_terminates_at_once() {
        let t0 = testkit::t0();
        let mut transaction = start(true, &Timers::default());
        transaction.poll_output();
        transaction.handle_response(t0 + ms(30), 603, "603", |_| ack());
        let outputs: Vec<_> = std::iter::from_fn(|| transaction.poll_output()).collect();
        assert_eq!(
            outputs,
            [
                ClientOutput::Transmit(ack()),
                ClientOutput::Response("603"),
                ClientOutput::Terminated,
            ]
        );
        assert_eq!(transaction.poll_timeout(), None);
    }

    #[test]
    fn ok_enters_accepted_and_passes_every_2xx_until_timer_m() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        let (_, now) = drive(&mut transaction, t0, t0, t0 + ms(700));
        transaction.handle_response(now, 180, "180", no_ack);
        transaction.handle_response(now + ms(1_000), 200, "200 fork a", no_ack);
        assert_eq!(transaction.state(), InviteClientState::Accepted);
        transaction.handle_response(now + ms(1_500), 200, "200 again", no_ack);
        transaction.handle_response(now + ms(1_600), 200, "200 fork b", no_ack);
        transaction.handle_response(now + ms(1_700), 486, "486 ignored", no_ack);
        transaction.handle_response(now + ms(1_800), 183, "183 ignored", no_ack);
        let (outputs, end) = drive_to_end(&mut transaction, t0, now + ms(1_800));
        let responses: Vec<_> = outputs
            .iter()
            .filter_map(|(_, out)| match out {
                ClientOutput::Response(r) => Some(*r),
                _ => None,
            })
            .collect();
        assert_eq!(responses, ["180", "200 fork a", "200 again", "200 fork b"]);
        assert_eq!(transmit_times(&outputs), []);
        // Timer M = 64·T1 from the first 2xx.
        assert_eq!(end - (now + ms(1_000)), ms(32_000));
        assert_eq!(
            outputs.last().map(|(_, out)| out),
            Some(&ClientOutput::Terminated)
        );
    }

    #[test]
    fn timer_m_follows_custom_t1_on_reliable_transport_too() {
        let t0 = testkit::t0();
        let mut transaction = start(true, &custom());
        transaction.handle_response(t0 + ms(50), 200, "200", no_ack);
        assert_eq!(transaction.poll_timeout(), Some(t0 + ms(50 + 12_800)));
    }

    #[test]
    fn responses_after_termination_are_ignored() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        let (_, now) = drive_to_end(&mut transaction, t0, t0);
        transaction.handle_response(now, 200, "late 200", no_ack);
        transaction.handle_response(now, 486, "late 486", no_ack);
        transaction.handle_timeout(now + ms(60_000));
        assert_eq!(transaction.poll_output(), None);
        assert_eq!(transaction.poll_timeout(), None);
    }

    #[test]
    fn status_outside_sip_range_is_dropped() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        transaction.poll_output();
        transaction.handle_response(t0, 0, "bogus", no_ack);
        transaction.handle_response(t0, 999, "bogus", no_ack);
        assert_eq!(transaction.poll_output(), None);
        assert_eq!(transaction.state(), InviteClientState::Calling);
    }

    #[test]
    fn transport_error_reports_and_terminates() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        transaction.poll_output();
        transaction.handle_transport_error(t0);
        assert_eq!(
            transaction.poll_output(),
            Some(ClientOutput::TransportFailed)
        );
        assert_eq!(transaction.poll_output(), Some(ClientOutput::Terminated));
        assert_eq!(transaction.poll_timeout(), None);
    }

    #[test]
    fn transport_error_after_the_final_response_only_terminates() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        transaction.poll_output();
        transaction.handle_response(t0, 486, "486", |_| Bytes::from_static(b"ACK"));
        while transaction
            .poll_output()
            .is_some_and(|o| o != ClientOutput::Terminated)
        {}
        assert_eq!(transaction.state(), InviteClientState::Completed);
        // The ACK could not be sent: the TU has its answer already.
        transaction.handle_transport_error(t0);
        assert_eq!(transaction.poll_output(), Some(ClientOutput::Terminated));
        assert_eq!(transaction.poll_output(), None);
        assert_eq!(transaction.state(), InviteClientState::Terminated);
    }
}
