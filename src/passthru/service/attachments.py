"""A VM's assignments -> :class:`Attachment` objects (the neutral form vm/qemu.py, vm/libvirt.py and vm/qmp.py render).
Built here, from the inventory's rows and the host's facts (``host/bars.py`` for BAR sizes), so vm/ reads no sysfs.

PCI functions of one physical slot (a GPU and its HDMI audio) become one attachment, host function order kept, so
the guest sees them as functions of one device. Options the operator gives per device: ``x_vga`` (for GPUs that are
the VM's primary display), ``romfile`` (checked for the 0x55AA signature), ``rombar`` off. Notes carry what the
operator must add to the VM itself: a hidden hypervisor for NVIDIA consumer GPUs (room for large 64-bit BARs is
worked out by the renderers from ``largest_bar``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError
from ..host.bars import largest_bar
from ..host.pci import parse_address
from ..host.root import HostRoot
from ..identity import parse as parse_identity
from ..identity import pci_address
from ..vm.attachment import Attachment, check_rom, qdev_id

__all__ = ["AttachOptions", "attachments_for"]

NVIDIA = 0x10DE


@dataclass(frozen=True, slots=True)
class AttachOptions:
    x_vga: frozenset[str] = frozenset()  # PCI addresses (function 0 of a slot) to give x-vga=on
    romfile: dict[str, str] = field(default_factory=dict)  # address -> ROM file
    rombar_off: frozenset[str] = frozenset()
    serial_bus: str = "pci"  # "pci" | "isa"


def _pci_attachments(h: HostRoot, addrs: list[str], kinds: dict[str, str], opts: AttachOptions) -> list[Attachment]:
    slots: dict[str, list[str]] = {}
    for a in sorted(addrs, key=parse_address):
        slots.setdefault(parse_address(a).slot_name, []).append(a)
    out = []
    for fns in slots.values():
        first = fns[0]
        kind = kinds.get(first, "custom")
        notes = []
        vendor = h.read_hex(f"{h.sys}/bus/pci/devices/{first}/vendor")
        cls = h.read_hex(f"{h.sys}/bus/pci/devices/{first}/class") or 0
        if vendor == NVIDIA and cls >> 8 == 0x0300:
            notes.append(f"{first}: NVIDIA GeForce drivers before R465 refuse to run in a VM they detect: hide "
                         "the hypervisor with --hide-kvm (QEMU kvm=off on the -cpu; libvirt <features><kvm><hidden "
                         "state='on'/></kvm></features>; Proxmox cpu: hidden=1)")
        bar = largest_bar(h, first)  # the renderers say when it needs a larger 64-bit MMIO window
        rom = opts.romfile.get(first)
        if rom is not None:
            try:
                check_rom(rom)
            except ValueError as e:
                raise UsageError(str(e)) from None
        out.append(Attachment("pci", qdev_id("pt", first), kind, functions=tuple(fns), x_vga=first in opts.x_vga,
                              romfile=rom, rombar=False if first in opts.rombar_off else None,
                              largest_bar=bar, notes=tuple(notes)))
    return out


def attachments_for(h: HostRoot, devices: list[dict], opts: AttachOptions | None = None) -> list[Attachment]:
    """Attachments for inventory device rows (``Store.devices()`` dicts of one VM's assignments)."""
    opts = opts or AttachOptions()
    kinds = {addr: d["kind"] for d in devices if (addr := pci_address(d["identity"]))}
    pci = list(kinds)
    unknown = (set(opts.x_vga) | set(opts.romfile) | set(opts.rombar_off)) - set(pci)
    if unknown:
        raise UsageError(f"{sorted(unknown)[0]}: options name a device the VM does not hold")
    out = _pci_attachments(h, pci, kinds, opts)
    for d in devices:
        ident = parse_identity(d["identity"])
        if ident.bus == "mdev":
            out.append(Attachment("mdev", qdev_id("vgpu", ident.key[:8]), "vgpu", mdev_uuid=ident.key))
        elif ident.bus == "usb":
            port_path = ident.key
            bus, _, port = port_path.partition("-")
            out.append(Attachment("usb", qdev_id("usb", port_path), d["kind"], usb_bus=int(bus), usb_port=port,
                                  usb_vendor_id=d.get("vendor_id"), usb_product_id=d.get("device_id")))
        elif ident.bus == "serial":
            path = ident.key
            out.append(Attachment("serial", qdev_id("ser", path.rsplit("/", 1)[-1]), "serial", serial_path=path,
                                  serial_bus=opts.serial_bus))
    return out
