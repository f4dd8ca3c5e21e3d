"""CDC-ECM: one Ethernet frame per bulk transfer, no framing header (CDC ECM 1.2).

Control 02/06/00 paired through the Union descriptor with a data interface whose alt 1 has the bulk pair.
The framing is shared with the CDC subset (`driver.OneFramePerTransfer`).
"""

from __future__ import annotations

from ..usb.descriptors import Configuration
from . import cdc
from .driver import Binding, OneFramePerTransfer, ProtocolDriver, match_cdc


class EcmDriver(OneFramePerTransfer, ProtocolDriver):
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
        self.init_framing()
