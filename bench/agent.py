#!/usr/bin/env python3
"""Agent speed: `GET /devices` under a steady loopback load, against the 4096-function fixture.

The agent (`passthru serve --listen 127.0.0.1:0`, its own process, bearer token) is loaded open-loop at --rate
requests/s for --duration s by --clients keep-alive connections: request i is due at t0 + i/rate, and its latency is
counted from that due time (a slow answer delays the ones behind it, and that delay is counted, not hidden).

Baselines, measured in the same run against the same server and tree:
- `GET /health` at the same rate (the server, HTTP and the client without the inventory): the floor;
- `passthru devices --json` as a whole process (median of --cli-runs): what a script pays without the agent.

Prints p50/p99 for each and the ratios. Target: p99 of GET /devices < 10 ms.
Usage: python bench/agent.py [--functions 4096] [--rate 200] [--duration 20] [--root DIR (an existing tree)]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def start_agent(passthru: list[str], root: str) -> tuple[subprocess.Popen, int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSTHRU_")}
    p = subprocess.Popen(passthru + ["--root", root, "serve", "--listen", "127.0.0.1:0", "--no-hotplug",
                                     "--log-level", "info"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    while True:
        line = p.stderr.readline()
        if not line:
            raise SystemExit("the agent did not start:\n" + "".join(seen))
        seen.append(line)
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            break
    threading.Thread(target=p.stderr.read, daemon=True).start()
    with open(os.path.join(root, "etc/passthru/token"), encoding="utf-8") as f:
        token = f.read().strip()
    return p, int(m.group(1)), token


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (to report the agent's CPU per request)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def get(conn: http.client.HTTPConnection, path: str, headers: dict) -> bytes:
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise SystemExit(f"GET {path}: {r.status} {body[:200]!r}")
    return body


def load(port: int, token: str, path: str, rate: float, duration: float, clients: int) -> dict:
    """Open-loop load; returns latencies (s) from each request's due time, and service times (send -> body)."""
    headers = {"Authorization": f"Bearer {token}"}
    due: queue.Queue[float | None] = queue.Queue()
    lat: list[float] = []
    service: list[float] = []
    nbytes = [0]
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        get(conn, path, headers)  # connect and warm
        ready.wait()
        while True:
            t_due = due.get()
            if t_due is None:
                break
            now = time.perf_counter()
            if t_due > now:
                time.sleep(t_due - now)
            t_send = time.perf_counter()
            body = get(conn, path, headers)
            t_end = time.perf_counter()
            with lock:
                lat.append(t_end - t_due)
                service.append(t_end - t_send)
                nbytes[0] = len(body)
        conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    n = int(rate * duration)
    t0 = time.perf_counter() + 0.05
    for i in range(n):  # released to the workers a little before each is due
        at = t0 + i / rate
        wait = at - 0.002 - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        due.put(at)
    for _ in threads:
        due.put(None)
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"lat": lat, "service": service, "n": len(lat), "achieved": len(lat) / elapsed, "bytes": nbytes[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--functions", type=int, default=4096)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--cli-runs", type=int, default=5)
    ap.add_argument("--root", help="an existing fixture tree (skips building one)")
    args = ap.parse_args()
    passthru = [sys.executable, "-m", "passthru"]
    exe = os.path.join(os.path.dirname(sys.executable), "passthru")
    if os.path.exists(exe):
        passthru = [exe]
    with tempfile.TemporaryDirectory(prefix="passthru-bench-") as tmp:
        root = args.root
        build_s = 0.0
        if root is None:
            from sysfs_fixtures import big_tree

            t = time.perf_counter()
            root = str(big_tree(os.path.join(tmp, "tree"), n=args.functions))
            build_s = time.perf_counter() - t
        env = {k: v for k, v in os.environ.items() if not k.startswith("PASSTHRU_")}
        env["PASSTHRU_ROOT"] = root
        cli = passthru + ["devices", "--json"]
        out = subprocess.run(cli, env=env, capture_output=True, check=True, timeout=300).stdout
        n_cli = sum(1 for d in json.loads(out)["devices"] if d["bus"] == "pci")
        t = time.perf_counter()
        agent, port, token = start_agent(passthru, root)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            doc = json.loads(get(conn, "/devices", {"Authorization": f"Bearer {token}"}))
            conn.close()
            start_s = time.perf_counter() - t  # start, reconcile, first inventory, first answer
            n_agent = sum(1 for d in doc["devices"] if d["bus"] == "pci")
            if n_agent != n_cli:  # correctness first: the agent answers what the CLI does
                print(f"mismatch: the agent lists {n_agent} PCI functions, the CLI {n_cli}", file=sys.stderr)
                return 1
            load_before = loadavg()
            c0 = cpu_seconds(agent.pid)
            health = load(port, token, "/health", args.rate, args.duration, args.clients)
            c1 = cpu_seconds(agent.pid)
            devices = load(port, token, "/devices", args.rate, args.duration, args.clients)
            c2 = cpu_seconds(agent.pid)
            health["cpu"], devices["cpu"] = (c1 - c0) / health["n"], (c2 - c1) / devices["n"]
            load_after = loadavg()
        finally:
            agent.terminate()
            agent.wait(timeout=60)
        cli_s = []
        for _ in range(args.cli_runs):
            t = time.perf_counter()
            subprocess.run(cli, env=env, stdout=subprocess.DEVNULL, check=True, timeout=300)
            cli_s.append(time.perf_counter() - t)
    ms = 1000.0
    d50, d99 = pct(devices["lat"], 50) * ms, pct(devices["lat"], 99) * ms
    h50, h99 = pct(health["lat"], 50) * ms, pct(health["lat"], 99) * ms
    c50 = statistics.median(cli_s) * ms
    print(f"tree: {n_agent} PCI functions" + (f" (built in {build_s:.1f} s)" if build_s else "")
          + f"; agent answering {start_s:.1f} s after its start; GET /devices body {devices['bytes'] / 1e6:.1f} MB")
    print(f"load: {args.rate:g} req/s for {args.duration:g} s, {args.clients} keep-alive connections, latency from "
          "each request's due time")
    print(f"host: {os.cpu_count()} CPUs, load average {load_before} before, {load_after} after (other work on the "
          "host shows in p99)")
    for name, r in (("GET /devices", devices), ("GET /health (baseline)", health)):
        print(f"{name:<24}: p50 {pct(r['lat'], 50) * ms:6.2f} ms  p99 {pct(r['lat'], 99) * ms:6.2f} ms  "
              f"max {max(r['lat']) * ms:6.2f} ms  (service p99 {pct(r['service'], 99) * ms:.2f} ms; agent CPU "
              f"{r['cpu'] * ms:.2f} ms/request; {r['n']} requests, {r['achieved']:.0f}/s)")
    print(f"{'passthru devices --json':<24}: median {c50:7.1f} ms over {args.cli_runs} runs (whole process, baseline)")
    print(f"p99 /devices - p99 /health: {d99 - h99:.2f} ms;  p50 CLI / p50 /devices: {c50 / d50:.0f}x")
    print(f"target p99 < 10 ms: {'met' if d99 < 10 else 'NOT met'} ({d99:.2f} ms)")
    return 0 if d99 < 10 else 1


if __name__ == "__main__":
    sys.exit(main())
