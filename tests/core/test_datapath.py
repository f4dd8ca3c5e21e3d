"""The core tier: the real service, data path, pool, queues, TAP port and drivers, driven deterministically
through a scripted transport and a socket-pair TAP (tests/core/fake.py). No root, no namespace, no VM."""

from __future__ import annotations

import ctypes
import struct
import time

import pytest
import tso_frames as tf
from fake import DEVICE_MAC, ScriptedTransport, ethernet, make_service, turn

from usbnetd.core import datapath as dp
from usbnetd.core.service import State
from usbnetd.core.stats import Stats
from usbnetd.netdev.gro import F_NEEDS_CSUM, GSO_TCPV4, ZERO_HDR
from usbnetd.protocols import cdc
from usbnetd.protocols import eem_codec as ec
from usbnetd.protocols.driver import Options, Quirk
from usbnetd.protocols.ncm_codec import NtbDecoder, TxLayout, build_ntb
from usbnetd.usb.transport import STATUS_ERROR, STATUS_NO_DEVICE, STATUS_STALL

HOST = bytes.fromhex("02aaaaaaaa01")
PEER = bytes.fromhex("02bbbbbbbb02")


def frame(n: int, tag: int = 0) -> bytes:
    return ethernet(HOST, PEER, bytes([tag & 0xFF]) * (n - 14))


def everything_back(svc) -> None:
    """After stop(): every packet is back in the pool and the handle closed after the transfers were reaped."""
    assert svc.datapath.pool.in_use == 0
    assert svc.transport.closed
    assert svc.state is State.STOPPED


# ---------------------------------------------------------------------------- settings and sizing
def test_the_rx_and_tx_transfer_settings_are_used_and_stay_settings():
    """[queues] rx_transfers / tx_transfers size the pipes (they were overwritten with 0 and used as a
    counter of decoded transfers, so the setting never took effect)."""
    svc, t, tap = make_service("ecm", rx_transfers=8, tx_transfers=5)
    assert (t.n_rx, t.n_tx) == (8, 5)
    assert len(t.rx) == 8
    for i in range(3):
        t.complete_rx(frame(100, i))
    turn(svc)
    assert svc.datapath.rx_transfers_setting == 8
    assert svc.detailed_stats()["rx_transfers"] == 3
    assert len(t.rx) == 8, "every decoded transfer went back in flight"
    svc.stop()
    everything_back(svc)


def test_default_sizing_follows_the_device():
    svc, t, _ = make_service("ecm")
    # ECM at high speed: 60 full frames of 1536-byte transfers -> 59
    assert t.n_rx == dp.INFLIGHT_BYTES // svc.driver.rx_size
    svc.stop()


def test_the_pool_lives_in_the_transports_memory_when_it_offers_some():
    """usbfs memory (usb/engine.transfer_memory): every bulk transfer's buffer is in the chunks the transport
    gave, frames flow both ways as over the pool's own memory, stats say which, and the transport frees the
    memory only at close, after stop() reaped every transfer."""
    svc, t, tap = make_service("ncm", transfer_memory=True)
    chunks = t.memory_chunks
    assert chunks and svc.datapath.pool.shared
    assert sum(len(c) for c in chunks) == svc.datapath.pool.packet_count * svc.datapath.pool.buffer_size
    assert all(any(p.view.obj is c for c in chunks) for p, _ in t.rx), "RX transfers use the given memory"
    assert svc.detailed_stats()["transfer_memory"] == "usbfs"
    f = frame(300, 7)
    t.complete_rx(build_ntb(TxLayout(ntb32=False, max_size=2048), [f]))
    turn(svc)
    assert [x for _, x in tap.host_receive()] == [f]
    tap.host_send(frame(200, 8))
    svc.on_tap_readable()
    turn(svc)
    assert t.sent, "the frame went out"
    assert not t.memory_freed
    svc.stop()
    assert t.stopped and t.closed and t.memory_freed
    everything_back(svc)


def test_the_pool_uses_its_own_memory_when_the_transport_offers_none():
    svc, t, _ = make_service("ncm")
    assert not svc.datapath.pool.shared and svc.detailed_stats()["transfer_memory"] == "copied"
    svc.stop()


def test_one_frame_buffers_stay_in_the_pools_own_memory():
    """ECM's 1.5 KiB buffers: what usbfs memory saves per transfer is small there, and the VM bench measured
    no gain (core/datapath.USBFS_MEMORY_MIN_SLOT): the transport is not even asked."""
    svc, t, _ = make_service("ecm", transfer_memory=True)
    assert svc.datapath.pool.buffer_size < dp.USBFS_MEMORY_MIN_SLOT
    assert not t.memory_chunks and not svc.datapath.pool.shared
    assert svc.detailed_stats()["transfer_memory"] == "copied"
    svc.stop()


# ---------------------------------------------------------------------------- RX
def test_rx_frames_reach_the_tap_in_completion_order_whatever_the_submission_order():
    svc, t, tap = make_service("ecm")
    first, second, third = frame(60, 1), frame(1514, 2), frame(300, 3)
    t.complete_rx(first, index=5)
    t.complete_rx(second, index=0)
    t.complete_rx(third, index=2)
    turn(svc)
    assert [f for _, f in tap.host_receive()] == [first, second, third]
    st = svc.stats
    assert (st.rx_packets, st.rx_bytes, st.rx_errors) == (3, 60 + 1514 + 300, 0)
    svc.stop()
    everything_back(svc)


def test_a_frame_too_short_or_too_long_for_ecm_is_counted_not_delivered():
    svc, t, tap = make_service("ecm")
    t.complete_rx(b"\x01" * 13)
    t.complete_rx(frame(60))
    turn(svc)
    assert [f for _, f in tap.host_receive()] == [frame(60)]
    assert svc.stats.rx_length_errors == 1 and svc.stats.rx_errors == 1
    svc.stop()


@pytest.mark.parametrize("kind", ["ecm", "ncm", "eem"])
def test_a_zero_length_transfer_is_a_zlp_not_a_runt_and_goes_back_in_flight(kind):
    """A ZLP that comes as a transfer of its own (QEMU's usb-net after every frame a multiple of 64 long) ends
    the data before it: no error, no frame, the transfer resubmitted, in all three data paths alike."""
    svc, t, tap = make_service(kind)
    frames = [frame(128, 1), frame(1024, 2)]
    if kind == "ncm":
        layout = TxLayout(False, 4096, 4, 0, 4, 40, 512)
        transfers = [build_ntb(layout, [f]) for f in frames]
    elif kind == "eem":
        transfers = [ec.data_packet(f) for f in frames]
    else:
        transfers = frames
    in_flight = t.in_flight
    t.complete_rx(transfers[0])
    t.complete_rx(b"")
    t.complete_rx(transfers[1])
    t.complete_rx(b"")
    turn(svc)
    assert [f for _, f in tap.host_receive()] == frames
    st = svc.stats
    assert (st.rx_packets, st.rx_errors, st.rx_length_errors, st.rx_frame_errors) == (2, 0, 0, 0)
    assert svc.datapath.rx_transfers_done == 4
    assert t.in_flight == in_flight, "every transfer went back in flight, the ZLPs' too"
    svc.stop()
    everything_back(svc)


def test_a_full_tap_drops_and_counts_and_rx_keeps_going():
    """Backpressure from the host: the TAP's queue is full. Frames are dropped and counted, one log line per
    burst, nothing raised, and every RX transfer goes back in flight."""
    svc, t, tap = make_service("ecm")
    sent = 0
    while svc.stats.rx_dropped == 0 and sent < 10000:
        for _ in range(len(t.rx)):
            t.complete_rx(frame(1514, sent))
            sent += 1
        turn(svc)
    assert svc.stats.rx_dropped > 0, "the socket pair never filled"
    assert svc.stats.rx_packets + svc.stats.rx_dropped == sent
    assert svc.port.write_errors.count == svc.stats.rx_dropped
    assert len(t.rx) == t.n_rx
    got = tap.host_receive()
    assert len(got) == svc.stats.rx_packets
    t.complete_rx(frame(200, 7))
    turn(svc)
    assert tap.host_receive()[-1][1] == frame(200, 7), "delivery resumes once the host reads"
    svc.stop()
    everything_back(svc)


def tcp_segment(seq: int, payload: bytes) -> bytes:
    def csum(data: bytes) -> int:
        if len(data) % 2:
            data += b"\0"
        s = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return ~s & 0xFFFF

    src, dst = bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1])
    tcp = struct.pack("!HHIIBBHHH", 5001, 40000, seq, 1, 5 << 4, 0x10, 502, 0, 0)
    check = csum(src + dst + struct.pack("!BBH", 0, 6, 20 + len(payload)) + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", check) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return HOST + PEER + b"\x08\x00" + ip + tcp + payload


def test_with_gro_a_failed_tap_write_is_counted_once():
    """One failed write of a coalesced run: three frames dropped, not three plus one more for the write."""
    svc, t, tap = make_service("ecm", gro=True)
    tap.peer.close()  # the host side is gone: every write fails
    for i in range(3):
        t.complete_rx(tcp_segment(i * 1000, bytes([i + 1]) * 1000))
    turn(svc)
    assert svc.stats.rx_dropped == 3 and svc.stats.rx_packets == 0
    svc.stop()
    everything_back(svc)


def test_with_gro_a_corrupted_segment_reaches_the_host_unmerged_and_unmarked(datapath):
    svc, t, tap = make_service("ecm", gro=True)
    segs = [bytearray(tcp_segment(i * 1000, bytes([i + 1]) * 1000)) for i in range(4)]
    segs[2][14 + 40 + 10] ^= 0xFF  # a payload byte: the TCP checksum no longer holds
    for s in segs:
        t.complete_rx(bytes(s))
    turn(svc)
    got = tap.host_receive()
    marked = [f for h, f in got if h and h[0] & F_NEEDS_CSUM]
    assert all(bytes(segs[2])[54:] not in f for f in marked)
    assert svc.stats.rx_packets == 4
    if datapath.startswith("native"):
        plain = [f for h, f in got if h == ZERO_HDR]
        assert bytes(segs[2]) in plain
        assert got[0][0][1] == GSO_TCPV4, "the two good segments before it still merge"
        assert svc.detailed_stats()["rx_gro"]["unverified"] == 1
    else:
        # GRO runs only in the C path: verifying in Python costs more than merging saves.
        assert [f for _, f in got] == [bytes(s) for s in segs] and not marked
        assert svc.detailed_stats()["rx_gro"]["enabled"] is False
    svc.stop()


# ---------------------------------------------------------------------------- USB faults
def test_an_error_storm_pauses_rx_once_then_resumes():
    svc, t, tap = make_service("ecm", rx_transfers=30)
    for _ in range(dp.RX_ERROR_STORM + 1):
        t.complete_rx(status=STATUS_ERROR)
    turn(svc)
    assert svc.datapath.rx_throttled == 1
    assert svc.stats.rx_usb_errors == dp.RX_ERROR_STORM + 1
    paused = len(t.rx)
    assert paused == 30 - (dp.RX_ERROR_STORM + 1), "RX is not resubmitted while throttled"
    assert 0 < svc.timeout() <= dp.RX_THROTTLE
    time.sleep(dp.RX_THROTTLE + 0.01)
    turn(svc)
    assert len(t.rx) == 30, "RX resumes after the throttle"
    t.complete_rx(frame(100))
    turn(svc)
    assert len(tap.host_receive()) == 1
    svc.stop()
    everything_back(svc)


def test_a_halted_in_endpoint_is_cleared_once_per_halt_and_not_counted_as_a_storm():
    svc, t, tap = make_service("ecm", rx_transfers=30)
    for _ in range(30):  # one halt fails every transfer in flight
        t.complete_rx(status=STATUS_STALL)
    turn(svc)
    assert t.halts_cleared == [svc.driver.binding.ep_in.address]
    assert svc.datapath.rx_throttled == 0
    assert len(t.rx) == 30
    svc.stop()
    everything_back(svc)


def test_a_failed_or_halted_out_transfer_counts_its_frames_as_errors():
    svc, t, tap = make_service("ecm")
    tap.host_send(frame(100))
    tap.host_send(frame(101))
    svc.on_tap_readable()
    turn(svc)
    assert len(t.tx) == 2
    t.complete_tx(STATUS_STALL)
    t.complete_tx()
    turn(svc)
    assert (svc.stats.tx_errors, svc.stats.tx_aborted_errors, svc.stats.tx_packets) == (1, 1, 1)
    assert t.halts_cleared == [svc.driver.binding.ep_out.address]
    svc.stop()
    everything_back(svc)


def test_device_gone_ends_the_data_path_and_teardown_still_returns_everything():
    svc, t, tap = make_service("ecm")
    t.complete_rx(status=STATUS_NO_DEVICE)
    turn(svc)
    assert svc.device_gone
    svc.stop()
    everything_back(svc)


# ---------------------------------------------------------------------------- TX and flush reasons
def test_ecm_sends_each_frame_as_its_own_transfer_with_a_zlp_on_a_packet_multiple():
    svc, t, tap = make_service("ecm")
    frames = [frame(100, 1), frame(512, 2), frame(1024, 3)]
    for f in frames:
        tap.host_send(f)
    svc.on_tap_readable()
    turn(svc)
    assert [(d, z) for _, d, z in t.tx] == [(frames[0], False), (frames[1], True), (frames[2], True)]
    assert svc.detailed_stats()["tx_flush"]["full"] == 3
    svc.stop()
    everything_back(svc)


def ncm_datagrams(data: bytes) -> list[bytes]:
    out: list[bytes] = []
    view = memoryview(bytearray(data))
    from usbnetd.core.stats import Stats

    NtbDecoder(Stats(), max_datagram=1514).decode(view, len(data), lambda o, n: out.append(bytes(view[o : o + n])))
    return out


def test_ncm_flush_reasons_idle_timer_and_completion():
    svc, t, tap = make_service("ncm")
    flush = svc.datapath.tx_flush
    # Pipe idle, TAP drained: sent at once.
    tap.host_send(frame(100, 1))
    tap.host_send(frame(100, 2))
    svc.on_tap_readable()
    turn(svc)
    assert flush[dp.FLUSH_IDLE] == 1 and len(t.tx) == 1
    assert ncm_datagrams(t.tx[0][1]) == [frame(100, 1), frame(100, 2)]
    # A transfer in flight: the next frames wait for the pipe or the timer.
    tap.host_send(frame(100, 3))
    svc.on_tap_readable()
    turn(svc)
    assert len(t.tx) == 1 and svc.timeout() is not None
    t.complete_tx()
    turn(svc)
    assert flush[dp.FLUSH_COMPLETION] == 1 and ncm_datagrams(t.tx[0][1]) == [frame(100, 3)]
    tap.host_send(frame(100, 4))
    svc.on_tap_readable()
    time.sleep(dp.TX_FLUSH_DELAY * 2)
    turn(svc)
    assert flush[dp.FLUSH_TIMER] == 1 and ncm_datagrams(t.tx[-1][1]) == [frame(100, 4)]
    svc.stop()
    everything_back(svc)


def test_ncm_fills_a_transfer_then_flushes_it_as_full():
    svc, t, tap = make_service("ncm")
    tap.host_send(frame(100, 0))
    svc.on_tap_readable()  # the pipe was idle: this one goes at once and keeps the pipe busy
    turn(svc)
    assert len(t.tx) == 1
    sent = [frame(1514, n) for n in range(1, 31)]
    for f in sent:
        tap.host_send(f)
    svc.on_tap_readable()
    turn(svc)
    flush = svc.datapath.tx_flush
    assert flush[dp.FLUSH_FULL] == 1, "30 full frames do not fit one 32 KiB NTB"
    full = ncm_datagrams(t.sent[1])
    assert full == sent[: len(full)] and len(t.sent[1]) <= svc.driver.tx_size
    svc.stop()
    everything_back(svc)


def test_an_ntb_too_small_for_the_largest_frame_cuts_the_frame_size_instead_of_spinning():
    """tx_ntb_size 1536: an empty NTB holds less than a 1514-byte frame. The driver's largest frame is cut to
    what fits (a transfer that is full while empty would make on_tap_readable spin forever)."""
    svc, t, tap = make_service("ncm", options=Options(tx_size=1536))
    limit = svc.driver.max_frame
    assert 1400 < limit < 1514
    tap.host_send(frame(limit, 1))
    tap.host_send(frame(limit + 1, 2))  # too long for the device now: dropped and counted
    svc.on_tap_readable()
    turn(svc)
    assert [ncm_datagrams(d) for d in t.sent] == [[frame(limit, 1)]]
    assert svc.stats.tx_dropped == 1
    svc.stop()
    everything_back(svc)


def test_tx_backpressure_stops_reading_the_tap_and_resumes():
    """The bus takes nothing (every OUT busy): the tx submission queue fills, the TAP is no longer read, and
    nothing is lost; when the bus frees up, everything queued goes out in order."""
    svc, t, tap = make_service("ecm", tx_transfers=4)
    t.refuse_tx = True
    sent = [frame(100 + i, i) for i in range(40)]
    for f in sent:
        tap.host_send(f)
    for _ in range(5):
        if svc.wants_tap_read():
            svc.on_tap_readable()
        turn(svc)
    assert not svc.wants_tap_read()
    if svc.datapath.tx_pump is not None:
        # The C pump owns the OUT transfers: it stops at the ones in flight, none are "refused" (submitted
        # and not completed is the same backpressure).
        assert svc.datapath.tx_pump.free == 0 and len(t.tx) == 4
    else:
        queued = len(svc.datapath.tx_submission)
        assert queued == svc.datapath.tx_submission.capacity
    t.refuse_tx = False
    out: list[bytes] = []
    for _ in range(40):
        turn(svc)
        while t.tx:
            out.append(t.complete_tx())
        turn(svc)
        if svc.wants_tap_read():
            svc.on_tap_readable()
    assert out == sent
    assert svc.stats.tx_packets == 40 and svc.stats.tx_dropped == 0
    svc.stop()
    everything_back(svc)


def test_a_frame_longer_than_the_device_takes_is_dropped_and_counted():
    svc, t, tap = make_service("ecm")
    tap.host_send(frame(1514) + b"x" * 10)
    tap.host_send(frame(200))
    svc.on_tap_readable()
    turn(svc)
    assert [d for _, d, _ in t.tx] == [frame(200)]
    assert svc.stats.tx_dropped == 1
    svc.stop()


# ---------------------------------------------------------------------------- EEM's own transfers
def test_an_eem_echo_on_an_idle_link_is_answered_at_once():
    """The TAP is drained, so a TX transfer was opened for frames that never came. An echo request must
    still be answered now, not when the host next sends a frame."""
    svc, t, tap = make_service("eem")
    svc.on_tap_readable()  # nothing to read: the transfer opened for it stays empty
    turn(svc)
    assert t.sent == []
    t.complete_rx(ec.echo(b"ping?"))
    turn(svc)
    assert t.sent == [ec.echo_response(b"ping?")]
    assert svc.datapath.tx_flush[dp.FLUSH_DRIVER] == 1
    svc.stop()
    everything_back(svc)


def test_an_eem_echo_goes_after_frames_already_framed_and_frames_keep_flowing():
    svc, t, tap = make_service("eem", tx_transfers=8)
    t.complete_rx(ec.data_packet(frame(100, 1)) + ec.echo(b"e1"))
    tap.host_send(frame(200, 2))
    svc.on_usb()
    svc.on_tap_readable()
    svc.process()
    assert t.sent[-1] == ec.echo_response(b"e1")
    assert [f for _, f in tap.host_receive()] == [frame(100, 1)]
    tap.host_send(frame(300, 3))
    svc.on_tap_readable()
    turn(svc)
    assert len(t.sent) == 3
    svc.stop()
    everything_back(svc)


# ---------------------------------------------------------------------------- link state
def test_carrier_follows_notifications_and_repeats_are_ignored():
    svc, t, tap = make_service("ecm")
    assert tap.carrier is False
    up = struct.pack("<BBHHH", 0xA1, cdc.NETWORK_CONNECTION, 1, 0, 0)
    down = struct.pack("<BBHHH", 0xA1, cdc.NETWORK_CONNECTION, 0, 0, 0)
    for msg in (up, up, up, down, down, up):
        t.interrupt(msg)
    turn(svc)
    assert tap.carrier_changes == [False, True, False, True]
    assert svc.status()["link"] == "up"
    svc.stop()


def test_the_ignore_link_quirk_and_eem_keep_carrier_on():
    svc, t, tap = make_service("ecm", quirks=Quirk.IGNORE_LINK)
    t.interrupt(struct.pack("<BBHHH", 0xA1, cdc.NETWORK_CONNECTION, 0, 0, 0))
    turn(svc)
    assert tap.carrier is True
    svc.stop()
    svc, t, tap = make_service("eem")
    assert tap.carrier is True
    svc.stop()


def test_status_reports_the_device_mac_and_the_reconciler_follows_a_mac_change():
    svc, t, tap = make_service("ecm")
    assert svc.status()["mac"] == DEVICE_MAC.hex(":")
    tap.mac = bytes.fromhex("020102030405")
    svc.link.reconciler.reconcile()
    assert svc.status()["mac"] == "02:01:02:03:04:05"
    # A MAC the device does not filter for: promiscuous from now on.
    assert any(req == cdc.SET_ETHERNET_PACKET_FILTER and val & cdc.PACKET_TYPE_PROMISCUOUS
               for req, val, _ in t.controls)
    svc.stop()


# ---------------------------------------------------------------------------- teardown
@pytest.mark.parametrize("kind", ["ecm", "ncm", "eem"])
def test_teardown_with_transfers_in_flight_reaps_everything_before_closing(kind):
    svc, t, tap = make_service(kind)
    tap.host_send(frame(100))
    svc.on_tap_readable()
    turn(svc)
    t.complete_rx(b"")  # one completion queued but not yet handled
    assert t.in_flight > 0
    svc.stop()
    everything_back(svc)
    assert tap.closed


def test_an_unreaped_transfer_is_reported_and_its_packet_not_reused():
    svc, t, tap = make_service("ecm")
    t.unreapable = 1
    svc.stop()
    assert svc.datapath.pool.in_use == 1
    assert t.closed


def test_a_failed_start_tears_down_and_a_second_stop_is_harmless():
    t = ScriptedTransport("ecm")
    from usbnetd.core.service import EthernetService
    from usbnetd.core.stats import Stats
    from usbnetd.netdev.tap import TapError
    from usbnetd.protocols import choose

    driver_cls, binding = choose(t.identity.configurations, 1)
    svc = EthernetService(t, driver_cls(t, binding, Stats(), __import__("usbnetd.protocols.driver",
                          fromlist=["Options"]).Options()), ifname="core0", mtu=9000,
                          tap_factory=__import__("fake").FakeTap)
    with pytest.raises(TapError, match="MTU 9000 is more than the device takes"):
        svc.start()
    assert t.closed and svc.state is State.STOPPED
    svc.stop()


# ---------------------------------------------------------------------------- USB completions in C
def _only_c_completions(datapath: str) -> None:
    if datapath != "native-usb":
        pytest.skip("only the native-usb path takes the bulk IN completions in C")


@pytest.mark.parametrize("kind", ["ecm", "ncm"])
def test_c_completions_write_every_frame_with_no_python_call_per_transfer(datapath, kind):
    _only_c_completions(datapath)
    from usbnetd.protocols.ncm_codec import TxLayout, build_ntb

    svc, t, tap = make_service(kind)
    frames = [frame(60 + 7 * i, tag=i) for i in range(12)]
    if kind == "ecm":
        transfers = frames
    else:
        layout = TxLayout(False, 4096, 4, 0, 4, 40, 512)
        transfers = [build_ntb(layout, frames[:5]), build_ntb(layout, frames[5:])]
    in_flight = t.in_flight
    for data in transfers:
        t.complete_rx(data)
    turn(svc)
    assert [f for _, f in tap.host_receive()] == frames
    assert svc.stats.rx_packets == len(frames)
    d = svc.datapath
    assert d.rx_completion.high == 0, "no completion went through Python's queue"
    assert d.rx_transfers_done == len(transfers)
    assert t.in_flight == in_flight, "the C path resubmitted every transfer it decoded"
    assert svc.detailed_stats()["rx_completions"] == "native"
    svc.stop()
    everything_back(svc)


def test_c_completions_leave_errors_to_python_and_a_failed_resubmit_is_a_failed_transfer(datapath):
    _only_c_completions(datapath)
    svc, t, tap = make_service("ecm")
    t.complete_rx(b"", status=STATUS_ERROR)  # an error: Python counts it and resubmits
    turn(svc)
    assert svc.stats.rx_usb_errors == 1
    t.submit_error = -4  # LIBUSB_ERROR_NO_DEVICE: the resubmission fails
    t.complete_rx(frame(100))
    turn(svc)
    assert [f for _, f in tap.host_receive()] == [frame(100)], "the frame was written before the resubmission"
    assert svc.datapath.port.native.usb_resubmit_failed == 1
    assert svc.datapath.device_gone, "a resubmission refused for a gone device ends the data path"
    svc.stop()
    everything_back(svc)


def test_c_completions_decoded_but_not_resubmitted_come_back_at_teardown(datapath):
    _only_c_completions(datapath)
    svc, t, tap = make_service("ecm", gro=True)
    for i in range(3):
        t.complete_rx(frame(200, tag=i))
    svc.on_usb()  # decoded in C, not yet resubmitted (no process())
    assert svc.datapath.port.native.usb_armed == 1
    svc.stop()
    everything_back(svc)
    assert [f for _, f in tap.host_receive()] == [frame(200, tag=i) for i in range(3)]


def test_the_c_tx_pump_sends_counts_and_gives_its_transfers_back(datapath):
    _only_c_completions(datapath)
    svc, t, tap = make_service("ecm", tx_transfers=4)
    pump = svc.datapath.tx_pump
    assert pump is not None and svc.detailed_stats()["tx_completions"] == "native"
    frames = [frame(100 + i, i) for i in range(6)]
    tap.host_send(frame(1514) + b"x")  # longer than the device takes: dropped, counted
    for f in frames:
        tap.host_send(f)
    svc.on_tap_readable()
    turn(svc)
    assert [d for _, d, _ in t.tx] == frames[:4], "the four transfers it owns, in order"
    assert not svc.wants_tap_read() and svc.stats.tx_dropped == 1
    t.complete_tx()
    t.complete_tx(STATUS_STALL)
    turn(svc)
    assert (svc.stats.tx_packets, svc.stats.tx_errors, svc.stats.tx_aborted_errors) == (1, 1, 1)
    assert t.halts_cleared == [svc.driver.binding.ep_out.address]
    assert svc.wants_tap_read()
    svc.on_tap_readable()
    turn(svc)
    assert [d for _, d, _ in t.tx] == frames[2:6]
    assert svc.datapath.tx_submission.high == 0, "nothing went through Python's TX queue"
    assert svc.detailed_stats()["tx_flush"]["full"] == 6
    svc.stop()  # four in flight: cancelled, reaped, the transfers given back
    everything_back(svc)
    assert not pump.armed and svc.stats.tx_errors == 5


def test_the_ncm_pumps_buffers_are_the_transports_memory_and_are_given_back_before_close(datapath):
    """NCM's C pump frames its 16 KiB NTBs in memory the transport lends (usbfs memory: no kernel buffer and
    no copy per NTB); every NTB it submits lies in that memory and decodes to the frames sent; stop() has it
    disarmed before close() frees the memory; stats say which."""
    _only_c_completions(datapath)
    svc, t, tap = make_service("ncm", transfer_memory=True)
    pump = svc.datapath.tx_pump
    assert pump is not None and pump.lent and t.pump_memory is not None
    assert svc.detailed_stats()["tx_pump_memory"] == "usbfs"
    base = ctypes.addressof((ctypes.c_char * len(t.pump_memory)).from_buffer(t.pump_memory))
    frames = [frame(1000, i) for i in range(40)]
    for f in frames:
        tap.host_send(f)
    svc.on_tap_readable()
    turn(svc)
    assert t.sent and len(t.pump_buffers) == len(t.sent)
    got: list[bytes] = []
    for address, ntb in zip(t.pump_buffers, t.sent, strict=True):
        assert base <= address and address + len(ntb) <= base + len(t.pump_memory), "an NTB outside the memory"
        NtbDecoder(Stats()).decode(ntb, len(ntb), lambda o, n, ntb=ntb: got.append(ntb[o:o + n]))
    assert got == frames[:len(got)] and len(got) > 10
    svc.stop()
    assert t.closed and not t.pump_lent_at_close, "close() came while the pump still used the memory"
    assert not pump.armed and not pump.lent
    everything_back(svc)


def test_one_frame_pumps_keep_their_own_buffers(datapath):
    """FrameTx's 1.5 KiB buffers gain nothing from usbfs memory (USBFS_MEMORY_MIN_SLOT): none is asked for."""
    _only_c_completions(datapath)
    svc, t, _ = make_service("ecm", transfer_memory=True)
    assert svc.datapath.tx_pump is not None and t.pump_memory is None
    assert svc.detailed_stats()["tx_pump_memory"] == "copied"
    svc.stop()


def test_the_c_tx_pump_flags_a_gone_device(datapath):
    _only_c_completions(datapath)
    svc, t, tap = make_service("ecm")
    t.submit_error = -4  # LIBUSB_ERROR_NO_DEVICE
    tap.host_send(frame(100))
    svc.on_tap_readable()
    turn(svc)
    assert svc.datapath.device_gone and svc.stats.tx_errors == 1
    assert svc.datapath.tx_pump.submit_failed == 1
    svc.stop()
    everything_back(svc)


# ---------------------------------------------------------------------------- TX offloads (TSO, checksums)

@pytest.mark.parametrize("kind,tso,tso_python", [("ncm", True, False), ("ncm", False, False), ("ecm", True, False),
                                                 ("ecm", False, False), ("ncm", True, True)])
def test_tx_offloads_are_offered_with_the_c_framer_or_when_python_is_asked_to(datapath, kind, tso, tso_python):
    from usbnetd.netdev.gso import OFFLOADS

    svc, t, tap = make_service(kind, tso=tso, tso_python=tso_python)
    # NCM: the C framer takes them (or Python when asked); one frame per transfer: the C pump, which needs the C
    # completions (native-usb)
    want = tso and ((kind == "ncm" and (datapath != "python" or tso_python)) or
                    (kind == "ecm" and datapath == "native-usb"))
    assert tap.offload == (OFFLOADS if want else 0)
    # The TAP is made before the C pump is armed, so where the pump then cannot own the transfers (the C path
    # without the C completions) the vnet header stays on with no offloads: frames read the same, one iovec more
    assert bool(tap.vnet_hdr) == (want or (kind == "ecm" and tso and datapath == "native"))
    assert svc.detailed_stats()["tx_offload"]["enabled"] == want
    assert (svc.datapath.tx_fast is not None and svc.datapath.tx_fast.offload) == (
        want and kind == "ncm" and datapath != "python")
    assert bool(svc.datapath.tx_pump is not None and getattr(svc.datapath.tx_pump, "offload", 0)) == (
        want and kind == "ecm")
    svc.stop()
    everything_back(svc)


def test_the_c_tx_pump_watchdog_times_out_a_transfer_left_hanging(datapath):
    _only_c_completions(datapath)
    svc, t, tap = make_service("ecm")
    tap.host_send(frame(100))
    svc.on_tap_readable()
    turn(svc)
    pump = svc.datapath.tx_pump
    assert [pump.watchdog(2) for _ in range(3)] == [0, 0, 1], "cancelled on the second check that saw no change"
    turn(svc)
    assert not t.tx and svc.stats.tx_errors == 1
    assert svc.datapath._tx_errors.count == 1, "a timeout is a failure, unlike teardown's cancellation"
    svc.stop()
    everything_back(svc)


@pytest.mark.parametrize("kind", ["ncm", "ecm"])
def test_super_frames_are_cut_into_transfers_and_finish_when_room_comes_back_without_the_tap(datapath, kind):
    """Three super-frames are more segments than the transfers the data path may hold (one in flight, the bus
    takes nothing): what is left of the super-frame being cut waits, and goes out once completions make room,
    with no TAP read (poll() would not call on_tap_readable for a super-frame already read). Every frame arrives
    valid and in order; the stats count super-frames and segments."""
    svc, t, tap = make_service(kind, tx_transfers=1, tso_python=True)
    t.refuse_tx = True
    n, mss = 40000, 1440  # 74 + 1440: the IPv6 segments are exactly 1514 bytes
    for i in range(3):
        h, f = tf.superframe(n, mss, v6=i == 1, tag=i, seq=1000 * i)
        tap.peer.send(h + f)
    hdr, udp = tf.udp_partial(300, tag=9)
    tap.peer.send(hdr + udp)
    svc.on_tap_readable()
    turn(svc)
    q, d = svc.datapath.tx_submission, svc.datapath
    if d.tx_pump is not None:  # native-usb: the C pump's one transfer is in flight; the segments wait in C
        assert d.tx_pump.free == 0 and d._tx_pending() > 0, "the super-frame did not have to wait"
    else:
        assert len(q) == q.capacity and d._tx_pending() > 0, "the super-frame did not have to wait"
    read = d.offload_stats()["tso_superframes"]
    assert 1 <= read < 3, "the TAP must still hold a super-frame (the test's premise)"
    t.refuse_tx = False
    frames: list[bytes] = []

    def drain() -> None:
        for _ in range(200):
            turn(svc)
            while t.tx:
                data = t.complete_tx()
                frames.extend(ncm_datagrams(data) if kind == "ncm" else [data])
            open_ntb = kind == "ncm" and ((d._tx_packet is not None and d._tx_count()) or
                                          (d.tx_pump is not None and d.tx_pump.open_count))
            if not d._tx_pending() and not len(q) and not t.tx:
                if not open_ntb:
                    turn(svc)  # the last completions are counted
                    return
                time.sleep(2 * dp.TX_FLUSH_DELAY)  # only a partial NTB is left: it goes when the flush timer says
        raise AssertionError("the data path did not go quiet")

    drain()
    assert d.offload_stats()["tso_superframes"] == read  # nothing more was read
    for _ in range(4):  # now the rest: poll() says readable for as long as the TAP holds frames
        svc.on_tap_readable()
        drain()
    fields = [tf.check_frame(f) for f in frames]
    segs = -(-n // mss)
    assert len(frames) == 3 * segs + 1
    for i in range(3):
        assert b"".join(f["payload"] for f in fields[i * segs : (i + 1) * segs]) == tf.payload(n, i)
    assert fields[-1]["payload"] == tf.payload(300, 9)
    off = svc.detailed_stats()["tx_offload"]
    assert off == {"enabled": True, "tso_superframes": 3, "tso_segments": 3 * segs, "csum_completed": 1,
                   "dropped": 0}
    assert svc.stats.tx_packets == 3 * segs + 1 and svc.stats.tx_dropped == 0
    svc.stop()
    everything_back(svc)


@pytest.mark.parametrize("kind", ["ncm", "ecm"])
def test_segments_left_at_teardown_are_counted_as_dropped(datapath, kind):
    svc, t, tap = make_service(kind, tx_transfers=1, tso_python=True)
    t.refuse_tx = True
    for i in range(3):
        h, f = tf.superframe(40000, 1448, tag=i)
        tap.peer.send(h + f)
    svc.on_tap_readable()
    turn(svc)
    left = svc.datapath._tx_pending()
    assert left > 0
    svc.stop()
    everything_back(svc)
    assert svc.stats.tx_dropped == left
