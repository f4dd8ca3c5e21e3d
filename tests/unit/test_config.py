"""Configuration files: values, precedence, and every bad value named with file, key and reason."""

from __future__ import annotations

import pytest

from usbnetd.app.config import load
from usbnetd.protocols.devices import ConfigError


def write(d, text: str, name: str = "usbnetd.toml"):
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_defaults_without_files(tmp_path):
    s = load(str(tmp_path))
    assert (s.ifname_template, s.persistent, s.mtu, s.files) == ("enx{mac}", False, None, ())
    assert s.ifname_for(bytes.fromhex("020011223344"), "3-1", None, "ncm") == "enx020011223344"
    assert (s.gro, s.tso, s.busy_poll_us) == (True, True, 0)
    write(tmp_path, "[queues]\ntso = false\nbusy_poll_us = 50\n")
    assert (load(str(tmp_path)).tso, load(str(tmp_path)).busy_poll_us) == (False, 50)


def test_values_and_conf_d_overrides(tmp_path):
    write(tmp_path, '[interface]\nname = "usb{busid}"\npersistent = true\nmtu = 1400\n'
                    '[queues]\nrx_transfers = 8\n[ncm]\nrx_ntb_size = 16384\nntb32 = true\n'
                    '[[device]]\nid = "0525:a4a1"\nifname = "lab0"\nmtu = 1300\nauto_attach = true\n')
    write(tmp_path, '[interface]\nmtu = 1450\n[[device]]\nbusid = "3-2.4"\nmac = "02:00:00:00:00:09"\n',
          "conf.d/50-more.toml")
    s = load(str(tmp_path))
    assert (s.ifname_template, s.persistent, s.mtu, s.rx_transfers, s.rx_ntb_size, s.ntb32) == (
        "usb{busid}", True, 1450, 8, 16384, True)
    assert s.ifname_for(b"\x02" * 6, "3-2.4", None, "ecm") == "usb3_2_4"
    e = s.device(0x0525, 0xA4A1, "1-1", None)
    assert (e.ifname, e.mtu, e.auto_attach) == ("lab0", 1300, True)
    e = s.device(0x1234, 0x5678, "3-2.4", None)
    assert e.mac == bytes.fromhex("020000000009")
    assert s.device(0x1234, 0x5678, "3-2.5", None) is None
    assert len(s.files) == 2


def test_serial_narrows_a_device_entry(tmp_path):
    write(tmp_path, '[[device]]\nid = "0525:a4a1"\nserial = "A"\nifname = "a0"\n'
                    '[[device]]\nid = "0525:a4a1"\nserial = "B"\nifname = "b0"\n')
    s = load(str(tmp_path))
    assert s.device(0x0525, 0xA4A1, "1-1", "B").ifname == "b0"
    assert s.device(0x0525, 0xA4A1, "1-1", "C") is None


def test_template_too_long_is_refused_when_filled(tmp_path):
    write(tmp_path, '[interface]\nname = "usbnetd-{mac}"\n')
    s = load(str(tmp_path))
    with pytest.raises(ConfigError, match="interface.name: the template .* longer than 15"):
        s.ifname_for(b"\x02" * 6, "1-1", None, "ncm")


@pytest.mark.parametrize("text,needle", [
    ('[interface]\nname = "enx{nope}"\n', "interface.name: bad template"),
    ('[interface]\nmtu = 20\n', "interface.mtu: 20 is not in 68..16000"),
    ('[interface]\npersistent = "yes"\n', "interface.persistent: must be a bool"),
    ('[interface]\ncolour = 1\n', "interface: unknown key 'colour'"),
    ('[queues]\nrx_transfers = 1000\n', "queues.rx_transfers: 1000 is not in 0..256"),
    ('[queues]\ntso = "yes"\n', "queues.tso: must be a bool"),
    ('[queues]\nbusy_poll_us = -1\n', "queues.busy_poll_us: -1 is not in 0..1000000"),
    ('[queues]\nbusy_poll_us = 2000000\n', "queues.busy_poll_us: 2000000 is not in 0..1000000"),
    ('[ncm]\nrx_ntb_size = 100\n', "ncm.rx_ntb_size: 100 is not in"),
    ('[wifi]\n', "unknown section 'wifi'"),
    ('[[device]]\nprotocol = "ncm"\n', "device[0].id: each device needs"),
    ('[[device]]\nbusid = "0-1"\n', "device[0].busid: '0-1' is not a bus id"),
    ('[[device]]\nid = "0525:a4a1"\nifname = "way-too-long-name0"\n', "device[0].ifname: interface name"),
    ('[[device]]\nid = "0525:a4a1"\nmac = "01:00:5e:00:00:01"\n', "device[0].mac: 01:00:5e:00:00:01 is a multicast"),
    ('[[device]]\nid = "0525:a4a1"\nmtu = 99999\n', "device[0].mtu: 99999 is not in"),
    ('[[device]]\nid = "0525:a4a1"\nauto_attach = 1\n', "device[0].auto_attach: must be a bool"),
])
def test_bad_values_name_file_key_and_reason(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load(str(tmp_path))
    assert str(exc.value).startswith(f"{path}: ")
    assert needle in str(exc.value)
