"""What the vendor drivers' core tests share (test_ax88179.py, test_r8152.py, test_ipheth.py).

- `load_emulator(name)`: a bench emulator module (tests/vm/guest/<name>.py) loaded by path, so that the core
  tier drives usbnetd against the same device model the kernel's driver was proven on in the VM;
- `config_descriptor(*interfaces)`: a raw configuration descriptor from (number, alternate, class triple,
  endpoints) tuples;
- `ScriptedVendor`: a ScriptedTransport whose control requests go to the subclass's `_in` / `_out` (raising
  TransportError is a stall), recorded, with the faults every family has: `stall` (every request) and
  `garbage` (reads one byte short); asynchronous control transfers complete at the next turn;
- `start_vendor`, `assert_bad_start` and `assert_silence_rule`: a started service, a start that must fail in
  one line and leave nothing, and the "no link status at all" rule (vendor.VendorDriver).
"""

from __future__ import annotations

import importlib.util
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import fake
import pytest
from fake import FakeTap, ScriptedTransport

from usbnetd.core.service import EthernetService
from usbnetd.core.stats import Stats
from usbnetd.protocols import choose
from usbnetd.protocols.driver import Options
from usbnetd.usb.descriptors import parse_configuration
from usbnetd.usb.transport import STATUS_OK, STATUS_STALL, DeviceIdentity, TransportError

GUEST = Path(__file__).resolve().parents[1] / "vm" / "guest"


def load_emulator(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GUEST / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def endpoint(address: int, kind: int, max_packet: int, interval: int = 0) -> bytes:
    return bytes([7, 5, address, kind]) + struct.pack("<H", max_packet) + bytes([interval])


def config_descriptor(*interfaces: tuple[int, int, tuple[int, int, int], list[bytes]]) -> bytes:
    """(number, alternate, (class, subclass, protocol), [endpoint descriptors]) per interface setting."""
    body = b""
    for number, alt, (cls, sub, proto), eps in interfaces:
        body += bytes([9, 4, number, alt, len(eps), cls, sub, proto, 0]) + b"".join(eps)
    count = len({i[0] for i in interfaces})
    return bytes([9, 2]) + struct.pack("<H", 9 + len(body)) + bytes([count, 1, 0, 0x80, 50]) + body


class ScriptedVendor(ScriptedTransport):
    def __init__(self, raw: bytes, vendor: int, product: int, *, stall: bool = False, garbage: bool = False,
                 speed_mbps: int = 480) -> None:
        super().__init__("ecm")
        config, _ = parse_configuration(raw)
        self.identity = DeviceIdentity(busid=f"fake:{vendor:04x}:{product:04x}", vendor=vendor, product=product,
                                       speed_mbps=speed_mbps, active_configuration=1, configurations=[config])
        self.stall, self.garbage = stall, garbage
        self.requests: list[tuple[str, int, int, int, bytes]] = []  # (dir, bRequest, wValue, wIndex, data)
        self.alts: list[tuple[int, int]] = []

    def set_alt(self, interface: int, alternate: int) -> None:
        self.alts.append((interface, alternate))

    def _in(self, request_type: int, request: int, value: int, index: int, length: int) -> bytes:
        raise TransportError("stall")

    def _out(self, request_type: int, request: int, value: int, index: int, data: bytes) -> None:
        raise TransportError("stall")

    def _stalled(self, request: int) -> None:
        if self.stall:
            raise TransportError(f"control request 0x{request:02x} failed: pipe error (stall)")

    def control_in(self, request_type, request, value, index, length, timeout_ms=1000) -> bytes:
        self._stalled(request)
        data = self._in(request_type, request, value, index, length)
        self.requests.append(("in", request, value, index, data))
        return data[:-1] if self.garbage else data

    def control_out(self, request_type, request, value, index, data, timeout_ms=1000) -> None:
        self._stalled(request)
        self.requests.append(("out", request, value, index, bytes(data)))
        self._out(request_type, request, value, index, bytes(data))

    def submit_control(self, request_type, request, value, index, data, callback, timeout_ms=5000) -> bool:
        try:
            if isinstance(data, int):
                done = (STATUS_OK, self.control_in(request_type, request, value, index, data))
            else:
                self.control_out(request_type, request, value, index, data)
                done = (STATUS_OK, b"")
        except TransportError:
            done = (STATUS_STALL, b"")
        self._done.append(("ctrl", callback, *done))
        return True


def start_vendor(t: ScriptedVendor, protocol: str, options: Options | None = None,
                 **kw) -> tuple[EthernetService, FakeTap]:
    driver_cls, binding = choose(t.identity.configurations, 1, protocol=protocol)
    driver = driver_cls(t, binding, Stats(), options or Options())
    svc = EthernetService(t, driver, ifname="core0", gro=False, tap_factory=FakeTap, native=fake.NATIVE, **kw)
    svc.start()
    return svc, svc.tap


def assert_bad_start(t: ScriptedVendor, protocol: str, why: str) -> None:
    """The start fails with one line beginning `why`; no interface is created and the device is released."""
    driver_cls, binding = choose(t.identity.configurations, 1, protocol=protocol)
    svc = EthernetService(t, driver_cls(t, binding, Stats(), Options()), ifname="core0", gro=False,
                          tap_factory=FakeTap)
    with pytest.raises(TransportError) as exc:
        svc.start()
    assert str(exc.value).startswith(why) and "\n" not in str(exc.value), str(exc.value)
    assert svc.tap is None and t.closed


def assert_silence_rule(svc: EthernetService, what: str, one_status: Callable[[], None]) -> None:
    """No link status at all STATUS_SILENCE seconds after bring-up stops the instance (the text contains
    `what`); one status, whatever it says, shows a working device."""
    d = svc.driver
    assert d.poll(d._started + d.STATUS_SILENCE - 1) is None
    why = d.poll(d._started + d.STATUS_SILENCE + 1)
    assert why and what in why, why
    one_status()
    assert d.poll(d._started + 1000) is None
