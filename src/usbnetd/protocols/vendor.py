"""What the vendor drivers share: ASIX AX88179 (`ax88179.py`), Realtek RTL8153 (`r8152.py`), Apple iPhone
tethering (`ipheth.py`).

None of them is a USB class: each is one vendor-specific interface, chosen only through the device table
(`devices.py`), and each is brought up and watched with vendor control requests. Written once here:

- `match_vendor_interface`: the interface with a given class triple, its bulk pair (on whichever alternate
  setting has it) and, where the family has one, its interrupt IN endpoint;
- `VendorDriver`: `bind()` runs the family's `_bring_up()` and turns any failure into one line naming the
  chip ("RTL8153 bring-up failed: ..."); the link-status rule (`link_seen`, `poll`): acting only on
  changes, and a device that has given no link status at all `STATUS_SILENCE` seconds after bring-up is
  not one usbnetd can drive (an AX88179 or RTL8153 whose interrupt endpoint never speaks, an iPhone that
  answers no carrier check); `checked_mac`: an invalid MAC becomes a random local one, logged;
  `submit_out`: an asynchronous vendor write while running, a warning when no control transfer is free;
- `crc_hash_bit`: the multicast hash index both Ethernet chips use (their tables differ in layout).
"""

from __future__ import annotations

import logging
import time

from ..usb.descriptors import XFER_BULK, XFER_INTERRUPT, Configuration
from ..usb.transport import TransportError
from . import cdc
from .driver import Binding, DriverFlag, ProtocolDriver

log = logging.getLogger(__name__)

REQ_VENDOR_IN = 0xC0  # device-to-host, vendor, device recipient
REQ_VENDOR_OUT = 0x40


def match_vendor_interface(config: Configuration, triple: tuple[int, int, int] = (0xFF, 0xFF, 0x00),
                           interrupt: bool = True, alternate: int | None = None) -> Binding | None:
    """The first interface of class/subclass/protocol `triple` with a bulk IN/OUT pair on one of its
    alternate settings (that one, when `alternate` names it), and an interrupt IN endpoint there when
    `interrupt`."""
    for iface in config.interfaces:
        for alt in iface.alts:
            if (alt.cls, alt.subclass, alt.protocol) != triple or alternate not in (None, alt.alternate):
                continue
            ep_in, ep_out = alt.endpoint(XFER_BULK, True), alt.endpoint(XFER_BULK, False)
            ep_int = alt.endpoint(XFER_INTERRUPT, True)
            if ep_in is None or ep_out is None or (interrupt and ep_int is None):
                continue
            return Binding(config.value, None, iface.number, alt.alternate, ep_in, ep_out,
                           ep_int if interrupt else None, None)
    return None


def crc_hash_bit(mac: bytes) -> int:
    """0-63: the top 6 bits of the address's Ethernet CRC-32, computed MSB-first without the final
    inversion (the kernel's ether_crc), which both the AX88179 and the RTL8153 index their hash filter by."""
    crc = 0xFFFFFFFF
    for byte in mac:
        for i in range(8):
            top = (crc >> 31) ^ ((byte >> i) & 1)
            crc = (crc << 1) & 0xFFFFFFFF
            if top:
                crc ^= 0x04C11DB7
    return crc >> 26


class VendorDriver(ProtocolDriver):
    """Base of the vendor drivers (module docstring). Subclasses set `chip` and define `_bring_up()`."""

    chip = "?"  # how errors and logs name the device ("AX88179")
    flags = DriverFlag.MAC_SETTABLE
    STATUS_SILENCE = 10.0  # seconds without a single link status before we give up on the device
    # What poll() says when that happens: "the <chip> <silence_what> in 10 s; <silence_hint>".
    silence_what = "sent no link status on its interrupt endpoint"
    silence_hint = "not a chip usbnetd can drive"

    def bind(self) -> None:
        self._link: bool | None = None
        self._statuses = 0
        try:
            self._bring_up()
        except TransportError as exc:
            raise TransportError(f"{self.chip} bring-up failed: {exc}") from None
        self._started = time.monotonic()

    def _bring_up(self) -> None:
        raise NotImplementedError

    def checked_mac(self, mac: bytes) -> tuple[bytes, bool]:
        """(the MAC to use, whether it was replaced): all zeros, all ones or a multicast address is not one a
        NIC can have, so a random locally administered one stands in (the caller writes it back if it can)."""
        if mac == bytes(6) or mac == b"\xff" * 6 or mac[0] & 1:
            fresh = cdc.random_local_mac()
            log.warning("%s reports an invalid MAC %s; using %s", self.chip, mac.hex(":"), fresh.hex(":"))
            return fresh, True
        return mac, False

    def link_seen(self, up: bool) -> bool:
        """A link status arrived (whatever it says: the device is talking); True when it changes the carrier."""
        self._statuses += 1
        if up == self._link:
            return False
        self._link = up
        return True

    def poll(self, now: float) -> str | None:
        if self._statuses == 0 and now - self._started > self.STATUS_SILENCE:
            return f"the {self.chip} {self.silence_what} in {self.STATUS_SILENCE:.0f} s; {self.silence_hint}"
        return None

    def submit_out(self, request: int, value: int, index: int, data: bytes) -> None:
        """An asynchronous vendor write while running (filters, MAC, modes); refusals are logged."""
        if not self.transport.submit_control(REQ_VENDOR_OUT, request, value, index, data, self._filter_done):
            log.warning("%s: no control transfer free for request 0x%02x (0x%04x)", self.chip, request, value)
