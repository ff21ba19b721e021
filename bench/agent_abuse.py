#!/usr/bin/env python3
"""Agent abuse: what hostile traffic on loopback costs the agent (issue #12's findings D1, D2 and D5).

Starts `passthru serve --listen 127.0.0.1:0` (its own process, bearer token) on the gpu_server fixture and prints,
each with the agent's RSS (VmRSS, and the peak VmHWM) read from /proc:

1. D1, metric labels: --requests requests with invented HTTP methods (half without the token, half with it), sent
   pipelined over a few keep-alive connections; /metrics size and series count before and after.
2. D2, half-open connections: --half-open TCP connections that send part of a request line and stay open; then
   the latency of `GET /health` on a new connection, and how many lines the agent logged meanwhile.
3. D5, request size: an authenticated POST claiming `Content-Length: --body` bytes, streamed until the agent
   answers or closes; the answer, how long it took, and the agent's RSS after.

Every request goes to 127.0.0.1; every loop is bounded. Usage:
    python bench/agent_abuse.py [--requests 30000] [--half-open 1100] [--body 1000000000] [--nofile 1024:1024]
                                [--show-log] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


class Agent:
    def __init__(self, root: str, *extra: str, nofile: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PASSTHRU_")}
        wrap = ["prlimit", f"--nofile={nofile}", "--"] if nofile else []
        self.p = subprocess.Popen([*wrap, sys.executable, "-m", "passthru", "--root", root, "serve", "--listen",
                                   "127.0.0.1:0", "--no-hotplug", "--log-level", "info", *extra],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env=env)
        self.lines: list[str] = []
        while True:
            line = self.p.stderr.readline()
            if not line:
                raise SystemExit("the agent did not start:\n" + "".join(self.lines))
            self.lines.append(line)
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                break
        self.port = int(m.group(1))
        threading.Thread(target=self._drain, daemon=True).start()
        with open(os.path.join(root, "etc/passthru/token"), encoding="utf-8") as f:
            self.token = f.read().strip()

    def _drain(self) -> None:
        for line in self.p.stderr:
            self.lines.append(line)

    def status(self, key: str) -> int:
        """A size from /proc/PID/status in KiB (VmRSS, VmHWM)."""
        with open(f"/proc/{self.p.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()


def read_responses(s: socket.socket, n: int, buf: bytes = b"") -> tuple[list[tuple[int, bytes]], bytes]:
    """n HTTP/1.1 responses (status, body) from s; every one has a Content-Length."""
    out = []
    while len(out) < n:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode("latin-1")
            length = int(re.search(r"(?im)^content-length:\s*(\d+)", head).group(1))
            if len(buf) >= end + 4 + length:
                out.append((int(head.split()[1]), buf[end + 4:end + 4 + length]))
                buf = buf[end + 4 + length:]
                continue
        chunk = s.recv(1 << 16)
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} responses")
        buf += chunk
    return out, buf


def invented_methods(port: int, n: int, token: str | None, *, start: int = 0, batch: int = 200) -> dict[int, int]:
    """n requests with methods nobody uses (M0000001, ...), pipelined in batches on one keep-alive connection."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    statuses: dict[int, int] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        buf = b""
        for first in range(start, start + n, batch):
            k = min(batch, start + n - first)
            s.sendall(b"".join(f"M{i:07d} /devices HTTP/1.1\r\nHost: agent\r\n{auth}\r\n".encode()
                               for i in range(first, first + k)))
            got, buf = read_responses(s, k, buf)
            for st, _ in got:
                statuses[st] = statuses.get(st, 0) + 1
    return statuses


def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes, float]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: agent\r\n{auth}Connection: close\r\n\r\n".encode())
        got, _ = read_responses(s, 1)
    return got[0][0], got[0][1], time.perf_counter() - t


def series(text: bytes) -> int:
    return sum(1 for ln in text.splitlines() if ln and not ln.startswith(b"#"))


def readable(s: socket.socket) -> bool:
    """Data or EOF waiting on s (poll: select() cannot watch descriptors above 1023)."""
    p = select.poll()
    p.register(s, select.POLLIN)
    return bool(p.poll(0))


def half_open(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: ag")  # never finished
        socks.append(s)
    return socks


def big_body(port: int, token: str, size: int, timeout: float = 60) -> tuple[str, float, int]:
    """POST /assign claiming ``size`` bytes and streaming zeros until the agent answers or closes."""
    t = time.perf_counter()
    sent = 0
    chunk = b"0" * (1 << 16)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"POST /assign HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {token}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode())
        answer = b""
        while sent < size and time.perf_counter() - t < timeout:
            if readable(s):
                break
            try:
                s.sendall(chunk[:size - sent])
            except OSError:
                break
            sent += min(len(chunk), size - sent)
        s.settimeout(max(1.0, timeout - (time.perf_counter() - t)))
        try:
            while b"\r\n\r\n" not in answer:
                got = s.recv(1 << 16)
                if not got:
                    break
                answer += got
        except OSError as e:
            answer += f" ({e})".encode()
    return answer.split(b"\r\n", 1)[0].decode("latin-1") or "(closed)", time.perf_counter() - t, sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=30000)
    ap.add_argument("--half-open", type=int, default=1100)
    ap.add_argument("--body", type=int, default=1_000_000_000)
    ap.add_argument("--nofile", metavar="SOFT:HARD", help="run the agent under this RLIMIT_NOFILE (prlimit), "
                    "e.g. 1024:1024, systemd's default soft limit for a unit without LimitNOFILE=")
    ap.add_argument("--show-log", action="store_true", help="print the agent's log at the end")
    ap.add_argument("--root", help="an existing fixture tree (default: the gpu_server fixture in a temp dir)")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.half_open + 256)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            import sysfs_fixtures

            root = str(sysfs_fixtures.gpu_server(os.path.join(tmp, "gs")))
        agent = Agent(root, nofile=args.nofile)
        try:
            run(agent, args)
        finally:
            agent.stop()


def run(agent: Agent, args: argparse.Namespace) -> None:
    mib = 1024
    st, m0, _ = get(agent.port, "/metrics", agent.token)
    rss0 = agent.status("VmRSS")
    print(f"start: /metrics {len(m0)} bytes, {series(m0)} series; agent RSS {rss0 / mib:.1f} MiB")

    # D1
    t = time.perf_counter()
    half = args.requests // 2
    results: list[dict] = [{}, {}]
    ths = [threading.Thread(target=lambda: results.__setitem__(0, invented_methods(agent.port, half, None))),
           threading.Thread(target=lambda: results.__setitem__(
               1, invented_methods(agent.port, args.requests - half, agent.token, start=half)))]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    took = time.perf_counter() - t
    st, m1, _ = get(agent.port, "/metrics", agent.token)
    rss1 = agent.status("VmRSS")
    print(f"D1: {args.requests} requests with invented methods in {took:.1f} s (answers: without token "
          f"{results[0]}, with token {results[1]})")
    print(f"D1: /metrics {len(m0)} -> {len(m1)} bytes, {series(m0)} -> {series(m1)} series; agent RSS "
          f"{rss0 / mib:.1f} -> {rss1 / mib:.1f} MiB")

    # D2
    lines0 = len(agent.lines)
    t = time.perf_counter()
    socks = half_open(agent.port, args.half_open)
    opened = time.perf_counter() - t
    try:
        t = time.perf_counter()
        try:
            st, _, lat = get(agent.port, "/health")
            answer = f"{st} in {lat * 1000:.1f} ms"
        except OSError as e:
            answer = f"no answer ({e}) after {time.perf_counter() - t:.1f} s"
        print(f"D2: {args.half_open} half-open connections opened in {opened:.1f} s; then GET /health -> {answer}")
        time.sleep(0.5)
        alive = sum(1 for s in socks if not readable(s))
        print(f"D2: {alive} of them still open (the agent closed the rest); the agent logged "
              f"{len(agent.lines) - lines0} lines; agent RSS {agent.status('VmRSS') / mib:.1f} MiB")
    finally:
        for s in socks:
            s.close()

    # D5
    rss_before = agent.status("VmRSS")
    line, took, sent = big_body(agent.port, agent.token, args.body)
    print(f"D5: POST with Content-Length {args.body}: {line!r} after {took * 1000:.0f} ms, {sent} body bytes sent; "
          f"agent RSS {rss_before / mib:.1f} -> {agent.status('VmRSS') / mib:.1f} MiB (peak "
          f"{agent.status('VmHWM') / mib:.1f} MiB)")
    st, _, lat = get(agent.port, "/health")
    print(f"end: GET /health -> {st} in {lat * 1000:.1f} ms; the agent logged {len(agent.lines)} lines in all")
    if args.show_log:
        print("".join(agent.lines), end="")


if __name__ == "__main__":
    main()
