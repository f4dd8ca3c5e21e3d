"""The RTT floor tool (bench/vm.py --rtt-floor): the relay's C compiles without a warning, and the table puts
each round's medians against the kernel's in the same round.

The relay itself runs only in the VM guest (`bench/vm.py --rtt-floor`, docs/performance.md "The floor of any
usbfs driver"), against the ECM gadget; these tests keep the source and the table from rotting in between.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RELAY = REPO / "bench" / "micro" / "usbfs_relay.c"


def vm_module():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        return importlib.import_module("vm")
    finally:
        sys.path.remove(str(REPO / "bench"))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc on this machine to compile usbfs_relay.c")
def test_the_relay_compiles_without_warnings(tmp_path: Path) -> None:
    r = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(tmp_path / "relay"),
                        str(RELAY)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    usage = subprocess.run([str(tmp_path / "relay")], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: usbfs_relay" in usage.stderr
    usage = subprocess.run([str(tmp_path / "relay"), "--spin", "/dev/null"], capture_output=True, text=True)
    assert usage.returncode == 2 and "[--spin]" in usage.stderr


def test_the_table_compares_each_round_with_its_own_kernel_and_takes_medians() -> None:
    vm = vm_module()
    rounds = [
        {"usbnetd": {"median_ms": 2.0, "min_ms": 1.0}, "relay": {"median_ms": 1.5, "min_ms": 0.9},
         "relay-spin": {"median_ms": 1.25, "min_ms": 0.8}, "kernel": {"median_ms": 1.0, "min_ms": 0.5}},
        {"usbnetd": {"median_ms": 3.0, "min_ms": 1.2}, "relay": {"median_ms": 2.4, "min_ms": 1.1},
         "relay-spin": {"median_ms": 1.6, "min_ms": 0.9}, "kernel": {"median_ms": 0.8, "min_ms": 0.6}},
        {"usbnetd": {"median_ms": 2.2, "min_ms": 1.1}, "relay": {"median_ms": 1.8, "min_ms": 1.0},
         "relay-spin": {"median_ms": 1.4, "min_ms": 0.9}, "kernel": {"median_ms": 1.1, "min_ms": 0.6}},
    ]
    text = vm.rtt_floor_table({"rounds": rounds})
    lines = text.splitlines()
    first = next(line for line in lines if line.lstrip().startswith("1 "))
    assert "2.00x" in first and "1.50x" in first and "1.25x" in first  # 2.0, 1.5 and 1.25 / 1.0
    second = next(line for line in lines if line.lstrip().startswith("2 "))
    assert "3.75x" in second and "3.00x" in second and "2.00x" in second  # 3.0, 2.4 and 1.6 / 0.8
    last = next(line for line in lines if line.lstrip().startswith("median"))
    # medians over the rounds: usbnetd 2.2, relay 1.8, relay-spin 1.4, kernel 1.0
    assert "2.200" in last and "1.800" in last and "1.400" in last and "1.000" in last
    assert "2.20x" in last and "1.80x" in last and "1.40x" in last
    assert "<= 1.3x" in text


def test_a_round_with_a_missing_side_shows_a_dash_not_a_ratio() -> None:
    vm = vm_module()
    text = vm.rtt_floor_table({"rounds": [{"usbnetd": {"median_ms": 2.0, "min_ms": 1.0},
                                           "kernel": {"median_ms": 1.0, "min_ms": 0.5}}]})
    row = next(line for line in text.splitlines() if line.lstrip().startswith("1 "))
    assert "2.00x" in row and row.count("-") >= 4  # relay and relay-spin: "- / -" each, and their ratios


def test_the_table_takes_the_runs_own_sides_with_the_busy_polling_usbnetd() -> None:
    vm = vm_module()
    data = {"sides": ["usbnetd", "usbnetd-busy", "kernel"],
            "rounds": [{"usbnetd": {"median_ms": 2.0, "min_ms": 1.0}, "usbnetd-busy": {"median_ms": 1.2, "min_ms": 0.7},
                        "kernel": {"median_ms": 1.0, "min_ms": 0.5}}]}
    text = vm.rtt_floor_table(data)
    assert "usbnetd-busy / kernel" in text and "relay" not in text
    row = next(line for line in text.splitlines() if line.lstrip().startswith("1 "))
    assert "2.00x" in row and "1.20x" in row
