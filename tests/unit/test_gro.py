"""GRO in the TAP port: what it merges, what it must not, what it verifies first, and the exact bytes of the
super-frame it writes.

The port writes to a SOCK_SEQPACKET socket pair here, which keeps each writev as one message, so every
test sees exactly the frames the TAP would get (with their virtio_net_hdr), in order.
"""

from __future__ import annotations

import socket
import struct

import pytest

from usbnetd.core.stats import Stats
from usbnetd.netdev.gro import ETH_IP, F_NEEDS_CSUM, GSO_TCPV4, VNET_HDR_LEN, ZERO_HDR, segment_verified
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
