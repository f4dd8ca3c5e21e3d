"""The daemon's end of a trace (app/trace.py): who may start one, what a request may ask, and the stream a
session writes — header first, records as queued, statistics last, then the end — without ever blocking."""

from __future__ import annotations

import select
import socket
from types import SimpleNamespace

from usbnetd.app import trace as T
from usbnetd.core import pcapng as P
from usbnetd.core.trace import Tracer, header
from usbnetd.usb.descriptors import Endpoint


def fake_service():
    ep = Endpoint(0x81, 2, 512, 0), Endpoint(0x02, 2, 512, 0), Endpoint(0x83, 3, 16, 9)
    binding = SimpleNamespace(ep_in=ep[0], ep_out=ep[1], ep_int=ep[2])
    calls = []
    dp = SimpleNamespace(port=object(), running=True, tracer=None, path="native",
                         set_tracer=lambda t: (calls.append(t), setattr(dp, "tracer", t)))
    svc = SimpleNamespace(datapath=dp, driver=SimpleNamespace(binding=binding, name="ncm"), ifname="usb0",
                          transport=SimpleNamespace(identity=SimpleNamespace(busid="sim:ncm")))
    return svc, calls


def test_only_root_or_the_daemons_user_may_trace():
    svc, calls = fake_service()
    r = T.start_session(svc, {"cmd": "trace", "_uid": 1000}, lambda s: None)
    assert r == {"ok": False, "error": "permission denied: tracing is for root only (frames carry payloads)"}
    r = T.start_session(svc, {"cmd": "trace"}, lambda s: None)  # no uid known: refused too
    assert not r["ok"] and not calls


def test_bad_requests_are_refused_with_the_reason():
    svc, calls = fake_service()
    for bad in ({"snaplen": 10}, {"snaplen": "x"}, {"count": -1}, {"buffer": 1}, {"buffer": 1 << 40}):
        r = T.start_session(svc, {"cmd": "trace", "_uid": 0, **bad}, lambda s: None)
        assert not r["ok"] and r["error"].startswith("bad request"), bad
    svc.datapath.tracer = Tracer()
    r = T.start_session(svc, {"cmd": "trace", "_uid": 0}, lambda s: None)
    assert r == {"ok": False, "error": "busy: the instance is already being traced"}
    assert not calls


def test_a_session_streams_header_records_and_statistics_then_closes():
    svc, calls = fake_service()
    sessions = []
    reply = T.start_session(svc, {"cmd": "trace", "_uid": 0, "snaplen": 1000, "count": 0}, sessions.append)
    assert reply["ok"] and reply["trace"]["snaplen"] == 1000
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    reply["_takeover"](ours)
    (session,) = sessions
    tracer = calls[0]
    assert isinstance(tracer, Tracer) and tracer.snaplen == 1000 and svc.datapath.tracer is tracer
    tracer.frame(b"\x02" * 60, inbound=True)
    tracer.urb(1, P.URB_COMPLETE, P.XFER_BULK, 0x81, 0, 100, bytes(100))
    assert session.poll_events() & select.POLLOUT
    session.pump()
    theirs.shutdown(socket.SHUT_WR)  # what the client does on Ctrl-C
    session.on_event(select.POLLIN)
    assert session.closing and session.closed and calls[-1] is None, "the tracer is detached at the end"
    data = b""
    while chunk := theirs.recv(65536):
        data += chunk
    cap = P.parse(data)
    assert data.startswith(header("usb0", "sim:ncm", "ncm", 1000, "usbnetd"))
    assert [p.interface for p in cap.packets] == [0, 1]
    assert [(s["interface"], s["received"], s["dropped"]) for s in cap.statistics] == [(0, 1, 0), (1, 1, 0)]
    assert cap.statistics[0]["comment"] == "trace ended: stopped by the reader"


def test_a_reader_that_does_not_read_never_blocks_the_session():
    svc, calls = fake_service()
    sessions = []
    reply = T.start_session(svc, {"cmd": "trace", "_uid": 0, "buffer": 65536}, sessions.append)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    reply["_takeover"](ours)
    (session,) = sessions
    tracer = calls[0]
    for _ in range(2000):
        tracer.frame(bytes(1000), inbound=False)
        session.pump()  # returns at once when the socket is full
    assert tracer.dropped[0] > 0 and tracer.queued <= 65536
    session.finish("test")
    session.drain(timeout=0.2)  # nobody reads: it gives up and closes
    assert session.closed
    theirs.close()
