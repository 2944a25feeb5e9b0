//! The open-file limit: every call holds sockets (RTP and RTCP, the agent's WebSocket, a bridged
//! transfer's media), every SIP TCP connection one more. Many systems start services with a soft
//! limit of 1024 and a far higher hard limit; voxgate raises the soft limit to the hard one at
//! start-up (as Go's runtime and nginx's `worker_rlimit_nofile` do) and warns when even that is
//! short of what the configuration may need, instead of failing calls with "Too many open files"
//! under load.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use crate::config::Settings;

/// Files a call may hold at once: RTP and RTCP to the caller, the same to a bridged transfer's
/// destination, and the agent's WebSocket (or an HTTP tool's connection).
const FILES_PER_CALL: u64 = 5;

/// Files voxgate holds whatever its load: listeners, the SIP UDP sockets, the media threads'
/// timers and epoll sets, the metrics endpoint, DNS, standard streams.
const FILES_BASE: u64 = 64;

/// Linux's default `fs.nr_open`: no soft limit above it can be set without raising that first.
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// The open files `settings` may need at full load: `calls.max_concurrent` calls and
/// `sip.tcp_max_connections` connections from peers.
pub fn files_needed(settings: &Settings) -> u64 {
    let calls = u64::try_from(settings.calls.max_concurrent).unwrap_or(u64::MAX);
    let connections = u64::try_from(settings.sip.tcp_max_connections).unwrap_or(u64::MAX);
    FILES_BASE
        .saturating_add(calls.saturating_mul(FILES_PER_CALL))
        .saturating_add(connections)
}

/// The soft limit to set: the hard one (capped at what the kernel accepts by default) when the
/// soft limit is lower.
pub fn raised_limit(soft: u64, hard: u64) -> Option<u64> {
    let target = hard.min(NR_OPEN_DEFAULT);
    (soft < target).then_some(target)
}

/// Applies [`raised_limit`] to this process and logs what it did, and whether the limit is
/// short of [`files_needed`].
pub fn raise_for(settings: &Settings) {
    let need = files_needed(settings);
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit");
            return;
        }
    };
    let mut limit = soft;
    if let Some(raised) = raised_limit(soft, hard) {
        match setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = raised, "open-file limit raised");
                limit = raised;
            }
            Err(error) => {
                tracing::warn!(soft, hard, %error, "cannot raise the open-file limit")
            }
        }
    }
    if limit < need {
        tracing::warn!(
            limit,
            need,
            max_concurrent = settings.calls.max_concurrent,
            tcp_max_connections = settings.sip.tcp_max_connections,
            "open-file limit is below what calls.max_concurrent calls and \
             sip.tcp_max_connections connections may need: calls may fail with \
             \"Too many open files\" under load; raise the hard limit (systemd LimitNOFILE, \
             ulimit -Hn) or lower those settings"
        );
    } else {
        tracing::debug!(limit, need, "open-file limit suffices");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        // systemd's defaults: soft 1024, hard 524288.
        assert_eq!(raised_limit(1_024, 524_288), Some(524_288));
        assert_eq!(raised_limit(256, 1_024), Some(1_024));
    }

    #[test]
    fn a_limit_already_at_the_hard_one_is_left_alone() {
        assert_eq!(raised_limit(65_536, 65_536), None);
    }

    #[test]
    fn an_unlimited_hard_limit_is_capped_at_what_the_kernel_takes() {
        assert_eq!(raised_limit(1_024, u64::MAX), Some(1 << 20));
        assert_eq!(raised_limit(1 << 20, u64::MAX), None);
    }

    #[test]
    fn the_need_counts_calls_and_peer_connections() {
        let mut settings = crate::testkit::settings();
        settings.calls.max_concurrent = 100;
        settings.sip.tcp_max_connections = 1_024;
        assert_eq!(files_needed(&settings), 64 + 500 + 1_024);
    }
}
