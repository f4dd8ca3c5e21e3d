"""CDC descriptor, MAC, filter and notification parsing (no USB needed)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usbnetd.core.stats import Stats
from usbnetd.netdev.tap import mac_to_str
from usbnetd.protocols import cdc

# Hand-written from CDC 1.2 / ECM 1.2 / NCM 1.0 functional descriptor layouts.
HEADER = bytes.fromhex("05 24 00 10 01")  # Header, bcdCDC 1.10
UNION = bytes.fromhex("05 24 06 00 01")  # Union: control 0, data 1
ETHERNET = bytes.fromhex("0d 24 0f 04 00 00 00 00 ea 05 00 00 00")  # iMAC 4, max segment 1514
NCM = bytes.fromhex("06 24 1a 00 01 21")  # bcdNcmVersion 1.00, caps: filter | 8-byte input size
ENDPOINT = bytes.fromhex("07 05 83 03 10 00 09")  # a standard endpoint descriptor mixed in


def test_ecm_block() -> None:
    f = cdc.parse_cdc_functional(HEADER + UNION + ETHERNET)
    assert f.header_bcd == 0x0110
    assert f.union_control == 0
    assert f.union_subordinates == (1,)
    assert f.data_interface == 1
    assert f.ethernet == cdc.EthernetDescriptor(
        imac_index=4, statistics=0, max_segment_size=1514, mc_filters=0, mc_imperfect=False, power_filters=0
    )
    assert f.ncm is None
    assert f.malformed == 0


def test_ncm_block_with_foreign_descriptors() -> None:
    f = cdc.parse_cdc_functional(ENDPOINT + HEADER + UNION + ETHERNET + NCM + ENDPOINT)
    assert f.ncm == cdc.NcmDescriptor(bcd_version=0x0100, capabilities=0x21)
    assert f.ncm.capabilities & cdc.NCM_NCAP_ETH_FILTER
    assert f.ethernet is not None and f.ethernet.max_segment_size == 1514
    assert f.union_subordinates == (1,)
    assert f.malformed == 0


def test_ethernet_fields() -> None:
    eth = bytes([13, 0x24, 0x0F, 3]) + struct.pack("<IHHB", 0x1234, 1500, 0x8000 | 16, 2)
    e = cdc.parse_cdc_functional(eth).ethernet
    assert e == cdc.EthernetDescriptor(3, 0x1234, 1500, 16, True, 2)


def test_union_with_several_subordinates_and_duplicates() -> None:
    f = cdc.parse_cdc_functional(bytes.fromhex("07 24 06 02 03 04 05") + bytes.fromhex("05 24 06 09 09"))
    assert f.union_control == 2
    assert f.union_subordinates == (3, 4, 5)


def test_empty() -> None:
    f = cdc.parse_cdc_functional(b"")
    assert f == cdc.CdcFunctional(None, None, (), None, None, 0)
    assert f.data_interface is None


@pytest.mark.parametrize(
    ("blob", "malformed"),
    [
        (HEADER + b"\x00\x24", 1),  # bLength 0 stops the walk
        (HEADER + b"\x01", 1),  # lone byte
        (HEADER + bytes.fromhex("0d 24 0f 04 00"), 1),  # runs past the end
        (bytes.fromhex("05 24 0f 04 00") + UNION, 1),  # ethernet too short: ignored, walk goes on
        (bytes.fromhex("04 24 1a 00") + UNION, 1),  # ncm too short
        (bytes.fromhex("04 24 06 00") + ETHERNET, 1),  # union without subordinates
        (bytes.fromhex("03 24 00") + UNION, 1),  # header too short
        (bytes.fromhex("02 24") + UNION, 1),  # CS_INTERFACE without a subtype
    ],
)
def test_malformed(blob: bytes, malformed: int) -> None:
    f = cdc.parse_cdc_functional(blob)
    assert f.malformed == malformed


def test_malformed_keeps_what_came_before_and_after() -> None:
    f = cdc.parse_cdc_functional(bytes.fromhex("05 24 0f 04 00") + UNION + ETHERNET)
    assert f.union_subordinates == (1,)
    assert f.ethernet is not None
    f = cdc.parse_cdc_functional(HEADER + UNION + b"\x00\x00" + ETHERNET)
    assert f.union_control == 0 and f.ethernet is None and f.malformed == 1


def test_unknown_subtype_skipped() -> None:
    mdlm = bytes.fromhex("15 24 12 00 01") + b"\0" * 16
    f = cdc.parse_cdc_functional(bytes.fromhex("05 24 01 00 01") + mdlm)
    assert f.malformed == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_never_raises(blob: bytes) -> None:
    f = cdc.parse_cdc_functional(blob)
    assert f.malformed >= 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([HEADER, UNION, ETHERNET, NCM, ENDPOINT]), max_size=6), st.data())
def test_parse_truncated_valid_blocks(parts: list[bytes], data: st.DataObject) -> None:
    blob = b"".join(parts)
    cut = data.draw(st.integers(0, len(blob)))
    f = cdc.parse_cdc_functional(blob[:cut])
    assert f.malformed in (0, 1)


# --- MAC ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "mac"),
    [
        ("0200DEADBEEF", bytes.fromhex("0200deadbeef")),
        ("a0cec8123456", bytes.fromhex("a0cec8123456")),
        ("0200deadbee", None),
        ("0200deadbeef0", None),
        ("02:00:de:ad:be", None),
        ("0200DEADBEEG", None),
        (" 200deadbeef", None),
        ("0200deadbe f", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_mac_string(s: str | None, mac: bytes | None) -> None:
    assert cdc.parse_mac_string(s) == mac


def test_random_local_mac() -> None:
    seen = set()
    for _ in range(200):
        mac = cdc.random_local_mac()
        assert len(mac) == 6
        assert mac[0] & 0x02  # locally administered
        assert not mac[0] & 0x01  # unicast
        seen.add(mac)
    assert len(seen) > 190


def test_mac_to_str() -> None:
    assert mac_to_str(bytes.fromhex("0200deadbeef")) == "02:00:de:ad:be:ef"


# --- filters ------------------------------------------------------------------------------------------


def test_packet_filter_bits() -> None:
    base = cdc.PACKET_TYPE_DIRECTED | cdc.PACKET_TYPE_BROADCAST
    assert cdc.packet_filter_bits(False, False, False) == base == 0x0C
    assert cdc.packet_filter_bits(True, False, False) == base | 0x01
    assert cdc.packet_filter_bits(False, True, False) == base | 0x02
    assert cdc.packet_filter_bits(False, False, True) == base | 0x10
    assert cdc.packet_filter_bits(True, True, True) == 0x1F


def test_multicast_filter_payload() -> None:
    a = bytes.fromhex("01005e000001")
    b = bytes.fromhex("333300000001")
    assert cdc.multicast_filter_payload([a, b]) == a + b
    assert cdc.multicast_filter_payload([]) == b""
    with pytest.raises(ValueError):
        cdc.multicast_filter_payload([b"\x01\x02"])


def test_constants() -> None:
    assert (cdc.CLASS_COMM, cdc.CLASS_DATA, cdc.CLASS_VENDOR, cdc.CLASS_WIRELESS, cdc.CLASS_MISC) == (
        0x02,
        0x0A,
        0xFF,
        0xE0,
        0xEF,
    )
    assert (cdc.SUBCLASS_ECM, cdc.SUBCLASS_NCM, cdc.SUBCLASS_EEM, cdc.SUBCLASS_SUBSET, cdc.SUBCLASS_ACM) == (
        0x06,
        0x0D,
        0x0C,
        0x0A,
        0x02,
    )
    assert cdc.CS_INTERFACE == 0x24
    assert (cdc.CDC_HEADER_TYPE, cdc.CDC_UNION_TYPE) == (0x00, 0x06)
    assert (cdc.CDC_ETHERNET_TYPE, cdc.CDC_NCM_TYPE) == (0x0F, 0x1A)
    assert (cdc.CDC_MDLM_TYPE, cdc.CDC_MDLM_DETAIL_TYPE) == (0x12, 0x13)
    assert cdc.SET_ETHERNET_MULTICAST_FILTERS == 0x40
    assert cdc.SET_ETHERNET_PACKET_FILTER == 0x43
    assert cdc.GET_ETHERNET_STATISTIC == 0x44
    assert cdc.GET_NTB_PARAMETERS == 0x80 and cdc.SET_CRC_MODE == 0x8A
    assert (cdc.REQ_TYPE_CLASS_OUT, cdc.REQ_TYPE_CLASS_IN) == (0x21, 0xA1)
    assert (cdc.NETWORK_CONNECTION, cdc.RESPONSE_AVAILABLE, cdc.CONNECTION_SPEED_CHANGE) == (0x00, 0x01, 0x2A)


# --- notifications ------------------------------------------------------------------------------------


def _hdr(code: int, value: int = 0, index: int = 0, wlength: int = 0, req: int = 0xA1) -> bytes:
    return struct.pack("<BBHHH", req, code, value, index, wlength)


def test_network_connection() -> None:
    stats = Stats()
    p = cdc.NotificationParser(stats)
    n = p.feed(_hdr(0x00, 1), 8)
    assert n is not None and n.kind == cdc.NETWORK_CONNECTION and n.connected is True
    n = p.feed(memoryview(_hdr(0x00, 0)), 8)
    assert n is not None and n.connected is False and n.up_bps is None
    assert p.count == 2 and p.errors == 0
    assert stats.notifications == 2 and stats.notification_errors == 0


def test_response_available() -> None:
    n = cdc.NotificationParser().feed(_hdr(0x01), 8)
    assert n == cdc.Notification(cdc.RESPONSE_AVAILABLE)


def test_speed_change_in_one_transfer() -> None:
    p = cdc.NotificationParser()
    # data: DLBitRate (device->host) first, then ULBitRate
    n = p.feed(_hdr(0x2A, wlength=8) + struct.pack("<II", 1_000_000_000, 100_000_000), 16)
    assert n == cdc.Notification(cdc.CONNECTION_SPEED_CHANGE, up_bps=100_000_000, down_bps=1_000_000_000)
    assert not p.pending


def test_speed_change_split() -> None:
    stats = Stats()
    p = cdc.NotificationParser(stats)
    assert p.feed(_hdr(0x2A, wlength=8), 8) is None
    assert p.pending and p.errors == 0
    n = p.feed(struct.pack("<II", 5_000_000_000 & 0xFFFFFFFF, 2_500_000_000), 8)
    assert n is not None and n.down_bps == 5_000_000_000 & 0xFFFFFFFF and n.up_bps == 2_500_000_000
    assert not p.pending
    assert stats.notifications == 1 and p.errors == 0
    # parser is back in sync
    assert p.feed(_hdr(0x00, 1), 8) == cdc.NOTIFICATION_CONNECTED


def test_length_not_buffer_size() -> None:
    buf = bytearray(64)
    buf[:16] = _hdr(0x2A, wlength=8) + struct.pack("<II", 1, 2)
    p = cdc.NotificationParser()
    assert p.feed(buf, 8) is None  # only the header arrived, whatever the buffer holds
    assert p.pending
    assert p.feed(buf, 3) is None  # short continuation: error, resync
    assert p.errors == 1 and not p.pending


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\xa1\x00\x01",
        _hdr(0x00, 1, req=0x21),  # wrong bmRequestType
        _hdr(0x2A, wlength=4) + b"\0" * 8,  # speed change announcing fewer than 8 bytes
        _hdr(0x2A, wlength=8) + b"\0" * 4,  # header plus partial data
    ],
)
def test_malformed_notifications(blob: bytes) -> None:
    stats = Stats()
    p = cdc.NotificationParser(stats)
    assert p.feed(blob, len(blob)) is None
    assert p.errors == 1 and p.unknown == 0 and not p.pending
    assert stats.notification_errors == 1 and stats.notifications == 0


def test_unknown_notification() -> None:
    p = cdc.NotificationParser()
    assert p.feed(_hdr(0x20, wlength=2) + b"\0\0", 10) is None
    assert p.unknown == 1 and p.errors == 1


def test_length_larger_than_buffer_is_clamped() -> None:
    p = cdc.NotificationParser()
    assert p.feed(b"\xa1\x00", 100) is None
    assert p.errors == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=24), st.integers(-4, 40)), max_size=8))
def test_feed_never_raises(feeds: list[tuple[bytes, int]]) -> None:
    stats = Stats()
    p = cdc.NotificationParser(stats)
    for blob, length in feeds:
        before = (p.errors, p.unknown, p.count)
        n = p.feed(blob, length)
        after = (p.errors, p.unknown, p.count)
        assert all(a >= b for a, b in zip(after, before, strict=True))
        assert n is None or isinstance(n, cdc.Notification)
    assert stats.notifications == p.count and stats.notification_errors == p.errors
