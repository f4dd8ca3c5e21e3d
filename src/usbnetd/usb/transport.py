"""The transport contract: what the Ethernet service and protocol drivers may ask of a USB device.

Two implementations stand behind it: `engine.LibusbTransport` (a real device through python-libusb1's
asynchronous transfers) and `sim.SimTransport` (an in-process device model). Setup-time requests are
synchronous; the data path is asynchronous: the service hands over pool packets, and completions come back
through the callbacks it registered, always from inside `handle_events()`, in the event-loop thread.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.pool import Packet
from .descriptors import Configuration

# Completion callbacks. `ok` is False for an errored transfer; `cancelled` tells teardown from faults.
RxCallback = Callable[[Packet, int, int], None]  # packet, status, actual length
TxCallback = Callable[[Packet, int], None]  # packet, status
IntCallback = Callable[[memoryview, int], None]  # buffer, actual length
CtrlCallback = Callable[[int, bytes], None]  # status, data received (empty for OUT)

# Transfer status values, mirroring libusb's so the sim can report the same ones.
STATUS_OK = 0
STATUS_ERROR = 1
STATUS_TIMED_OUT = 2
STATUS_CANCELLED = 3
STATUS_STALL = 4
STATUS_NO_DEVICE = 5
STATUS_OVERFLOW = 6


class TransportError(Exception):
    """A setup-time failure talking to the device (the data path never raises these)."""


@dataclass
class DeviceIdentity:
    busid: str
    vendor: int
    product: int
    manufacturer: str | None = None
    product_name: str | None = None
    serial: str | None = None
    speed_mbps: int = 480
    active_configuration: int | None = None
    configurations: list[Configuration] = field(default_factory=list)

    def configuration(self, value: int) -> Configuration | None:
        for c in self.configurations:
            if c.value == value:
                return c
        return None


class Transport(ABC):
    identity: DeviceIdentity
    # Set when a submission found the device gone: transfers that were in flight at an unplug may complete
    # with a plain error rather than NO_DEVICE, so this is the reliable sign.
    gone = False
    # True when transfers complete through a host controller's interrupts and softirqs on some CPU, which the
    # event loop's thread keeps off (app/placement.py); the simulated device completes them in that thread.
    host_controller = False

    def clear_halt(self, endpoint: int) -> bool:
        """Clear a stalled endpoint (CLEAR_FEATURE ENDPOINT_HALT); False when that failed."""
        return True

    # --- setup (synchronous) ---
    @abstractmethod
    def set_configuration(self, value: int) -> None: ...

    @abstractmethod
    def claim(self, interface: int) -> None:
        """Claim an interface, detaching (and remembering) a kernel driver bound to it."""

    @abstractmethod
    def set_alt(self, interface: int, alternate: int) -> None: ...

    @abstractmethod
    def get_string(self, index: int) -> str | None: ...

    @abstractmethod
    def control_in(self, request_type: int, request: int, value: int, index: int, length: int,
                   timeout_ms: int = 1000) -> bytes: ...

    @abstractmethod
    def control_out(self, request_type: int, request: int, value: int, index: int, data: bytes,
                    timeout_ms: int = 1000) -> None: ...

    @abstractmethod
    def interrupt_read(self, endpoint: int, length: int, timeout_ms: int) -> bytes:
        """Synchronous interrupt IN, for setup only (RNDIS waits for RESPONSE_AVAILABLE this way)."""

    # --- data path (asynchronous) ---
    @abstractmethod
    def open_pipes(self, ep_in: int, ep_out: int, ep_int: int | None, n_rx: int, n_tx: int,
                   int_size: int, on_rx: RxCallback, on_tx: TxCallback, on_int: IntCallback) -> None: ...

    @abstractmethod
    def submit_rx(self, packet: Packet, length: int) -> bool:
        """Start a bulk IN into packet.view[:length]; False when every RX transfer is busy or on error."""

    @abstractmethod
    def submit_tx(self, packet: Packet, length: int, zlp: bool) -> bool:
        """Start a bulk OUT of packet.view[:length]; `zlp` ends an exact multiple of wMaxPacketSize."""

    @abstractmethod
    def start_interrupt(self) -> None: ...

    @abstractmethod
    def submit_control(self, request_type: int, request: int, value: int, index: int, data: bytes | int,
                       callback: CtrlCallback, timeout_ms: int = 5000) -> bool:
        """Start a class request while running (bytes: OUT with that payload, int: IN of that length).

        The callback runs from handle_events(); False when every control transfer is busy.
        """

    @property
    @abstractmethod
    def tx_free(self) -> int: ...

    @property
    @abstractmethod
    def in_flight(self) -> int: ...

    @abstractmethod
    def poll_fds(self) -> list[tuple[int, int]]: ...

    @abstractmethod
    def handle_events(self) -> None: ...

    def watchdog(self, now: float) -> None:
        """Called about once a second while running: time out transfers the device has left hanging."""
        return None  # the simulated device never leaves one hanging

    def arm_native_rx(self, rx, kind: str) -> bool:
        """Let the C path (a usbnetd.native NcmRx) take the bulk IN completions itself: decode, write and
        resubmit without a Python call per transfer ("ntb" or "frame" framing). False when this transport
        cannot (then completions reach `on_rx` as always)."""
        return False

    def disarm_native_rx(self) -> None:
        """Completions go to `on_rx` again; transfers the C path had decoded come back to it as cancelled."""
        return None

    def arm_native_tx(self, pump, buffer_size: int = 0) -> bool:
        """Let the C TX pump (a usbnetd.native FrameTx or NcmPump) own the bulk OUT transfers: it reads the TAP,
        submits and counts completions without Python per frame. False when this transport cannot (then TX goes
        through submit_tx and on_tx as always). stop() cancels and reaps its transfers too, then disarms it.
        With `buffer_size`, the pump takes buffers of that size in the transport's own memory where there is
        some, as transfer_memory gives the pool (pump.arm's `memory, size`; pump.lent says whether it did)."""
        return False

    def detail(self) -> dict:
        """What the transport adds to `usbnetd stats` (the simulated device: its own CPU time)."""
        return {}

    def transfer_memory(self, slot: int, count: int) -> list[memoryview] | None:
        """Memory for `count` pool buffers of `slot` bytes that bulk transfers can use without a copy, as
        chunks each holding a whole number of slots; or None (the pool then uses ordinary memory). Valid until
        close(), which frees it: nothing may touch it after that."""
        return None

    def disarm_native_tx(self) -> bool:
        """The C TX pump gives the bulk OUT transfers back at run time (a trace wants TX in Python): only once
        none of its transfers is in flight, False until then. True when no pump is armed."""
        return True

    def pending(self) -> bool:
        """True when completions are ready without any fd becoming readable (the sim uses this)."""
        return False

    def burst_handles(self) -> tuple[int, int, int] | None:
        """For the C event loop (usbnetd.native burst): (the address of a C function with
        libusb_handle_events_timeout's signature, its context argument, the address of a C int that every
        Python-side completion sets), or None where the loop cannot run (the simulated adapter)."""
        return None

    # --- teardown ---
    @abstractmethod
    def stop(self, timeout: float = 2.0) -> int:
        """Cancel and reap every transfer; return how many could not be reaped (0 on success)."""

    @abstractmethod
    def close(self) -> None:
        """Release interfaces, reattach kernel drivers that were detached, close the handle."""
