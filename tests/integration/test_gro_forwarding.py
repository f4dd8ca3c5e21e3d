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
import subprocess
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


DATA_VALID_SCRIPT = r"""
import json, struct, time
from usbnetd.core.stats import Stats
from usbnetd.netdev.gro import VNET_HDR_LEN, ZERO_HDR
from usbnetd.netdev.port import TapPort
from usbnetd.netdev.tap import Tap

MAC, PEER = bytes.fromhex("020018870001"), bytes.fromhex("020018870002")
SRC, DST = bytes.fromhex("20010002008700000000000000000002"), bytes.fromhex("20010002008700000000000000000001")

def csum(b):
    if len(b) % 2:
        b += bytes(1)
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

def tcp6(seq, payload, bad=False):
    tcp = struct.pack("!HHIIBBHHH", 5001, 40999, seq, 7, 5 << 4, 0x10, 502, 0, 0)
    c = csum(SRC + DST + struct.pack("!IxxxB", 20 + len(payload), 6) + tcp + payload) ^ (0x0101 if bad else 0)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip6 = struct.pack("!IHBB", 6 << 28, 20 + len(payload), 6, 64) + SRC + DST
    return MAC + PEER + b"\x86\xdd" + ip6 + tcp + payload

def tcp_mib():
    rows = [line.split() for line in open("/proc/net/snmp") if line.startswith("Tcp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:])))

tap = Tap("usbdv0", MAC, 1500, vnet_hdr=VNET_HDR_LEN)
tap.up()
tap.set_carrier(True)
print("up", flush=True)
input()
stats = Stats()
port = TapPort(tap.fd, stats, max_frame=1514, gro=True)
flags, write = [], port.write_frame
def write_frame(frame, length, hdr=ZERO_HDR):
    flags.append(hdr[0])  # the header byte the coalescer hands over (the write itself is the port's own)
    return write(frame, length, hdr)
port.write_frame = write_frame
frames = [tcp6(1000, b"g" * 700), tcp6(1700, b"b" * 700, bad=True)]
buf = bytearray(b"".join(frames))
before = tcp_mib()
port.rx_begin(memoryview(buf))
port.emit(0, len(frames[0]))
port.emit(len(frames[0]), len(frames[1]))
port.rx_end()
time.sleep(0.5)
after = tcp_mib()
print(json.dumps({"flags": flags, "rx_packets": stats.rx_packets, "rx_dropped": stats.rx_dropped,
                  "unverified": port.gro.unverified,
                  "mib": {k: after[k] - before[k] for k in ("InSegs", "InCsumErrors", "OutRsts")}}), flush=True)
tap.close()
"""


def test_a_data_valid_single_and_an_unmarked_bad_one_through_a_real_tap(netns_pair):
    """What the coalescer writes for a verified first segment whose follower failed: the first alone with
    VIRTIO_NET_HDR_F_DATA_VALID, the follower unmarked. The real kernel must take both writes (tun accepts the
    flag: the port counts no drop), verify the unmarked one itself and count it in TcpInCsumErrors, and hand
    the marked one to TCP, which answers it (no socket: a reset)."""
    ns, _ = netns_pair
    p = ns.popen(sys.executable, "-c", DATA_VALID_SCRIPT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "up", p.stderr.read()
        ns.run("ip", "-6", "addr", "add", "2001:2:87::1/64", "dev", "usbdv0", "nodad")
        p.stdin.write("\n")
        p.stdin.flush()
        line = p.stdout.readline()
        assert line, p.stderr.read()
        out = json.loads(line)
    finally:
        p.communicate(timeout=30)
    assert out["flags"] == [2, 0], out  # DATA_VALID on the verified one, nothing on the failing one
    assert (out["rx_packets"], out["rx_dropped"], out["unverified"]) == (2, 0, 1), out
    assert out["mib"]["InSegs"] == 2 and out["mib"]["InCsumErrors"] == 1 and out["mib"]["OutRsts"] == 1, out
