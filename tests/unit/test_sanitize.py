"""Strings a USB device supplies never reach a terminal, a JSON document, an interface name or a log line
as they came.

Where device strings go (audited; test_device_string_flows_are_the_audited_ones fails when a new one appears):

- `usbnetd list` and `list --json`: product and serial, read from sysfs (the kernel's copy of the string
  descriptors), through discovery.sanitize (printable characters only, at most 128).
- the interface name template's `{serial}` (config.Settings.ifname_for): through config.name_part (ASCII
  letters, digits, '_', '.', '-'; no leading '-' or '.'), then tap.validate_ifname.
- the MAC from the iMACAddress string descriptor (protocols/base.py read_mac): cdc.parse_mac_string takes
  exactly 12 hex digits, anything else is no MAC (a random local one is used).
- `[[device]] serial` matching in the configuration: compared for equality only, never printed.
- status and stats JSON, sd_notify STATUS= and log lines carry no device string (bus id from bus and port
  numbers, MAC as bytes), and every error the CLI prints goes through cli.one_line.

Also: no module runs a shell (shell=True, os.system, os.popen and friends).
"""

from __future__ import annotations

import ast
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usbnetd.app import cli
from usbnetd.app.config import Settings, name_part
from usbnetd.app.discovery import list_devices, sanitize
from usbnetd.core.stats import Stats
from usbnetd.netdev.tap import validate_ifname
from usbnetd.protocols import cdc, choose
from usbnetd.protocols.devices import ConfigError
from usbnetd.protocols.driver import Options
from usbnetd.usb.descriptors import parse_configuration
from usbnetd.usb.sim import build_config_descriptor

REPO = Path(__file__).resolve().parents[2]

HOSTILE = [
    "\x1b[31mred\x1b[0m\x1b[2J\x1b]0;title\x07",  # ANSI colour, clear screen, terminal title (OSC)
    "line one\nusbnetd[1-1]: forged line\r\n",  # newlines: a forged log or output line
    "nul\x00inside\x00",
    "\x7f\x08\x08\x08backspaces",
    "\u202egnp.exe\u2028\u2029\ufeff",  # right-to-left override, line/paragraph separators, BOM
    "x" * 5000,  # very long
    "$(reboot); `id` | rm -rf / && echo 'x' \"y\" > /etc/passwd",  # shell metacharacters
    "../../etc/passwd",
    "..",
    ".",
    "-rf",
    "/",
    "tab\there",
    "",
]
HOSTILE_BYTES = [s.encode("utf-8", "surrogatepass") for s in HOSTILE] + [
    b"\xff\xfe\xfa invalid utf-8 \xc3\x28 \xed\xa0\x80",  # invalid UTF-8, a lone surrogate
    b"\x1b[31m\xff\n\x00",
]


def printable_line(text: str) -> bool:
    return all(c.isprintable() for c in text)


# ------------------------------------------------------------------------------------------------ sanitize


@pytest.mark.parametrize("s", HOSTILE)
def test_sanitize_leaves_only_printable_characters(s):
    out = sanitize(s)
    assert printable_line(out) and len(out) <= 128
    assert "\x1b" not in out and "\n" not in out and "\x00" not in out


@given(st.text())
@settings(max_examples=500, deadline=None)
def test_sanitize_any_text(s):
    out = sanitize(s)
    assert printable_line(out) and len(out) <= 128


# ------------------------------------------------------------------------------------------------ usbnetd list


def fake_sysfs(root: Path, busid: str, product: bytes, serial: bytes) -> None:
    """One USB device as /sys/bus/usb/devices shows it: the cached descriptors and the string attributes."""
    dev = root / busid
    dev.mkdir(parents=True)
    device_descriptor = bytes([18, 1, 0, 2, 0, 0, 0, 64]) + struct.pack("<HHH", 0x0525, 0xA4A1, 0x0100)
    device_descriptor += bytes([1, 2, 3, 1])
    (dev / "descriptors").write_bytes(device_descriptor + build_config_descriptor("ncm"))
    (dev / "bConfigurationValue").write_text("1\n")
    (dev / "product").write_bytes(product + b"\n")
    (dev / "serial").write_bytes(serial + b"\n")


def usbnetd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    run_dir, conf = tmp_path / "run", tmp_path / "conf"
    run_dir.mkdir(exist_ok=True)
    conf.mkdir(exist_ok=True)
    env = dict(os.environ, USBNETD_SYSFS=str(tmp_path / "sys"), USBNETD_RUN_DIR=str(run_dir),
               USBNETD_CONFIG_DIR=str(conf))
    return subprocess.run([sys.executable, "-m", "usbnetd", *args], capture_output=True, env=env, timeout=60)


def test_list_prints_hostile_product_and_serial_harmlessly(tmp_path):
    """One device per hostile string (bus ids 1-1, 1-2, ...), listed as text and as JSON."""
    busids = [f"1-{i + 1}" for i in range(len(HOSTILE_BYTES))]
    for busid, raw in zip(busids, HOSTILE_BYTES, strict=True):
        fake_sysfs(tmp_path / "sys", busid, product=raw, serial=raw[::-1])
    r = usbnetd(tmp_path, "list")
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode("utf-8")  # valid UTF-8 whatever the devices sent
    lines = text.splitlines()
    assert len(lines) == 1 + len(busids), lines  # the header and exactly one line per device
    assert sorted(ln.split()[0] for ln in lines[1:]) == sorted(busids)
    assert all(printable_line(ln) for ln in lines), lines
    assert all(len(ln) <= len(lines[0]) + 128 for ln in lines), "product names are cut at 128"

    r = usbnetd(tmp_path, "list", "--json")
    assert r.returncode == 0, r.stderr
    devices = json.loads(r.stdout)
    assert sorted(d["busid"] for d in devices) == sorted(busids)
    for dev in devices:
        for key in ("product", "serial"):
            assert dev[key] is None or (printable_line(dev[key]) and len(dev[key]) <= 128), dev
        assert dev["protocol"] == "ncm"


def test_list_shows_an_honest_product_name_unchanged(tmp_path):
    """The sanitising must not mangle ordinary names (the test above would pass if it dropped everything)."""
    fake_sysfs(tmp_path / "sys", "1-1", product="Realtek USB 10/100/1G/2.5G LAN — Ünïcode".encode(), serial=b"ABC-123")
    (dev,) = list_devices(str(tmp_path / "sys"), table={})
    assert (dev.product_name, dev.serial) == ("Realtek USB 10/100/1G/2.5G LAN — Ünïcode", "ABC-123")


# ------------------------------------------------------------------------------------------------ interface names

_NAME = re.compile(r"^[0-9A-Za-z_][0-9A-Za-z_.-]{0,14}$")


def fill(template: str, serial: str | None) -> str:
    return Settings(ifname_template=template).ifname_for(bytes.fromhex("020000000001"), "3-2.4", serial, "ncm")


@pytest.mark.parametrize("serial", HOSTILE + [b.decode("utf-8", "replace") for b in HOSTILE_BYTES])
@pytest.mark.parametrize("template", ["{serial}", "u{serial}", "usb{protocol}{serial}"])
def test_serial_in_the_name_template_gives_a_safe_name_or_one_clean_error(template, serial):
    try:
        name = fill(template, serial)
    except ConfigError as exc:
        msg = str(exc)
        assert printable_line(msg) and len(msg) < 200, msg
        assert msg.startswith("interface.name: the template")
        return
    assert _NAME.match(name), name
    assert validate_ifname(name) is None
    assert "/" not in name and name not in (".", "..")


@given(st.text())
@settings(max_examples=500, deadline=None)
def test_name_part_of_any_text(s):
    part = name_part(s)
    assert re.fullmatch(r"[0-9A-Za-z_.-]{0,15}", part)
    assert not part.startswith(("-", "."))


def test_name_part_examples():
    assert name_part("../../etc/passwd") == "___.._etc_passw"  # no '/', no leading '.', 15 characters
    assert name_part("..") == "__"
    assert name_part("-rf") == "_rf"
    assert name_part("a/b c\nd\x1b") == "a_b_c_d_"
    assert name_part("SN-0042.a") == "SN-0042.a"  # ordinary serials unchanged
    assert name_part(None) == ""
    assert fill("u{serial}", "SN-0042") == "uSN-0042"


# ------------------------------------------------------------------------------------------------ the MAC string


class StringDevice:
    """The device side of a GET_DESCRIPTOR(STRING) request: answers every index with one string."""

    def __init__(self, text: str | None) -> None:
        self.text = text

    def get_string(self, index: int) -> str | None:
        return self.text


HOSTILE_MACS = HOSTILE + [
    "0200000000011",  # 13 digits
    "02000000000",  # 11
    "02:00:00:00:00:01",  # separators
    "0x0200000000",
    "02000000000\n",
    "02000000000\x00",
    "\x1b[31m000001",
    "０２００００００００１",  # fullwidth digits: str.isdigit() says yes, the hex parser must say no
    "02000000000g",
    " 20000000001",
]


@pytest.mark.parametrize("kind", ["ecm", "ncm"])
@pytest.mark.parametrize("text", HOSTILE_MACS)
def test_hostile_imacaddress_string_gives_no_mac(kind, text):
    config, _ = parse_configuration(build_config_descriptor(kind))
    driver_cls, binding = choose([config], 1, None, None)
    driver = driver_cls(StringDevice(text), binding, Stats(), Options())
    assert driver.read_mac() is None
    assert cdc.parse_mac_string(text) is None


def test_a_good_imacaddress_string_is_read():
    config, _ = parse_configuration(build_config_descriptor("ecm"))
    driver_cls, binding = choose([config], 1, None, None)
    assert driver_cls(StringDevice("0200DEADbeef"), binding, Stats(), Options()).read_mac() == \
        bytes.fromhex("0200deadbeef")


# ------------------------------------------------------------------------------------------------ CLI errors


@pytest.mark.parametrize("args", [
    ("run", "1-1\n\x1b[2Jusbnetd: error: forged"),
    ("run", "0525:a4a1/\x1b[31mSERIAL"),
    ("run", "sim:ncm", "--ifname", "\x1b[2J\n"),
    ("run", "sim:ncm", "--control-group", "\x1b[2J\nforged"),
    ("status", "\x1b[2J\nforged"),
])
def test_cli_errors_are_one_printable_line(tmp_path, args):
    r = usbnetd(tmp_path, *args)
    assert r.returncode in (1, 2), r
    err = r.stderr.decode()
    assert err.startswith("usbnetd: error: ") and err.count("\n") == 1, err
    assert printable_line(err.rstrip("\n")), err
    assert "Traceback" not in err


def test_one_line():
    assert cli.one_line("a\nb\x1b[0m\x00") == "a?b?[0m?"


# ------------------------------------------------------------------------------------------------ source scans


def python_sources() -> list[Path]:
    skip = {".venv", ".git", "node_modules", "build", "dist"}
    return sorted(p for p in REPO.rglob("*.py") if not skip & set(p.relative_to(REPO).parts))


SHELL_CALLS = {("os", "system"), ("os", "popen"), ("os", "execl"), ("os", "spawnl"), ("os", "spawnlp"),
               ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
               ("asyncio", "create_subprocess_shell")}


def shell_uses(source: str) -> list[str]:
    """Every call that runs a shell: shell=<anything but False>, os.system/os.popen, getoutput, ..."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"line {node.lineno}: shell=")
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in SHELL_CALLS:
            found.append(f"line {node.lineno}: {f.value.id}.{f.attr}")
        if isinstance(f, ast.Name) and f.id in ("system", "popen", "getoutput", "getstatusoutput"):
            found.append(f"line {node.lineno}: {f.id}")
    for node in ast.walk(ast.parse(source)):  # imports that would bring them in under another name
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "subprocess", "asyncio"):
            for alias in node.names:
                if (node.module, alias.name) in SHELL_CALLS:
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
    return found


def test_the_shell_scan_finds_what_it_looks_for():
    bad = ("import os, subprocess\nsubprocess.run('x', shell=True)\nos.system('x')\nos.popen('x')\n"
           "subprocess.check_output('x', shell=1)\nsubprocess.getoutput('x')\nfrom os import system\nsystem('x')\n")
    assert len(shell_uses(bad)) == 7
    assert shell_uses("import subprocess\nsubprocess.run(['ls'], shell=False)\n") == []


def test_no_module_runs_a_shell():
    sources = python_sources()
    assert any(p.name == "cli.py" for p in sources) and any(p.parts[-2] == "integration" for p in sources)
    offenders = {str(p.relative_to(REPO)): hits for p in sources if (hits := shell_uses(p.read_text()))}
    assert offenders == {}


IDENTITY_STRINGS = {"manufacturer", "product_name", "serial"}
# (file, function) pairs allowed to read a device-supplied string attribute, each audited (module docstring).
AUDITED = {
    ("src/usbnetd/usb/engine.py", "__init__"),  # reads them from the device into DeviceIdentity
    ("src/usbnetd/usb/sim.py", "__init__"),  # the simulated device's own strings
    ("src/usbnetd/app/runner.py", "run_device"),  # serial: config matching (equality) and ifname_for (name_part)
    ("src/usbnetd/app/runner.py", "name_for"),
    ("src/usbnetd/app/discovery.py", "__str__"),  # DeviceSpec.serial: the user's VID:PID/SERIAL, checked printable
    ("src/usbnetd/app/discovery.py", "resolve_busid"),  # the user's serial compared with sysfs
    ("src/usbnetd/app/discovery.py", "open_usb"),  # the user's serial compared with the device's
    ("src/usbnetd/app/discovery.py", "as_dict"),  # list --json: already sanitized in list_devices
    ("src/usbnetd/app/cli.py", "list_cmd"),  # list: product_name, already sanitized in list_devices
    ("src/usbnetd/app/facts.py", "device_facts"),  # status's device facts: each string through sanitize()
    ("src/usbnetd/app/config.py", "device"),  # [[device]] serial = ...: equality
    ("src/usbnetd/app/config.py", "load_table"),  # config entries' serial (admin's, not the device's)
}


def identity_reads(path: Path) -> set[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    out = set()

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, child.name)
                continue
            if isinstance(child, ast.Attribute) and child.attr in IDENTITY_STRINGS and \
                    isinstance(child.ctx, ast.Load):
                out.add((str(path.relative_to(REPO)), func))
            visit(child, func)

    visit(tree, "<module>")
    return out


def test_device_string_flows_are_the_audited_ones():
    """A new place reading a device's serial/product/manufacturer must sanitize it and be added above."""
    reads = set().union(*(identity_reads(p) for p in sorted((REPO / "src" / "usbnetd").rglob("*.py"))))
    assert reads - AUDITED == set(), "unaudited reads of device strings (sanitize them, then list them)"
