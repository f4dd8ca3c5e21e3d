"""Logging set-up: one line per event, journald-friendly when systemd runs us.

Under systemd (JOURNAL_STREAM is set and names our stderr) each line starts with an sd-daemon(3) priority
prefix like `<4>`, so journald files it at the right level and `journalctl -p warning` works; the device's
bus id and the interface name are in every line (`usbnetd[3-1]: usb0: link up`). Elsewhere lines carry
the same text without the prefix. Bursts are rate-limited where they are raised (core.stats.BurstLog).

`usbnetd run` in a terminal holds its lines back until the instance is up (StartupGate): a start that fails
is then the one error line the CLI prints, not the teardown it logged first. With -v, or when stderr is a
log (the journal, or a file such as attach's /run/usbnetd/<device>.log), every line goes out at once.
"""

from __future__ import annotations

import logging
import os
import stat
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


def stderr_is_log() -> bool:
    """stderr is kept, not watched: the journal, or a regular file (attach's log, a `2>file` redirect)."""
    if stderr_is_journal():
        return True
    try:
        return stat.S_ISREG(os.fstat(sys.stderr.fileno()).st_mode)
    except (OSError, ValueError):
        return False


class StartupGate(logging.Handler):
    """Passes records to `target`, except while holding: then it keeps them until started() or failed().

    started() writes what was held and lets everything through from then on (the instance is up, or stopped
    without failing); failed() forgets what was held (the start failed, and the CLI's error line says why).
    (Not release(): logging.Handler.release() is its lock's.)
    """

    MAX_HELD = 1000  # a start-up that logs more than this is not waiting for anyone to read it

    def __init__(self, target: logging.Handler, hold: bool) -> None:
        super().__init__()
        self.target = target
        self.held: list[logging.LogRecord] | None = [] if hold else None

    def emit(self, record: logging.LogRecord) -> None:
        held = self.held
        if held is None:
            self.target.handle(record)
        elif len(held) < self.MAX_HELD:
            held.append(record)

    def started(self) -> None:
        held, self.held = self.held, None
        for record in held or ():
            self.target.handle(record)

    def failed(self) -> None:
        self.held = None


def setup(tag: str, verbose: int, hold_startup: bool = False) -> StartupGate:
    """Log to stderr, one line per event. `hold_startup`: hold lines back until the caller's started() or
    failed() (see StartupGate), unless -v is given or stderr is a log."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = f"usbnetd[{tag}]: %(message)s"
    handler.setFormatter(JournalFormatter(fmt) if stderr_is_journal() else logging.Formatter(fmt))
    gate = StartupGate(handler, hold=hold_startup and not verbose and not stderr_is_log())
    root = logging.getLogger()
    root.handlers[:] = [gate]
    root.setLevel(logging.WARNING)  # libraries (pyroute2 is chatty) stay at warnings
    # -v and -vv: our debug; default: our info
    logging.getLogger("usbnetd").setLevel(logging.DEBUG if verbose else logging.INFO)
    return gate
