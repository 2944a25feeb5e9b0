//! Agents: who talks to the caller. For now the commissioning echo agent (like Asterisk's
//! `Echo()`): it plays the caller's jitter-buffered audio back after a fixed extra delay.
//!
//! Sans-IO: the media task hands it one frame per ptime tick and sends what it returns.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

/// The echo agent: a delay line of whole frames.
#[derive(Debug, Clone)]
pub struct EchoAgent {
    delay_frames: usize,
    line: VecDeque<Bytes>,
}

impl EchoAgent {
    /// An echo with `delay` of extra delay (rounded down to whole `ptime` frames).
    pub fn new(delay: Duration, ptime: Duration) -> EchoAgent {
        let delay_frames = if ptime.is_zero() {
            0
        } else {
            (delay.as_micros() / ptime.as_micros()) as usize
        };
        EchoAgent {
            delay_frames,
            line: VecDeque::with_capacity(delay_frames + 1),
        }
    }

    /// Takes the frame heard from the caller this tick (`None` when nothing was heard) and
    /// returns the frame to play back, if any.
    pub fn handle_frame(&mut self, heard: Option<Bytes>) -> Option<Bytes> {
        if let Some(frame) = heard {
            self.line.push_back(frame);
        } else if !self.line.is_empty() {
            // Keep the delay line moving through gaps so the delay stays fixed.
            self.line.push_back(Bytes::new());
        }
        if self.line.len() > self.delay_frames {
            self.line.pop_front().filter(|frame| !frame.is_empty())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_frames_unchanged_without_delay() {
        let mut echo = EchoAgent::new(Duration::ZERO, Duration::from_millis(20));
        let frame = Bytes::from(vec![7u8; 160]);
        assert_eq!(echo.handle_frame(Some(frame.clone())), Some(frame));
        assert_eq!(echo.handle_frame(None), None);
    }

    #[test]
    fn delays_by_whole_frames_and_keeps_the_delay_through_gaps() {
        let mut echo = EchoAgent::new(Duration::from_millis(40), Duration::from_millis(20));
        let frame = |n: u8| Some(Bytes::from(vec![n; 160]));
        assert_eq!(echo.handle_frame(frame(1)), None);
        assert_eq!(echo.handle_frame(frame(2)), None);
        assert_eq!(echo.handle_frame(None), frame(1));
        assert_eq!(echo.handle_frame(frame(3)), frame(2));
        assert_eq!(echo.handle_frame(None), None);
        assert_eq!(echo.handle_frame(None), frame(3));
    }
}
