"""The data path: the packet buffer pool, the four ring queues and the transfers between the bulk engine and
the TAP port.

One frame's way:
  RX: bulk IN completes (`_on_rx`) -> rx completion queue -> `process()`: driver.rx_decode(view, length,
      port) -> TapPort (GRO, write, count) -> rx submission queue -> bulk IN again
  TX: TAP readable -> `on_tap_readable()`: TapPort.read_into(the slot the driver's framer offers) -> the
      transfer is finished (full, pipe idle, a completion freed the pipe, the flush timer, or the driver's own
      frame) -> tx submission queue -> bulk OUT -> `_on_tx` -> tx completion queue -> pool

Completions only move packets between queues (they run inside libusb's event handling); `process()` does
the work in batches after every wake-up. Every packet is in exactly one place: the pool's free stack, one
queue, one in-flight transfer, or the one TX transfer being framed. `teardown()` reaps every transfer and
returns every packet before the caller closes the handle.

Sizing follows usbnet: about 60 full-size frames of memory in flight per direction, five times that at
SuperSpeed, between 4 and 64 transfers; `[queues] rx_transfers` / `tx_transfers` override it.
"""

from __future__ import annotations

import logging
import os
import time
from array import array

from ..netdev.gso import offload_names as gso_names
from ..netdev.port import CARRIED, TapPort
from ..protocols.driver import ProtocolDriver
from ..usb.transport import STATUS_CANCELLED, STATUS_NO_DEVICE, STATUS_OK, STATUS_STALL, IntCallback, Transport
from .pool import TX, Packet, PacketBufferPool
from .queues import RingQueue
from .stats import BurstLog, Stats
from .trace import trace_transport

log = logging.getLogger(__name__)


class TraceUnavailable(Exception):
    """A trace cannot start now (set_tracer): the reason is for the user."""

# How long a partly filled NCM transfer may wait for more frames while earlier transfers are still in
# flight. Linux uses 400 µs; poll() counts in milliseconds, so 1 ms is the finest honest value here.
TX_FLUSH_DELAY = 0.001
# Why a TX transfer was closed and sent (like cdc_ncm's tx_reason_* counters).
FLUSH_FULL, FLUSH_IDLE, FLUSH_COMPLETION, FLUSH_TIMER, FLUSH_DRIVER = range(5)
FLUSH_NAMES = ("full", "pipe_idle", "completion", "timer", "driver")
TAP_READ_BUDGET = 64  # frames read per wake-up before the loop looks at USB again (fairness)
RX_ERROR_STORM = 20  # usbnet: more than 20 errors (in 30 completions) means a storm
RX_THROTTLE = 0.125  # seconds RX pauses after a storm (usbnet's THROTTLE_JIFFIES, HZ/8)
ETH_HLEN = 14
# How long a trace's start (or end) may wait for the device to take the bulk OUT transfers in flight, which
# the C TX pump and the Python pipe can only trade when none is in flight.
PUMP_HANDOVER = 0.1
# usbnet keeps about 60 full-size frames of memory in flight per direction at high speed, x5 at SuperSpeed.
INFLIGHT_BYTES = 60 * 1518
# Pool buffers from this size on live in the transport's memory (usb/engine.transfer_memory). What usbfs saves
# per transfer then (a kernel buffer from the page allocator, zeroed under init_on_alloc, and the copy) grows
# with the transfer: on NCM's 32 KiB NTBs the VM bench measured 0.93x -> 1.02x of cdc_ncm device->host, 3 of 3
# and 2 of 2 rounds, in two boots. For one-frame buffers of about 1.5 KiB (ECM, EEM, the subset) it measured
# no gain: ECM device->host was lower in 5 of 6 rounds and usbnetd's CPU per frame within the boots' spread
# (docs/performance.md, "usbfs memory for the packet pool").
USBFS_MEMORY_MIN_SLOT = 4096


class DataPath:
    def __init__(self, transport: Transport, driver: ProtocolDriver, stats: Stats, rx_transfers: int = 0,
                 tx_transfers: int = 0) -> None:
        self.transport = transport
        self.driver = driver
        self.stats = stats
        # The `[queues]` settings (0: sized from the device); never reused as counters.
        self.rx_transfers_setting = rx_transfers
        self.tx_transfers_setting = tx_transfers
        self.n_rx = 0  # bulk IN transfers kept in flight
        self.n_tx = 0  # bulk OUT transfers at most in flight
        self.pool: PacketBufferPool | None = None
        self.rx_submission: RingQueue[Packet] | None = None
        self.rx_completion: RingQueue[Packet] | None = None
        self.tx_submission: RingQueue[Packet] | None = None
        self.tx_completion: RingQueue[Packet] | None = None
        self.port: TapPort | None = None
        self.rx_path = "python"  # or "native": who decodes received transfers (attach decides)
        self.tx_fast = None  # a usbnetd.native NcmTx when the C path frames TX (attach decides)
        self.rx_usb = False  # the C path takes the bulk IN completions (transport.arm_native_rx)
        self.tx_pump = None  # a usbnetd.native FrameTx or NcmPump owning the bulk OUT transfers (arm_native_tx)
        self._pump_flushes = None  # the NcmPump's take_flushes
        self.burst_tx = None  # the armed pump's burst_hooks() capsule
        self.tracer = None  # a core.trace.Tracer while `usbnetd trace` watches (set_tracer)
        self._untrace = None  # undoes trace_transport's wrappers
        self._native_tx_wanted = False  # attach chose the C TX framer (set_tracer puts it back)
        self._rx_usb_wanted = False  # the C path took the bulk IN completions before a trace (set_tracer)
        self._tx_pump_wanted = None  # the C TX pump set aside while a trace runs (set_tracer)
        self._frame_tx = None  # the FrameTx made at attach, armed or set aside: its offload counters
        self.running = False  # completions with errors are only counted while running
        self.device_gone = False
        # Counters of the data path's own (the per-frame ones are in `stats`, kept by the port and here).
        self.rx_transfers_done = 0  # received transfers decoded
        self.tx_flush = array("Q", bytes(8 * len(FLUSH_NAMES)))
        self.rx_throttled = 0
        self.pool_exhausted = 0
        self._tx_packet: Packet | None = None  # the TX transfer being framed
        self._flush_at: float | None = None
        self._batch: list[Packet] = []
        self._tx_frames = array("I")  # frames framed into each TX packet, by packet index
        self._tx_bytes = array("Q")  # their Ethernet bytes (not the framing's)
        self._tx_zlp = bytearray()  # whether the driver wants a ZLP after each TX transfer
        self._rx_errors = BurstLog("bulk IN transfers failing", logger=log)
        self._tx_errors = BurstLog("bulk OUT transfers failing", logger=log)
        self._tap_wants_read = True
        self._rx_error_streak = 0
        self._rx_paused_until: float | None = None
        self._stalled_in = False
        self._stalled_out = False
        self.ifname = "?"  # for log lines

    # ------------------------------------------------------------------ setup
    def setup(self, on_interrupt: IntCallback) -> None:
        """Size the pool and the queues from the driver's negotiated transfer sizes and open the pipes."""
        d, t = self.driver, self.transport
        speed_factor = 5 if t.identity.speed_mbps >= 5000 else 1
        self.n_rx = self.rx_transfers_setting or max(4, min(64, INFLIGHT_BYTES * speed_factor // d.rx_size))
        self.n_tx = self.tx_transfers_setting or max(4, min(64, INFLIGHT_BYTES * speed_factor // d.tx_size))
        caps = {
            "rx_submission": self.n_rx,
            "rx_completion": self.n_rx,
            "tx_submission": 2 * self.n_tx,
            "tx_completion": self.n_tx,
        }
        self.rx_submission = RingQueue("rx_submission", caps["rx_submission"])
        self.rx_completion = RingQueue("rx_completion", caps["rx_completion"])
        self.tx_submission = RingQueue("tx_submission", caps["tx_submission"])
        self.tx_completion = RingQueue("tx_completion", caps["tx_completion"])
        # Every queue full plus every transfer in flight plus the one TX transfer being framed.
        count = sum(caps.values()) + self.n_rx + self.n_tx + 1
        # A device that cuts super-frames itself takes one of up to tso_max bytes in a transfer; 64 bytes more
        # cover any driver's descriptor and padding.
        size = max(d.rx_size, d.tx_size + d.tx_headroom, d.tso_max + 64 if d.tx_offloads else 0)
        # The transport's own memory (usbfs: no copy, no kernel buffer per transfer) where buffers are large;
        # USBFS_MEMORY_MIN_SLOT says why not for one-frame buffers.
        chunks = t.transfer_memory(size, count) if size >= USBFS_MEMORY_MIN_SLOT else None
        self.pool = PacketBufferPool(count, size, headroom=d.tx_headroom, chunks=chunks)
        n = self.pool.packet_count
        self._tx_frames = array("I", bytes(4 * n))
        self._tx_bytes = array("Q", bytes(8 * n))
        self._tx_zlp = bytearray(n)
        ep_int = d.binding.ep_int
        # The interrupt transfer is exactly one wMaxPacketSize: a longer one would sit on a full-size packet
        # waiting for more (RNDIS's 8-byte notifications on an 8-byte endpoint never end short), and a CDC
        # speed change split over two transfers is reassembled by the notification parser.
        t.open_pipes(d.binding.ep_in.address, d.binding.ep_out.address, ep_int.address if ep_int else None,
                     self.n_rx, self.n_tx, ep_int.max_packet if ep_int else 16,
                     self._on_rx, self._on_tx, on_interrupt)

    def attach(self, port: TapPort, ifname: str, native: bool = True) -> None:
        """The TAP port exists. With `native`, RX goes through the C path when the driver's framing has one
        and the extension is there; otherwise (and always for the others) through the driver and the port."""
        self.port = port
        self.ifname = ifname
        fast = self.driver.native_rx() if native else None
        self.rx_path = "native" if fast is not None and port.use_native(*fast) else "python"
        # And where the transport lets it, the C path takes the bulk IN completions too: no Python call per
        # received transfer (process() then only calls rx_usb_end once per wake-up).
        self.rx_usb = self.rx_path == "native" and self.transport.arm_native_rx(port.native, fast[0])
        tx = self.driver.native_tx() if native else None
        if tx is not None:
            self.tx_fast = port.native_tx(self.driver.max_frame, *tx, offload=port.offload)
        frame_tx = self.driver.native_frame_tx() if native and self.rx_path == "native" else None
        if frame_tx is not None:
            # One frame per transfer: the C pump reads the TAP, submits and counts completions itself.
            # With TX offloads (TSO) it also cuts the TAP's super-frames into one segment per transfer.
            pump = port.native_frame_tx(*frame_tx, offload=port.offload)
            if pump is not None and self._arm_pump(pump):
                self._set_pump(pump)
                self._frame_tx = pump
        elif self.tx_fast is not None and self.rx_path == "native":
            # NCM: the same, with the C framer building each NTB in the transfer's own buffer.
            pump = port.native_ncm_pump(self.tx_fast)
            if pump is not None and self._arm_pump(pump):
                self._set_pump(pump)
        self._native_tx_wanted = self.tx_fast is not None

    def _arm_pump(self, pump) -> bool:
        """The transport hands the C TX pump the bulk OUT transfers. An NcmPump's NTB buffers go in the
        transport's memory as the pool's do (USBFS_MEMORY_MIN_SLOT): usbfs then neither allocates nor copies a
        kernel buffer per NTB. FrameTx's one-frame buffers keep their own memory."""
        lends = hasattr(pump, "lent") and pump.framer.max_size >= USBFS_MEMORY_MIN_SLOT
        return self.transport.arm_native_tx(pump, pump.framer.max_size if lends else 0)

    def _set_pump(self, pump) -> None:
        self.tx_pump = pump
        self.burst_tx = pump.burst_hooks()  # its entry points for the C event loop (EthernetService.burst)
        # An NcmPump sends partial NTBs too, and says why it sent each (take_flushes); FrameTx's are all full.
        self._pump_flushes = getattr(pump, "take_flushes", None)

    def set_tracer(self, tracer) -> None:
        """Start (a Tracer) or stop (None) recording this instance's frames and transfers, at run time.

        Called from the event loop between wake-ups. While a tracer is attached the data path is the Python
        one, the reference: everything the C path does out of Python's sight is set aside — the C RX decode and
        its bulk IN completions (decoded transfers resubmitted first, then disarmed), the C TX pump and its bulk
        OUT transfers (handed back once none is in flight), the NCM C framer (its open transfer sent, its
        sequence number handed over) — and put back when the trace ends. Raises TraceUnavailable, with
        nothing changed, when the C TX pump cannot hand its transfers back in time."""
        if tracer is not None and self.tracer is None:
            self._release_tx_pump()  # first: the only step that can fail
            if self.rx_usb:
                self._rx_usb_flush()
                self.transport.disarm_native_rx()  # nothing pending: nothing comes back cancelled
                self.rx_usb = False
                self._rx_usb_wanted = True
            self._switch_tx(native=False)
            self.port.set_tracer(tracer)
            self._untrace = trace_transport(self.transport, tracer)
        elif tracer is None and self.tracer is not None:
            if self._untrace is not None:
                self._untrace()
                self._untrace = None
            self.port.set_tracer(None)
            self._switch_tx(native=self._native_tx_wanted)
            if self._rx_usb_wanted and self.port.native is not None:
                self._rx_usb_wanted = False
                self.rx_usb = self.transport.arm_native_rx(self.port.native, self.driver.native_rx()[0])
            self._rearm_tx_pump()
        self.tracer = tracer

    def _rx_usb_flush(self) -> None:
        """What process() does first when the C path takes the bulk IN completions (kept apart from it)."""
        done = self.port.rx_usb_end()
        if done:
            self.rx_transfers_done += done
            self._rx_error_streak = 0

    def _wait_tx_idle(self, idle) -> bool:
        """Let bulk OUT transfers complete (USB events only, nothing else) until `idle()`, for at most
        PUMP_HANDOVER seconds: the C TX pump and the Python pipe can only trade transfers none of which is in
        flight. False when the device did not take them in time."""
        deadline = time.monotonic() + PUMP_HANDOVER
        while not idle():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
            self.transport.handle_events()
        return True

    def _release_tx_pump(self) -> None:
        pump = self.tx_pump
        if pump is None:
            return
        if self._pump_flushes is not None:
            pump.flush(FLUSH_TIMER)  # the partial NTB goes now, as the flush timer would send it
            self._flush_at = None
            self._count_pump_flushes()

        def idle() -> bool:
            self._tx_pump_events()
            return not pump.in_flight

        if not self._wait_tx_idle(idle) or not self.transport.disarm_native_tx():
            raise TraceUnavailable("the device has not taken the bulk OUT transfers in flight, which the C TX "
                                   "pump must hand back first; try again")
        if self._pump_flushes is None:
            # FrameTx: a super-frame's segments it had not sent yet are lost with the hand-over (counted), as
            # NCM's are (the trace starts mid-stream; TCP sends them again)
            self.stats.tx_dropped += pump.drop_pending()
        self.tx_pump = None
        self.burst_tx = None
        self._tx_pump_wanted = pump

    def _rearm_tx_pump(self) -> None:
        pump, self._tx_pump_wanted = self._tx_pump_wanted, None
        if pump is None:
            return
        if self._pump_flushes is not None:
            # NCM: _switch_tx made a new C framer (carrying on the driver's sequence number); pump with it.
            pump = self.port.native_ncm_pump(self.tx_fast) if self.tx_fast is not None else None
            if pump is None:
                return
        if self._tx_packet is not None:
            self._finish_tx(FLUSH_TIMER)
        self._submit_tx()
        if (len(self.tx_submission) or not self._wait_tx_idle(lambda: self.transport.tx_free == self.n_tx)
                or not self._arm_pump(pump)):
            log.info("%s: bulk OUT transfers still in flight: TX stays in Python until the next start",
                     self.ifname)
            return
        self._set_pump(pump)
        self._tap_wants_read = pump.free > 0

    def _switch_tx(self, native: bool) -> None:
        """Hand TX framing between the C framer and the driver's, the transfer being framed sent first."""
        if native == (self.tx_fast is not None):
            return
        if self._tx_packet is not None:
            self._finish_tx(FLUSH_TIMER)  # what is framed goes now, as the flush timer would send it
            self._submit_tx()
        if native:
            tx = self.driver.native_tx()
            self.tx_fast = (self.port.native_tx(self.driver.max_frame, *tx, offload=self.port.offload)
                            if tx is not None else None)
        else:
            self.driver.native_tx_returned(self.tx_fast.sequence)
            self.tx_fast = None

    @property
    def path(self) -> str:
        """Which data path runs: "native" when the C code does RX and, where the framing has it, TX framing.
        Who takes the USB completions (C or Python, by what the transport allows) is `detail()`'s
        rx_completions / tx_completions."""
        if self.tracer is not None:
            return "python"  # set_tracer: the C path is set aside while a trace is attached
        if self.rx_path == "native" and (self.tx_fast is not None or self.driver.native_tx() is None):
            return "native"
        return "python" if self.rx_path == "python" and self.tx_fast is None else "mixed"

    def start(self) -> None:
        """Prime RX: every bulk IN transfer in flight."""
        assert self.pool is not None and self.rx_submission is not None
        for _ in range(self.n_rx):
            p = self.pool.allocate()
            assert p is not None  # the pool was sized for this
            self.rx_submission.enqueue(p)
        self.running = True
        self._submit_rx()

    # ------------------------------------------------------------------ completions (inside handle_events)
    def _on_rx(self, packet: Packet, status: int, actual: int) -> None:
        if self.tracer is not None:
            self.tracer.rx_done(packet.index, status, packet.view, actual)
        if status == STATUS_OK:
            self._rx_error_streak = 0
            packet.length = actual
            self.rx_completion.enqueue(packet)
            return
        if status == STATUS_CANCELLED or not self.running:
            self.pool.deallocate(packet)
            return
        if status == STATUS_NO_DEVICE:
            self.device_gone = True
            self.pool.deallocate(packet)
            return
        self.stats.rx_errors += 1
        self.stats.rx_usb_errors += 1
        self._rx_errors.hit(f"status {status}")
        self.rx_submission.enqueue(packet)
        if status == STATUS_STALL:
            # One halt fails every transfer in flight. usbnet clears EPIPE (EVENT_RX_HALT) instead of counting it
            # towards the error storm, so the halt counts once: only a device that halts again after every
            # clear runs into the throttle.
            if self._stalled_in:
                return
            self._stalled_in = True  # cleared from process(), outside the completion
        self._rx_error_streak += 1
        if self._rx_error_streak > RX_ERROR_STORM and self._rx_paused_until is None:
            # usbnet's throttle: an error storm (EPROTO/ETIME from a flaky link) pauses RX instead of spinning.
            self._rx_paused_until = time.monotonic() + RX_THROTTLE
            self.rx_throttled += 1
            log.warning("%s: %d RX errors in a row; pausing RX for %d ms", self.ifname, self._rx_error_streak,
                        RX_THROTTLE * 1000)

    def _on_tx(self, packet: Packet, status: int) -> None:
        if self.tracer is not None:
            self.tracer.tx_done(packet.index, status, packet.length)
        frames = self._tx_frames[packet.index]
        if status == STATUS_OK:
            self.stats.tx_packets += frames
            self.stats.tx_bytes += self._tx_bytes[packet.index]
        else:
            self.stats.tx_errors += frames
            self.stats.tx_aborted_errors += 1
            if status == STATUS_NO_DEVICE:
                self.device_gone = True
            elif status != STATUS_CANCELLED:
                self._tx_errors.hit(f"status {status}")
                if status == STATUS_STALL:
                    self._stalled_out = True  # cleared from process(); until then every bulk OUT transfer fails
        self.tx_completion.enqueue(packet)

    # ------------------------------------------------------------------ TX: the TAP into transfers
    def on_tap_readable(self, budget: int = TAP_READ_BUDGET) -> None:
        """Frame what the TAP has, reading at most `budget` frames. With TX offloads the segments of a
        super-frame read earlier go first and use no budget (budget 0: only those, process() after a TX
        completion made room for them)."""
        if self.tx_pump is not None:
            self.tx_pump.fill(budget)
            self._tx_pump_events()
            if self._pump_flushes is not None:
                self._pump_flush_timer()
            self._tap_wants_read = self.tx_pump.free > 0
            return
        if self.tx_fast is not None:
            self._tap_readable_native(budget)
            return
        d, port = self.driver, self.port
        read_into = port.read_into
        # Segments of a super-frame not yet framed (offloads done here), or a frame carried over from a full
        # transfer (offloads done by the device); else always empty.
        pending = port.pending
        device = port.device_offloads  # the device cuts and checksums: what it must do is in port.meta
        meta = port.meta
        max_frame = d.max_frame
        drained = False
        while budget or pending:
            p = self._tx_packet or self._open_tx()
            if p is None:
                break
            offset, room = d.tx_slot()
            if room < max_frame:
                if not d.tx_count:
                    break  # cannot happen (drivers size max_frame to an empty transfer); never spin on it
                self._finish_tx(FLUSH_FULL)
                continue
            if pending:
                n = port.next_segment(p.view[offset : offset + room])
                if n == 0:
                    continue  # a carried frame that failed its checks (counted by the port)
            else:
                if not budget:
                    break
                n = read_into(p.view[offset : offset + room])
                if n < 0:
                    if n == CARRIED:
                        # A super-frame larger than the room this transfer has left: it goes first in the next.
                        # Drivers give an empty transfer room for the largest (read_max), so this transfer
                        # holds frames; should it not, the frame is dropped rather than spun on.
                        budget -= 1
                        if d.tx_count:
                            self._finish_tx(FLUSH_FULL)
                        else:
                            self.stats.tx_dropped += port.drop_pending()
                        continue
                    drained = True
                    break
                budget -= 1
                if n == 0:
                    continue  # read and dropped (counted by the port)
            if device:
                self._tx_frames[p.index] += meta.segments  # what the device puts on the wire
                self._tx_bytes[p.index] += meta.wire
                full = d.tx_commit_offload(n, meta)
            else:
                self._tx_frames[p.index] += 1
                self._tx_bytes[p.index] += n
                full = d.tx_commit(n)
            if full:
                self._finish_tx(FLUSH_FULL)
        self._after_tap_read(drained)

    def _tap_readable_native(self, budget: int) -> None:
        """on_tap_readable with the C framer: one call reads as many frames as fit, up to the budget (and
        writes the segments of a super-frame still pending first)."""
        tx, port = self.tx_fast, self.port
        drained = False
        while budget or tx.pending:
            p = self._tx_packet or self._open_tx()
            if p is None:
                break
            read, frames, nbytes, dropped, empty, full, err = tx.fill(budget)
            budget -= read
            if frames:
                self._tx_frames[p.index] += frames
                self._tx_bytes[p.index] += nbytes
            if dropped:
                self.stats.tx_dropped += dropped
            if err:
                port.read_errors.hit(os.strerror(err))
            if full and tx.count:
                self._finish_tx(FLUSH_FULL)
                continue
            if empty:
                drained = True
            break
        self._after_tap_read(drained)

    def _after_tap_read(self, drained: bool) -> None:
        """A partly framed transfer goes now if the TAP is empty and the pipe idle, else within the flush delay."""
        if self._tx_packet is not None and self._tx_count():
            if drained and self.transport.tx_free == self.n_tx:
                self._finish_tx(FLUSH_IDLE)  # the pipe is idle: waiting would only add latency
            elif self._flush_at is None:
                self._flush_at = time.monotonic() + TX_FLUSH_DELAY
        self._tap_wants_read = bool(self.tx_submission.space and self.pool.free_count)

    def _tx_pending(self) -> int:
        """Segments of a TSO super-frame read but not yet framed (TX offloads only)."""
        if self.tx_fast is not None:
            return self.tx_fast.pending
        if self._frame_tx is not None and self.tx_pump is not None:
            return self._frame_tx.pending
        return len(self.port.pending) if self.port else 0

    def _tx_count(self) -> int:
        return self.tx_fast.count if self.tx_fast is not None else self.driver.tx_count

    def _release_tx(self, p: Packet) -> None:
        """A TX packet goes back to the pool unsent (nothing was framed into it)."""
        if self.tx_fast is not None:
            self.tx_fast.abandon()
        self.pool.deallocate(p)

    def _open_tx(self) -> Packet | None:
        """Start framing a new TX transfer, if the tx submission queue and the pool have room for one."""
        if not self.tx_submission.space:
            return None
        p = self.pool.allocate(TX)
        if p is None:
            self.pool_exhausted += 1
            return None
        if self.tx_fast is not None:
            p.offset = 0
            self.tx_fast.begin(p.view)
        else:
            self.driver.tx_begin(p)
        self._tx_packet = p
        self._tx_frames[p.index] = 0
        self._tx_bytes[p.index] = 0
        return p

    def _finish_tx(self, reason: int) -> None:
        p = self._tx_packet
        self._tx_packet = None
        self._flush_at = None
        if p is None:
            return
        if not self._tx_count():
            self._release_tx(p)
            return
        self.tx_flush[reason] += 1
        if self.tx_fast is not None:
            length, zlp = self.tx_fast.finish(), False  # NCM: the layout makes a ZLP unnecessary
        else:
            length, zlp = self.driver.tx_finish()
        p.length = length
        self._tx_zlp[p.index] = zlp
        self.tx_submission.enqueue(p)

    def _send_own(self) -> None:
        """Transfers the driver has of its own (EEM echo responses): each goes out now, as its own transfer,
        after whatever was already framed. Waiting for the host's next frame could mean waiting forever."""
        d = self.driver
        for _ in range(d.own_tx_pending):
            if self._tx_packet is not None:
                if self._tx_count():
                    self._finish_tx(FLUSH_DRIVER)  # the frames framed so far go first, in order
                else:
                    # Opened for frames that never came (the TAP drained): `tx_begin` on a fresh packet is
                    # what takes the driver's own transfer first.
                    self._release_tx(self._tx_packet)
                    self._tx_packet = None
                    self._flush_at = None
            if self._open_tx() is None:
                return  # no room now: the next process() tries again
            self._finish_tx(FLUSH_DRIVER)
            if not d.own_tx_pending:
                return

    # ------------------------------------------------------------------ after every wake-up
    def process(self, now: float) -> None:
        """Move packets along every queue."""
        batch = self._batch
        pool = self.pool
        pump = self.tx_pump
        if pump is not None:
            self._tx_pump_events()
            if self._pump_flushes is None:
                pump.tick()  # FrameTx: a super-frame's segments that waited for free transfers go now
            else:
                # NCM, in the Python path's order below: a completion sends a waiting partial NTB, a super-frame's
                # segments waiting for a transfer go on, then the flush timer. The C event loop does the same
                # with the same state after its own wake-ups, so nothing is done twice.
                pump.tick()
                self._pump_flush_timer()
                self._count_pump_flushes()
        if self.rx_usb:
            # The C path decoded this wake-up's completions inside handle_events; write what GRO holds and
            # resubmit their transfers. What it left (errors, halts) came through _on_rx as always.
            done = self.port.rx_usb_end()
            if done:
                self.rx_transfers_done += done
                self._rx_error_streak = 0
        # RX: decode each completed transfer into the port, then recycle its packet. A transfer of no bytes is a
        # zero-length packet that came on its own: the end of data whose last packet was a full one (USB 2.0
        # §5.8.3; CDC ECM 1.2 §3.3.1, segment delineation), which the transfer before it already ended. It
        # carries nothing, so no framing sees it and nothing counts it as a runt. QEMU's usb-net sends one after
        # every frame whose length is a multiple of 64, and its host controllers hand the whole frame over in
        # one go, so that ZLP is a transfer of its own. usb_complete in the C path skips it the same way.
        if self.rx_completion.dequeue_batch(batch):
            self.rx_transfers_done += len(batch)
            rx_q, port = self.rx_submission, self.port
            fast = port.rx_native
            if fast is not None:
                # The C path: the same decode, GRO and writes as below, one call per transfer.
                for p in batch:
                    if p.length > 0:  # (libusb never reports a negative length; C skips one too)
                        fast(p.view, p.length)
                    p.length = 0
                    rx_q.enqueue(p)
                port.rx_native_end()  # before any of these buffers is submitted again
            else:
                decode, begin = self.driver.rx_decode, port.rx_begin
                for p in batch:
                    if p.length > 0:
                        begin(p.view)
                        decode(p.view, p.length, port)
                    p.length = 0
                    rx_q.enqueue(p)
                port.rx_end()  # before any of these buffers is submitted again
            batch.clear()
        if self._stalled_in:
            self._stalled_in = False
            if self.transport.clear_halt(self.driver.binding.ep_in.address):
                log.info("%s: bulk IN endpoint stalled; halt cleared", self.ifname)
        if self._stalled_out:
            self._stalled_out = False
            if self.transport.clear_halt(self.driver.binding.ep_out.address):
                log.info("%s: bulk OUT endpoint stalled; halt cleared", self.ifname)
        if self.transport.gone:
            self.device_gone = True
            return
        if self._rx_paused_until is not None and now >= self._rx_paused_until:
            self._rx_paused_until = None
            self._rx_error_streak = 0
        if self._rx_paused_until is None:
            self._submit_rx()
        # TX completions back to the pool; a free pipe may flush a waiting partial transfer.
        if self.tx_completion.dequeue_batch(batch):
            pool.deallocate_batch(batch)
            batch.clear()
            if self._tx_packet is not None and self._tx_count():
                self._finish_tx(FLUSH_COMPLETION)
            if self._tx_pending():
                # A super-frame's segments were waiting for room (the pool or the queue ran out while they were
                # framed); the TAP may have nothing more to say, so poll() would never bring us back for them.
                self.on_tap_readable(0)
        if self._flush_at is not None and now >= self._flush_at and pump is None:
            self._finish_tx(FLUSH_TIMER)
        if self.driver.own_tx_pending:
            self._send_own()
        self._submit_tx()
        if self.tx_pump is not None:
            self._tap_wants_read = self.tx_pump.free > 0
        else:
            self._tap_wants_read = bool(self.tx_submission.space and pool.free_count)

    def _count_pump_flushes(self) -> None:
        for reason, n in enumerate(self._pump_flushes()):  # the NcmPump's FLUSH_FULL .. FLUSH_TIMER
            self.tx_flush[reason] += n

    def _pump_flush_timer(self) -> None:
        """The NcmPump's flush timer (armed as _after_tap_read arms it: TX_FLUSH_DELAY after the fill that left a
        partial NTB), for due() to wake the loop."""
        self._flush_at = self.tx_pump.flush_deadline

    def _tx_pump_events(self) -> None:
        """What the C TX pump saw since the last wake-up: its counts into `stats`, errors into the burst log,
        a halt for process() to clear (as _on_tx flags it), a gone device."""
        submitted, _, failed, last_status, read_failed, read_errno, stalled, gone = \
            self.tx_pump.add_to(self.stats)
        if self._pump_flushes is None:
            self.tx_flush[FLUSH_FULL] += submitted  # every FrameTx transfer is one whole frame, "full" as ECM's are
        else:
            self._count_pump_flushes()
        if failed:
            self._tx_errors.hit(f"status {last_status}", failed)
        if read_failed:
            self.port.read_errors.hit(os.strerror(read_errno), read_failed)
        if stalled:
            self._stalled_out = True
        if gone:
            self.device_gone = True

    def _submit_rx(self) -> None:
        q = self.rx_submission
        size = self.driver.rx_size
        while len(q):
            if not self.transport.submit_rx(q.peek(), size):
                break
            q.dequeue()

    def _submit_tx(self) -> None:
        q = self.tx_submission
        zlp = self._tx_zlp
        while len(q):
            p = q.peek()
            if not self.transport.submit_tx(p, p.length, bool(zlp[p.index])):
                break
            q.dequeue()

    def wants_tap_read(self) -> bool:
        return self.running and self._tap_wants_read

    def due(self) -> float | None:
        """The monotonic time process() must run by even without events (flush timer, RX throttle)."""
        due = [t for t in (self._flush_at, self._rx_paused_until) if t is not None]
        return min(due) if due else None

    # ------------------------------------------------------------------ status and teardown
    def detail(self) -> dict:
        """The data path's part of `usbnetd stats`."""
        st: dict = {}
        tx_transfers = sum(self.tx_flush)
        stats = self.stats
        st["rx_transfers"] = self.rx_transfers_done
        st["rx_completions"] = "native" if self.rx_usb else "python"
        st["tx_completions"] = "native" if self.tx_pump is not None else "python"
        st["tx_transfers"] = tx_transfers
        st["rx_frames_per_transfer"] = (round(stats.rx_packets / self.rx_transfers_done, 2)
                                        if self.rx_transfers_done else 0)
        st["tx_frames_per_transfer"] = round(stats.tx_packets / tx_transfers, 2) if tx_transfers else 0
        st["tx_flush"] = dict(zip(FLUSH_NAMES, self.tx_flush, strict=True))
        # usbfs: the pool's buffers are usbfs memory (usb/engine.transfer_memory), so the kernel copies none of the
        # transfers they carry; tx_pump_memory says the same of the C TX pump's own buffers (_arm_pump).
        st["transfer_memory"] = "usbfs" if self.pool is not None and self.pool.shared else "copied"
        if self.tx_pump is not None:
            st["tx_pump_memory"] = "usbfs" if getattr(self.tx_pump, "lent", False) else "copied"
        if self.pool is not None:
            st["pool"] = {"packets": self.pool.packet_count, "buffer_size": self.pool.buffer_size,
                          "in_use": self.pool.in_use, "exhausted": self.pool_exhausted}
            st["queues"] = {q.name: {"capacity": q.capacity, "high_water": q.high}
                            for q in (self.rx_submission, self.rx_completion, self.tx_submission,
                                      self.tx_completion)}
            st["in_flight"] = {"rx": self.n_rx, "tx": self.n_tx}
        else:
            st["in_flight"] = {}
        st["rx_throttled"] = self.rx_throttled
        st["tx_offload"] = self.offload_stats()
        return st

    @property
    def offload_in_c(self) -> bool:
        """Whether C code takes the TAP's TX offloads: the NCM framer, or the pump for one frame per transfer."""
        return self.tx_fast is not None or self._frame_tx is not None

    def offload_stats(self) -> dict:
        """TX offloads (TSO, checksum completion): on or off, who does them, and what they did."""
        port = self.port
        device = port.device_offloads if port is not None else 0
        on = port is not None and (port.offload or bool(device))
        # Whoever cut and completed: the C framer (NCM), the C pump (one frame per transfer), and the port
        # (the Python path, e.g. while a trace runs; with device offloads only what the device could not);
        # each counts only what it did.
        srcs = [x for x in (port, self.tx_fast, self._frame_tx) if x is not None] if on else []
        st = {"enabled": on,
              "tso_superframes": sum(x.tso_superframes for x in srcs),
              "tso_segments": sum(x.tso_segments for x in srcs),
              "csum_completed": sum(x.csum_completed for x in srcs),
              "dropped": sum(x.offload_dropped for x in srcs)}
        if device:
            # The device's own offloads (a vendor chip's TSO and checksum engine): what was left to it.
            st["device_offloads"] = gso_names(device)
            st["device_superframes"] = port.device_tso
            st["device_csum"] = port.device_csum
        return st

    def teardown(self) -> int:
        """Cancel and reap every transfer, then return every packet to the pool. Returns how many transfers
        could not be reaped (0 when all came back)."""
        self.running = False
        if self.rx_usb:
            self.rx_usb = False
            self.transport.disarm_native_rx()  # what the C path decoded comes back through _on_rx, cancelled
        left = self.transport.stop()
        if self.tx_pump is not None:
            self._tx_pump_events()  # the cancellations stop() reaped count as Python's _on_tx counts them
        pool = self.pool
        if pool is None:
            return left
        batch = self._batch
        for queue in (self.rx_submission, self.rx_completion, self.tx_submission, self.tx_completion):
            if queue is not None:
                queue.dequeue_batch(batch)
        if self._tx_packet is not None:
            if self.tx_fast is not None:
                self.tx_fast.abandon()
            batch.append(self._tx_packet)
            self._tx_packet = None
        if self.port is not None:  # segments of a super-frame never framed
            dropped = self.tx_fast.drop_pending() if self.tx_fast is not None else self.port.drop_pending()
            if self._frame_tx is not None:
                dropped += self._frame_tx.drop_pending()
            self.stats.tx_dropped += dropped
        pool.deallocate_batch(batch)
        batch.clear()
        if pool.in_use:
            log.error("teardown: %d of %d packets did not come back to the pool (%d transfers unreaped)",
                      pool.in_use, pool.packet_count, left)
        else:
            log.info("teardown: every packet back in the pool (%d)", pool.packet_count)
        return left
