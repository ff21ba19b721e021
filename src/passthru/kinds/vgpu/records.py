"""What passthru knows about vGPUs besides the kernel: records of what it made, its persisted definitions, mdevctl's
definitions, and the listing that merges them with the live instances. The procedures are in ``instances.py``.

- ``<state>/mdev/<id>.json``: a vGPU passthru made (:class:`Record`; phase ``creating`` / ``created`` / ``removing``,
  the VM it was made for, an SR-IOV VF's prior type), written before each write.
- ``<config>/mdev.d/<parent>/<id>.json``: passthru's persisted definitions, mdevctl-like
  (``{"schema": 1, "id", "mode", "parent", "mdev_type", "start": "auto", "attrs": []}``).
- ``/etc/mdevctl.d/<parent>/<uuid>``: mdevctl's, read through the host root (``host/mdevctl.py``), never written.
  One owner per UUID: passthru does not persist a UUID mdevctl defines (:func:`mdevctl_conflict`), and its boot
  start leaves mdevctl's to mdevctl's udev rule.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, fields, replace

from ...config import Paths
from ...errors import ConfigError, UsageError
from ...host.mdev import MDEV, UUID_RE, Instance, Parent, scan_parents
from ...host.mdevctl import MdevctlDef, find_definition, read_definitions
from ...host.root import HostRoot
from ...statefs import (FileLock, append_line, caller, ensure_dir, fsync_dir, list_names, read_record, write_atomic,
                      write_if_changed)

__all__ = ["Record", "MdevStore", "CREATING", "CREATED", "REMOVING", "list_vgpus", "mdevctl_conflict", "mdevctl_owned",
           "instances", "type_name"]

CREATING, CREATED, REMOVING = "creating", "created", "removing"
_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class Record:
    id: str  # mdev UUID or VF address
    mode: str
    parent: str
    mdev_type: str
    phase: str
    vm: str | None = None  # made for this VM's assignment (`vgpu create --vm`): removed when it releases
    prior_type: str | None = None  # SRIOV: the VF's current_vgpu_type before
    since: str = ""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _load(path: str) -> dict | None:
    return read_record(path)


class MdevStore:
    """The vGPU records and persisted definitions under one :class:`Paths`."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.rec_dir = os.path.join(paths.state_dir, "mdev")
        self.def_dir = os.path.join(paths.config_dir, "mdev.d")

    def lock(self) -> FileLock:
        return FileLock(os.path.join(self.paths.state_dir, "mdev.lock"), "vgpu create/remove")

    def audit(self, action: str, device: str, before: object, after: object, **extra: object) -> None:
        """One line in ``<state>/audit.log`` (the takeover's log, same entries); never through a link."""
        entry = {"time": _now(), "action": action, "device": device, "before": before, "after": after,
                 "caller": caller(), **extra}
        append_line(os.path.join(self.paths.state_dir, "audit.log"), json.dumps(entry, sort_keys=True))

    # records
    def get(self, ident: str) -> Record | None:
        path = os.path.join(self.rec_dir, f"{ident}.json")
        doc = _load(path)
        if doc is None:
            return None
        names = {f.name for f in fields(Record)}
        try:
            return Record(**{k: v for k, v in doc.items() if k in names})
        except TypeError as e:
            raise ConfigError(f"{path}: not a passthru vGPU record ({e}); move it away") from None

    def records(self) -> list[Record]:
        return [r for n in list_names(self.rec_dir) if (r := self.get(n[:-5])) is not None]

    def save(self, rec: Record) -> Record:
        rec = rec if rec.since else replace(rec, since=_now())
        ensure_dir(self.rec_dir, 0o700)
        data = json.dumps({"schema": _SCHEMA, **asdict(rec)}, indent=2) + "\n"
        write_atomic(os.path.join(self.rec_dir, f"{rec.id}.json"), data.encode(), 0o600)
        return rec

    def drop(self, ident: str) -> None:
        try:
            os.unlink(os.path.join(self.rec_dir, f"{ident}.json"))
        except FileNotFoundError:
            return
        fsync_dir(self.rec_dir)

    # definitions
    def definitions(self) -> list[dict]:
        out = []
        for parent in list_names(self.def_dir, ""):
            if not os.path.isdir(os.path.join(self.def_dir, parent)):
                continue  # a stray file: not a parent's directory
            for name in list_names(os.path.join(self.def_dir, parent)):
                doc = _load(os.path.join(self.def_dir, parent, name))
                if doc is not None and isinstance(doc.get("mdev_type"), str):
                    out.append({**doc, "id": name[:-5], "parent": parent, "mode": doc.get("mode", MDEV)})
        return out

    def definition(self, ident: str) -> dict | None:
        return next((d for d in self.definitions() if d["id"] == ident), None)

    def define(self, ident: str, mode: str, parent: str, mdev_type: str) -> bool:
        """Write the definition; False when the same one is already there."""
        doc = {"schema": _SCHEMA, "id": ident, "mode": mode, "parent": parent, "mdev_type": mdev_type,
               "start": "auto", "attrs": []}
        data = (json.dumps(doc, indent=2) + "\n").encode()
        old = self.definition(ident)
        if old is not None and old["parent"] != parent:
            self.undefine(ident)
        path = os.path.join(self.def_dir, parent, f"{ident}.json")
        return write_if_changed(path, data, 0o644)

    def undefine(self, ident: str) -> bool:
        d = self.definition(ident)
        if d is None:
            return False
        pdir = os.path.join(self.def_dir, d["parent"])
        os.unlink(os.path.join(pdir, f"{ident}.json"))
        fsync_dir(pdir)
        if not list_names(pdir, ""):
            try:
                os.rmdir(pdir)
            except OSError:
                pass
        return True


def instances(parents: list[Parent]) -> dict[str, Instance]:
    return {i.id: i for p in parents for i in p.instances}


def type_name(parents: list[Parent], parent: str, type_id: str) -> str | None:
    p = next((x for x in parents if x.name == parent), None)
    t = p.type(type_id) if p else None
    return t.name if t else None


# -- listing ------------------------------------------------------------------------------------------------------
def list_vgpus(h: HostRoot, paths: Paths) -> list[dict]:
    """Live vGPUs, passthru's persisted definitions and records, and mdevctl's definitions (live or not), one entry
    per id: the definition keys (``id``, ``mode``, ``parent``, ``mdev_type``, ``start``) plus state; ``mdevctl`` is
    mdevctl's definition of that UUID (``path``, ``parent``, ``mdev_type``, ``start``, ``problem``) or None."""
    parents = scan_parents(h)
    live = instances(parents)
    store = MdevStore(paths)
    defs = {d["id"]: d for d in store.definitions()}
    recs = {r.id: r for r in store.records()}
    ctl = {}
    for c in read_definitions(h):
        ctl.setdefault(c.uuid, c)
    out = []
    for ident in sorted(set(live) | set(defs) | set(recs) | set(ctl)):
        i, d, r, m = live.get(ident), defs.get(ident), recs.get(ident), ctl.get(ident)
        parent = i.parent if i else d["parent"] if d else r.parent if r else m.parent  # type: ignore[union-attr]
        mtype = ((i.type_id if i else None) or (d["mdev_type"] if d else None) or (r.mdev_type if r else None)
                 or (m.mdev_type if m else None))
        mode = i.mode if i else d["mode"] if d else r.mode if r else MDEV  # type: ignore[union-attr]
        start = d.get("start", "auto") if d else m.start if m else None
        out.append({"id": ident, "mode": mode, "parent": parent, "mdev_type": mtype, "start": start,
                    "type_name": type_name(parents, parent, mtype or ""),
                    "live": i is not None, "persisted": d is not None,
                    "passthru": None if r is None else {"phase": r.phase, "vm": r.vm, "prior_type": r.prior_type,
                                                        "since": r.since},
                    "mdevctl": None if m is None else m.to_json(),
                    "iommu_group": i.iommu_group if i else None, "driver": i.driver if i else None,
                    "identity": f"mdev:{ident}" if mode == MDEV else f"pci:{ident}"})
    return out


# -- mdevctl: one owner per UUID -----------------------------------------------------------------------------------
def mdevctl_owned(h: HostRoot, ident: str) -> MdevctlDef | None:
    """mdevctl's definition of ``ident`` (an mdev UUID; a VF address never is one), or None."""
    return find_definition(h, ident) if UUID_RE.match(ident) else None


def mdevctl_conflict(h: HostRoot, ident: str, parent: str, mdev_type: str) -> MdevctlDef | None:
    """mdevctl's definition of ``ident`` when it agrees (same parent and type: passthru then leaves the persisting to
    mdevctl), None when there is none. UsageError (exit 2) naming mdevctl's file when it defines ``ident`` with
    another type or parent, or in a file passthru cannot read: passthru never writes a contradicting definition."""
    d = mdevctl_owned(h, ident)
    if d is None or (d.parent, d.mdev_type) == (parent, mdev_type):
        return d
    what = f"as {d.mdev_type} on {d.parent}" if d.mdev_type else f"in a file passthru cannot read ({d.problem})"
    raise UsageError(f"{ident}: mdevctl defines it {what} ({d.path}), not {mdev_type} on {parent}; passthru does not "
                     f"write a contradicting definition: choose another --uuid, or change mdevctl's (`mdevctl "
                     f"modify --uuid {ident}` / `mdevctl undefine --uuid {ident}`)")
