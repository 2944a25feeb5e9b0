//! Receiving and checking the RTP voxgate echoes back.
//!
//! How echo is verified: SIPp plays the pcap from [`super::pcap`] with `play_pcap_audio` (raw
//! socket, root only). SIPp forges the UDP source port of those packets to the port its SDP
//! advertises, and the scenarios advertise `[media_port+4]`, a port SIPp itself never binds
//! (it binds `media_port` and `media_port+2`). voxgate uses symmetric RTP, so it sends the echo to
//! that port, where the test holds an [`RtpSink`]: a plain UDP socket read by a thread. No capture
//! tool, no timing assumptions: [`verify_echo`] then checks count, payload bytes and order per
//! SSRC (one SSRC per voxgate call).

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::pcap;

/// One RTP packet as received.
#[derive(Debug, Clone)]
pub struct RtpPacket {
    /// Payload type.
    pub payload_type: u8,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Where it came from.
    pub from: SocketAddr,
    /// RTP marker bit.
    pub marker: bool,
    /// When it was received.
    pub at: std::time::Instant,
}

impl RtpPacket {
    /// Parses an RTP datagram (RFC 3550 §5.1: CSRCs and a header extension are skipped).
    pub fn parse(datagram: &[u8], from: SocketAddr) -> Option<RtpPacket> {
        if datagram.len() < 12 || datagram[0] >> 6 != 2 {
            return None;
        }
        let csrc_count = usize::from(datagram[0] & 0x0f);
        let mut offset = 12 + 4 * csrc_count;
        if datagram[0] & 0x10 != 0 {
            let words = datagram.get(offset + 2..offset + 4)?;
            offset += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
        }
        let mut end = datagram.len();
        if datagram[0] & 0x20 != 0 {
            end = end.checked_sub(usize::from(*datagram.last()?))?;
        }
        Some(RtpPacket {
            payload_type: datagram[1] & 0x7f,
            seq: u16::from_be_bytes([datagram[2], datagram[3]]),
            timestamp: u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]),
            ssrc: u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]),
            payload: datagram.get(offset..end)?.to_vec(),
            from,
            marker: datagram[1] & 0x80 != 0,
            at: std::time::Instant::now(),
        })
    }
}

/// A UDP socket collecting RTP on a thread until [`RtpSink::finish`].
pub struct RtpSink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<RtpPacket>>>,
}

impl RtpSink {
    /// Binds `addr` and starts collecting.
    pub fn bind(addr: SocketAddr) -> RtpSink {
        let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind RTP sink {addr}: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut packets = Vec::new();
            let mut buf = [0u8; 2048];
            while !stop_thread.load(Ordering::SeqCst) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    if let Some(packet) = RtpPacket::parse(&buf[..n], from) {
                        packets.push(packet);
                    }
                }
            }
            packets
        });
        RtpSink {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops collecting and returns every packet received, in arrival order.
    pub fn finish(mut self) -> Vec<RtpPacket> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().expect("RTP sink thread"))
            .unwrap_or_default()
    }
}

impl Drop for RtpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What [`verify_echo`] found in one echoed stream.
#[derive(Debug, Clone, Default)]
pub struct EchoStream {
    /// The stream's SSRC.
    pub ssrc: u32,
    /// Packets whose payload is exactly one of ours.
    pub matched: usize,
    /// Packets that were pure G.711 silence (0xFF / 0x7F), tolerated as jitter-buffer fill.
    pub silence: usize,
}

/// Checks echoed packets against `sent_per_call` packets played per call on `calls` calls.
///
/// Per SSRC: every packet is PT 0 with a 160-byte payload; a payload is either exactly
/// [`pcap::payload_for`]`(i)` or pure silence; the `i`s strictly increase (in order, no
/// duplicates); sequence numbers strictly increase; at least `min_ratio` of the played packets
/// came back. Returns the streams, or a message saying what is wrong.
///
/// `max_concealed_ratio` bounds frames that are neither ours nor silence in the middle of a
/// stream: 0 for a single call on an idle loopback (nothing is lost, so nothing may be
/// concealed); a small share under load, where the adaptive jitter buffer may insert a frame
/// to grow its delay when it measures jitter.
pub fn verify_echo(
    packets: &[RtpPacket],
    calls: usize,
    sent_per_call: usize,
    min_ratio: f64,
    max_concealed_ratio: f64,
) -> Result<Vec<EchoStream>, String> {
    let mut by_ssrc: BTreeMap<u32, Vec<&RtpPacket>> = BTreeMap::new();
    for packet in packets {
        by_ssrc.entry(packet.ssrc).or_default().push(packet);
    }
    if by_ssrc.len() != calls {
        return Err(format!(
            "{} echoed streams (SSRCs), expected {calls}",
            by_ssrc.len()
        ));
    }
    let needed = (sent_per_call as f64 * min_ratio).ceil() as usize;
    let mut streams = Vec::new();
    for (ssrc, packets) in by_ssrc {
        let mut stream = EchoStream {
            ssrc,
            ..EchoStream::default()
        };
        let mut last_index: Option<usize> = None;
        let mut last_seq: Option<u16> = None;
        let mut tail_concealment: Vec<u16> = Vec::new();
        let mut mid_stream_concealed = 0usize;
        for packet in packets {
            if packet.payload_type != 0 {
                return Err(format!(
                    "ssrc {ssrc:#x}: payload type {}",
                    packet.payload_type
                ));
            }
            if packet.payload.len() != pcap::PAYLOAD_LEN {
                return Err(format!(
                    "ssrc {ssrc:#x}: payload of {} bytes",
                    packet.payload.len()
                ));
            }
            if let Some(prev) = last_seq {
                let step = packet.seq.wrapping_sub(prev);
                if step == 0 || step > 0x8000 {
                    return Err(format!("ssrc {ssrc:#x}: seq {} after {prev}", packet.seq));
                }
            }
            last_seq = Some(packet.seq);
            if packet.payload.iter().all(|&b| b == 0xff || b == 0x7f) {
                stream.silence += 1;
                continue;
            }
            let Some(index) = pcap::index_of(&packet.payload) else {
                // Jitter-buffer concealment is only acceptable once the caller's stream has
                // ended (the fade-out of the last frame, at most 60 ms); mid-stream on loopback
                // nothing is lost, so any altered frame there is a fault.
                tail_concealment.push(packet.seq);
                continue;
            };
            if let Some(seq) = tail_concealment.first() {
                mid_stream_concealed += tail_concealment.len();
                let allowed = (sent_per_call as f64 * max_concealed_ratio).floor() as usize;
                if mid_stream_concealed > allowed {
                    return Err(format!(
                        "ssrc {ssrc:#x} seq {seq}: payload is neither ours nor silence, \
                         mid-stream ({mid_stream_concealed} such frames, {allowed} allowed)"
                    ));
                }
                tail_concealment.clear();
            }
            if index >= sent_per_call || last_index.is_some_and(|last| index <= last) {
                return Err(format!(
                    "ssrc {ssrc:#x}: packet {index} after {last_index:?}"
                ));
            }
            last_index = Some(index);
            stream.matched += 1;
        }
        // The fade-out of the last frame is up to 60 ms (3 frames, 4 with a partial one).
        // Frames concealed beyond that are late frames the buffer gave up on, so they
        // count against the same allowance as mid-stream concealment.
        let allowed = (sent_per_call as f64 * max_concealed_ratio).floor() as usize;
        let beyond_fade = tail_concealment.len().saturating_sub(4);
        if mid_stream_concealed + beyond_fade > allowed {
            return Err(format!(
                "ssrc {ssrc:#x}: {} concealed frames after the stream ended (fade-out is 60 ms) \
                 and {mid_stream_concealed} mid-stream, {allowed} beyond the fade-out allowed",
                tail_concealment.len()
            ));
        }
        if stream.matched < needed {
            return Err(format!(
                "ssrc {ssrc:#x}: {} of {sent_per_call} packets echoed, need {needed}",
                stream.matched
            ));
        }
        streams.push(stream);
    }
    Ok(streams)
}

/// A PCMU RTP packet (RFC 3550 §5.1, no CSRC, no extension) with `payload`.
pub fn rtp_packet(seq: u16, timestamp: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x80, 0];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&timestamp.to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// RTCP packet types (RFC 3550 §12.1).
pub const RTCP_SR: u8 = 200;
/// Receiver report.
pub const RTCP_RR: u8 = 201;
/// Source description.
pub const RTCP_SDES: u8 = 202;

/// The packets of a compound RTCP datagram as (packet type, bytes), or `None` when a header or
/// length does not add up (RFC 3550 §6.1: version 2, lengths in 32-bit words minus one).
pub fn split_rtcp(datagram: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut packets = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let header = rest.get(..4)?;
        if header[0] >> 6 != 2 {
            return None;
        }
        let words = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let packet = rest.get(..(words + 1) * 4)?;
        packets.push((header[1], packet));
        rest = &rest[packet.len()..];
    }
    (!packets.is_empty()).then_some(packets)
}

/// The sender SSRC of an SR or RR (the word after the header).
pub fn rtcp_sender_ssrc(packet: &[u8]) -> Option<u32> {
    let bytes = packet.get(4..8)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// A report block of an SR or RR: whom it is about and its LSR (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source reported on.
    pub ssrc: u32,
    /// Middle 32 bits of the NTP time of the last SR received from that source; 0 if none.
    pub last_sr: u32,
}

/// The report blocks of an SR (`packet_type` 200) or RR (201).
pub fn report_blocks(packet_type: u8, packet: &[u8]) -> Vec<ReportBlock> {
    let count = usize::from(packet.first().copied().unwrap_or(0) & 0x1f);
    let start = if packet_type == RTCP_SR { 28 } else { 8 };
    (0..count)
        .filter_map(|i| {
            let block = packet.get(start + 24 * i..start + 24 * (i + 1))?;
            let word = |at: usize| {
                u32::from_be_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]])
            };
            Some(ReportBlock {
                ssrc: word(0),
                last_sr: word(16),
            })
        })
        .collect()
}

/// The (SSRC, CNAME) of every chunk of an SDES packet that carries a CNAME item.
pub fn sdes_cnames(packet: &[u8]) -> Vec<(u32, String)> {
    let count = usize::from(packet.first().copied().unwrap_or(0) & 0x1f);
    let mut out = Vec::new();
    let mut at = 4;
    for _ in 0..count {
        let Some(ssrc) = packet.get(at..at + 4) else {
            break;
        };
        let ssrc = u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]);
        at += 4;
        // Items until the zero type; the chunk then pads to a 32-bit boundary.
        while let Some(&kind) = packet.get(at) {
            if kind == 0 {
                at = (at + 4) & !3;
                break;
            }
            let Some(&len) = packet.get(at + 1) else {
                return out;
            };
            let Some(text) = packet.get(at + 2..at + 2 + usize::from(len)) else {
                return out;
            };
            if kind == 1 {
                out.push((ssrc, String::from_utf8_lossy(text).into_owned()));
            }
            at += 2 + usize::from(len);
        }
    }
    out
}

fn rtcp_header(count: u8, packet_type: u8, body_len: usize) -> Vec<u8> {
    let words = ((4 + body_len) / 4 - 1) as u16;
    let mut header = vec![0x80 | count, packet_type];
    header.extend_from_slice(&words.to_be_bytes());
    header
}

fn report_block_bytes(about: u32, highest_seq: u32) -> Vec<u8> {
    let mut block = about.to_be_bytes().to_vec();
    block.extend_from_slice(&[0, 0, 0, 0]); // nothing lost
    block.extend_from_slice(&highest_seq.to_be_bytes());
    block.extend_from_slice(&[0; 12]); // jitter, LSR, DLSR
    block
}

/// An SDES packet with one chunk: `ssrc` and its CNAME.
pub fn sdes_packet(ssrc: u32, cname: &str) -> Vec<u8> {
    let mut chunk = ssrc.to_be_bytes().to_vec();
    chunk.push(1);
    chunk.push(cname.len() as u8);
    chunk.extend_from_slice(cname.as_bytes());
    chunk.push(0);
    while chunk.len() % 4 != 0 {
        chunk.push(0);
    }
    let mut packet = rtcp_header(1, RTCP_SDES, chunk.len());
    packet.extend(chunk);
    packet
}

/// A compound SR + SDES from `ssrc` sent at NTP time `ntp`, reporting on `about` (its SSRC and
/// the highest sequence number received).
pub fn sender_report(ssrc: u32, ntp: u64, about: (u32, u32), packets: u32) -> Vec<u8> {
    let mut body = ssrc.to_be_bytes().to_vec();
    body.extend_from_slice(&ntp.to_be_bytes());
    body.extend_from_slice(&(packets * 160).to_be_bytes()); // RTP timestamp
    body.extend_from_slice(&packets.to_be_bytes());
    body.extend_from_slice(&(packets * 160).to_be_bytes()); // octets
    body.extend(report_block_bytes(about.0, about.1));
    let mut packet = rtcp_header(1, RTCP_SR, body.len());
    packet.extend(body);
    packet.extend(sdes_packet(ssrc, "caller@test"));
    packet
}

/// A compound RR + SDES from `ssrc` reporting on `about`.
pub fn receiver_report(ssrc: u32, about: (u32, u32)) -> Vec<u8> {
    let mut body = ssrc.to_be_bytes().to_vec();
    body.extend(report_block_bytes(about.0, about.1));
    let mut packet = rtcp_header(1, RTCP_RR, body.len());
    packet.extend(body);
    packet.extend(sdes_packet(ssrc, "caller@test"));
    packet
}
