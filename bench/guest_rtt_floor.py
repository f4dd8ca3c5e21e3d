"""The RTT floor of any usbfs driver: ECM echoes through usbnetd, through bench/micro/usbfs_relay.c, and through
cdc_ether, interleaved in one boot.

Runs inside the guest (`bench/vm.py --rtt-floor`). The ECM gadget (bench/guest_bench.py's set-up) is driven in
turn, every round, by
    usbnetd   as shipped (`usbnetd attach`);
    usbnetd-busy  the same with --busy-poll 1000000: its event loop never sleeps between the pings (0.2 s apart),
              so an echo wakes none of its threads (one CPU at 100 %);
    relay     usbfs_relay, compiled here: the fewest wake-ups and system calls a user-space driver can make per
              echo through usbfs (its header says which), and none of usbnetd's other work;
    relay-spin  the same with --spin: both threads busy-wait, so an echo wakes nothing (two CPUs at 100 %);
    kernel    cdc_ether;
and each side gets the same pings (0.2 s apart, after three unmeasured ones for neighbour resolution). The
relay's figures are a floor for usbnetd, or any other user-space driver of the same device: if the relay is
above the RTT bar (1.3x the kernel's), no change inside such a driver brings it under. Writes rtt-floor.json
into $USBNETD_VM_RESULTS and prints it as one line.

--busy-cpus runs, for the whole run (every side, the kernel's too), one busy loop per guest CPU at nice 19: no
vCPU ever halts, while anything else that wants a CPU (ping, the drivers, softirqs) still preempts the loop
at once. It was meant to tell apart what a side pays for waking a halted TCG vCPU (the host has to wake QEMU's
thread for it) from the rest; measured, the loops' own preemptions cost more than that (docs/performance.md,
"Busy polling").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import common as c  # noqa: E402
import guest_bench as gb  # noqa: E402

from vm.guest import bench as vb  # noqa: E402

RELAY_SOURCE = HERE / "micro" / "usbfs_relay.c"
RELAY_IF = "urelay0"
SIDES = ("usbnetd", "usbnetd-busy", "relay", "relay-spin", "kernel")
BUSY_POLL = ("--busy-poll", "1000000")  # a second: longer than the pings' interval, so the loop never sleeps


def echoes(addr: str, count: int, pid: int | None) -> dict:
    """Per-echo RTTs (ms) of `count` pings, their min/median/mean, and `pid`'s CPU seconds meanwhile."""
    t0 = c.cpu_seconds(pid) if pid else None
    p = c.ping([], addr, count=count, interval=0.2)
    out: dict = {"sent": p["sent"], "received": p["received"], "rtts_ms": p["rtts_ms"],
                 "min_ms": p["rtt_min_ms"], "median_ms": p["rtt_median_ms"], "mean_ms": p["rtt_avg_ms"]}
    if pid:
        out["cpu_seconds"] = round(c.cpu_seconds(pid) - t0, 3)
    return out


def run_usbnetd(busid: str, peer: vb.PeerNamespace, count: int, extra: tuple = ()) -> dict:
    ifname = "ufloor0"
    gb.attach(busid, ifname, extra)
    try:
        gb.address_and_wait(peer, ifname)
        time.sleep(2)  # the CPU placement's first look, as bench/guest_echo_trace.py
        c.ping([], peer.peer_addr, count=3, interval=0.2)
        return echoes(peer.peer_addr, count, gb.find_pid(busid, ifname))
    finally:
        gb.usbnetd_cli("detach", ifname, check=False, timeout=60)


def usbfs_node(busid: str) -> str:
    sysfs = Path("/sys/bus/usb/devices") / busid
    bus, dev = int((sysfs / "busnum").read_text()), int((sysfs / "devnum").read_text())
    return f"/dev/bus/usb/{bus:03d}/{dev:03d}"


def build_relay() -> str:
    """usbfs_relay compiled into a temporary directory; its path."""
    relay = os.path.join(tempfile.mkdtemp(prefix="usbfs-relay-"), "usbfs_relay")
    c.run(["gcc", "-O2", "-Wall", "-Wextra", "-pthread", "-o", relay, str(RELAY_SOURCE)])
    return relay


@contextlib.contextmanager
def relay_running(relay: str, busid: str, peer: vb.PeerNamespace, spin: bool):
    """The relay driving the device as RELAY_IF, addressed and past neighbour resolution; yields its pid."""
    p = subprocess.Popen([relay, *(["--spin"] if spin else []), usbfs_node(busid), RELAY_IF])
    try:
        deadline = time.monotonic() + 10
        while not Path("/sys/class/net", RELAY_IF).exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise c.BenchBroken(f"usbfs_relay did not create {RELAY_IF} (exit {p.poll()})")
            time.sleep(0.1)
        c.run(["ip", "link", "set", RELAY_IF, "up"])
        gb.address_and_wait(peer, RELAY_IF)
        peer.bounce()  # the gadget's side re-announces its link; the relay ignores it, as it ignores all control
        c.ping([], peer.peer_addr, count=3, interval=0.2)
        yield p.pid
    finally:
        p.kill()
        p.wait()


def run_relay(relay: str, busid: str, peer: vb.PeerNamespace, count: int, spin: bool) -> dict:
    with relay_running(relay, busid, peer, spin) as pid:
        return echoes(peer.peer_addr, count, pid)


def busy_loops() -> list[subprocess.Popen]:
    """One nice-19 busy loop pinned to each guest CPU (--busy-cpus)."""
    return [subprocess.Popen(["nice", "-n", "19", "taskset", "-c", str(cpu), "sh", "-c", "while :; do :; done"])
            for cpu in sorted(os.sched_getaffinity(0))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=40, help="echoes per side and round")
    ap.add_argument("--busy-cpus", action="store_true", help="keep every guest CPU from halting (module doc)")
    ns = ap.parse_args()
    relay = build_relay()
    gb.fresh_guest()
    g = vb.Gadget.create("ecm", index=1)
    peer = vb.PeerNamespace(151).create()
    out: dict = {"function": "ecm", "count": ns.count, "sides": SIDES, "busy_cpus": ns.busy_cpus, "rounds": []}
    path = os.path.join(os.environ.get("USBNETD_VM_RESULTS", "."), "rtt-floor.json")
    burners = busy_loops() if ns.busy_cpus else []
    try:
        busid = g.bind()
        peer.take(g.gadget_netdev)
        for r in range(ns.rounds):
            row: dict = {"usbnetd": run_usbnetd(busid, peer, ns.count),
                         "usbnetd-busy": run_usbnetd(busid, peer, ns.count, BUSY_POLL)}
            row["relay"] = run_relay(relay, busid, peer, ns.count, spin=False)
            row["relay-spin"] = run_relay(relay, busid, peer, ns.count, spin=True)
            gb.switch_to_kernel(g, peer)
            c.ping([], peer.peer_addr, count=3, interval=0.2)
            row["kernel"] = echoes(peer.peer_addr, ns.count, None)
            g.unbind()
            vb.unload_host_drivers()
            busid = g.bind()
            out["rounds"].append(row)
            summary = ", ".join(f"{s} median {row[s]['median_ms']} min {row[s]['min_ms']} ms" for s in SIDES)
            c.log(f"rtt-floor round {r + 1}: {summary}")
            c.write_json(path, out)
    finally:
        for p in burners:
            p.kill()
            p.wait()
        g.destroy()
        peer.delete()
        vb.unload_host_drivers()
    c.write_json(path, out)
    print("RTT-FLOOR " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
