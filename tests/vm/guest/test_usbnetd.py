"""usbnetd on real device implementations: the NCM and ECM gadgets and QEMU usb-net's ECM configuration.

The kernel host drivers stay unloaded (the `gadgets`/`usbnet` fixtures see to it), so the device is free
for usbnetd, except in the hand-back test, where cdc_ncm owns the device first and must get it back. Each
test attaches with the CLI, pings and runs iperf3 both ways to the device side in a peer namespace, checks
that `usbnetd status --json` counted the traffic, and detaches, leaving no interface behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from . import bench

pytestmark = pytest.mark.vm

ATTACH_TIMEOUT = 180  # Python under TCG starts slowly; this is an upper bound, not an expectation


@pytest.fixture
def usbnetd(tmp_path):
    """Run the usbnetd CLI with a private control-socket directory; detach whatever is left at the end."""
    env = dict(os.environ, USBNETD_RUN_DIR=str(tmp_path / "run"))
    # /dev/net/tun: a normal system autoloads tun; the guest's modprobe needs the bench's kernel root.
    bench.kernel_driver("tun")

    def cli(*args: str, check: bool = True, timeout: float = ATTACH_TIMEOUT + 30) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "usbnetd", *args], capture_output=True, text=True, env=env,
                           timeout=timeout)
        if check and r.returncode != 0:
            logs = "".join(p.read_text() for p in (tmp_path / "run").glob("*.log"))
            raise AssertionError(f"usbnetd {' '.join(args)} failed ({r.returncode}): {r.stderr}\n{logs}")
        return r

    yield cli
    for st in json.loads(cli("status", "--json", check=False).stdout or "[]"):
        cli("detach", st["ifname"], check=False)
    for log in sorted((tmp_path / "run").glob("*.log")):
        print(f"--- {log.name}\n{log.read_text()}")  # shown by pytest when the test failed


def link_exists(ifname: str) -> bool:
    return (bench.SYS_NET / ifname).exists()


def run_pid(busid: str) -> int:
    """The `usbnetd run` process attach started for `busid` (its command line names it)."""
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"run" in argv and busid.encode() in argv and any(b"usbnetd" in a for a in argv):
            return int(p)
    raise AssertionError(f"no usbnetd run process for {busid}")


def completion_softirqs() -> dict[int, int]:
    """Per CPU, the softirqs app/placement.py counts as the bus's (HI, TASKLET, HRTIMER), read independently."""
    with open("/proc/softirqs") as f:
        cpus = [int(c[3:]) for c in f.readline().split()]
        out = dict.fromkeys(cpus, 0)
        for line in f:
            name, *counts = line.split()
            if name in ("HI:", "TASKLET:", "HRTIMER:"):
                for cpu, n in zip(cpus, counts, strict=False):
                    out[cpu] += int(n)
    return out


def check_placement(row: dict, pid: int, busiest: int, expect_move: bool) -> None:
    """app/placement.py. On dummy_hcd, whose timer runs the bus's softirqs thousands of times a second, the loop
    thread must have moved, and then (a move the timer did not follow) off the CPU that ran most of them while
    traffic ran (the test's own count). When the timer followed the thread (NOHZ timer migration under light
    load), the back-off must have kept the moves few: holds of 1, 2, 4, 8 s in the test's 20 s. Whatever it did,
    the thread may not run on the CPU it says it avoids."""
    allowed = os.sched_getaffinity(pid)
    moves = row.get("cpu_placement_moves")
    print("cpu placement:", row.get("cpu_placement"), "moves", moves, "thread on", sorted(allowed),
          "bus softirqs busiest on CPU", busiest)
    if len(os.sched_getaffinity(0)) < 2:
        assert row["cpu_placement"] == "off (one CPU)"
        return
    if expect_move:
        assert row["cpu_placement"].startswith("avoiding CPU") and 1 <= moves <= 6, (row["cpu_placement"], moves)
        if moves == 1:
            assert row["cpu_placement"] == f"avoiding CPU {busiest}", row["cpu_placement"]
    if row["cpu_placement"].startswith("avoiding CPU"):
        avoided = int(row["cpu_placement"].split()[-1])
        assert avoided not in allowed and allowed, (avoided, allowed)


def drive(cli: Callable, busid: str, ifname: str, peer: bench.PeerNamespace, protocol: str,
          extra: tuple[str, ...] = (), dummy_hcd: bool = False) -> None:
    r = cli("attach", busid, "--ifname", ifname, "--timeout", str(ATTACH_TIMEOUT), *extra)
    assert r.stdout.strip() == ifname
    peer.address_host_side(ifname)
    bench.wait_carrier(ifname, timeout=30)
    (st0,) = json.loads(cli("status", ifname, "--json").stdout)
    print("before traffic:", st0)

    result = bench.ping(peer.peer_addr, count=5)
    print(result["output"])
    assert result["sent"] == 5 and result["received"] >= 4, result["output"]
    # Echoes in 1,024-byte frames (982 bytes of ICMP data + 8 + 20 + 14): a multiple of every bulk max packet
    # size (64, 512, 1024), so where a transfer is one frame (ECM, the subset) each ends with a zero-length
    # packet both ways. QEMU's usb-net hands that ZLP over as a transfer of its own (its host controllers pass
    # the whole transfer to the device model at once); it is a frame's end, not a runt frame, and the error
    # check below holds it to that.
    zlp = bench.ping(peer.peer_addr, count=4, size=982)
    print(zlp["output"])
    assert zlp["sent"] == 4 and zlp["received"] >= 3, zlp["output"]
    soft0 = completion_softirqs()
    up = bench.iperf3_tcp(peer, seconds=2)
    down = bench.iperf3_tcp(peer, seconds=2, reverse=True)
    soft1 = completion_softirqs()
    busiest = max(soft1, key=lambda cpu: soft1[cpu] - soft0.get(cpu, 0))
    print(f"{protocol} on {busid}: iperf3 TCP to device {up['bits_per_second'] / 1e6:.1f} Mbit/s, "
          f"from device {down['bits_per_second'] / 1e6:.1f} Mbit/s")
    assert up["bytes"] > 0 and down["bytes"] > 0

    (st,) = json.loads(cli("status", ifname, "--json").stdout)
    print(st)
    assert (st["busid"], st["ifname"], st["protocol"], st["link"]) == (busid, ifname, protocol, "up")
    assert st["tx_bytes"] >= up["bytes"] and st["rx_bytes"] >= down["bytes"]
    assert st["rx_packets"] > 0 and st["tx_packets"] > 0
    assert st["mtu"] == 1500 and st["mac"]
    # Not one error while traffic ran. (QEMU's usb-net hands over, as the first RNDIS transfer after a
    # configuration switch, a raw frame it queued while in its ECM configuration; usbnetd rightly counts
    # that as a framing error, so errors are compared with the snapshot taken before the traffic.)
    assert st["rx_errors"] == st0["rx_errors"] and st["tx_errors"] == st0["tx_errors"] == 0
    # A pool of large buffers (NCM's NTBs) is usbfs memory (usb/engine.transfer_memory): the kernel copied no
    # transfer, on dummy_hcd (no DMA: kmalloc'd memory remapped) and on QEMU's xHCI (DMA-coherent memory)
    # alike. One-frame buffers stay ours (core/datapath.USBFS_MEMORY_MIN_SLOT).
    (row,) = json.loads(cli("stats", ifname, "--json").stdout)
    large = row["pool"]["buffer_size"] >= 4096
    print("transfer memory:", row["transfer_memory"], row["pool"])
    assert row["transfer_memory"] == ("usbfs" if large else "copied"), (row["pool"], row["transfer_memory"])
    check_placement(row, run_pid(busid), busiest, dummy_hcd)

    r = cli("detach", ifname)
    assert f"detached {busid} ({ifname})" in r.stdout
    assert not link_exists(ifname), "the interface must disappear on detach"


@pytest.mark.parametrize("function", ["ncm", "ecm", "rndis", "eem", "subset"])
def test_usbnetd_drives_gadget(function, gadgets, peers, usbnetd):
    g = gadgets(function)
    busid = g.bind()
    peer = peers(40 + g.index)
    peer.take(g.gadget_netdev)
    drive(usbnetd, busid, f"usbn{function}0", peer, function, dummy_hcd=True)
    # The gadget side saw the traffic too: the frames really crossed the USB link.
    stats = peer.exec("cat", f"/sys/class/net/{g.gadget_netdev}/statistics/rx_packets").stdout
    assert int(stats) > 0


@pytest.mark.parametrize("protocol", ["ecm", "rndis"])
def test_usbnetd_drives_usbnet(protocol, usbnet, peers, usbnetd):
    """QEMU's usb-net, forced into each of its configurations by --protocol (usbnetd switches)."""
    busid = usbnet.wait_enumerated()
    peer = peers(60)
    peer.take(bench.UsbNet.peer_netdev())
    drive(usbnetd, busid, f"usbnq{protocol}0", peer, protocol, ("--protocol", protocol))
    # Detach handed the device back in the configuration it had (the kernel's default, ECM).
    assert usbnet.configuration == bench.UsbNet.DEFAULT_CONFIG


def test_kernel_driver_is_detached_and_handed_back(gadgets, peers, usbnetd):
    """cdc_ncm owns the device; usbnetd takes it over, and gives it back on detach."""
    g = gadgets("ncm")
    bench.kernel_driver("cdc_ncm")
    busid = g.bind()
    kernel_if = g.host_netdev(driver="cdc_ncm")
    peer = peers(70)
    peer.take(g.gadget_netdev)
    r = usbnetd("attach", busid, "--ifname", "usbnback0", "--timeout", str(ATTACH_TIMEOUT))
    assert r.stdout.strip() == "usbnback0"
    assert not link_exists(kernel_if), "usbnetd must have detached cdc_ncm"
    listing = json.loads(usbnetd("list", "--json").stdout)
    (entry,) = [d for d in listing if d["busid"] == busid]
    assert entry["protocol"] == "ncm" and entry["state"] == "attached by usbnetd (usbnback0)"
    usbnetd("detach", "usbnback0")
    assert not link_exists("usbnback0")
    back = g.host_netdev(driver="cdc_ncm", timeout=30)
    print(f"cdc_ncm got {busid} back as {back}")


def test_list_shows_free_gadget_and_bad_device_is_one_line(gadgets, usbnetd):
    g = gadgets("ecm")
    busid = g.bind()
    listing = json.loads(usbnetd("list", "--json").stdout)
    (entry,) = [d for d in listing if d["busid"] == busid]
    assert (entry["protocol"], entry["state"], entry["configuration"]) == ("ecm", "free", 1)
    r = usbnetd("attach", "9-9", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "usbnetd: error: no USB device 9-9"


@pytest.mark.parametrize("function", ["ncm", "ecm", "rndis"])
def test_carrier_follows_the_device_link(function, gadgets, peers, usbnetd):
    """The gadget reports its link (NETWORK_CONNECTION, or RNDIS MEDIA_(DIS)CONNECT indications) when its
    netdev goes down and up; the usbnetd interface's carrier must follow, both ways."""
    g = gadgets(function)
    busid = g.bind()
    peer = peers(80 + g.index)
    peer.take(g.gadget_netdev)
    ifname = f"usbl{function}0"
    usbnetd("attach", busid, "--ifname", ifname, "--timeout", str(ATTACH_TIMEOUT))
    bench.netdev_up(ifname)
    bench.wait_carrier(ifname, timeout=30)
    peer.exec("ip", "link", "set", g.gadget_netdev, "down")
    bench.wait_for(lambda: not bench.carrier(ifname), 30, f"{ifname} to lose carrier")
    peer.exec("ip", "link", "set", g.gadget_netdev, "up")
    bench.wait_carrier(ifname, timeout=30)
    (st,) = json.loads(usbnetd("status", ifname, "--json").stdout)
    assert st["link"] == "up" and st["notifications"] > 0
    usbnetd("detach", ifname)


def test_list_shows_protocol_and_configuration_for_every_bench_device(gadgets, usbnet, usbnetd):
    expected = {}
    for function in ("ncm", "ecm", "rndis", "eem", "subset"):
        g = gadgets(function)
        expected[g.bind()] = (function, 1)
    expected[usbnet.wait_enumerated()] = ("ecm", bench.UsbNet.ECM_CONFIG)  # ECM beats RNDIS
    listing = {d["busid"]: d for d in json.loads(usbnetd("list", "--json").stdout)}
    print(usbnetd("list").stdout)
    for busid, (protocol, config) in expected.items():
        assert (listing[busid]["protocol"], listing[busid]["configuration"]) == (protocol, config), listing[busid]
        assert listing[busid]["state"] == "free"


def test_mtu_changes_follow_the_device_and_a_restart_keeps_addresses(gadgets, peers, usbnetd):
    """On the NCM gadget: an MTU the device can carry is taken, one it cannot is refused and put back; a
    persistent interface keeps its address across a daemon restart (SIGTERM), and detach removes it."""
    g = gadgets("ncm")
    busid = g.bind()
    peer = peers(90)
    peer.take(g.gadget_netdev)
    ifname = "usbm0"
    usbnetd("attach", busid, "--ifname", ifname, "--persistent", "--timeout", str(ATTACH_TIMEOUT))
    peer.address_host_side(ifname)
    bench.wait_carrier(ifname, timeout=30)

    bench.run("ip", "link", "set", ifname, "mtu", "1400")
    bench.run("ip", "link", "set", ifname, "mtu", "9000")  # f_ncm says wMaxSegmentSize 1514
    bench.wait_for(lambda: (bench.SYS_NET / ifname / "mtu").read_text().strip() == "1400", 20,
                   "usbnetd to put the MTU back")
    assert bench.ping(peer.peer_addr, count=3)["received"] >= 2
    big = bench.run("ping", "-c", "1", "-W", "2", "-s", "1400", "-M", "do", peer.peer_addr, check=False)
    assert big.returncode != 0, "a 1428-byte packet must not fit an MTU of 1400"

    pid = bench.run("pgrep", "-f", f"usbnetd run {busid}").stdout.split()[0]
    bench.run("kill", "-TERM", pid)
    bench.wait_for(lambda: not bench.run("pgrep", "-f", f"usbnetd run {busid}", check=False).stdout, 30,
                   "the daemon to stop")
    assert (bench.SYS_NET / ifname).exists(), "a persistent interface outlives the daemon"
    assert not bench.carrier(ifname)
    assert f"{peer.host_addr}/24" in bench.run("ip", "addr", "show", ifname).stdout

    usbnetd("attach", busid, "--ifname", ifname, "--persistent", "--timeout", str(ATTACH_TIMEOUT))
    bench.wait_carrier(ifname, timeout=30)
    assert f"{peer.host_addr}/24" in bench.run("ip", "addr", "show", ifname).stdout  # nobody re-added it
    assert bench.ping(peer.peer_addr, count=3)["received"] >= 2
    usbnetd("detach", ifname)
    assert not link_exists(ifname)


def test_busy_polling_spins_in_the_c_event_loop_on_a_real_adapter(gadgets, peers, usbnetd):
    """--busy-poll on the ECM gadget: libusb's completions and the TAP go through the C event loop
    (`event_loop` native), which after the echoes polls without sleeping, so the instance takes CPU time while
    no frame moves; the echoes still come back and stats show the setting. (tests/core/test_burst.py checks the
    same loop on the fake transport, tests/integration the Python loop on the simulated adapter.)"""
    g = gadgets("ecm")
    busid = g.bind()
    peer = peers(120)
    peer.take(g.gadget_netdev)
    ifname = "usnbusy0"
    r = usbnetd("attach", busid, "--ifname", ifname, "--timeout", str(ATTACH_TIMEOUT), "--busy-poll", "1000000")
    assert r.stdout.strip() == ifname
    peer.address_host_side(ifname)
    bench.wait_carrier(ifname, timeout=30)
    result = bench.ping(peer.peer_addr, count=5)
    assert result["sent"] == 5 and result["received"] >= 4, result["output"]
    pid = run_pid(busid)
    before = bench.cpu_seconds(pid)
    time.sleep(0.5)
    cpu = bench.cpu_seconds(pid) - before
    (row,) = json.loads(usbnetd("stats", ifname, "--json").stdout)
    assert row["event_loop"] == "native" and row["busy_poll_us"] == 1000000, row
    assert cpu >= 0.2, f"{cpu:.2f} CPU seconds in the 0.5 s after the echoes: the loop slept"
    usbnetd("detach", ifname)
