"""vGPU instances: create and remove mediated devices, set NVIDIA SR-IOV vGPU types, persist definitions for boot.

The writes go through :class:`~passthru.writers.mdev.MdevKernel` (one write per verb, bounded waits); this module
decides what to write, refuses what must not be, keeps the records and undoes a failed step.

Records, like the takeover's (journal first, atomic files, one audit log):

- ``<state>/mdev/<id>.json``: a vGPU passthru made, written *before* the write (phase ``creating``, then
  ``created``; ``removing`` while it goes), with the VM it was made for (``--vm``) and, for an SR-IOV VF, the
  type it had before. A killed process leaves a record the next writer settles from what the kernel shows.
- ``<config>/mdev.d/<parent>/<id>.json``: a persisted definition, mdevctl-like
  (``{"schema": 1, "id", "mode", "parent", "mdev_type", "start": "auto"}``), re-created at boot by
  ``passthru vgpu start-persisted`` (:func:`start_persisted`). ``vgpu list --json`` entries carry the same keys.
- ``<state>/audit.log``: one line per write (the takeover's log).

mdevctl's definitions (``/etc/mdevctl.d``) are read, never written: a UUID mdevctl defines has one owner, mdevctl.
``create --persist`` refuses to contradict one and does not duplicate one that agrees; ``start_persisted`` leaves
it to mdevctl's udev rule; ``remove`` removes the live instance and says that mdevctl's definition stays
(``records.py``).

    create(h, paths, "mtty", "mtty-2", persist=True)        # -> VgpuResult(id=<uuid>, status="created")
    create(h, paths, None, "GRID T4-1Q", placement="spread")
    remove(h, paths, uuid)                                   # and its definition (keep_definition=True keeps it)
    start_persisted(h, paths)                                # at boot
    release_created(h, paths, "vm1", ["mdev:<uuid>"])        # the release hook: only what was made for vm1

Making a vGPU for a VM *and* assigning it (``vgpu create --vm``) is a service operation (``service/vgpu.py``): it
passes ``claim``, which this module calls inside the same journal entry and undoes the vGPU when it fails.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field, replace
from typing import Callable

from ...config import Paths
from ...errors import HostError, NotFoundError, PassthruError, UsageError
from ...failpoints import hit
from ...host.pci import normalize_address
from ...host.root import HostRoot
from ...journal import journal_for
from ...names import check_vm
from ...vfio.kernel import Kernel
from ...writers.mdev import MdevKernel, mdev_kernel
from .placement import (MDEV, SRIOV, UUID_RE, Parent, VgpuType, candidates, capacity, find_parent, match_type, pick,
                        scan_parents, unknown_type)
from .records import (CREATED, CREATING, REMOVING, MdevStore, Record, instances, mdevctl_conflict, mdevctl_owned,
                      type_name)

__all__ = ["VgpuResult", "VgpuOutcome", "Claim", "create", "remove", "start_persisted", "release_created",
           "types_doc", "parse_id"]


# -- results ------------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class VgpuResult:
    id: str
    mode: str
    parent: str
    mdev_type: str
    type_name: str | None
    status: str  # created | unchanged | would create | removed | would remove | undefined | failed | left to mdevctl
    note: str = ""
    persisted: bool = False
    vm: str | None = None

    @property
    def identity(self) -> str:
        return f"mdev:{self.id}" if self.mode == MDEV else f"pci:{self.id}"

    def to_json(self) -> dict:
        return {"id": self.id, "mode": self.mode, "parent": self.parent, "mdev_type": self.mdev_type,
                "type_name": self.type_name, "status": self.status, "note": self.note or None,
                "persisted": self.persisted, "vm": self.vm, "identity": self.identity,
                "sysfsdev": f"/sys/bus/{'mdev' if self.mode == MDEV else 'pci'}/devices/{self.id}"}


@dataclass(slots=True)
class VgpuOutcome:
    action: str
    items: list[VgpuResult] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict:
        return {"schema": 1, "action": self.action, "ok": self.error is None, "error": self.error,
                "vgpus": [i.to_json() for i in self.items]}


Claim = Callable[["VgpuResult", MdevKernel], None]
"""What ``create(vm=...)`` hands the new vGPU to (the service's assign); it raises to refuse it."""


# -- helpers ------------------------------------------------------------------------------------------------------
def parse_id(text: str) -> tuple[str, str]:
    """(mode, id) for a vGPU named by its mdev UUID or its VF's PCI address; UsageError otherwise."""
    t = text.strip().lower()
    if UUID_RE.match(t):
        return MDEV, t
    try:
        return SRIOV, normalize_address(t)
    except ValueError:
        raise UsageError(f"{text!r} is not a UUID (like 4b20d080-1b54-4048-85b3-a6a62d165c01) nor the PCI address "
                         "of an NVIDIA vGPU VF") from None


def _settle(k: MdevKernel, store: MdevStore) -> None:
    """Finish what a killed writer left: a record says what it meant, the kernel what happened."""
    for rec in store.records():
        live = k.mdev_present(rec.id) if rec.mode == MDEV else k.vgpu_type(rec.id) == rec.mdev_type
        if rec.phase == CREATING or rec.phase == REMOVING:
            if live:
                store.save(replace(rec, phase=CREATED))
            else:
                store.drop(rec.id)


# -- create -------------------------------------------------------------------------------------------------------
def _plan(parents: list[Parent], parent: str | None, type_text: str, placement: str
          ) -> tuple[Parent, VgpuType, str | None]:
    if parent is not None:
        p, vf = find_parent(parents, parent)
        t = match_type(p, type_text)
        if t is None:
            raise unknown_type(parents, type_text, p)
        return p, t, vf
    cands = candidates(parents, type_text)
    if not cands:
        raise unknown_type(parents, type_text)
    p, t = pick(cands, placement)
    return p, t, None


def create(h: HostRoot, paths: Paths, parent: str | None, type_text: str, *, uuid: str | None = None,
           persist: bool = False, placement: str = "pack", vm: str | None = None, claim: Claim | None = None,
           dry_run: bool = False, kernel: Kernel | None = None) -> VgpuResult:
    """Make one vGPU of ``type_text`` on ``parent`` (or where ``placement`` puts it). Refusals (UsageError /
    NotFoundError, exit 2) come before any write; a kernel failure is a HostError after undoing what was done.
    With ``vm`` it is made for that VM: handed to ``claim`` (the service's assign; without it the caller claims it)
    and removed when the VM releases it (:func:`release_created`)."""
    if placement not in ("pack", "spread"):
        raise UsageError(f"--placement {placement!r}: pack or spread")
    if vm is not None:
        check_vm(vm)
    if vm is not None and persist:
        raise UsageError("--vm makes a vGPU for one assignment (removed on release), --persist one that outlives "
                         "it: choose one")
    if uuid is not None:
        mode, uuid = parse_id(uuid)
        if mode != MDEV:
            raise UsageError(f"--uuid {uuid!r} is not a UUID (like 4b20d080-1b54-4048-85b3-a6a62d165c01)")
    parents = scan_parents(h)
    p, t, vf = _plan(parents, parent, type_text, placement)
    live = instances(parents)
    if p.mode == MDEV:
        ident = uuid or str(uuidlib.uuid4())
        have = live.get(ident)
        if have is not None and (have.parent, have.type_id) != (p.name, t.id):
            raise UsageError(f"{ident} already exists as {have.type_id} on {have.parent}; choose another --uuid")
    else:
        if uuid is not None:
            raise UsageError(f"{p.name} is an NVIDIA SR-IOV vGPU GPU: its vGPUs are VFs, named by address (give "
                             "a VF as PARENT to choose one), not by --uuid")
        current = {i.id: i.type_id for i in p.instances}
        have = None
        if vf is not None:
            if vf in current and current[vf] != t.id:
                raise UsageError(f"{vf} already has vGPU type {current[vf]}; `passthru vgpu remove {vf}` first")
            have, ident = live.get(vf) if vf in current else None, vf
        else:
            free = (p.free_vfs or {}).get(t.id, ())
            ident = free[0] if free else ""
    res = VgpuResult(ident, p.mode, p.name, t.id, t.name, "unchanged" if have else "would create", vm=vm)
    ctl = mdevctl_conflict(h, ident, p.name, t.id) if persist else mdevctl_owned(h, ident)
    if ctl is not None and persist:
        persist, res.note = False, f"mdevctl defines it ({ctl.path}, start {ctl.start or '?'}): mdevctl persists it"
    elif ctl is not None and (ctl.parent, ctl.mdev_type) != (p.name, t.id):
        res.note = f"mdevctl defines it as {ctl.mdev_type or '?'} on {ctl.parent} ({ctl.path}): they differ"
    if have is None and (not ident or capacity(p, t, vf) <= 0):
        left = "unknown" if t.available is None and p.mode == MDEV else capacity(p, t, vf)
        raise UsageError(f"no capacity: {vf or p.name} has {left} {t.id} instances available"
                         + ("" if parent is None else "; `passthru vgpu types` shows where there is room"))
    if dry_run:
        return res
    k = mdev_kernel(h, kernel)
    k.require_live()
    store = MdevStore(paths)
    # made for a VM: journaled until it is assigned, so a kill in between leaves nothing reconcile cannot remove
    op = journal_for(paths.state_dir).begin("vgpu.create", vm=vm, vgpu=ident) if vm is not None else None
    try:
        with store.lock():
            _settle(k, store)
            if have is None:
                _create_locked(k, store, res, p)
                res.status = "created"
            if persist:
                res.persisted = True
                if store.define(ident, p.mode, p.name, t.id):
                    store.audit("vgpu-persist", res.identity, None, t.id, parent=p.name)
        hit("vgpu.created")
        if vm is not None and claim is not None:
            _claim(paths, res, k, claim)
    except (Exception, KeyboardInterrupt):
        if op is not None:
            op.done()  # create and _claim undo their own part on a failure
        raise
    except BaseException:
        if op is not None:
            op.release()
        raise
    if op is not None:
        op.done()
    return res


def _create_locked(k: MdevKernel, store: MdevStore, res: VgpuResult, p: Parent) -> None:
    prior = k.vgpu_type(res.id) if res.mode == SRIOV else None
    store.save(Record(res.id, res.mode, p.name, res.mdev_type, CREATING, vm=res.vm, prior_type=prior))
    store.audit("vgpu-create", res.identity, prior, res.mdev_type, parent=p.name, vm=res.vm)
    try:
        if res.mode == MDEV:
            k.create(p.name, res.mdev_type, res.id)
            k.wait_present(res.id, True)
        else:
            k.set_vgpu_type(res.id, res.mdev_type)
            k.wait_type(res.id, res.mdev_type)
    except PassthruError:
        _undo(k, store, res, prior)
        raise
    store.save(Record(res.id, res.mode, p.name, res.mdev_type, CREATED, vm=res.vm, prior_type=prior))


def _undo(k: MdevKernel, store: MdevStore, res: VgpuResult, prior: str | None) -> None:
    """Best effort: nothing of a failed create stays behind (the record goes only when the kernel agrees)."""
    try:
        if res.mode == MDEV:
            k.remove(res.id)
            k.wait_present(res.id, False)
        else:
            k.set_vgpu_type(res.id, prior or "0")
    except PassthruError:
        return
    store.drop(res.id)


def _claim(paths: Paths, res: VgpuResult, k: MdevKernel, claim: Claim) -> None:
    """Hand the new vGPU to ``claim``; when it refuses, the vGPU goes again (all or nothing)."""
    try:
        claim(res, k)
    except BaseException:
        store = MdevStore(paths)
        try:
            with store.lock():
                _remove_locked(k, store, res.id)
        except PassthruError:
            pass  # the claim's error is the one to report; `vgpu list` shows what is left
        raise


# -- remove -------------------------------------------------------------------------------------------------------
def _remove_locked(k: MdevKernel, store: MdevStore, ident: str) -> Record | None:
    rec = store.get(ident)
    mode = MDEV if UUID_RE.match(ident) else SRIOV
    if mode == MDEV and not k.mdev_present(ident):
        store.drop(ident)
        return rec
    prior = (rec.prior_type if rec and rec.prior_type else "0") if mode == SRIOV else None
    now = k.vgpu_type(ident) if mode == SRIOV else None
    if rec is not None:
        store.save(replace(rec, phase=REMOVING))
    store.audit("vgpu-remove", f"mdev:{ident}" if mode == MDEV else f"pci:{ident}",
                rec.mdev_type if rec else now, prior)
    try:
        if mode == MDEV:
            k.remove(ident)
            k.wait_present(ident, False)
        else:
            k.set_vgpu_type(ident, prior or "0")
            k.wait_type(ident, prior or "0")
    except PassthruError:
        if rec is not None:
            store.save(rec)  # still there: the record stays as it was
        raise
    store.drop(ident)
    return rec


def remove(h: HostRoot, paths: Paths, text: str, *, keep_definition: bool = False, dry_run: bool = False,
           kernel: Kernel | None = None, holder: Callable[[str], str | None] | None = None) -> VgpuResult:
    """Remove a vGPU (an mdev, or an SR-IOV VF's type: back to the one it had) and, unless ``keep_definition``,
    its persisted definition. Refused while ``holder`` (the inventory's answer, from the service) names the VM that
    holds its identity."""
    mode, ident = parse_id(text)
    parents = scan_parents(h)
    inst = instances(parents).get(ident)
    store = MdevStore(paths)
    defn = store.definition(ident)
    ctl = mdevctl_owned(h, ident)
    if inst is None and defn is None and store.get(ident) is None:
        if ctl is not None:
            raise UsageError(f"{ident} is not live and only mdevctl defines it ({ctl.path}); passthru does not "
                             f"remove mdevctl's definitions: `mdevctl undefine --uuid {ident}`")
        raise NotFoundError(f"no vGPU {ident} on this host (neither live nor defined; `passthru vgpu list`)")
    identity = f"mdev:{ident}" if mode == MDEV else f"pci:{ident}"
    vm = holder(identity) if holder is not None else None
    if vm is not None:
        raise UsageError(f"{ident} is assigned to VM {vm!r}: `passthru release {vm} {identity}` first")
    parent = inst.parent if inst else (defn or {}).get("parent", "?")
    type_id = (inst.type_id if inst else None) or (defn or {}).get("mdev_type", "?")
    res = VgpuResult(ident, mode, parent, type_id, type_name(parents, parent, type_id),
                     "would remove" if inst else "undefined", persisted=defn is not None and keep_definition)
    if dry_run:
        return res
    if inst is not None:
        k = mdev_kernel(h, kernel)
        k.require_live()
        with store.lock():
            _settle(k, store)
            _remove_locked(k, store, ident)
        res.status = "removed"
    if defn is not None and not keep_definition and store.undefine(ident):
        store.audit("vgpu-unpersist", identity, type_id, None, parent=parent)
        res.note = "definition removed"
    elif defn is not None:
        res.note = "definition kept: re-created at boot"
    if ctl is not None:
        res.note = "; ".join(filter(None, [res.note, f"mdevctl still defines it ({ctl.path}, start {ctl.start or '?'}"
                                           f"): `mdevctl undefine --uuid {ident}` if it should not come back"]))
    return res


def release_created(h: HostRoot, paths: Paths, vm: str, identities: list[str], *,
                    kernel: Kernel | None = None) -> list[VgpuResult]:
    """The release hook: remove the vGPUs among ``identities`` that passthru made for ``vm`` (``vgpu create --vm``).
    Others (made by hand, persisted, made for another VM) stay. HostError after trying them all if one failed."""
    store = MdevStore(paths)
    mine = [r for i in identities if i.startswith(("mdev:", "pci:")) and (r := store.get(i.split(":", 1)[1]))
            and r.vm == vm]
    if not mine:
        return []
    k = mdev_kernel(h, kernel)
    k.require_live()
    out, errors = [], []
    with store.lock():
        for rec in mine:
            res = VgpuResult(rec.id, rec.mode, rec.parent, rec.mdev_type, None, "removed", vm=vm)
            try:
                _remove_locked(k, store, rec.id)
            except PassthruError as e:
                res.status, res.note = "failed", str(e)
                errors.append(f"{rec.id}: {e}")
            out.append(res)
    if errors:
        raise HostError(f"released, but the vGPU made for {vm} is still there: {'; '.join(errors)}; stop the VM and "
                        "run `passthru vgpu remove ID`")
    return out


# -- boot -------------------------------------------------------------------------------------------------------
def start_persisted(h: HostRoot, paths: Paths, *, parent: str | None = None,
                    kernel: Kernel | None = None) -> VgpuOutcome:
    """Re-create every persisted definition (``start: auto``; only ``parent``'s when given, as a udev rule on the
    parent's arrival would) that is not live; one failure does not stop the others (``error`` names them). One whose
    UUID mdevctl also defines is left to mdevctl (status "left to mdevctl"): its own udev rule starts it."""
    store = MdevStore(paths)
    out = VgpuOutcome("start-persisted")
    if parent is not None:
        try:
            parent = normalize_address(parent)
        except ValueError:
            pass
    defs = [d for d in store.definitions() if d.get("start", "auto") == "auto" and parent in (None, d["parent"])]
    mine = []
    for d in defs:  # a UUID mdevctl defines is mdevctl's to start (its udev rule does at boot), never twice
        ctl = mdevctl_owned(h, d["id"])
        if ctl is None:
            mine.append(d)
            continue
        out.items.append(VgpuResult(d["id"], d["mode"], d["parent"], d["mdev_type"], None, "left to mdevctl",
                                    f"mdevctl defines it ({ctl.path}, start {ctl.start or '?'}): mdevctl starts it",
                                    persisted=True))
    if not mine:
        return out
    k = mdev_kernel(h, kernel)
    k.require_live()
    failed = []
    with store.lock():
        _settle(k, store)
        for d in mine:
            parents = scan_parents(h)
            res = VgpuResult(d["id"], d["mode"], d["parent"], d["mdev_type"],
                             type_name(parents, d["parent"], d["mdev_type"]), "unchanged", persisted=True)
            out.items.append(res)
            try:
                _start_one(k, store, parents, res)
            except PassthruError as e:
                res.status, res.note = "failed", str(e)
                failed.append(res.id)
    if failed:
        out.error = f"{len(failed)} persisted vGPU(s) not started: {', '.join(failed)}"
    return out


def _start_one(k: MdevKernel, store: MdevStore, parents: list[Parent], res: VgpuResult) -> None:
    have = instances(parents).get(res.id)
    if have is not None:
        if have.type_id != res.mdev_type or have.parent != res.parent:
            raise UsageError(f"exists as {have.type_id} on {have.parent}, not {res.mdev_type} on {res.parent}")
        return
    p = next((x for x in parents if x.name == res.parent), None)
    if p is None:
        raise NotFoundError(f"parent {res.parent} is not present (its driver not loaded, or VFs not enabled?)")
    t = p.type(res.mdev_type)
    if t is None:
        raise NotFoundError(f"{res.parent} offers no type {res.mdev_type} now")
    vf = res.id if res.mode == SRIOV else None
    if capacity(p, t, vf) <= 0:
        raise UsageError(f"no capacity: {vf or p.name} has no free {t.id} instance")
    _create_locked(k, store, res, p)
    res.status = "created"


# -- listings -------------------------------------------------------------------------------------------------------
def types_doc(h: HostRoot, parent: str | None = None) -> dict:
    parents = scan_parents(h)
    if parent is not None:
        parents = [find_parent(parents, parent)[0]]
    return {"schema": 1, "parents": [p.to_json() for p in parents]}
