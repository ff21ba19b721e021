"""Discovery -> inventory records: which of the host's devices a VM may be given, under which stable identity.

Offered: PCI endpoints (not bridges), mediated device instances, USB devices that are not hubs (root hubs never;
hubs only by port path, when asked), serial ports that are neither ghosts nor a console. Identities are stable
across reboots and re-plugging: the PCI address, the USB port path, the tty path, the mdev UUID.
"""

from __future__ import annotations

from ..discovery import Inventory
from .store import DeviceRecord

__all__ = ["records_from"]


def records_from(inv: Inventory) -> list[DeviceRecord]:
    out: list[DeviceRecord] = []
    for d in inv.devices:
        if d.bus == "pci":
            fn = d.fact
            if d.kind == "bridge" or fn.is_bridge:
                continue
            numa = fn.numa_node if fn.numa_node >= 0 else None
            # a GPU's audio function travels with its GPU: never picked on its own for "any gpu"
            kind = f"{d.kind}-companion" if d.role == "companion" else d.model or d.kind
            out.append(DeviceRecord(
                identity=f"pci:{fn.address}", bus="pci", kind=kind, vendor_id=fn.vendor_id,
                device_id=fn.device_id, numa_node=numa, iommu_group=fn.iommu_group,
                parent=f"pci:{fn.physfn}" if fn.physfn else None))
        elif d.bus == "usb":
            u = d.fact
            if u.is_root_hub:
                continue
            # a hub is only given when named by its port path: kind "usb-hub" keeps it out of "any usb device"
            out.append(DeviceRecord(identity=f"usb:{u.port_path}", bus="usb", kind="usb-hub" if u.is_hub else "usb",
                                    vendor_id=u.vendor_id,
                                    device_id=u.product_id, serial=u.serial, name=u.product))
        elif d.bus == "serial":
            s = d.fact
            if s.ghost or s.console:
                continue
            out.append(DeviceRecord(identity=f"serial:{s.device}", bus="serial", kind="serial", name=s.name))
    # mediated devices on every parent bus (a GPU's vGPUs, and virtual parents such as mtty)
    from ..host.mdev import MDEV, scan_parents

    for p in scan_parents(inv.root):
        if p.mode != MDEV:
            continue
        for i in p.instances:
            out.append(DeviceRecord(identity=i.identity, bus="mdev", kind="vgpu", numa_node=p.numa_node,
                                    iommu_group=i.iommu_group, parent=f"pci:{p.name}" if p.bus == "pci" else None,
                                    name=i.type_id))
    return out
