"""What the two differential fuzz targets of the C fast path share (native_ncm.py: RX, native_ncm_tx.py: TX).

- `load_extension`: the package's build of a C module, or the build an environment variable names (the
  sanitizer build fuzz/native_asan.sh makes);
- `Tap`: a SOCK_SEQPACKET pair with room for a whole input's messages (one message per write or read);
- `GuardedBuffers`: buffers that end right at an inaccessible page, so a read or write past a transfer's
  end faults at once, with or without a sanitizer;
- `main`: the command line both targets take (atheris, or fuzz.py's random engine, or reproducing files).
"""

from __future__ import annotations

import ctypes
import importlib.util
import mmap
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fuzz  # noqa: E402  (fuzz.py: the corpus seeding and the fallback engine)


class Difference(AssertionError):
    """The native path and the reference disagree (the fuzzer reports it as a crash)."""


def load_extension(target: str, env_var: str, module: str, attr: str) -> Any:
    """usbnetd.native.<module>, or the build at $env_var when it is set."""
    path = os.environ.get(env_var)
    if path:
        spec = importlib.util.spec_from_file_location(f"usbnetd.native.{module}", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    from usbnetd import native

    if not native.AVAILABLE:
        raise SystemExit(f"{target}: the C extension is not available: {native.WHY_NOT}")
    mod = getattr(native, attr)
    assert mod is not None
    return mod


class Tap:
    """A TAP stand-in: `w` is the side under test, `r` the host's; room for every message of one input."""

    def __init__(self) -> None:
        self.w, self.r = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.w.setblocking(False)
        self.r.setblocking(False)
        self._buf = bytearray(1 << 18)
        self._view = memoryview(self._buf)
        try:
            self.w.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_SNDBUFFORCE", 32), 64 << 20)
        except OSError:
            self.w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 20)

    def drain(self) -> list[bytes]:
        # recv_into one preallocated buffer: recvmsg(256 KiB) allocates and frees 256 KiB per call, which under
        # ASan (PYTHONMALLOC=malloc, large blocks mmapped, poisoned and quarantined) cost about 55 us a call
        # and was the harness's largest cost. MSG_TRUNC makes the kernel return a message's real length, so
        # an oversized message is still caught.
        out = []
        buf, view, recv_into = self._buf, self._view, self.r.recv_into
        while True:
            try:
                n = recv_into(buf, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                return out
            if n > len(buf):
                raise Difference("a message longer than 256 KiB")
            out.append(bytes(view[:n]))

    def close(self) -> None:
        self.w.close()
        self.r.close()


class GuardedBuffers:
    """Buffers that end right at an inaccessible page: reading even one byte past a transfer's `length`
    faults at once (SIGSEGV), with or without a sanitizer. `count` regions of up to `size` bytes."""

    def __init__(self, count: int = 2, size: int = 1 << 17) -> None:
        page = mmap.PAGESIZE
        self.size = -(-size // page) * page
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.maps = []
        for _ in range(count):
            m = mmap.mmap(-1, self.size + page)
            addr = ctypes.addressof(ctypes.c_char.from_buffer(m))  # keeps m exported: it is never closed
            if libc.mprotect(addr + self.size, page, 0) != 0:  # PROT_NONE
                raise OSError(ctypes.get_errno(), "mprotect")
            self.maps.append(m)

    def place(self, i: int, data: bytes) -> memoryview:
        """`data` in region i, ending where the inaccessible page starts."""
        m = self.maps[i]
        start = self.size - len(data)
        m[start : self.size] = data
        return memoryview(m)[start : self.size]


def corpus(dirs: list[str]) -> list[bytes]:
    """Every input in the given corpus directories (the random engine's parents: it has no coverage feedback,
    so a corpus grown by the coverage-guided run is what it should mutate)."""
    out = []
    for d in dirs:
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            with open(os.path.join(d, name), "rb") as f:
                out.append(f.read())
    return out


def checker(make_harness: Callable[[], Any]) -> Callable[[bytes], None]:
    """The per-input callback: one harness, built on first use; every input written first to
    $USBNETD_FUZZ_LAST_INPUT when set (native_asan.sh: a sanitizer abort keeps no input otherwise).

    The file is opened once and rewritten in place (pwrite, then ftruncate to the input's length): the same
    bytes on disk before the input runs as an open/write/close per input gave, at 3 us instead of 120 us."""
    last_input = os.environ.get("USBNETD_FUZZ_LAST_INPUT")
    harness = None
    fd = -1

    def check(data: bytes) -> None:
        nonlocal harness, fd
        if harness is None:
            harness = make_harness()
        if last_input:
            if fd < 0:
                fd = os.open(last_input, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        harness.check(data)

    return check


def main(argv: list[str], target: str, check: Callable[[bytes], None], seeds: Callable[[], list[bytes]],
         extension: Callable[[], Any], instrument: Callable[[Any], None], max_len: int) -> int:
    """`--engine=random` (fuzz.py's mutation engine; files given instead of directories are reproduced,
    each once) or atheris, with `instrument(atheris)` importing under coverage what the reference runs."""
    engine = "atheris"
    args = []
    for a in argv[1:]:
        if a.startswith("--engine="):
            engine = a.split("=", 1)[1]
        else:
            args.append(a)
    if engine == "random":
        print(f"{target}: extension {extension().__file__}", file=sys.stderr, flush=True)
        paths = [a for a in args if not a.startswith("-")]
        if paths and all(os.path.isfile(p) for p in paths):  # reproduce: each file once
            for p in paths:
                with open(p, "rb") as f:
                    check(f.read())
                print(f"{target}: {p}: no difference", file=sys.stderr)
            return 0
        return fuzz._random_engine(target, check, seeds() + corpus(paths), args)

    import atheris

    # coverage of the reference's Python (the C code is not instrumented): its branches are the C code's
    instrument(atheris)
    print(f"{target}: extension {extension().__file__}", file=sys.stderr, flush=True)

    dirs = [a for a in args if not a.startswith("-")]
    if not dirs:
        args.append(fuzz._seed_dir(os.path.join(HERE, "corpus", target), seeds()))
    for d in dirs:
        if not os.path.isfile(d) and not (os.path.isdir(d) and os.listdir(d)):
            fuzz._seed_dir(d, seeds())
    if not any(a.startswith("-artifact_prefix=") for a in args):
        art = os.path.join(HERE, "artifacts", target)
        os.makedirs(art, exist_ok=True)
        args.insert(0, f"-artifact_prefix={art}/")
    if not any(a.startswith("-max_len=") for a in args):
        args.insert(0, f"-max_len={max_len}")
    atheris.Setup([argv[0], *args], check)
    atheris.Fuzz()
    return 0
