"""Faults without a VM: the TAP set down and up or deleted from outside, and a hostile control socket."""

from __future__ import annotations

import json
import os
import socket
import time

from .conftest import Usbnetd, wire_up


def wait(pred, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_interface_set_down_and_up_from_outside(netns_pair, tmp_path):
    a, b = netns_pair
    u = Usbnetd(a, b, "sim:ecm", str(tmp_path), ifname="usbd0", peer="simd0")
    try:
        _, peer_ip = wire_up(u, 60)
        wait(lambda: "LOWER_UP" in a.run("ip", "link", "show", "usbd0").stdout, "carrier")
        a.run("ping", "-c", "1", "-W", "2", peer_ip, timeout=30)
        a.run("ip", "link", "set", "usbd0", "down")
        b.run("ping", "-c", "3", "-i", "0.2", "-W", "1", "198.18.60.1", check=False, timeout=30)  # frames arrive
        a.run("ip", "link", "set", "usbd0", "up")
        a.run("ip", "addr", "replace", "198.18.60.1/24", "dev", "usbd0")
        wait(lambda: a.run("ping", "-c", "1", "-W", "1", peer_ip, check=False).returncode == 0, "ping after up")
        assert u.proc.poll() is None, "the daemon must survive its interface going down"
    finally:
        assert u.stop() == 0, u.output()
    assert "Traceback" not in u.output()


def test_interface_deleted_from_outside_ends_the_instance_with_an_error(netns_pair, tmp_path):
    a, b = netns_pair
    u = Usbnetd(a, b, "sim:ncm", str(tmp_path), ifname="usbx0", peer="simx0")
    a.run("ip", "link", "del", "usbx0")
    u.proc.wait(20)
    out = u.output()
    assert u.proc.returncode == 1, out
    assert "usbnetd: error: interface usbx0 was deleted from outside" in out
    assert "teardown: every packet back in the pool" in out and "Traceback" not in out
    assert not any(f.endswith(".sock") for f in os.listdir(tmp_path))


def test_control_socket_survives_malformed_requests(netns_pair, tmp_path):
    a, b = netns_pair
    u = Usbnetd(a, b, "sim:ecm", str(tmp_path), ifname="usbk0", peer="simk0")
    try:
        (path,) = [os.path.join(tmp_path, f) for f in os.listdir(tmp_path) if f.endswith(".sock")]
        assert os.stat(path).st_mode & 0o777 == 0o600, "root only"
        for payload in (b"not json\n", b"[1,2]\n", b'{"cmd": 5}\n', b'{"cmd": "reboot"}\n', b"x" * 10000,
                        b"\n", b'{"cmd": "status"'):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(path)
            try:
                s.sendall(payload)
            except BrokenPipeError:
                pass
            s.shutdown(socket.SHUT_WR)
            reply = json.loads(s.recv(65536) or b'{"ok": false, "error": "closed"}')
            s.close()
            assert reply["ok"] is False and reply["error"], (payload[:20], reply)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path)
        s.close()  # a client that says nothing at all
        (st,) = json.loads(u.cli("status", "--json").stdout)
        assert st["ifname"] == "usbk0", "the daemon still answers"
    finally:
        assert u.stop() == 0, u.output()
