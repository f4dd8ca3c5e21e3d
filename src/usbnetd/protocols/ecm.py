"""CDC-ECM: one Ethernet frame per bulk transfer, no framing header (CDC ECM 1.2).

Control 02/06/00 paired through the Union descriptor with a data interface whose alt 1 has the bulk pair.
A frame that is an exact multiple of wMaxPacketSize must end with a zero-length packet, or the device keeps
waiting for the rest of the transfer; libusb's ADD_ZERO_PACKET does that without a padding byte.
"""

from __future__ import annotations

from ..descriptors import Configuration
from ..pool import Packet
from . import cdc
from .base import Binding, Emit, ProtocolDriver, match_cdc

ETH_HLEN = 14


class EcmDriver(ProtocolDriver):
    name = "ecm"

    @classmethod
    def match(cls, config: Configuration) -> Binding | None:
        return match_cdc(config, cdc.SUBCLASS_ECM)

    def bind(self) -> None:
        super().bind()
        eth = self.binding.functional.ethernet if self.binding.functional else None
        if eth is not None and eth.max_segment_size >= 1514:
            # wMaxSegmentSize counts the Ethernet header; some devices say 1518 to leave room for a VLAN tag.
            self.max_frame = min(eth.max_segment_size, 16384)
        # Room for the frame, rounded up to whole USB packets so a full frame never splits oddly.
        mp = self.maxpacket
        self.rx_size = self.tx_size = ((self.max_frame + mp - 1) // mp) * mp
        self._packet: Packet | None = None
        self._length = 0

    def tx_begin(self, packet: Packet) -> None:
        self._packet = packet
        self._length = 0

    def tx_slot(self) -> tuple[int, int]:
        if self._length:
            return 0, 0
        p = self._packet
        return p.offset, p.capacity - p.offset

    def tx_commit(self, length: int) -> bool:
        self._length = length
        return True

    @property
    def tx_count(self) -> int:
        return 1 if self._length else 0

    def tx_finish(self) -> tuple[int, bool]:
        n = self._length
        self._length = 0
        return n, n % self.maxpacket == 0

    def rx_decode(self, view: memoryview, length: int, emit: Emit) -> int:
        if length < ETH_HLEN or length > self.max_frame:
            self.stats.rx_length_errors += 1
            self.stats.rx_errors += 1
            return 0
        emit(0, length)
        return 1
