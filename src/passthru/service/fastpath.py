"""Fast path: ``passthru devices|groups|usb|serial --json`` without the CLI framework.

These listings are what scripts and monitoring run most, often in loops on hosts with thousands of functions.
Building the Typer/pydantic command model costs more than reading a large host, so :func:`fast_main` recognises
exactly these argument shapes (global ``--root/--config-dir/--state-dir``, then the command with ``--json`` and, for
devices, ``--kind``/``--all``) and answers without importing Typer. Anything else, including every error and
``--help``, goes to the CLI unchanged. ``__main__`` imports this module first, so it imports only the cheap ones.
"""

from __future__ import annotations

import sys

from ..errors import PassthruError
from .listings import devices_doc, emit_json, groups_doc, serial_doc, usb_doc
from .session import Session

__all__ = ["fast_main", "FAST_COMMANDS"]

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
