#!/usr/bin/env bash
# Scanner flood for BENCHMARKS.md: SIPp sends N INVITEs (default 20000) at RATE per second
# (default 2000) from 127.0.0.2, an address no trunk allows, and never ACKs the 403s (as a SIP
# scanner, or a forged source, does). SIPp runs with -nr, so it ends a call at the first repeated
# 403 it gets. After SIPp, the script waits 35 s (past Timer H, 32 s) and prints voxgate's CPU
# time, its resident memory before, at the end and at the peak, the INVITE and OPTIONS
# responses it sent, and the lines it logged. Loopback only; everything started here is stopped
# on exit. SCENARIO=uac_options.xml sends OPTIONS instead (as `sipvicious svmap` does).
# Usage: [SCENARIO=file in tests/sipp] scripts/scanner_flood.sh [BINARY] [REQUESTS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

BINARY=${1:-target/release/voxgate}
INVITES=${2:-20000}
RATE=${3:-2000}
SIP_PORT=${SIP_PORT:-25060}
METRICS_PORT=${METRICS_PORT:-29464}
SCENARIO=${SCENARIO:-uac_forbidden_no_ack.xml}
work=$(mktemp -d)
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/voxgate.toml" <<EOF
[sip]
listen = "127.0.0.1:$SIP_PORT"
[rtp]
port_min = 40000
port_max = 41100
[metrics]
listen = "127.0.0.1:$METRICS_PORT"
[[trunks]]
name = "pbx"
allow_from = ["127.0.0.1/32"]
[[agents]]
name = "echo"
kind = "echo"
[[routes]]
agent = "echo"
EOF

RUST_LOG=info "$BINARY" serve --config "$work/voxgate.toml" > "$work/voxgate.log" 2>&1 &
pid=$!
for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$METRICS_PORT/healthz" > /dev/null && break
    sleep 0.1
done
rss_start=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
(cd "$work" && timeout $((INVITES / RATE + 60)) sipp -sf "$root/tests/sipp/$SCENARIO" \
    -i 127.0.0.2 -p $((SIP_PORT + 10)) -r "$RATE" -m "$INVITES" -l $((INVITES + 1)) \
    -nostdin -nr -timeout $((INVITES / RATE + 30))s "127.0.0.1:$SIP_PORT" > sipp.out 2>&1) || true
sleep 35
metrics=$(curl -s "http://127.0.0.1:$METRICS_PORT/metrics")
echo "voxgate RSS: $rss_start kB at start, $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") kB at the end, $(awk '/VmHWM/ {print $2}' "/proc/$pid/status") kB at the peak"
echo "$metrics" | grep -E '^process_cpu_seconds_total|^voxgate_sip_messages_total\{direction="(in|out)",method="(INVITE|OPTIONS)"\}|^voxgate_unknown_source' || true
echo "log lines: $(wc -l < "$work/voxgate.log"), of which warnings: $(grep -c ' WARN ' "$work/voxgate.log" || true)"
