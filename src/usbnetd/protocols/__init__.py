"""Protocol drivers: one small module per USB Ethernet class on one shared core.

`DRIVERS` lists them in order of preference — the protocol usbnetd drives best first (NCM batches many
frames per transfer, ECM sends one) — and `choose()` picks a configuration and driver for a device.
"""

from __future__ import annotations

from ..descriptors import Configuration
from .base import Binding, ProtocolDriver
from .ecm import EcmDriver
from .ncm import NcmDriver

DRIVERS: tuple[type[ProtocolDriver], ...] = (NcmDriver, EcmDriver)
BY_NAME = {d.name: d for d in DRIVERS}


class NoDriver(Exception):
    pass


def choose(configs: list[Configuration], active: int | None, protocol: str | None = None,
           configuration: int | None = None) -> tuple[type[ProtocolDriver], Binding]:
    """Pick (driver, binding): the best protocol overall, preferring the active configuration on a tie."""
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
            if binding is not None:
                return driver, binding
    what = f"{protocol.upper()} function" if protocol else "network function usbnetd drives"
    where = f"configuration {configuration}" if configuration is not None else "any configuration"
    raise NoDriver(f"the device has no {what} in {where}")
