"""Faults only a misbehaving device can cause, from a device we wrote ourselves (``ffs_device.py``).

A FunctionFS gadget on dummy_hcd plays the device; usbnetd drives it from the host side of the same guest,
and traffic crosses USB to a TAP the device process owns in a peer namespace (198.18.171.0/24). Proven here:

* endpoint stalls (bulk IN, then bulk OUT) during traffic: usbnetd counts them, clears the halt and traffic
  resumes;
* a stuck device (stops reading bulk OUT for a few seconds) under a UDP flood: usbnetd's TX transfers stay
  in flight, its queues fill, the excess is dropped and counted, and traffic flows again afterwards;
* a device that never answers a control request at bring-up (RNDIS INITIALIZE): a bounded failure with one
  line, a non-zero exit and nothing left behind;
* a device that stops answering control requests while running (RNDIS keepalive): one clear line, a clean
  stop, every packet back in the pool.

Every usbnetd instance ends with "teardown: every packet back in the pool" and no traceback in its log.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from usbnetd.app import control

from . import bench
from .ffs_device import FfsGadget

pytestmark = pytest.mark.vm

SUBNET = 171  # 198.18.171.0/24, used by no other guest test
START_TIMEOUT = 180  # Python under TCG starts slowly; an upper bound, not an expectation


class Instance:
    """One `usbnetd run` process in the foreground, its log, and its control socket."""

    def __init__(self, busid: str, ifname: str, run_dir: Path, *extra: str) -> None:
        self.busid, self.ifname, self.run_dir = busid, ifname, run_dir
        self.log_path = run_dir / f"run-{busid}.log"
        run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, USBNETD_RUN_DIR=str(run_dir))
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "usbnetd", "run", busid, "--ifname", ifname, *extra],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def socket(self) -> str | None:
        found = glob.glob(str(self.run_dir / "*.sock"))
        return found[0] if found else None

    def wait_running(self, timeout: float = START_TIMEOUT) -> None:
        def running() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"usbnetd exited ({self.proc.returncode}) during start-up:\n{self.log}")
            return "teardown" not in self.log and f"{self.ifname}: " in self.log and \
                (bench.SYS_NET / self.ifname).exists() and self.socket() is not None
        bench.wait_for(running, timeout, f"usbnetd to drive {self.busid} as {self.ifname}", interval=0.5)

    def stats(self) -> dict:
        reply = control.request(self.socket(), "stats", timeout=10)
        assert reply.get("ok"), reply
        return reply["stats"]

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"usbnetd still running after {timeout}s:\n{self.log}") from None

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        self._log.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def ffs(udcs, host_drivers_unloaded, peers, tmp_path):
    """Factory ``ffs(kind, **options) -> FfsGadget`` (created, not bound); destroyed before the namespaces."""
    bench.kernel_driver("tun")
    made: list[FfsGadget] = []

    def make(kind: str, **kw) -> FfsGadget:
        index = len(made) + 1
        g = FfsGadget(kind, index, f"ffsdev{index}", log_dir=tmp_path, **kw)
        made.append(g)
        return g.create()

    yield make
    for g in reversed(made):
        print(f"--- device process log ({g.kind}):\n{g.stderr()}")
        g.destroy()


@pytest.fixture
def usbnetd(tmp_path):
    made: list[Instance] = []

    def start(busid: str, ifname: str, *extra: str) -> Instance:
        inst = Instance(busid, ifname, tmp_path / "run", *extra)
        made.append(inst)
        return inst

    yield start
    for inst in made:
        inst.kill()
        print(f"--- usbnetd log ({inst.busid}):\n{inst.log}")


def clean_end(inst: Instance, rc: int, expect_rc: int = 0) -> None:
    log = inst.log
    assert "Traceback" not in log, log
    assert rc == expect_rc, f"exit status {rc}, expected {expect_rc}:\n{log}"
    assert "teardown: every packet back in the pool" in log, log
    assert not (bench.SYS_NET / inst.ifname).exists(), f"{inst.ifname} left behind"
    assert inst.socket() is None, "control socket left behind"


def pings_again(peer: bench.PeerNamespace, timeout: float, what: str) -> None:
    def answered() -> bool:
        try:
            return bench.ping(peer.peer_addr, count=1, timeout=5)["received"] == 1
        except bench.BenchError:
            # ping itself outran the 5 s its -W 2 should need: the guest was starved of CPU (TCG on a loaded
            # host, right after the flood). That is one unanswered try, not the end of the retries.
            return False

    bench.wait_for(answered, timeout, f"a ping through the device {what}", interval=0.2)


def bring_up_eem(ffs, peers, usbnetd, ifname: str):
    g = ffs("eem")
    busid = g.bind()
    peer = peers(SUBNET)
    peer.take(g.tap)
    inst = usbnetd(busid, ifname)
    inst.wait_running()
    peer.address_host_side(ifname)
    bench.wait_carrier(ifname, timeout=30)
    pings_again(peer, 30, "before any fault")
    return g, peer, inst


def test_bulk_in_and_out_stalls_are_cleared_during_traffic(ffs, peers, usbnetd):
    g, peer, inst = bring_up_eem(ffs, peers, usbnetd, "ffseem0")
    pinger = subprocess.Popen(["ping", "-n", "-q", "-i", "0.05", "-W", "1", peer.peer_addr],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        st0 = inst.stats()
        assert st0["rx_usb_errors"] == 0 and st0["tx_errors"] == 0, st0

        g.command("halt_in")  # the device halts bulk IN while replies are flowing to the host
        st1 = bench.wait_for(lambda: (s := inst.stats())["rx_usb_errors"] > 0 and s, 20,
                             "usbnetd to see the bulk IN stall")
        pings_again(peer, 20, "after the bulk IN stall")
        assert "bulk IN endpoint stalled; halt cleared" in inst.log, inst.log
        print("after the IN stall:", {k: st1[k] for k in ("rx_errors", "rx_usb_errors", "rx_throttled")})

        g.command("halt_out")  # and bulk OUT, while requests are flowing to the device
        st2 = bench.wait_for(lambda: (s := inst.stats())["tx_aborted_errors"] > 0 and s, 20,
                             "usbnetd to see the bulk OUT stall")
        pings_again(peer, 20, "after the bulk OUT stall")
        assert "bulk OUT endpoint stalled; halt cleared" in inst.log, inst.log
        print("after the OUT stall:", {k: st2[k] for k in ("tx_errors", "tx_aborted_errors")})
    finally:
        pinger.terminate()
        pinger.wait()
    dev = g.stats()
    print("device:", dev)
    assert dev["counts"].get("halts") == 2, dev
    st = inst.stats()
    assert st["pool"]["in_use"] <= st["pool"]["packets"]
    clean_end(inst, inst.stop())


def _tap_counter(ifname: str, name: str) -> int:
    return int((bench.SYS_NET / ifname / "statistics" / name).read_text())


def _udp_flood(addr: str, seconds: float) -> int:
    """Send 1400-byte UDP datagrams to the discard port as fast as Python can, for `seconds`."""
    payload = bytes(1400)
    sent = 0
    end = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        while time.monotonic() < end:
            try:
                s.sendto(payload, (addr, 9))
                sent += 1
            except OSError:
                time.sleep(0.0005)  # socket buffer full: the kernel is already dropping
    return sent


# 3 s: the TX transfers wait in flight; 8 s: longer than the 5 s bulk OUT timeout, so they also time out.
@pytest.mark.parametrize("pause", [3, 8], ids=["3s", "8s-past-the-tx-timeout"])
def test_stuck_device_under_a_flood_then_traffic_flows_again(ffs, peers, usbnetd, pause):
    g, peer, inst = bring_up_eem(ffs, peers, usbnetd, "ffseem0")
    st0 = inst.stats()
    dropped0 = _tap_counter(inst.ifname, "tx_dropped")
    g.command("pause_out")  # the device stops reading bulk OUT
    stuck_at = time.monotonic()
    flood = {}
    flooder = threading.Thread(target=lambda: flood.update(sent=_udp_flood(peer.peer_addr, pause)))
    flooder.start()
    time.sleep(pause / 2)
    mid = inst.stats()  # while the device is stuck
    flooder.join()
    g.command("resume_out")
    stuck = time.monotonic() - stuck_at  # the flood slows the guest down: measured, not assumed
    pings_again(peer, 30, f"after it was stuck for {pause} s")
    st = inst.stats()
    dropped = _tap_counter(inst.ifname, "tx_dropped") - dropped0
    q = mid["queues"]["tx_submission"]
    print(f"device stuck for {stuck:.1f} s; flood: {flood['sent']} datagrams offered in {pause} s; "
          f"kernel dropped {dropped} at the TAP; "
          f"while stuck: pool {mid['pool']}, tx_submission {q}; after: tx_errors {st['tx_errors']} "
          f"tx_aborted_errors {st['tx_aborted_errors']} tx_packets {st['tx_packets'] - st0['tx_packets']}")
    assert q["high_water"] == q["capacity"], "the TX queue should have filled while the device was stuck"
    assert mid["pool"]["in_use"] >= mid["in_flight"]["tx"] + q["capacity"], mid["pool"]
    assert dropped > 0, "the flood's excess should be dropped (and counted) at the TAP"
    # The bulk OUT timeout is 5 s from submission: shorter stalls must cost nothing, longer ones time out.
    if stuck > 5.5:
        assert st["tx_aborted_errors"] > st0["tx_aborted_errors"], "TX transfers should have timed out"
        assert "bulk OUT transfers failing" in inst.log
    elif stuck < 4.5:
        assert st["tx_errors"] == st0["tx_errors"], "nothing should time out within 5 s"
    clean_end(inst, inst.stop())


def test_rndis_device_that_never_answers_initialize(ffs, usbnetd):
    g = ffs("rndis", ep0_silent=True)
    busid = g.bind()
    inst = usbnetd(busid, "ffsrndis0")
    rc = inst.wait_exit(120)
    elapsed = time.monotonic() - inst.started
    log = inst.log
    print(f"usbnetd gave up after {elapsed:.1f} s (Python start-up included):\n{log}")
    errors = [line for line in log.splitlines() if line.startswith("usbnetd: error:")]
    assert len(errors) == 1, log
    assert "RNDIS device did not take INITIALIZE" in errors[0] and "TIMEOUT" in errors[0].upper(), errors
    assert "Traceback" not in log
    assert rc == 1
    assert not (bench.SYS_NET / inst.ifname).exists(), "no interface may be left behind"
    assert inst.socket() is None, "no control socket may be left behind"
    dev = g.stats()
    assert dev["counts"].get("setup_ignored") == 1 and not dev["counts"].get("rndis_commands"), dev
    # The command's own 5 s timeout and nothing after it (no HALT to a device that never initialized).
    assert elapsed < 60


def test_rndis_device_that_stops_answering_while_running(ffs, peers, usbnetd):
    g = ffs("rndis")
    busid = g.bind()
    peer = peers(SUBNET)
    peer.take(g.tap)
    inst = usbnetd(busid, "ffsrndis0")
    inst.wait_running()
    peer.address_host_side(inst.ifname)
    bench.wait_carrier(inst.ifname, timeout=30)
    pings_again(peer, 30, "(RNDIS)")
    bench.wait_for(lambda: g.stats()["counts"].get("keepalives", 0) >= 1, 30, "a keepalive answered")
    assert bench.ping(peer.peer_addr, count=3)["received"] >= 2
    g.command("ep0_silent")
    silent_at = time.monotonic()
    rc = inst.wait_exit(60)
    took = time.monotonic() - silent_at
    log = inst.log
    print(f"usbnetd stopped {took:.1f} s after the device went silent; device: {g.stats()}")
    assert "RNDIS device stopped answering control requests" in log, log
    assert g.stats()["counts"].get("setup_ignored") == 1
    # An instance whose device stopped answering ends in error (exit 1), so Restart=on-failure brings it back.
    assert "usbnetd: error: ffsrndis0: RNDIS device stopped answering" in log, log
    clean_end(inst, rc, expect_rc=1)
    assert took < 30  # at most one keepalive interval plus the keepalive timeout, plus slack
