"""VM profile, guest side: where usbnetd's time goes on a real gadget, per direction, per frame.

Runs inside the QEMU guest (``bench/vm.py --profile`` starts it), as root. For each gadget function it
attaches usbnetd (with the given variant options), then for each TCP direction runs iperf3 while

1. ``perf stat`` counts usbnetd's system calls (``raw_syscalls:sys_enter``), context switches and task clock;
2. ``perf record -g`` samples it at 999 Hz;

and reads usbnetd's own frame and transfer counters before and after. It prints (and writes to
``$USBNETD_VM_RESULTS/profile-<function>-<direction>.txt``) the per-frame figures — CPU microseconds,
system calls, wake-ups (voluntary context switches) per frame and per USB transfer — and ``perf report``'s
top symbols by shared object and by symbol, self time. Python frames show as libpython's interpreter
symbols (3.11 has no perf trampolines); which of our C entry points, libusb, the kernel's usbfs/tun
paths and the interpreter take the time is what this answers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import common as c  # noqa: E402
import guest_bench as gb  # noqa: E402

from vm.guest import bench as vb  # noqa: E402

PERF = "/usr/bin/perf"
TRACEFS = "/sys/kernel/tracing"


def _counters(ifname: str) -> dict:
    st = json.loads(gb.usbnetd_cli("stats", ifname, "--json").stdout)
    st = st[0] if isinstance(st, list) else st
    flat: dict = {}

    def walk(prefix: str, v) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}{k}.", x)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            flat[prefix[:-1]] = v

    walk("", st)
    return flat


def _pick(d: dict, *suffixes: str) -> float:
    for s in suffixes:
        for k, v in d.items():
            if k.endswith(s):
                return v
    return 0


def profile_direction(ifname: str, pid: int, peer: vb.PeerNamespace, direction: str, seconds: float, port: int,
                      out_dir: Path, function: str) -> str:
    host: list[str] = []
    dev = ["ip", "netns", "exec", peer.name]
    srv, cli, addr = (dev, host, peer.peer_addr) if direction == "host_to_device" else (host, dev, peer.host_addr)
    base = out_dir / f"profile-{function}-{direction}"
    before = _counters(ifname)
    cpu0 = c.cpu_seconds(pid)
    stat = subprocess.Popen([PERF, "stat", "-x", ",", "-o", f"{base}.stat", "-p", str(pid), "-e",
                             "raw_syscalls:sys_enter,context-switches,task-clock", "--", "sleep", str(seconds + 1)])
    rec = subprocess.Popen([PERF, "record", "-q", "-F", "999", "-g", "-p", str(pid), "-o", f"{base}.data",
                            "--", "sleep", str(seconds + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = c.iperf3(srv, cli, addr, port, seconds)
    stat.wait(timeout=60)
    rec.wait(timeout=60)
    cpu = c.cpu_seconds(pid) - cpu0
    after = _counters(ifname)
    delta = {k: after[k] - before.get(k, 0) for k in after}
    # usbnetd's view: TX = TAP -> USB OUT, RX = USB IN -> TAP. The data direction dominates the frames.
    tx_frames = _pick(delta, "tx_packets", "tx_frames")
    rx_frames = _pick(delta, "rx_packets", "rx_frames")
    tx_xfers = _pick(delta, "tx_transfers")
    rx_xfers = _pick(delta, "rx_transfers")
    stat_txt = Path(f"{base}.stat").read_text(errors="replace") if Path(f"{base}.stat").exists() else ""
    syscalls = switches = 0.0
    for line in stat_txt.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].replace(".", "").isdigit():
            if "raw_syscalls:sys_enter" in parts[2]:
                syscalls = float(parts[0])
            elif parts[2] == "context-switches":
                switches = float(parts[0])
    frames = max(1, tx_frames + rx_frames)
    xfers = max(1, tx_xfers + rx_xfers)
    lines = [f"== {function} {direction}: {r['bits_per_second'] / 1e6:.1f} Mbit/s, usbnetd CPU {cpu:.2f} s "
             f"in {seconds:g} s",
             f"frames tx {tx_frames:.0f} rx {rx_frames:.0f}; transfers tx {tx_xfers:.0f} rx {rx_xfers:.0f}",
             f"per frame: {cpu / frames * 1e6:.1f} us CPU, {syscalls / frames:.2f} syscalls, "
             f"{switches / frames:.2f} context switches",
             f"per transfer: {cpu / xfers * 1e6:.1f} us CPU, {syscalls / xfers:.2f} syscalls, "
             f"{switches / xfers:.2f} context switches",
             "counters (delta): " + json.dumps({k: v for k, v in delta.items() if v}, sort_keys=True)]
    for sort in ("dso", "dso,sym"):
        rep = subprocess.run([PERF, "report", "-i", f"{base}.data", "--stdio", "--no-children", "--sort", sort,
                              "--percent-limit", "1.5", "-g", "none"], capture_output=True, text=True, timeout=300)
        lines.append(f"-- perf report --sort {sort}")
        lines += [x for x in rep.stdout.splitlines() if x and not x.startswith("#")][:40]
    # Inclusive time by symbol: how much goes through each system call, the softirqs that happen to run in
    # usbnetd's context (dummy_hcd's timer, the peer's network stack) and the interpreter.
    rep = subprocess.run([PERF, "report", "-i", f"{base}.data", "--stdio", "--children", "--sort", "sym",
                          "--percent-limit", "2", "-g", "none"], capture_output=True, text=True, timeout=300)
    lines.append("-- inclusive (children) by symbol")
    lines += [x for x in rep.stdout.splitlines() if x and not x.startswith("#")][:70]
    rep = subprocess.run([PERF, "report", "-i", f"{base}.data", "--stdio", "--no-children", "--sort", "sym",
                          "--percent-limit", "4", "-g", "caller,0.5,callee,function,percent", "--dsos",
                          "[kernel.kallsyms]"], capture_output=True, text=True, timeout=300)
    lines.append("-- kernel symbols with callers")
    lines += [x for x in rep.stdout.splitlines() if x and not x.startswith("#")][:80]
    text = "\n".join(lines)
    Path(f"{base}.txt").write_text(text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--functions", default="ecm,ncm")
    ap.add_argument("--variant", default="usbnetd", help=f"one of {', '.join(gb.VARIANTS)}")
    ns = ap.parse_args(argv)
    if os.environ.get("USBNETD_VM_GUEST") != "1":
        c.log("guest_profile.py runs inside the VM guest: use bench/vm.py --profile")
        return 2
    out_dir = Path(os.environ.get("USBNETD_VM_RESULTS", "."))
    # The guest's kernel symbols, so that the perf data can be reported again on the host:
    # perf report -i profile-….data --kallsyms kallsyms
    (out_dir / "kallsyms").write_bytes(Path("/proc/kallsyms").read_bytes())
    if not os.path.ismount(TRACEFS):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=False)
    gb.fresh_guest()
    for i, function in enumerate(ns.functions.split(","), 1):
        g = vb.Gadget.create(function, index=i)
        peer = vb.PeerNamespace(150 + i).create()
        try:
            busid = g.bind()
            peer.take(g.gadget_netdev)
            ifname = f"uprof{function}0"
            gb.attach(busid, ifname, gb.VARIANTS[ns.variant], None, gb.VARIANT_ENV.get(ns.variant))
            try:
                gb.address_and_wait(peer, ifname)
                pid = gb.find_pid(busid, ifname)
                if pid is None:
                    raise c.BenchBroken("usbnetd's process not found")
                c.ping([], peer.peer_addr, count=3, interval=0.2)
                for k, d in enumerate(("host_to_device", "device_to_host")):
                    print(profile_direction(ifname, pid, peer, d, ns.seconds, 5501 + k, out_dir, function),
                          flush=True)
            finally:
                gb.usbnetd_cli("detach", ifname, check=False, timeout=60)
        finally:
            g.destroy()
            peer.delete()
            vb.unload_host_drivers()
    return 0


if __name__ == "__main__":
    sys.exit(main())
