"""CDC (Communications Device Class) numbers, class-specific descriptor parsing and notifications.

Shared by the ECM, NCM, EEM, subset and RNDIS drivers; nothing here talks to USB. Written from the specs:
- USB CDC 1.2 (CDC120): class, subclass and protocol codes, the class-specific descriptor types (§5.2.3:
  Header, Union), SEND_ENCAPSULATED_COMMAND / GET_ENCAPSULATED_RESPONSE and the notification header (§6);
- CDC ECM 1.2 (ECM120): the Ethernet Networking functional descriptor (§5.4), the Ethernet requests and
  packet filter bits (§6.2: SetEthernetMulticastFilters, SetEthernetPacketFilter, GetEthernetStatistic), the
  NetworkConnection and ConnectionSpeedChange notifications (§6.3);
- CDC NCM 1.0 (NCM10): the NCM functional descriptor and bmNetworkCapabilities (§5.2.1), the NCM requests
  (§6.2: GetNtbParameters §6.2.1 ... SetCrcMode §6.2.11).
Host behaviour taken as fact from the Linux drivers (drivers/net/usb/usbnet.c, cdc_ether.c, cdc_ncm.c): a
netdev keeps a random locally administered MAC when the iMACAddress string is not 12 hex digits; a
ConnectionSpeedChange may arrive as its 8-byte header alone, with the 8 data bytes in the next transfer.

Tolerance: everything that parses bytes coming from a device (`parse_cdc_functional`,
`NotificationParser.feed`) never raises on malformed input; it counts and ignores.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ..core.stats import Stats

# --- interface classes (bInterfaceClass) -----------------------------------------------------------------
USB_CLASS_COMM = 0x02  # CDC communications (control) interface
USB_CLASS_CDC_DATA = 0x0A  # CDC data interface (the bulk endpoints)
USB_CLASS_WIRELESS = 0xE0  # wireless controller (Android RNDIS: E0/01/03)
USB_CLASS_MISC = 0xEF  # miscellaneous (RNDIS EF/04/01, ActiveSync EF/01/01)
USB_CLASS_VENDOR = 0xFF  # vendor specific

# --- CDC subclasses (bInterfaceSubClass of a COMM interface) --------------------------------------------
CDC_SUBCLASS_ACM = 0x02  # abstract control model; RNDIS uses 02/02/FF
CDC_SUBCLASS_ETHERNET = 0x06  # ECM: Ethernet control model
CDC_SUBCLASS_MDLM = 0x0A  # mobile direct line model; used by "CDC subset" devices (Zaurus et al.)
CDC_SUBCLASS_SUBSET = CDC_SUBCLASS_MDLM
CDC_SUBCLASS_EEM = 0x0C  # Ethernet emulation model
CDC_SUBCLASS_NCM = 0x0D  # network control model
CDC_SUBCLASS_MBIM = 0x0E  # mobile broadband interface model (out of scope)

CDC_PROTO_NONE = 0x00
CDC_PROTO_EEM = 0x07  # EEM interface protocol
CDC_PROTO_VENDOR = 0xFF  # RNDIS control interface protocol (02/02/FF)
CDC_DATA_PROTO_NCM_NTB = 0x01  # NCM data interface protocol (0A/00/01)

# --- class-specific descriptors ---------------------------------------------------------------------------
CS_INTERFACE = 0x24  # bDescriptorType of class-specific interface descriptors
CS_ENDPOINT = 0x25

# functional descriptor subtypes (bDescriptorSubtype, the third byte)
CDC_HEADER_TYPE = 0x00  # Header: bcdCDC
CDC_CALL_MANAGEMENT_TYPE = 0x01
CDC_ACM_TYPE = 0x02
CDC_UNION_TYPE = 0x06  # Union: bControlInterface, bSubordinateInterface0..n
CDC_COUNTRY_TYPE = 0x07
CDC_ETHERNET_TYPE = 0x0F  # Ethernet Networking: iMACAddress, statistics, max segment, filters
CDC_MDLM_TYPE = 0x12  # MDLM: bcdVersion, bGUID[16]
CDC_MDLM_DETAIL_TYPE = 0x13  # MDLM detail: bGuidDescriptorType, bDetailData...
CDC_NCM_TYPE = 0x1A  # NCM: bcdNcmVersion, bmNetworkCapabilities

# minimum bLength for the functional descriptors we decode
HEADER_DESC_LEN = 5
UNION_DESC_LEN = 5  # at least one subordinate interface
ETHERNET_DESC_LEN = 13
NCM_DESC_LEN = 6

# --- class requests (bRequest), sent with bmRequestType 0x21 (OUT) / 0xA1 (IN) to the control interface ---
REQ_TYPE_CLASS_INTERFACE_OUT = 0x21  # host-to-device | class | interface
REQ_TYPE_CLASS_INTERFACE_IN = 0xA1  # device-to-host | class | interface (also every notification header)

SEND_ENCAPSULATED_COMMAND = 0x00  # RNDIS control messages
GET_ENCAPSULATED_RESPONSE = 0x01
SET_ETHERNET_MULTICAST_FILTERS = 0x40  # payload: N x 6-byte MAC addresses
SET_ETHERNET_PM_PATTERN_FILTER = 0x41
GET_ETHERNET_PM_PATTERN_FILTER = 0x42
SET_ETHERNET_PACKET_FILTER = 0x43  # wValue: packet filter bits below, no payload
GET_ETHERNET_STATISTIC = 0x44  # wValue: statistic selector, 4-byte reply

# NCM requests
NCM_GET_NTB_PARAMETERS = 0x80  # mandatory, 28-byte reply (see ncm_codec.NtbParameters)
NCM_GET_NET_ADDRESS = 0x81
NCM_SET_NET_ADDRESS = 0x82
NCM_GET_NTB_FORMAT = 0x83
NCM_SET_NTB_FORMAT = 0x84  # wValue: NCM_NTB_FORMAT_16 / NCM_NTB_FORMAT_32
NCM_GET_NTB_INPUT_SIZE = 0x85
NCM_SET_NTB_INPUT_SIZE = 0x86  # 4-byte payload (8 bytes with NCM_NCAP_NTB_INPUT_SIZE_8)
NCM_GET_MAX_DATAGRAM_SIZE = 0x87
NCM_SET_MAX_DATAGRAM_SIZE = 0x88
NCM_GET_CRC_MODE = 0x89
NCM_SET_CRC_MODE = 0x8A

NCM_NTB_FORMAT_16 = 0
NCM_NTB_FORMAT_32 = 1
NCM_CRC_NOT_APPENDED = 0
NCM_CRC_APPENDED = 1

# bmNtbFormatsSupported bits in GET_NTB_PARAMETERS
NCM_NTB16_SUPPORTED = 0x01
NCM_NTB32_SUPPORTED = 0x02

# bmNetworkCapabilities bits of the NCM functional descriptor
NCM_NCAP_ETH_FILTER = 0x01  # SET_ETHERNET_PACKET_FILTER (and multicast filters) supported
NCM_NCAP_NET_ADDRESS = 0x02  # GET/SET_NET_ADDRESS
NCM_NCAP_ENCAP_COMMAND = 0x04  # SEND/GET_ENCAPSULATED_*
NCM_NCAP_MAX_DATAGRAM_SIZE = 0x08  # GET/SET_MAX_DATAGRAM_SIZE
NCM_NCAP_CRC_MODE = 0x10  # GET/SET_CRC_MODE
NCM_NCAP_NTB_INPUT_SIZE_8 = 0x20  # SET_NTB_INPUT_SIZE takes 8 bytes (size + max datagrams)

# --- packet filter bits (SET_ETHERNET_PACKET_FILTER wValue) -----------------------------------------------
PACKET_TYPE_PROMISCUOUS = 0x01
PACKET_TYPE_ALL_MULTICAST = 0x02
PACKET_TYPE_DIRECTED = 0x04
PACKET_TYPE_BROADCAST = 0x08
PACKET_TYPE_MULTICAST = 0x10  # the exact list set with SET_ETHERNET_MULTICAST_FILTERS

# --- notifications (interrupt IN; 8-byte header, bmRequestType 0xA1) -------------------------------------
NOTIFY_NETWORK_CONNECTION = 0x00  # wValue 1 = connected, 0 = disconnected
NOTIFY_RESPONSE_AVAILABLE = 0x01  # RNDIS / encapsulated response ready
NOTIFY_SERIAL_STATE = 0x20  # ACM, not used by network functions
NOTIFY_CONNECTION_SPEED_CHANGE = 0x2A  # 8 data bytes: DLBitRate, ULBitRate (LE32 each)

# --- short aliases (the names the protocol drivers use) ----------------------------------------------------
CLASS_COMM = USB_CLASS_COMM
CLASS_DATA = USB_CLASS_CDC_DATA
CLASS_WIRELESS = USB_CLASS_WIRELESS
CLASS_MISC = USB_CLASS_MISC
CLASS_VENDOR = USB_CLASS_VENDOR
SUBCLASS_ACM = CDC_SUBCLASS_ACM
SUBCLASS_ECM = CDC_SUBCLASS_ETHERNET
SUBCLASS_SUBSET = CDC_SUBCLASS_MDLM
SUBCLASS_MDLM = CDC_SUBCLASS_MDLM
SUBCLASS_EEM = CDC_SUBCLASS_EEM
SUBCLASS_NCM = CDC_SUBCLASS_NCM
REQ_TYPE_CLASS_OUT = REQ_TYPE_CLASS_INTERFACE_OUT
REQ_TYPE_CLASS_IN = REQ_TYPE_CLASS_INTERFACE_IN
GET_NTB_PARAMETERS = NCM_GET_NTB_PARAMETERS
GET_NET_ADDRESS = NCM_GET_NET_ADDRESS
SET_NET_ADDRESS = NCM_SET_NET_ADDRESS
GET_NTB_FORMAT = NCM_GET_NTB_FORMAT
SET_NTB_FORMAT = NCM_SET_NTB_FORMAT
GET_NTB_INPUT_SIZE = NCM_GET_NTB_INPUT_SIZE
SET_NTB_INPUT_SIZE = NCM_SET_NTB_INPUT_SIZE
GET_MAX_DATAGRAM_SIZE = NCM_GET_MAX_DATAGRAM_SIZE
SET_MAX_DATAGRAM_SIZE = NCM_SET_MAX_DATAGRAM_SIZE
GET_CRC_MODE = NCM_GET_CRC_MODE
SET_CRC_MODE = NCM_SET_CRC_MODE
NETWORK_CONNECTION = NOTIFY_NETWORK_CONNECTION
RESPONSE_AVAILABLE = NOTIFY_RESPONSE_AVAILABLE
CONNECTION_SPEED_CHANGE = NOTIFY_CONNECTION_SPEED_CHANGE

NOTIFICATION_HEADER_LEN = 8
SPEED_CHANGE_DATA_LEN = 8

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
# Ethernet Networking descriptor from offset 3: iMACAddress, bmEthernetStatistics, wMaxSegmentSize,
# wNumberMCFilters, bNumberPowerFilters
_ETHERNET_BODY = struct.Struct("<BIHHB")
_NOTIFY_HEADER = struct.Struct("<BBHHH")  # bmRequestType, bNotification, wValue, wIndex, wLength
_SPEED = struct.Struct("<II")  # DLBitRate, ULBitRate


# ========================================================================================================
# Functional descriptors
# ========================================================================================================


@dataclass(frozen=True)
class EthernetDescriptor:
    """Ethernet Networking Functional Descriptor (subtype 0x0F)."""

    imac_index: int  # string descriptor index of the 12-hex-digit MAC address (0 = none)
    statistics: int  # bmEthernetStatistics
    max_segment_size: int  # wMaxSegmentSize: largest Ethernet frame incl. header (typically 1514)
    mc_filters: int  # low 15 bits of wNumberMCFilters: how many exact multicast filters
    mc_imperfect: bool  # bit 15 of wNumberMCFilters: the filters are hashed (imperfect)
    power_filters: int  # bNumberPowerFilters


@dataclass(frozen=True)
class NcmDescriptor:
    """NCM Functional Descriptor (subtype 0x1A)."""

    bcd_version: int  # bcdNcmVersion, e.g. 0x0100
    capabilities: int  # bmNetworkCapabilities (NCM_NCAP_* bits)


@dataclass(frozen=True)
class CdcFunctional:
    """What `parse_cdc_functional` found. The first descriptor of each kind wins."""

    header_bcd: int | None  # bcdCDC of the Header descriptor
    union_control: int | None  # bControlInterface of the Union descriptor
    union_subordinates: tuple[int, ...]  # bSubordinateInterface0..n (the data interface is the first)
    ethernet: EthernetDescriptor | None
    ncm: NcmDescriptor | None
    malformed: int  # how many descriptors were truncated / impossible (0 for a clean block)

    @property
    def data_interface(self) -> int | None:
        """The data interface paired with the control interface through the Union descriptor."""
        return self.union_subordinates[0] if self.union_subordinates else None


def parse_cdc_functional(extra: bytes | bytearray | memoryview) -> CdcFunctional:
    """Walk the descriptors in an interface's "extra" bytes and decode the CDC functional descriptors.

    The input is a sequence of descriptors (bLength, bDescriptorType, ...). Rules:
    - bLength < 2, or a descriptor running past the end: count one malformed and stop the walk;
    - descriptors that are not CS_INTERFACE (endpoint companions, vendor junk) are skipped;
    - a CS_INTERFACE descriptor without a subtype byte, or a known subtype shorter than its minimum
      length, counts malformed and is ignored; unknown subtypes are skipped;
    - when a descriptor kind repeats, the first one is kept.
    Never raises for any bytes-like input.
    """
    data = bytes(extra)
    end = len(data)
    pos = 0
    malformed = 0
    header_bcd: int | None = None
    union_control: int | None = None
    union_subordinates: tuple[int, ...] = ()
    ethernet: EthernetDescriptor | None = None
    ncm: NcmDescriptor | None = None

    while pos < end:
        if end - pos < 2:
            malformed += 1
            break
        blen = data[pos]
        btype = data[pos + 1]
        if blen < 2 or pos + blen > end:
            malformed += 1
            break
        if btype == CS_INTERFACE:
            if blen < 3:
                malformed += 1
            else:
                subtype = data[pos + 2]
                if subtype == CDC_HEADER_TYPE:
                    if blen < HEADER_DESC_LEN:
                        malformed += 1
                    elif header_bcd is None:
                        header_bcd = _U16.unpack_from(data, pos + 3)[0]
                elif subtype == CDC_UNION_TYPE:
                    if blen < UNION_DESC_LEN:
                        malformed += 1
                    elif union_control is None:
                        union_control = data[pos + 3]
                        union_subordinates = tuple(data[pos + 4 : pos + blen])
                elif subtype == CDC_ETHERNET_TYPE:
                    if blen < ETHERNET_DESC_LEN:
                        malformed += 1
                    elif ethernet is None:
                        imac, stats, maxseg, mcf, power = _ETHERNET_BODY.unpack_from(data, pos + 3)
                        ethernet = EthernetDescriptor(
                            imac_index=imac,
                            statistics=stats,
                            max_segment_size=maxseg,
                            mc_filters=mcf & 0x7FFF,
                            mc_imperfect=bool(mcf & 0x8000),
                            power_filters=power,
                        )
                elif subtype == CDC_NCM_TYPE:
                    if blen < NCM_DESC_LEN:
                        malformed += 1
                    elif ncm is None:
                        bcd = _U16.unpack_from(data, pos + 3)[0]
                        ncm = NcmDescriptor(bcd_version=bcd, capabilities=data[pos + 5])
        pos += blen

    return CdcFunctional(
        header_bcd=header_bcd,
        union_control=union_control,
        union_subordinates=union_subordinates,
        ethernet=ethernet,
        ncm=ncm,
        malformed=malformed,
    )


# ========================================================================================================
# MAC addresses
# ========================================================================================================

_HEX = frozenset("0123456789abcdefABCDEF")


def parse_mac_string(s: str | None) -> bytes | None:
    """Decode the iMACAddress string: exactly 12 hex digits (no separators, no spaces) -> 6 bytes, else None.

    No judgement on the address itself (multicast/zero addresses pass); the caller decides whether to fall
    back to `random_local_mac()` as Linux does for unusable strings.
    """
    if s is None or len(s) != 12 or not _HEX.issuperset(s):
        return None
    return bytes.fromhex(s)


def random_local_mac() -> bytes:
    """A random locally administered unicast MAC: bit 1 of the first octet set, bit 0 (group) clear."""
    mac = bytearray(os.urandom(6))
    mac[0] = (mac[0] & 0xFC) | 0x02
    return bytes(mac)


# ========================================================================================================
# Filters (the engine sends the control transfers; these only compute wValue / payload)
# ========================================================================================================


def packet_filter_bits(promisc: bool, allmulti: bool, multicast: bool) -> int:
    """wValue for SET_ETHERNET_PACKET_FILTER. DIRECTED|BROADCAST always; the rest on request."""
    bits = PACKET_TYPE_DIRECTED | PACKET_TYPE_BROADCAST
    if promisc:
        bits |= PACKET_TYPE_PROMISCUOUS
    if allmulti:
        bits |= PACKET_TYPE_ALL_MULTICAST
    if multicast:
        bits |= PACKET_TYPE_MULTICAST
    return bits


def multicast_filter_payload(macs: Iterable[bytes | bytearray]) -> bytes:
    """Data stage of SET_ETHERNET_MULTICAST_FILTERS: the 6-byte addresses back to back (wValue = count).

    Raises ValueError for an address that is not 6 bytes (a caller bug, not device input).
    """
    out = bytearray()
    for mac in macs:
        if len(mac) != 6:
            raise ValueError(f"multicast address must be 6 bytes, got {len(mac)}")
        out += mac
    return bytes(out)


# ========================================================================================================
# Notifications
# ========================================================================================================


@dataclass(frozen=True)
class Notification:
    """One decoded notification.

    kind: the bNotification code (NOTIFY_NETWORK_CONNECTION, NOTIFY_RESPONSE_AVAILABLE,
          NOTIFY_CONNECTION_SPEED_CHANGE).
    connected: for NETWORK_CONNECTION, True/False; else None.
    up_bps / down_bps: for CONNECTION_SPEED_CHANGE, the uplink (host->device, OUT) and downlink
          (device->host, IN) bit rates; else None.
    """

    kind: int
    connected: bool | None = None
    up_bps: int | None = None
    down_bps: int | None = None


# shared instances: the common notifications allocate nothing
NOTIFICATION_CONNECTED = Notification(NOTIFY_NETWORK_CONNECTION, connected=True)
NOTIFICATION_DISCONNECTED = Notification(NOTIFY_NETWORK_CONNECTION, connected=False)
NOTIFICATION_RESPONSE_AVAILABLE = Notification(NOTIFY_RESPONSE_AVAILABLE)


class NotificationParser:
    """Decode interrupt-IN transfers into `Notification`s.

    Stateful because CONNECTION_SPEED_CHANGE's 8 data bytes may come in the same transfer as its 8-byte
    header or alone in the next transfer. After a header-only speed change transfer, the next transfer's
    first 8 bytes are taken as the speed data whatever they look like (what Linux does too); a shorter
    follow-up counts as an error and the parser resynchronises.

    `feed` returns a Notification, or None when the transfer completes nothing: a header-only speed change
    (not an error: `pending` is True), or an unknown/malformed one. Counters:
    - `errors`: malformed transfers (short, wrong bmRequestType, short speed data) and unknown codes;
    - `unknown`: well-formed headers with a code we do not handle (also counted in `errors`);
    - `count`: notifications returned.
    With a `stats` object, `stats.notifications` counts returned notifications and
    `stats.notification_errors` counts what `errors` counts.

    Repeated identical notifications (RTL8156 firmware repeats NETWORK_CONNECTION every 32 ms) are all
    returned; acting only on change is the caller's job. Never raises on device input.
    """

    __slots__ = ("errors", "unknown", "count", "_pending", "_stats")

    def __init__(self, stats: Stats | None = None) -> None:
        self.errors = 0
        self.unknown = 0
        self.count = 0
        self._pending = False
        self._stats = stats

    @property
    def pending(self) -> bool:
        """True when a speed change header was seen and its data is expected in the next transfer."""
        return self._pending

    def reset(self) -> None:
        self._pending = False

    def _error(self) -> None:
        self.errors += 1
        if self._stats is not None:
            self._stats.notification_errors += 1

    def _ok(self, n: Notification) -> Notification:
        self.count += 1
        if self._stats is not None:
            self._stats.notifications += 1
        return n

    def _speed(self, buf: memoryview | bytes | bytearray, off: int) -> Notification:
        down, up = _SPEED.unpack_from(buf, off)
        return self._ok(Notification(NOTIFY_CONNECTION_SPEED_CHANGE, up_bps=up, down_bps=down))

    def feed(self, buf: memoryview | bytes | bytearray, length: int) -> Notification | None:
        """Decode one interrupt transfer of `length` bytes (never reads past `length` or len(buf))."""
        n = len(buf)
        if length > n:
            length = n
        if self._pending:
            self._pending = False
            if length >= SPEED_CHANGE_DATA_LEN:
                return self._speed(buf, 0)
            self._error()
            return None
        if length < NOTIFICATION_HEADER_LEN:
            self._error()
            return None
        req_type, code, value, _index, wlength = _NOTIFY_HEADER.unpack_from(buf, 0)
        if req_type != REQ_TYPE_CLASS_INTERFACE_IN:
            self._error()
            return None
        if code == NOTIFY_NETWORK_CONNECTION:
            return self._ok(NOTIFICATION_CONNECTED if value else NOTIFICATION_DISCONNECTED)
        if code == NOTIFY_RESPONSE_AVAILABLE:
            return self._ok(NOTIFICATION_RESPONSE_AVAILABLE)
        if code == NOTIFY_CONNECTION_SPEED_CHANGE:
            if wlength < SPEED_CHANGE_DATA_LEN:
                self._error()
                return None
            if length >= NOTIFICATION_HEADER_LEN + SPEED_CHANGE_DATA_LEN:
                return self._speed(buf, NOTIFICATION_HEADER_LEN)
            if length == NOTIFICATION_HEADER_LEN:
                self._pending = True
                return None
            self._error()  # header plus a partial payload
            return None
        self.unknown += 1
        self._error()
        return None
