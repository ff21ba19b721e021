"""A host's agent in the cluster (service/publisher.py) on a fixture host (gpu_server) with the fake kernel, against
SQLite and a real PostgreSQL: it publishes its devices, takes reservations over (claim here + vfio-pci) and confirms
them, undoes a takeover whose confirmation is refused, adopts what was assigned here by hand, mirrors releases both
ways, and after a fence or a restart (a new epoch) keeps what it still holds and lets go of what it does not."""

from __future__ import annotations

import time

import pytest

import sysfs_fixtures as fx
from fake_kernel import FakeKernel
from passthru import failpoints
from passthru.inventory.cluster import ClusterStore, parse_want
from passthru.service.assign import assign, open_store
from passthru.service.cluster import local_devices
from passthru.service.publisher import Publisher
from passthru.service.release import release
from passthru.service.session import Session

GTX_NOUVEAU = ("pci:0000:86:00.0", "pci:0000:87:00.0")  # numa 1, on nouveau: a takeover moves them


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/cluster.db"
    return request.getfixturevalue("pg_url")


class Host:
    def __init__(self, tmp_path, url: str) -> None:
        self.root = str(fx.gpu_server(tmp_path / "gs"))
        self.state = str(tmp_path / "state")
        self.kernel = FakeKernel(Session(self.root, None, self.state).host)
        self.url = url
        self.pubs: list[Publisher] = []

    def session(self) -> Session:
        return Session(self.root, str(self.root) + "/etc/passthru", self.state)

    def driver(self, ident: str) -> str | None:
        h = self.session().host
        return h.link_name(f"{h.sys}/bus/pci/devices/{ident[4:]}/driver")

    def held(self) -> dict[str, str]:
        s = self.session()
        return {a.device: a.vm for a in open_store(s).assignments()} if s.has_inventory() else {}

    def publisher(self, **kw) -> Publisher:
        p = Publisher(self.session, ClusterStore(self.url, **kw), "h1", "10.0.0.1:8470", kernel=self.kernel)
        self.pubs.append(p)
        return p


@pytest.fixture
def host(tmp_path, url):
    h = Host(tmp_path, url)
    yield h
    for p in h.pubs:
        p.close()
        p.cs.close()


def live(cs: ClusterStore, vm: str) -> list[tuple[str, str]]:
    return sorted((a["device"], a["state"]) for a in cs.allocations(vm=vm))


def test_publishes_the_host_and_takes_a_reservation_over(host):
    pub = host.publisher()
    report = pub.start()
    assert pub.epoch == 1 and report["taken"] == [] and report["adopted"] == []
    devs = {d["identity"]: d for d in pub.cs.devices(host="h1")}
    assert {d.identity for d in local_devices(host.session())} == set(devs)
    assert devs[GTX_NOUVEAU[0]]["kind"] == "gpu" and devs[GTX_NOUVEAU[0]]["numa_node"] == 1
    assert "pci:0000:03:00.0" not in devs or devs["pci:0000:03:00.0"]["kind"] != "bridge"

    sched = ClusterStore(host.url)
    got = sched.place("vm1", [parse_want(GTX_NOUVEAU[0][4:]), parse_want(GTX_NOUVEAU[1][4:])])
    assert got["state"] == "reserved" and host.driver(GTX_NOUVEAU[0]) == "nouveau"
    report = pub.tick()
    assert report["taken"] == [{"vm": "vm1", "devices": list(GTX_NOUVEAU)}]
    assert live(sched, "vm1") == [(GTX_NOUVEAU[0], "confirmed"), (GTX_NOUVEAU[1], "confirmed")]
    assert {d: host.held()[d] for d in GTX_NOUVEAU} == {d: "vm1" for d in GTX_NOUVEAU}
    assert host.driver(GTX_NOUVEAU[0]) == host.driver(GTX_NOUVEAU[1]) == "vfio-pci"
    assert pub.tick()["taken"] == []  # idempotent: the next round changes nothing

    sched.release("vm1")  # the scheduler lets go: so does the host (the devices stay on vfio-pci)
    report = pub.tick()
    assert sorted(report["released_here"]) == [f"vm1:{d}" for d in GTX_NOUVEAU]
    assert not set(host.held()) & set(GTX_NOUVEAU)
    sched.close()


def test_what_was_assigned_here_by_hand_is_adopted_and_a_release_here_is_mirrored(host):
    pub = host.publisher()
    pub.start()
    res = assign(host.session(), "local-vm", [GTX_NOUVEAU[0][4:]], kernel=host.kernel)
    assert res.assignments
    report = pub.tick()
    assert f"local-vm:{GTX_NOUVEAU[0]}" in report["adopted"]
    assert live(pub.cs, "local-vm") == [(GTX_NOUVEAU[0], "confirmed")]
    free = {d["identity"] for d in pub.cs.devices(free=True)}
    assert GTX_NOUVEAU[0] not in free and GTX_NOUVEAU[1] in free
    release(host.session(), "local-vm")
    report = pub.tick()
    assert report["dropped"] == [f"local-vm:{GTX_NOUVEAU[0]}"]
    assert live(pub.cs, "local-vm") == []
    hist = [a for a in pub.cs.allocations(vm="local-vm", live=False)]
    assert [a["reason"] for a in hist] == ["not held"]


def test_a_takeover_that_fails_drops_the_reservation_and_moves_nothing(host):
    pub = host.publisher()
    pub.start()
    host.kernel.stubborn.add(GTX_NOUVEAU[0][4:])  # vfio-pci never binds it: the takeover fails and is undone
    sched = ClusterStore(host.url)
    sched.place("vm1", [parse_want(GTX_NOUVEAU[0][4:])])
    report = pub.tick()
    assert [r["vm"] for r in report["refused"]] == ["vm1"]
    assert live(sched, "vm1") == []
    assert [a["reason"] for a in sched.allocations(vm="vm1", live=False)] == ["refused"]
    assert host.driver(GTX_NOUVEAU[0]) == "nouveau" and GTX_NOUVEAU[0] not in host.held()
    sched.close()


def test_a_refused_confirmation_undoes_the_takeover(host):
    """The reservation expires while the devices are being taken over: the confirmation finds nothing, and the host
    gives the devices back to their driver and forgets the claim."""
    pub = host.publisher()
    pub.start()
    sched = ClusterStore(host.url, reserve_ttl=0.5)
    sched.place("vm1", [parse_want(GTX_NOUVEAU[0][4:])])
    failpoints.set_handler(lambda name: time.sleep(1.0) if name == "cluster.taken" else None)
    try:
        report = pub.tick()
    finally:
        failpoints.set_handler(None)
    assert report["taken"] == [] and report["released_here"] == [f"vm1:{GTX_NOUVEAU[0]}"]
    assert host.driver(GTX_NOUVEAU[0]) == "nouveau" and GTX_NOUVEAU[0] not in host.held()
    assert live(sched, "vm1") == []
    sched.close()


def two_vms_taken(host: Host) -> tuple[Publisher, ClusterStore]:
    """A started agent that has taken vm1 (GTX 86:00.0) and vm2 (87:00.0) over; and a scheduler's store."""
    pub = host.publisher()
    pub.start()
    sched = ClusterStore(host.url)
    sched.place("vm1", [parse_want(GTX_NOUVEAU[0][4:])])
    sched.place("vm2", [parse_want(GTX_NOUVEAU[1][4:])])
    pub.tick()
    return pub, sched


def test_fenced_then_back_the_host_lets_go_of_what_the_cluster_released(host):
    pub, sched = two_vms_taken(host)
    assert host.held()[GTX_NOUVEAU[0]] == "vm1"
    assert sched.fence("h1")["released"] == 2
    report = pub.tick()  # the heartbeat is refused (old epoch): the agent joins again and reconciles
    assert pub.epoch == 3 and pub.joins == 2
    assert sorted(report["released_here"]) == [f"vm1:{GTX_NOUVEAU[0]}", f"vm2:{GTX_NOUVEAU[1]}"]
    assert sched.host("h1")["state"] == "up" and host.held() == {}
    sched.close()


def test_a_restarted_agent_keeps_what_it_holds_and_drops_what_it_does_not(host):
    _pub, sched = two_vms_taken(host)
    release(host.session(), "vm2")  # behind the agent's back, while it is down
    again = host.publisher()
    report = again.start()  # a restart: a new epoch
    assert again.epoch == 2
    assert report["renewed"] == 1 and report["dropped"] == [f"vm2:{GTX_NOUVEAU[1]}"]
    assert [(a["device"], a["epoch"]) for a in sched.allocations(vm="vm1")] == [(GTX_NOUVEAU[0], 2)]
    assert live(sched, "vm2") == []
    sched.close()


class Killed(BaseException):
    pass


def test_killed_between_takeover_and_confirmation_the_host_lets_go_after_expiry(host):
    pub = host.publisher()
    pub.start()
    sched = ClusterStore(host.url, reserve_ttl=0.3)

    def die(name: str) -> None:
        if name == "cluster.taken":
            raise Killed(name)

    sched.place("vm1", [parse_want(GTX_NOUVEAU[0][4:])])
    failpoints.set_handler(die)
    try:
        with pytest.raises(Killed):
            pub.tick()
    finally:
        failpoints.set_handler(None)
    assert host.held()[GTX_NOUVEAU[0]] == "vm1" and live(sched, "vm1") == [(GTX_NOUVEAU[0], "reserved")]
    time.sleep(0.5)
    assert sched.sweep()["expired"] == 1
    report = host.publisher().start()  # the agent comes back
    assert report["released_here"] == [f"vm1:{GTX_NOUVEAU[0]}"] and host.held() == {}
    assert [a["reason"] for a in sched.allocations(vm="vm1", live=False)] == ["expired"]
    sched.close()
