"""The core tier's stand-ins: a scripted USB transport and a TAP made of a socket pair.

`ScriptedTransport` implements the Transport contract with nothing behind it: submissions are recorded,
and the test decides when each completes, with which status and bytes, in any order
(`complete_rx`, `complete_tx`, `interrupt`); completions are delivered from `handle_events()`, as libusb
delivers them. Setup requests are answered as a CDC ECM / NCM function or an EEM function would.

`FakeTap` is the service's TAP: a SOCK_SEQPACKET socket pair keeps frame boundaries, so the service's end
reads and writes frames as it would on /dev/net/tun (with the virtio-net header when GRO is on), and the
test's end (`peer`) plays the host's stack. No root, no namespace, no real interface.

The service, data path, pool, queues, TAP port, link state, reconciler and drivers under test are the real
ones; only the two edges are fake.
"""

from __future__ import annotations

import collections
import ctypes
import os
import select
import socket
import struct

from usb1 import libusb1

from usbnetd.core.pool import Packet
from usbnetd.core.service import EthernetService
from usbnetd.core.stats import Stats
from usbnetd.netdev.tap import TapError
from usbnetd.protocols import cdc, choose
from usbnetd.protocols.driver import Options
from usbnetd.usb.bulk import ERROR_NO_DEVICE, FLAG_ADD_ZERO_PACKET, BulkPipe, SubmitError
from usbnetd.usb.descriptors import parse_configuration
from usbnetd.usb.sim import CTRL_IF, SIM_NTB, STR_MAC, build_config_descriptor
from usbnetd.usb.transport import STATUS_CANCELLED, STATUS_OK, DeviceIdentity, Transport, TransportError

DEVICE_MAC = bytes.fromhex("02a0b0c0d0e0")
NATIVE = False  # set by conftest's `datapath` fixture: services made here use the C path where it exists
# Also set by it: bulk IN runs over real libusb transfer structs (a BulkPipe, with a stand-in for
# libusb_submit_transfer), so that the C path can take the completions itself (arm_native_rx), as on a device.
USB_C = False
_SUBMIT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)  # libusb_submit_transfer's C signature
# libusb_handle_events_timeout(ctx, struct timeval *): the stand-in the C event loop (burst) calls
_HANDLE_EVENTS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


class _Events(collections.deque):
    """The completions waiting for handle_events, with an eventfd that is readable while there are any: the fd
    the C event loop polls as libusb's (poll_fds)."""

    def __init__(self) -> None:
        super().__init__()
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def append(self, item) -> None:
        super().append(item)
        os.eventfd_write(self.fd, 1)

    def drain_fd(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass


def eem_config_descriptor() -> bytes:
    """One interface 02/0C/07 with a bulk pair (CDC EEM 1.0 §5)."""
    body = bytes([9, 4, 0, 0, 2, cdc.CLASS_COMM, cdc.SUBCLASS_EEM, 0x07, 0])
    body += bytes([7, 5, 0x81, 2]) + struct.pack("<H", 512) + bytes([0])
    body += bytes([7, 5, 0x02, 2]) + struct.pack("<H", 512) + bytes([0])
    total = 9 + len(body)
    return bytes([9, 2]) + struct.pack("<H", total) + bytes([1, 1, 0, 0x80, 50]) + body


class ScriptedTransport(Transport):
    def __init__(self, kind: str) -> None:
        raw = eem_config_descriptor() if kind == "eem" else build_config_descriptor(kind)
        config, _ = parse_configuration(raw)
        assert config is not None
        self.kind = kind
        self.identity = DeviceIdentity(busid=f"fake:{kind}", vendor=0x1D6B, product=0x0100, speed_mbps=480,
                                       active_configuration=1, configurations=[config])
        self.rx: list[tuple[Packet, int]] = []  # bulk IN in flight: (packet, length asked for), in order
        self.tx: list[tuple[Packet, bytes, bool]] = []  # bulk OUT in flight: (packet, bytes sent, zlp)
        self.sent: list[bytes] = []  # every bulk OUT transfer ever submitted, in order
        self.controls: list[tuple[int, int, bytes]] = []  # (request, value, data) of every class request
        self.halts_cleared: list[int] = []
        self.n_rx = self.n_tx = 0
        self._done = _Events()
        # With USB_C, for the C event loop: set by every completion handled in Python (as the engine's are)
        self.py_events = ctypes.c_int(0)
        self.handle_events_calls = 0  # how often the C event loop called the stand-in
        self.stopped = self.closed = False
        self.unreapable = 0  # transfers stop() must pretend it could not reap
        self.refuse_tx = False  # submit_tx says "all busy" (backpressure from the bus)
        # transfer_memory: with offer_memory, chunks of two slots (as the engine's usbfs memory comes in chunks)
        self.offer_memory = False
        self.memory_chunks: list[bytearray] = []
        self.memory_freed = False
        # ... and one piece for the C TX pump's buffers (arm_native_tx with a buffer_size), lent at every arm
        self.pump_memory: bytearray | None = None
        self.pump_lent_at_close = False  # close() found the pump still holding it (it must be disarmed first)
        self.pump_buffers: list[int] = []  # the buffer address of every transfer the C pump submitted
        # With USB_C: the bulk IN pipe, its transfers' addresses in flight (in step with `rx`), what the
        # stand-in libusb_submit_transfer answers (0, or a libusb error), and the NcmRx armed on it.
        self.usb_c = USB_C
        self._pipe: BulkPipe | None = None
        self._rx_addr: list[int] = []
        self.submit_error = 0
        self.armed = None
        self.gone = False
        # With USB_C, for the C TX pump (arm_native_tx): its bulk OUT transfers in flight (in step with `tx`,
        # whose packet is None for them), and the pump.
        self._tx_addr: list[int] = []
        self._tx_pipe: BulkPipe | None = None
        self.pump = None
        self.complete_tx_on_events = False  # a device that takes every pump transfer at the next handle_events

    # --- setup ---
    def set_configuration(self, value: int) -> None:
        pass

    def claim(self, interface: int) -> None:
        pass

    def set_alt(self, interface: int, alternate: int) -> None:
        pass

    def get_string(self, index: int) -> str | None:
        return DEVICE_MAC.hex().upper() if index == STR_MAC else None

    def control_in(self, request_type, request, value, index, length, timeout_ms=1000) -> bytes:
        if self.kind == "ncm" and request == cdc.GET_NTB_PARAMETERS and index == CTRL_IF:
            return SIM_NTB.pack()[:length]
        raise TransportError(f"control request 0x{request:02x} failed: stall")

    def control_out(self, request_type, request, value, index, data, timeout_ms=1000) -> None:
        self.controls.append((request, value, bytes(data)))

    def interrupt_read(self, endpoint: int, length: int, timeout_ms: int) -> bytes:
        raise TransportError("no synchronous interrupt reads here")

    def submit_control(self, request_type, request, value, index, data, callback, timeout_ms=5000) -> bool:
        self.controls.append((request, value, b"" if isinstance(data, int) else bytes(data)))
        self._done.append(("ctrl", callback, STATUS_OK, b""))
        return True

    # --- data path ---
    def open_pipes(self, ep_in, ep_out, ep_int, n_rx, n_tx, int_size, on_rx, on_tx, on_int) -> None:
        self.n_rx, self.n_tx = n_rx, n_tx
        self._on_rx, self._on_tx, self._on_int = on_rx, on_tx, on_int
        self._int_buf = bytearray(max(16, int_size))
        if self.usb_c:
            libusb1.loadLibrary()  # libusb_alloc_transfer, nothing else: no context, no device
            self._submit_c = _SUBMIT(self._usb_submit)
            self._pipe = BulkPipe(None, ep_in, n_rx, 0, on_rx, submit=self._submit_c)

    def _usb_submit(self, address: int) -> int:
        """The stand-in for libusb_submit_transfer (bulk IN), called by BulkPipe and by the C path."""
        if self.submit_error:
            return self.submit_error
        pipe = self._pipe
        i = pipe._slot_of[address]
        self.rx.append((pipe._packet[i], pipe._structs[i].length))
        self._rx_addr.append(address)
        return 0

    def arm_native_rx(self, rx, kind: str) -> bool:
        if self._pipe is None:
            return False
        submit = ctypes.cast(self._submit_c, ctypes.c_void_p).value
        rx.usb_arm(submit, self._pipe.callback_address, self._pipe.transfer_addresses(), kind)
        self.armed = rx
        return True

    def disarm_native_rx(self) -> None:
        rx, self.armed = self.armed, None
        if rx is not None:
            rx.usb_disarm()

    def arm_native_tx(self, pump, buffer_size: int = 0) -> bool:
        if not self.usb_c or self.tx:
            return False
        self._submit_tx_c = _SUBMIT(self._usb_submit_tx)
        self._cancel_c = _SUBMIT(self._usb_cancel)
        # Transfers for the pump to own (a BulkPipe only allocates and fills them; nothing submits through it).
        self._tx_pipe = BulkPipe(None, 0x02, self.n_tx, 0, lambda *a: None)
        addr = ctypes.cast
        memory: tuple[int, int] | tuple[()] = ()
        if self.offer_memory and buffer_size:
            if self.pump_memory is None:
                self.pump_memory = bytearray(self.n_tx * buffer_size)
            lent = (ctypes.c_char * len(self.pump_memory)).from_buffer(self.pump_memory)
            memory = (ctypes.addressof(lent), len(self.pump_memory))
        pump.arm(addr(self._submit_tx_c, ctypes.c_void_p).value, addr(self._cancel_c, ctypes.c_void_p).value,
                 self._tx_pipe.transfer_addresses(), *memory)
        self.pump = pump
        return True

    def disarm_native_tx(self) -> bool:
        if self.pump is None:
            return True
        if self.pump.in_flight:
            return False
        self.pump.disarm()
        self.pump = None
        return True

    def _usb_submit_tx(self, address: int) -> int:
        """The stand-in for libusb_submit_transfer (bulk OUT), called by the C pump."""
        if self.submit_error:
            return self.submit_error
        s = libusb1.libusb_transfer.from_address(address)
        data = ctypes.string_at(s.buffer, s.length)
        self.pump_buffers.append(ctypes.cast(s.buffer, ctypes.c_void_p).value or 0)
        self.tx.append((None, data, bool(s.flags & FLAG_ADD_ZERO_PACKET)))
        self.sent.append(data)
        self._tx_addr.append(address)
        return 0

    def _usb_cancel(self, address: int) -> int:
        """The stand-in for libusb_cancel_transfer: the transfer completes as cancelled (at the next
        handle_events), or LIBUSB_ERROR_NOT_FOUND when it is not in flight."""
        if address not in self._tx_addr:
            return -5
        i = self._tx_addr.index(address)
        del self._tx_addr[i]
        del self.tx[i]
        self._usb_complete(address, STATUS_CANCELLED, 0)
        return 0

    def start_interrupt(self) -> None:
        pass

    def submit_rx(self, packet: Packet, length: int) -> bool:
        if self._pipe is not None and not self.stopped:
            try:
                return self._pipe.submit(packet, 0, length)
            except SubmitError as exc:
                self.gone = exc.code == ERROR_NO_DEVICE
                return False
        if self.stopped or len(self.rx) >= self.n_rx:
            return False
        self.rx.append((packet, length))
        return True

    def submit_tx(self, packet: Packet, length: int, zlp: bool) -> bool:
        if self.stopped or self.refuse_tx or len(self.tx) >= self.n_tx:
            return False
        data = bytes(packet.view[packet.offset : packet.offset + length])
        self.tx.append((packet, data, zlp))
        self.sent.append(data)
        return True

    @property
    def tx_free(self) -> int:
        if self.pump is not None:
            return self.pump.free
        return self.n_tx - len(self.tx)

    @property
    def in_flight(self) -> int:
        return len(self.rx) + len(self.tx)

    def poll_fds(self) -> list[tuple[int, int]]:
        return [(self._done.fd, select.POLLIN)]

    def burst_handles(self) -> tuple[int, int, int] | None:
        """With USB_C: the C event loop calls `_burst_events` (as libusb_handle_events_timeout) when the
        completions' eventfd is readable; Python's completions set `py_events`, as the engine's do."""
        if not self.usb_c or self.stopped:
            return None
        if getattr(self, "_handle_c", None) is None:
            self._handle_c = _HANDLE_EVENTS(self._burst_events)
        fn = ctypes.cast(self._handle_c, ctypes.c_void_p).value
        return fn, 0, ctypes.addressof(self.py_events)

    def _burst_events(self, ctx, tv) -> int:
        self.handle_events_calls += 1
        self.handle_events()
        return 0

    def _python_callbacks(self) -> tuple:
        return tuple(p.callback_address for p in (self._pipe, self._tx_pipe) if p is not None)

    def pending(self) -> bool:
        return bool(self._done)

    def clear_halt(self, endpoint: int) -> bool:
        self.halts_cleared.append(endpoint)
        return True

    # --- the test's hand on the device ---
    def complete_rx(self, data: bytes = b"", status: int = STATUS_OK, index: int = 0) -> None:
        """The `index`-th bulk IN in flight completes with `data` (copied into its buffer) and `status`."""
        packet, length = self.rx.pop(index)
        assert len(data) <= length, "a device cannot send more than the transfer asked for"
        packet.view[: len(data)] = data
        if self._pipe is not None:
            self._usb_complete(self._rx_addr.pop(index), status, len(data))
            return
        self._done.append(("rx", packet, status, len(data)))

    def _usb_complete(self, address: int, status: int, actual: int) -> None:
        s = libusb1.libusb_transfer.from_address(address)
        s.status = status
        s.actual_length = actual
        self._done.append(("usb", address, status, actual))

    def complete_tx(self, status: int = STATUS_OK, index: int = 0) -> bytes:
        packet, data, _ = self.tx.pop(index)
        if packet is None:  # the C pump's transfer
            self._usb_complete(self._tx_addr.pop(index), status, len(data))
            return data
        self._done.append(("tx", packet, status, 0))
        return data

    def interrupt(self, data: bytes) -> None:
        self._done.append(("int", data, 0, 0))

    def handle_events(self) -> None:
        if self.complete_tx_on_events:
            while self._tx_addr:  # the device takes the C pump's transfers as soon as events are handled
                self.complete_tx()
        self._done.drain_fd()
        while self._done:
            kind, obj, status, n = self._done.popleft()
            if kind != "usb":
                self.py_events.value = 1  # a Python callback (BulkPipe's own is set apart below)
            else:
                cb = ctypes.cast(libusb1.libusb_transfer.from_address(obj).callback, ctypes.c_void_p).value
                if cb in self._python_callbacks():
                    self.py_events.value = 1
            if kind == "usb":
                # As libusb does: the transfer's callback, whatever it is now (BulkPipe's, or the C path's),
                # called from C with the GIL released.
                s = libusb1.libusb_transfer.from_address(obj)
                s.callback(ctypes.cast(obj, libusb1.libusb_transfer_p))
            elif kind == "rx":
                self._on_rx(obj, status, n)
            elif kind == "tx":
                self._on_tx(obj, status)
            elif kind == "int":
                self._int_buf[: len(obj)] = obj
                self._on_int(memoryview(self._int_buf), len(obj))
            else:
                obj(status, n)

    # --- teardown ---
    def stop(self, timeout: float = 2.0) -> int:
        self.stopped = True
        self.disarm_native_rx()
        if self.pump is not None:
            self.pump.cancel_all()
        keep = self.unreapable
        while len(self.rx) > keep:
            packet, _ = self.rx.pop()
            if self._pipe is not None:
                self._usb_complete(self._rx_addr.pop(), STATUS_CANCELLED, 0)
                continue
            self._done.append(("rx", packet, STATUS_CANCELLED, 0))
        while self.tx and len(self.rx) + len(self.tx) > keep:
            packet, _, _ = self.tx.pop()
            if packet is None:
                self._usb_complete(self._tx_addr.pop(), STATUS_CANCELLED, 0)
                continue
            self._done.append(("tx", packet, STATUS_CANCELLED, 0))
        self.handle_events()
        if self.pump is not None and not self.pump.in_flight:
            self.pump.disarm()
            self.pump = None
        return self.in_flight

    def transfer_memory(self, slot: int, count: int) -> list[memoryview] | None:
        if not self.offer_memory:
            return None
        self.memory_chunks = [bytearray(min(2, count - k) * slot) for k in range(0, count, 2)]
        return [memoryview(c) for c in self.memory_chunks]

    def close(self) -> None:
        assert self.stopped, "the handle closed before the transfers were reaped"
        self.closed = True
        self.memory_freed = bool(self.memory_chunks)
        self.pump_lent_at_close = self.pump is not None and self.pump.lent
        for pipe in (self._pipe, self._tx_pipe):
            if pipe is not None and not pipe.in_flight and self.pump is None:
                pipe.free()


class FakeTap:
    """The service's TAP: `fd` is the service's end of a SOCK_SEQPACKET pair; `peer` is the host's stack."""

    instances: list[FakeTap] = []
    refuse_gso_max_size = False  # a kernel whose rtnetlink cannot set it (tests set it on the class)

    def __init__(self, name: str, mac: bytes, mtu: int, persistent: bool = False, vnet_hdr: int = 0) -> None:
        self._ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ours.setblocking(False)
        self.peer.setblocking(False)
        self.name = name
        self.fd = self._ours.fileno()
        self.mac = mac
        self.mtu = mtu
        self.vnet_hdr = vnet_hdr
        self.offload = 0  # TUN_F_* given to set_offload
        self.gso_max_size = 65536  # what set_gso_max_size gave (the kernel's default until then)
        self.reused = False
        self.index = 0  # matches nothing in /proc/net/dev_mcast
        self.carrier: bool | None = None
        self.carrier_changes: list[bool] = []
        self.link_speeds: list[int | None] = []  # every speed given to set_link_speed (what ethtool shows)
        self.is_up = False
        self.closed = False
        FakeTap.instances.append(self)

    # what the service and the reconciler use
    def up(self) -> None:
        self.is_up = True

    def set_carrier(self, on: bool) -> None:
        if self.carrier is not on:
            self.carrier_changes.append(on)
        self.carrier = on

    def set_link_speed(self, mbps: int | None) -> bool:
        self.link_speeds.append(mbps)
        return True

    def state(self) -> dict:
        return {"mtu": self.mtu, "mac": self.mac.hex(":"), "promiscuity": 0, "allmulti": 0}

    def exists(self) -> bool:
        return not self.closed

    def set_mtu(self, mtu: int) -> None:
        self.mtu = mtu

    def set_offload(self, flags: int) -> None:
        assert self.vnet_hdr, "TUNSETOFFLOAD without a vnet header"
        self.offload = flags

    def set_gso_max_size(self, size: int) -> None:
        if self.refuse_gso_max_size:
            raise TapError(f"cannot set gso_max_size {size} on {self.name}: Operation not supported")
        self.gso_max_size = size

    def close(self, remove: bool = True) -> None:
        self.closed = True
        self._ours.close()

    # the host's side
    def host_send(self, frame: bytes) -> None:
        self.peer.send((bytes(self.vnet_hdr) if self.vnet_hdr else b"") + frame)

    def host_receive(self) -> list[tuple[bytes, bytes]]:
        """Every frame the service wrote since the last call: (virtio-net header or b"", frame)."""
        out = []
        while True:
            try:
                m = self.peer.recv(70000)
            except BlockingIOError:
                return out
            if not m:
                return out  # the service's end is closed (the service never writes an empty frame)
            out.append((m[: self.vnet_hdr], m[self.vnet_hdr :]))


def make_service(kind: str = "ecm", *, gro: bool = False, rx_transfers: int = 0, tx_transfers: int = 0,
                 quirks=None, options: Options | None = None, tso: bool = True,
                 tso_python: bool = False,
                 transfer_memory: bool = False) -> tuple[EthernetService, ScriptedTransport, FakeTap]:
    """A started service over a scripted transport and a fake TAP (`transfer_memory`: the transport offers
    the pool its own memory, as the engine offers usbfs memory)."""
    t = ScriptedTransport(kind)
    t.offer_memory = transfer_memory
    driver_cls, binding = choose(t.identity.configurations, 1)
    opts = options or (Options() if quirks is None else Options(quirks=quirks))
    driver = driver_cls(t, binding, Stats(), opts)
    svc = EthernetService(t, driver, ifname="core0", gro=gro, rx_transfers=rx_transfers,
                          tx_transfers=tx_transfers, tap_factory=FakeTap, native=NATIVE, tso=tso,
                          tso_python=tso_python)
    svc.start()
    want = "native" if NATIVE and driver.native_rx() is not None else "python"
    assert svc.datapath.rx_path == want and svc.status()["datapath"] == want
    assert svc.datapath.rx_usb == (USB_C and want == "native")
    # The C TX pumps: FrameTx for one frame per transfer, NcmPump around the C NCM framer.
    pumped = driver.native_frame_tx() is not None or (NATIVE and driver.native_tx() is not None)
    assert (svc.datapath.tx_pump is not None) == (USB_C and pumped)
    assert (svc.datapath.tx_fast is not None) == (NATIVE and driver.native_tx() is not None)
    tap = svc.tap
    assert isinstance(tap, FakeTap)
    return svc, t, tap


def turn(svc: EthernetService) -> None:
    """One pass of the event loop without waiting: USB completions, then the queues."""
    svc.on_usb()
    svc.process()


def ethernet(dst: bytes, src: bytes, payload: bytes, ethertype: int = 0x88B5) -> bytes:
    """A frame of the IEEE local experimental ethertype: nothing on the host would act on it."""
    return dst + src + ethertype.to_bytes(2, "big") + payload


def drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except BlockingIOError:
        pass
