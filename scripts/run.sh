#!/usr/bin/env bash
# Install usbnetd and run it (as root).
#   scripts/run.sh DEVICE [usbnetd run options]   drive a real adapter (bus id, VID:PID[/SERIAL])
#   scripts/run.sh                                 no adapter: the simulated NCM adapter, its wire end in a
#                                                  network namespace "usbnetd-demo" at 198.18.0.2; try
#                                                  `ping 198.18.0.2` from another terminal, Ctrl-C to stop
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$repo/scripts/install.sh" | tail -n 1)
if [ $# -gt 0 ]; then
    exec "$venv/bin/usbnetd" run "$@"
fi
ns=usbnetd-demo
ip netns add "$ns" 2>/dev/null || true
cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT
"$venv/bin/usbnetd" run sim:ncm --ifname usbnetd0 --sim-peer usbnetdw0 &
pid=$!
for _ in $(seq 100); do ip link show usbnetdw0 >/dev/null 2>&1 && break; sleep 0.1; done
ip link set usbnetdw0 netns "$ns"
ip -n "$ns" addr add 198.18.0.2/24 dev usbnetdw0
ip -n "$ns" link set usbnetdw0 up
ip addr add 198.18.0.1/24 dev usbnetd0
echo "usbnetd0 (198.18.0.1) <-> simulated NCM adapter <-> usbnetdw0 in netns $ns (198.18.0.2)"
wait "$pid"
