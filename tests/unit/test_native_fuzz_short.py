"""A short differential fuzzing run of the C fast path against the Python reference, in CI.

fuzz/native_ncm.py (RX: NcmRx against NtbDecoder + TapPort), fuzz/native_ncm_tx.py (TX: NcmTx against
NtbBuilder + TapPort.read_into), fuzz/native_usb.py (NcmRx's C bulk IN completions usb_arm/usb_end/usb_disarm
on libusb transfer structs against the Python completions) and fuzz/native_frame_tx.py (the FrameTx pump
against TapPort.read_into + OneFramePerTransfer + BulkPipe + DataPath._on_tx) and fuzz/native_ncm_pump.py (the
NcmPump against NtbBuilder + TapPort + BulkPipe + DataPath's flush rules and _on_tx) fail on any difference in bytes
written, submitted or counted, and on any fault of the C code; buffers end at an inaccessible page, so a read
past a transfer's length (for the completions: past its actual_length) faults at once. The long runs,
also under ASan/UBSan (fuzz/native_asan.sh), are recorded in docs/reliability.md.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from importlib.util import find_spec

import pytest

from usbnetd import native

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Inputs per target: a few seconds each; the NCM TX target costs more per input (every NTB hashed).
TARGETS = {"native_ncm.py": 20000, "native_ncm_tx.py": 3000, "native_usb.py": 10000, "native_frame_tx.py": 5000,
           "native_ncm_pump.py": 3000}


@pytest.mark.parametrize("script", list(TARGETS))
def test_native_fuzz_short(script, tmp_path):
    if not native.AVAILABLE:
        pytest.skip(f"the C fast path is not available: {native.WHY_NOT}")
    runs = TARGETS[script]
    if find_spec("atheris") is not None:
        # libFuzzer's RSS limit reads getrusage's ru_maxrss, which a child started with vfork (subprocess does)
        # inherits from this process at exec: after memory-hungry tests in the same pytest run it starts above
        # the default 2048 MB. The limit is kept, counted from this process's own peak.
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        args = [f"-runs={runs}", "-seed=1", f"-rss_limit_mb={peak_mb + 2048}", f"-artifact_prefix={tmp_path}/",
                str(tmp_path / "corpus")]
        os.makedirs(tmp_path / "corpus")
    else:
        print(f"atheris is not installed for {sys.executable}: using fuzz.py's own mutation engine")
        args = ["--engine=random", f"-runs={runs}", "-seed=1"]
    r = subprocess.run([sys.executable, os.path.join(REPO, "fuzz", script), *args], capture_output=True,
                       text=True, timeout=300, cwd=str(tmp_path))
    report = r.stdout[-3000:] + r.stderr[-6000:]
    assert r.returncode == 0, f"{script}: a difference or a fault (exit {r.returncode}):\n{report}"
    assert not [f for f in os.listdir(tmp_path) if f.startswith("crash-")], report
