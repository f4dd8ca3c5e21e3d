"""Shared helpers for the usbnetd benchmarks: iperf3 runs, /proc readings, the issue's bars, tables.

Used on the host (``bench/native.py``, ``bench/vm.py``, ``bench/report.py``) and inside the VM guest
(``bench/guest_bench.py``), so it needs nothing but the standard library and iperf3.

Conventions: a *prefix* is the argv that puts a command where it must run, e.g.
``["ip", "netns", "exec", "ns1", "taskset", "-c", "0"]`` or ``[]`` for "here". The client always sends
to the server (no ``-R``): a direction is chosen by where each end runs. Every figure is the
*receiver's* count (iperf3's server-side JSON).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
UDP_PAYLOAD = 64  # bytes of UDP payload: 64 + 8 UDP + 20 IPv4 + 14 Ethernet = a 106-byte frame on the TAP

# The native-core issue's bars. Reported next to the numbers, never used for the exit status.
NATIVE_TCP_GBPS = 3.0
NATIVE_UDP_KPPS = 300.0
NATIVE_DRIVER_CPU_S_PER_GBIT = 0.3
NATIVE_RSS_MIB = 25.0
# The native-core issue's VM bars (usbnetd / kernel driver, same gadget, same boot, medians of 3).
VM_RATIO_NCM_TCP = 1.0
VM_RATIO_ECM_TCP = 0.7
VM_RATIO_RNDIS_TCP = 0.7
VM_RTT_RATIO = 1.3


class BenchBroken(RuntimeError):
    """The benchmark itself could not run (not: usbnetd was slow)."""


def run(argv: list[str], *, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise BenchBroken(f"{' '.join(argv)} timed out after {timeout}s") from e
    if check and r.returncode != 0:
        raise BenchBroken(f"{' '.join(argv)} failed ({r.returncode}): {r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r


def netns_prefix(ns: str | None, cpu: int | None = None) -> list[str]:
    """argv prefix running a command in namespace ``ns`` (None: this one), pinned to ``cpu`` if given."""
    pre = ["ip", "netns", "exec", ns] if ns else []
    if cpu is not None and shutil.which("taskset"):
        pre += ["taskset", "-c", str(cpu)]
    return pre


# ------------------------------------------------------------------------------------------ iperf3


def iperf3(server: list[str], client: list[str], addr: str, port: int, seconds: float, *,
           udp: bool = False, length: int = UDP_PAYLOAD) -> dict:
    """One iperf3 run from ``client`` to the server listening on ``addr:port`` under ``server``.

    TCP: {"bits_per_second", "bytes", "seconds", "retransmits"}. UDP (``length``-byte payloads, ``-b 0``):
    {"pps" (received), "received", "sent", "lost_percent", "seconds", "sent_pps"}. Receiver's view.
    """
    if not shutil.which("iperf3"):
        raise BenchBroken("iperf3 is not installed (apt-get install iperf3)")
    srv = subprocess.Popen([*server, "iperf3", "-s", "-1", "-J", "-B", addr, "-p", str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        cmd = [*client, "iperf3", "-c", addr, "-p", str(port), "-t", str(seconds), "-J"]
        if udp:
            cmd += ["-u", "-l", str(length), "-b", "0"]
        deadline = time.monotonic() + 20
        while True:
            r = run(cmd, check=False, timeout=seconds + 30)
            text = r.stdout + r.stderr
            # The server may not be listening yet (a slow guest): retry only that.
            if ("Connection refused" in text or "unable to connect" in text) and time.monotonic() < deadline:
                time.sleep(0.3)
                continue
            break
        try:
            cdata = json.loads(r.stdout)
        except json.JSONDecodeError as e:
            raise BenchBroken(f"iperf3 client gave no JSON ({r.returncode}): {text[-2000:]}") from e
        if cdata.get("error"):
            raise BenchBroken(f"iperf3 client: {cdata['error']}")
        try:
            out, _ = srv.communicate(timeout=30)
            sdata = json.loads(out)
        except (subprocess.TimeoutExpired, json.JSONDecodeError):
            sdata = {}
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    # The server's own summary is the receiver's count; the client's copy of it is the fallback.
    recv = (sdata.get("end") or {}).get("sum_received") or (cdata.get("end") or {}).get("sum_received")
    if not recv:
        raise BenchBroken(f"iperf3 gave no receiver summary: {json.dumps(cdata.get('end'))[:1500]}")
    seconds_rx = recv.get("seconds") or seconds
    if not udp:
        sent = (cdata.get("end") or {}).get("sum_sent") or {}
        return {"bits_per_second": recv["bits_per_second"], "bytes": recv["bytes"], "seconds": seconds_rx,
                "retransmits": sent.get("retransmits")}
    received = recv["bytes"] // length
    sent = ((cdata.get("end") or {}).get("sum_sent") or {}).get("packets") or recv.get("packets") or 0
    return {"pps": received / seconds_rx, "received": received, "sent": sent,
            "sent_pps": sent / seconds_rx, "lost_percent": 100.0 * (1 - received / sent) if sent else None,
            "seconds": seconds_rx}


def ping(prefix: list[str], addr: str, count: int = 20, interval: float = 0.2) -> dict:
    """{"sent", "received", "rtt_min_ms", "rtt_avg_ms", "rtt_max_ms", "rtt_median_ms", "rtts_ms"} of ``count``
    echoes (rtts_ms: each reply's, in order)."""
    r = run([*prefix, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", addr],
            check=False, timeout=count * interval + 30)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", r.stdout)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout)]
    return {"sent": int(m.group(1)) if m else 0, "received": int(m.group(2)) if m else 0,
            "rtt_min_ms": float(rtt.group(1)) if rtt else None,
            "rtt_avg_ms": float(rtt.group(2)) if rtt else None,
            "rtt_max_ms": float(rtt.group(3)) if rtt else None,
            "rtt_median_ms": statistics.median(rtts) if rtts else None, "rtts_ms": rtts}


# ------------------------------------------------------------------------------------------ /proc


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) / CLK_TCK, int(rest[12]) / CLK_TCK  # fields 14 and 15 of proc(5)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    return sum(cpu_times(pid))


def memory_kib(pid: int) -> dict:
    """{"vmrss_kib", "vmhwm_kib"} from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key.lower() + "_kib"] = int(value.split()[0])
    return out


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    iperf = run(["iperf3", "--version"], check=False).stdout.splitlines()[:1] if shutil.which("iperf3") else []
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "iperf3": iperf[0] if iperf else None,
            "hostname_is_guest": os.environ.get("USBNETD_VM_GUEST") == "1",
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "other_busy": busy_processes()}


def busy_processes(threshold: float = 0.2, window: float = 0.5) -> list[str]:
    """Other processes using more than ``threshold`` of a CPU right now: the machine is shared, and a
    concurrent QEMU or test run shows up in the numbers. Sampled over ``window`` seconds."""
    def ticks() -> dict[int, tuple[int, str]]:
        out = {}
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    head, rest = f.read().rsplit(")", 1)
                fields = rest.split()
                out[int(d)] = (int(fields[11]) + int(fields[12]), head.split("(", 1)[1])
            except (OSError, ValueError, IndexError):
                continue
        return out

    before = ticks()
    time.sleep(window)
    after = ticks()
    busy = []
    for pid, (t1, name) in after.items():
        t0 = before.get(pid, (t1, name))[0]
        share = (t1 - t0) / CLK_TCK / window
        if share > threshold:
            busy.append(f"{name}({pid}) {100 * share:.0f}%")
    return busy


def source(repo: str) -> dict:
    """The commit measured, and whether src/ differed from it (other engineers edit src/ concurrently)."""
    def git(*args: str) -> str:
        r = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=False)
        return r.stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None,
            "src_modified": bool(git("status", "--porcelain", "--", "src")) if shutil.which("git") else None}


# ------------------------------------------------------------------------------------------ output


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def table(headers: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    rows = [[str(c) for c in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*r) for r in rows)])


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)
