"""The core tier for tracing: DataPath.set_tracer on a running service, with both data paths.

A trace switches a running instance to the Python data path and back without losing or reordering a frame,
records every frame at the TAP and every transfer (bulk submissions and completions with their bytes,
interrupt notifications, control requests), stays within its byte bound by dropping records (never frames),
and leaves nothing behind when it ends: the C path is back where it was, the NCM sequence numbers continue,
and the traced methods are gone from the port and the transport.
"""

from __future__ import annotations

import struct

import pytest
from fake import ethernet, make_service, turn

from usbnetd.core import pcapng as P
from usbnetd.core.datapath import TraceUnavailable
from usbnetd.core.trace import ETH, USB, Tracer
from usbnetd.protocols import cdc
from usbnetd.protocols.ncm_codec import NtbDecoder, TxLayout, build_ntb
from usbnetd.usb.transport import STATUS_STALL

HOST = bytes.fromhex("02aaaaaaaa01")
PEER = bytes.fromhex("02bbbbbbbb02")


def frame(n: int, tag: int = 0) -> bytes:
    return ethernet(HOST, PEER, bytes([tag & 0xFF]) * (n - 14))


def records(tracer: Tracer) -> list[P.Packet]:
    blocks = b"".join(tracer.take(1 << 40))
    cap = P.parse(P.section_header() + P.interface_description(1, 65535) + P.interface_description(220, 65535)
                  + blocks)
    return cap.packets


def usb(rec: P.Packet) -> dict:
    f = P.USBMON_HEADER.unpack_from(rec.data, 0)
    return {"id": f[0], "type": chr(f[1]), "xfer": f[2], "ep": f[3], "flag_data": f[7], "status": f[10],
            "length": f[11], "len_cap": f[12], "setup": f[13], "data": rec.data[P.USBMON_LEN:]}


def ntb_frames(data: bytes) -> list[bytes]:
    from usbnetd.core.stats import Stats

    out: list[bytes] = []
    NtbDecoder(Stats(), max_datagram=1514).decode(memoryview(data), len(data),
                                                  lambda o, n: out.append(data[o : o + n]))
    return out


def nth_sequence(ntb: bytes) -> int:
    return struct.unpack_from("<H", ntb, 6)[0]  # NCM 1.0 Table 3-1: NTH16 wSequence


def test_a_trace_records_frames_and_transfers_and_ends_without_a_trace_left(datapath):
    svc, t, tap = make_service("ncm")
    dp, port = svc.datapath, svc.port
    before = dp.path
    tracer = Tracer(ep_in=0x81, ep_out=0x02, ep_int=0x83)
    dp.set_tracer(tracer)
    assert dp.path == "python" and port.rx_native is None and dp.tx_fast is None
    assert svc.status()["tracing"] is True

    # TX: one frame from the host becomes one NTB; both are recorded, the NTB as the bytes submitted.
    sent = frame(200, 1)
    tap.host_send(sent)
    svc.on_tap_readable()
    turn(svc)
    assert len(t.tx) == 1
    ntb = t.tx[0][1]
    t.complete_tx()
    turn(svc)
    # RX: an NTB of two frames from the device reaches the host and is recorded as received.
    got = [frame(100, 2), frame(300, 3)]
    layout = TxLayout(ntb32=False, max_size=4096, divisor=4, remainder=2, alignment=4)
    rx_ntb = build_ntb(layout, got)
    t.complete_rx(rx_ntb)
    turn(svc)
    assert [f for _, f in tap.host_receive()] == got
    # An interrupt notification: NETWORK_CONNECTION, connected.
    note = bytes([0xA1, cdc.NOTIFY_NETWORK_CONNECTION, 1, 0, 0, 0, 0, 0])
    t.interrupt(note)
    turn(svc)
    # A control request while running: the packet filter.
    assert svc.driver.set_packet_filter(cdc.packet_filter_bits(promisc=True, allmulti=True, multicast=True))
    turn(svc)

    recs = records(tracer)
    eth = [(r.flags, r.data) for r in recs if r.interface == ETH]
    assert eth == [(P.EPB_OUTBOUND, sent), (P.EPB_INBOUND, got[0]), (P.EPB_INBOUND, got[1])]
    u = [usb(r) for r in recs if r.interface == USB]
    out_s = [x for x in u if x["ep"] == 0x02 and x["type"] == "S"]
    out_c = [x for x in u if x["ep"] == 0x02 and x["type"] == "C"]
    assert [x["data"] for x in out_s] == [ntb] and ntb_frames(ntb) == [sent]
    assert out_s[0]["status"] == P.EINPROGRESS and out_s[0]["length"] == len(ntb)
    assert [(x["id"], x["status"], x["len_cap"]) for x in out_c] == [(out_s[0]["id"], 0, 0)]
    in_c = [x for x in u if x["ep"] == 0x81 and x["type"] == "C"]
    assert [x["data"] for x in in_c] == [rx_ntb] and in_c[0]["length"] == len(rx_ntb)
    # the bulk IN transfer is submitted again after it was decoded, with no data (flag_data '<')
    in_s = [x for x in u if x["ep"] == 0x81 and x["type"] == "S"]
    assert in_s and in_s[-1]["id"] == in_c[0]["id"] and in_s[-1]["len_cap"] == 0
    assert in_s[-1]["flag_data"] == ord("<")
    ints = [x for x in u if x["xfer"] == P.XFER_INTERRUPT]
    assert [(x["ep"], x["data"]) for x in ints] == [(0x83, note)]
    ctrl = [x for x in u if x["xfer"] == P.XFER_CONTROL]
    assert [x["type"] for x in ctrl] == ["S", "C"] and ctrl[0]["id"] == ctrl[1]["id"]
    assert ctrl[0]["setup"][:2] == bytes([cdc.REQ_TYPE_CLASS_OUT, cdc.SET_ETHERNET_PACKET_FILTER])

    dp.set_tracer(None)
    assert dp.path == before and svc.status()["tracing"] is False
    for name in ("read_into", "deliver"):
        assert name not in vars(port)
    for name in ("submit_rx", "submit_tx", "submit_control", "control_in", "control_out"):
        assert name not in vars(t)
    # Untraced again: nothing more is recorded, and frames still flow.
    tap.host_send(frame(120, 4))
    svc.on_tap_readable()
    turn(svc)
    assert not tracer.blocks and ntb_frames(t.tx[-1][1]) == [frame(120, 4)]
    svc.stop()


def test_switching_sends_the_transfer_being_framed_and_the_ncm_sequence_continues(datapath):
    svc, t, tap = make_service("ncm")
    dp = svc.datapath
    tap.host_send(frame(100, 1))
    svc.on_tap_readable()
    turn(svc)  # the pipe was idle: sent at once, and it stays in flight
    tap.host_send(frame(100, 2))
    svc.on_tap_readable()
    assert len(t.sent) == 1, "the second frame waits in the open NTB (the pipe is busy)"
    # The C TX pump (native-usb) hands its transfers back only once none is in flight: the device takes them.
    t.complete_tx_on_events = datapath == "native-usb"
    dp.set_tracer(Tracer())
    t.complete_tx_on_events = False
    if datapath in ("native", "native-usb"):  # a real switch (the Python path has nothing to hand over)
        assert len(t.sent) == 2 and ntb_frames(t.sent[1]) == [frame(100, 2)], "the open NTB went out at the switch"
    tap.host_send(frame(100, 3))
    svc.on_tap_readable()
    if t.tx:  # native-usb: the hand-over let the device take them
        t.complete_tx()
    turn(svc)
    dp.set_tracer(None)
    tap.host_send(frame(100, 4))
    svc.on_tap_readable()
    for _ in range(3):
        if t.tx:
            t.complete_tx()
        turn(svc)
    assert [f for s in t.sent for f in ntb_frames(s)] == [frame(100, n) for n in (1, 2, 3, 4)]
    assert [nth_sequence(s) for s in t.sent] == list(range(len(t.sent))), "wSequence continues across switches"
    svc.stop()


def test_a_slow_reader_loses_records_never_frames(datapath):
    svc, t, tap = make_service("ecm")
    tracer = Tracer(limit_bytes=2000)
    svc.datapath.set_tracer(tracer)
    sent = [frame(600, n) for n in range(8)]
    for f in sent:
        tap.host_send(f)
    svc.on_tap_readable()
    for _ in range(12):
        while t.tx:
            t.complete_tx()
        turn(svc)
        svc.on_tap_readable()
    assert [s for s in t.sent] == sent, "every frame went out"
    assert tracer.queued <= 2000 and sum(tracer.dropped) > 0
    assert sum(tracer.recorded) == len(tracer.blocks)
    cap = P.parse(P.section_header() + P.interface_description(1, 9) + P.interface_description(220, 9)
                  + tracer.trailer())
    assert [s["dropped"] for s in cap.statistics] == tracer.dropped
    svc.datapath.set_tracer(None)
    svc.stop()


def test_failed_transfers_are_recorded_with_their_linux_status(datapath):
    svc, t, tap = make_service("ecm")
    tracer = Tracer(ep_in=0x81, ep_out=0x02)
    svc.datapath.set_tracer(tracer)
    t.complete_rx(b"", status=STATUS_STALL)
    turn(svc)
    c = [usb(r) for r in records(tracer) if r.interface == USB and usb(r)["type"] == "C"]
    assert [(x["ep"], x["status"], x["length"]) for x in c] == [(0x81, -32, 0)]  # -EPIPE
    svc.datapath.set_tracer(None)
    svc.stop()


def test_count_stops_recording_after_n_records(datapath):
    svc, t, tap = make_service("ecm")
    tracer = Tracer(count=3)
    svc.datapath.set_tracer(tracer)
    for n in range(5):
        tap.host_send(frame(100, n))
    svc.on_tap_readable()
    turn(svc)
    assert tracer.done and sum(tracer.recorded) == 3 and len(tracer.blocks) == 3
    svc.datapath.set_tracer(None)
    svc.stop()


def exchange(svc, t, tap, kind: str, tag: int) -> tuple[bytes, bytes]:
    """One frame host -> device and one device -> host, every transfer completed."""
    out, back = frame(200, tag), frame(300, tag + 1)
    tap.host_send(out)
    svc.on_tap_readable()
    turn(svc)
    while t.tx:
        t.complete_tx()
    turn(svc)
    layout = TxLayout(ntb32=False, max_size=4096, divisor=4, remainder=2, alignment=4)
    t.complete_rx(build_ntb(layout, [back]) if kind == "ncm" else back)
    turn(svc)
    return out, back


@pytest.mark.parametrize("kind", ["ncm", "ecm"])
def test_the_c_usb_completions_are_set_aside_and_rearmed(datapath, kind):
    """With the C path taking the bulk IN completions (native-usb) and the C TX pump (FrameTx for ECM, NcmPump
    for NCM): a trace hands both back to Python, sees every frame and transfer, and arms them again when it
    ends."""
    if datapath != "native-usb":
        pytest.skip("only the native-usb path takes USB completions in C")
    svc, t, tap = make_service(kind)
    dp = svc.datapath
    before = dp.detail()
    assert before["rx_completions"] == "native"
    assert before["tx_completions"] == "native"
    exchange(svc, t, tap, kind, 1)
    tracer = Tracer()
    dp.set_tracer(tracer)
    during = dp.detail()
    assert (during["rx_completions"], during["tx_completions"]) == ("python", "python")
    out, back = exchange(svc, t, tap, kind, 10)
    recs = records(tracer)
    assert [(r.flags, r.data) for r in recs if r.interface == ETH] == [(P.EPB_OUTBOUND, out), (P.EPB_INBOUND, back)]
    assert any(usb(r)["ep"] == 0x81 and usb(r)["type"] == "C" for r in recs if r.interface == USB)
    dp.set_tracer(None)
    after = dp.detail()
    assert (after["rx_completions"], after["tx_completions"]) == (before["rx_completions"],
                                                                  before["tx_completions"])
    out2, back2 = exchange(svc, t, tap, kind, 20)
    assert not tracer.blocks, "nothing is recorded after the trace"
    assert [f for _, f in tap.host_receive()][-1] == back2
    assert (t.sent[-1] if kind == "ecm" else ntb_frames(t.sent[-1])[-1]) == out2
    svc.stop()
    assert dp.pool.in_use == 0


def test_a_pump_that_cannot_hand_back_refuses_the_trace_and_changes_nothing(datapath):
    if datapath != "native-usb":
        pytest.skip("only the native-usb path has the C TX pump")
    svc, t, tap = make_service("ecm")
    dp = svc.datapath
    tap.host_send(frame(200, 1))
    svc.on_tap_readable()
    assert t.tx, "a bulk OUT transfer of the pump's is in flight, and the device never completes it"
    with pytest.raises(TraceUnavailable):
        dp.set_tracer(Tracer())
    assert dp.tracer is None and dp.tx_pump is not None and dp.detail()["tx_completions"] == "native"
    assert "read_into" not in vars(svc.port) and "submit_tx" not in vars(t)
    t.complete_tx()
    turn(svc)
    dp.set_tracer(Tracer())  # now it can
    assert dp.tx_pump is None
    dp.set_tracer(None)
    svc.stop()
