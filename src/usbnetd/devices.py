"""The device table: per VID:PID choices and quirks, as data, extendable from configuration files.

Class matching (protocols.choose) handles every standards-compliant adapter; this table is only for devices
that need more: a vendor-class CDC-subset device that no class code identifies, a preferred protocol or
configuration, or a quirk. Entries from `[[device]]` tables in /etc/usbnetd/usbnetd.toml and
/etc/usbnetd/conf.d/*.toml (USBNETD_CONFIG_DIR overrides the directory) are added after, and so override,
the built-in ones — no code change needed for a new device.

    [[device]]
    id = "0bda:8153"            # VID:PID, hex
    protocol = "ecm"            # ncm | ecm | rndis | eem | subset (optional)
    configuration = 2           # bConfigurationValue (optional)
    quirks = ["no-packet-filter"]
    note = "why this entry exists"
"""

from __future__ import annotations

import glob
import os
import re
import tomllib
from dataclasses import dataclass, field

PROTOCOLS = ("ncm", "ecm", "rndis", "eem", "subset")

QUIRKS = {
    "ntb32": "NCM: use 32-bit NTBs (for devices whose NTB16 support is broken)",
    "ntb16": "NCM: never use NTB32 even when asked",
    "no-packet-filter": "do not send SET_ETHERNET_PACKET_FILTER (devices that stall on it)",
    "ignore-link": "ignore link notifications and keep carrier on (devices that report the link wrongly)",
    "ignore-repeated-link": "act only on link changes (the default for every device; kept for documentation)",
}

_ID = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")


class ConfigError(Exception):
    """A configuration file is wrong; the message names the file, the key and the reason."""


@dataclass(frozen=True)
class DeviceEntry:
    vendor: int
    product: int
    protocol: str | None = None
    configuration: int | None = None
    quirks: frozenset[str] = field(default_factory=frozenset)
    note: str = ""


# Built-in entries. Only facts verified against a device or its driver belong here.
BUILTIN: tuple[DeviceEntry, ...] = (
    DeviceEntry(0x0BDA, 0x8156, quirks=frozenset({"ignore-repeated-link"}),
                note="Realtek RTL8156, old firmware repeats NETWORK_CONNECTION every 32 ms"),
)


def config_dir() -> str:
    return os.environ.get("USBNETD_CONFIG_DIR", "/etc/usbnetd")


def config_files(directory: str | None = None) -> list[str]:
    d = directory or config_dir()
    main = os.path.join(d, "usbnetd.toml")
    return ([main] if os.path.exists(main) else []) + sorted(glob.glob(os.path.join(d, "conf.d", "*.toml")))


def _entry(path: str, i: int, raw: object) -> DeviceEntry:
    where = f"{path}: device[{i}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(raw) - {"id", "protocol", "configuration", "quirks", "note"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    m = _ID.match(str(raw.get("id", "")))
    if not m:
        raise ConfigError(f"{where}.id: must be \"VID:PID\" in hex, like \"0bda:8153\"")
    protocol = raw.get("protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        raise ConfigError(f"{where}.protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    configuration = raw.get("configuration")
    if configuration is not None and (not isinstance(configuration, int) or isinstance(configuration, bool)
                                      or not 1 <= configuration <= 255):
        raise ConfigError(f"{where}.configuration: must be an integer from 1 to 255")
    quirks = raw.get("quirks", [])
    if not isinstance(quirks, list) or not all(isinstance(q, str) for q in quirks):
        raise ConfigError(f"{where}.quirks: must be a list of strings")
    for q in quirks:
        if q not in QUIRKS:
            raise ConfigError(f"{where}.quirks: unknown quirk {q!r} (known: {', '.join(sorted(QUIRKS))})")
    note = raw.get("note", "")
    if not isinstance(note, str):
        raise ConfigError(f"{where}.note: must be a string")
    return DeviceEntry(int(m.group(1), 16), int(m.group(2), 16), protocol, configuration, frozenset(quirks), note)


def load_table(directory: str | None = None) -> dict[tuple[int, int], DeviceEntry]:
    table = {(e.vendor, e.product): e for e in BUILTIN}
    for path in config_files(directory):
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        devices = data.get("device", [])
        if not isinstance(devices, list):
            raise ConfigError(f"{path}: device: must be an array of tables ([[device]])")
        for i, raw in enumerate(devices):
            e = _entry(path, i, raw)
            table[(e.vendor, e.product)] = e
    return table


def lookup(vendor: int, product: int, table: dict[tuple[int, int], DeviceEntry] | None = None) -> DeviceEntry | None:
    return (table if table is not None else load_table()).get((vendor, product))
