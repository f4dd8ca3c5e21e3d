"""Differential fuzz target `native-frame-tx`: the C TX pump of the one-frame-per-transfer framings (ECM, the CDC
subset, RNDIS with one packet per transfer; usbnetd.native._frametx.FrameTx: arm, fill, the transfers' C
callback, watchdog, cancel_all, add_to, disarm) against the Python path's pieces (TapPort.read_into,
OneFramePerTransfer's framing and ZLP rule or RndisDriver's tx_begin .. tx_finish over RndisBatch with its pad
byte, BulkPipe's submissions, completions and watchdog, DataPath._on_tx's counting), on real libusb transfer
structs.

    python fuzz/native_frame_tx.py [libFuzzer options] [CORPUS_DIR ...]      # atheris, coverage of the reference
    python fuzz/native_frame_tx.py --engine=random -runs=N [-seed=S] [CORPUS_DIR ...]   # fuzz.py's engine
    fuzz/native_asan.sh --frametx [options]                                 # the same against an ASan/UBSan build

TAP frames in, bulk OUT transfers out. An 8-byte header, then operations:

    byte 0   flags: 1 vnet header (10 zero bytes before every frame), 2 the fd fails every read (EISDIR),
             4 EOF at the end (the writer closes), 8 RNDIS framing (a PACKET_MSG header before each frame),
             16 TX offloads (with flag 1: TSO super-frames and NEEDS_CSUM frames, TapPort._read_offload's
             reference against FrameTx(offload=True))
    1        transfers: 1 + b % 8
    2-3      max_frame: 1514 when bit 15 is set, else 14 + v % 9100 (little endian)
    4        wMaxPacketSize: 8, 64, 512, 1024 or byte 5 + 1
    6        the watchdog's checks: 1 + b % 4
    7        RNDIS: the device's MaxTransferSize, max_frame + 46 + b % 64 (46: the header, the pad byte, and the
             spare byte the socket pair standing in for the TAP needs, see Harness.reference)
    ops      0x00-0x3F lo: a frame of ((b & 0x3F) << 8 | lo) bytes;  0x40-0x5F: max_frame - 16 + (b & 0x1F) bytes;
             0x60-0x6F: (1 + (b & 0xF)) * wMaxPacketSize bytes (a ZLP);  0x70-0x7F: a raw message of
             (b & 0xF) % 12 bytes, no vnet header (with offloads: 0x70-0x7F p0 p1 p2 p3 [i v]*(b & 3): the
             offload message (b & 0xF) << 1 of fuzz/native_ncm_tx.py with those parameter bytes, bytes i of it
             set to v);  0x80-0x9F: fill(budget (b & 0x1F) + 1; 0x9F: 64);
             0xA0-0xBF [s]: the (b & 7)-th transfer in flight completes, with status STATUSES[s % 8] if bit 3
             is set, else COMPLETED;  0xC0-0xCF: the watchdog;  0xD0-0xD7: cancel_all;  0xD8-0xDF: the next
             submission fails with SUBMIT_ERRORS[b & 3];  0xE0-0xFF: tick (a super-frame's waiting segments)
    then fill(64) twice, EOF and fill(64) if flag 4, every transfer in flight completed, cancel_all, disarm.

A cancellation (watchdog, cancel_all) completes the transfer as cancelled right after the call, as libusb does
at the next handle_events. Frames are numbered and filled from a fixed random pattern. Compared after every
operation: what fill returned, the counters (Stats' tx_* and the pump's submitted / completed / failed /
last status / read failures / stall and gone flags, as add_to reports them and as the Python pieces count
them), transfers in flight and free; and in the end every transfer submitted (its bytes, length, ZLP flag, in
order), every cancellation (by submission), the read errors. Any difference raises `Difference`. The pump's
own buffers are C heap blocks ASan guards (with either Python allocator). Messages written back to back are one
step: nothing runs on either side between them, so nothing is compared after each (native_common.Steps). The
reference's pool, BulkPipe and TAP stand-ins are made once and reset for every input (native_common.UsbTx); the
FrameTx under test is new for every input.

USBNETD_NATIVE_FRAMETX_SO=path loads that build of the extension instead of the package's, and
USBNETD_FUZZ_LAST_INPUT=path writes every input there before it runs (native_asan.sh --frametx sets both).
"""

from __future__ import annotations

import dataclasses
import os
import random
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
from native_ncm_tx import offload_op  # noqa: E402  (offload messages)

TARGET = "native-frame-tx"
HEADER = 8
MAX_INPUT = 4096
MAX_OPS = 600
MAX_XFERS = 8
VNET = 10
VNET_ON, ERROR, EOF, RNDIS, OFFLOAD = 1, 2, 4, 8, 16
MAX_OFFLOAD = 16  # offload messages per input: each may be a 64 KiB super-frame
PATTERN = random.Random(11).randbytes(16384 + 9200)
_PATTERN = memoryview(PATTERN)  # frames are slices of it, sent as they are (a copy per frame was 20% of parse)
_VNET = bytes(VNET)
MAX_SLOT = 9100 + 14 + 1024  # the largest pool packet: tx_size (max_frame rounded up to whole packets; RNDIS:
#                             MaxTransferSize + 1, at most 9113 + 46 + 63 + 1), + 1


def load_frametx() -> Any:
    return nc_.load_extension(TARGET, "USBNETD_NATIVE_FRAMETX_SO", "_frametx", "frametx")


@dataclasses.dataclass
class Plan:
    flags: int
    n: int
    max_frame: int
    maxpacket: int
    checks: int
    max_transfer: int  # RNDIS: the device's MaxTransferSize
    steps: list  # ("msg", [buffers, ...]) | ("fill", budget) | ("complete", k, status) | ("watchdog",) | ("cancel",)
    #              | ("fail", rc) | ("eof",) | ("drain",)


def parse(data: bytes) -> Plan:
    data = data[:MAX_INPUT]
    h = data[:HEADER].ljust(HEADER, b"\0")
    flags = h[0]
    n = 1 + h[1] % MAX_XFERS
    v = struct.unpack_from("<H", h, 2)[0]
    mf = 1514 if v & 0x8000 else 14 + v % 9100
    mp = (8, 64, 512, 1024, h[5] + 1)[h[4] % 5]
    vnet = _VNET if flags & VNET_ON else b""
    offload = bool(flags & OFFLOAD and flags & VNET_ON)
    steps = Steps()
    body, i, nframes, n_off = data[HEADER:], 0, 0, 0
    while i < len(body) and steps.ops < MAX_OPS:
        b = body[i]
        i += 1
        length = -1
        if b < 0x40:
            length = (b & 0x3F) << 8 | (body[i] if i < len(body) else 0)
            i += 1
        elif b < 0x60:
            length = max(0, mf - 16 + (b & 0x1F))
        elif b < 0x70:
            length = (1 + (b & 0xF)) * mp
        elif b < 0x80:
            if offload:
                m, i = offload_op(body, i, (b & 0xF) << 1, b & 3, mf, nframes)
                if n_off < MAX_OFFLOAD:
                    steps.msg((m,))
                    n_off += 1
            else:
                start = (nframes * 131) % 4096
                steps.msg((_PATTERN[start : start + (b & 0xF) % 12],))
            nframes += 1
        elif b < 0xA0:
            steps.add(("fill", 64 if b == 0x9F else (b & 0x1F) + 1))
        elif b < 0xC0:
            status = COMPLETED
            if b & 8:
                status = STATUSES[body[i] % len(STATUSES)] if i < len(body) else STATUSES[0]
                i += 1
            steps.add(("complete", b & 7, status))
        elif b < 0xD0:
            steps.add(("watchdog",))
        elif b < 0xD8:
            steps.add(("cancel",))
        elif b < 0xE0:
            steps.add(("fail", SUBMIT_ERRORS[b & 3]))
        else:
            steps.add(("tick",))
        if length >= 0:
            length = min(length, 16384 + 9100)
            start = (nframes * 131) % 4096
            # one message of the vnet header and the frame (sendmsg gathers them: no copy)
            view = _PATTERN[start : start + length]
            steps.msg((vnet, view) if vnet else (view,))
            nframes += 1
    steps += [("fill", 64), ("fill", 64)]
    if flags & EOF:
        steps += [("eof",), ("fill", 64)]
    steps.append(("drain",))
    return Plan(flags, n, mf, mp, 1 + h[6] % 4, mf + 46 + h[7] % 64, steps)


class Harness:
    def __init__(self) -> None:
        from usbnetd.core import datapath
        from usbnetd.core.stats import Stats
        from usbnetd.netdev.port import TapPort
        from usbnetd.protocols.driver import FRAME_TX_RNDIS, OneFramePerTransfer
        from usbnetd.protocols.rndis import RndisDriver
        from usbnetd.protocols.rndis_codec import RndisBatch

        self.datapath = datapath
        self.Stats, self.TapPort, self.OneFramePerTransfer = Stats, TapPort, OneFramePerTransfer
        self.RndisDriver, self.RndisBatch, self.FRAME_TX_RNDIS = RndisDriver, RndisBatch, FRAME_TX_RNDIS
        self.FrameTx = load_frametx().FrameTx
        self.usb = UsbTx(MAX_XFERS, MAX_XFERS + 1, MAX_SLOT)

    # -- the Python pieces ------------------------------------------------------------------------------------
    def reference(self, plan: Plan) -> tuple:
        usb = self.usb
        tap = usb.tap("ref")
        fd = usb.bad if plan.flags & ERROR else tap.r.fileno()
        stats = self.Stats()
        vnet = bool(plan.flags & VNET_ON)
        offload = vnet and bool(plan.flags & OFFLOAD)
        port = self.TapPort(fd, stats, plan.max_frame, gro=vnet, offload=offload)
        read_errors: list[str] = []
        port.read_errors = Hits(read_errors)  # type: ignore[assignment]
        drv = types.SimpleNamespace(max_frame=plan.max_frame, maxpacket=plan.maxpacket, stats=stats)
        rndis = bool(plan.flags & RNDIS)
        if rndis:
            # RndisDriver's framing over the batch bind() makes for a device that takes one packet per
            # transfer; its transfer buffer is tx_size = MaxTransferSize + 1 (RndisDriver.bind)
            RD = self.RndisDriver
            drv._batch = self.RndisBatch(1, plan.max_transfer, 0, plan.maxpacket)
            if RD.native_frame_tx(drv) != (plan.max_frame, plan.maxpacket, self.FRAME_TX_RNDIS):  # type: ignore
                raise Difference("RndisDriver.native_frame_tx does not offer this framing to the C pump")
            drv.tx_size = plan.max_transfer + 1
        else:
            OFT = self.OneFramePerTransfer
            OFT.init_framing(drv)  # type: ignore[arg-type]
        # The slot is the pool packet: tx_size, max_frame rounded up to whole packets. A TAP read returns a too
        # long frame's whole length however small the buffer (tun_put_user returns `total`), so read_into
        # drops it; the socket pair standing in for the TAP returns the truncated length instead, so the slot
        # gets one spare byte when tx_size is exactly max_frame, as a TAP's answer would need (RNDIS: the
        # MaxTransferSize chosen in parse leaves that byte after the header). The pool's packets are MAX_SLOT
        # bytes, made once: every read goes into the first `size` of one; RNDIS's batch stops at
        # min(MaxTransferSize, the view), and MaxTransferSize < MAX_SLOT, so a larger packet changes nothing.
        size = max(drv.tx_size, plan.max_frame + 1)
        pool = usb.pool()
        side = usb.new_side()
        errors: list[str] = []
        dp = usb.datapath_state(stats, pool, errors)
        counts = {"submitted": 0, "completed": 0}
        on_tx = self.datapath.DataPath._on_tx

        def on_done(packet, status: int, actual: int) -> None:
            counts["completed"] += 1
            on_tx(dp, packet, status)  # type: ignore[arg-type]

        bulk = usb.bulk
        usb.swap_cancel()
        try:
            pipe = usb.pipe(plan.n, on_done)
            state = {"gone": False}

            def fill(budget: int) -> tuple[int, int]:
                # DataPath.on_tap_readable: a super-frame's segments still to go first, without budget
                read = 0
                while pipe.free_count > 0 and (read < budget or port.pending):
                    p = pool.allocate()
                    assert p is not None
                    if rndis:
                        RD.tx_begin(drv, p)  # type: ignore[arg-type]
                        off, room = RD.tx_slot(drv)  # type: ignore[arg-type]
                        if room < plan.max_frame:
                            raise Difference(f"an empty RNDIS transfer has room for {room} bytes only")
                        slot = p.view[off : off + room]
                    else:
                        slot = p.view[p.offset : p.offset + size]
                    if port.pending:
                        n = port.next_segment(slot)
                    else:
                        n = port.read_into(slot)
                        if n < 0:
                            pool.deallocate(p)
                            return read, 1
                        read += 1
                        if n == 0:
                            pool.deallocate(p)
                            continue
                    if rndis:
                        if not RD.tx_commit(drv, n):  # type: ignore[arg-type]
                            raise Difference("an RNDIS transfer of one packet is not full after its frame")
                        length, zlp = RD.tx_finish(drv)  # type: ignore[arg-type]
                    else:
                        OFT.tx_begin(drv, p)  # type: ignore[arg-type]
                        OFT.tx_commit(drv, n)  # type: ignore[arg-type]
                        length, zlp = OFT.tx_finish(drv)  # type: ignore[arg-type]
                    dp._tx_frames[p.index] = 1
                    dp._tx_bytes[p.index] = n
                    try:
                        pipe.submit(p, p.offset, length, zlp)
                        counts["submitted"] += 1
                    except bulk.SubmitError as exc:
                        # the frame is lost: one frame in error, one transfer aborted
                        pool.deallocate(p)
                        stats.tx_errors += 1
                        stats.tx_aborted_errors += 1
                        if exc.code == bulk.ERROR_NO_DEVICE:
                            state["gone"] = True
                        break
                return read, 0

            def flags() -> tuple:
                gone = dp.device_gone or state["gone"]
                stalled = dp._stalled_out
                dp.device_gone = dp._stalled_out = state["gone"] = False
                return stalled, gone

            def offloads() -> tuple:
                return (len(port.pending), port.tso_superframes, port.tso_segments, port.csum_completed,
                        port.offload_dropped)

            trace = self.run(plan, side, tap, fill, lambda: pipe.watchdog(plan.checks), pipe.cancel_all, flags,
                             lambda: (pipe.in_flight, pipe.free_count), stats, counts, errors, read_errors,
                             lambda: fill(0), offloads)
            usb.pipe_idle(pipe)
        finally:
            usb.restore()
        return trace, side.submitted, side.cancelled, read_errors

    # -- the C pump -------------------------------------------------------------------------------------------
    def native(self, plan: Plan) -> tuple:
        usb = self.usb
        tap = usb.tap("nat")
        fd = usb.bad if plan.flags & ERROR else tap.r.fileno()
        stats = self.Stats()
        vnet = bool(plan.flags & VNET_ON)
        pump = self.FrameTx(fd, VNET if vnet else 0, plan.max_frame, plan.maxpacket,
                            self.FRAME_TX_RNDIS if plan.flags & RNDIS else 0, vnet and bool(plan.flags & OFFLOAD))
        addrs = usb.native_transfers(plan.n)
        side = usb.new_side()
        read_errors: list[str] = []
        errors: list[str] = []
        counts = {"submitted": 0, "completed": 0}

        def events() -> tuple:
            submitted, completed, failed, last_status, read_failed, read_errno, stalled, gone = pump.add_to(stats)
            counts["submitted"] += submitted
            counts["completed"] += completed
            if failed:
                errors.extend([f"status {last_status}"] * failed)
            if read_failed:
                read_errors.extend([os.strerror(read_errno)] * read_failed)
            return bool(stalled), bool(gone)

        try:
            pump.arm(usb.submit_addr, usb.cancel_addr, addrs)

            def offloads() -> tuple:
                return (pump.pending, pump.tso_superframes, pump.tso_segments, pump.csum_completed,
                        pump.offload_dropped)

            trace = self.run(plan, side, tap, pump.fill, lambda: pump.watchdog(plan.checks), pump.cancel_all,
                             events, lambda: (pump.in_flight, pump.free), stats, counts, errors, read_errors,
                             pump.tick, offloads)
            pump.disarm()
            if pump.armed:
                raise Difference("disarm left the pump armed")
            usb.callbacks_back(plan.n)
        finally:
            usb.side = None
        return trace, side.submitted, side.cancelled, read_errors

    # -- the operations, the same on both sides ---------------------------------------------------------------
    def run(self, plan: Plan, side: Side, tap: Tap, fill, watchdog, cancel_all, flags, room, stats, counts,
            errors, read_errors, tick, offloads) -> list:
        trace = []
        w = tap.w
        for step in plan.steps:
            kind = step[0]
            out: Any = None
            if kind == "msg":
                if w.fileno() >= 0:
                    for m in step[1]:
                        w.sendmsg(m)
                trace.append(None)  # nothing ran on either side: the last state stands
                continue
            elif kind == "fill":
                out = tuple(fill(step[1]))
            elif kind == "complete":
                if side.in_flight:
                    address = side.in_flight.pop(step[1] % len(side.in_flight))
                    self.usb.complete(address, step[2])
            elif kind == "watchdog":
                out = watchdog()
                self.usb.deliver(side)
            elif kind == "cancel":
                cancel_all()
                self.usb.deliver(side)
            elif kind == "fail":
                side.fail_next = step[1]
            elif kind == "tick":
                tick()
            elif kind == "eof":
                w.close()
            else:  # drain: every transfer in flight completes, then whatever is left is cancelled
                while side.in_flight:
                    self.usb.complete(side.in_flight.pop(0), COMPLETED)
                cancel_all()
                self.usb.deliver(side)
            stalled, gone = flags()
            s = stats
            trace.append((kind, out, room(), (s.tx_packets, s.tx_bytes, s.tx_errors, s.tx_aborted_errors,
                                               s.tx_dropped), (counts["submitted"], counts["completed"]), len(errors),
                          errors[-1] if errors else None, len(read_errors), stalled, gone, offloads()))
        return trace

    def check(self, data: bytes) -> None:
        plan = parse(data)
        r_trace, r_sub, r_cancel, r_read = self.reference(plan)
        n_trace, n_sub, n_cancel, n_read = self.native(plan)
        if n_trace != r_trace:
            k = next((i for i, (a, b) in enumerate(zip(n_trace, r_trace, strict=True)) if a != b), -1)
            raise Difference(f"after step {k} ({plan.steps[k][0]}): (kind, returned, (in flight, free), (tx_packets, "
                             f"tx_bytes, tx_errors, tx_aborted_errors, tx_dropped), counts, errors, last error, "
                             f"read errors, stalled, gone) {n_trace[k]}, reference {r_trace[k]}")
        self.usb.compare((n_sub, n_cancel, n_read), (r_sub, r_cancel, r_read))


# --- seeds ---------------------------------------------------------------------------------------------------


def header(flags: int = 0, n: int = 4, mf: int = 1514, mp_index: int = 2, mp: int = 0, checks: int = 1,
           mts: int = 0) -> bytes:
    v = 0x8000 if mf == 1514 else (mf - 14)
    return bytes([flags, n - 1]) + struct.pack("<H", v) + bytes([mp_index, max(0, mp - 1), checks - 1, mts])


def frames(*sizes: int) -> bytes:
    return b"".join(bytes([(n >> 8) & 0x3F, n & 0xFF]) for n in sizes)


def seeds() -> list[bytes]:
    out = []
    mixed = frames(60, 1514, 14, 13, 0, 1515, 3000, 512, 1024) + b"\x40\x50\x5f\x61\x62\x70\x75"
    for flags in (0, VNET_ON, EOF, VNET_ON | EOF, ERROR):
        out.append(header(flags) + mixed + b"\x9f" + b"\xa0\xa0\xa9\x03\x9f" + b"\xc0\xc0\xc0" + b"\x9f")
        out.append(header(flags, 2) + frames(*([1000] * 10)) + b"\x82\xa0\x81\xab\x02\x83\xd8\x81\x9f")
    out.append(header(0, 8, mp_index=0) + frames(*range(10, 80, 7)) + b"\x9f\xa1\xa2\xa3\xd0\x9f")
    out.append(header(VNET_ON, 3, 1536, 2) + frames(1536, 1537, 1535, 2048) + b"\x9f\xa0\xa0\xa0\x9f")
    out.append(header(0, 4, 60, 4, 60) + frames(60, 61, 59, 120) + b"\x84\xc0\xc0\xc0\xa0\x9f")
    out.append(header(0, 1, 9014, 3) + frames(9014, 9015, 14, 9000) + b"\x9f\xac\x04\x9f\xad\x05\x9f\xda\x9f")
    out.append(header(VNET_ON, 4, checks=3) + frames(*([200] * 8)) + b"\x9f\xc0\xc0\xc0\xc0\xa8\x02\xd1\x9f")
    # RNDIS: 468 + 44 = 512 and 980 + 44 = 1024 end on a packet boundary (the pad byte), the rest do not
    rndis = frames(60, 468, 980, 1514, 1515, 14, 13, 2004) + b"\x40\x5f\x61\x70"
    for flags in (RNDIS, RNDIS | VNET_ON, RNDIS | EOF, RNDIS | ERROR):
        out.append(header(flags) + rndis + b"\x9f\xa0\xa9\x03\x9f\xc0\xc0\x9f")
    out.append(header(RNDIS, 2, mp_index=0, mts=40) + frames(*range(20, 90, 4)) + b"\x9f\xa1\xd8\x9f\xd0\x9f")
    out.append(header(RNDIS | VNET_ON, 1, 9014, 3) + frames(9014, 980, 9015) + b"\x9f\xac\x04\x9f\xda\x9f")
    # TX offloads: a 40,000-byte TCP/IPv4 super-frame (MSS 1441), one over IPv6, one with a VLAN tag, a UDP
    # frame with a partial checksum; two transfers, so segments wait for completions and go from tick()
    tcp4, tcp6 = b"\x70\x40\x9c\xa0\x05", b"\x78\x40\x9c\xa0\x05"
    vlan, udp = b"\x72\x10\x27\x00\x85", b"\x74\x2c\x01\x00\x00"
    ops = b"\x9f\xa0\xa0\xe0\xa0\xa0\xe0\x9f\xa0\xa9\x03\xe0\xc0\xc0\xe0\x9f"
    for flags in (VNET_ON | OFFLOAD, VNET_ON | OFFLOAD | RNDIS, VNET_ON | OFFLOAD | EOF):
        out.append(header(flags, 2) + tcp4 + tcp6 + vlan + udp + frames(60, 1514, 1515) + ops)
    out.append(header(VNET_ON | OFFLOAD, 8, 9014, 3) + tcp4 + b"\x70\xff\xff\x00\x80" + ops + ops)
    out.append(header(VNET_ON | OFFLOAD, 1) + b"\x71\x40\x9c\xa0\x05\x30\x00" + tcp6 + ops + b"\xd0\xe0")
    return out


check = nc_.checker(lambda: Harness())


def _instrument(atheris) -> None:
    with atheris.instrument_imports(include=["usbnetd"]):
        import usbnetd.core.datapath  # noqa: F401
        import usbnetd.netdev.port  # noqa: F401
        import usbnetd.protocols.driver  # noqa: F401
        import usbnetd.usb.bulk  # noqa: F401
    atheris.instrument_func(parse)


def main(argv: list[str]) -> int:
    return nc_.main(argv, TARGET, check, seeds, load_frametx, _instrument, MAX_INPUT)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
