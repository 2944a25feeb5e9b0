#!/usr/bin/env bash
# Benchmarks of the OpenAI Realtime bridge for BENCHMARKS.md (issue #3), against the local
# Realtime stand-in (tests/common/realtime), release build, loopback only:
#   1. realtime_latency: probe calls only; added latency up/down, deliberate delays
#   2. realtime_load:    CALLS concurrent SIPp calls + 4 probe calls; CPU and RSS per call,
#                        INVITE→180, inter-append intervals, latency under load
#   3. realtime_barge_in: barge-in → last interrupted frame at the caller
#   4. criterion benches of the per-frame paths (benches/realtime.rs)
# Everything is measured and printed as Markdown tables; nothing is asserted about speed.
# Usage: scripts/bench_realtime.sh [CALLS] [DURATION_SECS]   (defaults 100 and 60; at most 170 s)
# Needs root (SIPp plays RTP from raw sockets). Other knobs: VOXGATE_BENCH_PROBES,
# VOXGATE_BENCH_RATE (SIPp calls per second), VOXGATE_BENCH_MEDIA=stream|pcap (how SIPp plays
# the load calls' RTP: rtp_stream from one UDP socket, the default, or play_pcap_audio from one
# raw socket per call, which charges voxgate's sends a walk over every raw socket), VOXGATE_BENCH_PERF=<file> (perf record voxgate
# during the load window; disturbs that run's CPU figures), VOXGATE_BENCH_ONLY=latency|load|
# barge_in|criterion.
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=${1:-100}
DURATION=${2:-60}
ONLY=${VOXGATE_BENCH_ONLY:-}

[[ $(id -u) -eq 0 ]] || echo "bench_realtime.sh: not root: SIPp cannot play RTP; the load run will fail" >&2

bench() { # test name, then env assignments
    local name=$1
    shift
    echo
    echo "## $name ($(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg))"
    env "$@" cargo test -q --release --test bench_realtime -- --ignored --nocapture \
        --test-threads=1 --exact "$name" 2>&1 | grep -E '^(\||#|only )' || {
        echo "bench_realtime.sh: $name failed" >&2
        return 1
    }
}

cargo build -q --release --bin voxgate
cargo test -q --release --test bench_realtime --no-run
if [[ -z $ONLY || $ONLY == latency ]]; then
    bench realtime_latency VOXGATE_BENCH_SECS="$DURATION"
fi
if [[ -z $ONLY || $ONLY == load ]]; then
    bench realtime_load VOXGATE_BENCH_SECS="$DURATION" VOXGATE_BENCH_CALLS="$CALLS"
fi
if [[ -z $ONLY || $ONLY == barge_in ]]; then
    bench realtime_barge_in VOXGATE_BENCH_SECS="$DURATION"
fi
if [[ -z $ONLY || $ONLY == criterion ]]; then
    echo
    echo "## criterion (benches/realtime.rs)"
    cargo bench -q --bench realtime -- --output-format bencher 2>&1 | grep -E '^test ' || true
fi
