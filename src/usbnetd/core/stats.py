"""Interface counters: the numbers `usbnetd status` reports, kept as plain attributes.

One Stats object per running device. The data path increments attributes directly (no dict look-ups, no
allocation); everything else reads them through `as_dict()`.
"""

from __future__ import annotations

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
    "rx_over_errors",  # the TAP would not take a frame (queue full)
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
