"""Fixtures for tests that run inside the VM guest, and the report the host-side runner reads back.

Owns: refusing to run outside the guest; the per-test ``gadgets``/``peer``/``usbnet`` fixtures with
their teardown (gadgets destroyed, namespaces deleted, kernel host drivers removed); and a plugin that
writes one JSON line per test phase to ``$USBNETD_VM_REPORT`` for ``tests/vm/test_vm.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import bench

IN_GUEST = os.environ.get("USBNETD_VM_GUEST") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_GUEST:
        return
    skip = pytest.mark.skip(
        reason="VM guest test: run it through tests/vm/test_vm.py or `python -m tests.vm.harness pytest`"
    )
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(skip)


# -- report for the host ----------------------------------------------------------------------------


def _longrepr_text(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    return str(report.longrepr) if report.longrepr else ""


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get("USBNETD_VM_REPORT")
    if not path:
        return
    entry = {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "duration": report.duration,
        "longrepr": _longrepr_text(report),
        "sections": [[name, text] for name, text in report.sections],
        "wasxfail": getattr(report, "wasxfail", None),
    }
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    path = os.environ.get("USBNETD_VM_REPORT")
    if path and report.failed:
        with open(path, "a") as f:
            f.write(json.dumps({"nodeid": report.nodeid, "when": "collect", "outcome": "failed",
                                "longrepr": str(report.longrepr), "sections": []}) + "\n")


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def udcs() -> list[str]:
    """dummy_hcd's UDCs (loads libcomposite, the gadget functions and dummy_hcd once per session)."""
    if not IN_GUEST:
        pytest.skip("not inside the VM guest")
    # Leftovers of an aborted earlier session in the same boot would hold UDCs and names.
    for g in bench.CONFIGFS.glob(f"{bench.GADGET_PREFIX}*"):
        bench.Gadget._remove_tree(g)
    for ns in Path("/run/netns").glob(f"{bench.NETNS_PREFIX}*"):
        bench.run("ip", "netns", "del", ns.name, check=False)
    return bench.ensure_dummy_hcd()


@pytest.fixture
def host_drivers_unloaded(udcs: list[str]) -> Iterator[None]:
    """No kernel USB host network driver loaded before and after the test."""
    bench.unload_host_drivers()
    yield
    bench.unload_host_drivers()


@pytest.fixture
def gadgets(
    udcs: list[str], host_drivers_unloaded: None, peers: Callable[[int], bench.PeerNamespace]
) -> Iterator[Callable[..., bench.Gadget]]:
    """Factory ``gadgets(function, vid=None, pid=None, serial=None) -> Gadget`` (created, not bound).

    Each gadget gets its own index (1, 2, ...) and so its own name, serial, MACs and UDC; all are
    destroyed at teardown (unbound first), before the peer namespaces go.
    """
    made: list[bench.Gadget] = []

    def make(function: str, vid: int | None = None, pid: int | None = None,
             serial: str | None = None) -> bench.Gadget:
        g = bench.Gadget.create(function, vid, pid, serial, index=len(made) + 1)
        made.append(g)
        return g

    yield make
    errors = []
    for g in reversed(made):
        try:
            g.destroy()
        except OSError as e:
            errors.append(f"{g}: {e}")
    if errors:
        pytest.fail("gadget teardown failed: " + "; ".join(errors))


@pytest.fixture
def peers() -> Iterator[Callable[[int], bench.PeerNamespace]]:
    """Factory ``peers(subnet) -> PeerNamespace`` (created), deleted at teardown."""
    made: list[bench.PeerNamespace] = []

    def make(subnet: int) -> bench.PeerNamespace:
        ns = bench.PeerNamespace(subnet).create()
        made.append(ns)
        return ns

    yield make
    for ns in reversed(made):
        ns.delete()


@pytest.fixture
def usbnet(
    udcs: list[str], host_drivers_unloaded: None, peers: Callable[[int], bench.PeerNamespace]
) -> Iterator[bench.UsbNet]:
    """QEMU's usb-net, enumerated; put back in its default (ECM) configuration at teardown."""
    dev = bench.UsbNet()
    dev.wait_enumerated()
    yield dev
    dev.set_configuration(bench.UsbNet.DEFAULT_CONFIG)
