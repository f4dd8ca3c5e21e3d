"""Interface counters: the numbers `usbnetd status` reports, kept as plain attributes.

One Stats object per running device. The data path increments attributes directly (no dict look-ups, no
allocation); everything else reads them through `as_dict()`.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

COUNTERS = (
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
    # finer causes; each also counts in rx_errors/tx_errors where it is an error
    "rx_length_errors",  # a datagram or frame whose length is impossible
    "rx_frame_errors",  # a malformed transfer (bad signature, bad header, bad NDP chain)
    "tx_aborted_errors",  # a bulk OUT transfer that failed or was cancelled
    "rx_usb_errors",  # a bulk IN transfer that completed with an error status
    "notifications",
    "notification_errors",
)


class Stats:
    __slots__ = COUNTERS

    def __init__(self) -> None:
        for name in COUNTERS:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}


class BurstLog:
    """Log an error once per burst: the first occurrence, then a summary at most every `interval` seconds.

    Untrusted input (a device, the TAP) can fail every frame; the counters say how often, the log says once.
    """

    def __init__(self, what: str, interval: float = 5.0, logger: logging.Logger = log) -> None:
        self.what = what
        self.interval = interval
        self.count = 0
        self._last = float("-inf")
        self._log = logger

    def hit(self, detail: object = "", n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._log.warning("%s (%s); %d so far", self.what, detail, self.count)
            self._last = now
