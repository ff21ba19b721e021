"""What a VM gets: neutral descriptions of assigned devices, rendered by ``vm/qemu.py`` (argv), ``vm/libvirt.py``
(domain XML) and ``vm/qmp.py`` (hot plug). Device kinds and the inventory produce these; only ``vm/`` speaks QEMU.

One :class:`Attachment` is one guest-visible device slot:

- ``pci``: host PCI functions that travel together (a GPU and its HDMI audio), host function order kept; in the
  guest they become functions 0..n-1 of one slot (``multifunction=on`` when n > 1). Options: ``x_vga`` (primary
  display), ``romfile`` (a ROM image, checked for the 0x55AA signature), ``rombar`` (False hides the ROM BAR).
- ``mdev``: a mediated device (vGPU) by UUID (QEMU ``vfio-pci,sysfsdev=``; libvirt ``<hostdev type='mdev'>``).
- ``usb``: a host USB device by bus and port path (``usb-host,hostbus=,hostport=``), vid:pid kept for libvirt.
- ``serial``: a host serial port path (``-chardev serial,path=`` + ``pci-serial`` / ``isa-serial``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Attachment", "qdev_id", "check_rom", "device_props", "chardev_props", "function_id"]

KINDS = ("pci", "mdev", "usb", "serial")


def qdev_id(prefix: str, ident: str) -> str:
    """A QEMU/libvirt-safe id from a device identity: ("pt", "0000:86:00.0") -> "pt-0000-86-00-0"."""
    return f"{prefix}-" + re.sub(r"[^A-Za-z0-9]+", "-", ident).strip("-")


@dataclass(frozen=True, slots=True)
class Attachment:
    kind: str  # one of KINDS
    id: str  # the qdev id (QEMU -device id=..., libvirt alias "ua-<id>")
    device_kind: str = "custom"  # passthru's kind: gpu, nic, nvme, vgpu, usb, serial, custom ...
    functions: tuple[str, ...] = ()  # pci: host addresses, guest function i = functions[i]
    x_vga: bool = False
    romfile: str | None = None
    rombar: bool | None = None
    mdev_uuid: str | None = None
    usb_bus: int | None = None
    usb_port: str | None = None  # "1.3"
    usb_vendor_id: int | None = None
    usb_product_id: int | None = None
    serial_path: str | None = None  # /dev/ttyS1, /dev/ttyUSB0
    serial_bus: str = "pci"  # "pci" (pci-serial) | "isa" (isa-serial)
    numa_node: int | None = None
    largest_bar: int | None = None  # bytes of the largest 64-bit memory BAR (large-BAR GPUs need MMIO room)
    notes: tuple[str, ...] = field(default=())  # operator hints: hidden hypervisor, large BAR / MMIO window

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"attachment kind {self.kind!r}: expected one of {', '.join(KINDS)}")


def check_rom(path: str) -> None:
    """A ROM file QEMU can use: readable, starting with the PCI expansion ROM signature 0x55 0xAA. ValueError
    naming the problem otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as e:
        raise ValueError(f"ROM file {path}: {e.strerror}; give a readable file (e.g. dumped from the card's rom "
                         "attribute)") from None
    if head != b"\x55\xaa":
        raise ValueError(f"ROM file {path} does not start with the PCI ROM signature 55 AA (got "
                         f"{head.hex(' ') or 'an empty file'}); it is not a PCI option ROM")


def function_id(att: Attachment, i: int) -> str:
    """The qdev id of guest function ``i`` of a pci attachment (function 0 carries the attachment's id)."""
    return att.id if i == 0 else f"{att.id}-f{i}"


def chardev_props(att: Attachment) -> dict | None:
    """The host chardev a serial attachment needs: argv ``-chardev serial,id=..,path=..``; QMP ``chardev-add``
    takes ``{"id": .., "backend": {"type": "serial", "data": {"device": path}}}``."""
    if att.kind != "serial":
        return None
    return {"id": f"chr-{att.id}", "path": att.serial_path}


def device_props(att: Attachment, bus: str | None, slot: int = 0) -> list[dict]:
    """The QEMU ``-device`` / QMP ``device_add`` properties of ``att``, one dict per guest device, in the order a
    cold start lists them. ``bus``: the pcie-root-port id (q35), "pci.0" (pc; then ``slot`` is the slot number), an
    xHCI bus for usb ("xhci.0"), None for isa-serial. Values are strings or ints as QEMU's QMP accepts them."""
    on_port = bus is not None and bus != "pci.0"
    if att.kind == "pci":
        out = []
        multi = len(att.functions) > 1
        for i, host in enumerate(att.functions):
            d: dict = {"driver": "vfio-pci", "host": host, "id": function_id(att, i)}
            if bus:
                d["bus"] = bus
                d["addr"] = f"0x0.{i}" if on_port else f"{slot:#x}.{i}"
            if multi and i == 0:
                d["multifunction"] = "on"
            if i == 0 and att.x_vga:
                d["x-vga"] = "on"
            if i == 0 and att.romfile:
                d["romfile"] = att.romfile
            if i == 0 and att.rombar is False:
                d["rombar"] = 0
            out.append(d)
        return out
    if att.kind == "mdev":
        d = {"driver": "vfio-pci", "sysfsdev": f"/sys/bus/mdev/devices/{att.mdev_uuid}", "id": att.id}
        if bus:
            d["bus"] = bus
            if not on_port:
                d["addr"] = f"{slot:#x}.0"
        return [d]
    if att.kind == "usb":
        d = {"driver": "usb-host", "id": att.id, "hostbus": att.usb_bus, "hostport": att.usb_port}
        if bus:
            d["bus"] = bus
        return [d]
    chardev = f"chr-{att.id}"
    if att.serial_bus == "isa":
        return [{"driver": "isa-serial", "id": att.id, "chardev": chardev}]
    d = {"driver": "pci-serial", "id": att.id, "chardev": chardev}
    if bus:
        d["bus"] = bus
        if not on_port:
            d["addr"] = f"{slot:#x}.0"
    return [d]
