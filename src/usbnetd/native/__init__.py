"""Native (C) fast paths for usbnetd's per-frame work, and whether they can be used.

This package owns the C extensions `usbnetd.native._fastpath` (RX, from `_fastpath.c`, with the bulk IN
completions), `usbnetd.native._fasttx` (NCM TX, from `_fasttx.c`) and `usbnetd.native._frametx` (ECM / CDC
subset / one-packet RNDIS TX with its bulk OUT submissions and completions, from `_frametx.c`), all built by
setup.py, optional: a machine without a compiler installs and runs the pure-Python path. And the decision to
use them, one for all:

- `AVAILABLE`: both extensions imported and each matches this source tree's API version for it;
- `WHY_NOT`: why not (the first module's import error or stale build, or that `USBNETD_PURE_PYTHON` forced the
  Python path); None when AVAILABLE;
- `fastpath`, `fasttx`: the modules themselves when AVAILABLE, else None; `NcmRx` the RX class (see
  `_fastpath.c`'s docstring for the API: NTB walk, GRO and TAP writes, one call per transfer and one per
  batch), `NcmTx` the TX class (`_fasttx.c`'s docstring: TAP reads straight into the NTB being built, one call
  per wake-up; with `offload`, TCP super-frames cut into it and partial checksums completed, netdev/gso.py's
  rules), `NcmPump` the NCM TX pump (an NcmTx framing straight into bulk OUT transfers it owns, submitted and
  completed in C), `FrameTx` the one-frame-per-transfer TX pump. All None unless AVAILABLE: a half-built or
  half-stale extension is not half used.

`USBNETD_PURE_PYTHON=1` (any value but empty or "0") forces the pure-Python path, e.g. to compare the two or
to rule the C code out. The pure-Python modules (protocols/ncm_codec.py, netdev/gro.py, netdev/gso.py,
netdev/port.py) stay the reference: the C code must write the same bytes and count the same way
(tests/unit/test_native_*.py).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

API_VERSION = 7  # must equal _fastpath.API_VERSION: an older in-place build is refused (6: burst; 7: busy_poll_us)
TX_API_VERSION = 3  # must equal _fasttx.API_VERSION (2: offload, TSO; 3: NcmPump)
FRAME_TX_API_VERSION = 3  # must equal _frametx.API_VERSION (2: burst_hooks; 3: framing, RNDIS)

AVAILABLE: bool = False
WHY_NOT: str | None = None
fastpath: ModuleType | None = None
fasttx: ModuleType | None = None
frametx: ModuleType | None = None
NcmRx: Any = None
NcmTx: Any = None
NcmPump: Any = None
FrameTx: Any = None


def _load_one(name: str, want: int) -> tuple[ModuleType | None, str | None]:
    full = f"{__name__}.{name}"
    try:
        mod = importlib.import_module(full)
    except ModuleNotFoundError:
        return None, (f"{full} is not built (`pip install -e .` builds it; it needs a C compiler "
                      "and the Python headers: Debian's gcc and python3-dev)")
    except ImportError as exc:
        return None, f"{full} does not load: {exc}"
    version = getattr(mod, "API_VERSION", None)
    if version != want:
        return None, (f"{full} is a stale build (API {version}, this source wants {want}); "
                      "rebuild with `pip install -e .`")
    return mod, None


def _load() -> tuple[list[ModuleType] | None, str | None]:
    forced = os.environ.get("USBNETD_PURE_PYTHON", "")
    if forced not in ("", "0"):
        return None, f"forced: USBNETD_PURE_PYTHON={forced}"
    mods = []
    for name, want in (("_fastpath", API_VERSION), ("_fasttx", TX_API_VERSION), ("_frametx", FRAME_TX_API_VERSION)):
        mod, why = _load_one(name, want)
        if mod is None:
            return None, why
        mods.append(mod)
    return mods, None


def usb_layout_matches(have: dict[str, int]) -> bool:
    """Whether python-libusb1's struct libusb_transfer (`have`: field -> offset, usb/bulk.transfer_layout) is
    the one the three C modules that take USB completions assume (libusb_abi.h)."""
    if fastpath is None or fasttx is None or frametx is None:
        return False
    return all(have.get(k) == v for m in (fastpath, fasttx, frametx) for k, v in m.usb_layout().items())


# USBNETD_NATIVE_COMPLETIONS=0 keeps the USB completions in Python (the C code still decodes and frames):
# for comparing the two in one benchmark run, or ruling the C completions out.
COMPLETIONS = os.environ.get("USBNETD_NATIVE_COMPLETIONS", "") != "0"
# USBNETD_NATIVE_LOOP=0 keeps every wake-up in the Python event loop (no _fastpath.burst), for the same reasons.
LOOP = os.environ.get("USBNETD_NATIVE_LOOP", "") != "0"

_mods, WHY_NOT = _load()
if _mods is not None:
    fastpath, fasttx, frametx = _mods
    AVAILABLE = True
    NcmRx = fastpath.NcmRx
    NcmTx = fasttx.NcmTx
    NcmPump = fasttx.NcmPump
    FrameTx = frametx.FrameTx
