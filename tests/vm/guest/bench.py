"""Guest-side bench helpers: USB gadgets on dummy_hcd, QEMU's usb-net, peer namespaces, kernel drivers.

Runs only inside the VM guest (see ``tests/vm/harness.py``). Owns:

* ``Gadget``: one configfs gadget (ncm, ecm, eem, rndis or subset) on a dummy_hcd UDC, its host-side
  USB device (``busid``) and both of its network interfaces;
* ``UsbNet``: QEMU's ``usb-net`` device on the xhci bus (RNDIS and ECM configurations) and the virtio
  NIC that is its only peer (they share a QEMU hub);
* ``PeerNamespace``: a network namespace holding the device-side end of a link, on 198.18.<n>.0/24;
* ``kernel_driver`` / ``unload_host_drivers``: load or remove the kernel's USB host network drivers, so
  that a baseline run uses them and a usbnetd run finds the device unclaimed.

All addresses are in 198.18.0.0/15 and every link ends inside this guest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

CONFIGFS = Path("/sys/kernel/config/usb_gadget")
USB_DEVICES = Path("/sys/bus/usb/devices")
SYS_NET = Path("/sys/class/net")
KERNEL_ROOT = os.environ.get("USBNETD_VM_KERNEL_ROOT", "")

GADGET_PREFIX = "usbnetd-"
NETNS_PREFIX = "usbnetd-peer-"
DEFAULT_UDCS = 6

# configfs function name for each of the five gadget functions, and the kernel host driver that claims it.
FUNCTIONS = {"ncm": "ncm", "ecm": "ecm", "eem": "eem", "rndis": "rndis", "subset": "geth"}
HOST_DRIVERS = {
    "ncm": "cdc_ncm",
    "ecm": "cdc_ether",
    "eem": "cdc_eem",
    "rndis": "rndis_host",
    "subset": "cdc_subset",
}
# cdc_subset matches by VID:PID only; 0525:a4a2 is the "Linux-USB Ethernet Gadget" id it knows.
# The others match by interface class, so any id works; these are distinct to tell gadgets apart.
DEFAULT_IDS = {
    "ncm": (0x1D6B, 0x0104),
    "ecm": (0x1D6B, 0x0104),
    "eem": (0x1D6B, 0x0104),
    "rndis": (0x1D6B, 0x0104),
    "subset": (0x0525, 0xA4A2),
}
ALL_HOST_DRIVERS = ("cdc_ncm", "cdc_eem", "rndis_host", "cdc_subset", "cdc_ether", "zaurus", "ax88179_178a",
                    "r8152", "ipheth")


class BenchError(RuntimeError):
    """A bench step failed (command error, timeout waiting for the kernel)."""


def run(*cmd: str, check: bool = True, timeout: float = 30, netns: str | None = None,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command (optionally in a network namespace); raise ``BenchError`` with its output on failure."""
    argv = ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{' '.join(argv)} timed out after {timeout}s") from e
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), in seconds (proc(5), fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; raise ``BenchError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _write(path: Path, value: str) -> None:
    # An empty write is no write(2) at all: sysfs/configfs must see a newline to clear a value
    # (UDC, for one).
    with open(path, "w") as f:
        f.write(value or "\n")


# --------------------------------------------------------------------------------------------------
# Kernel modules


def modprobe(name: str, *params: str, remove: bool = False, timeout: float = 60) -> None:
    """kmod's modprobe against the unpacked kernel package (``$USBNETD_VM_KERNEL_ROOT``)."""
    base = ["modprobe"] + (["-d", KERNEL_ROOT] if KERNEL_ROOT else [])
    cmd = [*base, "-r", name] if remove else [*base, name, *params]
    run(*cmd, timeout=timeout)


def module_loaded(name: str) -> bool:
    return Path("/sys/module", name.replace("-", "_")).is_dir()


def kernel_driver(name: str, load: bool = True, timeout: float = 30) -> None:
    """Load (``load=True``) or remove a kernel module, e.g. a USB host network driver.

    Removing waits until the module is gone: a usbnetd test wants the device free of kernel drivers.
    Modules loaded as dependencies of ``name`` (usbnet, cdc_ether for cdc_ncm/rndis_host) are removed
    with it when nothing else uses them.
    """
    if load:
        if not module_loaded(name):
            modprobe(name)
        return
    if module_loaded(name):
        modprobe(name, remove=True)
    wait_for(lambda: not module_loaded(name), timeout, f"module {name} to unload")


def unload_host_drivers() -> None:
    """Remove every kernel USB host network driver the bench may have loaded (most dependent first)."""
    for name in (*ALL_HOST_DRIVERS, "usbnet"):
        if module_loaded(name):
            kernel_driver(name, load=False)


def ensure_dummy_hcd(num: int = DEFAULT_UDCS) -> list[str]:
    """Load libcomposite and dummy_hcd with ``num`` UDCs (first call wins); return the UDC names."""
    for m in ("libcomposite", "usb_f_ncm", "usb_f_ecm", "usb_f_eem", "usb_f_rndis", "usb_f_ecm_subset"):
        if not module_loaded(m):
            modprobe(m)
    if not module_loaded("dummy_hcd"):
        modprobe("dummy_hcd", f"num={num}")
    return wait_for(lambda: sorted(p.name for p in Path("/sys/class/udc").iterdir()), 10, "UDCs")


def free_udc() -> str:
    used = {_read(g / "UDC") for g in CONFIGFS.iterdir()} if CONFIGFS.is_dir() else set()
    for udc in ensure_dummy_hcd():
        if udc not in used:
            return udc
    raise BenchError("no free UDC (raise DEFAULT_UDCS)")


# --------------------------------------------------------------------------------------------------
# Network namespaces and interfaces


def netdev_up(ifname: str, netns: str | None = None) -> None:
    run("ip", *(["-n", netns] if netns else []), "link", "set", ifname, "up")


def carrier(ifname: str, netns: str | None = None) -> bool:
    """True when ``ifname`` is up with carrier (sysfs ``carrier`` reads EINVAL while down)."""
    if netns is None:
        return _read(SYS_NET / ifname / "carrier") == "1"
    r = run("cat", f"/sys/class/net/{ifname}/carrier", netns=netns, check=False)
    return r.stdout.strip() == "1"


def wait_carrier(ifname: str, netns: str | None = None, timeout: float = 15) -> None:
    wait_for(lambda: carrier(ifname, netns), timeout, f"carrier on {ifname} (netns {netns or 'init'})")


def _driver_of(netdev: Path) -> str | None:
    link = netdev / "device" / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def netdevs_of_usb_device(busid: str) -> list[tuple[str, str | None]]:
    """(ifname, driver) of each netdev in this namespace whose device is ``busid`` or one of its interfaces.

    Names are never guessed from order (usb0/eth0 depend on probe order): the sysfs device link decides.
    """
    found = []
    for net in sorted(SYS_NET.iterdir()):
        dev = net / "device"
        if not dev.exists():
            continue
        real = Path(os.path.realpath(dev))
        if real.name == busid or real.parent.name == busid:
            found.append((net.name, _driver_of(net)))
    return found


class PeerNamespace:
    """A network namespace holding the far end of one link, on 198.18.<subnet>.0/24.

    The near (host-side) interface stays in the initial namespace with ``.1``, the far one moves here
    with ``.2``; the kernel then has to route between them over the USB link.
    """

    def __init__(self, subnet: int, name: str | None = None) -> None:
        if not 0 <= subnet <= 255:
            raise ValueError("subnet must be the third octet of 198.18.x.0/24")
        self.subnet = subnet
        self.name = name or f"{NETNS_PREFIX}{subnet}"
        self.host_addr = f"198.18.{subnet}.1"
        self.peer_addr = f"198.18.{subnet}.2"
        self.ifname: str | None = None
        self._created = False

    def create(self) -> PeerNamespace:
        if Path("/run/netns", self.name).exists():
            run("ip", "netns", "del", self.name)
        run("ip", "netns", "add", self.name)
        self._created = True
        run("ip", "-n", self.name, "link", "set", "lo", "up")
        return self

    def take(self, ifname: str, *, up: bool = True) -> None:
        """Move ``ifname`` from the initial namespace here, address it ``.2/24`` and bring it up."""
        run("ip", "link", "set", ifname, "down")
        run("ip", "link", "set", ifname, "netns", self.name)
        run("ip", "-n", self.name, "addr", "add", f"{self.peer_addr}/24", "dev", ifname)
        if up:
            netdev_up(ifname, self.name)
        self.ifname = ifname

    def address_host_side(self, ifname: str, *, up: bool = True) -> None:
        """Give the host-side ``ifname`` (initial namespace) ``.1/24``, replacing earlier addresses."""
        run("ip", "addr", "flush", "dev", ifname)
        run("ip", "addr", "add", f"{self.host_addr}/24", "dev", ifname)
        if up:
            netdev_up(ifname)

    def bounce(self) -> None:
        """Take the peer interface down and up again.

        For f_ecm this re-sends the connection notification: the gadget sends it when its netdev opens,
        and a host that was not yet listening on the interrupt endpoint can miss it and stay without
        carrier. Bring the host side up first, or bounce the gadget side after.
        """
        if self.ifname is None:
            raise BenchError(f"{self.name}: no interface taken yet")
        run("ip", "-n", self.name, "link", "set", self.ifname, "down")
        netdev_up(self.ifname, self.name)

    def exec(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return run(*cmd, check=check, timeout=timeout, netns=self.name)

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)

    def delete(self) -> None:
        # Physical-like netdevs in a dying namespace go back to the initial one; gadget netdevs
        # should already have been freed with their function by then.
        if self._created or Path("/run/netns", self.name).exists():
            run("ip", "netns", "del", self.name, check=False)
        self._created = False


def ping(addr: str, count: int = 3, netns: str | None = None, timeout: float = 20,
         interval: float = 0.2, size: int = 56) -> dict:
    """Ping ``addr`` with ``size`` bytes of ICMP data; returns {"sent", "received", "rtt_avg_ms", "output"} (no
    exception on loss)."""
    r = run("ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", "-s", str(size), addr,
            check=False, timeout=timeout, netns=netns)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
    return {
        "sent": int(m.group(1)) if m else 0,
        "received": int(m.group(2)) if m else 0,
        "rtt_avg_ms": float(rtt.group(1)) if rtt else None,
        "output": r.stdout + r.stderr,
    }


def iperf3_tcp(peer: PeerNamespace, seconds: float = 2, reverse: bool = False) -> dict:
    """TCP from the initial namespace to an iperf3 server in ``peer`` (``reverse``: the other way).

    Returns {"bits_per_second", "bytes"} as seen by the receiver.
    """
    if not shutil.which("iperf3"):
        raise BenchError("iperf3 not installed")
    server = peer.popen("iperf3", "-s", "-1", "-B", peer.peer_addr, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    try:
        def try_client() -> subprocess.CompletedProcess | None:
            r = run("iperf3", "-c", peer.peer_addr, "-t", str(seconds), "-J", *(["-R"] if reverse else []),
                    check=False, timeout=seconds + 30)
            # The server may not be listening yet on a slow guest: retry only that.
            if "Connection refused" in r.stdout + r.stderr:
                return None
            return r

        r = wait_for(try_client, 20, "an iperf3 run", interval=0.5)
        data = json.loads(r.stdout)
        if data.get("error"):
            raise BenchError(f"iperf3: {data['error']}")
        end = data.get("end", {})
        received = end.get("sum_received") or end.get("sum")
        if not received:
            raise BenchError(f"iperf3 gave no receiver summary: {json.dumps(end)[:2000]}")
        return {"bits_per_second": received["bits_per_second"], "bytes": received["bytes"]}
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
        if server.poll() is None:
            server.kill()
            server.wait()


# --------------------------------------------------------------------------------------------------
# USB devices


def find_usb_device(vid: int, pid: int, serial: str | None = None, product: str | None = None) -> str | None:
    """The sysfs bus id (e.g. ``3-1``) of the enumerated device with these ids, or None."""
    for dev in sorted(USB_DEVICES.iterdir()):
        if ":" in dev.name or dev.name.startswith("usb"):
            continue
        if _read(dev / "idVendor") != f"{vid:04x}" or _read(dev / "idProduct") != f"{pid:04x}":
            continue
        if serial is not None and _read(dev / "serial") != serial:
            continue
        if product is not None and product not in (_read(dev / "product") or ""):
            continue
        return dev.name
    return None


def set_configuration(busid: str, value: int, timeout: float = 10) -> None:
    """Select a USB configuration by writing bConfigurationValue (what a usbnetd run will also need)."""
    path = USB_DEVICES / busid / "bConfigurationValue"
    if _read(path) != str(value):
        _write(path, str(value))
    wait_for(lambda: _read(path) == str(value), timeout, f"{busid} to take configuration {value}")


def release_interfaces(busid: str) -> list[str]:
    """Unbind every kernel driver from ``busid``'s interfaces; returns "<interface>:<driver>" undone."""
    undone = []
    for intf in sorted(USB_DEVICES.glob(f"{busid}:*")):
        drv = intf / "driver"
        if drv.is_symlink():
            name = os.path.basename(os.readlink(drv))
            _write(drv / "unbind", intf.name)
            undone.append(f"{intf.name}:{name}")
    return undone


class Gadget:
    """One configfs USB gadget with a single network function, bound to a dummy_hcd UDC.

    The device side lives in this kernel (``gadget_netdev``, from the function's ``ifname``); the host
    side is whatever claims the enumerated USB device ``busid``: a kernel driver (``host_netdev()``) in a
    baseline run, usbnetd otherwise.
    """

    def __init__(self, function: str, vid: int | None = None, pid: int | None = None,
                 serial: str | None = None, *, index: int = 1, name: str | None = None) -> None:
        if function not in FUNCTIONS:
            raise ValueError(f"unknown function {function!r}; one of {sorted(FUNCTIONS)}")
        dvid, dpid = DEFAULT_IDS[function]
        self.function = function
        self.vid = dvid if vid is None else vid
        self.pid = dpid if pid is None else pid
        self.index = index
        self.serial = serial or f"usbnetd-{function}-{index}"
        self.name = name or f"{GADGET_PREFIX}{function}-{index}"
        self.path = CONFIGFS / self.name
        self.instance = f"{FUNCTIONS[function]}.usb{index}"
        self.dev_mac = f"02:00:18:{index:02x}:00:02"  # device side (gadget netdev)
        self.host_mac = f"02:00:18:{index:02x}:00:01"  # what the device tells the host to use
        self.udc: str | None = None
        self.host_driver = HOST_DRIVERS[function]

    # -- configfs tree ------------------------------------------------------------------------------

    @classmethod
    def create(cls, function: str, vid: int | None = None, pid: int | None = None,
               serial: str | None = None, *, index: int = 1, name: str | None = None) -> Gadget:
        """Build the configfs tree (not yet bound to a UDC)."""
        g = cls(function, vid, pid, serial, index=index, name=name)
        g._build()
        return g

    def _build(self) -> None:
        ensure_dummy_hcd()
        if self.path.exists():
            Gadget._remove_tree(self.path)
        p = self.path
        p.mkdir()
        _write(p / "idVendor", f"0x{self.vid:04x}")
        _write(p / "idProduct", f"0x{self.pid:04x}")
        _write(p / "bcdDevice", "0x0100")
        (p / "strings/0x409").mkdir()
        _write(p / "strings/0x409/serialnumber", self.serial)
        _write(p / "strings/0x409/manufacturer", "usbnetd bench")
        _write(p / "strings/0x409/product", f"usbnetd {self.function} gadget")
        cfg = p / "configs/c.1"
        cfg.mkdir()
        (cfg / "strings/0x409").mkdir()
        _write(cfg / "strings/0x409/configuration", self.function)
        _write(cfg / "MaxPower", "100")
        fn = p / "functions" / self.instance
        fn.mkdir()
        _write(fn / "dev_addr", self.dev_mac)
        _write(fn / "host_addr", self.host_mac)
        (cfg / self.instance).symlink_to(fn)

    @staticmethod
    def _remove_tree(p: Path) -> None:
        """Tear a gadget's configfs tree down in the only order configfs accepts."""
        if _read(p / "UDC"):
            _write(p / "UDC", "")
        for cfg in p.glob("configs/*"):
            for link in cfg.iterdir():
                if link.is_symlink():
                    link.unlink()
            for s in cfg.glob("strings/*"):
                s.rmdir()
            cfg.rmdir()
        for fn in p.glob("functions/*"):
            fn.rmdir()
        for s in p.glob("strings/*"):
            s.rmdir()
        p.rmdir()

    def destroy(self) -> None:
        if self.path.exists():
            Gadget._remove_tree(self.path)
        self.udc = None

    # -- plug state ---------------------------------------------------------------------------------

    @property
    def bound(self) -> bool:
        return bool(_read(self.path / "UDC"))

    def bind(self, udc: str | None = None, timeout: float = 20, wait: bool = True) -> str:
        """Plug in: bind to a (free) UDC; with ``wait``, return once the host side has enumerated it."""
        self.udc = udc or self.udc or free_udc()
        _write(self.path / "UDC", self.udc)
        if wait:
            return self.wait_enumerated(timeout)
        return ""

    def unbind(self, timeout: float = 20) -> None:
        """Unplug: the host side sees a disconnect; the gadget netdev stays (and stays where it was moved).

        A real unplug powers the device off; a UDC unbind keeps the function's state for the next bind. f_ncm
        keeps the NTB it was filling when the link went (frames queued mid-traffic): its flush timer is
        cancelled, or fires while the function has no netdev, and is re-armed only when a new NTB is started.
        After the next bind the device appends every frame to that NTB and sends nothing to the host until it
        holds 32 datagrams (TX_MAX_NUM_DPE): seconds without a single ARP reply. So an NCM function is
        re-linked into its configuration here: the next bind gets a new f_ncm, like a device after power-up,
        while the function instance, and with it the gadget netdev, its namespace and addresses, stays.
        """
        _write(self.path / "UDC", "")
        wait_for(lambda: self.busid is None, timeout, f"{self.name} to disappear from the host side")
        if self.function == "ncm":
            link = self.path / "configs/c.1" / self.instance
            link.unlink()
            link.symlink_to(self.path / "functions" / self.instance)

    def replug(self, timeout: float = 20, pause: float = 0.2) -> str:
        self.unbind(timeout)
        time.sleep(pause)
        return self.bind(timeout=timeout)

    # -- host side ----------------------------------------------------------------------------------

    @property
    def busid(self) -> str | None:
        """Sysfs bus id of the enumerated device on the host side (``None`` when unplugged)."""
        return find_usb_device(self.vid, self.pid, self.serial)

    def wait_enumerated(self, timeout: float = 20) -> str:
        return wait_for(lambda: self.busid, timeout, f"{self.name} ({self.vid:04x}:{self.pid:04x} "
                                                     f"serial {self.serial}) to enumerate")

    def host_netdev(self, timeout: float = 15, driver: str | None = None) -> str:
        """The host-side netdev a kernel driver made for this device (via its sysfs device link)."""
        def find() -> str | None:
            busid = self.busid
            if not busid:
                return None
            for ifname, drv in netdevs_of_usb_device(busid):
                if driver is None or drv == driver:
                    return ifname
            return None

        return wait_for(find, timeout, f"a host-side netdev for {self.name} (driver {driver or 'any'})")

    # -- device side --------------------------------------------------------------------------------

    @property
    def gadget_netdev(self) -> str:
        """Name of the gadget-side netdev (registered when the gadget is first bound)."""
        name = _read(self.path / "functions" / self.instance / "ifname")
        if not name or name.startswith("("):
            raise BenchError(f"{self.name}: gadget netdev not registered yet (bind first)")
        return name

    def __repr__(self) -> str:
        return f"Gadget({self.function!r}, {self.vid:04x}:{self.pid:04x}, serial={self.serial!r})"


class UsbNet:
    """QEMU's ``usb-net`` on the guest's xhci bus, with two configurations.

    Careful with the numbers: the *first* configuration descriptor (index 0) is RNDIS but carries
    ``bConfigurationValue`` 2; the second (index 1) is CDC-ECM with ``bConfigurationValue`` 1, which is
    what Linux selects by default. ``set_configuration`` takes the bConfigurationValue.

    The guest cannot see its device side: QEMU's network backend is, and it is a hub port shared only
    with the guest's virtio NIC (``peer_netdev``), which a test moves into a ``PeerNamespace``.
    """

    VID, PID = 0x0525, 0xA4A2
    PRODUCT = "QEMU USB Network"
    RNDIS_CONFIG = 2  # bConfigurationValue of the RNDIS configuration (descriptor index 0)
    ECM_CONFIG = 1  # bConfigurationValue of the CDC-ECM configuration (descriptor index 1)
    DEFAULT_CONFIG = ECM_CONFIG  # what the kernel picks at enumeration
    CONFIGS = {RNDIS_CONFIG: "rndis_host", ECM_CONFIG: "cdc_ether"}  # bConfigurationValue -> driver

    @property
    def busid(self) -> str | None:
        return find_usb_device(self.VID, self.PID, product=self.PRODUCT)

    def wait_enumerated(self, timeout: float = 20) -> str:
        return wait_for(lambda: self.busid, timeout, "QEMU usb-net to enumerate")

    @property
    def configuration(self) -> int | None:
        v = _read(USB_DEVICES / self.wait_enumerated() / "bConfigurationValue")
        return int(v) if v else None

    def set_configuration(self, value: int) -> None:
        set_configuration(self.wait_enumerated(), value)

    def host_netdev(self, timeout: float = 15, driver: str | None = None) -> str:
        def find() -> str | None:
            for ifname, drv in netdevs_of_usb_device(self.wait_enumerated()):
                if driver is None or drv == driver:
                    return ifname
            return None

        return wait_for(find, timeout, f"a host-side netdev for usb-net (driver {driver or 'any'})")

    @staticmethod
    def peer_netdev(timeout: float = 15) -> str:
        """The virtio NIC on usb-net's QEMU hub (in the initial namespace until moved)."""
        kernel_driver("virtio_net")

        def find() -> str | None:
            for net in sorted(SYS_NET.iterdir()):
                if _driver_of(net) == "virtio_net":
                    return net.name
            return None

        return wait_for(find, timeout, "the virtio NIC (usb-net's peer)")
