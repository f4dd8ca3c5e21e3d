"""The per-instance control socket: how `usbnetd status` and `usbnetd detach` reach a running daemon.

One AF_UNIX stream socket per instance under /run/usbnetd, named after the device. A request is one JSON
object on one line (at most MAX_REQUEST bytes), the reply one JSON object on one line. A bad request gets an
error reply; it never stops the daemon.

Who may talk to it: root and the daemon's own user, and, when a control group is configured
(`[control] group`, `usbnetd run --control-group`), the members of that group. The peer's credentials as the
kernel recorded them at connect() decide (SO_PEERCRED for uid and gid, SO_PEERGROUPS for the supplementary
groups), checked before a byte of the request is read; anyone else gets `permission denied` and the
connection is closed. The file mode is a first gate in front of that check: 0600 without a group; with one,
the socket belongs to the group with mode 0660 when the daemon may give it away (CAP_CHOWN, or it is a member
itself), else (root with only CAP_NET_ADMIN, as the systemd unit runs it) 0666 and the credential check alone
decides.

Clients are served without blocking the event loop: each accepted connection is polled like any other file
descriptor, a client that sends nothing is dropped after CLIENT_TIMEOUT, and at most MAX_CLIENTS are open at
once, so nobody allowed on the socket can stall the data path.

Streams: a handler may answer with a reply holding `_takeover`, a function of the connection. The reply line
(without that key) is sent, and the connection then belongs to that function instead of being closed (it is
called with None when the reply could not be sent):
`usbnetd trace` gets its pcapng stream this way (app/trace.py). The handler sees the peer's uid as
`_uid` in the request (set here, after the request is parsed, so a client cannot choose it).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import grp
import json
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

RUN_DIR = os.environ.get("USBNETD_RUN_DIR", "/run/usbnetd")
MAX_REQUEST = 4096
CLIENT_TIMEOUT = 1.0
MAX_CLIENTS = 8
_UCRED = struct.Struct("iII")
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13; 59 on x86, arm, arm64, riscv and most


def socket_path(device: str, run_dir: str | None = None) -> str:
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in device)
    return os.path.join(run_dir or RUN_DIR, f"{safe}.sock")


def resolve_group(name: str) -> int:
    """The gid of a group given by name (or as a decimal gid); ValueError with the reason otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError("a group name must be a non-empty string")
    if name.isascii() and name.isdigit():
        gid = int(name)
        if gid >= 0xFFFFFFFF:
            raise ValueError(f"{name} is not a valid gid")
        return gid
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        shown = "".join(c if c.isprintable() else "?" for c in name)[:64]
        raise ValueError(f"no such group {shown!r}") from None


def peer_groups(conn: socket.socket, uid: int, gid: int) -> set[int]:
    """Every group the peer process was in when it connected: its gid and its supplementary groups."""
    groups = {gid}
    try:
        # Python allows at most 1024 bytes: 256 groups. More (ERANGE), or no SO_PEERGROUPS (a kernel before
        # 4.13, another option number): the group database below.
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
    except OSError:
        pass
    else:
        groups.update(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
        return groups
    try:
        user = pwd.getpwuid(uid).pw_name
        groups.update(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)
    except KeyError:
        pass
    return groups


class AlreadyRunning(Exception):
    pass


class _Client:
    __slots__ = ("conn", "data", "deadline", "uid")

    def __init__(self, conn: socket.socket, deadline: float, uid: int = -1) -> None:
        self.conn = conn
        self.data = b""
        self.deadline = deadline
        self.uid = uid


class ControlServer:
    def __init__(self, path: str, handler: Callable[[dict], dict], group: int | None = None) -> None:
        self.path = path
        self.handler = handler
        self.group = group
        self.clients: dict[int, _Client] = {}
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
        try:
            if group is not None:
                self._open_to_group(group)
        except OSError:
            self.close()
            raise
        self.sock.listen(8)
        self.sock.setblocking(False)

    def _open_to_group(self, group: int) -> None:
        try:
            os.chown(self.path, -1, group)
        except PermissionError:
            os.chmod(self.path, 0o666)
            log.info("control socket %s: mode 0666 (no CAP_CHOWN to give it to group %d); access is checked "
                     "against each peer's credentials", self.path, group)
        else:
            os.chmod(self.path, 0o660)

    def fileno(self) -> int:
        return self.sock.fileno()

    @staticmethod
    def peer_uid(conn: socket.socket) -> int:
        return _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[1]

    def allowed(self, conn: socket.socket) -> bool:
        _pid, uid, gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if uid == 0 or uid == os.geteuid():
            return True
        return self.group is not None and self.group in peer_groups(conn, uid, gid)

    def on_readable(self) -> None:
        """The listening socket is readable: accept what is waiting, refuse strangers at once."""
        for _ in range(MAX_CLIENTS):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: the next turn may do better
                log.warning("control socket: accept failed: %s", exc.strerror or exc)
                return
            try:
                ok = self.allowed(conn)
            except OSError:
                ok = False
            if not ok:
                self._reply(conn, {"ok": False, "error": "permission denied"})
            elif len(self.clients) >= MAX_CLIENTS:
                self._reply(conn, {"ok": False, "error": "busy: too many control connections"})
            else:
                conn.setblocking(False)
                try:
                    uid = self.peer_uid(conn)
                except OSError:
                    uid = -1
                self.clients[conn.fileno()] = _Client(conn, time.monotonic() + CLIENT_TIMEOUT, uid)

    def client_fds(self) -> list[int]:
        return list(self.clients)

    def on_client_readable(self, fd: int) -> None:
        client = self.clients.get(fd)
        if client is None:
            return
        try:
            chunk = client.conn.recv(MAX_REQUEST + 1 - len(client.data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(fd, {"ok": False, "error": f"bad request: {exc}"})
            return
        client.data += chunk
        if len(client.data) > MAX_REQUEST:
            self._finish(fd, {"ok": False, "error": "request too long"})
        elif b"\n" in client.data or not chunk:
            self._finish(fd, self._handle(client.data.split(b"\n", 1)[0], client.uid))

    def expire(self, now: float | None = None) -> None:
        """Drop clients that have not sent a whole request in time."""
        now = time.monotonic() if now is None else now
        for fd in [fd for fd, c in self.clients.items() if c.deadline <= now]:
            self._finish(fd, {"ok": False, "error": "bad request: timed out"})

    def _handle(self, line: bytes, uid: int = -1) -> dict:
        try:
            request = json.loads(line or b"null")
        except ValueError as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": "request must be a JSON object with a string 'cmd'"}
        request["_uid"] = uid
        return self.handler(request)

    def _finish(self, fd: int, reply: dict) -> None:
        client = self.clients.pop(fd)
        takeover = reply.pop("_takeover", None)
        if takeover is None:
            self._reply(client.conn, reply)
            return
        conn = client.conn
        try:
            conn.settimeout(0.1)
            conn.sendall(json.dumps(reply).encode() + b"\n")
            conn.setblocking(False)
        except OSError:
            conn.close()
            takeover(None)  # the taker undoes what it set up for this connection
            return
        takeover(conn)  # the connection is the taker's now, to close when it is done

    @staticmethod
    def _reply(conn: socket.socket, reply: dict) -> None:
        with conn:
            with contextlib.suppress(OSError):
                # A fresh connection's buffer is empty and a reply is a few kB: this never waits in practice.
                conn.settimeout(0.1)
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        for fd in list(self.clients):
            self.clients.pop(fd).conn.close()
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
        try:
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read the request: the reply (permission denied) is waiting below
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
