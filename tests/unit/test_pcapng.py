"""The pcapng and usbmon encoder (core/pcapng.py), checked byte by byte against the specifications rather
than against its own reader: draft-ietf-opsawg-pcapng (block layout, option padding, lengths) and the
64-byte usbmon header of Linux Documentation/usb/usbmon.rst (field offsets). The tracer's bound and count
(core/trace.py) and the transport wrappers are checked here too."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usbnetd.core import pcapng as P
from usbnetd.core.pool import PacketBufferPool
from usbnetd.core.trace import ETH, USB, Tracer, header, trace_transport


def u32(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0]


def check_block(b: bytes, btype: int) -> None:
    assert u32(b, 0) == btype
    assert u32(b, 4) == len(b) and u32(b, len(b) - 4) == len(b), "both length fields give the block's size"
    assert len(b) % 4 == 0


def test_section_header_layout():
    b = P.section_header(application="usbnetd", comment="c")
    check_block(b, 0x0A0D0D0A)
    assert u32(b, 8) == 0x1A2B3C4D
    assert struct.unpack_from("<HHq", b, 12) == (1, 0, -1)
    # options: comment "c" (1 byte, padded to 4), shb_userappl "usbnetd" (7, padded to 8), end of options
    assert b[24:32] == struct.pack("<HH", 1, 1) + b"c\0\0\0"
    assert b[32:44] == struct.pack("<HH", 4, 7) + b"usbnetd\0"
    assert b[44:48] == bytes(4)
    assert len(b) == 52


@pytest.mark.parametrize("n", range(9))
def test_an_option_value_is_padded_to_four_bytes_and_its_length_is_not(n):
    opt = P.option(2, b"x" * n)
    assert struct.unpack_from("<HH", opt) == (2, n)
    assert len(opt) == 4 + (n + 3) // 4 * 4
    assert opt[4 + n :] == bytes(len(opt) - 4 - n)


def test_interface_description_layout():
    b = P.interface_description(P.LINKTYPE_USB_LINUX_MMAPPED, 4096, name="usb0")
    check_block(b, 1)
    assert struct.unpack_from("<HHI", b, 8) == (220, 0, 4096)
    assert b[16:24] == struct.pack("<HH", 2, 4) + b"usb0"
    assert b[24:32] == struct.pack("<HH", 9, 1) + b"\x06\0\0\0", "if_tsresol 6: microseconds"
    assert b[32:36] == bytes(4)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 63, 64, 65])
def test_enhanced_packet_layout_and_padding(n):
    data = bytes(range(n))
    ts = (7 << 32) | 12345
    b = P.enhanced_packet(1, ts, data, n + 100, P.EPB_OUTBOUND)
    check_block(b, 6)
    assert struct.unpack_from("<IIIII", b, 8) == (1, 7, 12345, n, n + 100)
    padded = (n + 3) // 4 * 4
    assert b[28 : 28 + n] == data and b[28 + n : 28 + padded] == bytes(padded - n)
    assert b[28 + padded : 28 + padded + 12] == struct.pack("<HHIHH", 2, 4, 0b10, 0, 0)
    assert len(b) == 28 + padded + 12 + 4


def test_interface_statistics_carry_received_and_dropped():
    b = P.interface_statistics(1, 5, start=1, end=5, received=10, dropped=3, comment="x")
    check_block(b, 5)
    cap = P.parse(P.section_header() + P.interface_description(1, 100) + P.interface_description(1, 100) + b)
    assert cap.statistics == [{"interface": 1, "timestamp": 5, "received": 10, "dropped": 3, "comment": "x"}]


def test_usbmon_header_offsets():
    setup = bytes([0x21, 0x43, 0x0C, 0, 0, 0, 0, 0])
    h = P.usbmon_header(0x1122334455667788, P.URB_SUBMIT, P.XFER_CONTROL, 0x00, 5, 3, 1_700_000_000_123_456,
                        -115, 8, 0, setup)
    assert len(h) == 64
    assert u32(h, 0) == 0x55667788 and u32(h, 4) == 0x11223344
    assert h[8:12] == b"S" + bytes([2, 0, 5])
    assert struct.unpack_from("<H", h, 12)[0] == 3
    assert h[14] == 0 and h[15] == 0, "flag_setup 0: the setup packet is there"
    assert struct.unpack_from("<qiiII", h, 16) == (1_700_000_000, 123_456, -115, 8, 0)
    assert h[40:48] == setup
    ih = P.usbmon_header(1, P.URB_COMPLETE, P.XFER_INTERRUPT, 0x83, 1, 1, 0, 0, 16, 16, interval=32)
    assert ih[14] == ord("-") and struct.unpack_from("<i", ih, 48)[0] == 32


@given(st.lists(st.binary(max_size=70), max_size=8), st.integers(0, 2**64 - 1))
def test_blocks_split_at_any_point_come_back_whole(payloads, ts):
    data = P.section_header() + P.interface_description(1, 262144)
    data += b"".join(P.enhanced_packet(0, ts, p, len(p)) for p in payloads)
    for cut in range(0, len(data) + 1, 7):
        blocks, used = P.split_blocks(data[:cut])
        assert used <= cut and data[:used] == b"".join(
            P._BLOCK_HEAD.pack(b.type, len(b.body) + 12) + b.body + struct.pack("<I", len(b.body) + 12)
            for b in blocks)
    cap = P.parse(data)
    assert [p.data for p in cap.packets] == payloads and all(p.timestamp == ts for p in cap.packets)


def test_a_corrupt_block_is_a_format_error():
    b = bytearray(P.enhanced_packet(0, 0, b"abc", 3))
    b[-1] ^= 1
    with pytest.raises(P.FormatError):
        P.split_blocks(b)


def test_trace_header_has_two_interfaces_ethernet_then_usb():
    cap = P.parse(header("usb0", "3-1", "ncm", 1000, "usbnetd"))
    assert [(i["linktype"], i["snaplen"]) for i in cap.interfaces] == [(1, 1000), (220, 1000)]
    assert cap.interfaces[0]["options"][P.IF_NAME] == [b"usb0"]


def test_the_tracer_cuts_to_the_snap_length_and_keeps_the_original_length():
    t = Tracer(snaplen=100)
    t.frame(bytes(150), inbound=True)
    t.urb(1, P.URB_COMPLETE, P.XFER_BULK, 0x81, 0, 500, bytes(500))
    cap = P.parse(header("x", "y", "ncm", 100, "t") + b"".join(t.take(1 << 20)))
    eth, usb = cap.packets
    assert (len(eth.data), eth.original_length, eth.flags) == (100, 150, P.EPB_INBOUND)
    assert (len(usb.data), usb.original_length) == (100, 564)
    assert struct.unpack_from("<II", usb.data, 32) == (500, 36), "urb length whole, len_cap what follows"


def test_the_tracer_drops_and_counts_past_its_bound_and_stops_at_its_count():
    t = Tracer(limit_bytes=1000)
    for _ in range(20):
        t.frame(bytes(100), inbound=False)
    assert t.queued <= 1000 and t.dropped[ETH] > 0 and t.recorded[ETH] + t.dropped[ETH] == 20
    taken = t.take(1 << 20)
    assert t.queued == 0 and len(taken) == t.recorded[ETH]
    t2 = Tracer(count=2)
    for _ in range(5):
        t2.frame(b"x" * 60, True)
    assert t2.done and t2.recorded == [2, 0] and t2.dropped == [0, 0]


class _FakeTransport:
    def __init__(self):
        self.calls = []

    def submit_rx(self, packet, length):
        return True

    def submit_tx(self, packet, length, zlp):
        return False  # busy: not a URB, nothing recorded

    def submit_control(self, rt, req, value, index, data, callback, timeout_ms=5000):
        self.calls.append(callback)
        return True

    def control_in(self, rt, req, value, index, length, timeout_ms=1000):
        return b"\x01\x02"

    def control_out(self, rt, req, value, index, data, timeout_ms=1000):
        return None


def test_transport_wrappers_record_and_go_away():
    tr = _FakeTransport()
    t = Tracer()
    pool = PacketBufferPool(2, 64)
    p = pool.allocate()
    untrace = trace_transport(tr, t)
    assert tr.submit_rx(p, 64) is True
    assert tr.submit_tx(p, 10, False) is False
    assert tr.control_in(0xA1, 0x80, 0, 0, 2) == b"\x01\x02"
    tr.control_out(0x21, 0x43, 0x0C, 0, b"")
    replies = []
    assert tr.submit_control(0xA1, 0x01, 0, 0, 4, lambda s, d: replies.append((s, d)))
    tr.calls[0](0, b"abcd")
    assert replies == [(0, b"abcd")]
    recs = [P.USBMON_HEADER.unpack_from(b, 8 + 20) for b in t.take(1 << 20)]
    kinds = [(chr(r[1]), r[2], r[3]) for r in recs]
    assert kinds == [("S", 3, 0x81), ("S", 2, 0x80), ("C", 2, 0x80), ("S", 2, 0x00), ("C", 2, 0x00),
                     ("S", 2, 0x80), ("C", 2, 0x80)]
    untrace()
    assert not {"submit_rx", "submit_tx", "submit_control", "control_in", "control_out"} & set(vars(tr))
    assert t.recorded[USB] == 7
