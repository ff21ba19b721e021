"""Dry runs of assign and release: the same checks and refusals as the real operations, nothing written.

``assign --dry-run`` runs inside :meth:`Store.rehearsal`: discovery, the claims and their exclusivity rules happen
as in a real assign, in one transaction that is rolled back; the takeover is planned by ``bind``'s own dry run (the
same guards), VF settings are checked but not set. ``release --dry-run`` checks what the VM holds and reports what
would be released, given back to its driver (``--restore``), reset (VF settings) or removed (vGPUs made for it).
No journal, no lock file, no audit line: the state directory and the host stay as they were.
"""

from __future__ import annotations

import os

from ..commands import Session
from ..discovery import Inventory
from ..host.iommu import is_vfio_driver
from ..vfio import Store as Holdings
from ..vfio import bind as vfio_bind
from ..vfio import restore as vfio_restore
from .service import (AssignResult, _claim_all, _hook_path, _NoFn, _to_release, _vfs_of, open_store,
                      pci_addresses)
from .spec import Spec
from .store import Store

__all__ = ["rehearse_assign", "plan_release"]


def rehearse_assign(s: Session, store: Store, inv: Inventory, vm: str, specs: list[Spec], direct: list[str], bind: bool,
              vf_options: dict | None, pick: dict) -> AssignResult:
    """assign --dry-run, inside Store.rehearsal: the claims as the real run makes them (then rolled back), the
    takeover planned by bind's own dry run (its refusals), the VFs whose settings would be set. Writes nothing."""
    res = AssignResult(vm, dry_run=True)
    res.assignments = _claim_all(s, store, inv, vm, specs, direct, None, **pick)
    res.vfs = _vfs_of(inv, res.assignments) if vf_options else []
    addrs = pci_addresses([a.device for a in res.assignments])
    todo = [a for a in addrs if not is_vfio_driver((inv.pci_function(a) or _NoFn).driver)]
    if bind and todo:
        out = vfio_bind(s.host, s.paths, todo, group=True, dry_run=True)
        res.bound = [d.address for d in out.devices if d.status == "would change"]
        res.moves = {d.address: d.before for d in out.devices}
    return res


def plan_release(s: Session, vm: str, texts: list[str] | None = None, *, restore: bool = False) -> dict:
    """release --dry-run: the same refusals, then what :func:`release` would do - the holdings released, the VF
    settings put back, (``restore``) the PCI devices given back to their drivers, the vGPUs made for the VM removed.
    Reads only (the inventory in a rolled-back rehearsal, so not even a migration is kept)."""
    from ..mdev import MdevStore

    store = open_store(s, dry_run=True)
    with store.rehearsal():
        idents = _to_release(s, store, vm, texts)
    moves = []
    if restore:
        mine = {h.address for h in Holdings(s.paths).holdings()}
        addrs = [a for a in pci_addresses(idents) if a in mine]
        if addrs:
            out = vfio_restore(s.host, s.paths, addrs, dry_run=True)
            moves = [{"address": d.address, "from": d.before, "to": d.after, "status": d.status,
                      "group_mate_of": d.mate_of} for d in out.devices]
    made = MdevStore(s.paths)
    vgpus = [i for i in idents if i.startswith(("mdev:", "pci:")) and (r := made.get(i.split(":", 1)[1])) and r.vm == vm]
    return {"schema": 1, "vm": vm, "dry_run": True, "released": idents,
            "vf_settings_restored": [i for i in idents if os.path.exists(_hook_path(s, vm, i))],
            "restored": moves, "vgpus_removed": vgpus}
