"""Host-side pytest configuration for the VM bench.

Owns keeping ``tests/vm/guest`` out of a host collection: those tests only make sense inside the QEMU
guest, where ``tests/vm/test_vm.py`` (through ``tests/vm/harness.py``) runs them and reports each one
back as a host test. Inside the guest (``USBNETD_VM_GUEST=1``) they are collected normally.
"""

from __future__ import annotations

import os

collect_ignore = [] if os.environ.get("USBNETD_VM_GUEST") == "1" else ["guest"]
