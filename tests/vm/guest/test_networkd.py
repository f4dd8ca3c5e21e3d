"""systemd-networkd brings a usbnetd interface up as it would a kernel USB NIC (contrib/systemd-networkd).

Plug and play, for real in the guest: udevd with udev/70-usbnetd.rules and the .link file, the D-Bus system
bus, the real systemd-networkd with contrib/systemd-networkd/80-usbnetd.network in /run/systemd/network,
and dnsmasq on the device side (the gadget's netdev in its namespace) handing out DHCPv4 and sending router
advertisements. An NCM gadget is plugged; udev asks for usbnetd@<busid>.service and the test starts what
the unit runs (as test_udev_systemd.py does). networkd must then match the interface (by Kind=tun and the
USBNETD=1 property udev imported from the file usbnetd wrote) and configure it: an IPv4 address by DHCP,
an IPv6 address by SLAAC, default routes for both, the DNS servers of both, as `networkctl status` and
`networkctl --json=short status` report them; and traffic must cross.
"""

from __future__ import annotations

import ipaddress
import json
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

NETWORKD = "/lib/systemd/systemd-networkd"
NETWORK_DIR = Path("/run/systemd/network")
CONTRIB = REPO / "contrib" / "systemd-networkd"
SUBNET = 85
CONFIGURE_TIMEOUT = 180  # DHCP and RA under TCG; an upper bound, not an expectation


def networkctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["networkctl", "--no-pager", *args], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, SYSTEMD_IGNORE_CHROOT="1", SYSTEMD_COLORS="0", COLUMNS="200"))
    if check and r.returncode != 0:
        raise bench.BenchError(f"networkctl {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


def udev_net_properties(ifname: str) -> dict[str, str]:
    r = subprocess.run(["udevadm", "info", "--query=property", f"/sys/class/net/{ifname}"], capture_output=True,
                       text=True, env=UDEV_ENV, timeout=30)
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


@pytest.fixture
def system_bus() -> Iterator[pnp.SystemBus]:
    bus = pnp.SystemBus().start()
    yield bus
    bus.stop()


@pytest.fixture
def networkd(udevd: Path, system_bus: pnp.SystemBus) -> Iterator[subprocess.Popen]:
    """The host's systemd-networkd, run in the guest with the shipped .network and .link files."""
    pnp.require(NETWORKD, "networkctl")
    NETWORK_DIR.mkdir(parents=True, exist_ok=True)
    installed = []
    for f in sorted(CONTRIB.iterdir()):
        shutil.copy(f, NETWORK_DIR / f.name)
        installed.append(NETWORK_DIR / f.name)
    # udevd applies .link files (net_setup_link); a reload re-reads them.
    subprocess.run(["udevadm", "control", "--reload"], env=UDEV_ENV, check=True, capture_output=True)
    log_path = pnp.log_file("systemd-networkd.log")
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="debug", SYSTEMD_LOG_TARGET="console", SYSTEMD_IGNORE_CHROOT="1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([NETWORKD], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        bench.wait_for(lambda: proc.poll() is not None or networkctl("list", check=False).returncode == 0, 60,
                       "systemd-networkd to answer")
        assert proc.poll() is None, f"systemd-networkd exited {proc.returncode}: {log_path.read_text()[-3000:]}"
        yield proc
    finally:
        pnp.terminate(proc)
        for f in installed:
            f.unlink(missing_ok=True)
        subprocess.run(["udevadm", "control", "--reload"], env=UDEV_ENV, capture_output=True)
        print("systemd-networkd log (tail):\n" + "\n".join(log_path.read_text().splitlines()[-80:]))


def _addr(family: int, raw: list[int]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(bytes(raw)) if family in (2, 10) else ipaddress.ip_address(raw)


def test_networkd_configures_a_usbnetd_interface_by_dhcp_and_slaac(gadgets, peers, udevd, networkd, tmp_path):
    ncm = gadgets("ncm")
    opt_in(udevd, f'SUBSYSTEM=="usb", ENV{{DEVTYPE}}=="usb_device", ATTR{{serial}}=="{ncm.serial}", '
                  'ENV{USBNETD}="1"')
    busid = ncm.bind()
    props = wait_processed(busid)
    assert props.get("SYSTEMD_WANTS") == f"usbnetd@{busid}.service", props

    # The device side: the gadget's netdev in its namespace, with a DHCP server and a router.
    peer = peers(SUBNET)
    peer.take(ncm.gadget_netdev)
    dnsmasq = pnp.Dnsmasq(peer).start()

    notify = NotifySocket(str(tmp_path / "notify"))
    log_path = tmp_path / "usbnetd.log"
    proc = pnp.start_unit_instance(busid, notify.path, log_path, UNIT)
    ifname = f"enx{ncm.host_mac.replace(':', '')}"  # the default name: enx + the adapter's MAC
    try:
        notify.wait_for("READY", START_TIMEOUT, proc)

        # What udev made of the interface: the file usbnetd wrote, and the adapter's names from the hwdb.
        nprops = udev_net_properties(ifname)
        print("udev properties of", ifname, nprops)
        assert nprops.get("USBNETD") == "1" and nprops.get("USBNETD_BUSID") == busid, nprops
        assert nprops.get("USBNETD_PROTOCOL") == "ncm", nprops
        assert nprops.get("ID_VENDOR_FROM_DATABASE") == "Linux Foundation", nprops
        assert nprops.get("ID_MODEL_FROM_DATABASE"), nprops

        def configured() -> str | None:
            r = networkctl("status", ifname, check=False)
            text = r.stdout
            ok = ("configured" in text and "routable" in text and re.search(r"198\.18\.85\.\d+", text)
                  and "fd00:198:18:55:" in text)
            return text if ok else None

        try:
            status = bench.wait_for(configured, CONFIGURE_TIMEOUT, f"networkd to configure {ifname}", interval=1)
        finally:
            print(networkctl("status", ifname, check=False).stdout)
            print("dnsmasq:\n" + dnsmasq.output())
        print(networkctl("list", check=False).stdout)

        # networkctl status, as a user reads it.
        assert re.search(r"Network File: .*/80-usbnetd\.network", status), status
        assert re.search(r"Link File: .*/70-usbnetd\.link", status), status
        assert re.search(r"State: routable \(configured\)", status), status
        assert re.search(r"Vendor: Linux Foundation", status), status
        assert re.search(r"Hardware Address: " + re.escape(ncm.host_mac), status), status
        assert "198.18.85.2" in status and dnsmasq.dns6 in status, f"DNS servers missing:\n{status}"

        # The same as JSON (networkd's Describe over D-Bus).
        desc = json.loads(networkctl("--json=short", "status", ifname).stdout)
        print(json.dumps(desc, indent=1)[:6000])
        if "Interfaces" in desc:  # the form `networkctl --json status` prints for a list of links
            desc = next(i for i in desc["Interfaces"] if i.get("Name") == ifname)
        assert desc["Name"] == ifname and desc["Kind"] == "tun", desc
        assert desc["AdministrativeState"] == "configured" and desc["OperationalState"] == "routable", desc
        assert desc["NetworkFile"].endswith("/80-usbnetd.network"), desc

        addrs = [(_addr(a["Family"], a["Address"]), a.get("PrefixLength"), a.get("ConfigSource"))
                 for a in desc["Addresses"]]
        v4 = [a for a in addrs if a[0].version == 4]
        v6 = [a for a in addrs if a[0].version == 6 and not a[0].is_link_local]
        assert any(a in ipaddress.ip_network(f"198.18.{SUBNET}.0/24") and int(a) & 0xFF >= 100 and p == 24
                   and src == "DHCPv4" for a, p, src in v4), addrs
        assert any(a in ipaddress.ip_network(f"{dnsmasq.prefix6}/64") and p == 64 and src == "NDisc"
                   for a, p, src in v6), addrs

        routes = [(r["Family"], _addr(r["Family"], r["Destination"]) if r.get("Destination") else None,
                   r.get("DestinationPrefixLength"), _addr(r["Family"], r["Gateway"]) if r.get("Gateway") else None,
                   r.get("ConfigSource")) for r in desc.get("Routes", [])]
        print("routes:", routes)
        assert any(f == 2 and plen == 0 and str(gw) == peer.peer_addr and src == "DHCPv4"
                   for f, _d, plen, gw, src in routes), routes
        assert any(f == 10 and plen == 0 and gw is not None and gw.is_link_local and src == "NDisc"
                   for f, _d, plen, gw, src in routes), routes

        dns = [(_addr(d["Family"], d["Address"]), d.get("ConfigSource")) for d in desc.get("DNS", [])]
        print("DNS:", dns)
        assert (ipaddress.ip_address(dnsmasq.dns4), "DHCPv4") in dns, dns
        assert (ipaddress.ip_address(dnsmasq.dns6), "NDisc") in dns, dns

        # The kernel agrees, and traffic crosses both ways on both families.
        routes4 = bench.run("ip", "-4", "route", "show", "dev", ifname).stdout
        routes6 = bench.run("ip", "-6", "route", "show", "dev", ifname).stdout
        print(routes4, routes6)
        assert re.search(rf"default via {re.escape(peer.peer_addr)} proto dhcp", routes4), routes4
        assert re.search(r"default via fe80::\S+ proto ra", routes6), routes6
        for addr in (peer.peer_addr, dnsmasq.peer_addr6):
            result = bench.ping(addr, count=3)
            print(result["output"])
            assert result["received"] >= 2, result["output"]
    finally:
        stop(proc)
        notify.close()
        dnsmasq.stop()
        print(log_path.read_text())
    # Unplugged and stopped: the interface and the file that described it are gone.
    time.sleep(1)
    assert not (bench.SYS_NET / ifname).exists()
    assert not Path(f"/run/usbnetd/{ifname}.udev").exists()
