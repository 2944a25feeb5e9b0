//! Media as sans-IO pieces: SDP offer/answer, RTP, the jitter buffer, playout, RTCP, G.711 and
//! the RTP inactivity timeout.

pub mod dtmf;
pub mod g711;
pub mod inactivity;
pub mod jitter;
pub mod playout;
pub mod rtcp;
pub mod rtp;
pub mod sdp;

use bytes::Bytes;

/// RTP synchronisation source identifier (RFC 3550 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ssrc(pub u32);

/// RTP sequence number; wraps at 2^16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqNo(pub u16);

/// RTP media timestamp in clock-rate units; wraps at 2^32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RtpTimestamp(pub u32);

/// The fields of one received or sent RTP packet that media code works with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPacket {
    /// Sender's SSRC.
    pub ssrc: Ssrc,
    /// Sequence number.
    pub seq: SeqNo,
    /// Media timestamp (8 kHz for G.711 and telephone-event).
    pub timestamp: RtpTimestamp,
    /// Marker bit: start of a talkspurt for audio.
    pub marker: bool,
    /// Payload type number.
    pub payload_type: u8,
    /// The codec payload (160 bytes per 20 ms for G.711).
    pub payload: Bytes,
}

/// The G.711 variants voxgate carries end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum G711 {
    /// μ-law, static payload type 0.
    Pcmu,
    /// A-law, static payload type 8.
    Pcma,
}
