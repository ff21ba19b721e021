"""Run a function as another user in a forked child: what root may read, uid 65534 may not."""

from __future__ import annotations

import os

NOBODY = 65534


def as_nobody(fn, *args) -> str:
    """Run ``fn(*args)`` in a child process as uid/gid 65534 (root reads everything); its error as
    ``"TypeName: message"``, or "ok". Needs root."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.close(r)
        msg = "ok"
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            msg = f"{type(e).__name__}: {e}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out
