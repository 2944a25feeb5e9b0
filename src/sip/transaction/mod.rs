//! RFC 3261 §17 transactions (with RFC 6026's Accepted state), as sans-IO state machines.
//!
//! Four machines, one per RFC figure; each takes `now` with every input, queues what to do in
//! `poll_output()`, and names its next wake-up in `poll_timeout()`. They never parse: they carry
//! the bytes to transmit ([`bytes::Bytes`]) and the status codes the endpoint read, and the client
//! machines pass the endpoint's own parsed response type `R` through to the TU untouched.
//!
//! ```text
//! InviteClient (§17.1.1, figure 5 + RFC 6026)       NonInviteClient (§17.1.2, figure 6)
//!   Calling --1xx--> Proceeding                       Trying --1xx--> Proceeding
//!   Calling|Proceeding --2xx--> Accepted               Trying|Proceeding --final--> Completed
//!   Calling|Proceeding --300-699/ACK--> Completed      Completed --Timer K--> Terminated
//!   Calling --Timer B--> TimedOut, Terminated          Trying|Proceeding --Timer F--> TimedOut
//!   Completed --Timer D--> Terminated                  Timer E resends (T1 doubling to T2;
//!   Accepted --Timer M--> Terminated                     T2 once Proceeding)
//!   Timer A resends the INVITE while Calling (UDP)
//!
//! InviteServer (§17.2.1, figure 7 + RFC 6026)       NonInviteServer (§17.2.2, figure 8)
//!   Proceeding --1xx--> Proceeding                    Trying --1xx--> Proceeding
//!   Proceeding --2xx--> Accepted                      Trying|Proceeding --final--> Completed
//!   Proceeding --300-699--> Completed                 Completed --Timer J--> Terminated
//!   Completed --ACK--> Confirmed --Timer I--> Terminated
//!   Completed --Timer H--> TimedOut, Terminated
//!   Accepted --Timer L--> Terminated (TimedOut first if no ACK came)
//!   Timer G resends the non-2xx final; Retransmit2xx resends the 2xx until the ACK (UDP)
//! ```
//!
//! Over a reliable transport (TCP, TLS) nothing is retransmitted, and Timers D, I, J and K are
//! zero: the machine goes straight to Terminated.
//!
//! How the endpoint uses them: it keeps two tables, client and server, from [`TransactionKey`] to
//! a machine. A received response is keyed with [`TransactionKey::client`] (top Via branch + CSeq
//! method) and handed to its client machine. A received request is keyed with
//! [`TransactionKey::server`] (branch + sent-by + method, ACK folded into INVITE): a hit is a
//! retransmission (`handle_retransmission`) or the ACK (`handle_ack`); a miss creates a new server
//! machine and passes the request to the TU — except an ACK, which never creates one. The ACK for
//! a 2xx carries a new branch (RFC 3261 §17.1.1.3), so it misses the table: the endpoint finds
//! the INVITE server transaction through the dialog and calls `handle_ack` on it to stop the 2xx
//! retransmissions. A CANCEL gets its own [`NonInviteServer`]; its INVITE is found with
//! [`TransactionKey::cancelled_invite`]. After every input (message, TU action, timeout) the
//! endpoint drains `poll_output()` — `Transmit` goes to the transport, `Response`, `TimedOut` and
//! `TransportFailed` to the TU, `Terminated` removes the entry — then sleeps until the earliest
//! `poll_timeout()` and calls `handle_timeout(now)`.
//!
//! [`Timers`] must have a non-zero T1 (config validation's job): the retransmission intervals are
//! multiples of it.

use std::time::Duration;

use bytes::Bytes;

pub mod invite_client;
pub mod invite_server;
pub mod key;
pub mod non_invite_client;
pub mod non_invite_server;
pub mod timer;

pub use invite_client::{InviteClient, InviteClientState};
pub use invite_server::{InviteServer, InviteServerState};
pub use key::TransactionKey;
pub use non_invite_client::{NonInviteClient, NonInviteClientState};
pub use non_invite_server::{NonInviteServer, NonInviteServerState};
pub use timer::{Timer, TimerTable};

/// RFC 3261 timer base values (§17.1.1.1, table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate (default 500 ms).
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses (default 4 s).
    pub t2: Duration,
    /// Maximum duration a message remains in the network (default 5 s).
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_millis(4_000),
            t4: Duration::from_millis(5_000),
        }
    }
}

/// What a client transaction asks its owner to do, or tells its TU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput<R> {
    /// Send these bytes to the peer: the request, a retransmission, or the ACK for a non-2xx.
    Transmit(Bytes),
    /// Pass this response to the TU.
    Response(R),
    /// No final response in time (Timer B or F): the TU acts as on a 408 (RFC 3261 §8.1.3.1).
    TimedOut,
    /// The transport reported an error (RFC 3261 §17.1.4): the TU acts as on a 503.
    TransportFailed,
    /// The transaction ended; the owner removes it. Always the last output.
    Terminated,
}

/// What a server transaction asks its owner to do, or tells its TU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOutput {
    /// Send these bytes to the peer: a response or a retransmission of one.
    Transmit(Bytes),
    /// No ACK came: Timer H after a non-2xx final, or Timer L after a 2xx (the TU then sends BYE,
    /// RFC 3261 §13.3.1.4).
    TimedOut,
    /// The transport reported an error (RFC 3261 §17.2.4).
    TransportFailed,
    /// The transaction ended; the owner removes it. Always the last output.
    Terminated,
}

/// The status classes the machines act on; anything outside 100–699 is not a SIP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusClass {
    Provisional,
    Success,
    Failure,
}

impl StatusClass {
    fn of(status: u16) -> Option<Self> {
        match status {
            100..=199 => Some(StatusClass::Provisional),
            200..=299 => Some(StatusClass::Success),
            300..=699 => Some(StatusClass::Failure),
            _ => None,
        }
    }
}

/// Zero over reliable transports, `unreliable` otherwise (Timers D, I, J, K).
fn unless_reliable(reliable: bool, unreliable: Duration) -> Duration {
    if reliable {
        Duration::ZERO
    } else {
        unreliable
    }
}

/// Virtual-time driving shared by the machines' tests.
#[cfg(test)]
mod testing {
    use std::time::{Duration, Instant};

    /// The sans-IO surface every transaction machine offers.
    pub(crate) trait Machine {
        type Output;
        fn poll_output(&mut self) -> Option<Self::Output>;
        fn poll_timeout(&self) -> Option<Instant>;
        fn handle_timeout(&mut self, now: Instant);
    }

    /// Drains outputs, then jumps `now` to `poll_timeout()` and fires it, until there is no
    /// deadline or the next one is after `until`. Returns each output stamped with its time since
    /// `origin`, and where `now` stopped.
    pub(crate) fn drive<M: Machine>(
        machine: &mut M,
        origin: Instant,
        mut now: Instant,
        until: Instant,
    ) -> (Vec<(Duration, M::Output)>, Instant) {
        let mut outputs = Vec::new();
        for _ in 0..10_000 {
            while let Some(output) = machine.poll_output() {
                outputs.push((now - origin, output));
            }
            match machine.poll_timeout() {
                Some(deadline) if deadline <= until => {
                    assert!(deadline >= now, "deadline in the past");
                    now = deadline;
                    machine.handle_timeout(now);
                }
                _ => return (outputs, now),
            }
        }
        panic!("machine did not settle within 10 000 wake-ups");
    }

    /// Drives until nothing is left to do.
    pub(crate) fn drive_to_end<M: Machine>(
        machine: &mut M,
        origin: Instant,
        now: Instant,
    ) -> (Vec<(Duration, M::Output)>, Instant) {
        drive(machine, origin, now, origin + Duration::from_secs(86_400))
    }
}
