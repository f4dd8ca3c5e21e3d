"""The protocol driver contract, and the CDC plumbing ECM and NCM share.

A driver is small, like a Linux usbnet minidriver (`struct driver_info`): one class per protocol, one file,
plus a row in the device table when class matching is not enough. What it declares:

- `name`, `flags` (`DriverFlag`: what the protocol lacks or can, so the service need not ask by name),
  `tx_headroom` and `default_mtu`;
- `match(config)` -> `Binding`: is this configuration its kind, and where does the function live;
- `bind()` (claim the interfaces, class requests: MAC, framing), `activate()` (data alt setting on),
  `unbind()` (back to alt 0, RNDIS HALT), `poll(now)` (once a second: keepalives);
- `status(view, length)` -> `LinkEvent | None`: one interrupt transfer (usbnet's `status` hook);
- `rx_decode(view, length, sink)`: split one received transfer into frames, each handed to the sink
  (`RxSink`, the TAP port: the one RX delivery point, usbnet's `usbnet_skb_return`);
- the TX framer (`tx_begin`, `tx_slot`, `tx_commit`, `tx_count`, `tx_finish`: usbnet's `tx_fixup`, in place
  inside a pool packet);
- `change_mtu`, `change_mac`, `apply_filter`: the interface follows the user (netdev.reconciler calls them).

A driver never calls into the service. What it must hand back outside a call's result goes into two queues
the service drains after every wake-up: `events` (link changes found outside `status()`, RNDIS indications
that arrive through a control transfer) and `own_tx_pending` (frames of the driver's own, EEM echo
responses, which the data path sends through the normal TX path).
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..core.pool import Packet
from ..core.stats import Stats
from ..usb.descriptors import XFER_BULK, XFER_INTERRUPT, AltSetting, Configuration, Endpoint
from ..usb.transport import Transport, TransportError
from . import cdc

log = logging.getLogger(__name__)

Emit = Callable[[int, int], object]  # (offset, length) of one frame inside the received transfer

# What the C TX pump for one frame per transfer (native FrameTx) puts around each frame; the values are
# _frametx.c's FRAMING_PLAIN and FRAMING_RNDIS (tests/unit/test_native_frame_tx.py checks they agree).
FRAME_TX_PLAIN = 0  # the transfer is the frame, a ZLP after a wMaxPacketSize multiple (ECM, CDC subset)
FRAME_TX_RNDIS = 1  # an RNDIS PACKET_MSG header first, a pad byte instead of a ZLP (rndis_codec.RndisBatch)


class RxSink(Protocol):
    """Where a driver's `rx_decode` puts frames: the TAP port (netdev.port), the one RX delivery point."""

    def emit(self, offset: int, length: int) -> object:
        """One frame inside the transfer being decoded (the `view` given to rx_decode)."""

    def deliver(self, view: memoryview, offset: int, length: int) -> object:
        """One frame from another buffer of the driver's (RNDIS: a message carried across two transfers)."""


class Quirk(enum.Flag):
    """Per-device deviations, named in the device table and configuration files (`devices.QUIRKS`)."""

    NONE = 0
    NTB32 = enum.auto()  # NCM: use 32-bit NTBs (devices whose NTB16 support is broken)
    NTB16 = enum.auto()  # NCM: never use NTB32, even when asked
    NO_PACKET_FILTER = enum.auto()  # never send SET_ETHERNET_PACKET_FILTER (devices that stall on it)
    IGNORE_LINK = enum.auto()  # ignore link notifications, carrier stays on (devices that report it wrongly)
    IPHETH_NCM = enum.auto()  # iPhone tethering: ask for the NCM mode of newer iOS (protocols/ipheth.py)


class DriverFlag(enum.Flag):
    """What a protocol has or lacks, declared once per driver (usbnet's FLAG_* bits in driver_info)."""

    NONE = 0
    # No link notification at all (EEM, the CDC subset): carrier follows the device's presence.
    NO_LINK_STATE = enum.auto()
    # No class requests, so no packet filter either (EEM, the subset): the device passes what it passes.
    NO_CONTROL = enum.auto()
    # The device takes a new MAC while running and its filter follows it (vendor chips with a node-ID
    # register): a changed address needs no promiscuous fallback.
    MAC_SETTABLE = enum.auto()
    # The link state comes from the driver's own polling (its `events`, from `poll()`), not from an interrupt
    # endpoint, which the device does not have (iPhone tethering's carrier check).
    LINK_POLLED = enum.auto()


@dataclass(frozen=True)
class Binding:
    """Where a protocol function lives in a configuration."""

    configuration: int
    control: int | None
    data: int
    data_alt: int
    ep_in: Endpoint
    ep_out: Endpoint
    ep_int: Endpoint | None
    functional: cdc.CdcFunctional | None


@dataclass(frozen=True)
class LinkEvent:
    connected: bool | None = None
    up_bps: int | None = None
    down_bps: int | None = None


@dataclass(frozen=True)
class Options:
    ntb32: bool | None = None  # None: the driver's choice
    rx_size: int | None = None  # NCM: requested NTB input size
    tx_size: int | None = None  # NCM: NTB output size cap
    quirks: Quirk = Quirk.NONE


def bulk_alt(iface_alts: tuple[AltSetting, ...]) -> tuple[AltSetting, Endpoint, Endpoint] | None:
    """The alt setting that carries a bulk IN and a bulk OUT endpoint (CDC data alt 1, or alt 0 for EEM)."""
    for alt in iface_alts:
        ep_in = alt.endpoint(XFER_BULK, True)
        ep_out = alt.endpoint(XFER_BULK, False)
        if ep_in is not None and ep_out is not None:
            return alt, ep_in, ep_out
    return None


def match_cdc(config: Configuration, subclass: int, protocol: int | None = None) -> Binding | None:
    """Find a CDC communications interface of `subclass` and pair it with its data interface.

    The pairing comes from the Union functional descriptor, never from interface-number guesses, so a
    composite device (a phone with ADB and tethering, say) binds the right data interface.
    """
    for iface in config.interfaces:
        ctrl = iface.alt(0) or (iface.alts[0] if iface.alts else None)
        if ctrl is None or ctrl.cls != cdc.CLASS_COMM or ctrl.subclass != subclass:
            continue
        if protocol is not None and ctrl.protocol != protocol:
            continue
        functional = cdc.parse_cdc_functional(ctrl.extra)
        if functional.union_control is None or not functional.union_subordinates:
            continue
        data_iface = config.interface(functional.union_subordinates[0])
        if data_iface is None:
            continue
        found = bulk_alt(data_iface.alts)
        if found is None:
            continue
        alt, ep_in, ep_out = found
        ep_int = ctrl.endpoint(XFER_INTERRUPT, True)
        return Binding(config.value, ctrl.number, data_iface.number, alt.alternate, ep_in, ep_out, ep_int,
                       functional)
    return None


def bcd(value: int) -> str:
    """A USB binary-coded decimal version (0x0110) as people write it ("1.10")."""
    return f"{value >> 8 & 0xFF:x}.{value & 0xFF:02x}"


class ProtocolDriver:
    """Base class; subclasses set `name` and override what their framing needs."""

    name = "?"
    flags = DriverFlag.NONE
    # Headroom a TX frame needs in front of it (EEM's 2-byte header, RNDIS's 44); 0 for ECM and NCM.
    tx_headroom = 0

    def __init__(self, transport: Transport, binding: Binding, stats: Stats, options: Options) -> None:
        self.transport = transport
        self.binding = binding
        self.stats = stats
        self.options = options
        self.mac: bytes | None = None
        self.max_frame = 1514  # largest Ethernet frame (without FCS) the device takes
        # The MTU to start with when none is asked for; None: max_frame - 14 (vendor chips that take jumbo
        # frames still start at 1500).
        self.default_mtu: int | None = None
        self.rx_size = 2048  # bytes per bulk IN transfer
        self.tx_size = 2048  # bytes per bulk OUT transfer
        # Offloads the device does itself (a vendor chip's checksum engine and TSO), as TUN_F_* bits
        # (netdev/gso.py), and the largest super-frame it takes in one transfer (what the TAP's gso_max_size
        # is set to); both 0 for the classes. Set by bind(); the service decides whether to use them and says
        # so with enable_offloads(), and the frames then arrive through tx_commit_offload.
        self.tx_offloads = 0
        self.tso_max = 0
        self.maxpacket = binding.ep_out.max_packet or 512
        self._notifications = cdc.NotificationParser()
        # Link changes found outside status() (RNDIS indications come through a control transfer): the service
        # drains this after every wake-up. Bounded: only the latest few matter.
        self.events: collections.deque[LinkEvent] = collections.deque(maxlen=8)

    @classmethod
    def match(cls, config: Configuration) -> Binding | None:
        raise NotImplementedError

    @property
    def framing(self) -> str:
        """How frames travel, for logs and status (e.g. "NTB32, 32768 B in / 32769 B out")."""
        return "one frame per transfer"

    def info(self) -> dict:
        """Facts about the function for `usbnetd status` (ethtool -i's part): the class specification versions
        its descriptors declare and what was negotiated. Subclasses add their own (RNDIS's version)."""
        st: dict = {"protocol": self.name, "framing": self.framing,
                    "interfaces": {"control": self.binding.control, "data": self.binding.data},
                    "endpoints": {"in": f"0x{self.binding.ep_in.address:02x}",
                                  "out": f"0x{self.binding.ep_out.address:02x}",
                                  "interrupt": (f"0x{self.binding.ep_int.address:02x}"
                                                if self.binding.ep_int is not None else None)},
                    "max_frame": self.max_frame}
        f = self.binding.functional
        if f is not None:
            if f.header_bcd is not None:
                st["cdc_version"] = bcd(f.header_bcd)  # CDC 1.2 §5.2.3.1: bcdCDC
            if f.ethernet is not None:
                st["max_segment_size"] = f.ethernet.max_segment_size  # ECM 1.2 §5.4: wMaxSegmentSize
                st["multicast_filters"] = f.ethernet.mc_filters & 0x7FFF
            if f.ncm is not None:
                st["ncm_version"] = bcd(f.ncm.bcd_version)  # NCM 1.0 §5.2.1: bcdNcmVersion
                st["ncm_capabilities"] = f"0x{f.ncm.capabilities:02x}"  # bmNetworkCapabilities
        return st

    # --- setup ---
    def claim(self) -> None:
        b = self.binding
        if b.control is not None:
            self.transport.claim(b.control)
        self.transport.claim(b.data)
        if b.data_alt != 0:
            # CDC: alt 0 of the data interface has no endpoints; selecting it resets the function.
            self.transport.set_alt(b.data, 0)

    def bind(self) -> None:
        """Class requests before the data interface goes live: read the MAC, negotiate framing."""
        self.mac = self.read_mac()

    def read_mac(self) -> bytes | None:
        f = self.binding.functional
        if f is None or f.ethernet is None:
            return None
        return cdc.parse_mac_string(self.transport.get_string(f.ethernet.imac_index))

    def activate(self) -> None:
        if self.binding.data_alt != 0:
            self.transport.set_alt(self.binding.data, self.binding.data_alt)

    def native_rx(self) -> tuple[str, int] | tuple[str, int, int] | None:
        """The C fast path (usbnetd.native) that decodes this driver's transfers exactly as `rx_decode` does:
        ("ntb", largest datagram), ("frame", largest frame) or ("rndis", largest frame, transfer size); None
        when only `rx_decode` can."""
        return None

    def native_tx(self) -> tuple[tuple, int] | None:
        """For the C TX framer (usbnetd.native.NcmTx): the framing's layout fields and the next sequence
        number, so that it builds exactly what `tx_begin` ... `tx_finish` would; None when only those can."""
        return None

    def native_tx_returned(self, sequence: int) -> None:
        """The C TX framer stops (a trace wants every frame in Python) and hands over the sequence number the
        next transfer carries, so that `tx_begin` ... `tx_finish` go on where it stopped."""
        return None

    def native_frame_tx(self) -> tuple[int, int, int] | None:
        """For the C TX pump (usbnetd.native.FrameTx), which sends each frame as its own transfer: (max_frame,
        wMaxPacketSize, framing: FRAME_TX_PLAIN or FRAME_TX_RNDIS) when that is exactly this driver's TX
        framing; None otherwise."""
        return None

    @property
    def own_tx_pending(self) -> int:
        """Transfers of the driver's own (EEM echo responses) waiting to go out; `tx_begin` frames them first."""
        return 0

    def unbind(self) -> None:
        if self.binding.data_alt != 0:
            try:
                self.transport.set_alt(self.binding.data, 0)
            except TransportError as exc:
                log.debug("could not return the data interface to alt 0: %s", exc)

    def poll(self, now: float) -> str | None:
        """Called about once a second while running (RNDIS keepalives); a returned text stops the instance."""
        return None

    def set_packet_filter(self, bits: int) -> bool:
        if self.binding.control is None or self.flags & DriverFlag.NO_CONTROL \
                or self.options.quirks & Quirk.NO_PACKET_FILTER:
            return False
        try:
            self.transport.control_out(cdc.REQ_TYPE_CLASS_OUT, cdc.SET_ETHERNET_PACKET_FILTER, bits,
                                       self.binding.control, b"")
        except TransportError as exc:
            log.info("device refused the packet filter 0x%02x: %s", bits, exc)
            return False
        return True

    # --- the interface follows the user (netdev/reconciler.py calls these while running) ---
    def change_mtu(self, frame: int) -> str | None:
        """The user set an MTU giving `frame`-byte frames: None if the device can do it, else why not."""
        if frame > self.max_frame:
            return f"the device takes frames of at most {self.max_frame} bytes (MTU {self.max_frame - 14})"
        return None

    def change_mac(self, mac: bytes) -> str:
        """The user set a MAC. Returns what was done; the default cannot tell the device, so the service
        receives promiscuously from then on (unicast to the new MAC must still get through)."""
        return "the device cannot be told a new address; receiving promiscuously"

    @property
    def mc_filter_slots(self) -> int:
        """How many exact multicast filters the device has (0: none, or only imperfect/hash ones)."""
        f = self.binding.functional
        if f is None or f.ethernet is None or f.ethernet.mc_imperfect:
            return 0
        return f.ethernet.mc_filters

    def apply_filter(self, promisc: bool, allmulti: bool, multicast: list[bytes]) -> str:
        """Program the device's packet filter (and exact multicast list when it has filters) while running,
        asynchronously. Returns a description for the log."""
        if self.binding.control is None or self.flags & DriverFlag.NO_CONTROL \
                or self.options.quirks & Quirk.NO_PACKET_FILTER:
            return "the device has no packet filter"
        exact = not promisc and not allmulti and 0 < len(multicast) <= self.mc_filter_slots
        bits = cdc.packet_filter_bits(promisc=promisc, allmulti=bool(multicast) and not exact or allmulti,
                                      multicast=exact)
        if exact:
            self.transport.submit_control(cdc.REQ_TYPE_CLASS_OUT, cdc.SET_ETHERNET_MULTICAST_FILTERS,
                                          len(multicast), self.binding.control,
                                          cdc.multicast_filter_payload(multicast), self._filter_done)
        self.transport.submit_control(cdc.REQ_TYPE_CLASS_OUT, cdc.SET_ETHERNET_PACKET_FILTER, bits,
                                      self.binding.control, b"", self._filter_done)
        what = "promiscuous" if promisc else "all multicast" if bits & cdc.PACKET_TYPE_ALL_MULTICAST else \
            f"{len(multicast)} exact multicast filters" if exact else "directed and broadcast only"
        return f"packet filter 0x{bits:02x} ({what})"

    def _filter_done(self, status: int, data: bytes) -> None:
        if status != 0:
            log.warning("the device refused a filter request (status %d)", status)

    # --- notifications ---
    def status(self, view: memoryview, length: int) -> LinkEvent | None:
        """One interrupt IN transfer; a link event when it changes carrier or speed."""
        n = self._notifications.feed(view, length)
        if n is None:
            return None
        return self.link_event(n)

    def link_event(self, n: cdc.Notification) -> LinkEvent | None:
        if n.kind == cdc.NETWORK_CONNECTION:
            return LinkEvent(connected=bool(n.connected))
        if n.kind == cdc.CONNECTION_SPEED_CHANGE:
            return LinkEvent(up_bps=n.up_bps, down_bps=n.down_bps)
        return None

    # --- TX framing, in place in a pool packet ---
    def tx_begin(self, packet: Packet) -> None:
        raise NotImplementedError

    def tx_slot(self) -> tuple[int, int]:
        """(offset, room) where the next frame goes; room < max_frame means: finish this transfer first."""
        raise NotImplementedError

    def tx_commit(self, length: int) -> bool:
        """Record a frame written at the slot; True when the transfer is full and must be finished now."""
        raise NotImplementedError

    @property
    def tx_count(self) -> int:
        raise NotImplementedError

    def tx_finish(self) -> tuple[int, bool]:
        """Close the transfer; return (bytes to send from packet.offset, whether to add a ZLP)."""
        raise NotImplementedError

    # --- the device's own offloads (tx_offloads) ---
    def enable_offloads(self, flags: int) -> None:
        """The TAP hands over super-frames and partial checksums for `flags` (a subset of tx_offloads): turn
        the chip's engines on. From now on tx_slot must offer an empty transfer room for tso_max bytes."""

    def tx_commit_offload(self, length: int, meta) -> bool:
        """tx_commit for a frame read with the device's offloads on: `meta` (netdev.gso.TxMeta, checked against
        the frame by the port) says whether it is a super-frame to cut and whether a checksum is left to fill;
        the driver writes its descriptor accordingly. True when the transfer must be finished now."""
        return self.tx_commit(length)

    # --- RX ---
    def rx_decode(self, view: memoryview, length: int, sink: RxSink) -> int:
        """Split `view[:length]` (never read past `length`) into frames for `sink`; count what is wrong in
        `stats` and never raise. Returns the number of frames handed over."""
        raise NotImplementedError


class OneFramePerTransfer:
    """TX/RX framing of ECM and the CDC subset: the transfer is the frame, with no header.

    A frame that is an exact multiple of wMaxPacketSize must end with a zero-length packet, or the device
    keeps waiting for the rest of the transfer; libusb's ADD_ZERO_PACKET does that without a padding byte.
    """

    stats: Stats
    max_frame: int
    maxpacket: int

    def init_framing(self) -> None:
        mp = self.maxpacket
        # Room for the largest frame, rounded up to whole USB packets.
        self.rx_size = self.tx_size = ((self.max_frame + mp - 1) // mp) * mp
        self._packet: Packet | None = None
        self._length = 0

    def tx_begin(self, packet: Packet) -> None:
        self._packet = packet
        self._length = 0

    def tx_slot(self) -> tuple[int, int]:
        if self._length:
            return 0, 0
        p = self._packet
        return p.offset, p.capacity - p.offset

    def tx_commit(self, length: int) -> bool:
        self._length = length
        return True

    @property
    def tx_count(self) -> int:
        return 1 if self._length else 0

    def tx_finish(self) -> tuple[int, bool]:
        n = self._length
        self._length = 0
        return n, n % self.maxpacket == 0

    def native_rx(self) -> tuple[str, int] | None:
        return ("frame", self.max_frame)

    def native_frame_tx(self) -> tuple[int, int, int] | None:
        return (self.max_frame, self.maxpacket, FRAME_TX_PLAIN)

    def rx_decode(self, view: memoryview, length: int, sink: RxSink) -> int:
        if length < 14 or length > self.max_frame:
            self.stats.rx_length_errors += 1
            self.stats.rx_errors += 1
            return 0
        sink.emit(0, length)
        return 1
