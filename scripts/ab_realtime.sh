#!/usr/bin/env bash
# Alternated load runs of several voxgate builds (BENCHMARKS.md: every CPU comparison of the
# Realtime bridge was made this way, because one build's CPU per call moves by ±10–15 % from run
# to run on the benchmark VM). Each round runs `scripts/bench_realtime.sh CALLS SECS` (load part
# only) once per build, in the order given, and prints one line per run; the whole output of
# every run is kept in OUT_DIR.
#
#   cp target/release/voxgate /tmp/voxgate-base     # ... and the other build as /tmp/voxgate-new
#   ROUNDS=3 CALLS=200 SECS=30 bash scripts/ab_realtime.sh /tmp/voxgate-base /tmp/voxgate-new
#
# Needs root, as bench_realtime.sh does. Run nothing else on the machine meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 ]] || {
    echo "usage: [ROUNDS=N] [CALLS=N] [SECS=N] [OUT_DIR=dir] ab_realtime.sh BINARY..." >&2
    exit 2
}
ROUNDS=${ROUNDS:-3}
CALLS=${CALLS:-200}
SECS=${SECS:-30}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/ab_realtime.XXXXXX)}
for binary in "$@"; do
    [[ -x $binary ]] || { echo "ab_realtime.sh: $binary is not an executable" >&2; exit 2; }
done
echo "runs kept in $OUT_DIR"
cell() { # the value column of the table row whose title matches $2, in file $1
    grep -F -- "$2" "$1" | head -1 | cut -d'|' -f3 | sed 's/\*//g; s/^ *//; s/ *$//'
}
for round in $(seq "$ROUNDS"); do
    for binary in "$@"; do
        out="$OUT_DIR/$(basename "$binary")-round$round.txt"
        VOXGATE_BIN=$binary VOXGATE_BENCH_ONLY=load bash scripts/bench_realtime.sh "$CALLS" "$SECS" \
            > "$out" 2>&1 || echo "ab_realtime.sh: run failed, see $out" >&2
        printf '%s round %s %s: CPU per call %s; others %s; up %s; down %s\n' \
            "$(date -u +%T)" "$round" "$(basename "$binary")" \
            "$(cell "$out" 'voxgate CPU per call')" \
            "$(cell "$out" 'machine CPU in the window' | sed 's/.*\/ //')" \
            "$(cell "$out" 'added latency up')" "$(cell "$out" 'added latency down')"
    done
done
