"""Receive coalescing (GRO) towards the TAP: a run of verified TCP/IPv4 segments of one flow as one frame.

The kernel's usbnet hands every received frame to the stack on its own (netif_rx, no GRO). A TAP opened with
IFF_VNET_HDR takes a `struct virtio_net_hdr` in front of each frame, and with gso_type TCPV4 it takes one
super-frame that the stack treats like a frame GRO has built: one system call and one pass through IP and
TCP for up to 64 KiB, where the one-by-one path costs a write and a stack pass per 1.5 KiB. An NCM transfer
carries up to 16 KiB of back-to-back segments of one stream, so most of a TCP download coalesces.

What may be merged follows the rules of Linux's tcp_gro_receive, so nothing the receiver could tell apart is
merged: the same Ethernet header, IPv4 without options or fragmentation, the same TOS and TTL, the same
ports, ACK number and TCP option bytes, contiguous sequence numbers, only ACK (PSH allowed on the last), all
segments as long as the first except a shorter last one. Anything else is written on its own, in order.

**Nothing unverified is marked valid.** The super-frame's header asks for CHECKSUM_PARTIAL (NEEDS_CSUM over
the TCP header), which a local receiver takes as "payload verified", as it does for hardware GRO. So, as
the kernel's own GRO does before it merges, every segment that goes into a super-frame has had its IPv4
header checksum (RFC 791) and its TCP checksum over pseudo-header, header and payload (RFC 793 §3.1)
verified first. A segment that fails goes to the TAP on its own with a zero header (no flags): the stack
verifies it, drops it and counts it (TcpInCsumErrors / InCsumErrors), as it would from any NIC.

The super-frame is the first segment's headers with the IP total length (and header checksum) for the
whole run, followed by the other segments' payloads straight from the transfer buffer (writev, no copy).
If the kernel forwards it, it segments it and completes each checksum from the pseudo-header sum left in
the TCP check field (virtio-net's convention).

The coalescer decides; the TAP port (port.py) writes and counts. `emit(offset, length)` takes one frame of
`self.view`; `flush()` must run before the buffers the collected frames lie in are reused.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .port import TapPort

VNET_HDR_LEN = 10  # sizeof(struct virtio_net_hdr): no mergeable-buffers field
F_NEEDS_CSUM = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM
F_DATA_VALID = 2  # VIRTIO_NET_HDR_F_DATA_VALID
GSO_TCPV4 = 1  # VIRTIO_NET_HDR_GSO_TCPV4
ZERO_HDR = bytes(VNET_HDR_LEN)  # a plain frame: no GSO, checksums as they are (the stack verifies them)

_VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset: host order
# Bytes 0..47 of an Ethernet + IPv4 (no options) + TCP frame: MACs as two integers, ethertype, then the IP
# header (version/IHL, TOS, total length, id, fragment, TTL, protocol, checksum, source, destination) and
# the first 14 bytes of TCP (ports, sequence, ACK, data offset, flags).
_HEAD = struct.Struct("!QIHBBHHHBBHIIHHIIBB")
_IP_WORDS = struct.Struct("!10H")
ETH_IP = 34  # Ethernet header + IPv4 header without options
TCP_CHECK = 16  # offset of the checksum in the TCP header
MAX_IP_LEN = 0xFFFF
MAX_SEGMENTS = 64
# Frames shorter than this go straight out: pure ACKs (66 bytes) and small datagrams are most of a busy
# link's frames in the other direction, nothing worth merging, and the header parse would only cost them.
MIN_CANDIDATE = 256
ACK, PSH = 0x10, 0x08
IPPROTO_TCP = 6


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def segment_verified(view: memoryview, off: int, tot: int, src: int, dst: int) -> bool:
    """True when the IPv4 header at view[off + 14:] and its TCP segment (`tot` bytes of IP in all) carry
    correct checksums.

    RFC 1071: a block with a correct checksum sums (one's complement, 16-bit words) to 0xFFFF. Because
    2**16 = 1 (mod 0xFFFF), the block read as one big-endian integer is congruent to that sum modulo 0xFFFF,
    so `int.from_bytes(...) % 0xFFFF == 0` is the check, done in C over the whole segment. (An all-zero sum
    would also pass, but cannot occur: the version byte and the pseudo-header's protocol are never zero.)
    """
    if int.from_bytes(view[off + 14 : off + ETH_IP], "big") % 0xFFFF:
        return False
    tcp_len = tot - 20
    seg = int.from_bytes(view[off + ETH_IP : off + 14 + tot], "big")
    if tcp_len & 1:
        seg <<= 8  # an odd last byte is the high half of a word padded with zero
    # Pseudo-header: source, destination, protocol, TCP length; 32-bit addresses fold the same way mod 0xFFFF.
    return (seg + src + dst + IPPROTO_TCP + tcp_len) % 0xFFFF == 0


class Coalescer:
    """Collects TCP segments of one flow; hands super-frames and every other frame to the port to write."""

    def __init__(self, port: TapPort) -> None:
        self.port = port
        self.view: memoryview | None = None  # the buffer `emit` offsets are in (the RX transfer being decoded)
        self._hdr = bytearray(VNET_HDR_LEN)
        self._iov: list = [self._hdr]
        self._n = 0
        self._verified = False  # the run's first segment has been verified (done when a second one joins)
        self.superframes = 0  # super-frames written
        self.merged = 0  # segments that went out inside one
        self.unverified = 0  # segments that would have merged but failed checksum verification

    def emit(self, off: int, length: int) -> None:
        """The decoders' emit callback: one frame at `self.view[off:off + length]`."""
        view = self.view
        if (length >= MIN_CANDIDATE and view[off + 12] == 8 and view[off + 13] == 0 and view[off + 14] == 0x45
                and view[off + 23] == IPPROTO_TCP):
            (mac_a, mac_b, _, _, tos, tot, _, frag, ttl, _, _, src, dst, sport, dport, seq, ack, doff,
             flags) = _HEAD.unpack_from(view, off)
            thl = (doff >> 4) * 4
            payload = tot - 20 - thl
            if (frag & 0x3FFF == 0 and (flags == ACK or flags == ACK | PSH) and thl >= 20 and payload > 0
                    and 14 + tot <= length):
                if self._n:
                    if (seq == self._next_seq and not self._closed and ack == self._ack and thl == self._thl
                            and payload <= self._mss and self._ip_len + payload <= MAX_IP_LEN
                            and self._n < MAX_SEGMENTS
                            and (mac_a, mac_b, tos, ttl, src, dst, sport, dport) == self._key
                            and (thl == 20 or view[off + 54 : off + ETH_IP + thl] == self._opts)):
                        if not self._verified:
                            if not segment_verified(self._view, self._off, self._ip_len, src, dst):
                                self._unverified_first()
                                self._start(view, off, length, thl, payload, ack, seq, tot, flags,
                                            (mac_a, mac_b, tos, ttl, src, dst, sport, dport))
                                return
                            self._verified = True
                        if not segment_verified(view, off, tot, src, dst):
                            self.unverified += 1
                            self.flush()
                            self.port.write_frame(view[off : off + length], length)
                            return
                        start = off + ETH_IP + thl
                        self._iov.append(view[start : start + payload])
                        self._n += 1
                        self._next_seq = (seq + payload) & 0xFFFFFFFF
                        self._ip_len += payload
                        self._bytes += length
                        if payload < self._mss or flags & PSH:
                            self._closed = True
                            self._psh |= flags & PSH
                        return
                    self.flush()
                self._start(view, off, length, thl, payload, ack, seq, tot, flags,
                            (mac_a, mac_b, tos, ttl, src, dst, sport, dport))
                return
        if self._n:
            self.flush()
        self.port.write_frame(view[off : off + length], length)

    def _start(self, view: memoryview, off: int, length: int, thl: int, payload: int, ack: int, seq: int,
               tot: int, flags: int, key: tuple) -> None:
        self._view, self._off, self._thl, self._mss, self._ack = view, off, thl, payload, ack
        self._key = key
        self._opts = view[off + 54 : off + ETH_IP + thl] if thl > 20 else None
        self._next_seq = (seq + payload) & 0xFFFFFFFF
        self._ip_len = tot
        self._bytes = length
        self._psh = flags & PSH
        self._closed = bool(self._psh)
        self._verified = False
        self._iov.append(view[off : off + 14 + tot])
        self._n = 1

    def _unverified_first(self) -> None:
        """The run's first segment failed verification: it goes out alone and unmarked."""
        self.unverified += 1
        self.flush()

    def flush(self) -> None:
        n = self._n
        if not n:
            return
        iov = self._iov
        self._n = 0
        if n == 1:
            # A run of one is written as it came, with no flags: the stack verifies it.
            frame = iov.pop()
            self._view = self._opts = None
            self.port.write_frame(frame, self._bytes)
            return
        view, off, ip_len = self._view, self._off, self._ip_len
        # IP total length for the whole run, and the header checksum over it (RFC 791: sum with the field 0).
        struct.pack_into("!H", view, off + 16, ip_len)
        view[off + 24] = view[off + 25] = 0
        csum = ~_fold(sum(_IP_WORDS.unpack_from(view, off + 14))) & 0xFFFF
        struct.pack_into("!H", view, off + 24, csum)
        if self._psh:
            view[off + 47] |= PSH
        # CHECKSUM_PARTIAL: the check field holds the pseudo-header sum (addresses, protocol, TCP length).
        src, dst = self._key[4], self._key[5]
        pseudo = _fold((src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + IPPROTO_TCP + ip_len - 20)
        struct.pack_into("!H", view, off + ETH_IP + TCP_CHECK, pseudo)
        _VNET.pack_into(self._hdr, 0, F_NEEDS_CSUM, GSO_TCPV4, ETH_IP + self._thl, self._mss, ETH_IP, TCP_CHECK)
        try:
            if self.port.write_superframe(iov, n, self._bytes):
                self.superframes += 1
                self.merged += n
        finally:
            del iov[1:]
            self._view = self._opts = None
