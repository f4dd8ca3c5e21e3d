"""An iPhone in USB tethering mode (Personal Hotspot), played by a FunctionFS gadget on dummy_hcd, in Python.

The bench has no iPhone, so its tethering function is emulated closely enough that the kernel's own driver
(ipheth) binds it, reads its MAC, gets carrier and carries traffic; usbnetd's ipheth driver is then tested
against the same device. Written from the facts the kernel driver (drivers/net/usb/ipheth.c as of v6.1, and
the NCM mode later kernels added; a reference for facts only) relies on; nothing here is taken from its code.
Apple documents none of it.

What the emulated phone has:

* USB: VID:PID 05ac:12a8 (an iPhone's id since the iPhone 5). A phone's tethering configuration has PTP
  (interface 0), the usbmux channel (1, FF/FE/02) and the tethering interface (2, FF/FD/01) with an
  alternate setting 0 without endpoints and a setting 1 with a bulk IN and a bulk OUT endpoint, which the
  host selects. The gadget cannot let it: FunctionFS (6.1) has no get_alt, so the gadget stack stalls
  SET_INTERFACE to anything but 0 before the function sees it, and a stalled SET_INTERFACE leaves the
  interface's endpoints disabled in 6.1's usbcore (it flushes them before asking). So here:
  - the tethering interface is interface 0 (the usbmux one, without endpoints, is 1; no PTP): the 6.1
    kernel's ipheth selects setting 1 of interface 2 by number, which is then no interface at all, a
    request usbcore refuses before it touches anything;
  - its setting 0 carries the bulk pair too, under the same addresses, and stays the active one (usbnetd
    uses the first setting that has the pair, so it selects nothing here; on a phone it selects 1);
  - dummy_hcd numbers FunctionFS endpoints by its own list (named bulk IN 1, 6, 11, 2 and OUT 2, 7, 12, 1,
    then generic ones counted from 1 per direction), so setting 0 also carries filler endpoints that use up
    the named ones and the first generic OUT, which gives setting 1's pair the addresses 0x81 and 0x02
    again; the host skips the one filler that repeats an address ("duplicate endpoint" notice), and
    dummy_hcd routes 0x81 and 0x02 to setting 0's pair (the first endpoints with those addresses). Nothing
    reads the fillers.
  (Setting 1 alone, without a setting 0, works for a first driver but not after an unbind: usbcore then
  switches the interface to setting 0 before the next probe, which fails.)
* Vendor control requests (FUNCTIONFS_ALL_CTRL_RECIP: they are addressed to the device; wIndex, the
  interface, is not checked): 0x00 (C0) answers the 6-byte MAC the host interface is to use; 0x45 (C0) the
  carrier check: one byte,
  0x04 while tethering is on (the "cable"), 0x03 while off (the kernel's rule since "fix carrier detection in
  modes 1 and 4": a 1-byte answer is read at byte 0, a longer one at byte 1; with one byte both rules agree);
  0x04 (41, the interface, no data) switches RX to the NCM mode of newer iOS (``--ncm``; without it the
  request stalls, as on a phone without that mode). Anything else stalls.
* RX (phone to host), legacy mode: one frame per bulk IN transfer behind 2 bytes of padding (the kernel's
  IPHETH_IP_ALIGN); the first transfer after the function is enabled is the 4-byte control frame
  00 01 01 00 that later kernels describe (their ipheth drops it; it is also what tells the kernel driver
  the phone "confirmed pairing", which gates its carrier checks). A transfer that would be a multiple of
  wMaxPacketSize gets one zero byte more, so that it ends short (ours, not a documented phone behaviour;
  the frame is then one byte longer on the host, which Ethernet receivers ignore).
  NCM mode: NTB16s as later kernels parse them: NTH16 ("NCMH", wNdpIndex 12), the NDP16 ("NCM0") right
  after it with room for 22 entries (96 bytes, so datagrams start at 108), up to 21 datagrams, a null entry.
* TX (host to phone): one frame per bulk OUT transfer. The 6.1 kernel sends every frame in a fixed
  1514-byte buffer, zero-padded; later kernels send the frame's length. The phone finds the frame in it by
  its IP length (IPv4 total length, IPv6 payload length, ARP's 28 bytes); other frames go on as sent.
* No filter (the phone sends the host what is for it), no MTU above 1500, no request to change the MAC.

Commands (JSON lines, vendor_device.VendorChip): ``stats``, ``cable_out`` / ``cable_in`` (tethering off /
on: carrier answers and traffic), ``ep0_silent`` / ``ep0_answer``, ``ep0_stall`` / ``ep0_normal``,
``garbage`` / ``sane`` (the MAC read answers 5 bytes of 0xA5, the carrier check answers nothing),
``int_silent`` / ``int_talk`` (the carrier check stalls: a phone that never reports carrier), and the
one-shot ``stall_next`` / ``garbage_next`` (the next MAC read, a driver's first request).
"""

from __future__ import annotations

import argparse
import collections
import os
import select
import struct
import sys
import threading
from pathlib import Path

if __package__:
    from . import ffs_device as ffs
    from . import vendor_device as vendor
else:  # run as a script (the device process) or loaded by path (the core tier): the neighbours sit here
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ffs_device as ffs  # type: ignore[no-redef]
    import vendor_device as vendor  # type: ignore[no-redef]

VID, PID = 0x05AC, 0x12A8
CMD_GET_MACADDR, CMD_ENABLE_NCM, CMD_CARRIER_CHECK = 0x00, 0x04, 0x45
CARRIER_ON, CARRIER_OFF = 0x04, 0x03
IP_ALIGN = 2
START_FRAME = bytes([0x00, 0x01, 0x01, 0x00])
TX_BUFFER = 1514  # the 6.1 kernel's fixed TX size
NCM_HEADER = 12 + 96  # NTH16 + an NDP16 with room for 22 entries
NCM_MAX_DATAGRAMS = 21
NCM_MAX_NTB = 65536
EP_IN, EP_OUT = 0x81, 0x02
TETHER_INTERFACE = 0  # a phone's is 2 (module docstring)


FILLERS_IN, FILLERS_OUT = 3, 4  # see the module docstring: dummy_hcd's named bulk IN 6, 11, 2; OUT 7, 12, 1, 1


def descriptors() -> bytes:
    sets = []
    for bulk_mp in (64, 512):
        # FunctionFS wants a distinct address per endpoint descriptor; dummy_hcd's autoconfiguration gives the
        # host-visible ones (module docstring), setting 1's pair getting 0x81 and 0x02 again.
        pair0 = [ffs._endpoint(EP_IN, ffs.BULK, bulk_mp), ffs._endpoint(EP_OUT, ffs.BULK, bulk_mp)]
        fillers = [ffs._endpoint(0x83 + i, ffs.BULK, bulk_mp) for i in range(FILLERS_IN)]
        fillers += [ffs._endpoint(0x03 + i, ffs.BULK, bulk_mp) for i in range(FILLERS_OUT)]
        pair1 = [ffs._endpoint(0x83 + FILLERS_IN, ffs.BULK, bulk_mp),
                 ffs._endpoint(0x03 + FILLERS_OUT, ffs.BULK, bulk_mp)]
        alt0 = struct.pack("<9B", 9, 4, TETHER_INTERFACE, 0, 2 + len(fillers), 0xFF, 0xFD, 0x01, 0)
        alt1 = struct.pack("<9B", 9, 4, TETHER_INTERFACE, 1, 2, 0xFF, 0xFD, 0x01, 0)
        sets.append([alt0, *pair0, *fillers, alt1, *pair1, ffs._interface(1, 0, 0xFF, 0xFE, 0x02)])
    body = struct.pack("<II", len(sets[0]), len(sets[1])) + b"".join(b"".join(s) for s in sets)
    flags = ffs.HAS_FS_DESC | ffs.HAS_HS_DESC | 64  # FUNCTIONFS_ALL_CTRL_RECIP: the phone's requests
    return struct.pack("<III", ffs.DESCRIPTORS_MAGIC_V2, 12 + len(body), flags) + body


def frame_length(frame: bytes | bytearray) -> int:
    """Where the frame in a padded TX buffer ends, by its IP length; the whole buffer when it cannot tell."""
    n = len(frame)
    if n < 14:
        return n
    kind = frame[12] << 8 | frame[13]
    if kind == 0x0800 and n >= 34:
        return min(n, 14 + (frame[16] << 8 | frame[17]))
    if kind == 0x86DD and n >= 54:
        return min(n, 54 + (frame[18] << 8 | frame[19]))
    if kind == 0x0806:
        return min(n, 42)
    return n


def pack_legacy(frame: bytes, maxpacket: int = 512) -> bytes:
    out = bytes(IP_ALIGN) + frame
    return out + b"\0" if len(out) % maxpacket == 0 else out


def pack_ntb(frames: list[bytes], sequence: int, maxpacket: int = 512) -> bytes:
    """One NTB16 as iOS lays it out: NTH16, the NDP16 at 12 with 22 entries' room, datagrams from 108."""
    body = bytearray()
    entries = []
    for f in frames:
        entries.append((NCM_HEADER + len(body), len(f)))
        body += f
        body += bytes(-len(body) % 4)
    ndp = b"NCM0" + struct.pack("<HH", 96, 0) + b"".join(struct.pack("<HH", i, n) for i, n in entries)
    ndp = ndp.ljust(96, b"\0")  # the null entry and the unused room
    total = NCM_HEADER + len(body)
    if total % maxpacket == 0:
        body += bytes(4)  # end short (ours, as in legacy mode)
        total += 4
    nth = b"NCMH" + struct.pack("<HHHH", 12, sequence & 0xFFFF, total, 12)
    return nth + ndp + bytes(body)


class PhoneModel:
    """The phone's control side, as the module docstring describes it: what each vendor request gets (the
    device process uses it; the core tier drives usbnetd against it too). Thread-unsafe (the caller locks)."""

    def __init__(self, mac: bytes, *, ncm_capable: bool = False, cable: bool = True) -> None:
        self.mac = mac
        self.ncm_capable = ncm_capable
        self.cable = cable
        self.ncm = False
        self.carrier_silent = False  # the carrier check stalls: a phone that never reports carrier
        self.garbage = False
        self.counts: collections.Counter[str] = collections.Counter()
        self.events: collections.deque[str] = collections.deque(maxlen=200)

    def request(self, rt: int, req: int, index: int, length: int) -> bytes | None:
        """The data stage's bytes for a request (b"" for one without), or None: stall it."""
        if rt == 0xC0 and req == CMD_GET_MACADDR:
            self.counts["mac_reads"] += 1
            return self.mac[:5] if self.garbage else self.mac[:length]
        if rt == 0xC0 and req == CMD_CARRIER_CHECK:
            if self.carrier_silent:
                self.counts["carrier_checks_stalled"] += 1
                return None
            self.counts["carrier_checks"] += 1
            if self.garbage:
                return b"\xa5\xa5"[:length]  # a longer answer whose byte 1 is no carrier either way
            return bytes([CARRIER_ON if self.cable else CARRIER_OFF])[:length]
        if rt == 0x41 and req == CMD_ENABLE_NCM and self.ncm_capable:
            self.ncm = True
            self.counts["ncm_enabled"] += 1
            self.events.append("NCM mode")
            return b""
        self.counts["unknown_requests"] += 1
        self.events.append(f"stalled {rt:02x}/{req:02x} wIndex {index}")
        return None


class Phone(vendor.VendorChip):
    def __init__(self, mount: Path, tap: str, mac: bytes, *, ncm_capable: bool, **faults) -> None:
        self.model = PhoneModel(mac, ncm_capable=ncm_capable)  # first: the fault switches below live in it
        super().__init__(mount, tap, descriptors(), {"ep_in": 1, "ep_out": 2}, **faults)
        self.model.counts = self.counts
        self.model.events = self.events
        self.enabled = threading.Event()
        self.started = False  # the start frame sent since the function was enabled
        self.sequence = 0

    # The fault switches and the tethering state live in the model (vendor.VendorChip's commands set them).
    cable = property(lambda self: self.model.cable, lambda self, v: setattr(self.model, "cable", v))
    garbage = property(lambda self: self.model.garbage, lambda self, v: setattr(self.model, "garbage", v))
    int_silent = property(lambda self: self.model.carrier_silent,
                          lambda self, v: setattr(self.model, "carrier_silent", v))

    # -- ep0 --------------------------------------------------------------------------------------------
    def on_event(self, name: str) -> None:
        if name == "ENABLE":
            with self.lock:
                self.model.ncm = False  # a new configuration: the phone starts in legacy mode
                self.started = False
            self.enabled.set()
        elif name in ("DISABLE", "UNBIND"):
            self.enabled.clear()

    def setup(self, rt: int, req: int, value: int, index: int, length: int) -> None:
        stall, short = self.one_shot(rt == 0xC0 and req == CMD_GET_MACADDR)
        data = None
        if rt & 0x60 == 0x40 and not self.ep0_stall and not stall:
            with self.lock:
                data = self.model.request(rt, req, index, length)
        if data is None:
            self.stall(rt)
        elif rt & 0x80:
            self.counts["vendor_reads"] += 1
            os.write(self.ep0, b"\xa5" * (len(data) - 1) if short else data)
        else:
            os.read(self.ep0, 0)  # the status stage

    def registers(self) -> dict:
        return {"ncm": self.model.ncm, "carrier": self.model.cable, "mac": self.model.mac.hex(":")}

    # -- TX: host to wire -------------------------------------------------------------------------------
    def out_loop(self) -> None:
        for data in self.out_transfers():
            if len(data) < 14:
                self.counts["out_malformed"] += 1
                continue
            n = frame_length(data)
            if n < len(data):
                self.counts["out_padded"] += 1
                if any(data[n:]):
                    self.counts["out_padding_not_zero"] += 1
            if not self.cable:
                self.counts["tx_off"] += 1
                continue
            try:
                os.write(self.tap, data[:n])
                self.counts["out_frames"] += 1
            except OSError:
                self.counts["tap_write_errors"] += 1

    # -- RX: wire to host -------------------------------------------------------------------------------
    def in_loop(self) -> None:
        while True:
            self.enabled.wait()
            with self.lock:
                start = not self.started
                self.started = True
            if start:
                self.send_in(START_FRAME, 0)
                continue
            select.select([self.tap], [], [], 1.0)
            with self.lock:
                ncm = self.model.ncm
            frames: list[bytes] = []
            while len(frames) < (NCM_MAX_DATAGRAMS if ncm else 1):
                try:
                    frame = os.read(self.tap, 16384)
                except BlockingIOError:
                    break
                if not self.cable:
                    self.counts["rx_off"] += 1
                    continue
                if len(frame) > 1514:
                    self.counts["rx_too_long"] += 1
                    continue
                frames.append(frame)
            if not frames:
                continue
            if ncm:
                self.sequence += 1
                self.send_in(pack_ntb(frames, self.sequence), len(frames))
            else:
                self.send_in(pack_legacy(frames[0]), 1)


def main(argv: list[str] | None = None) -> int:
    def more(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--ncm", action="store_true", help="answer ENABLE_NCM (the NCM mode of newer iOS)")

    return vendor.main(argv, "iphone", __doc__.splitlines()[0],
                       lambda a, mac: Phone(a.mount, a.tap, mac, ncm_capable=a.ncm, **vendor.fault_kwargs(a)), more)


class IphoneGadget(vendor.VendorGadget):
    VID, PID = VID, PID
    SCRIPT = __file__
    PRODUCT = "iPhone (usbnetd emulator)"
    KIND = "iphone"

    def __init__(self, index: int, tap: str, *, ncm: bool = False, **kw) -> None:
        super().__init__(index, tap, extra_args=("--ncm",) if ncm else (), **kw)


if __name__ == "__main__":
    sys.exit(main())
