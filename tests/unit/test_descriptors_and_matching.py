"""Standard descriptor parsing, protocol matching through the CDC Union, DEVICE arguments."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usbnetd.app.discovery import BadDevice, parse_device_spec
from usbnetd.protocols import NoDriver, choose
from usbnetd.usb.descriptors import XFER_BULK, parse_configuration, parse_descriptor_blob
from usbnetd.usb.sim import build_config_descriptor


# A composite device written by hand from the USB 2.0 and CDC 1.2 specs: interface 0 is a vendor function
# (think ADB) that happens to carry bulk endpoints, then a CDC ECM control interface 1 whose Union points at
# data interface 3, and an unrelated interface 2 in between — matching must follow the Union, not numbers.
def _iface(num, alt, neps, cls, sub, proto):
    return bytes([9, 4, num, alt, neps, cls, sub, proto, 0])


def _ep(addr, attrs, mps, interval=0):
    return bytes([7, 5, addr, attrs]) + struct.pack("<H", mps) + bytes([interval])


def composite_ecm() -> bytes:
    body = _iface(0, 0, 2, 0xFF, 0x42, 0x01) + _ep(0x81, 2, 512) + _ep(0x01, 2, 512)
    body += _iface(1, 0, 1, 0x02, 0x06, 0x00)
    body += bytes([5, 0x24, 0x00, 0x20, 0x01]) + bytes([5, 0x24, 0x06, 1, 3])
    body += bytes([13, 0x24, 0x0F, 5]) + struct.pack("<IHHB", 0, 1514, 0, 0)
    body += _ep(0x83, 3, 16, 8)
    body += _iface(2, 0, 0, 0xFF, 0, 0)
    body += _iface(3, 0, 0, 0x0A, 0, 0) + _iface(3, 1, 2, 0x0A, 0, 0) + _ep(0x82, 2, 512) + _ep(0x02, 2, 512)
    return bytes([9, 2]) + struct.pack("<H", 9 + len(body)) + bytes([4, 1, 0, 0x80, 250]) + body


def test_parse_composite_configuration():
    config, used = parse_configuration(composite_ecm())
    assert used == len(composite_ecm())
    assert config.value == 1 and config.malformed == 0
    assert [i.number for i in config.interfaces] == [0, 1, 2, 3]
    data = config.interface(3)
    assert [a.alternate for a in data.alts] == [0, 1]
    assert data.alt(1).endpoint(XFER_BULK, True).address == 0x82
    assert config.interface(1).alt(0).extra.startswith(bytes([5, 0x24, 0x00]))


def test_ecm_binds_through_the_union_not_the_first_bulk_pair():
    config, _ = parse_configuration(composite_ecm())
    driver, b = choose([config], active=1)
    assert driver.name == "ecm"
    assert (b.control, b.data, b.data_alt) == (1, 3, 1)
    assert (b.ep_in.address, b.ep_out.address, b.ep_int.address) == (0x82, 0x02, 0x83)
    assert b.functional.ethernet.imac_index == 5 and b.functional.ethernet.max_segment_size == 1514


def test_ncm_preferred_over_ecm_and_forced_choices():
    ncm, _ = parse_configuration(build_config_descriptor("ncm"))
    ecm, _ = parse_configuration(build_config_descriptor("ecm"))
    ecm = type(ecm)(2, ecm.iconfiguration, ecm.interfaces)
    driver, b = choose([ecm, ncm], active=2)
    assert (driver.name, b.configuration) == ("ncm", 1)  # NCM wins even over the active configuration
    driver, b = choose([ecm, ncm], active=1, protocol="ecm")
    assert (driver.name, b.configuration) == ("ecm", 2)
    with pytest.raises(NoDriver, match="no configuration 7"):
        choose([ecm, ncm], active=1, configuration=7)
    with pytest.raises(NoDriver, match="has no NCM function in any configuration"):
        choose([ecm], active=2, protocol="ncm")


def test_device_descriptor_blob_with_two_configurations():
    dev = bytes([18, 1, 0, 2, 0, 0, 0, 64]) + struct.pack("<HHH", 0x0525, 0xA4A2, 0x0100) + bytes([1, 2, 3, 2])
    ecm2 = bytearray(composite_ecm())
    ecm2[5] = 2
    dev_desc, configs = parse_descriptor_blob(dev + build_config_descriptor("ncm") + bytes(ecm2))
    assert (dev_desc.vendor, dev_desc.product, dev_desc.num_configurations) == (0x0525, 0xA4A2, 2)
    assert [c.value for c in configs] == [1, 2]


def test_truncated_and_lying_descriptors_are_counted_not_raised():
    raw = composite_ecm()
    config, _ = parse_configuration(raw[:40])  # wTotalLength says more than there is
    assert config is not None and config.malformed == 1
    bad = bytearray(raw)
    bad[9 + 9 + 7 + 7] = 0  # an interface descriptor with bLength 0
    config, _ = parse_configuration(bytes(bad))
    assert config.malformed == 1


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_parser_never_raises_on_arbitrary_bytes(data):
    parse_descriptor_blob(data)
    config, used = parse_configuration(data)
    assert 0 <= used <= len(data) or config is None
    if config is not None:
        try:
            choose([config], active=config.value)
        except NoDriver:
            pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_real_descriptors_never_crash_matching(data):
    raw = bytearray(data.draw(st.sampled_from([composite_ecm(), build_config_descriptor("ncm")])))
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    config, _ = parse_configuration(bytes(raw))
    if config is not None:
        try:
            choose([config], active=config.value)
        except NoDriver:
            pass


@pytest.mark.parametrize("text,kind", [("1-1", "busid"), ("3-2.4", "busid"), ("0525:a4a2", "vidpid"),
                                       ("0525:A4A2/SER123", "vidpid"), ("sim:ncm", "sim"), ("sim:ecm", "sim")])
def test_device_spec_accepts(text, kind):
    assert parse_device_spec(text).kind == kind
    assert str(parse_device_spec(text)).lower() == text.lower()


@pytest.mark.parametrize("text", ["", "1", "0-1", "1-0", "1-1.", "a-b", "525:a4a2", "0525:a4a2/", "sim:rndis",
                                  "../../etc", "1-1;reboot", "0525:a4a2/bad serial"])
def test_device_spec_rejects(text):
    with pytest.raises(BadDevice):
        parse_device_spec(text)
