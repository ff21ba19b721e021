"""The vGPU kind: mediated devices (mdev) and NVIDIA SR-IOV vGPU virtual functions, read-only.

Where vGPUs come from, as the kernel shows them:

- **mdev parents**: every entry of ``/sys/class/mdev_bus`` (all buses: a PCI GPU on NVIDIA's vGPU manager, i915 GVT-g,
  but also virtual devices such as the ``mtty`` sample), each with ``mdev_supported_types/<type>/{name, description,
  available_instances, device_api, create}``. Instances are ``/sys/bus/mdev/devices/<uuid>`` (links into the parent).
- **NVIDIA SR-IOV vGPU** (Ampere and newer on recent drivers; no mdev bus): each VF of the GPU has
  ``nvidia/creatable_vgpu_types`` ("558 : NVIDIA A100-4C" lines) and ``nvidia/current_vgpu_type`` ("0" = none).
  The parent is the PF; a VF with a type set is an instance, identified by its PCI address, and goes to a VM as a
  PCI device.

    parents = scan_parents(h)                       # [Parent], mdev parents first, then SR-IOV GPUs
    p = find_parent(parents, "mtty")                # by name; a VF address finds its PF
    cands = candidates(parents, "mtty-2")           # (parent, type) offering it, with capacity or not
    pick(cands, "spread")                           # placement among those with capacity

The writer is ``passthru.mdev``; this module only reads. :data:`VGPU` is the registered :class:`DeviceKind`: its
``after_release`` removes what ``passthru vgpu create --vm`` made for that VM (``passthru.mdev.release_created``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from ..errors import NotFoundError, UsageError
from ..host.pci import normalize_address
from ..host.root import HostRoot
from .base import DeviceKind, register

__all__ = ["VgpuType", "Instance", "Parent", "scan_parents", "find_parent", "candidates", "capacity", "pick",
           "match_type", "unknown_type", "nvidia_types", "UUID_RE", "MDEV", "SRIOV", "PLACEMENTS", "VgpuKind", "VGPU"]

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MDEV, SRIOV = "mdev", "nvidia-sriov"
PLACEMENTS = ("pack", "spread")
_NV_LINE = re.compile(r"^\s*(\d+)\s*:\s*(.*?)\s*$")


@dataclass(frozen=True, slots=True)
class VgpuType:
    id: str  # "nvidia-224", "mtty-2", or an NVIDIA vGPU type number "558"
    name: str | None
    description: str | None
    available: int | None  # None: unreadable
    device_api: str | None

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "description": self.description,
                "available_instances": self.available, "device_api": self.device_api}


@dataclass(frozen=True, slots=True)
class Instance:
    id: str  # the mdev UUID, or the VF's PCI address
    mode: str  # MDEV | SRIOV
    parent: str
    type_id: str | None
    driver: str | None
    iommu_group: int | None

    @property
    def identity(self) -> str:
        """The inventory identity a VM is assigned: ``mdev:<uuid>`` or ``pci:<VF>``."""
        return f"mdev:{self.id}" if self.mode == MDEV else f"pci:{self.id}"


@dataclass(frozen=True, slots=True)
class Parent:
    name: str  # /sys/class/mdev_bus entry ("0000:af:00.0", "mtty"), or the PF of an SR-IOV vGPU GPU
    mode: str
    path: str  # the parent device's directory (host-root path)
    bus: str  # "pci", "virtual", or the subsystem's name
    driver: str | None
    numa_node: int | None
    types: tuple[VgpuType, ...]
    instances: tuple[Instance, ...]
    vfs: tuple[str, ...] = ()  # SRIOV: the VFs offering vGPU types
    free_vfs: dict | None = None  # SRIOV: type id -> VFs with no type set that can take it

    def type(self, type_id: str) -> VgpuType | None:
        return next((t for t in self.types if t.id == type_id), None)

    def to_json(self) -> dict:
        return {"parent": self.name, "mode": self.mode, "bus": self.bus, "driver": self.driver,
                "numa_node": self.numa_node, "types": [t.to_json() for t in self.types],
                "instances": [{"id": i.id, "type": i.type_id} for i in self.instances],
                **({"vfs": list(self.vfs)} if self.mode == SRIOV else {})}


# -- reading ------------------------------------------------------------------------------------------------------
def _bus_of(h: HostRoot, path: str) -> str:
    sub = h.link_name(path + "/subsystem")
    if sub == "pci":
        return "pci"
    return "virtual" if "/devices/virtual/" in path else (sub or "unknown")


def _numa(h: HostRoot, path: str) -> int | None:
    n = h.read_int(path + "/numa_node")
    return n if n is not None and n >= 0 else None


def _group(h: HostRoot, path: str) -> int | None:
    g = h.link_name(path + "/iommu_group")
    return int(g) if g and g.isdigit() else None


def _mdev_types(h: HostRoot, path: str) -> tuple[VgpuType, ...]:
    d = path + "/mdev_supported_types"
    return tuple(VgpuType(tid, h.read(f"{d}/{tid}/name") or None, h.read(f"{d}/{tid}/description") or None,
                          h.read_int(f"{d}/{tid}/available_instances"), h.read(f"{d}/{tid}/device_api") or None)
                 for tid in h.listdir(d))


def _mdev_parents(h: HostRoot) -> list[Parent]:
    base = h.sys + "/class/mdev_bus"
    names = h.listdir(base)
    if not names:
        return []
    by_path = {h.realpath(f"{base}/{n}"): n for n in names}
    found: dict[str, dict[str, Instance]] = {n: {} for n in names}

    def add(uuid: str, real: str) -> None:
        parent = by_path.get(os.path.dirname(real))
        if parent is not None and UUID_RE.match(uuid):
            t = h.link_name(real + "/mdev_type")
            found[parent][uuid] = Instance(uuid, MDEV, parent, t, h.link_name(real + "/driver"), _group(h, real))

    for uuid in h.listdir(h.sys + "/bus/mdev/devices"):
        add(uuid, h.realpath(f"{h.sys}/bus/mdev/devices/{uuid}"))
    for path, name in by_path.items():  # captures without /sys/bus/mdev: the parent's own UUID entries
        for entry in h.listdir(path):
            if UUID_RE.match(entry) and entry not in found[name]:
                add(entry, f"{path}/{entry}")
    out = []
    for path, name in sorted(by_path.items(), key=lambda x: x[1]):
        out.append(Parent(name, MDEV, path, _bus_of(h, path), h.link_name(path + "/driver"), _numa(h, path),
                          _mdev_types(h, path), tuple(found[name][u] for u in sorted(found[name]))))
    return out


def nvidia_types(text: str | None) -> list[tuple[str, str]]:
    """``creatable_vgpu_types`` as [(id, name)]; the "ID : vGPU Name" header line is skipped."""
    out = []
    for line in (text or "").splitlines():
        m = _NV_LINE.match(line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def _sriov_parents(h: HostRoot) -> list[Parent]:
    pci = h.sys + "/bus/pci/devices"
    per_pf: dict[str, list[tuple[str, list[tuple[str, str]], str]]] = {}
    for addr in h.listdir(pci):
        d = f"{pci}/{addr}/nvidia"
        if not h.exists(d + "/creatable_vgpu_types"):
            continue
        pf = h.link_name(f"{pci}/{addr}/physfn") or addr
        cur = h.read(d + "/current_vgpu_type")
        current = cur.split()[0] if cur else "0"
        per_pf.setdefault(pf, []).append((addr, nvidia_types(h.read(d + "/creatable_vgpu_types")), current))
    out = []
    for pf, vfs in sorted(per_pf.items()):
        names: dict[str, str] = {}
        free: dict[str, list[str]] = {}
        insts = []
        for addr, types, current in vfs:
            for tid, name in types:
                names.setdefault(tid, name)
                if current == "0":
                    free.setdefault(tid, []).append(addr)
            if current != "0":
                insts.append(Instance(addr, SRIOV, pf, current, h.link_name(f"{pci}/{addr}/driver"),
                                      _group(h, f"{pci}/{addr}")))
        types_out = tuple(VgpuType(tid, name, None, len(free.get(tid, [])), "vfio-pci") for tid, name in names.items())
        path = h.realpath(f"{pci}/{pf}")
        out.append(Parent(pf, SRIOV, path, "pci", h.link_name(path + "/driver"), _numa(h, path), types_out,
                          tuple(insts), tuple(a for a, _, _ in vfs), {k: tuple(v) for k, v in free.items()}))
    return out


def scan_parents(h: HostRoot) -> list[Parent]:
    """Every place a vGPU can be made on this host: mdev parents (any bus), then NVIDIA SR-IOV vGPU GPUs."""
    return _mdev_parents(h) + _sriov_parents(h)


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


# -- the kind -----------------------------------------------------------------------------------------------------
class VgpuKind(DeviceKind):
    """vGPU instances: mdevs go to VMs as ``vfio-pci,sysfsdev=`` / ``<hostdev type='mdev'>``; NVIDIA SR-IOV VFs as
    PCI devices once their type is set."""

    name = "vgpu"
    hotpluggable = True

    def __init__(self, kernel: Any = None) -> None:
        self.kernel = kernel  # the write boundary (passthru.mdev.MdevKernel); tests give a fake

    def checks(self, h: Any, device: Any) -> list[Any]:
        """A GPU that offers vGPU types but has no capacity left, and an NVIDIA vGPU VF with no type set."""
        from ..findings import PASS, WARN, Finding

        fn = getattr(device, "fact", device)
        addr = getattr(fn, "address", None)
        out: list[Any] = []
        if addr is None:
            return out
        if getattr(fn, "mdev_types", ()):
            free = sum(t.available_instances or 0 for t in fn.mdev_types)
            out.append(Finding("vgpu.capacity", "vGPU capacity", PASS if free else WARN,
                               f"{addr}: {len(fn.mdevs)} mdev instance(s), {free} more creatable across "
                               f"{len(fn.mdev_types)} types",
                               None if free else "remove unused instances: `passthru vgpu list`, "
                                                 "`passthru vgpu remove UUID`", addr))
        if getattr(fn, "nvidia_creatable_vgpu_types", None) is not None and fn.nvidia_current_vgpu_type in (None, "0"):
            out.append(Finding("vgpu.type", "vGPU type of an NVIDIA VF", WARN, f"{addr}: no vGPU type set",
                               f"passthru vgpu create {addr} TYPE (`passthru vgpu types` lists them)", addr))
        return out

    def before_assign(self, h: Any, paths: Any, vm: str, identity: str, options: dict) -> dict | None:
        """With ``options`` {"type": T[, "parent": P, "placement": "pack"|"spread"]}: make a vGPU for ``vm`` now (the
        caller claims ``identity``; ``passthru vgpu create --vm`` does both) and return {"identity", "created"}."""
        if not options.get("type"):
            return None
        from ..mdev import create

        res = create(h, paths, options.get("parent"), options["type"], placement=options.get("placement", "pack"),
                     vm=vm, claim=False, kernel=self.kernel)
        return {"identity": res.identity, "created": res.id}

    def after_release(self, h: Any, paths: Any, vm: str, identity: str, prior: dict | None) -> None:
        """Remove the mdev (or reset the VF's vGPU type) if passthru made it for ``vm``; anything else stays."""
        from ..mdev import release_created

        release_created(h, paths, vm, [identity], kernel=self.kernel)


VGPU = register(VgpuKind())
