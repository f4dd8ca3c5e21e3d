"""The Ethernet service: one USB network function brought up, driven and torn down.

Shaped after NetworkingDriverKit's IOUserNetworkEthernet, it orchestrates three parts and owns none of
their work:
- the data path (datapath.py): pool, four ring queues, transfers, TX framing and RX decoding;
- link state (link.py): carrier and speed from the device, the reconciler from the user;
- the TAP port (netdev/port.py): every frame to and from the host.

`start()` claims the interfaces (detaching a kernel driver and remembering it), lets the protocol driver
negotiate, sizes the data path and opens the pipes, creates the TAP, starts the interrupt pipe *before*
selecting the data alt setting (f_ecm reports the link at that moment and a late poll misses it), brings
the interface up, primes RX and goes RUNNING. The event loop (app/daemon.py) calls `on_usb()`,
`on_tap_readable()` and `process()`. `stop()` reaps every transfer and returns every packet to the pool
before the handle is closed, then removes the TAP.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

from .. import native as native_module
from ..netdev.gro import VNET_HDR_LEN
from ..netdev.gso import OFFLOADS, TUN_F_TSO4, TUN_F_TSO6, offload_names
from ..netdev.port import TapPort
from ..netdev.tap import Tap, TapError, mac_to_str
from ..protocols import cdc
from ..protocols.driver import DriverFlag, ProtocolDriver, Quirk
from ..usb.transport import Transport
from .datapath import ETH_HLEN, DataPath
from .link import LinkState
from .stats import Stats

log = logging.getLogger(__name__)

DRIVER_POLL_PERIOD = 1.0  # seconds between driver.poll() and transport.watchdog() calls


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


TapFactory = Callable[..., Tap]  # (name, mac, mtu, persistent=, vnet_hdr=) -> a Tap; tests pass a fake


def default_ifname(mac: bytes) -> str:
    """Like the kernel's predictable names for USB NICs: enx + the MAC, 15 characters."""
    return "enx" + mac.hex()


class EthernetService:
    def __init__(self, transport: Transport, driver: ProtocolDriver, ifname: str | None = None,
                 mac: bytes | None = None, mtu: int | None = None,
                 name_for: Callable[[bytes], str] | None = None, persistent: bool = False,
                 rx_transfers: int = 0, tx_transfers: int = 0, gro: bool = True,
                 tap_factory: TapFactory = Tap, native: bool = True, tso: bool = True,
                 tso_python: bool = False) -> None:
        self.transport = transport
        self.driver = driver
        self.stats = driver.stats if driver.stats is not None else Stats()
        self.name_for = name_for or default_ifname  # interface name from the MAC when none was given
        self.persistent = persistent
        self.gro = gro
        # TX offloads from the TAP (TSO, checksum completion; netdev/gso.py): with the C NCM framer or the C pump
        # for one frame per transfer only, unless tso_python (the Python reference path with offloads: tests,
        # comparisons). In Python, cutting a super-frame costs 3-4x the reads it saves
        # (bench/micro/tso_segment.py, docs/performance.md).
        self.tso = tso
        self.tso_python = tso_python
        self.requested_ifname = ifname
        self.requested_mac = mac
        self.requested_mtu = mtu
        self.tap_factory = tap_factory
        self.native = native  # the C fast path where it is available (usbnetd.native); False: Python only
        self.state = State.STOPPED
        self.ifname: str | None = None
        self.mac: bytes | None = None  # the interface's MAC at start (link.mac follows the user's changes)
        self.device_mac: bytes | None = None
        self.tap: Tap | None = None
        self.port: TapPort | None = None
        self.datapath = DataPath(transport, driver, self.stats, rx_transfers, tx_transfers)
        no_source = driver.binding.ep_int is None and not driver.flags & DriverFlag.LINK_POLLED
        follow = not (driver.flags & DriverFlag.NO_LINK_STATE or no_source
                      or driver.options.quirks & Quirk.IGNORE_LINK)
        self.link = LinkState(follow_device=follow)
        self.failure: str | None = None  # why the service stopped itself (a device that stopped answering)
        self._driver_poll_at = 0.0
        self._torn_down = False

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
        d.claim()
        d.bind()
        mac = self.requested_mac or d.mac or cdc.random_local_mac()
        self.mac = mac
        self.datapath.setup(self._on_interrupt)

        mtu = self.requested_mtu or d.default_mtu or (d.max_frame - ETH_HLEN)
        if mtu + ETH_HLEN > d.max_frame:
            raise TapError(f"MTU {mtu} is more than the device takes (at most {d.max_frame - ETH_HLEN})")
        if d.default_mtu is not None and mtu != d.default_mtu:
            d.change_mtu(mtu + ETH_HLEN)  # a chip with modes (jumbo) is told; the others need nothing
        self.device_mac = d.mac or mac  # the address the device filters for (devices without one don't filter)
        if d.flags & DriverFlag.MAC_SETTABLE and d.mac is not None and mac != d.mac:
            log.info("telling the device its new MAC %s: %s", mac_to_str(mac), d.change_mac(mac))
            self.device_mac = mac
        # GRO only where the C path does RX. Merged segments must be verified first (their checksums), and in
        # Python that costs more per segment than the writes GRO saves: measured on the simulated adapter,
        # receive fell from 1.2 Gbit/s unmerged to 0.6 verified-and-merged (docs/performance.md).
        native_rx = self.native and native_module.AVAILABLE and d.native_rx() is not None
        if self.gro and not native_rx:
            log.info("GRO is off: it runs only in the C fast path (%s)", self._why_python())
            self.gro = False
        offload = self.tso and (d.native_tx() is not None or d.native_frame_tx() is not None) and (
            self.tso_python or (self.native and native_module.AVAILABLE))
        # A chip that cuts super-frames and fills checksums itself (the vendor drivers' tx_offloads): the TAP
        # hands it what the kernel would hand the kernel's driver for that chip, on either data path.
        device_offloads = d.tx_offloads if self.tso else 0
        vnet = self.gro or offload or bool(device_offloads)
        self.tap = self.tap_factory(self.requested_ifname or self.name_for(mac), mac, mtu,
                                    persistent=self.persistent, vnet_hdr=VNET_HDR_LEN if vnet else 0)
        self.ifname = self.tap.name
        if self.tap.reused:
            log.info("%s taken over from an earlier run (its addresses and routes are kept)", self.ifname)
        self.port = TapPort(self.tap.fd, self.stats, d.max_frame, gro=self.gro, offload=offload,
                            device_offloads=device_offloads, read_max=d.tso_max)
        self.datapath.attach(self.port, self.ifname, native=self.native)
        if offload and not self.datapath.offload_in_c and not self.tso_python:
            # the C framer did not take the layout, or the C pump could not own the transfers: no offloads for
            # Python to do
            self.port.offload = False
        if self.port.offload:
            try:
                self.tap.set_offload(OFFLOADS)
            except TapError as exc:  # the framer still reads plain frames with a vnet header correctly
                log.warning("%s: TX offloads stay off: %s", self.ifname, exc)
                self.port.offload = False
        if device_offloads:
            self._device_offloads(device_offloads)
        if self.datapath.path != "native" and d.native_rx() is not None:
            log.info("%s: the pure-Python data path (%s)", self.ifname, self._why_python())
        self.link.attach(self.tap)
        t.start_interrupt()
        d.activate()
        if not d.options.quirks & Quirk.NO_PACKET_FILTER:
            d.set_packet_filter(cdc.packet_filter_bits(promisc=False, allmulti=True, multicast=True))
        self.tap.up()
        self.link.start_reconciler(d, self.device_mac)
        self.datapath.start()
        self._drain_driver_events()
        log.info("%s: %s (%s) on %s, MAC %s, MTU %d, %d RX x %d B, %d TX x %d B", self.ifname, d.name,
                 d.framing, t.identity.busid, mac_to_str(mac), mtu, self.datapath.n_rx, d.rx_size,
                 self.datapath.n_tx, d.tx_size)

    def _device_offloads(self, flags: int) -> None:
        """Offer the TAP the offloads the chip does: TSO only once the TAP's gso_max_size is what the chip takes
        in one transfer (a longer super-frame would not fit), the checksums in any case."""
        d, port = self.driver, self.port
        if flags & (TUN_F_TSO4 | TUN_F_TSO6):
            try:
                self.tap.set_gso_max_size(d.tso_max)
            except TapError as exc:
                log.warning("%s: TSO stays off (the chip takes super-frames of at most %d bytes): %s",
                            self.ifname, d.tso_max, exc)
                flags &= ~(TUN_F_TSO4 | TUN_F_TSO6)
        try:
            self.tap.set_offload(flags)
        except TapError as exc:  # the port still reads plain frames with a vnet header correctly
            log.warning("%s: TX offloads stay off: %s", self.ifname, exc)
            flags = 0
        port.device_offloads = flags
        d.enable_offloads(flags)
        if flags:
            log.info("%s: the %s does the TX offloads: %s", self.ifname, d.name, ", ".join(offload_names(flags)))

    def _why_python(self) -> str:
        if not self.native:
            return "--pure-python"
        if not native_module.AVAILABLE:
            return native_module.WHY_NOT or "usbnetd.native is not available"
        return f"the C fast path does not take {self.driver.name}'s framing"

    # ------------------------------------------------------------------ link events
    def _on_interrupt(self, view: memoryview, length: int) -> None:
        if self.datapath.tracer is not None:
            self.datapath.tracer.interrupt(view, length)
        self.stats.notifications += 1
        event = self.driver.status(view, length)
        if event is not None:
            self.link.apply(event)

    def _drain_driver_events(self) -> None:
        events = self.driver.events
        while events:
            self.link.apply(events.popleft())

    # ------------------------------------------------------------------ event-loop entry points
    @property
    def device_gone(self) -> bool:
        return self.datapath.device_gone

    @property
    def interface_gone(self) -> bool:
        return self.link.interface_gone

    def on_usb(self) -> None:
        self.transport.handle_events()

    def on_tap_readable(self) -> None:
        self.datapath.on_tap_readable()

    def process(self) -> None:
        """Everything after a wake-up: the data path's queues, the driver's events, the periodic checks."""
        if self.state is not State.RUNNING:
            return
        now = time.monotonic()
        self.datapath.process(now)
        if self.datapath.device_gone:
            return
        if self.driver.events:
            self._drain_driver_events()
        if now >= self._driver_poll_at:
            self._driver_poll_at = now + DRIVER_POLL_PERIOD
            self.transport.watchdog(now)
            failure = self.driver.poll(now)
            if failure:
                log.error("%s: %s; stopping", self.ifname, failure)
                self.failure = f"{self.ifname}: {failure}"  # the instance ends in error: a supervisor restarts it
                self.state = State.STOPPING  # the loop sees it and tears down
                return
        self.link.reconcile_if_due(now)

    def can_burst(self) -> bool:
        """Whether the C event loop (burst) can take this wake-up: the C path takes the bulk IN completions, the
        transport gives libusb's event handling to C, nothing is traced (a trace wants Python to see it all)."""
        dp = self.datapath
        return (self.state is State.RUNNING and dp.rx_usb and dp.tracer is None and native_module.LOOP
                and self.transport.burst_handles() is not None)

    def burst(self, want: dict[int, int], timeout_ms: int, busy_poll_us: int = 0) -> list[tuple[int, int]]:
        """poll() for the event loop, with the data path's own wake-ups done in C (native _fastpath.burst):
        returns the ready fds of `want` that are not USB's (handled) nor the TAP's when the C TX pump reads it,
        once one is ready, a Python callback ran, or `timeout_ms` passed. `busy_poll_us`: poll without sleeping
        that long after the start and after every turn that moved frames (app/daemon.py)."""
        dp = self.datapath
        usb = self.transport.poll_fds()
        usb_fds = {fd for fd, _ in usb}
        tap_fd = self.tap.fd if dp.burst_tx is not None else -1
        python = [(fd, ev) for fd, ev in want.items() if fd not in usb_fds and fd != tap_fd]
        fn, ctx, flag = self.transport.burst_handles()
        ready, _turns = native_module.fastpath.burst(usb, python, tap_fd, fn, ctx, flag, self.datapath.port.native,
                                                      dp.burst_tx, timeout_ms, busy_poll_us)
        return ready

    def wants_tap_read(self) -> bool:
        return self.state is State.RUNNING and self.datapath.wants_tap_read()

    def timeout(self) -> float | None:
        """Seconds until the loop must call process() even without events (flush timer, RX throttle)."""
        if self.transport.pending():
            return 0.0
        due = self.datapath.due()
        return None if due is None else max(0.0, due - time.monotonic())

    def poll_fds(self) -> list[tuple[int, int]]:
        return self.transport.poll_fds()

    def fd_handlers(self) -> dict:
        """File descriptors of the service's own (not USB, not the TAP) and what to call when readable."""
        return self.link.fd_handlers()

    # ------------------------------------------------------------------ status and teardown
    def status(self) -> dict:
        mac = self.link.mac or self.mac
        st = {
            "busid": self.transport.identity.busid,
            "ifname": self.ifname or self.requested_ifname,
            "protocol": self.driver.name,
            "state": self.state.value,
            "link": "up" if self.link.up else "down",
            "speed_mbps": self.link.speed_mbps,
            "mac": mac_to_str(mac) if mac else None,
            "mtu": None,
            "datapath": self.datapath.path,
            "tracing": self.datapath.tracer is not None,
        }
        if self.tap is not None:
            try:
                st["mtu"] = self.tap.state()["mtu"]
            except Exception:  # noqa: BLE001 - status must answer even if netlink hiccups
                st["mtu"] = self.tap.mtu
        st.update(self.stats.as_dict())
        pool = self.datapath.pool
        if pool is not None:
            st["pool_packets"] = pool.packet_count
            st["pool_in_use"] = pool.in_use
        return st

    def detailed_stats(self) -> dict:
        """Everything `usbnetd stats` shows: status, error causes, batching, flush reasons, pool, queues."""
        st = self.status()
        st["protocol_detail"] = self.driver.framing
        st.update(self.datapath.detail())
        st["event_loop"] = "native" if self.can_burst() else "python"  # who takes the frame-only wake-ups
        st.update(self.transport.detail())
        st["rx_gro"] = (self.port.gro_stats if self.port is not None else
                        {"enabled": self.gro, "superframes": 0, "segments": 0, "unverified": 0})
        return st

    def stop(self, remove_interface: bool = True) -> None:
        """Tear down. `remove_interface` False keeps a persistent TAP (a restart or an unplug, not a detach)."""
        if self._torn_down:
            return  # a failed start already tore down; the caller's own stop() must be harmless
        self._torn_down = True
        self.state = State.STOPPING
        self.datapath.teardown()
        if not self.datapath.device_gone:
            self.driver.unbind()
        self.transport.close()
        self.link.close()
        if self.tap is not None:
            self.tap.close(remove=remove_interface)
            self.tap = None
        self.state = State.STOPPED
