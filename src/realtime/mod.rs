//! OpenAI Realtime (GA), sans-IO: [`events`] are the wire shapes, [`session`] the protocol rules
//! of one call's session. `io/realtime_ws.rs` carries the frames.

pub mod events;
pub mod session;

pub use session::{RealtimeSession, END_CALL_TOOL};
