"""Devices chosen together: ``assign VM gpu --count 2 --same-switch [--same-numa]``.

Multi-GPU VMs want their GPUs behind one PCIe switch (peer-to-peer traffic stays in the switch) and on one NUMA
node (the VM's memory and vCPUs go there too). Before anything is claimed, the kind and model specs of the request
are turned into PCI addresses picked as one set:

    1. the free devices each spec matches (present, not held, no held parent, child or IOMMU group mate of
       another VM, not used by the host itself), grouped by where they sit: the PCIe switch
       (``Inventory.switch_of``), else the root port they hang off; and/or their NUMA node;
    2. the groups that hold every spec's count: the smallest that fits (leave big switches whole for big VMs);
    3. none fits: the best split (the fewest groups, the fullest first) is named in the refusal, and taken only
       with ``allow_split`` (``--allow-split``).

The store still decides: the addresses are claimed atomically afterwards like any named device, so a device another
VM took meanwhile is refused there, never given twice.
"""

from __future__ import annotations

from ..discovery import Inventory
from ..errors import UsageError
from ..host.usage import host_uses
from ..identity import pci_address
from ..inventory.spec import Spec, parse_spec
from ..inventory.store import ClaimError, Store

__all__ = ["choose_together", "host_use", "place_of"]


def host_use(inv: Inventory, address: str) -> str | None:
    """What the host uses a device or its group mates for (the first use, one line), or None."""
    addrs = [address] + [f.address for f in inv.group_mates(address) if not f.is_bridge]
    uses = [u for us in host_uses(inv.root, addrs).values() for u in us]
    return None if not uses else uses[0].detail if uses[0].address == address else \
        f"group mate {uses[0].address}: {uses[0].detail}"


def _host_used(inv: Inventory, addresses: list[str]) -> set[str]:
    """Those of ``addresses`` the host uses, itself or through an IOMMU group mate (:func:`host_use`'s rule), from one
    scan of the host for all of them."""
    mates = {a: [a] + [f.address for f in inv.group_mates(a) if not f.is_bridge] for a in addresses}
    uses = host_uses(inv.root, [x for group in mates.values() for x in group])
    return {a for a, group in mates.items() if any(uses.get(x) for x in group)}


def place_of(inv: Inventory, address: str) -> str | None:
    """Where a device sits for --same-switch: its PCIe switch, else its root port (None on a root bus)."""
    chain = inv.upstream(address)
    return inv.switch_of(address) or (chain[-1] if chain else None)


def _free(rows: list[dict], vm: str) -> list[dict]:
    """The rows ``vm`` may claim by the store's rules (self, parent, child, group), as the store sees them now."""
    by_id = {r["identity"]: r for r in rows}
    held_kids = {r["parent"] for r in rows if r["parent"] and r["vm"]}
    other_groups = {(r["bus"], r["iommu_group"]) for r in rows if r["vm"] and r["vm"] != vm
                    and r["iommu_group"] is not None}
    out = []
    for r in rows:
        parent = by_id.get(r["parent"]) if r["parent"] else None
        if r["vm"] or (parent is not None and parent["vm"]) or r["identity"] in held_kids:
            continue
        if (r["bus"], r["iommu_group"]) in other_groups:
            continue
        out.append(r)
    return out


def _label(key: tuple) -> str:
    numa, where = key
    parts = [f"behind {where}" if where else None, f"NUMA {numa}" if numa is not None else None]
    return ", ".join(p for p in parts if p) or "anywhere"


def choose_together(store: Store, inv: Inventory, models: set[str], vm: str, specs: list[Spec], *, count: int,
                    same_switch: bool, same_numa: bool, numa: int | None, numa_policy: str,
                    allow_split: bool) -> list[Spec]:
    """``specs`` with each kind/model spec replaced by ``count`` PCI address specs chosen together (module doc).
    ClaimError names the best split when no switch / NUMA node holds them all and ``allow_split`` is off."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UsageError(f"--count must be 1 or more, got {count!r}")
    names = [sp for sp in specs if sp.form == "name"]
    if not names:
        raise UsageError("--count, --same-switch and --same-numa choose devices by kind or model (gpu, a100); "
                         "name one, not only addresses")
    everything = store.devices(state="present")
    free = [r for r in _free(everything, vm) if r["bus"] == "pci"]
    needs: list[tuple[Spec, list[dict]]] = []
    for sp in names:
        if sp.value in models:
            match = [r for r in free if r["model"] == sp.value]
        else:
            kinds = {r["identity"] for r in store.devices(kind=sp.value, state="present")}
            match = [r for r in free if r["identity"] in kinds]
        match = [r for r in match if not (fn := inv.pci_function(r["identity"][4:])) or not fn.is_bridge]
        used = _host_used(inv, [pci_address(r["identity"]) or "" for r in match])
        match = [r for r in match if pci_address(r["identity"]) not in used]
        if numa is not None and numa_policy == "strict":
            match = [r for r in match if r["numa_node"] == numa]
        if len(match) < count:
            where = f" on NUMA node {numa}" if numa is not None and numa_policy == "strict" else ""
            raise ClaimError(f"{sp.text}: {len(match)} free{where}, {count} asked (`passthru devices` shows them)")
        needs.append((sp, match))

    def key(r: dict) -> tuple | None:
        n = r["numa_node"] if same_numa else None
        if same_numa and (n is None or n < 0):
            return None  # unknown node: cannot promise "same"
        return (n, place_of(inv, r["identity"][4:]) if same_switch else None)

    groups: dict[tuple, list[tuple[int, dict]]] = {}
    for i, (_sp, match) in enumerate(needs):
        for r in match:
            k = key(r)
            if k is not None:
                groups.setdefault(k, []).append((i, r))
    picked = _fit(groups, len(needs), count, numa if numa_policy == "prefer" else None)
    if picked is None:
        split = _split(groups, len(needs), count)
        asked = " + ".join(f"{count} x {sp.text}" for sp, _m in needs)
        together = " and ".join(w for w, on in (("behind one PCIe switch", same_switch),
                                                ("on one NUMA node", same_numa)) if on)
        if split is None:
            raise ClaimError(f"no room for {asked} {together}, split or not: too few free with a known "
                             f"{'NUMA node' if same_numa else 'place'}")
        shown = "; ".join(f"{', '.join(r['identity'][4:] for r in rows)} ({_label(k)})" for k, rows in split)
        if not allow_split:
            raise ClaimError(f"no room for {asked} {together}; the best split: {shown}; pass --allow-split to take "
                             "it")
        picked = [r for _k, rows in split for r in rows]
    out = [sp for sp in specs if sp.form != "name"]
    return out + [parse_spec(r["identity"][4:]) for r in picked]


def _take(members: list[tuple[int, dict]], specs: int, count: int) -> list[dict] | None:
    got: list[dict] = []
    for i in range(specs):
        mine = [r for j, r in members if j == i and r not in got][:count]
        if len(mine) < count:
            return None
        got += mine
    return got


def _fit(groups: dict[tuple, list[tuple[int, dict]]], specs: int, count: int,
         prefer_numa: int | None) -> list[dict] | None:
    """The smallest group (then preferred NUMA node, then by name) that holds every spec's count."""
    order = sorted(groups, key=lambda k: (prefer_numa is not None and k[0] != prefer_numa,
                                          len({r["identity"] for _i, r in groups[k]}), str(k)))
    for k in order:
        got = _take(groups[k], specs, count)
        if got is not None:
            return got
    return None


def _split(groups: dict[tuple, list[tuple[int, dict]]], specs: int, count: int) -> list[tuple[tuple, list[dict]]] | None:
    """The fewest groups, fullest first, that together hold every spec's count."""
    left = [count] * specs
    out: list[tuple[tuple, list[dict]]] = []
    used: set[str] = set()
    for k in sorted(groups, key=lambda k: (-len(groups[k]), str(k))):
        rows = []
        for i, r in groups[k]:
            if left[i] > 0 and r["identity"] not in used:
                rows.append(r)
                used.add(r["identity"])
                left[i] -= 1
        if rows:
            out.append((k, rows))
        if not any(left):
            return out
    return None
