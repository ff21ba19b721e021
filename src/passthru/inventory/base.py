"""The inventory's value types and errors, shared by the store and the claim rules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, insert

from ..errors import UsageError
from ..statefs import caller
from .schema import audit

__all__ = ["Assignment", "ClaimError", "InvalidState", "STATES", "now", "actor", "write_audit"]

STATES = ("pending", "reserved", "attached", "released")
_INSERT_AUDIT = insert(audit)  # built once: building a statement costs more than SQLite takes to run it


class ClaimError(UsageError):
    """A claim was refused: no free device, or the device is held (directly, via its PF/VF, or its IOMMU group)."""


class InvalidState(UsageError):
    """An assignment cannot move to the requested state from the one it is in."""

    def __init__(self, message: str, *, current: str, expected: tuple[str, ...], requested: str) -> None:
        super().__init__(message)
        self.current, self.expected, self.requested = current, expected, requested


@dataclass(frozen=True, slots=True)
class Assignment:
    id: int
    vm: str
    vm_uuid: str | None
    device: str  # identity
    state: str  # pending (inside one assign) | reserved | attached | released
    created: str  # ISO-8601 UTC
    updated: str
    released: str | None
    op: str | None = None  # the journal operation that claimed it
    takeover: str | None = None  # "vfio": passthru moves the PCI device to vfio-pci for it

    @classmethod
    def from_row(cls, r: Any) -> "Assignment":
        return cls(r.id, r.vm, r.vm_uuid, r.device, r.state, r.created, r.updated, r.released, r.op, r.takeover)


def now() -> str:
    """ISO-8601 UTC with microseconds, fixed width: text order is time order."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def actor() -> dict:
    """Who is writing (the same record as the takeover's audit log)."""
    return caller()


def write_audit(c: Connection, who: dict, action: str, device: str | None, vm: str | None, detail: dict | None,
                ts: str | None = None) -> None:
    c.execute(_INSERT_AUDIT, {"time": ts or now(), "action": action, "device": device, "vm": vm, "detail": detail,
                              "actor": who})
