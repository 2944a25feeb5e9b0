//! The only async code: sockets, timers, tasks and HTTP around the sans-IO machines.
#![allow(clippy::disallowed_methods)]
