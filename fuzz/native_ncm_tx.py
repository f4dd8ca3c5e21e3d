"""Differential fuzz target `native-ncm-tx`: the C TX path (usbnetd.native._fasttx.NcmTx) against the Python
reference (NtbBuilder + TapPort.read_into in DataPath.on_tap_readable's loop), on the same TAP frames.

    python fuzz/native_ncm_tx.py [libFuzzer options] [CORPUS_DIR ...]       # atheris, coverage of the reference
    python fuzz/native_ncm_tx.py --engine=random -runs=N [-seed=S] [CORPUS_DIR ...]   # fuzz.py's mutation engine
    fuzz/native_asan.sh --tx [options]                                       # the same against an ASan/UBSan build

An input is a 20-byte header, then operations:

    byte 0     flags: 1 NTB32, 2 vnet header (10 zero bytes before every frame), 4 pad_to_max, 8 a buffer shorter
               than max_size (by bytes 18-19), 16 EOF at the end (the writer closes: reads return 0), 32 raw
               layout fields (may be invalid: then both sides must refuse it), 64 the fd fails every read
               (EISDIR), 128 a pool of one buffer (else two)
    1          divisor: 1 << (b % 10)                      (raw: bytes 1-2, little endian)
    2          bit 0: TX offloads (with flag 2, not raw): NcmTx(offload=True) against TapPort(offload=True)
    3-4        remainder, modulo the divisor                (raw: as is)
    5          NDP alignment: 1 << (2 + b % 6)             (raw: bytes 5-6)
    7-8        max_datagrams: 1 + v % 64, or 40 when v >= 0xFF00 (raw: as is)
    9          maxpacket: 8, 64, 512, 1024 or byte 10 + 1  (raw: bytes 9-10)
    11-13      max_size: 256 + v % (0xFFFF - 255), or up to 256 KiB for NTB32 (raw: v % 256 KiB)
    14-15      max_frame: 1514 when byte 15 has bit 7, else 14 + v % 9100 (raw: as is)
    16-17      the first wSequence
    18-19      how much shorter the buffer is (flag 8)
    ops        0x00-0x3F hi lo: a frame of ((hi & 0x3F) << 8 | lo) bytes;  0x40-0x7F: a frame of max_frame - 32
               + (b & 0x3F) bytes;  0x80-0xBF: a raw message of (b & 0x3F) % 12 bytes, no vnet header;
               0xC0-0xDF: a wake-up, the pipe idle, budget (b & 0x1F) + 1 (0xDF: 64);  0xE0-0xEF: a wake-up,
               the pipe busy, budget (b & 0x0F) + 1;  0xF0-0xF7: the flush timer;  0xF8-0xFF n: a frame of
               16384 + 256 * n bytes (cut to 70000)
               With offloads, 0xA0-0xBF p0 p1 p2 p3 [pos val]*: an offload message instead of a raw one (then
               0x80-0x9F are the raw messages); with x = b & 0x1F: bit 4 IPv6, bit 3 a UDP datagram with
               NEEDS_CSUM (else a TCP super-frame, gso_type TCPV4/TCPV6), bit 2 a VLAN tag, bits 0-1 how many
               (pos, val) byte mutations follow (pos % 96 into the message, vnet header included); payload
               p0p1 % 65,536 bytes (cut to what the IP length allows and to MSS * MAX_SEGMENTS), MSS
               1 + p2p3 % 1,600 (p3 bit 7: max_frame - headers - (p2 % 3) + 1, the edge), TCP flags p0, IPv4
               options from p1 bits 0-1, TCP options from bits 2-3; at most MAX_OFFLOAD per input.
    then 3 wake-ups (idle, budget 64), EOF and one more if flag 16, and a final flush.

Frames are numbered and filled from a fixed random pattern, so a misplaced or mixed-up frame shows. Every frame
is sent to each side's own SOCK_SEQPACKET socket pair right away. Each input runs three times: the reference on
bytearrays with a poisoned tail, the native code on buffers of exactly the NTB buffer's size ending at an
inaccessible page (any access past the end faults at once, with or without a sanitizer), and on bytearrays
with another poisoned tail. Any difference in the NTBs (length, datagrams, the whole buffer), the reads,
commits, bytes, drops and `drained` of every wake-up, the read errors, count, sequence, the tails, or in
whether a layout is refused, raises `Difference`, which the fuzzer records as a crash.

USBNETD_NATIVE_TX_SO=path loads that build of the extension instead of the package's, and
USBNETD_FUZZ_LAST_INPUT=path writes every input there before it runs (native_asan.sh --tx sets both).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import struct
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import native_common as nc_  # noqa: E402  (what the two native targets share)
from native_common import Difference, GuardedBuffers, Hits, Steps, Taps  # noqa: E402

TARGET = "native-ncm-tx"
HEADER = 20
MAX_INPUT = 4096
MAX_FRAMES = 600  # per input, so every input stays cheap
MAX_OFFLOAD = 24  # offload messages per input (each up to 64 KiB)
MAX_SEGMENTS = 128  # segments per generated super-frame (the payload is cut to MSS * 128)
MAX_MSG = 70000
MAX32 = 256 << 10  # the largest NTB32 max_size generated (buffers are preallocated for it)
VNET = 10
POISON_REF = b"\xa5" * 64
POISON_NAT = b"\x5a" * 64
NTB32, VNET_ON, PAD, SHORT, EOF, RAW, ERROR, ONE_BUF = 1, 2, 4, 8, 16, 32, 64, 128
PATTERN = random.Random(7).randbytes(MAX_MSG + 4096)
# what a pool buffer holds before its first NTB (a different byte per buffer: a mixed-up buffer shows)
JUNK = [memoryview(bytes([0x11 * (k + 1)]) * MAX32) for k in range(2)]


def load_fasttx() -> Any:
    return nc_.load_extension(TARGET, "USBNETD_NATIVE_TX_SO", "_fasttx", "fasttx")


def frame(n: int, i: int) -> bytes:
    start = (i * 131) % 4096
    return PATTERN[start : start + n]


_PATTERN = memoryview(PATTERN)
_VNET = bytes(VNET)


def message(vnet: int, n: int, i: int) -> tuple:
    """Frame i of n bytes, after a vnet header if `vnet`: one message's buffers for sendmsg (gathered by the
    kernel, so the frame is never copied: a copy per frame was a fifth of the TX targets' parsing)."""
    start = (i * 131) % 4096
    view = _PATTERN[start : start + n]
    return (_VNET, view) if vnet else (view,)


def offload_message(x: int, p: bytes, mf: int, n: int) -> bytes:
    """The vnet header and frame of offload op `x` with parameter bytes `p` (the docstring's 0xA0-0xBF)."""
    v6, udp, vlan = bool(x & 0x10), bool(x & 0x08), bool(x & 0x04)
    length = p[0] | p[1] << 8
    eth = bytes.fromhex("020000000002020000000001") + (b"\x81\x00\x00\x05" if vlan else b"")
    eth += b"\x86\xdd" if v6 else b"\x08\x00"
    ip_opts = bytes([1]) * (4 * (p[1] & 1)) + bytes([7, 7, 4, 0, 0, 0, 0, 1]) * ((p[1] >> 1) & 1) if not v6 else b""
    l3 = len(eth)
    iph = 40 if v6 else 20 + len(ip_opts)
    l4 = l3 + iph
    if udp:
        data = PATTERN[n % 4096 : n % 4096 + min(length, 1600)]
        ulen = 8 + len(data)
        if v6:
            ip = struct.pack("!IHBB", 6 << 28, ulen, 17, 64) + bytes(range(32))
        else:
            ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + ulen, n & 0xFFFF, 0, 64, 17, 0) + bytes(range(8))
        hdr = struct.pack("=BBHHHH", 1, 0, 0, 0, l4, 6)
        return hdr + eth + ip + struct.pack("!HHHH", 53, 53, ulen, p[2] | p[3] << 8) + data
    tcp_opts = (b"\x01\x01\x08\x0a" + bytes(8)) * ((p[1] >> 2) & 1) + b"\x01" * (28 * ((p[1] >> 3) & 1))
    thl = 20 + len(tcp_opts)
    hdrs = l4 + thl
    if p[3] & 0x80:
        mss = max(1, mf - hdrs - p[2] % 3 + 1)
    else:
        mss = 1 + (p[2] | (p[3] & 0x7F) << 8) % 1600
    # at most MAX_SEGMENTS segments: a 64 KiB super-frame of MSS 1 is 65,535 frames, which costs the harness
    # minutes (every NTB is kept whole) and says nothing 128 segments do not
    data_len = min(length, 0xFFFF - iph - thl, mss * MAX_SEGMENTS)
    data = PATTERN[n % 4096 : n % 4096 + data_len]
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, thl + len(data), 6, 64) + bytes(range(32))
    else:
        ihl = iph // 4
        ip = struct.pack("!BBHHHBBH", 0x40 | ihl, 0, iph + thl + len(data), n & 0xFFFF, 0x4000, 64, 6,
                         0) + bytes(range(8)) + ip_opts
    seq = (0xFFFF0000 + n * 977) & 0xFFFFFFFF  # wraps within a few super-frames
    th = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, (thl // 4) << 4, p[0], 500, 0x1234, 0) + tcp_opts
    hdr = struct.pack("=BBHHHH", 1, 4 if v6 else 1, hdrs, mss & 0xFFFF, l4, 16)
    return hdr + eth + ip + th + data


COPY_BUDGET = 16 << 20  # bytes of the reference's finished NTB buffers kept whole per input (then digests)


def offload_op(body: bytes, i: int, x: int, k: int, mf: int, n: int) -> tuple[bytes, int]:
    """The offload message x (the docstring's 0xA0-0xBF, x = b & 0x1F) whose parameters start at body[i]:
    the message of p0-p3, then k (pos, val) byte mutations; and where the next operation starts."""
    p = body[i : i + 4].ljust(4, b"\0")
    i += 4
    m = bytearray(offload_message(x, p, mf, n))
    for _ in range(k):
        if i + 1 < len(body):
            m[body[i] % min(96, len(m))] = body[i + 1]
        i += 2
    return bytes(m), i


def ntb_snapshot(buf, blen: int, k: int, ref: list | None = None) -> bytes:
    """What the k-th finished NTB's buffer (its first `blen` bytes, tails included) is compared by: while
    the input's NTBs so far fit COPY_BUDGET, the reference keeps a copy and a native run compares its
    buffer with that copy in place (keeping the very same object when equal, so the later comparison is an
    identity check, or a copy of its own when not); after that, `ntb_digest` on both sides. blen is the
    same for every NTB of an input, so both sides switch at the same NTB. A copy and an in-place comparison
    cost a quarter of hashing the buffer (SHA-256 of every NTB buffer was a third of an input's time under
    ASan); the budget keeps an input that finishes thousands of NTBs within memory, as digests alone did."""
    view = memoryview(buf)[:blen]
    if (k + 1) * blen > COPY_BUDGET:
        return ntb_digest(view, blen)
    if ref is None:
        return bytes(view)
    r = ref[k][2] if k < len(ref) else None
    return r if r is not None and len(r) == blen and r.startswith(view) else bytes(view)


def ntb_digest(buf, blen: int) -> bytes:
    """A finished NTB's buffer (its first `blen` bytes, tails included) as a digest, not a copy: with TX
    offloads one input can finish thousands of NTBs, and a copy of each took one input to 2.7 GB (libFuzzer's
    out-of-memory limit is 2 GB). Both sides store the same digest, so equality is still byte equality.
    SHA-256, not BLAKE2b: hashlib's SHA-256 uses the CPU's SHA extensions, 3.5 times BLAKE2b's speed here,
    and this digest was the harness's largest cost (equally collision-resistant for the purpose)."""
    return hashlib.sha256(memoryview(buf)[:blen]).digest()


@dataclasses.dataclass
class Plan:
    flags: int
    fields: dict  # TxLayout's fields
    max_frame: int
    sequence: int
    blen: int  # the NTB buffers' size
    pool: int
    steps: list  # ("msg", [buffers, ...]) | ("wake", budget, idle) | ("flush",) | ("eof",)
    offload: bool = False
    layout_args: list = dataclasses.field(default_factory=list)  # TxLayout's fields, as NcmTx takes them


def parse(data: bytes) -> Plan:
    data = data[:MAX_INPUT]
    h = data[:HEADER].ljust(HEADER, b"\0")
    flags = h[0]
    u16 = lambda i: struct.unpack_from("<H", h, i)[0]  # noqa: E731
    u24 = int.from_bytes(h[11:14], "little")
    ntb32 = bool(flags & NTB32)
    if flags & RAW:
        div, rem, align, max_dg, mp = u16(1), u16(3), u16(5), u16(7), u16(9)
        size = u24 % MAX32
        mf = u16(14)
    else:
        div = 1 << (h[1] % 10)
        rem = u16(3) % div
        align = 1 << (2 + h[5] % 6)
        max_dg = 40 if u16(7) >= 0xFF00 else 1 + u16(7) % 64
        mp = (8, 64, 512, 1024, h[10] + 1)[h[9] % 5]
        size = 256 + u24 % ((MAX32 if ntb32 else 0xFFFF) - 255)
        mf = 1514 if h[15] & 0x80 else 14 + u16(14) % 9100
    fields = dict(ntb32=ntb32, max_size=size, divisor=div, remainder=rem, alignment=align, max_datagrams=max_dg,
                  maxpacket=mp, pad_to_max=bool(flags & PAD))
    blen = size - (u16(18) % size if flags & SHORT and size > 0 else 0)
    vnet = VNET if flags & VNET_ON else 0
    offload = bool(vnet and not flags & RAW and h[2] & 1)
    steps = Steps()
    body, i, n, n_off = data[HEADER:], 0, 0, 0
    while i < len(body) and n < MAX_FRAMES:
        b = body[i]
        i += 1
        if b < 0x40:
            length = (b & 0x3F) << 8 | (body[i] if i < len(body) else 0)
            i += 1
        elif b < 0x80:
            length = max(0, mf - 32 + (b & 0x3F))
        elif offload and 0xA0 <= b < 0xC0:
            m, i = offload_op(body, i, b & 0x1F, b & 3, mf, n)
            if n_off < MAX_OFFLOAD:
                steps.msg((m,))
                n_off += 1
            n += 1
            continue
        elif b < 0xC0:
            steps.msg((_PATTERN[n : n + (b & (0x1F if offload else 0x3F)) % 12],))
            n += 1
            continue
        elif b < 0xE0:
            steps.add(("wake", 64 if b == 0xDF else (b & 0x1F) + 1, True))
            continue
        elif b < 0xF0:
            steps.add(("wake", (b & 0x0F) + 1, False))
            continue
        elif b < 0xF8:
            steps.add(("flush",))
            continue
        else:
            length = min(MAX_MSG, 16384 + 256 * (body[i] if i < len(body) else 0))
            i += 1
        steps.msg(message(vnet, length, n))
        n += 1
    steps += [("wake", 64, True)] * 3
    if flags & EOF:
        steps += [("eof",), ("wake", 64, True)]
    steps.add(("flush",))
    return Plan(flags, fields, mf, u16(16), blen, 1 if flags & ONE_BUF else 2, steps, offload)


def extra_refusal(fields: dict, max_frame: int) -> str | None:
    """Why NcmTx refuses a layout TxLayout takes (its documented setup-path refusals), or None."""
    ntb32, size = fields["ntb32"], fields["max_size"]
    nth, dpe = (16, 8) if ntb32 else (12, 4)
    fixed = (16 if ntb32 else 8) + 2 * dpe
    first = nth + ((fields["remainder"] - nth) % fields["divisor"])
    if fields["maxpacket"] > 0xFFFFFFFF:
        return "maxpacket"
    if max_frame < 14 or ((size - fixed) & -fields["alignment"]) - first < max_frame:
        return "max_frame"
    cap = min(fields["max_datagrams"], (size - nth - fixed + dpe) // (14 + dpe))
    if ntb32 and 16 + (cap + 1) * 8 > 0xFFFF:
        return "NDP32 wLength"
    return None


class Harness:
    def __init__(self) -> None:
        from usbnetd.core.stats import Stats
        from usbnetd.netdev.port import TapPort
        from usbnetd.protocols import ncm_codec as nc

        self.Stats, self.TapPort, self.nc = Stats, TapPort, nc
        self.NcmTx = load_fasttx().NcmTx
        self.guarded = GuardedBuffers(2, MAX32)
        self.bad = os.open("/", os.O_RDONLY | os.O_DIRECTORY)  # readv: EISDIR
        self.tap = Taps()
        # The pool buffers of the "ref" and "tail" runs, made once (three runs an input allocated, filled and
        # copied up to 1.5 MiB): every run refills the first `blen` bytes with the junk a new buffer had and
        # the 64 after them with the run's poison, and gets views of exactly `blen` bytes, as before.
        self.heap = {side: [bytearray(MAX32 + len(POISON_REF)) for _ in range(2)] for side in ("ref", "tail")}
        self.layout_fields: list[str] | None = None
        self.ref_ntbs: list | None = None  # the reference run's NTBs, while the native runs compare with them

    # -- the three runs ---------------------------------------------------------------------------------------
    def run(self, plan: Plan, layout: Any, side: str) -> tuple:
        """side: "ref", "exact" (native, guarded exact-size buffers) or "tail" (native, poisoned bytearrays)."""
        return self._run(plan, layout, side, self.tap("tx"))

    def _run(self, plan: Plan, layout: Any, side: str, tap: Any) -> tuple:
        mf, vnet = plan.max_frame, VNET if plan.flags & VNET_ON else 0
        fd = self.bad if plan.flags & ERROR else tap.r.fileno()
        blen = plan.blen
        bufs: list[Any]
        if side == "exact":
            bufs = [self.guarded.place(k, JUNK[k][:blen]) for k in range(plan.pool)]
            views = bufs
        else:
            poison = POISON_REF if side == "ref" else POISON_NAT
            bufs = self.heap[side][: plan.pool]
            for k, buf in enumerate(bufs):
                buf[:blen] = JUNK[k][:blen]
                buf[blen : blen + len(poison)] = poison
            views = [memoryview(b)[:blen] for b in bufs]
        ntbs: list[tuple[int, int, bytes]] = []  # (length, datagrams, ntb_snapshot of the buffer)
        ref_ntbs = self.ref_ntbs
        wakes: list[tuple] = []
        errors: list[str] = []
        st: dict = {"open": False, "next": 0, "dropped": 0}

        if side == "ref":
            stats = self.Stats()
            port = self.TapPort(fd, stats, mf, gro=bool(vnet) and not plan.offload, offload=plan.offload)

            port.read_errors = Hits(errors)  # type: ignore[assignment]
            b = self.nc.NtbBuilder(layout, plan.sequence)

            def finish() -> None:
                if st["open"]:
                    st["open"] = False
                    if b.count:
                        ntbs.append((b.finish(), b.count, ntb_snapshot(bufs[st["next"] % plan.pool], plan.blen,
                                                                       len(ntbs))))
                        st["next"] += 1

            def wake(budget: int, idle: bool) -> None:
                reads = frames = nbytes = 0
                d0 = stats.tx_dropped
                drained = False
                read_into = port.read_into
                pending = port.pending
                while budget or pending:  # a super-frame's segments go first, using no budget
                    if not st["open"]:
                        st["view"] = views[st["next"] % plan.pool]
                        b.begin(st["view"])
                        st["open"] = True
                    offset, room = b.next_slot()
                    if room < mf:
                        finish()
                        continue
                    if pending:
                        n = port.next_segment(st["view"][offset : offset + room])
                    else:
                        n = read_into(st["view"][offset : offset + room])
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
                    if b.next_slot()[1] < mf:
                        finish()
                if st["open"] and b.count and drained and idle:
                    finish()
                wakes.append((reads, frames, nbytes, stats.tx_dropped - d0, drained))

            def state() -> tuple:
                return (st["open"], b.count if st["open"] else 0, b.sequence, stats.tx_dropped, len(port.pending),
                        port.tso_superframes, port.tso_segments, port.csum_completed, port.offload_dropped)
        else:
            tx = self.NcmTx(fd, vnet, mf, *plan.layout_args, sequence=plan.sequence, offload=plan.offload)

            def finish() -> None:
                if st["open"]:
                    st["open"] = False
                    if tx.count:
                        count = tx.count
                        ntbs.append((tx.finish(), count, ntb_snapshot(bufs[st["next"] % plan.pool], plan.blen,
                                                                      len(ntbs), ref_ntbs)))
                        st["next"] += 1
                    else:
                        tx.abandon()
                    if tx.open:
                        raise Difference("finish() left the NTB open")

            def wake(budget: int, idle: bool) -> None:
                reads = frames = nbytes = dropped = 0
                drained = False
                while budget or tx.pending:
                    if not st["open"]:
                        tx.begin(views[st["next"] % plan.pool])
                        st["open"] = True
                    r, c, nb, d, dr, full, err = tx.fill(budget)
                    if not (0 <= r <= budget and (c + d == r or plan.offload and d <= r) and not (full and dr)
                            and (not err or dr)):
                        raise Difference(f"fill({budget}) returned {(r, c, nb, d, dr, full, err)}")
                    budget -= r
                    reads += r
                    frames += c
                    nbytes += nb
                    dropped += d
                    if err:
                        errors.append(os.strerror(err))
                    if full:
                        finish()
                        continue
                    if dr:
                        drained = True
                        break
                    if budget:
                        raise Difference("fill stopped with budget left, neither full nor drained")
                if st["open"] and tx.count and drained and idle:
                    finish()
                st["dropped"] += dropped
                wakes.append((reads, frames, nbytes, dropped, drained))

            def state() -> tuple:
                return (st["open"], tx.count, tx.sequence, st["dropped"], tx.pending, tx.tso_superframes,
                        tx.tso_segments, tx.csum_completed, tx.offload_dropped)

        trace = []
        w = tap.w
        for step in plan.steps:
            kind = step[0]
            if kind == "msg":
                if w.fileno() >= 0:
                    for m in step[1]:
                        w.sendmsg(m)
                trace.append(None)  # nothing ran on either side: the last state stands
                continue
            if kind == "wake":
                wake(step[1], step[2])
            elif kind == "flush":
                finish()
            elif kind == "eof":
                w.close()
            trace.append(state())
        if side == "exact":
            finish()  # the guarded buffers are reused by the next run: nothing may hold them
            return ntbs, wakes, errors, trace, [bytes(x) for x in bufs]
        # the whole buffers, poison included (the reference's are compared after the other runs: copies)
        return ntbs, wakes, errors, trace, [bytes(memoryview(b)[: blen + len(POISON_REF)]) for b in bufs]

    # -- one input ---------------------------------------------------------------------------------------------
    def check(self, data: bytes) -> None:
        plan = parse(data)
        nc = self.nc
        try:
            layout = nc.TxLayout(**plan.fields)
            ref_err = None
        except ValueError as exc:
            layout, ref_err = None, exc
        try:
            self.NcmTx(0, 0, plan.max_frame, **plan.fields)
            nat_err = None
        except ValueError as exc:
            nat_err = exc
        except OverflowError as exc:  # a raw field past 64 bits cannot come from parse()
            raise Difference(f"NcmTx: {exc!r}") from None
        if ref_err is not None:
            if nat_err is None:
                raise Difference(f"TxLayout refuses {plan.fields} ({ref_err}), NcmTx takes it")
            return
        why = extra_refusal(plan.fields, plan.max_frame)
        if (nat_err is None) != (why is None):
            raise Difference(f"NcmTx {'refuses' if nat_err else 'takes'} {plan.fields}, max_frame "
                             f"{plan.max_frame} ({nat_err}); expected {why or 'to take it'}")
        if nat_err is not None:
            return
        if self.layout_fields is None:
            self.layout_fields = [f.name for f in dataclasses.fields(layout)]
        # TxLayout's fields in order, as NcmTx takes them (dataclasses.astuple, without its deep copies)
        plan.layout_args = [getattr(layout, f) for f in self.layout_fields]
        if plan.blen < plan.fields["max_size"]:
            b = nc.NtbBuilder(layout)
            b.begin(memoryview(bytearray(plan.blen)))
            if b.next_slot()[1] < plan.max_frame:  # the reference would open and finish empty NTBs forever
                plan.blen = plan.fields["max_size"]
        self.ref_ntbs = None
        r_ntbs, r_wakes, r_errors, r_trace, r_bufs = self.run(plan, layout, "ref")
        self.ref_ntbs = r_ntbs
        if any(len(x) != plan.blen + len(POISON_REF) or not x.endswith(POISON_REF) for x in r_bufs):
            raise Difference("the reference wrote past the buffer (harness broken)")
        for side in ("exact", "tail"):
            n_ntbs, n_wakes, n_errors, n_trace, n_bufs = self.run(plan, layout, side)
            if len(n_ntbs) != len(r_ntbs):
                raise Difference(f"{side}: {len(n_ntbs)} NTBs, reference {len(r_ntbs)}")
            for k, ((nl, nn, nb), (rl, rn, rb)) in enumerate(zip(n_ntbs, r_ntbs, strict=True)):
                if (nl, nn) != (rl, rn):
                    raise Difference(f"{side}: NTB {k}: length, datagrams {(nl, nn)}, reference {(rl, rn)}")
                if nb != rb:
                    raise Difference(f"{side}: NTB {k} (length {rl}): its buffer's first {plan.blen} bytes differ")
            if n_wakes != r_wakes:
                raise Difference(f"{side}: wake-ups {n_wakes[:8]}, reference {r_wakes[:8]}")
            if n_errors != r_errors:
                raise Difference(f"{side}: read errors {n_errors[:4]}, reference {r_errors[:4]}")
            if n_trace != r_trace:
                k = next(i for i, (a, b) in enumerate(zip(n_trace, r_trace, strict=True)) if a != b)
                raise Difference(f"{side}: after step {k}: (open, count, sequence, dropped, pending, superframes, "
                                 f"segments, csum, offload dropped) {n_trace[k]}, "
                                 f"reference {r_trace[k]}")
            for k, (nb, rb) in enumerate(zip(n_bufs, r_bufs, strict=True)):
                # startswith: the first blen bytes compared in place (slices were two more copies)
                if not (nb.startswith(memoryview(rb)[: plan.blen]) and len(nb) >= plan.blen):
                    raise Difference(f"{side}: pool buffer {k} differs")
                if side == "tail" and (len(nb) != plan.blen + len(POISON_NAT) or not nb.endswith(POISON_NAT)):
                    raise Difference(f"{side}: pool buffer {k}: written past its end")


# --- seeds ---------------------------------------------------------------------------------------------------


def header(flags: int = 0, div_exp: int = 2, rem: int = 0, align_exp: int = 0, max_dg: int = 0xFF00, mp: int = 2,
           size: int = 16384, mf: int | None = 1514, seq: int = 0, short: int = 0, offload: bool = False) -> bytes:
    """The 20 header bytes for a valid (non-raw) layout; size is max_size (NTB16: 256..0xFFFF)."""
    ntb32 = flags & NTB32
    span = (MAX32 if ntb32 else 0xFFFF) - 255
    v = (size - 256) % span
    h = bytearray(HEADER)
    h[0] = flags
    h[1] = div_exp
    h[2] = int(offload)
    struct.pack_into("<H", h, 3, rem)
    h[5] = align_exp
    struct.pack_into("<H", h, 7, max_dg)
    h[9] = mp
    h[11:14] = v.to_bytes(3, "little")
    if mf is None or mf == 1514:
        h[15] = 0x80
    else:
        struct.pack_into("<H", h, 14, mf - 14)
    struct.pack_into("<H", h, 16, seq)
    struct.pack_into("<H", h, 18, short)
    return bytes(h)


def frames(*sizes: int) -> bytes:
    out = bytearray()
    for n in sizes:
        out += bytes([0x00 | (n >> 8) & 0x3F, n & 0xFF])
    return bytes(out)


def seeds() -> list[bytes]:
    full = frames(*([1514] * 24))
    mixed = frames(14, 15, 60, 64, 1513, 1514, 999, 0, 13, 1515, 3000, 9000) + b"\x85\x80\x89" + b"\x5f\x60\x40"
    small = frames(*([64] * 120))
    wakes = b"\xc0\xe2\xf0\xdf\xc6"
    out = []
    for flags in (0, NTB32, VNET_ON, NTB32 | VNET_ON, PAD, EOF | VNET_ON, ONE_BUF):
        for body in (full + wakes, mixed + wakes + mixed, small + b"\xe3" * 10 + b"\xf0" + small, full + small):
            out.append(header(flags) + body)
    # the simulated adapter's layouts (sim.py SIM_NTB: divisor 4, remainder 2, alignment 4; out 32 datagrams)
    out.append(header(0, 2, 2, 0, 31, size=16384) + full + mixed)
    out.append(header(NTB32 | VNET_ON, 2, 2, 0, 31, size=65536) + full + small)
    out.append(header(0, 2, 2, 0, 39, size=16384) + small + mixed)
    # odd divisors, remainders, alignments, datagram limits, maxpackets, sizes, max_frames
    out.append(header(NTB32, 6, 63, 3, 39, 1, 20000) + mixed + full)
    out.append(header(0, 3, 3, 2, 0, 2, 9999) + small + b"\xd0" + mixed)
    out.append(header(0, 0, 0, 1, 2, 3, 2048) + full + mixed)
    out.append(header(NTB32 | PAD, 4, 6, 4, 0xFF00, 3, 16385) + full + full)
    out.append(header(0, 2, 0, 0, 0xFF00, 1, 4096) + bytes(range(0x40, 0x80)) + wakes)
    out.append(header(0, 2, 2, 0, 0xFF00, 2, 3000) + frames(1452, 1600) + b"\xdf")  # room exactly max_frame
    out.append(header(SHORT, 2, 0, 0, 0xFF00, 2, 4096, short=2000) + full)
    out.append(header(NTB32, 9, 100, 5, 0xFF00, 2, MAX32 - 1) + small + full + b"\xf8\x10\xf9\xff")
    out.append(header(0, 2, 0, 0, 0xFF00, 0, 600, mf=60) + small)
    out.append(header(0, 2, 0, 0, 0xFF00, 2, 30000, mf=9014) + frames(9014, 9015, 14, 9000) * 4)
    out.append(header(ERROR) + full)
    out.append(header(0, seq=0xFFFE) + full * 3)
    raw = bytearray(header(RAW))
    struct.pack_into("<HHHHH", raw, 1, 3, 0, 4, 40, 512)
    out.append(bytes(raw) + full)
    # TX offloads: super-frames (IPv4, IPv6, options, a VLAN tag, MSS at the max_frame edge), NEEDS_CSUM
    # datagrams, mutated vnet headers and headers, among plain frames and wake-ups
    v4 = b"\xa0\xc8\xf0\xa8\x05"  # 61,640 bytes (p1 bits 0-3 clear: no options), MSS 1449 (p2p3 % 1600 + 1)
    v6 = b"\xb0\x10\x20\x9f\x05"  # 8,208 bytes, MSS 1440: segments of exactly 1514
    opts = b"\xa0\x18\x7f\x00\x05" + b"\xb0\x10\x2c\x00\x85"  # options; IPv6 at the max_frame edge
    edge = b"\xa0\x00\x40\x00\x80\xa0\x00\x40\x01\x80\xa0\x00\x40\x02\x80"
    udp = b"\xa8\x90\x01\x00\x00\xb8\x00\x00\x00\x00\xac\x40\x00\x00\x00"
    vlan = b"\xa4\x00\x30\x00\x04\xb4\x00\x30\x00\x04"
    mutated = b"\xa1\x00\x20\x00\x04\x01\x03" + b"\xa2\x00\x20\x00\x04\x06\x00\x07\x00" + \
        b"\xa1\x00\x20\x00\x04\x2f\xff" + b"\xb1\x00\x20\x00\x04\x14\x2b" + b"\xa9\x10\x00\x00\x00\x08\xff"
    for flags in (VNET_ON, VNET_ON | NTB32, VNET_ON | ONE_BUF, VNET_ON | PAD):
        out.append(header(flags, offload=True) + v4 + full[:8] + v6 + b"\xe0" + opts + edge + b"\xdf" + udp + vlan)
        out.append(header(flags, offload=True) + mutated + mixed + v4 + b"\xe1\xe1\xf0" + v6 + b"\x85\x8a")
    out.append(header(VNET_ON, 2, 2, 0, 31, size=16384, offload=True) + v4 * 3 + b"\xc0" * 8 + v6 * 3)
    out.append(header(VNET_ON | NTB32, 2, 2, 0, 31, size=65536, offload=True) + v4 * 4 + udp + v6)
    out.append(header(VNET_ON, 0, 0, 1, 2, 3, 2048, offload=True) + v4 + edge + full[:10])
    out.append(header(VNET_ON, 2, 0, 0, 0xFF00, 2, 30000, mf=9014, offload=True) + v4 + b"\xa0\x00\x90\x00\x80")
    out.append(header(VNET_ON | SHORT, 2, 0, 0, 0xFF00, 2, 4096, short=1000, offload=True) + v4 + mutated)
    return out


check = nc_.checker(lambda: Harness())


def _instrument(atheris) -> None:
    with atheris.instrument_imports(include=["usbnetd"]):
        import usbnetd.core.stats  # noqa: F401
        import usbnetd.netdev.gso  # noqa: F401
        import usbnetd.netdev.port  # noqa: F401
        import usbnetd.protocols.ncm_codec  # noqa: F401
    atheris.instrument_func(parse)
    atheris.instrument_func(Harness._run)


def main(argv: list[str]) -> int:
    return nc_.main(argv, TARGET, check, seeds, load_fasttx, _instrument, MAX_INPUT)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
