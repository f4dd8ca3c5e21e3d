"""journald-friendly logging: priority prefixes only when stderr really is the journal stream."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

CODE = """
import logging, sys
from usbnetd.app import logs
logs.setup("3-1", 0)
log = logging.getLogger("usbnetd.test")
log.info("usb0: link up")
log.warning("two\\nlines")
log.debug("hidden")
"""


def run(env_extra: dict, stderr_file) -> str:
    env = dict(os.environ, **env_extra)
    subprocess.run([sys.executable, "-c", CODE], stderr=stderr_file, env=env, check=True, timeout=60)
    stderr_file.seek(0)
    return stderr_file.read().decode()


def test_plain_lines_without_journal(tmp_path):
    with open(tmp_path / "err", "w+b") as f:
        out = run({"JOURNAL_STREAM": ""}, f)
    assert out.splitlines() == ["usbnetd[3-1]: usb0: link up", "usbnetd[3-1]: two", "lines"]


def test_priority_prefixes_when_stderr_is_the_journal(tmp_path):
    with open(tmp_path / "err", "w+b") as f:
        st = os.fstat(f.fileno())
        out = run({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f)
    assert out.splitlines() == ["<6>usbnetd[3-1]: usb0: link up", "<4>usbnetd[3-1]: two | lines"]


def test_a_journal_stream_that_is_not_our_stderr_is_ignored(tmp_path):
    with open(tmp_path / "err", "w+b") as f:
        out = run({"JOURNAL_STREAM": "1:2"}, f)
    assert out.startswith("usbnetd[3-1]: usb0")
    assert logging.getLogger("usbnetd").level in (logging.NOTSET, logging.INFO, logging.DEBUG)
