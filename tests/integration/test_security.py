"""Security of a running instance: who may use its control socket, and which capabilities it runs with.

Non-root peers are real processes: the test forks, the child drops to uid/gid nobody (and, for the group
tests, to a chosen primary gid and supplementary groups) with setgroups/setgid/setuid, and then connects, so
the kernel's own file-permission check and the credentials it records for SO_PEERCRED/SO_PEERGROUPS are what
the daemon sees. The child cannot exec the venv's python (it lives under /root, mode 0700), so it runs the
client code (control.request, and the CLI's main()) already loaded in the forked process.

The capability tests start `usbnetd run` through util-linux setpriv with the bounding, inheritable and
ambient sets cut to exactly what systemd/usbnetd@.service grants (read from the unit file) and
NoNewPrivileges, as root like the unit, and check /proc/<pid>/status before pinging through the instance.
Requests that are too long or malformed are covered by test_faults_native.py.
"""

from __future__ import annotations

import errno
import grp
import io
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

from usbnetd.app import cli, control

from .conftest import Usbnetd, wire_up

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "usbnetd@.service"
NOBODY = 65534


def wait(pred, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_group() -> tuple[str, int]:
    """A group that exists and that nobody (65534) is not in: `users` on Debian."""
    for g in sorted(grp.getgrall(), key=lambda g: (g.gr_name != "users", g.gr_gid)):
        if 0 < g.gr_gid < NOBODY and "nobody" not in g.gr_mem:
            return g.gr_name, g.gr_gid
    pytest.fail("no usable group in the group database")


test_group.__test__ = False  # a helper, not a test


@pytest.fixture
def run_dir():
    """A control-socket directory other users can traverse (pytest's tmp_path is under a 0700 directory)."""
    d = tempfile.mkdtemp(prefix="usbnetd-sec-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_user(fn, uid: int = NOBODY, gid: int = NOBODY, groups: tuple[int, ...] = ()):
    """Run fn() in a forked child with these credentials; return what it returned (JSON-able) or raise."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(r)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            assert os.getuid() == uid and os.geteuid() == uid and os.getegid() == gid
            out = {"value": fn()}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = {"exception": type(exc).__name__, "errno": getattr(exc, "errno", None), "text": str(exc)}
            code = 1
        try:
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    out = json.loads(data)
    if "exception" in out:
        raise AssertionError(f"as uid {uid}: {out['exception']} (errno {out['errno']}): {out['text']}")
    return out["value"]


def request_as(path: str, **creds) -> dict:
    """One status request from a child with these credentials: the reply, or {"connect_errno": N}."""

    def client():
        try:
            return control.request(path, "status", timeout=5)
        except OSError as exc:
            return {"connect_errno": exc.errno}

    return as_user(client, **creds)


def cli_as(run_dir: str, *args: str, **creds) -> dict:
    """`usbnetd ARGS` (the real main(), in the forked child) as another user: exit code, stdout, stderr."""

    def child():
        control.RUN_DIR = run_dir  # what USBNETD_RUN_DIR does at import; the child imported it already
        out, err = io.StringIO(), io.StringIO()
        sys.stdout, sys.stderr = out, err
        sys.argv = ["usbnetd", *args]
        code = 0
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return {"rc": code, "out": out.getvalue(), "err": err.getvalue()}

    return as_user(child, **creds)


def the_socket(run_dir: str) -> str:
    (path,) = [os.path.join(run_dir, f) for f in os.listdir(run_dir) if f.endswith(".sock")]
    return path


def assert_serves_root(u: Usbnetd, ifname: str) -> None:
    assert u.proc.poll() is None, u.output()
    (st,) = json.loads(u.cli("status", "--json").stdout)
    assert st["ifname"] == ifname and st["state"] == "running"


# ---------------------------------------------------------------------------------------------------------
# control socket, no group: root only


def test_non_root_peer_is_refused_and_root_is_still_served(netns_pair, run_dir):
    a, b = netns_pair
    u = Usbnetd(a, b, "sim:ncm", run_dir, ifname="usbs0", peer="sims0")
    try:
        path = the_socket(run_dir)
        assert os.stat(path).st_mode & 0o777 == 0o600
        # First gate, the file mode: nobody cannot even connect.
        assert request_as(path) == {"connect_errno": errno.EACCES}
        # Second gate, the credentials: with the file opened to everyone (a shared directory, a mode
        # mistake), the peer's uid from SO_PEERCRED still refuses it before a byte of the request is read.
        os.chmod(path, 0o666)
        assert request_as(path) == {"ok": False, "error": "permission denied"}
        # Even a root-group peer is refused: only uid 0 (or the daemon's own uid) counts, not gid 0.
        assert request_as(path, gid=0, groups=(0,)) == {"ok": False, "error": "permission denied"}
        r = cli_as(run_dir, "status")
        assert r["rc"] == 1 and r["out"] == "", r
        assert r["err"].count("\n") == 1 and r["err"].startswith("usbnetd: error: permission denied on "), r
        r = cli_as(run_dir, "detach", "usbs0")
        assert r["rc"] == 1 and "permission denied" in r["err"], r
        assert_serves_root(u, "usbs0")
    finally:
        assert u.stop() == 0, u.output()
    assert "Traceback" not in u.output()


# ---------------------------------------------------------------------------------------------------------
# control socket with a group


def test_control_group_members_are_served_and_others_refused(netns_pair, run_dir):
    a, b = netns_pair
    name, gid = test_group()
    u = Usbnetd(a, b, "sim:ecm", run_dir, ifname="usbg0", peer="simg0", extra=("--control-group", name))
    try:
        path = the_socket(run_dir)
        st = os.stat(path)
        assert (st.st_gid, st.st_mode & 0o777) == (gid, 0o660), "root with CAP_CHOWN gives it to the group"
        # a member through a supplementary group, and through its primary gid
        for creds in ({"groups": (gid,)}, {"gid": gid}):
            reply = request_as(path, **creds)
            assert reply.get("ok") is True and reply["status"]["ifname"] == "usbg0", (creds, reply)
        r = cli_as(run_dir, "status", "--json", groups=(gid,))
        assert r["rc"] == 0 and json.loads(r["out"])[0]["ifname"] == "usbg0", r
        # a non-member: the file mode stops it; opened to all, the credential check does
        assert request_as(path) == {"connect_errno": errno.EACCES}
        os.chmod(path, 0o666)
        assert request_as(path) == {"ok": False, "error": "permission denied"}
        assert request_as(path, groups=(gid + 1,)) == {"ok": False, "error": "permission denied"}
        assert_serves_root(u, "usbg0")
        # a member may detach: the instance stops cleanly and removes its interface
        r = cli_as(run_dir, "detach", "usbg0", groups=(gid,))
        assert r["rc"] == 0 and r["out"].startswith("detached "), r
        u.proc.wait(15)
        assert u.proc.returncode == 0 and not a.has_link("usbg0")
    finally:
        assert u.stop() == 0, u.output()
    assert "Traceback" not in u.output()


def test_control_group_from_the_configuration_file(netns_pair, run_dir, tmp_path, monkeypatch):
    a, b = netns_pair
    name, gid = test_group()
    (tmp_path / "usbnetd.toml").write_text(f'[control]\ngroup = "{name}"\n')
    monkeypatch.setenv("USBNETD_CONFIG_DIR", str(tmp_path))
    u = Usbnetd(a, b, "sim:ncm", run_dir, ifname="usbc0", peer="simc0")
    try:
        path = the_socket(run_dir)
        assert os.stat(path).st_gid == gid
        assert request_as(path, groups=(gid,))["ok"] is True
        assert request_as(path) == {"connect_errno": errno.EACCES}
    finally:
        assert u.stop() == 0, u.output()


@pytest.mark.parametrize("how,rc", [("option", 2), ("config", 1)])
def test_unknown_control_group_is_one_line_and_touches_nothing(netns_pair, run_dir, tmp_path, how, rc):
    a, _ = netns_pair
    env = dict(os.environ, USBNETD_RUN_DIR=run_dir, USBNETD_CONFIG_DIR=str(tmp_path))
    args = ["--control-group", "no-such-group-x"] if how == "option" else []
    if how == "config":
        (tmp_path / "usbnetd.toml").write_text('[control]\ngroup = "no-such-group-x"\n')
    r = a.run(sys.executable, "-m", "usbnetd", "run", "sim:ncm", "--ifname", "usbbad0", "--sim-peer", "simbad0",
              *args, env=env, check=False, timeout=60)
    assert r.returncode == rc, r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("usbnetd: error: "), r.stderr
    assert "no such group 'no-such-group-x'" in r.stderr and "Traceback" not in r.stderr
    if how == "config":
        assert "control.group" in r.stderr
    assert os.listdir(run_dir) == []
    assert a.run("ip", "-o", "link", "show").stdout.count("\n") == 1, "only lo: nothing was created"


def test_silent_clients_do_not_stall_the_instance(netns_pair, run_dir):
    """Clients are polled, not read with a blocking timeout: requests and traffic go on around them."""
    a, b = netns_pair
    u = Usbnetd(a, b, "sim:ncm", run_dir, ifname="usbq0", peer="simq0")
    silent = []
    try:
        _, peer_ip = wire_up(u, 71)
        wait(lambda: a.run("ping", "-c", "1", "-W", "1", peer_ip, check=False).returncode == 0, "first ping")
        path = the_socket(run_dir)
        for _ in range(control.MAX_CLIENTS - 1):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            silent.append(s)
        t = time.monotonic()
        assert control.request(path, "status")["ok"] is True
        assert time.monotonic() - t < 0.5, "a status request waited behind silent clients"
        p = a.run("ping", "-c", "5", "-i", "0.05", "-W", "1", peer_ip, check=False)
        assert p.returncode == 0, p.stdout
        rtt = [float(x) for x in re.findall(r"time=([0-9.]+) ms", p.stdout)]
        assert rtt and max(rtt) < 200, p.stdout
        # one more than the limit: refused at once, not queued
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        silent.append(s)
        extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        extra.settimeout(5)
        extra.connect(path)
        assert json.loads(extra.recv(4096))["error"].startswith("busy"), "over the limit"
        extra.close()
        # the silent ones are dropped after CLIENT_TIMEOUT with an error reply
        for s in silent:
            s.settimeout(5)
            reply = json.loads(s.recv(4096))
            assert reply == {"ok": False, "error": "bad request: timed out"}
        assert_serves_root(u, "usbq0")
    finally:
        for s in silent:
            s.close()
        assert u.stop() == 0, u.output()


# ---------------------------------------------------------------------------------------------------------
# capabilities: exactly the unit's


def unit_capabilities() -> tuple[list[str], list[str]]:
    """CapabilityBoundingSet= and AmbientCapabilities= of the shipped unit, as capability names."""
    bounding: list[str] = []
    ambient: list[str] = []
    for line in UNIT.read_text().splitlines():
        key, _, value = line.strip().partition("=")
        if key in ("CapabilityBoundingSet", "AmbientCapabilities"):
            assert not value.startswith("~"), "an inverted set: this parser does not handle it"
            (bounding if key == "CapabilityBoundingSet" else ambient).extend(value.split())
    assert bounding, f"no CapabilityBoundingSet= in {UNIT}"
    return bounding, ambient


def setpriv_args(bounding: list[str], ambient: list[str]) -> tuple[str, ...]:
    """setpriv arguments that leave root with exactly these sets, and NoNewPrivileges, as systemd does."""
    if shutil.which("setpriv") is None:
        pytest.fail("util-linux setpriv is missing")

    def caps(names: list[str]) -> str:
        return ",".join(["-all", *("+" + n.removeprefix("CAP_").lower() for n in names)])

    return ("setpriv", "--bounding-set", caps(bounding), "--inh-caps", caps(ambient), "--ambient-caps",
            caps(ambient), "--no-new-privs", "--")


CAP_BITS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21}


def proc_caps(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith("Cap"):
                out[key] = int(value, 16)
            elif key == "NoNewPrivs":
                out[key] = int(value)
    return out


def test_runs_and_moves_traffic_with_only_the_units_capabilities(netns_pair, run_dir):
    a, b = netns_pair
    bounding, ambient = unit_capabilities()
    mask = sum(1 << CAP_BITS[c] for c in bounding)
    name, gid = test_group()
    u = Usbnetd(a, b, "sim:ncm", run_dir, ifname="usbp0", peer="simp0", extra=("--control-group", name),
                wrapper=setpriv_args(bounding, ambient))
    try:
        caps = proc_caps(u.proc.pid)  # ip netns exec and setpriv exec in place: this is usbnetd's python
        assert caps["CapBnd"] == mask and caps["CapPrm"] == mask and caps["CapEff"] == mask, caps
        assert caps["CapAmb"] == sum(1 << CAP_BITS[c] for c in ambient) and caps["NoNewPrivs"] == 1, caps
        host_ip, peer_ip = wire_up(u, 70)
        wait(lambda: "LOWER_UP" in a.run("ip", "link", "show", "usbp0").stdout, "carrier")
        a.run("ping", "-c", "3", "-i", "0.2", "-W", "2", peer_ip, timeout=30)
        b.run("ping", "-c", "3", "-i", "0.2", "-W", "2", host_ip, timeout=30)
        big = a.run("ping", "-c", "2", "-s", "1472", "-M", "do", "-W", "2", peer_ip, check=False, timeout=30)
        assert big.returncode == 0, big.stdout
        # Without CAP_CHOWN the socket cannot be given to the group: it is 0666 and the credential check
        # alone decides, which is how it runs under the unit.
        path = the_socket(run_dir)
        assert os.stat(path).st_mode & 0o777 == 0o666
        assert request_as(path, groups=(gid,))["ok"] is True
        assert request_as(path) == {"ok": False, "error": "permission denied"}
        assert_serves_root(u, "usbp0")
    finally:
        assert u.stop() == 0, u.output()
    out = u.output()
    assert "teardown: every packet back in the pool" in out and "Traceback" not in out
    assert "Operation not permitted" not in out


def test_with_the_units_capabilities_and_the_group_as_a_supplementary_group(netns_pair, run_dir):
    """SupplementaryGroups=<group> in the unit: the daemon may give the socket to its own group, no CAP_CHOWN."""
    a, b = netns_pair
    bounding, ambient = unit_capabilities()
    name, gid = test_group()
    wrapper = setpriv_args(bounding, ambient)
    wrapper = (*wrapper[:-1], "--groups", str(gid), "--")
    u = Usbnetd(a, b, "sim:ecm", run_dir, ifname="usbt0", peer="simt0", extra=("--control-group", name),
                wrapper=wrapper)
    try:
        path = the_socket(run_dir)
        st = os.stat(path)
        assert (st.st_gid, st.st_mode & 0o777) == (gid, 0o660)
        assert request_as(path, groups=(gid,))["ok"] is True
        assert request_as(path) == {"connect_errno": errno.EACCES}
    finally:
        assert u.stop() == 0, u.output()


def test_without_cap_net_admin_it_fails_with_one_line(netns_pair, run_dir):
    a, _ = netns_pair
    bounding, _ = unit_capabilities()
    assert "CAP_NET_ADMIN" in bounding
    # root with every capability but CAP_NET_ADMIN (and so also none in the ambient set)
    wrapper = ("setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-all", "--ambient-caps", "-all",
               "--no-new-privs", "--")
    env = dict(os.environ, USBNETD_RUN_DIR=run_dir)
    r = a.run(*wrapper, sys.executable, "-m", "usbnetd", "run", "sim:ncm", "--ifname", "usbn9", "--sim-peer",
              "simn9", env=env, check=False, timeout=60)
    assert r.returncode == 1, r
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("usbnetd: error: missing capability CAP_NET_ADMIN"), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert os.listdir(run_dir) == []
    assert a.run("ip", "-o", "link", "show").stdout.count("\n") == 1, "only lo: nothing was created"

