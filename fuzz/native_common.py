"""What the differential fuzz targets of the C fast path share (native_ncm.py: RX, native_ncm_tx.py: NcmTx,
native_usb.py: the bulk IN completions, native_frame_tx.py: FrameTx, native_ncm_pump.py: NcmPump).

- `load_extension`: the package's build of a C module, or the build an environment variable names (the
  sanitizer build fuzz/native_asan.sh makes);
- `Tap`: a SOCK_SEQPACKET pair with room for a whole input's messages (one message per write or read), and
  `Taps`: one per side, reused from input to input (emptied first, replaced only when an input closed it);
- `GuardedBuffers`: buffers that end right at an inaccessible page, so a read or write past a transfer's
  end faults at once, with or without a sanitizer;
- `Hits`: the stand-in for a rate-limited error log (what was logged, in order);
- `Side`, `UsbTx`: the bulk OUT stand-ins of the TX pump targets (libusb transfer structs, a
  libusb_submit_transfer / libusb_cancel_transfer called from C, completions as libusb delivers them), and
  the reference's BulkPipe and packet pool, made once and reset for every input;
- `main`: the command line every target takes (atheris, or fuzz.py's random engine, or reproducing files).

Set-up is made once and reset per input, not made per input: under ASan with PYTHONMALLOC=malloc every
Python allocation is a sanitizer heap block, and the per-input set-up (socket pairs, pools, pipes, classes)
was a third of an input's time in the TX targets.
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

    # one receive buffer for every pair: a 256 KiB bytearray per pair cost 26 us (ASan's large-block path)
    # each time an input's EOF made a new pair necessary
    _buf = bytearray(1 << 18)
    _view = memoryview(_buf)

    def __init__(self) -> None:
        self.w, self.r = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.w.setblocking(False)
        self.r.setblocking(False)
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

    def empty(self) -> None:
        """Discard every message waiting (no copies)."""
        buf, recv_into = self._buf, self.r.recv_into
        while True:
            try:
                recv_into(buf, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                return

    def close(self) -> None:
        self.w.close()
        self.r.close()


class Taps:
    """One TAP stand-in per side name for every input, emptied first, instead of a new pair per input (a
    socket pair and its 64 MiB SO_SNDBUFFORCE cost 190 us under ASan); a pair whose writer an input closed
    (EOF) is replaced. Each input still starts from an empty, open pair, as a new one would be."""

    def __init__(self) -> None:
        self._taps: dict[str, Tap] = {}

    def __call__(self, name: str) -> Tap:
        tap = self._taps.get(name)
        if tap is None or tap.w.fileno() < 0:
            if tap is not None:
                tap.close()
            tap = self._taps[name] = Tap()
        else:
            tap.empty()  # what the last input left unread (budgets run out, failing reads)
        return tap


class Hits:
    """Stands in for a rate-limited error log (TapPort.read_errors, DataPath._tx_errors): what was logged."""

    __slots__ = ("out",)

    def __init__(self, out: list) -> None:
        self.out = out

    def hit(self, detail: object = "", n: int = 1) -> None:
        self.out.extend([str(detail)] * n)


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


# --- the bulk OUT stand-ins of the TX pump targets (native_frame_tx.py, native_ncm_pump.py) -------------------

STATUSES = (1, 2, 3, 4, 5, 6, -1, 0x7FFFFFFF)  # libusb_transfer_status values, and ones libusb never sends
SUBMIT_ERRORS = (-4, -1, -6, 7)  # LIBUSB_ERROR_NO_DEVICE, _IO, _BUSY, and a value libusb does not return
COMPLETED, CANCELLED = 0, 3
_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)  # libusb_submit_transfer / libusb_cancel_transfer


class LibusbCancel:
    """python-libusb1's module with libusb_cancel_transfer replaced (BulkPipe.watchdog and cancel_all call it
    directly; the transfers here are on no device)."""

    def __init__(self, real: Any, cancel: Any) -> None:
        self._real = real
        self.libusb_cancel_transfer = cancel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class Side:
    """One side's USB stand-ins: the transfers in flight (by address, in submission order), what was submitted,
    what was cancelled, the libusb error the next submission returns."""

    def __init__(self, libusb1: Any) -> None:
        self.libusb1 = libusb1
        self.in_flight: list[int] = []
        self.sub_no: dict[int, int] = {}  # address -> the number of its submission
        self.submitted: list[tuple[bytes, int, bool]] = []
        self.cancelled: list[int] = []  # submission numbers
        self.to_complete: list[int] = []  # cancelled, to complete as such after the call
        self.fail_next = 0

    def submit(self, address: int) -> int:
        if self.fail_next:
            rc, self.fail_next = self.fail_next, 0
            return rc
        s = self.libusb1.libusb_transfer.from_address(address)
        # the bytes themselves, not a digest: ctypes.string_at is one copy (a memcpy ASan checks against the
        # C buffer's bounds), and the lists are compared once per input
        data = ctypes.string_at(s.buffer, s.length) if s.length > 0 else b""
        self.sub_no[address] = len(self.submitted)
        self.submitted.append((data, s.length, bool(s.flags & (1 << 3))))
        self.in_flight.append(address)
        return 0

    def cancel(self, address: int) -> int:
        if address not in self.in_flight:
            return -5  # LIBUSB_ERROR_NOT_FOUND
        self.in_flight.remove(address)
        self.cancelled.append(self.sub_no[address])
        self.to_complete.append(address)
        return 0


class UsbTx:
    """What both TX pump harnesses make once: MAX libusb transfer structs for the C pump (real ones, from
    libusb_alloc_transfer, on no device), C-callable libusb_submit_transfer / libusb_cancel_transfer
    stand-ins that record into the side in progress, a no-op callback, the read-failing fd, the TAP
    stand-ins; for the reference, one BulkPipe per transfer count and one packet pool, reset for every input
    (`pipe`, `pool`) instead of made anew (a BulkPipe allocates its libusb transfers and a ctypes callback,
    a pool its buffer: 200 us an input under ASan)."""

    # BulkPipe's state as __init__ leaves it; `pipe` refuses a BulkPipe with other state (a changed BulkPipe
    # must be taught to `pipe`'s reset, or the reset would leave some of it from the last input)
    PIPE_STATE = frozenset({"_on_done", "_submit", "_cfunc", "_ptrs", "_structs", "_slot_of", "_packet", "_addr",
                            "_free", "_callback_ref", "_gen", "_seen", "_checks", "_expired"})

    def __init__(self, count: int, pool_packets: int, pool_size: int) -> None:
        from usb1 import libusb1

        from usbnetd.core.pool import PacketBufferPool
        from usbnetd.usb import bulk

        self.libusb1, self.bulk, self.Pool = libusb1, bulk, PacketBufferPool
        libusb1.loadLibrary()  # libusb_alloc_transfer, nothing else: no context, no device
        self.ptrs = [libusb1.libusb_alloc_transfer(0) for _ in range(count)]
        if not all(self.ptrs):
            raise MemoryError("libusb_alloc_transfer failed")
        self.structs = [p.contents for p in self.ptrs]
        self.addrs = [ctypes.addressof(s) for s in self.structs]
        self.bad = os.open("/", os.O_RDONLY | os.O_DIRECTORY)  # readv: EISDIR
        self.tap = Taps()
        self.side: Side | None = None
        self._submit_c = _FN(lambda a: self.side.submit(a))  # type: ignore[union-attr]
        self._cancel_c = _FN(lambda a: self.side.cancel(a))  # type: ignore[union-attr]
        self.submit_addr = ctypes.cast(self._submit_c, ctypes.c_void_p).value
        self.cancel_addr = ctypes.cast(self._cancel_c, ctypes.c_void_p).value
        self.cb_ptr = dict(libusb1.libusb_transfer._fields_)["callback"]
        self._noop_c = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda a: None)
        self.noop = ctypes.cast(self._noop_c, self.cb_ptr)
        self.noop_addr = ctypes.cast(self.noop, ctypes.c_void_p).value
        self.transfer_p = libusb1.libusb_transfer_p
        self._pipes: dict[int, Any] = {}
        self._pool_shape = (pool_packets, pool_size)
        self._pool: Any = None
        self._real_libusb1 = bulk.libusb1
        self._cancelling = LibusbCancel(bulk.libusb1, lambda p: self.side.cancel(  # type: ignore[union-attr]
            ctypes.addressof(p.contents)))

    def new_side(self) -> Side:
        self.side = Side(self.libusb1)
        return self.side

    def native_transfers(self, n: int) -> list[int]:
        """The first n transfer structs as the C pump gets them (no buffer, the no-op callback); addresses."""
        noop = self.noop
        for s in self.structs[:n]:
            s.callback = noop
            s.buffer = None
            s.length = 0
        return self.addrs[:n]

    def callbacks_back(self, n: int) -> None:
        """Every transfer's callback is the no-op again (the pump gave them back at disarm)."""
        for k, s in enumerate(self.structs[:n]):
            if ctypes.cast(s.callback, ctypes.c_void_p).value != self.noop_addr:
                raise Difference(f"disarm did not give transfer {k} its callback back")

    def complete(self, address: int, status: int) -> None:
        """As libusb completes a transfer: status and actual_length set, its callback called from C."""
        s = self.libusb1.libusb_transfer.from_address(address)
        s.status = status
        s.actual_length = s.length if status == COMPLETED else 0
        s.callback(ctypes.cast(address, self.transfer_p))

    def deliver(self, side: Side) -> None:
        """The cancelled transfers complete as such, after the call that cancelled them."""
        while side.to_complete:
            self.complete(side.to_complete.pop(0), CANCELLED)

    def pool(self) -> Any:
        """The reference's packet pool, every packet free (a new one if the last input left one taken: it
        ended in a Difference). Packets keep the last input's bytes, as a data path's pool does."""
        pool = self._pool
        if pool is None or pool.free_count != pool.packet_count:
            pool = self._pool = self.Pool(*self._pool_shape)
        return pool

    def pipe(self, n: int, on_done: Any) -> Any:
        """The reference's BulkPipe of n transfers, in the state BulkPipe(None, 0x02, n, 0, on_done,
        submit=the stand-in) starts in: every slot free in its initial order, the watchdog's counts zero."""
        pipe = self._pipes.get(n)
        if pipe is None:
            pipe = self._pipes[n] = self.bulk.BulkPipe(None, 0x02, n, 0, on_done, submit=self._submit_c)
            if set(vars(pipe)) != self.PIPE_STATE:
                raise RuntimeError(f"BulkPipe's state changed ({sorted(set(vars(pipe)) ^ self.PIPE_STATE)}): "
                                   "teach UsbTx.pipe to reset it")
        elif any(p is not None for p in pipe._packet):
            pipe = self._pipes[n] = self.bulk.BulkPipe(None, 0x02, n, 0, on_done, submit=self._submit_c)
        else:
            pipe._on_done = on_done
            pipe._free[:] = range(n)
            pipe._gen[:] = pipe._seen[:] = pipe._checks[:] = [0] * n
            pipe._expired[:] = [False] * n
            pipe._addr.clear()
        return pipe

    def swap_cancel(self) -> None:
        """BulkPipe's libusb_cancel_transfer is the stand-in until `restore`."""
        self.bulk.libusb1 = self._cancelling

    def restore(self) -> None:
        self.bulk.libusb1 = self._real_libusb1
        self.side = None

    @staticmethod
    def datapath_state(stats: Any, pool: Any, errors: list) -> Any:
        """DataPath's own state, as DataPath._on_tx reads and writes it (its errors logged into `errors`)."""
        import types
        from array import array

        return types.SimpleNamespace(tracer=None, stats=stats, device_gone=False, _stalled_out=False,
                                     _tx_frames=array("I", bytes(4 * pool.packet_count)),
                                     _tx_bytes=array("Q", bytes(8 * pool.packet_count)),
                                     _tx_errors=Hits(errors),
                                     tx_completion=types.SimpleNamespace(enqueue=pool.deallocate))

    @staticmethod
    def compare(native: tuple, reference: tuple) -> None:
        """The end of an input: every transfer submitted (bytes, length, ZLP flag, in order), every cancellation
        (by submission), the read errors; (submitted, cancelled, read errors) of each side."""
        n_sub, n_cancel, n_read = native
        r_sub, r_cancel, r_read = reference
        if n_sub != r_sub:
            k = next((i for i, (a, b) in enumerate(zip(n_sub, r_sub, strict=False)) if a != b),
                     min(len(n_sub), len(r_sub)))
            raise Difference(f"submitted transfers differ at {k} ({len(n_sub)} against {len(r_sub)}): "
                             f"{[(len(d), n, z) for d, n, z in n_sub[k:k + 2]]}, reference "
                             f"{[(len(d), n, z) for d, n, z in r_sub[k:k + 2]]}")
        if sorted(n_cancel) != sorted(r_cancel):
            raise Difference(f"cancelled {n_cancel}, reference {r_cancel}")
        if n_read != r_read:
            raise Difference(f"read errors {n_read[:4]}, reference {r_read[:4]}")

    def pipe_idle(self, pipe: Any) -> None:
        """What BulkPipe.free checks before it frees: nothing in flight at the end of an input."""
        if any(p is not None for p in pipe._packet):
            raise RuntimeError("bulk transfers still in flight")


class Steps(list):
    """A plan's operations, in order. Messages written to the TAP stand-in back to back are one step
    ("msg", [buffers, ...]): nothing runs between them on either side, so the state after each one is the
    state after the step before them, and recording it per message compared nothing (it was a third of the
    TX targets' steps). `ops` counts operations as the plan's cap always did, one per message."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def add(self, step: tuple) -> None:
        self.ops += 1
        self.append(step)

    def msg(self, buffers: tuple) -> None:
        """One TAP message: its buffers, gathered into one write (sendmsg)."""
        self.ops += 1
        if self and self[-1][0] == "msg":
            self[-1][1].append(buffers)
        else:
            self.append(("msg", [buffers]))
