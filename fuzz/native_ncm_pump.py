"""Differential fuzz target `native-ncm-pump`: the C TX pump for NCM (usbnetd.native._fasttx.NcmPump: arm, fill,
flush, the transfers' C callback, watchdog, cancel_all, add_to, take_flushes, disarm, and the entry points it
hands the C event loop: room, fill, tick, deadline, attention) against the Python data path's pieces
(NtbBuilder + TapPort.read_into / next_segment as DataPath.on_tap_readable drives them for NCM, the flush rules
of _after_tap_read, _finish_tx and process(), BulkPipe's submissions, completions and watchdog,
DataPath._on_tx's counting), on real libusb transfer structs.

    python fuzz/native_ncm_pump.py [libFuzzer options] [CORPUS_DIR ...]     # atheris, coverage of the reference
    python fuzz/native_ncm_pump.py --engine=random -runs=N [-seed=S] [CORPUS_DIR ...]   # fuzz.py's engine
    fuzz/native_asan.sh --pump [options]                                    # the same against an ASan/UBSan build

TAP frames in, NTBs in bulk OUT transfers out. A 20-byte header, then operations:

    byte 0   flags: 1 NTB32, 2 vnet header (10 zero bytes before every frame), 4 pad_to_max, 8 TX offloads
             (with 2: TSO super-frames and NEEDS_CSUM datagrams, as fuzz/native_ncm_tx.py makes them), 16 EOF at
             the end (the writer closes), 32 add_to and take_flushes after every operation (else only at 0xD8-0xDF
             and at the end), 64 the fd fails every read (EISDIR), 128 the pump's buffers are memory lent at arm
             (as usb/engine.py lends usbfs memory), n * max_size bytes ending at an inaccessible page
    1        transfers: 1 + b % 8
    2        divisor: 1 << (b % 10);  3-4 remainder, modulo the divisor;  5 NDP alignment: 1 << (2 + b % 6)
    6        the watchdog's checks: 1 + b % 4
    7-8      max_datagrams: 1 + v % 64, or 40 when v >= 0xFF00
    9        maxpacket: 8, 64, 512, 1024 or byte 10 + 1
    11-13    max_size: 256 + v % (0xFFFF - 255), NTB32 up to 128 KiB
    14-15    max_frame: 1514 when byte 15 has bit 7, else 14 + v % 9100; cut to what an empty NTB holds
    16-17    the first wSequence
    ops      0x00-0x3F lo: a frame of ((b & 0x3F) << 8 | lo) bytes;  0x40-0x5F: max_frame - 16 + (b & 0x1F) bytes;
             0x60-0x7F: offloads on: an offload message (fuzz/native_ncm_tx.py's 0xA0-0xBF, x = b & 0x1F, then
             p0-p3 and the mutations), else a raw message of (b & 0x1F) % 12 bytes;  0x80-0x9F: fill(budget
             b & 0x1F; 0x80 is budget 0, 0x9F is 64);  0xA0-0xBF [s]: the (b & 7)-th transfer in flight completes,
             with status STATUSES[s % 8] if bit 3 is set, else COMPLETED;  0xC0-0xC7: the watchdog;  0xC8-0xCB:
             cancel_all;  0xCC-0xCF: the next submission fails with SUBMIT_ERRORS[b & 3];  0xD0-0xD7:
             flush(FLUSH_COMPLETION if b & 1 else FLUSH_TIMER);  0xD8-0xDF: add_to and take_flushes;
             0xE0-0xE7: the C event loop's tick, the flush delay not passed;  0xE8-0xEB: its tick, the flush delay
             passed;  0xEC-0xEF: its fill (budget 0, 1, 8, 64);  0xF0-0xF3: disarm (refused with transfers in
             flight; a partial NTB is dropped), then arm again;  0xF4-0xF7: a raw message of (b & 3) * 4 bytes;
             0xF8-0xFF n: a frame of 16384 + 256 * n bytes
    then fill(64) twice, EOF and fill(64) if flag 16, three rounds of (every transfer in flight completes,
    fill(0), flush(FLUSH_TIMER)), cancel_all, add_to, disarm.

A cancellation (watchdog, cancel_all) completes the transfer as cancelled right after the call, as libusb does
at the next handle_events. Frames are numbered and filled from a fixed random pattern. Compared after every
operation: what the call returned (fill's (read, empty), flush's bool, the watchdog's count, whether disarm was
refused), transfers in flight and free (`free`, and the event loop's `room`), frames in the open NTB, segments
pending, the next wSequence, the offload counters, whether the flush timer is armed (`deadline`) and whether
Python must look (`attention`); at every add_to: its eight values against the reference's, the five tx_*
counters in Stats, the NTBs submitted per flush reason (take_flushes); in the end every transfer submitted (its
NTB bytes, length, ZLP flag, in order), every cancellation (by submission), the read errors. Any difference
raises `Difference`. The pump's own buffers are C heap blocks ASan guards (with either Python allocator); lent
ones end at an inaccessible page.
Messages written back to back are one step: nothing runs on either side between them, so nothing is compared
after each (native_common.Steps). The reference's pool, BulkPipe and TAP stand-ins are made once and reset for
every input (native_common.UsbTx); the NcmTx and NcmPump under test are new for every input.

The reference is assembled from the data path's pieces, not from the pump's structure: an NTB is opened in a
pool packet when the pipe has a transfer free to carry it, framed by NtbBuilder from TapPort's reads, sent
(NtbBuilder.finish, BulkPipe.submit) when full, when the TAP is drained and no transfer is in flight, on a
completion, on the flush timer; a submission libusb refuses loses its NTB (its frames are TX errors, one
aborted transfer, as _on_tx counts a transfer that fails).

USBNETD_NATIVE_TX_SO=path loads that build of the extension instead of the package's, and
USBNETD_FUZZ_LAST_INPUT=path writes every input there before it runs (native_asan.sh --pump sets both).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import struct
import sys
import types
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import native_common as nc_  # noqa: E402  (what the native targets share)
from native_common import (  # noqa: E402  (the bulk OUT stand-ins)
    COMPLETED,
    STATUSES,
    SUBMIT_ERRORS,
    Difference,
    Hits,
    Side,
    Steps,
    Tap,
    UsbTx,
)
from native_ncm_tx import message, offload_op  # noqa: E402  (frames and offload messages)

TARGET = "native-ncm-pump"
HEADER = 20
MAX_INPUT = 4096
MAX_OPS = 600
MAX_OFFLOAD = 16
MAX_XFERS = 8
MAX32 = 128 << 10  # NTB32 max_size at most (every transfer's buffer is this large)
MAX_MSG = 70000
VNET = 10
NTB32, VNET_ON, PAD, OFFLOAD, EOF, EVERY, ERROR, LENT = 1, 2, 4, 8, 16, 32, 64, 128
FULL, IDLE, COMPLETION, TIMER = range(4)  # core/datapath.py FLUSH_FULL .. FLUSH_TIMER
NOW_BEFORE, NOW_AFTER = 1, 1 << 62  # tick's CLOCK_MONOTONIC ns: before any flush deadline, after every one


class BurstTx(ctypes.Structure):
    """burst.h's struct burst_tx: what burst_hooks() hands the C event loop."""

    _fields_ = [
        ("obj", ctypes.c_void_p),
        ("room", ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p)),
        ("fill", ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_long)),
        ("tick", ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_longlong)),
        ("deadline", ctypes.CFUNCTYPE(ctypes.c_longlong, ctypes.c_void_p)),
        ("attention", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)),
        ("set_busy", ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int)),
    ]


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_pointer.restype = ctypes.c_void_p


def load_fasttx() -> Any:
    return nc_.load_extension(TARGET, "USBNETD_NATIVE_TX_SO", "_fasttx", "fasttx")


@dataclasses.dataclass
class Plan:
    flags: int
    n: int
    fields: dict  # TxLayout's fields
    max_frame: int
    sequence: int
    checks: int
    offload: bool
    steps: list
    layout_args: list = dataclasses.field(default_factory=list)  # TxLayout's fields, as NcmTx takes them


def first_room(ntb32: bool, size: int, div: int, rem: int, align: int) -> int:
    """The room an empty NTB has for its first datagram (NcmTx's max_frame check, TxLayout's arithmetic)."""
    nth, dpe = (16, 8) if ntb32 else (12, 4)
    fixed = (16 if ntb32 else 8) + 2 * dpe
    return ((size - fixed) & -align) - (nth + ((rem - nth) % div))


def parse(data: bytes) -> Plan:
    data = data[:MAX_INPUT]
    h = data[:HEADER].ljust(HEADER, b"\0")
    flags = h[0]
    u16 = lambda i: struct.unpack_from("<H", h, i)[0]  # noqa: E731
    ntb32 = bool(flags & NTB32)
    div = 1 << (h[2] % 10)
    rem = u16(3) % div
    align = 1 << (2 + h[5] % 6)
    max_dg = 40 if u16(7) >= 0xFF00 else 1 + u16(7) % 64
    mp = (8, 64, 512, 1024, h[10] + 1)[h[9] % 5]
    size = 256 + int.from_bytes(h[11:14], "little") % ((MAX32 if ntb32 else 0xFFFF) - 255)
    mf = 1514 if h[15] & 0x80 else 14 + u16(14) % 9100
    # a max_frame no empty NTB holds is a refused layout (fuzz/native_ncm_tx.py's business): cut it to fit
    mf = max(14, min(mf, first_room(ntb32, size, div, rem, align)))
    fields = dict(ntb32=ntb32, max_size=size, divisor=div, remainder=rem, alignment=align, max_datagrams=max_dg,
                  maxpacket=mp, pad_to_max=bool(flags & PAD))
    vnet = VNET if flags & VNET_ON else 0
    offload = bool(flags & OFFLOAD and flags & VNET_ON)
    steps = Steps()
    body, i, n, n_off = data[HEADER:], 0, 0, 0
    while i < len(body) and steps.ops < MAX_OPS:
        b = body[i]
        i += 1
        length = -1
        if b < 0x40:
            length = (b & 0x3F) << 8 | (body[i] if i < len(body) else 0)
            i += 1
        elif b < 0x60:
            length = max(0, mf - 16 + (b & 0x1F))
        elif b < 0x80:
            if offload:
                m, i = offload_op(body, i, b & 0x1F, b & 3, mf, n)
                if n_off < MAX_OFFLOAD:
                    steps.msg((m,))
                    n_off += 1
            else:
                steps.msg(message(0, (b & 0x1F) % 12, n))
            n += 1
        elif b < 0xA0:
            steps.add(("fill", 64 if b == 0x9F else b & 0x1F))
        elif b < 0xC0:
            status = COMPLETED
            if b & 8:
                status = STATUSES[body[i] % len(STATUSES)] if i < len(body) else STATUSES[0]
                i += 1
            steps.add(("complete", b & 7, status))
        elif b < 0xC8:
            steps.add(("watchdog",))
        elif b < 0xCC:
            steps.add(("cancel",))
        elif b < 0xD0:
            steps.add(("fail", SUBMIT_ERRORS[b & 3]))
        elif b < 0xD8:
            steps.add(("flush", COMPLETION if b & 1 else TIMER))
        elif b < 0xE0:
            steps.add(("events",))
        elif b < 0xE8:
            steps.add(("tick", NOW_BEFORE))
        elif b < 0xEC:
            steps.add(("tick", NOW_AFTER))
        elif b < 0xF0:
            steps.add(("hookfill", (0, 1, 8, 64)[b & 3]))
        elif b < 0xF4:
            steps.add(("rearm",))
        elif b < 0xF8:
            steps.msg(message(0, (b & 3) * 4, n))
            n += 1
        else:
            length = min(MAX_MSG, 16384 + 256 * (body[i] if i < len(body) else 0))
            i += 1
        if length >= 0:
            steps.msg(message(vnet, length, n))
            n += 1
    steps += [("fill", 64), ("fill", 64)]
    if flags & EOF:
        steps += [("eof",), ("fill", 64)]
    steps += [("complete_all",), ("fill", 0), ("flush", TIMER)] * 3
    steps += [("cancel",), ("events",), ("final",)]
    return Plan(flags, 1 + h[1] % MAX_XFERS, fields, mf, u16(16), 1 + h[6] % 4, offload, steps)


class Harness:
    def __init__(self) -> None:
        from usbnetd.core import datapath
        from usbnetd.core.stats import Stats
        from usbnetd.netdev.port import TapPort
        from usbnetd.protocols import ncm_codec

        self.datapath, self.nc = datapath, ncm_codec
        self.Stats, self.TapPort = Stats, TapPort
        ext = load_fasttx()
        self.NcmTx, self.NcmPump = ext.NcmTx, ext.NcmPump
        # the reference's pool: one more packet than transfers (an NTB opens only with a transfer free), each
        # as large as the largest NTB; every NTB is framed in the first max_size bytes of one
        self.usb = UsbTx(MAX_XFERS, MAX_XFERS + 1, MAX32)
        self.layout_fields = None
        self.lent = nc_.GuardedBuffers(1, MAX_XFERS * MAX32)  # flag LENT: the memory arm lends the pump

    # -- the Python pieces ------------------------------------------------------------------------------------
    def reference(self, plan: Plan, layout: Any) -> tuple:
        usb = self.usb
        tap = usb.tap("ref")
        fd = usb.bad if plan.flags & ERROR else tap.r.fileno()
        stats = self.Stats()
        vnet = bool(plan.flags & VNET_ON)
        port = self.TapPort(fd, stats, plan.max_frame, gro=vnet and not plan.offload, offload=plan.offload)
        read_errors: list[str] = []
        errors: list[str] = []
        mf, size = plan.max_frame, plan.fields["max_size"]
        port.read_errors = Hits(read_errors)  # type: ignore[assignment]
        pool = usb.pool()
        side = usb.new_side()
        # DataPath's own state, as _on_tx reads and writes it
        dp = usb.datapath_state(stats, pool, errors)
        b = self.nc.NtbBuilder(layout, plan.sequence)
        # st: the open NTB's packet (or None); the flush timer; transfers completed, and those process() saw
        st: dict[str, Any] = {"p": None, "timer": False, "done": 0, "tick_seen": 0, "gone": False}
        counts = {"submitted": 0, "completed": 0, "refused": 0}
        flushes = [0, 0, 0, 0]

        on_tx = self.datapath.DataPath._on_tx

        def on_done(packet, status: int, actual: int) -> None:
            st["done"] += 1
            counts["completed"] += 1
            on_tx(dp, packet, status)  # type: ignore[arg-type]

        bulk = usb.bulk
        usb.swap_cancel()
        try:
            pipe = usb.pipe(plan.n, on_done)

            def send(reason: int) -> None:
                """DataPath._finish_tx, the NTB submitted at once (the pump's transfer is the NTB's own)."""
                p = st["p"]
                st["p"] = None
                if p is None:
                    return
                if not b.count:
                    pool.deallocate(p)
                    return
                st["timer"] = False
                flushes[reason] += 1
                length = b.finish()
                try:
                    pipe.submit(p, p.offset, length, False)  # NCM: the layout makes a ZLP unnecessary
                    counts["submitted"] += 1
                except bulk.SubmitError as exc:
                    # the NTB cannot go: its frames are TX errors, one transfer aborted, as _on_tx counts it
                    pool.deallocate(p)
                    counts["refused"] += 1
                    stats.tx_errors += dp._tx_frames[p.index]
                    stats.tx_aborted_errors += 1
                    if exc.code == bulk.ERROR_NO_DEVICE:
                        st["gone"] = True

            def fill(budget: int) -> tuple[int, int]:
                """DataPath.on_tap_readable's Python NCM loop; an NTB opens only with a transfer free for it."""
                read = 0
                drained = False
                pending = port.pending
                while budget or pending:
                    p = st["p"]
                    if p is None:
                        if not pipe.free_count:
                            break
                        p = st["p"] = pool.allocate()
                        assert p is not None
                        b.begin(p.view[p.offset : p.offset + size])
                        dp._tx_frames[p.index] = 0
                        dp._tx_bytes[p.index] = 0
                    offset, room = b.next_slot()
                    if room < mf:
                        if not b.count:
                            raise Difference("an empty NTB has no room for max_frame (harness broken)")
                        send(FULL)
                        continue
                    view = p.view[p.offset + offset : p.offset + offset + room]
                    if pending:
                        n = port.next_segment(view)
                    else:
                        n = port.read_into(view)
                        if n < 0:
                            drained = True
                            break
                        budget -= 1
                        read += 1
                        if n == 0:
                            continue
                    dp._tx_frames[p.index] += 1
                    dp._tx_bytes[p.index] += n
                    b.commit(n)
                    if b.next_slot()[1] < mf:
                        send(FULL)
                # _after_tap_read: the pipe idle and the TAP drained, a partial NTB goes now; else the flush timer
                if st["p"] is not None and b.count:
                    if drained and not pipe.in_flight:
                        send(IDLE)
                    else:
                        st["timer"] = True
                if st["p"] is not None and not b.count:
                    pool.deallocate(st["p"])  # opened for frames that never came
                    st["p"] = None
                return read, int(drained)

            def flush(reason: int) -> bool:
                if st["p"] is None or not b.count:
                    return False
                send(reason)
                return True

            def tick(now: int) -> None:
                """process()'s NCM part: a completion sends a waiting partial NTB, a super-frame's waiting
                segments go on when a transfer is free, then the flush timer."""
                if st["done"] != st["tick_seen"]:
                    st["tick_seen"] = st["done"]
                    flush(COMPLETION)
                if port.pending and pipe.free_count:
                    fill(0)
                if st["timer"] and now >= NOW_AFTER:
                    flush(TIMER)
                    st["timer"] = False

            reported = {"stats": None, "submitted": 0, "completed": 0, "errors": 0, "read": 0, "flushes": [0] * 4,
                        "last_status": 0}

            def attention() -> bool:
                return bool(dp._stalled_out or dp.device_gone or st["gone"] or len(read_errors) > reported["read"]
                            or len(errors) > reported["errors"])

            def events() -> tuple:
                failed = len(errors) - reported["errors"]
                if failed:
                    reported["last_status"] = int(errors[-1].split()[-1])
                out = (counts["submitted"] - reported["submitted"], counts["completed"] - reported["completed"],
                       failed, reported["last_status"], len(read_errors) - reported["read"],
                       int(dp._stalled_out), int(dp.device_gone or st["gone"]))
                fl = tuple(f - r for f, r in zip(flushes, reported["flushes"], strict=True))
                reported.update(submitted=counts["submitted"], completed=counts["completed"], errors=len(errors),
                                read=len(read_errors), flushes=list(flushes))
                dp._stalled_out = dp.device_gone = st["gone"] = False
                return out, fl

            def rearm() -> bool:
                if pipe.in_flight:
                    return False  # refused: the transfers are not the pump's to give back yet
                if st["p"] is not None:  # teardown drops what is framed and unsent (DataPath._release_tx)
                    pool.deallocate(st["p"])
                    st["p"] = None
                st["timer"] = False  # nothing waits for it
                return True

            def state() -> tuple:
                return (pipe.in_flight, pipe.free_count, pipe.free_count, b.count if st["p"] is not None else 0,
                        len(port.pending), b.sequence, port.tso_superframes, port.tso_segments,
                        port.csum_completed, port.offload_dropped, st["timer"], attention())

            ops = types.SimpleNamespace(fill=fill, flush=flush, tick=tick, hookfill=fill, events=events,
                                        watchdog=lambda: pipe.watchdog(plan.checks), cancel_all=pipe.cancel_all,
                                        rearm=rearm, final=lambda: (rearm(), counts["refused"]), state=state)
            trace = self.run(plan, side, tap, ops, stats)
            usb.pipe_idle(pipe)
        finally:
            usb.restore()
        return trace, side.submitted, side.cancelled, read_errors

    # -- the C pump -------------------------------------------------------------------------------------------
    def native(self, plan: Plan, layout: Any) -> tuple:
        usb = self.usb
        tap = usb.tap("nat")
        fd = usb.bad if plan.flags & ERROR else tap.r.fileno()
        stats = self.Stats()
        tx = self.NcmTx(fd, VNET if plan.flags & VNET_ON else 0, plan.max_frame, *plan.layout_args,
                        sequence=plan.sequence, offload=plan.offload)
        pump = self.NcmPump(tx)
        addrs = usb.native_transfers(plan.n)
        side = usb.new_side()
        read_errors: list[str] = []
        hooks: dict[str, Any] = {}

        lent: tuple[int, int] | tuple[()] = ()
        if plan.flags & LENT:
            size = plan.n * tx.max_size
            lent = (ctypes.addressof(ctypes.c_char.from_buffer(self.lent.maps[0])) + self.lent.size - size, size)

        def arm() -> None:
            pump.arm(usb.submit_addr, usb.cancel_addr, addrs, *lent)
            if pump.lent != bool(lent):
                raise Difference(f"arm with lent memory {lent}: pump.lent is {pump.lent}")
            cap = pump.burst_hooks()
            hooks["cap"] = cap  # keeps the pump's hooks struct alive while it is used
            h = BurstTx.from_address(_capsule_pointer(cap, b"usbnetd.native.burst_tx"))
            # the hooks' function pointers, read once per arm (a ctypes field read makes a new function object)
            hooks["h"] = (h.obj, h.room, h.fill, h.tick, h.deadline, h.attention, h.set_busy)

        def events() -> tuple:
            submitted, completed, failed, last_status, read_failed, read_errno, stalled, gone = pump.add_to(stats)
            if read_failed:
                read_errors.extend([os.strerror(read_errno)] * read_failed)
            return (submitted, completed, failed, last_status, read_failed, stalled, gone), pump.take_flushes()

        def fill(budget: int) -> tuple[int, int]:
            read, empty = pump.fill(budget)
            if not 0 <= read <= budget:
                raise Difference(f"fill({budget}) read {read}")
            return read, empty

        def on_hooks(hook: int, arg: int) -> None:
            h = hooks["h"]
            obj, set_busy = h[0], h[6]
            set_busy(obj, 1)
            try:
                h[hook](obj, arg)
            finally:
                set_busy(obj, 0)

        def rearm() -> bool:
            try:
                pump.disarm()
            except RuntimeError:
                if not pump.armed:
                    raise Difference("a refused disarm left the pump disarmed") from None
                return False
            if pump.armed or tx.open:
                raise Difference("disarm left the pump armed or the NTB open")
            usb.callbacks_back(plan.n)
            arm()
            return True

        def final() -> tuple:
            done = rearm()
            if done:
                hooks.clear()
                pump.disarm()
            return done, pump.submit_failed

        def state() -> tuple:
            h = hooks.get("h")
            if h is not None:
                obj = h[0]
                room, timer, attention = h[1](obj), h[4](obj) >= 0, bool(h[5](obj))
            else:
                room, timer, attention = pump.free, False, False
            return (pump.in_flight, pump.free, room, pump.open_count, pump.pending, tx.sequence, tx.tso_superframes,
                    tx.tso_segments, tx.csum_completed, tx.offload_dropped, timer, attention)

        ops = types.SimpleNamespace(fill=fill, flush=pump.flush,
                                    tick=lambda now: on_hooks(3, now),
                                    hookfill=lambda budget: on_hooks(2, budget),
                                    events=events, watchdog=lambda: pump.watchdog(plan.checks),
                                    cancel_all=pump.cancel_all, rearm=rearm, final=final, state=state)
        try:
            arm()
            trace = self.run(plan, side, tap, ops, stats)
            if pump.armed:
                raise Difference("the pump is still armed in the end")
            if pump.broken:
                raise Difference(f"{pump.broken} NTBs broken (a layout check failed)")
        finally:
            hooks.clear()
            self.side = None
        return trace, side.submitted, side.cancelled, read_errors

    # -- the operations, the same on both sides ---------------------------------------------------------------
    def run(self, plan: Plan, side: Side, tap: Tap, ops: Any, stats: Any) -> list:
        trace = []
        every = bool(plan.flags & EVERY)
        w = tap.w
        complete, deliver, state = self.usb.complete, self.usb.deliver, ops.state
        for step in plan.steps:
            kind = step[0]
            out: Any = None
            if kind == "msg":
                if w.fileno() >= 0:
                    for m in step[1]:
                        w.sendmsg(m)
                trace.append(("msg", None, None))  # nothing ran on either side: the last state stands
                continue
            elif kind == "fill":
                out = tuple(ops.fill(step[1]))
            elif kind == "hookfill":
                ops.hookfill(step[1])
            elif kind == "complete":
                if side.in_flight:
                    complete(side.in_flight.pop(step[1] % len(side.in_flight)), step[2])
            elif kind == "complete_all":
                while side.in_flight:
                    complete(side.in_flight.pop(0), COMPLETED)
            elif kind == "watchdog":
                out = ops.watchdog()
                deliver(side)
            elif kind == "cancel":
                ops.cancel_all()
                deliver(side)
            elif kind == "fail":
                side.fail_next = step[1]
            elif kind == "flush":
                out = bool(ops.flush(step[1]))
            elif kind == "tick":
                ops.tick(step[1])
            elif kind == "rearm":
                out = ops.rearm()
            elif kind == "final":
                out = ops.final()
            elif kind == "eof":
                w.close()
            if kind == "events" or (every and kind != "final"):
                ev, fl = ops.events()
                s = stats
                out = (out, ev, tuple(fl), (s.tx_packets, s.tx_bytes, s.tx_errors, s.tx_aborted_errors,
                                            s.tx_dropped))
            trace.append((kind, out, state() if kind != "final" else None))
        return trace

    def check(self, data: bytes) -> None:
        plan = parse(data)
        try:
            layout = self.nc.TxLayout(**plan.fields)
            self.NcmTx(0, 0, plan.max_frame, **plan.fields)
        except ValueError:
            return  # a refused layout: fuzz/native_ncm_tx.py's business
        if self.layout_fields is None:
            self.layout_fields = [f.name for f in dataclasses.fields(layout)]
        # TxLayout's fields in order, as NcmTx takes them (dataclasses.astuple, without its deep copies)
        plan.layout_args = [getattr(layout, f) for f in self.layout_fields]
        r_trace, r_sub, r_cancel, r_read = self.reference(plan, layout)
        n_trace, n_sub, n_cancel, n_read = self.native(plan, layout)
        if n_trace != r_trace:
            k = next((i for i, (a, b) in enumerate(zip(n_trace, r_trace, strict=True)) if a != b), -1)
            raise Difference(f"after step {k} ({plan.steps[k][0]}): (kind, returned [, add_to (submitted, completed, "
                             f"failed, last status, read failed, stalled, gone), flushes (full, idle, completion, "
                             f"timer), (tx_packets, tx_bytes, tx_errors, tx_aborted_errors, tx_dropped)]), (in "
                             f"flight, free, room, open count, pending, sequence, superframes, segments, csum, "
                             f"offload dropped, timer, attention)) {n_trace[k]}, reference {r_trace[k]}")
        self.usb.compare((n_sub, n_cancel, n_read), (r_sub, r_cancel, r_read))


# --- seeds ---------------------------------------------------------------------------------------------------


def header(flags: int = 0, n: int = 4, div_exp: int = 2, rem: int = 0, align_exp: int = 0, checks: int = 1,
           max_dg: int = 0xFF00, mp: int = 2, size: int = 16384, mf: int = 1514, seq: int = 0) -> bytes:
    span = (MAX32 if flags & NTB32 else 0xFFFF) - 255
    h = bytearray(HEADER)
    h[0], h[1], h[2] = flags, n - 1, div_exp
    struct.pack_into("<H", h, 3, rem)
    h[5], h[6] = align_exp, checks - 1
    struct.pack_into("<H", h, 7, max_dg)
    h[9] = mp
    h[11:14] = ((size - 256) % span).to_bytes(3, "little")
    if mf == 1514:
        h[15] = 0x80
    else:
        struct.pack_into("<H", h, 14, mf - 14)
    struct.pack_into("<H", h, 16, seq)
    return bytes(h)


def frames(*sizes: int) -> bytes:
    return b"".join(bytes([(n >> 8) & 0x3F, n & 0xFF]) for n in sizes)


def seeds() -> list[bytes]:
    out = []
    full = frames(*([1514] * 12))
    mixed = frames(60, 1514, 14, 13, 0, 1515, 3000, 512, 1024) + b"\x40\x50\x5f\x61\x62\xf4\xf5"
    small = frames(*([64] * 40))
    ops = b"\x9f\xa0\xe0\xa9\x03\xd8\x85\xc0\xc0\xc0\xd8\xd1\xe8\xd0\xd8"
    for flags in (0, NTB32, VNET_ON, PAD, EOF | VNET_ON, ERROR, EVERY, EVERY | NTB32 | VNET_ON):
        out.append(header(flags) + full + ops + mixed + b"\x9f\xe0\xd8" + small + b"\x84\xa0\xa0\xe8\xd8")
        out.append(header(flags, 2) + small + b"\x82\xa0\x81\xab\x02\x83\xe0\xcc\x9f\xd8\xf0\xa0\xa0\xf0"
                   + small + b"\x85\xf0\xd0\xa0\xe0\xd8")
    # one transfer: everything waits for it; partial NTBs flushed on completion (the method and the tick)
    out.append(header(EVERY, 1) + small + b"\x83\x9f\x9f\xa0\xe0\x9f\xa0\xd1\xa0\xe8\xec\xed\xee\xef\xa0\xd8")
    # the simulated adapter's layout; odd layouts, max_frames, datagram limits
    out.append(header(0, 4, 2, 2, 0, 1, 31, 2, 16384) + full + mixed + b"\x9f\xd8")
    out.append(header(NTB32, 3, 6, 63, 3, 2, 39, 1, 20000) + mixed + full + b"\x9f\xc0\xc0\xc0\xd8")
    out.append(header(0, 2, 0, 0, 1, 1, 2, 3, 2048) + full + b"\x9f\xa0\xd8")
    out.append(header(NTB32 | PAD, 8, 4, 6, 4, 1, 0xFF00, 3, 16385) + full + full + b"\x9f\xd8")
    out.append(header(0, 4, 2, 0, 0, 1, 0xFF00, 2, 30000, mf=9014) + frames(9014, 9015, 14, 9000) * 3 + b"\xd8")
    out.append(header(0, 4, 2, 0, 0, 1, 0xFF00, 0, 600, mf=60) + frames(*([60] * 30)) + b"\xd8")
    out.append(header(0, 2, seq=0xFFFE) + full * 3 + b"\xa0\xa0\xd8")
    out.append(header(0, 3) + full + b"\xcc\x9f\xcd\x9f\xcf\x9f\xa0\xd8\xce\xd1\xd8")  # refused submissions
    out.append(header(0, 2, checks=3) + full + b"\xc0\xc0\xc0\xc0\xa8\x02\xc8\xd8")  # the watchdog
    out.append(header(0, 2) + small[:20] + b"\x85\xf0\xd8\xa0\xa0\xf0\x85\xd8")  # disarm with a partial NTB
    # TX offloads: super-frames and NEEDS_CSUM datagrams (fuzz/native_ncm_tx.py's 0xA0-0xBF, here 0x60-0x7F)
    v4 = b"\x60\xc8\xf0\xa8\x05"
    v6 = b"\x70\x10\x20\x9f\x05"
    udp = b"\x68\x90\x01\x00\x00\x78\x00\x00\x00\x00\x6c\x40\x00\x00\x00"
    vlan = b"\x64\x00\x30\x00\x04\x74\x00\x30\x00\x04"
    mutated = b"\x61\x00\x20\x00\x04\x01\x03" + b"\x62\x00\x20\x00\x04\x06\x00\x07\x00" + \
        b"\x69\x10\x00\x00\x00\x08\xff"
    for flags in (VNET_ON | OFFLOAD, VNET_ON | OFFLOAD | NTB32 | EVERY, VNET_ON | OFFLOAD | PAD):
        out.append(header(flags, 1) + v4 + b"\x85\x80\xa0\x80\xe0\xa0\xe0\xa0\xd8" + v6 + udp + vlan + b"\x9f\xd8")
        out.append(header(flags, 2) + mutated + mixed + v4 + b"\x81\x81\xec\xa0\xe0" + v6 + b"\xd8")
    out.append(header(VNET_ON | OFFLOAD, 4, 2, 2, 0, 1, 31, 2, 16384) + v4 * 3 + b"\x81" * 8 + v6 * 3 + b"\xd8")
    out.append(header(VNET_ON | OFFLOAD, 1) + v4 + b"\x81\xf0\xa0\xf0\x80\xd8")  # disarm with segments pending
    # the buffers lent at arm (usbfs memory): full NTBs up to the last byte of the memory, re-armed, offloads
    out.append(header(LENT | PAD, 2) + full * 2 + b"\x9f\xa0\xa0\xf0\x85\xd8" + small + b"\x9f\xd8")
    out.append(header(LENT | NTB32 | PAD, 8, size=MAX32) + full * 8 + b"\x9f\xa0\xa0\xd8")
    out.append(header(LENT | VNET_ON | OFFLOAD, 2) + v4 + v6 + b"\x81\x81\xa0\xf0\xa0\xf0\x85" + udp + b"\xd8")
    return out


check = nc_.checker(lambda: Harness())


def _instrument(atheris) -> None:
    with atheris.instrument_imports(include=["usbnetd"]):
        import usbnetd.core.datapath  # noqa: F401
        import usbnetd.netdev.gso  # noqa: F401
        import usbnetd.netdev.port  # noqa: F401
        import usbnetd.protocols.ncm_codec  # noqa: F401
        import usbnetd.usb.bulk  # noqa: F401
    atheris.instrument_func(parse)


def main(argv: list[str]) -> int:
    return nc_.main(argv, TARGET, check, seeds, load_fasttx, _instrument, MAX_INPUT)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
