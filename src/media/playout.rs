//! Outbound paced playout queue: the audio voxgate sends to the caller (RFC 3550 §5.1,
//! RFC 3551 §4.1 marker bit).
//!
//! ```text
//!            push(bytes) / finish_utterance()             pop() with frames queued
//!   Silent ───────────────────────────────────► Talking ──────────────────────────┐
//!     ▲   pop() → silence frame                   │  ▲                            │
//!     └───────────────────── queue empty at pop() ┘  └── frame (first one: marker)┘
//!   flush() (barge-in) from any state: drop everything queued, back to Silent.
//! ```
//!
//! In: G.711 octets of the negotiated codec in chunks of any length (`push`), end-of-utterance
//! (`finish_utterance`, pads the trailing partial frame with silence), barge-in (`flush`).
//! Out: exactly one [`PlayoutFrame`] per `pop()`, which the RTP sender calls once per ptime tick.
//! An empty queue yields a silence frame: sending on keeps NAT pinholes open and the far jitter
//! buffer steady. The first real frame after silence carries the marker bit (RFC 3551 §4.1).
//! [`PlayoutQueue::played`] counts audio actually popped (not pushed), sample-exact, so a
//! barge-in can tell the agent how much of an item the caller heard.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::media::g711::{Codec, CLOCK_RATE};
use crate::media::G711;

/// One frame for the RTP sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayoutFrame {
    /// The G.711 payload, always one ptime long.
    pub payload: Bytes,
    /// RTP marker bit: first frame of a talkspurt (RFC 3551 §4.1).
    pub marker: bool,
    /// True when the queue was empty and this is filler silence.
    pub is_silence: bool,
    /// The tag the audio was pushed with (0 for untagged audio and for silence).
    pub tag: u64,
    /// Real audio in the frame (less than a frame for a padded last frame; zero for silence).
    pub audio: Duration,
}

#[derive(Debug)]
struct QueuedFrame {
    payload: Bytes,
    /// Samples of real audio in the frame; fewer than a frame when padded by
    /// `finish_utterance`.
    audio_samples: usize,
    tag: u64,
}

/// Re-packetizes outbound audio into ptime frames and paces it out one frame per tick.
#[derive(Debug)]
pub struct PlayoutQueue {
    codec: Codec,
    samples_per_frame: usize,
    frames: VecDeque<QueuedFrame>,
    partial: BytesMut,
    silence: Bytes,
    talking: bool,
    played_samples: u64,
    partial_tag: u64,
    last_tag: Option<u64>,
}

impl PlayoutQueue {
    /// A queue for `law` that emits frames of `ptime` (20 ms → 160 octets; at least 1 sample).
    pub fn new(law: G711, ptime: Duration) -> Self {
        let codec = Codec::new(law);
        let samples_per_frame =
            ((ptime.as_micros() * u128::from(CLOCK_RATE) / 1_000_000) as usize).max(1);
        Self {
            codec,
            samples_per_frame,
            frames: VecDeque::new(),
            partial: BytesMut::with_capacity(samples_per_frame),
            silence: codec.silence(samples_per_frame),
            talking: false,
            played_samples: 0,
            partial_tag: 0,
            last_tag: None,
        }
    }

    /// Appends encoded audio of any length; whole frames become playable at once, the remainder
    /// waits for the next push or for [`PlayoutQueue::finish_utterance`].
    pub fn push(&mut self, bytes: &[u8]) {
        self.push_tagged(bytes, 0);
    }

    /// [`PlayoutQueue::push`] for audio of utterance `tag` (e.g. an agent's response item): a
    /// partial frame of another tag is finished first, the frames come back with their tag, and
    /// the first frame of a new tag carries the marker bit even without silence before it.
    pub fn push_tagged(&mut self, mut bytes: &[u8], tag: u64) {
        if !self.partial.is_empty() && self.partial_tag != tag {
            self.finish_utterance();
        }
        self.partial_tag = tag;
        if !self.partial.is_empty() {
            let take = (self.samples_per_frame - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() == self.samples_per_frame {
                let payload = self.partial.split().freeze();
                self.enqueue(payload, self.samples_per_frame, tag);
            }
        }
        let mut chunks = bytes.chunks_exact(self.samples_per_frame);
        for chunk in &mut chunks {
            self.enqueue(Bytes::copy_from_slice(chunk), self.samples_per_frame, tag);
        }
        self.partial.extend_from_slice(chunks.remainder());
    }

    /// Appends one encoded frame: like [`push`](Self::push), but a frame of exactly one ptime
    /// with nothing partial pending is queued as it is, without copying (the echo path).
    pub fn push_frame(&mut self, frame: Bytes) {
        if self.partial.is_empty() && frame.len() == self.samples_per_frame {
            self.partial_tag = 0;
            self.enqueue(frame, self.samples_per_frame, 0);
        } else {
            self.push(&frame);
        }
    }

    /// Ends the current utterance: a trailing partial frame is padded with silence and queued.
    pub fn finish_utterance(&mut self) {
        if self.partial.is_empty() {
            return;
        }
        let audio_samples = self.partial.len();
        self.partial
            .resize(self.samples_per_frame, self.codec.silence_byte());
        let payload = self.partial.split().freeze();
        self.enqueue(payload, audio_samples, self.partial_tag);
    }

    /// The frame to send this tick: queued audio, or silence when nothing complete is queued.
    pub fn pop(&mut self) -> PlayoutFrame {
        match self.frames.pop_front() {
            Some(frame) => {
                self.played_samples += frame.audio_samples as u64;
                let marker = !self.talking || self.last_tag != Some(frame.tag);
                self.talking = true;
                self.last_tag = Some(frame.tag);
                PlayoutFrame {
                    payload: frame.payload,
                    marker,
                    is_silence: false,
                    tag: frame.tag,
                    audio: samples_to_duration(frame.audio_samples as u64),
                }
            }
            // Nothing to say: the same silence as a paused tick.
            None => self.pause(),
        }
    }

    /// A tick at which nothing may be played (the caller holds the call): silence, and the queue
    /// stays as it is, so the audio is neither lost nor counted as played. The next real frame
    /// starts a new talkspurt (marker set).
    pub fn pause(&mut self) -> PlayoutFrame {
        self.talking = false;
        PlayoutFrame {
            payload: self.silence.clone(),
            marker: false,
            is_silence: true,
            tag: 0,
            audio: Duration::ZERO,
        }
    }

    /// Barge-in: drops everything queued (including a partial frame) and returns how much audio
    /// that was. The next real frame starts a new talkspurt (marker set).
    pub fn flush(&mut self) -> Duration {
        let dropped = self.queued();
        self.frames.clear();
        self.partial.clear();
        self.talking = false;
        dropped
    }

    /// Audio waiting to be sent, including a partial frame not yet finished.
    pub fn queued(&self) -> Duration {
        let samples: usize =
            self.frames.iter().map(|f| f.audio_samples).sum::<usize>() + self.partial.len();
        samples_to_duration(samples as u64)
    }

    /// True when no audio (not even a partial frame) is waiting.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.partial.is_empty()
    }

    /// Total real audio popped since creation (padding and filler silence excluded).
    pub fn played(&self) -> Duration {
        samples_to_duration(self.played_samples)
    }

    fn enqueue(&mut self, payload: Bytes, audio_samples: usize, tag: u64) {
        self.frames.push_back(QueuedFrame {
            payload,
            audio_samples,
            tag,
        });
    }
}

fn samples_to_duration(samples: u64) -> Duration {
    Duration::from_nanos(samples * 1_000_000_000 / u64::from(CLOCK_RATE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::ms;

    fn queue() -> PlayoutQueue {
        PlayoutQueue::new(G711::Pcmu, ms(20))
    }

    #[test]
    fn repacketizes_arbitrary_chunks_into_frames() {
        let mut q = queue();
        let audio: Vec<u8> = (0..400u32).map(|i| (i % 200) as u8).collect();
        q.push(&audio[..7]);
        q.push(&audio[7..170]);
        q.push(&audio[170..400]);
        let first = q.pop();
        let second = q.pop();
        assert_eq!(&first.payload[..], &audio[..160]);
        assert_eq!(&second.payload[..], &audio[160..320]);
        assert!(!first.is_silence && !second.is_silence);
        // 80 bytes remain partial: not sent until more audio or finish_utterance.
        assert!(q.pop().is_silence);
        assert_eq!(q.queued(), ms(10));
    }

    #[test]
    fn push_frame_queues_whole_frames_as_they_are_and_keeps_order_with_partials() {
        let mut q = queue();
        let frame = Bytes::from(vec![0x21; 160]);
        q.push_frame(frame.clone());
        let popped = q.pop();
        assert_eq!(popped.payload, frame);
        assert_eq!(
            popped.payload.as_ptr(),
            frame.as_ptr(),
            "a whole frame is not copied"
        );
        q.push(&[0x31; 100]);
        q.push_frame(Bytes::from(vec![0x32; 160]));
        let mut expected = vec![0x31; 100];
        expected.extend_from_slice(&[0x32; 60]);
        assert_eq!(
            &q.pop().payload[..],
            &expected[..],
            "joins the pending partial"
        );
        // 100 bytes of the second frame are left partial; a short frame joins them.
        q.push_frame(Bytes::from(vec![0x33; 10]));
        assert_eq!(q.queued(), Duration::from_micros(110 * 125));
    }

    #[test]
    fn empty_queue_sends_codec_silence() {
        let mut q = queue();
        let frame = q.pop();
        assert!(frame.is_silence && !frame.marker);
        assert_eq!(frame.payload.len(), 160);
        assert!(frame.payload.iter().all(|&b| b == 0xFF));
        let mut alaw = PlayoutQueue::new(G711::Pcma, ms(20));
        assert!(alaw.pop().payload.iter().all(|&b| b == 0xD5));
    }

    #[test]
    fn finish_utterance_pads_remainder_with_silence() {
        let mut q = PlayoutQueue::new(G711::Pcma, ms(20));
        q.push(&[0x11; 200]);
        q.finish_utterance();
        assert_eq!(q.pop().payload, Bytes::from(vec![0x11; 160]));
        let padded = q.pop();
        assert!(!padded.is_silence);
        assert_eq!(&padded.payload[..40], &[0x11; 40][..]);
        assert!(padded.payload[40..].iter().all(|&b| b == 0xD5));
        assert_eq!(padded.payload.len(), 160);
        assert_eq!(q.played(), ms(25));
        assert!(q.is_empty());
    }

    #[test]
    fn finish_utterance_without_remainder_adds_nothing() {
        let mut q = queue();
        q.push(&[0x22; 160]);
        q.finish_utterance();
        assert!(!q.pop().is_silence);
        assert!(q.pop().is_silence);
    }

    #[test]
    fn marker_on_first_frame_after_silence() {
        let mut q = queue();
        q.push(&[0x33; 320]);
        let markers: Vec<bool> = (0..2).map(|_| q.pop().marker).collect();
        assert_eq!(markers, [true, false]);
        assert!(!q.pop().marker, "silence frame never carries the marker");
        q.push(&[0x33; 160]);
        assert!(q.pop().marker, "new talkspurt after silence");
    }

    #[test]
    fn flush_drops_everything_and_reports_duration() {
        let mut q = queue();
        q.push(&[0x44; 160 * 5 + 40]);
        assert!(!q.pop().is_silence);
        assert_eq!(q.flush(), ms(85));
        assert!(q.is_empty());
        assert_eq!(q.queued(), Duration::ZERO);
        assert!(q.pop().is_silence);
        q.push(&[0x44; 160]);
        assert!(
            q.pop().marker,
            "audio after barge-in starts a new talkspurt"
        );
    }

    #[test]
    fn flush_marks_next_frame_even_without_silence_between() {
        let mut q = queue();
        q.push(&[0x55; 480]);
        q.pop();
        q.flush();
        q.push(&[0x56; 160]);
        assert!(q.pop().marker);
    }

    #[test]
    fn played_counts_popped_frames_not_pushed_bytes() {
        let mut q = queue();
        q.push(&[0x66; 160 * 10]);
        assert_eq!(q.played(), Duration::ZERO);
        for _ in 0..3 {
            q.pop();
        }
        assert_eq!(q.played(), ms(60));
        q.flush();
        q.pop();
        assert_eq!(
            q.played(),
            ms(60),
            "flushed and silence frames are not played audio"
        );
    }

    #[test]
    fn tagged_audio_keeps_tags_pads_at_a_tag_change_and_marks_each_utterance() {
        let mut q = queue();
        q.push_tagged(&[0x11; 200], 7);
        // A new tag finishes the 40-byte remainder of tag 7 as a padded frame.
        q.push_tagged(&[0x22; 160], 8);
        let first = q.pop();
        assert_eq!((first.tag, first.marker, first.audio), (7, true, ms(20)));
        let padded = q.pop();
        assert_eq!((padded.tag, padded.marker, padded.audio), (7, false, ms(5)));
        assert_eq!(&padded.payload[..40], &[0x11; 40][..]);
        assert!(padded.payload[40..].iter().all(|&b| b == 0xff));
        let next = q.pop();
        assert_eq!((next.tag, next.marker, next.audio), (8, true, ms(20)));
        let silence = q.pop();
        assert_eq!(
            (silence.tag, silence.is_silence, silence.audio),
            (0, true, Duration::ZERO)
        );
        assert_eq!(q.played(), ms(45));
    }

    #[test]
    fn queued_counts_frames_and_partial() {
        let mut q = queue();
        q.push(&[0x88; 160 * 2 + 8]);
        assert_eq!(q.queued(), ms(41));
        q.pop();
        assert_eq!(q.queued(), ms(21));
    }

    #[test]
    fn other_ptime_sets_frame_size() {
        let mut q = PlayoutQueue::new(G711::Pcmu, ms(30));
        q.push(&[0x99; 240]);
        assert_eq!(q.pop().payload.len(), 240);
        assert_eq!(q.pop().payload.len(), 240);
    }
}
