"""The host's PCI topology as one tree document: NUMA nodes -> root buses -> ports and switches -> devices, each
function with its kind, driver (host / vfio / free), IOMMU group and the VM that holds it, and the groups with
their viability. ``passthru topology --json`` prints it; the text tree (cli/topology.py), the SVG and HTML pictures
(service/topology_svg.py) and the agent's ``GET /topology`` are all drawn from it.

The tree follows each function's upstream bridge (``PciFunction.parent``): a bridge on a root bus is a *root port*,
a bridge with bridges below it is a *switch* (its upstream port) whose bridges are *downstream ports*, any other
bridge (PCIe-to-PCI, for example) is a *bridge*; everything else is an *endpoint*. A root bus sits on the NUMA node
its functions report (-1: the kernel does not say). Lookups are by dictionary: a 4096-function host is one pass.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs start-up time on every CLI call
    from typing import Any

from .session import Session

__all__ = ["topology_doc", "build_topology", "holders", "USES"]

USES = ("host", "vfio", "free")  # who drives a function: a host driver, a vfio driver, or no driver at all


def holders(s: Session) -> dict[str, str]:
    """PCI address -> the VM holding it, from the local inventory (nothing when there is no inventory yet)."""
    if not s.has_inventory():
        return {}
    from ..identity import pci_address
    from .assign import open_store

    store = open_store(s, dry_run=True)
    try:
        out = {}
        for a in store.assignments():
            addr = pci_address(a.device) or a.device
            out.setdefault(addr, a.vm)
        return out
    finally:
        store.close()


def topology_doc(s: Session, held: dict[str, str] | None = None) -> dict[str, Any]:
    """The tree for this session's host. ``held``: PCI address -> VM (the agent passes its snapshot's; None reads
    the local inventory)."""
    from ..host.iommu import scan_groups

    inv = s.inventory(usb=False, serial=False)
    groups = scan_groups(s.host, inv.pci) if inv.iommu.enabled else []
    return build_topology(inv, groups, s.namer(), holders(s) if held is None else held)


def _use(driver: str | None) -> str:
    from ..host.iommu import is_vfio_driver

    if driver is None:
        return "free"
    return "vfio" if is_vfio_driver(driver) else "host"


def build_topology(inv: Any, groups: list, names: Any, held: dict[str, str]) -> dict[str, Any]:
    """The document from facts already read: an Inventory, its IOMMU groups, a Namer and PCI address -> VM."""
    from ..render import SCHEMA, iommu_json

    fns = {f.address: f for f in inv.pci}
    devs = {d.id: d for d in inv.devices if d.bus == "pci"}
    below: dict[str | None, list] = {}
    for f in inv.pci:  # a parent the scan did not see (a hidden bridge) counts as the root bus
        below.setdefault(f.parent if f.parent in fns else None, []).append(f)
    for kids in below.values():
        kids.sort(key=lambda f: f.address)

    def node(f: Any, depth: int, parent_type: str | None) -> dict[str, Any]:
        kids = below.get(f.address, [])
        if not f.is_bridge:
            typ = "endpoint"
        elif depth == 0:
            typ = "root port"
        elif any(k.is_bridge for k in kids) and parent_type != "switch":
            typ = "switch"
        elif parent_type == "switch":
            typ = "downstream port"
        else:
            typ = "bridge"
        d = devs.get(f.address)
        vendor, device, _sub, cls = names.pci_names(f)
        notes = []
        if f.boot_vga:
            notes.append("boot VGA")
        if f.sriov_totalvfs:
            notes.append(f"VFs {f.sriov_numvfs or 0}/{f.sriov_totalvfs}")
        if f.physfn:
            notes.append(f"VF {f.vf_index} of {f.physfn}")
        if f.mdevs:
            notes.append(f"vGPUs {len(f.mdevs)}")
        if d is not None and d.model:
            notes.append(f"model {d.model}")
        return {
            "address": f.address, "type": typ, "kind": d.kind if d else "other", "role": d.role if d else None,
            "ids": f.ids, "name": device or cls or (vendor and f"{vendor} device") or None,
            "driver": f.driver, "use": _use(f.driver), "iommu_group": f.iommu_group,
            "vm": held.get(f.address), "notes": notes,
            "children": [node(k, depth + 1, typ) for k in kids],
        }

    buses: dict[str, list] = {}
    for f in below.get(None, []):
        buses.setdefault(f.address.rsplit(":", 1)[0], []).append(f)
    by_node: dict[int, list] = {}
    for bus, members in sorted(buses.items()):
        numa = next((f.numa_node for f in members if f.numa_node >= 0), -1)
        by_node.setdefault(numa, []).append({"bus": bus, "children": [node(f, 0, None) for f in members]})
    nodes = [{"numa_node": n, "roots": by_node[n]} for n in sorted(by_node, key=lambda n: (n < 0, n))]
    group_docs = []
    for g in groups:
        endpoints = [a for a in g.devices if a in fns and not fns[a].is_bridge]
        group_docs.append({"number": g.number, "viable": g.viable, "reason": g.reason, "members": list(g.devices),
                           "endpoints": len(endpoints), "blockers": list(g.blockers),
                           "vms": sorted({held[a] for a in g.devices if a in held})})
    return {"schema": SCHEMA, "iommu": iommu_json(inv.iommu), "functions": len(inv.pci), "nodes": nodes,
            "groups": group_docs}


def walk(doc: dict[str, Any]):
    """(numa node, root bus, depth, function) for every function of the tree, in drawing order."""
    for n in doc["nodes"]:
        for r in n["roots"]:
            stack = [(0, c) for c in reversed(r["children"])]
            while stack:
                depth, f = stack.pop()
                yield n["numa_node"], r["bus"], depth, f
                stack.extend((depth + 1, c) for c in reversed(f["children"]))
