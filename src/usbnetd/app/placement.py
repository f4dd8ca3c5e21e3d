"""CPU placement of the event-loop thread: off the CPU where the USB host controller completes transfers.

Why. usbnetd's one thread is woken by the completions of its transfers. The scheduler places a woken task near
the CPU that woke it (wake-affine), so the thread settles on the CPU that takes the host controller's interrupts
and runs the completions' softirq work: the URB giveback (xHCI, EHCI), or on the VM bench dummy_hcd's timer,
which runs the gadget's side of every transfer too. There the two take turns on one CPU while another one
idles. The VM bench measured it (docs/performance.md, "CPU placement"): ECM host->device went from about 0.4x
of cdc_ether with the thread on dummy_hcd's CPU to 0.9-1.2x with it on the other CPU. The kernel's own driver
has no such choice: it runs inside that softirq.

What. Every PERIOD seconds `check()` reads /proc/softirqs and takes, per CPU, the softirqs that complete USB
transfers: TASKLET and HI (the giveback of interrupt-driven controllers; BH workqueues run there as well) and
HRTIMER (timer-driven ones such as dummy_hcd). When one CPU of those the thread may use ran clearly most of
them (at least MIN_RATE a second and SHARE of them all), the thread's affinity becomes the others; the CPUs it
may use are its affinity at start, so systemd's CPUAffinity= and taskset still bound it. It is never left with
fewer than one CPU; with a single CPU there is nothing to do. An idle link (few softirqs) changes nothing.
USBNETD_CPU_PLACEMENT=0 turns it off, and `usbnetd stats` shows what it did (`cpu_placement`).

The completions may follow the thread: a soft hrtimer re-armed on an idle CPU migrates to a busy one (the
kernel's NOHZ timer migration), which is what dummy_hcd's timer does under light load (the VM's subset gadget
at 300 Mbit/s: the thread and the timer swapped CPUs every second). A move the completions follow within
CHASE_WINDOW doubles the time before the next one may come (up to MAX_HOLD); a move that holds resets it. Under
heavy load the timer's CPU is never idle and stays where it is (every VM bench run).

Only the calling thread moves (sched_setaffinity on thread 0): the event loop, which does all per-frame work.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

PERIOD = 1.0  # seconds between looks at /proc/softirqs
# Below this many completion softirqs a second on the busiest CPU nothing is busy enough to be worth a move:
# dummy_hcd's timer alone runs about 5,000 a second while transfers are queued, an xHCI giveback one per batch
# of completions.
MIN_RATE = 500
SHARE = 0.6  # of all the completion softirqs on the CPUs the thread may use: "clearly most"
CHASE_WINDOW = 3.0  # seconds: completions on the thread's new CPU this soon after a move followed it there
MAX_HOLD = 64.0  # seconds between moves at most, once the completions keep following
COMPLETION_SOFTIRQS = ("HI", "TASKLET", "HRTIMER")
SOFTIRQS = "/proc/softirqs"


def read_softirqs(path: str = SOFTIRQS, names: tuple[str, ...] = COMPLETION_SOFTIRQS) -> dict[int, int]:
    """Per CPU number, the sum of the `names` rows of /proc/softirqs. Its header names the CPUs ("CPU0 CPU1
    ..."); a row may be shorter than the header (the kernel prints possible CPUs), which counts as 0."""
    with open(path) as f:
        cpus = [int(col[3:]) for col in f.readline().split() if col.startswith("CPU")]
        out = dict.fromkeys(cpus, 0)
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() in names:
                for cpu, count in zip(cpus, rest.split(), strict=False):
                    out[cpu] += int(count)
    return out


class CpuPlacement:
    """See the module's docstring. `read`, `get_affinity`, `set_affinity` and `clock` are for tests."""

    def __init__(self, read: Callable[[], dict[int, int]] = read_softirqs,
                 get_affinity: Callable[[int], set[int]] = os.sched_getaffinity,
                 set_affinity: Callable[[int, set[int]], None] = os.sched_setaffinity,
                 clock: Callable[[], float] = time.monotonic, off: str | None = None) -> None:
        """`off`: a reason it has nothing to do (the simulated device has no host controller)."""
        self._read, self._set, self._clock = read, set_affinity, clock
        self.allowed = frozenset(get_affinity(0))
        self.avoiding: int | None = None
        self.moves = 0
        if off is None and os.environ.get("USBNETD_CPU_PLACEMENT", "") == "0":
            off = "USBNETD_CPU_PLACEMENT=0"
        elif off is None and len(self.allowed) < 2:
            off = "one CPU"
        self.why_off: str | None = off
        self._last: dict[int, int] | None = None
        self._last_at = 0.0
        self._next = 0.0
        self.hold = PERIOD  # the least time between two moves (doubles while the completions follow)
        self._moved_at = float("-inf")
        self._told_chase = False

    def check(self, now: float | None = None) -> None:
        """Called from the event loop after every turn; looks at most once per PERIOD."""
        if self.why_off is not None:
            return
        now = self._clock() if now is None else now
        if now < self._next:
            return
        self._next = now + PERIOD
        try:
            counts = self._read()
        except (OSError, ValueError) as exc:
            self._off(f"cannot read {SOFTIRQS}: {exc}")
            return
        last, last_at = self._last, self._last_at
        self._last, self._last_at = counts, now
        if last is None or now <= last_at:
            return
        delta = {cpu: counts.get(cpu, 0) - last.get(cpu, 0) for cpu in self.allowed}
        busiest = max(delta, key=lambda cpu: (delta[cpu], -cpu))
        total = sum(delta.values())
        if busiest == self.avoiding or delta[busiest] < MIN_RATE * (now - last_at) or delta[busiest] < SHARE * total:
            return
        since = now - self._moved_at
        if since < self.hold:
            return
        # The completions came to where the thread went, soon after it went: they follow it.
        chased = self.avoiding is not None and since <= self.hold + CHASE_WINDOW
        cpus = set(self.allowed - {busiest})
        try:
            self._set(0, cpus)
        except OSError as exc:
            self._off(f"sched_setaffinity: {exc}")
            return
        self.avoiding = busiest
        self.moves += 1
        self._moved_at = now
        self.hold = min(2 * self.hold, MAX_HOLD) if chased else PERIOD
        level = logging.DEBUG if chased and self._told_chase else logging.INFO  # the chase is told once
        log.log(level, "CPU placement: the event loop keeps off CPU %d, which ran %d%% of the USB completions' "
                "softirqs (%d a second); it runs on CPUs %s", busiest, round(100 * delta[busiest] / total),
                round(delta[busiest] / (now - last_at)), ",".join(map(str, sorted(cpus))))
        if chased and not self._told_chase:
            self._told_chase = True
            log.info("CPU placement: the completions follow the event loop from CPU to CPU (a timer-driven host "
                     "controller); it moves at most every %g s from now on, doubling up to %g s while they do",
                     self.hold, MAX_HOLD)

    def _off(self, why: str) -> None:
        self.why_off = why
        log.warning("CPU placement off: %s", why)

    def detail(self) -> dict:
        """What `usbnetd stats` shows of it."""
        if self.why_off is not None:
            state = f"off ({self.why_off})"
        elif self.avoiding is None:
            state = "watching"
        else:
            state = f"avoiding CPU {self.avoiding}"
        return {"cpu_placement": state, "cpu_placement_moves": self.moves}
