"""A VM that libvirt or Proxmox starts and stops: passthru's holdings follow it (the libvirt ``qemu`` hook and the
Proxmox hookscript are thin faces over these two operations; service/hooks.py installs them).

- :func:`vm_starting` — "this VM is starting with these host devices": one journaled ``assign`` of all of them
  (service/assign.py), so either every device is held by the VM or none is, and a device held by another VM or
  refused by the takeover's guards (the boot VGA, a NIC with an address, a mounted disk) refuses the start with one
  line. Devices the VM manager binds itself (``managed``: libvirt ``managed='yes'``, Proxmox ``hostpciN``) are
  recorded (takeover "none") and checked by the same guards, never bound here; the others go to vfio-pci, whole
  IOMMU group. A hook killed half-way is settled by ``passthru reconcile`` (the assign is undone).
- :func:`vm_stopped` — "this VM stopped": every holding of the VM is released (journaled), and the PCI devices
  passthru took over for it go back to their host drivers — not the managed ones (libvirt gives those back itself;
  Proxmox leaves them on vfio-pci), and not those bound with ``passthru bind --persist`` (meant to stay).

VM names: passthru's rule is passthru/names.py. A libvirt domain whose name fits it keeps its name; any other
(a space, a non-ASCII letter) becomes ``libvirt-<uuid>``. A Proxmox VM is ``pve-<vmid>``. The domain's UUID (or
Proxmox's ``smbios1: uuid=``) is recorded with the assignment (``vm_uuid``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .session import Session
from ..errors import NotFoundError, UsageError
from ..host.pci import normalize_address
from ..host.usb import scan_usb
from ..identity import pci_address
from .assign import AssignResult, assign, open_store
from .release import release
from ..names import check_uuid, is_vm_name
from ..vfio import Holdings
from ..vm.domain import HostDevice, parse_domain

__all__ = ["vm_starting", "vm_stopped", "libvirt_vm_name", "proxmox_vm_name", "libvirt_hook", "HookResult"]


@dataclass(slots=True)
class HookResult:
    vm: str | None = None
    action: str = "none"  # "assigned" | "released" | "none"
    devices: list[str] = field(default_factory=list)
    bound: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def libvirt_vm_name(name: str, uuid: str | None) -> str:
    """passthru's name for a libvirt domain: its own when it fits names.py, else ``libvirt-<uuid>``."""
    if is_vm_name(name):
        return name
    if not uuid:
        raise UsageError(f"libvirt domain {name!r}: the name does not fit passthru's VM names and the XML has no "
                         "<uuid> to name it by")
    return f"libvirt-{check_uuid(uuid)}"


def proxmox_vm_name(vmid: str) -> str:
    if not vmid.isascii() or not vmid.isdigit() or len(vmid) > 9:
        raise UsageError(f"Proxmox VM id {vmid!r}: a number like 100")
    return f"pve-{int(vmid)}"


def _usb_by_devnum(s: Session, spec: str) -> str:
    """``usb-dev:BUS:DEVNUM`` (libvirt's host address) -> ``usb:BUS-PORT`` of the device plugged there now."""
    _, bus, dev = spec.split(":")
    for d in scan_usb(s.host):
        if d.busnum == int(bus) and d.devnum == int(dev) and not d.is_root_hub:
            return f"usb:{d.port_path}"
    raise NotFoundError(f"USB bus {bus} device {dev}: nothing is plugged there (device numbers change on replug; "
                        "name the device by vendor and product in the domain)")


def vm_starting(s: Session, vm: str, devices: list[HostDevice], *, vm_uuid: str | None = None,
                kernel: object | None = None) -> AssignResult | None:
    """See the module docstring. None when the VM names no host device."""
    if not devices:
        return None
    specs: list[str] = []
    keep: list[str] = []
    for dev in devices:
        spec = _usb_by_devnum(s, dev.spec) if dev.spec.startswith("usb-dev:") else dev.spec
        if spec not in specs:
            specs.append(spec)
        if dev.managed and not spec.startswith(("usb:", "mdev:")):
            keep.append(normalize_address(spec))
    return assign(s, vm, specs, vm_uuid=vm_uuid, keep_driver=keep, kernel=kernel)


def vm_stopped(s: Session, vm: str, *, kernel: object | None = None) -> list:
    """See the module docstring. [] when the VM holds nothing."""
    held = open_store(s).assignments(vm)
    if not held:
        return []
    holdings = {h.address: h for h in Holdings(s.paths).holdings()}
    back = [addr for a in held if (addr := pci_address(a.device)) and a.takeover == "vfio"
            and addr in holdings and not holdings[addr].persist]
    return release(s, vm, None, restore=back or False, kernel=kernel)


def libvirt_hook(s: Session, argv: list[str], xml: str, *, kernel: object | None = None) -> HookResult:
    """libvirt's ``/etc/libvirt/hooks/qemu DOMAIN OPERATION SUBOPERATION EXTRA`` with the domain XML: ``prepare``
    takes the domain's host devices over (before libvirt prepares them), ``release`` (after libvirt let go of
    everything, also after a failed start) gives them back. Other operations do nothing (``reconnect`` must not
    fail: libvirt would kill the running QEMU)."""
    if len(argv) < 2:
        raise UsageError("libvirt runs the hook as: qemu DOMAIN OPERATION SUB-OPERATION EXTRA")
    op = argv[1]
    if op not in ("prepare", "release"):
        return HookResult()
    dom = parse_domain(xml)
    vm = libvirt_vm_name(dom.name or argv[0], dom.uuid)
    if op == "release":
        return HookResult(vm, "released", [a.device for a in vm_stopped(s, vm, kernel=kernel)])
    res = vm_starting(s, vm, dom.host_devices, vm_uuid=dom.uuid, kernel=kernel)
    if res is None:
        return HookResult(vm)
    return HookResult(vm, "assigned", [a.device for a in res.assignments], res.bound)

