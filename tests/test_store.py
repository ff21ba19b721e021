"""The inventory store on real SQLite files: migrations, device sync, models, every claim rule, states, release,
audit, and 8 processes racing for the last free devices."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat

import pytest
from sqlalchemy import insert, inspect, text
from sqlalchemy.exc import IntegrityError

from passthru.config import Paths
from passthru.errors import HostError, InventoryError, NotFoundError, UsageError
from passthru.inventory import DB_ENV, Assignment, ClaimError, DeviceRecord, InvalidState, Store
from passthru.inventory.schema import LATEST, assignments

GPU = dict(bus="pci", kind="gpu", vendor_id=0x10DE, device_id=0x2204)


def pci(addr: str, kind: str = "gpu", **kw) -> DeviceRecord:
    base = dict(GPU, kind=kind)
    base.update(kw)
    return DeviceRecord(identity=f"pci:{addr}", **base)


def host() -> list[DeviceRecord]:
    """2 GPUs per NUMA node, a GPU+audio sharing group 30, a PF with 2 VFs, a vGPU parent with an mdev, USB, serial."""
    return [
        pci("0000:18:00.0", numa_node=0, iommu_group=10),
        pci("0000:19:00.0", numa_node=0, iommu_group=11),
        pci("0000:86:00.0", numa_node=1, iommu_group=20),
        pci("0000:87:00.0", numa_node=1, iommu_group=21),
        pci("0000:af:00.0", numa_node=1, iommu_group=30),
        pci("0000:af:00.1", kind="other", device_id=0x1AEF, numa_node=1, iommu_group=30),
        pci("0000:3b:00.0", kind="nic", vendor_id=0x8086, device_id=0x1572, numa_node=0, iommu_group=40),
        pci("0000:3b:02.0", kind="nic", vendor_id=0x8086, device_id=0x154C, numa_node=0, iommu_group=41,
            parent="pci:0000:3b:00.0"),
        pci("0000:3b:02.1", kind="nic", vendor_id=0x8086, device_id=0x154C, numa_node=0, iommu_group=42,
            parent="pci:0000:3b:00.0"),
        pci("0000:d8:00.0", kind="gpu", device_id=0x1EB8, numa_node=1, iommu_group=50),
        DeviceRecord("mdev:4b20d080-1b54-4048-85b3-a6a62d165c01", "mdev", "vgpu", parent="pci:0000:d8:00.0"),
        pci("0000:5e:00.0", kind="other", vendor_id=0x8086, device_id=0x37C8, numa_node=0, iommu_group=60),
        DeviceRecord("usb:1-1.3", "usb", "usb", vendor_id=0x1050, device_id=0x0407, serial="1234"),
        DeviceRecord("serial:/dev/ttyS1", "serial", "serial"),
    ]


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/passthru.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request, tmp_path) -> str:
    """The same tests on the embedded SQLite file and on a real PostgreSQL server (tests/pg.py)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/passthru.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(any_url):
    s = Store(any_url)
    s.sync_devices(host())
    yield s
    s.close()


def held(s: Store) -> dict[str, str]:
    return {a.device: a.vm for a in s.assignments()}


# -- schema --------------------------------------------------------------------------------------------------------
def test_migrate_is_idempotent_and_recorded(any_url):
    s = Store(any_url)
    assert s.migrate() == LATEST == 4
    assert s.migrate() == LATEST
    again = Store(any_url)
    assert again.migrate() == LATEST
    assert [h["version"] for h in again.schema_history()] == [1, 2, 3, 4]


def _old_claim(s: Store, vm: str, device: str) -> None:
    """A holding as an older passthru wrote it (its columns only)."""
    with s.engine.begin() as c:
        c.execute(text("INSERT INTO assignments (vm, device, state, created, updated) "
                       "VALUES (:vm, :device, 'reserved', 't', 't')"), {"vm": vm, "device": device})


def test_v1_database_upgrades_to_latest(any_url):
    old = Store(any_url)
    assert old.migrate(to=1) == 1
    old.sync_devices(host())
    _old_claim(old, "vm1", "pci:0000:18:00.0")
    names = {ix["name"] for ix in inspect(old.engine).get_indexes("assignments")}
    assert "ix_assignments_vm_state" not in names
    old.close()
    new = Store(any_url)
    assert new.migrate() == LATEST
    names = {ix["name"] for ix in inspect(new.engine).get_indexes("assignments")}
    assert {"uq_assignments_active_device", "ix_assignments_vm_state"} <= names
    assert held(new) == {"pci:0000:18:00.0": "vm1"}  # data made at v1 survives


def test_every_method_migrates_lazily(any_url):
    assert Store(any_url).devices() == []
    assert [h["version"] for h in Store(any_url).schema_history()] == [1, 2, 3, 4]


def test_newer_database_is_refused(db_url, tmp_path):
    Store(db_url).migrate()
    with sqlite3.connect(tmp_path / "passthru.db") as c:
        c.execute("INSERT INTO schema_migrations VALUES (99, 'future', '2099-01-01T00:00:00.000000Z')")
    with pytest.raises(InventoryError, match="newer than this passthru"):
        Store(db_url).devices()


def test_an_older_database_is_backed_up_before_it_is_migrated(db_url, tmp_path):
    db, bak = tmp_path / "passthru.db", tmp_path / "passthru.db.bak"
    fresh = Store(db_url)
    fresh.migrate()
    assert not bak.exists()  # a new database has nothing to keep
    fresh.close()
    db.unlink()
    old = Store(db_url)
    assert old.migrate(to=1) == 1
    old.sync_devices(host())
    _old_claim(old, "vm1", "pci:0000:18:00.0")
    old.close()
    new = Store(db_url)
    assert new.migrate() == LATEST
    assert stat.S_IMODE(bak.stat().st_mode) == 0o600
    with sqlite3.connect(bak) as c:  # the database as it was before the migration, a file of its own
        assert c.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == 1
        assert c.execute("SELECT vm, device FROM assignments").fetchall() == [("vm1", "pci:0000:18:00.0")]
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert held(new) == {"pci:0000:18:00.0": "vm1"}
    before = bak.stat().st_mtime_ns
    Store(db_url).migrate()  # nothing to migrate: the backup stays as it is
    assert bak.stat().st_mtime_ns == before
    # the backup restores: the old version comes back and migrates again
    new.close()
    for f in tmp_path.glob("passthru.db*"):
        if f != bak:
            f.unlink()
    bak.rename(db)
    again = Store(db_url)
    assert again.migrate() == LATEST and held(again) == {"pci:0000:18:00.0": "vm1"}


def test_a_damaged_database_never_replaces_the_backup(db_url, tmp_path):
    db, bak = tmp_path / "passthru.db", tmp_path / "passthru.db.bak"
    old = Store(db_url)
    old.migrate(to=1)
    old.sync_devices(host())
    old.close()
    bak.write_bytes(db.read_bytes())
    good = bak.read_bytes()
    data = bytearray(db.read_bytes())
    page = 4096
    for p in range(1, len(data) // page):  # every b-tree page but the first: its header bytes flipped
        for i in range(8):
            data[p * page + i] ^= 0xFF
    db.write_bytes(bytes(data))
    with pytest.raises(InventoryError, match=r"passthru.db: not a usable inventory database \(.*malformed"):
        Store(db_url).migrate()
    assert bak.read_bytes() == good
    from passthru.inventory.health import backup_sqlite

    with pytest.raises(InventoryError, match=r"damaged \(.*\): not copying it over"):
        backup_sqlite(str(db), str(bak))
    assert bak.read_bytes() == good and [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []


def test_the_expected_schema_is_what_the_migrations_make():
    from passthru.inventory.health import expected_schema, replayed_schema

    assert expected_schema(LATEST) == replayed_schema(LATEST)
    tables, indexes = expected_schema(1)
    assert tables == {"devices", "models", "assignments", "audit", "schema_migrations"}
    assert "uq_assignments_active_device" in indexes and "ix_assignments_vm_state" not in indexes


def test_default_location_is_private_and_env_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv(DB_ENV, raising=False)
    paths = Paths(config_dir=str(tmp_path / "etc"), state_dir=str(tmp_path / "state"))
    Store(paths=paths).migrate()
    assert stat.S_IMODE(os.stat(paths.state_dir).st_mode) == 0o700
    db = os.path.join(paths.state_dir, "passthru.db")
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    monkeypatch.setenv(DB_ENV, f"sqlite:///{tmp_path}/other.db")
    s = Store(paths=paths)
    assert s.url.endswith("other.db")
    s.migrate()
    assert os.path.exists(tmp_path / "other.db")


def test_v2_database_gets_pending_claims_into_the_one_holder_rule(any_url):
    old = Store(any_url)
    assert old.migrate(to=2) == 2
    old.sync_devices(host())
    _old_claim(old, "vm1", "pci:0000:18:00.0")
    old.close()
    new = Store(any_url)
    assert new.migrate() == LATEST
    assert [(a.device, a.state, a.op, a.takeover) for a in new.assignments()] == [
        ("pci:0000:18:00.0", "reserved", None, None)]
    row = dict(vm="vm2", device="pci:0000:18:00.0", state="pending", created="t", updated="t", op="x")
    with pytest.raises(IntegrityError), new.engine.begin() as c:  # pending counts as holding, in the database
        c.execute(insert(assignments).values(**row))


def test_pending_claims_of_an_operation_finish_or_are_abandoned(store):
    op = {"id": "0000000000000001-1", "takeover": "vfio"}
    [a] = store.claim("vm1", ["pci:0000:18:00.0"], op=op)
    b = store.claim_any("vm1", kind="gpu", op=op)
    assert (a.state, a.op, a.takeover) == ("pending", op["id"], "vfio") and b.state == "pending"
    with pytest.raises(ClaimError, match="already assigned to VM 'vm1'"):  # pending already holds
        store.claim("vm2", ["pci:0000:18:00.0"])
    assert {x.state for x in store.finish_op(op["id"])} == {"reserved"}
    assert {x.state for x in store.assignments("vm1")} == {"reserved"}
    other = {"id": "0000000000000002-1", "takeover": None}
    store.claim("vm2", ["pci:0000:86:00.0"], op=other)
    assert [x.device for x in store.abandon_op(other["id"])] == ["pci:0000:86:00.0"]
    assert store.assignments("vm2") == [] and store.abandon_op(other["id"]) == []


def test_database_enforces_one_active_holder(store):
    store.claim("vm1", ["pci:0000:18:00.0"])
    row = dict(vm="vm2", device="pci:0000:18:00.0", state="attached", created="t", updated="t")
    with pytest.raises(IntegrityError), store.engine.begin() as c:  # bypassing every check in the code
        c.execute(insert(assignments).values(**row))
    with store.engine.begin() as c:  # a released row for the same device is fine
        c.execute(insert(assignments).values(**dict(row, state="released")))


def test_schema_and_claim_queries_compile_for_postgresql():
    """No PostgreSQL here: check that the DDL (partial unique index included) and the pick query render for it."""
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateIndex, CreateTable

    from passthru.inventory import schema
    from passthru.inventory.claims import _pick_stmt

    pg = postgresql.dialect()
    ddl = [str(CreateTable(t).compile(dialect=pg)) for t in schema.metadata.sorted_tables]
    ddl += [str(CreateIndex(ix).compile(dialect=pg)) for t in schema.metadata.sorted_tables for ix in t.indexes]
    assert any("CREATE UNIQUE INDEX uq_assignments_active_device ON assignments (device) WHERE state IN "
               "('pending', 'reserved', 'attached')" in x for x in ddl)
    for shape in (None, "strict", "prefer"):
        assert "NOT (EXISTS" in str(_pick_stmt(True, True, shape).compile(dialect=pg))


def _migrate_worker(url: str, barrier, results) -> None:
    try:
        barrier.wait()
        results.put(Store(url).migrate())
    except Exception as e:  # noqa: BLE001 - reported to the parent
        results.put(f"{type(e).__name__}: {e}")


@pytest.mark.timeout(60)
def test_concurrent_first_starts_migrate_once(any_url):
    url = any_url
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_migrate_worker, args=(url, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [results.get(timeout=50) for _ in procs]
    for p in procs:
        p.join(10)
    assert [p.exitcode for p in procs] == [0] * 4
    assert got == [LATEST] * 4
    assert [h["version"] for h in Store(url).schema_history()] == [1, 2, 3, 4]


# -- devices -------------------------------------------------------------------------------------------------------
def test_sync_add_update_lost_back(any_url):
    s = Store(any_url)
    first = s.sync_devices(host())
    assert len(first["added"]) == len(host()) and first["updated"] == first["lost"] == []
    assert s.sync_devices(host()) == {"added": [], "updated": [], "lost": [], "back": [], "replaced": []}

    recs = [r for r in host() if r.identity != "serial:/dev/ttyS1"]
    recs[0] = pci("0000:18:00.0", numa_node=1, iommu_group=10, name="renamed")
    out = s.sync_devices(recs)
    assert out["updated"] == ["pci:0000:18:00.0"] and out["lost"] == ["serial:/dev/ttyS1"]
    dev = {d["identity"]: d for d in s.devices()}
    assert dev["pci:0000:18:00.0"]["numa_node"] == 1 and dev["pci:0000:18:00.0"]["name"] == "renamed"
    lost = dev["serial:/dev/ttyS1"]
    assert lost["state"] == "lost" and lost["last_seen"] < dev["pci:0000:18:00.0"]["last_seen"]
    assert [d["identity"] for d in s.devices(state="lost")] == ["serial:/dev/ttyS1"]

    out = s.sync_devices(recs + [DeviceRecord("serial:/dev/ttyS1", "serial", "serial")])
    assert out["back"] == out["updated"] == ["serial:/dev/ttyS1"] and out["lost"] == []
    assert s.devices(state="lost") == []
    assert [a["action"] for a in s.audit_log(1)] == ["devices.sync"]


def test_usb_port_with_another_device_counts_as_replaced(store):
    store.claim("vm1", ["usb:1-1.3"])
    other = DeviceRecord("usb:1-1.3", "usb", "usb", vendor_id=0x0781, device_id=0x5581, serial="XYZ")
    out = store.sync_devices([other if r.identity == "usb:1-1.3" else r for r in host()])
    assert out["updated"] == ["usb:1-1.3"]
    assert out["replaced"] == [{"identity": "usb:1-1.3", "old": "1050:0407:1234", "new": "0781:5581:XYZ",
                                "held_by": "vm1"}]
    [dev] = [d for d in store.devices(kind="usb")]
    assert (dev["vendor_id"], dev["device_id"], dev["serial"], dev["vm"]) == (0x0781, 0x5581, "XYZ", "vm1")
    # same stick, other serial number: replaced too
    out = store.sync_devices([DeviceRecord("usb:1-1.3", "usb", "usb", vendor_id=0x0781, device_id=0x5581,
                                           serial="ABC")])
    assert [r["new"] for r in out["replaced"]] == ["0781:5581:ABC"]


@pytest.mark.parametrize("bad, msg", [
    (DeviceRecord("0000:18:00.0", "pci", "gpu"), "identity looks like"),
    (DeviceRecord("pci:0000:18:00.0", "isa", "gpu"), "bus must be"),
    (DeviceRecord("pci:0000:18:00.0", "pci", "gpu", vendor_id=0x10000), "0..0xffff"),
    (DeviceRecord("pci:0000:18:00.0", "pci", ""), "kind is empty"),
])
def test_sync_rejects_malformed_records(any_url, bad, msg):
    with pytest.raises(UsageError, match=msg):
        Store(any_url).sync_devices([bad])


def test_sync_rejects_duplicates_and_changes_nothing(any_url):
    s = Store(any_url)
    with pytest.raises(UsageError, match="listed twice"):
        s.sync_devices(host() + host()[:1])
    assert s.devices() == []


# -- models --------------------------------------------------------------------------------------------------------
def test_models_add_list_remove(store):
    store.add_model("intel-qat", 0x8086, 0x37C8, kind="accelerator", description="QuickAssist 8970")
    assert [(m["name"], m["vendor_id"], m["kind"]) for m in store.models()] == [("intel-qat", 0x8086, "accelerator")]
    dev = {d["identity"]: d for d in store.devices()}
    assert dev["pci:0000:5e:00.0"]["model"] == "intel-qat"
    assert [d["identity"] for d in store.devices(kind="accelerator")] == ["pci:0000:5e:00.0"]
    store.remove_model("intel-qat")
    assert store.models() == []
    with pytest.raises(NotFoundError):
        store.remove_model("intel-qat")


@pytest.mark.parametrize("args, msg", [
    (("gpu", 0x8086, 0x37C8), "built-in kind"),
    (("Bad Name", 0x8086, 0x37C8), "lowercase"),
    (("qat", 0x10000, 0x37C8), "0..0xffff"),
    (("qat", 0x8086, -1), "0..0xffff"),
    (("qat", 0x8086, 0x37C8, "Not A Kind"), "kind"),
])
def test_add_model_refuses_bad_input(store, args, msg):
    with pytest.raises(UsageError, match=msg):
        store.add_model(*args)


def test_add_model_refuses_duplicates(store):
    store.add_model("qat", 0x8086, 0x37C8)
    with pytest.raises(UsageError, match="exists"):
        store.add_model("qat", 0x8086, 0x1234)
    with pytest.raises(UsageError, match="already model 'qat'"):
        store.add_model("qat2", 0x8086, 0x37C8)


def test_remove_model_in_use_is_refused_unless_forced(store):
    store.add_model("qat", 0x8086, 0x37C8)
    store.claim_any("vm1", model="qat")
    with pytest.raises(UsageError, match=r"in use: pci:0000:5e:00.0 \(VM 'vm1'\)"):
        store.remove_model("qat")
    store.remove_model("qat", force=True)
    assert store.models() == [] and held(store) == {"pci:0000:5e:00.0": "vm1"}


# -- claim ---------------------------------------------------------------------------------------------------------
def test_claim_reserves_and_is_idempotent_for_the_same_vm(store):
    [a] = store.claim("vm1", ["pci:0000:18:00.0"], vm_uuid="7c1c9a0e-0000-4000-8000-000000000001")
    assert isinstance(a, Assignment)
    assert (a.vm, a.device, a.state, a.released) == ("vm1", "pci:0000:18:00.0", "reserved", None)
    assert a.created.endswith("Z") and a.created == a.updated
    store.set_state("vm1", a.device, "attached")
    again = store.claim("vm1", ["pci:0000:18:00.0", "pci:0000:19:00.0"])
    assert again[0].id == a.id and again[0].state == "attached"
    assert again[1].device == "pci:0000:19:00.0" and again[1].state == "reserved"
    assert len(store.assignments("vm1")) == 2


@pytest.mark.parametrize("first, then, msg", [
    ((), ["pci:0000:ff:00.0"], "unknown device"),
    (("vm2", ["pci:0000:18:00.0"]), ["pci:0000:18:00.0"], "already assigned to VM 'vm2'"),
    (("vm2", ["pci:0000:3b:00.0"]), ["pci:0000:3b:02.0"], r"parent \(PF\) pci:0000:3b:00.0 is assigned whole to "
                                                          "VM 'vm2'"),
    (("vm2", ["pci:0000:3b:02.1"]), ["pci:0000:3b:00.0"], "VF/child pci:0000:3b:02.1 is assigned to VM 'vm2'"),
    (("vm1", ["pci:0000:3b:02.1"]), ["pci:0000:3b:00.0"], "VF/child"),  # the same VM can't hold both either
    (("vm2", ["pci:0000:af:00.1"]), ["pci:0000:af:00.0"], "pci:0000:af:00.1 in the same IOMMU group is assigned to "
                                                          "VM 'vm2'"),
    (("vm2", ["pci:0000:d8:00.0"]), ["mdev:4b20d080-1b54-4048-85b3-a6a62d165c01"], "parent"),
    (("vm2", ["mdev:4b20d080-1b54-4048-85b3-a6a62d165c01"]), ["pci:0000:d8:00.0"], "child"),
    ((), ["pci:0000:3b:00.0", "pci:0000:3b:02.0"], "in this same request"),
])
def test_claim_refusals_name_device_and_holder(store, first, then, msg):
    if first:
        store.claim(*first)
    before = store.assignments()
    with pytest.raises(ClaimError, match=msg) as e:
        store.claim("vm1", then)
    assert e.value.exit_code == 2 and isinstance(e.value, UsageError)
    assert store.assignments() == before


def test_claim_of_a_lost_device_is_refused(store):
    store.sync_devices([r for r in host() if r.identity != "usb:1-1.3"])
    with pytest.raises(ClaimError, match="usb:1-1.3: device is lost"):
        store.claim("vm1", ["usb:1-1.3"])


def test_one_vm_may_hold_a_whole_iommu_group(store):
    got = store.claim("vm1", ["pci:0000:af:00.0", "pci:0000:af:00.1"])
    assert [a.device for a in got] == ["pci:0000:af:00.0", "pci:0000:af:00.1"]


def test_claim_is_all_or_nothing(store):
    store.claim("vm2", ["pci:0000:19:00.0"])
    with pytest.raises(ClaimError, match="pci:0000:19:00.0: already assigned to VM 'vm2'"):
        store.claim("vm1", ["pci:0000:18:00.0", "pci:0000:19:00.0"])
    assert held(store) == {"pci:0000:19:00.0": "vm2"}
    assert [e["action"] for e in store.audit_log()].count("claim") == 1


def test_claim_input_checks(store):
    with pytest.raises(UsageError, match="list"):
        store.claim("vm1", "pci:0000:18:00.0")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="list"):
        store.claim("vm1", [])
    with pytest.raises(UsageError, match="VM name"):
        store.claim(" ", ["pci:0000:18:00.0"])


def test_same_vm_name_with_another_uuid_is_refused(store):
    store.claim("vm1", ["pci:0000:18:00.0"], vm_uuid="aaaaaaaa-0000-4000-8000-00000000000a")
    with pytest.raises(ClaimError, match="UUID aaaaaaaa-0000-4000-8000-00000000000a, not bbbbbbbb"):
        store.claim("vm1", ["pci:0000:19:00.0"], vm_uuid="bbbbbbbb-0000-4000-8000-00000000000b")
    store.claim("vm1", ["pci:0000:19:00.0"], vm_uuid="aaaaaaaa-0000-4000-8000-00000000000a")


# -- claim_any -----------------------------------------------------------------------------------------------------
def test_claim_any_by_kind_until_no_free_device(store):
    got = [store.claim_any("vm1", kind="gpu").device for _ in range(6)]
    assert got == ["pci:0000:18:00.0", "pci:0000:19:00.0", "pci:0000:86:00.0", "pci:0000:87:00.0",
                   "pci:0000:af:00.0", "pci:0000:d8:00.0"]
    with pytest.raises(ClaimError, match=r"no free device of kind 'gpu' for VM 'vm1' \(6 present, 6 held"):
        store.claim_any("vm1", kind="gpu")
    with pytest.raises(ClaimError, match="no free device of kind 'fpga'.*none on this host"):
        store.claim_any("vm1", kind="fpga")


def test_claim_any_numa_strict_and_prefer(store):
    assert store.claim_any("vm1", kind="gpu", numa=0).device == "pci:0000:18:00.0"
    assert store.claim_any("vm1", kind="gpu", numa=0).device == "pci:0000:19:00.0"
    with pytest.raises(ClaimError, match="no free device of kind 'gpu' on NUMA node 0 for VM 'vm1'"):
        store.claim_any("vm1", kind="gpu", numa=0)
    with pytest.raises(ClaimError, match="none on node 7"):
        store.claim_any("vm1", kind="gpu", numa=7)
    assert store.claim_any("vm1", kind="gpu", numa=0, numa_policy="prefer").device == "pci:0000:86:00.0"
    with pytest.raises(UsageError, match="NUMA policy"):
        store.claim_any("vm1", kind="gpu", numa=0, numa_policy="loose")


def test_claim_any_prefer_takes_the_node_first(store):
    assert store.claim_any("vm1", kind="gpu", numa=1, numa_policy="prefer").device == "pci:0000:86:00.0"


def test_claim_any_by_model(store):
    store.add_model("qat", 0x8086, 0x37C8, kind="accelerator")
    a = store.claim_any("vm1", model="qat")
    assert a.device == "pci:0000:5e:00.0"
    with pytest.raises(ClaimError, match="no free device of model 'qat'"):
        store.claim_any("vm2", model="qat")
    with pytest.raises(NotFoundError, match="no model named 'nope'"):
        store.claim_any("vm2", model="nope")
    store.release("vm1")
    assert store.claim_any("vm2", kind="accelerator").device == "pci:0000:5e:00.0"  # a model's kind matches too
    with pytest.raises(UsageError, match="kind or a model"):
        store.claim_any("vm2")


def test_claim_any_follows_pf_vf_and_group_rules(store):
    store.claim("vm2", ["pci:0000:3b:00.0"])
    with pytest.raises(ClaimError, match="no free device of kind 'nic'.*1 held, the rest blocked"):
        store.claim_any("vm1", kind="nic")
    store.release("vm2")
    assert store.claim_any("vm1", kind="nic").device == "pci:0000:3b:00.0"  # PF first by identity
    store.release("vm1")
    store.claim("vm2", ["pci:0000:3b:02.0"])
    assert store.claim_any("vm1", kind="nic").device == "pci:0000:3b:02.1"  # not the PF: a VF is in use
    # group 30: GPU af:00.0 is skipped for vm1 while vm2 holds its audio function, not for vm2
    for ident in ("pci:0000:18:00.0", "pci:0000:19:00.0", "pci:0000:86:00.0", "pci:0000:87:00.0"):
        store.claim("vm3", [ident])
    store.claim("vm2", ["pci:0000:af:00.1"])
    assert store.claim_any("vm1", kind="gpu").device == "pci:0000:d8:00.0"
    assert store.claim_any("vm2", kind="gpu").device == "pci:0000:af:00.0"


def test_claim_any_skips_lost_devices(store):
    store.sync_devices([r for r in host() if r.kind != "gpu" or r.identity == "pci:0000:87:00.0"])
    assert store.claim_any("vm1", kind="gpu").device == "pci:0000:87:00.0"
    with pytest.raises(ClaimError, match=r"\(1 present, 1 held"):
        store.claim_any("vm1", kind="gpu")


@pytest.mark.timeout(60)
def test_refusals_do_not_wait_for_the_write_lock(store, tmp_path):
    if store.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock; PostgreSQL has no database-wide write lock")
    for _ in range(6):
        store.claim_any("vm1", kind="gpu")
    blocker = sqlite3.connect(tmp_path / "passthru.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock (busy_timeout is 30 s)
    try:
        with pytest.raises(ClaimError, match="no free device"):
            store.claim_any("vm2", kind="gpu")
        with pytest.raises(ClaimError, match="already assigned to VM 'vm1'"):
            store.claim("vm2", ["pci:0000:18:00.0"])
        assert len(store.assignments()) == 6  # reads don't wait either
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


# -- states and release ---------------------------------------------------------------------------------------------
def test_state_transitions(store):
    dev = "pci:0000:18:00.0"
    store.claim("vm1", [dev])
    assert store.set_state("vm1", dev, "attached").state == "attached"
    assert store.set_state("vm1", dev, "attached").state == "attached"  # same state: a no-op, safe to retry
    assert store.set_state("vm1", dev, "reserved").state == "reserved"  # detached, still held
    assert store.set_state("vm1", dev, "attached").state == "attached"
    gone = store.set_state("vm1", dev, "released")
    assert gone.state == "released" and gone.released == gone.updated
    for bad in ("attached", "reserved", "released"):
        with pytest.raises(InvalidState) as e:
            store.set_state("vm1", dev, bad)
        assert e.value.current == "released" and e.value.requested == bad
        assert e.value.expected == {"attached": ("reserved",), "reserved": ("pending", "attached"),
                                    "released": ("pending", "reserved", "attached")}[bad]
        assert isinstance(e.value, UsageError)
    with pytest.raises(UsageError, match="one of pending, reserved, attached, released"):
        store.set_state("vm1", dev, "running")
    with pytest.raises(NotFoundError, match="VM 'vm2' holds no device"):
        store.set_state("vm2", dev, "attached")
    assert [e["detail"]["to"] for e in store.audit_log() if e["action"] in ("state", "release")][::-1] == \
        ["attached", "reserved", "attached", "released"]


def test_release_all_or_one(store):
    store.claim("vm1", ["pci:0000:18:00.0", "pci:0000:19:00.0", "usb:1-1.3"])
    store.claim("vm2", ["pci:0000:86:00.0"])
    [one] = store.release("vm1", "usb:1-1.3")
    assert one.state == "released" and one.released
    rest = store.release("vm1")
    assert sorted(a.device for a in rest) == ["pci:0000:18:00.0", "pci:0000:19:00.0"]
    assert held(store) == {"pci:0000:86:00.0": "vm2"}
    with pytest.raises(NotFoundError, match="VM 'vm1' holds no devices"):
        store.release("vm1")
    with pytest.raises(NotFoundError, match="holds no device usb:1-1.3"):
        store.release("vm2", "usb:1-1.3")
    history = store.assignments("vm1", active=False)
    assert len(history) == 3 and {a.state for a in history} == {"released"}
    assert store.claim("vm2", ["pci:0000:18:00.0"])[0].state == "reserved"  # free again
    assert len(store.assignments(active=False)) == 5


# -- audit ---------------------------------------------------------------------------------------------------------
def test_audit_log_newest_first_with_actor(store):
    store.audit("vm.start", None, "vm1", {"pid": 42})
    store.claim("vm1", ["pci:0000:18:00.0"])
    log = store.audit_log(2)
    assert [e["action"] for e in log] == ["claim", "vm.start"]
    claim, start = log
    assert claim["device"] == "pci:0000:18:00.0" and claim["detail"]["via"] == "claim"
    assert start["detail"] == {"pid": 42} and start["actor"]["pid"] == os.getpid()
    assert claim["time"] >= start["time"]
    assert len(store.audit_log(1)) == 1
    with pytest.raises(UsageError):
        store.audit("", None, None)


# -- 8 processes race for the last free devices ----------------------------------------------------------------------
def _race_worker(url: str, n: int, barrier, results) -> None:
    got, errors, final = [], [], None
    try:
        store = Store(url)
        store.migrate()
    except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the test
        errors.append(f"{type(e).__name__}: {e}")
    barrier.wait()
    while not errors:
        try:
            got.append(store.claim_any(f"vm{n}", kind="gpu").device)
        except ClaimError as e:
            final = str(e)
            break
        except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the test
            errors.append(f"{type(e).__name__}: {e}")
            break
    results.put((n, got, final, errors))


@pytest.mark.timeout(60)
def test_eight_processes_race_for_twenty_gpus(any_url):
    url = any_url
    setup = Store(url)
    setup.sync_devices([pci(f"0000:{i + 1:02x}:00.0", iommu_group=i) for i in range(20)]
                       + [pci("0000:a0:00.0", kind="nic", iommu_group=99)])
    setup.close()
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(url, n, barrier, results)) for n in range(8)]
    for p in procs:
        p.start()
    out = [results.get(timeout=50) for _ in procs]
    for p in procs:
        p.join(10)
    assert [p.exitcode for p in procs] == [0] * 8
    assert [e for _n, _g, _f, errs in out for e in errs] == []  # no "database is locked", nothing else
    claimed = [d for _n, got, _f, _e in out for d in got]
    assert len(claimed) == 20 and len(set(claimed)) == 20
    assert all(final and final.startswith("no free device of kind 'gpu'") for _n, _g, final, _e in out)
    check = Store(url)
    active = check.assignments()
    assert len(active) == 20 and len({a.device for a in active}) == 20
    by_vm = {a.device: a.vm for a in active}
    assert all(by_vm[d] == f"vm{n}" for n, got, _f, _e in out for d in got)
