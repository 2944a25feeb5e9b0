//! RTCP for one audio stream (RFC 3550 §6): sender/receiver reports, CNAME, BYE, round-trip time,
//! and the report interval, sans-IO.
//!
//! ```text
//!   RtcpTimer:   new ──(interval/2 × U[0.5,1.5])──▶ due ──(interval × U[0.5,1.5])──▶ due …
//!   RtcpSession: handle_packet(now, ntp, datagram) → RtcpSummary   (records an SR's LSR)
//!                build_report(now, ntp, sender, reception) → SR|RR + SDES CNAME  (fills LSR/DLSR)
//! ```
//! - A compound report (§6.1) starts with an SR when we sent RTP since the report before last
//!   (§6.4), else an RR, then an SDES with our CNAME (§6.5.1).
//! - Incoming compound packets are split here by their length fields (P-bit padding stripped) and
//!   only SR, RR, SDES (with the `rtcp` crate) and BYE (by hand, see `build_bye`) are decoded;
//!   other types (APP, XR, feedback) are counted and skipped.
//! - Round-trip time (§6.4.1): RTT = A − LSR − DLSR, with A the middle 32 bits of our NTP clock
//!   when the report block about our SSRC arrives.
//! - Wall-clock time comes in as [`NtpTime`] (the caller converts `SystemTime`); intervals use the
//!   monotonic `now: Instant`. Nothing here reads a clock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::rtcp::packet::Packet;
use ::rtcp::receiver_report::ReceiverReport;
use ::rtcp::reception_report::ReceptionReport;
use ::rtcp::sender_report::SenderReport;
use ::rtcp::source_description::{
    SdesType, SourceDescription, SourceDescriptionChunk, SourceDescriptionItem,
};
use bytes::{Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use webrtc_util::marshal::Unmarshal;

use crate::media::rtp::OutboundStream;
use crate::media::{RtpTimestamp, Ssrc};

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;
const PACKET_TYPE_SR: u8 = 200;
const PACKET_TYPE_RR: u8 = 201;
const PACKET_TYPE_SDES: u8 = 202;
const PACKET_TYPE_BYE: u8 = 203;
/// RFC 3550 §6.5: an SDES item's text is at most 255 octets.
const MAX_SDES_TEXT: usize = 255;

/// A 64-bit NTP timestamp (RFC 3550 §4): seconds since 1900 in the high 32 bits, fraction below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NtpTime(pub u64);

impl NtpTime {
    /// Convert a wall-clock time read by the caller (`SystemTime::now()` in `io/`).
    pub fn from_system_time(time: SystemTime) -> Self {
        let since_unix = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = since_unix.as_secs().wrapping_add(NTP_UNIX_OFFSET_SECS);
        let fraction = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
        Self((seconds << 32) | fraction)
    }

    /// The middle 32 bits (16.16 fixed point seconds), as used by LSR and RTT (RFC 3550 §6.4.1).
    pub fn middle_bits(self) -> u32 {
        // Truncation intended: bits 16..48 of the timestamp.
        (self.0 >> 16) as u32
    }
}

/// Our reception statistics about the remote source, filled from the jitter buffer's stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceptionFigures {
    /// The SSRC we receive from.
    pub remote_ssrc: Ssrc,
    /// Fraction lost since the previous report, in 1/256 (RFC 3550 §6.4.1).
    pub fraction_lost: u8,
    /// Cumulative packets lost; negative with duplicates; clamped to 24 bits signed on the wire.
    pub cumulative_lost: i32,
    /// Extended highest sequence number received (cycles << 16 | seq).
    pub extended_highest_seq: u32,
    /// Interarrival jitter in timestamp units (RFC 3550 §6.4.1, A.8).
    pub jitter: u32,
}

/// What we have sent, for the sender-info block of an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderFigures {
    /// Packets sent since the start of the stream.
    pub packets: u64,
    /// Payload octets sent since the start of the stream.
    pub octets: u64,
    /// The RTP timestamp corresponding to the report's NTP time (the media clock "now").
    pub rtp_timestamp: RtpTimestamp,
}

impl SenderFigures {
    /// The figures of `stream` as of now: its counters and the timestamp of its next frame.
    pub fn from_stream(stream: &OutboundStream) -> Self {
        let stats = stream.stats();
        Self {
            packets: stats.packets,
            octets: stats.octets,
            rtp_timestamp: stream.next_timestamp(),
        }
    }
}

/// The sender-info block of a received SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    /// The sender's wall clock when it sent the SR.
    pub ntp: NtpTime,
    /// The sender's media clock at that instant.
    pub rtp_timestamp: RtpTimestamp,
    /// Packets the sender has sent (mod 2^32).
    pub packets: u32,
    /// Payload octets the sender has sent (mod 2^32).
    pub octets: u32,
}

/// A reception report block about one of our streams, as the remote sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    /// The SSRC reported on (ours).
    pub ssrc: Ssrc,
    /// Fraction lost in 1/256 since the remote's previous report.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed on the wire).
    pub cumulative_lost: i32,
    /// Extended highest sequence number the remote received.
    pub extended_highest_seq: u32,
    /// The remote's interarrival jitter estimate, in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of our last SR the remote got; 0 if none.
    pub last_sr: u32,
    /// Delay since that SR at the remote, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// What one incoming compound RTCP packet told us.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RtcpSummary {
    /// SSRC of the first SR/RR's sender.
    pub sender_ssrc: Option<Ssrc>,
    /// Sender info when the packet carried an SR.
    pub sender_info: Option<SenderInfo>,
    /// The report block about our SSRC, if any.
    pub report_about_us: Option<ReportBlock>,
    /// Round-trip time from that block (RFC 3550 §6.4.1), when it refers to an SR of ours.
    pub round_trip: Option<Duration>,
    /// The sender's CNAME from SDES.
    pub cname: Option<String>,
    /// Sources that said BYE.
    pub bye: Vec<Ssrc>,
    /// Packets of other types (APP, XR, feedback, unknown) skipped.
    pub ignored: usize,
}

/// Why an incoming RTCP datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    /// Empty, or a trailing fragment shorter than an RTCP header.
    #[error("RTCP datagram fragment of {len} bytes is shorter than a header")]
    TooShort {
        /// Bytes left.
        len: usize,
    },
    /// Version field is not 2.
    #[error("RTCP version {version}, expected 2")]
    BadVersion {
        /// The version bits found.
        version: u8,
    },
    /// A packet's length field runs past the datagram (RFC 3550 A.2 validity check).
    #[error("RTCP packet claims {declared} bytes, {available} left")]
    BadLength {
        /// Bytes claimed by the length field.
        declared: usize,
        /// Bytes left in the datagram.
        available: usize,
    },
    /// The padding count is 0 or larger than the packet body.
    #[error("RTCP padding count {padding} invalid")]
    BadPadding {
        /// The last octet of the packet.
        padding: u8,
    },
    /// An SR, RR, SDES or BYE did not decode.
    #[error("malformed RTCP packet type {packet_type}: {reason}")]
    Malformed {
        /// The packet type.
        packet_type: u8,
        /// The `rtcp` crate's complaint.
        reason: String,
    },
}

/// The last SR received, for LSR/DLSR in our next report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReceivedSr {
    ssrc: Ssrc,
    middle_bits: u32,
    arrived: Instant,
}

/// Our RTCP participant state: SSRC, CNAME, last SR heard, packets at the last reports.
#[derive(Debug, Clone)]
pub struct RtcpSession {
    ssrc: Ssrc,
    cname: Bytes,
    last_sr: Option<ReceivedSr>,
    /// Sent-packet counts at the report before last and at the last report.
    packets_at_reports: [u64; 2],
}

impl RtcpSession {
    /// A session reporting as `ssrc` (the outbound stream's) with canonical name `cname`
    /// (e.g. `voxgate@203.0.113.5`; truncated to 255 octets).
    pub fn new(ssrc: Ssrc, cname: &str) -> Self {
        let cname = cname.as_bytes();
        let cname = cname.get(..MAX_SDES_TEXT).unwrap_or(cname);
        Self {
            ssrc,
            cname: Bytes::copy_from_slice(cname),
            last_sr: None,
            packets_at_reports: [0, 0],
        }
    }

    /// Build our compound report: SR (if we sent since the report before last) or RR, then SDES.
    ///
    /// `ntp` is the wall clock now, `sender` our outbound counters (`None` with no outbound
    /// stream), `reception` the jitter buffer's figures (`None` before any RTP arrived).
    pub fn build_report(
        &mut self,
        now: Instant,
        ntp: NtpTime,
        sender: Option<SenderFigures>,
        reception: Option<ReceptionFigures>,
    ) -> Bytes {
        let packets = self.build_packets(now, ntp, sender, reception);
        marshal(&packets)
    }

    /// Build a compound report ending in BYE (RFC 3550 §6.6), to send when the call ends.
    pub fn build_bye(
        &mut self,
        now: Instant,
        ntp: NtpTime,
        sender: Option<SenderFigures>,
        reception: Option<ReceptionFigures>,
    ) -> Bytes {
        let packets = self.build_packets(now, ntp, sender, reception);
        let mut compound = BytesMut::from(marshal(&packets));
        // Written by hand: the crate always adds a reason-length octet plus P-bit padding, and
        // its own parser then refuses that padding once stripped. RFC 3550 §6.6: V=2, SC=1, PT=203,
        // length 1, our SSRC, no reason.
        compound.extend_from_slice(&[0x81, PACKET_TYPE_BYE, 0x00, 0x01]);
        compound.extend_from_slice(&self.ssrc.0.to_be_bytes());
        compound.freeze()
    }

    fn build_packets(
        &mut self,
        now: Instant,
        ntp: NtpTime,
        sender: Option<SenderFigures>,
        reception: Option<ReceptionFigures>,
    ) -> Vec<Box<dyn Packet + Send + Sync>> {
        let reports: Vec<ReceptionReport> = reception
            .map(|figures| self.reception_report(now, figures))
            .into_iter()
            .collect();
        let [before_last, last] = self.packets_at_reports;
        let sent_packets = sender.map_or(last, |figures| figures.packets);
        self.packets_at_reports = [last, sent_packets];
        let first: Box<dyn Packet + Send + Sync> = match sender {
            // RFC 3550 §6.4: SR if we sent data since the last report or the one before.
            Some(figures) if figures.packets > before_last => Box::new(SenderReport {
                ssrc: self.ssrc.0,
                ntp_time: ntp.0,
                rtp_time: figures.rtp_timestamp.0,
                // RFC 3550 §6.4.1: the counts wrap modulo 2^32.
                packet_count: figures.packets as u32,
                octet_count: figures.octets as u32,
                reports,
                profile_extensions: Bytes::new(),
            }),
            _ => Box::new(ReceiverReport {
                ssrc: self.ssrc.0,
                reports,
                profile_extensions: Bytes::new(),
            }),
        };
        let sdes = SourceDescription {
            chunks: vec![SourceDescriptionChunk {
                source: self.ssrc.0,
                items: vec![SourceDescriptionItem {
                    sdes_type: SdesType::SdesCname,
                    text: self.cname.clone(),
                }],
            }],
        };
        vec![first, Box::new(sdes)]
    }

    fn reception_report(&self, now: Instant, figures: ReceptionFigures) -> ReceptionReport {
        let (last_sender_report, delay) = match self.last_sr {
            Some(sr) if sr.ssrc == figures.remote_ssrc => {
                let waited = now.saturating_duration_since(sr.arrived);
                (sr.middle_bits, to_fixed_16_16(waited))
            }
            _ => (0, 0),
        };
        ReceptionReport {
            ssrc: figures.remote_ssrc.0,
            fraction_lost: figures.fraction_lost,
            total_lost: encode_cumulative_lost(figures.cumulative_lost),
            last_sequence_number: figures.extended_highest_seq,
            jitter: figures.jitter,
            last_sender_report,
            delay,
        }
    }

    /// Read an incoming compound RTCP datagram that arrived at `now` (wall clock `ntp`).
    ///
    /// Records an SR's timestamp for our next report's LSR/DLSR and computes the round-trip time
    /// from a report block about our SSRC. Errors instead of panicking on any input.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        ntp: NtpTime,
        datagram: &[u8],
    ) -> Result<RtcpSummary, RtcpError> {
        let mut summary = RtcpSummary::default();
        let mut blocks: Vec<ReceptionReport> = Vec::new();
        for (packet_type, packet) in split_compound(datagram)? {
            let malformed = |error: webrtc_util::Error| RtcpError::Malformed {
                packet_type,
                reason: error.to_string(),
            };
            let mut buffer = packet.as_slice();
            match packet_type {
                PACKET_TYPE_SR => {
                    let report = SenderReport::unmarshal(&mut buffer).map_err(malformed)?;
                    let ssrc = Ssrc(report.ssrc);
                    summary.sender_ssrc.get_or_insert(ssrc);
                    let ntp_sent = NtpTime(report.ntp_time);
                    summary.sender_info.get_or_insert(SenderInfo {
                        ntp: ntp_sent,
                        rtp_timestamp: RtpTimestamp(report.rtp_time),
                        packets: report.packet_count,
                        octets: report.octet_count,
                    });
                    self.last_sr = Some(ReceivedSr {
                        ssrc,
                        middle_bits: ntp_sent.middle_bits(),
                        arrived: now,
                    });
                    blocks.extend(report.reports);
                }
                PACKET_TYPE_RR => {
                    let report = ReceiverReport::unmarshal(&mut buffer).map_err(malformed)?;
                    summary.sender_ssrc.get_or_insert(Ssrc(report.ssrc));
                    blocks.extend(report.reports);
                }
                PACKET_TYPE_SDES => {
                    let sdes = SourceDescription::unmarshal(&mut buffer).map_err(malformed)?;
                    summary.cname = summary.cname.take().or_else(|| cname_of(&sdes, &summary));
                }
                PACKET_TYPE_BYE => summary.bye.extend(bye_sources(&packet)?),
                _ => summary.ignored += 1,
            }
        }
        if let Some(block) = blocks.into_iter().find(|block| block.ssrc == self.ssrc.0) {
            let block = ReportBlock {
                ssrc: Ssrc(block.ssrc),
                fraction_lost: block.fraction_lost,
                cumulative_lost: decode_cumulative_lost(block.total_lost),
                extended_highest_seq: block.last_sequence_number,
                jitter: block.jitter,
                last_sr: block.last_sender_report,
                delay_since_last_sr: block.delay,
            };
            summary.round_trip =
                round_trip(ntp.middle_bits(), block.last_sr, block.delay_since_last_sr);
            summary.report_about_us = Some(block);
        }
        Ok(summary)
    }
}

/// RFC 3550 §6.4.1: RTT = A − LSR − DLSR in 1/65536 s; `None` without an SR reference or when
/// the figures are inconsistent (the difference would be negative).
pub fn round_trip(
    arrival_middle_bits: u32,
    last_sr: u32,
    delay_since_last_sr: u32,
) -> Option<Duration> {
    if last_sr == 0 {
        return None;
    }
    let since_sr = arrival_middle_bits.wrapping_sub(last_sr);
    let units = since_sr.checked_sub(delay_since_last_sr)?;
    Some(from_fixed_16_16(units))
}

/// Split a compound packet into (packet type, bytes without padding) by the length fields.
fn split_compound(datagram: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, RtcpError> {
    if datagram.is_empty() {
        return Err(RtcpError::TooShort { len: 0 });
    }
    let mut packets = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Some(&[first, packet_type, high, low]) = rest.get(..4) else {
            return Err(RtcpError::TooShort { len: rest.len() });
        };
        let version = first >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion { version });
        }
        let declared = (usize::from(u16::from_be_bytes([high, low])) + 1) * 4;
        let (packet, tail) = rest
            .split_at_checked(declared)
            .ok_or(RtcpError::BadLength {
                declared,
                available: rest.len(),
            })?;
        rest = tail;
        let mut packet = packet.to_vec();
        if first & 0x20 != 0 {
            // RFC 3550 §6.4.1 P bit: the last octet counts the padding, itself included. The
            // crate would read padding as report data, so strip it and clear the bit.
            let padding = packet.last().copied().unwrap_or(0);
            let body = packet.len().saturating_sub(4);
            if padding == 0 || usize::from(padding) > body {
                return Err(RtcpError::BadPadding { padding });
            }
            packet.truncate(packet.len() - usize::from(padding));
            if let Some(byte) = packet.first_mut() {
                *byte &= !0x20;
            }
        }
        packets.push((packet_type, packet));
    }
    Ok(packets)
}

/// The SSRC/CSRC list of a BYE (RFC 3550 §6.6); the optional reason is not needed.
fn bye_sources(packet: &[u8]) -> Result<Vec<Ssrc>, RtcpError> {
    let count = usize::from(packet.first().copied().unwrap_or(0) & 0x1f);
    let sources = packet
        .get(4..4 + 4 * count)
        .ok_or_else(|| RtcpError::Malformed {
            packet_type: PACKET_TYPE_BYE,
            reason: format!("{count} sources do not fit in {} bytes", packet.len()),
        })?;
    Ok(sources
        .chunks_exact(4)
        .filter_map(|source| <[u8; 4]>::try_from(source).ok())
        .map(|source| Ssrc(u32::from_be_bytes(source)))
        .collect())
}

/// The CNAME of the SR/RR sender, else the first CNAME in the SDES.
fn cname_of(sdes: &SourceDescription, summary: &RtcpSummary) -> Option<String> {
    let cname = |chunk: &SourceDescriptionChunk| {
        chunk
            .items
            .iter()
            .find(|item| item.sdes_type == SdesType::SdesCname)
            .map(|item| String::from_utf8_lossy(&item.text).into_owned())
    };
    let sender = summary.sender_ssrc.map(|ssrc| ssrc.0);
    sdes.chunks
        .iter()
        .find(|chunk| Some(chunk.source) == sender)
        .and_then(cname)
        .or_else(|| sdes.chunks.iter().find_map(cname))
}

fn marshal(packets: &[Box<dyn Packet + Send + Sync>]) -> Bytes {
    // Invariant: every packet we build has at most one report block, one SDES chunk with a
    // CNAME of at most 255 octets and a 24-bit total_lost, which are all the crate's marshal
    // error conditions; its buffer is sized from `marshal_size`.
    ::rtcp::packet::marshal(packets).expect("reports we build always serialise")
}

/// 24-bit two's complement, clamped (RFC 3550 §6.4.1 "cumulative number of packets lost").
fn encode_cumulative_lost(lost: i32) -> u32 {
    (lost.clamp(-0x80_0000, 0x7f_ffff) as u32) & 0x00ff_ffff
}

fn decode_cumulative_lost(raw: u32) -> i32 {
    // Sign-extend bit 23.
    ((raw << 8) as i32) >> 8
}

fn to_fixed_16_16(duration: Duration) -> u32 {
    let units = duration.as_nanos() * 65_536 / 1_000_000_000;
    u32::try_from(units).unwrap_or(u32::MAX)
}

fn from_fixed_16_16(units: u32) -> Duration {
    Duration::from_nanos(u64::from(units) * 1_000_000_000 / 65_536)
}

/// When to send the next report (RFC 3550 §6.3.1, two-party simplification): the interval
/// randomised by a factor in [0.5, 1.5], the first one from half the interval (§6.2).
#[derive(Debug, Clone)]
pub struct RtcpTimer {
    interval: Duration,
    next: Instant,
    rng: SmallRng,
}

impl RtcpTimer {
    /// RFC 3550 §6.2 minimum interval, which a two-party call always uses.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

    /// A timer whose first report is due `interval/2 × U[0.5, 1.5]` after `now`.
    pub fn new(now: Instant, interval: Duration) -> Self {
        Self::with_seed(now, interval, rand::random())
    }

    /// As [`new`](Self::new) with a fixed random seed (reproducible tests).
    pub fn with_seed(now: Instant, interval: Duration, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let first = randomized(&mut rng, interval / 2);
        Self {
            interval,
            next: now + first,
            rng,
        }
    }

    /// When the next report is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next)
    }

    /// Call at or after [`poll_timeout`](Self::poll_timeout); returns whether a report is due
    /// now (then build and send one) and schedules the next.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + randomized(&mut self.rng, self.interval);
        true
    }
}

fn randomized(rng: &mut SmallRng, interval: Duration) -> Duration {
    interval.mul_f64(rng.random_range(0.5..=1.5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{ms, t0};

    const US: Ssrc = Ssrc(0x1111_1111);
    const THEM: Ssrc = Ssrc(0x2222_2222);

    fn ntp_at(middle_bits: u32) -> NtpTime {
        NtpTime(u64::from(middle_bits) << 16)
    }

    fn figures(remote_ssrc: Ssrc) -> ReceptionFigures {
        ReceptionFigures {
            remote_ssrc,
            fraction_lost: 25,
            cumulative_lost: -3,
            extended_highest_seq: 0x0001_0005,
            jitter: 42,
        }
    }

    fn sender(packets: u64) -> Option<SenderFigures> {
        Some(SenderFigures {
            packets,
            octets: packets * 160,
            rtp_timestamp: RtpTimestamp(8_000),
        })
    }

    #[test]
    fn sender_report_round_trips_through_the_parser() {
        let mut us = RtcpSession::new(US, "voxgate@203.0.113.5");
        let mut them = RtcpSession::new(THEM, "asterisk");
        let ntp = NtpTime::from_system_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let report = us.build_report(t0(), ntp, sender(50), Some(figures(THEM)));
        let summary = them
            .handle_packet(t0() + ms(40), ntp, &report)
            .expect("parses");
        assert_eq!(summary.sender_ssrc, Some(US));
        assert_eq!(
            summary.sender_info,
            Some(SenderInfo {
                ntp,
                rtp_timestamp: RtpTimestamp(8_000),
                packets: 50,
                octets: 8_000
            })
        );
        assert_eq!(summary.cname.as_deref(), Some("voxgate@203.0.113.5"));
        assert_eq!((summary.bye.len(), summary.ignored), (0, 0));
        assert_eq!(
            summary.report_about_us,
            Some(ReportBlock {
                ssrc: THEM,
                fraction_lost: 25,
                cumulative_lost: -3,
                extended_highest_seq: 0x0001_0005,
                jitter: 42,
                last_sr: 0,
                delay_since_last_sr: 0,
            })
        );
        assert_eq!(summary.round_trip, None, "no SR of theirs was referenced");
    }

    #[test]
    fn receiver_report_when_nothing_was_sent_recently() {
        let mut us = RtcpSession::new(US, "voxgate");
        let mut them = RtcpSession::new(THEM, "x");
        let ntp = ntp_at(0x1000_0000);
        let no_stream = us.build_report(t0(), ntp, None, None);
        let summary = them.handle_packet(t0(), ntp, &no_stream).expect("parses");
        assert_eq!(no_stream.get(1), Some(&PACKET_TYPE_RR));
        assert_eq!((summary.sender_ssrc, summary.sender_info), (Some(US), None));

        // Sent 10 packets: SR now and at the next report (§6.4: "the last report or the one
        // before"), then RR once two reports passed without new packets.
        let types: Vec<u8> = [10, 10, 10, 11]
            .iter()
            .map(|&packets| us.build_report(t0(), ntp, sender(packets), None)[1])
            .collect();
        assert_eq!(
            types,
            [
                PACKET_TYPE_SR,
                PACKET_TYPE_SR,
                PACKET_TYPE_RR,
                PACKET_TYPE_SR
            ]
        );
    }

    #[test]
    fn fills_lsr_and_dlsr_from_the_last_sender_report() {
        let mut us = RtcpSession::new(US, "voxgate");
        let mut them = RtcpSession::new(THEM, "asterisk");
        let their_ntp = NtpTime(0x83aa_7e80_4000_0000 | 0x0000_1234_0000_0000);
        let their_sr = them.build_report(t0(), their_ntp, sender(5), None);
        us.handle_packet(t0(), ntp_at(1), &their_sr)
            .expect("parses");

        let ours = us.build_report(t0() + ms(1_500), ntp_at(2), None, Some(figures(THEM)));
        let summary = them.handle_packet(t0(), ntp_at(3), &ours).expect("parses");
        let block = summary.report_about_us.expect("block about THEM");
        assert_eq!(block.last_sr, their_ntp.middle_bits());
        assert_eq!(block.delay_since_last_sr, 98_304, "1.5 s in 1/65536 s");

        // A block about a different source carries no LSR.
        let other = us.build_report(t0(), ntp_at(2), None, Some(figures(Ssrc(9))));
        let mut stranger = RtcpSession::new(Ssrc(9), "x");
        let block = stranger
            .handle_packet(t0(), ntp_at(3), &other)
            .expect("parses")
            .report_about_us
            .expect("block");
        assert_eq!((block.last_sr, block.delay_since_last_sr), (0, 0));
    }

    #[test]
    fn round_trip_matches_rfc3550_example() {
        // RFC 3550 §6.4.1 figure 2: A = 0xb710:8000, LSR = 0xb705:2000, DLSR = 0x0005:4000
        // → delay 0x0006:2000 = 6.125 s.
        assert_eq!(
            round_trip(0xb710_8000, 0xb705_2000, 0x0005_4000),
            Some(Duration::from_millis(6_125))
        );
        assert_eq!(round_trip(0xb710_8000, 0, 0x0005_4000), None, "no SR yet");
        assert_eq!(
            round_trip(0xb705_3000, 0xb705_2000, 0x0005_4000),
            None,
            "negative"
        );
    }

    #[test]
    fn computes_round_trip_from_a_report_about_our_sender_report() {
        let mut us = RtcpSession::new(US, "voxgate");
        let mut them = RtcpSession::new(THEM, "asterisk");
        let our_sr = us.build_report(t0(), ntp_at(0xb705_2000), sender(100), None);
        them.handle_packet(t0(), ntp_at(7), &our_sr)
            .expect("parses");
        // They hold our SR for 5.25 s before reporting.
        let their_rr = them.build_report(t0() + ms(5_250), ntp_at(8), None, Some(figures(US)));
        let summary = us
            .handle_packet(t0(), ntp_at(0xb710_8000), &their_rr)
            .expect("parses");
        assert_eq!(summary.round_trip, Some(Duration::from_millis(6_125)));
    }

    #[test]
    fn cumulative_lost_is_clamped_to_24_bits_signed() {
        assert_eq!(encode_cumulative_lost(-1), 0x00ff_ffff);
        assert_eq!(decode_cumulative_lost(0x00ff_ffff), -1);
        assert_eq!(encode_cumulative_lost(50_000_000), 0x007f_ffff);
        assert_eq!(encode_cumulative_lost(-50_000_000), 0x0080_0000);
        assert_eq!(decode_cumulative_lost(0x0080_0000), -0x80_0000);
        assert_eq!(decode_cumulative_lost(1234), 1234);
    }

    #[test]
    fn bye_is_reported_and_unknown_types_ignored() {
        let mut us = RtcpSession::new(US, "voxgate");
        let mut them = RtcpSession::new(THEM, "asterisk");
        let mut datagram = them.build_bye(t0(), ntp_at(1), None, None).to_vec();
        assert_eq!(
            datagram[datagram.len() - 8..],
            [0x81, 203, 0, 1, 0x22, 0x22, 0x22, 0x22]
        );
        // An APP packet (204) with name "TEST", and a padded XR-like type 207 we skip.
        datagram.extend_from_slice(&[0x80, 204, 0x00, 0x02, 0x22, 0x22, 0x22, 0x22]);
        datagram.extend_from_slice(b"TEST");
        datagram.extend_from_slice(&[0xa0, 207, 0x00, 0x01, 0x00, 0x00, 0x00, 0x04]);
        let summary = us
            .handle_packet(t0(), ntp_at(2), &datagram)
            .expect("parses");
        assert_eq!(summary.bye, vec![THEM]);
        assert_eq!(summary.ignored, 2);
        assert_eq!(summary.cname.as_deref(), Some("asterisk"));
    }

    #[test]
    fn malformed_compounds_are_errors() {
        let mut us = RtcpSession::new(US, "voxgate");
        let good = RtcpSession::new(THEM, "x").build_report(t0(), ntp_at(1), sender(1), None);
        let now = t0();
        assert_eq!(
            us.handle_packet(now, ntp_at(1), &[]),
            Err(RtcpError::TooShort { len: 0 })
        );
        assert_eq!(
            us.handle_packet(now, ntp_at(1), &good[..good.len() - 1]),
            Err(RtcpError::BadLength {
                declared: 12,
                available: 11
            }),
            "SDES cut short"
        );
        let mut bad_version = good.to_vec();
        bad_version[0] &= 0x3f;
        assert_eq!(
            us.handle_packet(now, ntp_at(1), &bad_version),
            Err(RtcpError::BadVersion { version: 0 })
        );
        // An SR whose length covers only the header and SSRC.
        let short_sr = [0x80, 200, 0x00, 0x01, 0, 0, 0, 1];
        assert!(matches!(
            us.handle_packet(now, ntp_at(1), &short_sr),
            Err(RtcpError::Malformed {
                packet_type: 200,
                ..
            })
        ));
        let zero_padding = [0xa0, 201, 0x00, 0x01, 0, 0, 0, 0];
        assert_eq!(
            us.handle_packet(now, ntp_at(1), &zero_padding),
            Err(RtcpError::BadPadding { padding: 0 })
        );
    }

    #[test]
    fn ntp_conversion_of_a_known_instant() {
        let ntp = NtpTime::from_system_time(UNIX_EPOCH + Duration::from_millis(1_500));
        assert_eq!(ntp.0 >> 32, NTP_UNIX_OFFSET_SECS + 1);
        assert_eq!(ntp.0 & 0xffff_ffff, 0x8000_0000, "half a second");
        assert_eq!(
            ntp.middle_bits(),
            (((NTP_UNIX_OFFSET_SECS + 1) as u32) << 16) | 0x8000
        );
    }

    #[test]
    fn intervals_are_randomized_within_half_to_one_and_a_half() {
        let interval = RtcpTimer::DEFAULT_INTERVAL;
        let mut firsts = Vec::new();
        for seed in 0..200 {
            let timer = RtcpTimer::with_seed(t0(), interval, seed);
            let first = timer.poll_timeout().expect("armed") - t0();
            assert!((ms(1_250)..=ms(3_750)).contains(&first), "first {first:?}");
            firsts.push(first);
        }
        let mut timer = RtcpTimer::with_seed(t0(), interval, 7);
        let mut gaps = Vec::new();
        for _ in 0..500 {
            let due = timer.poll_timeout().expect("armed");
            assert!(!timer.handle_timeout(due - ms(1)), "not due early");
            assert!(timer.handle_timeout(due));
            gaps.push(timer.poll_timeout().expect("armed") - due);
        }
        assert!(gaps.iter().all(|gap| (ms(2_500)..=ms(7_500)).contains(gap)));
        let (min, max) = (gaps.iter().min().copied(), gaps.iter().max().copied());
        assert!(
            min < Some(ms(3_000)) && max > Some(ms(7_000)),
            "spread {min:?}..{max:?}"
        );
        firsts.dedup();
        assert!(firsts.len() > 100, "seeds give different first reports");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(datagram in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let mut session = RtcpSession::new(US, "voxgate");
            let _ = session.handle_packet(t0(), ntp_at(1), &datagram);
        }

        #[test]
        fn mutated_reports_never_panic(
            edits in proptest::collection::vec((0usize..256, proptest::num::u8::ANY), 1..6),
        ) {
            let mut them = RtcpSession::new(THEM, "asterisk");
            let mut datagram = them.build_bye(t0(), ntp_at(9), sender(3), Some(figures(US))).to_vec();
            for (position, byte) in edits {
                let len = datagram.len();
                if let Some(slot) = datagram.get_mut(position % len) {
                    *slot = byte;
                }
            }
            let mut session = RtcpSession::new(US, "voxgate");
            let _ = session.handle_packet(t0(), ntp_at(1), &datagram);
        }
    }
}
