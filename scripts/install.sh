#!/usr/bin/env bash
# Install what usbnetd needs on a Debian machine (run as root): libusb and iproute2 from apt, then a venv
# with usbnetd and its Python dependencies. Idempotent; prints the venv's path on its last line.
#   USBNETD_VENV  where the venv goes (default: <repo>/.venv)
#   USBNETD_EXTRAS  pip extras to install, e.g. "test" (default: none)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${USBNETD_VENV:-$repo/.venv}
need=()
for pkg in libusb-1.0-0 iproute2 python3-venv; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install.sh: missing Debian packages: ${need[*]} (run as root)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
spec="$repo"
[ -n "${USBNETD_EXTRAS:-}" ] && spec="$repo[${USBNETD_EXTRAS}]"
"$venv/bin/pip" install -q --disable-pip-version-check -e "$spec"
echo "$venv"
