//! SDP offer/answer (RFC 3264) on input from the PBX: the input as an offer to answer, then as
//! the answer to voxgate's own offer (late offer, hold), then a re-offer on the same session.
//!
//! Checked besides "never panics": every answer voxgate writes is accepted, as an offer, by a
//! fresh negotiator (it is well-formed SDP with a codec voxgate itself takes), unless it refuses
//! the stream (port 0).

use std::net::{IpAddr, Ipv4Addr};

use voxgate::media::sdp::{LocalMedia, Negotiator};

fn local() -> LocalMedia {
    LocalMedia::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 40_000)
}

fn check_answer(answer: &[u8]) {
    let text = String::from_utf8_lossy(answer);
    if text.contains("m=audio 0 ") {
        return;
    }
    if let Err(error) = Negotiator::new(local()).handle_offer(answer) {
        panic!("voxgate's answer is refused as an offer ({error:?}):\n{text}");
    }
}

/// One input.
pub fn run(data: &[u8]) {
    let mut answerer = Negotiator::new(local());
    if let Ok((answer, _)) = answerer.handle_offer(data) {
        check_answer(&answer);
        // The same offer again (a re-INVITE that changes nothing), then on hold.
        answerer.set_hold(true);
        if let Ok((answer, _)) = answerer.handle_offer(data) {
            check_answer(&answer);
        }
        let _ = answerer.create_offer();
        let _ = answerer.handle_answer(data);
    }
    let mut offerer = Negotiator::new(local());
    let _ = offerer.create_offer();
    let _ = offerer.handle_answer(data);
    let _ = offerer.negotiated();
}
