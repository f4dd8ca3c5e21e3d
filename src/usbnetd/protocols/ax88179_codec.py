"""ASIX AX88179 / AX88178A bulk framing: the RX aggregate decoder and the TX frame header.

Layouts as Linux's ax88179_178a driver (drivers/net/usb/ax88179_178a.c) uses them with the chip: facts
only, the code is ours. ASIX's datasheet was not at hand; where the driver says nothing (several frames in
one TX transfer), we do what it does (one). Little endian.

RX, one bulk IN transfer of `length` bytes::

    [frame 1][pad to 8] ... [frame N][pad to 8]   <- frames start at offset 0
    [descriptor 1] ... [descriptor K]             <- at hdr_off, K 32-bit words
    [optional 4 bytes of padding]
    [trailer: u16 count K, u16 hdr_off]           <- the last 4 bytes of the transfer

Each descriptor: bits 16-28 the frame's length (including the 2-byte IP-alignment header the chip puts in
front of every frame when RX_CTL.IPE is set), bit 31 "drop", bit 29 "CRC error", bits 0-4 the chip's
checksum results (unused here). Current firmware follows every frame's descriptor with a dummy one of
length 0 (and the drop bit): a descriptor of length 0 is skipped, not counted. Frames are taken in order:
each starts where the previous one's 8-byte-padded length ended.

What is wrong is counted, never raised, and nothing at or past `length` is read:

* a transfer of 1-3 bytes, a count of 0, or descriptors that do not fit between hdr_off and the trailer:
  the whole transfer, `rx_frame_errors` (a zero-length transfer is the chip's "nothing to send" and is
  nothing);
* a descriptor with the drop or CRC-error bit and a non-zero length: that frame, `rx_frame_errors`;
* a frame that does not fit before hdr_off: `rx_length_errors`, and the rest of the transfer (the frames
  after it cannot be located);
* a frame shorter than an Ethernet header or longer than `max_frame`: that frame, `rx_length_errors`.

Each of those also counts once in `rx_errors`.

TX, one frame per bulk OUT transfer (as the kernel driver sends them)::

    [u32 frame length][u32 MSS in bits 0-14 | 0x80008000 when padded][frame][1 padding byte when padded]

A transfer whose header + frame is a multiple of wMaxPacketSize would need a zero-length packet to end;
instead the header's padding bits are set and one byte is appended, which the chip discards.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ..core.stats import Stats

ETH_HLEN = 14
RX_TRAILER = 4
RX_DESC = 4
IP_ALIGN = 2  # the 2-byte header in front of each received frame when RX_CTL.IPE is set
RXHDR_DROP = 1 << 31
RXHDR_CRC_ERR = 1 << 29
RXHDR_BAD = RXHDR_DROP | RXHDR_CRC_ERR
RXHDR_LEN_SHIFT = 16
RXHDR_LEN_MASK = 0x1FFF

TX_HEADER = 8
TX_PADDED = 0x80008000
TX_MSS_MASK = 0x7FFF

_U32 = struct.Struct("<I")
_TRAILER = struct.Struct("<HH")
_TX_HEADER = struct.Struct("<II")


class RxDecoder:
    """Split one bulk IN transfer into frames (module docstring for the rules)."""

    __slots__ = ("stats", "max_frame", "ip_align")

    def __init__(self, stats: Stats, max_frame: int = 1514, ip_align: bool = True) -> None:
        self.stats = stats
        self.max_frame = max_frame
        self.ip_align = ip_align

    def _frame_error(self) -> int:
        self.stats.rx_frame_errors += 1
        self.stats.rx_errors += 1
        return 0

    def decode(self, view: memoryview, length: int, emit: Callable[[int, int], object]) -> int:
        """Hand every good frame in view[:length] to emit(offset, length); return how many."""
        if length > len(view):
            length = len(view)  # the buffer bounds the transfer (as NtbDecoder; the transport never says more)
        if length <= 0:
            return 0
        if length < RX_TRAILER:
            return self._frame_error()
        count, hdr_off = _TRAILER.unpack_from(view, length - RX_TRAILER)
        if count == 0 or hdr_off + count * RX_DESC > length - RX_TRAILER:
            return self._frame_error()
        stats = self.stats
        skip = IP_ALIGN if self.ip_align else 0
        max_frame = self.max_frame
        unpack = _U32.unpack_from
        pos = 0
        frames = 0
        desc = hdr_off
        for _ in range(count):
            word = unpack(view, desc)[0]
            desc += RX_DESC
            n = (word >> RXHDR_LEN_SHIFT) & RXHDR_LEN_MASK
            if n == 0:
                continue  # the dummy descriptor after each frame's
            if pos + n > hdr_off:
                stats.rx_length_errors += 1
                stats.rx_errors += 1
                break
            start = pos
            pos += (n + 7) & ~7
            if word & RXHDR_BAD:
                stats.rx_frame_errors += 1
                stats.rx_errors += 1
                continue
            size = n - skip
            if size < ETH_HLEN or size > max_frame:
                stats.rx_length_errors += 1
                stats.rx_errors += 1
                continue
            emit(start + skip, size)
            frames += 1
        return frames


def build_rx(frames: list[bytes], ip_align: bool = True, dummies: bool = True, padding2: bool = True) -> bytes:
    """One bulk IN transfer holding `frames`, as the chip builds it (tests, fuzz seeds, the core tier)."""
    body = bytearray()
    descs: list[int] = []
    for f in frames:
        data = (bytes(IP_ALIGN) + f) if ip_align else f
        descs.append(len(data) << RXHDR_LEN_SHIFT)
        if dummies:
            descs.append(RXHDR_DROP)
        body += data
        body += bytes(-len(body) % 8)
    hdr_off = len(body)
    for d in descs:
        body += _U32.pack(d)
    if padding2:
        body += bytes(4)
    body += _TRAILER.pack(len(descs), hdr_off)
    return bytes(body)


def tx_header_words(frame_len: int, maxpacket: int, mss: int = 0) -> tuple[int, int, int]:
    """(word 1, word 2, bytes in the transfer) for one frame of `frame_len` bytes."""
    word2 = mss & TX_MSS_MASK
    total = TX_HEADER + frame_len
    if maxpacket and total % maxpacket == 0:
        word2 |= TX_PADDED
        total += 1
    return frame_len, word2, total


def encode_tx(buf: memoryview | bytearray, frame_len: int, maxpacket: int, mss: int = 0) -> int:
    """Write the header in front of the frame already at buf[8:8+frame_len] (and the padding byte when
    needed); return the transfer's length. `buf` must have room for TX_HEADER + frame_len + 1 bytes."""
    w1, w2, total = tx_header_words(frame_len, maxpacket, mss)
    _TX_HEADER.pack_into(buf, 0, w1, w2)
    if total != TX_HEADER + frame_len:
        buf[TX_HEADER + frame_len] = 0
    return total


def decode_tx(data: bytes) -> list[tuple[bytes, int]]:
    """The device's side, for tests: the frames (and their MSS) in one bulk OUT transfer, in order."""
    out = []
    pos = 0
    while pos + TX_HEADER <= len(data):
        w1, w2 = _TX_HEADER.unpack_from(data, pos)
        if w1 == 0 or pos + TX_HEADER + w1 > len(data):
            raise ValueError(f"bad TX header at {pos}: length {w1}")
        out.append((data[pos + TX_HEADER : pos + TX_HEADER + w1], w2 & TX_MSS_MASK))
        pos += TX_HEADER + w1
        if w2 & TX_PADDED:
            break
    return out
