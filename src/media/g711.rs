//! G.711 μ-law (PCMU) and A-law (PCMA) codecs, silence, and tones (ITU-T G.711; RFC 3551 §4.5.14).
//!
//! Decoding is a 256-entry table per law; encoding is the ITU-T G.191 reference algorithm
//! (`ulaw_compress` / `alaw_compress`), precomputed at compile time into tables indexed by the
//! significant bits of the 16-bit sample (14 for μ-law, 12 for A-law), so `encode(decode(code))`
//! returns `code` for every code except μ-law 0x7F ("negative zero"), which encodes back to 0xFF.
//!
//! There is no state machine here. In: 16-bit linear PCM or G.711 octets, any length (a 20 ms
//! frame at 8 kHz is [`FRAME_SAMPLES`] = 160 octets). Out: the other representation.
//! [`ToneGenerator`] produces encoded frames of a sine tone (ringback, beeps) with an optional
//! on/off cadence, phase-continuous across frames.

use std::f64::consts::TAU;

use bytes::Bytes;

use crate::media::G711;

/// Samples (and octets) in one 20 ms G.711 frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;

/// The G.711 clock rate in Hz (RFC 3551 §4.5.14).
pub const CLOCK_RATE: u32 = 8_000;

/// μ-law code for zero signal.
pub const PCMU_SILENCE: u8 = 0xFF;

/// A-law code for (near) zero signal: decodes to +8, the smallest positive step.
pub const PCMA_SILENCE: u8 = 0xD5;

/// μ-law code → 16-bit linear (G.191 `ulaw_expand`).
const fn ulaw_expand(code: u8) -> i16 {
    let inverted = !code;
    let exponent = ((inverted >> 4) & 0x07) as i32;
    let mantissa = (inverted & 0x0F) as i32;
    let step = 4 << (exponent + 1);
    let magnitude = (0x80 << exponent) + step * mantissa + step / 2 - 4 * 33;
    if code < 0x80 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// A-law code → 16-bit linear (G.191 `alaw_expand`).
const fn alaw_expand(code: u8) -> i16 {
    let ix = ((code ^ 0x55) & 0x7F) as i32;
    let exponent = ix >> 4;
    let mut mantissa = ix & 0x0F;
    if exponent > 0 {
        mantissa += 16;
    }
    mantissa = (mantissa << 4) + 0x08;
    if exponent > 1 {
        mantissa <<= exponent - 1;
    }
    if code > 127 {
        mantissa as i16
    } else {
        -mantissa as i16
    }
}

/// 16-bit linear → μ-law code (G.191 `ulaw_compress`).
const fn ulaw_compress(sample: i16) -> u8 {
    let x = sample as i32;
    // G.191 takes the one's complement of negative samples, so -1 maps to "negative zero".
    let mut magnitude = if x < 0 {
        ((!x) >> 2) + 33
    } else {
        (x >> 2) + 33
    };
    if magnitude > 0x1FFF {
        magnitude = 0x1FFF;
    }
    let mut i = magnitude >> 6;
    let mut segment = 1;
    while i != 0 {
        segment += 1;
        i >>= 1;
    }
    let high = 8 - segment;
    let low = 0x0F - ((magnitude >> segment) & 0x0F);
    let mut out = (high << 4) | low;
    if x >= 0 {
        out |= 0x80;
    }
    out as u8
}

/// 16-bit linear → A-law code (G.191 `alaw_compress`).
const fn alaw_compress(sample: i16) -> u8 {
    let x = sample as i32;
    let mut ix = if x < 0 { (!x) >> 4 } else { x >> 4 };
    if ix > 15 {
        let mut exponent = 1;
        while ix > 16 + 15 {
            ix >>= 1;
            exponent += 1;
        }
        ix -= 16;
        ix += exponent << 4;
    }
    if x >= 0 {
        ix |= 0x80;
    }
    (ix ^ 0x55) as u8
}

const ULAW_DECODE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = ulaw_expand(code as u8);
        code += 1;
    }
    table
};

const ALAW_DECODE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = alaw_expand(code as u8);
        code += 1;
    }
    table
};

/// μ-law encode depends only on `sample >> 2` (14 bits), since `(!x) >> 2 == !(x >> 2)`.
static ULAW_ENCODE: [u8; 1 << 14] = {
    let mut table = [0u8; 1 << 14];
    let mut index = 0;
    while index < (1 << 14) {
        // Index is the low 14 bits of `sample >> 2`; rebuild a sample with those bits.
        let sample = ((index as i32) << 18 >> 16) as i16;
        table[index] = ulaw_compress(sample);
        index += 1;
    }
    table
};

/// A-law encode depends only on `sample >> 4` (12 bits).
static ALAW_ENCODE: [u8; 1 << 12] = {
    let mut table = [0u8; 1 << 12];
    let mut index = 0;
    while index < (1 << 12) {
        let sample = ((index as i32) << 20 >> 16) as i16;
        table[index] = alaw_compress(sample);
        index += 1;
    }
    table
};

/// Decodes one μ-law octet to 16-bit linear PCM.
#[inline]
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_DECODE[usize::from(code)]
}

/// Decodes one A-law octet to 16-bit linear PCM.
#[inline]
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_DECODE[usize::from(code)]
}

/// Encodes one 16-bit linear sample to μ-law (G.191 reference rounding).
#[inline]
pub fn linear_to_ulaw(sample: i16) -> u8 {
    ULAW_ENCODE[((sample >> 2) as u16 & 0x3FFF) as usize]
}

/// Encodes one 16-bit linear sample to A-law (G.191 reference rounding).
#[inline]
pub fn linear_to_alaw(sample: i16) -> u8 {
    ALAW_ENCODE[((sample >> 4) as u16 & 0x0FFF) as usize]
}

/// A G.711 codec keyed by law: sample and frame conversion plus the law's silence octet.
///
/// Copyable and stateless; build one per stream with [`Codec::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Codec {
    law: G711,
}

impl Codec {
    /// The codec for `law`.
    pub fn new(law: G711) -> Self {
        Self { law }
    }

    /// Which G.711 law this codec speaks.
    pub fn law(&self) -> G711 {
        self.law
    }

    /// The octet that decodes to (near) zero: PCMU 0xFF, PCMA 0xD5.
    pub fn silence_byte(&self) -> u8 {
        match self.law {
            G711::Pcmu => PCMU_SILENCE,
            G711::Pcma => PCMA_SILENCE,
        }
    }

    /// A payload of `samples` silence octets (160 for one 20 ms frame).
    pub fn silence(&self, samples: usize) -> Bytes {
        Bytes::from(vec![self.silence_byte(); samples])
    }

    /// Decodes one octet.
    #[inline]
    pub fn decode_sample(&self, code: u8) -> i16 {
        match self.law {
            G711::Pcmu => ulaw_to_linear(code),
            G711::Pcma => alaw_to_linear(code),
        }
    }

    /// Encodes one sample.
    #[inline]
    pub fn encode_sample(&self, sample: i16) -> u8 {
        match self.law {
            G711::Pcmu => linear_to_ulaw(sample),
            G711::Pcma => linear_to_alaw(sample),
        }
    }

    /// Decodes `codes` into `pcm`; converts `min(codes.len(), pcm.len())` samples and returns
    /// that count. One table per law, chosen once per frame.
    pub fn decode_frame(&self, codes: &[u8], pcm: &mut [i16]) -> usize {
        let table = match self.law {
            G711::Pcmu => &ULAW_DECODE,
            G711::Pcma => &ALAW_DECODE,
        };
        for (out, &code) in pcm.iter_mut().zip(codes) {
            *out = table[usize::from(code)];
        }
        codes.len().min(pcm.len())
    }

    /// Encodes `pcm` into `codes`; converts `min(pcm.len(), codes.len())` samples and returns
    /// that count.
    pub fn encode_frame(&self, pcm: &[i16], codes: &mut [u8]) -> usize {
        match self.law {
            G711::Pcmu => {
                for (out, &sample) in codes.iter_mut().zip(pcm) {
                    *out = linear_to_ulaw(sample);
                }
            }
            G711::Pcma => {
                for (out, &sample) in codes.iter_mut().zip(pcm) {
                    *out = linear_to_alaw(sample);
                }
            }
        }
        pcm.len().min(codes.len())
    }

    /// Decodes a whole payload into a new vector.
    pub fn decode(&self, codes: &[u8]) -> Vec<i16> {
        let mut pcm = vec![0; codes.len()];
        self.decode_frame(codes, &mut pcm);
        pcm
    }

    /// Encodes a whole PCM buffer into a new payload.
    pub fn encode(&self, pcm: &[i16]) -> Bytes {
        let mut codes = vec![0; pcm.len()];
        self.encode_frame(pcm, &mut codes);
        Bytes::from(codes)
    }
}

/// A phase-continuous sine tone, encoded into G.711 frames, with an optional on/off cadence.
///
/// Call [`ToneGenerator::next_frame`] once per ptime; the phase and cadence carry over frames,
/// so consecutive frames join without clicks.
#[derive(Debug, Clone)]
pub struct ToneGenerator {
    codec: Codec,
    frequency_hz: f64,
    amplitude: f64,
    phase: f64,
    samples_per_frame: usize,
    cadence: Option<(u64, u64)>,
    position: u64,
}

impl ToneGenerator {
    /// A continuous tone of `frequency_hz` with peak `amplitude` (0..=32767), in 20 ms frames.
    pub fn new(codec: Codec, frequency_hz: f64, amplitude: i16) -> Self {
        Self {
            codec,
            frequency_hz,
            amplitude: f64::from(amplitude.max(0)),
            phase: 0.0,
            samples_per_frame: FRAME_SAMPLES,
            cadence: None,
            position: 0,
        }
    }

    /// A short 440 Hz beep tone at about -10 dBm0 (continuous; stop pulling frames to end it).
    pub fn beep(codec: Codec) -> Self {
        Self::new(codec, 440.0, 8_000)
    }

    /// European ringback (ETSI ES 201 970): 425 Hz, 1 s on / 4 s off.
    pub fn ringback_425(codec: Codec) -> Self {
        Self::new(codec, 425.0, 5_000).with_cadence_ms(1_000, 4_000)
    }

    /// North American ringback is 440+480 Hz; this is its 440 Hz part, 2 s on / 4 s off.
    pub fn ringback_440(codec: Codec) -> Self {
        Self::new(codec, 440.0, 5_000).with_cadence_ms(2_000, 4_000)
    }

    /// Adds an on/off cadence (silence while off); the tone restarts at zero phase each cycle.
    pub fn with_cadence_ms(mut self, on_ms: u64, off_ms: u64) -> Self {
        let per_ms = u64::from(CLOCK_RATE) / 1_000;
        self.cadence = Some((on_ms * per_ms, off_ms * per_ms));
        self
    }

    /// Sets the frame length in samples (default 160 = 20 ms).
    pub fn with_samples_per_frame(mut self, samples: usize) -> Self {
        self.samples_per_frame = samples;
        self
    }

    /// The next frame of linear samples.
    pub fn next_pcm(&mut self) -> Vec<i16> {
        let step = TAU * self.frequency_hz / f64::from(CLOCK_RATE);
        let mut pcm = Vec::with_capacity(self.samples_per_frame);
        for _ in 0..self.samples_per_frame {
            let on = match self.cadence {
                Some((on, off)) if on + off > 0 => {
                    let at = self.position % (on + off);
                    if at == 0 {
                        self.phase = 0.0;
                    }
                    at < on
                }
                _ => true,
            };
            let sample = if on {
                (self.amplitude * self.phase.sin()).round() as i16
            } else {
                0
            };
            pcm.push(sample);
            self.phase = (self.phase + step) % TAU;
            self.position += 1;
        }
        pcm
    }

    /// The next encoded frame.
    pub fn next_frame(&mut self) -> Bytes {
        let pcm = self.next_pcm();
        self.codec.encode(&pcm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_round_trips_every_code_except_negative_zero() {
        for code in 0..=255u8 {
            let back = linear_to_ulaw(ulaw_to_linear(code));
            if code == 0x7F {
                // 0x7F and 0xFF both decode to 0; 0 encodes to the positive zero 0xFF.
                assert_eq!(ulaw_to_linear(0x7F), 0);
                assert_eq!(back, 0xFF);
            } else {
                assert_eq!(back, code, "code {code:#04x}");
            }
        }
    }

    #[test]
    fn alaw_round_trips_every_code() {
        for code in 0..=255u8 {
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "code {code:#04x}"
            );
        }
    }

    #[test]
    fn table_encoders_match_reference_for_every_sample() {
        for sample in i16::MIN..=i16::MAX {
            assert_eq!(linear_to_ulaw(sample), ulaw_compress(sample), "{sample}");
            assert_eq!(linear_to_alaw(sample), alaw_compress(sample), "{sample}");
        }
    }

    #[test]
    fn decodes_known_values() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x80), 32_124);
        assert_eq!(ulaw_to_linear(0x00), -32_124);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_linear(0x7E), -8);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32_256);
        assert_eq!(alaw_to_linear(0x2A), -32_256);
    }

    #[test]
    fn encodes_known_values() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_ulaw(1_000), 0xCE);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
        assert_eq!(linear_to_alaw(1_000), 0xFA);
    }

    #[test]
    fn silence_bytes_decode_to_near_zero() {
        let pcmu = Codec::new(G711::Pcmu);
        let pcma = Codec::new(G711::Pcma);
        assert_eq!(pcmu.silence_byte(), 0xFF);
        assert_eq!(pcma.silence_byte(), 0xD5);
        assert_eq!(pcmu.decode_sample(pcmu.silence_byte()), 0);
        assert_eq!(pcma.decode_sample(pcma.silence_byte()), 8);
        assert_eq!(pcmu.encode_sample(0), 0xFF);
        assert_eq!(pcma.encode_sample(0), 0xD5);
        assert_eq!(pcmu.silence(FRAME_SAMPLES).len(), 160);
    }

    #[test]
    fn frame_helpers_convert_whole_frames() {
        for law in [G711::Pcmu, G711::Pcma] {
            let codec = Codec::new(law);
            let codes: Vec<u8> = (0..FRAME_SAMPLES).map(|i| (i * 7 % 256) as u8).collect();
            let mut pcm = [0i16; FRAME_SAMPLES];
            assert_eq!(codec.decode_frame(&codes, &mut pcm), FRAME_SAMPLES);
            for (code, sample) in codes.iter().zip(pcm) {
                assert_eq!(sample, codec.decode_sample(*code));
            }
            let mut back = [0u8; FRAME_SAMPLES];
            assert_eq!(codec.encode_frame(&pcm, &mut back), FRAME_SAMPLES);
            for (original, again) in codes.iter().zip(back) {
                assert_eq!(codec.decode_sample(*original), codec.decode_sample(again));
            }
        }
    }

    #[test]
    fn frame_helpers_stop_at_shorter_buffer() {
        let codec = Codec::new(G711::Pcmu);
        let mut pcm = [1i16; 4];
        assert_eq!(codec.decode_frame(&[0xFF, 0xFF], &mut pcm), 2);
        assert_eq!(pcm, [0, 0, 1, 1]);
    }

    #[test]
    fn tone_has_expected_frequency_and_level() {
        let codec = Codec::new(G711::Pcmu);
        let mut tone = ToneGenerator::new(codec, 425.0, 8_000);
        let pcm: Vec<i16> = (0..50)
            .flat_map(|_| codec.decode(&tone.next_frame()))
            .collect();
        assert_eq!(pcm.len(), 8_000);
        let crossings = pcm.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        assert!(
            (424..=426).contains(&crossings),
            "{crossings} upward crossings in 1 s"
        );
        let peak = pcm.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        assert!((7_600..=8_400).contains(&peak), "peak {peak}");
    }

    #[test]
    fn tone_is_phase_continuous_across_frames() {
        let mut tone = ToneGenerator::new(Codec::new(G711::Pcma), 440.0, 10_000);
        let a = tone.next_pcm();
        let b = tone.next_pcm();
        let max_step = 2.0 * std::f64::consts::PI * 440.0 / 8_000.0 * 10_000.0;
        let join = (i32::from(b[0]) - i32::from(a[159])).abs();
        assert!(f64::from(join) <= max_step + 1.0, "join step {join}");
    }

    #[test]
    fn ringback_follows_its_cadence() {
        let codec = Codec::new(G711::Pcmu);
        let mut tone = ToneGenerator::ringback_425(codec);
        let frames: Vec<Bytes> = (0..250).map(|_| tone.next_frame()).collect();
        let is_silent = |f: &Bytes| f.iter().all(|&c| codec.decode_sample(c).abs() < 50);
        assert!(!is_silent(&frames[0]) && !is_silent(&frames[49]));
        assert!(frames[50..250].iter().all(is_silent));
        assert!(
            !is_silent(&tone.next_frame()),
            "second cycle starts after 5 s"
        );
    }
}
