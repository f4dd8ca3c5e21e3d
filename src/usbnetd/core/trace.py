"""The tracer: what a running instance records while `usbnetd trace` watches it, encoded as pcapng.

Owns the records and their bound. Interface 0 of the trace is the Ethernet side (LINKTYPE_ETHERNET: every
frame written to or read from the TAP, inbound = from the device, outbound = to it); interface 1 is the USB
side (LINKTYPE_USB_LINUX_MMAPPED: bulk IN/OUT submissions and completions with their data, control requests
with their setup packet, interrupt notifications), in the usbmon format tshark decodes as USB (pcapng.py).

Where records come from (each hook only while a trace is attached; nothing is checked otherwise beyond the
one attribute test named):
- `netdev/port.TapPort.set_tracer` swaps its `emit`, `deliver` and `read_into` for traced ones (no test);
- `core/datapath.DataPath._on_rx` / `_on_tx`: bulk completions (one `self.tracer is not None` per transfer);
- `core/service.EthernetService._on_interrupt`: interrupt completions (the same test, per notification);
- `trace_transport()` below: bulk submissions and control transfers, by shadowing the transport's
  `submit_rx`, `submit_tx`, `submit_control`, `control_in` and `control_out` with recording wrappers on the
  instance while the trace lasts (removed after), so neither transport (libusb, sim) carries a hook.

Cost bound: each record is encoded once into one pcapng block and queued; when the queue holds
`limit_bytes` the record is dropped and counted instead (per interface), never waited for. The daemon
drains the queue into the trace's socket when it can (app/trace.py). After `count` records the tracer stops
recording and says so (`done`).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from . import pcapng as P

ETH, USB = 0, 1  # pcapng interface IDs, in the order the IDBs are written
DEFAULT_SNAPLEN = 262144  # tcpdump's default; enough for a 64 KiB NTB
DEFAULT_LIMIT = 8 << 20  # bytes of encoded records queued before records are dropped
OVERHEAD = 32 + 64  # an EPB's header and options, and a usbmon header: at most this much beyond the data

# Transport status (libusb's numbers, usb/transport.py) -> the Linux URB status usbmon would show.
URB_STATUS = {
    0: 0,  # completed
    1: -71,  # LIBUSB_TRANSFER_ERROR: -EPROTO
    2: -110,  # timed out: -ETIMEDOUT
    3: -2,  # cancelled: -ENOENT (usb_kill_urb)
    4: -32,  # stall: -EPIPE
    5: -19,  # no device: -ENODEV
    6: -75,  # overflow: -EOVERFLOW
}


def now_us() -> int:
    return time.time_ns() // 1000


class Tracer:
    """Records in pcapng blocks, queued up to a byte bound. Not thread-safe: the event loop's thread only."""

    def __init__(self, snaplen: int = DEFAULT_SNAPLEN, count: int = 0, limit_bytes: int = DEFAULT_LIMIT,
                 bus: int = 0, devnum: int = 0, ep_in: int = 0x81, ep_out: int = 0x02, ep_int: int | None = None,
                 interval: int = 0) -> None:
        self.snaplen = snaplen
        self.remaining = count or -1  # records still to take; -1: no limit
        self.limit = limit_bytes
        self.bus, self.devnum = bus, devnum
        self.ep_in, self.ep_out, self.ep_int, self.interval = ep_in, ep_out, ep_int, interval
        self.blocks: collections.deque[bytes] = collections.deque()
        self.queued = 0  # bytes in `blocks`
        self.recorded = [0, 0]  # per interface
        self.dropped = [0, 0]
        self.started = now_us()
        self.done = False  # `count` records taken
        self._ctrl_id = 0

    # ------------------------------------------------------------------ the queue
    def _put(self, interface: int, block: bytes) -> None:
        if self.queued + len(block) > self.limit:
            self.dropped[interface] += 1
            return
        self.blocks.append(block)
        self.queued += len(block)
        self.recorded[interface] += 1
        if self.remaining > 0:
            self.remaining -= 1
            if not self.remaining:
                self.done = True

    def take(self, max_bytes: int) -> list[bytes]:
        """Queued blocks, oldest first, up to about `max_bytes` (at least one when there is one)."""
        out: list[bytes] = []
        n = 0
        blocks = self.blocks
        while blocks and (not out or n + len(blocks[0]) <= max_bytes):
            b = blocks.popleft()
            n += len(b)
            out.append(b)
        self.queued -= n
        return out

    # ------------------------------------------------------------------ Ethernet (interface 0)
    def frame(self, data: memoryview | bytes, inbound: bool) -> None:
        """One Ethernet frame at the TAP: inbound came from the device, outbound goes to it."""
        if self.done:
            return
        n = len(data)
        if self.queued + n + OVERHEAD > self.limit:
            self.dropped[ETH] += 1  # full: dropped before it costs an encoding
            return
        cap = data[: self.snaplen] if n > self.snaplen else data
        self._put(ETH, P.enhanced_packet(ETH, now_us(), cap, n, P.EPB_INBOUND if inbound else P.EPB_OUTBOUND))

    # ------------------------------------------------------------------ USB (interface 1)
    def urb(self, urb_id: int, kind: int, xfer_type: int, endpoint: int, status: int, length: int,
            data: memoryview | bytes | None, setup: bytes | None = None) -> None:
        """One usbmon event. `data` None: nothing follows (an IN submission); `length` is the urb length."""
        if self.done:
            return
        if data is not None and self.queued + len(data) + OVERHEAD > self.limit:
            self.dropped[USB] += 1
            return
        ts = now_us()
        if data is None:
            cap: memoryview | bytes = b""
            full = 0
            no_data = P.NO_DATA_IN
        else:
            full = len(data)
            room = max(0, self.snaplen - P.USBMON_LEN)
            cap = data[:room] if full > room else data
            no_data = 0
        head = P.usbmon_header(urb_id, kind, xfer_type, endpoint, self.devnum, self.bus, ts, status, length,
                               len(cap), setup, self.interval if xfer_type == P.XFER_INTERRUPT else 0, no_data)
        # usbmon's direction is the data's: an IN endpoint's (and an IN control request's) data comes in.
        inbound = bool(endpoint & 0x80)
        self._put(USB, P.enhanced_packet(USB, ts, head + bytes(cap), P.USBMON_LEN + full,
                                         P.EPB_INBOUND if inbound else P.EPB_OUTBOUND))

    def bulk_submitted(self, index: int, endpoint: int, length: int, data: memoryview | None) -> None:
        self.urb(_bulk_id(endpoint, index), P.URB_SUBMIT, P.XFER_BULK, endpoint, P.EINPROGRESS, length, data)

    def rx_done(self, index: int, status: int, view: memoryview, actual: int) -> None:
        """A bulk IN transfer completed (DataPath._on_rx): its data when it succeeded."""
        ok = status == 0
        self.urb(_bulk_id(self.ep_in, index), P.URB_COMPLETE, P.XFER_BULK, self.ep_in,
                 URB_STATUS.get(status, -71), actual if ok else 0, view[:actual] if ok else b"")

    def tx_done(self, index: int, status: int, length: int) -> None:
        """A bulk OUT transfer completed (DataPath._on_tx); usbmon carries no data on an OUT completion."""
        self.urb(_bulk_id(self.ep_out, index), P.URB_COMPLETE, P.XFER_BULK, self.ep_out,
                 URB_STATUS.get(status, -71), length if status == 0 else 0, b"")

    def interrupt(self, view: memoryview, length: int) -> None:
        """An interrupt IN transfer completed with a notification (EthernetService._on_interrupt)."""
        ep = self.ep_int if self.ep_int is not None else 0x83
        self.urb(_bulk_id(ep, 0), P.URB_COMPLETE, P.XFER_INTERRUPT, ep, 0, length, view[:length])

    def control_id(self) -> int:
        self._ctrl_id += 1
        return (1 << 48) | self._ctrl_id

    # ------------------------------------------------------------------ the end
    def trailer(self, comment: str | None = None) -> bytes:
        """Interface Statistics Blocks for both interfaces: records taken, records dropped (isb_ifdrop)."""
        end = now_us()
        out = []
        for iface in (ETH, USB):
            note = None
            if self.dropped[iface]:
                note = (f"usbnetd: {self.dropped[iface]} records dropped: the reader did not keep up "
                        f"(queue of {self.limit} bytes)")
            if comment and iface == ETH:
                note = f"{note}; {comment}" if note else comment
            out.append(P.interface_statistics(iface, end, start=self.started, end=end,
                                              received=self.recorded[iface] + self.dropped[iface],
                                              dropped=self.dropped[iface], comment=note))
        return b"".join(out)


def _bulk_id(endpoint: int, index: int) -> int:
    # usbmon's id is the URB's address; here the endpoint and the pool packet's index, which is unique among
    # the transfers in flight on that endpoint, so a submission and its completion share it.
    return (endpoint << 32) | index


def header(ifname: str, busid: str, protocol: str, snaplen: int, application: str) -> bytes:
    """The section header and the two interface descriptions a trace starts with."""
    return b"".join((
        P.section_header(application=application, comment=f"usbnetd trace of {ifname} ({protocol} on {busid})"),
        P.interface_description(P.LINKTYPE_ETHERNET, snaplen, name=ifname,
                                description=f"{ifname}: Ethernet frames at the TAP ({protocol})"),
        P.interface_description(P.LINKTYPE_USB_LINUX_MMAPPED, snaplen, name=f"usb:{busid}",
                                description=f"{busid}: USB transfers of the {protocol} function"),
    ))


def trace_transport(transport, tracer: Tracer) -> Callable[[], None]:
    """Record the transport's bulk submissions and control transfers; returns the function that stops it.

    The wrappers are instance attributes shadowing the class's methods, so the untraced path keeps calling
    the methods directly, with nothing added. Submissions are recorded once accepted (a refused one is not a
    URB); OUT data is captured at submission, as usbmon does.
    """
    names = ("submit_rx", "submit_tx", "submit_control", "control_in", "control_out")
    saved = {n: vars(transport).get(n) for n in names}
    submit_rx, submit_tx = transport.submit_rx, transport.submit_tx
    submit_control, control_in, control_out = transport.submit_control, transport.control_in, transport.control_out
    ep_in, ep_out = tracer.ep_in, tracer.ep_out

    def traced_submit_rx(packet, length):
        ok = submit_rx(packet, length)
        if ok:
            tracer.bulk_submitted(packet.index, ep_in, length, None)
        return ok

    def traced_submit_tx(packet, length, zlp):
        ok = submit_tx(packet, length, zlp)
        if ok:
            tracer.bulk_submitted(packet.index, ep_out, length, packet.view[packet.offset : packet.offset + length])
        return ok

    def setup(request_type: int, request: int, value: int, index: int, length: int) -> bytes:
        return bytes([request_type, request]) + (value & 0xFFFF).to_bytes(2, "little") + \
            (index & 0xFFFF).to_bytes(2, "little") + (length & 0xFFFF).to_bytes(2, "little")

    def traced_submit_control(request_type, request, value, index, data, callback, timeout_ms=5000):
        urb = tracer.control_id()
        length = data if isinstance(data, int) else len(data)
        ep = 0x80 if request_type & 0x80 else 0x00

        def done(status: int, reply: bytes) -> None:
            tracer.urb(urb, P.URB_COMPLETE, P.XFER_CONTROL, ep, URB_STATUS.get(status, -71),
                       len(reply) if ep else (length if status == 0 else 0), reply if ep else b"")
            callback(status, reply)

        ok = submit_control(request_type, request, value, index, data, done, timeout_ms)
        if ok:
            tracer.urb(urb, P.URB_SUBMIT, P.XFER_CONTROL, ep, P.EINPROGRESS, length,
                       None if ep else bytes(data), setup(request_type, request, value, index, length))
        return ok

    def traced_sync(direction: int, call, request_type, request, value, index, arg, timeout_ms):
        urb = tracer.control_id()
        length = arg if direction else len(arg)
        tracer.urb(urb, P.URB_SUBMIT, P.XFER_CONTROL, direction, P.EINPROGRESS, length,
                   None if direction else bytes(arg), setup(request_type, request, value, index, length))
        try:
            reply = call(request_type, request, value, index, arg, timeout_ms)
        except Exception:
            tracer.urb(urb, P.URB_COMPLETE, P.XFER_CONTROL, direction, -32, 0, b"")  # shown as a stall
            raise
        tracer.urb(urb, P.URB_COMPLETE, P.XFER_CONTROL, direction, 0, len(reply) if direction else length,
                   reply if direction else b"")
        return reply

    def traced_control_in(request_type, request, value, index, length, timeout_ms=1000):
        return traced_sync(0x80, control_in, request_type, request, value, index, length, timeout_ms)

    def traced_control_out(request_type, request, value, index, data, timeout_ms=1000):
        traced_sync(0x00, lambda *a: control_out(*a) or b"", request_type, request, value, index, data, timeout_ms)

    transport.submit_rx = traced_submit_rx
    transport.submit_tx = traced_submit_tx
    transport.submit_control = traced_submit_control
    transport.control_in = traced_control_in
    transport.control_out = traced_control_out

    def untrace() -> None:
        for n, v in saved.items():
            if v is None:
                vars(transport).pop(n, None)
            else:
                setattr(transport, n, v)

    return untrace
