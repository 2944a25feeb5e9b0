//! Stream framing: a TCP/TLS byte stream → SIP messages (RFC 3261 §18.3, §7.5; RFC 5626 §3.5.1).
//!
//! ```text
//!            push(bytes)
//!   ┌──────────────────────────┐
//!   ▼                          │
//! Buffering ──"\r\n\r\n" first──► KeepAlive (ping; answer "\r\n")
//!   │ header section + Content-Length octets complete
//!   ├──────────────────────────► Message(bytes) → message::parse(.., Transport::Tcp, ..)
//!   │ header section or message over the limit, missing/invalid Content-Length
//!   └──────────────────────────► Err(FramingError) → Failed (close the connection)
//! ```
//!
//! Sans-IO: [`StreamFramer::push`] the bytes of each read, then drain
//! [`StreamFramer::poll_message`] until it returns None. A lone CRLF before a start line (a
//! keep-alive pong, or padding) is skipped (§7.5). On a stream Content-Length is mandatory
//! (§18.3): without it the end of the message cannot be known, so that is a framing error.
//! After an error the framer stays failed and yields nothing more: the stream cannot be
//! resynchronised and the connection must be closed.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

use super::front_end::{canonical_header_name, find, parse_content_length};

/// What a stream produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One complete message's bytes, to be handed to `message::parse(.., Transport::Tcp, ..)`.
    Message(Bytes),
    /// An RFC 5626 keep-alive ping (`CRLF CRLF`): answer with a pong (`CRLF`).
    KeepAlive,
}

/// Why the stream cannot be framed; the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FramingError {
    /// The header section grew past the limit without ending.
    #[error("header section exceeds {limit} octets")]
    HeaderTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// Header section plus Content-Length exceeds the limit.
    #[error("message of {size} octets exceeds the limit of {limit}")]
    MessageTooLarge {
        /// Header section + declared body.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// No Content-Length: the end of the message cannot be known (RFC 3261 §18.3).
    #[error("message without Content-Length on a stream")]
    MissingContentLength,
    /// Content-Length is not a number or several values conflict.
    #[error("invalid Content-Length on a stream")]
    InvalidContentLength,
}

/// Splits a byte stream into messages and keep-alives (see the module doc).
#[derive(Debug)]
pub struct StreamFramer {
    buffer: BytesMut,
    max_bytes: usize,
    /// Bytes of `buffer` already searched for the end of the header section.
    scanned: usize,
    failed: bool,
}

impl StreamFramer {
    /// A framer for one connection; `max_bytes` is `Settings::max_message_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        StreamFramer {
            buffer: BytesMut::new(),
            max_bytes,
            scanned: 0,
            failed: false,
        }
    }

    /// Append the bytes of one read; then drain [`StreamFramer::poll_message`].
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buffer.extend_from_slice(bytes);
        }
    }

    /// Whether a framing error was reported (the connection must be closed).
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// The next complete frame, None when more bytes are needed (or after an error).
    pub fn poll_message(&mut self) -> Option<Result<Frame, FramingError>> {
        if self.failed {
            return None;
        }
        loop {
            if self.buffer.starts_with(b"\r\n\r\n") {
                self.buffer.advance(4);
                self.scanned = 0;
                return Some(Ok(Frame::KeepAlive));
            }
            // Wait: "\r\n" or "\r\n\r" may be the start of a ping split across reads.
            if b"\r\n\r".starts_with(&self.buffer) {
                return None;
            }
            // RFC 3261 §7.5: CRLFs before the start line are ignored (a pong, or padding).
            if self.buffer.starts_with(b"\r\n") {
                self.buffer.advance(2);
                self.scanned = 0;
                continue;
            }
            if self.buffer.starts_with(b"\n") {
                self.buffer.advance(1);
                self.scanned = 0;
                continue;
            }
            break;
        }
        let search_from = self.scanned.saturating_sub(3);
        let Some(end) = find(&self.buffer[search_from..], b"\r\n\r\n").map(|i| i + search_from + 4)
        else {
            self.scanned = self.buffer.len();
            if self.buffer.len() > self.max_bytes {
                return Some(Err(self.fail(FramingError::HeaderTooLarge {
                    limit: self.max_bytes,
                })));
            }
            return None;
        };
        if end > self.max_bytes {
            return Some(Err(self.fail(FramingError::HeaderTooLarge {
                limit: self.max_bytes,
            })));
        }
        let body_length = match content_length(&self.buffer[..end]) {
            Ok(length) => length,
            Err(error) => return Some(Err(self.fail(error))),
        };
        let size = end.saturating_add(body_length);
        if size > self.max_bytes {
            return Some(Err(self.fail(FramingError::MessageTooLarge {
                size,
                limit: self.max_bytes,
            })));
        }
        if self.buffer.len() < size {
            return None;
        }
        self.scanned = 0;
        Some(Ok(Frame::Message(self.buffer.split_to(size).freeze())))
    }

    fn fail(&mut self, error: FramingError) -> FramingError {
        self.failed = true;
        self.buffer.clear();
        error
    }
}

/// The Content-Length of a header section (compact `l`, folding and `name :` tolerated).
fn content_length(head: &[u8]) -> Result<usize, FramingError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n").skip(1).peekable();
    let mut found: Option<usize> = None;
    while let Some(line) = lines.next() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if line.starts_with([' ', '\t']) || canonical_header_name(name.trim()) != "Content-Length" {
            continue;
        }
        let mut value = value.to_string();
        while let Some(continuation) = lines.next_if(|l| l.starts_with([' ', '\t'])) {
            value.push_str(continuation);
        }
        let length = parse_content_length(&value).ok_or(FramingError::InvalidContentLength)?;
        if found.is_some_and(|previous| previous != length) {
            return Err(FramingError::InvalidContentLength);
        }
        found = Some(length);
    }
    found.ok_or(FramingError::MissingContentLength)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::sip::message::{parse, Message, Transport};

    const OPTIONS: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\
        From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    const MESSAGE: &[u8] = b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK2\r\n\
        From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: d\r\nCSeq: 2 MESSAGE\r\nl : 5\r\n\r\nhello";

    fn drain(framer: &mut StreamFramer) -> Vec<Result<Frame, FramingError>> {
        std::iter::from_fn(|| framer.poll_message()).collect()
    }

    #[test]
    fn waits_for_partial_message() {
        let mut framer = StreamFramer::new(65_535);
        framer.push(&MESSAGE[..40]);
        assert!(drain(&mut framer).is_empty());
        framer.push(&MESSAGE[40..MESSAGE.len() - 2]);
        assert!(drain(&mut framer).is_empty());
        framer.push(&MESSAGE[MESSAGE.len() - 2..]);
        assert_eq!(
            drain(&mut framer),
            [Ok(Frame::Message(Bytes::from_static(MESSAGE)))]
        );
    }

    #[test]
    fn splits_pipelined_messages_and_keepalives() {
        let mut framer = StreamFramer::new(65_535);
        let stream = [MESSAGE, b"\r\n\r\n", OPTIONS, b"\r\n", MESSAGE].concat();
        framer.push(&stream);
        let frames = drain(&mut framer);
        assert_eq!(
            frames,
            [
                Ok(Frame::Message(Bytes::from_static(MESSAGE))),
                Ok(Frame::KeepAlive),
                Ok(Frame::Message(Bytes::from_static(OPTIONS))),
                Ok(Frame::Message(Bytes::from_static(MESSAGE))),
            ]
        );
        let Ok(Frame::Message(bytes)) = &frames[0] else {
            unreachable!()
        };
        let Ok(Message::Request(request)) = parse(bytes, Transport::Tcp, 65_535) else {
            panic!("framed message does not parse")
        };
        assert_eq!(request.body(), b"hello");
    }

    #[test]
    fn keepalive_split_across_reads_is_one_ping() {
        let mut framer = StreamFramer::new(65_535);
        framer.push(b"\r\n");
        assert!(drain(&mut framer).is_empty());
        framer.push(b"\r\n");
        assert_eq!(drain(&mut framer), [Ok(Frame::KeepAlive)]);
    }

    #[test]
    fn missing_content_length_fails_the_stream() {
        let mut framer = StreamFramer::new(65_535);
        framer.push(b"OPTIONS sip:a@b SIP/2.0\r\nTo: x\r\n\r\n");
        assert_eq!(
            drain(&mut framer),
            [Err(FramingError::MissingContentLength)]
        );
        assert!(framer.is_failed());
        framer.push(OPTIONS);
        assert!(drain(&mut framer).is_empty());
    }

    #[test]
    fn invalid_or_conflicting_content_length_fails() {
        for head in [
            &b"A sip:a SIP/2.0\r\nContent-Length: -1\r\n\r\n"[..],
            b"A sip:a SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            let mut framer = StreamFramer::new(65_535);
            framer.push(head);
            assert_eq!(
                drain(&mut framer),
                [Err(FramingError::InvalidContentLength)]
            );
        }
    }

    #[test]
    fn oversized_header_or_body_fails() {
        let mut framer = StreamFramer::new(100);
        framer.push(&[b'A'; 101]);
        assert_eq!(
            drain(&mut framer),
            [Err(FramingError::HeaderTooLarge { limit: 100 })]
        );
        let mut framer = StreamFramer::new(100);
        framer.push(b"A sip:a SIP/2.0\r\nl: 1000\r\n\r\n");
        assert!(matches!(
            drain(&mut framer)[..],
            [Err(FramingError::MessageTooLarge { limit: 100, .. })]
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_splits_yield_the_same_frames(cuts in proptest::collection::vec(0usize..400, 0..12)) {
            let stream = [MESSAGE, b"\r\n\r\n", OPTIONS, b"\r\n", MESSAGE, OPTIONS].concat();
            let mut whole = StreamFramer::new(65_535);
            whole.push(&stream);
            let expected = drain(&mut whole);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut framer = StreamFramer::new(65_535);
            let mut frames = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                framer.push(&stream[start..cut]);
                frames.extend(drain(&mut framer));
                start = cut;
            }
            prop_assert_eq!(frames.len(), 5);
            prop_assert_eq!(frames, expected);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut framer = StreamFramer::new(256);
            for chunk in chunks {
                framer.push(&chunk);
                let _ = drain(&mut framer);
            }
        }
    }
}
