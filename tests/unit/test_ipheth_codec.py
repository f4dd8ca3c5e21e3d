"""The iPhone tethering framing (protocols/ipheth_codec.py): the legacy RX decoder and the padded TX buffer.

The decoder is checked against our builder, the bench emulator's own packer (tests/vm/guest/ipheth_device.py,
written separately, which the kernel's ipheth accepts), the transfers a phone sends besides frames, and
damaged input: every count and every emitted range checked, nothing read past `length`. The TX padding is
read back with the emulator's rule for finding a frame in the padded buffer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usbnetd.core.stats import Stats
from usbnetd.protocols import ipheth_codec as codec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vm" / "guest"))
import ipheth_device as emulator  # noqa: E402 - the bench's emulator, by path

HOST = bytes.fromhex("02aabbccddee")
PHONE = bytes.fromhex("02a1b2c3d4e5")


def frame(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i) & 0xFF for i in range(n))


def decode(data: bytes, max_frame: int = 1514, tail: bytes = b"") -> tuple[list[bytes], Stats, codec.RxDecoder]:
    stats = Stats()
    out: list[tuple[int, int]] = []
    buf = bytearray(data + tail)
    dec = codec.RxDecoder(stats, max_frame)
    n = dec.decode(memoryview(buf), len(data), lambda o, n: out.append((o, n)))
    assert n == len(out) <= 1
    for off, size in out:
        assert 0 <= off and off + size <= len(data), (off, size, len(data))
    return [bytes(buf[o : o + s]) for o, s in out], stats, dec


def errors(stats: Stats) -> dict[str, int]:
    return {k: v for k, v in stats.as_dict().items() if v}


@pytest.mark.parametrize("n", [14, 60, 509, 510, 1021, 1022, 1514])
def test_round_trip_and_the_emulators_packer(n):
    f = frame(n, n)
    assert decode(codec.build_rx(f))[0] == [f]
    got, stats, _ = decode(emulator.pack_legacy(f))
    # The emulator ends a transfer of a wMaxPacketSize multiple with one more zero byte.
    assert got == [f + b"\0" if (n + 2) % 512 == 0 else f] and not errors(stats)


def test_what_a_phone_sends_besides_frames_is_dropped_without_an_error():
    got, stats, dec = decode(emulator.START_FRAME)
    assert got == [] and not errors(stats) and dec.control == 1
    got, stats, dec = decode(b"")
    assert got == [] and not errors(stats) and dec.control == 0
    # Four bytes that do not start 00 01 are a (too short) frame, not the control frame.
    got, stats, dec = decode(b"\x00\x02\x01\x00")
    assert got == [] and errors(stats) == {"rx_errors": 1, "rx_length_errors": 1} and dec.control == 0


@pytest.mark.parametrize("data", [b"\0", b"\0\0", bytes(2 + 13), bytes(2 + 1515)])
def test_impossible_lengths_are_counted(data):
    got, stats, _ = decode(data)
    assert got == [] and errors(stats) == {"rx_errors": 1, "rx_length_errors": 1}


def test_nothing_past_length_is_read():
    f = frame(100)
    got, stats, _ = decode(codec.build_rx(f)[:50], tail=b"\xa5" * 200)
    assert got == [frame(48)] and not errors(stats)
    got, _, _ = decode(codec.build_rx(f), tail=b"\xa5" * 200)
    assert got == [f]


def test_a_length_beyond_the_buffer_is_cut_to_it():
    stats = Stats()
    out = []
    buf = codec.build_rx(frame(60))
    assert codec.RxDecoder(stats).decode(memoryview(buf), 10_000, lambda o, n: out.append((o, n))) == 1
    assert out == [(2, 60)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1600))
def test_any_transfer_gives_at_most_one_frame_in_bounds_or_one_count(data):
    got, stats, dec = decode(data, tail=b"\xa5" * 32)
    if got:
        assert got == [data[2:]] and not errors(stats)
    elif data and dec.control == 0:
        assert errors(stats) == {"rx_errors": 1, "rx_length_errors": 1}
    else:
        assert not errors(stats)


@pytest.mark.parametrize("n", [14, 60, 1000, 1513, 1514])
def test_tx_padding_is_zeros_up_to_the_fixed_buffer(n):
    buf = bytearray(b"\xee" * 2048)
    buf[:n] = frame(n)
    assert codec.pad_tx(memoryview(buf), n) == codec.TX_BUFFER == 1514
    assert buf[:n] == frame(n) and not any(buf[n:1514]) and buf[1514] == 0xEE


def test_the_phone_finds_an_ip_frame_in_the_padding():
    ipv4 = HOST + PHONE + b"\x08\x00" + bytes([0x45, 0, 0, 60]) + bytes(56)
    ipv6 = HOST + PHONE + b"\x86\xdd" + bytes([0x60, 0, 0, 0, 0, 8]) + bytes(34 + 8)
    arp = HOST + PHONE + b"\x08\x06" + bytes(28)
    for f in (ipv4, ipv6, arp):
        buf = bytearray(2048)
        buf[: len(f)] = f
        n = codec.pad_tx(buf, len(f))
        assert bytes(buf[: emulator.frame_length(buf[:n])]) == f
