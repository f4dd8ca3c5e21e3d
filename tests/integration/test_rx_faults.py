"""Bulk IN faults injected by the simulated adapter (src/usbnetd/usb/simfaults.py) during traffic, natively.

An error storm (transfers completing with libusb's TRANSFER_ERROR, what EPROTO/ETIME become) must trip the
service's usbnet-style throttle (more than 20 errors in a row: RX pauses 125 ms, counted in rx_throttled)
and traffic must come back by itself. A halted IN endpoint (STALL, EPIPE) must be cleared by the service
(clear_halt), or the simulated device keeps failing every transfer and the pings after it fail.
Subnets 198.18.77-79.0/24.
"""

from __future__ import annotations

import json
import re

import pytest

from .conftest import Usbnetd, wire_up
from .test_faults_native import wait

STORM = 40  # errors per burst: more than RX_ERROR_STORM (20), fewer than two storms' worth (42)


def _stats(u: Usbnetd) -> dict:
    (st,) = json.loads(u.cli("stats", u.ifname, "--json").stdout)
    return st


def _traffic_then_recovery(u: Usbnetd, peer_ip: str) -> tuple[dict, dict]:
    """Ping until carrier and one reply, then 150 pings 20 ms apart (the fault fires inside them), then 5
    pings that must all come back. Returns the counters before and after."""
    a = u.ns
    wait(lambda: "LOWER_UP" in a.run("ip", "link", "show", u.ifname).stdout, "carrier")
    wait(lambda: a.run("ping", "-c", "1", "-W", "1", peer_ip, check=False).returncode == 0, "first ping")
    before = _stats(u)
    a.run("ping", "-q", "-c", "150", "-i", "0.02", "-W", "1", peer_ip, check=False, timeout=60)
    after_storm = _stats(u)
    r = a.run("ping", "-c", "5", "-i", "0.2", "-W", "2", peer_ip, check=False, timeout=30)
    assert r.returncode == 0 and " 5 received" in r.stdout, f"traffic did not recover:\n{r.stdout}\n{u.output()}"
    return before, after_storm


@pytest.mark.parametrize("kind,subnet", [("ncm", 77), ("ecm", 78)])
def test_rx_error_storm_throttles_and_traffic_recovers(netns_pair, tmp_path, kind, subnet):
    a, b = netns_pair
    u = Usbnetd(a, b, f"sim:{kind}?rx_errors={STORM}&rx_error_after=30", str(tmp_path), ifname="usbs0",
                peer="sims0")
    try:
        _, peer_ip = wire_up(u, subnet)
        before, after = _traffic_then_recovery(u, peer_ip)
        assert before["rx_usb_errors"] == 0 and before["rx_throttled"] == 0, before
        assert after["rx_usb_errors"] == STORM, after
        assert after["rx_errors"] - before["rx_errors"] >= STORM, after
        assert after["rx_throttled"] == 1, after  # 21 errors trip it; the 19 after the pause do not again
        assert after["pool"]["exhausted"] == before["pool"]["exhausted"], after["pool"]
    finally:
        rc = u.stop()
    out = u.output()
    assert rc == 0, out
    assert "RX errors in a row; pausing RX for 125 ms" in out, out
    assert f"faults: {STORM} bulk IN errors injected, 0 halts" in out, out
    assert "teardown: every packet back in the pool" in out and "Traceback" not in out, out


@pytest.mark.parametrize("kind", ["ncm", "ecm"])
def test_rx_stall_is_cleared_and_traffic_resumes(netns_pair, tmp_path, kind):
    a, b = netns_pair
    u = Usbnetd(a, b, f"sim:{kind}?rx_stall_after=25&rx_stalls=3", str(tmp_path), ifname="usbs1", peer="sims1")
    try:
        _, peer_ip = wire_up(u, 79)
        before, after = _traffic_then_recovery(u, peer_ip)
        assert before["rx_usb_errors"] == 0, before
        assert after["rx_usb_errors"] > 0, after
        # A halt fails every transfer in flight (about 60 on ECM), but it is one event to clear, not an error
        # storm: RX must not be throttled for it (usbnet clears EPIPE separately from its throttle).
        (st,) = json.loads(u.cli("stats", "--json").stdout)
        assert st["rx_throttled"] == 0, st
    finally:
        rc = u.stop()
    out = u.output()
    assert rc == 0, out
    m = re.search(r"faults: 0 bulk IN errors injected, (\d+) halts \((\d+) STALL completions\), (\d+) halts clea", out)
    assert m, out
    halts, stalls, cleared = map(int, m.groups())
    assert halts == 3 and cleared == 3, out
    assert after["rx_usb_errors"] == stalls, (after, stalls)
    assert out.count("bulk IN endpoint stalled; halt cleared") == 3, out
    assert "teardown: every packet back in the pool" in out and "Traceback" not in out, out
