"""No test outside the lab may change the real host: an audit hook (PEP 578) that refuses, while a non-lab test runs,
every write under the host's kernel and system paths, and every passthru CLI subprocess aimed at the real root.

``sys.addaudithook`` sees what Python code does, whatever module does it: ``open``/``os.open`` (with their flags),
``os.mkdir``, ``os.remove``, ``os.rename``, ``os.chmod``... and ``subprocess.Popen`` (its argv and env). A write under
:data:`GUARDED` (after resolving symlinks, so a fixture tree's link into the real ``/sys`` is caught too) raises
:class:`HostTouched` in the code that tried it, and is recorded: conftest.py fails the test even if the code under
test swallowed the exception. A ``passthru`` CLI subprocess (``python -m passthru``, ``passthru``) whose root is the
real ``/`` (no ``--root`` and no ``PASSTHRU_ROOT``, or either naming ``/``) is refused the same way, unless it only
prints (``--version``, ``--help``, ``completion``). Non-Python subprocesses (QEMU, libvirtd) are the tests' own
helpers, started on fixture paths; the lab (``-m lab``) is exempt: its guests are where real writes belong.
"""

from __future__ import annotations

import os
import sys
import threading

GUARDED = ("/sys", "/proc", "/dev", "/etc", "/boot", "/lib/modules", "/usr/lib/modules", "/var/lib/passthru",
           "/run/passthru", "/var/log/passthru")
ALLOWED = ("/dev/null", "/dev/shm", "/dev/pts", "/dev/ptmx", "/dev/tty", "/dev/fd", "/dev/stdout", "/dev/stderr",
           "/proc/self/fd", "/dev/full")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PRINT_ONLY = {"--version", "--help", "-h", "completion"}
CLI_OPTIONS_WITH_VALUE = {"--root", "--config-dir", "--state-dir"}

_state = threading.local()
_active: list[str] = []   # the node id of the running non-lab test (empty: guard off)
violations: list[str] = []


class HostTouched(PermissionError):
    """A non-lab test tried to change the real host."""


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def _resolve(path: object, dir_fd: object = None, follow: bool = True) -> str | None:
    if isinstance(path, int) or path is None:
        return None  # an fd: whoever opened it was checked then
    p = os.fsdecode(path)  # type: ignore[arg-type]
    if not os.path.isabs(p):
        base = os.readlink(f"/proc/self/fd/{dir_fd}") if isinstance(dir_fd, int) else os.getcwd()
        p = os.path.join(base, p)
    if not follow:  # the operation acts on the name itself (remove, rename, symlink...), not on a link's target
        head, tail = os.path.split(os.path.normpath(p))
        return os.path.join(os.path.realpath(head), tail)
    return os.path.realpath(p)


def guarded(path: object, dir_fd: object = None, follow: bool = True) -> str | None:
    """The resolved path when it is one a non-lab test may not change, else None."""
    p = _resolve(path, dir_fd, follow)
    if p is None or not _under(p, GUARDED) or _under(p, ALLOWED):
        return None
    return p


def _cli_root_problem(args: object, env: object) -> str | None:
    """Why a subprocess argv is the passthru CLI run against the real root, or None."""
    if isinstance(args, (str, bytes, os.PathLike)):
        argv = [os.fsdecode(args)]
    else:
        argv = [os.fsdecode(a) for a in args]  # type: ignore[union-attr]
    if not argv:
        return None
    if os.path.basename(argv[0]) == "passthru":
        rest = argv[1:]
    elif "-m" in argv and argv.index("-m") + 1 < len(argv) and argv[argv.index("-m") + 1] == "passthru":
        rest = argv[argv.index("-m") + 2:]
    else:
        return None
    root = None
    verb = None
    i = 0
    while i < len(rest):
        a = rest[i]
        if a in PRINT_ONLY and verb in (None, "completion"):
            return None
        if a in CLI_OPTIONS_WITH_VALUE:
            if a == "--root" and i + 1 < len(rest):
                root = rest[i + 1]
            i += 2
            continue
        if a.startswith("--root="):
            root = a.split("=", 1)[1]
        elif not a.startswith("-") and verb is None:
            verb = a
            if verb in PRINT_ONLY:
                return None
        i += 1
    if root is None:
        environ = env if env is not None else os.environ
        root = next((os.fsdecode(v) for k, v in environ.items() if os.fsdecode(k) == "PASSTHRU_ROOT"), None) or None  # type: ignore[union-attr]
    if root is None or os.path.realpath(root) == "/":
        return f"passthru CLI run against the real root /: {' '.join(argv)}"
    return None


def _check(event: str, args: tuple) -> str | None:
    if event == "open":
        path, _mode, flags = args
        if isinstance(flags, int) and flags & WRITE_FLAGS and (p := guarded(path)):
            return f"open for writing: {p}"
    elif event in ("os.chmod", "os.chown", "os.utime"):
        if (p := guarded(args[0], args[-1])):
            return f"{event}: {p}"
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.mknod", "os.mkfifo", "shutil.rmtree"):
        dir_fd = args[-1] if event != "shutil.rmtree" else (args[1] if len(args) > 1 else None)
        if (p := guarded(args[0], dir_fd, follow=False)):
            return f"{event}: {p}"
    elif event == "os.truncate":
        if (p := guarded(args[0])):
            return f"{event}: {p}"
    elif event == "os.rename":
        for path, dir_fd in ((args[0], args[2]), (args[1], args[3])):
            if (p := guarded(path, dir_fd, follow=False)):
                return f"{event}: {p}"
    elif event == "os.link":
        if (p := guarded(args[1], args[3], follow=False)):
            return f"{event}: {p}"
    elif event == "os.symlink":
        if (p := guarded(args[1], args[2], follow=False)):
            return f"{event}: {p}"
    elif event == "subprocess.Popen":
        return _cli_root_problem(args[1], args[3])
    return None


_EVENTS = {"open", "os.mkdir", "os.remove", "os.rmdir", "os.chmod", "os.chown", "os.utime", "os.mknod", "os.mkfifo",
           "shutil.rmtree", "os.truncate", "os.rename", "os.link", "os.symlink", "subprocess.Popen"}


def _hook(event: str, args: tuple) -> None:
    if not _active or event not in _EVENTS or getattr(_state, "busy", False):
        return
    _state.busy = True
    try:
        problem = _check(event, args)
    finally:
        _state.busy = False
    if problem is not None:
        message = f"{_active[0]}: a non-lab test may not touch the real host ({problem})"
        violations.append(message)
        raise HostTouched(message)


_installed: list[bool] = []


def install() -> None:
    """Add the audit hook (once per process; audit hooks cannot be removed, so it is switched by :func:`active`)."""
    if not _installed:
        sys.addaudithook(_hook)
        _installed.append(True)


class expect:
    """``with expect() as e: ...``: for the guard's own tests; the violations inside are taken off the record
    (so they do not fail the calling test) and left in ``e.seen`` to assert on."""

    def __enter__(self) -> "expect":
        self._mark = len(violations)
        return self

    def __exit__(self, *exc: object) -> None:
        self.seen = violations[self._mark:]
        del violations[self._mark:]


class active:
    """``with active(nodeid): ...``: the guard is on, and the violations seen inside are returned by ``.seen``."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.seen: list[str] = []

    def __enter__(self) -> "active":
        self._mark = len(violations)
        _active[:] = [self.nodeid]
        return self

    def __exit__(self, *exc: object) -> None:
        _active.clear()
        self.seen = violations[self._mark:]
