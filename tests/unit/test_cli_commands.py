"""What a new user meets at the command line: the help, option conflicts, which instances a DEVICE names, and
what a failed attach leaves in /run/usbnetd. No root: running instances are stood in for by fake control
sockets that answer like one (status, stats, detach).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from usbnetd.app import cli


def usbnetd(*args: str, run_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, USBNETD_RUN_DIR=str(run_dir), USBNETD_NO_SYSTEMD="1", COLUMNS="80")
    return subprocess.run([sys.executable, "-m", "usbnetd", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


class FakeInstance:
    """A control socket answering like a running instance; `detach` makes it go away as a real one does."""

    def __init__(self, run_dir: Path, name: str, ifname: str, busid: str = "sim:ncm") -> None:
        self.path = str(run_dir / f"{name}.sock")
        self.status = {"busid": busid, "ifname": ifname, "protocol": "ncm", "state": "running", "link": "up",
                       "speed_mbps": 480, "mac": "02:00:00:00:00:01", "mtu": 1500}
        self.commands: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return
            with conn:
                conn.settimeout(2)
                cmd = json.loads(conn.makefile().readline())["cmd"]
                self.commands.append(cmd)
                reply = {"ok": True, "status": self.status, "stats": self.status}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            if cmd == "detach":
                self.close()

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


@pytest.fixture
def two_sim_instances(tmp_path):
    """Two sim:ncm instances (peers wire0 and wire1), as two `attach sim:ncm --sim-peer ...` make."""
    a = FakeInstance(tmp_path, "sim_ncm_wire0", "usb0")
    b = FakeInstance(tmp_path, "sim_ncm_wire1", "usb1")
    yield a, b
    a.close()
    b.close()


# ------------------------------------------------------------------------------------------------ several instances


@pytest.mark.parametrize("command", ["detach", "status", "stats"])
def test_a_device_naming_several_instances_is_refused_naming_them(tmp_path, two_sim_instances, command):
    a, b = two_sim_instances
    r = usbnetd(command, "sim:ncm", run_dir=tmp_path)
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("usbnetd: error: "), r.stderr
    assert "usb0" in r.stderr and "usb1" in r.stderr and "--all" in r.stderr, r.stderr
    assert r.stdout == ""
    assert "detach" not in a.commands + b.commands, "nothing may be stopped"
    assert os.path.exists(a.path) and os.path.exists(b.path)


def test_detach_by_interface_stops_only_that_instance(tmp_path, two_sim_instances):
    a, b = two_sim_instances
    r = usbnetd("detach", "usb1", run_dir=tmp_path)
    assert (r.returncode, r.stdout) == (0, "detached sim:ncm (usb1)\n"), r
    assert "detach" in b.commands and "detach" not in a.commands
    r = usbnetd("status", "sim:ncm", run_dir=tmp_path)  # one left: the DEVICE names one instance now
    assert r.returncode == 0 and r.stdout.startswith("usb0: ncm on sim:ncm"), r


def test_detach_all_stops_every_instance_the_device_names(tmp_path, two_sim_instances):
    a, b = two_sim_instances
    r = usbnetd("detach", "sim:ncm", "--all", run_dir=tmp_path)
    assert r.returncode == 0, r
    assert sorted(r.stdout.splitlines()) == ["detached sim:ncm (usb0)", "detached sim:ncm (usb1)"]
    assert "detach" in a.commands and "detach" in b.commands


def test_status_all_shows_every_instance_the_device_names(tmp_path, two_sim_instances):
    r = usbnetd("status", "sim:ncm", "--all", "--json", run_dir=tmp_path)
    assert r.returncode == 0, r
    assert sorted(s["ifname"] for s in json.loads(r.stdout)) == ["usb0", "usb1"]


def test_detach_all_alone_stops_every_instance_and_is_done_when_none_is_left(tmp_path, two_sim_instances):
    r = usbnetd("detach", "--all", run_dir=tmp_path)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2, r
    assert all("detach" in i.commands for i in two_sim_instances)
    r = usbnetd("detach", "--all", run_dir=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "no devices attached\n", ""), r


def test_detach_needs_a_target_or_all(tmp_path, two_sim_instances):
    r = usbnetd("detach", run_dir=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--all" in r.stderr, r
    assert all("detach" not in i.commands for i in two_sim_instances)


# ------------------------------------------------------------------------------------------------ options


def test_json_and_prometheus_together_are_refused(tmp_path, two_sim_instances):
    r = usbnetd("stats", "--json", "--prometheus", run_dir=tmp_path)
    assert r.returncode == 2, r
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("usbnetd: error: "), r.stderr
    assert "--json" in r.stderr and "--prometheus" in r.stderr


# ------------------------------------------------------------------------------------------------ help


def test_no_arguments_prints_the_usage_as_click_does(tmp_path):
    r = usbnetd(run_dir=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode in (0, 2), r  # click < 8.2 exits 0, later ones 2 (NoArgsIsHelpError)
    assert "?" not in out, out
    lines = out.splitlines()
    assert lines[0] == "Usage: usbnetd [OPTIONS] COMMAND [ARGS]...", lines
    assert "Commands:" in lines
    assert not out.startswith("usbnetd: error")


def command_rows(help_text: str) -> dict[str, str]:
    section = help_text.split("Commands:\n", 1)[1]
    return dict(re.match(r"^  (\S+)\s+(.*)$", ln).groups() for ln in section.splitlines() if ln.strip())


def test_every_command_summary_is_whole(tmp_path):
    r = usbnetd("--help", run_dir=tmp_path)
    assert r.returncode == 0, r
    rows = command_rows(r.stdout)
    assert set(rows) == {"list", "run", "attach", "detach", "status", "stats", "trace"}, rows
    for name, summary in rows.items():
        assert not summary.endswith("..."), f"{name}: {summary!r} is cut off"
        assert summary.endswith("."), f"{name}: {summary!r} is not a whole sentence (wrapped?)"
    assert all(len(ln) <= 80 for ln in r.stdout.splitlines())


@pytest.mark.parametrize("command", ["run", "attach"])
def test_run_and_attach_help_say_what_device_can_be(tmp_path, command):
    r = usbnetd(command, "--help", run_dir=tmp_path)
    assert r.returncode == 0, r
    for form in ("sim:ncm", "sim:ecm", "VID:PID", "3-2.4", "--sim-peer"):
        assert form in r.stdout, f"{form} missing from {command} --help"


def option_help(help_text: str, option: str) -> str:
    """The help text of one option in click's two-column option list (continuation lines included)."""
    lines = help_text.split("Options:\n", 1)[1].splitlines()
    out, inside = [], False
    for ln in lines:
        if re.match(r"^  -", ln):
            inside = re.match(rf"^  (-\w, )?{re.escape(option)}\b", ln) is not None
            if inside:
                out.append(re.sub(rf"^  (-\w, )?{re.escape(option)}( \S+)?", "", ln))
        elif inside:
            out.append(ln)
    return " ".join(x.strip() for x in out).strip()


@pytest.mark.parametrize("command,option", [("detach", "--timeout"), ("attach", "--timeout"),
                                            ("detach", "--all"), ("status", "--all"), ("stats", "--all")])
def test_every_option_has_help(tmp_path, command, option):
    r = usbnetd(command, "--help", run_dir=tmp_path)
    assert r.returncode == 0, r
    text = option_help(r.stdout, option)
    assert re.search(r"[a-z]{3}", text.replace("[default:", "")), f"{command} {option} has no help: {text!r}"


@pytest.mark.parametrize("args,needle", [
    (("run", "sim:ncm", "--mtu", "abc"), "'abc' is not a whole number; give 68 to 16000"),
    (("run", "sim:ncm", "--mtu", "1e3"), "'1e3' is not a whole number"),
    (("run", "sim:ncm", "--configuration", "two"), "'two' is not a whole number; give 1 to 255"),
    (("attach", "sim:ncm", "--timeout", "soon"), "'soon' is not a number; give 1 to 600"),
    (("attach", "sim:ncm", "--timeout", "nan"), "'nan' is not a usable number"),
    (("detach", "usb0", "--timeout", "0.5"), "0.5 is not in the range 1 to 600"),
])
def test_numbers_get_a_clear_message(tmp_path, args, needle):
    r = usbnetd(*args, run_dir=tmp_path)
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    assert "valid integer range" not in r.stderr and "valid float range" not in r.stderr
    assert not os.listdir(tmp_path)


# ------------------------------------------------------------------------------------------------ attach's log


def test_a_failed_attach_leaves_nothing_behind(tmp_path):
    r = usbnetd("attach", "99-99", run_dir=tmp_path)
    assert r.returncode == 1, r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("usbnetd: error: "), r.stderr
    assert os.listdir(tmp_path) == [], "a failed attach must not leave its log in the run directory"


class SlowStart:
    """Stands in for subprocess.Popen in cli.attach: an instance that never reports running."""

    line = b"usbnetd[sim:ncm]: still starting\n"
    returncode: int | None = None

    def __init__(self, args, stdout=None, **kw) -> None:
        self.log = stdout.name
        stdout.write(self.line)
        stdout.flush()

    def poll(self):
        return self.returncode

    def terminate(self) -> None:
        with open(self.log, "ab") as f:  # a real one logs its teardown on SIGTERM
            f.write(b"usbnetd[sim:ncm]: stopped: SIGTERM\n")
        self.returncode = -15

    def wait(self, timeout=None):
        return self.returncode


class FailedStart(SlowStart):
    line = b"usbnetd: error: interface usb0 already exists\n"
    returncode = 1


class GoodStart(SlowStart):
    line = b"usbnetd[sim:ncm]: usb0: link up\n"


@pytest.fixture
def attach(tmp_path, monkeypatch):
    """`usbnetd attach sim:ncm --sim-peer wire0` in-process, its `usbnetd run` replaced by `start`."""
    monkeypatch.setattr(cli.control, "RUN_DIR", str(tmp_path))
    monkeypatch.setattr(cli.sd, "systemd_running", lambda environ=None: False)
    monkeypatch.setattr(cli, "_report_running", lambda path: cli.subprocess.Popen is GoodStart)

    def run(start: type) -> tuple[int, str]:
        monkeypatch.setattr(cli.subprocess, "Popen", start)
        r = CliRunner().invoke(cli.cli, ["attach", "sim:ncm", "--sim-peer", "wire0", "--timeout", "1"])
        return r.exit_code, r.output
    return run


def test_an_attach_that_times_out_names_its_log_and_the_next_attach_cleans_it(tmp_path, attach):
    rc, out = attach(SlowStart)
    failed = tmp_path / "sim_ncm_wire0.failed.log"
    assert rc == 1 and f"did not come up within 1s (log: {failed})" in out, out
    assert os.listdir(tmp_path) == [failed.name]
    assert failed.read_text() == "usbnetd[sim:ncm]: still starting\nusbnetd[sim:ncm]: stopped: SIGTERM\n"
    rc, out = attach(FailedStart)
    assert rc == 1 and "interface usb0 already exists" in out, out
    assert os.listdir(tmp_path) == [], "the next attach removes the last one's log, and leaves none itself"


def test_instances_append_to_the_device_log_and_a_failed_start_takes_back_its_part(tmp_path, attach):
    log = tmp_path / "sim_ncm_wire0.log"
    assert attach(GoodStart)[0] == 0
    assert attach(GoodStart)[0] == 0  # (after the first stopped): the log is the device's history
    history = "usbnetd[sim:ncm]: usb0: link up\n" * 2
    assert log.read_text() == history
    rc, out = attach(FailedStart)
    assert rc == 1 and out.strip() == "usbnetd: error: interface usb0 already exists", out
    assert log.read_text() == history and os.listdir(tmp_path) == [log.name]


def test_stats_text_says_where_the_buffers_live_and_where_the_thread_runs(tmp_path):
    """The lines `usbnetd stats` prints for a real adapter's row, the pump memory and CPU placement included."""
    from test_cli_prometheus import stats_row

    inst = FakeInstance(tmp_path, "3-1", "usb0", busid="3-1")
    inst.status = dict(stats_row("usb0", "3-1"), busy_poll_us=200)
    try:
        r = usbnetd("stats", "usb0", run_dir=tmp_path)
    finally:
        inst.close()
    assert r.returncode == 0, r.stderr
    assert ("  transfer memory usbfs, TX pump memory usbfs, CPU placement avoiding CPU 1 (1 move), "
            "busy polling 200 µs after work\n") in r.stdout, r.stdout
    assert "Traceback" not in r.stderr
