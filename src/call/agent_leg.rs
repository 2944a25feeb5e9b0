//! Bridged transfers (B2BUA): voxgate calls the transfer destination itself, plays ringback
//! to the caller while it rings, and on answer relays RTP between the two legs.
//!
//! TODO(#5): the agent leg.

use super::transfer::BridgeResult;
use super::{Call, Ctx};

impl Call {
    /// Starts calling `target` (a SIP URI) for a bridged transfer, with `headers` added to the
    /// INVITE; the outcome goes to [`Call::bridge_result`].
    pub(super) fn start_bridge(
        &mut self,
        ctx: &mut Ctx<'_>,
        target: &str,
        headers: Vec<(&'static str, String)>,
    ) {
        let _ = (target, headers);
        self.bridge_result(
            ctx,
            BridgeResult::Failed {
                status: 501,
                reason: "Not Implemented".to_owned(),
            },
        );
    }
}
