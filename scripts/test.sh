#!/usr/bin/env bash
# The project's test command (see docs/testing.md). On a fresh Debian 12 machine, as root:
#   1. installs the Debian packages the tests need (apt-get update once, only if something is missing);
#   2. creates a venv at ${USBNETD_VENV:-<repo>/.venv} with the system python3 and installs '.[test]';
#   3. runs ruff over src, tests, bench and fuzz (those that exist);
#   4. runs pytest over tests/unit, tests/integration and tests/vm, one layer at a time.
# Exits non-zero if ruff or any layer fails. A layer with no tests (pytest exit 5) is not a failure.
# Extra arguments are passed to every pytest run (e.g. scripts/test.sh -x -k ncm).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${USBNETD_VENV:-$repo/.venv}"

# python3-venv for the venv; iproute2/iputils-ping/iperf3 for the integration layer; the rest for the
# VM layer (tests/vm/harness.py checks again and installs what is missing, for runs without this script);
# systemd (systemd-analyze, systemd-escape) and udev (udevadm, systemd-udevd) for the unit and rules tests.
apt_packages=(python3 python3-venv iproute2 iputils-ping iperf3 qemu-system-x86 busybox-static cpio kmod
  libusb-1.0-0 xz-utils zstd usbutils systemd udev ethtool)

missing=()
for p in "${apt_packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "test.sh: installing ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "test.sh: WARNING: missing Debian packages (not root, not installing): ${missing[*]}" >&2
  fi
fi

# The VM guest runs this venv's python through a read-only view of the host's /, so the venv must not
# live on a path the guest replaces (it does not mount anything over /tmp, /root or the repo).
if [[ -x /usr/bin/python3 ]]; then system_python=/usr/bin/python3; else system_python=python3; fi
if [[ ! -x "$venv/bin/python" ]]; then
  echo "test.sh: creating venv $venv with $system_python"
  "$system_python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'

status=0
lint_dirs=()
for d in src tests bench fuzz; do
  if [[ -d $d ]]; then lint_dirs+=("$d"); fi
done
echo "test.sh: ruff check ${lint_dirs[*]}"
if ! "$venv/bin/ruff" check "${lint_dirs[@]}"; then
  echo "test.sh: ruff failed" >&2
  status=1
fi

reports="$(mktemp -d "${TMPDIR:-/tmp}/usbnetd-test.XXXXXX")"
failed_layers=()
for layer in tests/unit tests/integration tests/vm; do
  if [[ ! -d $layer ]]; then
    echo "test.sh: $layer: no such directory, skipped"
    continue
  fi
  name="$(basename "$layer")"
  echo "test.sh: pytest $layer"
  rc=0
  "$venv/bin/python" -m pytest "$layer" --junitxml="$reports/$name.xml" "$@" || rc=$?
  case $rc in
    0) ;;
    5) echo "test.sh: $layer: no tests collected (not a failure)" ;;
    *) echo "test.sh: $layer: pytest exit $rc" >&2; failed_layers+=("$layer"); status=1 ;;
  esac
done

# One closing line over all layers, counted from the junit reports.
"$venv/bin/python" - "$reports" "${failed_layers[*]:-}" <<'EOF'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

counts = {"passed": 0, "failed": 0, "skipped": 0}
for xml in sorted(Path(sys.argv[1]).glob("*.xml")):
    for case in ET.parse(xml).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            counts["failed"] += 1
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
if sys.argv[2]:
    print(f"test.sh: failed layers: {sys.argv[2]}")
print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
EOF
rm -rf "$reports"
exit $status
