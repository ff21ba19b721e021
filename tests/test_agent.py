"""`passthru serve`: the real uvicorn server on loopback (a thread in this process, so a fake kernel can stand in for
the fixture's; and the `passthru serve` process itself), every endpoint's happy and bad-input path, the token gate
and the unix socket's permissions, 16 concurrent assigners, reconcile (lost devices, persisted bindings, VMs whose
QEMU is gone), hot-plug events, /metrics, the committed OpenAPI schema, and a schemathesis fuzz of the whole API."""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx2
import hypothesis
import pytest
import schemathesis

import qemu_proc
import sysfs_fixtures as fx
from fake_kernel import FakeKernel
from passthru.agent.app import create_app
from passthru.agent.events import QueueSource
from passthru.agent.server import AgentServer, Listen, load_token, parse_listen
from passthru.agent.vms import parse_qemu_argv
from passthru.service.session import Session
from passthru.service.listings import devices_doc, groups_doc, serial_doc, usb_doc
from passthru.errors import HostError, UsageError
from passthru.service.assign import open_store

pytestmark = pytest.mark.timeout(120)

DOCS = Path(__file__).resolve().parent.parent / "docs"
TOKEN = "test-token-0123456789abcdef"
GPU, AUDIO = "0000:86:00.0", "0000:86:00.1"


# -- harness ------------------------------------------------------------------------------------------------------
class Host:
    def __init__(self, tmp_path: Path) -> None:
        self.builder = fx.make_gpu_server(tmp_path / "gs")
        self.root = str(self.builder.root)
        self.session = Session(self.root)
        self.kernel = FakeKernel(self.session.host)

    def driver(self, addr: str) -> str | None:
        return self.session.host.link_name(f"{self.session.host.sys}/bus/pci/devices/{addr}/driver")

    def held(self, vm: str | None = None) -> list[str]:
        return sorted(a.device for a in open_store(self.session).assignments(vm))


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


@contextmanager
def serving(app, listen: Listen | None = None, token: str | None = TOKEN):
    srv = AgentServer(app, listen or Listen("tcp", host="127.0.0.1", port=0))
    where = srv.start()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if where.kind == "tcp":
        client = httpx2.Client(base_url=f"http://127.0.0.1:{where.port}", headers=headers, timeout=60)
    else:
        client = httpx2.Client(transport=httpx2.HTTPTransport(uds=where.path), base_url="http://agent",
                               headers=headers, timeout=60)
    try:
        yield client, srv
    finally:
        client.close()
        srv.stop()


@pytest.fixture
def api(host):
    """A client of the real server on 127.0.0.1:<free port>, bearer token required, the fake kernel injected."""
    app = create_app(host.root, kernel=host.kernel, token=TOKEN, udev=False)
    with serving(app) as (client, srv):
        yield client


def error(r: httpx2.Response, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    doc = r.json()
    assert doc["code"] == code and doc["message"], doc
    return doc


def field_of(r: httpx2.Response) -> list[str]:
    doc = error(r, 422, "invalid_request")
    return [e["field"] for e in doc["errors"]]


def wait_generation(client: httpx2.Client, above: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while True:
        g = client.get("/health").json()["generation"]
        if g > above:
            return g
        assert time.monotonic() < deadline, f"no refresh after generation {above}"
        time.sleep(0.02)


# -- listening, tokens, sockets -----------------------------------------------------------------------------------
def test_tcp_refuses_requests_without_the_token(host):
    app = create_app(host.root, kernel=host.kernel, token=TOKEN, udev=False)
    with serving(app, token=None) as (c, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Bearer {TOKEN}x"}):
            r = c.get("/devices", headers=headers)
            error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"].startswith("Bearer")
        error(c.post("/assign", json={"vm": "vm1", "devices": [GPU]}), 401, "unauthorized")
        assert host.held() == []  # refused before anything ran
        assert c.get("/health").status_code == 200  # liveness needs no token
        r = c.get("/devices", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["schema"] == 1


def test_unix_socket_is_0600_and_needs_no_token(host, tmp_path):
    path = str(tmp_path / "run" / "agent.sock")
    app = create_app(host.root, kernel=host.kernel, udev=False)
    with serving(app, Listen("unix", path=path), token=None) as (c, _):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert c.get("/devices").status_code == 200
        # a second agent on the same socket is refused; the first keeps serving
        with pytest.raises(HostError, match="another agent is listening"):
            AgentServer(app, Listen("unix", path=path)).open()
        assert c.get("/health").status_code == 200
    assert not os.path.exists(path)  # removed on exit


def test_a_stale_socket_is_replaced_and_a_file_is_not(host, tmp_path):
    import socket

    path = str(tmp_path / "agent.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)  # bound, never listening: what a killed agent leaves
    s.close()
    os.chmod(path, 0o666)
    app = create_app(host.root, kernel=host.kernel, udev=False)
    with serving(app, Listen("unix", path=path), token=None) as (c, _):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and c.get("/health").status_code == 200
    Path(path).write_text("not a socket")
    with pytest.raises(HostError, match="not a socket"):
        AgentServer(app, Listen("unix", path=path)).open()


def test_accepted_connections_have_tcp_nodelay(api):
    """TCP_NODELAY on accepted sockets: without it every small answer on a keep-alive connection waits out the
    client's delayed ACK (~40 ms). The server runs in this process, so its end of the connection is one of our
    file descriptors; the latency itself is bench/keepalive.py."""
    import http.client
    import socket

    conn = http.client.HTTPConnection("127.0.0.1", api.base_url.port, timeout=30)
    try:
        for _ in range(3):
            conn.request("GET", "/health")
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        client_end = conn.sock.getsockname()
        server_ends = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                s = socket.socket(fileno=os.dup(int(fd)))
            except OSError:
                continue  # not a socket
            try:
                if s.family == socket.AF_INET and s.type == socket.SOCK_STREAM and s.getpeername() == client_end:
                    server_ends.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            except OSError:
                pass  # a listening or unconnected socket
            finally:
                s.close()
    finally:
        conn.close()
    assert len(server_ends) == 1 and server_ends[0] != 0, server_ends


def test_listen_forms():
    assert parse_listen("unix:/run/passthru/agent.sock") == Listen("unix", path="/run/passthru/agent.sock")
    assert parse_listen("/tmp/a.sock") == Listen("unix", path="/tmp/a.sock")
    assert parse_listen("8080") == Listen("tcp", host="127.0.0.1", port=8080)
    assert parse_listen(":8080") == Listen("tcp", host="127.0.0.1", port=8080)
    assert parse_listen("0.0.0.0:80") == Listen("tcp", host="0.0.0.0", port=80)
    assert parse_listen("[::1]:9000") == Listen("tcp", host="::1", port=9000)
    assert str(parse_listen("[::1]:9000")) == "[::1]:9000"
    for bad in ("unix:relative.sock", "host:port", "1.2.3.4:99999", "[::1]9000", "", "unix:/" + "x" * 120):
        with pytest.raises(UsageError):
            parse_listen(bad)


def test_token_is_generated_0600_and_kept(tmp_path):
    path = str(tmp_path / "etc" / "token")
    t = load_token(path)
    assert len(t) >= 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_token(path) == t
    os.chmod(path, 0o644)
    with pytest.raises(HostError, match="readable by others"):
        load_token(path)
    os.chmod(path, 0o600)
    Path(path).write_text("short\n")
    with pytest.raises(HostError, match="at least 16"):
        load_token(path)


def _serve(root: str, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSTHRU_")}
    return subprocess.Popen([sys.executable, "-m", "passthru", "--root", root, "serve", "--log-level", "info", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _wait_line(p: subprocess.Popen, pattern: str) -> re.Match:
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(pattern, line)
        if m:
            threading.Thread(target=p.stderr.read, daemon=True).start()  # keep draining
            return m
    p.kill()
    raise AssertionError("".join(lines))


def test_the_serve_command_on_tcp_and_on_its_default_socket(host):
    p = _serve(host.root, "--listen", "127.0.0.1:0", "--no-hotplug")
    try:
        port = int(_wait_line(p, r"listening on 127\.0\.0\.1:(\d+) \(bearer token required\)").group(1))
        token_file = Path(host.root, "etc/passthru/token")
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            error(c.get("/devices"), 401, "unauthorized")
            r = c.get("/devices", headers={"Authorization": f"Bearer {token_file.read_text().strip()}"})
            assert r.status_code == 200 and any(d["id"] == GPU for d in r.json()["devices"])
            assert c.get("/reconcile", headers={"Authorization": f"Bearer {token_file.read_text().strip()}"}
                         ).json()["reason"] == "start"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
    finally:
        p.kill()
    # the default: a unix socket under the root's /run/passthru, 0600, gone after SIGTERM
    sock = Path(host.root, "run/passthru/agent.sock")
    p = _serve(host.root, "--no-reconcile")
    try:
        _wait_line(p, r"listening on unix:")
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        with httpx2.Client(transport=httpx2.HTTPTransport(uds=str(sock)), base_url="http://agent") as c:
            assert c.get("/usb").json()["usb"]
            error(c.get("/reconcile"), 404, "not_found")  # --no-reconcile
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
    finally:
        p.kill()
    assert not sock.exists()


# -- reads --------------------------------------------------------------------------------------------------------
def test_listings_are_the_cli_documents(api, host):
    s = Session(host.root)
    doc = api.get("/devices").json()
    assert {k: v for k, v in doc.items() if k != "lost"} == devices_doc(s) and doc["lost"] == []
    gpus = api.get("/devices", params={"kind": "gpu"}).json()
    assert gpus["devices"] == devices_doc(s, "gpu")["devices"]
    assert api.get("/groups").json() == groups_doc(s)
    assert api.get("/usb").json() == usb_doc(s)
    assert api.get("/serial").json() == serial_doc(s)
    assert "fpga" in error(api.get("/devices", params={"kind": "fpga"}), 400, "bad_request")["message"]
    assert field_of(api.get("/devices", params={"kind": "GPU!"})) == ["kind"]


def test_doctor_and_status(api):
    doc = api.get("/doctor").json()
    assert doc["schema"] == 1 and {"ok", "summary", "checks"} <= set(doc)
    dev = api.get("/doctor", params={"device": ["86:00.0", "1-1.3"]}).json()
    assert {c["device"] for c in dev["checks"] if c["device"]} >= {GPU, "1-1.3"}
    error(api.get("/doctor", params={"device": "99:00.0"}), 404, "not_found")
    error(api.get("/doctor", params={"device": "not-a-device"}), 400, "bad_request")
    assert field_of(api.get("/doctor", params={"device": "a\x01b"})) == ["device.0"]
    st = api.get("/status").json()
    assert st == {"schema": 1, "held": [], "persisted": [], "operations": []}


def test_a_broken_models_file_is_reported_until_fixed(host):
    conf = Path(host.root, "etc/passthru")
    conf.mkdir(parents=True)
    (conf / "models.toml").write_text("[models.x\n")
    app = create_app(host.root, kernel=host.kernel, token=TOKEN, udev=False)
    with serving(app) as (c, _):  # it starts, and says what is wrong
        assert "not valid TOML" in error(c.get("/devices"), 400, "bad_request")["message"]
        assert c.get("/reconcile").json()["errors"]
        (conf / "models.toml").unlink()
        assert c.get("/devices").status_code == 200


def test_unknown_endpoints_and_methods_are_json(api):
    error(api.get("/nope"), 404, "not_found")
    error(api.put("/devices"), 405, "method_not_allowed")
    error(api.post("/assign", content=b"{not json", headers={"content-type": "application/json"}), 422,
          "invalid_request")


# -- takeover -----------------------------------------------------------------------------------------------------
def test_bind_and_restore(api, host):
    dry = api.post("/bind", json={"addresses": [GPU], "group": True, "dry_run": True}).json()
    assert [d["status"] for d in dry["devices"]] == ["would change", "would change"] and host.driver(GPU) == "nouveau"
    out = api.post("/bind", json={"addresses": [GPU], "group": True, "persist": True}).json()
    assert out["ok"] and [(d["address"], d["status"]) for d in out["devices"]] == [(GPU, "changed"),
                                                                                  (AUDIO, "changed")]
    assert out["persisted"] == [GPU, AUDIO] and host.driver(GPU) == host.driver(AUDIO) == "vfio-pci"
    # the snapshot was refreshed by the write: the listing shows the new driver at once
    dev = next(d for d in api.get("/devices").json()["devices"] if d["id"] == GPU)
    assert dev["driver"] == "vfio-pci"
    assert [x["address"] for x in api.get("/status").json()["held"]] == [GPU, AUDIO]
    back = api.post("/restore", json={"addresses": [GPU]}).json()
    assert [d["status"] for d in back["devices"]] == ["restored", "restored"] and host.driver(GPU) == "nouveau"


def test_bind_bad_input(api, host):
    refused = error(api.post("/bind", json={"addresses": ["0000:87:00.0"]}), 409, "refused")
    assert refused["refusals"][0]["address"] == "0000:87:00.0" and "--group" in refused["message"]
    boot = error(api.post("/bind", json={"addresses": ["0000:02:00.0"]}), 409, "refused")
    assert boot["refusals"][0]["override"] == "--allow-boot-vga"
    error(api.post("/bind", json={"addresses": ["0000:99:00.0"]}), 404, "not_found")
    error(api.post("/bind", json={"addresses": ["1:2:3:4"]}), 400, "bad_request")
    assert field_of(api.post("/bind", json={"addresses": []})) == ["addresses"]
    assert field_of(api.post("/bind", json={"addresses": ["0000:86:00.0; rm -rf /"]})) == ["addresses.0"]
    assert field_of(api.post("/bind", json={"addresses": [GPU], "group": "yes"})) == ["group"]
    assert field_of(api.post("/bind", json={"addresses": [GPU], "grop": True})) == ["grop"]
    assert field_of(api.post("/bind", json=[GPU])) == ["body"]
    assert host.kernel.writes == [] and host.driver(GPU) == "nouveau"
    assert field_of(api.post("/restore", json={})) == ["addresses"]
    assert field_of(api.post("/restore", json={"addresses": [GPU], "all": True})) == ["addresses"]
    error(api.post("/restore", json={"addresses": [GPU]}), 400, "bad_request")  # passthru does not hold it


def test_a_failed_write_is_rolled_back_and_reported(api, host):
    host.kernel.fail("unbind", errno.EBUSY, addr=AUDIO)
    doc = error(api.post("/assign", json={"vm": "vm1", "devices": [GPU, "usb:1-2"]}), 500, "host_error")
    assert "in use" in doc["message"]
    assert host.held() == [] and host.driver(GPU) == "nouveau" and host.driver(AUDIO) == "snd_hda_intel"
    # a body that does not validate changes nothing either, though every other field is fine
    field_of(api.post("/assign", json={"vm": "vm1", "devices": [GPU], "numa_policy": "closest"}))
    assert host.held() == []


# -- models, assignments ------------------------------------------------------------------------------------------
def test_models(api):
    assert api.get("/models").json() == {"schema": 1, "models": []}
    body = {"name": "oxford-uart", "vendor": "1415", "device": "c158", "kind": "uart"}
    assert api.post("/models", json=body).json() == {"schema": 1, "name": "oxford-uart", "status": "changed"}
    assert api.post("/models", json=body).json()["status"] == "unchanged"
    assert api.get("/models").json()["models"] == [{"name": "oxford-uart", "vendor_id": "1415", "device_id": "c158",
                                                    "kind": "uart", "description": None}]
    # the inventory was refreshed: the model's kind is a listing filter now
    assert [d["id"] for d in api.get("/devices", params={"kind": "uart"}).json()["devices"]] == ["0000:03:00.0"]
    assert "built-in kind" in error(api.post("/models", json={**body, "name": "gpu"}), 400, "bad_request")["message"]
    assert field_of(api.post("/models", json={**body, "vendor": "xyz"})) == ["vendor"]
    assert field_of(api.post("/models", json={"name": "a"})) == ["vendor", "device"]
    assert api.delete("/models/oxford-uart").json()["status"] == "removed"
    error(api.delete("/models/oxford-uart"), 404, "not_found")
    assert field_of(api.delete("/models/Bad Name")) == ["name"]


def test_assign_release_and_assignments(api, host):
    res = api.post("/assign", json={"vm": "vm1", "devices": [GPU, "usb:1-2"]}).json()
    assert [a["device"] for a in res["assignments"]] == [f"pci:{GPU}", f"pci:{AUDIO}", "usb:1-2"]
    assert res["bound"] == [GPU, AUDIO] and host.driver(GPU) == "vfio-pci"
    error(api.post("/assign", json={"vm": "vm2", "devices": [AUDIO]}), 409, "conflict")
    error(api.post("/assign", json={"vm": "vm2", "devices": ["usb:dead:beef"]}), 404, "not_found")
    error(api.post("/assign", json={"vm": "vm2", "devices": ["bogus!"]}), 400, "bad_request")
    got = api.post("/assign", json={"vm": "vm2", "devices": ["nvme"], "numa": 1, "numa_policy": "prefer",
                                    "vm_uuid": "8f2e9b0a-4c1d-4e2f-9a3b-5c6d7e8f9a0b", "bind": False}).json()
    assert got["assignments"][0]["vm_uuid"] == "8f2e9b0a-4c1d-4e2f-9a3b-5c6d7e8f9a0b" and got["bound"] == []
    assert field_of(api.post("/assign", json={"devices": [GPU]})) == ["vm"]
    assert field_of(api.post("/assign", json={"vm": "vm 1", "devices": [GPU]})) == ["vm"]
    assert field_of(api.post("/assign", json={"vm": "vm3", "devices": [GPU], "numa": -1})) == ["numa"]
    assert field_of(api.post("/assign", json={"vm": "vm3", "devices": [GPU], "vm_uuid": "x"})) == ["vm_uuid"]
    doc = api.get("/assignments").json()
    assert {(a["vm"], a["device"]) for a in doc["assignments"]} >= {("vm1", "usb:1-2"), ("vm2", got["assignments"][0]
                                                                                         ["device"])}
    assert {v["vm"]: v["status"] for v in doc["vms"]} == {"vm1": "not_running", "vm2": "not_running"}
    assert [a["vm"] for a in api.get("/assignments", params={"vm": "vm2"}).json()["assignments"]] == ["vm2"]
    out = api.post("/release", json={"vm": "vm1", "devices": ["usb:1-2"]}).json()
    assert out == {"schema": 1, "vm": "vm1", "released": ["usb:1-2"]}
    out = api.post("/release", json={"vm": "vm1", "restore": True}).json()
    assert sorted(out["released"]) == [f"pci:{GPU}", f"pci:{AUDIO}"] and host.driver(GPU) == "nouveau"
    error(api.post("/release", json={"vm": "vm1"}), 404, "not_found")
    error(api.post("/release", json={"vm": "vm2", "devices": ["usb:1-1.1"]}), 404, "not_found")
    assert field_of(api.post("/release", json={"vm": "vm2", "devices": []})) == ["devices"]
    history = api.get("/assignments", params={"all": True}).json()["assignments"]
    assert {a["device"] for a in history if a["vm"] == "vm1" and a["state"] == "released"} == {
        f"pci:{GPU}", f"pci:{AUDIO}", "usb:1-2"}


def test_16_concurrent_clients_never_get_the_same_device(host):
    app = create_app(host.root, kernel=host.kernel, token=TOKEN, udev=False)
    with serving(app) as (c, srv):
        base = str(c.base_url)
        results: dict[str, list] = {"one": [], "any": []}
        barrier = threading.Barrier(16)

        def client(i: int) -> None:
            with httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as mine:
                barrier.wait()
                r = mine.post("/assign", json={"vm": f"vm{i}", "devices": [GPU]})
                results["one"].append((i, r.status_code, r.json()))
                barrier.wait()
                while True:  # then everyone grabs "any free GPU" until none is left
                    r = mine.post("/assign", json={"vm": f"vm{i}", "devices": ["gpu"], "bind": False})
                    if r.status_code != 200:
                        assert r.status_code == 409 and r.json()["code"] == "conflict", r.text
                        break
                    results["any"].append((i, [a["device"] for a in r.json()["assignments"]]))

        # futures: an assertion or error in any client re-raises here (.result()), failing the test
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(client, i) for i in range(16)]
            for f in futures:
                f.result(timeout=120)
        statuses = sorted(s for _, s, _ in results["one"])
        assert statuses == [200] + [409] * 15, statuses
        winner = next(i for i, s, _ in results["one"] if s == 200)
        holders = {a.device: a.vm for a in open_store(host.session).assignments()}
        assert holders[f"pci:{GPU}"] == holders[f"pci:{AUDIO}"] == f"vm{winner}"
        # zero doubles: every device is held by one VM at most, in the store and in what the clients were told
        active = open_store(host.session).assignments()
        devices = [a.device for a in active]
        assert len(devices) == len(set(devices))
        told = [d for _, ds in results["any"] for d in ds]
        assert len(told) == len(set(told)) and told
        gpus = {d["identity"] for d in open_store(host.session).devices() if d["kind"] in ("gpu", "gpu-companion")}
        assert set(told) <= gpus and f"pci:{GPU}" not in told
        assert {a.vm for a in active if a.device in told} <= {f"vm{i}" for i in range(16)}


# -- attach / detach over QMP -------------------------------------------------------------------------------------
@pytest.mark.skipif(not qemu_proc.available(), reason="qemu-system-x86_64 not installed")
def test_attach_and_detach_a_usb_device(api, host, tmp_path):
    vm = qemu_proc.QemuProc(tmp_path, ["-device", "pcie-root-port,id=rp1,chassis=1",
                                       "-device", "qemu-xhci,id=xhci,bus=rp1"])
    try:
        api.post("/assign", json={"vm": "vm1", "devices": ["usb:1-1.3"]}).raise_for_status()
        r = api.post("/attach", json={"vm": "vm1", "devices": ["usb:1-1.3"], "qmp": vm.socket})
        assert r.status_code == 200, r.text
        assert r.json()["attached"][0]["ids"]
        assert [a["state"] for a in api.get("/assignments").json()["assignments"]] == ["attached"]
        r = api.post("/detach", json={"vm": "vm1", "devices": ["usb:1-1.3"], "qmp": vm.socket, "keep": True})
        assert r.status_code == 200, r.text
        assert [a["state"] for a in api.get("/assignments").json()["assignments"]] == ["reserved"]
        # a spec the VM does not hold, and a QMP failure: what the attach assigned on its way is released again
        error(api.post("/attach", json={"vm": "vm1", "devices": ["usb:1-2"], "qmp": vm.socket,
                                        "port": "nonexistent"}), 400, "bad_request")
        assert host.held("vm1") == ["usb:1-1.3"]
    finally:
        vm.stop()


def test_attach_bad_input(api, tmp_path):
    api.post("/assign", json={"vm": "vm1", "devices": ["usb:1-1.3"]}).raise_for_status()
    error(api.post("/attach", json={"vm": "vm1", "devices": ["usb:1-1.3"], "qmp": str(tmp_path / "none.sock")}),
          404, "not_found")
    (tmp_path / "file").write_text("")
    error(api.post("/attach", json={"vm": "vm1", "devices": ["usb:1-1.3"], "qmp": str(tmp_path / "file")}),
          400, "bad_request")
    assert field_of(api.post("/attach", json={"vm": "vm1", "devices": ["usb:1-1.3"]})) == ["qmp"]
    assert field_of(api.post("/attach", json={"vm": "vm1", "devices": ["usb:1-1.3"], "qmp": "rel.sock"})) == ["qmp"]
    error(api.post("/detach", json={"vm": "vm1", "devices": ["usb:1-1.3"], "qmp": str(tmp_path / "none.sock")}),
          404, "not_found")
    assert field_of(api.post("/detach", json={"vm": "vm1", "devices": [], "qmp": "/x"})) == ["devices"]


# -- reconcile ----------------------------------------------------------------------------------------------------
def test_reconcile_marks_a_device_gone_from_the_host_as_lost(api, host):
    api.post("/assign", json={"vm": "vm1", "devices": ["0000:87:00.0"]}).raise_for_status()
    for fn in ("0000:87:00.0", "0000:87:00.1"):  # the GPU fell off the bus, its audio function with it
        host.builder.remove_pci(fn)
    rep = api.post("/reconcile", json={}).json()
    assert rep["inventory"]["lost"] == ["pci:0000:87:00.0", "pci:0000:87:00.1"]
    lost = {d["identity"]: d for d in rep["lost"]}
    assert lost["pci:0000:87:00.0"]["held_by"] == "vm1" and lost["pci:0000:87:00.0"]["kind"] == "gpu"
    assert lost["pci:0000:87:00.0"]["vendor"] == "10de" and lost["pci:0000:87:00.0"]["device"] == "1b06"
    doc = api.get("/devices").json()
    assert "0000:87:00.0" not in {d["id"] for d in doc["devices"]}
    assert [d["identity"] for d in doc["lost"]] == ["pci:0000:87:00.0", "pci:0000:87:00.1"]
    assert [d["identity"] for d in api.get("/devices", params={"kind": "gpu"}).json()["lost"]] == [
        "pci:0000:87:00.0", "pci:0000:87:00.1"]
    metrics = api.get("/metrics").text
    assert 'passthru_devices{kind="gpu",state="lost"} 1' in metrics and "passthru_lost_devices 2" in metrics
    assert api.get("/reconcile").json()["started"] == rep["started"]
    assert api.get("/events").json()["changes"][-1]["lost"] == ["pci:0000:87:00.0", "pci:0000:87:00.1"]
    error(api.post("/assign", json={"vm": "vm2", "devices": ["0000:87:00.0"]}), 404, "not_found")
    assert field_of(api.post("/reconcile", json={"release_gone": "yes"})) == ["release_gone"]


def test_reconcile_reapplies_persisted_bindings(api, host):
    api.post("/bind", json={"addresses": [GPU], "group": True, "persist": True}).raise_for_status()
    k = host.kernel
    for a in (GPU, AUDIO):  # "reboot": the kernel forgot the override and bound the native drivers
        k._unlink(a, "vfio-pci")
        Path(host.session.host.sys, "bus/pci/devices", a, "driver_override").write_text("(null)\n")
        k._link(a, k.native[a])
    rep = api.post("/reconcile").json()
    assert rep["ok"] and host.driver(GPU) == host.driver(AUDIO) == "vfio-pci"
    assert [d["status"] for d in rep["bindings"]["devices"] if d["status"] == "changed"] == ["changed", "changed"]


def test_reconcile_flags_and_releases_vms_whose_qemu_is_gone(api, host):
    uuid = "8f2e9b0a-4c1d-4e2f-9a3b-5c6d7e8f9a0b"
    proc = Path(host.root, "proc", "4242")
    proc.mkdir()
    (proc / "cmdline").write_bytes(b"\0".join([b"/usr/bin/qemu-system-x86_64", b"-name",
                                               b"guest=vm1,debug-threads=on", b"-uuid", uuid.encode(), b""]))
    api.post("/assign", json={"vm": "vm1", "devices": ["usb:1-2"], "vm_uuid": uuid}).raise_for_status()
    api.post("/assign", json={"vm": "vm2", "devices": ["usb:1-1.3"]}).raise_for_status()
    vms = {v["vm"]: v for v in api.get("/assignments").json()["vms"]}
    assert (vms["vm1"]["status"], vms["vm1"]["pid"]) == ("running", 4242)
    assert vms["vm2"]["status"] == "not_running"  # assigned, never started: not "gone"
    shutil.rmtree(proc)  # QEMU died
    rep = api.post("/reconcile", json={"release_gone": False}).json()
    by = {v["vm"]: v for v in rep["vms"]}
    assert (by["vm1"]["status"], by["vm1"]["released"]) == ("gone", False)
    assert (by["vm2"]["status"], by["vm2"]["released"]) == ("not_running", False)
    assert "passthru_vms{status=\"gone\"} 1" in api.get("/metrics").text
    rep = api.post("/reconcile", json={"release_gone": True}).json()
    assert {v["vm"]: v["released"] for v in rep["vms"]} == {"vm1": True, "vm2": False}
    assert host.held() == ["usb:1-1.3"]


def test_qemu_command_lines():
    assert parse_qemu_argv(["/usr/bin/qemu-system-x86_64", "-name", "guest=vm1,debug-threads=on", "-uuid",
                            "8F2E9B0A-4C1D-4E2F-9A3B-5C6D7E8F9A0B"]) == ("vm1", "8f2e9b0a-4c1d-4e2f-9a3b-5c6d7e8f9a0b")
    assert parse_qemu_argv(["qemu-kvm", "-name", "vm2,process=qemu:vm2"]) == ("vm2", None)
    assert parse_qemu_argv(["qemu-system-aarch64", "--name=a,,b"]) == ("a,b", None)
    assert parse_qemu_argv(["qemu-system-x86_64", "-m", "1G"]) == (None, None)
    assert parse_qemu_argv(["/bin/bash", "-name", "vm1"]) is None


# -- hot plug -----------------------------------------------------------------------------------------------------
def _unplug_usb(b, port_path: str) -> None:
    shutil.rmtree(b.usb.pop(port_path))
    for name in [k for k in b.usb if k.startswith(port_path + ":")]:
        b.usb.pop(name)
    for dirpath, dirnames, filenames in os.walk(b.root):
        for name in dirnames + filenames:
            p = f"{dirpath}/{name}"
            if os.path.islink(p) and not os.path.exists(p):
                os.unlink(p)


def test_hotplug_events_update_the_inventory_live(host):
    events = QueueSource()
    # debounce 0.5 s: the events below are put in a tight loop, but a loaded machine may pause this thread longer
    # than 0.1 s between two of them and split the burst
    app = create_app(host.root, kernel=host.kernel, token=TOKEN, udev=events, debounce=0.5)
    with serving(app) as (c, _):
        g = c.get("/health").json()["generation"]
        c.post("/assign", json={"vm": "vm1", "devices": ["usb:1-1.3"]}).raise_for_status()
        g = c.get("/health").json()["generation"]
        # the FTDI adapter is re-plugged into another port of the hub
        _unplug_usb(host.builder, "1-1.3")
        host.builder.usb_device("1-1.2", 0x0403, 0x6001, manufacturer="FTDI", product="FT232R USB UART",
                                serial="A50285BI", bcd_device=0x0600, interfaces=[(0xFF, "ftdi_sio", 0xFF, 0xFF)])
        for ev in (("remove", "usb", "1-1.3:1.0"), ("remove", "usb", "1-1.3"), ("add", "usb", "1-1.2"),
                   ("add", "usb", "1-1.2:1.0"), ("add", "tty", "ttyUSB0"), ("add", "net", "eth9")):
            events.put(*ev)
        g2 = wait_generation(c, g)
        assert g2 == g + 1  # one burst, one refresh
        doc = c.get("/devices").json()
        ports = {d["id"] for d in doc["devices"] if d["bus"] == "usb"}
        assert "1-1.2" in ports and "1-1.3" not in ports
        # the old port is listed as lost, with the VM holding it (the adapter's tty went with it)
        assert {(d["identity"], d["held_by"]) for d in doc["lost"]} == {("usb:1-1.3", "vm1"),
                                                                         ("serial:/dev/ttyUSB0", None)}
        change = c.get("/events").json()["changes"][-1]
        assert change["moved"] == [{"from": "usb:1-1.3", "to": "usb:1-1.2", "ids": "0403:6001",
                                    "serial": "A50285BI", "held_by": "vm1"}]
        assert change["reason"].startswith("hot-plug: 5 event(s)")
        # the ConnectX-5 port 0 goes from 8 VFs to 4
        pf = "0000:3b:00.0"
        vfs = next(d for d in doc["devices"] if d["id"] == pf)["vfs"]
        for vf in vfs[4:]:  # the kernel changes first, then sends its uevents (the refresh must see the new count)
            host.builder.remove_pci(vf)
        Path(host.session.host.sys, "bus/pci/devices", pf, "sriov_numvfs").write_text("4\n")
        for vf in vfs[4:]:
            events.put("remove", "pci", vf)
        wait_generation(c, g2)
        doc = c.get("/devices").json()
        dev = next(d for d in doc["devices"] if d["id"] == pf)
        assert dev["sriov"]["numvfs"] == 4 and dev["vfs"] == vfs[:4]
        assert {d["identity"] for d in doc["lost"]} >= {f"pci:{vf}" for vf in vfs[4:]}
        m = c.get("/metrics").text
        assert 'passthru_hotplug_events_total{subsystem="pci",action="remove"} 4' in m
        assert 'passthru_hotplug_events_total{subsystem="net"' not in m  # not ours: ignored


# -- vGPU and SR-IOV VFs ------------------------------------------------------------------------------------------
T4 = "0000:af:00.0"
U1 = "0b8a2f5e-3c1d-4e2f-9a7b-6c5d4e3f2a10"


def test_vgpu_endpoints(host):
    fake = pytest.importorskip("test_vgpu").FakeMdevKernel  # the mdev core's stand-in (tests/test_vgpu.py)
    app = create_app(host.root, kernel=fake(host.session.host), token=TOKEN, udev=False)
    with serving(app) as (c, _):
        types = c.get("/vgpu/types").json()
        t4 = next(p for p in types["parents"] if p["parent"] == T4)
        assert {t["id"] for t in t4["types"]} >= {"nvidia-222", "nvidia-224"}
        assert [p["parent"] for p in c.get("/vgpu/types", params={"parent": T4}).json()["parents"]] == [T4]
        assert [v["id"] for v in c.get("/vgpu/instances").json()["vgpus"]] == [fx.T4_MDEV_UUID]
        body = {"parent": T4, "type": "nvidia-222", "uuid": U1}
        dry = c.post("/vgpu/instances", json={**body, "dry_run": True}).json()
        assert dry["vgpus"][0]["status"] == "would create"
        made = c.post("/vgpu/instances", json={**body, "persist": True}).json()
        assert made["ok"] and made["vgpus"][0]["status"] == "created" and made["vgpus"][0]["persisted"]
        assert U1 in {v["id"] for v in c.get("/vgpu/instances").json()["vgpus"]}
        # the inventory was refreshed: the new instance is a device a VM can be given
        assert f"mdev:{U1}" in {d["identity"] for d in open_store(host.session).devices(state="present")}
        assert c.delete(f"/vgpu/instances/{U1}").json()["vgpus"][0]["status"] == "removed"
        error(c.delete(f"/vgpu/instances/{U1}"), 404, "not_found")
        error(c.post("/vgpu/instances", json={"parent": T4, "type": "no-such-type"}), 400, "bad_request")
        error(c.post("/vgpu/instances", json={"parent": "0000:99:00.0", "type": "nvidia-222"}), 404, "not_found")
        assert field_of(c.post("/vgpu/instances", json={"type": "nvidia-222", "uuid": "x"})) == ["uuid"]
        assert field_of(c.post("/vgpu/instances", json={"type": "nvidia-222", "placement": "any"})) == ["placement"]
        assert field_of(c.delete("/vgpu/instances/not a uuid")) == ["ident"]


def test_vgpu_on_a_fixture_root_without_a_kernel_is_refused(api):
    error(api.post("/vgpu/instances", json={"parent": T4, "type": "nvidia-222"}), 400, "bad_request")
    assert api.get("/reconcile").json()["vgpu"] == {"schema": 1, "action": "start-persisted", "ok": True,
                                                     "error": None, "vgpus": []}


def test_vf_endpoints(api, host):
    pf = "0000:3b:00.0"
    doc = api.get("/vf").json()
    assert pf in {p["pf"] for p in doc["pfs"]}
    one = api.get("/vf", params={"pf": pf}).json()["pfs"]
    assert [p["numvfs"] for p in one] == [8] and len(one[0]["vfs"]) == 8
    dry = api.post("/vf/count", json={"pf": pf, "count": 4, "force": True, "dry_run": True}).json()
    assert (dry["status"], dry["before"], dry["after"]) == ("dry-run", 8, 4)
    error(api.post("/vf/count", json={"pf": pf, "count": 4}), 400, "bad_request")  # VFs in use: refused
    error(api.post("/vf/count", json={"pf": pf, "count": 999}), 400, "bad_request")  # > sriov_totalvfs
    assert field_of(api.post("/vf/count", json={"pf": pf})) == ["count"]
    assert field_of(api.post("/vf/count", json={"pf": pf, "count": 2, "restore": True})) == ["count"]
    assert field_of(api.post("/vf/count", json={"pf": pf, "count": -1})) == ["count"]
    s = api.post("/vf/set", json={"pf": pf, "vf": 2, "mac": "52:54:00:12:34:56", "vlan": 100, "dry_run": True})
    assert s.status_code == 200, s.text
    assert s.json()["status"] == "dry-run" and s.json()["messages"]
    error(api.post("/vf/set", json={"pf": pf, "vf": 2, "vlan": 100}), 400, "bad_request")  # not the live host
    assert field_of(api.post("/vf/set", json={"pf": pf, "vf": 2})) == ["mac"]
    assert field_of(api.post("/vf/set", json={"pf": pf, "vf": 2, "mac": "nope"})) == ["mac"]
    assert field_of(api.post("/vf/set", json={"pf": pf, "vf": 2, "qos": 9})) == ["qos"]
    error(api.post("/vf/reset", json={"pf": pf, "vf": 2}), 400, "bad_request")  # nothing recorded
    assert host.kernel.writes == []


def test_udev_source_events_reach_the_watcher(monkeypatch):
    """UdevSource reads pyudev's *kernel* netlink monitor (not udevd's), turns its devices into HotplugEvents (an
    action-less device is a "change"), an ENOBUFS into OVERFLOW, and the debounced watcher gets them as one burst;
    the monitor is stopped with the watcher. Here pyudev's monitor is a stand-in fed by hand; the real kernel's
    uevents are tests/lab/test_lab_discovery.py::test_kernel_uevents_reach_the_watcher."""
    import queue
    from types import SimpleNamespace

    import pyudev

    from passthru.agent.events import OVERFLOW, HotplugEvent, UdevSource, Watcher

    class Monitor:
        def __init__(self) -> None:
            self.q: queue.Queue = queue.Queue()
            self.calls: list[str] = []

        def start(self) -> None:
            self.calls.append("start")

        def stop(self) -> None:
            self.calls.append("stop")

        def poll(self, timeout: float):
            try:
                item = self.q.get(timeout=timeout)
            except queue.Empty:
                return None
            if isinstance(item, BaseException):
                raise item
            return item

    mon = Monitor()
    sources: list[str] = []
    monkeypatch.setattr(pyudev.Monitor, "from_netlink",
                        staticmethod(lambda ctx, source="udev": (sources.append(source), mon)[1]))
    bursts: list = []
    got = threading.Event()
    w = Watcher(UdevSource(), lambda evs: (bursts.append(evs), got.set()), debounce=0.5)
    assert sources == ["kernel"] and mon.calls == ["start"]
    mon.q.put(SimpleNamespace(action="change", subsystem="pci", sys_name="0000:01:00.0"))
    mon.q.put(SimpleNamespace(action=None, subsystem="usb", sys_name="1-1.3"))
    mon.q.put(SimpleNamespace(action="add", subsystem="block", sys_name="sda"))  # not relevant: dropped
    mon.q.put(OSError(errno.ENOBUFS, "No buffer space available"))
    w.start()
    try:
        assert got.wait(10), "no burst within 10 s"
    finally:
        w.stop()
    assert bursts == [[HotplugEvent("change", "pci", "0000:01:00.0"), HotplugEvent("change", "usb", "1-1.3"),
                       OVERFLOW]]
    assert mon.calls == ["start", "stop"]


# -- metrics ------------------------------------------------------------------------------------------------------
def test_metrics_are_prometheus_text(api):
    api.post("/assign", json={"vm": "vm1", "devices": ["usb:1-2"]}).raise_for_status()
    api.post("/assign", json={"vm": "vm2", "devices": ["usb:1-2"]})  # a conflict: counted as an error
    r = api.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    sample = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+]+$')
    families = set()
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            families.add(line.split()[2])
        elif not line.startswith("#"):
            assert sample.match(line), line
    assert {"passthru_devices", "passthru_assignments", "passthru_errors_total", "passthru_last_reconcile_timestamp_"
            "seconds", "passthru_last_reconcile_success", "passthru_inventory_generation"} <= families
    assert 'passthru_devices{kind="gpu",state="present"} 9' in r.text
    assert 'passthru_assignments{state="reserved"} 1' in r.text
    assert 'passthru_errors_total{source="api",code="conflict"} 1' in r.text
    assert "passthru_last_reconcile_success 1" in r.text
    assert 'passthru_http_requests_total{method="POST",status="409"} 1' in r.text


# -- the schema ---------------------------------------------------------------------------------------------------
def test_the_committed_openapi_schema_is_current():
    from passthru.agent.app import openapi_document

    committed = json.loads((DOCS / "openapi.json").read_text())
    assert committed == openapi_document(), ("docs/openapi.json is stale: regenerate it with "
                                             "`python -m passthru.agent.app > docs/openapi.json`")
    paths = committed["paths"]
    for path, method in (("/devices", "get"), ("/groups", "get"), ("/usb", "get"), ("/serial", "get"),
                         ("/doctor", "get"), ("/bind", "post"), ("/restore", "post"), ("/models", "get"),
                         ("/models", "post"), ("/models/{name}", "delete"), ("/assignments", "get"),
                         ("/assign", "post"), ("/release", "post"), ("/attach", "post"), ("/detach", "post"),
                         ("/reconcile", "post"), ("/metrics", "get")):
        assert method in paths[path], (method, path)


class _Target:
    """The ASGI app under fuzz: the schema loads from an app on no host; each test swaps in one on a fresh fixture."""

    def __init__(self) -> None:
        self.app = create_app("/nonexistent", udev=False, reconcile_on_start=False)

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)


_target = _Target()
fuzz_schema = schemathesis.openapi.from_asgi("/openapi.json", _target)


@pytest.fixture
def fuzz_host(host):
    _target.app = create_app(host.root, kernel=host.kernel, udev=False)
    yield host
    _target.app.state.agent.stop()


@fuzz_schema.parametrize()
@hypothesis.settings(max_examples=40, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_the_api_survives_a_fuzz_from_its_schema(case, fuzz_host):
    """Every operation, with parameters and bodies generated from the OpenAPI schema (valid and invalid ones),
    against a fixture host with the fake kernel: never a 500, every answer as the schema documents it. Excluded:
    "schema-valid data must be accepted" - the service layer answers 400/409 to well-formed requests that name
    nothing on this host ("gpu0" is not a kind), as it must."""
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    case.call_and_validate(excluded_checks=[positive_data_acceptance])
