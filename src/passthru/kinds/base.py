"""One module per device kind (gpu, vgpu, nic_vf, nvme, usb, serial, custom) behind one small interface.

A kind knows what is special about its devices; the generic machinery (discovery, takeover, inventory, vm/) does the
rest. Hooks have no-op defaults, so a kind implements only what it needs:

    checks(h, device)            doctor findings for one device of this kind (read-only)
    before_assign(h, paths, vm, identity, options) -> dict | None
                                 host configuration a VM's assignment needs (a VF's MAC/VLAN, a vGPU type); returns
                                 the prior state it changed (recorded with the assignment) or None
    after_release(h, paths, vm, identity, prior)
                                 put back what before_assign changed, from that record
    abandon(h, paths, vm, identity)
                                 an assignment died half-way (kill -9 before its record was written): put back
                                 whatever the kind's own journal says it changed for ``vm``
    hotpluggable                 whether QMP hot plug applies
"""

from __future__ import annotations

from typing import ClassVar

from ..config import Paths
from ..discovery import Device
from ..findings import Finding
from ..host.root import HostRoot

__all__ = ["DeviceKind", "register", "kind_for", "load_all", "KINDS"]

KINDS: dict[str, "DeviceKind"] = {}


class DeviceKind:
    name: ClassVar[str] = "custom"
    hotpluggable: ClassVar[bool] = True

    def checks(self, h: HostRoot, device: Device) -> list[Finding]:
        return []

    def before_assign(self, h: HostRoot, paths: Paths, vm: str, identity: str, options: dict) -> dict | None:
        return None

    def after_release(self, h: HostRoot, paths: Paths, vm: str, identity: str, prior: dict | None) -> None:
        return None

    def abandon(self, h: HostRoot, paths: Paths, vm: str, identity: str) -> None:
        return None


def register(kind: "DeviceKind") -> "DeviceKind":
    KINDS[kind.name] = kind
    return kind


MODULES = ("gpu", "vgpu", "nic_vf", "nvme", "usb", "serial")


def load_all() -> dict[str, "DeviceKind"]:
    """Import every kind module (each registers itself); on first use only, so listings stay fast."""
    import importlib

    for m in MODULES:
        importlib.import_module(f"passthru.kinds.{m}")
    return KINDS


def kind_for(name: str) -> DeviceKind:
    """The kind module for a device kind name; custom models and unknown kinds get the plain PCI behaviour."""
    if name not in KINDS:
        load_all()
    return KINDS.get(name) or KINDS.setdefault("custom", DeviceKind())
