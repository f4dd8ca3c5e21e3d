"""The CDC subset ("geth", Zaurus-style SA-1100 era devices, Linux's f_subset): bulk only, no control.

No class requests, no notifications, no MAC from the device: the link is up as long as the device is there,
and the MAC is a random locally administered one unless configured (as Linux's cdc_subset does). Framing is
ECM's: one frame per transfer. Matched by an MDLM (02/0A) interface that carries its own bulk pair, or by
the device table for vendor-class devices.
"""

from __future__ import annotations

from ..usb.descriptors import XFER_BULK, Configuration
from . import cdc
from .driver import Binding, DriverFlag, OneFramePerTransfer, ProtocolDriver, bulk_alt


def match_bulk_only(config: Configuration, cls: int, subclass: int, protocol: int | None) -> Binding | None:
    """An interface of this class whose own alt setting has the bulk pair (EEM, subset)."""
    for iface in config.interfaces:
        first = iface.alts[0] if iface.alts else None
        if first is None or first.cls != cls or first.subclass != subclass:
            continue
        if protocol is not None and first.protocol != protocol:
            continue
        found = bulk_alt(iface.alts)
        if found is None:
            continue
        alt, ep_in, ep_out = found
        functional = cdc.parse_cdc_functional(first.extra) if first.extra else None
        return Binding(config.value, None, iface.number, alt.alternate, ep_in, ep_out, None, functional)
    return None


class SubsetDriver(OneFramePerTransfer, ProtocolDriver):
    name = "subset"
    flags = DriverFlag.NO_LINK_STATE | DriverFlag.NO_CONTROL

    @classmethod
    def match(cls, config: Configuration) -> Binding | None:
        return match_bulk_only(config, cdc.CLASS_COMM, cdc.SUBCLASS_MDLM, None)

    @classmethod
    def match_vendor(cls, config: Configuration) -> Binding | None:
        """For a device-table entry: the first interface with a bulk pair, whatever its class."""
        for iface in config.interfaces:
            found = bulk_alt(iface.alts)
            if found is not None and found[1].transfer_type == XFER_BULK:
                alt, ep_in, ep_out = found
                return Binding(config.value, None, iface.number, alt.alternate, ep_in, ep_out, None, None)
        return None

    def bind(self) -> None:
        self.mac = None  # random unless configured: subset devices have no standard way to tell a MAC
        self.init_framing()
