"""Standard USB descriptors: the raw bytes of a device and its configurations, parsed into plain data.

One parser serves every source of descriptors — a real device (read with GET_DESCRIPTOR through libusb),
sysfs's `descriptors` file (for `usbnetd list`, which must not open devices), and the simulated adapter —
so protocol matching sees identical structures whatever the transport. Parsing is tolerant: a descriptor
that runs past the end stops the walk and is counted in `malformed`; nothing here raises on device bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

DT_DEVICE = 0x01
DT_CONFIG = 0x02
DT_INTERFACE = 0x04
DT_ENDPOINT = 0x05
DT_IAD = 0x0B

XFER_BULK = 2
XFER_INTERRUPT = 3

_DEVICE = struct.Struct("<BBHBBBBHHHBBBB")
_CONFIG = struct.Struct("<BBHBBBBB")
_INTERFACE = struct.Struct("<BBBBBBBBB")
_ENDPOINT = struct.Struct("<BBBBHB")


@dataclass(frozen=True)
class Endpoint:
    address: int
    attributes: int
    max_packet: int
    interval: int

    @property
    def is_in(self) -> bool:
        return bool(self.address & 0x80)

    @property
    def transfer_type(self) -> int:
        return self.attributes & 0x03


@dataclass(frozen=True)
class AltSetting:
    number: int
    alternate: int
    cls: int
    subclass: int
    protocol: int
    iinterface: int
    endpoints: tuple[Endpoint, ...]
    extra: bytes  # class-specific descriptors that follow the interface descriptor

    def endpoint(self, transfer_type: int, is_in: bool) -> Endpoint | None:
        for ep in self.endpoints:
            if ep.transfer_type == transfer_type and ep.is_in == is_in:
                return ep
        return None


@dataclass(frozen=True)
class Interface:
    number: int
    alts: tuple[AltSetting, ...]

    def alt(self, alternate: int) -> AltSetting | None:
        for a in self.alts:
            if a.alternate == alternate:
                return a
        return None


@dataclass(frozen=True)
class Configuration:
    value: int
    iconfiguration: int
    interfaces: tuple[Interface, ...]
    malformed: int = 0

    def interface(self, number: int) -> Interface | None:
        for i in self.interfaces:
            if i.number == number:
                return i
        return None


@dataclass(frozen=True)
class DeviceDescriptor:
    usb_version: int
    cls: int
    subclass: int
    protocol: int
    max_packet0: int
    vendor: int
    product: int
    device_version: int
    imanufacturer: int
    iproduct: int
    iserial: int
    num_configurations: int


def parse_device(data: bytes) -> DeviceDescriptor | None:
    if len(data) < _DEVICE.size or data[1] != DT_DEVICE:
        return None
    f = _DEVICE.unpack_from(data)
    return DeviceDescriptor(*f[2:])


@dataclass
class _AltBuilder:
    number: int
    alternate: int
    cls: int
    subclass: int
    protocol: int
    iinterface: int
    endpoints: list[Endpoint] = field(default_factory=list)
    extra: bytearray = field(default_factory=bytearray)


def parse_configuration(data: bytes) -> tuple[Configuration | None, int]:
    """Parse one configuration descriptor with everything under it.

    Returns (configuration or None if the header itself is unusable, bytes consumed). The walk is bounded by
    both the buffer and wTotalLength, so a lying wTotalLength cannot make it read past the data.
    """
    if len(data) < _CONFIG.size or data[0] < _CONFIG.size or data[1] != DT_CONFIG:
        return None, len(data)
    _, _, total, _, value, iconf, _, _ = _CONFIG.unpack_from(data)
    end = min(len(data), max(total, _CONFIG.size))
    pos = data[0]
    malformed = 0
    alts: list[_AltBuilder] = []
    current: _AltBuilder | None = None
    while pos + 2 <= end:
        length, dtype = data[pos], data[pos + 1]
        if length < 2 or pos + length > end:
            malformed += 1
            break
        if dtype == DT_INTERFACE and length >= _INTERFACE.size:
            _, _, num, alt, _, cls, sub, proto, iif = _INTERFACE.unpack_from(data, pos)
            current = _AltBuilder(num, alt, cls, sub, proto, iif)
            alts.append(current)
        elif dtype == DT_ENDPOINT and length >= 7:
            if current is not None:
                _, _, addr, attrs, mps, interval = _ENDPOINT.unpack_from(data, pos)
                # Bits 11-12 of wMaxPacketSize are high-bandwidth multipliers, not size.
                current.endpoints.append(Endpoint(addr, attrs, mps & 0x7FF, interval))
        elif dtype in (DT_INTERFACE, DT_ENDPOINT):
            malformed += 1
        elif current is not None and dtype != DT_IAD:
            current.extra += data[pos : pos + length]
        pos += length
    by_number: dict[int, list[AltSetting]] = {}
    for b in alts:
        by_number.setdefault(b.number, []).append(
            AltSetting(
                b.number, b.alternate, b.cls, b.subclass, b.protocol, b.iinterface, tuple(b.endpoints),
                bytes(b.extra),
            )
        )
    interfaces = tuple(Interface(n, tuple(a)) for n, a in sorted(by_number.items()))
    return Configuration(value, iconf, interfaces, malformed), end


def parse_descriptor_blob(data: bytes) -> tuple[DeviceDescriptor | None, list[Configuration]]:
    """Parse sysfs's `descriptors` file: the device descriptor followed by every configuration."""
    dev = parse_device(data)
    configs: list[Configuration] = []
    pos = data[0] if dev is not None else 0
    while pos + _CONFIG.size <= len(data):
        config, used = parse_configuration(data[pos:])
        if config is None or used <= 0:
            break
        configs.append(config)
        pos += used
    return dev, configs
