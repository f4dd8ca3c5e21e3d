"""The simulated adapter's fault options: parsing `sim:KIND?...` and the order faults fire in."""

from __future__ import annotations

from collections import deque

import pytest

from usbnetd.app.discovery import BadDevice, parse_device_spec
from usbnetd.usb.simfaults import SimFaults
from usbnetd.usb.transport import STATUS_ERROR, STATUS_STALL


def test_device_string_options():
    spec = parse_device_spec("sim:ncm?rx_errors=30&rx_error_after=5")
    assert (spec.kind, spec.sim, spec.sim_options) == ("sim", "ncm", (("rx_errors", 30), ("rx_error_after", 5)))
    assert str(spec) == "sim:ncm"  # status and detach match the instance by its plain name
    assert parse_device_spec("sim:ecm").sim_options == ()


@pytest.mark.parametrize("text", ["sim:ncm?rx_erors=3", "sim:ncm?rx_errors", "sim:ncm?rx_errors=-1",
                                  "sim:ncm?rx_errors=x", "sim:ncm?rx_errors=1&", "sim:rndis?rx_errors=1",
                                  "sim:ncm?rx_errors=9999999999"])
def test_bad_options_are_one_line_errors(text):
    with pytest.raises(BadDevice) as e:
        parse_device_spec(text)
    assert "\n" not in str(e.value)


def _run(f: SimFaults, good: int) -> list[int]:
    """`good` successful completions, then what the transfers queued afterwards complete with."""
    for _ in range(good):
        f.completed()
    in_q, done = deque((object(), 2048) for _ in range(8)), deque()
    f.fail(in_q, done)
    return [status for _, _, status, _ in done]


def test_error_burst_after_n_good_completions_then_quiet():
    f = SimFaults(rx_errors=5, rx_error_after=10)
    assert _run(f, 9) == []
    assert _run(f, 1) == [STATUS_ERROR] * 5
    assert _run(f, 100) == []  # one burst by default
    assert f.injected_errors == 5


def test_halt_fails_everything_until_cleared():
    f = SimFaults(rx_stall_after=3, rx_stalls=2)
    assert _run(f, 3) == [STATUS_STALL] * 8
    assert _run(f, 0) == [STATUS_STALL] * 8  # still halted: the host has not cleared it
    f.clear_halt()
    assert _run(f, 2) == []
    assert _run(f, 1) == [STATUS_STALL] * 8
    f.clear_halt()
    assert _run(f, 50) == []
    assert (f.halts, f.halts_cleared, f.stall_completions) == (2, 2, 24)
