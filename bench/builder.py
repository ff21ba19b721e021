#!/usr/bin/env python3
"""Fixture builder speed: tests/sysfs_builder.py's 4096-function tree (tests/sysfs_fixtures.py make_big_tree).

Baseline, measured in the same run on the same filesystem: copying the finished tree with
``shutil.copytree(symlinks=True)`` (the same files, directories and symlinks, written by the same Python, without
the builder's own work). Prints the median of --runs for each and the ratio builder / copy.
(This was the test suite's ``elapsed < 15`` s assert in test_big_tree_4096_functions.)
Usage: TMPDIR=/dev/shm python bench/builder.py [--functions 4096] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import sysfs_fixtures  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--functions", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    build, copy = [], []
    work = tempfile.mkdtemp(prefix="bench_builder_")
    try:
        for i in range(args.runs):
            t0 = time.perf_counter()
            sysfs_fixtures.make_big_tree(os.path.join(work, f"b{i}"), args.functions)
            build.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            shutil.copytree(os.path.join(work, f"b{i}"), os.path.join(work, f"c{i}"), symlinks=True)
            copy.append(time.perf_counter() - t0)
            shutil.rmtree(os.path.join(work, f"b{i}"))
            shutil.rmtree(os.path.join(work, f"c{i}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    b, c = statistics.median(build), statistics.median(copy)
    print(f"make_big_tree({args.functions}) on {tempfile.gettempdir()}: median {b:.2f}s of {args.runs}")
    print(f"baseline copytree of the same tree:     median {c:.2f}s")
    print(f"ratio builder / copy: {b / c:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
