"""Native benchmark: usbnetd on the simulated adapter between two network namespaces, and a veth reference.

Needs root (network namespaces, /dev/net/tun) and iperf3. For each case, namespace A holds the interface
under test and namespace B its far end, exactly as tests/integration/conftest.py sets them up:

* ``veth``: a plain veth pair A <-> B (the kernel-only path: the ceiling on this machine);
* ``sim:ncm`` / ``sim:ecm``: ``usbnetd run sim:<kind>`` started in A; its TAP stays in A and the sim
  peer TAP (the simulated device's wire end) is moved into B.

Measured per case: iperf3 TCP A->B (usbnetd's TX path) and B->A (RX path), UDP with 64-byte payloads
both ways (packets/s the receiver got), ping RTT, and for usbnetd its CPU seconds per gigabit (utime+stime
of the process around each TCP run) and its VmRSS/VmHWM. usbnetd is pinned to CPU 1 and every traffic
tool (iperf3 client and server, ping) to CPU 0 when taskset exists and there are two CPUs or more.

The simulated device runs *inside* the usbnetd process (sim.py): its wire TAP I/O and its NTB building
and parsing are part of the CPU and memory figures, which a real adapter would not cost.

``--profile SECONDS`` instead runs py-spy on a sim:ncm instance during a TCP stream each way and prints
the hotspots. Prints tables; ``--json PATH`` writes everything. Exit 0 unless the benchmark broke.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402

from usbnetd import native  # noqa: E402  (whether the simulated device can frame in C)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBNETS = {"veth": 230, "sim:ncm": 231, "sim:ecm": 232}
# A case may carry a variant after a slash (sim:ncm/no-gro): the same device with usbnetd started with these
# options, measured in the same run as the shipped defaults so that what an option costs or buys is not
# confused with the machine's load at another hour.
VARIANTS = {"no-gro": ["--no-gro"], "no-tso": ["--no-tso"]}


def parse_case(case: str) -> tuple[str, list[str]]:
    """'sim:ncm/no-gro' -> ('sim:ncm', ['--no-gro']); BenchBroken for an unknown device or variant."""
    device, _, variant = case.partition("/")
    if device not in SUBNETS or (variant and (variant not in VARIANTS or device == "veth")):
        raise c.BenchBroken(f"unknown case {case!r}: veth, sim:ncm or sim:ecm, optionally /"
                            + " /".join(VARIANTS) + " after a sim device")
    return device, VARIANTS.get(variant, [])


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name
        c.run(["ip", "netns", "add", name])
        c.run(["ip", "-n", name, "link", "set", "lo", "up"])

    def has_link(self, ifname: str) -> bool:
        return c.run(["ip", "-n", self.name, "link", "show", ifname], check=False).returncode == 0

    def delete(self) -> None:
        c.run(["ip", "netns", "del", self.name], check=False)


class Setup:
    """Namespaces A and B, linked by veth or by a usbnetd sim instance, addressed on 198.18.<subnet>.0/24."""

    def __init__(self, case: str, cpu_daemon: int | None, cpu_tools: int | None) -> None:
        tag = uuid.uuid4().hex[:6]
        self.case = case
        self.a, self.b = Netns(f"ubA{tag}"), Netns(f"ubB{tag}")
        self.cpu_tools = cpu_tools
        self.proc: subprocess.Popen | None = None
        self.run_dir = tempfile.mkdtemp(prefix="usbnetd-bench-")
        self.env = dict(os.environ, USBNETD_RUN_DIR=self.run_dir)
        device, options = parse_case(case)
        # variants get their own subnet next to the device's so that two cases never share addresses
        subnet = SUBNETS[device] + (10 * (1 + list(VARIANTS).index(case.partition("/")[2])) if options else 0)
        self.addr_a, self.addr_b = f"198.18.{subnet}.1", f"198.18.{subnet}.2"
        try:
            if device == "veth":
                self.if_a, self.if_b = "ubva", "ubvb"
                c.run(["ip", "link", "add", self.if_a, "netns", self.a.name, "type", "veth", "peer", "name",
                       self.if_b, "netns", self.b.name])
            else:
                self.if_a, self.if_b = "ubn0", "ubw0"
                # The simulated NCM device frames in C where it can (sim:ncm?native=1): it runs in usbnetd's
                # own thread, and must not be what limits the driver being measured (its CPU is reported apart).
                if device == "sim:ncm" and native.AVAILABLE:
                    device += "?native=1"
                self._start_usbnetd(device, options, cpu_daemon)
                c.run(["ip", "-n", self.a.name, "link", "set", self.if_b, "netns", self.b.name])
            c.run(["ip", "-n", self.a.name, "addr", "add", f"{self.addr_a}/24", "dev", self.if_a])
            c.run(["ip", "-n", self.b.name, "addr", "add", f"{self.addr_b}/24", "dev", self.if_b])
            c.run(["ip", "-n", self.a.name, "link", "set", self.if_a, "up"])
            c.run(["ip", "-n", self.b.name, "link", "set", self.if_b, "up"])
            deadline = time.monotonic() + 15
            while "LOWER_UP" not in c.run(["ip", "-n", self.a.name, "link", "show", self.if_a]).stdout:
                if time.monotonic() > deadline:
                    raise c.BenchBroken(f"{self.if_a}: no carrier after 15 s\n{self.output()}")
                time.sleep(0.05)
            # Neighbour entries both ways before anything is timed.
            c.ping(self.pre_a(), self.addr_b, count=2, interval=0.1)
            c.ping(self.pre_b(), self.addr_a, count=2, interval=0.1)
        except BaseException:
            self.close()
            raise

    def _start_usbnetd(self, device: str, options: list[str], cpu: int | None) -> None:
        self.log_path = os.path.join(self.run_dir, "run.log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [*c.netns_prefix(self.a.name, cpu), sys.executable, "-m", "usbnetd", "run", device,
                 "--ifname", self.if_a, "--sim-peer", self.if_b, *options], stdout=log, stderr=subprocess.STDOUT,
                env=self.env)
        # ip netns exec and taskset exec(), so the Popen pid is the Python process itself.
        deadline = time.monotonic() + 30
        while not (self.a.has_link(self.if_a) and self.a.has_link(self.if_b)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise c.BenchBroken(f"usbnetd did not start:\n{self.output()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def pre_a(self, cpu: int | None = -1) -> list[str]:
        return c.netns_prefix(self.a.name, self.cpu_tools if cpu == -1 else cpu)

    def pre_b(self, cpu: int | None = -1) -> list[str]:
        return c.netns_prefix(self.b.name, self.cpu_tools if cpu == -1 else cpu)

    def directions(self, server_cpu: int | None = -1) -> dict[str, tuple[list[str], list[str], str]]:
        """{direction: (server prefix, client prefix, server address)} for A->B and B->A."""
        return {"a_to_b": (self.pre_b(server_cpu), self.pre_a(), self.addr_b),
                "b_to_a": (self.pre_a(server_cpu), self.pre_b(), self.addr_a)}

    def output(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()
        except (OSError, AttributeError):
            return ""

    def status(self) -> dict | None:
        if self.proc is None:
            return None
        r = c.run([*c.netns_prefix(self.a.name), sys.executable, "-m", "usbnetd", "status", self.if_a, "--json"],
                  check=False, env=self.env)
        try:
            return json.loads(r.stdout)[0]
        except (json.JSONDecodeError, IndexError):
            return None

    def sim_cpu(self) -> float | None:
        """CPU seconds the simulated device has spent so far (it runs in usbnetd's thread; `usbnetd stats`)."""
        if self.proc is None:
            return None
        r = c.run([*c.netns_prefix(self.a.name), sys.executable, "-m", "usbnetd", "stats", self.if_a, "--json"],
                  check=False, env=self.env)
        try:
            return float(json.loads(r.stdout)[0]["sim_device_cpu_seconds"])
        except (json.JSONDecodeError, IndexError, KeyError, TypeError, ValueError):
            return None

    def close(self) -> dict:
        """Stop usbnetd (SIGTERM), delete the namespaces; return how the teardown went."""
        result = {}
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            out = self.output()
            result = {"exit_status": self.proc.returncode, "pool_clean": "every packet back in the pool" in out}
        self.a.delete()
        self.b.delete()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return result


def measure_case(case: str, seconds: float, cpus: tuple[int | None, int | None], port: int) -> dict:
    c.log(f"native {case}: setting up")
    s = Setup(case, *cpus)
    res: dict = {"case": case}
    # veth has no daemon: its receiving iperf3 gets the CPU usbnetd would have, so the reference uses the
    # same two CPUs as the usbnetd cases (client on the tools' CPU, server on the daemon's).
    dirs = s.directions(cpus[0] if case == "veth" else -1)
    try:
        pid = s.pid
        if pid:
            res["memory_idle_kib"] = c.memory_kib(pid)
        res["ping"] = c.ping(s.pre_a(), s.addr_b, count=20, interval=0.1)
        for name, (srv, cli, addr) in dirs.items():
            c.log(f"native {case}: TCP {name} {seconds} s")
            sim0 = s.sim_cpu() if pid else None
            (u0, s0), t0 = (c.cpu_times(pid) if pid else (0.0, 0.0)), time.monotonic()
            r = c.iperf3(srv, cli, addr, port, seconds)
            port += 1
            if pid:
                u1, s1 = c.cpu_times(pid)
                sim1 = s.sim_cpu()
                cpu = (u1 - u0) + (s1 - s0)
                wall = time.monotonic() - t0
                gbit = r["bytes"] * 8 / 1e9
                r.update(cpu_seconds=cpu, cpu_user_seconds=u1 - u0, cpu_system_seconds=s1 - s0,
                         cpu_s_per_gbit=cpu / gbit if gbit else None, cpu_percent=100 * cpu / wall)
                if sim0 is not None and sim1 is not None:
                    # The simulated device runs in usbnetd's own thread: its share is the device's, not the
                    # driver's (the `stats` calls around the run cost the same in both readings).
                    sim = sim1 - sim0
                    r.update(sim_cpu_seconds=sim, driver_cpu_seconds=cpu - sim,
                             driver_cpu_s_per_gbit=(cpu - sim) / gbit if gbit else None)
            res[f"tcp_{name}"] = r
        for name, (srv, cli, addr) in dirs.items():
            c.log(f"native {case}: UDP {c.UDP_PAYLOAD}-byte {name} {seconds} s")
            st0 = s.status()
            cpu0 = c.cpu_seconds(pid) if pid else 0.0
            r = c.iperf3(srv, cli, addr, port, seconds, udp=True)
            port += 1
            if pid:
                cpu = c.cpu_seconds(pid) - cpu0
                st1 = s.status()
                # What usbnetd itself moved (A->B: read from its TAP and sent; B->A: received and written
                # to its TAP), iperf3's control connection included: where the receiver's losses happen.
                key = "tx_packets" if name == "a_to_b" else "rx_packets"
                moved = st1[key] - st0[key] if st0 and st1 else None
                r.update(cpu_seconds=cpu, cpu_us_per_received=1e6 * cpu / r["received"] if r["received"] else None,
                         usbnetd_packets=moved, usbnetd_pps=moved / r["seconds"] if moved is not None else None)
            res[f"udp_{name}"] = r
        if pid:
            res["memory_kib"] = c.memory_kib(pid)
            res["status"] = s.status()
    finally:
        res["teardown"] = s.close()
    return res


def bars(res: dict) -> dict:
    """The issue's native bars for one usbnetd case (None where not applicable)."""
    if res["case"] == "veth":
        return {}
    mem = res.get("memory_kib", {})
    hwm = mem.get("vmhwm_kib")
    return {
        "tcp_a_to_b": res["tcp_a_to_b"]["bits_per_second"] / 1e9 >= c.NATIVE_TCP_GBPS,
        "tcp_b_to_a": res["tcp_b_to_a"]["bits_per_second"] / 1e9 >= c.NATIVE_TCP_GBPS,
        "udp_a_to_b": res["udp_a_to_b"]["pps"] / 1e3 >= c.NATIVE_UDP_KPPS,
        "udp_b_to_a": res["udp_b_to_a"]["pps"] / 1e3 >= c.NATIVE_UDP_KPPS,
        "rss": None if hwm is None else hwm / 1024 <= c.NATIVE_RSS_MIB,
        **{f"cpu_{d}": (None if res[f"tcp_{d}"].get("driver_cpu_s_per_gbit") is None else
                        res[f"tcp_{d}"]["driver_cpu_s_per_gbit"] <= c.NATIVE_DRIVER_CPU_S_PER_GBIT)
           for d in ("a_to_b", "b_to_a")},
    }


def render(data: dict, markdown: bool = False) -> str:
    """The native table: one row per case, the bar verdict after each figure."""
    headers = ["case", "TCP A->B Gbit/s", "TCP B->A Gbit/s", "UDP64 A->B kpps", "UDP64 B->A kpps",
               "CPU s/Gbit A->B (driver)", "CPU s/Gbit B->A (driver)", "RSS / HWM MiB", "ping avg ms"]
    rows = []
    for r in data["cases"]:
        b = r.get("bars", {})

        def v(key: str, b=b) -> str:
            return f" {c.verdict(b[key])}" if key in b else ""

        mem = r.get("memory_kib", {})
        rows.append([
            r["case"],
            c.fmt(r["tcp_a_to_b"]["bits_per_second"] / 1e9) + v("tcp_a_to_b"),
            c.fmt(r["tcp_b_to_a"]["bits_per_second"] / 1e9) + v("tcp_b_to_a"),
            c.fmt(r["udp_a_to_b"]["pps"] / 1e3, ".0f") + v("udp_a_to_b"),
            c.fmt(r["udp_b_to_a"]["pps"] / 1e3, ".0f") + v("udp_b_to_a"),
            f'{c.fmt(r["tcp_a_to_b"].get("cpu_s_per_gbit"))} '
            f'({c.fmt(r["tcp_a_to_b"].get("driver_cpu_s_per_gbit"))}){v("cpu_a_to_b")}',
            f'{c.fmt(r["tcp_b_to_a"].get("cpu_s_per_gbit"))} '
            f'({c.fmt(r["tcp_b_to_a"].get("driver_cpu_s_per_gbit"))}){v("cpu_b_to_a")}',
            (f"{mem['vmrss_kib'] / 1024:.1f} / {mem['vmhwm_kib'] / 1024:.1f}" + v("rss")) if mem else "-",
            c.fmt(r["ping"]["rtt_avg_ms"], ".3f"),
        ])
    bars_line = (f"bars (usbnetd rows): TCP >= {c.NATIVE_TCP_GBPS:g} Gbit/s each way, UDP >= "
                 f"{c.NATIVE_UDP_KPPS:g} kpps of {c.UDP_PAYLOAD}-byte payloads (receiver's count), "
                 f"<= {c.NATIVE_DRIVER_CPU_S_PER_GBIT:g} CPU s/Gbit on the driver side (the process's CPU minus "
                 f"the simulated device's), VmHWM <= {c.NATIVE_RSS_MIB:g} MiB per device; veth is the "
                 "kernel-only reference")
    return c.table(headers, rows, markdown) + "\n" + bars_line


def _cpu_split(t: dict) -> str:
    if t.get("cpu_percent") is None:
        return "-"
    user = t["cpu_percent"] * t["cpu_user_seconds"] / t["cpu_seconds"] if t["cpu_seconds"] else 0
    return f"{t['cpu_percent']:.0f} ({user:.0f}+{t['cpu_percent'] - user:.0f})" if t["cpu_seconds"] else "0"


def _k(v: float | None) -> float | None:
    return None if v is None else v / 1e3


def detail(data: dict, markdown: bool = False) -> str:
    """Second table: sender rates, loss, CPU use, usbnetd's own drop counters."""
    headers = ["case", "UDP A->B sent kpps / loss", "UDP B->A sent kpps / loss", "usbnetd kpps A->B / B->A",
               "usbnetd CPU% (user+sys) TCP A->B",
               "usbnetd CPU% (user+sys) TCP B->A", "CPU us/pkt UDP A->B", "CPU us/pkt UDP B->A", "rx/tx dropped",
               "teardown"]
    rows = []
    for r in data["cases"]:
        st = r.get("status") or {}
        td = r.get("teardown") or {}
        rows.append([
            r["case"],
            f"{r['udp_a_to_b']['sent_pps'] / 1e3:.0f} / {c.fmt(r['udp_a_to_b']['lost_percent'], '.0f', '%')}",
            f"{r['udp_b_to_a']['sent_pps'] / 1e3:.0f} / {c.fmt(r['udp_b_to_a']['lost_percent'], '.0f', '%')}",
            (f"{c.fmt(_k(r['udp_a_to_b'].get('usbnetd_pps')), '.0f')} / "
             f"{c.fmt(_k(r['udp_b_to_a'].get('usbnetd_pps')), '.0f')}"),
            _cpu_split(r["tcp_a_to_b"]),
            _cpu_split(r["tcp_b_to_a"]),
            c.fmt(r["udp_a_to_b"].get("cpu_us_per_received"), ".1f"),
            c.fmt(r["udp_b_to_a"].get("cpu_us_per_received"), ".1f"),
            f"{st.get('rx_dropped', '-')}/{st.get('tx_dropped', '-')}" if st else "-",
            (f"exit {td.get('exit_status')}, pool {'clean' if td.get('pool_clean') else 'NOT clean'}"
             if td else "-"),
        ])
    return c.table(headers, rows, markdown)


# ------------------------------------------------------------------------------------------ profile

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short_path(path: str) -> str:
    for marker in ("/site-packages/", "/src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.replace(REPO + "/", "")


def summarise_raw(raw: str, top: int = 20) -> dict:
    """py-spy ``--format raw`` (collapsed stacks) -> self time by line and by function, inclusive by function."""
    by_line: collections.Counter = collections.Counter()
    self_fn: collections.Counter = collections.Counter()
    incl_fn: collections.Counter = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = []
        for f in stack.split(";"):
            m = FRAME.match(f)
            if m:
                frames.append((m["func"], short_path(m["file"]), m["line"]))
        if not frames:
            continue
        func, file, lineno = frames[-1]
        by_line[f"{func} ({file}:{lineno})"] += n
        self_fn[f"{func} ({file})"] += n
        for fn in {f"{fu} ({fi})" for fu, fi, _ in frames}:
            incl_fn[fn] += n

    def pct(counter: collections.Counter, n: int = top) -> list[list]:
        return [[k, v, round(100 * v / total, 1)] for k, v in counter.most_common(n)]

    return {"samples": total, "self_by_line": pct(by_line), "self_by_function": pct(self_fn),
            "inclusive_by_function": pct(incl_fn, top + 20)}


def profile(seconds: float, out_dir: str, cpus: tuple[int | None, int | None]) -> dict:
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(pyspy):
        raise c.BenchBroken("py-spy is missing: pip install py-spy into the venv")
    s = Setup("sim:ncm", *cpus)
    out: dict = {"case": "sim:ncm", "seconds": seconds, "rate_hz": 100, "directions": {}}
    try:
        for port, (name, (srv, cli, addr)) in enumerate(s.directions().items(), 5401):
            c.log(f"profile sim:ncm: TCP {name}, py-spy for {seconds} s")
            stream: dict = {}

            def stream_run(srv=srv, cli=cli, addr=addr, stream=stream, port=port) -> None:
                try:
                    stream.update(c.iperf3(srv, cli, addr, port, seconds + 4))
                except c.BenchBroken as e:
                    stream["error"] = str(e)

            t = threading.Thread(target=stream_run)
            t.start()
            time.sleep(1.5)
            raw_path = os.path.join(out_dir, f"profile-sim-ncm-{name}.txt")
            c.run([pyspy, "record", "--pid", str(s.pid), "--duration", str(int(seconds)), "--rate", "100",
                   "--format", "raw", "--output", raw_path], timeout=seconds + 60)
            t.join()
            with open(raw_path) as f:
                summary = summarise_raw(f.read())
            summary["raw"] = raw_path
            summary["tcp_gbps_while_profiled"] = (stream.get("bits_per_second") or 0) / 1e9
            out["directions"][name] = summary
    finally:
        s.close()
    return out


def render_profile(p: dict, markdown: bool = False, top: int = 15) -> str:
    parts = []
    for name, d in p["directions"].items():
        label = "A->B (usbnetd TX path)" if name == "a_to_b" else "B->A (usbnetd RX path)"
        parts.append(f"py-spy, sim:ncm, TCP {label}: {d['samples']} samples at {p['rate_hz']} Hz over "
                     f"{p['seconds']} s, {d['tcp_gbps_while_profiled']:.2f} Gbit/s while sampled")
        parts.append(c.table(["self % (by line)", "function (file:line)"],
                             [[f"{pct:.1f}", k] for k, _, pct in d["self_by_line"][:top]], markdown))
        parts.append(c.table(["self % (by function)", "function (file)"],
                             [[f"{pct:.1f}", k] for k, _, pct in d["self_by_function"][:10]], markdown))
        # The call chain above the event loop is in every sample: leave it out.
        inclusive = [[f"{pct:.1f}", k] for k, _, pct in d["inclusive_by_function"] if pct < 99.5][:top]
        parts.append(c.table(["inclusive % (below the event loop)", "function (file)"], inclusive, markdown))
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5, help="length of each iperf3 run (default 5)")
    ap.add_argument("--cases", default="veth,sim:ncm,sim:ecm",
                    help="comma list of veth, sim:ncm, sim:ecm; a sim case may end in /no-gro or /no-tso "
                         "(usbnetd --no-gro, --no-tso)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    ap.add_argument("--profile", type=float, metavar="SECONDS",
                    help="profile sim:ncm with py-spy for SECONDS per direction instead of benchmarking")
    ns = ap.parse_args(argv)
    if os.geteuid() != 0:
        c.log("native benchmark needs root (network namespaces, /dev/net/tun)")
        return 2
    ncpu = os.cpu_count() or 1
    if ns.no_pin or not shutil.which("taskset"):
        cpus: tuple[int | None, int | None] = (None, None)
        pinning = "none"
    elif ncpu >= 2:
        cpus = (1, 0)
        pinning = ("usbnetd on CPU 1; iperf3 client and server and ping on CPU 0 (taskset -c); veth reference: "
                   "iperf3 client on CPU 0, server on CPU 1")
    else:
        cpus = (0, 0)
        pinning = "everything on CPU 0 (one CPU)"
    started = time.monotonic()
    data = {"mode": "native", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": c.machine(),
            "source": c.source(REPO),
            "pinning": pinning, "seconds_per_run": ns.seconds, "udp_payload": c.UDP_PAYLOAD}
    try:
        if ns.profile:
            out_dir = os.path.dirname(os.path.abspath(ns.json)) if ns.json else tempfile.mkdtemp()
            os.makedirs(out_dir, exist_ok=True)  # py-spy writes its raw stacks there before the JSON exists
            data["mode"] = "profile"
            data["profile"] = profile(ns.profile, out_dir, cpus)
            data["elapsed_s"] = round(time.monotonic() - started, 1)
            print(render_profile(data["profile"]))
        else:
            data["cases"] = []
            port = 5301
            cases = ns.cases.split(",")
            for case in cases:
                parse_case(case)  # a typo fails before the first minute of measuring
            for case in cases:
                res = measure_case(case, ns.seconds, cpus, port)
                res["bars"] = bars(res)
                data["cases"].append(res)
                port += 10
            data["elapsed_s"] = round(time.monotonic() - started, 1)
            data["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
            print(f"\nnative benchmark, {data['date']}; {pinning}; {ns.seconds:g} s per run\n")
            m = data["machine"]
            print(f"load average at start {m['loadavg_at_start']}, at end {data['loadavg_at_end']}; other busy "
                  f"processes at start: {', '.join(m['other_busy']) or 'none'}")
            if m["other_busy"]:
                print("WARNING: other processes were using the CPUs: these figures are disturbed")
            print()
            print(render(data))
            print()
            print(detail(data))
    except c.BenchBroken as e:
        c.log(f"BROKEN: {e}")
        data["error"] = str(e)
        if ns.json:
            c.write_json(ns.json, data)
        return 1
    if ns.json:
        c.write_json(ns.json, data)
        print(f"\nresults: {ns.json} ({data['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
