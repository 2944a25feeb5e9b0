//! SIP parsing as `io/` does it: the input as one UDP datagram, and as a TCP stream cut into
//! reads at input-chosen places, each framed message parsed as TCP.
//!
//! Checked besides "never panics": a request that parses serialises to bytes that parse again,
//! and a refused request still yields what a 400/501 needs whenever its Via, From, To, Call-ID
//! and CSeq were readable (the fallback never panics either).

use voxgate::sip::framing::{Frame, StreamFramer};
use voxgate::sip::message::{self, Message, Transport};

const MAX: usize = 4_096;

fn parse_checked(bytes: &[u8], transport: Transport) {
    if let Ok(Message::Request(request)) = message::parse(bytes, transport, MAX) {
        let again = request.to_bytes();
        if let Err(rejected) = message::parse(&again, Transport::Udp, usize::MAX >> 1) {
            panic!(
                "a parsed request serialises to bytes the parser refuses ({:?}):\n{}",
                rejected.error,
                String::from_utf8_lossy(&again)
            );
        }
    }
}

/// One input.
pub fn run(data: &[u8]) {
    // The first byte picks the read sizes of the stream.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    parse_checked(rest, Transport::Udp);
    let mut framer = StreamFramer::new(MAX);
    let step = usize::from(cut % 64) + 1;
    for chunk in rest.chunks(step) {
        framer.push(chunk);
        while let Some(frame) = framer.poll_message() {
            match frame {
                Ok(Frame::Message(bytes)) => {
                    assert!(bytes.len() <= MAX, "a frame longer than max_message_bytes");
                    parse_checked(&bytes, Transport::Tcp);
                }
                Ok(Frame::KeepAlive) | Err(_) => {}
            }
        }
    }
}
