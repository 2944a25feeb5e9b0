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
