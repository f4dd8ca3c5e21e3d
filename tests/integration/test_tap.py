"""The TAP and its rtnetlink socket against the real kernel, in a fresh namespace: MAC, MTU and up reach
the interface as `ip link` shows them, and what the kernel refuses becomes one TapError line with nothing
left behind."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import Netns

SCRIPT = r"""
import json, sys
from usbnetd.netdev.tap import Tap, TapError

out = {}
def refused(what, f):
    try:
        f()
    except TapError as exc:
        out[what] = str(exc)
    else:
        out[what] = None

t = Tap("usbt0", bytes.fromhex("020018000001"), 1400)
out["index"] = t.index
json.dump({"step": "created"}, sys.stdout); print(flush=True); sys.stdin.readline()
t.up()
json.dump({"step": "up"}, sys.stdout); print(flush=True); sys.stdin.readline()
t.set_mtu(1280)
refused("mtu", lambda: t.set_mtu(70000))  # a TAP takes at most 65535
out["mtu_after"] = t.mtu
refused("again", lambda: Tap("usbt0", bytes.fromhex("020018000002"), 1500))
refused("multicast_mac", lambda: Tap("usbt1", bytes.fromhex("010018000003"), 1500))
out["exists"] = t.exists()
json.dump(out, sys.stdout); print(flush=True); sys.stdin.readline()
t.close()
json.dump({"step": "closed"}, sys.stdout); print(flush=True)
"""


def link(ns: Netns, name: str) -> dict:
    return json.loads(ns.run("ip", "-j", "link", "show", name).stdout)[0]


def test_mac_mtu_up_and_refusals(netns_pair):
    ns, _ = netns_pair
    p = ns.popen(sys.executable, "-c", SCRIPT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True)
    try:
        def step() -> dict:
            line = p.stdout.readline()
            assert line, f"the TAP script ended early:\n{p.stderr.read()}"
            return json.loads(line)

        assert step() == {"step": "created"}
        st = link(ns, "usbt0")
        assert st["address"] == "02:00:18:00:00:01" and st["mtu"] == 1400
        assert "UP" not in st["flags"]
        p.stdin.write("\n")
        p.stdin.flush()

        assert step() == {"step": "up"}
        flags = link(ns, "usbt0")["flags"]
        assert "UP" in flags and "NO-CARRIER" in flags  # carrier stays off until the device's link is up
        p.stdin.write("\n")
        p.stdin.flush()

        out = step()
        assert out["index"] == link(ns, "usbt0")["ifindex"]
        assert out["mtu"] == "cannot set MTU 70000 on usbt0: Invalid argument"
        assert out["mtu_after"] == 1280 and link(ns, "usbt0")["mtu"] == 1280
        assert out["again"] == "interface usbt0 already exists"
        assert out["multicast_mac"] == ("cannot set MAC 01:00:18:00:00:03 and MTU 1500 on usbt1: "
                                        "Cannot assign requested address")
        assert not ns.has_link("usbt1"), "a refused TAP must not be left behind"
        assert out["exists"] is True
        p.stdin.write("\n")
        p.stdin.flush()

        assert step() == {"step": "closed"}
        assert p.wait(timeout=10) == 0, p.stderr.read()
        assert not ns.has_link("usbt0"), "a closed non-persistent TAP goes with its fd"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


OFFLOAD_SCRIPT = r"""
import json, subprocess, sys
from usbnetd.netdev.gso import OFFLOADS
from usbnetd.netdev.tap import Tap, TapError

def features():
    out = subprocess.run(["ethtool", "-k", "usbt2"], capture_output=True, text=True, check=True).stdout
    return {k: v.split()[0] for k, v in (line.strip().split(": ", 1) for line in out.splitlines()[1:] if ": " in line)}

res = {}
t = Tap("usbt2", bytes.fromhex("020018000004"), 1500, persistent=True, vnet_hdr=10)
t.set_offload(OFFLOADS)
res["set"] = features()
t.set_gso_max_size(16376)  # what an RTL8153 takes in one transfer, read back by set_gso_max_size itself
res["gso_max_size"] = t.state()["gso_max_size"]
t.close(remove=False)  # a persistent TAP stays, with the offloads of the run that set them
t = Tap("usbt2", bytes.fromhex("020018000004"), 1500, persistent=True, vnet_hdr=0)
res["reopened"] = features()
try:
    t.set_offload(OFFLOADS)
    res["without_vnet"] = None
except TapError as exc:
    res["without_vnet"] = str(exc)
t.close()
json.dump(res, sys.stdout)
"""


def test_offloads_set_and_cleared_when_a_persistent_tap_is_opened_again(netns_pair):
    """TUNSETOFFLOAD(CSUM | TSO4 | TSO6) shows in ethtool, and gso_max_size is set through rtnetlink; a
    later run that opens the same persistent TAP starts with none (it kept the earlier run's: a reader without
    the vnet header got super-frames it could not tell), and offloads without the vnet header are refused."""
    ns, _ = netns_pair
    if subprocess.run(["which", "ethtool"], capture_output=True).returncode:
        import pytest

        pytest.fail("ethtool is missing; scripts/test.sh installs it")
    r = ns.run(sys.executable, "-c", OFFLOAD_SCRIPT, timeout=30)
    res = json.loads(r.stdout)
    for k in ("tx-checksumming", "tcp-segmentation-offload"):
        assert res["set"][k] == "on" and res["reopened"][k] == "off", (k, res)
    assert "need the vnet header" in res["without_vnet"]
    assert res["gso_max_size"] == 16376, res
