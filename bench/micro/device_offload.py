"""Micro-benchmark behind docs/performance.md's vendor-chip TX offloads: usbnetd's CPU per megabyte sent to an
AX88179 or an RTL8153, with the chip's TSO (16 KiB TCP super-frames handed over whole) and without (the host's
stack cuts them, usbnetd frames every 1514-byte frame).

Runs the real service, data path, TAP port and driver (the Python TX path these chips use) over the core tier's
scripted transports (tests/core: the same register models the VM bench's emulators use) and a socket pair
standing in for the TAP. Only usbnetd's own calls are timed (on_tap_readable and one event-loop turn), not
the test side's sends and the fake transfers' completions. Prints one line per chip; no root needed.

    python bench/micro/device_offload.py [MEGABYTES]
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / "core"), str(ROOT / "tests" / "unit")]

import fake  # noqa: E402
from tso_frames import superframe, tcp_frame, vnet  # noqa: E402


def _core_test(name: str):
    """A core-tier test module by path (the VM bench's guest directory has files of the same names)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"core_{name}", ROOT / "tests" / "core" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


axt = _core_test("test_ax88179")
rtt = _core_test("test_r8152")

MSS = 1448


def run(chip: str, tso: bool, megabytes: float) -> float:
    """CPU seconds usbnetd spends per MB of TCP payload sent."""
    if chip == "ax88179":
        axt.ax.Ax88179Driver.phy_power_wait = axt.ax.Ax88179Driver.clock_wait = 0
        t = axt.ScriptedAx88179()
        svc, tap = axt.start(t, tso=tso)
        axt.link(t, svc, True)
    else:
        rtt.rtl.R8152Driver.poll_wait = 0
        t = rtt.ScriptedRtl8153()
        svc, tap = rtt.start(t, tso=tso)
        rtt.link(t, svc, True)
    if tso:
        hdr, frame = superframe(MSS * 11, MSS)  # 15,928 bytes of payload: under both chips' 16 KiB
        burst = [hdr + frame] * 4
        payload = 4 * MSS * 11
    else:
        frame, _, _ = tcp_frame(MSS, partial=False)
        burst = [(vnet() if tap.vnet_hdr else b"") + frame] * 44
        payload = 44 * MSS
    spent = 0.0
    sent = 0
    while sent < megabytes * 1e6:
        for m in burst:
            tap.peer.send(m)
        before = svc.stats.tx_packets
        while True:  # until usbnetd has sent the whole burst
            c0 = time.process_time()
            svc.on_tap_readable()
            fake.turn(svc)
            spent += time.process_time() - c0
            if not t.tx:
                break
            while t.tx:
                t.complete_tx()
            c0 = time.process_time()
            fake.turn(svc)
            spent += time.process_time() - c0
        assert svc.stats.tx_packets - before == 44, svc.stats.tx_packets - before
        sent += payload
    assert svc.stats.tx_dropped == 0
    svc.stop()
    return spent / (sent / 1e6)


def main() -> None:
    logging.disable(logging.WARNING)
    mb = float(sys.argv[1]) if len(sys.argv) > 1 else 200
    for chip in ("ax88179", "r8152"):
        plain = min(run(chip, False, mb) for _ in range(3))
        whole = min(run(chip, True, mb) for _ in range(3))
        print(f"{chip}: usbnetd CPU per MB sent, best of 3 x {mb:.0f} MB: without the chip's TSO "
              f"{plain * 1e3:.2f} ms, with it {whole * 1e3:.2f} ms ({plain / whole:.1f}x less)")


if __name__ == "__main__":
    main()
