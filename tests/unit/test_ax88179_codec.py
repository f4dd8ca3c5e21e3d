"""The AX88179 framing (protocols/ax88179_codec.py): RX aggregates and TX headers, and the multicast hash.

The decoder is checked three ways: round trips through our builder, the bench emulator's own packer
(tests/vm/guest/ax88179_device.py, written separately, which the kernel's ax88179_178a accepts), and
damaged input — every count and every emitted range checked, nothing read past `length`.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usbnetd.core.stats import Stats
from usbnetd.protocols import ax88179_codec as codec
from usbnetd.protocols.ax88179 import multicast_hash


def _load_emulator():
    """The bench's emulator module (it imports its neighbour ffs_device.py as a script would)."""
    path = Path(__file__).resolve().parents[1] / "vm" / "guest" / "ax88179_device.py"
    spec = importlib.util.spec_from_file_location("ax88179_device", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ax88179_device", module)
    spec.loader.exec_module(module)
    return module


emulator = _load_emulator()


def frame(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i) & 0xFF for i in range(n))


def decode(data: bytes, max_frame: int = 1514, ip_align: bool = True, tail: bytes = b"") -> tuple[list, Stats]:
    stats = Stats()
    out: list[tuple[int, int]] = []
    buf = bytearray(data + tail)
    n = codec.RxDecoder(stats, max_frame, ip_align).decode(memoryview(buf), len(data), lambda o, n: out.append((o, n)))
    assert n == len(out)
    for off, size in out:
        assert 0 <= off and off + size <= len(data), (off, size, len(data))
    return [bytes(buf[o : o + s]) for o, s in out], stats


def errors(stats: Stats) -> dict[str, int]:
    return {k: v for k, v in stats.as_dict().items() if v}


@pytest.mark.parametrize("dummies", [True, False])
@pytest.mark.parametrize("padding2", [True, False])
def test_round_trip(dummies: bool, padding2: bool) -> None:
    frames = [frame(60), frame(1514, 3), frame(61, 7), frame(100, 9)]
    got, stats = decode(codec.build_rx(frames, dummies=dummies, padding2=padding2))
    assert got == frames and errors(stats) == {}


def test_without_ip_alignment_header() -> None:
    frames = [frame(64), frame(65)]
    got, stats = decode(codec.build_rx(frames, ip_align=False), ip_align=False)
    assert got == frames and errors(stats) == {}


@pytest.mark.parametrize("maxpacket", [64, 512])
def test_the_emulators_aggregates_decode(maxpacket: int) -> None:
    """Written apart from the codec, and accepted by the kernel's driver in the VM bench."""
    for count in range(1, 12):
        frames = [frame(60 + 37 * i, i) for i in range(count)]
        got, stats = decode(emulator.pack_rx(frames, True, maxpacket))
        assert got == frames and errors(stats) == {}


@given(st.lists(st.binary(min_size=14, max_size=1514), min_size=1, max_size=12), st.booleans(), st.booleans())
@settings(max_examples=200, deadline=None)
def test_round_trip_any_frames(frames: list[bytes], dummies: bool, padding2: bool) -> None:
    got, stats = decode(codec.build_rx(frames, dummies=dummies, padding2=padding2))
    assert got == frames and errors(stats) == {}


def test_zero_length_transfer_is_nothing() -> None:
    got, stats = decode(b"")
    assert got == [] and errors(stats) == {}


@pytest.mark.parametrize("n", [1, 2, 3])
def test_too_short_for_a_trailer(n: int) -> None:
    got, stats = decode(b"\x01" * n)
    assert got == [] and errors(stats) == {"rx_errors": 1, "rx_frame_errors": 1}


def test_count_zero_is_a_frame_error() -> None:
    got, stats = decode(bytes(64) + struct.pack("<HH", 0, 64))
    assert got == [] and errors(stats) == {"rx_errors": 1, "rx_frame_errors": 1}


@pytest.mark.parametrize("count, hdr_off", [(1, 0xFFFF), (2, 60), (0xFFFF, 0), (3, 56)])
def test_descriptors_outside_the_transfer(count: int, hdr_off: int) -> None:
    data = bytes(64) + struct.pack("<HH", count, hdr_off)  # 68 bytes: descriptors must end by 64
    got, stats = decode(data)
    assert got == [] and errors(stats) == {"rx_errors": 1, "rx_frame_errors": 1}


def test_a_frame_longer_than_the_frame_area_stops_the_walk() -> None:
    good = frame(60)
    data = bytearray(codec.build_rx([good, frame(60, 1)], dummies=False))
    hdr_off = struct.unpack_from("<H", data, len(data) - 2)[0]
    struct.pack_into("<I", data, hdr_off + 4, 500 << 16)  # the second frame claims 500 bytes
    got, stats = decode(bytes(data))
    assert got == [good] and errors(stats) == {"rx_errors": 1, "rx_length_errors": 1}


@pytest.mark.parametrize("bit", [codec.RXHDR_DROP, codec.RXHDR_CRC_ERR])
def test_flagged_frames_are_dropped_and_the_next_one_found(bit: int) -> None:
    a, b = frame(70), frame(80, 5)
    data = bytearray(codec.build_rx([a, b], dummies=False))
    hdr_off = struct.unpack_from("<H", data, len(data) - 2)[0]
    word = struct.unpack_from("<I", data, hdr_off)[0]
    struct.pack_into("<I", data, hdr_off, word | bit)
    got, stats = decode(bytes(data))
    assert got == [b] and errors(stats) == {"rx_errors": 1, "rx_frame_errors": 1}


def test_runt_and_oversized_frames() -> None:
    ok = frame(60)
    got, stats = decode(codec.build_rx([frame(13), ok, frame(1515)]))
    assert got == [ok] and errors(stats) == {"rx_errors": 2, "rx_length_errors": 2}
    got, stats = decode(codec.build_rx([frame(1515)]), max_frame=4102)
    assert len(got) == 1 and errors(stats) == {}


def test_alignment_header_shorter_than_two_bytes() -> None:
    data = bytearray(codec.build_rx([frame(60)], dummies=False))
    hdr_off = struct.unpack_from("<H", data, len(data) - 2)[0]
    struct.pack_into("<I", data, hdr_off, 1 << 16)
    got, stats = decode(bytes(data))
    assert got == [] and errors(stats) == {"rx_errors": 1, "rx_length_errors": 1}


def test_every_truncation_and_a_poisoned_tail() -> None:
    """Any prefix of a real aggregate: no exception, every frame inside the prefix, every failure counted,
    and the same result when the bytes past `length` are garbage (nothing past `length` is read)."""
    data = emulator.pack_rx([frame(60 + 9 * i, i) for i in range(6)], True, 512)
    for n in range(len(data) + 1):
        got, stats = decode(data[:n])
        got2, stats2 = decode(data[:n], tail=b"\xa5" * 64)
        assert got == got2 and stats.as_dict() == stats2.as_dict()
        if n and not got:
            assert stats.rx_errors >= 1


@given(st.binary(min_size=0, max_size=2048))
@settings(max_examples=500, deadline=None)
def test_garbage_never_raises(data: bytes) -> None:
    got, stats = decode(data)
    got2, stats2 = decode(data, tail=b"\xff" * 16)
    assert got == got2 and stats.as_dict() == stats2.as_dict()
    assert stats.rx_errors == stats.rx_frame_errors + stats.rx_length_errors


@pytest.mark.parametrize("n, padded", [(60, False), (504, True), (1016, True), (1514, False), (503, False)])
def test_tx_header_and_padding(n: int, padded: bool) -> None:
    buf = bytearray(codec.TX_HEADER + n + 1)
    buf[codec.TX_HEADER : codec.TX_HEADER + n] = frame(n)
    total = codec.encode_tx(buf, n, 512)
    w1, w2 = struct.unpack_from("<II", buf)
    assert w1 == n and bool(w2 & codec.TX_PADDED) == padded and w2 & codec.TX_MSS_MASK == 0
    assert total == 8 + n + (1 if padded else 0) and total % 512 != 0
    assert codec.decode_tx(bytes(buf[:total])) == [(frame(n), 0)]
    assert emulator.parse_tx(bytes(buf[:total])) == ([(frame(n), 0)], 0)


def test_tx_mss_field() -> None:
    assert codec.tx_header_words(9000, 512, mss=1448) == (9000, 1448, 9008)


def test_multicast_hash_is_the_top_bits_of_the_ethernet_crc() -> None:
    def reference(mac: bytes) -> int:  # zlib's reflected CRC-32, un-inverted and bit-reversed: MSB-first
        crc = ~zlib.crc32(mac) & 0xFFFFFFFF
        return int(f"{crc:032b}"[::-1], 2) >> 26

    macs = [bytes.fromhex(m) for m in ("01005e000001", "333300000001", "01005e7ffffa", "3333ff123456")]
    table = multicast_hash(macs)
    expected = bytearray(8)
    for m in macs:
        bit = reference(m)
        expected[bit >> 3] |= 1 << (bit & 7)
        assert emulator.mc_hash_bit(m) == bit
    assert table == bytes(expected) and table != bytes(8)
