"""Apple iPhone / iPad USB tethering (Personal Hotspot over USB): the function Linux's ipheth drives.

Not a USB class: the phone's tethering interface is FF/FD/01 (vendor-specific) in the configuration that
usbmuxd or the phone selects, interface 2 on the phones the kernel driver knows, with an alternate setting
0 without endpoints and an alternate setting 1 with a bulk IN and a bulk OUT endpoint; there is no interrupt
endpoint. Chosen only through the device table (`devices.py`: Apple's VID with that interface, and the
PIDs older kernels listed), never by class matching. The facts below are the ones Linux's ipheth
(drivers/net/usb/ipheth.c, v6.1; the NCM mode from later kernels) relies on, carried over as facts; the code
is ours. Apple documents none of it.

Bring-up (`claim`, `bind`, `activate`):

1. claim the interface (no alternate setting 0 first: the kernel never selects it, and the bench's emulator
   has none);
2. vendor request 0x00 (bmRequestType C0, wValue 0, wIndex the interface, up to 64 bytes): the MAC the host
   interface is to use, at least 6 bytes or a one-line error (garbage is not a phone we can drive); an
   invalid one (multicast, all zeros) is replaced by a random local address, as for the vendor chips;
3. with the `ipheth-ncm` quirk only: vendor request 0x04 (41, interface recipient, no data) asks for the NCM
   mode of newer iOS, in which RX comes as NTB16s (`ncm_codec.NtbDecoder`, and the C NTB walk); a phone that
   stalls it stays in the legacy mode. Not by default: the phone keeps the mode until it is replugged, and a
   kernel ipheth older than the one that added the mode (6.1 included) that gets the phone back afterwards
   would take NTBs for frames;
4. alternate setting 1 (`activate`): the bulk endpoints (the first setting that has them; a phone's setting
   0 has none). The kernel ignores a failed SET_INTERFACE here, and so do we, with a warning.

Carrier: no interrupt endpoint, so `poll()` asks every second (as the kernel's carrier work does) with
vendor request 0x45 (C0, wValue 0, wIndex the interface, up to 64 bytes): 0x04 is "carrier on", in byte 0
of a 1-byte answer, in byte 1 of a longer one (the kernel's rule since "usbnet: ipheth: fix carrier
detection in modes 1 and 4", which Debian's 6.1 has). Carrier off means tethering is off or the phone does
not (yet) trust this computer. The kernel asks only after the phone sent its first transfer ("confirmed
pairing"); we ask from the start. A phone that answers no carrier check at all (stalls, timeouts, empty
answers) `STATUS_SILENCE` seconds after bring-up stops the instance with one line (`vendor.VendorDriver`).

Framing (`ipheth_codec`): RX one frame per transfer behind 2 bytes of padding (the empty transfers and the
4-byte 00 01 control frame dropped); TX one frame per transfer, sent in a fixed 1514-byte buffer,
zero-padded, as 6.1 does (later kernels send the frame's own length). MTU at most 1500 (the phone's 1514-byte
frames). The phone has no request to change the MAC and no packet filter: a new MAC stays on the interface
and the phone's frames follow it once its neighbour cache learns it (the kernel's ipheth refuses MAC
changes); multicast is whatever the phone sends. No offloads.
"""

from __future__ import annotations

import logging

from ..core.pool import Packet
from ..usb.descriptors import Configuration
from ..usb.transport import STATUS_OK, TransportError
from . import ipheth_codec as codec
from .driver import Binding, DriverFlag, LinkEvent, OneFramePerTransfer, Quirk, RxSink
from .ncm_codec import NtbDecoder
from .vendor import REQ_VENDOR_IN, VendorDriver, match_vendor_interface

log = logging.getLogger(__name__)

INTERFACE = (0xFF, 0xFD, 0x01)
REQ_VENDOR_OUT_INTERFACE = 0x41  # host-to-device, vendor, interface recipient
CMD_GET_MACADDR = 0x00
CMD_ENABLE_NCM = 0x04
CMD_CARRIER_CHECK = 0x45
CARRIER_ON = 0x04
CTRL_BUF = 64  # the kernel's IPHETH_CTRL_BUF_SIZE
NCM_RX_BUFFER = 65536  # the kernel's IPHETH_RX_BUF_SIZE_NCM


class IphethDriver(OneFramePerTransfer, VendorDriver):
    name = "ipheth"
    chip = "iPhone"
    # No filter to tell a new MAC to; the carrier comes from polling, not an interrupt endpoint.
    flags = DriverFlag.LINK_POLLED
    silence_what = "answered no carrier check"
    silence_hint = "is it unlocked, does it trust this computer, is Personal Hotspot on?"

    @classmethod
    def match(cls, config: Configuration) -> Binding | None:
        # The first setting with the bulk pair: 1 on a phone (its setting 0 has none; the kernel takes setting
        # 1's endpoints, IPHETH_ALT_INTFNUM), 0 where that one already has them (the bench's emulator).
        return match_vendor_interface(config, INTERFACE, interrupt=False)

    @property
    def framing(self) -> str:
        rx = "NTB16 (iOS NCM mode)" if getattr(self, "ncm", False) else "one frame per transfer"
        return f"{rx} in / {codec.TX_BUFFER}-byte padded transfers out"

    def info(self) -> dict:
        st = super().info()
        st["mode"] = "ncm" if getattr(self, "ncm", False) else "legacy"
        st["control_frames"] = self._legacy.control if hasattr(self, "_legacy") else 0
        return st

    def claim(self) -> None:
        self.transport.claim(self.binding.data)

    def activate(self) -> None:
        if not self.binding.data_alt:
            return
        try:
            self.transport.set_alt(self.binding.data, self.binding.data_alt)
        except TransportError as exc:
            log.warning("the phone did not take alternate setting %d (%s); going on, as the kernel's ipheth "
                        "does", self.binding.data_alt, exc)

    def _bring_up(self) -> None:
        iface = self.binding.data
        data = self.transport.control_in(REQ_VENDOR_IN, CMD_GET_MACADDR, 0, iface, CTRL_BUF)
        if len(data) < 6:
            raise TransportError(f"the phone answered its MAC address with {len(data)} bytes; not a device "
                                 "usbnetd can drive")
        self.mac, _ = self.checked_mac(bytes(data[:6]))
        self.ncm = False
        if self.options.quirks & Quirk.IPHETH_NCM:
            try:
                self.transport.control_out(REQ_VENDOR_OUT_INTERFACE, CMD_ENABLE_NCM, 0, iface, b"")
                self.ncm = True
            except TransportError as exc:
                log.info("the phone has no NCM mode (%s); legacy framing", exc)
        self.max_frame = 1514
        mp = self.maxpacket
        # The legacy transfer is at most 1516 bytes; whole packets, so that a device that sends more ends in
        # a short read of ours, not an overflow.
        self.rx_size = NCM_RX_BUFFER if self.ncm else -(-(codec.IP_ALIGN + self.max_frame) // mp) * mp
        self.tx_size = codec.TX_BUFFER
        self._packet: Packet | None = None
        self._length = 0
        self._legacy = codec.RxDecoder(self.stats, self.max_frame)
        self._ntb = NtbDecoder(self.stats, max_datagram=self.max_frame) if self.ncm else None
        self._checking = False

    # --- carrier: polled ---
    def poll(self, now: float) -> str | None:
        if not self._checking:
            self._checking = self.transport.submit_control(REQ_VENDOR_IN, CMD_CARRIER_CHECK, 0, self.binding.data,
                                                           CTRL_BUF, self._carrier_done)
        return super().poll(now)

    def _carrier_done(self, status: int, data: bytes) -> None:
        self._checking = False
        if status != STATUS_OK or not data:
            self.stats.notification_errors += 1
            return
        self.stats.notifications += 1
        up = (data[0] if len(data) == 1 else data[1]) == CARRIER_ON
        if self.link_seen(up):
            self.events.append(LinkEvent(connected=up))

    # --- the interface follows the user ---
    def change_mtu(self, frame: int) -> str | None:
        if frame > self.max_frame:
            return f"the iPhone takes frames of at most {self.max_frame} bytes (MTU {self.max_frame - 14})"
        return None

    def change_mac(self, mac: bytes) -> str:
        return ("the phone has no request for a new address and no filter; its frames follow once its "
                "neighbour cache learns it")

    # --- TX: one frame per transfer, padded to the fixed buffer ---
    def tx_finish(self) -> tuple[int, bool]:
        n = self._length
        self._length = 0
        p = self._packet
        return codec.pad_tx(p.view[p.offset :], n), False

    def native_frame_tx(self) -> tuple[int, int] | None:
        return None  # the C pump sends frames as they are; ours are padded

    # --- RX ---
    def native_rx(self) -> tuple[str, int] | None:
        return ("ntb", self.max_frame) if self._ntb is not None else None

    def rx_decode(self, view: memoryview, length: int, sink: RxSink) -> int:
        if self._ntb is not None:
            return self._ntb.decode(view, length, sink.emit)
        return self._legacy.decode(view, length, sink.emit)
