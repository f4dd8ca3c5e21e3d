"""The `usbnetd` command line: list, run, attach, detach, status.

Every failure is one line on stderr and a non-zero exit (1: it could not be done, 2: bad input); no
traceback reaches the user. `run` is what the systemd unit runs; `attach` starts the same in the background
and returns once the interface is up; `status` and `detach` talk to running instances over their control
sockets.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time

import click

from ..netdev.tap import validate_ifname
from ..protocols.devices import PROTOCOLS, ConfigError
from . import control, logs
from . import systemd as sd
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="usbnetd")
def cli() -> None:
    """User-space USB Ethernet adapter driver: drives a USB NIC with libusb and presents it as a TAP."""


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_cmd(as_json: bool) -> None:
    """List the USB network devices usbnetd can drive."""
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
    f = click.option("--ifname", callback=_check_ifname, help="Interface name (default enx<MAC>).")(f)
    f = click.option("--sim-peer", default="usbnetsim0", show_default=True, callback=_check_ifname,
                     help="For sim: adapters, the name of the TAP that is the simulated wire.")(f)
    f = click.option("--mac", callback=_check_mac, help="Use this MAC instead of the device's.")(f)
    f = click.option("--mtu", type=click.IntRange(68, 16000), help="MTU (default: from the device).")(f)
    f = click.option("--protocol", type=click.Choice(list(PROTOCOLS)), help="Force a protocol.")(f)
    f = click.option("--configuration", type=click.IntRange(1, 255), help="Force a USB configuration.")(f)
    f = click.option("--ntb32", is_flag=True, default=None, help="NCM: use 32-bit NTBs.")(f)
    f = click.option("--persistent/--no-persistent", default=None,
                     help="Keep the interface (addresses, routes) when the daemon stops; detach removes it. "
                          "Default: [interface] persistent in the configuration (off).")(f)
    f = click.option("--gro/--no-gro", default=None,
                     help="Coalesce received TCP segments into one write to the interface (GRO). "
                          "Default: [queues] gro in the configuration (on).")(f)
    f = click.option("--control-group", metavar="GROUP", callback=_check_group,
                     help="Members of GROUP may use the control socket too (status, stats, detach). "
                          "Default: [control] group in the configuration (none: root only).")(f)
    f = click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")(f)
    return f


@cli.command()
@click.argument("device")
@_run_options
def run(device, ifname, sim_peer, mac, mtu, protocol, configuration, ntb32, persistent, gro, control_group,
        verbose) -> None:
    """Drive DEVICE in the foreground until SIGINT or SIGTERM."""
    from .runner import StartError, run_device

    spec = _device(device)
    missing = missing_capabilities()
    if missing:
        raise Fail(f"missing capability {', '.join(missing)}: usbnetd creates a TAP interface and configures it "
                   "over netlink; run it as root or give it CAP_NET_ADMIN (AmbientCapabilities=CAP_NET_ADMIN)")
    logs.setup(sanitize(device) or "?", verbose)
    path = control.socket_path(instance_name(spec, sim_peer))
    try:
        run_device(spec, control_path=path, ifname=ifname, sim_peer=sim_peer, mac=mac, mtu=mtu,
                   protocol=protocol, configuration=configuration, ntb32=ntb32, persistent=persistent, gro=gro,
                   control_group=control.resolve_group(control_group) if control_group else None)
    except StartError as exc:
        raise Fail(str(exc)) from None


@cli.command()
@click.argument("device")
@_run_options
@click.option("--timeout", type=click.FloatRange(1, 600), default=30, show_default=True,
              help="Seconds to wait for the interface.")
def attach(device, timeout, **opts) -> None:
    """Start driving DEVICE in the background; print the interface name once it is up.

    With systemd running, this starts usbnetd@<busid>.service (settings from the configuration file); with
    command-line options, or without systemd, a background `usbnetd run` process.
    """
    spec = _device(device)
    sim_peer = opts["sim_peer"]
    name = instance_name(spec, sim_peer)
    path = control.socket_path(name)
    if os.path.exists(path) and _query(path) is not None:
        raise Fail(f"{device} is already attached")
    plan = sd.plan_attach(spec.kind, name, sd.given_options(opts, {"sim_peer": "usbnetsim0"}))
    if plan.systemd:
        _attach_systemd(device, plan, path, timeout)
        return
    if plan.note:
        click.echo(f"usbnetd: note: {plan.note}", err=True)
    ifname, mac, mtu, protocol = opts["ifname"], opts["mac"], opts["mtu"], opts["protocol"]
    args = [sys.executable, "-m", "usbnetd", "run", device, "--sim-peer", sim_peer]
    for opt, val in (("--ifname", ifname), ("--mtu", mtu), ("--protocol", protocol),
                     ("--configuration", opts["configuration"]), ("--control-group", opts["control_group"])):
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
    if opts["verbose"]:
        args.append("-" + "v" * opts["verbose"])
    os.makedirs(control.RUN_DIR, exist_ok=True)
    log_path = os.path.join(control.RUN_DIR, f"{os.path.basename(path)[:-5]}.log")
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Fail(_last_error(log_path) or f"usbnetd run exited with status {proc.returncode}")
        if _report_running(path):
            return
        time.sleep(0.1)
    proc.terminate()
    raise Fail(f"{device} did not come up within {timeout:g}s (log: {log_path})")


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


def _last_error(log_path: str) -> str | None:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return None
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


def _select(target: str | None) -> list[dict]:
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
    return matches


@cli.command()
@click.argument("target", metavar="DEVICE|IFNAME")
@click.option("--timeout", type=click.FloatRange(1, 600), default=15, show_default=True)
def detach(target, timeout) -> None:
    """Stop driving a device: the interface goes away and the kernel driver gets it back.

    The instance is asked over its control socket (so it removes even a persistent interface); an instance
    that is a systemd unit is then stopped with systemctl too, so systemd records it as stopped.
    """
    matches = _select(target)
    if not matches:
        raise Fail(f"{target} is not attached")
    for st in matches:
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
        click.echo(f"detached {st['busid']} ({st['ifname']})")


@cli.command()
@click.argument("target", metavar="[DEVICE|IFNAME]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def status(target, as_json) -> None:
    """Show link, speed, MAC, MTU, protocol and counters of attached devices."""
    matches = _select(target)
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
    for r in rows:
        speed = f"{r['speed_mbps']} Mbit/s" if r["speed_mbps"] is not None else "unknown speed"
        click.echo(f"{r['ifname']}: {r['protocol']} on {sanitize(r['busid'])}, link {r['link']}, {speed}, "
                   f"MAC {r['mac']}, MTU {r['mtu']}")
        click.echo(f"  RX {r['rx_packets']} packets {r['rx_bytes']} bytes, {r['rx_errors']} errors, "
                   f"{r['rx_dropped']} dropped")
        click.echo(f"  TX {r['tx_packets']} packets {r['tx_bytes']} bytes, {r['tx_errors']} errors, "
                   f"{r['tx_dropped']} dropped")


def _prometheus(rows: list[dict]) -> str:
    """The Prometheus text exposition format (for node_exporter's textfile collector, or a scrape proxy)."""
    out: list[str] = []
    seen: set[str] = set()

    def metric(name: str, value, labels: dict, kind: str = "counter") -> None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return
        full = f"usbnetd_{name}"
        if full not in seen:
            seen.add(full)
            out.append(f"# TYPE {full} {kind}")
        label = ",".join(f'{k}="{v}"' for k, v in labels.items())
        out.append(f"{full}{{{label}}} {value}")

    gauges = {"speed_mbps", "mtu", "rx_frames_per_transfer", "tx_frames_per_transfer"}
    for r in rows:
        base = {"busid": sanitize(r.get("busid")), "ifname": r.get("ifname"), "protocol": r.get("protocol")}
        metric("link_up", int(r.get("link") == "up"), base, "gauge")
        for k, v in r.items():
            metric(k, v, base, "gauge" if k in gauges else "counter")
        for reason, v in (r.get("tx_flush") or {}).items():
            metric("tx_flush_total", v, {**base, "reason": reason})
        pool = r.get("pool") or {}
        for k in ("in_use", "exhausted"):
            metric(f"pool_{k}", pool.get(k), base, "gauge" if k == "in_use" else "counter")
        for q, info in (r.get("queues") or {}).items():
            metric("queue_high_water", info.get("high_water"), {**base, "queue": q}, "gauge")
    return "\n".join(out) + "\n"


@cli.command()
@click.argument("target", metavar="[DEVICE|IFNAME]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--prometheus", is_flag=True, help="Print Prometheus text format (for a textfile collector).")
def stats(target, as_json, prometheus) -> None:
    """Counters in detail: errors by kind, frames per transfer, TX flush reasons, pool and queues."""
    matches = _select(target)
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
                   f"link {r['link']}")
        click.echo(f"  RX {r['rx_packets']} frames in {r['rx_transfers']} transfers "
                   f"({r['rx_frames_per_transfer']} per transfer), {r['rx_bytes']} bytes")
        click.echo(f"  TX {r['tx_packets']} frames in {r['tx_transfers']} transfers "
                   f"({r['tx_frames_per_transfer']} per transfer), {r['tx_bytes']} bytes")
        click.echo("  TX flushes: " + ", ".join(f"{k} {v}" for k, v in r["tx_flush"].items()))
        errors = {k: r[k] for k in ("rx_errors", "rx_length_errors", "rx_frame_errors", "rx_usb_errors",
                                    "rx_dropped", "tx_errors", "tx_aborted_errors", "tx_dropped",
                                    "notification_errors")}
        click.echo("  errors: " + ", ".join(f"{k} {v}" for k, v in errors.items()))
        pool = r.get("pool", {})
        click.echo(f"  pool: {pool.get('in_use')}/{pool.get('packets')} in use x {pool.get('buffer_size')} B, "
                   f"exhausted {pool.get('exhausted')} times")
        click.echo("  queue high-water: " + ", ".join(f"{q} {i['high_water']}/{i['capacity']}"
                                                      for q, i in r.get("queues", {}).items()))


def main() -> None:
    try:
        rc = cli.main(prog_name="usbnetd", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("usbnetd: aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
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
