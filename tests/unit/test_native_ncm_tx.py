"""The C TX path (usbnetd.native._fasttx.NcmTx) against the Python reference, NTB by NTB.

The reference is what the data path runs for NCM today: `DataPath.on_tap_readable`'s loop over
`NcmDriver.tx_slot` / `TapPort.read_into` / `NcmDriver.tx_commit` (full when the room left is below max_frame),
TAP_READ_BUDGET-style budgets per wake-up, a partial NTB finished when the TAP is drained and the pipe idle
(or later, by the flush timer), all on one `NtbBuilder` whose sequence numbers run on from NTB to NTB. The
native side does the same with `NcmTx.begin` / `fill(budget)` / `finish`. Each side reads from its own
SOCK_SEQPACKET socket pair standing in for the TAP (one message per frame, with a 10-byte zero virtio-net
header in front when vnet is on), fed the same messages; the NTBs go into a small pool of reused buffers
that start with the same junk (stale bytes must never leak into an NTB). Asserted equal: every NTB's length,
datagram count and whole buffer afterwards (NTH, datagrams, gaps, NDP, padding, and what dropped reads left
past the NTB), the bytes past max_size untouched, the per-wake-up reads, commits, bytes, drops and `drained`,
tx_dropped, the read errors, `count` and `sequence`.

Inputs: frames of every size class (14..max_frame, exactly max_frame, too short, too long, longer than the
slot: cut, as the reference's slice cuts them; shorter than the vnet header), empty TAP, EOF, read errors,
budgets 1..64, NTB16 and NTB32 (also past 64 KiB), the simulated adapter's SIM_NTB layouts, odd divisors,
remainders and alignments, datagram limits, maxpacket boundaries and pad_to_max, buffers shorter than
max_size and buffers ending at an inaccessible page; a few hundred seeded random scenarios on top.

USBNETD_NATIVE_TX_SO=path runs these tests against that build of `_fasttx` (e.g. a deliberately broken one, to
see them fail). Without the extension they skip and say why (`usbnetd.native.WHY_NOT`), except
`test_the_tx_extension_is_built_in_ci`, which fails under CI=true so CI cannot lose the C path silently.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import importlib.util
import mmap
import os
import random
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import tso_frames as tf

from usbnetd import native
from usbnetd.core.stats import Stats
from usbnetd.netdev.port import TapPort
from usbnetd.protocols import ncm_codec as nc
from usbnetd.usb.sim import SIM_NTB

VNET = 10
BUDGET = 64  # core.datapath.TAP_READ_BUDGET


def _load_fasttx() -> tuple[Any, Any]:
    """NcmTx and NcmPump, from one build (an NcmPump takes only its own module's NcmTx)."""
    path = os.environ.get("USBNETD_NATIVE_TX_SO")
    if not path:
        return native.NcmTx, native.NcmPump
    spec = importlib.util.spec_from_file_location("usbnetd.native._fasttx", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.NcmTx, mod.NcmPump


NcmTx, NcmPump = _load_fasttx()


def test_the_tx_extension_is_built_in_ci() -> None:
    """CI must run the C path: a build that silently fell back to Python fails here."""
    if os.environ.get("CI") == "true":
        assert native.AVAILABLE, f"CI=true but the C extension is not available: {native.WHY_NOT}"
    elif not native.AVAILABLE:
        pytest.skip(f"not under CI=true, and the C extension is not available: {native.WHY_NOT}")
    assert native.WHY_NOT is None and native.NcmTx is not None and native.fasttx is not None


def test_pure_python_forced_leaves_no_ncmtx() -> None:
    code = "import usbnetd.native as n; print(n.AVAILABLE, n.NcmTx is None, n.fasttx is None, n.WHY_NOT)"
    env = dict(os.environ, USBNETD_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False True True forced: USBNETD_PURE_PYTHON=1"


@pytest.mark.parametrize("replace", ["stale", "missing"])
def test_a_stale_or_missing_tx_build_disables_both(replace: str) -> None:
    """A _fasttx older than its C source, or not built (an in-place build from before it existed), turns the
    whole C path off and says why; NcmRx is not used on its own either."""
    fake = ("m = types.ModuleType('usbnetd.native._fasttx'); m.API_VERSION = 0"
            if replace == "stale" else "m = None")
    code = (f"import sys, types; {fake}; sys.modules['usbnetd.native._fasttx'] = m; "
            "import usbnetd.native as n; print(n.AVAILABLE, n.NcmRx is None, n.NcmTx is None, n.WHY_NOT)")
    env = {k: v for k, v in os.environ.items() if k != "USBNETD_PURE_PYTHON"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    if not out.startswith("False True True usbnetd.native._fastpath"):  # else _fastpath itself is not there
        want = ("is a stale build (API 0, this source wants 3)" if replace == "stale" else "is not built")
        assert out.startswith(f"False True True usbnetd.native._fasttx {want}"), out


WITHOUT_NATIVE = {"test_the_tx_extension_is_built_in_ci", "test_pure_python_forced_leaves_no_ncmtx",
                  "test_a_stale_or_missing_tx_build_disables_both"}


@pytest.fixture(autouse=True)
def _needs_native(request: pytest.FixtureRequest) -> None:
    if NcmTx is None and request.function.__name__ not in WITHOUT_NATIVE:
        pytest.skip(f"C extension not available: {native.WHY_NOT}")


# --- the TAP stand-in ------------------------------------------------------------------------------------


class Tap:
    """A socket pair: `w` is what the kernel would write frames into, `r` the TAP fd the paths read from."""

    def __init__(self) -> None:
        self.w, self.r = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.w.setblocking(False)
        self.r.setblocking(False)
        try:
            self.w.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_SNDBUFFORCE", 32), 64 << 20)
        except OSError:
            self.w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 20)

    def send(self, msgs: list[bytes]) -> None:
        for m in msgs:
            assert self.w.send(m) == len(m)

    def close_writer(self) -> None:
        self.w.close()

    def close(self) -> None:
        self.w.close()
        self.r.close()


def guarded_pool(count: int, size: int) -> list[memoryview]:
    """`count` writable buffers of exactly `size` bytes, each ending where an inaccessible page starts."""
    page = mmap.PAGESIZE
    span = max(page, -(-size // page) * page)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    out = []
    for _ in range(count):
        m = mmap.mmap(-1, span + page)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        assert libc.mprotect(addr + span, page, 0) == 0, "mprotect(PROT_NONE)"
        out.append(memoryview(m)[span - size : span])  # keeps the mapping alive
    return out


# --- the two paths ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    layout: nc.TxLayout
    max_frame: int = 1514
    vnet: int = 0
    sequence: int = 0
    buf_len: int = 0  # 0: max_size + 64 (the 64 past max_size must stay untouched)
    pool: int = 3  # buffers reused round robin, as the packet pool does
    guarded: bool = False  # the native side's buffers end at an inaccessible page (buf_len exactly)
    offload: bool = False  # TX offloads: super-frames cut, partial checksums completed (vnet must be 10)

    @property
    def blen(self) -> int:
        return self.buf_len or self.layout.max_size + 64


def junk(case: Case) -> list[bytes]:
    rnd = random.Random(case.blen * 7 + case.pool)
    return [rnd.randbytes(case.blen) for _ in range(case.pool)]


class Side:
    """The loop common to both paths: a pool of buffers, the NTBs finished, what every wake-up did."""

    def __init__(self, case: Case, tap: Tap, bufs: list[Any]) -> None:
        self.case = case
        self.tap = tap
        self.bufs = bufs
        self.next_buf = 0
        self.buf: Any = None
        self.open = False
        self.ntbs: list[tuple[int, int, bytes]] = []  # (length, datagrams, the whole buffer) per NTB sent
        self.wakes: list[tuple[int, int, int, int, bool]] = []  # (reads, frames, bytes, dropped, drained)
        self.errors: list[str] = []
        self.compared = 0  # NTBs already compared

    def _take(self) -> Any:
        self.buf = self.bufs[self.next_buf % len(self.bufs)]
        self.open = True
        return self.buf

    def _sent(self, length: int, count: int) -> None:
        assert length > 0 and count > 0
        self.ntbs.append((length, count, bytes(self.buf)))
        self.next_buf += 1  # an empty one goes back to the pool and is taken again next
        self.open = False


class Reference(Side):
    def __init__(self, case: Case, tap: Tap, bufs: list[Any]) -> None:
        super().__init__(case, tap, bufs)
        self.stats = Stats()
        self.port = TapPort(tap.r.fileno(), self.stats, case.max_frame, gro=bool(case.vnet) and not case.offload,
                            offload=case.offload)
        self.port.read_errors = self  # type: ignore[assignment]  (hit() records)
        self.builder = nc.NtbBuilder(case.layout, case.sequence)

    def hit(self, detail: object = "", n: int = 1) -> None:
        self.errors.extend([str(detail)] * n)

    def finish(self) -> None:
        """DataPath._finish_tx: an NTB without datagrams goes back unsent (no tx_finish)."""
        if not self.open:
            return
        if not self.builder.count:
            self.open = False
            return
        self._sent(self.builder.finish(), self.builder.count)

    def wake(self, budget: int, idle: bool) -> None:
        """DataPath.on_tap_readable for NCM (NcmDriver's tx_slot/tx_commit inlined), with a pool that never
        runs dry; `idle`: the pipe is idle, so a partial NTB goes at once when the TAP is drained."""
        b, port, max_frame = self.builder, self.port, self.case.max_frame
        reads = frames = nbytes = 0
        dropped0 = self.stats.tx_dropped
        drained = False
        while budget or port.pending:  # a super-frame's segments go first, using no budget
            if not self.open:
                b.begin(memoryview(self._take()))
            offset, room = b.next_slot()
            if room < max_frame:
                self.finish()
                continue
            if port.pending:
                n = port.next_segment(memoryview(self.buf)[offset : offset + room])
            else:
                n = port.read_into(memoryview(self.buf)[offset : offset + room])
                if n < 0:
                    drained = True
                    break
                budget -= 1
                reads += 1
                if n == 0:
                    continue
            frames += 1
            nbytes += n
            b.commit(n)
            if b.next_slot()[1] < max_frame:
                self.finish()
        if self.open and b.count and drained and idle:
            self.finish()
        self.wakes.append((reads, frames, nbytes, self.stats.tx_dropped - dropped0, drained))

    @property
    def count(self) -> int:
        return self.builder.count if self.open else 0

    @property
    def sequence(self) -> int:
        return self.builder.sequence

    @property
    def offload(self) -> tuple:
        p = self.port
        return (len(p.pending), p.tso_superframes, p.tso_segments, p.csum_completed, p.offload_dropped)

    @property
    def dropped(self) -> int:
        return self.stats.tx_dropped


class Native(Side):
    def __init__(self, case: Case, tap: Tap, bufs: list[Any]) -> None:
        super().__init__(case, tap, bufs)
        self.tx = NcmTx(tap.r.fileno(), case.vnet, case.max_frame, *dataclasses.astuple(case.layout),
                        sequence=case.sequence, offload=case.offload)
        self.dropped = 0

    def finish(self) -> None:
        if not self.open:
            return
        if not self.tx.count:
            self.tx.abandon()
            self.open = False
            return
        count = self.tx.count
        self._sent(self.tx.finish(), count)
        assert not self.tx.open

    def wake(self, budget: int, idle: bool) -> None:
        """What the data path does with NcmTx: fill until the budget is used, finishing every full NTB."""
        tx = self.tx
        reads = frames = nbytes = dropped = 0
        drained = False
        while budget or tx.pending:
            if not self.open:
                tx.begin(self._take())
            r, c, nb, d, dr, full, err = tx.fill(budget)
            assert 0 <= r <= budget and (c == 0) == (nb == 0)
            assert c + d == r if not self.case.offload else d <= r  # offloads: segments commit without a read
            assert not (full and dr), "full and drained at once"
            budget -= r
            reads += r
            frames += c
            nbytes += nb
            dropped += d
            if err:
                assert dr
                self.errors.append(os.strerror(err))
            if full:
                self.finish()
                continue
            if dr:
                drained = True
                break
            assert budget == 0, "fill stopped early without a reason"
        if self.open and tx.count and drained and idle:
            self.finish()
        self.dropped += dropped
        self.wakes.append((reads, frames, nbytes, dropped, drained))

    @property
    def count(self) -> int:
        return self.tx.count

    @property
    def sequence(self) -> int:
        return self.tx.sequence

    @property
    def offload(self) -> tuple:
        t = self.tx
        return (t.pending, t.tso_superframes, t.tso_segments, t.csum_completed, t.offload_dropped)


# A scenario: ("send", [messages]), ("wake", budget, idle), ("flush",) (the flush timer), ("eof",) (the writer
# goes away: every read returns 0 from then on), ("error",) (the fd becomes one that fails every read).
Step = tuple


def differential(case: Case, steps: list[Step]) -> Reference:
    """Run `steps` on both paths and assert that everything observable is identical after every step; at the
    end whatever is open is flushed. Returns the reference (for further checks)."""
    taps = [Tap(), Tap()]
    init = junk(case)
    ref = Reference(case, taps[0], [bytearray(j) for j in init])
    nbufs: list[Any]
    if case.guarded:
        nbufs = guarded_pool(case.pool, case.blen)
        for b, j in zip(nbufs, init, strict=True):
            b[:] = j
    else:
        nbufs = [bytearray(j) for j in init]
    nat = Native(case, taps[1], nbufs)
    bad = os.open("/", os.O_RDONLY | os.O_DIRECTORY)  # readv on a directory: EISDIR, every time
    try:
        for i, step in enumerate(steps):
            if step[0] == "send":
                for t in taps:
                    t.send(step[1])
            elif step[0] == "wake":
                ref.wake(step[1], step[2])
                nat.wake(step[1], step[2])
            elif step[0] == "flush":
                ref.finish()
                nat.finish()
            elif step[0] == "eof":
                for t in taps:
                    t.close_writer()
            elif step[0] == "error":  # only between NTBs: the native side gets a new object on the bad fd
                assert not ref.open and not nat.open
                ref.port.fd = bad
                nat.tx = NcmTx(bad, case.vnet, case.max_frame, *dataclasses.astuple(case.layout),
                               sequence=nat.tx.sequence, offload=case.offload)
                ref.port.tso_superframes = ref.port.tso_segments = ref.port.csum_completed = 0
                ref.port.offload_dropped = 0  # the new object's counters start at 0
            compare(ref, nat, f"after step {i} {step[0]}")
        ref.finish()
        nat.finish()
        compare(ref, nat, "at the end")
        tail = case.layout.max_size
        for b, j in zip(nbufs, init, strict=True):
            assert bytes(b[tail:]) == j[tail:], "the native side wrote past max_size"
    finally:
        os.close(bad)
        for t in taps:
            t.close()
    return ref


def compare(ref: Reference, nat: Native, when: str) -> None:
    """Everything observable, the NTBs sent since the last comparison included."""
    assert len(nat.ntbs) == len(ref.ntbs), f"{when}: {len(nat.ntbs)} NTBs, reference {len(ref.ntbs)}"
    start, nat.compared = nat.compared, len(nat.ntbs)
    for k in range(start, len(ref.ntbs)):
        (nl, nc_, nb), (rl, rc, rb) = nat.ntbs[k], ref.ntbs[k]
        assert (nl, nc_) == (rl, rc), f"{when}: NTB {k}: length, datagrams {(nl, nc_)}, reference {(rl, rc)}"
        if nb != rb:
            first = next(i for i in range(len(nb)) if nb[i] != rb[i])
            raise AssertionError(f"{when}: NTB {k} (length {rl}) differs first at byte {first}: "
                                 f"native {nb[first:first + 16].hex()}, reference {rb[first:first + 16].hex()}")
    assert nat.wakes == ref.wakes, f"{when}: wake-ups {nat.wakes}, reference {ref.wakes}"
    assert nat.dropped == ref.dropped, f"{when}: tx_dropped {nat.dropped}, reference {ref.dropped}"
    assert nat.errors == ref.errors, f"{when}: read errors {nat.errors}, reference {ref.errors}"
    assert nat.open == ref.open and nat.count == ref.count, when
    assert nat.sequence == ref.sequence, f"{when}: sequence {nat.sequence}, reference {ref.sequence}"
    assert nat.offload == ref.offload, f"{when}: (pending, superframes, segments, csum, dropped) {nat.offload}, " \
        f"reference {ref.offload}"
    for i in range(len(ref.bufs)):
        assert bytes(nat.bufs[i]) == bytes(ref.bufs[i]), f"{when}: pool buffer {i} differs"


# --- frames --------------------------------------------------------------------------------------------------


def frame(n: int, tag: int) -> bytes:
    """n bytes, recognisable: a MAC pair, the tag, then a counting pattern."""
    head = bytes.fromhex("020000000002020000000001") + (tag & 0xFFFF).to_bytes(2, "big")
    body = bytes((tag + i) & 0xFF for i in range(max(0, n - 14)))
    return (head + body)[:n]


def msgs(sizes: list[int], vnet: int, tag: int = 0) -> list[bytes]:
    """One TAP message per size: the vnet header (zeros) then a frame of that size; a negative size -k is a
    raw message of k - 1 bytes, shorter than the header."""
    out = []
    for i, n in enumerate(sizes):
        if n < 0:
            out.append(bytes(-n - 1))
        else:
            out.append(bytes(vnet) + frame(n, tag + i))
    return out


def fill_all(sizes: list[int], vnet: int, budget: int = BUDGET, tag: int = 0) -> list[Step]:
    """Send `sizes` and wake up until everything is read, the pipe idle (a partial NTB goes at once)."""
    wakes = len(sizes) // max(1, budget) + 2
    return [("send", msgs(sizes, vnet, tag))] + [("wake", budget, True)] * wakes


L16 = nc.TxLayout(False, 16384)
L32 = nc.TxLayout(True, 16384)
SIM_OUT16 = nc.TxLayout.from_parameters(SIM_NTB, False, 512, 16384)
SIM_OUT32 = nc.TxLayout.from_parameters(SIM_NTB, True, 512, 65536)
SIM_IN = nc.TxLayout(False, 16384, SIM_NTB.ndp_in_divisor, SIM_NTB.ndp_in_payload_remainder,
                     SIM_NTB.ndp_in_alignment, 40, 512)  # what sim.py's device builds (IN NTBs)
LAYOUTS = {
    "ntb16": L16,
    "ntb32": L32,
    "sim_out16": SIM_OUT16,
    "sim_out32": SIM_OUT32,
    "sim_in": SIM_IN,
    "div8_rem3_align16": nc.TxLayout(False, 16384, 8, 3, 16, 40, 512),
    "div64_rem63_align32": nc.TxLayout(True, 20000, 64, 63, 32, 40, 64),
    "div1_align4": nc.TxLayout(False, 8000, 1, 0, 4, 40, 512),
    "div2_rem1_align8": nc.TxLayout(True, 9999, 2, 1, 8, 40, 1024),
    "max_dg_1": nc.TxLayout(False, 16384, 4, 0, 4, 1, 512),
    "max_dg_3": nc.TxLayout(True, 16384, 4, 2, 4, 3, 512),
    "max_65535": nc.TxLayout(False, 0xFFFF, 4, 0, 4, 200, 512),
    "ntb32_big": nc.TxLayout(True, 200000, 16, 6, 64, 2000, 512),
    "small_2048": nc.TxLayout(False, 2048, 4, 0, 4, 40, 512),
    "mp64": nc.TxLayout(False, 4096, 4, 0, 4, 40, 64),
    "pad_to_max": nc.TxLayout(False, 16384, 4, 0, 4, 40, 512, pad_to_max=True),
    "pad_to_max32": nc.TxLayout(True, 16385, 8, 0, 8, 40, 1024, pad_to_max=True),
}


# --- targeted cases ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vnet", [0, VNET])
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_full_ntbs_of_every_size_class(name: str, vnet: int) -> None:
    layout = LAYOUTS[name]
    mf = 1514
    sizes = [1448 + 66] * 23 + [14, 15, 60, 64, 1513, 1514, 999, 17] * 3 + [1, 13, 0, 1515, 9000, 3000] + \
        [64] * 150 + [-1, -5, -10] + [700, 14, 1514]
    steps = fill_all(sizes, vnet) + fill_all([1514] * 40, vnet, budget=7, tag=500)
    ref = differential(Case(layout, mf, vnet), steps)
    assert len(ref.ntbs) >= 2 and ref.dropped >= 6


@pytest.mark.parametrize("budget", [1, 2, 3, 5, 11, 64])
def test_budgets_keep_an_ntb_open_across_wake_ups(budget: int) -> None:
    sizes = [100 + 37 * i for i in range(40)] + [5, 20000] + [1514] * 12
    steps: list[Step] = [("send", msgs(sizes, VNET))]
    steps += [("wake", budget, False)] * (len(sizes) // budget + 2)  # busy pipe: partial NTBs stay open
    steps += [("flush",), ("send", msgs([80] * 9, VNET, 77))] + [("wake", budget, True)] * (9 // budget + 2)
    ref = differential(Case(SIM_OUT16, 1514, VNET), steps)
    reads = [w[0] for w in ref.wakes]
    assert max(reads) <= budget and sum(reads) == len(sizes) + 9


def test_an_empty_tap() -> None:
    steps = [("wake", 64, True), ("wake", 1, False), ("flush",), ("wake", 64, True),
             ("send", msgs([60], 0)), ("wake", 64, False), ("wake", 64, True), ("wake", 64, True)]
    ref = differential(Case(L16), steps)
    assert ref.wakes[0] == (0, 0, 0, 0, True) and len(ref.ntbs) == 1 and ref.sequence == 1


def test_eof_reads_as_dropped_frames_until_the_budget_ends() -> None:
    """A TAP never ends, but a closed socket reads 0 bytes forever: too short, dropped, budget used."""
    steps = [("send", msgs([100, 200], VNET)), ("eof",), ("wake", 64, True), ("wake", 5, True)]
    ref = differential(Case(L32, 1514, VNET), steps)
    assert ref.wakes[0] == (64, 2, 300, 62, False) and ref.wakes[1] == (5, 0, 0, 5, False)


def test_read_errors_end_the_burst_and_are_reported() -> None:
    steps = [("error",), ("wake", 64, True), ("wake", 64, True)]
    ref = differential(Case(L16), steps)
    assert ref.errors == [os.strerror(errno.EISDIR)] * 2 and ref.wakes[0] == (0, 0, 0, 0, True)


def test_the_sequence_runs_on_and_wraps() -> None:
    steps = fill_all([1514] * 60, 0)
    ref = differential(Case(L16, sequence=0xFFFD), steps)
    seqs = [int.from_bytes(buf[6:8], "little") for _, _, buf in ref.ntbs]
    assert seqs == [(0xFFFD + i) & 0xFFFF for i in range(len(ref.ntbs))] and len(seqs) > 5


def test_datagram_limits() -> None:
    for layout in (LAYOUTS["max_dg_1"], LAYOUTS["max_dg_3"]):
        ref = differential(Case(layout), fill_all([60] * 20, 0))
        assert [c for _, c, _ in ref.ntbs] == [layout.max_datagrams] * (20 // layout.max_datagrams) + (
            [20 % layout.max_datagrams] if 20 % layout.max_datagrams else [])


@pytest.mark.parametrize("size", [1544, 1545, 1546, 1547, 1600, 2047, 2048, 2049, 3000, 4095])
def test_buffers_shorter_than_max_size(size: int) -> None:
    """NtbBuilder never grows past the buffer: the limit is min(max_size, len(buf)). (Not below an empty NTB's
    room for one max_frame frame: the reference would open and finish empty NTBs forever.)"""
    layout = nc.TxLayout(False, 4096, 4, 0, 4, 40, 512)
    b = nc.NtbBuilder(layout)
    b.begin(memoryview(bytearray(size)))
    assert b.next_slot()[1] >= 1514
    ref = differential(Case(layout, 1514, 0, buf_len=size), fill_all([1514, 60, 14, 500, 1513] * 5, 0))
    assert all(length <= size for length, _, _ in ref.ntbs)


@pytest.mark.parametrize("name", ["ntb16", "sim_out32", "div64_rem63_align32", "small_2048", "ntb32_big"])
def test_exact_size_buffers_ending_at_an_inaccessible_page(name: str) -> None:
    layout = LAYOUTS[name]
    case = Case(layout, 1514, VNET, buf_len=layout.max_size, guarded=True)
    differential(case, fill_all([1514, 14, 60, 1513, 9000, 0, 700] * 30, VNET))


@pytest.mark.parametrize("mp", [64, 512, 1024])
def test_the_end_of_ntb_rule(mp: int) -> None:
    """One frame per NTB, sizes swept so that NTBs would end exactly on a wMaxPacketSize multiple (one zero
    byte is added); with pad_to_max, full NTBs are padded to max_size instead."""
    sizes = sorted({n for base in (mp, 2 * mp) for n in range(base - 60, base + 8) if 14 <= n <= 1514})
    for pad in (False, True):
        layout = nc.TxLayout(False, 8192, 4, 2, 8, 40, mp, pad_to_max=pad)
        steps: list[Step] = []
        for i, n in enumerate(sizes):
            steps += [("send", msgs([n], 0, i)), ("wake", 64, True)]
        steps += fill_all([1514] * 12, 0)
        ref = differential(Case(layout, 1514, 0), steps)
        assert any(length % mp == 1 for length, _, _ in ref.ntbs[: len(sizes)]), "no NTB met the rule"
        assert any(length == 8192 for length, _, _ in ref.ntbs) == (pad and mp >= 512)  # 5 frames: > 8192 - 3 mp


def test_ntbs_decode_to_the_frames_sent() -> None:
    """An oracle besides the reference: NtbDecoder reads back exactly the frames that were not dropped."""
    sizes = [60, 1514, 14, 2000, 700, 5, 1448, 64, 64, 64] * 12
    sent = [frame(n, i) for i, n in enumerate(sizes) if 14 <= n <= 1514]
    for layout in (SIM_OUT16, SIM_OUT32, LAYOUTS["div64_rem63_align32"]):
        ref = differential(Case(layout, 1514, VNET), fill_all(sizes, VNET))
        got: list[bytes] = []
        dec = nc.NtbDecoder(Stats(), max_datagram=1514)
        for length, count, buf in ref.ntbs:
            spans: list[tuple[int, int]] = []
            assert dec.decode(buf, length, lambda o, n: spans.append((o, n))) == count  # noqa: B023
            got += [buf[o : o + n] for o, n in spans]
            assert length <= layout.max_size
        assert got == sent


def test_a_frame_longer_than_a_slot_of_exactly_max_frame_is_cut_as_the_reference_cuts_it() -> None:
    """The reference reads into the whole room: when the room is exactly max_frame, a longer frame arrives cut
    to max_frame and goes out (neither side can tell); the C path must do the same, not drop it."""
    layout = nc.TxLayout(False, 3000, 4, 2, 4, 40, 512)
    b = nc.NtbBuilder(layout)
    b.begin(memoryview(bytearray(3000)))
    assert b.next_slot() == (14, 2970)
    b.commit(1452)
    assert b.next_slot() == (1466, 1514)
    ref = differential(Case(layout, 1514, 0), fill_all([1452, 1600], 0))
    assert ref.wakes[0] == (2, 2, 1452 + 1514, 0, True)
    assert ref.ntbs[0][2][1466 : 1466 + 1514] == frame(1600, 1)[:1514]


# --- random scenarios ----------------------------------------------------------------------------------------


def random_layout(rnd: random.Random) -> tuple[nc.TxLayout, int]:
    """A valid layout and a max_frame it can hold."""
    while True:
        ntb32 = rnd.random() < 0.5
        div = 1 << rnd.choice([0, 1, 2, 2, 2, 3, 4, 5, 6, 9])
        rem = rnd.randrange(div)
        align = 1 << rnd.choice([2, 2, 3, 4, 5, 7])
        max_dg = rnd.choice([1, 2, 3, 5, 16, 32, 40, 400])
        mp = rnd.choice([8, 64, 512, 512, 1024])
        mf = rnd.choice([60, 64, 200, 1514, 1514, 1514, 1518, 9014])
        cap = 0xFFFF if not ntb32 else 300000
        size = rnd.choice([mf + rnd.randrange(60, 200), 2048, 4096, 16384, 16385, 32768, 0xFFFF, cap])
        size = min(size, cap)
        try:
            layout = nc.TxLayout(ntb32, size, div, rem, align, max_dg, mp, pad_to_max=rnd.random() < 0.2)
        except ValueError:
            continue
        b = nc.NtbBuilder(layout)
        b.begin(memoryview(bytearray(size)))
        if b.next_slot()[1] >= mf and (not ntb32 or 16 + 8 * (min(max_dg, size // 22) + 1) <= 0xFFFF):
            return layout, mf


def random_sizes(rnd: random.Random, mf: int, n: int) -> list[int]:
    out = []
    for _ in range(n):
        k = rnd.random()
        if k < 0.55:
            out.append(rnd.randint(14, mf))
        elif k < 0.7:
            out.append(rnd.choice([14, 15, mf - 1, mf]))
        elif k < 0.8:
            out.append(rnd.randint(0, 13))
        elif k < 0.9:
            out.append(rnd.randint(mf + 1, mf + 3000))
        elif k < 0.95:
            out.append(-rnd.randint(1, 10))
        else:
            out.append(rnd.randint(mf, 70000))
    return out


@pytest.mark.parametrize("seed", range(300))
def test_random_scenarios(seed: int) -> None:
    rnd = random.Random(seed)
    layout, mf = random_layout(rnd)
    vnet = rnd.choice([0, VNET])
    buf_len = 0
    while rnd.random() < 0.2:  # shorter than max_size, but large enough for one max_frame datagram
        buf_len = rnd.randint(min(mf, layout.max_size), layout.max_size)
        b = nc.NtbBuilder(layout)
        b.begin(memoryview(bytearray(buf_len)))
        if b.next_slot()[1] >= mf:
            break
        buf_len = 0
    case = Case(layout, mf, vnet, sequence=rnd.randrange(0x10000), buf_len=buf_len, pool=rnd.randint(1, 3),
                guarded=rnd.random() < 0.15)
    steps: list[Step] = []
    for _ in range(rnd.randint(1, 6)):
        k = rnd.random()
        if k < 0.45:
            steps.append(("send", msgs(random_sizes(rnd, mf, rnd.randint(0, 60)), vnet, rnd.randrange(1000))))
        elif k < 0.9:
            steps.append(("wake", rnd.choice([1, 2, 3, 7, 16, 64, 64, 1000]), rnd.random() < 0.7))
        else:
            steps.append(("flush",))
    steps += [("wake", 64, True)] * 3
    if rnd.random() < 0.1:
        steps += [("eof",), ("wake", 10, True)]
    try:
        differential(case, steps)
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}: {case}: {exc}") from None


# --- the API -------------------------------------------------------------------------------------------------


def make(layout: nc.TxLayout = L16, fd: int = 0, **kw: Any) -> Any:
    args = dict(vnet_hdr_len=0, max_frame=1514) | kw
    return NcmTx(fd, args.pop("vnet_hdr_len"), args.pop("max_frame"), *dataclasses.astuple(layout), **args)


def test_layout_fields_by_keyword_and_read_only_attributes() -> None:
    layout = LAYOUTS["div8_rem3_align16"]
    tx = NcmTx(fd=5, vnet_hdr_len=10, max_frame=1514, **dataclasses.asdict(layout), sequence=0x12345)
    assert (tx.fd, tx.vnet_hdr_len, tx.max_frame, tx.sequence, tx.count, tx.open) == (5, 10, 1514, 0x2345, 0, False)
    assert (tx.ntb32, tx.max_size, tx.divisor, tx.remainder, tx.alignment, tx.max_datagrams, tx.maxpacket,
            tx.pad_to_max) == dataclasses.astuple(layout)
    with pytest.raises(AttributeError):
        tx.count = 3
    assert NcmTx(0, 0, 1514, False, 16384).divisor == 4  # TxLayout's defaults
    assert make(sequence=-1).sequence == 0xFFFF  # NtbBuilder: sequence & 0xFFFF


BAD_LAYOUTS = [
    dict(divisor=3), dict(divisor=0), dict(remainder=4), dict(remainder=-1), dict(alignment=2),
    dict(alignment=12), dict(max_datagrams=0), dict(maxpacket=0), dict(max_size=0x10000),
    dict(max_size=40), dict(divisor=1 << 40), dict(alignment=1 << 62),
]


@pytest.mark.parametrize("bad", BAD_LAYOUTS)
def test_refuses_what_txlayout_refuses(bad: dict) -> None:
    fields = dataclasses.asdict(L16) | bad
    with pytest.raises(ValueError):
        nc.TxLayout(**fields)
    with pytest.raises(ValueError):
        NcmTx(0, 0, 60, **fields)


@pytest.mark.parametrize("kw", [dict(vnet_hdr_len=12), dict(fd=-1), dict(max_frame=13), dict(max_frame=16384),
                                dict(maxpacket=1 << 33)])
def test_refuses_what_would_misbehave_later(kw: dict) -> None:
    kw = dict(kw)
    fd = kw.pop("fd", 0)
    layout = L16 if "maxpacket" not in kw else dataclasses.replace(L16, maxpacket=kw.pop("maxpacket"))
    with pytest.raises(ValueError):
        make(layout, fd, **kw)


def test_refuses_an_ntb32_ndp_longer_than_its_16_bit_length() -> None:
    """The reference raises struct.error in finish() for an NDP32 of more than 8188 datagrams."""
    big = nc.TxLayout(True, 300000, 4, 0, 4, 9000, 512)
    with pytest.raises(ValueError, match="wLength"):
        make(big, max_frame=60)
    b = nc.NtbBuilder(big)
    b.begin(memoryview(bytearray(big.max_size)))
    while b.add(b"x" * 14):
        pass
    with pytest.raises(Exception):  # noqa: B017 (struct.error): the reference cannot send it either
        b.finish()
    make(dataclasses.replace(big, max_datagrams=8188), max_frame=60)


def test_an_uninitialised_object_refuses() -> None:
    tx = NcmTx.__new__(NcmTx)
    for call in (lambda: tx.begin(bytearray(100)), lambda: tx.fill(1), tx.finish, tx.abandon, tx.next_slot):
        with pytest.raises(RuntimeError, match="__init__"):
            call()


def test_the_buffer_is_held_until_finish_or_abandon() -> None:
    tap = Tap()
    try:
        tx = make(fd=tap.r.fileno())
        buf = bytearray(16384)
        tx.begin(buf)
        assert tx.open
        with pytest.raises(BufferError):
            buf.append(0)
        tap.send(msgs([60], 0))
        assert tx.fill(64) == (1, 1, 60, 0, True, False, 0)
        assert tx.finish() > 0 and not tx.open
        buf.append(0)  # released
        tx.begin(buf)
        tx.abandon()
        buf.append(0)
        tx.abandon()  # nothing held: nothing to do
        assert tx.finish() == 0 and tx.sequence == 1  # none open: 0, no sequence used
        other = bytearray(16384)
        tx.begin(buf)
        tx.begin(other)  # the first is dropped unfinished, and released
        buf.append(0)
        tx.abandon()
    finally:
        tap.close()


def test_next_slot_is_ntbbuilders() -> None:
    for layout in LAYOUTS.values():
        tx = make(layout, max_frame=60)
        b = nc.NtbBuilder(layout)
        assert tx.next_slot()[1] == 0  # none open
        buf = bytearray(layout.max_size)
        tx.begin(buf)
        b.begin(memoryview(bytearray(layout.max_size)))
        assert tx.next_slot() == b.next_slot()
        tx.abandon()


def test_bad_calls() -> None:
    tx = make()
    with pytest.raises(RuntimeError, match="begin"):
        tx.fill(1)
    with pytest.raises(BufferError):
        tx.begin(b"read-only")
    with pytest.raises(BufferError):
        tx.begin(memoryview(bytearray(40000))[::2])  # not contiguous
    tx.begin(bytearray(16384))
    with pytest.raises(ValueError):
        tx.fill(-1)
    with pytest.raises(TypeError):
        tx.fill(1.5)
    assert tx.fill(0) == (0, 0, 0, 0, False, False, 0)
    tx.abandon()


def test_the_gil_is_released_while_reading_and_a_second_caller_is_refused() -> None:
    """On a blocking fd, fill() waits in readv without the GIL: this thread runs meanwhile, and any call into
    the object from it is refused instead of racing the reader."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        tx = make(fd=a.fileno())
        tx.begin(bytearray(16384))
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(tx.fill(1)))
        t.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                tx.next_slot()
            except RuntimeError as exc:
                assert "in use" in str(exc)
                break
            assert time.monotonic() < deadline, "fill never got going"
            time.sleep(0.001)
        with pytest.raises(RuntimeError, match="in use"):
            tx.finish()
        b.send(frame(100, 1))
        t.join(10)
        assert result == [(1, 1, 100, 0, False, False, 0)]
        assert tx.count == 1 and tx.finish() > 0
    finally:
        a.close()
        b.close()


# --- TX offloads: TSO super-frames and partial checksums (netdev/gso.py is the reference) -------------------------

OFF16 = nc.TxLayout(False, 16384)


def tso(n: int, mss: int = 1448, v6: bool = False, **kw: Any) -> bytes:
    """One TAP message: the vnet header and a TSO super-frame of n payload bytes."""
    hdr, f = tf.superframe(n, mss, v6, **kw)
    return hdr + f


def csum(n: int, v6: bool = False, tag: int = 0) -> bytes:
    hdr, f = tf.udp_partial(n, v6, tag)
    return hdr + f


def offload_case(layout: nc.TxLayout = OFF16, max_frame: int = 1514, **kw: Any) -> Case:
    return Case(layout, max_frame, VNET, offload=True, **kw)


def test_offload_needs_the_vnet_header() -> None:
    with pytest.raises(ValueError, match="vnet"):
        make(offload=True)
    tx = make(vnet_hdr_len=VNET, offload=True)
    assert tx.offload == 1 and tx.pending == 0 and tx.tso_superframes == tx.tso_segments == 0
    assert make(vnet_hdr_len=VNET).offload == 0


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("name", ["ntb16", "ntb32", "sim_out16", "sim_out32", "div64_rem63_align32", "max_dg_3",
                                  "max_65535", "ntb32_big", "small_2048", "pad_to_max"])
def test_super_frames_are_cut_like_the_reference(name: str, v6: bool) -> None:
    """Super-frames of every size up to 64 KiB among plain frames, in NTBs that fill up in the middle of one:
    the rest goes on in the next NTB (and the next wake-up's first NTB) before the TAP is read again."""
    mss = 1440 if v6 else 1460
    big = 65535 - 60 if v6 else 65535 - 40
    messages = [tso(big, mss, v6, tag=1), bytes(VNET) + frame(60, 2), tso(1, mss, v6, tag=3),
                tso(mss, mss, v6, tag=4), tso(mss + 1, mss, v6, tag=5), csum(500, v6, 6), tso(0, mss, v6, tag=7),
                tso(20000, 536, v6, tag=8, flags=tf.ACK | tf.FIN | tf.PSH | tf.CWR)] * 2
    ref = differential(offload_case(LAYOUTS[name]), fill_all([], VNET) + [("send", messages)] +
                       [("wake", 64, True)] * 3)
    segs = 2 * (-(-big // mss) + 1 + 1 + 1 + 2 + 1 + 1 + -(-20000 // 536))
    assert ref.offload == (0, 12, segs - 4, 2, 0)  # 12 super-frames, 2 checksums completed
    assert sum(w[1] for w in ref.wakes) == segs  # every segment, the plain frames and the UDP datagrams
    assert len(ref.ntbs) >= 2 * 65535 // LAYOUTS[name].max_size  # NTBs filled up in the middle of one


def test_what_the_ntbs_carry_decodes_to_valid_segments_that_join_up() -> None:
    """An oracle besides the reference: NtbDecoder reads the NTBs back, tso_frames checks every frame."""
    messages = [tso(30000, 1448, tag=1), tso(30000, 1440, True, tag=2), csum(777, tag=3), csum(64, True, tag=4)]
    ref = differential(offload_case(SIM_OUT16), [("send", messages)] + [("wake", 64, True)] * 2)
    got: list[bytes] = []
    dec = nc.NtbDecoder(Stats(), max_datagram=1514)
    for length, count, buf in ref.ntbs:
        spans: list[tuple[int, int]] = []
        assert dec.decode(buf, length, lambda o, n: spans.append((o, n))) == count  # noqa: B023
        got += [bytes(buf[o : o + n]) for o, n in spans]
    fields = [tf.check_frame(f) for f in got]
    assert b"".join(f["payload"] for f in fields[:21]) == tf.payload(30000, 1)
    assert b"".join(f["payload"] for f in fields[21:42]) == tf.payload(30000, 2)
    assert fields[42]["payload"] == tf.payload(777, 3) and fields[43]["payload"] == tf.payload(64, 4)
    assert len(got) == 44


@pytest.mark.parametrize("budget", [1, 2, 5, 64])
def test_a_super_frame_goes_on_across_ntbs_and_wake_ups(budget: int) -> None:
    """The budget counts reads, not segments: with a busy pipe partial NTBs stay open between wake-ups, and a
    super-frame's segments never wait for a read."""
    messages = [tso(60000, 1448, tag=i) for i in range(4)] + [bytes(VNET) + frame(100, 9)]
    steps: list[Step] = [("send", messages)] + [("wake", budget, False)] * (5 // budget + 2)
    steps += [("flush",), ("wake", budget, True)]
    ref = differential(offload_case(L16), steps)
    assert ref.offload[:3] == (0, 4, 4 * 42)


@pytest.mark.parametrize("mss", [1, 2, 7, 536, 1459, 1460, 1461])
def test_mss_edge_cases(mss: int) -> None:
    """A segment of exactly max_frame goes; one byte more and the whole super-frame is dropped (but a payload
    that fits in one segment of max_frame goes, whatever the MSS)."""
    messages = [tso(3000, mss, tag=1), tso(1460, mss, tag=2), tso(1461, mss, tag=3)]
    ref = differential(offload_case(), [("send", messages)] + [("wake", 64, True)] * 2)
    dropped = 2 if mss > 1460 else 0
    assert ref.offload[4] == dropped and ref.dropped == dropped


@pytest.mark.parametrize("max_frame", [1514, 1518, 9014])
def test_options_vlans_and_max_frames(max_frame: int) -> None:
    messages = [tso(20000, 1300, ip_opts=b"\x01" * 40, tcp_opts=b"\x01" * 40, tag=1),
                tso(20000, 1400, True, tcp_opts=b"\x01\x01\x08\x0a" + bytes(8), tag=2),
                tso(20000, 1400, vlans=(0x8100,), tag=3), tso(20000, 1400, True, vlans=(0x88A8, 0x8100), tag=4),
                tso(20000, 1400, vlans=(0x8100,) * 3, tag=5),  # one tag too many: dropped
                tso(30000, 8900, tag=6)]  # a jumbo MSS: only with max_frame 9014
    layout = nc.TxLayout(False, 32768, 4, 0, 4, 64, 512)
    ref = differential(offload_case(layout, max_frame), [("send", messages)] + [("wake", 64, True)] * 2)
    assert ref.offload[4] == (1 if max_frame == 9014 else 2)


def _hdr(flags: int = 1, gso_type: int = 1, hdr_len: int = 54, gso_size: int = 1000, start: int = 34,
         offset: int = 16) -> bytes:
    return tf.vnet(flags, gso_type, hdr_len, gso_size, start, offset)


V4, _, _ = tf.tcp_frame(3000)
V6, _, _ = tf.tcp_frame(3000, v6=True)
UDP4 = tf.udp_partial(300)[1]
MALFORMED_VNET = [
    _hdr(gso_type=3) + V4, _hdr(gso_type=5) + V4, _hdr(gso_type=0x81) + V4, _hdr(gso_type=0x84) + V6,
    _hdr(gso_type=2) + V4, _hdr(gso_type=0xFF) + V4, _hdr(flags=0) + V4, _hdr(flags=2) + V4, _hdr(gso_size=0) + V4,
    _hdr(start=14) + V4, _hdr(start=0xFFFF) + V4, _hdr(offset=6) + V4, _hdr(offset=0xFFFF) + V4,
    _hdr(hdr_len=0xFFFF) + V4, _hdr(hdr_len=len(V4) + 1) + V4, _hdr(gso_type=4) + V4, _hdr(hdr_len=74) + V6,
    _hdr() + V4[:-1], _hdr() + V4 + b"\0", _hdr() + V4[:14], _hdr() + V4[:33], _hdr() + V4[:53],
    _hdr() + V4[:12] + b"\x08\x06" + V4[14:], _hdr() + V4[:12] + b"\x81\x00", _hdr() + V4[:12] + b"\x81\x00\x00",
    _hdr() + V4[:14] + b"\x46" + V4[15:], _hdr() + V4[:23] + b"\x11" + V4[24:],
    _hdr() + V4[:20] + b"\x20\x00" + V4[22:], _hdr() + V4[:46] + b"\x40" + V4[47:],
    _hdr() + V4[:46] + b"\xf0" + V4[47:84],
    _hdr(gso_type=4, hdr_len=74, start=54) + V6[:20] + b"\x2b" + V6[21:],
    _hdr(1, 0, 0, 0, 0xFFFF, 0xFFFF) + UDP4, _hdr(1, 0, 0, 0, 341, 0) + UDP4,
    _hdr(1, 0, 0, 0, 0, 341) + UDP4, _hdr(1, 0, 0, 0, 34, 6) + UDP4[:39], b"\x01\x01",
    bytes(VNET) + frame(1515, 1), _hdr(1, 0, 0, 0, 34, 6) + UDP4 + bytes(1200),  # too long, not cut
]


def test_odd_but_valid_vnet_headers() -> None:
    """A frame without NEEDS_CSUM is left as it is; a checksum field that ends exactly at the frame's end is
    completed; a GSO frame whose payload fits one segment goes as one."""
    messages = [_hdr(0, 0, 0, 0, 34, 7) + UDP4[:40], _hdr(1, 0, 0, 0, 340, 0) + UDP4,
                _hdr(gso_size=5000) + tf.tcp_frame(1000)[0]]
    ref = differential(offload_case(), [("send", messages), ("wake", 64, True)])
    assert ref.dropped == 0 and ref.offload == (0, 1, 1, 1, 0)


def test_malformed_vnet_headers_are_dropped_and_counted_never_raised() -> None:
    """Every field of the vnet header that does not fit the frame, unknown GSO types and the ECN bit, frames that
    are not TCP over IPv4/IPv6 as announced, cut or padded frames, checksum fields past the end; good ones
    between them go through untouched."""
    good = [tso(5000, 1000, tag=1), csum(100), bytes(VNET) + frame(60, 3)]
    messages = []
    for m in MALFORMED_VNET:
        messages += [m] + good
    ref = differential(offload_case(), [("send", messages)] + [("wake", 64, True)] * 6)
    # what its vnet header made a drop (the others are plain drops: shorter than Ethernet, longer than max_frame)
    bad_hdr = sum(1 for m in MALFORMED_VNET if len(m) >= VNET + 14 and (m[1] or m[0] & 1 and len(m) <= 1524))
    assert ref.dropped == len(MALFORMED_VNET) and ref.offload[4] == bad_hdr == len(MALFORMED_VNET) - 3
    assert ref.offload[1] == ref.offload[3] == len(MALFORMED_VNET)  # the good ones: all cut, all completed
    assert ref.offload[2] == 5 * len(MALFORMED_VNET)


def test_a_plain_frame_longer_than_max_frame_is_dropped_not_cut() -> None:
    """Without offloads a frame longer than a slot of exactly max_frame is cut and sent (the reference's slice);
    with offloads the read goes on past max_frame into the scratch buffer, so it is seen as too long."""
    layout = nc.TxLayout(False, 3000, 4, 2, 4, 40, 512)
    ref = differential(offload_case(layout), [("send", [bytes(VNET) + frame(1452, 0), bytes(VNET) + frame(1600, 1)]),
                                              ("wake", 64, True)])
    assert ref.wakes[0] == (2, 1, 1452, 1, True)


@pytest.mark.parametrize("seed", range(150))
def test_random_offload_scenarios(seed: int) -> None:
    rnd = random.Random(1000 + seed)
    layout, mf = random_layout(rnd)
    if mf < 200:
        mf = 1514
        b = nc.NtbBuilder(layout)
        b.begin(memoryview(bytearray(layout.max_size)))
        if b.next_slot()[1] < mf:
            layout, mf = L32, 1514
    case = offload_case(layout, mf, sequence=rnd.randrange(0x10000), pool=rnd.randint(1, 3),
                        guarded=rnd.random() < 0.2, buf_len=layout.max_size if rnd.random() < 0.2 else 0)
    steps: list[Step] = []
    for _ in range(rnd.randint(1, 6)):
        k = rnd.random()
        if k < 0.5:
            msgs_: list[bytes] = []
            for _ in range(rnd.randint(0, 12)):
                v6 = rnd.random() < 0.5
                hl = 74 if v6 else 54
                mss = rnd.choice([1, 7, 100, 536, mf - hl, mf - hl + 1, 1448])
                kind = rnd.random()
                if kind < 0.45:
                    m = bytearray(tso(rnd.choice([0, 1, mss, 3000, 20000, 65000 - hl]), max(1, mss), v6,
                                      tag=rnd.randrange(256), flags=rnd.randrange(256),
                                      vlans=rnd.choice([(), (), (0x8100,)])))
                elif kind < 0.65:
                    m = bytearray(csum(rnd.randint(0, mf - 60), v6, rnd.randrange(256)))
                else:
                    m = bytearray(bytes(VNET) + frame(rnd.randint(0, mf + 3), rnd.randrange(256)))
                for _ in range(rnd.choice([0, 0, 0, 1, 2])):  # mutate: header fields or frame bytes
                    if rnd.random() < 0.5 or len(m) <= VNET:
                        m[rnd.randrange(min(VNET, len(m)))] = rnd.randrange(256)
                    else:
                        m[VNET + rnd.randrange(min(80, len(m) - VNET))] = rnd.randrange(256)
                if rnd.random() < 0.05:
                    m = m[: rnd.randrange(len(m) + 1)]
                msgs_.append(bytes(m))
            steps.append(("send", msgs_))
        elif k < 0.9:
            steps.append(("wake", rnd.choice([1, 2, 3, 7, 64, 1000]), rnd.random() < 0.7))
        else:
            steps.append(("flush",))
    steps += [("wake", 64, True)] * 4
    try:
        differential(case, steps)
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}: {case}: {exc}") from None


# --- NcmPump -------------------------------------------------------------------------------------------------


class _BurstTx(ctypes.Structure):
    """burst.h's struct burst_tx (what NcmPump.burst_hooks() hands the C event loop), as far as used here."""

    _fields_ = [
        ("obj", ctypes.c_void_p),
        ("room", ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p)),
        ("fill", ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_long)),
        ("tick", ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_longlong)),
        ("deadline", ctypes.CFUNCTYPE(ctypes.c_longlong, ctypes.c_void_p)),
    ]


def _hooks(pump: Any) -> tuple[Any, _BurstTx]:
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    get.restype = ctypes.c_void_p
    cap = pump.burst_hooks()
    return cap, _BurstTx.from_address(get(cap, b"usbnetd.native.burst_tx"))


def test_pump_disarm_dropping_a_partial_ntb_leaves_no_flush_deadline() -> None:
    """Regression (found by fuzz/native_ncm_pump.py): disarm dropped the partial NTB but kept its flush deadline,
    so after arming again the C event loop woke for a timer nothing waited for, and the next partial NTB went at
    that stale (past) deadline instead of a full flush delay later."""
    usb1 = pytest.importorskip("usb1")
    libusb1 = usb1.libusb1
    libusb1.loadLibrary()
    fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
    submit, cancel = fn(lambda a: 0), fn(lambda a: 0)
    ptrs = [libusb1.libusb_alloc_transfer(0) for _ in range(2)]
    addrs = [ctypes.addressof(p.contents) for p in ptrs]
    tap = Tap()
    try:
        tx = make(L16, fd=tap.r.fileno())
        pump = NcmPump(tx)
        arm = (ctypes.cast(submit, ctypes.c_void_p).value, ctypes.cast(cancel, ctypes.c_void_p).value, addrs)
        pump.arm(*arm)
        tap.send(msgs([100, 100], 0))
        assert pump.fill(1) == (1, 0)  # budget used up, the TAP not drained: the NTB waits for the timer
        cap, h = _hooks(pump)
        assert pump.open_count == 1 and h.deadline(h.obj) >= 0
        pump.disarm()  # nothing in flight: the partial NTB is dropped
        pump.arm(*arm)
        cap, h = _hooks(pump)
        assert pump.open_count == 0 and h.deadline(h.obj) == -1
        del cap
        pump.disarm()
    finally:
        tap.close()
        for p in ptrs:
            libusb1.libusb_free_transfer(p)


# --- the pump's buffers in lent memory (usbfs memory, usb/engine.py) ----------------------------------------

_SUBMIT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_CALLBACK_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def test_an_ncm_pump_frames_into_the_memory_it_is_lent_and_never_frees_it() -> None:
    """arm(submit, cancel, transfers, memory, size): the NTBs are built and submitted in the lent memory,
    slot k at memory + k * max_size; disarm gives the transfers back and leaves the memory to its lender (a
    free of it would crash or corrupt the allocator here); too little memory is refused with nothing armed."""
    from usb1 import libusb1

    from usbnetd.core.datapath import FLUSH_TIMER

    libusb1.loadLibrary()  # python-libusb1 lays out its structs when it loads libusb; nothing else is used
    tap = Tap()
    tx = make(L16, fd=tap.r.fileno())
    pump = NcmPump(tx)
    submitted: list[tuple[int, bytes]] = []

    def submit(address: int) -> int:
        s = libusb1.libusb_transfer.from_address(address)
        submitted.append((ctypes.cast(s.buffer, ctypes.c_void_p).value or 0, ctypes.string_at(s.buffer, s.length)))
        return 0

    submit_c, cancel_c = _SUBMIT_FN(submit), _SUBMIT_FN(lambda address: 0)
    structs = [libusb1.libusb_transfer() for _ in range(2)]  # libusb's struct; the pump only uses its fields
    addresses = [ctypes.addressof(s) for s in structs]
    noop = libusb1.libusb_transfer_cb_fn_p(lambda t: None)
    for s in structs:
        s.callback = noop
    saved = [ctypes.cast(s.callback, ctypes.c_void_p).value for s in structs]
    fns = [ctypes.cast(f, ctypes.c_void_p).value for f in (submit_c, cancel_c)]
    memory = bytearray(2 * L16.max_size)
    lent = (ctypes.c_char * len(memory)).from_buffer(memory)
    base = ctypes.addressof(lent)
    try:
        with pytest.raises(ValueError, match="do not fit"):
            pump.arm(*fns, addresses, base, len(memory) - 1)
        assert not pump.armed and not pump.lent
        assert [ctypes.cast(s.callback, ctypes.c_void_p).value for s in structs] == saved, "callbacks given back"
        with pytest.raises(ValueError, match="address is 0"):
            pump.arm(*fns, addresses, 0, len(memory))
        assert not pump.armed
        pump.arm(*fns, addresses, base, len(memory))
        assert pump.armed and pump.lent
        assert [ctypes.cast(s.buffer, ctypes.c_void_p).value for s in structs] == [base, base + L16.max_size]
        frames = [frame(1000, k) for k in range(30)]  # more than one 16 KiB NTB
        tap.send(frames)
        pump.fill(BUDGET)
        pump.flush(FLUSH_TIMER)
        assert len(submitted) == 2
        got = []
        for address, ntb in submitted:
            assert address in (base, base + L16.max_size), "the NTB went from the lent memory"
            off = address - base
            assert bytes(memory[off:off + len(ntb)]) == ntb
            nc.NtbDecoder(Stats()).decode(ntb, len(ntb), lambda o, n, ntb=ntb: got.append(ntb[o:o + n]))
        assert got == frames[:len(got)] and len(got) >= 10
        for s in structs:  # the device takes both: the pump's C callback, as libusb would call it
            s.status = 0
            s.actual_length = s.length
            _CALLBACK_FN(ctypes.cast(s.callback, ctypes.c_void_p).value)(ctypes.addressof(s))
        assert pump.in_flight == 0
        pump.disarm()
        assert not pump.armed and not pump.lent
        assert all(not s.buffer for s in structs)
        memory[:4] = b"live"  # still ours, and still writable
    finally:
        if pump.armed and not pump.in_flight:
            pump.disarm()
        tap.close()
