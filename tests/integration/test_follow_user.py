"""The interface follows the user: `ip link` changes to MTU, promiscuity and the multicast list reach the
(simulated) device, whose filter really drops what it is told to drop; impossible MTUs are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from .conftest import Usbnetd, wire_up

FRAMES = os.path.join(os.path.dirname(__file__), "frames.py")


def wait(pred, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def delivered(u: Usbnetd, dst: str, n: int = 5) -> int:
    """Frames to `dst` sent on the wire side that reach the usbnetd interface."""
    counter = u.ns.popen(sys.executable, FRAMES, "count", u.ifname, "2", stdout=subprocess.PIPE, text=True)
    assert counter.stdout.readline().strip() == "ready"
    u.peer_ns.run(sys.executable, FRAMES, "send", u.peer, dst, str(n))
    return int(counter.communicate(timeout=30)[0].strip())


def mtu(u: Usbnetd) -> int:
    return json.loads(u.ns.run("ip", "-j", "link", "show", u.ifname).stdout)[0]["mtu"]


def test_mtu_promisc_and_multicast_reach_the_device(netns_pair, tmp_path):
    a, b = netns_pair
    u = Usbnetd(a, b, "sim:ncm", str(tmp_path), ifname="usbf0", peer="simf0")
    try:
        _, peer_ip = wire_up(u, 50)
        wait(lambda: "LOWER_UP" in a.run("ip", "link", "show", "usbf0").stdout, "carrier")

        # MTU down: accepted, and the device is told its new maximum datagram (NCM SET_MAX_DATAGRAM_SIZE).
        a.run("ip", "link", "set", "usbf0", "mtu", "1400")
        wait(lambda: "simulated device: max datagram size 1414" in u.output(), "the device to learn 1414")
        assert mtu(u) == 1400
        # MTU up past what the device takes: refused, put back, and said why.
        a.run("ip", "link", "set", "usbf0", "mtu", "9000")
        wait(lambda: "MTU 9000 refused" in u.output(), "the refusal")
        wait(lambda: mtu(u) == 1400, "the MTU to be put back")
        a.run("ping", "-c", "2", "-i", "0.2", "-W", "2", "-s", "1372", "-M", "do", peer_ip, timeout=30)

        # Unicast to another station: the device drops it until the interface is promiscuous.
        other = "02:aa:bb:cc:dd:ee"
        assert delivered(u, other) == 0
        a.run("ip", "link", "set", "usbf0", "promisc", "on")
        wait(lambda: "(promiscuous)" in u.output(), "the promiscuous filter")
        assert delivered(u, other) == 5
        a.run("ip", "link", "set", "usbf0", "promisc", "off")
        wait(lambda: delivered(u, other, 1) == 0, "promiscuous mode to end", timeout=20)

        # Multicast: the device has exact filters, so only joined groups pass.
        group = "01:00:5e:7f:00:01"
        assert delivered(u, group) == 0
        a.run("ip", "maddr", "add", group, "dev", "usbf0")
        wait(lambda: delivered(u, group, 1) == 1, "the joined group to pass", timeout=20)
        assert "exact multicast filters" in u.output()
        # all-multicast opens every group
        assert delivered(u, "01:00:5e:7f:00:02") == 0
        a.run("ip", "link", "set", "usbf0", "allmulticast", "on")
        wait(lambda: delivered(u, "01:00:5e:7f:00:02", 1) == 1, "all-multicast", timeout=20)
    finally:
        assert u.stop() == 0, u.output()
