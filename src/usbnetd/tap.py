"""The TAP interface: the host-facing half of usbnetd, one Ethernet frame per read or write.

pytun creates the device (IFF_TAP | IFF_NO_PI: without NO_PI every frame carries a 4-byte prefix). Carrier is
set with the TUNSETCARRIER ioctl because neither pytun nor pyroute2 can (pyroute2 silently ignores
`carrier=`). MAC, MTU and up/down go through one long-lived pyroute2 IPRoute (creating one per call leaks
netlink ports); reading the state back, which the follower does every two seconds, goes through rtnl.py's
own netlink socket, because pyroute2's `get_links` grows the process on every call.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct

import pytun
from pyroute2 import IPRoute

from .rtnl import LinkReader

# _IOW('T', 226, int): set the carrier of a tun/tap device (Linux >= 5.0).
TUNSETCARRIER = 0x400454E2
# _IOW('T', 203, int): keep the device when its last fd closes (addresses and routes survive a restart).
TUNSETPERSIST = 0x400454CB
# _IOW('T', 208, unsigned int): which offloads the kernel may hand us. 0: whole frames with final checksums.
TUNSETOFFLOAD = 0x400454D0
# _IOW('T', 216, int): the size of the virtio_net_hdr in front of every frame (IFF_VNET_HDR).
TUNSETVNETHDRSZ = 0x400454D8
IFNAMSIZ = 16
_IFNAME_OK = re.compile(r"^[A-Za-z0-9_.\-]+$")


class TapError(Exception):
    pass


def validate_ifname(name: str) -> str | None:
    """Return why `name` cannot be an interface name, or None when it can."""
    if not name:
        return "interface name is empty"
    if len(name.encode()) >= IFNAMSIZ:
        return f"interface name {name!r} is longer than {IFNAMSIZ - 1} characters"
    if name in (".", "..") or not _IFNAME_OK.match(name):
        return f"interface name {name!r} may contain only letters, digits, '-', '_' and '.'"
    return None


def mac_to_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


class Tap:
    def __init__(self, name: str, mac: bytes, mtu: int, ipr: IPRoute | None = None, persistent: bool = False,
                 vnet_hdr: int = 0) -> None:
        reason = validate_ifname(name)
        if reason:
            raise TapError(reason)
        self._links: LinkReader | None = None  # opened by the first state()
        self._own_ipr = ipr is None
        self.ipr = ipr if ipr is not None else IPRoute()
        # A persistent TAP left by an earlier run of ours is taken over, with its addresses and routes.
        self.reused = bool(self.ipr.link_lookup(ifname=name))
        if self.reused and not persistent:
            self._close_ipr()
            raise TapError(f"interface {name} already exists")
        try:
            flags = pytun.IFF_TAP | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if vnet_hdr else 0)
            self._dev = pytun.TunTapDevice(name=name, flags=flags)
        except pytun.Error as exc:
            msg = exc.args[-1] if exc.args else exc
            raise TapError(f"cannot create TAP interface {name}: {msg}") from exc
        self.name = self._dev.name
        self.fd = self._dev.fileno()
        os.set_blocking(self.fd, False)
        # With a vnet header every read and write starts with `vnet_hdr` bytes of struct virtio_net_hdr (gro.py
        # writes coalesced TCP that way). No offloads: what we read is always a whole frame, checksums done.
        self.vnet_hdr = vnet_hdr
        if vnet_hdr:
            try:
                fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", vnet_hdr))
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, 0)
            except OSError as exc:
                self._dev.close()
                self._close_ipr()
                raise TapError(f"cannot set up the vnet header on {name}: {exc.strerror}") from exc
        self.index = self.ipr.link_lookup(ifname=self.name)[0]
        self.carrier: bool | None = None
        self.persistent = persistent
        try:
            if persistent:
                fcntl.ioctl(self.fd, TUNSETPERSIST, 1)
            self.set_carrier(False)
            self.ipr.link("set", index=self.index, address=mac_to_str(mac), mtu=mtu)
        except Exception:
            self.close()
            raise
        self.mac = mac
        self.mtu = mtu

    def up(self) -> None:
        self.ipr.link("set", index=self.index, state="up")

    def set_carrier(self, on: bool) -> None:
        if self.carrier is on:
            return
        try:
            fcntl.ioctl(self.fd, TUNSETCARRIER, struct.pack("i", 1 if on else 0))
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTTY):
                raise
            # Kernels before 5.0 lack TUNSETCARRIER; the interface then just stays "carrier on".
        self.carrier = on

    def state(self) -> dict:
        """MTU, MAC and flags as the kernel sees them now (the user may have changed them)."""
        # promiscuity and allmulti are counts, not flags: tcpdump, bridges and `ip link set promisc on` all add
        # to them (kernels without the all-multicast count give 1 for the IFF_ALLMULTI flag)
        if self._links is None:
            self._links = LinkReader()
        return self._links.state(self.index)

    def exists(self) -> bool:
        try:
            return bool(self.ipr.link_lookup(ifname=self.name))
        except Exception:  # noqa: BLE001 - unknown is not gone
            return True

    def set_mtu(self, mtu: int) -> None:
        self.ipr.link("set", index=self.index, mtu=mtu)
        self.mtu = mtu

    def close(self, remove: bool = True) -> None:
        """Close the TAP. A persistent one stays (carrier down) unless `remove`; others always go."""
        dev, self._dev = getattr(self, "_dev", None), None
        if dev is not None:
            try:
                if getattr(self, "persistent", False):
                    if remove:
                        fcntl.ioctl(self.fd, TUNSETPERSIST, 0)
                    else:
                        self.set_carrier(False)  # the daemon is away: the link is down, the interface stays
            except OSError:
                pass
            dev.close()  # a non-persistent TAP disappears with its last fd
        links, self._links = getattr(self, "_links", None), None
        if links is not None:
            links.close()
        self._close_ipr()

    def _close_ipr(self) -> None:
        if self._own_ipr and self.ipr is not None:
            self.ipr.close()
            self.ipr = None
