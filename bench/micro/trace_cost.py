"""Micro-benchmark of what tracing costs the data path: when nobody traces, and when someone does.

The real service, data path, TAP port and NCM driver over the core tier's fakes (tests/core/fake.py: a
scripted transport, a socket-pair TAP), so that one cycle is exactly the daemon's work for one transfer:
- RX: a bulk IN completion of one 16 KiB NTB16 of 11 TCP segments (1400 bytes of payload each), delivered
  from `handle_events` to `_on_rx`, then `process()`: decode, TAP writes, the resubmission;
- TX: 11 frames of 1448 bytes waiting on the TAP, `on_tap_readable()` framing them into one NTB, the
  submission, its completion and `process()`.
The frames are put in (and taken out of) the socket pair outside the timed part. Variants, interleaved
cycle by cycle on separate services, in a shuffled order, so that drift and position hit them alike:
- `untraced`: as the daemon runs with no trace (the C path where it exists), with its one
  `tracer is not None` test per completion;
- `untraced, no hook`: the same service with `_on_rx` / `_on_tx` replaced by copies without that test (what
  the code was before tracing existed), swapped in and out cycle by cycle: the difference is the hook's cost;
- `traced`: a Tracer attached (the Python path), the records taken and sent to a socket pair as the daemon's
  TraceSession does, inside the timed part;
- `traced, reader stalled`: a Tracer whose queue is full: every record is dropped and counted;
- `python`: the pure-Python path untraced, for reference (what tracing switches to);
- `untraced, C completions` / `traced, C completions`: the C path taking the bulk IN completions itself, as
  on a real device (the core tier's native-usb transport: real libusb transfer structs, a stand-in submit);
  untraced, no Python runs per received transfer at all, so the hook is not run; traced, set_tracer has
  handed the completions back to Python.
Prints the median and mean per cycle in µs. No root needed.

    .venv/bin/python bench/micro/trace_cost.py [--rounds N]
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests" / "core"))

import fake  # noqa: E402  tests/core/fake.py

from usbnetd import native  # noqa: E402
from usbnetd.core.trace import Tracer  # noqa: E402
from usbnetd.protocols.ncm_codec import TxLayout, build_ntb  # noqa: E402
from usbnetd.usb.transport import STATUS_CANCELLED, STATUS_NO_DEVICE, STATUS_OK  # noqa: E402

HOST = bytes.fromhex("02aaaaaaaa01")
PEER = bytes.fromhex("02bbbbbbbb02")


def _on_rx_no_hook(self, packet, status, actual):
    """DataPath._on_rx as it was before the trace hook (the error branches are not taken here)."""
    if status == STATUS_OK:
        self._rx_error_streak = 0
        packet.length = actual
        self.rx_completion.enqueue(packet)
        return
    raise AssertionError("the benchmark completes every transfer successfully")


def _on_tx_no_hook(self, packet, status):
    frames = self._tx_frames[packet.index]
    if status == STATUS_OK:
        self.stats.tx_packets += frames
        self.stats.tx_bytes += self._tx_bytes[packet.index]
    elif status in (STATUS_NO_DEVICE, STATUS_CANCELLED):
        raise AssertionError("the benchmark completes every transfer successfully")
    self.tx_completion.enqueue(packet)


class Variant:
    def __init__(self, name: str, native_path: bool, hook: bool = True, tracer: Tracer | None = None,
                 same_service_as: Variant | None = None, usb_c: bool = False) -> None:
        self.name = name
        if same_service_as is not None:
            # The same service, memory and all: two services built alike differ by about a microsecond per
            # cycle (where their buffers landed), which would swamp a 10-20 ns difference.
            self.svc, self.t, self.tap = same_service_as.svc, same_service_as.t, same_service_as.tap
        else:
            fake.NATIVE = native_path
            fake.USB_C = usb_c
            self.svc, self.t, self.tap = fake.make_service("ncm")
            fake.NATIVE = fake.USB_C = False
            self.tap.peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        dp = self.svc.datapath
        if hook:
            self.callbacks = (dp._on_rx, dp._on_tx)
        else:
            self.callbacks = (_on_rx_no_hook.__get__(dp), _on_tx_no_hook.__get__(dp))
        self.tracer = tracer
        self.sink_w, self.sink_r = socket.socketpair()
        self.sink_w.setblocking(False)
        self.sink_r.setblocking(False)
        if tracer is not None:
            dp.set_tracer(tracer)
        self.rx: list[float] = []
        self.tx: list[float] = []

    def pump(self) -> None:
        """What the daemon's TraceSession.pump does after every turn: take the records, send them."""
        tr = self.tracer
        if tr is not None and tr.blocks:
            data = b"".join(tr.take(1 << 20))
            try:
                self.sink_w.send(data)
            except BlockingIOError:
                pass

    def drain_sink(self) -> None:
        try:
            while self.sink_r.recv(1 << 20):
                pass
        except BlockingIOError:
            pass


def rx_cycle(v: Variant, ntb: bytes, clock) -> float:
    v.t._on_rx, v.t._on_tx = v.callbacks
    v.t.complete_rx(ntb)  # copies the NTB into the transfer's buffer, as the controller would
    t0 = clock()
    v.svc.on_usb()
    v.svc.process()
    v.pump()
    t1 = clock()
    v.tap.host_receive()
    v.drain_sink()
    return (t1 - t0) / 1000


def tx_cycle(v: Variant, frames: list[bytes], clock) -> float:
    for f in frames:
        v.tap.host_send(f)
    t0 = clock()
    v.svc.on_tap_readable()
    v.svc.process()
    while v.t.tx:
        v.t.complete_tx()
    v.svc.on_usb()
    v.svc.process()
    v.pump()
    t1 = clock()
    v.drain_sink()
    return (t1 - t0) / 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3000)
    args = ap.parse_args()
    layout = TxLayout(False, 16384, 4, 2, 4, 40, 512)
    rx_frames = [HOST + PEER + b"\x08\x00" + bytes([i]) * 1400 for i in range(11)]
    ntb = build_ntb(layout, rx_frames)
    tx_frames = [PEER + HOST + b"\x08\x00" + bytes([i]) * 1434 for i in range(11)]
    stalled = Tracer(limit_bytes=0)
    untraced = Variant("untraced", True)
    variants = [untraced, Variant("untraced, no hook", True, hook=False, same_service_as=untraced),
                Variant("traced", True, tracer=Tracer()), Variant("traced, reader stalled", True, tracer=stalled),
                Variant("python (untraced)", False), Variant("untraced, C completions", True, usb_c=True),
                Variant("traced, C completions", True, tracer=Tracer(), usb_c=True)]
    clock = time.perf_counter_ns
    rng = random.Random(1)
    for i in range(args.rounds + 100):  # the first 100 warm up
        order = variants[:]
        rng.shuffle(order)  # every variant in every position and after every other (caches, drift)
        for v in order:
            r = rx_cycle(v, ntb, clock)
            t = tx_cycle(v, tx_frames, clock)
            if i >= 100:
                v.rx.append(r)
                v.tx.append(t)
    print(f"trace_cost: {args.rounds} cycles per variant, interleaved; C extension: "
          f"{'yes' if native.AVAILABLE else 'no (' + str(native.WHY_NOT) + ')'}; per cycle: median (mean) µs")
    print(f"{'variant':<26} {'RX: 16 KiB NTB, 11 frames':>28} {'TX: 11 frames -> 1 NTB':>26}  path")
    for v in variants:
        print(f"{v.name:<26} {statistics.median(v.rx):12.2f} ({statistics.fmean(v.rx):8.2f})       "
              f"{statistics.median(v.tx):10.2f} ({statistics.fmean(v.tx):8.2f})   {v.svc.datapath.path}")
    print(f"reader stalled: {sum(stalled.recorded)} records kept, {sum(stalled.dropped)} dropped and counted")
    # The hook alone, apart from everything else: the attribute test as _on_rx makes it.
    dp = variants[0].svc.datapath
    n = 1_000_000
    t0 = clock()
    for _ in range(n):
        if dp.tracer is not None:
            pass
    t1 = clock()
    t2 = clock()
    for _ in range(n):
        pass
    t3 = clock()
    print(f"one `self.tracer is not None` test: {((t1 - t0) - (t3 - t2)) / n:.1f} ns")
    for v in variants[1:]:
        dp = v.svc.datapath
        dp.set_tracer(None)
        v.t._on_rx, v.t._on_tx = dp._on_rx, dp._on_tx  # teardown's cancellations take the real branches
        v.svc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
