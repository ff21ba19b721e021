"""The cluster's transaction bodies: placement (pick a host and devices, reserve them), the end of allocations,
the sweep (stale hosts, expired reservations) and a host's device sync. Each runs inside one transaction that
``ClusterStore`` opens (READ COMMITTED on PostgreSQL, BEGIN IMMEDIATE on SQLite).

Placement in one transaction:
    1. an unlocked look, counted by the database: the groups (a host, or its NUMA node and/or PCIe switch when asked)
       with enough free matching devices on hosts that are up, fullest fit first, at most 16; and whether the VM
       already holds something. Nothing fits (or it holds something): the sweep runs, then the look again, then the
       refusal says why (holds already, unknown host, spec matching nothing, no room);
    2. for each candidate group: the host row ``FOR KEY SHARE`` (a fence waits for us, we see its result), then per
       spec ``SELECT ... WHERE holder IS NULL ... FOR UPDATE SKIP LOCKED LIMIT n``: rows another scheduler is taking
       are skipped, not waited for; a row freed or taken since our look is re-checked once locked (READ COMMITTED
       re-evaluates the WHERE on the newest row version). Too few: the next group (several devices: after rolling
       back to a savepoint, so that group's locks go; see ``place``);
    3. insert the allocations (``reserved``, expiring) and set each device's ``holder``.
The partial unique index on live allocations is the last word if anything above were wrong.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Callable

from sqlalchemy import (Connection, Float, Select, String, and_, bindparam, cast, collate, exists, func, insert,
                        literal_column, or_, select, tuple_, update)

from ...errors import NotFoundError, UsageError
from ..base import ClaimError
from ..schema import LIVE_STATES, cluster_allocations, cluster_devices, hosts
from ..spec import FORMS, parse_spec
from .clock import db_now, shift
from .records import ClusterDevice, check_host_name, check_vm

__all__ = ["Want", "parse_want", "Busy", "place", "placed", "last_released", "sync", "sweep", "end", "placeable"]

h, cd, ca = hosts, cluster_devices, cluster_allocations
_IDS = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")
_MAX_TRIES = 16  # candidate groups tried in one transaction
SWEEP_EVERY_S = 1.0  # a store's placements run the sweep first at most this often (and always before a refusal)
_FIELDS = tuple(f.name for f in fields(ClusterDevice))
_kid, _mate = cd.alias("kid"), cd.alias("mate")


def placeable():  # type: ignore[no-untyped-def]
    """A device that may be given whole, as the statement's snapshot sees it: no VF (child) of it is published (a PF
    with VFs is scheduled as its VFs, so a PF and its VF never go to two VMs) and no other device of its IOMMU group
    on its host is held (a group goes to one VM). Placement re-checks the group under row locks (``_mates_free``)."""
    has_kids = exists().where(_kid.c.host == cd.c.host, _kid.c.parent == cd.c.identity)
    mate_held = exists().where(_mate.c.host == cd.c.host, _mate.c.iommu_group == cd.c.iommu_group,
                               _mate.c.identity != cd.c.identity, _mate.c.holder.is_not(None))
    return and_(~has_kids, ~mate_held)


def _placeable_if_free():  # type: ignore[no-untyped-def]
    """placeable() for a device whose own holder is NULL (every query using this also says so), as two uncorrelated
    subqueries the database runs once per statement instead of two per candidate row: not the PF of a published VF,
    and not in an IOMMU group of its host in which a device is held (the device itself is not: so a *mate* is)."""
    parents = select(_kid.c.host, _kid.c.parent).where(_kid.c.parent.is_not(None))
    held = select(_mate.c.host, _mate.c.iommu_group).where(_mate.c.holder.is_not(None),
                                                          _mate.c.iommu_group.is_not(None))
    return and_(tuple_(cd.c.host, cd.c.identity).not_in(parents),
                or_(cd.c.iommu_group.is_(None), tuple_(cd.c.host, cd.c.iommu_group).not_in(held)))


@dataclass(frozen=True, slots=True)
class Want:
    text: str  # as typed
    form: str  # "name" (kind or model) | "ids" (vendor:device) | "identity"
    value: str | tuple[int, int]

    def clause(self):  # type: ignore[no-untyped-def]
        if self.form == "ids":
            return and_(cd.c.vendor_id == self.value[0], cd.c.device_id == self.value[1])
        if self.form == "identity":
            return cd.c.identity == self.value
        return or_(cd.c.kind == self.value, cd.c.model == self.value)

    def matches(self, row) -> bool:  # type: ignore[no-untyped-def]
        if self.form == "ids":
            return (row.vendor_id, row.device_id) == self.value
        if self.form == "identity":
            return row.identity == self.value
        return self.value in (row.kind, row.model)


def parse_want(text: str) -> Want:
    """A SPEC as ``assign`` takes it (kind, model, PCI address...), or vendor:device (``10de:2330``)."""
    t = text.strip() if isinstance(text, str) else ""
    if m := _IDS.match(t):
        return Want(text, "ids", (int(m.group(1), 16), int(m.group(2), 16)))
    try:
        spec = parse_spec(t)
    except UsageError:
        raise UsageError(f"{text!r} is not a device spec; use a kind or model name (gpu, a100), vendor:device "
                         f"(10de:2330) or one of: {', '.join(FORMS[2:])}") from None
    if spec.form == "name":
        return Want(text, "name", spec.value)
    if spec.form == "usb-id":
        raise UsageError(f"{text!r}: the cluster places PCI devices; name them by kind, model or vendor:device")
    return Want(text, "identity", spec.identity or spec.value)


class Busy:
    """Every group that fits was being taken by other schedulers at that moment: try again."""


def _fits(rows: list, needs: list[tuple[Want, int]]) -> bool:
    left = list(rows)
    for want, n in needs:
        take = [r for r in left if want.matches(r)][:n]
        if len(take) < n:
            return False
        left = [r for r in left if r not in take]
    return True


def place(c: Connection, vm: str, wants: list[Want], *, count: int, same_numa: bool, same_switch: bool,
          host: str | None, ttl: float, sweep: Callable[[], object] | None = None,
          sweep_first: bool = False) -> dict | Busy:
    """``sweep`` (the store's expiry and host-state sweep, run on ``c``) runs first when ``sweep_first``, and in any
    case before a refusal: when nothing fits or the VM seems to hold devices (its reservations may have expired)."""
    check_vm(vm)
    if not wants:
        raise UsageError("place needs one or more device specs")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UsageError(f"--count must be 1 or more, got {count!r}")
    if host is not None:
        check_host_name(host)
    swept = sweep is not None and sweep_first
    if swept:
        sweep()  # type: ignore[misc]
    needs = [(w, count) for w in wants]
    fitting, held = _candidates(c, vm, wants, needs, same_numa, same_switch, host)
    if (held or not fitting) and sweep is not None and not swept:  # what has expired (ours too) is free again
        sweep()
        fitting, held = _candidates(c, vm, wants, needs, same_numa, same_switch, host)
    if held or not fitting:
        _refuse(c, vm, wants, count, same_numa, same_switch, host)
    # several devices: a savepoint, rolled back to (its locks go) after each group that fails. One device: a group
    # fails having locked no device (only its host row, FOR KEY SHARE, kept to the end), unless the IOMMU-group check
    # failed after the device was locked: then Busy, the transaction ends (its locks go) and the store tries again
    savepoint = count * len(wants) > 1
    if savepoint:
        c.exec_driver_sql("SAVEPOINT passthru_try")
    for k in fitting[:_MAX_TRIES]:
        got, locked = _try_group(c, k, needs, same_numa, same_switch)
        if got is not None:
            return _reserve(c, vm, k[0], got, ttl)
        if savepoint:
            c.exec_driver_sql("ROLLBACK TO SAVEPOINT passthru_try")
        elif locked:
            break
    return Busy()


def _refuse(c: Connection, vm: str, wants: list[Want], count: int, same_numa: bool, same_switch: bool,
            host: str | None) -> None:
    """Why nothing fits, first reason first: the VM holds devices, the host is unknown or not up, a spec matches no
    device, no room."""
    held = c.execute(select(ca.c.host, ca.c.device).where(ca.c.vm == vm, ca.c.state.in_(LIVE_STATES))).all()
    if held:
        raise ClaimError(f"VM {vm!r} already holds {len(held)} device(s) on host {held[0].host!r}; "
                         f"`passthru cluster release {vm}` first")
    if host is not None:
        hrow = c.execute(select(h.c.state).where(h.c.name == host)).first()
        if hrow is None:
            raise NotFoundError(f"no host named {host!r} in the cluster; `passthru cluster hosts` lists them")
        if hrow.state != "up":
            raise ClaimError(f"host {host!r} is {hrow.state}: no placement there until it is up again")
    for w in wants:
        if c.execute(select(cd.c.identity).where(w.clause()).limit(1)).first() is None:
            raise ClaimError(f"spec {w.text!r} matches no device in the cluster; `passthru cluster devices` lists "
                             "them")
    raise ClaimError(_no_room(vm, wants, count, same_numa, same_switch, host))


# -- statements built once per shape (building one costs more than the database takes to run it) -----------------
def _want_clause(form: str):  # type: ignore[no-untyped-def]
    """Want.clause with the value as bind parameters (b_v, or b_v0/b_v1 for vendor:device)."""
    if form == "ids":
        return and_(cd.c.vendor_id == bindparam("b_v0"), cd.c.device_id == bindparam("b_v1"))
    if form == "identity":
        return cd.c.identity == bindparam("b_v")
    return or_(cd.c.kind == bindparam("b_v"), cd.c.model == bindparam("b_v"))


def _want_params(w: Want) -> dict:
    return {"b_v0": w.value[0], "b_v1": w.value[1]} if w.form == "ids" else {"b_v": w.value}


_LIVE = ca.c.state.in_([literal_column(f"'{s}'") for s in LIVE_STATES])  # the values in the SQL: nothing to expand
_HELD = select(ca.c.host).where(ca.c.vm == bindparam("b_vm"), _LIVE).limit(1).scalar_subquery()


@lru_cache(maxsize=None)
def _groups_stmt(pg: bool, form: str, same_numa: bool, same_switch: bool, on_host: bool) -> Select:
    """One spec: the groups (host, and NUMA node and/or switch when asked) with at least b_count free matching
    devices, fullest fit first (fewest free, then by key as text: the order the Python path sorts in; "C" collation
    on PostgreSQL, SQLite's default is the same code-point order), at most _MAX_TRIES; and whether the VM holds
    something (``held``: one of its hosts)."""
    keys = [cd.c.host] + ([cd.c.numa_node] if same_numa else []) + ([cd.c.switch] if same_switch else [])
    order = [cd.c.host] + ([cast(cd.c.numa_node, String)] if same_numa else []) + ([cd.c.switch] if same_switch else [])
    known = [k.is_not(None) for k in keys[1:]]  # unknown NUMA node or switch: cannot promise "same"
    q = (select(*keys, func.count().label("n"), _HELD.label("held"))
         .select_from(cd.join(h, h.c.name == cd.c.host))
         .where(h.c.state == "up", cd.c.state == "present", cd.c.holder.is_(None), _want_clause(form),
                _placeable_if_free(), *known))
    if on_host:
        q = q.where(cd.c.host == bindparam("b_host"))
    return (q.group_by(*keys).having(func.count() >= bindparam("b_count"))
            .order_by(func.count(), *[collate(o, "C") if pg else o for o in order]).limit(_MAX_TRIES))


def _candidates(c: Connection, vm: str, wants: list[Want], needs: list[tuple[Want, int]], same_numa: bool,
                same_switch: bool, host: str | None) -> tuple[list[tuple], bool]:
    """The groups that could satisfy the request (an unlocked look), fullest fit first, and whether ``vm`` holds
    devices (only known for sure when some group fits: the caller asks again before refusing)."""
    if len(wants) == 1:
        w = wants[0]
        params = {"b_vm": vm, "b_count": needs[0][1], "b_host": host, **_want_params(w)}
        rows = c.execute(_groups_stmt(c.dialect.name == "postgresql", w.form, same_numa, same_switch,
                                      host is not None), params).all()
        keys = [(r.host, r.numa_node if same_numa else None, r.switch if same_switch else None) for r in rows]
        return keys, bool(rows) and rows[0].held is not None
    if c.execute(select(_HELD), {"b_vm": vm}).scalar() is not None:
        return [], True
    free = (select(cd.c.host, cd.c.identity, cd.c.kind, cd.c.model, cd.c.vendor_id, cd.c.device_id,
                   cd.c.numa_node, cd.c.switch)
            .select_from(cd.join(h, h.c.name == cd.c.host))
            .where(h.c.state == "up", cd.c.state == "present", cd.c.holder.is_(None), or_(*[w.clause() for w in wants]),
                   _placeable_if_free()))
    if host is not None:
        free = free.where(cd.c.host == host)
    groups: dict[tuple, list] = {}
    for r in c.execute(free.order_by(cd.c.host, cd.c.identity)):
        if same_numa and r.numa_node is None or same_switch and r.switch is None:
            continue  # unknown NUMA node or switch: cannot promise "same"
        groups.setdefault((r.host, r.numa_node if same_numa else None, r.switch if same_switch else None), []).append(r)
    fitting = sorted((k for k, rows in groups.items() if _fits(rows, needs)),
                     key=lambda k: (len(groups[k]), tuple("" if x is None else str(x) for x in k)))
    return fitting, False


_HOST_LOCK = (select(h.c.epoch).where(h.c.name == bindparam("b_host"), h.c.state == "up")
              .with_for_update(key_share=True, read=True))
_mates = cd.alias("mates")


@lru_cache(maxsize=None)
def _lock_stmt(form: str, n: int, same_numa: bool, same_switch: bool, others: bool):  # type: ignore[no-untyped-def]
    """Up to ``n`` free devices of one spec on host b_host, locked, skipping rows others hold locked; with whether
    each has IOMMU-group mates on its host (only then are the mates locked and checked)."""
    has_mates = exists().where(_mates.c.host == cd.c.host, _mates.c.iommu_group == cd.c.iommu_group,
                               _mates.c.identity != cd.c.identity)
    q = (select(cd, has_mates.label("has_mates"))
         .where(cd.c.host == bindparam("b_host"), cd.c.holder.is_(None), cd.c.state == "present", placeable(),
                _want_clause(form))
         .order_by(cd.c.identity).limit(n).with_for_update(skip_locked=True))
    q = q.where(*([cd.c.numa_node == bindparam("b_numa")] if same_numa else []),
                *([cd.c.switch == bindparam("b_switch")] if same_switch else []))
    if others:
        q = q.where(cd.c.identity.not_in(bindparam("b_picked", expanding=True)))
    return q


def _try_group(c: Connection, k: tuple, needs: list[tuple[Want, int]], same_numa: bool,
               same_switch: bool) -> tuple[list | None, bool]:
    """Lock the host row (FOR KEY SHARE: a fence waits for us) and the devices. Returns the devices with the host's
    epoch, or None and whether any device row was locked before it failed."""
    host, numa, switch = k
    up = c.execute(_HOST_LOCK, {"b_host": host}).first()
    if up is None:
        return None, False
    picked: list = []
    for want, n in needs:
        params = {"b_host": host, "b_numa": numa, "b_switch": switch, **_want_params(want)}
        if picked:
            params["b_picked"] = [p.identity for p in picked]
        rows = c.execute(_lock_stmt(want.form, n, same_numa, same_switch, bool(picked)), params).all()
        if len(rows) < n:
            return None, bool(picked or rows)
        picked += rows
    if any(r.has_mates for r in picked) and not _mates_free(c, host, picked):
        return None, True
    return [(up.epoch, r) for r in picked], True


def _mates_free(c: Connection, host: str, picked: list) -> bool:
    """Lock the other devices of the picked ones' IOMMU groups (skipping, never waiting) and check that none is
    held: another scheduler giving a group mate to another VM holds that mate's row lock, or has set its holder."""
    groups = {r.iommu_group for r in picked if r.iommu_group is not None}
    if not groups:
        return True
    q = select(cd.c.identity, cd.c.holder).where(cd.c.host == host, cd.c.iommu_group.in_(sorted(groups)),
                                                 cd.c.identity.not_in([r.identity for r in picked]))
    everyone = c.execute(q).all()
    if not everyone:
        return True
    locked = c.execute(q.with_for_update(skip_locked=True)).all()
    return len(locked) == len(everyone) and all(r.holder is None for r in locked)


_FMT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
_INSERT = insert(ca).values(vm=bindparam("b_vm"), host=bindparam("b_host"), device=bindparam("b_device"),
                            state="reserved", epoch=bindparam("b_epoch"))
_INSERT_AT = _INSERT.values(created=bindparam("b_created"), expires=bindparam("b_expires")).returning(
    ca.c.id, ca.c.created, ca.c.expires)
# PostgreSQL: the server's clock at this statement, which runs after the locks were granted (so later than the
# release that freed these devices), and the deadline; the same value as clock.db_now would have given then
_INSERT_PG = _INSERT.values(
    created=func.to_char(func.timezone("UTC", func.statement_timestamp()), _FMT),
    expires=func.to_char(func.timezone("UTC", func.statement_timestamp() + func.make_interval(
        0, 0, 0, 0, 0, 0, bindparam("b_ttl", type_=Float))), _FMT)).returning(ca.c.id, ca.c.created, ca.c.expires)
_SET_HOLDER = (update(cd).where(cd.c.host == bindparam("b_host"), cd.c.identity == bindparam("b_identity"))
               .values(holder=bindparam("b_holder")))


def _and_hold(ins):  # type: ignore[no-untyped-def]
    """PostgreSQL: the INSERT and the device's holder in one statement (a data-modifying WITH)."""
    a = ins.returning(ca.c.host, ca.c.device).cte("a")
    return (update(cd).values(holder=a.c.id).where(cd.c.host == a.c.host, cd.c.identity == a.c.device)
            .returning(a.c.id, a.c.created, a.c.expires))


_HOLD_PG, _HOLD_PG_AT = _and_hold(_INSERT_PG), _and_hold(_INSERT_AT)


def _reserve(c: Connection, vm: str, host: str, got: list, ttl: float) -> dict:
    out = []
    epoch = got[0][0]
    stamp: tuple[str, str] | None = None
    pg = c.dialect.name == "postgresql"
    for _e, r in got:
        params = {"b_vm": vm, "b_host": host, "b_device": r.identity, "b_epoch": epoch}
        if pg:
            if stamp is None:
                row = c.execute(_HOLD_PG, {**params, "b_ttl": float(ttl)}).one()
                stamp = (row.created, row.expires)
            else:
                row = c.execute(_HOLD_PG_AT, {**params, "b_created": stamp[0], "b_expires": stamp[1]}).one()
        else:
            if stamp is None:
                locked = db_now(c)  # after the locks: later than the release that freed these devices
                stamp = (locked, shift(locked, ttl))
            row = c.execute(_INSERT_AT, {**params, "b_created": stamp[0], "b_expires": stamp[1]}).one()
            c.execute(_SET_HOLDER, {"b_host": host, "b_identity": r.identity, "b_holder": row.id})
        out.append({"allocation": row.id, "identity": r.identity, "kind": r.kind, "model": r.model,
                    "numa_node": r.numa_node, "switch": r.switch, "iommu_group": r.iommu_group})
    assert stamp is not None
    return {"vm": vm, "host": host, "epoch": epoch, "state": "reserved", "expires": stamp[1], "devices": out}


def placed(c: Connection, vm: str) -> dict | None:
    """``vm``'s live allocations in the shape :func:`place` returns, or None when it holds nothing."""
    rows = c.execute(select(ca.c.id, ca.c.host, ca.c.state, ca.c.expires, ca.c.epoch, cd)
                     .select_from(ca.join(cd, and_(cd.c.host == ca.c.host, cd.c.identity == ca.c.device)))
                     .where(ca.c.vm == vm, ca.c.state.in_(LIVE_STATES)).order_by(ca.c.id)).all()
    if not rows:
        return None
    devs = [{"allocation": r.id, "identity": r.identity, "kind": r.kind, "model": r.model, "numa_node": r.numa_node,
             "switch": r.switch, "iommu_group": r.iommu_group} for r in rows]
    return {"vm": vm, "host": rows[0].host, "epoch": rows[0].epoch, "state": rows[0].state,
            "expires": rows[0].expires, "devices": devs}


def last_released(c: Connection, vm: str) -> list[dict]:
    """The allocations of ``vm`` released by the most recent release (same timestamp), as release returns them."""
    last = c.execute(select(ca.c.released).where(ca.c.vm == vm, ca.c.reason == "released")
                     .order_by(ca.c.released.desc()).limit(1)).scalar()
    if last is None:
        return []
    return [{"id": r.id, "host": r.host, "device": r.device} for r in c.execute(
        select(ca.c.id, ca.c.host, ca.c.device).where(ca.c.vm == vm, ca.c.released == last).order_by(ca.c.id))]


def _no_room(vm: str, wants: list[Want], count: int, same_numa: bool, same_switch: bool, host: str | None) -> str:
    what = " + ".join(f"{count} x {w.text}" for w in wants)
    where = " ".join(filter(None, ["on one NUMA node" if same_numa else None,
                                   "on one PCIe switch" if same_switch else None,
                                   f"on host {host!r}" if host else "on any host that is up"]))
    return (f"no room for VM {vm!r}: {what} {where} are not free; `passthru cluster devices --free` shows what "
            "is")


_ENDING = (update(ca).where(_LIVE).values(state="released", released=bindparam("b_ts"), reason=bindparam("b_reason"))
           .returning(ca.c.id, ca.c.host, ca.c.device))
_END_ONE = _ENDING.where(ca.c.id == bindparam("b_id"))
_END = _ENDING.where(ca.c.id.in_(bindparam("b_ids", expanding=True)))
_FREE = (update(cd).where(cd.c.host == bindparam("b_host"), cd.c.identity == bindparam("b_identity"),
                          cd.c.holder == bindparam("b_id")).values(holder=None))


def end(c: Connection, ids: list[int], ts: str, reason: str) -> set[int]:
    """Release the live allocations ``ids`` (state released, ``reason``) and free their devices; returns the ids this
    transaction ended (another may have ended some first)."""
    if not ids:
        return set()
    one = {"b_id": min(ids)} if len(ids) == 1 else {"b_ids": sorted(ids)}
    rows = c.execute(_END_ONE if "b_id" in one else _END, {**one, "b_ts": ts, "b_reason": reason}).all()
    frees = [{"b_host": r.host, "b_identity": r.device, "b_id": r.id} for r in rows]
    if frees:  # in (host, device) order, as every transaction that frees several does
        c.execute(_FREE, sorted(frees, key=lambda f: (f["b_host"], f["b_identity"])))
    return {r.id for r in rows}


def sweep(c: Connection, ts: str, suspect_after: float, down_after: float) -> dict:
    down = c.execute(update(h).where(h.c.state.in_(("up", "suspect")), h.c.heartbeat < shift(ts, -down_after))
                     .values(state="down", changed=ts).returning(h.c.name)).all()
    suspect = c.execute(update(h).where(h.c.state == "up", h.c.heartbeat < shift(ts, -suspect_after))
                        .values(state="suspect", changed=ts).returning(h.c.name)).all()
    stale = [r.id for r in c.execute(select(ca.c.id).where(ca.c.state == "reserved", ca.c.expires < ts))]
    expired = end(c, stale, ts, "expired")
    return {"down": [r.name for r in down], "suspect": [r.name for r in suspect], "expired": len(expired)}


def sync(c: Connection, host: str, devices: list[ClusterDevice], ts: str) -> dict:
    """The host's devices as its agent sees them: new ones added, changed ones updated, missing ones ``lost`` (kept
    with their holder: a VM may still have them)."""
    seen: set[str] = set()
    for d in devices:
        if not isinstance(d, ClusterDevice):
            raise UsageError(f"sync takes ClusterDevice objects, got {type(d).__name__}")
        d.check()
        if d.identity in seen:
            raise UsageError(f"{d.identity}: listed twice")
        seen.add(d.identity)
    old = {r.identity: r for r in c.execute(select(cd).where(cd.c.host == host))}
    added, updated = [], []
    for d in devices:
        new = asdict(d)
        prev = old.get(d.identity)
        if prev is None:
            c.execute(insert(cd).values(host=host, state="present", last_seen=ts, **new))
            added.append(d.identity)
        elif prev.state != "present" or any(getattr(prev, f) != new[f] for f in _FIELDS):
            c.execute(update(cd).where(cd.c.host == host, cd.c.identity == d.identity)
                      .values(state="present", last_seen=ts, **new))
            updated.append(d.identity)
    lost = sorted(i for i, r in old.items() if i not in seen and r.state == "present")
    if lost:
        c.execute(update(cd).where(cd.c.host == host, cd.c.identity == bindparam("b_identity"))
                  .values(state="lost"), [{"b_identity": i} for i in lost])
    c.execute(update(cd).where(cd.c.host == host, cd.c.state == "present").values(last_seen=ts))
    return {"added": added, "updated": updated, "lost": lost}

