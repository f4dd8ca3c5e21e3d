#!/usr/bin/env bash
# Fuzz usbnetd's decoders with atheris (see fuzz/fuzz.py and fuzz/targets.py).
#
#   fuzz/run.sh short [N]          every target, N inputs each (default 20000); what CI's test_fuzz_short does
#   fuzz/run.sh long [N]           every target, N inputs each (default 10,000,000), under nice -n 19;
#                                  logs in fuzz/logs/<target>.log, a summary line per target at the end
#   fuzz/run.sh TARGET [ARGS...]   one target with libFuzzer arguments (-runs=N, -max_total_time=S, a crash file)
#
# Environment: USBNETD_VENV (default <repo>/.venv) for the Python with atheris and usbnetd installed;
# FUZZ_JOBS (default 1) targets run at once in `long`; FUZZ_MAX_TIME (seconds, default none) caps each target.
# Exit status: non-zero when any target crashed (the crash input is in fuzz/artifacts/<target>/).
# Do not pause a run (SIGSTOP): libFuzzer's per-input timeout is wall-clock, so the input it was working on
# is reported as a timeout when it resumes (seen on 2026-11-21; such an input replays in 0 ms).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="${USBNETD_VENV:-$repo/.venv}"
python="$venv/bin/python"
[[ -x $python ]] || python=python3

mode="${1:-short}"
shift || true

run_all() {
  local runs=$1 niceness=$2 jobs=${FUZZ_JOBS:-1} status=0
  local -a extra=()
  [[ -n ${FUZZ_MAX_TIME:-} ]] && extra+=("-max_total_time=$FUZZ_MAX_TIME")
  mkdir -p "$here/logs"
  local -a targets
  mapfile -t targets < <("$python" "$here/fuzz.py" list)
  local -a pids=()
  for t in "${targets[@]}"; do
    while (( $(jobs -rp | wc -l) >= jobs )); do wait -n || status=1; done
    echo "fuzz: $t: $runs inputs (log fuzz/logs/$t.log)"
    nice -n "$niceness" "$python" "$here/fuzz.py" "$t" "-runs=$runs" -print_final_stats=1 "${extra[@]}" \
      >"$here/logs/$t.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  for t in "${targets[@]}"; do
    local log="$here/logs/$t.log" n secs
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    if grep -q "Test unit written to" "$log"; then
      echo "fuzz: $t: CRASH after ${n:-?} inputs: $(grep -m1 'Test unit written to' "$log")"
      status=1
    elif [[ -z $n ]]; then
      # no final stats: the fuzzer never ran (no atheris, an import error) or was killed
      echo "fuzz: $t: did not run to the end: $(grep -m1 -E 'Error|error' "$log" || tail -1 "$log")"
      status=1
    else
      echo "fuzz: $t: ${n:-?} inputs in ${secs:-?} s, no crash"
    fi
  done
  return $status
}

case $mode in
  short) run_all "${1:-20000}" 0 ;;
  long) run_all "${1:-10000000}" 19 ;;
  *) exec "$python" "$here/fuzz.py" "$mode" "$@" ;;
esac
