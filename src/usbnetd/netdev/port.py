"""The TAP port: every frame between usbnetd and the host's stack, and every per-frame counter of that edge.

RX has one delivery point, as usbnet has `usbnet_skb_return`: a driver's `rx_decode(view, length, sink)`
hands each frame to this port, either as `emit(offset, length)` (a frame inside the transfer being decoded)
or `deliver(view, offset, length)` (a frame from a buffer of the driver's own, RNDIS's carried message).
With GRO the frames go through the coalescer (gro.py), which decides and calls back `write_frame` /
`write_superframe`; without it they are written one by one. Either way the counting happens here, once:
`rx_packets`/`rx_bytes` for what the TAP took, `rx_dropped` (and one log line per burst) for what it refused.

TX: `read_into(buf)` reads one frame from the TAP straight into the slot a driver's framer offered (NCM's
next datagram position, RNDIS's payload after its header), dropping and counting what is not Ethernet or is
larger than the device takes.

With a vnet header (GRO or TX offloads on) every read and write starts with a `struct virtio_net_hdr`. Without
offloads reads get it into a scratch buffer and ignore it (the kernel hands over whole, checksummed frames).
With `offload` (the TAP has TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, tap.py) the header is parsed (gso.py): a
TCP super-frame is read into the slot and on into a spill buffer past max_frame, cut into segments, the
first returned in the slot and the rest kept in `pending` for `next_segment` to hand out, slot by slot,
before the TAP is read again; a frame with NEEDS_CSUM gets its checksum completed in place. What does not
match its header is dropped and counted (`tx_dropped`, `offload_dropped`). This is the reference for the C
framer's offload mode; the daemon turns offloads on only with the C framer (service.py says why).

With `device_offloads` (a vendor chip that cuts super-frames and fills checksums itself: the AX88179, the
RTL8153) the same offers are made to the kernel, but the work is left to the chip: `read_into` reads a frame
of up to `read_max` bytes (the chip's largest super-frame, the TAP's gso_max_size) whole, checks it against its
vnet header exactly as above, and fills `meta` (gso.TxMeta: GSO type, MSS, checksum start and offset) for the
driver's TX descriptor; what the chip cannot do (a checksum its engine does not cover) is done here. A frame
longer than the room left in a transfer that already holds frames is kept whole and CARRIED is returned: the
data path finishes that transfer and takes the frame with `next_segment` into the next.

The native fast path (usbnetd.native, C) does the same RX work for the framings it knows (an NTB, one frame
per transfer): `use_native(kind, limit)` attaches it, and then `rx_native(view, length)` /
`rx_native_end()` replace the driver's decode and this port's emit for a whole batch, with the same writes
and the same counters (tests/unit/test_native_ncm_rx.py, fuzz/native_ncm.py). The Python path stays the
reference and the fallback.

Tracing (`set_tracer`, core/trace.py): while `usbnetd trace` watches, the C path is set aside (its RX writes
happen in C, where nothing can see them) and `emit`, `deliver` and `read_into` become traced versions that
record each frame and then do the untraced work; received frames then go to the TAP one by one (GRO in
Python would cost more than it saves). Without a trace nothing here checks for one.
"""

from __future__ import annotations

import logging
import os
from collections import deque

from .. import native
from ..core.stats import BurstLog, Stats
from . import gso
from .gro import VNET_HDR_LEN, ZERO_HDR, Coalescer

log = logging.getLogger(__name__)

ETH_HLEN = 14
CARRIED = -2  # read_into: the frame did not fit the room left; finish the transfer, then next_segment


class TapPort:
    def __init__(self, fd: int, stats: Stats, max_frame: int, gro: bool, offload: bool = False,
                 device_offloads: int = 0, read_max: int = 0) -> None:
        self.fd = fd
        self.stats = stats
        self.max_frame = max_frame  # the largest frame the device takes (TX); longer reads are dropped
        self.vnet = VNET_HDR_LEN if gro or offload or device_offloads else 0
        self._vnet_in = bytearray(VNET_HDR_LEN)
        # Hardware offloads (TUN_F_* the device does itself, `_read_device`): super-frames of up to `read_max`
        # bytes go to the driver whole, with what its descriptor must ask for in `meta`.
        self.device_offloads = device_offloads
        self.read_max = max(read_max, max_frame) if device_offloads else max_frame
        self.meta = gso.TxMeta()
        self._carried_hdr: bytes | None = None  # the vnet header of a frame carried to the next transfer
        self.device_tso = 0  # super-frames handed to the device whole
        self.device_csum = 0  # frames whose checksum the device completes
        # TX offloads (gso.py): TSO super-frames cut into segments, partial checksums completed
        self.offload = offload
        # With device offloads a read may still be up to 64 KiB (a kernel that kept a larger gso_max_size, or
        # forwards larger GRO packets): read whole, then cut here (_read_device).
        self._spill = bytearray(gso.SPILL if offload or device_offloads else 0)
        self.pending: deque[bytes] = deque()  # segments of a super-frame not yet handed out
        self.tso_superframes = 0
        self.tso_segments = 0
        self.csum_completed = 0
        self.offload_dropped = 0
        self.gro: Coalescer | None = Coalescer(self) if gro else None
        self.view: memoryview | None = None  # the RX transfer being decoded (emit's offsets are into it)
        # The decoders' emit: through the coalescer, or straight to the TAP (behind a zero vnet header when the
        # TAP has one for TX offloads without GRO).
        self.emit = self.gro.emit if self.gro is not None else self._emit_vnet if self.vnet else self._emit_plain
        self.write_errors = BurstLog("TAP write failing", logger=log)
        self.read_errors = BurstLog("TAP read failing", logger=log)
        self.native = None  # a usbnetd.native NcmRx when the C path decodes RX (use_native)
        self.rx_native = None  # its decode, decode_frame, decode_rndis or decode_ax88179, bound once
        self.tracer = None  # a core.trace.Tracer while a trace is attached (set_tracer)
        self._untraced: tuple | None = None  # (emit, rx_native) to put back when the trace ends

    # ------------------------------------------------------------------ the native RX path
    def use_native(self, kind: str, limit: int, rx_size: int = 0) -> bool:
        """Let the C path decode and write RX ("ntb": NCM, "frame": one frame per transfer, "rndis": RNDIS
        PACKET_MSGs with the split-message carry, which needs the transfer size, "ax88179": ASIX AX88179
        aggregates). False when it is not available (not built, or USBNETD_PURE_PYTHON): the Python path
        goes on."""
        if not native.AVAILABLE or kind not in ("ntb", "frame", "rndis", "ax88179"):
            return False
        self.native = native.NcmRx(self.fd, self.vnet, self.gro is not None, limit, rx_size=rx_size)
        self.rx_native = {"ntb": self.native.decode, "frame": self.native.decode_frame,
                          "rndis": self.native.decode_rndis, "ax88179": self.native.decode_ax88179}[kind]
        return True

    def native_tx(self, max_frame: int, layout: tuple, sequence: int, offload: bool = False):
        """The C TX framer for an NTB layout (usbnetd.native.NcmTx), or None when it is not available or does
        not take this layout (then the driver frames in Python). `offload`: it parses the vnet header (TSO,
        checksum completion), which needs the port opened with a vnet header."""
        if not native.AVAILABLE:
            return None
        try:
            return native.NcmTx(self.fd, self.vnet, max_frame, *layout, sequence=sequence, offload=offload)
        except ValueError as exc:
            log.info("the C TX framer does not take this NTB layout (%s): framing in Python", exc)
            return None

    def native_frame_tx(self, max_frame: int, maxpacket: int, framing: int = 0, offload: bool = False):
        """The C TX pump for one frame per transfer (usbnetd.native.FrameTx: reads this TAP into bulk OUT
        transfers it owns, `framing` around each frame: protocols/driver.py FRAME_TX_*; with `offload`, TCP
        super-frames cut and partial checksums completed as _read_offload does), or None when it is not
        available."""
        if not native.AVAILABLE:
            return None
        return native.FrameTx(self.fd, self.vnet, max_frame, maxpacket, framing, offload)

    def native_ncm_pump(self, framer):
        """The C TX pump for NCM (usbnetd.native.NcmPump: `framer`, an NcmTx from native_tx, builds each NTB in
        a bulk OUT transfer the pump owns), or None when it is not available."""
        if not native.AVAILABLE or framer is None:
            return None
        return native.NcmPump(framer)

    def rx_native_end(self) -> None:
        """A batch is decoded by the C path: write what it holds, and bring its counts into `stats`."""
        n = self.native
        n.flush()
        failed = n.add_to(self.stats)
        if failed:
            self.write_errors.hit(os.strerror(n.last_errno), failed)

    def rx_usb_end(self) -> int:
        """After handle_events, when the C path takes the USB completions itself: write what GRO holds,
        resubmit the transfers it decoded, bring its counts into `stats`. Returns how many it decoded."""
        n = self.native
        done = n.usb_end()
        failed = n.add_to(self.stats)
        if failed:
            self.write_errors.hit(os.strerror(n.last_errno), failed)
        return done

    # ------------------------------------------------------------------ tracing
    def set_tracer(self, tracer) -> None:
        """Attach a tracer (or detach it with None) between batches: every frame through this port is then
        recorded, and the C RX path is off until it is detached. The traced methods are instance attributes
        shadowing the plain ones, so the untraced path has no check in it."""
        if tracer is not None:
            if self._untraced is None:
                self._untraced = (self.emit, self.rx_native)
            self.tracer = tracer
            self.rx_native = None  # DataPath.process then decodes in Python, through emit below
            self.emit = self._emit_traced
            self.deliver = self._deliver_traced
            self.read_into = self._read_into_traced
            return
        if self._untraced is not None:
            self.emit, self.rx_native = self._untraced
            self._untraced = None
        for name in ("deliver", "read_into"):
            vars(self).pop(name, None)
        self.tracer = None

    def _emit_traced(self, offset: int, length: int) -> None:
        frame = self.view[offset : offset + length]
        self.tracer.frame(frame, True)
        self.write_frame(frame, length)

    def _deliver_traced(self, view: memoryview, offset: int, length: int) -> None:
        self.tracer.frame(view[offset : offset + length], True)
        TapPort.deliver(self, view, offset, length)

    def _read_into_traced(self, buf: memoryview) -> int:
        n = TapPort.read_into(self, buf)
        if n > 0:
            self.tracer.frame(buf[:n], False)
        elif n == CARRIED:
            self.tracer.frame(memoryview(self.pending[-1]), False)
        return n

    # ------------------------------------------------------------------ RX: device -> host
    def rx_begin(self, view: memoryview) -> None:
        """A received transfer is about to be decoded into this port."""
        self.view = view
        if self.gro is not None:
            self.gro.view = view

    def rx_end(self) -> None:
        """A batch of transfers is decoded: write what GRO still holds before their buffers are reused."""
        if self.gro is not None:
            self.gro.flush()
            self.gro.view = None
        self.view = None

    def _emit_plain(self, offset: int, length: int) -> None:
        try:
            os.write(self.fd, self.view[offset : offset + length])
        except OSError as exc:
            self._write_failed(1, exc)
            return
        stats = self.stats
        stats.rx_packets += 1
        stats.rx_bytes += length

    def _emit_vnet(self, offset: int, length: int) -> None:
        self.write_frame(self.view[offset : offset + length], length)

    def deliver(self, view: memoryview, offset: int, length: int) -> None:
        """One frame from a buffer other than the transfer being decoded; whatever GRO holds goes first."""
        if self.gro is not None:
            self.gro.flush()
        self.write_frame(view[offset : offset + length], length)

    def write_frame(self, frame: memoryview, length: int, hdr: bytes = ZERO_HDR) -> bool:
        """One frame, unmarked (the stack verifies its checksums) unless the coalescer hands a header
        (gro.VALID_HDR: its checksums were verified)."""
        try:
            if self.vnet:
                os.writev(self.fd, (hdr, frame))
            else:
                os.write(self.fd, frame)
        except OSError as exc:
            self._write_failed(1, exc)
            return False
        stats = self.stats
        stats.rx_packets += 1
        stats.rx_bytes += length
        return True

    def write_superframe(self, iov: list, frames: int, nbytes: int) -> bool:
        """A coalesced run: the vnet header and the pieces in `iov`, `frames` segments of `nbytes` on the wire."""
        try:
            os.writev(self.fd, iov)
        except OSError as exc:
            self._write_failed(frames, exc)
            return False
        stats = self.stats
        stats.rx_packets += frames
        stats.rx_bytes += nbytes
        return True

    def _write_failed(self, frames: int, exc: OSError) -> None:
        # BlockingIOError (the TAP's queue is full) or EIO (interface down): dropped and counted, never raised.
        self.stats.rx_dropped += frames
        self.write_errors.hit(exc.strerror)

    # ------------------------------------------------------------------ TX: host -> device
    def read_into(self, buf: memoryview) -> int:
        """Read one frame into `buf`. Returns its length; 0 when a frame was read and dropped (not Ethernet,
        or longer than the device takes); -1 when the TAP is empty (or failing: logged once per burst).
        With offloads a super-frame gives its first segment here and leaves the rest in `pending`."""
        if self.offload:
            return self._read_offload(buf)
        if self.device_offloads:
            return self._read_device(buf)
        n = self._readv((self._vnet_in, buf) if self.vnet else (buf,))
        if n is None:
            return -1
        if n < ETH_HLEN or n > self.max_frame:
            # Larger than the device takes (the user raised the MTU past it, or it did not fit the slot) or
            # not Ethernet at all.
            self.stats.tx_dropped += 1
            return 0
        return n

    def _readv(self, iov: tuple) -> int | None:
        """One read from the TAP into `iov`: the frame's length (without the vnet header, when the first iovec
        is one; negative for a read shorter than that), or None when the TAP is empty or failing (logged once
        per burst)."""
        try:
            n = os.readv(self.fd, iov)
        except BlockingIOError:
            return None
        except OSError as exc:
            self.read_errors.hit(exc.strerror)
            return None
        return n - VNET_HDR_LEN if self.vnet else n

    def _read_offload(self, buf: memoryview) -> int:
        """read_into with TX offloads: the vnet header parsed (gso.py), the frame read into the slot's first
        max_frame bytes and on into the spill buffer."""
        mf = self.max_frame
        n = self._readv((self._vnet_in, buf[:mf], self._spill))
        if n is None:
            return -1
        stats = self.stats
        if n < ETH_HLEN:
            stats.tx_dropped += 1
            return 0
        flags, gso_type, _, _, csum_start, csum_offset = gso.VNET.unpack_from(self._vnet_in)
        if gso_type != gso.GSO_NONE:
            return self._cut_here(buf, bytes(buf[: min(n, mf)]) + bytes(self._spill[: max(0, n - mf)]),
                                  self._vnet_in)
        if n > mf:
            stats.tx_dropped += 1
            return 0
        if flags & gso.F_NEEDS_CSUM:
            if not gso.complete_csum(buf, n, csum_start, csum_offset):
                stats.tx_dropped += 1
                self.offload_dropped += 1
                return 0
            self.csum_completed += 1
        return n

    def _read_device(self, buf: memoryview) -> int:
        """read_into when the device does the offloads (`device_offloads`): the frame is read whole, up to
        `read_max` bytes, into `buf` and on into the spill buffer. One that does not fit in `buf` (the room
        left in a transfer already holding frames) is kept, and CARRIED returned: the caller finishes the
        transfer and takes the frame with next_segment into the next one."""
        room = len(buf)
        n = self._readv((self._vnet_in, buf, self._spill))
        if n is None:
            return -1
        if n < ETH_HLEN:
            self.stats.tx_dropped += 1
            return 0
        if n > self.read_max:
            # More than the chip takes in one transfer: only a super-frame can be, and it is cut here (or
            # dropped, counted, when it does not match its header; an over-long plain frame is dropped too).
            frame = bytes(buf[: min(n, room)]) + bytes(self._spill[: max(0, n - room)])
            if self._vnet_in[1] == gso.GSO_NONE:
                self.stats.tx_dropped += 1
                return 0
            return self._cut_here(buf, frame, self._vnet_in)
        if n > room:
            self.pending.append(bytes(buf) + bytes(self._spill[: n - room]))  # rare: see datapath
            self._carried_hdr = bytes(self._vnet_in)
            return CARRIED
        return self._device_fields(buf, n, self._vnet_in)

    def _device_fields(self, buf: memoryview, n: int, hdr: bytes | bytearray) -> int:
        """Check the frame buf[:n] against its vnet header and fill `meta` for the driver: a super-frame the
        device can cut, a checksum it can complete; what it cannot is done here (gso.segment, complete_csum).
        Returns n, or 0 when the frame was dropped (counted)."""
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = gso.VNET.unpack_from(hdr)
        meta, stats = self.meta, self.stats
        meta.clear(n)
        if gso_type != gso.GSO_NONE:
            frame = buf[:n]
            parsed = gso.parse(frame, gso_type, flags, hdr_len, gso_size, csum_start, csum_offset, self.max_frame)
            if parsed is None:
                stats.tx_dropped += 1
                self.offload_dropped += 1
                return 0
            l3, l4, hdrs, v6 = parsed
            if not self.device_offloads & (gso.TUN_F_TSO6 if v6 else gso.TUN_F_TSO4):
                return self._cut_here(buf, bytes(frame), hdr)  # not offered, so never expected: still correct
            segments = -(-(n - hdrs) // gso_size)
            if segments > 1:
                meta.gso_type, meta.mss, meta.csum_start, meta.csum_offset = gso_type, gso_size, l4, gso.TCP_CHECK
                meta.l3, meta.v6, meta.segments, meta.wire = l3, v6, segments, n + (segments - 1) * hdrs
                self.device_tso += 1
                return n
            # One segment's worth (or none): nothing to cut, so it goes as the single frame it is (as Linux
            # sends such a GSO packet), its checksum still partial: below.
        elif n > self.max_frame:
            stats.tx_dropped += 1
            return 0
        if flags & gso.F_NEEDS_CSUM:
            found = gso.partial_l4(buf, n, csum_start, csum_offset)
            if found is not None and self.device_offloads & gso.TUN_F_CSUM:
                meta.csum_start, meta.csum_offset = csum_start, csum_offset
                meta.l3, meta.v6 = found
                self.device_csum += 1
            elif gso.complete_csum(buf, n, csum_start, csum_offset):
                self.csum_completed += 1
            else:
                stats.tx_dropped += 1
                self.offload_dropped += 1
                return 0
        return n

    def _cut_here(self, buf: memoryview, frame: bytes, hdr: bytes | bytearray) -> int:
        """Cut a super-frame here (gso.segment): the first segment into `buf`, the rest into `pending`; its
        length, or 0 when it does not match its header (dropped, counted)."""
        segments = gso.segment(hdr, frame, self.max_frame)
        if segments is None:
            self.stats.tx_dropped += 1
            self.offload_dropped += 1
            return 0
        self.tso_superframes += 1
        self.tso_segments += len(segments)
        first = segments[0]
        buf[: len(first)] = first
        self.pending.extend(segments[1:])
        self.meta.clear(len(first))
        return len(first)

    def next_segment(self, buf: memoryview) -> int:
        """The next segment of a super-frame, or the frame carried from a full transfer (`pending` must not be
        empty), into `buf`; returns its length (0: the carried frame failed its checks and was dropped)."""
        seg = self.pending.popleft()
        n = len(seg)
        if n > len(buf):  # a driver offering less room than it declared: dropped, never raised
            self._carried_hdr = None
            self.stats.tx_dropped += 1
            return 0
        buf[:n] = seg
        if self._carried_hdr is not None:
            hdr, self._carried_hdr = self._carried_hdr, None
            return self._device_fields(buf, n, hdr)
        self.meta.clear(n)
        return n

    def drop_pending(self) -> int:
        """Forget the segments (or the carried frame) not yet handed out (teardown); returns how many."""
        n = len(self.pending)
        self.pending.clear()
        self._carried_hdr = None
        return n

    @property
    def gro_stats(self) -> dict:
        g, n = self.gro, self.native
        st = {"enabled": g is not None, "superframes": g.superframes if g else 0,
              "segments": g.merged if g else 0, "unverified": g.unverified if g else 0}
        if n is not None:
            st["superframes"] += n.superframes
            st["segments"] += n.merged
            st["unverified"] += n.unverified
        return st
