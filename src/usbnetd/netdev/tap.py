"""The TAP interface: the host-facing half of usbnetd, one Ethernet frame per read or write.

pytun creates the device (IFF_TAP | IFF_NO_PI: without NO_PI every frame carries a 4-byte prefix; IFF_VNET_HDR
when GRO or TX offloads need the virtio_net_hdr in front of each frame). `set_offload` is TUNSETOFFLOAD: which
work the kernel may leave to us (include/uapi/linux/if_tun.h TUN_F_*; netdev/gso.py does it). Carrier is
set with the TUNSETCARRIER ioctl on the TAP's own fd, the speed `ethtool IFNAME` reports with SIOCETHTOOL
(`set_link_speed`). Looking the interface up, MAC, MTU, up, and reading
the state back (the link reconciler, every two seconds) go through one rtnetlink socket of our own for the TAP's
life (rtnl.py says why not pyroute2).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import re
import socket
import struct
import time

import pytun

from .rtnl import LinkSocket

log = logging.getLogger(__name__)

# _IOW('T', 226, int): set the carrier of a tun/tap device (Linux >= 5.0).
TUNSETCARRIER = 0x400454E2
# _IOW('T', 203, int): keep the device when its last fd closes (addresses and routes survive a restart).
TUNSETPERSIST = 0x400454CB
# _IOW('T', 208, unsigned int): which offloads the kernel may hand us. 0: whole frames with final checksums;
# TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 (gso.OFFLOADS): partial checksums and TCP super-frames too.
TUNSETOFFLOAD = 0x400454D0
# _IOW('T', 216, int): the size of the virtio_net_hdr in front of every frame (IFF_VNET_HDR).
TUNSETVNETHDRSZ = 0x400454D8
IFNAMSIZ = 16
# SIOCETHTOOL with the legacy ETHTOOL_GSET / ETHTOOL_SSET commands (include/uapi/linux/ethtool.h, struct
# ethtool_cmd). tun keeps whatever link settings it is given (drivers/net/tun.c, tun_set_link_ksettings,
# Linux >= 4.20) and reports them to `ethtool IFNAME`; left alone it claims 10000 Mb/s full duplex.
SIOCETHTOOL = 0x8946
ETHTOOL_GSET, ETHTOOL_SSET = 0x1, 0x2
_ETHTOOL_CMD = struct.Struct("=IIIHBBBBBBIIHBBI8x")  # struct ethtool_cmd, 44 bytes
SPEED_UNKNOWN = 0xFFFFFFFF  # (u32)-1, split over speed and speed_hi
DUPLEX_UNKNOWN = 0xFF
PORT_OTHER = 0xFF
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


UDEV_CONTROL = "/run/udev/control"  # systemd-udevd's socket: udev is running
UDEV_DATA = "/run/udev/data/n{index}"  # its database entry for a network interface, written once handled
UDEV_WAIT = 1.0  # seconds at most; udev handles a new interface in milliseconds


def wait_for_udev(index: int, timeout: float = UDEV_WAIT) -> bool:
    """Wait until udev has handled the "add" event of the interface `index` (its database entry exists), when
    udev runs. Why: a TAP starts with a random MAC, and udev's default link policy (99-default.link,
    MACAddressPolicy=persistent) replaces a random MAC with one of its own; should that land after usbnetd set
    the adapter's MAC, the interface would carry udev's address, and usbnetd would take it for the user's.
    Setting ours after udev is done with the interface closes that race (contrib/systemd-networkd/70-usbnetd.link
    closes it for good, on systems that install it). False when udev did not finish in time (or is not there)."""
    if not os.path.exists(UDEV_CONTROL):
        return False
    path = UDEV_DATA.format(index=index)
    deadline = time.monotonic() + timeout
    while not _udev_done(path):
        if time.monotonic() >= deadline:
            log.debug("udev did not handle interface %d within %.1f s", index, timeout)
            return False
        time.sleep(0.005)
    return True


def _udev_done(path: str) -> bool:
    """The database entry exists and is not marked as still being processed (systemd 255 and later write it
    with ID_PROCESSING=1 when they start on the event, and again without it when they are done)."""
    try:
        with open(path, "rb") as f:
            return b"E:ID_PROCESSING=1" not in f.read()
    except OSError:
        return False


class Tap:
    def __init__(self, name: str, mac: bytes, mtu: int, persistent: bool = False, vnet_hdr: int = 0) -> None:
        reason = validate_ifname(name)
        if reason:
            raise TapError(reason)
        # Every attribute first: close() must work on a TAP whose construction failed half-way.
        self._dev: pytun.TunTapDevice | None = None
        self.persistent = persistent
        self.carrier: bool | None = None
        self.name = name
        self.fd = -1
        self.index = 0
        self.mac = mac
        self.mtu = mtu
        self.vnet_hdr = vnet_hdr
        self._links: LinkSocket | None = LinkSocket()
        # A persistent TAP left by an earlier run of ours is taken over, with its addresses and routes.
        self.reused = self._links.index_of(name) is not None
        if self.reused and not persistent:
            self._close_links()
            raise TapError(f"interface {name} already exists")
        try:
            flags = pytun.IFF_TAP | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if vnet_hdr else 0)
            self._dev = pytun.TunTapDevice(name=name, flags=flags)
        except pytun.Error as exc:
            msg = exc.args[-1] if exc.args else exc
            self._close_links()
            raise TapError(f"cannot create TAP interface {name}: {msg}") from exc
        self.name = self._dev.name
        self.fd = self._dev.fileno()
        os.set_blocking(self.fd, False)
        # With a vnet header every read and write starts with `vnet_hdr` bytes of struct virtio_net_hdr (gro.py
        # writes coalesced TCP that way). No offloads until set_offload: what we read is a whole frame,
        # checksums done. Cleared even without a vnet header: a persistent TAP keeps the offloads an earlier run
        # set, and a reader without the header would get super-frames and partial checksums it cannot tell.
        try:
            if vnet_hdr:
                fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", vnet_hdr))
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, 0)
        except OSError as exc:
            dev, self._dev = self._dev, None
            dev.close()
            self._close_links()
            raise TapError(f"cannot set up the vnet header and offloads on {name}: {exc.strerror}") from exc
        try:
            index = self._links.index_of(self.name)
            if index is None:
                raise TapError(f"TAP interface {self.name} vanished as it was created")
            self.index = index
            if persistent:
                fcntl.ioctl(self.fd, TUNSETPERSIST, 1)
            self.set_carrier(False)
            if not self.reused:
                wait_for_udev(self.index)
            self._set(f"set MAC {mac_to_str(mac)} and MTU {mtu}", mac=mac, mtu=mtu)
        except BaseException:
            self.close()
            raise

    def _set(self, what: str, **change) -> None:
        try:
            self._links.set(self.index, **change)
        except OSError as exc:
            raise TapError(f"cannot {what} on {self.name}: {exc.strerror or exc}") from None

    def set_offload(self, flags: int) -> None:
        """TUNSETOFFLOAD: the TUN_F_* work the kernel may leave to us (needs the vnet header)."""
        if not self.vnet_hdr and flags:
            raise TapError(f"offloads on {self.name} need the vnet header")
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
        except OSError as exc:
            raise TapError(f"cannot set offloads {flags:#x} on {self.name}: {exc.strerror}") from None

    def set_gso_max_size(self, size: int) -> None:
        """The largest GSO packet the host's stack hands this TAP (`ip link set ... gso_max_size`): what a
        device that cuts super-frames itself takes in one transfer. Read back: a kernel that cannot change it
        on a live link may ignore the attribute rather than refuse it."""
        self._set(f"set gso_max_size {size}", gso_max_size=size)
        try:
            now = self._links.state(self.index).get("gso_max_size")
        except OSError as exc:
            raise TapError(f"cannot read gso_max_size back on {self.name}: {exc.strerror or exc}") from None
        if now != size:
            raise TapError(f"the kernel kept gso_max_size {now} on {self.name}")

    def up(self) -> None:
        self._set("bring up", up=True)

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

    def set_link_speed(self, mbps: int | None) -> bool:
        """What `ethtool IFNAME` reports: the device's link speed (None: unknown) and duplex unknown (neither CDC
        nor RNDIS reports one). False, and nothing else, when the kernel does not take it (before 4.20)."""
        speed = SPEED_UNKNOWN if mbps is None else mbps & 0xFFFFFFFF
        buf = ctypes.create_string_buffer(_ETHTOOL_CMD.size)
        # struct ifreq: the name, then a pointer to the ethtool command (the rest of its 40 bytes unused).
        ifreq = struct.pack("16sP", self.name.encode(), ctypes.addressof(buf)).ljust(40, b"\0")
        try:
            # An AF_UNIX socket: device ioctls work on any socket, and the unit allows only AF_UNIX/AF_NETLINK.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                _ETHTOOL_CMD.pack_into(buf, 0, ETHTOOL_GSET, *([0] * 15))
                fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
                f = list(_ETHTOOL_CMD.unpack(buf.raw))
                f[0] = ETHTOOL_SSET
                f[3], f[12] = speed & 0xFFFF, speed >> 16  # speed, speed_hi
                f[4] = DUPLEX_UNKNOWN
                f[5] = PORT_OTHER  # not twisted pair, as tun claims: a USB function
                f[10] = f[11] = 0  # maxtxpkt, maxrxpkt: deprecated, must be 0 for the kernel to convert
                _ETHTOOL_CMD.pack_into(buf, 0, *f)
                fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
        except OSError:
            return False
        return True

    def state(self) -> dict:
        """MTU, MAC and flags as the kernel sees them now (the user may have changed them)."""
        # promiscuity and allmulti are counts, not flags: tcpdump, bridges and `ip link set promisc on` all add
        # to them (kernels without the all-multicast count give 1 for the IFF_ALLMULTI flag)
        return self._links.state(self.index)

    def exists(self) -> bool:
        try:
            return self._links.index_of(self.name) is not None
        except Exception:  # noqa: BLE001 - unknown is not gone
            return True

    def set_mtu(self, mtu: int) -> None:
        self._set(f"set MTU {mtu}", mtu=mtu)
        self.mtu = mtu

    def close(self, remove: bool = True) -> None:
        """Close the TAP. A persistent one stays (carrier down) unless `remove`; others always go."""
        dev, self._dev = self._dev, None
        if dev is not None:
            try:
                if self.persistent:
                    if remove:
                        fcntl.ioctl(self.fd, TUNSETPERSIST, 0)
                    else:
                        self.set_carrier(False)  # the daemon is away: the link is down, the interface stays
            except OSError:
                pass
            dev.close()  # a non-persistent TAP disappears with its last fd
        self._close_links()

    def _close_links(self) -> None:
        links, self._links = self._links, None
        if links is not None:
            links.close()
