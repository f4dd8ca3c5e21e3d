"""The C event loop (usbnetd.native _fastpath.burst, EthernetService.burst) against the scripted transport.

burst() runs the data path's wake-ups in C: it polls libusb's fds (here the fake's eventfd, readable while
completions wait), calls libusb_handle_events (here a C-callable stand-in that runs the fake's handle_events),
resubmits what the C RX path decoded, ticks the C TX pump and reads the TAP into it; and returns to Python
when a Python fd is ready, a Python callback ran, a resubmission failed, the pump needs Python, or the timeout
passed. Only the native-usb variant has the C completions and pumps the loop drives; the others skip.
"""

from __future__ import annotations

import socket
import time

import pytest
from fake import ethernet, make_service, turn

from usbnetd.core import datapath as dp
from usbnetd.protocols.ncm_codec import NtbDecoder, TxLayout, build_ntb

HOST = bytes.fromhex("02aaaaaaaa01")
PEER = bytes.fromhex("02bbbbbbbb02")


def frame(n: int, tag: int = 0) -> bytes:
    return ethernet(HOST, PEER, bytes([tag & 0xFF]) * (n - 14))


def ntb_frames(data: bytes) -> list[bytes]:
    from usbnetd.core.stats import Stats

    out: list[bytes] = []
    view = memoryview(bytearray(data))
    NtbDecoder(Stats(), max_datagram=1514).decode(view, len(data), lambda o, n: out.append(bytes(view[o : o + n])))
    return out


@pytest.fixture
def native_usb(datapath):
    if datapath != "native-usb":
        pytest.skip("only the native-usb path has the C completions and pumps the C event loop drives")


def burst(svc, timeout_ms: int = 0, python_fds=()) -> list[tuple[int, int]]:
    """One turn of app/daemon.py's loop with the C event loop: burst, then process()."""
    assert svc.can_burst()
    want = {fd: ev for fd, ev in svc.transport.poll_fds()}
    want.update({fd: 1 for fd in python_fds})  # POLLIN
    if svc.wants_tap_read():
        want[svc.tap.fd] = 1
    ready = svc.burst(want, timeout_ms)
    svc.process()
    return ready


@pytest.mark.parametrize("kind", ["ecm", "ncm"])
def test_received_frames_reach_the_tap_inside_the_c_loop(native_usb, kind):
    svc, t, tap = make_service(kind)
    turn(svc)  # start-up's control transfers (the packet filter) complete in Python first
    frames = [frame(100 + i, i) for i in range(3)]
    for f in frames:
        data = f if kind == "ecm" else build_ntb(TxLayout(ntb32=False, max_size=2048), [f])
        t.complete_rx(data)
    calls = t.handle_events_calls
    ready = burst(svc)
    assert ready == []
    assert t.handle_events_calls > calls, "the C loop called libusb's event handling"
    assert t.py_events.value == 0, "no Python callback ran: the C completions took every transfer"
    assert [f for _, f in tap.host_receive()] == frames
    assert svc.stats.rx_packets == 3
    assert len(t.rx) == svc.datapath.n_rx, "every decoded transfer was resubmitted from C"
    svc.stop()
    assert svc.datapath.pool.in_use == 0


def test_ecm_frames_from_the_tap_go_out_through_the_c_pump(native_usb):
    svc, t, tap = make_service("ecm")
    frames = [frame(200 + i, i) for i in range(5)]
    for f in frames:
        tap.host_send(f)
    burst(svc)
    assert t.sent == frames
    while t.tx:
        t.complete_tx()
    burst(svc)
    assert svc.stats.tx_packets == 5 and svc.datapath.tx_flush[dp.FLUSH_FULL] == 5
    svc.stop()


def test_ncm_partial_ntb_goes_at_the_flush_timer_inside_the_c_loop(native_usb):
    svc, t, tap = make_service("ncm")
    tap.host_send(frame(100, 1))
    burst(svc)
    assert len(t.sent) == 1, "the pipe was idle: sent at once"
    tap.host_send(frame(100, 2))
    started = time.monotonic()
    burst(svc, timeout_ms=0)  # read into the open NTB; a transfer is in flight, so it waits
    assert len(t.sent) == 1 and svc.datapath.tx_pump.open_count == 1
    # The loop sleeps in poll() until the pump's flush deadline (1 ms), sends, and comes back at the timeout:
    # sent by C, before Python's process() (which has a flush timer of its own) runs.
    svc.burst({}, 50)
    assert len(t.sent) == 2 and ntb_frames(t.sent[1]) == [frame(100, 2)]
    svc.process()
    assert time.monotonic() - started >= dp.TX_FLUSH_DELAY
    assert svc.datapath.tx_flush[dp.FLUSH_TIMER] == 1
    # A completion sends a waiting partial NTB at once.
    tap.host_send(frame(100, 3))
    burst(svc)
    assert len(t.sent) == 2
    t.complete_tx()
    burst(svc)
    assert len(t.sent) == 3 and svc.datapath.tx_flush[dp.FLUSH_COMPLETION] == 1
    svc.stop()


def test_a_ready_python_fd_ends_the_burst_at_once(native_usb):
    svc, t, tap = make_service("ecm")
    a, b = socket.socketpair()
    try:
        b.send(b"x")
        started = time.monotonic()
        ready = burst(svc, timeout_ms=5000, python_fds=[a.fileno()])
        assert [fd for fd, _ in ready] == [a.fileno()]
        assert time.monotonic() - started < 4, "came back for the fd, not at the timeout"
    finally:
        a.close()
        b.close()
        svc.stop()


def test_a_python_callback_ends_the_burst(native_usb):
    """A control transfer completes (a Python callback, as RNDIS keepalives and filters do): the loop returns
    after that handle_events instead of waiting for its timeout."""
    svc, t, tap = make_service("ecm")
    answers = []
    t.submit_control(0x21, 0x43, 0x0E, 0, b"", lambda status, data: answers.append(status))
    started = time.monotonic()
    burst(svc, timeout_ms=5000)
    assert answers == [0] and t.py_events.value == 1
    assert time.monotonic() - started < 4


def test_a_failed_resubmission_goes_to_python_and_is_counted(native_usb):
    svc, t, tap = make_service("ecm")
    t.complete_rx(frame(100, 1))
    t.submit_error = -1  # LIBUSB_ERROR_IO for the resubmission
    started = time.monotonic()
    burst(svc, timeout_ms=5000)
    assert time.monotonic() - started < 4, "came back for the failure"
    assert [f for _, f in tap.host_receive()] == [frame(100, 1)]
    assert svc.datapath.port.native.usb_resubmit_failed == 1
    assert svc.stats.rx_usb_errors >= 1, "Python counted the failed resubmission as a failed transfer"
    t.submit_error = 0
    turn(svc)
    svc.stop()
    assert svc.datapath.pool.in_use == 0


def test_burst_is_not_used_while_tracing_or_stopped(native_usb):
    from usbnetd.core.trace import Tracer

    svc, t, tap = make_service("ecm")
    assert svc.can_burst()
    svc.datapath.set_tracer(Tracer())
    assert not svc.can_burst(), "a trace wants Python to see every transfer"
    svc.datapath.set_tracer(None)
    assert svc.can_burst()
    svc.stop()
    assert not svc.can_burst()


@pytest.mark.parametrize("busy_poll_us", [0, 1_000_000])
def test_busy_polling_spins_instead_of_sleeping_and_keeps_the_timeout(native_usb, busy_poll_us):
    """busy_poll_us: the loop polls with a zero timeout for that long after its start instead of sleeping, so
    its thread's CPU time is its wall time; without it, it sleeps in poll(). Either way it comes back at the
    timeout (here 100 ms), not at the end of a longer busy-poll window."""
    svc, t, tap = make_service("ecm")
    turn(svc)
    wall, cpu = time.monotonic(), time.thread_time()
    svc.burst({}, 100, busy_poll_us)
    wall, cpu = time.monotonic() - wall, time.thread_time() - cpu
    assert 0.09 <= wall < 0.9, wall
    if busy_poll_us:
        assert cpu > 0.02, f"{cpu:.4f} s of CPU in {wall:.3f} s: the loop slept"
    else:
        assert cpu < 0.02, f"{cpu:.4f} s of CPU in {wall:.3f} s: the loop did not sleep"
    svc.stop()


def test_a_negative_busy_poll_is_refused(native_usb):
    svc, t, tap = make_service("ecm")
    with pytest.raises(ValueError, match="busy_poll_us"):
        svc.burst({}, 0, -1)
    svc.stop()
