#!/usr/bin/env bash
# usbnetd's benchmark (issue 6, measurement half). As root on Debian 12:
#   bench/run.sh [native|vm|all|profile] [extra args for the Python runner]
#     native   usbnetd sim:ncm / sim:ecm between two network namespaces, and a veth reference (~1.5 min)
#     vm       usbnetd vs the kernel host driver on the NCM and ECM gadgets in the QEMU guest (~2.5 min)
#     all      native, then vm (the default)
#     profile  py-spy on sim:ncm during a TCP stream each way (~1 min; not part of "all")
# Uses the project venv (${USBNETD_VENV:-<repo>/.venv}, created with scripts/install.sh when missing) and
# installs iperf3 (and iproute2, iputils-ping) from apt when missing. Prints the tables and writes JSON to
# ${USBNETD_BENCH_OUT:-<repo>/bench/results}/<mode>-<timestamp>.json (paths printed; bench/report.py renders
# them again, e.g. as Markdown for docs/performance.md). The issue's bars are PASS/FAIL labels only:
# the exit status is 0 unless the benchmark itself broke.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${USBNETD_VENV:-$repo/.venv}"
mode="${1:-all}"
[[ $# -gt 0 ]] && shift
case $mode in
  native|vm|all|profile) ;;
  *) echo "usage: bench/run.sh [native|vm|all|profile] [args...]" >&2; exit 2 ;;
esac
if [[ $(id -u) -ne 0 ]]; then
  echo "bench/run.sh: needs root (network namespaces, /dev/net/tun, the VM bench)" >&2
  exit 2
fi

missing=()
for p in iperf3 iproute2 iputils-ping util-linux; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bench/run.sh: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import usbnetd' 2>/dev/null; then
  echo "bench/run.sh: setting up the venv $venv (scripts/install.sh)"
  USBNETD_VENV="$venv" scripts/install.sh >/dev/null
fi
py="$venv/bin/python"
if [[ $mode == profile ]] && [[ ! -x "$venv/bin/py-spy" ]]; then
  echo "bench/run.sh: installing py-spy into $venv"
  "$py" -m pip install -q --disable-pip-version-check py-spy
fi

out="${USBNETD_BENCH_OUT:-$repo/bench/results}"
mkdir -p "$out"
stamp="$(date -u +%Y%m%d-%H%M%S)"
status=0
run_mode() {
  local m=$1; shift
  local t0=$SECONDS rc=0
  case $m in
    native) "$py" bench/native.py --json "$out/native-$stamp.json" "$@" || rc=$? ;;
    vm) "$py" bench/vm.py --json "$out/vm-$stamp.json" "$@" || rc=$? ;;
    profile)
      mkdir -p "$out/profile-$stamp"
      "$py" bench/native.py --profile 10 --json "$out/profile-$stamp/profile.json" "$@" || rc=$? ;;
  esac
  echo "bench/run.sh: $m finished in $((SECONDS - t0)) s (exit $rc)"
  if ((rc != 0)); then status=1; fi
}
case $mode in
  all) run_mode native "$@"; run_mode vm "$@" ;;
  *) run_mode "$mode" "$@" ;;
esac
exit $status
