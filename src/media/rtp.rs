//! RTP (RFC 3550 §5) for one G.711 call: parse inbound packets, build the outbound stream, latch
//! onto the caller's real source address (symmetric RTP), read RFC 4733 telephone-events.
//!
//! - [`parse_rtp`]: datagram → [`MediaPacket`] or [`RtpError`]; never panics. The layout (version,
//!   CSRC list, header extension, padding) is bounds-checked here before the `rtp` crate decodes it,
//!   because the crate's RFC 8285 extension walk can read past the end of a hostile packet.
//! - [`OutboundStream`]: payload in → serialised packet out, with the SSRC, continuous sequence
//!   numbers and a media clock that advances by the samples of each frame (or of a pause).
//! - [`SymmetricLatch`]: a comedia-style latch (RFC 4961 symmetric RTP). The remote starts as the
//!   SDP `c=`/`m=` address, latches to the source of the first valid packet, and only moves when
//!   [`RELATCH_AFTER`] consecutive in-sequence packets come from one new source:
//!
//! ```text
//!   Signalled ──valid packet──▶ Latched(src) ──N in-sequence packets from src'──▶ Latched(src')
//!        ▲                          │
//!        └──── set_signalled ───────┘  (re-INVITE moved the media)
//! ```
//! - [`telephone_event`]: RFC 4733 §2.3 payload → [`TelephoneEvent`] (receive only).

use std::net::SocketAddr;

use ::rtp::packet::Packet;
use bytes::Bytes;
use webrtc_util::marshal::Unmarshal;

use crate::media::{MediaPacket, RtpTimestamp, SeqNo, Ssrc};

/// Fixed RTP header length (RFC 3550 §5.1).
const FIXED_HEADER_LEN: usize = 12;
/// RFC 8285 §4.2 one-byte header extension profile.
const PROFILE_ONE_BYTE: u16 = 0xBEDE;
/// RFC 8285 §4.3 two-byte header extension profile (low 4 bits are "appbits").
const PROFILE_TWO_BYTE: u16 = 0x1000;
/// Consecutive in-sequence packets from a new source before the latch moves there; the same
/// probation Asterisk's `strictrtp` learning uses against RTP-bleed style injection.
pub const RELATCH_AFTER: u32 = 4;

/// Why a datagram is not an RTP packet we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than the fixed 12-byte header.
    #[error("datagram of {len} bytes is shorter than an RTP header")]
    TooShort {
        /// Datagram length.
        len: usize,
    },
    /// The version field is not 2.
    #[error("RTP version {version}, expected 2")]
    BadVersion {
        /// The version bits found.
        version: u8,
    },
    /// The CSRC list or header extension runs past the end of the datagram.
    #[error("RTP header of {needed} bytes does not fit in {len}")]
    TruncatedHeader {
        /// Bytes the header claims.
        needed: usize,
        /// Datagram length.
        len: usize,
    },
    /// The padding count is 0 or larger than the payload (RFC 3550 §5.1, P bit).
    #[error("RTP padding count {padding} invalid for {available} payload bytes")]
    BadPadding {
        /// The last octet of the packet.
        padding: u8,
        /// Bytes after the header.
        available: usize,
    },
    /// The `rtp` crate refused the packet after our checks.
    #[error("malformed RTP packet: {reason}")]
    Malformed {
        /// The crate's error text.
        reason: String,
    },
}

/// Parse one RTP datagram.
///
/// Accepts version 2 with padding, CSRCs and header extensions (which are skipped); the payload
/// is returned without padding. Errors instead of panicking on any input.
pub fn parse_rtp(datagram: &[u8]) -> Result<MediaPacket, RtpError> {
    check_layout(datagram)?;
    let mut buffer = datagram;
    let packet = Packet::unmarshal(&mut buffer).map_err(|error| RtpError::Malformed {
        reason: error.to_string(),
    })?;
    Ok(MediaPacket {
        ssrc: Ssrc(packet.header.ssrc),
        seq: SeqNo(packet.header.sequence_number),
        timestamp: RtpTimestamp(packet.header.timestamp),
        marker: packet.header.marker,
        payload_type: packet.header.payload_type,
        payload: packet.payload,
    })
}

/// Bounds-check everything the `rtp` crate will read, so that decoding it cannot panic.
fn check_layout(datagram: &[u8]) -> Result<(), RtpError> {
    let len = datagram.len();
    let (Some(&first), true) = (datagram.first(), len >= FIXED_HEADER_LEN) else {
        return Err(RtpError::TooShort { len });
    };
    let version = first >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion { version });
    }
    let has_padding = first & 0x20 != 0;
    let has_extension = first & 0x10 != 0;
    let csrc_count = usize::from(first & 0x0f);
    let mut header_len = FIXED_HEADER_LEN + 4 * csrc_count;
    if header_len > len {
        return Err(RtpError::TruncatedHeader {
            needed: header_len,
            len,
        });
    }
    if has_extension {
        let truncated = |needed| RtpError::TruncatedHeader { needed, len };
        let word = |at: usize| {
            datagram
                .get(at..at + 2)
                .and_then(|bytes| <[u8; 2]>::try_from(bytes).ok())
                .map(u16::from_be_bytes)
        };
        let profile = word(header_len).ok_or(truncated(header_len + 4))?;
        let words = word(header_len + 2).ok_or(truncated(header_len + 4))?;
        let start = header_len + 4;
        let end = start + 4 * usize::from(words);
        let block = datagram.get(start..end).ok_or(truncated(end))?;
        if profile == PROFILE_ONE_BYTE || profile == PROFILE_TWO_BYTE {
            check_extension_elements(block, profile == PROFILE_ONE_BYTE)
                .ok_or(truncated(end + 1))?;
        }
        header_len = end;
    }
    if has_padding {
        let available = len - header_len;
        let padding = datagram.last().copied().unwrap_or(0);
        if padding == 0 || usize::from(padding) > available {
            return Err(RtpError::BadPadding { padding, available });
        }
    }
    Ok(())
}

/// Walk RFC 8285 elements the way the crate does; `None` when one would run past the block.
fn check_extension_elements(block: &[u8], one_byte: bool) -> Option<()> {
    let mut at = 0;
    while at < block.len() {
        let head = *block.get(at)?;
        at += 1;
        if head == 0 {
            continue; // padding octet
        }
        let len = if one_byte {
            if head >> 4 == 0x0f {
                return Some(()); // RFC 8285 §4.2: ID 15 stops processing
            }
            usize::from(head & 0x0f) + 1
        } else {
            let len = usize::from(*block.get(at)?);
            at += 1;
            len
        };
        at += len;
        if at > block.len() {
            return None;
        }
    }
    Some(())
}

/// What we have sent on an [`OutboundStream`], for RTCP sender reports and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderStats {
    /// Packets sent (RTCP carries it modulo 2^32).
    pub packets: u64,
    /// Payload octets sent, headers and padding excluded (RFC 3550 §6.4.1).
    pub octets: u64,
    /// Timestamp of the last packet sent (the initial timestamp before any).
    pub last_rtp_timestamp: RtpTimestamp,
}

/// Our outbound RTP stream: SSRC, sequence numbers, media clock and marker bit.
#[derive(Debug, Clone)]
pub struct OutboundStream {
    ssrc: Ssrc,
    payload_type: u8,
    clock_rate: u32,
    seq: u16,
    timestamp: u32,
    talkspurt_start: bool,
    stats: SenderStats,
}

impl OutboundStream {
    /// A stream with random initial sequence number and timestamp (RFC 3550 §5.1).
    ///
    /// `ssrc` should be random per call; `clock_rate` is 8000 for G.711 and telephone-event.
    pub fn new(ssrc: Ssrc, payload_type: u8, clock_rate: u32) -> Self {
        Self::with_initial(
            ssrc,
            payload_type,
            clock_rate,
            SeqNo(rand::random()),
            RtpTimestamp(rand::random()),
        )
    }

    /// A stream starting at the given sequence number and timestamp (for tests and replays).
    pub fn with_initial(
        ssrc: Ssrc,
        payload_type: u8,
        clock_rate: u32,
        seq: SeqNo,
        timestamp: RtpTimestamp,
    ) -> Self {
        Self {
            ssrc,
            payload_type,
            clock_rate,
            seq: seq.0,
            timestamp: timestamp.0,
            talkspurt_start: true,
            stats: SenderStats {
                packets: 0,
                octets: 0,
                last_rtp_timestamp: timestamp,
            },
        }
    }

    /// Serialise one frame: the next sequence number, the current media timestamp, then advance
    /// the timestamp by `samples` (160 for 20 ms of G.711).
    ///
    /// The marker is also set on the first packet and on the first after [`skip`](Self::skip):
    /// both start a talkspurt (RFC 3551 §4.1).
    pub fn packetize(&mut self, payload: &[u8], marker: bool, samples: u32) -> Bytes {
        let mut packet = Vec::with_capacity(FIXED_HEADER_LEN + payload.len());
        self.packetize_into(payload, marker, samples, &mut packet);
        Bytes::from(packet)
    }

    /// [`packetize`](Self::packetize) into `packet` (cleared first), so the sender can reuse one
    /// buffer for every packet of a call instead of allocating per packet.
    pub fn packetize_into(
        &mut self,
        payload: &[u8],
        marker: bool,
        samples: u32,
        packet: &mut Vec<u8>,
    ) {
        let marker = marker || self.talkspurt_start;
        packet.clear();
        // RFC 3550 §5.1: V=2, no padding, no extension, no CSRC; M and PT; seq; timestamp; SSRC.
        packet.push(0x80);
        packet.push(u8::from(marker) << 7 | (self.payload_type & 0x7f));
        packet.extend_from_slice(&self.seq.to_be_bytes());
        packet.extend_from_slice(&self.timestamp.to_be_bytes());
        packet.extend_from_slice(&self.ssrc.0.to_be_bytes());
        packet.extend_from_slice(payload);
        self.stats.packets += 1;
        self.stats.octets += payload.len() as u64;
        self.stats.last_rtp_timestamp = RtpTimestamp(self.timestamp);
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(samples);
        self.talkspurt_start = false;
    }

    /// Advance the media clock by `samples` without sending (silence, a paused agent).
    ///
    /// The sequence number does not move (RFC 3550 §5.1: it counts packets), and the next packet
    /// carries the marker as the start of a new talkspurt.
    pub fn skip(&mut self, samples: u32) {
        self.timestamp = self.timestamp.wrapping_add(samples);
        self.talkspurt_start = true;
    }

    /// Change the payload type (codec re-negotiated, or a telephone-event burst).
    pub fn set_payload_type(&mut self, payload_type: u8) {
        self.payload_type = payload_type;
    }

    /// Counters of what was sent so far.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// The timestamp the next packet will carry: the media clock "now", for an RTCP SR.
    pub fn next_timestamp(&self) -> RtpTimestamp {
        RtpTimestamp(self.timestamp)
    }

    /// Our SSRC.
    pub fn ssrc(&self) -> Ssrc {
        self.ssrc
    }

    /// The media clock rate in Hz.
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }
}

/// A source seen sending in-sequence packets, not yet trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    from: SocketAddr,
    ssrc: Ssrc,
    last_seq: SeqNo,
    count: u32,
}

/// Symmetric RTP / comedia latch: where to send, learnt from where the caller's RTP comes from.
#[derive(Debug, Clone)]
pub struct SymmetricLatch {
    signalled: Option<SocketAddr>,
    latched: Option<(SocketAddr, Ssrc)>,
    payload_types: Vec<u8>,
    candidate: Option<Candidate>,
    relatch_after: u32,
}

impl SymmetricLatch {
    /// A latch that sends to the SDP address until packets arrive, accepting only the negotiated
    /// `payload_types` (the codec and telephone-event).
    pub fn new(signalled: Option<SocketAddr>, payload_types: &[u8]) -> Self {
        Self {
            signalled,
            latched: None,
            payload_types: payload_types.to_vec(),
            candidate: None,
            relatch_after: RELATCH_AFTER,
        }
    }

    /// Require `packets` consecutive in-sequence packets before moving to a new source (min 1).
    pub fn with_relatch_after(mut self, packets: u32) -> Self {
        self.relatch_after = packets.max(1);
        self
    }

    /// Judge one received packet from `from`; returns whether to accept it into the jitter buffer.
    ///
    /// The first packet with a negotiated payload type latches; later ones must come from the
    /// latched source, unless a new source has sent [`RELATCH_AFTER`] consecutive in-sequence
    /// packets, which moves the latch (the caller's NAT rebinding, or a media relay switch).
    pub fn handle_packet(&mut self, from: SocketAddr, packet: &MediaPacket) -> bool {
        if !self.payload_types.contains(&packet.payload_type) {
            return false;
        }
        let Some((latched, _)) = self.latched else {
            self.latch(from, packet.ssrc);
            return true;
        };
        if from == latched {
            // Same source, maybe a new SSRC after a transfer on the far side: follow it.
            self.latch(from, packet.ssrc);
            return true;
        }
        let count = match self.candidate {
            Some(candidate)
                if candidate.from == from
                    && candidate.ssrc == packet.ssrc
                    && packet.seq.0 == candidate.last_seq.0.wrapping_add(1) =>
            {
                candidate.count + 1
            }
            _ => 1,
        };
        if count >= self.relatch_after {
            self.latch(from, packet.ssrc);
            return true;
        }
        self.candidate = Some(Candidate {
            from,
            ssrc: packet.ssrc,
            last_seq: packet.seq,
            count,
        });
        false
    }

    /// Where to send RTP: the latched source, else the SDP address (`None` while on hold).
    pub fn remote(&self) -> Option<SocketAddr> {
        self.latched.map(|(from, _)| from).or(self.signalled)
    }

    /// Whether RTP has been received and the latch is set.
    pub fn is_latched(&self) -> bool {
        self.latched.is_some()
    }

    /// New SDP from a re-INVITE: send to `signalled` and learn the source afresh.
    pub fn set_signalled(&mut self, signalled: Option<SocketAddr>, payload_types: &[u8]) {
        self.signalled = signalled;
        self.payload_types = payload_types.to_vec();
        self.latched = None;
        self.candidate = None;
    }

    fn latch(&mut self, from: SocketAddr, ssrc: Ssrc) {
        self.latched = Some((from, ssrc));
        self.candidate = None;
    }
}

/// One RFC 4733 §2.3 named-event payload (DTMF digit 0–9 = 0–9, `*` = 10, `#` = 11, A–D = 12–15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code.
    pub event: u8,
    /// E bit: this is (a retransmission of) the final packet of the event.
    pub end: bool,
    /// Power level in −dBm0, 0–63.
    pub volume: u8,
    /// Duration so far in timestamp units.
    pub duration: u16,
}

/// Read a telephone-event payload; `None` when shorter than the 4-byte event block.
pub fn telephone_event(payload: &[u8]) -> Option<TelephoneEvent> {
    let &[event, flags, high, low, ..] = payload else {
        return None;
    };
    Some(TelephoneEvent {
        event,
        end: flags & 0x80 != 0,
        // RFC 4733 §2.3: the R bit (0x40) is reserved and ignored by receivers.
        volume: flags & 0x3f,
        duration: u16::from_be_bytes([high, low]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: Ssrc = Ssrc(0x1234_5678);

    fn stream() -> OutboundStream {
        OutboundStream::with_initial(SSRC, 0, 8000, SeqNo(65_534), RtpTimestamp(u32::MAX - 159))
    }

    fn packet(seq: u16, ssrc: u32, payload_type: u8) -> MediaPacket {
        MediaPacket {
            ssrc: Ssrc(ssrc),
            seq: SeqNo(seq),
            timestamp: RtpTimestamp(u32::from(seq) * 160),
            marker: false,
            payload_type,
            payload: Bytes::from_static(&[0xff; 160]),
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn packetize_then_parse_round_trips_with_wrapping_counters() {
        let mut stream = stream();
        let frame = [0x7f_u8; 160];
        let first = parse_rtp(&stream.packetize(&frame, false, 160)).expect("parses");
        let second = parse_rtp(&stream.packetize(&frame, false, 160)).expect("parses");
        let third = parse_rtp(&stream.packetize(&frame, true, 160)).expect("parses");
        assert_eq!(
            (first.seq, first.timestamp, first.marker),
            (SeqNo(65_534), RtpTimestamp(u32::MAX - 159), true),
            "first packet starts a talkspurt"
        );
        assert_eq!(
            (second.seq, second.timestamp, second.marker),
            (SeqNo(65_535), RtpTimestamp(0), false)
        );
        assert_eq!(
            (third.seq, third.timestamp, third.marker),
            (SeqNo(0), RtpTimestamp(160), true)
        );
        assert_eq!((third.ssrc, third.payload_type), (SSRC, 0));
        assert_eq!(&third.payload[..], &frame[..]);
        assert_eq!(
            stream.stats(),
            SenderStats {
                packets: 3,
                octets: 480,
                last_rtp_timestamp: RtpTimestamp(160)
            }
        );
        assert_eq!(stream.next_timestamp(), RtpTimestamp(320));
    }

    #[test]
    fn skip_advances_the_clock_and_marks_the_next_talkspurt() {
        let mut stream = stream();
        stream.packetize(&[0; 160], false, 160);
        stream.skip(800);
        let next = parse_rtp(&stream.packetize(&[0; 160], false, 160)).expect("parses");
        assert_eq!(next.seq, SeqNo(65_535), "no sequence gap for a pause");
        assert_eq!(next.timestamp, RtpTimestamp(800));
        assert!(next.marker);
    }

    #[test]
    fn wire_format_matches_rfc3550_header() {
        let mut stream = OutboundStream::with_initial(
            Ssrc(0xdead_beef),
            8,
            8000,
            SeqNo(0x0102),
            RtpTimestamp(0x0a0b_0c0d),
        );
        let bytes = stream.packetize(&[1, 2, 3], false, 160);
        assert_eq!(
            &bytes[..],
            &[0x80, 0x88, 0x01, 0x02, 0x0a, 0x0b, 0x0c, 0x0d, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]
        );
        let mut reused = vec![0xaa; 40];
        stream.packetize_into(&[4], false, 160, &mut reused);
        assert_eq!(
            reused,
            [0x80, 0x08, 0x01, 0x03, 0x0a, 0x0b, 0x0c, 0xad, 0xde, 0xad, 0xbe, 0xef, 4],
            "next packet, no marker, buffer cleared first"
        );
    }

    #[test]
    fn parses_csrc_extension_and_padding() {
        let datagram = [
            0xb1, 0x00, 0x00, 0x07, // V=2 P=1 X=1 CC=1, PT 0, seq 7
            0x00, 0x00, 0x03, 0x20, // timestamp 800
            0x11, 0x22, 0x33, 0x44, // SSRC
            0x55, 0x66, 0x77, 0x88, // CSRC
            0xbe, 0xde, 0x00, 0x01, // one-byte extension, 1 word
            0x10, 0xaa, 0x00, 0x00, // id 1, len 2, padding
            0xd5, 0xd5, // payload
            0x00, 0x02, // padding, count 2
        ];
        let packet = parse_rtp(&datagram).expect("parses");
        assert_eq!(packet.ssrc, Ssrc(0x1122_3344));
        assert_eq!(
            (packet.seq, packet.timestamp),
            (SeqNo(7), RtpTimestamp(800))
        );
        assert_eq!(&packet.payload[..], &[0xd5, 0xd5]);
    }

    #[test]
    fn rejects_malformed_packets_with_errors() {
        let header = |first: u8| {
            let mut bytes = vec![first, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
            bytes.extend_from_slice(&[0xd5; 4]);
            bytes
        };
        assert_eq!(parse_rtp(&[0x80; 11]), Err(RtpError::TooShort { len: 11 }));
        assert_eq!(
            parse_rtp(&header(0x40)),
            Err(RtpError::BadVersion { version: 1 })
        );
        assert_eq!(
            parse_rtp(&header(0x8f)),
            Err(RtpError::TruncatedHeader {
                needed: 72,
                len: 16
            })
        );
        let mut zero_padding = header(0xa0);
        *zero_padding.last_mut().expect("non-empty") = 0;
        assert_eq!(
            parse_rtp(&zero_padding),
            Err(RtpError::BadPadding {
                padding: 0,
                available: 4
            })
        );
        let mut long_padding = header(0xa0);
        *long_padding.last_mut().expect("non-empty") = 5;
        assert!(matches!(
            parse_rtp(&long_padding),
            Err(RtpError::BadPadding { .. })
        ));
        // Extension header claims 0x0100 words.
        let mut long_extension = header(0x90);
        long_extension.truncate(12);
        long_extension.extend_from_slice(&[0xbe, 0xde, 0x01, 0x00, 0x10, 0x00]);
        assert!(matches!(
            parse_rtp(&long_extension),
            Err(RtpError::TruncatedHeader { .. })
        ));
    }

    #[test]
    fn extension_element_past_its_block_is_an_error_not_a_panic() {
        // One-byte profile, one word, element id 1 claiming 16 bytes with nothing after it: the
        // rtp crate alone would read past the end of the buffer.
        let mut datagram = vec![0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        datagram.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, 0x00, 0x00, 0x00, 0x1f]);
        assert!(matches!(
            parse_rtp(&datagram),
            Err(RtpError::TruncatedHeader { .. })
        ));
        // Two-byte profile whose length octet is the last byte of the block.
        let mut two_byte = vec![0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        two_byte.extend_from_slice(&[0x10, 0x00, 0x00, 0x01, 0x00, 0x00, 0x05, 0xff]);
        assert!(matches!(
            parse_rtp(&two_byte),
            Err(RtpError::TruncatedHeader { .. })
        ));
    }

    #[test]
    fn latches_to_the_first_valid_source() {
        let mut latch = SymmetricLatch::new(Some(addr("10.0.0.5:10000")), &[0, 101]);
        assert_eq!(latch.remote(), Some(addr("10.0.0.5:10000")));
        assert!(
            !latch.handle_packet(addr("198.51.100.1:4000"), &packet(1, 7, 13)),
            "CN not negotiated"
        );
        assert!(!latch.is_latched());
        assert!(latch.handle_packet(addr("203.0.113.9:31000"), &packet(1, 7, 0)));
        assert_eq!(latch.remote(), Some(addr("203.0.113.9:31000")));
        assert!(latch.handle_packet(addr("203.0.113.9:31000"), &packet(2, 7, 101)));
    }

    #[test]
    fn ignores_spoofed_single_packets_then_relatches_after_probation() {
        let home = addr("203.0.113.9:31000");
        let moved = addr("203.0.113.9:31044");
        let mut latch = SymmetricLatch::new(None, &[0]);
        assert!(latch.handle_packet(home, &packet(100, 7, 0)));
        assert!(
            !latch.handle_packet(addr("192.0.2.66:5000"), &packet(9, 7, 0)),
            "spoof"
        );
        assert!(latch.handle_packet(home, &packet(101, 7, 0)));

        // NAT rebinding: three in-sequence packets are not enough, the fourth moves the latch.
        for seq in 102..105 {
            assert!(!latch.handle_packet(moved, &packet(seq, 7, 0)));
            assert_eq!(latch.remote(), Some(home));
        }
        assert!(latch.handle_packet(moved, &packet(105, 7, 0)));
        assert_eq!(latch.remote(), Some(moved));
        assert!(
            !latch.handle_packet(home, &packet(106, 7, 0)),
            "old source is now foreign"
        );
    }

    #[test]
    fn out_of_sequence_candidate_restarts_probation() {
        let home = addr("203.0.113.9:31000");
        let other = addr("192.0.2.66:5000");
        let mut latch = SymmetricLatch::new(None, &[0]).with_relatch_after(2);
        latch.handle_packet(home, &packet(1, 7, 0));
        assert!(!latch.handle_packet(other, &packet(50, 9, 0)));
        assert!(
            !latch.handle_packet(other, &packet(60, 9, 0)),
            "not in sequence"
        );
        assert!(latch.handle_packet(other, &packet(61, 9, 0)));
        assert_eq!(latch.remote(), Some(other));
    }

    #[test]
    fn reinvite_unlatches_and_uses_the_new_sdp_address() {
        let mut latch = SymmetricLatch::new(None, &[0]);
        latch.handle_packet(addr("203.0.113.9:31000"), &packet(1, 7, 0));
        latch.set_signalled(Some(addr("10.1.1.1:20000")), &[8]);
        assert_eq!(latch.remote(), Some(addr("10.1.1.1:20000")));
        assert!(
            !latch.handle_packet(addr("10.1.1.1:20000"), &packet(2, 7, 0)),
            "PT 0 no longer"
        );
        assert!(latch.handle_packet(addr("10.1.1.1:20000"), &packet(3, 7, 8)));
    }

    #[test]
    fn reads_rfc4733_event_payload() {
        // RFC 4733 §2.3: digit 5, E=1, R=1 (ignored), volume 10, duration 1280.
        assert_eq!(
            telephone_event(&[5, 0xca, 0x05, 0x00]),
            Some(TelephoneEvent {
                event: 5,
                end: true,
                volume: 10,
                duration: 1280
            })
        );
        assert_eq!(
            telephone_event(&[11, 0x0a, 0x00, 0xa0, 0xff]),
            Some(TelephoneEvent {
                event: 11,
                end: false,
                volume: 10,
                duration: 160
            })
        );
        assert_eq!(telephone_event(&[1, 2, 3]), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(datagram in proptest::collection::vec(proptest::num::u8::ANY, 0..96)) {
            if let Ok(packet) = parse_rtp(&datagram) {
                proptest::prop_assert!(packet.payload.len() <= datagram.len() - FIXED_HEADER_LEN);
            }
        }

        #[test]
        fn arbitrary_rtp_v2_with_extension_never_panics(
            first in 0x80u8..0xc0,
            rest in proptest::collection::vec(proptest::num::u8::ANY, 11..64),
        ) {
            let mut datagram = vec![first];
            datagram.extend(rest);
            let _ = parse_rtp(&datagram);
        }
    }
}
