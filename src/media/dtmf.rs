//! Keys the caller presses, sans-IO: RFC 4733 telephone-events from the RTP stream and SIP INFO
//! bodies (`application/dtmf-relay`, `application/dtmf`).
//!
//! An RFC 4733 event is identified by its RTP timestamp (the event's start); its packets repeat
//! with growing durations and end with the E bit, usually sent three times. [`DtmfReceiver`]
//! reports each event's digit exactly once: at its first end packet, or — when every end packet
//! was lost — when the next event starts or [`END_GUESS`] after the event's last packet.
//! Volume and duration are ignored; unknown events (flash, tones) and short payloads are dropped.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::rtp::telephone_event;

/// How long after an event's last packet its digit is reported when no end packet came.
pub const END_GUESS: Duration = Duration::from_millis(500);

/// Events remembered after they were reported (to ignore their late or repeated packets).
const REMEMBERED: usize = 8;

/// The key of an RFC 4733 event code (0–9, `*` = 10, `#` = 11, A–D = 12–15).
pub fn event_digit(code: u8) -> Option<char> {
    match code {
        0..=9 => Some(char::from(b'0' + code)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + code - 12)),
        _ => None,
    }
}

/// A key from text: `0`–`9`, `*`, `#`, `A`–`D` (any case), or an event code `0`–`15`.
fn key_of(text: &str) -> Option<char> {
    let text = text.trim();
    let mut chars = text.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        let c = c.to_ascii_uppercase();
        if c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D') {
            return Some(c);
        }
        return None;
    }
    text.parse::<u8>().ok().and_then(event_digit)
}

/// The key a SIP INFO body signals: `application/dtmf-relay` (`Signal=5`, `Duration=160`
/// lines) or `application/dtmf` (the key alone, or its event code). `None` for other content
/// types and bodies without a key.
pub fn info_digit(content_type: &str, body: &[u8]) -> Option<char> {
    let kind = content_type.split(';').next()?.trim().to_ascii_lowercase();
    let text = String::from_utf8_lossy(body);
    match kind.as_str() {
        "application/dtmf-relay" => text.lines().find_map(|line| {
            let (name, value) = line.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("signal")
                .then(|| key_of(value))
                .flatten()
        }),
        "application/dtmf" => key_of(&text),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
struct Event {
    timestamp: u32,
    digit: char,
    last_packet: Instant,
}

/// RFC 4733 digit detection for one stream.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    current: Option<Event>,
    /// Start timestamps of events already reported.
    reported: VecDeque<u32>,
}

impl DtmfReceiver {
    /// A receiver with no event in progress.
    pub fn new() -> DtmfReceiver {
        DtmfReceiver::default()
    }

    fn report(&mut self, event: Event, digits: &mut Vec<char>) {
        if self.reported.len() == REMEMBERED {
            self.reported.pop_front();
        }
        self.reported.push_back(event.timestamp);
        digits.push(event.digit);
    }

    /// One telephone-event packet (RTP timestamp and payload) that arrived at `now`; returns
    /// the digits it completes (at most two: a previous event whose end was lost, and this one).
    pub fn handle_packet(&mut self, now: Instant, timestamp: u32, payload: &[u8]) -> Vec<char> {
        let mut digits = Vec::new();
        let Some(packet) = telephone_event(payload) else {
            return digits;
        };
        let Some(digit) = event_digit(packet.event) else {
            return digits;
        };
        if self.reported.contains(&timestamp) {
            return digits; // a repeated end packet, or a late packet of a finished event
        }
        match self.current {
            Some(current) if current.timestamp == timestamp => {}
            Some(current) => {
                // Serial-number comparison (RFC 1982): an older event's stray packet is ignored.
                if (timestamp.wrapping_sub(current.timestamp) as i32) < 0 {
                    return digits;
                }
                // A new event began while the last one never ended: its end packets were lost.
                self.current = None;
                self.report(current, &mut digits);
            }
            None => {}
        }
        let event = Event {
            timestamp,
            digit,
            last_packet: now,
        };
        if packet.end {
            self.current = None;
            self.report(event, &mut digits);
        } else {
            self.current = Some(event);
        }
        digits
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run (an event without its end).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.current.map(|event| event.last_packet + END_GUESS)
    }

    /// Reports an event whose end never came, [`END_GUESS`] after its last packet.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<char> {
        let event = self.current?;
        if now < event.last_packet + END_GUESS {
            return None;
        }
        self.current = None;
        let mut digits = Vec::new();
        self.report(event, &mut digits);
        digits.pop()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testkit::{ms, t0};

    fn payload(event: u8, end: bool, duration: u16) -> Vec<u8> {
        let [high, low] = duration.to_be_bytes();
        vec![event, if end { 0x8a } else { 0x0a }, high, low]
    }

    /// The packets of one event: start (marker in real life), updates, three end packets.
    fn event(event: u8) -> Vec<Vec<u8>> {
        let mut packets: Vec<Vec<u8>> = (1..=4).map(|i| payload(event, false, i * 160)).collect();
        packets.extend((0..3).map(|_| payload(event, true, 800)));
        packets
    }

    #[test]
    fn one_digit_per_event_despite_three_end_packets() {
        let mut rx = DtmfReceiver::new();
        let now = t0();
        let mut digits = Vec::new();
        for (ts, code) in [(1_000u32, 5u8), (3_000, 11), (5_000, 10), (7_000, 15)] {
            for packet in event(code) {
                digits.extend(rx.handle_packet(now, ts, &packet));
            }
        }
        assert_eq!(digits, vec!['5', '#', '*', 'D']);
        assert_eq!(rx.poll_timeout(), None);
    }

    #[test]
    fn lost_end_packets_are_reported_at_the_next_event_or_after_a_pause() {
        let mut rx = DtmfReceiver::new();
        let now = t0();
        for packet in event(1).into_iter().take(4) {
            assert!(rx.handle_packet(now, 100, &packet).is_empty());
        }
        // The next event starts: digit 1 is reported then, once.
        assert_eq!(
            rx.handle_packet(now, 2_000, &payload(2, false, 160)),
            vec!['1']
        );
        assert_eq!(rx.poll_timeout(), Some(now + END_GUESS));
        assert_eq!(rx.handle_timeout(now + ms(499)), None);
        assert_eq!(rx.handle_timeout(now + END_GUESS), Some('2'));
        // Its late end packet changes nothing.
        assert!(rx
            .handle_packet(now + ms(600), 2_000, &payload(2, true, 800))
            .is_empty());
        assert_eq!(rx.handle_timeout(now + ms(2_000)), None);
    }

    #[test]
    fn a_lost_start_duplicates_reordering_and_wrap_are_handled() {
        let mut rx = DtmfReceiver::new();
        let now = t0();
        // Only an end packet arrives: still one digit.
        assert_eq!(
            rx.handle_packet(now, u32::MAX - 100, &payload(7, true, 800)),
            vec!['7']
        );
        // A duplicate of an update of the event, late: ignored.
        assert!(rx
            .handle_packet(now, u32::MAX - 100, &payload(7, false, 320))
            .is_empty());
        // The next event's timestamp wrapped past zero.
        assert!(rx
            .handle_packet(now, 60, &payload(8, false, 160))
            .is_empty());
        // A stray packet of an older, unknown event: ignored (no false digit).
        assert!(rx
            .handle_packet(now, u32::MAX - 5_000, &payload(3, false, 160))
            .is_empty());
        assert_eq!(rx.handle_packet(now, 60, &payload(8, true, 800)), vec!['8']);
    }

    #[test]
    fn short_payloads_and_other_events_are_ignored() {
        let mut rx = DtmfReceiver::new();
        let now = t0();
        assert!(rx.handle_packet(now, 1, &[5, 0x80]).is_empty());
        assert!(
            rx.handle_packet(now, 2, &payload(16, true, 800)).is_empty(),
            "flash"
        );
        assert!(rx.handle_packet(now, 3, &payload(70, true, 800)).is_empty());
        assert_eq!(rx.poll_timeout(), None);
    }

    #[test]
    fn info_bodies() {
        let relay = "application/dtmf-relay";
        assert_eq!(
            info_digit(relay, b"Signal=5\r\nDuration=160\r\n"),
            Some('5')
        );
        assert_eq!(
            info_digit("Application/DTMF-Relay", b"signal= #\nduration=100"),
            Some('#')
        );
        assert_eq!(
            info_digit(relay, b"Duration=160\r\nSignal=*\r\n"),
            Some('*')
        );
        assert_eq!(info_digit(relay, b"Signal=11\r\n"), Some('#'));
        assert_eq!(info_digit(relay, b"Signal=d\r\n"), Some('D'));
        assert_eq!(info_digit(relay, b"Duration=160\r\n"), None);
        assert_eq!(info_digit(relay, b"Signal=55\r\n"), None);
        assert_eq!(info_digit("application/dtmf", b"7"), Some('7'));
        assert_eq!(info_digit("application/dtmf", b" 10\r\n"), Some('*'));
        assert_eq!(info_digit("application/dtmf", b"x"), None);
        assert_eq!(info_digit("application/media_control+xml", b"<x/>"), None);
        assert_eq!(info_digit("", b"5"), None);
    }

    proptest! {
        #[test]
        fn nothing_on_the_wire_panics(
            packets in proptest::collection::vec(
                (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..8)), 0..40),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut rx = DtmfReceiver::new();
            let now = t0();
            let mut digits = 0;
            for (ts, payload) in &packets {
                digits += rx.handle_packet(now, *ts, payload).len();
            }
            digits += usize::from(rx.handle_timeout(now + END_GUESS).is_some());
            prop_assert!(digits <= packets.len());
            let _ = info_digit("application/dtmf-relay", &body);
            let _ = info_digit("application/dtmf", &body);
        }
    }
}
