#!/usr/bin/env python3
"""Cluster placement throughput and exclusivity: C client processes loop place -> release on one shared inventory.

Set-up: a PostgreSQL of its own (tests/pg.py: a temporary data directory, a unix socket, fsync=off) unless --db URL
names a server (the bench then creates its own databases there, passthru_bench_*, and drops them at the end: the user
needs CREATEDB). --hosts hosts join with --devices A100s each (tests/cluster_fixtures.gpu_host: two NUMA nodes, two
PCIe switches, one IOMMU group per GPU, plus a NIC). No heartbeats are sent during the run, so the stores are made with
long suspect/down times (as in tests/test_cluster_race.py); reservations keep the default 60 s TTL.

Each client (multiprocessing, fork) loops for --seconds: place(vm, ["gpu"], count) -> release(vm), a new VM name each
time. --count is fixed at 1 by default (every loop below can then do exactly the same thing); ``--count 1-2`` draws 1
or 2 per placement (two GPUs of one host), ``--count 2`` always two.

Measured in the same run, same clients, same duration, same server, each on a fresh database with the same hosts:
  passthru      ClusterStore.place / release: READ COMMITTED, candidate groups, FOR UPDATE SKIP LOCKED, IOMMU-group and
                PF/VF checks, host state, the expiry sweep.
  bare SKIP     psycopg, no SQLAlchemy: the minimal same protocol on the same tables (SELECT a free gpu row ... LIMIT 1
                FOR UPDATE SKIP LOCKED [then n-1 more on that host]; INSERT the allocation; UPDATE its holder; COMMIT /
                UPDATE the allocation to released; clear the holder; COMMIT), without host-state, PF/VF, IOMMU-group
                checks and without the sweep.
  bare CAS      the alternative scheme, no SELECT ... FOR UPDATE: read up to 64 free rows unlocked, take one at random
                (all clients taking "the first free one" would collide every time), then a compare-and-set
                ``UPDATE ... SET holder = nextval(...) WHERE ... AND holder IS NULL RETURNING holder`` and retry when it
                matched no row. The schema has no generation column: the holder (NULL -> allocation id) is the compared
                value. Note that an UPDATE still waits for another uncommitted writer of the same row (then re-checks
                and matches nothing): CAS avoids explicit locks, not waiting.
SQLite (on by default, --no-sqlite to skip): ClusterStore on a sqlite:/// file vs a bare sqlite3 loop doing the same
protocol under BEGIN IMMEDIATE with the engine's settings (WAL, synchronous=NORMAL, busy_timeout, foreign_keys).

Printed: placements/s (each one released again), p50/p99 placement latency, busy/no-room/error counts, the ratios,
and the number of doubles for every loop, checked afterwards from the allocation history (tests/cluster_fixtures.doubles:
no device ever held by two allocations whose times overlap) and from the devices' holder column (none left set).
Goal from issue 15: >= 2,000 placements/s with 0 doubles; printed as reached or not, with what was reached.

Usage: python bench/cluster.py [--seconds 10] [--clients 16] [--hosts 50] [--devices 8] [--count 1|2|1-2]
                               [--db postgresql+psycopg://...] [--no-sqlite] [--only passthru,skip,cas,sqlite]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from cluster_fixtures import doubles, gpu_host  # noqa: E402
from passthru.errors import HostError  # noqa: E402
from passthru.inventory import ClaimError  # noqa: E402
from passthru.inventory.cluster import ClusterStore, parse_want  # noqa: E402

GOAL = 2000.0
QUIET = {"suspect_after": 3600.0, "down_after": 7200.0}  # no heartbeats during a bench run
PG_NOW = "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
PG_LATER = PG_NOW.replace("clock_timestamp()", "(clock_timestamp() + interval '60 seconds')")
FREE = "holder IS NULL AND state = 'present' AND kind = 'gpu'"


class Busy(Exception):
    """Nothing could be taken this time (all candidates locked or taken meanwhile): the client tries again."""


# -- the loops: place(vm, n) / release(vm) ------------------------------------------------------------------------
class Passthru:
    def __init__(self, url: str) -> None:
        self.cs = ClusterStore(url, **QUIET)
        self.want = [parse_want("gpu")]

    def place(self, vm: str, n: int) -> None:
        try:
            self.cs.place(vm, self.want, count=n)
        except HostError as e:
            if "being taken by other schedulers" in str(e):
                raise Busy() from None
            raise

    def release(self, vm: str) -> None:
        self.cs.release(vm)


def pg_connect(url: str):  # type: ignore[no-untyped-def]
    import psycopg
    from sqlalchemy import create_engine

    eng = create_engine(url)
    _args, kw = eng.dialect.create_connect_args(eng.url)
    kw.pop("context", None)
    eng.dispose()
    return psycopg.connect(**kw)  # a transaction opens at the first statement; READ COMMITTED (the default)


class PgRelease:
    c = None  # type: ignore[assignment]

    def release(self, vm: str) -> None:
        cur = self.c.cursor()
        rows = cur.execute(f"UPDATE cluster_allocations SET state = 'released', released = {PG_NOW}, reason = 'released' "
                           "WHERE vm = %s AND state IN ('reserved', 'confirmed') RETURNING id, host, device",
                           (vm,)).fetchall()
        for aid, host, dev in rows:
            cur.execute("UPDATE cluster_devices SET holder = NULL WHERE host = %s AND identity = %s AND holder = %s",
                        (host, dev, aid))
        self.c.commit()


class PgSkip(PgRelease):
    def __init__(self, url: str) -> None:
        self.c = pg_connect(url)

    def place(self, vm: str, n: int) -> None:
        cur = self.c.cursor()
        first = cur.execute(f"SELECT host, identity FROM cluster_devices WHERE {FREE} ORDER BY host, identity LIMIT 1 "
                            "FOR UPDATE SKIP LOCKED").fetchone()
        rows = [first] if first else []
        if first and n > 1:
            rows += cur.execute(f"SELECT host, identity FROM cluster_devices WHERE {FREE} AND host = %s AND "
                                "identity <> %s ORDER BY identity LIMIT %s FOR UPDATE SKIP LOCKED",
                                (first[0], first[1], n - 1)).fetchall()
        if len(rows) < n:
            self.c.rollback()
            raise Busy()
        for host, dev in rows:
            aid = cur.execute("INSERT INTO cluster_allocations (vm, host, device, state, created, expires, epoch) "
                              f"VALUES (%s, %s, %s, 'reserved', {PG_NOW}, {PG_LATER}, 1) RETURNING id",
                              (vm, host, dev)).fetchone()[0]
            cur.execute("UPDATE cluster_devices SET holder = %s WHERE host = %s AND identity = %s", (aid, host, dev))
        self.c.commit()


class PgCas(PgRelease):
    def __init__(self, url: str) -> None:
        self.c = pg_connect(url)
        self.rnd = random.Random(os.getpid())
        self.seq = self.c.execute("SELECT pg_get_serial_sequence('cluster_allocations', 'id')").fetchone()[0]
        self.c.commit()
        self.misses = 0  # compare-and-sets that matched no row

    def place(self, vm: str, n: int) -> None:
        cur = self.c.cursor()
        by_host: dict[str, list[str]] = {}
        for host, dev in cur.execute(f"SELECT host, identity FROM cluster_devices WHERE {FREE} LIMIT 64"):
            by_host.setdefault(host, []).append(dev)
        fits = [h for h, devs in by_host.items() if len(devs) >= n]
        if not fits:
            self.c.rollback()
            raise Busy()
        host = self.rnd.choice(fits)
        for dev in self.rnd.sample(by_host[host], n):
            got = cur.execute(f"UPDATE cluster_devices SET holder = nextval(%s) WHERE host = %s AND identity = %s "
                              f"AND {FREE} RETURNING holder", (self.seq, host, dev)).fetchone()
            if got is None:  # taken since we read it: start again
                self.misses += 1
                self.c.rollback()
                raise Busy()
            cur.execute("INSERT INTO cluster_allocations (id, vm, host, device, state, created, expires, epoch) "
                        f"VALUES (%s, %s, %s, %s, 'reserved', {PG_NOW}, {PG_LATER}, 1)", (got[0], vm, host, dev))
        self.c.commit()


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Sqlite:
    def __init__(self, url: str) -> None:
        self.c = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
        for p in ("busy_timeout=30000", "foreign_keys=ON", "journal_mode=WAL", "synchronous=NORMAL"):
            self.c.execute(f"PRAGMA {p}")

    def place(self, vm: str, n: int) -> None:
        c = self.c
        c.execute("BEGIN IMMEDIATE")
        try:
            first = c.execute(f"SELECT host, identity FROM cluster_devices WHERE {FREE} ORDER BY host, identity "
                              "LIMIT 1").fetchone()
            rows = [first] if first else []
            if first and n > 1:
                rows += c.execute(f"SELECT host, identity FROM cluster_devices WHERE {FREE} AND host = ? AND "
                                  "identity <> ? ORDER BY identity LIMIT ?", (first[0], first[1], n - 1)).fetchall()
            if len(rows) < n:
                raise Busy()
            ts = now()
            later = (datetime.now(timezone.utc) + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            for host, dev in rows:
                aid = c.execute("INSERT INTO cluster_allocations (vm, host, device, state, created, expires, epoch) "
                                "VALUES (?, ?, ?, 'reserved', ?, ?, 1)", (vm, host, dev, ts, later)).lastrowid
                c.execute("UPDATE cluster_devices SET holder = ? WHERE host = ? AND identity = ?", (aid, host, dev))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def release(self, vm: str) -> None:
        c = self.c
        c.execute("BEGIN IMMEDIATE")
        ts = now()
        rows = c.execute("UPDATE cluster_allocations SET state = 'released', released = ?, reason = 'released' "
                         "WHERE vm = ? AND state IN ('reserved', 'confirmed') RETURNING id, host, device",
                         (ts, vm)).fetchall()
        for aid, host, dev in rows:
            c.execute("UPDATE cluster_devices SET holder = NULL WHERE host = ? AND identity = ? AND holder = ?",
                      (host, dev, aid))
        c.execute("COMMIT")


LOOPS = {"passthru": Passthru, "skip": PgSkip, "cas": PgCas, "sqlite-passthru": Passthru, "sqlite-bare": Sqlite}


# -- one run ------------------------------------------------------------------------------------------------------
def worker(kind: str, url: str, n: int, seconds: float, count: str, barrier, results) -> None:
    rnd = random.Random(1000 + n)
    placed = busy = no_room = errors = 0
    samples: list[str] = []
    lat: list[float] = []
    try:
        loop = LOOPS[kind](url)
    except Exception as e:  # noqa: BLE001 - reported
        samples.append(f"set-up: {type(e).__name__}: {e}")
        errors += 1
        loop = None
    barrier.wait()
    t0 = time.monotonic()
    deadline = t0 + seconds
    i = 0
    while loop is not None and time.monotonic() < deadline:
        i += 1
        vm = f"c{n}-{i}"
        k = rnd.randint(1, 2) if count == "1-2" else int(count)
        t = time.perf_counter()
        try:
            loop.place(vm, k)
        except Busy:
            busy += 1
            continue
        except ClaimError:
            no_room += 1
            continue
        except Exception as e:  # noqa: BLE001 - counted and shown
            errors += 1
            samples.append(f"place {vm}: {type(e).__name__}: {e}")
            continue
        lat.append(time.perf_counter() - t)
        placed += 1
        try:
            loop.release(vm)
        except Exception as e:  # noqa: BLE001 - counted and shown
            errors += 1
            samples.append(f"release {vm}: {type(e).__name__}: {e}")
    misses = getattr(loop, "misses", 0)
    results.put((placed, busy, no_room, errors, samples[:3], lat, time.monotonic() - t0, misses))


def populate(url: str, hosts: int, devices: int) -> None:
    cs = ClusterStore(url, **QUIET)
    for i in range(hosts):
        cs.join(f"h{i:03d}", f"10.0.{i // 250}.{i % 250 + 1}:8470", gpu_host(devices))
    cs.close()


def check(url: str) -> tuple[int, int, int]:
    """(allocations, doubles from the history, devices whose holder is still set)."""
    from sqlalchemy import func, select

    from passthru.inventory.schema import cluster_devices

    cs = ClusterStore(url, **QUIET)
    history = cs.allocations(live=False)
    held = cs.read(lambda c: c.execute(select(func.count()).select_from(cluster_devices)
                                       .where(cluster_devices.c.holder.is_not(None))).scalar())
    cs.close()
    return len(history), len(doubles(history)), held


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def run(kind: str, url: str, args: argparse.Namespace) -> dict:
    populate(url, args.hosts, args.devices)
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(args.clients), ctx.Queue()
    ps = [ctx.Process(target=worker, args=(kind, url, n, args.seconds, args.count, barrier, results))
          for n in range(args.clients)]
    for p in ps:
        p.start()
    out = [results.get(timeout=args.seconds + 120) for _ in ps]
    for p in ps:
        p.join(timeout=30)
    rows, bad, held = check(url)
    lat = [x for o in out for x in o[5]]
    placed = sum(o[0] for o in out)
    return {"kind": kind, "placed": placed, "per_s": placed / max(o[6] for o in out), "busy": sum(o[1] for o in out),
            "no_room": sum(o[2] for o in out), "errors": sum(o[3] for o in out),
            "samples": [s for o in out for s in o[4]][:3], "p50": pct(lat, 50) * 1000, "p99": pct(lat, 99) * 1000,
            "rows": rows, "doubles": bad, "held": held, "misses": sum(o[7] for o in out),
            "spread": sorted(o[0] for o in out)}


def show(r: dict, label: str) -> None:
    extra = f", CAS misses {r['misses']}" if r["kind"] == "cas" else ""
    print(f"  {label:<28}: {r['per_s']:7.0f} placements/s  p50 {r['p50']:6.2f} ms  p99 {r['p99']:7.2f} ms  "
          f"(per client {r['spread'][0]}..{r['spread'][-1]}; busy {r['busy']}, no room {r['no_room']}, "
          f"errors {r['errors']}{extra})")
    print(f"  {'':<28}  doubles {r['doubles']} over {r['rows']} allocations; holders left set {r['held']}")
    for s in r["samples"]:
        print(f"  {'':<28}  error: {s}")


# -- databases ----------------------------------------------------------------------------------------------------
class Databases:
    """Fresh databases on the given server, or on one started here."""

    def __init__(self, url: str | None) -> None:
        self.server = None
        self.made: list[str] = []
        self.base = url
        if url is None:
            from pg import MISSING_FIX, PgServer

            self.server = PgServer.find()
            if self.server is None:
                raise SystemExit(f"no PostgreSQL server binaries: {MISSING_FIX}; or pass --db URL")
            self.server.start()

    def version(self) -> str:
        with pg_connect(self.base or self.server.url()) as c:
            v = c.execute("SHOW server_version").fetchone()[0].split()[0]
        return v + (" (started here: unix socket, fsync=off)" if self.server is not None else "")

    def fresh(self, prefix: str) -> str:
        if self.server is not None:
            return self.server.create_database(prefix)
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        name = f"passthru_bench_{prefix}_{os.getpid()}_{len(self.made)}"
        eng = create_engine(self.base, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        eng.dispose()
        self.made.append(name)
        return make_url(self.base).set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            return
        from sqlalchemy import create_engine

        eng = create_engine(self.base, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            for name in self.made:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        eng.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each loop (default 10)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--hosts", type=int, default=50)
    ap.add_argument("--devices", type=int, default=8, help="GPUs per host (default 8; each host has a NIC too)")
    ap.add_argument("--count", default="1", choices=["1", "2", "1-2"], help="GPUs per placement (default 1)")
    ap.add_argument("--db", help="a PostgreSQL server to use (the bench creates and drops its own databases there)")
    ap.add_argument("--no-sqlite", action="store_true", help="skip the SQLite part")
    ap.add_argument("--only", default="passthru,skip,cas,sqlite", help="comma-separated subset of the loops")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if args.no_sqlite:
        only.discard("sqlite")
    res: dict[str, dict] = {}
    dbs = Databases(args.db) if only & {"passthru", "skip", "cas"} else None
    try:
        if dbs is not None:
            print(f"bench/cluster.py: {os.cpu_count()} CPUs, PostgreSQL {dbs.version()}, {args.hosts} hosts x "
                  f"{args.devices} GPUs, {args.clients} clients, {args.seconds:g} s per loop, count {args.count}")
            for kind in ("passthru", "skip", "cas"):
                if kind in only:
                    res[kind] = run(kind, dbs.fresh(kind), args)
    finally:
        if dbs is not None:
            dbs.close()
    if "sqlite" in only:
        with tempfile.TemporaryDirectory(prefix="passthru-bench-cluster-") as tmp:
            for kind in ("sqlite-passthru", "sqlite-bare"):
                res[kind] = run(kind, f"sqlite:///{tmp}/{kind}.db", args)
    report(res, args)
    bad = sum(r["doubles"] + r["held"] + r["errors"] for r in res.values())
    return 1 if bad else 0


def report(res: dict[str, dict], args: argparse.Namespace) -> None:
    if any(k in res for k in ("passthru", "skip", "cas")):
        print("PostgreSQL")
        for kind, label in (("passthru", "passthru ClusterStore"), ("skip", "bare psycopg SKIP LOCKED"),
                            ("cas", "bare psycopg CAS")):
            if kind in res:
                show(res[kind], label)
        if "passthru" in res and "skip" in res:
            print(f"  ratio passthru / bare SKIP LOCKED : {res['passthru']['per_s'] / res['skip']['per_s']:.2f}x")
        if "skip" in res and "cas" in res:
            print(f"  SKIP LOCKED vs CAS                : {res['skip']['per_s']:.0f}/s vs {res['cas']['per_s']:.0f}/s "
                  f"(CAS/SKIP LOCKED {res['cas']['per_s'] / res['skip']['per_s']:.2f}x)")
        if "passthru" in res:
            p = res["passthru"]
            met = p["per_s"] >= GOAL and p["doubles"] == 0
            print(f"  goal >= {GOAL:.0f} placements/s, 0 doubles: {'reached' if met else 'NOT reached'} "
                  f"({p['per_s']:.0f}/s, {p['doubles']} doubles, on {os.cpu_count()} CPUs shared by {args.clients} "
                  "clients and the server)")
    if "sqlite-passthru" in res:
        print("SQLite (one file, BEGIN IMMEDIATE)")
        show(res["sqlite-passthru"], "passthru ClusterStore")
        show(res["sqlite-bare"], "bare sqlite3")
        print(f"  ratio passthru / bare sqlite3     : "
              f"{res['sqlite-passthru']['per_s'] / res['sqlite-bare']['per_s']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
