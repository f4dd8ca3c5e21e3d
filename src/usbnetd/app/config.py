"""Configuration: /etc/usbnetd/usbnetd.toml plus /etc/usbnetd/conf.d/*.toml, read with tomllib.

Files are read in that order; later files override earlier ones key by key, and their `[[device]]` entries
are appended (a later entry for the same device wins). Every value is checked at load time; a bad one stops
start-up with the file, the key and the reason — never a half-applied configuration. Command-line options
override the files. USBNETD_CONFIG_DIR points somewhere else (tests, trying a configuration out).

    [interface]
    name = "enx{mac}"         # template: {mac} {busid} {serial} {protocol}; at most 15 characters once filled
    persistent = true         # keep the TAP (addresses, routes) across daemon restarts; detach removes it
    mtu = 1500                # default MTU (else the device's maximum)

    [queues]
    rx_transfers = 0          # bulk IN transfers in flight (0: automatic, usbnet's rule)
    tx_transfers = 0          # bulk OUT transfers in flight (0: automatic)
    gro = true                # coalesce received TCP segments into one TAP write (docs/performance.md)
    tso = true                # NCM with the C fast path: take TCP super-frames and partial checksums from the TAP
    busy_poll_us = 0          # poll without sleeping this long after work: lower latency for a CPU at 100 %

    [control]
    group = "usbnetd"         # members of this group may use the control socket too (status, stats, detach)

    [ncm]
    rx_ntb_size = 32768       # NTB input size asked of the device
    tx_ntb_size = 32768       # largest NTB sent
    ntb32 = false

    [[device]]
    id = "0525:a4a1"          # VID:PID; or busid = "3-1"; optionally serial = "..."
    protocol = "ncm"          # ncm | ecm | rndis | eem | subset | ax88179 | r8152 | ipheth
    configuration = 1
    quirks = []
    ifname = "usblab0"
    mac = "02:00:00:00:00:01"
    mtu = 1400
    auto_attach = true        # udev starts usbnetd for this device (docs/operating.md)
    note = "why"
"""

from __future__ import annotations

import glob
import os
import re
import tomllib
from dataclasses import dataclass, field, replace

from ..netdev.tap import IFNAMSIZ, validate_ifname
from ..protocols.devices import BUILTIN, PROTOCOLS, ConfigError, DeviceEntry, parse_quirks
from .control import resolve_group

_ID = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")
_BUSID = re.compile(r"^[1-9][0-9]{0,2}-[1-9][0-9]{0,2}(\.[1-9][0-9]{0,2}){0,6}$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_TEMPLATE_FIELDS = ("mac", "busid", "serial", "protocol")
MTU_RANGE = (68, 16000)
BUSY_POLL_MAX_US = 1_000_000  # a second: longer than any timer of the loop's, so "never sleep while busy"


@dataclass(frozen=True)
class Settings:
    ifname_template: str = "enx{mac}"
    persistent: bool = False
    mtu: int | None = None
    rx_transfers: int = 0
    tx_transfers: int = 0
    gro: bool = True
    tso: bool = True
    busy_poll_us: int = 0
    rx_ntb_size: int | None = None
    tx_ntb_size: int | None = None
    ntb32: bool | None = None
    control_group: str | None = None
    control_gid: int | None = None
    devices: tuple[DeviceEntry, ...] = field(default_factory=tuple)
    files: tuple[str, ...] = ()

    def device(self, vendor: int | None, product: int | None, busid: str | None = None,
               serial: str | None = None) -> DeviceEntry | None:
        """The entry for this device: the last matching one wins (conf.d overrides the main file)."""
        found = None
        for e in (*BUILTIN, *self.devices):
            if e.busid is not None:
                if e.busid != busid:
                    continue
            elif (e.vendor, e.product) != (vendor, product):
                continue
            if e.serial is not None and e.serial != serial:
                continue
            found = e
        return found

    def ifname_for(self, mac: bytes, busid: str, serial: str | None, protocol: str) -> str:
        name = self.ifname_template.format(mac=mac.hex(), busid=re.sub(r"[^0-9A-Za-z]", "_", busid),
                                           serial=name_part(serial), protocol=protocol)
        reason = validate_ifname(name)
        if reason:
            raise ConfigError(f"interface.name: the template {self.ifname_template!r} gives {name!r}: {reason}")
        return name


def name_part(text: str | None) -> str:
    """A string from the device (its serial number) made fit for an interface name: ASCII letters, digits,
    '_', '.' and '-' only (anything else, '/', control characters and non-ASCII included, becomes '_'), no
    leading '-' or '.' (nothing that looks like an option, no '.' or '..'), at most 15 characters."""
    s = re.sub(r"[^0-9A-Za-z_.-]", "_", text or "")[: IFNAMSIZ - 1]
    return re.sub(r"^[-.]+", lambda m: "_" * len(m.group()), s)


def config_dir() -> str:
    return os.environ.get("USBNETD_CONFIG_DIR", "/etc/usbnetd")


def config_files(directory: str | None = None) -> list[str]:
    d = directory or config_dir()
    main = os.path.join(d, "usbnetd.toml")
    return ([main] if os.path.exists(main) else []) + sorted(glob.glob(os.path.join(d, "conf.d", "*.toml")))


class _Reader:
    """Typed access to one table of one file, naming file and key in every error."""

    def __init__(self, path: str, where: str, table: object) -> None:
        self.path, self.where = path, where
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {where}: must be a table")
        self.table = table

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.where}.{key}: {reason}")

    def check_keys(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.table) - allowed)
        if unknown:
            raise ConfigError(f"{self.path}: {self.where}: unknown key {unknown[0]!r}")

    def get(self, key: str, kind: type, default=None):
        if key not in self.table:
            return default
        v = self.table[key]
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise self.fail(key, "must be an integer")
        if kind is not int and not isinstance(v, kind):
            raise self.fail(key, f"must be a {kind.__name__ if kind is not str else 'string'}")
        return v

    def int_in(self, key: str, lo: int, hi: int, default=None):
        if key not in self.table:
            return default
        v = self.get(key, int)
        if not lo <= v <= hi:
            raise self.fail(key, f"{v} is not in {lo}..{hi}")
        return v


def _device(path: str, i: int, raw: object) -> DeviceEntry:
    r = _Reader(path, f"device[{i}]", raw)
    r.check_keys({"id", "busid", "serial", "protocol", "configuration", "quirks", "note", "ifname", "mac", "mtu",
                  "auto_attach"})
    vendor = product = None
    ident = r.get("id", str)
    busid = r.get("busid", str)
    if ident is None and busid is None:
        raise r.fail("id", 'each device needs id = "VID:PID" or busid = "1-1"')
    if ident is not None:
        m = _ID.match(ident)
        if not m:
            raise r.fail("id", 'must be "VID:PID" in hex, like "0bda:8153"')
        vendor, product = int(m.group(1), 16), int(m.group(2), 16)
    if busid is not None and not _BUSID.match(busid):
        raise r.fail("busid", f"{busid!r} is not a bus id like 1-1 or 3-2.4")
    protocol = r.get("protocol", str)
    if protocol is not None and protocol not in PROTOCOLS:
        raise r.fail("protocol", f"{protocol!r} is not one of {', '.join(PROTOCOLS)}")
    try:
        quirks = parse_quirks(r.get("quirks", list, []))
    except ValueError as exc:
        raise r.fail("quirks", str(exc)) from None
    ifname = r.get("ifname", str)
    if ifname is not None and validate_ifname(ifname):
        raise r.fail("ifname", validate_ifname(ifname))
    mac = r.get("mac", str)
    if mac is not None:
        if not _MAC.match(mac):
            raise r.fail("mac", f"{mac!r} is not a MAC address like 02:11:22:33:44:55")
        if int(mac[:2], 16) & 1:
            raise r.fail("mac", f"{mac} is a multicast address")
    return DeviceEntry(
        vendor=vendor, product=product, busid=busid, serial=r.get("serial", str),
        protocol=protocol, configuration=r.int_in("configuration", 1, 255), quirks=quirks,
        note=r.get("note", str, ""), ifname=ifname, mac=bytes.fromhex(mac.replace(":", "")) if mac else None,
        mtu=r.int_in("mtu", *MTU_RANGE), auto_attach=r.get("auto_attach", bool, False),
    )


def load(directory: str | None = None) -> Settings:
    s = Settings()
    files = config_files(directory)
    devices: list[DeviceEntry] = []
    for path in files:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        unknown = sorted(set(data) - {"interface", "queues", "ncm", "control", "device"})
        if unknown:
            raise ConfigError(f"{path}: unknown section {unknown[0]!r}")
        if "interface" in data:
            r = _Reader(path, "interface", data["interface"])
            r.check_keys({"name", "persistent", "mtu"})
            template = r.get("name", str, s.ifname_template)
            try:
                sample = template.format(mac="0" * 12, busid="1_1", serial="", protocol="ncm")
            except (KeyError, IndexError, ValueError) as exc:
                raise r.fail("name", f"bad template {template!r}: use only {{{'}, {'.join(_TEMPLATE_FIELDS)}}}"
                             f" ({exc})") from None
            if not sample:
                raise r.fail("name", "the template gives an empty name")
            s = replace(s, ifname_template=template, persistent=r.get("persistent", bool, s.persistent),
                        mtu=r.int_in("mtu", *MTU_RANGE, default=s.mtu))
        if "queues" in data:
            r = _Reader(path, "queues", data["queues"])
            r.check_keys({"rx_transfers", "tx_transfers", "gro", "tso", "busy_poll_us"})
            s = replace(s, rx_transfers=r.int_in("rx_transfers", 0, 256, s.rx_transfers),
                        tx_transfers=r.int_in("tx_transfers", 0, 256, s.tx_transfers),
                        gro=r.get("gro", bool, s.gro), tso=r.get("tso", bool, s.tso),
                        busy_poll_us=r.int_in("busy_poll_us", 0, BUSY_POLL_MAX_US, s.busy_poll_us))
        if "ncm" in data:
            r = _Reader(path, "ncm", data["ncm"])
            r.check_keys({"rx_ntb_size", "tx_ntb_size", "ntb32"})
            s = replace(s, rx_ntb_size=r.int_in("rx_ntb_size", 2048, 1 << 20, s.rx_ntb_size),
                        tx_ntb_size=r.int_in("tx_ntb_size", 2048, 1 << 20, s.tx_ntb_size),
                        ntb32=r.get("ntb32", bool, s.ntb32))
        if "control" in data:
            r = _Reader(path, "control", data["control"])
            r.check_keys({"group"})
            group = r.get("group", str)
            if group is not None:
                try:
                    gid = resolve_group(group)
                except ValueError as exc:
                    raise r.fail("group", str(exc)) from None
                s = replace(s, control_group=group, control_gid=gid)
        raw_devices = data.get("device", [])
        if not isinstance(raw_devices, list):
            raise ConfigError(f"{path}: device: must be an array of tables ([[device]])")
        devices.extend(_device(path, i, raw) for i, raw in enumerate(raw_devices))
    return replace(s, devices=tuple(devices), files=tuple(files))


def load_table(directory: str | None = None) -> dict[tuple[int, int], DeviceEntry]:
    """VID:PID -> entry, built-in first, then the configuration files' (for listing)."""
    table = {(e.vendor, e.product): e for e in BUILTIN}
    for e in load(directory).devices:
        if e.vendor is not None and e.busid is None and e.serial is None:
            table[(e.vendor, e.product)] = e
    return table
