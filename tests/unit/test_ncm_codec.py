"""NCM NTB16/NTB32 codec: parameters, layout sanitising, builder, decoder, malformed input, allocation."""

from __future__ import annotations

import random
import struct
import tracemalloc

import pytest
from codec_helpers import Collector, errors, frame
from hypothesis import given, settings
from hypothesis import strategies as st

from usbnetd.core.stats import COUNTERS, Stats
from usbnetd.protocols.ncm_codec import (
    MAX_NDPS,
    NtbBuilder,
    NtbDecoder,
    NtbParameters,
    TxLayout,
    build_ntb,
)

# --- helpers ------------------------------------------------------------------------------------------


def decode(ntb: bytes | bytearray, length: int | None = None, stats: Stats | None = None, **kw: int):
    stats = stats if stats is not None else Stats()
    length = len(ntb) if length is None else length
    c = Collector(ntb, length)
    n = NtbDecoder(stats, **kw).decode(memoryview(ntb), length, c)
    assert n == len(c.spans)
    return c, stats






# --- hand-built fixtures (from the NCM 1.0 layouts) -------------------------------------------------------

F_A, F_B, F_C = frame(20, 1), frame(30, 2), frame(16, 3)


def ntb16_two_ndps() -> bytes:
    """NTH16 | A@12 (20) | B@32 (30) | pad | NDP16#1@64 {A, B} -> @100 | C@84 (16) | NDP16#2@100 {C}."""
    b = bytearray(116)
    b[0:12] = b"NCMH" + bytes.fromhex("0c00 0700 7400 4000")  # hlen 12, seq 7, block 116, ndp 64
    b[12:32] = F_A
    b[32:62] = F_B
    b[64:84] = b"NCM0" + bytes.fromhex("1400 6400") + bytes.fromhex("0c00 1400 2000 1e00 0000 0000")
    b[84:100] = F_C
    b[100:116] = b"NCM0" + bytes.fromhex("1000 0000") + bytes.fromhex("5400 1000 0000 0000")
    return bytes(b)


def ntb32_two_ndps() -> bytes:
    """NTH32 | NDP32#1@16 {A, B} -> @120 | A@64 | B@84 | NDP32#2@120 {C} | C@152 ; block 168."""
    b = bytearray(168)
    b[0:16] = b"ncmh" + bytes.fromhex("1000 0100 a8000000 10000000")  # hlen 16, seq 1, block 168, ndp 16
    b[16:48] = (
        b"ncm0"
        + bytes.fromhex("2800 0000 78000000 00000000")  # wLength 40, next 120
        + bytes.fromhex("40000000 14000000  54000000 1e000000  00000000 00000000")
    )
    b[64:84] = F_A
    b[84:114] = F_B
    b[120:152] = (
        b"ncm0"
        + bytes.fromhex("2000 0000 00000000 00000000")  # wLength 32, last
        + bytes.fromhex("98000000 10000000  00000000 00000000")
    )
    b[152:168] = F_C
    return bytes(b)


def test_hand_built_ntb16() -> None:
    c, stats = decode(ntb16_two_ndps())
    assert c.frames() == [F_A, F_B, F_C]
    assert c.spans == [(12, 20), (32, 30), (84, 16)]
    assert errors(stats) == (0, 0, 0)


def test_hand_built_ntb32() -> None:
    c, stats = decode(ntb32_two_ndps())
    assert c.frames() == [F_A, F_B, F_C]
    assert errors(stats) == (0, 0, 0)


def test_decode_in_larger_buffer_uses_length() -> None:
    ntb = ntb16_two_ndps()
    buf = bytearray(4096)
    buf[: len(ntb)] = ntb
    c, stats = decode(buf, len(ntb))
    assert c.frames() == [F_A, F_B, F_C]


def test_block_length_zero_means_transfer_length() -> None:
    ntb = bytearray(ntb16_two_ndps())
    ntb[8:10] = b"\0\0"
    c, stats = decode(ntb)
    assert len(c.spans) == 3 and errors(stats) == (0, 0, 0)
    # ... but then the transfer length bounds everything
    c, stats = decode(ntb, 110)
    assert errors(stats) == (1, 1, 0)  # NDP#2 at 100 runs past 110
    assert len(c.spans) == 2


def test_crc_ndp_strips_crc() -> None:
    ntb = bytearray(ntb16_two_ndps())
    ntb[64:68] = b"NCM1"  # A and B now "carry" a CRC in their last 4 bytes
    c, stats = decode(ntb)
    assert c.spans == [(12, 16), (32, 26), (84, 16)]
    assert errors(stats) == (0, 0, 0)


# --- NTB parameters ---------------------------------------------------------------------------------------

PARAMS_REPLY = bytes.fromhex(
    "1c00"  # wLength 28
    "0300"  # NTB16 | NTB32
    "00400000"  # dwNtbInMaxSize 16384
    "0400"  # wNdpInDivisor 4
    "0000"  # wNdpInPayloadRemainder
    "0400"  # wNdpInAlignment 4
    "0000"  # reserved
    "00400000"  # dwNtbOutMaxSize 16384
    "0400"  # wNdpOutDivisor 4
    "0200"  # wNdpOutPayloadRemainder 2
    "0800"  # wNdpOutAlignment 8
    "1000"  # wNtbOutMaxDatagrams 16
)


def test_parameters_parse_and_pack() -> None:
    assert len(PARAMS_REPLY) == 28
    p = NtbParameters.parse(PARAMS_REPLY)
    assert p == NtbParameters(28, 3, 16384, 4, 0, 4, 0, 16384, 4, 2, 8, 16)
    assert p.supports_ntb16 and p.supports_ntb32
    assert p.pack() == PARAMS_REPLY
    assert NtbParameters.parse(memoryview(PARAMS_REPLY + b"xx")) == p


def test_parameters_short() -> None:
    with pytest.raises(ValueError):
        NtbParameters.parse(PARAMS_REPLY[:27])


def _params(**kw: int) -> NtbParameters:
    base = dict(
        length=28,
        formats_supported=3,
        ntb_in_max_size=32768,
        ndp_in_divisor=4,
        ndp_in_payload_remainder=0,
        ndp_in_alignment=4,
        reserved=0,
        ntb_out_max_size=16384,
        ndp_out_divisor=4,
        ndp_out_payload_remainder=0,
        ndp_out_alignment=4,
        ntb_out_max_datagrams=0,
    )
    base.update(kw)
    return NtbParameters(**base)


def test_layout_from_parameters_defaults() -> None:
    lay = TxLayout.from_parameters(NtbParameters.parse(PARAMS_REPLY), False, 512)
    assert lay == TxLayout(False, 16384, 4, 2, 8, 16, 512)


@pytest.mark.parametrize(
    ("kw", "expect"),
    [
        (dict(ndp_out_divisor=0), (4, 0)),
        (dict(ndp_out_divisor=6, ndp_out_payload_remainder=6), (4, 2)),  # not a power of two
        (dict(ndp_out_divisor=1), (4, 0)),
        (dict(ndp_out_divisor=2, ndp_out_payload_remainder=1), (4, 1)),
        (dict(ndp_out_divisor=16, ndp_out_payload_remainder=18), (16, 2)),  # remainder modulo divisor
        (dict(ndp_out_divisor=8192), (8192, 0)),
        (dict(ndp_out_divisor=16384), (4, 0)),  # not smaller than the NTB
    ],
)
def test_layout_divisor(kw: dict[str, int], expect: tuple[int, int]) -> None:
    lay = TxLayout.from_parameters(_params(**kw), False, 512, 65535)
    assert (lay.divisor, lay.remainder) == expect


ALIGNMENTS = [(0, 4), (1, 4), (2, 4), (3, 4), (6, 4), (4, 4), (8, 8), (64, 64)]


@pytest.mark.parametrize(("align", "expect"), ALIGNMENTS)
def test_layout_alignment(align: int, expect: int) -> None:
    assert TxLayout.from_parameters(_params(ndp_out_alignment=align), True, 512).alignment == expect


def test_layout_sizes() -> None:
    # capped below the device maximum onto a packet multiple: bumped by one so a full NTB ends short
    assert TxLayout.from_parameters(_params(ntb_out_max_size=32768), False, 512, 16384).max_size == 16385
    # the device's own maximum is never exceeded
    assert TxLayout.from_parameters(_params(ntb_out_max_size=16384), False, 512).max_size == 16384
    assert TxLayout.from_parameters(_params(ntb_out_max_size=16384), False, 512, 16384).max_size == 16384
    # NTB16 is limited to 0xFFFF, NTB32 is not
    assert TxLayout.from_parameters(_params(ntb_out_max_size=131072), False, 1024).max_size == 0xFFFF
    assert TxLayout.from_parameters(_params(ntb_out_max_size=131072), True, 1024).max_size == 131072
    # max datagrams: 0 -> 40, else the device's
    assert TxLayout.from_parameters(_params(), False, 512).max_datagrams == 40
    assert TxLayout.from_parameters(_params(ntb_out_max_datagrams=3), False, 512).max_datagrams == 3
    with pytest.raises(ValueError):
        TxLayout.from_parameters(_params(ntb_out_max_size=20), False, 512)


def test_layout_device_side_uses_in_fields() -> None:
    p = _params(ntb_in_max_size=8192, ndp_in_divisor=8, ndp_in_payload_remainder=2, ndp_in_alignment=16)
    lay = TxLayout.from_parameters(p, False, 512, device_side=True)
    assert (lay.max_size, lay.divisor, lay.remainder) == (8192, 8, 2)
    assert (lay.alignment, lay.max_datagrams) == (16, 40)


@pytest.mark.parametrize(
    "kw",
    [
        dict(divisor=3),
        dict(divisor=4, remainder=4),
        dict(alignment=2),
        dict(alignment=12),
        dict(max_datagrams=0),
        dict(maxpacket=0),
        dict(max_size=0x10000),
        dict(max_size=30),
    ],
)
def test_layout_rejects_nonsense(kw: dict[str, int]) -> None:
    args: dict = dict(ntb32=False, max_size=2048)
    args.update(kw)
    with pytest.raises(ValueError):
        TxLayout(**args)


# --- builder --------------------------------------------------------------------------------------------

LAYOUTS = [
    TxLayout(False, 16384, 4, 0, 4, 40, 512),
    TxLayout(True, 16384, 4, 0, 4, 40, 512),
    TxLayout(False, 8192, 4, 2, 8, 10, 512),
    TxLayout(True, 8192, 8, 6, 16, 10, 64),
    TxLayout(False, 4096, 32, 14, 32, 3, 64),
    TxLayout(True, 32768, 512, 0, 512, 40, 1024),
    TxLayout(False, 65535, 4, 0, 4, 40, 1024),
    TxLayout(True, 2048, 16, 2, 4, 40, 512),
    TxLayout(False, 200, 4, 0, 4, 40, 64),
]


def _nth(ntb: bytes | bytearray | memoryview) -> tuple[bool, int, int, int]:
    """(ntb32, sequence, block length, first NDP index)"""
    if bytes(ntb[:4]) == b"ncmh":
        _, _, seq, block, ndp = struct.unpack_from("<IHHII", ntb, 0)
        return True, seq, block, ndp
    _, _, seq, block, ndp = struct.unpack_from("<IHHHH", ntb, 0)
    return False, seq, block, ndp


def fill(layout: TxLayout, frames: list[bytes], slack: int = 64) -> tuple[bytearray, int, int]:
    """Build one NTB from as many of `frames` as fit; returns (buffer, bytes to send, frames taken)."""
    buf = bytearray(b"\xee" * (layout.max_size + slack))  # sentinel after max_size
    b = NtbBuilder(layout)
    b.begin(memoryview(buf)[: layout.max_size])
    taken = 0
    for f in frames:
        off, room = b.next_slot()
        assert room >= 0
        if room < len(f):
            break
        assert off % layout.divisor == layout.remainder
        buf[off : off + len(f)] = f
        b.commit(len(f))
        taken += 1
    assert b.count == taken
    n = b.finish()
    assert buf[layout.max_size :] == b"\xee" * slack  # never wrote past max_size
    return buf, n, taken


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: f"{'32' if lay.ntb32 else '16'}-{lay.max_size}")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_round_trip(layout: TxLayout, seed: int) -> None:
    rng = random.Random(seed)
    frames = [frame(rng.randint(14, 1514), i) for i in range(120)]
    stats = Stats()
    dec = NtbDecoder(stats)
    pos = 0
    ntbs = 0
    while pos < len(frames):
        buf, n, taken = fill(layout, frames[pos:])
        if taken == 0:  # this frame can never fit this (tiny) layout
            assert len(frames[pos]) > layout.max_size - 40
            pos += 1
            continue
        assert taken <= layout.max_datagrams
        assert 0 < n <= layout.max_size
        assert n % layout.maxpacket != 0 or n == layout.max_size
        ntb32, seq, block, ndp = _nth(buf)
        assert ntb32 == layout.ntb32 and block == n
        assert ndp % layout.alignment == 0
        c = Collector(buf, n)
        assert dec.decode(memoryview(buf), n, c) == taken
        assert c.frames() == frames[pos : pos + taken]
        for off, _ in c.spans:
            assert off % layout.divisor == layout.remainder
        pos += taken
        ntbs += 1
    assert errors(stats) == (0, 0, 0)
    assert ntbs >= 1


def test_max_datagrams_limit() -> None:
    lay = TxLayout(False, 16384, 4, 0, 4, 3, 512)
    buf, n, taken = fill(lay, [frame(60, i) for i in range(10)])
    assert taken == 3
    b = NtbBuilder(lay)
    b.begin(memoryview(bytearray(16384)))
    for _ in range(3):
        assert b.add(frame(60, 0))
    assert b.next_slot()[1] == 0
    assert not b.add(frame(60, 0))


def test_full_by_size_and_room_is_exact() -> None:
    for lay in LAYOUTS:
        b = NtbBuilder(lay)
        buf = bytearray(lay.max_size + 16)
        b.begin(memoryview(buf)[: lay.max_size])
        # fill with the biggest datagram the room allows until full: the NDP must still fit exactly
        while True:
            off, room = b.next_slot()
            if room == 0:
                break
            n = min(room, 1514)
            b.commit(n)
        assert b.count >= 1
        total = b.finish()
        assert total <= lay.max_size
        c, stats = decode(buf[:total], max_datagram=65536)
        assert len(c.spans) == b.count and errors(stats) == (0, 0, 0)


def test_room_leaves_space_for_ndp() -> None:
    lay = TxLayout(False, 256, 4, 0, 4, 40, 512)
    b = NtbBuilder(lay)
    b.begin(memoryview(bytearray(256)))
    off, room = b.next_slot()
    assert off == 12
    # NDP16 with 1 entry + terminator = 16 bytes, 4-aligned: datagram may end at 240
    assert room == 240 - 12
    b.commit(room)
    assert b.next_slot()[1] == 0
    assert b.finish() == 256


def test_commit_errors() -> None:
    lay = TxLayout(False, 2048)
    b = NtbBuilder(lay)
    with pytest.raises(ValueError):
        b.commit(14)  # no slot
    b.begin(memoryview(bytearray(2048)))
    _, room = b.next_slot()
    with pytest.raises(ValueError):
        b.commit(room + 1)
    with pytest.raises(ValueError):
        b.commit(0)
    b.commit(14)
    with pytest.raises(ValueError):
        b.commit(14)  # slot already used


def test_empty_ntb_and_sequence() -> None:
    lay = TxLayout(True, 2048)
    b = NtbBuilder(lay, sequence=0xFFFE)
    buf = bytearray(2048)
    b.begin(memoryview(buf))
    assert b.finish() == 0  # nothing to send
    assert b.finish() == 0
    seqs = []
    for _ in range(3):
        b.begin(memoryview(buf))
        assert b.add(frame(60, 1))
        b.finish()
        seqs.append(_nth(buf)[1])
    assert seqs == [0xFFFE, 0xFFFF, 0]
    assert b.sequence == 1


def test_gaps_are_zeroed() -> None:
    lay = TxLayout(False, 4096, 64, 0, 64, 40, 512)
    buf = bytearray(b"\xaa" * 4096)
    b = NtbBuilder(lay)
    b.begin(memoryview(buf))
    assert b.add(b"\x11" * 15) and b.add(b"\x22" * 15)
    n = b.finish()
    assert bytes(buf[12:64]) == bytes(52)
    assert bytes(buf[64 + 15 : 128]) == bytes(128 - 79)
    assert bytes(buf[128 + 15 : 192]) == bytes(192 - 143)  # before the NDP
    assert b"\xaa" not in buf[:n]


def test_zlp_rule_one_zero_byte() -> None:
    """An NTB ending exactly on a packet boundary below max_size gets one zero byte."""
    lay = TxLayout(False, 4096, 4, 0, 4, 40, 64)
    padded = 0
    for size in range(14, 200):
        buf, n, taken = fill(lay, [frame(size, 0)])
        unpadded = (12 + size + 3) // 4 * 4 + 16
        assert n in (unpadded, unpadded + 1)
        if unpadded % 64 == 0:
            assert n == unpadded + 1 and buf[n - 1] == 0
            padded += 1
        assert n % 64 != 0
        assert _nth(buf)[2] == n
        c, stats = decode(buf[:n])
        assert c.frames() == [frame(size, 0)]
    assert padded > 0


def test_pad_to_max() -> None:
    lay = TxLayout(False, 8193, 4, 0, 4, 40, 512, pad_to_max=True)
    buf, n, taken = fill(lay, [frame(1514, i) for i in range(2)])
    assert taken == 2 and n == 12 + 2 * 1516 + 20  # short NTB: no padding (NDP16 with 2 entries: 20)
    buf, n, taken = fill(lay, [frame(1514, i) for i in range(6)])
    assert taken == 5 and n == 8193  # long NTB (> max - 3 packets): padded to max_size
    assert _nth(buf)[2] == 8193
    c, stats = decode(buf[:n])
    assert len(c.spans) == 5 and errors(stats) == (0, 0, 0)


def test_build_ntb() -> None:
    lay = TxLayout(True, 4096)
    frames = [frame(100, 1), frame(14, 2), frame(1514, 3)]
    ntb = build_ntb(lay, frames)
    assert decode(ntb)[0].frames() == frames
    assert build_ntb(lay, []) == b""
    with pytest.raises(ValueError):
        build_ntb(lay, [frame(1514, i) for i in range(4)])


# --- malformed input ------------------------------------------------------------------------------------


def _set16(b: bytes, off: int, v: int) -> bytes:
    m = bytearray(b)
    struct.pack_into("<H", m, off, v)
    return bytes(m)


def _set32(b: bytes, off: int, v: int) -> bytes:
    m = bytearray(b)
    struct.pack_into("<I", m, off, v)
    return bytes(m)


NTB16 = ntb16_two_ndps()
NTB32 = ntb32_two_ndps()


@pytest.mark.parametrize(
    ("ntb", "length", "emitted", "errs"),
    [
        # whole-NTB errors: one frame error, nothing emitted
        (b"", 0, 0, (1, 1, 0)),
        (NTB16[:11], 11, 0, (1, 1, 0)),
        (b"NCMX" + NTB16[4:], None, 0, (1, 1, 0)),
        (_set16(NTB16, 4, 16), None, 0, (1, 1, 0)),  # NTH16 header length
        (_set16(NTB32, 4, 12), None, 0, (1, 1, 0)),  # NTH32 header length
        (NTB32[:14], 14, 0, (1, 1, 0)),  # NTH32 truncated
        (NTB16, 115, 0, (1, 1, 0)),  # block length 116 > transfer 115
        (_set16(NTB16, 8, 8), None, 0, (1, 1, 0)),  # block shorter than NTH
        (_set32(NTB32, 8, 1000), None, 0, (1, 1, 0)),
        # NDP chain errors
        (_set16(NTB16, 10, 200), None, 0, (1, 1, 0)),  # NDP index past the end
        (_set16(NTB16, 10, 4), None, 0, (1, 1, 0)),  # NDP index inside the NTH
        (_set16(NTB16, 10, 66), None, 0, (1, 1, 0)),  # misaligned
        (_set16(NTB16, 10, 104), None, 0, (1, 1, 0)),  # NDP would run past the end (104 + 16 > 116)
        (b"NCMH" + NTB16[4:64] + b"ncm0" + NTB16[68:], None, 0, (1, 1, 0)),  # NDP32 sig in NTB16
        (_set16(NTB16, 68, 12), None, 0, (1, 1, 0)),  # NDP wLength < 16
        (_set16(NTB16, 104, 20), None, 2, (1, 1, 0)),  # second NDP wLength past the end
        (_set16(NTB32, 20, 24), None, 0, (1, 1, 0)),  # NDP32 wLength < 32
        (_set16(NTB16, 70, 64), None, 2, (1, 1, 0)),  # NDP points to itself: once only
        (_set16(NTB16, 106, 64), None, 3, (1, 1, 0)),  # second NDP points back to the first
        (_set32(NTB32, 128, 16), None, 3, (1, 1, 0)),  # NTB32 loop
        (_set16(NTB16, 70, 102), None, 2, (1, 1, 0)),  # next NDP misaligned
        # per-datagram errors: skipped, the rest still comes
        (_set16(NTB16, 78, 13), None, 2, (1, 0, 1)),  # B is 13 bytes: too short
        (_set16(NTB16, 78, 2000), None, 2, (1, 0, 1)),  # B runs past the block
        (_set16(NTB16, 76, 116), None, 2, (1, 1, 0)),  # B starts at the block end
        (_set16(NTB16, 76, 4), None, 2, (1, 1, 0)),  # B starts inside the NTH
        (_set32(NTB32, 36, 0xFFFFFFF0), None, 2, (1, 0, 1)),  # huge NTB32 length
        (_set16(NTB16, 78, 0), None, 2, (0, 0, 0)),  # zero length ends the first NDP (like (0, 0))
        (_set16(NTB16, 68, 24), None, 3, (0, 0, 0)),  # NDP without its terminator inside wLength
    ],
)
def test_malformed(ntb: bytes, length: int | None, emitted: int, errs: tuple[int, int, int]) -> None:
    c, stats = decode(ntb, length)
    assert len(c.spans) == emitted
    assert errors(stats) == errs


def test_oversize_datagram() -> None:
    c, stats = decode(NTB16, max_datagram=25)
    assert c.spans == [(12, 20), (84, 16)]
    assert errors(stats) == (1, 0, 1)


def test_too_many_ndps() -> None:
    # MAX_NDPS + 5 NDPs each holding one datagram, chained forward
    n_ndp = MAX_NDPS + 5
    size = 12 + n_ndp * (16 + 16)
    b = bytearray(size)
    struct.pack_into("<IHHHH", b, 0, 0x484D434E, 12, 0, size, 12)
    p = 12
    for i in range(n_ndp):
        nxt = p + 32 if i < n_ndp - 1 else 0
        struct.pack_into("<IHHHHHH", b, p, 0x304D434E, 16, nxt, p + 16, 16, 0, 0)
        b[p + 16 : p + 32] = frame(16, i)
        p += 32
    c, stats = decode(b)
    assert len(c.spans) == MAX_NDPS
    assert errors(stats) == (1, 1, 0)


def test_length_beyond_buffer_is_clamped() -> None:
    c, stats = decode(NTB16[:100], 5000)
    assert all(o + n <= 100 for o, n in c.spans)


# --- property tests ---------------------------------------------------------------------------------------


def _check_decode(blob: bytes, length: int) -> None:
    stats = Stats()
    stats.rx_errors = 5  # counters only ever go up from wherever they are
    before = stats.as_dict()
    c = Collector(blob, min(length, len(blob)))
    n = NtbDecoder(stats, max_datagram=2048).decode(memoryview(blob), length, c)
    assert n == len(c.spans)
    after = stats.as_dict()
    assert all(after[k] >= before[k] for k in COUNTERS)
    for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_errors", "notifications"):
        assert after[k] == before[k]
    # each error counts once in rx_errors and once in exactly one finer cause
    d = {k: after[k] - before[k] for k in COUNTERS}
    assert d["rx_errors"] == d["rx_frame_errors"] + d["rx_length_errors"]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(-8, 400))
def test_decode_arbitrary_bytes(blob: bytes, length: int) -> None:
    _check_decode(blob, length)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"NCMH", b"ncmh"]), st.binary(min_size=8, max_size=300))
def test_decode_arbitrary_with_signature(sig: bytes, rest: bytes) -> None:
    blob = sig + rest
    _check_decode(blob, len(blob))


_SEEDS = [
    NTB16,
    NTB32,
    build_ntb(TxLayout(False, 2048, 4, 2, 8, 40, 64), [frame(n, n) for n in (14, 60, 100, 300)]),
    build_ntb(TxLayout(True, 2048, 8, 0, 16, 40, 64), [frame(n, n) for n in (14, 61, 99, 300)]),
]


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(_SEEDS),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    st.integers(0, 400),
)
def test_decode_mutated_valid_ntbs(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    m = bytearray(seed)
    for pos, val in flips:
        if m:
            m[pos % len(m)] = val
    blob = bytes(m[: min(cut, len(m))]) if cut < len(m) else bytes(m)
    _check_decode(blob, len(blob))


@settings(max_examples=100, deadline=None)
@given(
    st.booleans(),
    st.sampled_from([(4, 0), (4, 2), (8, 6), (16, 14), (64, 0)]),
    st.sampled_from([4, 8, 32]),
    st.integers(1, 12),
    st.lists(st.integers(14, 1514), min_size=1, max_size=30),
)
def test_build_decode_property(
    ntb32: bool, divrem: tuple[int, int], align: int, max_dg: int, sizes: list[int]
) -> None:
    lay = TxLayout(ntb32, 6000, divrem[0], divrem[1], align, max_dg, 512)
    frames = [frame(n, i) for i, n in enumerate(sizes)]
    buf, n, taken = fill(lay, frames)
    assert 1 <= taken <= max_dg
    c, stats = decode(buf[:n])
    assert c.frames() == frames[:taken]
    assert errors(stats) == (0, 0, 0)


# --- allocation -----------------------------------------------------------------------------------------


def _traced_growth(fn, rounds: int = 10_000) -> int:
    for _ in range(200):  # warm-up: caches, free lists
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


@pytest.mark.parametrize("ntb", [NTB16, NTB32], ids=["ntb16", "ntb32"])
def test_decode_does_not_allocate(ntb: bytes) -> None:
    buf = bytearray(ntb)
    view = memoryview(buf)
    dec = NtbDecoder(Stats())
    length = len(ntb)

    def emit(off: int, n: int) -> None:
        pass

    assert _traced_growth(lambda: dec.decode(view, length, emit)) < 10_000


@pytest.mark.parametrize("ntb32", [False, True])
def test_build_does_not_allocate(ntb32: bool) -> None:
    lay = TxLayout(ntb32, 16384, 8, 2, 8, 40, 512)
    b = NtbBuilder(lay)
    view = memoryview(bytearray(16384))

    def build() -> None:
        b.begin(view)
        for _ in range(8):
            off, room = b.next_slot()
            b.commit(1514 if room >= 1514 else room)
        b.finish()

    assert _traced_growth(build) < 10_000
