"""NetworkManager brings a usbnetd interface up as it would an Ethernet device (contrib/NetworkManager).

For real in the guest: udevd with udev/70-usbnetd.rules and contrib/NetworkManager/75-usbnetd-nm.rules (its
helper at this checkout's path), the D-Bus system bus, and the real NetworkManager with
contrib/NetworkManager/conf.d/90-usbnetd.conf, already running when the adapter is plugged, as on a desktop.
dnsmasq on the device side hands out DHCPv4 and sends router advertisements.

(1) plug: bind an NCM gadget; (2) udev asks for usbnetd@<busid>.service, and the test runs what the unit
runs (as test_udev_systemd.py does); (3) NetworkManager activates the interface with the profile the udev
helper wrote; (4) the interface gets an address by DHCP (and one by SLAAC); (5) pings cross. `nmcli device`
shows it connected, described by the adapter's vendor and model. NetworkManager must not take the TAP over
(same MAC, usbnetd still holds it), and after the unplug it must not create the interface again.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import bench, pnp
from .test_udev_systemd import REPO, START_TIMEOUT, UDEV_ENV, UNIT, NotifySocket, opt_in, stop, udevd, wait_processed

pytestmark = pytest.mark.vm
_fixtures = (udevd,)  # pytest finds the imported fixture by name in this module

NM = "/usr/sbin/NetworkManager"
CONTRIB = REPO / "contrib" / "NetworkManager"
HELPER_INSTALLED = "/usr/local/libexec/usbnetd-nm-profile"  # where the shipped rule expects the helper
BASE = Path("/run/nm-usbnetd-test")
RUNTIME_PROFILES = Path("/run/NetworkManager/system-connections")
SUBNET = 86
ACTIVATE_TIMEOUT = 180  # NetworkManager, DHCP and RA under TCG; an upper bound, not an expectation

# The test's own NetworkManager.conf: no resolv.conf, hostname or polkit business in the guest, no default
# profiles for the bench's other interfaces, profiles only from /run. Keeping NetworkManager off every
# interface but enx* keeps it away from the bench's other links; it changes nothing for usbnetd's.
NM_CONF = f"""\
[main]
plugins=keyfile
dns=none
rc-manager=unmanaged
hostname-mode=none
auth-polkit=false
no-auto-default=*

[keyfile]
path={BASE}/system-connections
unmanaged-devices=except:interface-name:enx*

[connectivity]
enabled=false

[logging]
level=INFO
"""


def nmcli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["nmcli", *args], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, LC_ALL="C", COLUMNS="200"))
    if check and r.returncode != 0:
        raise bench.BenchError(f"nmcli {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


def device_row(ifname: str) -> list[str] | None:
    r = nmcli("-t", "-f", "DEVICE,TYPE,STATE,CONNECTION", "device", check=False)
    for line in r.stdout.splitlines():
        fields = re.split(r"(?<!\\):", line)
        if fields[0] == ifname:
            return fields
    return None


def show(ifname: str) -> dict[str, list[str]]:
    """`nmcli -t device show IFNAME` as {field: [values]} (IP4.ADDRESS[1], [2] ... gathered under IP4.ADDRESS)."""
    out: dict[str, list[str]] = {}
    for line in nmcli("-t", "-f", "GENERAL,IP4,IP6", "device", "show", ifname).stdout.splitlines():
        key, _, value = line.partition(":")
        out.setdefault(re.sub(r"\[\d+\]$", "", key), []).append(value.replace("\\:", ":"))
    return out


@pytest.fixture
def system_bus() -> Iterator[pnp.SystemBus]:
    bus = pnp.SystemBus().start()
    yield bus
    bus.stop()


@pytest.fixture
def nm_rule(udevd: Path) -> Path:
    """The shipped udev rule for NetworkManager, with its helper where this checkout has it."""
    rule = (CONTRIB / "75-usbnetd-nm.rules").read_text()
    assert HELPER_INSTALLED in rule
    (udevd / "75-usbnetd-nm.rules").write_text(rule.replace(HELPER_INSTALLED, str(CONTRIB / "usbnetd-nm-profile")))
    subprocess.run(["udevadm", "control", "--reload"], env=UDEV_ENV, check=True, capture_output=True)
    return udevd  # the udevd fixture removes every *usbnetd*.rules it leaves behind


@pytest.fixture(params=["with-conf"])
def networkmanager(request, udevd: Path, system_bus: pnp.SystemBus) -> Iterator[subprocess.Popen]:
    """The host's NetworkManager in the guest, with the shipped conf.d snippet (param "without-conf": none)."""
    pnp.require(NM, "nmcli", "/usr/bin/timeout")
    shutil.rmtree(BASE, ignore_errors=True)
    for d in ("conf.d", "system-conf.d", "system-connections"):
        (BASE / d).mkdir(parents=True)
    (BASE / "NetworkManager.conf").write_text(NM_CONF)
    if request.param == "with-conf":
        shutil.copy(CONTRIB / "conf.d" / "90-usbnetd.conf", BASE / "conf.d")
    state = pnp.Writable("/var/lib/NetworkManager").make()  # leases, secret_key, timestamps
    log_path = pnp.log_file("NetworkManager.log")
    argv = [NM, "--debug", f"--config={BASE}/NetworkManager.conf", f"--config-dir={BASE}/conf.d",
            f"--system-config-dir={BASE}/system-conf.d", f"--state-file={BASE}/NetworkManager.state",
            f"--intern-config={BASE}/NetworkManager-intern.conf"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        bench.wait_for(lambda: proc.poll() is not None or "running" in nmcli("-t", "-f", "RUNNING", "general",
                                                                              check=False).stdout,
                       90, "NetworkManager to answer")
        assert proc.poll() is None, f"NetworkManager exited {proc.returncode}: {log_path.read_text()[-3000:]}"
        print(nmcli("--version").stdout.strip(), "running with", argv)
        yield proc
    finally:
        pnp.terminate(proc, timeout=30)
        state.undo()
        shutil.rmtree(BASE, ignore_errors=True)
        for f in RUNTIME_PROFILES.glob("usbnetd-*.nmconnection"):
            f.unlink()
        lines = log_path.read_text().splitlines()
        keep = [ln for ln in lines if "enx" in ln or "usbnetd" in ln or "<warn>" in ln or "<error>" in ln]
        print("NetworkManager log, lines about the interface (last 150):\n" + "\n".join(keep[-150:]))


def plug_and_start(gadgets, peers, udevd: Path, tmp_path: Path, subnet: int):
    """(1) plug an opted-in NCM gadget, with dnsmasq on its side; (2) run what udev asked systemd to start."""
    ncm = gadgets("ncm")
    opt_in(udevd, f'SUBSYSTEM=="usb", ENV{{DEVTYPE}}=="usb_device", ATTR{{serial}}=="{ncm.serial}", '
                  'ENV{USBNETD}="1"')
    busid = ncm.bind()
    props = wait_processed(busid)
    assert props.get("SYSTEMD_WANTS") == f"usbnetd@{busid}.service", props
    peer = peers(subnet)
    peer.take(ncm.gadget_netdev)
    dnsmasq = pnp.Dnsmasq(peer).start()
    notify = NotifySocket(str(tmp_path / "notify"))
    log_path = tmp_path / "usbnetd.log"
    proc = pnp.start_unit_instance(busid, notify.path, log_path, UNIT)
    return ncm, busid, peer, dnsmasq, notify, log_path, proc


def test_networkmanager_leaves_a_tap_unmanaged_without_the_rule(gadgets, peers, udevd, networkmanager, tmp_path):
    """The control experiment: NetworkManager by default does not manage a TAP it did not create, so without
    75-usbnetd-nm.rules the interface gets no DHCP address (what the rule and its helper are for)."""
    ncm, busid, peer, dnsmasq, notify, log_path, proc = plug_and_start(gadgets, peers, udevd, tmp_path, SUBNET + 1)
    ifname = f"enx{ncm.host_mac.replace(':', '')}"
    try:
        notify.wait_for("READY", START_TIMEOUT, proc)
        bench.wait_for(lambda: device_row(ifname), 60, f"NetworkManager to see {ifname}", interval=1)
        time.sleep(20)  # long enough for DHCP, had NetworkManager started it
        print(nmcli("device").stdout)
        row = device_row(ifname)
        # Unmanaged, or, once the kernel's own SLAAC gave the TAP a global IPv6 address from the router
        # advertisements, "connected (externally)": NetworkManager only mirrors what it finds, starts no DHCP.
        assert row is not None and row[1] == "tun" and row[2] in ("unmanaged", "connected (externally)"), row
        addrs = bench.run("ip", "-4", "addr", "show", "dev", ifname).stdout
        assert "inet " not in addrs, addrs
        assert not list(RUNTIME_PROFILES.glob("usbnetd-*")), "a profile appeared without the rule"
    finally:
        stop(proc)
        notify.close()
        dnsmasq.stop()


def test_networkmanager_activates_a_usbnetd_interface_by_dhcp(gadgets, peers, udevd, nm_rule, networkmanager,
                                                              tmp_path):
    # (1) plug, (2) what systemd starts for it
    ncm, busid, peer, dnsmasq, notify, log_path, proc = plug_and_start(gadgets, peers, udevd, tmp_path, SUBNET)
    ifname = f"enx{ncm.host_mac.replace(':', '')}"
    profile = RUNTIME_PROFILES / f"usbnetd-{ifname}.nmconnection"
    try:
        notify.wait_for("READY", START_TIMEOUT, proc)

        # (3) NetworkManager activates it with the profile the udev helper wrote.
        def connected() -> list[str] | None:
            row = device_row(ifname)
            return row if row and row[2] == "connected" else None

        try:
            row = bench.wait_for(connected, ACTIVATE_TIMEOUT, f"NetworkManager to connect {ifname}", interval=1)
        finally:
            print(nmcli("device").stdout)
            print(nmcli("connection").stdout)
            print(profile.read_text() if profile.exists() else f"{profile}: missing")
            print("dnsmasq:\n" + dnsmasq.output())
        assert row == [ifname, "tun", "connected", f"usbnetd {busid}"], row
        overview = nmcli().stdout  # each device with its description, as nmcli(1) prints it with no arguments
        print(overview)
        # The description is the adapter's, as for a kernel USB NIC: vendor and model from the hwdb (udev).
        assert re.search(rf'^{ifname}: connected to usbnetd {re.escape(busid)}\n\t"Linux Foundation [^"\n]*Gadget"\n'
                         r"\ttun, 02:00:18:01:00:01, sw, mtu 1500$", overview, re.M), overview

        # (4) addresses by DHCP and SLAAC, the routes and DNS servers that came with them
        info = show(ifname)
        print(nmcli("device", "show", ifname).stdout)
        v4 = [ipaddress.ip_interface(a) for a in info.get("IP4.ADDRESS", [])]
        v6 = [ipaddress.ip_interface(a) for a in info.get("IP6.ADDRESS", [])]
        assert any(a.network == ipaddress.ip_network(f"198.18.{SUBNET}.0/24") and int(a.ip) & 0xFF >= 100
                   for a in v4), info
        assert any(a.network == ipaddress.ip_network(f"{dnsmasq.prefix6}/64") for a in v6), info
        assert info.get("IP4.GATEWAY") == [peer.peer_addr], info
        assert info.get("IP4.DNS") == [dnsmasq.dns4], info
        assert dnsmasq.dns6 in info.get("IP6.DNS", []), info
        lease = bench.run("ip", "-4", "addr", "show", "dev", ifname).stdout
        assert "dynamic" in lease, lease  # a DHCP lease (valid_lft counting down), not a static address

        # The description: the adapter's vendor and model (from the hwdb through udev), driver tun.
        assert info.get("GENERAL.TYPE") == ["tun"] and info.get("GENERAL.DRIVER") == ["tun"], info
        assert info.get("GENERAL.VENDOR") == ["Linux Foundation"], info
        assert info.get("GENERAL.PRODUCT") == ["Multifunction Composite Gadget"], info
        hwaddr = [a.upper() for a in info.get("GENERAL.HWADDR", [])]
        assert hwaddr == [ncm.host_mac.upper()], info  # NetworkManager kept the adapter's MAC

        # NetworkManager did not take the TAP over: usbnetd still holds it, with the flags it opened it with.
        held = [fd for fd in Path(f"/proc/{proc.pid}/fdinfo").iterdir()
                if f"iff:\t{ifname}" in fd.read_text(errors="replace")]
        assert held, f"usbnetd holds no TAP fd for {ifname}"

        # (5) traffic crosses
        for addr in (peer.peer_addr, dnsmasq.peer_addr6):
            result = bench.ping(addr, count=3)
            print(result["output"])
            assert result["received"] >= 2, result["output"]

        # Unplug: usbnetd stops, the interface goes, the helper removes the profile, and NetworkManager does
        # not create the interface itself (conf.d/90-usbnetd.conf), which would take usbnetd's name.
        ncm.unbind()
        proc.wait(30)
        assert proc.returncode == 0, proc.returncode
        bench.wait_for(lambda: not (bench.SYS_NET / ifname).exists(), 15, f"{ifname} to go")
        bench.wait_for(lambda: not profile.exists(), 30, "the udev helper to remove the profile")
        bench.wait_for(lambda: f"usbnetd {busid}" not in nmcli("-t", "connection").stdout, 30,
                       "NetworkManager to drop the profile")
        time.sleep(10)
        assert not (bench.SYS_NET / ifname).exists(), "NetworkManager created the interface again"
        print("after the unplug:\n" + nmcli("device").stdout)
    finally:
        stop(proc)
        notify.close()
        dnsmasq.stop()
        print(log_path.read_text())


@pytest.mark.parametrize("networkmanager", ["with-conf", "without-conf"], indirect=True)
def test_networkmanager_never_creates_a_usbnetd_interface(networkmanager, request):
    """A usbnetd profile while its interface is missing (unplugged, usbnetd not yet started): with
    conf.d/90-usbnetd.conf NetworkManager leaves the name alone; without it (the control) it creates the TAP
    itself, and usbnetd would find its interface name taken."""
    with_conf = request.node.callspec.params["networkmanager"] == "with-conf"
    bench.kernel_driver("tun")  # /dev/net/tun, as on a machine where usbnetd has run
    ifname = "enx020018aa0001"  # what usbnetd would call an adapter with MAC 02:00:18:aa:00:01
    profile = RUNTIME_PROFILES / f"usbnetd-{ifname}.nmconnection"
    RUNTIME_PROFILES.mkdir(parents=True, exist_ok=True)
    # What usbnetd-nm-profile writes for an interface of usbnetd's (a vnet header: GRO on, the default).
    profile.write_text(f"[connection]\nid=usbnetd 9-9\nuuid=0d8b4f7e-2a49-4c1e-9a61-6d2b7c3e5a10\ntype=tun\n"
                       f"interface-name={ifname}\nautoconnect=true\n\n[tun]\nmode=2\npi=false\nvnet-hdr=true\n"
                       "multi-queue=false\n\n[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n")
    profile.chmod(0o600)
    try:
        nmcli("connection", "load", str(profile))
        assert "usbnetd 9-9" in nmcli("-t", "connection").stdout
        if with_conf:
            time.sleep(15)
            print(nmcli("device").stdout)
            assert not (bench.SYS_NET / ifname).exists(), "NetworkManager created the TAP itself"
        else:
            bench.wait_for(lambda: (bench.SYS_NET / ifname).exists(), 30, "NetworkManager to create the TAP")
            print(nmcli("device").stdout)
            tun_flags = (bench.SYS_NET / ifname / "tun_flags").read_text().strip()
            print(f"without 90-usbnetd.conf NetworkManager created {ifname} itself (tun_flags {tun_flags})")
    finally:
        nmcli("connection", "delete", "uuid", "0d8b4f7e-2a49-4c1e-9a61-6d2b7c3e5a10", check=False)
        profile.unlink(missing_ok=True)
        if (bench.SYS_NET / ifname).exists():
            bench.run("ip", "link", "del", ifname, check=False)
