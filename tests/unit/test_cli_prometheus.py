"""`usbnetd stats --prometheus`: one valid exposition for one device and for several, read back with the real
prometheus_client parsers (prom_check.py). The daemon's stats dictionary keeps its shape; the formatter maps it.
A real daemon's output, and node_exporter reading it, are checked in tests/integration/test_cli_scripts.py.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from prom_check import check_exposition

from usbnetd.app import cli


def stats_row(ifname: str = "usb0", busid: str = "sim:ncm", n: int = 1) -> dict:
    """A stats reply's row, shaped as EthernetService.detailed_stats() returns it (captured from a sim:ncm)."""
    return {
        "busid": busid, "ifname": ifname, "protocol": "ncm", "state": "running", "link": "up",
        "speed_mbps": 480, "mac": "7a:f5:98:51:96:5d", "mtu": 1500,
        "rx_packets": 10 * n, "tx_packets": 3 * n, "rx_bytes": 1000 * n, "tx_bytes": 266 * n, "rx_errors": 0,
        "tx_errors": 0, "rx_dropped": 0, "tx_dropped": 0, "rx_length_errors": 0, "rx_frame_errors": 0,
        "tx_aborted_errors": 0, "rx_usb_errors": 0, "notifications": 2,
        "notification_errors": 0, "pool_packets": 29, "pool_in_use": 4,
        "protocol_detail": "NTB16, 32768 B in / 32769 B out", "rx_transfers": 5, "tx_transfers": 3,
        "rx_frames_per_transfer": 2.0, "tx_frames_per_transfer": 1.0,
        "tx_flush": {"full": 0, "pipe_idle": 3, "completion": 0, "timer": 0, "driver": 0},
        "pool": {"packets": 29, "buffer_size": 32769, "in_use": 4, "exhausted": 0},
        "queues": {"rx_submission": {"capacity": 4, "high_water": 4},
                   "rx_completion": {"capacity": 4, "high_water": 0},
                   "tx_submission": {"capacity": 8, "high_water": 1},
                   "tx_completion": {"capacity": 4, "high_water": 1}},
        "in_flight": {"rx": 4, "tx": 4}, "rx_throttled": 0,
        "rx_gro": {"enabled": True, "superframes": 1, "segments": 4, "unverified": 0},
        "tx_offload": {"enabled": True, "tso_superframes": 2, "tso_segments": 90, "csum_completed": 7,
                       "dropped": 1},
        # on a real adapter (not the sim): the C TX pump's memory and the daemon's CPU placement
        "transfer_memory": "usbfs", "tx_pump_memory": "usbfs", "cpu_placement": "avoiding CPU 1",
        "cpu_placement_moves": 1,
        "busy_poll_us": 0,  # the daemon's (app/daemon.py), beside the service's
    }


def sample(families: dict, family: str, name: str, **labels) -> float:
    (value,) = [s.value for s in families[family].samples if s.name == name and
                all(s.labels.get(k) == v for k, v in labels.items())]
    return value


@pytest.mark.parametrize("devices", [1, 2, 3])
def test_one_valid_exposition_for_any_number_of_devices(devices):
    rows = [stats_row(f"usb{i}", n=i + 1) for i in range(devices)]  # all sim:ncm: only ifname tells them apart
    fams = check_exposition(cli._prometheus(rows))
    # Gauges are gauges; a counter family (prometheus_client drops _total from its name) has *_total samples.
    assert fams["usbnetd_pool_in_use"].type == "gauge"
    assert fams["usbnetd_pool_packets"].type == "gauge"
    assert fams["usbnetd_rx_packets"].type == "counter"
    assert fams["usbnetd_tx_flush"].type == "counter"
    assert fams["usbnetd_pool_exhausted"].type == "counter"
    assert fams["usbnetd_busy_poll_microseconds"].type == "gauge"
    assert fams["usbnetd_queue_high_water"].type == "gauge"
    # one pool_in_use sample per device (it was two: the top-level key and pool.in_use)
    assert len(fams["usbnetd_pool_in_use"].samples) == devices
    for i in range(devices):
        assert sample(fams, "usbnetd_rx_packets", "usbnetd_rx_packets_total", ifname=f"usb{i}") == 10 * (i + 1)
        assert sample(fams, "usbnetd_tx_flush", "usbnetd_tx_flush_total", ifname=f"usb{i}",
                      reason="pipe_idle") == 3
        assert sample(fams, "usbnetd_link_up", "usbnetd_link_up", ifname=f"usb{i}", busid="sim:ncm",
                      protocol="ncm") == 1
        assert sample(fams, "usbnetd_rx_gro_enabled", "usbnetd_rx_gro_enabled", ifname=f"usb{i}") == 1
        assert sample(fams, "usbnetd_tx_offload_enabled", "usbnetd_tx_offload_enabled", ifname=f"usb{i}") == 1
        assert sample(fams, "usbnetd_tx_offload_tso_segments", "usbnetd_tx_offload_tso_segments_total",
                      ifname=f"usb{i}") == 90
    assert fams["usbnetd_tx_offload_tso_superframes"].type == "counter"


def test_every_number_of_the_stats_row_is_described():
    """No untyped family for the daemon's current keys: each has a type and a HELP of its own."""
    text = cli._prometheus([stats_row()])
    fams = check_exposition(text)  # allow_untyped=False
    assert "untyped" not in text and len(fams) >= 30


def test_no_devices_is_an_empty_file():
    assert cli._prometheus([]) == ""


def test_a_key_not_in_the_table_is_untyped_and_cannot_clash():
    row = stats_row()
    row["new_counter"] = 7  # a key the daemon may add before the table describes it
    row["rx_packets_total"] = 1  # would clash with the counter family usbnetd_rx_packets(_total)
    row["odd key!"] = 1  # not a metric name
    text = cli._prometheus([row, stats_row("usb1")])
    fams = check_exposition(text, allow_untyped=True)
    assert fams["usbnetd_new_counter"].type == "unknown" and "new_counter" in fams["usbnetd_new_counter"].documentation
    assert sample(fams, "usbnetd_rx_packets", "usbnetd_rx_packets_total", ifname="usb0") == 10
    assert "odd key" not in text


def test_label_values_are_escaped():
    row = stats_row(ifname='we"ird\\name\nx')
    fams = check_exposition(cli._prometheus([row, stats_row("usb1")]))
    assert sample(fams, "usbnetd_mtu", "usbnetd_mtu", ifname='we"ird\\name\nx') == 1500


def test_two_instances_that_look_the_same_do_not_make_a_series_twice():
    fams = check_exposition(cli._prometheus([stats_row(), copy.deepcopy(stats_row())]))
    assert len(fams["usbnetd_mtu"].samples) == 1


def test_missing_and_non_numeric_values_are_left_out():
    row = stats_row()
    row.update(speed_mbps=None, pool={}, queues={}, in_flight={})
    fams = check_exposition(cli._prometheus([row, stats_row("usb1")]))
    assert [s.labels["ifname"] for s in fams["usbnetd_speed_mbps"].samples] == ["usb1"]
    assert [s.labels["ifname"] for s in fams["usbnetd_pool_in_use"].samples] == ["usb1"]


def expand(pattern: str) -> list[str]:
    """Shell-like brace expansion of one name pattern: usbnetd_{rx,tx}_x -> usbnetd_rx_x, usbnetd_tx_x."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return [name for alt in m.group(1).split(",")
            for name in expand(pattern[:m.start()] + alt + pattern[m.end():])]


def test_operating_md_names_every_metric_with_its_type():
    text = (Path(__file__).resolve().parents[2] / "docs" / "operating.md").read_text()
    section = text.split("### Statistics", 1)[1].split("\n### ", 1)[0]
    counters_part, gauges_part = section.split("Counters end in `_total`", 1)[1].split("Gauges:", 1)
    documented = {}
    for part, kind in ((counters_part, "counter"), (gauges_part, "gauge")):
        for pattern in re.findall(r"`(usbnetd_[^`]*)`", part):
            for name in expand(re.sub(r"\{[a-z]+\}$", "", pattern)):  # a trailing {label} is not a brace list
                documented[name] = kind
    assert documented == {name: kind for name, (kind, _help) in cli.PROM_FAMILIES.items()}
