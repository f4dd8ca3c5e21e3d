"""ASIX AX88179 (USB 3) and AX88178A (USB 2) gigabit Ethernet: a vendor-class chip driven by register access.

Not a USB class: one interface FF/FF/00 with an interrupt IN endpoint (8-byte link status), a bulk IN and
a bulk OUT endpoint, and vendor control requests to a device-recipient (bmRequestType C0 / 40): 0x01
reads/writes MAC registers (wValue the register, wIndex and wLength the byte count), 0x02 the PHY (wValue
the PHY address 3, wIndex the PHY register, 2 bytes). Chosen only through the device table
(`devices.py`: the VID:PIDs Linux's ax88179_178a lists), never by class matching: FF/FF/00 says nothing.

Register addresses, bit meanings and the bring-up order are the facts Linux's ax88179_178a driver
(drivers/net/usb/ax88179_178a.c) uses, carried over as facts; the code is ours (ASIX's datasheet was not at
hand). Bring-up (`bind`), in the chip's order:

1. read PHYSICAL_LINK_STATUS (0x02): the USB speed, and proof that the chip answers register reads with
   exactly the bytes asked for (anything else is a one-line error: garbage is not a chip we can drive);
2. PHYPWR_RSTCTL (0x26) = 0 then IPRL: PHY power-up, 500 ms to settle; CLK_SELECT (0x33) = ACS|BCS, 200 ms;
3. NODE_ID (0x10, 6 bytes): the MAC the chip loaded from its EEPROM/eFuse (an invalid one: a random local
   address, written back, so the chip's filter matches the interface);
4. RX_BULKIN_QCTRL (0x2E, 5 bytes): RX aggregation by USB speed (the kernel driver's values); our bulk IN
   buffers are the largest aggregate the table allows plus 2 KiB, as the kernel sizes its own;
5. pause water levels (0x54, 0x55); RXCOE_CTL (0x34) and TXCOE_CTL (0x35) = 0: no checksum engines until
   the service turns the TX offloads on (`enable_offloads`, below); RX checksum results stay off, since tun
   ignores "checksum verified" on what we write (the C path verifies what it coalesces itself);
6. RX_CTL (0x0B): START, broadcast, IPE (each frame behind a 2-byte alignment header), drop CRC errors,
   plus the filter (`set_packet_filter`, `apply_filter`);
7. MEDIUM_STATUS_MODE (0x22): receive enable, flow control, gigabit full duplex until the link says more;
8. PHY BMCR: restart autonegotiation.

Link: bit 16 of the interrupt transfer's first word. On a change to "up", PHYSR (PHY register 0x11) is read
asynchronously for speed and duplex, and MEDIUM_STATUS_MODE is written to match (jumbo when the MTU is
above 1500), as the chip needs; the speed goes to `usbnetd status`. A chip reports its status on the
interrupt endpoint, link or not (the bench's emulator: on every change and once a second; whether every
real chip repeats it unchanged is not verified here); one whose interrupt endpoint says nothing at all for
`INTERRUPT_SILENCE` seconds is taken as not working and stops the instance with one line (`poll`).

MTU up to 4088 (the kernel driver's limit; MEDIUM_JUMBO_EN above 1500). MAC changes go to NODE_ID, so the
chip's own filter follows (`DriverFlag.MAC_SETTABLE`: no promiscuous fallback). Multicast: RX_CTL AM with
the 64-bit hash in MULFLTARY (0x16; bit = top 6 bits of the Ethernet CRC-32 of the address), AMALL above 64
groups, PRO for promiscuous. `unbind`: RX stopped, clocks off, PHY powered down, as Linux leaves the chip.

TX offloads, as the kernel driver uses them (features IP_CSUM | IPV6_CSUM | TSO, netif_set_tso_max_size 16384,
TXCOE_CTL = IP | TCP | UDP | TCPV6 | UDPV6): `tx_offloads` = TUN_F_CSUM | TUN_F_TSO4 and `tso_max` 16384.
With them on (service.py, through the TAP's virtio-net header and gso_max_size), TXCOE_CTL has every engine
on, so the chip fills the IPv4 header, TCP and UDP checksums of every frame, and a TCP/IPv4 super-frame of
up to 16 KiB goes in one transfer with its MSS in the header's second word: the chip cuts it. IPv6 TSO is
not a feature the kernel driver claims, so it is not offered to the TAP (the host's stack cuts those).

Framing: `ax88179_codec` (RX aggregates with per-frame descriptors; one TX frame per transfer behind an
8-byte header). RX runs in C (usbnetd.native's decode_ax88179, with GRO) when the extension is there, with
`rx_decode` as its reference and fallback.
"""

from __future__ import annotations

import logging
import struct
import time

from ..core.pool import Packet
from ..netdev import gso
from ..usb.descriptors import Configuration
from ..usb.transport import TransportError
from . import ax88179_codec as codec
from . import cdc
from .driver import Binding, LinkEvent, RxSink
from .vendor import REQ_VENDOR_IN, REQ_VENDOR_OUT, VendorDriver, crc_hash_bit, match_vendor_interface

log = logging.getLogger(__name__)

REQ_IN, REQ_OUT = REQ_VENDOR_IN, REQ_VENDOR_OUT
ACCESS_MAC = 0x01
ACCESS_PHY = 0x02
PHY_ADDR = 0x03

PHYSICAL_LINK_STATUS = 0x02
USB_SS, USB_HS = 0x04, 0x02
RX_CTL = 0x0B
RX_CTL_DROPCRCERR = 0x0100
RX_CTL_IPE = 0x0200
RX_CTL_START = 0x0080
RX_CTL_AM = 0x0010
RX_CTL_AB = 0x0008
RX_CTL_AMALL = 0x0002
RX_CTL_PRO = 0x0001
NODE_ID = 0x10
MULFLTARY = 0x16
MEDIUM_STATUS_MODE = 0x22
MEDIUM_GIGAMODE = 0x0001
MEDIUM_FULL_DUPLEX = 0x0002
MEDIUM_EN_125MHZ = 0x0008
MEDIUM_RXFLOW_CTRLEN = 0x0010
MEDIUM_TXFLOW_CTRLEN = 0x0020
MEDIUM_RECEIVE_EN = 0x0100
MEDIUM_PS = 0x0200  # 100 Mbit/s
MEDIUM_JUMBO_EN = 0x8040
PHYPWR_RSTCTL = 0x26
PHYPWR_RSTCTL_IPRL = 0x0020
RX_BULKIN_QCTRL = 0x2E
CLK_SELECT = 0x33
CLK_SELECT_BCS, CLK_SELECT_ACS = 0x01, 0x02
RXCOE_CTL = 0x34
TXCOE_CTL = 0x35
# TXCOE_CTL bits: IPv4 header, TCP, UDP, TCP over IPv6, UDP over IPv6 (the kernel driver sets all five)
TXCOE_ALL = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
TSO_MAX = 16384  # the kernel driver's netif_set_tso_max_size
PAUSE_WATERLVL_HIGH, PAUSE_WATERLVL_LOW = 0x54, 0x55

MII_BMCR = 0x00
BMCR_ANENABLE, BMCR_ANRESTART = 0x1000, 0x0200
PHYSR = 0x11
PHYSR_SPEED_MASK, PHYSR_GIGA, PHYSR_100 = 0xC000, 0x8000, 0x4000
PHYSR_FULL, PHYSR_LINK = 0x2000, 0x0400

INT_LINK = 1 << 16
INT_LEN = 8

# RX_BULKIN_QCTRL values (control, timer low, timer high, size in KiB, inter-frame gap) by USB speed, for a
# gigabit link, and the one for 100 Mbit/s at SuperSpeed/high speed and for full speed.
BULKIN_SUPER = bytes([7, 0x4F, 0, 0x12, 0xFF])
BULKIN_HIGH = bytes([7, 0x20, 3, 0x16, 0xFF])
BULKIN_100 = bytes([7, 0xAE, 7, 0x18, 0xFF])
BULKIN_FULL = bytes([7, 0xCC, 0x4C, 0x18, 8])
RX_BUFFER = 1024 * (max(b[3] for b in (BULKIN_SUPER, BULKIN_HIGH, BULKIN_100, BULKIN_FULL)) + 2)

MAX_MTU = 4088
MAX_MULTICAST = 64
INTERRUPT_SILENCE = VendorDriver.STATUS_SILENCE  # seconds without a single link status: not a working chip


def multicast_hash(addresses: list[bytes]) -> bytes:
    """MULFLTARY's 8 bytes: for each address, the bit numbered by the top 6 bits of its Ethernet CRC-32
    (MSB-first, not inverted)."""
    table = bytearray(8)
    for mac in addresses:
        bit = crc_hash_bit(mac)
        table[bit >> 3] |= 1 << (bit & 7)
    return bytes(table)


class Ax88179Driver(VendorDriver):
    name = "ax88179"
    chip = "AX88179"
    tx_headroom = 0  # the 8-byte header is written at the start of the packet; the frame is read in after it
    # Waits the chip needs after PHY power-up and the clock switch (the kernel driver's); tests set them to 0.
    phy_power_wait = 0.5
    clock_wait = 0.2

    @classmethod
    def match(cls, config: Configuration) -> Binding | None:
        return match_vendor_interface(config)

    @property
    def framing(self) -> str:
        return f"AX88179 aggregates, {self.rx_size} B in / one frame per transfer out"

    # --- register access (synchronous: bring-up) ---
    def _read(self, reg: int, n: int) -> bytes:
        data = self.transport.control_in(REQ_IN, ACCESS_MAC, reg, n, n)
        if len(data) != n:
            raise TransportError(f"AX88179 answered a {n}-byte read of register 0x{reg:02x} with {len(data)} "
                                 "bytes; not a chip usbnetd can drive")
        return data

    def _write(self, reg: int, data: bytes) -> None:
        self.transport.control_out(REQ_OUT, ACCESS_MAC, reg, len(data), data)

    def _write16(self, reg: int, value: int) -> None:
        self._write(reg, struct.pack("<H", value))

    def _phy_read(self, reg: int) -> int:
        data = self.transport.control_in(REQ_IN, ACCESS_PHY, PHY_ADDR, reg, 2)
        if len(data) != 2:
            raise TransportError(f"AX88179 answered a read of PHY register 0x{reg:02x} with {len(data)} bytes")
        return struct.unpack("<H", data)[0]

    def _phy_write(self, reg: int, value: int) -> None:
        self.transport.control_out(REQ_OUT, ACCESS_PHY, PHY_ADDR, reg, struct.pack("<H", value))

    # --- register access (asynchronous: while running) ---
    def _submit_write(self, reg: int, data: bytes) -> None:
        self.submit_out(ACCESS_MAC, reg, len(data), data)

    # --- setup (vendor.VendorDriver.bind runs it and names the chip in any failure) ---
    def _bring_up(self) -> None:
        usb = self._read(PHYSICAL_LINK_STATUS, 1)[0]
        self._write16(PHYPWR_RSTCTL, 0)
        self._write16(PHYPWR_RSTCTL, PHYPWR_RSTCTL_IPRL)
        time.sleep(self.phy_power_wait)
        self._write(CLK_SELECT, bytes([CLK_SELECT_ACS | CLK_SELECT_BCS]))
        time.sleep(self.clock_wait)

        mac, replaced = self.checked_mac(self._read(NODE_ID, 6))
        if replaced:
            self._write(NODE_ID, mac)  # so that the chip's filter matches the interface
        self.mac = mac

        self._usb_fast = bool(usb & (USB_SS | USB_HS))
        self._bulkin = BULKIN_SUPER if usb & USB_SS else BULKIN_HIGH if usb & USB_HS else BULKIN_FULL
        self._write(RX_BULKIN_QCTRL, self._bulkin)
        self.rx_size = RX_BUFFER
        self._write(PAUSE_WATERLVL_LOW, b"\x34")
        self._write(PAUSE_WATERLVL_HIGH, b"\x52")
        self._write(RXCOE_CTL, b"\x00")
        self._write(TXCOE_CTL, b"\x00")
        self._rx_ctl = RX_CTL_START | RX_CTL_AB | RX_CTL_IPE | RX_CTL_DROPCRCERR | RX_CTL_AMALL
        self._write16(RX_CTL, self._rx_ctl)
        self._medium = MEDIUM_RECEIVE_EN | MEDIUM_TXFLOW_CTRLEN | MEDIUM_RXFLOW_CTRLEN | MEDIUM_FULL_DUPLEX \
            | MEDIUM_GIGAMODE
        self._write16(MEDIUM_STATUS_MODE, self._medium)
        bmcr = self._phy_read(MII_BMCR)
        self._phy_write(MII_BMCR, bmcr | BMCR_ANENABLE | BMCR_ANRESTART)

        self.max_frame = MAX_MTU + 14
        self.default_mtu = 1500
        self._frame = 1514
        mp = self.maxpacket
        self.tx_size = ((codec.TX_HEADER + self.max_frame + 1 + mp - 1) // mp) * mp
        self._decoder = codec.RxDecoder(self.stats, self.max_frame, ip_align=True)
        self._packet: Packet | None = None
        self._length = 0
        self._mss = 0  # of the super-frame in the transfer being framed (0: a plain frame)
        self.tx_offloads = gso.TUN_F_CSUM | gso.TUN_F_TSO4
        self.tso_max = TSO_MAX

    def enable_offloads(self, flags: int) -> None:
        if flags & gso.TUN_F_CSUM:
            self._write(TXCOE_CTL, bytes([TXCOE_ALL]))

    def unbind(self) -> None:
        # As Linux leaves the chip: receive stopped, clocks off, PHY powered down (the next driver powers it).
        try:
            self._write16(RX_CTL, 0)
            self._write(CLK_SELECT, b"\x00")
            self._write16(PHYPWR_RSTCTL, 0)
        except TransportError as exc:
            log.debug("AX88179 unbind: %s", exc)

    # --- link ---
    def status(self, view: memoryview, length: int) -> LinkEvent | None:
        if length < INT_LEN:
            self.stats.notification_errors += 1
            return None
        up = bool(struct.unpack_from("<I", view, 0)[0] & INT_LINK)
        if not self.link_seen(up):
            return None
        if up and not self.transport.submit_control(REQ_IN, ACCESS_PHY, PHY_ADDR, PHYSR, 2, self._physr_done):
            log.warning("AX88179: no control transfer free to read the link speed")
        return LinkEvent(connected=up)

    def _physr_done(self, status: int, data: bytes) -> None:
        if status != 0 or len(data) != 2:
            log.warning("AX88179: reading the PHY's link status failed (status %d, %d bytes)", status, len(data))
            return
        physr = struct.unpack("<H", data)[0]
        if not physr & PHYSR_LINK:
            return  # gone again: the next interrupt says so
        mode = MEDIUM_RECEIVE_EN | MEDIUM_TXFLOW_CTRLEN | MEDIUM_RXFLOW_CTRLEN
        speed = physr & PHYSR_SPEED_MASK
        if speed == PHYSR_GIGA:
            mode |= MEDIUM_GIGAMODE | MEDIUM_EN_125MHZ
            bps = 1_000_000_000
            bulkin = self._bulkin
        elif speed == PHYSR_100:
            mode |= MEDIUM_PS
            bps = 100_000_000
            bulkin = BULKIN_100 if self._usb_fast else BULKIN_FULL
        else:
            bps = 10_000_000
            bulkin = BULKIN_FULL
        if physr & PHYSR_FULL:
            mode |= MEDIUM_FULL_DUPLEX
        if self._frame > 1514:
            mode |= MEDIUM_JUMBO_EN
        self._medium = mode
        self._submit_write(RX_BULKIN_QCTRL, bulkin)
        self._submit_write(MEDIUM_STATUS_MODE, struct.pack("<H", mode))
        self.events.append(LinkEvent(up_bps=bps, down_bps=bps))

    # --- the interface follows the user ---
    def change_mtu(self, frame: int) -> str | None:
        if frame > self.max_frame:
            return f"the AX88179 takes frames of at most {self.max_frame} bytes (MTU {MAX_MTU})"
        self._frame = frame
        mode = (self._medium | MEDIUM_JUMBO_EN) if frame > 1514 else (self._medium & ~MEDIUM_JUMBO_EN)
        if mode != self._medium:
            self._medium = mode
            self._submit_write(MEDIUM_STATUS_MODE, struct.pack("<H", mode))
        return None

    def change_mac(self, mac: bytes) -> str:
        self._submit_write(NODE_ID, bytes(mac))
        return "written to the chip's NODE_ID register; its filter follows"

    def _filter_bits(self, promisc: bool, allmulti: bool, multicast: list[bytes]) -> tuple[int, bytes | None]:
        rx = RX_CTL_START | RX_CTL_AB | RX_CTL_IPE | RX_CTL_DROPCRCERR
        table = None
        if promisc:
            rx |= RX_CTL_PRO
        elif allmulti or len(multicast) > MAX_MULTICAST:
            rx |= RX_CTL_AMALL
        elif multicast:
            table = multicast_hash(multicast)
            rx |= RX_CTL_AM
        return rx, table

    def set_packet_filter(self, bits: int) -> bool:
        promisc = bool(bits & cdc.PACKET_TYPE_PROMISCUOUS)
        allmulti = bool(bits & (cdc.PACKET_TYPE_ALL_MULTICAST | cdc.PACKET_TYPE_MULTICAST))
        rx, _ = self._filter_bits(promisc, allmulti, [])
        try:
            self._write16(RX_CTL, rx)
        except TransportError as exc:
            log.info("AX88179 refused RX_CTL 0x%04x: %s", rx, exc)
            return False
        self._rx_ctl = rx
        return True

    def apply_filter(self, promisc: bool, allmulti: bool, multicast: list[bytes]) -> str:
        rx, table = self._filter_bits(promisc, allmulti, multicast)
        if table is not None:
            self._submit_write(MULFLTARY, table)
        self._submit_write(RX_CTL, struct.pack("<H", rx))
        self._rx_ctl = rx
        what = "promiscuous" if rx & RX_CTL_PRO else "all multicast" if rx & RX_CTL_AMALL else \
            f"{len(multicast)} multicast groups by hash {table.hex()}" if table else "directed and broadcast only"
        return f"RX_CTL 0x{rx:04x} ({what})"

    # --- TX: one frame per transfer, read in after the 8-byte header ---
    def tx_begin(self, packet: Packet) -> None:
        packet.offset = 0
        self._packet = packet
        self._length = 0

    def tx_slot(self) -> tuple[int, int]:
        if self._length:
            return 0, 0
        # One byte kept free for the padding byte a transfer of a wMaxPacketSize multiple gets.
        return codec.TX_HEADER, self._packet.capacity - codec.TX_HEADER - 1

    def tx_commit(self, length: int) -> bool:
        self._length = length
        return True

    @property
    def tx_count(self) -> int:
        return 1 if self._length else 0

    def tx_commit_offload(self, length: int, meta) -> bool:
        # The checksums need nothing per frame (TXCOE_CTL covers them all); a super-frame needs its MSS.
        self._length = length
        self._mss = meta.mss if meta.gso_type else 0
        return True

    def tx_finish(self) -> tuple[int, bool]:
        n = codec.encode_tx(self._packet.view, self._length, self.maxpacket, self._mss)
        self._length = 0
        self._mss = 0
        return n, False

    # --- RX ---
    def native_rx(self) -> tuple[str, int] | None:
        return ("ax88179", self.max_frame)  # usbnetd.native's decode_ax88179 walks exactly as rx_decode does

    def rx_decode(self, view: memoryview, length: int, sink: RxSink) -> int:
        return self._decoder.decode(view, length, sink.emit)
