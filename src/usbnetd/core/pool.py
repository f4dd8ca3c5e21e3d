"""The packet buffer pool: every byte the data path touches, allocated once when a device starts.

Shaped after NetworkingDriverKit's IOUserNetworkPacketBufferPool and ixy's mempool: one contiguous
bytearray cut into equal slots, one preallocated `Packet` per slot, and a free stack. `allocate` is O(1) and
returns None when the pool is empty — the caller counts a drop; the pool never blocks and never grows.
Every packet is in exactly one place at a time: this free stack, one ring queue, or one in-flight transfer.
"""

from __future__ import annotations

from collections.abc import Iterable

RX = 0
TX = 1


class Packet:
    """One buffer slot. `view` is the whole slot; the payload is `view[offset:offset + length]`."""

    __slots__ = ("index", "view", "capacity", "headroom", "offset", "length", "direction", "free")

    def __init__(self, index: int, view: memoryview, headroom: int) -> None:
        self.index = index
        self.view = view
        self.capacity = len(view)
        self.headroom = headroom
        self.offset = headroom
        self.length = 0
        self.direction = RX
        self.free = True

    def __repr__(self) -> str:  # debugging aid only
        state = "free" if self.free else ("rx" if self.direction == RX else "tx")
        return f"<Packet {self.index} {state} off={self.offset} len={self.length}>"


class PacketBufferPool:
    """A fixed number of fixed-size packet buffers carved from one preallocated buffer."""

    def __init__(self, packet_count: int, buffer_size: int, headroom: int = 0,
                 chunks: list[memoryview] | None = None) -> None:
        """`chunks`: the memory to carve, given by the transport (usb/engine.py: usbfs memory bulk transfers
        use without a copy), each a whole number of buffers; None: one bytearray of our own."""
        if packet_count <= 0:
            raise ValueError("packet_count must be positive")
        if buffer_size <= headroom:
            raise ValueError("buffer_size must exceed headroom")
        if chunks is None:
            self._memory: bytearray | None = bytearray(packet_count * buffer_size)
            chunks = [memoryview(self._memory)]
        else:
            self._memory = None
            if any(len(c) % buffer_size or not len(c) for c in chunks):
                raise ValueError("every chunk must hold a whole number of buffers")
            if sum(len(c) for c in chunks) // buffer_size < packet_count:
                raise ValueError("the chunks hold fewer buffers than packet_count")
        self.shared = self._memory is None  # the transport's memory (transfers use it without a copy)
        views = (c[k : k + buffer_size] for c in chunks for k in range(0, len(c), buffer_size))
        self._packets = [Packet(i, next(views), headroom) for i in range(packet_count)]
        # The free stack is a list used only with append/pop, so once it has held every packet it never
        # reallocates: steady-state allocate/deallocate creates no Python objects.
        self._free: list[Packet] = list(reversed(self._packets))
        self.buffer_size = buffer_size
        self.headroom = headroom

    @property
    def packet_count(self) -> int:
        return len(self._packets)

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> int:
        return len(self._packets) - len(self._free)

    def allocate(self, direction: int = RX) -> Packet | None:
        free = self._free
        if not free:
            return None
        packet = free.pop()
        packet.free = False
        packet.direction = direction
        packet.offset = packet.headroom
        packet.length = 0
        return packet

    def deallocate(self, packet: Packet) -> None:
        if packet.free:
            # A double free would put one slot in two places at once: a bug in usbnetd, never device input.
            raise ValueError(f"packet {packet.index} is already free")
        if self._packets[packet.index] is not packet:
            raise ValueError("packet does not belong to this pool")
        packet.free = True
        self._free.append(packet)

    def deallocate_batch(self, packets: Iterable[Packet]) -> int:
        n = 0
        for packet in packets:
            self.deallocate(packet)
            n += 1
        return n
