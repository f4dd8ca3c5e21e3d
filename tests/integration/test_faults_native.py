"""Faults without a VM: the TAP set down and up or deleted from outside, and a hostile control socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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
        (before,) = json.loads(u.cli("status", "--json").stdout)
        # Frames keep arriving from the device while the interface is down: the TAP refuses them (EIO), and
        # each is dropped and counted, never raised. (The pings cannot be answered: that is not the point.)
        b.run("ping", "-c", "3", "-i", "0.2", "-W", "1", "198.18.60.1", check=False, timeout=30)
        wait(lambda: json.loads(u.cli("status", "--json").stdout)[0]["rx_dropped"] > before["rx_dropped"],
             "frames from the device counted as dropped while the interface is down")
        assert u.proc.poll() is None
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


def test_sigkill_then_restart(netns_pair, tmp_path):
    """SIGKILL leaves a stale control socket and (persistent) the interface; a new instance takes both over."""
    a, b = netns_pair
    u = Usbnetd(a, b, "sim:ncm", str(tmp_path), ifname="usbk1", peer="simk1", extra=("--persistent",))
    host_ip, peer_ip = wire_up(u, 61)
    u.proc.kill()
    u.proc.wait(10)
    u.log.close()
    assert any(f.endswith(".sock") for f in os.listdir(tmp_path)), "SIGKILL leaves the socket behind"
    assert a.has_link("usbk1")
    b.run("ip", "link", "del", "simk1", check=False)
    u2 = Usbnetd(a, b, "sim:ncm", str(tmp_path), ifname="usbk1", peer="simk1", extra=("--persistent",))
    try:
        a.run("ip", "link", "set", "simk1", "netns", b.name)
        b.run("ip", "addr", "add", f"{peer_ip}/24", "dev", "simk1")
        b.run("ip", "link", "set", "simk1", "up")
        wait(lambda: a.run("ping", "-c", "1", "-W", "1", peer_ip, check=False).returncode == 0, "ping after restart")
        (st,) = json.loads(u2.cli("status", "--json").stdout)
        assert st["ifname"] == "usbk1" and st["link"] == "up"
    finally:
        u2.cli("detach", "usbk1", check=False)
        u2.stop()
    assert not a.has_link("usbk1")


def test_sigterm_during_start_up(netns_pair, tmp_path):
    """SIGTERM at any moment of start-up: a clean exit, no traceback, nothing left behind."""
    a, _ = netns_pair
    env = {"USBNETD_RUN_DIR": str(tmp_path)}
    for delay in (0.05, 0.2, 0.5):
        proc = a.popen("env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "usbnetd", "run",
                       "sim:ecm", "--ifname", "usbt0", "--sim-peer", "simt0", stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
        time.sleep(delay)
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
        assert "Traceback" not in out, out
        assert proc.returncode in (0, 1, -15), (proc.returncode, out)  # -15: killed before Python took over
        assert not a.has_link("usbt0") and not a.has_link("simt0"), out
        assert not any(f.endswith(".sock") for f in os.listdir(tmp_path)), out


def test_udp_flood_drops_are_counted_and_nothing_stalls(netns_pair, tmp_path):
    """A UDP flood through usbnetd: whatever cannot be carried is dropped and counted, and traffic flows
    normally right after the flood (no stuck queue, pool fully usable)."""
    a, b = netns_pair
    u = Usbnetd(a, b, "sim:ncm", str(tmp_path), ifname="usbfl0", peer="simfl0")
    try:
        host_ip, peer_ip = wire_up(u, 62)
        wait(lambda: a.run("ping", "-c", "1", "-W", "1", peer_ip, check=False).returncode == 0, "ping")
        flood = (
            "import socket,time\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "d=b'x'*1400\n"
            "t=time.monotonic()+3\n"
            "while time.monotonic()<t:\n"
            "    for _ in range(100):\n"
            f"        s.sendto(d,('{peer_ip}',9))\n"
        )
        a.run(sys.executable, "-c", flood, timeout=60)
        a.run("ping", "-c", "3", "-i", "0.2", "-W", "2", peer_ip, timeout=30)
        (d,) = json.loads(u.cli("stats", "--json").stdout)
        assert d["tx_packets"] > 1000
        # Idle again, every packet is back: only the bulk IN transfers kept in flight hold one each. A packet
        # leaked by the flood (a lost TX completion, a queue that did not drain) would show here.
        wait(lambda: (lambda s: s["pool"]["in_use"] == s["in_flight"]["rx"])(
            json.loads(u.cli("stats", "--json").stdout)[0]), "the pool back to RX-only use after the flood")
        print({k: d[k] for k in ("tx_packets", "tx_dropped", "rx_dropped", "tx_frames_per_transfer")},
              d["pool"], d["queues"])
    finally:
        assert u.stop() == 0, u.output()
    assert "every packet back in the pool" in u.output()
