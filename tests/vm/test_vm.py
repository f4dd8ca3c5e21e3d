"""Host-side runner: each test in ``tests/vm/guest`` becomes one host test, run inside one QEMU guest.

Owns: collecting the guest test ids on the host (``pytest --collect-only`` in a subprocess), booting the
guest once per session for the selected ones (``harness.run_in_guest``), and turning the guest's
per-test report (``report.jsonl``, written by the guest conftest) into host outcomes: a guest failure
fails here with its text, a guest skip is a skip here with its reason, a missing report is a failure.
If the bench cannot be prepared or the guest cannot boot, every test here fails: the VM layer never
skips because QEMU is missing.

Environment: ``USBNETD_VM_TIMEOUT`` (seconds for the whole guest run, default harness.DEFAULT_RUN_TIMEOUT),
``USBNETD_VM_RESULTS`` (host directory for the run's results instead of a new one in the cache).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from . import harness

GUEST_DIR = Path(__file__).resolve().parent / "guest"
GUEST_REL = GUEST_DIR.relative_to(harness.REPO).as_posix()
RUN_TIMEOUT = float(os.environ.get("USBNETD_VM_TIMEOUT", str(harness.DEFAULT_RUN_TIMEOUT)))
KEEP_RUNS = 10

pytestmark = pytest.mark.vm


def _collect_guest_ids() -> tuple[list[str], str | None]:
    """Guest node ids (as pytest prints them from the repo root), or an error text."""
    env = dict(os.environ, USBNETD_VM_GUEST="1")  # let tests/vm/conftest.py collect the guest dir
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", GUEST_REL]
    try:
        r = subprocess.run(cmd, cwd=harness.REPO, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return [], "collecting the guest tests timed out"
    ids = [line.strip() for line in r.stdout.splitlines() if line.startswith(GUEST_REL + "/") and "::" in line]
    if r.returncode != 0 or not ids:
        return ids, f"collecting {GUEST_REL} failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
    return ids, None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "guest_test" not in metafunc.fixturenames:
        return
    ids, error = _collect_guest_ids()
    if error:
        metafunc.parametrize("guest_test", [f"collection-error::{error}"], ids=["collection-error"])
        return
    metafunc.parametrize("guest_test", ids, ids=[i.removeprefix(GUEST_REL + "/") for i in ids])


def _prune_runs(keep: int) -> None:
    runs = harness.cache_dir() / "runs"
    if runs.is_dir():
        old = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)[:-keep]
        for p in old:
            subprocess.run(["rm", "-rf", str(p)], check=False, timeout=120)


class GuestSession:
    """One guest boot running the selected guest tests, and what it reported per test."""

    def __init__(self, result: harness.GuestResult, selected: list[str]) -> None:
        self.result = result
        self.selected = selected
        self.reports: dict[str, list[dict]] = {}
        report = result.results_dir / "report.jsonl"
        if report.exists():
            for line in report.read_text().splitlines():
                entry = json.loads(line)
                self.reports.setdefault(entry["nodeid"], []).append(entry)

    def describe(self) -> str:
        r = self.result
        return (
            f"guest exit status {r.returncode}, boot {r.boot_seconds and round(r.boot_seconds, 1)}s, "
            f"run {r.elapsed:.1f}s{', ERROR: ' + r.error if r.error else ''}\n"
            f"console log: {r.console_log}\nresults: {r.results_dir}"
        )


@pytest.fixture(scope="session")
def guest_session(request: pytest.FixtureRequest) -> GuestSession:
    selected = [
        item.callspec.params["guest_test"]
        for item in request.session.items
        if hasattr(item, "callspec") and "guest_test" in item.callspec.params
    ]
    selected = [s for s in selected if not s.startswith("collection-error::")] or [GUEST_REL]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    try:
        prepared = harness.prepare()
    except harness.HarnessError as e:
        pytest.fail(f"VM bench could not be prepared: {e}", pytrace=False)
    if os.environ.get("USBNETD_VM_RESULTS"):
        results = Path(os.environ["USBNETD_VM_RESULTS"])
    else:
        _prune_runs(KEEP_RUNS - 1)
        results = harness.new_run_dir()
    command = harness.pytest_command(["-v", *selected])
    if reporter:
        reporter.write_line(
            f"\n[vm] booting the guest for {len(selected)} test(s), timeout {RUN_TIMEOUT:.0f}s; "
            f"console log: {results / 'console.log'}"
        )
    result = harness.run_in_guest(command, results_dir=results, timeout=RUN_TIMEOUT, prepared=prepared)
    session = GuestSession(result, selected)
    request.config.stash[VM_SUMMARY_KEY] = session.describe()
    if reporter:
        reporter.write_line(f"[vm] {session.describe()}")
    return session


VM_SUMMARY_KEY = pytest.StashKey[str]()


def _fail_text(session: GuestSession, what: str) -> str:
    return f"{what}\n{session.describe()}\n--- console tail ---\n{session.result.console_tail()}"


def judge(entries: list[dict]) -> tuple[str, str]:
    """Outcome of one guest test from its report entries: (kind, text).

    kind is "failed" (any phase failed; text is the failure), "xfailed", "skipped" (text is the reason),
    "passed", or "missing" (no entries, or no passing call phase).
    """
    if not entries:
        return "missing", "the guest reported nothing for this test"
    failed = [e for e in entries if e["outcome"] == "failed"]
    if failed:
        return "failed", "\n".join(f"[guest {e['when']}] {e['longrepr']}" for e in failed)
    for e in entries:
        if e["outcome"] == "skipped":
            if e.get("wasxfail") is not None:
                return "xfailed", e["wasxfail"] or e["longrepr"]
            return "skipped", e["longrepr"]
    if not any(e["when"] == "call" and e["outcome"] == "passed" for e in entries):
        return "missing", "no passing call phase was reported"
    return "passed", ""


def test_guest(guest_test: str, guest_session: GuestSession) -> None:
    """One guest test, run in the session's guest; its outcome there is its outcome here."""
    if guest_test.startswith("collection-error::"):
        pytest.fail(guest_test.removeprefix("collection-error::"), pytrace=False)
    entries = guest_session.reports.get(guest_test, [])
    # Each phase's report repeats the sections of the phases before it: print each section once.
    sections: dict[str, str] = {}
    for e in entries:
        sections.update((name, text) for name, text in e.get("sections", []))
    for name, text in sections.items():
        print(f"--- guest: {name} ---\n{text}")
    kind, text = judge(entries)
    if kind == "failed":
        pytest.fail(f"{text}\n\nconsole log: {guest_session.result.console_log}", pytrace=False)
    if kind == "missing":
        pytest.fail(_fail_text(guest_session, f"{guest_test}: {text}"), pytrace=False)
    if kind == "xfailed":
        pytest.xfail(f"guest xfail: {text}")
    if kind == "skipped":
        pytest.skip(f"skipped in the guest: {text}")


def test_guest_run_completed(guest_session: GuestSession) -> None:
    """The guest booted, ran pytest to the end and reported an exit status of 0 (all passed) or 1."""
    r = guest_session.result
    if r.returncode is None or r.returncode not in (0, 1):
        pytest.fail(_fail_text(guest_session, "the guest run did not complete normally"), pytrace=False)
    assert (r.results_dir / "junit.xml").exists(), _fail_text(guest_session, "no junit.xml from the guest")
