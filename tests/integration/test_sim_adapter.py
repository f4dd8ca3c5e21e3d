"""usbnetd on the simulated adapter, natively: ping and TCP both ways, status, clean teardown."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from usbnetd import native

from .conftest import Usbnetd, wire_up

TCP_TOOL = os.path.join(os.path.dirname(__file__), "tcp_stream.py")
STREAM_BYTES = 8 * 1024 * 1024


def tcp_stream(server_ns, client_ns, server_ip: str, port: int) -> tuple[str, str]:
    srv = server_ns.popen(sys.executable, TCP_TOOL, "serve", str(port), stdout=-1, text=True)
    assert srv.stdout.readline().strip() == "listening"
    sent = client_ns.run(sys.executable, TCP_TOOL, "send", server_ip, str(port), str(STREAM_BYTES),
                         timeout=120).stdout.strip()
    got = srv.communicate(timeout=60)[0].strip()
    return sent, got


def wait_carrier(u: Usbnetd) -> None:
    """Carrier comes from the simulated device's NETWORK_CONNECTION notification."""
    deadline = time.monotonic() + 10
    while "LOWER_UP" not in u.ns.run("ip", "link", "show", u.ifname).stdout:
        assert time.monotonic() < deadline, u.output()
        time.sleep(0.05)


@pytest.mark.parametrize("kind,extra", [("ncm", ()), ("ncm", ("--ntb32",)), ("ecm", ()),
                                        ("ncm", ("--pure-python",)), ("ecm", ("--pure-python",))],
                         ids=["ncm-ntb16", "ncm-ntb32", "ecm", "ncm-pure-python", "ecm-pure-python"])
def test_sim_adapter_end_to_end(netns_pair, tmp_path, kind, extra):
    a, b = netns_pair
    u = Usbnetd(a, b, f"sim:{kind}", str(tmp_path), extra=extra)
    try:
        host_ip, peer_ip = wire_up(u, {"ncm": 10, "ecm": 11}[kind] + 10 * len(extra) + 20 * ("--pure-python" in extra))
        wait_carrier(u)
        a.run("ping", "-c", "3", "-i", "0.2", "-W", "2", peer_ip, timeout=30)
        b.run("ping", "-c", "3", "-i", "0.2", "-W", "2", host_ip, timeout=30)

        sent, got = tcp_stream(b, a, peer_ip, 5201)  # usbnetd interface -> peer (TX path)
        assert sent == got and sent.startswith(str(STREAM_BYTES))
        sent, got = tcp_stream(a, b, host_ip, 5202)  # peer -> usbnetd interface (RX path)
        assert sent == got and sent.startswith(str(STREAM_BYTES))

        st = json.loads(u.cli("status", "--json").stdout)
        assert len(st) == 1
        s = st[0]
        assert (s["busid"], s["ifname"], s["protocol"], s["link"]) == (f"sim:{kind}", u.ifname, kind, "up")
        assert s["speed_mbps"] == 480 and s["mtu"] == 1500
        assert s["rx_bytes"] > STREAM_BYTES and s["tx_bytes"] > STREAM_BYTES
        assert s["rx_packets"] > STREAM_BYTES // 1514 and s["tx_packets"] > STREAM_BYTES // 1514
        assert s["rx_errors"] == 0 and s["tx_errors"] == 0
        assert set(s) >= {"mac", "rx_dropped", "tx_dropped"}
        # Who did the per-frame work: the C fast path unless told otherwise (or not built).
        assert s["datapath"] == ("python" if "--pure-python" in extra or not native.AVAILABLE else "native"), s

        (d,) = json.loads(u.cli("stats", "--json").stdout)
        assert d["tx_transfers"] == sum(d["tx_flush"].values()) > 0
        assert d["pool"]["exhausted"] == 0 and d["pool"]["in_use"] <= d["pool"]["packets"]
        # The simulated device's own CPU time, apart from the driver's (what bench/native.py subtracts).
        assert 0 < d["sim_device_cpu_seconds"] < 120, d
        assert all(0 < q["high_water"] <= q["capacity"] for n, q in d["queues"].items() if n != "rx_completion")
        if kind == "ncm":
            # Under a TCP stream NCM must carry several frames per transfer in both directions.
            assert d["tx_frames_per_transfer"] > 1.0 and d["rx_frames_per_transfer"] > 1.0, d
            # ... and the TCP stream towards the host went to the TAP coalesced (GRO, in the C path only),
            # byte-exact above.
            if s["datapath"] == "native":
                assert d["rx_gro"]["enabled"] and d["rx_gro"]["segments"] > 2 * d["rx_gro"]["superframes"] > 0, d
            else:
                assert not d["rx_gro"]["enabled"] and d["rx_gro"]["superframes"] == 0, d
        else:
            assert d["tx_frames_per_transfer"] == d["rx_frames_per_transfer"] == 1.0
        prom = u.cli("stats", "--prometheus").stdout
        assert f'usbnetd_link_up{{busid="sim:{kind}",ifname="{u.ifname}",protocol="{kind}"}} 1' in prom
    finally:
        rc = u.stop()
    out = u.output()
    assert rc == 0, out
    assert "every packet back in the pool" in out, out
    if kind == "ncm":
        assert ("(NTB32," if "--ntb32" in extra else "(NTB16,") in out, out  # the negotiated format really was used
    assert not a.has_link(u.ifname), "the TAP must disappear with the instance"
    assert not os.listdir(tmp_path) or all(not f.endswith(".sock") for f in os.listdir(tmp_path))


def test_detach_by_interface_name(netns_pair, tmp_path):
    a, b = netns_pair
    u = Usbnetd(a, b, "sim:ecm", str(tmp_path), ifname="usbd0", peer="simd0")
    r = u.cli("detach", "usbd0")
    assert "detached sim:ecm (usbd0)" in r.stdout
    u.proc.wait(15)
    assert u.proc.returncode == 0
    assert not a.has_link("usbd0")
    r = u.cli("status", "usbd0", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "usbnetd: error: usbd0 is not attached"


def test_second_instance_for_same_device_is_refused(netns_pair, tmp_path):
    a, b = netns_pair
    u = Usbnetd(a, b, "sim:ncm", str(tmp_path), ifname="usbs0", peer="sims0")
    try:
        r = u.cli("run", "sim:ncm", "--ifname", "usbs1", "--sim-peer", "sims0", check=False)
        assert r.returncode == 1
        assert r.stderr.startswith("usbnetd: error: ") and "Traceback" not in r.stderr
        assert a.has_link("usbs0"), "the first instance must survive"
    finally:
        assert u.stop() == 0


def test_the_simulated_device_can_frame_in_c_for_benchmarks(netns_pair, tmp_path):
    """sim:ncm?native=1 (what bench/native.py runs): the device side builds and reads its NTBs with
    usbnetd.native; the driver side is unchanged. Byte-exact TCP both ways, and its own CPU time reported."""
    if not native.AVAILABLE:
        pytest.skip(f"the C fast path is not available: {native.WHY_NOT}")
    a, b = netns_pair
    u = Usbnetd(a, b, "sim:ncm?native=1", str(tmp_path))
    try:
        host_ip, peer_ip = wire_up(u, 44)
        wait_carrier(u)
        a.run("ping", "-c", "3", "-i", "0.2", "-W", "2", peer_ip, timeout=30)
        sent, got = tcp_stream(b, a, peer_ip, 5211)
        assert sent == got and sent.startswith(str(STREAM_BYTES))
        sent, got = tcp_stream(a, b, host_ip, 5212)
        assert sent == got and sent.startswith(str(STREAM_BYTES))
        (d,) = json.loads(u.cli("stats", "--json").stdout)
        assert d["rx_frames_per_transfer"] > 1.0 and d["tx_frames_per_transfer"] > 1.0, d
        assert 0 < d["sim_device_cpu_seconds"] < 120, d
        assert d["rx_errors"] == 0 and d["tx_errors"] == 0, d
    finally:
        rc = u.stop()
    assert rc == 0, u.output()
    assert "simulated device: NCM framing in C" in u.output()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.parametrize("busy_poll", [0, 1_000_000], ids=["sleeping", "busy-polling"])
def test_busy_polling_keeps_the_loop_awake_after_traffic(netns_pair, tmp_path, busy_poll):
    """--busy-poll USEC (the simulated adapter runs the Python event loop): after an echo the loop polls without
    sleeping, so in the half second after it the daemon takes CPU time; without it, it sleeps. The setting shows
    in status and stats."""
    a, b = netns_pair
    u = Usbnetd(a, b, "sim:ecm", str(tmp_path), extra=("--busy-poll", str(busy_poll)))
    try:
        _host_ip, peer_ip = wire_up(u, 47)
        wait_carrier(u)
        a.run("ping", "-c", "1", "-W", "2", peer_ip, timeout=30)
        before = _cpu_seconds(u.proc.pid)
        time.sleep(0.5)
        cpu = _cpu_seconds(u.proc.pid) - before
        if busy_poll:
            assert cpu >= 0.1, f"{cpu:.2f} CPU seconds in the 0.5 s after an echo: the loop slept"
        else:
            assert cpu < 0.1, f"{cpu:.2f} CPU seconds in the 0.5 s after an echo: the loop did not sleep"
        (s,) = json.loads(u.cli("status", "--json").stdout)
        (d,) = json.loads(u.cli("stats", "--json").stdout)
        assert s["busy_poll_us"] == d["busy_poll_us"] == busy_poll
    finally:
        assert u.stop() == 0
