"""app/placement.py: the event loop's thread keeps off the CPU that completes USB transfers."""

from __future__ import annotations

import logging
import os

import pytest

from usbnetd.app import placement as pl

SOFTIRQS = """                    CPU0       CPU1       CPU2       CPU3
          HI:          5          0          1          0
       TIMER:     100000     200000     300000     400000
      NET_TX:          1          2          3          4
      NET_RX:      90000          0          0          0
       BLOCK:          0          0          0          0
    IRQ_POLL:          0          0          0          0
     TASKLET:         10         20       7000         40
       SCHED:       9999       9999       9999       9999
     HRTIMER:          0          3          2
         RCU:       1234       1234       1234       1234
"""


def test_read_softirqs_sums_the_completion_rows_per_cpu(tmp_path) -> None:
    p = tmp_path / "softirqs"
    p.write_text(SOFTIRQS)
    # HI + TASKLET + HRTIMER; the short HRTIMER row counts 0 for CPU3; NET_RX and TIMER are not the bus's
    assert pl.read_softirqs(str(p)) == {0: 15, 1: 23, 2: 7003, 3: 40}


def test_read_softirqs_reads_this_machines_file() -> None:
    counts = pl.read_softirqs()
    assert set(os.sched_getaffinity(0)) <= set(counts) and all(v >= 0 for v in counts.values())


class Machine:
    """The softirq counters, the thread's affinity and the clock, as the placement sees them."""

    def __init__(self, cpus: set[int]) -> None:
        self.affinity = set(cpus)
        self.counts = dict.fromkeys(range(max(cpus) + 1), 0)
        self.now = 100.0
        self.sets: list[set[int]] = []
        self.fail: OSError | None = None

    def set_affinity(self, pid: int, cpus: set[int]) -> None:
        assert pid == 0, "only the calling thread moves"
        if self.fail:
            raise self.fail
        self.affinity = set(cpus)
        self.sets.append(set(cpus))

    def placement(self, **kw) -> pl.CpuPlacement:
        return pl.CpuPlacement(read=lambda: dict(self.counts), get_affinity=lambda pid: set(self.affinity),
                               set_affinity=self.set_affinity, clock=lambda: self.now, **kw)

    def run(self, p: pl.CpuPlacement, per_second: dict[int, int], seconds: int = 3) -> None:
        for _ in range(seconds):
            for cpu, n in per_second.items():
                self.counts[cpu] += n
            self.now += pl.PERIOD
            p.check()


@pytest.fixture(autouse=True)
def _placement_on(monkeypatch) -> None:
    monkeypatch.delenv("USBNETD_CPU_PLACEMENT", raising=False)


def test_the_thread_moves_off_the_cpu_running_most_completions(caplog) -> None:
    m = Machine({0, 1})
    p = m.placement()
    assert p.detail() == {"cpu_placement": "watching", "cpu_placement_moves": 0}
    with caplog.at_level(logging.INFO, logger="usbnetd.app.placement"):
        m.run(p, {0: 5000, 1: 40})
    assert m.sets == [{1}] and p.avoiding == 0
    assert p.detail() == {"cpu_placement": "avoiding CPU 0", "cpu_placement_moves": 1}
    assert "keeps off CPU 0" in caplog.text and caplog.text.count("keeps off") == 1, "one line, not one a second"


def test_it_follows_the_completions_when_they_move_and_never_leaves_the_allowed_cpus() -> None:
    m = Machine({1, 2, 3})  # taskset/CPUAffinity= gave it 1-3; CPU 0 exists but is not its own
    p = m.placement()
    m.run(p, {0: 90000, 2: 6000, 3: 100})
    assert m.sets == [{1, 3}], "CPU 0's softirqs are not its business; it leaves CPU 2"
    m.run(p, {3: 6000, 2: 10})
    assert m.sets == [{1, 3}, {1, 2}]


@pytest.mark.parametrize("per_second", [
    {0: 300, 1: 0},        # idle link: below MIN_RATE
    {0: 5000, 1: 4000},    # spread: no CPU runs clearly most
    {},                    # nothing at all
])
def test_nothing_moves_without_a_clearly_busiest_cpu(per_second) -> None:
    m = Machine({0, 1})
    p = m.placement()
    m.run(p, per_second, seconds=5)
    assert m.sets == [] and p.avoiding is None


def test_it_looks_once_a_period() -> None:
    reads = []
    m = Machine({0, 1})
    p = pl.CpuPlacement(read=lambda: reads.append(1) or dict(m.counts), get_affinity=lambda pid: {0, 1},
                        set_affinity=m.set_affinity, clock=lambda: m.now)
    for _ in range(50):  # 50 loop turns inside one period
        p.check()
    assert len(reads) == 1


@pytest.mark.parametrize(("cpus", "env", "off", "why"), [
    ({0}, "", None, "one CPU"),
    ({0, 1}, "0", None, "USBNETD_CPU_PLACEMENT=0"),
    ({0, 1}, "", "no host controller", "no host controller"),
])
def test_when_it_stays_off(monkeypatch, cpus, env, off, why) -> None:
    monkeypatch.setenv("USBNETD_CPU_PLACEMENT", env)
    m = Machine(cpus)
    p = m.placement(off=off)
    m.run(p, {0: 9000})
    assert m.sets == [] and p.detail()["cpu_placement"] == f"off ({why})"


def test_a_refused_move_or_an_unreadable_file_turns_it_off_with_one_line(caplog) -> None:
    m = Machine({0, 1})
    m.fail = PermissionError(1, "Operation not permitted")
    p = m.placement()
    with caplog.at_level(logging.WARNING, logger="usbnetd.app.placement"):
        m.run(p, {0: 9000}, seconds=5)
    assert p.why_off and "sched_setaffinity" in p.why_off and caplog.text.count("CPU placement off") == 1

    def unreadable() -> dict[int, int]:
        raise FileNotFoundError(2, "No such file or directory", "/proc/softirqs")

    q = pl.CpuPlacement(read=unreadable, get_affinity=lambda pid: {0, 1}, set_affinity=m.set_affinity,
                        clock=lambda: m.now)
    q.check()
    assert q.detail()["cpu_placement"].startswith("off (cannot read /proc/softirqs")


def test_completions_that_follow_the_thread_make_it_move_ever_less_often(caplog) -> None:
    """dummy_hcd's timer under light load migrates to the busy CPU, the thread's: without a back-off the two
    would swap CPUs every second. Each followed move doubles the hold, up to MAX_HOLD, and the log says so
    once; a move that holds brings the hold back to one period."""
    m = Machine({0, 1})
    p = m.placement()
    with caplog.at_level(logging.INFO, logger="usbnetd.app.placement"):
        for _ in range(120):
            thread_cpu = min(m.affinity) if m.sets else 0  # the timer sits wherever the thread is
            m.run(p, {thread_cpu: 5000}, seconds=1)
    assert 5 <= p.moves <= 9, p.moves  # 120 s: holds of 1, 2, 4, ... 64 s, not 120 moves
    assert p.hold == pl.MAX_HOLD
    assert caplog.text.count("follow the event loop") == 1 and caplog.text.count("keeps off") == 2
    # the completions stop following: the next move is not a chase, and the hold is one period again
    m.run(p, {p.avoiding: 5000}, seconds=70)
    moves = p.moves
    m.run(p, {min(m.affinity): 5000}, seconds=3)
    assert p.moves == moves + 1 and p.hold == pl.PERIOD
