"""Where an echo's time goes, usbnetd against the kernel's driver: ftrace timestamps of each ping's way.

Runs inside the guest (`bench/vm.py --echo-trace`), on one gadget function (default ECM): usbnetd attached,
then the kernel's driver, as bench/guest_bench.py sets them up. For 20 pings 0.2 s apart it records, with the
kernel's own tracepoints (net:net_dev_queue, net:netif_rx, gadget:usb_ep_queue, gadget:usb_gadget_giveback_request,
sched:sched_wakeup), per echo:

    host tx    the request queued on the host's interface (the TAP, or the kernel driver's netdev) until the
               gadget's OUT request gives it back (the frame crossed the bus)
    device     until the gadget queues the reply on its IN endpoint (f_ecm, u_ether, the peer's stack)
    bus in     until the gadget's IN request is given back (the host took the reply)
    host rx    until the reply enters the host's stack (netif_rx, or netif_receive_skb from a TAP write, on the
               same interface)

and the wake-ups of usbnetd in each echo. Prints one JSON document: the medians per part and side.

--busy-poll USEC adds a side `usbnetd-busy` (usbnetd with that --busy-poll), and --relay-spin one for
bench/micro/usbfs_relay.c --spin (bench/guest_rtt_floor.py): their system calls are not traced (a spinning
loop makes millions), so their wake-ups are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import common as c  # noqa: E402
import guest_bench as gb  # noqa: E402
import guest_rtt_floor as floor  # noqa: E402

from vm.guest import bench as vb  # noqa: E402

TRACING = Path("/sys/kernel/tracing")
EVENTS = ("net/net_dev_queue", "net/netif_rx", "net/netif_receive_skb", "gadget/usb_ep_queue",
          "gadget/usb_gadget_giveback_request", "sched/sched_wakeup")
LINE = re.compile(r"^\s*(?P<comm>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\].*?\s(?P<ts>\d+\.\d+): "
                  r"(?P<event>\w+): (?P<rest>.*)$")


def tracing(on: bool, pid: int | None = None) -> None:
    """The events above; with `pid`, also that process's system calls and dummy_hcd's timer (for reading the
    raw trace the run leaves in the results directory, echo-trace-<interface>.txt)."""
    if not (TRACING / "trace").exists():
        c.run(["mount", "-t", "tracefs", "nodev", str(TRACING)])
    extra = {}
    if pid is not None:
        extra = {"raw_syscalls/sys_enter": f"common_pid == {pid}", "raw_syscalls/sys_exit": f"common_pid == {pid}",
                 "timer/hrtimer_expire_entry": ""}
    if on:
        (TRACING / "trace").write_text("")
        (TRACING / "buffer_size_kb").write_text("8192")
    for ev in (*EVENTS, *extra):
        d = TRACING / "events" / ev
        if not d.exists():
            continue
        if on and extra.get(ev):
            (d / "filter").write_text(extra[ev])
        (d / "enable").write_text("1" if on else "0")
        if not on and (d / "filter").exists():
            (d / "filter").write_text("0")
    (TRACING / "tracing_on").write_text("1" if on else "0")


def echoes(text: str, host_if: str, pid: int | None) -> list[dict]:
    """Split the trace into echoes by the request's net_dev_queue on `host_if` (ICMP echo requests are the only
    frames a quiet link carries between two pings; len 98 = 14 + 84)."""
    out: list[dict] = []
    cur: dict | None = None
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        ts, event, rest = float(m["ts"]) * 1e6, m["event"], m["rest"]
        if event == "net_dev_queue" and f"dev={host_if} " in rest and "len=98" in rest:
            cur = {"t0": ts, "events": [], "wakeups": 0}
            out.append(cur)
            continue
        if cur is None:
            continue
        if event == "sched_wakeup" and pid is not None and f" pid={pid} " in rest:
            cur["wakeups"] += 1
        if event == "usb_gadget_giveback_request" and "out" in rest.split()[0]:
            cur.setdefault("out_done", ts)
        if event == "usb_ep_queue" and "in" in rest.split()[0] and "out_done" in cur and "in_queued" not in cur:
            cur["in_queued"] = ts
        if event == "usb_gadget_giveback_request" and "in" in rest.split()[0] and "in_queued" in cur:
            cur.setdefault("in_done", ts)
        # usbnet hands the reply to netif_rx; tun's write to netif_receive_skb
        if (event in ("netif_rx", "netif_receive_skb") and f"dev={host_if} " in rest and "in_done" in cur
                and "len=84" in rest):
            cur.setdefault("reply", ts)
    return out


def parts(es: list[dict]) -> dict:
    rows = [e for e in es if all(k in e for k in ("out_done", "in_queued", "in_done", "reply"))]
    if not rows:
        return {"echoes": 0}

    def med(f) -> float:
        return round(statistics.median(f(e) for e in rows), 1)

    return {"echoes": len(rows),
            "host_tx_us": med(lambda e: e["out_done"] - e["t0"]),
            "device_us": med(lambda e: e["in_queued"] - e["out_done"]),
            "bus_in_us": med(lambda e: e["in_done"] - e["in_queued"]),
            "host_rx_us": med(lambda e: e["reply"] - e["in_done"]),
            "total_us": med(lambda e: e["reply"] - e["t0"]),
            "usbnetd_wakeups": med(lambda e: e["wakeups"])}


def measure(peer: vb.PeerNamespace, host_if: str, pid: int | None) -> dict:
    c.ping([], peer.peer_addr, count=3, interval=0.2)
    tracing(True, pid)
    ping = c.ping([], peer.peer_addr, count=20, interval=0.2)
    tracing(False, pid)
    text = (TRACING / "trace").read_text(errors="replace")
    results = os.environ.get("USBNETD_VM_RESULTS")
    if results:
        Path(results, f"echo-trace-{host_if}.txt").write_text(text)
    return {"rtt_avg_ms": ping.get("rtt_avg_ms"), **parts(echoes(text, host_if, pid))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--function", default="ecm")
    ap.add_argument("--busy-poll", type=int, default=0, metavar="USEC", help="also usbnetd with --busy-poll USEC")
    ap.add_argument("--relay-spin", action="store_true", help="also the spinning usbfs relay (ECM only)")
    ns = ap.parse_args()
    relay = floor.build_relay() if ns.relay_spin else None
    gb.fresh_guest()
    g = vb.Gadget.create(ns.function, index=1)
    peer = vb.PeerNamespace(150 + 1).create()
    out: dict = {"function": ns.function}
    try:
        busid = g.bind()
        peer.take(g.gadget_netdev)
        ifname = f"ubench{ns.function}0"
        sides = [("usbnetd", ())] + ([("usbnetd-busy", ("--busy-poll", str(ns.busy_poll)))] if ns.busy_poll else [])
        for side, extra in sides:
            gb.attach(busid, ifname, extra)
            try:
                gb.address_and_wait(peer, ifname)
                time.sleep(2)  # the CPU placement's first look
                out[side] = measure(peer, ifname, None if extra else gb.find_pid(busid, ifname))
            finally:
                gb.usbnetd_cli("detach", ifname, check=False, timeout=60)
        if relay:
            with floor.relay_running(relay, busid, peer, spin=True):
                out["relay-spin"] = measure(peer, floor.RELAY_IF, None)
        host_if = gb.switch_to_kernel(g, peer)
        out["kernel"] = measure(peer, host_if, None)
    finally:
        g.destroy()
        peer.delete()
        vb.unload_host_drivers()
    print("ECHO-TRACE " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
