"""vGPUs as the kernel shows them: mediated devices (mdev) and NVIDIA SR-IOV vGPU virtual functions. Read-only.

- **mdev parents**: every entry of ``/sys/class/mdev_bus`` (all buses: a PCI GPU on NVIDIA's vGPU manager, i915 GVT-g,
  but also virtual devices such as the ``mtty`` sample), each with ``mdev_supported_types/<type>/{name, description,
  available_instances, device_api, create}``. Instances are ``/sys/bus/mdev/devices/<uuid>`` (links into the parent).
- **NVIDIA SR-IOV vGPU** (Ampere and newer on recent drivers; no mdev bus): each VF of the GPU has
  ``nvidia/creatable_vgpu_types`` ("558 : NVIDIA A100-4C" lines) and ``nvidia/current_vgpu_type`` ("0" = none).
  The parent is the PF; a VF with a type set is an instance, identified by its PCI address, and goes to a VM as a
  PCI device.

    parents = scan_parents(h)              # [Parent], mdev parents first, then SR-IOV GPUs
    hosted_vgpus(h, "0000:af:00.0")        # [Instance]: the live vGPUs a PCI function hosts (a takeover kills them)

The rules about them (placement, refusals) live in ``kinds/vgpu/`` and the takeover guards; the writer is
``writers/mdev.py``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .root import HostRoot

__all__ = ["VgpuType", "Instance", "Parent", "scan_parents", "nvidia_types", "hosted_vgpus", "UUID_RE", "MDEV",
           "SRIOV"]

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MDEV, SRIOV = "mdev", "nvidia-sriov"
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
    type_name: str | None = None

    @property
    def identity(self) -> str:
        """The inventory identity a VM is assigned: ``mdev:<uuid>`` or ``pci:<VF>``."""
        return f"mdev:{self.id}" if self.mode == MDEV else f"pci:{self.id}"

    def label(self) -> str:
        """"mdev 4b6a... (nvidia-224, GRID T4-1Q)" / "VF 0000:d8:00.4 (vGPU type 558, NVIDIA A100-4C)"."""
        name = f", {self.type_name}" if self.type_name else ""
        if self.mode == MDEV:
            return f"mdev {self.id} ({self.type_id or 'type unknown'}{name})"
        return f"VF {self.id} (vGPU type {self.type_id}{name})"


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


def _mdev_instance(h: HostRoot, uuid: str, real: str, parent: str) -> Instance:
    t = h.link_name(real + "/mdev_type")
    return Instance(uuid, MDEV, parent, t, h.link_name(real + "/driver"), _group(h, real),
                    h.read(real + "/mdev_type/name") or None)


def _mdev_children(h: HostRoot, parent_paths: dict[str, str]) -> dict[str, dict[str, Instance]]:
    """parent name -> {uuid: Instance}, for parents given as {real path: name}: the instances of
    /sys/bus/mdev/devices, then (captures without /sys/bus/mdev) the UUID entries in each parent's directory."""
    found: dict[str, dict[str, Instance]] = {n: {} for n in parent_paths.values()}
    for uuid in h.listdir(h.sys + "/bus/mdev/devices"):
        real = h.realpath(f"{h.sys}/bus/mdev/devices/{uuid}")
        parent = parent_paths.get(os.path.dirname(real))
        if parent is not None and UUID_RE.match(uuid):
            found[parent][uuid] = _mdev_instance(h, uuid, real, parent)
    for path, name in parent_paths.items():
        for entry in h.listdir(path):
            if UUID_RE.match(entry) and entry not in found[name] and h.isdir(f"{path}/{entry}"):
                found[name][entry] = _mdev_instance(h, entry, f"{path}/{entry}", name)
    return found


def _mdev_parents(h: HostRoot) -> list[Parent]:
    base = h.sys + "/class/mdev_bus"
    names = h.listdir(base)
    if not names:
        return []
    by_path = {h.realpath(f"{base}/{n}"): n for n in names}
    found = _mdev_children(h, by_path)
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


def _current(h: HostRoot, vf_dir: str) -> str | None:
    """A VF's ``nvidia/current_vgpu_type`` ("0": none); None when it has no such attribute."""
    cur = h.read(vf_dir + "/nvidia/current_vgpu_type")
    return None if cur is None else (cur.split() or ["0"])[0]


def _sriov_parents(h: HostRoot) -> list[Parent]:
    pci = h.sys + "/bus/pci/devices"
    per_pf: dict[str, list[tuple[str, list[tuple[str, str]], str]]] = {}
    for addr in h.listdir(pci):
        d = f"{pci}/{addr}/nvidia"
        if not h.exists(d + "/creatable_vgpu_types"):
            continue
        pf = h.link_name(f"{pci}/{addr}/physfn") or addr
        current = _current(h, f"{pci}/{addr}") or "0"
        per_pf.setdefault(pf, []).append((addr, nvidia_types(h.read(d + "/creatable_vgpu_types")), current))
    out = []
    for pf, vfs in sorted(per_pf.items()):
        names: dict[str, str] = {}
        free: dict[str, list[str]] = {}
        typed = []
        for addr, types, current in vfs:
            for tid, name in types:
                names.setdefault(tid, name)
                if current == "0":
                    free.setdefault(tid, []).append(addr)
            if current != "0":
                typed.append((addr, current))
        insts = tuple(Instance(addr, SRIOV, pf, cur, h.link_name(f"{pci}/{addr}/driver"), _group(h, f"{pci}/{addr}"),
                               names.get(cur)) for addr, cur in typed)
        types_out = tuple(VgpuType(tid, name, None, len(free.get(tid, [])), "vfio-pci") for tid, name in names.items())
        path = h.realpath(f"{pci}/{pf}")
        out.append(Parent(pf, SRIOV, path, "pci", h.link_name(path + "/driver"), _numa(h, path), types_out,
                          insts, tuple(a for a, _, _ in vfs), {k: tuple(v) for k, v in free.items()}))
    return out


def scan_parents(h: HostRoot) -> list[Parent]:
    """Every place a vGPU can be made on this host: mdev parents (any bus), then NVIDIA SR-IOV vGPU GPUs."""
    return _mdev_parents(h) + _sriov_parents(h)


def hosted_vgpus(h: HostRoot, address: str) -> list[Instance]:
    """The live vGPUs a PCI function hosts, which a driver change (vfio-pci) would destroy: the mdev instances it is
    the parent of, and, for an NVIDIA SR-IOV vGPU PF, its VFs with a vGPU type set (``current_vgpu_type`` not 0).
    [] for any other function (also one that is not there). Reads only this function's own entries."""
    d = f"{h.sys}/bus/pci/devices/{address}"
    real = h.realpath(d)
    out = sorted(_mdev_children(h, {real: address})[address].values(), key=lambda i: i.id)
    vfs = sorted((int(n[6:]), n) for n, _ in h.walk_links(d, "virtfn") if n[6:].isdigit())
    names: dict[str, str] = {}
    typed = []
    for _, link in vfs:
        cur = _current(h, f"{d}/{link}")
        if cur is None:
            continue
        for tid, name in nvidia_types(h.read(f"{d}/{link}/nvidia/creatable_vgpu_types")):
            names.setdefault(tid, name)
        if cur != "0":
            vf = os.path.basename(h.realpath(f"{d}/{link}"))
            typed.append((vf, cur, f"{d}/{link}"))
    out += [Instance(vf, SRIOV, address, cur, h.link_name(p + "/driver"), _group(h, p), names.get(cur))
            for vf, cur, p in typed]
    return out
