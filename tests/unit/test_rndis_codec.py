"""RNDIS codec: hand-built control messages and data transfers, builders, malformed input, fuzzing, allocation."""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from codec_helpers import Collector, errors, frame, h
from hypothesis import given, settings
from hypothesis import strategies as st

from usbnetd.core.stats import COUNTERS, Stats
from usbnetd.protocols import rndis_codec as r
from usbnetd.protocols.rndis_codec import (
    ControlMessage,
    IndicateStatus,
    InitializeComplete,
    InitializeMsg,
    OidRequest,
    QueryComplete,
    RndisBatch,
    RndisDecoder,
    RndisEncoder,
    RndisError,
    StatusComplete,
    parse_control,
)

# --- helpers ------------------------------------------------------------------------------------------


def decode(data: bytes | bytearray, length: int | None = None, stats: Stats | None = None, **kw: int):
    stats = stats if stats is not None else Stats()
    length = len(data) if length is None else length
    c = Collector(data, length)
    n = RndisDecoder(stats, **kw).decode(memoryview(data), length, c)
    assert n == len(c.spans)
    return c, stats








# --- hand-built control fixtures (MS-RNDIS 1.0 layouts, little endian) --------------------------------------

INITIALIZE_BYTES = h(
    "02000000"  # REMOTE_NDIS_INITIALIZE_MSG
    "18000000"  # MessageLength 24
    "01000000"  # RequestID 1
    "01000000"  # MajorVersion 1
    "00000000"  # MinorVersion 0
    "00400000"  # MaxTransferSize 16384
)

# what the Linux gadget (f_rndis) answers: one packet per transfer, MaxTransferSize 1500 + 14 + 44 + 22 = 1580
INIT_CMPLT_GADGET = h(
    "02000080"  # REMOTE_NDIS_INITIALIZE_CMPLT
    "34000000"  # MessageLength 52
    "01000000"  # RequestID 1
    "00000000"  # Status SUCCESS
    "01000000"  # MajorVersion 1
    "00000000"  # MinorVersion 0
    "01000000"  # DeviceFlags CONNECTIONLESS
    "00000000"  # Medium 802.3
    "01000000"  # MaxPacketsPerTransfer 1
    "2c060000"  # MaxTransferSize 1580
    "00000000"  # PacketAlignmentFactor 0
    "00000000"  # AFListOffset
    "00000000"  # AFListSize
)

QUERY_MAC = h(
    "04000000"  # REMOTE_NDIS_QUERY_MSG
    "1c000000"  # 28
    "02000000"  # RequestID 2
    "01010101"  # OID_802_3_PERMANENT_ADDRESS
    "00000000"  # InformationBufferLength 0
    "00000000"  # InformationBufferOffset 0
    "00000000"  # DeviceVcHandle
)

QUERY_CMPLT_MAC = h(
    "04000080"  # REMOTE_NDIS_QUERY_CMPLT
    "1e000000"  # MessageLength 30
    "02000000"  # RequestID 2
    "00000000"  # Status SUCCESS
    "06000000"  # InformationBufferLength 6
    "10000000"  # InformationBufferOffset 16 (from byte 8 -> the buffer starts at byte 24)
    "021122334455"
)

SET_FILTER = h(
    "05000000"  # REMOTE_NDIS_SET_MSG
    "20000000"  # 32
    "03000000"  # RequestID 3
    "0e010100"  # OID_GEN_CURRENT_PACKET_FILTER
    "04000000"  # 4 bytes
    "14000000"  # at 20 from byte 8 -> byte 28
    "00000000"
    "0f000000"  # DIRECTED | MULTICAST | ALL_MULTICAST | BROADCAST
)

INDICATE_CONNECT = h(
    "07000000"  # REMOTE_NDIS_INDICATE_STATUS_MSG
    "14000000"  # 20
    "0b000140"  # MEDIA_CONNECT 0x4001000B
    "00000000"
    "00000000"
)

KEEPALIVE_BYTES = h("08000000 0c000000 07000000")  # REMOTE_NDIS_KEEPALIVE_MSG, 12, RequestID 7


def test_constants() -> None:
    assert (r.INITIALIZE_CMPLT, r.QUERY_CMPLT, r.SET_CMPLT, r.RESET_CMPLT, r.KEEPALIVE_CMPLT) == (
        0x80000002,
        0x80000004,
        0x80000005,
        0x80000006,
        0x80000008,
    )
    assert r.OID_GEN_PHYSICAL_MEDIUM == 0x00010202 and r.OID_802_3_MULTICAST_LIST == 0x01010103
    assert r.FILTER_PROMISCUOUS == 0x20 and r.PACKET_HEADER_LEN == 44
    assert r.physical_medium_name(8) == "wireless WAN" and r.physical_medium_name(99) == "medium 99"
    assert r.status_name(r.STATUS_NOT_SUPPORTED) == "NOT_SUPPORTED" and r.message_name(9) == "0x00000009"


def test_host_builders_exact_bytes() -> None:
    assert r.initialize(1, 16384) == INITIALIZE_BYTES
    assert r.query(2, r.OID_802_3_PERMANENT_ADDRESS) == QUERY_MAC
    assert r.set_(3, r.OID_GEN_CURRENT_PACKET_FILTER, struct.pack("<I", r.FILTER_DEFAULT)) == SET_FILTER
    assert r.set_packet_filter(3, r.FILTER_DEFAULT) == SET_FILTER
    assert r.halt(9) == h("03000000 0c000000 09000000")
    assert r.keepalive_complete(7) == h("08000080 10000000 07000000 00000000")
    assert r.keepalive_complete(7, r.STATUS_FAILURE) == h("08000080 10000000 07000000 010000c0")
    assert r.reset() == h("06000000 0c000000 00000000")


def test_device_builders_exact_bytes() -> None:
    assert r.initialize_complete(1) == INIT_CMPLT_GADGET
    assert r.query_complete(2, payload=h("021122334455")) == QUERY_CMPLT_MAC
    assert r.indicate_status(r.STATUS_MEDIA_CONNECT) == INDICATE_CONNECT
    assert r.keepalive(7) == KEEPALIVE_BYTES
    assert r.set_complete(3) == h("05000080 10000000 03000000 00000000")
    assert r.reset_complete(addressing_reset=1) == h("06000080 10000000 00000000 01000000")


def test_builders_reject_out_of_range() -> None:
    with pytest.raises(ValueError):
        r.initialize(-1, 1)
    with pytest.raises(ValueError):
        r.query(1, 1 << 32)


def test_parse_init_complete_gadget() -> None:
    m = parse_control(INIT_CMPLT_GADGET)
    assert isinstance(m, InitializeComplete)
    assert (m.request_id, m.status, m.major, m.minor) == (1, 0, 1, 0)
    assert (m.device_flags, m.medium) == (r.DF_CONNECTIONLESS, r.MEDIUM_802_3)
    assert (m.max_packets_per_transfer, m.max_transfer_size, m.packet_alignment_factor) == (1, 1580, 0)
    assert m.alignment == 1 and m.is_completion and m.name == "INITIALIZE_CMPLT"
    assert r.expect(m, r.INITIALIZE_CMPLT, 1) is m
    # a response buffer larger than the message: the rest is ignored
    assert parse_control(bytearray(INIT_CMPLT_GADGET + bytes(100))) == m


def test_parse_query_complete_mac() -> None:
    m = parse_control(memoryview(QUERY_CMPLT_MAC))
    assert isinstance(m, QueryComplete)
    assert (m.request_id, m.status, m.payload) == (2, 0, h("021122334455"))
    speed = parse_control(r.query_complete(4, payload=struct.pack("<I", 10_000_000)))
    assert isinstance(speed, QueryComplete) and speed.u32() == 10_000_000
    with pytest.raises(RndisError):
        QueryComplete(r.QUERY_CMPLT, 1, b"", 0, b"ab").u32()


def test_parse_query_complete_empty_buffer_offset_ignored() -> None:
    msg = bytearray(r.query_complete(5, r.STATUS_NOT_SUPPORTED))
    msg[20:24] = struct.pack("<I", 0xFFFF)  # garbage offset with a zero length
    m = parse_control(msg)
    assert isinstance(m, QueryComplete) and m.payload == b"" and m.status == r.STATUS_NOT_SUPPORTED
    with pytest.raises(RndisError, match="NOT_SUPPORTED"):
        r.expect(m, r.QUERY_CMPLT)


def test_parse_indicate_status_and_classifier() -> None:
    m = parse_control(INDICATE_CONNECT)
    assert isinstance(m, IndicateStatus) and m.link is True and m.request_id == 0
    assert r.parse_indicate_status(m) == (r.STATUS_MEDIA_CONNECT, b"")
    assert r.parse_indicate_status(INDICATE_CONNECT) == (r.STATUS_MEDIA_CONNECT, b"")
    down = r.indicate_status(r.STATUS_MEDIA_DISCONNECT, b"\x01\x02")
    assert r.parse_indicate_status(down) == (r.STATUS_MEDIA_DISCONNECT, b"\x01\x02")
    assert r.media_state(r.STATUS_MEDIA_CONNECT) is True
    assert r.media_state(r.STATUS_MEDIA_DISCONNECT) is False
    assert r.media_state(r.STATUS_LINK_SPEED_CHANGE) is None
    with pytest.raises(RndisError):
        r.parse_indicate_status(KEEPALIVE_BYTES)


def test_parse_keepalive_and_completions() -> None:
    m = parse_control(KEEPALIVE_BYTES)
    assert type(m) is ControlMessage and m.msg_type == r.KEEPALIVE_MSG and m.request_id == 7
    assert r.keepalive_complete(m.request_id) == h("08000080 10000000 07000000 00000000")
    s = parse_control(r.set_complete(3))
    assert isinstance(s, StatusComplete) and (s.msg_type, s.request_id, s.status) == (r.SET_CMPLT, 3, 0)
    k = parse_control(r.keepalive_complete(8))
    assert isinstance(k, StatusComplete) and k.msg_type == r.KEEPALIVE_CMPLT
    rc = parse_control(r.reset_complete(addressing_reset=1))
    assert isinstance(rc, r.ResetComplete) and rc.addressing_reset == 1


def test_parse_host_messages_device_side() -> None:
    m = parse_control(INITIALIZE_BYTES)
    assert isinstance(m, InitializeMsg) and (m.request_id, m.major, m.minor, m.max_transfer_size) == (1, 1, 0, 16384)
    q = parse_control(QUERY_MAC)
    assert isinstance(q, OidRequest) and (q.msg_type, q.oid, q.payload) == (
        r.QUERY_MSG,
        r.OID_802_3_PERMANENT_ADDRESS,
        b"",
    )
    s = parse_control(SET_FILTER)
    assert isinstance(s, OidRequest) and s.msg_type == r.SET_MSG and s.payload == struct.pack("<I", 0x0F)
    halt = parse_control(r.halt(4))
    assert halt.msg_type == r.HALT_MSG and halt.request_id == 4
    assert parse_control(r.reset()).msg_type == r.RESET_MSG


def test_parse_unknown_type_is_generic() -> None:
    m = parse_control(h("09000000 10000000 05000000 aabbccdd"))
    assert type(m) is ControlMessage and m.msg_type == 9 and m.request_id == 5 and m.body == h("05000000 aabbccdd")
    m = parse_control(h("0a000080 08000000"))
    assert m.request_id == 0 and m.body == b"" and m.is_completion


@pytest.mark.parametrize(
    "data",
    [
        b"",
        h("02000080 34"),  # shorter than the 8-byte header
        h("02000080 07000000"),  # MessageLength < 8
        INIT_CMPLT_GADGET[:-4],  # MessageLength 52 > 48 received
        h("02000080 30000000") + INIT_CMPLT_GADGET[8:48],  # MessageLength 48 < 52
        h("04000080 14000000 02000000 00000000 00000000"),  # QUERY_CMPLT shorter than 24
        QUERY_CMPLT_MAC[:16] + h("07000000") + QUERY_CMPLT_MAC[20:],  # buffer runs past MessageLength
        QUERY_CMPLT_MAC[:20] + h("12000000") + QUERY_CMPLT_MAC[24:],  # offset 18: ends at 32 > 30
        QUERY_CMPLT_MAC[:20] + h("08000000") + QUERY_CMPLT_MAC[24:],  # offset 8: overlaps the header
        QUERY_CMPLT_MAC[:20] + h("f0ffffff") + QUERY_CMPLT_MAC[24:],  # huge offset
        INDICATE_CONNECT[:12] + h("04000000 0c000000"),  # status buffer outside the 20-byte message
        h("07000000 10000000 0b000140 00000000"),  # INDICATE_STATUS shorter than 20
        h("08000000 08000000"),  # KEEPALIVE without a request id
        h("01000000 2c000000") + bytes(36),  # PACKET_MSG on the control channel
        SET_FILTER[:16] + h("05000000") + SET_FILTER[20:],  # SET buffer past the end
    ],
)
def test_parse_malformed_raises_rndis_error(data: bytes) -> None:
    with pytest.raises(RndisError) as info:
        parse_control(data)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_expect_mismatches() -> None:
    m = parse_control(INIT_CMPLT_GADGET)
    with pytest.raises(RndisError, match="expected QUERY_CMPLT"):
        r.expect(m, r.QUERY_CMPLT)
    with pytest.raises(RndisError, match="request id"):
        r.expect(m, r.INITIALIZE_CMPLT, 2)
    failed = parse_control(r.initialize_complete(1, r.STATUS_FAILURE))
    with pytest.raises(RndisError, match="FAILURE"):
        r.expect(failed, r.INITIALIZE_CMPLT)


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=120))
def test_parse_control_arbitrary_bytes_only_rndis_error(data: bytes) -> None:
    try:
        m = parse_control(data)
    except RndisError:
        return
    assert isinstance(m, ControlMessage)


@settings(max_examples=600, deadline=None)
@given(
    st.sampled_from([INIT_CMPLT_GADGET, QUERY_CMPLT_MAC, INDICATE_CONNECT, KEEPALIVE_BYTES, SET_FILTER, QUERY_MAC]),
    st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), max_size=6),
    st.integers(0, 64),
)
def test_parse_control_mutated_only_rndis_error(base: bytes, muts: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(base)
    for i, v in muts:
        if i < len(data):
            data[i] = v
    data = data[: max(0, len(data) - cut)] if cut < 40 else data
    try:
        parse_control(bytes(data))
    except RndisError:
        pass


# --- data path: hand-built transfers ---------------------------------------------------------------------

F_A, F_B, F_C = frame(20, 1), frame(30, 2), frame(60, 3)


def packet_msg(payload: bytes, msg_len: int | None = None, data_off: int = 36, data_len: int | None = None) -> bytes:
    """A PACKET_MSG written field by field (not through the codec)."""
    data_len = len(payload) if data_len is None else data_len
    msg_len = 44 + len(payload) if msg_len is None else msg_len
    head = struct.pack("<11I", 1, msg_len, data_off, data_len, 0, 0, 0, 0, 0, 0, 0)
    return head + payload


TWO_MSGS = (
    h(
        "01000000 40000000 24000000 14000000"  # PACKET_MSG, 64 bytes, data at 36 (byte 44), 20 bytes
        "00000000 00000000 00000000 00000000 00000000 00000000 00000000"
    )
    + F_A
    + h(
        "01000000 4a000000 24000000 1e000000"  # PACKET_MSG, 74 bytes, 30-byte frame
        "00000000 00000000 00000000 00000000 00000000 00000000 00000000"
    )
    + F_B
)


def test_hand_built_two_messages() -> None:
    assert TWO_MSGS == packet_msg(F_A) + packet_msg(F_B)
    c, stats = decode(TWO_MSGS)
    assert c.spans == [(44, 20), (64 + 44, 30)]
    assert c.frames() == [F_A, F_B] and errors(stats) == (0, 0, 0)


def test_decode_uses_length_not_buffer_size() -> None:
    buf = bytearray(4096)
    buf[: len(TWO_MSGS)] = TWO_MSGS
    buf[len(TWO_MSGS)] = 0xFF  # junk after the transfer must not be looked at
    c, stats = decode(buf, len(TWO_MSGS))
    assert c.frames() == [F_A, F_B] and errors(stats) == (0, 0, 0)
    c, stats = decode(buf, len(TWO_MSGS) - 1)  # the second message now runs past the transfer
    assert c.frames() == [F_A] and errors(stats) == (1, 1, 0)
    c, stats = decode(TWO_MSGS, 10_000)  # a length larger than the buffer is clamped
    assert c.frames() == [F_A, F_B]


def test_padding_inside_message_and_oob_ignored() -> None:
    # DataOffset 40 (4 bytes of something before the frame), 6 bytes of padding after it, OOB fields set
    head = struct.pack("<11I", 1, 44 + 4 + 20 + 6, 40, 20, 8, 4, 1, 0, 0, 0, 0)
    msg = head + b"oob!" + F_A + bytes(6)
    c, stats = decode(msg + packet_msg(F_B))
    assert c.frames() == [F_A, F_B] and errors(stats) == (0, 0, 0)


@pytest.mark.parametrize("pad", [1, 3, 43])
def test_trailing_zero_padding_is_not_an_error(pad: int) -> None:
    c, stats = decode(TWO_MSGS + bytes(pad))
    assert c.frames() == [F_A, F_B] and errors(stats) == (0, 0, 0)


def test_trailing_nonzero_or_long_padding_is_an_error() -> None:
    c, stats = decode(TWO_MSGS + b"\0\0\x01")
    assert c.frames() == [F_A, F_B] and errors(stats) == (1, 1, 0)
    c, stats = decode(TWO_MSGS + bytes(44))  # a whole zero "header": MessageType 0
    assert c.frames() == [F_A, F_B] and errors(stats) == (1, 1, 0)


def test_wrong_type_stops() -> None:
    c, stats = decode(packet_msg(F_A) + r.keepalive(1) + bytes(32) + packet_msg(F_B))
    assert c.frames() == [F_A] and errors(stats) == (1, 1, 0)


@pytest.mark.parametrize("msg_len", [0, 8, 43])
def test_message_length_too_small_stops(msg_len: int) -> None:
    c, stats = decode(packet_msg(F_A) + packet_msg(F_C, msg_len=msg_len) + packet_msg(F_B))
    assert c.frames() == [F_A] and errors(stats) == (1, 1, 0)


def test_message_length_past_transfer_stops() -> None:
    c, stats = decode(packet_msg(F_A, msg_len=44 + 21))
    assert c.spans == [] and errors(stats) == (1, 1, 0)
    c, stats = decode(packet_msg(F_A, msg_len=0xFFFFFFFF))
    assert c.spans == [] and errors(stats) == (1, 1, 0)


@pytest.mark.parametrize(
    ("data_off", "data_len"),
    [(0, 20), (35, 20), (37, 20), (36, 61), (0xFFFFFFF0, 20), (36, 0xFFFFFFFF)],
)
def test_bad_data_offset_or_length_skips_message(data_off: int, data_len: int) -> None:
    bad = packet_msg(F_C, data_off=data_off, data_len=data_len)
    c, stats = decode(packet_msg(F_A) + bad + packet_msg(F_B))
    expect = [F_A, F_B]
    if data_off == 37 and data_len == 20:  # still inside the 104-byte message: a valid (odd) placement
        expect = [F_A, F_C[1:21], F_B]
        assert errors(stats) == (0, 0, 0)
    else:
        assert errors(stats) == (1, 1, 0)
    assert c.frames() == expect


@pytest.mark.parametrize("n", [0, 1, 13, 1523, 3000])
def test_bad_frame_length_skips(n: int) -> None:
    c, stats = decode(packet_msg(F_A) + packet_msg(frame(n, 9)) + packet_msg(F_B))
    assert c.frames() == [F_A, F_B] and errors(stats) == (1, 0, 1)


def test_frame_length_limits() -> None:
    c, stats = decode(packet_msg(frame(14, 1)) + packet_msg(frame(1522, 2)))
    assert [n for _, n in c.spans] == [14, 1522] and errors(stats) == (0, 0, 0)
    c, stats = decode(packet_msg(frame(1600, 1)), max_frame=1600)
    assert len(c.spans) == 1


def test_empty_transfer() -> None:
    c, stats = decode(b"")
    assert c.spans == [] and errors(stats) == (0, 0, 0)


# --- TX -------------------------------------------------------------------------------------------------


def test_write_header_in_headroom() -> None:
    buf = bytearray(200)
    buf[44 + 10 : 44 + 10 + 30] = F_B
    total = RndisEncoder.write_header(buf, 10, 30)
    assert total == 74
    assert bytes(buf[10 : 10 + total]) == packet_msg(F_B)
    assert RndisEncoder().write_header(memoryview(buf), 0, 20) == 64


def test_batch_round_trip() -> None:
    frames = [frame(n, i) for i, n in enumerate([14, 60, 1514, 99, 1000])]
    data = r.build_transfer(frames)
    assert len(data) == sum(44 + len(f) for f in frames)
    c, stats = decode(data)
    assert c.frames() == frames and errors(stats) == (0, 0, 0)


@pytest.mark.parametrize("factor", [0, 2, 3, 6])
def test_batch_alignment(factor: int) -> None:
    frames = [frame(n, i) for i, n in enumerate([61, 17, 100, 33])]
    data = r.build_transfer(frames, alignment_factor=factor)
    c, stats = decode(data)
    assert c.frames() == frames and errors(stats) == (0, 0, 0)
    align = 1 << factor
    pos = 0
    starts = []
    while pos < len(data):
        starts.append(pos)
        pos += struct.unpack_from("<I", data, pos + 4)[0]
    assert pos == len(data) and len(starts) == 4
    assert all(s % align == 0 for s in starts)
    # the last message carries no padding
    assert struct.unpack_from("<I", data, starts[-1] + 4)[0] == 44 + 33


def test_batch_alignment_gap_is_zeroed() -> None:
    buf = bytearray(b"\xee" * 512)
    b = RndisBatch(8, 512, 4)
    b.begin(memoryview(buf))
    assert b.add(frame(15, 1)) and b.add(frame(15, 2))
    total = b.finish()
    assert total == 64 + 59
    assert buf[59:64] == bytes(5)


def test_batch_max_packets() -> None:
    b = RndisBatch(1, 1580)  # what the Linux gadget allows
    buf = bytearray(1580)
    b.begin(buf)
    off, room = b.next_slot()
    assert (off, room) == (44, 1536)
    buf[off : off + 100] = F_C + F_C[:40]
    b.commit(100)
    assert b.count == 1 and b.next_slot()[1] == 0
    assert b.finish() == 144
    assert not b.add(F_A)  # closed
    b.begin(buf)
    assert b.count == 0 and b.add(F_A)


def test_batch_max_transfer_size() -> None:
    b = RndisBatch(64, 300)
    buf = bytearray(1000)
    b.begin(buf)
    assert b.add(frame(100, 1))  # 144
    off, room = b.next_slot()
    assert off == 188 and room == 300 - 188
    assert not b.add(frame(113, 2))
    assert b.add(frame(112, 2))  # exactly 300
    assert b.next_slot()[1] == 0
    assert b.finish() == 300


def test_batch_view_shorter_than_max() -> None:
    b = RndisBatch(4, 16384)
    buf = bytearray(200)
    b.begin(memoryview(buf))
    assert b.next_slot() == (44, 156)


def test_batch_zlp_pad_byte() -> None:
    buf = bytearray(2048)
    b = RndisBatch(4, 2048, 0, maxpacket=64)
    b.begin(buf)
    assert b.add(frame(84, 1))  # 128 bytes: a multiple of 64
    assert b.finish() == 129 and buf[128] == 0 and not b.zlp
    c, stats = decode(buf, 129)
    assert len(c.spans) == 1 and errors(stats) == (0, 0, 0)
    b.begin(buf)
    assert b.next_slot()[1] == 2048 - 1 - 44  # one byte reserved for the pad
    nb = RndisBatch(4, 2048)
    nb.begin(buf)
    assert nb.add(frame(84, 1)) and nb.finish() == 128  # no maxpacket: caller sends a ZLP
    assert nb.finish() == 0


def test_batch_commit_errors_and_empty_finish() -> None:
    b = RndisBatch(2, 1000)
    with pytest.raises(ValueError):
        b.commit(10)  # not begun
    b.begin(bytearray(1000))
    assert b.finish() == 0
    b.begin(bytearray(1000))
    _, room = b.next_slot()
    with pytest.raises(ValueError):
        b.commit(room + 1)
    with pytest.raises(ValueError):
        b.commit(0)


@pytest.mark.parametrize(
    "args", [(0, 1580, 0, 0), (1, 57, 0, 0), (1, 58, 0, 64), (1, 1580, 13, 0), (1, 1580, -1, 0), (1, 1580, 0, -1)]
)
def test_batch_bad_parameters(args: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError):
        RndisBatch(*args)


def test_batch_from_init_complete() -> None:
    m = parse_control(INIT_CMPLT_GADGET)
    assert isinstance(m, InitializeComplete)
    b = RndisBatch.from_init_complete(m, 512)
    assert (b.max_packets, b.max_transfer_size, b.alignment, b.maxpacket) == (1, 1580, 1, 512)
    odd = parse_control(
        r.initialize_complete(1, max_packets_per_transfer=0, max_transfer_size=100, packet_alignment_factor=40)
    )
    assert isinstance(odd, InitializeComplete) and odd.alignment == 1
    b = RndisBatch.from_init_complete(odd)
    assert (b.max_packets, b.max_transfer_size, b.alignment) == (1, 1558, 1)
    big = parse_control(
        r.initialize_complete(1, max_packets_per_transfer=40, max_transfer_size=1 << 20, packet_alignment_factor=3)
    )
    assert isinstance(big, InitializeComplete)
    b = RndisBatch.from_init_complete(big, max_packets_cap=10, max_transfer_cap=16384)
    assert (b.max_packets, b.max_transfer_size, b.alignment) == (10, 16384, 8)


def test_build_transfer_too_big() -> None:
    with pytest.raises(ValueError):
        r.build_transfer([frame(100, 1)] * 3, max_packets=2)


# --- fuzzing ------------------------------------------------------------------------------------------------


def _check_decode(data: bytes, length: int) -> None:
    stats = Stats()
    before = stats.as_dict()
    c, _ = decode(data, length, stats)
    after = stats.as_dict()
    assert all(after[k] >= before[k] for k in COUNTERS)
    assert after["rx_errors"] == after["rx_frame_errors"] + after["rx_length_errors"]


@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 450))
def test_fuzz_arbitrary_bytes(data: bytes, length: int) -> None:
    _check_decode(data, length)


_frames = st.lists(st.integers(1, 200).map(lambda n: frame(n, n)), min_size=1, max_size=6)


@settings(max_examples=600, deadline=None)
@given(
    _frames,
    st.integers(0, 5),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8),
    st.integers(0, 2000),
)
def test_fuzz_mutated_valid_transfers(frames: list[bytes], factor: int, muts: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(r.build_transfer(frames, alignment_factor=factor))
    for i, v in muts:
        if i < len(data):
            data[i] = v
    _check_decode(bytes(data), max(0, len(data) - cut))


@settings(max_examples=300, deadline=None)
@given(_frames, st.integers(0, 5), st.integers(1, 8), st.sampled_from([0, 64, 512]))
def test_fuzz_batch_round_trip(frames: list[bytes], factor: int, max_packets: int, maxpacket: int) -> None:
    buf = bytearray(4096)
    b = RndisBatch(max_packets, 4096, factor, maxpacket)
    b.begin(memoryview(buf))
    sent = []
    for f in frames:
        if not b.add(f):
            break
        sent.append(f)
    assert b.count == len(sent) <= max_packets
    total = b.finish()
    assert total <= 4096
    if maxpacket:
        assert total % maxpacket != 0 or total == 0
    c, stats = decode(buf, total, max_frame=4096)
    good = [f for f in sent if len(f) >= 14]
    assert c.frames() == good
    assert stats.rx_length_errors == len(sent) - len(good) and stats.rx_frame_errors == 0


# --- allocation ---------------------------------------------------------------------------------------------


def _traced_growth(fn, rounds: int = 10_000) -> int:
    for _ in range(200):  # warm-up: caches, specialisation
        fn()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(rounds):
            fn()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return end - start


def test_decode_does_not_allocate() -> None:
    data = bytearray(r.build_transfer([frame(1514, 1), frame(60, 2), frame(200, 3)], alignment_factor=2) + b"\0")
    view = memoryview(data)
    dec = RndisDecoder(Stats())
    length = len(data)

    def emit(off: int, n: int) -> None:
        pass

    assert _traced_growth(lambda: dec.decode(view, length, emit)) < 10_000


def test_build_does_not_allocate() -> None:
    b = RndisBatch(8, 16384, 2, 512)
    view = memoryview(bytearray(16384))

    def build() -> None:
        b.begin(view)
        for n in (60, 1514, 61, 200, 1000):
            off, room = b.next_slot()
            if room < n:
                break
            b.commit(n)
        b.finish()

    assert _traced_growth(build) < 10_000


def test_write_header_does_not_allocate() -> None:
    view = memoryview(bytearray(2048))
    assert _traced_growth(lambda: r.write_packet_header(view, 0, 1514)) < 10_000
