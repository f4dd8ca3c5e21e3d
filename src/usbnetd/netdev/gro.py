"""Receive coalescing (GRO) towards the TAP: a run of verified TCP segments of one flow, over IPv4 or IPv6, as
one frame; and DATA_VALID on the single frames whose checksums were verified.

The kernel's usbnet hands every received frame to the stack on its own (netif_rx, no GRO). A TAP opened with
IFF_VNET_HDR takes a `struct virtio_net_hdr` in front of each frame, and with gso_type TCPV4 or TCPV6 it takes
one super-frame that the stack treats like a frame GRO has built: one system call and one pass through IP and
TCP for up to 64 KiB, where the one-by-one path costs a write and a stack pass per 1.5 KiB. An NCM transfer
carries up to 16 KiB of back-to-back segments of one stream, so most of a TCP download coalesces.

What may be merged follows the rules of Linux's tcp_gro_receive (with inet_gro_receive for IPv4 and
ipv6_gro_receive for IPv6), so nothing the receiver could tell apart is merged: the same Ethernet header; IPv4
without options or fragmentation with the same TOS and TTL, or IPv6 whose next header is TCP itself (a frame
with extension headers goes out alone) with the same first word (traffic class, flow label) and hop limit;
the same addresses, ports, ACK number and TCP option bytes, contiguous sequence numbers, only ACK (PSH allowed
on the last), all segments as long as the first except a shorter last one, at most 65,535 bytes of IP packet
(Linux's GRO stops below 64 KiB for either family). Anything else is written on its own, in order.

**Nothing unverified is marked valid.** The super-frame's header asks for CHECKSUM_PARTIAL (NEEDS_CSUM over
the TCP header), which a local receiver takes as "payload verified", as it does for hardware GRO. So, as
the kernel's own GRO does before it merges, every segment that goes into a super-frame has had its checksums
verified first: for IPv4 the header checksum (RFC 791) and the TCP checksum over pseudo-header, header and
payload (RFC 793 §3.1); for IPv6, which has no header checksum, the TCP checksum over the IPv6 pseudo-header
(RFC 8200 §8.1: both addresses, the upper-layer length as 32 bits, next header 6). A segment that fails goes to
the TAP on its own with a zero header (no flags): the stack verifies it, drops it and counts it
(TcpInCsumErrors / InCsumErrors), as it would from any NIC.

The super-frame is the first segment's headers with the IP length for the whole run (IPv4: total length and
header checksum; IPv6: payload length), followed by the other segments' payloads straight from the transfer
buffer (writev, no copy), behind gso_type TCPV4 or TCPV6, gso_size the first segment's payload, and the
pseudo-header sum over the whole TCP length in the TCP check field (virtio-net's NEEDS_CSUM convention: if
the kernel forwards the frame, it segments it and completes each checksum from there).

**DATA_VALID on single frames.** A run that ends as one segment goes out as it came; with the header flag
VIRTIO_NET_HDR_F_DATA_VALID (2) when its checksums were verified, else with a zero header. Only the checksums
verified anyway are worth that flag: the first segment of a run is verified when a second one comes to join
it, so a first segment whose follower then failed verification goes out alone and marked. Nothing is verified
just to be marked, and UDP or other single frames go out unmarked, because the kernel gives the flag nothing
to save: Linux's tun_get_user (drivers/net/tun.c) passes the header to virtio_net_hdr_to_skb
(include/linux/virtio_net.h), which reads NEEDS_CSUM and the GSO fields and never DATA_VALID (only the
virtio-net driver and virtio_net_hdr_from_skb, the TAP's read side, know it), so a frame written without
NEEDS_CSUM is CHECKSUM_NONE and the stack verifies it whatever the flag says. Measured on the 6.1 kernel of the
VM bench and on a 6.18 host (docs/performance.md, "DATA_VALID"): a UDP datagram with a wrong checksum written
with DATA_VALID is dropped and counted in InCsumErrors like one without. Verifying a frame only to mark it
would cost a pass over its payload in user space and save the kernel none; the flag stays for kernels that
may honour it.

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
GSO_TCPV6 = 4  # VIRTIO_NET_HDR_GSO_TCPV6
ZERO_HDR = bytes(VNET_HDR_LEN)  # a plain frame: no GSO, checksums as they are (the stack verifies them)
VALID_HDR = bytes([F_DATA_VALID]) + bytes(VNET_HDR_LEN - 1)  # a single frame whose checksums we verified

_VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset: host order
# Bytes 0..47 of an Ethernet + IPv4 (no options) + TCP frame: MACs as two integers, ethertype, then the IP
# header (version/IHL, TOS, total length, id, fragment, TTL, protocol, checksum, source, destination) and
# the first 14 bytes of TCP (ports, sequence, ACK, data offset, flags).
_HEAD = struct.Struct("!QIHBBHHHBBHIIHHIIBB")
# Bytes 0..67 of an Ethernet + IPv6 + TCP frame: MACs, ethertype, then the IPv6 header (RFC 8200 §3: version,
# traffic class and flow label as one word, payload length, next header, hop limit, both addresses as one
# 32-byte string) and the first 14 bytes of TCP.
_HEAD6 = struct.Struct("!QIHIHBB32sHHIIBB")
_IP_WORDS = struct.Struct("!10H")
_ADDR6_WORDS = struct.Struct("!16H")
ETH_IP = 34  # Ethernet header + IPv4 header without options
ETH_IP6 = 54  # Ethernet header + IPv6 header (no extension headers)
TCP_CHECK = 16  # offset of the checksum in the TCP header
MAX_IP_LEN = 0xFFFF  # the whole IP packet of a super-frame, either family
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


def segment_verified6(view: memoryview, off: int, tot: int) -> bool:
    """True when the TCP segment behind the IPv6 header at view[off + 14:] (`tot` bytes of IP packet, the
    40-byte header included) carries a correct checksum. IPv6 has no header checksum; the pseudo-header is
    RFC 8200 §8.1's: source and destination address, the upper-layer length as a 32-bit word, three zero
    bytes and next header 6. The same modulo-0xFFFF check as segment_verified; the 32 address bytes read as
    one integer are congruent to the sum of their 16 words."""
    tcp_len = tot - 40
    seg = int.from_bytes(view[off + ETH_IP6 : off + 14 + tot], "big")
    if tcp_len & 1:
        seg <<= 8
    addrs = int.from_bytes(view[off + 22 : off + ETH_IP6], "big")
    return (seg + addrs + IPPROTO_TCP + tcp_len) % 0xFFFF == 0


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
        if length >= MIN_CANDIDATE:
            if view[off + 12] == 8 and view[off + 13] == 0 and view[off + 14] == 0x45 and view[off + 23] == IPPROTO_TCP:
                (mac_a, mac_b, _, _, tos, tot, _, frag, ttl, _, _, src, dst, sport, dport, seq, ack, doff,
                 flags) = _HEAD.unpack_from(view, off)
                if frag & 0x3FFF == 0 and self._candidate(view, off, length, ETH_IP, tot, seq, ack, doff, flags,
                                                          (mac_a, mac_b, tos, ttl, src, dst, sport, dport)):
                    return
            elif (view[off + 12] == 0x86 and view[off + 13] == 0xDD and view[off + 14] >> 4 == 6
                  and view[off + 20] == IPPROTO_TCP):
                # RFC 8200 §4: next header TCP directly; extension headers are not parsed (the frame goes alone)
                (mac_a, mac_b, _, word, plen, _, hop, addrs, sport, dport, seq, ack, doff,
                 flags) = _HEAD6.unpack_from(view, off)
                if self._candidate(view, off, length, ETH_IP6, 40 + plen, seq, ack, doff, flags,
                                   (mac_a, mac_b, word, hop, addrs, sport, dport)):
                    return
        if self._n:
            self.flush()
        self.port.write_frame(view[off : off + length], length)

    def _candidate(self, view: memoryview, off: int, length: int, eth_ip: int, tot: int, seq: int, ack: int,
                   doff: int, flags: int, key: tuple) -> bool:
        """A TCP segment whose IP header emit has parsed (`tot`: the IP packet's length, header included;
        `key`: what must be equal within a run, a different shape per family). False when it cannot be part
        of a run at all (emit then writes it as it came)."""
        thl = (doff >> 4) * 4
        payload = tot - (eth_ip - 14) - thl
        if not ((flags == ACK or flags == ACK | PSH) and thl >= 20 and payload > 0 and 14 + tot <= length):
            return False
        if self._n:
            if (seq == self._next_seq and not self._closed and ack == self._ack and thl == self._thl
                    and payload <= self._mss and self._ip_len + payload <= MAX_IP_LEN
                    and self._n < MAX_SEGMENTS and key == self._key
                    and (thl == 20 or view[off + eth_ip + 20 : off + eth_ip + thl] == self._opts)):
                if not self._verified:
                    if not self._verify(self._view, self._off, self._ip_len):
                        # the run's first segment failed: it goes out alone and unmarked
                        self.unverified += 1
                        self.flush()
                        self._start(view, off, length, eth_ip, thl, payload, ack, seq, tot, flags, key)
                        return True
                    self._verified = True
                if not self._verify(view, off, tot):
                    # out alone and unmarked, for the stack to drop; the run before it is written first
                    self.unverified += 1
                    self.flush()
                    self.port.write_frame(view[off : off + length], length)
                    return True
                start = off + eth_ip + thl
                self._iov.append(view[start : start + payload])
                self._n += 1
                self._next_seq = (seq + payload) & 0xFFFFFFFF
                self._ip_len += payload
                self._bytes += length
                if payload < self._mss or flags & PSH:
                    self._closed = True
                    self._psh |= flags & PSH
                return True
            self.flush()
        self._start(view, off, length, eth_ip, thl, payload, ack, seq, tot, flags, key)
        return True

    def _verify(self, view: memoryview, off: int, tot: int) -> bool:
        """The checksums of a segment of the open run's flow (its family and addresses are the run's)."""
        if self._eth_ip == ETH_IP:
            return segment_verified(view, off, tot, self._key[4], self._key[5])
        return segment_verified6(view, off, tot)

    def _start(self, view: memoryview, off: int, length: int, eth_ip: int, thl: int, payload: int, ack: int,
               seq: int, tot: int, flags: int, key: tuple) -> None:
        self._view, self._off, self._thl, self._mss, self._ack = view, off, thl, payload, ack
        self._eth_ip = eth_ip
        self._key = key
        self._opts = view[off + eth_ip + 20 : off + eth_ip + thl] if thl > 20 else None
        self._next_seq = (seq + payload) & 0xFFFFFFFF
        self._ip_len = tot
        self._bytes = length
        self._psh = flags & PSH
        self._closed = bool(self._psh)
        self._verified = False
        self._iov.append(view[off : off + 14 + tot])
        self._n = 1

    def flush(self) -> None:
        n = self._n
        if not n:
            return
        iov = self._iov
        self._n = 0
        if n == 1:
            # A run of one is written as it came (padding past the IP length left out): marked DATA_VALID when
            # its checksums were verified (a follower came and failed), else with no flags.
            frame = iov.pop()
            self._view = self._opts = None
            self.port.write_frame(frame, self._bytes, VALID_HDR if self._verified else ZERO_HDR)
            return
        view, off, ip_len, eth_ip = self._view, self._off, self._ip_len, self._eth_ip
        tcp_len = ip_len - (eth_ip - 14)
        if eth_ip == ETH_IP:
            # IP total length for the whole run, and the header checksum over it (RFC 791: sum with the field 0).
            struct.pack_into("!H", view, off + 16, ip_len)
            view[off + 24] = view[off + 25] = 0
            csum = ~_fold(sum(_IP_WORDS.unpack_from(view, off + 14))) & 0xFFFF
            struct.pack_into("!H", view, off + 24, csum)
            src, dst = self._key[4], self._key[5]
            addr_sum = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
            gso_type = GSO_TCPV4
        else:
            # IPv6 payload length (RFC 8200 §3: what follows the 40-byte header) for the whole run
            struct.pack_into("!H", view, off + 18, tcp_len)
            addr_sum = sum(_ADDR6_WORDS.unpack_from(view, off + 22))
            gso_type = GSO_TCPV6
        if self._psh:
            view[off + eth_ip + 13] |= PSH
        # CHECKSUM_PARTIAL: the check field holds the pseudo-header sum (addresses, protocol, TCP length).
        pseudo = _fold(addr_sum + IPPROTO_TCP + tcp_len)
        struct.pack_into("!H", view, off + eth_ip + TCP_CHECK, pseudo)
        _VNET.pack_into(self._hdr, 0, F_NEEDS_CSUM, gso_type, eth_ip + self._thl, self._mss, eth_ip, TCP_CHECK)
        try:
            if self.port.write_superframe(iov, n, self._bytes):
                self.superframes += 1
                self.merged += n
        finally:
            del iov[1:]
            self._view = self._opts = None
