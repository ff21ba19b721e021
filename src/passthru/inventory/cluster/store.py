"""The cluster store: many hosts' devices and who holds them, in one database (PostgreSQL in production; SQLite works
for one machine's trial). The tables are the inventory's (schema.py v4), created by the same migrations.

    cs = ClusterStore("postgresql+psycopg://...")
    epoch = cs.join("gpu-07", "10.0.0.7:8470", records)   # register or come back: a new epoch, devices synced
    cs.heartbeat("gpu-07", epoch)
    got = cs.place("vm1", [Want("a100", "name", "a100")], count=2, same_numa=True)   # placement.py
    cs.confirm("gpu-07", epoch, "vm1")                     # the agent took the devices over
    cs.release("vm1"); cs.fence("gpu-07")

Concurrency is the database's: placement locks the device rows it takes (``FOR UPDATE SKIP LOCKED``: two schedulers
never wait on each other's candidates, each takes others) and runs at READ COMMITTED, where a locked row is
re-checked after the lock is granted (``holder IS NULL``); the partial unique index on live allocations is the last
word. State moves (confirm, expire, release, fence) are conditional UPDATEs: of two that race, one matches.
Times are the database's clock (one clock for every host and scheduler), ISO-8601 UTC text as in the store.
"""

from __future__ import annotations

import os
import re
import time
from typing import Callable, TypeVar

from sqlalchemy import Connection, and_, case, func, insert, select, tuple_, update
from sqlalchemy.exc import DBAPIError, OperationalError

from ...errors import HostError, InventoryError, NotFoundError, UsageError
from ..engine import db_label, fork_guard, make_engine, reading, writing
from ..base import ClaimError
from ..schema import LIVE_STATES, cluster_allocations, cluster_devices, hosts
from ..store import Store
from . import placement
from .clock import db_now
from .records import ClusterDevice, check_host_name, check_vm

__all__ = ["ClusterStore", "RESERVE_TTL_S", "RESERVE_CHANNEL", "SUSPECT_AFTER_S", "DOWN_AFTER_S", "StaleEpoch"]

T = TypeVar("T")
RESERVE_TTL_S = 60.0
RESERVE_CHANNEL = "passthru_reserved"  # PostgreSQL NOTIFY channel: payload = the host a reservation was made on
SUSPECT_AFTER_S = 15.0
DOWN_AFTER_S = 60.0
_RECONNECT_S = 30.0
h, cd, ca = hosts, cluster_devices, cluster_allocations


class StaleEpoch(UsageError):
    """A confirmation from an agent whose epoch is not the host's current one (it restarted, or was fenced)."""


class ClusterStore:
    def __init__(self, url: str, *, reserve_ttl: float = RESERVE_TTL_S, suspect_after: float = SUSPECT_AFTER_S,
                 down_after: float = DOWN_AFTER_S) -> None:
        if not url:
            raise UsageError("the cluster needs a database URL: pass --db postgresql+psycopg://USER@HOST/DB or set "
                             "PASSTHRU_DB_URL")
        self.url = url
        self.engine = make_engine(url)
        self.reserve_ttl, self.suspect_after, self.down_after = reserve_ttl, suspect_after, down_after
        self._pid = os.getpid()
        self._ready = False
        self._reached = False  # connected once: from then on a lost connection is waited for (a restart)
        self.reconnects = 0  # operations run again after the database went away

    def close(self) -> None:
        self.engine.dispose()

    @property
    def label(self) -> str:
        return db_label(self.engine.url)

    # -- transactions -----------------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        self._pid = fork_guard(self.engine, self._pid)
        if not self._ready:
            s = Store(self.url)
            try:
                s.migrate()
            finally:
                s.close()
            self._ready = self._reached = True
            self._sweep_at = 0.0  # monotonic time of the next sweep a placement runs first (ClusterStore.place)

    def _retrying(self, op: Callable[[], T]) -> T:
        """``op`` again while the database is away (a restart, a failover): the pool replaces dead connections (pinged
        before use after 1 s idle; a lost connection seen by a statement invalidates the pool), and a transaction cut
        in the middle was rolled back by the server, so running it again is safe. After about 30 s: HostError
        naming the database."""
        delay = 0.05
        deadline = time.monotonic() + _RECONNECT_S
        while True:
            try:
                return op()
            except (HostError, DBAPIError) as e:
                if not _transient(e):
                    raise
                if not self._reached:  # never reached: a wrong URL or no server, not a restart
                    raise InventoryError(f"{self.label}: cannot reach the cluster database ({_reason(e)}); check "
                                         "the URL (--db / PASSTHRU_DB_URL) and that PostgreSQL runs") from None
                if time.monotonic() > deadline:
                    raise HostError(f"{self.label}: the cluster database went away and did not come back in "
                                    f"{_RECONNECT_S:.0f} s ({_reason(e)}); retry when it runs") from None
                self.reconnects += 1
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def write(self, fn: Callable[[Connection], T]) -> T:
        self._retrying(self._prepare)
        return self._retrying(lambda: writing(self.engine, fn, isolation=self._isolation()))

    def read(self, fn: Callable[[Connection], T]) -> T:
        self._retrying(self._prepare)
        return self._retrying(lambda: reading(self.engine, fn))

    def _isolation(self) -> str | None:
        return "READ COMMITTED" if self.engine.dialect.name == "postgresql" else None

    # -- hosts ------------------------------------------------------------------------------------------------------
    def join(self, name: str, address: str | None, devices: list[ClusterDevice]) -> int:
        """Register ``name`` (or bring it back): a new epoch, state up, a fresh heartbeat, and its devices synced
        (:meth:`sync`). Returns the new epoch: the agent's confirmations must carry it."""
        check_host_name(name)

        def run(c: Connection) -> int:
            ts = db_now(c)
            row = c.execute(select(h).where(h.c.name == name).with_for_update()).first()
            if row is None:
                epoch = 1
                c.execute(insert(h).values(name=name, address=address, epoch=epoch, heartbeat=ts, state="up",
                                           joined=ts, changed=ts))
            else:
                epoch = row.epoch + 1
                c.execute(update(h).where(h.c.name == name).values(address=address, epoch=epoch, heartbeat=ts,
                                                                   state="up", changed=ts))
            placement.sync(c, name, devices, ts)
            return epoch

        return self.write(run)

    def sync(self, name: str, epoch: int, devices: list[ClusterDevice]) -> dict:
        """Upsert the host's devices; those not listed become ``lost`` (kept, with their allocations: a VM may still
        hold them). Refused with an old epoch (StaleEpoch)."""

        def run(c: Connection) -> dict:
            ts = db_now(c)
            self._check_epoch(c, name, epoch, lock=False)
            return placement.sync(c, name, devices, ts)

        return self.write(run)

    def heartbeat(self, name: str, epoch: int) -> None:
        """The host's agent is alive: heartbeat now, state up. Refused with an old epoch (StaleEpoch)."""

        def run(c: Connection) -> None:
            ts = db_now(c)
            self._check_epoch(c, name, epoch, lock=False)
            c.execute(update(h).where(h.c.name == name).values(heartbeat=ts, state="up"))

        self.write(run)

    def _check_epoch(self, c: Connection, name: str, epoch: int, *, lock: bool) -> None:
        q = select(h.c.epoch, h.c.state).where(h.c.name == name)
        row = c.execute(q.with_for_update(key_share=True) if lock else q).first()
        if row is None:
            raise NotFoundError(f"no host named {name!r} in the cluster; `passthru cluster hosts` lists them, "
                                "`passthru cluster join` adds this one")
        if row.epoch != epoch:
            raise StaleEpoch(f"host {name!r} is at epoch {row.epoch}, not {epoch}: the agent restarted or the host "
                             "was fenced since; join again")

    def sweep(self) -> dict:
        """What any process does when it notices: stale heartbeats make hosts suspect, then down; reservations past
        their deadline are released (reason ``expired``). Returns the counts."""

        def run(c: Connection) -> dict:
            return placement.sweep(c, db_now(c), self.suspect_after, self.down_after)

        return self.write(run)

    def fence(self, name: str) -> dict:
        """The operator's word that ``name`` is gone: down, a new epoch (its old agent's confirmations are refused),
        and every live allocation on it released (reason ``fenced``)."""
        check_host_name(name)

        def run(c: Connection) -> dict:
            ts = db_now(c)
            row = c.execute(select(h).where(h.c.name == name).with_for_update()).first()
            if row is None:
                raise NotFoundError(f"no host named {name!r} in the cluster; `passthru cluster hosts` lists them")
            c.execute(update(h).where(h.c.name == name).values(state="down", epoch=row.epoch + 1, changed=ts))
            ids = [r.id for r in c.execute(select(ca.c.id).where(ca.c.host == name, ca.c.state.in_(LIVE_STATES)))]
            done = placement.end(c, ids, ts, "fenced")  # those another process ended meanwhile are not counted
            return {"host": name, "epoch": row.epoch + 1, "released": len(done)}

        return self.write(run)

    # -- allocations ------------------------------------------------------------------------------------------------
    def place(self, vm: str, wants: list[placement.Want], *, count: int = 1, same_numa: bool = False,
              same_switch: bool = False, host: str | None = None) -> dict:
        """Pick a host and devices for ``vm`` and reserve them, in one transaction (see placement.py)."""
        def run(c: Connection) -> dict | placement.Busy:
            # the sweep (stale hosts, expired reservations: free again) at most every SWEEP_EVERY_S here, and always
            # before a refusal (placement.place): whoever finds no room frees what has expired
            due = time.monotonic() >= self._sweep_at
            got = placement.place(c, vm, wants, count=count, same_numa=same_numa, same_switch=same_switch,
                                  host=host, ttl=self.reserve_ttl, sweep_first=due,
                                  sweep=lambda: placement.sweep(c, db_now(c), self.suspect_after, self.down_after))
            if due:
                self._sweep_at = time.monotonic() + placement.SWEEP_EVERY_S
            if isinstance(got, dict) and self.engine.dialect.name == "postgresql":
                # the host's agent LISTENs (agent/membership.py): woken at our commit, it takes them over at once
                c.execute(select(func.pg_notify(RESERVE_CHANNEL, got["host"])))
            return got

        attempts = 50
        before = self.reconnects
        for attempt in range(attempts):
            try:
                got = self.write(run)
            except ClaimError:
                mine = self.read(lambda c: placement.placed(c, vm)) if self.reconnects > before else None
                if mine is not None:  # ours: it committed just as the connection was cut, and the rerun saw it
                    return mine
                raise
            if not isinstance(got, placement.Busy) or attempt + 1 == attempts:
                break
            time.sleep(0.001 * (attempt + 1))
        if isinstance(got, placement.Busy):
            raise HostError(f"no placement for VM {vm!r}: the devices that fit are being taken by other schedulers "
                            "right now; retry")
        return got

    def confirm(self, name: str, epoch: int, vm: str) -> list[dict]:
        """The host's agent took ``vm``'s devices over: its reservations there become confirmed. Refused with an old
        epoch (StaleEpoch); reservations already expired are not revived (NotFoundError when none is left)."""

        def run(c: Connection) -> list[dict]:
            ts = db_now(c)
            self._check_epoch(c, name, epoch, lock=True)
            rows = c.execute(update(ca).where(ca.c.vm == vm, ca.c.host == name, ca.c.state == "reserved",
                                              ca.c.expires >= ts)
                             .values(state="confirmed", confirmed=ts, epoch=epoch, expires=None)
                             .returning(ca.c.id, ca.c.device)).all()
            if not rows:
                raise NotFoundError(f"VM {vm!r} has no live reservation on host {name!r} (expired or released?)")
            return [{"id": r.id, "device": r.device} for r in rows]

        return self.write(run)

    def release(self, vm: str) -> list[dict]:
        """Release every live allocation of ``vm`` (any host). NotFoundError when it holds none."""

        def run(c: Connection) -> list[dict]:
            ts = db_now(c)
            rows = c.execute(select(ca.c.id, ca.c.host, ca.c.device).where(
                ca.c.vm == vm, ca.c.state.in_(LIVE_STATES)).order_by(ca.c.id)).all()
            if not rows:
                raise NotFoundError(f"VM {vm!r} holds no devices in the cluster")
            done = placement.end(c, [r.id for r in rows], ts, "released")
            return [{"id": r.id, "host": r.host, "device": r.device} for r in rows if r.id in done]

        before = self.reconnects
        try:
            return self.write(run)
        except NotFoundError:
            if self.reconnects == before:
                raise
            last = self.read(lambda c: placement.last_released(c, vm))  # ours, committed as the connection was cut
            if not last:
                raise
            return last

    # -- listings ---------------------------------------------------------------------------------------------------
    def hosts(self) -> list[dict]:
        def run(c: Connection) -> list[dict]:
            n = select(cd.c.host, func.count().label("devices"),
                       func.sum(case_free()).label("free")).group_by(cd.c.host).subquery()
            q = select(h, func.coalesce(n.c.devices, 0).label("devices"), func.coalesce(n.c.free, 0).label("free")
                       ).select_from(h.outerjoin(n, n.c.host == h.c.name)).order_by(h.c.name)
            return [dict(r) for r in c.execute(q).mappings()]

        return self.read(run)

    def host(self, name: str) -> dict:
        rows = [x for x in self.hosts() if x["name"] == name]
        if not rows:
            raise NotFoundError(f"no host named {name!r} in the cluster; `passthru cluster hosts` lists them")
        return rows[0]

    def devices(self, *, free: bool = False, host: str | None = None) -> list[dict]:
        def run(c: Connection) -> list[dict]:
            live = and_(ca.c.id == cd.c.holder, ca.c.state.in_(LIVE_STATES))
            q = (select(cd, ca.c.vm, ca.c.state.label("allocation"), h.c.state.label("host_state"))
                 .select_from(cd.join(h, h.c.name == cd.c.host).outerjoin(ca, live)))
            if free:
                q = q.where(cd.c.holder.is_(None), cd.c.state == "present", h.c.state == "up", placement.placeable())
            if host is not None:
                q = q.where(cd.c.host == host)
            return [dict(r) for r in c.execute(q.order_by(cd.c.host, cd.c.identity)).mappings()]

        return self.read(run)

    def allocations(self, *, vm: str | None = None, live: bool = True) -> list[dict]:
        q = select(ca).order_by(ca.c.id)
        if vm is not None:
            q = q.where(ca.c.vm == vm)
        if live:
            q = q.where(ca.c.state.in_(LIVE_STATES))
        return self.read(lambda c: [dict(r) for r in c.execute(q).mappings()])

    # -- what a host's agent does -----------------------------------------------------------------------------------
    def host_view(self, name: str, epoch: int, held: list[tuple[str, str]] = ()) -> dict:  # type: ignore[assignment]
        """What the agent reconciles against: the live allocations on ``name`` (``live``); for each (device, VM) the
        host holds (``held``), the reason its newest ended allocation ended (``ended``: absent when the cluster
        never had one); the identities published (``devices``) and the database's time (``now``). Refused with an
        old epoch (StaleEpoch)."""

        def run(c: Connection) -> dict:
            self._check_epoch(c, name, epoch, lock=False)
            live = [dict(r) for r in c.execute(select(ca.c.id, ca.c.vm, ca.c.device, ca.c.state, ca.c.epoch,
                                                      ca.c.expires).where(ca.c.host == name,
                                                                          ca.c.state.in_(LIVE_STATES))
                                               .order_by(ca.c.id)).mappings()]
            ended: dict[tuple[str, str], str] = {}
            pairs = sorted(set(held))
            for i in range(0, len(pairs), 500):
                for r in c.execute(select(ca.c.device, ca.c.vm, ca.c.reason)
                                   .where(ca.c.host == name, ca.c.state == "released",
                                          tuple_(ca.c.device, ca.c.vm).in_(pairs[i:i + 500])).order_by(ca.c.id)):
                    ended[(r.device, r.vm)] = r.reason  # the newest wins
            devices = {r.identity for r in c.execute(select(cd.c.identity).where(cd.c.host == name))}
            return {"now": db_now(c), "live": live, "ended": ended, "devices": devices}

        return self.read(run)

    def adopt(self, name: str, epoch: int, vm: str, devices: list[str]) -> dict:
        """Record that ``vm`` holds ``devices`` on ``name`` already (assigned on the host itself, outside the
        scheduler): confirmed allocations, so that placement never gives them to another VM. A device another VM
        holds in the cluster, or one the cluster does not know, is not adopted (``conflicts``). Refused with an old
        epoch (StaleEpoch)."""
        check_vm(vm)

        def run(c: Connection) -> dict:
            ts = db_now(c)
            self._check_epoch(c, name, epoch, lock=True)
            elsewhere = c.execute(select(ca.c.host).where(ca.c.vm == vm, ca.c.host != name,
                                                          ca.c.state.in_(LIVE_STATES)).limit(1)).first()
            if elsewhere is not None:
                return {"adopted": [], "conflicts": [f"{d}: VM {vm!r} holds devices on host {elsewhere.host!r}"
                                                     for d in devices]}
            adopted, conflicts = [], []
            for dev in sorted(devices):
                row = c.execute(select(cd.c.holder).where(cd.c.host == name, cd.c.identity == dev)
                                .with_for_update()).first()
                if row is None:
                    conflicts.append(f"{dev}: not published")
                    continue
                if row.holder is not None:
                    other = c.execute(select(ca.c.vm).where(ca.c.id == row.holder)).scalar()
                    if other != vm:
                        conflicts.append(f"{dev}: VM {other!r} holds it in the cluster")
                    continue
                aid = c.execute(insert(ca).values(vm=vm, host=name, device=dev, state="confirmed", created=ts,
                                                  confirmed=ts, epoch=epoch, reason=None)).inserted_primary_key[0]
                c.execute(update(cd).where(cd.c.host == name, cd.c.identity == dev).values(holder=aid))
                adopted.append(dev)
            return {"adopted": adopted, "conflicts": conflicts}

        return self.write(run)

    def renew(self, name: str, epoch: int, ids: list[int]) -> int:
        """Carry confirmed allocations the host still holds into its new epoch (after it joined again)."""

        def run(c: Connection) -> int:
            self._check_epoch(c, name, epoch, lock=True)
            if not ids:
                return 0
            return c.execute(update(ca).where(ca.c.id.in_(sorted(ids)), ca.c.host == name,
                                              ca.c.state == "confirmed").values(epoch=epoch)).rowcount

        return self.write(run)

    def drop(self, name: str, epoch: int, ids: list[int], reason: str) -> list[int]:
        """The host's agent ends allocations on ``name``: ones it does not hold (``not held``) or could not take
        over (``refused``). Refused with an old epoch (StaleEpoch). Returns the ids this call ended."""

        def run(c: Connection) -> list[int]:
            self._check_epoch(c, name, epoch, lock=True)
            mine = [r.id for r in c.execute(select(ca.c.id).where(ca.c.id.in_(sorted(ids)), ca.c.host == name))]
            return sorted(placement.end(c, mine, db_now(c), reason))

        return self.write(run) if ids else []


def case_free():
    """1 for a device placement could take now (as ``devices --free`` lists them), else 0."""
    return case((and_(cd.c.holder.is_(None), cd.c.state == "present", placement.placeable()), 1), else_=0)


_WRAPPED = re.compile(r"inventory database error \((.*)\); check the disk")


def _reason(e: Exception) -> str:
    """The driver's own words (the engine's HostError wraps them in advice meant for the local inventory)."""
    orig = e.orig if isinstance(e, DBAPIError) and e.orig is not None else e
    text = " ".join((str(orig).strip().splitlines() or [type(orig).__name__])[0].split())
    m = _WRAPPED.search(text)
    return m.group(1) if m else text


def _transient(e: Exception) -> bool:
    """A database that went away (connection refused, cut, server shutting down), not a wrong answer."""
    if isinstance(e, HostError):
        low = str(e).lower()
    elif isinstance(e, DBAPIError):
        if not (isinstance(e, OperationalError) or e.connection_invalidated):
            return False
        low = str(e.orig).lower()
    else:
        return False
    return any(k in low for k in ("connection", "server closed", "terminating", "shutting down", "starting up",
                                  "no such file", "could not connect", "consuming input failed",
                                  "the database system is"))
