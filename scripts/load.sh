#!/usr/bin/env bash
# Load test for BENCHMARKS.md: N concurrent echo calls (default 100; try 500) from SIPp to a
# release voxgate over loopback, each playing PCMU RTP for DURATION seconds (default 30).
# Prints CPU per call (% of one core, from /proc/PID/stat utime+stime over the steady window),
# RSS per call (VmRSS slope between 0 and N calls), INVITE→200 response time (SIPp rtd) and
# voxgate's RTP counters. Loopback only; everything started here is stopped on exit.
# Usage: scripts/load.sh [CALLS] [DURATION_SECS]. Needs root for RTP (SIPp raw sockets);
# without root it measures signalling only.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

CALLS=${1:-100}
DURATION=${2:-30}
RATE=${RATE:-50}
SIP_PORT=${SIP_PORT:-25060}
METRICS_PORT=${METRICS_PORT:-25061}
SIPP_PORT=${SIPP_PORT:-25070}
SIPP_MEDIA=${SIPP_MEDIA:-25080}
RTP_MIN=${RTP_MIN:-10000}
RTP_MAX=$((RTP_MIN + 4 * CALLS + 100))

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    echo "load.sh: logs were in $work (removed)"
    rm -rf "$work"
}
trap cleanup EXIT

metric() { # name [label-filter] -> sum of matching samples
    exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT"
    printf 'GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n' >&3
    awk -v name="$1" -v filter="${2:-}" '
        $0 ~ "^" name "({| )" && (filter == "" || index($0, filter)) { sum += $NF } END { printf "%g\n", sum + 0 }' <&3
    exec 3<&-
}
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

echo "load.sh: building release voxgate"
cargo build --release --bin voxgate
audio=1
[[ $(id -u) -eq 0 ]] || { audio=0; echo "load.sh: not root: no RTP (SIPp needs raw sockets), signalling only"; }
scenario=uac_basic.xml
if ((audio)); then
    scenario=uac_echo.xml
    VOXGATE_PCAP_OUT="$work/audio.pcap" VOXGATE_PCAP_PACKETS=$((DURATION * 50)) \
        cargo test -q --test interop_load -- --ignored --exact write_load_pcap >/dev/null
fi

cat >"$work/voxgate.toml" <<TOML
[sip]
listen = "127.0.0.1:$SIP_PORT"
[rtp]
port_min = $RTP_MIN
port_max = $RTP_MAX
[calls]
max_concurrent = $((CALLS + 10))
drain_timeout_secs = 2
[metrics]
listen = "127.0.0.1:$METRICS_PORT"
[[trunks]]
name = "pbx"
allow_from = ["127.0.0.0/8"]
[[agents]]
name = "echo"
kind = "echo"
[[routes]]
agent = "echo"
TOML

RUST_LOG=${RUST_LOG:-warn} target/release/voxgate serve --config "$work/voxgate.toml" >"$work/voxgate.log" 2>&1 &
vg=$!
pids+=("$vg")
for _ in $(seq 150); do
    metric voxgate_calls_active >/dev/null 2>&1 && break
    kill -0 "$vg" 2>/dev/null || { cat "$work/voxgate.log"; exit 1; }
    sleep 0.1
done
rss0=$(rss_kb "$vg")

(cd "$work" && exec sipp -sf "$root/tests/sipp/$scenario" -i 127.0.0.1 -mi 127.0.0.1 \
    -p "$SIPP_PORT" -cp $((SIPP_PORT + 1)) -mp "$SIPP_MEDIA" -m "$CALLS" -l "$CALLS" -r "$RATE" \
    -d $((DURATION * 1000)) -timeout $((DURATION + CALLS / RATE + 60))s -timeout_error \
    -max_socket 2000 -nostdin -trace_rtt -rtt_freq 1 -trace_err -error_file "$work/errors.log" \
    "127.0.0.1:$SIP_PORT" >"$work/sipp.out" 2>&1) &
sp=$!
pids+=("$sp")

# Steady window: all calls up, then half the call duration (bounded).
up_deadline=$((SECONDS + CALLS / RATE + 30))
until [[ $(metric voxgate_calls_active) -ge $CALLS ]]; do
    ((SECONDS < up_deadline)) || { echo "load.sh: only $(metric voxgate_calls_active) calls came up" >&2; break; }
    sleep 0.2
done
window=$((DURATION / 2))
clk=$(getconf CLK_TCK)
t0=$(ticks "$vg")
sleep "$window"
t1=$(ticks "$vg")
active=$(metric voxgate_calls_active)
rssn=$(rss_kb "$vg")

sipp_rc=0
wait "$sp" || sipp_rc=$?
sleep 1

rtt=$(cat "$work"/*_rtt.csv 2>/dev/null | awk -F';' 'NR > 1 && $2 ~ /^[0-9.]+$/ { print $2 }' | sort -n)
n=$(printf '%s\n' "$rtt" | grep -c . || true)
avg=$(printf '%s\n' "$rtt" | awk '{ s += $1 } END { if (NR) printf "%.2f", s / NR; else print "n/a" }')
p95=$(printf '%s\n' "$rtt" | awk -v n="$n" 'n && NR == int(n * 0.95 + 0.999) { print; exit }')

cpu_pct=$(awk -v d=$((t1 - t0)) -v clk="$clk" -v w="$window" 'BEGIN { printf "%.1f", 100 * d / clk / w }')
per_call=$(awk -v c="$cpu_pct" -v n="$active" 'BEGIN { if (n > 0) printf "%.3f", c / n; else print "n/a" }')
rss_slope=$(awk -v a="$rss0" -v b="$rssn" -v n="$active" 'BEGIN { if (n > 0) printf "%.3f", (b - a) / 1024 / n; else print "n/a" }')

cat <<TABLE

| metric | value |
|---|---|
| calls (concurrent, measured) | $CALLS ($active) |
| RTP | $([[ $audio == 1 ]] && echo "PCMU 20 ms, ${DURATION} s per call" || echo "none (not root)") |
| SIPp exit code | $sipp_rc (0 = every call succeeded) |
| voxgate CPU, steady ${window} s | ${cpu_pct} % of one core |
| CPU per call | ${per_call} % of one core |
| RSS idle / at $active calls | $((rss0 / 1024)) MB / $((rssn / 1024)) MB |
| RSS per call | ${rss_slope} MB |
| INVITE→200 avg / p95 (n=$n) | ${avg} ms / ${p95:-n/a} ms |
| RTP packets in / out | $(metric voxgate_rtp_packets_total 'direction="in"') / $(metric voxgate_rtp_packets_total 'direction="out"') |
| RTP packets lost (voxgate) | $(metric voxgate_rtp_packets_lost_total) |
| calls total | $(metric voxgate_calls_total) |
TABLE
exit "$sipp_rc"
