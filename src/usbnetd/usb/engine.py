"""The libusb bulk engine: a real USB device behind the Transport contract, on python-libusb1.

Owns the device handle and every USBTransfer. A fixed set of bulk IN transfers stays in flight over pool
buffers, a fixed set of bulk OUT transfers is drawn from a free list, and one interrupt transfer is kept
resubmitted for notifications. Completions run inside `handle_events()`, which the service calls from its
single event loop when libusb's file descriptors are readable — no thread hop per packet.

Teardown order matters (python-libusb1 and libusb both insist): cancel every submitted transfer, keep
handling events until each has completed as cancelled, then release interfaces, reattach the kernel drivers
we detached, and only then close the handle.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time

import usb1
from usb1 import libusb1

from .. import native
from ..core.pool import Packet
from .bulk import (
    ERROR_NO_DEVICE,
    BulkPipe,
    SubmitError,
    cancel_function_address,
    submit_function_address,
    transfer_layout,
)
from .descriptors import Configuration, parse_configuration
from .transport import (
    STATUS_CANCELLED,
    STATUS_ERROR,
    STATUS_NO_DEVICE,
    STATUS_OK,
    STATUS_OVERFLOW,
    STATUS_STALL,
    STATUS_TIMED_OUT,
    CtrlCallback,
    DeviceIdentity,
    IntCallback,
    RxCallback,
    Transport,
    TransportError,
    TxCallback,
)

log = logging.getLogger(__name__)

_STATUS = {
    usb1.TRANSFER_COMPLETED: STATUS_OK,
    usb1.TRANSFER_ERROR: STATUS_ERROR,
    usb1.TRANSFER_TIMED_OUT: STATUS_TIMED_OUT,
    usb1.TRANSFER_CANCELLED: STATUS_CANCELLED,
    usb1.TRANSFER_STALL: STATUS_STALL,
    usb1.TRANSFER_NO_DEVICE: STATUS_NO_DEVICE,
    usb1.TRANSFER_OVERFLOW: STATUS_OVERFLOW,
}

_SPEED_MBPS = {
    usb1.SPEED_LOW: 1,
    usb1.SPEED_FULL: 12,
    usb1.SPEED_HIGH: 480,
    usb1.SPEED_SUPER: 5000,
}

SYSFS_USB = "/sys/bus/usb/devices"
# Kernel drivers usbnetd may displace when it switches configurations: they drive the same network function.
NET_DRIVERS = frozenset({"cdc_ether", "cdc_ncm", "cdc_eem", "cdc_subset", "rndis_host", "rndis_wlan", "zaurus",
                         "cdc_mbim", "r8152", "ax88179_178a", "asix", "usbnet"})

TX_TIMEOUT_CHECKS = 6  # once-a-second checks: a transfer stuck for 5 to 6 s is cancelled
# transfer_memory's chunk: 256 KiB is an order-6 allocation, which a running system can still find contiguous
DEV_MEM_CHUNK = 256 * 1024
# The C TX pump's buffers come in one piece (_pump_memory): NCM's 5 NTBs of 16 KiB at high speed are 80 KiB;
# beyond 1 MiB (order 8) a contiguous allocation is too likely to fail on a long-running system to be worth it.
PUMP_MEMORY_MAX = 1024 * 1024
GET_DESCRIPTOR = 0x06
DT_CONFIG = 0x02


def busid_of(device: usb1.USBDevice) -> str:
    """The bus id as sysfs and usbip write it: bus number, dash, dotted port path."""
    ports = device.getPortNumberList() or []
    return f"{device.getBusNumber()}-{'.'.join(str(p) for p in ports)}" if ports else f"usb{device.getBusNumber()}"


def read_configurations(handle: usb1.USBDeviceHandle, count: int) -> list[Configuration]:
    configs = []
    for index in range(count):
        try:
            head = handle.controlRead(0x80, GET_DESCRIPTOR, (DT_CONFIG << 8) | index, 0, 9, timeout=1000)
            if len(head) < 4:
                continue
            total = head[2] | (head[3] << 8)
            raw = handle.controlRead(0x80, GET_DESCRIPTOR, (DT_CONFIG << 8) | index, 0, total, timeout=1000)
        except usb1.USBError as exc:
            log.warning("reading configuration descriptor %d failed: %s", index, exc)
            continue
        config, _ = parse_configuration(bytes(raw))
        if config is not None:
            configs.append(config)
    return configs


class LibusbTransport(Transport):
    host_controller = True

    def __init__(self, context: usb1.USBContext, device: usb1.USBDevice) -> None:
        self._context = context
        self._device = device
        try:
            self._handle = device.open()
        except usb1.USBError as exc:
            raise TransportError(f"cannot open {busid_of(device)}: {exc}") from exc
        handle = self._handle
        try:
            active = handle.getConfiguration()
        except usb1.USBError:
            active = None
        self.identity = DeviceIdentity(
            busid=busid_of(device),
            vendor=device.getVendorID(),
            product=device.getProductID(),
            speed_mbps=_SPEED_MBPS.get(device.getDeviceSpeed(), 480),
            active_configuration=active,
            configurations=read_configurations(handle, device.getNumConfigurations()),
        )
        self.identity.manufacturer = self._safe_string(device.getManufacturer)
        self.identity.product_name = self._safe_string(device.getProduct)
        self.identity.serial = self._safe_string(device.getSerialNumber)
        self._claimed: list[int] = []
        self._detached: list[int] = []
        self._original_configuration: int | None = None  # set when usbnetd switched configurations
        self._rx: BulkPipe | None = None
        self._armed = None  # the usbnetd.native NcmRx taking the bulk IN completions (arm_native_rx)
        self._tx_pump = None  # the usbnetd.native FrameTx owning the bulk OUT transfers (arm_native_tx)
        self._tx: BulkPipe | None = None
        self._all: list[usb1.USBTransfer] = []  # the python-libusb1 transfers: control and interrupt
        self._ctrl_free: list[usb1.USBTransfer] = []
        self._int_transfer: usb1.USBTransfer | None = None
        self._int_buffer: bytearray | None = None
        self._stopping = False
        self._ep_in = self._ep_out = 0
        self._pollfds: list[tuple[int, int]] | None = None
        # Set by every Python callback libusb calls (completions the C code leaves, control and interrupt
        # transfers, the fd set changing): the C event loop (native burst) returns to Python when it is set.
        self._py_events = ctypes.c_int(0)
        self._dev_mem: list[tuple[int, int]] = []  # (address, bytes) from libusb_dev_mem_alloc, freed by close()
        self._pump_mem: tuple[int, int] | None = None  # the piece of it lent to the C TX pump (_pump_memory)
        context.setPollFDNotifiers(self._pollfds_changed, self._pollfds_changed)

    @staticmethod
    def _safe_string(getter) -> str | None:
        try:
            return getter()
        except (usb1.USBError, UnicodeDecodeError, ValueError):
            return None

    # --- setup ---
    def _interface_driver(self, config: int, interface: int) -> str | None:
        link = f"{SYSFS_USB}/{self.identity.busid}:{config}.{interface}/driver"
        try:
            return os.path.basename(os.readlink(link))
        except OSError:
            return None

    def set_configuration(self, value: int) -> None:
        active = self.identity.active_configuration
        if active == value:
            return
        config = self.identity.configuration(active or -1)
        # Switching configurations takes every interface away from whoever holds it. Only do that when the
        # holders are USB network drivers (usbnetd replaces them anyway); never take a storage, serial or
        # another program's (usbfs) interface from under it.
        if config is not None:
            for iface in config.interfaces:
                try:
                    bound = self._handle.kernelDriverActive(iface.number)
                except usb1.USBError:
                    bound = False
                if not bound:
                    continue
                driver = self._interface_driver(active, iface.number) or "an unknown driver"
                if driver not in NET_DRIVERS:
                    raise TransportError(f"cannot switch {self.identity.busid} to configuration {value}: "
                                         f"interface {iface.number} is in use by {driver}")
            for iface in config.interfaces:
                self._detach(iface.number)
        try:
            self._handle.setConfiguration(value)
        except usb1.USBError as exc:
            raise TransportError(f"SET_CONFIGURATION {value} failed: {exc}") from exc
        if self._original_configuration is None:
            self._original_configuration = active
        self._detached.clear()  # those interfaces belonged to the old configuration
        self.identity.active_configuration = value

    def _detach(self, interface: int) -> None:
        try:
            if self._handle.kernelDriverActive(interface):
                self._handle.detachKernelDriver(interface)
                self._detached.append(interface)
        except usb1.USBErrorNotFound:
            pass
        except usb1.USBError as exc:
            raise TransportError(f"cannot detach the kernel driver from interface {interface}: {exc}") from exc

    def claim(self, interface: int) -> None:
        if interface in self._claimed:
            return
        self._detach(interface)
        try:
            self._handle.claimInterface(interface)
        except usb1.USBErrorBusy as exc:
            raise TransportError(f"interface {interface} is busy (another program holds it)") from exc
        except usb1.USBError as exc:
            raise TransportError(f"cannot claim interface {interface}: {exc}") from exc
        self._claimed.append(interface)

    def set_alt(self, interface: int, alternate: int) -> None:
        if self._handle is None:
            raise TransportError("the device handle is closed")
        try:
            self._handle.setInterfaceAltSetting(interface, alternate)
        except usb1.USBError as exc:
            raise TransportError(f"cannot select alt setting {alternate} of interface {interface}: {exc}") from exc

    def get_string(self, index: int) -> str | None:
        if not index:
            return None
        try:
            return self._handle.getASCIIStringDescriptor(index)
        except (usb1.USBError, UnicodeDecodeError, ValueError):
            return None

    def control_in(self, request_type, request, value, index, length, timeout_ms=1000) -> bytes:
        try:
            return bytes(self._handle.controlRead(request_type, request, value, index, length, timeout=timeout_ms))
        except usb1.USBError as exc:
            raise TransportError(f"control request 0x{request:02x} failed: {exc}") from exc

    def control_out(self, request_type, request, value, index, data, timeout_ms=1000) -> None:
        try:
            self._handle.controlWrite(request_type, request, value, index, data, timeout=timeout_ms)
        except usb1.USBError as exc:
            raise TransportError(f"control request 0x{request:02x} failed: {exc}") from exc

    def interrupt_read(self, endpoint: int, length: int, timeout_ms: int) -> bytes:
        try:
            return bytes(self._handle.interruptRead(endpoint, length, timeout=timeout_ms))
        except usb1.USBErrorTimeout as exc:
            raise TransportError(f"no notification from the device within {timeout_ms} ms") from exc
        except usb1.USBError as exc:
            raise TransportError(f"interrupt endpoint read failed: {exc}") from exc

    # --- data path ---
    def transfer_memory(self, slot: int, count: int) -> list[memoryview] | None:
        """Pool memory from usbfs (libusb_dev_mem_alloc: an mmap of the device file). A bulk transfer whose
        buffer lies in it is not copied by the kernel: without it usbfs allocates a kernel buffer per URB
        (zeroed, with init_on_alloc as Debian's kernels boot), copies an OUT transfer in and an IN transfer's
        data out, and frees it at reaping, per transfer (`bench/vm.py --profile`: clear_page, copy_user and
        kmalloc were 10-15 % of usbnetd's CPU receiving NCM in the guest). Chunks of at most
        DEV_MEM_CHUNK bytes: for a host controller without DMA (dummy_hcd, some embedded ones) each is one
        physically contiguous kmalloc. None, with one log line, where the kernel or libusb cannot (no
        libusb_dev_mem_alloc, usbfs_memory_mb exhausted, a controller whose DMA memory cannot be mapped):
        the pool uses ordinary memory and usbfs copies, as before. USBNETD_USBFS_MMAP=0 forces that."""
        if self._handle is None or self._dev_mem:
            return None
        per_chunk = max(1, DEV_MEM_CHUNK // slot)
        chunks: list[memoryview] = []
        left = count
        while left > 0:
            n = min(per_chunk, left)
            address = self._dev_mem_alloc(n * slot)
            if not address:
                self._free_dev_mem()
                return None
            chunks.append(memoryview((ctypes.c_char * (n * slot)).from_address(address)).cast("B"))
            left -= n
        log.debug("usbfs transfer memory: %d buffers of %d bytes in %d chunks", count, slot, len(chunks))
        return chunks

    def _pump_memory(self, size: int) -> tuple[int, int] | None:
        """(address, size) of usbfs memory for the C TX pump's buffers, in one piece (the pump carves it by
        stride): allocated at the first arm and lent again on every later one (a trace hands the transfers to
        Python and back). None, and the pump keeps its own buffers, above PUMP_MEMORY_MAX or where
        transfer_memory would say no."""
        if self._pump_mem is not None and self._pump_mem[1] == size:
            return self._pump_mem
        if size > PUMP_MEMORY_MAX or self._pump_mem is not None:
            return None
        address = self._dev_mem_alloc(size)
        if not address:
            return None
        self._pump_mem = (address, size)
        return self._pump_mem

    def _handle_p(self) -> ctypes.c_void_p:
        """The libusb_device_handle* under python-libusb1's handle (it keeps it in a private attribute)."""
        return ctypes.cast(self._handle._USBDeviceHandle__handle, ctypes.c_void_p)

    def _dev_mem_alloc(self, size: int) -> int:
        """`size` bytes of usbfs memory (freed by close()), or 0 with one log line."""
        if os.environ.get("USBNETD_USBFS_MMAP", "") == "0":
            return 0
        alloc = getattr(getattr(libusb1, "libusb", None), "libusb_dev_mem_alloc", None)
        if alloc is None or getattr(libusb1.libusb, "libusb_dev_mem_free", None) is None:
            log.info("usbfs transfer memory: libusb has no libusb_dev_mem_alloc; transfers are copied")
            return 0
        alloc.restype, alloc.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]
        address = alloc(self._handle_p(), size)
        if not address:
            log.info("usbfs transfer memory: %d bytes refused (usbfs_memory_mb, or the controller's memory); "
                     "transfers are copied", size)
            return 0
        self._dev_mem.append((address, size))
        return address

    def _free_dev_mem(self) -> None:
        """Every piece _dev_mem_alloc gave (transfer_memory's chunks, the pump's memory), back to usbfs."""
        if not self._dev_mem:
            return
        free = libusb1.libusb.libusb_dev_mem_free
        free.restype, free.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        handle_p = self._handle_p()
        for address, size in self._dev_mem:
            free(handle_p, address, size)
        self._dev_mem.clear()
        self._pump_mem = None

    def open_pipes(self, ep_in: int, ep_out: int, ep_int: int | None, n_rx: int, n_tx: int,
                   int_size: int, on_rx: RxCallback, on_tx: TxCallback, on_int: IntCallback) -> None:
        self._ep_in, self._ep_out = ep_in, ep_out
        self._on_rx, self._on_tx, self._on_int = on_rx, on_tx, on_int
        handle_p = self._handle._USBDeviceHandle__handle  # the libusb_device_handle* the bulk pipes need
        self._rx = BulkPipe(handle_p, ep_in, n_rx, 0, self._rx_done)
        # No libusb timeout on bulk OUT: `watchdog()` gives usbnet's 5 s TX timeout instead, without the timerfd
        # system calls libusb makes per submission and completion of a transfer that has a timeout.
        self._tx = BulkPipe(handle_p, ep_out, n_tx, 0, self._tx_done)
        # A few control transfers for class requests while running (RNDIS keepalives and status, filters).
        for _ in range(4):
            t = self._handle.getTransfer()
            self._ctrl_free.append(t)
            self._all.append(t)
        if ep_int is not None:
            self._int_buffer = bytearray(int_size)
            t = self._handle.getTransfer()
            # Interrupt endpoint polling period comes from bInterval; the host controller enforces it.
            t.setInterrupt(ep_int, self._int_buffer, self._int_done, None, 0)
            self._int_transfer = t
            self._all.append(t)

    def _rx_done(self, packet: Packet, status: int, actual: int) -> None:
        self._py_events.value = 1
        self._on_rx(packet, status, actual)

    def _tx_done(self, packet: Packet, status: int, actual: int) -> None:
        self._py_events.value = 1
        self._on_tx(packet, status)

    def _int_done(self, transfer: usb1.USBTransfer) -> None:
        self._py_events.value = 1
        status = transfer.getStatus()
        if status == usb1.TRANSFER_COMPLETED:
            self._on_int(memoryview(self._int_buffer), transfer.getActualLength())
        if self._stopping or status in (usb1.TRANSFER_CANCELLED, usb1.TRANSFER_NO_DEVICE):
            return
        try:
            transfer.submit()
        except usb1.USBErrorNoDevice:
            self.gone = True
        except usb1.USBError as exc:
            log.warning("interrupt endpoint resubmit failed: %s", exc)

    def submit_control(self, request_type: int, request: int, value: int, index: int, data: bytes | int,
                       callback: CtrlCallback, timeout_ms: int = 5000) -> bool:
        if self._stopping or not self._ctrl_free:
            return False
        t = self._ctrl_free.pop()
        t.setControl(request_type, request, value, index, data, self._ctrl_done, callback, timeout_ms)
        try:
            t.submit()
        except usb1.USBError:
            self._ctrl_free.append(t)
            return False
        return True

    def _ctrl_done(self, transfer: usb1.USBTransfer) -> None:
        self._py_events.value = 1
        callback = transfer.getUserData()
        status = _STATUS.get(transfer.getStatus(), STATUS_ERROR)
        data = bytes(transfer.getBuffer()[: transfer.getActualLength()]) if status == STATUS_OK else b""
        transfer.setUserData(None)
        self._ctrl_free.append(transfer)
        if status != STATUS_CANCELLED:
            callback(status, data)

    # libusb's transfer status numbers are the Transport's STATUS_* values, so completions pass them through.
    def submit_rx(self, packet: Packet, length: int) -> bool:
        if self._stopping:
            return False
        try:
            return self._rx.submit(packet, 0, length)
        except SubmitError as exc:
            if exc.code == ERROR_NO_DEVICE:
                self.gone = True
            return False

    def submit_tx(self, packet: Packet, length: int, zlp: bool) -> bool:
        if self._stopping:
            return False
        try:
            return self._tx.submit(packet, packet.offset, length, zlp)
        except SubmitError as exc:
            if exc.code == ERROR_NO_DEVICE:
                self.gone = True
            return False

    def watchdog(self, now: float) -> None:
        # Called once a second: a bulk OUT transfer the device has not taken for 5 s (usbnet's TX timeout,
        # TX_TIMEOUT_JIFFIES) is cancelled and completes as timed out, so its buffer comes back.
        if self._tx is not None and not self._stopping:
            if self._tx_pump is not None:
                self._tx_pump.watchdog(TX_TIMEOUT_CHECKS)
            else:
                self._tx.watchdog(TX_TIMEOUT_CHECKS)

    def arm_native_rx(self, rx, kind: str) -> bool:
        if self._rx is None or self._stopping or self._armed is not None:
            return False
        if not native.COMPLETIONS or not self._layout_ok():
            return False
        rx.usb_arm(submit_function_address(), self._rx.callback_address, self._rx.transfer_addresses(), kind)
        self._armed = rx
        return True

    def disarm_native_rx(self) -> None:
        rx, self._armed = self._armed, None
        if rx is not None:
            rx.usb_disarm()

    def _layout_ok(self) -> bool:
        have = transfer_layout()
        if native.usb_layout_matches(have):
            return True
        # Never guess at a transfer's layout: C would write into the wrong fields.
        log.warning("libusb's transfer layout (%s) is not the one the C path assumes: USB completions stay in "
                    "Python", have)
        return False

    def arm_native_tx(self, pump, buffer_size: int = 0) -> bool:
        if self._tx is None or self._stopping or self._tx_pump is not None or self._tx.in_flight:
            return False
        if not native.COMPLETIONS or not self._layout_ok():
            return False
        addresses = self._tx.transfer_addresses()
        memory = self._pump_memory(len(addresses) * buffer_size) if buffer_size else None
        pump.arm(submit_function_address(), cancel_function_address(), addresses, *(memory or ()))
        self._tx_pump = pump
        return True

    def clear_halt(self, endpoint: int) -> bool:
        try:
            self._handle.clearHalt(endpoint)
        except usb1.USBErrorNoDevice:
            self.gone = True
            return False
        except usb1.USBError as exc:
            log.warning("clearing the halt on endpoint 0x%02x failed: %s", endpoint, exc)
            return False
        return True

    def start_interrupt(self) -> None:
        if self._int_transfer is not None and not self._int_transfer.isSubmitted():
            try:
                self._int_transfer.submit()
            except usb1.USBError as exc:
                raise TransportError(f"cannot poll the interrupt endpoint: {exc}") from exc

    @property
    def tx_free(self) -> int:
        if self._tx_pump is not None:
            return self._tx_pump.free
        return self._tx.free_count if self._tx is not None else 0

    @property
    def in_flight(self) -> int:
        bulk = sum(p.in_flight for p in (self._rx, self._tx) if p is not None)
        if self._tx_pump is not None:
            bulk += self._tx_pump.in_flight
        return bulk + sum(1 for t in self._all if t.isSubmitted())

    def poll_fds(self) -> list[tuple[int, int]]:
        # Asked on every loop turn: keep libusb's answer until it says its set changed (a device closed or
        # gone), instead of a ctypes round trip and a new list per wake-up.
        if self._pollfds is None:
            self._pollfds = self._context.getPollFDList()
        return self._pollfds

    def _pollfds_changed(self, *args) -> None:
        self._pollfds = None
        self._py_events.value = 1

    def burst_handles(self) -> tuple[int, int, int] | None:
        """For the C event loop (native burst): libusb_handle_events_timeout's address, the libusb context's,
        and the address of the int every Python callback sets; None while stopping."""
        if self._stopping:
            return None
        ctx = ctypes.cast(self._context._USBContext__context_p, ctypes.c_void_p).value or 0
        fn = ctypes.cast(libusb1.libusb_handle_events_timeout, ctypes.c_void_p).value or 0
        return fn, ctx, ctypes.addressof(self._py_events)

    def handle_events(self) -> None:
        try:
            self._context.handleEventsTimeout(0)
        except usb1.USBErrorInterrupted:
            pass

    # --- teardown ---
    def stop(self, timeout: float = 2.0) -> int:
        self._stopping = True
        self.disarm_native_rx()  # decoded transfers the C path holds come back as cancelled
        for pipe in (self._rx, self._tx):
            if pipe is not None:
                pipe.cancel_all()
        if self._tx_pump is not None:
            self._tx_pump.cancel_all()
        for t in self._all:
            if t.isSubmitted():
                try:
                    t.cancel()
                except usb1.USBError:
                    pass  # already completing; it will be reaped below
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = self.in_flight
            if not left:
                self._disarm_tx()
                return 0
            try:
                self._context.handleEventsTimeout(0.05)
            except usb1.USBError:
                pass
        left = self.in_flight
        if left:
            log.error("%d transfers could not be reaped within %.1fs", left, timeout)
        return left

    def disarm_native_tx(self) -> bool:
        pump = self._tx_pump
        if pump is None:
            return True
        if pump.in_flight:
            return False
        self._disarm_tx()
        return True

    def _disarm_tx(self) -> None:
        """The C TX pump gives the bulk OUT transfers back; only once none is in flight."""
        pump, self._tx_pump = self._tx_pump, None
        if pump is not None:
            pump.disarm()

    def close(self) -> None:
        handle = self._handle
        if handle is None:
            return
        if self.in_flight:
            # Closing with transfers in flight would let libusb free memory a callback still uses; leak instead.
            log.error("not closing the device handle: transfers still in flight")
            return
        for iface in self._claimed:
            try:
                handle.releaseInterface(iface)
            except usb1.USBError:
                pass
        if self._original_configuration is not None:
            # Hand the device back as we found it; the kernel probes its drivers on the restored interfaces.
            try:
                handle.setConfiguration(self._original_configuration)
            except usb1.USBError as exc:
                log.warning("could not restore configuration %d: %s", self._original_configuration, exc)
            self._detached.clear()  # interfaces of the configuration we leave; nothing to re-attach there
        for iface in self._detached:
            try:
                handle.attachKernelDriver(iface)
            except usb1.USBError as exc:
                log.warning("could not give interface %d back to the kernel driver: %s", iface, exc)
        self._claimed.clear()
        self._detached.clear()
        for t in self._all:
            t.close()
        self._all.clear()
        for pipe in (self._rx, self._tx):
            if pipe is not None:
                pipe.free()
        self._rx = self._tx = None
        self._ctrl_free.clear()
        self._int_transfer = None
        # The usbfs memory goes before the handle: a mapping left would keep the device file open, and the
        # interfaces claimed, until the process ends.
        self._free_dev_mem()
        handle.close()
        self._handle = None
        self._context.setPollFDNotifiers()  # no callbacks into a transport that is gone
