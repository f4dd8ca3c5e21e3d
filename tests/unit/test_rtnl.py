"""rtnl.py, the TAP's rtnetlink socket: the state query against crafted replies, the real kernel (`lo`, no
root needed) and pyroute2 as an independent reader; lookups by name and the change request; and the reason
it exists: thousands of queries leave the RSS flat."""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest

from usbnetd.netdev import rtnl


def attr(atype: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), atype) + data
    return raw + bytes(-len(raw) % 4)


def newlink(*attrs: bytes, flags: int = 0x1043, length: int | None = None) -> bytes:
    body = rtnl.IFINFOMSG.pack(socket.AF_UNSPEC, 1, 7, flags, 0) + b"".join(attrs)
    total = rtnl.NLMSGHDR.size + len(body)
    return rtnl.NLMSGHDR.pack(total if length is None else length, rtnl.RTM_NEWLINK, 0, 1, 0) + body


def test_parse_every_attribute_the_follower_uses():
    st = rtnl.parse_link(newlink(
        attr(3, b"usb0\0"),  # IFLA_IFNAME: skipped
        attr(rtnl.IFLA_MTU, struct.pack("=I", 1400)),
        attr(rtnl.IFLA_ADDRESS, bytes.fromhex("020018020001")),
        attr(rtnl.IFLA_OPERSTATE, b"\x06"),
        attr(rtnl.IFLA_PROMISCUITY, struct.pack("=I", 2)),
        attr(rtnl.IFLA_ALLMULTI, struct.pack("=I", 3)),
        attr(rtnl.IFLA_GSO_MAX_SIZE, struct.pack("=I", 16384)),
    ))
    assert st == {"mtu": 1400, "mac": "02:00:18:02:00:01", "flags": 0x1043, "operstate": "UP",
                  "promiscuity": 2, "allmulti": 3, "gso_max_size": 16384}


def test_without_the_allmulti_count_the_flag_stands_for_it():
    assert rtnl.parse_link(newlink(flags=0x1043 | rtnl.IFF_ALLMULTI))["allmulti"] == 1
    st = rtnl.parse_link(newlink(flags=0x1043))
    assert st["allmulti"] == 0 and st["promiscuity"] == 0
    assert st["mtu"] is None and st["mac"] is None and st["operstate"] is None


@pytest.mark.parametrize("cut", range(0, 24))
def test_truncated_or_overlong_attributes_end_the_walk_without_raising(cut):
    good = newlink(attr(rtnl.IFLA_MTU, struct.pack("=I", 1500)), attr(rtnl.IFLA_PROMISCUITY, struct.pack("=I", 1)))
    head = rtnl.NLMSGHDR.size + rtnl.IFINFOMSG.size
    st = rtnl.parse_link(good[: head + cut])  # the header's length still says more: the walk stops at the end
    assert st["mtu"] in (None, 1500) and st["promiscuity"] in (0, 1)
    bad = newlink(struct.pack("=HH", 200, rtnl.IFLA_MTU) + struct.pack("=I", 9000))  # attribute past the end
    assert rtnl.parse_link(bad)["mtu"] is None
    zero = newlink(struct.pack("=HH", 0, rtnl.IFLA_MTU) + struct.pack("=I", 9000))  # zero length: no endless loop
    assert rtnl.parse_link(zero)["mtu"] is None


def test_the_kernel_answers_for_lo_as_pyroute2_reads_it():
    from pyroute2 import IPRoute

    reader = rtnl.LinkSocket()
    try:
        ours = reader.state(1)
    finally:
        reader.close()
    with IPRoute() as ipr:
        msg = ipr.get_links(1)[0]
    assert ours["mtu"] == msg.get_attr("IFLA_MTU")
    assert ours["mac"] == msg.get_attr("IFLA_ADDRESS")
    assert ours["flags"] == msg["flags"]
    assert ours["operstate"] == msg.get_attr("IFLA_OPERSTATE")
    assert ours["promiscuity"] == (msg.get_attr("IFLA_PROMISCUITY") or 0)


def test_an_unknown_index_is_enodev():
    reader = rtnl.LinkSocket()
    try:
        with pytest.raises(OSError) as info:
            reader.state(0x7FFFFFF0)
        assert info.value.errno == errno.ENODEV
        assert reader.state(1)["mtu"]  # and the socket is still good for the next question
    finally:
        reader.close()


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_ten_thousand_queries_leave_the_rss_flat():
    # pyroute2 0.9.7's get_links grew this process by 1.7 kB a call (17 MB here); the follower asks every 2 s.
    reader = rtnl.LinkSocket()
    try:
        for _ in range(500):
            reader.state(1)
        before = rss_kib()
        for _ in range(10_000):
            reader.state(1)
        grown = rss_kib() - before
    finally:
        reader.close()
    assert grown < 1024, f"RSS grew {grown} KiB over 10,000 queries"


def test_index_of_finds_lo_and_not_a_missing_name():
    links = rtnl.LinkSocket()
    try:
        assert links.index_of("lo") == 1
        assert links.index_of("usbnetd-none0") is None  # ENODEV is an answer, not an error
        assert links.index_of("lo") == 1  # the socket is still good after the refusal
    finally:
        links.close()


def test_an_empty_change_is_acknowledged_as_root_and_refused_otherwise():
    # No attributes and an empty change mask: a no-op for the kernel, but still a privileged request.
    links = rtnl.LinkSocket()
    try:
        if os.geteuid() == 0:
            links.set(1)  # returns on the acknowledgement; an error would raise
        else:
            with pytest.raises(OSError) as info:
                links.set(1)
            assert info.value.errno == errno.EPERM
    finally:
        links.close()


def test_requests_carry_aligned_attributes():
    mac = rtnl._attr(rtnl.IFLA_ADDRESS, bytes(6))
    assert len(mac) == 12 and struct.unpack_from("=HH", mac) == (10, rtnl.IFLA_ADDRESS)
    name = rtnl._attr(rtnl.IFLA_IFNAME, b"usb0\0")
    assert len(name) == 12 and struct.unpack_from("=HH", name) == (9, rtnl.IFLA_IFNAME)
