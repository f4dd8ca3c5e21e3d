#!/usr/bin/env bash
# The project's test command (see docs/testing.md). On a fresh Debian 12 machine, as root:
#   1. installs the Debian packages the tests need that are missing (apt-get update once, only then; a
#      package already installed is never upgraded, see scripts/lib.sh);
#   2. creates a venv at ${USBNETD_VENV:-<repo>/.venv} with /usr/bin/python3 when missing, installs '.[test]'
#      into it (skipped when nothing it depends on changed), and links /usr/local/bin/usbnetd to the venv's
#      command when that path is free (USBNETD_LINK moves it, empty skips it);
#   3. unpacks node_exporter (Debian's prometheus-node-exporter) into a cache, without installing it or
#      starting its service, for the test that reads `usbnetd stats --prometheus` with it;
#   4. runs ruff over src, tests, bench and fuzz (those that exist);
#   5. runs pytest over tests/unit, tests/core, tests/integration and tests/vm, one layer at a time.
# Exits non-zero if ruff or any layer fails. A layer with no tests (pytest exit 5) is not a failure.
# Extra arguments are passed to every pytest run (e.g. scripts/test.sh -x -k ncm).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source "$repo/scripts/lib.sh"
venv="${USBNETD_VENV:-$repo/.venv}"

# python3-venv for the venv; iproute2/iputils-ping/iperf3 for the integration layer; the rest for the
# VM layer (tests/vm/harness.py checks again and installs what is missing, for runs without this script);
# systemd (systemd-analyze, systemd-escape) and udev (udevadm, systemd-udevd) for the unit and rules tests;
# ethtool for the offload checks; gcc and python3-dev so that pip builds the C extension (usbnetd.native),
# which CI requires (tests/unit/test_native_ncm_rx.py); network-manager and dnsmasq-base (systemd has
# systemd-networkd) for the plug-and-play tests, which run NetworkManager, networkd, dnsmasq and a D-Bus
# system bus inside the VM guest only (tests/vm/guest/test_networkmanager.py, test_networkd.py): the install
# starts no service here (policy-rc.d, scripts/lib.sh) and NetworkManager is disabled after it; tshark reads
# `usbnetd trace` output back (tests/integration/test_trace.py). README.md and docs/testing.md list the same
# packages.
apt_packages=(python3 python3-venv iproute2 iputils-ping iperf3 qemu-system-x86 busybox-static cpio kmod
  libusb-1.0-0 xz-utils zstd usbutils systemd udev ethtool gcc python3-dev network-manager dnsmasq-base tshark)

missing_before=$(usbnetd_missing_packages "${apt_packages[@]}")
if ! usbnetd_apt_install test.sh "${apt_packages[@]}"; then
  echo "test.sh: WARNING: continuing without: $(usbnetd_missing_packages "${apt_packages[@]}" | tr '\n' ' ')" >&2
fi
usbnetd_keep_disabled test.sh "$missing_before" network-manager NetworkManager.service \
  NetworkManager-wait-online.service NetworkManager-dispatcher.service

# The VM guest runs this venv's python through a read-only view of the host's /, so the venv must not
# live on a path the guest replaces (it does not mount anything over /tmp, /root or the repo).
usbnetd_venv test.sh "$venv" test
usbnetd_link test.sh "$venv"

# node_exporter for tests/integration/test_cli_scripts.py: unpacked, not installed (installing the package
# would start a node_exporter service on this machine, listening on port 9100).
node_exporter_dir="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/usbnetd-test/prometheus-node-exporter"
if usbnetd_unpack_deb test.sh prometheus-node-exporter "$node_exporter_dir"; then
  export USBNETD_NODE_EXPORTER="$node_exporter_dir/usr/bin/prometheus-node-exporter"
else
  echo "test.sh: WARNING: no node_exporter; its test will be skipped" >&2
fi

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
for layer in tests/unit tests/core tests/integration tests/vm; do
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
