//! Non-INVITE client transaction (RFC 3261 §17.1.2, figure 6).
//!
//! ```text
//!            start: Transmit(request), Timer F = 64·T1, Timer E = T1 (unreliable)
//!   Trying --1xx: Response--> Proceeding
//!   Trying|Proceeding --200-699: Response--> Completed --Timer K (T4; 0 reliable)--> Terminated
//!   Trying|Proceeding --Timer F: TimedOut--> Terminated
//!   Timer E: Transmit(request); next interval doubles up to T2 in Trying, is T2 in Proceeding
//! ```
//!
//! In: `start`, `handle_response(now, status, R)`, `handle_timeout`, `handle_transport_error`.
//! Out: [`ClientOutput`] via `poll_output`, next wake-up via `poll_timeout`. Retransmitted
//! finals in Completed are absorbed; anything after Terminated is ignored.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timer::{doubled, sixty_four_t1};
use super::{unless_reliable, ClientOutput, StatusClass, Timer, TimerTable, Timers};

/// The states of figure 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonInviteClientState {
    /// Request sent, no response yet.
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived; absorbing its retransmissions until Timer K.
    Completed,
    /// Done; the owner removes the transaction.
    Terminated,
}

/// A non-INVITE client transaction (REGISTER, OPTIONS, BYE, CANCEL, REFER, NOTIFY…).
///
/// `R` is the owner's parsed response type, passed through to the TU in
/// [`ClientOutput::Response`].
#[derive(Debug)]
pub struct NonInviteClient<R> {
    state: NonInviteClientState,
    request: Bytes,
    timers: Timers,
    reliable: bool,
    /// Current Timer E interval.
    interval: Duration,
    table: TimerTable,
    out: VecDeque<ClientOutput<R>>,
}

impl<R> NonInviteClient<R> {
    /// Starts the transaction in Trying: queues the first transmission of `request` and arms
    /// Timer F (64·T1) and, over an unreliable transport, Timer E (T1).
    pub fn start(now: Instant, request: Bytes, timers: &Timers, reliable: bool) -> Self {
        let mut table = TimerTable::new();
        table.set_after(Timer::F, now, sixty_four_t1(timers));
        // RFC 3261 §17.1.2.2: Timer E only for unreliable transports.
        if !reliable {
            table.set_after(Timer::E, now, timers.t1);
        }
        NonInviteClient {
            state: NonInviteClientState::Trying,
            out: VecDeque::from([ClientOutput::Transmit(request.clone())]),
            request,
            timers: *timers,
            reliable,
            interval: timers.t1,
            table,
        }
    }

    /// Feeds a response the endpoint matched to this transaction (by [`super::TransactionKey`]).
    ///
    /// A 1xx moves Trying to Proceeding; a final (200–699) moves to Completed and stops
    /// retransmissions. Both are passed to the TU. Responses in Completed (retransmissions),
    /// after Terminated, or with a status outside 100–699 are dropped.
    pub fn handle_response(&mut self, now: Instant, status: u16, response: R) {
        let Some(class) = StatusClass::of(status) else {
            return;
        };
        if !matches!(
            self.state,
            NonInviteClientState::Trying | NonInviteClientState::Proceeding
        ) {
            // RFC 3261 §17.1.2.2: Completed buffers response retransmissions; none reach the TU.
            return;
        }
        self.out.push_back(ClientOutput::Response(response));
        match class {
            // Timer E keeps its current deadline; it is re-armed with T2 when it fires.
            StatusClass::Provisional => self.state = NonInviteClientState::Proceeding,
            StatusClass::Success | StatusClass::Failure => self.complete(now),
        }
    }

    /// Fires every timer due at `now`: Timer E retransmits, Timer F times out, Timer K ends.
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in self.table.expired(now) {
            // An earlier timer in this batch may have terminated the transaction.
            if !self.table.is_due(timer, now) {
                continue;
            }
            self.table.clear(timer);
            match timer {
                Timer::E => self.retransmit(now),
                Timer::F => {
                    self.out.push_back(ClientOutput::TimedOut);
                    self.terminate();
                }
                Timer::K => self.terminate(),
                _ => {}
            }
        }
    }

    /// The transport could not send the request (RFC 3261 §17.1.4): tell the TU and terminate.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        match self.state {
            NonInviteClientState::Trying | NonInviteClientState::Proceeding => {
                self.out.push_back(ClientOutput::TransportFailed);
                self.terminate();
            }
            // The TU has its final response already.
            NonInviteClientState::Completed => self.terminate(),
            NonInviteClientState::Terminated => {}
        }
    }

    /// The next thing to do: transmit, tell the TU, or remove the transaction.
    pub fn poll_output(&mut self) -> Option<ClientOutput<R>> {
        self.out.pop_front()
    }

    /// When [`NonInviteClient::handle_timeout`] must next be called; `None` once Terminated.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.table.next_deadline()
    }

    /// The current state.
    pub fn state(&self) -> NonInviteClientState {
        self.state
    }

    /// Whether the transaction has ended.
    pub fn is_terminated(&self) -> bool {
        self.state == NonInviteClientState::Terminated
    }

    fn retransmit(&mut self, now: Instant) {
        self.interval = match self.state {
            NonInviteClientState::Trying => doubled(self.interval, Some(self.timers.t2)),
            // RFC 3261 §17.1.2.2: in Proceeding, Timer E is reset with T2.
            _ => self.timers.t2,
        };
        self.out
            .push_back(ClientOutput::Transmit(self.request.clone()));
        self.table.set_after(Timer::E, now, self.interval);
    }

    fn complete(&mut self, now: Instant) {
        self.table.clear(Timer::E);
        self.table.clear(Timer::F);
        // RFC 3261 §17.1.2.2: Timer K is T4 for unreliable transports, zero for reliable ones.
        let wait = unless_reliable(self.reliable, self.timers.t4);
        if wait.is_zero() {
            self.terminate();
        } else {
            self.state = NonInviteClientState::Completed;
            self.table.set_after(Timer::K, now, wait);
        }
    }

    fn terminate(&mut self) {
        self.state = NonInviteClientState::Terminated;
        self.table.clear_all();
        self.out.push_back(ClientOutput::Terminated);
    }
}

#[cfg(test)]
impl<R> super::testing::Machine for NonInviteClient<R> {
    type Output = ClientOutput<R>;
    fn poll_output(&mut self) -> Option<Self::Output> {
        NonInviteClient::poll_output(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        NonInviteClient::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        NonInviteClient::handle_timeout(self, now)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{drive, drive_to_end};
    use super::*;
    use crate::testkit::{self, ms};

    type Output = ClientOutput<&'static str>;

    fn options() -> Bytes {
        Bytes::from_static(b"OPTIONS sip:pbx.example.com SIP/2.0\r\n\r\n")
    }

    fn start(reliable: bool, timers: &Timers) -> NonInviteClient<&'static str> {
        NonInviteClient::start(testkit::t0(), options(), timers, reliable)
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
            t1: ms(100),
            t2: ms(400),
            t4: ms(1_000),
        }
    }

    #[test]
    fn retransmits_with_backoff_then_times_out() {
        let t0 = testkit::t0();
        let mut transaction =
            NonInviteClient::<()>::start(t0, options(), &Timers::default(), false);
        let (mut now, mut sent, mut timed_out) = (t0, vec![], false);
        loop {
            while let Some(out) = transaction.poll_output() {
                timed_out |= matches!(out, ClientOutput::TimedOut);
                if let ClientOutput::Transmit(_) = out {
                    sent.push(now - t0)
                }
            }
            let Some(deadline) = transaction.poll_timeout() else {
                break;
            };
            now = deadline;
            transaction.handle_timeout(now);
        }
        assert_eq!(sent[..5], [ms(0), ms(500), ms(1_500), ms(3_500), ms(7_500)]); // Timer E
        assert!(timed_out && now - t0 == ms(32_000)); // Timer F = 64·T1
    }

    #[test]
    fn timer_e_caps_at_t2_until_timer_f_times_out() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        let (outputs, end) = drive_to_end(&mut transaction, t0, t0);
        let expected: Vec<Duration> = [0, 500, 1_500, 3_500, 7_500]
            .into_iter()
            .chain((11_500..32_000).step_by(4_000))
            .map(ms)
            .collect();
        assert_eq!(transmit_times(&outputs), expected);
        let tail: Vec<_> = outputs[outputs.len() - 2..].to_vec();
        assert_eq!(
            tail,
            [
                (ms(32_000), ClientOutput::TimedOut),
                (ms(32_000), ClientOutput::Terminated)
            ]
        );
        assert_eq!(end - t0, ms(32_000));
        assert!(transaction.is_terminated());
        assert_eq!(transaction.poll_timeout(), None);
    }

    #[test]
    fn custom_timers_set_e_and_f() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &custom());
        let (outputs, end) = drive_to_end(&mut transaction, t0, t0);
        let expected: Vec<Duration> = [0, 100, 300, 700]
            .into_iter()
            .chain((1_100..6_400).step_by(400))
            .map(ms)
            .collect();
        assert_eq!(transmit_times(&outputs), expected);
        assert_eq!(end - t0, ms(6_400));
        assert!(outputs.contains(&(ms(6_400), ClientOutput::TimedOut)));
    }

    #[test]
    fn reliable_transport_never_retransmits_and_times_out_with_timer_f() {
        let t0 = testkit::t0();
        let mut transaction = start(true, &Timers::default());
        let (outputs, _) = drive_to_end(&mut transaction, t0, t0);
        assert_eq!(
            outputs,
            [
                (ms(0), ClientOutput::Transmit(options())),
                (ms(32_000), ClientOutput::TimedOut),
                (ms(32_000), ClientOutput::Terminated),
            ]
        );
    }

    #[test]
    fn provisional_moves_retransmit_interval_to_t2() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        let (_, now) = drive(&mut transaction, t0, t0, t0 + ms(600));
        transaction.handle_response(now, 100, "100 Trying");
        assert_eq!(
            transaction.poll_output(),
            Some(ClientOutput::Response("100 Trying"))
        );
        assert_eq!(transaction.state(), NonInviteClientState::Proceeding);
        let (outputs, end) = drive_to_end(&mut transaction, t0, now);
        // The E armed before the 1xx (1 500 ms) stays; every later interval is T2.
        let expected: Vec<Duration> = (1_500..32_000).step_by(4_000).map(ms).collect();
        assert_eq!(transmit_times(&outputs), expected);
        // RFC 3261 §17.1.2.2: Timer F still applies in Proceeding.
        assert_eq!(end - t0, ms(32_000));
        assert!(outputs.contains(&(ms(32_000), ClientOutput::TimedOut)));
    }

    #[test]
    fn provisional_in_trying_before_first_retransmit_keeps_first_deadline() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &custom());
        assert_eq!(
            transaction.poll_output(),
            Some(ClientOutput::Transmit(options()))
        );
        transaction.handle_response(t0 + ms(50), 180, "180");
        let (outputs, _) = drive(&mut transaction, t0, t0 + ms(50), t0 + ms(1_000));
        assert_eq!(transmit_times(&outputs), [ms(100), ms(500), ms(900)]);
    }

    #[test]
    fn final_response_stops_retransmissions_and_waits_timer_k() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        let (_, now) = drive(&mut transaction, t0, t0, t0 + ms(2_000));
        transaction.handle_response(now, 200, "200 OK");
        assert_eq!(transaction.state(), NonInviteClientState::Completed);
        let (outputs, end) = drive_to_end(&mut transaction, t0, now);
        assert_eq!(
            outputs,
            [
                (ms(1_500), ClientOutput::Response("200 OK")),
                (ms(6_500), ClientOutput::Terminated)
            ]
        );
        // Timer K = T4 after the final response.
        assert_eq!(end - now, ms(5_000));
    }

    #[test]
    fn timer_k_follows_custom_t4() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &custom());
        transaction.handle_response(t0 + ms(10), 486, "486");
        assert_eq!(transaction.poll_timeout(), Some(t0 + ms(1_010)));
    }

    #[test]
    fn reliable_final_response_terminates_at_once() {
        let t0 = testkit::t0();
        let mut transaction = start(true, &Timers::default());
        transaction.poll_output();
        transaction.handle_response(t0 + ms(40), 200, "200 OK");
        assert_eq!(
            transaction.poll_output(),
            Some(ClientOutput::Response("200 OK"))
        );
        assert_eq!(transaction.poll_output(), Some(ClientOutput::Terminated));
        assert_eq!(transaction.poll_output(), None);
        assert_eq!(transaction.poll_timeout(), None);
    }

    #[test]
    fn retransmitted_final_in_completed_is_absorbed() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        transaction.poll_output();
        transaction.handle_response(t0 + ms(40), 200, "first");
        transaction.handle_response(t0 + ms(540), 200, "again");
        transaction.handle_response(t0 + ms(600), 100, "late 1xx");
        assert_eq!(
            transaction.poll_output(),
            Some(ClientOutput::Response("first"))
        );
        assert_eq!(transaction.poll_output(), None);
        assert_eq!(transaction.state(), NonInviteClientState::Completed);
    }

    #[test]
    fn responses_after_termination_are_ignored() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        let (_, now) = drive_to_end(&mut transaction, t0, t0);
        transaction.handle_response(now + ms(1), 200, "too late");
        transaction.handle_timeout(now + ms(100_000));
        assert_eq!(transaction.poll_output(), None);
        assert!(transaction.is_terminated());
    }

    #[test]
    fn status_outside_sip_range_is_dropped() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        transaction.poll_output();
        transaction.handle_response(t0, 99, "bogus");
        transaction.handle_response(t0, 700, "bogus");
        assert_eq!(transaction.poll_output(), None);
        assert_eq!(transaction.state(), NonInviteClientState::Trying);
    }

    #[test]
    fn transport_error_reports_and_terminates() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        transaction.poll_output();
        transaction.handle_transport_error(t0 + ms(1));
        assert_eq!(
            transaction.poll_output(),
            Some(ClientOutput::TransportFailed)
        );
        assert_eq!(transaction.poll_output(), Some(ClientOutput::Terminated));
        transaction.handle_transport_error(t0 + ms(2));
        assert_eq!(transaction.poll_output(), None);
        assert_eq!(transaction.poll_timeout(), None);
    }

    #[test]
    fn transport_error_after_the_final_response_only_terminates() {
        let t0 = testkit::t0();
        let mut transaction = start(false, &Timers::default());
        transaction.poll_output();
        transaction.handle_response(t0 + ms(10), 200, "200 OK");
        assert_eq!(
            transaction.poll_output(),
            Some(ClientOutput::Response("200 OK"))
        );
        assert_eq!(transaction.state(), NonInviteClientState::Completed);
        transaction.handle_transport_error(t0 + ms(20));
        assert_eq!(transaction.poll_output(), Some(ClientOutput::Terminated));
        assert_eq!(transaction.poll_output(), None);
    }
}
