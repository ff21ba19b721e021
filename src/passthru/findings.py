"""What a check found: the unit of ``passthru doctor``'s report, produced by the host checks (doctor.py,
doctor_initramfs.py) and by each device kind (kinds/*). On the lowest floor so that every floor can make one.

    Finding("vfio.loaded", "vfio modules", FAIL, "vfio_pci not loaded", fix="modprobe vfio-pci")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .host.root import HostRoot

__all__ = ["Finding", "PASS", "WARN", "FAIL", "SKIP", "unreadable_fix"]

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"


@dataclass(frozen=True, slots=True)
class Finding:
    id: str
    title: str
    status: str  # PASS | WARN | FAIL | SKIP
    evidence: str
    fix: str | None = None
    device: str | None = None


def unreadable_fix(h: HostRoot, what: str, user_hint: str = "", euid: int | None = None) -> str:
    """The fix for a check that could not read ``what``, by where the check runs: on a fixture or capture root the
    data is simply not there (running as root changes nothing); on the live host, root can read it; as root,
    something else hides it. ``euid`` defaults to this process's."""
    if not h.is_live:
        return (f"{what}: not in this root ({h.base}; a capture keeps only part of a host): run `passthru doctor` on "
                "the host itself for this check")
    if (os.geteuid() if euid is None else euid) != 0:
        return f"run `passthru doctor` as root ({what} is readable by root only{', ' + user_hint if user_hint else ''})"
    return f"{what}: not readable even as root (a container without it? a locked-down kernel?)"
