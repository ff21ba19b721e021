"""mdevctl's persistent mdev definitions, read-only, through the host root.

mdevctl keeps one JSON file per defined mediated device, ``/etc/mdevctl.d/<parent>/<uuid>`` (no extension)::

    {"mdev_type": "nvidia-224", "start": "auto", "attrs": []}

``start: auto`` devices are started by mdevctl's own udev rule when their parent appears (``mdevctl
start-parent-mdevs``); ``manual`` ones by ``mdevctl start``. Other entries of ``/etc/mdevctl.d`` (``scripts.d``) and
names that are not UUIDs are not definitions.

passthru reads these so that ``vgpu list`` shows them, ``vgpu create --persist`` never writes a definition that
contradicts one, and ``vgpu start-persisted`` leaves what mdevctl owns to mdevctl. passthru never writes here.

    defs = read_definitions(h)          # [MdevctlDef], by parent then UUID
    d = find_definition(h, uuid)        # one, or None
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .root import HostRoot

__all__ = ["MdevctlDef", "read_definitions", "find_definition", "MDEVCTL_DIR"]

MDEVCTL_DIR = "/etc/mdevctl.d"
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class MdevctlDef:
    uuid: str  # lowercase
    parent: str  # the directory name: "0000:af:00.0", "mtty"
    mdev_type: str | None  # None when the file does not say (see ``problem``)
    start: str | None  # "auto" | "manual" as mdevctl wrote it
    path: str  # as the host sees it: /etc/mdevctl.d/<parent>/<uuid>
    problem: str | None = None  # why the file could not be read as a definition

    def to_json(self) -> dict:
        return {"path": self.path, "parent": self.parent, "mdev_type": self.mdev_type, "start": self.start,
                "problem": self.problem}


def _parse(h: HostRoot, parent: str, name: str) -> MdevctlDef:
    shown = f"{MDEVCTL_DIR}/{parent}/{name}"
    raw = h.read_bytes(h.path(shown), _MAX + 1)
    if raw is None:
        return MdevctlDef(name.lower(), parent, None, None, shown, "unreadable")
    try:
        doc = json.loads(raw) if len(raw) <= _MAX else None
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        return MdevctlDef(name.lower(), parent, None, None, shown, "not an mdevctl JSON definition")
    mtype, start = doc.get("mdev_type"), doc.get("start")
    return MdevctlDef(name.lower(), parent, mtype if isinstance(mtype, str) and mtype else None,
                      start if isinstance(start, str) else None, shown,
                      None if isinstance(mtype, str) and mtype else "no mdev_type")


def read_definitions(h: HostRoot) -> list[MdevctlDef]:
    """Every definition in ``/etc/mdevctl.d`` of this root; [] without mdevctl. A file that cannot be read or
    parsed is still returned (``mdev_type`` None, ``problem`` saying why): it still names a UUID mdevctl claims."""
    base = h.path(MDEVCTL_DIR)
    out = []
    for parent in h.listdir(base):
        if not h.isdir(f"{base}/{parent}"):
            continue
        for name in h.listdir(f"{base}/{parent}"):
            if _UUID_RE.match(name) and not h.isdir(f"{base}/{parent}/{name}"):
                out.append(_parse(h, parent, name))
    return out


def find_definition(h: HostRoot, uuid: str) -> MdevctlDef | None:
    """mdevctl's definition of ``uuid`` (any parent), or None. The first one when (wrongly) several parents have it."""
    return next((d for d in read_definitions(h) if d.uuid == uuid.lower()), None)
