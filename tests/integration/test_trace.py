"""`usbnetd trace` on a running sim:ncm instance, read back with the real tshark (Debian's `tshark`).

- a trace to a file while pinging: tshark reads it without a complaint and shows the ICMP echo requests
  going out and the replies coming in on interface 0 (Ethernet), and on interface 1 (USB) the bulk OUT
  submissions on endpoint 0x02 and bulk IN completions on 0x81 carrying NCM NTBs ("NCMH", which tshark's
  NCM/MBIM dissector decodes down to the same ICMP), with URB status -EINPROGRESS on submissions and 0 on
  completions, consecutive NTB sequence numbers, and the statistics blocks at the end; the instance runs
  the Python data path while traced and goes back to the C path after;
- `trace -c N | tshark -r -` gives exactly N records;
- a reader that does not read loses records (counted, and the trace says so) and the pings do not;
- bad input is one line and a non-zero exit: not root, no such instance, a file that cannot be written, a
  second trace of the same instance.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from usbnetd import native
from usbnetd.core import pcapng

from .conftest import Usbnetd, wire_up

TSHARK = shutil.which("tshark")


@pytest.fixture
def traced(netns_pair, tmp_path):
    if TSHARK is None:
        pytest.fail("tshark is missing; scripts/test.sh installs it (Debian package tshark)")
    ns, peer_ns = netns_pair
    u = Usbnetd(ns, peer_ns, "sim:ncm", str(tmp_path))
    host_ip, peer_ip = wire_up(u, 77)
    # the first ping also waits for the link and ARP
    ns.run("ping", "-c", "1", "-W", "5", peer_ip)
    try:
        yield u, host_ip, peer_ip, tmp_path
    finally:
        u.stop()


def trace_proc(u: Usbnetd, *args: str, **kw) -> subprocess.Popen:
    return u.ns.popen(sys.executable, "-m", "usbnetd", "trace", u.ifname, *args, env=u.env, **kw)


def wait_tracing(u: Usbnetd, want: bool, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = json.loads(u.cli("status", u.ifname, "--json").stdout)[0]
        if st["tracing"] is want or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def tshark_fields(path: str, *fields: str, stdin: bytes | None = None) -> list[list[str]]:
    args = [TSHARK, "-r", path, "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f"]
    for f in fields:
        args += ["-e", f]
    r = subprocess.run(args, input=stdin, capture_output=True, timeout=60)
    err = r.stderr.decode(errors="replace")
    noise = [ln for ln in err.splitlines() if ln.strip() and "Running as user" not in ln]
    assert r.returncode == 0 and not noise, f"tshark: rc {r.returncode}: {err}"
    return [ln.split("\t") for ln in r.stdout.decode().splitlines()]


def test_trace_to_a_file_while_pinging_is_what_tshark_shows(traced):
    u, host_ip, peer_ip, tmp = traced
    before = json.loads(u.cli("status", u.ifname, "--json").stdout)[0]
    assert before["tracing"] is False
    out = str(tmp / "t.pcapng")
    p = trace_proc(u, "-w", out, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    st = wait_tracing(u, True)
    assert st["tracing"] is True and st["datapath"] == "python"
    u.ns.run("ping", "-c", "5", "-i", "0.2", "-W", "2", peer_ip)
    # a control request while running: promiscuous mode reaches the device as SET_ETHERNET_PACKET_FILTER
    u.ns.run("ip", "link", "set", u.ifname, "promisc", "on")
    deadline = time.monotonic() + 10
    while "packet filter 0x0f" not in u.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=20)
    err = stderr.decode()
    assert p.returncode == 0, err
    assert stdout == b"" and "Traceback" not in err
    assert "tracing usbn0 (ncm on sim:ncm)" in err and ", 0 dropped" in err.splitlines()[-1]
    after = wait_tracing(u, False)
    assert after["datapath"] == before["datapath"], "the C path (if any) is back after the trace"
    if native.AVAILABLE:
        assert after["datapath"] == "native"

    rows = tshark_fields(out, "frame.interface_id", "frame.packet_flags_direction", "icmp.type", "ip.src",
                         "usb.urb_type", "usb.transfer_type", "usb.endpoint_address", "usb.urb_status",
                         "usb.urb_len", "usb.data_len", "mbim.bulk.nth.signature", "mbim.bulk.nth.sequence_number")
    eth = [r for r in rows if r[0] == "0"]
    usb = [r for r in rows if r[0] == "1"]
    requests = [r for r in eth if r[2] == "8" and r[3] == host_ip]
    replies = [r for r in eth if r[2] == "0" and r[3] == peer_ip]
    assert len(requests) == 5 and all(int(r[1], 16) == pcapng.EPB_OUTBOUND for r in requests)
    assert len(replies) == 5 and all(int(r[1], 16) == pcapng.EPB_INBOUND for r in replies)
    # USB: every record is a URB of ours, bulk or control or interrupt
    assert usb and all(r[5] in ("0x01", "0x02", "0x03") for r in usb)
    out_s = [r for r in usb if r[6] == "0x02" and r[4] == "'S'"]
    out_c = [r for r in usb if r[6] == "0x02" and r[4] == "'C'"]
    in_c = [r for r in usb if r[6] == "0x81" and r[4] == "'C'"]
    in_s = [r for r in usb if r[6] == "0x81" and r[4] == "'S'"]
    assert out_s and all(r[5] == "0x03" and r[7] == "-115" and r[10] == "NCMH" and int(r[9]) > 0 for r in out_s)
    assert len(out_c) == len(out_s) and all(r[7] == "0" and r[9] == "0" for r in out_c)
    assert in_c and all(r[7] == "0" and r[10] == "NCMH" and r[8] == r[9] for r in in_c)
    assert in_s and all(r[9] == "0" for r in in_s), "an IN submission carries no data"
    # the ICMP inside the NTBs: requests went out in bulk OUT submissions, replies came in bulk IN completions
    assert sum(r[2] == "8" for r in out_s) == 5 and sum(r[2] == "0" for r in in_c) == 5
    seq = [int(r[11]) for r in out_s]
    assert seq == list(range(seq[0], seq[0] + len(seq))), f"NTB sequence numbers not consecutive: {seq}"
    # the control transfer: tshark decodes its setup packet (CDC SET_ETHERNET_PACKET_FILTER, 0x43, with
    # wValue the filter bits: promiscuous|all-multicast|directed|broadcast, CDC 1.2 §6.2.4) and its completion
    ctrl = tshark_fields(out, "usb.transfer_type", "usb.urb_type", "usb.bmRequestType",
                         "usb.setup.bRequest", "usb.setup.wValue", "usb.urb_status")
    ctrl = [r for r in ctrl if r[0] == "0x02"]
    assert ["0x02", "'S'", "0x21", "67", "0x000f", "-115"] in ctrl, ctrl
    assert any(r[1] == "'C'" and r[5] == "0" for r in ctrl), ctrl

    cap = pcapng.parse(open(out, "rb").read())
    assert [i["linktype"] for i in cap.interfaces] == [1, 220]
    assert [(s["interface"], s["dropped"]) for s in cap.statistics] == [(0, 0), (1, 0)]
    assert [s["received"] for s in cap.statistics] == [len(eth), len(usb)]
    assert "stopped by the reader" in cap.statistics[0]["comment"]


def test_count_through_a_pipe_into_tshark(traced):
    u, host_ip, peer_ip, tmp = traced
    ping = u.ns.popen("ping", "-c", "40", "-i", "0.05", peer_ip, stdout=subprocess.DEVNULL)
    try:
        r = u.ns.run("sh", "-c", f"{sys.executable} -m usbnetd trace {u.ifname} -c 12 | {TSHARK} -r - -T fields "
                     "-e frame.interface_id", env=u.env, timeout=60)
    finally:
        ping.wait(30)
    lines = r.stdout.split()
    assert len(lines) == 12 and set(lines) <= {"0", "1"}, r.stdout
    assert "Traceback" not in r.stderr
    assert wait_tracing(u, False)["tracing"] is False


def test_a_reader_that_does_not_read_loses_records_not_frames(traced):
    u, host_ip, peer_ip, tmp = traced
    path = os.path.join(u.env["USBNETD_RUN_DIR"], "sim_ncm_simw0.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(path)
    s.sendall(json.dumps({"cmd": "trace", "buffer": 65536}).encode() + b"\n")
    try:
        assert wait_tracing(u, True)["tracing"] is True
        # ~ 600 frames each way and 4 USB records per ping: far more than 64 KiB of records
        r = u.ns.run("ping", "-c", "300", "-i", "0.002", "-s", "1000", "-W", "2", peer_ip)
        assert " 0% packet loss" in r.stdout, r.stdout
        s.shutdown(socket.SHUT_WR)
        s.settimeout(20)
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    finally:
        s.close()
    reply, _, stream = data.partition(b"\n")
    assert json.loads(reply)["ok"] is True
    cap = pcapng.parse(stream)
    dropped = sum(st["dropped"] for st in cap.statistics)
    assert dropped > 0 and "records dropped: the reader did not keep up" in cap.statistics[0]["comment"]
    saved = tmp / "slow.pcapng"
    saved.write_bytes(stream)
    assert tshark_fields(str(saved), "frame.number"), "tshark reads the truncated trace"


def test_bad_input_is_one_line_and_a_non_zero_exit(traced):
    u, host_ip, peer_ip, tmp = traced
    cases = [
        (("trace", "nosuch0", "-w", str(tmp / "x")), "nosuch0 is not attached"),
        (("trace", u.ifname, "-w", str(tmp / "no" / "dir" / "x.pcapng")), "cannot write"),
        (("trace", u.ifname, "-s", "10", "-w", str(tmp / "y")), "10 is not in the range"),
    ]
    for args, want in cases:
        r = u.cli(*args, check=False)
        assert r.returncode != 0 and len(r.stderr.splitlines()) == 1 and want in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    # not root: refused before anything is opened
    r = u.ns.run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "usbnetd",
                 "trace", u.ifname, "-w", "/dev/null", env=u.env, check=False)
    assert r.returncode == 1 and r.stderr.splitlines() == [
        "usbnetd: error: tracing is for root only: the trace carries every frame's payload"]
    # a second trace of the same instance while one runs
    first = trace_proc(u, "-w", str(tmp / "first.pcapng"), stderr=subprocess.PIPE)
    try:
        assert wait_tracing(u, True)["tracing"] is True
        r = u.cli("trace", u.ifname, "-w", str(tmp / "second.pcapng"), check=False)
        assert r.returncode == 1 and r.stderr.strip() == \
            "usbnetd: error: busy: the instance is already being traced"
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=20)
    assert first.returncode == 0, err
    assert pcapng.parse((tmp / "first.pcapng").read_bytes()).statistics, "SIGTERM ends it with a whole file"


def test_the_trace_ends_whole_when_the_instance_stops(traced):
    u, host_ip, peer_ip, tmp = traced
    out = tmp / "stop.pcapng"
    p = trace_proc(u, "-w", str(out), stderr=subprocess.PIPE)
    assert wait_tracing(u, True)["tracing"] is True
    u.ns.run("ping", "-c", "2", "-i", "0.2", peer_ip)
    assert u.stop() == 0
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    cap = pcapng.parse(out.read_bytes())
    assert "the instance stopped: SIGTERM" in cap.statistics[0]["comment"]
    assert sum(1 for pk in cap.packets if pk.interface == 0) >= 4


def test_ecm_one_frame_per_bulk_transfer(netns_pair, tmp_path):
    """ECM carries each frame as one bulk transfer: every frame at the interface has its USB record with the
    same bytes (OUT: the submission's data, IN: the completion's)."""
    if TSHARK is None:
        pytest.fail("tshark is missing; scripts/test.sh installs it (Debian package tshark)")
    ns, peer_ns = netns_pair
    u = Usbnetd(ns, peer_ns, "sim:ecm", str(tmp_path))
    try:
        host_ip, peer_ip = wire_up(u, 78)
        ns.run("ping", "-c", "1", "-W", "5", peer_ip)
        out = str(tmp_path / "ecm.pcapng")
        p = trace_proc(u, "-w", out, stderr=subprocess.PIPE)
        assert wait_tracing(u, True)["tracing"] is True
        ns.run("ping", "-c", "3", "-i", "0.2", peer_ip)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=20)
        assert p.returncode == 0, err
    finally:
        u.stop()
    cap = pcapng.parse(open(out, "rb").read())
    eth = [pk for pk in cap.packets if pk.interface == 0]
    usb = [(pk.data[8], pk.data[10], pk.data[pcapng.USBMON_LEN:]) for pk in cap.packets if pk.interface == 1]
    sent = [pk.data for pk in eth if pk.flags == pcapng.EPB_OUTBOUND]
    got = [pk.data for pk in eth if pk.flags == pcapng.EPB_INBOUND]
    assert len(sent) >= 3 and len(got) >= 3
    assert sent == [d for kind, ep, d in usb if kind == pcapng.URB_SUBMIT and ep == 0x02]
    assert got == [d for kind, ep, d in usb if kind == pcapng.URB_COMPLETE and ep == 0x81]
    rows = tshark_fields(out, "frame.interface_id", "icmp.type")
    assert sum(r == ["0", "8"] for r in rows) == 3 and sum(r == ["0", "0"] for r in rows) == 3


def test_a_reader_of_the_output_that_goes_away_ends_the_trace_quietly(traced):
    u, host_ip, peer_ip, tmp = traced
    ping = u.ns.popen("ping", "-c", "30", "-i", "0.05", peer_ip, stdout=subprocess.DEVNULL)
    try:
        r = u.ns.run("sh", "-c", f"{sys.executable} -m usbnetd trace {u.ifname} | head -c 1000 | wc -c",
                     env=u.env, timeout=60)
    finally:
        ping.wait(30)
    assert r.stdout.strip() == "1000"
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1].endswith("(the output's reader stopped reading: trace ended)"), r.stderr
    assert wait_tracing(u, False)["tracing"] is False
