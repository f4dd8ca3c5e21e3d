"""The iPhone tethering driver in the real service, against the bench emulator's phone model.

`ScriptedPhone` answers the vendor requests with `PhoneModel` from tests/vm/guest/ipheth_device.py, the same
model the kernel's ipheth runs against in the VM, and builds bulk IN transfers with the emulator's packers
(legacy frames, iOS NTBs); TX transfers are read back with the emulator's rule for the padded buffer. The data
path, pool, queues, TAP port, link state and reconciler are the real ones (fake.py).
"""

from __future__ import annotations

import pytest
from fake import turn
from vendor_fake import (
    ScriptedVendor,
    assert_bad_start,
    assert_silence_rule,
    config_descriptor,
    endpoint,
    load_emulator,
    start_vendor,
)

from usbnetd.protocols import choose
from usbnetd.protocols import ipheth as iph
from usbnetd.protocols import ipheth_codec as codec
from usbnetd.protocols.devices import BUILTIN
from usbnetd.protocols.driver import Options, Quirk
from usbnetd.usb.transport import TransportError

emu = load_emulator("ipheth_device")

PHONE_MAC = bytes.fromhex("02a1b2c3d4e5")
HOST = bytes.fromhex("02aabbccddee")


def phone_config(emulator: bool = False) -> bytes:
    """A phone's tethering configuration: PTP, usbmux, and interface 2 (FF/FD/01) whose alternate setting 1
    has the bulk pair, after an alternate setting 0 without endpoints (the bench's emulator: with the same
    pair, and fillers)."""
    pair = [endpoint(0x81, 2, 512), endpoint(0x02, 2, 512)]
    alt0 = pair + [endpoint(0x86, 2, 512), endpoint(0x07, 2, 512)] if emulator else []
    return config_descriptor((0, 0, (0x06, 0x01, 0x01), []), (1, 0, (0xFF, 0xFE, 0x02), []),
                             (2, 0, (0xFF, 0xFD, 0x01), alt0), (2, 1, (0xFF, 0xFD, 0x01), pair))


class ScriptedPhone(ScriptedVendor):
    def __init__(self, *, ncm_capable: bool = False, emulator: bool = False, stall_alt: bool = False,
                 mac: bytes = PHONE_MAC, **faults) -> None:
        super().__init__(phone_config(emulator), emu.VID, emu.PID, **faults)
        self.model = emu.PhoneModel(mac, ncm_capable=ncm_capable)
        self.stall_alt = stall_alt

    def set_alt(self, interface: int, alternate: int) -> None:
        super().set_alt(interface, alternate)
        if self.stall_alt and alternate:
            raise TransportError(f"cannot select alt setting {alternate} of interface {interface}: "
                                 "LIBUSB_ERROR_PIPE [-9]")

    def _in(self, request_type, request, value, index, length) -> bytes:
        data = self.model.request(request_type, request, index, length)
        if data is None:
            raise TransportError(f"control request 0x{request:02x} failed: pipe error (stall)")
        return data

    def _out(self, request_type, request, value, index, data) -> None:
        if self.model.request(request_type, request, index, len(data)) is None:
            raise TransportError(f"control request 0x{request:02x} failed: pipe error (stall)")


def start(t: ScriptedPhone, quirks: Quirk = Quirk.NONE, **kw):
    return start_vendor(t, "ipheth", Options(quirks=quirks), **kw)


def carrier_poll(svc) -> None:
    """The service's once-a-second driver poll now: the carrier check goes out, and at the next turn its
    answer comes back (and the driver's link event is applied)."""
    svc._driver_poll_at = 0.0
    turn(svc)
    turn(svc)


def test_the_device_table_names_the_kernels_ids_and_class_matching_leaves_the_phone_alone():
    ids = {(e.vendor, e.product) for e in BUILTIN if e.protocol == "ipheth"}
    assert {(0x05AC, p) for p in (0x1290, 0x1292, 0x1294, 0x1297, 0x129A, 0x129C, 0x12A0, 0x12A2, 0x12A6,
                                  0x12A8, 0x12AB)} == ids
    t = ScriptedPhone()
    with pytest.raises(Exception, match="no network function"):
        choose(t.identity.configurations, 1)
    _, binding = choose(t.identity.configurations, 1, protocol="ipheth")
    assert (binding.data, binding.data_alt, binding.ep_int, binding.control) == (2, 1, None, None)


def test_bring_up_reads_the_mac_selects_alt_1_and_waits_for_the_carrier():
    t = ScriptedPhone()
    svc, tap = start(t)
    assert tap.mac == PHONE_MAC and tap.mtu == 1500
    assert t.requests[0] == ("in", iph.CMD_GET_MACADDR, 0, 2, PHONE_MAC)
    assert not [r for r in t.requests if r[1] == iph.CMD_ENABLE_NCM], "no NCM mode unless the quirk asks"
    assert t.alts == [(2, 1)], "alt 1 only, as the kernel: never alt 0 first"
    d = svc.driver
    assert d.rx_size == 1536 and d.tx_size == 1514 and d.info()["mode"] == "legacy"
    assert tap.carrier is False, "no carrier until the phone says so"
    svc.stop()
    assert t.closed and (2, 0) in t.alts, "back to alt 0 at the end"


def test_a_phone_that_stalls_set_interface_is_driven_as_the_kernel_does(caplog):
    t = ScriptedPhone(stall_alt=True)
    svc, tap = start(t)
    assert t.alts == [(2, 1)] and "did not take alternate setting 1" in caplog.text
    carrier_poll(svc)
    t.complete_rx(emu.pack_legacy(PHONE_MAC + HOST + b"\x88\xb5" + bytes(46)))
    turn(svc)
    assert tap.carrier is True and len(tap.host_receive()) == 1
    svc.stop()


def test_a_setting_0_with_the_pair_is_used_as_it_is():
    """The bench's emulator: the pair on setting 0 too, so nothing is selected (FunctionFS cannot take 1)."""
    t = ScriptedPhone(emulator=True)
    _, binding = choose(t.identity.configurations, 1, protocol="ipheth")
    assert (binding.data, binding.data_alt) == (2, 0)
    svc, tap = start(t)
    assert t.alts == []
    svc.stop()
    assert t.alts == []


def test_carrier_follows_the_polled_carrier_check():
    t = ScriptedPhone()
    svc, tap = start(t)
    carrier_poll(svc)
    assert tap.carrier is True and svc.stats.notifications == 1
    assert t.requests[-1][:4] == ("in", iph.CMD_CARRIER_CHECK, 0, 2)
    carrier_poll(svc)
    assert tap.carrier_changes.count(True) == 1, "a repeated answer changes nothing"
    t.model.cable = False
    carrier_poll(svc)
    assert tap.carrier is False
    # The rule of "fix carrier detection in modes 1 and 4": a longer answer has the carrier in byte 1.
    t.model.request = lambda *a: b"\x03\x04\x00"
    carrier_poll(svc)
    assert tap.carrier is True
    t.model.request = lambda *a: b"\x04\x03"
    carrier_poll(svc)
    assert tap.carrier is False
    t.model.request = lambda *a: b""  # an empty answer is no answer
    carrier_poll(svc)
    assert svc.stats.notification_errors == 1 and tap.carrier is False
    svc.stop()


def test_rx_frames_behind_two_bytes_and_what_the_phone_sends_besides():
    t = ScriptedPhone()
    svc, tap = start(t)
    carrier_poll(svc)
    t.complete_rx(emu.START_FRAME)  # the 00 01 control frame: dropped, counted, no error
    t.complete_rx(b"")  # an empty transfer: nothing
    frames = [PHONE_MAC + HOST + b"\x88\xb5" + bytes([i]) * (46 + 300 * i) for i in range(5)]
    frames.append(HOST + PHONE_MAC + b"\x88\xb5" + bytes(1022 - 14))  # 2 + 1022 = 1024: the emulator pads it
    for f in frames:
        t.complete_rx(emu.pack_legacy(f))
    turn(svc)
    got = [f for _, f in tap.host_receive()]
    assert got[:5] == frames[:5] and got[5] == frames[5] + b"\0"
    assert svc.driver.info()["control_frames"] == 1 and svc.stats.rx_errors == 0
    t.complete_rx(b"\0\0" + bytes(10))  # shorter than an Ethernet header
    t.complete_rx(b"\0")
    turn(svc)
    assert svc.stats.rx_length_errors == 2 and svc.stats.rx_errors == 2 and not tap.host_receive()
    svc.stop()
    assert svc.datapath.pool.in_use == 0


def test_tx_is_one_frame_per_transfer_in_a_zero_padded_1514_byte_buffer():
    t = ScriptedPhone()
    svc, tap = start(t)
    carrier_poll(svc)
    sent = [HOST + PHONE_MAC + b"\x88\xb5" + bytes([n & 0xFF]) * (n - 14) for n in (60, 512, 1514)]
    ip = HOST + PHONE_MAC + b"\x08\x00" + bytes([0x45, 0, 0, 40]) + bytes(36)  # IPv4, total length 40
    for f in (*sent, ip):
        tap.host_send(f)
    svc.on_tap_readable()
    turn(svc)
    out = []
    while t.tx:
        _, data, zlp = t.tx[0]
        assert len(data) == codec.TX_BUFFER and not zlp
        out.append(t.complete_tx())
        turn(svc)
    for f, data in zip(sent, out, strict=False):
        assert data[: len(f)] == f and not any(data[len(f) :])
    assert out[3][: emu.frame_length(out[3])] == ip, "the phone finds the IP frame in the padding"
    assert svc.stats.tx_packets == 4
    svc.stop()


def test_mtu_and_mac():
    t = ScriptedPhone()
    svc, tap = start(t)
    d = svc.driver
    assert d.change_mtu(1514) is None and d.change_mtu(1400 + 14) is None
    assert "MTU 1500" in d.change_mtu(1515)
    tap.mac = HOST
    svc.link.reconciler.reconcile()
    turn(svc)
    assert svc.link.reconciler.mac == HOST
    assert not [r for r in t.requests if r[0] == "out"], "there is no request to tell the phone"
    assert d.apply_filter(True, False, []) == "the device has no packet filter"
    svc.stop()


def test_the_ncm_mode_of_newer_ios_with_the_quirk():
    t = ScriptedPhone(ncm_capable=True)
    svc, tap = start(t, Quirk.IPHETH_NCM)
    assert ("out", iph.CMD_ENABLE_NCM, 0, 2, b"") in t.requests and t.model.ncm
    d = svc.driver
    assert d.rx_size == 65536 and d.info()["mode"] == "ncm" and d.native_rx() == ("ntb", 1514)
    carrier_poll(svc)
    frames = [PHONE_MAC + HOST + b"\x88\xb5" + bytes([i]) * (46 + 70 * i) for i in range(21)]
    t.complete_rx(emu.pack_ntb(frames, 1))
    turn(svc)
    assert [f for _, f in tap.host_receive()] == frames and svc.stats.rx_errors == 0
    svc.stop()


def test_a_phone_without_the_ncm_mode_stays_in_the_legacy_mode():
    t = ScriptedPhone(ncm_capable=False)
    svc, tap = start(t, Quirk.IPHETH_NCM)
    assert svc.driver.info()["mode"] == "legacy" and not t.model.ncm
    svc.stop()


@pytest.mark.parametrize("fault, why", [
    ("garbage", "iPhone bring-up failed: the phone answered its MAC address with 5 bytes"),
    ("stall", "iPhone bring-up failed: control request 0x00 failed: pipe error (stall)"),
])
def test_a_bad_phone_fails_the_start_in_one_line(fault, why):
    assert_bad_start(ScriptedPhone(**{fault: True}), "ipheth", why)


def test_a_phone_that_never_answers_the_carrier_check_stops_the_instance():
    t = ScriptedPhone()
    t.model.carrier_silent = True
    svc, tap = start(t)
    carrier_poll(svc)
    assert svc.stats.notification_errors == 1 and tap.carrier is False

    def one_answer() -> None:
        t.model.carrier_silent = False
        t.model.cable = False
        carrier_poll(svc)

    assert_silence_rule(svc, "answered no carrier check in 10 s", one_answer)
    svc.stop()
