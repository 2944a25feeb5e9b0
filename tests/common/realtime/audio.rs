//! Test audio for the Realtime stand-in: µ-law frames that say which reply and which frame they
//! are, so a test can find them again in the RTP payloads the caller receives.
//!
//! Frame `i` of [`tagged_audio`]`(_, tag)` is 160 bytes (20 ms of PCMU):
//!
//! ```text
//! byte 0      0x80 | tag >> 4           byte 1      0x90 | tag & 0x0f
//! bytes 2..5  0xa0 + 6-bit digits of i (most significant first, i < 2^18 ≈ 87 minutes)
//! bytes 5..   0xe0 + (i·7 + tag·3 + j) mod 16
//! ```
//!
//! Every byte is in `0x80..=0xef`: never µ-law silence (0xff / 0x7f), and disjoint from the
//! caller-side payloads of [`super::super::pcap`] (all bytes in `0x10..0x70`), so model audio and
//! echoed caller audio can never be mistaken for each other.

/// Bytes per 20 ms PCMU frame.
pub const FRAME_LEN: usize = 160;
/// PCMU bytes per millisecond (8 kHz, one byte per sample).
pub const PCMU_BYTES_PER_MS: usize = 8;
/// Frames [`tagged_audio`] can number (three 6-bit digits).
pub const MAX_FRAMES: usize = 1 << 18;

const INDEX_BASE: u8 = 0xa0;
const RAMP_BASE: u8 = 0xe0;

/// `frames` recognisable µ-law frames (160 bytes each) carrying `tag` and their index.
pub fn tagged_audio(frames: usize, tag: u8) -> Vec<u8> {
    assert!(
        frames <= MAX_FRAMES,
        "tagged_audio: {frames} frames, at most {MAX_FRAMES}"
    );
    (0..frames)
        .flat_map(|index| tagged_frame(index, tag))
        .collect()
}

/// Frame `index` of [`tagged_audio`]`(_, tag)`.
pub fn tagged_frame(index: usize, tag: u8) -> [u8; FRAME_LEN] {
    let mut frame = [0u8; FRAME_LEN];
    frame[0] = 0x80 | (tag >> 4);
    frame[1] = 0x90 | (tag & 0x0f);
    frame[2] = INDEX_BASE + ((index >> 12) & 0x3f) as u8;
    frame[3] = INDEX_BASE + ((index >> 6) & 0x3f) as u8;
    frame[4] = INDEX_BASE + (index & 0x3f) as u8;
    for (j, byte) in frame.iter_mut().enumerate().skip(5) {
        *byte = RAMP_BASE + ((index * 7 + usize::from(tag) * 3 + j) % 16) as u8;
    }
    frame
}

/// The `(tag, index)` a 160-byte payload made by [`tagged_audio`] carries, if it is exactly such
/// a frame (any other payload, including caller-side pcap payloads and silence, gives `None`).
pub fn frame_index(payload: &[u8]) -> Option<(u8, usize)> {
    if payload.len() != FRAME_LEN {
        return None;
    }
    let nibble = |byte: u8, base: u8| (byte & 0xf0 == base).then_some(byte & 0x0f);
    let tag = (nibble(payload[0], 0x80)? << 4) | nibble(payload[1], 0x90)?;
    let digit = |byte: u8| {
        (INDEX_BASE..INDEX_BASE + 0x40)
            .contains(&byte)
            .then(|| usize::from(byte - INDEX_BASE))
    };
    let index = (digit(payload[2])? << 12) | (digit(payload[3])? << 6) | digit(payload[4])?;
    (payload == tagged_frame(index, tag)).then_some((tag, index))
}

/// Milliseconds of audio in `bytes` of PCMU.
pub fn pcmu_ms(bytes: usize) -> u64 {
    (bytes / PCMU_BYTES_PER_MS) as u64
}
