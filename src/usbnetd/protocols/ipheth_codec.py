"""Apple iPhone tethering bulk framing (the legacy mode): the RX decoder and the TX padding.

Layouts as Linux's ipheth driver (drivers/net/usb/ipheth.c, v6.1 and later) uses them with the phone: facts
only, the code is ours (Apple documents none of it).

RX, one bulk IN transfer of `length` bytes: 2 bytes of padding (the kernel's IPHETH_IP_ALIGN, so that the IP
header behind the 14-byte Ethernet header is 4-byte aligned), then one Ethernet frame::

    [2 bytes][frame: length - 2 bytes]

Later kernels name two transfers that carry no frame, and drop them: a zero-length transfer (the phone sends
them now and then) and the 4-byte control frame that starts 00 01 (usually the very first transfer; its
purpose is not documented). `RxDecoder` ignores both, without an error (`control` counts the second). What is
wrong is counted, never raised, and nothing at or past `length` is read: a transfer of 1-2 bytes, or one whose
frame is shorter than an Ethernet header or longer than `max_frame`: `rx_length_errors` and `rx_errors`.

The NCM mode of newer iOS (ENABLE_NCM, see `ipheth.py`) sends NTB16s instead, which `ncm_codec.NtbDecoder`
walks; TX stays as below in both modes.

TX, one frame per bulk OUT transfer. The 6.1 kernel sends every frame in a fixed buffer of 1514 bytes (the
largest frame), zero-padded behind the frame (`TX_BUFFER`); later kernels send the frame's own length. The
phone finds the frame's end by its IP length. Since 1514 is no multiple of any bulk wMaxPacketSize, a
transfer never needs a ZLP.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.stats import Stats

ETH_HLEN = 14
IP_ALIGN = 2
TX_BUFFER = 1514
CONTROL_LEN = 4
_ZEROS = bytes(TX_BUFFER)


class RxDecoder:
    """One frame per transfer behind 2 bytes of padding (module docstring for the rules)."""

    __slots__ = ("stats", "max_frame", "control")

    def __init__(self, stats: Stats, max_frame: int = 1514) -> None:
        self.stats = stats
        self.max_frame = max_frame
        self.control = 0  # 00 01 control frames seen (and dropped)

    def decode(self, view: memoryview, length: int, emit: Callable[[int, int], object]) -> int:
        """Hand the transfer's frame to emit(offset, length); return 1, or 0 when there is none."""
        if length > len(view):
            length = len(view)  # the buffer bounds the transfer (the transport never says more)
        if length == 0:
            return 0  # the phone's empty transfers: nothing, and nothing wrong
        if length == CONTROL_LEN and view[0] == 0 and view[1] == 1:
            self.control += 1
            return 0
        size = length - IP_ALIGN
        if size < ETH_HLEN or size > self.max_frame:
            self.stats.rx_length_errors += 1
            self.stats.rx_errors += 1
            return 0
        emit(IP_ALIGN, size)
        return 1


def pad_tx(view: memoryview | bytearray, length: int) -> int:
    """Zero the buffer behind a `length`-byte frame up to TX_BUFFER; the transfer's length (TX_BUFFER, or the
    frame's own if it is longer: the caller never sends one, the TAP port drops frames above max_frame)."""
    if length >= TX_BUFFER:
        return length
    view[length:TX_BUFFER] = _ZEROS[: TX_BUFFER - length]
    return TX_BUFFER


def build_rx(frame: bytes) -> bytes:
    """One bulk IN transfer carrying `frame`, as the phone sends it (tests, fuzz seeds)."""
    return bytes(IP_ALIGN) + frame
