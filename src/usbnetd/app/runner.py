"""`usbnetd run`: from a DEVICE argument to a running instance, and every start-up failure as one line.

Opens the transport (libusb or the simulated adapter), picks the configuration and protocol driver, builds
the Ethernet service and hands it to the event loop. Whatever goes wrong before the loop runs becomes a
StartError whose text is what the user reads.
"""

from __future__ import annotations

import logging
import os

from ..core.service import EthernetService
from ..core.stats import Stats
from ..netdev import announce
from ..netdev.tap import Tap, TapError
from ..protocols import NoDriver, choose
from ..protocols.devices import ConfigError
from ..protocols.driver import Options, Quirk
from ..usb.transport import TransportError
from . import config, control
from .control import AlreadyRunning
from .daemon import Daemon
from .discovery import BadDevice, DeviceSpec, open_usb

log = logging.getLogger(__name__)


class StartError(Exception):
    pass


def run_device(spec: DeviceSpec, control_path: str | None, ifname: str | None = None,
               sim_peer: str = "usbnetsim0", mac: bytes | None = None, mtu: int | None = None,
               protocol: str | None = None, configuration: int | None = None, ntb32: bool | None = None,
               persistent: bool | None = None, on_ready=None, control_group: int | None = None,
               gro: bool | None = None, native: bool = True, tso: bool | None = None,
               busy_poll_us: int | None = None) -> None:
    """Command-line values win over the device's [[device]] entry, which wins over the global settings."""
    context = None
    transport = None
    announced: list[tuple[str, str]] = []  # (file, ifname): what udev was told (netdev/announce.py)
    try:
        settings = config.load()  # first: a bad configuration must stop us before anything is touched
        if spec.kind == "sim":
            from ..usb.sim import SimTransport

            transport = SimTransport(spec.sim, sim_peer, faults=dict(spec.sim_options))
        else:
            context, transport = open_usb(spec)
        ident = transport.identity
        entry = settings.device(ident.vendor, ident.product, ident.busid, ident.serial) if spec.kind != "sim" \
            else None
        if entry is not None:
            log.info("configuration for %s: %s", ident.busid, entry.note or "device entry")
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
        options = Options(
            ntb32=ntb32 if ntb32 is not None else settings.ntb32,
            rx_size=settings.rx_ntb_size, tx_size=settings.tx_ntb_size,
            quirks=entry.quirks if entry else Quirk.NONE,
        )
        driver = driver_cls(transport, binding, Stats(), options)

        def name_for(device_mac: bytes) -> str:
            return settings.ifname_for(device_mac, ident.busid, ident.serial, driver_cls.name)

        def tap_factory(name: str, *args, **kwargs) -> Tap:
            # The file udev imports must be there before the TAP's "add" uevent, i.e. before TUNSETIFF.
            path = announce.write(control.RUN_DIR, name,
                                  announce.properties(ident.busid, ident.vendor, ident.product, driver_cls.name))
            if path is not None:
                announced.append((path, name))
            return Tap(name, *args, **kwargs)

        service = EthernetService(
            transport, driver,
            ifname=ifname or (entry.ifname if entry else None),
            mac=mac or (entry.mac if entry else None),
            mtu=mtu or (entry.mtu if entry else None) or settings.mtu,
            name_for=name_for,
            persistent=settings.persistent if persistent is None else persistent,
            rx_transfers=settings.rx_transfers, tx_transfers=settings.tx_transfers,
            gro=settings.gro if gro is None else gro,
            tso=settings.tso if tso is None else tso,
            # the Python reference path with offloads too (tests, comparisons; service.py says why not by default)
            tso_python=os.environ.get("USBNETD_TSO_PYTHON", "") not in ("", "0"),
            native=native,
            tap_factory=tap_factory,
        )
        daemon = Daemon(service, control_path,
                        control_group if control_group is not None else settings.control_gid,
                        busy_poll_us=settings.busy_poll_us if busy_poll_us is None else busy_poll_us)
        daemon.run(on_ready)
        if daemon.failed:
            raise StartError(daemon.failed)
    except (BadDevice, NoDriver, TransportError, TapError, AlreadyRunning, ConfigError) as exc:
        raise StartError(str(exc)) from None
    except PermissionError as exc:
        raise StartError(f"permission denied: {exc.strerror or exc} (usbnetd needs root or CAP_NET_ADMIN "
                         "and access to the USB device)") from None
    except OSError as exc:
        raise StartError(f"{exc.strerror or exc}") from None
    finally:
        for path, name in announced:
            announce.retract(path, name)
        if transport is not None and spec.kind == "sim":
            transport.close()
        if context is not None:
            context.close()
