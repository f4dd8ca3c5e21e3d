"""The control socket's group in the configuration and on the command line, and the capability check."""

from __future__ import annotations

import grp
import os

import pytest

from usbnetd.app import config
from usbnetd.app.cli import missing_capabilities
from usbnetd.app.control import resolve_group
from usbnetd.protocols.devices import ConfigError


def load(tmp_path, text: str) -> config.Settings:
    (tmp_path / "usbnetd.toml").write_text(text)
    return config.load(str(tmp_path))


def test_control_group_by_name(tmp_path):
    g = grp.getgrgid(os.getgid())
    s = load(tmp_path, f'[control]\ngroup = "{g.gr_name}"\n')
    assert (s.control_group, s.control_gid) == (g.gr_name, g.gr_gid)


def test_no_control_group_by_default(tmp_path):
    assert load(tmp_path, "").control_gid is None


@pytest.mark.parametrize("text,needle", [
    ('[control]\ngroup = "no-such-group-x"', "control.group: no such group 'no-such-group-x'"),
    ('[control]\ngroup = "bad\\u001b[2Jname"', "control.group: no such group 'bad?[2Jname'"),
    ("[control]\ngroup = 5", "control.group: must be a string"),
    ('[control]\ngroup = ""', "control.group: a group name must be a non-empty string"),
    ('[control]\nmode = "0666"', "control: unknown key 'mode'"),
    ("control = 1", "control: must be a table"),
])
def test_bad_control_group_is_one_line(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(str(tmp_path / "usbnetd.toml"))


def test_resolve_group():
    assert resolve_group("0") == 0 and resolve_group("12345") == 12345  # a gid needs no name
    with pytest.raises(ValueError):
        resolve_group("4294967295")  # (gid_t)-1 means "no change" to chown


@pytest.mark.parametrize("capeff,missing", [
    ("000001ffffffffff", []),
    ("0000000000001000", []),  # CAP_NET_ADMIN alone is enough
    ("000001ffffffefff", ["CAP_NET_ADMIN"]),  # everything else
    ("0000000000000000", ["CAP_NET_ADMIN"]),
])
def test_missing_capabilities(tmp_path, capeff, missing):
    status = tmp_path / "status"
    status.write_text(f"Name:\tpython3\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\n")
    assert missing_capabilities(str(status)) == missing


def test_missing_capabilities_unknown_when_proc_says_nothing(tmp_path):
    assert missing_capabilities(str(tmp_path / "absent")) == []
    (tmp_path / "status").write_text("Name:\tx\n")
    assert missing_capabilities(str(tmp_path / "status")) == []
