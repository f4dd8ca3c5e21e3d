"""The facts `ethtool -i` and `ethtool IFNAME` would give for a kernel-driven USB NIC, for `usbnetd status`.

Owns the "device" object of a status reply: which driver drives what, where it sits on the bus, what chip and
firmware it is, which class specification versions it speaks, and its link. The interface itself is a TAP,
and tun answers `ethtool -i` with its own fixed driver ("tun"), version and bus-info ("tap") and no
statistics: none of that can be set from user space (drivers/net/tun.c, tun_get_drvinfo), so these facts
live here. Only the link settings are passed on: usbnetd gives the TAP the device's speed, which
`ethtool IFNAME` then shows (netdev/tap.py, `set_link_speed`).

Sources: the transport's identity (VID:PID, strings, USB speed), sysfs for what libusb does not give
(bcdDevice, the host controller behind the bus id; nothing for the simulated adapter), the driver's
`info()` (class versions from the functional descriptors, what was negotiated), and the link state.
"""

from __future__ import annotations

import os

from .. import __version__
from .discovery import SYSFS_USB, sanitize

# USB speeds as libusb and the specification name them
_SPEED_NAMES = {1: "low speed", 12: "full speed", 480: "high speed", 5000: "SuperSpeed", 10000: "SuperSpeed+",
                20000: "SuperSpeed+ 20Gbps"}


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip() or None
    except OSError:
        return None


def bus_info(busid: str, sysfs: str = SYSFS_USB) -> str:
    """What the kernel's usbnet gives ethtool as bus-info (usb_make_path): "usb-<host controller>-<port path>",
    e.g. "usb-0000:00:14.0-3.2"; the bus id itself when sysfs has no such bus (the simulated adapter)."""
    bus, sep, ports = busid.partition("-")
    if not sep or not bus.isdigit():
        return busid
    root = os.path.realpath(os.path.join(sysfs, f"usb{bus}"))
    if not os.path.isdir(root):
        return busid
    return f"usb-{os.path.basename(os.path.dirname(root))}-{ports}"


def bcd_device(busid: str, sysfs: str = SYSFS_USB) -> str | None:
    """bcdDevice (USB 2.0 §9.6.1, the device release number, which vendors raise with their firmware) as
    "30.00"; None when sysfs does not have the device."""
    raw = _read(os.path.join(sysfs, busid, "bcdDevice"))
    if raw is None or len(raw) != 4:
        return None
    try:
        int(raw, 16)
    except ValueError:
        return None
    return f"{int(raw[:2], 16):x}.{raw[2:]}"


def device_facts(service, sysfs: str | None = None) -> dict:
    """The "device" object of `usbnetd status --json`."""
    sysfs = sysfs or os.environ.get("USBNETD_SYSFS", SYSFS_USB)
    ident = service.transport.identity
    d = service.driver
    busid = ident.busid
    release = bcd_device(busid, sysfs)
    facts: dict = {
        "driver": "usbnetd",
        "driver_version": __version__,
        "bus_info": bus_info(busid, sysfs),
        "usb_speed_mbps": ident.speed_mbps,
        "usb_speed": _SPEED_NAMES.get(ident.speed_mbps, f"{ident.speed_mbps} Mbit/s"),
        "vendor_id": f"{ident.vendor:04x}",
        "product_id": f"{ident.product:04x}",
        "manufacturer": sanitize(ident.manufacturer),
        "product": sanitize(ident.product_name),
        "serial": sanitize(ident.serial),
        "bcd_device": release,
        "firmware_version": release,  # what USB exposes of a firmware version: the device release number
        "configuration": ident.active_configuration,
    }
    facts.update(d.info())
    facts["link_speed_mbps"] = service.link.speed_mbps
    # CDC ECM/NCM report bit rates (ConnectionSpeedChange) and RNDIS a link speed (OID_GEN_LINK_SPEED); none of
    # them reports duplex, so neither does usbnetd: `ethtool IFNAME` says "Unknown! (255)" too.
    facts["duplex"] = "unknown"
    facts["ethtool_speed_set"] = service.link.tap_speed_set
    return facts
