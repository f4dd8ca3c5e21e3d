"""The ethtool-style facts of `usbnetd status` (app/facts.py, ProtocolDriver.info) and their text lines."""

from __future__ import annotations

import os
from types import SimpleNamespace

from usbnetd.app import facts
from usbnetd.app.cli import device_lines
from usbnetd.core.stats import Stats
from usbnetd.protocols import choose
from usbnetd.protocols.driver import Options, bcd
from usbnetd.protocols.rndis import RndisDriver
from usbnetd.usb.descriptors import parse_configuration
from usbnetd.usb.sim import build_config_descriptor
from usbnetd.usb.transport import DeviceIdentity


def test_bcd_is_written_as_people_write_versions():
    assert [bcd(v) for v in (0x0100, 0x0110, 0x0200, 0x1234, 0x3000)] == ["1.00", "1.10", "2.00", "12.34", "30.00"]


def fake_sysfs(tmp_path):
    """/sys/bus/usb/devices as the kernel lays it out: usb3 links into the host controller's PCI device."""
    pci = tmp_path / "devices" / "pci0000:00" / "0000:00:14.0" / "usb3"
    (pci / "3-2.4").mkdir(parents=True)
    (pci / "3-2.4" / "bcdDevice").write_text("3000\n")
    root = tmp_path / "bus" / "usb" / "devices"
    root.mkdir(parents=True)
    os.symlink(pci, root / "usb3")
    os.symlink(pci / "3-2.4", root / "3-2.4")
    return str(root)


def test_bus_info_and_bcd_device_from_sysfs(tmp_path):
    root = fake_sysfs(tmp_path)
    assert facts.bus_info("3-2.4", root) == "usb-0000:00:14.0-2.4"  # as usbnet's usb_make_path writes it
    assert facts.bcd_device("3-2.4", root) == "30.00"
    assert facts.bus_info("sim:ncm", root) == "sim:ncm" and facts.bcd_device("sim:ncm", root) is None
    assert facts.bus_info("7-1", root) == "7-1", "a bus sysfs does not have: the bus id as it is"


def service_for(kind: str, busid: str, speed: int | None):
    config, _ = parse_configuration(build_config_descriptor(kind))
    ident = DeviceIdentity(busid=busid, vendor=0x0BDA, product=0x8156, manufacturer="Realtek",
                           product_name="USB 10/100/1G/2.5G LAN\x1b[31m", serial="0001", speed_mbps=5000,
                           active_configuration=1, configurations=[config])
    cls, binding = choose([config], 1)
    driver = cls(SimpleNamespace(identity=ident), binding, Stats(), Options())
    if kind == "ncm":
        driver.ntb32 = False  # what bind() negotiates (no device here)
    return SimpleNamespace(transport=SimpleNamespace(identity=ident), driver=driver,
                           link=SimpleNamespace(speed_mbps=speed, tap_speed_set=True))


def test_device_facts_of_an_ncm_device(tmp_path):
    root = fake_sysfs(tmp_path)
    f = facts.device_facts(service_for("ncm", "3-2.4", 2500), root)
    assert f["driver"] == "usbnetd" and f["bus_info"] == "usb-0000:00:14.0-2.4"
    assert (f["vendor_id"], f["product_id"], f["firmware_version"]) == ("0bda", "8156", "30.00")
    assert f["product"] == "USB 10/100/1G/2.5G LAN?[31m", "device strings are sanitized"
    assert (f["ncm_version"], f["cdc_version"], f["protocol"]) == ("1.00", "1.10", "ncm")
    assert (f["usb_speed"], f["link_speed_mbps"], f["duplex"]) == ("SuperSpeed", 2500, "unknown")
    assert f["endpoints"] == {"in": "0x81", "out": "0x02", "interrupt": "0x83"}
    first, second = device_lines(f)
    assert first.startswith("device 0bda:8156 Realtek USB 10/100/1G/2.5G LAN?[31m, firmware (bcdDevice) 30.00")
    assert "bus-info usb-0000:00:14.0-2.4" in first
    assert "(ncm: NCM 1.00, CDC 1.10)" in second and second.endswith("duplex unknown")


def test_an_ecm_device_has_no_ncm_version(tmp_path):
    f = facts.device_facts(service_for("ecm", "sim:ecm", None), str(tmp_path))
    assert "ncm_version" not in f and f["cdc_version"] == "1.10" and f["link_speed_mbps"] is None


def test_rndis_reports_its_version_once_initialized():
    config, _ = parse_configuration(build_config_descriptor("ecm"))
    _, binding = choose([config], 1)
    d = RndisDriver(None, binding, Stats(), Options())  # type: ignore[arg-type]  # info() needs no transport
    assert "rndis_version" not in d.info()
    d.rndis_version = (1, 0)
    d.physical_medium = "802.3"
    info = d.info()
    assert info["rndis_version"] == "1.0" and info["physical_medium"] == "802.3" and info["protocol"] == "rndis"
