"""One reconcile for the CLI (``passthru reconcile``) and the agent (at start and ``POST /reconcile``): make passthru's
records agree with the kernel after a crash, a reboot or changes made outside passthru.

1. Takeover (``vfio.reconcile``; the agent at start: ``vfio.apply_boot``, which also binds what is persisted):
   interrupted group binds/restores are finished or undone so that every IOMMU group is whole.
2. Interrupted operations of the inventory (their journal intent is left and no process holds it): an ``assign``
   that did not finish is undone (its pending claims released, the devices it moved given back, VF settings put
   back); a ``release`` is finished; a ``vgpu.create`` for a VM whose assignment never happened is removed.
3. Assignments against the kernel: a PCI device a VM holds must be on vfio-pci when passthru took it over for that
   VM (``takeover`` "vfio"); one that is not (the host rebooted, someone restored it) is taken over again, whole
   group, with the same guards as ``bind``. A device gone from the host, or one the guards refuse now, cannot be
   repaired here: it is reported with the command that ends the holding, and reconcile fails.
4. Leftovers: a VF's per-assignment settings or a vGPU made for a VM that no longer holds it are put back.

The report says what was repaired (``status`` "changed") and ``ok`` false when something could not be (exit 1).
"""

from __future__ import annotations

import os
from typing import Any

from .. import vfio
from .session import Session
from ..errors import PassthruError
from ..host.iommu import is_vfio_driver
from ..identity import parse as parse_identity
from ..identity import pci_address
from ..journal import journal_for
from .kind_state import hook_path, undo_kind
from ..kinds.vgpu import MdevStore, release_created
from ..statefs import read_record

__all__ = ["reconcile"]


def reconcile(s: Session, *, kernel: Any = None, apply_persisted: bool = False) -> dict:
    """See the module docstring. Raises UsageError on a root that is not the live host (nothing to reconcile)."""
    out = (vfio.apply_boot if apply_persisted else vfio.reconcile)(s.host, s.paths, kernel=kernel)
    doc = out.to_json()
    errors: list[str] = [out.error] if out.error else []
    inv_report: dict[str, Any] = {"operations": [], "assignments": [], "leftovers": []}
    try:
        _operations(s, kernel, inv_report, errors)
        _assignments(s, kernel, inv_report, errors)
        _leftovers(s, kernel, inv_report, errors)
    except PassthruError as e:
        errors.append(f"inventory: {e}")
    changed = doc["status"] == "changed" or any(inv_report[k] for k in inv_report)
    doc.update(ok=not errors, error="; ".join(errors) or None, status="changed" if changed else "unchanged",
               inventory=inv_report)
    return doc


# -- 2. interrupted operations -------------------------------------------------------------------------------------
def _operations(s: Session, kernel: Any, report: dict, errors: list[str]) -> None:
    journal = journal_for(s.paths.state_dir)
    orphans = journal.orphans("assign") + journal.orphans("release") + journal.orphans("vgpu.")
    if not orphans:
        return
    # the inventory (SQLAlchemy) only when there is something to settle: see _store
    from .assign import undo_assign
    from .release import finish_release

    store = _store(s)
    for op in sorted(orphans, key=lambda o: o.id):
        item: dict[str, Any] = {"op": op.id, "kind": op.kind, "vm": op.get("vm"), "started": op.get("started")}
        problems: list[str] = []
        if op.kind == "assign":
            pending = [a for a in store.assignments(str(op.get("vm"))) if a.op == op.id and a.state == "pending"]
            if pending or not _finished(store, op.id):
                undo = undo_assign(s, store, op.doc, kernel=kernel)
                problems = undo.pop("errors")
                item.update(action="undone", **{k: v for k, v in undo.items() if k not in ("op", "vm")})
            else:
                item["action"] = "finished"  # it died after its claims were final: nothing left to do
        elif op.kind == "release":
            try:
                released = finish_release(s, store, op.doc, kernel=kernel)
                item.update(action="finished", released=[a.device for a in released])
            except PassthruError as e:
                problems.append(str(e))
        elif op.kind == "vgpu.create":
            vm, vgpu = str(op.get("vm")), str(op.get("vgpu"))
            held = {a.device for a in store.assignments(vm)}
            if f"mdev:{vgpu}" not in held and f"pci:{vgpu}" not in held:
                try:
                    removed = release_created(s.host, s.paths, vm, [f"mdev:{vgpu}", f"pci:{vgpu}"], kernel=kernel)
                    item.update(action="undone", removed=[r.id for r in removed])
                except PassthruError as e:
                    problems.append(str(e))
            else:
                item["action"] = "finished"
        else:
            problems.append(f"unknown operation kind {op.kind!r} in {journal.dir}")
        if problems:
            item["errors"] = problems
            errors.extend(f"{op.kind} {op.id}: {p}" for p in problems)
            op.release()  # kept: the next reconcile tries again
        else:
            op.done()
        report["operations"].append(item)


def _finished(store: Any, op_id: str) -> bool:
    """Whether an assign's claims were made final (finish_op) before it died: reserved rows carry its id."""
    return any(a.op == op_id and a.state != "pending" for a in store.assignments(None, active=False))


# -- 3. assignments against the kernel ------------------------------------------------------------------------------
def _store(s: Session) -> Any:
    """The inventory. Imported here, not at module top: a host with no inventory database (``bind`` / ``restore``
    only) reconciles without loading SQLAlchemy, which was 6 of the 16 s a `passthru reconcile` took in the TCG
    lab guest (`python -X importtime`)."""
    from .assign import open_store

    return open_store(s)


def _assignments(s: Session, kernel: Any, report: dict, errors: list[str]) -> None:
    if not s.has_inventory():
        return  # nothing is assigned
    store = _store(s)
    live_ops = {d["id"] for d in journal_for(s.paths.state_dir).live()}
    active = store.assignments()
    # the host as it is now (the store's own view is synced by assign and by the agent); only when it is needed
    inv = s.inventory() if any(pci_address(a.device) for a in active) else None
    rebind: dict[str, tuple[str, str]] = {}
    for a in active:
        if a.state == "pending":
            if a.op not in live_ops:  # a claim whose operation left no journal: never finished
                store.release(a.vm, a.device)
                report["assignments"].append({"vm": a.vm, "device": a.device, "action": "released",
                                              "why": "a pending claim of an operation that is gone"})
            continue
        ident = parse_identity(a.device)
        if ident.bus == "mdev" and not os.path.exists(f"{s.host.sys}/bus/mdev/devices/{ident.key}"):
            msg = (f"{a.device} held by VM {a.vm!r} is not on the host (re-create it with `passthru vgpu "
                   f"start-persisted`, or `passthru release {a.vm} {a.device}`)")
            report["assignments"].append({"vm": a.vm, "device": a.device, "action": "none", "why": msg})
            errors.append(msg)
        if ident.bus != "pci":
            continue
        addr = ident.key
        fn = inv.pci_function(addr) if inv is not None else None
        if fn is None:
            msg = f"{addr} held by VM {a.vm!r} is gone from the host: `passthru release {a.vm} {addr}`"
            report["assignments"].append({"vm": a.vm, "device": a.device, "action": "none", "why": msg})
            errors.append(msg)
        elif a.takeover == "vfio" and not is_vfio_driver(fn.driver):
            rebind[addr] = (a.vm, fn.driver or "no driver")
    for addr, (vm, drv) in rebind.items():
        item = {"vm": vm, "device": f"pci:{addr}", "was": drv}
        try:
            res = vfio.bind(s.host, s.paths, [addr], group=True, kernel=kernel)
            item.update(action="taken over", moved=[d.address for d in res.devices if d.status == "changed"])
        except PassthruError as e:
            msg = (f"VM {vm!r} holds {addr}, which is on {drv}, and it cannot be taken over now ({e}); "
                   f"`passthru release {vm} {addr}` ends the holding")
            item.update(action="none", why=msg)
            errors.append(msg)
        report["assignments"].append(item)


# -- 4. leftovers ---------------------------------------------------------------------------------------------------
def _leftovers(s: Session, kernel: Any, report: dict, errors: list[str]) -> None:
    active = _store(s).assignments() if s.has_inventory() else []
    wanted = {hook_path(s, a.vm, a.device) for a in active}
    base = os.path.join(s.paths.state_dir, "kind-state")
    for vm in _dirs(base):
        for name in _dirs(os.path.join(base, vm), files=True):
            path = os.path.join(base, vm, name)
            if path in wanted or not name.endswith(".json"):
                continue
            rec = read_record(path, "move it away")
            ident = next((i for i in _idents(rec) if hook_path(s, vm, i) == path), None)
            try:
                if ident is None:
                    raise PassthruError(f"{path}: cannot tell which device it is for; move it away")
                undo_kind(s, vm, ident)
                report["leftovers"].append({"vm": vm, "device": ident, "action": "settings put back"})
            except PassthruError as e:
                errors.append(str(e))
    held = {(a.vm, a.device) for a in active}
    live = {str(d.get("vgpu")) for d in journal_for(s.paths.state_dir).live("vgpu.")}
    for rec in MdevStore(s.paths).records():
        ident = f"mdev:{rec.id}" if rec.mode == "mdev" else f"pci:{rec.id}"
        if rec.vm is None or (rec.vm, ident) in held or rec.id in live:
            continue
        try:
            release_created(s.host, s.paths, rec.vm, [ident], kernel=kernel)
            report["leftovers"].append({"vm": rec.vm, "device": ident, "action": "vGPU removed"})
        except PassthruError as e:
            errors.append(str(e))


def _dirs(d: str, files: bool = False) -> list[str]:
    try:
        return sorted(n for n in os.listdir(d) if not n.startswith(".")
                      and (files or os.path.isdir(os.path.join(d, n))))
    except FileNotFoundError:
        return []


def _idents(rec: dict | None) -> list[str]:
    """Identities a kind-state record may belong to (its PCI VF address, or its vf:PF:N form)."""
    if not rec:
        return []
    out = [str(rec["identity"])] if rec.get("identity") else []
    if rec.get("pf") is not None and rec.get("vf") is not None:
        out.append(f"vf:{rec['pf']}:{rec['vf']}")
    return out

