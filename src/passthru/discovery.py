"""Discovery: the host's passthrough-relevant devices, classified into kinds.

``discover()`` reads PCI functions, USB devices and serial ports through one HostRoot and classifies each:

- PCI by class code: gpu (0300/0302/0380), nic (02xx), nvme (0108), bridge (06xx), other; operator-defined custom
  models (vendor:device in models.toml) take precedence over the built-in kinds.
- A GPU's *companion functions* (its HDMI audio, the USB-C/UCSI functions of some cards) are the other non-bridge
  functions in its slot, plus audio functions of the same vendor in its IOMMU group. They carry role "companion"
  and travel with the GPU.
- Roles: gpu "display" / "companion" ("pf" / "vf" for SR-IOV GPUs); nic and nvme "pf" / "vf" / "plain".
- USB devices (root hubs excluded; hubs flagged) are kind usb; hardware serial ports are kind serial.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import DeviceModel
from .host.iommu import IommuState, read_iommu_state
from .host.pci import PciFunction, scan_pci
from .host.root import HostRoot
from .host.serial import SerialPort, scan_serial
from .host.usb import UsbDevice, scan_usb

__all__ = ["Device", "Inventory", "discover", "pci_kind", "GPU_CLASSES"]

GPU_CLASSES = frozenset({0x0300, 0x0302, 0x0380})
AUDIO_CLASS = 0x0403
NVME_CLASS = 0x0108


@dataclass(slots=True)
class Device:
    bus: str  # "pci", "usb", "serial"
    id: str  # PCI address, USB port path, /dev path
    kind: str
    role: str | None
    fact: PciFunction | UsbDevice | SerialPort
    model: str | None = None
    companions: list[str] = field(default_factory=list)
    companion_of: str | None = None


@dataclass(slots=True)
class Inventory:
    root: HostRoot
    iommu: IommuState
    pci: list[PciFunction]
    usb: list[UsbDevice]
    serial: list[SerialPort]
    devices: list[Device]

    def by_id(self, ident: str) -> Device | None:
        for d in self.devices:
            if d.id == ident:
                return d
        return None

    def pci_function(self, address: str) -> PciFunction | None:
        for f in self.pci:
            if f.address == address:
                return f
        return None

    def upstream(self, address: str) -> list[str]:
        """The bridges above the function at ``address``, nearest first, up to its root port (or root bus)."""
        chain: list[str] = []
        fn = self.pci_function(address)
        p = fn.parent if fn is not None else None
        while p is not None and p not in chain:
            chain.append(p)
            up = self.pci_function(p)
            p = up.parent if up is not None else None
        return chain

    def switch_of(self, address: str) -> str | None:
        """The PCIe switch the function sits behind: the upstream bridge just below its root port (None when it
        hangs off the root port or the root bus). Devices with one switch can reach each other peer-to-peer."""
        chain = self.upstream(address)
        return chain[-2] if len(chain) >= 2 else None

    def group_mates(self, address: str) -> list[PciFunction]:
        fn = self.pci_function(address)
        if fn is None or fn.iommu_group is None:
            return []
        return [f for f in self.pci if f.iommu_group == fn.iommu_group and f.address != address]


def pci_kind(fn: PciFunction) -> str:
    cp = fn.class_prefix
    if cp in GPU_CLASSES or fn.base_class == 0x03:
        return "gpu"
    if fn.base_class == 0x02:
        return "nic"
    if cp == NVME_CLASS:
        return "nvme"
    if fn.base_class == 0x06 or fn.is_bridge:
        return "bridge"
    return "other"


def _sriov_role(fn: PciFunction) -> str:
    if fn.physfn:
        return "vf"
    if fn.sriov_totalvfs:
        return "pf"
    return "plain"


def _classify_pci(functions: list[PciFunction], models: list[DeviceModel]) -> list[Device]:
    model_map = {(m.vendor_id, m.device_id): m for m in models}
    devices: list[Device] = []
    by_addr: dict[str, Device] = {}
    slots: dict[str, list[PciFunction]] = {}
    for fn in functions:
        slots.setdefault(fn.address.rsplit(".", 1)[0], []).append(fn)
        model = model_map.get((fn.vendor_id, fn.device_id))
        kind = model.kind if model else pci_kind(fn)
        role = None
        if kind == "gpu":
            role = _sriov_role(fn) if fn.physfn or fn.sriov_totalvfs else "display"
        elif kind in ("nic", "nvme") or (fn.physfn or fn.sriov_totalvfs):
            role = _sriov_role(fn)
        dev = Device(bus="pci", id=fn.address, kind=kind, role=role, fact=fn, model=model.name if model else None)
        devices.append(dev)
        by_addr[fn.address] = dev

    groups: dict[int, list[PciFunction]] = {}
    for fn in functions:
        if fn.iommu_group is not None:
            groups.setdefault(fn.iommu_group, []).append(fn)

    for dev in devices:
        fn = dev.fact
        assert isinstance(fn, PciFunction)
        if dev.kind != "gpu" or dev.model or dev.companion_of or fn.class_prefix == AUDIO_CLASS or fn.is_vf:
            continue
        mates = [f for f in slots[fn.address.rsplit(".", 1)[0]] if f.address != fn.address]
        if fn.iommu_group is not None:
            mates += [
                f for f in groups[fn.iommu_group]
                if f.class_prefix == AUDIO_CLASS and f.vendor_id == fn.vendor_id and f not in mates
                and f.address != fn.address
            ]
        for mate in mates:
            mdev = by_addr[mate.address]
            if mate.is_bridge or mdev.kind == "gpu" or mdev.model or mdev.companion_of:
                continue
            dev.companions.append(mate.address)
            mdev.companion_of = fn.address
            mdev.kind = "gpu"
            mdev.role = "companion"
    return devices


def discover(h: HostRoot, models: list[DeviceModel] | None = None, *, usb: bool = True,
             serial: bool = True) -> Inventory:
    pci = scan_pci(h)
    usb_devs = scan_usb(h) if usb else []
    ports = scan_serial(h) if serial else []
    devices = _classify_pci(pci, models or [])
    for u in usb_devs:
        if not u.is_root_hub:
            devices.append(Device(bus="usb", id=u.port_path, kind="usb", role="hub" if u.is_hub else "device", fact=u))
    for p in ports:
        if not p.ghost:
            devices.append(Device(bus="serial", id=p.device, kind="serial", role=p.kind, fact=p))
    return Inventory(root=h, iommu=read_iommu_state(h), pci=pci, usb=usb_devs, serial=ports, devices=devices)
