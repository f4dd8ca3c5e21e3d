"""Logging set-up: one line per event, journald-friendly when systemd runs us.

Under systemd (JOURNAL_STREAM is set and names our stderr) each line starts with an sd-daemon(3) priority
prefix like `<4>`, so journald files it at the right level and `journalctl -p warning` works; the device's
bus id and the interface name are in every line (`usbnetd[3-1]: usb0: link up`). Elsewhere lines carry
the same text without the prefix. Bursts are rate-limited where they are raised (service.BurstLog).
"""

from __future__ import annotations

import logging
import os
import sys

# sd-daemon(3) priorities
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def stderr_is_journal() -> bool:
    """JOURNAL_STREAM is "device:inode" of the journal's stream; trust it only if it is really our stderr."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        # one event, one line: a multi-line message would become several journal entries
        return f"<{prio}>" + super().format(record).replace("\n", " | ")


def setup(tag: str, verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = f"usbnetd[{tag}]: %(message)s"
    handler.setFormatter(JournalFormatter(fmt) if stderr_is_journal() else logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries (pyroute2 is chatty) stay at warnings
    # -v and -vv: our debug; default: our info
    logging.getLogger("usbnetd").setLevel(logging.DEBUG if verbose else logging.INFO)
