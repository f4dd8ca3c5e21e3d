"""The AX88179 driver in the real service, against a scripted chip: a register file behind vendor requests.

`ScriptedAx88179` answers the vendor requests as the chip does (MAC registers, PHY at address 3), records
every write, and can answer reads with garbage (one byte short) or stall them all. The data path, pool,
queues, TAP port, link state and reconciler are the real ones (fake.py).
"""

from __future__ import annotations

import struct

import fake
import pytest
import tso_frames as tf
from fake import FakeTap, ScriptedTransport, turn
from vendor_fake import assert_bad_start, assert_silence_rule, load_emulator

from usbnetd.core.service import EthernetService
from usbnetd.core.stats import Stats
from usbnetd.netdev import gso
from usbnetd.protocols import ax88179 as ax
from usbnetd.protocols import ax88179_codec as codec
from usbnetd.protocols import choose
from usbnetd.protocols.devices import BUILTIN
from usbnetd.protocols.driver import Options
from usbnetd.usb.descriptors import parse_configuration
from usbnetd.usb.transport import STATUS_OK, DeviceIdentity, TransportError

emu = load_emulator("ax88179_device")

CHIP_MAC = bytes.fromhex("02a1b2c3d4e5")
HOST = bytes.fromhex("02aabbccddee")


def ax_config_descriptor() -> bytes:
    """One interface FF/FF/00: interrupt IN (8 bytes), bulk IN, bulk OUT (high speed)."""
    body = bytes([9, 4, 0, 0, 3, 0xFF, 0xFF, 0x00, 0])
    body += bytes([7, 5, 0x81, 3]) + struct.pack("<H", 8) + bytes([11])
    body += bytes([7, 5, 0x82, 2]) + struct.pack("<H", 512) + bytes([0])
    body += bytes([7, 5, 0x03, 2]) + struct.pack("<H", 512) + bytes([0])
    return bytes([9, 2]) + struct.pack("<H", 9 + len(body)) + bytes([1, 1, 0, 0x80, 50]) + body


class ScriptedAx88179(ScriptedTransport):
    def __init__(self, *, garbage: bool = False, stall: bool = False, mac: bytes = CHIP_MAC) -> None:
        super().__init__("ecm")
        config, _ = parse_configuration(ax_config_descriptor())
        self.identity = DeviceIdentity(busid="fake:ax88179", vendor=0x0B95, product=0x1790, speed_mbps=480,
                                       active_configuration=1, configurations=[config])
        self.regs = bytearray(256)
        self.regs[ax.PHYSICAL_LINK_STATUS] = ax.USB_HS
        self.regs[ax.NODE_ID : ax.NODE_ID + 6] = mac
        self.phy = {ax.MII_BMCR: 0x1140, ax.PHYSR: ax.PHYSR_GIGA | ax.PHYSR_FULL | ax.PHYSR_LINK}
        self.garbage, self.stall = garbage, stall
        self.writes: list[tuple[int, int, bytes]] = []  # (request, register, data)

    def _in(self, request: int, value: int, index: int, length: int) -> bytes:
        if self.stall:
            raise TransportError(f"control request 0x{request:02x} failed: pipe error (stall)")
        if request == ax.ACCESS_MAC:
            data = bytes(self.regs[value : value + length])
        elif request == ax.ACCESS_PHY and value == ax.PHY_ADDR:
            data = struct.pack("<H", self.phy.get(index, 0))[:length]
        else:
            raise TransportError("stall")
        return data[:-1] if self.garbage else data

    def _out(self, request: int, value: int, index: int, data: bytes) -> None:
        if self.stall:
            raise TransportError(f"control request 0x{request:02x} failed: pipe error (stall)")
        self.writes.append((request, value, bytes(data)))
        if request == ax.ACCESS_MAC:
            self.regs[value : value + len(data)] = data
        elif request == ax.ACCESS_PHY:
            self.phy[index] = struct.unpack("<H", data)[0]

    def control_in(self, request_type, request, value, index, length, timeout_ms=1000) -> bytes:
        assert request_type == 0xC0
        return self._in(request, value, index, length)

    def control_out(self, request_type, request, value, index, data, timeout_ms=1000) -> None:
        assert request_type == 0x40
        self._out(request, value, index, data)

    def submit_control(self, request_type, request, value, index, data, callback, timeout_ms=5000) -> bool:
        if isinstance(data, int):
            self._done.append(("ctrl", callback, STATUS_OK, self._in(request, value, index, data)))
        else:
            self._out(request, value, index, data)
            self._done.append(("ctrl", callback, STATUS_OK, b""))
        return True

    def reg16(self, reg: int) -> int:
        return struct.unpack_from("<H", self.regs, reg)[0]

    def written(self, reg: int) -> list[bytes]:
        return [d for r, v, d in self.writes if r == ax.ACCESS_MAC and v == reg]


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    monkeypatch.setattr(ax.Ax88179Driver, "phy_power_wait", 0)
    monkeypatch.setattr(ax.Ax88179Driver, "clock_wait", 0)


def start(t: ScriptedAx88179, **kw) -> tuple[EthernetService, FakeTap]:
    driver_cls, binding = choose(t.identity.configurations, 1, protocol="ax88179")
    driver = driver_cls(t, binding, Stats(), Options())
    svc = EthernetService(t, driver, ifname="core0", gro=False, tap_factory=FakeTap, native=fake.NATIVE, **kw)
    svc.start()
    assert svc.datapath.rx_path == ("native" if fake.NATIVE else "python")
    return svc, svc.tap


def link(t: ScriptedAx88179, svc: EthernetService, up: bool) -> None:
    t.interrupt(struct.pack("<II", 0xA1 | ((1 << 16) if up else 0), 0))
    turn(svc)
    turn(svc)  # the PHYSR read's completion, then the driver's speed event


def test_the_device_table_names_the_kernel_drivers_ids():
    ids = {(e.vendor, e.product) for e in BUILTIN if e.protocol == "ax88179"}
    assert {(0x0B95, 0x1790), (0x0B95, 0x178A), (0x2001, 0x4A00), (0x07C9, 0x0010)} <= ids
    assert len(ids) == 13
    # Vendor class says nothing: class matching alone never picks the AX88179 driver.
    t = ScriptedAx88179()
    with pytest.raises(Exception, match="no network function"):
        choose(t.identity.configurations, 1)


def test_bring_up_programs_the_chip_and_takes_its_mac():
    t = ScriptedAx88179()
    svc, tap = start(t)
    assert tap.mac == CHIP_MAC and tap.mtu == 1500
    assert t.reg16(ax.PHYPWR_RSTCTL) == ax.PHYPWR_RSTCTL_IPRL
    assert t.written(ax.PHYPWR_RSTCTL)[0] == b"\0\0"  # powered down first, then up
    assert t.regs[ax.CLK_SELECT] == ax.CLK_SELECT_ACS | ax.CLK_SELECT_BCS
    assert bytes(t.regs[ax.RX_BULKIN_QCTRL : ax.RX_BULKIN_QCTRL + 5]) == ax.BULKIN_HIGH
    rx = t.reg16(ax.RX_CTL)
    assert rx & ax.RX_CTL_START and rx & ax.RX_CTL_IPE and rx & ax.RX_CTL_AB and not rx & ax.RX_CTL_PRO
    assert t.reg16(ax.MEDIUM_STATUS_MODE) & ax.MEDIUM_RECEIVE_EN
    # TX checksums: the TAP offers them, so the service turned the chip's engines on; RX results stay off
    assert t.regs[ax.TXCOE_CTL] == ax.TXCOE_ALL and t.regs[ax.RXCOE_CTL] == 0
    assert t.phy[ax.MII_BMCR] & ax.BMCR_ANRESTART
    assert svc.driver.rx_size == 26 * 1024 and tap.carrier is False  # no link until the chip says so
    svc.stop()
    # Unbind leaves the chip as Linux does: receive stopped, clocks off, PHY powered down.
    assert t.reg16(ax.RX_CTL) == 0 and t.regs[ax.CLK_SELECT] == 0 and t.reg16(ax.PHYPWR_RSTCTL) == 0
    assert t.closed


def test_carrier_and_speed_follow_the_interrupt():
    t = ScriptedAx88179()
    svc, tap = start(t)
    link(t, svc, True)
    assert tap.carrier is True and svc.status()["speed_mbps"] == 1000
    mode = t.reg16(ax.MEDIUM_STATUS_MODE)
    assert mode & ax.MEDIUM_GIGAMODE and mode & ax.MEDIUM_FULL_DUPLEX and mode & ax.MEDIUM_RECEIVE_EN
    n = len(t.writes)
    link(t, svc, True)  # repeated: nothing to do
    assert len(t.writes) == n and tap.carrier_changes[-1] is True and tap.carrier_changes.count(True) == 1
    link(t, svc, False)
    assert tap.carrier is False
    t.phy[ax.PHYSR] = ax.PHYSR_100 | ax.PHYSR_FULL | ax.PHYSR_LINK
    link(t, svc, True)
    assert tap.carrier is True and svc.status()["speed_mbps"] == 100
    assert t.reg16(ax.MEDIUM_STATUS_MODE) & ax.MEDIUM_PS and not t.reg16(ax.MEDIUM_STATUS_MODE) & ax.MEDIUM_GIGAMODE
    t.interrupt(b"\x01\x00\x01\x00")  # short: counted, ignored
    turn(svc)
    assert svc.stats.notification_errors == 1 and tap.carrier is True
    svc.stop()


def test_rx_aggregates_and_tx_headers():
    t = ScriptedAx88179()
    svc, tap = start(t)
    link(t, svc, True)
    frames = [CHIP_MAC + HOST + b"\x88\xb5" + bytes([i]) * (50 + 100 * i) for i in range(5)]
    t.complete_rx(codec.build_rx(frames))
    turn(svc)
    assert [f for _, f in tap.host_receive()] == frames
    t.complete_rx(b"\x00\x00\x07\x00")  # garbage: a count with nowhere to be
    turn(svc)
    assert svc.stats.rx_frame_errors == 1 and svc.stats.rx_errors == 1

    for n in (60, 504, 1514):  # 504 + 8 is a multiple of 512: padded
        f = HOST + CHIP_MAC + b"\x88\xb5" + bytes(n - 14)
        tap.host_send(f)
        svc.on_tap_readable()
        turn(svc)
        data = t.complete_tx()
        assert codec.decode_tx(data) == [(f, 0)]
        assert len(data) == 8 + n + (1 if n == 504 else 0)
        turn(svc)
    assert svc.stats.tx_packets == 3 and svc.stats.rx_packets == 5
    svc.stop()
    assert svc.datapath.pool.in_use == 0 and t.closed


def test_filter_mtu_and_mac_reach_the_chip():
    t = ScriptedAx88179()
    svc, tap = start(t)
    d = svc.driver
    groups = [bytes.fromhex("01005e000001"), bytes.fromhex("333300000001")]
    d.apply_filter(False, False, groups)
    turn(svc)
    assert t.reg16(ax.RX_CTL) & ax.RX_CTL_AM and not t.reg16(ax.RX_CTL) & ax.RX_CTL_AMALL
    assert bytes(t.regs[ax.MULFLTARY : ax.MULFLTARY + 8]) == ax.multicast_hash(groups) != bytes(8)
    d.apply_filter(False, False, [bytes([1, 0, 0x5E, 0, 0, i]) for i in range(65)])
    assert t.reg16(ax.RX_CTL) & ax.RX_CTL_AMALL
    d.apply_filter(True, False, [])
    assert t.reg16(ax.RX_CTL) & ax.RX_CTL_PRO

    assert d.change_mtu(4088 + 14) is None
    assert t.reg16(ax.MEDIUM_STATUS_MODE) & ax.MEDIUM_JUMBO_EN == ax.MEDIUM_JUMBO_EN
    assert d.change_mtu(1500 + 14) is None
    assert not t.reg16(ax.MEDIUM_STATUS_MODE) & 0x8000
    assert "4088" in d.change_mtu(9000 + 14)

    new = bytes.fromhex("020102030405")
    tap.mac = new
    svc.link.reconciler.reconcile()
    turn(svc)
    assert bytes(t.regs[ax.NODE_ID : ax.NODE_ID + 6]) == new
    assert not svc.link.reconciler.filter[0], "the chip filters for the new MAC: no promiscuous fallback"
    svc.stop()


def test_a_requested_mac_and_mtu_are_given_to_the_chip_at_start():
    t = ScriptedAx88179()
    svc, tap = start(t, mac=HOST, mtu=3000)
    turn(svc)
    assert tap.mac == HOST and tap.mtu == 3000
    assert bytes(t.regs[ax.NODE_ID : ax.NODE_ID + 6]) == HOST
    assert t.reg16(ax.MEDIUM_STATUS_MODE) & ax.MEDIUM_JUMBO_EN == ax.MEDIUM_JUMBO_EN
    svc.stop()


def test_an_invalid_chip_mac_is_replaced_and_written_back():
    t = ScriptedAx88179(mac=b"\xff" * 6)
    svc, tap = start(t)
    assert tap.mac != b"\xff" * 6 and tap.mac[0] & 0x02 and not tap.mac[0] & 1
    assert bytes(t.regs[ax.NODE_ID : ax.NODE_ID + 6]) == tap.mac
    svc.stop()


@pytest.mark.parametrize("fault, why", [
    ("garbage", "AX88179 bring-up failed: AX88179 answered a 1-byte read of register 0x02 with 0 bytes"),
    ("stall", "AX88179 bring-up failed: control request 0x01 failed: pipe error (stall)"),
])
def test_a_chip_that_answers_garbage_or_stalls_fails_the_start_in_one_line(fault, why):
    assert_bad_start(ScriptedAx88179(**{fault: True}), "ax88179", why)


def test_a_chip_that_never_reports_link_stops_the_instance():
    t = ScriptedAx88179()
    svc, tap = start(t)
    assert svc.driver.STATUS_SILENCE == ax.INTERRUPT_SILENCE == 10
    # One status, even "no link", is a working chip.
    assert_silence_rule(svc, "sent no link status on its interrupt endpoint in 10 s", lambda: link(t, svc, False))
    svc.stop()


# ---------------------------------------------------------------------------- the chip's TX offloads

def _send(tap: FakeTap, hdr: bytes, frame: bytes) -> None:
    tap.peer.send(hdr + frame)  # as tun hands it over: the virtio-net header, then the frame


def _on_the_wire(data: bytes) -> list[bytes]:
    """What the emulated chip puts on the wire for one bulk OUT transfer: cut (MSS) and checksummed (TXCOE)."""
    frames, bad = emu.parse_tx(data)
    assert bad == 0
    out = []
    for frame, mss in frames:
        for seg in (emu.tso_segments(frame, mss) if mss else None) or [bytearray(frame)]:
            emu.fill_checksums(seg, ax.TXCOE_ALL)
            out.append(bytes(seg))
    return out


def test_a_tcp_superframe_reaches_the_chip_whole_and_the_chip_cuts_it():
    t = ScriptedAx88179()
    svc, tap = start(t)
    link(t, svc, True)
    assert tap.offload == gso.TUN_F_CSUM | gso.TUN_F_TSO4 and tap.gso_max_size == ax.TSO_MAX
    hdr, frame = tf.superframe(12000, 1448)
    _send(tap, hdr, frame)
    svc.on_tap_readable()
    turn(svc)
    data = t.complete_tx()
    turn(svc)
    assert codec.decode_tx(data) == [(frame, 1448)]  # one transfer: the super-frame as the stack made it
    segs = _on_the_wire(data)
    assert len(segs) == 9 and b"".join(tf.check_frame(s)["payload"] for s in segs) == tf.payload(12000)
    off = svc.detailed_stats()["tx_offload"]
    assert (off["device_offloads"], off["device_superframes"], off["device_csum"]) == (["tx-checksum", "tso4"], 1, 0)
    assert off["tso_superframes"] == 0 and off["dropped"] == 0
    assert svc.stats.tx_packets == 9 and svc.stats.tx_bytes == len(frame) + 8 * 54
    svc.stop()
    assert svc.datapath.pool.in_use == 0


def test_a_partial_checksum_is_left_to_the_chip():
    t = ScriptedAx88179()
    svc, tap = start(t)
    link(t, svc, True)
    for v6 in (False, True):
        hdr, frame = tf.udp_partial(300, v6=v6)
        _send(tap, hdr, frame)
        svc.on_tap_readable()
        turn(svc)
        data = t.complete_tx()
        turn(svc)
        assert codec.decode_tx(data) == [(frame, 0)]  # untouched: the chip fills the checksum in
        (seg,) = _on_the_wire(data)
        assert tf.check_frame(seg)["payload"] == tf.payload(300)
    assert svc.detailed_stats()["tx_offload"]["device_csum"] == 2
    svc.stop()


def test_what_the_chip_cannot_do_is_done_here_and_a_lie_is_dropped():
    """TSO over IPv6 is not offered (the kernel driver does not claim it); should such a super-frame come
    anyway it is cut here. A super-frame whose headers contradict its vnet header is dropped and counted."""
    t = ScriptedAx88179()
    svc, tap = start(t)
    link(t, svc, True)
    hdr, frame = tf.superframe(3000, 1000, v6=True)
    _send(tap, hdr, frame)
    bad_hdr, bad = tf.superframe(3000, 1000)
    _send(tap, bad_hdr, bad[:-10])  # the IP length no longer matches the frame
    svc.on_tap_readable()
    turn(svc)
    got = []
    while t.tx:
        got += _on_the_wire(t.complete_tx())
        turn(svc)
    assert b"".join(tf.check_frame(s)["payload"] for s in got) == tf.payload(3000) and len(got) == 3
    off = svc.detailed_stats()["tx_offload"]
    assert (off["tso_superframes"], off["tso_segments"], off["dropped"]) == (1, 3, 1)
    assert svc.stats.tx_dropped == 1
    svc.stop()


def test_no_tso_when_the_tap_cannot_be_limited_to_what_the_chip_takes(monkeypatch, caplog):
    monkeypatch.setattr(FakeTap, "refuse_gso_max_size", True)
    t = ScriptedAx88179()
    svc, tap = start(t)
    assert tap.offload == gso.TUN_F_CSUM and t.regs[ax.TXCOE_CTL] == ax.TXCOE_ALL
    assert "TSO stays off (the chip takes super-frames of at most 16384 bytes)" in caplog.text
    svc.stop()


def test_no_offloads_with_no_tso():
    t = ScriptedAx88179()
    svc, tap = start(t, tso=False)
    assert tap.offload == 0 and tap.vnet_hdr == 0 and t.regs[ax.TXCOE_CTL] == 0
    assert svc.detailed_stats()["tx_offload"]["enabled"] is False
    svc.stop()
