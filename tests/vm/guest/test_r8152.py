"""The Realtek RTL8153 emulator (``r8152_device.py``) against the kernel's r8152, then against usbnetd.

The kernel driver is the control experiment: if it does not bind the emulated chip cleanly, read its MAC,
get carrier from the interrupt endpoint and carry ping and iperf3 both ways (its TSO and checksum offloads
included, which the emulator carries out), the emulator is wrong and nothing usbnetd does on it means
anything. The far end is the emulator's TAP in a peer namespace (198.18.173.0/24).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import bench
from .r8152_device import R8153Gadget

pytestmark = pytest.mark.vm

SUBNET = 173  # 198.18.173.0/24, used by no other guest test
KERNEL_DRIVER = "r8152"


@pytest.fixture
def rtl(udcs, host_drivers_unloaded, peers, tmp_path) -> Iterator[Callable[..., R8153Gadget]]:
    """Factory ``rtl(**options) -> R8153Gadget`` (created, not bound); destroyed before the namespaces."""
    bench.kernel_driver("tun")
    made: list[R8153Gadget] = []

    def make(**kw) -> R8153Gadget:
        index = len(made) + 1
        g = R8153Gadget(index, f"rtldev{index}", log_dir=tmp_path, **kw)
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


def kernel_netdev(busid: str, timeout: float = 30) -> str:
    return bench.wait_for(lambda: [n for n, d in bench.netdevs_of_usb_device(busid) if d == KERNEL_DRIVER],
                          timeout, f"{KERNEL_DRIVER} to create a netdev for {busid}")[0]


def test_kernel_driver_on_the_emulator(rtl, peers):
    """r8152 binds without an error, takes the chip's MAC, follows the cable, carries traffic both ways."""
    mark = len(bench.run("dmesg").stdout.splitlines())
    bench.kernel_driver(KERNEL_DRIVER)
    g = rtl()
    busid = g.bind()
    peer = peers(SUBNET)
    peer.take(g.tap)
    host_if = kernel_netdev(busid)
    mac = (bench.SYS_NET / host_if / "address").read_text().strip()
    print(f"{KERNEL_DRIVER} on {busid}: {host_if}, MAC {mac}")
    assert mac == g.host_mac, "the driver must take the MAC from the chip's PLA_BACKUP register"
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
    assert dev["counts"].get("out_multi_frame_transfers", 0) > 0, "the kernel aggregates TX frames"
    assert not dev["counts"].get("out_malformed") and not dev["counts"].get("setup_stalled"), dev["counts"]
    assert not dev["counts"].get("idr_write_locked"), "the kernel writes IDR in config mode"
    regs = dev["registers"]
    assert not regs["usb_ctrl"] & 0x0010 and regs["rx_early_size"], "the kernel turns RX aggregation on"

    lines = dmesg_lines(mark)
    ours = [line for line in lines if KERNEL_DRIVER in line or host_if in line]
    print("\n".join(ours))
    bad = [line for line in ours if re.search(r"[Ff]ail|[Ee]rror|[Ii]nvalid|[Rr]andom|[Uu]nknown|WARN", line)]
    assert not bad, bad
    assert any("carrier on" in line for line in ours), ours
    assert any("carrier off" in line for line in ours), ours
    assert Path(bench.SYS_NET / host_if).exists()
