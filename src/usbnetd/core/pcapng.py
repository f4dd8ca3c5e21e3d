"""pcapng blocks and Linux usbmon headers: the bytes `usbnetd trace` writes, and a reader for them.

Owns the file format and nothing else (no sockets, no state): every function returns one whole block.

pcapng is draft-ietf-opsawg-pcapng ("PCAP Now Generic (pcapng) Capture File Format"):
- every block is type (u32), total length (u32), body, total length again; the body and every option value
  are padded with zeros to a multiple of 4 bytes (§3.1, §3.5);
- options are code (u16), length (u16, unpadded), value; the list ends with opt_endofopt (0, 0) (§3.5);
- Section Header Block 0x0A0D0D0A with the byte-order magic 0x1A2B3C4D, version 1.0, section length -1
  ("not given", as a stream cannot know it) (§4.1);
- Interface Description Block 1: LinkType, reserved, SnapLen; options if_name (2), if_description (3),
  if_tsresol (9) (§4.2);
- Enhanced Packet Block 6: interface ID, 64-bit timestamp in if_tsresol units split high/low, captured and
  original length, data; option epb_flags (2): bits 0-1 the direction, 01 inbound, 10 outbound (§4.3);
- Interface Statistics Block 5: interface ID, timestamp; options isb_starttime (2), isb_endtime (3),
  isb_ifrecv (4), isb_ifdrop (5) and opt_comment (1) (§4.6).
Everything is written little-endian; the SHB's byte-order magic tells readers so.

The link types are tcpdump's (https://www.tcpdump.org/linktypes.html): LINKTYPE_ETHERNET (1) and
LINKTYPE_USB_LINUX_MMAPPED (220), whose packets begin with the 64-byte header of the Linux usbmon binary
interface (Linux Documentation/usb/usbmon.rst, "struct usbmon_packet"), in the byte order of the host that
wrote the file (here: little-endian, as the SHB says), followed by the data captured:

    0  u64 id          URB id, the same for a submission and its completion
    8  u8  type        'S' submission, 'C' completion (callback), 'E' submission error
    9  u8  xfer_type   0 isochronous, 1 interrupt, 2 control, 3 bulk
    10 u8  epnum       endpoint number, with 0x80 for IN
    11 u8  devnum      device address
    12 u16 busnum
    14 s8  flag_setup  0: the setup packet below is valid (control submissions); else '-'
    15 s8  flag_data   0: data follows; else '<' (an IN submission, none yet) or '>' (none captured)
    16 s64 ts_sec
    24 s32 ts_usec
    28 s32 status      a Linux errno, negative; -EINPROGRESS (-115) on submissions
    32 u32 length      urb length: submitted (S) or actual (C)
    36 u32 len_cap     bytes of data that follow
    40 u8[8] setup     the control setup packet (bmRequestType, bRequest, wValue, wIndex, wLength)
    48 s32 interval    interrupt polling interval
    52 s32 start_frame
    56 u32 xfer_flags  URB transfer flags
    60 u32 ndesc
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
ISB_TYPE = 0x00000005
EPB_TYPE = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_HARDWARE, SHB_OS, SHB_USERAPPL = 2, 3, 4
IF_NAME, IF_DESCRIPTION, IF_TSRESOL = 2, 3, 9
EPB_FLAGS = 2
ISB_STARTTIME, ISB_ENDTIME, ISB_IFRECV, ISB_IFDROP = 2, 3, 4, 5

EPB_INBOUND = 0b01  # epb_flags bits 0-1: the packet's direction
EPB_OUTBOUND = 0b10

LINKTYPE_ETHERNET = 1
LINKTYPE_USB_LINUX_MMAPPED = 220

TSRESOL_USEC = 6  # if_tsresol 6: 10^-6 s, the format's default, written anyway so that no reader guesses

# usbmon (Linux Documentation/usb/usbmon.rst)
USBMON_HEADER = struct.Struct("<QBBBBHbbqiiII8siiII")
USBMON_LEN = USBMON_HEADER.size  # 64
URB_SUBMIT, URB_COMPLETE, URB_ERROR = ord("S"), ord("C"), ord("E")
XFER_ISO, XFER_INTERRUPT, XFER_CONTROL, XFER_BULK = 0, 1, 2, 3
NO_SETUP = ord("-")
NO_DATA_IN = ord("<")  # an IN submission: nothing to carry yet
NO_DATA_OUT = ord(">")  # data not captured
EINPROGRESS = -115
NO_SETUP_BYTES = bytes(8)

_U32 = struct.Struct("<I")
_BLOCK_HEAD = struct.Struct("<II")
_EPB_HEAD = struct.Struct("<IIIIIII")  # type, total, interface, ts high, ts low, captured, original
# epb_flags (4-byte value) and opt_endofopt, preceded by nothing else: the EPB's whole options part
_EPB_OPTS = {d: struct.pack("<HHIHH", EPB_FLAGS, 4, d, OPT_ENDOFOPT, 0) for d in (0, EPB_INBOUND, EPB_OUTBOUND)}
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by length % 4


def pad4(n: int) -> int:
    """`n` rounded up to a multiple of 4."""
    return (n + 3) & ~3


def option(code: int, value: bytes) -> bytes:
    """One option: code, unpadded length, value padded to 4 bytes."""
    return struct.pack("<HH", code, len(value)) + value + _PAD[len(value) & 3]


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    return b"".join(option(c, v) for c, v in opts) + struct.pack("<HH", OPT_ENDOFOPT, 0)


def _block(block_type: int, body: bytes) -> bytes:
    body += _PAD[len(body) & 3]
    total = 12 + len(body)
    return _BLOCK_HEAD.pack(block_type, total) + body + _U32.pack(total)


def section_header(application: str | None = None, os_name: str | None = None,
                   comment: str | None = None) -> bytes:
    """The Section Header Block that starts a file (or stream)."""
    opts = []
    if comment:
        opts.append((OPT_COMMENT, comment.encode()))
    if os_name:
        opts.append((SHB_OS, os_name.encode()))
    if application:
        opts.append((SHB_USERAPPL, application.encode()))
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _options(opts)
    return _block(SHB_TYPE, body)


def interface_description(linktype: int, snaplen: int, name: str | None = None,
                          description: str | None = None, tsresol: int = TSRESOL_USEC) -> bytes:
    """An Interface Description Block; interfaces are numbered 0, 1, ... in the order these are written."""
    opts = []
    if name:
        opts.append((IF_NAME, name.encode()))
    if description:
        opts.append((IF_DESCRIPTION, description.encode()))
    opts.append((IF_TSRESOL, bytes([tsresol])))
    return _block(IDB_TYPE, struct.pack("<HHI", linktype, 0, snaplen) + _options(opts))


def enhanced_packet(interface: int, timestamp: int, data: bytes | memoryview, original_length: int,
                    direction: int = 0) -> bytes:
    """An Enhanced Packet Block: `data` is what was captured (already cut to the snap length), `timestamp` in
    the interface's if_tsresol units, `direction` EPB_INBOUND, EPB_OUTBOUND or 0 (not known)."""
    n = len(data)
    total = 28 + pad4(n) + 12 + 4
    return b"".join((_EPB_HEAD.pack(EPB_TYPE, total, interface, timestamp >> 32, timestamp & 0xFFFFFFFF, n,
                                    original_length),
                     data, _PAD[n & 3], _EPB_OPTS[direction], _U32.pack(total)))


def interface_statistics(interface: int, timestamp: int, start: int | None = None, end: int | None = None,
                         received: int | None = None, dropped: int | None = None,
                         comment: str | None = None) -> bytes:
    """An Interface Statistics Block: what was captured on `interface`, and how much was dropped."""

    def ts(t: int) -> bytes:
        return struct.pack("<II", t >> 32, t & 0xFFFFFFFF)

    opts = []
    if comment:
        opts.append((OPT_COMMENT, comment.encode()))
    if start is not None:
        opts.append((ISB_STARTTIME, ts(start)))
    if end is not None:
        opts.append((ISB_ENDTIME, ts(end)))
    if received is not None:
        opts.append((ISB_IFRECV, struct.pack("<Q", received)))
    if dropped is not None:
        opts.append((ISB_IFDROP, struct.pack("<Q", dropped)))
    return _block(ISB_TYPE, struct.pack("<III", interface, timestamp >> 32, timestamp & 0xFFFFFFFF) + _options(opts))


def usbmon_header(urb_id: int, kind: int, xfer_type: int, endpoint: int, devnum: int, busnum: int,
                  timestamp_us: int, status: int, length: int, captured: int, setup: bytes | None = None,
                  interval: int = 0, no_data: int = 0) -> bytes:
    """The 64-byte usbmon header of one URB event; `captured` bytes of data follow it in the packet.

    `no_data` is flag_data when no data follows ('<' or '>'); 0 means data follows (even 0 bytes of it)."""
    return USBMON_HEADER.pack(urb_id & 0xFFFFFFFFFFFFFFFF, kind, xfer_type, endpoint, devnum, busnum,
                              0 if setup is not None else NO_SETUP, no_data,
                              timestamp_us // 1_000_000, timestamp_us % 1_000_000, status, length, captured,
                              setup if setup is not None else NO_SETUP_BYTES, interval, 0, 0, 0)


# ------------------------------------------------------------------------------------------- reading
@dataclass
class Block:
    type: int
    body: bytes  # between the first length field and the trailing one, padding included

    def options(self, offset: int) -> dict[int, list[bytes]]:
        """The options starting at `offset` into the body: code -> values (unpadded)."""
        out: dict[int, list[bytes]] = {}
        body = self.body
        while offset + 4 <= len(body):
            code, length = struct.unpack_from("<HH", body, offset)
            if code == OPT_ENDOFOPT:
                break
            out.setdefault(code, []).append(body[offset + 4 : offset + 4 + length])
            offset += 4 + pad4(length)
        return out


class FormatError(ValueError):
    pass


def split_blocks(buf: bytes | bytearray | memoryview) -> tuple[list[Block], int]:
    """The whole blocks at the start of `buf` and how many bytes they take (a partial block stays behind).

    Little-endian only (what `usbnetd trace` writes); FormatError for anything that is not a block."""
    blocks = []
    pos = 0
    n = len(buf)
    while n - pos >= 12:
        btype, total = _BLOCK_HEAD.unpack_from(buf, pos)
        if total < 12 or total % 4:
            raise FormatError(f"block at {pos}: bad total length {total}")
        if n - pos < total:
            break
        trailer = _U32.unpack_from(buf, pos + total - 4)[0]
        if trailer != total:
            raise FormatError(f"block at {pos}: trailing length {trailer} != {total}")
        blocks.append(Block(btype, bytes(buf[pos + 8 : pos + total - 4])))
        pos += total
    return blocks, pos


def read_blocks(data: bytes) -> Iterator[Block]:
    blocks, used = split_blocks(data)
    if used != len(data):
        raise FormatError(f"{len(data) - used} bytes after the last whole block")
    yield from blocks


@dataclass
class Packet:
    interface: int
    timestamp: int
    data: bytes
    original_length: int
    flags: int = 0


@dataclass
class Capture:
    """A parsed pcapng section: its interfaces (linktype, snaplen, options), packets and statistics."""

    interfaces: list[dict] = field(default_factory=list)
    packets: list[Packet] = field(default_factory=list)
    statistics: list[dict] = field(default_factory=list)


def parse(data: bytes) -> Capture:
    """Parse what `usbnetd trace` writes: one section, IDBs, EPBs, ISBs (FormatError when it is not that)."""
    cap = Capture()
    blocks = list(read_blocks(data))
    if not blocks or blocks[0].type != SHB_TYPE:
        raise FormatError("does not start with a Section Header Block")
    magic = _U32.unpack_from(blocks[0].body, 0)[0]
    if magic != BYTE_ORDER_MAGIC:
        raise FormatError(f"byte-order magic 0x{magic:08x}")
    for b in blocks[1:]:
        if b.type == IDB_TYPE:
            linktype, _, snaplen = struct.unpack_from("<HHI", b.body, 0)
            cap.interfaces.append({"linktype": linktype, "snaplen": snaplen, "options": b.options(8)})
        elif b.type == EPB_TYPE:
            iface, hi, lo, caplen, orig = struct.unpack_from("<IIIII", b.body, 0)
            if iface >= len(cap.interfaces):
                raise FormatError(f"packet on interface {iface}, which is not described")
            opts = b.options(20 + pad4(caplen))
            flags = _U32.unpack(opts[EPB_FLAGS][0])[0] if EPB_FLAGS in opts else 0
            cap.packets.append(Packet(iface, (hi << 32) | lo, b.body[20 : 20 + caplen], orig, flags))
        elif b.type == ISB_TYPE:
            iface, hi, lo = struct.unpack_from("<III", b.body, 0)
            opts = b.options(12)
            st: dict = {"interface": iface, "timestamp": (hi << 32) | lo}
            for code, name in ((ISB_IFRECV, "received"), (ISB_IFDROP, "dropped")):
                if code in opts:
                    st[name] = struct.unpack("<Q", opts[code][0])[0]
            if OPT_COMMENT in opts:
                st["comment"] = opts[OPT_COMMENT][0].decode(errors="replace")
            cap.statistics.append(st)
        elif b.type == SHB_TYPE:
            raise FormatError("a second section")
    return cap
