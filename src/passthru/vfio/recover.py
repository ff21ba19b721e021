"""Bringing the takeover's records and the kernel back in line: after a crash (``kill -9`` mid-bind), a reboot, or
changes made outside passthru. Group first, then device:

1. Interrupted operations (their journal intent is still there and no process holds it): a ``vfio.bind`` whose
   members all reached vfio-pci is finished; otherwise every member it moved goes back to its prior driver. A
   ``vfio.restore`` is finished (every member still held goes back). Either way every function of the group ends on
   the same side.
2. Each held device: a ``bound`` record on vfio-pci is fine; a ``binding`` one (from a passthru without group
   intents) completes when the device is on vfio-pci, else goes back; a device that another driver now has was
   rebound outside passthru (or the host rebooted) and its record is dropped; a different card in the slot drops it.
3. Split groups: a held device whose IOMMU group mate is on a host driver makes a group no VM can use. Reconcile
   says so, with both ways out, and fails (exit 1): it cannot know which side the operator wants.

``apply_boot`` (passthru-apply-boot.service, and the agent at start) reconciles, then binds what is persisted.
"""

from __future__ import annotations

from dataclasses import replace

from ..config import Paths
from ..errors import PassthruError
from ..host.iommu import BRIDGE_DRIVERS, is_vfio_driver
from ..host.pci import read_function
from ..host.root import HostRoot
from ..journal import Op
from .kernel import VFIO_PCI, Kernel
from .plan import group_members
from .state import BINDING, BOUND, Holding, Holdings
from .takeover import DeviceResult, Outcome, bind, give_back, give_back_one

__all__ = ["reconcile", "apply_boot"]


def reconcile(h: HostRoot, paths: Paths, *, kernel: Kernel | None = None) -> Outcome:
    """Bring records and host back in line (see the module docstring). ``out.error`` when something could not be
    repaired (the CLI exits 1)."""
    store = Holdings(paths)
    k = kernel or Kernel(h)
    out = Outcome("reconcile")
    k.require_live()
    with store.lock():
        for op in store.journal.orphans("vfio."):
            _settle(k, store, op, out)
        for rec in store.holdings():
            _one(h, k, store, rec, out)
        _split_groups(h, k, store, out)
    return out


# -- 1. interrupted operations ------------------------------------------------------------------------------------
def _settle(k: Kernel, store: Holdings, op: Op, out: Outcome) -> None:
    members = [m["address"] if isinstance(m, dict) else m for m in op.get("members") or []]
    errors: list[str] = []
    if op.kind == "vfio.bind":
        infos = {m["address"]: m for m in op.get("members") or [] if isinstance(m, dict)}
        done = all(k.present(a) and k.driver_of(a) == VFIO_PCI and _node(k, a) for a in members)
        if done:
            for a in members:
                rec = store.get(a) or _from_member(infos.get(a, {}), a, op.id)
                store.save(replace(rec, phase=BOUND, op=op.id))
                store.audit("reconcile", a, BINDING, BOUND, op=op.id)
                out.devices.append(DeviceResult(a, VFIO_PCI, VFIO_PCI, "changed",
                                                "interrupted bind finished: every member of it is on vfio-pci"))
        else:
            for a in reversed(members):
                rec = store.get(a)
                if rec is None or rec.op != op.id:
                    continue  # never touched by this operation (its record comes before its first write)
                before = k.driver_of(a)
                try:
                    give_back(k, store, rec)
                    out.devices.append(DeviceResult(a, before, k.driver_of(a), "restored",
                                                    "interrupted bind undone: given back with the rest of it"))
                except PassthruError as e:
                    errors.append(f"{a}: {e}")
                    out.devices.append(DeviceResult(a, before, k.driver_of(a), "failed", str(e)))
    elif op.kind == "vfio.restore":
        for a in members:
            rec = store.get(a)
            if rec is not None:
                give_back_one(k, store, rec, out, errors)
                if out.devices and out.devices[-1].status == "restored":
                    out.devices[-1].note = "interrupted restore finished"
    if errors:
        out.error = out.error or "; ".join(errors)
        op.release()  # kept: the next reconcile retries
    else:
        op.done()


def _node(k: Kernel, a: str) -> bool:
    g = k.group_of(a)
    return g is not None and k.h.exists(k.vfio_node(g))


def _from_member(m: dict, a: str, op_id: str) -> Holding:
    return Holding(a, str(m.get("vendor_id", "0000")), str(m.get("device_id", "0000")), m.get("iommu_group"),
                   m.get("prior_driver"), m.get("prior_override"), BINDING, op=op_id)


# -- 2. each held device ------------------------------------------------------------------------------------------
def _one(h: HostRoot, k: Kernel, store: Holdings, rec: Holding, out: Outcome) -> None:
    a = rec.address
    fn = read_function(h, a, find_vf_index=False)
    if fn is None:
        out.devices.append(DeviceResult(a, None, None, "lost", "not on the host; record kept"))
        return
    if (f"{fn.vendor_id:04x}", f"{fn.device_id:04x}") != (rec.vendor_id, rec.device_id):
        store.drop(a)
        store.audit("drop", a, None, None, reason="another device in this slot")
        out.devices.append(DeviceResult(a, fn.driver, fn.driver, "dropped",
                                        f"now {fn.ids}, recorded {rec.vendor_id}:{rec.device_id}"))
        return
    if rec.phase == BOUND and fn.driver == VFIO_PCI:
        out.devices.append(DeviceResult(a, fn.driver, fn.driver, "unchanged"))
    elif rec.phase == BINDING and fn.driver == VFIO_PCI and _node(k, a):
        store.save(replace(rec, phase=BOUND))
        store.audit("reconcile", a, BINDING, BOUND)
        out.devices.append(DeviceResult(a, fn.driver, fn.driver, "changed", "bind completed"))
    elif rec.phase == BOUND and fn.driver not in (None, VFIO_PCI):
        store.drop(a)
        store.audit("drop", a, VFIO_PCI, fn.driver, reason="rebound outside passthru (or rebooted)")
        out.devices.append(DeviceResult(a, VFIO_PCI, fn.driver, "dropped",
                                        f"on {fn.driver} now (rebound outside passthru, or a reboot)"))
    else:
        try:
            give_back(k, store, rec)
            out.devices.append(DeviceResult(a, fn.driver, k.driver_of(a), "restored",
                                            f"unfinished {rec.phase}: given back to {rec.prior_driver or 'no driver'}"))
        except PassthruError as e:
            out.devices.append(DeviceResult(a, fn.driver, k.driver_of(a), "failed", str(e)))
            out.error = out.error or f"{a}: {e}"


# -- 3. split groups ----------------------------------------------------------------------------------------------
def _split_groups(h: HostRoot, k: Kernel, store: Holdings, out: Outcome) -> None:
    held: dict[int, list[str]] = {}
    for rec in store.holdings():
        g = k.group_of(rec.address) if k.present(rec.address) else None
        if g is not None and k.driver_of(rec.address) == VFIO_PCI:
            held.setdefault(g, []).append(rec.address)
    for g, mine in sorted(held.items()):
        for m in group_members(h, g):
            drv = k.driver_of(m)
            if m in mine or drv is None or is_vfio_driver(drv) or drv in BRIDGE_DRIVERS:
                continue
            fn = read_function(h, m, find_vf_index=False)
            if fn is None or fn.is_bridge:
                continue
            first = mine[0]
            note = (f"IOMMU group {g} is split: {', '.join(mine)} on vfio-pci, {m} on {drv}; no VM can use the group "
                    f"until it is whole: `passthru restore {first}` (back to the host) or `passthru bind {first} "
                    "--group` (all to vfio-pci)")
            out.devices.append(DeviceResult(m, drv, drv, "split", note, first))
            out.error = out.error or note


# -- boot ---------------------------------------------------------------------------------------------------------
def apply_boot(h: HostRoot, paths: Paths, *, kernel: Kernel | None = None) -> Outcome:
    """At boot: reconcile, then bind every persisted device, one IOMMU group at a time (one group's failure does
    not stop the others)."""
    out = reconcile(h, paths, kernel=kernel)
    out.action = "apply-boot"
    store = Holdings(paths)
    groups: dict[object, list[str]] = {}
    for doc in store.persisted():
        a = doc["address"]
        fn = read_function(h, a, find_vf_index=False)
        if fn is None:
            out.devices.append(DeviceResult(a, None, None, "lost", "persisted, but not on the host"))
            continue
        if (f"{fn.vendor_id:04x}", f"{fn.device_id:04x}") != (doc.get("vendor_id"), doc.get("device_id")):
            out.devices.append(DeviceResult(a, fn.driver, fn.driver, "failed",
                                            f"persisted for {doc.get('vendor_id')}:{doc.get('device_id')}, "
                                            f"the slot now holds {fn.ids}: not bound"))
            out.error = out.error or f"{a}: a different device is in this slot"
            continue
        groups.setdefault(fn.iommu_group if fn.iommu_group is not None else a, []).append(a)
    for members in groups.values():
        try:
            res = bind(h, paths, members, group=True, kernel=kernel)
            out.devices += res.devices
            out.warnings += res.warnings
        except PassthruError as e:
            out.error = out.error or str(e)
            out.devices += [DeviceResult(a, None, None, "failed", str(e)) for a in members]
    return out
