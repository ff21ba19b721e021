"""Kernel modules on disk, read-only: which modules a kernel has built in (``modules.builtin``), which modules
would claim a PCI device (its modalias against ``modules.alias``, the way udev picks drivers), and which module
a bound driver comes from (``/sys/bus/pci/drivers/<driver>/module``; no link means the driver is built in).

Module names are normalised with underscores (``vfio-pci`` -> ``vfio_pci``), as modprobe treats them alike.
Missing files (a capture, a fixture, a kernel whose modules are not installed) give empty answers, not errors.
"""

from __future__ import annotations

import fnmatch
import os

from .pci import PciFunction
from .root import HostRoot

__all__ = ["module_name", "modules_dir", "builtin_modules", "pci_modalias", "alias_modules", "driver_module"]


def module_name(name: str) -> str:
    """``vfio-pci`` / ``vfio_pci.ko.zst`` -> ``vfio_pci``."""
    base = os.path.basename(name)
    for ext in (".zst", ".xz", ".gz"):
        base = base.removesuffix(ext)
    return base.removesuffix(".ko").replace("-", "_")


def modules_dir(h: HostRoot, release: str | None) -> str | None:
    """The host path of the release's module directory, or None when it is not installed."""
    if not release:
        return None
    return next((d for d in (f"/lib/modules/{release}", f"/usr/lib/modules/{release}") if h.isdir(h.path(d))), None)


def builtin_modules(h: HostRoot, release: str | None) -> set[str] | None:
    """Modules compiled into the kernel (``modules.builtin``), None when that list is not there to read."""
    d = modules_dir(h, release)
    text = h.read(h.path(f"{d}/modules.builtin")) if d else None
    if text is None:
        return None
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def pci_modalias(h: HostRoot, fn: PciFunction) -> str:
    """The device's modalias (``pci:v000010DEd00001B06sv...``): sysfs's, else built from the IDs and class."""
    text = h.read(f"{h.sys}/bus/pci/devices/{fn.address}/modalias")
    if text and text.startswith("pci:"):
        return text.strip()
    sv = fn.subsystem_vendor_id if fn.subsystem_vendor_id is not None else 0xFFFFFFFF
    sd = fn.subsystem_device_id if fn.subsystem_device_id is not None else 0xFFFFFFFF
    c = fn.class_code
    return (f"pci:v{fn.vendor_id:08X}d{fn.device_id:08X}sv{sv:08X}sd{sd:08X}"
            f"bc{c >> 16:02X}sc{(c >> 8) & 0xFF:02X}i{c & 0xFF:02X}")


class _Aliases:
    """``modules.alias`` of one kernel, PCI lines only, read once."""

    def __init__(self, h: HostRoot, release: str | None) -> None:
        d = modules_dir(h, release)
        text = h.read(h.path(f"{d}/modules.alias")) if d else None
        self.found = text is not None
        self.pci = []
        for line in (text or "").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "alias" and parts[1].startswith("pci:"):
                self.pci.append((parts[1], module_name(parts[2])))

    def match(self, modalias: str) -> list[str]:
        return sorted({m for pat, m in self.pci if fnmatch.fnmatchcase(modalias, pat)})


def alias_modules(h: HostRoot, release: str | None, modaliases: list[str]) -> dict[str, list[str]] | None:
    """modalias -> the modules whose aliases match it (what udev would load for the device); None when the
    kernel's modules.alias cannot be read."""
    aliases = _Aliases(h, release)
    if not aliases.found:
        return None
    return {m: aliases.match(m) for m in modaliases}


def driver_module(h: HostRoot, driver: str, bus: str = "pci") -> tuple[str | None, bool]:
    """(module, built in) of a registered driver: ("xhci_pci", False) for the driver ``xhci_hcd``; (None, True)
    for a driver without a module link (built into the kernel); (None, False) when the driver is not there."""
    d = f"{h.sys}/bus/{bus}/drivers/{driver}"
    if not h.isdir(d):
        return None, False
    target = h.readlink(d + "/module")
    if target is None:
        return None, True
    return module_name(target), False
