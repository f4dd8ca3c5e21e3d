"""An ASIX AX88179 USB-to-gigabit-Ethernet chip, played by a FunctionFS gadget on dummy_hcd, in Python.

The bench has no AX88179 (this machine has no USB at all), so the chip is emulated closely enough that
the kernel's own driver (ax88179_178a) binds it, reads its MAC, gets link and carries traffic; usbnetd's
vendor driver is then tested against the same device. Written from the register and framing facts the
kernel driver (drivers/net/usb/ax88179_178a.c, a reference for facts only) relies on; nothing here is taken
from its code. ASIX's datasheet was not at hand, so "reset values" are the ones the kernel driver expects
(GENERAL_STATUS says second-generation silicon, the EEPROM's check byte is right, the USB FIFO is empty),
and whatever the driver never reads starts at 0.

What the emulated chip has:

* USB: VID:PID 0b95:1790, one vendor-class interface FF/FF/00 with an interrupt IN endpoint (8 bytes,
  link status), a bulk IN and a bulk OUT endpoint, full- and high-speed descriptor sets (dummy_hcd is a
  high-speed controller, so PHYSICAL_LINK_STATUS says USB high speed).
* Vendor control requests (bmRequestType C0 / 40, device recipient): 0x01 MAC register access (wValue the
  register, wIndex and wLength the byte count), 0x02 PHY access (wValue the PHY address, wIndex the PHY
  register, 2 bytes), 0x04 EEPROM words (wValue the word), 0x05 eFuse bytes, 0x06 reload EEPROM/eFuse,
  and 0x81 (USB TX FIFO status, always "empty"). Anything else stalls.
* A MAC register file (256 bytes) whose reads return reset values and status bits, and whose writes
  take effect: RX_CTL (0x0B: start, promiscuous, all-multicast, hash multicast, broadcast, the 2-byte IP
  alignment header), NODE_ID (0x10, the MAC the receive filter matches), MULFLTARY (0x16, the 64-bit
  multicast hash: CRC-32 of the address, top 6 bits), MEDIUM_STATUS_MODE (0x22: receive enable, jumbo),
  PHYPWR_RSTCTL (0x26: the PHY is powered, and can have link, only with IPRL set), RX_BULKIN_QCTRL (0x2E:
  the RX aggregation size in KiB), TXCOE_CTL (0x35: which checksums the chip fills in on TX), SROM
  address/command/data (0x07-0x0A: EEPROM reads through registers, never busy).
* A PHY (address 3): BMCR, BMSR (link, autonegotiation complete), the gigabit/full-duplex status in
  PHYSR (0x11: speed bits, duplex, link), LED and page-select registers that keep what is written,
  MMD access registers that read 0 (no EEE).
* A serial EEPROM image with a valid checksum over bytes 6..10 and an LED mode word at 0x42, and a blank
  eFuse (all 0xFF), so the driver takes the EEPROM path.
* Link notification: 8 bytes on the interrupt endpoint, two little-endian words; bit 16 of the first is
  the link. Sent on every change and repeated once a second while the host polls.
* RX (device to host): frames read from the TAP (the wire, in a peer namespace), filtered by RX_CTL and
  NODE_ID/MULFLTARY, are packed into one bulk IN transfer up to the aggregation size: each frame (behind
  a 2-byte alignment header when RX_CTL has IPE) padded to 8 bytes; then per frame a 32-bit descriptor
  (length including the alignment header in bits 16-28) and a dummy descriptor (length 0, drop bit 31);
  then 4 bytes of padding and the 32-bit trailer: descriptor count (low 16 bits) and the offset of the
  first descriptor (high 16). No RX checksum result is claimed (L4 type 0: "not checked").
* TX (host to device): per frame an 8-byte header, the frame length (32 bits) and a second word with the
  TSO MSS in bits 0-14 and 0x80008000 set when the host padded the transfer (then whatever follows the
  frame is padding). Frames are taken back to back; a frame with an MSS larger than one segment is cut
  into TCP segments (IPv4 and IPv6), and the IPv4 header, TCP and UDP checksums are filled in as
  TXCOE_CTL says, as the chip does for the kernel driver's checksum and TSO offloads.

Commands (JSON lines on stdin, one JSON line back, as in ffs_device.py): ``stats`` (counters and the
registers that matter), ``cable_out`` / ``cable_in`` (the Ethernet cable: link follows), ``ep0_silent`` /
``ep0_answer`` (requests read but never answered), ``ep0_stall`` / ``ep0_normal`` (every vendor request
stalls), ``garbage`` / ``sane`` (every vendor read answers one byte short, with 0xA5 filler), ``int_silent``
/ ``int_talk`` (the interrupt endpoint never sends a status).
Options ``--no-cable``, ``--ep0-silent``, ``--ep0-stall``, ``--garbage``, ``--int-silent`` set them from
the start.
"""

from __future__ import annotations

import os
import select
import struct
import sys
from array import array
from pathlib import Path

if __package__:
    from . import ffs_device as ffs
    from . import vendor_device as vendor
else:  # run as a script (the device process) or loaded by path (the core tier): the neighbours sit here
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ffs_device as ffs  # type: ignore[no-redef]
    import vendor_device as vendor  # type: ignore[no-redef]

# -- the chip's facts ---------------------------------------------------------------------------------------

VID, PID = 0x0B95, 0x1790

# Vendor requests (bRequest).
ACCESS_MAC, ACCESS_PHY, ACCESS_EEPROM, ACCESS_EFUSE, RELOAD_EEPROM_EFUSE = 0x01, 0x02, 0x04, 0x05, 0x06
USB_FIFO_STATUS = 0x81

PHY_ADDR = 3
# MAC registers.
PHYSICAL_LINK_STATUS, GENERAL_STATUS = 0x02, 0x03
USB_HS, SECLD = 0x02, 0x04
SROM_ADDR, SROM_DATA_LOW, SROM_DATA_HIGH, SROM_CMD = 0x07, 0x08, 0x09, 0x0A
EEP_RD, EEP_BUSY = 0x04, 0x10
RX_CTL = 0x0B
RX_CTL_IPE, RX_CTL_START, RX_CTL_AM, RX_CTL_AB, RX_CTL_AMALL, RX_CTL_PRO = 0x200, 0x80, 0x10, 0x08, 0x02, 0x01
NODE_ID, MULFLTARY = 0x10, 0x16
MEDIUM_STATUS_MODE = 0x22
MEDIUM_RECEIVE_EN, MEDIUM_JUMBO_EN = 0x100, 0x8040
PHYPWR_RSTCTL = 0x26
PHYPWR_IPRL = 0x20
RX_BULKIN_QCTRL = 0x2E
TXCOE_CTL = 0x35
TXCOE_IP, TXCOE_TCP, TXCOE_UDP, TXCOE_TCPV6, TXCOE_UDPV6 = 0x01, 0x02, 0x04, 0x20, 0x40

# PHY registers.
MII_BMCR, MII_BMSR, MII_PHYSID1, MII_PHYSID2, MII_ADVERTISE, MII_LPA = 0, 1, 2, 3, 4, 5
MII_CTRL1000, MII_STAT1000 = 9, 10
BMSR_LINK, BMSR_ANEG_COMPLETE = 0x0004, 0x0020
BMSR_CAPS = 0x7949  # 10/100 half/full, autonegotiation able, extended status, extended capabilities
PHYSR = 0x11
PHYSR_GIGA, PHYSR_FULL, PHYSR_LINK = 0x8000, 0x2000, 0x0400

INT_LINK = 1 << 16  # in the first word of the interrupt transfer
RXHDR_DROP = 1 << 31
TX_PADDED = 0x80008000

FRAME_NO_JUMBO = 1522  # largest frame without MEDIUM_JUMBO_EN: 1518 plus a VLAN tag
FRAME_JUMBO = 4102  # the kernel driver's largest MTU (4088) plus the Ethernet header


def eeprom_image() -> bytearray:
    """256 bytes: word 0 not blank, bytes 6..9 with their check byte 10, LED mode at word 0x42."""
    img = bytearray(b"\xff" * 256)
    img[0:6] = b"\x10\x17\x95\x0b\x90\x17"  # arbitrary, not 0xFF: "an EEPROM is there"
    img[6:10] = b"\x20\x07\x81\x00"
    s = sum(img[6:10])
    s = (s >> 8) + (s & 0xFF)
    img[10] = 0xFF - s  # (fold(bytes 6..9) + byte 10) must be 0xFF
    img[11] = 0
    led = 0x0001 | 0x0100 | 0x1000 | 0x8000  # LED0 active, LED1 gigabit link, LED2 100 link, valid
    struct.pack_into("<H", img, 0x42 * 2, led)
    struct.pack_into("<H", img, 0x43 * 2, 0x0000)  # no PHY auto-detach
    return img


# -- checksums and TSO ---------------------------------------------------------------------------------------


def _sum16(data: bytes | bytearray | memoryview) -> int:
    """One's-complement sum of 16-bit words as loaded in this machine's byte order (RFC 1071 §2(B): the
    result is stored back in the same order, so it is right on either endianness)."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    s = sum(array("H", bytes(data)))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _fill(buf: bytearray, at: int, parts: list[bytes | bytearray | memoryview]) -> None:
    """Store the checksum over `parts` at buf[at:at+2] (the field must be zero in `parts`)."""
    s = 0
    for p in parts:
        s += _sum16(p)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("=H", buf, at, ~s & 0xFFFF)


def _l3(frame: bytes | bytearray) -> tuple[int, int]:
    """(ethertype, offset of the network header), past one VLAN tag."""
    et = struct.unpack_from("!H", frame, 12)[0]
    if et == 0x8100 and len(frame) >= 18:
        return struct.unpack_from("!H", frame, 16)[0], 18
    return et, 14


def fill_checksums(frame: bytearray, coe: int) -> None:
    """What the chip's TX checksum engine does: the IPv4 header, TCP and UDP checksums, as TXCOE_CTL says."""
    if len(frame) < 34:
        return
    et, l3 = _l3(frame)
    if et == 0x0800:
        ihl = (frame[l3] & 0x0F) * 4
        if ihl < 20 or len(frame) < l3 + ihl:
            return
        total = struct.unpack_from("!H", frame, l3 + 2)[0]
        end = min(len(frame), l3 + total)
        if coe & TXCOE_IP:
            frame[l3 + 10 : l3 + 12] = b"\0\0"
            _fill(frame, l3 + 10, [memoryview(frame)[l3 : l3 + ihl]])
        if struct.unpack_from("!H", frame, l3 + 6)[0] & 0x3FFF:
            return  # a fragment: no L4 checksum
        proto, l4 = frame[l3 + 9], l3 + ihl
        pseudo = bytes(frame[l3 + 12 : l3 + 20]) + struct.pack("!BBH", 0, proto, end - l4)
        want = {6: TXCOE_TCP, 17: TXCOE_UDP}.get(proto, 0)
    elif et == 0x86DD:
        if len(frame) < l3 + 40:
            return
        plen = struct.unpack_from("!H", frame, l3 + 4)[0]
        proto, l4 = frame[l3 + 6], l3 + 40
        end = min(len(frame), l4 + plen)
        pseudo = bytes(frame[l3 + 8 : l3 + 40]) + struct.pack("!IxxxB", end - l4, proto)
        want = {6: TXCOE_TCPV6, 17: TXCOE_UDPV6}.get(proto, 0)
    else:
        return
    if not coe & want:
        return
    field = l4 + (16 if proto == 6 else 6)
    if end < field + 2:
        return
    frame[field : field + 2] = b"\0\0"
    _fill(frame, field, [pseudo, memoryview(frame)[l4:end]])
    if proto == 17 and frame[field : field + 2] == b"\0\0":
        frame[field : field + 2] = b"\xff\xff"  # UDP: a computed 0 is sent as all ones


def tso_segments(frame: bytes | bytearray, mss: int) -> list[bytearray] | None:
    """Cut a TCP frame into segments of at most `mss` payload bytes (None: not TCP, or nothing to cut)."""
    et, l3 = _l3(frame)
    if et == 0x0800 and len(frame) >= l3 + 20:
        ihl = (frame[l3] & 0x0F) * 4
        if frame[l3 + 9] != 6:
            return None
        l4 = l3 + ihl
    elif et == 0x86DD and len(frame) >= l3 + 40:
        if frame[l3 + 6] != 6:
            return None
        l4 = l3 + 40
    else:
        return None
    if len(frame) < l4 + 20:
        return None
    thl = (frame[l4 + 12] >> 4) * 4
    head, payload = bytes(frame[: l4 + thl]), memoryview(frame)[l4 + thl :]
    if len(payload) <= mss:
        return None
    seq = struct.unpack_from("!I", frame, l4 + 4)[0]
    flags = frame[l4 + 13]
    out = []
    for i, start in enumerate(range(0, len(payload), mss)):
        chunk = payload[start : start + mss]
        seg = bytearray(head) + chunk
        last = start + mss >= len(payload)
        struct.pack_into("!I", seg, l4 + 4, (seq + start) & 0xFFFFFFFF)
        f = flags
        if not last:
            f &= ~0x09  # FIN and PSH only on the last segment
        if i:
            f &= ~0x80  # CWR only on the first
        seg[l4 + 13] = f
        if et == 0x0800:
            struct.pack_into("!H", seg, l3 + 2, len(seg) - l3)
            ident = struct.unpack_from("!H", frame, l3 + 4)[0]
            struct.pack_into("!H", seg, l3 + 4, (ident + i) & 0xFFFF)
        else:
            struct.pack_into("!H", seg, l3 + 4, len(seg) - l3 - 40)
        out.append(seg)
    return out


def parse_tx(data: bytes) -> tuple[list[tuple[bytes, int]], int]:
    """One bulk OUT transfer -> ([(frame, mss)], malformed count)."""
    frames, pos, bad = [], 0, 0
    n = len(data)
    while pos + 8 <= n:
        length, word2 = struct.unpack_from("<II", data, pos)
        if length == 0 or pos + 8 + length > n:
            bad += 1
            break
        frames.append((data[pos + 8 : pos + 8 + length], word2 & 0x7FFF))
        pos += 8 + length
        if word2 & TX_PADDED:
            break  # the rest of the transfer is the host's padding
    return frames, bad


def pack_rx(frames: list[bytes], ip_align: bool, maxpacket: int) -> bytes:
    """Frames -> one bulk IN transfer in the chip's aggregate format (module docstring)."""
    body = bytearray()
    descs = []
    for f in frames:
        data = (b"\0\0" + f) if ip_align else f
        descs.append(len(data) << 16)
        descs.append(RXHDR_DROP)  # the dummy descriptor after each frame's
        body += data
        body += bytes(-len(body) % 8)
    hdr_off = len(body)
    body += struct.pack(f"<{len(descs)}I", *descs)
    if (len(body) + 8) % maxpacket:
        body += bytes(4)  # padding2: the trailer ends on an 8-byte boundary
    # else: without padding2 the transfer is not a multiple of wMaxPacketSize and ends short by itself
    body += struct.pack("<HH", len(descs), hdr_off)
    return bytes(body)


# -- the device process ---------------------------------------------------------------------------------------


def descriptors() -> bytes:
    sets = []
    for bulk_mp in (64, 512):  # full speed, high speed
        sets.append([ffs._interface(0, 3, 0xFF, 0xFF, 0x00),
                     ffs._endpoint(0x81, ffs.INTERRUPT, 8, 11),
                     ffs._endpoint(0x82, ffs.BULK, bulk_mp),
                     ffs._endpoint(0x03, ffs.BULK, bulk_mp)])
    body = struct.pack("<II", len(sets[0]), len(sets[1])) + b"".join(b"".join(s) for s in sets)
    # FUNCTIONFS_ALL_CTRL_RECIP (64): the chip's requests are addressed to the device, not an interface.
    flags = ffs.HAS_FS_DESC | ffs.HAS_HS_DESC | 64
    return struct.pack("<III", ffs.DESCRIPTORS_MAGIC_V2, 12 + len(body), flags) + body


class Chip(vendor.VendorChip):
    """The chip on FunctionFS (vendor_device.VendorChip: ep0, the fault switches, commands, threads)."""

    def __init__(self, mount: Path, tap: str, mac: bytes, **faults) -> None:
        super().__init__(mount, tap, descriptors(), {"ep_int": 1, "ep_in": 2, "ep_out": 3}, **faults)
        self.maxpacket = 512
        self.regs = bytearray(256)
        self.regs[PHYSICAL_LINK_STATUS] = USB_HS
        self.regs[GENERAL_STATUS] = SECLD  # "UA2" silicon: the driver leaves the GPIOs alone
        self.regs[NODE_ID : NODE_ID + 6] = mac  # loaded from the EEPROM at power-on
        self.eeprom = eeprom_image()
        self.efuse = bytes(b"\xff" * 64)
        self.phy = [0] * 32
        self.phy[MII_BMCR] = 0x1140  # autonegotiation enabled, full duplex, 1000 Mbit/s
        self.phy[MII_PHYSID1], self.phy[MII_PHYSID2] = 0x003B, 0x1881  # an id of the emulator's own
        self.phy[MII_ADVERTISE], self.phy[MII_CTRL1000] = 0x05E1, 0x0300

    # -- registers --------------------------------------------------------------------------------------
    def reg16(self, at: int) -> int:
        return struct.unpack_from("<H", self.regs, at)[0]

    @property
    def link(self) -> bool:
        return self.cable and bool(self.reg16(PHYPWR_RSTCTL) & PHYPWR_IPRL)

    def phy_read(self, reg: int) -> int:
        up = self.link
        if reg == MII_BMSR:
            return BMSR_CAPS | ((BMSR_LINK | BMSR_ANEG_COMPLETE) if up else 0)
        if reg == MII_LPA:
            return 0x45E1 if up else 0
        if reg == MII_STAT1000:
            return 0x7C00 if up else 0x3000
        if reg == PHYSR:
            return (PHYSR_GIGA | PHYSR_FULL | PHYSR_LINK) if up else 0
        if reg in (0x0D, 0x0E):
            return 0  # MMD access: no EEE capability
        return self.phy[reg & 31]

    def read(self, req: int, value: int, index: int, length: int) -> bytes | None:
        if req == ACCESS_MAC:
            if value + length > len(self.regs):
                return None
            return bytes(self.regs[value : value + length])
        if req == ACCESS_PHY:
            return struct.pack("<H", self.phy_read(index) if value == PHY_ADDR else 0xFFFF)[:length]
        if req == ACCESS_EEPROM:
            return bytes(self.eeprom[2 * value : 2 * value + length]).ljust(length, b"\xff")
        if req == ACCESS_EFUSE:
            return self.efuse[value : value + length].ljust(length, b"\xff")
        if req == USB_FIFO_STATUS:
            return bytes(length)  # TX FIFO empty (bit 30 clear: the driver's link reset waits on it)
        return None

    def write(self, req: int, value: int, index: int, data: bytes) -> bool:
        if req == ACCESS_MAC:
            if value + len(data) > len(self.regs):
                return False
            before = self.link
            self.regs[value : value + len(data)] = data
            if value <= SROM_CMD < value + len(data) and self.regs[SROM_CMD] & EEP_RD:
                word = self.regs[SROM_ADDR]
                self.regs[SROM_DATA_LOW : SROM_DATA_LOW + 2] = self.eeprom[2 * word : 2 * word + 2]
                self.regs[SROM_CMD] &= ~(EEP_RD | EEP_BUSY) & 0xFF
            if self.link != before:
                self.events.append(f"PHY power -> link {self.link}")
                self.link_event.set()
            return True
        if req == ACCESS_PHY:
            if value == PHY_ADDR and len(data) >= 2:
                self.phy[index & 31] = struct.unpack_from("<H", data)[0] & ~0x0200  # restart-AN self-clears
            return True
        if req == RELOAD_EEPROM_EFUSE:
            return True
        return False

    # -- ep0 (VendorChip's loop calls this per SETUP) --------------------------------------------------
    def setup(self, rt: int, req: int, value: int, index: int, length: int) -> None:
        if rt & 0x60 != 0x40 or self.ep0_stall:  # only vendor requests are ours
            self.stall(rt)
            return
        if rt & 0x80:
            with self.lock:
                data = self.read(req, value, index, length)
            if data is None:
                self.stall(rt)
                return
            self.answer(data[:length])
        else:
            data = os.read(self.ep0, length) if length else os.read(self.ep0, 0)
            with self.lock:
                ok = self.write(req, value, index, data)
            self.counts["vendor_writes"] += 1
            if not ok:
                self.counts["bad_writes"] += 1

    # -- link notification (VendorChip's loop sends this) -------------------------------------------------
    def link_up(self) -> bool:
        return self.link

    def link_note(self, up: bool) -> bytes:
        return struct.pack("<II", 0xA1 | (INT_LINK if up else 0), 0)

    # -- TX: host to wire -------------------------------------------------------------------------------
    def out_loop(self) -> None:
        for data in self.out_transfers():
            frames, bad = parse_tx(data)
            self.counts["out_malformed"] += bad
            if len(frames) > 1:
                self.counts["out_multi_frame_transfers"] += 1
            with self.lock:
                coe, up = self.regs[TXCOE_CTL], self.link
            for frame, mss in frames:
                if not up:
                    self.counts["tx_no_link"] += 1
                    continue
                segs = tso_segments(frame, mss) if mss else None
                if segs is not None:
                    self.counts["tso_frames"] += 1
                for seg in segs or [bytearray(frame)]:
                    fill_checksums(seg, coe)
                    try:
                        os.write(self.tap, seg)
                        self.counts["out_frames"] += 1
                    except OSError:
                        self.counts["tap_write_errors"] += 1

    # -- RX: wire to host -------------------------------------------------------------------------------
    def accepts(self, frame: bytes) -> str | None:
        """Why the receive filter drops `frame`, or None when it passes."""
        rx = self.reg16(RX_CTL)
        if not rx & RX_CTL_START or not self.reg16(MEDIUM_STATUS_MODE) & MEDIUM_RECEIVE_EN:
            return "rx_stopped"
        limit = FRAME_JUMBO if self.reg16(MEDIUM_STATUS_MODE) & MEDIUM_JUMBO_EN == MEDIUM_JUMBO_EN \
            else FRAME_NO_JUMBO
        if len(frame) > limit:
            return "rx_too_long"
        if rx & RX_CTL_PRO:
            return None
        dst = frame[:6]
        if dst == b"\xff" * 6:
            return None if rx & RX_CTL_AB else "rx_filtered_broadcast"
        if dst[0] & 1:
            if rx & RX_CTL_AMALL:
                return None
            if rx & RX_CTL_AM:
                bit = mc_hash_bit(dst)
                if self.regs[MULFLTARY + (bit >> 3)] & (1 << (bit & 7)):
                    return None
            return "rx_filtered_multicast"
        return None if dst == bytes(self.regs[NODE_ID : NODE_ID + 6]) else "rx_filtered_unicast"

    def in_loop(self) -> None:
        while True:
            select.select([self.tap], [], [])
            frames: list[bytes] = []
            with self.lock:
                rx, size = self.reg16(RX_CTL), self.regs[RX_BULKIN_QCTRL + 3]
                link = self.link
            # The aggregation limit (RX_BULKIN_QCTRL byte 3, in KiB; 0: one frame per transfer).
            limit = size * 1024
            used = 0
            while True:
                try:
                    frame = os.read(self.tap, 16384)
                except BlockingIOError:
                    break
                if not link:
                    self.counts["rx_no_link"] += 1
                    continue
                with self.lock:
                    why = self.accepts(frame)
                if why:
                    self.counts[why] += 1
                    continue
                frames.append(frame)
                used += (len(frame) + 2 + 7) // 8 * 8 + 8
                if used + 16 + FRAME_JUMBO + 10 > limit:
                    break
            if not frames:
                continue
            self.send_in(pack_rx(frames, bool(rx & RX_CTL_IPE), self.maxpacket), len(frames))

    # -- commands (VendorChip's; these are the registers `stats` reports) -------------------------------------
    def registers(self) -> dict:
        return {"rx_ctl": self.reg16(RX_CTL), "medium": self.reg16(MEDIUM_STATUS_MODE),
                "node_id": self.regs[NODE_ID : NODE_ID + 6].hex(":"),
                "multicast_hash": self.regs[MULFLTARY : MULFLTARY + 8].hex(),
                "phypwr": self.reg16(PHYPWR_RSTCTL),
                "bulkin": self.regs[RX_BULKIN_QCTRL : RX_BULKIN_QCTRL + 5].hex(),
                "txcoe": self.regs[TXCOE_CTL], "link": self.link}


def mc_hash_bit(mac: bytes) -> int:
    """The multicast hash index (0-63): the top 6 bits of the Ethernet CRC-32 of the address, computed
    MSB-first without the final inversion, as the kernel's ether_crc gives it."""
    crc = 0xFFFFFFFF
    for byte in mac:
        for i in range(8):
            bit = (byte >> i) & 1
            crc = ((crc << 1) & 0xFFFFFFFF) ^ (0x04C11DB7 if ((crc >> 31) ^ bit) else 0)
    return crc >> 26


def main(argv: list[str] | None = None) -> int:
    return vendor.main(argv, "ax88179", __doc__.splitlines()[0],
                       lambda a, mac: Chip(a.mount, a.tap, mac, **vendor.fault_kwargs(a)))


class Ax88179Gadget(vendor.VendorGadget):
    """The emulated chip as a gadget: FfsGadget's configfs and process handling, this file as the device."""

    VID, PID = VID, PID
    SCRIPT = __file__
    PRODUCT = "AX88179 (usbnetd emulator)"
    KIND = "ax88179"


if __name__ == "__main__":
    sys.exit(main())
