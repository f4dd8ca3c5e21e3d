"""Guest-side helpers for the plug-and-play tests: the services a desktop or server runs around usbnetd.

Runs only inside the VM guest. The guest has no systemd as PID 1 and its root is the host's, read-only, so
each service runs here as a plain process with its state on tmpfs, and only for the test that needs it:

* ``SystemBus``: a D-Bus system bus (dbus-daemon --system, the host's /usr/share/dbus-1/system.conf and the
  policies installed with networkd and NetworkManager);
* ``Dnsmasq``: DHCPv4 and router advertisements (SLAAC, RDNSS) on the device side of a link, in its
  ``PeerNamespace``; addresses 198.18.<n>.0/24 and fd00:198:18:<n>::/64;
* ``Writable``: a tmpfs over a read-only directory of the host (/var/lib/NetworkManager) for one test;
* ``start_unit_instance``: what systemd does for ``usbnetd@<busid>.service`` (the unit's ExecStart= with a
  NOTIFY_SOCKET), and the same default run directory, /run/usbnetd, whose ``<ifname>.udev`` udev reads.

None of these may ever run on the host itself: the guest test files import this module only in the guest
(``tests/vm/guest/conftest.py`` refuses to run them anywhere else).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import bench

TMP = Path("/run/tmp")


def require(*paths: str) -> None:
    """Missing tools fail the test (docs/testing.md: the VM layer never skips for a missing package)."""
    missing = [p for p in paths if not (Path(p).exists() if p.startswith("/") else shutil.which(p))]
    if missing:
        raise bench.BenchError(f"not installed on the host: {', '.join(missing)} (scripts/test.sh installs them)")


def terminate(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_file(name: str) -> Path:
    TMP.mkdir(parents=True, exist_ok=True)
    return TMP / name


class SystemBus:
    """dbus-daemon --system in the foreground; the socket is /run/dbus/system_bus_socket as everywhere."""

    SOCKET = Path("/run/dbus/system_bus_socket")

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.log = log_file("dbus-daemon.log")

    def start(self) -> SystemBus:
        require("dbus-daemon")
        Path("/run/dbus").mkdir(parents=True, exist_ok=True)
        self.SOCKET.unlink(missing_ok=True)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(["dbus-daemon", "--system", "--nofork", "--nopidfile", "--nosyslog"],
                                         stdout=log, stderr=subprocess.STDOUT)
        bench.wait_for(lambda: self.SOCKET.exists() or self.proc.poll() is not None, 30, "the D-Bus system bus")
        if self.proc.poll() is not None:
            raise bench.BenchError(f"dbus-daemon exited {self.proc.returncode}: {self.log.read_text()}")
        return self

    def stop(self) -> None:
        terminate(self.proc)
        self.SOCKET.unlink(missing_ok=True)


class Dnsmasq:
    """DHCPv4 and router advertisements on the device side (the gadget's netdev in ``peer``).

    The device side has 198.18.<n>.2/24 and fd00:198:18:<n>::2/64. Leases come from .100-.199; the RA
    advertises fd00:198:18:<n>::/64 for SLAAC (ra-only: no DHCPv6) with the device as default router, and
    RDNSS. DNS servers handed out: the device's two addresses (nothing answers on port 53: port=0).
    """

    def __init__(self, peer: bench.PeerNamespace) -> None:
        self.peer = peer
        n = peer.subnet
        self.prefix6 = f"fd00:198:18:{n:x}::"
        self.peer_addr6 = f"{self.prefix6}2"
        self.dns4 = peer.peer_addr
        self.dns6 = self.peer_addr6
        self.proc: subprocess.Popen | None = None
        self.log = log_file(f"dnsmasq-{n}.log")

    def start(self) -> Dnsmasq:
        require("/usr/sbin/dnsmasq")
        ifname, n = self.peer.ifname, self.peer.subnet
        assert ifname, "take the device's netdev into the namespace first"
        # No DAD on the device side: its link-local address must be usable for RAs at once.
        self.peer.exec("sysctl", "-q", "-w", f"net.ipv6.conf.{ifname}.accept_dad=0")
        self.peer.exec("ip", "-6", "addr", "add", f"{self.peer_addr6}/64", "dev", ifname, "nodad")
        leases = TMP / f"dnsmasq-{n}.leases"
        leases.unlink(missing_ok=True)
        argv = [
            "/usr/sbin/dnsmasq", "--keep-in-foreground", "--log-facility=-", "--log-dhcp", "--conf-file=/dev/null",
            "--user=root", "--pid-file", f"--dhcp-leasefile={leases}", "--port=0",
            f"--interface={ifname}", "--bind-interfaces",
            f"--dhcp-range=198.18.{n}.100,198.18.{n}.199,255.255.255.0,1h",
            f"--dhcp-option=option:router,{self.peer.peer_addr}",
            f"--dhcp-option=option:dns-server,{self.dns4}",
            "--enable-ra", f"--dhcp-range={self.prefix6},ra-only,64,1h",
            f"--dhcp-option=option6:dns-server,[{self.dns6}]",
            f"--ra-param={ifname},5,1800",  # an RA at least every 5 s, router lifetime 1800 s
        ]
        with open(self.log, "w") as log:
            self.proc = self.peer.popen(*argv, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise bench.BenchError(f"dnsmasq exited {self.proc.returncode}: {self.log.read_text()}")
        return self

    def stop(self) -> None:
        terminate(self.proc)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


class Writable:
    """A tmpfs over a directory of the (read-only) host root, for one test; unmounted by ``undo``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.mounted = False

    def make(self) -> Writable:
        if not self.path.is_dir():
            raise bench.BenchError(f"{self.path} does not exist on the host (is its package installed?)")
        bench.run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", str(self.path))
        self.mounted = True
        return self

    def undo(self) -> None:
        if self.mounted:
            bench.run("umount", "-l", str(self.path), check=False)
            self.mounted = False


def start_unit_instance(busid: str, notify_path: str, log_path: Path, unit: Path) -> subprocess.Popen:
    """What systemd runs for usbnetd@<busid>.service: ExecStart= with %i, NOTIFY_SOCKET and WATCHDOG_USEC.

    The unit expects /usr/local/bin/usbnetd; the guest runs this checkout's venv instead (the host's link may
    point at another checkout). The run directory is the default, /run/usbnetd, as under the unit.
    """
    import re

    exec_start = re.search(r"^ExecStart=(.*)$", unit.read_text(), re.M).group(1).strip()
    argv = exec_start.replace("%i", busid).split()
    assert argv[0] == "/usr/local/bin/usbnetd", argv
    argv[0] = str(Path(sys.executable).parent / "usbnetd")
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="10000000", PYTHONFAULTHANDLER="1")
    env.pop("USBNETD_RUN_DIR", None)
    bench.kernel_driver("tun")
    with open(log_path, "w") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
