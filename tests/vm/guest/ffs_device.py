"""A misbehaving USB network device of our own: a FunctionFS (usb_f_fs) gadget on dummy_hcd, in Python.

The kernel's gadget functions (f_ncm, f_eem, f_rndis) always behave; to prove what usbnetd does when a device
stalls an endpoint, stops answering control requests or stops taking data, the device has to be ours. Two
kinds, both written from the class specifications (nothing here is taken from the kernel's functions):

* ``eem``: one interface 02/0C/07 with a bulk pair (CDC EEM needs no functional descriptors, which
  FunctionFS would reject). Data packets carry the 0xDEADBEEF sentinel; a transfer that would end on a
  64-byte boundary gets a zero-length EEM packet appended, so the host's transfer always ends short.
* ``rndis``: interface 0 is 02/02/FF with an interrupt IN endpoint (no Union: usbnetd then takes the next
  interface as data), interface 1 is 0A/00/00 with a bulk pair. The minimum of MS-RNDIS: INITIALIZE,
  QUERY (MAC, link speed, media state; the rest NOT_SUPPORTED), SET, KEEPALIVE, RESET, HALT, each with
  RESPONSE_AVAILABLE on the interrupt endpoint; one PACKET_MSG per IN transfer.

Frames go to and from a TAP interface that the test moves into a peer namespace, so traffic crosses USB.

Two halves:

* ``FfsGadget`` (the test's side): builds the configfs gadget with function ``ffs.<instance>``, mounts
  functionfs, starts this file as the device process, binds the UDC, sends it fault commands, tears
  everything down in the order the kernel accepts (unbind, kill, umount, configfs).
* ``main()`` (the device process): writes descriptors and strings to ep0, opens the endpoint files and the
  TAP, runs one thread for ep0 events and one per data direction, and takes commands as JSON lines on
  stdin, answering each with one JSON line on stdout.

Faults (commands):

* ``halt_in``: waits until no IN write is pending (dummy_hcd refuses to halt an IN endpoint with queued
  requests), then read()s the bulk IN endpoint file: FunctionFS halts an endpoint read against its
  direction (the call fails with EBADMSG). The host must clear the halt (CLEAR_FEATURE, which dummy_hcd
  answers itself); until then every bulk IN transfer completes with EPIPE.
* ``halt_out``: the same on bulk OUT (a write() on the OUT endpoint file); it waits for the reader's pending
  read to complete (FunctionFS serialises I/O on one endpoint), so traffic must be flowing.
* ``pause_out`` / ``resume_out``: stop and restart reading bulk OUT (a stuck device: the host's OUT
  transfers stay in flight).
* ``ep0_silent`` (also ``--ep0-silent`` from the start): the next SETUP event is read but never answered
  (no data stage, no status): the host's control transfer times out. ``ep0_answer`` resumes.
* ``stats``: the device's counters.
"""

from __future__ import annotations

import argparse
import collections
import errno
import fcntl
import json
import os
import queue
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

# -- FunctionFS wire formats (include/uapi/linux/usb/functionfs.h) -----------------------------------------

DESCRIPTORS_MAGIC_V2 = 3
STRINGS_MAGIC = 2
HAS_FS_DESC, HAS_HS_DESC = 1, 2
EVENT_SIZE = 12  # struct usb_functionfs_event: 8-byte ctrlrequest, type, 3 pad
EVENT_NAMES = {0: "BIND", 1: "UNBIND", 2: "ENABLE", 3: "DISABLE", 4: "SETUP", 5: "SUSPEND", 6: "RESUME"}
EV_SETUP = 4

BULK, INTERRUPT = 2, 3
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def _interface(number: int, n_eps: int, cls: int, subclass: int, protocol: int) -> bytes:
    return struct.pack("<9B", 9, 4, number, 0, n_eps, cls, subclass, protocol, 0)


def _endpoint(address: int, kind: int, max_packet: int, interval: int = 0) -> bytes:
    return struct.pack("<BBBBHB", 7, 5, address, kind, max_packet, interval)


def descriptors(kind: str) -> bytes:
    """The v2 descriptor blob for ep0: full- and high-speed sets, endpoints in ep1, ep2, ... order."""
    sets = []
    for bulk_mp, int_interval in ((64, 1), (512, 4)):  # full speed, high speed (2**(4-1) microframes = 1 ms)
        if kind == "eem":
            descs = [_interface(0, 2, 0x02, 0x0C, 0x07),
                     _endpoint(0x81, BULK, bulk_mp), _endpoint(0x02, BULK, bulk_mp)]
        elif kind == "rndis":
            descs = [_interface(0, 1, 0x02, 0x02, 0xFF), _endpoint(0x81, INTERRUPT, 8, int_interval),
                     _interface(1, 2, 0x0A, 0x00, 0x00),
                     _endpoint(0x82, BULK, bulk_mp), _endpoint(0x03, BULK, bulk_mp)]
        else:
            raise ValueError(f"unknown kind {kind!r}")
        sets.append(descs)
    body = struct.pack("<II", len(sets[0]), len(sets[1])) + b"".join(b"".join(s) for s in sets)
    return struct.pack("<III", DESCRIPTORS_MAGIC_V2, 12 + len(body), HAS_FS_DESC | HAS_HS_DESC) + body


def strings() -> bytes:
    return struct.pack("<IIII", STRINGS_MAGIC, 16, 0, 0)  # no strings (every iInterface is 0)


# -- the device process -----------------------------------------------------------------------------------

# RNDIS (MS-RNDIS 1.0) message types, status codes and the OIDs this device answers.
PACKET_MSG, INIT_MSG, HALT_MSG, QUERY_MSG, SET_MSG, RESET_MSG, KEEPALIVE_MSG = 1, 2, 3, 4, 5, 6, 8
CMPLT = 0x80000000
ST_SUCCESS, ST_NOT_SUPPORTED = 0, 0xC00000BB
OID_PERMANENT_ADDRESS, OID_CURRENT_ADDRESS = 0x01010101, 0x01010102
OID_LINK_SPEED, OID_MEDIA_CONNECT_STATUS, OID_MAXIMUM_FRAME_SIZE = 0x00010107, 0x00010114, 0x00010106
OID_CURRENT_PACKET_FILTER = 0x0001010E
RESPONSE_AVAILABLE = struct.pack("<II", 1, 0)


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


class Device:
    def __init__(self, mount: Path, kind: str, tap: str, host_mac: bytes, ep0_silent: bool) -> None:
        self.kind = kind
        self.host_mac = host_mac
        self.ep0 = os.open(mount / "ep0", os.O_RDWR)
        os.write(self.ep0, descriptors(kind))
        os.write(self.ep0, strings())
        names = ["ep1", "ep2"] if kind == "eem" else ["ep1", "ep2", "ep3"]
        fds = [os.open(mount / n, os.O_RDWR) for n in names]
        if kind == "eem":
            self.ep_int, (self.ep_in, self.ep_out) = None, fds
        else:
            self.ep_int, self.ep_in, self.ep_out = fds
        self.tap = open_tap(tap)
        self.counts: collections.Counter[str] = collections.Counter()
        self.events: list[str] = []
        self.in_lock = threading.Lock()  # held while a bulk IN write is pending
        self.out_go = threading.Event()
        self.out_go.set()
        self.ep0_answer = threading.Event()
        if not ep0_silent:
            self.ep0_answer.set()
        self.responses: collections.deque[bytes] = collections.deque()
        self.notify_q: queue.Queue[bytes] = queue.Queue()
        self.filter = 0

    def start(self) -> None:
        loops = [self.ep0_loop, self.out_loop, self.in_loop]
        if self.ep_int is not None:
            loops.append(self.notify_loop)
        for fn in loops:
            threading.Thread(target=fn, name=fn.__name__, daemon=True).start()

    # -- ep0 ---------------------------------------------------------------------------------------------
    def ep0_loop(self) -> None:
        while True:
            try:
                buf = os.read(self.ep0, EVENT_SIZE * 4)
            except OSError as exc:
                self.counts[f"ep0_read_{errno.errorcode.get(exc.errno, exc.errno)}"] += 1
                time.sleep(0.05)
                continue
            for off in range(0, len(buf) - EVENT_SIZE + 1, EVENT_SIZE):
                ev = buf[off : off + EVENT_SIZE]
                name = EVENT_NAMES.get(ev[8], str(ev[8]))
                self.counts[f"event_{name}"] += 1
                if ev[8] != EV_SETUP:
                    self.events.append(name)
                    continue
                rt, req, value, index, length = struct.unpack_from("<BBHHH", ev)
                if not self.ep0_answer.is_set():
                    # Read, never answered: no data stage, no status. The host's transfer times out.
                    self.counts["setup_ignored"] += 1
                    self.events.append(f"SETUP {rt:02x}/{req:02x} ignored")
                    self.ep0_answer.wait()
                    break  # that SETUP is gone; the rest of this read is stale
                try:
                    self.setup(rt, req, value, index, length)
                except OSError as exc:
                    self.counts[f"setup_{errno.errorcode.get(exc.errno, exc.errno)}"] += 1

    def stall(self, rt: int) -> None:
        """Halt ep0 for this request: I/O against the request's direction (FunctionFS fails it with EL2HLT)."""
        self.counts["setup_stalled"] += 1
        try:
            if rt & 0x80:
                os.read(self.ep0, 1)
            else:
                os.write(self.ep0, b"\0")
        except OSError:
            pass

    def setup(self, rt: int, req: int, value: int, index: int, length: int) -> None:
        if self.kind == "rndis" and rt == 0x21 and req == 0x00:  # SEND_ENCAPSULATED_COMMAND
            data = os.read(self.ep0, length)
            self.counts["rndis_commands"] += 1
            self.rndis_command(data)
        elif self.kind == "rndis" and rt == 0xA1 and req == 0x01:  # GET_ENCAPSULATED_RESPONSE
            reply = self.responses.popleft() if self.responses else b"\0"
            os.write(self.ep0, reply[:length])
            self.counts["rndis_responses"] += 1
        else:
            self.stall(rt)

    def rndis_command(self, msg: bytes) -> None:
        if len(msg) < 12:
            return
        mtype, _mlen, rid = struct.unpack_from("<III", msg)
        self.events.append(f"RNDIS {mtype:#x}")
        reply = None
        if mtype == INIT_MSG:
            # version 1.0, connectionless 802.3, one packet per transfer of at most 1580 bytes, no alignment
            reply = struct.pack("<13I", INIT_MSG | CMPLT, 52, rid, ST_SUCCESS, 1, 0, 1, 0, 1, 1580, 0, 0, 0)
        elif mtype == QUERY_MSG and len(msg) >= 28:
            oid = struct.unpack_from("<I", msg, 12)[0]
            value = {
                OID_PERMANENT_ADDRESS: self.host_mac,
                OID_CURRENT_ADDRESS: self.host_mac,
                OID_LINK_SPEED: struct.pack("<I", 1_000_000),  # units of 100 bit/s: 100 Mbit/s
                OID_MEDIA_CONNECT_STATUS: struct.pack("<I", 0),  # connected
                OID_MAXIMUM_FRAME_SIZE: struct.pack("<I", 1500),
            }.get(oid)
            if value is None:
                reply = struct.pack("<6I", QUERY_MSG | CMPLT, 24, rid, ST_NOT_SUPPORTED, 0, 0)
            else:
                reply = struct.pack("<6I", QUERY_MSG | CMPLT, 24 + len(value), rid, ST_SUCCESS, len(value), 16)
                reply += value
        elif mtype == SET_MSG and len(msg) >= 28:
            oid, blen, boff = struct.unpack_from("<III", msg, 12)
            if oid == OID_CURRENT_PACKET_FILTER and blen >= 4:
                self.filter = struct.unpack_from("<I", msg, 8 + boff)[0]
            reply = struct.pack("<4I", SET_MSG | CMPLT, 16, rid, ST_SUCCESS)
        elif mtype == KEEPALIVE_MSG:
            self.counts["keepalives"] += 1
            reply = struct.pack("<4I", KEEPALIVE_MSG | CMPLT, 16, rid, ST_SUCCESS)
        elif mtype == RESET_MSG:
            reply = struct.pack("<4I", RESET_MSG | CMPLT, 16, ST_SUCCESS, 0)
        elif mtype == HALT_MSG:
            self.counts["halt_msgs"] += 1
        if reply is not None:
            self.responses.append(reply)
            self.notify_q.put(RESPONSE_AVAILABLE)

    def notify_loop(self) -> None:
        while True:
            note = self.notify_q.get()
            try:
                os.write(self.ep_int, note)  # blocks until the host polls the interrupt endpoint
                self.counts["notifications"] += 1
            except OSError:
                self.counts["notification_errors"] += 1

    # -- data --------------------------------------------------------------------------------------------
    def out_loop(self) -> None:
        while True:
            self.out_go.wait()
            try:
                data = os.read(self.ep_out, 16384)
            except OSError as exc:
                self.counts[f"out_{errno.errorcode.get(exc.errno, exc.errno)}"] += 1
                time.sleep(0.05)
                continue
            self.counts["out_transfers"] += 1
            frames = self.eem_frames(data) if self.kind == "eem" else self.rndis_frames(data)
            for frame in frames:
                try:
                    os.write(self.tap, frame)
                    self.counts["out_frames"] += 1
                except OSError:
                    self.counts["tap_write_errors"] += 1

    def eem_frames(self, data: bytes) -> list[bytes]:
        frames, pos = [], 0
        while pos + 2 <= len(data):
            (hdr,) = struct.unpack_from("<H", data, pos)
            pos += 2
            if hdr == 0:
                continue  # zero-length EEM packet
            if hdr & 0x8000:  # command: echo and echo response carry data
                if (hdr >> 11) & 7 in (0, 1):
                    pos += hdr & 0x7FF
                self.counts["out_commands"] += 1
                continue
            n = hdr & 0x3FFF
            if n < 4 + 14 or pos + n > len(data):
                self.counts["out_malformed"] += 1
                break
            frames.append(data[pos : pos + n - 4])
            pos += n
        return frames

    def rndis_frames(self, data: bytes) -> list[bytes]:
        frames, pos = [], 0
        while pos + 44 <= len(data):
            mtype, mlen, doff, dlen = struct.unpack_from("<IIII", data, pos)
            if mtype != PACKET_MSG or mlen < 44 or pos + mlen > len(data) or 8 + doff + dlen > mlen:
                self.counts["out_malformed"] += 1
                break
            frames.append(data[pos + 8 + doff : pos + 8 + doff + dlen])
            pos += mlen
        return frames

    def in_loop(self) -> None:
        while True:
            frame = os.read(self.tap, 2048)
            if self.kind == "eem":
                packet = struct.pack("<H", len(frame) + 4) + frame + b"\xde\xad\xbe\xef"
                if len(packet) % 64 == 0:
                    packet += b"\0\0"  # zero-length EEM packet: the transfer must end short
            else:
                packet = struct.pack("<11I", PACKET_MSG, 44 + len(frame), 36, len(frame), *(0,) * 7) + frame
                if len(packet) % 64 == 0:
                    packet += b"\0"
            with self.in_lock:
                try:
                    os.write(self.ep_in, packet)  # blocks until the host reads it (or the halt is cleared)
                    self.counts["in_frames"] += 1
                except OSError as exc:
                    self.counts[f"in_{errno.errorcode.get(exc.errno, exc.errno)}"] += 1

    # -- faults ------------------------------------------------------------------------------------------
    def command(self, cmd: str) -> dict:
        if cmd == "stats":
            return {"ok": True, "counts": dict(self.counts), "events": self.events[-50:], "filter": self.filter}
        if cmd == "halt_in":
            if not self.in_lock.acquire(timeout=20):
                return {"ok": False, "error": "a bulk IN write stayed pending for 20 s"}
            try:
                return self._halt(self.ep_in, read=True)
            finally:
                self.in_lock.release()
        if cmd == "halt_out":
            self.out_go.clear()  # the reader stops after its pending read; FunctionFS lets the halt in then
            try:
                return self._halt(self.ep_out, read=False)
            finally:
                self.out_go.set()
        if cmd == "pause_out":
            self.out_go.clear()
            return {"ok": True}
        if cmd == "resume_out":
            self.out_go.set()
            return {"ok": True}
        if cmd == "ep0_silent":
            self.ep0_answer.clear()
            return {"ok": True}
        if cmd == "ep0_answer":
            self.ep0_answer.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _halt(self, fd: int, read: bool) -> dict:
        try:
            os.read(fd, 1) if read else os.write(fd, b"\0")
        except OSError as exc:
            if exc.errno == errno.EBADMSG:  # the halt's own answer
                self.counts["halts"] += 1
                return {"ok": True}
            return {"ok": False, "error": f"halt failed: {exc}"}
        return {"ok": False, "error": "the endpoint took the I/O instead of halting"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mount", required=True, type=Path)
    ap.add_argument("--kind", required=True, choices=("eem", "rndis"))
    ap.add_argument("--tap", required=True)
    ap.add_argument("--host-mac", default="02:00:18:ab:00:01")
    ap.add_argument("--ep0-silent", action="store_true")
    args = ap.parse_args(argv)
    dev = Device(args.mount, args.kind, args.tap, bytes.fromhex(args.host_mac.replace(":", "")), args.ep0_silent)
    dev.start()
    return serve(dev)


def serve(device) -> int:
    """The device process's command loop (also the vendor emulators'): "ready", then one JSON answer per JSON
    command line on stdin."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            reply = device.command(json.loads(line)["cmd"])
        except Exception as exc:  # noqa: BLE001 - report, never die: the test reads the answer
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    return 0


# -- the test's side --------------------------------------------------------------------------------------


class FfsGadget:
    """One FunctionFS gadget and its device process; see the module docstring."""

    VID, PID = 0x1209, 0x0001  # pid.codes' test id: nothing in the guest claims it by id
    SCRIPT = __file__  # the device process; a subclass names its own (ax88179_device.py)
    PRODUCT = "usbnetd misbehaving {kind} device"

    def __init__(self, kind: str, index: int, tap: str, *, ep0_silent: bool = False, log_dir: Path) -> None:
        from . import bench

        self.bench = bench
        self.kind = kind
        self.index = index
        self.name = f"{bench.GADGET_PREFIX}ffs-{index}"
        self.instance = f"usbnetdffs{index}"
        self.path = bench.CONFIGFS / self.name
        self.mount = Path("/run/usbnetd-ffs") / self.instance
        self.serial = f"usbnetd-ffs-{kind}-{index}"
        self.tap = tap
        self.host_mac = f"02:00:18:{0xA0 + index:02x}:00:01"
        self.dev_mac = f"02:00:18:{0xA0 + index:02x}:00:02"
        self.ep0_silent = ep0_silent
        self.extra_args: list[str] = []  # more options for the device process (a subclass's)
        self.log_path = log_dir / f"ffs-{kind}-{index}.log"
        self.proc: subprocess.Popen | None = None
        self._replies: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self.udc: str | None = None

    def create(self) -> FfsGadget:
        b = self.bench
        b.ensure_dummy_hcd()
        if not b.module_loaded("usb_f_fs"):
            b.modprobe("usb_f_fs")
        if self.path.exists():
            self._remove_configfs()
        p = self.path
        p.mkdir()
        for attr, value in (("idVendor", f"0x{self.VID:04x}"), ("idProduct", f"0x{self.PID:04x}"),
                            ("bcdDevice", "0x0100"), ("bcdUSB", "0x0200")):
            b._write(p / attr, value)
        (p / "strings/0x409").mkdir()
        b._write(p / "strings/0x409/serialnumber", self.serial)
        b._write(p / "strings/0x409/manufacturer", "usbnetd bench")
        b._write(p / "strings/0x409/product", self.PRODUCT.format(kind=self.kind))
        cfg = p / "configs/c.1"
        cfg.mkdir()
        b._write(cfg / "MaxPower", "100")
        fn = p / "functions" / f"ffs.{self.instance}"
        fn.mkdir()
        (cfg / fn.name).symlink_to(fn)
        self.mount.mkdir(parents=True, exist_ok=True)
        b.run("mount", "-t", "functionfs", self.instance, str(self.mount))
        cmd = [sys.executable, self.SCRIPT, "--mount", str(self.mount), "--kind", self.kind, "--tap", self.tap,
               "--host-mac", self.host_mac, *(["--ep0-silent"] if self.ep0_silent else []), *self.extra_args]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in destroy()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, bufsize=1)
        threading.Thread(target=self._read_replies, daemon=True).start()
        first = self._reply(60)
        if not first.get("ready"):
            raise b.BenchError(f"FunctionFS device did not start: {first}; {self.stderr()}")
        b.run("ip", "link", "set", self.tap, "address", self.dev_mac)
        return self

    def _read_replies(self) -> None:
        for line in self.proc.stdout:
            self._replies.put(line)
        self._replies.put("")

    def _reply(self, timeout: float) -> dict:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise self.bench.BenchError(f"the FunctionFS device gave no answer in {timeout}s") from None
        if not line:
            raise self.bench.BenchError(f"the FunctionFS device exited: {self.stderr()}")
        return json.loads(line)

    def command(self, cmd: str, timeout: float = 30) -> dict:
        """Send one command to the device process; raise BenchError unless it answered ok."""
        with self._lock:
            self.proc.stdin.write(json.dumps({"cmd": cmd}) + "\n")
            self.proc.stdin.flush()
            reply = self._reply(timeout)
        if not reply.get("ok"):
            raise self.bench.BenchError(f"device command {cmd}: {reply.get('error')}")
        return reply

    def stats(self) -> dict:
        return self.command("stats")

    def stderr(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def bind(self, timeout: float = 20) -> str:
        self.udc = self.bench.free_udc()
        self.bench._write(self.path / "UDC", self.udc)
        return self.bench.wait_for(lambda: self.busid, timeout, f"{self.name} to enumerate")

    @property
    def busid(self) -> str | None:
        return self.bench.find_usb_device(self.VID, self.PID, self.serial)

    def unbind(self, timeout: float = 20) -> None:
        """Unplug: take the gadget off its UDC and wait until the host has seen it go."""
        self.bench._write(self.path / "UDC", "")
        self.bench.wait_for(lambda: self.busid is None, timeout, f"{self.name} to disappear")

    def _remove_configfs(self) -> None:
        self.bench.Gadget._remove_tree(self.path)

    def destroy(self) -> None:
        b = self.bench
        if self.path.exists() and b._read(self.path / "UDC"):
            b._write(self.path / "UDC", "")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.proc is not None:
            self._log.close()
        if os.path.ismount(self.mount):
            b.run("umount", str(self.mount))
        if self.path.exists():
            self._remove_configfs()
        if self.mount.exists():
            self.mount.rmdir()


if __name__ == "__main__":
    sys.exit(main())
