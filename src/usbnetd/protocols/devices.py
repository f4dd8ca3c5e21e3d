"""The device table: per-device choices and quirks, as data.

Class matching (protocols.choose) handles every standards-compliant adapter; this table is for devices that
need more: a vendor-class CDC-subset device that no class code identifies, a preferred protocol or
configuration, or a quirk. The built-in entries are here; `[[device]]` tables in the configuration files
(app/config.py) add to and override them — no code change needed for a new device.

Quirks are typed (`driver.Quirk`); the names here are what configuration files write. Acting only on link
*changes* (some devices repeat NETWORK_CONNECTION every 32 ms) is what every device gets, not a quirk.
"""

from __future__ import annotations

from dataclasses import dataclass

from .driver import Quirk

PROTOCOLS = ("ncm", "ecm", "rndis", "eem", "subset", "ax88179", "r8152", "ipheth")

# Configuration name -> (quirk, what it does).
QUIRKS: dict[str, tuple[Quirk, str]] = {
    "ntb32": (Quirk.NTB32, "NCM: use 32-bit NTBs (for devices whose NTB16 support is broken)"),
    "ntb16": (Quirk.NTB16, "NCM: never use NTB32 even when asked"),
    "no-packet-filter": (Quirk.NO_PACKET_FILTER, "do not send SET_ETHERNET_PACKET_FILTER (devices that stall on it)"),
    "ignore-link": (Quirk.IGNORE_LINK, "ignore link notifications and keep carrier on (devices that report the "
                                       "link wrongly)"),
    "ipheth-ncm": (Quirk.IPHETH_NCM, "iPhone tethering: ask for the NCM mode of newer iOS (RX as NTBs); the phone "
                                     "keeps it until replugged, which a kernel ipheth without that mode (6.1) "
                                     "cannot read"),
}
# Names that once were quirks, and why they are gone (a configuration naming one gets this as its error).
RETIRED_QUIRKS = {
    "ignore-repeated-link": "acting only on link changes is what every device gets; remove it",
}


def parse_quirks(names: list[str]) -> Quirk:
    """Configuration names -> Quirk flags; ValueError (one line) for a name that is not a quirk."""
    quirks = Quirk.NONE
    for name in names:
        if not isinstance(name, str) or name not in QUIRKS:
            why = RETIRED_QUIRKS.get(name) if isinstance(name, str) else None
            raise ValueError(f"quirk {name!r} is gone: {why}" if why else
                             f"unknown quirk {name!r} (known: {', '.join(sorted(QUIRKS))})")
        quirks |= QUIRKS[name][0]
    return quirks


def quirk_names(quirks: Quirk) -> list[str]:
    return [name for name, (flag, _) in QUIRKS.items() if quirks & flag]


class ConfigError(Exception):
    """A configuration file is wrong; the message names the file, the key and the reason."""


@dataclass(frozen=True)
class DeviceEntry:
    """One device's settings. Matched by VID:PID, or by bus id; `serial` narrows either."""

    vendor: int | None = None
    product: int | None = None
    protocol: str | None = None
    configuration: int | None = None
    quirks: Quirk = Quirk.NONE
    note: str = ""
    busid: str | None = None
    serial: str | None = None
    ifname: str | None = None
    mac: bytes | None = None
    mtu: int | None = None
    auto_attach: bool = False


# Built-in entries. Only facts verified against a device or its driver belong here.
BUILTIN: tuple[DeviceEntry, ...] = (
    # Its ECM/NCM configuration; old firmware repeats NETWORK_CONNECTION every 32 ms, which needs nothing
    # (every device's link is acted on only when it changes). Linux's r8152 lists it too, but protocols/r8152.py
    # does not drive the RTL8156's vendor mode, so it stays on class matching.
    DeviceEntry(0x0BDA, 0x8156, note="Realtek RTL8156"),
    # Realtek RTL8152/RTL8153 family and the adapters built on it: the ids Linux's r8152 matches (vendor
    # interface FF/FF/00), driven by protocols/r8152.py, which takes RTL8153 versions 3-6 and refuses the
    # others in one line (those keep their ECM configuration: --protocol ecm).
    *(DeviceEntry(vid, pid, protocol="r8152", note=note) for vid, pid, note in (
        (0x0BDA, 0x8050, "Realtek RTL8152 family (8050)"),
        (0x0BDA, 0x8053, "Realtek RTL8153 family (8053)"),
        (0x0BDA, 0x8152, "Realtek RTL8152 Fast Ethernet"),
        (0x0BDA, 0x8153, "Realtek RTL8153 gigabit Ethernet"),
        (0x0BDA, 0x8155, "Realtek RTL8152 family (8155)"),
        (0x045E, 0x07AB, "Microsoft Surface Ethernet adapter (RTL8153)"),
        (0x045E, 0x07C6, "Microsoft Surface Dock Ethernet (RTL8153)"),
        (0x045E, 0x0927, "Microsoft Surface Ethernet adapter (RTL8153)"),
        (0x045E, 0x0C5E, "Microsoft Surface Ethernet adapter (RTL8152 family)"),
        (0x04E8, 0xA101, "Samsung USB Ethernet adapter (RTL8152 family)"),
        (0x17EF, 0x304F, "Lenovo ThinkPad OneLink+ dock (RTL8153)"),
        (0x17EF, 0x3054, "Lenovo ThinkPad OneLink Plus dock (RTL8153)"),
        (0x17EF, 0x3062, "Lenovo ThinkPad USB-C Dock Gen 3 (RTL8153)"),
        (0x17EF, 0x3069, "Lenovo ThinkPad TBT3 dock (RTL8153)"),
        (0x17EF, 0x3082, "Lenovo ThinkPad Thunderbolt 3 Dock Gen 2 (RTL8153)"),
        (0x17EF, 0x3098, "Lenovo ThinkPad dock (RTL8153)"),
        (0x17EF, 0x7205, "Lenovo USB-C to Ethernet adapter (RTL8153)"),
        (0x17EF, 0x720C, "Lenovo ThinkPad USB-C dongle (RTL8153)"),
        (0x17EF, 0x7214, "Lenovo ThinkPad USB-C Dock Gen 2 (RTL8153)"),
        (0x17EF, 0x721E, "Lenovo USB-C Travel Hub (RTL8153)"),
        (0x17EF, 0xA387, "Lenovo ThinkPad USB-C Dock Gen 2 (RTL8153)"),
        (0x13B1, 0x0041, "Linksys USB3GIGV1 (RTL8153)"),
        (0x0955, 0x09FF, "Nvidia SHIELD / Tegra Ethernet adapter (RTL8153)"),
        (0x2357, 0x0601, "TP-Link UE300 (RTL8153)"),
        (0x2001, 0xB301, "D-Link DUB-E250 (RTL8152 family)"),
        (0x0B05, 0x1976, "ASUS USB-C2500 (RTL8152 family)"),
    )),
    # ASIX AX88179 / AX88178A and the adapters built on them: the ids Linux's ax88179_178a matches (each with
    # interface FF/FF/00), driven by protocols/ax88179.py.
    *(DeviceEntry(vid, pid, protocol="ax88179", note=note) for vid, pid, note in (
        (0x0B95, 0x1790, "ASIX AX88179 USB 3.0 gigabit Ethernet"),
        (0x0B95, 0x178A, "ASIX AX88178A USB 2.0 gigabit Ethernet"),
        (0x04B4, 0x3610, "Cypress GX3 SuperSpeed to gigabit Ethernet (AX88179)"),
        (0x2001, 0x4A00, "D-Link DUB-1312 (AX88179)"),
        (0x0DF6, 0x0072, "Sitecom USB 3.0 gigabit adapter (AX88179)"),
        (0x04E8, 0xA100, "Samsung USB Ethernet adapter (AX88179)"),
        (0x17EF, 0x304B, "Lenovo OneLinkDock gigabit LAN (AX88179)"),
        (0x050D, 0x0128, "Belkin B2B128 hub + gigabit Ethernet (AX88179)"),
        (0x0930, 0x0A13, "Toshiba USB 3.0 gigabit adapter (AX88179)"),
        (0x0711, 0x0179, "Magic Control Technology U3-A9003 (AX88179)"),
        (0x07C9, 0x000E, "Allied Telesis AT-UMC2000 (AX88179)"),
        (0x07C9, 0x000F, "Allied Telesis AT-UMC200 (AX88179)"),
        (0x07C9, 0x0010, "Allied Telesis AT-UMC2000/SP (AX88179)"),
    )),
    # Apple iPhone / iPad tethering (interface FF/FD/01), driven by protocols/ipheth.py: the ids older kernels'
    # ipheth listed (6.1 matches any Apple id with that interface; every iPhone since the 5 is 05ac:12a8).
    *(DeviceEntry(0x05AC, pid, protocol="ipheth", note=note) for pid, note in (
        (0x1290, "Apple iPhone (tethering)"),
        (0x1292, "Apple iPhone 3G (tethering)"),
        (0x1294, "Apple iPhone 3GS (tethering)"),
        (0x1297, "Apple iPhone 4 (tethering)"),
        (0x129A, "Apple iPad (tethering)"),
        (0x129C, "Apple iPhone 4 Verizon (tethering)"),
        (0x12A0, "Apple iPhone 4S (tethering)"),
        (0x12A2, "Apple iPad 2 (tethering)"),
        (0x12A6, "Apple iPad 3 (tethering)"),
        (0x12A8, "Apple iPhone 5 and later (tethering)"),
        (0x12AB, "Apple iPad mini (tethering)"),
    )),
)

