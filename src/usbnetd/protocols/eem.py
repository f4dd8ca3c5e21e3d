"""CDC-EEM (Ethernet Emulation Model 1.0): one interface 02/0C/07 with a bulk pair, no control requests.

Every frame travels as an EEM packet: a 2-byte header, the frame, and a CRC or the 0xDEADBEEF sentinel
(`eem_codec`). There is no MAC (a random locally administered one unless configured), no link notification
(the link is up while the device is there) and no filter. In-band commands arrive in the data stream: an
echo must be answered with an echo response carrying the same data; the others (suspend/response hints,
tickle) are counted and logged. A transfer that would end on a wMaxPacketSize boundary gets a zero-length
EEM packet appended instead of a ZLP.
"""

from __future__ import annotations

import collections
import logging

from ..core.pool import Packet
from ..usb.descriptors import Configuration
from . import cdc
from . import eem_codec as ec
from .driver import Binding, DriverFlag, ProtocolDriver, RxSink
from .subset import match_bulk_only

log = logging.getLogger(__name__)

EEM_PROTOCOL = 0x07
# Frame + 2-byte header + 4-byte sentinel, plus a 2-byte zero-length EEM packet the device may append.
EEM_OVERHEAD = 2 + 4 + 2
MAX_PENDING_ECHOES = 8  # a device echoing faster than we can answer is broken; drop the excess


class EemDriver(ProtocolDriver):
    name = "eem"
    flags = DriverFlag.NO_LINK_STATE | DriverFlag.NO_CONTROL

    @classmethod
    def match(cls, config: Configuration) -> Binding | None:
        return match_bulk_only(config, cdc.CLASS_COMM, cdc.SUBCLASS_EEM, EEM_PROTOCOL)

    def bind(self) -> None:
        self.mac = None  # EEM has no way to tell one
        mp = self.maxpacket
        # One EEM packet per transfer both ways, as Linux's cdc_eem and f_eem do: the gadget's OUT requests
        # are sized for one frame, so batching several would overrun them.
        self.rx_size = self.tx_size = ((self.max_frame + EEM_OVERHEAD + mp - 1) // mp) * mp
        self._batch = ec.EemBatch(self.tx_size, mp, max_frames=1)
        self._decoder = ec.EemDecoder(self.stats, max_frame=self.max_frame)
        self._echoes: collections.deque[bytes] = collections.deque()
        self._command_only = 0
        self._rx_view: memoryview | None = None

    @property
    def own_tx_pending(self) -> int:
        return len(self._echoes)

    # --- TX ---
    def tx_begin(self, packet: Packet) -> None:
        packet.offset = 0
        if self._echoes:
            # An echo response goes out on its own, ahead of frames: rare, and simplest kept apart.
            reply = self._echoes.popleft()
            packet.view[: len(reply)] = reply
            self._command_only = len(reply)
            return
        self._command_only = 0
        self._batch.begin(packet.view)

    def tx_slot(self) -> tuple[int, int]:
        if self._command_only:
            return 0, 0
        return self._batch.next_slot()

    def tx_commit(self, length: int) -> bool:
        self._batch.commit(length)
        return True

    @property
    def tx_count(self) -> int:
        return 1 if self._command_only else self._batch.count

    def tx_finish(self) -> tuple[int, bool]:
        if self._command_only:
            n, self._command_only = self._command_only, 0
            return n, n % self.maxpacket == 0
        return self._batch.finish(), False  # appends a zero-length EEM packet instead of a ZLP when needed

    # --- RX ---
    def rx_decode(self, view: memoryview, length: int, sink: RxSink) -> int:
        self._rx_view = view
        return self._decoder.decode(view, length, sink.emit, self._command)

    def _command(self, cmd: int, param: int, offset: int, data_len: int) -> None:
        self.stats.notifications += 1
        if cmd == ec.CMD_ECHO:
            if len(self._echoes) >= MAX_PENDING_ECHOES:
                self.stats.notification_errors += 1
                return
            # Queued: the data path sends it as its own transfer after this wake-up (own_tx_pending).
            self._echoes.append(ec.echo_response(self._rx_view[offset : offset + data_len]))
        else:
            log.debug("EEM command %s (parameter %d)", ec.command_name(cmd), param)
