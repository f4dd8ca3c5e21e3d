"""Integration fixtures: root, fresh network namespaces, usbnetd driving the simulated adapter natively.

Every test gets its own namespaces (one for usbnetd's interface, one for the simulated wire's peer end) and
its own control-socket directory, so nothing touches the host's network and tests cannot see each other.
Addresses come from 198.18.0.0/15, the benchmarking range.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="integration tests need root (network namespaces)")


def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name
        sh("ip", "netns", "add", name)
        self.run("ip", "link", "set", "lo", "up")

    def run(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.name, *args, check=check, **kw)

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], **kw)

    def has_link(self, ifname: str) -> bool:
        return self.run("ip", "link", "show", ifname, check=False).returncode == 0

    def delete(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


@pytest.fixture
def netns_pair():
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (network namespaces)")
    if shutil.which("ip") is None:
        pytest.fail("iproute2's ip is missing; scripts/test.sh installs it")
    tag = uuid.uuid4().hex[:6]
    a, b = Netns(f"unh{tag}"), Netns(f"unp{tag}")
    try:
        yield a, b
    finally:
        a.delete()
        b.delete()


class Usbnetd:
    """A `usbnetd run` process inside namespace `ns`, with its peer wire moved into `peer_ns`."""

    def __init__(self, ns: Netns, peer_ns: Netns, device: str, run_dir: str, ifname: str = "usbn0",
                 peer: str = "simw0", extra: tuple[str, ...] = (), wrapper: tuple[str, ...] = ()) -> None:
        self.ns, self.peer_ns, self.ifname, self.peer = ns, peer_ns, ifname, peer
        self.env = dict(os.environ, USBNETD_RUN_DIR=run_dir)
        self.log_path = os.path.join(run_dir, "run.log")
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        # `wrapper` runs before python inside the namespace (e.g. setpriv to reduce capabilities)
        self.proc = ns.popen(*wrapper, sys.executable, "-m", "usbnetd", "run", device, "--ifname", ifname,
                             "--sim-peer", peer, "-v", *extra, stdout=self.log, stderr=subprocess.STDOUT,
                             env=self.env)
        deadline = time.monotonic() + 20
        while not (ns.has_link(peer) and ns.has_link(ifname)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"usbnetd did not start:\n{self.output()}")
            time.sleep(0.05)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.ns.run(sys.executable, "-m", "usbnetd", *args, env=self.env, check=check)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"usbnetd ignored SIGTERM:\n{self.output()}") from None
        self.log.close()
        return self.proc.returncode


def wire_up(u: Usbnetd, subnet: int) -> tuple[str, str]:
    """Move the peer into its namespace, address both ends; return (usbnetd address, peer address)."""
    host_ip, peer_ip = f"198.18.{subnet}.1", f"198.18.{subnet}.2"
    u.ns.run("ip", "link", "set", u.peer, "netns", u.peer_ns.name)
    u.peer_ns.run("ip", "addr", "add", f"{peer_ip}/24", "dev", u.peer)
    u.peer_ns.run("ip", "link", "set", u.peer, "up")
    u.ns.run("ip", "addr", "add", f"{host_ip}/24", "dev", u.ifname)
    return host_ip, peer_ip
