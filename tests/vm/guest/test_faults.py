"""Faults on real devices: unplug in the middle of traffic, replug, repeat.

The gadget is unplugged by unbinding it from its UDC while iperf3 runs through usbnetd. usbnetd must notice
(the transfers complete with NO_DEVICE), reap everything, put every packet back in the pool and exit with
status 0 and no traceback; the interface disappears (or stays carrier-down when persistent). After replug a
new attach works again. USBNETD_UNPLUG_CYCLES sets the number of cycles (the long run in docs/reliability.md
uses 100).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import bench

pytestmark = pytest.mark.vm

CYCLES = int(os.environ.get("USBNETD_UNPLUG_CYCLES", "3"))
ATTACH_TIMEOUT = 180


def _cli(env, *args, check=True):
    r = subprocess.run([sys.executable, "-m", "usbnetd", *args], capture_output=True, text=True, env=env,
                       timeout=ATTACH_TIMEOUT + 30)
    if check and r.returncode != 0:
        raise AssertionError(f"usbnetd {' '.join(args)} failed: {r.stderr}")
    return r


def _assert_ping(peer, ifname, when):
    r = bench.ping(peer.peer_addr, count=2)
    assert r["received"] >= 1, f"no answer through {ifname} once its carrier was up ({when}):\n{r['output']}"


@pytest.mark.parametrize("persistent", [False, True], ids=["plain", "persistent"])
def test_unplug_mid_traffic_and_replug(gadgets, peers, tmp_path, persistent):
    bench.kernel_driver("tun")
    run_dir = tmp_path / "run"
    env = dict(os.environ, USBNETD_RUN_DIR=str(run_dir))
    g = gadgets("ncm")
    busid = g.bind()
    peer = peers(110)
    peer.take(g.gadget_netdev)
    ifname = "usbu0"
    extra = ("--persistent",) if persistent else ()
    for cycle in range(CYCLES):
        _cli(env, "attach", busid, "--ifname", ifname, "--timeout", str(ATTACH_TIMEOUT), *extra)
        if cycle == 0 or not persistent:
            peer.address_host_side(ifname)
        bench.wait_carrier(ifname, timeout=30)
        # Traffic passes as soon as the carrier is up, after a replug too (no retry loop: a device that stays
        # silent after a replug, like f_ncm with the NTB it kept from the unplug, is a failure to see).
        _assert_ping(peer, ifname, f"cycle {cycle}")
        server = peer.popen("iperf3", "-s", "-1", "-B", peer.peer_addr, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
        time.sleep(1)
        client = subprocess.Popen(["iperf3", "-c", peer.peer_addr, "-t", "30"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(3)  # traffic is flowing
        g.unbind()  # unplug
        bench.wait_for(lambda b=busid: not bench.run("pgrep", "-f", f"usbnetd run {b}", check=False).stdout, 60,
                       "usbnetd to stop after the unplug")
        client.kill()
        server.kill()
        client.wait()
        server.wait()
        log = "".join(p.read_text() for p in run_dir.glob("*.log"))
        print(f"--- cycle {cycle}\n{log}")
        assert "Traceback" not in log
        assert log.count("stopped: device disappeared") == cycle + 1, log
        assert log.count("teardown: every packet back in the pool") == cycle + 1, log
        if persistent:
            assert (bench.SYS_NET / ifname).exists() and not bench.carrier(ifname)
        else:
            assert not (bench.SYS_NET / ifname).exists()
        assert not list(run_dir.glob("*.sock")), "the control socket must go with the instance"
        # What a long run must not see grow: the guest's open file handles and available memory (each
        # cycle's instance is a new process, so growth could only be left behind in the kernel).
        handles = int(Path("/proc/sys/fs/file-nr").read_text().split()[0])
        avail = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable:"))
        mode = "persistent" if persistent else "plain"
        line = f"{mode} cycle {cycle}: guest file handles {handles}, MemAvailable {avail} kB"
        print(line)
        if os.environ.get("USBNETD_VM_RESULTS"):  # the long run's record, outside pytest's captured output
            with open(Path(os.environ["USBNETD_VM_RESULTS"]) / "unplug-cycles.txt", "a") as f:
                f.write(line + "\n")
        busid = g.bind()  # replug; the gadget-side netdev stays in the peer namespace
    if persistent:
        _cli(env, "attach", busid, "--ifname", ifname, "--timeout", str(ATTACH_TIMEOUT), *extra)
        bench.wait_carrier(ifname, timeout=30)
        _assert_ping(peer, ifname, "last re-attach")
        st = json.loads(_cli(env, "status", ifname, "--json").stdout)[0]
        assert st["link"] == "up"
        _cli(env, "detach", ifname)
        assert not (bench.SYS_NET / ifname).exists()
