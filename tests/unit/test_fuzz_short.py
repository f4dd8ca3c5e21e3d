"""A short fuzzing run of every decoder (fuzz/targets.py) in CI; `fuzz/run.sh long` is the long one.

Each target gets RUNS inputs from atheris (coverage-guided, seeded with valid frames from our builders,
fixed -seed so a failure reproduces). Any contract violation the harness finds — an exception other than
the decoder's documented rejection, a read past the transfer, a rejection not counted — fails the test with
libFuzzer's report and the crash input's path. Without atheris (it ships x86_64 wheels only) the harness's
own mutation engine runs the same checks instead, and says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FUZZ = os.path.join(REPO, "fuzz", "fuzz.py")
RUNS = 20000
TARGETS = ["ncm16", "ncm32", "rndis-control", "rndis-data", "eem", "cdc-functional", "config", "notifications",
           "ax88179", "r8152", "ipheth"]


def test_every_target_is_run_here():
    out = subprocess.run([sys.executable, FUZZ, "list"], capture_output=True, text=True, check=True).stdout
    assert out.split() == TARGETS


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_short(target, tmp_path):
    if find_spec("atheris") is not None:
        args = [f"-runs={RUNS}", "-seed=1", "-print_final_stats=1", f"-artifact_prefix={tmp_path}/",
                str(tmp_path / "corpus")]
        done = f"Done {RUNS} runs"
    else:
        print(f"atheris is not installed for {sys.executable}: using fuzz.py's own mutation engine")
        args = ["--engine=random", f"-runs={RUNS}", "-seed=1"]
        done = f"fuzz: {target}: {RUNS} inputs"
    r = subprocess.run([sys.executable, FUZZ, target, *args], capture_output=True, text=True, timeout=240,
                       cwd=str(tmp_path))
    report = r.stdout[-3000:] + r.stderr[-6000:]
    assert r.returncode == 0, f"{target}: fuzzing found a problem (exit {r.returncode}):\n{report}"
    assert done in r.stderr, report
    assert not [f for f in os.listdir(tmp_path) if f.startswith("crash-")], report
