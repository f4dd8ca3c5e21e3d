"""CDC EEM codec: hand-built streams, commands, CRC/sentinel checks, batch builder, malformed input, allocation."""

from __future__ import annotations

import binascii
import struct
import tracemalloc

import pytest
from codec_helpers import Collector, errors, frame, h
from hypothesis import given, settings
from hypothesis import strategies as st

from usbnetd.core.stats import COUNTERS, Stats
from usbnetd.protocols import eem_codec as e
from usbnetd.protocols.eem_codec import EemBatch, EemDecoder

# --- helpers ------------------------------------------------------------------------------------------


def decode(data: bytes | bytearray, length: int | None = None, stats: Stats | None = None, **kw):
    stats = stats if stats is not None else Stats()
    length = len(data) if length is None else length
    c = Collector(data, length)
    n = EemDecoder(stats, **kw).decode(memoryview(data), length, c, c.command)
    assert n == len(c.spans)
    return c, stats








def fcs(data: bytes) -> bytes:
    """The Ethernet FCS as it follows a frame on the wire: CRC-32, least significant byte first."""
    return struct.pack("<I", binascii.crc32(data))


F_A, F_B, F_C = frame(20, 1), frame(30, 2), frame(60, 3)

# --- hand-built stream (CDC EEM 1.0 packet layouts) ----------------------------------------------------------

STREAM = (
    h("0000")  # zero-length EEM packet
    + h("1800")  # data, bmCRC 0, length 24 = 20-byte frame + sentinel
    + F_A
    + h("deadbeef")  # the sentinel, as bytes DE AD BE EF
    + h("0480")  # command, bmEEMCmd 0 (echo), param 4
    + b"ping"
    + h("2240")  # data, bmCRC 1, length 34 = 30 + CRC
    + F_B
    + fcs(F_B)
    + h("00a8")  # command 5 (tickle)
    + h("0090")  # command 2 (suspend hint)
    + h("0000")
)


def test_crc_algorithm_and_byte_order() -> None:
    # the standard CRC-32 check value, and the byte order the FCS goes out in
    assert binascii.crc32(b"123456789") == 0xCBF43926
    assert fcs(b"123456789") == h("2639f4cb")


def test_command_builders() -> None:
    assert e.command(e.CMD_TICKLE) == h("00a8")
    assert e.command(e.CMD_SUSPEND_HINT) == h("0090")
    assert e.command(e.CMD_RESPONSE_HINT, 0x123) == struct.pack("<H", 0x8000 | 3 << 11 | 0x123)
    assert e.echo(b"ping") == h("0480") + b"ping"
    assert e.echo_response(b"ping") == h("0488") + b"ping"
    assert e.echo_response(memoryview(b"x" * 2047))[:2] == h("ff8f")
    for bad in ((8, 0), (-1, 0), (0, 2048), (0, -1)):
        with pytest.raises(ValueError):
            e.command(*bad)
    with pytest.raises(ValueError):
        e.echo(bytes(2048))
    assert e.command_name(e.CMD_ECHO) == "echo" and e.command_name(7) == "command 7"


def test_data_packet_builder() -> None:
    assert e.data_packet(F_A) == h("1800") + F_A + h("deadbeef")
    assert e.data_packet(F_B, crc=True) == h("2240") + F_B + fcs(F_B)
    with pytest.raises(ValueError):
        e.data_packet(bytes(16380))


def test_hand_built_stream() -> None:
    c, stats = decode(STREAM)
    assert c.frames() == [F_A, F_B]
    assert c.spans == [(4, 20), (36, 30)]
    assert c.commands == [(e.CMD_ECHO, 4, b"ping"), (e.CMD_TICKLE, 0, b""), (e.CMD_SUSPEND_HINT, 0, b"")]
    assert errors(stats) == (0, 0, 0)
    assert e.echo_response(c.commands[0][2]) == h("0488") + b"ping"


def test_commands_skipped_without_callback() -> None:
    stats = Stats()
    spans: list[tuple[int, int]] = []
    n = EemDecoder(stats).decode(STREAM, len(STREAM), lambda o, k: spans.append((o, k)))
    assert n == 2 and spans == [(4, 20), (36, 30)] and errors(stats) == (0, 0, 0)


def test_echo_response_data_skipped() -> None:
    c, stats = decode(e.echo_response(b"abc") + e.data_packet(F_A))
    assert c.commands == [(e.CMD_ECHO_RESPONSE, 3, b"abc")] and c.frames() == [F_A]


def test_decode_uses_length_not_buffer_size() -> None:
    buf = bytearray(4096)
    buf[: len(STREAM)] = STREAM
    buf[len(STREAM) : len(STREAM) + 2] = h("ffff")
    c, stats = decode(buf, len(STREAM))
    assert c.frames() == [F_A, F_B] and errors(stats) == (0, 0, 0)
    c, stats = decode(STREAM, 10_000)
    assert c.frames() == [F_A, F_B]


def test_only_zero_length_packets() -> None:
    c, stats = decode(bytes(10))
    assert c.spans == [] and c.commands == [] and errors(stats) == (0, 0, 0)
    c, stats = decode(h("0040"))  # bmCRC set, length 0: still a no-op
    assert c.spans == [] and errors(stats) == (0, 0, 0)


# --- malformed ------------------------------------------------------------------------------------------------


def test_lone_trailing_byte_is_truncation() -> None:
    c, stats = decode(e.data_packet(F_A) + b"\x00")
    assert c.frames() == [F_A] and errors(stats) == (1, 0, 1)


def test_data_running_past_the_end_stops() -> None:
    data = e.data_packet(F_A) + e.data_packet(F_B)
    c, stats = decode(data, len(data) - 1)
    assert c.frames() == [F_A] and errors(stats) == (1, 0, 1)
    c, stats = decode(h("ff3f") + bytes(100))  # length 16383
    assert c.spans == [] and errors(stats) == (1, 0, 1)


def test_echo_running_past_the_end_stops() -> None:
    c, stats = decode(e.data_packet(F_A) + h("0a80") + b"short")
    assert c.frames() == [F_A] and c.commands == [] and errors(stats) == (1, 0, 1)


@pytest.mark.parametrize("payload", [1, 3, 4, 5, 17, 1519, 2000])
def test_bad_frame_length_skips(payload: int) -> None:
    bad = struct.pack("<H", payload) + frame(payload, 7)
    c, stats = decode(e.data_packet(F_A) + bad + e.data_packet(F_B))
    assert c.frames() == [F_A, F_B] and errors(stats) == (1, 0, 1)


def test_frame_length_limits() -> None:
    c, stats = decode(e.data_packet(frame(14, 1)) + e.data_packet(frame(1514, 2)))
    assert [n for _, n in c.spans] == [14, 1514] and errors(stats) == (0, 0, 0)
    c, stats = decode(e.data_packet(frame(9000, 1)), max_frame=9000)
    assert [n for _, n in c.spans] == [9000]


def test_bad_sentinel_counted_and_skipped() -> None:
    bad = h("1800") + F_C[:20] + h("efbeadde")  # the sentinel in the wrong byte order
    c, stats = decode(e.data_packet(F_A) + bad + e.data_packet(F_B))
    assert c.frames() == [F_A, F_B] and errors(stats) == (1, 1, 0)
    c, stats = decode(e.data_packet(F_A) + bad + e.data_packet(F_B), check_sentinel=False)
    assert c.frames() == [F_A, F_C[:20], F_B] and errors(stats) == (0, 0, 0)


def test_bad_crc_counted_and_skipped() -> None:
    bad = bytearray(e.data_packet(F_C, crc=True))
    bad[10] ^= 0x01  # flip a data bit
    c, stats = decode(e.data_packet(F_A) + bytes(bad) + e.data_packet(F_B, crc=True))
    assert c.frames() == [F_A, F_B] and errors(stats) == (1, 1, 0)
    c, stats = decode(bytes(bad), check_crc=False)
    assert len(c.spans) == 1 and errors(stats) == (0, 0, 0)
    # a CRC stored most significant byte first is wrong too
    be = h("4040") + F_C + struct.pack(">I", binascii.crc32(F_C))
    c, stats = decode(be)
    assert c.spans == [] and errors(stats) == (1, 1, 0)


def test_crc_bit_with_sentinel_is_a_crc_error() -> None:
    c, stats = decode(h("1840") + F_A + h("deadbeef"))
    assert c.spans == [] and errors(stats) == (1, 1, 0)


def test_crc_check_on_bytes_input() -> None:
    data = e.data_packet(F_C, crc=True)
    stats = Stats()
    spans: list[tuple[int, int]] = []
    assert EemDecoder(stats).decode(data, len(data), lambda o, n: spans.append((o, n))) == 1
    assert spans == [(2, 60)]


# --- TX -------------------------------------------------------------------------------------------------


def test_batch_layout_and_round_trip() -> None:
    buf = bytearray(b"\xee" * 1024)
    b = EemBatch(1024, 512, 8)
    b.begin(memoryview(buf))
    off, room = b.next_slot()
    assert (off, room) == (2, 1024 - 2 - 4 - 2)
    buf[2:22] = F_A
    b.commit(20)
    assert b.count == 1 and bytes(buf[:26]) == e.data_packet(F_A)
    assert b.add(F_B)
    total = b.finish()
    assert total == 26 + 36
    assert bytes(buf[:total]) == e.data_packet(F_A) + e.data_packet(F_B)
    c, stats = decode(buf, total)
    assert c.frames() == [F_A, F_B] and errors(stats) == (0, 0, 0)


def test_batch_crc_mode() -> None:
    data = e.build_transfer([F_A, F_C], crc=True)
    assert data == e.data_packet(F_A, crc=True) + e.data_packet(F_C, crc=True)
    c, stats = decode(data)
    assert c.frames() == [F_A, F_C] and errors(stats) == (0, 0, 0)


@pytest.mark.parametrize("maxpacket", [64, 512, 1024])
def test_batch_zero_length_packet_instead_of_zlp(maxpacket: int) -> None:
    n = maxpacket * 2 - 6  # header + frame + sentinel == 2 * maxpacket
    buf = bytearray(b"\xee" * 4096)
    b = EemBatch(4096, maxpacket)
    b.begin(buf)
    assert b.add(frame(n, 1))
    total = b.finish()
    assert total == 2 * maxpacket + 2 and buf[total - 2 : total] == b"\0\0"
    c, stats = decode(buf, total, max_frame=4096)
    assert [k for _, k in c.spans] == [n] and errors(stats) == (0, 0, 0)
    # one byte shorter: no zero-length packet
    b.begin(buf)
    assert b.add(frame(n - 1, 1))
    assert b.finish() == 2 * maxpacket - 1


def test_batch_zero_length_packet_fits_at_max_size() -> None:
    # max_size 1026: the 2 bytes for the zero-length packet are always reserved
    b = EemBatch(1026, 512)
    buf = bytearray(1026)
    b.begin(buf)
    off, room = b.next_slot()
    assert room == 1026 - 2 - 4 - 2
    assert b.add(frame(1024 - 6, 1))
    assert b.next_slot()[1] == 0  # 2 bytes left: not even a header and a sentinel
    assert b.finish() == 1026


def test_batch_max_frames_and_size() -> None:
    b = EemBatch(65536, 512, max_frames=3)
    buf = bytearray(65536)
    b.begin(buf)
    for i in range(3):
        assert b.add(frame(100, i))
    assert b.next_slot()[1] == 0 and not b.add(F_A)
    assert b.finish() == 3 * 106
    b = EemBatch(200, 512)
    b.begin(buf)
    assert b.add(frame(100, 1))
    off, room = b.next_slot()
    assert (off, room) == (108, 200 - 108 - 6)
    assert not b.add(frame(room + 1, 2)) and b.add(frame(room, 2))
    assert b.finish() == 198


def test_batch_room_capped_by_eem_length_field() -> None:
    b = EemBatch(65536, 512)
    b.begin(bytearray(65536))
    assert b.next_slot() == (2, e.MAX_FRAME_PAYLOAD)


def test_batch_view_shorter_than_max() -> None:
    b = EemBatch(16384, 512)
    b.begin(bytearray(100))
    assert b.next_slot() == (2, 92)


def test_batch_errors() -> None:
    b = EemBatch(1000, 512)
    with pytest.raises(ValueError):
        b.commit(10)
    assert b.finish() == 0
    b.begin(bytearray(1000))
    assert b.finish() == 0  # nothing committed
    b.begin(bytearray(1000))
    _, room = b.next_slot()
    with pytest.raises(ValueError):
        b.commit(room + 1)
    with pytest.raises(ValueError):
        b.commit(0)
    for args in ((1000, 0, 1), (1000, 512, 0), (21, 512, 1)):
        with pytest.raises(ValueError):
            EemBatch(*args)
    with pytest.raises(ValueError):
        e.build_transfer([bytes(100)] * 3, max_size=250)


# --- fuzzing ------------------------------------------------------------------------------------------------


def _check_decode(data: bytes, length: int, **kw) -> None:
    stats = Stats()
    before = stats.as_dict()
    decode(data, length, stats, **kw)
    after = stats.as_dict()
    assert all(after[k] >= before[k] for k in COUNTERS)
    assert after["rx_errors"] == after["rx_frame_errors"] + after["rx_length_errors"]


@settings(max_examples=800, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 450), st.booleans())
def test_fuzz_arbitrary_bytes(data: bytes, length: int, lenient: bool) -> None:
    _check_decode(data, length, check_crc=not lenient, check_sentinel=not lenient)


_frames = st.lists(st.integers(1, 300).map(lambda n: frame(n, n)), min_size=1, max_size=6)


@settings(max_examples=600, deadline=None)
@given(
    _frames,
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8),
    st.integers(0, 2000),
    st.sampled_from([b"", e.echo(b"hello"), e.command(e.CMD_TICKLE), b"\0\0"]),
)
def test_fuzz_mutated_valid_transfers(
    frames: list[bytes], crc: bool, muts: list[tuple[int, int]], cut: int, extra: bytes
) -> None:
    data = bytearray(extra + e.build_transfer(frames, crc=crc, maxpacket=64))
    for i, v in muts:
        if i < len(data):
            data[i] = v
    _check_decode(bytes(data), max(0, len(data) - cut))


@settings(max_examples=300, deadline=None)
@given(_frames, st.booleans(), st.integers(1, 8), st.sampled_from([8, 64, 512]))
def test_fuzz_batch_round_trip(frames: list[bytes], crc: bool, max_frames: int, maxpacket: int) -> None:
    buf = bytearray(2048)
    b = EemBatch(2048, maxpacket, max_frames, crc)
    b.begin(memoryview(buf))
    sent = []
    for f in frames:
        if not b.add(f):
            break
        sent.append(f)
    assert b.count == len(sent) <= max_frames
    total = b.finish()
    assert total <= 2048 and (total == 0 or total % maxpacket != 0)
    c, stats = decode(buf, total, max_frame=2048)
    good = [f for f in sent if len(f) >= 14]
    assert c.frames() == good
    assert stats.rx_length_errors == len(sent) - len(good) and stats.rx_frame_errors == 0


# --- allocation ---------------------------------------------------------------------------------------------


def _traced_growth(fn, rounds: int = 10_000) -> int:
    for _ in range(200):
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
    data = bytearray(
        e.build_transfer([frame(1514, 1), frame(60, 2)])
        + e.data_packet(frame(300, 3), crc=True)
        + e.echo(b"ping")
        + b"\0\0"
    )
    view = memoryview(data)
    dec = EemDecoder(Stats())
    length = len(data)

    def emit(off: int, n: int) -> None:
        pass

    def on_command(cmd: int, param: int, off: int, n: int) -> None:
        pass

    assert dec.decode(view, length, emit, on_command) == 3
    assert _traced_growth(lambda: dec.decode(view, length, emit, on_command)) < 10_000


@pytest.mark.parametrize("crc", [False, True])
def test_build_does_not_allocate(crc: bool) -> None:
    b = EemBatch(16384, 512, 16, crc)
    view = memoryview(bytearray(16384))

    def build() -> None:
        b.begin(view)
        for n in (60, 1514, 61, 200, 1000, 506):
            off, room = b.next_slot()
            if room < n:
                break
            b.commit(n)
        b.finish()

    assert _traced_growth(build) < 10_000
