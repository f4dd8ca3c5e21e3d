"""Fault injection for the simulated adapter: bulk IN error storms and endpoint stalls on demand.

Real adapters cannot produce EPROTO/ETIME or a halted endpoint when a test wants one, so the simulated
adapter takes options in its device string, in the style of pyserial's URLs:

    sim:ncm?rx_errors=30&rx_error_after=50            30 bulk IN completions fail with a transfer error
                                                      (libusb's TRANSFER_ERROR, what EPROTO/ETIME become)
                                                      after the first 50 good ones
    sim:ecm?rx_stall_after=100                        after 100 good bulk IN completions the IN endpoint
                                                      halts: every bulk IN completes with STALL (EPIPE)
                                                      until the host clears the halt

Options (non-negative integers):
  native           1: the NCM device frames with usbnetd.native (NcmTx builds its bulk IN NTBs from the wire,
                   NcmRx puts its bulk OUT NTBs on it) instead of Python, and has no packet filter: for
                   benchmarks, where the device must not be what limits the driver (bench/native.py)
  rx_errors        transfers failed per error burst (0: none)
  rx_error_after   good bulk IN completions before each burst (default 100)
  rx_error_bursts  how many bursts (default 1)
  rx_stall_after   good bulk IN completions before each halt (0: never halts)
  rx_stalls        how many halts (default 1)

Failed transfers complete at once and carry no data, as on a bus where the device does not answer cleanly.
The counts are logged when the adapter stops (`simulated device: faults: ...`).
"""

from __future__ import annotations

from collections import deque

from .transport import STATUS_ERROR, STATUS_STALL

OPTIONS = {
    "rx_errors": 0,
    "rx_error_after": 100,
    "rx_error_bursts": 1,
    "rx_stall_after": 0,
    "rx_stalls": 1,
}


DEVICE_OPTIONS = {"native": 0}  # how the device works, not a fault (taken by SimTransport itself)


def parse_options(query: str) -> tuple[tuple[str, int], ...]:
    """`a=1&b=2` -> (("a", 1), ("b", 2)). Raises ValueError with a one-line reason."""
    out: dict[str, int] = {}
    known = {**DEVICE_OPTIONS, **OPTIONS}
    for item in query.split("&") if query else ():
        name, eq, value = item.partition("=")
        if name not in known:
            raise ValueError(f"unknown simulated adapter option {name!r} (known: {', '.join(known)})")
        if not eq or not value.isdigit() or len(value) > 9:
            raise ValueError(f"option {name} needs a non-negative integer, got {value!r}")
        out[name] = int(value)
    return tuple(out.items())


class SimFaults:
    """What the simulated device does wrong on its bulk IN endpoint, and how often it did it."""

    def __init__(self, rx_errors: int = 0, rx_error_after: int = 100, rx_error_bursts: int = 1,
                 rx_stall_after: int = 0, rx_stalls: int = 1) -> None:
        self.rx_errors = rx_errors
        self.rx_error_after = rx_error_after
        self.bursts_left = rx_error_bursts if rx_errors else 0
        self.rx_stall_after = rx_stall_after
        self.stalls_left = rx_stalls if rx_stall_after else 0
        self._good_errors = 0  # good completions since the last burst
        self._good_stalls = 0  # good completions since the last halt
        self.burst_left = 0  # completions still to fail in the current burst
        self.halted = False
        # what happened
        self.injected_errors = 0
        self.stall_completions = 0
        self.halts = 0
        self.halts_cleared = 0

    def completed(self) -> None:
        """One bulk IN transfer completed with data: count it toward the next fault."""
        self._good_errors += 1
        self._good_stalls += 1
        if self.bursts_left and not self.burst_left and self._good_errors >= self.rx_error_after:
            self.bursts_left -= 1
            self.burst_left = self.rx_errors
            self._good_errors = 0
        if self.stalls_left and not self.halted and self._good_stalls >= self.rx_stall_after:
            self.stalls_left -= 1
            self.halted = True
            self.halts += 1
            self._good_stalls = 0

    def due(self, queued: bool) -> bool:
        """True when waiting bulk IN transfers are to fail now."""
        return queued and (self.halted or self.burst_left > 0)

    def fail(self, in_q: deque, done: deque) -> None:
        """Complete waiting bulk IN transfers with the fault in force (STALL while halted, else an error)."""
        while in_q and (self.halted or self.burst_left):
            packet, _size = in_q.popleft()
            if self.halted:
                self.stall_completions += 1
                done.append((0, packet, STATUS_STALL, 0))
            else:
                self.burst_left -= 1
                self.injected_errors += 1
                done.append((0, packet, STATUS_ERROR, 0))

    def clear_halt(self) -> None:
        if self.halted:
            self.halted = False
            self.halts_cleared += 1

    def summary(self) -> str:
        return (f"{self.injected_errors} bulk IN errors injected, {self.halts} halts "
                f"({self.stall_completions} STALL completions), {self.halts_cleared} halts cleared by the host")
