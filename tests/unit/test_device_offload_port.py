"""TapPort with a device's own offloads (`device_offloads`): what it hands a vendor driver, against arbitrary
input from the TAP.

Everything the TAP gives is untrusted. These tests feed the port valid super-frames and partial checksums,
then mutated ones (flipped bytes, cut frames, lying virtio-net headers), through a real socket pair, and
check that it never raises, never reports more than it read, and that whatever it lets through with a
request for the device is a frame the device can do that for: the offsets inside the frame, a TCP header
where the TSO descriptor says, within what the chips' descriptors can hold (r8152_codec.offload_opts).
"""

from __future__ import annotations

import random
import socket

import pytest
from tso_frames import superframe, tcp_frame, udp_partial, vnet

from usbnetd.core.stats import Stats
from usbnetd.netdev import gso
from usbnetd.netdev.port import CARRIED, TapPort
from usbnetd.protocols import r8152_codec

ALL = gso.TUN_F_CSUM | gso.TUN_F_TSO4 | gso.TUN_F_TSO6
READ_MAX = 16376


@pytest.fixture
def pair():
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    yield ours, peer
    ours.close()
    peer.close()


def _port(ours: socket.socket, flags: int = ALL) -> TapPort:
    return TapPort(ours.fileno(), Stats(), 1514, gro=False, device_offloads=flags, read_max=READ_MAX)


def _valid(rng: random.Random) -> tuple[bytes, bytes]:
    kind = rng.randrange(4)
    if kind == 0:
        return superframe(rng.randrange(1, 16000), rng.choice((536, 1000, 1448, 1460)), v6=rng.random() < 0.5)
    if kind == 1:
        return udp_partial(rng.randrange(0, 1400), v6=rng.random() < 0.5)
    if kind == 2:
        frame, l4, _ = tcp_frame(rng.randrange(0, 1400), v6=rng.random() < 0.5)
        return vnet(gso.F_NEEDS_CSUM, 0, 0, 0, l4, gso.TCP_CHECK), frame
    frame, _, _ = tcp_frame(rng.randrange(0, 1400), partial=False)
    return vnet(), frame


def _mutate(rng: random.Random, hdr: bytes, frame: bytes) -> tuple[bytes, bytes]:
    hdr, frame = bytearray(hdr), bytearray(frame)
    for _ in range(rng.randrange(1, 4)):
        what = rng.randrange(4)
        if what == 0:
            hdr[rng.randrange(len(hdr))] = rng.randrange(256)
        elif what == 1 and frame:
            frame[rng.randrange(min(len(frame), 80))] = rng.randrange(256)  # the headers, mostly
        elif what == 2:
            del frame[rng.randrange(len(frame) + 1) :]
        else:
            frame += bytes(rng.randrange(1, 64) if rng.random() < 0.9 else rng.randrange(16000, 50000))
    return bytes(hdr), bytes(frame)


def _read(port: TapPort, room: int) -> tuple[int, bytearray]:
    buf = bytearray(max(room, READ_MAX))
    n = port.read_into(memoryview(buf)[:room])
    if n == CARRIED:
        assert port.pending
        n = port.next_segment(memoryview(buf))  # the next transfer: empty, room for the largest
    return n, buf


def _check(port: TapPort, n: int, buf: bytearray) -> None:
    m = port.meta
    assert 0 <= n <= READ_MAX
    if n == 0:
        return
    assert n >= 14 and m.gso_type in (gso.GSO_NONE, gso.GSO_TCPV4, gso.GSO_TCPV6)
    if m.gso_type:
        assert m.segments >= 2 and 0 < m.mss and m.wire > n
        assert m.csum_offset == gso.TCP_CHECK and m.l3 < m.csum_start <= r8152_codec.GTTCPHO_MAX
        proto = buf[m.l3 + 6] if m.v6 else buf[m.l3 + 9]
        assert proto == gso.IPPROTO_TCP
    else:
        assert n <= port.max_frame and m.segments == 1 and m.wire == n
    if m.csum_start:
        assert m.csum_start + m.csum_offset + 2 <= n and m.csum_start <= r8152_codec.TCPHO_MAX
    opts1, opts2 = r8152_codec.offload_opts(memoryview(buf)[:n], m)  # never raises on what the port passes
    assert opts1 >> 27 == 0 or m.gso_type
    assert not port.pending or not m.gso_type  # segments cut here, or a carry, are never a device super-frame


def test_valid_input_reaches_the_driver_with_what_the_device_must_do(pair):
    ours, peer = pair
    port = _port(ours)
    hdr, frame = superframe(5000, 1448)
    peer.send(hdr + frame)
    n, buf = _read(port, READ_MAX)
    m = port.meta
    assert (n, m.gso_type, m.mss, m.segments, m.csum_start) == (len(frame), gso.GSO_TCPV4, 1448, 4, 34)
    assert bytes(buf[:n]) == frame and port.device_tso == 1
    hdr, frame = udp_partial(100, v6=True)
    peer.send(hdr + frame)
    n, buf = _read(port, READ_MAX)
    assert (n, port.meta.gso_type, port.meta.csum_start, port.meta.csum_offset, port.meta.v6) == (
        len(frame), 0, 54, 6, True)
    assert port.device_csum == 1 and port.csum_completed == 0


def test_without_the_devices_checksum_engine_it_is_completed_here(pair):
    ours, peer = pair
    port = _port(ours, gso.TUN_F_TSO4)  # not offered that way by any driver; the port still copes
    hdr, frame = udp_partial(100)
    peer.send(hdr + frame)
    n, buf = _read(port, READ_MAX)
    assert n == len(frame) and port.meta.csum_start == 0 and port.csum_completed == 1
    assert bytes(buf[:n]) != frame  # the checksum field was filled in


def test_a_frame_longer_than_the_room_is_carried_whole(pair):
    ours, peer = pair
    port = _port(ours)
    hdr, frame = superframe(9000, 1448)
    peer.send(hdr + frame)
    buf = bytearray(READ_MAX)
    assert port.read_into(memoryview(buf)[:3000]) == CARRIED and port.meta.gso_type == 0
    assert port.next_segment(memoryview(buf)) == len(frame) and bytes(buf[: len(frame)]) == frame
    assert port.meta.gso_type == gso.GSO_TCPV4 and not port.pending
    peer.send(hdr + frame)
    assert port.read_into(memoryview(buf)[:3000]) == CARRIED
    assert port.drop_pending() == 1 and port._carried_hdr is None


def test_a_superframe_longer_than_the_chip_takes_is_cut_here(pair):
    """A kernel that kept a larger gso_max_size (or forwards a larger GRO packet) hands over up to 64 KiB:
    read whole, cut here, the segments sent as plain frames; an over-long plain frame is dropped."""
    ours, peer = pair
    port = _port(ours)
    hdr, frame = superframe(40000, 1448)
    peer.send(hdr + frame)
    n, buf = _read(port, 3000)
    assert n == 14 + 20 + 20 + 1448 and port.meta.gso_type == 0 and len(port.pending) == 27
    assert (port.tso_superframes, port.tso_segments, port.device_tso) == (1, 28, 0)
    port.drop_pending()
    peer.send(vnet() + bytes(20000))
    assert _read(port, READ_MAX)[0] == 0 and port.stats.tx_dropped == 1


def test_arbitrary_input_never_raises_and_what_passes_is_sound(pair):
    ours, peer = pair
    port = _port(ours)
    rng = random.Random(1605)
    passed = 0
    for i in range(3000):
        hdr, frame = _valid(rng)
        if i % 4:
            hdr, frame = _mutate(rng, hdr, frame)
        peer.send(hdr + frame)
        n, buf = _read(port, rng.choice((1515, 4000, 9000, READ_MAX)))
        _check(port, n, buf)
        while port.pending:
            n = port.next_segment(memoryview(buf))
            _check(port, n, buf)
        passed += n > 0
    st = port.stats
    assert passed > 1000 and st.tx_dropped > 100, (passed, st.tx_dropped)
    assert port.device_tso > 100 and port.device_csum > 100 and port.offload_dropped > 50
