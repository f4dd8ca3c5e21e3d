"""What the vendor-chip VM tests share (test_ax88179.py, test_r8152.py, test_ipheth.py).

Each family's tests prove its emulator against the kernel's driver first, then run usbnetd's driver on the
same emulator. The steps that are the same for every family are here, written once: the emulator factory
fixture, the usbnetd CLI fixture, finding the kernel driver's netdev, traffic (ping and iperf3 both ways),
unplug mid-traffic, a bad chip that must give one error line and go back to the kernel driver, and the
same-boot throughput comparison. A test module imports the fixtures it uses (``from .vendor_tests import
cli``) and calls the steps with its own subnet, names and kernel driver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import bench

ATTACH_TIMEOUT = 180  # Python under TCG starts slowly; an upper bound, not an expectation


def gadget_factory(gadget_cls: type, tap_prefix: str, tmp_path: Path) -> Iterator[Callable[..., object]]:
    """The body of a family's emulator fixture: ``make(**options) -> gadget`` (created, not bound), each
    destroyed at the end (before the namespaces), its state and log printed first."""
    bench.kernel_driver("tun")
    made: list = []

    def make(**kw):
        index = len(made) + 1
        g = gadget_cls(index, f"{tap_prefix}{index}", log_dir=tmp_path, **kw)
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


@pytest.fixture
def cli(tmp_path):
    """The usbnetd CLI with a private run directory; whatever is still attached is detached at the end."""
    env = dict(os.environ, USBNETD_RUN_DIR=str(tmp_path / "run"))

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "usbnetd", *args], capture_output=True, text=True, env=env,
                           timeout=ATTACH_TIMEOUT + 30)
        if check and r.returncode != 0:
            logs = "".join(p.read_text() for p in (tmp_path / "run").glob("*.log"))
            raise AssertionError(f"usbnetd {' '.join(args)} failed ({r.returncode}): {r.stderr}\n{logs}")
        return r

    run.env = env  # type: ignore[attr-defined]
    run.run_dir = tmp_path / "run"  # type: ignore[attr-defined]
    run.logs = lambda: "".join(p.read_text() for p in sorted((tmp_path / "run").glob("*.log")))  # type: ignore
    yield run
    for st in json.loads(run("status", "--json", check=False).stdout or "[]"):
        run("detach", st["ifname"], check=False)
    print(f"--- usbnetd logs:\n{run.logs()}")


def dmesg_mark() -> int:
    return len(bench.run("dmesg").stdout.splitlines())


def dmesg_lines(since: int) -> list[str]:
    return bench.run("dmesg").stdout.splitlines()[since:]


def kernel_netdev(busid: str, driver: str, timeout: float = 30) -> str:
    return bench.wait_for(lambda: [n for n, d in bench.netdevs_of_usb_device(busid) if d == driver],
                          timeout, f"{driver} to create a netdev for {busid}")[0]


def kernel_control(make, peers, driver: str, subnet: int, mac_from: str) -> tuple:
    """The control experiment's common part: the kernel `driver` binds a new emulator, takes the MAC the
    emulator gives (from `mac_from`), gets carrier, carries ping and iperf3 both ways, and follows the cable
    (or tethering) out and in. Returns (gadget, bus id, host interface, dmesg mark): the family then checks
    its emulator's counters and the kernel's log."""
    mark = dmesg_mark()
    bench.kernel_driver(driver)
    g = make()
    busid = g.bind()
    peer = peers(subnet)
    peer.take(g.tap)
    host_if = kernel_netdev(busid, driver)
    mac = (bench.SYS_NET / host_if / "address").read_text().strip()
    print(f"{driver} on {busid}: {host_if}, MAC {mac}")
    assert mac == g.host_mac, f"the driver must take the MAC from {mac_from}"
    peer.address_host_side(host_if)
    bench.wait_carrier(host_if, timeout=30)

    result = bench.ping(peer.peer_addr, count=5)
    print(result["output"])
    assert result["sent"] == 5 and result["received"] >= 4, result["output"]
    up = bench.iperf3_tcp(peer, seconds=3)
    down = bench.iperf3_tcp(peer, seconds=3, reverse=True)
    print(f"{driver}: iperf3 TCP to the wire {up['bits_per_second'] / 1e6:.1f} Mbit/s, "
          f"from the wire {down['bits_per_second'] / 1e6:.1f} Mbit/s")
    assert up["bytes"] > 0 and down["bytes"] > 0
    print("ethtool:", bench.run("ethtool", host_if, check=False).stdout)
    print("offloads:", bench.run("ethtool", "-k", host_if, check=False).stdout)

    g.command("cable_out")
    bench.wait_for(lambda: not bench.carrier(host_if), 30, f"{host_if} to lose carrier")
    g.command("cable_in")
    bench.wait_carrier(host_if, timeout=30)
    assert bench.ping(peer.peer_addr, count=3)["received"] >= 2
    return g, busid, host_if, mark


def status(cli, ifname: str) -> dict:
    (st,) = json.loads(cli("status", ifname, "--json").stdout)
    return st


def tx_offload(cli, ifname: str) -> dict:
    """The instance's TX offload counters (`usbnetd stats --json`)."""
    (row,) = json.loads(cli("stats", ifname, "--json").stdout)
    return row["tx_offload"]


def transfer_memory(cli, ifname: str) -> tuple[str, dict]:
    """Where the instance's packet pool lives (`usbnetd stats --json`: usbfs or copied) and the pool."""
    (row,) = json.loads(cli("stats", ifname, "--json").stdout)
    return row["transfer_memory"], row["pool"]


def traffic(peer: bench.PeerNamespace, seconds: float) -> tuple[dict, dict, dict]:
    ping = bench.ping(peer.peer_addr, count=10, interval=0.2)
    up = bench.iperf3_tcp(peer, seconds=seconds)
    down = bench.iperf3_tcp(peer, seconds=seconds, reverse=True)
    return ping, up, down


def attach(cli, g, peer: bench.PeerNamespace, ifname: str) -> str:
    """usbnetd attached to the bound gadget `g` as `ifname`, addressed, with carrier; returns the bus id."""
    busid = g.busid
    assert cli("attach", busid, "--ifname", ifname, "--timeout", str(ATTACH_TIMEOUT)).stdout.strip() == ifname
    peer.address_host_side(ifname)
    bench.wait_carrier(ifname, timeout=30)
    return busid


def detach_clean(cli, busid: str, ifname: str) -> None:
    """Detach, and check that the interface is gone and the teardown was whole."""
    r = cli("detach", ifname)
    assert f"detached {busid} ({ifname})" in r.stdout
    assert not (bench.SYS_NET / ifname).exists()
    assert "teardown: every packet back in the pool" in cli.logs()
    assert "Traceback" not in cli.logs()


def unplug_mid_traffic(g, peer: bench.PeerNamespace, cli, ifname: str, min_packets: int = 100) -> None:
    """usbnetd on `g` (bound, its TAP in `peer`), bidirectional iperf3, then the unplug: usbnetd must stop
    with "device disappeared", every packet back in the pool, no traceback, the interface gone."""
    busid = attach(cli, g, peer, ifname)
    assert bench.ping(peer.peer_addr, count=3)["received"] >= 2
    server = peer.popen("iperf3", "-s", "-1", "-B", peer.peer_addr, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    argv = ["iperf3", "-c", peer.peer_addr, "-t", "30", "--bidir"]
    time.sleep(1)
    client = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def both_ways() -> bool:
        nonlocal client
        if client.poll() is not None:  # refused: the server was not listening yet (TCG on a shared host)
            client = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return False
        st = status(cli, ifname)
        return st["tx_packets"] > min_packets and st["rx_packets"] > min_packets

    try:
        bench.wait_for(both_ways, 40, f"traffic both ways on {ifname}", interval=1.0)
        g.unbind()
        bench.wait_for(lambda: not bench.run("pgrep", "-f", f"usbnetd run {busid}", check=False).stdout, 60,
                       "usbnetd to stop after the unplug")
    finally:
        client.kill()
        server.kill()
        client.wait()
        server.wait()
    log = cli.logs()
    print(log)
    assert "Traceback" not in log
    assert "stopped: device disappeared" in log and "teardown: every packet back in the pool" in log, log
    assert not (bench.SYS_NET / ifname).exists()


def bad_chip(g, cli, driver: str, ifname: str, expect: str, once: str | None = None) -> float:
    """The kernel `driver` owns the bound gadget `g`; `usbnetd run` takes it and must fail with exactly one
    error line containing `expect`, exit 1, leave no interface or control socket, and the kernel driver must
    get the chip back. `once`: a one-shot fault command sent after the kernel driver bound (the fault then
    hits usbnetd's first request), checked to have fired. Returns how long usbnetd took."""
    busid = g.busid
    first = kernel_netdev(busid, driver)
    if once is not None:
        g.command(once)
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "usbnetd", "run", busid, "--ifname", ifname], capture_output=True,
                       text=True, env=cli.env, timeout=240)
    took = time.monotonic() - started
    out = r.stdout + r.stderr
    print(f"usbnetd exited {r.returncode} after {took:.1f} s:\n{out}")
    errors = [line for line in out.splitlines() if line.startswith("usbnetd: error:")]
    assert r.returncode == 1 and len(errors) == 1, out
    assert expect in errors[0], errors
    assert "Traceback" not in out
    assert not (bench.SYS_NET / ifname).exists(), "no interface may be left behind"
    assert not list(cli.run_dir.glob("*.sock")), "no control socket may be left behind"
    back = kernel_netdev(busid, driver)
    print(f"{driver} had {busid} as {first}, has it again as {back}")
    if once is not None:
        assert f"{once.split('_')[0]} once" in " ".join(g.stats()["events"]), "the fault hit usbnetd"
    return took


def throughput_same_boot(make, peers, cli, subnet: int, driver: str, ifname: str, name: str,
                         seconds: float = 5, extra: Callable[[dict], dict] | None = None) -> dict:
    """The same emulated chip, first with the kernel `driver`, then with usbnetd: ping RTT and iperf3 both
    ways. Prints the numbers (docs/performance.md records them), writes `<name>-throughput.json` into the
    run's results; asserts only that traffic moved. `extra(kernel_counts)` adds emulator facts."""
    bench.kernel_driver(driver)
    g = make()
    busid = g.bind()
    peer = peers(subnet)
    peer.take(g.tap)
    host_if = kernel_netdev(busid, driver)
    peer.address_host_side(host_if)
    bench.wait_carrier(host_if, timeout=30)
    k_ping, k_up, k_down = traffic(peer, seconds)
    kernel_counts = g.stats()["counts"]
    bench.kernel_driver(driver, load=False)
    bench.wait_for(lambda: not (bench.SYS_NET / host_if).exists(), 20, f"{host_if} to go")

    attach(cli, g, peer, ifname)
    u_ping, u_up, u_down = traffic(peer, seconds)
    st = status(cli, ifname)
    offload = tx_offload(cli, ifname)
    cli("detach", ifname)
    result = {
        "kernel": {"rtt_ms": k_ping["rtt_avg_ms"], "to_wire_mbps": k_up["bits_per_second"] / 1e6,
                   "from_wire_mbps": k_down["bits_per_second"] / 1e6},
        "usbnetd": {"rtt_ms": u_ping["rtt_avg_ms"], "to_wire_mbps": u_up["bits_per_second"] / 1e6,
                    "from_wire_mbps": u_down["bits_per_second"] / 1e6, "datapath": st.get("datapath"),
                    "device_superframes": offload.get("device_superframes", 0)},
        **(extra(kernel_counts) if extra else {}),
    }
    print("THROUGHPUT", json.dumps(result))
    if os.environ.get("USBNETD_VM_RESULTS"):
        with open(Path(os.environ["USBNETD_VM_RESULTS"]) / f"{name}-throughput.json", "w") as f:
            json.dump(result, f)
    assert k_up["bytes"] > 0 and k_down["bytes"] > 0 and u_up["bytes"] > 0 and u_down["bytes"] > 0
    return result
