"""VM benchmark, guest side: usbnetd and the kernel's host driver on the same gadget, in the same boot.

Runs inside the QEMU guest (``bench/vm.py`` starts it through ``python -m tests.vm.harness run``), as root,
with the project venv's Python. For each gadget function (NCM, then ECM) on dummy_hcd:

1. the kernel host drivers are unloaded; the gadget is bound and its gadget-side netdev moved into a peer
   namespace (198.18.<150+i>.2/24);
2. ``usbnetd attach <busid>`` drives it (198.18.<150+i>.1/24 on usbnetd's TAP): ping, iperf3 TCP
   host->device and device->host, UDP 64-byte both ways; then ``usbnetd detach``;
3. the gadget is unplugged, the kernel host driver (cdc_ncm / cdc_ether) loaded, the gadget plugged back
   in, and the same measurements run over the kernel's netdev.

"host" is the guest's initial namespace (the USB host side), "device" the peer namespace (the gadget).
Reuses tests/vm/guest/bench.py (Gadget, PeerNamespace, kernel_driver, ...) read-only. Writes
``$USBNETD_VM_RESULTS/bench-vm.json`` after every step, so a broken run still brings back what it measured.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))

import common as c  # noqa: E402

from vm.guest import bench as vb  # noqa: E402

ATTACH_TIMEOUT = 180
RUN_DIR = "/run/usbnetd-bench"


# Variants of usbnetd measured in the same boot, to show what one optimisation buys: extra `attach` options,
# or another source tree (`baseline`: an older commit checked out by bench/vm.py --baseline).
VARIANTS = {"usbnetd": (), "no-gro": ("--no-gro",), "pure-python": ("--pure-python",), "baseline": (),
            "python-completions": (), "python-loop": (), "copied": (), "no-placement": (), "pin0": (), "pin1": ()}
# Variants that differ by the environment `usbnetd run` gets instead of an option.
VARIANT_ENV = {"python-completions": {"USBNETD_NATIVE_COMPLETIONS": "0"}, "python-loop": {"USBNETD_NATIVE_LOOP": "0"},
               "copied": {"USBNETD_USBFS_MMAP": "0"}, "no-placement": {"USBNETD_CPU_PLACEMENT": "0"},
               "pin0": {"USBNETD_CPU_PLACEMENT": "0"}, "pin1": {"USBNETD_CPU_PLACEMENT": "0"}}
# Variants that pin every thread of `usbnetd run` to one guest CPU once it is attached, its own placement off
# (app/placement.py; the experiment that led to it: usbnetd on dummy_hcd's timer's CPU, or on the other one).
VARIANT_AFFINITY = {"pin0": {0}, "pin1": {1}}


def pin(pid: int, cpus: set[int]) -> None:
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def fresh_guest() -> None:
    """The guest as every bench script starts from: no gadget left by an earlier run, no host driver bound,
    dummy_hcd and tun loaded."""
    os.makedirs(RUN_DIR, exist_ok=True)
    for g in vb.CONFIGFS.glob(f"{vb.GADGET_PREFIX}*"):
        vb.Gadget._remove_tree(g)
    vb.unload_host_drivers()
    vb.ensure_dummy_hcd()
    vb.kernel_driver("tun")


def usbnetd_cli(*args: str, timeout: float = ATTACH_TIMEOUT + 30, check: bool = True, src: str | None = None,
                extra_env: dict[str, str] | None = None):
    env = dict(os.environ, USBNETD_RUN_DIR=RUN_DIR, **(extra_env or {}))
    if src:
        env["PYTHONPATH"] = src  # ahead of the venv's editable install of this tree
    return c.run([sys.executable, "-m", "usbnetd", *args], env=env, timeout=timeout, check=check)


def usbnetd_logs(lines: int = 60) -> str:
    """The last lines of every instance log under RUN_DIR (what `attach` wrote), for a failed run."""
    out = []
    for log in sorted(Path(RUN_DIR).glob("*.log")):
        text = log.read_text(errors="replace").splitlines()
        out.append(f"--- {log}\n" + "\n".join(text[-lines:]))
    return "\n".join(out) or f"(no log under {RUN_DIR})"


def find_pid(busid: str, ifname: str) -> int | None:
    """The ``usbnetd run`` process `attach` started for this device (its command line names both)."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"usbnetd" in b" ".join(argv) and b"run" in argv and busid.encode() in argv and ifname.encode() in argv:
            return int(p.name)
    return None


def softirqs() -> dict[str, list[int]]:
    """/proc/softirqs: per softirq, the count on each CPU."""
    out = {}
    with open("/proc/softirqs") as f:
        next(f)
        for line in f:
            name, *counts = line.split()
            out[name.rstrip(":")] = [int(x) for x in counts]
    return out


class Placement:
    """Where the work ran during one measurement: per CPU, the HRTIMER softirqs (dummy_hcd's timer, the emulated
    bus and the gadget's side of every transfer, is a soft hrtimer) and NET_RX ones, and on which CPU usbnetd was
    seen (its /proc stat's `processor`, sampled every 10 ms: a Python thread waking 100 times a second, on the
    usbnetd sides only, which costs them about 1 % of a guest CPU at most)."""

    def __init__(self, pid: int | None) -> None:
        import threading

        self.pid, self.seen = pid, collections.Counter()
        self.before = softirqs()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if pid:
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            try:
                with open(f"/proc/{self.pid}/stat") as f:
                    self.seen[int(f.read().rsplit(")", 1)[1].split()[36])] += 1
            except (OSError, IndexError, ValueError):
                return

    def result(self) -> dict:
        self._stop.set()
        if self.pid:
            self._thread.join()
        after = softirqs()
        out = {k.lower(): [a - b for a, b in zip(after[k], self.before[k], strict=True)]
               for k in ("HRTIMER", "NET_RX", "TIMER") if k in after}
        if self.pid:
            out["usbnetd_on"] = [self.seen.get(i, 0) for i in range(len(after["HRTIMER"]))]
        return out


def measure_link(peer: vb.PeerNamespace, seconds: float, port: int, pid: int | None) -> dict:
    host: list[str] = []
    dev = ["ip", "netns", "exec", peer.name]
    c.ping(host, peer.peer_addr, count=3, interval=0.2)  # neighbour resolution out of the timed part
    res: dict = {"ping": c.ping(host, peer.peer_addr, count=20, interval=0.2)}
    dirs = {"host_to_device": (dev, host, peer.peer_addr), "device_to_host": (host, dev, peer.host_addr)}
    for proto in ("tcp", "udp"):
        for name, (srv, cli, addr) in dirs.items():
            c.log(f"guest: {proto.upper()} {name} {seconds:g} s")
            cpu0 = c.cpu_seconds(pid) if pid else None
            placement = Placement(pid)
            r = c.iperf3(srv, cli, addr, port, seconds, udp=proto == "udp")
            r["placement"] = placement.result()
            port += 1
            if pid and cpu0 is not None:
                r["usbnetd_cpu_seconds"] = c.cpu_seconds(pid) - cpu0
            res[f"{proto}_{name}"] = r
    return res


def attach(busid: str, ifname: str, extra: tuple = (), src: str | None = None,
           extra_env: dict[str, str] | None = None) -> None:
    """`usbnetd attach` the gadget as `ifname`; BenchBroken unless it prints that name."""
    r = usbnetd_cli("attach", busid, "--ifname", ifname, "--timeout", str(ATTACH_TIMEOUT), *extra, src=src,
                    extra_env=extra_env)
    if r.stdout.strip() != ifname:
        raise c.BenchBroken(f"usbnetd attach printed {r.stdout!r}, expected {ifname}")


def address_and_wait(peer: vb.PeerNamespace, host_if: str) -> None:
    """The host side's address on `host_if`, and its carrier."""
    peer.address_host_side(host_if)
    vb.wait_carrier(host_if, timeout=30)


def run_usbnetd(g: vb.Gadget, busid: str, peer: vb.PeerNamespace, seconds: float, extra: tuple = (),
                src: str | None = None, extra_env: dict[str, str] | None = None,
                affinity: set[int] | None = None) -> dict:
    ifname = f"ubench{g.function}0"
    t0 = time.monotonic()
    attach(busid, ifname, extra, src, extra_env)
    out: dict = {"ifname": ifname, "attach_seconds": round(time.monotonic() - t0, 1)}
    try:
        address_and_wait(peer, ifname)
        pid = find_pid(busid, ifname)
        if pid and affinity:
            pin(pid, affinity)
            out["affinity"] = sorted(affinity)
        out.update(measure_link(peer, seconds, 5301, pid))
        if pid:
            out["memory_kib"] = c.memory_kib(pid)
        st = json.loads(usbnetd_cli("status", ifname, "--json").stdout)
        out["status"] = st[0] if st else None
        # Which paths ran: the C decode, the C completions each way, the C event loop.
        st = json.loads(usbnetd_cli("stats", ifname, "--json").stdout)
        row = (st[0] if isinstance(st, list) and st else st) or {}
        out["paths"] = {k: row.get(k) for k in ("datapath", "rx_completions", "tx_completions", "event_loop")}
    finally:
        usbnetd_cli("detach", ifname, check=False, timeout=60)
    return out


def switch_to_kernel(g: vb.Gadget, peer: vb.PeerNamespace) -> str:
    """Unplug the gadget, load its kernel host driver, plug it back: the kernel's netdev, addressed, with carrier.

    The gadget-side netdev stays in ``peer`` across the replug."""
    g.unbind()
    vb.kernel_driver(g.host_driver)
    g.bind()
    host_if = g.host_netdev(driver=g.host_driver)
    peer.address_host_side(host_if)
    # f_ecm reports the link when its netdev opens; the host side must be listening by then (bench.py).
    peer.bounce()
    vb.wait_carrier(host_if, timeout=30)
    vb.wait_carrier(g.gadget_netdev, peer.name, timeout=30)
    return host_if


def run_kernel(g: vb.Gadget, peer: vb.PeerNamespace, seconds: float) -> dict:
    host_if = switch_to_kernel(g, peer)
    out = {"ifname": host_if, "driver": g.host_driver}
    try:
        out.update(measure_link(peer, seconds, 5401, None))
    finally:
        g.unbind()
        vb.unload_host_drivers()
    return out


# The figures a median is taken of (per metric key); everything else comes from the last round.
MEDIAN_FIELDS = ("bits_per_second", "pps", "sent_pps", "rtt_avg_ms", "usbnetd_cpu_seconds", "bytes")


def median_of(results: list[dict]) -> dict:
    """One side's rounds as one result: each measured figure the median over the rounds (statistics.median),
    the rest (interface, status, memory) from the last round. With one round, that round."""
    out = dict(results[-1])
    for key, value in results[-1].items():
        if not isinstance(value, dict):
            continue
        merged = dict(value)
        for field in MEDIAN_FIELDS:
            vals = [r[key][field] for r in results if isinstance(r.get(key), dict) and r[key].get(field) is not None]
            if vals:
                merged[field] = statistics.median(vals)
                merged[f"{field}_rounds"] = vals
        out[key] = merged
    out["rounds"] = len(results)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--functions", default="ncm,ecm")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every side this many times, interleaved; each figure is then the median")
    ap.add_argument("--variants", default="usbnetd", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--baseline-src", help="the src/ directory the 'baseline' variant runs")
    ap.add_argument("--output", default=os.path.join(os.environ.get("USBNETD_VM_RESULTS", "."), "bench-vm.json"))
    ns = ap.parse_args(argv)
    unknown = set(ns.variants.split(",")) - set(VARIANTS)
    if unknown:
        c.log(f"unknown variant(s): {', '.join(sorted(unknown))} (known: {', '.join(VARIANTS)})")
        return 2
    if os.environ.get("USBNETD_VM_GUEST") != "1":
        c.log("guest_bench.py runs inside the VM guest: use bench/run.sh vm (or bench/vm.py)")
        return 2
    started = time.monotonic()
    data: dict = {"mode": "vm-guest", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": c.machine(),
                  "seconds_per_run": ns.seconds, "udp_payload": c.UDP_PAYLOAD, "cases": []}

    def save() -> None:
        data["elapsed_s"] = round(time.monotonic() - started, 1)
        c.write_json(ns.output, data)

    status = 0
    try:
        fresh_guest()
        for i, function in enumerate(ns.functions.split(","), 1):
            case: dict = {"function": function}
            data["cases"].append(case)
            g = vb.Gadget.create(function, index=i)
            peer = vb.PeerNamespace(150 + i).create()
            try:
                busid = g.bind()
                case["busid"] = busid
                peer.take(g.gadget_netdev)
                # One side failing (usbnetd would not attach, say) still leaves the other side's figures.
                variants = [v for v in ns.variants.split(",") if v]
                sides = (*variants, "kernel")
                rounds: dict[str, list[dict]] = {side: [] for side in sides}
                for r in range(ns.rounds):
                    if r:
                        busid = g.bind()  # the kernel side ends with the gadget unplugged
                    for side in sides:
                        c.log(f"guest: {function} gadget {busid}: {side} (round {r + 1} of {ns.rounds})")
                        try:
                            if side == "kernel":
                                rounds[side].append(run_kernel(g, peer, ns.seconds))
                            else:
                                src = ns.baseline_src if side == "baseline" else None
                                if side == "baseline" and not src:
                                    raise c.BenchBroken("the baseline variant needs --baseline-src")
                                rounds[side].append(run_usbnetd(g, busid, peer, ns.seconds, VARIANTS[side], src,
                                                                VARIANT_ENV.get(side), VARIANT_AFFINITY.get(side)))
                        except (c.BenchBroken, vb.BenchError) as e:
                            traceback.print_exc()
                            case[f"{side}_error"] = f"{type(e).__name__}: {e}"
                            status = 1
                            if side != "kernel":
                                case["usbnetd_log_tail"] = usbnetd_logs()
                                print(case["usbnetd_log_tail"], file=sys.stderr)
                        for s, results in rounds.items():
                            if results:
                                case[s] = median_of(results)
                        case["rounds"] = rounds
                        save()
            finally:
                g.destroy()
                peer.delete()
                vb.unload_host_drivers()
    except (c.BenchBroken, vb.BenchError, OSError) as e:
        traceback.print_exc()
        data["error"] = f"{type(e).__name__}: {e}"
        status = 1
    errors = [f"{case['function']} {k}: {v}" for case in data["cases"] for k, v in case.items() if k.endswith("_error")]
    if errors and "error" not in data:
        data["error"] = "; ".join(errors)
    save()
    c.log(f"guest: results in {ns.output} ({data['elapsed_s']} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
