"""The iPhone tethering emulator (``ipheth_device.py``) against the kernel's ipheth, then against usbnetd.

The kernel driver is the control experiment: if it does not bind the emulated phone cleanly, read its MAC,
get carrier from the carrier check and carry ping and iperf3 both ways, the emulator is wrong and nothing
usbnetd does on it means anything. The far end is the emulator's TAP in a peer namespace (198.18.174.0/24).

Then usbnetd's own driver (protocols/ipheth.py) on the same emulator: ping, iperf3 both ways, carrier
following tethering on/off, MTU (at most 1500) and a MAC change, unplug mid-traffic, a phone that answers
garbage, stalls its control endpoint or never reports carrier (one error line, nothing left behind, the
kernel driver gets the phone back), and a same-boot throughput comparison with the kernel driver.
"""

from __future__ import annotations

import json
import re

import pytest

from . import bench
from .ipheth_device import IphoneGadget
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
    unplug_mid_traffic,
)

pytestmark = pytest.mark.vm

SUBNET = 174  # 198.18.174.0/24, used by no other guest test
KERNEL_DRIVER = "ipheth"


@pytest.fixture
def phone(udcs, host_drivers_unloaded, peers, tmp_path):
    """Factory ``phone(**options) -> IphoneGadget`` (created, not bound); destroyed before the namespaces."""
    yield from gadget_factory(IphoneGadget, "iphdev", tmp_path)


def test_kernel_driver_on_the_emulator(phone, peers):
    """ipheth binds without an error, takes the phone's MAC, follows tethering on/off, carries traffic."""
    g, busid, host_if, mark = kernel_control(phone, peers, KERNEL_DRIVER, SUBNET, "the phone's answer to request 0x00")
    dev = g.stats()
    print("emulator:", dev["counts"], dev["registers"])
    counts = dev["counts"]
    assert counts.get("carrier_checks", 0) > 3, "the kernel polls the carrier once a second"
    assert counts.get("out_padded", 0) > 0, "6.1 sends every frame in a 1514-byte buffer"
    assert not counts.get("out_padding_not_zero"), "the padding is zeros"
    assert not counts.get("unknown_requests") and not counts.get("ncm_enabled"), "6.1 has no NCM mode"
    lines = dmesg_lines(mark)
    ours = [line for line in lines if KERNEL_DRIVER in line or host_if in line or busid in line]
    print("\n".join(ours))
    bad = [line for line in ours if re.search(r"[Ff]ail|[Ee]rror|[Ii]nvalid|WARN|short packet", line)]
    assert not bad, bad
    assert any("Apple iPhone USB Ethernet device attached" in line for line in ours), ours


# -- usbnetd on the same emulator ------------------------------------------------------------------------


def test_usbnetd_on_the_emulator(phone, peers, cli):  # noqa: F811 - the fixture
    """Listing, attach, ping and iperf3 both ways, carrier following tethering, MTU and MAC changes, and a
    clean detach."""
    g = phone()
    busid = g.bind()
    peer = peers(SUBNET)
    peer.take(g.tap)
    (entry,) = [d for d in json.loads(cli("list", "--json").stdout) if d["busid"] == busid]
    assert (entry["vid"], entry["pid"], entry["protocol"], entry["state"]) == ("05ac", "12a8", "ipheth", "free")
    print(cli("list").stdout)

    ifname = "iphu0"
    attach(cli, g, peer, ifname)
    st0 = status(cli, ifname)
    assert (st0["protocol"], st0["mac"], st0["mtu"]) == ("ipheth", g.host_mac, 1500), st0
    ping, up, down = traffic(peer, 3)
    print(ping["output"])
    print(f"usbnetd ipheth: iperf3 TCP to the wire {up['bits_per_second'] / 1e6:.1f} Mbit/s, "
          f"from the wire {down['bits_per_second'] / 1e6:.1f} Mbit/s")
    assert ping["received"] >= 9 and up["bytes"] > 0 and down["bytes"] > 0
    st = status(cli, ifname)
    assert st["tx_bytes"] >= up["bytes"] and st["rx_bytes"] >= down["bytes"]
    assert st["rx_errors"] == st["tx_errors"] == 0, st
    dev = g.stats()["counts"]
    assert dev.get("out_padded", 0) > 0 and not dev.get("out_padding_not_zero"), "1514-byte zero-padded TX"

    # Tethering off and on: carrier follows the carrier check (polled once a second).
    g.command("cable_out")
    bench.wait_for(lambda: not bench.carrier(ifname), 30, f"{ifname} to lose carrier")
    g.command("cable_in")
    bench.wait_carrier(ifname, timeout=30)
    assert bench.ping(peer.peer_addr, count=3)["received"] >= 2

    # MTU: the phone takes frames up to 1514 bytes: 1400 is fine, 2000 is put back.
    bench.run("ip", "link", "set", ifname, "mtu", "1400")
    bench.wait_for(lambda: status(cli, ifname)["mtu"] == 1400, 20, "MTU 1400")
    bench.run("ip", "link", "set", ifname, "mtu", "2000")
    bench.wait_for(lambda: (bench.SYS_NET / ifname / "mtu").read_text().strip() == "1400", 20,
                   "usbnetd to put the MTU back")
    bench.run("ip", "link", "set", ifname, "mtu", "1500")

    # MAC: the phone has no request for it and no filter; its frames follow its neighbour cache.
    new_mac = "02:00:18:ae:00:99"
    bench.run("ip", "link", "set", ifname, "address", new_mac)
    bench.wait_for(lambda: status(cli, ifname)["mac"] == new_mac, 20, "the new MAC")
    peer.exec("ip", "neigh", "flush", "dev", g.tap)
    assert bench.ping(peer.peer_addr, count=3)["received"] >= 2

    dev = g.stats()["counts"]
    assert not dev.get("unknown_requests") and not dev.get("setup_stalled"), dev
    detach_clean(cli, busid, ifname)


def test_usbnetd_unplug_mid_traffic(phone, peers, cli):  # noqa: F811 - the fixture
    g = phone()
    g.bind()
    peer = peers(SUBNET)
    peer.take(g.tap)
    unplug_mid_traffic(g, peer, cli, "iphu1")


@pytest.mark.parametrize("fault, expect", [
    ("garbage_next", "iPhone bring-up failed: the phone answered its MAC address with 5 bytes"),
    ("stall_next", "iPhone bring-up failed:"),
    ("int_silent", "answered no carrier check in 10 s"),
], ids=["garbage", "ep0_stall", "int_silent"])
def test_a_bad_phone_gives_one_line_and_goes_back_to_the_kernel(phone, cli, fault, expect):  # noqa: F811
    """The kernel driver owns the phone; usbnetd takes it, fails with one line, leaves nothing behind, and
    ipheth gets the phone back. ipheth does not bind a phone whose MAC read fails, so those faults hit
    usbnetd's first request only (one-shot); a stalled carrier check does not stop ipheth from binding (it
    logs each failed check), so that one stays on."""
    bench.kernel_driver(KERNEL_DRIVER)
    g = phone(int_silent=fault == "int_silent")
    g.bind()
    bad_chip(g, cli, KERNEL_DRIVER, "iphbad0", expect, once=None if fault == "int_silent" else fault)


def test_throughput_kernel_driver_and_usbnetd_same_boot(phone, peers, cli):  # noqa: F811 - the fixture
    """The same emulated phone, first with ipheth, then with usbnetd: ping RTT and iperf3 both ways."""
    throughput_same_boot(phone, peers, cli, SUBNET, KERNEL_DRIVER, "iphu2", "ipheth")
