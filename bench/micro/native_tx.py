"""Micro-benchmark of the NCM TX path per NTB: the Python reference (DataPath.on_tap_readable's loop over
NcmDriver.tx_slot / TapPort.read_into / tx_commit on an NtbBuilder) against the C path (usbnetd.native NcmTx:
fill per wake-up), in one run, filling the same NTBs from the same frames.

Cases: a 16 KiB NTB16 filled with 11 frames of 1448 bytes (full after the 11th: the room left is below
max_frame 1514), and a 16 KiB NTB16 filled with 64-byte frames (as many as fit before the room drops below
1514; max_datagrams 400 so the size, not the datagram limit, ends it). The TAP is a SOCK_SEQPACKET socket pair
with the 10-byte virtio-net header in front of every frame (GRO on, as the daemon runs by default); before
every NTB, outside the timed part, exactly one NTB's worth of frames is written into each path's pair. Timed
per NTB: begin, the wake-ups of at most TAP_READ_BUDGET (64) reads each with the data path's per-transfer
counting, and finish; system calls included. The two NTBs are compared byte for byte after every round. Prints
the median and mean per NTB for each path and the ratio. No root needed.

    .venv/bin/python bench/micro/native_tx.py [--rounds N]
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import statistics
import sys
import time
from array import array

from usbnetd import native
from usbnetd.core.stats import Stats
from usbnetd.netdev.port import TapPort
from usbnetd.protocols.ncm_codec import NtbBuilder, TxLayout

MAX_FRAME = 1514
BUDGET = 64  # core.datapath.TAP_READ_BUDGET
VNET = 10


class Tap:
    def __init__(self) -> None:
        self.w, self.r = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.w.setblocking(False)
        self.r.setblocking(False)
        try:
            self.w.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_SNDBUFFORCE", 32), 16 << 20)
        except OSError:
            self.w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)

    def send(self, msgs: list[bytes]) -> None:
        send = self.w.send
        for m in msgs:
            send(m)


class Driver:
    """NcmDriver's TX methods, as they are (protocols/ncm.py), around one NtbBuilder."""

    def __init__(self, layout: TxLayout) -> None:
        self._builder = NtbBuilder(layout)
        self.max_frame = MAX_FRAME

    def tx_begin(self, view: memoryview) -> None:
        self._builder.begin(view)

    def tx_slot(self) -> tuple[int, int]:
        offset, room = self._builder.next_slot()
        return offset, room

    def tx_commit(self, length: int) -> bool:
        self._builder.commit(length)
        _, room = self._builder.next_slot()
        return room < self.max_frame

    @property
    def tx_count(self) -> int:
        return self._builder.count

    def tx_finish(self) -> tuple[int, bool]:
        return self._builder.finish(), False


def python_ntb(d: Driver, port: TapPort, view: memoryview, frames: array, nbytes: array) -> int:
    """on_tap_readable's loop (one packet, index 0) until the NTB is finished as full; returns its length."""
    d.tx_begin(view)
    frames[0] = 0
    nbytes[0] = 0
    read_into = port.read_into
    max_frame = d.max_frame
    while True:  # one wake-up per pass
        budget = BUDGET
        while budget:
            offset, room = d.tx_slot()
            if room < max_frame:
                return d.tx_finish()[0]
            n = read_into(view[offset : offset + room])
            if n < 0:
                raise RuntimeError("the TAP ran dry before the NTB was full")
            budget -= 1
            if n == 0:
                continue
            frames[0] += 1
            nbytes[0] += n
            if d.tx_commit(n):
                return d.tx_finish()[0]


def native_ntb(tx, stats: Stats, buf: bytearray, frames: array, nbytes: array) -> int:
    """What the data path would do with NcmTx: fill per wake-up, count, finish when full."""
    tx.begin(buf)
    frames[0] = 0
    nbytes[0] = 0
    while True:
        budget = BUDGET
        while budget:
            r, c, b, dropped, drained, full, err = tx.fill(budget)
            budget -= r
            frames[0] += c
            nbytes[0] += b
            if dropped:
                stats.tx_dropped += dropped
            if full:
                return tx.finish()
            if drained:
                raise RuntimeError("the TAP ran dry before the NTB was full")


def one_ntb_of(layout: TxLayout, size: int) -> int:
    """How many frames of `size` bytes fill one NTB of `layout` (until the room drops below MAX_FRAME)."""
    b = NtbBuilder(layout)
    b.begin(memoryview(bytearray(layout.max_size)))
    n = 0
    while b.next_slot()[1] >= MAX_FRAME:
        b.commit(size)
        n += 1
    return n


def measure(layout: TxLayout, size: int, rounds: int) -> tuple[list[float], list[float], int, int]:
    n = one_ntb_of(layout, size)
    msgs = [bytes(VNET) + bytes.fromhex("020000000002020000000001") + b"\x08\x00" + bytes([i & 0xFF]) * (size - 14)
            for i in range(n)]
    py_tap, c_tap = Tap(), Tap()
    py_stats, c_stats = Stats(), Stats()
    port = TapPort(py_tap.r.fileno(), py_stats, MAX_FRAME, gro=True)
    d = Driver(layout)
    tx = native.NcmTx(c_tap.r.fileno(), VNET, MAX_FRAME, *dataclasses.astuple(layout))
    py_buf, c_buf = bytearray(layout.max_size), bytearray(layout.max_size)
    py_view = memoryview(py_buf)
    frames, nbytes = array("I", [0]), array("Q", [0])
    clock = time.perf_counter_ns
    py_t: list[float] = []
    c_t: list[float] = []
    length = 0
    for i in range(rounds + 50):  # the first 50 warm up
        py_tap.send(msgs)
        c_tap.send(msgs)
        t0 = clock()
        length = python_ntb(d, port, py_view, frames, nbytes)
        t1 = clock()
        assert frames[0] == n
        t2 = clock()
        c_len = native_ntb(tx, c_stats, c_buf, frames, nbytes)
        t3 = clock()
        assert frames[0] == n and c_len == length and c_buf[:length] == py_buf[:length], "the NTBs differ"
        if i >= 50:
            py_t.append((t1 - t0) / 1000)
            c_t.append((t3 - t2) / 1000)
    assert py_stats.tx_dropped == c_stats.tx_dropped == 0
    return py_t, c_t, n, length


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3000)
    args = ap.parse_args()
    if not native.AVAILABLE:
        print(f"native_tx: the C extension is not available: {native.WHY_NOT}", file=sys.stderr)
        return 1
    layout = TxLayout(False, 16384, 4, 0, 4, 400, 512)
    print(f"native_tx: {args.rounds} rounds per case, interleaved; per NTB: median (mean) in µs; "
          f"C extension {native.fasttx.__file__ if native.fasttx else '-'}")
    for size in (1448, 64):
        py_t, c_t, frames, length = measure(layout, size, args.rounds)
        pm, cm = statistics.median(py_t), statistics.median(c_t)
        print(f"16 KiB NTB16, {frames} frames of {size} bytes: {length} bytes, {-(-frames // BUDGET)} wake-up(s)")
        print(f"  python  {pm:8.1f} µs ({statistics.fmean(py_t):8.1f})  {1000 * pm / frames:7.0f} ns/frame")
        print(f"  native  {cm:8.1f} µs ({statistics.fmean(c_t):8.1f})  {1000 * cm / frames:7.0f} ns/frame")
        print(f"  ratio   {pm / cm:8.1f} x (python / native, medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
