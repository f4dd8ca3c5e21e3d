"""Differential fuzz target `native-ncm-rx`: the C RX path (usbnetd.native._fastpath.NcmRx) against the Python
reference (NtbDecoder + TapPort, GRO on or off), on the same device bytes.

    python fuzz/native_ncm.py [libFuzzer options] [CORPUS_DIR ...]       # atheris, coverage of the reference
    python fuzz/native_ncm.py --engine=random -runs=N [-seed=S] [CORPUS_DIR ...]   # fuzz.py's mutation engine,
                                                                         # parents: our seeds + those corpora
    fuzz/native_asan.sh [options]                                        # the same against an ASan/UBSan build
    --mode=ntb|ecm|rndis|ax88179 (either engine): every input in that mode (byte 0's mode bits rewritten)

An input is a 5-byte header and the transfer bytes:

    byte 0   flags: 1 GRO on, 2 repair TCP checksums (IPv4 and IPv6) first (so mutated runs still reach the merge
             logic; without it, GRO seeds whose later segment a mutation broke reach DATA_VALID's case),
             4 two transfers in one batch (split at bytes 3-4), 8 shorten each transfer by bytes 1-2 (modulo
             its size + 1), 16 max_datagram 60 instead of 1514, 32 ECM (each transfer is one frame:
             decode_frame against OneFramePerTransfer.rx_decode), 64 RNDIS (PACKET_MSGs: decode_rndis against
             RndisDriver.rx_decode, with the first transfer's length as the "full" transfer size, so a
             message cut by the split is carried into the second transfer), 128 ASIX AX88179 aggregates
             (decode_ax88179 against ax88179_codec.RxDecoder); ECM wins over RNDIS, which wins over AX88179
    1-2      the shortening (little endian); 0xFFF0-0xFFFF: the last transfer's length is -16..-1 instead, the
             others' whole (both sides must take it as an empty transfer; with an RNDIS message carried over,
             the C walk once took it as a memcpy size)
    3-4      where the second transfer starts (little endian, modulo the size + 1)
    5-       the transfer bytes

Each input runs three times: the reference on buffers with a poisoned tail past `length`; the native code on
exact-size buffers that end at an inaccessible page (any read or write past `length` faults at once, with or
without a sanitizer); the native code on buffers with a different poisoned tail. Any difference in the
messages written (vnet header and frame bytes, in order), in what decode returned, in any counter (Stats and
GRO), or in the buffers afterwards (GRO rewrites super-frame headers in place; the tails must be untouched)
raises `Difference`, which the fuzzer records as a crash, as it does for a crash of the C code itself.

USBNETD_NATIVE_SO=path loads that build of the extension instead of the package's, and USBNETD_FUZZ_LAST_INPUT=path
writes every input there before it runs (native_asan.sh sets both: a sanitizer abort leaves no other trace).
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import native_common as nc_  # noqa: E402  (what the two native targets share)
from native_common import Difference, GuardedBuffers, Tap  # noqa: E402

TARGET = "native-ncm-rx"
HEADER = 5
MAX_INPUT = 70000
POISON_REF = b"\xa5" * 80
POISON_NAT = b"\x5a" * 80
GRO, REPAIR, SPLIT, SHORTEN, SMALL, ECM, RNDIS, AX = 1, 2, 4, 8, 16, 32, 64, 128


def load_fastpath() -> types.ModuleType:
    return nc_.load_extension(TARGET, "USBNETD_NATIVE_SO", "_fastpath", "fastpath")


class Harness:
    """Everything built once: the three TAP stand-ins and the modules; `check(data)` per input."""

    def __init__(self) -> None:
        from usbnetd.core.stats import Stats
        from usbnetd.netdev.port import TapPort
        from usbnetd.protocols import ax88179_codec as axc
        from usbnetd.protocols import ncm_codec as nc
        from usbnetd.protocols import rndis_codec as rc
        from usbnetd.protocols.driver import OneFramePerTransfer
        from usbnetd.protocols.rndis import RndisDriver

        self.Stats, self.TapPort, self.nc, self.OneFramePerTransfer = Stats, TapPort, nc, OneFramePerTransfer
        self.rc, self.RndisDriver = rc, RndisDriver
        self.axc = axc
        self.fp = load_fastpath()
        self.ref_tap, self.nat_tap = Tap(), Tap()
        self.guarded = GuardedBuffers(2, MAX_INPUT)

    # -- the input ----------------------------------------------------------------------------------------
    def transfers(self, data: bytes) -> tuple[int, list[tuple[bytearray, int]]]:
        data = data[:MAX_INPUT]
        head = data[:HEADER].ljust(HEADER, b"\0")
        flags = head[0]
        cut, split = struct.unpack_from("<HH", head, 1)
        body = data[HEADER:]
        parts = [body]
        if flags & SPLIT:
            k = split % (len(body) + 1)
            parts = [body[:k], body[k:]]
        out = []
        for k, p in enumerate(parts):
            length = len(p) - cut % (len(p) + 1) if flags & SHORTEN else len(p)
            if flags & SHORTEN and cut >= 0xFFF0:
                # a negative length (0xFFFF: -1; never from the transport) for the last transfer, the others
                # whole: after a full first transfer, with an RNDIS message carried over
                length = 0xFFEF - cut if k == len(parts) - 1 else len(p)
            buf = bytearray(p)
            if flags & REPAIR and flags & RNDIS and not flags & ECM:
                self.repair_rndis(buf, length)
            elif flags & REPAIR and not flags & ECM:
                self.repair(buf, length, bool(flags & AX))
            elif flags & REPAIR:
                repair_frame(buf, 0, length)
            out.append((buf, length))
        return flags, out

    def repair(self, buf: bytearray, length: int, ax: bool = False) -> None:
        spans: list[tuple[int, int]] = []
        dec = self.axc.RxDecoder(self.Stats(), 1 << 20) if ax else self.nc.NtbDecoder(self.Stats(),
                                                                                        max_datagram=1 << 20)
        dec.decode(bytes(buf), length, lambda o, n: spans.append((o, n)))
        for off, n in spans:
            repair_frame(buf, off, n)

    def repair_rndis(self, buf: bytearray, length: int) -> None:
        spans: list[tuple[int, int]] = []
        self.rc.RndisDecoder(self.Stats(), max_frame=1 << 20).decode(bytes(buf), length,
                                                                     lambda o, n: spans.append((o, n)))
        for off, n in spans:
            repair_frame(buf, off, n)

    def rndis_driver(self, stats, rx_size: int):
        """An RndisDriver with only what rx_decode uses (the reference; no transport)."""
        d = self.RndisDriver.__new__(self.RndisDriver)
        d.stats, d.rx_size = stats, rx_size
        d._decoder = self.rc.RndisDecoder(stats, max_frame=self.rc.DEFAULT_MAX_FRAME)
        d._carry = bytearray(self.rc.PACKET_HEADER_LEN + self.rc.DEFAULT_MAX_FRAME + 64)
        d._carry_view = memoryview(d._carry)
        d._carry_len = 0
        d._carry_sink = None
        return d

    # -- the three runs -----------------------------------------------------------------------------------
    def reference(self, flags: int, transfers: list[tuple[bytearray, int]], max_dg: int):
        stats = self.Stats()
        port = self.TapPort(self.ref_tap.w.fileno(), stats, max_frame=max_dg, gro=bool(flags & GRO))
        ax = flags & AX and not flags & (ECM | RNDIS)
        dec = self.axc.RxDecoder(stats, max_dg) if ax else self.nc.NtbDecoder(stats, max_datagram=max_dg)
        drv = types.SimpleNamespace(stats=stats, max_frame=max_dg)
        rndis = self.rndis_driver(stats, transfers[0][1]) if flags & RNDIS and not flags & ECM else None
        got, bufs = [], []
        for data, length in transfers:
            buf = bytearray(data) + POISON_REF
            bufs.append(buf)
            view = memoryview(buf)
            port.rx_begin(view)
            if flags & ECM:
                if length > len(data):  # never from the transport; decode_frame counts it, the reference slices
                    length = len(data)
                got.append(self.OneFramePerTransfer.rx_decode(drv, view, length, port))  # type: ignore[arg-type]
            elif rndis is not None:
                got.append(rndis.rx_decode(view, length, port))
            else:
                got.append(dec.decode(view, length, port.emit))
        port.rx_end()
        g = port.gro_stats
        return (self.ref_tap.drain(), got, stats.as_dict(), (g["superframes"], g["segments"], g["unverified"]),
                [bytes(b[: len(d)]) for b, (d, _) in zip(bufs, transfers, strict=True)],
                [bytes(b[len(d):]) for b, (d, _) in zip(bufs, transfers, strict=True)])

    def native(self, flags: int, transfers: list[tuple[bytearray, int]], max_dg: int, exact: bool):
        gro = bool(flags & GRO)
        if flags & RNDIS and not flags & ECM:
            rx = self.fp.NcmRx(self.nat_tap.w.fileno(), 10 if gro else 0, gro, self.rc.DEFAULT_MAX_FRAME,
                               rx_size=transfers[0][1])
            decode = rx.decode_rndis
        else:
            rx = self.fp.NcmRx(self.nat_tap.w.fileno(), 10 if gro else 0, gro, max_dg)
            decode = rx.decode_frame if flags & ECM else rx.decode_ax88179 if flags & AX else rx.decode
        got, bufs = [], []
        for i, (data, length) in enumerate(transfers):
            buf: bytearray | memoryview
            if exact:
                buf = self.guarded.place(i, data[: max(0, min(length, len(data)))])
            else:
                buf = bytearray(data) + POISON_NAT
            bufs.append(buf)
            if flags & ECM and length > len(data):
                length = len(data)
            got.append(decode(buf, length))
        rx.flush()
        stats = self.Stats()
        rx.add_to(stats)
        c = rx.counters()
        return (self.nat_tap.drain(), got, stats.as_dict(), (c["superframes"], c["merged"], c["unverified"]),
                bufs)

    def check(self, data: bytes) -> None:
        flags, transfers = self.transfers(data)
        max_dg = 60 if flags & SMALL else 1514
        r_msgs, r_got, r_stats, r_gro, r_bufs, r_tails = self.reference(flags, transfers, max_dg)
        if any(t != POISON_REF for t in r_tails):
            raise Difference("the reference wrote past the transfer (test harness broken)")
        for exact in (True, False):
            what = "exact-size buffers" if exact else "poisoned tails"
            n_msgs, n_got, n_stats, n_gro, n_bufs = self.native(flags, transfers, max_dg, exact)
            if n_msgs != r_msgs:
                raise Difference(f"{what}: messages differ: native {_summary(n_msgs)}, reference {_summary(r_msgs)}")
            if n_got != r_got:
                raise Difference(f"{what}: decode returned {n_got}, reference {r_got}")
            if n_stats != r_stats:
                raise Difference(f"{what}: counters {n_stats}, reference {r_stats}")
            if n_gro != r_gro:
                raise Difference(f"{what}: GRO counters {n_gro}, reference {r_gro}")
            for i, (nb, rb, (d, length)) in enumerate(zip(n_bufs, r_bufs, transfers, strict=True)):
                if exact:
                    keep = max(0, min(length, len(d)))
                    if bytes(nb) != rb[:keep]:
                        raise Difference(f"{what}: transfer {i} differs afterwards")
                elif bytes(nb[: len(d)]) != rb or bytes(nb[len(d):]) != POISON_NAT:
                    raise Difference(f"{what}: transfer {i} differs afterwards, or its tail was written")


def repair_frame(buf: bytearray, off: int, n: int) -> None:
    """Correct IPv4 header and TCP checksums of a TCP/IPv4 frame at buf[off:off + n], or the TCP checksum of a
    TCP/IPv6 one (next header TCP, RFC 8200 §8.1's pseudo-header), if it is one."""
    if n >= 74 and buf[off + 12 : off + 14] == b"\x86\xdd" and buf[off + 20] == 6:
        plen = struct.unpack_from("!H", buf, off + 18)[0]
        if 20 <= plen <= n - 54:
            buf[off + 70 : off + 72] = b"\0\0"
            pseudo = bytes(buf[off + 22 : off + 54]) + struct.pack("!IxxxB", plen, 6)
            struct.pack_into("!H", buf, off + 70, _csum(pseudo + bytes(buf[off + 54 : off + 54 + plen])))
        return
    if n < 54 or buf[off + 12 : off + 14] != b"\x08\x00" or buf[off + 14] != 0x45 or buf[off + 23] != 6:
        return
    tot = struct.unpack_from("!H", buf, off + 16)[0]
    if not 40 < tot <= n - 14:
        return
    buf[off + 24 : off + 26] = b"\0\0"
    struct.pack_into("!H", buf, off + 24, _csum(bytes(buf[off + 14 : off + 34])))
    buf[off + 50 : off + 52] = b"\0\0"
    pseudo = bytes(buf[off + 26 : off + 34]) + struct.pack("!BBH", 0, 6, tot - 20)
    struct.pack_into("!H", buf, off + 50, _csum(pseudo + bytes(buf[off + 34 : off + 14 + tot])))


def _csum(data: bytes) -> int:
    """The Internet checksum of `data`. The one's-complement sum of 16-bit big-endian words is the whole
    number mod 0xFFFF (2**16 = 1 mod 0xFFFF), except that a non-zero sum is 0xFFFF, never 0."""
    if len(data) % 2:
        data += b"\0"
    x = int.from_bytes(data, "big")
    s = x % 0xFFFF
    if s == 0 and x:
        s = 0xFFFF
    return ~s & 0xFFFF


def _summary(msgs: list[bytes]) -> str:
    return f"{len(msgs)} messages, lengths {[len(m) for m in msgs][:20]}, sha1 " + hashlib.sha1(
        b"".join(msgs)).hexdigest()[:12]


# --- seeds ---------------------------------------------------------------------------------------------------


def _tcp(seq: int, payload: bytes, flags: int = 0x10, sport: int = 5001, options: bytes = b"") -> bytes:
    thl = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", sport, 40000, seq & 0xFFFFFFFF, 7, (thl // 4) << 4, flags, 502, 0, 0) + options
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + thl + len(payload), 1, 0x4000, 64, 6, 0, bytes([198, 18, 9, 1]),
                     bytes([198, 18, 9, 2]))
    frame = bytearray(b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + tcp + payload)
    repair_frame(frame, 0, len(frame))
    return bytes(frame)


def _udp(n: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + n, 0, 0x4000, 64, 17, 0, bytes(4), bytes(4))
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + struct.pack("!HHHH", 1, 2, 8 + n, 0) + bytes(n)


def _run(n: int, size: int, seq: int = 1000, **kw) -> list[bytes]:
    return [_tcp(seq + i * size, bytes([i + 1]) * size, **kw) for i in range(n)]


_ADDR6 = bytes.fromhex("20010002000000000000000000090001") + bytes.fromhex("20010002000000000000000000090002")


def _tcp6(seq: int, payload: bytes, flags: int = 0x10, sport: int = 5001, options: bytes = b"",
          bad: bool = False, word: int = 0x60012345, hop: int = 64) -> bytes:
    """TCP over IPv6 (2001:2::/48, the benchmarking range), checksum repaired, or broken with `bad`; `word`:
    version, traffic class and flow label."""
    thl = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", sport, 40000, seq & 0xFFFFFFFF, 7, (thl // 4) << 4, flags, 502, 0, 0) + options
    frame = bytearray(b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x86\xdd" + struct.pack("!IHBB", word, thl + len(payload), 6,
                                                                                 hop) + _ADDR6 + tcp + payload)
    repair_frame(frame, 0, len(frame))
    if bad:
        frame[70] ^= 0x11
    return bytes(frame)


def _udp6(n: int) -> bytes:
    return (b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x86\xdd" + struct.pack("!IHBB", 0x60000000, 8 + n, 17, 64) + _ADDR6
            + struct.pack("!HHHH", 1, 2, 8 + n, 0) + bytes(n))


def _run6(n: int, size: int, seq: int = 1000, **kw) -> list[bytes]:
    return [_tcp6(seq + i * size, bytes([i + 1]) * size, **kw) for i in range(n)]


def _seeds6(nc) -> list[bytes]:
    """IPv6 runs (merging, split by PSH, options, another flow) and the frames DATA_VALID is about: a run of one
    verified because its follower came and failed, UDP over both families. With GRO and without the repair
    too, so that a mutation breaking a later segment leaves the verified first one marked."""
    ts = b"\x01\x01\x08\x0a" + struct.pack("!II", 5, 6)
    sets = [
        _run6(11, 1400),
        _run6(3, 700) + [_tcp6(3100, b"p" * 700, flags=0x18)] + _run6(2, 700, seq=3800) + [_udp6(200)],
        _run6(4, 600, options=ts) + [f for pair in zip(_run6(2, 500), _run6(2, 500, sport=6000), strict=True)
                                     for f in pair],
        _run(1, 900) + [_tcp(1900, b"x" * 900)[:60] + b"\xbd" + _tcp(1900, b"x" * 900)[61:], _udp(300)]
        + _run6(1, 900) + [_tcp6(1900, b"y" * 900, bad=True), _udp6(300)],
        _run(3, 500) + _run6(3, 500, seq=2500) + _run(2, 500, seq=4000),
        # one key field at a time, each between two segments that merge: flow label, traffic class, hop limit
        [_tcp6(1000 + 400 * i, b"k" * 400, **kw) for i, kw in enumerate(
            [{}, {}, {"word": 0x60054321}, {}, {}, {"word": 0x60412345}, {}, {}, {"hop": 63}, {}, {}])],
    ]
    out = []
    for layout in (nc.TxLayout(False, 0xFFFF, 4, 0, 4, 60, 512), nc.TxLayout(True, 0xFFFF, 8, 2, 8, 60, 512)):
        for frames in sets:
            ntb = nc.build_ntb(layout, frames)
            out += [bytes([GRO | REPAIR, 0, 0, 0, 0]) + ntb, bytes([GRO, 0, 0, 0, 0]) + ntb]
    for f in _run6(2, 1400) + [_udp6(50), _tcp6(5000, b"z" * 1400, bad=True)]:
        out.append(bytes([GRO | ECM, 0, 0, 0, 0]) + f)
    return out


def seeds() -> list[bytes]:
    from usbnetd.protocols import ax88179_codec as axc
    from usbnetd.protocols import ncm_codec as nc

    ts = b"\x01\x01\x08\x0a" + struct.pack("!II", 5, 6)
    sets = [
        _run(11, 1400),
        _run(4, 1000) + [_udp(300)] + _run(3, 1000, seq=5000),
        _run(2, 700) + [_tcp(2400, b"p" * 700, flags=0x18)] + _run(2, 700, seq=3100),
        _run(3, 800) + _run(1, 300, seq=3400),
        [f for pair in zip(_run(3, 600), _run(3, 600, sport=6000), strict=True) for f in pair],
        _run(5, 600, options=ts),
        _run(4, 202) + [_udp(18), _udp(46)],
        _run(40, 300),
    ]
    out = []
    for layout in (nc.TxLayout(False, 0xFFFF, 4, 0, 4, 60, 512), nc.TxLayout(True, 0xFFFF, 8, 2, 8, 60, 512)):
        for frames in sets:
            ntb = nc.build_ntb(layout, frames)
            out.append(bytes([GRO | REPAIR, 0, 0, 0, 0]) + ntb)
            out.append(bytes([0, 0, 0, 0, 0]) + ntb)
        # one run across two transfers of a batch
        a, b = nc.build_ntb(layout, _run(3, 1000)), nc.build_ntb(layout, _run(3, 1000, seq=4000))
        out.append(bytes([GRO | SPLIT]) + struct.pack("<HH", 0, len(a)) + a + b)
        out.append(bytes([GRO | SHORTEN, 40, 0, 0, 0]) + a)
    for f in _run(3, 1400) + [_udp(50)]:
        out.append(bytes([GRO | ECM, 0, 0, 0, 0]) + f)
    f1, f2 = _run(2, 1400)
    out.append(bytes([GRO | ECM | SPLIT]) + struct.pack("<HH", 0, len(f1)) + f1 + f2)
    from usbnetd.protocols import rndis_codec as rc

    for frames in sets[:4]:
        t = b"".join(rc.build_transfer([f]) for f in frames)
        out.append(bytes([GRO | REPAIR | RNDIS, 0, 0, 0, 0]) + t)
        for cut in (len(t) // 3, len(t) // 2 + 5, 2000):  # messages, and headers, split across the two
            out.append(bytes([GRO | REPAIR | RNDIS | SPLIT]) + struct.pack("<HH", 0, cut) + t)
    for frames in sets[:4]:  # ASIX AX88179 aggregates of the same frames
        agg = axc.build_rx(frames[:12])
        out.append(bytes([GRO | REPAIR | AX, 0, 0, 0, 0]) + agg)
        out.append(bytes([AX, 0, 0, 0, 0]) + agg)
    a, b = axc.build_rx(_run(3, 1000)), axc.build_rx(_run(3, 1000, seq=4000), dummies=False)
    out.append(bytes([GRO | SPLIT | AX]) + struct.pack("<HH", 0, len(a)) + a + b)
    return out + _seeds6(nc)


check = nc_.checker(lambda: Harness())


def _instrument(atheris) -> None:
    with atheris.instrument_imports(include=["usbnetd"]):
        import usbnetd.core.stats  # noqa: F401
        import usbnetd.netdev.gro  # noqa: F401
        import usbnetd.netdev.port  # noqa: F401
        import usbnetd.protocols.driver  # noqa: F401
        import usbnetd.protocols.ncm_codec  # noqa: F401
        import usbnetd.protocols.rndis  # noqa: F401
        import usbnetd.protocols.rndis_codec  # noqa: F401


MODES = {"ntb": 0, "ecm": ECM, "rndis": RNDIS, "ax88179": AX}


def force_mode(check_input, mode: str):
    """`check_input` on every input with byte 0's mode bits replaced by `mode`'s: one C entry point per run
    (decode, decode_frame, decode_rndis or decode_ax88179), so each one's input count is exact. The input
    written to $USBNETD_FUZZ_LAST_INPUT is the rewritten one, which replays without --mode."""
    bit = MODES[mode]

    def check_mode(data: bytes) -> None:
        head = (data[0] if data else 0) & ~(ECM | RNDIS | AX) | bit
        check_input(bytes([head]) + data[1:])

    return check_mode


def main(argv: list[str]) -> int:
    """`--mode=ntb|ecm|rndis|ax88179` (any engine): only that entry point's inputs."""
    target_check = check
    rest = []
    for a in argv:
        if a.startswith("--mode="):
            target_check = force_mode(check, a.split("=", 1)[1])
        else:
            rest.append(a)
    return nc_.main(rest, TARGET, target_check, seeds, load_fastpath, _instrument, 20000)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
