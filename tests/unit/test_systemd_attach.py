"""attach/detach: when they go through systemd and which command they run.

Decision tests: only the probes (is systemd running, what state a unit is in) are replaced; what is checked is
the command `usbnetd attach`/`detach` would run. The background-process path itself is tested for real in
tests/integration and tests/vm (there is no systemd there, so those tests exercise the fallback).
"""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from usbnetd.app import cli
from usbnetd.app import systemd as sd


def states(**by_unit: str):
    return lambda unit: by_unit.get(unit, "inactive")


def yes() -> bool:
    return True


def no() -> bool:
    return False


def test_systemd_running_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(sd, "SYSTEMD_RUNTIME", str(tmp_path / "system"))
    assert not sd.systemd_running({})
    (tmp_path / "system").mkdir()
    assert sd.systemd_running({})
    assert sd.systemd_running({"USBNETD_NO_SYSTEMD": "0"})
    assert not sd.systemd_running({"USBNETD_NO_SYSTEMD": "1"}), "USBNETD_NO_SYSTEMD=1 forces the fallback"


def test_names():
    assert sd.unit_name("3-2.4") == "usbnetd@3-2.4.service"
    assert sd.device_unit_name("3-2.4") == "sys-subsystem-usbnetd-3-2.4.device"


def test_attach_with_systemd_starts_the_instance():
    plan = sd.plan_attach("busid", "3-1", [], yes, states(**{"sys-subsystem-usbnetd-3-1.device": "active"}))
    assert plan.systemd and plan.command == ("systemctl", "start", "usbnetd@3-1.service")
    assert plan.unit == "usbnetd@3-1.service" and plan.note is None


def test_attach_without_systemd_is_a_process_without_a_note():
    plan = sd.plan_attach("busid", "3-1", [], no, states())
    assert not plan.systemd and plan.command == () and plan.note is None


@pytest.mark.parametrize("kind,busid,options,device_state,why", [
    ("sim", "sim_ncm_usbnetsim0", [], "active", "simulated"),
    ("busid", "3-1", ["ifname"], "active", "--ifname given"),
    ("busid", "3-1", ["mac", "ntb32"], "active", "--mac, --ntb32 given"),
    ("busid", "3-1", [], "inactive", "no sys-subsystem-usbnetd-3-1.device"),
    ("vidpid", "3-1", [], "unknown", "no sys-subsystem-usbnetd-3-1.device"),
])
def test_attach_falls_back_with_a_note(kind, busid, options, device_state, why):
    plan = sd.plan_attach(kind, busid, options, yes, states(**{f"sys-subsystem-usbnetd-{busid}.device": device_state}))
    assert not plan.systemd and plan.command == ()
    assert why in plan.note


def test_attach_counts_every_option_set_on_the_command_line(tmp_path, monkeypatch):
    """`attach --no-gro` and `attach --busy-poll 0` are options given, so they do not go to a unit instance that
    would follow the configuration file; plain `attach` has none."""
    from click.testing import CliRunner

    from usbnetd.app import cli

    seen: list[list[str]] = []

    def plan(kind, busid, options, running=None, state=None):
        seen.append(options)
        raise cli.Fail("stop here")

    monkeypatch.setenv("USBNETD_RUN_DIR", str(tmp_path))
    monkeypatch.setattr(sd, "plan_attach", plan)
    for args in ((), ("--no-gro",), ("--busy-poll", "0"), ("--no-persistent",), ("-v", "--mtu", "1400")):
        r = CliRunner().invoke(cli.cli, ["attach", "3-1", *args])
        assert r.exit_code == 1 and "stop here" in r.output, r.output
    assert seen == [[], ["gro"], ["busy_poll"], ["persistent"], ["mtu", "verbose"]]


@pytest.mark.parametrize("state,expected", [
    ("active", ("systemctl", "stop", "usbnetd@3-1.service")),
    ("activating", ("systemctl", "stop", "usbnetd@3-1.service")),
    ("inactive", ()),  # an instance `attach` started as a process, or `usbnetd run` by hand
])
def test_detach_stops_the_unit_only_when_systemd_runs_it(state, expected):
    plan = sd.plan_detach("3-1", yes, states(**{"usbnetd@3-1.service": state}))
    assert plan.command == expected
    assert sd.plan_detach("3-1", no, states(**{"usbnetd@3-1.service": "active"})).command == ()
    assert sd.plan_detach("sim:ncm", yes, states(**{"usbnetd@sim:ncm.service": "active"})).command == ()


class Recorder:
    """Stands in for subprocess.run/Popen in cli: records the command and answers like a started instance."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def run(self, cmd, **kw):
        self.commands.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def popen(self, cmd, **kw):
        self.commands.append(list(cmd))
        raise RuntimeError("stop here: the process path was chosen")


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    rec = Recorder()
    monkeypatch.setattr(cli.control, "RUN_DIR", str(tmp_path))
    monkeypatch.setattr(cli, "instance_name", lambda spec, sim_peer=None: "3-1" if spec.kind != "sim" else "sim")
    monkeypatch.setattr(cli.subprocess, "run", rec.run)
    monkeypatch.setattr(cli.subprocess, "Popen", rec.popen)
    monkeypatch.setattr(sd, "unit_state", states(**{"sys-subsystem-usbnetd-3-1.device": "active"}))
    running = {"ifname": "enx020018010001", "state": "running", "busid": "3-1"}
    monkeypatch.setattr(cli, "_query", lambda path: {"ok": True, "status": running} if rec.commands else None)
    monkeypatch.setattr(cli.os.path, "exists", lambda p: bool(rec.commands))
    return rec


def test_cli_attach_runs_systemctl_start_when_systemd_runs(cli_env, monkeypatch):
    monkeypatch.setattr(sd, "systemd_running", yes)
    r = CliRunner().invoke(cli.cli, ["attach", "3-1"])
    assert r.exit_code == 0, r.output
    assert cli_env.commands == [["systemctl", "start", "usbnetd@3-1.service"]]
    assert r.output.strip() == "enx020018010001", "both paths print the interface name"


@pytest.mark.parametrize("running,args", [(no, []), (yes, ["--ifname", "usb0"])], ids=["no-systemd", "options"])
def test_cli_attach_falls_back_to_a_process(cli_env, monkeypatch, running, args):
    monkeypatch.setattr(sd, "systemd_running", running)
    r = CliRunner().invoke(cli.cli, ["attach", "3-1", *args])
    assert isinstance(r.exception, RuntimeError), r.output
    (cmd,) = cli_env.commands
    assert cmd[1:5] == ["-m", "usbnetd", "run", "3-1"] and "systemctl" not in cmd
    assert all(a in cmd for a in args)
