"""The intent journal of passthru's multi-step operations: what an operation is about to do, written before its
first change and removed after its last, so that whatever a ``kill -9`` interrupts is finished or undone by
``passthru reconcile``.

    j = Journal(os.path.join(paths.state_dir, "journal"))
    with j.begin("vfio.bind", members=[...]) as op:   # <dir>/<id>.json written (fsync), <dir>/<id>.lock held
        ...; op.update(phase="bound")                 # atomically rewritten
        op.done()                                     # the record goes: the operation finished (or was undone)
    # an exception leaves the record: the operation's own rollback, or reconcile, settles it

    for op in j.orphans():                            # operations whose process is gone (their lock is free)
        ...recover...; op.done()

An operation is alive while its process holds an flock on ``<id>.lock``; the kernel drops the lock when the process
dies, however it dies, so "orphan" needs no pid guessing. A record's file name must match the ``id`` inside it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time

from .errors import ConfigError
from .statefs import caller, ensure_dir, fsync_dir, list_names, open_nofollow, read_record, write_atomic

__all__ = ["Journal", "Op", "journal_for"]

_ID = re.compile(r"^[0-9a-f]{16}-[0-9]{1,10}$")
_SCHEMA = 1


class Op:
    """One operation's record. ``doc`` holds the fields passed to begin/update (and ``kind``, ``id``...)."""

    def __init__(self, journal: "Journal", doc: dict, lock_fd: int) -> None:
        self.journal = journal
        self.doc = doc
        self._fd = lock_fd

    @property
    def id(self) -> str:
        return self.doc["id"]

    @property
    def kind(self) -> str:
        return self.doc["kind"]

    def get(self, key: str, default: object = None) -> object:
        return self.doc.get(key, default)

    def update(self, **fields: object) -> None:
        self.doc.update(fields)
        self.journal._write(self.doc)

    def done(self) -> None:
        """The operation is over (finished, or fully undone): drop its record, then its lock."""
        self.journal._drop(self.id)
        self.release()

    def release(self) -> None:
        """Let go of the lock without dropping the record (the process goes on; the record waits for reconcile)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "Op":
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None and self._fd >= 0:
            self.done()
        else:
            self.release()


class Journal:
    def __init__(self, directory: str) -> None:
        self.dir = directory

    def _path(self, op_id: str, ext: str) -> str:
        return os.path.join(self.dir, f"{op_id}.{ext}")

    def _lock(self, op_id: str, *, wait: bool) -> int | None:
        fd = open_nofollow(self._path(op_id, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            os.close(fd)
            return None
        return fd

    def _write(self, doc: dict) -> None:
        write_atomic(self._path(doc["id"], "json"), (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(),
                     0o600)

    def _drop(self, op_id: str) -> None:
        for ext in ("json", "lock"):
            try:
                os.unlink(self._path(op_id, ext))
            except FileNotFoundError:
                pass
        fsync_dir(self.dir)

    def begin(self, kind: str, **fields: object) -> Op:
        """Record the intent of an operation (before its first change) and hold its lock."""
        ensure_dir(self.dir, 0o700)
        op_id = f"{time.time_ns():016x}-{os.getpid()}"
        fd = self._lock(op_id, wait=True)
        assert fd is not None
        doc = {"schema": _SCHEMA, "id": op_id, "kind": kind, "pid": os.getpid(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": caller(), **fields}
        try:
            self._write(doc)
        except BaseException:
            os.close(fd)
            self._drop(op_id)
            raise
        return Op(self, doc, fd)

    def _ids(self) -> list[str]:
        return [n[:-5] for n in list_names(self.dir)]

    def _load(self, op_id: str) -> dict | None:
        path = self._path(op_id, "json")
        fix = "move it away, then run `passthru reconcile`"
        doc = read_record(path, fix)
        if doc is None:
            return None
        if not _ID.match(op_id) or doc.get("id") != op_id or not isinstance(doc.get("kind"), str):
            raise ConfigError(f"{path}: not a passthru journal record (its name and content disagree); {fix}")
        return doc

    def entries(self, prefix: str = "") -> list[dict]:
        """Every record (live or orphaned) whose kind starts with ``prefix``, oldest first."""
        out = []
        for op_id in self._ids():
            doc = self._load(op_id)
            if doc is not None and doc["kind"].startswith(prefix):
                out.append(doc)
        return out

    def orphans(self, prefix: str = "") -> list[Op]:
        """Operations whose process is gone, oldest first, each with its lock now held by the caller."""
        out = []
        for doc in self.entries(prefix):
            fd = self._lock(doc["id"], wait=False)
            if fd is None:
                continue  # alive: another process runs it
            fresh = self._load(doc["id"])  # it may have finished between the listing and the lock
            if fresh is None:
                os.close(fd)
                self._drop(doc["id"])
                continue
            out.append(Op(self, fresh, fd))
        return out

    def live(self, prefix: str = "") -> list[dict]:
        """Records of operations still running (their lock is held by another process)."""
        out = []
        for doc in self.entries(prefix):
            fd = self._lock(doc["id"], wait=False)
            if fd is None:
                out.append(doc)
            else:
                os.close(fd)
        return out


def journal_for(state_dir: str) -> Journal:
    """The journal of one state directory (``<state>/journal``): takeover, assign and release operations."""
    return Journal(os.path.join(state_dir, "journal"))
