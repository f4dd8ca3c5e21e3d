"""Frames as the kernel hands them to a TAP with TX offloads, for tests: TCP super-frames (TSO) and frames with a
partial checksum (NEEDS_CSUM), each with its struct virtio_net_hdr; and an independent checker.

The checker sums 16-bit words in a plain loop (RFC 1071 as written), not with the modulo trick gso.py uses,
so the two do not share a mistake.
"""

from __future__ import annotations

import struct

from usbnetd.netdev import gso

MAC = bytes.fromhex("020000000002020000000001")
SRC4, DST4 = bytes([198, 18, 7, 1]), bytes([198, 18, 7, 2])
SRC6 = bytes.fromhex("20010002000700000000000000000001")  # 2001:2:7::1, RFC 5180's benchmarking range
DST6 = bytes.fromhex("20010002000700000000000000000002")
ACK, PSH, FIN, CWR, ECE, SYN = 0x10, 0x08, 0x01, 0x80, 0x40, 0x02


def ones_sum(data: bytes) -> int:
    """RFC 1071: the 16-bit one's complement sum, end-around carry, in a loop."""
    if len(data) & 1:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += data[i] << 8 | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def vnet(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0, csum_start: int = 0,
         csum_offset: int = 0) -> bytes:
    return gso.VNET.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def payload(n: int, tag: int = 0) -> bytes:
    return bytes((tag * 7 + i * 13 + (i >> 8)) & 0xFF for i in range(n))


def tcp_frame(n_payload: int, v6: bool = False, ip_opts: bytes = b"", tcp_opts: bytes = b"",
              vlans: tuple[int, ...] = (), flags: int = ACK | PSH, seq: int = 0x01020304, ip_id: int = 0x1234,
              tag: int = 0, partial: bool = True, body: bytes | None = None) -> tuple[bytes, int, int]:
    """An Ethernet (+ VLAN tags) + IPv4/IPv6 + TCP frame with `n_payload` bytes of payload; the TCP check field
    holds the pseudo-header sum (partial) or the full checksum. Returns (frame, l4 offset, header length)."""
    data = payload(n_payload, tag) if body is None else body
    eth = MAC
    for tpid in vlans:
        eth += struct.pack("!HH", tpid, 5)
    eth += struct.pack("!H", gso.ETH_P_IPV6 if v6 else gso.ETH_P_IP)
    assert len(tcp_opts) % 4 == 0 and len(ip_opts) % 4 == 0
    tcp_len = 20 + len(tcp_opts) + len(data)
    th = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 0xA0B0C0D0, (5 + len(tcp_opts) // 4) << 4, flags,
                               502, 0, 0) + tcp_opts)
    if v6:
        ip = bytearray(struct.pack("!IHBB", 6 << 28, tcp_len, gso.IPPROTO_TCP, 64) + SRC6 + DST6)
        pseudo = ones_sum(SRC6 + DST6 + struct.pack("!IxxxB", tcp_len, gso.IPPROTO_TCP))
    else:
        ihl = 5 + len(ip_opts) // 4
        ip = bytearray(struct.pack("!BBHHHBBH", 0x40 | ihl, 0, ihl * 4 + tcp_len, ip_id, 0x4000, 64,
                                   gso.IPPROTO_TCP, 0) + SRC4 + DST4 + ip_opts)
        struct.pack_into("!H", ip, 10, ~ones_sum(bytes(ip)) & 0xFFFF)
        pseudo = ones_sum(SRC4 + DST4 + struct.pack("!xBH", gso.IPPROTO_TCP, tcp_len))
    if partial:
        struct.pack_into("!H", th, 16, pseudo)
    else:
        struct.pack_into("!H", th, 16, ~ones_sum(struct.pack("!H", pseudo) + bytes(th) + data) & 0xFFFF)
    l4 = len(eth) + len(ip)
    return bytes(eth + ip + th + data), l4, l4 + len(th)


def superframe(n_payload: int, mss: int, v6: bool = False, **kw) -> tuple[bytes, bytes]:
    """(vnet header, frame) of a TSO super-frame as tun hands it over (hdr_len: the headers' length)."""
    frame, l4, hdrs = tcp_frame(n_payload, v6, **kw)
    hdr = vnet(gso.F_NEEDS_CSUM, gso.GSO_TCPV6 if v6 else gso.GSO_TCPV4, hdrs, mss, l4, gso.TCP_CHECK)
    return hdr, frame


def udp_partial(n_payload: int, v6: bool = False, tag: int = 0, body: bytes | None = None) -> tuple[bytes, bytes]:
    """(vnet header, frame) of a UDP datagram whose checksum is left to the device (NEEDS_CSUM)."""
    data = payload(n_payload, tag) if body is None else body
    udp_len = 8 + len(data)
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, udp_len, 17, 64) + SRC6 + DST6
        pseudo = ones_sum(SRC6 + DST6 + struct.pack("!IxxxB", udp_len, 17))
        eth = MAC + b"\x86\xdd"
    else:
        ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0) + SRC4 + DST4)
        struct.pack_into("!H", ip, 10, ~ones_sum(bytes(ip)) & 0xFFFF)
        pseudo = ones_sum(SRC4 + DST4 + struct.pack("!xBH", 17, udp_len))
        eth = MAC + b"\x08\x00"
    l4 = len(eth) + len(ip)
    frame = bytes(eth) + bytes(ip) + struct.pack("!HHHH", 5353, 5353, udp_len, pseudo) + data
    return vnet(gso.F_NEEDS_CSUM, 0, 0, 0, l4, 6), frame


def check_frame(frame: bytes) -> dict:
    """Parse a finished TCP or UDP frame (VLAN tags allowed) and verify its IPv4 header checksum and its L4
    checksum independently; returns its fields. AssertionError when anything is wrong."""
    off = 12
    etype = struct.unpack_from("!H", frame, off)[0]
    while etype in (0x8100, 0x88A8):
        off += 4
        etype = struct.unpack_from("!H", frame, off)[0]
    l3 = off + 2
    f: dict = {}
    if etype == gso.ETH_P_IP:
        ihl = (frame[l3] & 15) * 4
        assert ones_sum(frame[l3 : l3 + ihl]) == 0xFFFF, "IPv4 header checksum"
        tot, f["id"] = struct.unpack_from("!HH", frame, l3 + 2)
        assert tot == len(frame) - l3, "IPv4 total length"
        proto, l4 = frame[l3 + 9], l3 + ihl
        pseudo = frame[l3 + 12 : l3 + 20] + struct.pack("!xBH", proto, len(frame) - l4)
    else:
        assert etype == gso.ETH_P_IPV6
        assert struct.unpack_from("!H", frame, l3 + 4)[0] == len(frame) - l3 - 40, "IPv6 payload length"
        proto, l4 = frame[l3 + 6], l3 + 40
        pseudo = frame[l3 + 8 : l3 + 40] + struct.pack("!IxxxB", len(frame) - l4, proto)
    assert ones_sum(pseudo + frame[l4:]) == 0xFFFF, "L4 checksum"
    field = struct.unpack_from("!H", frame, l4 + (16 if proto == 6 else 6))[0]
    assert field != 0, "a completed checksum is never 0 (0xFFFF instead)"
    if proto == 6:
        f["seq"] = struct.unpack_from("!I", frame, l4 + 4)[0]
        f["flags"] = frame[l4 + 13]
        f["payload"] = frame[l4 + (frame[l4 + 12] >> 4) * 4 :]
        f["headers"] = l4 + (frame[l4 + 12] >> 4) * 4
    else:
        f["payload"] = frame[l4 + 8 :]
    return f
