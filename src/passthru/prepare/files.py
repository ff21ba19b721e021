"""The file changes a plan is made of (``prepare`` and its ``--early`` part): old and new content with a diff, and
whether passthru may rewrite a file at all."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

from ..host.root import HostRoot

__all__ = ["FileChange", "change", "diff", "editable"]


def diff(path: str, old: str | None, new: str | None) -> str:
    a = [] if old is None else old.splitlines(keepends=True)
    b = [] if new is None else new.splitlines(keepends=True)
    out = []
    for line in difflib.unified_diff(a, b, "/dev/null" if old is None else path,
                                     "/dev/null" if new is None else path):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


@dataclass(frozen=True)
class FileChange:
    path: str  # host path ("/etc/default/grub")
    old: str | None  # None: the file does not exist and will be created
    new: str
    diff: str
    restore_as: str | None = None  # for a created file: rollback writes this instead of removing it

    @property
    def created(self) -> bool:
        return self.old is None


def change(path: str, old: str | None, new: str, restore_as: str | None = None) -> FileChange:
    return FileChange(path, old, new, diff(path, old, new), restore_as)


def editable(h: HostRoot, path: str) -> str | None:
    """Why passthru will not rewrite ``path`` (a symlink or not a regular file), or None."""
    p = h.path(path)
    if os.path.islink(p):
        return f"{path} is a symbolic link; passthru rewrites regular files only"
    if os.path.exists(p) and not os.path.isfile(p):
        return f"{path} is not a regular file"
    return None
