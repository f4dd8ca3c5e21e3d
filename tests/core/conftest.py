"""The core tier runs the real core against fakes of its two edges (fake.py); it needs no root.

Every test runs twice: with the pure-Python data path and with the C fast path (usbnetd.native) where the
framing has one (NCM, ECM); the two must behave the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import fake  # noqa: E402
import pytest  # noqa: E402

from usbnetd import native  # noqa: E402


@pytest.fixture(autouse=True, params=["python", "native"])
def datapath(request):
    if request.param == "native" and not native.AVAILABLE:
        pytest.skip(f"the C fast path is not available: {native.WHY_NOT}")
    fake.NATIVE = request.param == "native"
    yield request.param
    fake.NATIVE = False
