"""RNDIS keepalive while running: one KEEPALIVE outstanding at a time, answered ones re-arm the timer, an
unanswered one stops the instance (the service stops on the text `poll()` returns) and no HALT follows.
The real path (a FunctionFS device that goes silent) is tests/vm/guest/test_faults_device.py."""

from __future__ import annotations

import struct

from usbnetd.core.stats import Stats
from usbnetd.protocols import rndis_codec as rc
from usbnetd.protocols.driver import Binding, Options
from usbnetd.protocols.rndis import KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, RndisDriver
from usbnetd.usb.descriptors import Endpoint


class Recorder:
    """Only what the keepalive path touches: asynchronous and synchronous class requests."""

    def __init__(self) -> None:
        self.async_sent: list[bytes] = []
        self.sync_sent: list[bytes] = []
        self.fetches = 0
        self.callbacks: list = []

    def submit_control(self, request_type, request, value, index, data, callback, timeout_ms=5000) -> bool:
        if request_type & 0x80:  # GET_ENCAPSULATED_RESPONSE
            self.fetches += 1
            self.callbacks.append(callback)
        else:
            self.async_sent.append(bytes(data))
        return True

    def control_out(self, request_type, request, value, index, data, timeout_ms=1000) -> None:
        self.sync_sent.append(bytes(data))


def driver() -> tuple[RndisDriver, Recorder]:
    t = Recorder()
    b = Binding(1, 0, 1, 0, Endpoint(0x82, 2, 512, 0), Endpoint(0x03, 2, 512, 0), None, None)
    return RndisDriver(t, b, Stats(), Options()), t  # type: ignore[arg-type]


def sent_types(msgs: list[bytes]) -> list[int]:
    return [struct.unpack_from("<I", m)[0] for m in msgs]


def test_keepalive_answered_then_unanswered():
    d, t = driver()
    d._initialized = True
    now = 1000.0
    assert d.poll(now) is None and not t.async_sent  # armed, not due yet
    now += KEEPALIVE_INTERVAL
    assert d.poll(now) is None
    assert sent_types(t.async_sent) == [rc.KEEPALIVE_MSG]
    rid = struct.unpack_from("<I", t.async_sent[0], 8)[0]
    assert d.poll(now + 1) is None and len(t.async_sent) == 1  # one outstanding at a time
    d._response(0, rc.keepalive_complete(rid))  # answered
    assert d._keepalive_id is None
    now += 2
    assert d.poll(now) is None and len(t.async_sent) == 1  # re-armed from the answer
    now += KEEPALIVE_INTERVAL
    assert d.poll(now) is None and len(t.async_sent) == 2
    assert d.poll(now + KEEPALIVE_TIMEOUT - 0.5) is None  # still within the timeout
    why = d.poll(now + KEEPALIVE_TIMEOUT)
    assert why and "stopped answering" in why
    d.unbind()
    assert not t.sync_sent  # no HALT to a device that stopped answering


def test_a_device_that_never_notifies_is_asked_for_its_responses():
    d, t = driver()
    d.poll(0.0)
    d.poll(KEEPALIVE_INTERVAL)  # KEEPALIVE sent
    rid = struct.unpack_from("<I", t.async_sent[0], 8)[0]
    d.poll(KEEPALIVE_INTERVAL + 1.0)  # no answer yet: fetch
    assert t.fetches == 1
    t.callbacks.pop()(0, rc.set_complete(7))  # an older response comes first: fetch again
    assert t.fetches == 2
    t.callbacks.pop()(0, rc.keepalive_complete(rid))
    assert d._keepalive_id is None and t.fetches == 2
    assert d.poll(KEEPALIVE_INTERVAL + 2.0) is None


def test_a_completion_for_another_request_does_not_count():
    d, t = driver()
    d.poll(0.0)
    d.poll(KEEPALIVE_INTERVAL)
    rid = struct.unpack_from("<I", t.async_sent[0], 8)[0]
    d._response(0, rc.keepalive_complete(rid + 1))
    assert d.poll(KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT)


def test_no_halt_when_initialize_never_completed():
    d, t = driver()
    d.unbind()
    assert not t.sync_sent
    d._initialized = True
    d.unbind()
    assert sent_types(t.sync_sent) == [rc.HALT_MSG]


def test_one_byte_responses_zero_is_nothing_queued_anything_else_is_counted():
    d, _t = driver()
    d._response(0, b"\x00")  # MS-RNDIS: no response queued
    d._response(0, b"")
    assert d.stats.notification_errors == 0
    d._response(0, b"\x01")
    d._response(0, b"\xff")
    assert d.stats.notification_errors == 2
    d._response(0, b"\x02\x00\x00")  # too short for a header: the parser's rejection, counted as before
    assert d.stats.notification_errors == 3
