"""The command line and the scripts as a new user meets them, against real instances (root, namespaces).

- `scripts/run.sh`'s demo stops as a whole on SIGTERM (no daemon left behind, reparented to PID 1), and a
  second demo is refused at once without harming the first. run.sh runs inside a namespace of the test's,
  with its own demo namespace name and run directory (USBNETD_DEMO_NS, USBNETD_RUN_DIR), so its usbnetd0 and
  198.18.0.0/24 never reach the host's network.
- a failed start of `usbnetd run` is one line (its teardown lines only with -v or into a log file);
- `stats --prometheus` from two real instances is one valid exposition, and node_exporter's textfile
  collector reads it without an error; `detach sim:ncm` with two instances stops neither;
- the README's usage example runs as shown, with `usbnetd` found on PATH where install.sh links it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from .conftest import Netns, Usbnetd, sh

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # prom_check.py, shared with the unit test
from prom_check import check_exposition  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RUN_SH = str(REPO / "scripts" / "run.sh")
INSTALL_SH = str(REPO / "scripts" / "install.sh")
READY = "usbnetd0 (198.18.0.1) <-> simulated NCM adapter"


@pytest.fixture(scope="module")
def installed():
    """install.sh once in the machine's namespace: run.sh runs it again inside a test namespace, which has no
    route to a package index, so everything must be current by then (scripts/test.sh has done it already)."""
    r = subprocess.run(["bash", INSTALL_SH], env=dict(os.environ, USBNETD_LINK=""), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (network namespaces)")
    ns = Netns(f"unc{uuid.uuid4().hex[:6]}")
    try:
        yield ns
    finally:
        ns.delete()


def netns_exists(name: str) -> bool:
    return name in sh("ip", "netns", "list").stdout.split()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return out


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode() for a in f.read().split(b"\0") if a]
    except FileNotFoundError:
        return []


class Demo:
    """scripts/run.sh without arguments, inside namespace `ns`."""

    def __init__(self, ns: Netns, run_dir: Path, demo_ns: str) -> None:
        self.ns, self.demo_ns = ns, demo_ns
        self.env = dict(os.environ, USBNETD_RUN_DIR=str(run_dir), USBNETD_DEMO_NS=demo_ns, USBNETD_LINK="")
        self.lines: list[str] = []
        self.proc = ns.popen("bash", RUN_SH, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=self.env)
        threading.Thread(target=self._read, daemon=True).start()
        self.daemon: int | None = None

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 300) -> None:
        """Until run.sh prints its ready line (the first run may pip install)."""
        deadline = time.monotonic() + timeout
        while not any(READY in ln for ln in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the demo did not come up:\n{self.output()}")
            time.sleep(0.1)
        daemons = [c for c in children(self.proc.pid) if "run" in cmdline(c) and "sim:ncm" in cmdline(c)]
        assert len(daemons) == 1, (daemons, self.output())
        self.daemon = daemons[0]

    def ping(self) -> bool:
        return self.ns.run("ping", "-c", "1", "-W", "3", "198.18.0.2", check=False, timeout=30).returncode == 0

    def cleanup(self) -> None:
        """Whatever the outcome, nothing of ours stays running (we started these processes)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.daemon is not None and alive(self.daemon) and "sim:ncm" in cmdline(self.daemon):
            os.kill(self.daemon, signal.SIGTERM)
            for _ in range(100):
                if not alive(self.daemon):
                    break
                time.sleep(0.1)
        sh("ip", "netns", "del", self.demo_ns, check=False)


def test_sigterm_stops_the_whole_demo(installed, netns, tmp_path):
    demo = Demo(netns, tmp_path, f"udemo{uuid.uuid4().hex[:6]}")
    try:
        demo.wait_ready()
        assert demo.ping(), demo.output()
        demo.proc.send_signal(signal.SIGTERM)
        demo.proc.wait(30)
        deadline = time.monotonic() + 5
        while alive(demo.daemon) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(demo.daemon), f"usbnetd (pid {demo.daemon}) outlived run.sh:\n{demo.output()}"
        assert "stopped: SIGTERM" in demo.output()
        assert not netns_exists(demo.demo_ns)
        assert not netns.has_link("usbnetd0")
        assert not list(tmp_path.glob("*.sock"))
    finally:
        demo.cleanup()


def test_a_second_demo_is_refused_at_once_and_the_first_goes_on(installed, netns, tmp_path):
    first = Demo(netns, tmp_path, f"udemo{uuid.uuid4().hex[:6]}")
    try:
        first.wait_ready()
        started = time.monotonic()
        r = netns.run("bash", RUN_SH, env=first.env, check=False, timeout=120, stdin=subprocess.DEVNULL)
        took = time.monotonic() - started
        assert r.returncode == 1, r
        assert took < 5, f"refused only after {took:.1f}s"
        assert r.stderr.count("\n") == 1 and "already running" in r.stderr, r.stderr
        # the first demo is untouched: its namespace, its daemon, its link
        assert netns_exists(first.demo_ns)
        assert first.proc.poll() is None and alive(first.daemon)
        assert first.ping(), first.output()
        st = json.loads(netns.run(sys.executable, "-m", "usbnetd", "status", "usbnetd0", "--json",
                                  env=first.env).stdout)
        assert [(s["ifname"], s["link"]) for s in st] == [("usbnetd0", "up")]
        first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(30)
        assert not alive(first.daemon) and not netns_exists(first.demo_ns)
    finally:
        first.cleanup()


def test_a_failed_start_is_one_line(netns, tmp_path):
    """`run --ifname eth0` where eth0 exists: the error, not the teardown before it; -v and a log keep it."""
    netns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    env = dict(os.environ, USBNETD_RUN_DIR=str(tmp_path))
    args = (sys.executable, "-m", "usbnetd", "run", "sim:ncm", "--ifname", "eth0", "--sim-peer", "simf0")
    r = netns.run(*args, env=env, check=False, timeout=60)
    assert r.returncode == 1, r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("usbnetd: error: ") and "eth0" in r.stderr, r.stderr
    error = r.stderr

    r = netns.run(*args, "-v", env=env, check=False, timeout=60)
    assert r.returncode == 1 and r.stderr.endswith(error), r.stderr
    assert "teardown: " in r.stderr and "stopped: start-up failed" in r.stderr, r.stderr

    log = tmp_path / "run.log"
    with open(log, "w") as f:
        r = subprocess.run(["ip", "netns", "exec", netns.name, *args], stdout=subprocess.DEVNULL, stderr=f,
                           env=env, timeout=60)
    text = log.read_text()
    assert r.returncode == 1 and text.endswith(error) and "teardown: " in text, text
    assert not netns.has_link("simf0")


@pytest.fixture
def two_sim_ncm(netns_pair, tmp_path):
    """Two sim:ncm instances in one run directory, as `attach sim:ncm --sim-peer wire0` and `wire1` make."""
    a, b = netns_pair
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    u0 = Usbnetd(a, b, "sim:ncm", run_dir, ifname="usbm0", peer="simm0")
    try:
        u1 = Usbnetd(a, b, "sim:ncm", run_dir, ifname="usbm1", peer="simm1")
    except BaseException:
        u0.stop()
        raise
    try:
        yield a, u0, u1
    finally:
        u0.stop()
        u1.stop()


def test_prometheus_from_two_real_instances_and_no_accidental_detach(two_sim_ncm):
    a, u0, u1 = two_sim_ncm
    text = u0.cli("stats", "--prometheus").stdout
    fams = check_exposition(text)  # also: every key the daemon reports is described (no untyped family)
    assert {s.labels["ifname"] for s in fams["usbnetd_rx_packets"].samples} == {"usbm0", "usbm1"}
    assert fams["usbnetd_pool_in_use"].type == "gauge" and len(fams["usbnetd_pool_in_use"].samples) == 2

    r = u0.cli("detach", "sim:ncm", check=False)
    assert r.returncode == 2 and "usbm0" in r.stderr and "usbm1" in r.stderr, r
    assert u0.proc.poll() is None and u1.proc.poll() is None
    assert a.has_link("usbm0") and a.has_link("usbm1")
    both = json.loads(u0.cli("status", "sim:ncm", "--all", "--json").stdout)
    assert sorted(s["ifname"] for s in both) == ["usbm0", "usbm1"]


def node_exporter() -> str | None:
    for candidate in (os.environ.get("USBNETD_NODE_EXPORTER"), shutil.which("prometheus-node-exporter"),
                      shutil.which("node_exporter"),
                      os.path.expanduser("~/.cache/usbnetd-test/prometheus-node-exporter/usr/bin/"
                                         "prometheus-node-exporter")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


FETCH = """
import sys, time, urllib.request
for _ in range(100):
    try:
        print(urllib.request.urlopen("http://127.0.0.1:9100/metrics", timeout=5).read().decode())
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("node_exporter did not answer")
"""


def test_node_exporter_reads_the_exposition(two_sim_ncm, tmp_path):
    binary = node_exporter()
    if binary is None:
        pytest.skip("node_exporter not found: scripts/test.sh unpacks Debian's prometheus-node-exporter into "
                    "~/.cache/usbnetd-test/ (USBNETD_NODE_EXPORTER names another binary)")
    a, u0, u1 = two_sim_ncm
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    (textfiles / "usbnetd.prom").write_text(u0.cli("stats", "--prometheus").stdout)
    log = open(tmp_path / "node_exporter.log", "w")  # noqa: SIM115 - closed below
    # In the test's namespace: its port 9100 is that namespace's loopback, not the machine's.
    proc = a.popen(binary, "--web.listen-address=127.0.0.1:9100", "--collector.disable-defaults",
                   "--collector.textfile", f"--collector.textfile.directory={textfiles}",
                   stdout=log, stderr=subprocess.STDOUT)
    try:
        metrics = a.run(sys.executable, "-c", FETCH, timeout=60).stdout
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
    errors = [ln for ln in (tmp_path / "node_exporter.log").read_text().splitlines() if "level=error" in ln]
    assert not errors, errors
    assert re.search(r"^node_textfile_scrape_error 0$", metrics, re.M), metrics
    for ifname in ("usbm0", "usbm1"):
        assert f'usbnetd_rx_packets_total{{busid="sim:ncm",ifname="{ifname}",protocol="ncm"}} ' in metrics
        assert f'usbnetd_pool_in_use{{busid="sim:ncm",ifname="{ifname}",protocol="ncm"}} ' in metrics
    assert "# TYPE usbnetd_pool_in_use gauge" in metrics


def readme_example() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("Example, with the simulated adapter:\n\n", 1)[1].split("\n\n", 1)[0]
    return [ln.strip() for ln in block.splitlines()]


def test_the_readme_example_runs_as_shown(netns, tmp_path):
    """After the set-up, `usbnetd` is on PATH (install.sh links it; here into a directory of the test's)."""
    bin_dir = tmp_path / "bin"
    r = subprocess.run(["bash", INSTALL_SH], env=dict(os.environ, USBNETD_LINK=str(bin_dir / "usbnetd")),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    env = {"PATH": f"{bin_dir}:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "USBNETD_RUN_DIR": str(tmp_path / "run"), "USBNETD_NO_SYSTEMD": "1"}
    lines = readme_example()
    assert [ln.split()[:2] for ln in lines] == [["usbnetd", "attach"], ["usbnetd", "status"],
                                               ["usbnetd", "detach"]], lines
    outputs = []
    try:
        for line in lines:
            command, _, comment = line.partition("#")
            r = netns.run("bash", "-c", command, env=env, check=False, timeout=120)
            assert r.returncode == 0 and r.stderr == "", (line, r)
            if "prints:" in comment:
                assert r.stdout.strip() == comment.split("prints:", 1)[1].strip(), (line, r.stdout)
            outputs.append(r.stdout)
    finally:
        netns.run("bash", "-c", "usbnetd detach --all", env=env, check=False, timeout=60)
    assert outputs[1].startswith("usb0: ncm on sim:ncm, link "), outputs[1]
    assert outputs[2] == "detached sim:ncm (usb0)\n"
    assert not netns.has_link("usb0") and not netns.has_link("wire0")
