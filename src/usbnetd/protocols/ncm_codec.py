"""CDC-NCM transfer block (NTB) codec: NTB16 and NTB32, both directions.

Written from USB CDC NCM 1.0 (NCM10): NTH16/NTH32 §3.2 (§3.2.1, §3.2.2), NDP16/NDP32 §3.3 (§3.3.1, §3.3.2),
the NTB parameter structure of GetNtbParameters §6.2.1 (Table 6-3), NTB formats §6.2.5 and input sizes
§6.2.7 (at least 2048 bytes). Where the spec leaves a choice (datagrams per NTB when the device says "no
limit", how many NDPs to follow, padding, fall-backs for odd divisors), the host behaviour of Linux's
drivers/net/usb/cdc_ncm.c is taken as fact, so devices that work there keep working here. Direction-neutral:
the host driver builds OUT NTBs and decodes IN NTBs, the simulated device does the opposite with the same
classes.

Wire layout (all little endian)::

    NTH16  "NCMH" wHeaderLength=12 wSequence wBlockLength  wNdpIndex
    NTH32  "ncmh" wHeaderLength=16 wSequence dwBlockLength dwNdpIndex
    NDP16  "NCM0"/"NCM1" wLength(>=16) wNextNdpIndex                      then (wIndex, wLength)* (0, 0)
    NDP32  "ncm0"/"ncm1" wLength(>=32) wReserved6 dwNextNdpIndex dwReserved12 then (dwIndex, dwLength)* (0, 0)

Hot path (`NtbBuilder` per OUT transfer, `NtbDecoder.decode` per IN transfer): module-level `struct.Struct`
objects, preallocated tables, no per-datagram copies or lists; only transient ints/tuples. The decoder
never raises and never reads past the transfer's `length`.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from usbnetd.protocols.batch import FrameBatch, build_all

from ..core.stats import Stats

NTH16_SIGNATURE = 0x484D434E  # b"NCMH"
NTH32_SIGNATURE = 0x686D636E  # b"ncmh"
NDP16_NOCRC_SIGNATURE = 0x304D434E  # b"NCM0"
NDP16_CRC_SIGNATURE = 0x314D434E  # b"NCM1"
NDP32_NOCRC_SIGNATURE = 0x306D636E  # b"ncm0"
NDP32_CRC_SIGNATURE = 0x316D636E  # b"ncm1"

NTH16_LEN = 12
NTH32_LEN = 16
NDP16_HEADER_LEN = 8
NDP32_HEADER_LEN = 16
DPE16_LEN = 4
DPE32_LEN = 8
NDP16_MIN_LEN = NDP16_HEADER_LEN + 2 * DPE16_LEN  # 16: one datagram + the terminator
NDP32_MIN_LEN = NDP32_HEADER_LEN + 2 * DPE32_LEN  # 32
CRC_LEN = 4

NTB_PARAMETERS_LEN = 28
NTB16_MAX_SIZE = 0xFFFF  # wBlockLength is 16 bits
NTB32_MAX_SIZE = 0xFFFFFFFF

ETH_HLEN = 14
MAX_NDPS = 50  # RX: NDPs followed per NTB (Linux uses the same bound)
DEFAULT_MAX_DATAGRAMS = 40  # TX: datagrams per NTB when the device says "no limit" (Linux's cap)
MIN_ALIGNMENT = 4  # NDPs sit on 4-byte boundaries; also the fallback divisor / alignment

FORMATS_NTB16 = 0x01  # bmNtbFormatsSupported bits
FORMATS_NTB32 = 0x02

_U32 = struct.Struct("<I")
_NTB_PARAMS = struct.Struct("<HHIHHHHIHHHH")
_NTH16 = struct.Struct("<IHHHH")  # signature, header length, sequence, block length, NDP index
_NTH32 = struct.Struct("<IHHII")
_NDP16 = struct.Struct("<IHH")  # signature, length, next NDP index
_NDP32 = struct.Struct("<IHHII")  # signature, length, reserved6, next NDP index, reserved12
_DPE16 = struct.Struct("<HH")  # datagram index, datagram length
_DPE32 = struct.Struct("<II")
assert _NTB_PARAMS.size == NTB_PARAMETERS_LEN and _NDP32.size == NDP32_HEADER_LEN


def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


# ========================================================================================================
# GET_NTB_PARAMETERS
# ========================================================================================================


@dataclass(frozen=True)
class NtbParameters:
    """The 28-byte GET_NTB_PARAMETERS reply (NCM 1.0 table 6-3). "in" = device to host."""

    length: int  # wLength (28)
    formats_supported: int  # bmNtbFormatsSupported: FORMATS_NTB16 | FORMATS_NTB32
    ntb_in_max_size: int  # dwNtbInMaxSize
    ndp_in_divisor: int  # wNdpInDivisor
    ndp_in_payload_remainder: int  # wNdpInPayloadRemainder
    ndp_in_alignment: int  # wNdpInAlignment
    reserved: int
    ntb_out_max_size: int  # dwNtbOutMaxSize
    ndp_out_divisor: int  # wNdpOutDivisor
    ndp_out_payload_remainder: int  # wNdpOutPayloadRemainder
    ndp_out_alignment: int  # wNdpOutAlignment
    ntb_out_max_datagrams: int  # wNtbOutMaxDatagrams (0 = no limit)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> NtbParameters:
        """Decode the reply. Setup path: raises ValueError when fewer than 28 bytes arrived."""
        if len(data) < NTB_PARAMETERS_LEN:
            raise ValueError(f"GET_NTB_PARAMETERS reply too short: {len(data)} < {NTB_PARAMETERS_LEN}")
        return cls(*_NTB_PARAMS.unpack_from(data, 0))

    def pack(self) -> bytes:
        """The 28 wire bytes (what a device answers)."""
        return _NTB_PARAMS.pack(
            self.length,
            self.formats_supported,
            self.ntb_in_max_size,
            self.ndp_in_divisor,
            self.ndp_in_payload_remainder,
            self.ndp_in_alignment,
            self.reserved,
            self.ntb_out_max_size,
            self.ndp_out_divisor,
            self.ndp_out_payload_remainder,
            self.ndp_out_alignment,
            self.ntb_out_max_datagrams,
        )

    @property
    def supports_ntb16(self) -> bool:
        return bool(self.formats_supported & FORMATS_NTB16)

    @property
    def supports_ntb32(self) -> bool:
        return bool(self.formats_supported & FORMATS_NTB32)


# ========================================================================================================
# TX layout
# ========================================================================================================


def _ndp_size(ntb32: bool, datagrams: int) -> int:
    """Bytes of an NDP holding `datagrams` entries plus the (0, 0) terminator."""
    if ntb32:
        return NDP32_HEADER_LEN + (datagrams + 1) * DPE32_LEN
    return NDP16_HEADER_LEN + (datagrams + 1) * DPE16_LEN


def min_ntb_size(ntb32: bool, divisor: int, alignment: int) -> int:
    """Smallest NTB that can carry one 14-byte frame under any placement: NTH, worst-case datagram alignment
    padding, the frame, worst-case NDP alignment padding and an NDP with one entry."""
    nth = NTH32_LEN if ntb32 else NTH16_LEN
    return nth + (divisor - 1) + ETH_HLEN + (alignment - 1) + _ndp_size(ntb32, 1)


@dataclass(frozen=True)
class TxLayout:
    """How to lay out the NTBs one side sends.

    ntb32: NTH32/NDP32 instead of NTH16/NDP16.
    max_size: the largest NTB to build (bytes), at most 0xFFFF for NTB16.
    divisor, remainder: every datagram starts at an offset with offset % divisor == remainder.
    alignment: NDP alignment (power of two, >= 4).
    max_datagrams: datagrams per NTB (>= 1).
    maxpacket: wMaxPacketSize of the bulk endpoint the NTBs go through (for the short-packet rule).
    pad_to_max: Linux-style padding of long NTBs (longer than max_size - 3 * maxpacket) up to max_size, for
        devices that want full-size blocks; off by default (see `NtbBuilder.finish`).

    The constructor checks consistency and raises ValueError (setup path); `from_parameters` sanitises what
    a device reported first.
    """

    ntb32: bool
    max_size: int
    divisor: int = MIN_ALIGNMENT
    remainder: int = 0
    alignment: int = MIN_ALIGNMENT
    max_datagrams: int = DEFAULT_MAX_DATAGRAMS
    maxpacket: int = 512
    pad_to_max: bool = False

    def __post_init__(self) -> None:
        if not _is_pow2(self.divisor):
            raise ValueError(f"divisor {self.divisor} is not a power of two")
        if not 0 <= self.remainder < self.divisor:
            raise ValueError(f"remainder {self.remainder} not in [0, {self.divisor})")
        if not _is_pow2(self.alignment) or self.alignment < MIN_ALIGNMENT:
            raise ValueError(f"NDP alignment {self.alignment} is not a power of two >= {MIN_ALIGNMENT}")
        if self.max_datagrams < 1:
            raise ValueError("max_datagrams must be >= 1")
        if self.maxpacket < 1:
            raise ValueError("maxpacket must be >= 1")
        limit = NTB32_MAX_SIZE if self.ntb32 else NTB16_MAX_SIZE
        if self.max_size > limit:
            fmt = "NTB32" if self.ntb32 else "NTB16"
            raise ValueError(f"max_size {self.max_size} exceeds the {fmt} limit {limit}")
        need = min_ntb_size(self.ntb32, self.divisor, self.alignment)
        if self.max_size < need:
            raise ValueError(f"max_size {self.max_size} cannot hold one datagram (need >= {need})")

    @classmethod
    def from_parameters(
        cls,
        params: NtbParameters,
        ntb32: bool,
        maxpacket: int,
        max_size_cap: int | None = None,
        *,
        device_side: bool = False,
        default_max_datagrams: int = DEFAULT_MAX_DATAGRAMS,
        pad_to_max: bool = False,
    ) -> TxLayout:
        """The layout for sending NTBs to a peer that reported `params`.

        Host side (default) uses the Out fields; `device_side=True` (the simulated device sending IN NTBs)
        uses the In fields, which carry no datagram limit.

        Sanitising (Linux makes the same fall-backs, so devices with odd values keep working):
        - divisor: 0 or not a power of two -> 4; a power of two below 4 -> 4 as well (any offset that is
          `remainder` mod 4 is also `remainder` mod 1 or 2, so the device's rule still holds); a divisor not
          smaller than the NTB is meaningless -> 4. The 4-byte fallback is the NCM minimum alignment.
        - remainder: taken modulo the device's divisor when that is a power of two, else modulo 4.
        - NDP alignment: not a power of two, below 4 or not smaller than the NTB -> 4.
        - max_datagrams: 0 ("no limit") -> `default_max_datagrams` (40, as Linux); also never more than
          fit in an NDP16 of the chosen size.
        - max_size: min(device max, max_size_cap, 0xFFFF for NTB16). If that is below the device's max
          and a multiple of maxpacket, it is bumped by one byte, so that even a full NTB ends in a short
          packet and never needs a zero-length packet (Linux's cdc_ncm.c bumps tx_max the same way, only
          when it is not the device's own maximum, so the device limit is never exceeded). An NTB of
          exactly the device's dwNtbOutMaxSize needs no ZLP: the device stops at its maximum.
        Raises ValueError when the result cannot carry even one frame.
        """
        if maxpacket < 1:
            raise ValueError("maxpacket must be >= 1")
        if device_side:
            dev_max = params.ntb_in_max_size
            div = params.ndp_in_divisor
            rem = params.ndp_in_payload_remainder
            align = params.ndp_in_alignment
            max_dg = 0
        else:
            dev_max = params.ntb_out_max_size
            div = params.ndp_out_divisor
            rem = params.ndp_out_payload_remainder
            align = params.ndp_out_alignment
            max_dg = params.ntb_out_max_datagrams
        limit = NTB32_MAX_SIZE if ntb32 else NTB16_MAX_SIZE
        size = min(dev_max, limit)
        if max_size_cap is not None:
            size = min(size, max_size_cap)
        if size != dev_max and size % maxpacket == 0 and size + 1 <= min(dev_max, limit):
            size += 1

        if _is_pow2(div):
            rem %= div
            if div < MIN_ALIGNMENT:
                div = MIN_ALIGNMENT
        else:
            div = MIN_ALIGNMENT
            rem %= div
        if div >= size:
            div = MIN_ALIGNMENT
            rem %= div
        if not _is_pow2(align) or align < MIN_ALIGNMENT or align >= size:
            align = MIN_ALIGNMENT

        if max_dg <= 0:
            max_dg = default_max_datagrams
        # at most as many datagrams as could physically fit (14-byte frames, no padding)
        per = ETH_HLEN + (DPE32_LEN if ntb32 else DPE16_LEN)
        max_dg = max(1, min(max_dg, size // per))
        return cls(
            ntb32=ntb32,
            max_size=size,
            divisor=div,
            remainder=rem,
            alignment=align,
            max_datagrams=max_dg,
            maxpacket=maxpacket,
            pad_to_max=pad_to_max,
        )


# ========================================================================================================
# Builder
# ========================================================================================================


class NtbBuilder(FrameBatch):
    """Builds one NTB at a time in place, in a caller-provided writable buffer.

    Layout produced: NTH at offset 0, the datagrams in order (each at offset % divisor == remainder), then
    one NDP (aligned to `alignment`, signature NCM0/ncm0, no CRC), then optionally padding.

        b.begin(view)
        while True:
            off, room = b.next_slot()          # room == 0: full
            n = read_frame_into(view[off:off + room])
            b.commit(n)
        n_bytes = b.finish()                   # send view[:n_bytes]

    `room` already reserves space for the NDP including one more entry and the terminator, so any datagram
    of length <= room fits. The datagram table is preallocated once; nothing grows per datagram.
    The NTH sequence number increments per finished NTB (16 bits, wrapping).
    """

    __slots__ = (
        "layout",
        "_view",
        "_limit",
        "_table",
        "_count",
        "_pos",
        "_slot",
        "_room",
        "_seq",
        "_zeros",
        "_nth_len",
        "_ndp_fixed",
        "_dpe_len",
        "_amask",
        "_open",
    )

    def __init__(self, layout: TxLayout, sequence: int = 0) -> None:
        self.layout = layout
        self._view: memoryview | bytearray | None = None
        self._limit = layout.max_size
        self._table = array("I", [0]) * (2 * layout.max_datagrams)  # (offset, length) pairs
        self._count = 0
        self._nth_len = NTH32_LEN if layout.ntb32 else NTH16_LEN
        self._pos = self._nth_len
        self._slot = -1
        self._room = 0
        self._seq = sequence & 0xFFFF
        pad_max = 3 * layout.maxpacket if layout.pad_to_max else 0
        self._zeros = memoryview(bytes(max(layout.divisor, layout.alignment, pad_max, 1)))
        # NDP bytes for `count` datagrams already committed plus one more plus the terminator:
        #   _ndp_fixed + count * _dpe_len
        self._dpe_len = DPE32_LEN if layout.ntb32 else DPE16_LEN
        self._ndp_fixed = _ndp_size(layout.ntb32, 1)
        self._amask = -layout.alignment  # x & _amask rounds down to the NDP alignment
        self._open = False

    @property
    def sequence(self) -> int:
        """wSequence the next finished NTB will carry."""
        return self._seq

    def begin(self, view: memoryview | bytearray) -> None:
        """Start a new NTB in `view` (reserves the NTH). The NTB never grows past
        min(layout.max_size, len(view)); the view should be at least layout.max_size long."""
        self._view = view
        limit = self.layout.max_size
        n = len(view)
        if n < limit:
            limit = n
        self._limit = limit
        self._count = 0
        self._pos = self._nth_len
        self._slot = -1
        self._room = 0
        self._open = True

    def next_slot(self) -> tuple[int, int]:
        """(offset, room) for the next datagram; room 0 means the NTB is full (or not begun)."""
        pos = self._pos
        layout = self.layout
        off = pos + ((layout.remainder - pos) % layout.divisor)
        count = self._count
        if not self._open or count >= layout.max_datagrams:
            self._slot = -1
            return off, 0
        # the NDP must fit after the datagram's aligned end: end <= round_down(limit - ndp, alignment)
        room = ((self._limit - self._ndp_fixed - count * self._dpe_len) & self._amask) - off
        if room <= 0:
            self._slot = -1
            return off, 0
        self._slot = off
        self._room = room
        return off, room

    def commit(self, length: int) -> None:
        """Record a datagram of `length` bytes written at the offset the last `next_slot` returned.

        Raises ValueError for a caller error (no slot, length < 1 or larger than the room)."""
        slot = self._slot
        if slot < 0 or length < 1 or length > self._room:
            raise ValueError(f"commit({length}) without a slot with room for it")
        pos = self._pos
        if slot > pos:  # zero the alignment gap: no stale bytes from a previous NTB go out
            self._view[pos:slot] = self._zeros[: slot - pos]  # type: ignore[index]
        i = self._count << 1
        table = self._table
        table[i] = slot
        table[i + 1] = length
        self._count += 1
        self._pos = slot + length
        self._slot = -1

    def finish(self) -> int:
        """Write the NDP and the NTH; return the number of bytes to send (0 if no datagram was committed).

        End-of-NTB rule (so the bulk OUT transfer never needs a zero-length packet): if the NTB length is an
        exact multiple of maxpacket and below max_size, one zero byte is appended (counted in the block
        length). With `pad_to_max`, NTBs longer than max_size - 3 * maxpacket are instead zero-padded to
        max_size, as Linux does. We do not pad by default: it costs up to 3 packets per NTB for nothing on
        spec-following devices. A full max_size NTB needs no ZLP: either max_size was bumped off a packet
        multiple by `TxLayout.from_parameters`, or it is the device's own maximum and the device stops
        there. The only case left that ends on a packet boundary is a view shorter than max_size.
        """
        if not self._open:
            return 0
        self._open = False
        self._slot = -1
        count = self._count
        if count == 0:
            return 0
        view = self._view
        assert view is not None
        layout = self.layout
        pos = self._pos
        ndp = (pos + layout.alignment - 1) & self._amask
        if ndp > pos:
            view[pos:ndp] = self._zeros[: ndp - pos]
        table = self._table
        if layout.ntb32:
            ndp_len = NDP32_HEADER_LEN + (count + 1) * DPE32_LEN
            _NDP32.pack_into(view, ndp, NDP32_NOCRC_SIGNATURE, ndp_len, 0, 0, 0)
            p = ndp + NDP32_HEADER_LEN
            dpe = _DPE32
        else:
            ndp_len = NDP16_HEADER_LEN + (count + 1) * DPE16_LEN
            _NDP16.pack_into(view, ndp, NDP16_NOCRC_SIGNATURE, ndp_len, 0)
            p = ndp + NDP16_HEADER_LEN
            dpe = _DPE16
        step = self._dpe_len
        i = 0
        end = count << 1
        while i < end:
            dpe.pack_into(view, p, table[i], table[i + 1])
            p += step
            i += 2
        dpe.pack_into(view, p, 0, 0)
        total = p + step

        mp = layout.maxpacket
        limit = self._limit
        if layout.pad_to_max and total > layout.max_size - 3 * mp and limit == layout.max_size:
            if total < limit:
                view[total:limit] = self._zeros[: limit - total]
                total = limit
        elif total % mp == 0 and total < limit:
            view[total] = 0
            total += 1

        seq = self._seq
        if layout.ntb32:
            _NTH32.pack_into(view, 0, NTH32_SIGNATURE, NTH32_LEN, seq, total, ndp)
        else:
            _NTH16.pack_into(view, 0, NTH16_SIGNATURE, NTH16_LEN, seq, total, ndp)
        self._seq = (seq + 1) & 0xFFFF
        return total


def build_ntb(layout: TxLayout, frames: list[bytes], sequence: int = 0) -> bytes:
    """Build one NTB holding `frames` (tests, the simulated device). Raises ValueError if they do not all
    fit; an empty list gives b""."""
    return build_all(NtbBuilder(layout, sequence), layout.max_size, frames, "the NTB")


# ========================================================================================================
# Decoder
# ========================================================================================================


class NtbDecoder:
    """Splits received NTBs into datagrams.

    `decode(view, length, emit)` calls `emit(offset, length)` for each good datagram (offsets relative to
    `view`, always 0 <= offset and offset + length <= the transfer length) and returns how many it emitted.
    It counts only errors (rx_packets/rx_bytes are the caller's, once the frame is really delivered):

    whole-NTB problems, counted once (rx_errors + rx_frame_errors) and nothing is emitted:
      transfer shorter than the NTH, unknown NTH signature, wrong wHeaderLength, block length larger than
      the transfer (or nonzero and smaller than the NTH);
    NDP chain problems, counted once (rx_errors + rx_frame_errors), the walk stops, datagrams already
    emitted from earlier NDPs stand:
      NDP index inside the NTH, not a multiple of 4 or past the block end; unknown NDP signature; NDP
      wLength below 16 (NDP16) / 32 (NDP32) or running past the block end; an NDP visited twice (loop);
      more than 50 NDPs;
    per-datagram problems, the datagram is skipped and the NDP walk goes on:
      index inside the NTH or at/after the block end (rx_errors + rx_frame_errors);
      index + length past the block end, or a length below 14 or above max_datagram
      (rx_errors + rx_length_errors).

    Decisions:
    - wBlockLength/dwBlockLength 0 means "the block is the whole transfer" (NCM allows 0 in NTH16 for a
      block ended by a short packet; we are equally lenient for NTH32). Bytes after the block are ignored.
    - NDP order is free (the spec allows NDPs anywhere after the NTH); loops are caught by remembering the
      visited NDP offsets in a preallocated table, so no datagram is emitted twice.
    - An entry with a zero index or zero length ends the NDP (the (0, 0) terminator; half-zero entries are
      treated like it, as Linux does). An NDP without datagrams is not an error.
    - CRC NDPs (NCM1/ncm1): the 4-byte CRC appended to each datagram is stripped, not verified (the host
      never enables CRC mode; accepting keeps a device that insists working).
    - The sequence number is ignored.
    """

    __slots__ = ("stats", "max_datagram", "_visited")

    def __init__(self, stats: Stats, max_datagram: int = 16384) -> None:
        self.stats = stats
        self.max_datagram = max_datagram
        self._visited = array("I", [0]) * MAX_NDPS

    def _frame_error(self) -> None:
        stats = self.stats
        stats.rx_errors += 1
        stats.rx_frame_errors += 1

    def decode(
        self,
        view: memoryview | bytes | bytearray,
        length: int,
        emit: Callable[[int, int], object],
    ) -> int:
        n = len(view)
        if length > n:
            length = n
        if length < NTH16_LEN:
            self._frame_error()
            return 0
        sig = _U32.unpack_from(view, 0)[0]
        if sig == NTH16_SIGNATURE:
            _, hlen, _seq, block, ndp = _NTH16.unpack_from(view, 0)
            if hlen != NTH16_LEN:
                self._frame_error()
                return 0
            ntb32 = False
            ndp_hdr = _NDP16
            ndp_hdr_len = NDP16_HEADER_LEN
            ndp_min = NDP16_MIN_LEN
            dpe = _DPE16
            dpe_len = DPE16_LEN
            sig_plain = NDP16_NOCRC_SIGNATURE
            sig_crc = NDP16_CRC_SIGNATURE
        elif sig == NTH32_SIGNATURE:
            if length < NTH32_LEN:
                self._frame_error()
                return 0
            _, hlen, _seq, block, ndp = _NTH32.unpack_from(view, 0)
            if hlen != NTH32_LEN:
                self._frame_error()
                return 0
            ntb32 = True
            ndp_hdr = _NDP32
            ndp_hdr_len = NDP32_HEADER_LEN
            ndp_min = NDP32_MIN_LEN
            dpe = _DPE32
            dpe_len = DPE32_LEN
            sig_plain = NDP32_NOCRC_SIGNATURE
            sig_crc = NDP32_CRC_SIGNATURE
        else:
            self._frame_error()
            return 0

        if block == 0:
            end = length
        elif block > length or block < hlen:
            self._frame_error()
            return 0
        else:
            end = block

        stats = self.stats
        max_dg = self.max_datagram
        visited = self._visited
        nvisited = 0
        emitted = 0
        while True:
            if ndp < hlen or ndp & 3 or ndp + ndp_min > end:
                self._frame_error()
                break
            i = 0
            while i < nvisited:
                if visited[i] == ndp:
                    break
                i += 1
            if i < nvisited or nvisited >= MAX_NDPS:  # loop, or too many NDPs
                self._frame_error()
                break
            visited[nvisited] = ndp
            nvisited += 1

            if ntb32:
                nsig, nlen, _r6, nxt, _r12 = ndp_hdr.unpack_from(view, ndp)
            else:
                nsig, nlen, nxt = ndp_hdr.unpack_from(view, ndp)
            if nsig == sig_plain:
                crc = 0
            elif nsig == sig_crc:
                crc = CRC_LEN
            else:
                self._frame_error()
                break
            ndp_end = ndp + nlen
            if nlen < ndp_min or ndp_end > end:
                self._frame_error()
                break

            p = ndp + ndp_hdr_len
            while p + dpe_len <= ndp_end:
                off, dlen = dpe.unpack_from(view, p)
                p += dpe_len
                if off == 0 or dlen == 0:
                    break
                if off < hlen or off >= end:
                    stats.rx_errors += 1
                    stats.rx_frame_errors += 1
                    continue
                if off + dlen > end:
                    stats.rx_errors += 1
                    stats.rx_length_errors += 1
                    continue
                dlen -= crc
                if dlen < ETH_HLEN or dlen > max_dg:
                    stats.rx_errors += 1
                    stats.rx_length_errors += 1
                    continue
                emit(off, dlen)
                emitted += 1

            if nxt == 0:
                break
            ndp = nxt
        return emitted
