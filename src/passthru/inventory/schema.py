"""The inventory's tables (as the code reads them now) and the versioned migrations that build them.

Tables::

    devices      identity (PK: "pci:0000:86:00.0", "usb:1-1.3", "serial:/dev/ttyS1", "mdev:<uuid>"), bus, kind,
                 vendor_id, device_id, serial, numa_node, iommu_group, parent (PF / mdev parent identity), name,
                 state ("present" | "lost"), first_seen, last_seen (last sync that saw it), changed
    models       name (PK), vendor_id, device_id (unique pair), kind, description, created
    assignments  id, vm, vm_uuid, device (FK devices.identity), state (pending | reserved | attached | released),
                 created, updated, released, op (the journal operation that claimed it: v3), takeover ("vfio" when
                 passthru moves the device to vfio-pci for this assignment, else null: v3)
    audit        id, time, action, device, vm, detail (JSON), actor (JSON: uid, user, sudo_user, pid)
    schema_migrations  version (PK), name, applied

The cluster (v4; used on the one PostgreSQL that many hosts share, ``passthru cluster``)::

    hosts                name (PK), address (the agent's), epoch (bumped at every join: an agent restart), heartbeat,
                         state (up | suspect | down), joined, changed
    cluster_devices      (host FK hosts.name, identity) PK, kind, model, vendor_id, device_id, numa_node, switch (the
                         PCIe upstream bridge below the root port, NULL when none or unknown), iommu_group, parent (PF),
                         vfio (the driver state the agent saw), state (present | lost), last_seen, holder (the live
                         allocation's id, NULL when free: what placement locks and re-checks)
    cluster_allocations  id, vm, host, device, state (reserved | confirmed | released), created, expires (a reservation's
                         deadline), confirmed, epoch (the host's epoch at placement, then at confirmation), released,
                         reason (released | expired | fenced | lost)

"Never two holders" holds there too as a partial unique index: ``uq_cluster_allocations_live`` on
``cluster_allocations(host, device) WHERE state IN ('reserved', 'confirmed')``. Released rows are the history.

"Never two holders" is a database rule, not only a check in the code: ``uq_assignments_active_device`` is a partial
unique index on ``assignments(device) WHERE state IN ('pending','reserved','attached')`` (SQLite and PostgreSQL
both have partial indexes). ``pending`` (v3) is a claim inside one running ``assign``: it becomes ``reserved`` when
the operation finishes, and reconcile releases it when the operation died. Times are ISO-8601 UTC text with microseconds (fixed width, so text order is time order).

Migrations are plain functions, one per version, applied in order inside one write transaction (SQLite and
PostgreSQL both have transactional DDL, so a failed upgrade leaves the previous version intact) and recorded in
``schema_migrations``. A migration's DDL is frozen in the migration (it never reads the current ``Table``
objects' columns), so a database made by any older passthru upgrades through the same steps.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import (JSON, Column, Connection, ForeignKey, ForeignKeyConstraint, Index, Integer, MetaData, String, Table, Text,
                        UniqueConstraint, text)

__all__ = ["metadata", "devices", "models", "assignments", "audit", "schema_migrations", "MIGRATIONS", "LATEST",
           "ACTIVE_STATES", "ACTIVE_SQL", "hosts", "cluster_devices", "cluster_allocations", "LIVE_STATES"]

ACTIVE_STATES = ("pending", "reserved", "attached")
ACTIVE_SQL = "state IN ('pending', 'reserved', 'attached')"
_V1_ACTIVE_SQL = "state IN ('reserved', 'attached')"  # frozen: the v1 index predicate
LIVE_STATES = ("reserved", "confirmed")  # a cluster allocation that holds its device
_V4_LIVE_SQL = "state IN ('reserved', 'confirmed')"  # frozen: the v4 index predicate
_TS = 32  # "2026-11-25T10:00:00.123456Z"


def _tables(md: MetaData) -> tuple[Table, Table, Table, Table]:
    """The v1 tables. Frozen: later versions change the schema in their own migration, never here."""
    dev = Table(
        "devices", md,
        Column("identity", String(255), primary_key=True),
        Column("bus", String(16), nullable=False),
        Column("kind", String(64), nullable=False),
        Column("vendor_id", Integer),
        Column("device_id", Integer),
        Column("serial", String(255)),
        Column("numa_node", Integer),
        Column("iommu_group", Integer),
        Column("parent", String(255)),
        Column("name", String(255)),
        Column("state", String(16), nullable=False),
        Column("first_seen", String(_TS), nullable=False),
        Column("last_seen", String(_TS), nullable=False),
        Column("changed", String(_TS), nullable=False),
    )
    mod = Table(
        "models", md,
        Column("name", String(64), primary_key=True),
        Column("vendor_id", Integer, nullable=False),
        Column("device_id", Integer, nullable=False),
        Column("kind", String(64), nullable=False),
        Column("description", Text),
        Column("created", String(_TS), nullable=False),
        UniqueConstraint("vendor_id", "device_id", name="uq_models_ids"),
    )
    asg = Table(
        "assignments", md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("vm", String(255), nullable=False),
        Column("vm_uuid", String(64)),
        Column("device", String(255), ForeignKey("devices.identity"), nullable=False),
        Column("state", String(16), nullable=False),
        Column("created", String(_TS), nullable=False),
        Column("updated", String(_TS), nullable=False),
        Column("released", String(_TS)),
        Index("uq_assignments_active_device", "device", unique=True,
              sqlite_where=text(_V1_ACTIVE_SQL), postgresql_where=text(_V1_ACTIVE_SQL)),
        # the partial index only serves queries whose WHERE repeats its literal predicate; lookups with bound
        # parameters use this one
        Index("ix_assignments_device_state", "device", "state"),
    )
    aud = Table(
        "audit", md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("time", String(_TS), nullable=False),
        Column("action", String(64), nullable=False),
        Column("device", String(255)),
        Column("vm", String(255)),
        Column("detail", JSON),
        Column("actor", JSON),
    )
    return dev, mod, asg, aud


def _v2_indexes(dev: Table, asg: Table) -> list[Index]:
    """v2: indexes for per-VM listings and for the PF/VF and IOMMU-group exclusivity lookups."""
    return [
        Index("ix_assignments_vm_state", asg.c.vm, asg.c.state),
        Index("ix_devices_parent", dev.c.parent),
        Index("ix_devices_iommu_group", dev.c.iommu_group),
    ]


def _v3_columns() -> list[Column]:
    """v3: the operation that claimed an assignment (pending claims) and whether passthru takes the device over."""
    return [Column("op", String(64)), Column("takeover", String(16))]


def _v3_unique(asg: Table) -> Index:
    return Index("uq_assignments_active_device", asg.c.device, unique=True,
                 sqlite_where=text(ACTIVE_SQL), postgresql_where=text(ACTIVE_SQL))


def _v4_tables(md: MetaData) -> tuple[Table, Table, Table]:
    """v4: the cluster's hosts, their devices and the allocations. Frozen like the v1 tables."""
    hst = Table(
        "hosts", md,
        Column("name", String(255), primary_key=True),
        Column("address", String(255)),
        Column("epoch", Integer, nullable=False),
        Column("heartbeat", String(_TS), nullable=False),
        Column("state", String(16), nullable=False),
        Column("joined", String(_TS), nullable=False),
        Column("changed", String(_TS), nullable=False),
    )
    cdev = Table(
        "cluster_devices", md,
        Column("host", String(255), ForeignKey("hosts.name"), primary_key=True),
        Column("identity", String(255), primary_key=True),
        Column("kind", String(64), nullable=False),
        Column("model", String(64)),
        Column("vendor_id", Integer),
        Column("device_id", Integer),
        Column("numa_node", Integer),
        Column("switch", String(64)),
        Column("iommu_group", Integer),
        Column("parent", String(255)),
        Column("vfio", String(32)),
        Column("state", String(16), nullable=False),
        Column("last_seen", String(_TS), nullable=False),
        Column("holder", Integer),
        Index("ix_cluster_devices_kind", "kind"),
    )
    alloc = Table(
        "cluster_allocations", md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("vm", String(255), nullable=False),
        Column("host", String(255), nullable=False),
        Column("device", String(255), nullable=False),
        Column("state", String(16), nullable=False),
        Column("created", String(_TS), nullable=False),
        Column("expires", String(_TS)),
        Column("confirmed", String(_TS)),
        Column("epoch", Integer, nullable=False),
        Column("released", String(_TS)),
        Column("reason", String(16)),
        ForeignKeyConstraint(["host", "device"], ["cluster_devices.host", "cluster_devices.identity"],
                             name="fk_cluster_allocations_device"),
        Index("uq_cluster_allocations_live", "host", "device", unique=True,
              sqlite_where=text(_V4_LIVE_SQL), postgresql_where=text(_V4_LIVE_SQL)),
        Index("ix_cluster_allocations_vm_state", "vm", "state"),
        Index("ix_cluster_allocations_state_expires", "state", "expires"),
    )
    return hst, cdev, alloc


# -- the current schema, as queries see it ------------------------------------------------------------------------
metadata = MetaData()
devices, models, assignments, audit = _tables(metadata)
_v2_indexes(devices, assignments)  # attach to the current tables (Index binds itself to its table's metadata)
for _col in _v3_columns():
    assignments.append_column(_col)
for _ix in list(assignments.indexes):  # the unique index now covers pending claims too
    if _ix.name == "uq_assignments_active_device":
        assignments.indexes.discard(_ix)
_v3_unique(assignments)
hosts, cluster_devices, cluster_allocations = _v4_tables(metadata)

schema_migrations = Table(
    "schema_migrations", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(255), nullable=False),
    Column("applied", String(_TS), nullable=False),
)


# -- migrations ---------------------------------------------------------------------------------------------------
def _m1(conn: Connection) -> None:
    md = MetaData()
    for t in _tables(md):
        t.create(conn)


def _m2(conn: Connection) -> None:
    dev, _mod, asg, _aud = _tables(MetaData())  # frozen v1 shapes: only names matter for CREATE INDEX
    for ix in _v2_indexes(dev, asg):
        ix.create(conn)


def _m3(conn: Connection) -> None:
    conn.execute(text("DROP INDEX uq_assignments_active_device"))
    for col in _v3_columns():
        kind = col.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE assignments ADD COLUMN {col.name} {kind}"))
    _dev, _mod, asg, _aud = _tables(MetaData())
    _v3_unique(asg).create(conn)


def _m4(conn: Connection) -> None:
    for t in _v4_tables(MetaData()):
        t.create(conn)


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "devices, models, assignments, audit", _m1),
    (2, "indexes: assignments(vm,state), devices(parent), devices(iommu_group)", _m2),
    (3, "assignments.op, assignments.takeover; pending claims in the one-holder index", _m3),
    (4, "cluster: hosts, cluster_devices, cluster_allocations (one live allocation per device)", _m4),
]
LATEST = MIGRATIONS[-1][0]
