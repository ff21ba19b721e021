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

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs start-up time on every CLI call
    from typing import Iterator

import os

__all__ = ["HostRoot", "DirReader", "ROOT_ENV", "parse_int"]

ROOT_ENV = "PASSTHRU_ROOT"


def parse_int(text: str | None, base: int = 10) -> int | None:
    """The first word of an attribute as an integer; None when absent, empty or malformed."""
    if not text:
        return None
    try:
        return int(text.split()[0], base)
    except (ValueError, IndexError):
        return None


def _read_raw(path: str, limit: int) -> bytes | None:
    """Read a file with plain syscalls (no io buffering objects: discovery reads tens of thousands of sysfs
    attributes, each at most a page). ``limit`` -1 reads to EOF."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if limit >= 0:
            return os.read(fd, limit)
        first = os.read(fd, 65536)
        if len(first) < 4096:  # a sysfs attribute is at most one page and comes in one read
            return first
        chunks = [first]
        while b := os.read(fd, 65536):
            chunks.append(b)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


class DirReader:
    """Reads names inside one open directory (``openat``-style): the kernel resolves only the last component,
    not the whole /sys/bus/pci/devices/<link>/... path again for every attribute. Same forgiving semantics as
    HostRoot's readers: None / [] for anything missing or unreadable."""

    __slots__ = ("fd", "path")

    def __init__(self, path: str, parent: "DirReader | None" = None) -> None:
        """Open ``path``; with ``parent``, ``path`` is a name inside that open directory."""
        self.path = path if parent is None else f"{parent.path}/{path}"
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                          dir_fd=None if parent is None else parent.fd)

    def sub(self, name: str) -> "DirReader | None":
        """A reader on a subdirectory (symlinks followed), or None when it is missing."""
        try:
            return DirReader(name, self)
        except OSError:
            return None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "DirReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_bytes(self, name: str, limit: int = 4096) -> bytes | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError:
            return None
        try:
            return os.read(fd, limit)
        except OSError:
            return None
        finally:
            os.close(fd)

    def read(self, name: str) -> str | None:
        """The stripped text of a one-page attribute."""
        data = self.read_bytes(name)
        return None if data is None else data.decode("utf-8", "replace").strip()

    def read_int(self, name: str, base: int = 10) -> int | None:
        data = self.read_bytes(name)
        try:
            return int(data, base) if data else None
        except ValueError:
            return None

    def has(self, name: str) -> bool:
        """Whether ``name`` exists (links not followed). No exception on the common "absent" path, so probing
        optional attributes this way is cheaper than trying to open them."""
        return os.access(name, os.F_OK, dir_fd=self.fd, follow_symlinks=False)

    def readlink(self, name: str) -> str | None:
        try:
            return os.readlink(name, dir_fd=self.fd)
        except OSError:
            return None

    def link_name(self, name: str) -> str | None:
        try:
            return os.readlink(name, dir_fd=self.fd).rsplit("/", 1)[-1]
        except OSError:
            return None

    def listdir(self, name: str) -> list[str]:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError:
            return []
        try:
            return sorted(os.listdir(fd))
        except OSError:
            return []
        finally:
            os.close(fd)


class HostRoot:
    """A host's filesystem view, rooted at ``base`` ("/" for the real host).

    A root the operator names (:meth:`from_env`: ``--root`` / ``PASSTHRU_ROOT``) must be a host tree, which the
    running host, a fixture and an extracted ``passthru capture`` all are: a directory with ``sys/`` and ``proc/``
    directories. Its ``sys`` and ``proc`` paths are checked the first time they are used (:meth:`check_tree`: a
    UsageError naming what is missing), so a mistyped ``--root`` is one line and exit 2, not an empty host with the
    IOMMU off; verbs that only write files into a root (installing units into an image) never use them and work on
    any directory. ``HostRoot(path)`` in code is not checked unless ``check=True``."""

    __slots__ = ("base", "_sys", "_proc", "_checked", "dev", "etc", "boot", "run", "usr")

    def __init__(self, base: str | os.PathLike[str] = "/", *, check: bool = False) -> None:
        b = os.path.abspath(os.fspath(base))
        self.base = b
        prefix = "" if b == "/" else b
        self._sys = prefix + "/sys"
        self._proc = prefix + "/proc"
        self._checked = b == "/" or not check
        self.dev = prefix + "/dev"
        self.etc = prefix + "/etc"
        self.boot = prefix + "/boot"
        self.run = prefix + "/run"
        self.usr = prefix + "/usr"

    @classmethod
    def from_env(cls, base: str | None = None) -> "HostRoot":
        """The root named by ``base``, else by $PASSTHRU_ROOT, else the running host; checked to be a host tree
        when first read (see the class)."""
        return cls(base or os.environ.get(ROOT_ENV) or "/", check=True)

    @property
    def sys(self) -> str:
        if not self._checked:
            self.check_tree()
        return self._sys

    @property
    def proc(self) -> str:
        if not self._checked:
            self.check_tree()
        return self._proc

    def check_tree(self) -> None:
        """UsageError (exit 2) unless this root is "/" or a host tree: a directory holding ``sys/`` and ``proc/``."""
        from ..errors import UsageError

        if self.base == "/":
            return
        fix = "name a host tree: / or an extracted `passthru capture` (tar xzf FILE -C DIR)"
        where = f"host root {self.base} (--root / {ROOT_ENV})"
        problem = self.unusable()
        if problem:
            raise UsageError(f"{where} {problem}; " + ("run as root, or " + fix[0].lower() + fix[1:]
                                                       if "Permission" in problem else fix))
        missing = [d + "/" for d in ("sys", "proc") if not os.path.isdir(os.path.join(self.base, d))]
        if missing:
            raise UsageError(f"{where} is not a host tree: no {' and no '.join(missing)} in it; {fix}")
        self._checked = True

    def unusable(self) -> str | None:
        """Why this root cannot be a host tree at all ("does not exist", "is not a directory", "cannot be read
        (Permission denied)"), or None when it is a directory (sys/ and proc/ not checked)."""
        try:
            st = os.stat(self.base)
        except FileNotFoundError:
            return "does not exist"
        except NotADirectoryError:
            return "is not a directory"
        except OSError as e:
            return f"cannot be read ({e.strerror})"
        import stat

        return None if stat.S_ISDIR(st.st_mode) else "is not a directory"

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
        data = _read_raw(path, -1)
        return None if data is None else data.decode("utf-8", "replace").strip()

    @staticmethod
    def read_bytes(path: str, limit: int = -1) -> bytes | None:
        return _read_raw(path, limit)

    @classmethod
    def read_int(cls, path: str, base: int = 10) -> int | None:
        """An integer attribute; base 0 accepts "0x10de". None when absent or malformed."""
        return parse_int(cls.read(path), base)

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
    def opendir(path: str) -> DirReader | None:
        """A :class:`DirReader` on ``path``, or None when it is missing (a device that vanished)."""
        try:
            return DirReader(path)
        except OSError:
            return None

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
