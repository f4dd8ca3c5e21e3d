"""What the three in-place TX batch builders share (NCM's NtbBuilder, RNDIS's RndisBatch, EEM's EemBatch).

Each builder frames one transfer in a caller's buffer with the same four calls — begin(view),
next_slot() -> (offset, room), commit(length), finish() -> bytes to send — so the drivers map the service's
tx_begin/tx_slot/tx_commit/tx_finish straight onto them. Copying a ready frame in (`add`) and building a
whole transfer from a list of frames (tests, the simulated device) are written once, here.
"""

from __future__ import annotations


class FrameBatch:
    """Mixin: needs `next_slot`, `commit`, `begin`, `finish` and `_view`, `_count` slots from the builder."""

    __slots__ = ()

    @property
    def count(self) -> int:
        """Frames committed to the transfer being built."""
        return self._count  # type: ignore[attr-defined]

    def add(self, frame: bytes | bytearray | memoryview) -> bool:
        """Copy `frame` into the next slot and commit it; False (nothing written) when it does not fit."""
        off, room = self.next_slot()  # type: ignore[attr-defined]
        n = len(frame)
        if n < 1 or n > room:
            return False
        self._view[off : off + n] = frame  # type: ignore[attr-defined]
        self.commit(n)  # type: ignore[attr-defined]
        return True


def build_all(builder: FrameBatch, size: int, frames: list[bytes], what: str = "the transfer") -> bytes:
    """One transfer of `size` bytes at most holding every frame in order; ValueError if they do not all fit."""
    buf = bytearray(size)
    builder.begin(memoryview(buf))  # type: ignore[attr-defined]
    for i, frame in enumerate(frames):
        if not builder.add(frame):
            raise ValueError(f"frame {i} ({len(frame)} bytes) does not fit in {what}")
    n = builder.finish()  # type: ignore[attr-defined]
    return bytes(buf[:n])
