"""The ASIX AX88179 emulator (``ax88179_device.py``) against the kernel's ax88179_178a, then against usbnetd.

The kernel driver is the control experiment: if it does not bind the emulated chip cleanly, read its MAC,
get carrier from the interrupt endpoint and carry ping and iperf3 both ways (its TSO and checksum offloads
included, which the emulator carries out), the emulator is wrong and nothing usbnetd does on it means
anything. The far end is the emulator's TAP in a peer namespace (198.18.172.0/24).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import bench
from .ax88179_device import Ax88179Gadget

pytestmark = pytest.mark.vm

SUBNET = 172  # 198.18.172.0/24, used by no other guest test
KERNEL_DRIVER = "ax88179_178a"


@pytest.fixture
def ax(udcs, host_drivers_unloaded, peers, tmp_path) -> Iterator[Callable[..., Ax88179Gadget]]:
    """Factory ``ax(**options) -> Ax88179Gadget`` (created, not bound); destroyed before the namespaces."""
    bench.kernel_driver("tun")
    made: list[Ax88179Gadget] = []

    def make(**kw) -> Ax88179Gadget:
        index = len(made) + 1
        g = Ax88179Gadget(index, f"axdev{index}", log_dir=tmp_path, **kw)
        made.append(g)
        return g.create()

    yield make
    for g in reversed(made):
        try:
            print(f"--- emulator state: {g.stats()}")
        except bench.BenchError as exc:
            print(f"--- emulator gave no state: {exc}")
        print(f"--- emulator log:\n{g.stderr()}")
        g.destroy()


def dmesg_lines(since: int) -> list[str]:
    return bench.run("dmesg").stdout.splitlines()[since:]


def test_kernel_driver_on_the_emulator(ax, peers):
    """ax88179_178a binds without a warning, takes the chip's MAC, follows the cable, carries traffic."""
    mark = len(bench.run("dmesg").stdout.splitlines())
    bench.kernel_driver(KERNEL_DRIVER)
    g = ax()
    busid = g.bind()
    peer = peers(SUBNET)
    peer.take(g.tap)
    host_if = bench.wait_for(lambda: [n for n, d in bench.netdevs_of_usb_device(busid) if d == KERNEL_DRIVER],
                             30, f"{KERNEL_DRIVER} to create a netdev for {busid}")[0]
    mac = (bench.SYS_NET / host_if / "address").read_text().strip()
    print(f"{KERNEL_DRIVER} on {busid}: {host_if}, MAC {mac}")
    assert mac == g.host_mac, "the driver must take the MAC from the chip's NODE_ID register"
    peer.address_host_side(host_if)
    bench.wait_carrier(host_if, timeout=30)

    result = bench.ping(peer.peer_addr, count=5)
    print(result["output"])
    assert result["sent"] == 5 and result["received"] >= 4, result["output"]
    up = bench.iperf3_tcp(peer, seconds=3)
    down = bench.iperf3_tcp(peer, seconds=3, reverse=True)
    print(f"{KERNEL_DRIVER}: iperf3 TCP to the wire {up['bits_per_second'] / 1e6:.1f} Mbit/s, "
          f"from the wire {down['bits_per_second'] / 1e6:.1f} Mbit/s")
    assert up["bytes"] > 0 and down["bytes"] > 0
    print("ethtool:", bench.run("ethtool", host_if, check=False).stdout)
    print("offloads:", bench.run("ethtool", "-k", host_if, check=False).stdout)

    g.command("cable_out")
    bench.wait_for(lambda: not bench.carrier(host_if), 30, f"{host_if} to lose carrier")
    g.command("cable_in")
    bench.wait_carrier(host_if, timeout=30)
    assert bench.ping(peer.peer_addr, count=3)["received"] >= 2

    dev = g.stats()
    print("emulator:", dev["counts"], dev["registers"])
    assert dev["counts"].get("tso_frames", 0) > 0, "TSO was on: the kernel should have sent super-frames"
    assert not dev["counts"].get("out_malformed") and not dev["counts"].get("setup_stalled"), dev["counts"]

    lines = dmesg_lines(mark)
    ours = [line for line in lines if KERNEL_DRIVER in line or host_if in line or "ax88179" in line]
    print("\n".join(ours))
    bad = [line for line in ours if re.search(r"[Ff]ail|[Ee]rror|invalid|random", line)]
    assert not bad, bad
    assert any("Link status is: 1" in line for line in ours), ours
    assert any("Link status is: 0" in line for line in ours), ours
    assert Path(bench.SYS_NET / host_if).exists()
