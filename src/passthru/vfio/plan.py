"""Deciding a takeover before any write: which devices move (the request plus, with ``--group``, the rest of each
IOMMU group), and whether any of them is something the host needs. Read-only.

A refusal names the device, why, and the flag that overrides it where one makes sense (a NIC whose address the
operator does not care about); some never can be overridden (a mounted filesystem, the console, a PF whose VFs a VM
uses, a GPU hosting live vGPUs). One refusal stops the whole request: nothing is changed. A dry run plans with the
same function, so it refuses exactly what the real run would.

:func:`check_whole` is the one rule that holds even when nothing is bound (``assign --no-bind``): a device hosting
live vGPUs is never handed to a VM whole, since whoever binds it for the VM destroys them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import NotFoundError, UsageError
from ..host.iommu import BRIDGE_DRIVERS, is_vfio_driver
from ..host.pci import PciFunction, normalize_address, read_function
from ..host.root import HostRoot
from ..host.usage import HostUse, host_uses

__all__ = ["Refusal", "RefusedError", "TakeoverPlan", "plan_bind", "check_whole", "parse_addresses", "OVERRIDES"]

# the override flags the CLI offers, by the kind of host use they lift
OVERRIDES = {"--force-netdev": "a network interface with an address or route", "--allow-boot-vga": "the boot VGA"}


@dataclass(frozen=True, slots=True)
class Refusal:
    address: str
    reason: str
    override: str | None = None
    via: str | None = None  # the requested device this one is a group mate of

    def line(self) -> str:
        who = f"{self.address} (IOMMU group mate of {self.via})" if self.via else self.address
        fix = f"; {self.override} overrides this" if self.override else ""
        return f"{who}: {self.reason}{fix}"


class RefusedError(UsageError):
    """The request would take something the host needs; nothing was changed."""

    def __init__(self, refusals: list[Refusal]) -> None:
        self.refusals = refusals
        first = refusals[0].line()
        more = f" (and {len(refusals) - 1} more: see --json)" if len(refusals) > 1 else ""
        super().__init__(f"refusing to take over {first}{more}")

    def refusals_json(self) -> list[dict]:
        """The refusals as both faces show them (the CLI's ``--json``, the agent's 409 body)."""
        return [{"address": r.address, "reason": r.reason, "override": r.override, "group_mate_of": r.via}
                for r in self.refusals]


@dataclass(slots=True)
class TakeoverPlan:
    functions: list[PciFunction]  # in bind order: requested devices, then their group mates
    requested: set[str]
    mates: dict[str, str] = field(default_factory=dict)  # mate address -> requested device it came with
    warnings: list[str] = field(default_factory=list)  # overridden host uses, kept for the report


def parse_addresses(texts: list[str]) -> list[str]:
    """Normalized, de-duplicated PCI addresses; a malformed one is a UsageError naming the form."""
    out: list[str] = []
    for t in texts:
        try:
            a = normalize_address(t)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if a not in out:
            out.append(a)
    if not out:
        raise UsageError("no device given: name PCI addresses such as 0000:42:00.0 (`passthru devices` lists them)")
    return out


def _is_bridge(fn: PciFunction) -> bool:
    return fn.is_bridge or fn.driver in BRIDGE_DRIVERS


def group_members(h: HostRoot, group: int) -> list[str]:
    return sorted(h.listdir(f"{h.sys}/kernel/iommu_groups/{group}/devices"))


def plan_bind(h: HostRoot, addrs: list[str], *, group: bool, allow: frozenset[str] = frozenset()) -> TakeoverPlan:
    """The devices a bind of ``addrs`` moves, or RefusedError / NotFoundError / UsageError."""
    unknown = set(allow) - set(OVERRIDES)
    if unknown:
        raise UsageError(f"unknown override {sorted(unknown)[0]}; known: {', '.join(OVERRIDES)}")
    fns: dict[str, PciFunction] = {}
    for a in addrs:
        fn = read_function(h, a)
        if fn is None:
            raise NotFoundError(f"{a}: no such PCI device on this host (`passthru devices` lists them)")
        fns[a] = fn
    refusals: list[Refusal] = []
    plan = TakeoverPlan(functions=[], requested=set(addrs))
    for a, fn in fns.items():
        if _is_bridge(fn):
            refusals.append(Refusal(a, "is a PCI bridge/port: it stays with the host; name the devices behind it"))
            continue
        if not fn.accessible:
            refusals.append(Refusal(a, "config space reads all ones (the device is off the bus or powered down): "
                                       "reseat or power it, then `echo 1 > /sys/bus/pci/rescan`"))
            continue
        if fn.iommu_group is None:
            refusals.append(Refusal(a, "has no IOMMU group, so vfio cannot isolate it: enable the IOMMU "
                                       "(`passthru doctor` says how)"))
            continue
        plan.functions.append(fn)
        missing = []
        for m in group_members(h, fn.iommu_group):
            if m in fns or m in plan.mates:
                continue
            mf = read_function(h, m)
            if mf is None or _is_bridge(mf):
                continue
            missing.append(mf)
        if missing and not group:
            named = ", ".join(f"{m.address} ({m.driver or 'no driver'})" for m in missing)
            refusals.append(Refusal(a, f"shares IOMMU group {fn.iommu_group} with {named}, which must move to "
                                       "vfio-pci with it: add --group (or name them too)"))
            continue
        for mf in missing:
            plan.mates[mf.address] = a
            plan.functions.append(mf)
    uses = host_uses(h, [f.address for f in plan.functions if not is_vfio_driver(f.driver)])
    for fn in plan.functions:
        for u in uses.get(fn.address, []):
            _judge(plan, refusals, u, allow)
    if refusals:
        raise RefusedError(refusals)
    return plan


def check_whole(h: HostRoot, addresses: list[str]) -> None:
    """RefusedError naming the vGPUs and how to remove them when one of ``addresses`` hosts live vGPUs."""
    uses = host_uses(h, addresses)
    refusals = [Refusal(u.address, u.detail) for a in addresses for u in uses.get(a, []) if u.what == "vgpus"]
    if refusals:
        raise RefusedError(refusals)


def _judge(plan: TakeoverPlan, refusals: list[Refusal], u: HostUse, allow: frozenset[str]) -> None:
    via = plan.mates.get(u.address)
    if u.override and u.override in allow:
        plan.warnings.append(f"{u.address}: {u.detail} (taken anyway: {u.override})")
    else:
        refusals.append(Refusal(u.address, u.detail, u.override, via))
