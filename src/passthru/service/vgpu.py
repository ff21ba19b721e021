"""The vGPU operations the faces call (``passthru vgpu ...`` and the agent's ``/vgpu`` routes).

The kind (``kinds/vgpu/``) makes and removes vGPUs; what needs the inventory is composed here:

- ``create(..., vm="vm1")`` makes a vGPU *and* assigns it to vm1 in one journal entry: the kind calls back into
  :func:`passthru.service.assign.assign` and removes the vGPU again when the claim fails (all or nothing);
- ``remove`` is refused while the inventory says a VM holds the vGPU.

The listings and the boot start need no inventory; they are the kind's, re-exported so the faces have one module.
The inventory (SQLAlchemy: ~110 modules, 0.4 s on a host and several seconds in a TCG guest) is imported only by
the two functions that need it, so ``vgpu list``, ``types`` and ``start-persisted`` (run at every boot) start fast.
"""

from __future__ import annotations


from ..config import Paths
from ..host.root import HostRoot
from ..identity import pci_address
from ..kinds.vgpu import SRIOV, VgpuOutcome, VgpuResult, list_vgpus, release_created, start_persisted, types_doc
from ..kinds.vgpu import create as kind_create
from ..kinds.vgpu import remove as kind_remove
from ..vfio.kernel import Kernel
from ..writers.mdev import MdevKernel
from .session import Session

__all__ = ["create", "remove", "holder", "list_vgpus", "types_doc", "start_persisted", "release_created",
           "VgpuResult", "VgpuOutcome", "MdevKernel"]


def create(h: HostRoot, paths: Paths, parent: str | None, type_text: str, *, uuid: str | None = None,
           persist: bool = False, placement: str = "pack", vm: str | None = None, dry_run: bool = False,
           kernel: Kernel | None = None) -> VgpuResult:
    """``passthru vgpu create``: the kind's :func:`~passthru.kinds.vgpu.create` (same options and refusals); with
    ``vm``, the new vGPU is assigned to that VM before this returns, or removed again."""

    def claim(res: VgpuResult, k: MdevKernel) -> None:
        from .assign import assign  # the inventory, only when a VM is named (see the module's docstring)

        s = Session(h.base, paths.config_dir, paths.state_dir)
        assign(s, res.vm or "", [pci_address(res.identity) or res.identity if res.mode == SRIOV else res.identity], kernel=k)

    return kind_create(h, paths, parent, type_text, uuid=uuid, persist=persist, placement=placement, vm=vm,
                       claim=claim if vm is not None else None, dry_run=dry_run, kernel=kernel)


def remove(h: HostRoot, paths: Paths, text: str, *, keep_definition: bool = False, dry_run: bool = False,
           kernel: Kernel | None = None) -> VgpuResult:
    """``passthru vgpu remove``: the kind's :func:`~passthru.kinds.vgpu.remove`, refused while a VM holds it."""
    return kind_remove(h, paths, text, keep_definition=keep_definition, dry_run=dry_run, kernel=kernel,
                       holder=lambda identity: holder(paths, identity))


def holder(paths: Paths, identity: str) -> str | None:
    """The VM the inventory says holds ``identity`` (None without an inventory database)."""
    if not paths.has_inventory():
        return None
    from ..inventory.store import Store  # only when there is an inventory (see the module's docstring)

    store = Store(paths=paths)
    try:
        return next((a.vm for a in store.assignments() if a.device == identity), None)
    finally:
        store.close()
