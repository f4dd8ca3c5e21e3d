"""usbnetd.app.notify: the sd_notify wire format, socket addresses, the watchdog interval, no-op without systemd."""

from __future__ import annotations

import os
import socket
import threading
import uuid

import pytest

from usbnetd.app.notify import Notifier, socket_address


def receiver(tmp_path, abstract: bool) -> tuple[socket.socket, str]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"usbnetd-test-{uuid.uuid4().hex}"
        s.bind(b"\0" + name.encode())
        env_value = "@" + name
    else:
        env_value = str(tmp_path / "notify")
        s.bind(env_value)
    s.settimeout(2)
    return s, env_value


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_messages_arrive_as_sd_notify_datagrams(tmp_path, abstract):
    sock, value = receiver(tmp_path, abstract)
    n = Notifier({"NOTIFY_SOCKET": value})
    assert n.enabled
    assert n.ready("ncm on 3-1: usb0, link down")
    assert sock.recv(4096) == b"READY=1\nSTATUS=ncm on 3-1: usb0, link down"
    assert n.status("ncm on 3-1: usb0, link up")
    assert sock.recv(4096) == b"STATUS=ncm on 3-1: usb0, link up"
    assert not n.status("ncm on 3-1: usb0, link up"), "an unchanged STATUS is not resent"
    assert n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert n.stopping("stopping: SIGTERM")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping: SIGTERM"
    n.close()


def test_a_newline_in_a_value_cannot_forge_another_field(tmp_path):
    sock, value = receiver(tmp_path, False)
    Notifier({"NOTIFY_SOCKET": value}).status("evil\nREADY=1")
    assert sock.recv(4096) == b"STATUS=evil READY=1"


def test_without_notify_socket_everything_is_a_no_op():
    n = Notifier({})
    assert not n.enabled
    assert not n.ready("x") and not n.status("y") and not n.watchdog() and not n.stopping()
    assert n.watchdog_interval() is None


@pytest.mark.parametrize("value", ["relative/path", "vsock:2:1234"])
def test_unusable_addresses_are_ignored(value):
    assert socket_address(value) is None
    assert not Notifier({"NOTIFY_SOCKET": value}).enabled


def test_a_receiver_that_stops_reading_never_blocks_the_sender(tmp_path):
    """Found in the VM bench: with a blocking socket, WATCHDOG=1 to a full queue froze the event loop."""
    sock, value = receiver(tmp_path, False)
    n = Notifier({"NOTIFY_SOCKET": value})
    results: list[bool] = []
    # The queue holds net.unix.max_dgram_qlen datagrams (10 by default); a blocking send would hang here.
    sender = threading.Thread(target=lambda: results.extend(n.watchdog() for _ in range(200)), daemon=True)
    sender.start()
    sender.join(5)
    assert not sender.is_alive(), f"the sender blocked after {len(results)} messages"
    assert results[0] and not results[-1], "the first fits, the ones past the queue's limit are dropped"
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_a_vanished_socket_is_not_an_error(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert n.enabled
    assert not n.ready() and not n.watchdog()  # logged once, never raised


@pytest.mark.parametrize("env,expected", [
    ({"WATCHDOG_USEC": "20000000"}, 10.0),  # half of WatchdogSec=20
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),  # someone else's watchdog
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval(env, expected):
    assert Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", **env}).watchdog_interval() == expected
    assert Notifier(env).watchdog_interval() is None  # no socket, no watchdog
