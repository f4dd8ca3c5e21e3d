"""Build of the optional C extensions `usbnetd.native._fastpath` (RX), `usbnetd.native._fasttx` (NCM TX) and
`usbnetd.native._frametx` (one-frame-per-transfer TX); everything else is in pyproject.toml.

`optional=True`: where the extension cannot be compiled (no compiler, no Python headers: Debian's gcc and
python3-dev), the build says so and installs without it, and usbnetd runs its pure-Python path
(`usbnetd.native.AVAILABLE` is False, `WHY_NOT` says why). `pip install -e .` builds it in place, next to
its source in src/usbnetd/native/.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "usbnetd.native._fastpath",
            sources=["src/usbnetd/native/_fastpath.c"],
            depends=[f"src/usbnetd/native/{h}" for h in ("burst.h", "libusb_abi.h", "pyglue.h")],
            extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
        Extension(
            "usbnetd.native._fasttx",
            sources=["src/usbnetd/native/_fasttx.c"],
            depends=[f"src/usbnetd/native/{h}" for h in ("burst.h", "libusb_abi.h", "pyglue.h", "tso.h", "txpump.h")],
            extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
        Extension(
            "usbnetd.native._frametx",
            sources=["src/usbnetd/native/_frametx.c"],
            depends=[f"src/usbnetd/native/{h}" for h in ("burst.h", "libusb_abi.h", "pyglue.h", "tso.h", "txpump.h")],
            extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
    ],
)
