"""Bad input on the command line: one clear line, a non-zero exit, never a traceback, nothing touched."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def usbnetd(*args: str, run_dir: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, USBNETD_RUN_DIR=run_dir)
    return subprocess.run([sys.executable, "-m", "usbnetd", *args], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.mark.parametrize("args,needle", [
    (("run", "nonsense"), "not a device: 'nonsense'"),
    (("run", "sim:rndis"), "unknown simulated adapter"),
    (("attach", "1-1;rm"), "not a device"),
    (("run", "sim:ncm", "--ifname", "a-name-far-too-long-for-linux"), "longer than 15 characters"),
    (("run", "sim:ncm", "--ifname", "bad/name"), "may contain only"),
    (("run", "sim:ncm", "--mac", "01:00:5e:00:00:01"), "multicast address"),
    (("run", "sim:ncm", "--mac", "zz:zz"), "is not a MAC address"),
    (("run", "sim:ncm", "--mtu", "20"), "20 is not in the range"),
    (("run", "sim:ncm", "--busy-poll", "-5"), "-5 is not in the range 0 to 1000000"),
    (("run", "sim:ncm", "--busy-poll", "soon"), "'soon' is not a whole number"),
    (("run", "sim:ncm", "--protocol", "xyz"), "'xyz' is not one of"),
    (("frobnicate",), "No such command"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    r = usbnetd(*args, run_dir=str(tmp_path))
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("usbnetd: error: ")
    assert needle in r.stderr
    assert not os.listdir(tmp_path), "bad input must not touch the system"


def test_status_and_detach_with_nothing_attached(tmp_path):
    r = usbnetd("status", run_dir=str(tmp_path))
    assert (r.returncode, r.stdout.strip()) == (0, "no devices attached")
    r = usbnetd("status", "--json", run_dir=str(tmp_path))
    assert (r.returncode, r.stdout.strip()) == (0, "[]")
    r = usbnetd("detach", "usb9", run_dir=str(tmp_path))
    assert r.returncode == 1 and r.stderr.strip() == "usbnetd: error: usb9 is not attached"


def test_stale_socket_is_ignored(tmp_path):
    (tmp_path / "1-1.sock").write_text("")  # left by a crashed instance; nobody listens
    r = usbnetd("status", "--json", run_dir=str(tmp_path))
    assert (r.returncode, r.stdout.strip()) == (0, "[]")
