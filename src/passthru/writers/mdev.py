"""The mdev and NVIDIA vGPU-type writer: the only code in passthru that writes the mdev bus and
``nvidia/current_vgpu_type``. One write per verb, as the kernel's ABI defines them
(Documentation/driver-api/vfio-mediated-device.rst):

    create(parent, type, uuid)   /sys/class/mdev_bus/<parent>/mdev_supported_types/<type>/create   (<uuid>)
    remove(uuid)                 /sys/bus/mdev/devices/<uuid>/remove                              (1)
    set_vgpu_type(vf, type)      /sys/bus/pci/devices/<vf>/nvidia/current_vgpu_type               (<id>, 0 = none)

each with a bounded wait for the result (``/sys/bus/mdev/devices/<uuid>`` there or gone; the type read back). What
to create, the records and the rollback are the vGPU kind's (``kinds/vgpu/instances.py``).
"""

from __future__ import annotations

import errno
import os

from ..errors import HostError, UsageError
from ..host.root import HostRoot
from ..vfio.kernel import Kernel

__all__ = ["MdevKernel", "mdev_kernel"]

_HINTS = {
    errno.EEXIST: "a mediated device with this UUID already exists",
    errno.EUSERS: "no instance of this type is left on the parent",
    errno.ENOSPC: "no instance of this type is left on the parent",
    errno.EDQUOT: "no instance of this type is left on the parent",
    errno.EBUSY: "in use (a VM has it open)",
    errno.EINVAL: "the kernel rejected the value",
    errno.EPERM: "permission denied (run as root)",
    errno.EACCES: "permission denied (run as root)",
    errno.ENODEV: "the parent or device is gone",
    errno.ENOENT: "the parent or device is gone",
}


# -- the kernel boundary ------------------------------------------------------------------------------------------
class MdevKernel(Kernel):
    """mdev and NVIDIA vGPU-type writes on one host root. Tests substitute a subclass whose :meth:`write` simulates
    the mdev core on a fixture tree; the lab runs this class on a real kernel (mtty)."""

    def require_live(self) -> None:
        if not self.h.is_live:
            raise UsageError(f"{self.h.base} is not this machine's root: creating or removing vGPUs needs the live "
                             "host (drop --root / PASSTHRU_ROOT; --dry-run works on any root)")

    def sysfsdev(self, uuid: str) -> str:
        return f"{self.h.sys}/bus/mdev/devices/{uuid}"

    def mdev_present(self, uuid: str) -> bool:
        return self.h.exists(self.sysfsdev(uuid))

    def vgpu_type(self, vf: str) -> str | None:
        text = self.h.read(f"{self.h.sys}/bus/pci/devices/{vf}/nvidia/current_vgpu_type")
        return text.split()[0] if text else None

    def _mwrite(self, path: str, data: str, what: str) -> None:
        try:
            self.write(path, data)
        except OSError as e:
            hint = _HINTS.get(e.errno or 0, e.strerror or str(e))
            raise HostError(f"{what}: {hint} ({os.strerror(e.errno) if e.errno else e})") from None

    def create(self, parent: str, type_id: str, uuid: str) -> None:
        self._mwrite(f"{self.h.sys}/class/mdev_bus/{parent}/mdev_supported_types/{type_id}/create", uuid,
                     f"{uuid}: creating {type_id} on {parent}")

    def remove(self, uuid: str) -> None:
        if self.mdev_present(uuid):
            self._mwrite(self.sysfsdev(uuid) + "/remove", "1", f"{uuid}: removing")

    def set_vgpu_type(self, vf: str, type_id: str) -> None:
        if self.vgpu_type(vf) != type_id:
            self._mwrite(f"{self.h.sys}/bus/pci/devices/{vf}/nvidia/current_vgpu_type", type_id,
                         f"{vf}: setting current_vgpu_type to {type_id}")

    def wait_present(self, uuid: str, present: bool) -> None:
        self.wait_for(lambda: self.mdev_present(uuid) == present,
                      f"{uuid}: waiting for /sys/bus/mdev/devices/{uuid} to {'appear' if present else 'go'}")

    def wait_type(self, vf: str, type_id: str) -> None:
        self.wait_for(lambda: self.vgpu_type(vf) == type_id, f"{vf}: waiting for current_vgpu_type {type_id}")


def mdev_kernel(h: HostRoot, kernel: Kernel | None = None) -> MdevKernel:
    """``kernel`` when it can write mdevs (a test double), else the real boundary for ``h``."""
    return kernel if isinstance(kernel, MdevKernel) else MdevKernel(h)
