"""The per-instance control socket: how `usbnetd status` and `usbnetd detach` reach a running daemon.

One AF_UNIX stream socket per instance under /run/usbnetd, mode 0600, named after the device. A request is
one JSON object on one line (at most MAX_REQUEST bytes), the reply one JSON object on one line. Only root
(or the daemon's own user) may talk to it: the peer's uid is checked with SO_PEERCRED, because the file mode
alone is not enough once the directory is shared. A bad request gets an error reply; it never stops the
daemon.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import socket
import struct
from collections.abc import Callable

RUN_DIR = os.environ.get("USBNETD_RUN_DIR", "/run/usbnetd")
MAX_REQUEST = 4096
CLIENT_TIMEOUT = 1.0
_UCRED = struct.Struct("iII")


def socket_path(device: str, run_dir: str | None = None) -> str:
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in device)
    return os.path.join(run_dir or RUN_DIR, f"{safe}.sock")


class AlreadyRunning(Exception):
    pass


class ControlServer:
    def __init__(self, path: str, handler: Callable[[dict], dict]) -> None:
        self.path = path
        self.handler = handler
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if os.path.exists(path):
            if _alive(path):
                raise AlreadyRunning(f"another usbnetd instance already drives this device ({path})")
            os.unlink(path)  # left behind by an instance that died
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        self.sock.listen(8)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def on_readable(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(CLIENT_TIMEOUT)
            try:
                reply = self._serve(conn)
            except (OSError, ValueError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def _serve(self, conn: socket.socket) -> dict:
        pid, uid, gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if uid != 0 and uid != os.geteuid():
            return {"ok": False, "error": "permission denied"}
        data = b""
        while b"\n" not in data:
            chunk = conn.recv(MAX_REQUEST + 1 - len(data))
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST:
                return {"ok": False, "error": "request too long"}
        request = json.loads(data.split(b"\n", 1)[0] or b"null")
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": "request must be a JSON object with a string 'cmd'"}
        return self.handler(request)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _alive(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        s.close()


def request(path: str, cmd: str, timeout: float = 5.0, **args) -> dict:
    """Send one request; raises OSError when nobody answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    if not data:
        raise ConnectionError("the daemon closed the connection without answering")
    return json.loads(data)


def instances(run_dir: str | None = None) -> list[str]:
    return sorted(glob.glob(os.path.join(run_dir or RUN_DIR, "*.sock")))
