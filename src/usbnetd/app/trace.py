"""`usbnetd trace`: both ends of a trace stream over an instance's control socket.

The daemon's end (`TraceSession`): the control socket hands the connection over after its one-line JSON
reply (control.py, `_takeover`); from then on the connection carries pcapng only — the section header and
the two interface descriptions (core/trace.header), then blocks as the tracer queues them, and at the end
one Interface Statistics Block per interface (records taken, records dropped) before the daemon closes it.
The socket is non-blocking and polled by the event loop like any other descriptor: when the reader is
slow, the tracer's bounded queue fills and records are dropped and counted; the data path never waits.
The trace ends when the reader shuts its side down (what the client does on Ctrl-C or SIGTERM), when it has
`count` records, or when the instance stops; each way the stream ends with the statistics blocks.

The client's end (`run_client`): sends the request, reads the reply line, then copies whole blocks (never a
partial one, so the file stays valid even if the instance dies mid-block) to the output until the daemon
closes the stream, and reports what was captured and dropped on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import BinaryIO

from ..core import pcapng
from ..core.datapath import TraceUnavailable
from ..core.trace import DEFAULT_LIMIT, DEFAULT_SNAPLEN, Tracer, header

log = logging.getLogger(__name__)

SEND_CHUNK = 256 * 1024  # bytes handed to one send()
FINISH_TIMEOUT = 2.0  # seconds a stopping instance waits for the reader to take the end of a trace
MIN_SNAPLEN = 64 + 14  # a usbmon header and an Ethernet header
MIN_BUFFER, MAX_BUFFER = 64 * 1024, 256 << 20  # bytes of records the tracer may queue


def usb_address(busid: str, sysfs: str = "/sys/bus/usb/devices") -> tuple[int, int]:
    """(bus number, device address) for the usbmon header, from sysfs; (0, 0) when it has none (sim)."""
    try:
        with open(os.path.join(sysfs, busid, "busnum")) as f:
            bus = int(f.read())
        with open(os.path.join(sysfs, busid, "devnum")) as f:
            dev = int(f.read())
        return bus, dev
    except (OSError, ValueError):
        return 0, 0


class TraceSession:
    """The daemon's end of one trace: the connection, the tracer, and what is still to be sent."""

    def __init__(self, conn: socket.socket, tracer: Tracer, first: bytes, on_stop: Callable[[], None]) -> None:
        self.conn = conn
        self.tracer = tracer
        self._out = bytearray(first)
        self._on_stop = on_stop  # detaches the tracer from the data path
        self.closing = False
        self.closed = False
        self.reason: str | None = None
        self._deadline: float | None = None

    def fileno(self) -> int:
        return self.conn.fileno()

    def poll_events(self) -> int:
        ev = 0 if self.closing else select.POLLIN  # once closing, the reader's end-of-file is known already
        if self._out or self.tracer.blocks:
            ev |= select.POLLOUT
        return ev

    def on_event(self, ev: int) -> None:
        if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
            try:
                data = self.conn.recv(4096)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                # The reader shut its side down (Ctrl-C, -c reached on its side) or went away.
                self.finish("stopped by the reader")
            if ev & (select.POLLHUP | select.POLLERR) and not data:
                self.finish("the reader went away")
        self.pump()

    def finish(self, reason: str) -> None:
        """Stop recording; the statistics blocks go after what is queued, then the connection is closed."""
        if self.closing:
            return
        self.closing = True
        self.reason = reason
        self._on_stop()
        self._deadline = time.monotonic() + FINISH_TIMEOUT
        for block in self.tracer.take(1 << 62):
            self._out += block
        self._out += self.tracer.trailer(comment=f"trace ended: {reason}")
        log.info("trace ended (%s): %d frames, %d USB records, %d dropped", reason, self.tracer.recorded[0],
                 self.tracer.recorded[1], sum(self.tracer.dropped))

    def pump(self) -> None:
        """Send what the socket takes now; never waits."""
        if self.closed:
            return
        if self.tracer.done and not self.closing:
            self.finish(f"{self.tracer.recorded[0] + self.tracer.recorded[1]} records, as asked")
        out = self._out
        while True:
            if len(out) < SEND_CHUNK and self.tracer.blocks:
                for block in self.tracer.take(SEND_CHUNK):
                    out += block
            if not out:
                break
            try:
                n = self.conn.send(memoryview(out)[:SEND_CHUNK])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    log.warning("trace: sending failed: %s", exc.strerror or exc)
                self._close()
                return
            del out[:n]
        if self.closing and (not out or time.monotonic() >= self._deadline):
            self._close()

    def drain(self, timeout: float = FINISH_TIMEOUT) -> None:
        """For a stopping instance: wait (a little) for the reader to take the rest, then close."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.pump()
            if self.closed:
                break
            with contextlib.suppress(OSError, ValueError):
                select.select([], [self.conn], [], 0.05)
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.close()


def start_session(service, request: dict, on_session: Callable[[TraceSession | None], None]) -> dict:
    """The daemon's answer to a trace request: a refusal, or the reply and the takeover that starts it."""
    if request.get("_uid") not in (0, os.geteuid()):
        return {"ok": False, "error": "permission denied: tracing is for root only (frames carry payloads)"}
    try:
        snaplen = int(request.get("snaplen") or DEFAULT_SNAPLEN)
        count = int(request.get("count") or 0)
        limit = int(request.get("buffer") or DEFAULT_LIMIT)
    except (TypeError, ValueError):
        return {"ok": False, "error": "bad request: snaplen, count and buffer must be whole numbers"}
    if not MIN_SNAPLEN <= snaplen <= DEFAULT_SNAPLEN or count < 0 or not MIN_BUFFER <= limit <= MAX_BUFFER:
        return {"ok": False, "error": f"bad request: snaplen must be in {MIN_SNAPLEN}..{DEFAULT_SNAPLEN}, "
                                      f"count at least 0, buffer in {MIN_BUFFER}..{MAX_BUFFER} bytes"}
    dp = service.datapath
    if dp.port is None or not dp.running:
        return {"ok": False, "error": "the instance is not running yet"}
    if dp.tracer is not None:
        return {"ok": False, "error": "busy: the instance is already being traced"}
    d = service.driver
    busid = service.transport.identity.busid
    bus, dev = usb_address(busid)
    ep_int = d.binding.ep_int
    tracer = Tracer(snaplen=snaplen, count=count, limit_bytes=limit, bus=bus, devnum=dev, ep_in=d.binding.ep_in.address,
                    ep_out=d.binding.ep_out.address, ep_int=ep_int.address if ep_int else None,
                    interval=getattr(ep_int, "interval", 0) if ep_int else 0)
    info = {"ifname": service.ifname, "busid": busid, "protocol": d.name, "snaplen": snaplen, "count": count,
            "buffer": limit,
            "datapath_before": dp.path, "interfaces": ["ethernet", "usb"]}
    first = header(service.ifname, busid, d.name, snaplen, "usbnetd")

    # Attached before the reply, so that a refusal (the C TX pump could not hand its transfers back) is the
    # reply; the takeover then only starts the stream, or detaches again when the reply could not be sent.
    try:
        dp.set_tracer(tracer)
    except TraceUnavailable as exc:
        return {"ok": False, "error": f"cannot trace now: {exc}"}

    def takeover(conn: socket.socket | None) -> None:
        if conn is None:
            dp.set_tracer(None)  # the client went away before it had its reply
            return
        session = TraceSession(conn, tracer, first, lambda: dp.set_tracer(None))
        log.info("%s: trace started (snap length %d%s); the Python data path runs until it ends", service.ifname,
                 snaplen, f", {count} records" if count else "")
        on_session(session)
        session.pump()

    return {"ok": True, "trace": info, "_takeover": takeover}


# ------------------------------------------------------------------------------------------- the client
class TraceError(Exception):
    """Why a trace could not be started or written: one line for the user."""


def run_client(path: str, out: BinaryIO, snaplen: int, count: int, report: Callable[[str], None],
               buffer: int = DEFAULT_LIMIT) -> dict:
    """Trace the instance at `path` into `out` until the daemon ends the stream; returns the summary."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    try:
        sock.connect(path)
        sock.sendall(json.dumps({"cmd": "trace", "snaplen": snaplen, "count": count, "buffer": buffer}).encode()
                     + b"\n")
        buf = bytearray()
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except PermissionError:
        sock.close()
        raise TraceError(f"permission denied on {path}: tracing is for root only") from None
    except OSError as exc:
        sock.close()
        raise TraceError(f"cannot reach the instance ({path}): {exc.strerror or exc}") from None
    line, _, rest = bytes(buf).partition(b"\n")
    try:
        reply = json.loads(line) if line else None
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        sock.close()
        raise TraceError("the instance did not answer the trace request")
    if not reply.get("ok"):
        sock.close()
        raise TraceError(str(reply.get("error", "refused")))
    info = reply["trace"]
    report(f"tracing {info['ifname']} ({info['protocol']} on {info['busid']}): interface 0 Ethernet frames, "
           f"interface 1 USB transfers; Ctrl-C stops")

    stopping = {"asked": False}

    def stop(_signum=None, _frame=None) -> None:
        if not stopping["asked"]:
            stopping["asked"] = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)  # the daemon sees the end, writes the statistics, closes

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    summary = {"frames": 0, "usb": 0, "dropped": 0, "complete": False, "reader_gone": False}
    pending = bytearray(rest)
    sock.settimeout(None)
    try:
        while True:
            blocks, used = pcapng.split_blocks(pending)
            if used:
                try:
                    out.write(pending[:used])
                    out.flush()
                except BrokenPipeError:
                    stop()  # the reader of our output (tshark, head) went away: end the trace cleanly
                    summary["reader_gone"] = True
                    with contextlib.suppress(OSError, ValueError):
                        # nothing more can reach it; exit-time flushes of what is buffered go nowhere, quietly
                        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
                    _drain(sock)
                    pending.clear()
                    break
                del pending[:used]
                _count(blocks, summary)
            try:
                chunk = sock.recv(1 << 20)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                report(f"the stream broke: {exc.strerror or exc}")
                break
            if not chunk:
                break
            pending += chunk
    except pcapng.FormatError as exc:
        raise TraceError(f"the instance sent something that is not pcapng: {exc}") from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        sock.close()
    if pending:
        report(f"the stream ended inside a block ({len(pending)} bytes left out; the file ends before it)")
    return summary


def _drain(sock: socket.socket, timeout: float = 2.0) -> None:
    sock.settimeout(timeout)
    with contextlib.suppress(OSError):
        while sock.recv(1 << 20):
            pass


def _count(blocks: list[pcapng.Block], summary: dict) -> None:
    for b in blocks:
        if b.type == pcapng.EPB_TYPE:
            iface = struct.unpack_from("<I", b.body, 0)[0]
            summary["frames" if iface == 0 else "usb"] += 1
        elif b.type == pcapng.ISB_TYPE:
            opts = b.options(12)
            if pcapng.ISB_IFDROP in opts:
                summary["dropped"] += struct.unpack("<Q", opts[pcapng.ISB_IFDROP][0])[0]
            summary["complete"] = True
            if pcapng.OPT_COMMENT in opts:
                summary.setdefault("comments", []).append(opts[pcapng.OPT_COMMENT][0].decode(errors="replace"))
