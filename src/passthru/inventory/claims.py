"""Claims and the exclusivity rules, as SQL run inside the claim's write transaction.

A device may be held (an assignment in state reserved or attached) by at most one VM, and:

- ``self``:   not when it is already held (by the same VM a claim is idempotent and returns the holding);
- ``parent``: not when its parent is held (a VF whose PF is assigned whole; an mdev whose parent GPU is);
- ``child``:  not when one of its children is held (a PF with a VF in use; a GPU with a vGPU in use);
- ``group``:  not when another device of its IOMMU group is held by a *different* VM (a group is the unit the
  IOMMU isolates; one VM may hold several members, e.g. a GPU and its audio function).

:func:`conflicts` explains why one named device can't be claimed; :func:`pick` finds a device for which there is
no conflict, in one statement, with the same rules as NOT EXISTS subqueries. :func:`claim_devices` and
:func:`claim_any_device` check and insert in the caller's write transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL:
SERIALIZABLE), so nothing can change in between; the partial unique index backs the "self" rule in the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (ColumnElement, Connection, RowMapping, Select, and_, bindparam, case, exists, func, insert,
                        literal_column, or_, select)
from sqlalchemy.exc import IntegrityError

from ..errors import NotFoundError
from ..identity import pci_address
from .base import Assignment, ClaimError, now, write_audit
from .schema import ACTIVE_STATES, assignments, devices, models

__all__ = ["Conflict", "conflicts", "pick", "count_matching", "match_clause", "claim_devices", "claim_any_device",
           "active"]

_INSERT_ASSIGNMENT = insert(assignments)
_ACTIVE = [literal_column(f"'{s}'") for s in ACTIVE_STATES]


def active(state: ColumnElement) -> ColumnElement[bool]:
    """``state IN ('pending', 'reserved', 'attached')`` with the values in the SQL text, not bound: the predicate of
    the partial unique index, so the database can use that index, and nothing to expand at each execution."""
    return state.in_(_ACTIVE)


@dataclass(frozen=True, slots=True)
class Conflict:
    rule: str  # self | parent | child | group
    device: str  # the held device
    vm: str  # its holder
    assignment: int


def conflicts(conn: Connection, dev: RowMapping, vm: str) -> list[Conflict]:
    """Active holdings that stop ``vm`` from claiming ``dev`` (a devices row), most direct first."""
    a, d = assignments, devices
    ident = dev["identity"]
    conds = [a.c.device == ident, d.c.parent == ident]
    if dev["parent"]:
        conds.append(a.c.device == dev["parent"])
    if dev["iommu_group"] is not None:
        conds.append(and_(d.c.iommu_group == dev["iommu_group"], d.c.bus == dev["bus"], a.c.vm != vm))
    rows = conn.execute(
        select(a.c.id, a.c.device, a.c.vm, d.c.parent)
        .select_from(a.join(d, a.c.device == d.c.identity))
        .where(a.c.state.in_(ACTIVE_STATES), or_(*conds))
        .order_by(a.c.id)
    ).all()
    out = []
    for r in rows:
        if r.device == ident:
            rule = "self"
        elif r.device == dev["parent"]:
            rule = "parent"
        elif r.parent == ident:
            rule = "child"
        else:
            rule = "group"
        out.append(Conflict(rule, r.device, r.vm, r.id))
    order = {"self": 0, "parent": 1, "child": 2, "group": 3}
    return sorted(out, key=lambda c: order[c.rule])


def match_clause(kind: Any, model: tuple[Any, Any] | None) -> list[ColumnElement[bool]]:
    """WHERE terms for "a device of this kind / model". ``kind`` matches the device's own kind, or the kind (or
    name) of a custom model whose vendor:device the PCI function has; ``model`` matches vendor:device. Values may
    be bind parameters."""
    d, m = devices, models.alias("m_match")  # an alias: the caller's query may join models itself
    terms: list[ColumnElement[bool]] = []
    if kind is not None:
        via_model = exists().where(m.c.vendor_id == d.c.vendor_id, m.c.device_id == d.c.device_id,
                                   or_(m.c.kind == kind, m.c.name == kind), d.c.bus == "pci")
        terms.append(or_(d.c.kind == kind, via_model))
    if model is not None:
        terms.extend([d.c.bus == "pci", d.c.vendor_id == model[0], d.c.device_id == model[1]])
    return terms


@lru_cache(maxsize=None)
def _pick_stmt(by_kind: bool, by_model: bool, numa: str | None) -> Select:
    """The pick statement for one shape of request, built once (building it costs more than running it); values
    come as bind parameters: vm, kind, vendor, device, numa."""
    d, a = devices, assignments
    a_self, a_par, a_kid, a_grp = (a.alias(n) for n in ("a_self", "a_par", "a_kid", "a_grp"))
    d_kid, d_grp = d.alias("d_kid"), d.alias("d_grp")
    held_self = exists().where(a_self.c.device == d.c.identity, active(a_self.c.state))
    held_parent = exists().where(a_par.c.device == d.c.parent, active(a_par.c.state))
    held_child = exists().where(d_kid.c.parent == d.c.identity, a_kid.c.device == d_kid.c.identity,
                                active(a_kid.c.state))
    held_group = exists().where(d_grp.c.iommu_group == d.c.iommu_group, d_grp.c.bus == d.c.bus,
                                a_grp.c.device == d_grp.c.identity, active(a_grp.c.state),
                                a_grp.c.vm != bindparam("vm"))
    terms = match_clause(bindparam("kind") if by_kind else None,
                         (bindparam("vendor"), bindparam("device")) if by_model else None)
    q = select(d).where(d.c.state == "present", *terms, ~held_self, ~held_parent, ~held_child, ~held_group).limit(1)
    if numa == "strict":
        q = q.where(d.c.numa_node == bindparam("numa"))
    if numa == "prefer":
        return q.order_by(case((d.c.numa_node == bindparam("numa"), 0), else_=1), d.c.identity)
    return q.order_by(d.c.identity)


def pick(conn: Connection, vm: str, *, kind: str | None, model: tuple[int, int] | None, numa: int | None,
         prefer: bool) -> RowMapping | None:
    """The first present device matching kind/model that ``vm`` may claim; on NUMA node ``numa`` only (strict)
    or first (``prefer``); then by identity, so picks are predictable."""
    shape = None if numa is None else ("prefer" if prefer else "strict")
    params: dict[str, Any] = {"vm": vm, "kind": kind, "numa": numa}
    if model is not None:
        params.update(vendor=model[0], device=model[1])
    stmt = _pick_stmt(kind is not None, model is not None, shape)
    return conn.execute(stmt, params).mappings().first()


def count_matching(conn: Connection, kind: str | None, model: tuple[int, int] | None,
                   numa: int | None) -> dict[str, int]:
    """For a "no free device" message: how many devices match, how many of them are present / on the node / held."""
    d, a = devices, assignments
    held = exists().where(a.c.device == d.c.identity, a.c.state.in_(ACTIVE_STATES))
    terms = match_clause(kind, model)
    present = d.c.state == "present"
    q = select(
        func.count(),
        func.coalesce(func.sum(case((present, 1), else_=0)), 0),
        func.coalesce(func.sum(case((and_(present, d.c.numa_node == numa), 1), else_=0)), 0),
        func.coalesce(func.sum(case((and_(present, held), 1), else_=0)), 0),
    ).select_from(d)
    if terms:
        q = q.where(*terms)
    total, n_present, on_node, n_held = conn.execute(q).one()
    return {"total": total, "present": n_present, "on_node": on_node, "held": n_held}


# -- the claims ----------------------------------------------------------------------------------------------------
def claim_devices(c: Connection, vm: str, wanted: list[str], vm_uuid: str | None,
                  who: dict | None, op: dict | None = None) -> list[Assignment]:
    """Store.claim's transaction body: every device of ``wanted`` or a ClaimError (the caller rolls back).
    ``who`` None is the read-only pre-check: the same refusals against a snapshot, nothing inserted."""
    check_uuid(c, vm, vm_uuid)
    rows = {r["identity"]: r for r in c.execute(select(devices).where(devices.c.identity.in_(wanted))).mappings()}
    out, mine = [], set()
    for ident in wanted:
        dev = rows.get(ident)
        if dev is None:
            raise ClaimError(f"{ident}: unknown device; `passthru devices` lists what this host has")
        if dev["state"] != "present":
            raise ClaimError(f"{ident}: device is lost (last seen {dev['last_seen']}); it cannot be claimed")
        existing = None
        for cf in conflicts(c, dev, vm):
            if cf.rule == "self" and cf.vm == vm:
                existing = cf.assignment
                continue
            raise ClaimError(refusal(ident, cf, cf.assignment in mine))
        if existing is not None:
            out.append(Assignment.from_row(c.execute(select(assignments).where(assignments.c.id == existing)).one()))
            continue
        if who is None:
            continue
        a = insert_assignment(c, vm, vm_uuid, ident, {"via": "claim"}, who, op)
        mine.add(a.id)
        out.append(a)
    return out


def claim_any_device(c: Connection, vm: str, *, kind: str | None, model: str | None, numa: int | None,
                     numa_policy: str, vm_uuid: str | None, who: dict | None,
                     op: dict | None = None) -> Assignment | None:
    """Store.claim_any's transaction body: pick and insert, or a ClaimError saying what was asked and why not.
    ``who`` None is the read-only pre-check: the same refusal against a snapshot, nothing inserted (None)."""
    check_uuid(c, vm, vm_uuid)
    ids = None
    if model is not None:
        row = c.execute(select(models).where(models.c.name == model)).first()
        if row is None:
            raise NotFoundError(f"no model named {model!r}; `passthru models` lists them")
        ids = (row.vendor_id, row.device_id)
    dev = pick(c, vm, kind=kind, model=ids, numa=numa, prefer=numa_policy == "prefer")
    if dev is None:
        node = None if numa is None else f"on NUMA node {numa}" + (" (preferred)" if numa_policy == "prefer" else "")
        what = " ".join(filter(None, [f"of kind {kind!r}" if kind else None,
                                      f"of model {model!r}" if model else None, node]))
        n = count_matching(c, kind, ids, numa)
        if n["present"] == 0:
            why = f"{n['total']} known, none present" if n["total"] else "none on this host"
        elif numa is not None and numa_policy == "strict" and n["on_node"] == 0:
            why = f"{n['present']} present, none on node {numa}"
        else:
            why = f"{n['present']} present, {n['held']} held, the rest blocked by PF/VF or IOMMU-group rules"
        raise ClaimError(f"no free device {what} for VM {vm!r} ({why})")
    if who is None:
        return None
    return insert_assignment(c, vm, vm_uuid, dev["identity"], {"via": "claim_any", "kind": kind, "model": model,
                                                                "numa": numa, "numa_policy": numa_policy}, who, op)


def check_uuid(c: Connection, vm: str, vm_uuid: str | None) -> None:
    """A VM name already holding devices under another UUID is another VM (a reused name): refused."""
    if vm_uuid is None:
        return
    a = assignments
    other = c.execute(select(a.c.vm_uuid).where(a.c.vm == vm, a.c.state.in_(ACTIVE_STATES), a.c.vm_uuid.is_not(None),
                                                a.c.vm_uuid != vm_uuid).limit(1)).first()
    if other:
        raise ClaimError(f"VM {vm!r} holds devices under UUID {other.vm_uuid}, not {vm_uuid}: another VM with the "
                         "same name? Release the old holdings first")


def refusal(ident: str, cf: Conflict, same_request: bool) -> str:
    holder = "in this same request" if same_request else f"to VM {cf.vm!r}"
    if cf.rule == "self":
        return f"{ident}: already assigned to VM {cf.vm!r}"
    if cf.rule == "parent":
        return f"{ident}: its parent (PF) {cf.device} is assigned whole {holder}"
    if cf.rule == "child":
        return f"{ident}: its VF/child {cf.device} is assigned {holder}; a PF with VFs in use can't go whole"
    return f"{ident}: {cf.device} in the same IOMMU group is assigned to VM {cf.vm!r}; a group goes to one VM"


def insert_assignment(c: Connection, vm: str, vm_uuid: str | None, ident: str, detail: dict, who: dict,
                      op: dict | None = None) -> Assignment:
    """One new holding: ``reserved``, or ``pending`` inside a journaled operation (``op``: {"id": ..., "takeover":
    "vfio" | None}) until that operation finishes."""
    ts = now()
    state = "pending" if op else "reserved"
    op_id = op.get("id") if op else None
    takeover = op.get("takeover") if op and pci_address(ident) else None
    try:
        new_id = c.execute(_INSERT_ASSIGNMENT, {"vm": vm, "vm_uuid": vm_uuid, "device": ident, "state": state,
                                                "created": ts, "updated": ts, "released": None, "op": op_id,
                                                "takeover": takeover}).inserted_primary_key[0]
    except IntegrityError:  # the partial unique index: only reachable if a check above was bypassed
        raise ClaimError(f"{ident}: already assigned to another VM") from None
    write_audit(c, who, "claim", ident, vm, {"assignment": new_id, "vm_uuid": vm_uuid, "op": op_id, **detail}, ts)
    return Assignment(new_id, vm, vm_uuid, ident, state, ts, ts, None, op_id, takeover)
