"""Receive coalescing (GRO) towards the TAP: a run of TCP/IPv4 segments of one flow written as one frame.

The kernel's usbnet hands every received frame to the stack on its own (netif_rx, no GRO). A TAP opened with
IFF_VNET_HDR takes a `struct virtio_net_hdr` in front of each frame, and with gso_type TCPV4 it takes one
super-frame that the stack treats like a frame GRO has built: one system call and one pass through IP and
TCP for up to 64 KiB, where the one-by-one path costs a write and a stack pass per 1.5 KiB. An NCM transfer
carries up to 16 KiB of back-to-back segments of one stream, so most of a TCP download coalesces.

What may be merged follows the rules of Linux's tcp_gro_receive, so nothing the receiver could tell apart is
merged: the same Ethernet header, IPv4 without options or fragmentation, the same TOS and TTL, the same
ports, ACK number and TCP option bytes, contiguous sequence numbers, only ACK (PSH allowed on the last), all
segments as long as the first except a shorter last one. Anything else is written on its own, in order.

The super-frame is the first segment's headers with the IP total length (and header checksum) for the
whole run, followed by the other segments' payloads straight from the transfer buffer (writev, no copy).
The header asks for CHECKSUM_PARTIAL (NEEDS_CSUM over the TCP header): a local receiver then takes the
payload as verified, as it does for hardware GRO, and if the kernel forwards the frame it segments it and
completes each checksum from the pseudo-header sum left in the TCP check field (virtio-net's convention).
"""

from __future__ import annotations

import os
import struct

VNET_HDR_LEN = 10  # sizeof(struct virtio_net_hdr): no mergeable-buffers field
F_NEEDS_CSUM = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM
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


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


class Coalescer:
    """Collect frames with `emit()`; `flush()` before the buffers they lie in are reused. Counts into `stats`."""

    def __init__(self, stats, on_error) -> None:
        self.stats = stats
        self.on_error = on_error  # called with the OSError of a failed write (counted as dropped here)
        self.fd = -1
        self.view: memoryview | None = None  # the buffer `emit` offsets are in (the RX transfer being decoded)
        self._hdr = bytearray(VNET_HDR_LEN)
        self._iov: list = [self._hdr]
        self._n = 0
        self.superframes = 0  # super-frames written
        self.merged = 0  # segments that went out inside one

    def emit(self, off: int, length: int) -> None:
        """The decoders' emit callback: one frame at `self.view[off:off + length]`."""
        view = self.view
        if (length >= MIN_CANDIDATE and view[off + 12] == 8 and view[off + 13] == 0 and view[off + 14] == 0x45
                and view[off + 23] == 6):
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
                self._view, self._off, self._thl, self._mss, self._ack = view, off, thl, payload, ack
                self._key = (mac_a, mac_b, tos, ttl, src, dst, sport, dport)
                self._opts = view[off + 54 : off + ETH_IP + thl] if thl > 20 else None
                self._next_seq = (seq + payload) & 0xFFFFFFFF
                self._ip_len = tot
                self._bytes = length
                self._psh = flags & PSH
                self._closed = bool(self._psh)
                self._iov.append(view[off : off + 14 + tot])
                self._n = 1
                return
        if self._n:
            self.flush()
        self._write_plain(view[off : off + length], length)

    def _write_plain(self, frame: memoryview, length: int) -> None:
        try:
            os.writev(self.fd, (ZERO_HDR, frame))
        except OSError as exc:
            self.stats.rx_dropped += 1
            self.on_error(exc)
            return
        stats = self.stats
        stats.rx_packets += 1
        stats.rx_bytes += length

    def flush(self) -> None:
        n = self._n
        if not n:
            return
        iov = self._iov
        self._n = 0
        if n == 1:
            frame = iov.pop()
            self._write_plain(frame, self._bytes)
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
        pseudo = _fold((src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 6 + ip_len - 20)
        struct.pack_into("!H", view, off + ETH_IP + TCP_CHECK, pseudo)
        _VNET.pack_into(self._hdr, 0, F_NEEDS_CSUM, GSO_TCPV4, ETH_IP + self._thl, self._mss, ETH_IP, TCP_CHECK)
        try:
            os.writev(self.fd, iov)
        except OSError as exc:
            self.stats.rx_dropped += n
            self.on_error(exc)
        else:
            self.stats.rx_packets += n
            self.stats.rx_bytes += self._bytes
            self.superframes += 1
            self.merged += n
        finally:
            del iov[1:]
            self._view = self._opts = None
