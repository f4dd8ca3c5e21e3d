"""The `usbnetd` command line: list, run, attach, detach, status, stats, trace.

Every failure is one line on stderr and a non-zero exit (1: it could not be done, 2: bad input); no
traceback reaches the user. `run` is what the systemd unit runs; `attach` starts the same in the background
and returns once the interface is up; `status`, `stats` and `detach` talk to running instances over their
control sockets. `stats --prometheus` is the Prometheus text exposition format, built here from the stats
dictionary the daemon returns (`_prometheus`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import click

from ..netdev.tap import validate_ifname
from ..protocols.devices import PROTOCOLS, ConfigError
from . import control, logs
from . import systemd as sd
from .config import BUSY_POLL_MAX_US
from .discovery import SYSFS_USB, BadDevice, DeviceSpec, list_devices, parse_device_spec, resolve_busid, sanitize

STATUS_FIELDS = ("busid", "ifname", "protocol", "link", "speed_mbps", "mac", "mtu", "rx_packets", "tx_packets",
                 "rx_bytes", "tx_bytes", "rx_errors", "tx_errors", "rx_dropped", "tx_dropped")
_MAC = re.compile(r"^([0-9a-fA-F]{2})([:-]?)([0-9a-fA-F]{2})(\2[0-9a-fA-F]{2}){4}$")


def one_line(text: object) -> str:
    """A message for the terminal: one line whatever it carries (control characters, escapes -> '?')."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


class Fail(click.ClickException):
    """An error for the user: printed as one line, exit code 1."""

    def show(self, file=None) -> None:
        click.echo(f"usbnetd: error: {one_line(self.format_message())}", err=True)


def _device(value: str) -> DeviceSpec:
    try:
        return parse_device_spec(value)
    except BadDevice as exc:
        raise click.BadParameter(str(exc), param_hint="DEVICE") from None


def _check_ifname(ctx, param, value):
    if value is not None:
        reason = validate_ifname(value)
        if reason:
            raise click.BadParameter(reason)
    return value


def _check_mac(ctx, param, value):
    if value is None:
        return None
    if not _MAC.match(value):
        raise click.BadParameter(f"{value!r} is not a MAC address like 02:11:22:33:44:55")
    mac = bytes.fromhex(re.sub(r"[:-]", "", value))
    if mac[0] & 1:
        raise click.BadParameter(f"{value} is a multicast address; an interface needs a unicast one")
    if mac == bytes(6):
        raise click.BadParameter("00:00:00:00:00:00 is not a usable address")
    return mac


def _check_group(ctx, param, value):
    if value is not None:
        try:
            control.resolve_group(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


class _Range(click.ParamType):
    """A whole number (or, with `kind=float`, a number) in [low, high], with messages a person can read.

    click's IntRange says "'abc' is not a valid integer range." for a word; this says what is wanted.
    """

    def __init__(self, low: float, high: float, kind: type = int, metavar: str = "N") -> None:
        self.low, self.high, self.kind, self.metavar = low, high, kind, metavar
        self.name = "integer" if kind is int else "number"

    def get_metavar(self, param=None, ctx=None) -> str:  # click < 8.2 passes only param
        return self.metavar

    def convert(self, value, param, ctx):
        if isinstance(value, self.kind) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = self.kind(str(value).strip())
            except ValueError:
                what = "a whole number" if self.kind is int else "a number"
                self.fail(f"{value!r} is not {what}; give {self._span()}", param, ctx)
            if self.kind is float and not math.isfinite(number):
                self.fail(f"{value!r} is not a usable number; give {self._span()}", param, ctx)
        if not self.low <= number <= self.high:
            self.fail(f"{value} is not in the range {self._span()}", param, ctx)
        return number

    def _span(self) -> str:
        if self.kind is int:
            return f"{self.low} to {self.high}"  # :g would write 2**62 as 4.61169e+18
        return f"{self.low:g} to {self.high:g}"


CAP_NET_ADMIN = 12


def missing_capabilities(status_path: str = "/proc/self/status") -> list[str]:
    """The capabilities `run` needs that this process's effective set lacks ([] when /proc cannot tell)."""
    try:
        with open(status_path) as f:
            eff = next(int(ln.split()[1], 16) for ln in f if ln.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return []
    return [] if eff >> CAP_NET_ADMIN & 1 else ["CAP_NET_ADMIN"]


def instance_name(spec: DeviceSpec, sim_peer: str | None = None) -> str:
    if spec.kind == "sim":
        return f"sim_{spec.sim}_{sim_peer}"
    busid = resolve_busid(spec)
    if busid is None:
        raise Fail(f"no USB device {spec}")
    return busid


# What DEVICE can be, for `run --help` and `attach --help` (\b keeps click from re-wrapping the table).
DEVICE_HELP = """
\b
DEVICE is one of:
  1-1, 3-2.4           a bus id, as `usbnetd list` shows it
  0525:a4a1[/SERIAL]   VID:PID, optionally narrowed by the serial number
  sim:ncm, sim:ecm     a simulated adapter (no hardware): its wire end is a
                       second TAP, named by --sim-peer
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="usbnetd")
def cli() -> None:
    """User-space USB Ethernet adapter driver: drives a USB NIC with libusb and presents it as a TAP."""


@cli.command("list", short_help="List the USB network devices usbnetd can drive.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_cmd(as_json: bool) -> None:
    """List the USB network devices usbnetd can drive: bus id, VID:PID, protocol, configuration, state
    (free, kernel driver bound, attached by usbnetd) and product. Reads sysfs only."""
    try:
        devices = list_devices(os.environ.get("USBNETD_SYSFS", SYSFS_USB))  # elsewhere: tests
    except ConfigError as exc:
        raise Fail(str(exc)) from None
    attached = {}
    for st in _statuses():
        attached[st.get("busid")] = st.get("ifname")
    for d in devices:
        d.attached = attached.get(d.busid)
    if as_json:
        click.echo(json.dumps([d.as_dict() for d in devices], indent=2))
        return
    if not devices:
        click.echo("no USB network devices found")
        return
    click.echo(f"{'BUSID':<10} {'VID:PID':<10} {'PROTOCOL':<9} {'CONFIG':<7} {'STATE':<34} PRODUCT")
    for d in devices:
        click.echo(f"{d.busid:<10} {d.vendor:04x}:{d.product:04x}  {d.protocol:<9} {d.configuration!s:<7} "
                   f"{d.state:<34} {d.product_name or ''}")


def _run_options(f):
    # click lists options in the reverse order they are applied: applied last to first, shown first to last
    f = click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")(f)
    f = click.option("--control-group", metavar="GROUP", callback=_check_group,
                     help="Members of GROUP may use the control socket too (status, stats, detach). "
                          "Default: [control] group in the configuration (none: root only).")(f)
    f = click.option("--pure-python", is_flag=True, default=False,
                     help="Do every frame's work in Python, not in the C fast path (usbnetd.native); the same as "
                          "USBNETD_PURE_PYTHON=1. For comparing the two or ruling the C code out.")(f)
    f = click.option("--busy-poll", "busy_poll", type=_Range(0, BUSY_POLL_MAX_US, metavar="USEC"), default=None,
                     help="After any USB or interface work, poll for USEC microseconds without sleeping (0: off). "
                          "Lower latency for a CPU kept busy meanwhile; docs/performance.md, \"Busy polling\". "
                          "Default: [queues] busy_poll_us in the configuration (0).")(f)
    f = click.option("--gro/--no-gro", default=None,
                     help="Coalesce received TCP segments into one write to the interface (GRO). "
                          "Default: [queues] gro in the configuration (on).")(f)
    f = click.option("--tso/--no-tso", default=None,
                     help="With the C fast path (NCM; ECM, the CDC subset and RNDIS where the C pump owns the "
                          "transfers): let the kernel hand over TCP super-frames of up to 64 KiB and "
                          "partial checksums (TSO, checksum offload), cut and completed in C; for an AX88179 "
                          "or RTL8153, super-frames of up to 16 KiB the chip cuts and checksums itself. "
                          "Default: [queues] tso in the configuration (on).")(f)
    f = click.option("--persistent/--no-persistent", default=None,
                     help="Keep the interface (addresses, routes) when the daemon stops; detach removes it. "
                          "Default: [interface] persistent in the configuration (off).")(f)
    f = click.option("--ntb32", is_flag=True, default=None, help="NCM: use 32-bit NTBs.")(f)
    f = click.option("--configuration", type=_Range(1, 255),
                     help="Force a USB configuration (bConfigurationValue, 1 to 255).")(f)
    f = click.option("--protocol", type=click.Choice(list(PROTOCOLS)), help="Force a protocol.")(f)
    f = click.option("--mtu", type=_Range(68, 16000), help="MTU, 68 to 16000 (default: from the device).")(f)
    f = click.option("--mac", metavar="MAC", callback=_check_mac, help="Use this MAC instead of the device's.")(f)
    f = click.option("--sim-peer", metavar="NAME", default="usbnetsim0", show_default=True, callback=_check_ifname,
                     help="For sim: adapters, the name of the TAP that is the simulated wire.")(f)
    f = click.option("--ifname", metavar="NAME", callback=_check_ifname, help="Interface name (default enx<MAC>).")(f)
    return f


@cli.command(short_help="Drive a device in the foreground (what the systemd unit runs).",
             help="Drive DEVICE in the foreground until SIGINT or SIGTERM, then tear down cleanly.\n" + DEVICE_HELP)
@click.argument("device")
@_run_options
def run(device, ifname, sim_peer, mac, mtu, protocol, configuration, ntb32, persistent, tso, gro, busy_poll,
        pure_python, control_group, verbose) -> None:
    from .runner import StartError, run_device

    spec = _device(device)
    missing = missing_capabilities()
    if missing:
        raise Fail(f"missing capability {', '.join(missing)}: usbnetd creates a TAP interface and configures it "
                   "over netlink; run it as root or give it CAP_NET_ADMIN (AmbientCapabilities=CAP_NET_ADMIN)")
    # Until the instance is up, its log lines are held back: a failed start is then the one error line below,
    # not its teardown lines before it (-v, the journal and attach's log file get them all).
    gate = logs.setup(sanitize(device) or "?", verbose, hold_startup=True)
    path = control.socket_path(instance_name(spec, sim_peer))
    try:
        run_device(spec, control_path=path, ifname=ifname, sim_peer=sim_peer, mac=mac, mtu=mtu,
                   protocol=protocol, configuration=configuration, ntb32=ntb32, persistent=persistent, gro=gro,
                   tso=tso, busy_poll_us=busy_poll, native=not pure_python,
                   control_group=control.resolve_group(control_group) if control_group else None,
                   on_ready=lambda _service: gate.started())
    except StartError as exc:
        gate.failed()
        raise Fail(str(exc)) from None
    except BaseException:
        gate.failed()
        raise
    gate.started()  # stopped before it was up (a signal during start-up): nothing failed, show what happened


@cli.command(short_help="Drive a device in the background; print its interface name.",
             help="Start driving DEVICE in the background; print the interface name once it is up.\n\n"
                  "With systemd running, this starts usbnetd@<busid>.service (settings from the configuration "
                  "file); with command-line options, or without systemd, a background `usbnetd run` process "
                  "that logs to /run/usbnetd/<device>.log.\n" + DEVICE_HELP)
@click.argument("device")
@_run_options
@click.option("--timeout", type=_Range(1, 600, float, "S"), default=30, show_default=True,
              help="Seconds to wait for the interface.")
def attach(device, timeout, **opts) -> None:
    spec = _device(device)
    sim_peer = opts["sim_peer"]
    name = instance_name(spec, sim_peer)
    path = control.socket_path(name)
    if os.path.exists(path) and _query(path) is not None:
        raise Fail(f"{device} is already attached")
    # What the command line set, whatever its value: an explicit off (--no-gro, --busy-poll 0) may differ from
    # the configuration file, which a unit instance would follow instead.
    ctx = click.get_current_context()
    given = sorted(k for k in opts if ctx.get_parameter_source(k) is click.core.ParameterSource.COMMANDLINE)
    plan = sd.plan_attach(spec.kind, name, given)
    if plan.systemd:
        _attach_systemd(device, plan, path, timeout)
        return
    if plan.note:
        click.echo(f"usbnetd: note: {plan.note}", err=True)
    ifname, mac, mtu, protocol = opts["ifname"], opts["mac"], opts["mtu"], opts["protocol"]
    args = [sys.executable, "-m", "usbnetd", "run", device, "--sim-peer", sim_peer]
    for opt, val in (("--ifname", ifname), ("--mtu", mtu), ("--protocol", protocol),
                     ("--configuration", opts["configuration"]), ("--control-group", opts["control_group"]),
                     ("--busy-poll", opts["busy_poll"])):
        if val is not None:
            args += [opt, str(val)]
    if mac is not None:
        args += ["--mac", mac.hex(":")]
    if opts["ntb32"]:
        args.append("--ntb32")
    if opts["persistent"] is not None:
        args.append("--persistent" if opts["persistent"] else "--no-persistent")
    if opts["gro"] is not None:
        args.append("--gro" if opts["gro"] else "--no-gro")
    if opts["tso"] is not None:
        args.append("--tso" if opts["tso"] else "--no-tso")
    if opts["pure_python"]:
        args.append("--pure-python")
    if opts["verbose"]:
        args.append("-" + "v" * opts["verbose"])
    _attach_process(device, args, path, timeout)


def _attach_process(device: str, args: list[str], path: str, timeout: float) -> None:
    """Start `usbnetd run` in its own session and wait until it reports running.

    The instance appends to <device>.log beside its socket (instance after instance: the device's history).
    A start that fails takes back what it appended (the log is as it was, or gone if it was new) and its
    error is the one line printed. One that does not come up within `timeout` is stopped and what it wrote
    moves to <device>.failed.log, which the message names and the next attach of the device removes.
    """
    os.makedirs(control.RUN_DIR, exist_ok=True)
    base = os.path.basename(path)[: -len(".sock")]
    log_path = os.path.join(control.RUN_DIR, f"{base}.log")
    failed_path = os.path.join(control.RUN_DIR, f"{base}.failed.log")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(failed_path)  # the last attempt's, which this one replaces
    try:
        before: int | None = os.path.getsize(log_path)
    except FileNotFoundError:
        before = None
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            attempt = _take_back(log_path, before)
            raise Fail(_last_error(attempt) or f"usbnetd run exited with status {proc.returncode}")
        if _report_running(path):
            return
        time.sleep(0.1)
    proc.terminate()  # it tears down (and logs that) before it exits: wait, so its log is whole
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    attempt = _take_back(log_path, before)
    with open(failed_path, "w", encoding="utf-8") as f:
        f.write(attempt)
    raise Fail(f"{device} did not come up within {timeout:g}s (log: {failed_path})")


def _take_back(log_path: str, before: int | None) -> str:
    """What an attempt appended to `log_path`, removed from it: the log is left as it was before."""
    try:
        with open(log_path, "rb") as f:
            f.seek(before or 0)
            attempt = f.read()
        if before is None:
            os.unlink(log_path)
        else:
            os.truncate(log_path, before)
    except OSError:
        return ""
    return attempt.decode("utf-8", errors="replace")


def _report_running(path: str) -> bool:
    """Print the interface name once the instance at `path` reports running (both attach paths end here)."""
    reply = _query(path) if os.path.exists(path) else None
    if reply and reply.get("status", {}).get("state") == "running":
        click.echo(reply["status"]["ifname"])
        return True
    return False


def _attach_systemd(device: str, plan: sd.Plan, path: str, timeout: float) -> None:
    """systemctl start returns once the unit sent READY=1 (Type=notify) or failed."""
    deadline = time.monotonic() + timeout
    try:
        r = subprocess.run(plan.command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        subprocess.run([sd.SYSTEMCTL, "stop", "--no-block", plan.unit], capture_output=True)
        raise Fail(f"{device} did not come up within {timeout:g}s (journalctl -u {plan.unit})") from None
    except OSError as exc:
        raise Fail(f"cannot run systemctl: {exc.strerror or exc}") from None
    if r.returncode != 0:
        journal = sd.journal_tail(plan.unit)
        errors = [ln.split("error: ", 1)[-1] for ln in journal if "error" in ln.lower()]
        reason = (errors or [ln for ln in r.stderr.splitlines() if ln.strip()] or [f"exit {r.returncode}"])[-1]
        raise Fail(f"{plan.unit}: {reason}")
    while time.monotonic() < deadline:
        if _report_running(path):
            return
        time.sleep(0.1)
    raise Fail(f"{plan.unit} started but its control socket {path} does not report running")


def _last_error(text: str) -> str | None:
    """The error a failed `usbnetd run` printed last (or its last line), from its log output."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            return line.split("error: ", 1)[-1]
    return lines[-1] if lines else None


def _query(path: str, denied: list[str] | None = None) -> dict | None:
    """The instance's status reply, or None; a refusal (socket mode or credentials) is noted in `denied`."""
    try:
        reply = control.request(path, "status", timeout=3.0)
    except PermissionError:
        reply = {"ok": False, "error": "permission denied"}
    except (OSError, ValueError):
        return None
    if not isinstance(reply, dict):
        return None
    if reply.get("error") == "permission denied" and denied is not None:
        denied.append(path)
    return reply if reply.get("ok") else None


def _statuses(denied: list[str] | None = None) -> list[dict]:
    out = []
    for path in control.instances():
        reply = _query(path, denied)
        if reply is not None:
            st = reply["status"]
            st["_path"] = path
            out.append(st)
    return out


def _denied_message(denied: list[str]) -> str:
    more = f" (and {len(denied) - 1} more)" if len(denied) > 1 else ""
    return (f"permission denied on {denied[0]}{more}: only root and members of the control group "
            "([control] group) may use an instance's control socket")


def _select(target: str | None, every: bool = False) -> list[dict]:
    """The running instances `target` names (all of them when it is None).

    A DEVICE can name several instances: `sim:ncm` is every simulated NCM adapter, whatever its --sim-peer.
    Acting on all of them by surprise is wrong (one `detach sim:ncm` stopped two demos), so that is refused,
    naming them, unless `every` (the commands' --all) says all were meant.
    """
    denied: list[str] = []
    statuses = _statuses(denied)
    if target is None:
        matches = statuses
    else:
        busid = None
        try:
            spec = parse_device_spec(target)
            busid = resolve_busid(spec) if spec.kind != "sim" else str(spec)
        except BadDevice:
            pass
        matches = [s for s in statuses
                   if target in (s.get("ifname"), s.get("busid")) or (busid and s.get("busid") == busid)]
    if denied and not matches:
        raise Fail(_denied_message(denied))
    if denied:
        click.echo(f"usbnetd: note: {_denied_message(denied)}", err=True)
    if target is not None and len(matches) > 1 and not every:
        names = ", ".join(f"{m.get('ifname')} ({sanitize(m.get('busid'))})" for m in matches)
        raise click.UsageError(f"{target} names {len(matches)} instances: {names}; name one by its interface, "
                               "or add --all for every one")
    return matches


_ALL_HELP = "Act on every instance DEVICE names (sim:ncm can name several), not refuse."


@cli.command(short_help="Stop an instance; the kernel driver gets the device back.")
@click.argument("target", metavar="[DEVICE|IFNAME]", required=False)
@click.option("--all", "every", is_flag=True,
              help="Every instance DEVICE names; without DEVICE, every attached instance.")
@click.option("--timeout", type=_Range(1, 600, float, "S"), default=15, show_default=True,
              help="Seconds to wait for each instance to stop (its interface removed, the device released).")
def detach(target, every, timeout) -> None:
    """Stop driving a device: the interface goes away and the kernel driver gets it back.

    The instance is asked over its control socket (so it removes even a persistent interface); an instance
    that is a systemd unit is then stopped with systemctl too, so systemd records it as stopped. A DEVICE
    that names several instances is refused unless --all is given.
    """
    if target is None and not every:
        raise click.UsageError("name the DEVICE or IFNAME to detach, or give --all to detach every instance")
    matches = _select(target, every)
    if not matches and target is None:
        click.echo("no devices attached")  # `detach --all` with nothing to stop: done, as asked
        return
    if not matches:
        raise Fail(f"{target} is not attached")
    failures = []
    for st in matches:
        try:
            _detach_one(st, target or st["ifname"], timeout)
        except Fail as exc:
            if not every:
                raise
            failures.append(exc.format_message())
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise Fail(failures[0] + more)


def _detach_one(st: dict, target: str, timeout: float) -> None:
    path = st["_path"]
    plan = sd.plan_detach(st["busid"])
    try:
        control.request(path, "detach")
    except (OSError, ValueError) as exc:
        if not plan.systemd:
            raise Fail(f"cannot reach the instance for {target}: {exc}") from None
    deadline = time.monotonic() + timeout
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    if plan.systemd:
        try:
            r = subprocess.run(plan.command, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Fail(f"systemctl stop {plan.unit}: {exc}") from None
        if r.returncode != 0:
            raise Fail(f"systemctl stop {plan.unit}: {r.stderr.strip() or f'exit {r.returncode}'}")
    if os.path.exists(path):
        raise Fail(f"{st['ifname']} did not stop within {timeout:g}s")
    click.echo(f"detached {sanitize(st['busid'])} ({st['ifname']})")


@cli.command(short_help="Link, speed, MAC, MTU and counters of attached devices.")
@click.argument("target", metavar="[DEVICE|IFNAME]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--all", "every", is_flag=True, help=_ALL_HELP)
def status(target, as_json, every) -> None:
    """Show link, speed, MAC, MTU, protocol and counters of attached devices (all of them without DEVICE)."""
    matches = _select(target, every)
    if target is not None and not matches:
        raise Fail(f"{target} is not attached")
    rows = [{k: s.get(k) for k in STATUS_FIELDS} for s in matches]
    if as_json:
        # The documented fields first, then the finer counters (rx_length_errors, ...) and pool figures.
        full = [{**r, **{k: v for k, v in s.items() if k not in r and not k.startswith("_")}}
                for r, s in zip(rows, matches, strict=True)]
        click.echo(json.dumps(full, indent=2))
        return
    if not rows:
        click.echo("no devices attached")
        return
    for r, full in zip(rows, matches, strict=True):
        speed = f"{r['speed_mbps']} Mbit/s" if r["speed_mbps"] is not None else "unknown speed"
        tracing = ", traced" if full.get("tracing") else ""
        click.echo(f"{r['ifname']}: {r['protocol']} on {sanitize(r['busid'])}, link {r['link']}, {speed}, "
                   f"MAC {r['mac']}, MTU {r['mtu']}, {full.get('datapath', 'python')} data path{tracing}")
        for line in device_lines(full.get("device")):
            click.echo(f"  {line}")
        click.echo(f"  RX {r['rx_packets']} packets {r['rx_bytes']} bytes, {r['rx_errors']} errors, "
                   f"{r['rx_dropped']} dropped")
        click.echo(f"  TX {r['tx_packets']} packets {r['tx_bytes']} bytes, {r['tx_errors']} errors, "
                   f"{r['tx_dropped']} dropped")


def device_lines(dev: dict | None) -> list[str]:
    """The device facts of a status row (app/facts.py) as two lines of text: chip and bus, protocol and link."""
    if not dev or "error" in dev:
        return []
    chip = " ".join(one_line(x) for x in (dev.get("manufacturer"), dev.get("product")) if x)
    first = f"device {dev.get('vendor_id')}:{dev.get('product_id')}" + (f" {chip}" if chip else "")
    if dev.get("firmware_version"):
        first += f", firmware (bcdDevice) {dev['firmware_version']}"
    first += f", USB {dev.get('usb_speed')}, bus-info {one_line(dev.get('bus_info'))}"
    versions = [f"{label} {dev[key]}" for key, label in (("ncm_version", "NCM"), ("rndis_version", "RNDIS"),
                                                         ("cdc_version", "CDC")) if dev.get(key)]
    second = f"driver {dev.get('driver')} {dev.get('driver_version')} ({dev.get('protocol')}"
    second += (": " + ", ".join(versions) if versions else "") + f"), {dev.get('framing')}"
    second += f", duplex {dev.get('duplex')}"
    return [first, second]


# ------------------------------------------------------------------------------------------- stats --prometheus
#
# The text exposition format (version 0.0.4) that node_exporter's textfile collector reads. Its rules, which
# the first version of this broke: a metric family appears once, its HELP and TYPE first and all its samples
# (every device's) together after them; no two samples of a family have the same labels; counters are named
# *_total. The stats dictionary keeps its shape (the daemon owns it): the mapping is here.

# Top-level keys of a stats row: metric, type, help.
_PROM_KEYS: dict[str, tuple[str, str, str]] = {
    "speed_mbps": ("usbnetd_speed_mbps", "gauge", "Link speed the device reports, in Mbit/s."),
    "mtu": ("usbnetd_mtu", "gauge", "MTU of the interface."),
    "rx_packets": ("usbnetd_rx_packets_total", "counter", "Frames received from the device."),
    "tx_packets": ("usbnetd_tx_packets_total", "counter", "Frames sent to the device."),
    "rx_bytes": ("usbnetd_rx_bytes_total", "counter", "Bytes of the frames received from the device."),
    "tx_bytes": ("usbnetd_tx_bytes_total", "counter", "Bytes of the frames sent to the device."),
    "rx_errors": ("usbnetd_rx_errors_total", "counter", "Receive errors, all causes."),
    "tx_errors": ("usbnetd_tx_errors_total", "counter", "Transmit errors, all causes."),
    "rx_dropped": ("usbnetd_rx_dropped_total", "counter", "Received frames dropped."),
    "tx_dropped": ("usbnetd_tx_dropped_total", "counter", "Frames to send that were dropped."),
    "rx_length_errors": ("usbnetd_rx_length_errors_total", "counter",
                         "Received datagrams or frames with an impossible length."),
    "rx_frame_errors": ("usbnetd_rx_frame_errors_total", "counter",
                        "Malformed received transfers (bad signature, header or NDP chain)."),
    "tx_aborted_errors": ("usbnetd_tx_aborted_errors_total", "counter",
                          "Bulk OUT transfers that failed or were cancelled."),
    "rx_usb_errors": ("usbnetd_rx_usb_errors_total", "counter",
                      "Bulk IN transfers that completed with an error status."),
    "notifications": ("usbnetd_notifications_total", "counter", "Interrupt notifications from the device."),
    "notification_errors": ("usbnetd_notification_errors_total", "counter",
                            "Interrupt notifications that could not be understood."),
    "rx_transfers": ("usbnetd_rx_transfers_total", "counter", "Received bulk IN transfers decoded."),
    "tx_transfers": ("usbnetd_tx_transfers_total", "counter", "Bulk OUT transfers sent."),
    "rx_frames_per_transfer": ("usbnetd_rx_frames_per_transfer", "gauge",
                               "Received frames per bulk IN transfer, averaged since start."),
    "tx_frames_per_transfer": ("usbnetd_tx_frames_per_transfer", "gauge",
                               "Sent frames per bulk OUT transfer, averaged since start."),
    "rx_throttled": ("usbnetd_rx_throttled_total", "counter", "Times RX paused after a storm of USB errors."),
    "tracing": ("usbnetd_tracing", "gauge", "1 while `usbnetd trace` records the instance (Python data path)."),
    "cpu_placement_moves": ("usbnetd_cpu_placement_moves_total", "counter",
                            "Times the event loop's thread moved off the CPU completing USB transfers."),
    "busy_poll_us": ("usbnetd_busy_poll_microseconds", "gauge",
                     "How long the event loop polls without sleeping after work (--busy-poll; 0: off)."),
    "sim_device_cpu_seconds": ("usbnetd_sim_device_cpu_seconds_total", "counter",
                               "CPU seconds the simulated device's side took in usbnetd's thread (sim: only)."),
}
# Keys that are not numbers to export: labels, text, and status()'s copies of pool.packets and pool.in_use
# (exporting both made usbnetd_pool_in_use twice per device).
_PROM_SKIP = {"busid", "ifname", "protocol", "protocol_detail", "datapath", "state", "link", "mac", "pool_packets",
              "pool_in_use", "tx_flush", "pool", "queues", "in_flight", "rx_gro", "device",
              "tx_offload", "rx_completions", "tx_completions", "event_loop", "transfer_memory",
              "tx_pump_memory", "cpu_placement"}
# Families made from the nested parts of a row (and link_up), in output order.
_PROM_NESTED: dict[str, tuple[str, str]] = {
    "usbnetd_link_up": ("gauge", "1 when the device reports link up, else 0."),
    "usbnetd_device_info": ("gauge", "Facts about the device and its driver (the labels); always 1."),
    "usbnetd_tx_flush_total": ("counter", "Bulk OUT transfers sent, by why they were sent then."),
    "usbnetd_pool_packets": ("gauge", "Packet buffers in the pool (allocated once, at start)."),
    "usbnetd_pool_buffer_size_bytes": ("gauge", "Size of each packet buffer."),
    "usbnetd_pool_in_use": ("gauge", "Packet buffers in use now."),
    "usbnetd_pool_exhausted_total": ("counter", "Times a buffer was wanted and the pool had none free."),
    "usbnetd_queue_capacity": ("gauge", "Capacity of each ring queue."),
    "usbnetd_queue_high_water": ("gauge", "Most entries each ring queue has held at once."),
    "usbnetd_transfers_in_flight": ("gauge", "Bulk transfers kept submitted, by direction."),
    "usbnetd_rx_gro_enabled": ("gauge", "1 when received TCP segments are coalesced (GRO), else 0."),
    "usbnetd_rx_gro_superframes_total": ("counter", "Coalesced frames written to the interface."),
    "usbnetd_rx_gro_segments_total": ("counter", "TCP segments merged into coalesced frames."),
    "usbnetd_rx_gro_unverified_total": ("counter",
                                        "Segments that would have merged but failed checksum verification."),
    "usbnetd_tx_offload_enabled": ("gauge", "1 when the interface hands over TCP super-frames and partial checksums "
                                            "(TSO, checksum offload), else 0."),
    "usbnetd_tx_offload_tso_superframes_total": ("counter", "TCP super-frames read from the interface and cut."),
    "usbnetd_tx_offload_tso_segments_total": ("counter", "Frames those super-frames were cut into."),
    "usbnetd_tx_offload_csum_completed_total": ("counter", "Frames whose partial checksum was completed."),
    "usbnetd_tx_offload_dropped_total": ("counter",
                                         "Frames dropped because their headers did not match their vnet header."),
    "usbnetd_tx_offload_device_superframes_total": ("counter", "TCP super-frames handed to the device whole, for "
                                                               "its own TSO to cut (vendor chips)."),
    "usbnetd_tx_offload_device_csum_total": ("counter", "Frames whose partial checksum was left to the device's "
                                                        "checksum engine (vendor chips)."),
}
# The device facts (app/facts.py) that label usbnetd_device_info.
_DEVICE_LABELS = ("driver_version", "bus_info", "vendor_id", "product_id", "firmware_version", "usb_speed_mbps",
                  "cdc_version", "ncm_version", "rndis_version")
PROM_FAMILIES: dict[str, tuple[str, str]] = {**{m: (k, h) for m, k, h in _PROM_KEYS.values()}, **_PROM_NESTED}
_PROM_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _prom_value(value: object) -> str | None:
    """A sample value in the text format; None for what is not a number (None, strings, dicts)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return None


def _prom_label(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _prometheus_samples(r: dict) -> Iterator[tuple[str, dict[str, object], object]]:
    """(metric, labels beyond the device's, value) for every number in one device's stats row."""
    yield "usbnetd_link_up", {}, int(r.get("link") == "up")
    dev = r.get("device")
    if isinstance(dev, dict) and "error" not in dev:
        yield "usbnetd_device_info", {k: dev.get(k) for k in _DEVICE_LABELS}, 1
    for key, (metric, _kind, _help) in _PROM_KEYS.items():
        yield metric, {}, r.get(key)
    for reason, v in (r.get("tx_flush") or {}).items():
        yield "usbnetd_tx_flush_total", {"reason": reason}, v
    pool = r.get("pool") or {}
    yield "usbnetd_pool_packets", {}, pool.get("packets")
    yield "usbnetd_pool_buffer_size_bytes", {}, pool.get("buffer_size")
    yield "usbnetd_pool_in_use", {}, pool.get("in_use")
    yield "usbnetd_pool_exhausted_total", {}, pool.get("exhausted")
    for queue, info in (r.get("queues") or {}).items():
        yield "usbnetd_queue_capacity", {"queue": queue}, (info or {}).get("capacity")
        yield "usbnetd_queue_high_water", {"queue": queue}, (info or {}).get("high_water")
    for direction, v in (r.get("in_flight") or {}).items():
        yield "usbnetd_transfers_in_flight", {"direction": direction}, v
    for field, v in (r.get("rx_gro") or {}).items():
        yield (f"usbnetd_rx_gro_{field}" if field == "enabled" else f"usbnetd_rx_gro_{field}_total"), {}, v
    for field, v in (r.get("tx_offload") or {}).items():
        yield (f"usbnetd_tx_offload_{field}" if field == "enabled" else f"usbnetd_tx_offload_{field}_total"), {}, v
    for key, v in r.items():
        # A number the daemon reports that the tables above do not describe yet: still exported, untyped.
        if key not in _PROM_KEYS and key not in _PROM_SKIP:
            yield f"usbnetd_{key}", {}, v


def _prometheus(rows: list[dict]) -> str:
    """The Prometheus text exposition format (for node_exporter's textfile collector, or a scrape proxy)."""
    families: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    # Family names as a parser sees them (a counter's without _total): a new one must not clash with these.
    bases = {m.removesuffix("_total") for m in PROM_FAMILIES}
    for r in rows:
        device = {"busid": sanitize(r.get("busid")), "ifname": r.get("ifname"), "protocol": r.get("protocol")}
        for metric, extra, value in _prometheus_samples(r):
            text = _prom_value(value)
            if text is None or not _PROM_NAME.match(metric):
                continue
            if metric not in PROM_FAMILIES and metric.removesuffix("_total") in bases:
                continue
            labels = ",".join(f'{k}="{_prom_label(v)}"' for k, v in {**device, **extra}.items())
            if (metric, labels) in seen:
                continue  # two instances that look the same (same ifname in two namespaces): one series only
            seen.add((metric, labels))
            families.setdefault(metric, []).append(f"{metric}{{{labels}}} {text}")
    out: list[str] = []
    for metric, samples in families.items():
        kind, help_text = PROM_FAMILIES.get(metric) or (
            "untyped", f"usbnetd stats key {metric.removeprefix('usbnetd_')} (not described here yet).")
        out.append(f"# HELP {metric} {help_text}")
        out.append(f"# TYPE {metric} {kind}")
        out.extend(samples)
    return "".join(line + "\n" for line in out)


@cli.command(short_help="Counters in detail: batching, errors by kind, pool, queues.")
@click.argument("target", metavar="[DEVICE|IFNAME]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--prometheus", is_flag=True,
              help="Print the Prometheus text format (for node_exporter's textfile collector).")
@click.option("--all", "every", is_flag=True, help=_ALL_HELP)
def stats(target, as_json, prometheus, every) -> None:
    """Counters in detail: errors by kind, frames per transfer, TX flush reasons, pool and queues."""
    if as_json and prometheus:
        raise click.UsageError("--json and --prometheus cannot be used together: choose one output format")
    matches = _select(target, every)
    if target is not None and not matches:
        raise Fail(f"{target} is not attached")
    rows = []
    for st in matches:
        try:
            reply = control.request(st["_path"], "stats", timeout=3.0)
        except (OSError, ValueError):
            continue  # it went away between status and stats
        if reply.get("ok"):
            rows.append(reply["stats"])
    if prometheus:
        click.echo(_prometheus(rows), nl=False)
        return
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no devices attached")
        return
    for r in rows:
        click.echo(f"{r['ifname']}: {r['protocol']} ({r['protocol_detail']}) on {sanitize(r['busid'])}, "
                   f"link {r['link']}, {r.get('datapath', 'python')} data path"
                   f"{', traced' if r.get('tracing') else ''}")
        for line in device_lines(r.get("device")):
            click.echo(f"  {line}")
        click.echo(f"  RX {r['rx_packets']} frames in {r['rx_transfers']} transfers "
                   f"({r['rx_frames_per_transfer']} per transfer), {r['rx_bytes']} bytes")
        click.echo(f"  TX {r['tx_packets']} frames in {r['tx_transfers']} transfers "
                   f"({r['tx_frames_per_transfer']} per transfer), {r['tx_bytes']} bytes")
        click.echo("  TX flushes: " + ", ".join(f"{k} {v}" for k, v in r["tx_flush"].items()))
        off = r.get("tx_offload") or {}
        if off.get("device_offloads"):
            click.echo(f"  TX offloads by the device ({', '.join(off['device_offloads'])}): "
                       f"{off['device_superframes']} TCP super-frames and {off['device_csum']} checksums left to it; "
                       f"here {off['tso_superframes']} cut, {off['csum_completed']} completed, "
                       f"{off['dropped']} dropped")
        elif off.get("enabled"):
            click.echo(f"  TX offloads: {off['tso_superframes']} TCP super-frames cut into {off['tso_segments']} "
                       f"frames, {off['csum_completed']} checksums completed, {off['dropped']} dropped")
        else:
            click.echo("  TX offloads: off")
        errors = {k: r[k] for k in ("rx_errors", "rx_length_errors", "rx_frame_errors", "rx_usb_errors",
                                    "rx_dropped", "tx_errors", "tx_aborted_errors", "tx_dropped",
                                    "notification_errors")}
        click.echo("  errors: " + ", ".join(f"{k} {v}" for k, v in errors.items()))
        pool = r.get("pool", {})
        click.echo(f"  pool: {pool.get('in_use')}/{pool.get('packets')} in use x {pool.get('buffer_size')} B, "
                   f"exhausted {pool.get('exhausted')} times")
        # Where the transfers' buffers live (usbfs: mapped, not copied) and where the loop's thread runs.
        where = [f"transfer memory {r['transfer_memory']}"] if "transfer_memory" in r else []
        if "tx_pump_memory" in r:
            where.append(f"TX pump memory {r['tx_pump_memory']}")
        if "cpu_placement" in r:
            moves = r.get("cpu_placement_moves", 0)
            where.append(f"CPU placement {r['cpu_placement']} ({moves} move{'' if moves == 1 else 's'})")
        if r.get("busy_poll_us"):
            where.append(f"busy polling {r['busy_poll_us']} µs after work")
        if where:
            click.echo("  " + ", ".join(where))
        click.echo("  queue high-water: " + ", ".join(f"{q} {i['high_water']}/{i['capacity']}"
                                                      for q, i in r.get("queues", {}).items()))


@cli.command(short_help="Record an instance's frames and USB transfers as pcapng (root only).")
@click.argument("target", metavar="DEVICE|IFNAME")
@click.option("-w", "--write", "path", metavar="FILE",
              help="Write the pcapng to FILE (default: standard output, for `| tshark -r -`).")
@click.option("-c", "--count", type=_Range(1, 10**12), default=None, help="Stop after N records (frames and USB).")
@click.option("-s", "--snaplen", type=_Range(78, 262144), default=262144, show_default=True,
              help="Bytes kept of each record (a USB record's 64-byte usbmon header counts).")
@click.option("-B", "--buffer-size", "buffer_kib", type=_Range(64, 262144, metavar="KIB"), default=8192,
              show_default=True, help="KiB of records the instance holds for a slow reader before it drops them.")
def trace(target, path, count, snaplen, buffer_kib) -> None:
    """Record what a running instance does, without stopping it, as pcapng: the Ethernet frames at its
    interface in both directions (interface 0) and its USB transfers — bulk data (NTBs, RNDIS messages),
    control requests, interrupt notifications — in the Linux usbmon format (interface 1), which tshark and
    Wireshark decode as USB. Ctrl-C (or SIGTERM, or -c) ends it with a valid file and a summary on stderr.

    While a trace runs, the instance uses its Python data path (the C fast path cannot be watched); when the
    reader is slow, records are dropped, never the data path slowed, and the end of the trace says how many."""
    from .trace import TraceError, run_client

    if os.geteuid() != 0:
        raise Fail("tracing is for root only: the trace carries every frame's payload")
    matches = _select(target)
    if not matches:
        raise Fail(f"{target} is not attached")
    st = matches[0]
    if path is None:
        out = sys.stdout.buffer
        if out.isatty():
            raise click.UsageError("refusing to write pcapng to a terminal: give -w FILE, or pipe it "
                                   "(usbnetd trace ... | tshark -r -)")
        close = False
    else:
        try:
            out = open(path, "wb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise Fail(f"cannot write {path}: {exc.strerror or exc}") from None
        close = True
    try:
        summary = run_client(st["_path"], out, snaplen, count or 0,
                             lambda text: click.echo(f"usbnetd: {one_line(text)}", err=True), buffer_kib * 1024)
    except TraceError as exc:
        raise Fail(str(exc)) from None
    finally:
        if close:
            out.close()
    where = f" to {path}" if path else ""
    if summary["reader_gone"]:
        ending = " (the output's reader stopped reading: trace ended)"
    else:
        ending = "" if summary["complete"] else " (the instance went away: the trace ends there)"
    click.echo(f"usbnetd: {summary['frames']} Ethernet frames and {summary['usb']} USB records written{where}, "
               f"{summary['dropped']} dropped{ending}", err=True)


def main() -> None:
    try:
        rc = cli.main(prog_name="usbnetd", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("usbnetd: aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # click >= 8.2: `usbnetd` alone; the help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.UsageError):
            msg = exc.format_message()
            click.echo(f"usbnetd: error: {one_line(msg)}", err=True)
            sys.exit(2)
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        logging.getLogger("usbnetd").debug("internal error", exc_info=True)
        click.echo(f"usbnetd: error: internal error: {type(exc).__name__}: {one_line(exc)} (run with -vv for "
                   "details)", err=True)
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)
