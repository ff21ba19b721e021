"""The read-only listings behind the CLI (and later the agent), free of any CLI framework.

``cli.py`` (Typer) and the fast path below call the same functions, so a listing has one implementation.

Fast path: ``passthru devices|groups|usb|serial --json`` is what scripts and monitoring run most, often in loops on
hosts with thousands of functions. Building the Typer/pydantic command model costs more than reading a large host,
so :func:`fast_main` recognises exactly these argument shapes (global ``--root/--config-dir/--state-dir``, then the
command with ``--json`` and, for devices, ``--kind``/``--all``) and answers without importing Typer. Anything else,
including every error and ``--help``, goes to Typer unchanged.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs start-up time on every CLI call
    from typing import Any

import json
import sys

from .errors import PassthruError, UsageError

__all__ = ["Session", "select_devices", "emit_json", "devices_doc", "groups_doc", "usb_doc", "serial_doc",
           "fast_main", "FAST_COMMANDS"]


class Session:
    """One invocation's view: the host root, config/state paths, and lazily the models and names."""

    def __init__(self, root: str | None = None, config_dir: str | None = None, state_dir: str | None = None) -> None:
        from .config import Paths
        from .host.root import HostRoot

        self.host = HostRoot.from_env(root)
        problem = None if self.host.is_live else self.host.unusable()
        if problem and "Permission" not in problem:
            self.host.check_tree()  # a root that is not even a directory: one line, exit 2, whatever the verb
        self.paths = Paths.for_root(self.host, config_dir, state_dir)
        self._models: list | None = None
        self._namer = None

    def models(self) -> list:
        if self._models is None:
            from .config import load_models

            self._models = load_models(self.paths.models_file)
        return self._models

    def inventory(self, **kw: Any):
        from .discovery import discover

        return discover(self.host, self.models(), **kw)

    def namer(self):
        if self._namer is None:
            from .render import Namer

            self._namer = Namer(self.host)
        return self._namer


def emit_json(doc: Any) -> None:
    """Indented for a person at a terminal; one compact line for pipes and programs (the C encoder: fast)."""
    if sys.stdout.isatty():
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")


def select_devices(s: Session, kind: str | None):
    """(inventory, devices of that kind or all). An unknown kind is a usage error naming the valid ones."""
    from .config import BUILTIN_KINDS

    inv = s.inventory()
    if kind is not None:
        kinds = {d.kind for d in inv.devices} | set(BUILTIN_KINDS) | {m.kind for m in s.models()}
        if kind not in kinds:
            raise UsageError(f"unknown kind {kind!r}; use one of: {', '.join(sorted(kinds))}")
    return inv, [d for d in inv.devices if kind is None or d.kind == kind]


def devices_doc(s: Session, kind: str | None = None) -> dict[str, Any]:
    from .render import devices_document

    inv, selected = select_devices(s, kind)
    return devices_document(inv, selected, s.namer())


def groups_data(s: Session):
    from .host.iommu import scan_groups

    inv = s.inventory(usb=False, serial=False)
    return inv, scan_groups(s.host, inv.pci)


def groups_doc(s: Session) -> dict[str, Any]:
    from .render import SCHEMA, group_json, iommu_json

    inv, gs = groups_data(s)
    return {"schema": SCHEMA, "iommu": iommu_json(inv.iommu), "groups": [group_json(g, inv, s.namer()) for g in gs]}


def usb_doc(s: Session) -> dict[str, Any]:
    from .host.usb import scan_usb
    from .render import SCHEMA, usb_json

    return {"schema": SCHEMA, "usb": [usb_json(u, s.namer()) for u in scan_usb(s.host)]}


def serial_doc(s: Session) -> dict[str, Any]:
    from .host.serial import scan_serial
    from .render import SCHEMA, serial_json

    return {"schema": SCHEMA, "serial": [serial_json(p) for p in scan_serial(s.host)]}


FAST_COMMANDS = {"devices": devices_doc, "groups": groups_doc, "usb": usb_doc, "serial": serial_doc}
_GLOBAL_OPTS = {"--root": "root", "--config-dir": "config_dir", "--state-dir": "state_dir"}


def _parse_fast(argv: list[str]) -> tuple[str, dict[str, str], str | None] | None:
    """(command, global options, kind) when argv is a plain JSON listing, else None."""
    glob: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("--"):
        name, eq, value = argv[i].partition("=")
        if name not in _GLOBAL_OPTS:
            return None
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("-") or not argv[i + 1]:
                return None
            value, i = argv[i + 1], i + 1
        if not value:
            return None
        glob[_GLOBAL_OPTS[name]] = value
        i += 1
    if i >= len(argv) or argv[i] not in FAST_COMMANDS:
        return None
    cmd, rest = argv[i], argv[i + 1:]
    kind = None
    seen_json = False
    j = 0
    while j < len(rest):
        a = rest[j]
        if a == "--json" and not seen_json:
            seen_json = True
        elif cmd == "devices" and a in ("--all", "-a"):
            pass  # only changes the table
        elif cmd == "devices" and kind is None and (a in ("--kind", "-k") or a.startswith("--kind=")):
            if a.startswith("--kind="):
                kind = a[7:]
            elif j + 1 < len(rest) and not rest[j + 1].startswith("-"):
                kind, j = rest[j + 1], j + 1
            else:
                return None
            if not kind:
                return None
        else:
            return None
        j += 1
    return (cmd, glob, kind) if seen_json else None


def fast_main(argv: list[str]) -> int | None:
    """Answer a plain JSON listing without the CLI framework; None when argv is anything else."""
    parsed = _parse_fast(argv)
    if parsed is None:
        return None
    cmd, glob, kind = parsed
    import gc

    gc.disable()  # a short-lived process allocating ~100k small objects: collections would only cost time
    try:
        s = Session(**glob)
        doc = devices_doc(s, kind) if cmd == "devices" else FAST_COMMANDS[cmd](s)
        emit_json(doc)
    except PassthruError as e:
        print(f"passthru: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return 0
    return 0
