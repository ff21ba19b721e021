"""A Proxmox VE VM configuration (``/etc/pve/qemu-server/VMID.conf``) and PCI resource mappings
(``/etc/pve/mapping/pci.cfg``), read for the host devices they pass through. Pure text parsing: the service
(service/proxmox.py) reads the files through the host root and expands what needs the host (a slot without a
function means all its functions).

Forms handled (Proxmox's own syntax):

- ``hostpciN: [host=]ID[;ID...][,pcie=1][,x-vga=1][,rombar=0][,romfile=F][,mdev=TYPE][,legacy-igd=1]`` with ID
  ``0000:01:00.0``, ``01:00.0``, or a slot ``0000:01:00`` / ``01:00`` (all its functions);
  ``hostpciN: mapping=NAME[,...]`` (the mapping's ``path`` for this node; several paths ``a;b``: Proxmox takes
  the first available one). ``mdev=TYPE``: Proxmox creates the vGPU itself at start, with the UUID
  ``%08d-0000-0000-0000-%012d`` % (N, VMID): it exists only after the start (post-start).
- ``usbN: [host=]VVVV:PPPP`` or ``host=BUS-PORT[.PORT]`` (``,usb3=1``); ``spice`` and ``mapping=`` are noted and
  skipped (a SPICE redirection holds no host device; USB mappings are not read yet).

Only the current configuration counts: the file's sections after the first ``[name]`` line are snapshots or
pending changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import UsageError

__all__ = ["ProxmoxDevice", "ProxmoxVm", "parse_vm_config", "parse_pci_mappings", "mdev_uuid"]

_PCI_ID = re.compile(r"^(?:([0-9a-fA-F]{4,}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})(?:\.([0-7]))?$")
_USB_ID = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")
_USB_PORT = re.compile(r"^(\d{1,3})-(\d{1,3}(?:\.\d{1,3}){0,6})$")
_UUID = re.compile(r"\buuid=([0-9a-fA-F-]{36})\b")


@dataclass(frozen=True, slots=True)
class ProxmoxDevice:
    key: str  # "hostpci0", "usb1"
    kind: str  # "pci" | "usb"
    ids: tuple[str, ...] = ()  # pci: "0000:01:00.0" or a slot "0000:01:00"; usb: "usb:VVVV:PPPP" / "usb:1-2"
    mapping: str | None = None
    mdev: str | None = None  # the mdev type Proxmox creates on the device at start
    options: dict = field(default_factory=dict)


@dataclass(slots=True)
class ProxmoxVm:
    vmid: str
    uuid: str | None = None  # smbios1: uuid=
    devices: list[ProxmoxDevice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def mdev_uuid(vmid: str, index: int) -> str:
    """The UUID Proxmox gives the vGPU of ``hostpci<index>`` (qemu-server's generate_mdev_uuid)."""
    return f"{index:08d}-0000-0000-0000-{int(vmid):012d}"


def pci_id(text: str, where: str) -> str:
    """``01:00.0`` -> ``0000:01:00.0``; a slot ``01:00`` -> ``0000:01:00``. UsageError naming ``where``."""
    m = _PCI_ID.match(text.strip())
    if not m:
        raise UsageError(f"{where}: {text!r} is not a PCI address like 0000:01:00.0 or 01:00")
    dom, bus, slot, fn = m.groups()
    base = f"{int(dom or '0', 16):04x}:{bus.lower()}:{slot.lower()}"
    return base if fn is None else f"{base}.{fn}"


def _props(value: str, default_key: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep:
            key, val = default_key, item
        out[key.strip()] = val.strip()
    return out


def parse_vm_config(vmid: str, text: str) -> ProxmoxVm:
    """The host devices of the current configuration (module docstring); UsageError for a malformed entry."""
    vm = ProxmoxVm(vmid)
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            break  # snapshots, [PENDING], [special:cloudinit]
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        where = f"/etc/pve/qemu-server/{vmid}.conf {key}"
        if key == "smbios1" and (m := _UUID.search(value)):
            vm.uuid = m.group(1).lower()
        elif re.fullmatch(r"hostpci\d+", key) and sep:
            props = _props(value, "host")
            ids = tuple(pci_id(i, where) for i in props.pop("host", "").split(";") if i.strip())
            mapping, mdev = props.pop("mapping", None), props.pop("mdev", None)
            if not ids and not mapping:
                raise UsageError(f"{where}: names neither a host PCI device nor a mapping")
            vm.devices.append(ProxmoxDevice(key, "pci", ids, mapping, mdev, props))
        elif re.fullmatch(r"usb\d+", key) and sep:
            props = _props(value, "host")
            host = props.pop("host", "")
            if host == "spice" or props.get("mapping"):
                what = "a SPICE redirection holds no host device" if host == "spice" else \
                    "USB mappings are not read by passthru yet"
                vm.notes.append(f"{key}: skipped ({what})")
                continue
            if m := _USB_ID.match(host):
                vm.devices.append(ProxmoxDevice(key, "usb", (f"usb:{m.group(1).lower()}:{m.group(2).lower()}",)))
            elif _USB_PORT.match(host):
                vm.devices.append(ProxmoxDevice(key, "usb", (f"usb:{host}",)))
            else:
                raise UsageError(f"{where}: host={host!r} is neither VVVV:PPPP nor BUS-PORT (e.g. 1-2.3)")
    return vm


def parse_pci_mappings(text: str, node: str) -> dict[str, list[str]]:
    """``/etc/pve/mapping/pci.cfg`` (a section config: a name line, then indented ``key value`` lines; ``map``
    repeats, one per node) -> mapping name -> the PCI ids of its ``path`` on ``node``, in order."""
    out: dict[str, list[str]] = {}
    name = None
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if not raw[0].isspace():
            name = raw.strip()
            out.setdefault(name, [])
            continue
        key, _, value = raw.strip().partition(" ")
        if key != "map" or name is None:
            continue
        props = _props(value, "node")
        if props.get("node") == node and props.get("path"):
            out[name] += [pci_id(p, f"PCI mapping {name}") for p in props["path"].split(";") if p.strip()]
    return out
