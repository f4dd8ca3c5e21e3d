"""Render benchmark JSON again: ``python bench/report.py [--markdown] FILE...`` (native, vm or profile JSON).

With ``--markdown`` the tables come out as the Markdown that docs/performance.md holds, so the page can be
regenerated from a new run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import native  # noqa: E402

import vm  # noqa: E402


def render(data: dict, markdown: bool) -> str:
    mode = data.get("mode")
    head = f"{mode} run of {data.get('date')}"
    if data.get("error"):
        head += f" (BROKEN: {data['error']})"
    m = data.get("machine") or data.get("host_machine") or {}
    if "loadavg_at_start" in m:
        head += (f"; host load average at start {m['loadavg_at_start'][0]:g}, other busy processes: "
                 f"{', '.join(m['other_busy']) or 'none'}")
    if mode == "native":
        head += (f"; {m['nproc']} CPUs, {m['cpu_model']}, kernel {m['kernel']}, Python {m['python']}; "
                 f"{data['pinning']}; {data['seconds_per_run']:g} s per run; took {data.get('elapsed_s')} s")
        return "\n\n".join([head, native.render(data, markdown), native.detail(data, markdown)])
    if mode == "vm":
        g = data["guest"]
        head += (f"; guest kernel {g['machine']['kernel']}, {g['machine']['nproc']} vCPUs (QEMU TCG), "
                 f"{g['seconds_per_run']:g} s per run; took {data.get('elapsed_s')} s")
        parts = [head, vm.render(data, markdown), vm.extras(data, markdown)]
        if data.get("variants", ["usbnetd"]) != ["usbnetd"]:
            parts.append(vm.render_variants(data, data["variants"], markdown))
        return "\n\n".join(parts)
    if mode == "profile":
        return "\n\n".join([head, native.render_profile(data["profile"], markdown)])
    raise SystemExit(f"unknown mode {mode!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("files", nargs="+")
    ns = ap.parse_args()
    for path in ns.files:
        with open(path) as f:
            print(render(json.load(f), ns.markdown))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
