"""CDC EEM (Ethernet Emulation Model 1.0) codec: the packet stream in both directions.

Written from USB CDC EEM 1.0 (EEM100: the EEM packet header, data and command packets, the zero-length EEM
packet); host behaviour taken as fact from Linux's drivers/net/usb/cdc_eem.c. An EEM bulk transfer is a
sequence of EEM packets, each a 2-byte little-endian header followed by its payload::

    bit 15  bmType      0 = data packet, 1 = command packet
    data packet:
      bit 14     bmCRC     1 = the frame ends in a real Ethernet CRC-32, 0 = in the sentinel DE AD BE EF
      bits 0-13  length    payload length = Ethernet frame + the 4 CRC/sentinel bytes
                           (a header of 0x0000 is a zero-length EEM packet: a no-op, sent instead of a ZLP)
    command packet:
      bit 14     reserved
      bits 11-13 bmEEMCmd  0 echo, 1 echo response, 2 suspend hint, 3 response hint,
                           4 response complete hint, 5 tickle
      bits 0-10  param     echo / echo response: length of the data that follows the header;
                           other commands: a parameter, no data follows

The CRC, when present, is the Ethernet FCS: CRC-32 (zlib.crc32) over the frame, stored least significant
byte first (as it goes on the wire after an Ethernet frame). The sentinel is the big-endian word 0xDEADBEEF.

Hot path (`EemBatch` per OUT transfer, `EemDecoder.decode` per IN transfer): module-level `struct.Struct`
objects, `pack_into`/`unpack_from`, no per-frame copies (the CRC is computed over a memoryview slice), only
transient ints. The decoder never raises and never reads past the transfer's `length`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from usbnetd.protocols.batch import FrameBatch, build_all

from ..core.stats import Stats

EEM_HLEN = 2  # every EEM packet header
EEM_CRC_LEN = 4  # CRC or sentinel at the end of each data payload

TYPE_COMMAND = 0x8000  # bmType
DATA_CRC = 0x4000  # bmCRC (data packets)
DATA_LEN_MASK = 0x3FFF  # data payload length (frame + 4)
CMD_SHIFT = 11
CMD_MASK = 0x7  # bmEEMCmd, after the shift
CMD_PARAM_MASK = 0x07FF  # bmEEMCmdParam

# bmEEMCmd values
CMD_ECHO = 0  # host or device: answer with CMD_ECHO_RESPONSE carrying the same data
CMD_ECHO_RESPONSE = 1
CMD_SUSPEND_HINT = 2
CMD_RESPONSE_HINT = 3
CMD_RESPONSE_COMPLETE_HINT = 4
CMD_TICKLE = 5

COMMAND_NAMES = {
    CMD_ECHO: "echo",
    CMD_ECHO_RESPONSE: "echo response",
    CMD_SUSPEND_HINT: "suspend hint",
    CMD_RESPONSE_HINT: "response hint",
    CMD_RESPONSE_COMPLETE_HINT: "response complete hint",
    CMD_TICKLE: "tickle",
}

SENTINEL = 0xDEADBEEF  # sent as the bytes DE AD BE EF
SENTINEL_BYTES = b"\xde\xad\xbe\xef"
ZERO_LENGTH_PACKET = b"\x00\x00"
MAX_PAYLOAD = DATA_LEN_MASK  # 16383: the largest data payload (frame + 4) a header can describe
MAX_FRAME_PAYLOAD = MAX_PAYLOAD - EEM_CRC_LEN  # 16379
MAX_ECHO = CMD_PARAM_MASK  # 2047 bytes of echo data

ETH_HLEN = 14
DEFAULT_MAX_FRAME = 1514

_U16 = struct.Struct("<H")
_U32LE = struct.Struct("<I")  # the CRC
_U32BE = struct.Struct(">I")  # the sentinel


def command_name(cmd: int) -> str:
    return COMMAND_NAMES.get(cmd, f"command {cmd}")


# ========================================================================================================
# Command builders (rare path; return bytes)
# ========================================================================================================


def command(cmd: int, param: int = 0) -> bytes:
    """A bare EEM command packet header (2 bytes). For echo / echo response use `echo` / `echo_response`,
    which append the data. Raises ValueError for a command or parameter out of range."""
    if not 0 <= cmd <= CMD_MASK:
        raise ValueError(f"EEM command {cmd} not in [0, {CMD_MASK}]")
    if not 0 <= param <= CMD_PARAM_MASK:
        raise ValueError(f"EEM command parameter {param} not in [0, {CMD_PARAM_MASK}]")
    return _U16.pack(TYPE_COMMAND | (cmd << CMD_SHIFT) | param)


def echo(data: bytes | bytearray | memoryview) -> bytes:
    """An echo command carrying `data` (at most 2047 bytes)."""
    return command(CMD_ECHO, len(data)) + bytes(data)


def echo_response(data: bytes | bytearray | memoryview) -> bytes:
    """The answer to an echo command: an echo response carrying the same `data`."""
    return command(CMD_ECHO_RESPONSE, len(data)) + bytes(data)


def data_packet(frame: bytes | bytearray | memoryview, crc: bool = False) -> bytes:
    """One EEM data packet for `frame` (tests, the simulated device). Raises ValueError if too long."""
    n = len(frame)
    if n > MAX_FRAME_PAYLOAD:
        raise ValueError(f"frame of {n} bytes exceeds the EEM maximum {MAX_FRAME_PAYLOAD}")
    if crc:
        return _U16.pack(DATA_CRC | (n + EEM_CRC_LEN)) + bytes(frame) + _U32LE.pack(zlib.crc32(frame))
    return _U16.pack(n + EEM_CRC_LEN) + bytes(frame) + SENTINEL_BYTES


# ========================================================================================================
# TX
# ========================================================================================================


class EemBatch(FrameBatch):
    """Builds one OUT transfer of EEM data packets in place, in a caller-provided buffer (the same contract
    as ncm_codec.NtbBuilder, so a driver maps tx_begin/tx_slot/tx_commit/tx_finish onto it):

        b.begin(view)
        off, room = b.next_slot()      # the frame goes at view[off:off + n], n <= room; room 0: full
        b.commit(n)                    # writes the 2-byte header at off - 2 and the 4 bytes after the frame
        total = b.finish()             # send view[:total]; never needs a ZLP

    `room` leaves space for the 4-byte sentinel/CRC and for the 2-byte zero-length EEM packet `finish` may
    append, and never exceeds the 16379 bytes an EEM header can describe.

    Sentinel, not CRC (default `crc=False`): the frame ends in DE AD BE EF with bmCRC 0, as the Linux host
    driver sends. USB already protects every packet with its own CRC, so a second CRC-32 per frame would
    only cost a zlib pass; the spec allows the sentinel for exactly this case. `crc=True` computes the real
    CRC (for a simulated device that wants to exercise the receive check).

    ZLP avoidance: when the transfer would end exactly on a multiple of `maxpacket`, `finish` appends a
    zero-length EEM packet (2 zero bytes), which the receiver skips, so the transfer ends in a short packet.
    """

    __slots__ = (
        "max_size",
        "maxpacket",
        "max_frames",
        "crc",
        "_view",
        "_limit",
        "_count",
        "_pos",
        "_slot",
        "_room",
        "_open",
    )

    def __init__(self, max_size: int, maxpacket: int, max_frames: int = 64, crc: bool = False) -> None:
        if maxpacket < 1:
            raise ValueError(f"maxpacket {maxpacket} < 1")
        if max_frames < 1:
            raise ValueError(f"max_frames {max_frames} < 1")
        if max_size < EEM_HLEN + ETH_HLEN + EEM_CRC_LEN + EEM_HLEN:
            raise ValueError(f"max_size {max_size} cannot hold one frame")
        self.max_size = max_size
        self.maxpacket = maxpacket
        self.max_frames = max_frames
        self.crc = crc
        self._view: memoryview | bytearray | None = None
        self._limit = 0
        self._count = 0
        self._pos = 0
        self._slot = -1
        self._room = 0
        self._open = False

    def begin(self, view: memoryview | bytearray) -> None:
        """Start a new transfer in `view` (which should be at least max_size long)."""
        self._view = view
        limit = self.max_size
        n = len(view)
        if n < limit:
            limit = n
        self._limit = limit
        self._count = 0
        self._pos = 0
        self._slot = -1
        self._room = 0
        self._open = True

    def next_slot(self) -> tuple[int, int]:
        """(offset of the frame, room); room 0 means the transfer is full (or not begun)."""
        off = self._pos + EEM_HLEN
        if not self._open or self._count >= self.max_frames:
            self._slot = -1
            return off, 0
        room = self._limit - off - EEM_CRC_LEN - EEM_HLEN
        if room > MAX_FRAME_PAYLOAD:
            room = MAX_FRAME_PAYLOAD
        if room <= 0:
            self._slot = -1
            return off, 0
        self._slot = off
        self._room = room
        return off, room

    def commit(self, length: int) -> None:
        """Record a frame of `length` bytes written at the last `next_slot` offset: writes its header and
        the sentinel (or CRC). Raises ValueError for a caller error (no slot, length < 1 or above the room)."""
        slot = self._slot
        if slot < 0 or length < 1 or length > self._room:
            raise ValueError(f"commit({length}) without a slot with room for it")
        view = self._view
        end = slot + length
        if self.crc:
            _U16.pack_into(view, slot - EEM_HLEN, DATA_CRC | (length + EEM_CRC_LEN))  # type: ignore[arg-type]
            mv = view if isinstance(view, memoryview) else memoryview(view)  # type: ignore[arg-type]
            _U32LE.pack_into(view, end, zlib.crc32(mv[slot:end]))  # type: ignore[arg-type]
        else:
            _U16.pack_into(view, slot - EEM_HLEN, length + EEM_CRC_LEN)  # type: ignore[arg-type]
            _U32BE.pack_into(view, end, SENTINEL)  # type: ignore[arg-type]
        self._pos = end + EEM_CRC_LEN
        self._count += 1
        self._slot = -1

    def finish(self) -> int:
        """Close the transfer; return the bytes to send (0 if nothing was committed). Appends a zero-length
        EEM packet when the transfer would otherwise end on a maxpacket boundary."""
        if not self._open:
            return 0
        self._open = False
        self._slot = -1
        if self._count == 0:
            return 0
        total = self._pos
        if total % self.maxpacket == 0:
            _U16.pack_into(self._view, total, 0)  # type: ignore[arg-type]
            total += EEM_HLEN
        return total


def build_transfer(
    frames: list[bytes], max_size: int = 65536, maxpacket: int = 512, crc: bool = False, max_frames: int = 1024
) -> bytes:
    """One transfer holding `frames` (tests, the simulated device). Raises ValueError if they do not fit."""
    return build_all(EemBatch(max_size, maxpacket, max_frames, crc), max_size, frames)


# ========================================================================================================
# RX
# ========================================================================================================


class EemDecoder:
    """Splits received bulk IN transfers into Ethernet frames and EEM commands.

    `decode(view, length, emit, on_command=None)` walks every EEM packet from offset 0 and returns how many
    frames it emitted. Never raises; every (offset, length) it hands out lies inside [0, length).
      - data packet, good: `emit(offset, frame_length)` — the frame without its 4 CRC/sentinel bytes;
      - command: `on_command(cmd, param, offset, data_len)` — for echo / echo response the data is at
        view[offset:offset + data_len] (data_len == param); for other commands data_len is 0 and offset is
        where the next packet starts. The caller answers an echo with `echo_response(data)`. Commands are
        not counted in Stats; with on_command None they are skipped.
      - zero-length packets (header 0x0000, or any data header with length 0) are skipped silently.
    Only errors are counted (rx_packets/rx_bytes are the caller's):
      - a header, echo data or data payload running past `length` (including a lone trailing byte):
        rx_errors + rx_length_errors once, the walk stops (the framing is lost);
      - a data payload whose frame (payload - 4) is below 14 or above max_frame bytes:
        rx_errors + rx_length_errors, the packet is skipped, the walk goes on;
      - bmCRC 1 and the CRC-32 does not match, or bmCRC 0 and the last 4 bytes are not DE AD BE EF:
        rx_errors + rx_frame_errors, the packet is skipped, the walk goes on.

    Decisions: CRCs are verified (`check_crc`, default on) — one zlib.crc32 per frame, only for devices that
    set bmCRC, and a bad CRC means corrupt data that must not reach the network. The sentinel is checked
    too (`check_sentinel`, default on): it is the only in-band sign that the packet stream is still in step,
    and the Linux host driver drops frames whose sentinel is wrong as well. A device known to send garbage
    in place of the sentinel can be driven with check_sentinel=False.
    """

    __slots__ = ("stats", "max_frame", "check_crc", "check_sentinel")

    def __init__(
        self, stats: Stats, max_frame: int = DEFAULT_MAX_FRAME, check_crc: bool = True, check_sentinel: bool = True
    ) -> None:
        self.stats = stats
        self.max_frame = max_frame
        self.check_crc = check_crc
        self.check_sentinel = check_sentinel

    def decode(
        self,
        view: memoryview | bytes | bytearray,
        length: int,
        emit: Callable[[int, int], object],
        on_command: Callable[[int, int, int, int], object] | None = None,
    ) -> int:
        n = len(view)
        if length > n:
            length = n
        stats = self.stats
        max_frame = self.max_frame
        check_crc = self.check_crc
        check_sentinel = self.check_sentinel
        u16 = _U16.unpack_from
        mv: memoryview | None = None
        pos = 0
        emitted = 0
        while pos < length:
            if pos + EEM_HLEN > length:
                stats.rx_errors += 1
                stats.rx_length_errors += 1
                break
            hdr = u16(view, pos)[0]
            pos += EEM_HLEN
            if hdr & TYPE_COMMAND:
                cmd = (hdr >> CMD_SHIFT) & CMD_MASK
                param = hdr & CMD_PARAM_MASK
                dlen = param if cmd <= CMD_ECHO_RESPONSE else 0
                if pos + dlen > length:
                    stats.rx_errors += 1
                    stats.rx_length_errors += 1
                    break
                if on_command is not None:
                    on_command(cmd, param, pos, dlen)
                pos += dlen
                continue
            plen = hdr & DATA_LEN_MASK
            if plen == 0:
                continue
            end = pos + plen
            if end > length:
                stats.rx_errors += 1
                stats.rx_length_errors += 1
                break
            flen = plen - EEM_CRC_LEN
            if flen < ETH_HLEN or flen > max_frame:
                stats.rx_errors += 1
                stats.rx_length_errors += 1
                pos = end
                continue
            fend = pos + flen
            if hdr & DATA_CRC:
                if check_crc:
                    if mv is None:
                        mv = view if isinstance(view, memoryview) else memoryview(view)
                    if zlib.crc32(mv[pos:fend]) != _U32LE.unpack_from(view, fend)[0]:
                        stats.rx_errors += 1
                        stats.rx_frame_errors += 1
                        pos = end
                        continue
            elif check_sentinel and _U32BE.unpack_from(view, fend)[0] != SENTINEL:
                stats.rx_errors += 1
                stats.rx_frame_errors += 1
                pos = end
                continue
            emit(pos, flen)
            emitted += 1
            pos = end
        return emitted
