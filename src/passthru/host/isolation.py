"""Why an IOMMU group is as big as it is, and what would isolate a device: the kernel's grouping rule replayed on
the facts of ``host/pcie.py``.

This is about *isolation* (which functions the IOMMU cannot tell apart), not *viability* (``host/iommu.py``:
whether every endpoint is on a vfio driver). The rule (drivers/iommu/iommu.c ``pci_device_group``, without the
device-specific quirks of drivers/pci/quirks.c):

1. From the device, walk up the bridges to the root. A bridge *isolates* when the kernel's ``pci_acs_enabled``
   holds for it with SV, RR, CR and UF: root ports and switch downstream ports need an ACS capability with those
   controls on (a control the port does not offer counts as on); switch upstream ports and endpoints need it only
   when they are multifunction; conventional PCI bridges and PCIe-to-PCI bridges never isolate (everything behind
   a PCIe-to-PCI bridge reaches the IOMMU with the bridge's requester ID).
2. The device shares the group of the topmost bridge on its path that does not isolate (and everything below it).
3. That function (or the device itself), when multifunction without working ACS, shares its group with the other
   functions of its slot that lack it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..discovery import Inventory
from .iommu import IommuGroup, scan_groups
from .pcie import PcieFacts, kind_words, read_pcie, root_bus

__all__ = ["Cause", "Explanation", "Slot", "Isolation", "acs_verdict", "explain_groups", "explain_group",
           "isolation_advice", "why_group", "shared_groups", "OVERRIDE_ARG", "OVERRIDE_WARNING", "Explainer"]

OVERRIDE_ARG = "pcie_acs_override=downstream,multifunction"
OVERRIDE_WARNING = ("last resort: the override only makes the kernel pretend the ports isolate; devices in one real "
                    "group can still DMA to each other unchecked (peer-to-peer, past the IOMMU), so a guest given "
                    "one of them can read and write the memory of the others and of the host driver using them. "
                    "It needs a kernel carrying the ACS override patch (Proxmox VE's, linux-zen); Debian's and "
                    "mainline kernels ignore it")

_REASONS = {
    "no_acs": "{at} ({kind}) has no ACS capability",
    "acs_off": "{at} ({kind}) has ACS but {missing} off",
    "pcie_to_pci": "{at} is a PCIe-to-PCI bridge: everything behind it shares its requester ID",
    "conventional": "{at} is a conventional PCI bridge: the devices on its bus can reach each other",
    "multifunction_no_acs": "{at} ({kind}) is a multifunction device without ACS: its functions can reach each other",
    "unreadable": "{at}: config space not readable past 64 bytes (run as root)",
}


def acs_verdict(p: PcieFacts) -> tuple[bool | None, str]:
    """(isolates, reason) for one function as the kernel's pci_acs_enabled sees it with SV|RR|CR|UF (no quirks).
    isolates is None when config space was too short to tell."""
    if p.short:
        return None, "unreadable"
    kind = p.kind
    if kind in ("pci", "pci_bridge"):
        return False, "conventional"
    if kind in ("pcie_to_pci", "pci_to_pcie", "rc_event_collector"):
        return False, "pcie_to_pci" if kind != "rc_event_collector" else "no_acs"
    needs = kind in ("root_port", "downstream") or p.multifunction and kind in (
        "endpoint", "legacy_endpoint", "upstream", "rc_endpoint")
    if not needs:
        return True, "not_applicable"
    if p.acs is None:
        return False, "no_acs" if kind in ("root_port", "downstream") else "multifunction_no_acs"
    if not p.acs.enabled:
        return False, "acs_off"
    return True, "acs"


@dataclass(frozen=True, slots=True)
class Cause:
    """One function that makes devices share a group."""

    address: str
    kind: str  # PcieFacts.kind
    reason: str  # no_acs | acs_off | pcie_to_pci | conventional | multifunction_no_acs | unreadable
    missing: tuple[str, ...]  # for acs_off: the controls switched off (SV, RR, CR, UF)
    members: tuple[str, ...]  # the group's functions it pulls together

    @property
    def text(self) -> str:
        slot = self.reason == "multifunction_no_acs" and self.kind != "upstream"
        return _REASONS[self.reason].format(at=f"{self.address[:-2]}.*" if slot else self.address,
                                            kind=kind_words(self.kind), missing="/".join(self.missing))


@dataclass(frozen=True, slots=True)
class Explanation:
    group: int
    isolated: bool  # every non-bridge member sits in one slot (one card): nothing else to pass through with it
    causes: tuple[Cause, ...]
    ports: tuple[PcieFacts, ...]  # every bridge on the members' paths and every multifunction member, with ACS
    note: str | None  # when the kernel's grouping differs from what config space predicts
    root_buses: tuple[str, ...] = ()  # the root complexes' buses ("0000:00") the members hang from

    @property
    def text(self) -> str:
        if not self.causes:
            base = "one device: isolated" if self.isolated else "shared for a reason config space does not show"
        else:
            base = "; ".join(c.text for c in self.causes)
        return base + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True, slots=True)
class Slot:
    root_port: str
    numa_node: int
    group: int | None
    empty: bool
    holds: tuple[str, ...]  # endpoints below it


@dataclass(frozen=True, slots=True)
class Isolation:
    slots: tuple[Slot, ...]  # root ports with working ACS, other than the ones this group hangs from
    override: str = OVERRIDE_ARG
    warning: str = OVERRIDE_WARNING

    @property
    def text(self) -> str:
        free = [s for s in self.slots if s.empty]
        if self.slots:
            offer = free or list(self.slots)
            shown = ", ".join(f"{s.root_port} (node {s.numa_node if s.numa_node >= 0 else '-'}"
                              f"{', empty' if s.empty else ''})" for s in offer[:4])
            more = f" and {len(offer) - 4} more" if len(offer) > 4 else ""
            head = f"move the card to a slot whose root port isolates: {shown}{more}"
        else:
            head = "no root port on this host isolates (none has working ACS)"
        return (f"{head}; only as a last resort: {self.override} (unsafe: the devices can still DMA to each other "
                "unchecked)")


class Explainer:
    """The rule over one inventory (facts read once per function)."""

    def __init__(self, inv: Inventory, facts: dict[str, PcieFacts] | None = None) -> None:
        self.inv = inv
        self.facts = dict(facts or {})
        self._by_key: dict[tuple, set[str]] | None = None
        self._below: dict[str, list[str]] | None = None
        self._fn = {f.address: f for f in inv.pci}
        self._slots: dict[str, list[str]] = {}
        for f in inv.pci:
            self._slots.setdefault(f.address[:-2], []).append(f.address)
        self._chains: dict[str, list[str]] = {}

    def upstream(self, address: str) -> list[str]:
        """Inventory.upstream, memoized through the parent's chain: the inventory looks functions up one by one,
        which over every function of a large host would be quadratic."""
        chain = self._chains.get(address)
        if chain is None:
            fn = self._fn.get(address)
            p = fn.parent if fn is not None else None
            if p is None or p not in self._fn:
                chain = self.inv.upstream(address)
            else:
                up = self._chains.get(p)
                if up is None:
                    self._chains[address] = []  # a loop guard while the parent's chain is worked out
                    up = self.upstream(p)
                chain = [p] + up if address not in up else self.inv.upstream(address)
            self._chains[address] = chain
        return chain

    def fact(self, address: str) -> PcieFacts:
        if address not in self.facts:
            self.facts[address] = read_pcie(self.inv.root, address)
        return self.facts[address]

    def failing(self, address: str) -> list[tuple[str, str]]:
        """The bridges above ``address`` that do not isolate, nearest first, with the reason; the last one is the
        topmost, whose group the device joins."""
        out = []
        for b in self.upstream(address):
            ok, why = acs_verdict(self.fact(b))
            if ok is not True:
                out.append((b, why))
        return out

    def unit(self, address: str) -> tuple[tuple, list[tuple[str, str]]]:
        """(the predicted group key of ``address``, [(responsible function, reason)...])."""
        causes = self.failing(address)
        base = causes[-1][0] if causes else address
        f = self.fact(base)
        ok, why = acs_verdict(f)
        fn = self._fn.get(base)
        if f.multifunction and ok is not True and (fn is None or fn.physfn is None):
            slot = base[:-2]
            first = min(self._slots.get(slot, [base]))
            causes.append((first, why if why in ("acs_off", "unreadable") else "multifunction_no_acs"))
            return ("slot", slot), causes
        return ("fn", base), causes

    def _keys(self) -> dict[tuple, set[str]]:
        """Predicted group key -> the functions (with a group) the rule puts under it; computed once."""
        if self._by_key is None:
            self._by_key = {}
            for fn in self.inv.pci:
                if fn.iommu_group is not None:
                    self._by_key.setdefault(self.unit(fn.address)[0], set()).add(fn.address)
        return self._by_key

    def explain(self, g: IommuGroup) -> Explanation:
        members = list(g.devices)
        found: dict[str, tuple[str, list[str]]] = {}
        keys = set()
        for m in members:
            key, causes = self.unit(m)
            keys.add(key)
            for addr, why in causes:
                found.setdefault(addr, (why, []))[1].append(m)
        causes = []
        for addr, (why, pulled) in found.items():
            if len(members) < 2:
                continue
            fct = self.fact(addr)
            causes.append(Cause(addr, fct.kind, why, fct.acs.missing if fct.acs and why == "acs_off" else (),
                                tuple(pulled)))
        ends = {m[:-2] for m in members if not self._bridge(m)}
        note = None
        if len(keys) > 1:
            note = ("the kernel grouped more than config space explains: a DMA alias quirk "
                    "(drivers/pci/quirks.c) or config space we could not read")
        elif keys and not self._keys().get(next(iter(keys)), set()) <= set(members):
            note = ("the kernel isolates more than config space predicts: an ACS quirk in drivers/pci/quirks.c "
                    "vouches for a port without a standard ACS capability")
        ports = []
        seen = set()
        for m in members:
            for a in [m, *self.upstream(m)]:
                if a in seen:
                    continue
                seen.add(a)
                f = self.fact(a)
                if a != m or self._bridge(a) or f.multifunction or f.acs is not None:
                    ports.append(f)
        roots = tuple(sorted({root_bus(m, self.upstream(m)) for m in members}))
        return Explanation(g.number, len(ends) <= 1, tuple(sorted(causes, key=lambda c: c.address)), tuple(ports),
                           note, roots)

    def _bridge(self, address: str) -> bool:
        fn = self._fn.get(address)
        return fn is not None and fn.is_bridge

    def advice(self, g: IommuGroup) -> Isolation:
        if self._below is None:
            self._below = {}
            for x in self.inv.pci:
                chain = self.upstream(x.address)
                if chain and not x.is_bridge:
                    self._below.setdefault(chain[-1], []).append(x.address)
        above = {b for m in g.devices for b in self.upstream(m)}
        slots = []
        for fn in self.inv.pci:
            if not fn.is_bridge or fn.address in above:
                continue
            f = self.fact(fn.address)
            if f.kind != "root_port" or acs_verdict(f)[0] is not True:
                continue
            below = self._below.get(fn.address, [])
            slots.append(Slot(fn.address, fn.numa_node, fn.iommu_group, not below, tuple(below)))
        slots.sort(key=lambda s: (not s.empty, s.root_port))
        return Isolation(tuple(slots))


def explain_group(inv: Inventory, g: IommuGroup, ex: Explainer | None = None) -> tuple[Explanation, Isolation | None]:
    ex = ex or Explainer(inv)
    e = ex.explain(g)
    return e, (None if e.isolated else ex.advice(g))


def explain_groups(inv: Inventory, groups: list[IommuGroup]) -> dict[int, tuple[Explanation, Isolation | None]]:
    ex = Explainer(inv)
    return {g.number: explain_group(inv, g, ex) for g in groups}


def isolation_advice(inv: Inventory, g: IommuGroup) -> Isolation:
    return Explainer(inv).advice(g)


def why_group(inv: Inventory, number: int) -> tuple[Explanation, Isolation | None] | None:
    """The explanation of IOMMU group ``number``; None when the host lists no such group."""
    g = next((x for x in scan_groups(inv.root, inv.pci) if x.number == number), None)
    return None if g is None else explain_group(inv, g)


def shared_groups(inv: Inventory) -> tuple[list[tuple[IommuGroup, Explanation, Isolation | None]], int]:
    """([(group, explanation, advice)] for every group holding more than one card, number of groups)."""
    groups = scan_groups(inv.root, inv.pci)
    why = explain_groups(inv, groups)
    return [(g, *why[g.number]) for g in groups if not why[g.number][0].isolated], len(groups)
