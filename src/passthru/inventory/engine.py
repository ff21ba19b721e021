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
PostgreSQL (same code; tests/test_store.py runs every store test on a real server too):
    - The engine runs every transaction at ``SERIALIZABLE``. Exclusivity spans rows that a unique index cannot
      tie together (a PF and its VFs, the devices of an IOMMU group), so the checks need serializable snapshots:
      PostgreSQL aborts one of two transactions whose reads and writes overlap (SQLSTATE 40001, or 40P01 for a
      deadlock) and :func:`writing` retries it from the start, where it sees the winner's row. Migrations run at
      READ COMMITTED behind a transaction-scoped advisory lock, so that of two first starts the second waits and
      then sees the first one's tables (a serializable snapshot would be taken before the wait).
    - A pooled connection that sat idle for PING_IDLE_S or more is pinged before use (replaced when dead).
Errors: a database that cannot be used is one line naming it and the fix, raised here, at the one place every
transaction passes (:func:`writing`, :func:`reading`): "database is locked" after the busy timeout is a HostError
(exit 1, retry); a corrupt, truncated or foreign file ("file is not a database", "database disk image is malformed",
"no such table") an InventoryError (exit 2) that says to restore the backup or move the file away; one passthru may
not open an InventoryError naming the permission fix. Constraint violations (IntegrityError) pass through: they are
answers the claim rules give, not damage.
Nothing else here or in the queries is dialect-specific.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import time
from typing import Any, Callable, TypeVar

from sqlalchemy import URL, Connection, Engine, create_engine, event
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, IntegrityError, OperationalError

from ..errors import HostError, InventoryError, PassthruError
from ..statefs import read_only_fs

__all__ = ["make_engine", "parse_url", "writing", "reading", "begin_outer", "in_savepoint", "fork_guard",
           "BUSY_TIMEOUT_S", "PING_IDLE_S", "sqlite_file", "db_label", "unusable", "translate"]

T = TypeVar("T")
BUSY_TIMEOUT_S = 30.0
PING_IDLE_S = 1.0  # PostgreSQL: a pooled connection idle this long is pinged before use
_RETRY_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
_READONLY = "passthru_readonly"


# the DBAPI module SQLAlchemy imports for a URL -> the package that provides it
_DRIVERS = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary"}


def parse_url(url: str) -> URL:
    """``url`` parsed; InventoryError (exit 2) when SQLAlchemy cannot parse it (the text is not echoed: it may hold
    a password)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)
    except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        raise _bad_url("PASSTHRU_DB_URL (unparsable)", e) from None


def _bad_url(shown: str, e: Exception) -> InventoryError:
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return InventoryError(f"{shown}: not a database URL passthru can use ({reason}); use "
                          "postgresql+psycopg://USER:PASSWORD@HOST/DB, or unset PASSTHRU_DB_URL for the SQLite file in "
                          "the state directory")


def make_engine(url: str) -> Engine:
    """The engine for ``url``. A URL SQLAlchemy cannot parse or has no dialect for, and a database driver that is not
    installed, are an InventoryError (exit 2) naming the fix, not a traceback."""
    shown = parse_url(url).render_as_string(hide_password=True)
    try:
        if url.startswith("sqlite"):
            return _sqlite_engine(url)
        if url.startswith("postgresql"):
            return _postgresql_engine(url)
        return create_engine(url)
    except ImportError as e:
        module = (e.name or "").split(".")[0] or "?"
        pkg = _DRIVERS.get(module)
        fix = (f"pip install {pkg} (into passthru's Python: {sys.executable} -m pip install {pkg})" if pkg else
               f"install the package that provides it into passthru's Python ({sys.executable})")
        raise InventoryError(f"{shown}: the database driver {module!r} is not installed; {fix}") from None
    except ArgumentError as e:
        raise _bad_url(shown, e) from None


def _postgresql_engine(url: str) -> Engine:
    """Pooled connections are checked before use (a ping) when they sat idle in the pool for PING_IDLE_S or more: that
    is when a restart or failover may have cut them. One just returned is used as it is (a ping per transaction was
    one round trip in seven of a placement); if the server went away in that second, the first statement fails as a
    lost connection, which the cluster store runs again (ClusterStore._retrying) and the pool replaces."""
    eng = create_engine(url, isolation_level="SERIALIZABLE")

    @event.listens_for(eng, "checkin")
    def _checkin(_dbapi_conn, rec) -> None:  # type: ignore[no-untyped-def]
        rec.info["passthru_idle_since"] = time.monotonic()

    @event.listens_for(eng, "checkout")
    def _checkout(dbapi_conn, rec, _proxy) -> None:  # type: ignore[no-untyped-def]
        since = rec.info.get("passthru_idle_since")  # None: connected just now
        if since is None or time.monotonic() - since < PING_IDLE_S:
            return
        try:
            eng.dialect.do_ping(dbapi_conn)
        except eng.dialect.loaded_dbapi.Error as e:  # the pool retries with a new connection
            raise DisconnectionError(f"the pooled connection is gone ({e})") from None

    return eng


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
        sql = "BEGIN" if conn.get_execution_options().get(_READONLY) else "BEGIN IMMEDIATE"
        try:  # on the driver's connection: SQLAlchemy's statement machinery costs more than SQLite's BEGIN
            conn.connection.dbapi_connection.execute(sql)  # type: ignore[union-attr]
        except sqlite3.Error as e:  # as exec_driver_sql would raise it: "database is locked" is an OperationalError
            raise DBAPIError.instance(sql, None, e, sqlite3.Error) from None

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


# what SQLite (and PostgreSQL) say about a database that is damaged or is not passthru's
_DAMAGED = ("not a database", "malformed", "corrupt", "no such table", "no such column", "no such index",
            "does not exist")
_ACCESS = ("unable to open", "readonly database", "permission denied", "authentication failed")


def sqlite_file(url: URL) -> str | None:
    """The absolute path of a SQLite URL's database file; None for other dialects and in-memory databases."""
    if url.get_backend_name() != "sqlite":
        return None
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return os.path.abspath(db)


def db_label(url: URL) -> str:
    """How messages name the database: the file for SQLite, the URL without its password otherwise."""
    return sqlite_file(url) or url.render_as_string(hide_password=True)


def unusable(url: URL, reason: str) -> InventoryError:
    """The one line for a database passthru cannot use: what is wrong and how to get going again."""
    db = sqlite_file(url)
    tail = "`passthru store check` prints the commands"
    if db is None:
        return InventoryError(f"{db_label(url)}: not a usable inventory database ({reason}); repair it or point "
                              f"PASSTHRU_DB_URL at another database; {tail}")
    bak = db + ".bak"
    then = (f"restore the backup ({os.path.basename(bak)}) or start an empty inventory" if os.path.exists(bak)
            else "start an empty inventory (there is no backup)")
    return InventoryError(f"{db}: not a usable inventory database ({reason}); move it away with its -wal and -shm "
                          f"files and {then}; {tail}")


def translate(url: URL, e: DBAPIError) -> PassthruError | None:
    """The PassthruError for a database error that is about the database itself (damaged, foreign, not openable,
    I/O), or None for one the caller should see as it is (a constraint violation, a programming error)."""
    if isinstance(e, IntegrityError):
        return None
    orig = e.orig if e.orig is not None else e
    reason = " ".join((str(orig).strip().splitlines() or [""])[0].split()) or type(orig).__name__
    low = reason.lower()
    if any(k in low for k in _DAMAGED):
        return unusable(url, reason)
    if any(k in low for k in _ACCESS):
        db = sqlite_file(url)
        if db is not None and read_only_fs(db):
            return InventoryError(f"{db}: cannot write the inventory database: it is on a read-only file system; "
                                  "pass --state-dir on a writable one (or set PASSTHRU_DB_URL)")
        return InventoryError(f"{db_label(url)}: cannot open the inventory database ({reason}); run as root, or "
                              "pass --state-dir (or set PASSTHRU_DB_URL)")
    if isinstance(e, OperationalError):
        return HostError(f"{db_label(url)}: inventory database error ({reason}); check the disk and the database, "
                         "then retry; `passthru store check` says more")
    if type(orig) is sqlite3.DatabaseError:  # SQLITE_CORRUPT/NOTADB variants not matched above
        return unusable(url, reason)
    return None


def _failed(engine: Engine, e: DBAPIError) -> PassthruError | None:
    if _busy(e):
        return HostError(f"inventory database is locked ({e.orig}; waited up to {BUSY_TIMEOUT_S:.0f} s): "
                         "another process holds it; retry, or find it with `fuser` on the .db file")
    return translate(engine.url, e)


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
            err = _failed(engine, e)
            if err is None:
                raise
            raise err from None
    raise AssertionError("unreachable")  # pragma: no cover


def reading(engine: Engine, fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` in a read-only transaction (a snapshot; on SQLite WAL it does not wait for writers)."""
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(**{_READONLY: True})
            with conn.begin():
                return fn(conn)
    except DBAPIError as e:
        err = _failed(engine, e)
        if err is None:
            raise
        raise err from None


def begin_outer(engine: Engine) -> tuple[Connection, Any]:
    """A connection and its open transaction, for a rehearsal (Store.rehearsal); errors as :func:`writing` gives
    them. The caller rolls the transaction back and closes the connection."""
    try:
        conn = engine.connect()
    except DBAPIError as e:
        raise (_failed(engine, e) or e) from None
    try:
        return conn, conn.begin()
    except DBAPIError as e:
        conn.close()
        raise (_failed(engine, e) or e) from None


def in_savepoint(conn: Connection, fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` in a savepoint of ``conn``'s open transaction, rolled back alone when ``fn`` raises (a rehearsal,
    Store.rehearsal: what would be one transaction is one savepoint); errors as :func:`writing` gives them."""
    try:
        with conn.begin_nested():
            return fn(conn)
    except DBAPIError as e:
        err = _failed(conn.engine, e)
        if err is None:
            raise
        raise err from None


def fork_guard(engine: Engine, pid: int) -> int:
    """After a fork, drop the pooled connections inherited from the parent without closing them (the parent
    still uses them); returns the current pid."""
    now = os.getpid()
    if now != pid:
        engine.dispose(close=False)
    return now
