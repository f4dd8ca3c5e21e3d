"""The link reconciler: changes the user makes to the interface with `ip link` reach the device.

A raw NETLINK_ROUTE socket subscribed to link and address events is only a doorbell (drained, never
parsed): on each ring, and every few seconds for multicast joins that raise no event, the reconciler reads
the TAP's state back through the TAP's own rtnetlink socket (rtnl.py) and reconciles:

- MTU: accepted when the device can carry the frames (NCM is told with SET_MAX_DATAGRAM_SIZE when it has
  that request); refused otherwise, with the old MTU put back and the reason logged.
- MAC: kept, and since no standard request tells a CDC device its new address while running, the device's
  filter goes promiscuous so unicast to the new address still arrives.
- Promiscuous / all-multicast counts and the exact multicast list (from /proc/net/dev_mcast, what the kernel
  holds for the TAP): the device's packet filter, plus SET_ETHERNET_MULTICAST_FILTERS when it has exact
  filters for the whole list.

It knows the TAP and the driver, nothing of the service: what the service needs from it, it reads
(`mac`, the address the interface has now; `gone`, the interface was deleted from outside).
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING

from ..protocols.driver import DriverFlag
from .tap import Tap, TapError

if TYPE_CHECKING:
    from ..protocols.driver import ProtocolDriver

log = logging.getLogger(__name__)

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
PERIOD = 2.0  # seconds between reconciles without an event (multicast joins by sockets raise none)
DEV_MCAST = "/proc/net/dev_mcast"


def multicast_list(ifindex: int, path: str = DEV_MCAST) -> list[bytes]:
    """The link-layer multicast addresses the kernel holds for an interface (index refcount global addr)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 5 and parts[0].isdigit() and int(parts[0]) == ifindex and len(parts[4]) == 12:
                    out.append(bytes.fromhex(parts[4]))
    except (OSError, ValueError):
        pass
    return sorted(out)


class LinkReconciler:
    def __init__(self, tap: Tap, driver: ProtocolDriver, device_mac: bytes) -> None:
        self.tap = tap
        self.driver = driver
        self.device_mac = device_mac  # the address the device filters for (another one needs promiscuous)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        self.mtu = tap.mtu
        self.mac = tap.mac
        self.gone = False  # the interface was deleted from outside: the instance must end
        self.filter: tuple | None = None
        self.next_check = 0.0
        self.reconciles = 0
        self.reconcile()

    def fileno(self) -> int:
        return self.sock.fileno()

    def on_readable(self) -> None:
        try:
            while self.sock.recv(65536):
                pass
        except BlockingIOError:
            pass
        except OSError as exc:  # ENOBUFS: events were lost; a reconcile catches up anyway
            log.debug("netlink: %s", exc)
        self.reconcile()

    def reconcile(self) -> None:
        self.next_check = time.monotonic() + PERIOD
        self.reconciles += 1
        tap = self.tap
        try:
            st = tap.state()
        except Exception as exc:  # noqa: BLE001 - netlink trouble must not stop the data path
            if not tap.exists():
                # Deleted from outside (`ip link del`): nothing can be delivered any more. End this instance
                # with an error, so a supervisor (systemd's Restart=on-failure) brings up a fresh one.
                self.gone = True
                return
            log.debug("could not read %s: %s", tap.name, exc)
            return
        driver = self.driver
        mtu = st["mtu"]
        if mtu is not None and mtu != self.mtu:
            reason = driver.change_mtu(mtu + 14)
            if reason is None:
                log.info("%s: MTU %d -> %d", tap.name, self.mtu, mtu)
                self.mtu = tap.mtu = mtu
            else:
                log.warning("%s: MTU %d refused: %s; back to %d", tap.name, mtu, reason, self.mtu)
                try:
                    tap.set_mtu(self.mtu)
                except TapError as exc:  # the interface went away meanwhile: the next reconcile sees it
                    log.warning("%s", exc)
        mac = bytes.fromhex(st["mac"].replace(":", "")) if st["mac"] else None
        if mac is not None and mac != self.mac:
            log.info("%s: MAC %s -> %s: %s", tap.name, self.mac.hex(":"), mac.hex(":"), driver.change_mac(mac))
            self.mac = tap.mac = mac
            if driver.flags & DriverFlag.MAC_SETTABLE:
                self.device_mac = mac  # the device filters for it now: no promiscuous fallback
        promisc = bool(st["promiscuity"]) or self.mac != self.device_mac
        allmulti = bool(st["allmulti"])
        mc = multicast_list(tap.index)
        wanted = (promisc, allmulti, tuple(mc))
        if wanted != self.filter:
            what = driver.apply_filter(promisc, allmulti, mc)
            if self.filter is not None or promisc or allmulti:
                log.info("%s: %s", tap.name, what)
            self.filter = wanted

    def close(self) -> None:
        self.sock.close()
