"""The Proxmox VE hookscript's operations (``passthru hooks proxmox VMID PHASE``; service/hooks.py installs the
script): Proxmox runs a VM's hookscript as ``SCRIPT VMID PHASE`` for ``pre-start``, ``post-start``, ``pre-stop``
and ``post-stop``; a non-zero exit in ``pre-start`` stops the start, and what the script prints is in the task log.

- ``pre-start``: the VM's ``hostpciN`` and ``usbN`` devices (vm/proxmox.py; read through the host root, with the
  mapping file and this node's name for ``mapping=``) go to :func:`service.lifecycle.vm_starting` as one assign.
  Proxmox binds its ``hostpci`` devices to vfio-pci itself, so they are *managed*: recorded, checked by the
  takeover's guards, not bound by passthru. A slot without a function (``01:00``) means every function of it.
- ``post-start``: the vGPUs Proxmox made for ``hostpciN: ...,mdev=TYPE`` exist now: they are recorded too.
- ``post-stop``: :func:`service.lifecycle.vm_stopped` (nothing to give back to host drivers: passthru bound none).
- ``pre-stop``: nothing.
"""

from __future__ import annotations

import os

from .session import Session
from ..errors import NotFoundError, UsageError
from .assign import open_store
from ..vm.domain import HostDevice
from ..vm.proxmox import ProxmoxVm, mdev_uuid, parse_pci_mappings, parse_vm_config
from .lifecycle import HookResult, proxmox_vm_name, vm_starting, vm_stopped

__all__ = ["proxmox_hook", "read_vm", "PHASES"]

PHASES = ("pre-start", "post-start", "pre-stop", "post-stop")
CONF_DIR = "/etc/pve/qemu-server"
MAPPING_FILE = "/etc/pve/mapping/pci.cfg"


def _node(s: Session) -> str:
    name = s.host.read(s.host.path("/etc/hostname")) or (os.uname().nodename if s.host.is_live else "")
    return name.split(".")[0].strip()


def read_vm(s: Session, vmid: str) -> ProxmoxVm | None:
    """The VM's configuration, or None when there is none (a container's hookscript: /etc/pve/lxc/)."""
    proxmox_vm_name(vmid)
    text = s.host.read(s.host.path(f"{CONF_DIR}/{int(vmid)}.conf"))
    return None if text is None else parse_vm_config(str(int(vmid)), text)


def _functions(s: Session, pci: str) -> list[str]:
    if pci.count(".") == 1:
        return [pci]
    fns = sorted(n for n in s.host.listdir(f"{s.host.sys}/bus/pci/devices") if n.startswith(pci + "."))
    if not fns:
        raise NotFoundError(f"no PCI device {pci}.* on this host (`passthru devices` lists them)")
    return fns


def _first_free(s: Session, vm_name: str, paths: list[str]) -> str:
    """The first of a mapping's paths whose functions no other VM holds (all held: the first, and assign names the
    holder)."""
    holders = {d["identity"]: d.get("vm") for d in open_store(s).devices()}
    for path in paths:
        if all(holders.get(f"pci:{fn}") in (None, vm_name) for fn in _functions(s, path)):
            return path
    return paths[0]


def _devices(s: Session, vm: ProxmoxVm, vm_name: str) -> list[HostDevice]:
    out: list[HostDevice] = []
    mappings: dict[str, list[str]] | None = None
    for dev in vm.devices:
        if dev.kind == "usb":
            out.append(HostDevice(dev.ids[0], False, dev.key))
            continue
        if dev.mdev:
            vm.notes.append(f"{dev.key}: the vGPU (mdev={dev.mdev}) is made by Proxmox at start; passthru records "
                            "it after the start")
            continue
        ids = list(dev.ids)
        if dev.mapping:
            if mappings is None:
                mappings = parse_pci_mappings(s.host.read(s.host.path(MAPPING_FILE)) or "", _node(s))
            ids = mappings.get(dev.mapping) or []
            if not ids:
                raise NotFoundError(f"{dev.key}: PCI mapping {dev.mapping!r} has no path for node {_node(s)!r} in "
                                    f"{MAPPING_FILE}")
            if len(ids) > 1:  # alternatives: Proxmox takes the first one no other VM uses
                ids = [_first_free(s, vm_name, ids)]
        for i in ids:
            out += [HostDevice(fn, True, dev.key) for fn in _functions(s, i)]
    return out


def proxmox_hook(s: Session, vmid: str, phase: str, *, kernel: object | None = None) -> HookResult:
    """See the module docstring."""
    if phase not in PHASES:
        raise UsageError(f"Proxmox hook phase {phase!r}: one of {', '.join(PHASES)}")
    vm_name = proxmox_vm_name(vmid)
    if phase == "pre-stop":
        return HookResult(vm_name)
    if phase == "post-stop":
        return HookResult(vm_name, "released", [a.device for a in vm_stopped(s, vm_name, kernel=kernel)])
    vm = read_vm(s, vmid)
    if vm is None:
        return HookResult(vm_name, notes=[f"no {CONF_DIR}/{int(vmid)}.conf: not a QEMU VM, nothing to do"])
    if phase == "post-start":
        mdevs = [HostDevice(f"mdev:{mdev_uuid(vm.vmid, int(d.key[7:]))}", False, d.key) for d in vm.devices if d.mdev]
        res = vm_starting(s, vm_name, mdevs, vm_uuid=vm.uuid, kernel=kernel)
    else:
        res = vm_starting(s, vm_name, _devices(s, vm, vm_name), vm_uuid=vm.uuid, kernel=kernel)
    if res is None:
        return HookResult(vm_name, notes=vm.notes)
    return HookResult(vm_name, "assigned", [a.device for a in res.assignments], res.bound, vm.notes)
