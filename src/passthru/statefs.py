"""Crash-safe files under passthru's config and state directories: atomic replacement and an exclusive lock.

    write_atomic(path, data, 0o600)   # temp file, fsync, rename, fsync the directory
    with FileLock(path, "a bind"):    # one writer at a time; a second one fails at once, naming the first
        ...
"""

from __future__ import annotations

import os

from .errors import HostError

__all__ = ["write_atomic", "write_if_changed", "fsync_dir", "FileLock", "caller", "read_record"]


def write_if_changed(path: str, data: bytes, mode: int = 0o644) -> bool:
    """:func:`write_atomic` unless ``path`` already holds exactly ``data`` (creating its directory 0755);
    True when it wrote: the "changed" / "unchanged" of idempotent commands."""
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    write_atomic(path, data, mode)
    return True


def read_record(path: str, fix: str = "move it away") -> dict | None:
    """A JSON object record passthru wrote (a journal entry, a persisted definition); None when the file is not
    there. An unreadable or foreign file is a ConfigError naming the file and ``fix``."""
    import json

    from .errors import ConfigError

    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e}); {fix}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not a JSON object; {fix}")
    return doc


def caller() -> dict:
    """Who is changing the host, for audit records: uid, user, the login behind sudo, pid and command line."""
    import getpass
    import sys

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"uid": os.getuid(), "user": user, "sudo_user": os.environ.get("SUDO_USER"), "pid": os.getpid(),
            "cmd": " ".join(sys.argv[:8])[:300]}


def write_atomic(path: str, data: bytes, mode: int = 0o644, uid: int | None = None, gid: int | None = None) -> None:
    """temp file in the same directory, fsync, rename over ``path``, fsync the directory: readers see the old or
    the new file, never a torn one, even across a crash."""
    import tempfile

    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".passthru", dir=d)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            if uid is not None and gid is not None and (uid, gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(fd, uid, gid)
                except PermissionError:
                    pass
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(d)


def fsync_dir(d: str) -> None:
    try:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


class FileLock:
    """An exclusive, non-blocking flock on ``path`` (created 0600). ``what`` names the operation holding it."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        self.fd = -1

    def __enter__(self) -> "FileLock":
        import fcntl

        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise HostError(f"cannot use the state directory {os.path.dirname(self.path)} ({e.strerror}); "
                            "run as root or pass --state-dir") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = -1
            raise HostError(f"another {self.what} is running ({self.path} is locked); wait for it and retry") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
