"""Realtek RTL8152 / RTL8153 bulk framing: the RX aggregate decoder and the TX descriptor framer.

Layouts as Linux's r8152 driver (drivers/net/usb/r8152.c, `struct rx_desc` / `struct tx_desc`) uses them
with the chip: facts only, the code is ours (Realtek's datasheet was not at hand). Little endian.

RX, one bulk IN transfer of `length` bytes, frames back to back from offset 0::

    [rx_desc 24 bytes][frame + 4-byte FCS][pad to 8] [rx_desc][frame + FCS][pad to 8] ...

rx_desc word 0 (opts1) bits 0-14: the frame's length including the FCS, bit 15: CRC error (Realtek's own
out-of-tree driver names it RD_CRC; the kernel's masks it off); word 1 (opts2): the chip's
checksum results (bits 19-23) and, when RX VLAN stripping is on, a stripped tag (bit 16 + the TCI
byte-swapped); word 2 (opts3): checksum failures; words 3-5 unused here. usbnetd turns stripping off at
bring-up, so tags stay in the frame, and does not use the checksum results (the TAP has no way to pass
"verified" on). The next descriptor starts at the 8-byte boundary after the FCS.

The walk ends, without an error, where fewer than 24 bytes are left or at a descriptor of length 0 (what
follows the last frame is padding: the bench's emulator ends a transfer that would be a multiple of
wMaxPacketSize with 8 zero bytes, so the transfer ends short). What is wrong is counted, never raised, and
nothing at or past `length` is read:

* a length shorter than an Ethernet header plus the FCS (18), or whose frame is longer than `max_frame`:
  `rx_length_errors`, and the rest of the transfer (the next descriptor cannot be located);
* a frame that runs past the end of the transfer: `rx_length_errors`, the rest of the transfer;
* a frame whose descriptor has the CRC-error bit: that frame, `rx_frame_errors` (its length still locates
  the next descriptor).

Each of those also counts once in `rx_errors`.

TX, one or more frames per bulk OUT transfer (the kernel driver fills a 16 KiB buffer the same way)::

    [tx_desc 8 bytes][frame] [pad to 4] [tx_desc][frame] ...

tx_desc word 0 (opts1): the frame length in bits 0-17, first segment (bit 31) and last segment (bit 30),
large send for IPv4/IPv6 (bits 28/27) with the TCP header offset in bits 18-24; word 1 (opts2): UDP, TCP,
IPv4, IPv6 checksum requests (bits 31-28), the MSS or the transport offset (bits 17-27), a VLAN tag to
insert (bit 16 + TCI). A plain frame has opts1 = length | first | last, opts2 = 0; with the TX offloads on
(`offload_opts`, as r8152_tx_csum writes them) a TCP super-frame gets GTSENDV4/V6 with its TCP header offset
and the MSS (at most 0x7ff), and a frame whose checksum is left partial gets IPV4_CS/IPV6_CS, TCP_CS/UDP_CS
and its transport offset (TCPHO). For an IPv6 super-frame the IPv6 payload length is set to 0 and the TCP
check field to the pseudo-header sum without a length (tcp_v6_gso_csum_prep, Microsoft's "large send"
rule the chip follows). A transfer that is a multiple of wMaxPacketSize is ended with a ZLP (the chip finds
frames by their descriptors; a ZLP only ends the transfer for a device that reads up to a short packet).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ..core.stats import Stats

ETH_HLEN = 14
FCS_LEN = 4
RX_DESC_LEN = 24
RX_ALIGN = 8
RX_LEN_MASK = 0x7FFF
RX_CRC_ERR = 1 << 15
RX_VLAN_TAG = 1 << 16

TX_DESC_LEN = 8
TX_ALIGN = 4
TX_FS = 1 << 31
TX_LS = 1 << 30
TX_LEN_MASK = 0x3FFFF
GTSENDV4 = 1 << 28  # opts1: large send, IPv4
GTSENDV6 = 1 << 27  # opts1: large send, IPv6
GTTCPHO_SHIFT = 18  # opts1: the TCP header's offset for large send
GTTCPHO_MAX = 0x7F
TX_UDP_CS = 1 << 31  # opts2: checksum requests
TX_TCP_CS = 1 << 30
TX_IPV4_CS = 1 << 29
TX_IPV6_CS = 1 << 28
MSS_SHIFT = 17  # opts2: the MSS for large send
MSS_MAX = 0x7FF
TCPHO_SHIFT = 17  # opts2: the transport header's offset for a checksum
TCPHO_MAX = 0x7FF

_U32 = struct.Struct("<I")
_TX_DESC = struct.Struct("<II")


class RxDecoder:
    """Split one bulk IN transfer into frames (module docstring for the rules)."""

    __slots__ = ("stats", "max_frame")

    def __init__(self, stats: Stats, max_frame: int = 1514) -> None:
        self.stats = stats
        self.max_frame = max_frame

    def decode(self, view: memoryview, length: int, emit: Callable[[int, int], object]) -> int:
        """Hand every good frame in view[:length] to emit(offset, length) (the FCS left out); return how many."""
        if length > len(view):
            length = len(view)  # the buffer bounds the transfer (the transport never says more)
        stats = self.stats
        max_frame = self.max_frame
        unpack = _U32.unpack_from
        pos = 0
        frames = 0
        while pos + RX_DESC_LEN <= length:
            opts1 = unpack(view, pos)[0]
            n = opts1 & RX_LEN_MASK
            if n == 0:
                break  # padding after the last frame
            start = pos + RX_DESC_LEN
            size = n - FCS_LEN
            if size < ETH_HLEN or size > max_frame or start + n > length:
                stats.rx_length_errors += 1
                stats.rx_errors += 1
                break
            if opts1 & RX_CRC_ERR:
                stats.rx_frame_errors += 1
                stats.rx_errors += 1
            else:
                emit(start, size)
                frames += 1
            pos = (start + n + RX_ALIGN - 1) & ~(RX_ALIGN - 1)
        return frames


def build_rx(frames: list[bytes], fcs: bool = True, opts2: int = 0) -> bytes:
    """One bulk IN transfer holding `frames`, as the chip builds it (tests, fuzz seeds, the core tier). The
    FCS bytes are the frame's CRC-32 when `fcs` (the decoder never checks them), else zeros."""
    import zlib

    out = bytearray()
    for f in frames:
        tail = struct.pack("<I", zlib.crc32(f) & 0xFFFFFFFF) if fcs else bytes(FCS_LEN)
        out += struct.pack("<6I", len(f) + FCS_LEN, opts2, 0, 0, 0, 0) + f + tail
        out += bytes(-len(out) % RX_ALIGN)
    return bytes(out)


class TxFramer:
    """Frames with their descriptors, in place in one transfer buffer (module docstring)."""

    __slots__ = ("buf", "limit", "used", "count", "_slot")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf: memoryview | bytearray = bytearray(limit)
        self.used = 0
        self.count = 0
        self._slot = 0

    def begin(self, buf: memoryview | bytearray) -> None:
        self.buf = buf
        self.used = 0
        self.count = 0

    def next_slot(self) -> tuple[int, int]:
        """(offset where the next frame's bytes go, room for them)."""
        desc = (self.used + TX_ALIGN - 1) & ~(TX_ALIGN - 1)
        self._slot = desc + TX_DESC_LEN
        return self._slot, max(0, min(self.limit, len(self.buf)) - self._slot)

    def commit(self, length: int, opts1: int = 0, opts2: int = 0) -> None:
        """The frame is at the offset next_slot() gave: write its descriptor in front of it (`opts1`/`opts2`:
        offload requests, offload_opts)."""
        desc = self._slot - TX_DESC_LEN
        for i in range(self.used, desc):
            self.buf[i] = 0  # alignment padding: never stale bytes of an earlier transfer
        _TX_DESC.pack_into(self.buf, desc, (length & TX_LEN_MASK) | TX_FS | TX_LS | opts1, opts2)
        self.used = self._slot + length
        self.count += 1

    def finish(self) -> int:
        n = self.used
        self.used = 0
        self.count = 0
        return n


def offload_opts(frame: memoryview | bytearray, meta) -> tuple[int, int]:
    """(opts1, opts2) asking the chip for what `meta` (netdev.gso.TxMeta) says the frame needs, preparing an
    IPv6 super-frame in place (module docstring). The offsets always fit their fields: the port lets through
    only a transport header at most 82 bytes in (two VLAN tags, a 60-byte IPv4 header), under GTTCPHO_MAX
    and TCPHO_MAX."""
    if meta.gso_type:
        l4 = meta.csum_start
        if meta.v6:
            l3 = meta.l3
            frame[l3 + 4] = frame[l3 + 5] = 0
            s = (int.from_bytes(frame[l3 + 8 : l3 + 40], "big") + 6) % 0xFFFF or 0xFFFF  # saddr, daddr, TCP
            struct.pack_into("!H", frame, l4 + 16, s)
            opts1 = GTSENDV6
        else:
            opts1 = GTSENDV4
        return opts1 | l4 << GTTCPHO_SHIFT, min(meta.mss, MSS_MAX) << MSS_SHIFT
    if meta.csum_start:
        return 0, ((TX_IPV6_CS if meta.v6 else TX_IPV4_CS) | (TX_TCP_CS if meta.csum_offset == 16 else TX_UDP_CS)
                   | meta.csum_start << TCPHO_SHIFT)
    return 0, 0


def encode_tx(frames: list[bytes], limit: int = 16384) -> bytes:
    """The transfer TxFramer builds for `frames` (tests, fuzz seeds)."""
    f = TxFramer(limit)
    f.begin(bytearray(limit))
    for frame in frames:
        offset, room = f.next_slot()
        if len(frame) > room:
            raise ValueError("frames do not fit in one transfer")
        f.buf[offset : offset + len(frame)] = frame
        f.commit(len(frame))
    n = f.finish()
    return bytes(f.buf[:n])


def decode_tx(data: bytes) -> list[tuple[bytes, int, int]]:
    """The device's side, for tests: (frame, opts1, opts2) for each descriptor in one bulk OUT transfer."""
    out = []
    pos = 0
    while True:
        pos = (pos + TX_ALIGN - 1) & ~(TX_ALIGN - 1)
        if pos + TX_DESC_LEN > len(data):
            break
        opts1, opts2 = _TX_DESC.unpack_from(data, pos)
        n = opts1 & TX_LEN_MASK
        if not (opts1 & TX_FS and opts1 & TX_LS) or pos + TX_DESC_LEN + n > len(data):
            raise ValueError(f"bad TX descriptor at {pos}: 0x{opts1:08x}")
        out.append((data[pos + TX_DESC_LEN : pos + TX_DESC_LEN + n], opts1, opts2))
        pos += TX_DESC_LEN + n
    return out
