"""The read-only listings (devices, IOMMU groups, USB, serial) as JSON documents, free of any CLI framework.

The CLI (Typer), the agent and the JSON fast path (``service/fastpath.py``) call the same functions, so a listing has
one implementation. Imports inside the functions keep the fast path's start-up short (it imports this module on
every ``passthru devices --json``).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs start-up time on every CLI call
    from typing import Any

import json
import sys

from ..errors import UsageError
from .session import Session

__all__ = ["select_devices", "emit_json", "devices_doc", "groups_data", "groups_doc", "usb_doc", "serial_doc",
           "models_doc"]


def emit_json(doc: Any) -> None:
    """Indented for a person at a terminal; one compact line for pipes and programs (the C encoder: fast)."""
    if sys.stdout.isatty():
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")


def select_devices(s: Session, kind: str | None):
    """(inventory, devices of that kind or all). An unknown kind is a usage error naming the valid ones."""
    from ..config import BUILTIN_KINDS

    inv = s.inventory()
    if kind is not None:
        kinds = {d.kind for d in inv.devices} | set(BUILTIN_KINDS) | {m.kind for m in s.models()}
        if kind not in kinds:
            raise UsageError(f"unknown kind {kind!r}; use one of: {', '.join(sorted(kinds))}")
    return inv, [d for d in inv.devices if kind is None or d.kind == kind]


def devices_doc(s: Session, kind: str | None = None) -> dict[str, Any]:
    from ..render import devices_document

    inv, selected = select_devices(s, kind)
    return devices_document(inv, selected, s.namer())


def groups_data(s: Session):
    from ..host.iommu import scan_groups

    inv = s.inventory(usb=False, serial=False)
    return inv, scan_groups(s.host, inv.pci)


def groups_doc(s: Session) -> dict[str, Any]:
    from ..render import SCHEMA, group_json, iommu_json

    from ..host.isolation import explain_groups

    inv, gs = groups_data(s)
    why = explain_groups(inv, gs)
    return {"schema": SCHEMA, "iommu": iommu_json(inv.iommu),
            "groups": [group_json(g, inv, s.namer(), why[g.number]) for g in gs]}


def usb_doc(s: Session) -> dict[str, Any]:
    from ..host.usb import scan_usb
    from ..render import SCHEMA, usb_json

    return {"schema": SCHEMA, "usb": [usb_json(u, s.namer()) for u in scan_usb(s.host)]}


def serial_doc(s: Session) -> dict[str, Any]:
    from ..host.serial import scan_serial
    from ..render import SCHEMA, serial_json

    return {"schema": SCHEMA, "serial": [serial_json(p) for p in scan_serial(s.host)]}


def models_doc(models: list) -> dict[str, Any]:
    """The custom models (``config.load_models``) as ``passthru model list --json`` and ``GET /models`` show them."""
    return {"schema": 1, "models": [{"name": m.name, "vendor_id": f"{m.vendor_id:04x}",
                                     "device_id": f"{m.device_id:04x}", "kind": m.kind,
                                     "description": m.description} for m in models]}
