"""ethtool-style facts on real instances (sim:ncm, sim:ecm): `usbnetd status` text and --json, and what the
real `ethtool` says about the TAP — the device's link speed and duplex unknown (set by usbnetd), while
`ethtool -i` stays tun's own answer (driver tun, bus-info tap), which nothing in user space can change."""

from __future__ import annotations

import json
import shutil

import pytest

from .conftest import Usbnetd


@pytest.mark.parametrize("kind", ["ncm", "ecm"])
def test_status_facts_and_ethtool(netns_pair, tmp_path, kind):
    if shutil.which("ethtool") is None:
        pytest.fail("ethtool is missing; scripts/test.sh installs it")
    ns, peer_ns = netns_pair
    u = Usbnetd(ns, peer_ns, f"sim:{kind}", str(tmp_path))
    try:
        st = {}
        for _ in range(100):  # the link speed arrives with the first notifications
            st = json.loads(u.cli("status", u.ifname, "--json").stdout)[0]
            if st["device"]["link_speed_mbps"] is not None:
                break
        dev = st["device"]
        assert dev["driver"] == "usbnetd" and dev["bus_info"] == f"sim:{kind}"
        assert (dev["vendor_id"], dev["usb_speed_mbps"], dev["cdc_version"]) == ("1d6b", 480, "1.10")
        assert dev["link_speed_mbps"] == 480 and dev["duplex"] == "unknown" and dev["ethtool_speed_set"] is True
        assert (dev.get("ncm_version") == "1.00") == (kind == "ncm")
        text = u.cli("status", u.ifname).stdout
        assert f"device 1d6b:{dev['product_id']} usbnetd Simulated CDC-{kind.upper()} adapter" in text
        assert f"bus-info sim:{kind}" in text and "duplex unknown" in text
        ethtool = u.ns.run("ethtool", u.ifname).stdout
        assert "Speed: 480Mb/s" in ethtool and "Duplex: Unknown! (255)" in ethtool and "Port: Other" in ethtool
        info = u.ns.run("ethtool", "-i", u.ifname).stdout
        assert "driver: tun" in info and "bus-info: tap" in info
        stats = json.loads(u.cli("stats", u.ifname, "--json").stdout)[0]
        assert stats["device"]["protocol"] == kind
    finally:
        u.stop()
