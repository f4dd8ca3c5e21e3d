"""The C RNDIS RX path (usbnetd.native NcmRx.decode_rndis) against the Python reference, input by input.

The reference is what the data path runs without the C path: per transfer `TapPort.rx_begin`, then
`RndisDriver.rx_decode(view, length, port)` (PACKET_MSGs walked by `RndisDecoder`, a message split across
full transfers carried over and delivered from the carry buffer), and `TapPort.rx_end` per batch, GRO on and
off. Each side writes to its own socket pair standing in for the TAP; asserted equal for every batch: the
messages (vnet header included), every Stats counter, what decode returned, the GRO counters, and the carry
left over. Inputs: transfers built with `rndis_codec.build_transfer` (frames of every size, TCP runs that
merge), streams cut into full transfers at every offset (so messages, and even their 8-byte headers, are
split), every malformation the decoder counts, padding, truncation, and seeded random mutations.
"""

from __future__ import annotations

import random
import struct

import pytest
from test_native_ncm_rx import Tap, guarded, run, tcp_frame, udp_frame

from usbnetd import native
from usbnetd.core.stats import Stats
from usbnetd.netdev import gro as pygro
from usbnetd.netdev.port import TapPort
from usbnetd.protocols import rndis_codec as rc
from usbnetd.protocols.rndis import RndisDriver

RX_SIZE = 2048  # small "full transfer" size, so the carry is reached often (the driver's is 16 KiB)


@pytest.fixture(autouse=True)
def _needs_native() -> None:
    if not native.AVAILABLE:
        pytest.skip(f"the C fast path is not available: {native.WHY_NOT}")


def reference_driver(stats: Stats, rx_size: int) -> RndisDriver:
    """An RndisDriver with only what rx_decode uses (no transport: bring-up is not what is compared)."""
    d = RndisDriver.__new__(RndisDriver)
    d.stats = stats
    d.rx_size = rx_size
    d._decoder = rc.RndisDecoder(stats, max_frame=rc.DEFAULT_MAX_FRAME)
    d._carry = bytearray(rc.PACKET_HEADER_LEN + rc.DEFAULT_MAX_FRAME + 64)
    d._carry_view = memoryview(d._carry)
    d._carry_len = 0
    d._carry_sink = None
    return d


class Pair:
    def __init__(self, gro: bool, rx_size: int = RX_SIZE, exact: bool = False) -> None:
        self.rtap, self.ntap = Tap(), Tap()
        self.rstats, self.nstats = Stats(), Stats()
        self.port = TapPort(self.rtap.w.fileno(), self.rstats, max_frame=1514, gro=gro)
        self.drv = reference_driver(self.rstats, rx_size)
        vnet = pygro.VNET_HDR_LEN if gro else 0
        self.rx = native.NcmRx(self.ntap.w.fileno(), vnet, gro, rc.DEFAULT_MAX_FRAME, rx_size=rx_size)
        self.exact = exact

    def batch(self, transfers: list[bytes]) -> None:
        r_got, n_got = [], []
        for data in transfers:
            view = memoryview(bytearray(data))
            self.port.rx_begin(view)
            r_got.append(self.drv.rx_decode(view, len(data), self.port))
        self.port.rx_end()
        for data in transfers:
            buf = guarded(data) if self.exact else bytearray(data)
            n_got.append(self.rx.decode_rndis(buf, len(data)))
        self.rx.flush()
        self.rx.add_to(self.nstats)
        r, n = self.rtap.drain(), self.ntap.drain()
        assert n == r, f"TAP messages differ: {len(n)} native, {len(r)} reference"
        assert n_got == r_got
        assert self.nstats.as_dict() == self.rstats.as_dict()
        g = self.port.gro_stats
        assert (self.rx.superframes, self.rx.merged, self.rx.unverified) == (
            g["superframes"], g["segments"], g["unverified"])
        assert self.rx.carry_len == self.drv._carry_len

    def close(self) -> None:
        self.rtap.close()
        self.ntap.close()


def differential(batches: list[list[bytes]], rx_size: int = RX_SIZE) -> None:
    for gro in (True, False):
        for exact in (False, True):
            p = Pair(gro, rx_size, exact)
            try:
                for b in batches:
                    p.batch(b)
            finally:
                p.close()


def stream(frames: list[bytes]) -> bytes:
    return b"".join(rc.build_transfer([f]) for f in frames)


def cut(data: bytes, size: int, first: int = 0) -> list[bytes]:
    """`data` as bulk IN transfers of `size` (a device streaming with no padding): full ones, then the rest."""
    out = [data[:first]] if first else []
    pos = first
    while pos < len(data):
        out.append(data[pos : pos + size])
        pos += size
    return [t for t in out if t]


FRAMES = [udp_frame(n, n) for n in (18, 46, 100, 500, 1000, 1472)] + run(6, 1400) + [tcp_frame(9, b"x" * 700)]


def test_whole_transfers_one_per_batch_and_all_in_one_batch() -> None:
    transfers = [rc.build_transfer(FRAMES[i : i + 3]) for i in range(0, len(FRAMES), 3)]
    differential([[t] for t in transfers])
    differential([transfers])


@pytest.mark.parametrize("first", [0, 1, 7, 8, 9, 43, 44, 45, 100, 1000])
def test_a_stream_cut_into_full_transfers_at_every_kind_of_offset(first: int) -> None:
    """Messages split across transfers (the QEMU usb-net case), headers split too."""
    transfers = cut(stream(FRAMES * 2), RX_SIZE, first)
    full = [t for t in transfers if len(t) == RX_SIZE]
    assert full, "the test must reach the carry"
    differential([[t] for t in transfers])
    differential([transfers[i : i + 3] for i in range(0, len(transfers), 3)])


def _message(frame: bytes, *, msg_type: int = rc.PACKET_MSG, msg_len: int | None = None,
             data_off: int = 36, data_len: int | None = None) -> bytes:
    data_len = len(frame) if data_len is None else data_len
    length = 44 + len(frame) if msg_len is None else msg_len
    head = struct.pack("<IIII", msg_type, length, data_off, data_len) + bytes(28)
    return (head + frame).ljust(max(length, 44 + len(frame)), b"\0")


MALFORMED = {
    "control message": _message(FRAMES[0], msg_type=3),
    "length below the header": _message(FRAMES[0], msg_len=40),
    "length 0": _message(FRAMES[0], msg_len=0),
    "length past the transfer": _message(FRAMES[0], msg_len=5000),
    "data offset below 36": _message(FRAMES[0], data_off=20),
    "data past the message": _message(FRAMES[0], data_len=5000),
    "data offset huge": _message(FRAMES[0], data_off=0xFFFFFFF0),
    "frame too short": _message(FRAMES[0][:10]),
    "frame too long": _message(bytes(1600)),
    "truncated header": b"\x01\0\0\0\x50",
    "zero padding": bytes(20),
    "nonzero padding": bytes(19) + b"\x01",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_messages_are_counted_alike(name: str) -> None:
    good = rc.build_transfer(FRAMES[:2])
    bad = MALFORMED[name]
    differential([[bad], [good + bad], [bad + good], [good + bad + good]])
    # and as the tail of a full transfer, where the carry decides first
    t = (good + bad + good)[:RX_SIZE].ljust(RX_SIZE, b"\0")
    differential([[t], [t, good]])


def test_a_carried_header_announcing_an_impossible_length() -> None:
    head = struct.pack("<II", rc.PACKET_MSG, 0xFFFF)  # fits no carry
    full = rc.build_transfer(FRAMES[:1])
    pad = RX_SIZE - len(full) - 4
    t1 = full + _message(b"", msg_len=pad + 4)[: pad] + head[:4]
    assert len(t1) == RX_SIZE
    differential([[t1, head[4:] + rc.build_transfer(FRAMES[1:2])]])


@pytest.mark.parametrize("seed", range(6))
def test_random_mutations(seed: int) -> None:
    rnd = random.Random(seed)
    base = stream(FRAMES)
    for _ in range(40):
        data = bytearray(base)
        for _ in range(rnd.randint(1, 6)):
            i = rnd.randrange(len(data))
            data[i] = rnd.randrange(256) if rnd.random() < 0.7 else 0
        size = rnd.choice([RX_SIZE, 512, 64])
        transfers = cut(bytes(data), size, rnd.randrange(0, 200))
        differential([transfers[i : i + 2] for i in range(0, len(transfers), 2)], rx_size=size)


def test_the_driver_asks_for_the_rndis_walk_with_its_transfer_size() -> None:
    d = reference_driver(Stats(), 16384)
    assert RndisDriver.native_rx(d) == ("rndis", rc.DEFAULT_MAX_FRAME, 16384)


@pytest.mark.parametrize("length", [-1, -2, -8, -100000, -(1 << 62), -(1 << 80)])
@pytest.mark.parametrize("carried", [3, 8, 60])
def test_a_negative_length_with_a_message_carried_over_is_an_empty_transfer(length: int, carried: int) -> None:
    """Regression: decode_rndis(buf, negative) while a split message was carried over took min(need - have,
    length) as a memcpy size, a copy of about 2**64 bytes (segfault). A negative length is now an empty
    transfer, as the decoders read it: nothing decoded, nothing counted, the carry kept for the next transfer,
    on both sides. `carried`: the carried bytes (inside the 8-byte header, or past it)."""
    t = stream([udp_frame(300, 1), udp_frame(400, 2)])
    first = len(rc.build_transfer([udp_frame(300, 1)])) + carried
    for gro in (True, False):
        p = Pair(gro, rx_size=first)
        try:
            rest = t[first:]
            p.batch([t[:first]])
            assert p.rx.carry_len == p.drv._carry_len == carried
            # the negative length on both sides, then the rest completes the carried message
            view = memoryview(bytearray(rest))
            p.port.rx_begin(view)
            assert p.drv.rx_decode(view, length, p.port) == 0
            p.port.rx_end()
            assert p.rx.decode_rndis(guarded(rest), length) == 0
            assert p.rx.carry_len == p.drv._carry_len == carried
            p.batch([rest])
            assert p.rx.carry_len == 0
            assert p.nstats.rx_packets == 2 and p.nstats.rx_errors == 0
        finally:
            p.close()


@pytest.mark.parametrize("method", ["decode", "decode_frame", "decode_ax88179", "decode_rndis"])
def test_a_negative_length_counts_as_an_empty_transfer(method: str) -> None:
    """Every C walker takes a negative length as 0, as the Python decoders do."""
    counts = []
    for length in (0, -1, -(1 << 70)):
        tap = Tap()
        try:
            rx = native.NcmRx(tap.w.fileno(), 0, False, 1514, rx_size=64)
            assert getattr(rx, method)(bytearray(64), length) == 0
            s = Stats()
            rx.add_to(s)
            counts.append(s.as_dict())
            assert tap.drain() == []
        finally:
            tap.close()
    assert counts[1] == counts[0] and counts[2] == counts[0]
