"""A VM's attachments merged into an existing libvirt domain (``passthru libvirt-xml VM --domain NAME|FILE``).

The ``<devices>`` fragment of vm/libvirt.py is only valid alone: merged into an ordinary domain that already has
a ``pcie-root-port`` with index 1, ``virsh define`` refuses "Multiple 'pci' controllers with index '1'". Here the
domain's own PCI controllers and the guest PCI addresses it uses are read first, and what passthru adds takes free
ones: a q35 ``pcie-root-port`` per multi-function set gets an index above all the domain's controllers (its
functions sit in its slot 0), a pc multi-function set the next free slot of bus 0 (0x10 up, then 0x03 up). Single
devices carry no guest address: libvirt places them (on q35 it adds a root port for each) when the domain is
defined or the device attached.

Two outputs from one placement:

- :attr:`Merged.domain`: the whole updated domain, for ``virsh define``. ``--hide-kvm`` adds
  ``<features><kvm><hidden state='on'/></kvm></features>``; ``--x-vga`` the ``<qemu:override>``.
- :attr:`Merged.elements`: one element per file, for ``virsh attach-device DOMAIN FILE --config`` in file-name
  order: a controller comes before the hostdevs that sit on it (libvirt refuses a hostdev on a bus that does not
  exist yet). ``<features>`` and ``<qemu:override>`` are not devices and cannot be attached: a note says so.

Refused (UsageError, nothing written): a domain that already has one of the host devices, a machine type other than
the one asked for, aliases passthru would use twice.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from ..errors import UsageError
from .attachment import Attachment
from .domain import Domain
from .libvirt import HIDE_KVM_XML, QEMU_NS, Slots, qemu_override_xml, render
from .qemu import machine_family

__all__ = ["Merged", "merge_domain", "attachment_specs", "write_elements"]


@dataclass(slots=True)
class Merged:
    domain: str  # the whole domain, for `virsh define`
    elements: list[tuple[str, str]] = field(default_factory=list)  # (file name, XML) in attach order
    notes: list[str] = field(default_factory=list)  # advice for the operator (stderr)


def attachment_specs(att: Attachment) -> list[str]:
    """The host devices of an attachment, in the spec form :class:`vm.domain.HostDevice` uses."""
    if att.kind == "pci":
        return list(att.functions)
    if att.kind == "mdev":
        return [f"mdev:{str(att.mdev_uuid).lower()}"]
    if att.kind == "usb" and att.usb_vendor_id is not None and att.usb_product_id is not None:
        return [f"usb:{att.usb_vendor_id:04x}:{att.usb_product_id:04x}"]
    return []


def _check(dom: Domain, atts: list[Attachment], machine: str | None) -> None:
    if machine is not None and machine_family(machine) != dom.family:
        raise UsageError(f"domain {dom.name!r} is a {dom.machine or 'pc (libvirt default)'} machine ({dom.family}), "
                         f"not {machine}: drop --machine (the domain's own is used) or give --machine {dom.family}")
    have = {hd.spec: hd for hd in dom.host_devices}
    for att in atts:
        for spec in attachment_specs(att):
            if spec in have:
                raise UsageError(f"domain {dom.name!r} already has {spec} ({have[spec].source}): remove it from the "
                                 "domain first (`virsh detach-device --config`), or leave the domain as it is")


def _serial_sources(dom: Domain) -> set[str]:
    devices = dom.root.find("devices")
    return {s.get("path", "") for s in (devices.findall("serial/source") if devices is not None else [])}


def _hide_kvm(root: ET.Element) -> None:
    features = root.find("features")
    if features is None:
        features = ET.Element("features")
        after = max((i for i, el in enumerate(root) if el.tag in ("os", "vcpu", "memory", "currentMemory")),
                    default=len(root) - 1)
        root.insert(after + 1, features)
    kvm = features.find("kvm")
    if kvm is None:
        kvm = ET.SubElement(features, "kvm")
    hidden = kvm.find("hidden")
    if hidden is None:
        hidden = ET.SubElement(kvm, "hidden")
    hidden.set("state", "on")


def _override(root: ET.Element, atts: list[Attachment]) -> bool:
    text = qemu_override_xml(atts)
    if text is None:
        return False
    new = ET.fromstring(text)
    old = root.find(f"{{{QEMU_NS}}}override")
    if old is None:
        root.append(new)
    else:
        old.extend(list(new))
    return True


def _serialize(dom: Domain) -> str:
    for prefix, uri in dom.namespaces.items():  # keep the domain's own prefixes (qemu:, libosinfo:, ...)
        if prefix and not prefix.startswith("ns"):
            ET.register_namespace(prefix, uri)
    ET.register_namespace("qemu", QEMU_NS)
    ET.indent(dom.root, "  ")
    return ET.tostring(dom.root, encoding="unicode") + "\n"


def merge_domain(dom: Domain, attachments: list[Attachment], *, machine: str | None = None,
                 hide_kvm: bool = False) -> Merged:
    """``attachments`` merged into ``dom`` (changed in place); see the module docstring."""
    _check(dom, attachments, machine)
    taken_serial = _serial_sources(dom) & {a.serial_path for a in attachments if a.kind == "serial"}
    if taken_serial:
        raise UsageError(f"domain {dom.name!r} already has a serial port on {sorted(taken_serial)[0]}: remove it "
                         "from the domain first, or leave the domain as it is")
    slots = Slots(1, taken_indexes=dom.pci_indexes, taken_slots=dom.taken_slots(0), low=True)
    new = render(attachments, dom.family, slots, fragment=False)
    out = Merged("")
    out.notes = [str(c.text).strip().replace("- -", "--") for c in new if c.tag is ET.Comment]
    added = [el for el in new if el.tag is not ET.Comment]
    clash = sorted({a.get("name") for el in added for a in el.iter("alias")} & dom.aliases)
    if clash:
        raise UsageError(f"domain {dom.name!r} already uses the alias {clash[0]}: it has this device already, or "
                         "another with passthru's alias; remove it from the domain first")
    devices = dom.root.find("devices")
    if devices is None:
        devices = ET.SubElement(dom.root, "devices")
    for n, el in enumerate(added, 1):
        what = el.tag if el.tag != "hostdev" else f"hostdev-{el.get('type')}"
        name = (el.find("alias").get("name") if el.find("alias") is not None else str(n)).removeprefix("ua-")
        ET.indent(el, "  ")
        out.elements.append((f"{n:02d}-{what}-{name}.xml", ET.tostring(el, encoding="unicode") + "\n"))
        devices.append(el)
    if hide_kvm:
        _hide_kvm(dom.root)
        out.notes.append(f"hidden hypervisor: {HIDE_KVM_XML} is in the full domain; `virsh attach-device` cannot "
                         "add features: with the element files, add it with `virsh edit`")
    if _override(dom.root, attachments):
        out.notes.append("x-vga: the <qemu:override> (libvirt >= 8.2.0) is in the full domain; `virsh "
                         "attach-device` cannot add it: with the element files, add it with `virsh edit`")
    out.domain = _serialize(dom)
    return out


def write_elements(directory: str, elements: list[tuple[str, str]]) -> list[str]:
    """Write the element files into ``directory`` (made if missing; it must hold no ``.xml`` file yet, so that a
    ``for f in DIR/*.xml`` loop attaches exactly these). Returns the paths, in attach order."""
    import os

    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        stale = sorted(n for n in os.listdir(directory) if n.endswith(".xml"))
    except OSError as e:
        raise UsageError(f"--attach-dir {directory}: {e.strerror}; give a directory passthru can write") from None
    if stale:
        raise UsageError(f"--attach-dir {directory} already has {stale[0]}: give an empty or new directory (its .xml "
                         "files are attached in name order)")
    out = []
    for name, text in elements:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            for p in out:  # nothing half-written
                os.unlink(p)
            raise UsageError(f"--attach-dir {directory}: {name}: {e.strerror}") from None
        out.append(path)
    return out
