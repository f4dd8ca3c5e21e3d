"""What one process wake-up costs in the VM bench's guest: `perf bench sched pipe` (two processes passing a byte
back and forth over two pipes: every operation is two wake-ups and two context switches), on one CPU and free to
use both; and on one CPU with two threads of one process instead (`-T`), whose switches keep the address space.
Run inside the guest by `bench/vm.py --wakeups`; prints one JSON line.

Processes against threads on one CPU shows what a switch of address space costs in a TCG guest: QEMU's
x86 emulation flushes its whole software TLB when CR3 is written (target/i386/helper.c, cpu_x86_update_cr3;
the guest's CPU model, qemu64, has no PCID), so the
code after the switch, kernel and user alike, runs through page-table walks until the TLB refills. An
echo through a user-space driver on ping's CPU makes such switches (ping -> driver -> ping); through the
kernel's driver it makes none.

Why: an echo through usbnetd costs it wake-ups the kernel's driver does not have (the TAP read, then the bulk IN
completion of the reply, and the bulk OUT completion between them), so the ECM/RNDIS RTT gap is measured
against this figure (docs/performance.md, "Where an echo's time goes").
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

LOOPS = 20000


def pipe_usecs(prefix: list[str], threads: bool = False) -> float | None:
    r = subprocess.run([*prefix, "perf", "bench", "sched", "pipe", "-l", str(LOOPS), *(["-T"] if threads else [])],
                       capture_output=True, text=True, timeout=300)
    m = re.search(r"([\d.]+) usecs/op", r.stdout)
    if not m:
        print(r.stdout + r.stderr, file=sys.stderr)
        return None
    return float(m.group(1))


def main() -> int:
    out = {"loops": LOOPS, "one_cpu_usecs_per_op": [], "two_cpus_usecs_per_op": [],
           "one_cpu_threads_usecs_per_op": []}
    for _ in range(3):
        out["one_cpu_usecs_per_op"].append(pipe_usecs(["taskset", "-c", "0"]))
        out["one_cpu_threads_usecs_per_op"].append(pipe_usecs(["taskset", "-c", "0"], threads=True))
        out["two_cpus_usecs_per_op"].append(pipe_usecs([]))
    print(json.dumps(out))
    return 0 if all(out["one_cpu_usecs_per_op"]) else 1


if __name__ == "__main__":
    sys.exit(main())
