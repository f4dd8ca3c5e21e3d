"""The RTL8153 driver in the real service, against the bench emulator's register model.

`ScriptedRtl8153` answers the vendor request 0x05 with `Registers` from tests/vm/guest/r8152_device.py, the
same register file, PHY and filter the kernel's r8152 runs against in the VM (so the bring-up here meets
the status bits and reset values the kernel driver was proven on); it records every request and can answer
reads with garbage (one byte short), stall them all, or claim another chip version. The data path, pool,
queues, TAP port, link state and reconciler are the real ones (fake.py).
"""

from __future__ import annotations

import collections
import struct

import fake
import pytest
import tso_frames as tf
from fake import FakeTap, ScriptedTransport, turn
from vendor_fake import assert_bad_start, assert_silence_rule, load_emulator

from usbnetd.core.service import EthernetService
from usbnetd.core.stats import Stats
from usbnetd.netdev import gso
from usbnetd.protocols import choose
from usbnetd.protocols import r8152 as rtl
from usbnetd.protocols import r8152_codec as codec
from usbnetd.protocols.devices import BUILTIN
from usbnetd.protocols.driver import Options
from usbnetd.usb.descriptors import parse_configuration
from usbnetd.usb.transport import STATUS_OK, DeviceIdentity, TransportError

emu = load_emulator("r8152_device")

CHIP_MAC = bytes.fromhex("02a1b2c3d4e5")
HOST = bytes.fromhex("02aabbccddee")


def rtl_config_descriptor() -> bytes:
    """One interface FF/FF/00: bulk IN 0x81, bulk OUT 0x02, interrupt IN 0x83 (2 bytes), high speed."""
    body = bytes([9, 4, 0, 0, 3, 0xFF, 0xFF, 0x00, 0])
    body += bytes([7, 5, 0x81, 2]) + struct.pack("<H", 512) + bytes([0])
    body += bytes([7, 5, 0x02, 2]) + struct.pack("<H", 512) + bytes([0])
    body += bytes([7, 5, 0x83, 3]) + struct.pack("<H", 2) + bytes([8])
    return bytes([9, 2]) + struct.pack("<H", 9 + len(body)) + bytes([1, 1, 0, 0x80, 50]) + body


class ScriptedRtl8153(ScriptedTransport):
    def __init__(self, *, garbage: bool = False, stall: bool = False, mac: bytes = CHIP_MAC,
                 version: int | None = None) -> None:
        super().__init__("ecm")
        config, _ = parse_configuration(rtl_config_descriptor())
        self.identity = DeviceIdentity(busid="fake:r8153", vendor=0x0BDA, product=0x8153, speed_mbps=480,
                                       active_configuration=1, configurations=[config])
        self.regs = emu.Registers(mac)
        if version is not None:
            struct.pack_into("<H", self.regs.pla, emu.PLA_TCR1, version)
        self.garbage, self.stall = garbage, stall
        self.requests: list[tuple[str, int, int, bytes]] = []  # (dir, wValue, wIndex, data)

    def _check(self, request_type: int, request: int, value: int, index: int, length: int) -> None:
        if self.stall:
            raise TransportError(f"control request 0x{request:02x} failed: pipe error (stall)")
        assert request == emu.REQ_REGS, request
        if not self.regs.valid(index, value, length):
            raise TransportError("stall: not a request the chip answers")

    def _in(self, request_type, request, value, index, length) -> bytes:
        assert request_type == 0xC0
        self._check(request_type, request, value, index, length)
        data = self.regs.read(index, value, length)
        self.requests.append(("in", value, index, data))
        return data[:-1] if self.garbage else data

    def _out(self, request_type, request, value, index, data) -> None:
        assert request_type == 0x40
        self._check(request_type, request, value, index, len(data))
        self.requests.append(("out", value, index, bytes(data)))
        self.regs.write(index, value, bytes(data))

    def control_in(self, request_type, request, value, index, length, timeout_ms=1000) -> bytes:
        return self._in(request_type, request, value, index, length)

    def control_out(self, request_type, request, value, index, data, timeout_ms=1000) -> None:
        self._out(request_type, request, value, index, data)

    def submit_control(self, request_type, request, value, index, data, callback, timeout_ms=5000) -> bool:
        if isinstance(data, int):
            self._done.append(("ctrl", callback, STATUS_OK, self._in(request_type, request, value, index, data)))
        else:
            self._out(request_type, request, value, index, data)
            self._done.append(("ctrl", callback, STATUS_OK, b""))
        return True


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(rtl.R8152Driver, "poll_wait", 0)


def start(t: ScriptedRtl8153, **kw) -> tuple[EthernetService, FakeTap]:
    driver_cls, binding = choose(t.identity.configurations, 1, protocol="r8152")
    driver = driver_cls(t, binding, Stats(), Options())
    svc = EthernetService(t, driver, ifname="core0", gro=False, tap_factory=FakeTap, native=fake.NATIVE, **kw)
    svc.start()
    return svc, svc.tap


def link(t: ScriptedRtl8153, svc: EthernetService, up: bool) -> None:
    t.regs.cable = up
    t.interrupt(struct.pack("<H", emu.INTR_LINK if up else 0))
    turn(svc)
    turn(svc)  # the PHYSTATUS read's completion, then the driver's speed event


def test_the_device_table_names_the_kernel_drivers_ids():
    ids = {(e.vendor, e.product) for e in BUILTIN if e.protocol == "r8152"}
    assert {(0x0BDA, 0x8152), (0x0BDA, 0x8153), (0x17EF, 0x7205), (0x045E, 0x07C6), (0x2357, 0x0601),
            (0x13B1, 0x0041), (0x0955, 0x09FF), (0x04E8, 0xA101)} <= ids
    assert (0x0BDA, 0x8156) not in ids, "the RTL8156 stays on class matching (its NCM/ECM configuration)"
    t = ScriptedRtl8153()
    with pytest.raises(Exception, match="no network function"):
        choose(t.identity.configurations, 1)


def test_bring_up_programs_the_chip_as_the_kernel_driver_leaves_it_running():
    t = ScriptedRtl8153()
    svc, tap = start(t)
    regs = t.regs
    assert tap.mac == CHIP_MAC and tap.mtu == 1500
    assert regs.phy_up, "the PHY was powered down at reset; bring-up powers it"
    assert not regs.usb16(emu.USB_USB_CTRL) & (emu.RX_AGG_DISABLE | emu.RX_ZERO_EN)
    assert regs.rx_limit() == (16384 - rtl.rx_size_for_mtu(1500)) // 4 * 4
    assert not regs.pla[emu.PLA_OOB_CTRL] & emu.NOW_IS_OOB
    assert regs.pla[emu.PLA_CR] & (emu.CR_RE | emu.CR_TE) == emu.CR_RE | emu.CR_TE
    assert not regs.pla16(emu.PLA_MISC_1) & emu.RXDY_GATED_EN and not regs.pla16(emu.PLA_CPCR) & emu.CPCR_RX_VLAN
    assert regs.pla16(emu.PLA_RMS) == 1500 + 18 + 4
    assert bytes(regs.pla[emu.PLA_IDR : emu.PLA_IDR + 6]) == CHIP_MAC and not regs.counts["idr_write_locked"]
    rcr = regs.pla[emu.PLA_RCR]
    assert rcr & emu.RCR_AB and rcr & emu.RCR_APM and not rcr & emu.RCR_AAP
    assert svc.driver.rx_size == 16384 and svc.driver.tx_size == 16384
    assert tap.carrier is False  # no link until the chip says so
    # Every request is dword-aligned in a known block, and a one-dword write has its data in the enabled
    # bytes only (the chip ignores the rest, so data outside them would be a lost write).
    for way, value, index, data in t.requests:
        assert value % 4 == 0 and len(data) % 4 == 0 and index & 0xFF00 in (0x0100, 0x0000)
        if way == "out" and len(data) == 4:
            assert all(not data[i] or index >> i & 1 for i in range(4)), (hex(value), hex(index), data.hex())
    svc.stop()
    # Unbind as the kernel's down path leaves the MAC: accept nothing, gated, RX/TX off, OOB mode.
    assert regs.pla[emu.PLA_RCR] & rtl.RCR_ACPT_ALL == 0 and regs.pla16(emu.PLA_MISC_1) & emu.RXDY_GATED_EN
    assert not regs.pla[emu.PLA_CR] & (emu.CR_RE | emu.CR_TE) and regs.pla[emu.PLA_OOB_CTRL] & emu.NOW_IS_OOB
    assert t.closed


def test_carrier_and_speed_follow_the_interrupt():
    t = ScriptedRtl8153()
    svc, tap = start(t)
    link(t, svc, True)
    assert tap.carrier is True and svc.status()["speed_mbps"] == 1000
    n = len(t.requests)
    link(t, svc, True)  # repeated: nothing to do
    assert len(t.requests) == n and tap.carrier_changes.count(True) == 1
    link(t, svc, False)
    assert tap.carrier is False
    t.interrupt(b"\x04")  # short: counted, ignored
    turn(svc)
    assert svc.stats.notification_errors == 1 and tap.carrier is False
    svc.stop()


def test_rx_aggregates_and_tx_descriptors():
    t = ScriptedRtl8153()
    svc, tap = start(t)
    link(t, svc, True)
    frames = [CHIP_MAC + HOST + b"\x88\xb5" + bytes([i]) * (50 + 100 * i) for i in range(5)]
    t.complete_rx(emu.pack_rx([(f, 0) for f in frames]))  # the emulator's packer, with its FCS and padding
    turn(svc)
    assert [f for _, f in tap.host_receive()] == frames
    t.complete_rx(struct.pack("<6I", 5, 0, 0, 0, 0, 0) + bytes(40))  # a length shorter than a header: counted
    turn(svc)
    assert svc.stats.rx_length_errors == 1 and svc.stats.rx_errors == 1

    sent = [HOST + CHIP_MAC + b"\x88\xb5" + bytes([n & 0xFF]) * (n - 14) for n in (60, 492, 1514)]
    for f in sent:
        tap.host_send(f)
    svc.on_tap_readable()
    turn(svc)
    data = b""
    while t.tx:
        data += t.complete_tx()
        turn(svc)
    stream = emu.TxStream()
    assert [f for f, _, _ in stream.feed(data)] == sent and stream.malformed == 0
    assert svc.stats.tx_packets == 3 and svc.stats.rx_packets == 5
    svc.stop()
    assert svc.datapath.pool.in_use == 0 and t.closed


def test_a_transfer_of_a_packet_multiple_gets_a_zlp():
    t = ScriptedRtl8153()
    svc, tap = start(t)
    link(t, svc, True)
    f = HOST + CHIP_MAC + b"\x88\xb5" + bytes(512 - 8 - 14)  # descriptor + frame = 512
    tap.host_send(f)
    svc.on_tap_readable()
    turn(svc)
    _, data, zlp = t.tx[0]
    assert len(data) == 512 and zlp
    t.complete_tx()
    turn(svc)
    svc.stop()


def test_filter_mtu_and_mac_reach_the_chip():
    t = ScriptedRtl8153()
    svc, tap = start(t)
    d = svc.driver
    regs = t.regs
    link(t, svc, True)
    groups = [bytes.fromhex("01005e000001"), bytes.fromhex("333300000001")]
    d.apply_filter(False, False, groups)
    turn(svc)
    assert regs.pla[emu.PLA_RCR] & emu.RCR_AM and not regs.pla[emu.PLA_RCR] & emu.RCR_AAP
    assert bytes(regs.pla[emu.PLA_MAR : emu.PLA_MAR + 8]) == rtl.multicast_hash(groups) != bytes(8)
    for g in groups:  # the emulator's filter lets the groups in, and not another one
        assert regs.accepts(g + HOST + b"\x88\xb5" + bytes(50)) is None
    assert regs.accepts(bytes.fromhex("01005e0000fe") + HOST + b"\x88\xb5" + bytes(50)) == "rx_filtered_multicast"
    d.apply_filter(False, False, [bytes([1, 0, 0x5E, 0, 0, i]) for i in range(33)])
    turn(svc)
    assert bytes(regs.pla[emu.PLA_MAR : emu.PLA_MAR + 8]) == b"\xff" * 8
    d.apply_filter(True, False, [])
    turn(svc)
    assert regs.pla[emu.PLA_RCR] & emu.RCR_AAP

    assert d.change_mtu(9000 + 14) is None
    turn(svc)
    assert regs.pla16(emu.PLA_RMS) == 9000 + 22 and regs.rx_limit() == (16384 - rtl.rx_size_for_mtu(9000)) // 4 * 4
    assert "9194" in d.change_mtu(9195 + 14)
    assert d.change_mtu(1500 + 14) is None
    turn(svc)
    assert regs.pla16(emu.PLA_RMS) == 1522

    new = bytes.fromhex("020102030405")
    tap.mac = new
    svc.link.reconciler.reconcile()
    turn(svc)
    assert bytes(regs.pla[emu.PLA_IDR : emu.PLA_IDR + 6]) == new and not regs.counts["idr_write_locked"]
    assert regs.pla[emu.PLA_CRWECR] == 0, "config mode is left again"
    assert not svc.link.reconciler.filter[0], "the chip filters for the new MAC: no promiscuous fallback"
    svc.stop()


def test_a_requested_mac_and_mtu_are_given_to_the_chip_at_start():
    t = ScriptedRtl8153()
    svc, tap = start(t, mac=HOST, mtu=3000)
    turn(svc)
    assert tap.mac == HOST and tap.mtu == 3000
    assert bytes(t.regs.pla[emu.PLA_IDR : emu.PLA_IDR + 6]) == HOST
    assert t.regs.pla16(emu.PLA_RMS) == 3022
    svc.stop()


def test_an_invalid_chip_mac_is_replaced_and_written():
    t = ScriptedRtl8153(mac=b"\xff" * 6)
    svc, tap = start(t)
    assert tap.mac != b"\xff" * 6 and tap.mac[0] & 0x02 and not tap.mac[0] & 1
    assert bytes(t.regs.pla[emu.PLA_IDR : emu.PLA_IDR + 6]) == tap.mac
    svc.stop()


@pytest.mark.parametrize("fault, why", [
    ("garbage", "RTL8153 bring-up failed: the chip answered a 4-byte read of PLA 0xe610 with 3 bytes"),
    ("stall", "RTL8153 bring-up failed: control request 0x05 failed: pipe error (stall)"),
    ("version", "RTL8153 bring-up failed: chip version 0x6010 (RTL8153B v9) is not one usbnetd drives"),
])
def test_a_bad_chip_fails_the_start_in_one_line(fault, why):
    t = ScriptedRtl8153(version=0x6010) if fault == "version" else ScriptedRtl8153(**{fault: True})
    assert_bad_start(t, "r8152", why)


def test_a_chip_that_never_reports_link_stops_the_instance():
    t = ScriptedRtl8153()
    svc, tap = start(t)
    assert svc.driver.STATUS_SILENCE == rtl.INTERRUPT_SILENCE == 10
    # One status, even "no link", is a working chip.
    assert_silence_rule(svc, "sent no link status on its interrupt endpoint in 10 s", lambda: link(t, svc, False))
    svc.stop()


def test_codec_limits_match_the_driver():
    assert rtl.MAX_MTU == 9194 and codec.RX_DESC_LEN == 24 and codec.TX_DESC_LEN == 8


# ---------------------------------------------------------------------------- the chip's TX offloads

def _sent(t: ScriptedRtl8153, svc: EthernetService) -> list[tuple[bytes, int, int, list[bytes]]]:
    """Every transfer sent so far, as (frame, opts1, opts2, what the emulated chip puts on the wire) per
    descriptor; one list per transfer."""
    out = []
    while t.tx:
        data = t.complete_tx()
        turn(svc)
        stream = emu.TxStream()
        descs = stream.feed(data)
        assert stream.malformed == 0 and not stream.buf
        out.append([(f, o1, o2, [bytes(s) for s in emu.tx_frames(f, o1, o2, collections.Counter())])
                    for f, o1, o2 in descs])
    return out


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_tcp_superframe_goes_in_one_descriptor_and_the_chip_cuts_it(v6):
    t = ScriptedRtl8153()
    svc, tap = start(t)
    link(t, svc, True)
    assert tap.offload == gso.TUN_F_CSUM | gso.TUN_F_TSO4 | gso.TUN_F_TSO6
    assert tap.gso_max_size == rtl.TX_BUFFER - 8
    hdr, frame = tf.superframe(9000, 1400, v6=v6)
    tap.peer.send(hdr + frame)
    svc.on_tap_readable()
    turn(svc)
    ((got, opts1, opts2, wire),) = _sent(t, svc)[0:1][0]
    l4 = 14 + (40 if v6 else 20)
    assert opts1 == len(frame) | codec.TX_FS | codec.TX_LS | (codec.GTSENDV6 if v6 else codec.GTSENDV4) | l4 << 18
    assert opts2 == 1400 << codec.MSS_SHIFT
    if v6:
        # tcp_v6_gso_csum_prep: payload length 0, the check field the pseudo-header sum without a length
        assert got[18:20] == b"\0\0"
        want = tf.ones_sum(tf.SRC6 + tf.DST6 + struct.pack("!IxxxB", 0, 6))
        assert struct.unpack_from("!H", got, l4 + 16)[0] == want
        assert got[:18] + got[20 : l4 + 16] + got[l4 + 18 :] == frame[:18] + frame[20 : l4 + 16] + frame[l4 + 18 :]
    else:
        assert got == frame
    assert len(wire) == 7 and b"".join(tf.check_frame(s)["payload"] for s in wire) == tf.payload(9000)
    assert svc.stats.tx_packets == 7
    assert svc.detailed_stats()["tx_offload"]["device_superframes"] == 1
    svc.stop()
    assert svc.datapath.pool.in_use == 0


def test_small_frames_still_share_a_transfer_and_a_superframe_starts_the_next():
    """A super-frame that does not fit what is left of a transfer is carried whole into the next, and ends
    it; the frames around it keep their order."""
    t = ScriptedRtl8153()
    svc, tap = start(t)
    link(t, svc, True)
    small = [HOST + CHIP_MAC + b"\x88\xb5" + bytes([i]) * 100 for i in range(3)]
    hdr, big = tf.superframe(16200, 1448)  # 16254 bytes: more than the 16384 - 2 x 124 left after two
    tap.host_send(small[0])
    tap.host_send(small[1])
    tap.peer.send(hdr + big)
    tap.host_send(small[2])
    svc.on_tap_readable()
    turn(svc)
    transfers = _sent(t, svc)
    assert [[f for f, *_ in tr] for tr in transfers] == [small[:2], [big], small[2:]]
    wire = [s for tr in transfers for *_, segs in tr for s in segs]
    assert wire[:2] == small[:2] and wire[-1] == small[2]
    assert b"".join(tf.check_frame(s)["payload"] for s in wire[2:-1]) == tf.payload(16200)
    assert svc.stats.tx_packets == 3 + 12 and svc.stats.tx_dropped == 0
    svc.stop()
    assert svc.datapath.pool.in_use == 0


def test_a_partial_checksum_is_asked_of_the_chip_in_the_descriptor():
    t = ScriptedRtl8153()
    svc, tap = start(t)
    link(t, svc, True)
    tcp, l4, _ = tf.tcp_frame(500)
    cases = [(tf.vnet(gso.F_NEEDS_CSUM, 0, 0, 0, l4, 16), tcp, codec.TX_IPV4_CS | codec.TX_TCP_CS | 34 << 17),
             (*tf.udp_partial(700, v6=True), codec.TX_IPV6_CS | codec.TX_UDP_CS | 54 << 17)]
    for hdr, frame, _ in cases:
        tap.peer.send(hdr + frame)
    svc.on_tap_readable()
    turn(svc)
    descs = [d for tr in _sent(t, svc) for d in tr]
    assert [(f, o2) for f, _, o2, _ in descs] == [(frame, o2) for _, frame, o2 in cases]
    assert [tf.check_frame(wire[0])["payload"] for *_, wire in descs] == [tf.payload(500), tf.payload(700)]
    assert svc.detailed_stats()["tx_offload"]["device_csum"] == 2
    svc.stop()
