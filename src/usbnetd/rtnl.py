"""Reading one link's state from the kernel (RTM_GETLINK) on a netlink socket of our own, without pyroute2.

The follower asks for the TAP's MTU, MAC and promiscuous/all-multicast counts every two seconds for the
whole life of an instance (follow.py). pyroute2 0.9's `get_links` grows the process by about 1.7 kB of
resident memory per call (measured: 8.7 MB over 5,000 calls of `get_links` on `lo`, with no Python object
or file descriptor left behind; tracemalloc sees only one 69-byte object per call, the rest is heap that
can no longer be returned), which at one call every two seconds is some 70 MB a day. This module asks the
same question with one request and one reply into a preallocated buffer, and parses only the attributes the
follower uses. pyroute2 stays for the rare writes (MTU, MAC, up) at start-up and on a refused change.
"""

from __future__ import annotations

import os
import socket
import struct

RTM_NEWLINK = 16  # linux/rtnetlink.h
RTM_GETLINK = 18
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
IFLA_ADDRESS = 1  # linux/if_link.h
IFLA_MTU = 4
IFLA_OPERSTATE = 16
IFLA_PROMISCUITY = 30
IFLA_ALLMULTI = 61  # the all-multicast count; kernels before it only show the IFF_ALLMULTI flag
IFF_ALLMULTI = 0x200  # linux/if.h
# RFC 2863 operational states, in the kernel's numbering (IF_OPER_*), named as `ip link` names them
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), device type, index, flags, change mask
RTATTR = struct.Struct("=HH")  # length (header included), type
U32 = struct.Struct("=I")
ERRNO = struct.Struct("=i")
REPLY_BUFFER = 65536  # one link's RTM_NEWLINK is a few kB (statistics, AF_SPEC); this holds any


def parse_link(msg: bytes | bytearray | memoryview) -> dict:
    """The state of one RTM_NEWLINK message (netlink header first): what Tap.state() returns.

    The caller guarantees both headers (LinkReader.state checks the length). Attributes the kernel did not
    send read as None (MTU, MAC, operstate) or 0 (counts); an attribute whose length runs past the message
    ends the walk, so a truncated or malformed attribute list never raises.
    """
    length = min(NLMSGHDR.unpack_from(msg, 0)[0], len(msg))
    _family, _type, _index, flags, _change = IFINFOMSG.unpack_from(msg, NLMSGHDR.size)
    state: dict = {"mtu": None, "mac": None, "flags": flags, "operstate": None, "promiscuity": 0,
                   "allmulti": None}
    off = NLMSGHDR.size + IFINFOMSG.size
    while off + RTATTR.size <= length:
        alen, atype = RTATTR.unpack_from(msg, off)
        if alen < RTATTR.size or off + alen > length:
            break
        data = off + RTATTR.size
        size = alen - RTATTR.size
        atype &= 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if atype == IFLA_MTU and size >= 4:
            state["mtu"] = U32.unpack_from(msg, data)[0]
        elif atype == IFLA_ADDRESS and size:
            state["mac"] = bytes(msg[data : data + size]).hex(":")
        elif atype == IFLA_OPERSTATE and size >= 1:
            code = msg[data]
            state["operstate"] = OPERSTATES[code] if code < len(OPERSTATES) else str(code)
        elif atype == IFLA_PROMISCUITY and size >= 4:
            state["promiscuity"] = U32.unpack_from(msg, data)[0]
        elif atype == IFLA_ALLMULTI and size >= 4:
            state["allmulti"] = U32.unpack_from(msg, data)[0]
        off += (alen + 3) & ~3
    if state["allmulti"] is None:
        state["allmulti"] = 1 if flags & IFF_ALLMULTI else 0
    return state


class LinkReader:
    """One NETLINK_ROUTE socket for the life of a TAP; `state(index)` is one request and its reply."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.sock.settimeout(2.0)  # the kernel answers at once; a bound keeps a wedged socket off the loop
        self.sock.bind((0, 0))
        self.seq = 0
        self.buf = bytearray(REPLY_BUFFER)
        self.view = memoryview(self.buf)

    def state(self, index: int) -> dict:
        """MTU, MAC, flags, operstate and counts of the link `index`; OSError if the kernel refuses (ENODEV)."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.sock.send(NLMSGHDR.pack(NLMSGHDR.size + IFINFOMSG.size, RTM_GETLINK, NLM_F_REQUEST, self.seq, 0)
                       + IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))
        while True:
            n = self.sock.recv_into(self.buf)
            off = 0
            while off + NLMSGHDR.size <= n:
                length, mtype, _flags, seq, _port = NLMSGHDR.unpack_from(self.buf, off)
                if length < NLMSGHDR.size or off + length > n:
                    break
                if seq == self.seq:  # anything else answers an earlier, timed-out request
                    if mtype == NLMSG_ERROR:
                        err = -ERRNO.unpack_from(self.buf, off + NLMSGHDR.size)[0]
                        if err:  # 0 would be an acknowledgement, which this request does not ask for
                            raise OSError(err, os.strerror(err))
                    if mtype == RTM_NEWLINK and length >= NLMSGHDR.size + IFINFOMSG.size:
                        return parse_link(self.view[off : off + length])
                off += (length + 3) & ~3

    def close(self) -> None:
        self.view.release()
        self.sock.close()
