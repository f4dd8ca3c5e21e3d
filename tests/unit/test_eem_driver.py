"""The EEM driver answers an echo command with an echo response carrying the same data, as its own
transfer ahead of frames, and frames around the command still reach the stack."""

from __future__ import annotations

from codec_helpers import ListSink

from usbnetd.core.pool import TX, PacketBufferPool
from usbnetd.core.stats import Stats
from usbnetd.protocols import eem_codec as ec
from usbnetd.protocols.driver import Binding, Options
from usbnetd.protocols.eem import EemDriver
from usbnetd.usb.descriptors import Endpoint


def make() -> EemDriver:
    b = Binding(1, None, 0, 0, Endpoint(0x81, 2, 512, 0), Endpoint(0x02, 2, 512, 0), None, None)
    d = EemDriver(None, b, Stats(), Options())  # type: ignore[arg-type]  # EEM sends no control requests
    d.bind()
    return d


def test_echo_is_answered_and_frames_pass():
    d = make()
    frame = bytes(range(14)) + b"payload" * 10
    stream = ec.data_packet(frame) + ec.echo(b"are you there?") + ec.data_packet(frame[::-1])
    buf = bytearray(d.rx_size * 2)
    buf[: len(stream)] = stream
    view = memoryview(buf)
    sink = ListSink(view)
    assert d.rx_decode(view, len(stream), sink) == 2
    assert sink.frames == [frame, frame[::-1]]
    # The echo is queued for the data path (own_tx_pending), never sent from inside the decode.
    assert d.own_tx_pending == 1 and d.stats.notifications == 1 and d.stats.rx_errors == 0

    pool = PacketBufferPool(2, d.tx_size)
    p = pool.allocate(TX)
    d.tx_begin(p)
    assert d.tx_slot() == (0, 0)  # the echo response travels alone
    assert d.tx_count == 1
    n, zlp = d.tx_finish()
    assert bytes(p.view[:n]) == ec.echo_response(b"are you there?") and not zlp
    assert d.own_tx_pending == 0

    d.tx_begin(p)  # the next transfer carries frames again
    off, room = d.tx_slot()
    assert room >= 1514
    p.view[off : off + len(frame)] = frame
    assert d.tx_commit(len(frame)) is True  # one EEM packet per transfer
    n, _ = d.tx_finish()
    out = ListSink(p.view)
    d.rx_decode(p.view, n, out)
    assert out.frames == [frame]


def test_echo_flood_is_bounded():
    d = make()
    stream = ec.echo(b"x") * 20
    view = memoryview(bytearray(stream))
    d.rx_decode(view, len(stream), ListSink(view))
    assert len(d._echoes) == 8 and d.stats.notification_errors == 12
