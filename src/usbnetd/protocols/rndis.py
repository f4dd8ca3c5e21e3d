"""RNDIS (MS-RNDIS 1.0): phones tethering, Windows-era gadgets, QEMU's usb-net configuration 2.

Control goes through SEND_ENCAPSULATED_COMMAND / GET_ENCAPSULATED_RESPONSE on the control interface, with
RESPONSE_AVAILABLE on the interrupt endpoint saying when to fetch. Bring-up is synchronous and happens
before the interrupt pipe is handed to the event loop: INITIALIZE (we announce what we can receive per
transfer), QUERY OID_GEN_PHYSICAL_MEDIUM (optional, logged), QUERY OID_802_3_PERMANENT_ADDRESS (the MAC
must be the device's, or unicast silently fails on many phones), QUERY OID_GEN_MEDIA_CONNECT_STATUS
(optional), SET OID_GEN_CURRENT_PACKET_FILTER (the data path starts only after it). While running, every
RESPONSE_AVAILABLE fetches the response asynchronously: MEDIA_CONNECT / MEDIA_DISCONNECT indications drive
the carrier, device KEEPALIVEs are answered, failed completions are logged. HALT on teardown.

Data: 44-byte PACKET_MSG headers, several messages per received transfer, TX batched up to the device's
MaxPacketsPerTransfer and MaxTransferSize from INITIALIZE_CMPLT (the framing lives in `rndis_codec`).
"""

from __future__ import annotations

import logging
import struct
import time

from ..core.pool import Packet
from ..usb.descriptors import XFER_BULK, XFER_INTERRUPT, Configuration
from ..usb.transport import STATUS_OK, TransportError
from . import cdc
from . import rndis_codec as rc
from .driver import FRAME_TX_RNDIS, Binding, LinkEvent, ProtocolDriver, RxSink, bulk_alt

log = logging.getLogger(__name__)
_HEADER = struct.Struct("<II")  # MessageType, MessageLength

# Control interfaces that speak RNDIS: (class, subclass, protocol).
CONTROL_CLASSES = (
    (cdc.CLASS_COMM, cdc.SUBCLASS_ACM, 0xFF),  # the standard "CDC ACM, vendor protocol" RNDIS
    (cdc.CLASS_WIRELESS, 0x01, 0x03),  # Android: wireless controller / RF / RNDIS
    (cdc.CLASS_MISC, 0x04, 0x01),  # Microsoft's "RNDIS over Ethernet" misc class
    (cdc.CLASS_MISC, 0x01, 0x01),  # ActiveSync-era devices
)
RX_TRANSFER = 16384  # we announce this in INITIALIZE; Android may ignore it and send up to 16 KiB anyway
# One full-size PACKET_MSG: MTU 1500 + the Ethernet header + the 44-byte RNDIS header (rndis_host's hard_mtu).
_HARD_MTU = 1500 + 14 + rc.PACKET_HEADER_LEN


def rx_transfer_size(maxpacket: int) -> int:
    """The bulk IN transfer size: one full-size message plus a packet, in whole packets, as Linux's rndis_host
    sizes its URBs (generic_rndis_bind: hard_mtu + maxpacket + 1, rounded down to wMaxPacketSize): 2048 bytes
    at high and SuperSpeed, 1600 at full speed.

    Not the RX_TRANSFER we announce: most devices send one message per transfer (the Linux gadget and QEMU's
    usb-net say MaxPacketsPerTransfer 1), and the data path keeps about 60 full frames of memory in flight
    (usbnet's rule), so 16 KiB transfers left only 5 in flight: five frames per round trip to the device, where
    rndis_host keeps 44. A device that does batch up to 16 KiB fills several of these transfers back to back,
    each exactly full, and rx_decode carries the message that straddles two of them (see there)."""
    mp = maxpacket if maxpacket > 0 else 512
    return max(mp, (_HARD_MTU + mp + 1) // mp * mp)
COMMAND_TIMEOUT_MS = 5000  # Linux's RNDIS control timeout
RESPONSE_ATTEMPTS = 10  # responses that are not ours (indications, keepalives) we read past before giving up
# While running, the host asks "are you alive?" (MS-RNDIS KEEPALIVE) every KEEPALIVE_INTERVAL seconds; a device
# that has not completed one within KEEPALIVE_TIMEOUT has stopped answering control requests, and the instance
# stops instead of carrying on with a device nobody can reconfigure. (Linux's rndis_host never asks.)
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_TIMEOUT = 10.0
# Not every device notifies while running (QEMU's usb-net never does after bring-up): a KEEPALIVE still open
# after this long is looked for by fetching responses, up to RESPONSE_ATTEMPTS in a row, once a second.
KEEPALIVE_FETCH_AFTER = 1.0


def match_rndis(config: Configuration) -> Binding | None:
    for iface in config.interfaces:
        ctrl = iface.alts[0] if iface.alts else None
        if ctrl is None or (ctrl.cls, ctrl.subclass, ctrl.protocol) not in CONTROL_CLASSES:
            continue
        functional = cdc.parse_cdc_functional(ctrl.extra) if ctrl.extra else None
        # The Union names the data interface; devices without one (some ActiveSync-era ones) put it next.
        if functional is not None and functional.union_subordinates:
            data_number = functional.union_subordinates[0]
        else:
            data_number = iface.number + 1
        data = config.interface(data_number)
        if data is None:
            continue
        found = bulk_alt(data.alts)
        if found is None:
            continue
        alt, ep_in, ep_out = found
        ep_int = ctrl.endpoint(XFER_INTERRUPT, True)
        if ep_in.transfer_type != XFER_BULK:
            continue
        return Binding(config.value, iface.number, data_number, alt.alternate, ep_in, ep_out, ep_int, functional)
    return None


class RndisDriver(ProtocolDriver):
    name = "rndis"

    @classmethod
    def match(cls, config: Configuration) -> Binding | None:
        return match_rndis(config)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._request_id = 0
        self._filter: int | None = None
        self.max_frame = 1514
        self.rx_size = RX_TRANSFER
        self._decoder = rc.RndisDecoder(self.stats, max_frame=rc.DEFAULT_MAX_FRAME)
        # One message carried across a transfer boundary (see rx_decode); preallocated, reused.
        self._carry = bytearray(rc.PACKET_HEADER_LEN + rc.DEFAULT_MAX_FRAME + 64)
        self._carry_view = memoryview(self._carry)
        self._carry_len = 0
        self._carry_sink: RxSink | None = None  # the sink of the rx_decode completing the carried message
        self.initial_link: bool | None = None
        self._initialized = False  # INITIALIZE completed: only then does the device expect a HALT
        self.rndis_version: tuple[int, int] | None = None
        self.physical_medium: str | None = None
        self._unresponsive = False  # a KEEPALIVE went unanswered: send nothing more
        self._keepalive_id: int | None = None
        # When the next KEEPALIVE goes out, or (one outstanding) its deadline; None: re-arm at the next poll.
        self._keepalive_due: float | None = None
        self._keepalive_fetch_at = 0.0
        self._fetches_left = 0

    def info(self) -> dict:
        st = super().info()
        if self.rndis_version is not None:
            st["rndis_version"] = "{}.{}".format(*self.rndis_version)  # INITIALIZE_CMPLT Major.MinorVersion
        if self.physical_medium is not None:
            st["physical_medium"] = self.physical_medium  # OID_GEN_PHYSICAL_MEDIUM, when the device answers
        return st

    def _next_id(self) -> int:
        self._request_id = (self._request_id % 0xFFFFFFFE) + 1
        return self._request_id

    # --- synchronous control, setup only ---
    def _send(self, message: bytes) -> None:
        self.transport.control_out(cdc.REQ_TYPE_CLASS_OUT, cdc.SEND_ENCAPSULATED_COMMAND, 0, self.binding.control,
                                   message, timeout_ms=COMMAND_TIMEOUT_MS)

    def _command(self, message: bytes, request_id: int, expect_type: int) -> rc.ControlMessage:
        """Send one command and wait for its completion, answering whatever else the device says first."""
        try:
            self._send(message)
        except TransportError as exc:
            raise TransportError(f"RNDIS device did not take {rc.message_name(struct.unpack_from('<I', message)[0])}"
                                 f": {exc}") from None
        deadline = time.monotonic() + COMMAND_TIMEOUT_MS / 1000
        ep_int = self.binding.ep_int
        for _ in range(RESPONSE_ATTEMPTS):
            if ep_int is not None:
                left = max(1, int((deadline - time.monotonic()) * 1000))
                try:
                    self.transport.interrupt_read(ep_int.address, max(8, ep_int.max_packet), left)
                except TransportError:
                    pass  # some devices never notify; polling the response is still correct
            raw = self.transport.control_in(cdc.REQ_TYPE_CLASS_IN, cdc.GET_ENCAPSULATED_RESPONSE, 0,
                                            self.binding.control, rc.CONTROL_BUFFER_SIZE,
                                            timeout_ms=COMMAND_TIMEOUT_MS)
            if not raw:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.04)  # Linux polls the response 10 x 40 ms
                continue
            try:
                msg = rc.parse_control(raw)
            except rc.RndisError as exc:
                log.info("ignoring a malformed RNDIS response during setup: %s", exc)
                continue
            if msg.msg_type == expect_type and msg.request_id == request_id:
                try:
                    return rc.expect(msg, expect_type, request_id)
                except rc.RndisError as exc:
                    raise TransportError(f"RNDIS {exc}") from None
            self._unsolicited(msg, synchronous=True)
            if time.monotonic() > deadline:
                break
        raise TransportError(f"RNDIS device did not answer {rc.message_name(expect_type & 0x7FFFFFFF)} "
                             f"within {COMMAND_TIMEOUT_MS / 1000:g} s")

    def _query(self, oid: int) -> rc.QueryComplete:
        rid = self._next_id()
        return self._command(rc.query(rid, oid), rid, rc.QUERY_CMPLT)  # type: ignore[return-value]

    def bind(self) -> None:
        rid = self._next_id()
        init = self._command(rc.initialize(rid, RX_TRANSFER), rid, rc.INITIALIZE_CMPLT)
        assert isinstance(init, rc.InitializeComplete)
        self._initialized = True
        self.rndis_version = (init.major, init.minor)
        self._batch = rc.RndisBatch.from_init_complete(init, self.maxpacket, max_transfer_cap=65536)
        self.tx_size = self._batch.max_transfer_size + 1
        self.rx_size = rx_transfer_size(self.binding.ep_in.max_packet)
        log.info("RNDIS %d.%d, device takes %d packets / %d bytes per transfer, alignment %d", init.major,
                 init.minor, self._batch.max_packets, self._batch.max_transfer_size, self._batch.alignment)
        try:
            medium = self._query(rc.OID_GEN_PHYSICAL_MEDIUM).u32()
            self.physical_medium = rc.physical_medium_name(medium)
            log.info("RNDIS physical medium: %s", self.physical_medium)
        except (TransportError, rc.RndisError):
            pass  # optional OID; most gadgets do not answer it
        try:
            mac = self._query(rc.OID_802_3_PERMANENT_ADDRESS).payload
        except TransportError as exc:
            raise TransportError(f"RNDIS device would not tell its MAC address: {exc}") from None
        if len(mac) < 6 or mac[0] & 1:
            raise TransportError(f"RNDIS device gave an unusable MAC address {mac.hex(':')}")
        self.mac = bytes(mac[:6])
        try:
            self.initial_speed_bps = self._query(rc.OID_GEN_LINK_SPEED).u32() * 100  # in units of 100 bit/s
        except (TransportError, rc.RndisError):
            self.initial_speed_bps = None
        try:
            state = self._query(rc.OID_GEN_MEDIA_CONNECT_STATUS).u32()
            self.initial_link = state == rc.MEDIA_STATE_CONNECTED
        except (TransportError, rc.RndisError):
            self.initial_link = None
        self._set_filter_sync(rc.FILTER_DEFAULT)

    def _set_filter_sync(self, bits: int) -> None:
        rid = self._next_id()
        self._command(rc.set_packet_filter(rid, bits), rid, rc.SET_CMPLT)
        self._filter = bits

    def activate(self) -> None:
        super().activate()
        self._keepalive_due = None
        # No media-state OID: assume up until an indication says otherwise, as Linux's rndis_host does.
        connected = self.initial_link if self.initial_link is not None else True
        speed = self.initial_speed_bps
        self.events.append(LinkEvent(connected=connected, up_bps=speed, down_bps=speed))

    def set_packet_filter(self, bits: int) -> bool:
        """CDC filter bits -> NDIS filter bits, sent asynchronously (the interrupt pipe belongs to the loop)."""
        ndis = rc.FILTER_DIRECTED | rc.FILTER_BROADCAST
        if bits & cdc.PACKET_TYPE_PROMISCUOUS:
            ndis |= rc.FILTER_PROMISCUOUS
        if bits & cdc.PACKET_TYPE_ALL_MULTICAST:
            ndis |= rc.FILTER_ALL_MULTICAST
        if bits & cdc.PACKET_TYPE_MULTICAST:
            ndis |= rc.FILTER_MULTICAST
        if ndis == self._filter:
            return True
        self._filter = ndis
        return self._send_async(rc.set_packet_filter(self._next_id(), ndis))

    def apply_filter(self, promisc: bool, allmulti: bool, multicast: list[bytes]) -> str:
        bits = cdc.packet_filter_bits(promisc=promisc, allmulti=allmulti or bool(multicast), multicast=False)
        self.set_packet_filter(bits)
        return f"RNDIS packet filter 0x{self._filter:02x}"

    def unbind(self) -> None:
        if self._initialized and not self._unresponsive:
            try:
                self._send(rc.halt(self._next_id()))
            except TransportError as exc:
                log.debug("RNDIS HALT not delivered: %s", exc)
        super().unbind()

    def poll(self, now: float) -> str | None:
        """Keepalive: one KEEPALIVE outstanding at a time; its completion (in _unsolicited) clears it."""
        if self._keepalive_due is None:
            self._keepalive_due = now + KEEPALIVE_INTERVAL
        if self._keepalive_id is not None:
            if now < self._keepalive_due:
                if now >= self._keepalive_fetch_at:
                    self._keepalive_fetch_at = now + 1.0
                    self._fetches_left = RESPONSE_ATTEMPTS
                    self._fetch()
                return None
            self._unresponsive = True
            return (f"RNDIS device stopped answering control requests (KEEPALIVE not completed within "
                    f"{KEEPALIVE_TIMEOUT:g} s)")
        if now >= self._keepalive_due:
            rid = self._next_id()
            if self._send_async(rc.keepalive(rid)):
                self._keepalive_id = rid
                self._keepalive_due = now + KEEPALIVE_TIMEOUT
                self._keepalive_fetch_at = now + KEEPALIVE_FETCH_AFTER
            else:
                self._keepalive_due = now + KEEPALIVE_INTERVAL
        return None

    # --- while running ---
    def _send_async(self, message: bytes) -> bool:
        ok = self.transport.submit_control(cdc.REQ_TYPE_CLASS_OUT, cdc.SEND_ENCAPSULATED_COMMAND, 0,
                                           self.binding.control, message, self._sent)
        if not ok:
            log.warning("RNDIS: no control transfer free to send %s", rc.message_name(
                struct.unpack_from("<I", message)[0]))
        return ok

    def _sent(self, status: int, data: bytes) -> None:
        if status != STATUS_OK:
            log.warning("RNDIS: sending a control message failed (status %d)", status)

    def status(self, view: memoryview, length: int) -> LinkEvent | None:
        # RNDIS's RESPONSE_AVAILABLE is not a CDC notification: MS-RNDIS says 8 bytes {1, 0} as LE32s (f_rndis
        # and QEMU send exactly that), some devices send the CDC form. Either way the only meaning is "fetch".
        # One 8-byte notification per queued response; with an 8-byte wMaxPacketSize several arrive merged
        # in one transfer (f_rndis sends them back to back), and each must be fetched, or the device's queue
        # never drains and it stops notifying at all.
        log.debug("RNDIS: interrupt %s", bytes(view[:length]).hex())
        for _ in range(max(1, length // 8) if length >= 4 else 0):
            self.transport.submit_control(cdc.REQ_TYPE_CLASS_IN, cdc.GET_ENCAPSULATED_RESPONSE, 0,
                                          self.binding.control, rc.CONTROL_BUFFER_SIZE, self._response)
        return None

    def _fetch(self) -> None:
        self.transport.submit_control(cdc.REQ_TYPE_CLASS_IN, cdc.GET_ENCAPSULATED_RESPONSE, 0,
                                      self.binding.control, rc.CONTROL_BUFFER_SIZE, self._fetched)

    def _fetched(self, status: int, data: bytes) -> None:
        """A response fetched while looking for a KEEPALIVE completion: keep fetching while there are more."""
        self._response(status, data)
        if self._keepalive_id is not None and status == STATUS_OK and len(data) > 1 and self._fetches_left > 0:
            self._fetches_left -= 1
            self._fetch()

    def _response(self, status: int, data: bytes) -> None:
        log.debug("RNDIS: response (status %d) %s", status, data[:32].hex())
        if status != STATUS_OK or not data:
            return
        if len(data) == 1:
            # MS-RNDIS answers "nothing queued" with one zero byte; any other single byte is no message at all
            if data[0]:
                self.stats.notification_errors += 1
                log.info("RNDIS: malformed response dropped: one byte 0x%02x", data[0])
            return
        try:
            msg = rc.parse_control(data)
        except rc.RndisError as exc:
            self.stats.notification_errors += 1
            log.info("RNDIS: malformed response dropped: %s", exc)
            return
        self._unsolicited(msg, synchronous=False)

    def _unsolicited(self, msg: rc.ControlMessage, synchronous: bool) -> None:
        if isinstance(msg, rc.IndicateStatus):
            link = rc.media_state(msg.status)
            if link is not None:
                if synchronous:
                    self.initial_link = link
                else:
                    self.events.append(LinkEvent(connected=link))
            else:
                log.info("RNDIS status indication %s", rc.status_name(msg.status))
        elif msg.msg_type == rc.KEEPALIVE_CMPLT and msg.request_id == self._keepalive_id:
            self._keepalive_id = None  # alive, whatever the status says
            self._keepalive_due = None
        elif msg.msg_type == rc.KEEPALIVE_MSG:
            reply = rc.keepalive_complete(msg.request_id)
            if synchronous:
                self._send(reply)
            else:
                self._send_async(reply)
        elif getattr(msg, "status", rc.STATUS_SUCCESS) != rc.STATUS_SUCCESS:
            log.warning("RNDIS %s failed: %s", msg.name, rc.status_name(msg.status))  # type: ignore[attr-defined]

    # --- data ---
    def native_rx(self) -> tuple[str, int, int] | None:
        # The C walk mirrors rx_decode below: the decoder's frame limit, and the transfer size that makes a
        # transfer "full" (one that may end inside a message, whose tail is carried).
        return ("rndis", rc.DEFAULT_MAX_FRAME, self.rx_size)

    def native_frame_tx(self) -> tuple[int, int, int] | None:
        # The C pump frames one PACKET_MSG per transfer, as RndisBatch does for a device that takes one packet
        # per transfer (the Linux gadget and QEMU's usb-net both say MaxPacketsPerTransfer 1), and only with
        # the pad byte's ZLP rule (maxpacket known) and room for a whole max_frame after the header.
        b = self._batch
        if b.max_packets != 1 or not b.maxpacket:
            return None
        if b.max_transfer_size - 1 - rc.PACKET_HEADER_LEN < self.max_frame:
            return None
        return (self.max_frame, b.maxpacket, FRAME_TX_RNDIS)

    def tx_begin(self, packet: Packet) -> None:
        packet.offset = 0
        self._batch.begin(packet.view)

    def tx_slot(self) -> tuple[int, int]:
        return self._batch.next_slot()

    def tx_commit(self, length: int) -> bool:
        self._batch.commit(length)
        return self._batch.next_slot()[1] < self.max_frame

    @property
    def tx_count(self) -> int:
        return self._batch.count

    def tx_finish(self) -> tuple[int, bool]:
        n = self._batch.finish()
        return n, self._batch.zlp

    # A bulk IN transfer that comes back exactly full may end inside a message: devices that neither pad
    # nor send a ZLP after a message that is a multiple of wMaxPacketSize (QEMU's usb-net does this) keep
    # streaming into the next transfer. The tail of such a transfer is carried over and completed from the
    # next one; only a full transfer can continue, so a short one that ends mid-message is still an error.
    def rx_decode(self, view: memoryview, length: int, sink: RxSink) -> int:
        # A negative length (never from the transport) is an empty transfer, as the decoders read it; with a
        # message carried over it would have sliced the carry with a negative size.
        length = max(length, 0)
        frames = 0
        start = 0
        if self._carry_len:
            start, frames = self._complete_carry(view, length, sink)
            if start >= length:
                return frames
        end = length
        if length == self.rx_size:
            end = self._split_point(view, start, length)
            if end < length:
                self._carry[: length - end] = view[end:length]
                self._carry_len = length - end
        if start == 0:
            return frames + self._decoder.decode(view, end, sink.emit)
        self._shift, self._shift_emit = start, sink.emit
        return frames + self._decoder.decode(view[start:end], end - start, self._emit_shifted)

    def _emit_shifted(self, offset: int, length: int) -> None:
        self._shift_emit(offset + self._shift, length)

    def _split_point(self, view: memoryview, pos: int, length: int) -> int:
        """Where the last message that does not fit in this transfer starts (length when all fit)."""
        while length - pos >= 8:
            msg_type, msg_len = _HEADER.unpack_from(view, pos)
            if msg_type != rc.PACKET_MSG or msg_len < rc.PACKET_HEADER_LEN or msg_len > len(self._carry):
                return length  # not a message we could carry: leave it to the decoder to judge and count
            if pos + msg_len > length:
                return pos
            pos += msg_len
        return pos if pos < length and any(view[pos:length]) else length

    def _complete_carry(self, view: memoryview, length: int, sink: RxSink) -> tuple[int, int]:
        """Fill the carried message from the start of `view`; return (bytes used, frames delivered)."""
        carry, have = self._carry, self._carry_len
        if have < 8:  # even the header was split: take just enough of it to learn the length
            take = min(8 - have, length)
            carry[have : have + take] = view[:take]
            have += take
            self._carry_len = have
            if have < 8:
                return take, 0
            used = take
        else:
            used = 0
        need = _HEADER.unpack_from(carry, 0)[1]
        if not rc.PACKET_HEADER_LEN <= need <= len(carry):
            self._carry_len = 0
            self.stats.rx_errors += 1
            self.stats.rx_frame_errors += 1
            return used, 0
        take = min(need - have, length - used)
        carry[have : have + take] = view[used : used + take]
        have += take
        used += take
        if have < need:
            self._carry_len = have
            return used, 0
        self._carry_len = 0
        self._carry_sink = sink
        return used, self._decoder.decode(self._carry_view, need, self._emit_carried)

    def _emit_carried(self, offset: int, length: int) -> None:
        self._carry_sink.deliver(self._carry_view, offset, length)
