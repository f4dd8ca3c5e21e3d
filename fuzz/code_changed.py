"""Which functions of a native module compile differently between two revisions, as the fuzz campaign builds it.

A fuzz count under ASan+UBSan (docs/reliability.md) belongs to the code it ran on. When a change to a C file
touches one function, the other functions' counts still hold if their machine code is the same: this compares
the two revisions' assembly, built exactly as `fuzz/native_asan.sh` builds it (gcc -fsanitize=address,undefined
-O1, each revision in its own directory under the same relative path, so file names in the sanitizers' data
match), function by function. Labels that only number things (.L123, .Lubsan_data45, .LC7, .LFB12) are normalised,
and so are the source lines in ASan's stack-frame descriptions; a .LC constant is compared by its contents.

    python fuzz/code_changed.py [--base REV] [--head REV] src/usbnetd/native/_fastpath.c
    (--head defaults to the working tree, --base to HEAD)

Prints every function whose code differs, or "none", and exits 0; 2 for a build that fails.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import sysconfig
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g0", "-O1", "-fno-omit-frame-pointer",
         "-std=c11", "-fPIC"]


def assemble(rev: str | None, path: str, out: str) -> None:
    """`path` as of `rev` (None: the working tree), with the headers beside it, compiled to assembly in `out`."""
    with tempfile.TemporaryDirectory(prefix="code-changed-") as tree:
        folder = os.path.dirname(path)
        if rev is None:
            os.makedirs(os.path.join(tree, os.path.dirname(folder)), exist_ok=True)
            subprocess.run(["cp", "-r", os.path.join(REPO, folder), os.path.join(tree, folder)], check=True)
        else:
            archive = subprocess.run(["git", "-C", REPO, "archive", rev, folder], check=True, capture_output=True)
            subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
        include = sysconfig.get_paths()["include"]
        subprocess.run([os.environ.get("CC", "gcc"), *FLAGS, f"-I{include}", "-S", path, "-o", out], cwd=tree,
                       check=True)


def functions(asm: str) -> dict[str, list[str]]:
    lines = asm.splitlines()
    constants: dict[str, str] = {}
    label = None
    for line in lines:
        m = re.match(r"^(\.LC\d+):$", line)
        if m:
            label = m.group(1)
            constants[label] = ""
        elif label and line.startswith("\t.") and not line.startswith(("\t.section", "\t.text", "\t.align")):
            text = line.strip()
            if re.match(r'\.string\t"\d+ \d+ \d+ ', text):
                # ASan's description of a function's stack frame names each variable with its source line
                # ("2 48 16 2 ts 80 48 5 r:815"): a line moved by an edit elsewhere is not a code change
                text = re.sub(r':\d+(?=[ "])', ":N", text)
            constants[label] += text + "|"
        else:
            label = None
    names = set(re.findall(r"^\t\.type\t([\w.]+), @function$", asm, re.M))
    out: dict[str, list[str]] = {}
    current = None
    for line in lines:
        m = re.match(r"^([\w.]+):$", line)
        if m and m.group(1) in names:
            current = m.group(1)
            out[current] = []
            continue
        if current is None:
            continue
        if line.startswith(f"\t.size\t{current},"):
            current = None
            continue
        line = re.sub(r"\.LC\d+", lambda c: f"LC[{constants.get(c.group(0), '?')}]", line)
        line = re.sub(r"\.L(ubsan_data|ubsan_type|ASAN\w*?|FB|FE)?\d+", r".L\1", line)  # FB/FE: function begin/end
        out[current].append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="HEAD")
    ap.add_argument("--head", default=None, help="a revision (default: the working tree)")
    ap.add_argument("path", help="the C file, relative to the repository")
    ns = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, "base.s"), os.path.join(tmp, "head.s")
        try:
            assemble(ns.base, ns.path, a)
            assemble(ns.head, ns.path, b)
        except subprocess.CalledProcessError as exc:
            print(f"code_changed: {' '.join(map(str, exc.cmd[:3]))}... failed (exit {exc.returncode})",
                  file=sys.stderr)
            return 2
        fa, fb = functions(open(a).read()), functions(open(b).read())
    changed = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
    print(f"{ns.path}: {len(fb)} functions at {ns.head or 'the working tree'}, {len(fa)} at {ns.base}")
    print("changed: " + (", ".join(changed) if changed else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
