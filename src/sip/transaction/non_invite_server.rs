//! Non-INVITE server transaction (RFC 3261 §17.2.2, figure 8).
//!
//! ```text
//!            new: Trying
//!   Trying --1xx from TU: Transmit--> Proceeding --1xx from TU: Transmit--> Proceeding
//!   Trying|Proceeding --200-699 from TU: Transmit--> Completed
//!   Completed --Timer J (64·T1; 0 reliable)--> Terminated
//!   retransmitted request: Trying absorbs it; Proceeding/Completed resend the last response
//! ```
//!
//! In: `new`, the TU's `send_response`, the network's `handle_retransmission`, `handle_timeout`,
//! `handle_transport_error`. Out: [`ServerOutput`] via `poll_output`, next wake-up via
//! `poll_timeout`. The endpoint passes the first request to the TU itself; retransmissions stop
//! here. Nothing is retransmitted on a timer: a non-INVITE server only answers retransmissions.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use super::timer::sixty_four_t1;
use super::{unless_reliable, ServerOutput, StatusClass, Timer, TimerTable, Timers};

/// The states of figure 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonInviteServerState {
    /// Request received, no response sent yet.
    Trying,
    /// A provisional response was sent.
    Proceeding,
    /// A final response was sent; answering request retransmissions until Timer J.
    Completed,
    /// Done; the owner removes the transaction.
    Terminated,
}

/// A non-INVITE server transaction (OPTIONS, BYE, CANCEL, INFO, NOTIFY, REFER…).
#[derive(Debug)]
pub struct NonInviteServer {
    state: NonInviteServerState,
    timers: Timers,
    reliable: bool,
    /// The last response sent: what a retransmitted request gets back.
    response: Option<Bytes>,
    table: TimerTable,
    out: VecDeque<ServerOutput>,
}

impl NonInviteServer {
    /// Creates the transaction for a newly received request, in Trying. Nothing is sent.
    pub fn new(_now: Instant, timers: &Timers, reliable: bool) -> Self {
        NonInviteServer {
            state: NonInviteServerState::Trying,
            timers: *timers,
            reliable,
            response: None,
            table: TimerTable::new(),
            out: VecDeque::new(),
        }
    }

    /// Sends the TU's response with its `status`: a 1xx moves to Proceeding, a final (200–699)
    /// to Completed (Timer J), or straight to Terminated over a reliable transport.
    ///
    /// Ignored once Completed (RFC 3261 §17.2.2: further finals from the TU are discarded), after
    /// Terminated, and for statuses outside 100–699.
    pub fn send_response(&mut self, now: Instant, status: u16, response: Bytes) {
        if !matches!(
            self.state,
            NonInviteServerState::Trying | NonInviteServerState::Proceeding
        ) {
            return;
        }
        let Some(class) = StatusClass::of(status) else {
            return;
        };
        self.out.push_back(ServerOutput::Transmit(response.clone()));
        self.response = Some(response);
        match class {
            StatusClass::Provisional => self.state = NonInviteServerState::Proceeding,
            StatusClass::Success | StatusClass::Failure => {
                // RFC 3261 §17.2.2: Timer J is 64·T1 for unreliable transports, zero for reliable.
                let wait = unless_reliable(self.reliable, sixty_four_t1(&self.timers));
                if wait.is_zero() {
                    self.terminate();
                } else {
                    self.state = NonInviteServerState::Completed;
                    self.table.set_after(Timer::J, now, wait);
                }
            }
        }
    }

    /// A retransmission of the request arrived (it matched this transaction's key). It never
    /// reaches the TU: in Trying it is dropped, in Proceeding and Completed the last response is
    /// resent (RFC 3261 §17.2.2).
    pub fn handle_retransmission(&mut self, _now: Instant) {
        if matches!(
            self.state,
            NonInviteServerState::Proceeding | NonInviteServerState::Completed
        ) {
            if let Some(response) = &self.response {
                self.out.push_back(ServerOutput::Transmit(response.clone()));
            }
        }
    }

    /// Fires Timer J if due at `now`: Completed → Terminated.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.table.is_due(Timer::J, now) {
            self.table.clear(Timer::J);
            self.terminate();
        }
    }

    /// The transport could not send a response (RFC 3261 §17.2.4): tell the TU and terminate.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != NonInviteServerState::Terminated {
            self.out.push_back(ServerOutput::TransportFailed);
            self.terminate();
        }
    }

    /// The next thing to do: transmit, tell the TU, or remove the transaction.
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        self.out.pop_front()
    }

    /// When [`NonInviteServer::handle_timeout`] must next be called; only set in Completed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.table.next_deadline()
    }

    /// The current state.
    pub fn state(&self) -> NonInviteServerState {
        self.state
    }

    /// Whether the transaction has ended.
    pub fn is_terminated(&self) -> bool {
        self.state == NonInviteServerState::Terminated
    }

    fn terminate(&mut self) {
        self.state = NonInviteServerState::Terminated;
        self.response = None;
        self.table.clear_all();
        self.out.push_back(ServerOutput::Terminated);
    }
}

#[cfg(test)]
impl super::testing::Machine for NonInviteServer {
    type Output = ServerOutput;
    fn poll_output(&mut self) -> Option<Self::Output> {
        NonInviteServer::poll_output(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        NonInviteServer::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        NonInviteServer::handle_timeout(self, now)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::drive_to_end;
    use super::*;
    use crate::testkit::{self, ms};

    fn trying() -> Bytes {
        Bytes::from_static(b"SIP/2.0 100 Trying\r\n\r\n")
    }

    fn ok() -> Bytes {
        Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n")
    }

    fn drain(transaction: &mut NonInviteServer) -> Vec<ServerOutput> {
        std::iter::from_fn(|| transaction.poll_output()).collect()
    }

    #[test]
    fn retransmission_in_trying_is_absorbed_silently() {
        let t0 = testkit::t0();
        let mut transaction = NonInviteServer::new(t0, &Timers::default(), false);
        transaction.handle_retransmission(t0 + ms(500));
        assert_eq!(drain(&mut transaction), []);
        assert_eq!(transaction.state(), NonInviteServerState::Trying);
        assert_eq!(transaction.poll_timeout(), None);
    }

    #[test]
    fn retransmission_in_proceeding_resends_provisional() {
        let t0 = testkit::t0();
        let mut transaction = NonInviteServer::new(t0, &Timers::default(), false);
        transaction.send_response(t0, 100, trying());
        transaction.handle_retransmission(t0 + ms(500));
        assert_eq!(
            drain(&mut transaction),
            [
                ServerOutput::Transmit(trying()),
                ServerOutput::Transmit(trying())
            ]
        );
        assert_eq!(transaction.state(), NonInviteServerState::Proceeding);
    }

    #[test]
    fn retransmission_in_completed_resends_final() {
        let t0 = testkit::t0();
        let mut transaction = NonInviteServer::new(t0, &Timers::default(), false);
        transaction.send_response(t0, 100, trying());
        transaction.send_response(t0 + ms(10), 200, ok());
        drain(&mut transaction);
        transaction.handle_retransmission(t0 + ms(500));
        transaction.handle_retransmission(t0 + ms(1_500));
        assert_eq!(
            drain(&mut transaction),
            [ServerOutput::Transmit(ok()), ServerOutput::Transmit(ok())]
        );
    }

    #[test]
    fn timer_j_ends_completed_after_64_t1() {
        let t0 = testkit::t0();
        let mut transaction = NonInviteServer::new(t0, &Timers::default(), false);
        transaction.send_response(t0 + ms(100), 200, ok());
        assert_eq!(transaction.state(), NonInviteServerState::Completed);
        let (outputs, end) = drive_to_end(&mut transaction, t0, t0 + ms(100));
        assert_eq!(
            outputs,
            [
                (ms(100), ServerOutput::Transmit(ok())),
                (ms(32_100), ServerOutput::Terminated)
            ]
        );
        assert_eq!(end - t0, ms(32_100));
    }

    #[test]
    fn timer_j_follows_custom_t1() {
        let t0 = testkit::t0();
        let timers = Timers {
            t1: ms(150),
            t2: ms(600),
            t4: ms(900),
        };
        let mut transaction = NonInviteServer::new(t0, &timers, false);
        transaction.send_response(t0, 404, ok());
        assert_eq!(transaction.poll_timeout(), Some(t0 + ms(9_600)));
    }

    #[test]
    fn reliable_final_terminates_at_once() {
        let t0 = testkit::t0();
        let mut transaction = NonInviteServer::new(t0, &Timers::default(), true);
        transaction.send_response(t0, 200, ok());
        assert_eq!(
            drain(&mut transaction),
            [ServerOutput::Transmit(ok()), ServerOutput::Terminated]
        );
        assert_eq!(transaction.poll_timeout(), None);
        transaction.handle_retransmission(t0 + ms(1));
        assert_eq!(drain(&mut transaction), []);
    }

    #[test]
    fn responses_after_the_final_are_discarded() {
        let t0 = testkit::t0();
        let mut transaction = NonInviteServer::new(t0, &Timers::default(), false);
        transaction.send_response(t0, 200, ok());
        transaction.send_response(t0 + ms(1), 100, trying());
        transaction.send_response(t0 + ms(2), 500, trying());
        assert_eq!(drain(&mut transaction), [ServerOutput::Transmit(ok())]);
        transaction.handle_retransmission(t0 + ms(3));
        assert_eq!(drain(&mut transaction), [ServerOutput::Transmit(ok())]);
    }

    #[test]
    fn status_outside_sip_range_is_ignored() {
        let t0 = testkit::t0();
        let mut transaction = NonInviteServer::new(t0, &Timers::default(), false);
        transaction.send_response(t0, 42, ok());
        assert_eq!(drain(&mut transaction), []);
        assert_eq!(transaction.state(), NonInviteServerState::Trying);
    }

    #[test]
    fn input_after_termination_is_ignored() {
        let t0 = testkit::t0();
        let mut transaction = NonInviteServer::new(t0, &Timers::default(), false);
        transaction.send_response(t0, 200, ok());
        let (_, now) = drive_to_end(&mut transaction, t0, t0);
        assert!(transaction.is_terminated());
        transaction.handle_retransmission(now);
        transaction.send_response(now, 200, ok());
        transaction.handle_timeout(now + ms(60_000));
        assert_eq!(drain(&mut transaction), []);
    }

    #[test]
    fn transport_error_reports_and_terminates() {
        let t0 = testkit::t0();
        let mut transaction = NonInviteServer::new(t0, &Timers::default(), false);
        transaction.handle_transport_error(t0);
        assert_eq!(
            drain(&mut transaction),
            [ServerOutput::TransportFailed, ServerOutput::Terminated]
        );
    }
}
