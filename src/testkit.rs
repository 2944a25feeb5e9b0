//! Test helpers shared by unit tests: a fixed origin of virtual time and duration shorthands.
#![allow(clippy::disallowed_methods)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A fixed instant to start virtual clocks from (the same for the whole test process).
#[allow(dead_code)]
pub fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// Milliseconds as a [`Duration`].
#[allow(dead_code)]
pub fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}
