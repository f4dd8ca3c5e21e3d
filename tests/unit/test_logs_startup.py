"""`usbnetd run` holds its log lines back until the instance is up, so that a failed start is one line.

What a failed start logged (its teardown) is dropped on a terminal or pipe, and kept with -v or when stderr
is a log file (attach's /run/usbnetd/<device>.log) or the journal. The real command is checked in
tests/integration/test_cli_scripts.py (`run --ifname eth0` with an eth0 in the namespace).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = """
import logging, sys
from usbnetd.app import logs
gate = logs.setup("sim:ncm", int(sys.argv[2]), hold_startup=True)
log = logging.getLogger("usbnetd.test")
log.info("teardown: every packet back in the pool (29)")
log.warning("stopped: start-up failed")
print("-- logged", file=sys.stderr, flush=True)
getattr(gate, sys.argv[1])()
log.info("after")
"""


def run(outcome: str, verbose: int = 0, stderr=subprocess.PIPE) -> str:
    env = dict(os.environ, JOURNAL_STREAM="")
    r = subprocess.run([sys.executable, "-c", CODE, outcome, str(verbose)], stderr=stderr, env=env, check=True,
                       timeout=60, text=True)
    return r.stderr


def test_a_failed_start_drops_what_it_logged():
    assert run("failed").splitlines() == ["-- logged", "usbnetd[sim:ncm]: after"]


def test_a_start_that_succeeds_shows_everything_once_up():
    assert run("started").splitlines() == [
        "-- logged",
        "usbnetd[sim:ncm]: teardown: every packet back in the pool (29)",
        "usbnetd[sim:ncm]: stopped: start-up failed",
        "usbnetd[sim:ncm]: after",
    ]


@pytest.mark.parametrize("outcome", ["failed", "started"])
def test_verbose_holds_nothing_back(outcome):
    assert run(outcome, verbose=1).splitlines() == [
        "usbnetd[sim:ncm]: teardown: every packet back in the pool (29)",
        "usbnetd[sim:ncm]: stopped: start-up failed",
        "-- logged",
        "usbnetd[sim:ncm]: after",
    ]


def test_a_log_file_gets_every_line_at_once(tmp_path):
    with open(tmp_path / "sim_ncm_w0.log", "w+") as f:
        run("failed", stderr=f)
        f.seek(0)
        lines = f.read().splitlines()
    assert lines == [
        "usbnetd[sim:ncm]: teardown: every packet back in the pool (29)",
        "usbnetd[sim:ncm]: stopped: start-up failed",
        "-- logged",
        "usbnetd[sim:ncm]: after",
    ]


def test_a_flood_during_start_up_is_bounded():
    from usbnetd.app.logs import StartupGate

    class Sink:
        level = 0

        def handle(self, record):
            pass

    gate = StartupGate(Sink(), hold=True)  # type: ignore[arg-type]
    import logging

    for i in range(5 * StartupGate.MAX_HELD):
        gate.emit(logging.makeLogRecord({"msg": f"line {i}"}))
    assert len(gate.held) == StartupGate.MAX_HELD
