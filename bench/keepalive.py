#!/usr/bin/env python3
"""Small answers on a kept-alive connection: the agent sets TCP_NODELAY on accepted sockets, so a keep-alive client
does not wait out its delayed ACK (~40 ms) on every small response.

On the gpu_server fixture (tests/sysfs_fixtures.py), the agent in its own process
(``passthru serve --listen 127.0.0.1:0``): --requests ``GET /health`` on ONE kept-alive connection, and the
baseline measured in the same run against the same server: the same requests each on a NEW connection (no
delayed-ACK interaction, but a TCP handshake each). Prints the medians and the ratio keep-alive / new; with
TCP_NODELAY missing the ratio is ~10x or more (the test suite's former "median under 25 ms" assert).
Usage: python bench/keepalive.py [--requests 201]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import sysfs_fixtures  # noqa: E402
from agent import start_agent  # noqa: E402  (bench/agent.py)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=201)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_keepalive_") as work:
        root = sysfs_fixtures.gpu_server(os.path.join(work, "host"))
        proc, port, token = start_agent([sys.executable, "-m", "passthru"], str(root))
        try:
            def one(conn: http.client.HTTPConnection) -> float:
                t = time.perf_counter()
                conn.request("GET", "/health")
                r = conn.getresponse()
                r.read()
                assert r.status == 200, r.status
                return time.perf_counter() - t

            kept = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            keep = [one(kept) for _ in range(args.requests)][1:]  # the first pays the handshake
            kept.close()
            fresh = []
            for _ in range(args.requests - 1):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                fresh.append(one(c))
                c.close()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    k, f = statistics.median(keep), statistics.median(fresh)
    print(f"GET /health, kept-alive connection: median {k * 1000:.2f} ms of {len(keep)}")
    print(f"baseline, a new connection each:    median {f * 1000:.2f} ms of {len(fresh)}")
    print(f"ratio keep-alive / new: {k / f:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
