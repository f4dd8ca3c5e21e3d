"""Finding devices: DEVICE arguments, sysfs listing for `usbnetd list`, and opening one with libusb.

DEVICE is a bus id as sysfs and usbip write it (`1-1`, `3-2.4`), `VID:PID[/SERIAL]`, or `sim:ncm` /
`sim:ecm` (optionally with `?name=value&...` fault injection, see simfaults.py). Listing reads sysfs only
(the cached `descriptors` file and driver links), so it never opens, resets or disturbs a device another
driver is using.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..protocols import NoDriver, choose
from ..usb.descriptors import parse_descriptor_blob
from ..usb.simfaults import parse_options as parse_sim_options
from .config import load_table

SYSFS_USB = "/sys/bus/usb/devices"
_BUSID = re.compile(r"^[1-9][0-9]{0,2}-[1-9][0-9]{0,2}(\.[1-9][0-9]{0,2}){0,6}$")
_VIDPID = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})(?:/(.+))?$")
_SERIAL_OK = re.compile(r"^[\x21-\x7e]{1,126}$")


class BadDevice(ValueError):
    pass


@dataclass(frozen=True)
class DeviceSpec:
    kind: str  # "busid", "vidpid" or "sim"
    busid: str | None = None
    vendor: int | None = None
    product: int | None = None
    serial: str | None = None
    sim: str | None = None
    sim_options: tuple[tuple[str, int], ...] = ()  # sim:KIND?name=value&...: fault injection (simfaults.py)

    def __str__(self) -> str:
        if self.kind == "busid":
            return self.busid or ""
        if self.kind == "sim":
            return f"sim:{self.sim}"
        s = f"{self.vendor:04x}:{self.product:04x}"
        return f"{s}/{self.serial}" if self.serial else s


def parse_device_spec(text: str) -> DeviceSpec:
    text = text.strip()
    if text.startswith("sim:"):
        kind, _, query = text[4:].partition("?")
        if kind not in ("ncm", "ecm"):
            raise BadDevice(f"unknown simulated adapter {text!r} (use sim:ncm or sim:ecm)")
        try:
            options = parse_sim_options(query)
        except ValueError as exc:
            raise BadDevice(f"{text!r}: {exc}") from None
        return DeviceSpec("sim", sim=kind, sim_options=options)
    if _BUSID.match(text):
        return DeviceSpec("busid", busid=text)
    m = _VIDPID.match(text)
    if m:
        serial = m.group(3)
        if serial is not None and not _SERIAL_OK.match(serial):
            raise BadDevice(f"bad serial number in {text!r}")
        return DeviceSpec("vidpid", vendor=int(m.group(1), 16), product=int(m.group(2), 16), serial=serial)
    raise BadDevice(f"not a device: {text!r} (expected a bus id like 1-1 or 3-2.4, VID:PID[/SERIAL], "
                    "or sim:ncm / sim:ecm)")


@dataclass
class ListedDevice:
    busid: str
    vendor: int
    product: int
    product_name: str | None
    serial: str | None
    protocol: str | None
    configuration: int | None
    active_configuration: int | None
    kernel_drivers: list[str] = field(default_factory=list)
    attached: str | None = None  # usbnetd interface name when attached

    @property
    def state(self) -> str:
        if self.attached:
            return f"attached by usbnetd ({self.attached})"
        if self.kernel_drivers:
            return f"kernel driver bound ({', '.join(sorted(set(self.kernel_drivers)))})"
        return "free"

    def as_dict(self) -> dict:
        return {
            "busid": self.busid, "vid": f"{self.vendor:04x}", "pid": f"{self.product:04x}",
            "product": self.product_name, "serial": self.serial, "protocol": self.protocol,
            "configuration": self.configuration, "state": self.state,
        }


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def sanitize(text: str | None) -> str | None:
    """Device strings reach terminals and JSON: keep printable characters only."""
    if text is None:
        return None
    return "".join(c if c.isprintable() else "?" for c in text)[:128]


def list_devices(root: str = SYSFS_USB, table: dict | None = None) -> list[ListedDevice]:
    if table is None:
        table = load_table()
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    found = []
    for busid in names:
        if ":" in busid or not _BUSID.match(busid):
            continue  # interfaces and root hubs
        base = os.path.join(root, busid)
        try:
            with open(os.path.join(base, "descriptors"), "rb") as f:
                blob = f.read()
        except OSError:
            continue
        dev, configs = parse_descriptor_blob(blob)
        if dev is None:
            continue
        active_text = _read(os.path.join(base, "bConfigurationValue"))
        active = int(active_text) if active_text and active_text.isdigit() else None
        entry = table.get((dev.vendor, dev.product))
        try:
            driver, binding = choose(configs, active, entry.protocol if entry else None,
                                     entry.configuration if entry else None,
                                     vendor_subset=bool(entry and entry.protocol == "subset"))
        except NoDriver:
            continue
        drivers = []
        if binding.configuration == active:
            for ifnum in {binding.control, binding.data} - {None}:
                link = os.path.join(base, f"{busid}:{active}.{ifnum}", "driver")
                if os.path.islink(link):
                    drivers.append(os.path.basename(os.readlink(link)))
        found.append(ListedDevice(
            busid=busid, vendor=dev.vendor, product=dev.product,
            product_name=sanitize(_read(os.path.join(base, "product"))),
            serial=sanitize(_read(os.path.join(base, "serial"))), protocol=driver.name,
            configuration=binding.configuration, active_configuration=active, kernel_drivers=drivers,
        ))
    return found


def resolve_busid(spec: DeviceSpec, root: str = SYSFS_USB) -> str | None:
    """The bus id a VID:PID[/SERIAL] refers to, from sysfs; None when absent."""
    if spec.kind == "busid":
        return spec.busid
    if spec.kind != "vidpid":
        return None
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return None
    for busid in names:
        if ":" in busid or not _BUSID.match(busid):
            continue
        base = os.path.join(root, busid)
        if _read(os.path.join(base, "idVendor")) != f"{spec.vendor:04x}":
            continue
        if _read(os.path.join(base, "idProduct")) != f"{spec.product:04x}":
            continue
        if spec.serial is not None and _read(os.path.join(base, "serial")) != spec.serial:
            continue
        return busid
    return None


def open_usb(spec: DeviceSpec):
    """Open the device with libusb; returns (context, LibusbTransport). Raises BadDevice when absent."""
    import usb1

    from ..usb.engine import LibusbTransport, busid_of

    context = usb1.USBContext()
    try:
        context.open()
    except usb1.USBError as exc:
        raise BadDevice(f"libusb cannot start: {exc}") from exc
    match = None
    try:
        for device in context.getDeviceIterator(skip_on_error=True):
            if spec.kind == "busid" and busid_of(device) == spec.busid:
                match = device
            elif spec.kind == "vidpid" and (device.getVendorID(), device.getProductID()) == (spec.vendor,
                                                                                             spec.product):
                if spec.serial is None:
                    match = device
                else:
                    try:
                        if device.getSerialNumber() == spec.serial:
                            match = device
                    except usb1.USBError:
                        pass
            if match is not None:
                break
        if match is None:
            raise BadDevice(f"no USB device {spec}")
        return context, LibusbTransport(context, match)
    except BaseException:
        context.close()
        raise
