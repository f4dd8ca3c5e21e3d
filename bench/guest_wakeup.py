"""What one process wake-up costs in the VM bench's guest: `perf bench sched pipe` (two processes passing a byte
back and forth over two pipes: every operation is two wake-ups and two context switches), on one CPU and free to
use both. Run inside the guest by `bench/vm.py --wakeups`; prints one JSON line.

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


def pipe_usecs(prefix: list[str]) -> float | None:
    r = subprocess.run([*prefix, "perf", "bench", "sched", "pipe", "-l", str(LOOPS)], capture_output=True,
                       text=True, timeout=300)
    m = re.search(r"([\d.]+) usecs/op", r.stdout)
    if not m:
        print(r.stdout + r.stderr, file=sys.stderr)
        return None
    return float(m.group(1))


def main() -> int:
    out = {"loops": LOOPS, "one_cpu_usecs_per_op": [], "two_cpus_usecs_per_op": []}
    for _ in range(3):
        out["one_cpu_usecs_per_op"].append(pipe_usecs(["taskset", "-c", "0"]))
        out["two_cpus_usecs_per_op"].append(pipe_usecs([]))
    print(json.dumps(out))
    return 0 if all(out["one_cpu_usecs_per_op"]) else 1


if __name__ == "__main__":
    sys.exit(main())
