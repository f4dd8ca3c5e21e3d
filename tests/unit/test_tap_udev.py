"""tap.wait_for_udev: the TAP's MAC is set only after udev has handled the new interface (when udev runs), so
that udev's default MACAddressPolicy cannot put its own address over the adapter's."""

from __future__ import annotations

import threading
import time

from usbnetd.netdev import tap


def test_without_udev_nothing_is_waited_for(tmp_path, monkeypatch):
    monkeypatch.setattr(tap, "UDEV_CONTROL", str(tmp_path / "control"))
    t0 = time.monotonic()
    assert tap.wait_for_udev(7, timeout=5) is False
    assert time.monotonic() - t0 < 1


def test_waits_until_udev_has_the_interface_in_its_database(tmp_path, monkeypatch):
    (tmp_path / "control").touch()
    monkeypatch.setattr(tap, "UDEV_CONTROL", str(tmp_path / "control"))
    monkeypatch.setattr(tap, "UDEV_DATA", str(tmp_path / "n{index}"))
    later = threading.Timer(0.1, (tmp_path / "n7").touch)
    later.start()
    t0 = time.monotonic()
    try:
        assert tap.wait_for_udev(7, timeout=5) is True
    finally:
        later.cancel()
    assert 0.05 < time.monotonic() - t0 < 4


def test_a_udev_that_never_answers_costs_the_timeout_only(tmp_path, monkeypatch):
    (tmp_path / "control").touch()
    monkeypatch.setattr(tap, "UDEV_CONTROL", str(tmp_path / "control"))
    monkeypatch.setattr(tap, "UDEV_DATA", str(tmp_path / "n{index}"))
    t0 = time.monotonic()
    assert tap.wait_for_udev(8, timeout=0.1) is False
    assert time.monotonic() - t0 >= 0.1


def test_an_entry_still_being_processed_is_not_done(tmp_path, monkeypatch):
    """systemd 255 and later write the entry with ID_PROCESSING=1 when they start on the event."""
    (tmp_path / "control").touch()
    monkeypatch.setattr(tap, "UDEV_CONTROL", str(tmp_path / "control"))
    monkeypatch.setattr(tap, "UDEV_DATA", str(tmp_path / "n{index}"))
    entry = tmp_path / "n9"
    entry.write_bytes(b"I:123\nE:ID_PROCESSING=1\nE:ID_NET_DRIVER=tun\n")
    assert tap.wait_for_udev(9, timeout=0.1) is False
    later = threading.Timer(0.1, lambda: entry.write_bytes(b"I:123\nE:ID_NET_DRIVER=tun\n"))
    later.start()
    try:
        assert tap.wait_for_udev(9, timeout=5) is True
    finally:
        later.cancel()
