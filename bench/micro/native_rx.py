"""Micro-benchmark of the NCM RX path per NTB: the Python reference (NtbDecoder + TapPort, GRO on) against the C
path (usbnetd.native NcmRx, GRO on), in one run, on the same NTBs.

Cases: a 16 KiB NTB16 of 11 TCP segments of one flow (1400 bytes of payload each: one super-frame per NTB), and
a 16 KiB NTB16 of 64-byte UDP frames (one write per frame). Each path writes to its own SOCK_SEQPACKET socket
pair standing in for the TAP, drained by this process after every NTB (outside the timed part: the same
messages for both). Timed per NTB: decode plus the end-of-batch flush (rx_begin/decode/rx_end, or
decode/flush), system calls included. The transfer is restored from a pristine copy before every NTB, outside
the timed part (GRO rewrites the first segment's headers in place). Prints the median and mean per NTB for
each path and the ratio. No root needed.

    .venv/bin/python bench/micro/native_rx.py [--rounds N]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable

from usbnetd import native
from usbnetd.core.stats import Stats
from usbnetd.netdev.port import TapPort
from usbnetd.protocols.ncm_codec import NtbDecoder, TxLayout, build_ntb

MACS = bytes.fromhex("020000000002020000000001")
SRC, DST = bytes([198, 18, 9, 1]), bytes([198, 18, 9, 2])


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_frame(seq: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 5001, 40000, seq, 7, 5 << 4, 0x10, 502, 0, 0)
    check = csum(SRC + DST + struct.pack("!BBH", 0, 6, 20 + len(payload)) + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", check) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0x4000, 64, 6, 0, SRC, DST)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return MACS + b"\x08\x00" + ip + tcp + payload


def udp_frame(size: int) -> bytes:
    n = size - 42
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + n, 0, 0x4000, 64, 17, 0, SRC, DST)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return MACS + b"\x08\x00" + ip + struct.pack("!HHHH", 1, 2, 8 + n, 0) + bytes(n)


def fill(layout: TxLayout, make: Callable[[int], bytes]) -> tuple[bytes, int]:
    """The largest NTB of `layout` holding frames make(0), make(1), ...; returns it and the frame count."""
    frames: list[bytes] = []
    best = b""
    while True:
        frames.append(make(len(frames)))
        try:
            best = build_ntb(layout, frames)
        except ValueError:
            return best, len(frames) - 1


class Tap:
    def __init__(self) -> None:
        self.w, self.r = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.w.setblocking(False)
        self.r.setblocking(False)
        try:
            self.w.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_SNDBUFFORCE", 32), 16 << 20)
        except OSError:
            self.w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
        self.scratch = bytearray(1 << 17)

    def drain(self) -> int:
        n = 0
        recv_into = self.r.recv_into
        while True:
            try:
                recv_into(self.scratch)
            except BlockingIOError:
                return n
            n += 1


def measure(ntb: bytes, rounds: int) -> tuple[list[float], list[float], int, int]:
    """Per-NTB times (µs) of the Python and the C path, interleaved round by round; and messages per NTB."""
    py_tap, c_tap = Tap(), Tap()
    stats = Stats()
    port = TapPort(py_tap.w.fileno(), stats, max_frame=1514, gro=True)
    dec = NtbDecoder(stats, max_datagram=1514)
    rx = native.NcmRx(c_tap.w.fileno(), 10, True, 1514)
    buf = bytearray(ntb)
    view = memoryview(buf)
    length = len(ntb)
    py_t: list[float] = []
    c_t: list[float] = []
    clock = time.perf_counter_ns
    py_msgs = c_msgs = 0
    for i in range(rounds + 50):  # the first 50 warm up
        buf[:] = ntb
        t0 = clock()
        port.rx_begin(view)
        dec.decode(view, length, port.emit)
        port.rx_end()
        t1 = clock()
        py_msgs = py_tap.drain()
        buf[:] = ntb
        t2 = clock()
        rx.decode(buf, length)
        rx.flush()
        t3 = clock()
        c_msgs = c_tap.drain()
        if i >= 50:
            py_t.append((t1 - t0) / 1000)
            c_t.append((t3 - t2) / 1000)
    c = rx.counters()
    assert stats.rx_dropped == 0 and c["rx_dropped"] == 0, "the socket pair refused writes: numbers are void"
    assert stats.rx_packets == c["rx_packets"] and stats.rx_bytes == c["rx_bytes"]
    return py_t, c_t, py_msgs, c_msgs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3000)
    args = ap.parse_args()
    if not native.AVAILABLE:
        print(f"native_rx: the C extension is not available: {native.WHY_NOT}", file=sys.stderr)
        return 1
    layout = TxLayout(False, 16384, 4, 0, 4, 400, 512)
    tcp, n_tcp = fill(layout, lambda i: tcp_frame(1000 + 1400 * i, bytes([i + 1]) * 1400))
    udp, n_udp = fill(layout, lambda i: udp_frame(64))
    assert n_tcp == 11, n_tcp
    print(f"native_rx: {args.rounds} rounds per case, interleaved; per NTB: median (mean) in µs; "
          f"C extension {native.fastpath.__file__ if native.fastpath else '-'}")
    for name, ntb, frames in ((f"16 KiB NTB, {n_tcp} TCP segments (GRO: one super-frame)", tcp, n_tcp),
                              (f"16 KiB NTB, {n_udp} UDP frames of 64 bytes", udp, n_udp)):
        py_t, c_t, py_msgs, c_msgs = measure(ntb, args.rounds)
        assert py_msgs == c_msgs
        pm, cm = statistics.median(py_t), statistics.median(c_t)
        print(f"{name}: {len(ntb)} bytes, {frames} frames, {py_msgs} TAP writes per NTB")
        print(f"  python  {pm:8.1f} µs ({statistics.fmean(py_t):8.1f})  {1000 * pm / frames:7.0f} ns/frame")
        print(f"  native  {cm:8.1f} µs ({statistics.fmean(c_t):8.1f})  {1000 * cm / frames:7.0f} ns/frame")
        print(f"  ratio   {pm / cm:8.1f} x (python / native, medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
