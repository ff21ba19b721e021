"""The vGPU kind: mediated devices (mdev) and NVIDIA SR-IOV vGPU virtual functions, in one home.

    placement.py   choosing where one goes: parents, types, capacity, pack/spread (facts from ``host/mdev.py``)
    records.py     what passthru made (records), its persisted definitions, mdevctl's, and the merged listing
    instances.py   create / remove / start-persisted / release-created, through ``writers/mdev.py`` (the only
                   writer of the mdev bus and ``current_vgpu_type``), journal first, undone on failure

:data:`VGPU` is the registered :class:`DeviceKind`: its ``before_assign`` makes a vGPU for a VM (the caller claims
it), its ``after_release`` removes what was made for that VM (``passthru vgpu create --vm``). Making one *and*
assigning it is a service operation (``service/vgpu.py``).
"""

from __future__ import annotations

from ...config import Paths
from ...discovery import Device
from ...findings import PASS, WARN, Finding
from ...host.pci import PciFunction
from ...host.root import HostRoot
from ...vfio.kernel import Kernel
from ..base import DeviceKind, register
from .instances import VgpuOutcome, VgpuResult, create, parse_id, release_created, remove, start_persisted, types_doc
from .placement import (MDEV, PLACEMENTS, SRIOV, UUID_RE, Instance, Parent, VgpuType, candidates, capacity,
                        find_parent, hosted_vgpus, match_type, nvidia_types, pick, scan_parents, unknown_type)
from .records import CREATED, CREATING, REMOVING, MdevStore, Record, list_vgpus

__all__ = ["VgpuType", "Instance", "Parent", "scan_parents", "find_parent", "candidates", "capacity", "pick",
           "match_type", "unknown_type", "nvidia_types", "hosted_vgpus", "UUID_RE", "MDEV", "SRIOV", "PLACEMENTS",
           "VgpuResult", "VgpuOutcome", "create", "remove", "start_persisted", "release_created", "types_doc",
           "parse_id", "Record", "MdevStore", "list_vgpus", "CREATING", "CREATED", "REMOVING", "VgpuKind", "VGPU"]


# -- the kind -----------------------------------------------------------------------------------------------------
class VgpuKind(DeviceKind):
    """vGPU instances: mdevs go to VMs as ``vfio-pci,sysfsdev=`` / ``<hostdev type='mdev'>``; NVIDIA SR-IOV VFs as
    PCI devices once their type is set."""

    name = "vgpu"
    hotpluggable = True

    def __init__(self, kernel: Kernel | None = None) -> None:
        self.kernel = kernel  # the write boundary (passthru.writers.mdev.MdevKernel); tests give a fake

    def checks(self, h: HostRoot, device: Device | PciFunction) -> list[Finding]:
        """A GPU that offers vGPU types but has no capacity left, and an NVIDIA vGPU VF with no type set."""
        fn = getattr(device, "fact", device)
        addr = getattr(fn, "address", None)
        out: list[Finding] = []
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

    def before_assign(self, h: HostRoot, paths: Paths, vm: str, identity: str, options: dict) -> dict | None:
        """With ``options`` {"type": T[, "parent": P, "placement": "pack"|"spread"]}: make a vGPU for ``vm`` now (the
        caller claims ``identity``; ``passthru vgpu create --vm`` does both) and return {"identity", "created"}."""
        if not options.get("type"):
            return None
        res = create(h, paths, options.get("parent"), options["type"], placement=options.get("placement", "pack"),
                     vm=vm, kernel=self.kernel)
        return {"identity": res.identity, "created": res.id}

    def after_release(self, h: HostRoot, paths: Paths, vm: str, identity: str, prior: dict | None) -> None:
        """Remove the mdev (or reset the VF's vGPU type) if passthru made it for ``vm``; anything else stays."""
        release_created(h, paths, vm, [identity], kernel=self.kernel)


VGPU = register(VgpuKind())
