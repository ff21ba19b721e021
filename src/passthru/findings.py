"""What a check found: the unit of ``passthru doctor``'s report, produced by the host checks (doctor.py,
doctor_initramfs.py) and by each device kind (kinds/*). On the lowest floor so that every floor can make one.

    Finding("vfio.loaded", "vfio modules", FAIL, "vfio_pci not loaded", fix="modprobe vfio-pci")
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Finding", "PASS", "WARN", "FAIL", "SKIP"]

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"


@dataclass(frozen=True, slots=True)
class Finding:
    id: str
    title: str
    status: str  # PASS | WARN | FAIL | SKIP
    evidence: str
    fix: str | None = None
    device: str | None = None
