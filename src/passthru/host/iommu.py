"""IOMMU state and groups.

A group is the unit of isolation: vfio lets a VM use a group only when it is *viable*, i.e. every endpoint in it is
unbound or bound to a vfio-compatible driver (vfio-pci, a vfio-pci variant driver, or pci-stub). Bridges and PCIe
ports may stay on their host drivers. The verdict here explains itself: which members stop the group being viable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .pci import PciFunction, parse_address
from .root import HostRoot

__all__ = ["IommuState", "IommuGroup", "read_iommu_state", "scan_groups", "VFIO_DRIVERS", "is_vfio_driver",
           "platform_vendor"]

VFIO_DRIVERS = frozenset({"vfio-pci", "pci-stub"})
BRIDGE_DRIVERS = frozenset({"pcieport", "shpchp"})
_VARIANT_RE = re.compile(r"^[a-z0-9_]+[-_]vfio[-_]pci$")  # mlx5_vfio_pci, hisi_acc_vfio_pci, nvgrace_gpu_vfio_pci


def is_vfio_driver(driver: str | None) -> bool:
    return driver is not None and (driver in VFIO_DRIVERS or bool(_VARIANT_RE.match(driver)))


@dataclass(frozen=True, slots=True)
class IommuState:
    units: tuple[str, ...]  # /sys/class/iommu entries: dmar0, ivhd0, ...
    group_count: int
    vendor: str | None  # "intel" (DMAR units), "amd" (AMD-Vi / ivhd), "other", None

    @property
    def enabled(self) -> bool:
        return self.group_count > 0

    @property
    def message(self) -> str:
        if self.enabled:
            units = ", ".join(self.units) or "no units listed"
            return f"IOMMU on: {self.group_count} groups ({units})"
        if self.units:
            return "IOMMU units present but no groups: the IOMMU is not in use (check the kernel arguments)"
        return ("IOMMU off: no IOMMU groups; enable VT-d/AMD-Vi in firmware and add the kernel arguments "
                "(see `passthru doctor`)")


def read_iommu_state(h: HostRoot) -> IommuState:
    units = tuple(h.listdir(h.sys + "/class/iommu"))
    groups = [g for g in h.listdir(h.sys + "/kernel/iommu_groups") if g.isdigit()]
    vendor = None
    if units:
        if any(u.startswith("dmar") for u in units):
            vendor = "intel"
        elif any(u.startswith("ivhd") for u in units):
            vendor = "amd"
        else:
            vendor = "other"
    return IommuState(units=units, group_count=len(groups), vendor=vendor)


def platform_vendor(h: HostRoot, cpu_vendor: str | None) -> tuple[str | None, str]:
    """Whose IOMMU this host has, which decides the kernel arguments: (vendor, evidence). The ACPI table says it
    best (DMAR: Intel VT-d, IVRS: AMD-Vi), then the IOMMU units the kernel registered (dmar*, ivhd*), then the CPU
    vendor. They differ only in a VM (an AMD host giving its guest a virtual VT-d, as QEMU's intel-iommu does)."""
    tables = f"{h.sys}/firmware/acpi/tables"
    if h.exists(tables + "/DMAR"):
        return "intel", "ACPI DMAR table (Intel VT-d)"
    if h.exists(tables + "/IVRS"):
        return "amd", "ACPI IVRS table (AMD-Vi)"
    units = read_iommu_state(h).vendor
    if units in ("intel", "amd"):
        return units, f"{'dmar' if units == 'intel' else 'ivhd'} IOMMU units"
    return cpu_vendor, "CPU vendor"


@dataclass(frozen=True, slots=True)
class IommuGroup:
    number: int
    devices: tuple[str, ...]  # PCI addresses in the group
    other_members: tuple[str, ...]  # non-PCI members (mdev UUIDs, platform devices)
    type: str | None  # DMA, DMA-FQ, identity, blocked
    viable: bool
    blockers: tuple[str, ...]  # addresses of endpoints on host drivers
    reason: str

    @property
    def size(self) -> int:
        return len(self.devices) + len(self.other_members)


def _is_bridge_like(fn: PciFunction | None) -> bool:
    return fn is not None and (fn.is_bridge or fn.driver in BRIDGE_DRIVERS)


def group_verdict(members: list[PciFunction]) -> tuple[bool, tuple[str, ...], str]:
    """(viable, blockers, reason) for a group made of these functions."""
    blockers = tuple(
        f.address for f in members if not _is_bridge_like(f) and f.driver is not None and not is_vfio_driver(f.driver)
    )
    if not blockers:
        endpoints = [f for f in members if not _is_bridge_like(f)]
        if not endpoints:
            return True, (), "only bridges: nothing to pass through"
        return True, (), "viable: every endpoint is unbound or on a vfio driver"
    named = ", ".join(
        f"{f.address} ({f.driver})" for f in members if f.address in blockers
    )
    return False, blockers, f"not viable: endpoints on host drivers: {named}"


def scan_groups(h: HostRoot, functions: list[PciFunction]) -> list[IommuGroup]:
    """Every IOMMU group, with members taken from /sys/kernel/iommu_groups/N/devices."""
    by_addr = {f.address: f for f in functions}
    base = h.sys + "/kernel/iommu_groups"
    out = []
    for name in h.listdir(base):
        if not name.isdigit():
            continue
        pci, other = [], []
        for member in h.listdir(f"{base}/{name}/devices"):
            try:
                parse_address(member)
                pci.append(member)
            except ValueError:
                other.append(member)
        pci.sort(key=parse_address)
        members = [by_addr[a] for a in pci if a in by_addr]
        viable, blockers, reason = group_verdict(members)
        out.append(
            IommuGroup(
                number=int(name),
                devices=tuple(pci),
                other_members=tuple(other),
                type=h.read(f"{base}/{name}/type"),
                viable=viable,
                blockers=blockers,
                reason=reason,
            )
        )
    out.sort(key=lambda g: g.number)
    return out
