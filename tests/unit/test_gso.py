"""netdev/gso.py, the Python reference for TX offloads, against an independent checker (tso_frames.py).

Each segment of a cut super-frame must be a valid frame on its own (IPv4 header checksum, IP length, TCP
checksum over pseudo-header, header and payload, verified with a plain RFC 1071 loop), the segments' payloads
must join up to the super-frame's, sequence numbers advance by the MSS, IPv4 ids by one, FIN and PSH stay on
the last segment only and CWR on the first only (Linux's tcp_gso_segment). Malformed vnet headers and frames
are refused (None), never raised. The C framer is compared with this module in test_native_ncm_tx.py.
"""

from __future__ import annotations

import struct

import pytest
from tso_frames import ACK, CWR, ECE, FIN, PSH, check_frame, payload, superframe, tcp_frame, udp_partial, vnet

from usbnetd.netdev import gso

MF = 1514


def cut(hdr: bytes, frame: bytes, max_frame: int = MF) -> list[bytes]:
    segs = gso.segment(hdr, frame, max_frame)
    assert segs is not None
    return segs


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("n,mss", [(64000, 1448), (65483, 1460), (1448, 1448), (1449, 1448), (1, 1448),
                                   (0, 1448), (100, 1), (5000, 7), (3000, 1000)])
def test_segments_are_valid_frames_that_join_up(v6: bool, n: int, mss: int) -> None:
    if v6 and n + 20 + 40 > 65535:
        n = 65535 - 60
    hdr, frame = superframe(n, mss, v6, flags=ACK | PSH | FIN | CWR | ECE, seq=0xFFFFF000, ip_id=0xFFFE)
    segs = cut(hdr, frame, 1600)  # IPv6 headers are 20 bytes longer: 1448 + 74 > 1514
    count = max(1, -(-n // mss))
    assert len(segs) == count
    joined = b""
    for k, seg in enumerate(segs):
        f = check_frame(seg)
        assert len(seg) <= 14 + (40 if v6 else 20) + 20 + mss
        assert f["seq"] == (0xFFFFF000 + k * mss) & 0xFFFFFFFF
        if not v6:
            assert f["id"] == (0xFFFE + k) & 0xFFFF
        want = ACK | ECE | (CWR if k == 0 else 0) | (PSH | FIN if k == count - 1 else 0)
        assert f["flags"] == want, (k, hex(f["flags"]))
        assert seg[: f["headers"]][:12] == frame[:12]
        joined += f["payload"]
    assert joined == payload(n)


@pytest.mark.parametrize("ip_opts,tcp_opts", [(b"", b"\x01\x01\x08\x0a" + bytes(8)), (b"\x01" * 4, b""),
                                              (bytes([7, 39, 4]) + bytes(37), bytes([1]) * 40)],
                         ids=["tcp-timestamps", "ip-nops", "both-40"])
def test_options_are_copied_into_every_segment(ip_opts: bytes, tcp_opts: bytes) -> None:
    hdr, frame = superframe(9000, 1300, ip_opts=ip_opts, tcp_opts=tcp_opts)
    segs = cut(hdr, frame)
    for seg in segs:
        check_frame(seg)
        assert seg[34 : 34 + len(ip_opts)] == ip_opts
        l4 = 34 + len(ip_opts)
        assert seg[l4 + 20 : l4 + 20 + len(tcp_opts)] == tcp_opts
    assert b"".join(check_frame(s)["payload"] for s in segs) == payload(9000)


@pytest.mark.parametrize("vlans", [(0x8100,), (0x88A8, 0x8100)])
@pytest.mark.parametrize("v6", [False, True])
def test_vlan_tags_before_the_ip_header(vlans: tuple, v6: bool) -> None:
    hdr, frame = superframe(6000, 1400, v6, vlans=vlans)
    segs = cut(hdr, frame)
    assert len(segs) == 5
    for seg in segs:
        check_frame(seg)
        assert seg[12:14] == struct.pack("!H", vlans[0])


def test_three_vlan_tags_are_one_too_many() -> None:
    hdr, frame = superframe(6000, 1400, vlans=(0x8100, 0x8100, 0x8100))
    assert gso.segment(hdr, frame, MF) is None


def test_the_first_segment_must_fit_max_frame() -> None:
    hdr, frame = superframe(5000, 1460)  # 54 + 1460 = 1514
    assert len(cut(hdr, frame, 1514)) == 4
    assert gso.segment(hdr, frame, 1513) is None
    hdr, frame = superframe(100, 1460)  # a short single segment fits
    assert len(cut(hdr, frame, 200)) == 1


def test_hdr_len_is_only_a_hint() -> None:
    """tun fills hdr_len with skb_headlen: anything up to the frame's length is taken, the headers are parsed."""
    hdr, frame = superframe(3000, 1000)
    want = cut(hdr, frame)
    for hint in (0, 1, 54, 60, len(frame)):
        assert cut(vnet(1, gso.GSO_TCPV4, hint, 1000, 34, 16), frame) == want
    assert gso.segment(vnet(1, gso.GSO_TCPV4, len(frame) + 1, 1000, 34, 16), frame, MF) is None


def _set(frame: bytes, off: int, data: bytes) -> bytes:
    b = bytearray(frame)
    b[off : off + len(data)] = data
    return bytes(b)


V4, _, _ = tcp_frame(3000)
V6, _, _ = tcp_frame(3000, v6=True)
MALFORMED = {
    "gso UDP": (vnet(1, 3, 54, 1000, 34, 16), V4),
    "gso UDP_L4": (vnet(1, 5, 54, 1000, 34, 16), V4),
    "gso TCPV4 with ECN": (vnet(1, 0x81, 54, 1000, 34, 16), V4),
    "gso unknown": (vnet(1, 2, 54, 1000, 34, 16), V4),
    "no NEEDS_CSUM": (vnet(0, 1, 54, 1000, 34, 16), V4),
    "gso_size 0": (vnet(1, 1, 54, 0, 34, 16), V4),
    "csum_start not TCP": (vnet(1, 1, 54, 1000, 14, 16), V4),
    "csum_offset not check": (vnet(1, 1, 54, 1000, 34, 6), V4),
    "TCPV4 on IPv6": (vnet(1, 1, 74, 1000, 54, 16), V6),
    "TCPV6 on IPv4": (vnet(1, 4, 54, 1000, 34, 16), V4),
    "not IP": (vnet(1, 1, 54, 1000, 34, 16), _set(V4, 12, b"\x08\x06")),
    "IPv4 version 5": (vnet(1, 1, 54, 1000, 34, 16), _set(V4, 14, b"\x55")),
    "IPv4 ihl 4": (vnet(1, 1, 54, 1000, 34, 16), _set(V4, 14, b"\x44")),
    "UDP in IPv4": (vnet(1, 1, 54, 1000, 34, 16), _set(V4, 23, b"\x11")),
    "IPv4 MF": (vnet(1, 1, 54, 1000, 34, 16), _set(V4, 20, b"\x20\x00")),
    "IPv4 fragment offset": (vnet(1, 1, 54, 1000, 34, 16), _set(V4, 20, b"\x00\x01")),
    "IPv4 length short": (vnet(1, 1, 54, 1000, 34, 16), _set(V4, 16, struct.pack("!H", 3039))),
    "IPv4 length long": (vnet(1, 1, 54, 1000, 34, 16), _set(V4, 16, struct.pack("!H", 3041))),
    "frame cut": (vnet(1, 1, 54, 1000, 34, 16), V4[:-1]),
    "IPv6 extension header": (vnet(1, 4, 74, 1000, 54, 16), _set(V6, 20, b"\x00")),
    "IPv6 payload length": (vnet(1, 4, 74, 1000, 54, 16), _set(V6, 18, struct.pack("!H", 3021))),
    "IPv6 version 4": (vnet(1, 4, 74, 1000, 54, 16), _set(V6, 14, b"\x40")),
    "TCP doff 4": (vnet(1, 1, 54, 1000, 34, 16), _set(V4, 46, b"\x40")),
    "TCP doff past the frame": (vnet(1, 1, 54, 1000, 34, 16), _set(V4, 46, b"\xf0")[:34 + 50]),
    "headers only, cut": (vnet(1, 1, 54, 1000, 34, 16), V4[:40]),
    "Ethernet only": (vnet(1, 1, 54, 1000, 34, 16), V4[:14]),
    "VLAN cut": (vnet(1, 1, 54, 1000, 34, 16), _set(V4, 12, b"\x81\x00")[:17]),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_super_frames_are_refused(name: str) -> None:
    hdr, frame = MALFORMED[name]
    assert gso.segment(hdr, frame, MF) is None


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("n", [0, 1, 2, 33, 1400])
def test_complete_csum_udp_and_tcp(v6: bool, n: int) -> None:
    hdr, frame = udp_partial(n, v6)
    flags, _, _, _, start, offset = gso.VNET.unpack(hdr)
    buf = bytearray(frame)
    assert gso.complete_csum(buf, len(buf), start, offset)
    assert check_frame(bytes(buf))["payload"] == payload(n)
    tcp, l4, _ = tcp_frame(n, v6)
    buf = bytearray(tcp)
    assert gso.complete_csum(buf, len(buf), l4, 16)
    check_frame(bytes(buf))


def test_a_checksum_of_zero_goes_out_as_ffff() -> None:
    """RFC 768: a UDP checksum of 0 means none; skb_checksum_help sends 0xFFFF (the same in one's complement)."""
    _, frame = udp_partial(2)
    # choose the two payload bytes so that the whole sum is 0xFFFF: the checksum would be 0
    base = bytearray(frame)
    base[-2:] = b"\0\0"
    s = 0
    for i in range(34, len(base), 2):
        s += base[i] << 8 | base[i + 1]
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    base[-2:] = struct.pack("!H", 0xFFFF - s)
    assert gso.complete_csum(base, len(base), 34, 6)
    assert base[40:42] == b"\xff\xff"
    check_frame(bytes(base))
    assert gso.l4_check(0) == 0xFFFF and gso.ip_check(0) == 0


def test_complete_csum_refuses_a_field_past_the_frame() -> None:
    buf = bytearray(60)
    assert not gso.complete_csum(buf, 60, 50, 9)
    assert not gso.complete_csum(buf, 40, 30, 9)
    assert gso.complete_csum(buf, 60, 50, 8) and buf[58:60] != b"\0\0"
    assert buf[:58] == bytes(58)


def test_partial_l4_names_only_what_a_checksum_engine_can_complete():
    """gso.partial_l4: TCP/UDP right behind IPv4 (not a fragment) or IPv6 (no extension header), csum_start at
    that header and csum_offset its check field; anything else is completed in software by the port."""
    tcp, l4, _ = tcp_frame(100)
    assert gso.partial_l4(tcp, len(tcp), l4, 16) == (14, False)
    tagged, l4v, _ = tcp_frame(100, vlans=(0x8100, 0x88A8))
    assert gso.partial_l4(tagged, len(tagged), l4v, 16) == (22, False)
    _, udp6 = udp_partial(50, v6=True)
    assert gso.partial_l4(udp6, len(udp6), 54, 6) == (14, True)
    assert gso.partial_l4(tcp, len(tcp), l4, 6) is None  # UDP's field in a TCP segment
    assert gso.partial_l4(tcp, len(tcp), l4 + 4, 16) is None  # not the transport header
    assert gso.partial_l4(tcp, l4 + 17, l4, 16) is None  # the field past the frame
    frag = bytearray(tcp)
    frag[20] |= 0x20  # more fragments
    assert gso.partial_l4(frag, len(frag), l4, 16) is None
    ext = bytearray(udp6)
    ext[20] = 0  # a hop-by-hop header first
    assert gso.partial_l4(ext, len(ext), 54, 6) is None
    assert gso.partial_l4(tcp[:13], 13, 0, 0) is None
