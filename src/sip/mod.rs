//! SIP (RFC 3261) as sans-IO state machines. Messages are rsip types behind [`message`].

pub mod auth;
pub mod builder;
pub mod dialog;
pub mod endpoint;
pub mod framing;
pub mod front_end;
pub mod locate;
pub mod message;
pub mod refer;
pub mod registration;
pub mod session_timer;
pub mod transaction;
pub mod validate;
pub mod via;
