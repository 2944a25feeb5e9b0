//! INVITEs from sources no trunk allows: how often to say so in the log.
//!
//! A gateway on a public address is found by SIP scanners within hours, and each sends
//! thousands of INVITEs. One warning per INVITE buries everything else in the log (and a
//! journald rate limit then drops the lines that matter). So the first refusal of a source is
//! logged, then at most one line per source every [`UnknownSources::WINDOW`], saying how many
//! were refused since. Every refusal is counted (`voxgate_unknown_source_invites_total`), so
//! nothing is lost to a dashboard. At most [`UnknownSources::TRACKED`] sources are remembered;
//! beyond that (a scan from many addresses at once) the others' refusals are only counted.
//! Sans-IO: `now` comes with every refusal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Whether and how to log one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The source's first refusal that is logged.
    First,
    /// The first since a line was logged for the source [`UnknownSources::WINDOW`] or more
    /// ago: `more` were refused since that line, `over` that long.
    Again {
        /// Refusals not logged since the last line.
        more: u64,
        /// Since the last line.
        over: Duration,
    },
    /// Counted only.
    Quiet,
}

/// When each source was last logged, and what was not logged since.
#[derive(Debug, Default)]
pub struct UnknownSources {
    sources: HashMap<IpAddr, Logged>,
    refused: u64,
}

#[derive(Debug, Clone, Copy)]
struct Logged {
    at: Instant,
    since: u64,
}

impl UnknownSources {
    /// A source is logged at most once in this long.
    pub const WINDOW: Duration = Duration::from_secs(60);

    /// Sources remembered at once.
    pub const TRACKED: usize = 4_096;

    /// Counts a refusal of `source` at `now`; says whether to log it.
    pub fn refused(&mut self, now: Instant, source: IpAddr) -> Report {
        self.refused += 1;
        if let Some(logged) = self.sources.get_mut(&source) {
            let over = now.saturating_duration_since(logged.at);
            if over < Self::WINDOW {
                logged.since += 1;
                return Report::Quiet;
            }
            let more = logged.since;
            *logged = Logged { at: now, since: 0 };
            return Report::Again { more, over };
        }
        if self.sources.len() >= Self::TRACKED {
            // Sources whose window has passed would be logged again anyway: forget them. A
            // count not yet logged for them stays in the metric.
            self.sources
                .retain(|_, logged| now.saturating_duration_since(logged.at) < Self::WINDOW);
            if self.sources.len() >= Self::TRACKED {
                return Report::Quiet;
            }
        }
        self.sources.insert(source, Logged { at: now, since: 0 });
        Report::First
    }

    /// Refusals counted since start-up.
    pub fn total(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, ms, secs};

    fn ip(last: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0xcb00_7100 + last))
    }

    #[test]
    fn a_source_is_logged_first_then_at_most_once_a_minute_with_what_was_not() {
        let t0 = testkit::t0();
        let mut sources = UnknownSources::default();
        assert_eq!(sources.refused(t0, ip(9)), Report::First);
        for n in 1..=500 {
            assert_eq!(sources.refused(t0 + ms(n * 100), ip(9)), Report::Quiet);
        }
        // Another source is its own.
        assert_eq!(sources.refused(t0 + secs(10), ip(10)), Report::First);
        assert_eq!(
            sources.refused(t0 + secs(61), ip(9)),
            Report::Again {
                more: 500,
                over: secs(61)
            }
        );
        assert_eq!(sources.refused(t0 + secs(62), ip(9)), Report::Quiet);
        assert_eq!(
            sources.refused(t0 + secs(200), ip(9)),
            Report::Again {
                more: 1,
                over: secs(139)
            }
        );
        assert_eq!(sources.total(), 1 + 500 + 1 + 1 + 1 + 1);
    }

    #[test]
    fn sources_beyond_the_bound_are_counted_and_room_is_made_as_windows_pass() {
        let t0 = testkit::t0();
        let mut sources = UnknownSources::default();
        let tracked = UnknownSources::TRACKED as u32;
        for n in 0..tracked {
            assert_eq!(sources.refused(t0, ip(n)), Report::First);
        }
        assert_eq!(sources.refused(t0 + secs(1), ip(tracked)), Report::Quiet);
        assert_eq!(sources.sources.len(), UnknownSources::TRACKED);
        // A minute later the old windows have passed: the new source gets its line, the old
        // ones are forgotten and will be logged as new.
        let later = t0 + UnknownSources::WINDOW;
        assert_eq!(sources.refused(later, ip(tracked)), Report::First);
        assert_eq!(sources.sources.len(), 1);
        assert_eq!(sources.refused(later, ip(0)), Report::First);
        assert_eq!(sources.total(), u64::from(tracked) + 3);
    }
}
