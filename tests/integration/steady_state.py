"""Measure Python memory growth of the whole data path in steady state (run inside a fresh netns as root).

Builds the real service on the simulated adapter in-process and drives it by hand — no event loop thread —
so tracemalloc sees only the data path: frames from the wire (peer TAP) through NCM/ECM decode into the
usbnetd TAP, and frames sent on the usbnetd interface (an AF_PACKET socket) through TX framing to the wire.
Prints one JSON line: packets moved each way and traced-memory growth.
"""

import json
import select
import socket
import sys
import tracemalloc

from usbnetd.core.service import EthernetService
from usbnetd.core.stats import Stats
from usbnetd.protocols import choose
from usbnetd.protocols.driver import Options
from usbnetd.usb.sim import SimTransport

ETHERTYPE = 0x88B5  # IEEE 802 local experimental: the kernel stacks ignore it, so nothing answers


RECONCILES = 5000


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main(kind: str, rounds: int) -> None:
    t = SimTransport(kind, "ssw0")
    driver_cls, binding = choose(t.identity.configurations, 1)
    svc = EthernetService(t, driver_cls(t, binding, Stats(), Options()), ifname="ssu0")
    svc.start()
    peer_mac = bytes.fromhex("020000000002")
    to_host = svc.mac + peer_mac + ETHERTYPE.to_bytes(2, "big") + bytes(986)
    to_wire = peer_mac + svc.mac + ETHERTYPE.to_bytes(2, "big") + bytes(986)
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    tx.bind(("ssu0", 0))
    wire = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    wire.bind(("ssw0", 0))
    sink = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
    sink.bind(("ssw0", 0))
    sink.setblocking(False)
    poller = select.poll()
    poller.register(svc.tap.fd, select.POLLIN)
    poller.register(t.peer_fd, select.POLLIN)
    drain = bytearray(2048)

    def pump(n: int) -> None:
        for _ in range(n):
            for _ in range(16):
                wire.send(to_host)  # wire -> device -> bulk IN -> decode -> TAP
                tx.send(to_wire)  # stack -> TAP -> TX framing -> bulk OUT -> device -> wire
            for _ in range(8):
                if not poller.poll(0) and not t.pending():
                    break
                svc.on_tap_readable()
                svc.on_usb()
                svc.process()
            try:
                while True:
                    sink.recv_into(drain)
            except BlockingIOError:
                pass

    pump(200)  # warm-up: every list, ring and ctypes cache reaches its final size
    # The link follower's reconcile runs on a clock (reconciler.PERIOD), not per frame: kept out of the frames'
    # window so that the two are measured apart (the follower below).
    svc.link.reconciler.next_check = float("inf")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    rx0, tx0 = svc.stats.rx_packets, svc.stats.tx_packets
    pump(rounds)
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    result = {"rx": svc.stats.rx_packets - rx0, "tx": svc.stats.tx_packets - tx0, "growth": after - before,
              "peak_over_start": peak - before, "in_use_after_stop": None}
    # The follower on its own, as a long-lived instance runs it (one reconcile every 2 s, 43,200 a day): the
    # reconciles of many hours in a row, measured by tracemalloc and by the kernel's count of resident pages.
    follower = svc.link.reconciler
    for _ in range(200):
        follower.reconcile()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    rss0 = rss_kib()
    for _ in range(RECONCILES):
        follower.reconcile()
    result["reconciles"] = RECONCILES
    result["follower_growth"] = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    result["follower_rss_growth_kib"] = rss_kib() - rss0
    svc.stop()
    result["in_use_after_stop"] = svc.datapath.pool.in_use
    t.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
