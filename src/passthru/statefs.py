"""Crash-safe files under passthru's config and state directories: atomic replacement, an exclusive lock, append-only
logs, and listings; links are never followed and an unusable directory is one line naming it and the fix.

    write_atomic(path, data, 0o600)   # temp file, fsync, rename, fsync the directory
    with FileLock(path, "a bind"):    # one writer at a time; a second one fails at once, naming the first
        ...
    append_line(log, json_line)       # O_APPEND, fsync; the log's directory is created 0755
    list_names(d)                     # sorted "*.json" entries; [] when d is not there
    fd = open_nofollow(path, os.O_RDONLY)

passthru does not follow symbolic links in its state and config directories: ``open_nofollow`` (O_NOFOLLOW) refuses a
link where a file passthru opens should be, so a link planted there cannot redirect a root write (or a read) to
another file. A directory that is a regular file, a symlink loop, or one passthru may not read is a ConfigError
(exit 2) naming it and the fix, raised where the directory is used.
"""

from __future__ import annotations

import errno
import os

from .errors import ConfigError, HostError

__all__ = ["write_atomic", "unlink_quietly", "write_if_changed", "fsync_dir", "FileLock", "caller", "read_record", "open_nofollow",
           "append_line", "list_names", "ensure_dir", "check_dir", "path_error", "read_only_fs", "DIR_FLAGS"]

DIR_FLAGS = "--state-dir / --config-dir"


def _not_a_dir(path: str) -> str:
    """The nearest ancestor of ``path`` (or ``path`` itself) that exists and is not a directory."""
    p = os.path.abspath(path)
    chain = []
    while True:
        chain.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for p in reversed(chain):
        try:
            if not os.path.isdir(p) and os.path.lexists(p):
                return p
        except OSError:
            return p
    return path


def path_error(path: str, e: OSError, flag: str = DIR_FLAGS, verb: str = "use",
               nofollow: bool = False) -> ConfigError | None:
    """The ConfigError for an OSError on a path under passthru's directories, or None when it is not one of the
    operator-fixable ones (a link, a file where a directory should be, a symlink loop, a permission). ``nofollow``:
    the error comes from an O_NOFOLLOW open, where ELOOP means "the last component is a link"."""
    if e.errno == errno.ELOOP:
        if nofollow and os.path.islink(path):
            return ConfigError(f"{path} is a symbolic link; passthru does not follow links in its state and config "
                               "directories: remove it")
        return ConfigError(f"{path}: too many levels of symbolic links (a symlink loop); fix or remove the link, or "
                           f"pass {flag}")
    if e.errno == errno.ENOTDIR:
        bad = _not_a_dir(path)
        return ConfigError(f"{bad} is not a directory" + ("" if bad == path else f" (needed for {path})")
                           + f"; move it away, or pass {flag}")
    if e.errno == errno.EROFS or e.errno in (errno.EACCES, errno.EPERM) and read_only_fs(path):
        return ConfigError(f"cannot {verb} {path}: it is on a read-only file system; pass {flag} on a writable one")
    if e.errno in (errno.EACCES, errno.EPERM):
        return ConfigError(f"cannot {verb} {path} ({os.strerror(e.errno)}): run as root, or pass {flag}")
    if e.errno == errno.EISDIR:
        return ConfigError(f"{path} is a directory where passthru keeps a file; move it away")
    return None


def read_only_fs(path: str) -> bool:
    """Whether ``path`` (or the nearest ancestor that exists) is on a file system mounted read-only."""
    p = os.path.abspath(path)
    while True:
        try:
            return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
        except OSError:
            parent = os.path.dirname(p)
            if parent == p:
                return False
            p = parent


def _raise(path: str, e: OSError, flag: str = DIR_FLAGS, verb: str = "use", nofollow: bool = False) -> None:
    err = path_error(path, e, flag, verb, nofollow)
    if err is not None:
        raise err from None
    raise e


def check_dir(d: str, flag: str = DIR_FLAGS) -> None:
    """ConfigError (exit 2) when ``d`` exists but cannot be used as a directory: a regular file, a symlink loop, a
    path through a file, or one passthru may not read. A missing ``d`` is fine (it is created on first write)."""
    import stat

    try:
        st = os.stat(d)
    except FileNotFoundError:
        return
    except OSError as e:
        _raise(d, e, flag, "read")
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{d} is not a directory; move it away, or pass {flag}")
    if not os.access(d, os.R_OK | os.X_OK):
        raise ConfigError(f"cannot read {d} (Permission denied): run as root, or pass {flag}")


def ensure_dir(d: str, mode: int = 0o755) -> None:
    """``os.makedirs(d, mode, exist_ok=True)``; a file or a loop in the way is a ConfigError naming it."""
    try:
        os.makedirs(d, mode=mode, exist_ok=True)
    except FileExistsError:
        bad = _not_a_dir(d)
        raise ConfigError(f"{bad} is not a directory; move it away, or pass {DIR_FLAGS}") from None
    except OSError as e:
        if e.errno == errno.ENOENT:  # makedirs makes parents: only a file system that holds no directories says this
            raise ConfigError(f"cannot create {d} ({e.strerror}): not a place for directories; pass {DIR_FLAGS}") \
                from None
        _raise(d, e, verb="create")


def open_nofollow(path: str, flags: int, mode: int = 0o600) -> int:
    """``os.open`` with O_NOFOLLOW | O_CLOEXEC. A symbolic link at ``path`` is refused (ConfigError: remove it), as
    are a file where a directory should be and a permission problem, each with its fix; FileNotFoundError and other
    OSErrors pass through."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        _raise(path, e, nofollow=True)
        raise  # pragma: no cover (_raise always raises)


def append_line(path: str, line: str, mode: int = 0o640) -> None:
    """Append ``line`` and a newline to a log (created ``mode``, its directory 0755), then fsync."""
    import stat

    if "\n" in line:
        raise ValueError("append_line: one line, without a newline")
    ensure_dir(os.path.dirname(path) or ".", 0o755)
    fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{path} is not a regular file; move it away")
        view = memoryview((line + "\n").encode())
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def list_names(d: str, suffix: str = ".json") -> list[str]:
    """Sorted names in ``d`` ending with ``suffix``, hidden ones (".*": temp files) left out; [] when ``d`` is not
    there. A ``d`` that is not a directory or cannot be read is a ConfigError (exit 2) with the fix."""
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    except OSError as e:
        _raise(d, e, DIR_FLAGS, "read")
        raise  # pragma: no cover
    return sorted(n for n in names if n.endswith(suffix) and not n.startswith("."))


def write_if_changed(path: str, data: bytes, mode: int = 0o644) -> bool:
    """:func:`write_atomic` unless ``path`` already holds exactly ``data`` (creating its directory 0755);
    True when it wrote: the "changed" / "unchanged" of idempotent commands."""
    try:
        fd = open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK)
    except ConfigError:
        raise
    except OSError:
        pass
    else:
        with os.fdopen(fd, "rb") as f:
            if f.read() == data:
                return False
    ensure_dir(os.path.dirname(path), 0o755)
    write_atomic(path, data, mode)
    return True


def read_record(path: str, fix: str = "move it away") -> dict | None:
    """A JSON object record passthru wrote (a journal entry, a persisted definition); None when the file is not
    there. An unreadable or foreign file is a ConfigError naming the file and ``fix``; a symbolic link is refused."""
    import json

    try:
        fd = open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except ConfigError:
        raise
    except OSError as e:
        raise ConfigError(f"{path}: unreadable ({e.strerror}); {fix}") from None
    try:
        with open(fd, encoding="utf-8") as f:
            doc = json.load(f)
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
    the new file, never a torn one, even across a crash. A symbolic link at ``path`` is replaced, never followed; a
    file where the directory should be is a ConfigError."""
    import tempfile

    d = os.path.dirname(path)
    ensure_dir(d, 0o755)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".passthru", dir=d)
    except OSError as e:
        _raise(d, e)
        raise  # pragma: no cover
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
        try:
            os.replace(tmp, path)
        except OSError as e:
            _raise(path, e)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(d)


def unlink_quietly(path: str) -> None:
    """Remove a file that may not be there (a temporary file left by a failed write); errors are ignored."""
    try:
        os.unlink(path)
    except OSError:
        pass


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
    """An exclusive, non-blocking flock on ``path`` (created 0600, never through a link). ``what`` names the
    operation holding it. An unusable directory or a link at ``path`` is a ConfigError (exit 2) with the fix."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        self.fd = -1

    def __enter__(self) -> "FileLock":
        import fcntl

        d = os.path.dirname(self.path)
        try:
            ensure_dir(d, 0o755)
            self.fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise HostError(f"cannot use the state directory {d} ({e.strerror}); run as root or pass "
                            "--state-dir") from None
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
