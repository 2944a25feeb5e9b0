//! INVITE server transaction (RFC 3261 §17.2.1, figure 7, with RFC 6026's Accepted state), plus
//! the UAS core's 2xx retransmission (RFC 3261 §13.3.1.4), folded in here for simplicity.
//!
//! ```text
//!            new: Proceeding (the TU sends 100 Trying itself, at once)
//!   Proceeding --1xx from TU: Transmit--> Proceeding
//!   Proceeding --2xx from TU: Transmit--> Accepted      (Timer L = 64·T1; 2xx resent on
//!                                                        Retransmit2xx: T1 doubling to T2, UDP)
//!   Proceeding --300-699 from TU: Transmit--> Completed (Timer H = 64·T1; Timer G = T1, UDP)
//!   Completed --Timer G: Transmit(final), interval doubles up to T2--> Completed
//!   Completed --ACK--> Confirmed --Timer I (T4; 0 reliable)--> Terminated
//!   Completed --Timer H: TimedOut--> Terminated
//!   Accepted --ACK (passed to TU)--> Accepted: 2xx retransmission stops
//!   Accepted --Timer L: TimedOut if no ACK came--> Terminated
//!   transport error: TransportFailed, then Terminated — except Accepted, which stays (RFC 6026)
//!   retransmitted INVITE: Proceeding/Completed/Accepted resend the last response; else absorbed
//! ```
//!
//! In: `new`, the TU's `send_provisional` / `send_final`, the network's `handle_retransmission`
//! and `handle_ack`, `handle_timeout`, `handle_transport_error`. Out: [`ServerOutput`] via
//! `poll_output`, next wake-up via `poll_timeout`. The endpoint passes the first INVITE to the TU
//! itself; retransmissions stop here and never reach the TU. An ACK reaches the TU only when
//! `handle_ack` returns `true` (it acknowledges a 2xx, RFC 6026 §8.7).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timer::{doubled, sixty_four_t1};
use super::{unless_reliable, ServerOutput, StatusClass, Timer, TimerTable, Timers};

/// The states of figure 7 plus RFC 6026's Accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteServerState {
    /// INVITE received; provisional responses may be sent.
    Proceeding,
    /// A 2xx was sent (RFC 6026); it is retransmitted until the ACK, and the state lasts Timer L.
    Accepted,
    /// A 300–699 was sent; it is retransmitted (Timer G) until the ACK or Timer H.
    Completed,
    /// The ACK to the 300–699 arrived; absorbing ACK retransmissions until Timer I.
    Confirmed,
    /// Done; the owner removes the transaction.
    Terminated,
}

/// An INVITE server transaction.
#[derive(Debug)]
pub struct InviteServer {
    state: InviteServerState,
    timers: Timers,
    reliable: bool,
    /// The last response sent: what a retransmitted INVITE or a retransmit timer resends.
    response: Option<Bytes>,
    /// Current Timer G or 2xx retransmission interval.
    interval: Duration,
    /// Whether an ACK arrived for the 2xx (Accepted only).
    acked: bool,
    table: TimerTable,
    out: VecDeque<ServerOutput>,
}

impl InviteServer {
    /// Creates the transaction for a newly received INVITE, in Proceeding. Nothing is sent: the
    /// TU answers with `send_provisional` (100 Trying at once, RFC 3261 §17.2.1) or `send_final`.
    pub fn new(_now: Instant, timers: &Timers, reliable: bool) -> Self {
        InviteServer {
            state: InviteServerState::Proceeding,
            timers: *timers,
            reliable,
            response: None,
            interval: timers.t1,
            acked: false,
            table: TimerTable::new(),
            out: VecDeque::new(),
        }
    }

    /// Sends a 1xx from the TU. It is remembered and resent on every retransmitted INVITE.
    /// Ignored outside Proceeding (the RFC allows no 1xx after a final).
    pub fn send_provisional(&mut self, _now: Instant, response: Bytes) {
        if self.state == InviteServerState::Proceeding {
            self.transmit(response);
        }
    }

    /// Sends the TU's final response with its `status`: a 2xx moves to Accepted, a 300–699 to
    /// Completed; a 1xx status is treated as [`InviteServer::send_provisional`]. Ignored outside
    /// Proceeding (only one final per transaction) and for statuses outside 100–699.
    pub fn send_final(&mut self, now: Instant, status: u16, response: Bytes) {
        if self.state != InviteServerState::Proceeding {
            return;
        }
        let Some(class) = StatusClass::of(status) else {
            return;
        };
        self.transmit(response);
        match class {
            StatusClass::Provisional => {}
            StatusClass::Success => {
                // RFC 6026 §8.7: Accepted, Timer L = 64·T1 on any transport.
                self.state = InviteServerState::Accepted;
                self.table
                    .set_after(Timer::L, now, sixty_four_t1(&self.timers));
                // RFC 3261 §13.3.1.4: the UAS retransmits the 2xx over unreliable transports.
                if !self.reliable {
                    self.interval = self.timers.t1;
                    self.table
                        .set_after(Timer::Retransmit2xx, now, self.interval);
                }
            }
            StatusClass::Failure => {
                // RFC 3261 §17.2.1: Timer H on any transport, Timer G over unreliable ones.
                self.state = InviteServerState::Completed;
                self.table
                    .set_after(Timer::H, now, sixty_four_t1(&self.timers));
                if !self.reliable {
                    self.interval = self.timers.t1;
                    self.table.set_after(Timer::G, now, self.interval);
                }
            }
        }
    }

    /// A retransmission of the INVITE arrived (it matched this transaction's key). It never
    /// reaches the TU: in Proceeding the last provisional is resent (nothing if none was sent yet),
    /// in Completed the final, in Accepted the 2xx; in Confirmed and Terminated it is dropped.
    pub fn handle_retransmission(&mut self, _now: Instant) {
        // RFC 3261 §17.2.1 (Proceeding, Completed) and RFC 6026 §8.7 (Accepted).
        if matches!(
            self.state,
            InviteServerState::Proceeding
                | InviteServerState::Completed
                | InviteServerState::Accepted
        ) {
            if let Some(response) = &self.response {
                self.out.push_back(ServerOutput::Transmit(response.clone()));
            }
        }
    }

    /// An ACK for this INVITE arrived. Returns whether the TU must see it.
    ///
    /// In Completed (ACK to a 300–699) it moves to Confirmed, stops Timers G and H and arms
    /// Timer I, and returns `false`: that ACK is hop-by-hop. In Accepted it stops the 2xx
    /// retransmissions and returns `true` for every ACK (RFC 6026 §8.7: they go to the TU, which
    /// dedupes them through the dialog). Anywhere else it is absorbed and returns `false`.
    pub fn handle_ack(&mut self, now: Instant) -> bool {
        match self.state {
            InviteServerState::Completed => {
                self.table.clear(Timer::G);
                self.table.clear(Timer::H);
                // RFC 3261 §17.2.1: Timer I is T4 for unreliable transports, zero for reliable.
                let wait = unless_reliable(self.reliable, self.timers.t4);
                if wait.is_zero() {
                    self.terminate();
                } else {
                    self.state = InviteServerState::Confirmed;
                    self.table.set_after(Timer::I, now, wait);
                }
                false
            }
            InviteServerState::Accepted => {
                self.acked = true;
                self.table.clear(Timer::Retransmit2xx);
                true
            }
            _ => false,
        }
    }

    /// Fires every timer due at `now`: G and the 2xx timer retransmit, H times out, I ends,
    /// L ends (timing out first if the 2xx was never ACKed).
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in self.table.expired(now) {
            // An earlier timer in this batch may have terminated the transaction.
            if !self.table.is_due(timer, now) {
                continue;
            }
            self.table.clear(timer);
            match timer {
                Timer::G | Timer::Retransmit2xx => {
                    // RFC 3261 §17.2.1 (G) and §13.3.1.4 (2xx): double up to T2.
                    self.interval = doubled(self.interval, Some(self.timers.t2));
                    if let Some(response) = &self.response {
                        self.out.push_back(ServerOutput::Transmit(response.clone()));
                    }
                    self.table.set_after(timer, now, self.interval);
                }
                Timer::H => {
                    self.out.push_back(ServerOutput::TimedOut);
                    self.terminate();
                }
                Timer::I => self.terminate(),
                Timer::L => {
                    // RFC 3261 §13.3.1.4: no ACK within 64·T1 — the TU should end the session.
                    if !self.acked {
                        self.out.push_back(ServerOutput::TimedOut);
                    }
                    self.terminate();
                }
                _ => {}
            }
        }
    }

    /// The transport could not send a response (RFC 3261 §17.2.4): tell the TU and terminate —
    /// except in Accepted, which stays until Timer L so that retransmitted INVITEs and ACKs for the
    /// 2xx are still absorbed and matched (RFC 6026 §8.8, figure 7).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        match self.state {
            InviteServerState::Terminated => {}
            InviteServerState::Accepted => self.out.push_back(ServerOutput::TransportFailed),
            _ => {
                self.out.push_back(ServerOutput::TransportFailed);
                self.terminate();
            }
        }
    }

    /// The next thing to do: transmit, tell the TU, or remove the transaction.
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        self.out.pop_front()
    }

    /// When [`InviteServer::handle_timeout`] must next be called; `None` in Proceeding (the TU
    /// moves it on) and once Terminated.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.table.next_deadline()
    }

    /// The current state.
    pub fn state(&self) -> InviteServerState {
        self.state
    }

    /// Whether the transaction has ended.
    pub fn is_terminated(&self) -> bool {
        self.state == InviteServerState::Terminated
    }

    fn transmit(&mut self, response: Bytes) {
        self.out.push_back(ServerOutput::Transmit(response.clone()));
        self.response = Some(response);
    }

    fn terminate(&mut self) {
        self.state = InviteServerState::Terminated;
        self.response = None;
        self.table.clear_all();
        self.out.push_back(ServerOutput::Terminated);
    }
}

#[cfg(test)]
impl super::testing::Machine for InviteServer {
    type Output = ServerOutput;
    fn poll_output(&mut self) -> Option<Self::Output> {
        InviteServer::poll_output(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        InviteServer::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        InviteServer::handle_timeout(self, now)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{drive, drive_to_end};
    use super::*;
    use crate::testkit::{self, ms};

    fn trying() -> Bytes {
        Bytes::from_static(b"SIP/2.0 100 Trying\r\n\r\n")
    }

    fn ringing() -> Bytes {
        Bytes::from_static(b"SIP/2.0 180 Ringing\r\n\r\n")
    }

    fn ok() -> Bytes {
        Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n")
    }

    fn busy() -> Bytes {
        Bytes::from_static(b"SIP/2.0 486 Busy Here\r\n\r\n")
    }

    fn custom() -> Timers {
        Timers {
            t1: ms(100),
            t2: ms(400),
            t4: ms(1_000),
        }
    }

    fn drain(transaction: &mut InviteServer) -> Vec<ServerOutput> {
        std::iter::from_fn(|| transaction.poll_output()).collect()
    }

    fn times_of(outputs: &[(Duration, ServerOutput)], bytes: &Bytes) -> Vec<Duration> {
        outputs
            .iter()
            .filter(|(_, out)| *out == ServerOutput::Transmit(bytes.clone()))
            .map(|(at, _)| *at)
            .collect()
    }

    /// The T1-doubling, T2-capped schedule from 0 up to (excluding) `end_ms`.
    fn capped_schedule(t1_ms: u64, t2_ms: u64, end_ms: u64) -> Vec<Duration> {
        let (mut at, mut interval, mut times) = (0, t1_ms, vec![]);
        while at < end_ms {
            times.push(ms(at));
            at += interval;
            interval = (interval * 2).min(t2_ms);
        }
        times
    }

    #[test]
    fn retransmitted_invite_before_any_response_is_absorbed_silently() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), false);
        transaction.handle_retransmission(t0 + ms(500));
        assert_eq!(drain(&mut transaction), []);
        assert_eq!(transaction.poll_timeout(), None);
        assert_eq!(transaction.state(), InviteServerState::Proceeding);
    }

    #[test]
    fn absorbs_retransmitted_invite_by_resending_last_provisional() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), false);
        transaction.send_provisional(t0, trying());
        transaction.handle_retransmission(t0 + ms(500));
        transaction.send_provisional(t0 + ms(800), ringing());
        transaction.handle_retransmission(t0 + ms(1_500));
        assert_eq!(
            drain(&mut transaction),
            [
                ServerOutput::Transmit(trying()),
                ServerOutput::Transmit(trying()),
                ServerOutput::Transmit(ringing()),
                ServerOutput::Transmit(ringing()),
            ]
        );
        // Provisionals are never retransmitted on a timer.
        assert_eq!(transaction.poll_timeout(), None);
    }

    #[test]
    fn timer_g_retransmits_non_2xx_until_timer_h_times_out() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), false);
        transaction.send_final(t0, 486, busy());
        assert_eq!(transaction.state(), InviteServerState::Completed);
        let (outputs, end) = drive_to_end(&mut transaction, t0, t0);
        assert_eq!(
            times_of(&outputs, &busy()),
            capped_schedule(500, 4_000, 32_000)
        );
        assert_eq!(
            times_of(&outputs, &busy())[..6],
            [0, 500, 1_500, 3_500, 7_500, 11_500].map(ms)
        );
        // Timer H = 64·T1 without an ACK.
        assert_eq!(
            outputs[outputs.len() - 2..],
            [
                (ms(32_000), ServerOutput::TimedOut),
                (ms(32_000), ServerOutput::Terminated)
            ]
        );
        assert_eq!(end - t0, ms(32_000));
    }

    #[test]
    fn custom_timers_set_g_and_h() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &custom(), false);
        transaction.send_final(t0, 603, busy());
        let (outputs, end) = drive_to_end(&mut transaction, t0, t0);
        assert_eq!(
            times_of(&outputs, &busy()),
            capped_schedule(100, 400, 6_400)
        );
        assert_eq!(end - t0, ms(6_400));
        assert!(outputs.contains(&(ms(6_400), ServerOutput::TimedOut)));
    }

    #[test]
    fn ack_to_non_2xx_stops_retransmissions_and_timer_i_terminates() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), false);
        transaction.send_final(t0, 486, busy());
        let (_, now) = drive(&mut transaction, t0, t0, t0 + ms(2_000));
        assert!(!transaction.handle_ack(now + ms(100)));
        assert_eq!(transaction.state(), InviteServerState::Confirmed);
        // ACK retransmissions and INVITE retransmissions are absorbed in Confirmed.
        assert!(!transaction.handle_ack(now + ms(200)));
        transaction.handle_retransmission(now + ms(300));
        let (outputs, end) = drive_to_end(&mut transaction, t0, now + ms(300));
        assert_eq!(outputs, [(ms(6_600), ServerOutput::Terminated)]);
        // Timer I = T4 from the first ACK.
        assert_eq!(end - (now + ms(100)), ms(5_000));
    }

    #[test]
    fn timer_i_follows_custom_t4() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &custom(), false);
        transaction.send_final(t0, 404, busy());
        transaction.handle_ack(t0 + ms(50));
        assert_eq!(transaction.poll_timeout(), Some(t0 + ms(1_050)));
    }

    #[test]
    fn retransmitted_invite_in_completed_resends_final() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), false);
        transaction.send_provisional(t0, trying());
        transaction.send_final(t0 + ms(10), 486, busy());
        drain(&mut transaction);
        transaction.handle_retransmission(t0 + ms(200));
        assert_eq!(drain(&mut transaction), [ServerOutput::Transmit(busy())]);
    }

    #[test]
    fn reliable_non_2xx_is_not_retransmitted_and_still_waits_timer_h() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), true);
        transaction.send_final(t0, 486, busy());
        let (outputs, _) = drive_to_end(&mut transaction, t0, t0);
        assert_eq!(
            outputs,
            [
                (ms(0), ServerOutput::Transmit(busy())),
                (ms(32_000), ServerOutput::TimedOut),
                (ms(32_000), ServerOutput::Terminated),
            ]
        );
    }

    #[test]
    fn reliable_ack_to_non_2xx_terminates_at_once() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), true);
        transaction.send_final(t0, 486, busy());
        drain(&mut transaction);
        assert!(!transaction.handle_ack(t0 + ms(20)));
        assert_eq!(drain(&mut transaction), [ServerOutput::Terminated]);
        assert_eq!(transaction.poll_timeout(), None);
    }

    #[test]
    fn ok_is_retransmitted_until_ack_then_stops() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), false);
        transaction.send_final(t0, 200, ok());
        assert_eq!(transaction.state(), InviteServerState::Accepted);
        let (outputs, now) = drive(&mut transaction, t0, t0, t0 + ms(9_000));
        // T1, 2·T1, 4·T1, then capped at T2.
        assert_eq!(
            times_of(&outputs, &ok()),
            [0, 500, 1_500, 3_500, 7_500].map(ms)
        );
        assert!(transaction.handle_ack(now + ms(1_000)));
        let (outputs, end) = drive_to_end(&mut transaction, t0, now + ms(1_000));
        // No more 2xx, no TimedOut: Timer L simply ends Accepted 64·T1 after the 2xx.
        assert_eq!(outputs, [(ms(32_000), ServerOutput::Terminated)]);
        assert_eq!(end - t0, ms(32_000));
    }

    #[test]
    fn ok_never_acked_times_out_at_64_t1() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), false);
        transaction.send_provisional(t0, trying());
        transaction.send_final(t0 + ms(1_000), 200, ok());
        let (outputs, end) = drive_to_end(&mut transaction, t0, t0 + ms(1_000));
        let expected: Vec<Duration> = capped_schedule(500, 4_000, 32_000)
            .into_iter()
            .map(|at| at + ms(1_000))
            .collect();
        assert_eq!(times_of(&outputs, &ok()), expected);
        assert_eq!(
            outputs[outputs.len() - 2..],
            [
                (ms(33_000), ServerOutput::TimedOut),
                (ms(33_000), ServerOutput::Terminated)
            ]
        );
        assert_eq!(end - t0, ms(33_000));
    }

    #[test]
    fn custom_timers_set_2xx_retransmission_and_timer_l() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &custom(), false);
        transaction.send_final(t0, 200, ok());
        let (outputs, end) = drive_to_end(&mut transaction, t0, t0);
        assert_eq!(times_of(&outputs, &ok()), capped_schedule(100, 400, 6_400));
        assert_eq!(end - t0, ms(6_400));
        assert!(outputs.contains(&(ms(6_400), ServerOutput::TimedOut)));
    }

    #[test]
    fn reliable_ok_is_not_retransmitted_and_times_out_without_ack() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), true);
        transaction.send_final(t0, 200, ok());
        let (outputs, _) = drive_to_end(&mut transaction, t0, t0);
        assert_eq!(
            outputs,
            [
                (ms(0), ServerOutput::Transmit(ok())),
                (ms(32_000), ServerOutput::TimedOut),
                (ms(32_000), ServerOutput::Terminated),
            ]
        );
    }

    #[test]
    fn retransmitted_invite_in_accepted_resends_ok_once() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), true);
        transaction.send_final(t0, 200, ok());
        drain(&mut transaction);
        transaction.handle_retransmission(t0 + ms(300));
        assert_eq!(drain(&mut transaction), [ServerOutput::Transmit(ok())]);
        assert_eq!(transaction.state(), InviteServerState::Accepted);
    }

    #[test]
    fn every_ack_in_accepted_goes_to_tu_but_acks_in_completed_do_not() {
        let t0 = testkit::t0();
        let mut accepted = InviteServer::new(t0, &Timers::default(), false);
        accepted.send_final(t0, 200, ok());
        assert!(accepted.handle_ack(t0 + ms(10)));
        assert!(accepted.handle_ack(t0 + ms(20)));
        let mut completed = InviteServer::new(t0, &Timers::default(), false);
        completed.send_final(t0, 404, busy());
        assert!(!completed.handle_ack(t0 + ms(10)));
        let mut proceeding = InviteServer::new(t0, &Timers::default(), false);
        assert!(!proceeding.handle_ack(t0 + ms(10)));
        assert_eq!(proceeding.state(), InviteServerState::Proceeding);
    }

    #[test]
    fn only_the_first_final_response_is_sent() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), false);
        transaction.send_final(t0, 486, busy());
        transaction.send_final(t0 + ms(1), 200, ok());
        transaction.send_provisional(t0 + ms(2), ringing());
        assert_eq!(drain(&mut transaction), [ServerOutput::Transmit(busy())]);
        assert_eq!(transaction.state(), InviteServerState::Completed);
    }

    #[test]
    fn final_with_1xx_status_acts_as_provisional_and_bad_status_is_ignored() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), false);
        transaction.send_final(t0, 180, ringing());
        transaction.send_final(t0, 700, busy());
        assert_eq!(drain(&mut transaction), [ServerOutput::Transmit(ringing())]);
        assert_eq!(transaction.state(), InviteServerState::Proceeding);
    }

    #[test]
    fn input_after_termination_is_ignored() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), false);
        transaction.send_final(t0, 486, busy());
        let (_, now) = drive_to_end(&mut transaction, t0, t0);
        assert!(transaction.is_terminated());
        assert!(!transaction.handle_ack(now));
        transaction.handle_retransmission(now);
        transaction.send_final(now, 200, ok());
        transaction.handle_timeout(now + ms(60_000));
        assert_eq!(drain(&mut transaction), []);
        assert_eq!(transaction.poll_timeout(), None);
    }

    #[test]
    fn transport_error_reports_and_terminates() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), false);
        transaction.send_final(t0, 486, busy());
        drain(&mut transaction);
        transaction.handle_transport_error(t0 + ms(1));
        assert_eq!(
            drain(&mut transaction),
            [ServerOutput::TransportFailed, ServerOutput::Terminated]
        );
        assert_eq!(transaction.poll_timeout(), None);
    }

    #[test]
    fn transport_error_in_accepted_reports_but_keeps_absorbing_until_timer_l() {
        let t0 = testkit::t0();
        let mut transaction = InviteServer::new(t0, &Timers::default(), true);
        transaction.send_final(t0, 200, ok());
        drain(&mut transaction);
        transaction.handle_transport_error(t0 + ms(1));
        assert_eq!(drain(&mut transaction), [ServerOutput::TransportFailed]);
        assert_eq!(transaction.state(), InviteServerState::Accepted);
        assert!(transaction.handle_ack(t0 + ms(2)));
        assert_eq!(transaction.poll_timeout(), Some(t0 + ms(32_000)));
    }
}
