"""vGPUs (`passthru vgpu types/list/create/remove/start-persisted`, passthru.kinds.vgpu, passthru.service.vgpu) on fixture hosts: the gpu_server's
T4 (mdev types on a PCI GPU) and A100 (NVIDIA SR-IOV vGPU VFs), plus an mtty-like virtual mdev parent, written through
a fake of the mdev core at the one boundary passthru writes through (:class:`FakeMdevKernel`). The same verbs run on a
real kernel with mtty in tests/lab/test_lab_vgpu.py."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

import sysfs_fixtures as fx
from fake_kernel import Crash, FakeKernel
from passthru.cli import main as cli_main
from passthru.service.session import Session
from passthru.config import Paths
from passthru.errors import HostError, NotFoundError, UsageError
from passthru.host.root import HostRoot
from passthru.kinds import KINDS
from passthru.kinds.vgpu import MDEV, SRIOV, UUID_RE, VgpuKind, nvidia_types, scan_parents
from passthru.kinds.vgpu import CREATED, CREATING, MdevStore, list_vgpus, release_created, start_persisted
from passthru.service.vgpu import create, remove
from passthru.writers.mdev import MdevKernel

T4, A100, VF0, VF1 = "0000:af:00.0", "0000:d8:00.0", "0000:d8:00.4", "0000:d8:00.5"
T4_UUID = fx.T4_MDEV_UUID
U1 = "0b8a2f5e-3c1d-4e2f-9a7b-6c5d4e3f2a10"
U2 = "1c9b3a6f-4d2e-4f30-8b8c-7d6e5f403b21"
MTTY_TYPES = [dict(id="mtty-1", name="Single port serial", available_instances=24),
              dict(id="mtty-2", name="Dual port serial", available_instances=12)]


class FakeMdevKernel(FakeKernel, MdevKernel):
    """The mdev core and NVIDIA's current_vgpu_type on a SysfsBuilder tree, plus FakeKernel's PCI driver core.

    create: EEXIST for a taken UUID, EUSERS when available_instances is 0, else the instance appears (its own IOMMU
    group, /dev/vfio/<group>, the bus and type links) and available_instances drops. remove: EBUSY for UUIDs in
    ``busy`` (a VM has it open). current_vgpu_type: EINVAL for a type the VF cannot take, EBUSY when it has one.
    ``ghost``: UUIDs whose create is accepted but never appear. Faults and ``crash_at`` as in FakeKernel."""

    def __init__(self, h: HostRoot, **kw) -> None:
        super().__init__(h, **kw)
        self.busy: set[str] = set()
        self.ghost: set[str] = set()

    def write(self, path: str, data: str) -> None:
        rel = path[len(self.h.sys):] if path.startswith(self.h.sys) else path
        value = data.strip()
        if rel.endswith("/create") and "/mdev_supported_types/" in rel:
            self._mdev_step("create", rel, value, lambda: self._create(path, value))
        elif rel.startswith("/bus/mdev/devices/") and rel.endswith("/remove"):
            self._mdev_step("remove", rel, value, lambda: self._remove(os.path.dirname(path)))
        elif rel.endswith("/nvidia/current_vgpu_type"):
            self._mdev_step("current_vgpu_type", rel, value, lambda: self._set_type(path, value))
        else:
            super().write(path, data)

    def _mdev_step(self, verb: str, rel: str, value: str, act) -> None:
        self._tick(f"before writing {value!r} to {rel}")
        for v, err, _ in self.faults:
            if v == verb:
                raise OSError(err, os.strerror(err))
        self.writes.append((rel, value))
        act()

    def _create(self, path: str, uuid: str) -> None:
        if not UUID_RE.match(uuid):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if os.path.lexists(f"{self.h.sys}/bus/mdev/devices/{uuid}"):
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        tdir = os.path.realpath(os.path.dirname(path))
        avail = int(open(tdir + "/available_instances").read())
        if avail < 1:
            raise OSError(errno.EUSERS, os.strerror(errno.EUSERS))
        if uuid in self.ghost:
            return
        d = f"{os.path.dirname(os.path.dirname(tdir))}/{uuid}"
        os.makedirs(d + "/power")
        open(d + "/remove", "w").close()
        groups = f"{self.h.sys}/kernel/iommu_groups"
        g = max((int(n) for n in os.listdir(groups)), default=-1) + 1
        os.makedirs(f"{groups}/{g}/devices")
        drv = f"{self.h.sys}/bus/mdev/drivers/vfio_mdev"
        os.makedirs(drv, exist_ok=True)
        for link, target in ((d + "/mdev_type", tdir), (d + "/subsystem", f"{self.h.sys}/bus/mdev"),
                             (d + "/driver", drv), (f"{drv}/{uuid}", d), (f"{groups}/{g}/devices/{uuid}", d),
                             (d + "/iommu_group", f"{groups}/{g}"), (f"{self.h.sys}/bus/mdev/devices/{uuid}", d),
                             (f"{tdir}/devices/{uuid}", d)):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(os.path.relpath(target, os.path.dirname(link)), link)
        os.makedirs(f"{self.h.dev}/vfio", exist_ok=True)
        open(f"{self.h.dev}/vfio/{g}", "w").close()
        with open(tdir + "/available_instances", "w") as f:
            f.write(f"{avail - 1}\n")

    def _remove(self, dev: str) -> None:
        uuid = os.path.basename(dev)
        if uuid in self.busy:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        d = os.path.realpath(dev)
        tdir = os.path.realpath(d + "/mdev_type")
        g = os.path.realpath(d + "/iommu_group")
        drv = os.path.realpath(d + "/driver")
        for link in (f"{drv}/{uuid}", f"{g}/devices/{uuid}", f"{self.h.sys}/bus/mdev/devices/{uuid}",
                     f"{tdir}/devices/{uuid}"):
            if os.path.lexists(link):
                os.unlink(link)
        shutil.rmtree(d)
        shutil.rmtree(g)  # the kernel frees an mdev's own group with it
        if os.path.exists(f"{self.h.dev}/vfio/{os.path.basename(g)}"):
            os.unlink(f"{self.h.dev}/vfio/{os.path.basename(g)}")
        avail = int(open(tdir + "/available_instances").read())
        with open(tdir + "/available_instances", "w") as f:
            f.write(f"{avail + 1}\n")

    def _set_type(self, path: str, value: str) -> None:
        nv = os.path.dirname(path)
        current = open(path).read().strip()
        if value != "0":
            if value not in {i for i, _ in nvidia_types(open(nv + "/creatable_vgpu_types").read())}:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            if current != "0":
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        with open(path, "w") as f:
            f.write(value + "\n")


# -- fixtures -----------------------------------------------------------------------------------------------------
def _host(tmp_path: Path, extra=None):
    b = fx.make_gpu_server(tmp_path / "gs")
    b.virtual_mdev_parent("mtty", MTTY_TYPES)
    if extra:
        extra(b)
    b.build()
    h = HostRoot(b.root)
    return h, Paths.for_root(h), FakeMdevKernel(h)


@pytest.fixture
def host(tmp_path):
    return _host(tmp_path)


def avail(h: HostRoot, parent: str, type_id: str) -> int:
    return int(h.read(f"{h.sys}/class/mdev_bus/{parent}/mdev_supported_types/{type_id}/available_instances"))


def live(h: HostRoot, uuid: str) -> bool:
    return os.path.isdir(f"{h.sys}/bus/mdev/devices/{uuid}")


def vgpu_type(h: HostRoot, vf: str) -> str:
    return h.read(f"{h.sys}/bus/pci/devices/{vf}/nvidia/current_vgpu_type")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# -- reading ------------------------------------------------------------------------------------------------------
def test_parents_come_from_every_bus_and_from_sriov_vfs(host):
    h, _, _ = host
    ps = {p.name: p for p in scan_parents(h)}
    assert list(ps) == [T4, "mtty", A100]  # mdev parents (sorted), then SR-IOV GPUs
    t4, mtty, a100 = ps[T4], ps["mtty"], ps[A100]
    assert (t4.mode, t4.bus, t4.driver, t4.numa_node) == (MDEV, "pci", "nvidia", 1)
    assert [(t.id, t.name, t.available) for t in t4.types] == [
        ("nvidia-222", "GRID T4-1B", 16), ("nvidia-223", "GRID T4-2B", 8), ("nvidia-224", "GRID T4-1Q", 15),
        ("nvidia-225", "GRID T4-2Q", 8)]
    assert "framebuffer=1024M" in t4.types[0].description
    [inst] = t4.instances
    assert (inst.id, inst.type_id, inst.driver, inst.identity) == (T4_UUID, "nvidia-224", "vfio_mdev",
                                                                   f"mdev:{T4_UUID}")
    assert inst.iommu_group is not None
    assert (mtty.mode, mtty.bus, mtty.driver, mtty.instances) == (MDEV, "virtual", None, ())
    assert [(t.id, t.name, t.available, t.description, t.device_api) for t in mtty.types] == [
        ("mtty-1", "Single port serial", 24, None, "vfio-pci"), ("mtty-2", "Dual port serial", 12, None, "vfio-pci")]
    assert (a100.mode, a100.vfs, a100.instances) == (SRIOV, (VF0, VF1), ())
    assert [(t.id, t.name, t.available) for t in a100.types][:2] == [("558", "NVIDIA A100-4C", 2),
                                                                      ("559", "NVIDIA A100-5C", 2)]


def test_nvidia_type_lists_skip_the_header_and_a_vf_with_a_type_is_an_instance(tmp_path):
    def typed(b):
        b.nvidia_vgpu(VF1, ["ID    : vGPU Name", "558 : NVIDIA A100-4C", "559 : NVIDIA A100-5C"], current="559")

    h, _, _ = _host(tmp_path, typed)
    assert nvidia_types("ID    : vGPU Name\n558   : NVIDIA A100-4C\n") == [("558", "NVIDIA A100-4C")]
    a100 = {p.name: p for p in scan_parents(h)}[A100]
    assert [(i.id, i.type_id, i.identity) for i in a100.instances] == [(VF1, "559", f"pci:{VF1}")]
    assert a100.type("558").available == 1 and a100.free_vfs["558"] == (VF0,)


def test_types_cli_table_json_and_one_parent(capsys, host):
    h, _, _ = host
    rc, out, err = run(capsys, "--root", h.base, "vgpu", "types")
    assert rc == 0 and err == ""
    row = next(line for line in out.splitlines() if "mtty-2" in line)
    assert row.split()[:2] == ["mtty", "virtual"] and "Dual port serial" in row and " 12 " in row
    assert any(line.startswith(A100) and "(SR-IOV VFs)" in line and "NVIDIA A100-4C" in line
               for line in out.splitlines())
    rc, out, _ = run(capsys, "--root", h.base, "vgpu", "types", "mtty", "--json")
    doc = json.loads(out)
    assert rc == 0 and [p["parent"] for p in doc["parents"]] == ["mtty"]
    assert doc["parents"][0]["types"][1] == {"id": "mtty-2", "name": "Dual port serial", "description": None,
                                             "available_instances": 12, "device_api": "vfio-pci"}
    # a VF names its PF; an unknown parent is one line, exit 2
    rc, out, _ = run(capsys, "--root", h.base, "vgpu", "types", "d8:00.5", "--json")
    assert [p["parent"] for p in json.loads(out)["parents"]] == [A100]
    rc, out, err = run(capsys, "--root", h.base, "vgpu", "types", "0000:86:00.0")
    assert rc == 2 and out == "" and err.count("\n") == 1 and "mtty" in err and T4 in err


def test_a_host_without_parents_says_where_they_come_from(capsys, bare_host):
    rc, out, _ = run(capsys, "--root", str(bare_host), "vgpu", "types")
    assert rc == 0 and "no vGPU parents" in out
    rc, out, _ = run(capsys, "--root", str(bare_host), "vgpu", "list", "--json")
    assert rc == 0 and json.loads(out) == {"schema": 1, "vgpus": []}


# -- create / remove ----------------------------------------------------------------------------------------------
def test_create_persist_then_remove(host):
    h, paths, k = host
    r = create(h, paths, "mtty", "mtty-2", uuid=U1, persist=True, kernel=k)
    assert (r.id, r.mode, r.parent, r.mdev_type, r.type_name, r.status, r.persisted) == (
        U1, MDEV, "mtty", "mtty-2", "Dual port serial", "created", True)
    assert k.writes == [("/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create", U1)]
    assert live(h, U1) and avail(h, "mtty", "mtty-2") == 11
    assert os.path.realpath(f"{h.sys}/bus/mdev/devices/{U1}") == f"{h.sys}/devices/virtual/mtty/mtty/{U1}"
    defn = json.loads(Path(paths.config_dir, "mdev.d", "mtty", f"{U1}.json").read_text())
    assert defn == {"schema": 1, "id": U1, "mode": "mdev", "parent": "mtty", "mdev_type": "mtty-2", "start": "auto",
                    "attrs": []}
    rec = MdevStore(paths).get(U1)
    assert (rec.phase, rec.vm, rec.parent) == (CREATED, None, "mtty")
    audit = [json.loads(x) for x in Path(paths.state_dir, "audit.log").read_text().splitlines()]
    assert [(a["action"], a["device"], a["after"]) for a in audit] == [
        ("vgpu-create", f"mdev:{U1}", "mtty-2"), ("vgpu-persist", f"mdev:{U1}", "mtty-2")]
    # the listing has the definition's keys and the live state
    [row] = [x for x in list_vgpus(h, paths) if x["id"] == U1]
    assert {k2: row[k2] for k2 in defn if k2 not in ("schema", "attrs")} == {k2: defn[k2] for k2 in defn
                                                                          if k2 not in ("schema", "attrs")}
    assert row["live"] and row["persisted"] and row["passthru"]["phase"] == CREATED and row["iommu_group"] is not None
    # the same request again changes nothing
    again = create(h, paths, "mtty", "mtty-2", uuid=U1, persist=True, kernel=k)
    assert again.status == "unchanged" and len(k.writes) == 1
    r = remove(h, paths, U1, kernel=k)
    assert (r.status, r.note) == ("removed", "definition removed")
    assert k.writes[-1] == (f"/bus/mdev/devices/{U1}/remove", "1")
    assert not live(h, U1) and avail(h, "mtty", "mtty-2") == 12
    assert not Path(paths.config_dir, "mdev.d", "mtty").exists() and MdevStore(paths).get(U1) is None
    with pytest.raises(NotFoundError, match="neither live nor defined"):
        remove(h, paths, U1, kernel=k)


def test_remove_can_keep_the_definition_and_a_definition_alone_can_go(host):
    h, paths, k = host
    create(h, paths, "mtty", "mtty-1", uuid=U1, persist=True, kernel=k)
    r = remove(h, paths, U1, keep_definition=True, kernel=k)
    assert r.status == "removed" and "kept" in r.note and MdevStore(paths).definition(U1) is not None
    [row] = [x for x in list_vgpus(h, paths) if x["id"] == U1]
    assert (row["live"], row["persisted"], row["passthru"]) == (False, True, None)
    n = len(k.writes)
    r = remove(h, paths, U1, kernel=k)
    assert r.status == "undefined" and MdevStore(paths).definition(U1) is None and len(k.writes) == n


def test_a_hand_made_mdev_can_be_removed_too(host):
    h, paths, k = host
    r = remove(h, paths, T4_UUID.upper(), kernel=k)
    assert r.status == "removed" and r.mdev_type == "nvidia-224" and not live(h, T4_UUID)
    assert avail(h, T4, "nvidia-224") == 16


@pytest.mark.parametrize("args, kw, exc, msg", [
    (("mtty", "mtty-9"), {}, UsageError, "unknown vGPU type 'mtty-9' on mtty; types: mtty-1, mtty-2"),
    ((None, "nvidia-999"), {}, UsageError, "unknown vGPU type 'nvidia-999' on any parent"),
    (("nosuch", "mtty-1"), {}, NotFoundError, "no vGPU parent 'nosuch' on this host; parents: 0000:af:00.0, mtty"),
    (("mtty", "mtty-1"), {"uuid": "not-a-uuid"}, UsageError, "'not-a-uuid' is not a UUID"),
    (("mtty", "mtty-1"), {"uuid": T4_UUID}, UsageError, f"{T4_UUID} already exists as nvidia-224 on {T4}"),
    ((A100, "558"), {"uuid": U1}, UsageError, "its vGPUs are VFs"),
    (("mtty", "mtty-1"), {"vm": "vm1", "persist": True}, UsageError, "choose one"),
    (("mtty", "mtty-1"), {"placement": "random"}, UsageError, "pack or spread"),
    (("mtty", "mtty-1"), {"vm": "bad name"}, UsageError, "VM name"),
])
def test_refusals_change_nothing(host, args, kw, exc, msg):
    h, paths, k = host
    with pytest.raises(exc) as e:
        create(h, paths, *args, kernel=k, **kw)
    assert msg in str(e.value) and "\n" not in str(e.value)
    assert k.writes == [] and not Path(paths.state_dir, "mdev").exists()


def test_no_capacity_is_refused_with_and_without_a_parent(tmp_path):
    def full(b):
        td = f"{b.sys}/devices/virtual/mtty/mtty/mdev_supported_types/mtty-2"
        Path(td, "available_instances").write_text("0\n")

    h, paths, k = _host(tmp_path, full)
    with pytest.raises(UsageError, match="no capacity: mtty has 0 mtty-2 instances available"):
        create(h, paths, "mtty", "Dual port serial", kernel=k)
    with pytest.raises(UsageError, match=r"no capacity: no parent has a free mtty-2 instance: mtty \(0 of mtty-2"):
        create(h, paths, None, "mtty-2", kernel=k)
    assert k.writes == []


def test_cli_refusals_are_one_line_exit_2_and_a_fixture_root_is_never_written(capsys, host):
    h, paths, _ = host
    for argv, want in ((["vgpu", "create", "mtty", "mtty-9"], "unknown vGPU type"),
                       (["vgpu", "create", "mtty", "mtty-1", "--uuid", "xyz"], "is not a UUID"),
                       (["vgpu", "create", "a", "b", "c"], "[PARENT] TYPE"),
                       (["vgpu", "create", "gone", "mtty-1"], "no vGPU parent 'gone'"),
                       (["vgpu", "remove", "nope"], "is not a UUID"),
                       (["vgpu", "remove", U2], "neither live nor defined"),
                       (["vgpu", "create", "mtty", "mtty-1"], "not this machine's root")):
        rc, out, err = run(capsys, "--root", h.base, *argv)
        assert rc == 2 and out == "" and want in err and err.count("\n") == 1, (argv, err)
    assert not live(h, U2) and avail(h, "mtty", "mtty-1") == 24


def test_dry_run_shows_the_placement(capsys, host):
    h, _, _ = host
    rc, out, _ = run(capsys, "--root", h.base, "vgpu", "create", "Single port serial", "--uuid", U2, "--dry-run",
                     "--json")
    [v] = json.loads(out)["vgpus"]
    assert rc == 0 and (v["id"], v["parent"], v["mdev_type"], v["status"]) == (U2, "mtty", "mtty-1", "would create")
    assert v["sysfsdev"] == f"/sys/bus/mdev/devices/{U2}" and v["identity"] == f"mdev:{U2}"
    rc, out, _ = run(capsys, "--root", h.base, "vgpu", "create", "T4-2Q", "--dry-run")
    assert rc == 0 and out.startswith("mdev ") and f"would create nvidia-225 (GRID T4-2Q) on {T4}" in out
    assert not live(h, U2)


def test_kernel_failures_leave_nothing_behind(host):
    h, paths, k = host
    k.fail("create", errno.EUSERS)
    with pytest.raises(HostError, match=f"{U1}: creating mtty-1 on mtty: no instance of this type is left"):
        create(h, paths, "mtty", "mtty-1", uuid=U1, persist=True, kernel=k)
    assert MdevStore(paths).records() == [] and MdevStore(paths).definitions() == []
    k.faults.clear()
    k.ghost.add(U1)  # the kernel takes the write, the device never appears: a bounded wait, then an error
    with pytest.raises(HostError, match=f"waiting for /sys/bus/mdev/devices/{U1} to appear: not done after"):
        create(h, paths, "mtty", "mtty-1", uuid=U1, kernel=k)
    assert MdevStore(paths).records() == [] and not live(h, U1)
    k.ghost.clear()
    create(h, paths, "mtty", "mtty-1", uuid=U1, kernel=k)
    k.busy.add(U1)
    with pytest.raises(HostError, match=f"{U1}: removing: in use"):
        remove(h, paths, U1, kernel=k)
    assert live(h, U1) and MdevStore(paths).get(U1).phase == CREATED  # settled back: the kernel kept it


def test_journal_first_and_a_killed_create_is_settled(host):
    h, paths, k = host
    k.crash_at = 1  # dies on the create write: the record is already there, the device is not
    with pytest.raises(Crash):
        create(h, paths, "mtty", "mtty-1", uuid=U1, kernel=k)
    assert MdevStore(paths).get(U1).phase == CREATING and not live(h, U1)
    [row] = [x for x in list_vgpus(h, paths) if x["id"] == U1]
    assert (row["live"], row["passthru"]["phase"]) == (False, CREATING)
    k.crash_at = None
    create(h, paths, "mtty", "mtty-2", uuid=U2, kernel=k)  # the next writer settles the old record
    assert MdevStore(paths).get(U1) is None and MdevStore(paths).get(U2).phase == CREATED
    k.crash_at = k.steps + 2  # dies in the wait after the write: device made, record "creating"
    with pytest.raises(Crash):
        create(h, paths, "mtty", "mtty-1", uuid=U1, kernel=k)
    assert live(h, U1) and MdevStore(paths).get(U1).phase == CREATING
    k.crash_at = None
    remove(h, paths, U2, kernel=k)
    assert MdevStore(paths).get(U1).phase == CREATED  # live: it was made


# -- placement ----------------------------------------------------------------------------------------------------
def _second_t4(b):
    b.bridge("0000:b0:00.0", device=0x2030, numa_node=1)
    b.pci("0000:b1:00.0", 0x10DE, 0x1EB8, 0x030200, parent="0000:b0:00.0", driver="nvidia", numa_node=1)
    b.mdev_types("0000:b1:00.0", [dict(id="nvidia-224", name="GRID T4-1Q", available_instances=16)])


def test_placement_pack_fills_one_parent_spread_uses_the_emptiest(tmp_path):
    h, paths, k = _host(tmp_path, _second_t4)
    assert create(h, paths, None, "nvidia-224", placement="pack", dry_run=True).parent == T4  # it has one already
    assert create(h, paths, None, "nvidia-224", placement="spread", dry_run=True).parent == "0000:b1:00.0"
    a = create(h, paths, None, "GRID T4-1Q", placement="spread", uuid=U1, kernel=k)
    assert a.parent == "0000:b1:00.0"
    # one each now: spread breaks the tie by free instances (b1 has 15, af has 15) then by name
    assert create(h, paths, None, "nvidia-224", placement="spread", dry_run=True).parent == T4
    b = create(h, paths, None, "nvidia-224", placement="pack", uuid=U2, kernel=k)
    assert b.parent == T4 and avail(h, T4, "nvidia-224") == 14


# -- NVIDIA SR-IOV vGPU -------------------------------------------------------------------------------------------
def test_sriov_create_sets_the_vf_type_and_remove_puts_back_the_prior_one(host):
    h, paths, k = host
    r = create(h, paths, A100, "A100-4C", kernel=k)
    assert (r.id, r.mode, r.mdev_type, r.type_name, r.identity) == (VF0, SRIOV, "558", "NVIDIA A100-4C", f"pci:{VF0}")
    assert k.writes == [(f"/bus/pci/devices/{VF0}/nvidia/current_vgpu_type", "558")] and vgpu_type(h, VF0) == "558"
    assert MdevStore(paths).get(VF0).prior_type == "0"
    # a VF as parent pins it; the next free VF otherwise
    assert create(h, paths, A100, "559", dry_run=True).id == VF1
    with pytest.raises(UsageError, match=f"{VF0} already has vGPU type 558"):
        create(h, paths, VF0, "559", kernel=k)
    assert create(h, paths, VF0, "558", kernel=k).status == "unchanged"
    [row] = [x for x in list_vgpus(h, paths) if x["mode"] == SRIOV]
    assert (row["id"], row["parent"], row["mdev_type"], row["identity"]) == (VF0, A100, "558", f"pci:{VF0}")
    r = remove(h, paths, "d8:00.4", kernel=k)
    assert r.status == "removed" and vgpu_type(h, VF0) == "0" and MdevStore(paths).records() == []


def test_sriov_no_free_vf_is_no_capacity(host):
    h, paths, k = host
    create(h, paths, VF0, "558", kernel=k)
    create(h, paths, VF1, "560", kernel=k)
    with pytest.raises(UsageError, match="no capacity"):
        create(h, paths, None, "NVIDIA A100-4C", kernel=k)


# -- boot ---------------------------------------------------------------------------------------------------------
def test_start_persisted_recreates_what_is_gone_and_reports_what_cannot_start(host):
    h, paths, k = host
    create(h, paths, "mtty", "mtty-2", uuid=U1, persist=True, kernel=k)
    create(h, paths, VF1, "559", persist=True, kernel=k)
    create(h, paths, T4, "nvidia-222", uuid=U2, persist=True, kernel=k)
    # a reboot: the kernel forgot them all
    k.write(f"{h.sys}/bus/mdev/devices/{U1}/remove", "1")
    k.write(f"{h.sys}/bus/mdev/devices/{U2}/remove", "1")
    k.write(f"{h.sys}/bus/pci/devices/{VF1}/nvidia/current_vgpu_type", "0")
    # ... and one definition names a parent that is not there
    store = MdevStore(paths)
    store.define("2d0c4b70-5e3f-4061-9c9d-8e7f60514c32", MDEV, "0000:00:02.0", "i915-GVTg_V5_4")
    out = start_persisted(h, paths, kernel=k)
    got = {r.id: (r.status, r.note) for r in out.items}
    assert got[U1] == ("created", "") and got[U2] == ("created", "") and got[VF1] == ("created", "")
    assert got["2d0c4b70-5e3f-4061-9c9d-8e7f60514c32"][0] == "failed"
    assert "parent 0000:00:02.0 is not present" in got["2d0c4b70-5e3f-4061-9c9d-8e7f60514c32"][1]
    assert out.error and out.to_json()["ok"] is False
    assert live(h, U1) and live(h, U2) and vgpu_type(h, VF1) == "559"
    assert os.path.realpath(f"{h.sys}/bus/mdev/devices/{U1}/mdev_type").endswith("/mtty-2")
    # again: everything there is unchanged; one parent's definitions only
    store.undefine("2d0c4b70-5e3f-4061-9c9d-8e7f60514c32")
    assert [r.id for r in start_persisted(h, paths, parent="af:00.0", kernel=k).items] == [U2]
    n = len(k.writes)
    again = start_persisted(h, paths, kernel=k)
    assert {r.status for r in again.items} == {"unchanged"} and again.error is None and len(k.writes) == n


def test_start_persisted_refuses_a_uuid_taken_by_another_type(host):
    h, paths, k = host
    os.unlink(h.path(f"/etc/mdevctl.d/{T4}/{T4_UUID}"))  # mdevctl's UUIDs are mdevctl's to start (test_mdevctl.py)
    MdevStore(paths).define(T4_UUID, MDEV, T4, "nvidia-222")
    out = start_persisted(h, paths, kernel=k)
    assert out.items[0].status == "failed" and "exists as nvidia-224" in out.items[0].note
    assert k.writes == []


def test_start_persisted_cli_with_nothing_defined(capsys, host):
    h, _, _ = host
    rc, out, _ = run(capsys, "--root", h.base, "vgpu", "start-persisted", "--json")
    assert rc == 0 and json.loads(out) == {"schema": 1, "action": "start-persisted", "ok": True, "error": None,
                                           "vgpus": []}


# -- VMs ----------------------------------------------------------------------------------------------------------
def test_a_vgpu_made_for_a_vm_is_assigned_and_goes_with_its_release(host):
    h, paths, k = host
    s = Session(h.base, paths.config_dir, paths.state_dir)
    from passthru.service.assign import open_store
    from passthru.service.release import release

    r = create(h, paths, T4, "nvidia-222", uuid=U1, vm="vm1", kernel=k)
    assert r.vm == "vm1" and MdevStore(paths).get(U1).vm == "vm1"
    assert [a.device for a in open_store(s).assignments("vm1")] == [f"mdev:{U1}"]
    # while vm1 holds it, `vgpu remove` is refused
    with pytest.raises(UsageError, match=f"assigned to VM 'vm1': `passthru release vm1 mdev:{U1}` first"):
        remove(h, paths, U1, kernel=k)
    # the hand-made T4 mdev, assigned too, is not passthru's to remove
    from passthru.service.assign import assign

    assign(s, "vm1", [f"mdev:{T4_UUID}"], kernel=k)
    release(s, "vm1", kernel=k)  # the hook in service.release.release
    assert not live(h, U1) and live(h, T4_UUID) and MdevStore(paths).records() == []
    assert avail(h, T4, "nvidia-222") == 16
    assert release_created(h, paths, "vm1", [f"mdev:{U1}", f"mdev:{T4_UUID}"], kernel=k) == []  # nothing left


def test_release_removes_only_what_was_made_for_that_vm(host):
    h, paths, k = host
    create(h, paths, "mtty", "mtty-1", uuid=U1, kernel=k)  # no VM
    store = MdevStore(paths)
    assert release_created(h, paths, "vm1", [f"mdev:{U1}"], kernel=k) == [] and live(h, U1)
    rec = store.get(U1)
    from dataclasses import replace

    store.save(replace(rec, vm="vm2"))
    assert release_created(h, paths, "vm1", [f"mdev:{U1}"], kernel=k) == [] and live(h, U1)
    k.busy.add(U1)
    with pytest.raises(HostError, match="still there"):
        release_created(h, paths, "vm2", [f"mdev:{U1}"], kernel=k)
    k.busy.clear()
    [r] = release_created(h, paths, "vm2", [f"mdev:{U1}"], kernel=k)
    assert r.status == "removed" and not live(h, U1)


def test_a_failed_claim_takes_the_new_vgpu_back(host):
    h, paths, k = host
    s = Session(h.base, paths.config_dir, paths.state_dir)
    from passthru.inventory import ClaimError
    from passthru.service.assign import assign

    # vm2 holds the T4 itself (recorded, not bound; its own vGPU removed first, or the T4 could not go whole): an mdev
    # of it cannot go to vm1 (parent exclusivity), so the new mdev goes again
    remove(h, paths, T4_UUID, kernel=k)
    assign(s, "vm2", [T4], bind=False)
    with pytest.raises(ClaimError):
        create(h, paths, T4, "nvidia-223", uuid=U1, vm="vm1", kernel=FakeMdevKernel(h))
    assert not live(h, U1) and MdevStore(paths).records() == [] and avail(h, T4, "nvidia-223") == 8


def test_the_kind_is_registered_with_its_hooks(host):
    h, paths, k = host
    assert isinstance(KINDS["vgpu"], VgpuKind) and KINDS["vgpu"].hotpluggable
    kind = VgpuKind(kernel=k)
    prior = kind.before_assign(h, paths, "vm3", "", {"type": "mtty-1"})
    assert prior["identity"].startswith("mdev:") and live(h, prior["created"])
    kind.after_release(h, paths, "vm3", prior["identity"], prior)
    assert not live(h, prior["created"])
    assert kind.before_assign(h, paths, "vm3", f"mdev:{T4_UUID}", {}) is None


def test_kind_checks_capacity_and_untyped_vfs(host):
    from passthru.host.pci import read_function

    h, _, _ = host
    kind = KINDS["vgpu"]
    [f] = kind.checks(h, read_function(h, T4))
    assert (f.id, f.status) == ("vgpu.capacity", "pass") and "1 mdev instance(s)" in f.evidence
    [f] = kind.checks(h, read_function(h, VF0))
    assert (f.id, f.status) == ("vgpu.type", "warn") and f.fix.startswith(f"passthru vgpu create {VF0}")


def test_an_sriov_vgpu_made_for_a_vm_is_a_pci_assignment_and_its_type_goes_back_on_release(host):
    h, paths, k = host
    s = Session(h.base, paths.config_dir, paths.state_dir)
    from passthru.service.assign import open_store
    from passthru.service.release import release

    r = create(h, paths, A100, "A100-8C", vm="vm1", kernel=k)
    assert (r.id, r.identity) == (VF0, f"pci:{VF0}") and vgpu_type(h, VF0) == "560"
    assert [a.device for a in open_store(s).assignments("vm1")] == [f"pci:{VF0}"]
    assert h.link_name(f"{h.sys}/bus/pci/devices/{VF0}/driver") == "vfio-pci"  # passed as a PCI device
    release(s, "vm1", restore=True, kernel=k)
    assert vgpu_type(h, VF0) == "0" and h.link_name(f"{h.sys}/bus/pci/devices/{VF0}/driver") == "nvidia"
    assert MdevStore(paths).records() == []
