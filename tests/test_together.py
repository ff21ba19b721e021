"""Devices chosen together (service/together.py): `assign VM gpu --count N --same-switch/--same-numa` on a GPU node
fixture (8 A100s, 4 behind each of 2 PCIe switches, one switch per NUMA node) and on gpu_server (GPUs each on its
own root port): the smallest fitting switch, the best split named in a refusal and taken only when allowed, counts
and specs checked before anything is claimed."""

from __future__ import annotations

import json

import pytest

import sysfs_fixtures as fx
from cluster_fixtures import make_gpu_node
from fake_kernel import FakeKernel
from passthru.cli import main as cli_main
from passthru.errors import UsageError
from passthru.inventory import ClaimError
from passthru.service.assign import assign, open_store
from passthru.service.session import Session

SWITCH0 = {"pci:0000:18:00.0", "pci:0000:19:00.0", "pci:0000:1a:00.0", "pci:0000:1b:00.0"}  # behind 10:00.0, NUMA 0
SWITCH1 = {"pci:0000:98:00.0", "pci:0000:99:00.0", "pci:0000:9a:00.0", "pci:0000:9b:00.0"}  # behind 90:00.0, NUMA 1


@pytest.fixture
def node(tmp_path):
    make_gpu_node(tmp_path / "node")
    s = Session(str(tmp_path / "node"), None, None)
    return s, FakeKernel(s.host)


def held(s: Session, vm: str) -> set[str]:
    return {a.device for a in open_store(s).assignments(vm)}


def test_picks_come_from_one_switch_and_the_next_vm_gets_the_other(node):
    s, k = node
    res = assign(s, "vm1", ["gpu"], count=3, same_switch=True, kernel=k)
    first = {a.device for a in res.assignments}
    assert len(first) == 3 and (first <= SWITCH0 or first <= SWITCH1)
    # 1 left behind that switch, 4 behind the other: the next 2 must come from the other switch
    res = assign(s, "vm2", ["gpu"], count=2, same_switch=True, same_numa=True, kernel=k)
    second = {a.device for a in res.assignments}
    assert len(second) == 2 and not second & first
    assert second <= (SWITCH1 if first <= SWITCH0 else SWITCH0)


def test_smallest_fitting_switch_first(node):
    s, k = node
    assign(s, "big", ["0000:98:00.0", "0000:99:00.0"], kernel=k)  # switch 1 has 2 left, switch 0 has 4
    res = assign(s, "vm1", ["gpu"], count=2, same_switch=True, kernel=k)
    assert {a.device for a in res.assignments} == {"pci:0000:9a:00.0", "pci:0000:9b:00.0"}


def test_no_switch_holds_them_all_the_best_split_is_named_and_nothing_is_claimed(node):
    s, k = node
    with pytest.raises(ClaimError, match=r"best split: 0000:18:00.0, 0000:19:00.0, 0000:1a:00.0, 0000:1b:00.0 "
                                         r"\(behind 0000:10:00.0, NUMA 0\); 0000:98:00.0 \(behind 0000:90:00.0, "
                                         r"NUMA 1\); pass --allow-split"):
        assign(s, "vm1", ["gpu"], count=5, same_switch=True, same_numa=True, kernel=k)
    assert held(s, "vm1") == set()
    res = assign(s, "vm1", ["gpu"], count=5, same_switch=True, allow_split=True, kernel=k)
    assert {a.device for a in res.assignments} == SWITCH0 | {"pci:0000:98:00.0"}
    with pytest.raises(ClaimError, match="3 free, 4 asked"):
        assign(s, "vm2", ["gpu"], count=4, same_switch=True, allow_split=True, kernel=k)


def test_gpu_server_each_gpu_on_its_own_root_port(tmp_path):
    """No two GTX 1080 Ti share a switch there; on NUMA node 0 two are free (18:00.0 on nvidia, 19:00.0 on
    vfio-pci): --same-numa takes both, with their audio functions."""
    root = str(fx.gpu_server(tmp_path / "gs"))
    s = Session(root, None, None)
    k = FakeKernel(s.host)
    res = assign(s, "vm1", ["gpu"], count=2, same_numa=True, numa=0, kernel=k)
    assert {a.device for a in res.assignments} == {"pci:0000:18:00.0", "pci:0000:18:00.1", "pci:0000:19:00.0",
                                                   "pci:0000:19:00.1"}
    assert res.bound == ["0000:18:00.0", "0000:18:00.1"]


@pytest.mark.parametrize("args, msg", [
    (["gpu", "--count", "0"], "--count must be 1 or more, got 0"),
    (["0000:18:00.0", "--count", "2"], "choose devices by kind or model"),
    (["gpu", "--allow-split"], "--allow-split goes with --same-switch or --same-numa"),
    (["gpu", "--count", "9", "--same-switch"], "9 asked"),
])
def test_bad_requests_are_one_line_and_claim_nothing(node, capsys, args, msg):
    s, _k = node
    assert cli_main(["--root", s.host.base, "assign", "vm9", *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1
    assert not s.has_inventory() or held(s, "vm9") == set()


def test_the_cli_and_its_json(node, capsys):
    s, _k = node
    assert cli_main(["--root", s.host.base, "assign", "vm1", "gpu", "--count", "2", "--same-switch", "--dry-run",
                     "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    got = {a["device"] for a in doc["assignments"]}
    assert doc["dry_run"] and len(got) == 2 and (got <= SWITCH0 or got <= SWITCH1)
    with pytest.raises(UsageError):
        assign(s, "vm1", ["gpu"], count=True, same_switch=True)
