"""The Realtek RTL8153 emulator (``r8152_device.py``) against the kernel's r8152, then against usbnetd.

The kernel driver is the control experiment: if it does not bind the emulated chip cleanly, read its MAC,
get carrier from the interrupt endpoint and carry ping and iperf3 both ways (its TSO and checksum offloads
included, which the emulator carries out), the emulator is wrong and nothing usbnetd does on it means
anything. The far end is the emulator's TAP in a peer namespace (198.18.173.0/24).

Then usbnetd's own driver (protocols/r8152.py) on the same emulator: ping, iperf3 both ways, carrier
following the cable, MTU / MAC / multicast reaching the chip's registers, unplug mid-traffic, a chip that
answers garbage, stalls its control endpoint or never reports link (one error line, nothing left behind,
the kernel driver gets the chip back), and a same-boot throughput comparison with the kernel driver.
"""

from __future__ import annotations

import json
import re

import pytest

from usbnetd.protocols.r8152 import multicast_hash

from . import bench
from .r8152_device import R8153Gadget
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

SUBNET = 173  # 198.18.173.0/24, used by no other guest test
KERNEL_DRIVER = "r8152"


@pytest.fixture
def rtl(udcs, host_drivers_unloaded, peers, tmp_path):
    """Factory ``rtl(**options) -> R8153Gadget`` (created, not bound); destroyed before the namespaces."""
    yield from gadget_factory(R8153Gadget, "rtldev", tmp_path)


def test_kernel_driver_on_the_emulator(rtl, peers):
    """r8152 binds without an error, takes the chip's MAC, follows the cable, carries traffic both ways."""
    g, busid, host_if, mark = kernel_control(rtl, peers, KERNEL_DRIVER, SUBNET, "the chip's PLA_BACKUP register")
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
    assert (bench.SYS_NET / host_if).exists()


# -- usbnetd on the same emulator ------------------------------------------------------------------------

def registers(g: R8153Gadget) -> dict:
    return g.stats()["registers"]


def test_usbnetd_on_the_emulator(rtl, peers, cli):  # noqa: F811 - the fixture
    """Listing, attach, ping and iperf3 both ways, carrier following the cable, MTU, MAC and multicast changes
    reaching the chip's registers, and a clean detach."""
    g = rtl()
    busid = g.bind()
    peer = peers(SUBNET)
    peer.take(g.tap)
    (entry,) = [d for d in json.loads(cli("list", "--json").stdout) if d["busid"] == busid]
    assert (entry["vid"], entry["pid"], entry["protocol"], entry["state"]) == ("0bda", "8153", "r8152", "free")
    print(cli("list").stdout)

    ifname = "rtlu0"
    attach(cli, g, peer, ifname)
    st0 = status(cli, ifname)
    assert (st0["protocol"], st0["mac"], st0["mtu"], st0["speed_mbps"]) == ("r8152", g.host_mac, 1500, 1000)
    ping, up, down = traffic(peer, 3)
    print(ping["output"])
    print(f"usbnetd r8152: iperf3 TCP to the wire {up['bits_per_second'] / 1e6:.1f} Mbit/s, "
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
    dev = g.stats()["counts"]
    assert dev.get("out_multi_frame_transfers", 0) > 0, "usbnetd puts several frames in one TX transfer"
    assert dev.get("in_frames", 0) > dev.get("in_transfers", 0), "the chip aggregated RX frames"

    # The cable: carrier follows the chip's interrupt status both ways.
    g.command("cable_out")
    bench.wait_for(lambda: not bench.carrier(ifname), 30, f"{ifname} to lose carrier")
    g.command("cable_in")
    bench.wait_carrier(ifname, timeout=30)
    assert bench.ping(peer.peer_addr, count=3)["received"] >= 2

    # MTU: 3000 goes to PLA_RMS (frame + VLAN tag + FCS); 9500 is more than the chip takes and is put back.
    peer.exec("ip", "link", "set", g.tap, "mtu", "3000")
    bench.run("ip", "link", "set", ifname, "mtu", "3000")
    bench.wait_for(lambda: registers(g)["rms"] == 3000 + 22, 20, "PLA_RMS for MTU 3000")
    big = bench.run("ping", "-c", "2", "-W", "3", "-s", "2900", "-M", "do", peer.peer_addr, check=False)
    assert big.returncode == 0, big.stdout + big.stderr
    bench.run("ip", "link", "set", ifname, "mtu", "9500")
    bench.wait_for(lambda: (bench.SYS_NET / ifname / "mtu").read_text().strip() == "3000", 20,
                   "usbnetd to put the MTU back")
    bench.run("ip", "link", "set", ifname, "mtu", "1500")
    bench.wait_for(lambda: registers(g)["rms"] == 1522, 20, "PLA_RMS back at 1522")

    # MAC: written to PLA_IDR (in config mode), so the chip's unicast filter follows: no promiscuous mode.
    new_mac = "02:00:18:a1:00:99"
    bench.run("ip", "link", "set", ifname, "address", new_mac)
    bench.wait_for(lambda: registers(g)["idr"] == new_mac, 20, "PLA_IDR to follow the MAC")
    assert not registers(g)["rcr"] & 0x01, "a MAC the chip filters for needs no promiscuous mode"
    peer.exec("ip", "neigh", "flush", "dev", g.tap)
    assert bench.ping(peer.peer_addr, count=3)["received"] >= 2

    # Multicast: a joined group lands in the chip's hash filter (MAR) with RCR AM.
    bench.run("ip", "maddr", "add", "01:00:5e:01:02:03", "dev", ifname)
    want = multicast_hash([bytes.fromhex("01005e010203")])

    def group_in_filter() -> bool:
        regs = registers(g)
        table = bytes.fromhex(regs["mar"])
        return bool(regs["rcr"] & 0x04) and all(t & w == w for t, w in zip(table, want, strict=True))

    bench.wait_for(group_in_filter, 20, f"RCR AM and the group's bit ({want.hex()}) in MAR")

    dev = g.stats()["counts"]
    assert not dev.get("out_malformed") and not dev.get("setup_stalled"), dev
    assert not dev.get("idr_write_locked"), "every PLA_IDR write came in config mode"
    detach_clean(cli, busid, ifname)
    # usbnetd left the MAC as the kernel's down path does: accept nothing, RX/TX off, out-of-band mode.
    regs = registers(g)
    assert regs["rcr"] & 0x0F == 0 and not regs["cr"] & 0x0C and regs["oob_ctrl"] & 0x80, regs


def test_usbnetd_unplug_mid_traffic(rtl, peers, cli):  # noqa: F811 - the fixture
    g = rtl()
    g.bind()
    peer = peers(SUBNET)
    peer.take(g.tap)
    unplug_mid_traffic(g, peer, cli, "rtlu1")


@pytest.mark.parametrize("fault, expect", [
    ("garbage_next", "RTL8153 bring-up failed: the chip answered a 4-byte read of PLA 0xe610 with 3 bytes"),
    ("stall_next", "RTL8153 bring-up failed:"),
    ("int_silent", "sent no link status on its interrupt endpoint in 10 s"),
], ids=["garbage", "ep0_stall", "int_silent"])
def test_a_bad_chip_gives_one_line_and_goes_back_to_the_kernel(rtl, cli, fault, expect):  # noqa: F811
    """The kernel driver owns the chip; usbnetd takes it, fails with one line, leaves nothing behind, and r8152
    gets the chip back. The kernel driver checks the chip's version itself and would not bind a chip that
    answers garbage or stalls, so those faults hit usbnetd's first request only (the emulator's one-shot
    faults); a silent interrupt endpoint does not stop r8152 from binding, so that one stays on."""
    bench.kernel_driver(KERNEL_DRIVER)
    g = rtl(int_silent=fault == "int_silent")
    g.bind()
    bad_chip(g, cli, KERNEL_DRIVER, "rtlbad0", expect, once=None if fault == "int_silent" else fault)


def test_throughput_kernel_driver_and_usbnetd_same_boot(rtl, peers, cli):  # noqa: F811 - the fixture
    """The same emulated chip, first with r8152, then with usbnetd: ping RTT and iperf3 both ways."""
    throughput_same_boot(rtl, peers, cli, SUBNET, KERNEL_DRIVER, "rtlu2", "r8152",
                         extra=lambda counts: {"emulator_tso_frames_kernel": counts.get("tso_frames", 0)})
