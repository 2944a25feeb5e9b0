//! One call: a dialog, its media and its agent, as a sans-IO state machine.
pub mod route;
