#!/usr/bin/env bash
# The native-ncm-rx differential fuzz target (fuzz/native_ncm.py) against a build of usbnetd.native._fastpath
# with AddressSanitizer and UndefinedBehaviorSanitizer, separate from the package's own build.
#
# Build: gcc -fsanitize=address,undefined -fno-sanitize-recover=all -g -O1 into build/native-asan/ (git-ignored).
# The Python interpreter is not instrumented, so the ASan runtime is preloaded (LD_PRELOAD, from
# `gcc -print-file-name`), with libubsan; detect_leaks=0 because CPython keeps allocations until exit by
# design; PYTHONMALLOC=malloc so the transfer buffers are plain malloc blocks ASan guards (pymalloc would hide
# small overruns inside its arenas). Any sanitizer report aborts the run, and the input it was checking is
# left in build/native-asan/last-input; any difference from the Python reference is a crash too (the engine
# writes it to fuzz/artifacts/native-ncm-rx/).
#
# Engine: fuzz.py's mutation engine (`native_ncm.py --engine=random`), whose parents are our seeds plus the
# corpus the coverage-guided run grew (fuzz/corpus/native-ncm-rx/, or the directories given). Not atheris:
# gcc's preloaded ASan runtime brings weak default __sanitizer_cov_* symbols that take the place of atheris's
# libFuzzer ones, so libFuzzer would see no coverage at all and drop every seed but an empty input. So first
# grow the corpus without sanitizers (coverage-guided: python fuzz/native_ncm.py -runs=3000000), then mutate
# it here. (atheris's own way, clang and its asan_with_fuzzer.so, keeps coverage under ASan.)
#
#   fuzz/native_asan.sh -runs=1000000 [-seed=S] [-max_total_time=S] [CORPUS_DIR ...]
#   fuzz/native_asan.sh fuzz/artifacts/native-ncm-rx/crash-…     replay inputs under the sanitizers
#   fuzz/native_asan.sh -workers=2 -runs=N -seed=S [...]          N inputs in all, split over 2 processes
#     (seeds S, S+1, ...; last inputs in last-input.0, .1, ...; a failing worker fails the run)
#   fuzz/native_asan.sh --tx [the same options]                   the native-ncm-tx target instead
#     (fuzz/native_ncm_tx.py against an ASan+UBSan build of _fasttx.c; corpus fuzz/corpus/native-ncm-tx/,
#     input being checked in build/native-asan/last-input-tx, differences in fuzz/artifacts/native-ncm-tx/)
#   fuzz/native_asan.sh --usb [the same options]                  the native-usb-rx target (fuzz/native_usb.py:
#     NcmRx's C completions usb_arm/usb_end/usb_disarm on libusb transfer structs; last-input-usb)
#   fuzz/native_asan.sh --frametx [the same options]              the native-frame-tx target (fuzz/native_frame_tx.py:
#     the FrameTx pump of _frametx.c, ECM/subset TX; last-input-frametx)
#   fuzz/native_asan.sh --pump [the same options]                 the native-ncm-pump target (fuzz/native_ncm_pump.py:
#     the NcmPump of _fasttx.c, NCM TX into bulk OUT transfers it owns; last-input-pump)
#   fuzz/native_asan.sh --pump -pymalloc [the same options]       Python's own allocator instead of PYTHONMALLOC=malloc:
#     1.4-1.9 times the inputs a second. Every buffer a target hands the C code stays checked as before (exact-size
#     buffers ending at a PROT_NONE page, poisoned tails, the C code's own heap blocks under ASan); what is given
#     up is ASan on Python's small objects (512 bytes or less, in pymalloc's arenas): a C overrun of a small
#     object it made, or a use of one after its last reference went (a reference-counting error), is then no
#     longer a sanitizer report at once (docs/reliability.md, "The C fast path under ASan+UBSan").
# Environment: USBNETD_VENV (default <repo>/.venv), CC (default gcc).
set -euo pipefail

target=native-ncm-rx source=_fastpath script=native_ncm.py so_env=USBNETD_NATIVE_SO last=last-input
case ${1:-} in
  --tx)
    shift
    target=native-ncm-tx source=_fasttx script=native_ncm_tx.py so_env=USBNETD_NATIVE_TX_SO last=last-input-tx ;;
  --usb)
    shift
    target=native-usb-rx source=_fastpath script=native_usb.py so_env=USBNETD_NATIVE_SO last=last-input-usb ;;
  --frametx)
    shift
    target=native-frame-tx source=_frametx script=native_frame_tx.py so_env=USBNETD_NATIVE_FRAMETX_SO \
      last=last-input-frametx ;;
  --pump)
    shift
    target=native-ncm-pump source=_fasttx script=native_ncm_pump.py so_env=USBNETD_NATIVE_TX_SO last=last-input-pump ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="${USBNETD_VENV:-$repo/.venv}"
python="$venv/bin/python"
[[ -x $python ]] || python=python3
cc="${CC:-gcc}"
build="$repo/build/native-asan"

include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
so="$build/$source$suffix"
mkdir -p "$build"
# built to a temporary name and renamed: a run already using the .so keeps its copy (two runs at once)
"$cc" -fsanitize=address,undefined -fno-sanitize-recover=all -g -O1 -fno-omit-frame-pointer \
  -std=c11 -Wall -Wextra -Wno-missing-field-initializers -fPIC -shared -I"$include" \
  "$repo/src/usbnetd/native/$source.c" -o "$so.$$.tmp"
mv -f "$so.$$.tmp" "$so"

asan=$("$cc" -print-file-name=libasan.so)
ubsan=$("$cc" -print-file-name=libubsan.so)
for lib in "$asan" "$ubsan"; do
  [[ -e $lib ]] || { echo "native_asan.sh: $cc has no $(basename "$lib") (install its sanitizer runtimes)" >&2; exit 1; }
done

export LD_PRELOAD="$asan:$ubsan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export "$so_env=$so"
args=()
workers=1 runs=100000 seed=1 pymalloc=0
for a in "$@"; do
  case $a in
    -workers=*) workers=${a#-workers=} ;;
    -runs=*) runs=${a#-runs=} ;;
    -seed=*) seed=${a#-seed=} ;;
    -pymalloc) pymalloc=1 ;;
    *) args+=("$a") ;;
  esac
done
if (( pymalloc )); then
  unset PYTHONMALLOC
else
  export PYTHONMALLOC=malloc
fi
echo "native_asan.sh: $so (ASan+UBSan), LD_PRELOAD=$LD_PRELOAD, PYTHONMALLOC=${PYTHONMALLOC:-pymalloc}" >&2
have_path=0
for a in "${args[@]}"; do [[ $a == -* ]] || have_path=1; done
if (( ! have_path )) && [[ -d $here/corpus/$target ]]; then
  args+=("$here/corpus/$target")
fi
if (( workers <= 1 )); then
  export USBNETD_FUZZ_LAST_INPUT="$build/$last"
  status=0
  "$python" "$here/$script" --engine=random "-runs=$runs" "-seed=$seed" "${args[@]}" || status=$?
  if (( status != 0 )); then
    echo "native_asan.sh: exit $status; the input being checked is in $USBNETD_FUZZ_LAST_INPUT" >&2
  fi
  exit $status
fi
# N processes with seeds S..S+N-1, the runs split between them (the machine's cores, not more)
pids=()
for ((k = 0; k < workers; k++)); do
  share=$(( runs / workers + (k < runs % workers ? 1 : 0) ))
  USBNETD_FUZZ_LAST_INPUT="$build/$last.$k" \
    "$python" "$here/$script" --engine=random "-runs=$share" "-seed=$((seed + k))" "${args[@]}" &
  pids+=($!)
done
status=0
for ((k = 0; k < workers; k++)); do
  s=0
  wait "${pids[k]}" || s=$?
  if (( s != 0 )); then
    echo "native_asan.sh: worker $k exit $s; the input being checked is in $build/$last.$k" >&2
    status=$s
  fi
done
exit $status
