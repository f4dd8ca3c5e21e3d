"""RNDIS RX across transfer boundaries: a device that streams messages without a short packet or ZLP
(QEMU's usb-net) fills transfers to the brim and splits a message between two of them."""

from __future__ import annotations

import os

import pytest
from codec_helpers import ListSink

from usbnetd.core.stats import Stats
from usbnetd.protocols import rndis_codec as rc
from usbnetd.protocols.driver import Binding, Options
from usbnetd.protocols.rndis import RndisDriver
from usbnetd.usb.descriptors import Endpoint


def driver(rx_size: int) -> RndisDriver:
    b = Binding(1, 0, 1, 0, Endpoint(0x81, 2, 64, 0), Endpoint(0x02, 2, 64, 0), None, None)
    d = RndisDriver(None, b, Stats(), Options())  # type: ignore[arg-type]  # rx_decode needs no transport
    d.rx_size = rx_size
    return d


def frames(n: int, seed: int) -> list[bytes]:
    rnd = __import__("random").Random(seed)
    return [bytes([i & 0xFF]) * 12 + os.urandom(rnd.randint(2, 1500)) for i in range(n)]


def feed(d: RndisDriver, stream: bytes, chunk: int) -> list[bytes]:
    sink = ListSink()
    for pos in range(0, len(stream), chunk):
        buf = bytearray(chunk)
        part = stream[pos : pos + chunk]
        buf[: len(part)] = part
        sink.view = memoryview(buf)
        d.rx_decode(sink.view, len(part), sink)
    return sink.frames


@pytest.mark.parametrize("chunk", [512, 1024, 1600, 4096, 16384])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_messages_split_across_full_transfers_are_reassembled(chunk, seed):
    sent = frames(60, seed)
    stream = b"".join(_msg(f) for f in sent)
    d = driver(chunk)
    got = feed(d, stream, chunk)
    assert got == sent[: len(got)]
    # Everything that fits into whole transfers arrives; at most the message cut by the final chunk waits.
    assert len(got) >= len(sent) - 1
    assert d.stats.rx_errors == 0


def _msg(frame: bytes) -> bytes:
    buf = bytearray(rc.PACKET_HEADER_LEN + len(frame))
    rc.write_packet_header(buf, 0, len(frame))
    buf[rc.PACKET_HEADER_LEN :] = frame
    return bytes(buf)


def test_short_transfer_ending_mid_message_is_an_error_not_a_carry():
    d = driver(16384)
    msg = _msg(bytes(range(256)) * 4)
    view = memoryview(bytearray(msg[:600]) + bytearray(16384 - 600))
    sink = ListSink(view)
    d.rx_decode(view, 600, sink)
    assert sink.frames == [] and d.stats.rx_errors == 1 and d.stats.rx_frame_errors == 1
    assert d._carry_len == 0


@pytest.mark.parametrize("maxpacket,size", [(512, 2048), (1024, 2048), (64, 1600)])
def test_rx_transfers_are_sized_as_rndis_host_sizes_its_urbs(maxpacket, size):
    # generic_rndis_bind: hard_mtu (1500 + 14 + 44) + maxpacket + 1, rounded down to whole packets
    from usbnetd.protocols.rndis import rx_transfer_size

    assert rx_transfer_size(maxpacket) == size
    assert size % maxpacket == 0 and size >= rc.PACKET_HEADER_LEN + 1514


def test_a_device_batching_16k_into_our_smaller_transfers_loses_nothing():
    # A device that ignores our transfer size and sends 16 KiB batches without a short packet fills our
    # 2048-byte transfers back to back; every message that straddles two of them is carried.
    from usbnetd.protocols.rndis import rx_transfer_size

    size = rx_transfer_size(512)
    want = frames(60, 7)
    stream = b"".join(rc.build_transfer(want[i : i + 10], 10, 16384) for i in range(0, 60, 10))
    d = driver(size)
    assert feed(d, stream, size) == want
    assert d.stats.rx_errors == 0
