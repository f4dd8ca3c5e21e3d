"""systemd/usbnetd@.service: systemd 252 accepts it (`systemd-analyze verify`, offline), its hardening scores
what we measured (`systemd-analyze security --offline`), and it keeps the promises docs/operating.md makes.

No running systemd is needed: both commands run against a private --root holding the unit verbatim, a stand-in
for /usr/local/bin/usbnetd (verify checks that ExecStart= is executable) and a copy of the host's
/usr/lib/systemd/system (the targets every service depends on).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "usbnetd@.service"
EXPOSURE_THRESHOLD = 30  # systemd-analyze's scale is 0–100 (shown as 0.0–10.0); measured: 2.1


def make_root(tmp_path: Path, unit_text: str, binary: bool = True) -> Path:
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/usbnetd@.service").write_text(unit_text)
    if binary:
        exe = root / "usr/local/bin/usbnetd"
        exe.parent.mkdir(parents=True)
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    system = Path("/usr/lib/systemd/system")
    if not (system / "sysinit.target").exists() or shutil.which("systemd-analyze") is None:
        pytest.fail("systemd is not installed (scripts/test.sh installs the systemd package)")
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    return root


def verify(tmp_path: Path, unit_text: str, binary: bool = True) -> tuple[int, str]:
    root = make_root(tmp_path, unit_text, binary)
    r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "--man=no", "usbnetd@3-1.service",
                        "usbnetd@3-2.4.service"], capture_output=True, text=True, timeout=60)
    return r.returncode, (r.stdout + r.stderr).strip()


def accepted(rc: int, output: str) -> bool:
    """Accepted means exit 0 and not one warning (unknown keys and bad values are only warnings)."""
    return rc == 0 and output == ""


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    rc, out = verify(tmp_path, UNIT.read_text())
    assert accepted(rc, out), out


@pytest.mark.parametrize("breakage", [
    ("Type=notify", "Type=notifyy"),
    ("NoNewPrivileges=yes", "NoNewPrivilege=yes"),
    ("DeviceAllow=char-usb_device rw", "DeviceAllow=char-usb_device rwz"),
    ("RestrictAddressFamilies=AF_UNIX AF_NETLINK", "RestrictAddressFamilies=AF_UNIX AF_NETLNK"),
    ("[Service]", "[Servic]"),
], ids=["bad-value", "unknown-key", "bad-device-access", "bad-family", "bad-section"])
def test_verify_rejects_a_broken_copy(tmp_path, breakage):
    old, new = breakage
    text = UNIT.read_text()
    assert old in text
    rc, out = verify(tmp_path, text.replace(old, new, 1))
    assert not accepted(rc, out), f"systemd-analyze accepted {new!r}"


def test_verify_needs_the_binary_where_the_unit_expects_it(tmp_path):
    rc, out = verify(tmp_path, UNIT.read_text(), binary=False)
    assert rc != 0 and "/usr/local/bin/usbnetd" in out, out


def test_hardening_exposure(tmp_path):
    root = make_root(tmp_path, UNIT.read_text())
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--root={root}",
                        f"--threshold={EXPOSURE_THRESHOLD}", "usbnetd@3-1.service"],
                       capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert level, r.stdout + r.stderr
    print(f"exposure level {level.group(1)}")
    assert r.returncode == 0, r.stdout[-2000:]


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_the_unit_keeps_its_promises():
    d = directives(UNIT.read_text())
    one = {k: v[-1] for k, v in d.items()}
    assert one["ExecStart"] == "/usr/local/bin/usbnetd run %i"
    assert (one["Type"], one["NotifyAccess"]) == ("notify", "main")
    assert int(one["WatchdogSec"]) >= 10 and one["Restart"] == "on-failure"
    assert one["BindsTo"] == one["After"] == "sys-subsystem-usbnetd-%i.device"
    assert one["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
    assert one["DevicePolicy"] == "closed"
    assert sorted(d["DeviceAllow"]) == ["/dev/net/tun rw", "char-usb_device rw"]
    assert one["ProtectSystem"] == "strict" and one["RuntimeDirectory"] == "usbnetd"
    assert one["RuntimeDirectoryPreserve"] == "yes", "instances share /run/usbnetd: one stopping must not wipe it"
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_NETLINK"}
    assert "@system-service" in one["SystemCallFilter"]
    # python-libusb1's transfer callbacks are ctypes closures in W+X memory.
    assert "MemoryDenyWriteExecute" not in d
    # %I would unescape "3-1" into "3/1"; the bus id is the raw instance.
    assert "%I" not in UNIT.read_text().replace("# ", "")
