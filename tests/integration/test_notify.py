"""sd_notify from a real `usbnetd run sim:ncm`: the messages systemd would get, in the order it would get them.

The test plays systemd's part: it binds the AF_UNIX datagram socket, starts usbnetd with NOTIFY_SOCKET (and
WATCHDOG_USEC) pointing at it, and records every message with the moment it arrived and whether usbnetd's
interface existed when it was sent. For the last, an rtnetlink socket in usbnetd's namespace listens for
RTM_NEWLINK: the kernel queues that message inside the TUNSETIFF ioctl, so if usbnetd sent READY=1 after
creating its TAP, the NEWLINK is already waiting when READY=1 is read; had READY=1 been sent first, it is not.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import time

from .conftest import Netns

IFNAME, PEER = "usbnn0", "simn0"
CLONE_NEWNET = 0x40000000
RTMGRP_LINK = 1
RTM_NEWLINK = 16
IFLA_IFNAME = 3


def link_monitor(netns: str) -> socket.socket:
    """A non-blocking rtnetlink socket subscribed to link events in namespace `netns`."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            s.bind((0, RTMGRP_LINK))
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)
    s.setblocking(False)
    return s


def new_links(nl: socket.socket) -> set[str]:
    """Names in every RTM_NEWLINK queued on `nl` so far."""
    names = set()
    while True:
        try:
            data = nl.recv(65536)
        except BlockingIOError:
            return names
        off = 0
        while off + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            if kind == RTM_NEWLINK:
                a = off + 16 + 16  # nlmsghdr, ifinfomsg
                while a + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if atype == IFLA_IFNAME:
                        names.add(data[a + 4:a + alen].split(b"\0", 1)[0].decode())
                    a += (alen + 3) & ~3
            off += (length + 3) & ~3


class Listener:
    def __init__(self, path: str, ns: Netns) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.links = link_monitor(ns.name)
        self.seen: set[str] = set()
        # (time read, fields, whether usbnetd's interface had been created before the message was sent)
        self.messages: list[tuple[float, dict[str, str], bool]] = []

    def collect(self, ns: Netns, until, timeout: float, proc: subprocess.Popen, log_path: str) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; got {[m[1] for m in self.messages]}\n{open(log_path).read()}"
            self.sock.settimeout(min(left, 0.5))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                if proc.poll() is not None and not until():
                    raise AssertionError(f"usbnetd exited ({proc.returncode}) before the expected message; "
                                         f"got {[m[1] for m in self.messages]}\n{open(log_path).read()}") from None
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.seen |= new_links(self.links)
            self.messages.append((time.monotonic(), fields, IFNAME in self.seen))

    def with_key(self, key: str) -> list[dict[str, str]]:
        return [m[1] for m in self.messages if key in m[1]]


def start(ns: Netns, tmp_path, listener_path: str, **env: str) -> tuple[subprocess.Popen, str]:
    log_path = str(tmp_path / "run.log")
    full_env = dict(os.environ, USBNETD_RUN_DIR=str(tmp_path / "run"), NOTIFY_SOCKET=listener_path, **env)
    with open(log_path, "w") as log:
        proc = ns.popen(sys.executable, "-m", "usbnetd", "run", "sim:ncm", "--ifname", IFNAME, "--sim-peer", PEER,
                        "-v", stdout=log, stderr=subprocess.STDOUT, env=full_env)
    return proc, log_path


def test_ready_status_watchdog_stopping(netns_pair, tmp_path):
    a, _ = netns_pair
    path = str(tmp_path / "notify.sock")
    lst = Listener(path, a)
    # 300 ms: usbnetd must ping every 150 ms.
    proc, log_path = start(a, tmp_path, path, WATCHDOG_USEC="300000")
    try:
        lst.collect(a, lambda: lst.with_key("READY"), 30, proc, log_path)
        t_ready, ready, existed = next(m for m in lst.messages if "READY" in m[1])
        assert ready["READY"] == "1"
        assert existed, "READY=1 was sent before usbnetd's interface existed"
        assert not lst.with_key("WATCHDOG"), "WATCHDOG=1 before READY=1"
        assert "ncm" in ready["STATUS"] and IFNAME in ready["STATUS"] and "link" in ready["STATUS"], ready

        # The simulated device reports its link once the data interface is active: STATUS follows.
        lst.collect(a, lambda: any("link up" in f.get("STATUS", "") for f in lst.with_key("STATUS")), 15, proc,
                    log_path)
        assert "LOWER_UP" in a.run("ip", "link", "show", IFNAME).stdout

        # Watchdog pings, about every 150 ms, for as long as the loop turns.
        n0 = len(lst.with_key("WATCHDOG"))
        t0 = time.monotonic()
        lst.collect(a, lambda: len(lst.with_key("WATCHDOG")) >= n0 + 5, 10, proc, log_path)
        elapsed = time.monotonic() - t0
        assert elapsed < 2.0, f"5 watchdog pings took {elapsed:.2f}s; expected every 0.15 s"
        pings = [m[0] for m in lst.messages if "WATCHDOG" in m[1]]
        gaps = [b - a_ for a_, b in zip(pings, pings[1:], strict=False)]
        assert max(gaps) < 0.3, f"a gap between pings reached the watchdog interval: {gaps}"
        statuses = [f["STATUS"] for f in lst.with_key("STATUS")]
        assert len(statuses) == len(set(statuses)), f"STATUS repeated without a change: {statuses}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    lst.collect(a, lambda: lst.with_key("STOPPING"), 5, proc, log_path)
    assert proc.returncode == 0, open(log_path).read()
    stopping = lst.with_key("STOPPING")
    assert stopping[0]["STOPPING"] == "1" and "SIGTERM" in stopping[0].get("STATUS", ""), stopping
    assert not a.has_link(IFNAME)
    assert [m[1] for m in lst.messages].index(stopping[0]) == len(lst.messages) - 1, "nothing after STOPPING=1"


def test_no_watchdog_unless_asked(netns_pair, tmp_path):
    a, _ = netns_pair
    path = str(tmp_path / "notify.sock")
    lst = Listener(path, a)
    # WATCHDOG_PID naming another process: the watchdog is not ours (sd_watchdog_enabled's rule).
    proc, log_path = start(a, tmp_path, path, WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    try:
        lst.collect(a, lambda: lst.with_key("READY"), 30, proc, log_path)
        time.sleep(1.0)
        lst.sock.setblocking(False)
        while True:
            try:
                lst.messages.append((time.monotonic(), {"raw": lst.sock.recv(4096).decode()}, True))
            except BlockingIOError:
                break
        assert not any("WATCHDOG" in str(m[1]) for m in lst.messages), lst.messages
    finally:
        proc.terminate()
        proc.wait(15)
    assert proc.returncode == 0
