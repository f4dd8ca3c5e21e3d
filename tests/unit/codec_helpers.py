"""Helpers the decoder tests share (NCM, RNDIS, EEM): a bounds-checking emit callback and byte fixtures."""

from __future__ import annotations

from usbnetd.core.stats import Stats


class Collector:
    """emit / on_command callbacks that check every span against the transfer length."""

    def __init__(self, view: bytes | bytearray | memoryview, length: int) -> None:
        self.view = view
        self.length = length
        self.spans: list[tuple[int, int]] = []
        self.commands: list[tuple[int, int, bytes]] = []

    def __call__(self, off: int, n: int) -> None:
        assert 0 <= off and n >= 0 and off + n <= self.length
        self.spans.append((off, n))

    def command(self, cmd: int, param: int, off: int, n: int) -> None:
        assert 0 <= off and n >= 0 and off + n <= self.length
        assert 0 <= cmd <= 7 and 0 <= param <= 0x7FF
        self.commands.append((cmd, param, bytes(self.view[off : off + n])))

    def frames(self) -> list[bytes]:
        return [bytes(self.view[o : o + n]) for o, n in self.spans]


class ListSink:
    """A driver's RxSink (the TAP port's two entry points) that keeps copies of the frames, in order."""

    def __init__(self, view: bytes | bytearray | memoryview | None = None) -> None:
        self.view = view  # the transfer rx_decode is given; emit's offsets are into it
        self.frames: list[bytes] = []
        self.delivered = 0  # frames that came through deliver() (from a buffer of the driver's own)

    def emit(self, off: int, n: int) -> None:
        self.frames.append(bytes(self.view[off : off + n]))

    def deliver(self, view: memoryview, off: int, n: int) -> None:
        self.delivered += 1
        self.frames.append(bytes(view[off : off + n]))


def frame(n: int, tag: int) -> bytes:
    """An Ethernet-looking frame of n bytes whose content identifies it."""
    return bytes((tag + i) & 0xFF for i in range(n))


def errors(stats: Stats) -> tuple[int, int, int]:
    return stats.rx_errors, stats.rx_frame_errors, stats.rx_length_errors


def h(s: str) -> bytes:
    return bytes.fromhex(s)
