"""The C TX pump for one frame per transfer (usbnetd.native FrameTx) where the Python side decides how it is used:
the framing constants both sides name, which RNDIS devices get the pump, and the constructor's refusals.

What FrameTx sends, frame by frame, against the Python pieces (OneFramePerTransfer, RndisDriver over RndisBatch,
TapPort, BulkPipe, DataPath._on_tx) is the differential fuzz target fuzz/native_frame_tx.py (its seeds and a
short run in tests/unit/test_native_fuzz_short.py); the core tier runs ECM and the CDC subset through it.
"""

from __future__ import annotations

import os
import socket
import types

import pytest

from usbnetd import native
from usbnetd.protocols import rndis_codec as rc
from usbnetd.protocols.driver import FRAME_TX_PLAIN, FRAME_TX_RNDIS
from usbnetd.protocols.rndis import RndisDriver

needs_native = pytest.mark.skipif(not native.AVAILABLE, reason=f"the C fast path is not available: {native.WHY_NOT}")


@needs_native
def test_the_framing_constants_are_the_c_modules():
    assert native.frametx.FRAMING_PLAIN == FRAME_TX_PLAIN
    assert native.frametx.FRAMING_RNDIS == FRAME_TX_RNDIS


@needs_native
@pytest.mark.parametrize("framing", [-1, 2, 99])
def test_an_unknown_framing_is_refused(framing):
    a, b = socket.socketpair()
    try:
        with pytest.raises(ValueError, match="framing"):
            native.FrameTx(a.fileno(), 0, 1514, 512, framing)
    finally:
        a.close()
        b.close()


@needs_native
def test_framing_defaults_to_plain_and_is_readable():
    a, b = socket.socketpair()
    try:
        assert native.FrameTx(a.fileno(), 0, 1514, 512).framing == FRAME_TX_PLAIN
        assert native.FrameTx(a.fileno(), 0, 1514, 512, FRAME_TX_RNDIS).framing == FRAME_TX_RNDIS
    finally:
        a.close()
        b.close()


def rndis(max_packets: int, max_transfer: int, maxpacket: int, max_frame: int = 1514):
    """Just what RndisDriver.native_frame_tx reads: the batch bind() made, and max_frame."""
    return types.SimpleNamespace(_batch=rc.RndisBatch(max_packets, max_transfer, 0, maxpacket), max_frame=max_frame)


def test_rndis_one_packet_per_transfer_gets_the_pump():
    # f_rndis's answer: one packet, 1580 bytes (MTU 1500 + 14 + 44 + 22)
    assert RndisDriver.native_frame_tx(rndis(1, 1580, 512)) == (1514, 512, FRAME_TX_RNDIS)
    # the smallest transfer that still holds a whole max_frame after the header and the pad byte
    assert RndisDriver.native_frame_tx(rndis(1, 1514 + 44 + 1, 64)) == (1514, 64, FRAME_TX_RNDIS)


@pytest.mark.parametrize("packets,size,maxpacket,why", [
    (2, 16384, 512, "the device batches: RndisBatch packs several messages per transfer"),
    (1, 1580, 0, "no wMaxPacketSize: the ZLP flag, not the pad byte"),
])
def test_other_rndis_devices_keep_python_framing(packets, size, maxpacket, why):
    assert RndisDriver.native_frame_tx(rndis(packets, size, maxpacket)) is None, why


def test_rndis_pump_needs_room_for_max_frame():
    d = rndis(1, 1580, 512, max_frame=1580 - 45 + 1)
    assert RndisDriver.native_frame_tx(d) is None


@needs_native
def test_rndis_frame_with_pad_byte_through_the_c_pump():
    """One frame of 468 bytes: with the 44-byte header it ends on a 512-byte packet boundary, so one zero byte
    follows, and no ZLP is asked for; the header's fields as [MS-RNDIS] 2.2.14 and RndisBatch write them."""
    import ctypes

    from usb1 import libusb1

    libusb1.loadLibrary()
    ptr = libusb1.libusb_alloc_transfer(0)
    assert ptr
    sent: list[tuple[bytes, int]] = []

    def submit(address: int) -> int:
        s = libusb1.libusb_transfer.from_address(address)
        sent.append((ctypes.string_at(s.buffer, s.length), s.flags))
        return 0

    fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
    submit_c, cancel_c = fn(submit), fn(lambda a: 0)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        os.set_blocking(a.fileno(), False)
        pump = native.FrameTx(a.fileno(), 0, 1514, 512, FRAME_TX_RNDIS)
        pump.arm(ctypes.cast(submit_c, ctypes.c_void_p).value, ctypes.cast(cancel_c, ctypes.c_void_p).value,
                 [ctypes.addressof(ptr.contents)])
        frame = bytes(range(256)) + bytes(212)
        b.send(frame)
        assert pump.fill(8) == (1, 0)  # one frame read; the one transfer is taken, so no further read
        (data, flags), = sent
        ref = bytearray(600)
        batch = rc.RndisBatch(1, 1580, 0, 512)
        batch.begin(memoryview(ref))
        assert batch.add(frame)
        n = batch.finish()
        assert n == 513 and not batch.zlp
        assert data == bytes(ref[:n])
        assert data[:16] == (1).to_bytes(4, "little") + (512).to_bytes(4, "little") + \
            (36).to_bytes(4, "little") + (468).to_bytes(4, "little")
        assert data[44:512] == frame and data[512] == 0
        assert not flags & (1 << 3)  # LIBUSB_TRANSFER_ADD_ZERO_PACKET
        # complete it as libusb would, then give the transfer back
        s = ptr.contents
        s.status, s.actual_length = 0, s.length
        s.callback(ptr)
        pump.disarm()
    finally:
        a.close()
        b.close()
        libusb1.libusb_free_transfer(ptr)
