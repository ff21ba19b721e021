"""HostRoot: the one place that knows where the host's /sys, /proc, /dev, /etc, /boot and /run live.

Every reader in passthru takes a HostRoot. ``HostRoot("/")`` is the running host; ``HostRoot("/tmp/tree")`` is a
fixture or a captured host (``passthru --root DIR`` / ``PASSTHRU_ROOT``). The literal ``"/sys"`` and friends appear
only here.

Readers are forgiving on purpose: a device can vanish mid-scan, an attribute can be unreadable (permissions, an
I/O error from a dead device) or absent on an older kernel. ``read()`` and friends return ``None`` then, and the
caller decides what "unknown" means. Strings are used for paths (not pathlib) because discovery walks thousands of
files and pathlib's object churn is measurable there.
"""

from __future__ import annotations

import os
from typing import Iterator

__all__ = ["HostRoot", "ROOT_ENV"]

ROOT_ENV = "PASSTHRU_ROOT"


class HostRoot:
    """A host's filesystem view, rooted at ``base`` ("/" for the real host)."""

    __slots__ = ("base", "sys", "proc", "dev", "etc", "boot", "run", "usr")

    def __init__(self, base: str | os.PathLike[str] = "/") -> None:
        b = os.path.abspath(os.fspath(base))
        self.base = b
        prefix = "" if b == "/" else b
        self.sys = prefix + "/sys"
        self.proc = prefix + "/proc"
        self.dev = prefix + "/dev"
        self.etc = prefix + "/etc"
        self.boot = prefix + "/boot"
        self.run = prefix + "/run"
        self.usr = prefix + "/usr"

    @classmethod
    def from_env(cls, base: str | None = None) -> "HostRoot":
        """The root named by ``base``, else by $PASSTHRU_ROOT, else the running host."""
        return cls(base or os.environ.get(ROOT_ENV) or "/")

    @property
    def is_live(self) -> bool:
        return self.base == "/"

    def __repr__(self) -> str:
        return f"HostRoot({self.base!r})"

    # -- paths -----------------------------------------------------------------------------------------
    def path(self, abspath: str) -> str:
        """Map a host-absolute path ("/sys/bus/pci") into this root."""
        if not abspath.startswith("/"):
            raise ValueError(f"host path must be absolute: {abspath!r}")
        return abspath if self.base == "/" else self.base + abspath

    def host_path(self, path: str) -> str:
        """Inverse of :meth:`path`: strip the root prefix so a path can be shown as the host sees it."""
        if self.base != "/" and (path == self.base or path.startswith(self.base + "/")):
            return path[len(self.base):] or "/"
        return path

    # -- forgiving readers -----------------------------------------------------------------------------
    @staticmethod
    def read(path: str) -> str | None:
        """The stripped text of a file, or None when it is missing or unreadable."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        return data.decode("utf-8", "replace").strip()

    @staticmethod
    def read_bytes(path: str, limit: int = -1) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read(limit)
        except OSError:
            return None

    @classmethod
    def read_int(cls, path: str, base: int = 10) -> int | None:
        """An integer attribute; base 0 accepts "0x10de". None when absent or malformed."""
        text = cls.read(path)
        if text is None:
            return None
        try:
            return int(text.split()[0], base) if text else None
        except (ValueError, IndexError):
            return None

    @classmethod
    def read_hex(cls, path: str) -> int | None:
        """A hex attribute such as "0x10de" or "10de"."""
        return cls.read_int(path, 16)

    @staticmethod
    def readlink(path: str) -> str | None:
        try:
            return os.readlink(path)
        except OSError:
            return None

    @staticmethod
    def link_name(path: str) -> str | None:
        """The last component of a symlink's target ("vfio-pci" for a driver link), or None."""
        try:
            target = os.readlink(path)
        except OSError:
            return None
        return target.rstrip("/").rsplit("/", 1)[-1]

    @staticmethod
    def realpath(path: str) -> str:
        return os.path.realpath(path)

    @staticmethod
    def listdir(path: str) -> list[str]:
        """Sorted entries of a directory; [] when it is missing or unreadable."""
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    @staticmethod
    def exists(path: str) -> bool:
        return os.path.lexists(path)

    @staticmethod
    def isdir(path: str) -> bool:
        return os.path.isdir(path)

    @staticmethod
    def walk_links(path: str, prefix: str) -> Iterator[tuple[str, str]]:
        """(name, target basename) for each symlink in ``path`` whose name starts with ``prefix``."""
        try:
            entries = os.scandir(path)
        except OSError:
            return
        with entries:
            for e in entries:
                if e.name.startswith(prefix) and e.is_symlink():
                    try:
                        yield e.name, os.readlink(e.path).rstrip("/").rsplit("/", 1)[-1]
                    except OSError:
                        continue
