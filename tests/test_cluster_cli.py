"""`passthru cluster ...` through the real CLI on a real PostgreSQL: a host (the gpu_server fixture) joins and
publishes its devices, VMs are placed, listed, released, the host fenced; bad input is one line, exit 2, and
reserves nothing; the tables fit 80 columns; `passthru devices` does not load the database libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import sysfs_fixtures as fx
from passthru.cli import main as cli_main
from passthru.inventory.cluster import ClusterStore, parse_want

from cluster_fixtures import gpu_host


@pytest.fixture
def root(tmp_path):
    return str(fx.gpu_server(tmp_path / "gs"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def js(capsys, *argv: str) -> dict:
    rc, out, err = run(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


@pytest.fixture
def joined(capsys, root, pg_url):
    doc = js(capsys, "--root", root, "cluster", "join", "--db", pg_url, "--name", "gs1", "--address", "127.0.0.1:8470")
    return root, pg_url, doc


def test_join_place_list_release_fence(capsys, joined):
    root, url, doc = joined
    assert doc["host"] == "gs1" and doc["epoch"] == 1 and doc["devices"] >= 4
    db = ("--root", root, "cluster")
    [h] = js(capsys, *db, "hosts", "--db", url)["hosts"]
    assert (h["name"], h["state"], h["epoch"], h["devices"]) == ("gs1", "up", 1, doc["devices"])
    devs = js(capsys, *db, "devices", "--db", url)["devices"]
    gpus = [d for d in devs if d["kind"] == "gpu"]
    assert {d["identity"] for d in gpus} >= {"pci:0000:18:00.0", "pci:0000:19:00.0"}
    ids = {d["identity"] for d in devs}
    assert "pci:0000:18:00.1" not in ids  # the audio companion goes with its GPU
    assert not ids & {"pci:0000:02:00.0", "pci:0000:00:14.0", "pci:0000:00:17.0"}  # boot VGA, USB, SATA: the host's
    assert all(d["numa_node"] == 0 for d in gpus[:2])
    placed = js(capsys, *db, "place", "vm1", "gpu", "--count", "2", "--same-numa", "--db", url)
    assert placed["host"] == "gs1" and len(placed["devices"]) == 2 and placed["state"] == "reserved"
    free = js(capsys, *db, "devices", "--free", "--db", url)["devices"]
    pfs_with_vfs = {d["parent"] for d in devs if d["parent"]}
    assert pfs_with_vfs == {"pci:0000:3b:00.0", "pci:0000:3b:00.1", "pci:0000:d8:00.0"}
    assert len(free) == len(devs) - 2 - len(pfs_with_vfs)  # a PF whose VFs are published goes as its VFs
    [a1, a2] = js(capsys, *db, "allocations", "--db", url)["allocations"]
    assert {a1["vm"], a2["vm"]} == {"vm1"}
    conf = js(capsys, *db, "confirm", "vm1", "--epoch", "1", "--name", "gs1", "--db", url)
    assert len(conf["confirmed"]) == 2
    rc, _, err = run(capsys, *db, "confirm", "vm1", "--epoch", "0", "--name", "gs1", "--db", url)
    assert rc == 2 and "not 0" in err
    rel = js(capsys, *db, "release", "vm1", "--db", url)
    assert len(rel["released"]) == 2
    assert js(capsys, *db, "allocations", "--db", url)["allocations"] == []
    assert len(js(capsys, *db, "allocations", "--all", "--db", url)["allocations"]) == 2
    js(capsys, *db, "place", "vm2", "nvme", "--db", url)
    out = js(capsys, *db, "fence", "gs1", "--db", url)
    assert out == {"schema": 1, "host": "gs1", "epoch": 2, "released": 1}
    assert js(capsys, *db, "hosts", "--db", url)["hosts"][0]["state"] == "down"
    again = js(capsys, *db, "join", "--db", url, "--name", "gs1")
    assert again["epoch"] == 3
    sync = js(capsys, *db, "sync", "--epoch", "3", "--name", "gs1", "--db", url)
    assert sync["added"] == sync["lost"] == []


@pytest.mark.parametrize("argv, msg", [
    (["place", "vm1", "gpu", "--count", "0"], "--count must be 1 or more"),
    (["place", "vm1", "h100"], "spec 'h100' matches no device in the cluster"),
    (["place", "vm1", "gpu", "--host", "nowhere"], "no host named 'nowhere'"),
    (["place", "vm1", "gpu", "--count", "99"], "no room for VM 'vm1'"),
    (["place", "vm1", "usb:0403:6001"], "the cluster places PCI devices"),
    (["fence", "nowhere"], "no host named 'nowhere'"),
    (["release", "vm9"], "holds no devices"),
])
def test_bad_input_is_one_line_exit_2_and_reserves_nothing(capsys, joined, argv, msg):
    root, url, _ = joined
    rc, out, err = run(capsys, "--root", root, "cluster", *argv, "--db", url)
    assert rc == 2 and out == "" and msg in err and err.count("\n") == 1 and err.startswith("passthru: ")
    assert ClusterStore(url).allocations(live=False) == []


def test_a_wrong_or_missing_database_url_is_one_line_exit_2(capsys, tmp_path, root, monkeypatch, pg_server):
    monkeypatch.delenv("PASSTHRU_DB_URL", raising=False)
    g = ("--root", root, "--config-dir", str(tmp_path / "etc"))
    cases = [
        ([], "no cluster database: pass --db"),
        (["--db", f"postgresql+psycopg://postgres@/postgres?host={tmp_path}"], "cannot reach the cluster database"),
        (["--db", pg_server.url("nosuchdb")], "nosuchdb"),
        (["--db", "mysql+nosuchdriver://x@y/z"], "not a database URL passthru can use"),
    ]
    for extra, msg in cases:
        rc, out, err = run(capsys, *g, "cluster", "hosts", *extra)
        assert rc == 2 and out == "" and msg in err and err.count("\n") == 1, (extra, err)


def test_the_url_comes_from_the_environment_or_the_config_file(capsys, tmp_path, root, monkeypatch, pg_url):
    ClusterStore(pg_url).join("h1", None, gpu_host(2))
    monkeypatch.setenv("PASSTHRU_DB_URL", pg_url)
    assert [h["name"] for h in js(capsys, "--root", root, "cluster", "hosts")["hosts"]] == ["h1"]
    monkeypatch.delenv("PASSTHRU_DB_URL")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "cluster.toml").write_text(f'url = "{pg_url}"\n')
    doc = js(capsys, "--root", root, "--config-dir", str(etc), "cluster", "hosts")
    assert [h["name"] for h in doc["hosts"]] == ["h1"]


def test_cluster_tables_fit_80_columns(capsys, monkeypatch, pg_url, root):
    cs = ClusterStore(pg_url)
    cs.join("gpu-host-with-a-long-name-07.example.org", "10.200.300.400:8470", gpu_host())
    cs.place("a-vm-with-a-rather-long-name", [parse_want("a100")], count=3, same_switch=True)
    monkeypatch.setenv("COLUMNS", "80")
    for argv in (["hosts"], ["devices"], ["devices", "--free"], ["allocations"],
                 ["place", "vm2", "a100", "--count", "2"]):
        rc, out, err = run(capsys, "--root", root, "cluster", *argv, "--db", pg_url)
        assert rc == 0, err
        assert out.strip() and max(len(line) for line in out.splitlines()) <= 80, out
        assert "pci:0000:" in out or argv == ["hosts"]


def test_other_commands_do_not_load_the_database_libraries(root):
    code = ("import sys; from passthru.cli import main; main(['--root', sys.argv[1], 'devices', '--json']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'psycopg')), file=sys.stderr)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0 and p.stderr.strip() == "[]", p.stderr[-2000:]
