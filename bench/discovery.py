#!/usr/bin/env python3
"""Discovery speed: whole-process `passthru devices --json --root T` against lspci on the same tree.

Baseline: `lspci -A linux-sysfs -O sysfs.path=T/sys/bus/pci -nnk` (pciutils reading the same sysfs tree, with names
and drivers), measured in the same run, alternating, median of N runs each. Prints the ratio passthru/lspci
(target <= 1.0). Usage: python bench/discovery.py [--functions 4096] [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from sysfs_fixtures import big_tree  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    out = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, check=True)
    return time.perf_counter() - t0, out.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--functions", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    lspci = shutil.which("lspci")
    if not lspci:
        print("bench/discovery.py: lspci not found; apt-get install pciutils", file=sys.stderr)
        return 2
    passthru = [sys.executable, "-m", "passthru"]
    exe = os.path.join(os.path.dirname(sys.executable), "passthru")
    if os.path.exists(exe):
        passthru = [exe]
    with tempfile.TemporaryDirectory(prefix="passthru-bench-") as tmp:
        t0 = time.perf_counter()
        big_tree(tmp, n=args.functions)
        build_s = time.perf_counter() - t0
        env = dict(os.environ, PASSTHRU_ROOT=tmp)
        env.pop("PASSTHRU_CONFIG_DIR", None)
        ours = passthru + ["devices", "--json"]
        theirs = [lspci, "-A", "linux-sysfs", "-O", f"sysfs.path={tmp}/sys/bus/pci", "-nnk"]
        # correctness first: both see every function
        _, out = timed(ours, env)
        n_ours = sum(1 for d in json.loads(out)["devices"] if d["bus"] == "pci")
        _, out = timed(theirs, env)
        n_theirs = sum(1 for line in out.decode().splitlines() if line and not line[0].isspace())
        if n_ours != n_theirs:
            print(f"mismatch: passthru saw {n_ours} functions, lspci {n_theirs}", file=sys.stderr)
            return 1
        a, b = [], []
        for _ in range(args.runs):
            a.append(timed(ours, env)[0])
            b.append(timed(theirs, env)[0])
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"tree: {n_ours} PCI functions (built in {build_s:.1f} s)")
    print(f"passthru devices --json : median {ma * 1000:7.1f} ms over {args.runs} runs")
    print(f"lspci -nnk (baseline)   : median {mb * 1000:7.1f} ms over {args.runs} runs")
    print(f"ratio passthru/lspci    : {ma / mb:.2f}x  (target <= 1.00x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
