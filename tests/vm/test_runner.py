"""Host-only checks of the VM runner's plumbing (no guest): the guest report plugin and ``judge``.

Runs a throwaway pytest session with the guest conftest loaded as a plugin, over tests that pass, fail,
skip, xfail and error in setup, and checks that ``test_vm.judge`` turns each report into the outcome
the host must show. This is what makes a guest failure a host failure and a guest skip a host skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from . import harness
from .test_vm import judge

SAMPLE = textwrap.dedent(
    """
    import pytest

    def test_ok():
        print("hello from the guest")

    def test_bad():
        assert 1 == 2, "guest says no"

    def test_skip():
        pytest.skip("no such device")

    @pytest.mark.xfail(reason="known bug")
    def test_xfail():
        assert False

    @pytest.fixture
    def broken():
        raise RuntimeError("fixture exploded")

    def test_setup_error(broken):
        pass
    """
)


def test_report_plugin_and_judge(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    report = tmp_path / "report.jsonl"
    env = dict(os.environ, USBNETD_VM_REPORT=str(report), PYTHONPATH=str(harness.REPO / "tests"))
    env.pop("USBNETD_VM_GUEST", None)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "vm.guest.conftest", "-p", "no:cacheprovider", "-q",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_sample.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    entries: dict[str, list[dict]] = {}
    for line in report.read_text().splitlines():
        e = json.loads(line)
        entries.setdefault(e["nodeid"].split("::")[-1], []).append(e)

    assert judge(entries["test_ok"]) == ("passed", "")
    assert any("hello from the guest" in t for e in entries["test_ok"] for _, t in e["sections"])
    kind, text = judge(entries["test_bad"])
    assert kind == "failed" and "guest says no" in text
    assert judge(entries["test_skip"]) == ("skipped", "Skipped: no such device")
    assert judge(entries["test_xfail"]) == ("xfailed", "known bug")
    kind, text = judge(entries["test_setup_error"])
    assert kind == "failed" and "fixture exploded" in text and "[guest setup]" in text
    assert judge([]) == ("missing", "the guest reported nothing for this test")
