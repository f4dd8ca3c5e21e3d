#!/usr/bin/env bash
# Install what usbnetd needs on a Debian machine (run as root): libusb and iproute2 from apt, and gcc with the
# Python headers for the C fast path (only what is missing; nothing installed is upgraded), a venv with usbnetd and its Python dependencies, and the command
# `usbnetd` on PATH as /usr/local/bin/usbnetd (a link to the venv's; an existing one that points elsewhere is
# left alone). Idempotent; prints the venv's path on its last line. The steps are scripts/lib.sh's.
#   USBNETD_VENV    where the venv goes (default: <repo>/.venv)
#   USBNETD_EXTRAS  pip extras to install, e.g. "test" (default: none)
#   USBNETD_LINK    where to link the command (default /usr/local/bin/usbnetd; empty: no link)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
venv=${USBNETD_VENV:-$usbnetd_repo/.venv}
usbnetd_apt_install install.sh libusb-1.0-0 iproute2 python3-venv gcc python3-dev
usbnetd_venv install.sh "$venv" "${USBNETD_EXTRAS:-}"
usbnetd_link install.sh "$venv"
echo "$venv"
