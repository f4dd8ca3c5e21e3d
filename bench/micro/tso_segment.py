"""Micro-benchmark behind docs/performance.md's TSO decision: Python segmentation against one read per frame.

TSO from the TAP would hand usbnetd 64 KB TCP/IPv4 super-frames to cut into MSS-sized frames itself: copy the
headers, patch IP length, IP id, IP checksum, TCP sequence and TCP checksum per segment. This times that
(checksums by ``int.from_bytes`` modulo 0xFFFF) against what it would save, one ``readv`` per frame (from a
datagram socketpair standing in for the TAP). Prints one line; no root needed.
"""

import os
import socket
import struct
import time

MSS = 1448
HDR = 14 + 20 + 32
N_SEG = 45
frame = bytearray(HDR + MSS * N_SEG)
frame[12:14] = b"\x08\x00"
frame[14] = 0x45
frame[23] = 6
frame[14 + 20 + 12] = 0x80  # tcp doff 8
for i in range(HDR, len(frame)):
    frame[i] = i & 0xFF
src = memoryview(frame)
out = bytearray(16384 * 8)
ov = memoryview(out)
pack_into, unpack_from = struct.pack_into, struct.unpack_from
from_bytes = int.from_bytes


def csum_fold(s):
    s = s % 0xFFFF
    return (~s) & 0xFFFF if s else 0xFFFF


def segment():
    payload = len(frame) - HDR
    seq = unpack_from(">I", src, 38)[0]
    ip_id = unpack_from(">H", src, 18)[0]
    pseudo = from_bytes(src[26:34], "big") + 6
    off = 0
    k = 0
    for i in range(0, payload, MSS):
        seg = MSS if payload - i > MSS else payload - i
        end = off + HDR + seg
        ov[off:off + HDR] = src[:HDR]
        ov[off + HDR:end] = src[HDR + i:HDR + i + seg]
        pack_into(">HH", out, off + 16, 20 + 32 + seg, (ip_id + k) & 0xFFFF)
        pack_into(">H", out, off + 24, 0)
        pack_into(">H", out, off + 24, csum_fold(from_bytes(ov[off + 14:off + 34], "big")))
        pack_into(">I", out, off + 38, (seq + i) & 0xFFFFFFFF)
        pack_into(">H", out, off + 50, 0)
        tcp = ov[off + 34:end]
        s = from_bytes(tcp, "big") if not (len(tcp) & 1) else from_bytes(bytes(tcp) + b"\0", "big")
        pack_into(">H", out, off + 50, csum_fold(s + pseudo + 32 + seg))
        off = end + 2  # NCM alignment stand-in
        if off + HDR + MSS > len(out):
            off = 0
        k += 1


a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
b.setblocking(False)
msg = bytes(1514)
buf = bytearray(2048)
bv = memoryview(buf)
fd = b.fileno()
readv = os.readv


def per_frame_read_only() -> float:
    # the sender's cost is the kernel's in the real path: time only the reads
    for _ in range(N_SEG):
        a.send(msg)
    t = time.perf_counter()
    for _ in range(N_SEG):
        readv(fd, (bv,))
    return time.perf_counter() - t


R = 300
t = time.perf_counter()
for _ in range(R):
    segment()
seg_us = (time.perf_counter() - t) / R / N_SEG * 1e6
rd = sum(per_frame_read_only() for _ in range(R)) / R / N_SEG * 1e6
print(f"TSO segmentation in Python: {seg_us:.2f} us per segment; one readv per frame: {rd:.2f} us per frame")
