"""`passthru serve` under hostile traffic (issue #12): the agent runs as its own process (`python -m passthru serve`
on the gpu_server fixture), so its RSS is read from /proc/PID/status and its file descriptors are its own; clients
are raw sockets on 127.0.0.1.

- D1: invented HTTP methods, with and without the token, do not add /metrics series or memory;
- a bug is a 500 with an id, its text only in the log;
- integral floats are integers, other numbers are not;
- D2: 1,100 half-open connections do not keep `GET /health` out (also under a 1024 open-file limit), the
  header timeout closes a half-open connection, and the log stays small (identical errors are rate-limited);
- D5: a body over --max-body is a 413 (declared: without reading it; streamed: cut off), bodies under it work;
- D9: addresses other machines reach need --allow-remote, and TLS works.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

import sysfs_fixtures as fx
from fake_kernel import FakeKernel
from passthru.agent.app import create_app
from passthru.agent.logfilter import RateLimit
from passthru.agent.server import AgentServer, Listen
from passthru.service.session import Session

pytestmark = pytest.mark.timeout(120)
TOKEN = "test-token-0123456789abcdef"
MiB = 1024


# -- harness: the agent as a process, raw HTTP/1.1 over sockets -----------------------------------------------------
class Agent:
    def __init__(self, root: Path, *args: str, listen: str = "127.0.0.1:0", nofile: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PASSTHRU_")}
        wrap = ["prlimit", f"--nofile={nofile}", "--"] if nofile else []
        self.p = subprocess.Popen([*wrap, sys.executable, "-m", "passthru", "--root", str(root), "serve", "--listen",
                                   listen, "--no-hotplug", "--no-reconcile", "--log-level", "info", *args],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env=env)
        self.lines: list[str] = []
        deadline = time.monotonic() + 60
        m = None
        while m is None and time.monotonic() < deadline:
            line = self.p.stderr.readline()
            if not line:
                self.p.kill()
                raise AssertionError("the agent did not start:\n" + "".join(self.lines))
            self.lines.append(line)
            m = re.search(r"listening on (\S+):(\d+)", line)
        assert m, self.lines
        self.port = int(m.group(2))
        while "Application startup complete" not in self.lines[-1]:
            self.lines.append(self.p.stderr.readline())
        threading.Thread(target=lambda: self.lines.extend(self.p.stderr), daemon=True).start()
        self.token = (root / "etc/passthru/token").read_text().strip()

    def status(self, key: str = "VmRSS") -> int:
        """KiB, from /proc/PID/status (VmRSS, VmHWM)."""
        text = Path(f"/proc/{self.p.pid}/status").read_text()
        return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1))

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()


@contextmanager
def agent_process(root: Path, *args: str, **kw):
    a = Agent(root, *args, **kw)
    try:
        yield a
    finally:
        a.stop()


def read_responses(s: socket.socket, n: int, buf: bytes = b"") -> tuple[list[tuple[int, dict, bytes]], bytes]:
    """n responses (status, headers, body) from s; every answer of the agent has a Content-Length."""
    out = []
    while len(out) < n:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            lines = buf[:end].decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            length = int(headers["content-length"])
            if len(buf) >= end + 4 + length:
                out.append((int(lines[0].split()[1]), headers, buf[end + 4:end + 4 + length]))
                buf = buf[end + 4 + length:]
                continue
        chunk = s.recv(1 << 16)
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} responses: {buf[:200]!r}")
        buf += chunk
    return out, buf


def request(port: int, raw: bytes, timeout: float = 30) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        return read_responses(s, 1)[0][0]


def get(port: int, path: str, token: str | None = None) -> tuple[int, dict, bytes]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return request(port, f"GET {path} HTTP/1.1\r\nHost: agent\r\n{auth}\r\n".encode())


def invented(port: int, n: int, token: str | None, first: int = 0, batch: int = 250) -> set[int]:
    """n requests with methods nobody uses, pipelined on one kept-alive connection; the statuses seen."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    seen = set()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        buf = b""
        for start in range(first, first + n, batch):
            k = min(batch, first + n - start)
            s.sendall(b"".join(f"X{i:06d} /devices HTTP/1.1\r\nHost: agent\r\n{auth}\r\n".encode()
                               for i in range(start, start + k)))
            got, buf = read_responses(s, k, buf)
            seen |= {st for st, _, _ in got}
    return seen


def series(text: bytes) -> list[bytes]:
    return [ln.rsplit(b" ", 1)[0] for ln in text.splitlines() if ln and not ln.startswith(b"#")]


def readable(s: socket.socket, timeout: float = 0) -> bool:
    """Data or EOF waiting (poll: select() cannot watch descriptors above 1023)."""
    p = select.poll()
    p.register(s, select.POLLIN)
    return bool(p.poll(timeout * 1000))


def closed_by_peer(s: socket.socket, timeout: float) -> bool:
    if not readable(s, timeout):
        return False
    try:
        return s.recv(4096) == b""
    except ConnectionResetError:
        return True


def half_open(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: ag")  # never finished
        socks.append(s)
    return socks


@pytest.fixture(scope="module", autouse=True)
def _client_fds():
    """The client sockets of the half-open tests are this process's descriptors too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return fx.gpu_server(tmp_path_factory.mktemp("hardening") / "gs")


@pytest.fixture(scope="module")
def agent(root):
    """One agent with the default limits, shared by the tests that leave it as they found it."""
    with agent_process(root) as a:
        yield a


# -- D1: metric labels ----------------------------------------------------------------------------------------------
def test_invented_methods_add_no_metric_series_and_no_memory(agent):
    assert invented(agent.port, 20, None) == {401} and invented(agent.port, 20, agent.token) == {405}
    get(agent.port, "/metrics", agent.token)  # its own series (GET 200) exists from now on
    st, _, before = get(agent.port, "/metrics", agent.token)
    rss = agent.status()
    assert b'passthru_http_requests_total{method="other",status="401"}' in before
    n = 2500
    assert invented(agent.port, n, None, first=100) == {401}  # no token: refused at the gate
    assert invented(agent.port, n, agent.token, first=100 + n) == {405}  # with it: the app's 405
    st, _, after = get(agent.port, "/metrics", agent.token)
    assert st == 200 and series(after) == series(before)  # the same series, only the counts moved
    assert len(after) < len(before) + 200
    counts = dict(re.findall(rb'passthru_http_requests_total\{method="other",status="(\d+)"\} (\d+)', after))
    assert int(counts[b"401"]) >= 20 + n and int(counts[b"405"]) >= 20 + n
    assert agent.status() - rss < 8 * MiB, (rss, agent.status())


# -- in-process: internal errors, integers ----------------------------------------------------------------------------
@pytest.fixture
def served(tmp_path):
    b = fx.make_gpu_server(tmp_path / "gs")
    app = create_app(str(b.root), kernel=FakeKernel(Session(str(b.root)).host), token=TOKEN, udev=False)
    srv = AgentServer(app, Listen("tcp", host="127.0.0.1", port=0))
    where = srv.start()
    client = httpx2.Client(base_url=f"http://127.0.0.1:{where.port}", headers={"Authorization": f"Bearer {TOKEN}"},
                           timeout=60)
    try:
        yield app, client
    finally:
        client.close()
        srv.stop()


def test_a_bug_is_a_500_with_an_id_and_its_detail_only_in_the_log(served, caplog):
    app, c = served

    def broken() -> dict:
        raise RuntimeError("secret detail: /etc/shadow")

    app.state.agent.vm_status = broken
    with caplog.at_level(logging.ERROR, logger="passthru.agent"):
        r = c.get("/assignments")
    assert r.status_code == 500
    doc = r.json()
    assert doc["code"] == "internal" and "secret" not in r.text and "RuntimeError" not in r.text
    eid = re.fullmatch(r"internal error \(id ([0-9a-f]{8})\); the agent's log has the details", doc["message"])
    assert eid, doc
    logged = [rec for rec in caplog.records if eid.group(1) in rec.getMessage()]
    assert logged and "secret detail" in logged[0].getMessage() and logged[0].exc_info, caplog.records
    assert c.get("/health").status_code == 200  # and it goes on serving


def test_integral_floats_are_integers_and_other_numbers_are_not(served):
    _, c = served
    pf = "0000:3b:00.0"
    r = c.post("/vf/count", json={"pf": pf, "count": 4.0, "force": True, "dry_run": True})
    assert r.status_code == 200 and r.json()["after"] == 4, r.text
    r = c.post("/vf/set", json={"pf": pf, "vf": 2.0, "mac": "52:54:00:12:34:56", "vlan": 100.0, "dry_run": True})
    assert r.status_code == 200, r.text
    r = c.post("/assign", json={"vm": "vm1", "devices": ["nvme"], "numa": 1.0, "numa_policy": "prefer",
                                "bind": False})
    assert r.status_code == 200, r.text
    for path, body, field in (("/vf/set", {"pf": pf, "vf": 3739.5, "mac": "52:54:00:12:34:56"}, "vf"),
                              ("/vf/set", {"pf": pf, "vf": "3", "mac": "52:54:00:12:34:56"}, "vf"),
                              ("/vf/set", {"pf": pf, "vf": True, "mac": "52:54:00:12:34:56"}, "vf"),
                              ("/vf/set", {"pf": pf, "vf": 2, "vlan": 1.5}, "vlan"),
                              ("/vf/reset", {"pf": pf, "vf": 0.25}, "vf"),
                              ("/vf/count", {"pf": pf, "count": 2.5}, "count"),
                              ("/assign", {"vm": "vm2", "devices": ["nvme"], "numa": "1"}, "numa")):
        r = c.post(path, json=body)
        assert r.status_code == 422, (body, r.text)
        assert [e["field"] for e in r.json()["errors"]] == [field], r.text
    assert "fractional part" in c.post("/vf/count", json={"pf": pf, "count": 2.5}).json()["message"]
    vlan = c.get("/openapi.json").json()["components"]["schemas"]["VfSetBody"]["properties"]["vlan"]["anyOf"][0]
    assert vlan == {"type": "integer", "minimum": 0, "maximum": 4095}  # the bounds stay in the schema


# -- D2: connections ------------------------------------------------------------------------------------------------
def test_1100_half_open_connections_do_not_lock_out_a_client(agent):
    lines = len(agent.lines)
    socks = half_open(agent.port, 1100)
    try:
        t = time.perf_counter()
        st, _, body = get(agent.port, "/health")
        took = time.perf_counter() - t
        # served by evicting a half-open connection, not after one of them hit the 10 s header timeout (a lockout);
        # the latency itself is no test's business (a loaded machine took 1.05 s here)
        assert st == 200 and json.loads(body)["status"] == "ok" and took < 5.0, took
        # at the limit (1000) each new connection closed the one that had waited longest for its headers
        assert all(closed_by_peer(s, 2) for s in socks[:100])
        assert not any(readable(s) for s in socks[-800:])
        st, _, m = get(agent.port, "/metrics", agent.token)
        evicted = int(re.search(rb'passthru_connections_closed_total\{reason="evicted"\} (\d+)', m).group(1))
        assert evicted >= 101, m
    finally:
        for s in socks:
            s.close()
    time.sleep(0.2)
    logged = agent.lines[lines:]
    assert len(logged) <= 10, logged  # rate limited: the first few, the rest counted
    assert not any("Too many open files" in ln or "Traceback" in ln for ln in logged), logged


def test_half_open_connections_under_systemds_default_file_limit(root):
    """With 1024 open files (soft and hard; a unit without LimitNOFILE=) the agent serves fewer connections,
    says so, and never runs out of descriptors."""
    if not shutil.which("prlimit"):
        pytest.skip("prlimit not installed (apt install util-linux)")
    with agent_process(root, nofile="1024:1024") as a:
        assert any("serving at most 512 connections, not 1000" in ln for ln in a.lines), a.lines
        socks = half_open(a.port, 1100)
        try:
            t = time.perf_counter()
            assert get(a.port, "/health")[0] == 200 and time.perf_counter() - t < 1.0
        finally:
            for s in socks:
                s.close()
        time.sleep(0.2)
        assert not any("out of system resource" in ln or "Too many open files" in ln for ln in a.lines), a.lines
        assert len(a.lines) < 25, a.lines


def test_the_header_timeout_closes_a_half_open_connection(root):
    with agent_process(root, "--header-timeout", "0.5", "--idle-timeout", "0.5") as a:
        with socket.create_connection(("127.0.0.1", a.port), timeout=10) as s:
            t = time.perf_counter()
            s.sendall(b"GET /health HTTP/1.1\r\nHost: ag")
            assert closed_by_peer(s, 5) and 0.4 < time.perf_counter() - t < 3
        with socket.create_connection(("127.0.0.1", a.port), timeout=10) as s:  # a byte at a time: the same
            t = time.perf_counter()
            for c in b"GET /health HTTP/1.1\r\n":
                s.send(bytes([c]))
                time.sleep(0.05)
                if readable(s):
                    break
            assert closed_by_peer(s, 5) and time.perf_counter() - t < 3
        with socket.create_connection(("127.0.0.1", a.port), timeout=10) as s:  # slow but in time: answered
            s.sendall(b"GET /health HTTP/1.1\r\n")
            time.sleep(0.2)
            s.sendall(b"Host: agent\r\n\r\n")
            assert read_responses(s, 1)[0][0][0] == 200
            # kept alive, then idle: closed by the idle timeout; a started next request by the header timeout
            assert closed_by_peer(s, 5)
        with socket.create_connection(("127.0.0.1", a.port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: agent\r\n\r\n")
            assert read_responses(s, 1)[0][0][0] == 200
            s.sendall(b"GET /health HTTP/1.1\r\n")
            assert closed_by_peer(s, 5)
        st, _, m = get(a.port, "/metrics", a.token)
        assert int(re.search(rb'passthru_connections_closed_total\{reason="header_timeout"\} (\d+)', m).group(1)) >= 3


# -- the log filter -------------------------------------------------------------------------------------------------
def test_identical_errors_are_rate_limited_with_a_count_of_the_rest():
    now = [0.0]
    limiter = RateLimit(burst=3, interval=10, clock=lambda: now[0])
    log = logging.getLogger("passthru.test.ratelimit")
    got: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.getMessage())

    log.addHandler(Keep())
    log.addFilter(limiter)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        for _ in range(1000):
            log.error("socket.accept() out of system resource")
        log.error("another message")
        log.info("info always passes")
        assert got == ["socket.accept() out of system resource"] * 3 + ["another message", "info always passes"]
        now[0] = 11
        log.error("socket.accept() out of system resource")
        assert got[-2:] == ["suppressed 997 similar messages in the last 11 s: socket.accept() out of system "
                            "resource", "socket.accept() out of system resource"]
        for _ in range(5):
            log.warning("x")
        limiter.flush()
        assert got[-1].startswith("suppressed 2 similar messages") and got[-1].endswith(": x")
    finally:
        log.filters.clear()
        log.handlers.clear()


# -- D5: request size -----------------------------------------------------------------------------------------------
def post_head(token: str, path: str, length: int | None) -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\n{size}\r\n\r\n").encode()


def test_a_declared_body_over_the_limit_is_refused_unread(agent):
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as s:
        t = time.perf_counter()
        s.sendall(post_head(agent.token, "/assign", 1_000_000_000) + b"0" * 65536)
        ((st, headers, body),), _ = read_responses(s, 1)
        took = time.perf_counter() - t
        doc = json.loads(body)
        assert st == 413 and doc["code"] == "payload_too_large" and "1 MiB" in doc["message"], doc
        assert headers.get("connection") == "close" and took < 2, took
        assert closed_by_peer(s, 5)  # the rest of the body is never read
    assert agent.status("VmHWM") < 200 * MiB
    # without the token, the same request is a 401, and the body is not read either
    st, headers, _ = request(agent.port, post_head("wrong", "/assign", 1_000_000_000))
    assert st == 401 and headers.get("connection") == "close"


def test_a_streamed_body_is_cut_off_past_the_limit(agent):
    rss = agent.status()
    sent = 0
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as s:
        s.sendall(post_head(agent.token, "/reconcile", None) + b"1\r\n{\r\n")
        while sent < 64 << 20 and not readable(s):
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 65536
        ((st, headers, body),), _ = read_responses(s, 1)
    assert st == 413 and json.loads(body)["code"] == "payload_too_large"
    assert (1 << 20) <= sent < 16 << 20, sent  # answered soon after the limit was passed
    assert agent.status() - rss < 16 * MiB


def test_bodies_under_the_limit_still_work(agent):
    doc = b'{"release_gone": false}' + b" " * 900_000
    st, _, body = request(agent.port, post_head(agent.token, "/reconcile", len(doc)) + doc)
    assert st == 200 and json.loads(body)["reason"] == "on demand"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (doc[:500_000], doc[500_000:])) + b"0\r\n\r\n"
    st, _, body = request(agent.port, post_head(agent.token, "/reconcile", None) + chunks)
    assert st == 200 and json.loads(body)["ok"] is not None


def test_max_body_is_a_flag(root, tmp_path):
    bad = subprocess.run([sys.executable, "-m", "passthru", "--root", str(root), "serve", "--max-body", "lots"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--max-body" in bad.stderr, bad.stderr
    with agent_process(root, "--max-body", "1K") as a:
        doc = b'{"release_gone": false}' + b" " * 2000
        st, _, body = request(a.port, post_head(a.token, "/reconcile", len(doc)) + doc)
        assert st == 413 and "1 KiB" in json.loads(body)["message"]


# -- D9: who may connect --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["0.0.0.0:{p}", "[::]:{p}", "0:{p}"])
def test_every_interface_needs_allow_remote(root, where):
    port = free_port()
    p = subprocess.run([sys.executable, "-m", "passthru", "--root", str(root), "serve", "--listen",
                        where.format(p=port), "--no-hotplug"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "every interface" in p.stderr and "--allow-remote" in p.stderr and "127.0.0.1" in p.stderr, p.stderr
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_tls_flags_are_checked(root, tmp_path):
    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "passthru", "--root", str(root), "serve", *args],
                              capture_output=True, text=True, timeout=60)

    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for args, words in ((["--listen", "127.0.0.1:0", "--tls-cert", "c.pem"], "go together"),
                        (["--tls-cert", str(tmp_path / "junk.pem"), "--tls-key", str(tmp_path / "junk.pem")],
                         "TCP"),
                        (["--listen", "127.0.0.1:0", "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key",
                          str(tmp_path / "junk.pem")], "no such file"),
                        (["--listen", "127.0.0.1:0", "--tls-cert", str(tmp_path / "junk.pem"), "--tls-key",
                          str(tmp_path / "junk.pem")], "cannot use them")):
        p = serve(*args)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and words in p.stderr, (args, p.stderr)


@pytest.fixture
def certificate(tmp_path) -> tuple[str, str]:
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed (apt install openssl)")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True, timeout=60)
    return cert, key


def test_remote_listening_with_tls(root, certificate):
    cert, key = certificate
    with agent_process(root, "--allow-remote", "--tls-cert", cert, "--tls-key", key, "--header-timeout", "1",
                       listen="0.0.0.0:0") as a:
        assert any(re.search(r"listening on 0\.0\.0\.0:\d+ with TLS \(bearer token required\)", ln)
                   for ln in a.lines), a.lines
        assert not any("plain text" in ln for ln in a.lines)
        ctx = ssl.create_default_context(cafile=cert)
        with httpx2.Client(base_url=f"https://127.0.0.1:{a.port}", verify=ctx, timeout=30) as c:
            r = c.get("/devices", headers={"Authorization": f"Bearer {a.token}"})
            assert r.status_code == 200 and r.json()["schema"] == 1
            assert c.get("/devices").status_code == 401
        with pytest.raises(httpx2.HTTPError):  # plain HTTP is not served there
            httpx2.get(f"http://127.0.0.1:{a.port}/health", timeout=5)
        with socket.create_connection(("127.0.0.1", a.port), timeout=10) as s:  # no handshake: closed in time
            t = time.perf_counter()
            assert closed_by_peer(s, 5) and 0.8 < time.perf_counter() - t < 3


def test_remote_listening_without_tls_warns(root):
    with agent_process(root, "--allow-remote", listen="0.0.0.0:0") as a:
        assert any("WARNING" in ln and "plain text" in ln and "--tls-cert" in ln for ln in a.lines), a.lines
        assert get(a.port, "/health")[0] == 200
