"""The inventory database's health: what its schema should hold, a consistent backup, and ``passthru store check``.

    expected_schema(2)                  # ({"devices", ...}, {"ix_devices_parent", ...}): what migrations 1..2 make
    schema_problem("sqlite", 2, names)  # "tables missing: audit" | None
    backup_sqlite(db, db + ".bak")      # sqlite3 online backup API: consistent even with a WAL and other writers
    check(url)                          # the report `passthru store check` prints

Before a migration of an existing SQLite inventory (version >= 1) the store copies it to ``passthru.db.bak`` (same
directory, 0600) with SQLite's online backup API, after an integrity check, so a damaged database never replaces a
good backup. PostgreSQL has no file to copy: back it up with its own tools (pg_dump).
"""

from __future__ import annotations

import os
import sqlite3
import time
from functools import lru_cache

from sqlalchemy import URL, create_engine, inspect, text

from ..errors import HostError, InventoryError
from .engine import BUSY_TIMEOUT_S, db_label, make_engine, parse_url, sqlite_file
from .schema import LATEST, MIGRATIONS, metadata, schema_migrations

__all__ = ["expected_schema", "schema_problem", "backup_sqlite", "check", "restore_commands", "OK",
           "WARN", "FAIL"]

OK, WARN, FAIL = "ok", "warn", "fail"
_MIGRATIONS_TABLE = schema_migrations.name
_TABLES_SQL = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite~_%' ESCAPE '~'"
_INDEXES_SQL = ("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite~_%' ESCAPE '~'")


@lru_cache(maxsize=None)
def expected_schema(version: int) -> tuple[frozenset[str], frozenset[str]]:
    """(tables, indexes) that migrations 1..``version`` create, found by running them on an in-memory SQLite
    database: the migrations are the truth for every version, including ones the current tables no longer
    describe. Names only (that is what a damaged or foreign database gets wrong)."""
    if version == LATEST:  # the common case, without building a database (tests check both agree)
        tables = frozenset(metadata.tables)
        indexes = frozenset(ix.name for t in metadata.tables.values() for ix in t.indexes if ix.name)
        return tables, indexes
    return replayed_schema(version)


def replayed_schema(version: int) -> tuple[frozenset[str], frozenset[str]]:
    """:func:`expected_schema` by running the migrations, for any version."""
    eng = create_engine("sqlite://")
    try:
        with eng.begin() as conn:
            schema_migrations.create(conn)
            for v, _name, fn in MIGRATIONS:
                if v <= version:
                    fn(conn)
            tables = frozenset(r[0] for r in conn.exec_driver_sql(_TABLES_SQL))
            indexes = frozenset(r[0] for r in conn.exec_driver_sql(_INDEXES_SQL))
    finally:
        eng.dispose()
    return tables, indexes


def schema_problem(dialect: str, version: int, tables: set[str] | frozenset[str]) -> str | None:
    """What is wrong with a database at schema ``version`` holding ``tables``, or None. Version 0 with tables in a
    SQLite file (passthru's own file) means somebody else's database; on PostgreSQL, where passthru may share a
    database, only tables with passthru's names are in the way."""
    if version <= 0:
        others = set(tables) - {_MIGRATIONS_TABLE}
        if dialect != "sqlite":
            others &= set(metadata.tables)
        if others:
            return f"not passthru's: no schema version but tables {', '.join(sorted(others)[:5])}"
        return None
    if version > LATEST:
        return None  # the caller says "newer"
    missing = expected_schema(version)[0] - set(tables)
    if missing:
        return f"schema version {version} but tables missing: {', '.join(sorted(missing))}"
    return None


class _Deadline(Exception):
    pass


def _integrity(conn: sqlite3.Connection, quick: bool = False) -> list[str]:
    """SQLite's own check of every page, index and constraint: [] when fine, else its first messages."""
    rows = [r[0] for r in conn.execute(f"PRAGMA {'quick_check' if quick else 'integrity_check'}(20)")]
    if rows == ["ok"]:
        return []
    lines = [" ".join(x.split()) for r in rows for x in str(r).splitlines()]
    return [x for x in lines if x and not x.startswith("*** in database")] or ["integrity check failed"]


def backup_sqlite(db: str, dest: str) -> int:
    """Copy the SQLite database ``db`` to ``dest`` (0600, atomically replaced, never through a link) with the
    online backup API, after an integrity check and a look at its tables: a consistent copy even while others
    write, and never a damaged or foreign one. Returns the bytes written. InventoryError when ``db`` is damaged; HostError when it stays locked."""
    from ..statefs import fsync_dir, open_nofollow, unlink_quietly

    src = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S)
    tmp = os.path.join(os.path.dirname(dest) or ".", f".{os.path.basename(dest)}.{os.getpid()}.passthru")
    try:
        try:
            bad = _integrity(src, quick=True)
            tables = {r[0] for r in src.execute(_TABLES_SQL)}
            version = (src.execute(f"SELECT max(version) FROM {_MIGRATIONS_TABLE}").fetchone()[0] or 0
                       if _MIGRATIONS_TABLE in tables else 0)
            problem = schema_problem("sqlite", version, tables)
            bad += [problem] if problem else []
        except sqlite3.DatabaseError as e:
            bad = [str(e)]
        if bad:
            raise InventoryError(f"{db}: damaged ({'; '.join(bad[:2])}): not copying it over {dest}; "
                                 "`passthru store check` says more")
        unlink_quietly(tmp)
        os.close(open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        dst = sqlite3.connect(tmp)
        deadline = time.monotonic() + BUSY_TIMEOUT_S

        def progress(status: int, remaining: int, total: int) -> None:
            if time.monotonic() > deadline:
                raise _Deadline()

        try:
            src.backup(dst, progress=progress)
            dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file: no -wal to carry along
        except _Deadline:
            raise HostError(f"{db}: locked for more than {BUSY_TIMEOUT_S:.0f} s, no backup made; retry") from None
        finally:
            dst.close()
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o600)
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        os.replace(tmp, dest)
        fsync_dir(os.path.dirname(dest) or ".")
        return size
    except BaseException:
        unlink_quietly(tmp)
        raise
    finally:
        src.close()


def restore_commands(db: str) -> str:
    """The shell commands that move a damaged SQLite inventory away (with its -wal/-shm and backup files) and put
    the backup back when there is one."""
    import shlex

    d, name = shlex.quote(os.path.dirname(db)), shlex.quote(os.path.basename(db))
    aside = f"broken-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = f"cd {d} && mkdir {aside} && mv {name}* {aside}/"
    if os.path.exists(db + ".bak"):
        return cmd + f" && cp -p {aside}/{name}.bak {name}   (without the cp: start an empty inventory)"
    return cmd + "   (passthru then starts an empty inventory: there is no backup)"


def _finding(name: str, status: str, detail: str, fix: str | None = None) -> dict:
    return {"check": name, "status": status, "detail": detail, "fix": fix}


def _backup_info(db: str) -> dict:
    bak = db + ".bak"
    out = {"path": bak, "exists": os.path.lexists(bak), "version": None, "integrity": None, "modified": None}
    if not out["exists"]:
        return out
    try:
        out["modified"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.lstat(bak).st_mtime))
        conn = sqlite3.connect(f"file:{bak}?mode=ro", uri=True)
        try:
            bad = _integrity(conn)
            out["integrity"] = "ok" if not bad else "; ".join(bad[:2])
            out["version"] = conn.execute(f"SELECT max(version) FROM {_MIGRATIONS_TABLE}").fetchone()[0]
        finally:
            conn.close()
    except (sqlite3.Error, OSError) as e:
        out["integrity"] = out["integrity"] or str(e)
    return out


def _check_sqlite(db: str, doc: dict) -> None:
    doc["backup"] = _backup_info(db)
    if not os.path.exists(db):
        doc["checks"].append(_finding("database", OK, "not there yet: created on first use"))
        return
    _check_sqlite_file(db, doc)
    b = doc["backup"]
    if not b["exists"]:
        doc["checks"].append(_finding("backup", OK, f"none ({b['path']}): one is made before each migration; "
                                                    "`passthru store backup` makes one now"))
    elif b["integrity"] != "ok":
        doc["checks"].append(_finding("backup", WARN, f"{b['path']}: damaged ({b['integrity']})",
                                      "`passthru store backup` replaces it with a copy of the database"))
    else:
        doc["checks"].append(_finding("backup", OK, f"{b['path']}: schema version {b['version']}, "
                                                    f"{b['modified']}"))


def _check_sqlite_file(db: str, doc: dict) -> None:
    checks = doc["checks"]
    fix = restore_commands(db)
    doc["size"] = os.path.getsize(db)
    try:
        conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as e:
        checks.append(_finding("database", FAIL, f"cannot open ({e})", "run as root, or pass --state-dir"))
        return
    try:
        try:
            tables = {r[0] for r in conn.execute(_TABLES_SQL)}
            indexes = {r[0] for r in conn.execute(_INDEXES_SQL)}
        except sqlite3.DatabaseError as e:
            checks.append(_finding("database", FAIL, f"not a usable SQLite database ({e})", fix))
            return
        checks.append(_finding("database", OK, f"SQLite, {doc['size']} bytes"))
        try:
            bad = _integrity(conn)
        except sqlite3.DatabaseError as e:
            bad = [str(e)]
        checks.append(_finding("integrity", FAIL, "; ".join(bad[:3]), fix) if bad else
                      _finding("integrity", OK, "PRAGMA integrity_check: ok"))
        version = 0
        if _MIGRATIONS_TABLE in tables:
            try:
                version = conn.execute(f"SELECT max(version) FROM {_MIGRATIONS_TABLE}").fetchone()[0] or 0
            except sqlite3.DatabaseError as e:
                checks.append(_finding("schema", FAIL, f"cannot read the schema version ({e})", fix))
                return
        _schema_findings(doc, "sqlite", version, tables, indexes, fix)
    finally:
        conn.close()


def _schema_findings(doc: dict, dialect: str, version: int, tables: set[str], indexes: set[str], fix: str) -> None:
    checks = doc["checks"]
    doc["version"] = version
    problem = schema_problem(dialect, version, tables)
    if version > LATEST:
        checks.append(_finding("schema", FAIL, f"version {version}: newer than this passthru knows ({LATEST})",
                               "upgrade passthru (a newer one made this database)"))
        return
    if problem:
        checks.append(_finding("schema", FAIL, problem, fix))
        return
    if version == 0:
        checks.append(_finding("schema", OK, f"empty: passthru creates version {LATEST} on first use"))
        return
    note = "the latest this passthru knows" if version == LATEST else \
        f"passthru migrates it to {LATEST} on next use, after a backup"
    checks.append(_finding("schema", OK, f"version {version} ({note})"))
    want_t, want_i = expected_schema(version)
    checks.append(_finding("tables", OK, ", ".join(sorted(want_t))))
    missing = sorted(want_i - indexes)
    checks.append(_finding("indexes", FAIL, f"missing: {', '.join(missing)}", fix) if missing else
                  _finding("indexes", OK, f"{len(want_i)} present"))


def _check_url(url: URL, doc: dict) -> None:
    """PostgreSQL (or any non-file database): schema version, tables and indexes; no integrity check or backup."""
    from sqlalchemy.exc import DBAPIError

    fix = "repair the database or point PASSTHRU_DB_URL at another one"
    eng = make_engine(url.render_as_string(hide_password=False))  # a missing driver: InventoryError, exit 2
    try:
        with eng.connect() as conn:
            insp = inspect(conn)
            tables = set(insp.get_table_names())
            indexes = {ix["name"] for t in tables for ix in insp.get_indexes(t) if ix.get("name")}
            version = 0
            if _MIGRATIONS_TABLE in tables:
                version = conn.execute(text(f"SELECT max(version) FROM {_MIGRATIONS_TABLE}")).scalar() or 0
    except DBAPIError as e:
        doc["checks"].append(_finding("database", FAIL, f"cannot use it ({str(e.orig).strip().splitlines()[0]})",
                                      fix))
        return
    finally:
        eng.dispose()
    doc["checks"].append(_finding("database", OK, url.get_backend_name()))
    doc["checks"].append(_finding("integrity", OK, "not checked: the server checks its own pages"))
    _schema_findings(doc, url.get_backend_name(), version, tables, indexes, fix)
    doc["checks"].append(_finding("backup", OK, "no file backup for this database: use its own tools (pg_dump)"))


def check(url: str) -> dict:
    """The `passthru store check` report: ``ok`` is False when a check failed; each finding has its fix."""
    u = parse_url(url)
    doc: dict = {"schema": 1, "database": db_label(u), "dialect": u.get_backend_name(), "size": None,
                 "version": None, "latest": LATEST, "ok": True, "checks": [], "backup": None}
    db = sqlite_file(u)
    if db is not None:
        _check_sqlite(db, doc)
    else:
        _check_url(u, doc)
    doc["ok"] = not any(c["status"] == FAIL for c in doc["checks"])
    return doc
