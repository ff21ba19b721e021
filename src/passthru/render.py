"""Turn discovery facts into the stable JSON documents of ``--json`` (schema documented in docs/json.md).

Every document is an object with ``"schema": 1``. IDs are lowercase hex strings without ``0x`` ("10de", class
"030000"), as pci.ids and ``lspci -n`` print them; unknown values are ``null``; numa_node keeps the kernel's -1.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs start-up time on every CLI call
    from typing import Any

    from .host.isolation import Explanation, Isolation
    from .host.pcie import PcieFacts


from .discovery import Device, Inventory
from .host.ids import IdsDb, pci_ids, usb_ids
from .host.iommu import IommuGroup, IommuState
from .host.pci import PciFunction
from .host.root import HostRoot
from .host.serial import SerialPort
from .host.usb import UsbDevice

__all__ = ["SCHEMA", "iommu_json", "device_json", "pci_json", "usb_json", "serial_json", "group_json",
           "devices_document", "Namer"]

SCHEMA = 1


def _h4(v: int | None) -> str | None:
    return None if v is None else f"{v:04x}"


class Namer:
    """Human names for IDs, from hwdata when present."""

    def __init__(self, h: HostRoot | None = None) -> None:
        self._h = h
        self._pci: IdsDb | None = None
        self._usb: IdsDb | None = None
        self._pci_names: dict[tuple, tuple] = {}

    def pci_names(self, fn: PciFunction) -> tuple[str | None, str | None, str | None, str | None]:
        """(vendor, device, subsystem, class) names; hosts repeat a few IDs thousands of times, so cached."""
        key = (fn.vendor_id, fn.device_id, fn.subsystem_vendor_id, fn.subsystem_device_id, fn.class_code)
        names = self._pci_names.get(key)
        if names is None:
            db = self.pci
            sub = None
            if fn.subsystem_vendor_id is not None and fn.subsystem_device_id is not None:
                sub = db.subsystem(fn.vendor_id, fn.device_id, fn.subsystem_vendor_id, fn.subsystem_device_id)
            names = self._pci_names[key] = (db.vendor(fn.vendor_id), db.device(fn.vendor_id, fn.device_id), sub,
                                            db.pci_class(fn.class_code))
        return names

    @property
    def pci(self) -> IdsDb:
        if self._pci is None:
            self._pci = pci_ids(self._h)
        return self._pci

    @property
    def usb(self) -> IdsDb:
        if self._usb is None:
            self._usb = usb_ids(self._h)
        return self._usb


def iommu_json(state: IommuState) -> dict[str, Any]:
    return {
        "enabled": state.enabled,
        "vendor": state.vendor,
        "units": list(state.units),
        "groups": state.group_count,
        "message": state.message,
    }


def pci_json(fn: PciFunction, names: Namer) -> dict[str, Any]:
    vendor_name, device_name, sub_name, class_name = names.pci_names(fn)
    return {
        "address": fn.address,
        "vendor": _h4(fn.vendor_id),
        "device": _h4(fn.device_id),
        "subsystem_vendor": _h4(fn.subsystem_vendor_id),
        "subsystem_device": _h4(fn.subsystem_device_id),
        "class": f"{fn.class_code:06x}",
        "revision": None if fn.revision is None else f"{fn.revision:02x}",
        "vendor_name": vendor_name,
        "device_name": device_name,
        "subsystem_name": sub_name,
        "class_name": class_name,
        "name": device_name or f"Device {fn.vendor_id:04x}:{fn.device_id:04x}",
        "driver": fn.driver,
        "driver_override": fn.driver_override,
        "iommu_group": fn.iommu_group,
        "numa_node": fn.numa_node,
        "boot_vga": fn.boot_vga,
        "reset_methods": list(fn.reset_methods),
        "link": {
            "current_speed": fn.current_link_speed,
            "current_width": fn.current_link_width,
            "max_speed": fn.max_link_speed,
            "max_width": fn.max_link_width,
        },
        "parent": fn.parent,
        "is_bridge": fn.is_bridge,
        "sriov": None if fn.sriov_totalvfs is None else {"totalvfs": fn.sriov_totalvfs, "numvfs": fn.sriov_numvfs},
        "physfn": fn.physfn,
        "vf_index": fn.vf_index,
        "vfs": list(fn.vfs),
        "netdevs": list(fn.netdevs),
        "mdev_types": [
            {"id": t.id, "name": t.name, "description": t.description,
             "available_instances": t.available_instances, "device_api": t.device_api}
            for t in fn.mdev_types
        ],
        "mdevs": [{"uuid": m.uuid, "type": m.type_id} for m in fn.mdevs],
        "nvidia_vgpu": None if fn.nvidia_creatable_vgpu_types is None else {
            "creatable_types": list(fn.nvidia_creatable_vgpu_types),
            "current_type": fn.nvidia_current_vgpu_type,
        },
    }


def usb_json(u: UsbDevice, names: Namer) -> dict[str, Any]:
    db = names.usb
    vendor_name = u.manufacturer or db.vendor(u.vendor_id)
    product_name = u.product or db.device(u.vendor_id, u.product_id)
    return {
        "port_path": u.port_path,
        "busnum": u.busnum,
        "port": u.port,
        "devnum": u.devnum,
        "vendor": _h4(u.vendor_id),
        "product": _h4(u.product_id),
        "bcd_device": _h4(u.bcd_device),
        "vendor_name": vendor_name,
        "product_name": product_name,
        "name": product_name or f"USB device {u.ids}",
        "serial": u.serial,
        "class": None if u.device_class is None else f"{u.device_class:02x}",
        "class_name": None if u.device_class in (None, 0) else db.usb_class(u.device_class),
        "speed_mbps": u.speed_mbps,
        "is_hub": u.is_hub,
        "is_root_hub": u.is_root_hub,
        "maxchild": u.maxchild,
        "removable": u.removable,
        "driver": u.driver,
        "controller": u.controller,
        "dev_path": None if u.devnum is None else f"/dev/bus/usb/{u.busnum:03d}/{u.devnum:03d}",
        "interfaces": [
            {"name": i.name, "number": i.number,
             "class": None if i.interface_class is None else f"{i.interface_class:02x}", "driver": i.driver}
            for i in u.interfaces
        ],
    }


def serial_json(p: SerialPort, names: Namer | None = None) -> dict[str, Any]:
    return {
        "name": p.name,
        "device": p.device,
        "type": p.kind,
        "ghost": p.ghost,
        "console": p.console,
        "backing": None if p.backing_bus is None else {"bus": p.backing_bus, "address": p.backing_id},
        "driver": p.driver,
        "uart_type": p.uart_type,
        "io_port": p.io_port,
        "irq": p.irq,
        "usb_vendor": _h4(p.usb_vendor_id),
        "usb_product": _h4(p.usb_product_id),
        "usb_serial": p.usb_serial,
    }


def device_json(dev: Device, names: Namer) -> dict[str, Any]:
    head: dict[str, Any] = {"bus": dev.bus, "id": dev.id, "kind": dev.kind, "role": dev.role, "model": dev.model}
    if dev.bus == "pci":
        assert isinstance(dev.fact, PciFunction)
        head.update(pci_json(dev.fact, names))
        head["companions"] = list(dev.companions)
        head["companion_of"] = dev.companion_of
    elif dev.bus == "usb":
        assert isinstance(dev.fact, UsbDevice)
        head.update(usb_json(dev.fact, names))
    else:
        assert isinstance(dev.fact, SerialPort)
        head.update(serial_json(dev.fact))
    return head


def acs_json(p: PcieFacts) -> dict[str, Any]:
    """One function on a group's path: its kind, multifunction bit and ACS registers (lspci's bit names)."""
    from .host.isolation import acs_verdict

    ok, why = acs_verdict(p)
    acs = None if p.acs is None else {"offset": p.acs.offset, "version": p.acs.version, "cap": f"{p.acs.cap:04x}",
                                      "ctrl": f"{p.acs.ctrl:04x}", "cap_bits": p.acs.bits(p.acs.cap),
                                      "ctrl_bits": p.acs.bits(p.acs.ctrl), "missing": list(p.acs.missing)}
    return {"address": p.address, "kind": p.kind, "multifunction": p.multifunction, "config_bytes": p.readable,
            "acs": acs, "isolates": ok, "verdict": why}


def explanation_json(why: tuple[Explanation, Isolation | None]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(explanation, isolation) objects of a group (docs/topology.md)."""
    e, iso = why
    expl = {"isolated": e.isolated, "text": e.text, "note": e.note, "root_buses": list(e.root_buses),
            "causes": [{"address": c.address, "kind": c.kind, "reason": c.reason, "missing": list(c.missing),
                        "members": list(c.members), "text": c.text} for c in e.causes],
            "ports": [acs_json(p) for p in e.ports]}
    if iso is None:
        return expl, None
    return expl, {"slots": [{"root_port": s.root_port, "numa_node": s.numa_node, "group": s.group, "empty": s.empty,
                             "holds": list(s.holds)} for s in iso.slots],
                  "acs_override": {"kernel_argument": iso.override, "last_resort": True, "warning": iso.warning},
                  "text": iso.text}


def group_json(g: IommuGroup, inv: Inventory, names: Namer,
               why: tuple[Explanation, Isolation | None] | None = None) -> dict[str, Any]:
    members = []
    for addr in g.devices:
        dev = inv.by_id(addr)
        fn = inv.pci_function(addr)
        members.append({
            "address": addr,
            "kind": dev.kind if dev else None,
            "vendor": _h4(fn.vendor_id) if fn else None,
            "device": _h4(fn.device_id) if fn else None,
            "class": f"{fn.class_code:06x}" if fn else None,
            "name": (names.pci.device(fn.vendor_id, fn.device_id) if fn else None),
            "driver": fn.driver if fn else None,
            "is_bridge": fn.is_bridge if fn else None,
        })
    return {
        "number": g.number,
        "type": g.type,
        "viable": g.viable,
        "reason": g.reason,
        "blockers": list(g.blockers),
        "devices": members,
        "other_members": list(g.other_members),
        **dict(zip(("explanation", "isolation"), explanation_json(why) if why else (None, None))),
    }


def devices_document(inv: Inventory, devices: list[Device], names: Namer) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "root": inv.root.base,
        "iommu": iommu_json(inv.iommu),
        "devices": [device_json(d, names) for d in devices],
    }
