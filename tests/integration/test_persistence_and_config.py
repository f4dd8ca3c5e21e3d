"""A persistent interface survives a daemon restart with its addresses; detach removes it. A bad
configuration stops `usbnetd run` with one line naming file and key, before anything is created."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from .conftest import Usbnetd, wire_up


def carrier(ns, ifname: str) -> bool:
    return "LOWER_UP" in ns.run("ip", "link", "show", ifname).stdout


def wait(pred, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_restart_keeps_addresses_and_detach_removes(netns_pair, tmp_path):
    a, b = netns_pair
    u = Usbnetd(a, b, "sim:ncm", str(tmp_path), ifname="usbp0", peer="simp0", extra=("--persistent",))
    host_ip, peer_ip = wire_up(u, 30)
    a.run("ip", "route", "add", "198.19.30.0/24", "via", peer_ip)
    wait(lambda: carrier(a, "usbp0"), "carrier")
    a.run("ping", "-c", "2", "-i", "0.2", "-W", "2", peer_ip, timeout=30)
    assert u.stop() == 0  # SIGTERM: a restart, not a detach

    shown = a.run("ip", "addr", "show", "usbp0").stdout
    assert f"{host_ip}/24" in shown, "the interface and its address must survive the daemon"
    assert not carrier(a, "usbp0"), "carrier is down while the daemon is away"
    assert "198.19.30.0/24" in a.run("ip", "route").stdout

    # The simulated wire went away with the old process; the new one makes a new peer.
    b.run("ip", "link", "del", "simp0", check=False)
    u2 = Usbnetd(a, b, "sim:ncm", str(tmp_path), ifname="usbp0", peer="simp0", extra=("--persistent",))
    try:
        u2.ns.run("ip", "link", "set", "simp0", "netns", b.name)
        b.run("ip", "addr", "add", f"{peer_ip}/24", "dev", "simp0")
        b.run("ip", "link", "set", "simp0", "up")
        wait(lambda: carrier(a, "usbp0"), "carrier after restart")
        assert f"{host_ip}/24" in a.run("ip", "addr", "show", "usbp0").stdout  # nobody re-added it
        a.run("ping", "-c", "2", "-i", "0.2", "-W", "2", peer_ip, timeout=30)
        assert "usbp0 taken over from an earlier run" in u2.output()
        r = u2.cli("detach", "usbp0")
        assert "detached" in r.stdout
        u2.proc.wait(15)
    finally:
        u2.stop()
    assert not a.has_link("usbp0"), "detach removes even a persistent interface"


def test_bad_configuration_is_one_line_and_touches_nothing(netns_pair, tmp_path):
    a, _ = netns_pair
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "usbnetd.toml").write_text('[interface]\nmtu = 9\n')
    env = {"USBNETD_CONFIG_DIR": str(conf), "USBNETD_RUN_DIR": str(tmp_path / "run")}
    r = a.run("env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "usbnetd", "run", "sim:ncm",
              "--ifname", "usbc0", "--sim-peer", "simc0", check=False)
    assert r.returncode == 1
    assert r.stderr.strip() == f"usbnetd: error: {conf}/usbnetd.toml: interface.mtu: 9 is not in 68..16000"
    assert not a.has_link("usbc0") and not a.has_link("simc0")


def test_configuration_sets_interface_name_and_mtu(netns_pair, tmp_path):
    a, b = netns_pair
    conf = tmp_path / "etc"
    (conf / "conf.d").mkdir(parents=True)
    (conf / "conf.d" / "10-test.toml").write_text('[interface]\nname = "ue{mac}"\nmtu = 1400\n')
    env = dict(USBNETD_CONFIG_DIR=str(conf), USBNETD_RUN_DIR=str(tmp_path / "run"))
    proc = a.popen("env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "usbnetd", "run",
                   "sim:ecm", "--sim-peer", "simn0", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait(lambda: ": ue" in a.run("ip", "-o", "link").stdout, "the templated interface")
        links = json.loads(a.run("ip", "-j", "link").stdout)
        (link,) = [x for x in links if x["ifname"].startswith("ue")]
        assert link["ifname"] == "ue" + link["address"].replace(":", "") and link["mtu"] == 1400
    finally:
        proc.terminate()
        proc.wait(15)
