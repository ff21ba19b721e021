"""The SR-IOV VF-count writer: ``sriov_numvfs`` and ``sriov_drivers_autoprobe``, one write each, with a bounded wait
for the VFs. What to write, the refusals and the records are the NIC kind's (``kinds/nic_vf/vfcount.py``)."""

from __future__ import annotations

import errno
import os

from ..errors import HostError
from ..host.sriov import PfRef
from ..vfio.kernel import Kernel

__all__ = ["SriovKernel"]

_NUMVFS_HINTS = {
    errno.EBUSY: "the PF already has VFs, or they are in use",
    errno.ENOENT: "the PF's driver does not support SR-IOV configuration (or no driver is bound to it)",
    errno.ENOMEM: "more VFs than the device allows",
    errno.ERANGE: "more VFs than the device allows",
    errno.ENOSPC: "not enough resources (bus numbers, MMIO space, firmware VF limit) for that many VFs",
    errno.EINVAL: "the kernel rejected the value",
    errno.EPERM: "permission denied (run as root)",
    errno.EACCES: "permission denied (run as root)",
    errno.EOPNOTSUPP: "the PF's driver does not support SR-IOV configuration",
}


class SriovKernel(Kernel):
    """The sysfs writes of SR-IOV, one write each: ``sriov_numvfs`` and ``sriov_drivers_autoprobe``. Tests
    replace :meth:`Kernel.write` (the fake creates and removes VFs in a fixture tree)."""

    def _sriov_write(self, path: str, data: str, what: str) -> None:
        try:
            self.write(path, data)
        except OSError as e:
            hint = _NUMVFS_HINTS.get(e.errno or 0, e.strerror or str(e))
            name = "EOPNOTSUPP" if e.errno == errno.EOPNOTSUPP else errno.errorcode.get(e.errno or 0, str(e.errno))
            raise HostError(f"{what}: {hint} ({name}: {os.strerror(e.errno) if e.errno else e})") from None

    def set_numvfs(self, pf: PfRef, n: int) -> None:
        self._sriov_write(pf.path + "/sriov_numvfs", str(n), f"{pf}: writing {n} to sriov_numvfs")

    def set_autoprobe(self, pf: PfRef, on: bool) -> None:
        self._sriov_write(pf.path + "/sriov_drivers_autoprobe", "1" if on else "0",
                          f"{pf}: writing {int(on)} to sriov_drivers_autoprobe")

    def numvfs_of(self, pf: PfRef) -> int | None:
        return self.h.read_int(pf.path + "/sriov_numvfs")

    def wait_numvfs(self, pf: PfRef, n: int) -> None:
        """Until the PF reports ``n`` VFs and, on PCI, exactly ``n`` virtfn links exist."""
        def done() -> bool:
            if self.numvfs_of(pf) != n:
                return False
            return pf.bus != "pci" or sum(1 for _ in self.h.walk_links(pf.path, "virtfn")) == n
        self.wait_for(done, f"{pf}: waiting for {n} VFs")
