"""Link state: carrier and speed as the device reports them, onto the TAP (the carrier, and the speed that
`ethtool IFNAME` shows), and the link reconciler.

Events come from two places, both drained by the service in the event loop, never re-entrantly: the
driver's `status()` hook for each interrupt transfer, and the driver's `events` queue for what it learns
otherwise (RNDIS indications fetched by a control transfer). Acting only on *changes* is the default for
every device: some repeat NETWORK_CONNECTION every 32 ms (QEMU's usb-net on every poll, old RTL8156
firmware). A protocol without link notifications (`DriverFlag.NO_LINK_STATE`), a device without an
interrupt endpoint (unless its driver polls the link itself, `DriverFlag.LINK_POLLED`: iPhone tethering's
carrier check), or the `ignore-link` quirk keep the carrier on while the device is there.

The reconciler (netdev/reconciler.py) is owned here because it is the other half of the link: the user's
changes to the interface going to the device, as the device's changes come to the interface.
"""

from __future__ import annotations

import logging
import time

from ..netdev.reconciler import LinkReconciler
from ..netdev.tap import Tap
from ..protocols.driver import LinkEvent, ProtocolDriver

log = logging.getLogger(__name__)


class LinkState:
    def __init__(self, follow_device: bool) -> None:
        # False: carrier is on while the device is there and notifications are not acted on.
        self.follow_device = follow_device
        self.up = False
        self.speed_mbps: int | None = None
        self.ifname = "?"  # for log lines before the TAP exists
        self.changes = 0  # carrier changes applied (not repeats)
        self.reconciler: LinkReconciler | None = None
        self._tap: Tap | None = None
        self._speed_warned = False
        self.tap_speed_set = False  # whether `ethtool IFNAME` shows the device's speed (set_link_speed took it)

    def attach(self, tap: Tap) -> None:
        """The TAP exists: it takes the carrier we know now and every change from here on."""
        self._tap = tap
        self.ifname = tap.name
        if not self.follow_device:
            self._set(True)  # no (trusted) notifications: the link is as up as the bus
        tap.set_carrier(self.up)
        self._set_speed_on_tap()

    def start_reconciler(self, driver: ProtocolDriver, device_mac: bytes) -> None:
        assert self._tap is not None
        self.reconciler = LinkReconciler(self._tap, driver, device_mac)

    def apply(self, event: LinkEvent) -> None:
        if event.connected is not None and self.follow_device:
            self._set(event.connected)
        if event.down_bps is not None:
            speed = event.down_bps // 1_000_000
            if speed != self.speed_mbps:
                self.speed_mbps = speed
                log.info("%s: link speed %d Mbit/s", self.ifname, speed)
                self._set_speed_on_tap()

    def _set_speed_on_tap(self) -> None:
        """`ethtool IFNAME` shows the device's speed (tun would claim 10000 Mb/s full duplex otherwise)."""
        if self._tap is None:
            return
        self.tap_speed_set = self._tap.set_link_speed(self.speed_mbps)
        if not self.tap_speed_set and not self._speed_warned:
            self._speed_warned = True
            log.info("%s: the kernel does not take the link speed for ethtool (before Linux 4.20?)", self.ifname)

    def _set(self, up: bool) -> None:
        if up == self.up:
            return  # repeated notifications: act only on change
        self.up = up
        self.changes += 1
        if self._tap is not None:
            self._tap.set_carrier(up)
        log.info("%s: link %s", self.ifname, "up" if up else "down")

    # ------------------------------------------------------------------ the reconciler
    @property
    def mac(self) -> bytes | None:
        """The interface's MAC now (the user may have changed it)."""
        return self.reconciler.mac if self.reconciler is not None else None

    @property
    def interface_gone(self) -> bool:
        return self.reconciler is not None and self.reconciler.gone

    def reconcile_if_due(self, now: float | None = None) -> None:
        r = self.reconciler
        if r is not None and (now if now is not None else time.monotonic()) >= r.next_check:
            r.reconcile()

    def fd_handlers(self) -> dict:
        r = self.reconciler
        return {r.fileno(): r.on_readable} if r is not None else {}

    def close(self) -> None:
        if self.reconciler is not None:
            self.reconciler.close()
            self.reconciler = None
        self._tap = None
