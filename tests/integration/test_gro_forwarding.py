"""GRO super-frames delivered and forwarded onwards: the kernel must take them, segment them and finish every
TCP checksum.

usbnetd writes coalesced TCP runs to its TAP as CHECKSUM_PARTIAL GSO frames (gro.py), TCPV4 or TCPV6, with
the pseudo-header sum in the TCP check field. Delivered locally that field is never looked at; forwarded out
of a device that offloads nothing, the kernel segments the frame and completes each segment's checksum from
that field. A wrong field would give segments with bad checksums, which the receiver drops: the stream would
not finish. A super-frame the kernel refused (a bad virtio_net_hdr, a payload length that does not match) would
fail the write and be counted dropped: the stream would stall.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from usbnetd import native

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


def _stream6(server_ns: Netns, client_ns: Netns, server_ip: str, port: int) -> None:
    srv = server_ns.popen(sys.executable, TCP_TOOL, "serve6", str(port), stdout=-1, text=True)
    assert srv.stdout.readline().strip() == "listening"
    sent = client_ns.run(sys.executable, TCP_TOOL, "send", server_ip, str(port), str(STREAM),
                         timeout=120).stdout.strip()
    got = srv.communicate(timeout=60)[0].strip()
    assert sent == got and sent.startswith(str(STREAM)), (sent, got)


def test_ipv6_super_frames_delivered_and_forwarded(netns_pair, tmp_path):
    """The TCPV6 counterpart: a stream over IPv6 (2001:2::/48, RFC 5180's benchmarking range) from the wire's
    peer to usbnetd's namespace, coalesced into GSO_TCPV6 super-frames, must arrive whole; then the same through
    usbnetd's namespace, forwarded out of a veth that offloads nothing (the kernel segments each super-frame
    and completes every checksum from the pseudo-header sum). The daemon runs GRO only in the C path
    (service.py); the Python Coalescer writes the same bytes (tests/unit/test_native_ncm_rx.py)."""
    if not native.AVAILABLE:
        pytest.skip(f"GRO runs only in the C fast path, which is not available: {native.WHY_NOT}")
    if shutil.which("ethtool") is None:
        pytest.fail("ethtool is missing; scripts/test.sh installs it")
    a, b = netns_pair
    c = Netns(b.name.replace("unp", "unc"))
    u = Usbnetd(a, b, "sim:ncm", str(tmp_path), ifname="usbg6", peer="simg6")
    try:
        a.run("ip", "link", "set", u.peer, "netns", b.name)
        b.run("ip", "-6", "addr", "add", "2001:2:84::2/64", "dev", u.peer, "nodad")
        b.run("ip", "link", "set", u.peer, "up")
        a.run("ip", "-6", "addr", "add", "2001:2:84::1/64", "dev", u.ifname, "nodad")
        a.run("ip", "link", "add", "fwa6", "type", "veth", "peer", "name", "fwc6")
        a.run("ip", "link", "set", "fwc6", "netns", c.name)
        a.run("ethtool", "-K", "fwa6", "tx", "off", "sg", "off", "tso", "off", "gso", "off")
        a.run("ip", "-6", "addr", "add", "2001:2:85::1/64", "dev", "fwa6", "nodad")
        a.run("ip", "link", "set", "fwa6", "up")
        c.run("ip", "-6", "addr", "add", "2001:2:85::2/64", "dev", "fwc6", "nodad")
        c.run("ip", "link", "set", "fwc6", "up")
        c.run("ip", "-6", "route", "add", "default", "via", "2001:2:85::1")
        b.run("ip", "-6", "route", "add", "2001:2:85::/64", "via", "2001:2:84::1")
        a.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        b.run("ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", "2001:2:85::2", timeout=30)

        def gro() -> dict:
            (d,) = json.loads(u.cli("stats", "--json").stdout)
            assert d["datapath"] == "native", d
            return d["rx_gro"]

        before = gro()
        _stream6(a, b, "2001:2:84::1", 5204)  # delivered to usbnetd's namespace
        local = gro()
        _stream6(c, b, "2001:2:85::2", 5205)  # forwarded onwards
        forwarded = gro()
        # Only IPv6 carries TCP here (ICMPv6 and neighbour discovery are far below MIN_CANDIDATE): every
        # super-frame counted is a TCPV6 one, and each stream really went through as coalesced frames.
        assert local["superframes"] - before["superframes"] > 10, (before, local)
        assert forwarded["superframes"] - local["superframes"] > 10, (local, forwarded)
        (d,) = json.loads(u.cli("stats", "--json").stdout)
        assert d["rx_dropped"] == 0, d
    finally:
        rc = u.stop()
        c.delete()
    assert rc == 0, u.output()
