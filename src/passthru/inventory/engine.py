"""One SQLAlchemy engine per store, set up so that a claim's check-then-insert cannot interleave with another's.

SQLite (the embedded default):
    - Every write transaction starts with ``BEGIN IMMEDIATE`` (the pysqlite recipe: the driver's own BEGIN is
      switched off with ``isolation_level = None`` and the engine's ``begin`` event emits ours). The write lock is
      taken before the first read, so two claimers are serialized and the loser waits (``busy_timeout``) instead
      of failing. A deferred ``BEGIN`` would upgrade a read lock mid-transaction and fail at once with
      "database is locked" (the busy handler is not used for that upgrade).
    - Read-only transactions (:func:`reading`) use a plain deferred ``BEGIN``: in WAL mode they see a snapshot
      and never wait for the writer.
    - Per connection: ``busy_timeout``, ``foreign_keys=ON``, ``synchronous=NORMAL``; the database is put in WAL
      mode once. With WAL, NORMAL syncs at checkpoints instead of at every commit: a commit survives a crash of
      the process or the OS, but the last few can be lost on power failure (when the VMs are gone too).
PostgreSQL (later, same code):
    - The engine runs every transaction at ``SERIALIZABLE``. Exclusivity spans rows that a unique index cannot
      tie together (a PF and its VFs, the devices of an IOMMU group), so the checks need serializable snapshots:
      PostgreSQL aborts one of two transactions whose reads and writes overlap (SQLSTATE 40001, or 40P01 for a
      deadlock) and :func:`writing` retries it from the start, where it sees the winner's row. Migrations run at
      READ COMMITTED behind a transaction-scoped advisory lock, so that of two first starts the second waits and
      then sees the first one's tables (a serializable snapshot would be taken before the wait).
Nothing else here or in the queries is dialect-specific.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from typing import Callable, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError

from ..errors import HostError

__all__ = ["make_engine", "writing", "reading", "fork_guard", "BUSY_TIMEOUT_S"]

T = TypeVar("T")
BUSY_TIMEOUT_S = 30.0
_RETRY_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
_READONLY = "passthru_readonly"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    if url.startswith("postgresql"):
        return create_engine(url, isolation_level="SERIALIZABLE", pool_pre_ping=True)
    return create_engine(url)


def _sqlite_engine(url: str) -> Engine:
    eng = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(eng, "connect")
    def _connect(dbapi_conn, _rec) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # the driver stops emitting its own (deferred) BEGIN
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")  # before anything that may wait
            cur.execute("PRAGMA foreign_keys=ON")
            _wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()

    @event.listens_for(eng, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READONLY) else "BEGIN IMMEDIATE")

    return eng


def _wal(cur: sqlite3.Cursor) -> None:
    """Put the database in WAL mode (persistent in the file, so in practice once per database). The switch needs
    the database to itself and, unlike a transaction, fails at once with "database is locked" instead of using the
    busy handler when several first starts race: retry it for up to the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.001
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0] in ("wal", "memory"):
                return
            cur.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.05)


def _retryable(e: DBAPIError) -> bool:
    code = getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)
    return code in _RETRY_SQLSTATES


def _busy(e: DBAPIError) -> bool:
    return isinstance(e, OperationalError) and "locked" in str(e.orig).lower()


def writing(engine: Engine, fn: Callable[[Connection], T], *, attempts: int = 20, isolation: str | None = None) -> T:
    """Run ``fn`` in one write transaction (BEGIN IMMEDIATE on SQLite); commit, or roll back on any exception.
    Retries from the start on a PostgreSQL serialization failure or deadlock. ``isolation`` overrides the
    engine's isolation level for this transaction (PostgreSQL only)."""
    for attempt in range(attempts):
        try:
            with engine.connect() as conn:
                if isolation is not None:
                    conn = conn.execution_options(isolation_level=isolation)
                with conn.begin():
                    return fn(conn)
        except DBAPIError as e:
            if _retryable(e) and attempt + 1 < attempts:
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            if _busy(e):
                raise HostError(f"inventory database is locked ({e.orig}; waited up to {BUSY_TIMEOUT_S:.0f} s): "
                                "another process holds it; retry, or find it with `fuser` on the .db file") from None
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def reading(engine: Engine, fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` in a read-only transaction (a snapshot; on SQLite WAL it does not wait for writers)."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{_READONLY: True})
        with conn.begin():
            return fn(conn)


def fork_guard(engine: Engine, pid: int) -> int:
    """After a fork, drop the pooled connections inherited from the parent without closing them (the parent
    still uses them); returns the current pid."""
    now = os.getpid()
    if now != pid:
        engine.dispose(close=False)
    return now
