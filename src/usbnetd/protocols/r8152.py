"""Realtek RTL8153 (the RTL8152 family's gigabit USB 3 chip): a vendor-class chip driven by register access.

Not a USB class in its vendor configuration: one interface FF/FF/00 with bulk IN (endpoint 1), bulk OUT
(endpoint 2) and interrupt IN (endpoint 3, 2-byte link status), and one vendor request, 0x05, both ways
(bmRequestType C0 / 40, device recipient): wValue the register address (4-byte aligned), wIndex the block
(0x0100 PLA, the MAC side; 0x0000 USB) ORed with byte enables (writes of one dword: the low nibble, mirrored
in the high one). The PHY sits behind an OCP window: its address's upper 4 bits go to PLA_OCP_GPHY_BASE,
the register is then PLA 0xb000 + the low 12 bits; MII register n is OCP 0xa400 + 2n. Chosen only through
the device table (`devices.py`: the VID:PIDs Linux's r8152 lists), never by class matching.

Why the vendor configuration and not the chip's CDC-ECM one (RTL8153 dongles offer both; Linux's r8152
switches them to the vendor one): ECM carries one frame per transfer and no offloads, while the vendor
mode aggregates received frames into 16-32 KiB transfers, takes several frames per TX transfer, and has a
multicast hash filter, jumbo frames, TX checksum offload and TSO.

Register addresses, bit meanings and the bring-up order are the facts Linux's r8152 driver
(drivers/net/usb/r8152.c) uses, carried over as facts; the code is ours (Realtek's datasheet was not at
hand). Supported: RTL8153 versions 3-6 (PLA_TCR1 & 0x7cf0 = 0x5c00-0x5c30, the RTL8153A line), the ones
the kernel brings up with one init path; we load no firmware patch (the kernel asks for rtl_nic files for
versions 4-6 and works without them). Other versions (RTL8152, RTL8153B/C, RTL8156) are refused with one
line naming the version: their init differs, and they have an ECM configuration (`--protocol ecm`).

Bring-up (`bind`):

1. PLA_TCR0 (0xe610, 4 bytes): the version in the upper half; proof that the chip answers register reads
   with exactly the bytes asked for (anything else is a one-line error);
2. PLA_BOOT_CTRL: wait for AUTOLOAD_DONE; the PHY: wait until OCP_PHY_STATUS says initialised, power it up
   (BMCR PDOWN off), wait for LAN_ON; the ADC setting the kernel makes for versions 3-5;
3. RX aggregation on (USB_USB_CTRL RX_AGG_DISABLE / RX_ZERO_EN off); RX gated, accept nothing, MAC reset
   (PLA_CR CR_RST, self-clearing); out of OOB mode and the link list re-initialised (PLA_OOB_CTRL,
   PLA_SFF_STS_7, waiting for LINK_LIST_READY); RX VLAN stripping off (tags stay in frames); RMS for the
   MTU; TX auto FIFO; MAC reset again; the FIFO thresholds the kernel sets;
4. the MAC from PLA_BACKUP (0xd000), written to PLA_IDR (0xc000) with PLA_CRWECR in config mode (an
   invalid one: a random local address, written the same way);
5. RX early timeout and early size (the aggregation limit: our buffer less one largest frame);
6. enable: packet filter reset (PLA_FMC), RX and TX on (PLA_CR RE|TE), RX un-gated (PLA_MISC_1); RCR
   (broadcast, physical match, plus `apply_filter`);
7. autonegotiation: 10/100/1000 and pause advertised, BMCR reset + restart, waiting for the reset to end.

TX offloads, as the kernel driver uses them (IP_CSUM | IPV6_CSUM | TSO | TSO6; GSO only for what fits one
16 KiB aggregate with its descriptor): `tx_offloads` = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 and `tso_max`
16384 - 8. With them on (service.py, through the TAP's virtio-net header and gso_max_size) each frame's
descriptor asks for what its header says (r8152_codec.offload_opts); a super-frame ends its transfer, so
the next one starts empty with room for another.

Not done: the power-saving the kernel sets up (ALDPS, EEE, U1/U2/U2P3, LPM), Wake-on-LAN, the tally
counters, firmware patches, RX checksum results (tun ignores "checksum verified" on what we write).

Link: bit 2 (INTR_LINK) of the 2-byte interrupt transfer. On a change to "up", PLA_PHYSTATUS (0xe908) is
read asynchronously for speed and duplex (status). A chip says nothing on its interrupt endpoint at all for
`INTERRUPT_SILENCE` seconds: taken as not working, one line (`poll`).

MTU up to 9194 (the kernel driver's: 9 KiB less header, VLAN tag and FCS); PLA_RMS and the early size
follow. MAC changes go to PLA_IDR (`DriverFlag.MAC_SETTABLE`: no promiscuous fallback). Multicast: RCR AM
with the 64-bit hash in PLA_MAR (bit = top 6 bits of the Ethernet CRC-32 of the address, the 64-bit value
stored big-endian), all multicast above 32 groups, AAP for promiscuous. `unbind`: RX and TX stopped,
accept nothing, back in OOB mode, as the kernel's down path leaves the MAC.

Framing: `r8152_codec` (RX aggregates of 24-byte descriptors + frame + FCS, 8-byte aligned; TX 8-byte
descriptors, several frames per transfer, 4-byte aligned). RX is decoded in Python (no C walk yet).
"""

from __future__ import annotations

import logging
import struct
import time

from ..core.pool import Packet
from ..netdev import gso
from ..usb.descriptors import Configuration
from ..usb.transport import TransportError
from . import cdc
from . import r8152_codec as codec
from .driver import Binding, LinkEvent, RxSink
from .vendor import REQ_VENDOR_IN, REQ_VENDOR_OUT, VendorDriver, crc_hash_bit, match_vendor_interface

log = logging.getLogger(__name__)

REQ_IN, REQ_OUT = REQ_VENDOR_IN, REQ_VENDOR_OUT
REQ_REGS = 0x05
MCU_PLA = 0x0100
MCU_USB = 0x0000
BYTE_EN_DWORD, BYTE_EN_WORD, BYTE_EN_BYTE = 0xFF, 0x33, 0x11

# PLA registers.
PLA_IDR, PLA_RCR, PLA_RMS = 0xC000, 0xC010, 0xC016
PLA_RXFIFO_CTRL0, PLA_RXFIFO_CTRL1, PLA_RXFIFO_CTRL2 = 0xC0A0, 0xC0A4, 0xC0A8
PLA_FMC, FMC_FCR_MCU_EN = 0xC0B4, 0x0001
PLA_MAR, PLA_BACKUP = 0xCD00, 0xD000
PLA_BOOT_CTRL, AUTOLOAD_DONE = 0xE004, 0x0002
PLA_TCR0, TCR0_AUTO_FIFO = 0xE610, 0x0080
PLA_MTPS, MTPS_JUMBO = 0xE615, 12 * 1024 // 64
PLA_TXFIFO_CTRL = 0xE618
PLA_CR, CR_RST, CR_RE, CR_TE = 0xE813, 0x10, 0x08, 0x04
PLA_CRWECR, CRWECR_NORMAL, CRWECR_CONFIG = 0xE81C, 0x00, 0xC0
PLA_OOB_CTRL, NOW_IS_OOB, LINK_LIST_READY = 0xE84F, 0x80, 0x02
PLA_CPCR, CPCR_RX_VLAN = 0xE854, 0x0040
PLA_MISC_1, RXDY_GATED_EN = 0xE85A, 0x0008
PLA_OCP_GPHY_BASE = 0xE86C
PLA_SFF_STS_7, RE_INIT_LL, MCU_BORW_EN = 0xE8DE, 0x8000, 0x4000
PLA_PHYSTATUS = 0xE908
RCR_AAP, RCR_APM, RCR_AM, RCR_AB = 0x01, 0x02, 0x04, 0x08
RCR_ACPT_ALL = RCR_AAP | RCR_APM | RCR_AM | RCR_AB
RXFIFO_THR1_NORMAL, RXFIFO_THR2_NORMAL, RXFIFO_THR3_NORMAL = 0x00080002, 0x00A0, 0x0110
TXFIFO_THR_NORMAL2 = 0x01000008
PHYSTATUS_1000, PHYSTATUS_100, PHYSTATUS_10, PHYSTATUS_LINK, PHYSTATUS_FULL = 0x10, 0x08, 0x04, 0x02, 0x01

# USB registers.
USB_USB_CTRL, RX_AGG_DISABLE, RX_ZERO_EN = 0xD406, 0x0010, 0x0080
USB_RX_EARLY_TIMEOUT, USB_RX_EARLY_SIZE = 0xD42C, 0xD42E

# PHY (OCP addresses).
OCP_BASE_MII = 0xA400
OCP_PHY_STATUS, PHY_STAT_MASK = 0xA420, 0x0007
PHY_STAT_EXT_INIT, PHY_STAT_LAN_ON, PHY_STAT_PWRDN = 2, 3, 5
OCP_ADC_CFG, ADC_CFG_VALUE = 0xBC06, 0x0100 | 0x0080 | 0x0040  # CKADSEL_L | ADC_EN | EN_EMI_L
MII_BMCR, MII_ADVERTISE, MII_CTRL1000 = 0, 4, 9
BMCR_RESET, BMCR_ANENABLE, BMCR_ANRESTART, BMCR_PDOWN = 0x8000, 0x1000, 0x0200, 0x0800
ADVERTISE_ALL = 0x0020 | 0x0040 | 0x0080 | 0x0100  # 10/100 half/full
ADVERTISE_PAUSE = 0x0400 | 0x0800
ADVERTISE_1000FULL = 0x0200

INTR_LINK = 0x0004
INT_LEN = 2

# PLA_TCR1 & 0x7cf0 (TCR0's dword >> 16) -> what the chip is.
VERSIONS = {0x4C00: "RTL8152 v1", 0x4C10: "RTL8152 v2", 0x5C00: "RTL8153 v3", 0x5C10: "RTL8153A v4",
            0x5C20: "RTL8153A v5", 0x5C30: "RTL8153A v6", 0x4800: "RTL8152B", 0x6000: "RTL8153B v8",
            0x6010: "RTL8153B v9", 0x6400: "RTL8153C", 0x7010: "RTL8156 test", 0x7020: "RTL8156",
            0x7030: "RTL8156A", 0x7400: "RTL8156B", 0x7410: "RTL8156B v13", 0x7420: "RTL8156BG"}
SUPPORTED = (0x5C00, 0x5C10, 0x5C20, 0x5C30)
VERSION_MASK = 0x7CF0

RX_BUFFER_HIGH, RX_BUFFER_SUPER = 16 * 1024, 32 * 1024  # the kernel driver's rx_buf_sz by USB speed
COALESCE_HIGH_NS, COALESCE_SUPER_NS = 250_000, 85_000
TX_BUFFER = 16 * 1024  # the kernel driver's agg_buf_sz
MAX_MTU = 9 * 1024 - 18 - 4  # size_to_mtu(9 KiB): VLAN Ethernet header and FCS
MAX_MULTICAST = 32
INTERRUPT_SILENCE = VendorDriver.STATUS_SILENCE  # seconds without a single link status: not a working chip
POLL_TRIES, POLL_WAIT = 500, 0.02  # the kernel driver waits up to 500 x 20 ms for autoload and the PHY


def rx_size_for_mtu(mtu: int) -> int:
    """The kernel's rx_reserved_size: one largest frame with VLAN header, FCS, descriptor and alignment."""
    return mtu + 18 + 4 + codec.RX_DESC_LEN + codec.RX_ALIGN


def multicast_hash(addresses: list[bytes]) -> bytes:
    """PLA_MAR's 8 bytes: for each address, bit n = the top 6 bits of its Ethernet CRC-32 (MSB-first, not
    inverted), in a 64-bit value stored big-endian (the kernel's two swapped 32-bit words)."""
    value = 0
    for mac in addresses:
        value |= 1 << crc_hash_bit(mac)
    return value.to_bytes(8, "big")


class R8152Driver(VendorDriver):
    name = "r8152"
    chip = "RTL8153"
    tx_headroom = 0  # descriptors are written in front of each frame inside the transfer
    poll_wait = POLL_WAIT  # tests set it to 0

    @classmethod
    def match(cls, config: Configuration) -> Binding | None:
        return match_vendor_interface(config)

    @property
    def framing(self) -> str:
        return f"RTL8153 aggregates, {self.rx_size} B in / {self.tx_size} B out"

    def info(self) -> dict:
        st = super().info()
        st["chip"] = getattr(self, "chip", None)
        return st

    # --- register access (synchronous: bring-up) ---
    def _read(self, block: int, addr: int, n: int = 4) -> bytes:
        data = self.transport.control_in(REQ_IN, REQ_REGS, addr, block, n)
        if len(data) != n:
            raise TransportError(f"the chip answered a {n}-byte read of {self._where(block, addr)} with "
                                 f"{len(data)} bytes; not a chip usbnetd can drive")
        return data

    @staticmethod
    def _where(block: int, addr: int) -> str:
        return f"{'PLA' if block == MCU_PLA else 'USB'} 0x{addr:04x}"

    def _read_word(self, block: int, addr: int) -> int:
        shift = (addr & 2) * 8
        return (struct.unpack("<I", self._read(block, addr & ~3))[0] >> shift) & 0xFFFF

    def _read_byte(self, block: int, addr: int) -> int:
        return self._read(block, addr & ~3)[addr & 3]

    @staticmethod
    def _word_request(block: int, addr: int, value: int) -> tuple[int, int, bytes]:
        """(wValue, wIndex, data) writing one 16-bit register: its dword, two bytes enabled."""
        shift = addr & 2
        return addr & ~3, block | (BYTE_EN_WORD << shift), struct.pack("<I", (value & 0xFFFF) << (8 * shift))

    @staticmethod
    def _byte_request(block: int, addr: int, value: int) -> tuple[int, int, bytes]:
        shift = addr & 3
        return addr & ~3, block | (BYTE_EN_BYTE << shift), struct.pack("<I", (value & 0xFF) << (8 * shift))

    def _write_word(self, block: int, addr: int, value: int) -> None:
        self.transport.control_out(REQ_OUT, REQ_REGS, *self._word_request(block, addr, value))

    def _write_byte(self, block: int, addr: int, value: int) -> None:
        self.transport.control_out(REQ_OUT, REQ_REGS, *self._byte_request(block, addr, value))

    def _write_dword(self, block: int, addr: int, value: int) -> None:
        self.transport.control_out(REQ_OUT, REQ_REGS, addr, block | BYTE_EN_DWORD, struct.pack("<I", value))

    def _phy_window(self, addr: int) -> int:
        base = addr & 0xF000
        if base != self._ocp_base:
            self._write_word(MCU_PLA, PLA_OCP_GPHY_BASE, base)
            self._ocp_base = base
        return 0xB000 | (addr & 0x0FFF)

    def _ocp_read(self, addr: int) -> int:
        return self._read_word(MCU_PLA, self._phy_window(addr))

    def _ocp_write(self, addr: int, value: int) -> None:
        self._write_word(MCU_PLA, self._phy_window(addr), value)

    def _mdio_read(self, reg: int) -> int:
        return self._ocp_read(OCP_BASE_MII + 2 * reg)

    def _mdio_write(self, reg: int, value: int) -> None:
        self._ocp_write(OCP_BASE_MII + 2 * reg, value)

    def _wait(self, what: str, ready) -> None:
        for _ in range(POLL_TRIES):
            if ready():
                return
            time.sleep(self.poll_wait)
        raise TransportError(f"the chip never reported {what}")

    def _set_word(self, block: int, addr: int, set_bits: int = 0, clear_bits: int = 0) -> None:
        value = self._read_word(block, addr)
        self._write_word(block, addr, (value & ~clear_bits) | set_bits)

    def _set_byte(self, block: int, addr: int, set_bits: int = 0, clear_bits: int = 0) -> None:
        value = self._read_byte(block, addr)
        self._write_byte(block, addr, (value & ~clear_bits) | set_bits)

    def _write_mac(self, mac: bytes) -> None:
        # PLA_IDR takes writes only in config mode; the first dword whole, then the last two bytes.
        self._write_byte(MCU_PLA, PLA_CRWECR, CRWECR_CONFIG)
        self.transport.control_out(REQ_OUT, REQ_REGS, PLA_IDR, MCU_PLA | BYTE_EN_DWORD, mac[:4])
        self.transport.control_out(REQ_OUT, REQ_REGS, PLA_IDR + 4, MCU_PLA | BYTE_EN_WORD, mac[4:6] + b"\0\0")
        self._write_byte(MCU_PLA, PLA_CRWECR, CRWECR_NORMAL)

    def _nic_reset(self) -> None:
        self._write_byte(MCU_PLA, PLA_CR, CR_RST)
        self._wait("the end of its MAC reset", lambda: not self._read_byte(MCU_PLA, PLA_CR) & CR_RST)

    # --- register access (asynchronous: while running) ---
    def _submit(self, request: tuple[int, int, bytes]) -> None:
        self.submit_out(REQ_REGS, *request)

    def _submit_mac(self, mac: bytes) -> None:
        self._submit(self._byte_request(MCU_PLA, PLA_CRWECR, CRWECR_CONFIG))
        self._submit((PLA_IDR, MCU_PLA | BYTE_EN_DWORD, bytes(mac[:4])))
        self._submit((PLA_IDR + 4, MCU_PLA | BYTE_EN_WORD, bytes(mac[4:6]) + b"\0\0"))
        self._submit(self._byte_request(MCU_PLA, PLA_CRWECR, CRWECR_NORMAL))

    # --- setup (vendor.VendorDriver.bind runs it and names the chip in any failure) ---
    def _bring_up(self) -> None:
        self._ocp_base = -1
        version = (struct.unpack("<I", self._read(MCU_PLA, PLA_TCR0))[0] >> 16) & VERSION_MASK
        chip = VERSIONS.get(version, "unknown")
        if version not in SUPPORTED:
            raise TransportError(f"chip version 0x{version:04x} ({chip}) is not one usbnetd drives (RTL8153 "
                                 "versions 0x5c00-0x5c30); try --protocol ecm, or the kernel's r8152")
        self.chip = chip
        self._wait("autoload done", lambda: self._read_word(MCU_PLA, PLA_BOOT_CTRL) & AUTOLOAD_DONE)
        self._wait("its PHY initialised", lambda: self._ocp_read(OCP_PHY_STATUS) & PHY_STAT_MASK
                   in (PHY_STAT_EXT_INIT, PHY_STAT_LAN_ON, PHY_STAT_PWRDN))
        if version in (0x5C00, 0x5C10, 0x5C20):
            self._ocp_write(OCP_ADC_CFG, ADC_CFG_VALUE)
        bmcr = self._mdio_read(MII_BMCR)
        if bmcr & BMCR_PDOWN:
            self._mdio_write(MII_BMCR, bmcr & ~BMCR_PDOWN)
        self._wait("its PHY on", lambda: self._ocp_read(OCP_PHY_STATUS) & PHY_STAT_MASK == PHY_STAT_LAN_ON)
        self._set_word(MCU_USB, USB_USB_CTRL, clear_bits=RX_AGG_DISABLE | RX_ZERO_EN)

        # The MAC out of its power-on (OOB) state, as the kernel's first init does it.
        self._set_word(MCU_PLA, PLA_MISC_1, set_bits=RXDY_GATED_EN)
        self._write_dword(MCU_PLA, PLA_RCR, 0)
        self._nic_reset()
        self._set_byte(MCU_PLA, PLA_OOB_CTRL, clear_bits=NOW_IS_OOB)
        self._set_word(MCU_PLA, PLA_SFF_STS_7, clear_bits=MCU_BORW_EN)
        self._wait("its link list ready", lambda: self._read_byte(MCU_PLA, PLA_OOB_CTRL) & LINK_LIST_READY)
        self._set_word(MCU_PLA, PLA_SFF_STS_7, set_bits=RE_INIT_LL)
        self._wait("its link list ready", lambda: self._read_byte(MCU_PLA, PLA_OOB_CTRL) & LINK_LIST_READY)
        self._set_word(MCU_PLA, PLA_CPCR, clear_bits=CPCR_RX_VLAN)  # VLAN tags stay in the frames
        self.max_frame = MAX_MTU + 14
        self.default_mtu = 1500
        self._frame = 1514
        self._write_word(MCU_PLA, PLA_RMS, self._rms(self._frame))
        self._write_byte(MCU_PLA, PLA_MTPS, MTPS_JUMBO)
        self._set_word(MCU_PLA, PLA_TCR0, set_bits=TCR0_AUTO_FIFO)
        self._nic_reset()
        self._write_dword(MCU_PLA, PLA_RXFIFO_CTRL0, RXFIFO_THR1_NORMAL)
        self._write_word(MCU_PLA, PLA_RXFIFO_CTRL1, RXFIFO_THR2_NORMAL)
        self._write_word(MCU_PLA, PLA_RXFIFO_CTRL2, RXFIFO_THR3_NORMAL)
        self._write_dword(MCU_PLA, PLA_TXFIFO_CTRL, TXFIFO_THR_NORMAL2)

        mac, _ = self.checked_mac(self._read(MCU_PLA, PLA_BACKUP, 8)[:6])
        self._write_mac(mac)  # an invalid one's stand-in too
        self.mac = mac

        super_speed = self.transport.identity.speed_mbps >= 5000 if self.transport.identity else False
        self.rx_size = RX_BUFFER_SUPER if super_speed else RX_BUFFER_HIGH
        coalesce = COALESCE_SUPER_NS if super_speed else COALESCE_HIGH_NS
        self._write_word(MCU_USB, USB_RX_EARLY_TIMEOUT, coalesce // 8)
        self._write_word(MCU_USB, USB_RX_EARLY_SIZE, self._early_size(self._frame))
        self.tx_size = TX_BUFFER

        # Enable (the kernel does it on link-up; the chip drops what it cannot send or receive anyway).
        fmc = self._read_word(MCU_PLA, PLA_FMC)
        self._write_word(MCU_PLA, PLA_FMC, fmc & ~FMC_FCR_MCU_EN)
        self._write_word(MCU_PLA, PLA_FMC, fmc | FMC_FCR_MCU_EN)
        self._set_byte(MCU_PLA, PLA_CR, set_bits=CR_RE | CR_TE)
        self._set_word(MCU_PLA, PLA_MISC_1, clear_bits=RXDY_GATED_EN)
        self._rcr = RCR_AB | RCR_APM | RCR_AM
        self.transport.control_out(REQ_OUT, REQ_REGS, PLA_MAR, MCU_PLA | BYTE_EN_DWORD, b"\xff" * 8)
        self._write_dword(MCU_PLA, PLA_RCR, self._rcr)

        adv = self._mdio_read(MII_ADVERTISE)
        self._mdio_write(MII_ADVERTISE, adv | ADVERTISE_ALL | ADVERTISE_PAUSE)
        self._mdio_write(MII_CTRL1000, self._mdio_read(MII_CTRL1000) | ADVERTISE_1000FULL)
        self._mdio_write(MII_BMCR, BMCR_ANENABLE | BMCR_ANRESTART | BMCR_RESET)
        self._wait("the end of its PHY reset", lambda: not self._mdio_read(MII_BMCR) & BMCR_RESET)

        self._decoder = codec.RxDecoder(self.stats, self.max_frame)
        self._framer = codec.TxFramer(self.tx_size)
        self.tx_offloads = gso.TUN_F_CSUM | gso.TUN_F_TSO4 | gso.TUN_F_TSO6
        self.tso_max = TX_BUFFER - codec.TX_DESC_LEN  # the kernel's rule: skb->len + the descriptor fits
        self._offloading = False

    def enable_offloads(self, flags: int) -> None:
        self._offloading = bool(flags)  # nothing to tell the chip: every descriptor asks for itself

    @staticmethod
    def _rms(frame: int) -> int:
        return frame + 4 + 4  # the largest frame the chip takes: plus a VLAN tag and the FCS

    def _early_size(self, frame: int) -> int:
        # Aggregate until one more largest frame would not fit in our buffer (units of 4 bytes).
        return max(0, self.rx_size - rx_size_for_mtu(frame - 14)) // 4

    def unbind(self) -> None:
        # As the kernel's down path leaves the MAC: accept nothing, RX gated, RX/TX off, back in OOB mode.
        try:
            self._write_dword(MCU_PLA, PLA_RCR, 0)
            self._set_word(MCU_PLA, PLA_MISC_1, set_bits=RXDY_GATED_EN)
            self._set_byte(MCU_PLA, PLA_CR, clear_bits=CR_RE | CR_TE)
            self._set_byte(MCU_PLA, PLA_OOB_CTRL, set_bits=NOW_IS_OOB)
        except TransportError as exc:
            log.debug("RTL8153 unbind: %s", exc)

    # --- link ---
    def status(self, view: memoryview, length: int) -> LinkEvent | None:
        if length < INT_LEN:
            self.stats.notification_errors += 1
            return None
        up = bool(struct.unpack_from("<H", view, 0)[0] & INTR_LINK)
        if not self.link_seen(up):
            return None
        if up and not self.transport.submit_control(REQ_IN, REQ_REGS, PLA_PHYSTATUS & ~3, MCU_PLA, 4,
                                                    self._physr_done):
            log.warning("RTL8153: no control transfer free to read the link speed")
        return LinkEvent(connected=up)

    def _physr_done(self, status: int, data: bytes) -> None:
        if status != 0 or len(data) != 4:
            log.warning("RTL8153: reading PHYSTATUS failed (status %d, %d bytes)", status, len(data))
            return
        st = struct.unpack("<I", data)[0] >> (8 * (PLA_PHYSTATUS & 2)) & 0xFFFF
        if not st & PHYSTATUS_LINK:
            return  # gone again: the next interrupt says so
        bps = 1_000_000_000 if st & PHYSTATUS_1000 else 100_000_000 if st & PHYSTATUS_100 else 10_000_000
        self.events.append(LinkEvent(up_bps=bps, down_bps=bps))

    # --- the interface follows the user ---
    def change_mtu(self, frame: int) -> str | None:
        if frame > self.max_frame:
            return f"the RTL8153 takes frames of at most {self.max_frame} bytes (MTU {MAX_MTU})"
        if frame != self._frame:
            self._frame = frame
            self._submit(self._word_request(MCU_PLA, PLA_RMS, self._rms(frame)))
            self._submit(self._word_request(MCU_USB, USB_RX_EARLY_SIZE, self._early_size(frame)))
        return None

    def change_mac(self, mac: bytes) -> str:
        self._submit_mac(bytes(mac))
        return "written to the chip's PLA_IDR register; its filter follows"

    def _filter_bits(self, promisc: bool, allmulti: bool, multicast: list[bytes]) -> tuple[int, bytes]:
        rcr = RCR_AB | RCR_APM
        if promisc:
            return rcr | RCR_AAP | RCR_AM, b"\xff" * 8
        if allmulti or len(multicast) > MAX_MULTICAST:
            return rcr | RCR_AM, b"\xff" * 8
        if multicast:
            return rcr | RCR_AM, multicast_hash(multicast)
        return rcr, bytes(8)

    def set_packet_filter(self, bits: int) -> bool:
        promisc = bool(bits & cdc.PACKET_TYPE_PROMISCUOUS)
        allmulti = bool(bits & (cdc.PACKET_TYPE_ALL_MULTICAST | cdc.PACKET_TYPE_MULTICAST))
        rcr, table = self._filter_bits(promisc, allmulti, [])
        try:
            self.transport.control_out(REQ_OUT, REQ_REGS, PLA_MAR, MCU_PLA | BYTE_EN_DWORD, table)
            self._write_dword(MCU_PLA, PLA_RCR, rcr)
        except TransportError as exc:
            log.info("RTL8153 refused RCR 0x%02x: %s", rcr, exc)
            return False
        self._rcr = rcr
        return True

    def apply_filter(self, promisc: bool, allmulti: bool, multicast: list[bytes]) -> str:
        rcr, table = self._filter_bits(promisc, allmulti, multicast)
        self._submit((PLA_MAR, MCU_PLA | BYTE_EN_DWORD, table))
        self._submit((PLA_RCR, MCU_PLA | BYTE_EN_DWORD, struct.pack("<I", rcr)))
        self._rcr = rcr
        what = "promiscuous" if rcr & RCR_AAP else "all multicast" if table == b"\xff" * 8 and rcr & RCR_AM else \
            f"{len(multicast)} multicast groups by hash {table.hex()}" if multicast else "directed and broadcast only"
        return f"RCR 0x{rcr:02x} ({what})"

    # --- TX: frames read in after their descriptors, several per transfer ---
    def tx_begin(self, packet: Packet) -> None:
        packet.offset = 0
        self._framer.begin(packet.view)

    def tx_slot(self) -> tuple[int, int]:
        offset, room = self._framer.next_slot()
        if self._offloading:
            return offset, max(0, room)  # the port reads past it into its spill buffer, and carries what is longer
        # One byte less than the room, so that a longer frame read into it is seen as too long, not cut.
        return offset, min(room - 1, self.max_frame + 1) if room else 0

    def tx_commit(self, length: int) -> bool:
        self._framer.commit(length)
        return self._framer.next_slot()[1] - 1 < self.max_frame

    def tx_commit_offload(self, length: int, meta) -> bool:
        f = self._framer
        slot = f.next_slot()[0]
        f.commit(length, *codec.offload_opts(memoryview(f.buf)[slot : slot + length], meta))
        # After a super-frame the transfer goes: a bulk flow's next one would not fit in what is left.
        return bool(meta.gso_type) or f.next_slot()[1] < self.max_frame

    @property
    def tx_count(self) -> int:
        return self._framer.count

    def tx_finish(self) -> tuple[int, bool]:
        n = self._framer.finish()
        return n, n % self.maxpacket == 0

    # --- RX ---
    def rx_decode(self, view: memoryview, length: int, sink: RxSink) -> int:
        return self._decoder.decode(view, length, sink.emit)
