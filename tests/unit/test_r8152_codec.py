"""The RTL8153 framing (protocols/r8152_codec.py): RX aggregates and TX descriptors, and the multicast hash.

The decoder is checked three ways: round trips through our builder, the bench emulator's own packer
(tests/vm/guest/r8152_device.py, written separately, which the kernel's r8152 accepts), and damaged input:
every count and every emitted range checked, nothing read past `length`. The TX framer is read back by the
emulator's own stream parser, and the multicast hash is checked against the emulator's receive filter.
"""

from __future__ import annotations

import collections
import importlib.util
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usbnetd.core.stats import Stats
from usbnetd.protocols import r8152_codec as codec
from usbnetd.protocols.r8152 import multicast_hash


def _load_emulator():
    """The bench's emulator module (it loads its neighbours as a script would)."""
    path = Path(__file__).resolve().parents[1] / "vm" / "guest" / "r8152_device.py"
    spec = importlib.util.spec_from_file_location("r8152_device", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("r8152_device", module)
    spec.loader.exec_module(module)
    return module


emulator = _load_emulator()


def frame(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i) & 0xFF for i in range(n))


def decode(data: bytes, max_frame: int = 1514, tail: bytes = b"") -> tuple[list[bytes], Stats]:
    stats = Stats()
    out: list[tuple[int, int]] = []
    buf = bytearray(data + tail)
    n = codec.RxDecoder(stats, max_frame).decode(memoryview(buf), len(data), lambda o, n: out.append((o, n)))
    assert n == len(out)
    for off, size in out:
        assert 0 <= off and off + size <= len(data), (off, size, len(data))
    return [bytes(buf[o : o + s]) for o, s in out], stats


def errors(stats: Stats) -> dict[str, int]:
    return {k: v for k, v in stats.as_dict().items() if v}


def test_round_trip():
    frames = [frame(60), frame(1514, 3), frame(61, 7), frame(100, 9), frame(14, 1)]
    data = codec.build_rx(frames)
    got, stats = decode(data)
    assert got == frames and not errors(stats)
    # Each descriptor starts on an 8-byte boundary and says frame + FCS.
    pos = 0
    for f in frames:
        assert pos % 8 == 0
        assert struct.unpack_from("<I", data, pos)[0] & 0x7FFF == len(f) + 4
        pos = (pos + 24 + len(f) + 4 + 7) & ~7
    assert pos == len(data)


def test_the_emulators_aggregates_decode_to_what_it_packed():
    """pack_rx pads short frames to 60 bytes as the wire does, and may end with 8 zero bytes."""
    frames = [frame(42), frame(1514, 5), frame(60, 2), frame(300, 4)]
    packet = emulator.pack_rx([(f, 0) for f in frames])
    got, stats = decode(packet)
    assert got == [f.ljust(60, b"\0") for f in frames] and not errors(stats)


def test_a_multiple_of_the_packet_size_gets_a_short_tail_that_ends_the_walk():
    # One frame whose descriptor + frame + FCS is 512 bytes: the emulator adds 8 zero bytes.
    f = frame(512 - 24 - 4, 1)
    packet = emulator.pack_rx([(f, 0)])
    assert len(packet) == 520
    got, stats = decode(packet)
    assert got == [f] and not errors(stats)


def test_zero_length_descriptor_and_short_tail_end_the_walk_quietly():
    data = codec.build_rx([frame(100)]) + bytes(24) + codec.build_rx([frame(70)])
    got, stats = decode(data)
    assert got == [frame(100)] and not errors(stats)
    got, stats = decode(codec.build_rx([frame(100)]) + bytes(23))
    assert got == [frame(100)] and not errors(stats)
    got, stats = decode(b"")
    assert got == [] and not errors(stats)


@pytest.mark.parametrize("length, why", [(17, "too short"), (1514 + 4 + 1, "too long")])
def test_bad_lengths_stop_the_walk_and_count_once(length, why):
    good = codec.build_rx([frame(64)])
    bad = struct.pack("<6I", length, 0, 0, 0, 0, 0) + bytes(max(0, length)) + bytes(8)
    got, stats = decode(good + bad + codec.build_rx([frame(64, 1)]))
    assert got == [frame(64)], why
    assert errors(stats) == {"rx_length_errors": 1, "rx_errors": 1}


def test_a_crc_error_drops_that_frame_only():
    data = bytearray(codec.build_rx([frame(64), frame(100, 1), frame(70, 2)]))
    second = (24 + 68 + 7) & ~7
    data[second + 1] |= 0x80  # opts1 bit 15 of the second descriptor
    got, stats = decode(bytes(data))
    assert got == [frame(64), frame(70, 2)]
    assert errors(stats) == {"rx_frame_errors": 1, "rx_errors": 1}


def test_a_frame_running_past_the_transfer_is_not_read():
    data = codec.build_rx([frame(64), frame(1000, 2)])
    cut = len(data) - 100
    got, stats = decode(data[:cut], tail=b"\xee" * 200)  # bytes past `length` are there but off limits
    assert got == [frame(64)]
    assert errors(stats) == {"rx_length_errors": 1, "rx_errors": 1}


def test_max_frame_is_the_drivers():
    jumbo = frame(9000)
    assert decode(codec.build_rx([jumbo]), max_frame=9208)[0] == [jumbo]
    assert decode(codec.build_rx([jumbo]), max_frame=1514)[0] == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_garbage_never_raises_and_never_reads_past_length(data):
    got, stats = decode(data, tail=b"\xff" * 64)
    assert stats.rx_length_errors <= 1 and stats.rx_errors == stats.rx_length_errors + stats.rx_frame_errors


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=14, max_value=1514), min_size=1, max_size=10))
def test_round_trip_any_sizes(sizes):
    frames = [frame(n, i) for i, n in enumerate(sizes)]
    assert decode(codec.build_rx(frames))[0] == frames


def test_tx_frames_read_back_by_the_emulator():
    frames = [frame(60), frame(1514, 1), frame(61, 2), frame(99, 3)]
    data = codec.encode_tx(frames)
    stream = emulator.TxStream()
    got = stream.feed(data)
    assert [f for f, _, _ in got] == frames and stream.malformed == 0
    for (f, opts1, opts2) in got:
        assert opts1 == len(f) | codec.TX_FS | codec.TX_LS and opts2 == 0
    assert codec.decode_tx(data) == [(f, len(f) | codec.TX_FS | codec.TX_LS, 0) for f in frames]
    # Descriptors start 4-byte aligned; the padding in between is zeros.
    pos = 0
    for f in frames:
        assert struct.unpack_from("<I", data, pos)[0] & codec.TX_LEN_MASK == len(f)
        end = pos + 8 + len(f)
        pos = (end + 3) & ~3
        assert data[end:pos] == bytes(len(data[end:pos]))  # (none after the last frame)


def test_tx_stream_across_reads_and_garbage():
    data = codec.encode_tx([frame(100), frame(200, 1)])
    stream = emulator.TxStream()
    assert [f for f, _, _ in stream.feed(data[:150])] == [frame(100)]
    assert [f for f, _, _ in stream.feed(data[150:])] == [frame(200, 1)]
    assert stream.feed(b"\0" * 16) == [] and stream.malformed == 1


def test_tx_framer_room_and_stale_padding():
    f = codec.TxFramer(256)
    buf = bytearray(b"\xaa" * 256)
    f.begin(buf)
    off, room = f.next_slot()
    assert (off, room) == (8, 248)
    buf[off : off + 13] = frame(13)
    f.commit(13)
    off, room = f.next_slot()
    assert off == 24 + 8 and room == 256 - 32  # 8 + 13 = 21, aligned to 24
    buf[off : off + 20] = frame(20, 1)
    f.commit(20)
    assert buf[21:24] == b"\0\0\0"  # padding written, not left over from the buffer
    n = f.finish()
    assert codec.decode_tx(bytes(buf[:n])) == [(frame(13), 13 | codec.TX_FS | codec.TX_LS, 0),
                                               (frame(20, 1), 20 | codec.TX_FS | codec.TX_LS, 0)]


def test_multicast_hash_matches_the_emulators_filter():
    groups = [bytes.fromhex("01005e000001"), bytes.fromhex("333300000001"), bytes.fromhex("01005e7f0203")]
    table = multicast_hash(groups)
    regs = emulator.Registers(bytes.fromhex("020018a10001"))
    regs.pla[emulator.PLA_MAR : emulator.PLA_MAR + 8] = table
    for g in groups:
        byte, bit = emulator.mar_bit(g)
        assert table[byte] >> bit & 1
    assert multicast_hash([]) == bytes(8)
    # The kernel's layout: hash n lands in byte 7 - n // 8.
    counts = collections.Counter(bin(b).count("1") for b in table)
    assert sum(k * v for k, v in counts.items()) <= len(groups)
