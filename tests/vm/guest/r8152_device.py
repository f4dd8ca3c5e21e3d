"""A Realtek RTL8153 USB-to-gigabit-Ethernet chip, played by a FunctionFS gadget on dummy_hcd, in Python.

The bench has no RTL8153, so the chip is emulated closely enough that the kernel's own driver (r8152) binds
it, reads its MAC, gets link and carries traffic; usbnetd's r8152 driver is then tested against the same
device. Written from the register and framing facts the kernel driver (drivers/net/usb/r8152.c, a reference
for facts only) relies on; nothing here is taken from its code. Realtek's datasheet was not at hand, so
"reset values" are the ones the kernel driver expects, and whatever it never reads starts at 0.

Which chip: RTL8153 "version 3" (PLA_TCR1 & 0x7cf0 = 0x5c00, the first RTL8153 silicon). Of the RTL8153
family it is the one the kernel driver handles most simply: no rtl_nic firmware file is asked for (the
RTL8153A-2/3/4, 8153B and later versions load one; a missing file is only a warning, but version 3 needs
none), no PHY patch requests, no UPS power-saving states.

What the emulated chip has:

* USB: VID:PID 0bda:8153, one vendor-class interface FF/FF/00 with bulk IN 0x81, bulk OUT 0x02 and
  interrupt IN 0x83 (2 bytes), full- and high-speed sets, plus five placeholder bulk IN endpoints that
  only make dummy_hcd give out those numbers (see the comment above `descriptors()`).
* Vendor control requests, bRequest 0x05 both ways (bmRequestType C0 read, 40 write; device recipient):
  wValue is the register address (4-byte aligned), wIndex the block (0x0100 PLA, the MAC; 0x0000 USB) in
  the high byte and, on writes of one dword, the byte enables in the low nibble (the high nibble repeats
  them); longer writes are whole dwords. Reads are whole dwords, up to 64 bytes. Anything else stalls.
* Register files for PLA and USB (64 KiB each) with the reset values and status bits the driver polls:
  TCR0/TCR1 (0xe610: TX FIFO empty; the version), BOOT_CTRL (0xe004: autoload done), OOB_CTRL (0xe84f: RX
  and TX FIFO empty, link list ready; NOW_IS_OOB as written), CR (0xe813: reset self-clears; RX/TX
  enable), bit 8 of 0xe000 (the "ALDPS is off" status the driver waits for), IDR (0xc000: the MAC, written
  only while CRWECR 0xe81c is in config mode) and BACKUP (0xd000: the MAC the driver reads at probe), RCR
  (0xc010: accept physical/multicast/broadcast/all), MAR (0xcd00: the 64-bit multicast hash), RMS (0xc016:
  the largest frame taken), MISC_1 (0xe85a: RX gated while RXDY_GATED_EN is set), CPCR (0xe854: RX VLAN
  stripping), PHYSTATUS (0xe908: link, full duplex, 1000 Mbit/s); USB_CTRL (0xd406: RX aggregation
  disabled at reset), RX_EARLY_SIZE (0xd42e: the aggregation limit in 4-byte units).
* The PHY behind the OCP window: the driver writes the upper 4 bits of an OCP PHY address to
  PLA_OCP_GPHY_BASE (0xe86c) and reaches the register at PLA 0xb000 + the low 12 bits. MII registers sit
  at 0xa400 + 2 * reg: BMCR (powered down at reset; reset and restart self-clear), BMSR (link,
  autonegotiation complete), LPA, STAT1000; OCP_PHY_STATUS (0xa420: 5 powered down, 3 LAN on); SRAM
  address/data (0xa436/0xa438) keep what is written; everything else keeps what is written.
* Link notification: 2 bytes on the interrupt endpoint, little endian; bit 2 (INTR_LINK) is the link.
  Sent on every change and repeated once a second while the host polls.
* RX (device to host): frames read from the TAP (the wire, in a peer namespace), filtered by RCR, IDR and
  MAR, are packed into one bulk IN transfer: per frame a 24-byte descriptor (opts1 bits 0-14: the length
  including the 4-byte FCS; opts2 bit 16 + the swapped TCI when the chip stripped a VLAN tag), the frame
  padded to 60 bytes as on the wire, its FCS, then padding to the next 8-byte boundary. Frames are added
  until the total passes RX_EARLY_SIZE (one frame per transfer while aggregation is disabled). No RX
  checksum result is claimed (opts2 checksum bits 0: "not checked").
* TX (host to device): per frame an 8-byte descriptor at a 4-byte aligned offset, then the frame: opts1
  the length (bits 0-17), first/last segment (bits 31/30), large send v4/v6 (bits 28/27) with the TCP
  header offset (bits 18-24); opts2 UDP/TCP/IPv4/IPv6 checksum (bits 31-28), the MSS (bits 17-27) and the
  VLAN tag to insert (bit 16 + swapped TCI). Large-send frames are cut into TCP segments and the checksums
  filled in (the AX88179 emulator's segmenter and checksum engine). The host never pads, and a transfer
  that is a multiple of wMaxPacketSize without a ZLP runs on into the next one on dummy_hcd, so OUT data is
  parsed as a stream (a frame split across reads is kept until its rest arrives).

Commands (JSON lines on stdin, one JSON line back, as in ffs_device.py): ``stats`` (counters and the
registers that matter), ``cable_out`` / ``cable_in``, ``ep0_silent`` / ``ep0_answer``, ``ep0_stall`` /
``ep0_normal``, ``garbage`` / ``sane`` (every register read answers one byte short, 0xA5 filler),
``int_silent`` / ``int_talk``, and the one-shot ``stall_next`` / ``garbage_next`` (only the next version read,
a driver's first request, stalls / answers short: the driver that comes after is served sanely).
Options ``--no-cable``, ``--ep0-silent``, ``--ep0-stall``, ``--garbage``, ``--int-silent`` set them from
the start.
"""

from __future__ import annotations

import collections
import os
import select
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

if __package__:
    from . import ax88179_device as ax
    from . import ffs_device as ffs
    from . import vendor_device as vendor
else:  # run as a script (the device process) or loaded by path (the core tier): the neighbours sit here
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ax88179_device as ax  # type: ignore[no-redef]
    import ffs_device as ffs  # type: ignore[no-redef]
    import vendor_device as vendor  # type: ignore[no-redef]

# -- the chip's facts ---------------------------------------------------------------------------------------

VID, PID = 0x0BDA, 0x8153
REQ_REGS = 0x05
MCU_PLA, MCU_USB = 0x0100, 0x0000
VERSION_RTL8153_V3 = 0x5C00  # PLA_TCR1 & 0x7cf0

# PLA registers.
PLA_IDR, PLA_RCR, PLA_RMS, PLA_MAR, PLA_BACKUP = 0xC000, 0xC010, 0xC016, 0xCD00, 0xD000
PLA_ALDPS_STATUS = 0xE000  # bit 8: set once ALDPS is off (the driver polls it)
PLA_BOOT_CTRL, AUTOLOAD_DONE = 0xE004, 0x0002
PLA_TCR0, PLA_TCR1, TCR0_TX_EMPTY = 0xE610, 0xE612, 0x0800
PLA_CR, CR_RST, CR_RE, CR_TE = 0xE813, 0x10, 0x08, 0x04
PLA_CRWECR, CRWECR_CONFIG = 0xE81C, 0xC0
PLA_OOB_CTRL, OOB_STATUS = 0xE84F, 0x20 | 0x10 | 0x02  # TX/RX FIFO empty, link list ready
NOW_IS_OOB = 0x80
PLA_CPCR, CPCR_RX_VLAN = 0xE854, 0x0040
PLA_MISC_1, RXDY_GATED_EN = 0xE85A, 0x0008
PLA_OCP_GPHY_BASE = 0xE86C
PLA_PHYSTATUS = 0xE908
PHYSTATUS_1000, PHYSTATUS_LINK, PHYSTATUS_FULL = 0x10, 0x02, 0x01
RCR_AAP, RCR_APM, RCR_AM, RCR_AB = 0x01, 0x02, 0x04, 0x08

# USB registers.
USB_USB_CTRL, RX_AGG_DISABLE, RX_ZERO_EN = 0xD406, 0x0010, 0x0080
USB_RX_EARLY_SIZE = 0xD42E

# PHY (OCP addresses).
OCP_BASE_MII = 0xA400
MII_BMCR, MII_BMSR, MII_PHYSID1, MII_PHYSID2, MII_ADVERTISE, MII_LPA = 0, 1, 2, 3, 4, 5
MII_CTRL1000, MII_STAT1000 = 9, 10
BMCR_RESET, BMCR_ANRESTART, BMCR_PDOWN = 0x8000, 0x0200, 0x0800
BMSR_CAPS, BMSR_LINK, BMSR_ANEG_COMPLETE = 0x7949, 0x0004, 0x0020
OCP_PHY_STATUS, PHY_STAT_LAN_ON, PHY_STAT_PWRDN = 0xA420, 3, 5
OCP_SRAM_ADDR, OCP_SRAM_DATA = 0xA436, 0xA438

INTR_LINK = 0x0004
RX_DESC_LEN, TX_DESC_LEN = 24, 8
RX_VLAN_TAG = 1 << 16
TX_FS, TX_LS, GTSENDV4, GTSENDV6 = 1 << 31, 1 << 30, 1 << 28, 1 << 27
TX_UDP_CS, TX_TCP_CS, TX_IPV4_CS, TX_IPV6_CS, TX_VLAN_TAG = 1 << 31, 1 << 30, 1 << 29, 1 << 28, 1 << 16
TX_LEN_MASK, MSS_SHIFT, MSS_MASK = 0x3FFFF, 17, 0x7FF
TX_MAX_FRAME = 16384  # the kernel driver's TX aggregate buffer; a longer descriptor is garbage


def mar_bit(mac: bytes) -> tuple[int, int]:
    """(byte index in MAR, bit) of a multicast address: hash n = top 6 bits of the Ethernet CRC; the kernel
    driver's two 32-bit words go into MAR as one big-endian 64-bit number, so bit n is byte 7 - n/8."""
    n = ax.mc_hash_bit(mac)
    return 7 - (n >> 3), n & 7


def pack_rx(frames: list[tuple[bytes, int]], maxpacket: int = 512) -> bytes:
    """[(frame, opts2)] -> one bulk IN transfer in the chip's format (module docstring). A transfer that
    would be a multiple of wMaxPacketSize gets 8 zero bytes more, shorter than a descriptor: it then ends
    with a short packet and the host's walk stops there (ours, not a documented chip behaviour)."""
    out = bytearray()
    for frame, opts2 in frames:
        frame = frame.ljust(60, b"\0")
        fcs = struct.pack("<I", zlib.crc32(frame) & 0xFFFFFFFF)
        out += struct.pack("<6I", (len(frame) + 4) & 0x7FFF, opts2, 0, 0, 0, 0)
        out += frame + fcs
        out += bytes(-len(out) % 8)
    if len(out) % maxpacket == 0:
        out += bytes(8)
    return bytes(out)


class TxStream:
    """Bulk OUT data -> (frame, opts1, opts2) per descriptor, across reads."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.malformed = 0

    def feed(self, data: bytes) -> list[tuple[bytes, int, int]]:
        self.buf += data
        out, pos = [], 0
        while True:
            pos = (pos + 3) & ~3
            if pos + TX_DESC_LEN > len(self.buf):
                break
            opts1, opts2 = struct.unpack_from("<II", self.buf, pos)
            length = opts1 & TX_LEN_MASK
            if not (opts1 & TX_FS and opts1 & TX_LS) or not 14 <= length <= TX_MAX_FRAME:
                self.malformed += 1  # lost sync: drop everything held
                pos = len(self.buf)
                break
            if pos + TX_DESC_LEN + length > len(self.buf):
                break  # the rest comes with the next read
            out.append((bytes(self.buf[pos + 8 : pos + 8 + length]), opts1, opts2))
            pos += TX_DESC_LEN + length
        del self.buf[: min(pos, len(self.buf))]
        return out


# -- the register model (the device process uses it; the core tier drives usbnetd against it too) ----------


class Registers:
    """The chip's PLA and USB register files and its PHY, as the module docstring describes; thread-unsafe
    (the caller locks). `read(index, addr, n)` / `write(index, addr, data)` are the vendor request's view:
    `index` is wIndex (block and byte enables)."""

    def __init__(self, mac: bytes, *, cable: bool = True) -> None:
        self.pla = bytearray(0x10000)
        self.usb = bytearray(0x10000)
        self.phy = bytearray(0x10000)  # the OCP PHY space
        self.sram: dict[int, int] = {}
        self.cable = cable
        self.counts: collections.Counter[str] = collections.Counter()
        self.events: collections.deque[str] = collections.deque(maxlen=200)
        self.link_changed: Callable[[], None] = lambda: None
        struct.pack_into("<HH", self.pla, PLA_TCR0, TCR0_TX_EMPTY, VERSION_RTL8153_V3)
        struct.pack_into("<H", self.pla, PLA_BOOT_CTRL, AUTOLOAD_DONE)
        struct.pack_into("<H", self.pla, PLA_ALDPS_STATUS, 0x0100)
        self.pla[PLA_OOB_CTRL] = NOW_IS_OOB | OOB_STATUS
        self.pla[PLA_IDR : PLA_IDR + 6] = mac  # loaded from the eFuse at power-on
        self.pla[PLA_BACKUP : PLA_BACKUP + 6] = mac
        struct.pack_into("<H", self.pla, PLA_RMS, 1522)
        struct.pack_into("<H", self.pla, PLA_MISC_1, RXDY_GATED_EN)
        struct.pack_into("<H", self.usb, USB_USB_CTRL, RX_AGG_DISABLE | RX_ZERO_EN)
        for reg, value in ((MII_BMCR, 0x1140 | BMCR_PDOWN), (MII_PHYSID1, 0x001C), (MII_PHYSID2, 0xC800),
                           (MII_ADVERTISE, 0x01E1), (MII_CTRL1000, 0x0200)):
            struct.pack_into("<H", self.phy, OCP_BASE_MII + 2 * reg, value)

    def pla16(self, at: int) -> int:
        return struct.unpack_from("<H", self.pla, at)[0]

    def usb16(self, at: int) -> int:
        return struct.unpack_from("<H", self.usb, at)[0]

    def mii(self, reg: int) -> int:
        return struct.unpack_from("<H", self.phy, OCP_BASE_MII + 2 * reg)[0]

    @property
    def phy_up(self) -> bool:
        return not self.mii(MII_BMCR) & BMCR_PDOWN

    @property
    def link(self) -> bool:
        return self.cable and self.phy_up

    def phy_read16(self, addr: int) -> int:
        up = self.link
        dynamic = {
            OCP_BASE_MII + 2 * MII_BMSR: BMSR_CAPS | ((BMSR_LINK | BMSR_ANEG_COMPLETE) if up else 0),
            OCP_BASE_MII + 2 * MII_LPA: 0x45E1 if up else 0,
            OCP_BASE_MII + 2 * MII_STAT1000: 0x7C00 if up else 0x3000,
            OCP_PHY_STATUS: PHY_STAT_LAN_ON if self.phy_up else PHY_STAT_PWRDN,
            OCP_SRAM_DATA: self.sram.get(struct.unpack_from("<H", self.phy, OCP_SRAM_ADDR)[0], 0),
        }
        if addr in dynamic:
            return dynamic[addr]
        return struct.unpack_from("<H", self.phy, addr)[0]

    def phy_write16(self, addr: int, value: int) -> None:
        if addr == OCP_BASE_MII + 2 * MII_BMCR:
            value &= ~(BMCR_RESET | BMCR_ANRESTART)  # both self-clear at once
        elif addr == OCP_SRAM_DATA:
            self.sram[struct.unpack_from("<H", self.phy, OCP_SRAM_ADDR)[0]] = value
        struct.pack_into("<H", self.phy, addr, value)

    def space(self, index: int) -> bytearray | None:
        return {MCU_PLA: self.pla, MCU_USB: self.usb}.get(index & 0xFF00)

    def valid(self, index: int, addr: int, length: int) -> bool:
        """A request the chip answers: a known block, dword-aligned, whole dwords, inside the block."""
        return (self.space(index) is not None and addr % 4 == 0 and length > 0 and length % 4 == 0
                and addr + length <= 0x10000)

    def read(self, index: int, addr: int, length: int) -> bytes:
        mem = self.space(index)
        out = bytearray(mem[addr : addr + length])
        if mem is self.pla:
            base = self.pla16(PLA_OCP_GPHY_BASE) & 0xF000
            for off in range(0, length, 2):
                a = addr + off
                if 0xB000 <= a < 0xC000:
                    struct.pack_into("<H", out, off, self.phy_read16(base | (a & 0x0FFF)))
                elif a == PLA_PHYSTATUS:
                    st = (PHYSTATUS_1000 | PHYSTATUS_LINK | PHYSTATUS_FULL) if self.link else 0
                    struct.pack_into("<H", out, off, st)
            if addr <= PLA_OOB_CTRL < addr + length:
                out[PLA_OOB_CTRL - addr] |= OOB_STATUS
        return bytes(out)

    def write(self, index: int, addr: int, data: bytes) -> None:
        mem = self.space(index)
        enables = index & 0x0F if len(data) == 4 else 0x0F  # longer writes are whole dwords
        before = self.link
        for i, b in enumerate(data):
            if not enables >> (i & 3) & 1:
                continue
            a = addr + i
            if mem is self.pla and PLA_IDR <= a < PLA_IDR + 8 and self.pla[PLA_CRWECR] != CRWECR_CONFIG:
                self.counts["idr_write_locked"] += 1
                continue
            mem[a] = b
        if mem is self.pla:
            base = self.pla16(PLA_OCP_GPHY_BASE) & 0xF000
            for off in range(0, len(data), 2):
                a = addr + off
                if 0xB000 <= a < 0xC000 and enables >> (off & 3) & 3:
                    self.phy_write16(base | (a & 0x0FFF), struct.unpack_from("<H", self.pla, a)[0])
            if self.pla[PLA_CR] & CR_RST:
                self.pla[PLA_CR] = 0  # the reset is done at once, and stops RX and TX
                self.events.append("CR reset")
        if self.link != before:
            self.events.append(f"PHY -> link {self.link}")
            self.link_changed()

    def set_cable(self, cable: bool) -> None:
        self.cable = cable
        self.link_changed()

    # -- what the data path asks --------------------------------------------------------------------
    @property
    def tx_on(self) -> bool:
        return self.link and bool(self.pla[PLA_CR] & CR_TE)

    def rx_limit(self) -> int:
        """Bytes to aggregate into one IN transfer (0: one frame per transfer)."""
        if self.usb16(USB_USB_CTRL) & RX_AGG_DISABLE:
            return 0
        return self.usb16(USB_RX_EARLY_SIZE) * 4

    def accepts(self, frame: bytes) -> str | None:
        """Why the receive filter drops `frame`, or None when it passes."""
        if not self.link:
            return "rx_no_link"
        if not self.pla[PLA_CR] & CR_RE or self.pla16(PLA_MISC_1) & RXDY_GATED_EN:
            return "rx_stopped"
        rcr = self.pla[PLA_RCR]
        if len(frame) + 4 > self.pla16(PLA_RMS):
            return "rx_too_long"
        if rcr & RCR_AAP:
            return None
        dst = frame[:6]
        if dst == b"\xff" * 6:
            return None if rcr & RCR_AB else "rx_filtered_broadcast"
        if dst[0] & 1:
            byte, bit = mar_bit(dst)
            if rcr & RCR_AM and self.pla[PLA_MAR + byte] >> bit & 1:
                return None
            return "rx_filtered_multicast"
        ok = rcr & RCR_APM and dst == bytes(self.pla[PLA_IDR : PLA_IDR + 6])
        return None if ok else "rx_filtered_unicast"

    def rx_opts2(self, frame: bytes) -> tuple[bytes, int]:
        """(frame as sent to the host, opts2): the VLAN tag stripped into opts2 when CPCR says so."""
        if self.pla16(PLA_CPCR) & CPCR_RX_VLAN and len(frame) >= 18 and frame[12:14] == b"\x81\x00":
            tci = struct.unpack_from("!H", frame, 14)[0]
            self.counts["rx_vlan_stripped"] += 1
            return frame[:12] + frame[16:], RX_VLAN_TAG | ((tci & 0xFF) << 8) | (tci >> 8)
        return frame, 0

    def registers(self) -> dict:
        return {"rcr": struct.unpack_from("<I", self.pla, PLA_RCR)[0], "cr": self.pla[PLA_CR],
                "idr": self.pla[PLA_IDR : PLA_IDR + 6].hex(":"), "mar": self.pla[PLA_MAR : PLA_MAR + 8].hex(),
                "rms": self.pla16(PLA_RMS), "misc_1": self.pla16(PLA_MISC_1), "cpcr": self.pla16(PLA_CPCR),
                "oob_ctrl": self.pla[PLA_OOB_CTRL], "usb_ctrl": self.usb16(USB_USB_CTRL),
                "rx_early_size": self.usb16(USB_RX_EARLY_SIZE), "bmcr": self.mii(MII_BMCR), "link": self.link}


def tx_frames(frame: bytes, opts1: int, opts2: int, counts: collections.Counter) -> list[bytearray]:
    """What the chip puts on the wire for one TX descriptor: VLAN insertion, TSO, checksum fill."""
    if opts2 & TX_VLAN_TAG:
        tci = opts2 & 0xFFFF
        tci = ((tci & 0xFF) << 8) | (tci >> 8)
        frame = frame[:12] + struct.pack("!HH", 0x8100, tci) + frame[12:]
        counts["tx_vlan_inserted"] += 1
    segs = None
    if opts1 & (GTSENDV4 | GTSENDV6):
        coe = (ax.TXCOE_IP | ax.TXCOE_TCP) if opts1 & GTSENDV4 else ax.TXCOE_TCPV6
        segs = ax.tso_segments(frame, (opts2 >> MSS_SHIFT) & MSS_MASK)
        counts["tso_frames"] += 1
    else:
        coe = 0
        if opts2 & TX_IPV4_CS:
            coe |= (ax.TXCOE_TCP if opts2 & TX_TCP_CS else 0) | (ax.TXCOE_UDP if opts2 & TX_UDP_CS else 0)
        if opts2 & TX_IPV6_CS:
            coe |= (ax.TXCOE_TCPV6 if opts2 & TX_TCP_CS else 0) | (ax.TXCOE_UDPV6 if opts2 & TX_UDP_CS else 0)
        if coe:
            counts["tx_csum_frames"] += 1
    out = segs or [bytearray(frame)]
    if coe:
        for seg in out:
            ax.fill_checksums(seg, coe)
    return out


# -- the device process: the chip on FunctionFS -----------------------------------------------------------------

# The kernel driver refuses a chip whose endpoints are not bulk IN 1, bulk OUT 2 and interrupt IN 3, and
# FunctionFS takes the endpoint numbers from dummy_hcd's autoconfiguration (in descriptor order), which has no
# fixed endpoint 3: its named IN endpoints are 1, 2, 5, 6, 10, 11, 15 (5, 10, 15 interrupt-only), and its
# generic ones are numbered by a counter, one up per generic IN endpoint given out (1, 2, 3, ...). So the
# RTL8153 interface carries five placeholder bulk IN endpoints between bulk OUT and the interrupt endpoint,
# which soak up ep6in, ep11in, ep2in and the first two generic endpoints, and the interrupt endpoint's
# full-speed descriptor says bulk (autoconfiguration uses it; "bulk" keeps it off the interrupt-only ep5in)
# so that it gets the third generic endpoint: 0x83. The high-speed descriptors, which the host sees, say
# interrupt (dummy_hcd lets a generic endpoint do interrupt transfers). Two placeholders repeat 0x81 and
# 0x82; the host skips them ("duplicate endpoint" notices in dmesg) and dummy_hcd routes 0x81 to ep1in-bulk,
# the first endpoint with that address. The kernel driver takes the first bulk IN, bulk OUT and interrupt IN
# it finds (ours) and reads the interrupt interval from the third endpoint: the placeholders have bInterval
# 8 so that it gets the same interval as from a real chip. Nothing ever reads the placeholders.
FILLER_EPS = 5
EP_IN, EP_OUT, EP_INT = 0x81, 0x02, 0x83
BCD_DEVICE = 0x3000


def descriptors() -> bytes:
    sets = []
    for bulk_mp, hs in ((64, False), (512, True)):
        descs = [ffs._interface(0, 3 + FILLER_EPS, 0xFF, 0xFF, 0x00),
                 ffs._endpoint(EP_IN, ffs.BULK, bulk_mp), ffs._endpoint(EP_OUT, ffs.BULK, bulk_mp)]
        descs += [ffs._endpoint(0x84 + i, ffs.BULK, bulk_mp, 8) for i in range(FILLER_EPS)]
        descs.append(ffs._endpoint(EP_INT, ffs.INTERRUPT, 2, 8) if hs else ffs._endpoint(EP_INT, ffs.BULK, 64))
        sets.append(descs)
    body = struct.pack("<II", len(sets[0]), len(sets[1])) + b"".join(b"".join(s) for s in sets)
    # FUNCTIONFS_ALL_CTRL_RECIP (64): the chip's requests are addressed to the device, not an interface.
    flags = ffs.HAS_FS_DESC | ffs.HAS_HS_DESC | 64
    return struct.pack("<III", ffs.DESCRIPTORS_MAGIC_V2, 12 + len(body), flags) + body


class Chip(vendor.VendorChip):
    """The chip on FunctionFS (vendor_device.VendorChip: ep0, the fault switches, commands, threads)."""

    def __init__(self, mount: Path, tap: str, mac: bytes, **faults) -> None:
        self.regs = Registers(mac)  # first: the cable below lives in it
        super().__init__(mount, tap, descriptors(), {"ep_in": 1, "ep_out": 2, "ep_int": 3 + FILLER_EPS}, **faults)
        self.regs.counts, self.regs.events = self.counts, self.events
        self.regs.link_changed = self.link_event.set
        self.tx = TxStream()

    cable = property(lambda self: self.regs.cable, lambda self, v: setattr(self.regs, "cable", v))

    def set_cable(self, cable: bool) -> None:
        self.regs.set_cable(cable)

    # -- ep0 (VendorChip's loop calls this per SETUP) --------------------------------------------------
    def setup(self, rt: int, req: int, value: int, index: int, length: int) -> None:
        # The one-shot faults wait for a driver's first request, the version read (PLA_TCR0 as a whole dword):
        # a driver on its way out (the kernel's, closing its interface) reads TCR0 only as a word.
        stall, short = self.one_shot(rt == 0xC0 and value == PLA_TCR0 and index == MCU_PLA)
        ok = rt & 0x60 == 0x40 and req == REQ_REGS and self.regs.valid(index, value, length) \
            and not self.ep0_stall and not stall and not (rt & 0x80 and length > 64)
        if not ok:
            self.stall(rt)
            return
        if rt & 0x80:
            with self.lock:
                data = self.regs.read(index, value, length)
            self.answer(data, short)
        else:
            data = os.read(self.ep0, length)
            with self.lock:
                self.regs.write(index, value, data)
            self.counts["vendor_writes"] += 1

    # -- link notification (VendorChip's loop sends this) -------------------------------------------------
    def link_up(self) -> bool:
        return self.regs.link

    def link_note(self, up: bool) -> bytes:
        return struct.pack("<H", INTR_LINK if up else 0)

    def registers(self) -> dict:
        return self.regs.registers()

    # -- TX: host to wire -------------------------------------------------------------------------------
    def out_loop(self) -> None:
        for data in self.out_transfers():
            bad = self.tx.malformed
            frames = self.tx.feed(data)
            self.counts["out_malformed"] += self.tx.malformed - bad
            if len(frames) > 1:
                self.counts["out_multi_frame_transfers"] += 1
            with self.lock:
                on = self.regs.tx_on
            for frame, opts1, opts2 in frames:
                if not on:
                    self.counts["tx_off"] += 1
                    continue
                for seg in tx_frames(frame, opts1, opts2, self.counts):
                    try:
                        os.write(self.tap, seg)
                        self.counts["out_frames"] += 1
                    except OSError:
                        self.counts["tap_write_errors"] += 1

    # -- RX: wire to host -------------------------------------------------------------------------------
    def in_loop(self) -> None:
        while True:
            select.select([self.tap], [], [])
            frames: list[tuple[bytes, int]] = []
            with self.lock:
                limit = self.regs.rx_limit()
            used = 0
            while True:
                try:
                    frame = os.read(self.tap, 16384)
                except BlockingIOError:
                    break
                with self.lock:
                    why = self.regs.accepts(frame)
                    if not why:
                        frame, opts2 = self.regs.rx_opts2(frame)
                if why:
                    self.counts[why] += 1
                    continue
                frames.append((frame, opts2))
                used += RX_DESC_LEN + (max(len(frame), 60) + 4 + 7) // 8 * 8
                if used >= limit:
                    break
            if not frames:
                continue
            self.send_in(pack_rx(frames), len(frames))


def main(argv: list[str] | None = None) -> int:
    return vendor.main(argv, "r8153", __doc__.splitlines()[0],
                       lambda a, mac: Chip(a.mount, a.tap, mac, **vendor.fault_kwargs(a)))


class R8153Gadget(vendor.VendorGadget):
    """The emulated chip as a gadget: FfsGadget's configfs and process handling, this file as the device."""

    VID, PID = VID, PID
    SCRIPT = __file__
    PRODUCT = "RTL8153 (usbnetd emulator)"
    KIND = "r8153"


if __name__ == "__main__":
    sys.exit(main())
