"""Host side of the VM bench: everything needed to run a command inside a QEMU guest that has USB.

This machine's kernel has no USB subsystem, so USB tests run in a guest booted from Debian's stock
``linux-image-amd64`` kernel (dummy_hcd, libcomposite gadget functions, the kernel's USB host network
drivers, xhci). This module owns:

* installing the Debian packages the bench needs when they are missing (``ensure_host_packages``);
* downloading and unpacking the kernel package into a cache outside the repo
  (``${XDG_CACHE_HOME:-$HOME/.cache}/usbnetd-vm/``; override with ``USBNETD_VM_CACHE``);
* building a small initramfs (busybox-static, the virtio/9p modules, an ``/init`` script), written as a
  newc cpio archive by Python so no device node has to be created on the host;
* booting QEMU (TCG, never KVM) with the host's ``/`` shared read-only over 9p and a writable results
  directory, running one shell command chrooted into the host's root, and bringing back its exit status,
  the serial console log and whatever the command wrote to the results directory (``run_in_guest``);
* a CLI: ``python -m tests.vm.harness {prepare,run,pytest}`` (see ``docs/testing.md``).

Nothing binary is committed: the kernel, the initramfs and the run directories all live in the cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import lzma
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Debian package -> a file whose presence proves it is installed (dpkg-query is the real check; the
# file lets a non-Debian developer machine with the tools installed some other way still work).
HOST_PACKAGES: dict[str, str] = {
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    "busybox-static": "/bin/busybox",
    "cpio": "/usr/bin/cpio",
    "kmod": "/sbin/modprobe",
    "iperf3": "/usr/bin/iperf3",
    "iputils-ping": "/usr/bin/ping",
    "iproute2": "/sbin/ip",
    "libusb-1.0-0": "/usr/lib/x86_64-linux-gnu/libusb-1.0.so.0",
    "xz-utils": "/usr/bin/xz",
    "zstd": "/usr/bin/zstd",
    "usbutils": "/usr/bin/lsusb",
    # The plug-and-play tests run these inside the guest only, never here (tests/vm/guest/pnp.py);
    # systemd-networkd comes with systemd, dbus-daemon with network-manager.
    "network-manager": "/usr/sbin/NetworkManager",
    "dnsmasq-base": "/usr/sbin/dnsmasq",
}
# Installed for the guest only: no service of theirs may start on this machine, now or at the next boot.
GUEST_ONLY_UNITS = {
    "network-manager": ("NetworkManager.service", "NetworkManager-wait-online.service",
                        "NetworkManager-dispatcher.service"),
}
POLICY_RC_D = "/usr/sbin/policy-rc.d"

# Modules the initramfs itself needs to reach the 9p shares; everything else is loaded later from the
# unpacked kernel package with kmod's modprobe inside the chroot.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p")

GUEST_MOUNT = "/mnt/host"  # where the initramfs mounts the host's / before chrooting into it
GUEST_RESULTS = "/run/usbnetd-vm/results"  # where the results share appears inside the chroot
READY_MARKER = "USBNETD-VM: guest ready"
STATUS_MARKER = "USBNETD-VM: exit status"

# Step budgets (seconds). Every external step has one so that nothing can hang a CI run forever.
APT_TIMEOUT = 900
DOWNLOAD_TIMEOUT = 300
BOOT_TIMEOUT = 120
DEFAULT_RUN_TIMEOUT = 2700  # the whole guest run: 52 guest tests took 1668 s under TCG on a shared host (2026-12-05)


class HarnessError(RuntimeError):
    """The bench could not be prepared or the guest could not be run."""


def log(msg: str) -> None:
    print(f"[vm-harness] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    env = os.environ.get("USBNETD_VM_CACHE")
    if env:
        path = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "usbnetd-vm"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, timeout=timeout, text=True, capture_output=True, **kw)
    except subprocess.CalledProcessError as e:
        raise HarnessError(f"{shlex.join(cmd)} failed ({e.returncode}):\n{e.stdout}\n{e.stderr}") from e
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"{shlex.join(cmd)} timed out after {timeout}s") from e
    except FileNotFoundError as e:
        raise HarnessError(f"{cmd[0]} not found: {e}") from e


# --------------------------------------------------------------------------------------------------
# Host packages


def _dpkg_installed(pkg: str) -> bool:
    if not shutil.which("dpkg-query"):
        return False
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, timeout=60
    )
    return r.returncode == 0 and r.stdout.strip() == "install ok installed"


_apt_updated = False


def apt_update_once() -> None:
    global _apt_updated
    if not _apt_updated:
        log("apt-get update")
        _run(["apt-get", "update"], APT_TIMEOUT)
        _apt_updated = True


def ensure_host_packages() -> None:
    """Install the Debian packages the bench needs (only those missing; apt-get update at most once)."""
    missing = [p for p, f in HOST_PACKAGES.items() if not (_dpkg_installed(p) or Path(f).exists())]
    # busybox (dynamic) also provides /bin/busybox, but the initramfs needs the static one.
    if "busybox-static" not in missing and shutil.which("dpkg-query") and not _dpkg_installed(
        "busybox-static"
    ):
        missing.append("busybox-static")
    if not missing:
        return
    if os.geteuid() != 0:
        raise HarnessError(f"missing Debian packages {missing} and not root to install them")
    log(f"installing {' '.join(missing)}")
    apt_update_once()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # invoke-rc.d and deb-systemd-invoke ask policy-rc.d; exit 101 forbids starting anything (Debian's
    # invoke-rc.d(8)). One that is there already is left alone; ours goes when apt-get is done.
    policy = Path(os.environ.get("USBNETD_POLICY_RC_D", POLICY_RC_D))
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\n# written by usbnetd's VM harness for one apt-get install\nexit 101\n")
        policy.chmod(0o755)
    try:
        _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], APT_TIMEOUT, env=env)
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    for pkg, units in GUEST_ONLY_UNITS.items():
        if pkg in missing and _dpkg_installed(pkg) and shutil.which("systemctl"):
            subprocess.run(["systemctl", "disable", "--quiet", *units], capture_output=True, timeout=60)
            log(f"{pkg} is for the guest only: disabled {' '.join(units)}")


# --------------------------------------------------------------------------------------------------
# Kernel


@dataclasses.dataclass(frozen=True)
class Kernel:
    """An unpacked Debian kernel package: ``root`` is usable as ``modprobe -d root``."""

    version: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def moddir(self) -> Path:
        return self.root / "lib" / "modules" / self.version


def _resolve_kernel_version() -> str:
    """The ``linux-image-<ver>-amd64`` that Debian's ``linux-image-amd64`` currently depends on."""
    if os.environ.get("USBNETD_VM_KERNEL"):
        return os.environ["USBNETD_VM_KERNEL"]

    def depends() -> str | None:
        r = subprocess.run(
            ["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, timeout=120
        )
        for line in r.stdout.splitlines():
            word = line.split(":", 1)[-1].strip()
            if line.strip().startswith("Depends:") and word.startswith("linux-image-"):
                return word.removeprefix("linux-image-")
        return None

    ver = depends()
    if ver is None:
        if os.geteuid() != 0:
            raise HarnessError("apt-cache knows no linux-image-amd64 and not root to run apt-get update")
        apt_update_once()
        ver = depends()
    if ver is None:
        raise HarnessError("could not resolve the dependency of linux-image-amd64 with apt-cache")
    return ver


def ensure_kernel(refresh: bool = False) -> Kernel:
    """Download, unpack and depmod the kernel package into the cache (once), and return it.

    Without ``refresh`` (or ``USBNETD_VM_REFRESH=1``) an already unpacked kernel is reused, so a warm
    cache needs neither apt nor the network.
    """
    cache = cache_dir()
    refresh = refresh or os.environ.get("USBNETD_VM_REFRESH") == "1"
    if not refresh and not os.environ.get("USBNETD_VM_KERNEL"):
        ready = sorted(cache.glob("kernel-*/.complete"), key=lambda p: p.stat().st_mtime)
        if ready:
            root = ready[-1].parent
            return Kernel(root.name.removeprefix("kernel-"), root)
    ver = _resolve_kernel_version()
    root = cache / f"kernel-{ver}"
    if (root / ".complete").exists():
        return Kernel(ver, root)
    pkg = f"linux-image-{ver}"
    debs = list(cache.glob(f"{pkg}_*_amd64.deb"))
    if not debs:
        log(f"apt-get download {pkg} into {cache}")
        _run(["apt-get", "download", pkg], DOWNLOAD_TIMEOUT, cwd=cache)
        debs = list(cache.glob(f"{pkg}_*_amd64.deb"))
        if not debs:
            raise HarnessError(f"apt-get download {pkg} produced no .deb in {cache}")
    shutil.rmtree(root, ignore_errors=True)
    tmp = cache / f".unpack-{ver}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"unpacking {debs[0].name}")
    _run(["dpkg-deb", "-x", str(debs[0]), str(tmp)], DOWNLOAD_TIMEOUT)
    # Newer (merged-/usr) packages ship usr/lib/modules; modprobe -d wants <dir>/lib/modules.
    if not (tmp / "lib" / "modules").exists() and (tmp / "usr" / "lib" / "modules").exists():
        (tmp / "lib").symlink_to("usr/lib")
    depmod = shutil.which("depmod") or "/sbin/depmod"
    _run([depmod, "-b", str(tmp), ver], 300)
    (tmp / ".complete").write_text(ver + "\n")
    try:
        tmp.rename(root)
    except OSError:
        # another run unpacked the same kernel meanwhile: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / ".complete").exists():
            raise
    for deb in debs:
        deb.unlink(missing_ok=True)  # 70 MB we no longer need: the unpacked tree is the cache
    return Kernel(ver, root)


# --------------------------------------------------------------------------------------------------
# Initramfs


class _Cpio:
    """A minimal newc cpio writer (enough for an initramfs: dirs, files, symlinks, char devices)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(hdr + name.encode() + b"\0")
        self.buf.write(b"\0" * (-self.buf.tell() % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def _module_closure(kernel: Kernel, names: tuple[str, ...]) -> list[Path]:
    """Module files for ``names`` and their dependencies, in load order (from modules.dep)."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (kernel.moddir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        base = Path(mod).name.split(".ko")[0]
        by_name[base] = by_name[base.replace("-", "_")] = mod
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        # modules.dep lists the full dependency closure, deepest last
        for d in reversed(deps.get(mod, [])):
            visit(d)
        order.append(mod)

    for n in names:
        if n not in by_name:
            raise HarnessError(f"module {n} not found in {kernel.moddir}/modules.dep")
        visit(by_name[n])
    return [kernel.moddir / m for m in order]


def _read_module(path: Path) -> bytes:
    # busybox insmod cannot decompress, so the few initramfs modules go in plain.
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


INIT_SCRIPT = r"""#!/bin/sh
# usbnetd VM bench init (generated by tests/vm/harness.py). Runs as PID 1 from the initramfs.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "USBNETD-VM: init started"
for m in $(cat /modules/order); do insmod /modules/$m || echo "USBNETD-VM: insmod $m failed"; done
H=@MOUNT@
R=@RESULTS@
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot $H || {
  echo "USBNETD-VM: cannot mount the host root"; poweroff -f; }
# Writable places inside the chroot; /tmp is deliberately left as the host's (read-only) /tmp because the
# repo or the venv may live there, TMPDIR points into /run instead.
mount -t proc proc $H/proc
mount -t sysfs sysfs $H/sys
mount -t devtmpfs devtmpfs $H/dev
mkdir -p $H/dev/pts $H/dev/shm
mount -t devpts devpts $H/dev/pts
mount -t tmpfs tmpfs $H/dev/shm
mount -t tmpfs -o mode=755 tmpfs $H/run
mkdir -p $H$R $H/run/tmp $H/run/home $H/run/netns
chmod 1777 $H/run/tmp
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results $H$R || {
  echo "USBNETD-VM: cannot mount the results share"; poweroff -f; }
# The kernel's own module requests (request_module) run /sbin/modprobe in *this* root; send them into
# the chroot with the unpacked kernel package as the module directory.
echo /bin/modprobe-chroot > /proc/sys/kernel/modprobe
ip link set lo up 2>/dev/null
# configfs for the gadgets, xhci so that QEMU's usb-net is enumerated before any test starts.
chroot $H /sbin/modprobe -d @KROOT@ -a configfs xhci_pci || echo "USBNETD-VM: modprobe failed"
mount -t configfs none $H/sys/kernel/config
echo "@READY@ $(cat /proc/uptime)"
chroot $H /usr/bin/env -i @ENV@ /bin/sh $R/cmd.sh
rc=$?
echo "@STATUS@ $rc"
cat /proc/uptime > $H$R/uptime
dmesg > $H$R/dmesg.txt
echo $rc > $H$R/rc
sync
umount $H$R
poweroff -f
"""

MODPROBE_WRAPPER = """#!/bin/sh
exec /bin/busybox chroot @MOUNT@ /sbin/modprobe -d @KROOT@ "$@"
"""


# Host environment variables passed on to the guest's command: the documented test knobs.
FORWARDED_ENV = frozenset({"USBNETD_UNPLUG_CYCLES"})


def guest_env(kernel: Kernel) -> dict[str, str]:
    """The environment the command sees inside the guest."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/run/home",
        "TMPDIR": "/run/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "USBNETD_VM_GUEST": "1",
        "USBNETD_VM_KERNEL_ROOT": str(kernel.root),
        "USBNETD_VM_KERNEL_VERSION": kernel.version,
        "USBNETD_VM_RESULTS": GUEST_RESULTS,
    }


def build_initramfs(kernel: Kernel) -> Path:
    """Build (or reuse) the initramfs for ``kernel``; returns its path in the cache."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise HarnessError("/bin/busybox missing: install busybox-static")
    mods = _module_closure(kernel, INITRAMFS_MODULES)
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in guest_env(kernel).items())
    init = (
        INIT_SCRIPT.replace("@MOUNT@", GUEST_MOUNT)
        .replace("@RESULTS@", GUEST_RESULTS)
        .replace("@KROOT@", shlex.quote(str(kernel.root)))
        .replace("@READY@", READY_MARKER)
        .replace("@STATUS@", STATUS_MARKER)
        .replace("@ENV@", env)
    )
    wrapper = MODPROBE_WRAPPER.replace("@MOUNT@", GUEST_MOUNT).replace(
        "@KROOT@", shlex.quote(str(kernel.root))
    )
    cp = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "mnt", GUEST_MOUNT.lstrip("/"), "modules"):
        cp.dir(d)
    cp.chardev("dev/console", 5, 1)
    cp.chardev("dev/null", 1, 3)
    cp.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in ("sh", "mount", "umount", "mkdir", "chmod", "cat", "insmod", "chroot", "echo", "ip",
                   "poweroff", "dmesg", "sync", "sleep", "ls"):
        cp.symlink(f"bin/{applet}", "busybox")
    cp.file("bin/modprobe-chroot", wrapper.encode(), 0o755)
    cp.file("init", init.encode(), 0o755)
    names = []
    for m in mods:
        name = m.name.split(".ko")[0] + ".ko"
        cp.file(f"modules/{name}", _read_module(m))
        names.append(name)
    cp.file("modules/order", ("\n".join(names) + "\n").encode())
    data = gzip.compress(cp.finish(), compresslevel=6, mtime=0)
    out = cache_dir() / f"initramfs-{kernel.version}.cpio.gz"
    if not out.exists() or out.read_bytes() != data:
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(out)
    return out


def prepare(refresh: bool = False) -> tuple[Kernel, Path]:
    """Everything before boot: packages, kernel, initramfs. Idempotent and cheap when cached."""
    ensure_host_packages()
    kernel = ensure_kernel(refresh=refresh)
    return kernel, build_initramfs(kernel)


# --------------------------------------------------------------------------------------------------
# Boot and run


@dataclasses.dataclass
class GuestResult:
    """What came back from one guest run."""

    returncode: int | None  # the command's exit status; None if the guest never reported one
    results_dir: Path  # the host directory the guest saw as $USBNETD_VM_RESULTS
    console_log: Path  # the serial console (kernel messages and the command's stdout/stderr)
    boot_seconds: float | None  # host wall clock from QEMU start to the guest's ready marker
    elapsed: float  # host wall clock for the whole run
    timed_out: bool = False
    error: str | None = None  # why the run did not produce an exit status

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def console_tail(self, lines: int = 60) -> str:
        try:
            text = self.console_log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def qemu_command(kernel: Kernel, initramfs: Path, results: Path, memory_mb: int = 2048,
                 cpus: int = 2) -> list[str]:
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    append = "console=ttyS0 panic=-1 loglevel=4 rdinit=/init"
    # Extra guest kernel parameters for an experiment (e.g. idle=poll: vCPUs that never halt), not for CI.
    extra = os.environ.get("USBNETD_VM_KERNEL_ARGS", "").strip()
    if extra:
        append += " " + extra
    return [
        qemu,
        # TCG only: /dev/kvm exists on these machines but a KVM guest hangs.
        "-accel", "tcg",
        "-machine", "q35",
        "-m", str(memory_mb),
        "-smp", str(cpus),
        "-nodefaults",
        "-display", "none",
        "-serial", "stdio",
        "-monitor", "none",
        "-no-reboot",
        "-kernel", str(kernel.vmlinuz),
        "-initrd", str(initramfs),
        "-append", append,
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={results},mount_tag=results,security_model=none,multidevs=remap",
        # QEMU's own USB NIC (RNDIS as bConfigurationValue 2, ECM as 1) on an xhci bus. Its netdev is a port of a
        # QEMU hub whose only other port is a virtio NIC in the same guest: the guest talks to itself,
        # and no frame can leave QEMU.
        "-device", "qemu-xhci,id=xhci",
        "-netdev", "hubport,id=usbnet0,hubid=0",
        "-device", "usb-net,bus=xhci.0,netdev=usbnet0,mac=52:54:00:00:18:01",
        "-netdev", "hubport,id=peer0,hubid=0",
        "-device", "virtio-net-pci,netdev=peer0,mac=52:54:00:00:18:02,romfile=",
    ]


def new_run_dir() -> Path:
    """A fresh directory for one guest run under ``<cache>/runs/``."""
    runs = cache_dir() / "runs"
    runs.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=runs))


def run_in_guest(
    command: str,
    *,
    results_dir: Path | None = None,
    cwd: Path = REPO,
    timeout: float = DEFAULT_RUN_TIMEOUT,
    echo: bool = False,
    prepared: tuple[Kernel, Path] | None = None,
) -> GuestResult:
    """Boot the guest, run the shell ``command`` chrooted in the host's root with cwd ``cwd``.

    ``results_dir`` (created if needed) is visible in the guest at ``$USBNETD_VM_RESULTS``; the console
    log is written there too. ``timeout`` bounds the whole run including boot; on expiry QEMU is killed.
    ``echo`` copies the console to stderr live.
    """
    kernel, initramfs = prepared or prepare()
    results_dir = (results_dir or new_run_dir()).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("rc", "uptime", "dmesg.txt", "report.jsonl", "junit.xml"):
        (results_dir / stale).unlink(missing_ok=True)
    # Test knobs set on the host reach the guest (the baked environment above has none of them).
    forwarded = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(os.environ.items())
                        if k in FORWARDED_ENV)
    (results_dir / "cmd.sh").write_text(
        f"cd {shlex.quote(str(cwd))} || exit 125\n{forwarded}{command}\n"
    )
    console = results_dir / "console.log"
    cmd = qemu_command(kernel, initramfs, results_dir)
    (results_dir / "qemu-cmdline.txt").write_text(shlex.join(cmd) + "\n")
    log(f"booting guest (kernel {kernel.version}); console log: {console}")
    start = time.monotonic()
    boot_seconds: float | None = None
    status_seen = False
    with open(console, "wb") as con:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdout is not None

        def pump() -> None:
            nonlocal boot_seconds, status_seen
            for line in iter(proc.stdout.readline, b""):
                con.write(line)
                con.flush()
                if echo:
                    sys.stderr.write(line.decode(errors="replace"))
                    sys.stderr.flush()
                if boot_seconds is None and READY_MARKER.encode() in line:
                    boot_seconds = time.monotonic() - start
                if STATUS_MARKER.encode() in line:
                    status_seen = True

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        deadline = start + timeout
        while proc.poll() is None:
            now = time.monotonic()
            if now > deadline or (boot_seconds is None and now - start > BOOT_TIMEOUT):
                timed_out = True
                proc.kill()
                break
            time.sleep(0.2)
        proc.wait(timeout=30)
        reader.join(timeout=10)
    elapsed = time.monotonic() - start
    rc_file = results_dir / "rc"
    returncode = int(rc_file.read_text().strip()) if rc_file.exists() else None
    error = None
    if returncode is None:
        if timed_out and boot_seconds is None:
            error = f"guest did not boot within {BOOT_TIMEOUT}s"
        elif timed_out:
            error = f"guest run timed out after {timeout}s"
        else:
            error = f"guest exited (qemu status {proc.returncode}) without reporting an exit status"
            if status_seen:
                error += " (status line seen on console but the rc file was not written)"
    result = GuestResult(returncode, results_dir, console, boot_seconds, elapsed, timed_out, error)
    log(
        f"guest finished: rc={returncode} boot={boot_seconds and round(boot_seconds, 1)}s "
        f"elapsed={elapsed:.1f}s results={results_dir}"
        + (f" ERROR: {error}" if error else "")
    )
    return result


def guest_python() -> str:
    """The Python the guest runs: this interpreter (normally the project venv's), seen through 9p."""
    return os.path.abspath(sys.executable)


def pytest_command(args: list[str], *, junit: bool = True, report: bool = True) -> str:
    """Shell command running pytest in the guest with the guest plugin's reports in the results dir."""
    parts = [guest_python(), "-m", "pytest", "-p", "no:cacheprovider", "--color=no"]
    if junit:
        parts.append(f"--junitxml={GUEST_RESULTS}/junit.xml")
    cmd = shlex.join(parts + args)
    if report:
        cmd = f"USBNETD_VM_REPORT={GUEST_RESULTS}/report.jsonl {cmd}"
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.vm.harness", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("prepare", help="install packages, fetch the kernel, build the initramfs")
    sp.add_argument("--refresh", action="store_true", help="re-resolve and re-fetch the kernel")
    for name, help_ in (("run", "run a shell command in the guest"),
                        ("pytest", "run pytest in the guest with these arguments")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--timeout", type=float, default=DEFAULT_RUN_TIMEOUT)
        sp.add_argument("--results", type=Path, help="host directory for results (default: in cache)")
        sp.add_argument("--quiet", action="store_true", help="do not echo the console")
        sp.add_argument("args", nargs=argparse.REMAINDER, help="after --")
    ns = p.parse_args(argv)
    try:
        if ns.cmd == "prepare":
            kernel, initramfs = prepare(refresh=ns.refresh)
            print(f"kernel {kernel.version} at {kernel.root}\ninitramfs {initramfs}")
            return 0
        args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
        if ns.cmd == "run":
            if not args:
                p.error("run needs a command after --")
            command = args[0] if len(args) == 1 else shlex.join(args)
        else:
            command = pytest_command(args or ["tests/vm/guest"])
        res = run_in_guest(command, results_dir=ns.results, timeout=ns.timeout, echo=not ns.quiet)
    except HarnessError as e:
        log(f"ERROR: {e}")
        return 2
    print(f"console log: {res.console_log}\nresults: {res.results_dir}", file=sys.stderr)
    if res.returncode is None:
        log(f"ERROR: {res.error}")
        return 3
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
