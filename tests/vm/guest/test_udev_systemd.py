"""The udev rules and the systemd unit with a real udevd and real USB devices.

The guest has no systemd, so the test plays its part: it runs the host's systemd-udevd (from the read-only
host root the guest runs on) with udev/70-usbnetd.rules and an opt-in rule in /run/udev/rules.d, plugs
gadgets, and reads what udevd decided with `udevadm info`. For the opted-in device it then does what systemd
would do with SYSTEMD_WANTS=usbnetd@<busid>.service: runs the unit's ExecStart= with %i substituted (the
binary is the venv's console script, which the unit expects at /usr/local/bin/usbnetd), with a NOTIFY_SOCKET
and WATCHDOG_USEC like Type=notify and WatchdogSec= give it. It checks READY=1, the interface and a ping,
then unplugs the gadget: the instance must stop by itself (what BindsTo= on the device unit would also do)
and the interface must go.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import bench

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[3]
UNIT = REPO / "systemd" / "usbnetd@.service"
RULES_DIR = Path("/run/udev/rules.d")
UDEVD = "/lib/systemd/systemd-udevd"
START_TIMEOUT = 180  # Python under TCG starts slowly; an upper bound, not an expectation
# udevadm refuses to talk to udevd "in a chroot" (the guest runs chrooted into the host's root).
UDEV_ENV = dict(os.environ, SYSTEMD_IGNORE_CHROOT="1")


def udev_properties(busid: str) -> dict[str, str]:
    r = subprocess.run(["udevadm", "info", "--query=property", f"/sys/bus/usb/devices/{busid}"],
                       capture_output=True, text=True, env=UDEV_ENV, timeout=30)
    if r.returncode != 0:
        return {}
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


def wait_processed(busid: str, timeout: float = 60) -> dict[str, str]:
    """udevd's properties once the device's events (add, bind) are processed."""
    deadline = time.monotonic() + timeout
    while True:
        subprocess.run(["udevadm", "settle", "--timeout=10"], env=UDEV_ENV, capture_output=True, timeout=30)
        props = udev_properties(busid)
        if props.get("DRIVER") == "usb" and "ID_USB_INTERFACES" in props:
            return props
        assert time.monotonic() < deadline, f"udevd did not process {busid}: {props}"
        time.sleep(0.5)


def unit_directive(key: str) -> str:
    return re.search(rf"^{key}=(.*)$", UNIT.read_text(), re.M).group(1).strip()


@pytest.fixture
def udevd(udcs) -> Iterator[Path]:
    """The host's systemd-udevd running in the guest with our rules (and whatever local rule a test adds)."""
    if not Path(UDEVD).exists() or shutil.which("udevadm") is None:
        pytest.fail("udev is not installed on the host (scripts/test.sh installs it)")
    RULES_DIR.mkdir(parents=True, exist_ok=True)
    for rules in sorted((REPO / "udev").glob("*.rules")):
        shutil.copy(rules, RULES_DIR / rules.name)
    log = open("/run/tmp/udevd.log", "w") if Path("/run/tmp").is_dir() else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([UDEVD, "--debug"], stdout=log, stderr=subprocess.STDOUT, env=UDEV_ENV)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["udevadm", "control", "--ping"], env=UDEV_ENV, capture_output=True).returncode:
            assert proc.poll() is None, "systemd-udevd exited at start"
            assert time.monotonic() < deadline, "systemd-udevd does not answer"
            time.sleep(0.2)
        yield RULES_DIR
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for f in RULES_DIR.glob("*usbnetd*.rules"):
            f.unlink()
        if log is not subprocess.DEVNULL:
            log.close()


def opt_in(rules_dir: Path, rule: str) -> None:
    (rules_dir / "60-usbnetd-local.rules").write_text(rule + "\n")
    subprocess.run(["udevadm", "control", "--reload"], env=UDEV_ENV, check=True, capture_output=True)


class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: a thread reads every datagram as it comes, as systemd does."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.5)
        self.got: list[dict[str, str]] = []
        self.closed = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.closed:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            self.got.append(dict(line.split("=", 1) for line in data.split("\n") if "=" in line))

    def wait_for(self, key: str, timeout: float, proc: subprocess.Popen) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            for m in list(self.got):
                if key in m:
                    return m
            assert time.monotonic() < deadline, f"no {key} within {timeout}s; got {self.got}"
            assert proc.poll() is None or key == "STOPPING", f"usbnetd exited ({proc.returncode}) before {key}"
            time.sleep(0.1)

    def close(self) -> None:
        self.closed = True
        self.thread.join(5)
        self.sock.close()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # a stack dump for the log, then gone
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_udevd_tags_opted_in_device_and_the_unit_command_drives_it(gadgets, peers, udevd, tmp_path):
    ncm = gadgets("ncm")
    ecm = gadgets("ecm")
    # The administrator's opt-in: this one adapter, by serial number.
    opt_in(udevd, f'SUBSYSTEM=="usb", ENV{{DEVTYPE}}=="usb_device", ATTR{{serial}}=="{ncm.serial}", '
                  'ENV{USBNETD}="1"')
    busid = ncm.bind()
    other = ecm.bind()

    props = wait_processed(busid)
    print("udev properties of the opted-in device:", props)
    assert ":systemd:" in props.get("CURRENT_TAGS", props.get("TAGS", "")), props
    assert props.get("SYSTEMD_WANTS") == f"usbnetd@{busid}.service", props
    # The device unit systemd makes from the alias is the one the instance binds to.
    unit_name = subprocess.run(["systemd-escape", "--path", "--suffix=device", props["SYSTEMD_ALIAS"]],
                               capture_output=True, text=True, check=True).stdout.strip()
    assert unit_name == unit_directive("BindsTo").replace("%i", busid)

    # Opt-in: the other adapter is a candidate (it gets a device unit, for `usbnetd attach`), not started.
    oprops = wait_processed(other)
    assert ":systemd:" in oprops.get("CURRENT_TAGS", oprops.get("TAGS", "")), oprops
    assert "SYSTEMD_WANTS" not in oprops, oprops
    ecm.unbind()

    # What systemd would run for usbnetd@<busid>.service.
    argv = unit_directive("ExecStart").replace("%i", busid).split()
    assert argv[0] == "/usr/local/bin/usbnetd"
    installed = Path(sys.executable).parent / "usbnetd"
    argv[0] = argv[0] if Path(argv[0]).exists() else str(installed)
    notify = NotifySocket(str(tmp_path / "notify"))
    run_dir = tmp_path / "run"
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="2000000", USBNETD_RUN_DIR=str(run_dir),
               PYTHONFAULTHANDLER="1")  # SIGABRT dumps every thread's stack into the log (see stop())
    bench.kernel_driver("tun")
    log_path = tmp_path / "usbnetd.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        t0 = time.monotonic()
        ready = notify.wait_for("READY", START_TIMEOUT, proc)
        print(f"READY=1 after {time.monotonic() - t0:.1f}s: {ready}")
        ifname = f"enx{ncm.host_mac.replace(':', '')}"  # the default name: enx + the device's MAC
        assert ifname in ready["STATUS"] and "ncm" in ready["STATUS"], ready
        assert (bench.SYS_NET / ifname).exists()
        peer = peers(80)
        peer.take(ncm.gadget_netdev)
        peer.address_host_side(ifname)
        bench.wait_carrier(ifname, timeout=30)
        result = bench.ping(peer.peer_addr, count=3)
        print(result["output"])
        assert result["received"] >= 2, result["output"]
        notify.wait_for("WATCHDOG", 10, proc)

        # Unplug. usbnetd should stop by itself (exit 0, no restart under Restart=on-failure); under systemd,
        # BindsTo= would also stop it (SIGTERM) as soon as udev reports the device removed.
        t1 = time.monotonic()
        ncm.unbind()
        try:
            proc.wait(10)  # on NO_DEVICE the loop ends within one iteration (IDLE_TIMEOUT_MS = 250 ms)
            by_itself = True
        except subprocess.TimeoutExpired:
            by_itself = False
            deadline = time.monotonic() + 30
            while udev_properties(busid):  # the remove event systemd's BindsTo= reacts to
                assert time.monotonic() < deadline, "udev never saw the device go"
                time.sleep(0.5)
            proc.terminate()  # what systemd does to a unit whose BindsTo= device went away
            try:
                proc.wait(20)  # TimeoutStopSec=
            except subprocess.TimeoutExpired:
                pass
        print(f"usbnetd exited {proc.returncode} {time.monotonic() - t1:.1f}s after the unplug "
              f"({'by itself' if by_itself else 'after SIGTERM'})")
        assert not (bench.SYS_NET / ifname).exists(), "the interface must go with the device"
        assert udev_properties(busid) == {}, "udev still knows the unplugged device"
        # An unplug may show up only as bulk IN TRANSFER_ERROR plus a NO_DEVICE resubmit; the engine treats a
        # resubmission that finds no device as the unplug, so the instance must always stop by itself, exit 0.
        assert by_itself and proc.returncode == 0, f"exited {proc.returncode}, by itself: {by_itself}"
        stopping = notify.wait_for("STOPPING", 5, proc)
        assert "device disappeared" in stopping.get("STATUS", ""), stopping
    finally:
        stop(proc)
        notify.close()
        print(log_path.read_text())


def test_interface_classes_cover_every_configuration(usbnet, udevd):
    """QEMU's usb-net is in its ECM configuration; udev's ID_USB_INTERFACES still lists the RNDIS function of
    its other configuration, so the class policy sees a device usbnetd could switch."""
    busid = usbnet.wait_enumerated()
    r = subprocess.run(["udevadm", "test-builtin", "usb_id", f"/sys/bus/usb/devices/{busid}"], capture_output=True,
                       text=True, env=UDEV_ENV, timeout=30)
    interfaces = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line).get("ID_USB_INTERFACES")
    print("usb-net ID_USB_INTERFACES:", interfaces, "active configuration", usbnet.configuration)
    assert interfaces and ":020600:" in interfaces, r.stdout + r.stderr
    assert usbnet.configuration == bench.UsbNet.ECM_CONFIG
    assert ":0202ff:" in interfaces, f"the RNDIS interface of configuration 2 is missing: {interfaces}"
