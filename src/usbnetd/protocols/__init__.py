"""Protocol drivers: one small module per USB Ethernet class on one shared core.

`DRIVERS` lists them in order of preference — the protocol usbnetd drives best first: NCM batches many
frames per transfer with a clean spec; ECM is simple and universal; RNDIS works but is chatty and
Microsoft-defined; EEM and the subset carry no link state. `VENDOR_DRIVERS` (the ASIX AX88179 family, the
Realtek RTL8153, iPhone tethering) are chosen only by name, from the device table. `choose()` picks a
configuration and driver.
"""

from __future__ import annotations

from ..usb.descriptors import Configuration
from .ax88179 import Ax88179Driver
from .driver import Binding, ProtocolDriver
from .ecm import EcmDriver
from .eem import EemDriver
from .ipheth import IphethDriver
from .ncm import NcmDriver
from .r8152 import R8152Driver
from .rndis import RndisDriver
from .subset import SubsetDriver

DRIVERS: tuple[type[ProtocolDriver], ...] = (NcmDriver, EcmDriver, RndisDriver, EemDriver, SubsetDriver)
# Vendor chips: chosen only when named (a device-table entry or --protocol), never by class matching, since
# a vendor-specific interface class says nothing about what is behind it.
VENDOR_DRIVERS: tuple[type[ProtocolDriver], ...] = (Ax88179Driver, R8152Driver, IphethDriver)
BY_NAME = {d.name: d for d in (*DRIVERS, *VENDOR_DRIVERS)}


class NoDriver(Exception):
    pass


def choose(configs: list[Configuration], active: int | None, protocol: str | None = None,
           configuration: int | None = None, vendor_subset: bool = False) -> tuple[type[ProtocolDriver], Binding]:
    """Pick (driver, binding): the best protocol overall, preferring the active configuration on a tie.

    `protocol` / `configuration` restrict the choice (from the command line or the device table);
    `vendor_subset` lets the subset driver take a vendor-class interface (a device-table entry says so).
    """
    drivers = DRIVERS
    if protocol is not None:
        if protocol not in BY_NAME:
            raise NoDriver(f"unknown protocol {protocol!r} (choose from {', '.join(BY_NAME)})")
        drivers = (BY_NAME[protocol],)
    candidates = [c for c in configs if configuration is None or c.value == configuration]
    if configuration is not None and not candidates:
        raise NoDriver(f"the device has no configuration {configuration}")
    candidates.sort(key=lambda c: c.value != active)  # the active configuration first: no switch needed
    for driver in drivers:
        for config in candidates:
            binding = driver.match(config)
            if binding is None and vendor_subset and driver is SubsetDriver:
                binding = SubsetDriver.match_vendor(config)
            if binding is not None:
                return driver, binding
    what = f"{protocol.upper()} function" if protocol else "network function usbnetd drives"
    where = f"configuration {configuration}" if configuration is not None else "any configuration"
    raise NoDriver(f"the device has no {what} in {where}")
