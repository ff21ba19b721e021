"""Named crash points in passthru's multi-step writes, for proving that a ``kill -9`` at any step is recoverable.

Each journal step and each kernel write calls :func:`hit` with its name (``vfio.bind.unbound``,
``assign.claimed``...). Normally that is a no-op. Crash tests switch points on:

    PASSTHRU_FAILPOINTS=vfio.bind.unbound        the process SIGKILLs itself the first time that point is reached
    PASSTHRU_FAILPOINTS=vfio.bind.unbound:2      ... the second time
    PASSTHRU_FAILPOINTS=@7                       ... at the 7th point reached, whatever its name
    PASSTHRU_FAILPOINTS_TRACE=FILE               append every point reached to FILE, one name per line

SIGKILL is exactly ``kill -9``: no ``finally``, no ``atexit``, no flush. The real-kernel lab uses this to kill an
operation at every step it passes (the trace lists them); fixture tests in one process install a handler that
raises instead (:func:`set_handler`).
"""

from __future__ import annotations

import os
import signal
from typing import Callable

__all__ = ["hit", "set_handler", "configure", "ENV", "TRACE_ENV"]

ENV = "PASSTHRU_FAILPOINTS"
TRACE_ENV = "PASSTHRU_FAILPOINTS_TRACE"

_handler: Callable[[str], None] | None = None
_parsed: tuple[str, dict[str, int], int | None] = ("", {}, None)
_seen: dict[str, int] = {}
_total = 0


def set_handler(fn: Callable[[str], None] | None) -> None:
    """Call ``fn(name)`` at every point (tests: raise to simulate the kill); None switches it off."""
    global _handler
    _handler = fn


def configure(spec: str | None) -> None:
    """Use ``spec`` (the PASSTHRU_FAILPOINTS syntax) from now on and restart the counts (a forked test child)."""
    global _total
    if spec is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = spec
    _seen.clear()
    _total = 0


def _rules(spec: str) -> tuple[dict[str, int], int | None]:
    global _parsed
    if _parsed[0] == spec:
        return _parsed[1], _parsed[2]
    names: dict[str, int] = {}
    nth = None
    for item in filter(None, (x.strip() for x in spec.split(","))):
        if item.startswith("@") and item[1:].isdigit():
            nth = int(item[1:])
            continue
        name, _, count = item.partition(":")
        names[name] = int(count) if count.isdigit() else 1
    _parsed = (spec, names, nth)
    return names, nth


def hit(name: str) -> None:
    """Point ``name`` is reached. A no-op unless a test switched failpoints on."""
    global _total
    spec = os.environ.get(ENV)
    trace = os.environ.get(TRACE_ENV)
    if _handler is None and not spec and not trace:
        return
    _total += 1
    _seen[name] = _seen.get(name, 0) + 1
    if trace:
        fd = os.open(trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{name}\n".encode())
        finally:
            os.close(fd)
    if _handler is not None:
        _handler(name)
    if spec:
        names, nth = _rules(spec)
        if _total == nth or names.get(name) == _seen[name]:
            os.kill(os.getpid(), signal.SIGKILL)
