"""sd_notify(3) without libsystemd: tell the service manager we are ready, how we are, and that we live.

The protocol is one AF_UNIX datagram of newline-separated `KEY=VALUE` lines sent to the socket named by
$NOTIFY_SOCKET; a name starting with '@' is in the abstract namespace (the '@' becomes a NUL byte). Without
$NOTIFY_SOCKET (not started by systemd, or a unit that is not Type=notify) every call is a no-op, so the
daemon calls it unconditionally. A failed send is logged once and never raised, and a send never blocks: the
socket is non-blocking, so a receiver that stops reading (its queue holds net.unix.max_dgram_qlen datagrams,
10 by default) costs a dropped message, never a stalled event loop. The data path must not depend on the
service manager.

$WATCHDOG_USEC (with $WATCHDOG_PID, when set, naming this process) asks for WATCHDOG=1 at least that often;
sd_watchdog_enabled(3) recommends half the interval, which `Notifier.watchdog_interval` returns.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | bytes | None:
    """The address to send to for a $NOTIFY_SOCKET value; None when it is not an AF_UNIX socket we can use."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock:… and relative paths: not something a local unit hands us


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = socket_address(raw)
        if raw and self.address is None:
            log.warning("ignoring NOTIFY_SOCKET=%r: not an AF_UNIX path or abstract name", raw)
        self.watchdog_usec = _watchdog_usec(env)
        self._sock: socket.socket | None = None
        self._warned = False
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when no watchdog was asked for."""
        if self.address is None or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def send(self, *fields: str) -> bool:
        """Send one datagram of `KEY=VALUE` fields; True when it was sent."""
        if self.address is None or not fields:
            return False
        data = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX,
                                           socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._sock.sendto(data, self.address)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %r failed: %s", self.address, exc)
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1"]
        if status is not None:
            fields.append(f"STATUS={status}")
            self._last_status = status
        return self.send(*fields)

    def status(self, status: str) -> bool:
        """STATUS=, sent only when it differs from the last one sent."""
        if status == self._last_status:
            return False
        self._last_status = status
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        fields = ["STOPPING=1"]
        if status is not None:
            fields.append(f"STATUS={status}")
            self._last_status = status
        return self.send(*fields)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (our parent, when we were not exec'd directly)
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None
