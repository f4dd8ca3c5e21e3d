"""CDC-NCM: many Ethernet frames per bulk transfer, packed in NCM Transfer Blocks (NCM 1.0).

Control 02/0D/00 + data 0A/00/01. Bring-up follows NCM 1.0 §6/§7 with the data interface at alt 0:
GET_NTB_PARAMETERS (mandatory), SET_NTB_FORMAT when we choose NTB32, SET_NTB_INPUT_SIZE to the RX buffer we
actually provide, then alt 1. The framing itself (NTB16/NTB32 build and parse) lives in `ncm_codec`, shared
with the simulated NCM device; this module only negotiates and adapts it to the driver contract.
"""

from __future__ import annotations

import dataclasses
import logging
import struct

from ..core.pool import Packet
from ..usb.descriptors import Configuration
from ..usb.transport import TransportError
from . import cdc
from .driver import Binding, ProtocolDriver, Quirk, RxSink, match_cdc
from .ncm_codec import NtbBuilder, NtbDecoder, NtbParameters, TxLayout

log = logging.getLogger(__name__)

# Our NTB sizes: NCM 1.0 §6.2.7 lets the host ask for any NTB input size from 2048 bytes up to the device's
# dwNtbInMaxSize (at most 64 KiB with NTB16). Linux's cdc_ncm starts at 16 KiB (CDC_NCM_NTB_DEF_SIZE_*) and
# allows 32 KiB by default (CDC_NCM_NTB_MAX_SIZE_*). We take 32 KiB, capped by what the device reports,
# which keeps a pool of 64 packets at 2 MiB; larger NTBs have not been measured (docs/performance.md).
DEFAULT_RX_NTB = 32768
DEFAULT_TX_NTB = 32768
NTB16_LIMIT = 65535  # wBlockLength is 16 bits
NTB_FORMAT_16 = 0
NTB_FORMAT_32 = 1
FORMATS_NTB32 = 0x02
CAP_8BYTE_INPUT_SIZE = 0x20


class NcmDriver(ProtocolDriver):
    name = "ncm"

    @classmethod
    def match(cls, config: Configuration) -> Binding | None:
        return match_cdc(config, cdc.SUBCLASS_NCM)

    def bind(self) -> None:
        super().bind()
        ctrl = self.binding.control
        raw = self.transport.control_in(cdc.REQ_TYPE_CLASS_IN, cdc.GET_NTB_PARAMETERS, 0, ctrl, 28)
        try:
            params = NtbParameters.parse(raw)
        except ValueError as exc:
            raise TransportError(f"device gave unusable NTB parameters: {exc}") from exc
        self.params = params
        f = self.binding.functional
        caps = f.ncm.capabilities if f is not None and f.ncm is not None else 0
        self.capabilities = caps

        want32 = self.options.ntb32
        if want32 is None and self.options.quirks & Quirk.NTB32:
            want32 = True
        if self.options.quirks & Quirk.NTB16:
            want32 = False
        ntb32 = bool(want32) and bool(params.formats_supported & FORMATS_NTB32)
        if want32 and not ntb32:
            raise TransportError("NTB32 was asked for but the device supports only NTB16")
        if ntb32:
            self.transport.control_out(cdc.REQ_TYPE_CLASS_OUT, cdc.SET_NTB_FORMAT, NTB_FORMAT_32, ctrl, b"")
        self.ntb32 = ntb32

        limit = params.ntb_in_max_size if ntb32 else min(params.ntb_in_max_size, NTB16_LIMIT)
        rx = min(limit, self.options.rx_size or DEFAULT_RX_NTB)
        payload = struct.pack("<IHH", rx, 0, 0) if caps & CAP_8BYTE_INPUT_SIZE else struct.pack("<I", rx)
        try:
            self.transport.control_out(cdc.REQ_TYPE_CLASS_OUT, cdc.SET_NTB_INPUT_SIZE, 0, ctrl, payload)
        except TransportError as exc:
            # The device then keeps its own dwNtbInMaxSize, so our buffers must be that large.
            log.info("SET_NTB_INPUT_SIZE refused (%s); using the device's %d", exc, params.ntb_in_max_size)
            rx = limit
        self.rx_size = rx

        eth = f.ethernet if f is not None else None
        if eth is not None and eth.max_segment_size >= 1514:
            self.max_frame = min(eth.max_segment_size, 16384)

        out_cap = params.ntb_out_max_size if ntb32 else min(params.ntb_out_max_size, NTB16_LIMIT)
        out_cap = min(out_cap, self.options.tx_size or DEFAULT_TX_NTB)
        self.layout = TxLayout.from_parameters(params, ntb32, self.maxpacket, out_cap)
        self.tx_size = self.layout.max_size
        self._builder = NtbBuilder(self.layout)
        # An empty NTB must have room for the largest frame, or no frame of that size could ever be sent (and
        # a transfer that is "full" while empty would never end). Devices whose wMaxSegmentSize is larger than
        # their NTB can carry get their largest frame cut to what fits.
        self._builder.begin(bytearray(self.layout.max_size))
        # One byte less than the room, so that a longer frame read into it is seen as too long, not cut.
        room = self._builder.next_slot()[1] - 1
        if room < self.max_frame:
            log.warning("NTB of %d bytes holds frames of at most %d bytes (device says %d): using that",
                        self.layout.max_size, room, self.max_frame)
            self.max_frame = room
        self._decoder = NtbDecoder(self.stats, max_datagram=max(self.max_frame, 1514))

    def change_mtu(self, frame: int) -> str | None:
        reason = super().change_mtu(frame)
        if reason is None and self.capabilities & cdc.NCM_NCAP_MAX_DATAGRAM_SIZE:
            # NCM 1.0 §6.2.9 (SetMaxDatagramSize): tell the device the largest datagram it may send us and must accept.
            self.transport.submit_control(cdc.REQ_TYPE_CLASS_OUT, cdc.SET_MAX_DATAGRAM_SIZE, 0,
                                          self.binding.control, struct.pack("<H", frame), self._filter_done)
        return reason

    def apply_filter(self, promisc: bool, allmulti: bool, multicast: list[bytes]) -> str:
        if not self.capabilities & cdc.NCM_NCAP_ETH_FILTER:
            return "the device has no packet filter (bmNetworkCapabilities)"
        return super().apply_filter(promisc, allmulti, multicast)

    def set_packet_filter(self, bits: int) -> bool:
        # NCM 1.0 §5.2.1: SET_ETHERNET_PACKET_FILTER (ECM 1.2 §6.2.4) is optional, announced by
        # bmNetworkCapabilities bit D0.
        if not self.capabilities & cdc.NCM_NCAP_ETH_FILTER:
            return False
        return super().set_packet_filter(bits)

    @property
    def framing(self) -> str:
        return f"{'NTB32' if self.ntb32 else 'NTB16'}, {self.rx_size} B in / {self.tx_size} B out"

    # --- TX: frames are read from the TAP straight into the NTB under construction ---
    def tx_begin(self, packet: Packet) -> None:
        packet.offset = 0
        self._builder.begin(packet.view)

    def tx_slot(self) -> tuple[int, int]:
        offset, room = self._builder.next_slot()
        return offset, room

    def tx_commit(self, length: int) -> bool:
        self._builder.commit(length)
        _, room = self._builder.next_slot()
        return room < self.max_frame

    @property
    def tx_count(self) -> int:
        return self._builder.count

    def tx_finish(self) -> tuple[int, bool]:
        # No ZLP: the layout keeps every NTB below the device's maximum off a wMaxPacketSize multiple, and one
        # of exactly dwNtbOutMaxSize ends the device's read by itself (a ZLP would arrive as an empty NTB).
        return self._builder.finish(), False

    # --- RX ---
    def native_rx(self) -> tuple[str, int] | None:
        return ("ntb", self._decoder.max_datagram)

    def native_tx(self) -> tuple[tuple, int] | None:
        return dataclasses.astuple(self.layout), self._builder.sequence

    def native_tx_returned(self, sequence: int) -> None:
        # NCM 1.0 §3.2.1: wSequence counts NTBs; the Python builder continues the C framer's count.
        self._builder = NtbBuilder(self.layout, sequence)

    def rx_decode(self, view: memoryview, length: int, sink: RxSink) -> int:
        return self._decoder.decode(view, length, sink.emit)
