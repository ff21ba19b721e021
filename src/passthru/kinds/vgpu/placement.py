"""Choosing where a vGPU goes: parents by name, types by id or name, capacity and placement (pack or spread).

What the kernel shows (parents, types, instances, the vGPUs one PCI function hosts) is read in ``host/mdev.py`` and
re-exported here. A GPU hosting live vGPUs is never taken whole: ``host/usage.py`` reports it (use ``vgpus``) and the
takeover guards (``vfio/plan.py``) refuse it, for ``bind`` and ``assign`` alike.

    parents = scan_parents(h)                       # [Parent], mdev parents first, then SR-IOV GPUs
    p = find_parent(parents, "mtty")                # by name; a VF address finds its PF
    cands = candidates(parents, "mtty-2")           # (parent, type) offering it, with capacity or not
    pick(cands, "spread")                           # placement among those with capacity
"""

from __future__ import annotations

from ...errors import NotFoundError, UsageError
from ...host.mdev import MDEV, SRIOV, UUID_RE, Instance, Parent, VgpuType, hosted_vgpus, nvidia_types, scan_parents
from ...host.pci import normalize_address

__all__ = ["VgpuType", "Instance", "Parent", "scan_parents", "find_parent", "candidates", "capacity", "pick",
           "match_type", "unknown_type", "nvidia_types", "hosted_vgpus", "UUID_RE", "MDEV", "SRIOV", "PLACEMENTS"]

PLACEMENTS = ("pack", "spread")


# -- choosing -----------------------------------------------------------------------------------------------------
def find_parent(parents: list[Parent], name: str) -> tuple[Parent, str | None]:
    """(parent, pinned VF or None) for a parent name: an mdev_bus entry, a PCI address in any spelling, or the VF of
    an SR-IOV vGPU GPU (which pins that VF). NotFoundError names the parents there are."""
    want = name
    try:
        want = normalize_address(name)
    except ValueError:
        pass
    for p in parents:
        if p.name == want:
            return p, None
        if p.mode == SRIOV and want in p.vfs:
            return p, want
    known = ", ".join(p.name for p in parents) or "none (no mdev parent is registered and no GPU offers vGPU VFs)"
    raise NotFoundError(f"no vGPU parent {name!r} on this host; parents: {known} (`passthru vgpu types`)")


def match_type(p: Parent, text: str) -> VgpuType | None:
    """The type ``text`` names on ``p``: its id ("nvidia-224", "558"), its name ("GRID T4-1Q"), case-insensitively,
    or the name without the vendor prefix ("T4-1Q", "A100-4C")."""
    low = text.lower()
    for ok in (lambda t: t.id == text, lambda t: t.name == text, lambda t: (t.name or "").lower() == low,
               lambda t: (t.name or "").lower().endswith(" " + low)):
        hits = [t for t in p.types if ok(t)]
        if hits:
            return hits[0]
    return None


def candidates(parents: list[Parent], text: str) -> list[tuple[Parent, VgpuType]]:
    """(parent, type) for every parent offering the type ``text`` names (capacity not checked)."""
    out = []
    for p in parents:
        t = match_type(p, text)
        if t is not None:
            out.append((p, t))
    return out


def capacity(p: Parent, t: VgpuType, vf: str | None = None) -> int:
    if p.mode == SRIOV:
        free = (p.free_vfs or {}).get(t.id, ())
        return int(vf in free) if vf else len(free)
    return t.available or 0


def pick(cands: list[tuple[Parent, VgpuType]], placement: str) -> tuple[Parent, VgpuType]:
    """Placement among parents with capacity. ``pack``: the parent with the most instances already (ties: the fewest
    free, then the name), filling one GPU before the next. ``spread``: the parent with the fewest instances (ties:
    the most free, then the name)."""
    if placement not in PLACEMENTS:
        raise UsageError(f"--placement {placement!r}: pack or spread")
    free = [(p, t) for p, t in cands if capacity(p, t) > 0]
    if not free:
        what = ", ".join(f"{p.name} ({_avail(p, t)} of {t.id} available)" for p, t in cands)
        raise UsageError(f"no capacity: no parent has a free {cands[0][1].id} instance: {what}")
    if placement == "pack":
        return min(free, key=lambda c: (-len(c[0].instances), capacity(*c), c[0].name))
    return min(free, key=lambda c: (len(c[0].instances), -capacity(*c), c[0].name))


def _avail(p: Parent, t: VgpuType) -> str:
    return "unknown" if p.mode == MDEV and t.available is None else str(capacity(p, t))


def unknown_type(parents: list[Parent], text: str, parent: Parent | None = None) -> UsageError:
    pool = [parent] if parent else parents
    ids = [t.id for p in pool for t in p.types]
    shown = ", ".join(dict.fromkeys(ids[:12])) + (" ..." if len(set(ids)) > 12 else "")
    where = f"on {parent.name}" if parent else "on any parent"
    return UsageError(f"unknown vGPU type {text!r} {where}; types: {shown or 'none'} (`passthru vgpu types"
                      f"{' ' + parent.name if parent else ''}` lists them)")
