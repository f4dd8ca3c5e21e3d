"""Differential fuzz target `native-usb-rx`: the bulk IN completions in C (usbnetd.native._fastpath.NcmRx
usb_arm / the transfers' C callback / usb_end / usb_disarm) against the Python path's completions (the
transfer queued by the pipe's callback, decoded in process() with rx_begin + the driver's decode + rx_end,
then resubmitted), on real libusb transfer structs, as libusb drives them.

    python fuzz/native_usb.py [libFuzzer options] [CORPUS_DIR ...]       # atheris, coverage of the reference
    python fuzz/native_usb.py --engine=random -runs=N [-seed=S] [CORPUS_DIR ...]   # fuzz.py's mutation engine
    fuzz/native_asan.sh --usb [options]                                  # the same against an ASan/UBSan build

The fuzzed input is what libusb hands the callbacks: per completion the transfer, its status, its
actual_length (also past the transfer's length, negative, INT_MAX) and the bytes the device sent; and what
libusb_submit_transfer answers to each resubmission. A 6-byte header, then operations:

    byte 0   flags: 1 GRO on, 2 repair TCP/IPv4 checksums of what each transfer carries (so runs merge),
             4 max_datagram 60 instead of 1514, bits 3-4 the framing (0 NTB "ntb", 1 ECM "frame",
             2 RNDIS "rndis", 3 ASIX "ax88179")
    1        transfers: 1 + b % 8
    2-3      each transfer's length (the RX size): 1 + v % 32768 (little endian)
    ops      0x00-0x7F [s] v0 v1 bytes: the (op & 7)-th transfer in flight (modulo how many are) completes;
             bit 6: with status STATUSES[s % 8] (else COMPLETED); actual_length v (little endian), except
             0xFFF0+: the length, the length + 1, -1, INT_MAX, INT_MIN; then the bytes the device sent (as
             many as fit the transfer and actual_length, zero-filled when the input ends)
             0x80-0xBF: a wake-up's end (usb_end / the Python batch); bits 0-1 which resubmissions fail (none,
             the first, the last, all), bits 2-3 with which libusb error (NO_DEVICE, IO, BUSY, OTHER)
             0xC0-0xFF: disarm, then arm again (the decoded transfers come back cancelled)
    then a wake-up's end and a disarm.

Every transfer handed to the Python callback (an error status, a failed resubmission, a cancellation at
disarm) is resubmitted by Python at once in this model, so it can complete again.

Each input runs three times: the reference on bytearrays poisoned past actual_length (up to the transfer's
length and 80 bytes beyond); the C callbacks on buffers holding exactly the bytes the device sent, ending at
an inaccessible page (a read of even one byte past actual_length faults, with or without a sanitizer, though
the transfer's `length` is larger); and on buffers poisoned differently past actual_length. Any difference in
the TAP messages, the counters (Stats, GRO, failed resubmissions), what each usb_end returned, the
resubmissions (which transfers, in order), the transfers handed to the Python callback (which, status,
actual_length, in order), or the buffers afterwards raises `Difference` (a crash to the fuzzer).

USBNETD_NATIVE_SO=path loads that build of the extension instead of the package's, and
USBNETD_FUZZ_LAST_INPUT=path writes every input there before it runs (native_asan.sh --usb sets both).
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
import native_ncm as rx_  # noqa: E402  (the RX target: its reference pieces and seed builders)
from native_common import Difference, GuardedBuffers, Tap  # noqa: E402

TARGET = "native-usb-rx"
HEADER = 6
MAX_INPUT = 70000
MAX_XFERS = 8
MAX_SIZE = 32768
MAX_EVENTS = 400
POISON_REF, POISON_NAT = 0xA5, 0x5A
POISON_LEN = 80
GRO, REPAIR, SMALL = 1, 2, 4
KINDS = ("ntb", "frame", "rndis", "ax88179")
COMPLETED, ERROR, CANCELLED, NO_DEVICE = 0, 1, 3, 5
# libusb_transfer_status values, and ones libusb never sends (the C code must pass them on untouched)
STATUSES = (1, 2, 3, 4, 5, 6, -1, 0x7FFFFFFF)
SUBMIT_ERRORS = (-4, -1, -6, 7)  # LIBUSB_ERROR_NO_DEVICE, _IO, _BUSY, and a value libusb does not return
_SUBMIT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def load_fastpath() -> types.ModuleType:
    return nc_.load_extension(TARGET, "USBNETD_NATIVE_SO", "_fastpath", "fastpath")


@dataclasses.dataclass
class Plan:
    flags: int
    kind: str
    n: int  # transfers
    size: int  # each transfer's length
    # ("complete", transfer, status, actual_length, bytes) | ("end", failing positions, rc) | ("rearm",)
    events: list


def actual_of(v: int, size: int) -> int:
    if v < 0xFFF0:
        return v
    return (size, size + 1, -1, 0x7FFFFFFF, -0x80000000)[v - 0xFFF0] if v < 0xFFF5 else size


def parse(data: bytes) -> Plan:
    data = data[:MAX_INPUT]
    h = data[:HEADER].ljust(HEADER, b"\0")
    flags = h[0]
    kind = KINDS[(flags >> 3) & 3]
    n = 1 + h[1] % MAX_XFERS
    size = 1 + struct.unpack_from("<H", h, 2)[0] % MAX_SIZE
    body = data[HEADER:]
    in_flight = list(range(n))  # the model: which transfers libusb holds, in submission order
    pending: list[int] = []  # completed, decoded, not yet resubmitted
    events: list = []
    i = 0
    while i < len(body) and len(events) < MAX_EVENTS:
        op = body[i]
        i += 1
        if op < 0x80:
            status = COMPLETED
            if op & 0x40:
                status = STATUSES[body[i] % len(STATUSES)] if i < len(body) else STATUSES[0]
                i += 1
            v = struct.unpack_from("<H", body[i : i + 2].ljust(2, b"\0"))[0]
            i += 2
            actual = actual_of(v, size)
            got = max(0, min(actual, size))
            payload = body[i : i + got].ljust(got, b"\0")
            i += got
            if not in_flight:
                continue
            t = in_flight.pop((op & 7) % len(in_flight))
            events.append(("complete", t, status, actual, payload))
            if status == COMPLETED:
                pending.append(t)
            else:
                in_flight.append(t)  # the Python callback's: resubmitted at once (see the docstring)
        elif op < 0xC0:
            events.append(("end", _failing(op, len(pending)), SUBMIT_ERRORS[(op >> 2) & 3]))
            in_flight += pending  # resubmitted, or handed to Python, which resubmits them
            pending.clear()
        else:
            events.append(("rearm",))
            in_flight += pending  # handed back cancelled; Python resubmits them
            pending.clear()
    events.append(("end", frozenset(), 0))
    return Plan(flags, kind, n, size, events)


def _failing(op: int, n: int) -> frozenset:
    which = op & 3
    if which == 0 or n == 0:
        return frozenset()
    if which == 1:
        return frozenset({0})
    if which == 2:
        return frozenset({n - 1})
    return frozenset(range(n))


class Harness:
    def __init__(self) -> None:
        from usb1 import libusb1

        self.ref_ = rx_.Harness()  # the RX target's reference pieces: decoders, the RNDIS driver, repair
        self.fp = load_fastpath()
        self.libusb1 = libusb1
        libusb1.loadLibrary()  # libusb_alloc_transfer, nothing else: no context, no device
        self.ptrs = [libusb1.libusb_alloc_transfer(0) for _ in range(MAX_XFERS)]
        if not all(self.ptrs):
            raise MemoryError("libusb_alloc_transfer failed")
        self.structs = [p.contents for p in self.ptrs]
        self.addrs = [ctypes.addressof(s) for s in self.structs]
        self.slot_of = {a: i for i, a in enumerate(self.addrs)}
        self.guarded = GuardedBuffers(MAX_XFERS, MAX_SIZE + 1)
        self.ref_tap, self.nat_tap = Tap(), Tap()
        # The stand-ins for libusb_submit_transfer and for the pipe's own (Python) callback; what they see
        # goes to the lists of the run in progress.
        self.submits: list = []
        self.handed: list = []
        self.rcs: list[int] = []
        self.base = 0
        self._submit_c = _SUBMIT(self._submit)
        self._fallback_c = _CALLBACK(self._fallback)
        self.submit_addr = ctypes.cast(self._submit_c, ctypes.c_void_p).value
        self.fallback_addr = ctypes.cast(self._fallback_c, ctypes.c_void_p).value
        fields = dict(libusb1.libusb_transfer._fields_)
        self.buffer_type = fields["buffer"]
        self.fallback_ptr = ctypes.cast(self._fallback_c, fields["callback"])

    def _submit(self, address: int) -> int:
        k = len(self.submits) - self.base  # the k-th resubmission of this usb_end
        self.submits.append(self.slot_of.get(address, -1))
        return self.rcs[k] if 0 <= k < len(self.rcs) else 0

    def _fallback(self, address: int) -> None:
        s = self.structs[self.slot_of[address]] if address in self.slot_of else None
        if s is None:
            raise Difference(f"the Python callback got an unknown transfer {address:#x}")
        self.handed.append((self.slot_of[address], s.status, s.actual_length))

    # -- the input's bytes in a transfer's buffer -----------------------------------------------------------
    def prepare(self, plan: Plan, payload: bytes, status: int) -> bytes:
        if not plan.flags & REPAIR or status != COMPLETED:
            return payload
        buf = bytearray(payload)
        if plan.kind == "rndis":
            self.ref_.repair_rndis(buf, len(buf))
        elif plan.kind == "frame":
            rx_.repair_frame(buf, 0, len(buf))
        else:
            self.ref_.repair(buf, len(buf), plan.kind == "ax88179")
        return bytes(buf)

    # -- the Python path ------------------------------------------------------------------------------------
    def reference(self, plan: Plan) -> tuple:
        r = self.ref_
        stats = r.Stats()
        gro = bool(plan.flags & GRO)
        max_dg = 60 if plan.flags & SMALL else 1514
        port = r.TapPort(self.ref_tap.w.fileno(), stats, max_frame=max_dg, gro=gro)
        if plan.kind == "rndis":
            drv = r.rndis_driver(stats, plan.size)
            decode = drv.rx_decode
        elif plan.kind == "frame":
            ns = types.SimpleNamespace(stats=stats, max_frame=max_dg)
            decode = lambda v, n, sink: r.OneFramePerTransfer.rx_decode(ns, v, n, sink)  # noqa: E731
        else:
            dec = r.axc.RxDecoder(stats, max_dg) if plan.kind == "ax88179" else r.nc.NtbDecoder(
                stats, max_datagram=max_dg)
            decode = lambda v, n, sink: dec.decode(v, n, sink.emit)  # noqa: E731
        bufs: dict[int, tuple[bytearray, int]] = {}
        snaps: list = []
        queue: list[int] = []
        submits: list = []
        handed: list = []
        ends: list[int] = []
        failed = 0
        done = 0  # transfers decoded since the last end (DataPath.rx_transfers_done's share)

        def batch() -> None:
            nonlocal done
            done += len(queue)
            for t in queue:
                buf, n = bufs[t]
                if not n:
                    continue  # a ZLP on its own: DataPath.process decodes nothing for it
                view = memoryview(buf)
                port.rx_begin(view)
                decode(view, n, port)
            port.rx_end()

        for ev in plan.events:
            if ev[0] == "complete":
                _, t, status, actual, payload = ev
                if t in bufs:
                    snaps.append(_snap(t, *bufs[t]))
                got = len(payload)
                buf = bytearray(payload) + bytes([POISON_REF]) * (plan.size - got + POISON_LEN)
                bufs[t] = (buf, got)
                if status == COMPLETED:
                    queue.append(t)  # BulkPipe's callback: queued for process()
                else:
                    handed.append((t, status, actual))
            elif ev[0] == "end":
                _, failing, rc = ev
                batch()
                ends.append(done)
                done = 0
                bad = []
                for k, t in enumerate(queue):
                    submits.append(t)
                    if k in failing:
                        bad.append(t)
                for t in bad:  # a failed resubmission reaches Python as a failed transfer, after the others
                    handed.append((t, NO_DEVICE if rc == -4 else ERROR, 0))
                failed += len(bad)
                queue.clear()
            else:  # disarm: what was decoded comes back cancelled, unsubmitted
                batch()
                handed.extend((t, CANCELLED, 0) for t in queue)
                queue.clear()
        snaps.extend(_snap(t, *bufs[t]) for t in sorted(bufs))
        g = port.gro_stats
        return (self.ref_tap.drain(), stats.as_dict(), (g["superframes"], g["segments"], g["unverified"]),
                ends, submits, handed, failed, snaps)

    # -- the C callbacks --------------------------------------------------------------------------------------
    def native(self, plan: Plan, exact: bool) -> tuple:
        r = self.ref_
        gro = bool(plan.flags & GRO)
        max_dg = 60 if plan.flags & SMALL else 1514
        if plan.kind == "rndis":
            max_dg = r.rc.DEFAULT_MAX_FRAME
        rx = self.fp.NcmRx(self.nat_tap.w.fileno(), 10 if gro else 0, gro, max_dg, rx_size=plan.size)
        stats = r.Stats()
        self.submits, self.handed, self.rcs = [], [], []
        ends: list[int] = []
        snaps: list = []
        keep: dict[int, Any] = {}  # each transfer's current buffer (kept alive while C may point into it)
        lens: dict[int, int] = {}
        structs = self.structs[: plan.n]
        for s in structs:
            s.length = plan.size
            s.status = 0
            s.actual_length = 0
            s.buffer = None
            s.callback = self.fallback_ptr
        addrs = self.addrs[: plan.n]

        def arm() -> None:
            rx.usb_arm(self.submit_addr, self.fallback_addr, addrs, plan.kind)

        arm()
        for ev in plan.events:
            if ev[0] == "complete":
                _, t, status, actual, payload = ev
                if t in keep:
                    snaps.append(self._snap_native(t, keep[t], lens[t], plan.size, exact))
                got = len(payload)
                if exact:
                    view = self.guarded.place(t, payload)
                    buf: Any = view
                    address = ctypes.addressof(ctypes.c_char.from_buffer(view)) if got else (
                        ctypes.addressof(ctypes.c_char.from_buffer(self.guarded.maps[t])) + self.guarded.size)
                else:
                    buf = bytearray(payload) + bytes([POISON_NAT]) * (plan.size - got + POISON_LEN)
                    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
                keep[t], lens[t] = buf, got
                s = structs[t]
                s.buffer = ctypes.cast(address, self.buffer_type)
                s.status = status
                s.actual_length = actual
                # as libusb calls it: the transfer's callback, whatever it is now (the C one while armed)
                s.callback(ctypes.cast(addrs[t], self.libusb1.libusb_transfer_p))
            elif ev[0] == "end":
                _, failing, rc = ev
                self.rcs = [rc if k in failing else 0 for k in range(plan.n)]
                self.base = len(self.submits)
                ends.append(rx.usb_end())
                self.rcs = []
                rx.add_to(stats)
            else:
                rx.usb_disarm()
                if rx.usb_armed:
                    raise Difference("usb_disarm left the completions armed")
                for k, s in enumerate(structs):
                    if ctypes.cast(s.callback, ctypes.c_void_p).value != self.fallback_addr:
                        raise Difference(f"usb_disarm did not give transfer {k} its callback back")
                arm()
        rx.usb_disarm()
        rx.add_to(stats)
        snaps.extend(self._snap_native(t, keep[t], lens[t], plan.size, exact) for t in sorted(keep))
        for s in structs:
            s.buffer = None
        c = rx.counters()
        return (self.nat_tap.drain(), stats.as_dict(), (c["superframes"], c["merged"], c["unverified"]), ends,
                list(self.submits), list(self.handed), rx.usb_resubmit_failed, snaps)

    @staticmethod
    def _snap_native(t: int, buf: Any, got: int, size: int, exact: bool) -> tuple:
        if exact:
            return (t, bytes(buf[:got]), None)
        tail = bytes(buf[got:])
        return (t, bytes(buf[:got]), tail == bytes([POISON_NAT]) * (size - got + POISON_LEN))

    def check(self, data: bytes) -> None:
        plan = parse(data)
        plan.events = [("complete", e[1], e[2], e[3], self.prepare(plan, e[4], e[2])) if e[0] == "complete" else e
                       for e in plan.events]
        r_msgs, r_stats, r_gro, r_ends, r_submits, r_handed, r_failed, r_snaps = self.reference(plan)
        if not all(ok for _, _, ok in r_snaps):
            raise Difference("the reference wrote past actual_length (harness broken)")
        for exact in (True, False):
            what = "exact-size buffers" if exact else "poisoned tails"
            n_msgs, n_stats, n_gro, n_ends, n_submits, n_handed, n_failed, n_snaps = self.native(plan, exact)
            if n_msgs != r_msgs:
                raise Difference(f"{what}: messages differ: native {rx_._summary(n_msgs)}, "
                                 f"reference {rx_._summary(r_msgs)}")
            if n_stats != r_stats:
                raise Difference(f"{what}: counters {n_stats}, reference {r_stats}")
            if n_gro != r_gro:
                raise Difference(f"{what}: GRO counters {n_gro}, reference {r_gro}")
            if n_ends != r_ends:
                raise Difference(f"{what}: usb_end returned {n_ends}, reference {r_ends}")
            if n_submits != r_submits:
                raise Difference(f"{what}: resubmitted {n_submits}, reference {r_submits}")
            if n_handed != r_handed:
                raise Difference(f"{what}: handed to Python {n_handed}, reference {r_handed}")
            if n_failed != r_failed:
                raise Difference(f"{what}: usb_resubmit_failed {n_failed}, reference {r_failed}")
            for (nt, nb, nok), (rt, rb, _) in zip(n_snaps, r_snaps, strict=True):
                if nt != rt or nb != rb:
                    raise Difference(f"{what}: transfer {rt}'s buffer differs afterwards")
                if nok is False:
                    raise Difference(f"{what}: transfer {rt}: written past actual_length")


def _snap(t: int, buf: bytearray, got: int) -> tuple:
    return (t, bytes(buf[:got]), bytes(buf[got:]) == bytes([POISON_REF]) * (len(buf) - got))


# --- seeds ---------------------------------------------------------------------------------------------------


def header(flags: int, kind: str, n: int, size: int) -> bytes:
    return bytes([flags | KINDS.index(kind) << 3, n - 1]) + struct.pack("<H", size - 1) + b"\0\0"


def complete(data: bytes, k: int = 0, status: int | None = None, actual: int | None = None,
             size: int | None = None) -> bytes:
    """A completion op; with `size` (the transfer length) the bytes are cut or zero-filled to what parse()
    takes for that actual_length, so the operations after it stay where they were meant to be."""
    v = len(data) if actual is None else actual
    if size is not None:
        got = max(0, min(actual_of(v, size), size))
        data = data[:got].ljust(got, b"\0")
    op = bytes([k & 7]) if status is None else bytes([0x40 | (k & 7), STATUSES.index(status)])
    return op + struct.pack("<H", v) + data


def seeds() -> list[bytes]:
    from usbnetd.protocols import ax88179_codec as axc
    from usbnetd.protocols import ncm_codec as nc
    from usbnetd.protocols import rndis_codec as rc

    run = rx_._run
    layout16 = nc.TxLayout(False, 0xFFFF, 4, 0, 4, 60, 512)
    layout32 = nc.TxLayout(True, 0xFFFF, 8, 2, 8, 60, 512)
    out = []
    for layout in (layout16, layout32):
        a, b = nc.build_ntb(layout, run(3, 1000)), nc.build_ntb(layout, run(3, 1000, seq=4000))
        c = nc.build_ntb(layout, run(4, 1000) + [rx_._udp(300)])
        size = 16384
        out.append(header(GRO | REPAIR, "ntb", 4, size) + complete(a) + complete(b) + b"\x80" + complete(c))
        out.append(header(GRO, "ntb", 2, size) + complete(a) + complete(b) + complete(c) + b"\x81" +
                   complete(c, 1, status=4, actual=0) + b"\xc0" + complete(a))
        out.append(header(0, "ntb", 8, size) + complete(a, 3) + complete(b, 5, actual=0xFFF1, size=size) + b"\x87" +
                   complete(c, 2, status=3) + complete(c) + b"\x8e")
        out.append(header(GRO | REPAIR, "ntb", 3, len(a)) + complete(a, actual=0xFFF0) + complete(b[: len(a)]) +
                   b"\x80" + complete(a[:100], actual=0xFFF2, size=len(a)))
    frames = run(4, 1400) + [rx_._udp(50)]
    out.append(header(GRO | REPAIR, "frame", 4, 1536) + b"".join(complete(f, i) for i, f in enumerate(frames)) +
               b"\x80" + complete(frames[0], 0, status=2) + complete(frames[1]) + b"\x83")
    out.append(header(GRO, "frame", 8, 1514) + complete(frames[0], actual=0xFFF1, size=1514) +
               complete(frames[1][:20]) + complete(b"", actual=0) + b"\xc1" + complete(frames[2]))
    for frames_ in (run(6, 1000), run(3, 800) + run(1, 300, seq=3400)):
        t = b"".join(rc.build_transfer([f]) for f in frames_)
        size = 2048
        parts = [t[i : i + size] for i in range(0, len(t), size)] + [b""] * 4
        out.append(header(GRO | REPAIR, "rndis", 4, size) + b"".join(complete(p) for p in parts[:4]) + b"\x80" +
                   b"".join(complete(p) for p in parts[4:]))
        out.append(header(GRO, "rndis", 2, size) + complete(parts[0]) + b"\x80" + complete(parts[1]) +
                   b"\xc0" + complete(parts[2]) + complete(parts[3], status=1) + b"\x82")
    for frames_ in (run(3, 1000), run(5, 600) + [rx_._udp(40)]):
        agg = axc.build_rx(frames_)
        out.append(header(GRO | REPAIR, "ax88179", 4, 16384) + complete(agg) + complete(agg) + b"\x80")
        out.append(header(0, "ax88179", 2, len(agg)) + complete(agg, actual=0xFFF1) + complete(agg[:-3]) +
                   b"\x8f" + complete(agg, 1, status=5))
    return out


check = nc_.checker(lambda: Harness())


def _instrument(atheris) -> None:
    with atheris.instrument_imports(include=["usbnetd"]):
        import usbnetd.core.stats  # noqa: F401
        import usbnetd.netdev.gro  # noqa: F401
        import usbnetd.netdev.port  # noqa: F401
        import usbnetd.protocols.ax88179_codec  # noqa: F401
        import usbnetd.protocols.driver  # noqa: F401
        import usbnetd.protocols.ncm_codec  # noqa: F401
        import usbnetd.protocols.rndis  # noqa: F401
        import usbnetd.protocols.rndis_codec  # noqa: F401
    atheris.instrument_func(parse)


def main(argv: list[str]) -> int:
    return nc_.main(argv, TARGET, check, seeds, load_fastpath, _instrument, MAX_INPUT)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
