"""The cluster store and placement on SQLite and on a real PostgreSQL (tests/pg.py): join and epochs, placement by
kind/model/vendor:device with same NUMA node / same switch, refusals that reserve nothing, expiry, the old-epoch
confirmation refused, fencing, host states from heartbeats, lost devices, and the one-holder rule in the database.
The races and the PostgreSQL restart are in test_cluster_race.py."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from cluster_fixtures import A100, doubles, gpu_host, group_doubles, sriov_host
from passthru.errors import InventoryError, NotFoundError, UsageError
from passthru.inventory import ClaimError
from passthru.inventory.cluster import ClusterStore, StaleEpoch, parse_want
from passthru.inventory.schema import cluster_allocations


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/cluster.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def cs(url):
    s = ClusterStore(url)
    s.join("h1", "10.0.0.1:8470", gpu_host())
    s.join("h2", "10.0.0.2:8470", gpu_host(4))
    yield s
    s.close()


def want(*texts: str):
    return [parse_want(t) for t in texts]


def free(cs: ClusterStore) -> int:
    return len(cs.devices(free=True))


def test_join_registers_and_each_join_is_a_new_epoch(cs):
    hosts = {h["name"]: h for h in cs.hosts()}
    assert {n: (h["epoch"], h["state"], h["devices"], h["free"]) for n, h in hosts.items()} == {
        "h1": (1, "up", 9, 9), "h2": (1, "up", 5, 5)}
    assert cs.join("h1", "10.0.0.1:8470", gpu_host()) == 2
    assert cs.host("h1")["epoch"] == 2
    with pytest.raises(NotFoundError, match="no host named 'h9'"):
        cs.host("h9")
    with pytest.raises(UsageError, match="host name"):
        cs.join("bad name", None, [])


def test_place_two_on_one_numa_node_reserves_them(cs):
    got = cs.place("vm1", want("a100"), count=2, same_numa=True)
    assert got["state"] == "reserved" and len(got["devices"]) == 2
    assert len({d["numa_node"] for d in got["devices"]}) == 1
    assert got["host"] == "h2"  # the tightest fit: h2 has fewer free devices
    live = cs.allocations()
    assert {(a["vm"], a["host"], a["device"], a["state"]) for a in live} == {
        ("vm1", got["host"], d["identity"], "reserved") for d in got["devices"]}
    assert free(cs) == 14 - 2
    assert all(a["expires"] > a["created"] for a in live)


def test_same_switch_and_host_and_specs(cs):
    got = cs.place("vm1", want("gpu"), count=4, same_switch=True, host="h1")
    assert got["host"] == "h1" and len({d["switch"] for d in got["devices"]}) == 1
    ids = cs.place("vm2", want(f"{A100[0]:04x}:{A100[1]:04x}", "nic"), host="h1")
    assert sorted(d["kind"] for d in ids["devices"]) == ["gpu", "nic"]
    one = cs.place("vm3", want("0000:18:00.0"), host="h2")
    assert [d["identity"] for d in one["devices"]] == ["pci:0000:18:00.0"]
    # h2's 4 GPUs: 2 per switch, one taken by vm3; 2 more on one switch still fit, 3 do not
    assert cs.place("vm4", want("a100"), count=2, same_switch=True, host="h2")["host"] == "h2"
    with pytest.raises(ClaimError, match=r"no room for VM 'vm5': 3 x a100 on one PCIe switch on host .h2."):
        cs.place("vm5", want("a100"), count=3, same_switch=True, host="h2")


def test_nic_has_no_switch_so_same_switch_cannot_promise_it(cs):
    with pytest.raises(ClaimError, match="no room"):
        cs.place("vm1", want("nic"), same_switch=True)
    assert cs.place("vm1", want("nic"))["devices"][0]["kind"] == "nic"


@pytest.mark.parametrize("args, kw, err, msg", [
    (("vm1", ["h100"]), {}, ClaimError, "spec 'h100' matches no device in the cluster"),
    (("vm1", ["gpu"]), {"count": 0}, UsageError, "--count must be 1 or more"),
    (("vm1", ["gpu"]), {"host": "h9"}, NotFoundError, "no host named 'h9'"),
    (("vm1", ["gpu"]), {"count": 9}, ClaimError, "no room for VM 'vm1': 9 x gpu"),
    (("bad vm", ["gpu"]), {}, UsageError, "VM name"),
])
def test_refusals_reserve_nothing(cs, args, kw, err, msg):
    vm, specs = args
    with pytest.raises(err, match=msg):
        cs.place(vm, want(*specs), **kw)
    assert cs.allocations(live=False) == [] and free(cs) == 14


def test_bad_specs_are_usage_errors():
    for bad in ("usb:0403:6001", "GPU!", ""):
        with pytest.raises(UsageError):
            parse_want(bad)


def test_a_vm_places_once_then_releases(cs):
    cs.place("vm1", want("gpu"))
    with pytest.raises(ClaimError, match="already holds 1 device"):
        cs.place("vm1", want("gpu"))
    [r] = cs.release("vm1")
    assert free(cs) == 14
    with pytest.raises(NotFoundError, match="holds no devices"):
        cs.release("vm1")
    [a] = cs.allocations(live=False)
    assert (a["id"], a["state"], a["reason"]) == (r["id"], "released", "released")


def test_reservations_expire_unless_confirmed(url):
    cs = ClusterStore(url, reserve_ttl=1.0)  # long enough to confirm in on a loaded machine
    epoch = cs.join("h1", None, gpu_host())
    cs.place("vm1", want("gpu"), count=2)
    cs.place("vm2", want("gpu"), count=2)
    assert len(cs.confirm("h1", epoch, "vm2")) == 2
    time.sleep(1.2)
    assert cs.sweep()["expired"] == 2
    states = {(a["vm"], a["state"], a["reason"]) for a in cs.allocations(live=False)}
    assert states == {("vm1", "released", "expired"), ("vm2", "confirmed", None)}
    with pytest.raises(NotFoundError, match="no live reservation"):  # an expired one is not revived
        cs.confirm("h1", epoch, "vm1")
    assert free(cs) == 9 - 2
    # a placement notices expired reservations by itself
    cs.place("vm3", want("gpu"), count=6)
    time.sleep(1.2)
    assert len(cs.place("vm4", want("gpu"), count=6)["devices"]) == 6
    assert doubles(cs.allocations(live=False)) == []


def test_a_confirmation_with_an_old_epoch_is_refused(cs):
    cs.place("vm1", want("gpu"), host="h1")
    new = cs.join("h1", "10.0.0.1:8470", gpu_host())  # the agent restarted
    with pytest.raises(StaleEpoch, match="epoch 2, not 1"):
        cs.confirm("h1", new - 1, "vm1")
    assert cs.allocations()[0]["state"] == "reserved"
    assert cs.confirm("h1", new, "vm1")[0]["device"]
    assert cs.allocations()[0]["state"] == "confirmed" and cs.allocations()[0]["epoch"] == new
    with pytest.raises(StaleEpoch):
        cs.heartbeat("h1", new - 1)


def test_fence_releases_everything_on_the_host_and_takes_it_out(cs):
    cs.place("vm1", want("gpu"), count=2, host="h1")
    cs.confirm("h1", 1, "vm1")
    cs.place("vm2", want("gpu"), host="h1")
    cs.place("vm3", want("gpu"), host="h2")
    out = cs.fence("h1")
    assert out == {"host": "h1", "epoch": 2, "released": 3}
    assert {a["vm"] for a in cs.allocations()} == {"vm3"}
    assert {a["reason"] for a in cs.allocations(live=False) if a["host"] == "h1"} == {"fenced"}
    assert cs.host("h1")["state"] == "down"
    with pytest.raises(StaleEpoch):  # the fenced agent's word no longer counts
        cs.confirm("h1", 1, "vm2")
    with pytest.raises(ClaimError, match="host 'h1' is down"):
        cs.place("vm4", want("gpu"), host="h1")
    assert cs.place("vm4", want("gpu"))["host"] == "h2"
    with pytest.raises(NotFoundError):
        cs.fence("h9")
    assert cs.join("h1", None, gpu_host()) == 3 and cs.host("h1")["state"] == "up"


def test_stale_heartbeats_make_a_host_suspect_then_down_and_confirmed_allocations_stay(url):
    cs = ClusterStore(url, suspect_after=1.0, down_after=2.5)
    e1 = cs.join("h1", None, gpu_host(2))
    e2 = cs.join("h2", None, gpu_host(2))
    cs.place("vm1", want("gpu"), host="h1")
    cs.confirm("h1", e1, "vm1")
    time.sleep(1.2)
    cs.heartbeat("h2", e2)
    assert cs.sweep()["suspect"] == ["h1"]
    time.sleep(1.4)
    cs.heartbeat("h2", e2)
    assert cs.sweep()["down"] == ["h1"]
    assert {h["name"]: h["state"] for h in cs.hosts()} == {"h1": "down", "h2": "up"}
    assert [(a["vm"], a["state"]) for a in cs.allocations()] == [("vm1", "confirmed")]  # the VM may still run
    assert cs.place("vm2", want("gpu"))["host"] == "h2"  # down: out of the candidate set
    assert all(d["host"] == "h2" for d in cs.devices(free=True))
    cs.heartbeat("h1", e1)
    assert cs.host("h1")["state"] == "up"


def test_a_device_gone_from_its_host_is_lost_but_keeps_its_holder(cs):
    got = cs.place("vm1", want("gpu"), host="h2")
    dev = got["devices"][0]["identity"]
    left = [d for d in gpu_host(4) if d.identity != dev]
    assert cs.sync("h2", 1, left)["lost"] == [dev]
    [row] = [d for d in cs.devices(host="h2") if d["identity"] == dev]
    assert (row["state"], row["vm"], row["allocation"]) == ("lost", "vm1", "reserved")
    assert ("h2", dev) not in {(d["host"], d["identity"]) for d in cs.devices(free=True)}
    with pytest.raises(StaleEpoch):
        cs.sync("h2", 7, left)


def test_the_database_refuses_a_second_live_allocation(cs):
    got = cs.place("vm1", want("gpu"))
    row = dict(vm="vm2", host=got["host"], device=got["devices"][0]["identity"], state="confirmed", created="t",
               epoch=1)
    with pytest.raises(IntegrityError), cs.engine.begin() as c:  # bypassing every check in the code
        c.execute(insert(cluster_allocations).values(**row))
    with cs.engine.begin() as c:  # a released one is history, fine
        c.execute(insert(cluster_allocations).values(**dict(row, state="released")))


def test_an_unreachable_database_is_one_line_exit_2(tmp_path):
    cs = ClusterStore(f"postgresql+psycopg://postgres@/postgres?host={tmp_path}")
    t0 = time.monotonic()
    with pytest.raises(InventoryError, match="cannot reach the cluster database") as e:
        cs.hosts()
    assert e.value.exit_code == 2 and "\n" not in str(e.value) and time.monotonic() - t0 < 10
    with pytest.raises(InventoryError, match="not a database URL"):
        ClusterStore("postgresql+psycopg://[::1")
    with pytest.raises(UsageError, match="needs a database URL"):
        ClusterStore("")


def test_a_pf_with_vfs_is_placed_as_its_vfs_and_a_group_goes_to_one_vm(url):
    cs = ClusterStore(url)
    cs.join("n1", None, sriov_host())
    cs.join("g1", None, gpu_host(4, pairs=True))
    free_nics = {d["identity"] for d in cs.devices(free=True, host="n1")}
    assert free_nics == {"pci:0000:3b:02.0", "pci:0000:3b:02.1", "pci:0000:3c:00.0"}  # not the PF with VFs
    got = cs.place("vm1", want("nic"), count=3)
    assert {d["identity"] for d in got["devices"]} == free_nics
    with pytest.raises(ClaimError, match="no room"):
        cs.place("vm2", want("10de:20b5"), count=1, host="n1")
    # g1: GPUs 0+1 share group 10, 2+3 group 11. vm3 takes one of group 10: its mate is no one else's
    one = cs.place("vm3", want("gpu"), host="g1")["devices"][0]["identity"]
    assert one == "pci:0000:18:00.0"
    free_gpus = {d["identity"] for d in cs.devices(free=True, host="g1") if d["kind"] == "gpu"}
    assert free_gpus == {"pci:0000:8a:00.0", "pci:0000:8b:00.0"}
    two = cs.place("vm4", want("gpu"), count=2, same_numa=True, host="g1")  # a whole group to one VM is fine
    assert {d["identity"] for d in two["devices"]} == free_gpus
    with pytest.raises(ClaimError, match="no room"):
        cs.place("vm5", want("gpu"), host="g1")
    cs.release("vm3")
    assert cs.place("vm5", want("gpu"), count=2, host="g1")["devices"]
    groups = {(d["host"], d["identity"]): d["iommu_group"] for d in cs.devices()}
    assert group_doubles(cs.allocations(live=False), groups) == []


def test_history_check_finds_an_overlap():
    rows = [dict(id=1, vm="a", host="h", device="d", created="1", released="3"),
            dict(id=2, vm="b", host="h", device="d", created="2", released=None)]
    assert len(doubles(rows)) == 1
    assert len(group_doubles(rows, {("h", "d"): 1})) == 1
    rows[0]["released"] = "2"
    assert doubles(rows) == [] and group_doubles(rows, {("h", "d"): 1}) == []
