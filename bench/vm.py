"""VM benchmark, host side: boot the QEMU guest once, run bench/guest_bench.py in it, tabulate usbnetd/kernel.

Runs ``python -m tests.vm.harness run --results DIR -- <venv python> bench/guest_bench.py`` (one boot; the
harness prepares the kernel and initramfs if needed, see docs/testing.md), reads ``DIR/bench-vm.json`` back
and prints, per gadget (NCM, ECM, RNDIS), usbnetd's and the kernel host driver's figures and the ratio, with
the native-core issue's bars: usbnetd/kernel TCP >= 1.0x on NCM, >= 0.7x on ECM and RNDIS, both directions;
ping RTT <= 1.3x the kernel's. `--rounds 3` measures each side three times, interleaved, and every figure is
the median. The bars are labels: the exit status is 0 unless the benchmark broke.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TCP_BAR = {"ncm": c.VM_RATIO_NCM_TCP, "ecm": c.VM_RATIO_ECM_TCP, "rndis": c.VM_RATIO_RNDIS_TCP}
DIRECTIONS = ("host_to_device", "device_to_host")
ARROW = {"host_to_device": "host->device", "device_to_host": "device->host"}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def analyse(guest: dict) -> list[dict]:
    """One row per (gadget, metric): usbnetd, kernel, ratio, bar and verdict."""
    rows = []
    for case in guest.get("cases", []):
        fn, u, k = case["function"], case.get("usbnetd") or {}, case.get("kernel") or {}

        def get(side: dict, key: str, field: str, scale: float) -> float | None:
            v = (side.get(key) or {}).get(field)
            return None if v is None else v / scale

        for d in DIRECTIONS:
            uv, kv = get(u, f"tcp_{d}", "bits_per_second", 1e6), get(k, f"tcp_{d}", "bits_per_second", 1e6)
            r = _ratio(uv, kv)
            bar = TCP_BAR.get(fn)
            rows.append({"gadget": fn, "metric": f"TCP {ARROW[d]} Mbit/s", "usbnetd": uv, "kernel": kv,
                         "ratio": r, "bar": f">= {bar:g}x" if bar else "",
                         "pass": None if r is None or bar is None else r >= bar})
        for d in DIRECTIONS:
            uv, kv = get(u, f"udp_{d}", "pps", 1e3), get(k, f"udp_{d}", "pps", 1e3)
            rows.append({"gadget": fn, "metric": f"UDP{c.UDP_PAYLOAD} {ARROW[d]} kpps", "usbnetd": uv,
                         "kernel": kv, "ratio": _ratio(uv, kv), "bar": "", "pass": None})
        uv, kv = get(u, "ping", "rtt_avg_ms", 1), get(k, "ping", "rtt_avg_ms", 1)
        r = _ratio(uv, kv)
        rows.append({"gadget": fn, "metric": "ping RTT avg ms (20)", "usbnetd": uv, "kernel": kv, "ratio": r,
                     "bar": f"<= {c.VM_RTT_RATIO:g}x", "pass": None if r is None else r <= c.VM_RTT_RATIO})
    return rows


METRICS = [(f"tcp_{d}", "bits_per_second", 1e6, f"TCP {ARROW[d]} Mbit/s", ".0f") for d in DIRECTIONS] + [
    (f"udp_{d}", "pps", 1e3, f"UDP{c.UDP_PAYLOAD} {ARROW[d]} kpps", ".1f") for d in DIRECTIONS] + [
    ("ping", "rtt_avg_ms", 1, "ping RTT avg ms (20)", ".3f")]


def render_variants(data: dict, variants: list[str], markdown: bool = False) -> str:
    """Every usbnetd variant of the same boot next to the kernel: value and ratio to the kernel."""
    headers = ["gadget", "metric", "kernel driver"] + [f"{v} (ratio)" for v in variants]
    rows = []
    for case in data["guest"].get("cases", []):
        k = case.get("kernel") or {}
        for key, field, scale, label, spec in METRICS:
            kv = (k.get(key) or {}).get(field)
            kv = None if kv is None else kv / scale
            row = [case["function"], label, c.fmt(kv, spec)]
            for v in variants:
                uv = ((case.get(v) or {}).get(key) or {}).get(field)
                uv = None if uv is None else uv / scale
                row.append(f"{c.fmt(uv, spec)} ({c.fmt(_ratio(uv, kv), '.2f', 'x')})")
            rows.append(row)
        # usbnetd's own costs, which the kernel driver has no figure for
        attach = [(case.get(v) or {}).get("attach_seconds") for v in variants]
        hwm = [((case.get(v) or {}).get("memory_kib") or {}).get("vmhwm_kib") for v in variants]
        rows.append([case["function"], "attach s", "-", *(c.fmt(a, ".1f") for a in attach)])
        rows.append([case["function"], "VmHWM MiB", "-", *(c.fmt(None if h is None else h / 1024, ".1f")
                                                            for h in hwm)])
    return c.table(headers, rows, markdown)


def render(data: dict, markdown: bool = False) -> str:
    headers = ["gadget", "metric", "usbnetd", "kernel driver", "usbnetd/kernel", "bar", "verdict"]
    rows = []
    for r in data["rows"]:
        spec = ".3f" if "ms" in r["metric"] else (".1f" if "kpps" in r["metric"] else ".0f")
        rows.append([r["gadget"], r["metric"], c.fmt(r["usbnetd"], spec), c.fmt(r["kernel"], spec),
                     c.fmt(r["ratio"], ".2f", "x"), r["bar"], c.verdict(r["pass"]) if r["bar"] else ""])
    return c.table(headers, rows, markdown)


def extras(data: dict, markdown: bool = False) -> str:
    """usbnetd's attach time, memory and CPU in the guest, and its error counters."""
    headers = ["gadget", "usbnetd attach s", "usbnetd RSS / HWM MiB", "usbnetd CPU s/Gbit h->d / d->h",
               "rx/tx errors", "rx/tx dropped", "UDP sent kpps h->d / d->h: usbnetd; kernel"]
    rows = []
    for case in data["guest"].get("cases", []):
        u, k = case.get("usbnetd") or {}, case.get("kernel") or {}
        mem, st = u.get("memory_kib") or {}, u.get("status") or {}

        def cpu(d: str, u=u) -> str:
            t = u.get(f"tcp_{d}") or {}
            cs = t.get("usbnetd_cpu_seconds")
            return c.fmt(cs / (t["bytes"] * 8 / 1e9) if cs is not None and t.get("bytes") else None)

        def sent(side: dict) -> str:
            return " / ".join(c.fmt((side.get(f"udp_{d}") or {}).get("sent_pps", 0) / 1e3, ".1f") for d in DIRECTIONS)

        rows.append([case["function"], c.fmt(u.get("attach_seconds"), ".1f"),
                     f"{mem['vmrss_kib'] / 1024:.1f} / {mem['vmhwm_kib'] / 1024:.1f}" if mem else "-",
                     f"{cpu('host_to_device')} / {cpu('device_to_host')}",
                     f"{st.get('rx_errors', '-')}/{st.get('tx_errors', '-')}",
                     f"{st.get('rx_dropped', '-')}/{st.get('tx_dropped', '-')}",
                     f"{sent(u)}; {sent(k)}"])
    return c.table(headers, rows, markdown)


def run_guest_script(ns: argparse.Namespace, script: str, args: list[str], prefix: str,
                     quiet: bool = False) -> tuple[int, str]:
    """One boot running bench/<script> with `args` in the guest; (harness exit status, results directory)."""
    results = ns.results or tempfile.mkdtemp(prefix=prefix)
    guest_cmd = shlex.join([sys.executable, os.path.join(REPO, "bench", script), *args])
    cmd = [sys.executable, "-m", "tests.vm.harness", "run", "--results", results, "--timeout", f"{ns.timeout:g}",
           *(["--quiet"] if quiet else []), "--", guest_cmd]
    c.log(f"vm: {shlex.join(cmd)}")
    return subprocess.run(cmd, cwd=REPO).returncode, results


def profile(ns: argparse.Namespace) -> int:
    """bench/vm.py --profile: one boot running bench/guest_profile.py; its reports are printed as they come."""
    variant = ns.variants.split(",")[0]
    rc, results = run_guest_script(ns, "guest_profile.py", ["--seconds", f"{ns.seconds:g}", "--functions",
                                                            ns.functions, "--variant", variant],
                                   "usbnetd-profile-vm-", quiet=ns.quiet)
    c.log(f"profile reports and perf data in {results} (profile-<function>-<direction>.*); harness exit {rc}")
    return rc


def wakeups(ns: argparse.Namespace) -> int:
    """bench/vm.py --wakeups: one boot running bench/guest_wakeup.py (perf bench sched pipe in the guest)."""
    return run_guest_script(ns, "guest_wakeup.py", [], "usbnetd-wakeups-vm-")[0]


def rtt_floor_table(data: dict, markdown: bool = False) -> str:
    """bench/guest_rtt_floor.py's rounds: each side's median and minimum RTT, and its median against the
    kernel's in the same round; a last row with the medians over the rounds. The sides are the run's own
    (`sides`, the kernel last), or those of the runs before usbnetd-busy."""
    sides = tuple(data.get("sides") or ("usbnetd", "relay", "relay-spin", "kernel"))
    compared = sides[:-1]
    headers = ["round"] + [f"{s} median / min ms" for s in sides] + [f"{s} / kernel" for s in compared]
    rows, per_side = [], {s: [] for s in sides}
    for i, row in enumerate(data.get("rounds", []), 1):
        cells = [str(i)]
        for s in sides:
            med, low = (row.get(s) or {}).get("median_ms"), (row.get(s) or {}).get("min_ms")
            per_side[s].append(med)
            cells.append(f"{c.fmt(med, '.3f')} / {c.fmt(low, '.3f')}")
        k = (row.get("kernel") or {}).get("median_ms")
        cells += [c.fmt(_ratio((row.get(s) or {}).get("median_ms"), k), ".2f", "x") for s in compared]
        rows.append(cells)
    if rows:
        med = {s: statistics.median(v) if v and None not in v else None for s, v in per_side.items()}
        rows.append(["median"] + [c.fmt(med[s], ".3f") for s in sides]
                    + [c.fmt(_ratio(med[s], med["kernel"]), ".2f", "x") for s in compared])
    return c.table(headers, rows, markdown) + f"\nbar: ping RTT <= {c.VM_RTT_RATIO:g}x the kernel's"


def rtt_floor(ns: argparse.Namespace) -> int:
    """bench/vm.py --rtt-floor: one boot running bench/guest_rtt_floor.py (ECM echoes through usbnetd, the
    minimal usbfs relay, blocking and spinning, and cdc_ether, interleaved); prints its table."""
    args = ["--rounds", str(max(ns.rounds, 1))] + (["--busy-cpus"] if ns.busy_cpus else [])
    rc, results = run_guest_script(ns, "guest_rtt_floor.py", args, "usbnetd-rtt-floor-vm-", quiet=ns.quiet)
    try:
        with open(os.path.join(results, "rtt-floor.json")) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        c.log(f"no rtt-floor.json in {results}: {e}")
        return rc or 1
    print(rtt_floor_table(data))
    if ns.json:
        c.write_json(ns.json, data)
    return rc


def echo_trace(ns: argparse.Namespace) -> int:
    """bench/vm.py --echo-trace: one boot running bench/guest_echo_trace.py (ftrace of each ping's way)."""
    args = ["--function", ns.functions.split(",")[0]] + (["--relay-spin"] if ns.relay_spin else [])
    if ns.busy_poll:
        args += ["--busy-poll", str(ns.busy_poll)]
    return run_guest_script(ns, "guest_echo_trace.py", args, "usbnetd-echo-vm-")[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--functions", default="ncm,ecm")
    ap.add_argument("--rounds", type=int, default=1, help="rounds per side, interleaved; figures are medians")
    ap.add_argument("--timeout", type=float, default=1500, help="whole guest run, boot included")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--results", help="host directory the guest writes to (default: a new temporary one)")
    ap.add_argument("--quiet", action="store_true", help="do not echo the guest console")
    ap.add_argument("--variants", default="usbnetd",
                    help="usbnetd variants to measure in the same boot: usbnetd (as shipped), no-gro, "
                         "pure-python, python-completions (USBNETD_NATIVE_COMPLETIONS=0), python-loop "
                         "(USBNETD_NATIVE_LOOP=0), copied (USBNETD_USBFS_MMAP=0: the pool in ordinary memory), "
                         "no-placement (USBNETD_CPU_PLACEMENT=0), pin0 / pin1 (placement off, the process pinned "
                         "to guest CPU 0 / 1), baseline")
    ap.add_argument("--baseline", metavar="COMMIT", help="the commit the 'baseline' variant runs (a git worktree)")
    ap.add_argument("--profile", action="store_true",
                    help="instead of the benchmark, profile usbnetd (the first of --variants) in the guest with "
                         "perf: per-frame CPU, system calls and wake-ups, top symbols (bench/guest_profile.py)")
    ap.add_argument("--wakeups", action="store_true",
                    help="instead of the benchmark, what a process wake-up costs in the guest (perf bench sched "
                         "pipe, bench/guest_wakeup.py)")
    ap.add_argument("--echo-trace", action="store_true",
                    help="instead of the benchmark, trace each ping's way through usbnetd and the kernel's driver "
                         "on the first of --functions (bench/guest_echo_trace.py)")
    ap.add_argument("--rtt-floor", action="store_true",
                    help="instead of the benchmark, ECM echoes through usbnetd, through the least a usbfs driver "
                         "can do (bench/micro/usbfs_relay.c, blocking and spinning) and through cdc_ether, "
                         "--rounds times "
                         "(bench/guest_rtt_floor.py)")
    ap.add_argument("--busy-poll", type=int, default=0, metavar="USEC",
                    help="with --echo-trace: also usbnetd with --busy-poll USEC")
    ap.add_argument("--relay-spin", action="store_true",
                    help="with --echo-trace: also the spinning usbfs relay (ECM)")
    ap.add_argument("--busy-cpus", action="store_true",
                    help="with --rtt-floor: a nice-19 busy loop on every guest CPU, so no vCPU halts")
    ns = ap.parse_args(argv)
    if ns.rtt_floor:
        return rtt_floor(ns)
    if ns.echo_trace:
        return echo_trace(ns)
    if ns.profile:
        return profile(ns)
    if ns.wakeups:
        return wakeups(ns)
    variants = [v for v in ns.variants.split(",") if v]
    if "baseline" in variants and not ns.baseline:
        ap.error("the baseline variant needs --baseline COMMIT")
    if ns.baseline and "baseline" not in variants:
        variants.append("baseline")
    extra: list[str] = ["--variants", ",".join(variants)]
    worktree = None
    if ns.baseline:
        worktree = tempfile.mkdtemp(prefix="usbnetd-baseline-")
        r = subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", worktree, ns.baseline],
                           capture_output=True, text=True)
        if r.returncode:
            c.log(f"cannot check out {ns.baseline}: {r.stderr.strip()}")
            return 2
        extra += ["--baseline-src", os.path.join(worktree, "src")]
        # The baseline's own C extensions, built in its worktree: without them it would run pure Python.
        r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=worktree,
                           capture_output=True, text=True)
        if r.returncode:
            c.log(f"the baseline's C extensions did not build (it runs pure Python): {r.stderr.strip()[-500:]}")
    started, date = time.monotonic(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results = ns.results or tempfile.mkdtemp(prefix="usbnetd-bench-vm-")
    guest_cmd = shlex.join([sys.executable, os.path.join(REPO, "bench", "guest_bench.py"),
                            "--seconds", f"{ns.seconds:g}", "--functions", ns.functions,
                            "--rounds", str(ns.rounds), *extra])
    cmd = [sys.executable, "-m", "tests.vm.harness", "run", "--results", results, "--timeout", f"{ns.timeout:g}",
           *(["--quiet"] if ns.quiet else []), "--", guest_cmd]
    c.log(f"vm: {shlex.join(cmd)}")
    host = c.machine()
    try:
        rc = subprocess.run(cmd, cwd=REPO).returncode
    finally:
        if worktree:
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", worktree], capture_output=True)
    path = os.path.join(results, "bench-vm.json")
    data: dict = {"mode": "vm", "date": date, "host_machine": host,
                  "host_loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                  "source": c.source(REPO),
                  "harness_exit_status": rc, "variants": variants, "baseline": ns.baseline,
                  "guest_results_dir": results,
                  "console_log": os.path.join(results, "console.log")}
    try:
        with open(path) as f:
            data["guest"] = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        c.log(f"BROKEN: no guest results ({e}); harness exit {rc}; console: {data['console_log']}")
        data["error"] = f"no guest results: {e}"
        if ns.json:
            c.write_json(ns.json, data)
        return 1
    data["rows"] = analyse(data["guest"])
    data["elapsed_s"] = round(time.monotonic() - started, 1)
    print(f"\nVM benchmark, {data['date']}; guest: QEMU TCG, {data['guest']['machine']['nproc']} vCPUs, kernel "
          f"{data['guest']['machine']['kernel']}; gadgets on dummy_hcd; {ns.seconds:g} s per run\n")
    print(f"host load average at start {host['loadavg_at_start']}, at end {data['host_loadavg_at_end']}; other "
          f"busy processes at start: {', '.join(host['other_busy']) or 'none'}")
    if host["other_busy"]:
        print("WARNING: other processes were using the host's CPUs: these figures are disturbed")
    print()
    print(render(data))
    print()
    print(extras(data))
    if variants != ["usbnetd"]:
        print("\nusbnetd variants, same boot" + (f" (baseline: {ns.baseline})" if ns.baseline else "") + "\n")
        print(render_variants(data, variants))
    broken = rc != 0 or "error" in data["guest"]
    if broken:
        c.log(f"BROKEN: guest run reported {data['guest'].get('error') or f'harness exit {rc}'}; "
              f"console: {data['console_log']}")
        data["error"] = data["guest"].get("error") or f"harness exit {rc}"
    if ns.json:
        c.write_json(ns.json, data)
        print(f"\nresults: {ns.json} ({data['elapsed_s']} s)")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
