"""Bulk pipes on raw libusb transfers: the per-frame half of the libusb engine, without per-submit allocation.

python-libusb1's `USBTransfer.setBulk` builds a new ctypes buffer object and refills every field of the
libusb transfer on each call, and its completion wrapper pops a dict and calls two hooks before ours. On ECM
that runs once per Ethernet frame; profiled in the TCG guest it was a quarter of usbnetd's CPU time. A
`BulkPipe` allocates its libusb transfers once, fills the fields that never change (handle, endpoint, type,
callback, timeout) once, and per submission writes only the buffer address, the length and the flags into
the C struct before `libusb_submit_transfer`. The completion callback takes the transfer's address as a
plain integer (no pointer object is built for it) and finds the slot with one dict lookup.

Buffers are pool packets: their addresses are taken once per packet (`from_buffer` on the packet's view)
and cached. The pipe never owns a packet beyond one submission; `on_done(packet, status, actual)` hands it
back. Teardown: `cancel_all()`, let libusb deliver the cancellations, then `free()` — never while submitted.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

from usb1 import libusb1

from ..core.pool import Packet

log = logging.getLogger(__name__)

TRANSFER_TYPE_BULK = 2  # LIBUSB_TRANSFER_TYPE_BULK
FLAG_ADD_ZERO_PACKET = 1 << 3  # LIBUSB_TRANSFER_ADD_ZERO_PACKET
ERROR_NO_DEVICE = -4  # LIBUSB_ERROR_NO_DEVICE
STATUS_TIMED_OUT, STATUS_CANCELLED = 2, 3  # libusb_transfer_status

# The callback gets the transfer as a bare address: cheaper than the pointer type libusb1 declares.
_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

DoneCallback = Callable[[Packet, int, int], None]


def transfer_layout() -> dict[str, int]:
    """python-libusb1's declaration of struct libusb_transfer: field name -> offset (libusb must be loaded)."""
    t = libusb1.libusb_transfer
    return {name: getattr(t, name).offset for name, _ in t._fields_}


def submit_function_address() -> int:
    """The address of libusb_submit_transfer itself, for C code that resubmits without Python."""
    return ctypes.cast(libusb1.libusb_submit_transfer, ctypes.c_void_p).value or 0


def cancel_function_address() -> int:
    """The address of libusb_cancel_transfer itself."""
    return ctypes.cast(libusb1.libusb_cancel_transfer, ctypes.c_void_p).value or 0


class SubmitError(Exception):
    """libusb refused a submission; `code` is libusb's error number."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class BulkPipe:
    def __init__(self, handle_p, endpoint: int, count: int, timeout_ms: int, on_done: DoneCallback,
                 submit=None) -> None:
        self._on_done = on_done
        # libusb_submit_transfer; the core test tier passes a stand-in (a C-callable ctypes function) instead.
        self._submit = submit if submit is not None else libusb1.libusb_submit_transfer
        self._cfunc = _CALLBACK(self._completed)  # kept alive as long as the pipe: libusb holds its address
        callback = ctypes.cast(self._cfunc, libusb1.libusb_transfer_cb_fn_p)
        self._ptrs = []
        self._structs = []
        self._slot_of: dict[int, int] = {}
        self._packet: list[Packet | None] = [None] * count
        self._addr: dict[Packet, int] = {}
        self._free: list[int] = []
        for i in range(count):
            p = libusb1.libusb_alloc_transfer(0)
            if not p:
                self.free()
                raise MemoryError("libusb_alloc_transfer failed")
            s = p.contents
            s.dev_handle = handle_p
            s.endpoint = endpoint
            s.type = TRANSFER_TYPE_BULK
            s.timeout = timeout_ms
            s.callback = callback
            s.flags = 0
            self._ptrs.append(p)
            self._structs.append(s)
            self._slot_of[ctypes.addressof(s)] = i
        self._callback_ref = callback
        self._free = list(range(count))
        # The watchdog's view of each slot: submissions so far, the count it saw last, for how many checks.
        self._gen = [0] * count
        self._seen = [0] * count
        self._checks = [0] * count
        self._expired = [False] * count

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def in_flight(self) -> int:
        return len(self._ptrs) - len(self._free)

    def _address(self, packet: Packet) -> int:
        """The packet buffer's address, taken once per packet (the first submission of it)."""
        addr = self._addr[packet] = ctypes.addressof(ctypes.c_char.from_buffer(packet.view))
        return addr

    def submit(self, packet: Packet, offset: int, length: int, zlp: bool = False) -> bool:
        """Submit `packet.view[offset:offset + length]`. False when every transfer is busy; raises SubmitError."""
        free = self._free
        if not free:
            return False
        i = free.pop()
        s = self._structs[i]
        addr = self._addr.get(packet)
        if addr is None:
            addr = self._address(packet)
        s.buffer = addr + offset
        s.length = length
        s.flags = FLAG_ADD_ZERO_PACKET if zlp else 0
        self._packet[i] = packet
        self._gen[i] += 1
        rc = self._submit(self._ptrs[i])
        if rc:
            self._packet[i] = None
            free.append(i)
            raise SubmitError(rc)
        return True

    def _completed(self, address: int) -> None:
        i = self._slot_of[address]
        s = self._structs[i]
        packet = self._packet[i]
        self._packet[i] = None
        self._free.append(i)
        status = s.status
        if self._expired[i]:
            self._expired[i] = False
            if status == STATUS_CANCELLED:
                status = STATUS_TIMED_OUT  # cancelled by the watchdog, not by teardown
        try:
            self._on_done(packet, status, s.actual_length)
        except Exception:  # noqa: BLE001 - an exception cannot cross back into libusb's C frame
            log.exception("bulk completion handler failed")

    def watchdog(self, checks: int) -> int:
        """Called at a steady period: cancel every transfer still in flight, as the same submission, after
        `checks` calls (it completes as timed out). Keeps libusb's per-transfer timeouts, and the timerfd
        re-arming they cost on every submit and completion, off the per-frame path. Returns how many."""
        n = 0
        for i, packet in enumerate(self._packet):
            if packet is None or self._gen[i] != self._seen[i]:
                self._seen[i] = self._gen[i]
                self._checks[i] = 0
                continue
            self._checks[i] += 1
            if self._checks[i] >= checks and not self._expired[i]:
                self._expired[i] = True
                libusb1.libusb_cancel_transfer(self._ptrs[i])
                n += 1
        return n

    # --- for the C completions (usbnetd.native NcmRx.usb_arm) ---
    def transfer_addresses(self) -> list[int]:
        """The libusb transfers' addresses, every slot's, submitted or not."""
        return [ctypes.addressof(s) for s in self._structs]

    @property
    def callback_address(self) -> int:
        """The address of this pipe's own completion callback (the C path's fallback for what it leaves)."""
        return ctypes.cast(self._cfunc, ctypes.c_void_p).value or 0

    def cancel_all(self) -> None:
        for i, packet in enumerate(self._packet):
            if packet is not None:
                libusb1.libusb_cancel_transfer(self._ptrs[i])  # an error means it is completing anyway

    def free(self) -> None:
        """Release the libusb transfers. Only when none is in flight (libusb would write into freed memory)."""
        if any(p is not None for p in self._packet):
            raise RuntimeError("bulk transfers still in flight")
        for p in self._ptrs:
            libusb1.libusb_free_transfer(p)
        self._ptrs.clear()
        self._structs.clear()
        self._free.clear()
        self._addr.clear()
