"""An existing libvirt domain, read: what ``passthru libvirt-xml VM --domain`` merges into and what the libvirt
hook (``service/lifecycle.py``) takes over when the domain starts.

    dom = parse_domain(text)          # UsageError (exit 2, one line) for XML that is not a KVM/QEMU domain
    dom.family, dom.pci_indexes, dom.taken_slots(0), dom.host_devices
    text = read_domain("vm1")         # a file path, or `virsh dumpxml NAME` (argument list, timeout)

Host devices (:class:`HostDevice`) become passthru specs: ``<hostdev type='pci'>`` (and ``<interface
type='hostdev'>``, an SR-IOV VF given as a NIC) by its source address, ``type='mdev'`` by UUID, ``type='usb'`` by
vendor:product or, with a source ``<address bus= device=>``, by bus and device number (``usb-dev:BUS:DEVNUM``,
resolved to the port path on the host by the caller). ``managed='yes'``: libvirt moves the PCI device to vfio-pci
itself and back when the domain stops; absent or ``no``: whoever starts the domain binds it (passthru's hook).
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from ..errors import NotFoundError, UsageError
from .qemu import machine_family

__all__ = ["Domain", "HostDevice", "parse_domain", "read_domain", "VIRSH_TIMEOUT"]

VIRSH_TIMEOUT = 30
QEMU_TYPES = ("kvm", "qemu")


@dataclass(frozen=True, slots=True)
class HostDevice:
    """One host device a VM definition names, as a passthru spec (``0000:01:00.0``, ``mdev:UUID``,
    ``usb:VVVV:PPPP``, ``usb:BUS-PORT``, or ``usb-dev:BUS:DEVNUM`` for libvirt's bus/device-number form)."""

    spec: str
    managed: bool = False  # the VM manager moves it to vfio-pci and back itself (libvirt managed='yes', Proxmox)
    source: str = ""  # where the definition names it, for messages ("hostdev 0000:01:00.0", "hostpci0")


@dataclass(slots=True)
class Domain:
    root: ET.Element
    name: str
    uuid: str | None
    machine: str | None  # as written (pc-q35-7.2); None: libvirt's default, pc on x86_64
    pci_indexes: dict[int, str] = field(default_factory=dict)  # PCI controller index -> model
    slots: set[tuple[int, int]] = field(default_factory=set)  # guest (bus, slot) in use, PCI domain 0
    host_devices: list[HostDevice] = field(default_factory=list)
    aliases: set[str] = field(default_factory=set)
    namespaces: dict[str, str] = field(default_factory=dict)  # prefix -> URI, as the input declared them

    @property
    def family(self) -> str:
        return machine_family(self.machine or "pc")

    def taken_slots(self, bus: int) -> set[int]:
        return {s for b, s in self.slots if b == bus}


def _int(text: str | None, what: str) -> int:
    try:
        return int(text or "", 0)
    except ValueError:
        raise UsageError(f"domain XML: {what} {text!r} is not a number") from None


def _pci_source(addr: ET.Element | None, what: str) -> str:
    if addr is None or addr.get("bus") is None:
        raise UsageError(f"domain XML: a {what} has no <source><address bus= slot= function=>")
    dom, bus, slot, fn = (_int(addr.get(k, "0"), f"{what} {k}") for k in ("domain", "bus", "slot", "function"))
    return f"{dom:04x}:{bus:02x}:{slot:02x}.{fn:x}"


def _hostdev(el: ET.Element) -> HostDevice | None:
    kind = el.get("type")
    src = el.find("source")
    if el.get("mode", "subsystem") != "subsystem" or src is None:
        return None
    if kind == "pci":
        addr = _pci_source(src.find("address"), "PCI hostdev")
        return HostDevice(addr, el.get("managed") == "yes", f"hostdev {addr}")
    if kind == "mdev":
        uuid = (src.find("address").get("uuid") if src.find("address") is not None else None) or ""
        return HostDevice(f"mdev:{uuid.lower()}", False, f"mdev hostdev {uuid}")
    if kind == "usb":
        vendor, product, addr = src.find("vendor"), src.find("product"), src.find("address")
        if addr is not None and addr.get("bus") is not None and addr.get("device") is not None:
            bus, dev = _int(addr.get("bus"), "USB bus"), _int(addr.get("device"), "USB device")
            return HostDevice(f"usb-dev:{bus}:{dev}", False, f"USB hostdev bus {bus} device {dev}")
        if vendor is not None and product is not None:
            vid, pid = _int(vendor.get("id"), "USB vendor id"), _int(product.get("id"), "USB product id")
            return HostDevice(f"usb:{vid:04x}:{pid:04x}", False, f"USB hostdev {vid:04x}:{pid:04x}")
        raise UsageError("domain XML: a USB hostdev names neither <vendor>/<product> nor <address bus= device=>")
    return None


def parse_domain(text: str) -> Domain:
    """The parts of a domain passthru works with; UsageError naming the problem otherwise."""
    if "<!ENTITY" in text:
        raise UsageError("domain XML declares entities; give the XML `virsh dumpxml` prints")
    namespaces: dict[str, str] = {}
    try:
        import io

        for _event, (prefix, uri) in ET.iterparse(io.StringIO(text), events=("start-ns",)):
            namespaces.setdefault(prefix, uri)
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise UsageError(f"domain XML does not parse ({e}); give the XML `virsh dumpxml NAME` prints") from None
    if root.tag != "domain":
        raise UsageError(f"domain XML: the root element is <{root.tag}>, not <domain>")
    if root.get("type") not in QEMU_TYPES:
        raise UsageError(f"domain XML: type {root.get('type')!r}: passthru wires devices into KVM/QEMU domains "
                         "(<domain type='kvm'> or 'qemu')")
    os_type = root.find("os/type")
    dom = Domain(root, (root.findtext("name") or "").strip(), (root.findtext("uuid") or "").strip().lower() or None,
                 os_type.get("machine") if os_type is not None else None, namespaces=namespaces)
    dom.family  # noqa: B018 - an unknown machine (virt, microvm) is refused here, by machine_family
    devices = root.find("devices")
    for el in devices if devices is not None else ():
        if el.tag == "controller" and el.get("type") == "pci":
            index = _int(el.get("index"), "PCI controller index")
            if index in dom.pci_indexes:
                raise UsageError(f"domain XML: two PCI controllers have index {index}")
            dom.pci_indexes[index] = el.get("model") or ""
        addr = el.find("address")
        if addr is not None and addr.get("type") == "pci" and _int(addr.get("domain", "0"), "PCI domain") == 0:
            dom.slots.add((_int(addr.get("bus", "0"), "PCI bus"), _int(addr.get("slot", "0"), "PCI slot")))
        for a in el.iter("alias"):
            if a.get("name"):
                dom.aliases.add(a.get("name"))
        if el.tag == "hostdev":
            hd = _hostdev(el)
        elif el.tag == "interface" and el.get("type") == "hostdev":
            src = _pci_source(el.find("source/address"), "hostdev interface")
            hd = HostDevice(src, el.get("managed") == "yes", f"hostdev interface {src}")
        else:
            hd = None
        if hd is not None:
            dom.host_devices.append(hd)
    return dom


def read_domain(source: str, connect: str | None = None, *, live: bool = True) -> str:
    """The XML of ``source``: a file (a path that exists, or one with a ``/`` or ending in ``.xml``), else a libvirt
    domain name given to ``virsh [-c URI] dumpxml`` (only on the live host: ``--root`` is another machine)."""
    if os.path.exists(source) or "/" in source or source.endswith(".xml"):
        try:
            with open(source, encoding="utf-8") as f:
                return f.read(16 << 20)
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise UsageError(f"--domain {source}: {why}; give a domain XML file or a libvirt domain name") from None
    if not live:
        raise UsageError(f"--domain {source}: with --root, give the domain as a file (virsh asks this machine's "
                         "libvirt)")
    argv = ["virsh", *(["-c", connect] if connect else []), "dumpxml", source]
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=VIRSH_TIMEOUT,
                           check=False)
    except FileNotFoundError:
        raise UsageError("--domain NAME runs `virsh dumpxml NAME`, and virsh is not installed (Debian: "
                         "libvirt-clients); or give the domain as a file") from None
    except subprocess.TimeoutExpired:
        raise UsageError(f"`{' '.join(argv)}` did not answer in {VIRSH_TIMEOUT} s; is libvirtd running?") from None
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1].removeprefix("error: ")
        raise NotFoundError(f"`{' '.join(argv)}` failed: {last}")
    return p.stdout
