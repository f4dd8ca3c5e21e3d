"""The simulated adapter behind `sim:ncm` and `sim:ecm`: a USB network device modelled in-process.

Like pyserial's `loop://`, it lets anyone run usbnetd with no hardware, and it drives the whole real path —
descriptor parsing, protocol negotiation, pool, queues, NCM/ECM framing, the TAP — natively. The device side
speaks its protocol toward the host exactly as a gadget would (it answers the class requests, reports the
link on its interrupt endpoint once the data alt setting is selected, builds NTBs with its own divisor and
remainder), and its wire end is a second TAP (`--sim-peer NAME`) that tests put in another namespace.

Transfers complete asynchronously: a submitted OUT is consumed at once but its completion is delivered on
the next `handle_events()`, and a submitted IN waits until the peer TAP has frames, as on a real bus.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import select
import struct
import time

import pytun

from .. import native
from ..core.pool import Packet
from ..core.stats import Stats
from ..protocols import cdc
from ..protocols.ncm_codec import NtbBuilder, NtbDecoder, NtbParameters, TxLayout
from .descriptors import Configuration, parse_configuration
from .simfaults import SimFaults
from .transport import (
    STATUS_CANCELLED,
    STATUS_OK,
    STATUS_STALL,
    CtrlCallback,
    DeviceIdentity,
    IntCallback,
    RxCallback,
    Transport,
    TransportError,
    TxCallback,
)

log = logging.getLogger(__name__)

KINDS = ("ncm", "ecm")
SIM_MC_FILTERS = 16
# CDC 1.2 §6.2.4: what f_ecm/f_ncm start with before the host sets a filter.
DEFAULT_FILTER = cdc.PACKET_TYPE_DIRECTED | cdc.PACKET_TYPE_BROADCAST | cdc.PACKET_TYPE_ALL_MULTICAST
SIM_VENDOR = 0x1D6B  # Linux Foundation, as Linux's own gadgets use
SIM_PRODUCT = {"ncm": 0x0101, "ecm": 0x0102}
MAXPACKET = 512  # high speed bulk
EP_IN, EP_OUT, EP_INT = 0x81, 0x02, 0x83
CTRL_IF, DATA_IF = 0, 1
STR_MANUFACTURER, STR_PRODUCT, STR_SERIAL, STR_MAC = 1, 2, 3, 4
# The device's own NTB parameters. A payload remainder of 2 puts the IP header after the 14-byte Ethernet
# header on a 4-byte boundary; using it here makes the host honour a non-zero remainder on every run.
SIM_NTB = NtbParameters(
    length=28, formats_supported=0x03, ntb_in_max_size=65536, ndp_in_divisor=4, ndp_in_payload_remainder=2,
    ndp_in_alignment=4, reserved=0, ntb_out_max_size=65536, ndp_out_divisor=4, ndp_out_payload_remainder=2,
    ndp_out_alignment=4, ntb_out_max_datagrams=32,
)


def _interface(num: int, alt: int, n_eps: int, cls: int, sub: int, proto: int) -> bytes:
    return bytes([9, 4, num, alt, n_eps, cls, sub, proto, 0])


def _endpoint(addr: int, attrs: int, mps: int, interval: int) -> bytes:
    return bytes([7, 5, addr, attrs]) + struct.pack("<H", mps) + bytes([interval])


def build_config_descriptor(kind: str) -> bytes:
    """The raw configuration descriptor a CDC ECM or NCM function presents (CDC 1.2, ECM 1.2, NCM 1.0)."""
    sub = cdc.SUBCLASS_NCM if kind == "ncm" else cdc.SUBCLASS_ECM
    body = _interface(CTRL_IF, 0, 1, cdc.CLASS_COMM, sub, 0)
    body += bytes([5, 0x24, 0x00, 0x10, 0x01])  # header, bcdCDC 1.10
    body += bytes([5, 0x24, 0x06, CTRL_IF, DATA_IF])  # union: control 0, data 1
    # Ethernet networking: iMACAddress, no statistics, wMaxSegmentSize 1514, no MC filters, no power filters
    # Ethernet networking: iMACAddress, no statistics, wMaxSegmentSize 1514, 16 exact multicast filters, no
    # power filters. The filters are real: the device drops what its packet filter and list say to drop.
    body += bytes([13, 0x24, 0x0F, STR_MAC]) + struct.pack("<IHHB", 0, 1514, SIM_MC_FILTERS, 0)
    if kind == "ncm":
        body += bytes([6, 0x24, 0x1A, 0x00, 0x01, 0x19])  # NCM 1.0: packet filter, max datagram size, CRC mode
    body += _endpoint(EP_INT, 0x03, 16, 9)  # 2^(9-1) microframes = 32 ms, like f_ncm
    data_proto = 0x01 if kind == "ncm" else 0x00
    body += _interface(DATA_IF, 0, 0, cdc.CLASS_DATA, 0, data_proto)
    body += _interface(DATA_IF, 1, 2, cdc.CLASS_DATA, 0, data_proto)
    body += _endpoint(EP_IN, 0x02, MAXPACKET, 0) + _endpoint(EP_OUT, 0x02, MAXPACKET, 0)
    total = 9 + len(body)
    return bytes([9, 2]) + struct.pack("<H", total) + bytes([2, 1, 0, 0x80, 50]) + body


class SimTransport(Transport):
    """Host-side view of the simulated device: the Transport contract, with the device model behind it."""

    def __init__(self, kind: str, peer_ifname: str = "usbnetsim0", host_mac: bytes | None = None,
                 faults: dict[str, int] | None = None) -> None:
        if kind not in KINDS:
            raise TransportError(f"unknown simulated adapter sim:{kind} (choose from {', '.join(KINDS)})")
        self.kind = kind
        self.host_mac = host_mac or cdc.random_local_mac()
        raw = build_config_descriptor(kind)
        config, _ = parse_configuration(raw)
        assert config is not None
        self.config: Configuration = config
        self.identity = DeviceIdentity(
            busid=f"sim:{kind}", vendor=SIM_VENDOR, product=SIM_PRODUCT[kind], manufacturer="usbnetd",
            product_name=f"Simulated CDC-{kind.upper()} adapter", serial=self.host_mac.hex(), speed_mbps=480,
            active_configuration=1, configurations=[config],
        )
        self._strings = {STR_MANUFACTURER: "usbnetd", STR_PRODUCT: self.identity.product_name,
                         STR_SERIAL: self.identity.serial, STR_MAC: self.host_mac.hex().upper()}
        try:
            self.peer = pytun.TunTapDevice(name=peer_ifname, flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
        except pytun.Error as exc:
            raise TransportError(f"cannot create the simulated wire {peer_ifname}: {exc.args[-1]}") from exc
        self.peer.up()
        self.peer_fd = self.peer.fileno()
        os.set_blocking(self.peer_fd, False)
        self.device_stats = Stats()  # what the device side counts (frames it could not decode, etc.)
        # CPU time (this thread's) the device side spent: building bulk IN transfers from the wire and putting
        # bulk OUT transfers on it. It runs in usbnetd's own thread, so a benchmark subtracts it from the
        # process's CPU to get the driver's (docs/performance.md).
        self.device_cpu_ns = 0
        self._claimed: set[int] = set()
        self._alt = 0
        self._ntb32 = False
        self._in_size = 2048  # NCM 1.0 §6.2.7: the default until the host sets it
        self.filter = DEFAULT_FILTER
        self.multicast: set[bytes] = set()
        self.max_datagram = 1514
        self._in_q: collections.deque[tuple[Packet, int]] = collections.deque()
        # (kind, packet or control callback, status, length or control reply); kind 0 RX, 1 TX, 2 control
        self._done: collections.deque[tuple] = collections.deque()
        self._int_pending: collections.deque[bytes] = collections.deque()
        self._tx_in_flight = 0
        self._n_tx = 0
        self._stopping = False
        self._decoder = NtbDecoder(self.device_stats, max_datagram=1514)
        self._frame = bytearray(2048)
        self._frame_view = memoryview(self._frame)
        faults = dict(faults or {})
        # sim:ncm?native=1: the device's NCM framing in C (simfaults.py), for benchmarks.
        self._native = bool(faults.pop("native", 0)) and kind == "ncm" and native.AVAILABLE
        self._native_tx = None  # a usbnetd.native.NcmTx building bulk IN NTBs from the wire, per layout
        self._native_tx_layout: TxLayout | None = None
        self._native_rx = native.NcmRx(self.peer_fd, 0, False, 1514) if self._native else None
        if self._native:
            log.info("simulated device: NCM framing in C (usbnetd.native), no packet filter")
        self._faults = SimFaults(**faults) if faults else None  # sim:KIND?rx_errors=...: see simfaults.py

    # --- setup ---
    def set_configuration(self, value: int) -> None:
        if value != 1:
            raise TransportError(f"SET_CONFIGURATION {value}: the simulated adapter has only configuration 1")

    def claim(self, interface: int) -> None:
        if self.config.interface(interface) is None:
            raise TransportError(f"cannot claim interface {interface}: no such interface")
        self._claimed.add(interface)

    def set_alt(self, interface: int, alternate: int) -> None:
        if interface != DATA_IF or alternate not in (0, 1):
            raise TransportError(f"cannot select alt setting {alternate} of interface {interface}")
        self._alt = alternate
        if alternate == 1:
            # What f_ncm/f_ecm do when the host activates the data interface: report the link.
            self._int_pending.append(struct.pack("<BBHHH", 0xA1, cdc.NETWORK_CONNECTION, 1, CTRL_IF, 0))
            self._int_pending.append(
                struct.pack("<BBHHHII", 0xA1, cdc.CONNECTION_SPEED_CHANGE, 0, CTRL_IF, 8, 480_000_000,
                            480_000_000))
        else:
            self._ntb32 = False

    def get_string(self, index: int) -> str | None:
        return self._strings.get(index)

    def control_in(self, request_type, request, value, index, length, timeout_ms=1000) -> bytes:
        if self.kind == "ncm" and request_type == cdc.REQ_TYPE_CLASS_IN and index == CTRL_IF:
            if request == cdc.GET_NTB_PARAMETERS:
                return SIM_NTB.pack()[:length]
            if request == cdc.GET_NTB_FORMAT:
                return struct.pack("<H", int(self._ntb32))[:length]
            if request == cdc.GET_NTB_INPUT_SIZE:
                return struct.pack("<I", self._in_size)[:length]
        raise TransportError(f"control request 0x{request:02x} failed: stall")

    def control_out(self, request_type, request, value, index, data, timeout_ms=1000) -> None:
        if request_type != cdc.REQ_TYPE_CLASS_OUT or index != CTRL_IF:
            raise TransportError(f"control request 0x{request:02x} failed: stall")
        if request == cdc.SET_ETHERNET_PACKET_FILTER:
            self.filter = value
            log.info("simulated device: packet filter 0x%02x", value)
            return
        if request == cdc.SET_ETHERNET_MULTICAST_FILTERS and value <= SIM_MC_FILTERS and len(data) == 6 * value:
            self.multicast = {bytes(data[i : i + 6]) for i in range(0, len(data), 6)}
            log.info("simulated device: %d multicast filters", value)
            return
        if self.kind == "ncm":
            if request == cdc.SET_NTB_FORMAT and value in (0, 1) and self._alt == 0:
                self._ntb32 = bool(value)
                return
            if request == cdc.SET_MAX_DATAGRAM_SIZE and len(data) == 2:
                size = struct.unpack("<H", data)[0]
                if 68 + 14 <= size <= 1514:
                    self.max_datagram = size
                    log.info("simulated device: max datagram size %d", size)
                    return
            if request == cdc.SET_NTB_INPUT_SIZE and len(data) in (4, 8):
                size = struct.unpack_from("<I", data)[0]
                if 2048 <= size <= SIM_NTB.ntb_in_max_size:
                    self._in_size = size
                    return
        raise TransportError(f"control request 0x{request:02x} failed: stall")

    def interrupt_read(self, endpoint: int, length: int, timeout_ms: int) -> bytes:
        raise TransportError("the simulated adapter has no synchronous interrupt reads")

    def submit_control(self, request_type: int, request: int, value: int, index: int, data: bytes | int,
                       callback: CtrlCallback, timeout_ms: int = 5000) -> bool:
        try:
            if isinstance(data, int):
                reply = self.control_in(request_type, request, value, index, data)
            else:
                self.control_out(request_type, request, value, index, data)
                reply = b""
            status = STATUS_OK
        except TransportError:
            status, reply = STATUS_STALL, b""
        self._done.append((2, callback, status, reply))
        return True

    # --- data path ---
    def open_pipes(self, ep_in, ep_out, ep_int, n_rx, n_tx, int_size, on_rx: RxCallback, on_tx: TxCallback,
                   on_int: IntCallback) -> None:
        self._on_rx, self._on_tx, self._on_int = on_rx, on_tx, on_int
        self._n_rx, self._n_tx = n_rx, n_tx
        self._int_buf = bytearray(max(int_size, 16))
        if self.kind == "ncm":
            self._in_builder: NtbBuilder | None = None

    def start_interrupt(self) -> None:
        pass  # notifications are delivered from handle_events once queued

    def submit_rx(self, packet: Packet, length: int) -> bool:
        if self._stopping or len(self._in_q) >= self._n_rx:
            return False
        self._in_q.append((packet, length))
        return True

    def submit_tx(self, packet: Packet, length: int, zlp: bool) -> bool:
        if self._stopping or self._tx_in_flight >= self._n_tx:
            return False
        self._tx_in_flight += 1
        if self._alt == 1:
            t0 = time.thread_time_ns()
            self._device_receive(packet.view[packet.offset : packet.offset + length], length)
            self.device_cpu_ns += time.thread_time_ns() - t0
        self._done.append((1, packet, STATUS_OK, length))
        return True

    def _device_receive(self, data: memoryview, length: int) -> None:
        """The device takes a bulk OUT transfer and puts its frames on the wire."""
        if self.kind == "ecm":
            self._wire_write(data, 0, length)
            return
        if self._native_rx is not None:
            self._native_rx.decode(data, length)  # each datagram written to the wire in C
            self._native_rx.add_to(self.device_stats)
            return
        self._wire_data = data
        self._decoder.decode(data, length, self._wire_emit)

    def _wire_emit(self, offset: int, length: int) -> None:
        self._wire_write(self._wire_data, offset, length)

    def _wire_write(self, data: memoryview, offset: int, length: int) -> None:
        try:
            os.write(self.peer_fd, data[offset : offset + length])
        except OSError:
            self.device_stats.tx_dropped += 1

    def _device_send(self) -> None:
        """The device fills pending bulk IN transfers with frames from the wire."""
        while self._in_q:
            packet, size = self._in_q[0]
            n = self._fill_ecm(packet, size) if self.kind == "ecm" else self._fill_ncm(packet, size)
            if n == 0:
                return
            self._in_q.popleft()
            self._done.append((0, packet, STATUS_OK, n))
            if self._faults is not None:
                self._faults.completed()

    def _passes(self, view: memoryview, offset: int) -> bool:
        """The device's packet filter (CDC 1.2 §6.2.4) on a frame from the wire, by destination."""
        f = self.filter
        if f & cdc.PACKET_TYPE_PROMISCUOUS:
            return True
        dst = view[offset : offset + 6]
        if not dst[0] & 1:
            return bool(f & cdc.PACKET_TYPE_DIRECTED) and dst == self.host_mac
        if dst == b"\xff\xff\xff\xff\xff\xff":
            return bool(f & cdc.PACKET_TYPE_BROADCAST)
        if f & cdc.PACKET_TYPE_ALL_MULTICAST:
            return True
        return bool(f & cdc.PACKET_TYPE_MULTICAST) and bytes(dst) in self.multicast

    def _fill_ecm(self, packet: Packet, size: int) -> int:
        while True:
            try:
                n = os.readv(self.peer_fd, (packet.view[:size],))
            except OSError:
                return 0
            if n >= 14 and self._passes(packet.view, 0):
                return n
            self.device_stats.rx_dropped += 1

    def _fill_ncm(self, packet: Packet, size: int) -> int:
        layout = TxLayout(ntb32=self._ntb32, max_size=min(size, self._in_size), divisor=SIM_NTB.ndp_in_divisor,
                          remainder=SIM_NTB.ndp_in_payload_remainder, alignment=SIM_NTB.ndp_in_alignment,
                          max_datagrams=40, maxpacket=MAXPACKET)
        if self._native:
            return self._fill_ncm_native(packet, layout)
        b = self._in_builder
        if b is None or b.layout != layout:
            b = self._in_builder = NtbBuilder(layout)
        b.begin(packet.view)
        while True:
            offset, room = b.next_slot()
            if room < 1514:
                break
            try:
                n = os.readv(self.peer_fd, (packet.view[offset : offset + room],))
            except OSError:
                break
            if n < 14 or not self._passes(packet.view, offset):
                self.device_stats.rx_dropped += 1  # a runt, or filtered out, as a real device would
                continue
            b.commit(n)
        if b.count == 0:
            return 0
        return b.finish()

    def _fill_ncm_native(self, packet: Packet, layout: TxLayout) -> int:
        """_fill_ncm with the C framer: frames read from the wire straight into the NTB (no packet filter)."""
        tx = self._native_tx
        if tx is None or self._native_tx_layout != layout:
            seq = tx.sequence if tx is not None else 0
            tx = self._native_tx = native.NcmTx(self.peer_fd, 0, 1514, *dataclasses.astuple(layout), sequence=seq)
            self._native_tx_layout = layout
        tx.begin(packet.view)
        while True:
            _read, _committed, _nbytes, dropped, drained, full, _err = tx.fill(64)
            self.device_stats.rx_dropped += dropped
            if drained or full:
                break
        return tx.finish()

    def detail(self) -> dict:
        return {"sim_device_cpu_seconds": round(self.device_cpu_ns / 1e9, 6)}

    @property
    def tx_free(self) -> int:
        return self._n_tx - self._tx_in_flight

    @property
    def in_flight(self) -> int:
        return len(self._in_q) + self._tx_in_flight

    def poll_fds(self) -> list[tuple[int, int]]:
        # Watch the wire only while the host has a bulk IN waiting, as a device only sends when polled.
        return [(self.peer_fd, select.POLLIN)] if self._in_q and self._alt == 1 else []

    def pending(self) -> bool:
        return bool(self._done or self._int_pending) or (
            self._faults is not None and self._alt == 1 and self._faults.due(bool(self._in_q)))

    def clear_halt(self, endpoint: int) -> bool:
        if self._faults is not None and endpoint == EP_IN:
            self._faults.clear_halt()
        return True

    def handle_events(self) -> None:
        if self._faults is not None and self._alt == 1 and not self._stopping:
            self._faults.fail(self._in_q, self._done)
        if self._alt == 1 and self._in_q and not self._stopping:
            t0 = time.thread_time_ns()
            self._device_send()
            self.device_cpu_ns += time.thread_time_ns() - t0
        while self._int_pending:
            msg = self._int_pending.popleft()
            self._int_buf[: len(msg)] = msg
            self._on_int(memoryview(self._int_buf), len(msg))
        done = self._done
        while done:
            kind, packet, status, n = done.popleft()
            if kind == 0:
                self._on_rx(packet, status, n)
            elif kind == 2:
                packet(status, n)  # a control completion: (callback, status, reply)
            else:
                self._tx_in_flight -= 1
                self._on_tx(packet, status)

    # --- teardown ---
    def stop(self, timeout: float = 2.0) -> int:
        if self._faults is not None and not self._stopping:
            log.info("simulated device: faults: %s", self._faults.summary())
        self._stopping = True
        while self._in_q:
            packet, _ = self._in_q.popleft()
            self._done.append((0, packet, STATUS_CANCELLED, 0))
        self._int_pending.clear()
        self.handle_events()
        return self.in_flight

    def close(self) -> None:
        self._claimed.clear()
        if self.peer is not None:
            self.peer.close()
            self.peer = None
