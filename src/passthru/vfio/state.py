"""What passthru holds, what it must re-apply at boot, and what it did: the takeover's records.

- Holdings (``<state>/vfio/<addr>.json``): one file per device passthru took over, written *before* the first
  host write (journal first), with the device's identity and its prior driver and driver_override, and a
  ``phase``: ``binding`` (writes may be under way), ``bound`` (on vfio-pci, verified), ``restoring`` (being given
  back). A process killed between steps leaves a record ``passthru reconcile`` finishes from.
- Persisted bindings (``<config>/vfio.d/<addr>.json``): operator intent, re-applied at boot by
  ``passthru apply-boot``. Same shape as a holding's identity, like mdevctl's one-file-per-device definitions.
- Audit log (``<state>/audit.log``): one JSON line per host write: time, action, device, before, after, caller.

Files are written to a temp file, fsynced and renamed (readers and crashes see old or new, never torn).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Iterator

from ..config import Paths
from ..errors import ConfigError
from ..journal import journal_for
from ..statefs import (FileLock, append_line, caller, ensure_dir, fsync_dir, list_names, read_record, write_atomic,
                       write_if_changed)

__all__ = ["Holding", "Holdings", "BINDING", "BOUND", "RESTORING"]

BINDING, BOUND, RESTORING = "binding", "bound", "restoring"
_SCHEMA = 1
_FULL_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


@dataclass(frozen=True, slots=True)
class Holding:
    address: str
    vendor_id: str  # "10de": identity check against a different card in the same slot
    device_id: str
    iommu_group: int | None
    prior_driver: str | None
    prior_override: str | None
    phase: str
    persist: bool = False
    since: str = ""
    by: str = ""
    op: str | None = None  # the journal operation (journal.py) that took it over

    def to_json(self) -> dict:
        return {"schema": _SCHEMA, **asdict(self)}

    @classmethod
    def from_json(cls, doc: dict, where: str, name: str | None = None) -> "Holding":
        """A record read back, checked field by field: its values end up in sysfs paths (the address, the prior
        driver), so a foreign or tampered file is refused, naming it, instead of being acted on."""
        names = {f.name for f in fields(cls)}
        fix = "move it away and run `passthru reconcile`"
        try:
            rec = cls(**{k: v for k, v in doc.items() if k in names})
        except TypeError as e:
            raise ConfigError(f"{where}: not a passthru holding record ({e}); {fix}") from None
        problem = _invalid(rec, name)
        if problem:
            raise ConfigError(f"{where}: not a passthru holding record ({problem}); {fix}")
        return rec


_HEX4 = re.compile(r"^[0-9a-f]{4}$")
_DRIVER = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")


def valid_driver(name: object) -> bool:
    """A kernel driver name as it appears under /sys/bus/pci/drivers (never a path)."""
    return isinstance(name, str) and bool(_DRIVER.match(name)) and name not in (".", "..")


def _invalid(rec: Holding, name: str | None) -> str | None:
    if not isinstance(rec.address, str) or not _FULL_BDF.match(rec.address):
        return f"address {rec.address!r} is not a PCI address"
    if name is not None and name != rec.address:
        return f"the file is named {name!r} but holds {rec.address}"
    if not (isinstance(rec.vendor_id, str) and _HEX4.match(rec.vendor_id)
            and isinstance(rec.device_id, str) and _HEX4.match(rec.device_id)):
        return "vendor_id/device_id are not 4-digit hex IDs"
    if rec.prior_driver is not None and not valid_driver(rec.prior_driver):
        return f"prior_driver {rec.prior_driver!r} is not a driver name"
    if rec.prior_override is not None and not valid_driver(rec.prior_override):
        return f"prior_override {rec.prior_override!r} is not a driver name"
    if rec.phase not in (BINDING, BOUND, RESTORING):
        return f"phase {rec.phase!r} is not one of binding, bound, restoring"
    if rec.iommu_group is not None and (isinstance(rec.iommu_group, bool) or not isinstance(rec.iommu_group, int)):
        return "iommu_group is not a number"
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Holdings:
    """What passthru holds for vfio-pci: the records under one :class:`Paths` (held devices, persisted bindings,
    the audit log and the journal). The inventory's database is another thing: ``inventory.Store``."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.hold_dir = os.path.join(paths.state_dir, "vfio")
        self.persist_dir = os.path.join(paths.config_dir, "vfio.d")
        self.audit_path = os.path.join(paths.state_dir, "audit.log")
        self.journal = journal_for(paths.state_dir)

    def lock(self) -> FileLock:
        return FileLock(os.path.join(self.paths.state_dir, "vfio.lock"), "a bind/restore")

    # -- holdings ---------------------------------------------------------------------------------------------
    def _hold_path(self, addr: str) -> str:
        return os.path.join(self.hold_dir, f"{addr}.json")

    @staticmethod
    def _load(path: str) -> dict | None:
        return read_record(path, "move it away and run `passthru reconcile`")

    def get(self, addr: str) -> Holding | None:
        if not _FULL_BDF.match(addr):
            return None  # never a path: only a normalized PCI address names a record
        doc = self._load(self._hold_path(addr))
        return None if doc is None else Holding.from_json(doc, self._hold_path(addr), addr)

    def holdings(self) -> list[Holding]:
        out = []
        for name in list_names(self.hold_dir):
            path = os.path.join(self.hold_dir, name)
            doc = self._load(path)
            if doc is not None:
                out.append(Holding.from_json(doc, path, name[:-5]))
        return out

    def save(self, rec: Holding) -> Holding:
        rec = rec if rec.since else replace(rec, since=_now())
        ensure_dir(self.hold_dir, 0o700)
        write_atomic(self._hold_path(rec.address), (json.dumps(rec.to_json(), indent=2) + "\n").encode(), 0o600)
        return rec

    def drop(self, addr: str) -> None:
        _unlink(self._hold_path(addr))
        fsync_dir(self.hold_dir)

    # -- persisted bindings -----------------------------------------------------------------------------------
    def _persist_path(self, addr: str) -> str:
        return os.path.join(self.persist_dir, f"{addr}.json")

    def persisted(self) -> list[dict]:
        out = []
        for name in list_names(self.persist_dir):
            path = os.path.join(self.persist_dir, name)
            doc = self._load(path)
            if doc is None:
                continue
            if doc.get("address") != name[:-5] or not _FULL_BDF.match(name[:-5]):
                raise ConfigError(f"{path}: not a persisted passthru binding (its name and address disagree); "
                                  "move it away (`passthru bind ADDRESS --persist` writes a new one)")
            out.append(doc)
        return out

    def is_persisted(self, addr: str) -> bool:
        return os.path.exists(self._persist_path(addr))

    def persist(self, rec: Holding) -> bool:
        """Record ``rec``'s device for apply-boot; False when it already was (same content)."""
        doc = {"schema": _SCHEMA, "address": rec.address, "vendor_id": rec.vendor_id, "device_id": rec.device_id,
               "driver": "vfio-pci"}
        data = (json.dumps(doc, indent=2) + "\n").encode()
        path = self._persist_path(rec.address)
        return write_if_changed(path, data, 0o644)

    def unpersist(self, addr: str) -> bool:
        gone = _unlink(self._persist_path(addr))
        if gone:
            fsync_dir(self.persist_dir)
        return gone

    # -- audit ------------------------------------------------------------------------------------------------
    def audit(self, action: str, device: str, before: object, after: object, **extra: object) -> None:
        entry = {"time": _now(), "action": action, "device": device, "before": before, "after": after,
                 "caller": caller(), **extra}
        append_line(self.audit_path, json.dumps(entry, sort_keys=True))

    def audit_entries(self) -> Iterator[dict]:
        try:
            with open(self.audit_path, encoding="utf-8") as f:
                for line in f:
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue
        except FileNotFoundError:
            return


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
