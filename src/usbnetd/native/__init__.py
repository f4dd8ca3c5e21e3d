"""Native (C) fast paths for usbnetd's per-frame work, and whether they can be used.

This package owns the C extension `usbnetd.native._fastpath` (built from `_fastpath.c` by setup.py, optional:
a machine without a compiler installs and runs the pure-Python path) and the decision to use it:

- `AVAILABLE`: the extension imported and matches this source tree's API version;
- `WHY_NOT`: why not (the import error, a stale build, or that `USBNETD_PURE_PYTHON` forced the Python path);
  None when AVAILABLE;
- `fastpath`: the module itself when AVAILABLE, else None; `NcmRx` its RX class (see `_fastpath.c`'s header
  comment for the API: NTB walk, GRO and TAP writes, one call per transfer and one per batch).

`USBNETD_PURE_PYTHON=1` (any value but empty or "0") forces the pure-Python path, e.g. to compare the two or
to rule the C code out. The pure-Python modules (protocols/ncm_codec.py, netdev/gro.py, netdev/port.py) stay
the reference: the C code must write the same bytes and count the same way (tests/unit/test_native_*.py).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

API_VERSION = 2  # must equal _fastpath.API_VERSION: an in-place build older than the C source is refused

AVAILABLE: bool = False
WHY_NOT: str | None = None
fastpath: ModuleType | None = None
NcmRx: Any = None


def _load() -> tuple[ModuleType | None, str | None]:
    forced = os.environ.get("USBNETD_PURE_PYTHON", "")
    if forced not in ("", "0"):
        return None, f"forced: USBNETD_PURE_PYTHON={forced}"
    try:
        _fastpath = importlib.import_module(f"{__name__}._fastpath")
    except ModuleNotFoundError:
        return None, ("usbnetd.native._fastpath is not built (`pip install -e .` builds it; it needs a C compiler "
                      "and the Python headers: Debian's gcc and python3-dev)")
    except ImportError as exc:
        return None, f"usbnetd.native._fastpath does not load: {exc}"
    version = getattr(_fastpath, "API_VERSION", None)
    if version != API_VERSION:
        return None, (f"usbnetd.native._fastpath is a stale build (API {version}, this source wants {API_VERSION}); "
                      "rebuild with `pip install -e .`")
    return _fastpath, None


fastpath, WHY_NOT = _load()
AVAILABLE = fastpath is not None
if fastpath is not None:
    NcmRx = fastpath.NcmRx
