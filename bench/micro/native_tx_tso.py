"""Micro-benchmark of TX offloads (TSO) in the C NCM framer: the same TCP byte stream read from the TAP as
1514-byte frames (offloads off: one readv per frame, the kernel has already segmented and checksummed) and as
64 KiB super-frames (offloads on: one readv per 45 frames, cut and checksummed by NcmTx), framed into the
daemon's NTB layout on sim:ncm (NTB16, 32 KiB + 1 out, the simulated device's divisor and datagram limit).

What is timed, per round and per way, interleaved in one process: DataPath._tap_readable_native's loop
(wake-ups of at most 64 reads, every full NTB finished, the last partial one at the end) over ROUND_BYTES of
TCP payload that were written into the socket pair standing in for the TAP before the clock started. So it is
usbnetd's side only: the reads, the framing, and with TSO the cutting and checksums. The kernel's side (its
software GSO and checksums without offloads, a 64 KiB copy into the TAP with them) is not in these figures.
Reported: wire frames framed per second of wall time, µs per round, and CPU seconds (user + system,
getrusage) per Gbit of Ethernet frames framed. The NTBs of both ways are decoded and must carry the same
payload bytes. No root needed.

    .venv/bin/python bench/micro/native_tx_tso.py [--rounds N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import socket
import statistics
import struct
import sys
import time

from usbnetd import native
from usbnetd.core.stats import Stats
from usbnetd.protocols.ncm_codec import NtbDecoder, TxLayout
from usbnetd.usb.sim import SIM_NTB

MAX_FRAME = 1514
MSS = 1448
HDRS = 14 + 20 + 32  # Ethernet, IPv4, TCP with timestamps (Linux's default): MSS 1448 fills 1514
SUPER = 45  # segments per super-frame: 45 * 1448 = 65,160 payload bytes, 65,226 bytes of frame
SUPERFRAMES = 8  # per round
ROUND_BYTES = SUPER * SUPERFRAMES * MSS
BUDGET = 64
VNET = 10


def tcp_headers(payload_len: int, seq: int) -> bytes:
    eth = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 32 + payload_len, 1, 0x4000, 64, 6, 0, b"\xc6\x12\x07\x01",
                     b"\xc6\x12\x07\x02")
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, 8 << 4, 0x10, 500, 0, 0) + b"\x01\x01\x08\x0a" + bytes(8)
    return eth + ip + tcp


def messages(tso: bool) -> list[bytes]:
    body = bytes(i * 7 & 0xFF for i in range(ROUND_BYTES))
    out = []
    if tso:
        for k in range(SUPERFRAMES):
            data = body[k * SUPER * MSS : (k + 1) * SUPER * MSS]
            hdr = struct.pack("=BBHHHH", 1, 1, HDRS, MSS, 34, 16)
            out.append(hdr + tcp_headers(len(data), k * SUPER * MSS) + data)
    else:
        for i in range(SUPER * SUPERFRAMES):
            out.append(bytes(VNET) + tcp_headers(MSS, i * MSS) + body[i * MSS : (i + 1) * MSS])
    return out


class Tap:
    def __init__(self) -> None:
        self.w, self.r = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.w.setblocking(False)
        self.r.setblocking(False)
        for s in (self.w, self.r):
            try:
                s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_SNDBUFFORCE", 32), 32 << 20)
                s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 32 << 20)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 20)


def frame_all(tx, bufs: list[bytearray], out: list) -> int:
    """The data path's loop until the TAP is drained; full NTBs are kept in `out` as (buffer, length)."""
    frames = 0
    i = 0
    drained = False
    while not drained:
        budget = BUDGET
        tx.begin(bufs[i % len(bufs)])
        while budget or tx.pending:
            r, c, _, dropped, empty, full, err = tx.fill(budget)
            assert not dropped and not err
            budget -= r
            frames += c
            if full:
                out.append((i % len(bufs), tx.finish()))
                i += 1
                tx.begin(bufs[i % len(bufs)])
                continue
            if empty:
                drained = True
            break
        if tx.count:
            out.append((i % len(bufs), tx.finish()))
            i += 1
        else:
            tx.abandon()
    return frames


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def payload_of(bufs: list[bytearray], ntbs: list) -> bytes:
    dec = NtbDecoder(Stats(), max_datagram=MAX_FRAME)
    got = []
    for i, length in ntbs:
        b = bufs[i]
        spans: list = []
        dec.decode(memoryview(b), length, lambda o, n: spans.append((o, n)))  # noqa: B023
        got += [bytes(b[o + HDRS : o + n]) for o, n in spans]
    return b"".join(got)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=400)
    args = ap.parse_args()
    if not native.AVAILABLE:
        print(f"native_tx_tso: the C extension is not available: {native.WHY_NOT}", file=sys.stderr)
        return 1
    layout = TxLayout.from_parameters(SIM_NTB, False, 512, 32768)
    ways = {"no TSO (1514-byte frames)": False, "TSO (64 KiB super-frames)": True}
    taps = {w: Tap() for w in ways}
    txs = {w: native.NcmTx(taps[w].r.fileno(), VNET, MAX_FRAME, *dataclasses.astuple(layout), offload=tso)
           for w, tso in ways.items()}
    msgs = {w: messages(tso) for w, tso in ways.items()}
    bufs = [bytearray(layout.max_size) for _ in range(64)]
    wall: dict[str, list[float]] = {w: [] for w in ways}
    cpus: dict[str, list[float]] = {w: [] for w in ways}
    frames = {w: 0 for w in ways}
    wire = 0
    for rnd in range(args.rounds + 20):  # the first 20 warm up
        for w in ways:
            for m in msgs[w]:
                taps[w].w.send(m)
            out: list = []
            c0, t0 = cpu(), time.perf_counter()
            n = frame_all(txs[w], bufs, out)
            t1, c1 = time.perf_counter(), cpu()
            assert n == SUPER * SUPERFRAMES, (w, n)
            if rnd == 0:
                got = payload_of(bufs, out)
                assert got == b"".join(m[VNET + HDRS :] for m in messages(False)), f"{w}: payload differs"
            if rnd >= 20:
                wall[w].append(t1 - t0)
                cpus[w].append(c1 - c0)
                frames[w] += n
    wire = SUPER * SUPERFRAMES * (HDRS + MSS)
    print(f"native_tx_tso: {args.rounds} rounds of {ROUND_BYTES} payload bytes ({SUPER * SUPERFRAMES} frames of "
          f"{HDRS + MSS} bytes), interleaved; layout {layout.max_size} B NTB16; C extension "
          f"{native.fasttx.__file__ if native.fasttx else '-'}; load average {os.getloadavg()[0]:.2f}")
    res = {}
    for w in ways:
        med = statistics.median(wall[w])
        gbit = wire * 8 * len(wall[w]) / 1e9
        cpu_per_gbit = sum(cpus[w]) / gbit
        res[w] = med
        print(f"  {w:28s} {SUPER * SUPERFRAMES / med / 1e6:6.2f} M frames/s  {med * 1e6:8.1f} µs per round "
              f"(median)  {cpu_per_gbit:6.3f} CPU s/Gbit  {wire * 8 / med / 1e9:6.1f} Gbit/s")
    a, b = res.values()
    print(f"  ratio                        {a / b:6.2f} x (no TSO / TSO, medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
