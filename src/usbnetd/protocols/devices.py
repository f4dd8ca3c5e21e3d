"""The device table: per-device choices and quirks, as data.

Class matching (protocols.choose) handles every standards-compliant adapter; this table is for devices that
need more: a vendor-class CDC-subset device that no class code identifies, a preferred protocol or
configuration, or a quirk. The built-in entries are here; `[[device]]` tables in the configuration files
(config.py) add to and override them — no code change needed for a new device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PROTOCOLS = ("ncm", "ecm", "rndis", "eem", "subset")

QUIRKS = {
    "ntb32": "NCM: use 32-bit NTBs (for devices whose NTB16 support is broken)",
    "ntb16": "NCM: never use NTB32 even when asked",
    "no-packet-filter": "do not send SET_ETHERNET_PACKET_FILTER (devices that stall on it)",
    "ignore-link": "ignore link notifications and keep carrier on (devices that report the link wrongly)",
    "ignore-repeated-link": "act only on link changes (the default for every device; kept for documentation)",
}

class ConfigError(Exception):
    """A configuration file is wrong; the message names the file, the key and the reason."""


@dataclass(frozen=True)
class DeviceEntry:
    """One device's settings. Matched by VID:PID, or by bus id; `serial` narrows either."""

    vendor: int | None = None
    product: int | None = None
    protocol: str | None = None
    configuration: int | None = None
    quirks: frozenset[str] = field(default_factory=frozenset)
    note: str = ""
    busid: str | None = None
    serial: str | None = None
    ifname: str | None = None
    mac: bytes | None = None
    mtu: int | None = None
    auto_attach: bool = False


# Built-in entries. Only facts verified against a device or its driver belong here.
BUILTIN: tuple[DeviceEntry, ...] = (
    DeviceEntry(0x0BDA, 0x8156, quirks=frozenset({"ignore-repeated-link"}),
                note="Realtek RTL8156, old firmware repeats NETWORK_CONNECTION every 32 ms"),
)

