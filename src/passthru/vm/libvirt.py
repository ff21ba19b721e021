"""Attachments rendered as libvirt domain XML (``passthru libvirt-xml VM``): a ``<devices>`` fragment, valid
against libvirt's domain schema (checked with ``virt-xml-validate`` in the tests). It is only valid alone: its
controller indexes and slots start at fixed numbers. Merged into an existing domain, :class:`Slots` is told what the
domain uses (vm/merge.py, ``--domain``) and :func:`render` picks free ones.

- pci: one ``<hostdev mode='subsystem' type='pci' managed='no'>`` per host function (passthru, not libvirt, binds
  the devices to vfio-pci). A multi-function set gets explicit guest addresses, functions 0..n-1 of one slot,
  ``multifunction='on'`` on function 0: on q35 in a ``pcie-root-port`` controller emitted here (``index`` from
  ``first_index``: pick one above the domain's own PCI controllers), on pc in slot ``first_slot`` up of bus 0.
  Single devices are left for libvirt to place. ``romfile`` / ``rombar`` become ``<rom file= bar='off'/>``.
- x-vga: a QEMU vfio-pci property with no ``<hostdev>`` equivalent in libvirt. libvirt (8.2.0 and later) can set
  it through its QEMU namespace, ``<qemu:override>``: :func:`qemu_override_xml` renders that element.
- mdev: ``<hostdev mode='subsystem' type='mdev' model='vfio-pci'>`` with ``<address uuid=>``.
- usb: ``<hostdev mode='subsystem' type='usb'>`` by ``<vendor>``/``<product>``. libvirt's host-side ``<address>``
  takes a bus and *device number* (which changes on every replug), not a port path, so passthru's bus/port is
  given in a comment only.
- serial: ``<serial type='dev'>`` with ``<target type='pci-serial'|'isa-serial'>``.
- hidden hypervisor (``hide_kvm``): ``<features>`` is not a device: the fragment carries a comment, the merged
  domain the element itself.

Every device carries ``<alias name='ua-<id>'/>`` (libvirt's user-alias prefix), so QEMU, libvirt and passthru
ids correspond: QEMU then sees id ``ua-gpu0`` where ``passthru qemu-args`` writes ``gpu0``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from passthru.errors import UsageError
from passthru.vm.attachment import Attachment, function_id
from passthru.vm.qemu import HOLE64_DEFAULT, PC_FIRST_SLOT, PC_LAST_SLOT, machine_family, mmio64_window, prepare

__all__ = ["libvirt_xml", "qemu_override_xml", "render", "Slots", "QEMU_NS", "HIDE_KVM_XML", "HIDE_KVM_NOTE", "alias"]

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
HIDE_KVM_XML = "<features><kvm><hidden state='on'/></kvm></features>"
HIDE_KVM_NOTE = (f"hidden hypervisor: the domain needs {HIDE_KVM_XML} (QEMU: kvm=off on its -cpu); "
                 "`passthru libvirt-xml VM --domain NAME --hide-kvm` merges it")
_BDF = re.compile(r"(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([01][0-9a-fA-F])\.([0-7])\Z")


def alias(qdev_id: str) -> str:
    """The libvirt user alias of a passthru/QEMU id."""
    return f"ua-{qdev_id}"


def _host_address(att: Attachment, bdf: str) -> dict[str, str]:
    m = _BDF.match(bdf)
    if not m:
        raise UsageError(f"attachment {att.id!r}: host function {bdf!r} is not a PCI address like 0000:01:00.0")
    dom, bus, slot, fn = m.groups()
    return {"domain": f"0x{(dom or '0000').lower()}", "bus": f"0x{bus.lower()}", "slot": f"0x{slot.lower()}",
            "function": f"0x{fn}"}


def _comment(parent: ET.Element, text: str) -> None:
    parent.append(ET.Comment(" " + text.replace("--", "- -") + " "))


def _pci(devices: ET.Element, att: Attachment, guest: tuple[int, int] | None, fragment: bool = True) -> None:
    """One hostdev per function; ``guest`` = (bus, slot) pins a multi-function set to one guest slot."""
    for i, host in enumerate(att.functions):
        hd = ET.SubElement(devices, "hostdev", mode="subsystem", type="pci", managed="no")
        ET.SubElement(ET.SubElement(hd, "source"), "address", _host_address(att, host))
        if i == 0 and (att.romfile or att.rombar is False):
            rom = ET.SubElement(hd, "rom")
            if att.rombar is False:
                rom.set("bar", "off")
            if att.romfile:
                rom.set("file", att.romfile)
        if guest is not None:
            addr = ET.SubElement(hd, "address", type="pci", domain="0x0000", bus=f"{guest[0]:#04x}",
                                 slot=f"{guest[1]:#04x}", function=f"{i:#x}")
            if i == 0:
                addr.set("multifunction", "on")
        ET.SubElement(hd, "alias", name=alias(function_id(att, i)))
    if att.x_vga and fragment:  # merged into a domain (vm/merge.py), the override itself is there
        _comment(devices, f"{att.id}: x-vga has no <hostdev> setting in libvirt; libvirt >= 8.2.0 sets it with a "
                          f"qemu:override element in the domain (xmlns:qemu='{QEMU_NS}'): <qemu:override>"
                          f"<qemu:device alias='{alias(att.id)}'><qemu:frontend><qemu:property name='x-vga' "
                          "type='bool' value='true'/></qemu:frontend></qemu:device></qemu:override>; "
                          "<video><model type='none'/></video> removes the emulated VGA")


def _usb(devices: ET.Element, att: Attachment) -> None:
    if att.usb_vendor_id is None or att.usb_product_id is None:
        raise UsageError(f"attachment {att.id!r}: libvirt selects a host USB device by vendor:product (or by bus "
                         "and device number, which changes on replug); this one has no vendor:product")
    hd = ET.SubElement(devices, "hostdev", mode="subsystem", type="usb")
    src = ET.SubElement(hd, "source")
    ET.SubElement(src, "vendor", id=f"{att.usb_vendor_id:#06x}")
    ET.SubElement(src, "product", id=f"{att.usb_product_id:#06x}")
    ET.SubElement(hd, "alias", name=alias(att.id))
    _comment(devices, f"{att.id}: host bus {att.usb_bus} port {att.usb_port}; libvirt matches "
                      f"{att.usb_vendor_id:04x}:{att.usb_product_id:04x} and refuses to start when two such devices "
                      "are plugged in")


def _serial(devices: ET.Element, att: Attachment) -> None:
    model = f"{att.serial_bus}-serial"
    ser = ET.SubElement(devices, "serial", type="dev")
    ET.SubElement(ser, "source", path=att.serial_path or "")
    ET.SubElement(ET.SubElement(ser, "target", type=model), "model", name=model)
    ET.SubElement(ser, "alias", name=alias(att.id))


def _mmio_comment(devices: ET.Element, atts: list[Attachment], family: str) -> None:
    window = mmio64_window(atts, family)
    if window:
        root = "pcie-root" if family == "q35" else "pci-root"
        _comment(devices, f"large 64-bit BARs: give the VM a {window >> 30} GiB 64-bit MMIO window (QEMU's {family} "
                          f"default is {HOLE64_DEFAULT[family] >> 30} GiB): <controller type='pci' index='0' "
                          f"model='{root}'><pcihole64 unit='GiB'>{window >> 30}</pcihole64></controller>; with OVMF "
                          "also <sysinfo type='fwcfg'><entry name='opt/ovmf/X-PciMmio64Mb'>"
                          f"{window >> 20}</entry></sysinfo>")


class Slots:
    """Where passthru puts what it adds: PCI controller indexes (a q35 ``pcie-root-port`` per multi-function set) and
    bus-0 slots (pc). ``taken_indexes`` / ``taken_slots`` are what a domain already uses (``--domain``): new
    indexes go above all of them (a controller's index only has to be unique), new pc slots from ``first_slot`` up
    to 0x1f, then, when the domain is known (``low``), from 0x03 (0x00-0x02: host bridge, PIIX3, video)."""

    def __init__(self, first_index: int = 1, first_slot: int = PC_FIRST_SLOT, *, taken_indexes: Iterable[int] = (),
                 taken_slots: Iterable[int] = (), low: bool = False) -> None:
        self._index = max([first_index - 1, *taken_indexes]) + 1
        taken = set(taken_slots)
        order = [*range(first_slot, PC_LAST_SLOT + 1), *(range(3, first_slot) if low else ())]
        self._slots = [n for n in order if n not in taken]
        self.first_slot = first_slot

    def index(self) -> int:
        if self._index > 255:
            raise UsageError("out of PCI controller indexes (0..255): the domain has too many controllers")
        self._index += 1
        return self._index - 1

    def slot(self) -> int:
        if not self._slots:
            raise UsageError(f"out of bus 0 slots: passthru uses {self.first_slot:#x}..{PC_LAST_SLOT:#x}; use q35 "
                             "or fewer devices")
        return self._slots.pop(0)


def render(attachments: list[Attachment], family: str, slots: Slots, *, hide_kvm: bool = False,
           fragment: bool = True) -> ET.Element:
    """The elements for ``attachments`` in a ``<devices>`` element, in the order ``virsh attach-device`` needs them
    (a controller before the hostdevs on it), with the operator's advice as XML comments among them."""
    atts = prepare(attachments)
    devices = ET.Element("devices")
    for att in atts:
        for note in att.notes:
            _comment(devices, note)
        if att.kind == "pci":
            guest = None
            if len(att.functions) > 1:
                if family == "q35":
                    index = slots.index()
                    ctl = ET.SubElement(devices, "controller", type="pci", index=str(index), model="pcie-root-port")
                    # `virsh attach-device --config` fills in none of these (define does): the chassis is the index
                    # (libvirt's rule; QEMU wants chassis/slot pairs unique), the port number any 8-bit value
                    ET.SubElement(ctl, "model", name="pcie-root-port")
                    ET.SubElement(ctl, "target", chassis=str(index), port=f"{(0x10 + index) & 0xFF:#x}")
                    ET.SubElement(ctl, "alias", name=alias(f"rp-{att.id}"))
                    guest = (index, 0)
                else:
                    guest = (0, slots.slot())
            _pci(devices, att, guest, fragment)
        elif att.kind == "mdev":
            hd = ET.SubElement(devices, "hostdev", mode="subsystem", type="mdev", model="vfio-pci")
            ET.SubElement(ET.SubElement(hd, "source"), "address", uuid=str(att.mdev_uuid).lower())
            ET.SubElement(hd, "alias", name=alias(att.id))
        elif att.kind == "usb":
            _usb(devices, att)
        else:
            _serial(devices, att)
    if any(a.kind == "usb" for a in atts):
        _comment(devices, "usb hostdevs attach to the domain's USB controller; USB 3 devices need "
                          "<controller type='usb' model='qemu-xhci'/>")
    _mmio_comment(devices, atts, family)
    if hide_kvm:
        _comment(devices, HIDE_KVM_NOTE)
    return devices


def libvirt_xml(attachments: list[Attachment], *, machine: str = "q35", first_index: int = 1,
                first_slot: int = PC_FIRST_SLOT, hide_kvm: bool = False) -> str:
    """The ``<devices>`` fragment for ``attachments`` (module docstring). UsageError for an unknown machine, a bad
    ROM file, a malformed address, or a usb attachment without vendor:product."""
    family = machine_family(machine)
    devices = render(attachments, family, Slots(first_index, first_slot), hide_kvm=hide_kvm)
    ET.indent(devices, "  ")
    return ET.tostring(devices, encoding="unicode") + "\n"


def qemu_override_xml(attachments: list[Attachment]) -> str | None:
    """The domain-level ``<qemu:override>`` that sets ``x-vga`` on the hostdevs that want it (the domain element
    must declare ``xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'``), or None when none does."""
    vga = [a for a in prepare(attachments) if a.kind == "pci" and a.x_vga]
    if not vga:
        return None
    ET.register_namespace("qemu", QEMU_NS)
    override = ET.Element(f"{{{QEMU_NS}}}override")
    for att in vga:
        dev = ET.SubElement(override, f"{{{QEMU_NS}}}device", alias=alias(att.id))
        front = ET.SubElement(dev, f"{{{QEMU_NS}}}frontend")
        ET.SubElement(front, f"{{{QEMU_NS}}}property", name="x-vga", type="bool", value="true")
    ET.indent(override, "  ")
    return ET.tostring(override, encoding="unicode") + "\n"
