"""The inventory store: which devices the host has, which custom models name them, which VM holds what, and who
did what. SQLAlchemy 2 Core; SQLite by default (``<state_dir>/passthru.db``, WAL), PostgreSQL by URL.

    store = Store()                                   # or Store("postgresql+psycopg://...") / $PASSTHRU_DB_URL
    store.sync_devices(records)                       # from discovery: added / updated / lost / back / replaced
    [a] = store.claim("vm1", ["pci:0000:86:00.0"])    # all-or-nothing; ClaimError names the holder
    a = store.claim_any("vm2", kind="gpu", numa=1)    # pick + insert in one write transaction
    store.set_state("vm1", a.device, "attached"); store.release("vm1")

An assignment moves ``reserved`` → ``attached`` (in the guest) → ``released``; ``attached`` → ``reserved`` is a
detach that keeps the device for the VM. Claims made inside a journaled operation (``op=``) start ``pending`` and
become ``reserved`` only when the operation finishes (:meth:`Store.finish_op`); reconcile releases the pending claims
of an operation that died (:meth:`Store.abandon_op`). Setting the state an assignment already has is a no-op, so a caller may
retry after a crash. Released rows are kept as history. See ``claims.py`` for the exclusivity rules,
``engine.py`` for the transaction set-up (SQLite BEGIN IMMEDIATE; PostgreSQL SERIALIZABLE with retries) and
``schema.py`` for the tables and migrations.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from sqlalchemy import Connection, and_, bindparam, insert, inspect, outerjoin, select, text, update
from sqlalchemy.engine import make_url

from ..config import BUILTIN_KINDS, Paths
from ..errors import HostError, InventoryError, NotFoundError, UsageError
from . import claims as rules
from ..names import MODEL_NAME, check_uuid, check_vm
from .base import STATES, Assignment, ClaimError, InvalidState, actor, now, write_audit
from .engine import begin_outer, db_label, fork_guard, in_savepoint, make_engine, reading, sqlite_file, unusable, writing
from .health import backup_sqlite, schema_problem
from .schema import ACTIVE_STATES, LATEST, MIGRATIONS, assignments, audit, devices, models, schema_migrations
from .sync import DeviceRecord, sync

__all__ = ["Store", "DeviceRecord", "Assignment", "ClaimError", "InvalidState", "DB_ENV", "STATES", "store_url"]

DB_ENV = "PASSTHRU_DB_URL"
# target state -> the states it may be reached from
_TRANSITIONS = {"attached": ("reserved",), "reserved": ("pending", "attached"),
                "released": ("pending", "reserved", "attached")}
_NAME_RE = MODEL_NAME
_PG_MIGRATE_LOCK = 0x70617373  # "pass": advisory lock key for concurrent first starts on PostgreSQL
T = TypeVar("T")

# hot-path statements, built once (building a statement costs more than SQLite takes to run it); values are bound
_a = assignments
_MOVE = update(_a).where(_a.c.id == bindparam("b_id")).values(
    state=bindparam("b_state"), updated=bindparam("b_ts"), released=bindparam("b_released"))
_ACTIVE_OF_VM = select(_a).where(_a.c.vm == bindparam("vm"), rules.active(_a.c.state)).order_by(_a.c.id)
_ACTIVE_OF_VM_DEVICE = _ACTIVE_OF_VM.where(_a.c.device == bindparam("device"))


def _check_vm(vm: str, vm_uuid: str | None = None) -> None:
    check_vm(vm)
    if vm_uuid is not None:
        check_uuid(vm_uuid)


def store_url(url: str | None = None, paths: Paths | None = None) -> str:
    """The database a Store opens: ``url``, else $PASSTHRU_DB_URL, else ``<state_dir>/passthru.db`` (the state
    directory checked usable: a regular file or a symlink loop there is a ConfigError naming the fix)."""
    if url or os.environ.get(DB_ENV):
        return url or os.environ[DB_ENV]
    if paths is None:
        from ..host.root import HostRoot

        paths = Paths.for_root(HostRoot.from_env(None))
    return "sqlite:///" + paths.state("passthru.db")


def _prepare_sqlite_file(url: str) -> None:
    """Create the database's directory (0700) and the file itself (0600; SQLite gives -wal/-shm the same mode)."""
    from ..statefs import ensure_dir, path_error

    db = sqlite_file(make_url(url))
    if db is None:
        return
    ensure_dir(os.path.dirname(db), 0o700)
    try:
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass
    except OSError as e:
        err = path_error(db, e, "--state-dir")
        raise (err or HostError(f"{db}: cannot create the inventory database ({e.strerror})")) from None


class Store:
    def __init__(self, url: str | None = None, *, paths: Paths | None = None, create: bool = True) -> None:
        """``create`` False: never create the SQLite file or its directory; a missing one is opened as an empty
        in-memory inventory (for a dry run, which must not write)."""
        url = store_url(url, paths)
        if url.startswith("sqlite"):
            db = sqlite_file(make_url(url))
            if create:
                _prepare_sqlite_file(url)
            elif db is not None and not os.path.exists(db):
                url = "sqlite://"
        self.url = url
        self.engine = make_engine(url)
        self._pid = os.getpid()
        self._version = 0
        self._actor: dict | None = None
        self._rehearsal: Connection | None = None

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions ---------------------------------------------------------------------------------------------
    def _ready(self) -> None:
        if os.getpid() != self._pid:
            self._pid, self._actor = fork_guard(self.engine, self._pid), None
        if self._version == 0:
            self.migrate()

    def _write(self, fn: Callable[[Connection], T]) -> T:
        self._ready()
        if self._rehearsal is not None:
            return in_savepoint(self._rehearsal, fn)
        return writing(self.engine, fn)

    def _read(self, fn: Callable[[Connection], T]) -> T:
        self._ready()
        if self._rehearsal is not None:
            return in_savepoint(self._rehearsal, fn)
        return reading(self.engine, fn)

    @contextmanager
    def rehearsal(self) -> Iterator["Store"]:
        """Inside the block every transaction of this store is a savepoint of one transaction that is rolled back at
        the end: a dry run meets exactly the checks and refusals of a real one (claims, exclusivity, migrations) and
        leaves the database as it was. SQLite holds its write lock for the block (BEGIN IMMEDIATE)."""
        if os.getpid() != self._pid:
            self._pid, self._actor = fork_guard(self.engine, self._pid), None
        conn, outer = begin_outer(self.engine)
        self._rehearsal, self._version = conn, 0
        try:
            yield self
        finally:
            self._rehearsal, self._version = None, 0
            outer.rollback()
            conn.close()

    # -- schema ---------------------------------------------------------------------------------------------------
    def migrate(self, *, to: int | None = None) -> int:
        """Bring the database to the latest schema version (or ``to``) and return the version it is at. Idempotent;
        one read when there is nothing to do. Refuses a database made by a newer passthru, one whose tables are not
        all there, and a SQLite file holding somebody else's tables (InventoryError, exit 2). An existing SQLite
        inventory (version >= 1) is copied to ``<file>.bak`` before it is migrated (health.backup_sqlite)."""
        if os.getpid() != self._pid:
            self._pid, self._actor = fork_guard(self.engine, self._pid), None
        target = LATEST if to is None else to

        def current(conn: Connection) -> int:
            if not inspect(conn).has_table(schema_migrations.name):
                return 0
            return conn.execute(select(schema_migrations.c.version).order_by(
                schema_migrations.c.version.desc()).limit(1)).scalar() or 0

        def upgrade(conn: Connection) -> int:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATE_LOCK})
            schema_migrations.create(conn, checkfirst=True)
            version = current(conn)
            for v, name, fn in MIGRATIONS:
                if version < v <= target:
                    fn(conn)
                    conn.execute(insert(schema_migrations).values(version=v, name=name, applied=now()))
                    version = v
            return version

        def look(conn: Connection) -> tuple[int, set[str]]:
            return current(conn), set(inspect(conn).get_table_names())

        version, tables = reading(self.engine, look) if self._rehearsal is None else in_savepoint(self._rehearsal, look)
        if version > LATEST:
            raise InventoryError(f"{self._where()}: inventory schema version {version} is newer than this passthru "
                                 f"knows ({LATEST}); upgrade passthru (a newer one made this database)")
        problem = schema_problem(self.engine.dialect.name, version, tables)
        if problem:
            raise unusable(self.engine.url, problem)
        if version < target:
            db = sqlite_file(self.engine.url)
            if db is not None and version >= 1 and self._rehearsal is None:
                backup_sqlite(db, db + ".bak")
            pg = self.engine.dialect.name == "postgresql"
            version = (writing(self.engine, upgrade, isolation="READ COMMITTED" if pg else None)
                       if self._rehearsal is None else in_savepoint(self._rehearsal, upgrade))
        self._version = version
        return version

    def schema_history(self) -> list[dict]:
        return self._read(lambda c: [dict(r) for r in c.execute(
            select(schema_migrations).order_by(schema_migrations.c.version)).mappings()])

    def _where(self) -> str:
        return db_label(self.engine.url)

    # -- devices --------------------------------------------------------------------------------------------------
    def sync_devices(self, records: list[DeviceRecord]) -> dict:
        """Upsert what discovery found. Devices not in ``records`` become ``lost`` (kept, last_seen unchanged); lost
        ones seen again become ``present`` ("back"). A device whose vendor:device[:serial] changed under the same
        identity (another USB stick in the same port, another card in the slot) is updated and listed under
        ``replaced`` with its old and new IDs and the VM holding it, if any: a VM holding a port gets whatever is
        plugged in it, so the caller must decide. Returns lists of identities: added, updated (includes back and
        replaced), lost, back; and replaced (dicts)."""
        ts = now()

        def run(c: Connection) -> dict:
            out = sync(c, records, ts)
            if any(out[k] for k in ("added", "updated", "lost")):
                self._audit(c, "devices.sync", None, None, {k: len(v) for k, v in out.items()}, ts)
            return out

        return self._write(run)

    def devices(self, *, kind: str | None = None, state: str | None = None) -> list[dict]:
        """Devices with their holder (``vm``, ``assignment`` state) and matching custom ``model``, by identity."""
        d, a, m = devices, assignments, models
        j = outerjoin(d, a, and_(a.c.device == d.c.identity, a.c.state.in_(ACTIVE_STATES)))
        j = outerjoin(j, m, and_(m.c.vendor_id == d.c.vendor_id, m.c.device_id == d.c.device_id, d.c.bus == "pci"))
        q = select(d, a.c.vm, a.c.state.label("assignment"), m.c.name.label("model")).select_from(j)
        if kind is not None:
            q = q.where(*rules.match_clause(kind, None))
        if state is not None:
            q = q.where(d.c.state == state)
        return self._read(lambda c: [dict(r) for r in c.execute(q.order_by(d.c.identity)).mappings()])

    # -- models ---------------------------------------------------------------------------------------------------
    def add_model(self, name: str, vendor_id: int, device_id: int, kind: str = "custom",
                  description: str | None = None) -> None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise UsageError(f"model name {name!r}: use lowercase letters, digits, '-', '_' or '.' (max 63)")
        if name in BUILTIN_KINDS:
            raise UsageError(f"model name {name!r} is a built-in kind; choose another name")
        if not isinstance(kind, str) or not _NAME_RE.match(kind):
            raise UsageError(f"model kind {kind!r}: use a short lowercase name")
        for what, v in (("vendor", vendor_id), ("device", device_id)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0xFFFF:
                raise UsageError(f"model {name!r}: {what} ID must be 0..0xffff, got {v!r}")

        def run(c: Connection) -> None:
            m = models
            if c.execute(select(m.c.name).where(m.c.name == name)).first():
                raise UsageError(f"model {name!r} exists; remove it first to change it")
            other = c.execute(select(m.c.name).where(m.c.vendor_id == vendor_id, m.c.device_id == device_id)).first()
            if other:
                raise UsageError(f"{vendor_id:04x}:{device_id:04x} is already model {other.name!r}")
            c.execute(insert(m).values(name=name, vendor_id=vendor_id, device_id=device_id, kind=kind,
                                       description=description, created=now()))
            self._audit(c, "model.add", None, None, {"name": name, "ids": f"{vendor_id:04x}:{device_id:04x}",
                                                     "kind": kind})

        self._write(run)

    def models(self) -> list[dict]:
        return self._read(lambda c: [dict(r) for r in c.execute(select(models).order_by(models.c.name)).mappings()])

    def remove_model(self, name: str, *, force: bool = False) -> None:
        """NotFoundError when there is no such model. Refused (UsageError) while a VM holds a device of that model,
        unless ``force``: the model is how the operator and ``claim_any(model=)`` name that device."""

        def run(c: Connection) -> None:
            m, d, a = models, devices, assignments
            row = c.execute(select(m).where(m.c.name == name)).first()
            if row is None:
                raise NotFoundError(f"no model named {name!r}; `passthru models` lists them")
            held = c.execute(select(a.c.vm, a.c.device).select_from(a.join(d, a.c.device == d.c.identity)).where(
                a.c.state.in_(ACTIVE_STATES), d.c.bus == "pci", d.c.vendor_id == row.vendor_id,
                d.c.device_id == row.device_id)).all()
            if held and not force:
                who = ", ".join(f"{h.device} (VM {h.vm!r})" for h in held)
                raise UsageError(f"model {name!r} is in use: {who}; release those first or force the removal")
            c.execute(m.delete().where(m.c.name == name))
            self._audit(c, "model.remove", None, None, {"name": name, "held": len(held)})

        self._write(run)

    # -- claims ---------------------------------------------------------------------------------------------------
    def claim(self, vm: str, identities: list[str], *, vm_uuid: str | None = None,
              op: dict | None = None) -> list[Assignment]:
        """Reserve every device in ``identities`` for ``vm``, or none (one transaction). Devices the VM already
        holds are returned as they are. ClaimError names the first refused device, why, and the holder VM.
        ``op`` ({"id": journal id, "takeover": "vfio" | None}): the claims are ``pending`` for that operation."""
        _check_vm(vm, vm_uuid)
        if isinstance(identities, str) or not identities:
            raise UsageError("claim needs a list of one or more device identities")
        wanted = list(dict.fromkeys(identities))
        self._precheck(lambda c: rules.claim_devices(c, vm, wanted, vm_uuid, None))
        return self._write(lambda c: rules.claim_devices(c, vm, wanted, vm_uuid, self._who(), op))

    def claim_any(self, vm: str, *, kind: str | None = None, model: str | None = None, numa: int | None = None,
                  numa_policy: str = "strict", vm_uuid: str | None = None, op: dict | None = None) -> Assignment:
        """Reserve one free present device of ``kind`` and/or custom ``model`` for ``vm``; with ``numa``, on that
        node ("strict") or preferably on it ("prefer"). Pick and insert happen in one write transaction."""
        _check_vm(vm, vm_uuid)
        if kind is None and model is None:
            raise UsageError("claim_any needs a kind or a model")
        if numa_policy not in ("strict", "prefer"):
            raise UsageError(f"NUMA policy must be 'strict' or 'prefer', got {numa_policy!r}")
        if numa is not None and (isinstance(numa, bool) or not isinstance(numa, int) or numa < 0):
            raise UsageError(f"NUMA node must be a non-negative integer, got {numa!r}")

        def run(c: Connection, who: dict | None) -> Assignment | None:
            return rules.claim_any_device(c, vm, kind=kind, model=model, numa=numa, numa_policy=numa_policy,
                                          vm_uuid=vm_uuid, who=who, op=op if who is not None else None)

        self._precheck(lambda c: run(c, None))
        got = self._write(lambda c: run(c, self._who()))
        assert got is not None
        return got

    def _precheck(self, fn: Callable[[Connection], object]) -> None:
        """Refusals never take the write lock: a claim first runs its checks in a read-only snapshot (WAL: no
        waiting) and raises there when the answer is already "no". Only a claim that can succeed queues for the
        write lock, and repeats the checks there (something may have been taken meanwhile). Without this, callers
        retrying "no free device" in a loop keep the write lock busy and starve the holders trying to release
        (bench/claims.py --devices 4 --hold-ms 1: 9 claims/s instead of ~600). The snapshot is a consistent
        committed state, so a "no" from it is a correct answer as of that moment."""
        self._read(fn)

    # -- states ---------------------------------------------------------------------------------------------------
    def set_state(self, vm: str, identity: str, state: str) -> Assignment:
        """Move ``vm``'s latest assignment of ``identity`` to ``state`` (see the module doc for the transitions).
        NotFoundError when the VM never held it; InvalidState (with .current, .expected) for a bad move."""
        if state not in STATES:
            raise UsageError(f"assignment state must be one of {', '.join(STATES)}, got {state!r}")

        def run(c: Connection) -> Assignment:
            a = assignments
            row = c.execute(select(a).where(a.c.vm == vm, a.c.device == identity).order_by(a.c.id.desc())
                            .limit(1)).first()
            if row is None:
                raise NotFoundError(f"VM {vm!r} holds no device {identity}")
            cur = Assignment.from_row(row)
            if cur.state == state and state != "released":
                return cur
            allowed = _TRANSITIONS[state]
            if cur.state not in allowed:
                raise InvalidState(f"{identity} for VM {vm!r} is {cur.state}; it can become {state} only from "
                                   f"{' or '.join(allowed)}", current=cur.state, expected=allowed, requested=state)
            return self._move(c, [cur], state)[0]

        return self._write(run)

    def release(self, vm: str, identity: str | None = None) -> list[Assignment]:
        """Release all of ``vm``'s active assignments, or the one of ``identity``. NotFoundError when none match."""

        def run(c: Connection) -> list[Assignment]:
            if identity is None:
                rows = [Assignment.from_row(r) for r in c.execute(_ACTIVE_OF_VM, {"vm": vm})]
            else:
                found = c.execute(_ACTIVE_OF_VM_DEVICE, {"vm": vm, "device": identity})
                rows = [Assignment.from_row(r) for r in found]
            if not rows:
                raise NotFoundError(f"VM {vm!r} holds " + (f"no device {identity}" if identity else "no devices"))
            return self._move(c, rows, "released")

        return self._write(run)

    def finish_op(self, op_id: str) -> list[Assignment]:
        """The operation ``op_id`` succeeded: its pending claims become reserved (one transaction)."""
        a = assignments
        return self._write(lambda c: self._move(c, [Assignment.from_row(r) for r in c.execute(
            select(a).where(a.c.op == op_id, a.c.state == "pending").order_by(a.c.id))], "reserved"))

    def abandon_op(self, op_id: str) -> list[Assignment]:
        """The operation ``op_id`` failed or died: release its pending claims (one transaction)."""
        a = assignments
        return self._write(lambda c: self._move(c, [Assignment.from_row(r) for r in c.execute(
            select(a).where(a.c.op == op_id, a.c.state == "pending").order_by(a.c.id))], "released"))

    def _move(self, c: Connection, rows: list[Assignment], state: str) -> list[Assignment]:
        ts = now()
        gone = ts if state == "released" else None
        out = []
        for r in rows:
            c.execute(_MOVE, {"b_id": r.id, "b_state": state, "b_ts": ts, "b_released": gone})
            self._audit(c, "release" if gone else "state", r.device, r.vm,
                        {"assignment": r.id, "from": r.state, "to": state}, ts)
            out.append(Assignment(r.id, r.vm, r.vm_uuid, r.device, state, r.created, ts, gone, r.op, r.takeover))
        return out

    def assignments(self, vm: str | None = None, *, active: bool = True) -> list[Assignment]:
        a = assignments
        q = select(a).order_by(a.c.id)
        if vm is not None:
            q = q.where(a.c.vm == vm)
        if active:
            q = q.where(a.c.state.in_(ACTIVE_STATES))
        return self._read(lambda c: [Assignment.from_row(r) for r in c.execute(q)])

    # -- audit ----------------------------------------------------------------------------------------------------
    def audit(self, action: str, device: str | None, vm: str | None, detail: dict | None = None) -> None:
        if not isinstance(action, str) or not action or len(action) > 64:
            raise UsageError(f"audit action must be a short non-empty string, got {action!r}")
        self._write(lambda c: self._audit(c, action, device, vm, detail))

    def _who(self) -> dict:
        if self._actor is None:
            self._actor = actor()
        return self._actor

    def _audit(self, c: Connection, action: str, device: str | None, vm: str | None, detail: dict | None,
               ts: str | None = None) -> None:
        write_audit(c, self._who(), action, device, vm, detail, ts)

    def audit_log(self, limit: int = 100) -> list[dict]:
        """The newest ``limit`` entries, newest first."""
        q = select(audit).order_by(audit.c.id.desc()).limit(max(0, int(limit)))
        return self._read(lambda c: [dict(r) for r in c.execute(q).mappings()])

    def audit_details(self, action: str, device: str, vm: str, since: str) -> list[dict]:
        """The ``detail`` of each ``action`` entry about ``device`` and ``vm`` at or after ``since``, oldest first."""
        q = (select(audit.c.detail).where(audit.c.action == action, audit.c.device == device, audit.c.vm == vm,
                                          audit.c.time >= since).order_by(audit.c.id))
        return self._read(lambda c: [r.detail or {} for r in c.execute(q).all()])
