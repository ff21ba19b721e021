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
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Iterator

from ..config import Paths
from ..errors import ConfigError
from ..statefs import FileLock, caller, fsync_dir, read_record, write_atomic, write_if_changed

__all__ = ["Holding", "Store", "BINDING", "BOUND", "RESTORING"]

BINDING, BOUND, RESTORING = "binding", "bound", "restoring"
_SCHEMA = 1


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

    def to_json(self) -> dict:
        return {"schema": _SCHEMA, **asdict(self)}

    @classmethod
    def from_json(cls, doc: dict, where: str) -> "Holding":
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in doc.items() if k in names})
        except TypeError as e:
            raise ConfigError(f"{where}: not a passthru holding record ({e}); move it away and run "
                              "`passthru reconcile`") from None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Store:
    """The records under one :class:`Paths`."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.hold_dir = os.path.join(paths.state_dir, "vfio")
        self.persist_dir = os.path.join(paths.config_dir, "vfio.d")
        self.audit_path = os.path.join(paths.state_dir, "audit.log")

    def lock(self) -> FileLock:
        return FileLock(os.path.join(self.paths.state_dir, "vfio.lock"), "a bind/restore")

    # -- holdings ---------------------------------------------------------------------------------------------
    def _hold_path(self, addr: str) -> str:
        return os.path.join(self.hold_dir, f"{addr}.json")

    @staticmethod
    def _load(path: str) -> dict | None:
        return read_record(path, "move it away and run `passthru reconcile`")

    def get(self, addr: str) -> Holding | None:
        doc = self._load(self._hold_path(addr))
        return None if doc is None else Holding.from_json(doc, self._hold_path(addr))

    def holdings(self) -> list[Holding]:
        out = []
        for name in sorted(_listdir(self.hold_dir)):
            if name.endswith(".json") and not name.startswith("."):
                h = self.get(name[:-5])
                if h is not None:
                    out.append(h)
        return out

    def save(self, rec: Holding) -> Holding:
        rec = rec if rec.since else replace(rec, since=_now())
        os.makedirs(self.hold_dir, mode=0o700, exist_ok=True)
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
        for name in sorted(_listdir(self.persist_dir)):
            if name.endswith(".json") and not name.startswith("."):
                doc = self._load(os.path.join(self.persist_dir, name))
                if doc is not None and isinstance(doc.get("address"), str):
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
        os.makedirs(os.path.dirname(self.audit_path), mode=0o755, exist_ok=True)
        fd = os.open(self.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

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


def _listdir(d: str) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
