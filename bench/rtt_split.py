"""VM diagnostic, guest side: where a ping's round trip goes, usbnetd against the kernel driver, same boot.

    python -m tests.vm.harness run --timeout 1200 -- .venv/bin/python bench/rtt_split.py ecm,ncm

For each gadget function, 30 echoes (0.2 s apart) from the host to the device's peer namespace, first through
usbnetd, then through the kernel driver on the same gadget, with tcpdump (nanosecond timestamps) on the host's
interface and on the gadget's netdev. Each echo splits into

* host->device: the request leaving the host's stack until it arrives on the gadget's netdev (the host
  driver's TX path, the USB transfer, f_ncm/f_ecm's receive);
* device: the device's stack answering;
* device->host: the reply leaving the gadget's netdev until it arrives on the host's interface.

Prints the median and mean of each part per driver. ``SRC=<tree>/src`` runs usbnetd from another source
tree (an experiment) ahead of the installed one. Exit status 0 unless something broke.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import common as c  # noqa: E402
import guest_bench as gb  # noqa: E402

from vm.guest import bench as vb  # noqa: E402

ECHO = re.compile(r"(\d+\.\d+) IP .* ICMP echo (request|reply), id \d+, seq (\d+)")


def capture(prefix: list[str], ifname: str, path: str) -> subprocess.Popen:
    return subprocess.Popen([*prefix, "tcpdump", "-i", ifname, "-n", "-tt", "--time-stamp-precision=nano", "-l",
                             "icmp"], stdout=open(path, "w"), stderr=subprocess.DEVNULL)


def echoes(path: str) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for line in open(path):
        m = ECHO.match(line)
        if m:
            out.setdefault(int(m.group(3)), {})[m.group(2)] = float(m.group(1))
    return out


def measure(label: str, host_if: str, peer: vb.PeerNamespace, g: vb.Gadget) -> None:
    device = ["ip", "netns", "exec", peer.name]
    c.ping([], peer.peer_addr, count=3, interval=0.2)  # neighbour entries first
    caps = [capture([], host_if, "/run/rtt-host.txt"), capture(device, g.gadget_netdev, "/run/rtt-dev.txt")]
    time.sleep(1.5)
    p = c.ping([], peer.peer_addr, count=30, interval=0.2)
    time.sleep(0.5)
    for cap in caps:
        cap.send_signal(signal.SIGINT)
    for cap in caps:
        cap.wait(timeout=10)
    host, dev = echoes("/run/rtt-host.txt"), echoes("/run/rtt-dev.txt")
    parts = []
    for seq, h in host.items():
        d = dev.get(seq, {})
        if len(h) == 2 and len(d) == 2:
            parts.append((d["request"] - h["request"], d["reply"] - d["request"], h["reply"] - d["reply"],
                          h["reply"] - h["request"]))
    if not parts:
        print(f"{label}: no complete echo captured (ping: {p})", flush=True)
        return
    cols = []
    for i, name in enumerate(("host->device", "device", "device->host", "total")):
        values = [x[i] * 1000 for x in parts]
        cols.append(f"{name} {statistics.median(values):.2f} / {statistics.mean(values):.2f}")
    print(f"{label}: {len(parts)} echoes, ms median / mean: {'; '.join(cols)}; ping avg {p.get('rtt_avg_ms')}",
          flush=True)


def main() -> int:
    functions = (sys.argv[1] if len(sys.argv) > 1 else "ecm,ncm").split(",")
    os.makedirs(gb.RUN_DIR, exist_ok=True)
    vb.unload_host_drivers()
    vb.ensure_dummy_hcd()
    vb.kernel_driver("tun")
    for i, function in enumerate(functions, 1):
        g = vb.Gadget.create(function, index=i)
        peer = vb.PeerNamespace(150 + i).create()
        busid = g.bind()
        peer.take(g.gadget_netdev)
        ifname = f"ubrtt{function}0"
        gb.attach(busid, ifname, src=os.environ.get("SRC"))
        gb.address_and_wait(peer, ifname)
        measure(f"{function} usbnetd", ifname, peer, g)
        gb.usbnetd_cli("detach", ifname, check=False, timeout=60)
        host_if = gb.switch_to_kernel(g, peer)
        measure(f"{function} kernel", host_if, peer, g)
        g.unbind()
        vb.unload_host_drivers()
        g.destroy()
        peer.delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
