"""The event loop of one usbnetd instance: one thread, one poll(), every file descriptor in it.

libusb's descriptors (usbfs and its timerfd), the TAP, the simulated wire, the control socket and a signal
wake-up pipe all go into one `select.poll`. USB completions, TAP reads and queue processing therefore happen
in the same thread, in batches, with no per-packet thread hop and no lock. SIGTERM/SIGINT only set a flag
(through the wake-up fd); teardown then runs in the normal flow, never inside a signal handler.

With `busy_poll_us` set, the loop does not sleep for that long after a turn that moved USB or TAP work: it
polls with a zero timeout instead (in C, inside burst(), when the C event loop runs). The next frame is then
found without the wake-up of a sleeping thread, at the price of a CPU kept busy meanwhile (docs/performance.md,
"Busy polling").
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time

from ..core.service import EthernetService, State
from . import trace as trace_mod
from .control import ControlServer
from .facts import device_facts
from .notify import Notifier
from .placement import CpuPlacement

log = logging.getLogger(__name__)

POLLIN = select.POLLIN
IDLE_TIMEOUT_MS = 250  # wake up now and then even when idle, so a lost wake-up can never wedge the loop


class Daemon:
    def __init__(self, service: EthernetService, control_path: str | None, control_group: int | None = None,
                 busy_poll_us: int = 0) -> None:
        self.service = service
        self.busy_poll_us = busy_poll_us
        self.control_path = control_path
        self.control_group = control_group  # gid whose members may use the control socket, besides root
        self.control: ControlServer | None = None
        self.stop_reason: str | None = None
        self.remove_interface = False
        self.failed: str | None = None  # why the instance ended in error (start-up errors raise instead)
        self.notifier = Notifier()
        self.trace: trace_mod.TraceSession | None = None  # `usbnetd trace` attached (app/trace.py)
        self.placement: CpuPlacement | None = None  # the loop thread's CPUs (app/placement.py), made by run()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def _on_signal(self, signum: int, frame) -> None:
        self.stop_reason = signal.Signals(signum).name

    def handle_request(self, req: dict) -> dict:
        cmd = req["cmd"]
        if cmd == "status":
            st = self.service.status()
            st["busy_poll_us"] = self.busy_poll_us
            return {"ok": True, "status": self._with_facts(st), "pid": os.getpid()}
        if cmd == "stats":
            st = self.service.detailed_stats()
            st["busy_poll_us"] = self.busy_poll_us
            if self.placement is not None:
                st.update(self.placement.detail())
            return {"ok": True, "stats": self._with_facts(st), "pid": os.getpid()}
        if cmd == "detach":
            self.stop_reason = "detach requested"
            self.remove_interface = True  # detach removes even a persistent interface; a restart keeps it
            return {"ok": True}
        if cmd == "trace":
            if self.trace is not None:
                return {"ok": False, "error": "busy: the instance is already being traced"}
            return trace_mod.start_session(self.service, req, self._set_trace)
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _with_facts(self, st: dict) -> dict:
        try:
            st["device"] = device_facts(self.service)
        except Exception as exc:  # noqa: BLE001 - status must answer even if a fact cannot be read
            st["device"] = {"error": f"{type(exc).__name__}: {exc}"}
        return st

    def _set_trace(self, session: trace_mod.TraceSession | None) -> None:
        self.trace = session

    def run(self, on_ready=None) -> None:
        """Start the service, serve until told to stop, tear down. Raises what start() raised."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno())
        try:
            if self.control_path:
                self.control = ControlServer(self.control_path, self.handle_request, self.control_group)
            if self.stop_reason is None:
                self.service.start()
                # READY=1 only now: the TAP exists and RX is primed.
                self.notifier.ready(self._status_line())
                if on_ready is not None:
                    on_ready(self.service)
                self.placement = CpuPlacement(
                    off=None if self.service.transport.host_controller else "no host controller")
                self._loop()
        finally:
            if self.trace is not None:
                # The reader gets a whole file: what was recorded, then the statistics, then the end.
                self.trace.finish(f"the instance stopped: {self.stop_reason or 'start-up failed'}")
                self.trace.drain()
                self.trace = None
            self.notifier.stopping(f"stopping: {self.stop_reason or 'start-up failed'}")
            self.service.stop(remove_interface=self.remove_interface)
            if self.control is not None:
                self.control.close()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old.items():
                signal.signal(s, h)
            self.notifier.close()
            log.info("stopped: %s", self.stop_reason or "start-up failed")

    def _status_line(self) -> str:
        svc = self.service
        speed = f", {svc.link.speed_mbps} Mbit/s" if svc.link.speed_mbps is not None else ""
        return (f"{svc.driver.name} on {svc.transport.identity.busid}: {svc.ifname or '?'}, "
                f"link {'up' if svc.link.up else 'down'}{speed}")

    def _loop(self) -> None:
        svc = self.service
        poller = select.poll()
        registered: dict[int, int] = {}
        wake_fd = self._wake_r.fileno()
        fixed = {wake_fd: POLLIN}
        control = self.control
        if control is not None:
            fixed[control.fileno()] = POLLIN
        tap_fd = svc.tap.fd
        handlers = svc.fd_handlers()
        for fd in handlers:
            fixed[fd] = POLLIN
        notifier = self.notifier
        watchdog = notifier.watchdog_interval()
        next_ping = time.monotonic() if watchdog else None
        link = (svc.link.up, svc.link.speed_mbps)
        placement = self.placement
        busy_poll_s = self.busy_poll_us / 1e6
        spin_until = 0.0  # the Python loop's busy polling: no sleep before this (monotonic) time
        while self.stop_reason is None:
            if svc.device_gone:
                self.stop_reason = "device disappeared"
                break
            if svc.interface_gone:
                self.stop_reason = "interface deleted from outside"
                self.failed = f"interface {svc.ifname} was deleted from outside"
                break
            if (svc.link.up, svc.link.speed_mbps) != link:
                link = (svc.link.up, svc.link.speed_mbps)
                notifier.status(self._status_line())
            if next_ping is not None and time.monotonic() >= next_ping:
                # The loop is turning and the service is running (checked below): that is our health.
                notifier.watchdog()
                next_ping = time.monotonic() + watchdog
            # Registrations change rarely (TAP backpressure, the sim's wire); diff them instead of rebuilding.
            want = dict(fixed)
            if control is not None and control.clients:
                control.expire()
                for fd in control.clients:
                    want[fd] = POLLIN
            for fd, ev in svc.poll_fds():
                want[fd] = want.get(fd, 0) | ev
            if svc.wants_tap_read():
                want[tap_fd] = POLLIN
            trace = self.trace
            if trace is not None:
                want[trace.fileno()] = trace.poll_events()
            t = svc.timeout()
            timeout_ms = IDLE_TIMEOUT_MS if t is None else min(IDLE_TIMEOUT_MS, int(t * 1000 + 0.999))
            if next_ping is not None:
                timeout_ms = max(0, min(timeout_ms, int((next_ping - time.monotonic()) * 1000 + 0.999)))
            # The C event loop takes the wake-ups that only move frames (USB completions, TAP reads into the C
            # TX pump) and comes back when anything else is ready or due: this turn's work, below, as usual.
            burst = trace is None and svc.can_burst()
            if burst:
                try:
                    events = svc.burst(want, timeout_ms, self.busy_poll_us)
                except InterruptedError:
                    continue
            else:
                if want != registered:
                    for fd in registered.keys() - want.keys():
                        poller.unregister(fd)
                    for fd, ev in want.items():
                        if registered.get(fd) != ev:
                            poller.register(fd, ev)
                    registered = want
                if busy_poll_s and time.monotonic() < spin_until:
                    timeout_ms = 0
                try:
                    events = poller.poll(timeout_ms)
                except InterruptedError:
                    continue
            usb = tap = False
            for fd, _ev in events:
                if fd == tap_fd:
                    tap = True
                    svc.on_tap_readable()
                elif fd == wake_fd:
                    try:
                        self._wake_r.recv(512)
                    except BlockingIOError:
                        pass
                elif control is not None and fd == control.fileno():
                    control.on_readable()
                elif control is not None and fd in control.clients:
                    control.on_client_readable(fd)
                elif fd in handlers:
                    handlers[fd]()
                elif trace is not None and fd == trace.fileno():
                    trace.on_event(_ev)
                else:
                    usb = True
            if not burst and (usb or not events or svc.transport.pending()):
                svc.on_usb()  # (burst handled libusb's events itself)
            if busy_poll_s and (usb or tap):
                spin_until = time.monotonic() + busy_poll_s
            svc.process()
            if placement is not None:
                placement.check()
            if self.trace is not None:
                self.trace.pump()  # what this turn recorded goes out now, as far as the socket takes it
                if self.trace.closed:
                    self.trace = None
            if svc.state is not State.RUNNING:
                self.stop_reason = "service stopped"
                if svc.failure:
                    self.failed = svc.failure
