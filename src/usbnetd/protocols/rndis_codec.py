"""RNDIS (MS-RNDIS 1.0) codec: control messages (setup path) and PACKET_MSG data framing (hot path).

Written from Microsoft's open specification [MS-RNDIS] (Remote Network Driver Interface Specification
(RNDIS) Protocol, protocol version 1.0): message types and status values §2.2.1, INITIALIZE §2.2.2, HALT
§2.2.3, QUERY §2.2.4, SET §2.2.5, RESET §2.2.6, INDICATE_STATUS §2.2.7, KEEPALIVE §2.2.8, the completions
§2.2.9-§2.2.13 and PACKET_MSG §2.2.14; control messages travel over the CDC encapsulated-command requests of
USB CDC 1.2 (CDC120 §6.2). OID numbers are the NDIS ones the Microsoft Remote NDIS OID pages list (the same
values as Linux's include/linux/rndis.h). Host behaviour taken as fact from Linux's
drivers/net/usb/rndis_host.c and the gadget's drivers/usb/gadget/function/rndis.c (control buffer size, what
the gadget answers). Both directions: the host driver builds INITIALIZE/QUERY/SET/HALT/KEEPALIVE_CMPLT and
parses the completions and indications; a simulated device can use the device-side builders and parse what
the host sends.

Wire layout (all fields little-endian 32-bit words)::

    every message        MessageType  MessageLength  ...
    INITIALIZE (24)      RequestID MajorVersion MinorVersion MaxTransferSize
    INITIALIZE_CMPLT(52) RequestID Status Major Minor DeviceFlags Medium MaxPacketsPerTransfer
                         MaxTransferSize PacketAlignmentFactor AFListOffset AFListSize
    HALT (12)            RequestID
    QUERY / SET (28+n)   RequestID Oid InformationBufferLength InformationBufferOffset DeviceVcHandle  buffer
    QUERY_CMPLT (24+n)   RequestID Status InformationBufferLength InformationBufferOffset  buffer
    SET_CMPLT (16)       RequestID Status
    RESET (12)           Reserved
    RESET_CMPLT (16)     Status AddressingReset
    INDICATE_STATUS(20+n) Status StatusBufferLength StatusBufferOffset  buffer
    KEEPALIVE (12)       RequestID
    KEEPALIVE_CMPLT (16) RequestID Status
    PACKET_MSG (44+n)    DataOffset DataLength OOBDataOffset OOBDataLength NumOOBDataElements
                         PerPacketInfoOffset PerPacketInfoLength VcHandle Reserved  frame

Every buffer offset (InformationBufferOffset, StatusBufferOffset, DataOffset, ...) counts from byte 8 of the
message, i.e. from the field right after MessageLength.

Hot path (`RndisBatch` per OUT transfer, `RndisDecoder.decode` per IN transfer): module-level
`struct.Struct` objects, `pack_into`/`unpack_from`, no per-frame copies, only transient ints/tuples. The
decoder never raises and never reads past the transfer's `length`. The setup path (`parse_control`) raises
`RndisError` for malformed messages.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from usbnetd.protocols.batch import FrameBatch, build_all

from ..core.stats import Stats

# ========================================================================================================
# Numbers
# ========================================================================================================

# --- message types (MessageType) ---------------------------------------------------------------------------
MSG_COMPLETION = 0x80000000  # OR-ed into a request's type to form its completion
PACKET_MSG = 0x00000001  # data: one Ethernet frame (bulk pipes only)
INITIALIZE_MSG = 0x00000002  # host -> device: start, negotiate version and transfer size
HALT_MSG = 0x00000003  # host -> device: stop; no completion
QUERY_MSG = 0x00000004  # host -> device: read an OID
SET_MSG = 0x00000005  # host -> device: write an OID
RESET_MSG = 0x00000006  # host -> device: soft reset
INDICATE_STATUS_MSG = 0x00000007  # device -> host: unsolicited status (link up/down, ...)
KEEPALIVE_MSG = 0x00000008  # either direction: are you alive? (must be completed)
INITIALIZE_CMPLT = INITIALIZE_MSG | MSG_COMPLETION  # 0x80000002
QUERY_CMPLT = QUERY_MSG | MSG_COMPLETION  # 0x80000004
SET_CMPLT = SET_MSG | MSG_COMPLETION  # 0x80000005
RESET_CMPLT = RESET_MSG | MSG_COMPLETION  # 0x80000006
KEEPALIVE_CMPLT = KEEPALIVE_MSG | MSG_COMPLETION  # 0x80000008

MESSAGE_NAMES = {
    PACKET_MSG: "PACKET_MSG",
    INITIALIZE_MSG: "INITIALIZE_MSG",
    HALT_MSG: "HALT_MSG",
    QUERY_MSG: "QUERY_MSG",
    SET_MSG: "SET_MSG",
    RESET_MSG: "RESET_MSG",
    INDICATE_STATUS_MSG: "INDICATE_STATUS_MSG",
    KEEPALIVE_MSG: "KEEPALIVE_MSG",
    INITIALIZE_CMPLT: "INITIALIZE_CMPLT",
    QUERY_CMPLT: "QUERY_CMPLT",
    SET_CMPLT: "SET_CMPLT",
    RESET_CMPLT: "RESET_CMPLT",
    KEEPALIVE_CMPLT: "KEEPALIVE_CMPLT",
}

# --- status codes (Status; NDIS_STATUS values) --------------------------------------------------------------
STATUS_SUCCESS = 0x00000000
STATUS_PENDING = 0x00000103
STATUS_NOT_ACCEPTED = 0x00010003
STATUS_MEDIA_CONNECT = 0x4001000B  # INDICATE_STATUS: link up
STATUS_MEDIA_DISCONNECT = 0x4001000C  # INDICATE_STATUS: link down
STATUS_MEDIA_SPECIFIC_INDICATION = 0x40010012
STATUS_LINK_SPEED_CHANGE = 0x40010013
STATUS_FAILURE = 0xC0000001  # unspecified error
STATUS_RESOURCES = 0xC000009A
STATUS_NOT_SUPPORTED = 0xC00000BB  # unknown OID / request
STATUS_INVALID_LENGTH = 0xC0010014
STATUS_INVALID_DATA = 0xC0010015
STATUS_BUFFER_TOO_SHORT = 0xC0010016
STATUS_INVALID_OID = 0xC0010017

STATUS_NAMES = {
    STATUS_SUCCESS: "SUCCESS",
    STATUS_PENDING: "PENDING",
    STATUS_NOT_ACCEPTED: "NOT_ACCEPTED",
    STATUS_MEDIA_CONNECT: "MEDIA_CONNECT",
    STATUS_MEDIA_DISCONNECT: "MEDIA_DISCONNECT",
    STATUS_MEDIA_SPECIFIC_INDICATION: "MEDIA_SPECIFIC_INDICATION",
    STATUS_LINK_SPEED_CHANGE: "LINK_SPEED_CHANGE",
    STATUS_FAILURE: "FAILURE",
    STATUS_RESOURCES: "RESOURCES",
    STATUS_NOT_SUPPORTED: "NOT_SUPPORTED",
    STATUS_INVALID_LENGTH: "INVALID_LENGTH",
    STATUS_INVALID_DATA: "INVALID_DATA",
    STATUS_BUFFER_TOO_SHORT: "BUFFER_TOO_SHORT",
    STATUS_INVALID_OID: "INVALID_OID",
}

# --- versions, flags, medium -------------------------------------------------------------------------------
RNDIS_MAJOR_VERSION = 1
RNDIS_MINOR_VERSION = 0
DF_CONNECTIONLESS = 0x00000001  # INITIALIZE_CMPLT DeviceFlags: 802.3-style device (what we drive)
DF_CONNECTION_ORIENTED = 0x00000002
MEDIUM_802_3 = 0x00000000  # INITIALIZE_CMPLT Medium (NdisMedium802_3)

# --- OIDs (NDIS object identifiers) --------------------------------------------------------------------------
OID_GEN_SUPPORTED_LIST = 0x00010101  # list of u32 OIDs the device answers
OID_GEN_HARDWARE_STATUS = 0x00010102
OID_GEN_MEDIA_SUPPORTED = 0x00010103
OID_GEN_MEDIA_IN_USE = 0x00010104
OID_GEN_MAXIMUM_FRAME_SIZE = 0x00010106  # u32: largest frame without the 14-byte Ethernet header (the MTU)
OID_GEN_LINK_SPEED = 0x00010107  # u32: in units of 100 bit/s
OID_GEN_TRANSMIT_BLOCK_SIZE = 0x0001010A
OID_GEN_RECEIVE_BLOCK_SIZE = 0x0001010B
OID_GEN_VENDOR_ID = 0x0001010C
OID_GEN_VENDOR_DESCRIPTION = 0x0001010D
OID_GEN_CURRENT_PACKET_FILTER = 0x0001010E  # u32: FILTER_* bits; set it non-zero to start the data path
OID_GEN_MAXIMUM_TOTAL_SIZE = 0x00010111
OID_GEN_MEDIA_CONNECT_STATUS = 0x00010114  # u32: MEDIA_STATE_*
OID_GEN_PHYSICAL_MEDIUM = 0x00010202  # u32: PHYSICAL_MEDIUM_* (optional; tells e.g. wireless WAN)
OID_GEN_XMIT_OK = 0x00020101
OID_GEN_RCV_OK = 0x00020102
OID_GEN_XMIT_ERROR = 0x00020103
OID_GEN_RCV_ERROR = 0x00020104
OID_GEN_RCV_NO_BUFFER = 0x00020105
OID_802_3_PERMANENT_ADDRESS = 0x01010101  # 6 bytes: the device's MAC (use it: unicast fails otherwise)
OID_802_3_CURRENT_ADDRESS = 0x01010102  # 6 bytes
OID_802_3_MULTICAST_LIST = 0x01010103  # N x 6 bytes
OID_802_3_MAXIMUM_LIST_SIZE = 0x01010104  # u32

# OID_GEN_MEDIA_CONNECT_STATUS values
MEDIA_STATE_CONNECTED = 0
MEDIA_STATE_DISCONNECTED = 1

# --- NDIS packet filter bits (OID_GEN_CURRENT_PACKET_FILTER); NOT the CDC filter bit values ----------------
FILTER_DIRECTED = 0x00000001  # frames to our own MAC
FILTER_MULTICAST = 0x00000002  # frames to addresses in OID_802_3_MULTICAST_LIST
FILTER_ALL_MULTICAST = 0x00000004  # every multicast frame
FILTER_BROADCAST = 0x00000008
FILTER_PROMISCUOUS = 0x00000020
FILTER_DEFAULT = FILTER_DIRECTED | FILTER_MULTICAST | FILTER_ALL_MULTICAST | FILTER_BROADCAST

# --- OID_GEN_PHYSICAL_MEDIUM values (NdisPhysicalMedium*), only to log what the device is -------------------
PHYSICAL_MEDIUM_UNSPECIFIED = 0
PHYSICAL_MEDIUM_WIRELESS_LAN = 1
PHYSICAL_MEDIUM_CABLE_MODEM = 2
PHYSICAL_MEDIUM_PHONE_LINE = 3
PHYSICAL_MEDIUM_POWER_LINE = 4
PHYSICAL_MEDIUM_DSL = 5
PHYSICAL_MEDIUM_FIBRE_CHANNEL = 6
PHYSICAL_MEDIUM_1394 = 7
PHYSICAL_MEDIUM_WIRELESS_WAN = 8  # cellular modems / phones tethering over RNDIS
PHYSICAL_MEDIUM_NATIVE_802_11 = 9
PHYSICAL_MEDIUM_BLUETOOTH = 10
PHYSICAL_MEDIUM_802_3 = 14

PHYSICAL_MEDIUM_NAMES = {
    PHYSICAL_MEDIUM_UNSPECIFIED: "unspecified",
    PHYSICAL_MEDIUM_WIRELESS_LAN: "wireless LAN",
    PHYSICAL_MEDIUM_CABLE_MODEM: "cable modem",
    PHYSICAL_MEDIUM_PHONE_LINE: "phone line",
    PHYSICAL_MEDIUM_POWER_LINE: "power line",
    PHYSICAL_MEDIUM_DSL: "DSL",
    PHYSICAL_MEDIUM_FIBRE_CHANNEL: "fibre channel",
    PHYSICAL_MEDIUM_1394: "IEEE 1394",
    PHYSICAL_MEDIUM_WIRELESS_WAN: "wireless WAN",
    PHYSICAL_MEDIUM_NATIVE_802_11: "native 802.11",
    PHYSICAL_MEDIUM_BLUETOOTH: "Bluetooth",
    PHYSICAL_MEDIUM_802_3: "802.3",
}

# --- sizes -------------------------------------------------------------------------------------------------
MSG_HEADER_LEN = 8  # MessageType + MessageLength; buffer offsets count from here
PACKET_HEADER_LEN = 44  # PACKET_MSG header before the frame
PACKET_DATA_OFFSET = PACKET_HEADER_LEN - MSG_HEADER_LEN  # 36: DataOffset when the frame follows the header
INITIALIZE_LEN = 24
INITIALIZE_CMPLT_LEN = 52
HALT_LEN = 12
RESET_LEN = 12
KEEPALIVE_LEN = 12
QUERY_HEADER_LEN = 28  # also SET
QUERY_CMPLT_HEADER_LEN = 24
SET_CMPLT_LEN = 16
RESET_CMPLT_LEN = 16
KEEPALIVE_CMPLT_LEN = 16
INDICATE_STATUS_HEADER_LEN = 20
CONTROL_BUFFER_SIZE = 1025  # what Linux reads per GET_ENCAPSULATED_RESPONSE; ours may be larger

ETH_HLEN = 14
DEFAULT_MAX_FRAME = 1522  # 1514 + 4 (802.1Q tag) + 4 slack for devices that leave the FCS on
MAX_ALIGNMENT_FACTOR = 12  # 4 KiB; anything larger in INITIALIZE_CMPLT is nonsense

_U32 = struct.Struct("<I")
_HDR = struct.Struct("<II")  # MessageType, MessageLength
_INIT = struct.Struct("<IIIIII")
_INIT_CMPLT = struct.Struct("<13I")
_REQ = struct.Struct("<III")  # type, length, RequestID (HALT, KEEPALIVE, RESET)
_REQ_STATUS = struct.Struct("<IIII")  # type, length, RequestID/Status, Status/AddressingReset
_OID_REQ = struct.Struct("<7I")  # QUERY/SET: type, length, id, oid, buf len, buf off, vc handle
_QUERY_CMPLT = struct.Struct("<6I")  # type, length, id, status, buf len, buf off
_INDICATE = struct.Struct("<5I")  # type, length, status, buf len, buf off
_PACKET = struct.Struct("<11I")  # the 44-byte PACKET_MSG header
_PACKET_HEAD = struct.Struct("<IIII")  # type, length, data offset, data length (what the decoder reads)
assert _INIT_CMPLT.size == INITIALIZE_CMPLT_LEN and _PACKET.size == PACKET_HEADER_LEN


class RndisError(ValueError):
    """A malformed or unexpected RNDIS control message (setup path). The message is one line."""


def message_name(msg_type: int) -> str:
    return MESSAGE_NAMES.get(msg_type, f"0x{msg_type:08x}")


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, f"0x{status:08x}")


def physical_medium_name(medium: int) -> str:
    return PHYSICAL_MEDIUM_NAMES.get(medium, f"medium {medium}")


# ========================================================================================================
# Control message builders (setup path; return bytes)
# ========================================================================================================


def _u32(v: int, what: str) -> int:
    if not 0 <= v <= 0xFFFFFFFF:
        raise ValueError(f"{what} {v} does not fit in 32 bits")
    return v


def initialize(request_id: int, max_transfer_size: int) -> bytes:
    """REMOTE_NDIS_INITIALIZE_MSG (24 bytes), version 1.0; `max_transfer_size` is the largest transfer the
    host accepts from the device."""
    return _INIT.pack(
        INITIALIZE_MSG,
        INITIALIZE_LEN,
        _u32(request_id, "request id"),
        RNDIS_MAJOR_VERSION,
        RNDIS_MINOR_VERSION,
        _u32(max_transfer_size, "max transfer size"),
    )


def _oid_request(msg_type: int, request_id: int, oid: int, payload: bytes | bytearray | memoryview) -> bytes:
    n = len(payload)
    # the buffer follows the 28-byte header: its offset from byte 8 is 20 (0 when there is none)
    off = QUERY_HEADER_LEN - MSG_HEADER_LEN if n else 0
    head = _OID_REQ.pack(msg_type, QUERY_HEADER_LEN + n, _u32(request_id, "request id"), _u32(oid, "OID"), n, off, 0)
    return head + bytes(payload)


def query(request_id: int, oid: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """REMOTE_NDIS_QUERY_MSG for `oid` (payload usually empty)."""
    return _oid_request(QUERY_MSG, request_id, oid, payload)


def set_(request_id: int, oid: int, payload: bytes | bytearray | memoryview) -> bytes:
    """REMOTE_NDIS_SET_MSG writing `payload` to `oid`."""
    return _oid_request(SET_MSG, request_id, oid, payload)


def set_packet_filter(request_id: int, bits: int) -> bytes:
    """SET OID_GEN_CURRENT_PACKET_FILTER to `bits` (FILTER_*)."""
    return set_(request_id, OID_GEN_CURRENT_PACKET_FILTER, _U32.pack(_u32(bits, "filter")))


def halt(request_id: int) -> bytes:
    """REMOTE_NDIS_HALT_MSG (12 bytes; the device sends no completion)."""
    return _REQ.pack(HALT_MSG, HALT_LEN, _u32(request_id, "request id"))


def reset() -> bytes:
    """REMOTE_NDIS_RESET_MSG (12 bytes; the third word is Reserved, not a request id)."""
    return _REQ.pack(RESET_MSG, RESET_LEN, 0)


def keepalive(request_id: int) -> bytes:
    """REMOTE_NDIS_KEEPALIVE_MSG (12 bytes; either side may send it)."""
    return _REQ.pack(KEEPALIVE_MSG, KEEPALIVE_LEN, _u32(request_id, "request id"))


def keepalive_complete(request_id: int, status: int = STATUS_SUCCESS) -> bytes:
    """REMOTE_NDIS_KEEPALIVE_CMPLT (16 bytes): the answer to a device's KEEPALIVE."""
    return _REQ_STATUS.pack(
        KEEPALIVE_CMPLT, KEEPALIVE_CMPLT_LEN, _u32(request_id, "request id"), _u32(status, "status")
    )


def reset_complete(status: int = STATUS_SUCCESS, addressing_reset: int = 0) -> bytes:
    """REMOTE_NDIS_RESET_CMPLT (16 bytes, device side). addressing_reset 1: the host must resend the
    multicast list and packet filter."""
    return _REQ_STATUS.pack(RESET_CMPLT, RESET_CMPLT_LEN, _u32(status, "status"), _u32(addressing_reset, "flag"))


def initialize_complete(
    request_id: int,
    status: int = STATUS_SUCCESS,
    *,
    max_packets_per_transfer: int = 1,
    max_transfer_size: int = 1580,
    packet_alignment_factor: int = 0,
    device_flags: int = DF_CONNECTIONLESS,
    medium: int = MEDIUM_802_3,
    major: int = RNDIS_MAJOR_VERSION,
    minor: int = RNDIS_MINOR_VERSION,
) -> bytes:
    """REMOTE_NDIS_INITIALIZE_CMPLT (52 bytes, device side). Defaults are what the Linux gadget answers:
    one packet per transfer, MaxTransferSize = MTU 1500 + 14 + 44 + 22 = 1580, no alignment."""
    return _INIT_CMPLT.pack(
        INITIALIZE_CMPLT,
        INITIALIZE_CMPLT_LEN,
        _u32(request_id, "request id"),
        _u32(status, "status"),
        _u32(major, "major"),
        _u32(minor, "minor"),
        _u32(device_flags, "device flags"),
        _u32(medium, "medium"),
        _u32(max_packets_per_transfer, "max packets"),
        _u32(max_transfer_size, "max transfer size"),
        _u32(packet_alignment_factor, "alignment"),
        0,  # AFListOffset
        0,  # AFListSize
    )


def query_complete(
    request_id: int, status: int = STATUS_SUCCESS, payload: bytes | bytearray | memoryview = b""
) -> bytes:
    """REMOTE_NDIS_QUERY_CMPLT (device side); the buffer follows the 24-byte header (offset 16 from byte 8)."""
    n = len(payload)
    off = QUERY_CMPLT_HEADER_LEN - MSG_HEADER_LEN if n else 0
    head = _QUERY_CMPLT.pack(
        QUERY_CMPLT, QUERY_CMPLT_HEADER_LEN + n, _u32(request_id, "request id"), _u32(status, "status"), n, off
    )
    return head + bytes(payload)


def set_complete(request_id: int, status: int = STATUS_SUCCESS) -> bytes:
    """REMOTE_NDIS_SET_CMPLT (16 bytes, device side)."""
    return _REQ_STATUS.pack(SET_CMPLT, SET_CMPLT_LEN, _u32(request_id, "request id"), _u32(status, "status"))


def indicate_status(status: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """REMOTE_NDIS_INDICATE_STATUS_MSG (device side); the buffer follows the 20-byte header."""
    n = len(payload)
    off = INDICATE_STATUS_HEADER_LEN - MSG_HEADER_LEN if n else 0
    head = _INDICATE.pack(INDICATE_STATUS_MSG, INDICATE_STATUS_HEADER_LEN + n, _u32(status, "status"), n, off)
    return head + bytes(payload)


# ========================================================================================================
# Control message parsing (setup path; raises RndisError)
# ========================================================================================================


@dataclass(frozen=True)
class ControlMessage:
    """A control message of a type without kind-specific fields (HALT, KEEPALIVE, RESET) or of a type we do
    not know (`body` then holds the bytes after MessageLength, up to MessageLength). `request_id` is 0 for
    types that carry none (RESET, INDICATE_STATUS, RESET_CMPLT)."""

    msg_type: int
    request_id: int = 0
    body: bytes = b""

    @property
    def name(self) -> str:
        return message_name(self.msg_type)

    @property
    def is_completion(self) -> bool:
        return bool(self.msg_type & MSG_COMPLETION)


@dataclass(frozen=True)
class InitializeMsg(ControlMessage):
    """REMOTE_NDIS_INITIALIZE_MSG (what the simulated device receives)."""

    major: int = 0
    minor: int = 0
    max_transfer_size: int = 0


@dataclass(frozen=True)
class InitializeComplete(ControlMessage):
    """REMOTE_NDIS_INITIALIZE_CMPLT: the device's data-path limits."""

    status: int = 0
    major: int = 0
    minor: int = 0
    device_flags: int = 0
    medium: int = 0
    max_packets_per_transfer: int = 0  # how many PACKET_MSGs the device accepts per OUT transfer
    max_transfer_size: int = 0  # largest OUT transfer the device accepts
    packet_alignment_factor: int = 0  # PACKET_MSGs in one transfer start on 2**factor boundaries
    af_list_offset: int = 0
    af_list_size: int = 0

    @property
    def alignment(self) -> int:
        """Message alignment in bytes, 2**factor (factors above MAX_ALIGNMENT_FACTOR are treated as 0)."""
        f = self.packet_alignment_factor
        return 1 << f if f <= MAX_ALIGNMENT_FACTOR else 1


@dataclass(frozen=True)
class OidRequest(ControlMessage):
    """REMOTE_NDIS_QUERY_MSG or REMOTE_NDIS_SET_MSG (msg_type tells which)."""

    oid: int = 0
    payload: bytes = b""


@dataclass(frozen=True)
class QueryComplete(ControlMessage):
    """REMOTE_NDIS_QUERY_CMPLT: `payload` is the information buffer."""

    status: int = 0
    payload: bytes = b""

    def u32(self) -> int:
        """The buffer as one little-endian u32 (most OIDs). Raises RndisError when it is shorter than 4."""
        if len(self.payload) < 4:
            raise RndisError(f"QUERY_CMPLT buffer of {len(self.payload)} bytes, expected a 4-byte value")
        return _U32.unpack_from(self.payload, 0)[0]


@dataclass(frozen=True)
class StatusComplete(ControlMessage):
    """REMOTE_NDIS_SET_CMPLT or REMOTE_NDIS_KEEPALIVE_CMPLT."""

    status: int = 0


@dataclass(frozen=True)
class ResetComplete(ControlMessage):
    """REMOTE_NDIS_RESET_CMPLT."""

    status: int = 0
    addressing_reset: int = 0


@dataclass(frozen=True)
class IndicateStatus(ControlMessage):
    """REMOTE_NDIS_INDICATE_STATUS_MSG."""

    status: int = 0
    payload: bytes = b""

    @property
    def link(self) -> bool | None:
        """True for MEDIA_CONNECT, False for MEDIA_DISCONNECT, None for anything else."""
        return media_state(self.status)


def _buffer(data: bytes | bytearray | memoryview, name: str, msg_len: int, fixed: int, blen: int, boff: int) -> bytes:
    """The buffer [8 + boff, 8 + boff + blen) of a message, checked to lie between the end of the fixed
    header (`fixed` bytes) and MessageLength."""
    if blen == 0:
        return b""  # the offset of an empty buffer is meaningless (devices send 0 or anything)
    start = MSG_HEADER_LEN + boff
    end = start + blen
    if start < fixed or end > msg_len:
        raise RndisError(f"{name}: buffer at offset {boff} length {blen} is outside the {msg_len}-byte message body")
    return bytes(data[start:end])


def parse_control(data: bytes | bytearray | memoryview) -> ControlMessage:
    """Decode one control message (an encapsulated response, or a command on the device side).

    Checks: at least 8 bytes; 8 <= MessageLength <= len(data) (bytes after MessageLength are ignored, a
    response buffer is usually larger than the message); the type's fixed size fits in MessageLength; every
    information/status buffer lies after the fixed header and inside the message (offsets count from byte 8;
    a zero-length buffer's offset is not checked). Unknown types give a plain `ControlMessage` with the body.
    Raises `RndisError` (and nothing else) for anything malformed.
    """
    n = len(data)
    if n < MSG_HEADER_LEN:
        raise RndisError(f"RNDIS message too short: {n} bytes < {MSG_HEADER_LEN}")
    msg_type, msg_len = _HDR.unpack_from(data, 0)
    name = message_name(msg_type)
    if msg_len < MSG_HEADER_LEN:
        raise RndisError(f"{name}: MessageLength {msg_len} < {MSG_HEADER_LEN}")
    if msg_len > n:
        raise RndisError(f"{name}: MessageLength {msg_len} exceeds the {n} bytes received")

    def need(size: int) -> None:
        if msg_len < size:
            raise RndisError(f"{name}: MessageLength {msg_len} < {size}")

    if msg_type == INITIALIZE_CMPLT:
        need(INITIALIZE_CMPLT_LEN)
        f = _INIT_CMPLT.unpack_from(data, 0)
        return InitializeComplete(msg_type, f[2], b"", *f[3:])
    if msg_type == QUERY_CMPLT:
        need(QUERY_CMPLT_HEADER_LEN)
        _, _, rid, status, blen, boff = _QUERY_CMPLT.unpack_from(data, 0)
        payload = _buffer(data, name, msg_len, QUERY_CMPLT_HEADER_LEN, blen, boff)
        return QueryComplete(msg_type, rid, b"", status, payload)
    if msg_type in (SET_CMPLT, KEEPALIVE_CMPLT):
        need(SET_CMPLT_LEN)
        _, _, rid, status = _REQ_STATUS.unpack_from(data, 0)
        return StatusComplete(msg_type, rid, b"", status)
    if msg_type == RESET_CMPLT:
        need(RESET_CMPLT_LEN)
        _, _, status, addr = _REQ_STATUS.unpack_from(data, 0)
        return ResetComplete(msg_type, 0, b"", status, addr)
    if msg_type == INDICATE_STATUS_MSG:
        need(INDICATE_STATUS_HEADER_LEN)
        _, _, status, blen, boff = _INDICATE.unpack_from(data, 0)
        payload = _buffer(data, name, msg_len, INDICATE_STATUS_HEADER_LEN, blen, boff)
        return IndicateStatus(msg_type, 0, b"", status, payload)
    if msg_type in (KEEPALIVE_MSG, HALT_MSG):
        need(KEEPALIVE_LEN)
        return ControlMessage(msg_type, _REQ.unpack_from(data, 0)[2])
    if msg_type == RESET_MSG:
        need(RESET_LEN)
        return ControlMessage(msg_type, 0)
    if msg_type == INITIALIZE_MSG:
        need(INITIALIZE_LEN)
        _, _, rid, major, minor, mts = _INIT.unpack_from(data, 0)
        return InitializeMsg(msg_type, rid, b"", major, minor, mts)
    if msg_type in (QUERY_MSG, SET_MSG):
        need(QUERY_HEADER_LEN)
        _, _, rid, oid, blen, boff, _vc = _OID_REQ.unpack_from(data, 0)
        payload = _buffer(data, name, msg_len, QUERY_HEADER_LEN, blen, boff)
        return OidRequest(msg_type, rid, b"", oid, payload)
    if msg_type == PACKET_MSG:
        raise RndisError("PACKET_MSG on the control channel")
    # unknown (or a future) type: keep the bytes, let the caller decide; never crash
    rid = _U32.unpack_from(data, 8)[0] if msg_len >= 12 else 0
    return ControlMessage(msg_type, rid, bytes(data[MSG_HEADER_LEN:msg_len]))


def expect(msg: ControlMessage, msg_type: int, request_id: int | None = None) -> ControlMessage:
    """Check that `msg` is a `msg_type` completion (with `request_id`, when given) whose status, if it has
    one, is SUCCESS; return it. Raises RndisError otherwise (setup helper)."""
    if msg.msg_type != msg_type:
        raise RndisError(f"expected {message_name(msg_type)}, got {msg.name}")
    if request_id is not None and msg.request_id != request_id:
        raise RndisError(f"{msg.name}: request id {msg.request_id}, expected {request_id}")
    status = getattr(msg, "status", STATUS_SUCCESS)
    if status != STATUS_SUCCESS:
        raise RndisError(f"{msg.name}: status {status_name(status)}")
    return msg


def parse_indicate_status(msg: ControlMessage | bytes | bytearray | memoryview) -> tuple[int, bytes]:
    """(status, payload) of an INDICATE_STATUS message (parsed or raw). Raises RndisError for another type."""
    if not isinstance(msg, ControlMessage):
        msg = parse_control(msg)
    if not isinstance(msg, IndicateStatus):
        raise RndisError(f"expected INDICATE_STATUS_MSG, got {msg.name}")
    return msg.status, msg.payload


def media_state(status: int) -> bool | None:
    """Classify an indication status: True = MEDIA_CONNECT, False = MEDIA_DISCONNECT, None = other."""
    if status == STATUS_MEDIA_CONNECT:
        return True
    if status == STATUS_MEDIA_DISCONNECT:
        return False
    return None


# ========================================================================================================
# Data path: TX
# ========================================================================================================


def write_packet_header(view: memoryview | bytearray, offset: int, frame_length: int) -> int:
    """Write a 44-byte PACKET_MSG header at `offset` for a frame already at `offset + 44`; return the
    message length (44 + frame_length). DataOffset 36 (from byte 8), no OOB data, no per-packet info."""
    total = PACKET_HEADER_LEN + frame_length
    _PACKET.pack_into(view, offset, PACKET_MSG, total, PACKET_DATA_OFFSET, frame_length, 0, 0, 0, 0, 0, 0, 0)
    return total


class RndisEncoder:
    """Single-frame framing for a driver that keeps 44 bytes of headroom before each frame."""

    __slots__ = ()

    header_len = PACKET_HEADER_LEN

    @staticmethod
    def write_header(view: memoryview | bytearray, offset: int, frame_length: int) -> int:
        """See `write_packet_header`: returns the total message length (bytes to send from `offset`)."""
        return write_packet_header(view, offset, frame_length)


class RndisBatch(FrameBatch):
    """Builds one OUT transfer of back-to-back PACKET_MSGs in place, in a caller-provided buffer (the same
    contract as ncm_codec.NtbBuilder, so a driver maps tx_begin/tx_slot/tx_commit/tx_finish onto it):

        b.begin(view)
        off, room = b.next_slot()      # the frame goes at view[off:off + n], n <= room; room 0: full
        b.commit(n)                    # writes the 44-byte header at off - 44
        total = b.finish()             # send view[:total]; b.zlp says whether a ZLP is still needed

    Limits: at most `max_packets` messages (the device's MaxPacketsPerTransfer; the Linux gadget says 1) and
    at most `max_transfer_size` bytes (the device's MaxTransferSize) per transfer, and never past the view.
    Every message after the first starts on a multiple of `2**alignment_factor`; the padding before it is
    zeroed and counted in the previous message's MessageLength (so a device walks the transfer by
    MessageLength alone).

    ZLP avoidance: with `maxpacket` > 0, `finish` appends one zero byte when the transfer would end exactly
    on a wMaxPacketSize boundary (usbnet does the same for RNDIS; the device's parser sees a trailing byte
    after the last message and ignores it). One byte of the limit is reserved for it. With `maxpacket` 0,
    nothing is appended and `zlp` tells the caller to send a zero-length packet.

    The constructor raises ValueError for impossible limits (setup path); see `from_init_complete`.
    """

    __slots__ = (
        "max_packets",
        "max_transfer_size",
        "alignment",
        "maxpacket",
        "zlp",
        "_view",
        "_limit",
        "_count",
        "_pos",
        "_last_hdr",
        "_slot",
        "_room",
        "_open",
        "_zeros",
    )

    def __init__(self, max_packets: int, max_transfer_size: int, alignment_factor: int = 0, maxpacket: int = 0):
        if max_packets < 1:
            raise ValueError(f"max_packets {max_packets} < 1")
        if not 0 <= alignment_factor <= MAX_ALIGNMENT_FACTOR:
            raise ValueError(f"alignment factor {alignment_factor} not in [0, {MAX_ALIGNMENT_FACTOR}]")
        if maxpacket < 0:
            raise ValueError(f"maxpacket {maxpacket} < 0")
        reserve = 1 if maxpacket else 0
        if max_transfer_size < PACKET_HEADER_LEN + ETH_HLEN + reserve:
            raise ValueError(f"max_transfer_size {max_transfer_size} cannot hold one frame")
        self.max_packets = max_packets
        self.max_transfer_size = max_transfer_size
        self.alignment = 1 << alignment_factor
        self.maxpacket = maxpacket
        self.zlp = False
        self._view: memoryview | bytearray | None = None
        self._limit = 0
        self._count = 0
        self._pos = 0
        self._last_hdr = -1
        self._slot = -1
        self._room = 0
        self._open = False
        self._zeros = memoryview(bytes(max(self.alignment, 1)))

    @classmethod
    def from_init_complete(
        cls,
        cmplt: InitializeComplete,
        maxpacket: int = 0,
        *,
        max_packets_cap: int | None = None,
        max_transfer_cap: int | None = None,
    ) -> RndisBatch:
        """The batch for a device that answered `cmplt`. Sanitising: MaxPacketsPerTransfer 0 -> 1; an
        alignment factor above MAX_ALIGNMENT_FACTOR -> 0 (with one packet per transfer it never matters);
        MaxTransferSize too small for one full frame -> 1514 + 44 (+1 for the pad byte) — a device that
        says less still has to take an MTU-sized frame; caps apply after that."""
        packets = cmplt.max_packets_per_transfer or 1
        if max_packets_cap is not None:
            packets = max(1, min(packets, max_packets_cap))
        factor = cmplt.packet_alignment_factor
        if factor > MAX_ALIGNMENT_FACTOR:
            factor = 0
        reserve = 1 if maxpacket else 0
        floor = 1514 + PACKET_HEADER_LEN + reserve
        size = cmplt.max_transfer_size
        if size < floor:
            size = floor
        if max_transfer_cap is not None:
            size = max(floor, min(size, max_transfer_cap))
        return cls(packets, size, factor, maxpacket)

    def begin(self, view: memoryview | bytearray) -> None:
        """Start a new transfer in `view` (which should be at least max_transfer_size long)."""
        self._view = view
        limit = self.max_transfer_size
        n = len(view)
        if n < limit:
            limit = n
        if self.maxpacket:
            limit -= 1  # room for the ZLP-avoiding pad byte
        self._limit = limit
        self._count = 0
        self._pos = 0
        self._last_hdr = -1
        self._slot = -1
        self._room = 0
        self._open = True
        self.zlp = False

    def next_slot(self) -> tuple[int, int]:
        """(offset of the frame, room); room 0 means the transfer is full (or not begun)."""
        pos = self._pos
        hdr = (pos + self.alignment - 1) & -self.alignment if self._count else pos
        off = hdr + PACKET_HEADER_LEN
        if not self._open or self._count >= self.max_packets:
            self._slot = -1
            return off, 0
        room = self._limit - off
        if room <= 0:
            self._slot = -1
            return off, 0
        self._slot = off
        self._room = room
        return off, room

    def commit(self, length: int) -> None:
        """Record a frame of `length` bytes written at the last `next_slot` offset and write its header.
        Raises ValueError for a caller error (no slot, length < 1 or above the room)."""
        slot = self._slot
        if slot < 0 or length < 1 or length > self._room:
            raise ValueError(f"commit({length}) without a slot with room for it")
        view = self._view
        hdr = slot - PACKET_HEADER_LEN
        pos = self._pos
        if hdr > pos:  # alignment gap: zero it and give it to the previous message
            view[pos:hdr] = self._zeros[: hdr - pos]  # type: ignore[index]
            last = self._last_hdr
            _U32.pack_into(view, last + 4, hdr - last)  # type: ignore[arg-type]
        write_packet_header(view, hdr, length)  # type: ignore[arg-type]
        self._last_hdr = hdr
        self._pos = slot + length
        self._count += 1
        self._slot = -1

    def finish(self) -> int:
        """Close the transfer; return the bytes to send (0 if nothing was committed). Sets `zlp`."""
        if not self._open:
            return 0
        self._open = False
        self._slot = -1
        total = self._pos
        self.zlp = False
        if self._count == 0:
            return 0
        mp = self.maxpacket
        if mp:
            if total % mp == 0:
                self._view[total] = 0  # type: ignore[index]
                total += 1
        return total


def build_transfer(
    frames: list[bytes], max_packets: int = 64, max_transfer_size: int = 65536, alignment_factor: int = 0
) -> bytes:
    """One transfer holding `frames` as PACKET_MSGs (tests, the simulated device). Raises ValueError if they
    do not all fit."""
    return build_all(RndisBatch(max_packets, max_transfer_size, alignment_factor), max_transfer_size, frames)


# ========================================================================================================
# Data path: RX
# ========================================================================================================


class RndisDecoder:
    """Splits received bulk IN transfers into Ethernet frames.

    `decode(view, length, emit)` walks the PACKET_MSGs back to back from offset 0 and calls
    `emit(offset, length)` for each good frame (offsets relative to `view`; always offset + length <= the
    transfer length); it returns how many it emitted. It counts only errors (rx_packets/rx_bytes belong to
    the caller, once a frame is really delivered). Never raises.

    Transfer-level problems, counted once (rx_errors + rx_frame_errors), the walk stops, frames already
    emitted stand:
      a MessageType other than PACKET_MSG (a control message has no business on the data pipe);
      MessageLength below 44 (including 0) or running past the transfer;
      fewer than 44 bytes left that are not all zero (a truncated header).
    Per-message problems, the frame is skipped and the walk goes on with the next message (MessageLength
    is sound, so the framing is not lost):
      DataOffset below 36 (the data would overlap the header) or DataOffset/DataLength reaching past the
      message (rx_errors + rx_frame_errors);
      DataLength below 14 or above max_frame (rx_errors + rx_length_errors).

    Decisions:
    - Trailing padding: fewer than 44 bytes left after the last message, all zero, end the walk silently.
      usbnet-style senders (and the Linux gadget on controllers without ZLP support) append one zero byte
      when a transfer would end on a wMaxPacketSize boundary; some devices round transfers up a little.
      Checking "all zero" costs at most 43 byte reads. Longer zero runs are a malformed message (type 0).
    - Padding between messages must be inside the previous MessageLength (as MS-RNDIS says for aligned
      multi-packet transfers); the decoder walks strictly by MessageLength.
    - OOB data and per-packet info fields are ignored (connectionless 802.3 devices send none that matter).
    """

    __slots__ = ("stats", "max_frame")

    def __init__(self, stats: Stats, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.stats = stats
        self.max_frame = max_frame

    def decode(
        self,
        view: memoryview | bytes | bytearray,
        length: int,
        emit: Callable[[int, int], object],
    ) -> int:
        n = len(view)
        if length > n:
            length = n
        stats = self.stats
        max_frame = self.max_frame
        unpack = _PACKET_HEAD.unpack_from
        pos = 0
        emitted = 0
        while pos < length:
            left = length - pos
            if left < PACKET_HEADER_LEN:
                i = pos
                while i < length and view[i] == 0:
                    i += 1
                if i < length:
                    stats.rx_errors += 1
                    stats.rx_frame_errors += 1
                break
            msg_type, msg_len, data_off, data_len = unpack(view, pos)
            if msg_type != PACKET_MSG or msg_len < PACKET_HEADER_LEN or msg_len > left:
                stats.rx_errors += 1
                stats.rx_frame_errors += 1
                break
            if data_off < PACKET_DATA_OFFSET or MSG_HEADER_LEN + data_off + data_len > msg_len:
                stats.rx_errors += 1
                stats.rx_frame_errors += 1
            elif data_len < ETH_HLEN or data_len > max_frame:
                stats.rx_errors += 1
                stats.rx_length_errors += 1
            else:
                emit(pos + MSG_HEADER_LEN + data_off, data_len)
                emitted += 1
            pos += msg_len
        return emitted
