"""How the CLI prints: a Rich console sized for a terminal or a pipe, tables that fit it (tables.py), and one
spelling for values in text output. JSON goes through ``commands.emit_json``, which the fast path prints with too.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .tables import Table

__all__ = ["console", "table", "text"]


def console():
    """A Rich console; Rich is imported on first use (the JSON output of a command never needs it)."""
    from rich.console import Console

    # piped output keeps whole lines (grep/less friendly); a terminal gets its real width
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "0") or 0) or 250
    return Console(highlight=False, soft_wrap=False, width=width)


def table(title: str | None, columns: list[str], drop: tuple[str, ...] = ()):
    """A table that fits the output width (tables.py): names wrap, IDs stay whole, ``drop`` goes first if need be."""
    return Table(title, columns, drop=drop)


def text(v: Any) -> str:
    """A value in text output: "-" for none, booleans as the CLI's own option values (on/off), never Python's."""
    if isinstance(v, bool):
        return "on" if v else "off"
    return "-" if v is None or v == "" else str(v)
