"""The core tier runs the real core against fakes of its two edges (fake.py); it needs no root.

Every test runs three times: with the pure-Python data path; with the C fast path (usbnetd.native) where the
framing has one (NCM, ECM), called by Python once per received transfer; and with the C path taking the bulk
IN completions itself ("native-usb": real libusb transfer structs, a stand-in for libusb_submit_transfer, the
C callback called from C as libusb calls it). All three must behave the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parents[1] / "unit"))  # tso_frames: super-frames and their checker

import fake  # noqa: E402
import pytest  # noqa: E402

from usbnetd import native  # noqa: E402


@pytest.fixture(autouse=True, params=["python", "native", "native-usb"])
def datapath(request):
    if request.param != "python" and not native.AVAILABLE:
        pytest.skip(f"the C fast path is not available: {native.WHY_NOT}")
    fake.NATIVE = request.param != "python"
    fake.USB_C = request.param == "native-usb"
    yield request.param
    fake.NATIVE = fake.USB_C = False
