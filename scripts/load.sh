#!/usr/bin/env bash
# Load test for BENCHMARKS.md: N concurrent echo calls (default 100; try 500) from SIPp to a
# release voxgate over loopback, each playing PCMU RTP for DURATION seconds (default 30).
# Prints CPU per call (% of one core, from /proc/PID/stat utime+stime over the steady window),
# RSS per call (VmRSS slope between 0 and N calls), INVITE→200 response time (SIPp rtd) and
# voxgate's RTP counters. Loopback only; everything started here is stopped on exit.
#
# MEDIA selects how SIPp plays the caller's RTP:
# - stream (default): SIPp's rtp_stream sends every call's RTP from one ordinary UDP socket
#   (tests/sipp/uac_echo_stream.xml); the echo lands on that socket, unread. No root needed.
# - pcap: SIPp's play_pcap_audio (tests/sipp/uac_echo.xml), root only; an RTP sink
#   (tests/interop_load.rs load_rtp_sink) listens where voxgate echoes to and checks the echo
#   byte for byte. SIPp opens one raw UDP socket per call for it, and on loopback the kernel
#   offers every UDP packet voxgate sends to each of them inside voxgate's sendto: at 500 calls
#   that is about a fifth of voxgate's measured CPU, SIPp's cost, not voxgate's
#   (see BENCHMARKS.md). Use it to check the echo, stream to measure.
# - none: signalling only (uac_basic.xml).
# TRANSPORT selects how SIPp carries SIP:
# - udp (default);
# - tcp: every call's SIP over one TCP connection, as a PBX trunk over TCP does (SIPp -t t1);
# - tcp-per-call: one TCP connection per call (SIPp -t tn).
# Usage: [MEDIA=stream|pcap|none] [TRANSPORT=udp|tcp|tcp-per-call] scripts/load.sh [CALLS] [DURATION_SECS]
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
    exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT" || return 1
    printf 'GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n' >&3
    awk -v name="$1" -v filter="${2:-}" '
        $0 ~ "^" name "({| )" && (filter == "" || index($0, filter)) { sum += $NF } END { printf "%g\n", sum + 0 }' <&3
    exec 3<&-
}
mean_ms() { # histogram name -> mean of its samples in ms
    awk -v s="$(metric "$1_sum")" -v c="$(metric "$1_count")" 'BEGIN { if (c > 0) printf "%.2f", 1000 * s / c; else print "n/a" }'
}
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# VOXGATE_BIN: run this binary instead of building target/release/voxgate (A/B comparisons).
voxgate_bin=${VOXGATE_BIN:-}
if [[ -z $voxgate_bin ]]; then
    echo "load.sh: building release voxgate"
    cargo build --release --bin voxgate
    voxgate_bin=target/release/voxgate
fi
MEDIA=${MEDIA:-stream}
if [[ $MEDIA == pcap && $(id -u) -ne 0 ]]; then
    echo "load.sh: MEDIA=pcap needs root (SIPp raw sockets); using MEDIA=stream"
    MEDIA=stream
fi
sink=""
# Audio stops a second before the BYE, so every packet SIPp plays reaches voxgate.
packets=$(((DURATION - 1) * 50))
case $MEDIA in
stream | pcap)
    VOXGATE_PCAP_OUT="$work/audio.pcap" VOXGATE_ULAW_OUT="$work/audio.ulaw" \
        VOXGATE_PCAP_PACKETS=$packets \
        cargo test -q --test interop_load -- --ignored --exact write_load_pcap >/dev/null
    ;;&
stream) scenario=uac_echo_stream.xml ;;
pcap)
    scenario=uac_echo.xml
    # The scenario plays RTP from [media_port+4] (SIPp never binds it); voxgate echoes there.
    sink_exe=$(cargo test --test interop_load --no-run --message-format=json 2>/dev/null |
        grep -o '"executable":"[^"]*/interop_load-[^"]*"' | tail -1 | cut -d'"' -f4)
    VOXGATE_SINK_ADDR="127.0.0.1:$((SIPP_MEDIA + 4))" VOXGATE_SINK_OUT="$work/sink.txt" \
        VOXGATE_SINK_MAX_SECS=$((DURATION + CALLS / RATE + 120)) \
        "$sink_exe" --ignored --exact load_rtp_sink >"$work/sink.log" 2>&1 &
    sink=$!
    pids+=("$sink")
    for _ in $(seq 100); do [[ -s "$work/sink.txt" ]] && break; sleep 0.1; done
    ;;
none) scenario=uac_basic.xml ;;
*)
    echo "load.sh: MEDIA must be stream, pcap or none" >&2
    exit 2
    ;;
esac
TRANSPORT=${TRANSPORT:-udp}
case $TRANSPORT in
udp) sipp_transport=u1 ;;
tcp) sipp_transport=t1 ;;
tcp-per-call) sipp_transport=tn ;;
*)
    echo "load.sh: TRANSPORT must be udp, tcp or tcp-per-call" >&2
    exit 2
    ;;
esac

cat >"$work/voxgate.toml" <<TOML
[sip]
listen = "127.0.0.1:$SIP_PORT"
[rtp]
port_min = $RTP_MIN
port_max = $RTP_MAX
# MEDIA=none sends no RTP: keep the RTP inactivity timeout from ending long calls.
timeout_secs = $([[ $MEDIA == none ]] && echo 0 || echo 60)
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

RUST_LOG=${RUST_LOG:-warn} "$voxgate_bin" serve --config "$work/voxgate.toml" >"$work/voxgate.log" 2>&1 &
vg=$!
pids+=("$vg")
for _ in $(seq 150); do
    metric voxgate_calls_active >/dev/null 2>&1 && break
    kill -0 "$vg" 2>/dev/null || { cat "$work/voxgate.log"; exit 1; }
    sleep 0.1
done
rss0=$(rss_kb "$vg")

(cd "$work" && exec sipp -sf "$root/tests/sipp/$scenario" -t "$sipp_transport" -i 127.0.0.1 -mi 127.0.0.1 \
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
tcp_open=$(metric voxgate_sip_tcp_connections)
rssn=$(rss_kb "$vg")

sipp_rc=0
wait "$sp" || sipp_rc=$?
sleep 1
echo_row="not checked (MEDIA=$MEDIA)"
if [[ -n $sink ]]; then
    wait "$sink" || true # stops 3 s after the last packet
    echo_row=$(cat "$work/sink.txt")
fi

rtt=$(cat "$work"/*_rtt.csv 2>/dev/null | awk -F';' 'NR > 1 && $2 ~ /^[0-9.]+$/ { print $2 }' | sort -n)
n=$(printf '%s\n' "$rtt" | grep -c . || true)
avg=$(printf '%s\n' "$rtt" | awk '{ s += $1 } END { if (NR) printf "%.2f", s / NR; else print "n/a" }')
p50=$(printf '%s\n' "$rtt" | awk -v n="$n" 'n && NR == int(n * 0.5 + 0.999) { print; exit }')
p95=$(printf '%s\n' "$rtt" | awk -v n="$n" 'n && NR == int(n * 0.95 + 0.999) { print; exit }')

cpu_pct=$(awk -v d=$((t1 - t0)) -v clk="$clk" -v w="$window" 'BEGIN { printf "%.1f", 100 * d / clk / w }')
per_call=$(awk -v c="$cpu_pct" -v n="$active" 'BEGIN { if (n > 0) printf "%.3f", c / n; else print "n/a" }')
rss_slope=$(awk -v a="$rss0" -v b="$rssn" -v n="$active" 'BEGIN { if (n > 0) printf "%.3f", (b - a) / 1024 / n; else print "n/a" }')

cat <<TABLE

| metric | value |
|---|---|
| calls (concurrent, measured) | $CALLS ($active) |
| SIP transport | $TRANSPORT |
| SIP TCP connections open at $active calls | ${tcp_open:-n/a} |
| RTP (MEDIA=$MEDIA) | $([[ $MEDIA != none ]] && echo "PCMU 20 ms, $((DURATION - 1)) s in ${DURATION} s calls: $((CALLS * packets)) packets sent" || echo "none") |
| SIPp exit code | $sipp_rc (0 = every call succeeded) |
| voxgate CPU, steady ${window} s | ${cpu_pct} % of one core |
| CPU per call | ${per_call} % of one core |
| RSS idle / at $active calls | $((rss0 / 1024)) MB / $((rssn / 1024)) MB |
| RSS per call | ${rss_slope} MB |
| INVITE→200 median / avg / p95 (n=$n) | ${p50:-n/a} ms / ${avg} ms / ${p95:-n/a} ms |
| RTP packets in / out | $(metric voxgate_rtp_packets_total 'direction="in"') / $(metric voxgate_rtp_packets_total 'direction="out"') |
| RTP packets lost (voxgate) | $(metric voxgate_rtp_packets_lost_total) |
| interarrival jitter, mean of per-call samples | $(mean_ms voxgate_rtp_interarrival_jitter_seconds) ms |
| jitter-buffer delay, mean of per-call samples | $(mean_ms voxgate_jitter_buffer_delay_seconds) ms |
| echo at the caller's port | $echo_row |
| calls total | $(metric voxgate_calls_total) |
TABLE
exit "$sipp_rc"
