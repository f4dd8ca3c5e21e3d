"""`usbnetd run`: from a DEVICE argument to a running instance, and every start-up failure as one line.

Opens the transport (libusb or the simulated adapter), picks the configuration and protocol driver, builds
the Ethernet service and hands it to the event loop. Whatever goes wrong before the loop runs becomes a
StartError whose text is what the user reads.
"""

from __future__ import annotations

import logging

from .control import AlreadyRunning
from .daemon import Daemon
from .devices import ConfigError, lookup
from .discovery import BadDevice, DeviceSpec, open_usb
from .protocols import NoDriver, choose
from .protocols.base import Options
from .service import EthernetService
from .stats import Stats
from .tap import TapError
from .transport import TransportError

log = logging.getLogger(__name__)


class StartError(Exception):
    pass


def run_device(spec: DeviceSpec, control_path: str | None, ifname: str | None = None,
               sim_peer: str = "usbnetsim0", mac: bytes | None = None, mtu: int | None = None,
               protocol: str | None = None, configuration: int | None = None, ntb32: bool | None = None,
               on_ready=None) -> None:
    context = None
    transport = None
    try:
        if spec.kind == "sim":
            from .sim import SimTransport

            transport = SimTransport(spec.sim, sim_peer)
        else:
            context, transport = open_usb(spec)
        ident = transport.identity
        entry = lookup(ident.vendor, ident.product) if spec.kind != "sim" else None
        if entry is not None:
            log.info("device table: %04x:%04x %s", ident.vendor, ident.product, entry.note or "")
        driver_cls, binding = choose(
            ident.configurations, ident.active_configuration,
            protocol or (entry.protocol if entry else None),
            configuration or (entry.configuration if entry else None),
            vendor_subset=bool(entry and entry.protocol == "subset"),
        )
        if binding.configuration != ident.active_configuration:
            log.info("switching %s to configuration %d for %s", ident.busid, binding.configuration,
                     driver_cls.name)
            transport.set_configuration(binding.configuration)
        quirks = entry.quirks if entry else frozenset()
        driver = driver_cls(transport, binding, Stats(), Options(ntb32=ntb32, quirks=quirks))
        service = EthernetService(transport, driver, ifname=ifname, mac=mac, mtu=mtu)
        Daemon(service, control_path).run(on_ready)
    except (BadDevice, NoDriver, TransportError, TapError, AlreadyRunning, ConfigError) as exc:
        raise StartError(str(exc)) from None
    except PermissionError as exc:
        raise StartError(f"permission denied: {exc.strerror or exc} (usbnetd needs root or CAP_NET_ADMIN "
                         "and access to the USB device)") from None
    except OSError as exc:
        raise StartError(f"{exc.strerror or exc}") from None
    finally:
        if transport is not None and spec.kind == "sim":
            transport.close()
        if context is not None:
            context.close()
