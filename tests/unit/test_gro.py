"""GRO in the TAP port: what it merges, what it must not, what it verifies first, and the exact bytes of the
super-frame it writes; for TCP over IPv4 and over IPv6; and which single frames go out marked DATA_VALID.

The port writes to a SOCK_SEQPACKET socket pair here, which keeps each writev as one message, so every
test sees exactly the frames the TAP would get (with their virtio_net_hdr), in order.
"""

from __future__ import annotations

import socket
import struct

import pytest

from usbnetd.core.stats import Stats
from usbnetd.netdev.gro import (
    ETH_IP,
    ETH_IP6,
    F_DATA_VALID,
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    VALID_HDR,
    VNET_HDR_LEN,
    ZERO_HDR,
    segment_verified,
    segment_verified6,
)
from usbnetd.netdev.port import TapPort

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
SRC, DST = bytes([198, 18, 9, 1]), bytes([198, 18, 9, 2])


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_frame(seq: int, payload: bytes, *, flags: int = 0x10, ack: int = 7, sport: int = 5001, dport: int = 40000,
              options: bytes = b"", ttl: int = 64, ip_id: int = 1, pad_to: int = 0, src: bytes = SRC) -> bytes:
    thl = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (thl // 4) << 4, flags, 502, 0, 0) + options
    pseudo = src + DST + struct.pack("!BBH", 0, 6, thl + len(payload))
    check = csum(pseudo + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", check) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + thl + len(payload), ip_id, 0x4000, ttl, 6, 0, src, DST)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    frame = MAC_B + MAC_A + b"\x08\x00" + ip + tcp + payload
    return frame + bytes(max(0, pad_to - len(frame)))


SRC6 = bytes.fromhex("20010002000000000000000000090001")  # 2001:2::/48 (RFC 5180, benchmarking)
DST6 = bytes.fromhex("20010002000000000000000000090002")


def tcp6_frame(seq: int, payload: bytes, *, flags: int = 0x10, ack: int = 7, sport: int = 5001, dport: int = 40000,
               options: bytes = b"", hop: int = 64, tclass: int = 0, flow: int = 0xABCDE, src: bytes = SRC6,
               dst: bytes = DST6, nexthdr: int = 6, ext: bytes = b"", bad: bool = False) -> bytes:
    """Ethernet + IPv6 + TCP, the TCP checksum over RFC 8200 §8.1's pseudo-header (or deliberately wrong)."""
    thl = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, (thl // 4) << 4, flags, 502, 0, 0)
    tcp += options
    check = csum(src + dst + struct.pack("!IxxxB", thl + len(payload), 6) + tcp + payload) ^ (0x1111 if bad else 0)
    tcp = tcp[:16] + struct.pack("!H", check) + tcp[18:]
    ip = struct.pack("!IHBB", 6 << 28 | tclass << 20 | flow, len(ext) + thl + len(payload), nexthdr, hop) + src + dst
    return MAC_B + MAC_A + b"\x86\xdd" + ip + ext + tcp + payload


def udp6_frame(n: int) -> bytes:
    udp = struct.pack("!HHHH", 1, 2, 8 + n, 0) + bytes(n)
    udp = udp[:6] + struct.pack("!H", csum(SRC6 + DST6 + struct.pack("!IxxxB", len(udp), 17) + udp)) + udp[8:]
    return MAC_B + MAC_A + b"\x86\xdd" + struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + SRC6 + DST6 + udp


def udp_frame(n: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + n, 0, 0x4000, 64, 17, 0, SRC, DST)
    return MAC_B + MAC_A + b"\x08\x00" + ip + struct.pack("!HHHH", 1, 2, 8 + n, 0) + bytes(n)


class Harness:
    def __init__(self) -> None:
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.b.setblocking(False)
        self.stats = Stats()
        self.port = TapPort(self.a.fileno(), self.stats, max_frame=1514, gro=True)
        self.co = self.port.gro

    def feed(self, *frames: bytes) -> None:
        """Frames back to back in one buffer, as an NTB holds them, emitted in order, then flushed."""
        buf = bytearray()
        spans = []
        for f in frames:
            spans.append((len(buf) + 3, len(f)))  # an odd offset: datagrams need not be aligned
            buf += b"\xee" * 3 + f
        self.port.rx_begin(memoryview(buf))
        for off, n in spans:
            self.port.emit(off, n)
        self.port.rx_end()

    def messages(self) -> list[tuple[bytes, bytes]]:
        out = []
        while True:
            try:
                m = self.b.recv(70000)
            except BlockingIOError:
                return out
            out.append((m[:VNET_HDR_LEN], m[VNET_HDR_LEN:]))


@pytest.fixture
def h():
    x = Harness()
    yield x
    x.a.close()
    x.b.close()


def payloads(n: int, size: int = 1000) -> list[bytes]:
    return [bytes([i + 1]) * size for i in range(n)]


def test_a_run_of_segments_becomes_one_super_frame(h):
    data = payloads(4) + [b"\x77" * 400]
    seq = 1000
    frames = []
    for p in data:
        frames.append(tcp_frame(seq, p))
        seq += len(p)
    h.feed(*frames)
    msgs = h.messages()
    assert len(msgs) == 1
    hdr, frame = msgs[0]
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack("=BBHHHH", hdr)
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (
        F_NEEDS_CSUM, GSO_TCPV4, ETH_IP + 20, 1000, ETH_IP, 16)
    assert frame[:14] == frames[0][:14]
    ip = frame[14:34]
    assert struct.unpack("!H", ip[2:4])[0] == 40 + 4400 == len(frame) - 14
    assert csum(ip) == 0, "IP header checksum must be valid for the new length"
    assert struct.unpack("!I", frame[38:42])[0] == 1000
    assert frame[54:] == b"".join(data)
    # CHECKSUM_PARTIAL: the TCP check field is the folded pseudo-header sum over the whole TCP length.
    pseudo = sum(struct.unpack("!4H", SRC + DST)) + 6 + 20 + 4400
    while pseudo >> 16:
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
    assert struct.unpack("!H", frame[50:52])[0] == pseudo
    assert h.stats.rx_packets == 5 and h.stats.rx_bytes == sum(len(f) for f in frames)
    assert h.co.superframes == 1 and h.co.merged == 5


def test_a_single_segment_goes_out_untouched(h):
    f = tcp_frame(1, b"x" * 100)
    h.feed(f)
    assert h.messages() == [(ZERO_HDR, f)]
    assert h.co.superframes == 0 and h.stats.rx_packets == 1


def test_a_sequence_gap_starts_a_new_run(h):
    a, b, c = (tcp_frame(s, b"q" * 500) for s in (0, 500, 2000))
    h.feed(a, b, c)
    msgs = h.messages()
    assert [len(m[1]) for m in msgs] == [14 + 40 + 1000, len(c)]
    assert msgs[1] == (ZERO_HDR, c)


def test_other_flows_and_other_protocols_keep_their_order(h):
    a1, a2 = tcp_frame(0, b"a" * 300), tcp_frame(300, b"a" * 300)
    b1 = tcp_frame(0, b"b" * 300, sport=6000)
    u = udp_frame(50)
    h.feed(a1, b1, a2, u)
    msgs = h.messages()
    assert [m[1] for m in msgs] == [a1, b1, a2, u], "nothing merges across another flow, order is kept"
    assert all(m[0] == ZERO_HDR for m in msgs)
    assert h.stats.rx_packets == 4


@pytest.mark.parametrize("flags", [0x11, 0x12, 0x14, 0x30, 0x50, 0x90])  # FIN, SYN, RST, URG, ECE, CWR
def test_control_flags_are_never_merged(h, flags):
    a, b, c = tcp_frame(0, b"z" * 200), tcp_frame(200, b"z" * 200, flags=flags), tcp_frame(400, b"z" * 200)
    h.feed(a, b, c)
    assert [m[1] for m in h.messages()] == [a, b, c]


def test_psh_ends_a_run_and_is_kept(h):
    a, b, c = tcp_frame(0, b"p" * 300), tcp_frame(300, b"p" * 300, flags=0x18), tcp_frame(600, b"p" * 300)
    h.feed(a, b, c)
    msgs = h.messages()
    assert len(msgs) == 2
    assert msgs[0][1][47] == 0x18 and len(msgs[0][1]) == 14 + 40 + 600
    assert msgs[1] == (ZERO_HDR, c)


def test_a_short_segment_ends_a_run(h):
    a, b, c = tcp_frame(0, b"s" * 500), tcp_frame(500, b"s" * 300), tcp_frame(800, b"s" * 500)
    h.feed(a, b, c)
    assert [len(m[1]) for m in h.messages()] == [14 + 40 + 800, len(c)]


def test_differing_options_ack_ttl_or_address_split_runs(h):
    ts1 = b"\x01\x01\x08\x0a" + struct.pack("!II", 1, 2)
    ts2 = b"\x01\x01\x08\x0a" + struct.pack("!II", 2, 2)
    runs = [
        (tcp_frame(0, b"o" * 100, options=ts1), tcp_frame(100, b"o" * 100, options=ts2)),
        (tcp_frame(0, b"o" * 100, ack=1), tcp_frame(100, b"o" * 100, ack=2)),
        (tcp_frame(0, b"o" * 100, ttl=64), tcp_frame(100, b"o" * 100, ttl=63)),
        (tcp_frame(0, b"o" * 100), tcp_frame(100, b"o" * 100, src=bytes([198, 18, 9, 3]))),
    ]
    for a, b in runs:
        h.feed(a, b)
        assert [m[1] for m in h.messages()] == [a, b]


def test_equal_options_merge_and_stay_in_the_header(h):
    ts = b"\x01\x01\x08\x0a" + struct.pack("!II", 5, 6)
    a, b = tcp_frame(0, b"t" * 300, options=ts), tcp_frame(300, b"t" * 300, options=ts)
    h.feed(a, b)
    (hdr, frame), = h.messages()
    assert struct.unpack("=BBHHHH", hdr)[2] == ETH_IP + 32
    assert frame[:66] == a[:16] + frame[16:18] + a[18:24] + frame[24:26] + a[26:50] + frame[50:52] + a[52:66]
    assert frame[66:] == b"t" * 600


def test_small_segments_go_out_one_by_one_unparsed(h):
    # Below gro.MIN_CANDIDATE nothing is merged (pure ACKs and tiny segments): each frame as it came.
    frames = [tcp_frame(i * 100, b"m" * 100) for i in range(4)]
    h.feed(*frames)
    assert h.messages() == [(ZERO_HDR, f) for f in frames]
    assert h.co.superframes == 0 and h.stats.rx_packets == 4


def test_ethernet_padding_is_not_taken_as_payload(h):
    a = tcp_frame(0, b"e" * 6, pad_to=60)
    b = tcp_frame(6, b"e" * 6, pad_to=60)
    h.feed(a, b)
    # Padded frames are short, so never merged; they must reach the TAP exactly as received, padding included.
    assert h.messages() == [(ZERO_HDR, a), (ZERO_HDR, b)]


def test_a_run_never_exceeds_the_ip_length_limit(h):
    frames, seq = [], 0
    for _ in range(50):
        frames.append(tcp_frame(seq, b"L" * 1460))
        seq += 1460
    h.feed(*frames)
    msgs = h.messages()
    lengths = [struct.unpack("!H", m[1][16:18])[0] for m in msgs]
    assert all(n <= 0xFFFF for n in lengths)
    assert sum(n - 40 for n in lengths) == 50 * 1460
    assert b"".join(m[1][54:] for m in msgs) == b"L" * (50 * 1460)


def test_a_failed_write_counts_every_frame_as_dropped(h):
    frames = [tcp_frame(i * 300, b"d" * 300) for i in range(3)]
    h.b.close()  # the reader is gone: the write fails
    h.feed(*frames)
    # Counted once, by the port: three frames dropped (not four: the coalescer used to count them, then
    # the service counted the failed write again).
    assert h.stats.rx_dropped == 3 and h.stats.rx_packets == 0
    assert h.port.write_errors.count == 1


def test_a_failed_plain_write_counts_one_drop(h):
    h.b.close()
    h.feed(udp_frame(100))
    assert h.stats.rx_dropped == 1 and h.port.write_errors.count == 1


def corrupt(frame: bytes, at: int) -> bytes:
    b = bytearray(frame)
    b[at] ^= 0x5A
    return bytes(b)


def test_verification_accepts_good_segments_and_rejects_each_kind_of_damage():
    good = tcp_frame(1, b"v" * 999)  # odd TCP length: the padded last word
    view = memoryview(good)
    src, dst = int.from_bytes(SRC, "big"), int.from_bytes(DST, "big")
    tot = len(good) - 14
    assert segment_verified(view, 0, tot, src, dst)
    for at in (14 + 8, 14 + 12, 14 + 20, 14 + 20 + 16, len(good) - 1, len(good) - 500):
        # TTL (IP header), source address (both sums), ports, the TCP check itself, the payload
        assert not segment_verified(memoryview(corrupt(good, at)), 0, tot, src, dst), at


@pytest.mark.parametrize("bad", [0, 1, 2, 3])
@pytest.mark.parametrize("where", ["payload", "ip_header"])
def test_a_corrupted_segment_is_never_merged_nor_marked(h, bad, where):
    """The kernel's GRO verifies before it merges; so must we. The bad segment reaches the TAP on its own with
    no flags (the stack then drops and counts it); the good ones around it may still merge."""
    data = payloads(4)
    frames, seq = [], 0
    for p in data:
        frames.append(tcp_frame(seq, p))
        seq += len(p)
    at = 14 + 20 + 20 + 500 if where == "payload" else 14 + 4  # a payload byte, or the IP ID (not a merge key)
    frames[bad] = corrupt(frames[bad], at)
    h.feed(*frames)
    msgs = h.messages()
    assert b"".join(m[1][54:] if m[0] != ZERO_HDR else m[1][54:14 + 40 + 1000] for m in msgs) == \
        b"".join(f[54:] for f in frames), "order and bytes kept"
    plain = [frame for hdr, frame in msgs if hdr == ZERO_HDR]
    assert frames[bad] in plain, "the damaged segment goes out as it came, unmarked"
    for hdr, frame in msgs:
        if hdr != ZERO_HDR:
            assert frames[bad][54:] not in frame, "a damaged segment inside a super-frame marked NEEDS_CSUM"
    assert h.co.unverified == 1 and h.stats.rx_packets == 4


# --- TCP over IPv6 ---------------------------------------------------------------------------------------


def run6(n: int, size: int = 1000, seq: int = 1000, **kw) -> list[bytes]:
    return [tcp6_frame(seq + i * size, bytes([i + 1]) * size, **kw) for i in range(n)]


def test_an_ipv6_run_becomes_one_tcpv6_super_frame(h):
    frames = run6(4) + [tcp6_frame(5000, b"\x77" * 401)]  # a shorter, odd last segment
    h.feed(*frames)
    (hdr, frame), = h.messages()
    assert struct.unpack("=BBHHHH", hdr) == (F_NEEDS_CSUM, GSO_TCPV6, ETH_IP6 + 20, 1000, ETH_IP6, 16)
    assert frame[:18] == frames[0][:18], "Ethernet header and the IPv6 first word as they came"
    assert struct.unpack("!H", frame[18:20])[0] == 20 + 4401 == len(frame) - ETH_IP6, "payload length of the run"
    assert frame[20:54] == frames[0][20:54], "next header, hop limit, addresses"
    assert frame[54:70] == frames[0][54:70] and frame[72:74] == frames[0][72:74], "TCP header but its check"
    # CHECKSUM_PARTIAL: the pseudo-header sum (RFC 8200 §8.1) over the whole TCP length, folded, not inverted
    pseudo = sum(struct.unpack("!16H", SRC6 + DST6)) + 6 + 20 + 4401
    while pseudo >> 16:
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
    assert struct.unpack("!H", frame[70:72])[0] == pseudo
    assert frame[74:] == b"".join(f[74:] for f in frames)
    assert h.stats.rx_packets == 5 and h.stats.rx_bytes == sum(len(f) for f in frames)
    assert h.co.superframes == 1 and h.co.merged == 5 and h.co.unverified == 0


def test_ipv6_equal_options_merge_and_psh_is_kept(h):
    ts = b"\x01\x01\x08\x0a" + struct.pack("!II", 5, 6)
    frames = run6(2, 300, options=ts) + [tcp6_frame(1600, b"\x03" * 300, options=ts, flags=0x18)]
    h.feed(*frames, tcp6_frame(1900, b"n" * 300, options=ts))
    (hdr, frame), (hdr2, _) = h.messages()
    assert struct.unpack("=BBHHHH", hdr)[:3] == (F_NEEDS_CSUM, GSO_TCPV6, ETH_IP6 + 32)
    assert frame[67] == 0x18, "the run's last segment pushed, so does the super-frame"
    assert frame[86:] == b"".join(f[86:] for f in frames) and hdr2 == ZERO_HDR


IPV6_SPLITS = {
    "traffic class": {"tclass": 1}, "flow label": {"flow": 1}, "hop limit": {"hop": 63}, "source": {"src": DST6},
    "destination": {"dst": SRC6}, "source port": {"sport": 1}, "destination port": {"dport": 1}, "ack": {"ack": 8},
    "options": {"options": b"\x01\x01\x08\x0a" + bytes(8)}, "FIN": {"flags": 0x11}, "SYN": {"flags": 0x12},
    "RST": {"flags": 0x14}, "URG": {"flags": 0x30}, "ECE": {"flags": 0x50}, "CWR": {"flags": 0x90},
    "hop-by-hop header": {"nexthdr": 0, "ext": b"\x06\x00" + bytes(6)},
    "destination options header": {"nexthdr": 60, "ext": b"\x06\x00" + bytes(6)},
}


@pytest.mark.parametrize("what", list(IPV6_SPLITS))
def test_each_ipv6_rule_that_forbids_a_merge(h, what):
    a = tcp6_frame(0, b"r" * 400)
    b = tcp6_frame(400, b"r" * 400, **IPV6_SPLITS[what])
    h.feed(a, b)
    assert h.messages() == [(ZERO_HDR, a), (ZERO_HDR, b)], what
    assert h.co.superframes == 0 and h.co.unverified == 0


def test_ipv6_sequence_gap_longer_segment_and_short_segment(h):
    h.feed(*run6(2, 500), tcp6_frame(9000, b"g" * 500))  # a gap
    assert [len(m[1]) - ETH_IP6 - 20 for m in h.messages()] == [1000, 500]
    h.feed(tcp6_frame(0, b"s" * 400), tcp6_frame(400, b"s" * 500))  # longer than the first: not merged
    assert [len(m[1]) - ETH_IP6 - 20 for m in h.messages()] == [400, 500]
    h.feed(tcp6_frame(0, b"s" * 500), tcp6_frame(500, b"s" * 300), tcp6_frame(800, b"s" * 500))  # short closes
    assert [len(m[1]) - ETH_IP6 - 20 for m in h.messages()] == [800, 500]


def test_ipv4_and_ipv6_never_merge_with_each_other(h):
    a, b = tcp_frame(0, b"4" * 400), tcp6_frame(400, b"6" * 400)
    h.feed(a, b, tcp_frame(800, b"4" * 400))
    assert [m[1] for m in h.messages()] == [a, b, tcp_frame(800, b"4" * 400)]


def test_an_ipv6_run_never_exceeds_the_ip_length_limit(h):
    frames = run6(50, 1440)
    h.feed(*frames)
    msgs = h.messages()
    plens = [struct.unpack("!H", m[1][18:20])[0] for m in msgs]
    assert all(40 + n <= 0xFFFF for n in plens) and len(msgs) == 2
    assert b"".join(m[1][74:] for m in msgs) == b"".join(f[74:] for f in frames)


def test_ipv6_verification_accepts_good_segments_and_rejects_each_kind_of_damage():
    good = tcp6_frame(1, b"v" * 999)  # odd TCP length: the padded last word
    assert segment_verified6(memoryview(good), 0, len(good) - 14)
    for at in (22, 37, 38, 53, 54, 70, 71, len(good) - 1, len(good) - 500):
        # both addresses (pseudo-header only), ports, the check itself, the payload
        assert not segment_verified6(memoryview(corrupt(good, at)), 0, len(good) - 14), at
    # the payload length is in the pseudo-header: a frame claiming one byte less fails
    assert not segment_verified6(memoryview(good), 0, len(good) - 15)


@pytest.mark.parametrize("bad", [0, 1, 2, 3])
def test_a_corrupted_ipv6_segment_is_never_merged_nor_marked(h, bad):
    frames = run6(4)
    frames[bad] = tcp6_frame(1000 + bad * 1000, bytes([bad + 1]) * 1000, bad=True)
    h.feed(*frames)
    msgs = h.messages()
    assert (ZERO_HDR, frames[bad]) in msgs, "the damaged segment goes out as it came, unmarked"
    for hdr, frame in msgs:
        if hdr[1] == GSO_TCPV6:
            assert frames[bad][74:] not in frame
    assert h.co.unverified == 1 and h.stats.rx_packets == 4
    assert b"".join(m[1][74:] for m in msgs) == b"".join(f[74:] for f in frames), "order and bytes kept"


# --- DATA_VALID --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_verified_single_goes_out_data_valid(h, v6):
    """The first segment was verified when its follower came to join; the follower failed: the first goes out
    alone with flags 2 (DATA_VALID) and nothing else, the follower unmarked."""
    if v6:
        good, bad = tcp6_frame(0, b"a" * 700), tcp6_frame(700, b"b" * 700, bad=True)
    else:
        good, bad = tcp_frame(0, b"a" * 700), corrupt(tcp_frame(700, b"b" * 700), 14 + 40 + 10)
    h.feed(good, bad)
    assert h.messages() == [(VALID_HDR, good), (ZERO_HDR, bad)]
    assert VALID_HDR == bytes([F_DATA_VALID]) + bytes(9) and h.co.unverified == 1


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_failing_first_segment_goes_out_unmarked_and_the_rest_merge(h, v6):
    if v6:
        frames = [tcp6_frame(0, b"a" * 700, bad=True)] + run6(2, 700, seq=700)
    else:
        frames = [corrupt(tcp_frame(0, b"a" * 700), 14 + 40 + 3)] + [tcp_frame(700 * i, b"b" * 700) for i in (1, 2)]
    h.feed(*frames)
    msgs = h.messages()
    assert msgs[0] == (ZERO_HDR, frames[0]) and msgs[1][0][:2] == bytes([F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4])


def test_unverified_singles_go_out_with_a_zero_header(h):
    """Nothing is verified only to be marked (the kernel's tun ignores DATA_VALID, gro.py): a lone segment of
    either family, UDP over either family, padded frames: all unmarked."""
    frames = [tcp_frame(0, b"l" * 600), udp_frame(400), udp6_frame(400), tcp6_frame(0, b"l" * 600),
              tcp6_frame(5000, b"m" * 600, sport=1)]
    h.feed(*frames)
    assert h.messages() == [(ZERO_HDR, f) for f in frames]
