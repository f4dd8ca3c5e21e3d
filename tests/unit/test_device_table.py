"""The device table: built-in entries, [[device]] entries from config files, errors naming file and key."""

from __future__ import annotations

import pytest

from usbnetd.app.config import load_table
from usbnetd.protocols.devices import ConfigError
from usbnetd.protocols.driver import Quirk


def write(tmp_path, text: str, name: str = "usbnetd.toml"):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_builtin_only_without_files(tmp_path):
    table = load_table(str(tmp_path))
    assert (0x0BDA, 0x8156) in table


def test_entries_from_main_file_and_conf_d_override_in_order(tmp_path):
    write(tmp_path, '[[device]]\nid = "1234:abcd"\nprotocol = "ecm"\nconfiguration = 2\n')
    write(tmp_path, '[[device]]\nid = "1234:ABCD"\nprotocol = "subset"\nquirks = ["no-packet-filter"]\n'
          'note = "vendor-class geth"\n', "conf.d/10-lab.toml")
    e = load_table(str(tmp_path))[(0x1234, 0xABCD)]
    assert (e.protocol, e.configuration, e.quirks, e.note) == ("subset", None, Quirk.NO_PACKET_FILTER,
                                                               "vendor-class geth")


@pytest.mark.parametrize("text,needle", [
    ('[[device]]\nid = "12:34"\n', "device[0].id: must be \"VID:PID\""),
    ('[[device]]\nid = "1234:abcd"\nprotocol = "wifi"\n', "device[0].protocol: 'wifi' is not one of"),
    ('[[device]]\nid = "1234:abcd"\nconfiguration = 0\n', "device[0].configuration: 0 is not in 1..255"),
    ('[[device]]\nid = "1234:abcd"\nquirks = ["fast"]\n', "device[0].quirks: unknown quirk 'fast'"),
    ('[[device]]\nid = "1234:abcd"\nquirks = ["ignore-repeated-link"]\n',
     "device[0].quirks: quirk 'ignore-repeated-link' is gone: acting only on link changes"),
    ('[[device]]\nid = "1234:abcd"\ncolour = 1\n', "device[0]: unknown key 'colour'"),
    ('device = 3\n', "device: must be an array of tables"),
    ('[[device]\n', "not valid TOML"),
])
def test_bad_entries_name_file_key_and_reason(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_table(str(tmp_path))
    assert str(exc.value).startswith(str(path))
    assert needle in str(exc.value)
