"""What the bench's vendor-chip emulators share: the device process's frame around a chip on FunctionFS.

The AX88179 (``ax88179_device.py``), RTL8153 (``r8152_device.py``) and iPhone (``ipheth_device.py``) emulators
each model one chip's requests and framing; this module is the rest, written once:

* ``VendorChip``: opens ep0 (descriptors, strings), the endpoint files and the TAP that is the chip's wire;
  runs the ep0 event loop (SETUP events to the chip's ``setup()``, the others counted), the link
  notification loop for chips with an interrupt endpoint, and the data loops the chip defines; takes
  commands (``stats`` and the switches below) as JSON lines, as ``ffs_device.py`` does.
* the fault switches every chip honours, as commands and as options from the start: ``ep0_silent`` /
  ``ep0_answer`` (SETUP read, never answered), ``ep0_stall`` / ``ep0_normal`` (every request stalls),
  ``garbage`` / ``sane`` (every read answers one byte short, 0xA5 filler), ``int_silent`` / ``int_talk`` (the
  link status is never sent), ``cable_out`` / ``cable_in``, and the one-shot ``stall_next`` /
  ``garbage_next`` (only the chip's "first request of a driver" stalls / answers short, so that a driver
  that comes after is served sanely; each chip says which request that is);
* ``main()``: the device process's arguments and command loop; ``VendorGadget``: the test's side, an
  ``FfsGadget`` whose device process is the chip's file, with the fault options.
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

if __package__:
    from . import ffs_device as ffs
else:  # run as a script (the device process) or loaded by path (the core tier): the neighbours sit here
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ffs_device as ffs  # type: ignore[no-redef]


def errname(exc: OSError) -> str:
    return str(errno.errorcode.get(exc.errno, exc.errno))


class VendorChip:
    """The device process for one chip; subclasses define ``setup()``, the data loops and ``registers()``.

    ``ep_names`` maps attributes to endpoint files (``{"ep_in": 1, "ep_out": 2, "ep_int": 8}``: the files are
    numbered in the order the full-speed set names the endpoints)."""

    def __init__(self, mount: Path, tap: str, descriptors: bytes, ep_names: dict[str, int], *, cable: bool = True,
                 ep0_silent: bool = False, ep0_stall: bool = False, garbage: bool = False,
                 int_silent: bool = False) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.events: collections.deque[str] = collections.deque(maxlen=200)
        self.lock = threading.Lock()  # the chip's state: ep0 writes it, the data threads read it
        self.link_event = threading.Event()  # wakes the notification loop at once on a change
        self.cable = cable
        self.ep0 = os.open(mount / "ep0", os.O_RDWR)
        os.write(self.ep0, descriptors)
        os.write(self.ep0, ffs.strings())
        self.ep_int: int | None = None
        for attr, number in ep_names.items():
            setattr(self, attr, os.open(mount / f"ep{number}", os.O_RDWR))
        self.tap = ffs.open_tap(tap)
        os.set_blocking(self.tap, False)
        self.ep0_answer = threading.Event()
        if not ep0_silent:
            self.ep0_answer.set()
        self.ep0_stall = ep0_stall
        self.garbage = garbage
        self.int_silent = int_silent
        self.stall_next = False
        self.garbage_next = False
        self.reported_link: bool | None = None

    # -- ep0 --------------------------------------------------------------------------------------------
    def ep0_loop(self) -> None:
        while True:
            try:
                buf = os.read(self.ep0, ffs.EVENT_SIZE * 4)
            except OSError as exc:
                self.counts[f"ep0_{errname(exc)}"] += 1
                time.sleep(0.05)
                continue
            for off in range(0, len(buf) - ffs.EVENT_SIZE + 1, ffs.EVENT_SIZE):
                ev = buf[off : off + ffs.EVENT_SIZE]
                if ev[8] != ffs.EV_SETUP:
                    name = ffs.EVENT_NAMES.get(ev[8], str(ev[8]))
                    self.counts[f"event_{name}"] += 1
                    self.events.append(name)
                    self.on_event(name)
                    continue
                rt, req, value, index, length = struct.unpack_from("<BBHHH", ev)
                if not self.ep0_answer.is_set():
                    self.counts["setup_ignored"] += 1
                    self.events.append(f"SETUP {rt:02x}/{req:02x} ignored")
                    self.ep0_answer.wait()
                    break  # that SETUP is gone; the rest of this read is stale
                try:
                    self.setup(rt, req, value, index, length)
                except OSError as exc:
                    self.counts[f"setup_{errname(exc)}"] += 1

    def on_event(self, name: str) -> None:
        """A FunctionFS event other than SETUP (ENABLE, DISABLE, ...)."""

    def stall(self, rt: int) -> None:
        """Halt ep0 for this request: I/O against the request's direction (FunctionFS fails it with EL2HLT)."""
        self.counts["setup_stalled"] += 1
        try:
            os.read(self.ep0, 1) if rt & 0x80 else os.write(self.ep0, b"\0")
        except OSError:
            pass

    def one_shot(self, first_request: bool) -> tuple[bool, bool]:
        """(stall it, answer it short) for this request: the one-shot faults hit a driver's first request."""
        stall = self.stall_next and first_request
        short = self.garbage_next and first_request and not stall
        if stall:
            self.stall_next = False
            self.events.append("stall once")
        if short:
            self.garbage_next = False
            self.events.append("garbage once")
        return stall, short

    def answer(self, data: bytes, short: bool = False) -> None:
        """The data stage of a read: the chip's bytes, or (garbage) one byte less of filler."""
        self.counts["vendor_reads"] += 1
        if self.garbage or short:
            data = b"\xa5" * max(0, len(data) - 1)
        os.write(self.ep0, data)

    def setup(self, rt: int, req: int, value: int, index: int, length: int) -> None:
        raise NotImplementedError

    # -- link notification (chips with an interrupt endpoint) ----------------------------------------------
    def link_up(self) -> bool:
        return self.cable

    def link_note(self, up: bool) -> bytes:
        """The interrupt transfer that reports `up`."""
        raise NotImplementedError

    def notify_loop(self) -> None:
        """The link status on every change and once a second while the host polls (unless int_silent)."""
        while True:
            if self.int_silent:
                self.link_event.wait(1.0)
                self.link_event.clear()
                continue
            with self.lock:
                up = self.link_up()
            try:
                os.write(self.ep_int, self.link_note(up))  # blocks until the host polls
                self.counts["notifications"] += 1
                if up != self.reported_link:
                    self.events.append(f"interrupt: link {int(up)}")
                self.reported_link = up
            except OSError as exc:
                self.counts[f"int_{errname(exc)}"] += 1
                time.sleep(0.2)
                continue
            self.link_event.wait(1.0)
            self.link_event.clear()

    # -- commands ---------------------------------------------------------------------------------------
    def set_cable(self, cable: bool) -> None:
        self.cable = cable

    def registers(self) -> dict:
        return {}

    def commands(self) -> dict[str, Callable[[], object]]:
        return {
            "cable_out": lambda: self.set_cable(False), "cable_in": lambda: self.set_cable(True),
            "ep0_silent": self.ep0_answer.clear, "ep0_answer": self.ep0_answer.set,
            "ep0_stall": lambda: setattr(self, "ep0_stall", True),
            "ep0_normal": lambda: setattr(self, "ep0_stall", False),
            "garbage": lambda: setattr(self, "garbage", True), "sane": lambda: setattr(self, "garbage", False),
            "int_silent": lambda: setattr(self, "int_silent", True),
            "int_talk": lambda: setattr(self, "int_silent", False),
            "stall_next": lambda: setattr(self, "stall_next", True),
            "garbage_next": lambda: setattr(self, "garbage_next", True),
        }

    def command(self, cmd: str) -> dict:
        if cmd == "stats":
            with self.lock:
                regs = self.registers()
            return {"ok": True, "counts": dict(self.counts), "events": list(self.events)[-60:], "registers": regs}
        simple = self.commands()
        if cmd in simple:
            with self.lock:
                simple[cmd]()
            self.events.append(f"command {cmd}")
            self.link_event.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def loops(self) -> list[Callable[[], None]]:
        loops = [self.ep0_loop, self.out_loop, self.in_loop]
        if self.ep_int is not None:
            loops.append(self.notify_loop)
        return loops

    def out_loop(self) -> None:
        raise NotImplementedError

    def out_transfers(self):
        """Each bulk OUT transfer as the host sends it (a failed read is counted and waited out)."""
        while True:
            try:
                data = os.read(self.ep_out, 65536)
            except OSError as exc:
                self.counts[f"out_{errname(exc)}"] += 1
                time.sleep(0.05)
                continue
            self.counts["out_transfers"] += 1
            yield data

    def send_in(self, packet: bytes, frames: int) -> None:
        """One bulk IN transfer carrying `frames` frames; blocks until the host reads it."""
        try:
            os.write(self.ep_in, packet)
            self.counts["in_transfers"] += 1
            self.counts["in_frames"] += frames
        except OSError as exc:
            self.counts[f"in_{errname(exc)}"] += 1
            time.sleep(0.05)  # unplugged or halted: do not spin

    def in_loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        for loop in self.loops():
            threading.Thread(target=loop, name=loop.__name__, daemon=True).start()


def main(argv: list[str] | None, kind: str, description: str,
         make: Callable[[argparse.Namespace, bytes], VendorChip],
         more: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """The device process: arguments, the chip's threads, then one JSON answer per command line on stdin."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--mount", required=True, type=Path)
    ap.add_argument("--kind", default=kind, choices=(kind,))
    ap.add_argument("--tap", required=True)
    ap.add_argument("--host-mac", default="02:00:18:ab:00:01", help="the MAC the chip gives the host")
    for flag in ("--ep0-silent", "--ep0-stall", "--garbage", "--no-cable", "--int-silent"):
        ap.add_argument(flag, action="store_true")
    if more is not None:
        more(ap)
    args = ap.parse_args(argv)
    chip = make(args, bytes.fromhex(args.host_mac.replace(":", "")))
    chip.start()
    return ffs.serve(chip)


def fault_kwargs(args: argparse.Namespace) -> dict:
    """VendorChip's fault keywords from main()'s options."""
    return {"cable": not args.no_cable, "ep0_silent": args.ep0_silent, "ep0_stall": args.ep0_stall,
            "garbage": args.garbage, "int_silent": args.int_silent}


class VendorGadget(ffs.FfsGadget):
    """An emulated chip as a gadget: FfsGadget's configfs and process handling, the chip's file as the device.
    Subclasses set VID, PID, SCRIPT (their ``__file__``), PRODUCT and KIND."""

    KIND = "?"

    def __init__(self, index: int, tap: str, *, log_dir: Path, cable: bool = True, ep0_silent: bool = False,
                 ep0_stall: bool = False, garbage: bool = False, int_silent: bool = False,
                 extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(self.KIND, index, tap, ep0_silent=ep0_silent, log_dir=log_dir)
        self.extra_args = [*(["--no-cable"] if not cable else []), *(["--ep0-stall"] if ep0_stall else []),
                           *(["--garbage"] if garbage else []), *(["--int-silent"] if int_silent else []),
                           *extra_args]
