"""`usbnetd attach` / `detach` through systemd, when systemd runs the machine.

With systemd, `attach 3-1` starts usbnetd@3-1.service (systemd/usbnetd@.service: supervised, restarted on
failure, watchdog, hardened, stopped when the device goes) instead of a background process; `detach` stops
the unit. The decision is `plan_attach` / `plan_detach`, pure functions of what they are given, so they are
tested without systemd. The fallback, a background `usbnetd run`, is used when

- systemd is not running (no /run/systemd/system) or USBNETD_NO_SYSTEMD=1;
- the device is a simulated adapter (not a USB device: no unit, no device unit);
- options are given on the command line (--ifname, --mac, ...): a unit instance takes its settings only from
  the configuration file, so the instance is started outside systemd, with a note saying so;
- the device has no device unit (the udev rules are not installed, or the device is not one they know),
  because usbnetd@.service binds to sys-subsystem-usbnetd-<busid>.device and would wait for it in vain.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

SYSTEMD_RUNTIME = "/run/systemd/system"  # exists iff systemd is PID 1 (sd_booted(3))
SYSTEMCTL = "systemctl"


def systemd_running(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("USBNETD_NO_SYSTEMD", "") not in ("", "0"):
        return False
    return os.path.isdir(SYSTEMD_RUNTIME)


def unit_name(busid: str) -> str:
    return f"usbnetd@{busid}.service"


def device_unit_name(busid: str) -> str:
    """The device unit udev/70-usbnetd.rules makes (alias /sys/subsystem/usbnetd/<bus>/<port path>)."""
    return f"sys-subsystem-usbnetd-{busid}.device"


def unit_state(unit: str, timeout: float = 10) -> str:
    """systemd's ActiveState of `unit` ("active", "inactive", "activating", ...); "unknown" on any failure."""
    try:
        r = subprocess.run([SYSTEMCTL, "show", "--property=ActiveState", "--value", unit], capture_output=True,
                           text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if r.returncode != 0:
        return "unknown"
    return r.stdout.strip() or "unknown"


@dataclass(frozen=True)
class Plan:
    """How to attach or detach: through systemd (`command` is the systemctl command) or a process."""

    systemd: bool
    command: tuple[str, ...] = ()
    unit: str | None = None
    note: str | None = None  # why not systemd, when systemd runs but is not used


def plan_attach(kind: str, busid: str, options: list[str], running: Callable[[], bool] | None = None,
                state: Callable[[str], str] | None = None) -> Plan:
    """`kind` is the DEVICE kind ("usb", "sim", ...), `busid` the resolved bus id, `options` the names of the
    run options given on the command line. `running` and `state` default to the real probes."""
    running = running or systemd_running
    state = state or unit_state
    if not running():
        return Plan(False)
    if kind == "sim":
        return Plan(False, note="simulated adapters run outside systemd")
    if options:
        opts = ", ".join("--" + o.replace("_", "-") for o in options)
        return Plan(False, note=f"{opts} given: running outside systemd (a usbnetd@.service instance takes its "
                                "settings from /etc/usbnetd/usbnetd.toml)")
    device = device_unit_name(busid)
    if state(device) != "active":
        return Plan(False, note=f"systemd has no {device} (udev/70-usbnetd.rules not installed?): "
                                "running outside systemd")
    unit = unit_name(busid)
    return Plan(True, (SYSTEMCTL, "start", unit), unit)


def plan_detach(busid: str, running: Callable[[], bool] | None = None,
                state: Callable[[str], str] | None = None) -> Plan:
    """Stop through systemd when the instance is a unit systemd runs; otherwise only the control socket."""
    running = running or systemd_running
    state = state or unit_state
    if not running() or busid.startswith("sim:"):
        return Plan(False)
    unit = unit_name(busid)
    if state(unit) not in ("active", "activating", "reloading", "deactivating"):
        return Plan(False)
    return Plan(True, (SYSTEMCTL, "stop", unit), unit)


def journal_tail(unit: str, lines: int = 20) -> list[str]:
    """The unit's last log lines (for an error message); empty when journalctl is not there."""
    try:
        r = subprocess.run(["journalctl", "--unit", unit, "--lines", str(lines), "--output=cat", "--no-pager",
                            "--boot"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
