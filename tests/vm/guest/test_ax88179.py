"""The ASIX AX88179 emulator (``ax88179_device.py``) against the kernel's ax88179_178a, then against usbnetd.

The kernel driver is the control experiment: if it does not bind the emulated chip cleanly, read its MAC,
get carrier from the interrupt endpoint and carry ping and iperf3 both ways (its TSO and checksum offloads
included, which the emulator carries out), the emulator is wrong and nothing usbnetd does on it means
anything. The far end is the emulator's TAP in a peer namespace (198.18.172.0/24).

Then usbnetd's own driver (protocols/ax88179.py) on the same emulator: ping, iperf3 both ways, carrier
following the cable, MTU / MAC / multicast reaching the chip's registers, unplug mid-traffic, a chip that
answers garbage, stalls its control endpoint or never reports link (one error line, nothing left behind,
the kernel driver gets the chip back), and a same-boot throughput comparison with the kernel driver.
"""

from __future__ import annotations

import json
import re

import pytest

from usbnetd.protocols.ax88179 import multicast_hash

from . import bench
from .ax88179_device import Ax88179Gadget
from .vendor_tests import (
    attach,
    bad_chip,
    cli,  # noqa: F401 - the fixture
    detach_clean,
    dmesg_lines,
    gadget_factory,
    kernel_control,
    status,
    throughput_same_boot,
    traffic,
    transfer_memory,
    tx_offload,
    unplug_mid_traffic,
)

pytestmark = pytest.mark.vm

SUBNET = 172  # 198.18.172.0/24, used by no other guest test
KERNEL_DRIVER = "ax88179_178a"


@pytest.fixture
def ax(udcs, host_drivers_unloaded, peers, tmp_path):
    """Factory ``ax(**options) -> Ax88179Gadget`` (created, not bound); destroyed before the namespaces."""
    yield from gadget_factory(Ax88179Gadget, "axdev", tmp_path)


def test_kernel_driver_on_the_emulator(ax, peers):
    """ax88179_178a binds without a warning, takes the chip's MAC, follows the cable, carries traffic."""
    g, busid, host_if, mark = kernel_control(ax, peers, KERNEL_DRIVER, SUBNET, "the chip's NODE_ID register")
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
    assert (bench.SYS_NET / host_if).exists()


# -- usbnetd on the same emulator ------------------------------------------------------------------------

def registers(g: Ax88179Gadget) -> dict:
    return g.stats()["registers"]


def test_usbnetd_on_the_emulator(ax, peers, cli):  # noqa: F811 - the fixture
    """Listing, attach, ping and iperf3 both ways, carrier following the cable, MTU, MAC and multicast changes
    reaching the chip's registers, and a clean detach."""
    g = ax()
    busid = g.bind()
    peer = peers(SUBNET)
    peer.take(g.tap)
    (entry,) = [d for d in json.loads(cli("list", "--json").stdout) if d["busid"] == busid]
    assert (entry["vid"], entry["pid"], entry["protocol"], entry["state"]) == ("0b95", "1790", "ax88179", "free")
    print(cli("list").stdout)

    ifname = "axu0"
    attach(cli, g, peer, ifname)
    st0 = status(cli, ifname)
    assert (st0["protocol"], st0["mac"], st0["mtu"], st0["speed_mbps"]) == ("ax88179", g.host_mac, 1500, 1000)
    ping, up, down = traffic(peer, 3)
    print(ping["output"])
    print(f"usbnetd ax88179: iperf3 TCP to the wire {up['bits_per_second'] / 1e6:.1f} Mbit/s, "
          f"from the wire {down['bits_per_second'] / 1e6:.1f} Mbit/s")
    assert ping["received"] >= 9 and up["bytes"] > 0 and down["bytes"] > 0
    st = status(cli, ifname)
    assert st["tx_bytes"] >= up["bytes"] and st["rx_bytes"] >= down["bytes"]
    assert st["rx_errors"] == st["tx_errors"] == 0, st
    # The chip's TSO and checksum engine: the host's super-frames reached the emulated chip whole, and it cut
    # them (its counters), with nothing malformed and nothing dropped on the way.
    off, counts = tx_offload(cli, ifname), g.stats()["counts"]
    print("usbnetd TX offloads:", off, "emulator:", counts)
    assert off["device_superframes"] > 0 and off["dropped"] == 0 and "tso4" in off["device_offloads"], off
    assert counts.get("tso_frames", 0) > 0 and not counts.get("out_malformed"), counts
    # With TSO the pool's buffers take a 16 KiB super-frame, so they are usbfs memory: the frames above crossed
    # the bus without the kernel copying them (usb/engine.transfer_memory).
    where, pool = transfer_memory(cli, ifname)
    print("transfer memory:", where, pool)
    assert where == "usbfs" and pool["buffer_size"] >= 16384, (where, pool)

    # The cable: carrier follows the chip's interrupt status both ways.
    g.command("cable_out")
    bench.wait_for(lambda: not bench.carrier(ifname), 30, f"{ifname} to lose carrier")
    g.command("cable_in")
    bench.wait_carrier(ifname, timeout=30)
    assert bench.ping(peer.peer_addr, count=3)["received"] >= 2

    # MTU: 3000 needs the chip's jumbo mode; 9000 is more than it takes and is put back.
    peer.exec("ip", "link", "set", g.tap, "mtu", "3000")
    bench.run("ip", "link", "set", ifname, "mtu", "3000")
    bench.wait_for(lambda: registers(g)["medium"] & 0x8040 == 0x8040, 20, "the chip's jumbo mode")
    big = bench.run("ping", "-c", "2", "-W", "3", "-s", "2900", "-M", "do", peer.peer_addr, check=False)
    assert big.returncode == 0, big.stdout + big.stderr
    bench.run("ip", "link", "set", ifname, "mtu", "9000")
    bench.wait_for(lambda: (bench.SYS_NET / ifname / "mtu").read_text().strip() == "3000", 20,
                   "usbnetd to put the MTU back")
    bench.run("ip", "link", "set", ifname, "mtu", "1500")
    bench.wait_for(lambda: not registers(g)["medium"] & 0x8000, 20, "jumbo mode off")

    # MAC: written to NODE_ID, so the chip's unicast filter follows and no promiscuous mode is needed.
    new_mac = "02:00:18:a1:00:99"
    bench.run("ip", "link", "set", ifname, "address", new_mac)
    bench.wait_for(lambda: registers(g)["node_id"] == new_mac, 20, "NODE_ID to follow the MAC")
    assert not registers(g)["rx_ctl"] & 0x0001, "a MAC the chip filters for needs no promiscuous mode"
    peer.exec("ip", "neigh", "flush", "dev", g.tap)
    assert bench.ping(peer.peer_addr, count=3)["received"] >= 2

    # Multicast: a joined group lands in the chip's hash filter with RX_CTL AM.
    bench.run("ip", "maddr", "add", "01:00:5e:01:02:03", "dev", ifname)
    want = multicast_hash([bytes.fromhex("01005e010203")])

    def group_in_filter() -> bool:
        regs = registers(g)
        table = bytes.fromhex(regs["multicast_hash"])
        return bool(regs["rx_ctl"] & 0x0010) and all(t & w == w for t, w in zip(table, want, strict=True))

    bench.wait_for(group_in_filter, 20, f"RX_CTL AM and the group's bit ({want.hex()}) in the hash filter")

    dev = g.stats()["counts"]
    assert not dev.get("out_malformed") and not dev.get("setup_stalled"), dev
    detach_clean(cli, busid, ifname)
    # usbnetd left the chip as Linux does: receive stopped, PHY powered down.
    regs = registers(g)
    assert regs["rx_ctl"] == 0 and regs["phypwr"] == 0 and not regs["link"], regs


def test_usbnetd_unplug_mid_traffic(ax, peers, cli):  # noqa: F811 - the fixture
    g = ax()
    g.bind()
    peer = peers(SUBNET)
    peer.take(g.tap)
    unplug_mid_traffic(g, peer, cli, "axu1")


@pytest.mark.parametrize("fault, expect", [
    ("garbage", "AX88179 bring-up failed: AX88179 answered a 1-byte read of register 0x02 with 0 bytes"),
    ("ep0_stall", "AX88179 bring-up failed:"),
    ("int_silent", "sent no link status on its interrupt endpoint in 10 s"),
], ids=["garbage", "ep0_stall", "int_silent"])
def test_a_bad_chip_gives_one_line_and_goes_back_to_the_kernel(ax, cli, fault, expect):  # noqa: F811
    """The kernel driver owns the chip; usbnetd takes it, fails with one line, leaves nothing behind, and
    ax88179_178a gets the chip back."""
    bench.kernel_driver(KERNEL_DRIVER)
    g = ax(**{fault: True})
    g.bind()
    bad_chip(g, cli, KERNEL_DRIVER, "axbad0", expect)


def test_throughput_kernel_driver_and_usbnetd_same_boot(ax, peers, cli):  # noqa: F811 - the fixture
    """The same emulated chip, first with ax88179_178a, then with usbnetd: ping RTT and iperf3 both ways."""
    throughput_same_boot(ax, peers, cli, SUBNET, KERNEL_DRIVER, "axu2", "ax88179",
                         extra=lambda counts: {"emulator_tso_frames_kernel": counts.get("tso_frames", 0)})
