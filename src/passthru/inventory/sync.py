"""What discovery feeds the inventory (:class:`DeviceRecord`) and the upsert that keeps the devices table current."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from sqlalchemy import Connection, bindparam, insert, select, update

from ..errors import UsageError
from .schema import ACTIVE_STATES, assignments, devices

__all__ = ["DeviceRecord", "BUSES", "sync"]

BUSES = ("pci", "usb", "serial", "mdev")


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One device as discovery sees it. ``identity`` is stable across reboots and is the key:
    "pci:0000:86:00.0", "usb:1-1.3" (port path), "serial:/dev/ttyS1", "mdev:<uuid>"."""

    identity: str
    bus: str  # pci | usb | serial | mdev
    kind: str  # gpu, nic, nvme, usb, serial, vgpu, a custom model name, other ...
    vendor_id: int | None = None
    device_id: int | None = None
    serial: str | None = None  # USB serial number
    numa_node: int | None = None  # None = unknown (sysfs -1)
    iommu_group: int | None = None
    parent: str | None = None  # PF identity for a VF; parent PCI device for an mdev
    name: str | None = None


_FIELDS = tuple(f.name for f in fields(DeviceRecord))
_IDS = ("vendor_id", "device_id", "serial")


def ids_text(row: dict) -> str | None:
    """"vvvv:dddd[:serial]", or None when the device has no IDs (a serial port)."""
    if row.get("vendor_id") is None and row.get("device_id") is None:
        return None
    s = f"{row.get('vendor_id') or 0:04x}:{row.get('device_id') or 0:04x}"
    return s + (f":{row['serial']}" if row.get("serial") else "")


def _check(records: list[DeviceRecord]) -> None:
    seen: set[str] = set()
    for r in records:
        if not isinstance(r, DeviceRecord):
            raise UsageError(f"sync_devices takes DeviceRecord objects, got {type(r).__name__}")
        if r.bus not in BUSES:
            raise UsageError(f"{r.identity}: bus must be one of {', '.join(BUSES)}, got {r.bus!r}")
        if not r.identity.startswith(r.bus + ":") or len(r.identity) <= len(r.bus) + 1 or len(r.identity) > 255:
            raise UsageError(f"{r.identity!r}: a {r.bus} identity looks like '{r.bus}:<address>'")
        if not r.kind:
            raise UsageError(f"{r.identity}: kind is empty")
        for f in ("vendor_id", "device_id"):
            v = getattr(r, f)
            if v is not None and not 0 <= v <= 0xFFFF:
                raise UsageError(f"{r.identity}: {f} must be 0..0xffff, got {v!r}")
        if r.parent is not None and r.parent == r.identity:
            raise UsageError(f"{r.identity}: a device cannot be its own parent")
        if r.identity in seen:
            raise UsageError(f"{r.identity}: listed twice")
        seen.add(r.identity)


def sync(c: Connection, records: list[DeviceRecord], ts: str) -> dict:
    """The upsert inside one write transaction (see ``Store.sync_devices``)."""
    _check(records)
    d = devices
    old = {r["identity"]: dict(r) for r in c.execute(select(d)).mappings()}
    added, updated, back, replaced, inserts, changes = [], [], [], [], [], []
    for rec in records:
        new = asdict(rec)
        prev = old.get(rec.identity)
        if prev is None:
            inserts.append({**new, "state": "present", "first_seen": ts, "last_seen": ts, "changed": ts})
            added.append(rec.identity)
            continue
        diff = [f for f in _FIELDS if prev[f] != new[f]]
        if not diff and prev["state"] == "present":
            continue
        if prev["state"] != "present":
            back.append(rec.identity)
        if any(f in diff for f in _IDS) and ids_text(prev) is not None:
            replaced.append({"identity": rec.identity, "old": ids_text(prev), "new": ids_text(new),
                             "held_by": _holder(c, rec.identity)})
        changes.append({**{f"b_{k}": v for k, v in new.items()}, "b_changed": ts})
        updated.append(rec.identity)
    present = {r.identity for r in records}
    lost = sorted(i for i, r in old.items() if i not in present and r["state"] == "present")
    if inserts:
        c.execute(insert(d), inserts)
    if changes:
        c.execute(update(d).where(d.c.identity == bindparam("b_identity")).values(
            state="present", changed=bindparam("b_changed"), **{f: bindparam(f"b_{f}") for f in _FIELDS
                                                                if f != "identity"}), changes)
    if lost:
        c.execute(update(d).where(d.c.identity == bindparam("b_identity")).values(state="lost", changed=ts),
                  [{"b_identity": i} for i in lost])
    c.execute(update(d).where(d.c.state == "present").values(last_seen=ts))
    return {"added": added, "updated": updated, "lost": lost, "back": back, "replaced": replaced}


def _holder(c: Connection, identity: str) -> str | None:
    a = assignments
    return c.execute(select(a.c.vm).where(a.c.device == identity, a.c.state.in_(ACTIVE_STATES))).scalar()
