#!/usr/bin/env python3
"""Topology picture speed: whole-process `passthru topology --svg F` and `--html F` on a 4096-function tree, against
`passthru devices --json` on the same tree (the baseline: discovery and a JSON listing of the same host).

All three are measured in the same run, alternating, median of N runs each. Prints the times, the ratios to the
baseline and whether the picture is under the 2 s goal. Usage:
    TMPDIR=/dev/shm python bench/topology.py [--functions 4096] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from sysfs_fixtures import big_tree  # noqa: E402

from discovery import timed  # noqa: E402  (bench/discovery.py: a whole process, timed)

GOAL_S = 2.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--functions", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    passthru = [sys.executable, "-m", "passthru"]  # this interpreter, this checkout (PYTHONPATH is honoured)
    with tempfile.TemporaryDirectory(prefix="passthru-bench-") as tmp:
        t0 = time.perf_counter()
        root = os.path.join(tmp, "host")
        big_tree(root, n=args.functions)
        build_s = time.perf_counter() - t0
        env = dict(os.environ, PASSTHRU_ROOT=root)
        env.pop("PASSTHRU_CONFIG_DIR", None)
        env.pop("PASSTHRU_STATE_DIR", None)
        svg, page = os.path.join(tmp, "t.svg"), os.path.join(tmp, "t.html")
        runs = {
            "passthru devices --json (baseline)": passthru + ["devices", "--json"],
            "passthru topology --svg F": passthru + ["topology", "--svg", svg],
            "passthru topology --html F": passthru + ["topology", "--html", page],
        }
        # correctness first: the baseline lists every function, the pictures draw every one
        _, out = timed(runs["passthru devices --json (baseline)"], env)
        n = sum(1 for d in json.loads(out)["devices"] if d["bus"] == "pci")
        for argv in list(runs.values())[1:]:
            timed(argv, env)
        for path in (svg, page):
            with open(path, encoding="utf-8") as f:
                drawn = f.read().count('class="function"')
            if drawn != n:
                print(f"mismatch: {os.path.basename(path)} draws {drawn} functions, the host has {n}", file=sys.stderr)
                return 1
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.runs):
            for name, argv in runs.items():
                times[name].append(timed(argv, env)[0])
        sizes = {name: os.path.getsize(p) for name, p in (("svg", svg), ("html", page))}
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["passthru devices --json (baseline)"]
    print(f"tree: {n} PCI functions (built in {build_s:.1f} s); SVG {sizes['svg'] / 1e6:.1f} MB, "
          f"HTML {sizes['html'] / 1e6:.1f} MB")
    for name, m in med.items():
        spread = f"{min(times[name]) * 1000:.0f}-{max(times[name]) * 1000:.0f}"
        print(f"{name:36}: median {m * 1000:7.1f} ms ({spread} ms) over {args.runs} runs, "
              f"{m / base:.2f}x the baseline")
    worst = max(med["passthru topology --svg F"], med["passthru topology --html F"])
    print(f"goal: the picture in under {GOAL_S:.0f} s: {'met' if worst < GOAL_S else 'NOT met'} ({worst:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
