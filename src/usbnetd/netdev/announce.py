"""What udev learns about a usbnetd interface: `<run dir>/<ifname>.udev`, written before the TAP exists.

A TAP has no parent device in sysfs, so udev, systemd-networkd and NetworkManager cannot tell usbnetd's
interface from any other tun/tap device, nor which USB adapter is behind it. usbnetd writes this file before
TUNSETIFF creates the interface, so that when udev handles the interface's "add" uevent the file is already
there; udev/70-usbnetd.rules imports it (`IMPORT{file}`, KEY=value lines as udev(7) describes) and looks the
adapter's vendor and model up in the hardware database, as udev does for a kernel USB NIC:

    USBNETD=1                       this is a usbnetd interface (networkd's and NetworkManager's match)
    USBNETD_BUSID=3-1               the adapter's bus id (the usbnetd@.service instance)
    USBNETD_PROTOCOL=ncm            the protocol driver
    ID_VENDOR_ID=0bda               the adapter's USB ids, as udev's usb_id builtin names them
    ID_MODEL_ID=8156
    USBNETD_HWDB_KEY=usb:v0BDAp8156 the key for `IMPORT{builtin}="hwdb '...'"` (ID_VENDOR/MODEL_FROM_DATABASE)

Only numbers and names usbnetd validated go in: no string the device supplied (docs/operating.md, "Strings
from devices"). The file goes when the instance ends, unless its interface stays (a persistent TAP).
"""

from __future__ import annotations

import logging
import os
import re

log = logging.getLogger(__name__)

SYS_NET = "/sys/class/net"
_VALUE_OK = re.compile(r"^[A-Za-z0-9:._-]*$")  # nothing udev would need quoted or escaped


def path_for(run_dir: str, ifname: str) -> str:
    return os.path.join(run_dir, f"{ifname}.udev")


def properties(busid: str, vendor: int, product: int, protocol: str) -> dict[str, str]:
    props = {
        "USBNETD": "1",
        "USBNETD_BUSID": busid,
        "USBNETD_PROTOCOL": protocol,
        "ID_VENDOR_ID": f"{vendor:04x}",
        "ID_MODEL_ID": f"{product:04x}",
        "USBNETD_HWDB_KEY": f"usb:v{vendor:04X}p{product:04X}",
    }
    for key, value in props.items():
        if not _VALUE_OK.match(value):
            raise ValueError(f"{key}={value!r} is not a plain udev value")
    return props


def write(run_dir: str, ifname: str, props: dict[str, str], sys_net: str = SYS_NET) -> str | None:
    """Write the file for an interface about to be created; its path, or None when nothing was written.

    Nothing is written when the interface exists already: then no "add" uevent follows (a persistent TAP of
    ours is taken over) or the TAP is refused, and the file may be another instance's. A failure to write is
    logged and is not an error: the interface works without it, only the matches above do not.
    """
    if os.path.exists(os.path.join(sys_net, ifname)):
        return None
    path = path_for(run_dir, ifname)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(run_dir, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in props.items()))
        os.chmod(tmp, 0o644)  # udev and networkd read it; the unit's UMask=0077 would hide it
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write %s (udev will not know %s as usbnetd's): %s", path, ifname,
                    exc.strerror or exc)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return None
    return path


def retract(path: str | None, ifname: str, sys_net: str = SYS_NET) -> None:
    """Remove the file once the instance ends, unless its interface is still there (a persistent TAP)."""
    if path is None or os.path.exists(os.path.join(sys_net, ifname)):
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc.strerror or exc)
