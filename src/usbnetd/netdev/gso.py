"""TX offloads from the TAP: TCP segmentation (TSO) and checksum completion, the Python reference.

With IFF_VNET_HDR and TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) (Linux include/uapi/linux/if_tun.h)
the kernel stops doing two jobs in software before it hands a frame to the TAP and leaves them to us, as it
would to a NIC with those features:

- **TSO**: a TCP "super-frame" of up to 64 KiB, one set of Ethernet + IP + TCP headers in front of the whole
  payload, with a `struct virtio_net_hdr` (include/uapi/linux/virtio_net.h; virtio-v1.2 §5.1.6 "Device
  Operation", the header's fields in §5.1.6.2 "Packet Transmission") saying gso_type TCPV4 or TCPV6,
  gso_size (the MSS: payload bytes per segment), and NEEDS_CSUM with csum_start (the TCP header) and
  csum_offset (16, TCP's check field). We cut it into frames as Linux's own software GSO does
  (net/ipv4/tcp_offload.c tcp_gso_segment, net/ipv4/af_inet.c inet_gso_segment, net/ipv6/ip6_offload.c):
  every segment gets a copy of the headers, the IPv4 total length (IPv6 payload length) of that segment,
  the IPv4 identification incremented per segment (inet_gso_segment's `id++`) and its header checksum
  (RFC 791), the TCP sequence number advanced by the MSS, FIN and PSH only on the last segment and CWR only
  on the first (tcp_gso_segment clears `fin`/`psh` on all but the last and `cwr` on all but the first),
  and the full TCP checksum over the pseudo-header (RFC 793 §3.1; RFC 8200 §8.1 for IPv6), header and
  payload.
- **Checksum offload**: a single frame with VIRTIO_NET_HDR_F_NEEDS_CSUM whose checksum field at
  csum_start + csum_offset holds only the pseudo-header sum (CHECKSUM_PARTIAL); the device completes it
  with the RFC 1071 one's complement sum from csum_start to the end of the frame (virtio-v1.2 §5.1.6.2;
  Linux net/core/dev.c skb_checksum_help, which stores 0xFFFF for a result of 0 so a UDP checksum never
  reads as "none", RFC 768; we do the same for every completed TCP/UDP checksum, segments included).

**hdr_len is only a hint**: the spec lets the device use it as a hint and warns that implementations get it
wrong (virtio-v1.0 §5.1.6.2 note: "not useful as a guarantee of the transport header size"; tun fills it
with skb_headlen). So the headers are found by parsing them; hdr_len must only not exceed the frame.

Everything that does not parse as what was announced is dropped and counted, never raised, never read or
written past the frame: an unknown gso_type (UDP, USO, or the ECN bit VIRTIO_NET_HDR_GSO_ECN: we do not offer
TUN_F_TSO_ECN, so the kernel segments TCP with CWR set itself, virtio-v1.2 §5.1.6.2.1; a CWR that still comes
in a TCPV4/TCPV6 super-frame is kept on the first segment only, as tcp_gso_segment would), a GSO frame without
NEEDS_CSUM or whose csum_start/csum_offset are not the TCP check field, gso_size 0, hdr_len past the frame, a
frame that is not TCP over IPv4/IPv6 matching the gso_type (IPv6 extension headers included: not segmented
here), an IPv4 fragment, IP lengths that do not match the frame's (a frame cut by the read), a TCP header
shorter than 20 bytes or past the frame, a first segment longer than the device takes, a NEEDS_CSUM field past
the frame. Up to two VLAN tags (802.1Q, 802.1ad) may precede the IP header: tun writes a hardware-accelerated
tag into the frame and counts it in csum_start (drivers/net/tun.c tun_put_user), and VLAN interfaces on the
TAP inherit its offloads.

This module is the reference: the C framer (native/_fasttx.c, NcmTx with offload) must produce the same
frames byte for byte (tests/unit/test_native_ncm_tx.py, fuzz/native_ncm_tx.py). Checksums are computed with
the modulo trick of gro.py: a big-endian integer is congruent to its 16-bit one's complement sum modulo
0xFFFF (2**16 = 1 mod 0xFFFF).
"""

from __future__ import annotations

import struct

VNET_HDR_LEN = 10  # sizeof(struct virtio_net_hdr), no num_buffers (TUNSETVNETHDRSZ 10)
VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset; host order
F_NEEDS_CSUM = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM
GSO_NONE = 0
GSO_TCPV4 = 1  # VIRTIO_NET_HDR_GSO_TCPV4
GSO_TCPV6 = 4  # VIRTIO_NET_HDR_GSO_TCPV6
GSO_ECN = 0x80  # VIRTIO_NET_HDR_GSO_ECN: never offered (no TUN_F_TSO_ECN), so dropped if it comes
# if_tun.h: what TUNSETOFFLOAD offers
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
# The part of a read past max_frame (the spill buffer): IP lengths are 16 bits, so a super-frame is at most
# 65,535 bytes of IP plus its Ethernet header and VLAN tags; anything longer fails the length checks.
SPILL = 65536 + 64
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8)
MAX_VLAN_TAGS = 2
IPPROTO_TCP = 6
TCP_CHECK = 16  # offset of the check field in the TCP header
FIN, PSH, CWR = 0x01, 0x08, 0x80


def _value(data: bytes | bytearray | memoryview) -> int:
    """`data` as one big-endian integer, an odd last byte padded to a 16-bit word (RFC 1071)."""
    v = int.from_bytes(data, "big")
    return v << 8 if len(data) & 1 else v


def l4_check(value: int) -> int:
    """The TCP/UDP checksum field for data (with a zero or pseudo-header-sum field) congruent to `value`.
    ~sum, with 0 sent as 0xFFFF (skb_checksum_help's CSUM_MANGLED_0): never 0."""
    return 0xFFFF - value % 0xFFFF


def ip_check(value: int) -> int:
    """The IPv4 header checksum (RFC 791) for a header with a zero field congruent to `value`: ~sum, where
    the header is never all zero, so a sum congruent to 0 is 0xFFFF and the field 0."""
    return (0xFFFF - value % 0xFFFF) % 0xFFFF


def complete_csum(buf: bytearray | memoryview, length: int, csum_start: int, csum_offset: int) -> bool:
    """VIRTIO_NET_HDR_F_NEEDS_CSUM: complete the checksum of the frame buf[:length] in place. The field at
    csum_start + csum_offset holds the pseudo-header sum; the sum runs from csum_start to the frame's end.
    False (nothing written) when the field does not lie inside the frame."""
    at = csum_start + csum_offset
    if at + 2 > length:
        return False
    struct.pack_into("!H", buf, at, l4_check(_value(buf[csum_start:length])))
    return True


def _be16(b: bytes, off: int) -> int:
    return b[off] << 8 | b[off + 1]


def network_header(frame: bytes | bytearray | memoryview, n: int) -> tuple[int, int] | None:
    """(ethertype, offset of the network header) of the frame's first `n` bytes, past up to MAX_VLAN_TAGS
    tags; None when the frame ends inside the tags (or before the Ethernet header's type)."""
    off = 12
    if off + 2 > n:
        return None
    etype = _be16(frame, off)
    for _ in range(MAX_VLAN_TAGS):
        if etype not in VLAN_TPIDS:
            break
        off += 4
        if off + 2 > n:
            return None
        etype = _be16(frame, off)
    return etype, off + 2


def parse(frame: bytes, gso_type: int, flags: int, hdr_len: int, gso_size: int, csum_start: int,
          csum_offset: int, max_frame: int) -> tuple[int, int, int, bool] | None:
    """Check a GSO super-frame against its vnet header: (l3, l4, hdrs, ipv6) — where the IP header, the TCP
    header and the payload start — or None when it must be dropped (the module docstring's list).
    `frame` is at least an Ethernet header long."""
    n = len(frame)
    if gso_type not in (GSO_TCPV4, GSO_TCPV6) or not flags & F_NEEDS_CSUM or gso_size == 0 or hdr_len > n:
        return None
    found = network_header(frame, n)
    if found is None:
        return None
    etype, l3 = found
    if gso_type == GSO_TCPV4:
        if etype != ETH_P_IP or l3 + 20 > n or frame[l3] >> 4 != 4:
            return None
        ihl = (frame[l3] & 0x0F) * 4
        if (ihl < 20 or frame[l3 + 9] != IPPROTO_TCP or _be16(frame, l3 + 6) & 0x3FFF
                or _be16(frame, l3 + 2) != n - l3):
            return None
        l4, v6 = l3 + ihl, False
    else:
        if (etype != ETH_P_IPV6 or l3 + 40 > n or frame[l3] >> 4 != 6 or frame[l3 + 6] != IPPROTO_TCP
                or _be16(frame, l3 + 4) != n - l3 - 40):
            return None
        l4, v6 = l3 + 40, True
    if l4 + 20 > n:
        return None
    doff = (frame[l4 + 12] >> 4) * 4
    hdrs = l4 + doff
    if doff < 20 or hdrs > n or csum_start != l4 or csum_offset != TCP_CHECK:
        return None
    if hdrs + min(gso_size, n - hdrs) > max_frame:
        return None
    return l3, l4, hdrs, v6


def segment(vnet_hdr: bytes | bytearray | memoryview, frame: bytes, max_frame: int) -> list[bytes] | None:
    """Cut a TSO super-frame into frames of at most gso_size payload bytes each, or None (drop) when its
    headers do not parse as the vnet header announces. A payload no longer than gso_size gives one frame
    (Linux sends such a GSO packet as it is, its checksum completed)."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET.unpack_from(vnet_hdr)
    parsed = parse(frame, gso_type, flags, hdr_len, gso_size, csum_start, csum_offset, max_frame)
    if parsed is None:
        return None
    l3, l4, hdrs, v6 = parsed
    n = len(frame)
    payload = n - hdrs
    mss = gso_size
    count = max(1, -(-payload // mss))
    head = frame[:hdrs]
    ip_id = _be16(frame, l3 + 4)
    seq = int.from_bytes(frame[l4 + 4 : l4 + 8], "big")
    tcp_flags = frame[l4 + 13]
    addresses = _value(frame[l3 + 8 : l3 + 40] if v6 else frame[l3 + 12 : l3 + 20]) + IPPROTO_TCP
    out = []
    for k in range(count):
        start = hdrs + k * mss
        seg = bytearray(head)
        seg += frame[start : start + mss]
        length = len(seg)
        if v6:
            struct.pack_into("!H", seg, l3 + 4, length - l3 - 40)
        else:
            struct.pack_into("!HH", seg, l3 + 2, length - l3, (ip_id + k) & 0xFFFF)
            seg[l3 + 10] = seg[l3 + 11] = 0
            struct.pack_into("!H", seg, l3 + 10, ip_check(_value(seg[l3:l4])))
        struct.pack_into("!I", seg, l4 + 4, (seq + k * mss) & 0xFFFFFFFF)
        f = tcp_flags
        if k != count - 1:
            f &= ~(FIN | PSH)
        if k:
            f &= ~CWR
        seg[l4 + 13] = f
        seg[l4 + TCP_CHECK] = seg[l4 + TCP_CHECK + 1] = 0
        struct.pack_into("!H", seg, l4 + TCP_CHECK, l4_check(_value(seg[l4:]) + addresses + length - l4))
        out.append(bytes(seg))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Hardware offloads: the device (not usbnetd) cuts super-frames and fills checksums. The port checks each frame
# against its vnet header exactly as above and tells the driver, in a TxMeta, what its TX descriptor must ask for.

class TxMeta:
    """What the device must do for the frame just read (TapPort with `device_offloads`): filled in place for
    every frame, never allocated per frame.

    gso_type: GSO_NONE, GSO_TCPV4 or GSO_TCPV6 (then `mss` is the payload per segment and `segments`/`wire`
    what the device will put on the wire); csum_start: 0 when the frame's checksums are complete, else the
    transport header's offset, with csum_offset 16 (TCP) or 6 (UDP) and `v6` the IP version; l3: the IP header.
    """

    __slots__ = ("gso_type", "mss", "csum_start", "csum_offset", "l3", "v6", "segments", "wire")

    def __init__(self) -> None:
        self.clear(0)

    def clear(self, length: int) -> None:
        self.gso_type = GSO_NONE
        self.mss = 0
        self.csum_start = 0
        self.csum_offset = 0
        self.l3 = 0
        self.v6 = False
        self.segments = 1
        self.wire = length


UDP_CHECK = 6  # offset of the check field in the UDP header
IPPROTO_UDP = 17


def partial_l4(frame: bytes | bytearray | memoryview, n: int, csum_start: int,
               csum_offset: int) -> tuple[int, bool] | None:
    """A NEEDS_CSUM frame that a device's checksum engine can complete: (l3, v6) when it is TCP or UDP right
    behind an IPv4 header (not a fragment) or an IPv6 header without extension headers, csum_start is that
    transport header and csum_offset its check field, all inside the frame's `n` bytes; None otherwise (then
    the checksum is completed in software)."""
    found = network_header(frame, n)
    if found is None:
        return None
    etype, l3 = found
    if etype == ETH_P_IP:
        if l3 + 20 > n or frame[l3] >> 4 != 4 or _be16(frame, l3 + 6) & 0x3FFF:
            return None
        l4, proto, v6 = l3 + (frame[l3] & 0x0F) * 4, frame[l3 + 9], False
        if l4 < l3 + 20:
            return None
    elif etype == ETH_P_IPV6:
        if l3 + 40 > n or frame[l3] >> 4 != 6:
            return None
        l4, proto, v6 = l3 + 40, frame[l3 + 6], True
    else:
        return None
    want = TCP_CHECK if proto == IPPROTO_TCP else UDP_CHECK if proto == IPPROTO_UDP else -1
    if csum_start != l4 or csum_offset != want or l4 + csum_offset + 2 > n:
        return None
    return l3, v6


def offload_names(flags: int) -> list[str]:
    """TUN_F_* bits as ethtool would name the features ("tx-checksum", "tso4", "tso6")."""
    return [name for bit, name in ((TUN_F_CSUM, "tx-checksum"), (TUN_F_TSO4, "tso4"), (TUN_F_TSO6, "tso6"))
            if flags & bit]
