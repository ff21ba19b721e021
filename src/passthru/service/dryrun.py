"""``release --dry-run``: the same checks and refusals as a real release, then what it would do; nothing written.

It checks what the VM holds (the inventory in a rolled-back :meth:`Store.rehearsal`) and reports what would be
released, given back to its driver (``--restore``, by ``restore``'s own dry run), reset (VF settings) or removed
(vGPUs made for the VM). No journal, no lock file, no audit line. ``assign --dry-run`` is in service.py.
"""

from __future__ import annotations

import os

from .session import Session
from ..vfio import Holdings
from ..vfio import restore as vfio_restore
from .assign import _hook_path, open_store, pci_addresses
from .release import to_release

__all__ = ["plan_release"]


def plan_release(s: Session, vm: str, texts: list[str] | None = None, *, restore: bool = False) -> dict:
    """release --dry-run: the same refusals, then what :func:`release` would do - the holdings released, the VF
    settings put back, (``restore``) the PCI devices given back to their drivers, the vGPUs made for the VM removed.
    Reads only (the inventory in a rolled-back rehearsal, so not even a migration is kept)."""
    from ..kinds.vgpu import MdevStore

    store = open_store(s, dry_run=True)
    with store.rehearsal():
        idents = to_release(s, store, vm, texts)
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
