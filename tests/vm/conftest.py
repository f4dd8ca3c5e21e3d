"""Host-side pytest configuration for the VM bench.

Owns keeping ``tests/vm/guest`` out of a host collection: those tests only make sense inside the QEMU
guest, where ``tests/vm/test_vm.py`` (through ``tests/vm/harness.py``) runs them and reports each one
back as a host test. Inside the guest (``USBNETD_VM_GUEST=1``) they are collected normally.
"""

from __future__ import annotations

import os

collect_ignore = [] if os.environ.get("USBNETD_VM_GUEST") == "1" else ["guest"]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config) -> None:
    from .test_vm import VM_SUMMARY_KEY

    summary = config.stash.get(VM_SUMMARY_KEY, None)
    if summary:
        terminalreporter.section("VM bench")
        terminalreporter.write_line(summary)
