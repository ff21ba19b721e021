"""NVMe controllers: passed through whole, so every namespace on them leaves the host.

The refusal itself is the takeover's (``host/usage.py``, applied by ``passthru bind`` and so by ``assign``): a
controller is never bound to vfio-pci while any of its namespaces, a partition on one, or a device stacked on
them (LVM / device-mapper, MD RAID, a native-multipath head) is mounted, active swap or held. This kind says it per
namespace in doctor:

- ``nvme.namespaces``: each namespace of the controller (``nvme0n1``; a multipath path ``nvme0c1n1`` is shown as
  its head ``nvme0n1``) with what the host uses it for, or "not in use". Fails when one is in use.
"""

from __future__ import annotations

import re

from ..discovery import Device
from ..findings import FAIL, PASS, Finding
from ..host.iommu import is_vfio_driver
from ..host.pci import PciFunction
from ..host.root import HostRoot
from .base import DeviceKind, register

__all__ = ["NvmeKind", "namespaces"]

_NS = re.compile(r"^nvme(\d+)n(\d+)$")
_PATH = re.compile(r"^nvme(\d+)c(\d+)n(\d+)$")
_STORAGE = ("mount", "swap", "holder")


def namespaces(h: HostRoot, address: str) -> list[tuple[str, bool]]:
    """(namespace block device, reached through a multipath head) for each namespace of the controller(s) on a
    function, in order."""
    out: dict[str, bool] = {}
    base = f"{h.sys}/bus/pci/devices/{address}/nvme"
    for ctrl in h.listdir(base):
        for entry in h.listdir(f"{base}/{ctrl}"):
            if _NS.match(entry):
                out.setdefault(entry, False)
            elif m := _PATH.match(entry):
                out[f"nvme{m.group(1)}n{m.group(3)}"] = True
    return sorted(out.items(), key=lambda kv: tuple(int(x) for x in re.findall(r"\d+", kv[0])))


class NvmeKind(DeviceKind):
    name = "nvme"
    hotpluggable = True

    def checks(self, h: HostRoot, device: Device) -> list[Finding]:
        from ..host.usage import host_uses

        fn = device.fact
        if device.bus != "pci" or not isinstance(fn, PciFunction):
            return []
        title = "Namespaces not in use by the host"
        if is_vfio_driver(fn.driver) or fn.driver is None:
            why = f"on {fn.driver}" if fn.driver else "without a driver"
            return [Finding("nvme.namespaces", title, PASS,
                            f"{device.id} is {why}: the host sees none of its namespaces", device=device.id)]
        nss = namespaces(h, device.id)
        if not nss:
            return [Finding("nvme.namespaces", title, PASS, f"{device.id}: no namespaces attached",
                            device=device.id)]
        uses = [u for u in host_uses(h, [device.id]).get(device.id, []) if u.what in _STORAGE]
        parts, busy = [], False
        for ns, multipath in nss:
            pat = re.compile(rf"\b{ns}(p\d+)?\b")
            mine = [u.detail for u in uses if pat.search(u.detail)]
            label = ns + (" (multipath: also reached through other controllers)" if multipath else "")
            parts.append(f"{label}: {'; '.join(mine)}" if mine else f"{label}: not in use")
            busy = busy or bool(mine)
        rest = [u.detail for u in uses if not any(re.search(rf"\b{ns}(p\d+)?\b", u.detail) for ns, _ in nss)]
        if rest:
            parts.append(f"other: {'; '.join(rest)}")
            busy = True
        ev = f"{device.id}: " + " | ".join(parts)
        if busy:
            return [Finding("nvme.namespaces", title, FAIL, ev,
                            "the whole controller goes to the VM: unmount, swapoff and take down what is stacked "
                            "on each namespace in use (vgchange -an VG, mdadm --stop) first; `passthru bind` and "
                            "`assign` refuse it until then", device=device.id)]
        return [Finding("nvme.namespaces", title, PASS, ev, device=device.id)]


register(NvmeKind())
