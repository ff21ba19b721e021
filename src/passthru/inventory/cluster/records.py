"""What an agent publishes about one of its host's devices (:class:`ClusterDevice`), and the checks on names."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import UsageError
from ...names import check_vm

__all__ = ["ClusterDevice", "check_host_name", "check_vm"]

_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


@dataclass(frozen=True, slots=True)
class ClusterDevice:
    identity: str  # as in the host's own inventory: "pci:0000:86:00.0"
    kind: str  # gpu, nic, nvme, ...
    model: str | None = None  # a custom model name (``passthru model add``), when one matches
    vendor_id: int | None = None
    device_id: int | None = None
    numa_node: int | None = None
    switch: str | None = None  # the PCIe switch: the upstream bridge below the root port (None: none or unknown)
    iommu_group: int | None = None
    parent: str | None = None  # the PF of a VF
    vfio: str | None = None  # the driver bound now ("vfio-pci", "nvidia", None)

    def check(self) -> None:
        if not isinstance(self.identity, str) or ":" not in self.identity or not 2 < len(self.identity) <= 255:
            raise UsageError(f"{self.identity!r}: a device identity looks like 'pci:0000:86:00.0'")
        if not self.kind or len(self.kind) > 64:
            raise UsageError(f"{self.identity}: kind must be a short non-empty name")
        for f in ("vendor_id", "device_id"):
            v = getattr(self, f)
            if v is not None and not 0 <= v <= 0xFFFF:
                raise UsageError(f"{self.identity}: {f} must be 0..0xffff, got {v!r}")


def check_host_name(name: str) -> None:
    if not isinstance(name, str) or not _HOST.match(name):
        raise UsageError(f"host name {name!r}: use letters, digits, '.', '-' or '_' (a hostname)")
