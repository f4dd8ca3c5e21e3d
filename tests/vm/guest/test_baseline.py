"""Baseline: the kernel's own USB host network drivers against every device the bench offers.

The control experiment for usbnetd: each of the five gadget functions (driven by cdc_ncm, cdc_ether,
cdc_eem, rndis_host, cdc_subset) and both configurations of QEMU's usb-net (rndis_host, cdc_ether) must
get carrier and carry pings to a peer namespace. If this fails, the bench is broken, not usbnetd.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from . import bench

pytestmark = pytest.mark.vm

GADGET_CASES = ["ncm", "ecm", "eem", "rndis", "subset"]
# QEMU usb-net: RNDIS is its first configuration descriptor but bConfigurationValue 2; ECM is value 1.
USBNET_CASES = {"usbnet-rndis": bench.UsbNet.RNDIS_CONFIG, "usbnet-ecm": bench.UsbNet.ECM_CONFIG}


def _read_counter(ifname: str, name: str) -> int:
    return int((bench.SYS_NET / ifname / "statistics" / name).read_text())


def gadget_link(g: bench.Gadget,
                peers: Callable[[int], bench.PeerNamespace]) -> tuple[str, bench.PeerNamespace]:
    """Plug gadget ``g`` in with its kernel host driver; return (host ifname, peer namespace)."""
    bench.kernel_driver(g.host_driver)
    g.bind()
    peer = peers(g.index)
    host_if = g.host_netdev(driver=g.host_driver)
    peer.address_host_side(host_if)
    # The gadget netdev exists only once bound, and goes up only after the host side is up: f_ecm
    # reports the link in an interrupt notification when its netdev opens, and cdc_ether sometimes
    # missed it (carrier stayed off) when the gadget side opened first.
    peer.take(g.gadget_netdev)
    bench.wait_carrier(host_if)
    bench.wait_carrier(g.gadget_netdev, peer.name)
    print(f"{g.function}: busid {g.busid} host {host_if} ({g.host_driver}) <-> {peer.name}/{g.gadget_netdev}")
    return host_if, peer


def usbnet_link(config: int, usbnet: bench.UsbNet,
                peers: Callable[[int], bench.PeerNamespace]) -> tuple[str, bench.PeerNamespace]:
    """Put QEMU's usb-net in ``config`` (a bConfigurationValue) with its kernel driver; the virtio NIC
    is the peer."""
    driver = bench.UsbNet.CONFIGS[config]
    bench.kernel_driver(driver)
    usbnet.set_configuration(config)
    peer = peers(100 + config)
    peer_if = bench.UsbNet.peer_netdev()
    peer.take(peer_if)
    host_if = usbnet.host_netdev(driver=driver)
    peer.address_host_side(host_if)
    bench.wait_carrier(host_if)
    bench.wait_carrier(peer_if, peer.name)
    print(f"usb-net config {config}: busid {usbnet.busid} host {host_if} ({driver}) <-> {peer.name}/{peer_if}")
    return host_if, peer


@pytest.mark.parametrize("case", [*(f"gadget-{f}" for f in GADGET_CASES), *USBNET_CASES])
def test_kernel_driver_ping(case: str, request: pytest.FixtureRequest,
                            peers: Callable[[int], bench.PeerNamespace]) -> None:
    if case.startswith("gadget-"):
        gadgets = request.getfixturevalue("gadgets")
        host_if, peer = gadget_link(gadgets(case.removeprefix("gadget-")), peers)
    else:
        host_if, peer = usbnet_link(USBNET_CASES[case], request.getfixturevalue("usbnet"), peers)
    tx0, rx0 = _read_counter(host_if, "tx_packets"), _read_counter(host_if, "rx_packets")
    result = bench.ping(peer.peer_addr, count=5)
    print(result["output"])
    print(f"{case}: {result['received']}/{result['sent']} replies, avg RTT {result['rtt_avg_ms']} ms")
    # One lost echo is tolerated (the first can race neighbour resolution on a slow guest); none is not.
    assert result["sent"] == 5 and result["received"] >= 4, result["output"]
    # The replies must have crossed the USB link, not some other route.
    assert _read_counter(host_if, "tx_packets") - tx0 >= result["received"]
    assert _read_counter(host_if, "rx_packets") - rx0 >= result["received"]


@pytest.mark.parametrize("function", ["ncm", "ecm"])
def test_kernel_driver_iperf3(function: str, peers: Callable[[int], bench.PeerNamespace],
                              gadgets: Callable[..., bench.Gadget]) -> None:
    """A short TCP transfer through the gadget; prints Mbit/s, asserts only that bytes moved."""
    _, peer = gadget_link(gadgets(function), peers)
    result = bench.iperf3_tcp(peer, seconds=2)
    print(f"{function}: iperf3 TCP {result['bits_per_second'] / 1e6:.0f} Mbit/s ({result['bytes']} bytes)")
    assert result["bytes"] > 0


def test_gadget_replug(peers: Callable[[int], bench.PeerNamespace],
                       gadgets: Callable[..., bench.Gadget]) -> None:
    """Unplug and replug an NCM gadget: the device leaves the host side and comes back working.

    The gadget netdev survives the unplug in its namespace; the host-side netdev is a new one.
    """
    g = gadgets("ncm")
    host_if, peer = gadget_link(g, peers)
    assert bench.ping(peer.peer_addr)["received"] >= 2
    g.unbind()
    assert g.busid is None and not g.bound
    bench.wait_for(lambda: not (bench.SYS_NET / host_if).exists(), 10, f"{host_if} to go away")
    busid = g.bind()
    assert busid == g.busid
    host_if = g.host_netdev(driver=g.host_driver)
    peer.address_host_side(host_if)
    bench.wait_carrier(host_if)
    result = bench.ping(peer.peer_addr, count=5)
    print(f"after replug: {result['received']}/{result['sent']} replies via {host_if}")
    assert result["received"] >= 4, result["output"]
