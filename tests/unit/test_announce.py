"""netdev/announce.py: the file udev imports for a usbnetd interface (udev/70-usbnetd.rules, IMPORT{file})."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from usbnetd.netdev import announce

REPO = Path(__file__).resolve().parents[2]


def parse(text: str) -> dict[str, str]:
    """KEY=value lines, as udev's IMPORT{file} reads them (no quoting needed: values are plain)."""
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_properties_name_the_adapter_without_device_strings():
    props = announce.properties("3-2.4", 0x0BDA, 0x8156, "ncm")
    assert props == {"USBNETD": "1", "USBNETD_BUSID": "3-2.4", "USBNETD_PROTOCOL": "ncm",
                     "ID_VENDOR_ID": "0bda", "ID_MODEL_ID": "8156", "USBNETD_HWDB_KEY": "usb:v0BDAp8156"}


def test_a_value_udev_would_need_quoted_is_refused():
    with pytest.raises(ValueError):
        announce.properties("3-1\nID_MODEL_FROM_DATABASE=forged", 1, 2, "ncm")


def test_written_before_the_interface_exists_and_removed_after(tmp_path: Path):
    run_dir, sys_net = tmp_path / "run", tmp_path / "net"
    sys_net.mkdir()
    path = announce.write(str(run_dir), "enx020018010001", announce.properties("1-1", 0x1D6B, 0x0104, "ecm"),
                          sys_net=str(sys_net))
    assert path == str(run_dir / "enx020018010001.udev")
    assert parse(Path(path).read_text())["USBNETD_BUSID"] == "1-1"
    assert os.stat(path).st_mode & 0o777 == 0o644  # udev reads it whatever the daemon's umask
    assert not [p for p in run_dir.iterdir() if ".tmp" in p.name]
    # The interface is there while the instance runs: a persistent TAP that stays keeps its file.
    (sys_net / "enx020018010001").mkdir()
    announce.retract(path, "enx020018010001", sys_net=str(sys_net))
    assert Path(path).exists()
    (sys_net / "enx020018010001").rmdir()
    announce.retract(path, "enx020018010001", sys_net=str(sys_net))
    assert not Path(path).exists()
    announce.retract(path, "enx020018010001", sys_net=str(sys_net))  # twice is fine


def test_nothing_written_for_an_interface_that_exists(tmp_path: Path):
    (tmp_path / "net" / "usb0").mkdir(parents=True)
    assert announce.write(str(tmp_path / "run"), "usb0", announce.properties("1-1", 1, 2, "ncm"),
                          sys_net=str(tmp_path / "net")) is None
    assert not (tmp_path / "run").exists()


def test_a_run_dir_that_cannot_be_written_is_not_an_error(tmp_path: Path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert announce.write(str(blocker / "run"), "usb0", announce.properties("1-1", 1, 2, "ncm"),
                          sys_net=str(tmp_path)) is None
    assert "cannot write" in caplog.text


def test_the_rules_and_the_network_files_agree_with_what_is_written():
    """udev imports the file from where usbnetd writes it, and networkd, udev's .link and NetworkManager's rule
    match the property it sets."""
    props = announce.properties("1-1", 1, 2, "ncm")
    rules = (REPO / "udev" / "70-usbnetd.rules").read_text()
    default_path = announce.path_for("/run/usbnetd", "IFNAME").replace("IFNAME", "$kernel")
    assert f'IMPORT{{file}}="{default_path}"' in rules
    assert "IMPORT{builtin}=\"hwdb '$env{USBNETD_HWDB_KEY}'\"" in rules and "USBNETD_HWDB_KEY" in props
    for name in ("80-usbnetd.network", "70-usbnetd.link"):
        text = (REPO / "contrib" / "systemd-networkd" / name).read_text()
        assert "\nKind=tun\n" in text and "\nProperty=USBNETD=1\n" in text, name
    assert props["USBNETD"] == "1"
    assert 'ENV{USBNETD}!="1"' in (REPO / "contrib" / "NetworkManager" / "75-usbnetd-nm.rules").read_text()
