"""Fuzz targets for every decoder of device bytes, shared by the atheris entry (`fuzz.py`) and the short CI run.

Each target is `check(data: bytes) -> None`: it feeds the input to the real decoder and raises (so the fuzzer
records a crash) when the decoder breaks its contract:

1. no exception escapes except the decoder's documented rejection type (`RndisError` for RNDIS control
   messages, `NoDriver` for protocol matching; none at all for everything else);
2. nothing is read past the input: every emitted (offset, length) lies inside [0, length) (the Collector
   idea of tests/unit/codec_helpers.py), and decoding the same `length` bytes in an exact-size buffer and in
   a larger buffer with a poisoned tail gives identical results (a read past `length` would see the tail,
   a read past an exact buffer raises);
3. every rejection is counted: the result (frames, commands and each error counter) equals an independent
   reference decoder written from the decoder's documented rules (the `ref_*` functions below, deliberately
   in a different style: slices and int.from_bytes instead of struct and running offsets), and counters the
   decoder does not own stay untouched.

`SEEDS[name]()` gives valid inputs made by our own builders (the seed corpus).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from usbnetd.core.stats import COUNTERS, Stats
from usbnetd.protocols import NoDriver, cdc, choose
from usbnetd.protocols import ax88179_codec as axc
from usbnetd.protocols import eem_codec as ec
from usbnetd.protocols import ipheth_codec as ipc
from usbnetd.protocols import ncm_codec as nc
from usbnetd.protocols import r8152_codec as rtc
from usbnetd.protocols import rndis_codec as rc
from usbnetd.protocols.driver import Binding, Options
from usbnetd.protocols.rndis import RndisDriver
from usbnetd.usb import descriptors as desc
from usbnetd.usb.sim import build_config_descriptor
from usbnetd.usb.transport import STATUS_OK

TAIL = b"\xa5" * 72  # poison after the transfer's length: more than any fixed header the decoders read
MAX_INPUT = 70000  # bigger than any NTB16 (0xFFFF); longer inputs are cut here


class ContractError(AssertionError):
    """A decoder broke its contract (the fuzzer reports this as a crash)."""


def _u16(b: bytes, o: int) -> int:
    return int.from_bytes(b[o : o + 2], "little")


def _u32(b: bytes, o: int) -> int:
    return int.from_bytes(b[o : o + 4], "little")


def _counters(stats: Stats) -> dict[str, int]:
    return {k: v for k, v in stats.as_dict().items() if v}


class Collector:
    """emit / on_command callbacks that check every span against the transfer length (see codec_helpers)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.out: list[tuple] = []

    def __call__(self, off: int, n: int) -> None:
        if not (0 <= off and 0 <= n and off + n <= self.length):
            raise ContractError(f"span ({off}, {n}) outside the {self.length}-byte transfer")
        self.out.append((off, n))

    def command(self, cmd: int, param: int, off: int, n: int) -> None:
        if not (0 <= off and 0 <= n and off + n <= self.length):
            raise ContractError(f"command span ({off}, {n}) outside the {self.length}-byte transfer")
        self.out.append(("cmd", cmd, param, off, n))


def _run_rx(make: Callable[[Stats], object], data: bytes, with_commands: bool = False) -> tuple[list, dict]:
    """Decode `data` in an exact buffer (bytes) and in a longer buffer with a poisoned tail (memoryview of a
    bytearray); both must agree. Returns (emitted, counters)."""
    results = []
    for buf in (data, memoryview(bytearray(data) + TAIL)):
        stats = Stats()
        dec = make(stats)
        col = Collector(len(data))
        if with_commands:
            n = dec.decode(buf, len(data), col, col.command)  # type: ignore[attr-defined]
        else:
            n = dec.decode(buf, len(data), col)  # type: ignore[attr-defined]
        frames = [s for s in col.out if s[0] != "cmd"]
        if n != len(frames):
            raise ContractError(f"decode returned {n} but emitted {len(frames)} frames")
        results.append((col.out, _counters(stats)))
    if results[0] != results[1]:
        raise ContractError(f"result depends on bytes past length: {results[0]} != {results[1]}")
    return results[0]


def _errors(frame: int, length: int) -> dict[str, int]:
    d = {"rx_errors": frame + length, "rx_frame_errors": frame, "rx_length_errors": length}
    return {k: v for k, v in d.items() if v}


def _expect(got: tuple[list, dict], want: tuple[list, dict], what: str) -> None:
    if got != want:
        raise ContractError(f"{what}: decoder {got} != reference {want}")


# ========================================================================================================
# NCM (NTB16 / NTB32)
# ========================================================================================================

NCM_MAX_DATAGRAM = 1514


def ref_ncm(b: bytes, max_dg: int = NCM_MAX_DATAGRAM) -> tuple[list, dict]:
    """NtbDecoder's documented rules, independently."""
    spans: list[tuple[int, int]] = []
    fe = le = 0
    n = len(b)
    if n < 12:
        return spans, _errors(1, 0)
    if b[:4] == b"NCMH":
        hlen, block, ndp = _u16(b, 4), _u16(b, 8), _u16(b, 10)
        want_hlen, ndp_min, ndp_hdr, dpe, sigs = 12, 16, 8, 4, (b"NCM0", b"NCM1")
    elif b[:4] == b"ncmh":
        if n < 16:
            return spans, _errors(1, 0)
        hlen, block, ndp = _u16(b, 4), _u32(b, 8), _u32(b, 12)
        want_hlen, ndp_min, ndp_hdr, dpe, sigs = 16, 32, 16, 8, (b"ncm0", b"ncm1")
    else:
        return spans, _errors(1, 0)
    if hlen != want_hlen:
        return spans, _errors(1, 0)
    if block == 0:
        end = n
    elif block > n or block < hlen:
        return spans, _errors(1, 0)
    else:
        end = block
    seen: list[int] = []
    while True:
        if ndp < hlen or ndp % 4 != 0 or ndp + ndp_min > end or ndp in seen or len(seen) >= 50:
            fe += 1
            break
        seen.append(ndp)
        sig = b[ndp : ndp + 4]
        nlen = _u16(b, ndp + 4)
        nxt = _u16(b, ndp + 6) if dpe == 4 else _u32(b, ndp + 8)
        if sig not in sigs or nlen < ndp_min or ndp + nlen > end:
            fe += 1
            break
        crc = 4 if sig == sigs[1] else 0
        entries = [(ndp + ndp_hdr + k * dpe) for k in range((nlen - ndp_hdr) // dpe)]
        for e in entries:
            if dpe == 4:
                off, dlen = _u16(b, e), _u16(b, e + 2)
            else:
                off, dlen = _u32(b, e), _u32(b, e + 4)
            if off == 0 or dlen == 0:
                break
            if not hlen <= off < end:
                fe += 1
            elif off + dlen > end or not ETH <= dlen - crc <= max_dg:
                le += 1
            else:
                spans.append((off, dlen - crc))
        if nxt == 0:
            break
        ndp = nxt
    return spans, _errors(fe, le)


ETH = 14


def check_ncm(data: bytes) -> None:
    data = data[:MAX_INPUT]
    got = _run_rx(lambda s: nc.NtbDecoder(s, max_datagram=NCM_MAX_DATAGRAM), data)
    _expect(got, ref_ncm(data), "NCM")


def _frames(sizes: list[int], tag: int = 0) -> list[bytes]:
    return [bytes((tag + i * 7 + j) & 0xFF for j in range(n)) for i, n in enumerate(sizes)]


def seeds_ncm(ntb32: bool) -> list[bytes]:
    out = []
    layouts = [
        nc.TxLayout(ntb32=ntb32, max_size=16384),
        nc.TxLayout(ntb32=ntb32, max_size=4096, divisor=4, remainder=2, alignment=4, max_datagrams=32),
        nc.TxLayout(ntb32=ntb32, max_size=8192, divisor=64, remainder=14, alignment=16, maxpacket=64),
        nc.TxLayout(ntb32=ntb32, max_size=2048, max_datagrams=3, maxpacket=512, pad_to_max=True),
    ]
    for i, layout in enumerate(layouts):
        for sizes in ([60], [14, 1514], [98, 42, 60, 590], [64] * 3):
            try:
                out.append(nc.build_ntb(layout, _frames(sizes, i), sequence=i))
            except ValueError:
                pass
    # a CRC NDP and a chain of two NDPs, made from a built NTB
    one = bytearray(nc.build_ntb(layouts[0], _frames([60, 70])))
    ndp = _u16(one, 10) if not ntb32 else _u32(one, 12)
    crc = bytearray(one)
    crc[ndp : ndp + 4] = b"ncm1" if ntb32 else b"NCM1"
    out.append(bytes(crc))
    return out


# ========================================================================================================
# RNDIS data batches
# ========================================================================================================

RNDIS_MAX_FRAME = rc.DEFAULT_MAX_FRAME


def ref_rndis_data(b: bytes, max_frame: int = RNDIS_MAX_FRAME) -> tuple[list, dict]:
    spans: list[tuple[int, int]] = []
    fe = le = 0
    pos, n = 0, len(b)
    while pos < n:
        if n - pos < 44:
            if any(b[pos:]):
                fe += 1
            break
        mtype, mlen, doff, dlen = (_u32(b, pos + 4 * k) for k in range(4))
        if mtype != 1 or mlen < 44 or mlen > n - pos:
            fe += 1
            break
        if doff < 36 or 8 + doff + dlen > mlen:
            fe += 1
        elif not ETH <= dlen <= max_frame:
            le += 1
        else:
            spans.append((pos + 8 + doff, dlen))
        pos += mlen
    return spans, _errors(fe, le)


def check_rndis_data(data: bytes) -> None:
    data = data[:MAX_INPUT]
    got = _run_rx(lambda s: rc.RndisDecoder(s, max_frame=RNDIS_MAX_FRAME), data)
    _expect(got, ref_rndis_data(data), "RNDIS data")


def seeds_rndis_data() -> list[bytes]:
    out = []
    for factor in (0, 2, 3):
        for sizes in ([60], [14, 1514, 60], [98, 42, 60, 590, 1200]):
            out.append(rc.build_transfer(_frames(sizes, factor), alignment_factor=factor))
    out.append(rc.build_transfer(_frames([64, 64])) + b"\x00")  # the ZLP-avoiding pad byte
    return out


# ========================================================================================================
# RNDIS control messages
# ========================================================================================================

_FIXED = {
    rc.INITIALIZE_CMPLT: 52, rc.QUERY_CMPLT: 24, rc.SET_CMPLT: 16, rc.KEEPALIVE_CMPLT: 16, rc.RESET_CMPLT: 16,
    rc.INDICATE_STATUS_MSG: 20, rc.KEEPALIVE_MSG: 12, rc.HALT_MSG: 12, rc.RESET_MSG: 12, rc.INITIALIZE_MSG: 24,
    rc.QUERY_MSG: 28, rc.SET_MSG: 28,
}
_BUFFER = {rc.QUERY_CMPLT: (24, 16, 20), rc.INDICATE_STATUS_MSG: (20, 12, 16), rc.QUERY_MSG: (28, 16, 20),
           rc.SET_MSG: (28, 16, 20)}  # fixed header, where buffer length and offset are


def ref_control_rejects(b: bytes) -> bool:
    """True when parse_control must raise RndisError (its documented checks)."""
    if len(b) < 8:
        return True
    mtype, mlen = _u32(b, 0), _u32(b, 4)
    if mlen < 8 or mlen > len(b) or mtype == rc.PACKET_MSG:
        return True
    if mlen < _FIXED.get(mtype, 0):
        return True
    if mtype in _BUFFER:
        fixed, at_len, at_off = _BUFFER[mtype]
        blen, boff = _u32(b, at_len), _u32(b, at_off)
        if blen and (8 + boff < fixed or 8 + boff + blen > mlen):
            return True
    return False


class _Recorder:
    """Takes the KEEPALIVE_CMPLT the driver sends back (the only transport call `_response` can make)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def submit_control(self, request_type, request, value, index, data, callback, timeout_ms=5000) -> bool:
        self.sent.append(bytes(data))
        return True


_EP_IN, _EP_OUT = desc.Endpoint(0x81, 2, 64, 0), desc.Endpoint(0x02, 2, 64, 0)


def check_rndis_control(data: bytes) -> None:
    data = data[:8192]
    must_reject = ref_control_rejects(data)
    for buf in (data, bytearray(data), memoryview(bytearray(data))):
        try:
            msg = rc.parse_control(buf)
        except rc.RndisError as exc:
            if not must_reject:
                raise ContractError(f"parse_control rejected a valid message: {exc}") from exc
            if "\n" in str(exc):
                raise ContractError(f"RndisError is not one line: {exc!r}") from exc
        else:
            if must_reject:
                raise ContractError(f"parse_control accepted a malformed message as {msg!r}")
            payload = getattr(msg, "payload", b"")
            if len(payload) > len(data) or (payload and payload not in data):
                raise ContractError("payload is not a slice of the message")
    # The run-time path: the driver's response handler counts every rejection and survives everything else.
    stats = Stats()
    binding = Binding(1, 0, 1, 0, _EP_IN, _EP_OUT, None, None)
    rec = _Recorder()
    drv = RndisDriver(rec, binding, stats, Options())  # type: ignore[arg-type]
    drv._response(STATUS_OK, data)
    if len(drv.events) > 1:  # one response carries at most one indication
        raise ContractError(f"one response queued {len(drv.events)} link events")
    # Nothing, or the single zero byte MS-RNDIS sends when no response is queued, is not counted; every other
    # rejection is, a single non-zero byte included.
    want = 1 if must_reject and data not in (b"", b"\x00") else 0
    if stats.notification_errors != want:
        raise ContractError(f"notification_errors {stats.notification_errors}, expected {want}")


def seeds_rndis_control() -> list[bytes]:
    return [
        rc.initialize_complete(1),
        rc.initialize_complete(7, max_packets_per_transfer=40, max_transfer_size=16384, packet_alignment_factor=3),
        rc.query_complete(2, payload=bytes(range(6))),
        rc.query_complete(3, payload=struct.pack("<I", 1500)),
        rc.query_complete(4, rc.STATUS_NOT_SUPPORTED),
        rc.set_complete(5),
        rc.keepalive_complete(6),
        rc.reset_complete(addressing_reset=1),
        rc.indicate_status(rc.STATUS_MEDIA_CONNECT),
        rc.indicate_status(rc.STATUS_MEDIA_DISCONNECT, b"\x01\x02\x03\x04"),
        rc.keepalive(8),
        rc.halt(9),
        rc.reset(),
        rc.initialize(10, 16384),
        rc.query(11, rc.OID_802_3_PERMANENT_ADDRESS),
        rc.set_packet_filter(12, rc.FILTER_DEFAULT),
        rc.query_complete(13, payload=bytes(64)) + bytes(100),  # a response buffer longer than the message
    ]


# ========================================================================================================
# EEM streams
# ========================================================================================================

EEM_MAX_FRAME = ec.DEFAULT_MAX_FRAME


def ref_eem(b: bytes, max_frame: int = EEM_MAX_FRAME) -> tuple[list, dict]:
    out: list[tuple] = []
    fe = le = 0
    pos, n = 0, len(b)
    while pos < n:
        if n - pos < 2:
            le += 1
            break
        hdr = _u16(b, pos)
        pos += 2
        if hdr >> 15:
            cmd, param = (hdr >> 11) & 7, hdr & 0x7FF
            dlen = param if cmd in (0, 1) else 0
            if pos + dlen > n:
                le += 1
                break
            out.append(("cmd", cmd, param, pos, dlen))
            pos += dlen
            continue
        plen = hdr & 0x3FFF
        if plen == 0:
            continue
        if pos + plen > n:
            le += 1
            break
        flen = plen - 4
        tail = b[pos + flen : pos + plen]
        if not ETH <= flen <= max_frame:
            le += 1
        elif hdr & 0x4000 and zlib.crc32(b[pos : pos + flen]) != int.from_bytes(tail, "little"):
            fe += 1
        elif not hdr & 0x4000 and tail != b"\xde\xad\xbe\xef":
            fe += 1
        else:
            out.append((pos, flen))
        pos += plen
    return out, _errors(fe, le)


def check_eem(data: bytes) -> None:
    data = data[:MAX_INPUT]
    got = _run_rx(lambda s: ec.EemDecoder(s, max_frame=EEM_MAX_FRAME), data, with_commands=True)
    _expect(got, ref_eem(data), "EEM")


def seeds_eem() -> list[bytes]:
    out = []
    for crc in (False, True):
        for sizes in ([60], [14, 1514, 60], [98, 42, 60, 590, 1200]):
            out.append(ec.build_transfer(_frames(sizes, int(crc)), crc=crc))
    out.append(ec.echo(b"ping") + ec.data_packet(_frames([60])[0]) + ec.command(ec.CMD_TICKLE, 5))
    out.append(ec.echo_response(bytes(40)) + ec.ZERO_LENGTH_PACKET + ec.data_packet(_frames([100])[0], crc=True))
    out.append(ec.command(ec.CMD_SUSPEND_HINT, 100) + ec.command(ec.CMD_RESPONSE_HINT, 3))
    return out


# ========================================================================================================
# CDC functional descriptors
# ========================================================================================================


def ref_cdc_functional(b: bytes) -> tuple:
    pos, n, bad = 0, len(b), 0
    header = control = eth = ncm = None
    subs: tuple[int, ...] = ()
    minimum = {0x00: 5, 0x06: 5, 0x0F: 13, 0x1A: 6}
    while pos < n:
        if n - pos < 2 or b[pos] < 2 or pos + b[pos] > n:
            bad += 1
            break
        blen = b[pos]
        d = b[pos : pos + blen]
        if d[1] == 0x24:
            if blen < 3 or blen < minimum.get(d[2], 0):
                bad += 1
            elif d[2] == 0x00 and header is None:
                header = _u16(d, 3)
            elif d[2] == 0x06 and control is None:
                control, subs = d[3], tuple(d[4:])
            elif d[2] == 0x0F and eth is None:
                eth = (d[3], _u32(d, 4), _u16(d, 8), _u16(d, 10) & 0x7FFF, bool(d[11] & 0x80), d[12])
            elif d[2] == 0x1A and ncm is None:
                ncm = (_u16(d, 3), d[5])
        pos += blen
    return header, control, subs, eth, ncm, bad


def check_cdc_functional(data: bytes) -> None:
    data = data[:4096]
    for buf in (data, bytearray(data), memoryview(data)):
        f = cdc.parse_cdc_functional(buf)
        eth = f.ethernet and (f.ethernet.imac_index, f.ethernet.statistics, f.ethernet.max_segment_size,
                              f.ethernet.mc_filters, f.ethernet.mc_imperfect, f.ethernet.power_filters)
        ncm = f.ncm and (f.ncm.bcd_version, f.ncm.capabilities)
        got = (f.header_bcd, f.union_control, f.union_subordinates, eth, ncm, f.malformed)
        _expect(got, ref_cdc_functional(data), "CDC functional")  # type: ignore[arg-type]


def _config_seeds() -> list[bytes]:
    seeds = [build_config_descriptor("ncm"), build_config_descriptor("ecm")]
    # RNDIS (02/02/FF + CDC data), the shape of f_rndis and QEMU's usb-net configuration 2
    body = bytes([9, 4, 0, 0, 1, 2, 2, 0xFF, 0]) + bytes([5, 0x24, 0, 0x10, 1]) + bytes([5, 0x24, 6, 0, 1])
    body += bytes([7, 5, 0x83, 3, 8, 0, 9]) + bytes([9, 4, 1, 0, 2, 0x0A, 0, 0, 0])
    body += bytes([7, 5, 0x81, 2, 0, 2, 0, 7, 5, 0x02, 2, 0, 2, 0])
    seeds.append(bytes([9, 2]) + struct.pack("<H", 9 + len(body)) + bytes([2, 2, 0, 0x80, 50]) + body)
    # EEM (02/0C/07, bulk pair on the same interface)
    body = bytes([9, 4, 0, 0, 2, 2, 0x0C, 7, 0]) + bytes([7, 5, 0x81, 2, 0, 2, 0, 7, 5, 0x02, 2, 0, 2, 0])
    seeds.append(bytes([9, 2]) + struct.pack("<H", 9 + len(body)) + bytes([1, 1, 0, 0x80, 50]) + body)
    return seeds


def seeds_cdc_functional() -> list[bytes]:
    out = []
    for raw in _config_seeds():
        config, _ = desc.parse_configuration(raw)
        assert config is not None
        out += [a.extra for i in config.interfaces for a in i.alts if a.extra]
    return out


# ========================================================================================================
# Configuration descriptors (walking, then protocol matching)
# ========================================================================================================


def ref_config_malformed(b: bytes) -> tuple[bool, int, int]:
    """(usable header, bytes consumed, malformed count) by parse_configuration's documented rules."""
    if len(b) < 9 or b[0] < 9 or b[1] != 2:
        return False, len(b), 0
    end = min(len(b), max(_u16(b, 2), 9))
    pos, bad = b[0], 0
    while pos + 2 <= end:
        length, dtype = b[pos], b[pos + 1]
        if length < 2 or pos + length > end:
            bad += 1
            break
        if (dtype == 4 and length < 9) or (dtype == 5 and length < 7):
            bad += 1
        pos += length
    return True, end, bad


def check_config(data: bytes) -> None:
    data = data[:8192]
    config, used = desc.parse_configuration(data)
    ok, want_used, want_bad = ref_config_malformed(data)
    got = (config is not None, used, config.malformed if config else 0)
    _expect(got, (ok, want_used, want_bad), "configuration walk")  # type: ignore[arg-type]
    if config is not None:
        extra = 0
        for iface in config.interfaces:
            for alt in iface.alts:
                extra += len(alt.extra)
                for ep in alt.endpoints:
                    if ep.max_packet > 0x7FF:
                        raise ContractError(f"wMaxPacketSize {ep.max_packet} kept its multiplier bits")
                cdc.parse_cdc_functional(alt.extra)
        if extra > used:
            raise ContractError(f"{extra} bytes of class-specific descriptors from a {used}-byte walk")
        try:
            choose([config], config.value)
        except NoDriver as exc:
            if "\n" in str(exc):
                raise ContractError(f"NoDriver is not one line: {exc!r}") from exc
    # the sysfs blob: a device descriptor, then configurations back to back
    device = bytes([18, 1, 0, 2, 0, 0, 0, 64, 0x6B, 0x1D, 4, 1, 0, 1, 1, 2, 3, 2])
    dev, configs = desc.parse_descriptor_blob(device + data + data)
    if dev is None or len(configs) > 2 * len(data) // 9 + 1:
        raise ContractError(f"descriptor blob: {dev}, {len(configs)} configurations from {len(data)} bytes")
    desc.parse_descriptor_blob(data)


def seeds_config() -> list[bytes]:
    return _config_seeds()


# ========================================================================================================
# Notifications (interrupt IN), a sequence of transfers
# ========================================================================================================


def _split(data: bytes) -> list[bytes]:
    """The input as transfers: a length byte (0-31), then that many bytes."""
    out, pos = [], 0
    while pos < len(data) and len(out) < 64:
        n = data[pos] & 0x1F
        out.append(data[pos + 1 : pos + 1 + n])
        pos += 1 + n
    return out


def ref_notifications(transfers: list[bytes]) -> list:
    out: list = []
    pending = False
    for t in transfers:
        if pending:
            pending = False
            out.append(("speed", _u32(t, 4), _u32(t, 0)) if len(t) >= 8 else "error")
            continue
        if len(t) < 8 or t[0] != 0xA1:
            out.append("error")
        elif t[1] == 0x00:
            out.append(("link", bool(_u16(t, 2))))
        elif t[1] == 0x01:
            out.append("response")
        elif t[1] == 0x2A:
            if _u16(t, 6) < 8:
                out.append("error")
            elif len(t) >= 16:
                out.append(("speed", _u32(t, 12), _u32(t, 8)))
            elif len(t) == 8:
                pending = True
                out.append("pending")
            else:
                out.append("error")
        else:
            out.append("unknown")
    return out


def check_notifications(data: bytes) -> None:
    transfers = _split(data[:4096])
    want = ref_notifications(transfers)
    for tail in (b"", TAIL):
        stats = Stats()
        p = cdc.NotificationParser(stats)
        got = []
        for t in transfers:
            before = (p.errors, p.unknown, p.count)
            buf = bytearray(t) + tail
            n = p.feed(memoryview(buf) if tail else bytes(buf), len(t))
            d_err, d_unk, d_cnt = (a - b for a, b in zip((p.errors, p.unknown, p.count), before, strict=True))
            if n is not None:
                kind = {0x00: ("link", n.connected), 0x01: "response"}.get(n.kind, ("speed", n.up_bps, n.down_bps))
                ok = (d_err, d_unk, d_cnt) == (0, 0, 1)
            elif p.pending:
                kind, ok = "pending", (d_err, d_unk, d_cnt) == (0, 0, 0)
            elif d_unk:
                kind, ok = "unknown", (d_err, d_unk, d_cnt) == (1, 1, 0)
            else:
                kind, ok = "error", (d_err, d_unk, d_cnt) == (1, 0, 0)
            if not ok:
                raise ContractError(f"{t.hex()}: {kind} with counter changes {(d_err, d_unk, d_cnt)}")
            got.append(kind)
        if (stats.notifications, stats.notification_errors) != (p.count, p.errors):
            raise ContractError("Stats and the parser's own counters disagree")
        if _counters(stats).keys() - {"notifications", "notification_errors"}:
            raise ContractError(f"unexpected counters {_counters(stats)}")
        if got != want:
            raise ContractError(f"notifications {got} != reference {want}")


def seeds_notifications() -> list[bytes]:
    def t(b: bytes) -> bytes:
        return bytes([len(b)]) + b

    conn = struct.pack("<BBHHH", 0xA1, 0, 1, 0, 0)
    disc = struct.pack("<BBHHH", 0xA1, 0, 0, 0, 0)
    speed = struct.pack("<BBHHH", 0xA1, 0x2A, 0, 0, 8)
    rates = struct.pack("<II", 480_000_000, 100_000_000)
    resp = struct.pack("<BBHHH", 0xA1, 1, 0, 0, 0)
    return [t(conn) + t(speed + rates), t(speed) + t(rates) + t(disc), t(resp) * 3, t(conn) * 4 + t(speed)]


# ========================================================================================================
# ASIX AX88179 RX aggregates
# ========================================================================================================

AX_MAX_FRAME = 1514


def ref_ax88179(b: bytes, max_frame: int = AX_MAX_FRAME) -> tuple[list, dict]:
    """ax88179_codec.RxDecoder's documented rules (with the 2-byte alignment header), independently."""
    n = len(b)
    if n == 0:
        return [], {}
    if n < 4:
        return [], _errors(1, 0)
    count, hdr_off = _u16(b, n - 4), _u16(b, n - 2)
    if count == 0 or hdr_off + 4 * count > n - 4:
        return [], _errors(1, 0)
    words = [_u32(b, hdr_off + 4 * k) for k in range(count)]
    spans: list[tuple[int, int]] = []
    fe = le = 0
    start = 0
    for w in words:
        size = (w >> 16) % 8192
        if not size:
            continue
        if start + size > hdr_off:
            le += 1
            break
        here, start = start, start + -(-size // 8) * 8
        if w & 0xA0000000:
            fe += 1
        elif ETH <= size - 2 <= max_frame:
            spans.append((here + 2, size - 2))
        else:
            le += 1
    return spans, _errors(fe, le)


def check_ax88179(data: bytes) -> None:
    data = data[:MAX_INPUT]
    got = _run_rx(lambda s: axc.RxDecoder(s, max_frame=AX_MAX_FRAME, ip_align=True), data)
    _expect(got, ref_ax88179(data), "AX88179")


def seeds_ax88179() -> list[bytes]:
    out = []
    for dummies in (True, False):
        for padding2 in (True, False):
            for sizes in ([60], [14, 1514], [98, 42, 60, 590], [64] * 5):
                out.append(axc.build_rx(_frames(sizes, len(out)), dummies=dummies, padding2=padding2))
    flagged = bytearray(axc.build_rx(_frames([60, 70]), dummies=False))
    hdr_off = _u16(flagged, len(flagged) - 2)
    flagged[hdr_off + 3] |= 0x20  # the first frame's CRC-error bit
    out.append(bytes(flagged))
    return out


# ========================================================================================================
# Realtek RTL8153 RX aggregates
# ========================================================================================================

RTL_MAX_FRAME = 1514


def ref_r8152(b: bytes, max_frame: int = RTL_MAX_FRAME) -> tuple[list, dict]:
    """r8152_codec.RxDecoder's documented rules, independently: descriptors of 24 bytes, a 15-bit length
    that includes a 4-byte FCS and a CRC-error flag above it, the next descriptor at the following multiple
    of 8."""
    spans: list[tuple[int, int]] = []
    crc = 0
    at = 0
    while len(b) - at >= 24:
        n = _u16(b, at) % 32768
        if n == 0:
            break
        frame_len, data_at = n - 4, at + 24
        if not ETH <= frame_len <= max_frame or data_at + n > len(b):
            return spans, _errors(crc, 1)
        if b[at + 1] & 0x80:
            crc += 1
        else:
            spans.append((data_at, frame_len))
        at = -(-(data_at + n) // 8) * 8
    return spans, _errors(crc, 0)


def check_r8152(data: bytes) -> None:
    data = data[:MAX_INPUT]
    got = _run_rx(lambda s: rtc.RxDecoder(s, max_frame=RTL_MAX_FRAME), data)
    _expect(got, ref_r8152(data), "RTL8153")


def seeds_r8152() -> list[bytes]:
    out = [rtc.build_rx(_frames(sizes, i)) for i, sizes in enumerate(([60], [14, 1514], [98, 42, 60, 590],
                                                                       [64] * 5, [1500, 1500, 1500]))]
    out.append(rtc.build_rx(_frames([60, 70])) + bytes(8))  # the short tail after a wMaxPacketSize multiple
    out.append(rtc.build_rx(_frames([80])) + bytes(24) + rtc.build_rx(_frames([90])))  # a zero-length stop
    flagged = bytearray(rtc.build_rx(_frames([60, 70])))
    flagged[1] |= 0x80  # the first frame's CRC-error bit
    out.append(bytes(flagged))
    return out


# ========================================================================================================
# Apple iPhone tethering, legacy RX (one frame behind 2 bytes of padding)
# ========================================================================================================

IPH_MAX_FRAME = 1514


def ref_ipheth(b: bytes, max_frame: int = IPH_MAX_FRAME) -> tuple[list, dict]:
    """ipheth_codec.RxDecoder's documented rules, independently: nothing in an empty transfer or in the 4-byte
    control frame that starts 00 01; otherwise the frame is everything after the first two bytes, and one
    shorter than an Ethernet header or longer than max_frame is one length error."""
    if not b or (len(b) == 4 and b[0] == 0 and b[1] == 1):
        return [], {}
    if ETH <= len(b) - 2 <= max_frame:
        return [(2, len(b) - 2)], {}
    return [], _errors(0, 1)


def check_ipheth(data: bytes) -> None:
    data = data[:MAX_INPUT]
    got = _run_rx(lambda s: ipc.RxDecoder(s, max_frame=IPH_MAX_FRAME), data)
    _expect(got, ref_ipheth(data), "iPhone")


def seeds_ipheth() -> list[bytes]:
    out = [ipc.build_rx(f) for f in _frames([14, 60, 510, 1022, 1500, 1514])]
    out += [b"", b"\x00\x01\x01\x00", b"\x00\x02\x01\x00", b"\x00\x00", ipc.build_rx(bytes(1515))]
    return out


# ========================================================================================================

TARGETS: dict[str, tuple[Callable[[bytes], None], Callable[[], list[bytes]]]] = {
    "ncm16": (check_ncm, lambda: seeds_ncm(False)),
    "ncm32": (check_ncm, lambda: seeds_ncm(True)),
    "rndis-control": (check_rndis_control, seeds_rndis_control),
    "rndis-data": (check_rndis_data, seeds_rndis_data),
    "eem": (check_eem, seeds_eem),
    "cdc-functional": (check_cdc_functional, seeds_cdc_functional),
    "config": (check_config, seeds_config),
    "notifications": (check_notifications, seeds_notifications),
    "ax88179": (check_ax88179, seeds_ax88179),
    "r8152": (check_r8152, seeds_r8152),
    "ipheth": (check_ipheth, seeds_ipheth),
}
assert set(COUNTERS) >= {"rx_errors", "rx_frame_errors", "rx_length_errors", "notification_errors"}
