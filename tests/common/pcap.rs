//! A PCMU RTP stream as a pcap file for SIPp's `play_pcap_audio`, with payloads that say which
//! packet they are, so echoed audio can be checked byte for byte and in order.
//!
//! Packet `i` carries 160 bytes (20 ms of PCMU): two index digits then a ramp, every byte in
//! `0x10..0x70`, so no payload is ever G.711 silence (0xFF / 0x7F) and none equals another.

use std::io::Write;
use std::path::Path;

/// RTP payload bytes per packet (20 ms of 8 kHz G.711).
pub const PAYLOAD_LEN: usize = 160;
const DIGIT_BASE: u8 = 0x10;
const DIGITS: usize = 0x60;

/// The payload of packet `index` (< 9216, i.e. about three minutes).
pub fn payload_for(index: usize) -> [u8; PAYLOAD_LEN] {
    assert!(
        index < DIGITS * DIGITS,
        "packet index {index} too large for the pattern"
    );
    let mut payload = [0u8; PAYLOAD_LEN];
    payload[0] = DIGIT_BASE + (index / DIGITS) as u8;
    payload[1] = DIGIT_BASE + (index % DIGITS) as u8;
    for (j, byte) in payload.iter_mut().enumerate().skip(2) {
        *byte = DIGIT_BASE + ((index * 7 + j) % DIGITS) as u8;
    }
    payload
}

/// The packet index a payload made by [`payload_for`] carries, if it is exactly such a payload.
pub fn index_of(payload: &[u8]) -> Option<usize> {
    // Every payload, made once: comparing against a table keeps the load script's sink (a
    // debug build) ahead of 25,000 packets a second.
    static PAYLOADS: std::sync::OnceLock<Vec<[u8; PAYLOAD_LEN]>> = std::sync::OnceLock::new();
    let digit = |b: u8| {
        (DIGIT_BASE..DIGIT_BASE + DIGITS as u8)
            .contains(&b)
            .then(|| usize::from(b - DIGIT_BASE))
    };
    let index = digit(*payload.first()?)? * DIGITS + digit(*payload.get(1)?)?;
    let payloads = PAYLOADS.get_or_init(|| (0..DIGITS * DIGITS).map(payload_for).collect());
    (payloads.get(index)?[..] == *payload).then_some(index)
}

/// Writes the payloads of `packets` packets back to back: raw PCMU for SIPp's `rtp_stream`,
/// which cuts it into 160-byte frames, so each frame is exactly [`payload_for`]`(i)`.
pub fn write_pcmu_raw(path: &Path, packets: usize) {
    let audio: Vec<u8> = (0..packets).flat_map(payload_for).collect();
    std::fs::write(path, audio).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Writes `packets` RTP packets (PT 0, SSRC 0x5eed0001, seq from 1000, timestamp step 160,
/// marker on the first, 20 ms apart) as Ethernet/IPv4/UDP frames 127.0.0.1:10000 →
/// 127.0.0.1:20000. SIPp rewrites addresses and ports when it plays the file.
pub fn write_pcmu_pcap(path: &Path, packets: usize) {
    write_pcmu_pcap_from(path, 0, packets);
}

/// [`write_pcmu_pcap`] whose packet `i` carries [`payload_for`]`(first + i)`: a second party's
/// audio, told apart from the first's by index.
pub fn write_pcmu_pcap_from(path: &Path, first: usize, packets: usize) {
    write_pcmu_pcap_cut(path, first, packets, PAYLOAD_LEN);
}

/// The audio of `frames` numbered 20 ms frames ([`payload_for`]`(first + i)` back to back) cut
/// into packets of `packet_len` bytes (the last one shorter if it does not divide), each
/// `packet_len / 8` ms after the one before with the timestamp stepping as much: a sender whose
/// packet size is its own (10 or 30 ms) whatever `a=ptime` says.
pub fn write_pcmu_pcap_cut(path: &Path, first: usize, frames: usize, packet_len: usize) {
    let audio: Vec<u8> = (first..first + frames).flat_map(payload_for).collect();
    let packets: Vec<&[u8]> = audio.chunks(packet_len).collect();
    let mut out = Vec::with_capacity(24 + audio.len() + packets.len() * 70);
    // Global header: magic, v2.4, thiszone 0, sigfigs 0, snaplen, LINKTYPE_ETHERNET.
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (i, payload) in packets.iter().enumerate() {
        let mut rtp = Vec::with_capacity(12 + packet_len);
        rtp.push(0x80);
        rtp.push(if i == 0 { 0x80 } else { 0x00 }); // marker on the first packet, PT 0 (PCMU)
        rtp.extend_from_slice(&(1000u16.wrapping_add(i as u16)).to_be_bytes());
        rtp.extend_from_slice(&((i * packet_len) as u32).to_be_bytes());
        rtp.extend_from_slice(&0x5eed_0001u32.to_be_bytes());
        rtp.extend_from_slice(payload);
        let udp_len = 8 + rtp.len();
        let mut udp = Vec::with_capacity(udp_len);
        udp.extend_from_slice(&10_000u16.to_be_bytes());
        udp.extend_from_slice(&20_000u16.to_be_bytes());
        udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
        udp.extend_from_slice(&0u16.to_be_bytes()); // no UDP checksum (allowed for IPv4)
        udp.extend_from_slice(&rtp);
        let ip_len = 20 + udp.len();
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&(i as u16).to_be_bytes());
        let checksum = ipv4_checksum(&ip);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        ip.extend_from_slice(&udp);
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&ip);
        // 8 samples per ms at 8 kHz.
        let micros = (i * packet_len) as u64 * 1000 / 8;
        out.extend_from_slice(&((1_700_000_000 + micros / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((micros % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    let mut file = std::fs::File::create(path).expect("create pcap");
    file.write_all(&out).expect("write pcap");
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
