#!/usr/bin/env bash
# Runs every test: unit, property, bench smoke and the black-box interop suite (voxgate against
# SIPp over loopback). Installs what the interop tests need when it is missing (Debian/Ubuntu:
# the `sip-tester` package provides `sipp`, `kamailio` the registrar the registration tests run,
# `prometheus` the server that scrapes voxgate in interop_metrics and `promtool`, `baresip-core`
# the softphone of interop_baresip).
# The RTP echo checks need root (SIPp plays audio with raw sockets); without root those tests
# print SKIP and pass.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
# Debian installs kamailio in /usr/sbin, which a normal user's PATH may lack.
command -v kamailio >/dev/null 2>&1 || [[ -x /usr/sbin/kamailio ]] || need+=(kamailio)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v baresip >/dev/null 2>&1 || need+=(baresip-core)
if ((${#need[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        echo "test.sh: missing ${need[*]} and neither root nor sudo to install it" >&2
        exit 1
    fi
    echo "test.sh: installing ${need[*]} (apt-get update; apt-get install -y ${need[*]})"
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${need[@]}"
fi
echo "test.sh: $(sipp -v 2>/dev/null | grep -m1 SIPp | sed 's/^ *//')"
echo "test.sh: kamailio $(PATH="$PATH:/usr/sbin" kamailio -v 2>/dev/null | head -1)"
echo "test.sh: $(prometheus --version 2>&1 | head -1)"
echo "test.sh: baresip $(dpkg-query -W -f '${Version}' baresip-core 2>/dev/null)"
[[ $(id -u) -eq 0 ]] || echo "test.sh: not root: RTP echo checks will be skipped"

echo "test.sh: cargo test --all-targets"
cargo test --all-targets
