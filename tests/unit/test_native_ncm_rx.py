"""The C RX path (usbnetd.native._fastpath.NcmRx) against the Python reference, input by input.

The reference is what the data path runs today: per transfer `TapPort.rx_begin`, `NtbDecoder.decode(view,
length, port.emit)` (or `OneFramePerTransfer.rx_decode` for ECM), and `TapPort.rx_end` once per batch, with GRO
on and off. The native side gets a byte-identical copy of every transfer. Each side writes to its own
SOCK_SEQPACKET socket pair standing in for the TAP (one message per write/writev, so every test sees exactly the
frames the TAP would get, vnet header included, in order). Asserted equal, for every input: the messages, every
Stats counter, the GRO counters, what decode returned, and the transfer buffers afterwards (GRO rewrites a
super-frame's first headers in place).

Inputs: NTB16/NTB32 built with `build_ntb` (TCP runs that merge, and every reason a run must not: flags, gaps,
options, flows, corrupted checksums in the IP header, the TCP header, the payload, of the first segment or a
later one), runs spanning the transfers of a batch, the malformed NTBs of test_ncm_codec, every truncated
length, bytes past `length` poisoned, seeded random mutations with checksums repaired so GRO stays reachable,
write failures (reader gone, queue full), and ECM's one frame per transfer.

Without the extension these tests skip and say why (`usbnetd.native.WHY_NOT`), except
`test_the_extension_is_built_in_ci`, which fails under CI=true so CI cannot lose the C path silently.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import socket
import struct
import subprocess
import sys
import types

import pytest
from test_ncm_codec import _set16, _set32, ntb16_two_ndps, ntb32_two_ndps

from usbnetd import native
from usbnetd.core.stats import COUNTERS, Stats
from usbnetd.netdev import gro as pygro
from usbnetd.netdev.port import TapPort
from usbnetd.protocols import ax88179_codec as axc
from usbnetd.protocols import ncm_codec as nc
from usbnetd.protocols.driver import OneFramePerTransfer


def test_the_extension_is_built_in_ci() -> None:
    """CI must run the C path: a build that silently fell back to Python fails here."""
    if os.environ.get("CI") == "true":
        assert native.AVAILABLE, f"CI=true but the C extension is not available: {native.WHY_NOT}"
    elif not native.AVAILABLE:
        pytest.skip(f"not under CI=true, and the C extension is not available: {native.WHY_NOT}")
    assert native.WHY_NOT is None and native.NcmRx is not None


def test_pure_python_can_be_forced() -> None:
    code = "import usbnetd.native as n; print(n.AVAILABLE, n.NcmRx is None, n.WHY_NOT)"
    env = dict(os.environ, USBNETD_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False True forced: USBNETD_PURE_PYTHON=1"
    # "0" forces nothing: the same as the variable unset (which this process may not be: the unit tier also
    # runs with USBNETD_PURE_PYTHON=1 to test the Python path).
    env.pop("USBNETD_PURE_PYTHON")
    unset = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    env["USBNETD_PURE_PYTHON"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out == unset and "forced" not in out


def test_a_stale_build_is_refused() -> None:
    """An in-place build older than the C source (pip install -e not rerun) must not be used."""
    code = ("import sys, types; m = types.ModuleType('usbnetd.native._fastpath'); m.API_VERSION = 0; "
            "sys.modules['usbnetd.native._fastpath'] = m; import usbnetd.native as n; print(n.AVAILABLE, n.WHY_NOT)")
    env = {k: v for k, v in os.environ.items() if k != "USBNETD_PURE_PYTHON"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("False usbnetd.native._fastpath is a stale build (API 0, this source wants"), out


def test_python_completions_can_be_forced() -> None:
    """USBNETD_NATIVE_COMPLETIONS=0: the libusb transport arms nothing (the C code still decodes)."""
    code = ("import usbnetd.native as n; from usbnetd.usb.engine import LibusbTransport as T; "
            "t = T.__new__(T); t._rx = object(); t._stopping = False; t._armed = None; "
            "print(n.COMPLETIONS, t.arm_native_rx(None, 'ntb'))")
    env = dict(os.environ, USBNETD_NATIVE_COMPLETIONS="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    env["USBNETD_NATIVE_COMPLETIONS"] = "1"
    code = "import usbnetd.native as n; print(n.COMPLETIONS)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


WITHOUT_NATIVE = {"test_the_extension_is_built_in_ci", "test_pure_python_can_be_forced",
                  "test_a_stale_build_is_refused", "test_python_completions_can_be_forced"}


@pytest.fixture(autouse=True)
def _needs_native(request: pytest.FixtureRequest) -> None:
    if not native.AVAILABLE and request.function.__name__ not in WITHOUT_NATIVE:
        pytest.skip(f"C extension not available: {native.WHY_NOT}")

# --- frames ----------------------------------------------------------------------------------------------

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
SRC, DST = bytes([198, 18, 9, 1]), bytes([198, 18, 9, 2])
MAX_DG = 1514


def csum(data: bytes) -> int:
    """RFC 1071 one's complement checksum, written plainly."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_frame(seq: int, payload: bytes, *, flags: int = 0x10, ack: int = 7, sport: int = 5001, dport: int = 40000,
              options: bytes = b"", ttl: int = 64, tos: int = 0, ip_id: int = 1, frag: int = 0x4000,
              pad_to: int = 0, src: bytes = SRC, dst: bytes = DST, window: int = 502, urgent: int = 0,
              macs: bytes = MAC_B + MAC_A, bad_ip: bool = False, bad_tcp: bool = False) -> bytes:
    thl = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, (thl // 4) << 4, flags, window, 0,
                      urgent) + options
    pseudo = src + dst + struct.pack("!BBH", 0, 6, thl + len(payload))
    check = csum(pseudo + tcp + payload) ^ (0x0101 if bad_tcp else 0)
    tcp = tcp[:16] + struct.pack("!H", check) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + thl + len(payload), ip_id, frag, ttl, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip) ^ (0x0202 if bad_ip else 0)) + ip[12:]
    frame = macs + b"\x08\x00" + ip + tcp + payload
    return frame + bytes(max(0, pad_to - len(frame)))


def udp_frame(n: int, tag: int = 0) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + n, 0, 0x4000, 64, 17, 0, SRC, DST)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return MAC_B + MAC_A + b"\x08\x00" + ip + struct.pack("!HHHH", 1, 2, 8 + n, 0) + bytes((tag + i) & 0xFF
                                                                                           for i in range(n))


SRC6 = bytes.fromhex("20010002000000000000000000090001")  # 2001:2::/48, RFC 5180's benchmarking range
DST6 = bytes.fromhex("20010002000000000000000000090002")


def tcp6_frame(seq: int, payload: bytes, *, flags: int = 0x10, ack: int = 7, sport: int = 5001, dport: int = 40000,
               options: bytes = b"", hop: int = 64, tclass: int = 0, flow: int = 0x12345, pad_to: int = 0,
               src: bytes = SRC6, dst: bytes = DST6, window: int = 502, nexthdr: int = 6, ext: bytes = b"",
               macs: bytes = MAC_B + MAC_A, bad_tcp: bool = False, plen_delta: int = 0) -> bytes:
    """Ethernet + IPv6 (RFC 8200 §3) + TCP with its checksum over the RFC 8200 §8.1 pseudo-header; `ext`:
    extension header bytes between the IPv6 header and TCP (`nexthdr` then names the first of them)."""
    thl = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, (thl // 4) << 4, flags, window, 0,
                      0) + options
    pseudo = src + dst + struct.pack("!IxxxB", thl + len(payload), 6)
    check = csum(pseudo + tcp + payload) ^ (0x0101 if bad_tcp else 0)
    tcp = tcp[:16] + struct.pack("!H", check) + tcp[18:]
    ip = struct.pack("!IHBB", 6 << 28 | tclass << 20 | flow, len(ext) + thl + len(payload) + plen_delta, nexthdr,
                     hop) + src + dst
    frame = macs + b"\x86\xdd" + ip + ext + tcp + payload
    return frame + bytes(max(0, pad_to - len(frame)))


def run(n: int, size: int, *, seq: int = 1000, v6: bool = False, **kw) -> list[bytes]:
    """n back-to-back segments of one flow, `size` payload bytes each (over IPv6 with v6)."""
    out = []
    for i in range(n):
        out.append((tcp6_frame if v6 else tcp_frame)(seq, bytes([(i * 7 + 1) & 0xFF]) * size, **kw))
        seq += size
    return out


def udp6_frame(n: int, tag: int = 0, bad: bool = False) -> bytes:
    pl = bytes((tag + i) & 0xFF for i in range(n))
    udp = struct.pack("!HHHH", 1, 2, 8 + n, 0) + pl
    c = csum(SRC6 + DST6 + struct.pack("!IxxxB", len(udp), 17) + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c ^ (0x0404 if bad else 0)) + udp[8:]
    return MAC_B + MAC_A + b"\x86\xdd" + struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + SRC6 + DST6 + udp


# --- the two paths -----------------------------------------------------------------------------------------


class Tap:
    """A socket pair standing in for the TAP: the writer non-blocking (a TAP fd is), a big send buffer."""

    def __init__(self, sndbuf: int = 64 << 20) -> None:
        self.w, self.r = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.w.setblocking(False)
        self.r.setblocking(False)
        try:
            self.w.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_SNDBUFFORCE", 32), sndbuf)
        except OSError:
            self.w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)

    def drain(self) -> list[bytes]:
        out = []
        while True:
            try:
                m, _, flags, _ = self.r.recvmsg(1 << 18)
            except BlockingIOError:
                return out
            assert not flags & socket.MSG_TRUNC
            out.append(m)

    def close(self) -> None:
        self.w.close()
        self.r.close()


Batch = list[tuple[bytes, int]]  # (transfer bytes, length)


class Side:
    """One path (reference or native) with its own TAP; `batch()` decodes a batch of transfers and returns
    what decode returned and the buffers afterwards."""

    def __init__(self, gro: bool, max_dg: int = MAX_DG, ecm: bool = False, tap: Tap | None = None,
                 ax: bool = False) -> None:
        self.tap = tap or Tap()
        self.gro = gro
        self.ecm = ecm
        self.ax = ax  # ASIX AX88179 aggregates (decode_ax88179 against ax88179_codec.RxDecoder)
        self.stats = Stats()

    def close(self) -> None:
        self.tap.close()


class Reference(Side):
    def __init__(self, gro: bool, max_dg: int = MAX_DG, ecm: bool = False, tap: Tap | None = None,
                 ax: bool = False) -> None:
        super().__init__(gro, max_dg, ecm, tap, ax)
        self.port = TapPort(self.tap.w.fileno(), self.stats, max_frame=max_dg, gro=gro)
        self.dec = axc.RxDecoder(self.stats, max_dg) if ax else nc.NtbDecoder(self.stats, max_datagram=max_dg)
        self.drv = types.SimpleNamespace(stats=self.stats, max_frame=max_dg)

    def batch(self, transfers: Batch) -> tuple[list[int], list[bytearray]]:
        bufs, got = [], []
        for data, length in transfers:
            buf = bytearray(data)
            view = memoryview(buf)
            bufs.append(buf)
            self.port.rx_begin(view)
            if self.ecm:
                got.append(OneFramePerTransfer.rx_decode(self.drv, view, length, self.port))  # type: ignore[arg-type]
            else:
                got.append(self.dec.decode(view, length, self.port.emit))
        self.port.rx_end()
        return got, bufs

    def gro_counters(self) -> tuple[int, int, int]:
        g = self.port.gro_stats
        return g["superframes"], g["segments"], g["unverified"]


def guarded(data: bytes) -> memoryview:
    """A writable copy of `data` that ends right where an inaccessible page starts: reading or writing even one
    byte past it faults (SIGSEGV) at once."""
    page = mmap.PAGESIZE
    size = max(page, -(-len(data) // page) * page)
    m = mmap.mmap(-1, size + page)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    assert libc.mprotect(addr + size, page, 0) == 0, "mprotect(PROT_NONE)"
    m[size - len(data) : size] = data
    return memoryview(m)[size - len(data) : size]  # keeps the mapping alive


class Native(Side):
    """exact=True: every transfer in a buffer of exactly `length` bytes followed by an inaccessible page."""

    def __init__(self, gro: bool, max_dg: int = MAX_DG, ecm: bool = False, tap: Tap | None = None,
                 exact: bool = False, ax: bool = False) -> None:
        super().__init__(gro, max_dg, ecm, tap, ax)
        self.rx = native.NcmRx(self.tap.w.fileno(), pygro.VNET_HDR_LEN if gro else 0, gro, max_dg)
        self.failed_writes = 0
        self.exact = exact

    def batch(self, transfers: Batch) -> tuple[list[int], list[bytearray]]:
        bufs: list[bytearray | memoryview] = []
        got, tails = [], []
        decode = self.rx.decode_frame if self.ecm else self.rx.decode_ax88179 if self.ax else self.rx.decode
        for data, length in transfers:
            if self.exact:
                keep = max(0, min(length, len(data)))
                view = guarded(data[:keep])
                got.append(decode(view, length if length <= len(data) else keep))
                bufs.append(view)
                tails.append(data[keep:])
                continue
            buf = bytearray(data)
            bufs.append(buf)
            tails.append(b"")
            got.append(decode(buf, length))
        self.rx.flush()
        self.failed_writes += self.rx.add_to(self.stats)
        # the bytes past `length` the exact buffers left out, put back for the comparison with the reference
        return got, [bytearray(b) + t for b, t in zip(bufs, tails, strict=True)]

    def gro_counters(self) -> tuple[int, int, int]:
        return self.rx.superframes, self.rx.merged, self.rx.unverified


def differential(batches: list[Batch], gro: bool, max_dg: int = MAX_DG, ecm: bool = False,
                 ax: bool = False) -> list[bytes]:
    """Run every batch through the reference and twice through the native path (copies of the transfers as
    given, poisoned tails included; then exact-size guarded buffers); assert everything observable is
    identical. Returns the reference's messages."""
    ref = Reference(gro, max_dg, ecm, ax=ax)
    nats = [Native(gro, max_dg, ecm, ax=ax), Native(gro, max_dg, ecm, exact=True, ax=ax)]
    try:
        everything = []
        for i, b in enumerate(batches):
            if ecm:  # the transport never reports more than the buffer (see the test below for that case)
                b = [(d, min(n, len(d))) for d, n in b]
            r_got, r_bufs = ref.batch(b)
            r_msgs = ref.tap.drain()
            for nat in nats:
                what = f"batch {i}{' (exact-size buffers)' if nat.exact else ''}"
                n_got, n_bufs = nat.batch(b)
                n_msgs = nat.tap.drain()
                assert len(n_msgs) == len(r_msgs), f"{what}: {len(n_msgs)} messages, reference {len(r_msgs)}"
                for k, (n, r) in enumerate(zip(n_msgs, r_msgs, strict=True)):
                    assert n == r, f"{what}, message {k}: {_diff(n, r)}"
                assert n_got == r_got, f"{what}: decode returned {n_got}, reference {r_got}"
                assert n_bufs == r_bufs, f"{what}: the transfer buffers differ afterwards"
                assert nat.stats.as_dict() == ref.stats.as_dict(), f"{what}: counters differ"
                assert nat.gro_counters() == ref.gro_counters(), f"{what}: GRO counters differ"
            everything += r_msgs
        for nat in nats:
            assert nat.failed_writes == ref.port.write_errors.count
            c = nat.rx.counters()
            assert {k: c[k] for k in COUNTERS if k in c} == {k: v for k, v in ref.stats.as_dict().items() if k in c}
        return everything
    finally:
        ref.close()
        for nat in nats:
            nat.close()


def _diff(a: bytes, b: bytes) -> str:
    if len(a) != len(b):
        return f"length {len(a)} != {len(b)}"
    i = next(i for i in range(len(a)) if a[i] != b[i])
    return f"first difference at byte {i}: {a[i]:#x} != {b[i]:#x}"


# --- built NTBs ---------------------------------------------------------------------------------------------

def double_carry_run() -> list[bytes]:
    """Three segments whose super-frame sums carry twice when folded (gro._fold folds twice, so must the C):
    the pseudo-header sum is 0x3FFFF, and the IP ID makes the new IP header's sum carry twice as well."""
    n, size = 3, 700
    tcp_len = 20 + n * size
    src = b"\xff\xff\xff\xff"
    dst = b"\xff\xff" + struct.pack("!H", 0xFFFC - tcp_len)  # 3 * 0xFFFF + x + 6 + tcp_len == 0x3FFFF
    words = [0x4500, 20 + tcp_len, 0, 0x4000, 0xFF06, 0, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFC - tcp_len]
    ip_id = next(i for i in range(1 << 16) if (lambda t: (t & 0xFFFF) + (t >> 16) > 0xFFFF)(sum(words) + i))
    return run(n, size, src=src, dst=dst, ttl=255, ip_id=ip_id)


TS = b"\x01\x01\x08\x0a" + struct.pack("!II", 5, 6)
SCENARIOS: dict[str, list[bytes]] = {
    "run-11x1400": run(11, 1400),
    "run-then-udp-then-run": run(4, 1000) + [udp_frame(300)] + run(4, 1000, seq=5000),
    "short-last-closes": run(3, 800) + run(1, 300, seq=3400) + run(2, 800, seq=3700),
    "psh-closes-and-is-kept": run(2, 700) + [tcp_frame(2400, b"p" * 700, flags=0x18)] + run(2, 700, seq=3100),
    "psh-first": [tcp_frame(0, b"p" * 700, flags=0x18)] + run(2, 700, seq=700),
    "seq-gap": run(2, 500) + run(2, 500, seq=9000),
    "ack-changes": run(2, 600) + run(2, 600, seq=2200, ack=9),
    "two-flows-interleaved": [f for pair in zip(run(4, 600), run(4, 600, sport=6000), strict=True) for f in pair],
    "ttl-tos-mac-addr": [run(1, 400)[0], tcp_frame(1400, b"t" * 400, ttl=63), tcp_frame(1800, b"t" * 400, tos=4),
                         tcp_frame(2200, b"t" * 400, macs=MAC_A + MAC_B), tcp_frame(2600, b"t" * 400,
                                                                                      src=bytes([10, 0, 0, 1]))],
    "equal-options": run(4, 600, options=TS),
    "different-options": [tcp_frame(0, b"o" * 600, options=TS),
                          tcp_frame(600, b"o" * 600, options=TS[:-1] + b"\x07")],
    "control-flags": [tcp_frame(i * 400, b"c" * 400, flags=f) for i, f in
                      enumerate((0x10, 0x11, 0x10, 0x12, 0x10, 0x14, 0x10, 0x30, 0x10, 0x50, 0x10, 0x90, 0x10))],
    "fragments": [tcp_frame(0, b"f" * 500), tcp_frame(500, b"f" * 500, frag=0x2000),
                  tcp_frame(1000, b"f" * 500, frag=0x0001), tcp_frame(1500, b"f" * 500, frag=0x8000),
                  tcp_frame(2000, b"f" * 500, frag=0)],
    "bad-ip-first": [tcp_frame(0, b"i" * 900, bad_ip=True)] + run(3, 900, seq=900),
    "bad-ip-third": run(2, 900) + [tcp_frame(1800, b"i" * 900, bad_ip=True)] + run(2, 900, seq=2700),
    "bad-tcp-first": [tcp_frame(0, b"x" * 900, bad_tcp=True)] + run(3, 900, seq=900),
    "bad-tcp-second": run(1, 900) + [tcp_frame(900, b"x" * 900, bad_tcp=True)] + run(2, 900, seq=1800),
    "bad-tcp-last": run(3, 900) + [tcp_frame(2700, b"x" * 900, bad_tcp=True)],
    "bad-everywhere": [tcp_frame(i * 700, b"b" * 700, bad_tcp=i % 2 == 1) for i in range(6)],
    "odd-lengths": run(3, 999) + run(2, 333, seq=5000) + run(2, 1001, seq=6000),
    "padded-candidates": [tcp_frame(0, b"d" * 220, pad_to=300), tcp_frame(220, b"d" * 220, pad_to=300),
                          tcp_frame(440, b"d" * 220, pad_to=400), tcp_frame(660, b"d" * 100, pad_to=300)],
    "lone-padded-candidate": [tcp_frame(0, b"l" * 250, pad_to=400), udp_frame(64)],
    "small-frames": [tcp_frame(i * 100, b"m" * 100) for i in range(5)] + [udp_frame(18, i) for i in range(5)],
    "ipv6-arp-vlan": [b"\xff" * 12 + b"\x86\xdd" + bytes(400), b"\xff" * 12 + b"\x08\x06" + bytes(28),
                      b"\xff" * 12 + b"\x81\x00" + bytes(400)] + run(2, 600),
    "ip-options": [tcp_frame(0, b"o" * 500)[:14] + b"\x46" + tcp_frame(0, b"o" * 500)[15:]] + run(2, 500),
    "seq-wraps": run(4, 1000, seq=0xFFFFFC00),
    "zero-window-urgent-nonzero": run(2, 600, urgent=5, window=0),
    "max-segments": run(70, 260),
    "max-ip-len": run(12, 1460, seq=1) + run(40, 1460, seq=1 + 12 * 1460),
    # 40 + 44 * 1460 + 1255 = 0xFFFF exactly: still one run; one byte more and the last segment starts another
    "ip-len-exactly-max": run(44, 1460) + run(1, 1255, seq=1000 + 44 * 1460),
    "ip-len-one-over": run(44, 1460) + run(1, 1256, seq=1000 + 44 * 1460),
    "candidates-of-256-bytes": run(3, 256 - 54) + run(3, 255 - 54, seq=9000),
    "one-key-field-at-a-time": [tcp_frame(1000 + 400 * i, b"k" * 400, **kw) for i, kw in enumerate(
        [{}, {"ttl": 63}, {}, {"tos": 4}, {}, {"macs": MAC_A + MAC_B}, {}, {"macs": MAC_B + MAC_B}, {},
         {"src": bytes([10, 0, 0, 1])}, {}, {"dst": bytes([10, 0, 0, 2])}, {}, {"sport": 1}, {}, {"dport": 1}, {},
         {"ack": 8}, {}, {"options": TS}, {}])],
    "double-carry": double_carry_run(),
    # TCP over IPv6: ipv6_gro_receive's key, the RFC 8200 §8.1 pseudo-header, GSO_TCPV6
    "v6-run-11x1400": run(11, 1400, v6=True),
    "v6-run-then-udp6-then-run": run(4, 1000, v6=True) + [udp6_frame(300)] + run(4, 1000, seq=5000, v6=True),
    "v6-short-last-closes": run(3, 800, v6=True) + run(1, 300, seq=3400, v6=True) + run(2, 800, seq=3700, v6=True),
    "v6-psh-closes": run(2, 700, v6=True) + [tcp6_frame(2400, b"p" * 700, flags=0x18)] + run(2, 700, seq=3100,
                                                                                             v6=True),
    "v6-equal-options": run(4, 600, options=TS, v6=True),
    "v6-different-options": [tcp6_frame(0, b"o" * 600, options=TS), tcp6_frame(600, b"o" * 600,
                                                                               options=TS[:-1] + b"\x07")],
    "v6-one-key-field-at-a-time": [tcp6_frame(1000 + 400 * i, b"k" * 400, **kw) for i, kw in enumerate(
        [{}, {"hop": 63}, {}, {"tclass": 4}, {}, {"flow": 0x54321}, {}, {"macs": MAC_A + MAC_B}, {},
         {"src": DST6}, {}, {"dst": SRC6}, {}, {"sport": 1}, {}, {"dport": 1}, {}, {"ack": 8}, {},
         {"options": TS}, {}, {"window": 9}, {}])],
    "v6-control-flags": [tcp6_frame(i * 400, b"c" * 400, flags=f) for i, f in
                         enumerate((0x10, 0x11, 0x10, 0x12, 0x10, 0x14, 0x10, 0x30, 0x10, 0x50, 0x10, 0x90))],
    "v6-seq-gap-and-wrap": run(2, 500, v6=True) + run(2, 500, seq=9000, v6=True) + run(3, 900, seq=0xFFFFFD00,
                                                                                      v6=True),
    "v6-extension-header-alone": [run(1, 600, v6=True)[0],
                                  tcp6_frame(1600, b"e" * 600, nexthdr=0, ext=b"\x06\x00" + bytes(6)),
                                  tcp6_frame(2200, b"e" * 600, nexthdr=60, ext=b"\x06\x00" + bytes(6))],
    "v6-bad-first": [tcp6_frame(0, b"x" * 900, bad_tcp=True)] + run(3, 900, seq=900, v6=True),
    "v6-bad-middle": run(2, 900, v6=True) + [tcp6_frame(2800, b"x" * 900, bad_tcp=True)] + run(2, 900, seq=3700,
                                                                                               v6=True),
    "v6-bad-last": run(3, 900, v6=True) + [tcp6_frame(3700, b"x" * 900, bad_tcp=True)],
    "v6-bad-everywhere": [tcp6_frame(i * 700, b"b" * 700, bad_tcp=i % 2 == 1) for i in range(6)],
    "v6-odd-lengths": run(3, 999, v6=True) + run(2, 333, seq=5000, v6=True) + run(2, 1001, seq=6000, v6=True),
    "v6-padded-and-lying-lengths": [tcp6_frame(0, b"d" * 220, pad_to=320), tcp6_frame(220, b"d" * 220, pad_to=300),
                                    tcp6_frame(440, b"d" * 220, plen_delta=1),
                                    tcp6_frame(660, b"d" * 220, plen_delta=-21),
                                    tcp6_frame(880, b"d" * 220, plen_delta=-220)],
    # 40 + 20 + 44 * 1460 + 1235 = 0xFFFF: the IP packet's limit as for IPv4 (Linux's GRO stops below 64 KiB)
    "v6-ip-len-exactly-max": run(44, 1460, v6=True) + run(1, 1235, seq=1000 + 44 * 1460, v6=True),
    "v6-ip-len-one-over": run(44, 1460, v6=True) + run(1, 1236, seq=1000 + 44 * 1460, v6=True),
    "v6-max-segments": run(70, 260, v6=True),
    "v4-and-v6-interleaved": [f for pair in zip(run(4, 600), run(4, 600, v6=True), strict=True) for f in pair],
    "v4-run-then-v6-run-same-seq": run(3, 600) + run(3, 600, seq=2800, v6=True),
    # DATA_VALID: a run of one verified (its follower failed) is marked; singles otherwise are not
    "valid-v4-first-then-bad": run(1, 900) + [tcp_frame(1900, b"x" * 900, bad_tcp=True), udp_frame(400)],
    "valid-v6-first-then-bad": run(1, 900, v6=True) + [tcp6_frame(1900, b"x" * 900, bad_tcp=True), udp6_frame(400)],
    "singles-udp-bad-udp": [udp_frame(400), udp6_frame(400), udp6_frame(400, bad=True), run(1, 900, v6=True)[0]],
}

LAYOUTS = [
    pytest.param(nc.TxLayout(False, 0xFFFF, 4, 0, 4, 200, 512), id="ntb16"),
    pytest.param(nc.TxLayout(True, 1 << 18, 4, 2, 8, 200, 512), id="ntb32"),
    pytest.param(nc.TxLayout(False, 16384, 8, 6, 16, 40, 512), id="ntb16-16k-div8"),
]


def ntbs(layout: nc.TxLayout, frames: list[bytes]) -> list[bytes]:
    """As many NTBs of `layout` as the frames need (in order)."""
    out, pos = [], 0
    while pos < len(frames):
        k = len(frames) - pos
        while k > 1:
            try:
                out.append(nc.build_ntb(layout, frames[pos : pos + k]))
                break
            except ValueError:
                k -= 1
        else:
            out.append(nc.build_ntb(layout, frames[pos : pos + 1]))
        pos += k
    return out


@pytest.mark.parametrize("gro", [True, False], ids=["gro", "plain"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_built_ntbs(name: str, layout: nc.TxLayout, gro: bool) -> None:
    blocks = ntbs(layout, SCENARIOS[name])
    # all in one batch (a run spans transfers), then one batch per transfer (each ends the run)
    differential([[(b, len(b)) for b in blocks]], gro)
    differential([[(b, len(b))] for b in blocks], gro)


def test_a_run_merges_natively() -> None:
    """The comparison is not vacuous: the 11-segment NTB becomes one super-frame with its header."""
    frames = run(11, 1400)
    blocks = ntbs(nc.TxLayout(False, 0xFFFF), frames)
    msgs = differential([[(blocks[0], len(blocks[0]))]], gro=True)
    assert len(blocks) == 1 and len(msgs) == 1
    flags, gso, hdr_len, gso_size, start, off = struct.unpack("=BBHHHH", msgs[0][:10])
    assert (flags, gso, hdr_len, gso_size, start, off) == (1, 1, 54, 1400, 34, 16)
    assert msgs[0][10 + 54 :] == b"".join(f[54:] for f in frames)


def test_an_ipv6_run_merges_natively() -> None:
    """The IPv6 comparison is not vacuous either: one GSO_TCPV6 super-frame, payload length for the run, the
    RFC 8200 §8.1 pseudo-header sum in the check field."""
    frames = run(9, 1400, options=TS, v6=True)
    blocks = ntbs(nc.TxLayout(False, 0xFFFF), frames)
    msgs = differential([[(blocks[0], len(blocks[0]))]], gro=True)
    assert len(blocks) == 1 and len(msgs) == 1
    m = msgs[0]
    assert struct.unpack("=BBHHHH", m[:10]) == (1, 4, 54 + 32, 1400, 54, 16)
    assert struct.unpack_from("!H", m, 10 + 18)[0] == 32 + 9 * 1400
    pseudo = sum(struct.unpack("!16H", SRC6 + DST6)) + 6 + 32 + 9 * 1400
    while pseudo >> 16:
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
    assert struct.unpack_from("!H", m, 10 + 54 + 16)[0] == pseudo
    assert m[10 + 54 + 32 :] == b"".join(f[86:] for f in frames)


def test_data_valid_natively() -> None:
    """A run of one whose checksums were verified (a follower came and failed) goes out with flags 2; other
    single frames (UDP, IPv6 UDP, a lone segment, the failing one) with a zero header."""
    for frames in (SCENARIOS["valid-v4-first-then-bad"], SCENARIOS["valid-v6-first-then-bad"]):
        blocks = ntbs(nc.TxLayout(False, 0xFFFF), frames)
        msgs = differential([[(b, len(b)) for b in blocks]], gro=True)
        assert [m[:10] for m in msgs] == [pygro.VALID_HDR, pygro.ZERO_HDR, pygro.ZERO_HDR]
        assert [m[10:] for m in msgs] == frames
    msgs = differential([[(f, len(f)) for f in SCENARIOS["singles-udp-bad-udp"]]], gro=True, ecm=True)
    assert [m[:10] for m in msgs] == [pygro.ZERO_HDR] * 4


def test_a_run_spanning_transfers_merges_once() -> None:
    frames = run(9, 1400)
    lay = nc.TxLayout(False, 4500)
    blocks = ntbs(lay, frames)
    assert len(blocks) == 3
    msgs = differential([[(b, len(b)) for b in blocks]], gro=True)
    assert len(msgs) == 1
    assert differential([[(b, len(b))] for b in blocks], gro=True) != msgs  # flushed per batch: three runs


def test_the_same_datagram_twice_and_overlapping_datagrams() -> None:
    """Malformed but decodable: an NDP listing one segment twice, and datagrams overlapping each other."""
    frames = run(3, 500)
    ntb = bytearray(nc.build_ntb(nc.TxLayout(False, 4096, 4, 0, 4, 40, 512), frames))
    ndp = struct.unpack_from("<H", ntb, 10)[0]
    first = struct.unpack_from("<HH", ntb, ndp + 8)
    struct.pack_into("<HH", ntb, ndp + 12, *first)  # the second entry is the first one again
    for gro in (True, False):
        differential([[(bytes(ntb), len(ntb))]], gro)
    # every entry shifted by 2 bytes into the previous datagram's tail
    shifted = bytearray(nc.build_ntb(nc.TxLayout(False, 4096, 4, 0, 4, 40, 512), frames))
    for k in range(1, 3):
        o, n = struct.unpack_from("<HH", shifted, ndp + 8 + 4 * k)
        struct.pack_into("<HH", shifted, ndp + 8 + 4 * k, o - 2, n)
    differential([[(bytes(shifted), len(shifted))]], gro=True)


def test_a_super_frame_rewrites_bytes_a_later_ndp_reads() -> None:
    """The NDP chain reads its entries when it gets to them, after earlier super-frames were written: here the
    second NDP lies inside the first segment's TCP header, and its one entry's length is the check field that
    the super-frame rewrites to the pseudo-header sum. Reading it early would emit nothing; read when the
    reference reads it, it is a 515-byte datagram."""
    pay = 372  # pseudo-header sum over 0.0.0.0 -> 0.0.0.0: 6 + 20 + 2 * 372 = 0x0302, read little-endian 515
    zero = bytes(4)
    a_off, b_off = 16, 16 + 54 + pay + 2
    c_off = b_off + 54 + pay + 2
    d_off = c_off + 100
    ndp1 = d_off + 700
    seq = 0x12344E43  # bytes 40-41 of the first segment: "NC"
    ack = 0x4D301000  # "M0", then the NDP's wLength 16 (little-endian)
    window = struct.unpack("!H", struct.pack("<H", d_off))[0]  # the entry's wIndex: the 700-byte frame
    a = tcp_frame(seq, b"A" * pay, ack=ack, src=zero, dst=zero, window=window)
    b = tcp_frame(seq + pay, b"B" * pay, ack=ack, src=zero, dst=zero)
    total = ndp1 + 24
    ntb = bytearray(total)
    struct.pack_into("<IHHHH", ntb, 0, nc.NTH16_SIGNATURE, 12, 0, total, ndp1)
    ntb[a_off : a_off + len(a)] = a
    ntb[b_off : b_off + len(b)] = b
    ntb[c_off : c_off + 100] = udp_frame(58)
    ntb[d_off : d_off + 700] = udp_frame(658, 9)
    struct.pack_into("<IHHHHHHHHHH", ntb, ndp1, nc.NDP16_NOCRC_SIGNATURE, 24, a_off + 40,
                     a_off, len(a), b_off, len(b), c_off, 100, 0, 0)
    assert ntb[a_off + 40 : a_off + 44] == b"NCM0"
    msgs = differential([[(bytes(ntb), total)]], gro=True)
    assert [len(m) - 10 for m in msgs] == [54 + 2 * pay, 100, 515]


# --- malformed NTBs (test_ncm_codec's cases) ----------------------------------------------------------------

NTB16, NTB32 = ntb16_two_ndps(), ntb32_two_ndps()
MALFORMED = [
    (b"", 0), (NTB16[:11], 11), (b"NCMX" + NTB16[4:], None), (_set16(NTB16, 4, 16), None),
    (_set16(NTB32, 4, 12), None), (NTB32[:14], 14), (NTB16, 115), (_set16(NTB16, 8, 8), None),
    (_set32(NTB32, 8, 1000), None), (_set16(NTB16, 10, 200), None), (_set16(NTB16, 10, 4), None),
    (_set16(NTB16, 10, 66), None), (_set16(NTB16, 10, 104), None),
    (b"NCMH" + NTB16[4:64] + b"ncm0" + NTB16[68:], None), (_set16(NTB16, 68, 12), None),
    (_set16(NTB16, 104, 20), None), (_set16(NTB32, 20, 24), None), (_set16(NTB16, 70, 64), None),
    (_set16(NTB16, 106, 64), None), (_set32(NTB32, 128, 16), None), (_set16(NTB16, 70, 102), None),
    (_set16(NTB16, 78, 13), None), (_set16(NTB16, 78, 2000), None), (_set16(NTB16, 76, 116), None),
    (_set16(NTB16, 76, 4), None), (_set32(NTB32, 36, 0xFFFFFFF0), None), (_set16(NTB16, 78, 0), None),
    (_set16(NTB16, 68, 24), None), (NTB16[:100], 5000), (NTB16, -1), (NTB16, 0), (NTB32, 1 << 70),
    (NTB16, -(1 << 70)), (b"NCM1".join([NTB16[:64], NTB16[68:]]), None), (_set16(NTB16, 8, 0), None),
]


def _too_many_ndps() -> bytes:
    n_ndp = nc.MAX_NDPS + 5
    size = 12 + n_ndp * 32
    b = bytearray(size)
    struct.pack_into("<IHHHH", b, 0, nc.NTH16_SIGNATURE, 12, 0, size, 12)
    p = 12
    for i in range(n_ndp):
        nxt = p + 32 if i < n_ndp - 1 else 0
        struct.pack_into("<IHHHHHH", b, p, nc.NDP16_NOCRC_SIGNATURE, 16, nxt, p + 16, 16, 0, 0)
        b[p + 16 : p + 32] = bytes(range(i, i + 16))
        p += 32
    return bytes(b)


MALFORMED.append((_too_many_ndps(), None))
# NDP wLength not a multiple of the entry size, with a non-zero entry straddling its end: not read
MALFORMED.append((_set16(_set16(_set16(NTB16, 68, 18), 80, 84), 82, 16), None))
MALFORMED.append((_set16(_set32(_set32(NTB32, 48, 152), 52, 16), 20, 36), None))


@pytest.mark.parametrize("gro", [True, False], ids=["gro", "plain"])
@pytest.mark.parametrize("max_dg", [MAX_DG, 25, 0])
def test_malformed_ntbs(gro: bool, max_dg: int) -> None:
    batch = [(ntb, len(ntb) if length is None else length) for ntb, length in MALFORMED]
    differential([batch], gro, max_dg)
    differential([[t] for t in batch], gro, max_dg)


# --- truncation and bytes past `length` -----------------------------------------------------------------

POISON = (b"\xa5" * 64, bytes(64), b"NCM0" * 16, b"\xff" * 64)


def _truncation_inputs() -> list[bytes]:
    lay16, lay32 = nc.TxLayout(False, 8192, 4, 2, 4, 40, 512), nc.TxLayout(True, 8192, 8, 0, 16, 40, 512)
    mixed = run(3, 500) + [udp_frame(40)] + run(2, 400, seq=9000)
    return [nc.build_ntb(lay16, mixed), nc.build_ntb(lay32, mixed), NTB16, NTB32]


@pytest.mark.parametrize("gro", [True, False], ids=["gro", "plain"])
@pytest.mark.parametrize("which", range(4))
def test_every_truncated_length_with_poisoned_tails(gro: bool, which: int) -> None:
    ntb = _truncation_inputs()[which]
    step = max(1, len(ntb) // 300)
    lengths = sorted(set(range(0, len(ntb) + 1, step)) | set(range(max(0, len(ntb) - 70), len(ntb) + 1)))
    batches = []
    for i, length in enumerate(lengths):
        tail = POISON[i % len(POISON)]
        # the bytes past `length` are the poison (the block length may claim them); the block length is also
        # left as built, so most truncations are whole-NTB errors and the rest are block-length-0 walks
        cut = ntb[:length] + tail
        zero_block = bytearray(cut)  # block length 0: the walk goes up to `length`, right next to the poison
        if zero_block[:4] == b"NCMH":
            zero_block[8:10] = bytes(2)
        elif zero_block[:4] == b"ncmh":
            zero_block[8:12] = bytes(4)
        batches.append([(cut, length), (bytes(zero_block), length)])
    for b in batches:
        differential([b], gro)


# --- random mutations, checksums repaired ------------------------------------------------------------------


def repair_checksums(buf: bytearray, length: int) -> None:
    """Make every datagram the reference would emit that looks like TCP/IPv4 carry correct checksums again,
    so mutated inputs still reach the merge logic (a random byte change almost always breaks them)."""
    spans: list[tuple[int, int]] = []
    nc.NtbDecoder(Stats(), max_datagram=1 << 20).decode(memoryview(bytes(buf)), length,
                                                      lambda o, n: spans.append((o, n)))
    for off, n in spans:
        if n >= 74 and buf[off + 12 : off + 14] == b"\x86\xdd" and buf[off + 20] == 6:
            plen = struct.unpack_from("!H", buf, off + 18)[0]
            if 20 <= plen <= n - 54:
                buf[off + 70 : off + 72] = b"\0\0"
                pseudo = bytes(buf[off + 22 : off + 54]) + struct.pack("!IxxxB", plen, 6)
                struct.pack_into("!H", buf, off + 70, csum(pseudo + bytes(buf[off + 54 : off + 54 + plen])))
            continue
        if n < 54 or buf[off + 12 : off + 14] != b"\x08\x00" or buf[off + 14] != 0x45 or buf[off + 23] != 6:
            continue
        tot = struct.unpack_from("!H", buf, off + 16)[0]
        if not 40 < tot <= n - 14:
            continue
        buf[off + 24 : off + 26] = b"\0\0"
        struct.pack_into("!H", buf, off + 24, csum(bytes(buf[off + 14 : off + 34])))
        buf[off + 50 : off + 52] = b"\0\0"
        seg = bytes(buf[off + 34 : off + 14 + tot])
        pseudo = bytes(buf[off + 26 : off + 34]) + struct.pack("!BBH", 0, 6, tot - 20)
        struct.pack_into("!H", buf, off + 50, csum(pseudo + seg))


def mutate(rnd: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(6)
        if op == 0 and b:
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        elif op == 1 and b:
            b[rnd.randrange(len(b))] = rnd.choice((0, 1, 4, 8, 12, 14, 16, 0x10, 0x18, 0x45, 0x7F, 0x80, 0xFF))
        elif op == 2 and len(b) >= 4:
            i = rnd.randrange(len(b) - 3)
            w = rnd.choice((2, 4))
            v = rnd.choice((0, 1, 12, 16, 54, 256, 1514, len(b), len(b) - 1, rnd.randrange(len(b) + 64)))
            b[i : i + w] = (v & ((1 << 8 * w) - 1)).to_bytes(w, "little")
        elif op == 3 and len(b) > 100:  # copy a run of bytes elsewhere (duplicates headers and entries)
            i, j, n = rnd.randrange(len(b)), rnd.randrange(len(b)), rnd.randint(1, 64)
            chunk = b[i : i + n]
            b[j : j + len(chunk)] = chunk
            del b[len(data) :]
        elif op == 4 and b:
            del b[rnd.randrange(len(b)) :]
        elif op == 5:  # an NDP entry pointed at a random offset
            ndp = struct.unpack_from("<H", b, 10)[0] if len(b) >= 12 and b[:4] == b"NCMH" else 0
            if ndp and ndp + 16 <= len(b):
                k = rnd.randrange(2)
                struct.pack_into("<H", b, ndp + 8 + 4 * k + rnd.randrange(2) * 2, rnd.randrange(len(b) + 8))
    return bytes(b)


def _seeds() -> list[bytes]:
    lay16, lay32 = nc.TxLayout(False, 16384, 4, 0, 4, 60, 512), nc.TxLayout(True, 16384, 8, 2, 8, 60, 512)
    sets = [run(10, 1400), run(5, 600) + [udp_frame(70)] + run(5, 600, seq=9999),
            run(6, 300, options=TS), [udp_frame(n, n) for n in (18, 46, 200, 500)] + run(3, 260),
            run(8, 1400, v6=True), run(3, 500, v6=True, options=TS) + run(1, 500, seq=2500, v6=True, bad_tcp=True)
            + [udp6_frame(300)]]
    return [nc.build_ntb(lay, s) for lay in (lay16, lay32) for s in sets]


@pytest.mark.parametrize("seed", range(8))
def test_random_mutations(seed: int) -> None:
    rnd = random.Random(seed)
    seeds = _seeds()
    for _ in range(120):
        gro = rnd.random() < 0.8
        batch = []
        for _ in range(rnd.choice((1, 1, 2, 3))):
            data = mutate(rnd, rnd.choice(seeds))
            length = len(data) if rnd.random() < 0.7 else rnd.randrange(len(data) + 1)
            buf = bytearray(data)
            if rnd.random() < 0.7:
                repair_checksums(buf, length)
            batch.append((bytes(buf) + rnd.choice(POISON), length))
        differential([batch], gro, max_dg=rnd.choice((MAX_DG, MAX_DG, 9000, 60)))


# --- write failures -----------------------------------------------------------------------------------------


def _failing_pair(gro: bool, how: str) -> tuple[Reference, Native]:
    taps = []
    for _ in range(2):
        t = Tap(sndbuf=4096) if how == "full" else Tap()
        if how == "gone":
            t.r.close()
        taps.append(t)
    return Reference(gro, tap=taps[0]), Native(gro, tap=taps[1])


@pytest.mark.parametrize("how", ["gone", "full"])
@pytest.mark.parametrize("gro", [True, False], ids=["gro", "plain"])
def test_failed_writes_are_dropped_and_counted_alike(gro: bool, how: str) -> None:
    frames = run(6, 1000) + [udp_frame(100)] + run(3, 500, seq=77)
    blocks = ntbs(nc.TxLayout(False, 0xFFFF), frames) * 4
    ref, nat = _failing_pair(gro, how)
    try:
        for _ in range(3):
            ref.batch([(b, len(b)) for b in blocks])
            nat.batch([(b, len(b)) for b in blocks])
        assert ref.stats.rx_dropped > 0
        assert nat.stats.as_dict() == ref.stats.as_dict()
        assert nat.gro_counters() == ref.gro_counters()
        assert nat.failed_writes == ref.port.write_errors.count
        if how == "full":
            assert nat.stats.rx_packets > 0 and nat.rx.last_errno == 11  # EAGAIN
        else:
            assert nat.stats.rx_packets == 0 and nat.rx.last_errno == 32  # EPIPE
    finally:
        ref.close()
        nat.close()


# --- ECM: one frame per transfer ----------------------------------------------------------------------------


@pytest.mark.parametrize("gro", [True, False], ids=["gro", "plain"])
def test_one_frame_per_transfer(gro: bool) -> None:
    frames = run(5, 1400) + [udp_frame(46), bytes(13), bytes(14), udp_frame(1472)] + run(3, 900, seq=1 << 20)
    frames += run(4, 1400, v6=True) + [udp6_frame(1452), tcp6_frame(5600, b"z" * 1400, bad_tcp=True)]
    transfers = [(f + b"\xa5" * 40, len(f)) for f in frames]
    transfers += [(bytes(1600), 1515), (bytes(1600), 1514), (bytes(100), 0), (bytes(100), -5)]
    differential([transfers], gro, ecm=True)
    differential([[t] for t in transfers], gro, ecm=True)


def test_one_frame_per_transfer_past_the_buffer_is_a_length_error() -> None:
    """Documented deviation: the reference would slice past the buffer; the transport never reports that."""
    tap = Tap()
    try:
        rx = native.NcmRx(tap.w.fileno(), 0, False, 1514)
        assert rx.decode_frame(bytes(100), 200) == 0
        c = rx.counters()
        assert (c["rx_errors"], c["rx_length_errors"], c["rx_packets"]) == (1, 1, 0)
    finally:
        tap.close()


# --- the API itself -----------------------------------------------------------------------------------------


def test_constants_match_the_reference() -> None:
    fp = native.fastpath
    assert fp is not None
    assert (fp.VNET_HDR_LEN, fp.MAX_SEGMENTS, fp.MIN_CANDIDATE, fp.MAX_IP_LEN, fp.MAX_NDPS) == (
        pygro.VNET_HDR_LEN, pygro.MAX_SEGMENTS, pygro.MIN_CANDIDATE, pygro.MAX_IP_LEN, nc.MAX_NDPS)


def test_segment_verified_matches_the_reference() -> None:
    rnd = random.Random(5)
    for n in (1, 2, 3, 7, 8, 9, 999, 1000, 1460):
        good = tcp_frame(rnd.randrange(1 << 32), rnd.randbytes(n), options=TS if n % 2 else b"")
        tot = len(good) - 14
        for at in [None, *(rnd.randrange(14, len(good)) for _ in range(20))]:
            f = bytearray(good)
            if at is not None:
                f[at] ^= 1 << rnd.randrange(8)
            src, dst = struct.unpack_from("!II", f, 26)
            want = pygro.segment_verified(memoryview(f), 0, tot, src, dst)
            assert native.fastpath.segment_verified(bytes(f), tot, src, dst) == want, (n, at)


def test_segment_verified6_matches_the_reference() -> None:
    rnd = random.Random(6)
    for n in (1, 2, 3, 7, 8, 9, 999, 1000, 1440):
        good = tcp6_frame(rnd.randrange(1 << 32), rnd.randbytes(n), options=TS if n % 2 else b"",
                          src=rnd.randbytes(16), dst=rnd.randbytes(16))
        tot = len(good) - 14
        assert pygro.segment_verified6(memoryview(good), 0, tot)
        for at in [None, *(rnd.randrange(22, len(good)) for _ in range(20))]:
            f = bytearray(good)
            if at is not None:
                f[at] ^= 1 << rnd.randrange(8)
            want = pygro.segment_verified6(memoryview(f), 0, tot)
            assert want == (at is None), (n, at)  # every bit from the addresses on is covered
            assert native.fastpath.segment_verified6(bytes(f), tot) == want, (n, at)
            assert want == (at is None or at < 14 or f == good)


def test_counters_and_add_to() -> None:
    tap = Tap()
    try:
        rx = native.NcmRx(tap.w.fileno(), 10, True, 1514)
        assert set(rx.counters()) == {"rx_packets", "rx_bytes", "rx_dropped", "rx_errors", "rx_length_errors",
                                      "rx_frame_errors", "superframes", "merged", "unverified", "write_failures"}
        assert set(rx.counters()) - {"superframes", "merged", "unverified", "write_failures"} <= set(COUNTERS)
        ntb = bytearray(nc.build_ntb(nc.TxLayout(False, 0xFFFF), run(3, 1000) + [udp_frame(20)]))
        stats = Stats()
        stats.rx_packets, stats.tx_packets = 100, 5
        assert rx.decode(ntb, len(ntb)) == 4
        with pytest.raises(BufferError):
            rx.decode(bytes(ntb), len(ntb))  # GRO rewrites super-frame headers in place: writable only
        rx.flush()
        assert rx.add_to(stats) == 0
        assert (stats.rx_packets, stats.tx_packets, stats.rx_bytes) == (104, 5, 3 * 1054 + 62)
        assert rx.add_to(stats) == 0 and stats.rx_packets == 104  # only what was gained since
        rx.decode(bytearray(b"junk"), 4)
        rx.add_to(stats)
        assert (stats.rx_errors, stats.rx_frame_errors, stats.rx_packets) == (1, 1, 104)
        assert (rx.superframes, rx.merged, rx.unverified) == (1, 3, 0)
        assert len(tap.drain()) == 2
    finally:
        tap.close()


def test_bad_construction_and_calls() -> None:
    with pytest.raises(ValueError):
        native.NcmRx(1, 12, False, 1514)
    with pytest.raises(ValueError):
        native.NcmRx(1, 0, True, 1514)
    with pytest.raises(ValueError):
        native.NcmRx(-1, 0, False, 1514)
    rx = native.NcmRx(1, 0, False, 1514)
    with pytest.raises(TypeError):
        rx.decode(bytearray(20))
    with pytest.raises(TypeError):
        rx.decode(bytearray(20), "20")
    with pytest.raises(TypeError):
        rx.decode(object(), 20)
    assert rx.decode(b"NCMX" + bytes(20), 24) == 0  # read-only is fine without GRO: nothing is rewritten
    assert rx.counters()["rx_frame_errors"] == 1
    assert (rx.fd, rx.vnet_hdr_len, rx.gro, rx.max_datagram) == (1, 0, False, 1514)
    with pytest.raises(AttributeError):
        rx.max_datagram = 9000  # type: ignore[misc]
    bare = native.NcmRx.__new__(native.NcmRx)  # no __init__: fd would be 0, so nothing may run
    for call in (lambda: bare.decode(bytearray(20), 20), bare.flush, bare.counters):
        with pytest.raises(RuntimeError):
            call()


def test_buffers_of_an_open_run_are_held_until_flush() -> None:
    """A run spanning transfers keeps pointing into the earlier transfers' buffers: they must stay put (a
    bytearray cannot resize while held) and be let go at flush, and only the ones the run still needs."""
    tap = Tap()
    try:
        rx = native.NcmRx(tap.w.fileno(), 10, True, 1514)
        lay = nc.TxLayout(False, 8192)
        a, b = run(6, 1400), run(3, 1400, seq=1 << 30)
        groups = [a[:3], a[3:], [udp_frame(30), b[0]], b[1:]]
        blocks = [bytearray(nc.build_ntb(lay, g)) for g in groups]
        for b in blocks:
            rx.decode(b, len(b))
        # blocks 0-1 hold a run that block 2's UDP frame ended; block 2's tail and block 3 hold the open run
        for b in blocks[:2]:
            b.append(0)
            b.pop()
        for b in blocks[2:]:
            with pytest.raises(BufferError):
                b.append(0)
        rx.flush()
        for b in blocks:
            b.append(0)
        assert len(tap.drain()) == 3
        rx.decode(blocks[0], len(blocks[0]) - 1)
        del rx  # an open run is dropped with its object, the buffer let go
        blocks[0].append(0)
    finally:
        tap.close()


def test_no_memory_grows_per_batch() -> None:
    import tracemalloc

    tap = Tap()
    try:
        rx = native.NcmRx(tap.w.fileno(), 10, True, 1514)
        blocks = [bytearray(b) for b in ntbs(nc.TxLayout(False, 4500), run(9, 1400))]

        def once() -> None:
            for b in blocks:
                rx.decode(b, len(b))
            rx.flush()
            tap.drain()

        for _ in range(50):
            once()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            for _ in range(2000):
                once()
            grown = tracemalloc.get_traced_memory()[0] - start
        finally:
            tracemalloc.stop()
        assert grown < 20_000
    finally:
        tap.close()


# --- ASIX AX88179 aggregates (decode_ax88179 against ax88179_codec.RxDecoder) ------------------------------


def _ax_inputs() -> list[bytes]:
    frames = run(6, 1200) + [udp_frame(100)] + run(3, 500, seq=9000, sport=6000)
    out = [axc.build_rx(frames), axc.build_rx(frames[:3], dummies=False, padding2=False),
           axc.build_rx([udp_frame(1472)]), axc.build_rx(run(2, 1448) + run(2, 1448, seq=1000, bad_tcp=True))]
    flagged = bytearray(axc.build_rx(frames[:4], dummies=False))
    hdr_off = struct.unpack_from("<H", flagged, len(flagged) - 2)[0]
    flagged[hdr_off + 7] |= 0x80  # the second frame's drop bit
    out.append(bytes(flagged))
    return out


@pytest.mark.parametrize("gro", [False, True])
def test_ax88179_aggregates(gro: bool) -> None:
    msgs = differential([[(d, len(d))] for d in _ax_inputs()], gro, ax=True)
    assert msgs, "the aggregates hold good frames"
    if gro:  # the 6-segment run merges
        assert any(len(m) > 6000 for m in msgs)


@pytest.mark.parametrize("gro", [False, True])
def test_ax88179_truncations_mutations_and_poisoned_tails(gro: bool) -> None:
    rnd = random.Random(179)
    batches: list[Batch] = []
    for data in _ax_inputs():
        for n in range(0, len(data) + 1, 7):
            batches.append([(data + b"\xa5" * 32, n)])  # bytes past length poisoned
        for _ in range(40):
            m = bytearray(data)
            for _ in range(rnd.randint(1, 6)):
                m[rnd.randrange(len(m))] = rnd.randrange(256)
            batches.append([(bytes(m), len(m))])
    batches.append([(b"", 0), (b"\x01\x02", 2), (bytes(8), 8), (bytes(10), 99)])
    differential(batches, gro, max_dg=4102, ax=True)
