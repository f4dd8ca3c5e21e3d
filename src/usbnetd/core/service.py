"""The Ethernet service: one USB network function brought up, driven and torn down.

Shaped after NetworkingDriverKit's IOUserNetworkEthernet. `start()` claims the interfaces (detaching a kernel
driver and remembering it), lets the protocol driver negotiate, sizes the packet pool and the four ring
queues, creates the TAP, starts the interrupt pipe *before* selecting the data alt setting (f_ecm reports the
link at that moment and a late poll misses it), primes RX and goes RUNNING. The event loop (daemon.py) calls
`on_usb()`, `on_tap_readable()` and `process()`; completions only move packets between queues, `process()`
does the work in batches. `stop()` reaps every transfer and returns every packet to the pool before the
handle is closed, then removes the TAP.

One frame's way (see docs/design.md):
  RX: bulk IN completes -> rx completion queue -> driver.rx_decode -> TAP write -> rx submission -> bulk IN
  TX: TAP read straight into the transfer being framed -> tx submission -> bulk OUT -> tx completion -> pool
"""

from __future__ import annotations

import enum
import logging
import os
import time
from array import array

from ..netdev.gro import VNET_HDR_LEN, ZERO_HDR, Coalescer
from ..netdev.reconciler import LinkFollower
from ..netdev.tap import Tap, TapError, mac_to_str
from ..protocols import cdc
from ..protocols.driver import LinkEvent, ProtocolDriver
from ..usb.transport import STATUS_CANCELLED, STATUS_NO_DEVICE, STATUS_OK, STATUS_STALL, Transport
from .pool import TX, Packet, PacketBufferPool
from .queues import RingQueue
from .stats import Stats

log = logging.getLogger(__name__)

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
# usbnet keeps about 60 full-size frames of memory in flight per direction at high speed, x5 at SuperSpeed.
INFLIGHT_BYTES = 60 * 1518


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


class BurstLog:
    """Log an error once per burst: the first occurrence, then a summary at most every `interval` seconds."""

    def __init__(self, what: str, interval: float = 5.0) -> None:
        self.what = what
        self.interval = interval
        self.count = 0
        self._last = 0.0

    def hit(self, detail: object = "") -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            log.warning("%s (%s); %d so far", self.what, detail, self.count)
            self._last = now


class EthernetService:
    def __init__(self, transport: Transport, driver: ProtocolDriver, ifname: str | None = None,
                 mac: bytes | None = None, mtu: int | None = None, name_for=None, persistent: bool = False,
                 rx_transfers: int = 0, tx_transfers: int = 0, gro: bool = True) -> None:
        self.name_for = name_for or default_ifname  # interface name from the MAC when none was given
        self.persistent = persistent
        self.rx_transfers, self.tx_transfers = rx_transfers, tx_transfers
        self.transport = transport
        self.driver = driver
        self.stats = driver.stats if driver.stats is not None else Stats()
        self.requested_ifname = ifname
        self.requested_mac = mac
        self.requested_mtu = mtu
        self.state = State.STOPPED
        self.link = False
        self.speed_mbps: int | None = None
        self.tap: Tap | None = None
        self.pool: PacketBufferPool | None = None
        self.device_gone = False
        self._tx_packet: Packet | None = None
        self._flush_at: float | None = None
        self._batch: list[Packet] = []
        self._rx_errors = BurstLog("bulk IN transfers failing")
        self._tx_errors = BurstLog("bulk OUT transfers failing")
        self._tap_errors = BurstLog("TAP write failing")
        self._tap_wants_read = True
        self._torn_down = False
        self.tx_flush = array("Q", bytes(8 * len(FLUSH_NAMES)))
        self._rx_error_streak = 0
        self._rx_paused_until: float | None = None
        self._stalled_in = False
        self._stalled_out = False
        self._driver_poll_at = 0.0
        self.rx_throttled = 0
        self.rx_transfers = 0
        self.pool_exhausted = 0
        self._ignore_link = False
        self.interface_gone = False
        self.failure: str | None = None  # why the service stopped itself (a device that stopped answering)
        self.follower: LinkFollower | None = None
        # GRO needs the TAP's vnet header; then every TAP read starts with one (read into _vnet_in, ignored:
        # with no offloads the kernel only hands us whole frames with their checksums done).
        self.gro = gro
        self._vnet = VNET_HDR_LEN if gro else 0
        self._vnet_in = bytearray(VNET_HDR_LEN)
        self._coalescer = Coalescer(self.stats, self._tap_write_failed)

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        if self.state is not State.STOPPED:
            raise RuntimeError(f"cannot start a service that is {self.state.value}")
        self.state = State.STARTING
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.state = State.RUNNING

    def _start(self) -> None:
        d, t = self.driver, self.transport
        d.on_link = self.apply_link_event
        d.kick_tx = self._kick_tx
        d.deliver = self._deliver
        d.claim()
        d.bind()
        mac = self.requested_mac or d.mac or cdc.random_local_mac()
        self.mac = mac

        speed_factor = 5 if t.identity.speed_mbps >= 5000 else 1
        self.n_rx = self.rx_transfers or max(4, min(64, INFLIGHT_BYTES * speed_factor // d.rx_size))
        self.n_tx = self.tx_transfers or max(4, min(64, INFLIGHT_BYTES * speed_factor // d.tx_size))
        caps = {
            "rx_submission": self.n_rx,
            "rx_completion": self.n_rx,
            "tx_submission": 2 * self.n_tx,
            "tx_completion": self.n_tx,
        }
        self.rx_submission: RingQueue[Packet] = RingQueue("rx_submission", caps["rx_submission"])
        self.rx_completion: RingQueue[Packet] = RingQueue("rx_completion", caps["rx_completion"])
        self.tx_submission: RingQueue[Packet] = RingQueue("tx_submission", caps["tx_submission"])
        self.tx_completion: RingQueue[Packet] = RingQueue("tx_completion", caps["tx_completion"])
        # Every queue full plus every transfer in flight plus the one TX transfer being framed.
        count = sum(caps.values()) + self.n_rx + self.n_tx + 1
        size = max(d.rx_size, d.tx_size + d.tx_headroom)
        self.pool = PacketBufferPool(count, size, headroom=d.tx_headroom)
        n = self.pool.packet_count
        self._tx_frames = array("I", bytes(4 * n))  # frames framed into each TX packet
        self._tx_bytes = array("Q", bytes(8 * n))  # their Ethernet bytes (not the NTB's)
        self._tx_zlp = bytearray(n)  # whether the driver wants a ZLP after each TX transfer

        ep_int = d.binding.ep_int
        # The interrupt transfer is exactly one wMaxPacketSize: a longer one would sit on a full-size packet
        # waiting for more (RNDIS's 8-byte notifications on an 8-byte endpoint never end short), and a CDC
        # speed change split over two transfers is reassembled by the notification parser.
        t.open_pipes(d.binding.ep_in.address, d.binding.ep_out.address, ep_int.address if ep_int else None,
                     self.n_rx, self.n_tx, ep_int.max_packet if ep_int else 16,
                     self._on_rx, self._on_tx, self._on_interrupt)

        mtu = self.requested_mtu or (d.max_frame - ETH_HLEN)
        if mtu + ETH_HLEN > d.max_frame:
            raise TapError(f"MTU {mtu} is more than the device takes (at most {d.max_frame - ETH_HLEN})")
        self.device_mac = d.mac or mac  # the address the device filters for (devices without one don't filter)
        self.tap = Tap(self.requested_ifname or self.name_for(mac), mac, mtu, persistent=self.persistent,
                       vnet_hdr=self._vnet)
        self.ifname = self.tap.name
        if self.tap.reused:
            log.info("%s taken over from an earlier run (its addresses and routes are kept)", self.ifname)
        quirks = d.options.quirks
        self._ignore_link = "ignore-link" in quirks
        if ep_int is None or self._ignore_link:
            self._set_link(True)  # no (trusted) notifications: the link is as up as the bus
        t.start_interrupt()
        d.activate()
        if "no-packet-filter" not in quirks:
            d.set_packet_filter(cdc.packet_filter_bits(promisc=False, allmulti=True, multicast=True))
        self.tap.up()
        self.follower = LinkFollower(self)
        for _ in range(self.n_rx):
            p = self.pool.allocate()
            assert p is not None  # the pool was sized for this
            self.rx_submission.enqueue(p)
        self._submit_rx()
        log.info("%s: %s (%s) on %s, MAC %s, MTU %d, %d RX x %d B, %d TX x %d B", self.ifname, d.name,
                 d.framing, t.identity.busid, mac_to_str(mac), mtu, self.n_rx, d.rx_size, self.n_tx, d.tx_size)

    # ------------------------------------------------------------------ completions (inside handle_events)
    def _on_rx(self, packet: Packet, status: int, actual: int) -> None:
        if status == STATUS_OK:
            self._rx_error_streak = 0
            packet.length = actual
            self.rx_completion.enqueue(packet)
            return
        if status == STATUS_CANCELLED or self.state is not State.RUNNING:
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
            log.warning("%s: %d RX errors in a row; pausing RX for %d ms", getattr(self, "ifname", "?"),
                        self._rx_error_streak, RX_THROTTLE * 1000)

    def _on_tx(self, packet: Packet, status: int) -> None:
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

    def _on_interrupt(self, view: memoryview, length: int) -> None:
        self.stats.notifications += 1
        event = self.driver.notification(view, length)
        if event is not None:
            self.apply_link_event(event)

    def apply_link_event(self, event: LinkEvent) -> None:
        if event.connected is not None and not self._ignore_link:
            self._set_link(event.connected)
        if event.down_bps is not None:
            speed = event.down_bps // 1_000_000
            if speed != self.speed_mbps:
                self.speed_mbps = speed
                log.info("%s: link speed %d Mbit/s", getattr(self, "ifname", "?"), speed)

    def _set_link(self, up: bool) -> None:
        if up == self.link:
            return  # some devices repeat NETWORK_CONNECTION every 32 ms: act only on change
        self.link = up
        if self.tap is not None:
            self.tap.set_carrier(up)
        log.info("%s: link %s", getattr(self, "ifname", "?"), "up" if up else "down")

    # ------------------------------------------------------------------ event-loop entry points
    def on_usb(self) -> None:
        self.transport.handle_events()

    def _emit_rx(self, offset: int, length: int) -> None:
        """The decoders' emit without GRO: one frame of the RX transfer being decoded to the TAP."""
        try:
            os.write(self._tap_fd, self._rx_view[offset : offset + length])
        except OSError as exc:
            self._tap_write_failed(exc)
            return
        stats = self.stats
        stats.rx_packets += 1
        stats.rx_bytes += length

    def _tap_write_failed(self, exc: OSError) -> None:
        # BlockingIOError (queue full) or EIO (interface down): the frame is dropped, never raised.
        self.stats.rx_dropped += 1
        self._tap_errors.hit(exc.strerror)

    def _deliver(self, view: memoryview, offset: int, length: int) -> None:
        """One received frame to the TAP from outside the decoders' emit (RNDIS's carried message)."""
        try:
            if self._vnet:
                self._coalescer.flush()  # what was collected before this frame goes first
                os.writev(self.tap.fd, (ZERO_HDR, view[offset : offset + length]))
            else:
                os.write(self.tap.fd, view[offset : offset + length])
        except OSError as exc:
            self._tap_write_failed(exc)
            return
        self.stats.rx_packets += 1
        self.stats.rx_bytes += length

    def on_tap_readable(self) -> None:
        d, pool = self.driver, self.pool
        fd = self.tap.fd
        max_frame = d.max_frame
        vnet, vnet_in = self._vnet, self._vnet_in
        budget = TAP_READ_BUDGET
        drained = False
        while budget:
            p = self._tx_packet or self._open_tx()
            if p is None:
                break
            offset, room = d.tx_slot()
            if room < max_frame:
                self._finish_tx(FLUSH_FULL)
                continue
            try:
                n = (os.readv(fd, (vnet_in, p.view[offset : offset + room])) - vnet if vnet
                     else os.readv(fd, (p.view[offset : offset + room],)))
            except BlockingIOError:
                drained = True
                break
            except OSError as exc:
                self._tap_errors.hit(exc.strerror)
                drained = True
                break
            budget -= 1
            if n < ETH_HLEN or n > max_frame:
                # Larger than the device takes (the user raised the MTU past it) or not Ethernet at all.
                self.stats.tx_dropped += 1
                continue
            self._tx_frames[p.index] += 1
            self._tx_bytes[p.index] += n
            if d.tx_commit(n):
                self._finish_tx(FLUSH_FULL)
        if self._tx_packet is not None and d.tx_count:
            if drained and self.transport.tx_free == self.n_tx:
                self._finish_tx(FLUSH_IDLE)  # the pipe is idle: waiting would only add latency
            elif self._flush_at is None:
                self._flush_at = time.monotonic() + TX_FLUSH_DELAY
        self._tap_wants_read = bool(self.tx_submission.space and pool.free_count)

    def _open_tx(self) -> Packet | None:
        """Start framing a new TX transfer, if the tx submission queue and the pool have room for one."""
        if not self.tx_submission.space:
            return None
        p = self.pool.allocate(TX)
        if p is None:
            self.pool_exhausted += 1
            return None
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
        if not self.driver.tx_count:
            self.pool.deallocate(p)
            return
        self.tx_flush[reason] += 1
        length, zlp = self.driver.tx_finish()
        p.length = length
        self._tx_zlp[p.index] = zlp
        self.tx_submission.enqueue(p)

    def _kick_tx(self) -> None:
        """The driver has something of its own to send (an EEM echo response): start a transfer for it."""
        if self.state is State.RUNNING and (self._tx_packet or self._open_tx()):
            self._finish_tx(FLUSH_DRIVER)  # if no transfer can be had now, the next one carries it

    def send(self, frame: bytes) -> bool:
        """Queue one frame for the device from inside usbnetd (tests, diagnostics). Refused unless RUNNING."""
        if self.state is not State.RUNNING or not (ETH_HLEN <= len(frame) <= self.driver.max_frame):
            self.stats.tx_dropped += 1
            return False
        p = self._tx_packet or self._open_tx()
        if p is None:
            self.stats.tx_dropped += 1
            return False
        offset, room = self.driver.tx_slot()
        if room < len(frame):
            self._finish_tx(FLUSH_FULL)
            return self.send(frame)
        p.view[offset : offset + len(frame)] = frame
        self._tx_frames[p.index] += 1
        self._tx_bytes[p.index] += len(frame)
        self.driver.tx_commit(len(frame))
        self._finish_tx(FLUSH_DRIVER)  # an injected frame goes out now rather than waiting for the flush timer
        self.process()
        return True

    def process(self) -> None:
        """Move packets along every queue; called by the loop after any wake-up."""
        if self.state is not State.RUNNING:
            return
        batch = self._batch
        pool = self.pool
        # RX: decode each completed transfer into the TAP, then recycle its packet.
        if self.rx_completion.dequeue_batch(batch):
            self._tap_fd = self.tap.fd
            self.rx_transfers += len(batch)
            decode, rx_q = self.driver.rx_decode, self.rx_submission
            if self._vnet:
                co = self._coalescer
                co.fd = self._tap_fd
                for p in batch:
                    co.view = p.view
                    decode(p.view, p.length, co.emit)
                    p.length = 0
                    rx_q.enqueue(p)
                co.flush()  # before any of these buffers is submitted again
                co.view = None
            else:
                for p in batch:
                    self._rx_view = p.view
                    decode(p.view, p.length, self._emit_rx)
                    p.length = 0
                    rx_q.enqueue(p)
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
        if self._rx_paused_until is not None:
            if time.monotonic() >= self._rx_paused_until:
                self._rx_paused_until = None
                self._rx_error_streak = 0
        if self._rx_paused_until is None:
            self._submit_rx()
        # TX completions back to the pool; a free pipe may flush a waiting partial transfer.
        if self.tx_completion.dequeue_batch(batch):
            pool.deallocate_batch(batch)
            batch.clear()
            if self._tx_packet is not None and self.driver.tx_count:
                self._finish_tx(FLUSH_COMPLETION)
        now = time.monotonic()
        if self._flush_at is not None and now >= self._flush_at:
            self._finish_tx(FLUSH_TIMER)
        if now >= self._driver_poll_at:
            self._driver_poll_at = now + 1.0
            self.transport.watchdog(now)
            failure = self.driver.poll(now)
            if failure:
                log.error("%s: %s; stopping", self.ifname, failure)
                self.failure = f"{self.ifname}: {failure}"  # the instance ends in error: a supervisor restarts it
                self.state = State.STOPPING  # the loop sees it and tears down
                return
        if now >= self.follower.next_check:
            self.follower.reconcile()
        self._submit_tx()
        self._tap_wants_read = bool(self.tx_submission.space and pool.free_count)

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
        return self.state is State.RUNNING and self._tap_wants_read

    def timeout(self) -> float | None:
        """Seconds until the loop must call process() even without events (flush timer, RX throttle)."""
        if self.transport.pending():
            return 0.0
        due = [t for t in (self._flush_at, self._rx_paused_until) if t is not None]
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def poll_fds(self) -> list[tuple[int, int]]:
        return self.transport.poll_fds()

    def fd_handlers(self) -> dict:
        """File descriptors of the service's own (not USB, not the TAP) and what to call when readable."""
        return {self.follower.fileno(): self.follower.on_readable}

    # ------------------------------------------------------------------ status and teardown
    def status(self) -> dict:
        st = {
            "busid": self.transport.identity.busid,
            "ifname": getattr(self, "ifname", self.requested_ifname),
            "protocol": self.driver.name,
            "state": self.state.value,
            "link": "up" if self.link else "down",
            "speed_mbps": self.speed_mbps,
            "mac": mac_to_str(self.mac) if getattr(self, "mac", None) else None,
            "mtu": None,
        }
        if self.tap is not None:
            try:
                st["mtu"] = self.tap.state()["mtu"]
            except Exception:  # noqa: BLE001 - status must answer even if netlink hiccups
                st["mtu"] = self.tap.mtu
        st.update(self.stats.as_dict())
        if self.pool is not None:
            st["pool_packets"] = self.pool.packet_count
            st["pool_in_use"] = self.pool.in_use
        return st

    def detailed_stats(self) -> dict:
        """Everything `usbnetd stats` shows: status, error causes, batching, flush reasons, pool, queues."""
        st = self.status()
        tx_transfers = sum(self.tx_flush)
        st["protocol_detail"] = self.driver.framing
        st["rx_transfers"] = self.rx_transfers
        st["tx_transfers"] = tx_transfers
        st["rx_frames_per_transfer"] = round(self.stats.rx_packets / self.rx_transfers, 2) if self.rx_transfers else 0
        st["tx_frames_per_transfer"] = round(self.stats.tx_packets / tx_transfers, 2) if tx_transfers else 0
        st["tx_flush"] = dict(zip(FLUSH_NAMES, self.tx_flush, strict=True))
        if self.pool is not None:
            st["pool"] = {"packets": self.pool.packet_count, "buffer_size": self.pool.buffer_size,
                          "in_use": self.pool.in_use, "exhausted": self.pool_exhausted}
            st["queues"] = {q.name: {"capacity": q.capacity, "high_water": q.high}
                            for q in (self.rx_submission, self.rx_completion, self.tx_submission,
                                      self.tx_completion)}
        st["in_flight"] = {"rx": self.n_rx, "tx": self.n_tx} if self.pool is not None else {}
        st["rx_throttled"] = self.rx_throttled
        st["rx_gro"] = {"enabled": self.gro, "superframes": self._coalescer.superframes,
                        "segments": self._coalescer.merged}
        return st

    def stop(self, remove_interface: bool = True) -> None:
        """Tear down. `remove_interface` False keeps a persistent TAP (a restart or an unplug, not a detach)."""
        if self._torn_down:
            return  # a failed start already tore down; the caller's own stop() must be harmless
        self._torn_down = True
        self.state = State.STOPPING
        t = self.transport
        left = t.stop()
        pool = self.pool
        if pool is not None:
            batch = self._batch
            for q in ("rx_submission", "rx_completion", "tx_submission", "tx_completion"):
                queue = getattr(self, q, None)
                if queue is not None:
                    queue.dequeue_batch(batch)
            if self._tx_packet is not None:
                batch.append(self._tx_packet)
                self._tx_packet = None
            pool.deallocate_batch(batch)
            batch.clear()
            if pool.in_use:
                log.error("teardown: %d of %d packets did not come back to the pool (%d transfers unreaped)",
                          pool.in_use, pool.packet_count, left)
            else:
                log.info("teardown: every packet back in the pool (%d)", pool.packet_count)
        if not self.device_gone:
            self.driver.deactivate()
        t.close()
        if getattr(self, "follower", None) is not None:
            self.follower.close()
            self.follower = None
        if self.tap is not None:
            self.tap.close(remove=remove_interface)
            self.tap = None
        self.state = State.STOPPED


def default_ifname(mac: bytes) -> str:
    """Like the kernel's predictable names for USB NICs: enx + the MAC, 15 characters."""
    return "enx" + mac.hex()

