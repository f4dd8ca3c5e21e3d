"""VM diagnostic, guest side: repeat iperf3 device->host on the f_ncm gadget and explain every stall.

Runs inside the QEMU guest as root (docs/performance.md, "The intermittent device->host stall"):

    python -m tests.vm.harness run --timeout 2400 -- .venv/bin/python bench/ncm_stall.py --runs 20
    ... bench/ncm_stall.py --runs 20 --driver kernel      # the same loop over cdc_ncm

Each run is a 3 s iperf3 TCP stream from the gadget's side (a peer namespace) to the host, with the gadget's
endpoint tracepoints on. Every run prints the longest stretch during which all of the gadget's IN requests
were waiting for the host (the window in which f_ncm's flush timer is lost). A run whose client does not
finish within 33 s is a stall. For each stall the script prints, from the trace:

* how many of the gadget's bulk IN requests were queued on the UDC (waiting for the host) at the last time one
  was queued, and the longest stretch during which none was free;
* whether the gadget queued any IN request after its last completion (f_ncm's lost flush: none);

then sends pings from the device and reports the first reply's round trip, which is short when the next
frame pushes the stuck NTB out. Prints ``STALLS n of m``; exit status 0 (it reports, it does not judge).
The trace of each stall is kept as ``$USBNETD_VM_RESULTS/ncm-stall-<run>.trace``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import common as c  # noqa: E402
import guest_bench as gb  # noqa: E402

from vm.guest import bench as vb  # noqa: E402

TRACING = Path("/sys/kernel/tracing")
EVENT = re.compile(r"(\d+\.\d+): (usb_ep_queue|usb_gadget_giveback_request): (ep\d+in)-bulk: req (\w+)")


def trace_write(name: str, value: str) -> None:
    (TRACING / name).write_text(value)


def start_tracing() -> None:
    if not (TRACING / "events").exists():
        subprocess.run(["mount", "-t", "tracefs", "none", str(TRACING)], check=True)
    trace_write("buffer_size_kb", "8192")
    for ev in ("usb_ep_queue", "usb_gadget_giveback_request", "usb_ep_dequeue", "usb_ep_disable"):
        trace_write(f"events/gadget/{ev}/enable", "1")


def in_requests(trace: str) -> dict:
    """The gadget's bulk IN requests over the trace: queued-on-UDC count over time, what happened last."""
    events = [(float(m.group(1)), m.group(2), m.group(4)) for m in EVENT.finditer(trace)]
    total = {req for _t, _ev, req in events}
    queued: set[str] = set()
    last_queue = last_giveback = None
    queued_at_last_queue = 0
    full_since = None
    longest_full = 0.0
    for t, ev, req in events:
        if ev == "usb_ep_queue":
            queued.add(req)
            last_queue, queued_at_last_queue = t, len(queued)
        else:
            queued.discard(req)
            last_giveback = t
        # "full": every request the gadget has is waiting for the host (its free list is empty)
        if len(queued) == len(total) and full_since is None:
            full_since = t
        elif len(queued) < len(total) and full_since is not None:
            longest_full = max(longest_full, t - full_since)
            full_since = None
    return {"requests": len(total), "queued_at_last_queue": queued_at_last_queue,
            "longest_all_queued_ms": round(1000 * longest_full, 1),
            "queued_after_last_completion": last_queue is not None and last_giveback is not None
            and last_queue > last_giveback, "still_queued": len(queued)}


def first_reply_ms(ping_output: str) -> float | None:
    m = re.search(r"time=([\d.]+) ms", ping_output)
    return float(m.group(1)) if m else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--driver", choices=("usbnetd", "kernel"), default="usbnetd")
    ns = ap.parse_args(argv)
    out = Path(os.environ.get("USBNETD_VM_RESULTS", "/run"))
    os.makedirs(gb.RUN_DIR, exist_ok=True)
    vb.unload_host_drivers()
    vb.ensure_dummy_hcd()
    vb.kernel_driver("tun")
    g = vb.Gadget.create("ncm", index=2)
    peer = vb.PeerNamespace(152).create()
    busid = g.bind()
    peer.take(g.gadget_netdev)
    if ns.driver == "kernel":
        ifname = gb.switch_to_kernel(g, peer)
    else:
        ifname = "ubstallncm0"
        gb.attach(busid, ifname)
        gb.address_and_wait(peer, ifname)
    c.ping([], peer.peer_addr, count=3, interval=0.2)
    device = ["ip", "netns", "exec", peer.name]
    start_tracing()
    stalls = 0
    for run in range(ns.runs):
        trace_write("trace", "")
        trace_write("tracing_on", "1")
        try:
            r = c.iperf3([], device, peer.host_addr, 5401 + run, ns.seconds)
            reqs = in_requests((TRACING / "trace").read_text())
            print(f"run {run}: {r['bits_per_second'] / 1e6:.1f} Mbit/s; all {reqs['requests']} gadget IN requests "
                  f"waiting for the host for up to {reqs['longest_all_queued_ms']} ms at a time", flush=True)
            continue
        except c.BenchBroken as e:
            stalls += 1
            print(f"run {run}: STALL ({str(e).splitlines()[0][:120]})", flush=True)
        trace_write("tracing_on", "0")
        trace = (TRACING / "trace").read_text()
        (out / f"ncm-stall-{run}.trace").write_text(trace)
        print("  gadget IN requests:", json.dumps(in_requests(trace)), flush=True)
        p = subprocess.run([*device, "ping", "-c", "40", "-i", "0.05", "-W", "2", peer.host_addr],
                           capture_output=True, text=True, timeout=60)
        summary = [line for line in p.stdout.splitlines() if "transmitted" in line]
        print(f"  40 pings from the device: first reply after {first_reply_ms(p.stdout)} ms; "
              f"{summary[0] if summary else p.stdout[-200:]}", flush=True)
    print(f"STALLS {stalls} of {ns.runs} ({ns.driver})", flush=True)
    if ns.driver == "usbnetd":
        gb.usbnetd_cli("detach", ifname, check=False, timeout=60)
    g.destroy()
    peer.delete()
    vb.unload_host_drivers()
    return 0


if __name__ == "__main__":
    sys.exit(main())
