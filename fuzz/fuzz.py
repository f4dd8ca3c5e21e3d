"""Coverage-guided fuzzing of usbnetd's decoders with atheris (libFuzzer for Python).

    python fuzz/fuzz.py TARGET [libFuzzer options] [CORPUS_DIR ...]
    python fuzz/fuzz.py list
    python fuzz/fuzz.py TARGET --engine=random -runs=N [-seed=S]      # no atheris: our own mutation fuzzer

TARGET is one of `fuzz/targets.py`'s TARGETS (ncm16, ncm32, rndis-control, rndis-data, eem, cdc-functional,
config, notifications, ax88179, r8152, ipheth). Without a corpus directory, fuzz/corpus/TARGET is used; an
empty or new corpus directory is first seeded with valid inputs from our builders. Crashes (any contract violation, see
targets.py) are written to fuzz/artifacts/TARGET/ unless -artifact_prefix says otherwise; reproduce one
with `python fuzz/fuzz.py TARGET fuzz/artifacts/TARGET/crash-...`.

The usual libFuzzer options apply: -runs=N, -max_total_time=S, -max_len=N, -jobs/-workers, -seed=S.
libFuzzer ends with `Done N runs in S second(s)` (and `stat::number_of_executed_units: N` with
-print_final_stats=1); the random engine ends with `fuzz: TARGET: N inputs in S s (R/s), K crashes`.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

_count = 0
_started = time.monotonic()


def _summary(target: str, crashes: int) -> None:
    elapsed = time.monotonic() - _started
    rate = _count / elapsed if elapsed > 0 else 0.0
    print(f"fuzz: {target}: {_count} inputs in {elapsed:.1f} s ({rate:.0f}/s), {crashes} crashes",
          file=sys.stderr, flush=True)


def _seed_dir(path: str, seeds: list[bytes]) -> str:
    os.makedirs(path, exist_ok=True)
    for s in seeds:
        name = hashlib.sha1(s).hexdigest()
        p = os.path.join(path, name)
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(s)
    return path


def _mutate(rnd: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One to four havoc-style mutations (the fallback engine)."""
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(9)
        if op == 0 and b:  # flip a bit
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
        elif op == 1 and b:  # set a byte to an interesting value
            b[rnd.randrange(len(b))] = rnd.choice((0, 1, 2, 3, 4, 7, 8, 12, 14, 16, 0x7F, 0x80, 0xFE, 0xFF))
        elif op == 2 and len(b) >= 2:  # set a little-endian 16/32-bit field
            width = rnd.choice((2, 4))
            i = rnd.randrange(max(1, len(b) - width + 1))
            v = rnd.choice((0, 1, 8, 12, 14, 16, 32, 44, 0x7FFF, 0xFFFF, 0xFFFFFFFF, len(b), len(b) + 1,
                            len(b) - 1, rnd.randrange(len(b) + 64)))
            b[i : i + width] = (v & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        elif op == 3 and b:  # truncate
            del b[rnd.randrange(len(b)) :]
        elif op == 4:  # insert random bytes
            i = rnd.randrange(len(b) + 1)
            b[i:i] = rnd.randbytes(rnd.randint(1, 16))
        elif op == 5 and b:  # delete a run
            i = rnd.randrange(len(b))
            del b[i : i + rnd.randint(1, 16)]
        elif op == 6 and pool:  # splice with another input
            other = rnd.choice(pool)
            i = rnd.randrange(len(b) + 1)
            j = rnd.randrange(len(other) + 1)
            b = b[:i] + other[j:]
        elif op == 7 and b:  # duplicate a run
            i = rnd.randrange(len(b))
            b[i:i] = b[i : i + rnd.randint(1, 64)]
        elif op == 8:  # random bytes from scratch, rarely
            b = bytearray(rnd.randbytes(rnd.randint(0, 64)))
    return bytes(b)


def _random_engine(target: str, check, seeds: list[bytes], args: list[str]) -> int:
    opts = dict(a[1:].split("=", 1) for a in args if a.startswith("-") and "=" in a)
    runs = int(opts.get("runs", "100000"))
    seed = int(opts.get("seed", "1"))
    max_time = float(opts.get("max_total_time", "0"))
    rnd = random.Random(seed)
    pool = list(seeds) or [b""]
    global _count
    for s in pool:
        check(s)
        _count += 1
    deadline = time.monotonic() + max_time if max_time else None
    while _count < runs and (deadline is None or time.monotonic() < deadline):
        data = _mutate(rnd, rnd.choice(pool), pool)
        try:
            check(data)
        except Exception:
            crash = os.path.join(HERE, "artifacts", target, "crash-" + hashlib.sha1(data).hexdigest())
            os.makedirs(os.path.dirname(crash), exist_ok=True)
            with open(crash, "wb") as f:
                f.write(data)
            print(f"fuzz: {target}: crash on input {_count}, written to {crash}", file=sys.stderr)
            _count += 1
            _summary(target, 1)
            raise
        _count += 1
        if len(pool) < 256 and rnd.random() < 0.01:
            pool.append(data)  # keep a few mutants as parents (no coverage feedback in this engine)
    _summary(target, 0)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    engine = "atheris"
    args = []
    for a in argv[2:]:
        if a.startswith("--engine="):
            engine = a.split("=", 1)[1]
        else:
            args.append(a)
    target = argv[1]
    if target == "list":
        import targets

        print("\n".join(targets.TARGETS))
        return 0

    if engine == "random":
        import targets

        if target not in targets.TARGETS:
            print(f"fuzz: unknown target {target!r} (see: fuzz.py list)", file=sys.stderr)
            return 2
        check, seeds = targets.TARGETS[target]
        return _random_engine(target, check, seeds(), args)

    import atheris

    with atheris.instrument_imports(include=["usbnetd"]):
        import targets
    if target not in targets.TARGETS:
        print(f"fuzz: unknown target {target!r} (see: fuzz.py list)", file=sys.stderr)
        return 2
    check, seeds = targets.TARGETS[target]

    dirs = [a for a in args if not a.startswith("-")]
    if not dirs:
        args.append(_seed_dir(os.path.join(HERE, "corpus", target), seeds()))
    for d in dirs:  # an empty or new corpus directory is seeded; a crash file given to reproduce is left alone
        if not os.path.isfile(d) and not (os.path.isdir(d) and os.listdir(d)):
            _seed_dir(d, seeds())
    if not any(a.startswith("-artifact_prefix=") for a in args):
        art = os.path.join(HERE, "artifacts", target)
        os.makedirs(art, exist_ok=True)
        args.insert(0, f"-artifact_prefix={art}/")
    if not any(a.startswith("-max_len=") for a in args):
        args.insert(0, "-max_len=8192")

    atheris.Setup([argv[0], *args], check)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
