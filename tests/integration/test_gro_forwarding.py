"""GRO super-frames forwarded onwards: the kernel must segment them and finish every TCP checksum.

usbnetd writes coalesced TCP runs to its TAP as CHECKSUM_PARTIAL GSO frames (gro.py), with the pseudo-header
sum in the TCP check field. Delivered locally that field is never looked at; forwarded out of a device that
offloads nothing, the kernel segments the frame and completes each segment's checksum from that field. A
wrong field would give segments with bad checksums, which the receiver drops: the stream would not finish.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from .conftest import Netns, Usbnetd, wire_up
from .test_sim_adapter import TCP_TOOL

STREAM = 4 * 1024 * 1024


def test_coalesced_frames_forwarded_out_of_a_device_without_offloads(netns_pair, tmp_path):
    if shutil.which("ethtool") is None:
        pytest.fail("ethtool is missing; scripts/test.sh installs it")
    a, b = netns_pair
    c = Netns(b.name.replace("unp", "unc"))
    u = Usbnetd(a, b, "sim:ncm", str(tmp_path), ifname="usbg0", peer="simg0")
    try:
        _, _ = wire_up(u, 82)
        # a forwards from usbnetd's interface to c over a veth pair that offloads nothing on a's side.
        a.run("ip", "link", "add", "fwa0", "type", "veth", "peer", "name", "fwc0")
        a.run("ip", "link", "set", "fwc0", "netns", c.name)
        a.run("ethtool", "-K", "fwa0", "tx", "off", "sg", "off", "tso", "off", "gso", "off")
        a.run("ip", "addr", "add", "198.18.83.1/24", "dev", "fwa0")
        a.run("ip", "link", "set", "fwa0", "up")
        c.run("ip", "addr", "add", "198.18.83.2/24", "dev", "fwc0")
        c.run("ip", "link", "set", "fwc0", "up")
        c.run("ip", "route", "add", "default", "via", "198.18.83.1")
        b.run("ip", "route", "add", "198.18.83.0/24", "via", "198.18.82.1")
        a.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        b.run("ping", "-c", "2", "-W", "2", "198.18.83.2", timeout=30)

        srv = c.popen(sys.executable, TCP_TOOL, "serve", "5203", stdout=-1, text=True)
        assert srv.stdout.readline().strip() == "listening"
        sent = b.run(sys.executable, TCP_TOOL, "send", "198.18.83.2", "5203", str(STREAM),
                     timeout=120).stdout.strip()
        got = srv.communicate(timeout=60)[0].strip()
        assert sent == got and sent.startswith(str(STREAM)), (sent, got)

        (d,) = json.loads(u.cli("stats", "--json").stdout)
        assert d["rx_gro"]["superframes"] > 0, d  # the stream really went through as coalesced frames
    finally:
        rc = u.stop()
        c.delete()
    assert rc == 0, u.output()
