"""udev/*.rules: every line parses under udev's rules grammar (systemd 252 has no `udevadm verify`), and the
rules do what docs/operating.md says, evaluated here against the properties real devices carry.

`parse_rules` is a strict re-implementation of the grammar in udev(7) / systemd 252's udev-rules.c: comma-
separated `KEY[{attr}] OP "value"` pairs, the operators each key accepts, the keys that need or refuse an
{attribute}, the `$name`/`%c` substitutions, IMPORT builtins and that every GOTO has its LABEL. The same
parse feeds `evaluate`, a small model of udevd's rule processing (match, assign, GOTO/LABEL; first-match
semantics of `=` versus `+=`), used to check the opt-in policy. The real udevd runs the rules in the VM
bench (tests/vm/guest/test_udev_systemd.py).
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from usbnetd.protocols.devices import BUILTIN

REPO = Path(__file__).resolve().parents[2]
# udev/ and what contrib/ ships for udev (contrib/NetworkManager/75-usbnetd-nm.rules)
RULES = sorted((REPO / "udev").glob("*.rules")) + sorted((REPO / "contrib").rglob("*.rules"))
MAIN_RULES = REPO / "udev" / "70-usbnetd.rules"

MATCH = {"==", "!="}
ASSIGN = {"=", "+=", "-=", ":="}
# key -> (operators allowed, attribute: "required" | "optional" | "forbidden")
KEYS: dict[str, tuple[set[str], str]] = {
    "ACTION": (MATCH, "forbidden"), "DEVPATH": (MATCH, "forbidden"), "KERNEL": (MATCH, "forbidden"),
    "KERNELS": (MATCH, "forbidden"), "SUBSYSTEM": (MATCH, "forbidden"), "SUBSYSTEMS": (MATCH, "forbidden"),
    "DRIVER": (MATCH, "forbidden"), "DRIVERS": (MATCH, "forbidden"), "TAGS": (MATCH, "forbidden"),
    "RESULT": (MATCH, "forbidden"), "CONST": (MATCH, "required"), "ATTRS": (MATCH, "required"),
    "TEST": (MATCH, "optional"), "PROGRAM": (MATCH | {"="}, "forbidden"), "IMPORT": (MATCH | {"="}, "required"),
    "NAME": (MATCH | {"=", ":="}, "forbidden"), "SYMLINK": (MATCH | ASSIGN, "forbidden"),
    "ATTR": (MATCH | {"=", ":="}, "required"), "SYSCTL": (MATCH | {"=", ":="}, "required"),
    "ENV": (MATCH | ASSIGN, "required"), "TAG": (MATCH | ASSIGN, "forbidden"),
    "OWNER": ({"=", ":="}, "forbidden"), "GROUP": ({"=", ":="}, "forbidden"), "MODE": ({"=", ":="}, "forbidden"),
    "SECLABEL": ({"=", "+=", ":="}, "required"), "RUN": ({"=", "+=", ":="}, "optional"),
    "OPTIONS": ({"=", "+=", ":="}, "forbidden"), "LABEL": ({"="}, "forbidden"), "GOTO": ({"="}, "forbidden"),
}
IMPORT_TYPES = {"program", "builtin", "file", "db", "cmdline", "parent"}
BUILTINS = {"blkid", "btrfs", "hwdb", "input_id", "keyboard", "kmod", "net_id", "net_setup_link", "path_id",
            "uaccess", "usb_id"}
SUBST_LONG = {"devnode", "tempnode", "attr", "sysfs", "env", "kernel", "number", "driver", "devpath", "id",
              "major", "minor", "result", "parent", "name", "links", "root", "sys"}
SUBST_SHORT = set("NnkpbsEMmcPrSD")
TOKEN = re.compile(r'\s*([A-Z_]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|-=|:=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


class RuleError(Exception):
    pass


@dataclass(frozen=True)
class Token:
    key: str
    attr: str | None
    op: str
    value: str


def _check_substitutions(value: str, where: str) -> None:
    i = 0
    while i < len(value):
        c = value[i]
        if c == "$":
            if value[i + 1:i + 2] == "$":
                i += 2
                continue
            m = re.match(r"\$([a-z]+)(\{[^}]*\})?", value[i:])
            if not m or m.group(1) not in SUBST_LONG:
                raise RuleError(f"{where}: unknown substitution {value[i:i + 12]!r}")
            i += m.end()
        elif c == "%":
            nxt = value[i + 1:i + 2]
            if nxt == "%":
                i += 2
                continue
            if nxt not in SUBST_SHORT:
                raise RuleError(f"{where}: unknown substitution %{nxt}")
            i += 2
        else:
            i += 1


def parse_rules(text: str, name: str = "rules") -> list[list[Token]]:
    """Every rule of `text` as its tokens; RuleError on anything udevd would reject or misread."""
    rules: list[list[Token]] = []
    labels: set[str] = set()
    gotos: list[tuple[str, str]] = []
    lines = text.split("\n")
    n = 0
    while n < len(lines):
        lineno, line = n + 1, lines[n]
        while line.endswith("\\") and n + 1 < len(lines):  # continuation
            n += 1
            line = line[:-1] + lines[n]
        n += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{name}:{lineno}"
        tokens: list[Token] = []
        pos = 0
        while pos < len(stripped):
            m = TOKEN.match(stripped, pos)
            if not m:
                raise RuleError(f"{where}: cannot parse at {stripped[pos:pos + 30]!r}")
            key, attr, op, value, sep = m.groups()
            if key not in KEYS:
                raise RuleError(f"{where}: unknown key {key}")
            ops, attr_rule = KEYS[key]
            if op not in ops:
                raise RuleError(f"{where}: operator {op} not allowed for {key}")
            if attr_rule == "required" and not attr:
                raise RuleError(f"{where}: {key} needs an {{attribute}}")
            if attr_rule == "forbidden" and attr is not None:
                raise RuleError(f"{where}: {key} takes no {{attribute}}")
            if key == "IMPORT":
                if attr not in IMPORT_TYPES:
                    raise RuleError(f"{where}: unknown IMPORT type {attr}")
                if attr == "builtin" and value.split()[0] not in BUILTINS:
                    raise RuleError(f"{where}: unknown builtin {value}")
            if key == "LABEL":
                labels.add(value)
            if key == "GOTO":
                gotos.append((value, where))
            _check_substitutions(value, where)
            tokens.append(Token(key, attr, op, value))
            pos = m.end()
            if sep == "" and pos < len(stripped):
                raise RuleError(f"{where}: missing comma")
        if stripped.rstrip().endswith(","):
            raise RuleError(f"{where}: trailing comma")
        if not any(t.op not in MATCH or t.key in ("IMPORT", "PROGRAM") for t in tokens):
            raise RuleError(f"{where}: a rule with only matches does nothing")
        rules.append(tokens)
    for target, where in gotos:
        if target not in labels:
            raise RuleError(f"{where}: GOTO {target!r} has no LABEL")
    return rules


# ---------------------------------------------------------------- a model of udevd running the rules

def _matches(pattern: str, value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in pattern.split("|"))


def evaluate(rules: list[list[Token]], action: str, env: dict[str, str], attrs: dict[str, str],
             kernel: str) -> tuple[dict[str, str], set[str]]:
    """(properties, tags) after the rules ran on one event of a device with `env` and sysfs `attrs`."""
    env = dict(env)
    tags: set[str] = set()

    def subst(v: str) -> str:
        v = v.replace("$kernel", kernel).replace("%k", kernel)
        return re.sub(r"\$attr\{([^}]*)\}", lambda m: attrs.get(m.group(1), ""), v)

    i = 0
    while i < len(rules):
        rule, goto = rules[i], None
        i += 1
        ok = True
        for t in rule:
            if t.op in MATCH:
                actual = {"ACTION": action, "SUBSYSTEM": env.get("SUBSYSTEM", "")}.get(t.key)
                if t.key == "ENV":
                    actual = env.get(t.attr, "")
                elif t.key in ("ATTR", "ATTRS"):
                    actual = attrs.get(t.attr, "")
                elif t.key == "IMPORT":
                    continue  # the tests give the builtin's result (ID_USB_INTERFACES) as input
                if actual is None:
                    raise AssertionError(f"model does not know match key {t.key}")
                if _matches(t.value, actual) != (t.op == "=="):
                    ok = False
                    break
        if not ok:
            continue
        for t in rule:
            if t.key == "IMPORT" and t.op == "=":
                continue
            if t.op in MATCH:
                continue
            if t.key == "GOTO":
                goto = t.value
            elif t.key == "TAG":
                tags.add(subst(t.value))
            elif t.key == "ENV":
                v = subst(t.value)
                env[t.attr] = f"{env[t.attr]} {v}" if t.op == "+=" and env.get(t.attr) else v
            elif t.key != "LABEL":
                raise AssertionError(f"model does not know assignment {t.key}")
        if goto is not None:
            i = next(j for j, r in enumerate(rules) if any(t.key == "LABEL" and t.value == goto for t in r))
    return env, tags


# ---------------------------------------------------------------- tests

def test_rules_files_exist():
    assert MAIN_RULES in RULES


@pytest.mark.parametrize("path", RULES, ids=lambda p: p.name)
def test_every_rule_parses(path):
    rules = parse_rules(path.read_text(), path.name)
    assert len(rules) >= 5


BROKEN = {
    "unknown key": 'SUBSYTEM=="usb", GOTO="x"\nLABEL="x"',
    "match-only key assigned": 'ACTION="add", TAG+="systemd"',
    "assign-only key matched": 'SUBSYSTEM=="usb", LABEL=="x"',
    "missing attribute": 'ENV=="1", TAG+="systemd"',
    "unquoted value": 'SUBSYSTEM==usb, TAG+="systemd"',
    "unknown operator": 'SUBSYSTEM=~"usb", TAG+="systemd"',
    "missing comma": 'SUBSYSTEM=="usb" TAG+="systemd"',
    "trailing comma": 'SUBSYSTEM=="usb", TAG+="systemd",',
    "goto without label": 'SUBSYSTEM!="usb", GOTO="nowhere"',
    "unknown builtin": 'IMPORT{builtin}="usb_idd"',
    "unknown substitution": 'SUBSYSTEM=="usb", ENV{SYSTEMD_WANTS}+="usbnetd@$kernal.service"',
    "bad percent substitution": 'SUBSYSTEM=="usb", ENV{X}="%q"',
    "matches only": 'SUBSYSTEM=="usb", ACTION=="add"',
}


@pytest.mark.parametrize("text", BROKEN.values(), ids=BROKEN.keys())
def test_the_parser_rejects_what_udevd_would(text):
    with pytest.raises(RuleError):
        parse_rules(text)


def test_a_broken_copy_of_the_real_file_is_rejected():
    text = MAIN_RULES.read_text()
    with pytest.raises(RuleError):
        parse_rules(text.replace('TAG+="systemd"', 'TAGS+="systemd"'))
    with pytest.raises(RuleError):
        parse_rules(text.replace('LABEL="usbnetd_end"', 'LABEL="usbnetd_done"'))


def test_the_parser_is_not_stricter_than_udevd():
    """udevd itself parses our file in the VM bench (systemd 252 has no `udevadm verify`, and `udevadm test`
    needs a device). Here: every rules file the udev package ships parses too, so a rejection of ours means
    something."""
    files = sorted(Path("/usr/lib/udev/rules.d").glob("*.rules"))
    assert len(files) >= 20, "the udev package is missing (scripts/test.sh installs it)"
    for path in files:
        text = path.read_text(errors="replace")
        if re.search(r'(=|,)\s*e"', text) or re.search(r"[A-Z_]+\{[^}]*\}-=", text):
            continue  # e"…" strings and ENV{}-=: newer grammar our rules do not use (none in Debian 12)
        parse_rules(text, path.name)


# Interface triples as udev's usb_id builtin writes them, for the bench's devices (seen in the VM) and others.
NCM_GADGET = ":020d00:0a0001:"
ECM_GADGET = ":020600:0a0000:"
USBNET = ":020600:0a0000:0202ff:"  # QEMU usb-net: ECM in configuration 1, RNDIS in configuration 2
MASS_STORAGE = ":080650:"
VENDOR = ":ff0000:"
USB_DEVICE = {"SUBSYSTEM": "usb", "DEVTYPE": "usb_device"}
ATTRS = {"busnum": "3", "devpath": "2.4", "idVendor": "1d6b", "idProduct": "0104"}
KERNEL = "3-2.4"


def run_rules(policy: str | None, interfaces: str, action: str = "add", attrs: dict | None = None,
              devtype: str = "usb_device") -> tuple[dict[str, str], set[str]]:
    env = {**USB_DEVICE, "DEVTYPE": devtype, "ID_USB_INTERFACES": interfaces}
    if policy is not None:
        env["USBNETD"] = policy
    return evaluate(parse_rules(MAIN_RULES.read_text()), action, env, attrs or ATTRS, KERNEL)


def test_opt_in_nothing_is_started_by_default():
    for interfaces in (NCM_GADGET, ECM_GADGET, USBNET):
        env, tags = run_rules(None, interfaces)
        assert "SYSTEMD_WANTS" not in env
        # ...but the device unit exists, so `usbnetd attach` can start the instance through systemd.
        assert "systemd" in tags and env["SYSTEMD_ALIAS"] == "/sys/subsystem/usbnetd/3/2.4"


@pytest.mark.parametrize("interfaces", [NCM_GADGET, ECM_GADGET, USBNET, ":020c07:", ":e00103:0a0000:",
                                        ":ef0401:0a0000:", ":ef0101:0a0000:", ":020a00:"])
def test_class_policy_starts_every_network_function(interfaces):
    env, tags = run_rules("class", interfaces)
    assert env["SYSTEMD_WANTS"] == "usbnetd@3-2.4.service" and "systemd" in tags


@pytest.mark.parametrize("interfaces", [MASS_STORAGE, VENDOR, ":020200:0a0000:", ":0a0000:"])
def test_class_policy_leaves_other_devices_alone(interfaces):
    env, tags = run_rules("class", interfaces)
    assert "SYSTEMD_WANTS" not in env and not tags


def test_explicit_opt_in_takes_a_vendor_class_device_and_opt_out_wins():
    env, tags = run_rules("1", VENDOR)
    assert env["SYSTEMD_WANTS"] == "usbnetd@3-2.4.service" and "systemd" in tags
    env, _ = run_rules("0", NCM_GADGET)
    assert "SYSTEMD_WANTS" not in env


def test_device_table_entries_are_candidates():
    for entry in BUILTIN:
        attrs = {**ATTRS, "idVendor": f"{entry.vendor:04x}", "idProduct": f"{entry.product:04x}"}
        env, tags = run_rules(None, VENDOR, attrs=attrs)
        assert "systemd" in tags, f"{entry.vendor:04x}:{entry.product:04x} from the built-in table is not in the rules"
        assert env["USBNETD_CANDIDATE"] == "table"


def test_not_only_on_add_and_never_on_remove_or_for_interfaces():
    env, tags = run_rules("class", NCM_GADGET, action="bind")
    assert "systemd" in tags, "the bind event after add must keep the systemd tag (else the device unit goes)"
    env, tags = run_rules("class", NCM_GADGET, action="remove")
    assert not tags and "SYSTEMD_WANTS" not in env
    env, tags = run_rules("class", NCM_GADGET, devtype="usb_interface")
    assert not tags and "SYSTEMD_WANTS" not in env


@pytest.mark.parametrize("busid,busnum,devpath",
                         [("3-1", "3", "1"), ("3-2.4", "3", "2.4"), ("10-1.1.2", "10", "1.1.2")])
def test_the_alias_names_the_device_unit_the_service_binds_to(busid, busnum, devpath):
    """The unit's BindsTo=sys-subsystem-usbnetd-%i.device, with %i the bus id, is the unit systemd makes from
    the rule's SYSTEMD_ALIAS (systemd-escape --path is how systemd turns the alias into a unit name)."""
    unit = (REPO / "systemd" / "usbnetd@.service").read_text()
    binds = re.search(r"^BindsTo=(\S+)$", unit, re.M).group(1).replace("%i", busid)
    env, _ = evaluate(parse_rules(MAIN_RULES.read_text()), "add",
                      {**USB_DEVICE, "ID_USB_INTERFACES": NCM_GADGET, "USBNETD": "class"},
                      {**ATTRS, "busnum": busnum, "devpath": devpath}, busid)
    alias = env["SYSTEMD_ALIAS"]
    escaped = subprocess.run(["systemd-escape", "--path", "--suffix=device", alias], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert escaped == binds
    assert env["SYSTEMD_WANTS"] == f"usbnetd@{busid}.service"
