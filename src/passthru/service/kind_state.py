"""Per-assignment host configuration by a device's kind (a NIC VF's MAC/VLAN...), recorded at assign time and undone
on release: one record per VM and device, ``<state>/kind-state/<vm>/<identity>.json``, written after the kind
changed the host and removed once it put it back (``passthru reconcile`` finishes either after a kill)."""

from __future__ import annotations

import json
import os
import re

from .session import Session
from ..journal import Op
from ..statefs import read_record, write_atomic

__all__ = ["hook_path", "configure_vfs", "undo_kind"]


def hook_path(s: Session, vm: str, ident: str) -> str:
    return os.path.join(s.paths.state_dir, "kind-state", vm, re.sub(r"[^A-Za-z0-9.-]+", "_", ident) + ".json")


def configure_vfs(s: Session, vm: str, vfs: list[str], options: dict, op: Op) -> None:
    """Each VF's settings, through its PF; the VF is named in the operation's journal before it is touched, so a
    failure (undo_assign) or a kill (reconcile) puts its prior settings back."""
    from ..kinds import kind_for

    for ident in vfs:
        op.update(vfs=[*op.get("vfs", []), ident])  # type: ignore[misc]
        prior = kind_for("nic").before_assign(s.host, s.paths, vm, ident, options)
        if prior:
            write_atomic(hook_path(s, vm, ident), json.dumps({"kind": "nic", "identity": ident, **prior}).encode(),
                         0o600)


def undo_kind(s: Session, vm: str, ident: str) -> None:
    """Put back what a kind changed for this assignment (recorded at assign time), then forget the record."""
    from ..kinds import kind_for

    path = hook_path(s, vm, ident)
    rec = read_record(path, "move it away; `passthru vf reset PF N` puts the VF back")
    if rec is None:
        return
    kind_for(rec.get("kind", "custom")).after_release(s.host, s.paths, vm, ident, rec)
    os.unlink(path)
