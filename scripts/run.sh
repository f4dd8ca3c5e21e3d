#!/usr/bin/env bash
# Install usbnetd and run it (as root).
#   scripts/run.sh DEVICE [usbnetd run options]   drive a real adapter (bus id, VID:PID[/SERIAL])
#   scripts/run.sh                                 no adapter: the simulated NCM adapter, its wire end in a
#                                                  network namespace "usbnetd-demo" at 198.18.0.2; try
#                                                  `ping 198.18.0.2` from another terminal, Ctrl-C to stop
# The demo is one thing: Ctrl-C, SIGTERM or SIGHUP to this script stop the daemon first (it tears down and
# removes usbnetd0), then the namespace goes. One demo at a time: a second is refused at once, and leaves
# the running one alone.
#   USBNETD_DEMO_NS   the namespace's name (default usbnetd-demo)
#   USBNETD_RUN_DIR   control sockets, and the demo's lock (default /run/usbnetd)
# Installing is scripts/install.sh's (USBNETD_VENV, USBNETD_LINK).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ $# -gt 0 ]; then
    venv=$("$here/install.sh" | tail -n 1)
    exec "$venv/bin/usbnetd" run "$@"
fi

ns=${USBNETD_DEMO_NS:-usbnetd-demo}
run_dir=${USBNETD_RUN_DIR:-/run/usbnetd}
mkdir -p "$run_dir"
# The lock is held by this script and inherited by the daemon: while either lives, the demo runs. First,
# before anything is installed or touched.
lock="$run_dir/demo-$ns.lock"
exec 9>>"$lock"
if ! flock -n 9; then
    echo "run.sh: a demo is already running (namespace $ns); stop it first (Ctrl-C where it runs)" >&2
    exit 1
fi

venv=$("$here/install.sh" | tail -n 1)

pid=
cleanup() {
    trap - EXIT INT TERM HUP
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        # usbnetd reaps its transfers and removes its interfaces within a second or two
        for _ in $(seq 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "run.sh: usbnetd (pid $pid) did not stop within 15 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# We hold the lock, so a namespace of that name is a leftover of a demo that was killed (SIGKILL): reuse none.
ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
"$venv/bin/usbnetd" run sim:ncm --ifname usbnetd0 --sim-peer usbnetdw0 &
pid=$!
for _ in $(seq 100); do
    ip link show usbnetdw0 >/dev/null 2>&1 && ip link show usbnetd0 >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { wait "$pid" || exit $?; exit 1; }
    sleep 0.1
done
ip link set usbnetdw0 netns "$ns"
ip -n "$ns" addr add 198.18.0.2/24 dev usbnetdw0
ip -n "$ns" link set usbnetdw0 up
ip addr add 198.18.0.1/24 dev usbnetd0
echo "usbnetd0 (198.18.0.1) <-> simulated NCM adapter <-> usbnetdw0 in netns $ns (198.18.0.2)"
wait "$pid"
